//! Anthropic's Messages API (`POST {base}/messages`), natively.
//!
//! What differs from the OpenAI wire format: the key goes in `x-api-key` with an
//! `anthropic-version` header; system messages become the top-level `system` field;
//! `max_tokens` is required; stop strings are `stop_sequences`; the reply is a list of content
//! blocks, of which `thinking` blocks (extended thinking) are the thought and `text` blocks the
//! answer; `stop_reason` says why it ended. A last assistant message is a prefill, continued by
//! the model, as Anthropic documents it; the API refuses one that ends in white space, so that
//! is cut off, and it refuses a prefill with extended thinking on, which is refused here before
//! anything is sent. Overloaded (529) and rate-limited (429) answers are retried, after
//! `retry-after` when the server gives it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::openai::{header_retry_after, send_http};
use super::{
    ApiKey, Backend, BackendError, ConcurrencyLimits, DEFAULT_MAX_REPLY_BYTES, Generation, Request, Role, Stop, Usage,
};
use crate::redact::{RedactedUrl, unparsed_url};

/// Where the API is unless told.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The variable the key is read from unless told.
pub const DEFAULT_KEY_VARIABLE: &str = "ANTHROPIC_API_KEY";
/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the model's entry sets none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Body fields of the Messages API a model's entry may set (besides `max_tokens`); any other is
/// refused when the backend is built, as the API would refuse it on every request.
const FIELDS: &[&str] = &["temperature", "top_p", "top_k", "thinking", "metadata", "service_tier"];

/// The answer that stands in for an empty refusal (`stop_reason: refusal`), as for OpenAI's
/// content filter.
const REFUSED_REPLY: &str = "I'm sorry, but I can't assist with that request.";

/// One model behind Anthropic's Messages API.
pub struct AnthropicBackend {
    client: reqwest::Client,
    shown: String,
    messages_url: RedactedUrl,
    api_key: Option<ApiKey>,
    model_name: String,
    /// `max_tokens` and the allowed decoding fields, sent with every request.
    fields: Map<String, Value>,
    /// Fields of the configuration that the API has no place for, kept for the record (the
    /// cache key): `seed`, which Anthropic does not take.
    unsent: Map<String, Value>,
    timeout: Duration,
    limit: Arc<Semaphore>,
    stop: Stop,
    max_reply_bytes: usize,
    /// Key and URL secrets, cut out of any text the server sends back.
    secrets: Vec<String>,
}

/// Builds an [`AnthropicBackend`]; every setter documents its default.
pub struct AnthropicBackendBuilder {
    base_url: Option<String>,
    api_key_variable: Option<String>,
    keyless: bool,
    model_name: String,
    params: Map<String, Value>,
    extra_body: Map<String, Value>,
    timeout: Duration,
    limits: Option<ConcurrencyLimits>,
    max_reply_bytes: usize,
    client: Option<reqwest::Client>,
}

impl AnthropicBackend {
    pub fn builder(model_name: impl Into<String>) -> AnthropicBackendBuilder {
        AnthropicBackendBuilder {
            base_url: None,
            api_key_variable: None,
            keyless: false,
            model_name: model_name.into(),
            params: Map::new(),
            extra_body: Map::new(),
            timeout: Duration::from_secs(600),
            limits: None,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            client: None,
        }
    }
}

impl AnthropicBackendBuilder {
    /// Default: [`DEFAULT_BASE_URL`]. One server: the API has one address.
    pub fn base_url(&mut self, url: Option<String>) -> &mut Self {
        self.base_url = url;
        self
    }

    /// Default: [`DEFAULT_KEY_VARIABLE`].
    pub fn api_key_variable(&mut self, name: Option<String>) -> &mut Self {
        self.api_key_variable = name;
        self
    }

    /// Reads no key: for a backend that never sends (see `OpenAiBackendBuilder::without_key`).
    pub fn without_key(&mut self) -> &mut Self {
        self.keyless = true;
        self
    }

    /// Decoding fields of the model's entry (`max_tokens`, `temperature`, ...).
    pub fn params(&mut self, params: Map<String, Value>) -> &mut Self {
        self.params = params;
        self
    }

