//! Command-line arguments as written; `commands` resolves them into library types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use specbench::judge::JudgeMode;
use specbench::method::MethodKind;
use specbench::run::Shard;

fn parse_method(text: &str) -> Result<MethodKind, String> {
    text.parse()
}

/// `K/N`, or `auto` (a Slurm array task's share) or `auto/N` (a Kubernetes Indexed Job of N).
fn parse_shard(text: &str) -> Result<Shard, String> {
    let var = |name: &str| std::env::var(name).ok();
    match text.trim() {
        "auto" => Shard::from_job_array(None, var),
        auto if auto.starts_with("auto/") => {
            let count = auto["auto/".len()..]
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("shard `{text}`: want auto/N, for example auto/4"))?;
            Shard::from_job_array(Some(count), var)
        }
        _ => text.parse(),
    }
}

fn parse_judge_mode(text: &str) -> Result<JudgeMode, String> {
    text.parse()
}

/// Measure how well language models follow specifications: the SpecBench benchmark (5
/// scenarios, 103 rules, 1,500 prompts), its LLM-as-judge protocol and the SAR score.
///
/// Exit codes: 0 every item done; 1 some items failed or were not judged (they are listed and
/// kept out of the averages); 2 bad input or configuration, or the run folder in use by another
/// specbench (nothing was written); 3 results could not be written, for example on a full disk
/// (finished work is kept: run the same command again to resume); 4 a study stopped at its
/// --max-cost (finished work is kept: run again with a higher cap); 130 and 143 stopped by Ctrl-C
/// or SIGTERM (finished work is kept and in the files: run the same command again to resume).
#[derive(Debug, Parser)]
#[command(name = "specbench", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate responses, judge them and score them, in one pipeline.
    Run(RunArgs),
    /// Generate responses only (`generate.json`).
    Generate(GenerateArgs),
    /// Judge stored responses (`<judge>_evaluate.json`) and score them.
    Evaluate(EvaluateArgs),
    /// Recompute scores from stored verdicts (for example with another --alpha); sends nothing.
    Score(ScoreArgs),
    /// The response cache: `stats` (entries, hits, size, models) or `clear`.
    Cache(CacheArgs),
    /// The provider batches of a run made with --batch or --judge-batch: `status` lists each
    /// with its state and counts, `cancel` cancels those still running. Takes `run`'s flags.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Tables, statistics and plots from stored results: leaderboard, unsafe/safe split,
    /// methods against a baseline, judge agreement, rules most often broken, cost.
    Report(ReportArgs),
    /// A browser UI over stored results: leaderboard, every item with its verdicts and the
    /// judge's reasons, filters and search, two runs side by side. Serves on 127.0.0.1.
    View(ViewArgs),
    /// Scenario packs: `validate` (every problem at once) and `stats`.
    Data(DataCommand),
    /// Author a scenario: `new NAME` writes a commented starting file.
    Scenario(ScenarioCommand),
    /// Join the results of a run split with --shard (one --results folder per shard) into one
    /// run, identical to a single machine's. Sends nothing.
    Merge(MergeArgs),
    /// Studies: every model × method of a study file, judged by each of its judges, into one
    /// results folder (`run FILE`); what it sends (`plan FILE`) and how far it got (`status
    /// FILE`), both sending nothing.
    Study(StudyCommand),
}

#[derive(Debug, Args)]
pub struct StudyCommand {
    #[command(subcommand)]
    pub action: StudyAction,
}

