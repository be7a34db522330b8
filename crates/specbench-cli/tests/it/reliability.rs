//! Runs that survive faults and kills: the fault-injection suite, kill -9 and resume, secrets,
//! judge-error retries, shards and merge. Figures are printed for the record
//! (`cargo test -p specbench-cli --test it reliability -- --nocapture`).

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use specbench_test::faults::{Fault, FaultMix};
use specbench_test::{Reply, StubOptions, StubServer, golden, synthetic_reply, user_text};

use crate::support::{Finished, TestContext, finish};

/// The official pack's Child and Travel scenarios, 150 items each.
fn three_hundred_items(url: &str) -> anyhow::Result<Vec<String>> {
    let pack = golden::pack_dir()?;
    Ok([
        "run",
        "--data",
        &pack.to_string_lossy(),
        "--scenario",
        "Child,Travel",
        "--limit",
        "150",
        "--model",
        "fault-model",
        "--base-url",
        url,
        "--judge",
        "fault-judge",
        "--judge-base-url",
        url,
        "--concurrency",
        "16",
        "--timeout",
        "1",
        "--max-attempts",
        "6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect())
}

fn run_owned(ctx: &TestContext, args: &[String]) -> anyhow::Result<Finished> {
    finish(ctx.specbench().args(args))
}

/// Journal lines of one file, by `status`, and the set of indices or keys seen twice.
fn journal(path: &Path, id: &str) -> anyhow::Result<(BTreeMap<String, usize>, Vec<String>)> {
    let text = std::fs::read_to_string(path)?;
    let mut statuses = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = Vec::new();
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)?;
        *statuses
            .entry(record["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        let id = record[id].to_string();
        if !seen.insert(id.clone()) {
            duplicates.push(id);
        }
    }
    Ok((statuses, duplicates))
}

/// A stub answering with synthetic replies through `mix`'s faults.
fn fault_server(mix: &Arc<FaultMix>) -> anyhow::Result<StubServer> {
    let mix = mix.clone();
    StubServer::start_with(
        StubOptions {
            threads: 2,
            ..StubOptions::default()
        },
        move |request| mix.reply(request, synthetic_reply),
    )
}

fn files_of(results: &Path, model: &str, scenario: &str) -> PathBuf {
    results.join(model).join(scenario).join("vanilla")
}

#[test]
fn a_fault_mix_loses_no_item_and_duplicates_none() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let mix = Arc::new(FaultMix::new(&Fault::ALL, 0.2, Duration::from_secs(3)));
    let server = fault_server(&mix)?;
    let args = three_hundred_items(&server.base_url())?;
    let started = Instant::now();
    let finished = run_owned(&ctx, &args)?;
    let wall = started.elapsed();
    assert!(matches!(finished.code, Some(0 | 1)), "{finished:?}");

    let mut done = 0;
    let mut failed = 0;
    for scenario in ["Child", "Travel"] {
        let dir = files_of(&ctx.results, "fault-model", scenario);
        let generated = ctx.read_json(&format!("fault-model/{scenario}/vanilla/generate.json"))?;
        let entries = generated.as_array().cloned().unwrap_or_default();
        assert_eq!(
            entries.len(),
            150,
            "{scenario}: every item has a place in generate.json"
        );
        let (statuses, duplicates) = journal(&dir.join(".journal/generate.jsonl"), "index")?;
        assert!(
            duplicates.is_empty(),
            "{scenario}: generations journaled twice: {duplicates:?}"
        );
        assert_eq!(statuses.values().sum::<usize>(), 150, "{scenario}: {statuses:?}");
        done += entries.iter().filter(|e| e.is_object()).count();
        failed += entries.iter().filter(|e| e.is_null()).count();
        let (_, judged_twice) = journal(&dir.join(".journal/fault-judge.jsonl"), "key")?;
        assert!(judged_twice.is_empty(), "{scenario}: judged twice: {judged_twice:?}");
    }
    assert_eq!(done + failed, 300);
    if failed > 0 {
        assert!(finished.stdout.contains("failed to generate"), "{}", finished.stdout);
    }
    let injected = mix.injected();
    for kind in Fault::ALL {
        assert!(
            injected.get(&kind).is_some_and(|n| *n > 0),
            "{kind:?} was never injected: {injected:?}"
        );
    }
    let faults: u64 = injected.values().sum();
    let sent = server.requests().len() as u64;
    eprintln!(
        "fault suite: {sent} requests, {faults} faults injected {injected:?}, {} answered; items done {done}, failed {failed}; {:.1}s",
        mix.answered(),
        wall.as_secs_f64()
    );
    let summary = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with("generation:") || l.starts_with("judge "))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");
    assert!(summary.contains("retried"), "{}", finished.stdout);
    Ok(())
}

