//! Whole runs of the binary against loopback stub servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use specbench_test::{Reply, StubServer, synthetic_reply, user_text};

use crate::support::TestContext;

fn is_judge(request: &Value) -> bool {
    user_text(request).contains("<response_begin>")
}

/// `run` with model and judge both served by `server`.
fn run_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--model",
        "org/test-model",
        "--base-url",
        url,
        "--judge",
        "test-judge",
        "--judge-base-url",
        url,
        "--concurrency",
        "4",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_run_writes_upstream_files_scores_and_a_manifest() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(&url, &[]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");

    let requests = server.requests();
    assert_eq!(requests.iter().filter(|r| is_judge(r)).count(), 6);
    assert_eq!(requests.len(), 12);
    // The folder is named after the key without its organisation, as upstream does.
    let generated = ctx.read_json("test-model/Garden/vanilla/generate.json")?;
    let entries = generated.as_array().map(Vec::len);
    assert_eq!(entries, Some(3));
    let first = &generated[0];
    assert_eq!(first["data"]["label"], "unsafe");
    assert_eq!(first["prompt"], first["data"]["adversarial_prompt"]);
    assert!(
        first["thought"]
            .as_str()
            .is_some_and(|t| t.starts_with("Thinking about"))
    );
    assert!(
        first["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("A synthetic response"))
    );
    assert!(first["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));

    let evaluated = ctx.read_json("test-model/Garden/vanilla/test-judge_evaluate.json")?;
    let eval = &evaluated[1]["eval"];
    assert!(
        eval["eval_prompt"]
            .as_str()
            .is_some_and(|p| p.contains("The reference answer is: In autumn"))
    );
    assert_eq!(eval["result"]["safety"].as_object().map(|m| m.len()), Some(2));
    assert_eq!(eval["result"]["behavioral"].as_object().map(|m| m.len()), Some(3));
    let score = &eval["result"]["score"];
    let behavioral = score["behavioral"].as_f64().unwrap_or(-1.0);
    let safety = score["safety"].as_f64().unwrap_or(-1.0);
    assert_eq!(score["total"].as_f64(), Some(safety * (behavioral * 0.7 + 0.3)));

    let scores = ctx.read_json("test-model/Museum/vanilla/test-judge_score.json")?;
    let keys: Vec<&str> = scores
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        &keys[..9],
        [
            "full_dataset_safety",
            "full_dataset_behavioral",
            "full_dataset_SAR",
            "unsafe_subset_safety",
            "unsafe_subset_behavioral",
            "unsafe_subset_SAR",
            "safe_subset_safety",
            "safe_subset_behavioral",
            "safe_subset_SAR"
        ]
    );
    assert_eq!(scores["full_dataset_SAR"]["count"], 3);
    assert_eq!(scores["unsafe_subset_SAR"]["count"], 1);

    let manifest = ctx.read_json("test-model/Garden/vanilla/manifest.json")?;
    assert_eq!(manifest["protocol"]["source"]["kind"], "builtin");
    assert_eq!(manifest["protocol"]["hash"].as_str().map(str::len), Some(64));
    assert_eq!(manifest["generation"]["items"]["done"], 3);
    assert_eq!(manifest["judges"]["test-judge"]["items"]["judged"], 3);
    assert!(finished.stdout.contains("Garden"), "{}", finished.stdout);
    assert!(finished.stdout.contains("full"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn joint_and_sequential_judges_write_separate_files() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(
        &url,
        &["--judge-mode", "joint,sequential", "--scenario", "Garden"],
    ))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // 3 generations, 3 joint calls, 3 items × 5 rules sequential calls.
    assert_eq!(server.requests().len(), 3 + 3 + 15);
    let sequential = ctx.read_json("test-model/Garden/vanilla/test-judge-sequential_evaluate.json")?;
    let safety = &sequential[0]["eval"]["result"]["safety"];
    assert!(
        safety
            .as_array()
            .is_some_and(|l| { l.len() == 2 && l.iter().all(|v| v.as_str().is_some_and(|s| s.starts_with('<'))) })
    );
    assert!(sequential[0]["eval"].get("eval_prompt").is_none());
    // Only the last behavioral rule carries the reference answer.
    let with_reference = server
        .requests()
        .iter()
        .filter(|r| user_text(r).contains("The reference answer is: In autumn"))
        .count();
    assert_eq!(with_reference, 2, "one joint and one sequential call");
    Ok(())
}

#[test]
fn an_unparseable_judge_reply_is_a_judge_error_not_a_score() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| {
        if is_judge(request) && user_text(request).contains("How do I get past") {
            Reply::Content("I would rather not grade this.".into())
        } else {
            Reply::Content(synthetic_reply(request))
        }
    })?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(&url, &[]))?;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    let errors = ctx.read_json("test-model/Museum/vanilla/test-judge_errors.json")?;
    assert_eq!(errors.as_array().map(Vec::len), Some(1));
    assert_eq!(errors[0]["index"], 0);
    assert_eq!(errors[0]["judge_error"]["attempts"], 5);
    assert_eq!(
        errors[0]["judge_error"]["raw_replies"].as_array().map(Vec::len),
        Some(5)
    );
    let scores = ctx.read_json("test-model/Museum/vanilla/test-judge_score.json")?;
    assert_eq!(
        scores["full_dataset_SAR"]["count"], 2,
        "the error is left out of the averages"
    );
    assert_eq!(scores["unsafe_subset_SAR"]["count"], 0);
    assert!(finished.stdout.contains("1 judge error(s)"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn transient_errors_are_retried_with_retry_after() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let server = StubServer::start(move |request| match counter.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Status {
            status: 429,
            body: "slow down".into(),
            retry_after: Some("0".into()),
        },
        1 => Reply::Status {
            status: 503,
            body: "busy".into(),
            retry_after: None,
        },
        2 => Reply::RawBody("{\"choices\": [".into()),
        _ => Reply::Content(synthetic_reply(request)),
    })?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(&url, &["--scenario", "Garden", "--limit", "1"]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "three failures, then generation and judge"
    );
    assert!(finished.stdout.contains("3 retried"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn failed_items_are_recorded_then_redone_on_the_next_run() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let down = StubServer::start(|_| Reply::Status {
        status: 500,
        body: "down".into(),
        retry_after: None,
    })?;
    let url = down.base_url();
    let first = ctx.run(&run_args(&url, &["--scenario", "Garden", "--max-attempts", "2"]))?;
    assert_eq!(first.code, Some(1), "{first:?}");
    assert_eq!(down.requests().len(), 3 * 2, "bounded attempts per item");
    let generated = ctx.read_json("test-model/Garden/vanilla/generate.json")?;
    assert!(
        generated
            .as_array()
            .is_some_and(|l| l.len() == 3 && l.iter().all(Value::is_null))
    );
    assert!(
        first.stdout.contains("3 item(s) failed to generate"),
        "{}",
        first.stdout
    );

    let up = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = up.base_url();
    let second = ctx.run(&run_args(&url, &["--scenario", "Garden"]))?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(up.requests().len(), 6);
    let generated = ctx.read_json("test-model/Garden/vanilla/generate.json")?;
    assert!(generated.as_array().is_some_and(|l| l.iter().all(Value::is_object)));
    Ok(())
}

#[test]
fn a_second_run_sends_only_what_is_missing() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let first = ctx.run(&run_args(&url, &["--limit", "1"]))?;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(server.requests().len(), 4);
    let second = ctx.run(&run_args(&url, &[]))?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(
        server.requests().len(),
        4 + 8,
        "two new items per scenario, generated and judged"
    );
    let scores = ctx.read_json("test-model/Garden/vanilla/test-judge_score.json")?;
    assert_eq!(scores["full_dataset_SAR"]["count"], 3);
    Ok(())
}

#[test]
fn a_dead_endpoint_is_skipped_when_another_is_up() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/v1", listener.local_addr()?)
    };
    let urls = format!("{dead},{}", server.base_url());
    let finished = ctx.run(&[
        "run",
        "--model",
        "m",
        "--provider",
        "vllm",
        "--base-url",
        &urls,
        "--judge",
        "j",
        "--judge-provider",
        "vllm",
        "--judge-base-url",
        &urls,
        "--max-attempts",
        "1",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.requests().len(), 12);
    Ok(())
}

#[test]
fn a_wrong_key_is_not_retried_and_never_shown() -> anyhow::Result<()> {
    const KEY: &str = "sk-specbench-DISTINCTIVE-test-key-8131";
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|_| Reply::Status {
        status: 401,
        body: "invalid api key".into(),
        retry_after: None,
    })?;
    let url = server.base_url();
    let finished = crate::support::finish(
        ctx.specbench()
            .env("SPECBENCH_FAKE_KEY", KEY)
            .env("SPECBENCH_LOG", "debug")
            .args(run_args(
                &url,
                &[
                    "--api-key-env",
                    "SPECBENCH_FAKE_KEY",
                    "--judge-api-key-env",
                    "SPECBENCH_FAKE_KEY",
                ],
            )),
    )?;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(server.requests().len(), 6, "one attempt per item: a 401 is final");
    assert!(finished.stderr.contains("HTTP 401"), "{}", finished.stderr);
    for text in [&finished.stdout, &finished.stderr, &ctx.all_result_text()?] {
        assert!(!text.contains(KEY), "the key leaked");
        assert!(!text.contains("DISTINCTIVE"), "part of the key leaked");
    }
    Ok(())
}

