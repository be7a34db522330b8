//! Resolves flags, upstream YAML and environment into library types, runs, and prints results.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use specbench::backend::template::ChatTemplate;
use specbench::backend::{ConcurrencyLimits, Model, OpenAiBackend, PrefillStyle, Preset, RetryPolicy};
use specbench::config::{MethodParams, ModelEntry, ModelFile};
use specbench::judge::{Judge, JudgeMode};
use specbench::method::{MethodConfig, MethodKind, Scorer, ScorerKind};
use specbench::pack::{self, ItemSelection, Pack, PromptVariant};
use specbench::protocol::Protocol;
use specbench::run::{RunPlan, RunReport, Runner};
use specbench::score::{Alpha, Subset, Summary};
use specbench::store::{self, Store};

use crate::args::{
    DataArgs, EvaluateArgs, ExecArgs, GenerateArgs, JudgeArgs, MethodArgs, ModelArgs, PrefillArg, ProviderArg, RunArgs,
    ScoreArgs, ScorerArg,
};
use crate::progress::Progress;

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every item done.
    Success,
    /// Some items failed or were not judged; they are reported and kept out of the averages.
    Incomplete,
}

/// Bad input of any kind: exit code 2, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitStatus> {
    let session = Session::new(&args.generate.data, &args.generate.exec)?;
    let method = session.method(&args.generate.method)?;
    let generator = session.model(&args.generate.model, &args.generate.exec, &method)?;
    let judges = session.judges(&args.judge, &args.generate.exec)?;
    let scorer = scorer(&args.generate.method, &args.generate.exec, judges.first())?;
    let plan = session.plan(&args.generate, generator.key(), method)?;
    let runner = session.runner(plan, Some(generator), judges, scorer.as_ref())?;
    execute(runner).await
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<ExitStatus> {
    let session = Session::new(&args.data, &args.exec)?;
    let method = session.method(&args.method)?;
    let generator = session.model(&args.model, &args.exec, &method)?;
    let scorer = scorer(&args.method, &args.exec, None)?;
    let plan = session.plan(&args, generator.key(), method)?;
    let runner = session.runner(plan, Some(generator), Vec::new(), scorer.as_ref())?;
    execute(runner).await
}

pub async fn evaluate(args: EvaluateArgs) -> anyhow::Result<ExitStatus> {
    let session = Session::new(&args.data, &args.exec)?;
    let judges = session.judges(&args.judge, &args.exec)?;
    let plan = RunPlan {
        scenarios: args.data.scenario.clone(),
        items: ItemSelection::All,
        variant: PromptVariant::Adversarial,
        method: session.method(&args.method)?,
        model_key: args.model.clone(),
        alpha: alpha(args.exec.alpha)?,
        item_concurrency: args.exec.concurrency.max(1) * 4,
    };
    let runner = session.runner(plan, None, judges, None)?;
    execute(runner).await
}

/// Recomputes `<judge>_score.json` from `<judge>_evaluate.json`; sends nothing.
pub fn score(args: ScoreArgs) -> anyhow::Result<ExitStatus> {
    let alpha = alpha(args.alpha)?;
    let method_dir = method_config(&args.method, None)?.dir_name();
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
        let dir = Store::new(&args.results).run_dir(&args.model, scenario, &method_dir);
        let mut stems: Vec<String> = match &args.judge {
            Some(stem) => vec![stem.clone()],
            None => std::fs::read_dir(&dir.dir)
                .with_context(|| format!("{}: no stored results", dir.dir.display()))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix("_evaluate.json")
                        .map(str::to_string)
                })
                .collect(),
        };
        stems.sort();
        if stems.is_empty() {
            bail!(UsageError(format!(
                "{}: no <judge>_evaluate.json to score",
                dir.dir.display()
            )));
        }
        for stem in stems {
            let path = dir.evaluate_json(&stem);
            let verdicts = store::read_verdicts(&path).map_err(|e| UsageError(e.to_string()))?;
            let mut summary = Summary::default();
            for (item, verdicts) in &verdicts {
                summary.add(item.label, &specbench::score::Score::of(verdicts, alpha));
            }
            store::write_json(&dir.score_json(&stem), &store::score_file(&summary))?;
            rows.push((scenario.clone(), stem, summary));
        }
    }
    print_table(&rows);
    Ok(ExitStatus::Success)
}