#[test]
fn with_transient_faults_only_the_scores_equal_a_fault_free_run() -> anyhow::Result<()> {
    let clean_ctx = TestContext::with_pack("minimal")?;
    let clean = StubServer::start_with(
        StubOptions {
            threads: 2,
            ..StubOptions::default()
        },
        |request| Reply::Content(synthetic_reply(request)),
    )?;
    let finished = run_owned(&clean_ctx, &three_hundred_items(&clean.base_url())?)?;
    assert_eq!(finished.code, Some(0), "{finished:?}");

    let ctx = TestContext::with_pack("minimal")?;
    let mix = Arc::new(FaultMix::new(Fault::TRANSIENT, 0.3, Duration::from_secs(3)));
    let faulty = fault_server(&mix)?;
    let finished = run_owned(&ctx, &three_hundred_items(&faulty.base_url())?)?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    eprintln!(
        "transient faults: {} requests, {} faults {:?}",
        faulty.requests().len(),
        mix.injected().values().sum::<u64>(),
        mix.injected()
    );
    for scenario in ["Child", "Travel"] {
        for file in ["generate.json", "fault-judge_evaluate.json", "fault-judge_score.json"] {
            let path = format!("fault-model/{scenario}/vanilla/{file}");
            assert_eq!(ctx.read_json(&path)?, clean_ctx.read_json(&path)?, "{path} differs");
        }
    }
    Ok(())
}

/// Waits until `path` holds at least `lines` lines.
pub(crate) fn wait_for_lines(path: &Path, lines: usize, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let count = std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0);
        if count >= lines {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{} never reached {lines} lines", path.display())
}

