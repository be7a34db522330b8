//! How text is produced: the `Backend` trait (one attempt at one request) and `Model` (a named,
//! configured backend with retries, backoff and `Retry-After`, and usage counters).
//!
//! Owns: chat messages, requests and their cache key, generations, token usage, and which
//! failures are worth another attempt. Must not know scenarios, rules, methods or verdicts. Methods and the judge call
//! `Model::generate`; only `openai` knows the wire format.

pub mod anthropic;
pub mod batch;
pub mod openai;
pub mod reward;
pub mod template;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use anthropic::{AnthropicBackend, AnthropicBackendBuilder};
pub use openai::{ApiKey, ConcurrencyLimits, OpenAiBackend, OpenAiBackendBuilder, PrefillStyle, Preset};

/// The most bytes of one reply body read by default (`--max-reply-bytes`): far above any real
/// completion, low enough that a runaway server cannot fill memory and disk (a reply is kept in
/// the journal, `generate.json`, the evaluate file and the cache).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// One call's input. Decoding parameters belong to the model's configuration, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub messages: Vec<Message>,
    /// Stop strings; `Some(vec![])` is sent as an explicit empty list, as upstream does.
    pub stop: Option<Vec<String>>,
    /// The last message is an assistant prefix that the model continues (assistant prefill);
    /// the backend decides how to send that (see `openai::PrefillStyle`).
    pub prefill: bool,
    /// Ask the server to leave the stop string out of the output. It is vLLM's default, but
    /// upstream's MoreThink says so explicitly, and the requests must be equal.
    pub stop_excluded: bool,
    /// The reply's required shape, for backends that can constrain decoding (the local model
    /// compiles it to a grammar); HTTP backends send the request unchanged.
    pub format: Option<ReplyFormat>,
    /// Which of several identical requests this is (Best-of-N's candidates): not sent, but part
    /// of the cache key, so that N samples are N replies rather than one reply N times.
    pub sample: u32,
}

/// A judge reply's shape: see the pack's judge prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFormat {
    /// `<safety_specifications>` with one numbered verdict line per safety rule, then
    /// `<behavioral_specifications>` likewise.
    Joint { safety: usize, behavioral: usize },
    /// One line of analysis ending in exactly one verdict.
    Sequential,
}

impl Request {
    pub fn chat(messages: Vec<Message>) -> Request {
        Request {
            messages,
            stop: None,
            prefill: false,
            stop_excluded: false,
            format: None,
            sample: 0,
        }
    }

    /// `messages` then an assistant message holding `prefix`, which the model continues.
    pub fn prefilled(mut messages: Vec<Message>, prefix: impl Into<String>, stop: Vec<String>) -> Request {
        messages.push(Message::assistant(prefix));
        Request {
            messages,
            stop: Some(stop),
            prefill: true,
            stop_excluded: false,
            format: None,
            sample: 0,
        }
    }
}

/// A request's identity in the response cache: the endpoint and the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Request {
    /// The key of this request sent to `identity` (the endpoint and its decoding parameters,
    /// `Backend::describe`). Every field is hashed; `sample` tells apart identical requests meant
    /// to give different samples (Best-of-N's candidates). The hashed bytes are those the cache
    /// has always used, so existing caches stay valid (a test pins them).
    pub fn cache_key(&self, identity: &str) -> CacheKey {
        // Destructured without `..`: a field added to `Request` does not compile until it is
        // keyed here.
        let Request {
            messages,
            stop,
            prefill,
            stop_excluded,
            format,
            sample,
        } = self;
        #[derive(Serialize)]
        struct Hashed<'a> {
            identity: &'a str,
            messages: &'a [Message],
            stop: &'a Option<Vec<String>>,
            prefill: bool,
            stop_excluded: bool,
            format: Option<String>,
            sample: u32,
        }
        let hashed = Hashed {
            identity,
            messages,
            stop,
            prefill: *prefill,
            stop_excluded: *stop_excluded,
            format: format.map(|format| format!("{format:?}")),
            sample: *sample,
        };
        // Serialized straight into the hash: no copy of the request per call. Writing plain
        // strings and numbers to a hasher cannot fail; were it to, the error text is hashed too.
        let mut hasher = Sha256::new();
        if let Err(error) = serde_json::to_writer(&mut hasher, &hashed) {
            hasher.update(error.to_string().as_bytes());
        }
        CacheKey(hasher.finalize().into())
    }
}

