//! Provider batch APIs (OpenAI's Batch API, Anthropic's Message Batches): the same requests
//! answered within 24 hours at half price.
//!
//! [`BatchBackend`] is a [`Backend`] like any other: methods and judges send one request at a
//! time and wait for its reply, so nothing above it knows. Requests that arrive close together
//! (every item's next call: all of Align3's first stages, then all of their second) are
//! gathered into one batch, so methods with several sequential calls proceed in rounds by
//! themselves. The response cache sits above it (in `Model`): a cached reply is never batched.
//!
//! Nothing is paid for twice, whatever is killed when. A request's `custom_id` is its cache key,
//! the same for the same unit in every run. Before a batch is submitted, its intent (a name,
//! and the custom ids it holds) is journaled; the batch id is journaled the moment the API
//! returns it. A later run over the same model finds its requests in the journal and waits on
//! that batch instead of submitting them again; an intent without an id is looked for among the
//! recent batches (OpenAI: by the name put in its metadata; Anthropic, whose batches carry no
//! metadata: one created after the intent with as many requests, whose results must then hold
//! the intent's ids). Units a batch did not answer (failed lines, an expired or cancelled batch,
//! an intent that was never submitted) come back as retryable errors, and `Model`'s retries put
//! them into a new batch, up to `--max-attempts`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::anthropic::AnthropicBackend;
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

/// The most requests in one batch (OpenAI takes 50,000 and a 200 MB file; Anthropic 100,000
/// and 256 MB).
pub const MAX_BATCH_REQUESTS: usize = 50_000;
/// Consecutive failed calls to the batch API (polls, downloads) before the batch's units are
/// handed back as failed (they go into a new batch; the journal keeps the old one).
const MAX_API_FAILURES: u32 = 10;

/// One unit's result, as handed to every request waiting on it.
#[derive(Clone)]
pub(crate) enum Outcome {
    Reply(Generation),
    Failed { problem: String, retryable: bool },
    Stopped,
}

impl Outcome {
    fn failed(error: &BackendError) -> Outcome {
        Outcome::Failed {
            problem: error.to_string(),
            retryable: error.is_retryable(),
        }
    }
}

/// A batch as the provider reports it.
#[derive(Debug, Clone, Default)]
pub struct BatchState {
    /// The provider's word for it (`in_progress`, `completed`, `ended`, ...).
    pub status: String,
    /// Nothing more will happen to it: its results (if any) can be read.
    pub ended: bool,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// Where its results are, for providers that name files (OpenAI's output and error files).
    files: Vec<String>,
    /// Why the provider refused it, when it says (OpenAI's validation `errors`).
    errors: Option<String>,
}

