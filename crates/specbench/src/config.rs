//! Upstream configuration files, as written: `config_model.yaml`, `config_eval_model.yaml`
//! (a key per model: `model_name`, decoding fields, `extra_body`) and `config_ttd.yaml`.
//!
//! Upstream files are read leniently: unknown fields are kept and sent, since upstream passes
//! every key but `model_name` to the client. A key missing from the file means "use the key as
//! the model name with no parameters", which is what upstream does too.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A YAML parser's error as one line: its first line names the place (`line 4 column 5:
/// unknown field …`); the source excerpt on the lines after would repeat the user's own file.
pub fn yaml_message(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid YAML: {message}", file.display())]
    Yaml { file: PathBuf, message: String },
    #[error("{}: model `{key}`: field `{field}`: {problem}", file.display())]
    Field {
        file: PathBuf,
        key: String,
        field: String,
        problem: String,
    },
}

/// One key of an upstream model file, resolved: the model name, the decoding fields in file
/// order, and `extra_body`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelEntry {
    pub key: String,
    pub model_name: String,
    pub params: Map<String, Value>,
    pub extra_body: Map<String, Value>,
    /// The file it came from; `None` when the key was not in any file.
    pub file: Option<PathBuf>,
}

impl ModelEntry {
    /// A key that no file describes: upstream sends it as the model name with no parameters.
    pub fn bare(key: &str) -> ModelEntry {
        ModelEntry {
            key: key.to_string(),
            model_name: key.to_string(),
            ..ModelEntry::default()
        }
    }
}

/// The section of every top-level key: a comment line made of `#`s around `<family> models`
/// opens a section, as upstream's model file groups instruct and reasoning models.
fn families(text: &str) -> std::collections::HashMap<String, String> {
    let mut families = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let words = comment.trim_matches(|c: char| c == '#' || c.is_whitespace());
            if line.trim_end().ends_with('#')
                && let Some(family) = words.strip_suffix(" models")
                && !family.is_empty()
            {
                current = Some(family.trim().to_string());
            }
            continue;
        }
        let top_level = !line.starts_with(char::is_whitespace) && !line.trim().is_empty();
        if let (true, Some(family), Some((key, _))) = (top_level, &current, line.split_once(':')) {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            families.insert(key.to_string(), family.clone());
        }
    }
    families
}

/// An upstream model file: keys in file order.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub file: PathBuf,
    entries: Map<String, Value>,
    /// Key → the section it is listed under (`instruct`, `reasoning`), from upstream's
    /// `#### instruct models ####` comment lines: the paper's Table 1 families.
    families: std::collections::HashMap<String, String>,
}

impl ModelFile {
    pub fn load(file: &Path) -> Result<ModelFile, ConfigError> {
        let text = fs_err::read_to_string(file).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        ModelFile::parse(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<ModelFile, ConfigError> {
        let value: Option<Value> = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            file: file.to_path_buf(),
            message: yaml_message(&e),
        })?;
        let entries = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(ConfigError::Yaml {
                    file: file.to_path_buf(),
                    message: format!("expected a mapping of model keys, found {}", crate::pack::kind(&other)),
                });
            }
        };
        Ok(ModelFile {
            file: file.to_path_buf(),
            entries,
            families: families(text),
        })
    }

    /// The family `key` is listed under (`instruct`, `reasoning`), when the file has sections.
    pub fn family(&self, key: &str) -> Option<&str> {
        self.families.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The entry for `key`, checked; `Ok(None)` when the file has no such key.
    pub fn entry(&self, key: &str) -> Result<Option<ModelEntry>, ConfigError> {
        let Some(value) = self.entries.get(key) else {
            return Ok(None);
        };
        let field_error = |field: &str, problem: String| ConfigError::Field {
            file: self.file.clone(),
            key: key.to_string(),
            field: field.to_string(),
            problem,
        };
        let mut fields = match value {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => {
                return Err(field_error(
                    "(entry)",
                    format!("expected a mapping, found {}", crate::pack::kind(other)),
                ));
            }
        };
        let model_name = match fields.shift_remove("model_name") {
            None => key.to_string(),
            Some(Value::String(name)) if !name.is_empty() => name,
            Some(other) => {
                return Err(field_error(
                    "model_name",
                    format!("expected a non-empty string, found {other}"),
                ));
            }
        };
        let extra_body = match fields.shift_remove("extra_body") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(field_error(
                    "extra_body",
                    format!("expected a mapping, found {}", crate::pack::kind(&other)),
                ));
            }
        };
        for (field, expect_number) in [
            ("max_tokens", true),
            ("max_completion_tokens", true),
            ("temperature", true),
            ("top_p", true),
        ] {
            if let Some(v) = fields.get(field)
                && expect_number
                && !v.is_number()
            {
                return Err(field_error(field, format!("expected a number, found {v}")));
            }
        }
        Ok(Some(ModelEntry {
            key: key.to_string(),
            model_name,
            params: fields,
            extra_body,
            file: Some(self.file.clone()),
        }))
    }
}

