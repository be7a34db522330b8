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

    // Decoding: 256 tokens each, greedy, past end-of-generation.
    let decode = base.with_sampling(Sampling {
        max_tokens: 256,
        ignore_eos: true,
        ..Sampling::default()
    });
    let short = |i: usize| Request::chat(vec![system.clone(), Message::user(format!("Tell story number {i}."))]);
    let mut rates = Vec::new();
    for sequences in [1usize, 4, 8] {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let replies = futures::future::join_all((0..sequences).map(|i| {
                let request = short(i);
                let decode = &decode;
                async move { decode.send(&request).await }
            }))
            .await;
            let mut tokens = 0;
            for reply in replies {
                tokens += reply?.usage.completion_tokens;
            }
            runs.push(tokens as f64 / started.elapsed().as_secs_f64());
        }
        rates.push((sequences, median(runs)));
    }

    println!("local model: SmolLM2-135M-Instruct Q4_1, {threads} threads");
    println!(
        "  prompt           {:>7.1} tokens/s ({prompt_tokens}-token prompt)   llama.cpp ~240",
        median(prompt_rates)
    );
    for (sequences, rate) in rates {
        let reference = if sequences == 1 {
            "~100"
        } else if sequences == 8 {
            "~105"
        } else {
            "-"
        };
        println!("  decode x{sequences:<2}       {rate:>7.1} tokens/s (256 tokens each)     llama.cpp {reference}");
    }
    Ok(())
}
