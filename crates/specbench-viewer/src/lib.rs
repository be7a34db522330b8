//! The results viewer: a browser UI over stored results (`specbench view` serves it).
//!
//! The page (embedded HTML, CSS and JavaScript; no CDN) talks to a small JSON API:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/runs` | every run: id, model, scenario, method, judge, counts and means |
//! | `GET /api/leaderboard` | the report's leaderboard table |
//! | `GET /api/runs/{id}/items?label=&unsafe=&errors=&violated=&q=&page=&per_page=` | one page of a run's items, filtered, with the total |
//! | `GET /api/runs/{id}/items/{position}` | one item whole: prompts, thought, response, every rule's verdict and reason |
//! | `GET /api/compare?a={id}&b={id}&position={p}` | item `p` of run `a` beside the same prompt in run `b`, differing verdicts marked |
//!
//! Untrusted text (prompts, responses, judge replies) only ever leaves as JSON strings; the page
//! puts it in the DOM as text. Routes are fixed and take numbers, never paths. A strict
//! Content-Security-Policy forbids inline scripts and every other origin.
//! Every request first passes [`access::guard`]: the Host check against DNS rebinding and,
//! off loopback, the token.

pub mod access;

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use specbench::judge::joint_reasons;
use specbench::pack::Label;
use specbench::score::{Alpha, Score, Verdict};
use specbench::store;
use specbench::store::read::{ShownEntry, read_shown_entries};
use specbench_report::render::STYLE;
use specbench_report::{self as report, ReportOptions};

pub use self::access::{Access, GivenToken, Token};

