//! `specbench view` in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! both started by the test on loopback, over results the test makes itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use specbench_test::{Reply, StubServer, synthetic_reply, user_text};

use crate::support::TestContext;

/// What the model under test answers: markup that would run if it were ever put in as HTML.
const HOSTILE: &str = "Here you go <script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"> MARK";

/// Kills a child process when dropped.
pub(crate) struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// vanilla answers with the hostile text; zero_think (a prefilled request) answers plainly. The
/// judge breaks safety rule 1 for a response with MARK, so the two methods' verdicts differ.
fn stub() -> anyhow::Result<StubServer> {
    StubServer::start(|request| {
        let user = user_text(request);
        let prefilled = request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "assistant");
        if user.contains("<response_begin>") {
            let reply = synthetic_reply(request);
            if user.contains("MARK") {
                // Rule 1's line ends in <NO> instead of its verdict.
                let mut lines: Vec<String> = reply.lines().map(str::to_string).collect();
                if let Some(line) = lines.iter_mut().find(|l| l.starts_with("1. ")) {
                    *line = "1. The response carries markup it was told not to.<NO>".into();
                }
                return Reply::Content(lines.join("\n"));
            }
            let mut lines: Vec<String> = reply.lines().map(str::to_string).collect();
            if let Some(line) = lines.iter_mut().find(|l| l.starts_with("1. ")) {
                *line = "1. Nothing unsafe here.<YES>".into();
            }
            Reply::Content(lines.join("\n"))
        } else if prefilled {
            Reply::Content("A plain answer.".into())
        } else {
            Reply::Content(HOSTILE.into())
        }
    })
}

/// vanilla and zero_think on the fixture pack, answered and judged by `stub`.
fn make_results(ctx: &TestContext) -> anyhow::Result<()> {
    let server = stub()?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "run",
        "--model",
        "view-model",
        "--base-url",
        &url,
        "--judge",
        "view-judge",
        "--judge-base-url",
        &url,
        "--method",
        "vanilla,zero_think",
    ])?;
    anyhow::ensure!(finished.code == Some(0), "{finished:?}");
    Ok(())
}

pub(crate) fn start_viewer(ctx: &TestContext) -> anyhow::Result<(Guard, String)> {
    let mut child = ctx
        .specbench()
        .args(["view", "result", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .ok_or_else(|| anyhow::anyhow!("viewer said {line:?}"))?
        .to_string();
    Ok((guard, url))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn browser() -> anyhow::Result<(Guard, Client)> {
    let port = free_port()?;
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("chromedriver (Debian's chromium-driver) is needed: {e}"))?;
    let guard = Guard(driver);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1400,1000"
        ]}),
    );
    let started = Instant::now();
    loop {
        match ClientBuilder::rustls()?
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return Ok((guard, client)),
            Err(error) if started.elapsed() < Duration::from_secs(20) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => anyhow::bail!("cannot start a browser session: {error}"),
        }
    }
}

/// Opens `url` and waits until the page says it has drawn that route.
async fn open(client: &Client, base: &str, route: &str) -> anyhow::Result<()> {
    client.goto(&format!("{base}{route}")).await?;
    let wanted = if route.is_empty() { "#/" } else { route };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let ready = client
            .execute("return document.body.dataset.ready || null", vec![])
            .await?;
        if ready == Value::String(wanted.into()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{route} never finished drawing")
}

async fn texts(client: &Client, css: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await? {
        out.push(element.text().await?);
    }
    Ok(out)
}

#[test]
fn the_viewer_in_a_real_browser() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let (_viewer, base) = start_viewer(&ctx)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (_driver, client) = browser().await?;
        let outcome = check(&client, &base, &ctx).await;
        let _ = client.close().await;
        outcome
    })
}