/// A provider's batch API: what [`BatchBackend`] needs of it.
#[async_trait]
pub(crate) trait BatchApi: Send + Sync {
    /// The direct backend's identity: a batched reply is the same reply, under the same key.
    fn describe(&self) -> Value;
    fn shown(&self) -> &str;
    /// `request` as one batch entry under `custom_id`, and the group it must be batched with
    /// (OpenAI's batches hold one endpoint each).
    fn entry(&self, custom_id: &str, request: &Request) -> Result<(&'static str, Vec<u8>), BackendError>;
    /// Submits `entries` as one batch named `name`; its id.
    async fn create(&self, name: &str, entries: &[Vec<u8>]) -> Result<String, CreateFailure>;
    async fn state(&self, id: &str) -> Result<BatchState, BackendError>;
    /// The batch an intent named `name`, with `count` requests, journaled at `since`, became;
    /// `taken` are the ids other intents already own.
    async fn find(&self, intent: &Intent<'_>) -> Result<Option<String>, BackendError>;
    /// An ended batch's results by custom id.
    async fn results(&self, id: &str, state: &BatchState) -> Result<Vec<(String, Outcome)>, BackendError>;
    async fn cancel(&self, id: &str) -> Result<(), BackendError>;
}

/// Why a batch was not created, and whether it may exist all the same (the answer to the
/// create call was lost: a timeout, a broken connection, a 5xx).
pub(crate) struct CreateFailure {
    error: BackendError,
    may_exist: bool,
}

impl CreateFailure {
    /// A failure of the call that creates the batch: it may have been created.
    fn of_create(error: BackendError) -> CreateFailure {
        let may_exist = error.is_retryable();
        CreateFailure { error, may_exist }
    }

    /// A failure before it: nothing was created.
    fn before(error: BackendError) -> CreateFailure {
        CreateFailure {
            error,
            may_exist: false,
        }
    }
}

/// What a lost batch is looked for by.
pub(crate) struct Intent<'a> {
    name: &'a str,
    /// When it was journaled.
    since: SystemTime,
    count: usize,
    /// Batch ids other intents own (the journal's).
    taken: &'a [String],
}

/// How far before an intent's time a batch may claim to have been created (the provider's
/// clock against this machine's).
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// How a batch's run ended for the units it holds.
enum End {
    Results(HashMap<String, Outcome>),
    /// The batch is gone or was never created: its units may go into a new one.
    Definitive(Outcome),
    /// It may still run or have answered (a call to the API failed for now): its units stay
    /// its own, and asking again polls (or looks for) it instead of submitting them anew.
    Transient(Outcome),
}

/// The most bytes of one batch's entries: both APIs cap an input near 200 MB.
const MAX_BATCH_BYTES: usize = 150 << 20;

/// A model whose requests go through its provider's batch API.
pub struct BatchBackend {
    shared: Arc<Shared>,
}

struct Shared {
    api: Box<dyn BatchApi>,
    journal: Journal,
    timing: BatchTiming,
    stop: Stop,
    /// The journal's and the metadata's name for this model's batches: a digest of what the
    /// backend describes (server, model, parameters), so that only the same model's runs meet.
    tag: String,
    /// The identity custom ids are made from: what the backend describes, less what does not
    /// change its replies (the timeout), so a rerun with another `--timeout` finds its batches.
    identity: String,
    state: Mutex<State>,
    /// One batch is created at a time, and its id journaled before the next is: at most one
    /// intent is ever without an id, which makes finding it after a kill unambiguous.
    creating: tokio::sync::Mutex<()>,
}

/// A pending request: custom id, batch group, entry.
type Pending = (String, &'static str, Vec<u8>);

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
    pending: Vec<Pending>,
    pending_bytes: usize,
    gathering: bool,
    counter: u64,
}

struct Batch {
    id: Option<String>,
    ids: Vec<String>,
    /// Someone is polling it (a batch from the journal is polled once a request needs it).
    driven: bool,
}

impl BatchBackend {
    /// Batches `inner`'s requests through OpenAI's Batch API, journaling them in `journal_dir`.
    pub fn openai(inner: OpenAiBackend, journal_dir: &Path, timing: BatchTiming, stop: Stop) -> BatchBackend {
        BatchBackend::new(Box::new(OpenAiBatches { inner }), journal_dir, timing, stop)
    }

    /// Batches `inner`'s requests through Anthropic's Message Batches.
    pub fn anthropic(inner: AnthropicBackend, journal_dir: &Path, timing: BatchTiming, stop: Stop) -> BatchBackend {
        BatchBackend::new(Box::new(AnthropicBatches { inner }), journal_dir, timing, stop)
    }

