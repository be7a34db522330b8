//! Studies: every model × method of one file, against loopback stubs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use specbench_test::{Reply, StubOptions, StubServer, synthetic_reply};

use crate::support::{TestContext, finish};

/// Two models and one judge behind one server, a cap of 2 requests in flight. No response
/// cache: the stub answers both models alike, and the tests count every request.
pub fn study_text(url: &str, methods: &str) -> String {
    format!(
        "data:\n  results: result\nmodels:\n  - {{key: org/model-a, provider: compatible, base_urls: [\"{url}\"]}}\n  \
         - {{key: org/model-b, provider: compatible, base_urls: [\"{url}\"]}}\nmethods:\n{methods}\
         judges:\n  - {{key: test-judge, provider: compatible, base_urls: [\"{url}\"]}}\nexec:\n  concurrency: 2\n  no_cache: true\n"
    )
}

/// The result files of the 2 × 2 × 2 study in `a` and `b` (folders under the test's folder),
/// byte for byte: 24 files.
pub fn assert_same_study_files(ctx: &TestContext, a: &str, b: &str, context: &str) -> anyhow::Result<()> {
    let mut compared = 0;
    for model in ["model-a", "model-b"] {
        for scenario in ["Garden", "Museum"] {
            for method in ["vanilla", "zero_think"] {
                for name in ["generate.json", "test-judge_evaluate.json", "test-judge_score.json"] {
                    let relative = format!("{model}/{scenario}/{method}/{name}");
                    let first = std::fs::read(ctx.dir.path().join(a).join(&relative))?;
                    let second = std::fs::read(ctx.dir.path().join(b).join(&relative))?;
                    assert!(first == second, "{relative} differs between {a} and {b}\n{context}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 24);
    Ok(())
}

pub const TWO_METHODS: &str = "  - method: vanilla\n  - method: zero_think\n";

/// Three methods with one, two and three calls per item.
const THREE_METHODS: &str = "  - method: vanilla\n  - method: more_think\n    rethink_count: 2\n  - method: align3\n";

#[test]
fn a_study_runs_every_cell_under_one_cap_per_endpoint_and_resumes() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let latency = Duration::from_millis(100);
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let options = StubOptions {
        latency,
        threads: 2,
        ..StubOptions::default()
    };
    let server = StubServer::start_with(options, move |request| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(Instant::now());
        }
        Reply::Content(synthetic_reply(request))
    })?;
    let file = ctx.dir.path().join("study.yaml");
    std::fs::write(&file, study_text(&server.base_url(), THREE_METHODS))?;
    let file = file.to_string_lossy().into_owned();

    // 2 models × 2 scenarios × 3 items, each generated (1, 2 and 3 calls) and judged (1 call).
    let plan = ctx.run(&["study", "plan", &file])?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    assert!(
        plan.stdout.contains("108 requests in all, 108 still to send"),
        "{}",
        plan.stdout
    );
    assert!(server.requests().is_empty(), "plan sends nothing");

    let finished = ctx.run(&["study", "run", &file])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // What the plan counted is what the study sent.
    assert_eq!(server.requests().len(), 108);
    let plan = ctx.run(&["study", "plan", &file])?;
    assert!(
        plan.stdout.contains("108 requests in all, 0 still to send"),
        "{}",
        plan.stdout
    );
    // Every cell ran at once, yet the server never had more than 2 requests of the study in
    // flight: within any window shorter than one answer's latency, at most 2 arrived.
    let times = arrivals.lock().map(|t| t.clone()).unwrap_or_default();
    let window = latency.mul_f64(0.9);
    let most = times
        .iter()
        .map(|start| times.iter().filter(|t| **t >= *start && **t - *start < window).count())
        .max()
        .unwrap_or(0);
    assert_eq!(most, 2, "requests in flight at once");
    for model in ["model-a", "model-b"] {
        for method in ["vanilla", "more_think-rethink_count=2", "align3"] {
            for scenario in ["Garden", "Museum"] {
                let evaluated = ctx.read_json(&format!("{model}/{scenario}/{method}/test-judge_evaluate.json"))?;
                assert_eq!(
                    evaluated.as_array().map(Vec::len),
                    Some(3),
                    "{model} {scenario} {method}"
                );
            }
        }
        assert!(
            finished.stdout.contains(&format!("== org/{model} align3")),
            "{}",
            finished.stdout
        );
    }

    // The study ends with the paper's tables, from its own folders.
    assert!(finished.stdout.contains("Leaderboard"), "{}", finished.stdout);
    assert!(
        finished.stdout.contains("Methods against vanilla"),
        "{}",
        finished.stdout
    );

    // The report reads the study's folder as it reads a run's.
    let report = ctx.run(&["report", "result"])?;
    assert_eq!(report.code, Some(0), "{report:?}");
    assert!(report.stdout.contains("model-a") && report.stdout.contains("model-b"));

    // Status, from the stored files: every cell complete.
    let status = ctx.run(&["study", "status", &file])?;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.contains("12 of 12 cell scenarios complete"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("test-judge 3"), "{}", status.stdout);

    // Run again: everything is found in the journals, nothing is sent.
    let again = ctx.run(&["study", "run", &file])?;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(server.requests().len(), 108);
    Ok(())
}

#[test]
fn status_shows_a_study_that_has_not_started() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let file = ctx.dir.path().join("study.yaml");
    // No server at all: status sends nothing.
    std::fs::write(&file, study_text("http://127.0.0.1:9", TWO_METHODS))?;
    let status = ctx.run(&["study", "status", &file.to_string_lossy()])?;
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.contains("0 of 8 cell scenarios complete"),
        "{}",
        status.stdout
    );
    assert!(!ctx.results.exists(), "status writes nothing");
    Ok(())
}

