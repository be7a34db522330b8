//! Resolves flags, upstream YAML and environment into library types, runs, and prints results.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use specbench::backend::{ModelTotals, Stop};
use specbench::cache::ResponseCache;
use specbench::pack::Pack;
use specbench::run::{RunError, RunReport, Runner};
use specbench::score::{Alpha, Subset, Summary};
use specbench::setup::{
    self, DataConfig, ExecConfig, JudgeConfig, MethodsConfig, ModelConfig, Prefill, Provider, RunConfig, ScorerChoice,
    Task,
};
use specbench::store::{self, Store};

use crate::args::{
    BatchCommand, CacheAction, CacheArgs, CacheLocation, DataArgs, EvaluateArgs, ExecArgs, GenerateArgs, JudgeArgs,
    MethodArgs, ModelArgs, PrefillArg, ProviderArg, RunArgs, ScoreArgs, ScorerArg,
};
use crate::progress::Progress;

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every item done.
    Success,
    /// Some items failed or were not judged; they are reported and kept out of the averages.
    Incomplete,
    /// Stopped by SIGINT or SIGTERM; what was finished is kept and in the files.
    Interrupted,
    /// A study stopped when its measured cost reached `--max-cost`; what was finished is kept.
    OverBudget,
}

/// Bad input of any kind: exit code 2, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(args: RunArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    let config = RunConfig {
        task: Task::Run,
        judges: vec![judge_config(&args.judge)],
        ..generate_config(&args.generate)
    };
    execute_all(resolve(&config, stop)?).await
}

pub async fn generate(args: GenerateArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    let config = RunConfig {
        task: Task::Generate,
        ..generate_config(&args)
    };
    execute_all(resolve(&config, stop)?).await
}

pub async fn evaluate(args: EvaluateArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    let config = RunConfig {
        task: Task::Evaluate {
            model: args.model.clone(),
        },
        data: data_config(&args.data),
        methods: methods_config(&args.method),
        judges: vec![judge_config(&args.judge)],
        exec: exec_config(&args.exec),
        ..RunConfig::default()
    };
    execute_all(resolve(&config, stop)?).await
}

/// The library builds the runners; every refusal is bad input.
fn resolve(config: &RunConfig, stop: Stop) -> anyhow::Result<Vec<Runner>> {
    config
        .resolve(&specbench_local::Engine::default(), stop)
        .map_err(|e| UsageError(e.to_string()).into())
}

/// The flags, as the library's configuration: one field per flag.
fn generate_config(args: &GenerateArgs) -> RunConfig {
    RunConfig {
        task: Task::Generate,
        data: data_config(&args.data),
        model: model_config(&args.model),
        methods: methods_config(&args.method),
        judges: Vec::new(),
        exec: exec_config(&args.exec),
        adversarial: args.adversarial,
    }
}

fn data_config(args: &DataArgs) -> DataConfig {
    DataConfig {
        data: args.data.clone(),
        scenarios: args.scenario.clone(),
        limit: args.limit,
        items: args.items.clone(),
        sample: args.sample,
        results: args.results.clone(),
        shard: args.shard,
    }
}

fn provider(arg: Option<ProviderArg>) -> Option<Provider> {
    arg.map(|arg| match arg {
        ProviderArg::Openai => Provider::Openai,
        ProviderArg::Deepseek => Provider::Deepseek,
        ProviderArg::Vllm => Provider::Vllm,
        ProviderArg::Compatible => Provider::Compatible,
        ProviderArg::Anthropic => Provider::Anthropic,
        ProviderArg::Azure => Provider::Azure,
        ProviderArg::Gemini => Provider::Gemini,
        ProviderArg::Local => Provider::Local,
    })
}

fn model_config(args: &ModelArgs) -> ModelConfig {
    ModelConfig {
        key: args.model.clone(),
        model_path: args.model_path.clone(),
        model_config: args.model_config.clone(),
        provider: provider(args.provider),
        base_urls: args.base_url.clone(),
        api_key_env: args.api_key_env.clone(),
        chat_template: args.chat_template.clone(),
        prefill: match args.prefill {
            PrefillArg::Chat => Prefill::Chat,
            PrefillArg::Completions => Prefill::Completions,
        },
        bos_token: args.bos_token.clone(),
        eos_token: args.eos_token.clone(),
        seed: args.seed,
        batch: args.batch,
    }
}