    fn new(api: Box<dyn BatchApi>, journal_dir: &Path, timing: BatchTiming, stop: Stop) -> BatchBackend {
        use sha2::{Digest, Sha256};
        let mut described = api.describe();
        if let Value::Object(fields) = &mut described {
            fields.remove("timeout_s");
        }
        let identity = described.to_string();
        let digest = Sha256::digest(identity.as_bytes());
        let tag = hex::encode(&digest[..8]);
        BatchBackend {
            shared: Arc::new(Shared {
                journal: Journal {
                    path: journal_dir.join(format!("{tag}.jsonl")),
                },
                api,
                timing,
                stop,
                tag,
                identity,
                state: Mutex::new(State::default()),
                creating: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The identity its requests' custom ids are made with (their cache key at it).
    pub fn describe_identity(&self) -> String {
        self.shared.identity.clone()
    }

    /// Where this model's batches are journaled.
    pub fn journal_path(&self) -> &Path {
        &self.shared.journal.path
    }

    /// Every batch this model's journal names: its name, id (none: never submitted, or killed
    /// before the id was written) and how many requests it holds.
    pub fn journaled(&self) -> Result<Vec<JournaledBatch>, BackendError> {
        let records = self.shared.journal.read().map_err(|e| self.shared.journal.error(&e))?;
        Ok(journaled(records))
    }

    /// What the provider says of batch `id` now.
    pub async fn state(&self, id: &str) -> Result<BatchState, BackendError> {
        self.shared.api.state(id).await
    }

    /// Asks the provider to cancel batch `id`; what is answered by then is still billed and
    /// collected by the next run.
    pub async fn cancel(&self, id: &str) -> Result<(), BackendError> {
        self.shared.api.cancel(id).await
    }
}

/// One journaled batch (see [`BatchBackend::journaled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledBatch {
    pub name: String,
    pub id: Option<String>,
    pub requests: usize,
}

fn journaled(records: Vec<Record>) -> Vec<JournaledBatch> {
    let mut batches: Vec<JournaledBatch> = Vec::new();
    for record in records {
        match record {
            Record::Intent { batch, ids } => batches.push(JournaledBatch {
                name: batch,
                id: None,
                requests: ids.len(),
            }),
            Record::Submitted { batch, id } => {
                if let Some(entry) = batches.iter_mut().find(|b| b.name == batch) {
                    entry.id = Some(id);
                }
            }
        }
    }
    batches
}

#[async_trait]
impl Backend for BatchBackend {
    async fn send(&self, request: &Request) -> Result<Generation, BackendError> {
        let shared = &self.shared;
        let custom_id = hex::encode(request.cache_key(&shared.identity).as_bytes());
        let (group, entry) = shared.api.entry(&custom_id, request)?;
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
                            Shared::spawn_drive(shared, name, None);
                        }
                    }
                    None => {
                        state.pending_bytes += entry.len();
                        state.pending.push((custom_id.clone(), group, entry));
                        if state.pending.len() >= MAX_BATCH_REQUESTS || state.pending_bytes >= MAX_BATCH_BYTES {
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
        let shown = shared.api.shown();
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
        self.shared.api.describe()
    }

    fn servers(&self) -> Vec<String> {
        vec![self.shared.api.shown().to_string()]
    }

    fn batches(&self) -> Option<&BatchBackend> {
        Some(self)
    }
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

/// When an intent was journaled, from its name (`<tag>-<unix ms>-<n>`).
fn intent_time(name: &str) -> SystemTime {
    name.split('-')
        .nth(1)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(SystemTime::UNIX_EPOCH, |ms| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
        })
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the pending requests into batches, one per group: journals each intent, then
    /// submits it.
    fn submit(shared: &Arc<Shared>, state: &mut State) {
        let pending = std::mem::take(&mut state.pending);
        state.pending_bytes = 0;
        if shared.stop.is_stopped() {
            for (custom_id, ..) in pending {
                state.deliver(&custom_id, Outcome::Stopped);
            }
            return;
        }
        let mut groups: Vec<(&'static str, Vec<Pending>)> = Vec::new();
        for entry in pending {
            match groups.iter_mut().find(|(group, _)| *group == entry.1) {
                Some((_, entries)) => entries.push(entry),
                None => groups.push((entry.1, vec![entry])),
            }
        }
        for (_, entries) in groups {
            Shared::submit_one(shared, state, entries);
        }
    }

    fn submit_one(shared: &Arc<Shared>, state: &mut State, entries: Vec<Pending>) {
        state.counter += 1;
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{}-{millis}-{}", shared.tag, state.counter);
        let ids: Vec<String> = entries.iter().map(|(id, ..)| id.clone()).collect();
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
        let entries = entries.into_iter().map(|(_, _, entry)| entry).collect();
        Shared::spawn_drive(shared, name, Some(entries));
    }

    /// Drives batch `name` in a task of its own; should that task panic, its units fail (and are
    /// asked again) instead of waiting forever.
    fn spawn_drive(shared: &Arc<Shared>, name: String, entries: Option<Vec<Vec<u8>>>) {
        let shared = shared.clone();
        tokio::spawn(async move {
            let driven = tokio::spawn(Shared::drive(shared.clone(), name.clone(), entries));
            if driven.await.is_err() {
                let mut state = shared.lock();
                let ids = state.batches.get(&name).map(|b| b.ids.clone()).unwrap_or_default();
                for id in &ids {
                    let problem = format!("batch {name}: its task failed");
                    state.deliver(
                        id,
                        Outcome::Failed {
                            problem,
                            retryable: true,
                        },
                    );
                }
                if let Some(batch) = state.batches.get_mut(&name) {
                    batch.driven = false;
                }
            }
        });
    }

    /// Creates (with `entries`) or finds batch `name`, polls it to its end and hands out its
    /// results.
    async fn drive(shared: Arc<Shared>, name: String, entries: Option<Vec<Vec<u8>>>) {
        let end = shared.run_batch(&name, entries).await;
        let mut state = shared.lock();
        let ids = state.batches.get(&name).map(|b| b.ids.clone()).unwrap_or_default();
        let (mut results, missing, release) = match end {
            End::Results(results) => (results, None, true),
            End::Definitive(outcome) => (HashMap::new(), Some(outcome), true),
            End::Transient(outcome) => (HashMap::new(), Some(outcome), false),
        };
        for id in &ids {
            let outcome = results.remove(id).unwrap_or_else(|| match &missing {
                Some(outcome) => outcome.clone(),
                None => Outcome::Failed {
                    problem: format!("batch {name} did not answer this request"),
                    retryable: true,
                },
            });
            let stopped = matches!(outcome, Outcome::Stopped);
            if release && !stopped && state.owner.get(id) == Some(&name) {
                // Asked again, it goes into a new batch (or is served from `ready`).
                state.owner.remove(id);
            }
            state.deliver(id, outcome);
        }
        if let Some(batch) = state.batches.get_mut(&name) {
            batch.driven = false;
        }
    }

    fn journal_id(&self, name: &str, id: &str) {
        let record = Record::Submitted {
            batch: name.to_string(),
            id: id.to_string(),
        };
        if let Err(error) = self.journal.append(&record) {
            // The next run still finds it among the recent batches.
            tracing::error!("{}", self.journal.error(&error));
        }
    }

    /// The batch's results by custom id, or what every unit gets when there are none.
    async fn run_batch(&self, name: &str, entries: Option<Vec<Vec<u8>>>) -> End {
        let (known, count) = {
            let state = self.lock();
            let batch = state.batches.get(name);
            (batch.and_then(|b| b.id.clone()), batch.map_or(0, |b| b.ids.len()))
        };
        let id = match known {
            Some(id) => id,
            None => {
                // Created (or looked for) one at a time, the id journaled before the next.
                let _creating = self.creating.lock().await;
                let taken: Vec<String> = self.lock().batches.values().filter_map(|b| b.id.clone()).collect();
                let intent = Intent {
                    name,
                    since: intent_time(name),
                    count,
                    taken: &taken,
                };
                let found = match entries {
                    Some(entries) => match self.api.create(name, &entries).await {
                        Ok(id) => {
                            tracing::info!("batch {name}: submitted {} requests as {id}", entries.len());
                            Some(id)
                        }
                        // The batch may exist: asked again, its units look for it.
                        Err(CreateFailure { error, may_exist: true }) => {
                            return End::Transient(Outcome::failed(&error));
                        }
                        Err(CreateFailure { error, .. }) => return End::Definitive(Outcome::failed(&error)),
                    },
                    None => match self.api.find(&intent).await {
                        Ok(found) => {
                            if let Some(id) = &found {
                                tracing::info!("batch {name}: found as {id}");
                            }
                            found
                        }
                        Err(error) => return End::Transient(Outcome::failed(&error)),
                    },
                };
                let Some(id) = found else {
                    return End::Definitive(Outcome::Failed {
                        problem: format!("batch {name} was journaled but never created"),
                        retryable: true,
                    });
                };
                self.journal_id(name, &id);
                id
            }
        };
        if let Some(batch) = self.lock().batches.get_mut(name) {
            batch.id = Some(id.clone());
        }
        let mut failures = 0;
        let mut last_status = String::new();
        let state = loop {
            if self.stop.is_stopped() {
                tracing::warn!("batch {id} is still {last_status}; run the same command again to collect it");
                return End::Transient(Outcome::Stopped);
            }
            match self.api.state(&id).await {
                Ok(state) => {
                    failures = 0;
                    if state.status != last_status {
                        tracing::info!(
                            "batch {id}: {} ({} of {} done, {} failed)",
                            state.status,
                            state.done,
                            state.total,
                            state.failed
                        );
                        last_status.clone_from(&state.status);
                    }
                    if state.ended {
                        break state;
                    }
                }
                Err(error) if error.is_retryable() && failures + 1 < MAX_API_FAILURES => {
                    failures += 1;
                    tracing::warn!(%error, "polling batch {id}");
                }
                // Still there, most likely: the next attempt polls it again.
                Err(error) if error.is_retryable() => return End::Transient(Outcome::failed(&error)),
                // Gone (404) or not ours to read: its units go into a new batch.
                Err(error) => return End::Definitive(Outcome::failed(&error)),
            }
            tokio::select! {
                () = tokio::time::sleep(self.timing.poll) => {}
                () = self.stop.stopped() => {}
            }
        };
        let results: HashMap<String, Outcome> = match self.api.results(&id, &state).await {
            Ok(results) => results.into_iter().collect(),
            Err(error) if error.is_retryable() => return End::Transient(Outcome::failed(&error)),
            Err(error) => return End::Definitive(Outcome::failed(&error)),
        };
        let answered = results.values().filter(|o| matches!(o, Outcome::Reply(_))).count();
        if answered < count {
            tracing::warn!(
                "batch {id} ended {} with {answered} of {count} requests answered; the rest go into a new batch",
                state.status
            );
            if let Some(errors) = &state.errors {
                tracing::warn!("batch {id}: {errors}");
            }
        }
        End::Results(results)
    }
}

/// A call to a batch API: the answer's body, errors as a direct call's.
async fn call(
    http: reqwest::RequestBuilder,
    shown: &str,
    timeout: Duration,
    limit: usize,
    secrets: &[String],
    retry_after: fn(&reqwest::header::HeaderMap) -> Option<Duration>,
) -> Result<Vec<u8>, BackendError> {
    send_http(http, shown, timeout, limit, secrets, retry_after)
        .await
        .map_err(|error| error.redacted(secrets))
}

/// An answer read as `T`; the error's text (which may quote the answer) has secrets masked.
fn json<T: serde::de::DeserializeOwned>(shown: &str, secrets: &[String], bytes: &[u8]) -> Result<T, BackendError> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::InvalidResponse {
        endpoint: shown.to_string(),
        problem: crate::redact::redact(&format!("not a batch API answer: {e}"), secrets),
    })
}

/// How many pages of recent batches are read when looking for a lost one.
const MAX_LIST_PAGES: usize = 50;

/// Non-empty lines of a JSONL body, each parsed; a line that is not one is logged and skipped
/// (its unit counts as unanswered).
fn jsonl<T: serde::de::DeserializeOwned>(id: &str, secrets: &[String], bytes: &[u8]) -> Vec<T> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| {
            serde_json::from_slice(line)
                .map_err(|error| {
                    let error = crate::redact::redact(&error.to_string(), secrets);
                    tracing::warn!("batch {id}: a result line does not parse: {error}");
                })
                .ok()
        })
        .collect()
}

/// A reply body through the direct backend's parser, or why not.
fn reply_outcome(parsed: Result<Generation, BackendError>) -> Outcome {
    match parsed {
        Ok(generation) => Outcome::Reply(generation),
        Err(error) => Outcome::failed(&error),
    }
}

/// A failed unit: its status (none when the API gave none) and message, secrets masked.
fn line_failure(status: Option<u16>, message: &str, secrets: &[String], retryable: bool) -> Outcome {
    let problem: String = crate::redact::redact(message, secrets).chars().take(300).collect();
    Outcome::Failed {
        problem: match status {
            Some(status) => format!("batch request: HTTP {status}: {problem}"),
            None => format!("batch request: {problem}"),
        },
        retryable,
    }
}

/// OpenAI's Batch API: a JSONL file uploaded to `files`, a batch created from it, output and
/// error files.
struct OpenAiBatches {
    inner: OpenAiBackend,
}

/// The metadata key that names a batch's intent, so a batch created but not journaled is
/// found again.
const METADATA_KEY: &str = "specbench_batch";

#[derive(Debug, Deserialize)]
struct OpenAiBatch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<OpenAiCounts>,
    #[serde(default)]
    metadata: Option<HashMap<String, Value>>,
    /// Unix seconds.
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    errors: Option<Value>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct OpenAiCounts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct OpenAiLine {
    custom_id: String,
    #[serde(default)]
    response: Option<OpenAiLineResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OpenAiLineResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

impl OpenAiBatches {
    fn url(&self, path: &str) -> reqwest::Url {
        let (base, _) = self.inner.batch_server();
        base.join_path(path).expose().clone()
    }

    /// The path a batch line names (`/v1/chat/completions`): the base URL's path and the API's.
    fn line_url(&self, path: &str) -> String {
        let (base, _) = self.inner.batch_server();
        format!("{}/{path}", base.expose().path().trim_end_matches('/'))
    }

    async fn call(&self, http: reqwest::RequestBuilder, limit: usize) -> Result<Vec<u8>, BackendError> {
        let inner = &self.inner;
        let http = inner.authorize(http)?;
        call(
            http,
            self.shown(),
            inner.timeout(),
            limit,
            inner.secrets(),
            header_retry_after,
        )
        .await
    }

    fn line_outcome(&self, line: &OpenAiLine) -> Outcome {
        if let Some(response) = &line.response
            && (200..300).contains(&response.status_code)
        {
            return reply_outcome(
                serde_json::to_vec(&response.body)
                    .map_err(|e| BackendError::Config(e.to_string()))
                    .and_then(|bytes| self.inner.reply(self.shown(), &bytes)),
            );
        }
        let status = line.response.as_ref().map(|r| r.status_code);
        let message = line
            .error
            .as_ref()
            .map(Value::to_string)
            .or_else(|| line.response.as_ref().map(|r| r.body.to_string()))
            .unwrap_or_default();
        // A malformed request fails the same way again; the rest is worth another batch.
        let retryable = !matches!(status, Some(400 | 401 | 403 | 404 | 422));
        line_failure(status, &message, self.inner.secrets(), retryable)
    }
}

#[async_trait]
impl BatchApi for OpenAiBatches {
    fn describe(&self) -> Value {
        self.inner.describe()
    }

    fn shown(&self) -> &str {
        self.inner.batch_server().1
    }

    fn entry(&self, custom_id: &str, request: &Request) -> Result<(&'static str, Vec<u8>), BackendError> {
        let (body, path) = self.inner.request_body(request)?;
        #[derive(Serialize)]
        struct Line<'a> {
            custom_id: &'a str,
            method: &'static str,
            url: String,
            body: &'a RawValue,
        }
        let encode = |e: serde_json::Error| BackendError::Config(format!("cannot encode a batch line: {e}"));
        let body: &RawValue = serde_json::from_slice(&body).map_err(encode)?;
        let line = Line {
            custom_id,
            method: "POST",
            url: self.line_url(path),
            body,
        };
        Ok((path, serde_json::to_vec(&line).map_err(encode)?))
    }

    async fn create(&self, name: &str, entries: &[Vec<u8>]) -> Result<String, CreateFailure> {
        let client = self.inner.http();
        let mut file = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        for entry in entries {
            file.extend_from_slice(entry);
            file.push(b'\n');
        }
        // Every entry of a batch shares its endpoint (`submit` groups them so).
        let endpoint = entries
            .first()
            .and_then(|entry| serde_json::from_slice::<Value>(entry).ok())
            .and_then(|line| line["url"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.line_url("chat/completions"));
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(format!("{name}.jsonl"))
            .mime_str("application/jsonl")
            .map_err(|e| CreateFailure::before(BackendError::Config(e.to_string())))?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let uploaded = self
            .call(client.post(self.url("files")).multipart(form), 1 << 20)
            .await
            .map_err(CreateFailure::before)?;
        #[derive(Deserialize)]
        struct File {
            id: String,
        }
        let file: File = json(self.shown(), self.inner.secrets(), &uploaded).map_err(CreateFailure::before)?;
        let body = serde_json::json!({
            "input_file_id": file.id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": { METADATA_KEY: name },
        });
        let created = self
            .call(client.post(self.url("batches")).json(&body), 1 << 20)
            .await
            .map_err(CreateFailure::of_create)?;
        let batch: OpenAiBatch = json(self.shown(), self.inner.secrets(), &created).map_err(|error| {
            // It answered 2xx: the batch exists, under an id this answer does not carry readably.
            CreateFailure { error, may_exist: true }
        })?;
        Ok(batch.id)
    }

    async fn state(&self, id: &str) -> Result<BatchState, BackendError> {
        let bytes = self
            .call(self.inner.http().get(self.url(&format!("batches/{id}"))), 1 << 20)
            .await?;
        let batch: OpenAiBatch = json(self.shown(), self.inner.secrets(), &bytes)?;
        let counts = batch.request_counts.unwrap_or_default();
        Ok(BatchState {
            ended: matches!(batch.status.as_str(), "completed" | "failed" | "expired" | "cancelled"),
            status: batch.status,
            total: counts.total,
            done: counts.completed,
            failed: counts.failed,
            files: [batch.output_file_id, batch.error_file_id]
                .into_iter()
                .flatten()
                .collect(),
            errors: batch.errors.filter(|e| !e.is_null()).map(|e| e.to_string()),
        })
    }

    /// The batch whose metadata names the intent, among those created since (pages of 100,
    /// newest first, read until one is older than the intent).
    async fn find(&self, intent: &Intent<'_>) -> Result<Option<String>, BackendError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<OpenAiBatch>,
            #[serde(default)]
            has_more: bool,
        }
        let since = intent
            .since
            .checked_sub(CLOCK_SLACK)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut url = self.url("batches");
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(after) = &after {
                url.query_pairs_mut().append_pair("after", after);
            }
            let bytes = self.call(self.inner.http().get(url), 16 << 20).await?;
            let list: List = json(self.shown(), self.inner.secrets(), &bytes)?;
            let older = list.data.iter().any(|b| b.created_at.is_some_and(|at| at < since));
            after = list.data.last().map(|b| b.id.clone());
            for batch in list.data {
                let named = batch
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(METADATA_KEY))
                    .and_then(Value::as_str)
                    == Some(intent.name);
                if named {
                    return Ok(Some(batch.id));
                }
            }
            if !list.has_more || older || after.is_none() {
                break;
            }
        }
        Ok(None)
    }

    async fn results(&self, id: &str, state: &BatchState) -> Result<Vec<(String, Outcome)>, BackendError> {
        // A results file holds every reply of the batch: the reply cap times its lines.
        let limit = self
            .inner
            .max_reply_bytes()
            .saturating_mul(MAX_BATCH_REQUESTS)
            .min(1 << 32);
        let mut results = Vec::new();
        for file in &state.files {
            let url = self.url(&format!("files/{file}/content"));
            let bytes = self.call(self.inner.http().get(url), limit).await?;
            for line in jsonl::<OpenAiLine>(id, self.inner.secrets(), &bytes) {
                let outcome = self.line_outcome(&line);
                results.push((line.custom_id, outcome));
            }
        }
        Ok(results)
    }

    async fn cancel(&self, id: &str) -> Result<(), BackendError> {
        let url = self.url(&format!("batches/{id}/cancel"));
        self.call(self.inner.http().post(url), 1 << 20).await.map(drop)
    }
}

