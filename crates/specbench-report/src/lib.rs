//! Reports from stored results: the paper's tables (leaderboard, unsafe/safe split, method
//! table, judge agreement) with the statistics it lacks (bootstrap intervals, paired
//! comparisons), per-rule analysis, cost, and plots.
//!
//! Owns: grouping stored runs into systems (model × method × judge) and computing tables from
//! them. Reads only what `store` wrote (through `load`); never a backend, never a pack (rule
//! texts, when wanted, are handed in).

pub mod plots;
pub mod render;
pub mod repeats;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use specbench::pack::Label;
use specbench::parallel::map_in_order;
use specbench::score::{Alpha, Verdict};
pub use specbench::store::read::{Filter, ItemResult, Loaded, StoredRun, load};
use stats::Interval;

/// One cell of a report table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Text(String),
    Number(f64),
    /// A whole number (counts, tokens).
    Count(u64),
    Interval(Interval),
    Empty,
}

impl Cell {
    fn text(value: impl Into<String>) -> Cell {
        Cell::Text(value.into())
    }

    fn maybe(value: Option<f64>) -> Cell {
        value.map(Cell::Number).unwrap_or(Cell::Empty)
    }
}

/// A titled table: what every output format renders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// A short identifier (`leaderboard`), used for CSV file names and JSON keys.
    pub name: String,
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// What a reader needs to know to read it (how averages and intervals are made).
    pub note: String,
}

/// A rendered plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    pub name: String,
    pub title: String,
    pub svg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub tables: Vec<Table>,
    #[serde(skip)]
    pub plots: Vec<Plot>,
}

/// Rule texts by scenario: (safety rules, behavioral rules).
pub type RuleTexts = HashMap<String, (Vec<String>, Vec<String>)>;

pub use specbench::cost::{Price, Prices};

/// How a report is computed.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub alpha: Alpha,
    /// The method others are compared with in the method table.
    pub baseline: String,
    pub resamples: usize,
    pub permutations: usize,
    pub level: f64,
    pub seed: u64,
    pub prices: Prices,
    pub rules: RuleTexts,
    /// Model folder name → family (`instruct`, `reasoning`): with any, the leaderboard groups
    /// models by family as the paper's Table 1 does.
    pub families: HashMap<String, String>,
    /// Two models to compare; when `None`, each model is compared with the next one down the
    /// leaderboard (is the gap between neighbours real?).
    pub compare: Option<(String, String)>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            alpha: Alpha::DEFAULT,
            baseline: "vanilla".into(),
            resamples: 2000,
            permutations: 5000,
            level: 0.95,
            seed: 0,
            prices: Prices::default(),
            rules: HashMap::new(),
            families: HashMap::new(),
            compare: None,
        }
    }
}

/// A model × method × judge, with its runs by scenario.
#[derive(Debug, Clone)]
struct System<'a> {
    model: &'a str,
    method: &'a str,
    judge: &'a str,
    by_scenario: BTreeMap<&'a str, &'a StoredRun>,
}

fn systems(runs: &[StoredRun]) -> Vec<System<'_>> {
    let mut grouped: BTreeMap<(&str, &str, &str), BTreeMap<&str, &StoredRun>> = BTreeMap::new();
    for run in runs {
        grouped
            .entry((run.model.as_str(), run.method.as_str(), run.judge.as_str()))
            .or_default()
            .insert(run.scenario.as_str(), run);
    }
    grouped
        .into_iter()
        .map(|((model, method, judge), by_scenario)| System {
            model,
            method,
            judge,
            by_scenario,
        })
        .collect()
}

/// Which score of an item.
#[derive(Debug, Clone, Copy)]
enum Metric {
    Safety,
    Behavioral,
    Sar,
}

