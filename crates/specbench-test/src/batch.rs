//! A loopback server implementing the batch APIs as their references document them. OpenAI's:
//! `POST /v1/files` (multipart, `purpose=batch`), `POST /v1/batches`, `GET /v1/batches/{id}`,
//! `GET /v1/batches?limit=`, `POST /v1/batches/{id}/cancel` and `GET /v1/files/{id}/content`,
//! with output and error files of one JSON line per request. Anthropic's Message Batches: `POST
//! /v1/messages/batches` (`{requests: [{custom_id, params}]}`), `GET` it, its list, its
//! `results` (JSONL of `{custom_id, result: {type, message | error}}`) and `cancel`, each with
//! `x-api-key` and `anthropic-version`. Each request is answered by a handler, as
//! [`crate::StubServer`] answers a direct call, and faults can be injected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::Background;

/// How the server ends the batches it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFault {
    /// Every line answered; `completed` at the second poll.
    None,
    /// Batches stay `in_progress` until [`BatchServer::release`].
    Hold,
    /// The first batch ends `expired` with no output.
    ExpireFirst,
    /// In the first batch, every line whose index is odd is in the error file (HTTP 500).
    FailOddLinesOfFirst,
    /// The first batch is created, but the answer to the call that creates it is a 502, as
    /// when the answer is lost on its way back.
    LoseFirstCreateAnswer,
    /// The first three polls of every batch answer 503.
    FailThreePolls,
}

/// Which provider's API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

