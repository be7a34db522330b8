//! `specbench view` in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! both started by the test on loopback, over results the test makes itself.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Stdio};
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
    let (guard, url, _) = start_viewer_with(ctx, &[], &[])?;
    Ok((guard, url))
}

/// A viewer over `result` with more flags and environment: it, the URL it printed (with its
/// `?token=` if it printed one), and its stderr, to read once it is stopped.
pub(crate) fn start_viewer_with(
    ctx: &TestContext,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Guard, String, ChildStderr)> {
    let mut child = ctx
        .specbench()
        .args(["view", "result", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .ok_or_else(|| anyhow::anyhow!("viewer said {line:?}"))?
        .to_string();
    Ok((guard, url, stderr))
}

/// Stops the viewer and returns all it wrote to stderr.
fn stop(guard: Guard, mut stderr: ChildStderr) -> anyhow::Result<String> {
    drop(guard);
    let mut text = String::new();
    stderr.read_to_string(&mut text)?;
    Ok(text)
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
    drawn(client, if route.is_empty() { "#/" } else { route }).await
}

/// Waits until the page says it has drawn `route`. A script that fails counts as not yet: the
/// page may still be moving on (as after the token exchange).
async fn drawn(client: &Client, route: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let ready = client
            .execute("return document.body.dataset.ready || null", vec![])
            .await;
        if matches!(ready, Ok(Value::String(ref drawn)) if drawn == route) {
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

/// Bound to every address, the viewer wants its token: without it the page shows nothing and
/// the API answers 401; the printed URL logs in through the cookie and the leaderboard loads.
#[test]
fn the_viewer_off_loopback_in_a_real_browser() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let (_viewer, url, _) = start_viewer_with(&ctx, &["--host", "0.0.0.0"], &[])?;
    let (base, token) = url
        .split_once("/?token=")
        .ok_or_else(|| anyhow::anyhow!("no token in {url}"))?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (_driver, client) = browser().await?;
        let outcome = check_token(&client, base, &url, token).await;
        let _ = client.close().await;
        outcome
    })
}

async fn check_token(client: &Client, base: &str, url: &str, token: &str) -> anyhow::Result<()> {
    let status = "return fetch('/api/runs').then(r => r.status)";
    client.goto(&format!("{base}/")).await?;
    let body = texts(client, "body").await?.join("");
    assert!(body.contains("Token required"), "{body}");
    assert!(!body.contains("view-model") && !body.contains("Garden"), "{body}");
    assert!(client.find_all(Locator::Css("#leaderboard")).await?.is_empty());
    assert_eq!(client.execute(status, vec![]).await?, json!(401));

    client.goto(url).await?;
    drawn(client, "#/").await?;
    let rows = texts(client, "#leaderboard tbody tr").await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let address = client.current_url().await?.to_string();
    assert!(!address.contains(token), "the token left the address bar: {address}");
    assert_eq!(client.execute(status, vec![]).await?, json!(200));
    let cookies = client.execute("return document.cookie", vec![]).await?;
    assert_eq!(cookies, json!(""), "scripts cannot read the HttpOnly cookie");
    Ok(())
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

/// A plain HTTP/1.1 GET: status line, headers (lower-cased) and body as text.
pub(crate) fn get(base: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    get_with(base, path, &[])
}

/// `get` with more header lines; a `Host` among them replaces the one naming `base`.
pub(crate) fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String, String)> {
    use std::io::Write;
    let address = base.trim_start_matches("http://").split('/').next().unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(address)?;
    let mut head = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n")?;
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

/// The `Set-Cookie` header line of a lower-cased head, and its `name=value`.
fn set_cookie(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().find_map(|l| l.strip_prefix("set-cookie: "))?;
    Some((line, line.split(';').next()?))
}

/// Security headers on an answer, refusals included.
fn assert_hardened(head: &str) {
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
}

#[test]
fn off_loopback_a_random_token_is_required() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let (viewer, url, stderr) = start_viewer_with(&ctx, &["--host", "0.0.0.0"], &[])?;
    let (base, token) = url
        .split_once("/?token=")
        .ok_or_else(|| anyhow::anyhow!("no token in {url}"))?;
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );

    // Nothing without the token: not the API, not the page, not its script.
    for path in ["/api/runs", "/api/runs/0/items/0", "/api/leaderboard", "/", "/app.js"] {
        let (status, head, body) = get(base, path)?;
        assert_eq!(status, 401, "{path}");
        assert_hardened(&head);
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(
            !body.contains("view-model") && !body.contains("app.js") && !body.contains("use strict"),
            "{path}: {body}"
        );
    }
    let wrong = "0".repeat(64);
    for header in [
        format!("Bearer {wrong}"),
        format!("Basic {token}"),
        format!("Bearer {token}0"),
    ] {
        let (status, _, body) = get_with(base, "/api/runs", &[("Authorization", &header)])?;
        assert_eq!(status, 401, "{header}");
        assert!(!body.contains("view-model"));
    }
    let (status, head, _) = get(base, &format!("/?token={wrong}"))?;
    assert_eq!(status, 401);
    assert!(set_cookie(&head).is_none(), "{head}");

    // A Bearer header: bound to every address, any Host is answered once the token is there.
    let bearer = format!("Bearer {token}");
    let (status, head, body) = get_with(base, "/api/runs", &[("Authorization", &bearer)])?;
    assert_eq!(status, 200, "{body}");
    assert_hardened(&head);
    assert!(body.contains("view-model"), "{body}");
    let (status, _, _) = get_with(
        base,
        "/api/runs",
        &[("Authorization", &bearer), ("Host", "evil.example")],
    )?;
    assert_eq!(status, 200);

    // `?token=` is exchanged for a cookie the page's requests then carry.
    let (status, head, body) = get(base, &format!("/?token={token}"))?;
    assert_eq!(status, 200);
    assert_hardened(&head);
    assert!(
        !body.contains("view-model") && body.contains("http-equiv=\"refresh\""),
        "{body}"
    );
    let (line, pair) = set_cookie(&head).ok_or_else(|| anyhow::anyhow!("no cookie in {head}"))?;
    for attribute in ["httponly", "samesite=strict", "path=/"] {
        assert!(
            line.split("; ").any(|a| a == attribute),
            "{attribute} missing in {line}"
        );
    }
    let (status, _, body) = get_with(base, "/api/runs", &[("Cookie", pair)])?;
    assert_eq!(status, 200);
    assert!(body.contains("view-model"), "{body}");
    let (name, _) = pair.split_once('=').unwrap_or_default();
    let (status, _, _) = get_with(base, "/api/runs", &[("Cookie", &format!("{name}={wrong}"))])?;
    assert_eq!(status, 401);

    let stderr = stop(viewer, stderr)?;
    assert!(
        !stderr.contains(token),
        "the token is printed only in the URL: {stderr}"
    );
    Ok(())
}

