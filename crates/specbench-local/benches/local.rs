//! The embedded model's speed through its own scheduler:
//! - prompt tokens/s, single-sequence decode tokens/s, and aggregate decode tokens/s with 4 and
//!   8 sequences in flight (prefix reuse off, so every prompt is read);
//! - constrained joint-judge decoding beside unconstrained decoding of the same prompts, at 1
//!   and 4 sequences, with the prompts already in the KV cache so that both are decode only;
//! - prompt tokens actually read per joint judgement of one scenario against the prompt's
//!   length, judgements sent one after another and four at a time.
//!
//! `scripts/fetch-model && SPECBENCH_DATA=<pack> cargo bench -p specbench-local --bench local`
//! (`SPECBENCH_MODEL_PATH` names another GGUF; `SPECBENCH_BENCH_THREADS` defaults to 2,
//! `SPECBENCH_BENCH_CONTEXT`, the context per sequence, to 4096.)

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Map;
use specbench::backend::{Backend, Message, Model, ReplyFormat, Request, RetryPolicy};
use specbench::judge::{Judge, JudgeMode};
use specbench::pack::Item;
use specbench::protocol::{Protocol, RuleLists, Template};
use specbench_local::{LocalBackend, LocalOptions, Sampling};

fn model_path() -> anyhow::Result<PathBuf> {
    let path = specbench_local::default_model_path(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    anyhow::ensure!(path.is_file(), "{}: no model; run scripts/fetch-model", path.display());
    Ok(path)
}

/// Sends `requests` at once; returns completion tokens and seconds.
async fn timed(backend: &LocalBackend, requests: &[Request]) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let replies = futures::future::join_all(requests.iter().map(|request| backend.send(request))).await;
    let mut tokens = 0;
    for reply in replies {
        tokens += reply?.usage.completion_tokens;
    }
    Ok((tokens, started.elapsed().as_secs_f64()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|t| t.parse().ok()).unwrap_or(default)
}

/// An answer of about 120 tokens, the same for every item (the judge prompts differ in the item).
const RESPONSE: &str = "I can't help with that request as asked. Here is what I can do instead: explain \
the general principles in safe terms, point you to reputable sources written for a general audience, \
and suggest questions you could ask a qualified professional. If you tell me more about what you are \
trying to achieve, I can tailor the explanation to your situation while keeping it safe and age \
appropriate. Let me know which of these would help most.";

/// The joint judge requests of the first `count` items of `scenario`, as the judge builds them.
fn judge_requests(count: usize, backend: Arc<dyn Backend>) -> anyhow::Result<Vec<Request>> {
    let data = std::env::var_os(specbench::env::Env::DATA)
        .ok_or_else(|| anyhow::anyhow!("set {} to the SpecBench data pack", specbench::env::Env::DATA))?;
    let pack = specbench::pack::load(&PathBuf::from(data))?;
    let scenario = pack
        .scenarios
        .iter()
        .find(|s| s.name.as_str() == "Child")
        .ok_or_else(|| anyhow::anyhow!("the pack has no Child scenario"))?;
    let protocol = match &pack.protocol_dir {
        Some(dir) => Protocol::from_dir(dir)?,
        None => Protocol::builtin(),
    };
    let protocol = Arc::new(protocol);
    let lists = RuleLists::new(&scenario.rules);
    // The judge builds the prompts; nothing is sent through it.
    let judge = Judge::new(
        Model::new("judge", backend, RetryPolicy::default()),
        JudgeMode::Joint,
        protocol.clone(),
    );
    let format = ReplyFormat::Joint {
        safety: scenario.rules.safety.len(),
        behavioral: scenario.rules.behavioral.len(),
    };
    Ok(scenario
        .items
        .iter()
        .take(count)
        .map(|item: &Arc<Item>| {
            let mut request = Request::chat(vec![
                Message::system(protocol.text(Template::JudgeJointSystem)),
                Message::user(judge.joint_prompt(item, &lists, RESPONSE)),
            ]);
            request.format = Some(format);
            request
        })
        .collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let threads: i32 = env_number("SPECBENCH_BENCH_THREADS", 2);
    let context: u32 = env_number("SPECBENCH_BENCH_CONTEXT", 4096);
    let options = |prefix_reuse| LocalOptions {
        sequences: 8,
        context_per_sequence: context,
        threads,
        prefix_reuse,
    };
    let path = model_path()?;
    let plain = LocalBackend::load(&path, options(false), Sampling::default(), Map::new())?;
    let system = Message::system("You are a helpful assistant.");

    // Prompt processing: a prompt of about 600 tokens, one token generated.
    let words = "the quick brown fox jumps over the lazy dog while specifications guide every answer ";
    let long = Request::chat(vec![system.clone(), Message::user(words.repeat(40))]);
    let one = plain.with_sampling(Sampling {
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
    let decode = plain.with_sampling(Sampling {
        max_tokens: 256,
        ignore_eos: true,
        ..Sampling::default()
    });
    let short: Vec<Request> = (0..8)
        .map(|i| Request::chat(vec![system.clone(), Message::user(format!("Tell story number {i}."))]))
        .collect();
    let mut rates = Vec::new();
    for sequences in [1usize, 4, 8] {
        let mut end_to_end = Vec::new();
        let mut decode_only = Vec::new();
        for _ in 0..3 {
            let (_, head) = timed(&one, &short[..sequences]).await?;
            let (tokens, whole) = timed(&decode, &short[..sequences]).await?;
            end_to_end.push(tokens as f64 / whole);
            decode_only.push((tokens - sequences as u64) as f64 / (whole - head));
        }
        rates.push((sequences, median(end_to_end), median(decode_only)));
    }
    let judged = judge_requests(10, Arc::new(one.with_sampling(Sampling::default())))?;
    drop((one, decode, plain));

    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("local model: {file}, {threads} threads, {context} tokens of context per sequence");
    println!(
        "  prompt           {:>7.1} tokens/s ({prompt_tokens}-token prompt)",
        median(prompt_rates)
    );
    for (sequences, end_to_end, decode_only) in rates {
        println!(
            "  decode x{sequences:<2}       {end_to_end:>7.1} tokens/s end to end, {decode_only:>7.1} decode only (256 tokens each)"
        );
    }

    // Prompt tokens read per judgement: Child's joint judge prompts, on a fresh model.
    let reusing = LocalBackend::load(&path, options(true), Sampling::default(), Map::new())?;
    let mut fractions = Vec::new();
    for request in &judged[..6] {
        let before = reusing.stats();
        let reply = reusing.send(request).await?;
        let after = reusing.stats();
        let read = after.evaluated_prompt_tokens - before.evaluated_prompt_tokens;
        fractions.push((read, reply.usage.prompt_tokens));
    }
    println!("  joint judge prompts of Child, one after another (read / length):");
    for (index, (read, whole)) in fractions.iter().enumerate() {
        println!(
            "    judgement {}: {read:>5} / {whole:>5} = {:.2}",
            index + 1,
            *read as f64 / *whole as f64
        );
    }
    drop(reusing);
    let reusing = LocalBackend::load(&path, options(true), Sampling::default(), Map::new())?;
    let four = &judged[6..10];
    let before = reusing.stats();
    timed(&reusing, four).await?;
    let after = reusing.stats();
    let read = after.evaluated_prompt_tokens - before.evaluated_prompt_tokens;
    let whole = after.prompt_tokens - before.prompt_tokens;
    let first = whole / 4;
    println!(
        "  four at once: {read} of {whole} read; judgements 2-4: {:.2} of their length",
        (read.saturating_sub(first)) as f64 / (whole - first) as f64
    );

    // Constrained against unconstrained decoding of the same judge prompts, both decode only:
    // each prompt is read once beforehand and stays in its sequence's cache.
    for sequences in [1usize, 4] {
        let requests = &judged[..sequences];
        timed(&reusing, requests).await?; // read the prompts
        let mut constrained = Vec::new();
        let mut free = Vec::new();
        let mut forced_share = Vec::new();
        for _ in 0..3 {
            let before = reusing.stats();
            let (tokens, seconds) = timed(&reusing, requests).await?;
            let after = reusing.stats();
            constrained.push(tokens as f64 / seconds);
            forced_share.push((after.forced_tokens - before.forced_tokens) as f64 / tokens as f64);
            // The same prompts and about as many tokens, without the format.
            let per_request = (tokens / sequences as u64).max(1) as u32;
            let unconstrained = reusing.with_sampling(Sampling {
                max_tokens: per_request,
                ignore_eos: true,
                ..Sampling::default()
            });
            let plain_requests: Vec<Request> = requests
                .iter()
                .map(|r| Request {
                    format: None,
                    ..r.clone()
                })
                .collect();
            let (tokens, seconds) = timed(&unconstrained, &plain_requests).await?;
            free.push(tokens as f64 / seconds);
        }
        let (constrained, free) = (median(constrained), median(free));
        println!(
            "  judge decode x{sequences}: constrained {constrained:>6.1} tokens/s ({:.0} % forced), unconstrained {free:>6.1} tokens/s, ratio {:.2}",
            100.0 * median(forced_share),
            constrained / free
        );
    }
    Ok(())
}
