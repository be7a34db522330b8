//! OpenAI-compatible chat completions over HTTP: OpenAI, DeepSeek, vLLM and anything alike.
//!
//! The request body is what upstream's client sends: `model`, `messages`, the model's configured
//! decoding fields, then `extra_body` merged into the top level. Several base URLs spread the
//! load round-robin; one that refuses connections is skipped for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::template::ChatTemplate;
use super::{Backend, BackendError, DEFAULT_MAX_REPLY_BYTES, Generation, Message, Request, Stop, Usage};
use crate::redact::{RedactedUrl, unparsed_url};

/// What a provider needs beyond the base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// api.openai.com, key in `OPENAI_API_KEY`.
    OpenAi,
    /// api.deepseek.com, key in `DEEPSEEK_API_KEY`; `reasoning_content` becomes the thought.
    DeepSeek,
    /// One or more vLLM servers; a key only if the server was started with one.
    Vllm,
    /// Any other OpenAI-compatible server.
    Compatible,
    /// Azure OpenAI: the base URL is a deployment's
    /// (`https://RESOURCE.openai.azure.com/openai/deployments/NAME`), `api-version` is its
    /// query (see [`AZURE_API_VERSION`]), the key goes in an `api-key` header and is read from
    /// `AZURE_OPENAI_API_KEY`.
    Azure,
    /// Gemini through its OpenAI-compatible endpoint, key in `GEMINI_API_KEY`. With
    /// `include_thoughts` asked for (see the README), a thinking model's reply content starts
    /// with its thought summary in `<thought>` tags, which becomes the thought.
    Gemini,
}

/// Gemini's OpenAI-compatible endpoint.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta/openai";

/// The `api-version` sent to Azure OpenAI when the base URL names none.
pub const AZURE_API_VERSION: &str = "2024-10-21";

impl Preset {
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Preset::OpenAi => Some("https://api.openai.com/v1"),
            Preset::DeepSeek => Some("https://api.deepseek.com"),
            Preset::Vllm => Some("http://localhost:8001/v1"),
            Preset::Gemini => Some(GEMINI_BASE_URL),
            Preset::Compatible | Preset::Azure => None,
        }
    }

    /// The variable the key is read from unless another is named.
    pub fn default_key_variable(self) -> Option<&'static str> {
        match self {
            Preset::OpenAi => Some("OPENAI_API_KEY"),
            Preset::DeepSeek => Some("DEEPSEEK_API_KEY"),
            Preset::Azure => Some("AZURE_OPENAI_API_KEY"),
            Preset::Gemini => Some("GEMINI_API_KEY"),
            Preset::Vllm | Preset::Compatible => None,
        }
    }

    fn reads_reasoning(self) -> bool {
        self == Preset::DeepSeek
    }
}

/// Gemini's thought summary at the start of a reply's content: `<thought>…</thought>` and
/// the answer after it, or `None` when the content does not start with one.
fn split_thought_tags(content: &str) -> Option<(String, String)> {
    let rest = content.trim_start().strip_prefix("<thought>")?;
    let (thought, answer) = rest.split_once("</thought>")?;
    Some((thought.trim().to_string(), answer.trim_start().to_string()))
}

/// How an assistant prefill (a request whose last message the model continues) is sent.
#[derive(Debug, Clone, Default)]
pub enum PrefillStyle {
    /// vLLM's chat completions: the prefilled message with `continue_final_message: true`,
    /// `add_generation_prompt: false` and the chat template in the body, exactly as upstream.
    #[default]
    ContinueFinalMessage,
    /// Any server with `/v1/completions` (vLLM, llama.cpp's server, SGLang, TGI): the chat
    /// template is rendered here, as `transformers` would, and the raw prompt is sent.
    Completions {
        template: Arc<ChatTemplate>,
        /// The tokenizer's special tokens the template may use (`bos_token`, `eos_token`).
        special_tokens: Map<String, Value>,
    },
}

