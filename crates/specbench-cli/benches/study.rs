//! A study against two loopback stub endpoints with a fixed latency, on the real binary: wall
//! time against the ideal, harness CPU seconds per 1,000 requests and peak RSS, for 1, 4 and 16
//! cells, beside single `specbench run`s of the same methods (vanilla; all four), the
//! baselines of CPU per request.
//!
//! `SPECBENCH_DATA=… cargo bench -p specbench-cli --bench study`
//!
//! Every scenario, all 300 items each. 16 cells: 4 models × vanilla, zero_think, more_think and
//! align3, one joint judge; 4 cells: one model × those methods; 1 cell: one model × vanilla.
//! Every model and the judge are served by both endpoints, `concurrency` (32) each. The stubs
//! run in their own processes (this binary, re-run with `SPECBENCH_BENCH_STUB=1`), so the CPU
//! and memory printed are the harness's alone (`wait4` on the `specbench` child). The ideal is
//! the requests `study plan` counts ÷ total concurrency × latency. Both run without the response
//! cache: the stub answers every model alike, so a cache would answer many judge calls and the
//! plan's count would not be the requests sent.
//! Optional: `SPECBENCH_BENCH_CONCURRENCY` (32 per endpoint), `SPECBENCH_BENCH_LATENCY_MS` (100),
//! `SPECBENCH_BENCH_ROUNDS` (3: how many times the 1- and 4-cell studies and their single
//! runs are run, in turns; the 16-cell study runs once); `SPECBENCH_BENCH_CALLGRIND=1` also
//! counts the instructions per request of the 4-cell study and its single run on one scenario
//! under valgrind (a few minutes more), the comparison seconds are too noisy for (`only`: that
//! alone).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use specbench_test::bench::{env_number, serve_stub, start_stub_process, timeval_seconds, wait_with_rusage};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STUB_VARIABLE: &str = "SPECBENCH_BENCH_STUB";
const METHODS: [&str; 4] = ["vanilla", "zero_think", "more_think", "align3"];

fn main() -> anyhow::Result<()> {
    let latency = Duration::from_millis(env_number("SPECBENCH_BENCH_LATENCY_MS", 100)?);
    if std::env::var_os(STUB_VARIABLE).is_some() {
        return serve_stub(latency);
    }
    let concurrency: u64 = env_number("SPECBENCH_BENCH_CONCURRENCY", 32)?;
    let data = specbench_test::golden::pack_dir()?;
    let (mut first, first_url) = start_stub_process(STUB_VARIABLE)?;
    let (mut second, second_url) = start_stub_process(STUB_VARIABLE)?;
    let urls = [first_url.as_str(), second_url.as_str()];
    let total_concurrency = 2 * concurrency;
    println!(
        "study: 2 endpoints × concurrency {concurrency}, stub latency {:.3} s, every scenario, 300 items each",
        latency.as_secs_f64()
    );

    // CPU per request against single runs of the same methods (a chained method's requests
    // are longer to build and parse than vanilla's), each pair run in turns `rounds` times
    // and compared by medians: one run's CPU figure moves by a fifth or more between runs.
    let rounds: usize = env_number("SPECBENCH_BENCH_ROUNDS", 3)?;
    let mut baseline = 0.0;
    let callgrind = std::env::var("SPECBENCH_BENCH_CALLGRIND").ok();
    let sizes = [(1, &METHODS[..1]), (1, &METHODS[..]), (4, &METHODS[..])];
    let timed_sizes = if callgrind.as_deref() == Some("only") {
        &[][..]
    } else {
        &sizes[..]
    };
    for &(models, methods) in timed_sizes {
        let cells = models * methods.len();
        let paired = models == 1;
        let mut singles = Vec::new();
        let mut studies = Vec::new();
        for _ in 0..if paired { rounds.max(1) } else { 1 } {
            if paired {
                let (_folder, _file, requests) = study_file(&data, &urls, concurrency, 1, methods, None)?;
                singles.push(measure_run(&data, &urls, concurrency, methods, requests)?);
            }
            studies.push(measure_study(&data, &urls, concurrency, models, methods)?);
        }
        if paired {
            let single = Measured::median(&singles);
            let ideal = single.requests as f64 / total_concurrency as f64 * latency.as_secs_f64();
            single.print(
                &format!("a single run ({}), median of {}", methods.join(", "), singles.len()),
                ideal,
            );
            println!("    CPU per 1,000 requests in each: {}", Measured::cpu_list(&singles));
            baseline = single.cpu_per_thousand();
        }
        let measured = Measured::median(&studies);
        let ideal = measured.requests as f64 / total_concurrency as f64 * latency.as_secs_f64();
        measured.print(
            &format!(
                "{cells} cell(s): {models} model(s) × {}, median of {}",
                methods.join(", "),
                studies.len()
            ),
            ideal,
        );
        if paired {
            println!("    CPU per 1,000 requests in each: {}", Measured::cpu_list(&studies));
        }
        let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
        println!(
            "    targets: wall <= 1.05 × ideal {}; RSS <= 64 MiB {}; CPU per 1,000 requests <= the single run's ({baseline:.3} s) {}",
            verdict(measured.wall <= 1.05 * ideal),
            verdict(measured.rss_mib <= 64.0),
            verdict(measured.cpu_per_thousand() <= baseline)
        );
    }
    if callgrind.is_some() {
        instructions(&data, &urls, concurrency)?;
    }
    for stub in [&mut first, &mut second] {
        let _ = stub.kill();
        let _ = stub.wait();
    }
    Ok(())
}

