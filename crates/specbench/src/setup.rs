//! A run as data, and the one step that turns it into runners.
//!
//! [`RunConfig`] holds everything a run needs (pack, items, model, methods, judge, limits),
//! deserializable so that a study file can hold a list of them; the CLI maps its flags onto it.
//! [`RunConfig::resolve`] loads the pack and protocol, reads the upstream model and TTD config
//! files, picks the defaults (the embedded model when no server is named, the paper's GPT-4.1
//! judge otherwise, the local judge's greedy decoding), builds the models, judges and methods,
//! and returns the [`Runner`]s, one per method. Nothing is sent and nothing is written.
//!
//! The embedded model lives in another crate (`specbench-local`, which depends on this one), so
//! it comes in through the [`LocalEngine`] trait.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::batch::{BatchBackend, BatchTiming};
use crate::backend::reward::RewardModel;
use crate::backend::template::ChatTemplate;
use crate::backend::{
    AnthropicBackend, ApiKey, Backend, BackendError, ConcurrencyLimits, DEFAULT_MAX_REPLY_BYTES, Model, OpenAiBackend,
    PrefillStyle, Preset, RetryPolicy, Stop,
};
use crate::cache::ResponseCache;
use crate::config::{ConfigError, MethodParams, ModelEntry, ModelFile};
use crate::judge::{Judge, JudgeMode};
use crate::method::{MethodConfig, MethodError, MethodKind, Scorer, ScorerKind};
use crate::pack::{self, ItemSelection, Pack, PackError, PromptVariant};
use crate::protocol::{Protocol, ProtocolError};
use crate::run::{RunPlan, Runner, Shard};
use crate::score::Alpha;
use crate::store::Store;
use crate::store::name::{self, NameError};

/// The embedded default model: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), fetched by
/// `scripts/fetch-model`.
pub const DEFAULT_LOCAL_MODEL: &str = "SmolLM2-135M-Instruct";

/// The judge when none is named and the model under test is served: the paper's.
pub const DEFAULT_JUDGE: &str = "GPT-4.1";

/// Why a configuration cannot run. All of them are bad input: nothing was sent or written.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0} must be at least 1")]
    AtLeastOne(&'static str),
    #[error("--timeout must be a positive number of seconds")]
    Timeout,
    #[error("--alpha {0}: must lie between 0 and 1")]
    Alpha(f64),
    #[error("no scenario pack: give --data DIR, set SPECBENCH_DATA, or run `specbench data pull` (into {})", .0.display())]
    NoPack(PathBuf),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{name} = {value} is too large")]
    TooLarge { name: String, value: u64 },
    #[error("a parameter of another method was given with --method {0}")]
    OtherMethodParameter(String),
    #[error("model `{model}`: {source}")]
    Backend {
        model: String,
        #[source]
        source: BackendError,
    },
    #[error("a local model is loaded from a GGUF file, not a server")]
    LocalServer,
    #[error("{}: cannot read the chat template: {source}", path.display())]
    ReadChatTemplate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    ChatTemplate { path: PathBuf, problem: String },
    #[error("--prefill completions renders the chat template here, and there is none for `{0}`: give --chat-template")]
    NoChatTemplate(String),
    #[error(
        "--method {method} sends an assistant prefill for the model to continue, and {provider} cannot continue one \
         (it answers after it): run the prefill methods on a server that continues a turn (vllm, compatible, anthropic)"
    )]
    CannotPrefill { method: MethodKind, provider: &'static str },
    #[error(
        "model `{model}` cannot be batched: batches go through OpenAI's Batch API or Anthropic's Message \
         Batches, which provider {provider} does not have (use provider openai or anthropic, or a compatible \
         server that implements /v1/batches)"
    )]
    NoBatchApi { model: String, provider: &'static str },
    #[error("--scorer judge ranks samples with the run's judge: use `specbench run`")]
    ScorerNeedsJudge,
    #[error("--method {0} with --scorer reward needs --reward-model and --reward-base-url")]
    NoRewardModel(MethodKind),
    #[error("the API key variable {0} is not set")]
    KeyNotSet(String),
    #[error("{0}")]
    Reward(BackendError),
    /// The embedded model could not be loaded (the engine's own error).
    #[error("{0}")]
    Local(LocalEngineError),
    /// Configurations resolved with [`Shared::offline`] load no embedded model.
    #[error("the embedded model is not loaded to read the response cache")]
    NotLoaded,
    #[error(transparent)]
    Method(#[from] MethodError),
}

/// What a run does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Task {
    /// Generate, then judge.
    #[default]
    Run,
    /// Generate only.
    Generate,
    /// Judge the stored responses of `model` (a config key).
    Evaluate { model: String },
}

/// Everything one run needs: a study file holds a list of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub task: Task,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub methods: MethodsConfig,
    /// Every judge of the run (each with its modes); the first also scores Best-of-N's and
    /// TPO's samples with `scorer: judge`. Default: one judge, chosen as [`JudgeConfig`] says.
    pub judges: Vec<JudgeConfig>,
    pub exec: ExecConfig,
    /// Generate from the adversarial prompt (upstream's default), else from the original one.
    pub adversarial: bool,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            task: Task::default(),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            methods: MethodsConfig::default(),
            judges: vec![JudgeConfig::default()],
            exec: ExecConfig::default(),
            adversarial: true,
        }
    }
}

/// Which pack, scenarios and items, and where results go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The pack; else the one `specbench data pull` put in place.
    pub data: Option<PathBuf>,
    /// Scenario names; empty: every scenario of the pack.
    pub scenarios: Vec<String>,
    /// The first N items of each scenario.
    pub limit: Option<usize>,
    /// These item indices of each scenario.
    pub items: Vec<usize>,
    /// N items per scenario, balanced between unsafe and safe.
    pub sample: Option<usize>,
    pub results: PathBuf,
    pub shard: Option<Shard>,
}

