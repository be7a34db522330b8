//! `specbench study run|plan|status|submit|merge FILE`: the library's studies, rendered.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use specbench::backend::{Stop, Usage};
use specbench::cost::Prices;
use specbench::run::{Event, Outcome, PLAIN_PROGRESS_EVERY, RunReport};
use specbench::setup::Shared;
use specbench::study::{Assumptions, CellProgress, Money, Study, StudyError};

use crate::args::{ReportFormat, StudyAction, StudyCommand};
use crate::commands::{ExitStatus, UsageError, run_error};

pub async fn study(command: StudyCommand, stop: Stop) -> anyhow::Result<ExitStatus> {
    match command.action {
        StudyAction::Run {
            file,
            shard,
            results,
            format,
            output,
            no_tables,
            max_cost,
            cost,
        } => {
            let mut study = load(&file)?;
            if cost.prices.is_some() {
                study.file.prices = cost.prices.clone();
            }
            let sharded = shard.is_some();
            if sharded {
                study.file.data.shard = shard;
            }
            if let Some(results) = results {
                study.file.data.results = results;
            }
            let budget = match max_cost {
                Some(cap) => Some(check_budget(&study, cap, cost.assumptions()).await?),
                None => None,
            };
            let (status, folders) = run(&study, stop, budget).await?;
            // A share's tables would be a share's: they come with `study merge`'s folder.
            if !matches!(status, ExitStatus::Interrupted | ExitStatus::OverBudget) && !sharded && !no_tables {
                paper_tables(&study, &folders, format, output.as_deref())?;
            }
            Ok(status)
        }
        StudyAction::Status { file } => status(&load(&file)?),
        StudyAction::Submit {
            file,
            slurm: _,
            array_size,
            partition,
            cpus_per_task,
            wait,
            dry_run,
        } => {
            let study = load(&file)?;
            let job = SlurmJob {
                array_size,
                partition,
                cpus_per_task,
                wait,
            };
            submit(&file, &study, &job, dry_run).await
        }
        StudyAction::Merge { file } => {
            let study = load(&file)?;
            let status = merge(&study).await?;
            if status == ExitStatus::Success {
                let mut folders = Folders::default();
                for row in study.status(Default::default()).map_err(usage)? {
                    folders.add(&row.model, row.method);
                }
                paper_tables(&study, &folders, ReportFormat::Table, None)?;
            }
            Ok(status)
        }
        StudyAction::Plan { file, cost } => {
            let mut study = load(&file)?;
            if cost.prices.is_some() {
                study.file.prices = cost.prices.clone();
            }
            plan(&study, cost.assumptions()).await
        }
    }
}

/// The study file, with the pack from `SPECBENCH_DATA` when the file names none (as every
/// command's `--data`).
fn load(file: &std::path::Path) -> anyhow::Result<Study> {
    let mut study = Study::load(file).map_err(usage)?;
    if study.file.data.data.is_none() {
        study.file.data.data = std::env::var_os("SPECBENCH_DATA")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from);
    }
    Ok(study)
}

fn usage(error: StudyError) -> anyhow::Error {
    UsageError(error.to_string()).into()
}

