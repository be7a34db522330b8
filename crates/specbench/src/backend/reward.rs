//! A reward model behind vLLM's score API (`POST /v1/score` with `text_1`, `text_2`), used by
//! the Best-of-N and TPO methods to rank candidate responses.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::BackendError;
use super::openai::ApiKey;

/// One reward model at one base URL.
pub struct RewardModel {
    client: reqwest::Client,
    url: Url,
    shown: String,
    model_name: String,
    api_key: Option<ApiKey>,
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
        let base = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| BackendError::Config(format!("reward model URL `{base_url}`: {e}")))?;
        let mut shown = base.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let url = Url::parse(&format!("{}/score", base.as_str().trim_end_matches('/')))
            .map_err(|e| BackendError::Config(format!("reward model URL `{shown}`: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BackendError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(RewardModel {
            client,
            url,
            shown: shown.to_string(),
            model_name: model_name.to_string(),
            api_key,
        })
    }

    /// The reward of `response` to `prompt`; higher is better.
    pub async fn score(&self, prompt: &str, response: &str) -> Result<f64, BackendError> {
        let body = serde_json::json!({"model": self.model_name, "text_1": prompt, "text_2": response});
        let mut http = self.client.post(self.url.clone()).json(&body);
        if let Some(key) = &self.api_key {
            http = http.header(reqwest::header::AUTHORIZATION, key.bearer()?);
        }
        let endpoint = || self.shown.clone();
        let response = http.send().await.map_err(|e| BackendError::Connect {
            endpoint: endpoint(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| BackendError::InvalidResponse {
            endpoint: endpoint(),
            problem: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(BackendError::Status {
                endpoint: endpoint(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
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
