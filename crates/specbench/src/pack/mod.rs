//! Reading a scenario pack: scenarios, their rules and items, validated field by field.
//!
//! Owns: the three accepted layouts (a pack with `scenarios/`, the upstream `data/` folder, a single
//! scenario folder), the checks that make a bad file fail with file, item and field named, and
//! the content hash of the data a run used. Knows nothing of models, methods or scores.

pub mod pull;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Files every scenario folder holds (upstream `data/<Name>/`).
const SCENARIO_FILE: &str = "scenario.json";
const RULES_FILE: &str = "specifications.json";
const ITEMS_FILE: &str = "prompts.json";

/// A prompt longer than this many characters loads with a warning: it is far beyond any
/// official item, and slow and costly to send to every model and judge.
pub const PROMPT_WARN_CHARS: usize = 100_000;
/// A prompt longer than this many characters is refused: it would be stored in every result
/// file and sent in every request, and no model's context holds it.
pub const PROMPT_MAX_CHARS: usize = 1_000_000;

/// Why a pack could not be read. Each variant names what the user must fix.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{}: file is missing", file.display())]
    Missing { file: PathBuf },
    /// The path exists but is no pack, scenario folder or scenario file: not "missing".
    #[error("{}: not a pack, a scenario folder or a scenario file (.yaml, .yml, .json){hint}", path.display())]
    NotAPack { path: PathBuf, hint: &'static str },
    #[error("{}: cannot read", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", file.display())]
    Json {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {}field `{field}`: {problem}", file.display(), item_prefix(*index))]
    Field {
        file: PathBuf,
        /// Position in `prompts.json`; `None` for a file-level field.
        index: Option<usize>,
        field: String,
        problem: String,
    },
    #[error("{}: no scenario found (expected `scenarios/<Name>/prompts.json`, `<Name>/prompts.json` or `prompts.json`)", dir.display())]
    NoScenarios { dir: PathBuf },
    #[error("unknown scenario `{name}`; the pack has: {}", available.join(", "))]
    UnknownScenario { name: String, available: Vec<String> },
    #[error("{}: item {index} does not exist (the scenario has {count} items)", file.display())]
    UnknownItem { file: PathBuf, index: usize, count: usize },
}

fn item_prefix(index: Option<usize>) -> String {
    index.map(|i| format!("item {i}: ")).unwrap_or_default()
}

/// Whether a prompt is meant to be refused-or-reframed (`unsafe`) or answered (`safe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Safe,
    Unsafe,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Safe => "safe",
            Label::Unsafe => "unsafe",
        }
    }
}

/// The two rule lists of one scenario, in file order (verdicts are matched by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub safety: Vec<String>,
    pub behavioral: Vec<String>,
}

