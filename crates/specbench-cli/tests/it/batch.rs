//! `--judge-batch` through the binary, against a loopback server implementing OpenAI's Batch
//! API: the judge's requests go into one batch, and a run killed (SIGKILL) while that batch is
//! in progress collects it when run again instead of paying for it twice, ending with the
//! scores a run without batching writes.

use std::process::Stdio;
use std::time::Duration;

use specbench_test::batch::{BatchFault, BatchServer, Flavor};
use specbench_test::{Reply, StubServer, synthetic_reply};

use crate::support::{TestContext, finish};

fn run_args<'a>(model_url: &'a str, judge_url: &'a str, batch: bool) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--model",
        "batch-model",
        "--base-url",
        model_url,
        "--judge",
        "batch-judge",
        "--judge-provider",
        "openai",
        "--judge-base-url",
        judge_url,
        "--method",
        "vanilla",
        "--scenario",
        "Museum",
        "--limit",
        "3",
    ];
    if batch {
        args.extend(["--judge-batch", "--batch-poll", "0.05"]);
    }
    args
}

const SCORES: &str = "batch-model/Museum/vanilla/batch-judge_score.json";

/// Waits until the run has journaled its batch's id (the moment after the API returned it).
fn until_id_journaled(ctx: &TestContext) -> anyhow::Result<()> {
    let dir = ctx.cache_dir().join("batches");
    for _ in 0..1500 {
        let journaled = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains("\"id\":")));
        if journaled {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("no batch id journaled in {}", dir.display())
}

#[test]
fn a_judge_batch_killed_in_flight_is_collected_by_the_next_run_not_submitted_again() -> anyhow::Result<()> {
    let model = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let judge = BatchServer::start(BatchFault::Hold, synthetic_reply)?;
    let (model_url, judge_url) = (model.base_url(), judge.base_url());
    let ctx = TestContext::with_pack("minimal")?;

    let mut first = ctx
        .specbench()
        .env("OPENAI_API_KEY", "sk-batch-test-secret")
        .args(run_args(&model_url, &judge_url, true))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut waited = 0;
    while judge.batches().is_empty() && waited < 1500 {
        std::thread::sleep(Duration::from_millis(20));
        waited += 1;
    }
    assert_eq!(judge.batches().len(), 1, "{:?}", judge.calls());
    assert_eq!(judge.batches()[0].len(), 3, "every item's judgement in one batch");
    until_id_journaled(&ctx)?;
    first.kill()?;
    first.wait()?;

    // `batch status` takes the run's flags and lists its batch as the provider reports it.
    let mut status_args = vec!["batch", "status"];
    status_args.extend(run_args(&model_url, &judge_url, true).into_iter().skip(1));
    let status = finish(
        ctx.specbench()
            .env("OPENAI_API_KEY", "sk-batch-test-secret")
            .args(&status_args),
    )?;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.contains("batch_0  in_progress  0 of 3 done"),
        "{}",
        status.stdout
    );

    judge.release();
    let second = finish(
        ctx.specbench()
            .env("OPENAI_API_KEY", "sk-batch-test-secret")
            .args(run_args(&model_url, &judge_url, true)),
    )?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(judge.batches().len(), 1, "submitted again: {:?}", judge.calls());
    assert!(!second.stderr.contains("sk-batch-test-secret"));
    let batched = ctx.read_json(SCORES)?;

    // The same run judged one request at a time, by a server answering as the batch did.
    let direct_judge = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let direct_url = direct_judge.base_url();
    let plain = TestContext::with_pack("minimal")?;
    let finished = finish(
        plain
            .specbench()
            .env("OPENAI_API_KEY", "sk-batch-test-secret")
            .args(run_args(&model_url, &direct_url, false)),
    )?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(batched, plain.read_json(SCORES)?);

    // The cost report prices the batched judge's tokens at the prices file's batch factor,
    // the direct one's in full.
    let prices = ctx.dir.path().join("prices.yaml");
    std::fs::write(&prices, "batch-judge: {prompt: 3.0, completion: 4.0, batch: 0.5}\n")?;
    let judge_cost = |ctx: &TestContext| -> anyhow::Result<(f64, f64)> {
        let report = finish(ctx.specbench().args([
            "report",
            "result",
            "--format",
            "json",
            "--resamples",
            "10",
            "--permutations",
            "10",
            "--prices",
            &prices.to_string_lossy(),
        ]))?;
        anyhow::ensure!(report.code == Some(0), "{report:?}");
        let json: serde_json::Value = serde_json::from_str(&report.stdout)?;
        let row = &json["cost"]["rows"][0];
        let full = (row["judge prompt tokens"].as_f64().unwrap_or(0.0) * 3.0
            + row["judge completion tokens"].as_f64().unwrap_or(0.0) * 4.0)
            / 1e6;
        Ok((row["judge cost"].as_f64().unwrap_or(f64::NAN), full))
    };
    let (cost, full) = judge_cost(&ctx)?;
    assert!(full > 0.0 && (cost - full * 0.5).abs() < 1e-12, "{cost} against {full}");
    let (cost, full) = judge_cost(&plain)?;
    assert!((cost - full).abs() < 1e-12, "{cost} against {full}");
    Ok(())
}

