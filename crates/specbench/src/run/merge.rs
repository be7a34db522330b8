//! Joining the result folders of a run split with `--shard K/N`.
//!
//! The shards' journals are joined first (every finished unit is kept), then each run folder is
//! rebuilt by an ordinary run whose units are all found in the joined journal, so the files are
//! written by the same code, in the same order, as a single machine's run. The models are
//! stand-ins that describe themselves as the shards recorded and never send anything; the
//! method only replays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{RunPlan, Runner};
use crate::backend::{Backend, BackendError, Generation, Model, Request, RetryPolicy, Stop};
use crate::judge::Judge;
use crate::method::{Method, MethodError, MethodInput, Response};
use crate::pack::{ItemSelection, Pack};
use crate::protocol::Protocol;
use crate::score::Alpha;
use crate::store::manifest::RecordedModel;
use crate::store::{self, GenerationRecord, RunDir, RunLock, Store, StoreError};

/// Why shards cannot be merged. Every check runs before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{}: no such results folder", .0.display())]
    NoShard(PathBuf),
    #[error("{}: cannot list runs", shard.display())]
    List {
        shard: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("no run folders with a journal in the given shards")]
    NothingToMerge,
    #[error("{}: no shard has a manifest.json (was it run by specbench run or generate?)", .0.display())]
    NoManifest(PathBuf),
    #[error("{}: judged with other protocol texts than the pack's (field `protocol.hash`)", .0.display())]
    OtherProtocol(PathBuf),
    #[error("{}: field `{field}` is missing or invalid", manifest.display())]
    Field { manifest: PathBuf, field: String },
    #[error("{}: field `judges.{stem}.alpha` is invalid", manifest.display())]
    Alpha { manifest: PathBuf, stem: String },
    #[error("{}: {source}", manifest.display())]
    Name {
        manifest: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{}: the manifest names another folder ({})", manifest.display(), expected.display())]
    OtherFolder { manifest: PathBuf, expected: PathBuf },
    /// Another process holds a folder, or its lock cannot be taken.
    #[error(transparent)]
    Lock(StoreError),
    /// A shard's file could not be read, or the joined journal not written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MergeError {
    /// Bad input (a wrong folder or manifest), as opposed to a file that could not be read or
    /// written.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, MergeError::List { .. } | MergeError::Store(_))
    }
}

/// A merge checked, its folders taken and its journals joined: run `runners` (they only replay)
/// to write the files, then drop `locks`.
pub struct Merge {
    pub runners: Vec<Runner>,
    pub locks: Vec<RunLock>,
    /// Finished units found in the shards.
    pub units: usize,
}

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