/// Why a cache lookup or write failed; `Model` only logs it (a broken cache costs money, not
/// results).
pub type CacheFailure = Box<dyn std::error::Error + Send + Sync>;

/// Where a `Model` keeps the replies it returned (`cache::ResponseCache`), so that a repeated
/// request is not paid for twice.
pub trait ReplyCache: Send + Sync {
    fn get(&self, key: &CacheKey) -> Result<Option<Generation>, CacheFailure>;
    /// Stores `generation` under `key`; `model` is the config key, for `cache stats`.
    fn put(&self, key: &CacheKey, model: &str, generation: &Generation) -> Result<(), CacheFailure>;
    fn remove(&self, key: &CacheKey) -> Result<(), CacheFailure>;
}

/// Token counts as the server reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

impl std::ops::AddAssign<&Usage> for Usage {
    fn add_assign(&mut self, other: &Usage) {
        self.add(other);
    }
}

/// One backend call's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The assistant content, thought markers and all.
    pub text: String,
    /// A separate reasoning field, when the reply has one: DeepSeek's and vLLM's reasoning
    /// parsers' `reasoning_content`, OpenRouter's `reasoning`.
    pub reasoning: Option<String>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

/// Why one attempt failed. Whether to try again is decided here, once.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint}: cannot connect: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint}: no complete answer within {}s", after.as_secs_f64())]
    Timeout { endpoint: String, after: Duration },
    #[error("{endpoint}: invalid answer: {problem}")]
    InvalidResponse { endpoint: String, problem: String },
    #[error("{endpoint}: the answer has no content")]
    EmptyContent { endpoint: String },
    /// The body passed the reply-size cap while it was read; reading stopped there.
    #[error("{endpoint}: the answer is larger than {limit} bytes (--max-reply-bytes); not retried")]
    TooLarge { endpoint: String, limit: usize },
    #[error("{0}")]
    Config(String),
    /// Not sent: the run is stopping (see [`Stop`]).
    #[error("not sent: the run is stopping")]
    Stopped,
}

impl BackendError {
    /// Rate limits, server errors, lost connections and garbled answers pass; a wrong key, a
    /// missing model or a malformed request will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Status { status, .. } => matches!(status, 408 | 409 | 425 | 429) || *status >= 500,
            BackendError::Connect { .. }
            | BackendError::Timeout { .. }
            | BackendError::InvalidResponse { .. }
            | BackendError::EmptyContent { .. } => true,
            // The same request would most likely bring the same flood again, at the same cost.
            BackendError::TooLarge { .. } | BackendError::Config(_) | BackendError::Stopped => false,
        }
    }

    /// The error with every secret's value masked in all of its text: a server may echo the
    /// key it was sent, and error texts are logged, journaled and stored.
    pub fn redacted(self, secrets: &[String]) -> BackendError {
        if secrets.iter().all(String::is_empty) {
            return self;
        }
        let clean = |text: String| crate::redact::redact(&text, secrets);
        match self {
            BackendError::Status {
                endpoint,
                status,
                body,
                retry_after,
            } => BackendError::Status {
                endpoint: clean(endpoint),
                status,
                body: clean(body),
                retry_after,
            },
            BackendError::Connect { endpoint, reason } => BackendError::Connect {
                endpoint: clean(endpoint),
                reason: clean(reason),
            },
            BackendError::Timeout { endpoint, after } => BackendError::Timeout {
                endpoint: clean(endpoint),
                after,
            },
            BackendError::InvalidResponse { endpoint, problem } => BackendError::InvalidResponse {
                endpoint: clean(endpoint),
                problem: clean(problem),
            },
            BackendError::EmptyContent { endpoint } => BackendError::EmptyContent {
                endpoint: clean(endpoint),
            },
            BackendError::TooLarge { endpoint, limit } => BackendError::TooLarge {
                endpoint: clean(endpoint),
                limit,
            },
            BackendError::Config(text) => BackendError::Config(clean(text)),
            BackendError::Stopped => BackendError::Stopped,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One attempt at one request. Retries, limits and accounting live in [`Model`], once.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError>;

    /// What the manifest records of this backend: provider, endpoints, parameters; never a key.
    fn describe(&self) -> serde_json::Value;

    /// The servers it sends to, as shown (without credentials); none for one in this process.
    fn servers(&self) -> Vec<String> {
        Vec::new()
    }

    /// Its batches, when it sends through a provider's batch API (`batch status|cancel`).
    fn batches(&self) -> Option<&batch::BatchBackend> {
        None
    }
}

/// Tells every model, limiter and run sharing it to stop: from then on no request is sent
/// (nor retried), while those already sent are still answered, cached and journaled. Set by
/// Ctrl-C or by a journal that cannot be written; never reset. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    stopped: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stops; `true` the first time.
    pub fn stop(&self) -> bool {
        let first = !self.0.stopped.swap(true, Ordering::SeqCst);
        self.0.wake.notify_waiters();
        first
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Returns once [`Stop::stop`] was called (at once if it was already).
    pub async fn stopped(&self) {
        loop {
            let woken = self.0.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a stop between the two is not missed.
            woken.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            woken.await;
        }
    }
}

/// How often and how patiently a model is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a server asking for more is waited on this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// A request that could not be served within the retry policy.
#[derive(Debug, thiserror::Error)]
#[error("model `{model}`: gave up after {attempts} attempt(s) over {:.1}s: {last}", elapsed.as_secs_f64())]
pub struct ModelError {
    pub model: String,
    pub attempts: u32,
    pub elapsed: Duration,
    #[source]
    pub last: BackendError,
}

/// Counters a run reports: what was sent, what came back, what it cost.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Replies served from the response cache (not counted in `requests`).
    pub cache_hits: AtomicU64,
}