impl DataConfig {
    /// Which items of each scenario: `limit`, else `sample`, else `items`, else all.
    pub fn selection(&self) -> ItemSelection {
        match (self.limit, self.sample, self.items.is_empty()) {
            (Some(limit), _, _) => ItemSelection::First(limit),
            (None, Some(sample), _) => ItemSelection::Balanced(sample),
            (None, None, false) => ItemSelection::Indices(self.items.clone()),
            (None, None, true) => ItemSelection::All,
        }
    }
}

impl Default for DataConfig {
    fn default() -> DataConfig {
        DataConfig {
            data: None,
            scenarios: Vec::new(),
            limit: None,
            items: Vec::new(),
            sample: None,
            results: PathBuf::from("result"),
            shard: None,
        }
    }
}

/// Which kind of server a model is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Deepseek,
    Vllm,
    Compatible,
    /// Anthropic's Messages API (api.anthropic.com unless a base URL is given).
    Anthropic,
    /// Azure OpenAI: the base URL is a deployment's; the key in `AZURE_OPENAI_API_KEY`.
    Azure,
    /// Gemini through its OpenAI-compatible endpoint; the key in `GEMINI_API_KEY`.
    Gemini,
    /// The embedded engine: a GGUF file in this process.
    Local,
}

impl Provider {
    /// Its name as `--provider` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Deepseek => "deepseek",
            Provider::Vllm => "vllm",
            Provider::Compatible => "compatible",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Gemini => "gemini",
            Provider::Local => "local",
        }
    }
}

/// The hosted APIs that answer after a final assistant message instead of continuing it
/// (OpenAI's and Azure's chat completions refuse vLLM's `continue_final_message`, Gemini's
/// OpenAI-compatible endpoint starts a new turn), by the name a refusal shows; `None` for the
/// servers that continue one (vLLM and other OpenAI-compatible servers, Anthropic). DeepSeek's
/// own prefix convention (`prefix: true`, beta) is not sent, so it is not refused either.
fn answers_after_prefill(provider: Option<Provider>, base_urls: &[String]) -> Option<&'static str> {
    match provider {
        Some(Provider::Openai) => Some("openai"),
        None if base_urls.is_empty() => Some("openai"),
        Some(Provider::Azure) => Some("azure"),
        Some(Provider::Gemini) => Some("gemini"),
        _ => None,
    }
}

/// How an assistant prefill reaches a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefill {
    /// As the chat's last message, continued by the server (`continue_final_message`).
    #[default]
    Chat,
    /// The chat template rendered here, sent to the completions API.
    Completions,
}

/// The model under test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Its config key; none: the embedded default model.
    pub key: Option<String>,
    /// A GGUF file for the embedded engine.
    pub model_path: Option<PathBuf>,
    /// The upstream model file; else the pack's `config/config_model.yaml`.
    pub model_config: Option<PathBuf>,
    pub provider: Option<Provider>,
    pub base_urls: Vec<String>,
    /// The environment variable that holds the API key (never the key itself).
    pub api_key_env: Option<String>,
    pub chat_template: Option<PathBuf>,
    pub prefill: Prefill,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Sent as the request's `seed` (OpenAI, vLLM; the embedded engine seeds its sampler), so
    /// a sampled run can be repeated; part of the cache key. None: no seed, as upstream.
    pub seed: Option<u64>,
    /// Through the provider's batch API (half price, answered within 24 hours).
    pub batch: bool,
}

impl ModelConfig {
    /// Whether it runs on the embedded engine: said so, or a GGUF file (or nothing) named and
    /// no server.
    pub fn is_local(&self) -> bool {
        match self.provider {
            Some(Provider::Local) => true,
            Some(_) => false,
            None => self.base_urls.is_empty() && (self.model_path.is_some() || self.key.is_none()),
        }
    }

    /// Its key: the one given, else the embedded default model's.
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_LOCAL_MODEL)
    }
}

/// What ranks Best-of-N's and TPO's samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorerChoice {
    /// A reward model behind vLLM's score API.
    #[default]
    Reward,
    /// The run's judge: an oracle-scored upper bound.
    Judge,
}

/// The methods, with the parameters given (the rest from the TTD config file, then upstream's
/// defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodsConfig {
    pub methods: Vec<MethodKind>,
    pub rethink_count: Option<u32>,
    pub max_iters: Option<u32>,
    pub max_history_length: Option<u32>,
    pub align3_stages: Vec<u8>,
    pub n: Option<u32>,
    pub tpo_samples: Option<u32>,
    pub tpo_iterations: Option<u32>,
    pub scorer: ScorerChoice,
    pub reward_model: Option<String>,
    pub reward_base_url: Option<String>,
    pub reward_api_key_env: Option<String>,
    /// Upstream's TTD config file; else the pack's `config/config_ttd.yaml`.
    pub ttd_config: Option<PathBuf>,
}

impl Default for MethodsConfig {
    fn default() -> MethodsConfig {
        MethodsConfig {
            methods: vec![MethodKind::Vanilla],
            rethink_count: None,
            max_iters: None,
            max_history_length: None,
            align3_stages: Vec::new(),
            n: None,
            tpo_samples: None,
            tpo_iterations: None,
            scorer: ScorerChoice::default(),
            reward_model: None,
            reward_base_url: None,
            reward_api_key_env: None,
            ttd_config: None,
        }
    }
}

/// The judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Its config key; none: the embedded model when the model under test is local, else the
    /// paper's GPT-4.1.
    pub key: Option<String>,
    pub model_path: Option<PathBuf>,
    pub modes: Vec<JudgeMode>,
    /// The upstream judge file; else the pack's `config/config_eval_model.yaml`.
    pub judge_config: Option<PathBuf>,
    pub provider: Option<Provider>,
    pub base_urls: Vec<String>,
    pub api_key_env: Option<String>,
    /// Judge again the items whose judge reply never parsed.
    pub retry_errors: bool,
    /// Through the provider's batch API (half price, answered within 24 hours).
    pub batch: bool,
}

