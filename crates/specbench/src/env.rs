//! Every environment variable specbench reads, documented here and nowhere else.

/// Names the environment variables specbench reads.
pub struct Env;

impl Env {
    /// The data pack folder, when `--data` is not given.
    pub const DATA: &'static str = "SPECBENCH_DATA";
    /// Tracing filter for log lines (`specbench=debug`).
    pub const LOG: &'static str = "SPECBENCH_LOG";
}