struct Batch {
    status: &'static str,
    /// Anthropic: each request's result line, once ended.
    results: Vec<Value>,
    created_at: String,
    input: Vec<Value>,
    metadata: Value,
    polls: u32,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

struct Inner {
    files: HashMap<String, Vec<u8>>,
    batches: Vec<(String, Batch)>,
    fault: BatchFault,
    held: bool,
    handler: Box<dyn Fn(&Value) -> String + Send + Sync>,
    /// Every call, as `METHOD path`.
    calls: Vec<String>,
    /// Every request's headers, in arrival order.
    headers: Vec<axum::http::HeaderMap>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake Batch API; stops when dropped.
pub struct BatchServer {
    pub addr: std::net::SocketAddr,
    shared: Shared,
    _background: Background,
}

impl BatchServer {
    /// Answers each request line's body with `handler`'s text as the assistant content.
    pub fn start(
        fault: BatchFault,
        handler: impl Fn(&Value) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<BatchServer> {
        BatchServer::start_as(Flavor::OpenAi, fault, handler)
    }

    /// As [`BatchServer::start`], speaking `flavor`'s API.
    pub fn start_as(
        flavor: Flavor,
        fault: BatchFault,
        handler: impl Fn(&Value) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<BatchServer> {
        let shared = Arc::new(Mutex::new(Inner {
            files: HashMap::new(),
            batches: Vec::new(),
            fault,
            held: fault == BatchFault::Hold,
            handler: Box::new(handler),
            calls: Vec::new(),
            headers: Vec::new(),
        }));
        let app = match flavor {
            Flavor::OpenAi => Router::new()
                .route("/v1/files", post(upload))
                .route("/v1/files/{id}/content", get(content))
                .route("/v1/batches", post(create).get(list))
                .route("/v1/batches/{id}", get(status))
                .route("/v1/batches/{id}/cancel", post(cancel)),
            Flavor::Anthropic => Router::new()
                .route("/v1/messages/batches", post(anthropic_create).get(anthropic_list))
                .route("/v1/messages/batches/{id}", get(anthropic_status))
                .route("/v1/messages/batches/{id}/results", get(anthropic_results))
                .route("/v1/messages/batches/{id}/cancel", post(anthropic_cancel)),
        }
        .layer(axum::middleware::from_fn_with_state(shared.clone(), keep_headers))
        .with_state(shared.clone());
        let background = Background::start(app, 1)?;
        Ok(BatchServer {
            addr: background.addr,
            shared,
            _background: background,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Adds `count` finished batches of someone else's, newer than those so far (a busy
    /// account's list, in which a lost batch is further down).
    pub fn add_others(&self, count: usize) {
        let mut inner = self.lock();
        for _ in 0..count {
            let id = format!("batch_other_{}", inner.batches.len());
            let batch = Batch {
                status: "completed",
                results: Vec::new(),
                created_at: now_rfc3339(),
                input: Vec::new(),
                metadata: json!({"specbench_batch": "someone-else"}),
                polls: 0,
                output_file_id: None,
                error_file_id: None,
            };
            inner.batches.push((id, batch));
        }
    }

    /// Held batches may complete from now on.
    pub fn release(&self) {
        self.lock().held = false;
    }

    /// The batches created so far through the API, in order: each one's request lines.
    pub fn batches(&self) -> Vec<Vec<Value>> {
        self.lock()
            .batches
            .iter()
            .filter(|(id, _)| !id.starts_with("batch_other_"))
            .map(|(_, b)| b.input.clone())
            .collect()
    }

    /// Every call so far, as `METHOD path`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The headers of every call so far.
    pub fn headers(&self) -> Vec<axum::http::HeaderMap> {
        self.lock().headers.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn keep_headers(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    lock(&shared).headers.push(request.headers().clone());
    next.run(request).await
}

/// Now as RFC 3339, as the APIs write times.
fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// The multipart body's JSON lines (the `file` part): every line that parses as an object with
/// a `custom_id`. The `purpose` part must say `batch`.
async fn upload(State(shared): State<Shared>, body: axum::body::Bytes) -> (StatusCode, axum::Json<Value>) {
    let text = String::from_utf8_lossy(&body);
    let mut inner = lock(&shared);
    inner.calls.push("POST /v1/files".into());
    if !text.contains("name=\"purpose\"\r\n\r\nbatch\r\n") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "purpose must be batch"}})),
        );
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).is_ok_and(|v| v.get("custom_id").is_some()))
        .collect();
    let id = format!("file-in-{}", inner.files.len());
    inner.files.insert(id.clone(), lines.join("\n").into_bytes());
    (
        StatusCode::OK,
        axum::Json(json!({"id": id, "object": "file", "purpose": "batch"})),
    )
}

async fn content(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, Vec<u8>) {
    let mut inner = lock(&shared);
    inner.calls.push(format!("GET /v1/files/{id}/content"));
    match inner.files.get(&id) {
        Some(bytes) => (StatusCode::OK, bytes.clone()),
        None => (
            StatusCode::NOT_FOUND,
            b"{\"error\":{\"message\":\"no such file\"}}".to_vec(),
        ),
    }
}

async fn create(State(shared): State<Shared>, axum::Json(body): axum::Json<Value>) -> (StatusCode, axum::Json<Value>) {
    let mut inner = lock(&shared);
    inner.calls.push("POST /v1/batches".into());
    let file = body["input_file_id"].as_str().unwrap_or_default().to_string();
    let Some(bytes) = inner.files.get(&file).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "no such file"}})),
        );
    };
    let input: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let id = format!("batch_{}", inner.batches.len());
    let batch = Batch {
        status: "validating",
        results: Vec::new(),
        created_at: now_rfc3339(),
        input,
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        polls: 0,
        output_file_id: None,
        error_file_id: None,
    };
    let shown = describe(&id, &batch);
    let first = inner.batches.is_empty();
    inner.batches.push((id, batch));
    if first && inner.fault == BatchFault::LoseFirstCreateAnswer {
        return (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": {"message": "bad gateway"}})),
        );
    }
    (StatusCode::OK, axum::Json(shown))
}

fn describe(id: &str, batch: &Batch) -> Value {
    json!({
        "id": id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "metadata": batch.metadata,
        "created_at": jiff::Timestamp::now().as_second(),
        "request_counts": {"total": batch.input.len(), "completed": 0, "failed": 0},
    })
}

/// One page of `items` (newest first) after the one whose id is `after`, as both APIs page.
fn page(items: Vec<(String, Value)>, query: &HashMap<String, String>, after_key: &str) -> (Vec<Value>, bool) {
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    let start = match query.get(after_key) {
        Some(after) => items
            .iter()
            .position(|(id, _)| id == after)
            .map_or(items.len(), |at| at + 1),
        None => 0,
    };
    let rest = items.len().saturating_sub(start);
    let data = items.into_iter().skip(start).take(limit).map(|(_, v)| v).collect();
    (data, rest > limit)
}

