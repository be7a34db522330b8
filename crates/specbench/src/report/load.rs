//! Reading stored runs back: every `<model>/<scenario>/<method>/<judge>_evaluate.json` under a
//! results folder, with the token counts of its `generate.json` and the cost in its manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::Usage;
use crate::pack::Label;
use crate::score::{Alpha, Score, Verdicts};
use crate::store::{self, RunDir, StoreError};

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

/// Completion tokens per prompt text, from a `generate.json` (ours or upstream's).
fn completion_tokens(path: &Path) -> Result<HashMap<String, u64>, StoreError> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let entries: Vec<Value> = store::read_json(path)?;
    Ok(entries
        .iter()
        .filter_map(|entry| {
            let prompt = entry.get("data")?.get("prompt")?.as_str()?;
            let tokens = entry.get("usage")?.get("completion_tokens")?.as_u64()?;
            Some((prompt.to_string(), tokens))
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
    let listing = store::run_folders(results)?;
    let mut loaded = Loaded {
        runs: Vec::new(),
        skipped: listing.unreadable,
    };
    for folder in listing.folders {
        if Filter::admits(&filter.models, &folder.model)
            && Filter::admits(&filter.scenarios, &folder.scenario)
            && Filter::admits(&filter.methods, &folder.method)
        {
            match load_folder(
                &folder.dir,
                &folder.model,
                &folder.scenario,
                &folder.method,
                alpha,
                filter,
            ) {
                Ok(runs) => loaded.runs.extend(runs),
                Err(error) => loaded.skipped.push(error),
            }
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
        let verdicts = store::read_verdicts(&run.evaluate_json(&stem))?;
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
            judge: stem,
            items,
            dir: dir.to_path_buf(),
        });
    }
    Ok(runs)
}
