//! Wiring the stages per item: generate (or read stored generations), judge, record, score.
//!
//! Owns: which items a run covers, concurrency across items, resuming from the journal, stopping
//! early (a [`Stop`]: Ctrl-C, or a journal that cannot be written), and the progress `Event`s
//! that the CLI renders. Knows no wire formats or protocol bytes: it calls `Method`, `Judge` and
//! `RunDir`.

pub mod merge;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::backend::{Model, ModelTotals, Stop, Usage};
use crate::judge::{Judge, Judgement};
use crate::method::{Method, MethodConfig, MethodInput};
use crate::pack::{Item, ItemSelection, Label, Pack, PackError, PromptVariant};
use crate::protocol::{Protocol, RuleLists};
use crate::score::{Alpha, Score, Summary};
use crate::store::manifest::{
    DataFacts, GeneratedItems, GenerationEntry, JudgeEntry, JudgedItems, Manifest, ProtocolFacts, RecordedModel, Tool,
};
use crate::store::{
    GenerateEntry, GenerationRecord, Journal, JudgeOutput, JudgeRecord, RunDir, RunLock, Store, StoreError,
    judgement_key,
};

/// How long requests already sent may take to finish once a run is told to stop; after it they
/// are abandoned (their replies are lost, the units are sent again by the next run).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: no stored generations to judge; run `specbench generate` first", path.display())]
    NothingToJudge { path: std::path::PathBuf },
    #[error("internal error in a worker task: {0}")]
    Worker(String),
}

/// What to run; every choice made and checked.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Scenario names; empty means every scenario of the pack.
    pub scenarios: Vec<String>,
    pub items: ItemSelection,
    pub variant: PromptVariant,
    pub method: MethodConfig,
    /// Names the result folder; the generator's key when there is a generator.
    pub model_key: String,
    pub alpha: Alpha,
    /// Items in flight at once (requests are capped per endpoint by the backend).
    pub item_concurrency: usize,
    /// This machine's share of the items; `specbench merge` joins the shares.
    pub shard: Option<Shard>,
    /// Judge again the items whose judge replies never parsed (kept otherwise).
    pub retry_judge_errors: bool,
}

/// Share K of N of a run's items (`--shard K/N`): the items whose position modulo N is K - 1.
/// Positions, not hashes, so the split is the same on every machine and plainly checkable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {index}/{count}: want K/N with 1 <= K <= N"));
        }
        Ok(Shard { index, count })
    }

    pub fn contains(&self, item_index: usize) -> bool {
        item_index % self.count == self.index - 1
    }

    /// This task's shard from a job array's variables (`--shard auto`), read through `var`:
    /// with `count` given, Kubernetes Indexed Jobs' `JOB_COMPLETION_INDEX` (0-based) of that
    /// many; else Slurm's `SLURM_ARRAY_TASK_ID` from `SLURM_ARRAY_TASK_MIN` in steps of
    /// `SLURM_ARRAY_TASK_STEP`, `SLURM_ARRAY_TASK_COUNT` tasks (`--array=0-2` and
    /// `--array=1-5:2` both give 1/3, 2/3, 3/3).
    pub fn from_job_array(count: Option<usize>, var: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .map(|text| {
                    text.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("--shard auto: {name}={text} is not a number"))
                })
                .transpose()
        };
        if let Some(count) = count {
            let index = number("JOB_COMPLETION_INDEX")?.ok_or_else(|| {
                format!("--shard auto/{count}: JOB_COMPLETION_INDEX is not set (not a Kubernetes Indexed Job)")
            })?;
            return Shard::new(index + 1, count).map_err(|e| format!("--shard auto/{count}: {e}"));
        }
        let id = number("SLURM_ARRAY_TASK_ID")?.ok_or(
            "--shard auto: SLURM_ARRAY_TASK_ID is not set (not a Slurm array task); on Kubernetes give --shard auto/N",
        )?;
        let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or("--shard auto: SLURM_ARRAY_TASK_COUNT is not set")?;
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let offset = id
            .checked_sub(min)
            .filter(|offset| offset % step == 0)
            .ok_or_else(|| format!("--shard auto: task {id} is not in the array {min}, {min}+{step}, ..."))?;
        Shard::new(offset / step + 1, count).map_err(|e| format!("--shard auto: {e}"))
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("shard `{text}`: want K/N, for example 1/4"))
        };
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("shard `{text}`: want K/N, for example 1/4"))?;
        Shard::new(parse(index)?, parse(count)?)
    }
}

impl TryFrom<String> for Shard {
    type Error = String;

    fn try_from(text: String) -> Result<Shard, String> {
        text.parse()
    }
}

impl From<Shard> for String {
    fn from(shard: Shard) -> String {
        shard.to_string()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which stage an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stage {
    Generate,
    /// A judge, by its file stem (`GPT-4.1`, `GPT-4.1-sequential`).
    Judge(String),
}

/// How one unit ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// Found in the journal: not sent again.
    Reused,
    /// Generation or judge model could not be reached; the unit is retried on the next run.
    Failed(String),
    /// The judge's reply never parsed: recorded with the raw replies.
    JudgeError,
}

/// Progress, emitted as units finish; only the CLI renders it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage's total units for this run, before any work.
    Planned { stage: Stage, total: usize },
    Unit {
        stage: Stage,
        scenario: String,
        index: usize,
        outcome: Outcome,
        /// Tokens this unit cost (every call).
        cost: Usage,
        /// Judged units: the item's label and score.
        score: Option<(Label, Score)>,
    },
    /// Result files of a scenario were written.
    Written { scenario: String, dir: std::path::PathBuf },
    /// Earlier runs already finished `done` of this run's `total` items (emitted when `done > 0`).
    Resuming { done: usize, total: usize },
}