impl JudgeConfig {
    /// The judge's model key when it judges `model`, as the run picks it: the one given; the
    /// embedded default for a local judge; the generator's own for a local generator with no
    /// judge named; else the paper's GPT-4.1. Result files are named after it.
    pub fn key_for(&self, model: &ModelConfig) -> String {
        let local =
            matches!(self.provider, Some(Provider::Local)) || (self.provider.is_none() && self.model_path.is_some());
        let nothing_named =
            self.key.is_none() && self.provider.is_none() && self.base_urls.is_empty() && self.model_path.is_none();
        match &self.key {
            Some(key) => key.clone(),
            None if local => DEFAULT_LOCAL_MODEL.to_string(),
            None if nothing_named && model.is_local() => model.key_or_default().to_string(),
            None => DEFAULT_JUDGE.to_string(),
        }
    }
}

impl Default for JudgeConfig {
    fn default() -> JudgeConfig {
        JudgeConfig {
            key: None,
            model_path: None,
            modes: vec![JudgeMode::Joint],
            judge_config: None,
            provider: None,
            base_urls: Vec::new(),
            api_key_env: None,
            retry_errors: false,
            batch: false,
        }
    }
}

/// Limits, retries, scoring and the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Requests in flight at once per endpoint, shared by model and judge.
    pub concurrency: usize,
    /// Seconds one request may take.
    pub timeout: f64,
    pub max_attempts: u32,
    pub max_reply_bytes: usize,
    /// SAR's α.
    pub alpha: f64,
    /// Local models: tokens of context per sequence.
    pub local_context: u32,
    /// Local models: CPU threads; none: all cores.
    pub local_threads: Option<i32>,
    pub no_cache: bool,
    /// The response cache folder; none: the default one. Batch journals live in its
    /// `batches` folder.
    pub cache_dir: Option<PathBuf>,
    /// Seconds between two polls of a running batch.
    pub batch_poll: f64,
}

impl Default for ExecConfig {
    fn default() -> ExecConfig {
        ExecConfig {
            concurrency: 8,
            timeout: 600.0,
            max_attempts: 6,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            alpha: Alpha::DEFAULT.get(),
            local_context: 4096,
            local_threads: None,
            no_cache: false,
            cache_dir: None,
            batch_poll: 30.0,
        }
    }
}

/// How the embedded model is run: what [`LocalEngine::backend`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSpec {
    /// Sequences decoded together (= the run's concurrency).
    pub sequences: u32,
    pub context_per_sequence: u32,
    /// CPU threads; none: the engine's default.
    pub threads: Option<i32>,
}

/// Why the embedded engine could not load a model: the engine's own typed error.
pub type LocalEngineError = Box<dyn std::error::Error + Send + Sync>;

/// The embedded model engine, from the crate that has it (`specbench_local::Engine`).
pub trait LocalEngine: Send + Sync {
    /// A backend decoding with `entry`'s parameters over the GGUF at `path`. One file is loaded
    /// once and shared (a local judge beside a local generator), so their requests are batched
    /// together.
    fn backend(&self, entry: &ModelEntry, path: &Path, spec: LocalSpec) -> Result<Arc<dyn Backend>, LocalEngineError>;

    /// The model file used when none is named.
    fn default_model_path(&self) -> PathBuf;
}

/// No embedded engine: a configuration that needs one fails with this message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLocalEngine;

impl LocalEngine for NoLocalEngine {
    fn backend(
        &self,
        _entry: &ModelEntry,
        path: &Path,
        _spec: LocalSpec,
    ) -> Result<Arc<dyn Backend>, LocalEngineError> {
        Err(format!("{}: this build has no embedded model engine", path.display()).into())
    }

    fn default_model_path(&self) -> PathBuf {
        PathBuf::from("models")
    }
}

/// The pack a configuration reads: `data`, else the pack `specbench data pull` fetched.
pub fn resolve_pack(data: Option<&Path>) -> Result<PathBuf, SetupError> {
    if let Some(dir) = data {
        return Ok(dir.to_path_buf());
    }
    let pulled = pack::pull::default_dir();
    if pulled.is_dir() {
        return Ok(pulled);
    }
    Err(SetupError::NoPack(pulled))
}

/// Loads the pack at `dir`; its warnings (prompts over the length to warn at) are logged.
pub fn load_pack(dir: &Path) -> Result<Pack, SetupError> {
    let pack = pack::load(dir)?;
    for warning in &pack.warnings {
        tracing::warn!("{warning}");
    }
    Ok(pack)
}

pub fn alpha(value: f64) -> Result<Alpha, SetupError> {
    Alpha::new(value).ok_or(SetupError::Alpha(value))
}

/// A pack folder, loaded, with its protocol texts.
type LoadedPack = (PathBuf, Arc<Pack>, Arc<Protocol>);

/// What several configurations share when they run at once (the cells of a study): one cap of
/// requests in flight per endpoint, whichever cell sends them, so a server several models sit
/// behind gets no more than its cap and a fleet stays busy while one model's cells wait on
/// another; and one response cache.
#[derive(Clone)]
pub struct Shared {
    limits: ConcurrencyLimits,
    cache: Option<Arc<ResponseCache>>,
    stop: Stop,
    /// Items in flight across every runner, when they run at once; none: each its own.
    item_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Packs (with their protocol texts) by folder, loaded once for every configuration.
    packs: Arc<std::sync::Mutex<Vec<LoadedPack>>>,
    /// One HTTP connection pool for every server backend, when they run at once.
    client: Option<reqwest::Client>,
    /// See [`Shared::offline`].
    offline: bool,
    /// One batching backend per journal (per model), whichever configuration asks: two
    /// cells' judges on one model share its journal and its batches.
    batches: Arc<std::sync::Mutex<Vec<Arc<BatchBackend>>>>,
}

impl Shared {
    /// Caps and cache as `exec` says; `stop` is shared by every model and runner (Ctrl-C).
    pub fn new(exec: &ExecConfig, stop: Stop) -> Shared {
        // Opened at the first request, once every check has passed: a refused command leaves
        // no cache file behind.
        let cache = (!exec.no_cache).then(|| {
            let dir = exec.cache_dir.clone().unwrap_or_else(crate::cache::default_dir);
            Arc::new(ResponseCache::deferred(&dir))
        });
        Shared {
            limits: ConcurrencyLimits::new(exec.concurrency).with_stop(stop.clone()),
            cache,
            stop,
            item_slots: None,
            packs: Arc::default(),
            client: None,
            offline: false,
            batches: Arc::default(),
        }
    }

