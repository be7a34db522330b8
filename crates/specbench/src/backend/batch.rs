//! OpenAI's Batch API: the same requests answered within 24 hours at half price.
//!
//! [`BatchBackend`] is a [`Backend`] like any other: methods and judges send one request at a
//! time and wait for its reply, so nothing above it knows. Requests that arrive close together
//! (every item's next call: all of Align3's first stages, then all of their second) are
//! gathered into one batch, so methods with several sequential calls proceed in rounds by
//! themselves. The response cache sits above it (in `Model`): a cached reply is never batched.
//!
//! Nothing is paid for twice, whatever is killed when. A request's `custom_id` is its cache key,
//! the same for the same unit in every run. Before a batch's input is uploaded, its intent (a
//! name, and the custom ids it holds) is journaled; the batch id is journaled the moment the API
//! returns it, and the name goes into the batch's metadata. A later run over the same model
//! finds its requests in the journal and waits on that batch (or, for an intent without an id,
//! on the batch whose metadata carries its name, found among the recent ones) instead of
//! submitting them again. Units a batch did not answer (failed lines, an expired, failed or
//! cancelled batch, an intent that was never submitted) come back as retryable errors, and
//! `Model`'s retries put them into a new batch, up to `--max-attempts`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use super::openai::{OpenAiBackend, header_retry_after, send_http};
use super::{Backend, BackendError, Generation, Request, Stop};

/// How often a batch is polled, and how long requests are gathered before one is submitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchTiming {
    pub poll: Duration,
    pub gather: Duration,
}

impl BatchTiming {
    /// Gathering lasts at most 2 s: every item's next call arrives within milliseconds of the
    /// previous round's replies.
    pub fn polling_every(poll: Duration) -> BatchTiming {
        BatchTiming {
            poll,
            gather: poll.min(Duration::from_secs(2)),
        }
    }
}

/// The most requests in one batch (the Batch API takes 50,000 and a 200 MB file).
pub const MAX_BATCH_REQUESTS: usize = 50_000;
/// Consecutive failed calls to the batch API (polls, downloads) before the batch's units are
/// handed back as failed (they go into a new batch; the journal keeps the old one).
const MAX_API_FAILURES: u32 = 10;

/// A model whose requests go through the provider's batch API.
pub struct BatchBackend {
    shared: Arc<Shared>,
}