    /// Merged over `params` (`thinking: {type: enabled, budget_tokens: N}`).
    pub fn extra_body(&mut self, extra_body: Map<String, Value>) -> &mut Self {
        self.extra_body = extra_body;
        self
    }

    /// Default: 600 s per request.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Default: a limiter of its own, 1 request in flight.
    pub fn limits(&mut self, limits: ConcurrencyLimits) -> &mut Self {
        self.limits = Some(limits);
        self
    }

    /// Default: [`DEFAULT_MAX_REPLY_BYTES`].
    pub fn max_reply_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_reply_bytes = bytes;
        self
    }

    /// Default: a client of its own.
    pub fn client(&mut self, client: Option<reqwest::Client>) -> &mut Self {
        self.client = client;
        self
    }

    pub fn build(&self) -> Result<AnthropicBackend, BackendError> {
        let raw = self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let base = RedactedUrl::parse(raw)
            .map_err(|e| BackendError::Config(format!("base URL `{}`: {e}", unparsed_url(raw))))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(BackendError::Config(format!(
                "base URL `{base}`: only http and https are supported"
            )));
        }
        let shown = base.to_string();
        let variable = self
            .api_key_variable
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_VARIABLE.to_string());
        let api_key = if self.keyless {
            None
        } else {
            Some(
                ApiKey::from_env(&variable)
                    .ok_or_else(|| BackendError::Config(format!("the API key variable {variable} is not set")))?,
            )
        };
        let mut given = self.params.clone();
        for (key, value) in &self.extra_body {
            given.insert(key.clone(), value.clone());
        }
        given.shift_remove("model");
        given.shift_remove("messages");
        let mut fields = Map::new();
        let max_tokens = given
            .shift_remove("max_tokens")
            .unwrap_or_else(|| Value::from(DEFAULT_MAX_TOKENS));
        fields.insert("max_tokens".into(), max_tokens);
        let mut unsent = Map::new();
        for (key, value) in given {
            if FIELDS.contains(&key.as_str()) {
                fields.insert(key, value);
            } else if key == "seed" {
                unsent.insert(key, value);
            } else {
                return Err(BackendError::Config(format!(
                    "model `{}`: `{key}` is not a field of Anthropic's Messages API (it takes {} and max_tokens)",
                    self.model_name,
                    FIELDS.join(", ")
                )));
            }
        }
        let limits = self.limits.clone().unwrap_or_else(|| ConcurrencyLimits::new(1));
        let client = match &self.client {
            Some(client) => client.clone(),
            None => super::openai::http_client(self.timeout)?,
        };
        let mut secrets = base.secrets();
        secrets.extend(api_key.as_ref().map(ApiKey::value));
        Ok(AnthropicBackend {
            client,
            limit: limits.for_endpoint(&shown),
            stop: limits.stop().clone(),
            messages_url: base.join_path("messages"),
            shown,
            api_key,
            model_name: self.model_name.clone(),
            fields,
            unsent,
            timeout: self.timeout,
            max_reply_bytes: self.max_reply_bytes,
            secrets,
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
}

impl AnthropicBackend {
    fn thinking(&self) -> bool {
        self.fields
            .get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|kind| kind == "enabled")
    }

    fn body(&self, request: &Request) -> Result<Vec<u8>, BackendError> {
        if request.prefill && self.thinking() {
            return Err(BackendError::Config(format!(
                "model `{}`: Anthropic does not continue a prefilled answer with extended thinking on; \
                 use a method without a prefill (vanilla, self_refine, best_of_n, tpo) or turn `thinking` off",
                self.model_name
            )));
        }
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let last = request.messages.len().saturating_sub(1);
        let messages = request
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role != Role::System)
            .map(|(at, m)| WireMessage {
                role: if m.role == Role::Assistant { "assistant" } else { "user" },
                // The API refuses a final assistant message that ends in white space.
                content: if request.prefill && at == last {
                    m.content.trim_end()
                } else {
                    &m.content
                },
            })
            .collect();
        let body = Body {
            model: &self.model_name,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages,
            // An empty list is no stop at all; the API wants it left out.
            stop_sequences: request.stop.as_deref().filter(|stop| !stop.is_empty()),
            fields: &self.fields,
        };
        serde_json::to_vec(&body).map_err(|e| BackendError::Config(format!("cannot encode the request: {e}")))
    }

    fn parse(bytes: &[u8]) -> Result<Generation, String> {
        let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| format!("not a Messages reply: {e}"))?;
        let mut text = String::new();
        let mut thought: Option<String> = None;
        for block in wire.content {
            match block.kind.as_str() {
                "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
                "thinking" => thought
                    .get_or_insert_with(String::new)
                    .push_str(block.thinking.as_deref().unwrap_or_default()),
                // Redacted thinking and tool blocks carry nothing to record.
                _ => {}
            }
        }
        let finish_reason = wire.stop_reason.map(|reason| {
            match reason.as_str() {
                "end_turn" | "stop_sequence" => "stop",
                "max_tokens" => "length",
                "refusal" => "content_filter",
                other => other,
            }
            .to_string()
        });
        if text.is_empty() && finish_reason.as_deref() == Some("content_filter") {
            text = REFUSED_REPLY.to_string();
        }
        let usage = wire.usage;
        let prompt_tokens = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens;
        Ok(Generation {
            text,
            reasoning: thought,
            usage: Usage {
                prompt_tokens,
                completion_tokens: usage.output_tokens,
                total_tokens: prompt_tokens + usage.output_tokens,
            },
            finish_reason,
        })
    }

    /// The wait a refusal asks for: `retry-after`, else the earliest of the rate-limit
    /// reset times (`anthropic-ratelimit-*-reset`, RFC 3339).
    fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        if let Some(wait) = header_retry_after(headers) {
            return Some(wait);
        }
        let now = jiff::Timestamp::now();
        headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("anthropic-ratelimit-") && name.as_str().ends_with("-reset"))
            .filter_map(|(_, value)| value.to_str().ok()?.parse::<jiff::Timestamp>().ok())
            .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
            .min()
    }

    async fn send_once(&self, body: Vec<u8>) -> Result<Generation, BackendError> {
        let _slot = tokio::select! {
            biased;
            () = self.stop.stopped() => return Err(BackendError::Stopped),
            slot = self.limit.acquire() => {
                slot.map_err(|_| BackendError::Config("the concurrency limiter was closed".into()))?
            }
        };
        let http = self
            .client
            .post(self.messages_url.expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let http = self.authorize(http)?;
        let bytes = send_http(
            http,
            &self.shown,
            self.timeout,
            self.max_reply_bytes,
            &self.secrets,
            Self::retry_after,
        )
        .await?;
        self.reply(&bytes)
    }

    /// `http` with the key and the API version.
    pub(crate) fn authorize(&self, http: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, BackendError> {
        let http = http.header("anthropic-version", API_VERSION);
        Ok(match &self.api_key {
            Some(key) => http.header("x-api-key", key.header_value()?),
            None => http,
        })
    }

    /// A Messages reply read into a generation.
    pub(crate) fn reply(&self, bytes: &[u8]) -> Result<Generation, BackendError> {
        Self::parse(bytes).map_err(|problem| BackendError::InvalidResponse {
            endpoint: self.shown.clone(),
            problem,
        })
    }

    /// The body a direct call sends: a batch request's `params` are exactly this.
    pub(crate) fn request_body(&self, request: &Request) -> Result<Vec<u8>, BackendError> {
        self.body(request)
    }

    /// `<base>/messages/batches`: where Message Batches live.
    pub(crate) fn batches_url(&self) -> RedactedUrl {
        self.messages_url.join_path("batches")
    }

    pub(crate) fn shown(&self) -> &str {
        &self.shown
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

    /// The `retry-after` reading of this API, for the batch calls too.
    pub(crate) fn wait_asked(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        Self::retry_after(headers)
    }
}

#[async_trait]
impl Backend for AnthropicBackend {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let body = self.body(request)?;
        self.send_once(body)
            .await
            .map_err(|error| error.redacted(&self.secrets))
    }

    fn servers(&self) -> Vec<String> {
        vec![self.shown.clone()]
    }

    fn describe(&self) -> Value {
        serde_json::json!({
            "provider": "anthropic",
            "model_name": self.model_name,
            "endpoints": [self.shown],
            "anthropic_version": API_VERSION,
            "fields": self.fields,
            "unsent": self.unsent,
            "timeout_s": self.timeout.as_secs_f64(),
            "prefill": "final_assistant_message",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Message;

    fn backend(params: Value) -> Result<AnthropicBackend, BackendError> {
        let Value::Object(params) = params else {
            return Err(BackendError::Config("params must be an object".into()));
        };
        AnthropicBackend::builder("claude-test")
            .base_url(Some("http://127.0.0.1:9/v1".into()))
            .without_key()
            .params(params)
            .build()
    }

    #[test]
    fn the_body_has_a_system_field_a_required_max_tokens_and_stop_sequences() -> Result<(), Box<dyn std::error::Error>>
    {
        let backend = backend(serde_json::json!({"temperature": 0.7, "seed": 3}))?;
        let request = Request::prefilled(
            vec![Message::system("the rules"), Message::user("the question")],
            "<think>\n",
            vec!["</think>".into()],
        );
        let body: Value = serde_json::from_slice(&backend.body(&request)?)?;
        assert_eq!(
            body,
            serde_json::json!({
                "model": "claude-test",
                "system": "the rules",
                "messages": [
                    {"role": "user", "content": "the question"},
                    {"role": "assistant", "content": "<think>"},
                ],
                "stop_sequences": ["</think>"],
                "max_tokens": DEFAULT_MAX_TOKENS,
                "temperature": 0.7,
            })
        );
        // The seed is not sent, but it tells samples apart in the record.
        assert_eq!(backend.describe()["unsent"]["seed"], 3);
        Ok(())
    }

    #[test]
    fn a_field_the_api_does_not_take_is_refused_when_built() {
        let error = backend(serde_json::json!({"presence_penalty": 0.1}))
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("`presence_penalty` is not a field")),
            "{error:?}"
        );
    }

    #[test]
    fn a_prefill_with_extended_thinking_is_refused_before_sending() -> Result<(), Box<dyn std::error::Error>> {
        let backend = backend(serde_json::json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}))?;
        let request = Request::prefilled(vec![Message::user("q")], "<think>\n</think>", Vec::new());
        let error = backend.body(&request).err().map(|e| e.to_string());
        assert!(error.as_deref().is_some_and(|e| e.contains("prefilled")), "{error:?}");
        Ok(())
    }

    #[test]
    fn thinking_blocks_are_the_thought_and_stop_reasons_map() -> Result<(), Box<dyn std::error::Error>> {
        let reply = serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [
                {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                {"type": "text", "text": "The answer."},
            ],
            "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2},
        });
        let generation = AnthropicBackend::parse(&serde_json::to_vec(&reply)?)?;
        assert_eq!(generation.text, "The answer.");
        assert_eq!(generation.reasoning.as_deref(), Some("Let me see."));
        assert_eq!(generation.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            (generation.usage.prompt_tokens, generation.usage.completion_tokens),
            (12, 5)
        );

        let refused = serde_json::json!({"content": [], "stop_reason": "refusal", "usage": {}});
        let generation = AnthropicBackend::parse(&serde_json::to_vec(&refused)?)?;
        assert_eq!(generation.text, REFUSED_REPLY);
        assert_eq!(generation.reasoning, None);
        Ok(())
    }

    #[test]
    fn a_rate_limit_reset_time_is_the_wait_when_there_is_no_retry_after() -> Result<(), Box<dyn std::error::Error>> {
        let mut headers = reqwest::header::HeaderMap::new();
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        headers.insert("anthropic-ratelimit-requests-reset", at.to_string().parse()?);
        let wait = AnthropicBackend::retry_after(&headers).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse()?);
        assert_eq!(AnthropicBackend::retry_after(&headers), Some(Duration::from_secs(2)));
        Ok(())
    }
}