/// The method with its parameters: flags first, then the TTD config file, then upstream's
/// defaults.
fn method_config(args: &MethodArgs, default_ttd: Option<PathBuf>) -> anyhow::Result<MethodConfig> {
    let file = args.ttd_config.clone().or(default_ttd.filter(|p| p.is_file()));
    let params = match &file {
        Some(path) => MethodParams::load(path).map_err(|e| UsageError(e.to_string()))?,
        None => MethodParams::default(),
    };
    let from_file = |name: &str| -> anyhow::Result<Option<u32>> {
        let value = params
            .integer(args.method.name(), name)
            .map_err(|e| UsageError(e.to_string()))?;
        value
            .map(|v| u32::try_from(v).map_err(|_| UsageError(format!("{name} = {v} is too large")).into()))
            .transpose()
    };
    let mut config = MethodConfig::with_defaults(args.method);
    match &mut config {
        MethodConfig::MoreThink { rethink_count } => {
            *rethink_count = args
                .rethink_count
                .or(from_file("rethink_count")?)
                .unwrap_or(*rethink_count);
            if *rethink_count == 0 {
                bail!(UsageError("--rethink-count must be at least 1".into()));
            }
        }
        MethodConfig::SelfRefine {
            max_iters,
            max_history_length,
        } => {
            *max_iters = args.max_iters.or(from_file("max_iters")?).unwrap_or(*max_iters);
            *max_history_length = args
                .max_history_length
                .or(from_file("max_history_length")?)
                .unwrap_or(*max_history_length);
        }
        MethodConfig::Align3 { stages } if !args.align3_stages.is_empty() => {
            *stages = args.align3_stages.clone();
        }
        MethodConfig::BestOfN { n, scorer } => {
            *n = args.n.or(from_file("n")?).unwrap_or(*n).max(1);
            *scorer = scorer_kind(args.scorer);
        }
        MethodConfig::Tpo {
            samples,
            iterations,
            scorer,
        } => {
            *samples = args.tpo_samples.or(from_file("samples")?).unwrap_or(*samples).max(1);
            *iterations = args.tpo_iterations.or(from_file("iterations")?).unwrap_or(*iterations);
            *scorer = scorer_kind(args.scorer);
        }
        _ => {}
    }
    let given_for_other = (args.rethink_count.is_some() && args.method != MethodKind::MoreThink)
        || ((args.max_iters.is_some() || args.max_history_length.is_some()) && args.method != MethodKind::SelfRefine)
        || (!args.align3_stages.is_empty() && args.method != MethodKind::Align3)
        || (args.n.is_some() && args.method != MethodKind::BestOfN)
        || ((args.tpo_samples.is_some() || args.tpo_iterations.is_some()) && args.method != MethodKind::Tpo);
    if given_for_other {
        bail!(UsageError(format!(
            "a parameter of another method was given with --method {}",
            args.method
        )));
    }
    Ok(config)
}

fn scorer_kind(arg: ScorerArg) -> ScorerKind {
    match arg {
        ScorerArg::Reward => ScorerKind::RewardModel,
        ScorerArg::Judge => ScorerKind::JudgeOracle,
    }
}

/// The scorer Best-of-N and TPO rank samples with; `None` for other methods.
fn scorer(args: &MethodArgs, exec: &ExecArgs, judge: Option<&Judge>) -> anyhow::Result<Option<Scorer>> {
    if !args.method.needs_scorer() {
        return Ok(None);
    }
    match args.scorer {
        ScorerArg::Judge => {
            let judge = judge.ok_or_else(|| {
                UsageError("--scorer judge ranks samples with the run's judge: use `specbench run`".into())
            })?;
            Ok(Some(Scorer::Judge {
                judge: judge.clone(),
                alpha: alpha(exec.alpha)?,
            }))
        }
        ScorerArg::Reward => {
            let (Some(url), Some(name)) = (&args.reward_base_url, &args.reward_model) else {
                bail!(UsageError(format!(
                    "--method {} with --scorer reward needs --reward-model and --reward-base-url",
                    args.method
                )));
            };
            let key = match &args.reward_api_key_env {
                Some(variable) => Some(
                    specbench::backend::ApiKey::from_env(variable)
                        .ok_or_else(|| UsageError(format!("the API key variable {variable} is not set")))?,
                ),
                None => None,
            };
            let model =
                specbench::backend::reward::RewardModel::new(url, name, key, Duration::from_secs_f64(exec.timeout))
                    .map_err(|e| UsageError(e.to_string()))?;
            Ok(Some(Scorer::RewardModel(Arc::new(model))))
        }
    }
}

fn alpha(value: f64) -> anyhow::Result<Alpha> {
    Alpha::new(value).ok_or_else(|| UsageError(format!("--alpha {value}: must lie between 0 and 1")).into())
}

/// Where a model is served, as the flags say.
struct Server<'a> {
    provider: Option<ProviderArg>,
    base_urls: &'a [String],
    key_variable: Option<&'a String>,
}