/// An API key, read once from the environment; it prints as `****` everywhere.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl ApiKey {
    /// The `Authorization` header, marked sensitive so that no debug output shows it.
    pub(crate) fn bearer(&self) -> Result<reqwest::header::HeaderValue, BackendError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0.expose_secret()))
            .map_err(|_| BackendError::Config("the API key holds characters a header cannot carry".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The key alone as a header value (Anthropic's `x-api-key`), marked sensitive.
    pub(crate) fn header_value(&self) -> Result<reqwest::header::HeaderValue, BackendError> {
        let mut value = reqwest::header::HeaderValue::from_str(self.0.expose_secret())
            .map_err(|_| BackendError::Config("the API key holds characters a header cannot carry".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The key's value, only to cut it out of texts a server sends back.
    pub(crate) fn value(&self) -> String {
        self.0.expose_secret().to_string()
    }

    /// Reads the variable `name`; `Ok(None)` when it is unset or empty.
    pub fn from_env(name: &str) -> Option<ApiKey> {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .map(|value| ApiKey(SecretString::from(value)))
    }
}

/// Caps in-flight requests per base URL, shared by every model that uses the same server.
#[derive(Debug, Clone, Default)]
pub struct ConcurrencyLimits {
    per_endpoint: usize,
    semaphores: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    stop: Stop,
}

impl ConcurrencyLimits {
    pub fn new(per_endpoint: usize) -> ConcurrencyLimits {
        ConcurrencyLimits {
            per_endpoint: per_endpoint.max(1),
            semaphores: Arc::default(),
            stop: Stop::default(),
        }
    }

    /// Once `stop` is set, a request waiting for a slot is not sent: only those already sent
    /// finish. Default: never stopped.
    pub fn with_stop(mut self, stop: Stop) -> ConcurrencyLimits {
        self.stop = stop;
        self
    }

    pub(crate) fn stop(&self) -> &Stop {
        &self.stop
    }

    pub(crate) fn for_endpoint(&self, base: &str) -> Arc<Semaphore> {
        let mut map = self.semaphores.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(base.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint.max(1))))
            .clone()
    }
}

struct Endpoint {
    /// The base URL without user, password or credential query values, as logs, errors and
    /// the manifest show it.
    shown: String,
    /// The base URL itself: the batch API's `files` and `batches` hang off it.
    base: RedactedUrl,
    chat_url: RedactedUrl,
    completions_url: RedactedUrl,
    /// The secret values in the URL, cut out of any text the server sends back.
    secrets: Vec<String>,
    limit: Arc<Semaphore>,
    stop: Stop,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn is_down(&self, now: Instant) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.is_some_and(|until| until > now)
    }

    fn mark_down(&self, for_how_long: Duration) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        *down = Some(Instant::now() + for_how_long);
    }
}

/// How long an endpoint that refused a connection is passed over while others are up.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// One model behind one or more OpenAI-compatible endpoints.
pub struct OpenAiBackend {
    client: reqwest::Client,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    api_key: Option<ApiKey>,
    preset: Preset,
    model_name: String,
    /// Decoding fields then `extra_body`, merged once: the fixed part of every body.
    fields: Map<String, Value>,
    timeout: Duration,
    prefill: PrefillStyle,
    /// The chat template sent with prefilled requests (upstream: `chat_templates/config.json`).
    chat_template: Option<String>,
    /// The most bytes of one reply body read; a larger reply fails the attempt.
    max_reply_bytes: usize,
    /// The key's value and every URL secret: masked in every error text.
    secrets: Vec<String>,
}

/// Builds an [`OpenAiBackend`]; every setter documents its default.
pub struct OpenAiBackendBuilder {
    preset: Preset,
    base_urls: Vec<String>,
    api_key_variable: Option<String>,
    model_name: String,
    params: Map<String, Value>,
    extra_body: Map<String, Value>,
    timeout: Duration,
    limits: Option<ConcurrencyLimits>,
    prefill: PrefillStyle,
    chat_template: Option<String>,
    max_reply_bytes: usize,
    client: Option<reqwest::Client>,
    keyless: bool,
}

impl OpenAiBackend {
    pub fn builder(preset: Preset, model_name: impl Into<String>) -> OpenAiBackendBuilder {
        OpenAiBackendBuilder {
            preset,
            base_urls: Vec::new(),
            api_key_variable: None,
            model_name: model_name.into(),
            params: Map::new(),
            extra_body: Map::new(),
            timeout: Duration::from_secs(600),
            limits: None,
            prefill: PrefillStyle::default(),
            keyless: false,
            chat_template: None,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            client: None,
        }
    }
}

/// The HTTP client of a backend: one connection pool. Backends given the same one (a study's
/// cells) share their connections to a server instead of each keeping its own.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| BackendError::Config(format!("cannot build the HTTP client: {e}")))
}

