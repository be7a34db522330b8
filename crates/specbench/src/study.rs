//! Studies: the paper's experiment from one file. Every model × method is a cell; each cell is
//! an ordinary run ([`RunConfig`]) judged by every judge of the study, written into the usual
//! `<results>/<model>/<scenario>/<method>/` layout, so `report`, `view` and upstream's tools read
//! a study's folder as they read a run's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Usage;
use crate::config::{ModelEntry, ModelFile};
use crate::cost::{Prices, estimate_tokens};
use crate::judge::JudgeMode;
use crate::method::{ItemCalls, MethodConfig, MethodKind};
use crate::pack::{Item, Scenario};
use crate::protocol::{self, Protocol, Template};
use crate::run::Runner;
use crate::setup::{
    self, DataConfig, ExecConfig, JudgeConfig, LocalEngine, MethodsConfig, ModelConfig, RunConfig, ScorerChoice,
    SetupError, Shared, Task,
};
use crate::store::{FolderProgress, Store};

/// A study file, as written (`examples/study.yaml` is a commented one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// Pack, scenarios, items and the results folder, the same for every cell.
    #[serde(default)]
    pub data: DataConfig,
    /// The models under test: a config key, or an inline entry (provider, base URLs, key
    /// variable).
    pub models: Vec<ModelConfig>,
    /// The methods, each with its parameters; one may appear twice with other parameters.
    pub methods: Vec<MethodEntry>,
    /// Every cell is judged by each of them (each with its modes). Default: one judge, as a run
    /// chooses it.
    #[serde(default = "default_judges")]
    pub judges: Vec<JudgeConfig>,
    /// Limits, retries, scoring and the cache. `concurrency` caps the requests in flight per
    /// endpoint across the whole study, not per cell.
    #[serde(default)]
    pub exec: ExecConfig,
    /// Generate from the adversarial prompt (upstream's default), else from the original one.
    #[serde(default = "yes")]
    pub adversarial: bool,
    /// Prices per million tokens by model key, for `study plan` and `--max-cost` (the same
    /// file as `report --prices`).
    #[serde(default)]
    pub prices: Option<PathBuf>,
    /// Runs of every cell, each with its own sampling seed (repeat r sends `seed: r`) into
    /// `<results>/repeat-<r>/`. 1: one run, no seed sent, straight into `<results>`.
    #[serde(default = "one")]
    pub repeats: u32,
}

fn one() -> u32 {
    1
}

fn default_judges() -> Vec<JudgeConfig> {
    vec![JudgeConfig::default()]
}

fn yes() -> bool {
    true
}

/// One method with its parameters (the rest from the TTD config file, then upstream's
/// defaults); a parameter of another method is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodEntry {
    pub method: MethodKind,
    #[serde(default)]
    pub rethink_count: Option<u32>,
    #[serde(default)]
    pub max_iters: Option<u32>,
    #[serde(default)]
    pub max_history_length: Option<u32>,
    #[serde(default)]
    pub stages: Vec<u8>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub samples: Option<u32>,
    #[serde(default)]
    pub iterations: Option<u32>,
    #[serde(default)]
    pub scorer: ScorerChoice,
    #[serde(default)]
    pub reward_model: Option<String>,
    #[serde(default)]
    pub reward_base_url: Option<String>,
    #[serde(default)]
    pub reward_api_key_env: Option<String>,
    #[serde(default)]
    pub ttd_config: Option<PathBuf>,
}

impl MethodEntry {
    fn methods_config(&self) -> MethodsConfig {
        MethodsConfig {
            methods: vec![self.method],
            rethink_count: self.rethink_count,
            max_iters: self.max_iters,
            max_history_length: self.max_history_length,
            align3_stages: self.stages.clone(),
            n: self.n,
            tpo_samples: self.samples,
            tpo_iterations: self.iterations,
            scorer: self.scorer,
            reward_model: self.reward_model.clone(),
            reward_base_url: self.reward_base_url.clone(),
            reward_api_key_env: self.reward_api_key_env.clone(),
            ttd_config: self.ttd_config.clone(),
        }
    }
}