impl Rules {
    pub fn len(&self) -> usize {
        self.safety.len() + self.behavioral.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One entry of `prompts.json`.
#[derive(Debug, Clone)]
pub struct Item {
    /// Position in `prompts.json`; stable across runs, used to resume and to select.
    pub index: usize,
    pub adversarial_prompt: String,
    pub prompt: String,
    pub label: Label,
    pub source: String,
    /// `None` when the field is absent or null; upstream tells that apart from `""`.
    pub answer: Option<String>,
    pub prompt_comment: Option<String>,
    /// The entry as written, unknown fields included: upstream result files embed it as `data`.
    pub raw: Arc<Map<String, Value>>,
}

impl Item {
    /// Reads and checks one item object; `file` and `index` only name the place in errors.
    pub fn from_json(value: &Value, file: &Path, index: usize) -> Result<Item, PackError> {
        Item::from_owned(value.clone(), file, index)
    }

    /// Like `from_json`, keeping `value` itself as the raw entry rather than a copy of it.
    pub fn from_owned(value: Value, file: &Path, index: usize) -> Result<Item, PackError> {
        let field_error = |field: &str, problem: String| PackError::Field {
            file: file.to_path_buf(),
            index: Some(index),
            field: field.to_string(),
            problem,
        };
        let object = match value {
            Value::Object(map) => map,
            other => {
                return Err(field_error(
                    "(item)",
                    format!("expected an object, found {}", kind(&other)),
                ));
            }
        };
        let required_string = |field: &str| -> Result<String, PackError> {
            match object.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(field_error(field, format!("expected a string, found {}", kind(other)))),
                None => Err(field_error(field, "missing".to_string())),
            }
        };
        let optional_string = |field: &str| -> Result<Option<String>, PackError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(field_error(field, format!("expected a string, found {}", kind(other)))),
            }
        };
        let label = match object.get("label") {
            Some(Value::String(s)) if s == "safe" => Label::Safe,
            Some(Value::String(s)) if s == "unsafe" => Label::Unsafe,
            Some(other) => {
                return Err(field_error(
                    "label",
                    format!("expected \"safe\" or \"unsafe\", found {other}"),
                ));
            }
            None => return Err(field_error("label", "missing".to_string())),
        };
        let adversarial_prompt = required_string("adversarial_prompt")?;
        let prompt = required_string("prompt")?;
        let source = optional_string("source")?.unwrap_or_default();
        let answer = optional_string("answer")?;
        let prompt_comment = optional_string("prompt_comment")?;
        Ok(Item {
            index,
            adversarial_prompt,
            prompt,
            label,
            source,
            answer,
            prompt_comment,
            raw: Arc::new(object),
        })
    }

    /// The text sent to the model: upstream generates from the attacked prompt by default.
    pub fn generation_prompt(&self, variant: PromptVariant) -> &str {
        match variant {
            PromptVariant::Adversarial => &self.adversarial_prompt,
            PromptVariant::Original => &self.prompt,
        }
    }
}

/// Which prompt field an item is generated from (`--adversarial true|false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptVariant {
    #[default]
    Adversarial,
    Original,
}

/// One domain: its rules and items.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The folder name (`Child`), which result paths and `--scenario` use.
    pub name: String,
    /// `name` of `scenario.json` (a human title).
    pub title: String,
    pub description: String,
    pub rules: Rules,
    /// Shared, so that a run holds items without copying them.
    pub items: Vec<Arc<Item>>,
    /// The file the items come from (`prompts.json`, or the scenario's own file).
    pub items_file: PathBuf,
}

/// A loaded pack: scenarios plus the folders of protocol texts, configs and chat templates.
#[derive(Debug, Clone)]
pub struct Pack {
    pub root: PathBuf,
    pub scenarios: Vec<Scenario>,
    /// `protocol/` beside `scenarios/`, when the pack has it (upstream-exact mode).
    pub protocol_dir: Option<PathBuf>,
    /// `config/` beside `scenarios/`, holding the upstream YAML files.
    pub config_dir: Option<PathBuf>,
    /// `chat_templates/` beside `scenarios/`: Jinja templates and `config.json` naming the
    /// template of each model, for prefill methods.
    pub chat_templates_dir: Option<PathBuf>,
    /// SHA-256 over every scenario file read, in load order.
    pub data_hash: String,
    /// What loads but deserves a look (prompts over [`PROMPT_WARN_CHARS`]), each in the
    /// file/item/field shape of errors; the CLI prints them.
    pub warnings: Vec<String>,
}

impl Pack {
    /// The chat template upstream uses for `model_name` (`chat_templates/config.json`), as
    /// `(file, text)`; `Ok(None)` when the pack names none for that model.
    pub fn chat_template(&self, model_name: &str) -> Result<Option<(PathBuf, String)>, PackError> {
        let Some(dir) = &self.chat_templates_dir else {
            return Ok(None);
        };
        let index = dir.join("config.json");
        if !index.is_file() {
            return Ok(None);
        }
        let mut hasher = Sha256::new();
        let names = read_json(&index, &mut hasher)?;
        let Some(name) = names.get(model_name) else {
            return Ok(None);
        };
        let Some(name) = name.as_str() else {
            return Err(PackError::Field {
                file: index,
                index: None,
                field: model_name.to_string(),
                problem: format!("expected a file name, found {}", kind(name)),
            });
        };
        let file = dir.join(name);
        let text = fs_err::read_to_string(&file).map_err(|source| PackError::Io {
            file: file.clone(),
            source,
        })?;
        Ok(Some((file, text)))
    }

