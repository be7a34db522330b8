//! Studies: the paper's experiment from one file. Every model × method is a cell; each cell is
//! an ordinary run ([`RunConfig`]) judged by every judge of the study, written into the usual
//! `<results>/<model>/<scenario>/<method>/` layout, so `report`, `view` and upstream's tools read
//! a study's folder as they read a run's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::judge::JudgeMode;
use crate::method::{ItemCalls, MethodKind};
use crate::pack::Scenario;
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
    /// A run folder that cannot be read (the error names it).
    #[error(transparent)]
    Store(crate::store::StoreError),
    #[error("{}: {first} and {second} both write {folder}: give one of them other parameters or drop it", path.display())]
    SameFolder {
        path: PathBuf,
        first: String,
        second: String,
        folder: String,
    },
}

/// One model × method of a study, as an ordinary run.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// `models[0] × methods[1]`, with the model's key and the method's name: how messages name it.
    pub name: String,
    pub config: RunConfig,
}

/// One cell's progress in one scenario, from its run folder's journals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellProgress {
    pub cell: String,
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
}

impl CellProgress {
    /// Requests the whole cell scenario sends (parse retries aside).
    pub fn requests(&self) -> u64 {
        let per_item = u64::from(self.calls.generation + self.calls.scored)
            + self.judge_calls.iter().map(|(_, calls)| u64::from(*calls)).sum::<u64>();
        per_item * self.selected as u64
    }

    /// Requests still to send: items not generated yet, and items each judge has not judged.
    /// A cached reply is not sent either; this does not count those.
    pub fn remaining(&self) -> u64 {
        let generate = self.selected.saturating_sub(self.progress.generated) as u64;
        let mut left = generate * u64::from(self.calls.generation + self.calls.scored);
        for (stem, calls) in &self.judge_calls {
            let judged = self
                .progress
                .judges
                .iter()
                .find(|judge| judge.stem == *stem)
                .map_or(0, |judge| judge.judged);
            left += self.selected.saturating_sub(judged) as u64 * u64::from(*calls);
        }
        left
    }

    /// Generated, and judged by every judge.
    pub fn complete(&self) -> bool {
        self.remaining() == 0
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
        Ok(Study {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Every model × method, models first, in the file's order.
    pub fn cells(&self) -> Vec<Cell> {
        let file = &self.file;
        let mut cells = Vec::with_capacity(file.models.len() * file.methods.len());
        for (m, model) in file.models.iter().enumerate() {
            for (k, method) in file.methods.iter().enumerate() {
                let key = model.key.as_deref().unwrap_or("the embedded model");
                cells.push(Cell {
                    name: format!("models[{m}] ({key}) × methods[{k}] ({})", method.method.name()),
                    config: RunConfig {
                        task: Task::Run,
                        data: file.data.clone(),
                        model: model.clone(),
                        methods: method.methods_config(),
                        judges: file.judges.clone(),
                        exec: file.exec.clone(),
                        adversarial: file.adversarial,
                    },
                });
            }
        }
        cells
    }

    /// Checks every cell and builds its runner, all sharing one cap per endpoint and one cache.
    /// Nothing is sent or written; the first problem is named with its cell. Two cells that
    /// would write the same folder (one model, one method twice with the same parameters) are
    /// refused.
    pub fn resolve(&self, engine: &dyn LocalEngine, shared: &Shared) -> Result<Vec<Runner>, StudyError> {
        let mut resolved = Vec::new();
        let mut folders: HashMap<(String, String), String> = HashMap::new();
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
                    crate::store::short_name(&runner.plan.model_key).to_string(),
                    runner.plan.method.dir_name(),
                );
                if let Some(first) = folders.get(&key) {
                    return Err(StudyError::SameFolder {
                        path: self.path.clone(),
                        first: first.clone(),
                        second: cell.name.clone(),
                        folder: format!("{}/<scenario>/{}", key.0, key.1),
                    });
                }
                folders.insert(key, cell.name.clone());
                resolved.push(runner);
            }
        }
        Ok(resolved)
    }

    /// How far every cell got, per scenario, from the run journals under the results folder:
    /// nothing is sent, no key is needed and no model is loaded. Reads the pack for the items
    /// each cell covers.
    pub fn status(&self) -> Result<Vec<CellProgress>, StudyError> {
        let setup_error = |source| StudyError::Setup {
            path: self.path.clone(),
            source: Box::new(source),
        };
        let data = &self.file.data;
        let pack =
            setup::load_pack(&setup::resolve_pack(data.data.as_deref()).map_err(setup_error)?).map_err(setup_error)?;
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
        let store = Store::new(&data.results);
        let ttd = pack.config_dir.as_ref().map(|dir| dir.join("config_ttd.yaml"));
        let mut rows = Vec::new();
        for cell in self.cells() {
            let model = cell.config.model.key_or_default();
            let methods = &cell.config.methods;
            let method =
                setup::method_config(methods, methods.methods[0], ttd.clone()).map_err(|source| StudyError::Cell {
                    path: self.path.clone(),
                    cell: cell.name.clone(),
                    source: Box::new(source),
                })?;
            let calls = method.calls_per_item();
            let method = method.dir_name();
            let judge_keys: Vec<(String, Vec<JudgeMode>)> = cell
                .config
                .judges
                .iter()
                .map(|judge| (judge.key_for(&cell.config.model), judge.modes.clone()))
                .collect();
            for scenario in &scenarios {
                let selected = selection.select(scenario).map_err(|e| setup_error(e.into()))?.len();
                let dir = store
                    .run_dir(model, &scenario.name, &method)
                    .map_err(StudyError::Store)?;
                let progress = dir.progress().map_err(StudyError::Store)?;
                let mut judge_calls = Vec::new();
                for (key, modes) in &judge_keys {
                    for &mode in modes {
                        let entry = (
                            crate::judge::file_stem(key, mode),
                            mode.calls_per_item(scenario.rules.len()),
                        );
                        if !judge_calls.contains(&entry) {
                            judge_calls.push(entry);
                        }
                    }
                }
                rows.push(CellProgress {
                    cell: cell.name.clone(),
                    model: model.to_string(),
                    method: method.clone(),
                    scenario: scenario.name.clone(),
                    selected,
                    calls,
                    judge_calls,
                    progress,
                });
            }
        }
        Ok(rows)
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