/// Everything resolved from the data flags, shared by the commands.
struct Session {
    pack: Arc<Pack>,
    protocol: Arc<Protocol>,
    store: Store,
    data: DataArgs,
    limits: ConcurrencyLimits,
}

impl Session {
    fn new(data: &DataArgs, exec: &ExecArgs) -> anyhow::Result<Session> {
        if exec.concurrency == 0 {
            bail!(UsageError("--concurrency must be at least 1".into()));
        }
        if exec.max_attempts == 0 {
            bail!(UsageError("--max-attempts must be at least 1".into()));
        }
        if !(exec.timeout.is_finite() && exec.timeout > 0.0) {
            bail!(UsageError("--timeout must be a positive number of seconds".into()));
        }
        let pack = pack::load(&data.data).map_err(|e| UsageError(e.to_string()))?;
        let protocol = Protocol::for_pack(pack.protocol_dir.as_deref()).map_err(|e| UsageError(e.to_string()))?;
        tracing::info!(protocol = ?protocol.source, hash = %protocol.hash, "protocol texts");
        Ok(Session {
            pack: Arc::new(pack),
            protocol: Arc::new(protocol),
            store: Store::new(&data.results),
            data: DataArgs {
                data: data.data.clone(),
                scenario: data.scenario.clone(),
                limit: data.limit,
                items: data.items.clone(),
                results: data.results.clone(),
            },
            limits: ConcurrencyLimits::new(exec.concurrency),
        })
    }

    fn config_file(&self, given: Option<&Path>, default_name: &str) -> anyhow::Result<Option<ModelFile>> {
        let path: Option<PathBuf> = match given {
            Some(path) => Some(path.to_path_buf()),
            None => self
                .pack
                .config_dir
                .as_ref()
                .map(|dir| dir.join(default_name))
                .filter(|p| p.is_file()),
        };
        path.map(|p| ModelFile::load(&p).map_err(|e| UsageError(e.to_string()).into()))
            .transpose()
    }

    fn entry(&self, key: &str, file: Option<&ModelFile>) -> anyhow::Result<ModelEntry> {
        match file {
            Some(file) => match file.entry(key).map_err(|e| UsageError(e.to_string()))? {
                Some(entry) => Ok(entry),
                None => {
                    tracing::warn!(
                        "model `{key}` is not in {}; sending it as the model name with no parameters",
                        file.file.display()
                    );
                    Ok(ModelEntry::bare(key))
                }
            },
            None => Ok(ModelEntry::bare(key)),
        }
    }

    fn backend(
        &self,
        entry: &ModelEntry,
        server: Server<'_>,
        exec: &ExecArgs,
        chat_template: Option<String>,
        prefill: PrefillStyle,
    ) -> anyhow::Result<Model> {
        let Server {
            provider,
            base_urls,
            key_variable,
        } = server;
        let preset = match provider {
            Some(ProviderArg::Openai) => Preset::OpenAi,
            Some(ProviderArg::Deepseek) => Preset::DeepSeek,
            Some(ProviderArg::Vllm) => Preset::Vllm,
            Some(ProviderArg::Compatible) => Preset::Compatible,
            None if base_urls.is_empty() => Preset::OpenAi,
            None => Preset::Compatible,
        };
        let backend = OpenAiBackend::builder(preset, entry.model_name.clone())
            .base_urls(base_urls.iter().cloned())
            .api_key_variable(key_variable.cloned())
            .params(entry.params.clone())
            .extra_body(entry.extra_body.clone())
            .timeout(Duration::from_secs_f64(exec.timeout))
            .limits(self.limits.clone())
            .chat_template(chat_template)
            .prefill(prefill)
            .build()
            .map_err(|e| UsageError(format!("model `{}`: {e}", entry.key)))?;
        let retry = RetryPolicy {
            max_attempts: exec.max_attempts,
            ..RetryPolicy::default()
        };
        Ok(Model::new(entry.key.clone(), Arc::new(backend), retry))
    }

    fn method(&self, args: &MethodArgs) -> anyhow::Result<MethodConfig> {
        method_config(args, self.pack.config_dir.as_ref().map(|d| d.join("config_ttd.yaml")))
    }