    pub fn scenario(&self, name: &str) -> Result<&Scenario, PackError> {
        self.scenarios
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| PackError::UnknownScenario {
                name: name.to_string(),
                available: self.scenarios.iter().map(|s| s.name.clone()).collect(),
            })
    }
}

/// Where one scenario comes from: an upstream-shaped folder, or one authored file.
#[derive(Debug, Clone)]
enum Source {
    Folder(PathBuf),
    File(PathBuf),
}

/// A scenario written as one YAML or JSON file (not one of a folder's three fixed files).
fn is_scenario_file(path: &Path) -> bool {
    let fixed = [SCENARIO_FILE, RULES_FILE, ITEMS_FILE];
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| !fixed.contains(&n) && !n.starts_with('.'))
}

/// Loads a pack, checking every field: a pack folder (`scenarios/` holding scenario folders or
/// scenario files), the upstream `data/` folder, one scenario folder, or one scenario file.
/// The first problem found is the error; `validate` lists them all.
pub fn load(dir: &Path) -> Result<Pack, PackError> {
    let (pack, mut problems) = load_collecting(dir)?;
    if problems.is_empty() {
        Ok(pack)
    } else {
        Err(problems.remove(0))
    }
}

/// What [`validate`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Every problem; the pack loads when there is none.
    pub problems: Vec<PackError>,
    /// What loads but deserves a look.
    pub warnings: Vec<String>,
}

/// Every problem of a pack at once (for `specbench data validate`), and its warnings.
pub fn validate(dir: &Path) -> Checked {
    match load_collecting(dir) {
        Ok((pack, problems)) => Checked {
            problems,
            warnings: pack.warnings,
        },
        Err(problem) => Checked {
            problems: vec![problem],
            warnings: Vec::new(),
        },
    }
}

fn load_collecting(dir: &Path) -> Result<(Pack, Vec<PackError>), PackError> {
    let (sources, root_has_extras) = if is_scenario_file(dir) {
        (vec![Source::File(dir.to_path_buf())], false)
    } else if dir.exists() && !dir.is_dir() {
        let fixed = [SCENARIO_FILE, RULES_FILE, ITEMS_FILE];
        let in_folder = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| fixed.contains(&n));
        return Err(PackError::NotAPack {
            path: dir.to_path_buf(),
            hint: if in_folder {
                "; give the folder that holds it"
            } else {
                ""
            },
        });
    } else if !dir.is_dir() {
        return Err(PackError::Missing {
            file: dir.to_path_buf(),
        });
    } else if dir.join("scenarios").is_dir() {
        (sources_in(&dir.join("scenarios"))?, true)
    } else if dir.join(ITEMS_FILE).is_file() || dir.join(RULES_FILE).is_file() {
        (vec![Source::Folder(dir.to_path_buf())], false)
    } else {
        (sources_in(dir)?, false)
    };
    if sources.is_empty() {
        return Err(PackError::NoScenarios { dir: dir.to_path_buf() });
    }
    let mut hasher = Sha256::new();
    let mut found = Found::default();
    let mut scenarios: Vec<Scenario> = Vec::with_capacity(sources.len());
    for source in sources {
        let loaded = match &source {
            Source::Folder(folder) => load_scenario(folder, &mut hasher, &mut found),
            Source::File(file) => load_scenario_file(file, &mut hasher, &mut found),
        };
        if let Some(scenario) = loaded {
            if scenarios.iter().any(|s| s.name.eq_ignore_ascii_case(&scenario.name)) {
                found.problems.push(PackError::Field {
                    file: scenario.items_file.clone(),
                    index: None,
                    field: "(name)".into(),
                    problem: format!("a second scenario named `{}`", scenario.name),
                });
                continue;
            }
            scenarios.push(scenario);
        }
    }
    let extra = |name: &str| {
        let path = dir.join(name);
        (root_has_extras && path.is_dir()).then_some(path)
    };
    let pack = Pack {
        root: dir.to_path_buf(),
        protocol_dir: extra("protocol"),
        config_dir: extra("config"),
        chat_templates_dir: extra("chat_templates"),
        scenarios,
        data_hash: hex::encode(hasher.finalize()),
        warnings: found.warnings,
    };
    Ok((pack, found.problems))
}

