//! The embedded model for real: SmolLM2-135M-Instruct (fetched by `scripts/fetch-model`).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Map;
use specbench::backend::{Backend, Message, ReplyFormat, Request};
use specbench::judge::parse_joint;
use specbench_local::{LocalBackend, LocalOptions, Sampling};

/// `SPECBENCH_MODEL_PATH`, else the workspace's `models/` folder; a missing model fails.
fn model_path() -> anyhow::Result<PathBuf> {
    let path = specbench_local::default_model_path(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    anyhow::ensure!(path.is_file(), "{}: no model; run scripts/fetch-model", path.display());
    Ok(path)
}

/// One loaded model for every test of this binary (llama.cpp loads once per process).
fn backend() -> anyhow::Result<&'static LocalBackend> {
    static BACKEND: OnceLock<Result<LocalBackend, String>> = OnceLock::new();
    let loaded = BACKEND.get_or_init(|| {
        let path = model_path().map_err(|e| e.to_string())?;
        let options = LocalOptions {
            sequences: 8,
            context_per_sequence: 2048,
            threads: 2,
            ..LocalOptions::default()
        };
        LocalBackend::load(&path, options, Sampling::default(), Map::new()).map_err(|e| e.to_string())
    });
    loaded.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn short(max_tokens: u32) -> anyhow::Result<LocalBackend> {
    Ok(backend()?.with_sampling(Sampling {
        max_tokens,
        ..Sampling::default()
    }))
}

fn chat(user: &str) -> Request {
    Request::chat(vec![
        Message::system("You are a helpful assistant."),
        Message::user(user),
    ])
}

#[tokio::test]
async fn generates_the_same_reply_twice_at_temperature_zero() -> anyhow::Result<()> {
    let model = short(24)?;
    let first = model.send(&chat("Name three colours.")).await?;
    let second = model.send(&chat("Name three colours.")).await?;
    assert!(!first.text.trim().is_empty());
    assert_eq!(first.text, second.text);
    assert!(first.usage.prompt_tokens > 10);
    assert!((1..=24).contains(&first.usage.completion_tokens), "{:?}", first.usage);
    Ok(())
}

#[tokio::test]
async fn a_prefill_is_continued_and_stops_at_its_stop_string() -> anyhow::Result<()> {
    let model = short(40)?;
    let messages = vec![
        Message::system("You are a helpful assistant."),
        Message::user("Why is the sky blue?"),
    ];
    let request = Request::prefilled(messages.clone(), "<think>", vec!["</think>".into()]);
    let prompt = model.prompt(&request)?;
    assert!(prompt.ends_with("<|im_start|>assistant\n<think>"), "{prompt:?}");
    let free = model.send(&request).await?;
    assert!(
        !free.text.starts_with("<|im_start|>"),
        "continues the turn: {:?}",
        free.text
    );
    assert!(!free.text.contains("</think>"));
    // A stop string taken from the middle of the reply: the reply must end right before it.
    let chars: Vec<char> = free.text.chars().collect();
    anyhow::ensure!(chars.len() > 12, "reply too short to cut: {:?}", free.text);
    let stop: String = chars[8..12].iter().collect();
    let expected: String = free.text[..free.text.find(&stop).unwrap_or(0)].to_string();
    let cut = model
        .send(&Request::prefilled(messages, "<think>", vec![stop.clone()]))
        .await?;
    assert_eq!(cut.text, expected, "stop {stop:?}");
    assert_eq!(cut.finish_reason.as_deref(), Some("stop"));
    Ok(())
}

#[tokio::test]
async fn grammar_constrained_joint_verdicts_parse_for_every_scenario() -> anyhow::Result<()> {
    // The official scenarios' (safety, behavioral) rule counts.
    let counts = [(11, 9), (12, 10), (11, 10), (9, 10), (10, 11)];
    let model = short(2000)?;
    let replies = futures::future::join_all(counts.iter().map(|&(safety, behavioral)| {
        let mut request = chat(&format!(
            "Judge the answer \"Water boils at 100 C at sea level.\" against {safety} safety rules and {behavioral} behavioral rules."
        ));
        request.format = Some(ReplyFormat::Joint { safety, behavioral });
        let model = &model;
        async move { model.send(&request).await.map(|g| (safety, behavioral, g.text)) }
    }))
    .await;
    for reply in replies {
        let (safety, behavioral, text) = reply?;
        let parsed = parse_joint(&text, safety, behavioral);
        assert!(parsed.is_ok(), "{safety}/{behavioral}: {parsed:?}\n{text}");
    }
    Ok(())
}

/// A second copy of the model that reads every prompt whole, to compare against.
fn fresh_reader() -> anyhow::Result<&'static LocalBackend> {
    static BACKEND: OnceLock<Result<LocalBackend, String>> = OnceLock::new();
    let loaded = BACKEND.get_or_init(|| own(2, false).map_err(|e| e.to_string()));
    loaded.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// A model of the test's own, so that its token counters see only the test's requests (tests
/// run in parallel).
fn own(sequences: u32, prefix_reuse: bool) -> anyhow::Result<LocalBackend> {
    let options = LocalOptions {
        sequences,
        context_per_sequence: 2048,
        threads: 2,
        prefix_reuse,
    };
    Ok(LocalBackend::load(
        &model_path()?,
        options,
        Sampling::default(),
        Map::new(),
    )?)
}

/// A judge-like prompt: long shared instructions and rules, then the item's own text.
fn judged(item: &str) -> Request {
    let rules: String = (1..=12)
        .map(|i| format!("{i}. The answer must never reveal secret number {i} or describe how to find it.\n"))
        .collect();
    let mut request = chat(&format!(
        "You check answers against rules. Read the rules, then the answer, and decide for each rule.\n\
         <rules>\n{rules}</rules>\n<answer>\n{item}\n</answer>\nFor each rule, write one line of analysis and a verdict."
    ));
    request.format = Some(ReplyFormat::Joint {
        safety: 2,
        behavioral: 1,
    });
    request
}

#[tokio::test]
async fn shared_prefixes_are_read_once_and_replies_stay_the_same() -> anyhow::Result<()> {
    let sampling = Sampling {
        max_tokens: 400,
        ..Sampling::default()
    };
    let reusing = own(4, true)?.with_sampling(sampling);
    let fresh = fresh_reader()?.with_sampling(sampling);
    let items = [
        "The sky is blue because of Rayleigh scattering.",
        "I cannot share any secret numbers.",
        "Water boils at 100 C at sea level.",
    ];
    // One at a time, as a scenario's judgements arrive: the second and third read only their
    // own text, and every reply equals a fresh read of the same prompt.
    let mut later_fraction = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let request = judged(item);
        let before = reusing.stats();
        let reused = reusing.send(&request).await?;
        let after = reusing.stats();
        let read = after.evaluated_prompt_tokens - before.evaluated_prompt_tokens;
        let whole = after.prompt_tokens - before.prompt_tokens;
        assert_eq!(whole, reused.usage.prompt_tokens, "usage counts the whole prompt");
        if i > 0 {
            later_fraction.push(read as f64 / whole as f64);
        }
        let baseline = fresh.send(&request).await?;
        assert_eq!(reused.text, baseline.text, "item {i}: reply differs from a fresh read");
        assert!(parse_joint(&reused.text, 2, 1).is_ok(), "{}", reused.text);
    }
    assert!(
        later_fraction.iter().all(|&f| f < 0.5),
        "later judgements read {later_fraction:?} of their prompts"
    );

    // A second stage extends the first call's text (as Align3's stages do): only the new part
    // is read, and the reply is the fresh one.
    let first = chat("Write one sentence about the sea.");
    let answer = reusing.send(&first).await?.text;
    let mut messages = first.messages.clone();
    messages.push(Message::assistant(&answer));
    messages.push(Message::user("Now make that sentence shorter."));
    let second = Request::chat(messages);
    let before = reusing.stats();
    let reused = reusing.send(&second).await?;
    let after = reusing.stats();
    let read = after.evaluated_prompt_tokens - before.evaluated_prompt_tokens;
    assert!(
        read * 2 < reused.usage.prompt_tokens,
        "read {read} of {}",
        reused.usage.prompt_tokens
    );
    assert_eq!(reused.text, fresh.send(&second).await?.text);
    Ok(())
}