struct Shared {
    inner: OpenAiBackend,
    journal: Journal,
    timing: BatchTiming,
    stop: Stop,
    /// The journal's and the metadata's name for this model's batches: a digest of what the
    /// backend describes (server, model, parameters), so that only the same model's runs meet.
    tag: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// Custom id → name of the batch that last held it (journal, then this process).
    owner: HashMap<String, String>,
    batches: HashMap<String, Batch>,
    /// Replies fetched before their request was sent again (a batch found after a restart
    /// answers requests the run has not reached yet).
    ready: HashMap<String, Generation>,
    waiters: HashMap<String, Vec<oneshot::Sender<Outcome>>>,
    /// Requests waiting for the next batch: custom id, API path, body.
    pending: Vec<(String, &'static str, Vec<u8>)>,
    gathering: bool,
    counter: u64,
}

struct Batch {
    id: Option<String>,
    ids: Vec<String>,
    /// Someone is polling it (a batch from the journal is polled once a request needs it).
    driven: bool,
}

/// One unit's result, as handed to every request waiting on it.
#[derive(Clone)]
enum Outcome {
    Reply(Generation),
    Failed { problem: String, retryable: bool },
    Stopped,
}

impl BatchBackend {
    /// Batches `inner`'s requests, journaling them in `journal_dir`.
    pub fn new(inner: OpenAiBackend, journal_dir: &Path, timing: BatchTiming, stop: Stop) -> BatchBackend {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(inner.describe().to_string().as_bytes());
        let tag = hex::encode(&digest[..8]);
        BatchBackend {
            shared: Arc::new(Shared {
                journal: Journal {
                    path: journal_dir.join(format!("{tag}.jsonl")),
                },
                inner,
                timing,
                stop,
                tag,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The endpoint identity its requests' cache keys, and so their custom ids, are made with.
    pub fn describe_identity(&self) -> String {
        self.shared.inner.describe().to_string()
    }

    /// Where this model's batches are journaled.
    pub fn journal_path(&self) -> &Path {
        &self.shared.journal.path
    }
}

#[async_trait]
impl Backend for BatchBackend {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let shared = &self.shared;
        let custom_id = custom_id(&shared.inner, request);
        let (body, path) = shared.inner.request_body(request)?;
        let receiver = {
            let mut state = shared.lock();
            if !state.loaded {
                let journaled = shared.journal.read().map_err(|e| shared.journal.error(&e))?;
                state.load(journaled);
            }
            if let Some(reply) = state.ready.remove(&custom_id) {
                return Ok(reply);
            }
            let (sender, receiver) = oneshot::channel();
            let waiters = state.waiters.entry(custom_id.clone()).or_default();
            waiters.push(sender);
            if waiters.len() == 1 {
                match state.owner.get(&custom_id).cloned() {
                    Some(name) => {
                        let batch = state.batches.get_mut(&name);
                        if let Some(batch) = batch.filter(|batch| !batch.driven) {
                            batch.driven = true;
                            tokio::spawn(Shared::drive(shared.clone(), name, None));
                        }
                    }
                    None => {
                        state.pending.push((custom_id.clone(), path, body));
                        if state.pending.len() >= MAX_BATCH_REQUESTS {
                            Shared::submit(shared, &mut state);
                        } else if !state.gathering {
                            state.gathering = true;
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                tokio::select! {
                                    () = tokio::time::sleep(shared.timing.gather) => {}
                                    () = shared.stop.stopped() => {}
                                }
                                let mut state = shared.lock();
                                state.gathering = false;
                                Shared::submit(&shared, &mut state);
                            });
                        }
                    }
                }
            }
            receiver
        };
        let outcome = tokio::select! {
            outcome = receiver => outcome.unwrap_or(Outcome::Stopped),
            () = shared.stop.stopped() => Outcome::Stopped,
        };
        let (_, shown) = shared.inner.batch_server();
        match outcome {
            Outcome::Reply(generation) => Ok(generation),
            Outcome::Stopped => Err(BackendError::Stopped),
            Outcome::Failed {
                problem,
                retryable: true,
            } => Err(BackendError::InvalidResponse {
                endpoint: shown.to_string(),
                problem,
            }),
            Outcome::Failed {
                problem,
                retryable: false,
            } => Err(BackendError::Status {
                endpoint: shown.to_string(),
                status: 400,
                body: problem,
                retry_after: None,
            }),
        }
    }

    /// The inner backend's: a batched reply is the same reply, so it shares the cache.
    fn describe(&self) -> Value {
        self.shared.inner.describe()
    }

    fn servers(&self) -> Vec<String> {
        self.shared.inner.servers()
    }
}

/// A request's custom id: its cache key at this backend, in hex (64 characters, which every
/// batch API takes), so the same unit has the same id in every run.
fn custom_id(inner: &OpenAiBackend, request: &Request) -> String {
    hex::encode(request.cache_key(&inner.describe().to_string()).as_bytes())
}

impl State {
    fn load(&mut self, journaled: Vec<Record>) {
        self.loaded = true;
        for record in journaled {
            match record {
                Record::Intent { batch, ids } => {
                    for id in &ids {
                        self.owner.insert(id.clone(), batch.clone());
                    }
                    self.batches.insert(
                        batch,
                        Batch {
                            id: None,
                            ids,
                            driven: false,
                        },
                    );
                }
                Record::Submitted { batch, id } => {
                    if let Some(entry) = self.batches.get_mut(&batch) {
                        entry.id = Some(id);
                    }
                }
            }
        }
    }

