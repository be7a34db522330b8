//! Every environment variable specbench reads, documented here and nowhere else.

/// Names the environment variables specbench reads.
pub struct Env;

impl Env {
    /// The data pack folder, when `--data` is not given.
    pub const DATA: &'static str = "SPECBENCH_DATA";
    /// The GGUF file of the embedded default model, when `--model-path` is not given.
    pub const MODEL_PATH: &'static str = "SPECBENCH_MODEL_PATH";
    /// The response cache folder, when `--cache-dir` is not given.
    pub const CACHE_DIR: &'static str = "SPECBENCH_CACHE_DIR";
    /// The token `specbench view` requires, when `--token` is not given.
    pub const VIEW_TOKEN: &'static str = "SPECBENCH_VIEW_TOKEN";
    /// Tracing filter for log lines (`specbench=debug`).
    pub const LOG: &'static str = "SPECBENCH_LOG";
}
