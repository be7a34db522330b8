//! A study's repeats: the same cells run k times with distinct sampling seeds. Generation in
//! the paper samples at temperature 0.7, so one run's SAR carries sampling noise besides the
//! noise of which items were drawn; this table shows both.

use std::collections::{BTreeMap, HashMap};

use crate::stats::Interval;
use crate::{Cell, ReportOptions, StoredRun, Table, interval_cell, mean, salt, scenario_average};

/// Student's t quantile of 0.975 with `df` degrees of freedom (two-sided 95 %): exact to three
/// decimals up to 30, then the Cornish-Fisher expansion (error under 0.001 from there on).
pub fn t_975(df: usize) -> Option<f64> {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => None,
        1..=30 => Some(TABLE[df - 1]),
        _ => {
            let z: f64 = 1.959_964;
            let n = df as f64;
            Some(z + (z.powi(3) + z) / (4.0 * n) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n))
        }
    }
}

/// The mean of `values` with its t interval (the spread between them, not within them).
pub fn between_interval(values: &[f64], level: f64) -> Option<Interval> {
    let k = values.len();
    let estimate = mean(values)?;
    if k < 2 || (level - 0.95).abs() > 1e-9 {
        return None;
    }
    let variance = values.iter().map(|v| (v - estimate).powi(2)).sum::<f64>() / (k - 1) as f64;
    let half = t_975(k - 1)? * (variance / k as f64).sqrt();
    Some(Interval {
        estimate,
        low: estimate - half,
        high: estimate + half,
    })
}

/// SAR averaged over scenarios (each scenario's item mean), as the leaderboard computes it.
fn overall_sar(by_scenario: &BTreeMap<&str, &StoredRun>) -> Option<f64> {
    let means: Vec<f64> = by_scenario
        .values()
        .filter_map(|run| mean(&run.items.iter().map(|item| item.score.sar).collect::<Vec<_>>()))
        .collect();
    mean(&means)
}

/// One row per model × method × judge found in every repeat: SAR per repeat, their mean with
/// the item-bootstrap interval (items resampled within each scenario, each item's SAR averaged
/// over the repeats first) and the between-repeat t interval. `repeats` are each repeat's name
/// and runs, in order.
pub fn repeats_table(repeats: &[(String, Vec<StoredRun>)], options: &ReportOptions) -> Table {
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut systems: BTreeMap<Key<'_>, Vec<BTreeMap<&str, &StoredRun>>> = BTreeMap::new();
    for (r, (_, runs)) in repeats.iter().enumerate() {
        for run in runs {
            let by_repeat = systems
                .entry((run.model.as_str(), run.method.as_str(), run.judge.as_str()))
                .or_insert_with(|| vec![BTreeMap::new(); repeats.len()]);
            by_repeat[r].insert(run.scenario.as_str(), run);
        }
    }
    let mut rows: Vec<(f64, Vec<Cell>)> = Vec::new();
    for ((model, method, judge), by_repeat) in &systems {
        if by_repeat.iter().any(BTreeMap::is_empty) {
            continue;
        }
        let per_repeat: Vec<f64> = by_repeat.iter().filter_map(overall_sar).collect();
        // Each item's SAR averaged over the repeats that judged it in every repeat, per scenario.
        let mut groups = Vec::new();
        for scenario in by_repeat[0].keys() {
            let mut sums: HashMap<&str, (f64, usize)> = HashMap::new();
            for runs in by_repeat {
                if let Some(run) = runs.get(scenario) {
                    for item in &run.items {
                        let entry = sums.entry(item.key.as_str()).or_default();
                        entry.0 += item.score.sar;
                        entry.1 += 1;
                    }
                }
            }
            let mut averaged: Vec<(&str, f64)> = sums
                .into_iter()
                .filter(|(_, (_, count))| *count == by_repeat.len())
                .map(|(key, (sum, count))| (key, sum / count as f64))
                .collect();
            averaged.sort_by(|a, b| a.0.cmp(b.0));
            if !averaged.is_empty() {
                groups.push(averaged.into_iter().map(|(_, sar)| sar).collect::<Vec<f64>>());
            }
        }
        let items = scenario_average(&groups, options, salt(&[model, method, judge, "repeats"]));
        let between = between_interval(&per_repeat, options.level);
        let spread = per_repeat
            .iter()
            .map(|sar| format!("{sar:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push((
            items.map_or(f64::NEG_INFINITY, |i| i.estimate),
            vec![
                Cell::text(*model),
                Cell::text(*method),
                Cell::text(*judge),
                Cell::Count(per_repeat.len() as u64),
                interval_cell(items),
                interval_cell(between),
                Cell::text(spread),
            ],
        ));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let names: Vec<&str> = repeats.iter().map(|(name, _)| name.as_str()).collect();
    Table {
        name: "repeats".into(),
        title: "Repeats: SAR over sampling seeds".into(),
        columns: [
            "model",
            "method",
            "judge",
            "repeats",
            "SAR (item interval)",
            "SAR (between-repeat interval)",
            "SAR per repeat",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows: rows.into_iter().map(|(_, row)| row).collect(),
        note: format!(
            "Each repeat ({}) is the same study with its own sampling seed. SAR is the mean over repeats of the \
             scenario-averaged SAR. Item interval: {:.0} % percentile bootstrap of items within each scenario, each \
             item's SAR first averaged over the repeats ({} resamples, seed {}). Between-repeat interval: Student's t \
             over the repeats' SAR (sampling noise, which one run cannot show).",
            names.join(", "),
            options.level * 100.0,
            options.resamples,
            options.seed
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_table_and_approach_the_normal() {
        assert_eq!(t_975(0), None);
        assert_eq!(t_975(2), Some(4.303));
        // The expansion continues the table smoothly: 2.021 at 40, 2.000 at 60, 1.980 at 120.
        for (df, expected) in [(40, 2.021), (60, 2.000), (120, 1.980)] {
            let t = t_975(df).unwrap_or(0.0);
            assert!((t - expected).abs() < 0.001, "df {df}: {t}");
        }
    }

    #[test]
    fn the_between_repeat_interval_is_a_t_interval_of_the_repeats() {
        // Mean 0.5, sample sd 0.1, k 3: half width 4.303 × 0.1 / √3.
        let interval = between_interval(&[0.4, 0.5, 0.6], 0.95);
        let expected = 4.303 * 0.1 / 3f64.sqrt();
        assert!(
            interval.is_some_and(|i| (i.estimate - 0.5).abs() < 1e-12 && (i.high - 0.5 - expected).abs() < 1e-9),
            "{interval:?}"
        );
        assert_eq!(between_interval(&[0.4], 0.95), None, "one repeat has no spread");
    }
}
