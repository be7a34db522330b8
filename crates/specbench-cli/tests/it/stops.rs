//! Runs that stop before their end: a second process on the same run folder, a journal that
//! cannot grow (a full disk), Ctrl-C and SIGTERM. Each is resumed by running the same command
//! again, and ends with the files of a run never stopped. Figures are printed for the record
//! (`cargo test -p specbench-cli --test it stops -- --nocapture`).

#![allow(clippy::print_stderr)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use specbench_test::{Reply, StubOptions, StubServer, golden, synthetic_reply};

use crate::reliability::wait_for_lines;
use crate::support::{Finished, TestContext, finish};

/// `run` over the first `items` items of the official Child scenario, model and judge on `url`.
fn run_args(url: &str, items: usize, concurrency: usize, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let pack = golden::pack_dir()?;
    let mut args: Vec<String> = [
        "run",
        "--data",
        &pack.to_string_lossy(),
        "--scenario",
        "Child",
        "--limit",
        &items.to_string(),
        "--model",
        "stop-model",
        "--base-url",
        url,
        "--judge",
        "stop-judge",
        "--judge-base-url",
        url,
        "--concurrency",
        &concurrency.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(args)
}

fn stub(latency: Duration) -> anyhow::Result<StubServer> {
    StubServer::start_with(
        StubOptions {
            latency,
            threads: 2,
            ..StubOptions::default()
        },
        |request| Reply::Content(synthetic_reply(request)),
    )
}

fn run_dir(ctx: &TestContext) -> PathBuf {
    ctx.results.join("stop-model/Child/vanilla")
}

/// Complete records of a journal (a line torn by the stop is not one).
fn records(path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        .count())
}

/// The result files of the run equal those of `whole`, a run never stopped.
fn assert_same_files(ctx: &TestContext, whole: &TestContext) -> anyhow::Result<()> {
    for file in ["generate.json", "stop-judge_evaluate.json", "stop-judge_score.json"] {
        let path = format!("stop-model/Child/vanilla/{file}");
        assert_eq!(ctx.read_json(&path)?, whole.read_json(&path)?, "{path} differs");
    }
    Ok(())
}

/// A spawned `specbench` whose stderr is read line by line while it runs.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(command: &mut Command) -> anyhow::Result<Running> {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr pipe"))?;
        let lines = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        Ok(Running {
            child,
            stderr,
            reader: Some(reader),
        })
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())?;
        send_signal(pid, signal)
    }

    /// Waits until a line of stderr starts with `prefix`.
    fn wait_for_stderr(&self, prefix: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.stderr_text().lines().any(|line| line.starts_with(prefix)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("no stderr line starting with `{prefix}`:\n{}", self.stderr_text())
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|lines| lines.join("\n")).unwrap_or_default()
    }

    fn finish(mut self) -> anyhow::Result<Finished> {
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(Finished {
            code: status.code(),
            stdout: String::new(),
            stderr: self.stderr_text(),
        })
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let sent = unsafe { libc::kill(pid, signal) };
    anyhow::ensure!(sent == 0, "kill: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Files the child writes may not grow past `bytes` (`ulimit -f`); SIGXFSZ is ignored, so a
/// write past the limit fails with EFBIG ("File too large"), as one on a full disk fails with
/// ENOSPC, instead of killing the process.
#[allow(unsafe_code)]
fn limit_file_size(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls setrlimit(2) and signal(2), both
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// A server that accepts connections and never answers: every request stays in flight.
fn silent_server() -> anyhow::Result<(String, Arc<Mutex<Vec<std::net::TcpStream>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let held = Arc::new(Mutex::new(Vec::new()));
    let streams = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            if let Ok(mut streams) = streams.lock() {
                streams.push(stream);
            }
        }
    });
    Ok((url, held))
}

#[test]
fn a_second_process_on_the_same_run_folder_stops_at_once_naming_the_holder() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let slow = stub(Duration::from_millis(200))?;
    let mut first = ctx
        .specbench()
        .args(run_args(&slow.base_url(), 40, 2, &[])?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let dir = run_dir(&ctx);
    // An item judged: the first run is well under way.
    wait_for_lines(&dir.join(".journal/stop-judge.jsonl"), 1, Duration::from_secs(60))?;

    // The same run into the same folder, with a server of its own to count what it sends.
    let other = stub(Duration::ZERO)?;
    let args = run_args(&other.base_url(), 40, 2, &[])?;
    let second = finish(ctx.specbench().args(&args))?;
    assert_eq!(second.code, Some(2), "{second:?}");
    let errors: Vec<&str> = second.stderr.lines().filter(|l| l.starts_with("specbench:")).collect();
    assert_eq!(errors.len(), 1, "one line: {}", second.stderr);
    let holder = format!("PID {}", first.id());
    assert!(
        errors[0].contains("stop-model/Child/vanilla") && errors[0].contains(&holder),
        "names the folder and {holder}: {}",
        errors[0]
    );
    assert_eq!(other.requests().len(), 0, "the second process sent nothing");

    first.kill()?; // SIGKILL: the OS releases the lock, nothing is left stale
    first.wait()?;
    let third = finish(ctx.specbench().args(&args))?;
    assert_eq!(third.code, Some(0), "{third:?}");
    assert!(third.stderr.contains("resuming: "), "{}", third.stderr);
    assert!(!other.requests().is_empty(), "the new run took the folder and went on");
    Ok(())
}