    fn model(&self, args: &ModelArgs, exec: &ExecArgs, method: &MethodConfig) -> anyhow::Result<Model> {
        let file = self.config_file(args.model_config.as_deref(), "config_model.yaml")?;
        let entry = self.entry(&args.model, file.as_ref())?;
        let template = match &args.chat_template {
            Some(path) => Some((
                path.clone(),
                std::fs::read_to_string(path)
                    .map_err(|e| UsageError(format!("{}: cannot read the chat template: {e}", path.display())))?,
            )),
            None => self
                .pack
                .chat_template(&entry.model_name)
                .map_err(|e| UsageError(e.to_string()))?,
        };
        let prefill = match args.prefill {
            PrefillArg::Chat => PrefillStyle::ContinueFinalMessage,
            PrefillArg::Completions => {
                let Some((path, source)) = &template else {
                    bail!(UsageError(format!(
                        "--prefill completions renders the chat template here, and there is none for `{}`: give --chat-template",
                        entry.model_name
                    )));
                };
                let compiled = ChatTemplate::new(source).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
                let mut special_tokens = serde_json::Map::new();
                for (name, value) in [("bos_token", &args.bos_token), ("eos_token", &args.eos_token)] {
                    if let Some(value) = value {
                        special_tokens.insert(name.into(), value.clone().into());
                    }
                }
                PrefillStyle::Completions {
                    template: Arc::new(compiled),
                    special_tokens,
                }
            }
        };
        let template = template.map(|(_, text)| text);
        if method.kind().prefills() && template.is_none() {
            tracing::warn!(
                "no chat template for `{}` (the pack's chat_templates/config.json names none; use --chat-template); \
                 the server's own template continues the prefill",
                entry.model_name
            );
        }
        let server = Server {
            provider: args.provider,
            base_urls: &args.base_url,
            key_variable: args.api_key_env.as_ref(),
        };
        self.backend(&entry, server, exec, template, prefill)
    }

    fn judges(&self, args: &JudgeArgs, exec: &ExecArgs) -> anyhow::Result<Vec<Judge>> {
        let file = self.config_file(args.judge_config.as_deref(), "config_eval_model.yaml")?;
        let entry = self.entry(&args.judge, file.as_ref())?;
        let server = Server {
            provider: args.judge_provider,
            base_urls: &args.judge_base_url,
            key_variable: args.judge_api_key_env.as_ref(),
        };
        let model = self.backend(&entry, server, exec, None, PrefillStyle::ContinueFinalMessage)?;
        let mut modes: Vec<JudgeMode> = Vec::new();
        for mode in &args.judge_mode {
            if !modes.contains(mode) {
                modes.push(*mode);
            }
        }
        Ok(modes
            .into_iter()
            .map(|mode| Judge::new(model.clone(), mode, self.protocol.clone()))
            .collect())
    }

    fn plan(&self, args: &GenerateArgs, model_key: &str, method: MethodConfig) -> anyhow::Result<RunPlan> {
        let items = match (self.data.limit, self.data.items.is_empty()) {
            (Some(limit), _) => ItemSelection::First(limit),
            (None, false) => ItemSelection::Indices(self.data.items.clone()),
            (None, true) => ItemSelection::All,
        };
        Ok(RunPlan {
            scenarios: self.data.scenario.clone(),
            items,
            variant: if args.adversarial {
                PromptVariant::Adversarial
            } else {
                PromptVariant::Original
            },
            method,
            model_key: model_key.to_string(),
            alpha: alpha(args.exec.alpha)?,
            item_concurrency: args.exec.concurrency.max(1) * 4,
        })
    }

    fn runner(
        &self,
        plan: RunPlan,
        generator: Option<Model>,
        judges: Vec<Judge>,
        scorer: Option<&Scorer>,
    ) -> anyhow::Result<Runner> {
        let method = plan.method.build(scorer).map_err(|e| UsageError(e.to_string()))?;
        Ok(Runner {
            pack: self.pack.clone(),
            protocol: self.protocol.clone(),
            store: self.store.clone(),
            plan,
            generator: generator.map(|model| (model, method)),
            judges,
        })
    }
}

async fn execute(runner: Runner) -> anyhow::Result<ExitStatus> {
    let progress = Arc::new(Progress::new());
    let sink = progress.clone();
    let result = Arc::new(runner).run(Arc::new(move |event| sink.handle(event))).await;
    progress.finish();
    let report = result.map_err(|e| match e {
        specbench::run::RunError::Store(store) => anyhow::Error::new(store),
        other => UsageError(other.to_string()).into(),
    })?;
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
        let _ = writeln!(
            out,
            "generation: {} requests ({} retried, {} failed), tokens {} prompt / {} completion",
            totals.requests, totals.retries, totals.failures, totals.prompt_tokens, totals.completion_tokens
        );
    }
    for (key, totals) in &report.judges {
        let _ = writeln!(
            out,
            "judge {key}: {} requests ({} retried, {} failed), tokens {} prompt / {} completion",
            totals.requests, totals.retries, totals.failures, totals.prompt_tokens, totals.completion_tokens
        );
    }
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