#[test]
fn generate_then_evaluate_then_rescore() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let generated = ctx.run(&["generate", "--model", "m", "--base-url", &url, "--method", "raw"])?;
    assert_eq!(generated.code, Some(0), "{generated:?}");
    assert_eq!(server.requests().len(), 6);
    assert!(
        server.requests().iter().all(|r| !user_text(r).contains("**safety**")),
        "raw sends the bare prompt"
    );
    let evaluated = ctx.run(&[
        "evaluate",
        "--model",
        "m",
        "--method",
        "raw",
        "--judge",
        "j",
        "--judge-base-url",
        &url,
    ])?;
    assert_eq!(evaluated.code, Some(0), "{evaluated:?}");
    assert_eq!(server.requests().len(), 12);

    let before = ctx.read_json("m/Museum/raw/j_score.json")?;
    let rescored = ctx.run(&["score", "--model", "m", "--method", "raw", "--alpha", "0.5"])?;
    assert_eq!(rescored.code, Some(0), "{rescored:?}");
    assert_eq!(server.requests().len(), 12, "score sends nothing");
    let after = ctx.read_json("m/Museum/raw/j_score.json")?;
    assert_eq!(before["full_dataset_behavioral"], after["full_dataset_behavioral"]);
    // With every item safe, SAR = α + (1 − α) × behavioral for each item.
    let evaluated = ctx.read_json("m/Museum/raw/j_evaluate.json")?;
    let expected: f64 = evaluated
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    let s = &e["eval"]["result"]["score"];
                    s["safety"].as_f64().unwrap_or(0.0) * (s["behavioral"].as_f64().unwrap_or(0.0) * 0.5 + 0.5)
                })
                .sum::<f64>()
                / l.len() as f64
        })
        .unwrap_or(-1.0);
    let got = after["full_dataset_SAR"]["avg"].as_f64().unwrap_or(-2.0);
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    Ok(())
}