/// Every cell at once, under one cap per endpoint: each cell is checked and its folder taken
/// before anything is sent, so bad input anywhere in the study writes nothing.
async fn run(study: &Study, stop: Stop, budget: Option<Budget>) -> anyhow::Result<(ExitStatus, Folders)> {
    let prices = match &budget {
        Some(budget) => budget.prices.clone(),
        None => study.prices().map_err(usage)?,
    };
    let shared = Shared::new(study.exec(), stop.clone()).at_once(study.exec(), study.endpoints());
    let mut runners = study
        .resolve(&specbench_local::Engine::default(), &shared)
        .map_err(usage)?;
    let waits = specbench::study::chain_by_servers(&mut runners);
    let mut locks = Vec::new();
    for runner in &runners {
        locks.extend(runner.lock().map_err(run_error)?);
    }
    let names: Vec<String> = runners
        .iter()
        .map(|runner| {
            let name = format!("{} {}", runner.plan.model_key, runner.plan.method.dir_name());
            // A repeat's cells write under `<results>/repeat-<r>`.
            match runner.store.root.strip_prefix(study.results()) {
                Ok(repeat) if !repeat.as_os_str().is_empty() => format!("{name} ({})", repeat.display()),
                _ => name,
            }
        })
        .collect();
    let mut folders = Folders::default();
    for runner in &runners {
        folders.add(&runner.plan.model_key, runner.plan.method.dir_name());
    }
    // What the measured cost is read from: every model and judge of every cell, priced by its
    // key (a judge by its file stem), counting only requests sent (not cache hits).
    let mut meters = Vec::new();
    for runner in &runners {
        if let Some((model, _)) = &runner.generator {
            meters.push((runner.plan.model_key.clone(), model.clone()));
        }
        for judge in &runner.judges {
            meters.push((judge.file_stem(), judge.model.clone()));
        }
    }
    let meter = Meter {
        prices,
        meters,
        cap: budget.map(|b| b.cap),
        stop,
    };
    let progress = Arc::new(StudyProgress::new(&names, meter));
    let runs = runners.into_iter().zip(waits).enumerate().map(|(at, (runner, wait))| {
        let (sink, progress) = (progress.clone(), progress.clone());
        // Each cell on the runtime's threads; the shared caps pace them.
        tokio::spawn(async move {
            if let Some(before) = wait {
                before.notified().await;
            }
            let result = Arc::new(runner)
                .run(Arc::new(move |event| sink.handle(at, event)))
                .await;
            progress.finished(at, result.is_err());
            result
        })
    });
    let results = futures::future::join_all(runs).await;
    progress.finish();
    drop(locks);

    let mut status = ExitStatus::Success;
    let mut interrupted = 0;
    let mut failed = None;
    let mut out = std::io::stdout().lock();
    for (name, joined) in names.iter().zip(results) {
        // A cell's panic is passed on, as a run's would be.
        let result = joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
        match result {
            Ok(report) if report.stopped.is_some() => interrupted += 1,
            Ok(report) => {
                let _ = writeln!(out, "== {name}");
                print_scores(&mut out, &report);
                if report.problems() > 0 {
                    status = ExitStatus::Incomplete;
                }
            }
            Err(error) => {
                let _ = writeln!(out, "== {name}: failed: {error}");
                status = ExitStatus::Incomplete;
                // A file that cannot be written (a full disk) ends the command as a run's does
                // (exit 3); its finished work is in the journals.
                failed.get_or_insert(error);
            }
        }
    }
    drop(out);
    if let Some(error) = failed
        .map(run_error)
        .filter(|e| e.downcast_ref::<specbench::store::StoreError>().is_some())
    {
        return Err(error);
    }
    if interrupted > 0 {
        let finished = names.len() - interrupted;
        let message = match progress.capped() {
            Some((spent, cap)) => format!(
                "stopped: the measured cost ${spent:.2} reached --max-cost {cap:.2}; {finished} of {} cells finished \
                 and every finished item is kept; run again with a higher --max-cost to go on",
                names.len()
            ),
            None => format!(
                "interrupted: {finished} of {} cells finished; run the same command to resume",
                names.len()
            ),
        };
        let _ = writeln!(std::io::stderr().lock(), "{message}");
        let status = if progress.capped().is_some() {
            ExitStatus::OverBudget
        } else {
            ExitStatus::Interrupted
        };
        return Ok((status, folders));
    }
    Ok((status, folders))
}

/// The model and method folders a study's cells write.
#[derive(Debug, Default)]
struct Folders {
    models: Vec<String>,
    methods: Vec<String>,
}

