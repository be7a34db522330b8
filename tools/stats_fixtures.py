#!/usr/bin/env python3
"""Make the test fixture for `crates/specbench/src/report/stats.rs` from numpy and scipy.

The Rust statistics helpers are meant to give the numbers a reader would get from the
usual Python tools, so this script records those numbers for fixed inputs:

* `percentile`: `numpy.percentile(values, q)` (default "linear" method) for several q.
* `correlations`: `scipy.stats.spearmanr` (average ranks for ties) and
  `scipy.stats.kendalltau` (default variant "b") on input pairs that all hold ties,
  plus `scipy.stats.rankdata` (method "average") of each side.
* `kappa`: Cohen's kappa from its definition with numpy,
  (p_o - p_e) / (1 - p_e), where p_o is the share of items with equal labels and p_e
  the sum over labels of the product of the two raters' label shares. scikit-learn is
  not used, so the script needs only numpy and scipy.

The bootstrap and permutation functions are not here: their random streams come from
Rust's `rand`, which numpy cannot reproduce, so they are tested by their properties.

The inputs are written in this file and copied into the JSON with the expected values,
so the Rust tests read both from the fixture.

Made with numpy 2.4.6 and scipy 1.17.1 (Python 3.11). Run from the repository root:

    python3 -m pip install numpy scipy
    python3 tools/stats_fixtures.py
"""

import json
from pathlib import Path

import numpy as np
import scipy
from scipy import stats

OUT = Path("crates/specbench-report/tests/fixtures/stats/expected.json")

PERCENTILE_VALUES = [0.9, -1.5, 3.25, 0.0, 7.0, 2.5, 2.5, 10.125, -4.0, 1.0 / 3.0, 6.2]
PERCENTILE_QS = [0.0, 2.5, 10.0, 25.0, 33.3, 50.0, 66.6, 75.0, 97.5, 100.0]

# Every pair holds ties in at least one side; the last ones in both.
CORRELATION_PAIRS = [
    {
        "name": "ties_in_both_small_integers",
        "a": [1, 2, 2, 3, 4, 4, 4, 5],
        "b": [2, 1, 3, 3, 5, 4, 4, 6],
    },
    {
        "name": "graded_scores",
        "a": [0.5, 0.5, 1.0, 0.0, 0.25, 1.0, 0.75, 0.5, 0.0, 1.0],
        "b": [0.4, 0.6, 1.0, 0.1, 0.25, 0.9, 0.75, 0.5, 0.1, 1.0],
    },
    {
        "name": "weak_positive_with_ties",
        "a": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5],
        "b": [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4],
    },
    {
        "name": "binary_against_continuous",
        "a": [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1],
        "b": [0.12, 0.80, 0.65, 0.30, 0.99, 0.05, 0.45, 0.70, 0.51, 0.88, 0.20, 0.33],
    },
    {
        "name": "negative_with_ties",
        "a": [1, 2, 3, 3, 4, 5, 6, 6],
        "b": [9, 8, 8, 6, 5, 5, 3, 1],
    },
    {
        "name": "system_scores_many_ties",
        "a": [0.62, 0.58, 0.62, 0.71, 0.58, 0.49, 0.71, 0.62, 0.55, 0.49],
        "b": [0.60, 0.60, 0.64, 0.70, 0.52, 0.52, 0.70, 0.60, 0.60, 0.41],
    },
]

KAPPA_PAIRS = [
    {
        "name": "three_verdicts",
        "a": ["yes", "no", "na", "yes", "yes", "no", "no", "yes", "na", "yes", "no", "yes"],
        "b": ["yes", "no", "yes", "yes", "no", "no", "na", "yes", "na", "yes", "yes", "yes"],
    },
    {
        # A label ("c") only one rater uses.
        "name": "unbalanced_with_one_sided_label",
        "a": ["a", "a", "a", "a", "a", "a", "b", "b", "a", "a"],
        "b": ["a", "a", "b", "a", "a", "c", "b", "a", "a", "a"],
    },
]


def kappa(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    labels = np.union1d(a, b)
    p_o = np.mean(a == b)
    p_e = sum(np.mean(a == label) * np.mean(b == label) for label in labels)
    return float((p_o - p_e) / (1.0 - p_e))


def main():
    values = np.asarray(PERCENTILE_VALUES, dtype=np.float64)
    percentile = {
        "values": PERCENTILE_VALUES,
        "cases": [{"q": q, "expected": float(np.percentile(values, q))} for q in PERCENTILE_QS],
    }

    correlations = []
    for pair in CORRELATION_PAIRS:
        a = np.asarray(pair["a"], dtype=np.float64)
        b = np.asarray(pair["b"], dtype=np.float64)
        correlations.append(
            {
                "name": pair["name"],
                "a": a.tolist(),
                "b": b.tolist(),
                "ranks_a": stats.rankdata(a).tolist(),
                "ranks_b": stats.rankdata(b).tolist(),
                "spearman": float(stats.spearmanr(a, b).statistic),
                "kendall_tau_b": float(stats.kendalltau(a, b).statistic),
            }
        )

    kappas = [{**pair, "kappa": kappa(pair["a"], pair["b"])} for pair in KAPPA_PAIRS]

    fixture = {
        "generator": "tools/stats_fixtures.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "percentile": percentile,
        "correlations": correlations,
        "kappa": kappas,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