fn value(item: &ItemResult, metric: Metric) -> f64 {
    match metric {
        Metric::Safety => f64::from(item.score.safety),
        Metric::Behavioral => item.score.behavioral,
        Metric::Sar => item.score.sar,
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Per scenario, the item values of `metric` among items with `label` (or all).
fn groups(system: &System<'_>, metric: Metric, label: Option<Label>) -> Vec<Vec<f64>> {
    system
        .by_scenario
        .values()
        .map(|run| {
            run.items
                .iter()
                .filter(|item| label.is_none_or(|l| item.label == l))
                .map(|item| value(item, metric))
                .collect::<Vec<f64>>()
        })
        .filter(|values| !values.is_empty())
        .collect()
}

/// The mean of scenario means (every scenario weighs the same, as in the paper) with a
/// bootstrap interval that resamples items within each scenario.
fn scenario_average(groups: &[Vec<f64>], options: &ReportOptions, salt: u64) -> Option<Interval> {
    let means: Vec<f64> = groups.iter().filter_map(|g| mean(g)).collect();
    let estimate = mean(&means)?;
    let mut random = stats::Draws::new(options.seed ^ salt);
    let draws = (0..options.resamples)
        .map(|_| {
            let total: f64 = groups
                .iter()
                .map(|group| stats::resampled_mean(group, &mut random))
                .sum();
            total / groups.len() as f64
        })
        .collect();
    Some(interval_of(estimate, draws, options))
}

/// `estimate` with the percentile interval of its bootstrap `draws`.
fn interval_of(estimate: f64, mut draws: Vec<f64>, options: &ReportOptions) -> Interval {
    draws.sort_by(f64::total_cmp);
    let tail = (1.0 - options.level) / 2.0;
    Interval {
        estimate,
        low: stats::percentile(&draws, tail * 100.0),
        high: stats::percentile(&draws, (1.0 - tail) * 100.0),
    }
}

const METRICS: [Metric; 3] = [Metric::Safety, Metric::Behavioral, Metric::Sar];

/// A system's intervals of each metric (in [`METRICS`] order): over scenarios, for the
/// leaderboard, and of each scenario, for the per-scenario table. Both come from one bootstrap:
/// each scenario's items are resampled with a stream of its own, and a draw of the average is
/// the average of the scenarios' draws (items are resampled within each scenario either way),
/// so the two tables cost one pass over a study's items, not two.
struct SystemIntervals<'a> {
    overall: [Option<Interval>; 3],
    by_scenario: Vec<(&'a str, usize, [Option<Interval>; 3])>,
}

fn system_intervals<'a>(system: &System<'a>, options: &ReportOptions) -> SystemIntervals<'a> {
    let mut overall = [None; 3];
    let mut by_scenario: Vec<(&str, usize, [Option<Interval>; 3])> = system
        .by_scenario
        .iter()
        .map(|(scenario, run)| (*scenario, run.items.len(), [None; 3]))
        .collect();
    for (m, metric) in METRICS.into_iter().enumerate() {
        let name = format!("{metric:?}");
        let mut totals = vec![0.0; options.resamples];
        let mut means = Vec::new();
        for (s, (scenario, run)) in system.by_scenario.iter().enumerate() {
            let values: Vec<f64> = run.items.iter().map(|item| value(item, metric)).collect();
            let Some(estimate) = mean(&values) else {
                continue;
            };
            let mut random =
                stats::Draws::new(options.seed ^ salt(&[system.model, system.method, system.judge, scenario, &name]));
            let draws: Vec<f64> = (0..options.resamples)
                .map(|_| stats::resampled_mean(&values, &mut random))
                .collect();
            for (total, draw) in totals.iter_mut().zip(&draws) {
                *total += draw;
            }
            means.push(estimate);
            by_scenario[s].2[m] = Some(interval_of(estimate, draws, options));
        }
        if let Some(estimate) = mean(&means) {
            let count = means.len() as f64;
            overall[m] = Some(interval_of(
                estimate,
                totals.into_iter().map(|total| total / count).collect(),
                options,
            ));
        }
    }
    SystemIntervals { overall, by_scenario }
}