impl Folders {
    /// The folders of model `key` (named without its organisation) and `method`.
    fn add(&mut self, key: &str, method: String) {
        let model = specbench::store::short_name(key).to_string();
        if !self.models.contains(&model) {
            self.models.push(model);
        }
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
    }
}

/// The tables the paper reports, from the study's own folders of its results: the leaderboard
/// (S, B and SAR over scenarios), each model's methods against vanilla with completion tokens
/// per item, and, with two judges or modes, their agreement.
fn paper_tables(study: &Study, folders: &Folders, format: ReportFormat, output: Option<&Path>) -> anyhow::Result<()> {
    let alpha = crate::commands::alpha(study.exec().alpha)?;
    let filter = specbench_report::Filter {
        models: folders.models.clone(),
        methods: folders.methods.clone(),
        ..specbench_report::Filter::default()
    };
    let options = specbench_report::ReportOptions {
        alpha,
        rules: crate::report::rule_texts(study.file.data.data.as_deref())?,
        families: crate::report::families(study.file.data.data.as_deref())?,
        ..specbench_report::ReportOptions::default()
    };
    let repeats: Vec<u32> = study.repeats().into_iter().flatten().collect();
    let built = if repeats.is_empty() {
        let loaded = specbench_report::load(study.results(), alpha, &filter).map_err(|e| UsageError(e.to_string()))?;
        crate::report::warn_skipped(&loaded.skipped);
        if loaded.runs.is_empty() {
            return Ok(());
        }
        let mut built = specbench_report::build(&loaded.runs, &options);
        built
            .tables
            .retain(|table| ["leaderboard", "methods", "judge_agreement"].contains(&table.name.as_str()));
        built
    } else {
        let folders: Vec<(u32, PathBuf)> = repeats.into_iter().map(|r| (r, study.repeat_results(r))).collect();
        crate::report::repeats_report(&folders, alpha, &filter, &options)?
    };
    let text = specbench_report::render::render(&built, crate::report::format(format));
    crate::report::write_text(&text, output)
}

fn print_scores(out: &mut impl Write, report: &RunReport) {
    for scenario in &report.scenarios {
        for judge in &scenario.judges {
            let full = &judge.summary.full_dataset;
            let _ = writeln!(
                out,
                "{:<10} {:<22} safety {:.4} behavioral {:.4} SAR {:.4} items {}",
                scenario.scenario,
                judge.stem,
                full.safety.avg(),
                full.behavioral.avg(),
                full.sar.avg(),
                full.sar.count
            );
        }
    }
}

/// The stored state of every cell and scenario; sends nothing.
fn status(study: &Study) -> anyhow::Result<ExitStatus> {
    let rows = study.status(Default::default()).map_err(usage)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<24} {:<28} {:<10} {:>9} {:>9}  judged",
        "model", "method", "scenario", "selected", "generated"
    );
    for row in &rows {
        let judged: Vec<String> = row
            .progress
            .judges
            .iter()
            .map(|judge| {
                let failed = if judge.failed > 0 {
                    format!(" ({} judge errors)", judge.failed)
                } else {
                    String::new()
                };
                format!("{} {}{failed}", judge.stem, judge.judged)
            })
            .collect();
        let failed = if row.progress.generation_failed > 0 {
            format!(" ({} failed)", row.progress.generation_failed)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<24} {:<28} {:<10} {:>9} {:>9}  {}{failed}",
            row.model,
            method_label(row),
            row.scenario,
            row.selected,
            row.progress.generated,
            if judged.is_empty() {
                "-".to_string()
            } else {
                judged.join(", ")
            }
        );
    }
    let complete = rows.iter().filter(|row| row.complete()).count();
    let _ = writeln!(out, "{complete} of {} cell scenarios complete", rows.len());
    Ok(ExitStatus::Success)
}

/// A row's method, with its repeat when the study has several.
fn method_label(row: &CellProgress) -> String {
    match row.repeat {
        Some(r) => format!("{} r{r}", row.method),
        None => row.method.clone(),
    }
}