const INDEX_HTML: &str = include_str!("../assets/viewer/index.html");
const APP_JS: &str = include_str!("../assets/viewer/app.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One rule's verdict on an item, with the judge's reason when the judge gave one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuleVerdict {
    kind: String,
    number: usize,
    text: Option<String>,
    verdict: Verdict,
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ViewItem {
    position: usize,
    label: String,
    source: String,
    prompt: String,
    adversarial_prompt: String,
    thought: String,
    response: String,
    score: Option<Score>,
    rules: Vec<RuleVerdict>,
    /// Why the judge reply never parsed, for judge errors.
    judge_error: Option<Value>,
    /// What a search looks in, lower-cased; not stored, made again when read from the index.
    #[serde(skip)]
    haystack: String,
}

impl ViewItem {
    fn haystack_of(&self) -> String {
        format!("{}\n{}\n{}", self.prompt, self.adversarial_prompt, self.response).to_lowercase()
    }
}

/// A run's summary, shown in the run list; its items stay in the index.
#[derive(Debug, Serialize, Deserialize)]
struct ViewRun {
    id: usize,
    model: String,
    scenario: String,
    method: String,
    judge: String,
    items: usize,
    judge_errors: usize,
    safety: Option<f64>,
    behavioral: Option<f64>,
    sar: Option<f64>,
}

/// The results a viewer serves: the run list and the leaderboard in memory, each run's items
/// in an on-disk index (SQLite) built once per results folder and reused while its files are
/// unchanged, so memory stays small and a later start is quick whatever the folder's size.
pub struct Viewer {
    runs: Vec<ViewRun>,
    leaderboard: Value,
    index: Mutex<Connection>,
}

/// Why a viewer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("{}: {source}", results.display())]
    Results {
        results: std::path::PathBuf,
        #[source]
        source: store::StoreError,
    },
    #[error("{}: cannot use the viewer's index: {source}", path.display())]
    Index {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: cannot write the viewer's index: {source}", path.display())]
    IndexFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bumped whenever what the index holds changes shape.
const INDEX_SCHEMA: u32 = 1;

impl Viewer {
    /// Serves every judged run under `results`, scored with `alpha`; `rules` gives the rule
    /// texts shown beside verdicts. The index lives in `index_dir`, named by the results
    /// folder; it is rebuilt when any result file, the rule texts or α changed. An unreadable
    /// run is left out with a warning naming its file; only an unreadable `results` is an error.
    pub fn open(
        results: &Path,
        alpha: Alpha,
        rules: &report::RuleTexts,
        index_dir: &Path,
    ) -> Result<Viewer, ViewerError> {
        let found = discover(results).map_err(|source| ViewerError::Results {
            results: results.to_path_buf(),
            source,
        })?;
        let fingerprint = fingerprint(&found, alpha, rules);
        let canonical = std::fs::canonicalize(results).unwrap_or_else(|_| results.to_path_buf());
        let name = hex::encode(&Sha256::digest(canonical.to_string_lossy().as_bytes())[..12]);
        let path = index_dir.join(format!("view-{name}.sqlite"));
        let index_error = |source| ViewerError::Index {
            path: path.clone(),
            source,
        };
        if let Some(viewer) = Viewer::reuse(&path, &fingerprint).map_err(index_error)? {
            return Ok(viewer);
        }
        std::fs::create_dir_all(index_dir).map_err(|source| ViewerError::IndexFile {
            path: index_dir.to_path_buf(),
            source,
        })?;
        // Built aside and renamed into place: a viewer stopped mid-build leaves no half index.
        let building = index_dir.join(format!("view-{name}.sqlite.{}.part", std::process::id()));
        let _ = std::fs::remove_file(&building);
        build(&building, &found, alpha, rules, &fingerprint).map_err(|source| ViewerError::Index {
            path: building.clone(),
            source,
        })?;
        std::fs::rename(&building, &path).map_err(|source| ViewerError::IndexFile {
            path: path.clone(),
            source,
        })?;
        Viewer::reuse(&path, &fingerprint)
            .map_err(index_error)?
            .ok_or_else(|| ViewerError::Index {
                path: path.clone(),
                source: rusqlite::Error::QueryReturnedNoRows,
            })
    }

    /// The index at `path`, when it was built from exactly these files.
    fn reuse(path: &Path, fingerprint: &str) -> Result<Option<Viewer>, rusqlite::Error> {
        if !path.is_file() {
            return Ok(None);
        }
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let meta = |key: &str| -> Result<Option<String>, rusqlite::Error> {
            connection
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get(0))
                .optional()
        };
        let Ok(Some(stored)) = meta("fingerprint") else {
            return Ok(None);
        };
        if stored != fingerprint {
            return Ok(None);
        }
        let leaderboard = meta("leaderboard")?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let mut runs = Vec::new();
        {
            let mut statement = connection.prepare("SELECT summary FROM runs ORDER BY id")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            for row in rows {
                match serde_json::from_str::<ViewRun>(&row?) {
                    Ok(run) => runs.push(run),
                    Err(_) => return Ok(None),
                }
            }
        }
        Ok(Some(Viewer {
            runs,
            leaderboard,
            index: Mutex::new(connection),
        }))
    }

    /// How many runs it shows.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Run `id`'s items, from the index.
    fn entries(&self, id: usize) -> Result<Vec<ViewItem>, Box<Response>> {
        let connection = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let text: Option<String> = connection
            .query_row("SELECT items FROM items WHERE run = ?1", [id as i64], |row| row.get(0))
            .optional()
            .map_err(|e| {
                Box::new(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the viewer's index: {e}"),
                ))
            })?;
        let Some(text) = text else {
            return Err(Box::new(missing_run(id)));
        };
        let mut items: Vec<ViewItem> = serde_json::from_str(&text).map_err(|e| {
            Box::new(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the viewer's index: {e}"),
            ))
        })?;
        for item in &mut items {
            item.haystack = item.haystack_of();
        }
        Ok(items)
    }
}

/// What the index was built from: every result file (name, size, modification time), the rule
/// texts, α, and the index's own shape.
fn fingerprint(found: &[Found], alpha: Alpha, rules: &report::RuleTexts) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "schema {INDEX_SCHEMA} {} alpha {}\n",
        env!("CARGO_PKG_VERSION"),
        alpha.get()
    ));
    let mut sorted: Vec<_> = rules.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    hasher.update(serde_json::to_string(&sorted).unwrap_or_default());
    for run in found {
        let dir = store::RunDir { dir: run.dir.clone() };
        for file in [dir.evaluate_json(&run.judge), dir.errors_json(&run.judge)] {
            let stamp = std::fs::metadata(&file).ok().map(|meta| {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (meta.len(), modified)
            });
            hasher.update(format!("{}\0{stamp:?}\n", file.display()));
        }
    }
    hex::encode(hasher.finalize())
}