impl OpenAiBackendBuilder {
    /// Base URLs ending before `/chat/completions`. Default: the preset's.
    pub fn base_urls(&mut self, urls: impl IntoIterator<Item = String>) -> &mut Self {
        self.base_urls = urls.into_iter().collect();
        self
    }

    /// The environment variable holding the key. Default: the preset's (none for vLLM).
    pub fn api_key_variable(&mut self, name: Option<String>) -> &mut Self {
        self.api_key_variable = name;
        self
    }

    /// Reads no API key (default: the variable's key, required by OpenAI and DeepSeek): for a
    /// backend that never sends, whose description names replies in the response cache.
    pub fn without_key(&mut self) -> &mut Self {
        self.keyless = true;
        self
    }

    /// Decoding fields sent with every request, in order (`max_tokens`, `temperature`, ...).
    pub fn params(&mut self, params: Map<String, Value>) -> &mut Self {
        self.params = params;
        self
    }

    /// Merged into the top level of the body, overriding `params`, as the OpenAI client does.
    pub fn extra_body(&mut self, extra_body: Map<String, Value>) -> &mut Self {
        self.extra_body = extra_body;
        self
    }

    /// Per-request timeout. Default: 600 s (long generations from reasoning models).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Shared per-endpoint caps. Default: 8 in flight per endpoint, not shared.
    /// Sends through `client` (made by [`http_client`] with this builder's timeout) rather
    /// than a client of its own. Default: its own.
    pub fn client(&mut self, client: Option<reqwest::Client>) -> &mut Self {
        self.client = client;
        self
    }

    pub fn limits(&mut self, limits: ConcurrencyLimits) -> &mut Self {
        self.limits = Some(limits);
        self
    }

    /// How prefilled requests are sent. Default: vLLM's `continue_final_message`.
    pub fn prefill(&mut self, style: PrefillStyle) -> &mut Self {
        self.prefill = style;
        self
    }

    /// The Jinja chat template sent with prefilled requests. Default: none (the server's own).
    pub fn chat_template(&mut self, template: Option<String>) -> &mut Self {
        self.chat_template = template;
        self
    }