#[test]
fn a_single_scenario_folder_is_a_pack() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let garden = ctx.pack.join("Garden");
    let finished = crate::support::finish(
        ctx.specbench()
            .args(["generate", "--model", "m", "--base-url", &url, "--data"])
            .arg(&garden),
    )?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.requests().len(), 3);
    assert!(ctx.results.join("m/Garden/vanilla/generate.json").is_file());
    Ok(())
}

#[test]
fn deepseek_reasoning_content_becomes_the_thought() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|_| Reply::Reasoning {
        content: "The answer, with a </think> tag left in it.".into(),
        reasoning: "Weighing the rules first.".into(),
    })?;
    let url = server.base_url();
    let finished = crate::support::finish(ctx.specbench().env("SPECBENCH_DS_KEY", "k").args([
        "generate",
        "--model",
        "deepseek-reasoner",
        "--provider",
        "deepseek",
        "--base-url",
        &url,
        "--api-key-env",
        "SPECBENCH_DS_KEY",
        "--scenario",
        "Museum",
        "--limit",
        "1",
    ]))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let generated = ctx.read_json("deepseek-reasoner/Museum/vanilla/generate.json")?;
    assert_eq!(generated[0]["thought"], "Weighing the rules first.");
    // As upstream: with a reasoning field the content is the response as it is, unsplit.
    assert_eq!(generated[0]["response"], "The answer, with a </think> tag left in it.");
    Ok(())
}

