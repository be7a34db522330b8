//! An in-process GGUF model through llama.cpp, as a specbench `Backend`: no server, no key.
//!
//! One worker thread owns the model and one context and decodes every request in flight
//! together (continuous batching): each request is a sequence with its own slot in the KV cache
//! and its own sampler chain; a step decodes one new token of every generating sequence plus
//! prompt tokens of sequences still reading theirs, up to the batch size. So throughput grows
//! with `--concurrency` while memory stays fixed (context per sequence × sequences).
//!
//! Prompts are built with the GGUF's own chat template (`tokenizer.chat_template`), rendered by
//! the same engine as the HTTP completions path; an assistant prefill is continued. Judge
//! requests carry their reply format, which becomes a grammar enforced by llguidance: a local
//! judge cannot produce an unparseable reply, and the text the format fixes is read in batches
//! rather than decoded token by token. Prompt prefixes already in a sequence's KV cache (shared
//! judge instructions, earlier deliberation stages) are not read again.

mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use serde_json::{Map, Value};
use specbench::backend::template::ChatTemplate;
use specbench::backend::{Backend, BackendError, Generation, ReplyFormat, Request, Usage};
use specbench::config::ModelEntry;
use specbench::judge::format::{MAX_ANALYSIS_CHARS, grammar};
use specbench::setup::{LocalEngine, LocalEngineError, LocalSpec};

use worker::{Counters, Job, Worker};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}: model file not found (run the setup step, or give --model-path)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot load the model: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("{}: the GGUF has no usable chat template: {reason}", path.display())]
    Template { path: PathBuf, reason: String },
}

/// Where `scripts/fetch-model` puts the embedded default model, below a project folder.
pub const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The embedded default model's file: `SPECBENCH_MODEL_PATH`, else [`DEFAULT_MODEL_FILE`]
/// below `root` (the working folder for the CLI, the workspace for tests and benchmarks).
pub fn default_model_path(root: &Path) -> PathBuf {
    std::env::var_os(specbench::env::Env::MODEL_PATH)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(DEFAULT_MODEL_FILE))
}

/// How much of the machine the model may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOptions {
    /// Sequences decoded together; more requests wait their turn.
    pub sequences: u32,
    /// Tokens of context each sequence has (prompt plus reply).
    pub context_per_sequence: u32,
    pub threads: i32,
    /// Keep each sequence's KV cache after its request and start later prompts with the same
    /// first tokens from it (or from a running sequence's copy). Off only to compare against.
    pub prefix_reuse: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            sequences: 4,
            context_per_sequence: 4096,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as i32)
                .unwrap_or(2),
            prefix_reuse: true,
        }
    }
}

/// Token totals of one loaded model since it was loaded, over every request it served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Prompt tokens of every request, as the prompts are long.
    pub prompt_tokens: u64,
    /// Prompt tokens actually read; the rest were already in a KV cache.
    pub evaluated_prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Completion tokens the reply grammar forced, read in batches.
    pub forced_tokens: u64,
}

/// Decoding settings, from the model's config entry (the same fields an HTTP server gets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub max_tokens: u32,
    /// 0 decodes greedily: the same prompt always gives the same reply.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub min_p: f32,
    pub seed: u32,
    /// Decode to `max_tokens` even past an end-of-generation token (for benchmarks).
    pub ignore_eos: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            ignore_eos: false,
        }
    }
}

impl Sampling {
    /// Reads `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p`, `top_k`, `min_p`
    /// and `seed` from a config entry's fields and `extra_body`; the rest keep their defaults.
    pub fn from_fields(params: &Map<String, Value>, extra_body: &Map<String, Value>) -> Sampling {
        let get = |name: &str| {
            extra_body
                .get(name)
                .or_else(|| params.get(name))
                .and_then(Value::as_f64)
        };
        let mut sampling = Sampling::default();
        if let Some(v) = get("max_tokens").or_else(|| get("max_completion_tokens")) {
            sampling.max_tokens = v.max(1.0) as u32;
        }
        if let Some(v) = get("temperature") {
            sampling.temperature = v as f32;
        }
        if let Some(v) = get("top_p") {
            sampling.top_p = v as f32;
        }
        if let Some(v) = get("top_k") {
            sampling.top_k = v as i32;
        }
        if let Some(v) = get("min_p") {
            sampling.min_p = v as f32;
        }
        if let Some(v) = get("seed") {
            sampling.seed = v as u32;
        }
        sampling
    }
}