/// Anthropic's Message Batches: the requests in one JSON body, results as JSONL once the batch
/// has ended.
struct AnthropicBatches {
    inner: AnthropicBackend,
}

#[derive(Debug, Deserialize)]
struct AnthropicBatch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: AnthropicCounts,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
struct AnthropicCounts {
    processing: u64,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
}

impl AnthropicCounts {
    fn total(&self) -> u64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

#[derive(Debug, Deserialize)]
struct AnthropicLine {
    custom_id: String,
    result: AnthropicResult,
}

#[derive(Debug, Deserialize)]
struct AnthropicResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Value>,
}

impl AnthropicBatches {
    fn url(&self, path: &str) -> reqwest::Url {
        self.inner.batches_url().join_path(path).expose().clone()
    }

    async fn call(&self, http: reqwest::RequestBuilder, limit: usize) -> Result<Vec<u8>, BackendError> {
        let inner = &self.inner;
        let http = inner.authorize(http)?;
        call(
            http,
            inner.shown(),
            inner.timeout(),
            limit,
            inner.secrets(),
            AnthropicBackend::wait_asked,
        )
        .await
    }

    fn line_outcome(&self, result: &AnthropicResult) -> Outcome {
        match result.kind.as_str() {
            "succeeded" => match &result.message {
                Some(message) => reply_outcome(self.inner.reply(message.get().as_bytes())),
                None => line_failure(None, "succeeded without a message", self.inner.secrets(), true),
            },
            "errored" => {
                let error = result.error.clone().unwrap_or(Value::Null);
                // `{type: error, error: {type: invalid_request_error, message}}`.
                let kind = error["error"]["type"].as_str().unwrap_or_default().to_string();
                let retryable = kind != "invalid_request_error";
                line_failure(None, &error.to_string(), self.inner.secrets(), retryable)
            }
            other => line_failure(None, other, self.inner.secrets(), true),
        }
    }
}