/// How a study is split over a Slurm array.
struct SlurmJob {
    array_size: usize,
    partition: Option<String>,
    cpus_per_task: usize,
    wait: bool,
}

/// Where a submitted study's shares go: beside its results folder.
fn shards_dir(study: &Study) -> PathBuf {
    let results = study.results();
    let name = results
        .file_name()
        .map_or_else(|| "result".into(), |n| n.to_string_lossy().into_owned());
    results.with_file_name(format!("{name}.shards"))
}

/// A path as the batch script names it: absolute, so tasks find it from any folder.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// A word for `sh`, quoted unless it is plainly safe.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

async fn submit(file: &Path, study: &Study, job: &SlurmJob, dry_run: bool) -> anyhow::Result<ExitStatus> {
    if job.array_size == 0 {
        anyhow::bail!(UsageError("--array-size must be at least 1".into()));
    }
    // Every cell checked first, as `study run` would: a bad study is refused here, not in
    // every array task.
    study
        .resolve(
            &specbench::setup::NoLocalEngine,
            &Shared::new(study.exec(), Stop::default()),
        )
        .or_else(|error| match error {
            // The embedded model loads in the tasks, not here.
            StudyError::Cell { ref source, .. } if matches!(**source, specbench::setup::SetupError::Local(_)) => {
                Ok(Vec::new())
            }
            other => Err(other),
        })
        .map_err(usage)?;
    let shards = absolute(&shards_dir(study))?;
    fs_err::create_dir_all(&shards)?;
    let binary = std::env::current_exe()?;
    let file = absolute(file)?;
    let mut script = String::from("#!/bin/sh\n");
    script.push_str("#SBATCH --job-name=specbench-study\n");
    script.push_str(&format!("#SBATCH --array=1-{}\n", job.array_size));
    script.push_str(&format!("#SBATCH --cpus-per-task={}\n", job.cpus_per_task.max(1)));
    script.push_str(&format!("#SBATCH --output={}/task-%a.log\n", shards.display()));
    script.push_str(&format!("#SBATCH --chdir={}\n", std::env::current_dir()?.display()));
    if let Some(partition) = &job.partition {
        script.push_str(&format!("#SBATCH --partition={partition}\n"));
    }
    script.push_str(&format!(
        "exec {} study run {} --shard auto --results {}/shard$SLURM_ARRAY_TASK_ID\n",
        shell_word(&binary.to_string_lossy()),
        shell_word(&file.to_string_lossy()),
        shell_word(&shards.to_string_lossy())
    ));
    let path = shards.join("study.sbatch");
    fs_err::write(&path, script)?;
    if dry_run {
        let _ = writeln!(
            std::io::stdout().lock(),
            "wrote {}; submit it with: sbatch {}",
            path.display(),
            path.display()
        );
        return Ok(ExitStatus::Success);
    }
    let mut sbatch = tokio::process::Command::new("sbatch");
    sbatch.arg("--parsable");
    if job.wait {
        sbatch.arg("--wait");
    }
    let submitted = sbatch
        .arg(&path)
        .output()
        .await
        .map_err(|e| UsageError(format!("sbatch: {e} (is Slurm installed here?)")))?;
    let job_id = String::from_utf8_lossy(&submitted.stdout).trim().to_string();
    if !submitted.status.success() {
        anyhow::bail!(UsageError(format!(
            "sbatch {}: {}",
            path.display(),
            String::from_utf8_lossy(&submitted.stderr).trim()
        )));
    }
    let _ = writeln!(
        std::io::stdout().lock(),
        "submitted job {job_id}: {} array tasks, each writing {}/shardK",
        job.array_size,
        shards.display()
    );
    if job.wait {
        return merge(study).await;
    }
    let _ = writeln!(
        std::io::stdout().lock(),
        "when every task is done: specbench study merge {}",
        file.display()
    );
    Ok(ExitStatus::Success)
}