#[test]
fn a_bad_study_is_refused_whole_with_its_place_named() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let file = ctx.dir.path().join("study.yaml");
    let path = file.to_string_lossy().into_owned();
    let cases = [
        (
            study_text("http://127.0.0.1:9", "  - method: vanilla\n    rethinks: 2\n"),
            "line 8 column 5: unknown field `rethinks`",
        ),
        (
            study_text("http://127.0.0.1:9", "  - method: vanilla\n  - method: vanilla\n"),
            "both write model-a/<scenario>/vanilla",
        ),
        (
            study_text("http://127.0.0.1:9", "  - method: vanilla\n    n: 4\n"),
            "a parameter of another method",
        ),
    ];
    for (text, problem) in cases {
        std::fs::write(&file, text)?;
        let finished = ctx.run(&["study", "run", &path])?;
        assert_eq!(finished.code, Some(2), "{finished:?}");
        assert!(finished.stderr.contains(&path), "{}", finished.stderr);
        assert!(finished.stderr.contains(problem), "{problem}: {}", finished.stderr);
        assert!(!ctx.results.exists(), "nothing written for {problem}");
    }
    Ok(())
}

#[test]
fn the_plan_counts_what_every_multi_call_method_sends() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let file = ctx.dir.path().join("study.yaml");
    // Per item: self_refine 1 + 2 × 1; best_of_n 2 samples and 2 scores; tpo 2 + 1 × (2 + 2)
    // calls and 2 × 2 scores; each judged once.
    std::fs::write(
        &file,
        format!(
            "models:\n  - {{key: org/model-a, provider: compatible, base_urls: [\"{url}\"]}}\nmethods:\n  \
             - {{method: self_refine, max_iters: 1}}\n  - {{method: best_of_n, n: 2, scorer: judge}}\n  \
             - {{method: tpo, samples: 2, iterations: 1, scorer: judge}}\n\
             judges:\n  - {{key: test-judge, provider: compatible, base_urls: [\"{url}\"]}}\nexec:\n  concurrency: 8\n  no_cache: true\n"
        ),
    )?;
    let file = file.to_string_lossy().into_owned();
    let plan = ctx.run(&["study", "plan", &file])?;
    assert!(
        plan.stdout.contains("120 requests in all, 120 still to send"),
        "{}",
        plan.stdout
    );
    let finished = ctx.run(&["study", "run", &file, "--format", "html", "--output", "tables.html"])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.requests().len(), 120);
    let tables = std::fs::read_to_string(ctx.dir.path().join("tables.html"))?;
    assert!(tables.contains("<html") && tables.contains("Leaderboard"), "{tables}");
    Ok(())
}

