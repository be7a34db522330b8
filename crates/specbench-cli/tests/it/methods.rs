//! Test-time methods through the binary: prefill styles, parameters, result folders.

use serde_json::Value;
use specbench_test::{Reply, StubServer, synthetic_reply};

use crate::support::TestContext;

/// A small ChatML template of our own, in the style of the models SpecBench prefills.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}";

fn write_template(ctx: &TestContext) -> anyhow::Result<String> {
    let path = ctx.dir.path().join("chatml.jinja");
    std::fs::write(&path, CHATML)?;
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn align3_through_completions_renders_the_template_here() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let template = write_template(&ctx)?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--method",
        "align3",
        "--prefill",
        "completions",
        "--chat-template",
        &template,
        "--scenario",
        "Garden",
        "--limit",
        "1",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "three stages");
    for request in &requests {
        assert!(request.get("messages").is_none(), "a raw prompt, not messages");
        assert!(request.get("chat_template_kwargs").is_none());
        assert!(
            request["prompt"]
                .as_str()
                .is_some_and(|p| p.starts_with("<|im_start|>system\n"))
        );
    }
    let prompts: Vec<&str> = requests.iter().filter_map(|r| r["prompt"].as_str()).collect();
    assert!(prompts[0].ends_with("<|im_start|>assistant\n<think>Let me plan an answer that helps as fully as possible while keeping to these behavioral specifications:\n- Name the season or month when the advice applies\n- Keep the answer under 200 words\n- End with one practical next step\n\nSo"));
    // Each stage continues the last: the earlier prompt (without its end) is a prefix.
    assert!(prompts[1].starts_with(prompts[0]));
    assert!(prompts[2].starts_with(prompts[1]));
    assert_eq!(requests[0]["stop"], serde_json::json!(["</think>"]));
    assert_eq!(requests[1]["stop"], serde_json::json!(["</think>"]));
    assert_eq!(requests[2]["stop"], serde_json::json!([]));
    let generated = ctx.read_json("m/Garden/align3/generate.json")?;
    let thought = generated[0]["thought"].as_str().unwrap_or_default();
    assert!(thought.starts_with("<think>Let me plan"), "{thought}");
    assert!(
        thought.contains("Last, I will review the whole draft"),
        "stage 3 is in the thought"
    );
    Ok(())
}

#[test]
fn an_align3_ablation_sends_continue_final_message_and_gets_its_own_folder() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let template = write_template(&ctx)?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--method",
        "align3",
        "--align3-stages",
        "2,1",
        "--chat-template",
        &template,
        "--scenario",
        "Museum",
        "--limit",
        "1",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first["continue_final_message"], true);
    assert_eq!(first["add_generation_prompt"], false);
    assert_eq!(first["chat_template"], CHATML);
    assert_eq!(
        first["chat_template_kwargs"],
        serde_json::json!({"enable_thinking": false, "enable_raw_content": true})
    );
    let prefill = first["messages"][2]["content"].as_str().unwrap_or_default();
    assert!(
        prefill.starts_with("<think>Before going on, I should check my plan"),
        "stage 2 opens the thought: {prefill}"
    );
    assert!(ctx.results.join("m/Museum/align3-stages=2,1/generate.json").is_file());
    let manifest = ctx.read_json("m/Museum/align3-stages=2,1/manifest.json")?;
    assert_eq!(
        manifest["generation"]["method"],
        serde_json::json!({"name": "align3", "stages": [2, 1]})
    );
    Ok(())
}

#[test]
fn method_parameters_come_from_flags_then_the_ttd_config() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let ttd = ctx.dir.path().join("ttd.yaml");
    std::fs::write(&ttd, "self_refine:\n  max_iters: 1\n  max_history_length: 1\n")?;
    let ttd = ttd.to_string_lossy().into_owned();
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let url = server.base_url();
    let common = [
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--method",
        "self_refine",
        "--ttd-config",
        &ttd,
    ];
    let from_file = ctx.run(&[&common[..], &["--scenario", "Garden", "--limit", "1"]].concat())?;
    assert_eq!(from_file.code, Some(0), "{from_file:?}");
    assert_eq!(server.requests().len(), 3, "draft, feedback, refine");
    assert!(
        ctx.results
            .join("m/Garden/self_refine-max_iters=1-max_history_length=1")
            .is_dir()
    );

    let from_flag = ctx.run(
        &[
            &common[..],
            &["--max-iters", "2", "--scenario", "Museum", "--limit", "1"],
        ]
        .concat(),
    )?;
    assert_eq!(from_flag.code, Some(0), "{from_flag:?}");
    assert_eq!(server.requests().len(), 3 + 5);
    let requests = server.requests();
    let last = &requests[requests.len() - 1];
    let history = last["messages"][1]["content"].as_str().unwrap_or_default();
    assert!(
        history.contains("<RESPONSE_1>") && !history.contains("<RESPONSE_2>"),
        "history window of 1"
    );
    let generated: Value = ctx.read_json("m/Museum/self_refine-max_iters=2-max_history_length=1/generate.json")?;
    assert_eq!(generated[0]["thought"], "");
    Ok(())
}

#[test]
fn a_parameter_of_another_method_is_rejected() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--method",
        "align3",
        "--rethink-count",
        "4",
    ])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("a parameter of another method was given with --method align3"),
        "{}",
        finished.stderr
    );
    assert!(!ctx.results.exists());
    Ok(())
}

