//! `specbench merge`: joins the result folders of a run split with `--shard K/N`.
//!
//! The shards' journals are joined first (every finished unit is kept), then each run folder is
//! rebuilt by an ordinary run whose units are all found in the joined journal, so the files are
//! written by the same code, in the same order, as a single machine's run. The models are
//! stand-ins that describe themselves as the shards recorded and never send anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use serde_json::Value;
use specbench::backend::{Backend, BackendError, Generation, Model, Request, RetryPolicy, Stop};
use specbench::judge::Judge;
use specbench::method::{Method, MethodError, MethodInput, Response};
use specbench::pack::ItemSelection;
use specbench::protocol::Protocol;
use specbench::run::{RunPlan, Runner};
use specbench::score::Alpha;
use specbench::store::manifest::RecordedModel;
use specbench::store::{self, GenerationRecord, RunDir, Store};

use crate::args::MergeArgs;
use crate::commands::{ExitStatus, Resume, UsageError, execute_locked};

/// A model that the shards used: described as they recorded it, never called.
struct Recorded {
    description: Value,
}

#[async_trait]
impl Backend for Recorded {
    async fn send(&self, _request: &Request) -> Result<Generation, BackendError> {
        Err(BackendError::Config(
            "not in any shard's results (merge sends no requests; run the shard again)".into(),
        ))
    }

    fn describe(&self) -> Value {
        self.description.clone()
    }
}

/// Stands in for the method: every generation comes from the joined journal.
struct Replayed;

#[async_trait]
impl Method for Replayed {
    async fn respond(&self, _input: &MethodInput<'_>, model: &Model) -> Result<Response, MethodError> {
        Err(MethodError::Model(
            match model.generate(&Request::chat(Vec::new())).await {
                Err(error) => error,
                Ok(_) => return Err(MethodError::NoCandidates),
            },
        ))
    }
}

fn recorded_model(recorded: &RecordedModel) -> Model {
    let backend = Recorded {
        description: recorded.backend.clone(),
    };
    Model::new(
        &recorded.key,
        Arc::new(backend),
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    )
}

/// `<model>/<scenario>/<method>` folders holding a journal, relative to `root`.
/// A folder that cannot be listed is an error here: a merge must not lose a shard's work.
fn run_folders(root: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let listing = store::run_folders(root)?;
    if let Some(error) = listing.unreadable.into_iter().next() {
        return Err(error.into());
    }
    Ok(listing
        .folders
        .into_iter()
        .filter(|folder| folder.dir.join(".journal").is_dir())
        .filter_map(|folder| folder.dir.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect())
}

pub async fn merge(args: MergeArgs) -> anyhow::Result<ExitStatus> {
    for shard in &args.shards {
        if !shard.is_dir() {
            anyhow::bail!(UsageError(format!("{}: no such results folder", shard.display())));
        }
    }
    let pack_dir = crate::commands::resolve_pack(args.data.as_deref())?;
    let pack = Arc::new(crate::commands::load_pack(&pack_dir)?);
    let protocol = Arc::new(Protocol::for_pack(pack.protocol_dir.as_deref()).map_err(|e| UsageError(e.to_string()))?);
    let mut folders = BTreeSet::new();
    for shard in &args.shards {
        folders.extend(run_folders(shard).with_context(|| format!("{}: cannot list runs", shard.display()))?);
    }
    if folders.is_empty() {
        anyhow::bail!(UsageError("no run folders with a journal in the given shards".into()));
    }

    // Every folder is checked before anything is written: bad input leaves nothing behind.
    let mut plans = Vec::new();
    for relative in &folders {
        let sources: Vec<RunDir> = args
            .shards
            .iter()
            .map(|shard| RunDir {
                dir: shard.join(relative),
            })
            .filter(|dir| dir.dir.is_dir())
            .collect();
        let mut manifests = Vec::new();
        for source in &sources {
            if let Some(manifest) = source.read_manifest()? {
                manifests.push((source.manifest_json(), manifest));
            }
        }
        let (first_path, first) = manifests.first().ok_or_else(|| {
            UsageError(format!(
                "{}: no shard has a manifest.json (was it run by specbench run or generate?)",
                relative.display()
            ))
        })?;
        let bad = |field: &str| {
            UsageError(format!(
                "{}: field `{field}` is missing or invalid",
                first_path.display()
            ))
        };
        for (path, manifest) in &manifests {
            if manifest.protocol.as_ref().map(|p| p.hash.as_str()) != Some(protocol.hash.as_str()) {
                anyhow::bail!(UsageError(format!(
                    "{}: judged with other protocol texts than the pack's (field `protocol.hash`)",
                    path.display()
                )));
            }
        }
        let generation = first.generation.as_ref().ok_or_else(|| bad("generation.model.key"))?;
        let generator = recorded_model(&generation.model);
        let method = generation.method.clone();
        let variant = generation.prompt_variant;
        if first.scenario.is_empty() {
            anyhow::bail!(bad("scenario"));
        }
        let scenario = first.scenario.clone();
        let mut judges: BTreeMap<String, Judge> = BTreeMap::new();
        let mut alpha = Alpha::DEFAULT;
        for (path, manifest) in &manifests {
            for (stem, entry) in &manifest.judges {
                if let Some(value) = entry.alpha {
                    alpha = Alpha::new(value).ok_or_else(|| {
                        UsageError(format!("{}: field `judges.{stem}.alpha` is invalid", path.display()))
                    })?;
                }
                judges
                    .entry(stem.clone())
                    .or_insert_with(|| Judge::new(recorded_model(&entry.model), entry.mode, protocol.clone()));
            }
        }
        let into = RunDir {
            dir: args.into.join(relative),
        };
        let expected = Store::new(&args.into)
            .run_dir(generator.key(), &scenario, &method.dir_name())
            .map_err(|e| UsageError(format!("{}: {e}", first_path.display())))?;
        if expected.dir != into.dir {
            anyhow::bail!(UsageError(format!(
                "{}: the manifest names another folder ({})",
                first_path.display(),
                expected.dir.display()
            )));
        }
        plans.push((sources, into, generator, method, variant, scenario, judges, alpha));
    }

    // One writer per run folder: the joined folders are taken before their journals are written.
    let mut locks = Vec::with_capacity(plans.len());
    for (_, into, ..) in &plans {
        locks.push(into.lock().map_err(|e| UsageError(e.to_string()))?);
    }
    let mut runners = Vec::with_capacity(plans.len());
    let mut units = 0;
    for (sources, into, generator, method, variant, scenario, judges, alpha) in plans {
        let count = store::merge_run_dirs(&sources, &into)?;
        units += count.generations + count.judgements;
        let mut indices: Vec<usize> = store::read_journal::<GenerationRecord>(&into.generation_journal())?
            .iter()
            .map(GenerationRecord::index)
            .collect();
        indices.sort_unstable();
        indices.dedup();
        let plan = RunPlan {
            scenarios: vec![scenario],
            items: ItemSelection::Indices(indices),
            variant,
            model_key: generator.key().to_string(),
            method,
            alpha,
            item_concurrency: 64,
            shard: None,
            retry_judge_errors: false,
        };
        runners.push(Runner {
            pack: pack.clone(),
            protocol: protocol.clone(),
            store: Store::new(&args.into),
            plan,
            generator: Some((generator, Arc::new(Replayed))),
            judges: judges.into_values().collect(),
            stop: Stop::default(),
        });
    }
    tracing::info!(folders = runners.len(), units, "joined the shards' journals");
    let status = execute_locked(runners, Resume::Quiet).await;
    drop(locks);
    status
}