fn methods_config(args: &MethodArgs) -> MethodsConfig {
    MethodsConfig {
        methods: args.method.clone(),
        rethink_count: args.rethink_count,
        max_iters: args.max_iters,
        max_history_length: args.max_history_length,
        align3_stages: args.align3_stages.clone(),
        n: args.n,
        tpo_samples: args.tpo_samples,
        tpo_iterations: args.tpo_iterations,
        scorer: match args.scorer {
            ScorerArg::Reward => ScorerChoice::Reward,
            ScorerArg::Judge => ScorerChoice::Judge,
        },
        reward_model: args.reward_model.clone(),
        reward_base_url: args.reward_base_url.clone(),
        reward_api_key_env: args.reward_api_key_env.clone(),
        ttd_config: args.ttd_config.clone(),
    }
}

fn judge_config(args: &JudgeArgs) -> JudgeConfig {
    JudgeConfig {
        key: args.judge.clone(),
        model_path: args.judge_model_path.clone(),
        modes: args.judge_mode.clone(),
        judge_config: args.judge_config.clone(),
        provider: provider(args.judge_provider),
        base_urls: args.judge_base_url.clone(),
        api_key_env: args.judge_api_key_env.clone(),
        retry_errors: args.retry_errors,
        batch: args.judge_batch,
    }
}

fn exec_config(args: &ExecArgs) -> ExecConfig {
    ExecConfig {
        concurrency: args.concurrency,
        timeout: args.timeout,
        max_attempts: args.max_attempts,
        max_reply_bytes: args.max_reply_bytes,
        alpha: args.alpha,
        local_context: args.local_context,
        local_threads: args.local_threads,
        no_cache: args.no_cache,
        cache_dir: args.cache.cache_dir.clone(),
        batch_poll: args.batch_poll,
    }
}

/// A name that would leave the results folder is bad input, like any other.
pub(crate) fn name_check(result: Result<(), store::name::NameError>) -> anyhow::Result<()> {
    result.map_err(|e| UsageError(e.to_string()).into())
}

/// Loads the pack at `dir`; its warnings (prompts over the length to warn at) are logged.
pub(crate) fn load_pack(dir: &Path) -> anyhow::Result<Pack> {
    setup::load_pack(dir).map_err(|e| UsageError(e.to_string()).into())
}

/// The pack a command reads: --data, else SPECBENCH_DATA (clap reads both), else the pack
/// `specbench data pull` fetched.
pub(crate) fn resolve_pack(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    setup::resolve_pack(given).map_err(|e| UsageError(e.to_string()).into())
}

fn cache_dir(location: &CacheLocation) -> PathBuf {
    location.cache_dir.clone().unwrap_or_else(specbench::cache::default_dir)
}

