//! Test support: a loopback OpenAI-compatible stub server (scripted replies, recorded requests,
//! fixed latency, faults) and a replay server for the data pack's golden requests.
//!
//! Only ever a dev-dependency (and the benchmark's stub process). Every server binds 127.0.0.1
//! on a free port and runs on its own thread and runtime, so sync tests that run the binary and
//! async tests that call the library can both use it.

pub mod bench;
pub mod faults;
pub mod golden;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the stub answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A chat completion with this content.
    Content(String),
    /// Content with a separate `reasoning_content` (DeepSeek style).
    Reasoning { content: String, reasoning: String },
    /// An HTTP error status with a body and optional `Retry-After`.
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// A 200 whose body is this raw text (invalid JSON, truncated, ...).
    RawBody(String),
    /// Content with this `finish_reason` (`length`, `content_filter`); `None` content is null.
    Finish {
        content: Option<String>,
        finish_reason: String,
    },
    /// Answer only after this long (past the client's timeout).
    Hang(Duration),
    /// Send a 200's headers, then drop the connection mid-body.
    Reset,
    /// A 200 whose body is `chunk` sent `count` times, streamed without a `Content-Length`
    /// (a runaway reply whose size is only known by reading it).
    Streamed { chunk: String, count: usize },
}

type Handler = dyn Fn(&Value) -> Reply + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    latency: Duration,
    requests: Mutex<Vec<Value>>,
    /// The path and query of every request, in arrival order.
    targets: Mutex<Vec<String>>,
    /// The headers of every request, in arrival order.
    headers: Mutex<Vec<axum::http::HeaderMap>>,
    record: bool,
}

/// A running stub server; stops when dropped.
pub mod batch;

pub struct StubServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    background: Background,
}

/// An axum app served on 127.0.0.1 (a free port) by its own thread and runtime, stopped and
/// joined when dropped. Bound with std, so it starts from inside another runtime too.
struct Background {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(app: Router, threads: usize) -> anyhow::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Background {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Serves until the process is killed.
    fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Options of a stub server.
pub struct StubOptions {
    /// Waited before every answer.
    pub latency: Duration,
    /// Keep every request body for [`StubServer::requests`] (off for benchmarks).
    pub record: bool,
    /// Worker threads of the server's runtime.
    pub threads: usize,
}

impl Default for StubOptions {
    fn default() -> Self {
        StubOptions {
            latency: Duration::ZERO,
            record: true,
            threads: 1,
        }
    }
}

impl StubServer {
    /// Starts a server answering every `POST …/chat/completions` with `handler`.
    pub fn start(handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> anyhow::Result<StubServer> {
        StubServer::start_with(StubOptions::default(), handler)
    }

    pub fn start_with(
        options: StubOptions,
        handler: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<StubServer> {
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            latency: options.latency,
            requests: Mutex::new(Vec::new()),
            targets: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            record: options.record,
        });
        let app = Router::new().route("/{*path}", post(answer)).with_state(shared.clone());
        let background = Background::start(app, options.threads)?;
        Ok(StubServer {
            addr: background.addr,
            shared,
            background,
        })
    }

    /// The base URL to give specbench (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request body received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The path and query (`/v1/chat/completions?x=1`) of every request so far, in arrival
    /// order: where a client put what it was given.
    pub fn targets(&self) -> Vec<String> {
        self.shared.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The headers of every request so far, in arrival order.
    pub fn headers(&self) -> Vec<axum::http::HeaderMap> {
        self.shared.headers.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Serves until the process is killed (the benchmark's stub process).
    pub fn wait(self) {
        self.background.wait();
    }
}

/// Tokens as the golden stub counted them: code points ÷ 4, rounded down.
pub fn stub_usage(body: &Value, reply: &str) -> Value {
    let prompt_chars: usize = body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.chars().count())
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = prompt_chars / 4;
    let completion_tokens = reply.chars().count() / 4;
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    // The latency is counted from arrival: the stub's own work happens inside it.
    let answer_at = tokio::time::Instant::now() + shared.latency;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "request body is not JSON").into_response();
    };
    if shared.record
        && let Ok(mut requests) = shared.requests.lock()
    {
        requests.push(request.clone());
    }
    if shared.record
        && let Ok(mut targets) = shared.targets.lock()
    {
        targets.push(uri.path_and_query().map(ToString::to_string).unwrap_or_default());
    }
    if shared.record
        && let Ok(mut seen) = shared.headers.lock()
    {
        seen.push(headers);
    }
    let reply = (shared.handler)(&request);
    if !shared.latency.is_zero() {
        tokio::time::sleep_until(answer_at).await;
    }
    match reply {
        Reply::Content(content) => completion(&request, &content, None),
        Reply::Reasoning { content, reasoning } => completion(&request, &content, Some(&reasoning)),
        Reply::Status {
            status,
            body,
            retry_after,
        } => {
            let mut headers = HeaderMap::new();
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert("retry-after", value);
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, headers, body).into_response()
        }
        Reply::RawBody(text) => (StatusCode::OK, [("content-type", "application/json")], text).into_response(),
        Reply::Finish { content, finish_reason } => {
            let body = json!({
                "id": "stub",
                "object": "chat.completion",
                "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish_reason}],
                "usage": stub_usage(&request, content.as_deref().unwrap_or("")),
            });
            axum::Json(body).into_response()
        }
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            completion(&request, "too late", None)
        }
        Reply::Streamed { chunk, count } => {
            let chunk = Bytes::from(chunk);
            let body = futures::stream::iter((0..count).map(move |_| Ok::<Bytes, std::io::Error>(chunk.clone())));
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Reply::Reset => {
            let broken = futures::stream::once(async { Err::<Bytes, _>(std::io::Error::other("connection reset")) });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                axum::body::Body::from_stream(broken),
            )
                .into_response()
        }
    }
}