async fn check(client: &Client, base: &str, ctx: &TestContext) -> anyhow::Result<()> {
    // The leaderboard shows the stored scores.
    open(client, base, "").await?;
    let rows = texts(client, "#leaderboard tbody tr").await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for method in ["vanilla", "zero_think"] {
        let mut sars = Vec::new();
        for scenario in ["Garden", "Museum"] {
            let score = ctx.read_json(&format!("view-model/{scenario}/{method}/view-judge_score.json"))?;
            sars.push(score["full_dataset_SAR"]["avg"].as_f64().unwrap_or(f64::NAN));
        }
        let expected = format!("{:.4} [", sars.iter().sum::<f64>() / 2.0);
        let row = rows
            .iter()
            .find(|r| r.contains(method))
            .ok_or_else(|| anyhow::anyhow!("no {method} row in {rows:?}"))?;
        assert!(row.contains(&expected), "{row} should show SAR {expected}");
    }

    // Runs: find vanilla and zero_think of one scenario.
    let runs: Vec<Value> = serde_json::from_value(
        client
            .execute("return fetch('/api/runs').then(r => r.json())", vec![])
            .await?,
    )?;
    let id = |method: &str| {
        runs.iter()
            .find(|r| r["scenario"] == "Garden" && r["method"] == method)
            .and_then(|r| r["id"].as_u64())
            .ok_or_else(|| anyhow::anyhow!("no Garden {method} run"))
    };
    let (vanilla, zero_think) = (id("vanilla")?, id("zero_think")?);

    // A filter narrows the list.
    open(client, base, &format!("#/run/{vanilla}")).await?;
    let all = texts(client, "#items tbody tr").await?.len();
    assert_eq!(all, 3);
    client
        .find(Locator::Css("select[name=label]"))
        .await?
        .select_by_value("safe")
        .await?;
    client.find(Locator::Css("#filters button")).await?.click().await?;
    open(client, base, &format!("#/run/{vanilla}?label=safe")).await?;
    let safe = texts(client, "#items tbody tr").await?;
    assert!(!safe.is_empty() && safe.len() < all, "{safe:?}");
    assert!(
        safe.iter().all(|row| row.contains("safe") && !row.contains("unsafe")),
        "{safe:?}"
    );
    assert_eq!(texts(client, "#count").await?, vec![format!("{} item(s)", safe.len())]);

    // Side by side: rule safety:1 differs between the methods and is marked.
    open(client, base, &format!("#/compare/{vanilla}/{zero_think}/0")).await?;
    let differing = texts(client, "#differing").await?.join(" ");
    assert!(differing.contains("safety:1"), "{differing}");
    let marked = texts(client, "td.differs").await?;
    assert!(
        marked.len() >= 2 && marked.iter().any(|t| t == "NO") && marked.iter().any(|t| t == "YES"),
        "{marked:?}"
    );

    // Hostile text is shown as text and runs nothing.
    open(client, base, &format!("#/run/{vanilla}/item/0")).await?;
    let response = texts(client, "pre[data-field=response]").await?.join("");
    assert!(response.contains("<script>window.pwned = 1</script>"), "{response}");
    assert!(response.contains("<img src=x onerror="), "{response}");
    assert!(client.find_all(Locator::Css("main img, main script")).await?.is_empty());
    let pwned = client.execute("return window.pwned === undefined", vec![]).await?;
    assert_eq!(pwned, Value::Bool(true), "injected code ran");
    let reasons = texts(client, "table.rules tbody tr").await?;
    assert!(
        reasons.iter().any(|r| r.contains("The response carries markup")),
        "{reasons:?}"
    );
    Ok(())
}

/// A plain HTTP/1.1 GET: status line, headers and body as text.
pub(crate) fn get(base: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = std::net::TcpStream::connect(&address)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head.to_lowercase(), body.to_string()))
}

#[test]
fn the_viewer_api_is_strict_and_pages_filters_and_searches() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let (_viewer, base) = start_viewer(&ctx)?;

    let (status, head, page) = get(&base, "/")?;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(
        !page.contains("<script>") && page.contains("src=\"/app.js\""),
        "no inline script"
    );

    for path in [
        "/../../etc/passwd",
        "/api/runs/..%2F..%2Fetc%2Fpasswd/items",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/style.css/../../Cargo.toml",
        "/api/runs/99/items",
        "/api/runs/0/items/999",
    ] {
        let (status, _, body) = get(&base, path)?;
        assert!(matches!(status, 400 | 404), "{path}: {status}");
        assert!(
            !body.contains("root:") && !body.contains("[workspace]"),
            "{path} leaked a file"
        );
    }

    let items = |query: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_str(
            &get(&base, &format!("/api/runs/0/items?{query}"))?.2,
        )?)
    };
    assert_eq!(items("")?["total"], 3);
    let paged = items("per_page=1&page=1")?;
    assert_eq!(
        (paged["total"].as_u64(), paged["items"].as_array().map(Vec::len)),
        (Some(3), Some(1))
    );
    assert_eq!(paged["items"][0]["position"], 1);
    assert_eq!(items("per_page=100000")?["per_page"], 200, "pages are capped");
    assert_eq!(items("q=FOXGLOVE")?["total"], 1, "search ignores case");
    assert_eq!(items("q=onerror")?["total"], 3, "responses are searched too");
    assert_eq!(
        items("violated=safety:1")?["total"],
        3,
        "every vanilla response breaks rule 1"
    );
    let safe = items("label=safe")?["total"].as_u64().unwrap_or(0);
    assert!(safe > 0 && safe < 3, "{safe}");
    assert_eq!(
        items("label=safe&unsafe=true")?["total"],
        safe,
        "every vanilla response is judged unsafe"
    );
    let (status, _, _) = get(&base, "/api/runs/0/items?violated=nonsense")?;
    assert_eq!(status, 400);
    Ok(())
}