struct Measured {
    requests: u64,
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

impl Measured {
    fn cpu_per_thousand(&self) -> f64 {
        self.cpu / self.requests as f64 * 1000.0
    }

    /// The median of each figure (peak RSS: the highest) over runs of the same work.
    fn median(runs: &[Measured]) -> Measured {
        let middle = |figure: fn(&Measured) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or_default()
        };
        Measured {
            requests: runs.first().map_or(0, |run| run.requests),
            wall: middle(|run| run.wall),
            cpu: middle(|run| run.cpu),
            rss_mib: runs.iter().map(|run| run.rss_mib).fold(0.0, f64::max),
        }
    }

    fn cpu_list(runs: &[Measured]) -> String {
        runs.iter()
            .map(|run| format!("{:.3} s", run.cpu_per_thousand()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print(&self, what: &str, ideal: f64) {
        println!("  {what}: {} requests", self.requests);
        println!(
            "    wall {:>7.2} s (ideal {ideal:.2} s, ratio {:.3}); harness CPU {:.2} s = {:.3} s per 1,000 requests; peak RSS {:.1} MiB",
            self.wall,
            self.wall / ideal,
            self.cpu,
            self.cpu_per_thousand(),
            self.rss_mib
        );
    }
}

/// The binary, run to the end (with an empty cache folder it does not use); its CPU and peak
/// memory.
fn timed(mut command: Command, cache: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let started = Instant::now();
    let child = command
        .env("SPECBENCH_CACHE_DIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_rusage(child.id() as libc::pid_t)?;
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(status == 0, "specbench exited with status {status}");
    let cpu = timeval_seconds(usage.ru_utime) + timeval_seconds(usage.ru_stime);
    Ok((wall, cpu, usage.ru_maxrss as f64 / 1024.0))
}

/// One `specbench run` of `methods` (one after another, as a run does), whose plan counts
/// `requests`.
fn measure_run(
    data: &Path,
    urls: &[&str],
    concurrency: u64,
    methods: &[&str],
    requests: u64,
) -> anyhow::Result<Measured> {
    let results = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let command = run_command(
        Command::new(env!("CARGO_BIN_EXE_specbench")),
        data,
        urls,
        concurrency,
        methods,
        None,
        results.path(),
    );
    let (wall, cpu, rss_mib) = timed(command, cache.path())?;
    Ok(Measured {
        requests,
        wall,
        cpu,
        rss_mib,
    })
}

/// `command` (the binary, or a wrapper given it as its first argument) with the arguments of a
/// single run of `methods`, on `scenario` or every scenario.
fn run_command(
    mut command: Command,
    data: &Path,
    urls: &[&str],
    concurrency: u64,
    methods: &[&str],
    scenario: Option<&str>,
    results: &Path,
) -> Command {
    let urls = urls.join(",");
    command
        .args(["run", "--model", "bench-model-0", "--base-url", &urls])
        .args(["--judge", "bench-judge", "--judge-base-url", &urls])
        .args([
            "--method",
            &methods.join(","),
            "--concurrency",
            &concurrency.to_string(),
            "--no-cache",
        ])
        .arg("--results")
        .arg(results)
        .env("SPECBENCH_DATA", data);
    if let Some(scenario) = scenario {
        command.args(["--scenario", scenario]);
    }
    command
}

/// A study file of `models` × `methods` in a new folder (kept while the folder is), and the
/// requests its plan counts.
fn study_file(
    data: &Path,
    urls: &[&str],
    concurrency: u64,
    models: usize,
    methods: &[&str],
    scenario: Option<&str>,
) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, u64)> {
    let folder = tempfile::tempdir()?;
    let servers = urls
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!("data:\n  results: {}\n", folder.path().join("result").display());
    if let Some(scenario) = scenario {
        text.push_str(&format!("  scenarios: [{scenario}]\n"));
    }
    text.push_str("models:\n");
    for model in 0..models {
        text.push_str(&format!(
            "  - {{key: bench-model-{model}, provider: compatible, base_urls: [{servers}]}}\n"
        ));
    }
    text.push_str("methods:\n");
    for method in methods {
        text.push_str(&format!("  - method: {method}\n"));
    }
    text.push_str(&format!(
        "judges:\n  - {{key: bench-judge, provider: compatible, base_urls: [{servers}]}}\nexec:\n  concurrency: {concurrency}\n  no_cache: true\n"
    ));
    let file = folder.path().join("study.yaml");
    std::fs::write(&file, text)?;

    let plan = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["study", "plan"])
        .arg(&file)
        .env("SPECBENCH_DATA", data)
        .output()?;
    anyhow::ensure!(plan.status.success(), "study plan failed: {plan:?}");
    let stdout = String::from_utf8_lossy(&plan.stdout);
    let requests: u64 = stdout
        .lines()
        .find(|line| line.contains(" requests in all"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no total in the plan: {stdout}"))?;
    Ok((folder, file, requests))
}

fn measure_study(
    data: &Path,
    urls: &[&str],
    concurrency: u64,
    models: usize,
    methods: &[&str],
) -> anyhow::Result<Measured> {
    let (_folder, file, requests) = study_file(data, urls, concurrency, models, methods, None)?;
    let cache = tempfile::tempdir()?;
    let command = study_command(Command::new(env!("CARGO_BIN_EXE_specbench")), &file, data);
    let (wall, cpu, rss_mib) = timed(command, cache.path())?;
    Ok(Measured {
        requests,
        wall,
        cpu,
        rss_mib,
    })
}

/// `command` (the binary, or a wrapper given it first) with the arguments of `study run` on
/// `file`: the scheduler alone, as the single run (the paper tables at the end are report work).
fn study_command(mut command: Command, file: &Path, data: &Path) -> Command {
    command
        .args(["study", "run", "--no-tables"])
        .arg(file)
        .env("SPECBENCH_DATA", data);
    command
}

/// Harness instructions per request of the 4-cell study against the single run of the same
/// four methods, counted by callgrind: CPU seconds move by a fifth between runs of the same
/// work, instruction counts by well under a percent. One scenario (Child, 300 items) keeps the
/// two runs under valgrind to minutes.
fn instructions(data: &Path, urls: &[&str], concurrency: u64) -> anyhow::Result<()> {
    let scenario = Some("Child");
    let (folder, file, requests) = study_file(data, urls, concurrency, 1, &METHODS, scenario)?;
    let results = tempfile::tempdir()?;
    let single = run_command(callgrind(), data, urls, concurrency, &METHODS, scenario, results.path());
    let single = counted(single)? as f64 / requests as f64;
    let study = counted(study_command(callgrind(), &file, data))? as f64 / requests as f64;
    drop(folder);
    println!("  instructions per request (callgrind, Child, {requests} requests each):");
    println!(
        "    single run ({}) {single:.0}; 4-cell study {study:.0}; ratio {:.4}; target <= 1: {}",
        METHODS.join(", "),
        study / single,
        if study <= single { "ok" } else { "MISSED" }
    );
    Ok(())
}

/// valgrind's callgrind around the binary, its profile discarded: only the total is read.
fn callgrind() -> Command {
    let mut command = Command::new("valgrind");
    command
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(env!("CARGO_BIN_EXE_specbench"));
    command
}

/// The instructions callgrind counted over every thread of `command`, run to the end.
fn counted(mut command: Command) -> anyhow::Result<u64> {
    let cache = tempfile::tempdir()?;
    let output = command
        .env("SPECBENCH_CACHE_DIR", cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    anyhow::ensure!(output.status.success(), "under valgrind: {:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|line| line.split_once("Collected : ").map(|(_, n)| n.trim().parse::<u64>()))
        .ok_or_else(|| anyhow::anyhow!("no callgrind total in: {stderr}"))?
        .map_err(Into::into)
}
