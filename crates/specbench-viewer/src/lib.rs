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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
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
#[derive(Debug, Clone, Serialize)]
struct RuleVerdict {
    kind: &'static str,
    number: usize,
    text: Option<String>,
    verdict: Verdict,
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip)]
    haystack: String,
}

#[derive(Debug, Serialize)]
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
    #[serde(skip)]
    entries: Vec<ViewItem>,
    #[serde(skip)]
    by_prompt: HashMap<String, usize>,
}

/// The results a viewer serves, read once at start.
pub struct Viewer {
    runs: Vec<ViewRun>,
    leaderboard: Value,
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
}

impl Viewer {
    /// Reads every judged run under `results`, scored with `alpha`; `rules` gives the rule
    /// texts shown beside verdicts. An unreadable run is left out with a warning naming its
    /// file; only an unreadable `results` is an error.
    pub fn open(results: &Path, alpha: Alpha, rules: &report::RuleTexts) -> Result<Viewer, ViewerError> {
        let runs = load(results, alpha, rules)?;
        let stored = stored_runs(&runs);
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
        Ok(Viewer { runs, leaderboard })
    }

    /// How many runs it shows.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
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
                kind,
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
    let haystack = format!("{}\n{}\n{}", data.prompt, data.adversarial_prompt, entry.response).to_lowercase();
    ViewItem {
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
        haystack,
    }
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

fn load(results: &Path, alpha: Alpha, rules: &report::RuleTexts) -> Result<Vec<ViewRun>, ViewerError> {
    let found = discover(results).map_err(|source| ViewerError::Results {
        results: results.to_path_buf(),
        source,
    })?;
    let mut runs = Vec::with_capacity(found.len());
    for Found {
        dir,
        model,
        scenario,
        method,
        judge,
    } in found
    {
        // Ids are positions in the list the routes index, so a skipped run leaves no gap.
        let id = runs.len();
        let scenario_rules = rules.get(&scenario);
        // One unreadable run is left out with a warning naming its file; the others are shown.
        let run = store::RunDir { dir: dir.clone() };
        let evaluated = match read_shown_entries(&run.evaluate_json(&judge)) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!("skipped: {error:#}");
                continue;
            }
        };
        let mut items: Vec<ViewItem> = evaluated
            .into_iter()
            .enumerate()
            .map(|(position, entry)| item_from(position, entry, alpha, scenario_rules, false))
            .collect();
        let errors_path = run.errors_json(&judge);
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
        runs.push(ViewRun {
            id,
            model,
            scenario,
            method,
            judge,
            items: items.len(),
            judge_errors: items.iter().filter(|i| i.judge_error.is_some()).count(),
            safety: mean(judged.iter().map(|s| f64::from(s.safety))),
            behavioral: mean(judged.iter().map(|s| s.behavioral)),
            sar: mean(judged.iter().map(|s| s.sar)),
            by_prompt: items.iter().map(|item| (item.prompt.clone(), item.position)).collect(),
            entries: items,
        });
    }
    Ok(runs)
}

/// The runs as the report module sees them, for its leaderboard: built from what is loaded,
/// not read again.
fn stored_runs(runs: &[ViewRun]) -> Vec<report::StoredRun> {
    runs.iter()
        .map(|run| report::StoredRun {
            model: run.model.clone(),
            scenario: run.scenario.clone(),
            method: run.method.clone(),
            judge: run.judge.clone(),
            items: run
                .entries
                .iter()
                .filter_map(|item| {
                    let score = item.score?;
                    let label = match item.label.as_str() {
                        "safe" => Label::Safe,
                        "unsafe" => Label::Unsafe,
                        _ => return None,
                    };
                    let pick = |kind: &str| -> Vec<Verdict> {
                        item.rules
                            .iter()
                            .filter(|r| r.kind == kind)
                            .map(|r| r.verdict)
                            .collect()
                    };
                    Some(report::ItemResult {
                        key: item.prompt.clone(),
                        label,
                        verdicts: specbench::score::Verdicts {
                            safety: pick("safety"),
                            behavioral: pick("behavioral"),
                        },
                        score,
                        completion_tokens: None,
                    })
                })
                .collect(),
            generation_cost: None,
            judge_cost: None,
            dir: std::path::PathBuf::new(),
        })
        .collect()
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
    let matching: Vec<&ViewItem> = run
        .entries
        .iter()
        .filter(|item| query.label.as_deref().is_none_or(|l| l.is_empty() || item.label == l))
        .filter(|item| !query.unsafe_only.unwrap_or(false) || item.score.is_some_and(|s| s.safety == 0))
        .filter(|item| !query.errors.unwrap_or(false) || item.judge_error.is_some())
        .filter(|item| {
            violated.as_ref().is_none_or(|(kind, number)| {
                item.rules
                    .iter()
                    .any(|r| r.kind == kind && r.number == *number && r.verdict == Verdict::No)
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
    match run.entries.get(position) {
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
    let Some(first) = a.entries.get(query.position) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("run {} has no item {}", query.a, query.position),
        );
    };
    let second = b.by_prompt.get(&first.prompt).and_then(|p| b.entries.get(*p));
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