/// A stub that answers chat requests with numbered samples and score requests with the
/// length of the scored text, so the longest sample is the best.
fn sampling_stub() -> anyhow::Result<StubServer> {
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    StubServer::start(move |request| {
        if let Some(text) = request["text_2"].as_str() {
            return Reply::RawBody(serde_json::json!({"data": [{"index": 0, "score": text.len() as f64}]}).to_string());
        }
        if request["messages"][1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("<response_begin>"))
        {
            return Reply::Content(synthetic_reply(request));
        }
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::Content(format!("sample {i}{}", "!".repeat(i % 3)))
    })
}

#[test]
fn best_of_n_keeps_the_sample_the_reward_model_prefers() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = sampling_stub()?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--method",
        "best_of_n",
        "--n",
        "3",
        "--reward-model",
        "rm",
        "--reward-base-url",
        &url,
        "--scenario",
        "Garden",
        "--limit",
        "1",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = server.requests();
    let scored: Vec<&str> = requests.iter().filter_map(|r| r["text_2"].as_str()).collect();
    assert_eq!(scored.len(), 3, "every sample scored");
    assert_eq!(requests.len(), 6, "3 samples + 3 scores");
    let longest = scored.iter().max_by_key(|t| t.len()).copied().unwrap_or_default();
    let generated = ctx.read_json("m/Garden/best_of_n-n=3-scorer=reward/generate.json")?;
    assert_eq!(generated[0]["response"], longest);
    let manifest = ctx.read_json("m/Garden/best_of_n-n=3-scorer=reward/manifest.json")?;
    assert_eq!(
        manifest["generation"]["method"],
        serde_json::json!({"name": "best_of_n", "n": 3, "scorer": "reward_model"})
    );
    Ok(())
}

#[test]
fn a_reward_model_that_fails_once_is_asked_again_and_its_scores_are_cached() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = StubServer::start(move |request| {
        if let Some(text) = request["text_2"].as_str() {
            // The first score request meets an overloaded server.
            if !failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Reply::Status {
                    status: 503,
                    body: "overloaded".into(),
                    retry_after: Some("0".into()),
                };
            }
            return Reply::RawBody(serde_json::json!({"data": [{"index": 0, "score": text.len() as f64}]}).to_string());
        }
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::Content(format!("sample {i}{}", "!".repeat(i % 3)))
    })?;
    let url = server.base_url();
    // Both contexts share the first one's response cache.
    let cache = ctx.cache_dir();
    let cache = cache.to_string_lossy();
    let args = [
        "generate",
        "--model",
        "m",
        "--base-url",
        &url,
        "--method",
        "best_of_n",
        "--n",
        "3",
        "--reward-model",
        "rm",
        "--reward-base-url",
        &url,
        "--scenario",
        "Garden",
        "--limit",
        "1",
        "--cache-dir",
        &cache,
    ];
    let finished = ctx.run(&args)?;
    assert_eq!(finished.code, Some(0), "one 503 does not fail the item: {finished:?}");
    let scored = |requests: &[serde_json::Value]| requests.iter().filter(|r| r["text_2"].is_string()).count();
    assert_eq!(scored(&server.requests()), 4, "3 scores, one of them asked twice");
    let generated = ctx.read_json("m/Garden/best_of_n-n=3-scorer=reward/generate.json")?;
    assert_eq!(generated[0]["response"], "sample 2!!");

    // The same run into a fresh results folder: samples and scores come from the cache.
    let again = TestContext::with_pack("minimal")?;
    let sent = server.requests().len();
    let finished = again.run(&args)?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(server.requests().len(), sent, "nothing is asked twice");
    let regenerated = again.read_json("m/Garden/best_of_n-n=3-scorer=reward/generate.json")?;
    assert_eq!(regenerated[0]["response"], "sample 2!!");
    Ok(())
}

#[test]
fn tpo_with_the_judge_as_scorer_is_labelled_an_oracle() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let server = sampling_stub()?;
    let url = server.base_url();
    let finished = ctx.run(&[
        "run",
        "--model",
        "m",
        "--base-url",
        &url,
        "--judge",
        "j",
        "--judge-base-url",
        &url,
        "--method",
        "tpo",
        "--tpo-samples",
        "2",
        "--tpo-iterations",
        "1",
        "--scorer",
        "judge",
        "--scenario",
        "Garden",
        "--limit",
        "1",
    ])?;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = server.requests();
    let is_judge = |r: &&Value| {
        r["messages"][1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("<response_begin>"))
    };
    let judge_calls = requests.iter().filter(is_judge).count();
    // 2 samples, loss, gradient, 2 revisions = 6 generations; 4 oracle judgements. The final
    // judgement of the chosen response repeats one of them and comes from the response cache.
    assert_eq!(requests.len() - judge_calls, 6);
    assert_eq!(judge_calls, 4);
    assert!(finished.stdout.contains("1 from cache"), "{}", finished.stdout);
    let loss_prompt = requests
        .iter()
        .filter_map(|r| r["messages"][1]["content"].as_str())
        .find(|c| c.contains("<REJECTED>"));
    assert!(loss_prompt.is_some(), "a textual loss compares best and worst");
    assert!(
        ctx.results
            .join("m/Garden/tpo-samples=2-iterations=1-scorer=judge_oracle/j_score.json")
            .is_file()
    );
    Ok(())
}

#[test]
fn best_of_n_without_a_reward_model_is_a_usage_error() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let finished = ctx.run(&[
        "generate",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--method",
        "best_of_n",
    ])?;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(
        finished.stderr.contains("needs --reward-model and --reward-base-url"),
        "{}",
        finished.stderr
    );
    Ok(())
}
