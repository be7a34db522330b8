//! What the bench binaries share: their settings from the environment, and a child's resource
//! use.

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