    /// The most bytes of one reply body that are read; a larger reply fails the attempt
    /// (not retried). Default: 16 MiB.
    pub fn max_reply_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_reply_bytes = bytes;
        self
    }

    /// Checks the URLs and reads the key once.
    pub fn build(&self) -> Result<OpenAiBackend, BackendError> {
        let mut urls = self.base_urls.clone();
        if urls.is_empty() {
            match self.preset.default_base_url() {
                Some(url) => urls.push(url.to_string()),
                None => {
                    return Err(BackendError::Config(
                        "no base URL given for an OpenAI-compatible server (use --base-url)".into(),
                    ));
                }
            }
        }
        let limits = self.limits.clone().unwrap_or_else(|| ConcurrencyLimits::new(8));
        if self.preset == Preset::Azure {
            // Azure refuses a request without an api-version.
            for url in &mut urls {
                if !url.contains("api-version=") {
                    let glue = if url.contains('?') { '&' } else { '?' };
                    url.push(glue);
                    url.push_str("api-version=");
                    url.push_str(AZURE_API_VERSION);
                }
            }
        }
        let endpoints = urls
            .iter()
            .map(|raw| endpoint(raw, &limits))
            .collect::<Result<Vec<_>, _>>()?;
        let key_variable = self
            .api_key_variable
            .clone()
            .or_else(|| self.preset.default_key_variable().map(str::to_string));
        let api_key = match &key_variable {
            Some(_) if self.keyless => None,
            Some(name) => match ApiKey::from_env(name) {
                Some(key) => Some(key),
                None if self.preset == Preset::Vllm || self.preset == Preset::Compatible => None,
                None => {
                    return Err(BackendError::Config(format!("the API key variable {name} is not set")));
                }
            },
            None => None,
        };
        let mut fields = self.params.clone();
        fields.shift_remove("model");
        fields.shift_remove("messages");
        for (key, value) in &self.extra_body {
            fields.insert(key.clone(), value.clone());
        }
        let mut secrets: Vec<String> = endpoints.iter().flat_map(|e| e.secrets.iter().cloned()).collect();
        secrets.extend(api_key.as_ref().map(ApiKey::value));
        let client = match &self.client {
            Some(client) => client.clone(),
            None => http_client(self.timeout)?,
        };
        Ok(OpenAiBackend {
            client,
            endpoints,
            next: AtomicUsize::new(0),
            api_key,
            preset: self.preset,
            model_name: self.model_name.clone(),
            fields,
            timeout: self.timeout,
            prefill: self.prefill.clone(),
            chat_template: self.chat_template.clone(),
            max_reply_bytes: self.max_reply_bytes.max(1),
            secrets,
        })
    }
}

fn endpoint(raw: &str, limits: &ConcurrencyLimits) -> Result<Endpoint, BackendError> {
    // Credentials in a URL are secrets too: only the redacted form is ever shown.
    let base =
        RedactedUrl::parse(raw).map_err(|e| BackendError::Config(format!("base URL `{}`: {e}", unparsed_url(raw))))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(BackendError::Config(format!(
            "base URL `{base}`: only http and https are supported"
        )));
    }
    let shown = base.to_string();
    Ok(Endpoint {
        limit: limits.for_endpoint(&shown),
        stop: limits.stop.clone(),
        chat_url: base.join_path("chat/completions"),
        completions_url: base.join_path("completions"),
        secrets: base.secrets(),
        shown,
        base,
        down_until: Mutex::new(None),
    })
}

/// Why a reply body could not be read whole.
pub(crate) enum BodyError {
    /// Past the cap: reading stopped there, so memory stays bounded.
    TooLarge,
    Transport(reqwest::Error),
}

/// A reply body, read chunk by chunk and abandoned as soon as it passes `limit` bytes (a
/// `Content-Length` over it is refused before reading anything).
pub(crate) async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length();
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let capacity = announced.map_or(0, |length| usize::try_from(length).unwrap_or(limit).min(limit));
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    model: &'a str,
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
}

/// Body fields that only make sense to a server-side chat template.
const CHAT_TEMPLATE_FIELDS: [&str; 4] = [
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
];

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    /// `/v1/completions` answers with text, not a message.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    /// OpenRouter's name for the same.
    #[serde(default)]
    reasoning: Option<String>,
}

/// What upstream substitutes when a provider's content filter withholds the answer, so the item
/// is judged as the refusal it effectively is.
const FILTERED_REPLY: &str = "I'm sorry, but I can't assist with that request.";