/// Upstream `config_ttd.yaml`: per-method parameters, read by the methods that take any.
#[derive(Debug, Clone, Default)]
pub struct MethodParams {
    entries: Map<String, Value>,
    pub file: Option<PathBuf>,
}

impl MethodParams {
    pub fn load(file: &Path) -> Result<MethodParams, ConfigError> {
        let models = ModelFile::load(file)?;
        Ok(MethodParams {
            entries: models.entries,
            file: Some(file.to_path_buf()),
        })
    }

    /// A whole-number parameter of a method, if the file sets it.
    pub fn integer(&self, method: &str, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.entries.get(method).and_then(|m| m.get(name)) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| ConfigError::Field {
                file: self.file.clone().unwrap_or_default(),
                key: method.to_string(),
                field: name.to_string(),
                problem: format!("expected a whole number, found {v}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_comments_give_each_key_its_family() -> Result<(), ConfigError> {
        let text = "#### instruct models ####\n\nLlama:\n  model_name: meta/llama\n  max_tokens: 10\n\
                    # a remark, not a section\nQwen: {model_name: q}\n\n##### reasoning models #####\n\"R1\":\n  model_name: r1\n";
        let file = ModelFile::parse(text, Path::new("m.yaml"))?;
        assert_eq!(file.family("Llama"), Some("instruct"));
        assert_eq!(file.family("Qwen"), Some("instruct"));
        assert_eq!(file.family("R1"), Some("reasoning"));
        assert_eq!(file.family("model_name"), None, "nested keys are not models");
        let plain = ModelFile::parse("A: {model_name: a}\n", Path::new("m.yaml"))?;
        assert_eq!(plain.family("A"), None);
        Ok(())
    }

    const FILE: &str = "
# comment
Qwen3-14B:
  model_name: Qwen/Qwen3-14B
  max_tokens: 4200
  temperature: 0.7
  extra_body:
    top_k: 20
    chat_template_kwargs:
      enable_thinking: false

GPT-4.1:
  model_name: gpt-4.1
  max_completion_tokens: 4200
";

    #[test]
    fn reads_an_upstream_entry_in_file_order() -> Result<(), ConfigError> {
        let file = ModelFile::parse(FILE, Path::new("config_model.yaml"))?;
        assert_eq!(file.keys().collect::<Vec<_>>(), ["Qwen3-14B", "GPT-4.1"]);
        let entry = file.entry("Qwen3-14B")?.unwrap_or_default();
        assert_eq!(entry.model_name, "Qwen/Qwen3-14B");
        assert_eq!(entry.params.keys().collect::<Vec<_>>(), ["max_tokens", "temperature"]);
        assert_eq!(entry.extra_body["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(file.entry("nope")?, None);
        Ok(())
    }

    #[test]
    fn a_wrong_field_type_names_file_key_and_field() -> Result<(), ConfigError> {
        let file = ModelFile::parse("m:\n  temperature: hot\n", Path::new("c.yaml"))?;
        let err = file.entry("m").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("c.yaml: model `m`: field `temperature`: expected a number, found \"hot\"")
        );
        Ok(())
    }

    #[test]
    fn broken_yaml_names_the_file() {
        let err = ModelFile::parse("a: [1, 2\n", Path::new("bad.yaml"))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.starts_with("bad.yaml: invalid YAML")),
            "{err:?}"
        );
    }
}
