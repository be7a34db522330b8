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
        plan.stdout.contains(
            "108 requests in all, 108 not made yet, 0 of them answered by the response cache: 108 still to send"
        ),
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
        plan.stdout
            .contains("108 requests in all, 0 not made yet, 0 of them answered by the response cache: 0 still to send"),
        "{}",
        plan.stdout
    );
    // Six cells on one server (one after another, each starting as the one before starts its
    // last item), yet the server never had more than 2 requests of the study in flight: within
    // any window shorter than one answer's latency, at most 2 arrived.
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
    // Without the tables at the end.
    let quiet = ctx.run(&["study", "run", &file, "--no-tables"])?;
    assert_eq!(quiet.code, Some(0), "{quiet:?}");
    assert!(again.stdout.contains("Leaderboard") && !quiet.stdout.contains("Leaderboard"));
    Ok(())
}

/// Whether a request prefills zero_think's empty thought.
fn prefills_an_empty_thought(request: &serde_json::Value) -> bool {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["role"] == "assistant" && m["content"].as_str().is_some_and(|c| c.contains("</think>")))
}

#[test]
fn cells_on_one_server_run_one_after_another_with_a_line_each() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let file = ctx.dir.path().join("study.yaml");
    std::fs::write(
        &file,
        format!(
            "data:\n  results: result\nmodels:\n  - {{key: org/model-a, provider: compatible, base_urls: [\"{url}\"]}}\n\
             methods:\n{TWO_METHODS}judges:\n  - {{key: test-judge, provider: compatible, base_urls: [\"{url}\"]}}\n\
             exec:\n  concurrency: 1\n  no_cache: true\n"
        ),
    )?;
    let finished = ctx.run(&["study", "run", "--no-tables", &file.to_string_lossy()])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // 6 items a cell, 2 items in flight in the study (2 per request slot): zero_think's cell
    // starts once vanilla's has started its last item, so after 4 of its items were generated
    // and judged. Cells at once would interleave from the first request.
    let requests = server.requests();
    assert_eq!(requests.len(), 24);
    let first = requests.iter().position(prefills_an_empty_thought);
    assert!(
        first.is_some_and(|at| at >= 8),
        "zero_think's first request at {first:?} of {}",
        requests.len()
    );
    // Not a terminal: a line when each cell starts and when it ends, in the cells' order.
    let stderr = &finished.stderr;
    let place = |line: &str| {
        stderr
            .find(line)
            .ok_or_else(|| anyhow::anyhow!("no {line:?} in\n{stderr}"))
    };
    let started = place("[study] org/model-a vanilla: started")?;
    let ended = place("[study] org/model-a vanilla: ended, 12/12 units, 0 failed, in ")?;
    let next = place("[study] org/model-a zero_think: started")?;
    place("[study] org/model-a zero_think: ended, 12/12 units, 0 failed, in ")?;
    assert!(started < next && started < ended, "{stderr}");
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
        plan.stdout.contains(
            "120 requests in all, 120 not made yet, 0 of them answered by the response cache: 120 still to send"
        ),
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