/// Problems and warnings gathered while loading, so that `validate` lists all of them.
#[derive(Debug, Default)]
struct Found {
    problems: Vec<PackError>,
    warnings: Vec<String>,
}

/// Refuses a prompt over [`PROMPT_MAX_CHARS`] and warns about one over [`PROMPT_WARN_CHARS`].
fn check_prompt_lengths(item: &Item, file: &Path, found: &mut Found) -> bool {
    let mut fits = true;
    for (field, text) in [
        ("adversarial_prompt", &item.adversarial_prompt),
        ("prompt", &item.prompt),
    ] {
        // A byte count at or under a limit bounds the character count too: no need to count.
        if text.len() <= PROMPT_WARN_CHARS {
            continue;
        }
        let chars = text.chars().count();
        let error = |problem: String| PackError::Field {
            file: file.to_path_buf(),
            index: Some(item.index),
            field: field.to_string(),
            problem,
        };
        if chars > PROMPT_MAX_CHARS {
            found.problems.push(error(format!(
                "{chars} characters; a prompt may have at most {PROMPT_MAX_CHARS}"
            )));
            fits = false;
        } else if chars > PROMPT_WARN_CHARS {
            found.warnings.push(
                error(format!(
                    "{chars} characters, over {PROMPT_WARN_CHARS}: slow and costly to send to every model and judge"
                ))
                .to_string(),
            );
        }
    }
    fits
}

/// Scenario folders and scenario files directly inside `dir`, in name order.
fn sources_in(dir: &Path) -> Result<Vec<Source>, PackError> {
    let entries = fs_err::read_dir(dir).map_err(|source| PackError::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PackError::Io {
            file: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() && (path.join(ITEMS_FILE).exists() || path.join(RULES_FILE).exists()) {
            found.push(Source::Folder(path));
        } else if is_scenario_file(&path) {
            found.push(Source::File(path));
        }
    }
    // Directory order is arbitrary; a stable order keeps result listings and hashes stable.
    found.sort_by(|a, b| {
        let path = |s: &Source| match s {
            Source::Folder(p) | Source::File(p) => p.clone(),
        };
        path(a).cmp(&path(b))
    });
    Ok(found)
}

fn read_bytes(file: &Path, hasher: &mut Sha256) -> Result<Vec<u8>, PackError> {
    let bytes = match fs_err::read(file) {
        Ok(bytes) => bytes,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackError::Missing {
                file: file.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(PackError::Io {
                file: file.to_path_buf(),
                source,
            });
        }
    };
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(&bytes);
    Ok(bytes)
}

fn read_json(file: &Path, hasher: &mut Sha256) -> Result<Value, PackError> {
    let bytes = read_bytes(file, hasher)?;
    serde_json::from_slice(&bytes).map_err(|source| PackError::Json {
        file: file.to_path_buf(),
        source,
    })
}

fn meta_string(meta: &Value, file: &Path, field: &str) -> Result<String, PackError> {
    match meta.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        other => Err(PackError::Field {
            file: file.to_path_buf(),
            index: None,
            field: field.to_string(),
            problem: match other {
                None => "missing".to_string(),
                Some(v) => format!("expected a string, found {}", kind(v)),
            },
        }),
    }
}