/// Why a study cannot start. Every message names the study file, and the cell or entry.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: `{field}` lists nothing: a study needs at least one", path.display())]
    Empty { path: PathBuf, field: &'static str },
    #[error("{}: `repeats` must be at least 1", path.display())]
    NoRepeats { path: PathBuf },
    #[error("{}: {cell}: {source}", path.display())]
    Cell {
        path: PathBuf,
        cell: String,
        #[source]
        source: Box<SetupError>,
    },
    #[error("{}: {source}", path.display())]
    Setup {
        path: PathBuf,
        #[source]
        source: Box<SetupError>,
    },
    #[error("{}: `prices`: {source}", path.display())]
    Prices {
        path: PathBuf,
        #[source]
        source: crate::cost::PriceError,
    },
    /// A run folder that cannot be read (the error names it).
    #[error(transparent)]
    Store(crate::store::StoreError),
    #[error("{}: {cell}: looking up the response cache: {source}", path.display())]
    Cached {
        path: PathBuf,
        cell: String,
        #[source]
        source: Box<crate::run::RunError>,
    },
    #[error("{}: {first} and {second} both write {folder}: give one of them other parameters or drop it", path.display())]
    SameFolder {
        path: PathBuf,
        first: String,
        second: String,
        folder: String,
    },
}

/// The folder of repeat `r` under a results folder: `<results>/repeat-<r>`.
pub fn repeat_folder(results: &Path, r: u32) -> PathBuf {
    results.join(format!("repeat-{r}"))
}

/// The repeat folders a study with repeats wrote under `results`, by repeat.
pub fn repeat_folders(results: &Path) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(results)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let r: u32 = entry.file_name().to_str()?.strip_prefix("repeat-")?.parse().ok()?;
            let path = entry.path();
            (path.is_dir() && path == repeat_folder(results, r)).then_some((r, path))
        })
        .collect();
    found.sort();
    found
}

/// Orders the cells that generate on the same servers: each after the one before it has
/// started all of its items, so a cell's tail overlaps the next cell's start and the servers
/// stay as busy as with every cell at once, while only the cells under way hold records in
/// memory (a study's memory stays flat in its cells) and finished cells' results come early.
/// Cells on other servers run beside them. Returns, per runner, what it waits for first.
pub fn chain_by_servers(runners: &mut [Runner]) -> Vec<Option<Arc<tokio::sync::Notify>>> {
    let mut last: HashMap<Vec<String>, Arc<tokio::sync::Notify>> = HashMap::new();
    runners
        .iter_mut()
        .map(|runner| {
            let mut servers = runner
                .generator
                .as_ref()
                .map(|(model, _)| model.servers())
                .unwrap_or_default();
            servers.sort_unstable();
            servers.dedup();
            let started = Arc::new(tokio::sync::Notify::new());
            runner.all_started = Some(started.clone());
            last.insert(servers, started)
        })
        .collect()
}

/// One model × method (× repeat) of a study, as an ordinary run.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// `models[0] × methods[1]`, with the model's key and the method's name (and `repeat 2`):
    /// how messages name it.
    pub name: String,
    /// Which repeat, when the study has more than one.
    pub repeat: Option<u32>,
    pub config: RunConfig,
}

/// One cell's progress in one scenario, from its run folder's journals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellProgress {
    pub cell: String,
    pub repeat: Option<u32>,
    pub model: String,
    /// The method's folder (its name, with parameters that are not upstream's defaults).
    pub method: String,
    pub scenario: String,
    /// Items the study covers in this scenario.
    pub selected: usize,
    /// Calls per item: to the model under test, and to the scorer of samples.
    pub calls: ItemCalls,
    /// Per judge file stem (a judge in one mode), its calls per item: one in joint mode, one
    /// per rule in sequential mode (more when a reply does not parse).
    pub judge_calls: Vec<(String, u32)>,
    pub progress: FolderProgress,
    /// Estimated tokens of every selected item: of the model under test (the scorer's calls
    /// aside), and of each judge of `judge_calls`, in its order.
    pub generation_tokens: Usage,
    pub judge_tokens: Vec<Usage>,
    /// The model under test, and each judge of `judge_calls`, sends through a batch API (its
    /// tokens priced at the batch factor).
    pub generation_batched: bool,
    pub judge_batched: Vec<bool>,
    /// Of the calls still to make, those the response cache answers; none: not looked up
    /// (see [`Study::look_up_cache`]).
    pub cached: Option<Cached>,
}