/// The tokens the stub counted for every request it got (code points ÷ 4, as the plan's
/// estimate counts them).
fn sent_prompt_tokens(server: &StubServer) -> u64 {
    server
        .requests()
        .iter()
        .map(|body| {
            specbench_test::stub_usage(body, "")["prompt_tokens"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

/// A number after `label` in `text` (`tokens, estimated: 123 prompt`).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let at = text.find(label)? + label.len();
    text[at..]
        .trim_start_matches(['$', ' '])
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

/// A prices file in which only the judge's completions cost anything: $2 a token.
fn judge_prices(ctx: &TestContext) -> anyhow::Result<String> {
    let prices = ctx.dir.path().join("prices.yaml");
    std::fs::write(
        &prices,
        "org/model-a: {prompt: 0, completion: 0}\norg/model-b: {prompt: 0, completion: 0}\n\
         test-judge: {prompt: 0, completion: 2000000}\n",
    )?;
    Ok(prices.to_string_lossy().into_owned())
}

/// A study of one model × vanilla and align3, judged once by an OpenAI judge (its key in
/// `TEST_OPENAI_KEY`), on the first `limit` items of each scenario, with the response cache.
fn cached_study_text(url: &str, limit: usize) -> String {
    format!(
        "data:\n  results: result\n  limit: {limit}\nmodels:\n  - {{key: org/model-a, provider: compatible, base_urls: [\"{url}\"]}}\n\
         methods:\n  - method: vanilla\n  - method: align3\njudges:\n  \
         - {{key: test-judge, provider: openai, base_urls: [\"{url}\"], api_key_env: TEST_OPENAI_KEY}}\nexec:\n  concurrency: 2\n"
    )
}

#[test]
fn the_plan_counts_what_the_response_cache_answers_and_the_study_does_not_send_it() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    // Answers that name the conversation's length: vanilla's and Align3's differ, so no judge
    // request of one method is the other's (the cache would answer it within the run).
    let server = StubServer::start(|request| {
        let reply = synthetic_reply(request);
        if reply.contains("</think>") {
            let messages = request["messages"].as_array().map_or(0, Vec::len);
            Reply::Content(format!("{reply} ({messages} messages)"))
        } else {
            Reply::Content(reply)
        }
    })?;
    let file = ctx.dir.path().join("study.yaml");
    let path = file.to_string_lossy().into_owned();
    let run = |args: &[&str]| finish(ctx.specbench().env("TEST_OPENAI_KEY", "sk-test").args(args));

    // Two items of each scenario: vanilla 2 calls an item, align3 4 (3 stages and the judge).
    std::fs::write(&file, cached_study_text(&server.base_url(), 2))?;
    let first = run(&["study", "run", "--no-tables", &path])?;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(server.requests().len(), 24);

    // Three items, and the results gone: the journals hold nothing, the cache the first two.
    std::fs::remove_dir_all(&ctx.results)?;
    std::fs::write(&file, cached_study_text(&server.base_url(), 3))?;
    let hits_before = ctx.run(&["cache", "stats"])?.stdout;
    // No key needed to plan, nothing sent, the cache unchanged.
    let plan = ctx.run(&["study", "plan", &path])?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    assert!(
        plan.stdout.contains(
            "36 requests in all, 36 not made yet, 24 of them answered by the response cache: 12 still to send"
        ),
        "{}",
        plan.stdout
    );
    assert_eq!(server.requests().len(), 24, "plan sends nothing");
    assert_eq!(
        ctx.run(&["cache", "stats"])?.stdout,
        hits_before,
        "plan changes no cache entry"
    );
    assert!(!ctx.results.exists(), "plan writes no result");

    // The study sends exactly what the plan said.
    let second = run(&["study", "run", "--no-tables", &path])?;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(server.requests().len(), 24 + 12);
    Ok(())
}

#[test]
fn the_plan_estimates_tokens_and_cost_and_max_cost_refuses_or_stops_a_study() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let file = ctx.dir.path().join("study.yaml");
    std::fs::write(&file, study_text(&server.base_url(), THREE_METHODS))?;
    let file = file.to_string_lossy().into_owned();
    let prices = judge_prices(&ctx)?;
    let assume = ["--completion-tokens", "30", "--judge-completion-tokens", "20"];

    let plan = ctx.run(&[&["study", "plan", &file, "--prices", &prices][..], &assume].concat())?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    assert!(plan.stdout.contains("30 tokens per call"), "{}", plan.stdout);
    let estimated = number_after(&plan.stdout, "tokens, estimated: ").unwrap_or(0.0);
    // 36 items judged once each, 20 completion tokens a call, at $2 a token.
    let cost = number_after(&plan.stdout, "cost, estimated: $").unwrap_or(0.0);
    assert!((cost - 36.0 * 20.0 * 2.0).abs() < 0.01, "{}", plan.stdout);
    // Unset, each call writes its max_tokens: an upper bound.
    let upper = ctx.run(&["study", "plan", &file, "--prices", &prices])?;
    let upper = number_after(&upper.stdout, "cost, estimated: $").unwrap_or(0.0);
    assert!(upper > 10.0 * cost, "{upper} against {cost}");
    assert!(server.requests().is_empty(), "plan sends nothing");

    // The estimate of prompt tokens, from the pack's texts alone, is within a fifth of what the
    // study sends (the stub's replies are about 30 tokens long).
    let finished = ctx.run(&["study", "run", &file])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let measured = sent_prompt_tokens(&server) as f64;
    assert!(
        (estimated - measured).abs() <= 0.2 * measured,
        "estimated {estimated} prompt tokens, sent {measured}\n{}",
        plan.stdout
    );
    let done = ctx.run(&[&["study", "plan", &file, "--prices", &prices][..], &assume].concat())?;
    assert!(
        done.stdout.contains("$1440.00 in all, $0.00 still to send"),
        "{}",
        done.stdout
    );
    Ok(())
}

/// A judge with `batch: true` is priced at the prices file's batch factor in the plan.
#[test]
fn the_plan_prices_a_batching_judge_at_the_batch_factor() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let file = ctx.dir.path().join("study.yaml");
    let text = study_text("http://127.0.0.1:9/v1", THREE_METHODS).replace(
        "{key: test-judge, provider: compatible,",
        "{key: test-judge, batch: true, provider: compatible,",
    );
    assert!(text.contains("batch: true"));
    std::fs::write(&file, text)?;
    let file = file.to_string_lossy().into_owned();
    let prices = ctx.dir.path().join("prices.yaml");
    std::fs::write(
        &prices,
        "org/model-a: {prompt: 0, completion: 0}\norg/model-b: {prompt: 0, completion: 0}\n\
         test-judge: {prompt: 0, completion: 2000000, batch: 0.5}\n",
    )?;
    let assume = ["--completion-tokens", "30", "--judge-completion-tokens", "20"];
    let plan = ctx.run(
        &[
            &["study", "plan", &file, "--prices", &prices.to_string_lossy()][..],
            &assume,
        ]
        .concat(),
    )?;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    let cost = number_after(&plan.stdout, "cost, estimated: $").unwrap_or(0.0);
    // As the unbatched plan (36 judgements of 20 tokens at $2), at half price.
    assert!((cost - 36.0 * 20.0 * 2.0 * 0.5).abs() < 0.01, "{}", plan.stdout);
    Ok(())
}

#[test]
fn max_cost_refuses_a_study_estimated_above_it_and_stops_one_measured_above_it() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let options = StubOptions {
        latency: Duration::from_millis(20),
        ..StubOptions::default()
    };
    let server = StubServer::start_with(options, |request| Reply::Content(synthetic_reply(request)))?;
    let file = ctx.dir.path().join("study.yaml");
    // Single-call methods: an item is either finished or not sent.
    std::fs::write(&file, study_text(&server.base_url(), TWO_METHODS))?;
    let file = file.to_string_lossy().into_owned();
    let prices = judge_prices(&ctx)?;
    let run = |cap: &str, judge_tokens: &str| {
        ctx.run(&[
            "study",
            "run",
            &file,
            "--prices",
            &prices,
            "--max-cost",
            cap,
            "--judge-completion-tokens",
            judge_tokens,
        ])
    };

    // 24 judge calls of 20 tokens at $2: $960 estimated, above a cap of $100. Refused whole.
    let refused = run("100", "20")?;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("estimated at $960.00, above --max-cost 100.00"),
        "{}",
        refused.stderr
    );
    assert!(server.requests().is_empty() && !ctx.results.exists());

    // A model with no price cannot be held to a cap.
    let unpriced = ctx.dir.path().join("unpriced.yaml");
    std::fs::write(
        &unpriced,
        "org/model-a: {prompt: 1, completion: 1}\ntest-judge: {prompt: 1, completion: 1}\n",
    )?;
    let unpriced = ctx.run(&[
        "study",
        "run",
        &file,
        "--prices",
        &unpriced.to_string_lossy(),
        "--max-cost",
        "1000000",
    ])?;
    assert_eq!(unpriced.code, Some(2), "{unpriced:?}");
    assert!(
        unpriced.stderr.contains("needs a price for `org/model-b`"),
        "{}",
        unpriced.stderr
    );
    assert!(server.requests().is_empty());

    // Estimated at one token a judge call ($48), under $200; the stub's verdict lists are about
    // 70 tokens ($140 a call), so the measured cost reaches the cap after two judge calls: the
    // study sends nothing new, keeps what it finished, and says how to go on.
    let stopped = run("200", "1")?;
    assert_eq!(stopped.code, Some(4), "{stopped:?}");
    assert!(
        stopped.stderr.contains("reached --max-cost 200.00") && stopped.stderr.contains("higher --max-cost"),
        "{}",
        stopped.stderr
    );
    let sent = server.requests().len();
    assert!(sent < 48, "stopped part way: {sent} of 48 requests");

    // Again with no cap: the rest, and nothing finished is sent twice.
    let rest = ctx.run(&["study", "run", &file])?;
    assert_eq!(rest.code, Some(0), "{rest:?}");
    assert_eq!(server.requests().len(), 48);
    let status = ctx.run(&["study", "status", &file])?;
    assert!(
        status.stdout.contains("8 of 8 cell scenarios complete"),
        "{}",
        status.stdout
    );
    Ok(())
}