#[test]
fn a_token_from_the_flag_or_the_environment() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let auth = |token: &str| format!("Bearer {token}");

    // --token turns the token on on loopback too, and is not printed.
    let given = "flag-token-0123456789";
    let (viewer, url, stderr) = start_viewer_with(&ctx, &["--token", given], &[])?;
    assert!(!url.contains("token"), "{url}");
    assert_eq!(get(&url, "/api/runs")?.0, 401);
    assert_eq!(get_with(&url, "/api/runs", &[("Authorization", &auth(given))])?.0, 200);
    assert!(!stop(viewer, stderr)?.contains(given));

    // SPECBENCH_VIEW_TOKEN stands in for a random one off loopback.
    let from_env = "env-token-0123456789";
    let (_viewer, url, _) = start_viewer_with(&ctx, &["--host", "0.0.0.0"], &[("SPECBENCH_VIEW_TOKEN", from_env)])?;
    assert!(!url.contains("token"), "{url}");
    assert_eq!(
        get_with(&url, "/api/runs", &[("Authorization", &auth(from_env))])?.0,
        200
    );
    assert_eq!(get_with(&url, "/api/runs", &[("Authorization", &auth(given))])?.0, 401);

    // A weak token is refused, without being repeated.
    let weak = "hunter2";
    let finished = ctx.run(&["view", "result", "--port", "0", "--token", weak])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(finished.stderr.contains("at least 16"), "{}", finished.stderr);
    assert!(!finished.stderr.contains(weak), "{}", finished.stderr);
    Ok(())
}

#[test]
fn no_token_warns_that_anyone_can_read_everything() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    // It wins over a token in the environment, as a flag does.
    let (viewer, url, stderr) = start_viewer_with(
        &ctx,
        &["--host", "0.0.0.0", "--no-token"],
        &[("SPECBENCH_VIEW_TOKEN", "env-token-0123456789")],
    )?;
    assert!(!url.contains("token"), "{url}");
    let (status, _, body) = get(&url, "/api/runs")?;
    assert_eq!(status, 200);
    assert!(body.contains("view-model"));
    let stderr = stop(viewer, stderr)?;
    assert!(
        stderr.contains("WARNING") && stderr.contains("Anyone who can reach"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_viewer_answers_only_to_its_own_host_names() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    make_results(&ctx)?;
    let (_viewer, base) = start_viewer(&ctx)?;
    let port = base
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for host in ["evil.example", "evil.example:8350", "localhost.evil.example"] {
        let (status, head, body) = get_with(&base, "/api/runs", &[("Host", host)])?;
        assert_eq!(status, 403, "{host}");
        assert_hardened(&head);
        assert!(!body.contains("view-model"), "{body}");
        assert_eq!(get_with(&base, "/", &[("Host", host)])?.0, 403, "{host}");
    }
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "127.0.0.1".into(),
        "[::1]".into(),
    ] {
        let (status, _, body) = get_with(&base, "/api/runs", &[("Host", &host)])?;
        assert_eq!(status, 200, "{host}");
        assert!(body.contains("view-model"));
    }

    let (_viewer, base) = {
        let (guard, url, _) = start_viewer_with(
            &ctx,
            &["--allow-host", "viewer.example", "--allow-host", "other.example"],
            &[],
        )?;
        (guard, url)
    };
    for host in ["viewer.example", "Viewer.Example:8080", "other.example"] {
        let (status, _, body) = get_with(&base, "/api/runs", &[("Host", host)])?;
        assert_eq!(status, 200, "{host}");
        assert!(body.contains("view-model"));
    }
    assert_eq!(get_with(&base, "/api/runs", &[("Host", "evil.example")])?.0, 403);
    Ok(())
}