/// Calls of a cell scenario still to make that the response cache answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cached {
    pub generation: u64,
    /// By judge file stem.
    pub judges: Vec<(String, u64)>,
}

impl CellProgress {
    /// Requests the whole cell scenario sends (parse retries aside).
    pub fn requests(&self) -> u64 {
        let per_item = u64::from(self.calls.generation + self.calls.scored)
            + self.judge_calls.iter().map(|(_, calls)| u64::from(*calls)).sum::<u64>();
        per_item * self.selected as u64
    }

    /// Requests still to make: items not generated yet, and items each judge has not judged
    /// (some may be answered by the response cache: [`CellProgress::to_send`]).
    pub fn remaining(&self) -> u64 {
        let generate = self.selected.saturating_sub(self.progress.generated) as u64;
        let mut left = generate * u64::from(self.calls.generation + self.calls.scored);
        for (stem, calls) in &self.judge_calls {
            left += self.selected.saturating_sub(self.judged(stem)) as u64 * u64::from(*calls);
        }
        left
    }

    /// Items the judge of file stem `stem` has judged.
    fn judged(&self, stem: &str) -> usize {
        self.progress
            .judges
            .iter()
            .find(|judge| judge.stem == stem)
            .map_or(0, |judge| judge.judged)
    }

    /// Of the requests still to make, those the response cache answers, as far as looked up.
    pub fn cached_calls(&self) -> u64 {
        self.cached
            .as_ref()
            .map_or(0, |c| c.generation + c.judges.iter().map(|(_, n)| n).sum::<u64>())
    }

    /// Requests still to send: still to make, less what the response cache answers.
    pub fn to_send(&self) -> u64 {
        self.remaining().saturating_sub(self.cached_calls())
    }

    /// Generated, and judged by every judge.
    pub fn complete(&self) -> bool {
        self.remaining() == 0
    }

    /// The estimated tokens still to send, by the model that spends them (the model under
    /// test, then each judge's file stem): those of the items not yet done, less the share of
    /// their calls the response cache answers.
    pub fn remaining_tokens(&self) -> Vec<(&str, Usage, bool)> {
        let cached = self.cached.clone().unwrap_or_default();
        let done = std::iter::once((
            self.progress.generated,
            u64::from(self.calls.generation),
            cached.generation,
        ))
        .chain(self.judge_calls.iter().map(|(stem, calls)| {
            let hits = cached.judges.iter().find(|(s, _)| s == stem).map_or(0, |(_, n)| *n);
            (self.judged(stem), u64::from(*calls), hits)
        }));
        let of = self.selected.max(1) as u64;
        self.tokens()
            .into_iter()
            .zip(done)
            .map(|((key, usage, batched), (done, calls, hits))| {
                let left = self.selected.saturating_sub(done) as u64;
                let left_calls = (left * calls).max(1);
                let to_send = (left * calls).saturating_sub(hits);
                let share = |tokens: u64| {
                    u64::try_from(
                        u128::from(tokens) * u128::from(left) * u128::from(to_send)
                            / (u128::from(of) * u128::from(left_calls)),
                    )
                    .unwrap_or(u64::MAX)
                };
                let usage = Usage {
                    prompt_tokens: share(usage.prompt_tokens),
                    completion_tokens: share(usage.completion_tokens),
                    total_tokens: share(usage.total_tokens),
                };
                (key, usage, batched)
            })
            .collect()
    }

    /// The estimated tokens of every selected item, by the model that spends them, and whether
    /// it batches.
    pub fn tokens(&self) -> Vec<(&str, Usage, bool)> {
        let mut out = vec![(self.model.as_str(), self.generation_tokens, self.generation_batched)];
        for (at, ((stem, _), usage)) in self.judge_calls.iter().zip(&self.judge_tokens).enumerate() {
            out.push((
                stem.as_str(),
                *usage,
                self.judge_batched.get(at).copied().unwrap_or(false),
            ));
        }
        out
    }
}

/// What the money of some tokens comes to, and whether some of them had no price.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Money {
    pub dollars: f64,
    /// Tokens of a model the prices file does not name (not counted in `dollars`).
    pub unpriced: bool,
}