#[test]
fn repeats_run_each_cell_with_its_own_seed_into_its_own_folder_and_report_the_spread() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    // Each seed answers at its own length, so the judge's verdicts (which follow the length of
    // what it reads) and the SAR differ between repeats.
    let server = StubServer::start(|request| {
        let mut reply = synthetic_reply(request);
        if let Some(seed) = request["seed"].as_u64() {
            // Each model its own reply too, so no two judge requests are alike.
            reply.push_str(request["model"].as_str().unwrap_or_default());
            reply.push_str(&" and so on".repeat(seed as usize * 3));
        }
        Reply::Content(reply)
    })?;
    let file = ctx.dir.path().join("study.yaml");
    // The response cache on: another seed must be another request, not a cached reply.
    let text = study_text(&server.base_url(), "  - method: vanilla\n").replace("no_cache: true", "no_cache: false")
        + "repeats: 3\n";
    std::fs::write(&file, text)?;
    let file = file.to_string_lossy().into_owned();

    let plan = ctx.run(&["study", "plan", &file])?;
    // 2 models × 2 scenarios × 3 items × (1 + 1 judge call), three times.
    assert!(
        plan.stdout.contains(
            "72 requests in all, 72 not made yet, 0 of them answered by the response cache: 72 still to send"
        ),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("vanilla r3"), "{}", plan.stdout);

    let finished = ctx.run(&["study", "run", &file])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), 72);
    // Generation requests carry their repeat's seed; the judge's carry none.
    for seed in 1..=3u64 {
        let seeded = requests.iter().filter(|r| r["seed"].as_u64() == Some(seed)).count();
        assert_eq!(seeded, 12, "requests with seed {seed}");
    }
    assert_eq!(requests.iter().filter(|r| r.get("seed").is_none()).count(), 36);
    for r in 1..=3 {
        for model in ["model-a", "model-b"] {
            let evaluated = ctx.read_json(&format!("repeat-{r}/{model}/Garden/vanilla/test-judge_evaluate.json"))?;
            assert_eq!(evaluated.as_array().map(Vec::len), Some(3), "repeat {r} {model}");
        }
    }
    // The study ends with the mean over repeats and both intervals.
    assert!(
        finished.stdout.contains("Repeats: SAR over sampling seeds"),
        "{}",
        finished.stdout
    );
    let report = ctx.run(&["report", "result", "--format", "json"])?;
    assert_eq!(report.code, Some(0), "{report:?}");
    let json: serde_json::Value = serde_json::from_str(&report.stdout)?;
    let rows = json["repeats"]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{json}");
    for row in rows {
        assert_eq!(row["repeats"], 3, "{row}");
        let per_repeat: Vec<f64> = row["SAR per repeat"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(per_repeat.len(), 3, "{row}");
        let mean = per_repeat.iter().sum::<f64>() / 3.0;
        let (item, between) = (&row["SAR (item interval)"], &row["SAR (between-repeat interval)"]);
        assert!((item["estimate"].as_f64().unwrap_or(0.0) - mean).abs() < 1e-3, "{row}");
        assert!(
            (between["estimate"].as_f64().unwrap_or(0.0) - mean).abs() < 1e-3,
            "{row}"
        );
        // Seeds made the repeats differ, so the spread between them is not zero.
        assert!(between["high"].as_f64().unwrap_or(0.0) > mean, "{row}");
    }
    // Run again: every repeat is found in its journals, nothing is sent.
    let again = ctx.run(&["study", "run", &file])?;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(server.requests().len(), 72);
    Ok(())
}
