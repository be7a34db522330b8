//! Reading a scenario pack: scenarios, their rules and items, validated field by field.
//!
//! Owns: the three accepted layouts (a pack with `scenarios/`, the upstream `data/` folder, a single
//! scenario folder), the checks that make a bad file fail with file, item and field named, and
//! the content hash of the data a run used. Knows nothing of models, methods or scores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Files every scenario folder holds (upstream `data/<Name>/`).
const SCENARIO_FILE: &str = "scenario.json";
const RULES_FILE: &str = "specifications.json";
const ITEMS_FILE: &str = "prompts.json";

/// Why a pack could not be read. Each variant names what the user must fix.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{}: file is missing", file.display())]
    Missing { file: PathBuf },
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
        let field_error = |field: &str, problem: String| PackError::Field {
            file: file.to_path_buf(),
            index: Some(index),
            field: field.to_string(),
            problem,
        };
        let object = value
            .as_object()
            .ok_or_else(|| field_error("(item)", format!("expected an object, found {}", kind(value))))?;
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
        Ok(Item {
            index,
            adversarial_prompt: required_string("adversarial_prompt")?,
            prompt: required_string("prompt")?,
            label,
            source: optional_string("source")?.unwrap_or_default(),
            answer: optional_string("answer")?,
            prompt_comment: optional_string("prompt_comment")?,
            raw: Arc::new(object.clone()),
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
    pub dir: PathBuf,
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

/// Loads a pack from `dir`, in any of the three layouts, checking every field.
pub fn load(dir: &Path) -> Result<Pack, PackError> {
    if !dir.is_dir() {
        return Err(PackError::Missing {
            file: dir.to_path_buf(),
        });
    }
    let (scenario_dirs, root_has_extras) = if dir.join("scenarios").is_dir() {
        (subdirs_with_items(&dir.join("scenarios"))?, true)
    } else if dir.join(ITEMS_FILE).is_file() || dir.join(RULES_FILE).is_file() {
        (vec![dir.to_path_buf()], false)
    } else {
        (subdirs_with_items(dir)?, false)
    };
    if scenario_dirs.is_empty() {
        return Err(PackError::NoScenarios { dir: dir.to_path_buf() });
    }
    let mut hasher = Sha256::new();
    let mut scenarios = Vec::with_capacity(scenario_dirs.len());
    for scenario_dir in scenario_dirs {
        scenarios.push(load_scenario(&scenario_dir, &mut hasher)?);
    }
    let extra = |name: &str| {
        let path = dir.join(name);
        (root_has_extras && path.is_dir()).then_some(path)
    };
    Ok(Pack {
        root: dir.to_path_buf(),
        protocol_dir: extra("protocol"),
        config_dir: extra("config"),
        chat_templates_dir: extra("chat_templates"),
        scenarios,
        data_hash: hex::encode(hasher.finalize()),
    })
}

fn subdirs_with_items(dir: &Path) -> Result<Vec<PathBuf>, PackError> {
    let entries = fs_err::read_dir(dir).map_err(|source| PackError::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PackError::Io {
            file: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() && (path.join(ITEMS_FILE).exists() || path.join(RULES_FILE).exists()) {
            dirs.push(path);
        }
    }
    // Directory order is arbitrary; a stable order keeps result listings and hashes stable.
    dirs.sort();
    Ok(dirs)
}

fn read_json(file: &Path, hasher: &mut Sha256) -> Result<Value, PackError> {
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
    serde_json::from_slice(&bytes).map_err(|source| PackError::Json {
        file: file.to_path_buf(),
        source,
    })
}

fn load_scenario(dir: &Path, hasher: &mut Sha256) -> Result<Scenario, PackError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_string());

    let scenario_file = dir.join(SCENARIO_FILE);
    let meta = read_json(&scenario_file, hasher)?;
    let meta_string = |field: &str| -> Result<String, PackError> {
        match meta.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            other => Err(PackError::Field {
                file: scenario_file.clone(),
                index: None,
                field: field.to_string(),
                problem: match other {
                    None => "missing".to_string(),
                    Some(v) => format!("expected a string, found {}", kind(v)),
                },
            }),
        }
    };
    let title = meta_string("name")?;
    let description = meta_string("description")?;

    let rules_file = dir.join(RULES_FILE);
    let rules_json = read_json(&rules_file, hasher)?;
    let rule_list = |field: &str| -> Result<Vec<String>, PackError> {
        let problem = |problem: String| PackError::Field {
            file: rules_file.clone(),
            index: None,
            field: field.to_string(),
            problem,
        };
        let list = match rules_json.get(field) {
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
    };
    let rules = Rules {
        safety: rule_list("safety_specifications")?,
        behavioral: rule_list("behavioral_specifications")?,
    };

    let items_file = dir.join(ITEMS_FILE);
    let items_json = read_json(&items_file, hasher)?;
    let Value::Array(entries) = items_json else {
        return Err(PackError::Field {
            file: items_file,
            index: None,
            field: "(top level)".to_string(),
            problem: format!("expected a list of items, found {}", kind(&items_json)),
        });
    };
    let items = entries
        .iter()
        .enumerate()
        .map(|(index, value)| Item::from_json(value, &items_file, index).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Scenario {
        name,
        title,
        description,
        rules,
        items,
        dir: dir.to_path_buf(),
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
}

impl ItemSelection {
    pub fn select(&self, scenario: &Scenario) -> Result<Vec<Arc<Item>>, PackError> {
        match self {
            ItemSelection::All => Ok(scenario.items.clone()),
            ItemSelection::First(n) => Ok(scenario.items.iter().take(*n).cloned().collect()),
            ItemSelection::Indices(indices) => indices
                .iter()
                .map(|&index| {
                    scenario
                        .items
                        .get(index)
                        .cloned()
                        .ok_or_else(|| PackError::UnknownItem {
                            file: scenario.dir.join(ITEMS_FILE),
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