#[test]
fn slurm_array_shards_of_a_study_merged_equal_one_process() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let file = ctx.dir.path().join("study.yaml");
    std::fs::write(&file, study_text(&server.base_url(), TWO_METHODS))?;
    let file = file.to_string_lossy().into_owned();
    let single = ctx.run(&["study", "run", &file, "--results", "single"])?;
    assert_eq!(single.code, Some(0), "{single:?}");
    // Three array tasks, as `sbatch --array=1-3` starts them: each finds its share itself.
    for task in 1..=3 {
        let results = format!("shard{task}");
        let finished = finish(
            ctx.specbench()
                .args(["study", "run", &file, "--shard", "auto", "--results", &results])
                .env("SLURM_ARRAY_TASK_ID", task.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "3")
                .env("SLURM_ARRAY_TASK_MIN", "1"),
        )?;
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }
    let one = ctx.dir.path().join("shard1/model-a/Garden/vanilla/generate.json");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(one)?)?;
    assert_eq!(entries.len(), 1, "task 1 of 3 over 3 items: the first");
    let merged = ctx.run(&["merge", "--into", "merged", "shard1", "shard2", "shard3"])?;
    assert_eq!(merged.code, Some(0), "{merged:?}");
    assert_same_study_files(&ctx, "single", "merged", "")?;
    // Outside an array task, `auto` says what it needs, and nothing is written.
    let outside = finish(
        ctx.specbench()
            .args(["study", "run", &file, "--shard", "auto", "--results", "outside"])
            .env_remove("SLURM_ARRAY_TASK_ID"),
    )?;
    assert_eq!(outside.code, Some(2), "{outside:?}");
    assert!(
        outside.stderr.contains("SLURM_ARRAY_TASK_ID is not set"),
        "{}",
        outside.stderr
    );
    assert!(!ctx.dir.path().join("outside").exists());
    Ok(())
}

#[test]
fn a_kubernetes_index_takes_its_share_and_a_dry_run_only_writes_the_batch_script() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let file = ctx.dir.path().join("study.yaml");
    std::fs::write(&file, study_text(&server.base_url(), TWO_METHODS))?;
    let file = file.to_string_lossy().into_owned();
    // Completion index 2 of an Indexed Job of 3: share 3/3, the third of each scenario's 3 items.
    let finished = finish(
        ctx.specbench()
            .args(["study", "run", &file, "--shard", "auto/3", "--results", "k8s"])
            .env("JOB_COMPLETION_INDEX", "2"),
    )?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let generated: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(
        ctx.dir.path().join("k8s/model-a/Garden/vanilla/generate.json"),
    )?)?;
    let prompts: Vec<&str> = generated.iter().filter_map(|e| e["data"]["prompt"].as_str()).collect();
    assert_eq!(prompts.len(), 1, "{prompts:?}");

    let dry = ctx.run(&[
        "study",
        "submit",
        &file,
        "--slurm",
        "--array-size",
        "5",
        "--partition",
        "gpu",
        "--dry-run",
    ])?;
    assert_eq!(dry.code, Some(0), "{dry:?}");
    let script = std::fs::read_to_string(ctx.dir.path().join("result.shards/study.sbatch"))?;
    for line in [
        "#SBATCH --array=1-5",
        "#SBATCH --partition=gpu",
        "--shard auto --results ",
    ] {
        assert!(script.contains(line), "{line}: {script}");
    }
    assert!(dry.stdout.contains("submit it with: sbatch"), "{}", dry.stdout);
    assert!(!ctx.results.exists(), "a dry run runs nothing");
    Ok(())
}
