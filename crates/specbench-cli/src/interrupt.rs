//! Ctrl-C (SIGINT) and SIGTERM during a run. The first stops it: no new request is sent, those in
//! flight get `run::STOP_GRACE` to finish and are journaled, the result files are written for
//! what is finished, and the command exits 130 (SIGINT) or 143 (SIGTERM). A second signal quits
//! at once: the journal already holds every finished unit.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use specbench::backend::Stop;
use specbench::run::STOP_GRACE;

/// The stop that signals set, and which signal set it.
pub struct Interrupt {
    stop: Stop,
    /// The exit code of the first signal; 0 before any.
    code: AtomicU8,
}

impl Interrupt {
    /// Handles SIGINT and SIGTERM from now on, on the current runtime. Where signals cannot be
    /// handled, they keep their default (the journal still keeps finished work).
    pub fn install() -> Arc<Interrupt> {
        let interrupt = Arc::new(Interrupt {
            stop: Stop::new(),
            code: AtomicU8::new(0),
        });
        match signals() {
            Ok(signals) => {
                tokio::spawn(interrupt.clone().listen(signals));
            }
            Err(error) => tracing::warn!(%error, "cannot handle Ctrl-C; it will end the run at once"),
        }
        interrupt
    }

    pub fn stop(&self) -> Stop {
        self.stop.clone()
    }

    /// 130 after SIGINT, 143 after SIGTERM, as a shell reports a process killed by either.
    pub fn exit_code(&self) -> u8 {
        match self.code.load(Ordering::SeqCst) {
            0 => 130,
            code => code,
        }
    }

    async fn listen(self: Arc<Self>, mut signals: Signals) {
        let mut first = true;
        while let Some(code) = signals.next().await {
            let mut err = std::io::stderr().lock();
            if first {
                first = false;
                self.code.store(code, Ordering::SeqCst);
                self.stop.stop();
                let _ = writeln!(
                    err,
                    "stopping: no new requests; waiting up to {}s for those in flight (again to quit at once)",
                    STOP_GRACE.as_secs()
                );
            } else {
                let _ = writeln!(
                    err,
                    "interrupted again: quitting at once; finished work is in the journal; run the same command to resume"
                );
                let _ = err.flush();
                std::process::exit(code.into());
            }
        }
    }
}

#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
fn signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(Signals {
        interrupt: signal(SignalKind::interrupt())?,
        terminate: signal(SignalKind::terminate())?,
    })
}

#[cfg(unix)]
impl Signals {
    /// The exit code of the next signal.
    async fn next(&mut self) -> Option<u8> {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Some(130),
            Some(()) = self.terminate.recv() => Some(143),
            else => None,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
fn signals() -> std::io::Result<Signals> {
    Ok(Signals)
}

#[cfg(not(unix))]
impl Signals {
    async fn next(&mut self) -> Option<u8> {
        tokio::signal::ctrl_c().await.ok().map(|()| 130)
    }
}