/// Items finished in every stage (generated and judged by every judge), of those a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub done: usize,
    pub total: usize,
}

/// A judge's result for one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeReport {
    pub stem: String,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub dir: std::path::PathBuf,
    pub generated: usize,
    pub generation_failures: usize,
    pub judges: Vec<JudgeReport>,
}

/// What a run did, for the summary table and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenarios: Vec<ScenarioReport>,
    pub generator: Option<ModelTotals>,
    /// By judge model key (both modes of one model count together).
    pub judges: Vec<(String, ModelTotals)>,
    /// Set when the run was stopped before its end: what was finished by then. The scenarios'
    /// files hold everything finished; the same run again does the rest.
    pub stopped: Option<Tally>,
}

impl RunReport {
    /// Items that failed or were not judged: a run with any is not a clean success.
    pub fn problems(&self) -> usize {
        self.scenarios
            .iter()
            .map(|s| {
                s.generation_failures
                    + s.judges
                        .iter()
                        .map(|j| j.summary.judge_errors + j.summary.failed)
                        .sum::<usize>()
            })
            .sum()
    }
}

/// Calls of one scenario that the response cache answers (see [`Runner::cached`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CachedCalls {
    /// To the model under test (a scorer's calls are not looked up).
    pub generation: u64,
    /// Per judge, in the runner's order.
    pub judges: Vec<u64>,
}

/// The stages a run has: a generator (or stored generations) and any number of judges.
pub struct Runner {
    pub pack: Arc<Pack>,
    pub protocol: Arc<Protocol>,
    pub store: Store,
    pub plan: RunPlan,
    pub generator: Option<(Model, Arc<dyn Method>)>,
    pub judges: Vec<Judge>,
    /// Once set, no new item is started and in-flight ones get [`STOP_GRACE`] to finish. Give
    /// the same `Stop` to the models (`Model::with_stop`) so that no new request is sent either.
    pub stop: Stop,
    /// Items in flight, shared with other runners running at once (a study's cells), so memory
    /// is bounded by the whole, not per runner; none: this runner's own `item_concurrency`.
    pub item_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Told once every item of this run has been started, or the run ended before: a study
    /// starts the next cell on the same servers then (see [`crate::study::chain_by_servers`]).
    pub all_started: Option<Arc<tokio::sync::Notify>>,
}

/// Tells [`Runner::all_started`] when dropped, so that every way out of a run tells it.
struct AllStarted(Option<Arc<tokio::sync::Notify>>);

impl Drop for AllStarted {
    fn drop(&mut self) {
        if let Some(notify) = self.0.take() {
            notify.notify_one();
        }
    }
}

/// One scenario's state while a run is under way.
struct ScenarioRun {
    name: String,
    rules: RuleLists,
    dir: RunDir,
    items: Vec<Arc<Item>>,
    generation_journal: Option<Journal>,
    judge_journals: Vec<Journal>,
    generations: Mutex<BTreeMap<usize, GenerationRecord>>,
    judgements: Vec<Mutex<HashMap<String, JudgeRecord>>>,
    /// Judge calls that could not reach the judge model, per judge (not journaled).
    unreachable: Vec<Mutex<usize>>,
    /// Items of this run not yet processed; the one that brings it to 0 writes the files.
    remaining: AtomicUsize,
    /// Whoever sets this writes the scenario's files: its last item, or a stopped run.
    claimed: AtomicBool,
    /// Set once the files are written and the records let go: the items it had done.
    released: Mutex<Option<usize>>,
    /// The first journal append that failed, in any scenario of the run (shared).
    journal_failure: Arc<Mutex<Option<StoreError>>>,
}

/// Where progress events go; the CLI renders them.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