/// Joins `<results>.shards/shard*` into the study's results folder (each repeat's shares into
/// that repeat's folder).
async fn merge(study: &Study) -> anyhow::Result<ExitStatus> {
    let shards = shards_dir(study);
    let mut found: Vec<PathBuf> = match std::fs::read_dir(&shards) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.is_dir()
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("shard"))
            })
            .collect(),
        Err(error) => anyhow::bail!(UsageError(format!(
            "{}: no shares to merge ({error}); submit the study first",
            shards.display()
        ))),
    };
    found.sort();
    let mut status = ExitStatus::Success;
    for repeat in study.repeats() {
        let (shares, into) = match repeat {
            None => (found.clone(), study.results().to_path_buf()),
            Some(r) => (
                found
                    .iter()
                    .map(|share| specbench::study::repeat_folder(share, r))
                    .collect(),
                study.repeat_results(r),
            ),
        };
        let args = crate::args::MergeArgs {
            shards: shares,
            into,
            data: study.file.data.data.clone(),
        };
        match crate::merge::merge(args).await? {
            ExitStatus::Success => {}
            other => status = other,
        }
    }
    Ok(status)
}

/// What the study sends: per cell and scenario, the calls of one item, the requests in all,
/// what is left after the stored results, and the estimated tokens and cost; sends nothing.
/// The study's rows, with what the response cache answers looked up.
async fn rows_with_cache(study: &Study, assumptions: Assumptions) -> anyhow::Result<Vec<CellProgress>> {
    let mut rows = study.status(assumptions).map_err(usage)?;
    study
        .look_up_cache(&mut rows, &specbench_local::Engine::default())
        .await
        .map_err(usage)?;
    Ok(rows)
}