fn rule_list(rules: &Value, file: &Path, field: &str) -> Result<Vec<String>, PackError> {
    let problem = |problem: String| PackError::Field {
        file: file.to_path_buf(),
        index: None,
        field: field.to_string(),
        problem,
    };
    let list = match rules.get(field) {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(problem(format!("expected a list of strings, found {}", kind(other))));
        }
        None => return Err(problem("missing".to_string())),
    };
    if list.is_empty() {
        return Err(problem("the rule list is empty".to_string()));
    }
    list.iter()
        .enumerate()
        .map(|(i, rule)| match rule {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(problem(format!("rule {} is empty", i + 1))),
            other => Err(problem(format!("rule {} is {}, expected a string", i + 1, kind(other)))),
        })
        .collect()
}

/// Keeps a value, or records its problem and gives `None`.
fn keep<T>(result: Result<T, PackError>, problems: &mut Vec<PackError>) -> Option<T> {
    result.map_err(|problem| problems.push(problem)).ok()
}

/// Every item of a list, each checked; the problems of all bad items are recorded.
fn items_of(entries: Vec<Value>, file: &Path, found: &mut Found) -> Option<Vec<Arc<Item>>> {
    let before = found.problems.len();
    let mut items = Vec::with_capacity(entries.len());
    for (index, value) in entries.into_iter().enumerate() {
        if let Some(item) = keep(Item::from_owned(value, file, index), &mut found.problems)
            && check_prompt_lengths(&item, file, found)
        {
            items.push(Arc::new(item));
        }
    }
    (found.problems.len() == before).then_some(items)
}

fn load_scenario(dir: &Path, hasher: &mut Sha256, found: &mut Found) -> Option<Scenario> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_string());
    let before = found.problems.len();

    let scenario_file = dir.join(SCENARIO_FILE);
    let meta = keep(read_json(&scenario_file, hasher), &mut found.problems);
    let title = meta
        .as_ref()
        .and_then(|m| keep(meta_string(m, &scenario_file, "name"), &mut found.problems));
    let description = meta
        .as_ref()
        .and_then(|m| keep(meta_string(m, &scenario_file, "description"), &mut found.problems));

    let rules_file = dir.join(RULES_FILE);
    let rules_json = keep(read_json(&rules_file, hasher), &mut found.problems);
    let safety = rules_json
        .as_ref()
        .and_then(|r| keep(rule_list(r, &rules_file, "safety_specifications"), &mut found.problems));
    let behavioral = rules_json.as_ref().and_then(|r| {
        keep(
            rule_list(r, &rules_file, "behavioral_specifications"),
            &mut found.problems,
        )
    });

    let items_file = dir.join(ITEMS_FILE);
    let items = match keep(read_json(&items_file, hasher), &mut found.problems) {
        Some(Value::Array(entries)) => items_of(entries, &items_file, found),
        Some(other) => {
            found.problems.push(PackError::Field {
                file: items_file.clone(),
                index: None,
                field: "(top level)".to_string(),
                problem: format!("expected a list of items, found {}", kind(&other)),
            });
            None
        }
        None => None,
    };
    if found.problems.len() > before {
        return None;
    }
    Some(Scenario {
        name,
        title: title?,
        description: description?,
        rules: Rules {
            safety: safety?,
            behavioral: behavioral?,
        },
        items: items?,
        items_file,
    })
}