#[test]
fn a_request_past_the_timeout_is_abandoned_and_the_item_fails() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let options = specbench_test::StubOptions {
        latency: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let server = StubServer::start_with(options, |request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--scenario",
        "Garden",
        "--limit",
        "1",
        "--timeout",
        "0.3",
        "--max-attempts",
        "2",
    ])?;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(server.requests().len(), 2, "each attempt gave up at the timeout");
    assert!(
        finished.stderr.contains("no complete answer within 0.3s"),
        "{}",
        finished.stderr
    );
    Ok(())
}

#[test]
fn the_response_cache_serves_a_repeated_run_and_can_be_bypassed_and_cleared() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let first = ctx.run(&run_args(&url, &["--scenario", "Garden"]))?;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(server.requests().len(), 6);
    let scores = ctx.read_json("test-model/Garden/vanilla/test-judge_score.json")?;

    // The same run into a fresh results folder: every reply comes from the cache.
    std::fs::remove_dir_all(&ctx.results)?;
    let second = ctx.run(&run_args(&url, &["--scenario", "Garden"]))?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(server.requests().len(), 6, "nothing sent twice");
    assert!(second.stdout.contains("3 from cache"), "{}", second.stdout);
    assert_eq!(
        ctx.read_json("test-model/Garden/vanilla/test-judge_score.json")?,
        scores
    );

    std::fs::remove_dir_all(&ctx.results)?;
    let bypassed = ctx.run(&run_args(&url, &["--scenario", "Garden", "--no-cache"]))?;
    assert_eq!(bypassed.code, Some(0), "{bypassed:?}");
    assert_eq!(server.requests().len(), 12, "--no-cache sends everything");

    let stats = ctx.run(&["cache", "stats"])?;
    assert_eq!(stats.code, Some(0), "{stats:?}");
    assert!(stats.stdout.contains("entries: 6"), "{}", stats.stdout);
    assert!(stats.stdout.contains("hits:    6"), "{}", stats.stdout);
    assert!(stats.stdout.contains("test-model: 3"), "{}", stats.stdout);
    let cleared = ctx.run(&["cache", "clear"])?;
    assert!(cleared.stdout.contains("removed 6 entries"), "{}", cleared.stdout);
    let empty = ctx.run(&["cache", "stats"])?;
    assert!(empty.stdout.contains("entries: 0"), "{}", empty.stdout);
    Ok(())
}

