//! A reward model behind vLLM's score API (`POST /v1/score` with `text_1`, `text_2`), used by
//! the Best-of-N and TPO methods to rank candidate responses.

use std::time::Duration;

use serde::Deserialize;

use super::openai::{ApiKey, BodyError, read_capped};
use super::{BackendError, DEFAULT_MAX_REPLY_BYTES};
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
    /// `base_url` ends before `/score` (as for chat: `http://host:8000/v1`).
    pub fn new(
        base_url: &str,
        model_name: &str,
        api_key: Option<ApiKey>,
        timeout: Duration,
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
        Ok(RewardModel {
            client,
            url,
            shown: base.to_string(),
            model_name: model_name.to_string(),
            api_key,
            secrets,
        })
    }

    /// The reward of `response` to `prompt`; higher is better.
    pub async fn score(&self, prompt: &str, response: &str) -> Result<f64, BackendError> {
        self.score_once(prompt, response)
            .await
            .map_err(|error| error.redacted(&self.secrets))
    }

    async fn score_once(&self, prompt: &str, response: &str) -> Result<f64, BackendError> {
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
                retry_after: None,
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

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"score_api": self.shown, "model_name": self.model_name})
    }
}