/// A snapshot of [`ModelStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelTotals {
    pub requests: u64,
    pub retries: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
}

impl ModelTotals {
    /// What was counted after `earlier`, a snapshot of the same counters.
    pub fn since(&self, earlier: &ModelTotals) -> ModelTotals {
        ModelTotals {
            requests: self.requests.saturating_sub(earlier.requests),
            retries: self.retries.saturating_sub(earlier.retries),
            failures: self.failures.saturating_sub(earlier.failures),
            prompt_tokens: self.prompt_tokens.saturating_sub(earlier.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_sub(earlier.completion_tokens),
            cache_hits: self.cache_hits.saturating_sub(earlier.cache_hits),
        }
    }
}

/// A named, configured model reached through a [`Backend`]: what methods and the judge call.
#[derive(Clone)]
pub struct Model {
    key: String,
    backend: Arc<dyn Backend>,
    retry: RetryPolicy,
    stats: Arc<ModelStats>,
    cache: Option<(Arc<dyn ReplyCache>, Arc<str>)>,
    stop: Stop,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Model {
    /// `key` is the config key (`Qwen3-14B-thinking`) that names result folders.
    pub fn new(key: impl Into<String>, backend: Arc<dyn Backend>, retry: RetryPolicy) -> Model {
        Model {
            key: key.into(),
            backend,
            retry,
            stats: Arc::default(),
            cache: None,
            stop: Stop::default(),
        }
    }

    /// Sends nothing more once `stop` is set: no new attempt, no retry (cache hits are still
    /// served). Default: a `Stop` of its own, never set.
    pub fn with_stop(mut self, stop: Stop) -> Model {
        self.stop = stop;
        self
    }

    /// Serves repeated requests from `cache` and stores every reply this model returns. The
    /// endpoint's identity in the key is what `describe` says: provider, URLs, model name and
    /// decoding parameters, never a key.
    pub fn with_cache<C: ReplyCache + 'static>(mut self, cache: Option<Arc<C>>) -> Model {
        self.cache = cache.map(|cache| {
            let cache: Arc<dyn ReplyCache> = cache;
            (cache, Arc::from(self.backend.describe().to_string()))
        });
        self
    }

    fn cache_key(&self, request: &Request) -> Option<(&dyn ReplyCache, CacheKey)> {
        self.cache
            .as_ref()
            .map(|(cache, identity)| (cache.as_ref(), request.cache_key(identity)))
    }