impl Money {
    /// The cost of `tokens` (by model key or judge file stem, and whether they were batched)
    /// at `prices`.
    pub fn of<'a>(prices: &Prices, tokens: impl IntoIterator<Item = (&'a str, Usage, bool)>) -> Money {
        let mut money = Money::default();
        for (key, usage, batched) in tokens {
            let spent = usage.prompt_tokens + usage.completion_tokens > 0;
            match prices.money_sent(key, &usage, batched) {
                Some(dollars) => money.dollars += dollars,
                None if spent => money.unpriced = true,
                None => {}
            }
        }
        money
    }

    pub fn add(&mut self, other: Money) {
        self.dollars += other.dollars;
        self.unpriced |= other.unpriced;
    }
}

/// What a plan assumes about replies, which no pack can tell. Unset, every call writes its
/// model's `max_tokens` (`DEFAULT_MAX_TOKENS` when the model file gives none): an upper bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assumptions {
    /// Completion tokens of one call to the model under test.
    pub completion_tokens: Option<u64>,
    /// Completion tokens of one judge call (a joint reply, or one rule's).
    pub judge_completion_tokens: Option<u64>,
}

/// A call's completion budget when its model file gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The local judge's budget when it is the generator's own model (as `setup` gives it).
const LOCAL_JUDGE_MAX_TOKENS: u64 = 3072;

/// The responses a judge reads are cut at this many characters ([`protocol::cut_response`]).
const CUT_TOKENS: u64 = 8000 / crate::cost::CHARS_PER_TOKEN as u64;

/// `max_tokens` (or `max_completion_tokens`) of a model entry, wherever it is written.
fn max_tokens(entry: &ModelEntry) -> Option<u64> {
    ["max_tokens", "max_completion_tokens"].iter().find_map(|name| {
        entry
            .params
            .get(*name)
            .or_else(|| entry.extra_body.get(*name))
            .and_then(serde_json::Value::as_u64)
    })
}

/// The estimated prompt and completion tokens of one item under `method`, its first call
/// reading `first` tokens and each call writing `completion`. Calls that continue earlier
/// ones (MoreThink's rounds, Align3's stages, Self-Refine's and TPO's rounds) read what came
/// before; Best-of-N's samples read the prompt alone. The scorer's calls are not counted.
fn generation_estimate(method: &MethodConfig, first: u64, stage_text: u64, completion: u64) -> Usage {
    let calls = u64::from(method.calls_per_item().generation);
    let prompt = match method {
        MethodConfig::Raw | MethodConfig::Vanilla | MethodConfig::ZeroThink | MethodConfig::BestOfN { .. } => {
            calls * first
        }
        // Call i reads the prompt and the i calls before it, each with its stage's text.
        MethodConfig::MoreThink { .. } | MethodConfig::Align3 { .. } => {
            calls * first + (completion + stage_text) * calls * calls.saturating_sub(1) / 2
        }
        // Every later call reads the prompt with about two earlier replies (the response and
        // its feedback, or the samples TPO compares).
        MethodConfig::SelfRefine { .. } | MethodConfig::Tpo { .. } => {
            calls * first + calls.saturating_sub(1) * 2 * completion
        }
    };
    Usage {
        prompt_tokens: prompt,
        completion_tokens: calls * completion,
        total_tokens: prompt + calls * completion,
    }
}

/// The estimated tokens of judging one item's response of `response` tokens in `mode`.
fn judge_estimate(
    protocol: &Protocol,
    scenario: &Scenario,
    item: &Item,
    mode: JudgeMode,
    response: u64,
    completion: u64,
) -> Usage {
    let query = estimate_tokens(&item.prompt) + response.min(CUT_TOKENS);
    let (prompt, calls) = match mode {
        JudgeMode::Joint => (
            estimate_tokens(protocol.text(Template::JudgeJointSystem))
                + estimate_tokens(protocol.text(Template::JudgeJointUser))
                + estimate_tokens(&protocol::joint_judge_rule_list(&scenario.rules))
                + query,
            1,
        ),
        JudgeMode::Sequential => {
            let fixed = estimate_tokens(protocol.text(Template::JudgeSequentialSystem))
                + estimate_tokens(protocol.text(Template::JudgeSequentialUser))
                + query;
            let rules = scenario.rules.safety.iter().chain(&scenario.rules.behavioral);
            let count = scenario.rules.len() as u64;
            (
                count * fixed + rules.map(|rule| estimate_tokens(rule)).sum::<u64>(),
                count,
            )
        }
    };
    Usage {
        prompt_tokens: prompt,
        completion_tokens: calls * completion,
        total_tokens: prompt + calls * completion,
    }
}