    /// For asking what the response cache holds, sending nothing: every model is stopped
    /// from the start (a stopped model still answers from the cache), the cache is read only
    /// (none when its file does not exist, or with `no_cache`), no API key is read, and no
    /// embedded model is loaded (resolving one is [`SetupError::NotLoaded`]).
    pub fn offline(exec: &ExecConfig) -> Shared {
        let stop = Stop::default();
        stop.stop();
        let cache = (!exec.no_cache)
            .then(|| ResponseCache::read_only(&exec.cache_dir.clone().unwrap_or_else(crate::cache::default_dir)))
            .flatten()
            .map(Arc::new);
        Shared {
            limits: ConcurrencyLimits::new(exec.concurrency).with_stop(stop.clone()),
            cache,
            stop,
            item_slots: None,
            packs: Arc::default(),
            client: None,
            offline: true,
            batches: Arc::default(),
        }
    }

    /// For runners that run at once against `endpoints` servers in all: items in flight are
    /// capped across them, four per request slot (an item makes its calls one after another,
    /// so that keeps every slot busy) instead of four per slot in each runner, which would
    /// hold a study's memory in proportion to its cells.
    pub fn at_once(mut self, exec: &ExecConfig, endpoints: usize) -> Shared {
        let slots = exec.concurrency.max(1) * endpoints.max(1) * 2;
        self.item_slots = Some(Arc::new(tokio::sync::Semaphore::new(slots)));
        // A shared pool; should it fail to build, each backend reports that with its own.
        self.client = crate::backend::openai::http_client(Duration::from_secs_f64(exec.timeout.max(0.001))).ok();
        self
    }

    /// The pack in `dir` and its protocol texts, loaded at the first call.
    fn pack(&self, dir: &Path) -> Result<(Arc<Pack>, Arc<Protocol>), SetupError> {
        let mut packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pack, protocol)) = packs.iter().find(|(loaded, _, _)| loaded == dir) {
            return Ok((pack.clone(), protocol.clone()));
        }
        let pack = Arc::new(load_pack(dir)?);
        let protocol = Arc::new(Protocol::for_pack(pack.protocol_dir.as_deref())?);
        tracing::info!(protocol = ?protocol.source, hash = %protocol.hash, "protocol texts");
        packs.push((dir.to_path_buf(), pack.clone(), protocol.clone()));
        Ok((pack, protocol))
    }
}

impl RunConfig {
    /// Checks the configuration and builds its runners, one per method, in the order given.
    /// `stop` is shared by every model and runner (Ctrl-C). Nothing is sent or written.
    pub fn resolve(&self, engine: &dyn LocalEngine, stop: Stop) -> Result<Vec<Runner>, SetupError> {
        self.resolve_shared(engine, &Shared::new(&self.exec, stop))
    }

    /// [`RunConfig::resolve`] with caps and cache shared with other configurations.
    pub fn resolve_shared(&self, engine: &dyn LocalEngine, shared: &Shared) -> Result<Vec<Runner>, SetupError> {
        if let Task::Evaluate { model } = &self.task {
            name::check_model_key("--model", model)?;
        }
        let session = Session::new(&self.data, &self.exec, engine, shared)?;
        let methods = session.methods(&self.methods)?;
        let mut runners = Vec::with_capacity(methods.len());
        match &self.task {
            Task::Run => {
                let generator = session.model(&self.model, &methods)?;
                let judges = self.all_judges(&session, Some(&generator))?;
                let scorer = session.scorer(&self.methods, judges.first())?;
                for method in methods {
                    let mut plan = session.plan(self, generator.model.key(), method)?;
                    plan.retry_judge_errors = self.retry_judge_errors();
                    runners.push(session.runner(
                        plan,
                        Some(generator.model.clone()),
                        judges.clone(),
                        scorer.as_ref(),
                    )?);
                }
            }
            Task::Generate => {
                let generator = session.model(&self.model, &methods)?;
                let scorer = session.scorer(&self.methods, None)?;
                for method in methods {
                    let plan = session.plan(self, generator.model.key(), method)?;
                    runners.push(session.runner(plan, Some(generator.model.clone()), Vec::new(), scorer.as_ref())?);
                }
            }
            Task::Evaluate { model } => {
                let judges = self.all_judges(&session, None)?;
                for method in methods {
                    let plan = RunPlan {
                        scenarios: self.data.scenarios.clone(),
                        items: ItemSelection::All,
                        variant: PromptVariant::Adversarial,
                        method,
                        model_key: model.clone(),
                        alpha: alpha(self.exec.alpha)?,
                        item_concurrency: self.item_concurrency(),
                        shard: self.data.shard,
                        retry_judge_errors: self.retry_judge_errors(),
                    };
                    runners.push(session.runner(plan, None, judges.clone(), None)?);
                }
            }
        }
        Ok(runners)
    }
}

impl RunConfig {
    /// Items in flight at once: four per request slot, or every item when a model batches (a
    /// batch holds every item's next call).
    fn item_concurrency(&self) -> usize {
        if self.model.batch || self.judges.iter().any(|judge| judge.batch) {
            crate::backend::batch::MAX_BATCH_REQUESTS
        } else {
            self.exec.concurrency.max(1) * 4
        }
    }

    fn all_judges(&self, session: &Session<'_>, generator: Option<&Generator>) -> Result<Vec<Judge>, SetupError> {
        let mut judges = Vec::new();
        for judge in &self.judges {
            judges.extend(session.judges(judge, generator)?);
        }
        Ok(judges)
    }

    /// Judging again the items whose reply never parsed, when any judge asks for it.
    fn retry_judge_errors(&self) -> bool {
        self.judges.iter().any(|judge| judge.retry_errors)
    }
}