/// Writes the index at `path`: one run at a time, so memory holds one run's items and the
/// verdicts the leaderboard needs, never every text.
fn build(
    path: &Path,
    found: &[Found],
    alpha: Alpha,
    rules: &report::RuleTexts,
    fingerprint: &str,
) -> Result<(), rusqlite::Error> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE runs (id INTEGER PRIMARY KEY, summary TEXT NOT NULL);
         CREATE TABLE items (run INTEGER PRIMARY KEY, items TEXT NOT NULL);",
    )?;
    let transaction = connection.transaction()?;
    let mut stored = Vec::new();
    let mut id = 0;
    for run in found {
        // Ids are positions in the list the routes index, so a skipped run leaves no gap.
        let Some((summary, items)) = load_run(run, id, alpha, rules) else {
            continue;
        };
        stored.push(stored_run(&summary, &items));
        let summary_text = serde_json::to_string(&summary).unwrap_or_default();
        let items_text = serde_json::to_string(&items).unwrap_or_default();
        transaction.execute(
            "INSERT INTO runs (id, summary) VALUES (?1, ?2)",
            params![id as i64, summary_text],
        )?;
        transaction.execute(
            "INSERT INTO items (run, items) VALUES (?1, ?2)",
            params![id as i64, items_text],
        )?;
        id += 1;
    }
    let options = ReportOptions {
        alpha,
        resamples: 500,
        ..ReportOptions::default()
    };
    let leaderboard = if stored.is_empty() {
        Value::Null
    } else {
        let table = report::leaderboard_table(&stored, &options);
        json!({"title": table.title, "columns": table.columns, "rows": table.rows, "note": table.note})
    };
    transaction.execute(
        "INSERT INTO meta (key, value) VALUES ('leaderboard', ?1)",
        [leaderboard.to_string()],
    )?;
    transaction.execute(
        "INSERT INTO meta (key, value) VALUES ('fingerprint', ?1)",
        [fingerprint],
    )?;
    transaction.commit()
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

fn item_from(
    position: usize,
    entry: ShownEntry,
    alpha: Alpha,
    rules: Option<&(Vec<String>, Vec<String>)>,
    error_file: bool,
) -> ViewItem {
    let safety = entry.safety();
    let behavioral = entry.behavioral();
    let (safety_reasons, behavioral_reasons) = entry.eval_response().map(joint_reasons).unwrap_or_default();
    let mut verdicts = Vec::new();
    for (kind, list, reasons, texts) in [
        ("safety", &safety, &safety_reasons, rules.map(|r| &r.0)),
        ("behavioral", &behavioral, &behavioral_reasons, rules.map(|r| &r.1)),
    ] {
        for (i, verdict) in list.iter().enumerate() {
            verdicts.push(RuleVerdict {
                kind: kind.to_string(),
                number: i + 1,
                text: texts.and_then(|t| t.get(i)).cloned(),
                verdict: *verdict,
                reason: reasons.get(i).filter(|r| !r.is_empty()).cloned(),
            });
        }
    }
    let judge_error = error_file.then(|| entry.judge_error.unwrap_or(Value::Null));
    let score = judge_error
        .is_none()
        .then(|| Score::of(&specbench::score::Verdicts { safety, behavioral }, alpha));
    let data = entry.data;
    let mut item = ViewItem {
        position,
        label: data.label,
        source: match data.source {
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
            None => String::new(),
        },
        prompt: data.prompt,
        adversarial_prompt: data.adversarial_prompt,
        thought: entry.thought,
        response: entry.response,
        score,
        rules: verdicts,
        judge_error,
        haystack: String::new(),
    };
    item.haystack = item.haystack_of();
    item
}

/// A stored run's place: `model/scenario/method/<judge>_evaluate.json`.
struct Found {
    dir: std::path::PathBuf,
    model: String,
    scenario: String,
    method: String,
    judge: String,
}