impl OpenAiBackend {
    /// Round-robin over endpoints, passing over any that recently refused a connection.
    fn pick(&self) -> &Endpoint {
        let now = Instant::now();
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.endpoints[(start + offset) % count])
            .find(|e| !e.is_down(now))
            .unwrap_or(&self.endpoints[start % count])
    }

    /// The body's fields for `request`: the fixed ones, plus what a prefill needs.
    ///
    /// Upstream deep-merges its prefill settings into the model's `extra_body` (so a thinking
    /// model's `chat_template_kwargs.enable_thinking: true` becomes false, beside
    /// `enable_raw_content: true`, which upstream's templates read to keep the prefill verbatim).
    fn prefill_fields(&self, request: &Request) -> Map<String, Value> {
        let mut fields = self.fields.clone();
        if request.stop_excluded {
            fields.insert("include_stop_str_in_output".into(), Value::Bool(false));
        }
        fields.insert("add_generation_prompt".into(), Value::Bool(false));
        fields.insert("continue_final_message".into(), Value::Bool(true));
        if let Some(template) = &self.chat_template {
            fields.insert("chat_template".into(), Value::String(template.clone()));
        }
        let kwargs = fields
            .entry("chat_template_kwargs")
            .or_insert_with(|| Value::Object(Map::new()));
        if !kwargs.is_object() {
            *kwargs = Value::Object(Map::new());
        }
        if let Value::Object(kwargs) = kwargs {
            kwargs.insert("enable_thinking".into(), Value::Bool(false));
            kwargs.insert("enable_raw_content".into(), Value::Bool(true));
        }
        fields
    }

    /// The `/v1/completions` body of a prefilled request: the template rendered here.
    fn completion_body(
        &self,
        request: &Request,
        template: &ChatTemplate,
        special_tokens: &Map<String, Value>,
    ) -> Result<Vec<u8>, BackendError> {
        let mut fields = self.prefill_fields(request);
        let mut variables = special_tokens.clone();
        if let Some(Value::Object(kwargs)) = fields.get("chat_template_kwargs") {
            variables.extend(kwargs.clone());
        }
        for field in CHAT_TEMPLATE_FIELDS {
            fields.shift_remove(field);
        }
        let prompt = template
            .render(&request.messages, false, true, &variables)
            .map_err(|e| BackendError::Config(format!("model `{}`: {e}", self.model_name)))?;
        let body = CompletionBody {
            model: &self.model_name,
            prompt: &prompt,
            stop: request.stop.as_deref(),
            fields: &fields,
        };
        let mut bytes = Vec::with_capacity(prompt.len() + prompt.len() / 8 + 512);
        serde_json::to_writer(&mut bytes, &body)
            .map_err(|e| BackendError::Config(format!("cannot encode the request: {e}")))?;
        Ok(bytes)
    }

    fn body(&self, request: &Request) -> Result<Vec<u8>, BackendError> {
        if request.prefill
            && let PrefillStyle::Completions {
                template,
                special_tokens,
            } = &self.prefill
        {
            return self.completion_body(request, template, special_tokens);
        }
        let prefill_fields;
        let fields = if request.prefill {
            prefill_fields = self.prefill_fields(request);
            &prefill_fields
        } else {
            &self.fields
        };
        let body = Body {
            model: &self.model_name,
            messages: &request.messages,
            stop: request.stop.as_deref(),
            fields,
        };
        serde_json::to_vec(&body).map_err(|e| BackendError::Config(format!("cannot encode the request: {e}")))
    }

    async fn send_to(&self, endpoint: &Endpoint, body: Vec<u8>, completions: bool) -> Result<Generation, BackendError> {
        let _slot = tokio::select! {
            biased;
            () = endpoint.stop.stopped() => return Err(BackendError::Stopped),
            slot = endpoint.limit.acquire() => {
                slot.map_err(|_| BackendError::Config("the concurrency limiter was closed".into()))?
            }
        };
        let url = if completions {
            &endpoint.completions_url
        } else {
            &endpoint.chat_url
        };
        let http = self
            .client
            .post(url.expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let http = self.authorize(http)?;
        let bytes = send_http(
            http,
            &endpoint.shown,
            self.timeout,
            self.max_reply_bytes,
            &self.secrets,
            header_retry_after,
        )
        .await?;
        self.reply(&endpoint.shown, &bytes)
    }

    /// `http` with this backend's key, in the header its provider reads.
    pub(crate) fn authorize(&self, http: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, BackendError> {
        Ok(match &self.api_key {
            Some(key) if self.preset == Preset::Azure => http.header("api-key", key.header_value()?),
            Some(key) => http.header(reqwest::header::AUTHORIZATION, key.bearer()?),
            None => http,
        })
    }

    /// A reply body read into a generation; `shown` names the server in errors.
    pub(crate) fn reply(&self, shown: &str, bytes: &[u8]) -> Result<Generation, BackendError> {
        self.parse(bytes).map_err(|problem| match problem {
            Parsed::Empty => BackendError::EmptyContent {
                endpoint: shown.to_string(),
            },
            Parsed::Invalid(problem) => BackendError::InvalidResponse {
                endpoint: shown.to_string(),
                problem,
            },
        })
    }

    /// The body `request` is sent with, and the API path it goes to under the base URL
    /// (`chat/completions`, or `completions` for a prefill rendered here): a batch line holds
    /// exactly what a direct call sends.
    pub(crate) fn request_body(&self, request: &Request) -> Result<(Vec<u8>, &'static str), BackendError> {
        let completions = request.prefill && matches!(self.prefill, PrefillStyle::Completions { .. });
        Ok((
            self.body(request)?,
            if completions { "completions" } else { "chat/completions" },
        ))
    }

    /// The first server: a batch goes to one.
    pub(crate) fn batch_server(&self) -> (&RedactedUrl, &str) {
        (&self.endpoints[0].base, &self.endpoints[0].shown)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn max_reply_bytes(&self) -> usize {
        self.max_reply_bytes
    }

    pub(crate) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    fn parse(&self, bytes: &[u8]) -> Result<Generation, Parsed> {
        let wire: WireResponse =
            serde_json::from_slice(bytes).map_err(|e| Parsed::Invalid(format!("not a chat completion: {e}")))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| Parsed::Invalid("no choices".into()))?;
        let finish_reason = choice.finish_reason;
        let message = match (choice.message, choice.text) {
            (Some(message), _) => message,
            (None, Some(text)) => WireMessage {
                content: Some(text),
                reasoning_content: None,
                reasoning: None,
            },
            (None, None) => return Err(Parsed::Invalid("no message".into())),
        };
        let filtered = finish_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("content_filter"));
        let mut text = match message.content {
            Some(text) if !(filtered && text.is_empty()) => text,
            _ if filtered => FILTERED_REPLY.to_string(),
            _ => return Err(Parsed::Empty),
        };
        let mut summary = None;
        if self.preset == Preset::Gemini
            && let Some((thought, answer)) = split_thought_tags(&text)
        {
            if answer.is_empty() && !filtered {
                return Err(Parsed::Empty);
            }
            text = answer;
            summary = Some(thought);
        }
        let reasoning = if summary.is_some() {
            summary
        } else if self.preset.reads_reasoning() {
            Some(message.reasoning_content.unwrap_or_default())
        } else {
            // vLLM's reasoning parsers (`reasoning_content`) and OpenRouter (`reasoning`) send the
            // thought beside the content; without either the `</think>` split applies, as upstream.
            message
                .reasoning_content
                .or(message.reasoning)
                .filter(|reasoning| !reasoning.is_empty())
        };
        let mut usage = wire.usage.unwrap_or_default();
        if usage.total_tokens == 0 {
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        }
        Ok(Generation {
            text,
            reasoning,
            usage,
            finish_reason,
        })
    }
}