fn completion(request: &Value, content: &str, reasoning: Option<&str>) -> Response {
    // A `/v1/completions` request carries a raw prompt and gets text back.
    if let Some(prompt) = request["prompt"].as_str() {
        let prompt_tokens = prompt.chars().count() / 4;
        let completion_tokens = content.chars().count() / 4;
        let body = json!({
            "id": "stub",
            "object": "text_completion",
            "model": request["model"],
            "choices": [{"index": 0, "text": content, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        });
        return axum::Json(body).into_response();
    }
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(reasoning) = reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    let body = json!({
        "id": "stub",
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": stub_usage(request, content),
    });
    axum::Json(body).into_response()
}

/// The user message of a request (for a raw `/v1/completions` prompt, the prompt), or "".
pub fn user_text(request: &Value) -> &str {
    if let Some(prompt) = request["prompt"].as_str() {
        return prompt;
    }
    request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
}

/// A plausible answer to any SpecBench request: a joint judge prompt gets one verdict line per
/// rule (counts read from its last line), a sequential one a single verdict, anything else a
/// short response with a thought. Verdicts vary with the text so scores are not constant.
pub fn synthetic_reply(request: &Value) -> String {
    let user = user_text(request);
    let seed = user.len();
    let verdict = |i: usize| match (seed + i * 7) % 5 {
        0 => "<NO>",
        1 => "<NA>",
        _ => "<YES>",
    };
    if let Some(counts) = joint_counts(user) {
        let mut reply = String::from("<safety_specifications>\n");
        for i in 1..=counts.0 {
            // Keep most responses safe so that SAR is not always zero.
            let v = if (seed + i).is_multiple_of(23) { "<NO>" } else { "<YES>" };
            reply.push_str(&format!("{i}. Synthetic analysis of rule {i}.{v}\n"));
        }
        reply.push_str("</safety_specifications>\n<behavioral_specifications>\n");
        for i in 1..=counts.1 {
            reply.push_str(&format!("{i}. Synthetic analysis of rule {i}.{}\n", verdict(i)));
        }
        reply.push_str("</behavioral_specifications>");
        reply
    } else if user.contains("<response_begin>") {
        format!("Synthetic analysis of this single rule.{}", verdict(0))
    } else {
        format!(
            "Thinking about the request of {seed} characters.\n</think>\n\nA synthetic response of the stub server to a request of {seed} characters."
        )
    }
}

/// `(safety, behavioral)` rule counts from a joint judge prompt's last line:
/// `... safety: 1~11, behavioral: 1~9)`.
pub fn joint_counts(user: &str) -> Option<(usize, usize)> {
    let tail = &user[user.rfind("safety: 1~")?..];
    let safety: usize = tail
        .strip_prefix("safety: 1~")?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let behavioral_at = tail.find("behavioral: 1~")?;
    let behavioral: usize = tail[behavioral_at + "behavioral: 1~".len()..]
        .split(')')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((safety, behavioral))
}

/// A loopback server answering `GET /<path>` with fixed files (404 for any other path):
/// a stand-in for a repository's raw-file host.
pub struct FileServer {
    pub addr: SocketAddr,
    _background: Background,
}

impl FileServer {
    pub fn start(files: std::collections::HashMap<String, Vec<u8>>) -> anyhow::Result<FileServer> {
        let files = Arc::new(files);
        let app = Router::new().route(
            "/{*path}",
            axum::routing::get(move |axum::extract::Path(path): axum::extract::Path<String>| {
                let files = files.clone();
                async move {
                    match files.get(&path) {
                        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
                        None => (StatusCode::NOT_FOUND, "not found").into_response(),
                    }
                }
            }),
        );
        let background = Background::start(app, 1)?;
        Ok(FileServer {
            addr: background.addr,
            _background: background,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: &str) -> Value {
        json!({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": user}]})
    }

    #[test]
    fn joint_counts_are_read_from_the_last_line() {
        let prompt = "... safety: 1~3 ...\n# Your Evaluation (containing <YES> or <NO> or <NA>. safety: 1~11, behavioral: 1~9)\n";
        assert_eq!(joint_counts(prompt), Some((11, 9)));
        assert_eq!(joint_counts("no counts here"), None);
    }

    #[test]
    fn synthetic_joint_reply_has_one_line_per_rule() {
        let reply = synthetic_reply(&request(
            "<response_begin>x<response_end> safety: 1~2, behavioral: 1~3)",
        ));
        let lines = reply.lines().filter(|l| l.contains("Synthetic analysis")).count();
        assert_eq!(lines, 5);
        assert!(reply.starts_with("<safety_specifications>"));
    }

    #[test]
    fn usage_counts_code_points_like_the_golden_stub() {
        let usage = stub_usage(&request("ééééé"), "abcdefgh");
        // "sys" + "ééééé" = 8 code points → 2; "abcdefgh" → 2.
        assert_eq!(
            usage,
            json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
        );
    }

    #[test]
    fn canonical_ignores_key_order_only() {
        let a = json!({"b": 1, "a": [1, {"y": 2, "x": 1}]});
        let b = json!({"a": [1, {"x": 1, "y": 2}], "b": 1});
        assert_eq!(golden::canonical(&a), golden::canonical(&b));
        assert_ne!(golden::canonical(&a), golden::canonical(&json!({"a": [1], "b": 1})));
    }
}