/// A stable salt per system, so every interval has its own random stream and reports are
/// reproducible whatever else they contain.
fn salt(parts: &[&str]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(parts.join("\u{1f}").as_bytes());
    u64::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

fn interval_cell(value: Option<Interval>) -> Cell {
    value.map(Cell::Interval).unwrap_or(Cell::Empty)
}

/// Builds every table and plot of the report.
pub fn build(runs: &[StoredRun], options: &ReportOptions) -> Report {
    let systems = systems(runs);
    let intervals = map_in_order(&systems, |system| system_intervals(system, options));
    let mut tables = vec![
        leaderboard(&systems, &intervals, options),
        per_scenario(&systems, &intervals),
        split(&systems, options),
        method_table(&systems, options),
        model_comparisons(&systems, options),
    ];
    tables.extend(judge_agreement(&systems, runs));
    tables.push(per_rule(runs, options));
    tables.push(cost(&systems, options));
    let plots = plots::all(&systems_summary(&systems, options), options.alpha);
    Report { tables, plots }
}

/// The leaderboard alone (what the viewer shows first), without the rest of the report. It
/// reads each item's label and score only, never its key or verdicts.
pub fn leaderboard_table(runs: &[StoredRun], options: &ReportOptions) -> Table {
    let systems = systems(runs);
    let intervals = map_in_order(&systems, |system| system_intervals(system, options));
    leaderboard(&systems, &intervals, options)
}

/// Averages per system, for plots.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSummary {
    pub model: String,
    pub method: String,
    pub judge: String,
    pub safety: f64,
    pub behavioral: f64,
    pub sar: f64,
    pub sar_by_scenario: BTreeMap<String, f64>,
    pub completion_tokens: Option<f64>,
}

fn average_tokens(system: &System<'_>) -> Option<f64> {
    let tokens: Vec<f64> = system
        .by_scenario
        .values()
        .flat_map(|run| run.items.iter().filter_map(|i| i.completion_tokens.map(|t| t as f64)))
        .collect();
    mean(&tokens)
}

