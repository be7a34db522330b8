//! The embedded model's speed through its own scheduler: prompt tokens/s, single-sequence
//! decode tokens/s, and aggregate decode tokens/s with 4 and 8 sequences in flight.
//!
//! `scripts/fetch-model && cargo bench -p specbench-local --bench local`
//! (`SPECBENCH_MODEL_PATH` names another GGUF; `SPECBENCH_BENCH_THREADS` defaults to 2,
//! `SPECBENCH_BENCH_CONTEXT`, the context per sequence, to 1024.)

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use serde_json::Map;
use specbench::backend::{Backend, Message, Request};
use specbench_local::{LocalBackend, LocalOptions, Sampling};

fn model_path() -> anyhow::Result<PathBuf> {
    let path = specbench_local::default_model_path(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    anyhow::ensure!(path.is_file(), "{}: no model; run scripts/fetch-model", path.display());
    Ok(path)
}

/// Sends `sequences` requests at once; returns completion tokens and seconds.
async fn timed(
    backend: &LocalBackend,
    request: &dyn Fn(usize) -> Request,
    sequences: usize,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let replies = futures::future::join_all((0..sequences).map(|i| {
        let request = request(i);
        async move { backend.send(&request).await }
    }))
    .await;
    let mut tokens = 0;
    for reply in replies {
        tokens += reply?.usage.completion_tokens;
    }
    Ok((tokens, started.elapsed().as_secs_f64()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let threads: i32 = std::env::var("SPECBENCH_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let context: u32 = std::env::var("SPECBENCH_BENCH_CONTEXT")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1024);
    let options = LocalOptions {
        sequences: 8,
        context_per_sequence: context,
        threads,
    };
    let base = LocalBackend::load(&model_path()?, options, Sampling::default(), Map::new())?;
    let system = Message::system("You are a helpful assistant.");

    // Prompt processing: a prompt of about 600 tokens, one token generated.
    let words = "the quick brown fox jumps over the lazy dog while specifications guide every answer ";
    let long = Request::chat(vec![system.clone(), Message::user(words.repeat(40))]);
    let one = base.with_sampling(Sampling {
        max_tokens: 1,
        ..Sampling::default()
    });
    let mut prompt_rates = Vec::new();
    let mut prompt_tokens = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let generation = one.send(&long).await?;
        prompt_tokens = generation.usage.prompt_tokens;
        prompt_rates.push(prompt_tokens as f64 / started.elapsed().as_secs_f64());
    }

    // Decoding: 256 tokens each, greedy, past end-of-generation. End to end is what a caller
    // sees (the short prompt and sampling included); "decode only" takes off the time of the
    // same requests stopped after their first token, which is how llama.cpp's benchmarks
    // report decoding (they neither sample nor count the prompt).
    let decode = base.with_sampling(Sampling {
        max_tokens: 256,
        ignore_eos: true,
        ..Sampling::default()
    });
    let first = base.with_sampling(Sampling {
        max_tokens: 1,
        ..Sampling::default()
    });
    let short = |i: usize| Request::chat(vec![system.clone(), Message::user(format!("Tell story number {i}."))]);
    let mut rates = Vec::new();
    for sequences in [1usize, 4, 8] {
        let mut end_to_end = Vec::new();
        let mut decode_only = Vec::new();
        for _ in 0..3 {
            let (_, head) = timed(&first, &short, sequences).await?;
            let (tokens, whole) = timed(&decode, &short, sequences).await?;
            end_to_end.push(tokens as f64 / whole);
            decode_only.push((tokens - sequences as u64) as f64 / (whole - head));
        }
        rates.push((sequences, median(end_to_end), median(decode_only)));
    }

    println!("local model: SmolLM2-135M-Instruct Q4_1, {threads} threads");
    println!(
        "  prompt           {:>7.1} tokens/s ({prompt_tokens}-token prompt)",
        median(prompt_rates)
    );
    for (sequences, end_to_end, decode_only) in rates {
        println!(
            "  decode x{sequences:<2}       {end_to_end:>7.1} tokens/s end to end, {decode_only:>7.1} decode only (256 tokens each)"
        );
    }
    Ok(())
}