/// The method with its parameters: `config` first, then the TTD config file, then upstream's
/// defaults.
pub fn method_config(
    config: &MethodsConfig,
    kind: MethodKind,
    default_ttd: Option<PathBuf>,
) -> Result<MethodConfig, SetupError> {
    let file = config.ttd_config.clone().or(default_ttd.filter(|p| p.is_file()));
    let params = match &file {
        Some(path) => MethodParams::load(path)?,
        None => MethodParams::default(),
    };
    let from_file = |name: &str| -> Result<Option<u32>, SetupError> {
        let value = params.integer(kind.name(), name)?;
        value
            .map(|v| {
                u32::try_from(v).map_err(|_| SetupError::TooLarge {
                    name: name.to_string(),
                    value: v,
                })
            })
            .transpose()
    };
    let mut method = MethodConfig::with_defaults(kind);
    match &mut method {
        MethodConfig::MoreThink { rethink_count } => {
            *rethink_count = config
                .rethink_count
                .or(from_file("rethink_count")?)
                .unwrap_or(*rethink_count);
            if *rethink_count == 0 {
                return Err(SetupError::AtLeastOne("--rethink-count"));
            }
        }
        MethodConfig::SelfRefine {
            max_iters,
            max_history_length,
        } => {
            *max_iters = config.max_iters.or(from_file("max_iters")?).unwrap_or(*max_iters);
            *max_history_length = config
                .max_history_length
                .or(from_file("max_history_length")?)
                .unwrap_or(*max_history_length);
        }
        MethodConfig::Align3 { stages } if !config.align3_stages.is_empty() => {
            *stages = config.align3_stages.clone();
        }
        MethodConfig::BestOfN { n, scorer } => {
            *n = config.n.or(from_file("n")?).unwrap_or(*n).max(1);
            *scorer = scorer_kind(config.scorer);
        }
        MethodConfig::Tpo {
            samples,
            iterations,
            scorer,
        } => {
            *samples = config.tpo_samples.or(from_file("samples")?).unwrap_or(*samples).max(1);
            *iterations = config
                .tpo_iterations
                .or(from_file("iterations")?)
                .unwrap_or(*iterations);
            *scorer = scorer_kind(config.scorer);
        }
        _ => {}
    }
    let runs = |kind: MethodKind| config.methods.contains(&kind);
    let given_for_other = (config.rethink_count.is_some() && !runs(MethodKind::MoreThink))
        || ((config.max_iters.is_some() || config.max_history_length.is_some()) && !runs(MethodKind::SelfRefine))
        || (!config.align3_stages.is_empty() && !runs(MethodKind::Align3))
        || (config.n.is_some() && !runs(MethodKind::BestOfN))
        || ((config.tpo_samples.is_some() || config.tpo_iterations.is_some()) && !runs(MethodKind::Tpo));
    if given_for_other {
        let names: Vec<&str> = config.methods.iter().map(|k| k.name()).collect();
        return Err(SetupError::OtherMethodParameter(names.join(",")));
    }
    Ok(method)
}

fn scorer_kind(choice: ScorerChoice) -> ScorerKind {
    match choice {
        ScorerChoice::Reward => ScorerKind::RewardModel,
        ScorerChoice::Judge => ScorerKind::JudgeOracle,
    }
}

/// The model under test, and where it came from when it runs in this process.
struct Generator {
    model: Model,
    local: Option<(ModelEntry, PathBuf)>,
}

/// Where a model is served.
struct Server<'a> {
    provider: Option<Provider>,
    base_urls: &'a [String],
    key_variable: Option<&'a String>,
    batch: bool,
}

/// What every part of one configuration shares: the pack, the protocol, and (with other
/// configurations that run at once) the limits, the cache and the stop.
struct Session<'e> {
    pack: Arc<Pack>,
    protocol: Arc<Protocol>,
    store: Store,
    data: DataConfig,
    exec: ExecConfig,
    engine: &'e dyn LocalEngine,
    shared: Shared,
}