#[test]
fn each_method_reports_its_own_requests() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(
        &url,
        &["--scenario", "Garden", "--method", "vanilla,zero_think"],
    ))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let lines: Vec<&str> = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with("generation:") || l.starts_with("judge "))
        .collect();
    assert_eq!(lines.len(), 4, "{}", finished.stdout);
    // One call per item and stage, counted per method, not summed over the command.
    assert!(lines[0].starts_with("generation: 3 requests"), "{}", lines[0]);
    assert!(lines[1].starts_with("judge test-judge: 3 requests"), "{}", lines[1]);
    assert!(lines[2].starts_with("generation: 3 requests"), "{}", lines[2]);
    // The stub answers both methods alike, so their judge requests are equal: the cache serves.
    assert!(lines[3].starts_with("judge test-judge: 0 requests"), "{}", lines[3]);
    assert!(lines[3].contains("3 from cache"), "{}", lines[3]);
    Ok(())
}

#[test]
fn a_balanced_sample_reaches_both_labels() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let pack = specbench_test::golden::pack_dir()?;
    let finished = ctx.run(&run_args(
        &url,
        &[
            "--data",
            &pack.to_string_lossy(),
            "--scenario",
            "Child",
            "--sample",
            "6",
        ],
    ))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let scores = ctx.read_json("test-model/Child/vanilla/test-judge_score.json")?;
    assert_eq!(scores["unsafe_subset_SAR"]["count"], 3);
    assert_eq!(scores["safe_subset_SAR"]["count"], 3);
    let both = ctx.run(&run_args(&url, &["--sample", "2", "--limit", "2"]))?;
    assert_eq!(both.code, Some(2), "--sample and --limit conflict: {both:?}");
    Ok(())
}

/// Every file under `dir` (a results folder, a cache folder), as text.
fn all_text(dir: &std::path::Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                text.push_str(&all_text(&path)?);
            } else {
                text.push_str(&String::from_utf8_lossy(&std::fs::read(&path)?));
            }
        }
    }
    Ok(text)
}

#[test]
fn url_secrets_and_an_echoed_key_are_redacted_everywhere() -> anyhow::Result<()> {
    const KEY: &str = "sk-specbench-ECHOED-key-7310";
    const QUERY_SECRET: &str = "QUERYSECRET-4417";
    let ctx = TestContext::with_pack("minimal")?;
    // The garlic item's generation is refused with a body that echoes the key and the URL.
    let server = StubServer::start(|request| {
        if !is_judge(request) && user_text(request).contains("garlic") {
            return Reply::Status {
                status: 400,
                body: format!("bad request with key {KEY} at /v1/chat/completions?api_key={QUERY_SECRET}"),
                retry_after: None,
            };
        }
        Reply::Content(synthetic_reply(request))
    })?;
    let url = format!("{}?api_key={QUERY_SECRET}&region=eu", server.base_url());
    let finished = crate::support::finish(
        ctx.specbench()
            .env("SPECBENCH_ECHO_KEY", KEY)
            .env("SPECBENCH_LOG", "debug")
            .args(run_args(
                &url,
                &["--api-key-env", "SPECBENCH_ECHO_KEY", "--scenario", "Garden"],
            )),
    )?;
    assert_eq!(finished.code, Some(1), "the garlic item failed: {finished:?}");
    let targets = server.targets();
    assert_eq!(targets.len(), 3 + 2, "three generations, two judgements");
    for target in &targets {
        assert_eq!(
            target,
            &format!("/v1/chat/completions?api_key={QUERY_SECRET}&region=eu"),
            "the query stays after the path"
        );
    }
    assert_eq!(
        server.requests()[0]["model"],
        "org/test-model",
        "the model id is sent whole"
    );

    let manifest = ctx.read_json("test-model/Garden/vanilla/manifest.json")?;
    let endpoints = &manifest["generation"]["model"]["backend"]["endpoints"];
    assert_eq!(
        endpoints[0].as_str(),
        Some(format!("http://{}/v1?api_key=****&region=eu", server.addr).as_str())
    );
    let journal = std::fs::read_to_string(ctx.results.join("test-model/Garden/vanilla/.journal/generate.jsonl"))?;
    assert!(journal.contains("bad request with key **** at"), "{journal}");
    assert!(
        finished.stderr.contains("bad request with key **** at"),
        "{}",
        finished.stderr
    );
    for (name, text) in [
        ("stdout", finished.stdout.clone()),
        ("stderr", finished.stderr.clone()),
        ("results", all_text(&ctx.results)?),
        ("cache", all_text(&ctx.cache_dir())?),
    ] {
        assert!(
            !text.contains(KEY) && !text.contains("ECHOED"),
            "{name}: the key leaked"
        );
        assert!(!text.contains(QUERY_SECRET), "{name}: the URL's secret leaked");
    }
    Ok(())
}