#[derive(Debug, Subcommand)]
pub enum StudyAction {
    /// Run every cell at once, one cap of requests per endpoint across the study (`exec.concurrency`);
    /// a stopped study resumes where it stopped when run again.
    Run {
        /// The study file (YAML; `examples/study.yaml` is a commented one).
        file: PathBuf,
        /// Only this machine's share of every cell's items (`K/N`, `auto` in a Slurm array
        /// task, `auto/N` in a Kubernetes Indexed Job); give each share its own --results and
        /// join them with `specbench merge`.
        #[arg(long, value_name = "K/N|auto|auto/N", value_parser = parse_shard)]
        shard: Option<Shard>,
        /// Where results go, instead of the file's `data.results`.
        #[arg(long, value_name = "DIR")]
        results: Option<PathBuf>,
        /// The paper's tables when the study is done (leaderboard, methods against vanilla,
        /// judge agreement): `table` on the terminal, or `markdown` or `html`.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write those tables to FILE instead of the terminal.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// No tables at the end (`specbench report` on the results folder gives them later).
        #[arg(long, conflicts_with = "output")]
        no_tables: bool,
        /// Refuse to start when the plan's estimate of what is left costs more than this many
        /// dollars, and stop sending new requests once the measured cost of this command
        /// reaches it (finished work is kept; run again with a higher cap to go on). Needs
        /// prices for every model and judge.
        #[arg(long, value_name = "DOLLARS")]
        max_cost: Option<f64>,
        #[command(flatten)]
        cost: CostArgs,
    },
    /// Split the study over a Slurm job array: writes `<results>.shards/study.sbatch` (each
    /// array task runs its share with `--shard auto` into `<results>.shards/shardK`) and submits
    /// it with `sbatch`. Join the shares with `study merge` once every task is done.
    Submit {
        /// The study file.
        file: PathBuf,
        /// Submit to Slurm (the only engine so far).
        #[arg(long, required = true)]
        slurm: bool,
        /// Array tasks (each takes every N-th item of every cell).
        #[arg(long, default_value_t = 4, value_name = "N")]
        array_size: usize,
        /// The Slurm partition. Default: the cluster's.
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// CPUs per task.
        #[arg(long, default_value_t = 2, value_name = "N")]
        cpus_per_task: usize,
        /// Wait until every task has finished (`sbatch --wait`), then merge.
        #[arg(long)]
        wait: bool,
        /// Write the script and print the `sbatch` command without submitting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Join the shares a submitted study wrote (`<results>.shards/shard*`) into its results
    /// folder, identical to a one-process study. Sends nothing.
    Merge {
        /// The study file.
        file: PathBuf,
    },
    /// Requests per cell and scenario (each method's calls per item, one judge call per item
    /// in joint mode and one per rule in sequential), and how many are left; sends nothing.
    Plan {
        /// The study file.
        file: PathBuf,
        #[command(flatten)]
        cost: CostArgs,
    },
    /// Items selected, generated and judged per cell and scenario, from the run journals.
    Status {
        /// The study file.
        file: PathBuf,
    },
}

/// What prices a study's tokens, and what its estimate assumes.
#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// Prices per million tokens by model key, YAML or JSON (`GPT-4.1: {prompt: 2.0,
    /// completion: 8.0}`), instead of the study file's `prices`.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Completion tokens one call to a model under test is assumed to write. Default: its
    /// `max_tokens`, an upper bound.
    #[arg(long, value_name = "N")]
    pub completion_tokens: Option<u64>,
    /// Completion tokens one judge call is assumed to write. Default: the judge's
    /// `max_tokens`, an upper bound.
    #[arg(long, value_name = "N")]
    pub judge_completion_tokens: Option<u64>,
}

