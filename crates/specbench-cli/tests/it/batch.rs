//! `--judge-batch` through the binary, against a loopback server implementing OpenAI's Batch
//! API: the judge's requests go into one batch, and a run killed (SIGKILL) while that batch is
//! in progress collects it when run again instead of paying for it twice, ending with the
//! scores a run without batching writes.

use std::process::Stdio;
use std::time::Duration;

use specbench_test::batch::{BatchFault, BatchServer};
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
    first.kill()?;
    first.wait()?;

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
    Ok(())
}
