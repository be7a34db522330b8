//! The full SpecBench pipeline against a loopback stub with a fixed latency, measured on the
//! real binary: wall time against the ideal, harness CPU seconds and peak RSS.
//!
//! `SPECBENCH_DATA=… cargo bench -p specbench-cli --bench pipeline`
//!
//! The stub runs in its own process (this bench binary, re-run with `SPECBENCH_BENCH_STUB=1`),
//! so that the CPU and memory printed are the harness's alone: they come from `wait4` on the
//! `specbench` child. Every scenario, all 1,500 items, `vanilla`, joint judge: 3,000 requests.
//! Optional: `SPECBENCH_BENCH_CONCURRENCY` (default 64), `SPECBENCH_BENCH_LATENCY_MS` (200).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use specbench_test::bench::{env_number, serve_stub, start_stub_process, timeval_seconds, wait_with_rusage};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STUB_VARIABLE: &str = "SPECBENCH_BENCH_STUB";

fn main() -> anyhow::Result<()> {
    let latency = Duration::from_millis(env_number("SPECBENCH_BENCH_LATENCY_MS", 200)?);
    if std::env::var_os(STUB_VARIABLE).is_some() {
        return serve_stub(latency);
    }
    // `cargo bench` passes `--bench`; any other argument is a filter this bench ignores.
    let concurrency: u64 = env_number("SPECBENCH_BENCH_CONCURRENCY", 64)?;
    let data = specbench_test::golden::pack_dir()?;

    let (mut stub, base_url) = start_stub_process(STUB_VARIABLE)?;

    let results = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let concurrency_text = concurrency.to_string();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args([
            "run",
            "--model",
            "bench-model",
            "--base-url",
            &base_url,
            "--judge",
            "bench-judge",
            "--judge-base-url",
            &base_url,
            "--method",
            "vanilla",
            "--concurrency",
            &concurrency_text,
        ])
        .arg("--results")
        .arg(results.path())
        .env("SPECBENCH_DATA", &data)
        // A fresh cache: every reply is stored (that work is measured), none is served from it.
        .env("SPECBENCH_CACHE_DIR", cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_rusage(child.id() as libc::pid_t)?;
    let wall = started.elapsed().as_secs_f64();
    let _ = stub.kill();
    let _ = stub.wait();
    anyhow::ensure!(status == 0, "specbench exited with status {status}");

    let (generated, judged) = count_results(results.path())?;
    anyhow::ensure!(
        generated == 1500 && judged == 1500,
        "expected 1500 + 1500 units, got {generated} + {judged}"
    );
    let requests = generated + judged;
    let ideal = requests as f64 / concurrency as f64 * latency.as_secs_f64();
    let cpu = timeval_seconds(usage.ru_utime) + timeval_seconds(usage.ru_stime);
    let rss_mib = usage.ru_maxrss as f64 / 1024.0;
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("pipeline: 5 scenarios, 1500 items, vanilla + joint judge = {requests} requests");
    println!(
        "  concurrency {concurrency}, stub latency {:.3} s",
        latency.as_secs_f64()
    );
    println!(
        "  wall        {wall:>7.2} s   ideal {ideal:.2} s   ratio {:.3}  (target <= 1.05) {}",
        wall / ideal,
        verdict(wall <= 1.05 * ideal)
    );
    println!("  harness CPU {cpu:>7.2} s   (target <= 1.0) {}", verdict(cpu <= 1.0));
    println!(
        "  peak RSS    {rss_mib:>7.1} MiB (target <= 40) {}",
        verdict(rss_mib <= 40.0)
    );
    Ok(())
}

/// Generated entries and judged entries over every scenario folder the run wrote.
fn count_results(results: &std::path::Path) -> anyhow::Result<(usize, usize)> {
    let mut generated = 0;
    let mut judged = 0;
    let model_dir = results.join("bench-model");
    for scenario in std::fs::read_dir(&model_dir)? {
        let dir = scenario?.path().join("vanilla");
        let count = |name: &str| -> anyhow::Result<usize> {
            let value: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(name))?)?;
            Ok(value
                .as_array()
                .map(|l| l.iter().filter(|e| e.is_object()).count())
                .unwrap_or(0))
        };
        generated += count("generate.json")?;
        judged += count("bench-judge_evaluate.json")?;
    }
    Ok((generated, judged))
}