/// Every `<judge>_evaluate.json` under `results`, in folder order; a folder that cannot be
/// listed is skipped with a warning.
fn discover(results: &Path) -> Result<Vec<Found>, store::StoreError> {
    let mut runs = Vec::new();
    let listing = store::run_folders(results)?;
    for error in &listing.unreadable {
        tracing::warn!("skipped: {error}");
    }
    for folder in listing.folders {
        let run = store::RunDir {
            dir: folder.dir.clone(),
        };
        let stems = match run.judge_stems() {
            Ok(stems) => stems,
            Err(error) => {
                tracing::warn!("skipped: {error}");
                continue;
            }
        };
        for judge in stems {
            runs.push(Found {
                dir: folder.dir.clone(),
                model: folder.model.clone(),
                scenario: folder.scenario.clone(),
                method: folder.method.clone(),
                judge,
            });
        }
    }
    Ok(runs)
}

/// One run's summary and items; `None` (with a warning naming the file) when it cannot be read.
fn load_run(found: &Found, id: usize, alpha: Alpha, rules: &report::RuleTexts) -> Option<(ViewRun, Vec<ViewItem>)> {
    let scenario_rules = rules.get(&found.scenario);
    let run = store::RunDir { dir: found.dir.clone() };
    let evaluated = match read_shown_entries(&run.evaluate_json(&found.judge)) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!("skipped: {error:#}");
            return None;
        }
    };
    let mut items: Vec<ViewItem> = evaluated
        .into_iter()
        .enumerate()
        .map(|(position, entry)| item_from(position, entry, alpha, scenario_rules, false))
        .collect();
    let errors_path = run.errors_json(&found.judge);
    if errors_path.exists() {
        match read_shown_entries(&errors_path) {
            Ok(entries) => {
                for entry in entries {
                    let position = items.len();
                    items.push(item_from(position, entry, alpha, scenario_rules, true));
                }
            }
            Err(error) => tracing::warn!("judge errors left out: {error:#}"),
        }
    }
    let judged: Vec<&Score> = items.iter().filter_map(|i| i.score.as_ref()).collect();
    let summary = ViewRun {
        id,
        model: found.model.clone(),
        scenario: found.scenario.clone(),
        method: found.method.clone(),
        judge: found.judge.clone(),
        items: items.len(),
        judge_errors: items.iter().filter(|i| i.judge_error.is_some()).count(),
        safety: mean(judged.iter().map(|s| f64::from(s.safety))),
        behavioral: mean(judged.iter().map(|s| s.behavioral)),
        sar: mean(judged.iter().map(|s| s.sar)),
    };
    Some((summary, items))
}

/// A run as the report module sees it, for the leaderboard, which reads each item's label and
/// score only ([`report::leaderboard_table`]): prompts and verdicts are left out, so a study's
/// worth of items (held until the leaderboard is made) stays small.
fn stored_run(run: &ViewRun, items: &[ViewItem]) -> report::StoredRun {
    report::StoredRun {
        model: run.model.clone(),
        scenario: run.scenario.clone(),
        method: run.method.clone(),
        judge: run.judge.clone(),
        items: items
            .iter()
            .filter_map(|item| {
                let label = match item.label.as_str() {
                    "safe" => Label::Safe,
                    "unsafe" => Label::Unsafe,
                    _ => return None,
                };
                Some(report::ItemResult {
                    key: String::new(),
                    label,
                    verdicts: specbench::score::Verdicts {
                        safety: Vec::new(),
                        behavioral: Vec::new(),
                    },
                    score: item.score?,
                    completion_tokens: None,
                })
            })
            .collect(),
        generation_cost: None,
        judge_cost: None,
        generation_batched: false,
        judge_batched: false,
        dir: std::path::PathBuf::new(),
    }
}

/// Items per page at most: pages stay small however large a run is.
const MAX_PER_PAGE: usize = 200;