async fn list(State(shared): State<Shared>, Query(query): Query<HashMap<String, String>>) -> axum::Json<Value> {
    let mut inner = lock(&shared);
    inner.calls.push("GET /v1/batches".into());
    // Most recent first, as the API lists them.
    let all: Vec<(String, Value)> = inner
        .batches
        .iter()
        .rev()
        .map(|(id, b)| (id.clone(), describe(id, b)))
        .collect();
    let (data, has_more) = page(all, &query, "after");
    axum::Json(json!({"object": "list", "data": data, "has_more": has_more}))
}

async fn cancel(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, axum::Json<Value>) {
    let mut inner = lock(&shared);
    inner.calls.push(format!("POST /v1/batches/{id}/cancel"));
    match inner.batches.iter_mut().find(|(batch_id, _)| *batch_id == id) {
        Some((id, batch)) => {
            batch.status = "cancelled";
            (StatusCode::OK, axum::Json(describe(id, batch)))
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": "no such batch"}})),
        ),
    }
}

async fn status(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, axum::Json<Value>) {
    let mut guard = lock(&shared);
    let inner = &mut *guard;
    inner.calls.push(format!("GET /v1/batches/{id}"));
    let Some(index) = inner.batches.iter().position(|(batch_id, _)| *batch_id == id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": "no such batch"}})),
        );
    };
    let first = index == 0;
    let (id, batch) = &mut inner.batches[index];
    batch.polls += 1;
    if inner.fault == BatchFault::FailThreePolls && batch.polls <= 3 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"message": "unavailable"}})),
        );
    }
    let polls = batch.polls
        - if inner.fault == BatchFault::FailThreePolls {
            3
        } else {
            0
        };
    if matches!(batch.status, "validating" | "in_progress") {
        batch.status = "in_progress";
        if polls >= 2 && !inner.held {
            if first && inner.fault == BatchFault::ExpireFirst {
                batch.status = "expired";
            } else {
                let mut output = Vec::new();
                let mut errors = Vec::new();
                for (line_index, line) in batch.input.iter().enumerate() {
                    let custom_id = line["custom_id"].clone();
                    if first && inner.fault == BatchFault::FailOddLinesOfFirst && line_index % 2 == 1 {
                        errors.push(json!({
                            "id": format!("batch_req_{line_index}"),
                            "custom_id": custom_id,
                            "response": {"status_code": 500, "request_id": "req", "body": {"error": {"message": "server error"}}},
                            "error": null,
                        }));
                        continue;
                    }
                    let text = (inner.handler)(&line["body"]);
                    output.push(json!({
                        "id": format!("batch_req_{line_index}"),
                        "custom_id": custom_id,
                        "response": {"status_code": 200, "request_id": "req", "body": {
                            "id": "chatcmpl", "object": "chat.completion",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                        }},
                        "error": null,
                    }));
                }
                let write = |lines: Vec<Value>| {
                    lines
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes()
                };
                let out = format!("file-out-{id}");
                inner.files.insert(out.clone(), write(output));
                batch.output_file_id = Some(out);
                if !errors.is_empty() {
                    let err = format!("file-err-{id}");
                    inner.files.insert(err.clone(), write(errors));
                    batch.error_file_id = Some(err);
                }
                batch.status = "completed";
            }
        }
    }
    (StatusCode::OK, axum::Json(describe(id, batch)))
}

/// Anthropic: `{requests: [{custom_id, params}]}` in one body.
async fn anthropic_create(
    State(shared): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let mut inner = lock(&shared);
    inner.calls.push("POST /v1/messages/batches".into());
    let Some(requests) = body["requests"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "requests: required"}}),
            ),
        );
    };
    if requests
        .iter()
        .any(|r| !r["custom_id"].is_string() || !r["params"].is_object())
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "each request needs custom_id and params"}}),
            ),
        );
    }
    let id = format!("msgbatch_{}", inner.batches.len());
    let batch = Batch {
        status: "in_progress",
        results: Vec::new(),
        created_at: now_rfc3339(),
        input: requests.clone(),
        metadata: Value::Null,
        polls: 0,
        output_file_id: None,
        error_file_id: None,
    };
    let shown = anthropic_describe(&id, &batch);
    inner.batches.push((id, batch));
    (StatusCode::OK, axum::Json(shown))
}

