//! The viewer and the report at the scale of a study, on the real binary.
//!
//! Writes a synthetic results folder with the store's own writers (every scenario of the pack,
//! all 300 items each; by default 33 models × 8 methods, one joint judge: 396,000 judged items,
//! each with its judge prompt, as a run writes them), then measures:
//! - `specbench view`: start (until it prints its URL) twice, the first building its index and
//!   the second reusing it, its peak memory, and the time of the run list, a page of items, a
//!   filtered page and a search over loopback;
//! - `specbench report`: wall time and peak memory.
//!
//! `SPECBENCH_DATA=… cargo bench -p specbench-cli --bench scale`
//! Optional: `SPECBENCH_SCALE_MODELS` (33), `SPECBENCH_SCALE_METHODS` (8, at most 8),
//! `SPECBENCH_SCALE_DIR` (keep the folder there and reuse it on the next run).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use specbench_test::bench::{env_number, wait_with_rusage};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use specbench::backend::{Backend, BackendError, Generation, Model, Request, RetryPolicy, Usage};
use specbench::judge::{Judge, JudgeMode};
use specbench::method::MethodConfig;
use specbench::protocol::{Protocol, RuleLists};
use specbench::score::{Alpha, Verdict, Verdicts};
use specbench::store::{GenerateEntry, GenerationRecord, JudgeOutput, JudgeRecord, Store};

const JUDGE: &str = "bench-judge";

/// Never called: the judge only builds prompts here.
struct Silent;

