//! The data pack's `golden/` files: the exact requests upstream sends and what it made of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::{Reply, StubServer};

/// The pack folder from `SPECBENCH_DATA`; a test needing it fails loudly when it is unset.
///
/// Cargo runs each test binary from its crate's folder, so a relative path (as the README's
/// `SPECBENCH_DATA=../shared/data/specbench`) is taken from the workspace root.
pub fn pack_dir() -> anyhow::Result<PathBuf> {
    let given = std::env::var_os("SPECBENCH_DATA")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("SPECBENCH_DATA is not set: point it at the SpecBench data pack"))?;
    let dir = if given.is_absolute() {
        given
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(given)
    };
    anyhow::ensure!(dir.join("golden").is_dir(), "{}: no golden/ folder", dir.display());
    Ok(dir.canonicalize()?)
}

/// One line of `golden/requests.jsonl`.
#[derive(Debug, Clone)]
pub struct GoldenRequest {
    pub tag: String,
    pub request: Value,
    pub reply: String,
}

pub fn requests(pack: &Path) -> anyhow::Result<Vec<GoldenRequest>> {
    read_lines(&pack.join("golden/requests.jsonl"))?
        .into_iter()
        .map(|line| {
            Ok(GoldenRequest {
                tag: line["tag"].as_str().unwrap_or_default().to_string(),
                reply: line["reply"].as_str().unwrap_or_default().to_string(),
                request: line["request"].clone(),
            })
        })
        .collect()
}

/// `golden/results.jsonl` by tag and kind (`generation` or `judge`).
pub fn results(pack: &Path) -> anyhow::Result<HashMap<(String, String), Value>> {
    Ok(read_lines(&pack.join("golden/results.jsonl"))?
        .into_iter()
        .map(|line| {
            let key = (
                line["tag"].as_str().unwrap_or_default().to_string(),
                line["kind"].as_str().unwrap_or_default().to_string(),
            );
            (key, line["output"].clone())
        })
        .collect())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())))
        .collect()
}

/// Key order aside, two bodies are equal when their canonical forms are: serde_json's default
/// map would sort keys, but this crate keeps order, so sort explicitly.
pub fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            Value::Array(list) => Value::Array(list.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// A replay server: answers a request equal to a golden one with its reply; anything else is a
/// protocol difference, answered 400 and kept for the test to report.
pub struct ReplayServer {
    pub server: StubServer,
    unmatched: Arc<Mutex<Vec<Value>>>,
}

impl ReplayServer {
    pub fn start(golden: &[GoldenRequest]) -> anyhow::Result<ReplayServer> {
        let mut replies: HashMap<String, String> = HashMap::new();
        for entry in golden {
            let key = canonical(&entry.request);
            if let Some(previous) = replies.get(&key) {
                anyhow::ensure!(
                    previous == &entry.reply,
                    "golden: one request, two replies ({})",
                    entry.tag
                );
            }
            replies.insert(key, entry.reply.clone());
        }
        let unmatched = Arc::new(Mutex::new(Vec::new()));
        let seen = unmatched.clone();
        let server = StubServer::start(move |request| match replies.get(&canonical(request)) {
            Some(reply) => Reply::Content(reply.clone()),
            None => {
                if let Ok(mut list) = seen.lock() {
                    list.push(request.clone());
                }
                Reply::Status {
                    status: 400,
                    body: "request not in golden/requests.jsonl".into(),
                    retry_after: None,
                }
            }
        })?;
        Ok(ReplayServer { server, unmatched })
    }

    pub fn unmatched(&self) -> Vec<Value> {
        self.unmatched.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The first difference between two JSON values, as a path and both sides: for failure messages.
pub fn first_difference(expected: &Value, actual: &Value) -> Option<String> {
    fn walk(path: String, a: &Value, b: &Value) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (key, value) in x {
                    match y.get(key) {
                        Some(other) => {
                            if let Some(d) = walk(format!("{path}.{key}"), value, other) {
                                return Some(d);
                            }
                        }
                        None => return Some(format!("{path}.{key}: missing")),
                    }
                }
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{path}.{k}: unexpected"))
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return Some(format!("{path}: {} items, expected {}", y.len(), x.len()));
                }
                x.iter()
                    .zip(y)
                    .enumerate()
                    .find_map(|(i, (p, q))| walk(format!("{path}[{i}]"), p, q))
            }
            _ if a == b => None,
            (Value::String(x), Value::String(y)) => {
                let at = x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
                let show = |s: &str| s.chars().skip(at.saturating_sub(40)).take(120).collect::<String>();
                Some(format!(
                    "{path}: differs at char {at}:\n  expected …{:?}\n  actual   …{:?}",
                    show(x),
                    show(y)
                ))
            }
            _ => Some(format!("{path}: expected {a}, got {b}")),
        }
    }
    walk("$".into(), expected, actual)
}