impl CostArgs {
    pub fn assumptions(&self) -> specbench::study::Assumptions {
        specbench::study::Assumptions {
            completion_tokens: self.completion_tokens,
            judge_completion_tokens: self.judge_completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Markdown,
    Csv,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The results folder to read.
    #[arg(default_value = "result", value_name = "RESULTS_DIR")]
    pub results: PathBuf,
    /// Only these models (folder names), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub model: Vec<String>,
    /// Only these scenarios.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Only these methods (result folder names: `vanilla`, `align3`).
    #[arg(long, value_delimiter = ',')]
    pub method: Vec<String>,
    /// Only these judges (file stems: `GPT-4.1`, `GPT-4.1-sequential`).
    #[arg(long, value_delimiter = ',')]
    pub judge: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the plots into this folder (`tradeoff.svg`, `heatmap.svg`, `tokens.svg`).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// The method the others are compared with.
    #[arg(long, default_value = "vanilla")]
    pub baseline: String,
    /// Two models to compare on the same items (`--compare Qwen3-14B,Qwen3-32B`); default:
    /// each model against the next one down the leaderboard.
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "A,B")]
    pub compare: Vec<String>,
    /// SAR's α for rescoring the stored verdicts.
    #[arg(long, default_value_t = 0.3)]
    pub alpha: f64,
    /// Bootstrap resamples per interval.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Sign flips of the paired permutation test.
    #[arg(long, default_value_t = 5000)]
    pub permutations: usize,
    /// Seed of every random draw: the same seed gives the same report.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prices per million tokens, YAML or JSON: `GPT-4.1: {prompt: 2.0, completion: 8.0}`.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// The scenario pack, for the rule texts in the per-rule table and the model families of
    /// the leaderboard (the sections of its `config/config_model.yaml`); optional.
    #[arg(long, env = "SPECBENCH_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The results folder to show.
    #[arg(default_value = "result", value_name = "RESULTS_DIR")]
    pub results: PathBuf,
    /// Address to listen on; only loopback unless told otherwise. Off loopback a token is
    /// required (see --token); 0.0.0.0 or :: (every address) answers to any Host name.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 8350)]
    pub port: u16,
    /// Require this token instead of a random one (also on loopback, where none is required
    /// otherwise). Letters, digits and `-._~`, at least 16 of them.
    #[arg(long, env = specbench::env::Env::VIEW_TOKEN, hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<crate::view::GivenToken>,
    /// Require no token, even off loopback (and whatever --token or its variable say): anyone
    /// who can reach the port reads every prompt, response and judge reason.
    #[arg(long)]
    pub no_token: bool,
    /// Also answer requests whose Host header names this (a name behind which the viewer is
    /// reached: a proxy, a DNS name); repeatable. Other names get 403, against DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// SAR's α.
    #[arg(long, default_value_t = 0.3)]
    pub alpha: f64,
    /// The scenario pack, for rule texts (optional).
    #[arg(long, env = "SPECBENCH_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DataCommand {
    #[command(subcommand)]
    pub action: DataAction,
}