#[async_trait]
impl BatchApi for AnthropicBatches {
    fn describe(&self) -> Value {
        self.inner.describe()
    }

    fn shown(&self) -> &str {
        self.inner.shown()
    }

    fn entry(&self, custom_id: &str, request: &Request) -> Result<(&'static str, Vec<u8>), BackendError> {
        let body = self.inner.request_body(request)?;
        #[derive(Serialize)]
        struct Entry<'a> {
            custom_id: &'a str,
            params: &'a RawValue,
        }
        let encode = |e: serde_json::Error| BackendError::Config(format!("cannot encode a batch request: {e}"));
        let params: &RawValue = serde_json::from_slice(&body).map_err(encode)?;
        Ok((
            "messages",
            serde_json::to_vec(&Entry { custom_id, params }).map_err(encode)?,
        ))
    }

    async fn create(&self, _name: &str, entries: &[Vec<u8>]) -> Result<String, CreateFailure> {
        let mut body = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"requests\":[");
        for (at, entry) in entries.iter().enumerate() {
            if at > 0 {
                body.push(b',');
            }
            body.extend_from_slice(entry);
        }
        body.extend_from_slice(b"]}");
        let http = self
            .inner
            .http()
            .post(self.inner.batches_url().expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let created = self.call(http, 1 << 20).await.map_err(CreateFailure::of_create)?;
        let batch: AnthropicBatch = json(self.shown(), self.inner.secrets(), &created)
            .map_err(|error| CreateFailure { error, may_exist: true })?;
        Ok(batch.id)
    }

    async fn state(&self, id: &str) -> Result<BatchState, BackendError> {
        let bytes = self.call(self.inner.http().get(self.url(id)), 1 << 20).await?;
        let batch: AnthropicBatch = json(self.shown(), self.inner.secrets(), &bytes)?;
        let counts = batch.request_counts;
        Ok(BatchState {
            ended: batch.processing_status == "ended",
            status: batch.processing_status,
            total: counts.total(),
            done: counts.succeeded + counts.errored + counts.canceled + counts.expired,
            failed: counts.errored + counts.canceled + counts.expired,
            files: Vec::new(),
            errors: None,
        })
    }

    /// Message batches carry no metadata: the earliest one created since the intent (less
    /// the clock slack) with as many requests that no other intent owns. Batches are created
    /// one at a time, each id journaled before the next, so at most one intent lacks its id.
    /// Should the match be another run's all the same, its results lack this intent's ids, and
    /// those go into a new batch.
    async fn find(&self, intent: &Intent<'_>) -> Result<Option<String>, BackendError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<AnthropicBatch>,
            #[serde(default)]
            has_more: bool,
            #[serde(default)]
            last_id: Option<String>,
        }
        let since = intent.since.checked_sub(CLOCK_SLACK).unwrap_or(SystemTime::UNIX_EPOCH);
        let since = jiff::Timestamp::try_from(since).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut earliest: Option<String> = None;
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut url = self.inner.batches_url().expose().clone();
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(after) = &after {
                url.query_pairs_mut().append_pair("after_id", after);
            }
            let bytes = self.call(self.inner.http().get(url), 16 << 20).await?;
            let list: List = json(self.shown(), self.inner.secrets(), &bytes)?;
            let mut older = false;
            // Newest first: the last match is the earliest.
            for batch in &list.data {
                let created = batch
                    .created_at
                    .as_deref()
                    .and_then(|at| at.parse::<jiff::Timestamp>().ok());
                let Some(created) = created else { continue };
                if created < since {
                    older = true;
                    continue;
                }
                if batch.request_counts.total() == intent.count as u64 && !intent.taken.contains(&batch.id) {
                    earliest = Some(batch.id.clone());
                }
            }
            after = list.last_id.or_else(|| list.data.last().map(|b| b.id.clone()));
            if !list.has_more || older || after.is_none() {
                break;
            }
        }
        Ok(earliest)
    }

    async fn results(&self, id: &str, _state: &BatchState) -> Result<Vec<(String, Outcome)>, BackendError> {
        // Read from the API's own address, not from a URL in the answer: the key goes nowhere else.
        let limit = self
            .inner
            .max_reply_bytes()
            .saturating_mul(MAX_BATCH_REQUESTS)
            .min(1 << 32);
        let bytes = self
            .call(self.inner.http().get(self.url(&format!("{id}/results"))), limit)
            .await?;
        Ok(jsonl::<AnthropicLine>(id, self.inner.secrets(), &bytes)
            .into_iter()
            .map(|line| {
                let outcome = self.line_outcome(&line.result);
                (line.custom_id, outcome)
            })
            .collect())
    }

    async fn cancel(&self, id: &str) -> Result<(), BackendError> {
        let url = self.url(&format!("{id}/cancel"));
        self.call(self.inner.http().post(url), 1 << 20).await.map(drop)
    }
}

/// The batches of one model, one JSON record per line, appended and synced.
struct Journal {
    path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    /// Written before the batch is submitted: its name and what it holds.
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
            // A line cut by a kill is the last one; its batch was never submitted.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intents_time_is_read_back_from_its_name() {
        let at = intent_time("0123456789abcdef-1700000000123-4");
        assert_eq!(at, SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(intent_time("garbled"), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn the_journal_lists_each_batch_with_its_id_once_written() {
        let records = vec![
            Record::Intent {
                batch: "a".into(),
                ids: vec!["1".into(), "2".into()],
            },
            Record::Intent {
                batch: "b".into(),
                ids: vec!["3".into()],
            },
            Record::Submitted {
                batch: "a".into(),
                id: "batch_a".into(),
            },
        ];
        assert_eq!(
            journaled(records),
            vec![
                JournaledBatch {
                    name: "a".into(),
                    id: Some("batch_a".into()),
                    requests: 2
                },
                JournaledBatch {
                    name: "b".into(),
                    id: None,
                    requests: 1
                },
            ]
        );
    }
}
