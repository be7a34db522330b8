//! Reading stored runs back, for reports and comparisons: every
//! `<model>/<scenario>/<method>/<judge>_evaluate.json` under a results folder, with the token
//! counts of its `generate.json` and the cost in its manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{RunDir, StoreError, read_json, read_verdicts, run_folders};
use crate::backend::Usage;
use crate::pack::Label;
use crate::score::{Alpha, Score, Verdict, Verdicts};

/// One judged response, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// What pairs an item across models, methods and judges: its prompt text.
    pub key: String,
    pub label: Label,
    pub verdicts: Verdicts,
    pub score: Score,
    /// The response's completion tokens (upstream's `usage`), when `generate.json` has them.
    pub completion_tokens: Option<u64>,
}

/// One judge's verdicts on one model × scenario × method folder.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub model: String,
    pub scenario: String,
    pub method: String,
    /// The judge file stem (`GPT-4.1`, `GPT-4.1-sequential`).
    pub judge: String,
    pub items: Vec<ItemResult>,
    /// Tokens of every generation call (all of a method's calls), from the manifest.
    pub generation_cost: Option<Usage>,
    /// Tokens of every call of this judge, from the manifest.
    pub judge_cost: Option<Usage>,
    /// The model's and the judge's last runs here went through a batch API (the manifest's
    /// `batched`): their tokens are priced at the batch factor.
    pub generation_batched: bool,
    pub judge_batched: bool,
    pub dir: PathBuf,
}

/// Which runs a report covers; an empty list admits all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub models: Vec<String>,
    pub scenarios: Vec<String>,
    pub methods: Vec<String>,
    pub judges: Vec<String>,
}

impl Filter {
    fn admits(list: &[String], value: &str) -> bool {
        list.is_empty() || list.iter().any(|v| v == value)
    }
}

/// Completion tokens per prompt text, from a `generate.json` (ours or upstream's). Only those
/// two fields are read; responses and thoughts are skipped while parsing.
fn completion_tokens(path: &Path) -> Result<HashMap<String, u64>, StoreError> {
    #[derive(Deserialize)]
    struct Entry {
        data: Option<Value>,
        usage: Option<Value>,
    }
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let entries: Vec<Option<Entry>> = read_json(path)?;
    Ok(entries
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let prompt = entry.data?.get("prompt")?.as_str()?.to_string();
            let tokens = entry.usage?.get("completion_tokens")?.as_u64()?;
            Some((prompt, tokens))
        })
        .collect())
}

/// What [`load`] read: the runs, and the folders it had to skip, each with the error naming
/// the folder or file that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub runs: Vec<StoredRun>,
    pub skipped: Vec<StoreError>,
}

/// Every stored run under `results` that `filter` admits, scored with `alpha`, in folder order.
/// One unreadable folder or file is skipped (and listed), not a reason to refuse every other
/// run; only an unreadable `results` itself is an error.
pub fn load(results: &Path, alpha: Alpha, filter: &Filter) -> Result<Loaded, StoreError> {
    let listing = run_folders(results)?;
    let folders: Vec<_> = listing
        .folders
        .into_iter()
        .filter(|folder| {
            Filter::admits(&filter.models, &folder.model)
                && Filter::admits(&filter.scenarios, &folder.scenario)
                && Filter::admits(&filter.methods, &folder.method)
        })
        .collect();
    // Folders are read on every core (reading is parsing JSON), in the folders' order.
    let read = crate::parallel::map_in_order(&folders, |folder| {
        load_folder(
            &folder.dir,
            &folder.model,
            &folder.scenario,
            &folder.method,
            alpha,
            filter,
        )
    });
    let mut loaded = Loaded {
        runs: Vec::new(),
        skipped: listing.unreadable,
    };
    for result in read {
        match result {
            Ok(runs) => loaded.runs.extend(runs),
            Err(error) => loaded.skipped.push(error),
        }
    }
    Ok(loaded)
}

fn load_folder(
    dir: &Path,
    model: &str,
    scenario: &str,
    method: &str,
    alpha: Alpha,
    filter: &Filter,
) -> Result<Vec<StoredRun>, StoreError> {
    let run = RunDir { dir: dir.to_path_buf() };
    let mut stems = run.judge_stems()?;
    stems.retain(|stem| Filter::admits(&filter.judges, stem));
    if stems.is_empty() {
        return Ok(Vec::new());
    }
    let tokens = completion_tokens(&dir.join("generate.json"))?;
    let manifest = run.read_manifest()?;
    let mut runs = Vec::with_capacity(stems.len());
    for stem in stems {
        let verdicts = read_verdicts(&run.evaluate_json(&stem))?;
        let items = verdicts
            .into_iter()
            .map(|(item, verdicts)| ItemResult {
                completion_tokens: tokens.get(&item.prompt).copied(),
                key: item.prompt,
                label: item.label,
                score: Score::of(&verdicts, alpha),
                verdicts,
            })
            .collect();
        runs.push(StoredRun {
            model: model.to_string(),
            scenario: scenario.to_string(),
            method: method.to_string(),
            generation_cost: manifest.as_ref().and_then(|m| m.generation.as_ref()?.cost),
            judge_cost: manifest.as_ref().and_then(|m| m.judges.get(&stem)?.cost),
            generation_batched: manifest
                .as_ref()
                .and_then(|m| m.generation.as_ref())
                .is_some_and(|g| g.model.batched),
            judge_batched: manifest
                .as_ref()
                .and_then(|m| m.judges.get(&stem))
                .is_some_and(|j| j.model.batched),
            judge: stem,
            items,
            dir: dir.to_path_buf(),
        });
    }
    Ok(runs)
}

/// One entry of `<judge>_evaluate.json` or `<judge>_errors.json` as the viewer shows it, read
/// straight into the fields shown: the judge prompts and everything else are skipped while
/// parsing, so a large run is never held as a whole JSON tree. Lenient where
/// [`read_verdicts`] is strict: a missing field is empty and a verdict that is not YES, NO or NA
/// is left out, so a damaged entry is still shown.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShownEntry {
    pub data: ShownData,
    pub response: String,
    pub thought: String,
    eval: ShownEval,
    /// Only in `<judge>_errors.json`: why the judge gave no verdict.
    pub judge_error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShownData {
    pub prompt: String,
    pub adversarial_prompt: String,
    pub label: String,
    pub source: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ShownEval {
    result: ShownResult,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ShownResult {
    eval_response: Option<String>,
    safety: Option<Value>,
    behavioral: Option<Value>,
}

impl ShownEntry {
    pub fn safety(&self) -> Vec<Verdict> {
        verdict_list(self.eval.result.safety.as_ref())
    }

    pub fn behavioral(&self) -> Vec<Verdict> {
        verdict_list(self.eval.result.behavioral.as_ref())
    }

    /// The joint judge's reply, when it gave one.
    pub fn eval_response(&self) -> Option<&str> {
        self.eval.result.eval_response.as_deref()
    }
}

/// Verdicts stored as a list (sequential) or a map numbered from 1 (joint).
fn verdict_list(value: Option<&Value>) -> Vec<Verdict> {
    let values: Vec<&Value> = match value {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(Value::Object(map)) => map.values().collect(),
        _ => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|v| v.as_str().and_then(Verdict::parse))
        .collect()
}

/// The entries of an evaluate or errors file, as shown.
pub fn read_shown_entries(path: &Path) -> Result<Vec<ShownEntry>, StoreError> {
    let file = fs_err::File::open(path).map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|error| StoreError::Json {
        path: path.to_path_buf(),
        error,
    })
}