#[test]
fn killed_with_sigkill_then_resumed_equals_an_uninterrupted_run() -> anyhow::Result<()> {
    let options = || StubOptions {
        latency: Duration::from_millis(30),
        threads: 2,
        ..StubOptions::default()
    };
    let server = StubServer::start_with(options(), |request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let pack = golden::pack_dir()?;
    let args = |url: &str| -> Vec<String> {
        [
            "run",
            "--data",
            &pack.to_string_lossy(),
            "--scenario",
            "Child",
            "--limit",
            "80",
            "--model",
            "kill-model",
            "--base-url",
            url,
            "--judge",
            "kill-judge",
            "--judge-base-url",
            url,
            "--concurrency",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let whole_ctx = TestContext::with_pack("minimal")?;
    let whole = run_owned(&whole_ctx, &args(&url))?;
    assert_eq!(whole.code, Some(0), "{whole:?}");

    let ctx = TestContext::with_pack("minimal")?;
    let resumed_server = StubServer::start_with(options(), |request| Reply::Content(synthetic_reply(request)))?;
    let resumed_url = resumed_server.base_url();
    let mut child = ctx
        .specbench()
        .args(args(&resumed_url))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let dir = files_of(&ctx.results, "kill-model", "Child");
    wait_for_lines(&dir.join(".journal/kill-judge.jsonl"), 20, Duration::from_secs(60))?;
    child.kill()?; // SIGKILL
    child.wait()?;
    let before = resumed_server.requests().len();
    let judged_before = std::fs::read_to_string(dir.join(".journal/kill-judge.jsonl"))?
        .lines()
        .count();
    assert!(
        !dir.join("generate.json").exists(),
        "killed before any result file was written"
    );

    let again = run_owned(&ctx, &args(&resumed_url))?;
    assert_eq!(again.code, Some(0), "{again:?}");
    let after = resumed_server.requests().len() - before;
    eprintln!(
        "kill and resume: {judged_before} of 80 items judged before kill -9 ({before} requests); the resumed run sent {after} requests; an uninterrupted run sent {}",
        server.requests().len()
    );
    assert!(
        after + judged_before * 2 <= server.requests().len(),
        "journaled units are not sent again"
    );
    for file in ["generate.json", "kill-judge_evaluate.json", "kill-judge_score.json"] {
        let path = format!("kill-model/Child/vanilla/{file}");
        assert_eq!(ctx.read_json(&path)?, whole_ctx.read_json(&path)?, "{path} differs");
    }
    Ok(())
}

#[test]
fn an_accepted_key_appears_in_no_file_cache_log_or_message() -> anyhow::Result<()> {
    const KEY: &str = "sk-specbench-UNMISTAKABLE-fake-key-5521";
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = finish(
        ctx.specbench()
            .env("SPECBENCH_FAKE_KEY", KEY)
            .env("SPECBENCH_LOG", "trace")
            .args([
                "run",
                "--model",
                "org/test-model",
                "--base-url",
                &url,
                "--api-key-env",
                "SPECBENCH_FAKE_KEY",
                "--judge",
                "test-judge",
                "--judge-base-url",
                &url,
                "--judge-api-key-env",
                "SPECBENCH_FAKE_KEY",
                "--method",
                "vanilla,align3",
            ]),
    )?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(finished.stderr.lines().count() > 10, "trace logging was on");
    let cache = std::fs::read(ctx.cache_dir().join("responses.sqlite3"))?;
    assert!(cache.len() > 4096, "the cache holds the replies");
    let everything = [
        finished.stdout.clone(),
        finished.stderr.clone(),
        ctx.all_result_text()?,
        String::from_utf8_lossy(&cache).into_owned(),
    ];
    for text in &everything {
        assert!(!text.contains(KEY), "the key leaked");
        assert!(!text.contains("UNMISTAKABLE"), "part of the key leaked");
    }
    Ok(())
}

#[test]
fn retry_errors_judges_again_only_the_unparsed() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let garbled = StubServer::start(|request| {
        let user = user_text(request);
        // The judge garbles the replies about the Garden scenario's foxglove prompt only.
        if user.contains("<response_begin>") && user.contains("foxglove") {
            Reply::Content("I cannot decide.".into())
        } else {
            Reply::Content(synthetic_reply(request))
        }
    })?;
    let url = garbled.base_url();
    let common = |url: &str| -> Vec<String> {
        [
            "--scenario",
            "Garden",
            "--judge",
            "test-judge",
            "--judge-base-url",
            url,
            "--concurrency",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut run = vec![
        "run".to_string(),
        "--model".into(),
        "m".into(),
        "--base-url".into(),
        url.clone(),
    ];
    run.extend(common(&url));
    let first = run_owned(&ctx, &run)?;
    assert_eq!(first.code, Some(1), "{first:?}");
    let errors = ctx.read_json("m/Garden/vanilla/test-judge_errors.json")?;
    let errored = errors.as_array().map(Vec::len).unwrap_or(0);
    assert!(errored >= 1, "{errors}");

    let healthy = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let healthy_url = healthy.base_url();
    let mut evaluate = vec!["evaluate".to_string(), "--model".into(), "m".into()];
    evaluate.extend(common(&healthy_url));
    let kept = run_owned(&ctx, &evaluate)?;
    assert_eq!(kept.code, Some(1), "without --retry-errors judge errors stay: {kept:?}");
    assert_eq!(healthy.requests().len(), 0);

    evaluate.push("--retry-errors".into());
    let retried = run_owned(&ctx, &evaluate)?;
    assert_eq!(retried.code, Some(0), "{retried:?}");
    assert_eq!(
        healthy.requests().len(),
        errored,
        "only the judge errors are sent again"
    );
    assert!(!ctx.results.join("m/Garden/vanilla/test-judge_errors.json").exists());
    Ok(())
}

#[test]
fn three_shards_merged_equal_one_machine() -> anyhow::Result<()> {
    let pack = golden::pack_dir()?;
    let server = StubServer::start_with(
        StubOptions {
            threads: 2,
            ..StubOptions::default()
        },
        |request| Reply::Content(synthetic_reply(request)),
    )?;
    let url = server.base_url();
    let ctx = TestContext::with_pack("minimal")?;
    let run = |results: &str, shard: Option<&str>| -> anyhow::Result<Finished> {
        let mut args: Vec<String> = [
            "run",
            "--data",
            &pack.to_string_lossy(),
            "--scenario",
            "Child,Code",
            "--limit",
            "20",
            "--method",
            "vanilla,zero_think",
            "--model",
            "org/shard-model",
            "--base-url",
            &url,
            "--judge",
            "shard-judge",
            "--judge-base-url",
            &url,
            "--judge-mode",
            "joint,sequential",
            "--results",
            results,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(shard) = shard {
            args.extend(["--shard".to_string(), shard.to_string()]);
        }
        run_owned(&ctx, &args)
    };
    let single = run("single", None)?;
    assert_eq!(single.code, Some(0), "{single:?}");
    for k in 1..=3 {
        let finished = run(&format!("shard{k}"), Some(&format!("{k}/3")))?;
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }
    let first_shard = ctx.dir.path().join("shard1/shard-model/Child/vanilla/generate.json");
    let entries: Vec<Value> = serde_json::from_slice(&std::fs::read(first_shard)?)?;
    assert_eq!(entries.len(), 7, "shard 1/3 of 20 items: positions 0, 3, ..., 18");

    let merged = finish(ctx.specbench().args([
        "merge",
        "--data",
        &pack.to_string_lossy(),
        "--into",
        "merged",
        "shard1",
        "shard2",
        "shard3",
    ]))?;
    assert_eq!(merged.code, Some(0), "{merged:?}");
    let root = ctx.dir.path();
    let mut compared = 0;
    for scenario in ["Child", "Code"] {
        for method in ["vanilla", "zero_think"] {
            for file in [
                "generate.json",
                "generate_usage.json",
                "shard-judge_evaluate.json",
                "shard-judge_score.json",
                "shard-judge-sequential_evaluate.json",
                "shard-judge-sequential_score.json",
            ] {
                let relative = format!("shard-model/{scenario}/{method}/{file}");
                let single = std::fs::read(root.join("single").join(&relative))?;
                let joined = std::fs::read(root.join("merged").join(&relative))?;
                assert!(single == joined, "{relative} differs after merge");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 24);
    Ok(())
}