/// A scenario authored as one file: `name`, `description`, `safety_specifications`,
/// `behavioral_specifications` and `prompts` (each with `prompt`, `label`, and optionally
/// `adversarial_prompt` — the prompt itself when absent —, `source` and `answer`). Its
/// `--scenario` name is the file name without extension.
fn load_scenario_file(file: &Path, hasher: &mut Sha256, found: &mut Found) -> Option<Scenario> {
    let name = file
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_string());
    let bytes = keep(read_bytes(file, hasher), &mut found.problems)?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    let parsed: Result<Value, PackError> = if is_json {
        serde_json::from_slice(&bytes).map_err(|source| PackError::Json {
            file: file.to_path_buf(),
            source,
        })
    } else {
        std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string()))
            .map_err(|problem| PackError::Field {
                file: file.to_path_buf(),
                index: None,
                field: "(file)".into(),
                problem: format!("invalid YAML: {problem}"),
            })
    };
    let value = keep(parsed, &mut found.problems)?;
    if !value.is_object() {
        found.problems.push(PackError::Field {
            file: file.to_path_buf(),
            index: None,
            field: "(top level)".into(),
            problem: format!("expected a scenario object, found {}", kind(&value)),
        });
        return None;
    }
    let before = found.problems.len();
    let title = keep(meta_string(&value, file, "name"), &mut found.problems);
    let description = keep(meta_string(&value, file, "description"), &mut found.problems);
    let safety = keep(rule_list(&value, file, "safety_specifications"), &mut found.problems);
    let behavioral = keep(
        rule_list(&value, file, "behavioral_specifications"),
        &mut found.problems,
    );
    let items = match value.get("prompts") {
        Some(Value::Array(entries)) if !entries.is_empty() => {
            let filled: Vec<Value> = entries
                .iter()
                .map(|entry| {
                    let mut entry = entry.clone();
                    if let Some(object) = entry.as_object_mut() {
                        if !object.contains_key("adversarial_prompt")
                            && let Some(prompt) = object.get("prompt").cloned()
                        {
                            object.insert("adversarial_prompt".into(), prompt);
                        }
                        object.entry("source").or_insert_with(|| Value::String("custom".into()));
                    }
                    entry
                })
                .collect();
            items_of(filled, file, found)
        }
        other => {
            found.problems.push(PackError::Field {
                file: file.to_path_buf(),
                index: None,
                field: "prompts".into(),
                problem: match other {
                    None => "missing".into(),
                    Some(Value::Array(_)) => "the list is empty".into(),
                    Some(v) => format!("expected a list of prompts, found {}", kind(v)),
                },
            });
            None
        }
    };
    if found.problems.len() > before {
        return None;
    }
    Some(Scenario {
        name,
        title: title?,
        description: description?,
        rules: Rules {
            safety: safety?,
            behavioral: behavioral?,
        },
        items: items?,
        items_file: file.to_path_buf(),
    })
}

/// A JSON kind for error messages ("a number", "null").
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Which items of a scenario a run covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ItemSelection {
    #[default]
    All,
    /// The first N items.
    First(usize),
    /// These positions, in the given order.
    Indices(Vec<usize>),
    /// N items with both labels: half unsafe (one more when N is odd), half safe, each half
    /// spread evenly over its label's items, in position order. The official scenarios list all
    /// unsafe items first, so `First(N)` never reaches a safe one.
    Balanced(usize),
}

/// `count` positions spread evenly over `0..len` (the first, then every len/count-th).
fn spread(len: usize, count: usize) -> impl Iterator<Item = usize> {
    let count = count.min(len);
    (0..count).map(move |i| i * len / count)
}