#[derive(Debug, Deserialize)]
struct ItemQuery {
    label: Option<String>,
    #[serde(rename = "unsafe")]
    unsafe_only: Option<bool>,
    errors: Option<bool>,
    /// `safety:3` or `behavioral:1`: items whose verdict on that rule is NO.
    violated: Option<String>,
    q: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ItemRow<'a> {
    position: usize,
    label: &'a str,
    source: &'a str,
    prompt: &'a str,
    score: Option<Score>,
    violated: Vec<String>,
    judge_error: bool,
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn missing_run(id: usize) -> Response {
    problem(StatusCode::NOT_FOUND, format!("no run {id}"))
}

async fn runs(State(viewer): State<Arc<Viewer>>) -> Response {
    axum::Json(&viewer.runs).into_response()
}

async fn leaderboard(State(viewer): State<Arc<Viewer>>) -> Response {
    axum::Json(&viewer.leaderboard).into_response()
}

async fn items(
    State(viewer): State<Arc<Viewer>>,
    UrlPath(id): UrlPath<usize>,
    Query(query): Query<ItemQuery>,
) -> Response {
    let Some(run) = viewer.runs.get(id) else {
        return missing_run(id);
    };
    let entries = match viewer.entries(id) {
        Ok(entries) => entries,
        Err(response) => return *response,
    };
    let violated = match query.violated.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => match text
            .split_once(':')
            .and_then(|(kind, n)| Some((kind, n.parse::<usize>().ok()?)))
        {
            Some((kind @ ("safety" | "behavioral"), number)) => Some((kind.to_string(), number)),
            _ => return problem(StatusCode::BAD_REQUEST, "violated: want safety:N or behavioral:N"),
        },
    };
    let needle = query.q.as_deref().map(str::to_lowercase).filter(|q| !q.is_empty());
    let matching: Vec<&ViewItem> = entries
        .iter()
        .filter(|item| query.label.as_deref().is_none_or(|l| l.is_empty() || item.label == l))
        .filter(|item| !query.unsafe_only.unwrap_or(false) || item.score.is_some_and(|s| s.safety == 0))
        .filter(|item| !query.errors.unwrap_or(false) || item.judge_error.is_some())
        .filter(|item| {
            violated.as_ref().is_none_or(|(kind, number)| {
                item.rules
                    .iter()
                    .any(|r| r.kind == *kind && r.number == *number && r.verdict == Verdict::No)
            })
        })
        .filter(|item| needle.as_ref().is_none_or(|n| item.haystack.contains(n.as_str())))
        .collect();
    let per_page = query.per_page.unwrap_or(50).clamp(1, MAX_PER_PAGE);
    let page = query.page.unwrap_or(0);
    let rows: Vec<ItemRow<'_>> = matching
        .iter()
        .skip(page.saturating_mul(per_page))
        .take(per_page)
        .map(|item| ItemRow {
            position: item.position,
            label: &item.label,
            source: &item.source,
            prompt: &item.adversarial_prompt,
            score: item.score,
            violated: item
                .rules
                .iter()
                .filter(|r| r.verdict == Verdict::No)
                .map(|r| format!("{}:{}", r.kind, r.number))
                .collect(),
            judge_error: item.judge_error.is_some(),
        })
        .collect();
    axum::Json(json!({
        "run": run,
        "total": matching.len(),
        "page": page,
        "per_page": per_page,
        "items": rows,
    }))
    .into_response()
}

async fn item(State(viewer): State<Arc<Viewer>>, UrlPath((id, position)): UrlPath<(usize, usize)>) -> Response {
    let Some(run) = viewer.runs.get(id) else {
        return missing_run(id);
    };
    let entries = match viewer.entries(id) {
        Ok(entries) => entries,
        Err(response) => return *response,
    };
    match entries.get(position) {
        Some(item) => axum::Json(json!({"run": run, "item": item})).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("run {id} has no item {position}")),
    }
}

#[derive(Debug, Deserialize)]
struct CompareQuery {
    a: usize,
    b: usize,
    position: usize,
}