async fn plan(study: &Study, assumptions: Assumptions) -> anyhow::Result<ExitStatus> {
    let rows = rows_with_cache(study, assumptions).await?;
    let prices = study.prices().map_err(usage)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<24} {:<28} {:<10} {:>6} {:>8} {:>9} {:>9} {:>7} {:>11} {:>11} {:>10}  judge calls/item",
        "model",
        "method",
        "scenario",
        "items",
        "gen/item",
        "requests",
        "remaining",
        "cached",
        "prompt tok",
        "compl. tok",
        "cost $"
    );
    let (mut requests, mut remaining, mut cached) = (0u64, 0u64, 0u64);
    let unchecked = rows
        .iter()
        .filter(|row| row.cached.is_none() && row.remaining() > 0)
        .count();
    let (mut tokens, mut left_tokens) = (Usage::default(), Usage::default());
    let (mut money, mut left_money) = (Money::default(), Money::default());
    for row in &rows {
        let judges: Vec<String> = row
            .judge_calls
            .iter()
            .map(|(stem, calls)| format!("{stem} {calls}"))
            .collect();
        let scored = if row.calls.scored > 0 {
            format!("{}+{}", row.calls.generation, row.calls.scored)
        } else {
            row.calls.generation.to_string()
        };
        let mut cell = Usage::default();
        for (_, usage, _) in row.tokens() {
            cell += &usage;
        }
        for (_, usage, _) in row.remaining_tokens() {
            left_tokens += &usage;
        }
        let cost = Money::of(&prices, row.tokens());
        let _ = writeln!(
            out,
            "{:<24} {:<28} {:<10} {:>6} {:>8} {:>9} {:>9} {:>7} {:>11} {:>11} {:>10}  {}",
            row.model,
            method_label(row),
            row.scenario,
            row.selected,
            scored,
            row.requests(),
            row.remaining(),
            row.cached
                .as_ref()
                .map_or("-".to_string(), |_| row.cached_calls().to_string()),
            cell.prompt_tokens,
            cell.completion_tokens,
            dollars(cost),
            judges.join(", ")
        );
        requests += row.requests();
        remaining += row.remaining();
        cached += row.cached_calls();
        tokens += &cell;
        money.add(cost);
        left_money.add(Money::of(&prices, row.remaining_tokens()));
    }
    let _ = writeln!(
        out,
        "{requests} requests in all, {remaining} not made yet, {cached} of them answered by the response cache: {} still to send (judge parse retries aside)",
        remaining.saturating_sub(cached)
    );
    if unchecked > 0 {
        let _ = writeln!(
            out,
            "cache: not looked up for {unchecked} cell scenarios with an embedded model (`-`: it is not loaded to plan; its calls cost nothing)"
        );
    }
    let _ = writeln!(
        out,
        "tokens, estimated: {} prompt and {} completion in all; {} and {} still to send",
        tokens.prompt_tokens, tokens.completion_tokens, left_tokens.prompt_tokens, left_tokens.completion_tokens
    );
    if prices.is_empty() {
        let _ = writeln!(
            out,
            "cost: no prices (give --prices FILE or `prices:` in the study file)"
        );
    } else {
        let _ = writeln!(
            out,
            "cost, estimated: ${} in all, ${} still to send{}",
            dollars(money),
            dollars(left_money),
            if money.unpriced || left_money.unpriced {
                " (+ models with no price, marked +)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "{}", assumption_line(assumptions));
    Ok(ExitStatus::Success)
}

/// What the estimate assumed, in one line.
fn assumption_line(assumptions: Assumptions) -> String {
    let calls = |given: Option<u64>| match given {
        Some(tokens) => format!("{tokens} tokens per call"),
        None => "its max_tokens per call (an upper bound)".to_string(),
    };
    format!(
        "estimate: prompts at {} characters per token; each model writes {}, each judge {}",
        specbench::cost::CHARS_PER_TOKEN,
        calls(assumptions.completion_tokens),
        calls(assumptions.judge_completion_tokens)
    )
}

/// Dollars to the cent, `+` when some tokens had no price, `-` when none had one.
fn dollars(money: Money) -> String {
    match (money.dollars, money.unpriced) {
        (0.0, true) => "-".to_string(),
        (d, true) => format!("{d:.2}+"),
        (d, false) => format!("{d:.2}"),
    }
}

/// `--max-cost`: the cap, with what prices the measured cost.
struct Budget {
    cap: f64,
    prices: Prices,
}

/// Refuses a study whose estimate of what is left costs more than `cap`, or that has a
/// model or judge with no price (its cost could not be held to any cap).
async fn check_budget(study: &Study, cap: f64, assumptions: Assumptions) -> anyhow::Result<Budget> {
    if !(cap.is_finite() && cap >= 0.0) {
        anyhow::bail!(UsageError("--max-cost must be a number of dollars, at least 0".into()));
    }
    let prices = study.prices().map_err(usage)?;
    let rows = rows_with_cache(study, assumptions).await?;
    let mut left = Money::default();
    for row in &rows {
        for (key, usage, _) in row.remaining_tokens() {
            if usage.prompt_tokens + usage.completion_tokens > 0 && prices.of(key).is_none() {
                anyhow::bail!(UsageError(format!(
                    "{}: --max-cost needs a price for `{key}` (give --prices FILE or `prices:` in the study file)",
                    study.path.display()
                )));
            }
        }
        left.add(Money::of(&prices, row.remaining_tokens()));
    }
    if left.dollars > cap {
        anyhow::bail!(UsageError(format!(
            "{}: what is left is estimated at ${:.2}, above --max-cost {cap:.2}; nothing was sent. Raise the cap, or \
             estimate with the completions you expect (--completion-tokens, --judge-completion-tokens; see `study plan`)",
            study.path.display(),
            left.dollars
        )));
    }
    Ok(Budget { cap, prices })
}

/// On a terminal, the study's bar with a bar under it for each cell under way, and a line
/// when a cell ends; otherwise a plain line when a cell starts and ends, and the study's line
/// every few seconds.
struct StudyProgress {
    state: Mutex<State>,
    /// The study's bars: its own first, then the cells under way.
    bars: Option<MultiProgress>,
    bar: Option<ProgressBar>,
    names: Vec<String>,
    meter: Meter,
}

/// The study's measured cost, and the cap that stops it.
struct Meter {
    prices: Prices,
    /// (price key, model): every model and judge of every cell.
    meters: Vec<(String, specbench::backend::Model)>,
    cap: Option<f64>,
    stop: Stop,
}

impl Meter {
    /// Dollars spent on requests sent so far (none without prices).
    fn spent(&self) -> Option<Money> {
        if self.prices.is_empty() {
            return None;
        }
        let usage: Vec<(&str, Usage, bool)> = self
            .meters
            .iter()
            .map(|(key, model)| {
                let totals = model.totals();
                (
                    key.as_str(),
                    Usage {
                        prompt_tokens: totals.prompt_tokens,
                        completion_tokens: totals.completion_tokens,
                        total_tokens: totals.prompt_tokens + totals.completion_tokens,
                    },
                    model.batches().is_some(),
                )
            })
            .collect();
        Some(Money::of(&self.prices, usage))
    }
}

struct State {
    cells: Vec<CellState>,
    cost: Usage,
    started: Instant,
    last_line: Instant,
    /// Dollars spent so far, when there are prices.
    spent: Option<Money>,
    /// Set when the measured cost reached `--max-cost`: (spent, cap).
    capped: Option<(f64, f64)>,
}

#[derive(Default)]
struct CellState {
    total: usize,
    done: usize,
    failed: usize,
    /// When its first event came: it is under way.
    started: Option<Instant>,
    finished: bool,
    /// The cell's run ended in an error (its message follows the study).
    broke: bool,
    /// Its bar while it runs, on a terminal.
    bar: Option<ProgressBar>,
}

impl StudyProgress {
    fn new(names: &[String], meter: Meter) -> StudyProgress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        let bar = bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(0));
            if let Ok(style) = ProgressStyle::with_template("study {wide_bar} {pos}/{len} eta {eta} | {msg}") {
                bar.set_style(style);
            }
            bar
        });
        StudyProgress {
            bars,
            names: names.to_vec(),
            state: Mutex::new(State {
                cells: names.iter().map(|_| CellState::default()).collect(),
                cost: Usage::default(),
                started: Instant::now(),
                last_line: Instant::now(),
                spent: None,
                capped: None,
            }),
            bar,
            meter,
        }
    }

    /// (spent, cap) when `--max-cost` stopped the study.
    fn capped(&self) -> Option<(f64, f64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).capped
    }

    /// Marks `cell` under way at its first event: a bar, or a line.
    fn start(&self, cell: usize, state: &mut State) {
        let name = self.names.get(cell).map(String::as_str).unwrap_or_default();
        let Some(c) = state.cells.get_mut(cell) else {
            return;
        };
        if c.started.is_some() {
            return;
        }
        c.started = Some(Instant::now());
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new(0));
                let style = ProgressStyle::with_template("  {prefix:<40} [{bar:24}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(name.to_string());
                c.bar = Some(bar);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "[study] {name}: started");
            }
        }
    }

    fn handle(&self, cell: usize, event: Event) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.start(cell, &mut state);
        match event {
            Event::Planned { total, .. } => {
                if let Some(c) = state.cells.get_mut(cell) {
                    c.total += total;
                    if let Some(bar) = &c.bar {
                        bar.inc_length(total as u64);
                    }
                }
                if let Some(bar) = &self.bar {
                    bar.inc_length(total as u64);
                }
            }
            Event::Unit { outcome, cost, .. } => {
                if let Some(c) = state.cells.get_mut(cell) {
                    c.done += 1;
                    if matches!(outcome, Outcome::Failed(_)) {
                        c.failed += 1;
                    }
                    if let Some(bar) = &c.bar {
                        bar.inc(1);
                        if c.failed > 0 {
                            bar.set_message(format!("{} failed", c.failed));
                        }
                    }
                }
                state.cost.prompt_tokens += cost.prompt_tokens;
                state.cost.completion_tokens += cost.completion_tokens;
                // The cap is watched at every unit; without one the cost is only read to be shown.
                if let Some(cap) = self.meter.cap
                    && let Some(spent) = self.meter.spent()
                    && spent.dollars >= cap
                    && state.capped.is_none()
                {
                    // No new request from here on; those in flight are answered and kept.
                    state.capped = Some((spent.dollars, cap));
                    self.meter.stop.stop();
                }
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
            }
            Event::Written { .. } | Event::Resuming { .. } => {}
        }
        self.show(&mut state);
    }

    /// The cell's run ended (`failed`: in an error): its bar gives way to a line.
    fn finished(&self, cell: usize, failed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.names.get(cell).map(String::as_str).unwrap_or_default();
        if let Some(c) = state.cells.get_mut(cell) {
            c.finished = true;
            c.broke = failed;
            let seconds = c.started.map(|at| at.elapsed().as_secs_f64()).unwrap_or_default();
            let line = if failed {
                format!("{name}: failed after {seconds:.0}s (the error follows the study)")
            } else {
                format!(
                    "{name}: ended, {}/{} units, {} failed, in {seconds:.0}s",
                    c.done, c.total, c.failed
                )
            };
            match (&self.bars, c.bar.take()) {
                (Some(bars), Some(bar)) => {
                    bar.finish_and_clear();
                    bars.remove(&bar);
                    let _ = bars.println(format!("  {line}"));
                }
                _ => {
                    let _ = writeln!(std::io::stderr().lock(), "[study] {line}");
                }
            }
        }
        self.show(&mut state);
    }

    fn message(&self, state: &State) -> String {
        let finished = state.cells.iter().filter(|c| c.finished && !c.broke).count();
        let broke = state.cells.iter().filter(|c| c.broke).count();
        let running = state
            .cells
            .iter()
            .filter(|c| c.started.is_some() && !c.finished)
            .count();
        let failed: usize = state.cells.iter().map(|c| c.failed).sum();
        let spent = state
            .spent
            .map(|money| format!(" | ${}", dollars(money)))
            .unwrap_or_default();
        // Requests sent (retries included), not cache hits or journal reuse.
        let requests: u64 = self.meter.meters.iter().map(|(_, model)| model.totals().requests).sum();
        format!(
            "cells {finished}/{} done, {running} running, {broke} failed | units failed {failed} | {requests} requests, \
             tok {}/{}{spent}",
            state.cells.len(),
            state.cost.prompt_tokens,
            state.cost.completion_tokens
        )
    }

    /// The study's line, at most 8 times a second on a terminal and every few seconds
    /// otherwise: what it sums over every cell and model is not worth doing at every unit.
    fn show(&self, state: &mut State) {
        let every = if self.bar.is_some() {
            Duration::from_millis(125)
        } else {
            PLAIN_PROGRESS_EVERY
        };
        if state.last_line.elapsed() < every {
            return;
        }
        state.last_line = Instant::now();
        state.spent = self.meter.spent();
        let message = self.message(state);
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => {
                let total: usize = state.cells.iter().map(|c| c.total).sum();
                let done: usize = state.cells.iter().map(|c| c.done).sum();
                let elapsed = state.started.elapsed().as_secs_f64();
                // At the pace so far; units found in the journals make it hopeful at first.
                let eta = if done > 0 && total > done {
                    format!(", eta {:.0}s", elapsed / done as f64 * (total - done) as f64)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "[study] {done}/{total} units in {elapsed:.0}s{eta} | {message}"
                );
            }
        }
    }

    fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.spent = self.meter.spent();
        let message = self.message(&state);
        match &self.bar {
            Some(bar) => bar.finish_with_message(message),
            None => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "[study] finished in {:.0}s | {message}",
                    state.started.elapsed().as_secs_f64()
                );
            }
        }
    }
}