impl ItemSelection {
    pub fn select(&self, scenario: &Scenario) -> Result<Vec<Arc<Item>>, PackError> {
        match self {
            ItemSelection::All => Ok(scenario.items.clone()),
            ItemSelection::First(n) => Ok(scenario.items.iter().take(*n).cloned().collect()),
            ItemSelection::Balanced(n) => {
                let of =
                    |label: Label| -> Vec<&Arc<Item>> { scenario.items.iter().filter(|i| i.label == label).collect() };
                let (unsafe_items, safe_items) = (of(Label::Unsafe), of(Label::Safe));
                let unsafe_count = n.div_ceil(2).min(unsafe_items.len());
                let safe_count = (n - unsafe_count).min(safe_items.len());
                // If one label runs short, the other fills the rest.
                let unsafe_count = (n - safe_count).min(unsafe_items.len());
                let mut chosen: Vec<Arc<Item>> = spread(unsafe_items.len(), unsafe_count)
                    .filter_map(|i| unsafe_items.get(i).map(|item| Arc::clone(item)))
                    .chain(
                        spread(safe_items.len(), safe_count)
                            .filter_map(|i| safe_items.get(i).map(|item| Arc::clone(item))),
                    )
                    .collect();
                chosen.sort_by_key(|item| item.index);
                Ok(chosen)
            }
            ItemSelection::Indices(indices) => indices
                .iter()
                .map(|&index| {
                    scenario
                        .items
                        .get(index)
                        .cloned()
                        .ok_or_else(|| PackError::UnknownItem {
                            file: scenario.items_file.clone(),
                            index,
                            count: scenario.items.len(),
                        })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> Result<Item, PackError> {
        Item::from_json(&value, Path::new("p.json"), 3)
    }

    #[test]
    fn reads_a_complete_item() -> Result<(), PackError> {
        let item =
            item(json!({"adversarial_prompt": "a", "prompt": "p", "label": "unsafe", "source": "GPT", "answer": ""}))?;
        assert_eq!(item.label, Label::Unsafe);
        assert_eq!(item.answer.as_deref(), Some(""));
        assert_eq!(item.prompt_comment, None);
        assert_eq!(item.generation_prompt(PromptVariant::Adversarial), "a");
        assert_eq!(item.generation_prompt(PromptVariant::Original), "p");
        Ok(())
    }

    fn scenario(labels: &[Label]) -> Result<Scenario, PackError> {
        let items = labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                Item::from_json(
                    &json!({"adversarial_prompt": "a", "prompt": format!("p{i}"), "label": label.as_str()}),
                    Path::new("p.json"),
                    i,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scenario {
            name: "S".into(),
            title: "S".into(),
            description: "d".into(),
            rules: Rules {
                safety: vec!["s".into()],
                behavioral: vec!["b".into()],
            },
            items,
            items_file: PathBuf::from("p.json"),
        })
    }

    #[test]
    fn a_balanced_sample_spreads_over_both_labels() -> Result<(), PackError> {
        // Like the official scenarios: 200 unsafe items, then 100 safe ones.
        let mut labels = vec![Label::Unsafe; 200];
        labels.extend(vec![Label::Safe; 100]);
        let pick = |n| -> Result<Vec<usize>, PackError> {
            Ok(ItemSelection::Balanced(n)
                .select(&scenario(&labels)?)?
                .iter()
                .map(|i| i.index)
                .collect())
        };
        assert_eq!(pick(6)?, vec![0, 66, 133, 200, 233, 266]);
        assert_eq!(pick(3)?, vec![0, 100, 200]);
        assert_eq!(pick(1000)?.len(), 300, "never more than there are");
        // One label short: the other fills the sample.
        let few_safe = [Label::Unsafe, Label::Unsafe, Label::Unsafe, Label::Safe];
        let chosen: Vec<usize> = ItemSelection::Balanced(4)
            .select(&scenario(&few_safe)?)?
            .iter()
            .map(|i| i.index)
            .collect();
        assert_eq!(chosen, vec![0, 1, 2, 3]);
        Ok(())
    }

    #[test]
    fn absent_and_null_answer_are_none() -> Result<(), PackError> {
        let absent = item(json!({"adversarial_prompt": "a", "prompt": "p", "label": "safe"}))?;
        let null = item(json!({"adversarial_prompt": "a", "prompt": "p", "label": "safe", "answer": null}))?;
        assert_eq!(absent.answer, None);
        assert_eq!(null.answer, None);
        Ok(())
    }

    #[test]
    fn bad_label_names_file_item_and_field() {
        let err = item(json!({"adversarial_prompt": "a", "prompt": "p", "label": "maybe"}))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("p.json: item 3: field `label`: expected \"safe\" or \"unsafe\", found \"maybe\"")
        );
    }

    #[test]
    fn missing_prompt_is_named() {
        let err = item(json!({"adversarial_prompt": "a", "label": "safe"}))
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("p.json: item 3: field `prompt`: missing"));
    }

    #[test]
    fn wrong_type_is_named() {
        let err = item(json!({"adversarial_prompt": 5, "prompt": "p", "label": "safe"}))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("p.json: item 3: field `adversarial_prompt`: expected a string, found a number")
        );
    }
}