enum Parsed {
    Empty,
    Invalid(String),
}

#[async_trait]
impl Backend for OpenAiBackend {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let (body, path) = self.request_body(request)?;
        let completions = path == "completions";
        let mut tried = 0;
        loop {
            let endpoint = self.pick();
            tried += 1;
            let result = self.send_to(endpoint, body.clone(), completions).await;
            match result.map_err(|error| error.redacted(&self.secrets)) {
                Err(error @ BackendError::Connect { .. }) => {
                    endpoint.mark_down(DOWN_FOR);
                    // Another server may be up: try it now rather than after a backoff.
                    if tried >= self.endpoints.len() {
                        return Err(error);
                    }
                    tracing::warn!(%error, "endpoint unreachable; trying the next one");
                }
                other => return other,
            }
        }
    }

    fn servers(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.shown.clone()).collect()
    }

    fn describe(&self) -> Value {
        serde_json::json!({
            "provider": self.preset,
            "model_name": self.model_name,
            "endpoints": self.endpoints.iter().map(|e| e.shown.clone()).collect::<Vec<_>>(),
            "fields": self.fields,
            "timeout_s": self.timeout.as_secs_f64(),
            "prefill": match self.prefill {
                PrefillStyle::ContinueFinalMessage => "continue_final_message",
                PrefillStyle::Completions { .. } => "completions",
            },
            "chat_template_sha256": self.chat_template.as_deref().map(|t| {
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(t.as_bytes()))
            }),
        })
    }
}

