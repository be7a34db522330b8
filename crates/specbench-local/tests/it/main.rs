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