/// A study file, read and checked for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    pub path: PathBuf,
    pub file: StudyFile,
}

impl Study {
    /// Reads `path`. A field of the wrong shape is named with its line and column.
    pub fn load(path: &Path) -> Result<Study, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StudyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Study::parse(&text, path)
    }

    /// Parses `text`, read from `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Study, StudyError> {
        let file: StudyFile = serde_saphyr::from_str(text).map_err(|error| StudyError::Yaml {
            path: path.to_path_buf(),
            message: crate::config::yaml_message(&error),
        })?;
        for (field, empty) in [("models", file.models.is_empty()), ("methods", file.methods.is_empty())] {
            if empty {
                return Err(StudyError::Empty {
                    path: path.to_path_buf(),
                    field,
                });
            }
        }
        if file.repeats == 0 {
            return Err(StudyError::NoRepeats {
                path: path.to_path_buf(),
            });
        }
        Ok(Study {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Every model × method, models first, in the file's order; with repeats, every repeat of
    /// each, one after the other.
    pub fn cells(&self) -> Vec<Cell> {
        let file = &self.file;
        let mut cells = Vec::with_capacity(file.models.len() * file.methods.len() * file.repeats as usize);
        for repeat in self.repeats() {
            for (m, model) in file.models.iter().enumerate() {
                for (k, method) in file.methods.iter().enumerate() {
                    let key = model.key.as_deref().unwrap_or("the embedded model");
                    let mut name = format!("models[{m}] ({key}) × methods[{k}] ({})", method.method.name());
                    let mut data = file.data.clone();
                    let mut model = model.clone();
                    if let Some(r) = repeat {
                        name.push_str(&format!(" repeat {r}"));
                        data.results = self.repeat_results(r);
                        model.seed = Some(u64::from(r));
                    }
                    cells.push(Cell {
                        name,
                        repeat,
                        config: RunConfig {
                            task: Task::Run,
                            data,
                            model,
                            methods: method.methods_config(),
                            judges: file.judges.clone(),
                            exec: file.exec.clone(),
                            adversarial: file.adversarial,
                        },
                    });
                }
            }
        }
        cells
    }

    /// `[None]` for a study of one run, else `Some(1)..=Some(k)`.
    pub fn repeats(&self) -> Vec<Option<u32>> {
        match self.file.repeats {
            0 | 1 => vec![None],
            k => (1..=k).map(Some).collect(),
        }
    }

    /// Where repeat `r` writes: `<results>/repeat-<r>`.
    pub fn repeat_results(&self, r: u32) -> PathBuf {
        repeat_folder(&self.file.data.results, r)
    }

    /// Checks every cell and builds its runner, all sharing one cap per endpoint and one cache.
    /// Nothing is sent or written; the first problem is named with its cell. Two cells that
    /// would write the same folder (one model, one method twice with the same parameters) are
    /// refused.
    pub fn resolve(&self, engine: &dyn LocalEngine, shared: &Shared) -> Result<Vec<Runner>, StudyError> {
        let mut resolved = Vec::new();
        let mut folders: HashMap<(PathBuf, String, String), String> = HashMap::new();
        for cell in self.cells() {
            let runners = cell
                .config
                .resolve_shared(engine, shared)
                .map_err(|source| StudyError::Cell {
                    path: self.path.clone(),
                    cell: cell.name.clone(),
                    source: Box::new(source),
                })?;
            for runner in runners {
                // Folders are named by the key without its organisation: `a/m` and `b/m` meet.
                let key = (
                    cell.config.data.results.clone(),
                    crate::store::short_name(&runner.plan.model_key).to_string(),
                    runner.plan.method.dir_name(),
                );
                if let Some(first) = folders.get(&key) {
                    return Err(StudyError::SameFolder {
                        path: self.path.clone(),
                        first: first.clone(),
                        second: cell.name.clone(),
                        folder: format!("{}/<scenario>/{}", key.1, key.2),
                    });
                }
                folders.insert(key, cell.name.clone());
                resolved.push(runner);
            }
        }
        Ok(resolved)
    }

    /// Fills in each row's `cached` (rows of [`Study::status`]): walks every call still to
    /// make through models that answer from the response cache and send nothing
    /// ([`Shared::offline`]); needs no key and writes nothing. Cells with an embedded model
    /// or judge are not looked up (it would have to be loaded; its calls cost nothing).
    pub async fn look_up_cache(&self, rows: &mut [CellProgress], engine: &dyn LocalEngine) -> Result<(), StudyError> {
        let shared = Shared::offline(&self.file.exec);
        for cell in self.cells() {
            let runners = match cell.config.resolve_shared(engine, &shared) {
                Ok(runners) => runners,
                Err(SetupError::NotLoaded) => continue,
                Err(source) => {
                    return Err(StudyError::Cell {
                        path: self.path.clone(),
                        cell: cell.name.clone(),
                        source: Box::new(source),
                    });
                }
            };
            for runner in runners {
                let found = runner.cached().await.map_err(|source| StudyError::Cached {
                    path: self.path.clone(),
                    cell: cell.name.clone(),
                    source: Box::new(source),
                })?;
                let stems: Vec<String> = runner.judges.iter().map(|judge| judge.file_stem()).collect();
                for (scenario, calls) in found {
                    let method = runner.plan.method.dir_name();
                    if let Some(row) = rows
                        .iter_mut()
                        .find(|row| row.cell == cell.name && row.scenario == scenario && row.method == method)
                    {
                        row.cached = Some(Cached {
                            generation: calls.generation,
                            judges: stems.iter().cloned().zip(calls.judges).collect(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// How far every cell got, per scenario, from the run journals under the results folder,
    /// and the tokens each is estimated to cost under `assumptions`: nothing is sent, no key
    /// is needed and no model is loaded. Reads the pack for the items each cell covers, and
    /// the model files for each model's `max_tokens`.
    pub fn status(&self, assumptions: Assumptions) -> Result<Vec<CellProgress>, StudyError> {
        let setup_error = |source| StudyError::Setup {
            path: self.path.clone(),
            source: Box::new(source),
        };
        let data = &self.file.data;
        let pack =
            setup::load_pack(&setup::resolve_pack(data.data.as_deref()).map_err(setup_error)?).map_err(setup_error)?;
        let protocol = Protocol::for_pack(pack.protocol_dir.as_deref()).map_err(|e| setup_error(e.into()))?;
        let scenarios: Vec<&Scenario> = if data.scenarios.is_empty() {
            pack.scenarios.iter().collect()
        } else {
            data.scenarios
                .iter()
                .map(|name| pack.scenario(name))
                .collect::<Result<_, _>>()
                .map_err(|e| setup_error(e.into()))?
        };
        let selection = data.selection();
        let ttd = pack.config_dir.as_ref().map(|dir| dir.join("config_ttd.yaml"));
        // A model's budget from its file: the one named, else the pack's.
        // Each model file read once, however many cells name it.
        let mut files: HashMap<PathBuf, ModelFile> = HashMap::new();
        let mut budget = |given: Option<&Path>, default_name: &str, key: &str| -> Result<Option<u64>, StudyError> {
            let path = given
                .map(Path::to_path_buf)
                .or_else(|| pack.config_dir.as_ref().map(|dir| dir.join(default_name)))
                .filter(|path| path.is_file());
            let Some(path) = path else { return Ok(None) };
            let file = match files.entry(path) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let file = ModelFile::load(entry.key()).map_err(|e| setup_error(e.into()))?;
                    entry.insert(file)
                }
            };
            Ok(file
                .entry(key)
                .map_err(|e| setup_error(e.into()))?
                .as_ref()
                .and_then(max_tokens))
        };
        let mut rows = Vec::new();
        for cell in self.cells() {
            let model = cell.config.model.key_or_default();
            let methods = &cell.config.methods;
            let method_config =
                setup::method_config(methods, methods.methods[0], ttd.clone()).map_err(|source| StudyError::Cell {
                    path: self.path.clone(),
                    cell: cell.name.clone(),
                    source: Box::new(source),
                })?;
            let calls = method_config.calls_per_item();
            let method = method_config.dir_name();
            let completion = match assumptions.completion_tokens {
                Some(tokens) => tokens,
                None => budget(cell.config.model.model_config.as_deref(), "config_model.yaml", model)?
                    .unwrap_or(DEFAULT_MAX_TOKENS),
            };
            let mut judges: Vec<(String, Vec<JudgeMode>, u64, bool)> = Vec::new();
            for judge in &cell.config.judges {
                let key = judge.key_for(&cell.config.model);
                let nothing_named = judge.key.is_none()
                    && judge.provider.is_none()
                    && judge.base_urls.is_empty()
                    && judge.model_path.is_none();
                let completion = match assumptions.judge_completion_tokens {
                    Some(tokens) => tokens,
                    None if nothing_named && cell.config.model.is_local() => LOCAL_JUDGE_MAX_TOKENS,
                    None => budget(judge.judge_config.as_deref(), "config_eval_model.yaml", &key)?
                        .unwrap_or(DEFAULT_MAX_TOKENS),
                };
                judges.push((key, judge.modes.clone(), completion, judge.batch));
            }
            let store = Store::new(&cell.config.data.results);
            for scenario in &scenarios {
                let items = selection.select(scenario).map_err(|e| setup_error(e.into()))?;
                let dir = store
                    .run_dir(model, &scenario.name, &method)
                    .map_err(StudyError::Store)?;
                let progress = dir.progress().map_err(StudyError::Store)?;
                let system = estimate_tokens(protocol.text(Template::System));
                let augment = estimate_tokens(protocol.text(Template::Augment));
                let rules = estimate_tokens(&protocol::generation_rule_list(&scenario.rules));
                let mut generation_tokens = Usage::default();
                for item in &items {
                    let prompt = if self.file.adversarial {
                        &item.adversarial_prompt
                    } else {
                        &item.prompt
                    };
                    let first = match method_config {
                        MethodConfig::Raw => system + estimate_tokens(prompt),
                        _ => system + augment + rules + estimate_tokens(prompt),
                    };
                    generation_tokens += &generation_estimate(&method_config, first, rules, completion);
                }
                let mut judge_calls = Vec::new();
                let mut judge_tokens = Vec::new();
                let mut judge_batched = Vec::new();
                for (key, modes, judge_completion, batched) in &judges {
                    for &mode in modes {
                        let entry = (
                            crate::judge::file_stem(key, mode),
                            mode.calls_per_item(scenario.rules.len()),
                        );
                        if judge_calls.contains(&entry) {
                            continue;
                        }
                        judge_calls.push(entry);
                        let mut usage = Usage::default();
                        for item in &items {
                            usage += &judge_estimate(&protocol, scenario, item, mode, completion, *judge_completion);
                        }
                        judge_tokens.push(usage);
                        judge_batched.push(*batched);
                    }
                }
                rows.push(CellProgress {
                    cell: cell.name.clone(),
                    repeat: cell.repeat,
                    model: model.to_string(),
                    method: method.clone(),
                    scenario: scenario.name.clone(),
                    selected: items.len(),
                    calls,
                    judge_calls,
                    progress,
                    generation_tokens,
                    judge_tokens,
                    generation_batched: cell.config.model.batch,
                    judge_batched,
                    cached: None,
                });
            }
        }
        Ok(rows)
    }

    /// The prices file the study names, read (none: no prices).
    pub fn prices(&self) -> Result<Prices, StudyError> {
        match &self.file.prices {
            Some(path) => Prices::load(path).map_err(|source| StudyError::Prices {
                path: self.path.clone(),
                source,
            }),
            None => Ok(Prices::default()),
        }
    }

    /// The distinct servers its models and judges name (at least one: the embedded model or
    /// a provider's default).
    pub fn endpoints(&self) -> usize {
        let mut urls: Vec<&str> = self
            .file
            .models
            .iter()
            .flat_map(|model| model.base_urls.iter())
            .chain(self.file.judges.iter().flat_map(|judge| judge.base_urls.iter()))
            .map(|url| url.trim_end_matches('/'))
            .collect();
        urls.sort_unstable();
        urls.dedup();
        urls.len().max(1)
    }

    /// Where the study's results go.
    pub fn results(&self) -> &Path {
        &self.file.data.results
    }

    /// The study's limits and cache (for [`Shared::new`]).
    pub fn exec(&self) -> &ExecConfig {
        &self.file.exec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/study.yaml");

    #[test]
    fn the_example_study_parses_into_every_model_times_method() -> Result<(), StudyError> {
        let study = Study::parse(EXAMPLE, Path::new("examples/study.yaml"))?;
        let cells = study.cells();
        assert_eq!(cells.len(), study.file.models.len() * study.file.methods.len());
        assert!(cells.len() >= 4, "the example shows a grid");
        // Every cell shares the data, judges and limits, and runs one method.
        for cell in &cells {
            assert_eq!(cell.config.data, study.file.data);
            assert_eq!(cell.config.judges, study.file.judges);
            assert_eq!(cell.config.methods.methods.len(), 1);
        }
        Ok(())
    }

    #[test]
    fn the_readme_study_reads() -> Result<(), Box<dyn std::error::Error>> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```yaml\ndata: {scenarios: [Child, Health]")
            .ok_or("no study example in the README")?
            + "```yaml\n".len();
        let end = readme[start..].find("```").ok_or("unclosed example")? + start;
        let study = Study::parse(&readme[start..end], Path::new("README.md"))?;
        assert_eq!(study.cells().len(), 2 * 4);
        assert_eq!(study.file.methods[2].rethink_count, Some(2));
        assert_eq!(study.results(), Path::new("result-study"));
        Ok(())
    }

    #[test]
    fn repeats_give_every_cell_its_own_seed_and_folder() -> Result<(), StudyError> {
        let text =
            "data: {results: out}\nmodels: [{key: m}]\nmethods: [{method: vanilla}, {method: align3}]\nrepeats: 3\n";
        let study = Study::parse(text, Path::new("s.yaml"))?;
        let cells = study.cells();
        assert_eq!(cells.len(), 2 * 3);
        for (at, cell) in cells.iter().enumerate() {
            let r = at as u32 / 2 + 1;
            assert_eq!(cell.repeat, Some(r));
            assert_eq!(cell.config.model.seed, Some(u64::from(r)));
            assert_eq!(cell.config.data.results, Path::new("out").join(format!("repeat-{r}")));
            assert!(cell.name.ends_with(&format!("repeat {r}")), "{}", cell.name);
        }
        // One run: no seed, no repeat folder.
        let single = Study::parse(&text.replace("repeats: 3\n", ""), Path::new("s.yaml"))?;
        assert!(
            single
                .cells()
                .iter()
                .all(|c| c.repeat.is_none() && c.config.model.seed.is_none())
        );
        assert!(single.cells().iter().all(|c| c.config.data.results == Path::new("out")));
        let zero = Study::parse(&text.replace("repeats: 3", "repeats: 0"), Path::new("s.yaml"));
        assert_eq!(
            zero.err().map(|e| e.to_string()).unwrap_or_default(),
            "s.yaml: `repeats` must be at least 1"
        );
        Ok(())
    }

    #[test]
    fn problems_are_named_with_their_place() {
        let error = |text: &str| {
            Study::parse(text, Path::new("s.yaml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let unknown = error("models: [{key: m}]\nmethods:\n  - method: vanilla\n    rethinks: 2\n");
        assert!(
            unknown.starts_with("s.yaml: ") && unknown.contains("rethinks"),
            "{unknown}"
        );
        assert!(
            unknown.contains("line 4 column 5") && !unknown.contains('\n'),
            "{unknown}"
        );
        let method = error("models: [{key: m}]\nmethods: [{method: think_hard}]\n");
        assert!(method.contains("think_hard") && method.contains("line 2"), "{method}");
        assert_eq!(
            error("models: []\nmethods: [{method: vanilla}]\n"),
            "s.yaml: `models` lists nothing: a study needs at least one"
        );
        let missing = error("models: [{key: m}]\n");
        assert!(missing.contains("methods"), "{missing}");
    }
}