/// `batch status|cancel`: the journaled batches of the run's batching models, as the provider
/// reports them now; `cancel` cancels the ones still running. Sends no generation or judgement.
pub async fn batch(command: BatchCommand) -> anyhow::Result<ExitStatus> {
    let (args, cancel) = match command {
        BatchCommand::Status(args) => (args, false),
        BatchCommand::Cancel(args) => (args, true),
    };
    let config = RunConfig {
        task: Task::Run,
        judges: vec![judge_config(&args.judge)],
        ..generate_config(&args.generate)
    };
    let runners = resolve(&config, Stop::default())?;
    let mut models: Vec<&specbench::backend::Model> = Vec::new();
    for runner in &runners {
        let judges = runner.judges.iter().map(|judge| &judge.model);
        for model in runner.generator.iter().map(|(model, _)| model).chain(judges) {
            let seen = models
                .iter()
                .any(|m| m.batches().map(|b| b.journal_path()) == model.batches().map(|b| b.journal_path()));
            if model.batches().is_some() && !seen {
                models.push(model);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if models.is_empty() {
        writeln!(out, "no model of this run batches (--batch, --judge-batch)")?;
        return Ok(ExitStatus::Success);
    }
    for model in models {
        let Some(batches) = model.batches() else { continue };
        let journaled = batches.journaled()?;
        writeln!(
            out,
            "{}: {} batches (journal {})",
            model.key(),
            journaled.len(),
            batches.journal_path().display()
        )?;
        for entry in journaled {
            let Some(id) = &entry.id else {
                writeln!(
                    out,
                    "  {}  no id journaled ({} requests): the next run looks for it, else submits it",
                    entry.name, entry.requests
                )?;
                continue;
            };
            match batches.state(id).await {
                Ok(state) => {
                    writeln!(
                        out,
                        "  {}  {id}  {}  {} of {} done, {} failed",
                        entry.name, state.status, state.done, state.total, state.failed
                    )?;
                    if cancel && !state.ended {
                        batches.cancel(id).await?;
                        writeln!(out, "  {}  {id}  cancel requested", entry.name)?;
                    }
                }
                Err(error) => writeln!(out, "  {}  {id}  cannot be read: {error}", entry.name)?,
            }
        }
    }
    Ok(ExitStatus::Success)
}

pub fn cache(args: CacheArgs) -> anyhow::Result<ExitStatus> {
    let dir = cache_dir(&args.location);
    let cache = ResponseCache::open(&dir)?;
    let mut out = std::io::stdout().lock();
    match args.action {
        CacheAction::Stats => {
            let stats = cache.stats()?;
            writeln!(out, "cache:   {}", stats.path.display())?;
            writeln!(out, "entries: {}", stats.entries)?;
            writeln!(out, "hits:    {}", stats.hits)?;
            writeln!(out, "size:    {:.1} MiB", stats.bytes as f64 / (1024.0 * 1024.0))?;
            for (model, entries) in &stats.models {
                writeln!(out, "  {model}: {entries}")?;
            }
        }
        CacheAction::Clear => {
            let removed = cache.clear()?;
            writeln!(out, "cache: removed {removed} entries from {}", cache.path().display())?;
        }
    }
    Ok(ExitStatus::Success)
}

/// Recomputes `<judge>_score.json` from `<judge>_evaluate.json`; sends nothing.
pub fn score(args: ScoreArgs) -> anyhow::Result<ExitStatus> {
    let alpha = alpha(args.alpha)?;
    name_check(store::name::check_model_key("--model", &args.model))?;
    for scenario in &args.scenario {
        name_check(store::name::check_folder("--scenario", scenario))?;
    }
    if let Some(stem) = &args.judge {
        name_check(store::name::check_file_stem("--judge", stem))?;
    }
    let [kind] = args.method.method[..] else {
        bail!(UsageError("score takes one --method".into()));
    };
    let method_dir = setup::method_config(&methods_config(&args.method), kind, None)
        .map_err(|e| UsageError(e.to_string()))?
        .dir_name();
    let model_dir = args.results.join(store::short_name(&args.model));
    let scenarios = if args.scenario.is_empty() {
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&model_dir).with_context(|| format!("{}: no stored results", model_dir.display()))?
        {
            let path = entry?.path();
            if path.join(&method_dir).is_dir()
                && let Some(name) = path.file_name()
            {
                found.push(name.to_string_lossy().into_owned());
            }
        }
        found.sort();
        found
    } else {
        args.scenario.clone()
    };
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let dir = Store::new(&args.results)
            .run_dir(&args.model, scenario, &method_dir)
            .map_err(|e| UsageError(e.to_string()))?;
        let stems: Vec<String> = match &args.judge {
            Some(stem) => vec![stem.clone()],
            None => dir
                .judge_stems()
                .with_context(|| format!("{}: no stored results", dir.dir.display()))?,
        };
        if stems.is_empty() {
            bail!(UsageError(format!(
                "{}: no <judge>_evaluate.json to score",
                dir.dir.display()
            )));
        }
        // One writer per run folder, as for runs.
        let _lock = dir.lock().map_err(|e| UsageError(e.to_string()))?;
        for stem in stems {
            let summary = dir.rescore(&stem, alpha).map_err(|e| UsageError(e.to_string()))?;
            rows.push((scenario.clone(), stem, summary));
        }
    }
    print_table(&rows);
    Ok(ExitStatus::Success)
}

pub(crate) fn alpha(value: f64) -> anyhow::Result<Alpha> {
    setup::alpha(value).map_err(|e| UsageError(e.to_string()).into())
}

/// Takes every run folder of `runners` (a second process with the same run stops here, having
/// sent nothing), then runs them.
pub(crate) async fn execute_all(runners: Vec<Runner>) -> anyhow::Result<ExitStatus> {
    let mut locks = Vec::new();
    for runner in &runners {
        locks.extend(runner.lock().map_err(run_error)?);
    }
    let status = execute_locked(runners, Resume::Announce).await;
    drop(locks);
    status
}

/// Whether a run says how much earlier runs had finished (not for `merge`, which replays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    Announce,
    Quiet,
}

