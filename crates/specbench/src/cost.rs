//! Money: prices per million tokens by model key, read from a prices file, and the tokens a
//! study is estimated to cost before it sends anything. Shared by `study plan`, `--max-cost`
//! and the report's cost table, so that all three price a token the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Usage;

/// Prices per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
    /// What batched tokens cost as a share of these prices (OpenAI's and Anthropic's batch
    /// APIs: 0.5). Absent: batched tokens are priced in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<f64>,
}

/// Prices by model key (`GPT-4.1: {prompt: 2.0, completion: 8.0}`). A judge's sequential
/// mode (`GPT-4.1-sequential`) is priced as its model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Prices(pub BTreeMap<String, Price>);

/// Why a prices file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: `{key}`: a price must be a finite number of at least 0", path.display())]
    Negative { path: PathBuf, key: String },
}

impl Prices {
    /// Reads a prices file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Prices, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let prices: Prices = serde_saphyr::from_str(&text).map_err(|error| PriceError::Yaml {
            path: path.to_path_buf(),
            message: crate::config::yaml_message(&error),
        })?;
        for (key, price) in &prices.0 {
            let bad = |value: f64| !(value.is_finite() && value >= 0.0);
            if bad(price.prompt) || bad(price.completion) || price.batch.is_some_and(bad) {
                return Err(PriceError::Negative {
                    path: path.to_path_buf(),
                    key: key.clone(),
                });
            }
        }
        Ok(prices)
    }

    /// The price of `key`, or of the judge model a `-sequential` file stem names.
    pub fn of(&self, key: &str) -> Option<&Price> {
        self.0
            .get(key)
            .or_else(|| self.0.get(key.strip_suffix("-sequential").unwrap_or(key)))
            .or_else(|| {
                // File stems drop the organisation (`org/model` is written `model`).
                let short = crate::store::short_name(key);
                self.0
                    .iter()
                    .find(|(k, _)| crate::store::short_name(k) == short)
                    .map(|(_, p)| p)
            })
    }

    /// What `usage` of `key` costs, when `key` has a price.
    pub fn money(&self, key: &str, usage: &Usage) -> Option<f64> {
        self.money_sent(key, usage, false)
    }

    /// What `usage` of `key` costs, sent one by one or (`batched`) through a batch API, at the
    /// price's `batch` factor.
    pub fn money_sent(&self, key: &str, usage: &Usage, batched: bool) -> Option<f64> {
        self.of(key).map(|price| {
            let factor = if batched { price.batch.unwrap_or(1.0) } else { 1.0 };
            factor * (usage.prompt_tokens as f64 * price.prompt + usage.completion_tokens as f64 * price.completion)
                / 1e6
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Characters per token of the estimate: the usual figure for English text under the BPE
/// tokenizers of GPT-4-class and Llama-3-class models. The pack's prompts are English.
pub const CHARS_PER_TOKEN: usize = 4;

/// The estimated tokens of `text`.
pub fn estimate_tokens(text: &str) -> u64 {
    text.chars().count().div_ceil(CHARS_PER_TOKEN) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_read_checked_and_found_by_key_stem_or_short_name() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("prices.yaml");
        std::fs::write(
            &path,
            "GPT-4.1: {prompt: 2.0, completion: 8.0}\nQwen/Qwen3-14B: {prompt: 0.1, completion: 0.3}\n",
        )?;
        let prices = Prices::load(&path)?;
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
            ..Usage::default()
        };
        assert_eq!(prices.money("GPT-4.1", &usage), Some(6.0));
        assert_eq!(prices.money("GPT-4.1-sequential", &usage), Some(6.0));
        assert_eq!(prices.money("Qwen3-14B", &usage), Some(0.25));
        assert_eq!(prices.money("Llama-3.1-8B-Instruct", &usage), None);

        std::fs::write(
            &path,
            "GPT-4.1: {prompt: 2.0, completion: 8.0, batch: 0.5}\nQwen3-14B: {prompt: 0.1, completion: 0.3}\n",
        )?;
        let prices = Prices::load(&path)?;
        assert_eq!(prices.money_sent("GPT-4.1", &usage, true), Some(3.0));
        assert_eq!(prices.money_sent("GPT-4.1", &usage, false), Some(6.0));
        // No factor: batched tokens at the full price.
        assert_eq!(prices.money_sent("Qwen3-14B", &usage, true), Some(0.25));
        std::fs::write(&path, "GPT-4.1: {prompt: 2.0, completion: 8.0, batch: -1}\n")?;
        assert!(Prices::load(&path).is_err());

        std::fs::write(&path, "GPT-4.1: {prompt: -2.0, completion: 8.0}\n")?;
        let error = Prices::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("prices.yaml") && error.contains("`GPT-4.1`"), "{error}");
        std::fs::write(&path, "GPT-4.1: {prompt: 2.0, output: 8.0}\n")?;
        let error = Prices::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("output") && error.contains("line 1"), "{error}");
        Ok(())
    }

    #[test]
    fn the_example_prices_read() -> Result<(), PriceError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/prices.yaml");
        let prices = Prices::load(&path)?;
        assert!(prices.of("GPT-4.1").is_some() && prices.of("GPT-4.1-sequential").is_some());
        Ok(())
    }

    #[test]
    fn tokens_are_estimated_at_four_characters_each() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        // Characters, not bytes.
        assert_eq!(estimate_tokens("éééé"), 1);
    }
}