/// `Retry-After`, when the server sent one.
pub(crate) fn header_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Sends one HTTP attempt and reads the reply's body, as every HTTP backend maps its failures:
/// a timeout, a refused connection or a broken one; a body over `max_reply_bytes` (reading
/// stops there); a status other than 2xx, with its body (secrets masked, cut) and the wait
/// `retry_after` reads from the headers.
pub(crate) async fn send_http(
    http: reqwest::RequestBuilder,
    shown: &str,
    timeout: Duration,
    max_reply_bytes: usize,
    secrets: &[String],
    retry_after: fn(&reqwest::header::HeaderMap) -> Option<Duration>,
) -> Result<Vec<u8>, BackendError> {
    let transport = |error: reqwest::Error| {
        // reqwest's own text names the URL as typed, query and all.
        let error = error.without_url();
        if error.is_timeout() {
            BackendError::Timeout {
                endpoint: shown.to_string(),
                after: timeout,
            }
        } else if error.is_connect() {
            BackendError::Connect {
                endpoint: shown.to_string(),
                reason: root_cause(&error),
            }
        } else {
            BackendError::InvalidResponse {
                endpoint: shown.to_string(),
                problem: format!("the connection broke: {}", root_cause(&error)),
            }
        }
    };
    let response = http.send().await.map_err(transport)?;
    let status = response.status();
    let wait = retry_after(response.headers());
    let bytes = read_capped(response, max_reply_bytes)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => BackendError::TooLarge {
                endpoint: shown.to_string(),
                limit: max_reply_bytes,
            },
            BodyError::Transport(error) => transport(error),
        })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(BackendError::Status {
            endpoint: shown.to_string(),
            status: status.as_u16(),
            // Masked before the cut, so that no prefix of a secret is left at the end.
            body: crate::redact::redact(&text, secrets).chars().take(300).collect(),
            retry_after: wait,
        });
    }
    Ok(bytes)
}