/// `<model>/<scenario>/<method>` folders holding a journal, relative to `root`. A folder that
/// cannot be listed is an error here: a merge must not lose a shard's work.
fn journaled_folders(root: &Path) -> Result<BTreeSet<PathBuf>, StoreError> {
    let listing = store::run_folders(root)?;
    if let Some(error) = listing.unreadable.into_iter().next() {
        return Err(error);
    }
    Ok(listing
        .folders
        .into_iter()
        .filter(|folder| folder.dir.join(".journal").is_dir())
        .filter_map(|folder| folder.dir.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect())
}

/// What one run folder is rebuilt from.
struct FolderPlan {
    sources: Vec<RunDir>,
    into: RunDir,
    generator: Model,
    plan: RunPlan,
    judges: Vec<Judge>,
}

/// Checks every shard folder against the pack's protocol, takes the joined folders under
/// `into`, joins the journals, and returns the runs that write the files.
pub fn prepare(shards: &[PathBuf], into: &Path, pack: Arc<Pack>, protocol: Arc<Protocol>) -> Result<Merge, MergeError> {
    for shard in shards {
        if !shard.is_dir() {
            return Err(MergeError::NoShard(shard.clone()));
        }
    }
    let mut folders = BTreeSet::new();
    for shard in shards {
        folders.extend(journaled_folders(shard).map_err(|source| MergeError::List {
            shard: shard.clone(),
            source,
        })?);
    }
    if folders.is_empty() {
        return Err(MergeError::NothingToMerge);
    }

    // Every folder is checked before anything is written: bad input leaves nothing behind.
    let mut plans = Vec::new();
    for relative in &folders {
        plans.push(plan_folder(shards, into, relative, &protocol)?);
    }

    // One writer per run folder: the joined folders are taken before their journals are written.
    let mut locks = Vec::with_capacity(plans.len());
    for folder in &plans {
        locks.push(folder.into.lock().map_err(MergeError::Lock)?);
    }
    let mut runners = Vec::with_capacity(plans.len());
    let mut units = 0;
    for FolderPlan {
        sources,
        into: joined,
        generator,
        mut plan,
        judges,
    } in plans
    {
        let count = store::merge_run_dirs(&sources, &joined)?;
        units += count.generations + count.judgements;
        let mut indices: Vec<usize> = store::read_journal::<GenerationRecord>(&joined.generation_journal())?
            .iter()
            .map(GenerationRecord::index)
            .collect();
        indices.sort_unstable();
        indices.dedup();
        plan.items = ItemSelection::Indices(indices);
        runners.push(Runner {
            pack: pack.clone(),
            protocol: protocol.clone(),
            store: Store::new(into),
            plan,
            generator: Some((generator, Arc::new(Replayed))),
            judges,
            stop: Stop::default(),
            item_slots: None,
            all_started: None,
        });
    }
    Ok(Merge { runners, locks, units })
}

fn plan_folder(
    shards: &[PathBuf],
    into: &Path,
    relative: &Path,
    protocol: &Arc<Protocol>,
) -> Result<FolderPlan, MergeError> {
    let sources: Vec<RunDir> = shards
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
    let (first_path, first) = manifests
        .first()
        .ok_or_else(|| MergeError::NoManifest(relative.to_path_buf()))?;
    let bad = |field: &str| MergeError::Field {
        manifest: first_path.clone(),
        field: field.to_string(),
    };
    for (path, manifest) in &manifests {
        if manifest.protocol.as_ref().map(|p| p.hash.as_str()) != Some(protocol.hash.as_str()) {
            return Err(MergeError::OtherProtocol(path.clone()));
        }
    }
    let generation = first.generation.as_ref().ok_or_else(|| bad("generation.model.key"))?;
    let generator = recorded_model(&generation.model);
    if first.scenario.is_empty() {
        return Err(bad("scenario"));
    }
    let mut judges: BTreeMap<String, Judge> = BTreeMap::new();
    let mut alpha = Alpha::DEFAULT;
    for (path, manifest) in &manifests {
        for (stem, entry) in &manifest.judges {
            if let Some(value) = entry.alpha {
                alpha = Alpha::new(value).ok_or_else(|| MergeError::Alpha {
                    manifest: path.clone(),
                    stem: stem.clone(),
                })?;
            }
            judges
                .entry(stem.clone())
                .or_insert_with(|| Judge::new(recorded_model(&entry.model), entry.mode, protocol.clone()));
        }
    }
    let joined = RunDir {
        dir: into.join(relative),
    };
    let expected = Store::new(into)
        .run_dir(generator.key(), &first.scenario, &generation.method.dir_name())
        .map_err(|source| MergeError::Name {
            manifest: first_path.clone(),
            source,
        })?;
    if expected.dir != joined.dir {
        return Err(MergeError::OtherFolder {
            manifest: first_path.clone(),
            expected: expected.dir,
        });
    }
    let plan = RunPlan {
        scenarios: vec![first.scenario.clone()],
        // Set once the journals are joined.
        items: ItemSelection::Indices(Vec::new()),
        variant: generation.prompt_variant,
        model_key: generator.key().to_string(),
        method: generation.method.clone(),
        alpha,
        item_concurrency: 64,
        shard: None,
        retry_judge_errors: false,
    };
    Ok(FolderPlan {
        sources,
        into: joined,
        generator,
        plan,
        judges: judges.into_values().collect(),
    })
}
