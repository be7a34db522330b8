//! Building models and runners the way the CLI does, for library-level tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use specbench::backend::{ConcurrencyLimits, Model, OpenAiBackend, Preset, RetryPolicy};
use specbench::config::{ModelEntry, ModelFile};
use specbench::pack::Pack;

/// A model from an upstream config file entry, served by `base_url` (vLLM preset, no key),
/// with the chat template the pack names for it.
pub fn model(
    pack: &Pack,
    config: &Path,
    key: &str,
    base_url: &str,
    limits: &ConcurrencyLimits,
) -> anyhow::Result<Model> {
    let file = ModelFile::load(config)?;
    let entry = file.entry(key)?.unwrap_or_else(|| ModelEntry::bare(key));
    let template = pack.chat_template(&entry.model_name)?.map(|(_, text)| text);
    let backend = OpenAiBackend::builder(Preset::Vllm, entry.model_name.clone())
        .chat_template(template)
        .base_urls([base_url.to_string()])
        .params(entry.params)
        .extra_body(entry.extra_body)
        .timeout(Duration::from_secs(30))
        .limits(limits.clone())
        .build()?;
    let retry = RetryPolicy {
        max_attempts: 2,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    Ok(Model::new(key, Arc::new(backend), retry))
}