fn systems_summary(systems: &[System<'_>], _options: &ReportOptions) -> Vec<SystemSummary> {
    systems
        .iter()
        .filter_map(|system| {
            let average = |metric| {
                mean(
                    &groups(system, metric, None)
                        .iter()
                        .filter_map(|g| mean(g))
                        .collect::<Vec<_>>(),
                )
            };
            Some(SystemSummary {
                model: system.model.to_string(),
                method: system.method.to_string(),
                judge: system.judge.to_string(),
                safety: average(Metric::Safety)?,
                behavioral: average(Metric::Behavioral)?,
                sar: average(Metric::Sar)?,
                sar_by_scenario: system
                    .by_scenario
                    .iter()
                    .filter_map(|(scenario, run)| {
                        let values: Vec<f64> = run.items.iter().map(|i| i.score.sar).collect();
                        mean(&values).map(|m| (scenario.to_string(), m))
                    })
                    .collect(),
                completion_tokens: average_tokens(system),
            })
        })
        .collect()
}

fn leaderboard(systems: &[System<'_>], intervals: &[SystemIntervals<'_>], options: &ReportOptions) -> Table {
    let scenarios: BTreeSet<&str> = systems.iter().flat_map(|s| s.by_scenario.keys().copied()).collect();
    let grouped = !options.families.is_empty();
    let mut columns: Vec<String> = Vec::new();
    if grouped {
        columns.push("family".into());
    }
    columns.extend(
        ["model", "method", "judge", "scenarios", "safety", "behavioral", "SAR"]
            .iter()
            .map(|c| c.to_string()),
    );
    columns.extend(scenarios.iter().map(|s| format!("SAR {s}")));
    // Families in the order the paper lists them, then any other, then models with none.
    let family_rank = |family: Option<&String>| match family.map(String::as_str) {
        Some("instruct") => (0, String::new()),
        Some("reasoning") => (1, String::new()),
        Some(other) => (2, other.to_string()),
        None => (3, String::new()),
    };
    let mut rows: Vec<((u8, String), f64, Vec<Cell>)> = Vec::with_capacity(systems.len());
    for (system, intervals) in systems.iter().zip(intervals) {
        let [safety, behavioral, sar] = intervals.overall;
        let family = options.families.get(system.model);
        let mut row = Vec::new();
        if grouped {
            row.push(family.map_or(Cell::Empty, |f| Cell::text(f.as_str())));
        }
        row.extend([
            Cell::text(system.model),
            Cell::text(system.method),
            Cell::text(system.judge),
            Cell::Count(system.by_scenario.len() as u64),
            interval_cell(safety),
            interval_cell(behavioral),
            interval_cell(sar),
        ]);
        for scenario in &scenarios {
            row.push(Cell::maybe(system.by_scenario.get(scenario).and_then(|run| {
                mean(&run.items.iter().map(|i| i.score.sar).collect::<Vec<_>>())
            })));
        }
        let rank = if grouped {
            family_rank(family)
        } else {
            (0, String::new())
        };
        rows.push((rank, sar.map(|s| s.estimate).unwrap_or(f64::NEG_INFINITY), row));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let families = if grouped {
        " Models are grouped by family (instruct, then reasoning), as in the paper's Table 1, from the sections of \
         the model file."
    } else {
        ""
    };
    Table {
        name: "leaderboard".into(),
        title: "Leaderboard".into(),
        columns,
        rows: rows.into_iter().map(|(_, _, row)| row).collect(),
        note: format!(
            "Scores are means over scenarios of each scenario's item mean (every scenario weighs the same). \
             Intervals: {:.0} % percentile bootstrap, {} resamples of items within each scenario, seed {}.{families}",
            options.level * 100.0,
            options.resamples,
            options.seed
        ),
    }
}

fn per_scenario(systems: &[System<'_>], intervals: &[SystemIntervals<'_>]) -> Table {
    let mut rows = Vec::new();
    for (system, intervals) in systems.iter().zip(intervals) {
        for &(scenario, items, metrics) in &intervals.by_scenario {
            let mut row = vec![
                Cell::text(system.model),
                Cell::text(system.method),
                Cell::text(system.judge),
                Cell::text(scenario),
                Cell::Count(items as u64),
            ];
            row.extend(metrics.into_iter().map(interval_cell));
            rows.push(row);
        }
    }
    Table {
        name: "scenarios".into(),
        title: "Per scenario".into(),
        columns: [
            "model",
            "method",
            "judge",
            "scenario",
            "items",
            "safety",
            "behavioral",
            "SAR",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows,
        note: "Item means of each scenario, with bootstrap intervals as in the leaderboard.".into(),
    }
}

fn split(systems: &[System<'_>], options: &ReportOptions) -> Table {
    let rows = map_in_order(systems, |system| {
        let mut row = vec![
            Cell::text(system.model),
            Cell::text(system.method),
            Cell::text(system.judge),
        ];
        for label in [Label::Unsafe, Label::Safe] {
            for metric in [Metric::Safety, Metric::Behavioral, Metric::Sar] {
                let name = format!("{label:?}{metric:?}");
                row.push(interval_cell(scenario_average(
                    &groups(system, metric, Some(label)),
                    options,
                    salt(&[system.model, system.method, system.judge, &name]),
                )));
            }
        }
        row
    });
    Table {
        name: "split".into(),
        title: "Unsafe and safe prompts".into(),
        columns: [
            "model",
            "method",
            "judge",
            "unsafe safety",
            "unsafe behavioral",
            "unsafe SAR",
            "safe safety",
            "safe behavioral",
            "safe SAR",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows,
        note: "Means over scenarios, as in the leaderboard, over the items of each label.".into(),
    }
}

/// Item SAR by (scenario, prompt) for pairing.
fn sar_by_item<'a>(system: &System<'a>) -> HashMap<(&'a str, &'a str), f64> {
    system
        .by_scenario
        .iter()
        .flat_map(|(scenario, run)| {
            run.items
                .iter()
                .map(move |i| ((*scenario, i.key.as_str()), i.score.sar))
        })
        .collect()
}

fn method_table(systems: &[System<'_>], options: &ReportOptions) -> Table {
    let mut by_model: BTreeMap<(&str, &str), Vec<&System<'_>>> = BTreeMap::new();
    for system in systems {
        by_model.entry((system.model, system.judge)).or_default().push(system);
    }
    let by_model: Vec<_> = by_model.into_iter().collect();
    let per_model = map_in_order(&by_model, |&((model, judge), ref methods)| {
        let mut rows = Vec::new();
        let baseline = methods.iter().find(|s| s.method == options.baseline);
        let baseline_items = baseline.map(|b| sar_by_item(b));
        for system in methods {
            let sar = mean(
                &groups(system, Metric::Sar, None)
                    .iter()
                    .filter_map(|g| mean(g))
                    .collect::<Vec<_>>(),
            );
            let safety = mean(
                &groups(system, Metric::Safety, None)
                    .iter()
                    .filter_map(|g| mean(g))
                    .collect::<Vec<_>>(),
            );
            let behavioral = mean(
                &groups(system, Metric::Behavioral, None)
                    .iter()
                    .filter_map(|g| mean(g))
                    .collect::<Vec<_>>(),
            );
            let (difference, p_value, paired) = match (&baseline_items, system.method == options.baseline) {
                (Some(base), false) => {
                    let mine = sar_by_item(system);
                    let mut keys: Vec<_> = mine.keys().filter(|k| base.contains_key(*k)).copied().collect();
                    keys.sort();
                    let a: Vec<f64> = keys.iter().filter_map(|k| base.get(k).copied()).collect();
                    let b: Vec<f64> = keys.iter().filter_map(|k| mine.get(k).copied()).collect();
                    match stats::paired_comparison(
                        &a,
                        &b,
                        options.resamples,
                        options.permutations,
                        options.level,
                        options.seed ^ salt(&[model, judge, system.method]),
                    ) {
                        Some(comparison) => (
                            Cell::Interval(comparison.difference),
                            Cell::Number(comparison.p_value),
                            Cell::Count(comparison.items as u64),
                        ),
                        None => (Cell::Empty, Cell::Empty, Cell::Count(0)),
                    }
                }
                _ => (Cell::Empty, Cell::Empty, Cell::Empty),
            };
            let generation: Option<u64> = system
                .by_scenario
                .values()
                .map(|run| run.generation_cost.map(|u| u.total_tokens))
                .sum();
            let judging: Option<u64> = system
                .by_scenario
                .values()
                .map(|run| run.judge_cost.map(|u| u.total_tokens))
                .sum();
            rows.push(vec![
                Cell::text(model),
                Cell::text(judge),
                Cell::text(system.method),
                Cell::maybe(safety),
                Cell::maybe(behavioral),
                Cell::maybe(sar),
                difference,
                p_value,
                paired,
                Cell::maybe(average_tokens(system)),
                generation.map(Cell::Count).unwrap_or(Cell::Empty),
                judging.map(Cell::Count).unwrap_or(Cell::Empty),
            ]);
        }
        rows
    });
    let rows: Vec<Vec<Cell>> = per_model.into_iter().flatten().collect();
    Table {
        name: "methods".into(),
        title: format!("Methods against {}", options.baseline),
        columns: [
            "model",
            "judge",
            "method",
            "safety",
            "behavioral",
            "SAR",
            "ΔSAR",
            "p",
            "paired items",
            "completion tokens/item",
            "generation tokens",
            "judge tokens",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows,
        note: format!(
            "ΔSAR: mean per-item SAR difference to {} on the items both judged, with a {:.0} % paired bootstrap \
             interval ({} resamples); p: two-sided paired sign-flip permutation test ({} permutations). \
             Tokens/item: the stored responses' completion tokens (upstream's usage). Generation and judge \
             tokens: every call's prompt and completion tokens, from the manifests.",
            options.baseline,
            options.level * 100.0,
            options.resamples,
            options.permutations
        ),
    }
}

/// Paired items of two systems: their SAR on the (scenario, prompt) both have.
fn paired_sar(a: &System<'_>, b: &System<'_>) -> (Vec<f64>, Vec<f64>) {
    let (first, second) = (sar_by_item(a), sar_by_item(b));
    let mut keys: Vec<_> = first.keys().filter(|k| second.contains_key(*k)).copied().collect();
    keys.sort();
    (
        keys.iter().filter_map(|k| first.get(k).copied()).collect(),
        keys.iter().filter_map(|k| second.get(k).copied()).collect(),
    )
}

fn overall_sar(system: &System<'_>) -> Option<f64> {
    mean(
        &groups(system, Metric::Sar, None)
            .iter()
            .filter_map(|g| mean(g))
            .collect::<Vec<_>>(),
    )
}

fn model_comparisons(systems: &[System<'_>], options: &ReportOptions) -> Table {
    let mut by_setting: BTreeMap<(&str, &str), Vec<&System<'_>>> = BTreeMap::new();
    for system in systems {
        by_setting
            .entry((system.method, system.judge))
            .or_default()
            .push(system);
    }
    // Every pair first, then their tests on every core: each has its own seeded stream, so
    // the rows are the same as one at a time.
    let mut pairs: Vec<(&str, &str, &System<'_>, &System<'_>)> = Vec::new();
    for ((method, judge), models) in by_setting {
        // Best first; each model's SAR computed once, not at every comparison.
        let mut ranked: Vec<(f64, &System<'_>)> = models
            .into_iter()
            .map(|system| (overall_sar(system).unwrap_or(f64::NEG_INFINITY), system))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let models: Vec<&System<'_>> = ranked.into_iter().map(|(_, system)| system).collect();
        match &options.compare {
            Some((first, second)) => {
                let find = |name: &str| models.iter().copied().find(|s| s.model == name);
                pairs.extend(find(first).zip(find(second)).map(|(a, b)| (method, judge, a, b)));
            }
            None => pairs.extend(models.windows(2).map(|pair| (method, judge, pair[0], pair[1]))),
        }
    }
    let rows = map_in_order(&pairs, |&(method, judge, a, b)| {
        let (sar_a, sar_b) = paired_sar(a, b);
        // b − a: how much the second model trails (negative) or leads the first.
        let comparison = stats::paired_comparison(
            &sar_a,
            &sar_b,
            options.resamples,
            options.permutations,
            options.level,
            options.seed ^ salt(&[a.model, b.model, method, judge]),
        );
        vec![
            Cell::text(method),
            Cell::text(judge),
            Cell::text(a.model),
            Cell::text(b.model),
            Cell::maybe(mean(&sar_a)),
            Cell::maybe(mean(&sar_b)),
            comparison.map(|c| Cell::Interval(c.difference)).unwrap_or(Cell::Empty),
            comparison.map(|c| Cell::Number(c.p_value)).unwrap_or(Cell::Empty),
            Cell::Count(sar_a.len() as u64),
        ]
    });
    Table {
        name: "model_comparisons".into(),
        title: "Models compared on the same items".into(),
        columns: [
            "method",
            "judge",
            "model A",
            "model B",
            "SAR A",
            "SAR B",
            "SAR B − A",
            "p",
            "paired items",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows,
        note: format!(
            "Pairs: {}. SAR A and B are means over the paired items only. Interval: {:.0} % paired bootstrap; p: \
             two-sided paired sign-flip permutation test.",
            match &options.compare {
                Some((a, b)) => format!("{a} against {b}"),
                None => "each model against the next one down the leaderboard".into(),
            },
            options.level * 100.0
        ),
    }
}

/// A rule of a scenario: kind and position.
type RuleId<'a> = (&'a str, &'static str, usize);

fn rule_text(options: &ReportOptions, scenario: &str, kind: &str, position: usize) -> Cell {
    options
        .rules
        .get(scenario)
        .and_then(|(safety, behavioral)| match kind {
            "safety" => safety.get(position),
            _ => behavioral.get(position),
        })
        .map(|text| Cell::text(text.clone()))
        .unwrap_or(Cell::Empty)
}

fn per_rule(runs: &[StoredRun], options: &ReportOptions) -> Table {
    let mut rows: Vec<(f64, Vec<Cell>)> = Vec::new();
    for run in runs {
        let mut counts: BTreeMap<(&'static str, usize), [u64; 3]> = BTreeMap::new();
        for item in &run.items {
            for (kind, verdicts) in [
                ("safety", &item.verdicts.safety),
                ("behavioral", &item.verdicts.behavioral),
            ] {
                for (position, verdict) in verdicts.iter().enumerate() {
                    let slot = match verdict {
                        Verdict::No => 0,
                        Verdict::Yes => 1,
                        Verdict::Na => 2,
                    };
                    counts.entry((kind, position)).or_insert([0; 3])[slot] += 1;
                }
            }
        }
        for ((kind, position), [no, yes, na]) in counts {
            let total = (no + yes + na) as f64;
            let share = |n: u64| n as f64 / total;
            rows.push((
                share(no),
                vec![
                    Cell::text(&run.model),
                    Cell::text(&run.method),
                    Cell::text(&run.judge),
                    Cell::text(&run.scenario),
                    Cell::text(kind),
                    Cell::Count(position as u64 + 1),
                    rule_text(options, &run.scenario, kind, position),
                    Cell::Number(share(no)),
                    Cell::Number(share(yes)),
                    Cell::Number(share(na)),
                    Cell::Count(no + yes + na),
                ],
            ));
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    Table {
        name: "rules".into(),
        title: "Rules, most often broken first".into(),
        columns: [
            "model",
            "method",
            "judge",
            "scenario",
            "kind",
            "rule",
            "text",
            "violated (NO)",
            "met (YES)",
            "not applicable",
            "items",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows: rows.into_iter().map(|(_, row)| row).collect(),
        note: "Shares of the judged items whose verdict on the rule was NO, YES or NA. A safety NO is a violation; \
               a behavioral NO is a requirement not met."
            .into(),
    }
}

/// The judge verdicts of each (model, method, scenario, prompt) one judge judged.
fn verdicts_by_item(runs: &[StoredRun], judge: &str) -> HashMap<(String, String, String, String), ItemResult> {
    runs.iter()
        .filter(|run| run.judge == judge)
        .flat_map(|run| {
            run.items.iter().map(|item| {
                (
                    (
                        run.model.clone(),
                        run.method.clone(),
                        run.scenario.clone(),
                        item.key.clone(),
                    ),
                    item.clone(),
                )
            })
        })
        .collect()
}

fn judge_agreement(systems: &[System<'_>], runs: &[StoredRun]) -> Vec<Table> {
    let judges: BTreeSet<&str> = runs.iter().map(|r| r.judge.as_str()).collect();
    let judges: Vec<&str> = judges.into_iter().collect();
    let mut summary_rows = Vec::new();
    let mut rule_rows = Vec::new();
    for (i, first) in judges.iter().enumerate() {
        for second in &judges[i + 1..] {
            let a = verdicts_by_item(runs, first);
            let b = verdicts_by_item(runs, second);
            let mut shared: Vec<_> = a.keys().filter(|k| b.contains_key(*k)).cloned().collect();
            if shared.is_empty() {
                continue;
            }
            shared.sort();
            let mut same_safety = 0usize;
            let mut rule_labels = 0usize;
            let mut rule_differ = 0usize;
            let mut per_rule: BTreeMap<RuleId<'_>, (Vec<Verdict>, Vec<Verdict>)> = BTreeMap::new();
            for key in &shared {
                let (Some(x), Some(y)) = (a.get(key), b.get(key)) else {
                    continue;
                };
                same_safety += usize::from(x.score.safety == y.score.safety);
                for (kind, xs, ys) in [
                    ("safety", &x.verdicts.safety, &y.verdicts.safety),
                    ("behavioral", &x.verdicts.behavioral, &y.verdicts.behavioral),
                ] {
                    for (position, (u, v)) in xs.iter().zip(ys.iter()).enumerate() {
                        rule_labels += 1;
                        rule_differ += usize::from(u != v);
                        let entry = per_rule.entry((key.2.as_str(), kind, position)).or_default();
                        entry.0.push(*u);
                        entry.1.push(*v);
                    }
                }
            }
            let mut kappas = Vec::new();
            for ((scenario, kind, position), (u, v)) in &per_rule {
                let kappa = stats::cohen_kappa(u, v);
                if let Some(k) = kappa {
                    kappas.push(k);
                }
                rule_rows.push(vec![
                    Cell::text(*first),
                    Cell::text(*second),
                    Cell::text(*scenario),
                    Cell::text(*kind),
                    Cell::Count(*position as u64 + 1),
                    Cell::maybe(kappa),
                    Cell::Number(u.iter().zip(v).filter(|(p, q)| p == q).count() as f64 / u.len() as f64),
                    Cell::Count(u.len() as u64),
                ]);
            }
            // Model rankings: each (model, method) system's SAR under either judge.
            let ranking = |judge: &str| -> BTreeMap<(&str, &str), f64> {
                systems
                    .iter()
                    .filter(|s| s.judge == judge)
                    .filter_map(|s| {
                        let means: Vec<f64> = groups(s, Metric::Sar, None).iter().filter_map(|g| mean(g)).collect();
                        mean(&means).map(|m| ((s.model, s.method), m))
                    })
                    .collect()
            };
            let (ra, rb) = (ranking(first), ranking(second));
            let common: Vec<_> = ra.keys().filter(|k| rb.contains_key(*k)).collect();
            let xa: Vec<f64> = common.iter().filter_map(|k| ra.get(*k).copied()).collect();
            let xb: Vec<f64> = common.iter().filter_map(|k| rb.get(*k).copied()).collect();
            summary_rows.push(vec![
                Cell::text(*first),
                Cell::text(*second),
                Cell::Count(shared.len() as u64),
                Cell::Number(same_safety as f64 / shared.len() as f64),
                Cell::Number(if rule_labels == 0 {
                    0.0
                } else {
                    rule_differ as f64 / rule_labels as f64
                }),
                Cell::maybe(mean(&kappas)),
                Cell::Count(common.len() as u64),
                Cell::maybe(stats::spearman(&xa, &xb)),
                Cell::maybe(stats::kendall_tau_b(&xa, &xb)),
                Cell::maybe(stats::top_k_overlap(&xa, &xb, 5)),
                Cell::maybe(stats::top_k_overlap(&xa, &xb, 10)),
            ]);
        }
    }
    if summary_rows.is_empty() {
        return Vec::new();
    }
    vec![
        Table {
            name: "judge_agreement".into(),
            title: "Judge agreement".into(),
            columns: [
                "judge A",
                "judge B",
                "items",
                "same safety verdict",
                "rule verdicts differing",
                "mean κ over rules",
                "systems ranked",
                "Spearman ρ",
                "Kendall τ",
                "top-5 overlap",
                "top-10 overlap",
            ]
            .iter()
            .map(|c| c.to_string())
            .collect(),
            rows: summary_rows,
            note: "On the responses both judges judged. Rankings: (model, method) systems by SAR under each judge."
                .into(),
        },
        Table {
            name: "judge_agreement_rules".into(),
            title: "Judge agreement per rule".into(),
            columns: [
                "judge A",
                "judge B",
                "scenario",
                "kind",
                "rule",
                "Cohen's κ",
                "agreement",
                "items",
            ]
            .iter()
            .map(|c| c.to_string())
            .collect(),
            rows: rule_rows,
            note: "Cohen's κ over the three verdicts (YES, NO, NA) of one rule.".into(),
        },
    ]
}

fn cost(systems: &[System<'_>], options: &ReportOptions) -> Table {
    let mut rows = Vec::new();
    for system in systems {
        let mut generation = specbench::backend::Usage::default();
        let mut judging = specbench::backend::Usage::default();
        // Priced run by run: one scenario's calls may have been batched and another's not.
        let mut generation_money = Some(0.0);
        let mut judge_money = Some(0.0);
        let add = |total: &mut Option<f64>, part: Option<f64>| {
            *total = total.zip(part).map(|(t, p)| t + p);
        };
        for run in system.by_scenario.values() {
            if let Some(usage) = &run.generation_cost {
                generation += usage;
                add(
                    &mut generation_money,
                    options.prices.money_sent(system.model, usage, run.generation_batched),
                );
            }
            if let Some(usage) = &run.judge_cost {
                judging += usage;
                add(
                    &mut judge_money,
                    options.prices.money_sent(system.judge, usage, run.judge_batched),
                );
            }
        }
        let priced = |key: &str, money: Option<f64>| money.filter(|_| options.prices.of(key).is_some());
        let generation_money = priced(system.model, generation_money);
        let judge_money = priced(system.judge, judge_money);
        rows.push(vec![
            Cell::text(system.model),
            Cell::text(system.method),
            Cell::text(system.judge),
            Cell::Count(generation.prompt_tokens),
            Cell::Count(generation.completion_tokens),
            Cell::Count(judging.prompt_tokens),
            Cell::Count(judging.completion_tokens),
            Cell::maybe(generation_money),
            Cell::maybe(judge_money),
            Cell::maybe(match (generation_money, judge_money) {
                (Some(g), Some(j)) => Some(g + j),
                _ => None,
            }),
        ]);
    }
    Table {
        name: "cost".into(),
        title: "Cost".into(),
        columns: [
            "model",
            "method",
            "judge",
            "generation prompt tokens",
            "generation completion tokens",
            "judge prompt tokens",
            "judge completion tokens",
            "generation cost",
            "judge cost",
            "total cost",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows,
        note: "Tokens of every call, from the manifests (runs written by other tools have none). Money from --prices \
               (per million tokens, by model key); empty where no price is given."
            .into(),
    }
}