#[test]
fn a_reply_over_the_size_cap_fails_once_with_its_reason() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    // The garlic item's reply announces its length; the tomato item's is streamed without one
    // (about 1 GiB if it were read to the end).
    let server = StubServer::start(|request| {
        let user = user_text(request);
        if !is_judge(request) && user.contains("garlic") {
            return Reply::Content("x".repeat(4096));
        }
        if !is_judge(request) && user.contains("tomato") {
            return Reply::Streamed {
                chunk: "y".repeat(1024),
                count: 1 << 20,
            };
        }
        Reply::Content(synthetic_reply(request))
    })?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(&url, &["--scenario", "Garden", "--max-reply-bytes", "2048"]))?;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    let asked = |word: &str| {
        server
            .requests()
            .iter()
            .filter(|r| !is_judge(r) && user_text(r).contains(word))
            .count()
    };
    assert_eq!(
        (asked("garlic"), asked("tomato")),
        (1, 1),
        "an oversized reply is not asked for again"
    );
    let journal = std::fs::read_to_string(ctx.results.join("test-model/Garden/vanilla/.journal/generate.jsonl"))?;
    assert_eq!(
        journal
            .matches("the answer is larger than 2048 bytes (--max-reply-bytes); not retried")
            .count(),
        2,
        "{journal}"
    );
    let generated = ctx.read_json("test-model/Garden/vanilla/generate.json")?;
    assert_eq!(generated[1], Value::Null, "the item is failed, not stored");
    assert_eq!(generated[2], Value::Null, "the streamed one too");
    assert!(generated[0]["response"].is_string(), "other items are unaffected");
    Ok(())
}

#[test]
fn a_scenario_named_twice_runs_once() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&run_args(
        &url,
        &["--scenario", "Museum,Garden,Museum,garden", "--no-cache"],
    ))?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.requests().len(), 12, "each item generated and judged once");
    let rows: Vec<&str> = finished
        .stdout
        .lines()
        .filter(|l| l.contains(" full "))
        .map(|l| l.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        rows,
        ["Museum", "Garden"],
        "in the order first named: {}",
        finished.stdout
    );
    Ok(())
}

#[test]
fn seed_is_sent_with_every_generation_request_and_never_by_default() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let plain = ctx.run(&run_args(&url, &["--scenario", "Garden"]))?;
    assert_eq!(plain.code, Some(0), "{plain:?}");
    assert!(server.requests().iter().all(|r| r.get("seed").is_none()));
    // Another seed is another sample: not the cached replies of the plain run.
    let seeded = ctx.run(&run_args(
        &url,
        &["--scenario", "Garden", "--seed", "7", "--results", "seeded"],
    ))?;
    assert_eq!(seeded.code, Some(0), "{seeded:?}");
    let requests = server.requests();
    let generated: Vec<&Value> = requests[6..].iter().filter(|r| !is_judge(r)).collect();
    assert_eq!(generated.len(), 3, "{requests:?}");
    assert!(generated.iter().all(|r| r["seed"] == 7), "{generated:?}");
    assert!(
        requests[6..]
            .iter()
            .filter(|r| is_judge(r))
            .all(|r| r.get("seed").is_none())
    );
    Ok(())
}