/// The innermost message of an error chain: "connection refused", not "error sending request".
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(preset: Preset) -> Result<OpenAiBackend, BackendError> {
        OpenAiBackend::builder(preset, "m")
            .base_urls(["http://user:secret@127.0.0.1:9/v1".to_string()])
            .api_key_variable(Some("SPECBENCH_TEST_UNSET_KEY".into()))
            .build()
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn credentials_in_urls_are_not_shown() -> Result<(), BackendError> {
        let backend = backend(Preset::Vllm)?;
        let described = backend.describe().to_string();
        assert!(!described.contains("secret"), "{described}");
        assert!(described.contains("http://127.0.0.1:9/v1"), "{described}");
        Ok(())
    }

    #[test]
    fn a_missing_openai_key_is_a_config_error() {
        let err = backend(Preset::OpenAi).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the API key variable SPECBENCH_TEST_UNSET_KEY is not set")
        );
    }

    #[test]
    fn extra_body_lands_at_the_top_level() -> Result<(), BackendError> {
        let mut params = Map::new();
        params.insert("max_tokens".into(), 10.into());
        params.insert("temperature".into(), 0.7.into());
        let mut extra = Map::new();
        extra.insert("top_k".into(), 20.into());
        extra.insert("temperature".into(), 0.1.into());
        let backend = OpenAiBackend::builder(Preset::Vllm, "m")
            .base_urls(["http://127.0.0.1:9/v1".to_string()])
            .params(params)
            .extra_body(extra)
            .build()?;
        let body = backend.body(&Request::chat(vec![Message::user("hi")]))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| BackendError::Config(e.to_string()))?;
        assert_eq!(
            value,
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 10, "temperature": 0.1, "top_k": 20})
        );
        Ok(())
    }

    #[test]
    fn a_separate_reasoning_field_is_the_thought() -> Result<(), BackendError> {
        let backend = backend(Preset::Vllm)?;
        let reasoning = |bytes: &[u8]| backend.parse(bytes).ok().and_then(|g| g.reasoning);
        // vLLM with a reasoning parser, and OpenRouter.
        let vllm = br#"{"choices":[{"message":{"content":"Answer.","reasoning_content":"Let me think."}}]}"#;
        assert_eq!(reasoning(vllm).as_deref(), Some("Let me think."));
        let openrouter = br#"{"choices":[{"message":{"content":"Answer.","reasoning":"Hmm."}}]}"#;
        assert_eq!(reasoning(openrouter).as_deref(), Some("Hmm."));
        // Neither, null or empty: the content's own `</think>` split, as upstream.
        for plain in [
            &br#"{"choices":[{"message":{"content":"a</think>b"}}]}"#[..],
            br#"{"choices":[{"message":{"content":"a</think>b","reasoning_content":null}}]}"#,
            br#"{"choices":[{"message":{"content":"a</think>b","reasoning":""}}]}"#,
        ] {
            assert_eq!(reasoning(plain), None);
        }
        Ok(())
    }

    #[test]
    fn a_gemini_thought_summary_is_the_thought_and_the_rest_the_response() -> Result<(), BackendError> {
        let mut builder = OpenAiBackend::builder(Preset::Gemini, "gemini-2.5-flash");
        builder.without_key();
        let gemini = builder.build()?;
        assert_eq!(gemini.describe()["endpoints"][0], GEMINI_BASE_URL);
        let summarized = br#"{"choices":[{"message":{"role":"assistant","content":"<thought>**Weighing it**\nThe user asks.</thought>The answer."},"finish_reason":"stop"}]}"#;
        let generation = gemini.parse(summarized).ok();
        assert_eq!(generation.as_ref().map(|g| g.text.as_str()), Some("The answer."));
        assert_eq!(
            generation.and_then(|g| g.reasoning).as_deref(),
            Some("**Weighing it**\nThe user asks.")
        );
        // No summary asked for: the content is the response, as any server's.
        let plain = br#"{"choices":[{"message":{"content":"The answer."}}]}"#;
        assert_eq!(gemini.parse(plain).ok().and_then(|g| g.reasoning), None);
        // A summary and no answer is an empty reply (retried), not a response.
        let only_thought = br#"{"choices":[{"message":{"content":"<thought>hm</thought>"}}]}"#;
        assert!(matches!(gemini.parse(only_thought), Err(Parsed::Empty)));
        // Another preset leaves the tags in the text.
        let vllm = backend(Preset::Vllm)?;
        assert!(vllm.parse(summarized).is_ok_and(|g| g.text.starts_with("<thought>")));
        Ok(())
    }

    #[test]
    fn content_filter_becomes_a_refusal_and_null_content_is_empty() -> Result<(), BackendError> {
        let backend = backend(Preset::Vllm)?;
        let filtered = br#"{"choices":[{"message":{"content":null},"finish_reason":"content_filter"}]}"#;
        assert_eq!(
            backend.parse(filtered).ok().map(|g| g.text),
            Some(FILTERED_REPLY.to_string())
        );
        let empty = br#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#;
        assert!(matches!(backend.parse(empty), Err(Parsed::Empty)));
        let no_choices = br#"{"choices":[]}"#;
        assert!(matches!(backend.parse(no_choices), Err(Parsed::Invalid(_))));
        Ok(())
    }
}