async fn compare(State(viewer): State<Arc<Viewer>>, Query(query): Query<CompareQuery>) -> Response {
    let (Some(a), Some(b)) = (viewer.runs.get(query.a), viewer.runs.get(query.b)) else {
        return missing_run(if viewer.runs.get(query.a).is_none() {
            query.a
        } else {
            query.b
        });
    };
    let (first_entries, second_entries) = match (viewer.entries(query.a), viewer.entries(query.b)) {
        (Ok(first), Ok(second)) => (first, second),
        (Err(response), _) | (_, Err(response)) => return *response,
    };
    let Some(first) = first_entries.get(query.position) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("run {} has no item {}", query.a, query.position),
        );
    };
    let second = second_entries.iter().find(|item| item.prompt == first.prompt);
    let differing: Vec<String> = match second {
        Some(second) => first
            .rules
            .iter()
            .filter(|rule| {
                second
                    .rules
                    .iter()
                    .find(|other| other.kind == rule.kind && other.number == rule.number)
                    .is_none_or(|other| other.verdict != rule.verdict)
            })
            .map(|rule| format!("{}:{}", rule.kind, rule.number))
            .collect(),
        None => Vec::new(),
    };
    axum::Json(json!({
        "a": {"run": a, "item": first},
        "b": second.map(|item| json!({"run": b, "item": item})),
        "differing": differing,
    }))
    .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Security headers on every answer.
async fn harden(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The viewer's routes, every request first through `access`'s guard.
pub fn router(viewer: Arc<Viewer>, access: Arc<Access>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/api/runs", get(runs))
        .route("/api/leaderboard", get(leaderboard))
        .route("/api/runs/{id}/items", get(items))
        .route("/api/runs/{id}/items/{position}", get(item))
        .route("/api/compare", get(compare))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
        .layer(axum::middleware::from_fn(harden))
        .with_state(viewer)
}

/// Serves `viewer` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    viewer: Arc<Viewer>,
    access: Arc<Access>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(viewer, access))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prompt: &str, verdict: &str) -> Value {
        json!({
            "data": {"prompt": prompt, "adversarial_prompt": prompt, "label": "safe", "source": "test"},
            "response": format!("an answer to {prompt}"),
            "thought": "",
            "eval": {"result": {"safety": [verdict], "behavioral": ["YES", "NA"]}}
        })
    }

    fn write(path: &Path, entries: &[Value]) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::write(path, serde_json::to_vec(entries)?)?;
        Ok(())
    }

    #[test]
    fn the_index_is_reused_while_the_files_are_unchanged_and_rebuilt_when_one_changes()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let results = dir.path().join("result");
        let run = results.join("m/Garden/vanilla");
        std::fs::create_dir_all(&run)?;
        let evaluate = run.join("j_evaluate.json");
        write(&evaluate, &[entry("first", "YES"), entry("second", "NO")])?;
        let index_dir = dir.path().join("index");
        let rules = report::RuleTexts::new();

        let viewer = Viewer::open(&results, Alpha::DEFAULT, &rules, &index_dir)?;
        assert_eq!((viewer.runs(), viewer.runs[0].items), (1, 2));
        let files: Vec<_> = std::fs::read_dir(&index_dir)?.collect::<Result<_, _>>()?;
        assert_eq!(files.len(), 1, "one index, no leftover part file");
        let index = files[0].path();
        let built = std::fs::metadata(&index)?.modified()?;
        let items = viewer.entries(0).map_err(|_| "no items")?;
        assert_eq!(items[1].prompt, "second");
        assert_eq!(items[1].score.map(|s| s.safety), Some(0));
        assert!(items[1].haystack.contains("an answer to second"));
        drop(viewer);

        // Unchanged files: the same index, not written again.
        let again = Viewer::open(&results, Alpha::DEFAULT, &rules, &index_dir)?;
        assert_eq!(again.runs[0].items, 2);
        assert_eq!(std::fs::metadata(&index)?.modified()?, built);
        drop(again);

        // A changed file (another size): rebuilt, and it shows the change.
        write(
            &evaluate,
            &[entry("first", "YES"), entry("second", "NO"), entry("third", "YES")],
        )?;
        let changed = Viewer::open(&results, Alpha::DEFAULT, &rules, &index_dir)?;
        assert_eq!(changed.runs[0].items, 3);
        // Another α scores differently: rebuilt too.
        let other = Alpha::new(0.5).ok_or("alpha")?;
        let rescored = Viewer::open(&results, other, &rules, &index_dir)?;
        let first = rescored.entries(0).map_err(|_| "no items")?;
        assert_eq!(first[0].score.map(|s| s.sar), Some(0.5 + 0.5 * 0.5));
        Ok(())
    }
}