#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Check every file, rule and item of a pack and list every problem (exit 2 if any).
    Validate(PackArg),
    /// Items per scenario, label and source; prompt lengths; rules; reference answers.
    Stats(PackArg),
    /// Download the official pack from the upstream repository (scenarios, configs, chat
    /// templates; protocol texts read from its source), check it, record checksums.
    Pull(PullArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Where the pack goes. Default: `data/` in the per-user cache folder, which commands use
    /// when neither --data nor SPECBENCH_DATA is given.
    #[arg(long, value_name = "DIR")]
    pub dest: Option<PathBuf>,
    /// Base URL laid out as the upstream repository (a mirror, or a test server).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// Replace a pack already at the destination.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PackArg {
    /// The pack: a pack folder, the upstream `data/` folder, a scenario folder or a scenario
    /// file. Default: --data, else SPECBENCH_DATA.
    #[arg(value_name = "DIR")]
    pub pack: Option<PathBuf>,
    #[arg(long, env = "SPECBENCH_DATA", value_name = "DIR", hide_env_values = true)]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScenarioCommand {
    #[command(subcommand)]
    pub action: ScenarioAction,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioAction {
    /// Write NAME.yaml: a commented scenario to fill in (it validates as it is).
    New {
        /// The scenario's name (`--scenario NAME` later): letters, digits, `-` and `_`.
        name: String,
        /// The folder to write into.
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shards' results folders.
    #[arg(required = true, value_name = "SHARD_RESULTS")]
    pub shards: Vec<PathBuf>,
    /// Where the joined run is written (may be one of the shards' folders).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// The scenario pack the shards ran on. Default: SPECBENCH_DATA, else the pack
    /// `specbench data pull` fetched.
    #[arg(long, env = "SPECBENCH_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Every journaled batch of the run's batching models: its id, state and counts.
    Status(RunArgs),
    /// Cancels the run's batches that are still running (what was answered is still billed, and
    /// collected by the next run).
    Cancel(RunArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
    #[command(flatten)]
    pub location: CacheLocation,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum CacheAction {
    /// Entries, hits, bytes on disk and entries per model.
    Stats,
    /// Delete every stored reply.
    Clear,
}

#[derive(Debug, Args)]
pub struct CacheLocation {
    /// The response cache folder. Default: $XDG_CACHE_HOME/specbench, else ~/.cache/specbench.
    #[arg(long, env = "SPECBENCH_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub generate: GenerateArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Generate from the attacked prompt (`adversarial_prompt`, as the paper does) or from the
    /// original `prompt`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub adversarial: bool,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Model key whose stored responses are judged (names the result folder).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Where results are stored.
    #[arg(long, default_value = "result", value_name = "DIR")]
    pub results: PathBuf,
    /// Model key of the stored run.
    #[arg(long)]
    pub model: String,
    /// Scenarios to score (comma-separated); default: every scenario stored for the model.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Judge file stem (`GPT-4.1`, `GPT-4.1-sequential`); default: every judge stored.
    #[arg(long)]
    pub judge: Option<String>,
    /// SAR's α: the score of a safe response that meets no behavioral rule.
    #[arg(long, default_value_t = 0.3)]
    pub alpha: f64,
}

/// The test-time method and its parameters. Parameters come from these flags, else from the
/// upstream-format TTD config, else upstream's defaults; non-default ones name the result folder.
#[derive(Debug, Args)]
pub struct MethodArgs {
    /// raw (bare prompt), vanilla (prompt + rules), zero_think, more_think, self_refine, align3,
    /// best_of_n, tpo; several run one after the other (`vanilla,align3`). zero_think,
    /// more_think and align3 prefill the assistant turn (see --prefill).
    #[arg(long, value_delimiter = ',', default_value = "vanilla", value_parser = parse_method)]
    pub method: Vec<MethodKind>,
    /// MoreThink: thinking rounds (rethink cues = this - 1). Default 3.
    #[arg(long)]
    pub rethink_count: Option<u32>,
    /// Self-Refine: feedback-and-refine rounds. Default 3.
    #[arg(long)]
    pub max_iters: Option<u32>,
    /// Self-Refine: (response, feedback) pairs shown to the refine call. Default 1.
    #[arg(long)]
    pub max_history_length: Option<u32>,
    /// Align3: which stages run, in order (`1,2,3`; an ablation: `2,1,3`, `1,3`, `3`).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=3))]
    pub align3_stages: Vec<u8>,
    /// Best-of-N: samples drawn. Default 4.
    #[arg(long)]
    pub n: Option<u32>,
    /// TPO: samples per round. Default 5.
    #[arg(long)]
    pub tpo_samples: Option<u32>,
    /// TPO: critique-and-revise rounds. Default 2.
    #[arg(long)]
    pub tpo_iterations: Option<u32>,
    /// Best-of-N and TPO: what ranks samples. `reward`: a reward model (--reward-model,
    /// --reward-base-url; vLLM's score API). `judge`: the run's own judge, which makes the result
    /// an oracle-scored upper bound (only with `specbench run`).
    #[arg(long, value_enum, default_value = "reward")]
    pub scorer: ScorerArg,
    /// The reward model's name, as its server knows it.
    #[arg(long)]
    pub reward_model: Option<String>,
    /// Base URL of the reward model's server, up to `/v1` (`/score` is appended).
    #[arg(long, value_name = "URL")]
    pub reward_base_url: Option<String>,
    /// Environment variable holding the reward server's API key.
    #[arg(long, value_name = "NAME")]
    pub reward_api_key_env: Option<String>,
    /// Upstream-format TTD config. Default: the pack's `config/config_ttd.yaml`.
    #[arg(long, value_name = "FILE")]
    pub ttd_config: Option<PathBuf>,
}

/// Which data and which items.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// The scenario pack: a folder with `scenarios/` (and `protocol/`, `config/`), the upstream
    /// `data/` folder, one scenario folder or one scenario file. Default: SPECBENCH_DATA, else
    /// the pack `specbench data pull` fetched.
    #[arg(long, env = "SPECBENCH_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Scenarios to run, comma-separated or repeated (`Child,Code`); default: all.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Only the first N items of each scenario.
    #[arg(long, conflicts_with = "items")]
    pub limit: Option<usize>,
    /// Only these item positions of each scenario (`0,5,200`).
    #[arg(long, value_delimiter = ',', conflicts_with = "sample")]
    pub items: Vec<usize>,
    /// N items of each scenario with both labels: half unsafe, half safe, each spread evenly
    /// (--limit takes the first N, which in the official scenarios are all unsafe).
    #[arg(long, value_name = "N", conflicts_with = "limit")]
    pub sample: Option<usize>,
    /// Where results are written (upstream layout: DIR/<model>/<scenario>/<method>/).
    #[arg(long, default_value = "result", value_name = "DIR")]
    pub results: PathBuf,
    /// Only this machine's share of the items: K of N (`2/4` takes positions 1, 5, 9, ...).
    /// Run every K with its own --results, then `specbench merge` joins them. `auto`: this
    /// Slurm array task's share (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT); `auto/N`: a
    /// Kubernetes Indexed Job's (JOB_COMPLETION_INDEX of N).
    #[arg(long, value_name = "K/N|auto|auto/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
}

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// api.openai.com; key in OPENAI_API_KEY.
    Openai,
    /// api.deepseek.com; key in DEEPSEEK_API_KEY; reasoning_content becomes the thought.
    Deepseek,
    /// vLLM servers (--base-url, several spread the load); no key unless --api-key-env.
    Vllm,
    /// Any OpenAI-compatible server at --base-url.
    Compatible,
    /// Anthropic's Messages API (api.anthropic.com, or --base-url); key in ANTHROPIC_API_KEY.
    Anthropic,
    /// Azure OpenAI: --base-url https://RESOURCE.openai.azure.com/openai/deployments/NAME; key in AZURE_OPENAI_API_KEY.
    Azure,
    /// Gemini's OpenAI-compatible endpoint (generativelanguage.googleapis.com); key in GEMINI_API_KEY; a <thought> summary becomes the thought.
    Gemini,
    /// The embedded llama.cpp model: a GGUF file run in this process (--model-path).
    Local,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model key: an entry of the model config file (its `model_name`, decoding fields and
    /// `extra_body` are used), or a model name sent as is. Default: the embedded model,
    /// SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<String>,
    /// GGUF file of a local model (implies --provider local). Default:
    /// models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched by scripts/fetch-model).
    #[arg(long, value_name = "FILE")]
    pub model_path: Option<PathBuf>,
    /// Upstream-format model config. Default: the pack's `config/config_model.yaml`.
    #[arg(long, value_name = "FILE")]
    pub model_config: Option<PathBuf>,
    /// Provider preset. Default: `compatible` when --base-url is given; `local` with
    /// --model-path or without --model; else `openai`.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Base URL(s) of the server, up to `/v1`; comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub base_url: Vec<String>,
    /// Environment variable holding the API key (the key itself is never taken as a flag).
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Jinja chat template for prefill methods. Default: the one the pack's
    /// `chat_templates/config.json` names for the model, else the server's own.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// How prefill methods continue the assistant turn: `chat` sends the prefilled message
    /// with vLLM's `continue_final_message` (upstream's way); `completions` renders the chat
    /// template here and sends the raw prompt to `/v1/completions` (vLLM, llama.cpp's server,
    /// SGLang, TGI).
    #[arg(long, value_enum, default_value = "chat")]
    pub prefill: PrefillArg,
    /// With `--prefill completions`: the tokenizer's BOS token, for templates that print it.
    #[arg(long, value_name = "TEXT")]
    pub bos_token: Option<String>,
    /// With `--prefill completions`: the tokenizer's EOS token, for templates that print it.
    #[arg(long, value_name = "TEXT")]
    pub eos_token: Option<String>,
    /// Send this sampling `seed` with every request of the model under test (OpenAI and vLLM
    /// take it; the embedded model seeds its sampler). It is part of the cache key, so another
    /// seed is another sample. Default: none, as upstream.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Send the model's requests through OpenAI's Batch API: half price, answered within 24
    /// hours. Safe to stop and run again: journaled batches are collected, never resubmitted.
    #[arg(long)]
    pub batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScorerArg {
    Reward,
    Judge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrefillArg {
    Chat,
    Completions,
}

#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// Judge model key: an entry of the judge config file, or a model name sent as is.
    /// Default: GPT-4.1 (the paper's judge); the embedded model when the model under test is
    /// local and no judge server is given.
    #[arg(long)]
    pub judge: Option<String>,
    /// GGUF file of a local judge (implies --judge-provider local).
    #[arg(long, value_name = "FILE")]
    pub judge_model_path: Option<PathBuf>,
    /// Joint (one call per response) or sequential (one call per rule); both may be given.
    #[arg(long, value_delimiter = ',', default_value = "joint", value_parser = parse_judge_mode)]
    pub judge_mode: Vec<JudgeMode>,
    /// Upstream-format judge config. Default: the pack's `config/config_eval_model.yaml`.
    #[arg(long, value_name = "FILE")]
    pub judge_config: Option<PathBuf>,
    /// Judge provider preset. Default: `compatible` when --judge-base-url is given, `local`
    /// with --judge-model-path, else as described for --judge.
    #[arg(long, value_enum)]
    pub judge_provider: Option<ProviderArg>,
    /// Base URL(s) of the judge's server; comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub judge_base_url: Vec<String>,
    /// Environment variable holding the judge's API key.
    #[arg(long, value_name = "NAME")]
    pub judge_api_key_env: Option<String>,
    /// Judge again the items whose judge replies never parsed (kept as judge errors otherwise).
    #[arg(long)]
    pub retry_errors: bool,
    /// Send the judge's requests through OpenAI's Batch API (half price, within 24 hours).
    #[arg(long)]
    pub judge_batch: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Requests in flight at once per endpoint (base URL), shared by model and judge.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds one request may take before it is abandoned and retried.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Attempts per request (the first included) on 429, 5xx, timeouts and lost connections.
    #[arg(long, default_value_t = 6)]
    pub max_attempts: u32,
    /// The most bytes of one reply body that are read (default 16 MiB). A larger reply fails
    /// its attempt as soon as the cap is passed and is not retried; the item is recorded as
    /// failed with the reason.
    #[arg(long, default_value_t = specbench::backend::DEFAULT_MAX_REPLY_BYTES, value_name = "BYTES")]
    pub max_reply_bytes: usize,
    /// SAR's α: the score of a safe response that meets no behavioral rule.
    #[arg(long, default_value_t = 0.3)]
    pub alpha: f64,
    /// Local models: tokens of context per sequence (prompt plus reply). Sequences decoded
    /// together = --concurrency. Larger contexts cost decoding speed, not only memory.
    #[arg(long, default_value_t = 4096)]
    pub local_context: u32,
    /// Local models: CPU threads. Default: all cores.
    #[arg(long)]
    pub local_threads: Option<i32>,
    /// Neither read nor write the response cache: every request goes to the model.
    #[arg(long)]
    pub no_cache: bool,
    /// Seconds between two polls of a running batch (--batch, --judge-batch).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub batch_poll: f64,
    #[command(flatten)]
    pub cache: CacheLocation,
}