    /// Hands `outcome` to everyone waiting on `custom_id`; a reply nobody waits for is kept.
    fn deliver(&mut self, custom_id: &str, outcome: Outcome) {
        match self.waiters.remove(custom_id) {
            Some(waiters) => {
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
            None => {
                if let Outcome::Reply(generation) = outcome {
                    self.ready.insert(custom_id.to_string(), generation);
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the pending requests into a batch: journals its intent, then uploads it.
    fn submit(shared: &Arc<Shared>, state: &mut State) {
        let pending = std::mem::take(&mut state.pending);
        if pending.is_empty() {
            return;
        }
        if shared.stop.is_stopped() {
            for (custom_id, ..) in pending {
                state.deliver(&custom_id, Outcome::Stopped);
            }
            return;
        }
        state.counter += 1;
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{}-{millis}-{}", shared.tag, state.counter);
        let ids: Vec<String> = pending.iter().map(|(id, ..)| id.clone()).collect();
        let intent = Record::Intent {
            batch: name.clone(),
            ids: ids.clone(),
        };
        if let Err(error) = shared.journal.append(&intent) {
            // Not journaled, not sent: a batch nobody could find again might be paid twice.
            let problem = shared.journal.error(&error).to_string();
            tracing::error!("{problem}; stopping");
            shared.stop.stop();
            for id in &ids {
                state.deliver(
                    id,
                    Outcome::Failed {
                        problem: problem.clone(),
                        retryable: false,
                    },
                );
            }
            return;
        }
        for id in &ids {
            state.owner.insert(id.clone(), name.clone());
        }
        state.batches.insert(
            name.clone(),
            Batch {
                id: None,
                ids,
                driven: true,
            },
        );
        tokio::spawn(Shared::drive(shared.clone(), name, Some(pending)));
    }

    /// Creates (with `lines`) or finds batch `name`, polls it to its end and hands out its
    /// results.
    async fn drive(shared: Arc<Shared>, name: String, lines: Option<Vec<(String, &'static str, Vec<u8>)>>) {
        let outcome = shared.run_batch(&name, lines).await;
        let mut state = shared.lock();
        let ids = state.batches.get(&name).map(|b| b.ids.clone()).unwrap_or_default();
        let (mut results, missing) = match outcome {
            Ok(results) => (results, None),
            Err(missing) => (HashMap::new(), Some(missing)),
        };
        for id in &ids {
            let outcome = results.remove(id).unwrap_or_else(|| match &missing {
                Some(outcome) => outcome.clone(),
                None => Outcome::Failed {
                    problem: format!("batch {name} did not answer this request"),
                    retryable: true,
                },
            });
            if !matches!(outcome, Outcome::Stopped) && state.owner.get(id) == Some(&name) {
                // Asked again, it goes into a new batch (or is served from `ready`).
                state.owner.remove(id);
            }
            state.deliver(id, outcome);
        }
        if let Some(batch) = state.batches.get_mut(&name) {
            batch.driven = false;
        }
    }

    /// The batch's results by custom id, or what every unit gets when there are none.
    async fn run_batch(
        &self,
        name: &str,
        lines: Option<Vec<(String, &'static str, Vec<u8>)>>,
    ) -> Result<HashMap<String, Outcome>, Outcome> {
        let api = Api { shared: self };
        let known = self.lock().batches.get(name).and_then(|b| b.id.clone());
        let id = match (known, lines) {
            (Some(id), _) => id,
            (None, Some(lines)) => {
                let id = api.create(name, &lines).await.map_err(|e| failed(&e))?;
                let record = Record::Submitted {
                    batch: name.to_string(),
                    id: id.clone(),
                };
                if let Err(error) = self.journal.append(&record) {
                    // The metadata still names it: the next run finds it by listing.
                    tracing::error!("{}", self.journal.error(&error));
                }
                id
            }
            (None, None) => match api.find(name).await.map_err(|e| failed(&e))? {
                Some(id) => {
                    tracing::info!("batch {name}: found as {id} by its metadata");
                    let record = Record::Submitted {
                        batch: name.to_string(),
                        id: id.clone(),
                    };
                    if let Err(error) = self.journal.append(&record) {
                        tracing::error!("{}", self.journal.error(&error));
                    }
                    id
                }
                None => {
                    return Err(Outcome::Failed {
                        problem: format!("batch {name} was journaled but never created"),
                        retryable: true,
                    });
                }
            },
        };
        if let Some(batch) = self.lock().batches.get_mut(name) {
            batch.id = Some(id.clone());
        }
        let mut failures = 0;
        let mut last_status = String::new();
        let status = loop {
            if self.stop.is_stopped() {
                tracing::warn!("batch {id} is still {last_status}; run the same command again to collect it");
                return Err(Outcome::Stopped);
            }
            match api.get(&id).await {
                Ok(status) => {
                    failures = 0;
                    if status.status != last_status {
                        let counts = status.request_counts.unwrap_or_default();
                        tracing::info!(
                            "batch {id}: {} ({} of {} done, {} failed)",
                            status.status,
                            counts.completed,
                            counts.total,
                            counts.failed
                        );
                        last_status.clone_from(&status.status);
                    }
                    if matches!(status.status.as_str(), "completed" | "failed" | "expired" | "cancelled") {
                        break status;
                    }
                }
                Err(error) if error.is_retryable() && failures + 1 < MAX_API_FAILURES => {
                    failures += 1;
                    tracing::warn!(%error, "polling batch {id}");
                }
                Err(error) => return Err(failed(&error)),
            }
            tokio::select! {
                () = tokio::time::sleep(self.timing.poll) => {}
                () = self.stop.stopped() => {}
            }
        };
        let mut results = HashMap::new();
        for file in [&status.output_file_id, &status.error_file_id].into_iter().flatten() {
            let bytes = api.content(file).await.map_err(|e| failed(&e))?;
            for line in bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            {
                match serde_json::from_slice::<ResultLine>(line) {
                    Ok(line) => {
                        let outcome = self.outcome(&line);
                        results.insert(line.custom_id, outcome);
                    }
                    Err(error) => tracing::warn!("batch {id}: a result line is not JSON: {error}"),
                }
            }
        }
        if status.status != "completed" {
            tracing::warn!(
                "batch {id} ended {}; its {} unanswered requests go into a new batch",
                status.status,
                self.lock()
                    .batches
                    .get(name)
                    .map_or(0, |b| b.ids.len().saturating_sub(results.len()))
            );
        }
        Ok(results)
    }

    /// One result line as a unit's outcome: a reply read as a direct call's, or why not.
    fn outcome(&self, line: &ResultLine) -> Outcome {
        let (_, shown) = self.inner.batch_server();
        if let Some(response) = &line.response
            && (200..300).contains(&response.status_code)
        {
            return match serde_json::to_vec(&response.body)
                .map_err(|e| BackendError::Config(e.to_string()))
                .and_then(|bytes| self.inner.reply(shown, &bytes))
            {
                Ok(generation) => Outcome::Reply(generation),
                Err(error) => failed(&error),
            };
        }
        let status = line.response.as_ref().map(|r| r.status_code);
        let message = line
            .error
            .as_ref()
            .map(Value::to_string)
            .or_else(|| line.response.as_ref().map(|r| r.body.to_string()))
            .unwrap_or_default();
        let problem = crate::redact::redact(&message, self.inner.secrets())
            .chars()
            .take(300)
            .collect::<String>();
        Outcome::Failed {
            problem: match status {
                Some(status) => format!("batch line: HTTP {status}: {problem}"),
                None => format!("batch line: {problem}"),
            },
            // A malformed request fails the same way again; the rest is worth another batch.
            retryable: !matches!(status, Some(400 | 401 | 403 | 404 | 422)),
        }
    }
}

fn failed(error: &BackendError) -> Outcome {
    Outcome::Failed {
        problem: error.to_string(),
        retryable: error.is_retryable(),
    }
}

/// The Batch API's calls: files and batches under the backend's base URL, with its key.
struct Api<'a> {
    shared: &'a Shared,
}

#[derive(Debug, Deserialize)]
struct BatchStatus {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<Counts>,
    #[serde(default)]
    metadata: Option<HashMap<String, Value>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Counts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct BatchList {
    data: Vec<BatchStatus>,
}

#[derive(Debug, Deserialize)]
struct ResultLine {
    custom_id: String,
    #[serde(default)]
    response: Option<LineResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct LineResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

/// The metadata key that names a batch's intent, so a batch created but not journaled is
/// found again.
const METADATA_KEY: &str = "specbench_batch";

impl Api<'_> {
    fn url(&self, path: &str) -> reqwest::Url {
        let (base, _) = self.shared.inner.batch_server();
        base.join_path(path).expose().clone()
    }

    /// The path a batch line names (`/v1/chat/completions`): the base URL's path and the API's.
    fn line_url(&self, path: &str) -> String {
        let (base, _) = self.shared.inner.batch_server();
        format!("{}/{path}", base.expose().path().trim_end_matches('/'))
    }

    async fn call(&self, http: reqwest::RequestBuilder, limit: usize) -> Result<Vec<u8>, BackendError> {
        let inner = &self.shared.inner;
        let (_, shown) = inner.batch_server();
        let http = inner.authorize(http)?;
        send_http(http, shown, inner.timeout(), limit, inner.secrets(), header_retry_after)
            .await
            .map_err(|error| error.redacted(inner.secrets()))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BackendError> {
        let (_, shown) = self.shared.inner.batch_server();
        serde_json::from_slice(bytes).map_err(|e| BackendError::InvalidResponse {
            endpoint: shown.to_string(),
            problem: format!("not a batch API answer: {e}"),
        })
    }

    /// Uploads the input file and creates the batch; its id.
    async fn create(&self, name: &str, lines: &[(String, &'static str, Vec<u8>)]) -> Result<String, BackendError> {
        let client = self.shared.inner.http();
        let endpoint = self.line_url(lines.first().map_or("chat/completions", |(_, path, _)| path));
        let mut file = Vec::new();
        for (custom_id, path, body) in lines {
            #[derive(Serialize)]
            struct Line<'a> {
                custom_id: &'a str,
                method: &'static str,
                url: String,
                body: &'a serde_json::value::RawValue,
            }
            let body: &serde_json::value::RawValue = serde_json::from_slice(body)
                .map_err(|e| BackendError::Config(format!("cannot encode a batch line: {e}")))?;
            let line = Line {
                custom_id,
                method: "POST",
                url: self.line_url(path),
                body,
            };
            serde_json::to_writer(&mut file, &line)
                .map_err(|e| BackendError::Config(format!("cannot encode a batch line: {e}")))?;
            file.push(b'\n');
        }
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(format!("{name}.jsonl"))
            .mime_str("application/jsonl")
            .map_err(|e| BackendError::Config(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let uploaded = self
            .call(client.post(self.url("files")).multipart(form), 1 << 20)
            .await?;
        #[derive(Deserialize)]
        struct File {
            id: String,
        }
        let file: File = self.json(&uploaded)?;
        let body = serde_json::json!({
            "input_file_id": file.id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": { METADATA_KEY: name, "specbench_model": self.shared.tag },
        });
        let created = self.call(client.post(self.url("batches")).json(&body), 1 << 20).await?;
        let batch: BatchStatus = self.json(&created)?;
        tracing::info!("batch {name}: submitted {} requests as {}", lines.len(), batch.id);
        Ok(batch.id)
    }

    async fn get(&self, id: &str) -> Result<BatchStatus, BackendError> {
        let bytes = self
            .call(
                self.shared.inner.http().get(self.url(&format!("batches/{id}"))),
                1 << 20,
            )
            .await?;
        self.json(&bytes)
    }

    /// The batch whose metadata names `name`, among the 100 most recent.
    async fn find(&self, name: &str) -> Result<Option<String>, BackendError> {
        let mut url = self.url("batches");
        url.query_pairs_mut().append_pair("limit", "100");
        let bytes = self.call(self.shared.inner.http().get(url), 16 << 20).await?;
        let list: BatchList = self.json(&bytes)?;
        Ok(list.data.into_iter().find_map(|batch| {
            let named = batch
                .metadata
                .as_ref()
                .and_then(|m| m.get(METADATA_KEY))
                .and_then(Value::as_str)
                == Some(name);
            named.then_some(batch.id)
        }))
    }

    async fn content(&self, file: &str) -> Result<Vec<u8>, BackendError> {
        // A results file holds every reply of the batch: the reply cap times its lines.
        let limit = self
            .shared
            .inner
            .max_reply_bytes()
            .saturating_mul(MAX_BATCH_REQUESTS)
            .min(1 << 32);
        self.call(
            self.shared.inner.http().get(self.url(&format!("files/{file}/content"))),
            limit,
        )
        .await
    }
}

/// The batches of one model, one JSON record per line, appended and synced.
struct Journal {
    path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    /// Written before the batch is uploaded: its name and what it holds.
    Intent { batch: String, ids: Vec<String> },
    /// Written when the API returns the batch's id.
    Submitted { batch: String, id: String },
}

impl Journal {
    fn error(&self, source: &std::io::Error) -> BackendError {
        BackendError::Config(format!("batch journal {}: {source}", self.path.display()))
    }

    fn read(&self) -> std::io::Result<Vec<Record>> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut records = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            // A line cut by a kill is the last one; its batch was never uploaded.
            if let Ok(record) = serde_json::from_str::<Record>(&line?) {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn append(&self, record: &Record) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}