/// The GGUF model as a `Backend`.
pub struct LocalBackend {
    worker: Arc<Worker>,
    counters: Arc<Counters>,
    template: Arc<ChatTemplate>,
    /// `bos_token`, `eos_token` as the template sees them, then `chat_template_kwargs`.
    variables: Map<String, Value>,
    sampling: Sampling,
    path: PathBuf,
    options: LocalOptions,
}

impl LocalBackend {
    /// Loads the model on its worker thread; returns once it is ready to decode.
    pub fn load(
        path: &Path,
        options: LocalOptions,
        sampling: Sampling,
        template_kwargs: Map<String, Value>,
    ) -> Result<LocalBackend, LocalError> {
        if !path.is_file() {
            return Err(LocalError::Missing {
                path: path.to_path_buf(),
            });
        }
        let counters = Arc::new(Counters::default());
        let (worker, facts) = Worker::start(path, options, counters.clone()).map_err(|reason| LocalError::Load {
            path: path.to_path_buf(),
            reason,
        })?;
        let source = facts.chat_template.ok_or_else(|| LocalError::Template {
            path: path.to_path_buf(),
            reason: "no tokenizer.chat_template in its metadata".into(),
        })?;
        let template = ChatTemplate::new(&source).map_err(|e| LocalError::Template {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut variables = Map::new();
        if let Some(bos) = facts.bos_token {
            variables.insert("bos_token".into(), bos.into());
        }
        if let Some(eos) = facts.eos_token {
            variables.insert("eos_token".into(), eos.into());
        }
        variables.extend(template_kwargs);
        Ok(LocalBackend {
            worker: Arc::new(worker),
            counters,
            template: Arc::new(template),
            variables,
            sampling,
            path: path.to_path_buf(),
            options,
        })
    }

    /// The same loaded model with other decoding settings (a judge beside a generator): both
    /// share one worker, so their requests are batched together.
    pub fn with_sampling(&self, sampling: Sampling) -> LocalBackend {
        LocalBackend {
            worker: self.worker.clone(),
            counters: self.counters.clone(),
            template: self.template.clone(),
            variables: self.variables.clone(),
            sampling,
            path: self.path.clone(),
            options: self.options,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token totals of the loaded model (shared by every `with_sampling` sibling).
    pub fn stats(&self) -> LocalStats {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        LocalStats {
            prompt_tokens: read(&self.counters.prompt_tokens),
            evaluated_prompt_tokens: read(&self.counters.evaluated_prompt_tokens),
            completion_tokens: read(&self.counters.completion_tokens),
            forced_tokens: read(&self.counters.forced_tokens),
        }
    }

    /// The prompt text `request` becomes: the chat template applied, a prefill continued.
    pub fn prompt(&self, request: &Request) -> Result<String, BackendError> {
        self.template
            .render(&request.messages, !request.prefill, request.prefill, &self.variables)
            .map_err(|e| BackendError::Config(format!("{}: {e}", self.path.display())))
    }
}

/// `sampling` for a request of reply `format`: a constrained reply must be able to finish, since
/// a grammar cut off by `max_tokens` would not parse, so the budget is raised to room for every
/// line at its longest typical length (analysis plus verdict).
fn sampling_for(mut sampling: Sampling, format: Option<ReplyFormat>) -> Sampling {
    if let Some(format) = format {
        let lines = match format {
            ReplyFormat::Joint { safety, behavioral } => safety + behavioral + 4,
            ReplyFormat::Sequential => 1,
        };
        let needed = (lines * (MAX_ANALYSIS_CHARS / 2 + 8) + 16) as u32;
        sampling.max_tokens = sampling.max_tokens.max(needed);
    }
    sampling
}

/// The embedded engine for `specbench::setup`: each GGUF file is loaded once, and every model
/// over it (a generator and a judge) shares its worker, so their requests are batched together.
#[derive(Default)]
pub struct Engine {
    loaded: std::sync::Mutex<Vec<Arc<LocalBackend>>>,
}

impl LocalEngine for Engine {
    fn backend(&self, entry: &ModelEntry, path: &Path, spec: LocalSpec) -> Result<Arc<dyn Backend>, LocalEngineError> {
        let sampling = Sampling::from_fields(&entry.params, &entry.extra_body);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(backend) = loaded.iter().find(|b| b.path() == path) {
            return Ok(Arc::new(backend.with_sampling(sampling)));
        }
        let options = LocalOptions {
            sequences: spec.sequences,
            context_per_sequence: spec.context_per_sequence,
            threads: spec.threads.unwrap_or(LocalOptions::default().threads),
            ..LocalOptions::default()
        };
        let kwargs = entry
            .extra_body
            .get("chat_template_kwargs")
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        let backend = LocalBackend::load(path, options, sampling, kwargs)?;
        let shared = Arc::new(backend);
        loaded.push(shared.clone());
        Ok(Arc::new(shared.with_sampling(sampling)))
    }

    /// `SPECBENCH_MODEL_PATH`, else the fetched default model below the working folder.
    fn default_model_path(&self) -> PathBuf {
        default_model_path(Path::new(""))
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let prompt = self.prompt(request)?;
        let grammar = request.format.map(|format| grammar(format, MAX_ANALYSIS_CHARS));
        let sampling = sampling_for(self.sampling, request.format);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            prompt,
            grammar,
            stops: request.stop.clone().unwrap_or_default(),
            sampling,
            reply,
        };
        self.worker.submit(job).map_err(BackendError::Config)?;
        let done = answer
            .await
            .map_err(|_| BackendError::Config("the local model's worker stopped".into()))?
            .map_err(BackendError::Config)?;
        Ok(Generation {
            text: done.text,
            reasoning: None,
            usage: Usage {
                prompt_tokens: done.prompt_tokens,
                completion_tokens: done.completion_tokens,
                total_tokens: done.prompt_tokens + done.completion_tokens,
            },
            finish_reason: Some(done.finish_reason.into()),
        })
    }

    fn describe(&self) -> Value {
        serde_json::json!({
            "provider": "local",
            "model_path": self.path,
            "sequences": self.options.sequences,
            "context_per_sequence": self.options.context_per_sequence,
            "threads": self.options.threads,
            "sampling": {
                "max_tokens": self.sampling.max_tokens,
                "temperature": self.sampling.temperature,
                "top_p": self.sampling.top_p,
                "top_k": self.sampling.top_k,
                "min_p": self.sampling.min_p,
                "seed": self.sampling.seed,
            },
            // Judge replies are decoded under a grammar of the reply format.
            "constrained_judging": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constrained_reply_gets_room_for_every_line() {
        let sampling = Sampling::default();
        assert_eq!(sampling_for(sampling, None).max_tokens, sampling.max_tokens);
        // Child's joint format: 12 safety and 10 behavioral lines do not fit in 256 tokens.
        let joint = sampling_for(
            sampling,
            Some(ReplyFormat::Joint {
                safety: 12,
                behavioral: 10,
            }),
        );
        assert!(joint.max_tokens >= 26 * 50, "{}", joint.max_tokens);
        assert!(sampling_for(sampling, Some(ReplyFormat::Sequential)).max_tokens >= sampling.max_tokens);
        let generous = Sampling {
            max_tokens: 5000,
            ..sampling
        };
        assert_eq!(
            sampling_for(
                generous,
                Some(ReplyFormat::Joint {
                    safety: 12,
                    behavioral: 10
                })
            )
            .max_tokens,
            5000,
            "a larger configured budget stands"
        );
    }
}