fn anthropic_describe(id: &str, batch: &Batch) -> Value {
    let count = |kind: &str| batch.results.iter().filter(|r| r["result"]["type"] == kind).count();
    let ended = batch.status == "ended";
    json!({
        "id": id,
        "type": "message_batch",
        "processing_status": batch.status,
        "request_counts": {
            "processing": if ended { 0 } else { batch.input.len() },
            "succeeded": count("succeeded"),
            "errored": count("errored"),
            "canceled": count("canceled"),
            "expired": count("expired"),
        },
        "created_at": batch.created_at,
        "ended_at": if ended { Value::String(now_rfc3339()) } else { Value::Null },
        "results_url": if ended { Value::String(format!("/v1/messages/batches/{id}/results")) } else { Value::Null },
    })
}

async fn anthropic_list(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let mut inner = lock(&shared);
    inner.calls.push("GET /v1/messages/batches".into());
    let all: Vec<(String, Value)> = inner
        .batches
        .iter()
        .rev()
        .map(|(id, b)| (id.clone(), anthropic_describe(id, b)))
        .collect();
    let (data, has_more) = page(all, &query, "after_id");
    let first_id = data.first().map(|b| b["id"].clone());
    let last_id = data.last().map(|b| b["id"].clone());
    axum::Json(json!({"data": data, "has_more": has_more, "first_id": first_id, "last_id": last_id}))
}

async fn anthropic_status(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, axum::Json<Value>) {
    let mut guard = lock(&shared);
    let inner = &mut *guard;
    inner.calls.push(format!("GET /v1/messages/batches/{id}"));
    let Some(index) = inner.batches.iter().position(|(batch_id, _)| *batch_id == id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}})),
        );
    };
    let first = index == 0;
    let (id, batch) = &mut inner.batches[index];
    batch.polls += 1;
    if batch.status == "in_progress" && batch.polls >= 2 && !inner.held {
        for (line_index, request) in batch.input.iter().enumerate() {
            let custom_id = request["custom_id"].clone();
            let result = if first && inner.fault == BatchFault::ExpireFirst {
                json!({"type": "expired"})
            } else if first && inner.fault == BatchFault::FailOddLinesOfFirst && line_index % 2 == 1 {
                json!({"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "internal error"}}})
            } else {
                let text = (inner.handler)(&request["params"]);
                json!({"type": "succeeded", "message": {
                    "id": format!("msg_{line_index}"), "type": "message", "role": "assistant",
                    "model": request["params"]["model"],
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 10, "output_tokens": 5},
                }})
            };
            batch.results.push(json!({"custom_id": custom_id, "result": result}));
        }
        batch.status = "ended";
    }
    (StatusCode::OK, axum::Json(anthropic_describe(id, batch)))
}

async fn anthropic_results(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, Vec<u8>) {
    let mut inner = lock(&shared);
    inner.calls.push(format!("GET /v1/messages/batches/{id}/results"));
    match inner.batches.iter().find(|(batch_id, _)| *batch_id == id) {
        Some((_, batch)) if batch.status == "ended" => (
            StatusCode::OK,
            batch
                .results
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        ),
        Some(_) => (
            StatusCode::BAD_REQUEST,
            b"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"not ended\"}}".to_vec(),
        ),
        None => (StatusCode::NOT_FOUND, b"{}".to_vec()),
    }
}

async fn anthropic_cancel(State(shared): State<Shared>, Path(id): Path<String>) -> (StatusCode, axum::Json<Value>) {
    let mut inner = lock(&shared);
    inner.calls.push(format!("POST /v1/messages/batches/{id}/cancel"));
    match inner.batches.iter_mut().find(|(batch_id, _)| *batch_id == id) {
        Some((id, batch)) => {
            batch.status = "canceling";
            (StatusCode::OK, axum::Json(anthropic_describe(id, batch)))
        }
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"type": "error"}))),
    }
}