#[async_trait]
impl Backend for Silent {
    async fn send(&self, _request: &Request) -> Result<Generation, BackendError> {
        Err(BackendError::Config("the scale bench sends nothing".into()))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn main() -> anyhow::Result<()> {
    let models: usize = env_number("SPECBENCH_SCALE_MODELS", 33)?;
    let method_count = env_number::<usize>("SPECBENCH_SCALE_METHODS", 8)?.min(8);
    let data = specbench_test::golden::pack_dir()?;
    let kept = std::env::var_os("SPECBENCH_SCALE_DIR").map(PathBuf::from);
    let temporary = tempfile::tempdir()?;
    let results = kept.clone().unwrap_or_else(|| temporary.path().join("result"));

    let marker = results.join(".complete");
    let written = if marker.is_file() {
        println!("scale: reusing {}", results.display());
        std::fs::read_to_string(&marker)?.trim().parse()?
    } else {
        let started = Instant::now();
        let items = write_results(&data, &results, models, method_count)?;
        std::fs::write(&marker, items.to_string())?;
        println!(
            "scale: wrote {items} judged items ({models} models × {method_count} methods × every scenario) in {:.1} s, {:.1} GiB",
            started.elapsed().as_secs_f64(),
            folder_bytes(&results)? as f64 / (1u64 << 30) as f64
        );
        items
    };

    // A run in the middle of the list: neither the first file read nor the last.
    let run = written / 300 / 2;
    // The viewer's index goes in its cache folder: a fresh one, so the first start builds it
    // and the second reuses it.
    let cache = tempfile::tempdir()?;
    for start in ["first start (builds the index)", "later start (reuses it)"] {
        measure_viewer(&results, &data, cache.path(), start, written, run)?;
    }
    measure_report(&results, &data)?;
    Ok(())
}

/// The methods a study compares, with upstream's default parameters.
fn methods(count: usize) -> Vec<MethodConfig> {
    use specbench::method::MethodKind;
    MethodKind::ALL
        .iter()
        .take(count)
        .map(|kind| MethodConfig::with_defaults(*kind))
        .collect()
}

/// Writes every model × method × scenario folder as a finished run would; returns the count
/// of judged items.
fn write_results(data: &Path, results: &Path, models: usize, method_count: usize) -> anyhow::Result<usize> {
    let pack = specbench::pack::load(data)?;
    let protocol = Arc::new(Protocol::for_pack(pack.protocol_dir.as_deref())?);
    let judge = Judge::new(
        Model::new(JUDGE, Arc::new(Silent), RetryPolicy::default()),
        JudgeMode::Joint,
        protocol,
    );
    let store = Store::new(results);
    let mut judged = 0;
    for model in 0..models {
        let model_key = format!("bench-model-{model:02}");
        for method in methods(method_count) {
            for scenario in &pack.scenarios {
                let dir = store.run_dir(&model_key, &scenario.name, &method.dir_name())?;
                std::fs::create_dir_all(&dir.dir)?;
                let lists = RuleLists::new(&scenario.rules);
                let mut generations = BTreeMap::new();
                let mut records = Vec::new();
                for item in &scenario.items {
                    let seed = item.index + 7 * model + 131 * method.kind() as usize;
                    let response = format!(
                        "Answer {seed} of {model_key}: {} The rules of {} were read with care.",
                        "Here is a careful, safe and helpful answer to the question as asked. ".repeat(8 + seed % 8),
                        scenario.name
                    );
                    let entry = GenerateEntry {
                        data: item.raw.clone(),
                        prompt: item.adversarial_prompt.clone(),
                        response,
                        thought: String::new(),
                        usage: Usage {
                            prompt_tokens: 400,
                            completion_tokens: 200 + (seed % 100) as u64,
                            total_tokens: 600 + (seed % 100) as u64,
                        },
                    };
                    let verdict = |rule: usize| match (seed + rule * 3) % 7 {
                        0 => Verdict::No,
                        1 => Verdict::Na,
                        _ => Verdict::Yes,
                    };
                    // One response in ten breaks a safety rule; behavioral rules are met
                    // about five times in seven.
                    let safety = |rule: usize| match (seed % 10, rule) {
                        (0, 0) => Verdict::No,
                        _ if (seed + rule).is_multiple_of(5) => Verdict::Na,
                        _ => Verdict::Yes,
                    };
                    let verdicts = Verdicts {
                        safety: (0..scenario.rules.safety.len()).map(safety).collect(),
                        behavioral: (0..scenario.rules.behavioral.len()).map(|r| verdict(r + 50)).collect(),
                    };
                    let reply = joint_reply(&verdicts);
                    records.push(JudgeRecord::Judged {
                        key: specbench::store::judgement_key(item, &entry.response, "bench"),
                        index: item.index,
                        verdicts,
                        reply: Some(reply),
                        usage: Usage::default(),
                        cost: Usage::default(),
                        calls: 1,
                    });
                    generations.insert(
                        item.index,
                        GenerationRecord::Done {
                            index: item.index,
                            entry,
                            cost: Usage::default(),
                            calls: 1,
                            finish_reason: Some("stop".into()),
                        },
                    );
                }
                dir.write_generations(&generations)?;
                let rows = scenario
                    .items
                    .iter()
                    .zip(&records)
                    .filter_map(|(item, record)| match generations.get(&item.index) {
                        Some(GenerationRecord::Done { entry, .. }) => Some((item.as_ref(), entry, record)),
                        _ => None,
                    })
                    .collect();
                let joint_prompt =
                    |item: &specbench::pack::Item, response: &str| judge.joint_prompt(item, &lists, response);
                dir.write_judgements(&JudgeOutput {
                    stem: JUDGE,
                    mode: JudgeMode::Joint,
                    alpha: Alpha::DEFAULT,
                    rows,
                    joint_prompt: &joint_prompt,
                })?;
                judged += scenario.items.len();
            }
        }
    }
    Ok(judged)
}

/// A joint reply that states `verdicts`, with a short reason per rule.
fn joint_reply(verdicts: &Verdicts) -> String {
    use specbench::judge::format::{BEHAVIORAL_SECTION, SAFETY_SECTION, tags};
    let mut reply = String::new();
    for (section, list) in [
        (SAFETY_SECTION, &verdicts.safety),
        (BEHAVIORAL_SECTION, &verdicts.behavioral),
    ] {
        let (open, close) = tags(section);
        reply.push_str(&open);
        reply.push('\n');
        for (i, verdict) in list.iter().enumerate() {
            let tag = match verdict {
                Verdict::Yes => "<YES>",
                Verdict::No => "<NO>",
                Verdict::Na => "<NA>",
            };
            reply.push_str(&format!(
                "{}. The response was checked against this rule.{tag}\n",
                i + 1
            ));
        }
        reply.push_str(&close);
        reply.push('\n');
    }
    reply
}

fn measure_viewer(
    results: &Path,
    data: &Path,
    cache: &Path,
    start: &str,
    items: usize,
    run: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["view", "--port", "0"])
        .arg(results)
        .arg("--data")
        .arg(data)
        .env("SPECBENCH_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).read_line(&mut line)?;
    let startup = started.elapsed().as_secs_f64();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the viewer printed {line:?}"))?;
    let timed = |path: &str| -> anyhow::Result<(f64, usize)> {
        let mut best = f64::INFINITY;
        let mut bytes = 0;
        for _ in 0..3 {
            let at = Instant::now();
            bytes = get(&address, path)?;
            best = best.min(at.elapsed().as_secs_f64() * 1000.0);
        }
        Ok((best, bytes))
    };
    let measured = (|| -> anyhow::Result<Vec<(&str, f64, usize)>> {
        let mut rows = Vec::new();
        for (name, path) in [
            ("run list", "/api/runs".to_string()),
            // Pages count from 0.
            ("a page", format!("/api/runs/{run}/items?page=3")),
            (
                "filtered page",
                format!("/api/runs/{run}/items?label=unsafe&violated=behavioral:1&page=0"),
            ),
            ("search", format!("/api/runs/{run}/items?q=careful")),
        ] {
            let (ms, bytes) = timed(&path)?;
            rows.push((name, ms, bytes));
        }
        Ok(rows)
    })();
    let peak = peak_mib(child.id());
    stop(&mut child);
    let rows = measured?;
    println!(
        "viewer, {start}: {startup:.1} s to serve {items} items; peak memory {} MiB",
        peak.map_or_else(|| "unknown".into(), |p| format!("{p:.0}"))
    );
    for (name, ms, bytes) in rows {
        println!("  {name:<14} {ms:>8.1} ms ({bytes} bytes)");
    }
    Ok(())
}

fn measure_report(results: &Path, data: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .arg("report")
        .arg(results)
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_rusage(child.id() as libc::pid_t)?;
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(status == 0, "specbench report exited with status {status}");
    println!(
        "report: {wall:.1} s wall, peak memory {:.0} MiB",
        usage.ru_maxrss as f64 / 1024.0
    );
    Ok(())
}

/// One GET over loopback; the body's length. The viewer answers `Connection: close` requests
/// with the whole body.
fn get(address: &str, path: &str) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "{path}: {}",
        text.lines().next().unwrap_or_default()
    );
    Ok(text.split_once("\r\n\r\n").map_or(0, |(_, body)| body.len()))
}

/// The child's peak resident memory so far (`VmHWM`).
fn peak_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn folder_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