#[test]
fn an_anthropic_judge_batches_through_message_batches_with_its_key_and_version() -> anyhow::Result<()> {
    let model = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let judge = BatchServer::start_as(Flavor::Anthropic, BatchFault::None, synthetic_reply)?;
    let (model_url, judge_url) = (model.base_url(), judge.base_url());
    let ctx = TestContext::with_pack("minimal")?;
    let mut args = run_args(&model_url, &judge_url, true);
    let provider = args.iter().position(|a| *a == "openai").unwrap_or_default();
    args[provider] = "anthropic";
    args.extend(["--judge-api-key-env", "TEST_ANTHROPIC_KEY"]);
    let finished = finish(
        ctx.specbench()
            .env("TEST_ANTHROPIC_KEY", "sk-ant-batch-secret")
            .args(&args),
    )?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(judge.batches().len(), 1, "{:?}", judge.calls());
    assert_eq!(judge.batches()[0].len(), 3);
    for headers in judge.headers() {
        assert_eq!(
            headers.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some("sk-ant-batch-secret")
        );
        assert_eq!(
            headers.get("anthropic-version").and_then(|v| v.to_str().ok()),
            Some("2023-06-01")
        );
    }
    let scores = ctx.read_json(SCORES)?;
    assert!(scores.is_object(), "{scores}");
    // Every reply parsed: no judge errors.
    let errors = ctx.results.join("batch-model/Museum/vanilla/batch-judge_errors.json");
    assert!(
        !errors.exists(),
        "{}",
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
    assert!(!ctx.all_result_text()?.contains("sk-ant-batch-secret"));
    Ok(())
}

/// `batch cancel` cancels a running batch; the next run puts its requests into a new batch.
#[test]
fn a_cancelled_batch_is_submitted_again_by_the_next_run() -> anyhow::Result<()> {
    let model = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let judge = BatchServer::start(BatchFault::Hold, synthetic_reply)?;
    let (model_url, judge_url) = (model.base_url(), judge.base_url());
    let ctx = TestContext::with_pack("minimal")?;
    let mut first = ctx
        .specbench()
        .env("OPENAI_API_KEY", "sk-batch-test-secret")
        .args(run_args(&model_url, &judge_url, true))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut waited = 0;
    while judge.batches().is_empty() && waited < 1500 {
        std::thread::sleep(Duration::from_millis(20));
        waited += 1;
    }
    until_id_journaled(&ctx)?;
    first.kill()?;
    first.wait()?;

    let mut cancel_args = vec!["batch", "cancel"];
    cancel_args.extend(run_args(&model_url, &judge_url, true).into_iter().skip(1));
    let cancelled = finish(
        ctx.specbench()
            .env("OPENAI_API_KEY", "sk-batch-test-secret")
            .args(&cancel_args),
    )?;
    assert_eq!(cancelled.code, Some(0), "{cancelled:?}");
    assert!(cancelled.stdout.contains("cancel requested"), "{}", cancelled.stdout);
    assert!(judge.calls().iter().any(|c| c == "POST /v1/batches/batch_0/cancel"));

    judge.release();
    let second = finish(
        ctx.specbench()
            .env("OPENAI_API_KEY", "sk-batch-test-secret")
            .args(run_args(&model_url, &judge_url, true)),
    )?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(judge.batches().iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3]);
    Ok(())
}