    /// Takes `request`'s reply back out of the cache: it was unusable (a judge reply that does
    /// not parse), so asking again must reach the model.
    pub fn uncache(&self, request: &Request) {
        if let Some((cache, key)) = self.cache_key(request)
            && let Err(error) = cache.remove(&key)
        {
            tracing::warn!(%error, "cannot remove a reply from the response cache");
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn describe(&self) -> serde_json::Value {
        self.backend.describe()
    }

    /// Its backend's batches, when it batches (see [`Backend::batches`]).
    pub fn batches(&self) -> Option<&batch::BatchBackend> {
        self.backend.batches()
    }

    /// The servers its backend sends to (see [`Backend::servers`]).
    pub fn servers(&self) -> Vec<String> {
        self.backend.servers()
    }

    pub fn totals(&self) -> ModelTotals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ModelTotals {
            requests: get(&self.stats.requests),
            retries: get(&self.stats.retries),
            failures: get(&self.stats.failures),
            prompt_tokens: get(&self.stats.prompt_tokens),
            completion_tokens: get(&self.stats.completion_tokens),
            cache_hits: get(&self.stats.cache_hits),
        }
    }

    /// Sends `request`, retrying what [`BackendError::is_retryable`] allows with exponential
    /// backoff and full jitter, and waiting at least as long as a `Retry-After` asks.
    pub async fn generate(&self, request: &Request) -> Result<Generation, ModelError> {
        let cached = self.cache_key(request);
        if let Some((cache, key)) = &cached {
            match cache.get(key) {
                Ok(Some(generation)) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(generation);
                }
                Ok(None) => {}
                // A broken cache costs money, not results: go to the model.
                Err(error) => tracing::warn!(%error, "response cache lookup failed"),
            }
        }
        let started = Instant::now();
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        let mut attempts = 0;
        let stopped = |attempts| ModelError {
            model: self.key.clone(),
            attempts,
            elapsed: started.elapsed(),
            last: BackendError::Stopped,
        };
        loop {
            if self.stop.is_stopped() {
                return Err(stopped(attempts));
            }
            attempts += 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let error = match self.backend.send(request).await {
                Ok(generation) => {
                    self.stats
                        .prompt_tokens
                        .fetch_add(generation.usage.prompt_tokens, Ordering::Relaxed);
                    self.stats
                        .completion_tokens
                        .fetch_add(generation.usage.completion_tokens, Ordering::Relaxed);
                    if let Some((cache, key)) = &cached
                        && let Err(error) = cache.put(key, &self.key, &generation)
                    {
                        tracing::warn!(%error, "cannot store a reply in the response cache");
                    }
                    return Ok(generation);
                }
                Err(error) => error,
            };
            let delay = if error.is_retryable() { delays.next() } else { None };
            let Some(backoff) = delay else {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return Err(ModelError {
                    model: self.key.clone(),
                    attempts,
                    elapsed: started.elapsed(),
                    last: error,
                });
            };
            let wait = match error.retry_after() {
                Some(asked) => asked.min(self.retry.max_retry_after).max(backoff),
                None => backoff,
            };
            tracing::debug!(model = %self.key, attempt = attempts, wait_ms = wait.as_millis() as u64, %error, "retrying");
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.stopped() => return Err(stopped(attempts)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A request with every field away from its default.
    fn full_request() -> Request {
        let mut request = Request::prefilled(vec![Message::system("s"), Message::user("u")], "p", vec!["</x>".into()]);
        request.stop_excluded = true;
        request.format = Some(ReplyFormat::Joint {
            safety: 2,
            behavioral: 3,
        });
        request.sample = 4;
        request
    }

    #[test]
    fn the_cache_key_is_the_one_existing_caches_hold() {
        // Computed by the key's earlier home (`cache::CacheKey::new`): a change here would make
        // every cached reply a miss, and the next run pay for all of them again.
        assert_eq!(
            hex::encode(full_request().cache_key("endpoint").as_bytes()),
            "be611440cd3680d398f354eaf9a106379ff31d540408757608de7a47528a9d2e"
        );
        assert_eq!(
            hex::encode(Request::chat(vec![Message::user("hello")]).cache_key("e").as_bytes()),
            "653f6b369c010720e0057404cbe49aa24d6c07f3f1cc0d93f0cf74f55f3f315a"
        );
    }

    #[test]
    fn every_request_field_and_the_endpoint_change_the_cache_key() {
        let base = full_request();
        let key = base.cache_key("endpoint");
        assert_eq!(key, base.clone().cache_key("endpoint"));
        assert_ne!(key, base.cache_key("other endpoint"));
        // One change per field; the destructuring fails to compile when a field is added, so
        // the new field gets its line here too.
        let Request {
            messages: _,
            stop: _,
            prefill: _,
            stop_excluded: _,
            format: _,
            sample: _,
        } = &base;
        type Change = fn(&mut Request);
        let changes: Vec<(&str, Change)> = vec![
            ("messages", |r| r.messages.push(Message::user("more"))),
            ("stop", |r| r.stop = None),
            ("prefill", |r| r.prefill = false),
            ("stop_excluded", |r| r.stop_excluded = false),
            ("format", |r| r.format = Some(ReplyFormat::Sequential)),
            ("sample", |r| r.sample = 5),
        ];
        for (field, change) in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(changed.cache_key("endpoint"), key, "{field} is not in the cache key");
        }
    }

    /// Replays a fixed list of outcomes, then fails.
    struct Scripted {
        outcomes: Mutex<Vec<Result<Generation, BackendError>>>,
    }

    #[async_trait]
    impl Backend for Scripted {
        async fn send(&self, _request: &Request) -> Result<Generation, BackendError> {
            let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            if outcomes.is_empty() {
                return Err(BackendError::Config("script exhausted".into()));
            }
            outcomes.remove(0)
        }

        fn describe(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn generation(text: &str) -> Generation {
        Generation {
            text: text.into(),
            reasoning: None,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
            finish_reason: Some("stop".into()),
        }
    }

    fn status(status: u16) -> BackendError {
        BackendError::Status {
            endpoint: "e".into(),
            status,
            body: String::new(),
            retry_after: None,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(5),
        }
    }

    fn model(outcomes: Vec<Result<Generation, BackendError>>) -> Model {
        let backend = Scripted {
            outcomes: Mutex::new(outcomes),
        };
        Model::new("m", Arc::new(backend), fast())
    }

    #[tokio::test]
    async fn retries_transient_errors_then_succeeds() -> Result<(), ModelError> {
        let model = model(vec![Err(status(503)), Err(status(429)), Ok(generation("ok"))]);
        let out = model.generate(&Request::chat(vec![])).await?;
        assert_eq!(out.text, "ok");
        let totals = model.totals();
        assert_eq!((totals.requests, totals.retries, totals.failures), (3, 2, 0));
        assert_eq!(totals.prompt_tokens, 3);
        Ok(())
    }

    #[tokio::test]
    async fn gives_up_after_the_attempt_limit() {
        let model = model(vec![
            Err(status(500)),
            Err(status(500)),
            Err(status(500)),
            Ok(generation("late")),
        ]);
        let err = model.generate(&Request::chat(vec![])).await.err();
        assert_eq!(err.as_ref().map(|e| e.attempts), Some(3));
        assert_eq!(model.totals().failures, 1);
    }

    #[tokio::test]
    async fn does_not_retry_a_wrong_key() {
        let model = model(vec![Err(status(401)), Ok(generation("never"))]);
        let err = model.generate(&Request::chat(vec![])).await.err();
        assert_eq!(err.as_ref().map(|e| e.attempts), Some(1));
    }

    #[tokio::test]
    async fn a_stopped_model_sends_nothing_and_a_stop_ends_a_retry_wait() {
        let stop = Stop::new();
        let stopped = model(vec![Ok(generation("never"))]).with_stop(stop.clone());
        stop.stop();
        let err = stopped.generate(&Request::chat(vec![])).await.err();
        assert!(matches!(err.map(|e| e.last), Some(BackendError::Stopped)));
        assert_eq!(stopped.totals().requests, 0);

        // A 503 whose Retry-After is an hour: only the stop ends the wait.
        let stop = Stop::new();
        let waiting = Model::new(
            "m",
            Arc::new(Scripted {
                outcomes: Mutex::new(vec![Err(BackendError::Status {
                    endpoint: "e".into(),
                    status: 503,
                    body: String::new(),
                    retry_after: Some(Duration::from_secs(3600)),
                })]),
            }),
            RetryPolicy {
                max_retry_after: Duration::from_secs(3600),
                ..fast()
            },
        )
        .with_stop(stop.clone());
        let call = tokio::spawn(async move { waiting.generate(&Request::chat(vec![])).await.err() });
        tokio::task::yield_now().await;
        stop.stop();
        let err = call.await.ok().flatten();
        assert!(matches!(
            err.map(|e| (e.attempts, e.last)),
            Some((1, BackendError::Stopped))
        ));
    }

    #[test]
    fn retryable_statuses() {
        for code in [429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
    }
}