/// Runs each method in turn (one method's results are written before the next starts); the
/// caller holds the run folders' locks.
pub(crate) async fn execute_locked(runners: Vec<Runner>, resume: Resume) -> anyhow::Result<ExitStatus> {
    let several = runners.len() > 1;
    let mut status = ExitStatus::Success;
    for runner in runners {
        if several {
            let _ = writeln!(std::io::stdout().lock(), "== method {}", runner.plan.method.dir_name());
        }
        match execute(runner, resume).await? {
            ExitStatus::Success => {}
            ExitStatus::Incomplete => status = ExitStatus::Incomplete,
            // The methods not reached yet are left for the next run.
            stopped @ (ExitStatus::Interrupted | ExitStatus::OverBudget) => return Ok(stopped),
        }
    }
    Ok(status)
}

/// A run's error as the CLI reports it: a file that cannot be written keeps finished work (exit
/// 3 in `main`); anything else is bad input, or another process holding the folder (exit 2).
pub(crate) fn run_error(error: RunError) -> anyhow::Error {
    match error {
        RunError::Store(store @ (store::StoreError::Write { .. } | store::StoreError::Append { .. })) => {
            anyhow::Error::new(store)
        }
        other => UsageError(other.to_string()).into(),
    }
}

async fn execute(runner: Runner, resume: Resume) -> anyhow::Result<ExitStatus> {
    let progress = Arc::new(Progress::new(resume == Resume::Announce));
    let sink = progress.clone();
    let result = Arc::new(runner).run(Arc::new(move |event| sink.handle(event))).await;
    progress.finish();
    let report = result.map_err(run_error)?;
    if let Some(tally) = report.stopped {
        let _ = writeln!(
            std::io::stderr().lock(),
            "interrupted: {} of {} done; run the same command to resume",
            tally.done,
            tally.total
        );
        return Ok(ExitStatus::Interrupted);
    }
    print_report(&report);
    Ok(if report.problems() > 0 {
        ExitStatus::Incomplete
    } else {
        ExitStatus::Success
    })
}

fn print_report(report: &RunReport) {
    let mut rows = Vec::new();
    for scenario in &report.scenarios {
        for judge in &scenario.judges {
            rows.push((scenario.scenario.clone(), judge.stem.clone(), judge.summary));
        }
    }
    let mut out = std::io::stdout().lock();
    if !rows.is_empty() {
        print_table(&rows);
    }
    for scenario in &report.scenarios {
        if scenario.generation_failures > 0 {
            let _ = writeln!(
                out,
                "{}: {} item(s) failed to generate (see generate.json nulls; run again to retry them)",
                scenario.scenario, scenario.generation_failures
            );
        }
    }
    if let Some(totals) = &report.generator {
        let _ = writeln!(out, "generation: {}", totals_line(totals));
    }
    for (key, totals) in &report.judges {
        let _ = writeln!(out, "judge {key}: {}", totals_line(totals));
    }
}

fn totals_line(totals: &ModelTotals) -> String {
    format!(
        "{} requests ({} retried, {} failed), {} from cache, tokens {} prompt / {} completion",
        totals.requests,
        totals.retries,
        totals.failures,
        totals.cache_hits,
        totals.prompt_tokens,
        totals.completion_tokens
    )
}

/// The score table: one block per scenario and judge, a row per subset.
fn print_table(rows: &[(String, String, Summary)]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:<7} {:>7} {:>8} {:>10} {:>7} {:>6}",
        "scenario", "judge", "subset", "safety", "behav.", "behav.exNA", "SAR", "items"
    );
    for (scenario, stem, summary) in rows {
        for subset in Subset::ALL {
            let scores = summary.subset(subset);
            let name = match subset {
                Subset::Unsafe => "unsafe",
                Subset::Safe => "safe",
                Subset::Full => "full",
            };
            // An empty subset has no average: print a dash, not a misleading 0.
            let cell = |mean: &specbench::score::Mean| {
                if mean.count == 0 {
                    "-".to_string()
                } else {
                    format!("{:.4}", mean.avg())
                }
            };
            let _ = writeln!(
                out,
                "{:<10} {:<22} {:<7} {:>7} {:>8} {:>10} {:>7} {:>6}",
                scenario,
                stem,
                name,
                cell(&scores.safety),
                cell(&scores.behavioral),
                cell(&scores.behavioral_excluding_na),
                cell(&scores.sar),
                scores.sar.count
            );
        }
        if summary.judge_errors > 0 || summary.failed > 0 {
            let _ = writeln!(
                out,
                "{:<10} {:<22} left out of the averages: {} judge error(s) (see {stem}_errors.json), {} not judged",
                scenario, stem, summary.judge_errors, summary.failed
            );
        }
    }
}
