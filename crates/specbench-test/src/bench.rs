//! What the bench binaries share: their settings from the environment, a child's resource
//! use, and a loopback stub in a process of its own (so the harness's CPU and memory are
//! measured apart from the stub's).

// wait4 is the one way to read a single child's rusage; it is called once, on a pid we own.
#![allow(unsafe_code)]

/// The whole number in `name`, else `default`; a value that is not one is an error naming it.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Waits for our child `pid`; its exit code (-1 when killed) and its resource use.
pub fn wait_with_rusage(pid: libc::pid_t) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it and `status` for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    anyhow::ensure!(waited == pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage))
}

/// Starts this bench binary again as a stub (it sees `variable` set and calls [`serve_stub`]);
/// the child and the base URL it printed.
pub fn start_stub_process(variable: &str) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut stub = std::process::Command::new(std::env::current_exe()?)
        .env(variable, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut first_line = String::new();
    std::io::BufReader::new(
        stub.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stub has no stdout"))?,
    )
    .read_line(&mut first_line)?;
    let url = first_line.trim().to_string();
    anyhow::ensure!(url.starts_with("http://127.0.0.1:"), "stub said {first_line:?}");
    Ok((stub, url))
}

/// The stub process: synthetic replies after a fixed latency, its URL on the first line of
/// stdout (what [`start_stub_process`] reads), until killed.
#[allow(clippy::print_stdout)]
pub fn serve_stub(latency: std::time::Duration) -> anyhow::Result<()> {
    let options = crate::StubOptions {
        latency,
        record: false,
        threads: 1,
    };
    let server = crate::StubServer::start_with(options, |request| {
        crate::Reply::Content(crate::synthetic_reply(request))
    })?;
    println!("{}", server.base_url());
    server.wait();
    Ok(())
}

/// Seconds in a `timeval`.
pub fn timeval_seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}
