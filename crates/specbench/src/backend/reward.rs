//! A reward model behind vLLM's score API (`POST /v1/score` with `text_1`, `text_2`), used by
//! the Best-of-N and TPO methods to rank candidate responses.
//!
//! It is a [`Backend`], so a score is asked for through a [`Model`] like every other call: with
//! its retries, backoff and `Retry-After`, the per-server concurrency cap, the stop, and the
//! response cache. The request is the prompt as a user message and the response as an
//! assistant message; the reply's text is the score.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::openai::{ApiKey, BodyError, ConcurrencyLimits, parse_retry_after, read_capped};
use super::{
    Backend, BackendError, DEFAULT_MAX_REPLY_BYTES, Generation, Message, Model, ModelError, Request, Role, Stop,
};
use crate::redact::{RedactedUrl, unparsed_url};

/// One reward model at one base URL.
pub struct RewardModel {
    client: reqwest::Client,
    url: RedactedUrl,
    shown: String,
    model_name: String,
    api_key: Option<ApiKey>,
    /// The key's value and the URL's secrets, masked in every error text.
    secrets: Vec<String>,
    limit: Arc<Semaphore>,
    stop: Stop,
}

#[derive(Deserialize)]
struct ScoreResponse {
    #[serde(default)]
    data: Vec<ScoreEntry>,
}

#[derive(Deserialize)]
struct ScoreEntry {
    score: f64,
}

impl RewardModel {
    /// `base_url` ends before `/score` (as for chat: `http://host:8000/v1`); `limits` caps the
    /// requests in flight to that server together with every other model using it.
    pub fn new(
        base_url: &str,
        model_name: &str,
        api_key: Option<ApiKey>,
        timeout: Duration,
        limits: &ConcurrencyLimits,
    ) -> Result<RewardModel, BackendError> {
        let base = RedactedUrl::parse(base_url)
            .map_err(|e| BackendError::Config(format!("reward model URL `{}`: {e}", unparsed_url(base_url))))?;
        let url = base.join_path("score");
        let mut secrets = base.secrets();
        secrets.extend(api_key.as_ref().map(ApiKey::value));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BackendError::Config(format!("cannot build the HTTP client: {e}")))?;
        let shown = base.to_string();
        Ok(RewardModel {
            client,
            url,
            limit: limits.for_endpoint(&shown),
            stop: limits.stop().clone(),
            shown,
            model_name: model_name.to_string(),
            api_key,
            secrets,
        })
    }

    /// The request that asks for the reward of `response` to `prompt`.
    pub fn request(prompt: &str, response: &str) -> Request {
        Request::chat(vec![Message::user(prompt), Message::assistant(response)])
    }

    /// The reward of `response` to `prompt` through `model` (a [`RewardModel`] backend);
    /// higher is better.
    pub async fn score(model: &Model, prompt: &str, response: &str) -> Result<f64, ModelError> {
        let generation = model.generate(&RewardModel::request(prompt, response)).await?;
        generation.text.parse::<f64>().map_err(|_| ModelError {
            model: model.key().to_string(),
            attempts: 1,
            elapsed: Duration::ZERO,
            last: BackendError::InvalidResponse {
                endpoint: model.key().to_string(),
                problem: format!("a stored score is not a number: {:?}", generation.text),
            },
        })
    }

    async fn score_once(&self, prompt: &str, response: &str) -> Result<f64, BackendError> {
        let _slot = tokio::select! {
            biased;
            () = self.stop.stopped() => return Err(BackendError::Stopped),
            slot = self.limit.acquire() => {
                slot.map_err(|_| BackendError::Config("the concurrency limiter was closed".into()))?
            }
        };
        let body = serde_json::json!({"model": self.model_name, "text_1": prompt, "text_2": response});
        let mut http = self.client.post(self.url.expose().clone()).json(&body);
        if let Some(key) = &self.api_key {
            http = http.header(reqwest::header::AUTHORIZATION, key.bearer()?);
        }
        let endpoint = || self.shown.clone();
        // reqwest's own texts name the URL as typed, query and all.
        let response = http.send().await.map_err(|e| BackendError::Connect {
            endpoint: endpoint(),
            reason: e.without_url().to_string(),
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = read_capped(response, DEFAULT_MAX_REPLY_BYTES)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => BackendError::TooLarge {
                    endpoint: endpoint(),
                    limit: DEFAULT_MAX_REPLY_BYTES,
                },
                BodyError::Transport(e) => BackendError::InvalidResponse {
                    endpoint: endpoint(),
                    problem: e.without_url().to_string(),
                },
            })?;
        if !status.is_success() {
            return Err(BackendError::Status {
                endpoint: endpoint(),
                status: status.as_u16(),
                body: crate::redact::redact(&String::from_utf8_lossy(&bytes), &self.secrets)
                    .chars()
                    .take(300)
                    .collect(),
                retry_after,
            });
        }
        let parsed: ScoreResponse = serde_json::from_slice(&bytes).map_err(|e| BackendError::InvalidResponse {
            endpoint: endpoint(),
            problem: format!("not a score response: {e}"),
        })?;
        parsed
            .data
            .first()
            .map(|entry| entry.score)
            .ok_or_else(|| BackendError::InvalidResponse {
                endpoint: endpoint(),
                problem: "no score in the answer".into(),
            })
    }
}

#[async_trait]
impl Backend for RewardModel {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let text = |role: Role| {
            request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == role)
                .map(|m| m.content.as_str())
        };
        let (Some(prompt), Some(response)) = (text(Role::User), text(Role::Assistant)) else {
            return Err(BackendError::Config(
                "a reward request holds the prompt as a user message and the response as an assistant message".into(),
            ));
        };
        let score = self
            .score_once(prompt, response)
            .await
            .map_err(|error| error.redacted(&self.secrets))?;
        Ok(Generation {
            // `{:?}` writes the shortest text that parses back to the same number.
            text: format!("{score:?}"),
            reasoning: None,
            usage: Default::default(),
            finish_reason: None,
        })
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"score_api": self.shown, "model_name": self.model_name})
    }
}