impl Runner {
    /// Runs every unit; each scenario's result files are written as soon as its last item is
    /// done, while other scenarios are still in flight.
    ///
    /// Items run as tasks of their own so that request building and reply parsing use every
    /// core; at most `item_concurrency` are alive at once, which bounds memory.
    pub async fn run(self: Arc<Self>, events: EventSink) -> Result<RunReport, RunError> {
        let started = jiff::Timestamp::now();
        let all_started = AllStarted(self.all_started.clone());
        // Models are shared between the runs of one command (one per method): report this run's
        // share of their counters, not their totals so far.
        let generator_before = self.generator.as_ref().map(|(model, _)| model.totals());
        let judges_before = self.judge_totals();
        let scenarios: Vec<Arc<ScenarioRun>> = self.prepare()?.into_iter().map(Arc::new).collect();
        self.announce(&scenarios, events.as_ref());

        let slots = self
            .item_slots
            .clone()
            .unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(self.plan.item_concurrency.max(1))));
        let mut tasks = tokio::task::JoinSet::new();
        let mut written = Vec::new();
        let collect = |finished: Result<Option<Result<ScenarioReport, RunError>>, tokio::task::JoinError>,
                       written: &mut Vec<Result<ScenarioReport, RunError>>| match finished {
            Ok(Some(report)) => written.push(report),
            Ok(None) => {}
            // Abandoned after the grace period of a stop.
            Err(join) if join.is_cancelled() => {}
            Err(join) => written.push(Err(RunError::Worker(join.to_string()))),
        };
        'spawn: for scenario in &scenarios {
            if scenario.items.is_empty() && !scenario.claimed.swap(true, Ordering::AcqRel) {
                written.push(
                    self.clone()
                        .write_when_done(scenario.clone(), started, events.clone())
                        .await,
                );
            }
            for item in &scenario.items {
                let slot = tokio::select! {
                    biased;
                    () = self.stop.stopped() => break 'spawn,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break 'spawn,
                    },
                };
                let (runner, scenario, item, events) = (self.clone(), scenario.clone(), item.clone(), events.clone());
                tasks.spawn(async move {
                    runner.process(&scenario, &item, events.as_ref()).await;
                    drop(slot);
                    // The scenario's last item writes its files; other scenarios keep running.
                    let done = scenario.remaining.fetch_sub(1, Ordering::AcqRel) == 1;
                    // Stopping: the files are written once, after the grace period.
                    if done && !runner.stop.is_stopped() && !scenario.claimed.swap(true, Ordering::AcqRel) {
                        Some(runner.write_when_done(scenario, started, events).await)
                    } else {
                        None
                    }
                });
                while let Some(finished) = tasks.try_join_next() {
                    collect(finished, &mut written);
                }
            }
        }
        drop(all_started);
        // Everything started runs to its end, unless a stop comes: then what is in flight gets
        // the grace period, and is abandoned after it.
        let mut deadline = None;
        loop {
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, tasks.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::warn!(
                            abandoned = tasks.len(),
                            "grace period over; abandoning requests in flight"
                        );
                        tasks.shutdown().await;
                        break;
                    }
                },
                None => tokio::select! {
                    next = tasks.join_next() => next,
                    () = self.stop.stopped() => {
                        deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
                        continue;
                    }
                },
            };
            let Some(finished) = next else {
                break;
            };
            collect(finished, &mut written);
        }
        let journal_failure = scenarios
            .first()
            .and_then(|scenario| lock(&scenario.journal_failure).take());
        if let Some(error) = journal_failure {
            // The disk refuses: writing the result files would fail too, and the journal is
            // what the next run resumes from.
            return Err(RunError::Store(error));
        }
        let stopped = self.stop.is_stopped().then(|| {
            let tally = Tally {
                done: scenarios.iter().map(|s| self.items_done(s)).sum(),
                total: scenarios.iter().map(|s| s.items.len()).sum(),
            };
            tracing::info!(done = tally.done, total = tally.total, "stopped");
            tally
        });
        if stopped.is_some() {
            // What is finished goes to the files now; scenarios with nothing finished stay as
            // they were.
            for scenario in &scenarios {
                let finished_any = !lock(&scenario.generations).is_empty();
                if finished_any && !scenario.claimed.swap(true, Ordering::AcqRel) {
                    written.push(
                        self.clone()
                            .write_when_done(scenario.clone(), started, events.clone())
                            .await,
                    );
                }
            }
        }
        let mut reports = Vec::with_capacity(written.len());
        for report in written {
            reports.push(report?);
        }
        // Report in the order scenarios were asked for, whatever order they finished in.
        reports.sort_by_key(|r| scenarios.iter().position(|s| s.name == r.scenario));
        let judges = self
            .judge_totals()
            .into_iter()
            .map(|(key, totals)| {
                let before = judges_before.iter().find(|(k, _)| *k == key).map(|(_, t)| *t);
                (key, totals.since(&before.unwrap_or_default()))
            })
            .collect();
        Ok(RunReport {
            scenarios: reports,
            generator: self
                .generator
                .as_ref()
                .map(|(model, _)| model.totals().since(&generator_before.unwrap_or_default())),
            judges,
            stopped,
        })
    }

    /// Items of `scenario` generated and judged by every judge, this run or earlier.
    fn items_done(&self, scenario: &ScenarioRun) -> usize {
        if let Some(done) = *lock(&scenario.released) {
            return done;
        }
        let generations = lock(&scenario.generations);
        scenario
            .items
            .iter()
            .filter(|item| {
                let Some(GenerationRecord::Done { entry, .. }) = generations.get(&item.index) else {
                    return false;
                };
                if scenario.judgements.is_empty() {
                    return true;
                }
                let key = judgement_key(item, &entry.response, &self.protocol.hash);
                scenario.judgements.iter().all(|judged| lock(judged).contains_key(&key))
            })
            .count()
    }

    /// Per scenario, the calls still to make (items the journals do not hold as finished)
    /// that the response cache answers: every such item goes through the method and the
    /// judges as in a run, with models that answer from the cache only and send nothing (a
    /// runner resolved with [`crate::setup::Shared::offline`]). Writes nothing.
    pub async fn cached(&self) -> Result<Vec<(String, CachedCalls)>, RunError> {
        let mut out: Vec<(String, CachedCalls)> = Vec::new();
        for name in self.scenario_names() {
            let scenario = self.pack.scenario(&name)?;
            if out.iter().any(|(done, _)| *done == scenario.name) {
                continue;
            }
            let dir = self
                .store
                .run_dir(&self.plan.model_key, &scenario.name, &self.plan.method.dir_name())?;
            let items = self.selected(scenario)?;
            // What the journals hold, as `prepare` reads them: the last record of an item wins.
            let mut responses: HashMap<usize, Option<String>> = HashMap::new();
            if self.generator.is_some() {
                for record in crate::store::read_journal::<GenerationRecord>(&dir.generation_journal())? {
                    let response = match record {
                        GenerationRecord::Done { ref entry, .. } => Some(entry.response.clone()),
                        GenerationRecord::Failed { .. } => None,
                    };
                    responses.insert(record.index(), response);
                }
            } else if dir.generate_json().exists() {
                for (item, entry) in dir.read_generations()?.into_iter().flatten() {
                    responses.insert(item.index, Some(entry.response));
                }
            }
            let mut judged = Vec::with_capacity(self.judges.len());
            for judge in &self.judges {
                let records = crate::store::read_journal::<JudgeRecord>(&dir.judge_journal(&judge.file_stem()))?;
                let keys: std::collections::HashSet<String> = records
                    .into_iter()
                    .filter(|r| self.keeps(r))
                    .map(|r| r.key().to_string())
                    .collect();
                judged.push(keys);
            }
            let rules = RuleLists::new(&scenario.rules);
            let mut counts = CachedCalls {
                generation: 0,
                judges: vec![0; self.judges.len()],
            };
            for item in &items {
                let hits = |model: &Model| model.totals().cache_hits;
                let response = match (responses.get(&item.index), &self.generator) {
                    (Some(Some(response)), _) => Some(response.clone()),
                    (_, Some((model, method))) => {
                        let input = MethodInput {
                            item,
                            prompt: item.generation_prompt(self.plan.variant),
                            rules: &rules,
                            protocol: &self.protocol,
                        };
                        let before = hits(model);
                        // Every call the cache answers counts, also those before a miss.
                        let answered = method.respond(&input, model).await.ok().map(|r| r.text);
                        counts.generation += hits(model).saturating_sub(before);
                        answered
                    }
                    (_, None) => None,
                };
                // Without the response, what the judges will be asked is not known yet.
                let Some(response) = response else {
                    continue;
                };
                let key = judgement_key(item, &response, &self.protocol.hash);
                for ((judge, done), count) in self.judges.iter().zip(&judged).zip(&mut counts.judges) {
                    if done.contains(&key) {
                        continue;
                    }
                    let before = hits(&judge.model);
                    // A cached reply that does not parse is asked again in a run: not counted.
                    if !matches!(judge.judge(item, &rules, &response).await, Ok(Judgement::Failed(_))) {
                        *count += hits(&judge.model).saturating_sub(before);
                    }
                }
            }
            out.push((scenario.name.clone(), counts));
        }
        Ok(out)
    }

    /// The items of `scenario` this run covers: the selection, within its shard.
    fn selected(&self, scenario: &crate::pack::Scenario) -> Result<Vec<Arc<Item>>, RunError> {
        let mut items = self.plan.items.select(scenario)?;
        if let Some(shard) = &self.plan.shard {
            items.retain(|item| shard.contains(item.index));
        }
        Ok(items)
    }

    /// Whether a journaled judgement counts as done: a judge error does not when the run
    /// judges those again.
    fn keeps(&self, record: &JudgeRecord) -> bool {
        !(self.plan.retry_judge_errors && matches!(record, JudgeRecord::Failed { .. }))
    }

    fn scenario_names(&self) -> Vec<String> {
        if self.plan.scenarios.is_empty() {
            self.pack.scenarios.iter().map(|s| s.name.clone()).collect()
        } else {
            self.plan.scenarios.clone()
        }
    }

    /// Takes every run folder this run writes to, so that a second process with the same run
    /// stops before it sends anything ([`StoreError::Locked`]). Hold the locks until the run
    /// has ended. Checks the input first: bad input creates no folder.
    pub fn lock(&self) -> Result<Vec<RunLock>, RunError> {
        let mut dirs = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for name in self.scenario_names() {
            let scenario = self.pack.scenario(&name)?;
            // Named twice, run once (as `prepare` does): one lock per folder.
            if seen.contains(&scenario.name) {
                continue;
            }
            seen.push(scenario.name.clone());
            let dir = self
                .store
                .run_dir(&self.plan.model_key, &scenario.name, &self.plan.method.dir_name())?;
            if self.generator.is_some() {
                self.plan.items.select(scenario)?;
            } else if !dir.generate_json().exists() {
                return Err(RunError::NothingToJudge {
                    path: dir.generate_json(),
                });
            } else {
                // Read once more by `prepare`; a broken file must be named before the lock
                // file is written beside it.
                dir.read_generations()?;
            }
            dirs.push(dir);
        }
        Ok(dirs.iter().map(RunDir::lock).collect::<Result<_, _>>()?)
    }

    /// Request and token totals per judge model: modes of one model share its counters.
    fn judge_totals(&self) -> Vec<(String, ModelTotals)> {
        let mut totals: Vec<(String, ModelTotals)> = Vec::new();
        for judge in &self.judges {
            let key = judge.model.key().to_string();
            if !totals.iter().any(|(seen, _)| *seen == key) {
                totals.push((key, judge.model.totals()));
            }
        }
        totals
    }

    /// Writes a finished scenario's files on a blocking thread, so async work goes on meanwhile.
    async fn write_when_done(
        self: Arc<Self>,
        scenario: Arc<ScenarioRun>,
        started: jiff::Timestamp,
        events: EventSink,
    ) -> Result<ScenarioReport, RunError> {
        // One scenario's files at a time in this process: writing holds the scenario's records
        // twice (from memory and from the journals) and its JSON, and a study's cells tend to
        // finish their scenarios together.
        let _turn = RESULT_WRITES.acquire().await.ok();
        let writer = tokio::task::spawn_blocking(move || {
            let report = self.finish(&scenario, started, jiff::Timestamp::now())?;
            // Written: its records are in the files and the journals, and no item of it runs
            // again in this run. Keep the count a stop reports, and let the memory go (a
            // study holds many runs at once).
            if !self.stop.is_stopped() {
                let done = self.items_done(&scenario);
                *lock(&scenario.released) = Some(done);
                lock(&scenario.generations).clear();
                for judged in &scenario.judgements {
                    lock(judged).clear();
                }
            }
            events(Event::Written {
                scenario: scenario.name.clone(),
                dir: scenario.dir.dir.clone(),
            });
            Ok(report)
        });
        writer
            .await
            .unwrap_or_else(|join| Err(RunError::Worker(join.to_string())))
    }

    /// Selects items, opens journals and reads what earlier runs finished.
    fn prepare(&self) -> Result<Vec<ScenarioRun>, RunError> {
        let names = self.scenario_names();
        // First every check, then the first folder: bad input must leave nothing behind.
        for judge in &self.judges {
            crate::store::name::check_file_stem("judge", &judge.file_stem()).map_err(StoreError::from)?;
        }
        let mut chosen = Vec::with_capacity(names.len());
        let mut seen: Vec<&str> = Vec::with_capacity(names.len());
        for name in &names {
            let scenario = self.pack.scenario(name)?;
            // A scenario named twice (`Child,Child`, `child,Child`) runs once, where first named.
            if seen.contains(&scenario.name.as_str()) {
                continue;
            }
            seen.push(&scenario.name);
            let dir = self
                .store
                .run_dir(&self.plan.model_key, &scenario.name, &self.plan.method.dir_name())?;
            if self.generator.is_some() {
                let items = self.selected(scenario)?;
                chosen.push((scenario, dir, items, BTreeMap::new()));
            } else {
                let path = dir.generate_json();
                if !path.exists() {
                    return Err(RunError::NothingToJudge { path });
                }
                let mut generations = BTreeMap::new();
                let mut items = Vec::new();
                for (item, entry) in dir.read_generations()?.into_iter().flatten() {
                    if self.plan.shard.is_some_and(|shard| !shard.contains(item.index)) {
                        continue;
                    }
                    generations.insert(
                        item.index,
                        GenerationRecord::Done {
                            index: item.index,
                            entry,
                            cost: Usage::default(),
                            calls: 0,
                            finish_reason: None,
                        },
                    );
                    items.push(Arc::new(item));
                }
                chosen.push((scenario, dir, items, generations));
            }
        }
        let mut runs = Vec::with_capacity(chosen.len());
        let journal_failure = Arc::new(Mutex::new(None));
        for (scenario, dir, items, mut generations) in chosen {
            let generation_journal = if self.generator.is_some() {
                let (journal, records) = Journal::open::<GenerationRecord>(&dir.generation_journal())?;
                for mut record in records {
                    slim_generation(&mut record);
                    generations.insert(record.index(), record);
                }
                Some(journal)
            } else {
                None
            };
            let mut judge_journals = Vec::with_capacity(self.judges.len());
            let mut judgements = Vec::with_capacity(self.judges.len());
            for judge in &self.judges {
                let (journal, records) = Journal::open::<JudgeRecord>(&dir.judge_journal(&judge.file_stem()))?;
                judge_journals.push(journal);
                judgements.push(Mutex::new(
                    records
                        .into_iter()
                        // A later record of the same key (a retried judge error) wins.
                        .filter(|r| self.keeps(r))
                        .map(|mut r| {
                            slim_judgement(&mut r);
                            (r.key().to_string(), r)
                        })
                        .collect(),
                ));
            }
            let items_len = items.len();
            runs.push(ScenarioRun {
                name: scenario.name.clone(),
                rules: RuleLists::new(&scenario.rules),
                dir,
                items,
                generation_journal,
                judge_journals,
                generations: Mutex::new(generations),
                judgements,
                unreachable: self.judges.iter().map(|_| Mutex::new(0)).collect(),
                remaining: AtomicUsize::new(items_len),
                claimed: AtomicBool::new(false),
                released: Mutex::new(None),
                journal_failure: journal_failure.clone(),
            });
        }
        Ok(runs)
    }

    fn announce(&self, scenarios: &[Arc<ScenarioRun>], events: &(dyn Fn(Event) + Send + Sync)) {
        let total: usize = scenarios.iter().map(|s| s.items.len()).sum();
        let done: usize = scenarios.iter().map(|s| self.items_done(s)).sum();
        if done > 0 {
            events(Event::Resuming { done, total });
        }
        if self.generator.is_some() {
            events(Event::Planned {
                stage: Stage::Generate,
                total,
            });
        }
        for judge in &self.judges {
            events(Event::Planned {
                stage: Stage::Judge(judge.file_stem()),
                total,
            });
        }
    }

    async fn process(&self, scenario: &ScenarioRun, item: &Arc<Item>, events: &(dyn Fn(Event) + Send + Sync)) {
        let Some(entry) = self.response_for(scenario, item, events).await else {
            return;
        };
        for (position, judge) in self.judges.iter().enumerate() {
            self.judge_one(scenario, item, &entry, position, judge, events).await;
        }
    }

    /// The item's generation: from the journal when an earlier run finished it, else produced now.
    async fn response_for(
        &self,
        scenario: &ScenarioRun,
        item: &Arc<Item>,
        events: &(dyn Fn(Event) + Send + Sync),
    ) -> Option<GenerateEntry> {
        let existing = lock(&scenario.generations).get(&item.index).cloned();
        let unit = |outcome, cost| Event::Unit {
            stage: Stage::Generate,
            scenario: scenario.name.clone(),
            index: item.index,
            outcome,
            cost,
            score: None,
        };
        if let Some(GenerationRecord::Done { entry, .. }) = existing {
            if self.generator.is_some() {
                events(unit(Outcome::Reused, Usage::default()));
            }
            return Some(entry);
        }
        let (model, method) = self.generator.as_ref()?;
        let prompt = item.generation_prompt(self.plan.variant);
        let input = MethodInput {
            item,
            prompt,
            rules: &scenario.rules,
            protocol: &self.protocol,
        };
        let (record, event) = match method.respond(&input, model).await {
            Ok(response) => {
                let entry = GenerateEntry {
                    data: item.raw.clone(),
                    prompt: prompt.to_string(),
                    response: response.text,
                    thought: response.thought,
                    usage: response.usage,
                };
                (
                    GenerationRecord::Done {
                        index: item.index,
                        entry,
                        cost: response.cost,
                        calls: response.calls,
                        finish_reason: response.finish_reason,
                    },
                    unit(Outcome::Done, response.cost),
                )
            }
            // Not sent because the run is stopping: not a failure, nothing to record.
            Err(_) if self.stop.is_stopped() => return None,
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(scenario = %scenario.name, item = item.index, %message, "generation failed");
                (
                    GenerationRecord::Failed {
                        index: item.index,
                        error: message.clone(),
                    },
                    unit(Outcome::Failed(message), Usage::default()),
                )
            }
        };
        let kept = match &scenario.generation_journal {
            Some(journal) => match journal.append(&record) {
                Ok(()) => true,
                Err(error) => {
                    self.journal_failed(scenario, error);
                    false
                }
            },
            None => false,
        };
        let entry = match &record {
            GenerationRecord::Done { entry, .. } => Some(entry.clone()),
            GenerationRecord::Failed { .. } => None,
        };
        let mut record = record;
        if kept {
            slim_generation(&mut record);
        }
        lock(&scenario.generations).insert(item.index, record);
        events(event);
        entry
    }

    async fn judge_one(
        &self,
        scenario: &ScenarioRun,
        item: &Arc<Item>,
        entry: &GenerateEntry,
        position: usize,
        judge: &Judge,
        events: &(dyn Fn(Event) + Send + Sync),
    ) {
        let key = judgement_key(item, &entry.response, &self.protocol.hash);
        let stage = Stage::Judge(judge.file_stem());
        let unit = |outcome, cost, score| Event::Unit {
            stage: stage.clone(),
            scenario: scenario.name.clone(),
            index: item.index,
            outcome,
            cost,
            score,
        };
        let Some(judgements) = scenario.judgements.get(position) else {
            return;
        };
        let existing = lock(judgements).get(&key).cloned();
        if let Some(record) = existing {
            let score = match &record {
                JudgeRecord::Judged { verdicts, .. } => Some((item.label, Score::of(verdicts, self.plan.alpha))),
                JudgeRecord::Failed { .. } => None,
            };
            events(unit(Outcome::Reused, Usage::default(), score));
            return;
        }
        let (record, event) = match judge.judge(item, &scenario.rules, &entry.response).await {
            Ok(Judgement::Judged(judged)) => {
                let score = Score::of(&judged.verdicts, self.plan.alpha);
                (
                    JudgeRecord::Judged {
                        key: key.clone(),
                        index: item.index,
                        verdicts: judged.verdicts,
                        reply: judged.reply,
                        usage: judged.usage,
                        cost: judged.cost,
                        calls: judged.calls,
                    },
                    unit(Outcome::Done, judged.cost, Some((item.label, score))),
                )
            }
            Ok(Judgement::Failed(failure)) => {
                let cost = failure.cost;
                (
                    JudgeRecord::Failed {
                        key: key.clone(),
                        index: item.index,
                        failure,
                    },
                    unit(Outcome::JudgeError, cost, None),
                )
            }
            Err(_) if self.stop.is_stopped() => return,
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(scenario = %scenario.name, item = item.index, %message, "judging failed");
                if let Some(counter) = scenario.unreachable.get(position) {
                    *lock(counter) += 1;
                }
                events(unit(Outcome::Failed(message), Usage::default(), None));
                return;
            }
        };
        let mut record = record;
        if let Some(journal) = scenario.judge_journals.get(position) {
            match journal.append(&record) {
                Ok(()) => slim_judgement(&mut record),
                Err(error) => self.journal_failed(scenario, error),
            }
        }
        lock(judgements).insert(key, record);
        events(event);
    }

    /// The first failed append stops the run: sending more would pay for work that cannot be
    /// kept. Later failures (units in flight meanwhile) add nothing to the one error reported.
    fn journal_failed(&self, scenario: &ScenarioRun, error: StoreError) {
        let mut first = lock(&scenario.journal_failure);
        if first.is_none() {
            tracing::debug!(%error, "journal append failed; stopping");
            *first = Some(error);
        }
        drop(first);
        self.stop.stop();
    }

    /// Writes a scenario's result files from everything finished, this run and earlier ones.
    fn finish(
        &self,
        scenario: &ScenarioRun,
        started: jiff::Timestamp,
        finished: jiff::Timestamp,
    ) -> Result<ScenarioReport, RunError> {
        let mut generations = lock(&scenario.generations);
        // What was kept in memory only as far as the journals hold the rest comes back from them.
        if scenario.generation_journal.is_some() {
            restore_entries(&mut generations, &scenario.dir.generation_journal())?;
        }
        let mut restored_judgements = Vec::with_capacity(scenario.judgements.len());
        for (position, judge) in self.judges.iter().enumerate() {
            let mut judged = scenario.judgements.get(position).map(lock);
            if let Some(judged) = judged.as_mut()
                && scenario.judge_journals.get(position).is_some()
            {
                restore_replies(judged, &scenario.dir.judge_journal(&judge.file_stem()))?;
            }
            restored_judgements.push(judged);
        }
        let generated = generations
            .values()
            .filter(|r| matches!(r, GenerationRecord::Done { .. }))
            .count();
        let generation_failures = generations.len() - generated;
        let mut manifest = self.manifest(scenario)?;
        if let Some((model, _)) = &self.generator {
            let usage = scenario.dir.write_generations(&generations)?;
            let mut cost = Usage::default();
            for record in generations.values() {
                if let GenerationRecord::Done { cost: c, .. } = record {
                    cost += c;
                }
            }
            manifest.generation = Some(GenerationEntry {
                model: recorded(model),
                method: self.plan.method.clone(),
                prompt_variant: self.plan.variant,
                started: started.to_string(),
                finished: finished.to_string(),
                items: GeneratedItems {
                    done: generated,
                    failed: generation_failures,
                },
                usage,
                cost: Some(cost),
            });
        }

        let mut by_index: HashMap<usize, &Item> = HashMap::new();
        if self.generator.is_some()
            && let Ok(packed) = self.pack.scenario(&scenario.name)
        {
            // Items finished by earlier runs with another selection are part of the results too.
            by_index.extend(packed.items.iter().map(|i| (i.index, i.as_ref())));
        }
        by_index.extend(scenario.items.iter().map(|i| (i.index, i.as_ref())));
        let mut judge_reports = Vec::with_capacity(self.judges.len());
        for (position, judge) in self.judges.iter().enumerate() {
            let stem = judge.file_stem();
            let judgements = restored_judgements.get(position).and_then(Option::as_ref);
            let mut rows = Vec::new();
            let mut missing = 0;
            for record in generations.values() {
                let GenerationRecord::Done { index, entry, .. } = record else {
                    continue;
                };
                let Some(item) = by_index.get(index) else {
                    continue;
                };
                let key = judgement_key(item, &entry.response, &self.protocol.hash);
                match judgements.and_then(|j| j.get(&key)) {
                    Some(judged) => rows.push((*item, entry, judged)),
                    None => missing += 1,
                }
            }
            let joint_prompt = |item: &Item, response: &str| judge.joint_prompt(item, &scenario.rules, response);
            let output = JudgeOutput {
                stem: &stem,
                mode: judge.mode,
                alpha: self.plan.alpha,
                rows,
                joint_prompt: &joint_prompt,
            };
            let mut summary = scenario.dir.write_judgements(&output)?;
            summary.failed = missing + generation_failures;
            let mut usage = Usage::default();
            let mut cost = Usage::default();
            for (_, _, record) in &output.rows {
                match record {
                    JudgeRecord::Judged { usage: u, cost: c, .. } => {
                        usage += u;
                        cost += c;
                    }
                    JudgeRecord::Failed { failure, .. } => cost += &failure.cost,
                }
            }
            manifest.judges.insert(
                stem.clone(),
                JudgeEntry {
                    model: recorded(&judge.model),
                    mode: judge.mode,
                    alpha: Some(self.plan.alpha.get()),
                    started: started.to_string(),
                    finished: finished.to_string(),
                    items: JudgedItems {
                        judged: summary.full_dataset.sar.count,
                        judge_errors: summary.judge_errors,
                        not_judged: summary.failed,
                        unreachable_this_run: scenario.unreachable.get(position).map(|c| *lock(c)).unwrap_or(0),
                    },
                    usage,
                    cost: Some(cost),
                },
            );
            judge_reports.push(JudgeReport { stem, summary });
        }
        scenario.dir.write_manifest(&manifest)?;
        Ok(ScenarioReport {
            scenario: scenario.name.clone(),
            dir: scenario.dir.dir.clone(),
            generated,
            generation_failures,
            judges: judge_reports,
        })
    }

    /// The manifest so far (earlier judges kept), with this run's pack and protocol facts.
    fn manifest(&self, scenario: &ScenarioRun) -> Result<Manifest, RunError> {
        let mut manifest = scenario.dir.read_manifest()?.unwrap_or_default();
        manifest.tool = Tool::default();
        manifest.scenario = scenario.name.clone();
        manifest.model_key = self.plan.model_key.clone();
        manifest.protocol = Some(ProtocolFacts {
            source: self.protocol.source.clone(),
            hash: self.protocol.hash.clone(),
        });
        manifest.data = Some(DataFacts {
            root: self.pack.root.clone(),
            hash: self.pack.data_hash.clone(),
        });
        Ok(manifest)
    }
}

