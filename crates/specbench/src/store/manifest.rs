//! `manifest.json`: what produced a run folder's files (tool, pack, protocol texts, the
//! generating model and method, each judge) and what it cost. One type, written by the runner
//! and read back by `merge` and the report, so the file has one definition.
//!
//! Every field but the judges' and the generation's own may be missing (a manifest of another
//! version, or a hand-written one in a test), and keys this version does not know are kept as
//! they were when the runner rewrites the file.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::Usage;
use crate::judge::JudgeMode;
use crate::method::MethodConfig;
use crate::pack::PromptVariant;
use crate::protocol::ProtocolSource;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub tool: Tool,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub model_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataFacts>,
    /// By judge file stem, in the order they were first written.
    #[serde(default)]
    pub judges: IndexMap<String, JudgeEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationEntry>,
    /// Keys this version does not write, kept as read.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Default for Tool {
    /// This build of specbench.
    fn default() -> Tool {
        Tool {
            name: "specbench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The protocol texts used: where from, and the hash that judgement keys carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolFacts {
    pub source: ProtocolSource,
    pub hash: String,
}

/// The scenario pack used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFacts {
    pub root: PathBuf,
    pub hash: String,
}

/// A model as a run recorded it: its config key and what its backend said of itself
/// (`Backend::describe`: provider, URLs, model name, decoding; never a key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedModel {
    pub key: String,
    #[serde(default)]
    pub backend: Value,
    /// Its calls went through the provider's batch API (priced at the prices file's `batch`
    /// factor). Absent: sent one by one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batched: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationEntry {
    pub model: RecordedModel,
    pub method: MethodConfig,
    #[serde(default)]
    pub prompt_variant: PromptVariant,
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub finished: String,
    #[serde(default)]
    pub items: GeneratedItems,
    /// Tokens of the responses kept (`generate.json`).
    #[serde(default)]
    pub usage: Usage,
    /// Tokens of every generation call, a method's intermediate calls included (absent in
    /// manifests that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Usage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedItems {
    pub done: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeEntry {
    pub model: RecordedModel,
    pub mode: JudgeMode,
    /// Absent in manifests that predate it: the default α then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub finished: String,
    #[serde(default)]
    pub items: JudgedItems,
    /// Tokens of the judgements kept.
    #[serde(default)]
    pub usage: Usage,
    /// Tokens of every call of this judge, failed and retried ones included (absent in
    /// manifests that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Usage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgedItems {
    pub judged: usize,
    pub judge_errors: usize,
    pub not_judged: usize,
    pub unreachable_this_run: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_manifest_reads_back_the_same_with_unknown_keys_kept() -> Result<(), serde_json::Error> {
        let text = r#"{
            "tool": {"name": "specbench", "version": "0.0.9"},
            "scenario": "Garden",
            "model_key": "org/m",
            "protocol": {"source": {"kind": "builtin"}, "hash": "abc"},
            "data": {"root": "pack", "hash": "def"},
            "judges": {
                "j2": {"model": {"key": "j2", "backend": {"provider": "x"}}, "mode": "joint", "alpha": 0.3,
                       "items": {"judged": 3, "judge_errors": 1, "not_judged": 0, "unreachable_this_run": 0}},
                "j1": {"model": {"key": "j1"}, "mode": "sequential"}
            },
            "generation": {"model": {"key": "org/m", "backend": null}, "method": {"name": "vanilla"},
                           "prompt_variant": "adversarial", "items": {"done": 3, "failed": 0},
                           "cost": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}},
            "notes": {"by": "hand"}
        }"#;
        let manifest: Manifest = serde_json::from_str(text)?;
        assert_eq!(manifest.judges.keys().collect::<Vec<_>>(), ["j2", "j1"]);
        assert_eq!(manifest.judges["j1"].alpha, None);
        assert_eq!(
            manifest
                .generation
                .as_ref()
                .and_then(|g| g.cost)
                .map(|c| c.total_tokens),
            Some(11)
        );
        assert_eq!(manifest.judges["j2"].cost, None);
        assert_eq!(manifest.other.get("notes"), Some(&serde_json::json!({"by": "hand"})));
        let again: Manifest = serde_json::from_str(&serde_json::to_string(&manifest)?)?;
        assert_eq!(again, manifest);
        Ok(())
    }

    #[test]
    fn a_nearly_empty_manifest_reads() -> Result<(), serde_json::Error> {
        let manifest: Manifest = serde_json::from_str(r#"{"scenario": "Garden"}"#)?;
        assert_eq!(manifest.scenario, "Garden");
        assert!(manifest.generation.is_none() && manifest.protocol.is_none() && manifest.judges.is_empty());
        Ok(())
    }
}