#[test]
fn a_journal_that_cannot_grow_stops_the_run_and_the_same_command_finishes_it() -> anyhow::Result<()> {
    const CONCURRENCY: usize = 2;
    let server = stub(Duration::from_millis(20))?;
    let args = run_args(&server.base_url(), 60, CONCURRENCY, &["--no-cache"])?;

    let ctx = TestContext::with_pack("minimal")?;
    let mut limited = ctx.specbench();
    limited.args(&args);
    limit_file_size(&mut limited, 16 * 1024);
    let stopped = finish(&mut limited)?;
    assert_eq!(stopped.code, Some(3), "{stopped:?}");
    let failures: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("cannot append to the journal"))
        .collect();
    assert_eq!(failures.len(), 1, "one line for the failure: {}", stopped.stderr);
    assert!(
        failures[0].contains(".journal/") && failures[0].contains("File too large (os error 27)"),
        "names the file and the OS error: {}",
        failures[0]
    );
    assert!(
        stopped
            .stderr
            .contains("finished work is kept; run the same command again to resume"),
        "{}",
        stopped.stderr
    );
    // Every request is one unit here (vanilla, joint judge, no retries): after the failure only
    // those already in flight were answered.
    let dir = run_dir(&ctx);
    let journaled = records(&dir.join(".journal/generate.jsonl"))? + records(&dir.join(".journal/stop-judge.jsonl"))?;
    let sent = server.requests().len();
    eprintln!("full journal: {sent} requests sent, {journaled} units journaled, of 120");
    assert!(
        sent <= journaled + 2 * CONCURRENCY + 1,
        "{sent} requests sent for {journaled} journaled units"
    );

    let again = finish(ctx.specbench().args(&args))?;
    assert_eq!(again.code, Some(0), "{again:?}");
    // Nothing journaled is asked again. (Whether a "resuming" line shows depends on whether an
    // item was both generated and judged before the journal filled, which is up to timing.)
    assert_eq!(
        server.requests().len() - sent,
        120 - journaled,
        "the second run sends exactly the units the journal lacks"
    );
    let whole = TestContext::with_pack("minimal")?;
    let uninterrupted = finish(whole.specbench().args(&args))?;
    assert_eq!(uninterrupted.code, Some(0), "{uninterrupted:?}");
    assert_same_files(&ctx, &whole)
}

#[test]
fn ctrl_c_keeps_every_answered_reply_and_the_same_command_resumes() -> anyhow::Result<()> {
    const ITEMS: usize = 60;
    let server = stub(Duration::from_millis(150))?;
    let args = run_args(&server.base_url(), ITEMS, 4, &[])?;
    let ctx = TestContext::with_pack("minimal")?;
    let running = Running::spawn(ctx.specbench().args(&args))?;
    let dir = run_dir(&ctx);
    wait_for_lines(&dir.join(".journal/stop-judge.jsonl"), 4, Duration::from_secs(60))?;
    running.signal(libc::SIGINT)?;
    let stopped = running.finish()?;
    assert_eq!(stopped.code, Some(130), "{stopped:?}");
    assert!(
        stopped.stderr.contains("stopping: no new requests"),
        "{}",
        stopped.stderr
    );

    let generated = records(&dir.join(".journal/generate.jsonl"))?;
    let judged = records(&dir.join(".journal/stop-judge.jsonl"))?;
    assert_eq!(
        server.requests().len(),
        generated + judged,
        "every reply the stub gave is journaled"
    );
    let done = format!("interrupted: {judged} of {ITEMS} done; run the same command to resume");
    assert!(
        stopped.stderr.lines().any(|l| l == done),
        "`{done}` in:\n{}",
        stopped.stderr
    );
    assert!(judged < ITEMS, "stopped before the end");
    // The files hold what was finished.
    let entries = ctx.read_json("stop-model/Child/vanilla/generate.json")?;
    assert_eq!(entries.as_array().map(Vec::len), Some(generated));
    let evaluated = ctx.read_json("stop-model/Child/vanilla/stop-judge_evaluate.json")?;
    assert_eq!(evaluated.as_array().map(Vec::len), Some(judged));

    let again = finish(ctx.specbench().args(&args))?;
    assert_eq!(again.code, Some(0), "{again:?}");
    let resuming = format!("resuming: {judged} of {ITEMS} already done");
    assert!(
        again.stderr.lines().any(|l| l == resuming),
        "`{resuming}` in:\n{}",
        again.stderr
    );
    let whole = TestContext::with_pack("minimal")?;
    let fast = stub(Duration::ZERO)?;
    let uninterrupted = finish(whole.specbench().args(run_args(&fast.base_url(), ITEMS, 4, &[])?))?;
    assert_eq!(uninterrupted.code, Some(0), "{uninterrupted:?}");
    assert_same_files(&ctx, &whole)
}

#[test]
fn sigterm_then_a_second_signal_quits_at_once() -> anyhow::Result<()> {
    let (url, held) = silent_server()?;
    let ctx = TestContext::with_pack("minimal")?;
    let running = Running::spawn(ctx.specbench().args(run_args(&url, 10, 2, &[])?))?;
    let started = Instant::now();
    while held.lock().map(|h| h.is_empty()).unwrap_or(true) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no request arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.signal(libc::SIGTERM)?;
    // Requests in flight never end: without a second signal the run would wait out the grace.
    running.wait_for_stderr("stopping: ", Duration::from_secs(30))?;
    running.signal(libc::SIGTERM)?;
    let quit = running.finish()?;
    assert_eq!(quit.code, Some(143), "{quit:?}");
    assert!(
        quit.stderr.contains("interrupted again: quitting at once"),
        "{}",
        quit.stderr
    );
    assert!(
        !quit.stderr.contains("interrupted: "),
        "did not wait for the grace period: {}",
        quit.stderr
    );
    assert!(!run_dir(&ctx).join("generate.json").exists());
    Ok(())
}