/// A model as the manifest records it.
fn recorded(model: &Model) -> RecordedModel {
    RecordedModel {
        key: model.key().to_string(),
        backend: model.describe(),
        batched: model.batches().is_some(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a plain-text progress reporter waits between lines.
pub const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Scenarios whose result files are being written, in the whole process.
static RESULT_WRITES: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(1));

/// A journaled generation as memory keeps it: its response (what judging reads) without its
/// thought and prompt, the largest parts of a record (Align3's thought holds every stage's
/// text), which [`restore_entries`] reads back from the journal when the files are written.
/// A study holds many cells' scenarios at once; this keeps their memory to what judging needs.
fn slim_generation(record: &mut GenerationRecord) {
    if let GenerationRecord::Done { entry, .. } = record {
        entry.thought = String::new();
        entry.prompt = String::new();
    }
}

/// A journaled judgement as memory keeps it: without the joint judge's reply text.
fn slim_judgement(record: &mut JudgeRecord) {
    if let JudgeRecord::Judged { reply, .. } = record {
        *reply = None;
    }
}

/// Puts back what [`slim_generation`] dropped, from the generation journal: the entry of the
/// last record of each item whose response is the one in memory.
fn restore_entries(generations: &mut BTreeMap<usize, GenerationRecord>, journal: &Path) -> Result<(), RunError> {
    for record in crate::store::read_journal::<GenerationRecord>(journal)? {
        if let GenerationRecord::Done {
            index, entry: stored, ..
        } = record
            && let Some(GenerationRecord::Done { entry, .. }) = generations.get_mut(&index)
            && entry.response == stored.response
        {
            *entry = stored;
        }
    }
    Ok(())
}

/// Puts back the replies [`slim_judgement`] dropped, from a judge journal.
fn restore_replies(judgements: &mut HashMap<String, JudgeRecord>, journal: &Path) -> Result<(), RunError> {
    for record in crate::store::read_journal::<JudgeRecord>(journal)? {
        if let JudgeRecord::Judged { key, reply: stored, .. } = record
            && let Some(JudgeRecord::Judged { reply, .. }) = judgements.get_mut(&key)
            && reply.is_none()
        {
            *reply = stored;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn a_job_array_task_finds_its_shard() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let slurm = |id, min, step| {
            let pairs: Vec<(String, String)> = vec![
                ("SLURM_ARRAY_TASK_ID".into(), id),
                ("SLURM_ARRAY_TASK_COUNT".into(), "3".into()),
                ("SLURM_ARRAY_TASK_MIN".into(), min),
                ("SLURM_ARRAY_TASK_STEP".into(), step),
            ];
            Shard::from_job_array(None, move |name: &str| {
                pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
            .map(|shard| shard.to_string())
        };
        // --array=0-2 and --array=1-5:2: the second task is 2/3 either way.
        assert_eq!(slurm("1".into(), "0".into(), "1".into()), Ok("2/3".into()));
        assert_eq!(slurm("3".into(), "1".into(), "2".into()), Ok("2/3".into()));
        assert_eq!(slurm("5".into(), "1".into(), "2".into()), Ok("3/3".into()));
        assert!(
            slurm("2".into(), "1".into(), "2".into()).is_err(),
            "off the array's steps"
        );
        assert!(slurm("x".into(), "0".into(), "1".into()).is_err_and(|e| e.contains("SLURM_ARRAY_TASK_ID=x")));
        let k8s = Shard::from_job_array(Some(4), env(&[("JOB_COMPLETION_INDEX", "0")]));
        assert_eq!(k8s.map(|s| s.to_string()), Ok("1/4".into()));
        assert!(Shard::from_job_array(Some(4), env(&[("JOB_COMPLETION_INDEX", "4")])).is_err());
        let outside = Shard::from_job_array(None, env(&[])).err().unwrap_or_default();
        assert!(outside.contains("not a Slurm array task"), "{outside}");
    }

    #[test]
    fn shards_split_positions_without_overlap_or_gap() {
        let shards: Vec<Shard> = (1..=3).filter_map(|k| format!("{k}/3").parse().ok()).collect();
        assert_eq!(shards.len(), 3);
        for position in 0..100 {
            assert_eq!(shards.iter().filter(|s| s.contains(position)).count(), 1, "{position}");
        }
        assert!(shards[0].contains(0) && shards[0].contains(3) && shards[1].contains(1));
        assert_eq!(shards[2].to_string(), "3/3");
    }

    #[test]
    fn a_bad_shard_is_refused() {
        for text in ["0/3", "4/3", "1/0", "1", "a/b", "1/3/4"] {
            assert!(text.parse::<Shard>().is_err(), "{text}");
        }
    }
}