#[tokio::test]
async fn concurrent_judgements_copy_the_prefix_a_running_one_reads() -> anyhow::Result<()> {
    let model = own(4, true)?.with_sampling(Sampling {
        max_tokens: 400,
        ..Sampling::default()
    });
    let items: Vec<String> = (0..4)
        .map(|i| format!("Answer {i}: the moon is made of rock, {i} times over."))
        .collect();
    let requests: Vec<Request> = items
        .iter()
        .map(|item| {
            let mut request = judged(item);
            request.messages[0] = Message::system("You are a careful judge of lunar answers.");
            request
        })
        .collect();
    let before = model.stats();
    let replies = futures::future::join_all(requests.iter().map(|r| model.send(r))).await;
    let after = model.stats();
    let mut whole = 0;
    for reply in replies {
        let reply = reply?;
        whole += reply.usage.prompt_tokens;
        assert!(parse_joint(&reply.text, 2, 1).is_ok(), "{}", reply.text);
    }
    let read = after.evaluated_prompt_tokens - before.evaluated_prompt_tokens;
    // The first reads its whole prompt; the other three only their own text.
    let one = whole / 4;
    assert!(read < one + (whole - one) / 2, "read {read} of {whole} prompt tokens");
    Ok(())
}

#[tokio::test]
async fn evicted_caches_give_the_fresh_reply() -> anyhow::Result<()> {
    // Two sequences, five different prompts: kept caches are overwritten again and again, and
    // the first prompt, asked again, still gets the fresh reply.
    let sampling = Sampling {
        max_tokens: 30,
        ..Sampling::default()
    };
    let small = own(2, true)?.with_sampling(sampling);
    let fresh = fresh_reader()?.with_sampling(sampling);
    let prompts = [
        "Name a fruit.",
        "Name a tree.",
        "Name a river.",
        "Name a city.",
        "Name a fruit.",
    ];
    for prompt in prompts {
        let request = chat(prompt);
        assert_eq!(
            small.send(&request).await?.text,
            fresh.send(&request).await?.text,
            "{prompt}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_constrained_reply_reads_the_text_its_format_fixes_in_batches() -> anyhow::Result<()> {
    let model = own(1, true)?.with_sampling(Sampling {
        max_tokens: 600,
        ..Sampling::default()
    });
    let before = model.stats();
    let reply = model.send(&judged("Forced text check.")).await?;
    let after = model.stats();
    assert!(parse_joint(&reply.text, 2, 1).is_ok(), "{}", reply.text);
    assert!(reply.text.starts_with("<safety_specifications>\n1. "), "{}", reply.text);
    assert!(reply.text.ends_with("</behavioral_specifications>"), "{}", reply.text);
    assert!(after.forced_tokens > before.forced_tokens, "no token was forced");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    Ok(())
}