impl<'e> Session<'e> {
    fn new(
        data: &DataConfig,
        exec: &ExecConfig,
        engine: &'e dyn LocalEngine,
        shared: &Shared,
    ) -> Result<Session<'e>, SetupError> {
        if exec.concurrency == 0 {
            return Err(SetupError::AtLeastOne("--concurrency"));
        }
        if exec.max_attempts == 0 {
            return Err(SetupError::AtLeastOne("--max-attempts"));
        }
        if !(exec.timeout.is_finite() && exec.timeout > 0.0) {
            return Err(SetupError::Timeout);
        }
        if exec.max_reply_bytes == 0 {
            return Err(SetupError::AtLeastOne("--max-reply-bytes"));
        }
        if data.limit == Some(0) {
            return Err(SetupError::AtLeastOne("--limit"));
        }
        if data.sample == Some(0) {
            return Err(SetupError::AtLeastOne("--sample"));
        }
        let pack_dir = resolve_pack(data.data.as_deref())?;
        let (pack, protocol) = shared.pack(&pack_dir)?;
        Ok(Session {
            pack,
            protocol,
            store: Store::new(&data.results),
            data: data.clone(),
            exec: exec.clone(),
            engine,
            shared: shared.clone(),
        })
    }

    /// The model `key` on `backend`, with the configuration's retries and the shared cache and
    /// stop.
    fn model_on(&self, key: &str, backend: Arc<dyn Backend>) -> Model {
        Model::new(key.to_string(), backend, self.retry())
            .with_cache(self.shared.cache.clone())
            .with_stop(self.shared.stop.clone())
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.exec.max_attempts,
            ..RetryPolicy::default()
        }
    }

    fn config_file(&self, given: Option<&Path>, default_name: &str) -> Result<Option<ModelFile>, SetupError> {
        let path: Option<PathBuf> = match given {
            Some(path) => Some(path.to_path_buf()),
            None => self
                .pack
                .config_dir
                .as_ref()
                .map(|dir| dir.join(default_name))
                .filter(|p| p.is_file()),
        };
        Ok(path.map(|p| ModelFile::load(&p)).transpose()?)
    }

    fn entry(&self, key: &str, file: Option<&ModelFile>) -> Result<ModelEntry, SetupError> {
        match file {
            Some(file) => match file.entry(key)? {
                Some(entry) => Ok(entry),
                None => {
                    if key != DEFAULT_LOCAL_MODEL && !self.shared.offline {
                        tracing::warn!(
                            "model `{key}` is not in {}; sending it as the model name with no parameters",
                            file.file.display()
                        );
                    }
                    Ok(ModelEntry::bare(key))
                }
            },
            None => Ok(ModelEntry::bare(key)),
        }
    }

    fn backend(
        &self,
        entry: &ModelEntry,
        server: Server<'_>,
        chat_template: Option<String>,
        prefill: PrefillStyle,
    ) -> Result<Model, SetupError> {
        let Server {
            provider,
            base_urls,
            key_variable,
            batch,
        } = server;
        if batch
            && !matches!(
                provider,
                None | Some(Provider::Openai | Provider::Compatible | Provider::Anthropic)
            )
        {
            return Err(SetupError::NoBatchApi {
                model: entry.key.clone(),
                provider: provider.map_or("local", Provider::name),
            });
        }
        let preset = match provider {
            Some(Provider::Anthropic) => return self.anthropic(entry, base_urls, key_variable, batch),
            Some(Provider::Openai) => Preset::OpenAi,
            Some(Provider::Deepseek) => Preset::DeepSeek,
            Some(Provider::Vllm) => Preset::Vllm,
            Some(Provider::Compatible) => Preset::Compatible,
            Some(Provider::Azure) => Preset::Azure,
            Some(Provider::Gemini) => Preset::Gemini,
            Some(Provider::Local) => return Err(SetupError::LocalServer),
            None if base_urls.is_empty() => Preset::OpenAi,
            None => Preset::Compatible,
        };
        let mut builder = OpenAiBackend::builder(preset, entry.model_name.clone());
        if self.shared.offline {
            builder.without_key();
        }
        let backend = builder
            .base_urls(base_urls.iter().cloned())
            .api_key_variable(key_variable.cloned())
            .params(entry.params.clone())
            .extra_body(entry.extra_body.clone())
            .timeout(Duration::from_secs_f64(self.exec.timeout))
            .limits(self.shared.limits.clone())
            .chat_template(chat_template)
            .prefill(prefill)
            .max_reply_bytes(self.exec.max_reply_bytes)
            .client(self.shared.client.clone())
            .build()
            .map_err(|source| SetupError::Backend {
                model: entry.key.clone(),
                source,
            })?;
        if batch && !self.shared.offline {
            let (journal, timing) = self.batching();
            let batched = BatchBackend::openai(backend, &journal, timing, self.shared.stop.clone());
            return Ok(self.model_on(&entry.key, self.shared_batches(batched)));
        }
        Ok(self.model_on(&entry.key, Arc::new(backend)))
    }

    /// `batched`, or the backend already batching for its journal.
    fn shared_batches(&self, batched: BatchBackend) -> Arc<BatchBackend> {
        let mut known = self.shared.batches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = known.iter().find(|b| b.journal_path() == batched.journal_path()) {
            return existing.clone();
        }
        let batched = Arc::new(batched);
        known.push(batched.clone());
        batched
    }

    /// Where batch journals go (the cache folder's `batches`) and how often batches are polled.
    fn batching(&self) -> (PathBuf, BatchTiming) {
        let journal = self
            .exec
            .cache_dir
            .clone()
            .unwrap_or_else(crate::cache::default_dir)
            .join("batches");
        let timing = BatchTiming::polling_every(Duration::from_secs_f64(self.exec.batch_poll.max(0.001)));
        (journal, timing)
    }

    /// A model behind Anthropic's Messages API: one server, the key in `x-api-key`.
    fn anthropic(
        &self,
        entry: &ModelEntry,
        base_urls: &[String],
        key_variable: Option<&String>,
        batch: bool,
    ) -> Result<Model, SetupError> {
        let backend_error = |source| SetupError::Backend {
            model: entry.key.clone(),
            source,
        };
        if base_urls.len() > 1 {
            return Err(backend_error(BackendError::Config(
                "Anthropic's API has one address: give at most one base URL".into(),
            )));
        }
        let mut builder = AnthropicBackend::builder(entry.model_name.clone());
        if self.shared.offline {
            builder.without_key();
        }
        let backend = builder
            .base_url(base_urls.first().cloned())
            .api_key_variable(key_variable.cloned())
            .params(entry.params.clone())
            .extra_body(entry.extra_body.clone())
            .timeout(Duration::from_secs_f64(self.exec.timeout))
            .limits(self.shared.limits.clone())
            .max_reply_bytes(self.exec.max_reply_bytes)
            .client(self.shared.client.clone())
            .build()
            .map_err(backend_error)?;
        if batch && !self.shared.offline {
            let (journal, timing) = self.batching();
            let batched = BatchBackend::anthropic(backend, &journal, timing, self.shared.stop.clone());
            return Ok(self.model_on(&entry.key, self.shared_batches(batched)));
        }
        Ok(self.model_on(&entry.key, Arc::new(backend)))
    }

    fn methods(&self, config: &MethodsConfig) -> Result<Vec<MethodConfig>, SetupError> {
        let mut kinds: Vec<MethodKind> = Vec::new();
        for kind in &config.methods {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
            .into_iter()
            .map(|kind| {
                method_config(
                    config,
                    kind,
                    self.pack.config_dir.as_ref().map(|d| d.join("config_ttd.yaml")),
                )
            })
            .collect()
    }

    /// The embedded model at `path`.
    fn local(&self, entry: &ModelEntry, path: &Path) -> Result<Model, SetupError> {
        if self.shared.offline {
            return Err(SetupError::NotLoaded);
        }
        let spec = LocalSpec {
            sequences: self.exec.concurrency as u32,
            context_per_sequence: self.exec.local_context,
            threads: self.exec.local_threads,
        };
        let backend = self.engine.backend(entry, path, spec).map_err(SetupError::Local)?;
        Ok(self.model_on(&entry.key, backend))
    }

    fn model(&self, config: &ModelConfig, methods: &[MethodConfig]) -> Result<Generator, SetupError> {
        let file = self.config_file(config.model_config.as_deref(), "config_model.yaml")?;
        let key = config.key.clone().unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_string());
        name::check_model_key("--model", &key)?;
        let mut entry = self.entry(&key, file.as_ref())?;
        if let Some(seed) = config.seed {
            entry.extra_body.shift_remove("seed");
            entry.params.insert("seed".into(), seed.into());
        }
        if config.is_local() {
            if config.batch {
                return Err(SetupError::NoBatchApi {
                    model: key,
                    provider: "local",
                });
            }
            let path = config
                .model_path
                .clone()
                .unwrap_or_else(|| self.engine.default_model_path());
            let model = self.local(&entry, &path)?;
            return Ok(Generator {
                model,
                local: Some((entry, path)),
            });
        }
        let template = match &config.chat_template {
            Some(path) => Some((
                path.clone(),
                std::fs::read_to_string(path).map_err(|source| SetupError::ReadChatTemplate {
                    path: path.clone(),
                    source,
                })?,
            )),
            None => self.pack.chat_template(&entry.model_name)?,
        };
        let prefill = match config.prefill {
            Prefill::Chat => PrefillStyle::ContinueFinalMessage,
            Prefill::Completions => {
                let Some((path, source)) = &template else {
                    return Err(SetupError::NoChatTemplate(entry.model_name.clone()));
                };
                let compiled = ChatTemplate::new(source).map_err(|e| SetupError::ChatTemplate {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
                let mut special_tokens = serde_json::Map::new();
                for (name, value) in [("bos_token", &config.bos_token), ("eos_token", &config.eos_token)] {
                    if let Some(value) = value {
                        special_tokens.insert(name.into(), value.clone().into());
                    }
                }
                PrefillStyle::Completions {
                    template: Arc::new(compiled),
                    special_tokens,
                }
            }
        };
        let template = template.map(|(_, text)| text);
        if let Some(provider) = answers_after_prefill(config.provider, &config.base_urls)
            && let Some(method) = methods.iter().map(|m| m.kind()).find(|kind| kind.prefills())
        {
            return Err(SetupError::CannotPrefill { method, provider });
        }
        // Anthropic continues a final assistant message itself; no template is involved. Said
        // once by the run: a plan resolving every cell to read the cache keeps quiet.
        if methods.iter().any(|m| m.kind().prefills())
            && template.is_none()
            && config.provider != Some(Provider::Anthropic)
            && !self.shared.offline
        {
            tracing::warn!(
                "no chat template for `{}` (the pack's chat_templates/config.json names none; use --chat-template); \
                 the server's own template continues the prefill",
                entry.model_name
            );
        }
        let server = Server {
            provider: config.provider,
            base_urls: &config.base_urls,
            key_variable: config.api_key_env.as_ref(),
            batch: config.batch,
        };
        Ok(Generator {
            model: self.backend(&entry, server, template, prefill)?,
            local: None,
        })
    }

    /// The judges, one per mode: as configured; with none named, the paper's GPT-4.1, or the
    /// embedded model when the model under test is local (no server configured anywhere).
    fn judges(&self, config: &JudgeConfig, generator: Option<&Generator>) -> Result<Vec<Judge>, SetupError> {
        let file = self.config_file(config.judge_config.as_deref(), "config_eval_model.yaml")?;
        let nothing_named = config.key.is_none()
            && config.provider.is_none()
            && config.base_urls.is_empty()
            && config.model_path.is_none();
        if let Some(key) = &config.key {
            name::check_model_key("--judge", key)?;
        }
        let local_generator = generator.and_then(|g| g.local.as_ref());
        let local_judge = matches!(config.provider, Some(Provider::Local))
            || (config.provider.is_none() && config.model_path.is_some())
            || (nothing_named && local_generator.is_some());
        if config.batch && local_judge {
            return Err(SetupError::NoBatchApi {
                model: config.key.clone().unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_string()),
                provider: "local",
            });
        }
        let model = match (config.provider, &config.model_path, local_generator) {
            (Some(Provider::Local), _, _) | (None, Some(_), _) => {
                let key = config.key.clone().unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_string());
                let entry = self.entry(&key, file.as_ref())?;
                let path = config
                    .model_path
                    .clone()
                    .unwrap_or_else(|| self.engine.default_model_path());
                self.local(&entry, &path)?
            }
            (None, None, Some((entry, path))) if nothing_named => {
                // The generator's own file and key; judges decode greedily, with room for one
                // verdict line per rule whatever the generator's own limit.
                let mut judge_entry = entry.clone();
                judge_entry.params.insert("temperature".into(), 0.0.into());
                judge_entry.params.insert("max_tokens".into(), 3072.into());
                judge_entry.extra_body.shift_remove("temperature");
                judge_entry.extra_body.shift_remove("max_tokens");
                // Greedy: a repeat's seed changes nothing but the cache key.
                judge_entry.params.shift_remove("seed");
                self.local(&judge_entry, path)?
            }
            _ => {
                let key = config.key.clone().unwrap_or_else(|| DEFAULT_JUDGE.to_string());
                let entry = self.entry(&key, file.as_ref())?;
                let server = Server {
                    provider: config.provider,
                    base_urls: &config.base_urls,
                    key_variable: config.api_key_env.as_ref(),
                    batch: config.batch,
                };
                self.backend(&entry, server, None, PrefillStyle::ContinueFinalMessage)?
            }
        };
        let mut modes: Vec<JudgeMode> = Vec::new();
        for mode in &config.modes {
            if !modes.contains(mode) {
                modes.push(*mode);
            }
        }
        Ok(modes
            .into_iter()
            .map(|mode| Judge::new(model.clone(), mode, self.protocol.clone()))
            .collect())
    }

    /// The scorer Best-of-N and TPO rank samples with; `None` for other methods.
    fn scorer(&self, config: &MethodsConfig, judge: Option<&Judge>) -> Result<Option<Scorer>, SetupError> {
        let Some(needing) = config.methods.iter().find(|k| k.needs_scorer()) else {
            return Ok(None);
        };
        match config.scorer {
            ScorerChoice::Judge => {
                let judge = judge.ok_or(SetupError::ScorerNeedsJudge)?;
                Ok(Some(Scorer::Judge {
                    judge: judge.clone(),
                    alpha: alpha(self.exec.alpha)?,
                }))
            }
            ScorerChoice::Reward => {
                let (Some(url), Some(name)) = (&config.reward_base_url, &config.reward_model) else {
                    return Err(SetupError::NoRewardModel(*needing));
                };
                let key = match &config.reward_api_key_env {
                    Some(_) if self.shared.offline => None,
                    Some(variable) => {
                        Some(ApiKey::from_env(variable).ok_or_else(|| SetupError::KeyNotSet(variable.clone()))?)
                    }
                    None => None,
                };
                let backend = RewardModel::new(
                    url,
                    name,
                    key,
                    Duration::from_secs_f64(self.exec.timeout),
                    &self.shared.limits,
                )
                .map_err(SetupError::Reward)?;
                Ok(Some(Scorer::RewardModel(self.model_on(name, Arc::new(backend)))))
            }
        }
    }

    fn plan(&self, config: &RunConfig, model_key: &str, method: MethodConfig) -> Result<RunPlan, SetupError> {
        Ok(RunPlan {
            scenarios: self.data.scenarios.clone(),
            items: self.data.selection(),
            variant: if config.adversarial {
                PromptVariant::Adversarial
            } else {
                PromptVariant::Original
            },
            method,
            model_key: model_key.to_string(),
            alpha: alpha(config.exec.alpha)?,
            item_concurrency: config.item_concurrency(),
            shard: self.data.shard,
            retry_judge_errors: false,
        })
    }

    fn runner(
        &self,
        plan: RunPlan,
        generator: Option<Model>,
        judges: Vec<Judge>,
        scorer: Option<&Scorer>,
    ) -> Result<Runner, SetupError> {
        let method = plan.method.build(scorer)?;
        // A batching runner keeps every item in flight (each batch holds every item's next
        // call); the study's shared cap is for requests sent one by one.
        let batching = plan.item_concurrency >= crate::backend::batch::MAX_BATCH_REQUESTS;
        Ok(Runner {
            pack: self.pack.clone(),
            protocol: self.protocol.clone(),
            store: self.store.clone(),
            plan,
            generator: generator.map(|model| (model, method)),
            judges,
            stop: self.shared.stop.clone(),
            item_slots: if batching { None } else { self.shared.item_slots.clone() },
            all_started: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reads_from_yaml_with_defaults_for_the_rest() -> Result<(), Box<dyn std::error::Error>> {
        let text = "task: {kind: run}\ndata: {scenarios: [Child], limit: 3}\nmodel: {key: org/m, base_urls: ['http://127.0.0.1:9/v1'], provider: vllm}\nmethods: {methods: [vanilla, align3]}\njudges: [{key: GPT-4.1}, {key: Qwen3-32B, modes: [joint, sequential]}]\nexec: {concurrency: 4}\n";
        let config: RunConfig = serde_saphyr::from_str(text)?;
        assert_eq!(config.data.scenarios, ["Child"]);
        assert_eq!(config.model.provider, Some(Provider::Vllm));
        assert_eq!(config.methods.methods, [MethodKind::Vanilla, MethodKind::Align3]);
        assert_eq!(config.judges[0].modes, [JudgeMode::Joint]);
        assert_eq!(config.judges[1].modes, [JudgeMode::Joint, JudgeMode::Sequential]);
        assert_eq!(config.exec.concurrency, 4);
        assert_eq!(config.exec.max_attempts, 6);
        assert!(config.adversarial);
        assert_eq!(config.data.results, PathBuf::from("result"));
        let evaluate: RunConfig = serde_saphyr::from_str("task: {kind: evaluate, model: org/m}\n")?;
        assert_eq!(evaluate.task, Task::Evaluate { model: "org/m".into() });
        assert_eq!(evaluate.judges, [JudgeConfig::default()]);
        Ok(())
    }

    #[test]
    fn a_model_and_a_judge_batch_when_their_configuration_says_so() -> Result<(), Box<dyn std::error::Error>> {
        let text = "model: {key: m, base_urls: ['http://127.0.0.1:9/v1'], batch: true}\njudges: [{key: GPT-4.1, batch: true}, {key: J2}]\nexec: {batch_poll: 5}\n";
        let config: RunConfig = serde_saphyr::from_str(text)?;
        assert!(config.model.batch);
        assert_eq!(config.judges.iter().map(|j| j.batch).collect::<Vec<_>>(), [true, false]);
        assert_eq!(config.exec.batch_poll, 5.0);
        // Every item in flight while batching; four per request slot otherwise.
        assert_eq!(config.item_concurrency(), crate::backend::batch::MAX_BATCH_REQUESTS);
        assert_eq!(RunConfig::default().item_concurrency(), 32);
        Ok(())
    }

    #[test]
    fn the_readme_example_reads() -> Result<(), Box<dyn std::error::Error>> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```yaml\ntask:")
            .ok_or("no RunConfig example in the README")?
            + "```yaml\n".len();
        let end = readme[start..].find("```").ok_or("unclosed example")? + start;
        let config: RunConfig = serde_saphyr::from_str(&readme[start..end])?;
        assert_eq!(config.methods.methods, [MethodKind::Vanilla, MethodKind::Align3]);
        assert_eq!(config.data.sample, Some(20));
        Ok(())
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let refused = serde_saphyr::from_str::<RunConfig>("exec: {concurency: 4}\n");
        assert!(refused.is_err());
    }

    #[test]
    fn bad_limits_are_refused_before_the_pack_is_read() {
        let mut config = RunConfig::default();
        config.exec.concurrency = 0;
        let refused = config
            .resolve(&NoLocalEngine, Stop::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(refused.as_deref(), Some("--concurrency must be at least 1"));
    }
}
