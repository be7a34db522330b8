//! Statistics for reports: bootstrap intervals, paired system comparisons, judge agreement
//! and rank correlation.
//!
//! Pure functions over slices: no I/O, no async. Degenerate input (empty, mismatched
//! lengths, non-finite values, a constant side where a correlation needs variation) gives
//! `None` rather than a panic or a NaN that would travel into a report unnoticed. The
//! deterministic functions give the numbers numpy and scipy give (checked against
//! `tests/fixtures/stats/expected.json`, made by `tools/stats_fixtures.py`); the random ones
//! draw from a seeded [`Draws`] (PCG-64 MCG, a fixed published algorithm), so a seed gives the
//! same numbers on every run, machine and version.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;

use rand_pcg::Pcg64Mcg;
use rand_pcg::rand_core::{Rng, SeedableRng};
use serde::Serialize;

/// The random stream of every resampling: item indices and sign flips.
///
/// A study's report draws about ten billion of them (a bootstrap of 2,000 resamples over every
/// item of 264 systems, and paired tests of 5,000 permutations), so each costs a nanosecond or
/// so: PCG-64 MCG, one 64-bit word giving two indices or 64 signs. It is a fixed algorithm
/// (rand's `StdRng` may change between releases), so a seed gives the same report anywhere.
pub struct Draws {
    rng: Pcg64Mcg,
    /// The unused upper half of the last word, for the next index.
    spare: Option<u32>,
}

impl Draws {
    pub fn new(seed: u64) -> Draws {
        Draws {
            rng: Pcg64Mcg::seed_from_u64(seed),
            spare: None,
        }
    }

    fn next_u32(&mut self) -> u32 {
        match self.spare.take() {
            Some(half) => half,
            None => {
                let word = self.rng.next_u64();
                self.spare = Some((word >> 32) as u32);
                word as u32
            }
        }
    }

    /// A uniform index below `n` (1 ≤ n ≤ 2³²), without bias: Lemire's multiply-and-reject.
    pub fn index(&mut self, n: usize) -> usize {
        let half = self.next_u32();
        self.index_of(half, n as u64)
    }

    /// Two indices below `n` from one word: the bootstrap's inner loop.
    pub fn two_indices(&mut self, n: usize) -> (usize, usize) {
        let word = self.rng.next_u64();
        let range = n as u64;
        let first = self.index_of(word as u32, range);
        (first, self.index_of((word >> 32) as u32, range))
    }

    #[inline]
    fn index_of(&mut self, half: u32, range: u64) -> usize {
        debug_assert!(range > 0 && range <= 1 << 32);
        let mut product = u64::from(half) * range;
        if (product as u32 as u64) < range {
            // The few low products that would favour some indices are drawn again.
            let threshold = (1u64 << 32).wrapping_sub(range) % range;
            while (product as u32 as u64) < threshold {
                product = u64::from(self.next_u32()) * range;
            }
        }
        (product >> 32) as usize
    }

    /// 64 fair coin flips, one per bit.
    pub fn signs(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// The mean of one resample with replacement of `values` (not empty).
pub(crate) fn resampled_mean(values: &[f64], draws: &mut Draws) -> f64 {
    let n = values.len();
    // Summed in draw order, as the estimate's mean is, so a resample of equal values is that
    // value exactly.
    let mut sum = 0.0;
    for _ in 0..n / 2 {
        let (first, second) = draws.two_indices(n);
        sum += values[first];
        sum += values[second];
    }
    if n % 2 == 1 {
        sum += values[draws.index(n)];
    }
    sum / n as f64
}

/// The sum of `values` with each sign flipped by a coin: a branch-free sign-bit toggle per
/// value, 64 values to a random word.
fn flipped_sum(values: &[f64], draws: &mut Draws) -> f64 {
    let mut sum = 0.0;
    for chunk in values.chunks(64) {
        let signs = draws.signs();
        for (bit, value) in chunk.iter().enumerate() {
            let flip = ((signs >> bit) & 1) << 63;
            sum += f64::from_bits(value.to_bits() ^ flip);
        }
    }
    sum
}

/// A point estimate with a 95 % (or other level) interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Two systems scored on the same items, compared on `b - a` per item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedComparison {
    /// Mean of `b - a` with its percentile bootstrap interval.
    pub difference: Interval,
    /// Two-sided p-value of the paired sign-flip permutation test.
    pub p_value: f64,
    /// Number of paired items.
    pub items: usize,
}

/// Percentile `q` (0 to 100, as numpy) of values sorted ascending, by numpy's default
/// "linear" method, so intervals read the same as ones computed with `numpy.percentile`.
///
/// NaN when `sorted` is empty or `q` is outside 0..=100 (numpy raises there); the caller
/// sorts, so the bootstrap sorts once for both ends of its interval.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    if !(0.0..=100.0).contains(&q) {
        return f64::NAN;
    }
    // numpy: virtual index (n - 1) * q / 100, between the values at its floor and the next.
    let index = q / 100.0 * last as f64;
    let below = index.floor();
    let t = index - below;
    let lo = below as usize;
    let (Some(&a), Some(&b)) = (sorted.get(lo), sorted.get((lo + 1).min(last))) else {
        return f64::NAN;
    };
    // numpy's `_lerp`: from the nearer end, which keeps the result exact at t = 1.
    let diff = b - a;
    if t >= 0.5 { b - diff * (1.0 - t) } else { a + diff * t }
}

/// Percentile bootstrap of the mean of `values`: `resamples` resamples of the items with
/// replacement from `Draws::new(seed)`, interval at `level` (e.g. 0.95) by
/// [`percentile`].
///
/// Items are the unit of resampling, so the interval reflects how much the score depends
/// on which items happen to be in the benchmark. `None` for no values, a non-finite value,
/// `resamples == 0` or `level` outside (0, 1).
pub fn bootstrap_mean(values: &[f64], resamples: usize, level: f64, seed: u64) -> Option<Interval> {
    bootstrap_mean_with(values, resamples, level, &mut Draws::new(seed))
}

/// [`bootstrap_mean`] drawing from a caller's RNG, so [`paired_comparison`] can continue
/// the same stream for its permutations.
fn bootstrap_mean_with(values: &[f64], resamples: usize, level: f64, draws: &mut Draws) -> Option<Interval> {
    if values.is_empty()
        || values.len() as u64 > 1 << 32
        || resamples == 0
        || !valid_level(level)
        || !all_finite(values)
    {
        return None;
    }
    let mut means: Vec<f64> = (0..resamples).map(|_| resampled_mean(values, draws)).collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0 * 100.0;
    Some(Interval {
        estimate: mean(values),
        low: percentile(&means, tail),
        high: percentile(&means, 100.0 - tail),
    })
}

/// Paired comparison of two systems on the same items: `b - a` per item.
///
/// Pairing removes the item-difficulty variance both systems share, which an unpaired
/// comparison of two intervals would count twice. The difference interval is
/// [`bootstrap_mean`] of the differences with the same `seed` (equal to it); the
/// permutation test then continues the same RNG stream, flipping the sign of each
/// difference at random `permutations` times, and
/// p = (1 + #{|flipped mean| >= |observed mean| - 1e-12}) / (1 + permutations):
/// the +1 counts the observed assignment, so p is never 0, and identical systems give
/// p = 1 (every flip ties). `None` for mismatched lengths, `permutations == 0` or any
/// input [`bootstrap_mean`] rejects.
pub fn paired_comparison(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    permutations: usize,
    level: f64,
    seed: u64,
) -> Option<PairedComparison> {
    if a.len() != b.len() || permutations == 0 {
        return None;
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let mut draws = Draws::new(seed);
    let difference = bootstrap_mean_with(&diffs, resamples, level, &mut draws)?;
    let n = diffs.len() as f64;
    let threshold = difference.estimate.abs() - 1e-12;
    let extreme = (0..permutations)
        .filter(|_| (flipped_sum(&diffs, &mut draws) / n).abs() >= threshold)
        .count();
    Some(PairedComparison {
        difference,
        p_value: (extreme as f64 + 1.0) / (permutations as f64 + 1.0),
        items: diffs.len(),
    })
}

/// Cohen's kappa between two raters (e.g. two judges' verdicts on the same items):
/// agreement corrected for what the raters' label frequencies give by chance.
///
/// `None` when the lengths differ or are 0. When chance agreement is 1 (both raters give
/// one and the same label to every item) kappa is 0/0; it is `Some(1.0)` then, since the
/// raters agree on every item. Counts stay integers until the final division, so the
/// result does not depend on the hash map's iteration order.
pub fn cohen_kappa<T: Eq + Hash>(a: &[T], b: &[T]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let mut counts: HashMap<&T, (u128, u128)> = HashMap::new();
    for x in a {
        counts.entry(x).or_default().0 += 1;
    }
    for y in b {
        counts.entry(y).or_default().1 += 1;
    }
    let n = a.len() as u128;
    let agree = a.iter().zip(b).filter(|(x, y)| x == y).count() as u128;
    // kappa = (p_o - p_e) / (1 - p_e), both terms multiplied by n²:
    // p_o n² = agree n, p_e n² = sum over labels of count_a · count_b.
    let chance: u128 = counts.values().map(|&(ca, cb)| ca * cb).sum();
    let total = n * n;
    if chance == total {
        return (agree == n).then_some(1.0);
    }
    let numerator = (agree * n) as f64 - chance as f64;
    Some(numerator / (total - chance) as f64)
}

/// Average ranks, 1-based, ties sharing the mean of the ranks they span (scipy's
/// `rankdata(method="average")`), the ranks Spearman's rho needs.
///
/// Meant for finite values; NaNs rank last, each on its own (they are unequal to
/// everything).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while let Some(&first) = order.get(start) {
        let tied = order[start..]
            .iter()
            .take_while(|&&i| values[i] == values[first])
            .count();
        let end = start + tied;
        // Sorted positions start..end hold ranks start + 1 ..= end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rho with average ranks for ties (equal to `scipy.stats.spearmanr`): do two
/// judges or metrics order the items the same way, whatever their scales.
///
/// `None` for mismatched lengths, fewer than 2 items, a non-finite value, or a side whose
/// values are all equal (the correlation is undefined; scipy gives NaN).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if !paired_finite(a, b) {
        return None;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Pearson correlation; `None` when either side has no variation.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&u, &v) in x.iter().zip(y) {
        let (du, dv) = (u - mx, v - my);
        sxy += du * dv;
        sxx += du * du;
        syy += dv * dv;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    // One square root of the product: exact ±1 for equal or reversed ranks (√(x²) = |x|).
    // Rounding can still step just past ±1 elsewhere; scipy clips too.
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// Kendall's tau-b (equal to `scipy.stats.kendalltau`, default variant "b"): the share of
/// item pairs both sides order the same way minus the share they order oppositely, with
/// the tie correction that suits scores with many ties such as pass rates.
///
/// Counts all pairs, O(n²): fine for benchmark-sized inputs. `None` for mismatched
/// lengths, fewer than 2 items, a non-finite value, or a side whose values are all equal.
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    if !paired_finite(a, b) {
        return None;
    }
    let (mut net, mut tied_a, mut tied_b) = (0_i64, 0_u64, 0_u64);
    for (i, (&ai, &bi)) in a.iter().zip(b).enumerate() {
        for (&aj, &bj) in a.iter().zip(b).skip(i + 1) {
            let (sa, sb) = (sign(aj - ai), sign(bj - bi));
            tied_a += u64::from(sa == 0);
            tied_b += u64::from(sb == 0);
            net += sa * sb;
        }
    }
    let n = a.len() as u64;
    let pairs = n * (n - 1) / 2;
    let (untied_a, untied_b) = (pairs - tied_a, pairs - tied_b);
    if untied_a == 0 || untied_b == 0 {
        return None;
    }
    // (concordant - discordant) / √((n0 - n1)(n0 - n2)); one square root, as in `pearson`,
    // so untied equal or reversed orders give exactly ±1 (scipy divides by each root).
    let denominator = (untied_a as f64 * untied_b as f64).sqrt();
    Some((net as f64 / denominator).clamp(-1.0, 1.0))
}

/// Share of the top-k items (by descending score, ties broken by index order) the two
/// rankings have in common: |top_k(a) ∩ top_k(b)| / k, with k clamped to the length.
///
/// Tells whether two scorings pick the same "best" items even when the rest of the order
/// differs. `None` for mismatched lengths, no items, `k == 0` or a non-finite value.
pub fn top_k_overlap(a: &[f64], b: &[f64], k: usize) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() || k == 0 || !all_finite(a) || !all_finite(b) {
        return None;
    }
    let k = k.min(a.len());
    let mut in_a = vec![false; a.len()];
    for i in top_k(a, k) {
        in_a[i] = true;
    }
    let shared = top_k(b, k).into_iter().filter(|&i| in_a[i]).count();
    Some(shared as f64 / k as f64)
}

/// Indices of the `k` highest finite values, ties in index order.
fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Finite values: `partial_cmp` is total here (and, unlike `total_cmp`, ties -0 with 0).
    order.sort_by(|&i, &j| {
        values[j]
            .partial_cmp(&values[i])
            .unwrap_or(Ordering::Equal)
            .then(i.cmp(&j))
    });
    order.truncate(k);
    order
}

fn sign(x: f64) -> i64 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// Equal lengths, at least 2 items, all finite: what a correlation needs.
fn paired_finite(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.len() >= 2 && all_finite(a) && all_finite(b)
}

/// An interval level strictly between 0 and 1 (NaN is not).
fn valid_level(level: f64) -> bool {
    level > 0.0 && level < 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde::Deserialize;

    const TOLERANCE: f64 = 1e-9;

    /// Inputs and numpy/scipy results written by `tools/stats_fixtures.py`.
    #[derive(Deserialize)]
    struct Fixture {
        percentile: PercentileFixture,
        correlations: Vec<CorrelationCase>,
        kappa: Vec<KappaCase>,
    }

    #[derive(Deserialize)]
    struct PercentileFixture {
        values: Vec<f64>,
        cases: Vec<PercentileCase>,
    }

    #[derive(Deserialize)]
    struct PercentileCase {
        q: f64,
        expected: f64,
    }

    #[derive(Deserialize)]
    struct CorrelationCase {
        name: String,
        a: Vec<f64>,
        b: Vec<f64>,
        ranks_a: Vec<f64>,
        ranks_b: Vec<f64>,
        spearman: f64,
        kendall_tau_b: f64,
    }

    #[derive(Deserialize)]
    struct KappaCase {
        name: String,
        a: Vec<String>,
        b: Vec<String>,
        kappa: f64,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(include_str!("../tests/fixtures/stats/expected.json"))
            .expect("the stats fixture is valid JSON of the expected shape")
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{what}: {actual} != {expected} (tolerance {tolerance})"
        );
    }

    fn has_ties(values: &[f64]) -> bool {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.windows(2).any(|w| w[0] == w[1])
    }

    /// Per-item scores in [0, 1] from a seeded RNG of the test's own.
    fn scores(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(0.0..1.0)).collect()
    }

    #[test]
    fn indices_are_uniform_and_in_range() {
        let mut draws = Draws::new(5);
        for n in [1usize, 2, 3, 7, 300, 1500] {
            assert!((0..10_000).all(|_| draws.index(n) < n), "n = {n}");
        }
        // Three buckets, 300,000 draws: each near 100,000 (σ ≈ 258, so 2,000 is ~8σ).
        let mut counts = [0usize; 3];
        for _ in 0..300_000 {
            counts[draws.index(3)] += 1;
        }
        assert!(counts.iter().all(|&c| c.abs_diff(100_000) < 2_000), "{counts:?}");
        // The widest range still reaches its top half.
        let top = 1usize << 32;
        assert!((0..1_000).any(|_| draws.index(top) >= top / 2));
        assert!((0..1_000).all(|_| Draws::new(1).index(1) == 0));
        let mut pairs = [0usize; 4];
        for _ in 0..100_000 {
            let (a, b) = draws.two_indices(2);
            pairs[a * 2 + b] += 1;
        }
        assert!(pairs.iter().all(|&c| c.abs_diff(25_000) < 1_000), "{pairs:?}");
    }

    #[test]
    fn sign_flips_are_fair_and_keep_magnitudes() {
        let mut draws = Draws::new(9);
        let values = vec![1.0; 1_000];
        let mut positive = 0usize;
        for _ in 0..200 {
            let sum = flipped_sum(&values, &mut draws);
            // A sum of ±1 over 1,000 values: even, within ±1,000.
            assert!(sum.abs() <= 1_000.0 && sum.rem_euclid(2.0) == 0.0, "{sum}");
            positive += usize::from(sum > 0.0);
        }
        assert!((60..140).contains(&positive), "{positive} of 200 sums positive");
        // Every value's magnitude is kept: flipping 0.5s sums to a multiple of 0.5 too.
        assert_eq!(flipped_sum(&[0.5; 3], &mut Draws::new(1)).abs() % 0.5, 0.0);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let fixture = fixture().percentile;
        let mut sorted = fixture.values.clone();
        sorted.sort_by(f64::total_cmp);
        assert!(fixture.cases.len() >= 3);
        for case in &fixture.cases {
            assert_close(
                percentile(&sorted, case.q),
                case.expected,
                TOLERANCE,
                &format!("q = {}", case.q),
            );
        }
    }

    #[test]
    fn percentile_edges() {
        assert!(percentile(&[], 50.0).is_nan());
        assert!(percentile(&[1.0, 2.0], -0.1).is_nan());
        assert!(percentile(&[1.0, 2.0], 100.1).is_nan());
        assert!(percentile(&[1.0, 2.0], f64::NAN).is_nan());
        assert_eq!(percentile(&[4.5], 0.0), 4.5);
        assert_eq!(percentile(&[4.5], 100.0), 4.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 100.0), 3.0);
        assert_eq!(percentile(&[1.0, 3.0], 50.0), 2.0);
    }

    #[test]
    fn correlations_match_scipy_on_tied_inputs() {
        let fixture = fixture();
        assert!(fixture.correlations.len() >= 3);
        for case in &fixture.correlations {
            // The fixture is meant to exercise the tie handling.
            assert!(has_ties(&case.a) || has_ties(&case.b), "{}: no ties", case.name);
            let rho = spearman(&case.a, &case.b).expect("defined on fixture inputs");
            assert_close(rho, case.spearman, TOLERANCE, &format!("{} spearman", case.name));
            let tau = kendall_tau_b(&case.a, &case.b).expect("defined on fixture inputs");
            assert_close(tau, case.kendall_tau_b, TOLERANCE, &format!("{} kendall", case.name));
        }
    }

    #[test]
    fn average_ranks_match_scipy_rankdata() {
        for case in &fixture().correlations {
            assert_eq!(average_ranks(&case.a), case.ranks_a, "{}", case.name);
            assert_eq!(average_ranks(&case.b), case.ranks_b, "{}", case.name);
        }
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), [1.5, 3.0, 1.5, 4.0]);
        assert_eq!(average_ranks(&[2.0, 2.0, 2.0]), [2.0, 2.0, 2.0]);
        assert_eq!(average_ranks(&[-0.0, 0.0]), [1.5, 1.5]);
        assert!(average_ranks(&[]).is_empty());
    }

    #[test]
    fn correlations_of_monotone_and_degenerate_inputs() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let up = [10.0, 20.0, 25.0, 40.0, 100.0];
        let down = [5.0, 4.0, 3.0, 2.0, 1.0];
        assert_eq!(spearman(&a, &up), Some(1.0));
        assert_eq!(kendall_tau_b(&a, &up), Some(1.0));
        assert_eq!(spearman(&a, &down), Some(-1.0));
        assert_eq!(kendall_tau_b(&a, &down), Some(-1.0));
        for f in [spearman, kendall_tau_b] {
            assert_eq!(f(&a, &[1.0; 5]), None, "constant side");
            assert_eq!(f(&a, &up[..4]), None, "mismatched lengths");
            assert_eq!(f(&[1.0], &[2.0]), None, "one item");
            assert_eq!(f(&[], &[]), None, "empty");
            assert_eq!(f(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]), None, "NaN");
            assert_eq!(f(&[1.0, 2.0, f64::INFINITY], &[1.0, 2.0, 3.0]), None, "infinite");
        }
    }

    #[test]
    fn kappa_matches_definition() {
        let fixture = fixture();
        assert!(fixture.kappa.len() >= 2);
        for case in &fixture.kappa {
            let kappa = cohen_kappa(&case.a, &case.b).expect("defined on fixture inputs");
            assert_close(kappa, case.kappa, TOLERANCE, &case.name);
        }
    }

    #[test]
    fn kappa_edges() {
        assert_eq!(cohen_kappa(&["x"; 4], &["x"; 4]), Some(1.0), "both constant and equal");
        // Never agreeing and no label in common: chance agreement 0, kappa 0.
        assert_eq!(cohen_kappa(&["x"; 4], &["y"; 4]), Some(0.0));
        assert_eq!(cohen_kappa(&[1_u8, 2, 3, 1], &[1, 2, 3, 1]), Some(1.0));
        // Systematic disagreement on two balanced labels: -1.
        assert_eq!(
            cohen_kappa(&[true, false, true, false], &[false, true, false, true]),
            Some(-1.0)
        );
        assert_eq!(cohen_kappa::<u8>(&[], &[]), None);
        assert_eq!(cohen_kappa(&[1, 2], &[1]), None);
    }

    #[test]
    fn top_k_overlap_counts_shared_leaders() {
        let a = [0.9, 0.8, 0.7, 0.1, 0.2];
        let b = [0.9, 0.1, 0.8, 0.7, 0.2];
        // Top 2: a {0, 1}, b {0, 2}.
        assert_eq!(top_k_overlap(&a, &b, 2), Some(0.5));
        // Top 3: a {0, 1, 2}, b {0, 2, 3}.
        assert_close(
            top_k_overlap(&a, &b, 3).unwrap_or(f64::NAN),
            2.0 / 3.0,
            TOLERANCE,
            "k = 3",
        );
        assert_eq!(top_k_overlap(&a, &b, 5), Some(1.0));
        assert_eq!(top_k_overlap(&a, &b, 50), Some(1.0), "k clamped to the length");
        // Ties go in index order: top 2 of the all-equal side is {0, 1}.
        assert_eq!(
            top_k_overlap(&[1.0, 1.0, 1.0, 1.0], &[0.5, 0.4, 0.9, 0.8], 2),
            Some(0.0)
        );
        assert_eq!(
            top_k_overlap(&[1.0, 1.0, 1.0, 1.0], &[0.9, 0.8, 0.1, 0.2], 2),
            Some(1.0)
        );
        assert_eq!(top_k_overlap(&a, &b, 0), None);
        assert_eq!(top_k_overlap(&a, &b[..4], 2), None);
        assert_eq!(top_k_overlap(&[], &[], 1), None);
        assert_eq!(top_k_overlap(&[f64::NAN, 1.0], &[1.0, 2.0], 1), None);
    }

    #[test]
    fn bootstrap_interval_contains_the_mean() {
        let values = scores(40, 7);
        let interval = bootstrap_mean(&values, 2000, 0.95, 1).expect("valid input");
        assert_eq!(interval.estimate, mean(&values));
        assert!(
            interval.low < interval.estimate && interval.estimate < interval.high,
            "{interval:?}"
        );
        // A mean of 40 uniform scores: the 95 % interval is about ±0.09 wide.
        assert!(interval.high - interval.low < 0.3, "{interval:?}");
        // Same resamples, lower level: a nested interval.
        let narrow = bootstrap_mean(&values, 2000, 0.5, 1).expect("valid input");
        assert!(
            interval.low <= narrow.low && narrow.high <= interval.high,
            "{narrow:?} in {interval:?}"
        );
    }

    #[test]
    fn bootstrap_of_constant_values_has_zero_width() {
        let interval = bootstrap_mean(&[0.7; 25], 500, 0.95, 3).expect("valid input");
        assert_eq!(interval.low, interval.estimate);
        assert_eq!(interval.high, interval.estimate);
        assert_close(interval.estimate, 0.7, TOLERANCE, "estimate");
    }

    #[test]
    fn bootstrap_is_reproducible_by_seed() {
        let values = scores(30, 11);
        let first = bootstrap_mean(&values, 1000, 0.95, 42);
        assert_eq!(first, bootstrap_mean(&values, 1000, 0.95, 42));
        let other = bootstrap_mean(&values, 1000, 0.95, 43);
        assert_ne!(first, other);
        assert_eq!(first.map(|i| i.estimate), other.map(|i| i.estimate));
    }

    #[test]
    fn bootstrap_rejects_degenerate_input() {
        assert_eq!(bootstrap_mean(&[], 100, 0.95, 0), None);
        assert_eq!(bootstrap_mean(&[1.0, 2.0], 0, 0.95, 0), None);
        for level in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert_eq!(bootstrap_mean(&[1.0, 2.0], 100, level, 0), None, "level {level}");
        }
        assert_eq!(bootstrap_mean(&[1.0, f64::NAN], 100, 0.95, 0), None);
        assert_eq!(bootstrap_mean(&[1.0, f64::INFINITY], 100, 0.95, 0), None);
        // One item is a valid, if uninformative, input.
        let one = bootstrap_mean(&[0.25], 10, 0.95, 0);
        assert_eq!(
            one,
            Some(Interval {
                estimate: 0.25,
                low: 0.25,
                high: 0.25
            })
        );
    }

    #[test]
    fn clearly_better_system_is_detected() {
        let a = scores(50, 5);
        let mut noise = StdRng::seed_from_u64(6);
        let b: Vec<f64> = a.iter().map(|x| x + 0.3 + noise.random_range(-0.2..0.2)).collect();
        let result = paired_comparison(&a, &b, 2000, 9999, 0.95, 9).expect("valid input");
        assert_eq!(result.items, 50);
        assert!((0.2..0.4).contains(&result.difference.estimate), "{result:?}");
        assert!(result.difference.low > 0.0, "{result:?}");
        assert!(result.p_value < 0.01, "{result:?}");
        // Not one flip reaches the observed mean: the smallest p the test can give.
        assert_eq!(result.p_value, 1.0 / 10_000.0);
    }

    #[test]
    fn paired_difference_is_the_bootstrap_of_the_differences() {
        let a = scores(30, 21);
        let b = scores(30, 22);
        let result = paired_comparison(&a, &b, 500, 200, 0.9, 4).expect("valid input");
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y - x).collect();
        assert_eq!(Some(result.difference), bootstrap_mean(&diffs, 500, 0.9, 4));
        assert!(result.difference.low <= result.difference.estimate);
        assert!(result.difference.estimate <= result.difference.high);
        // Unrelated systems: the test should not call the difference significant.
        assert!(result.p_value > 0.05 && result.p_value <= 1.0, "{result:?}");
    }

    #[test]
    fn identical_systems_give_p_one() {
        let a = scores(20, 8);
        let result = paired_comparison(&a, &a, 300, 500, 0.95, 1).expect("valid input");
        // Every flipped mean is ±0, which ties |0| - 1e-12: count = permutations, p = 1.
        assert_eq!(result.p_value, 1.0);
        assert_eq!(
            result.difference,
            Interval {
                estimate: 0.0,
                low: 0.0,
                high: 0.0
            }
        );
    }

    #[test]
    fn swapping_systems_negates_the_difference_and_keeps_p() {
        let a = scores(25, 31);
        let b: Vec<f64> = scores(25, 32).iter().map(|x| x + 0.1).collect();
        let ab = paired_comparison(&a, &b, 400, 400, 0.95, 2).expect("valid input");
        let ba = paired_comparison(&b, &a, 400, 400, 0.95, 2).expect("valid input");
        assert_close(ba.difference.estimate, -ab.difference.estimate, 1e-12, "estimate");
        assert_close(ba.difference.low, -ab.difference.high, 1e-12, "low");
        assert_close(ba.difference.high, -ab.difference.low, 1e-12, "high");
        assert_eq!(ba.p_value, ab.p_value);
    }

    #[test]
    fn paired_comparison_is_reproducible_by_seed() {
        let a = scores(30, 41);
        let b = scores(30, 42);
        let first = paired_comparison(&a, &b, 300, 300, 0.95, 7);
        assert_eq!(first, paired_comparison(&a, &b, 300, 300, 0.95, 7));
        assert_ne!(first, paired_comparison(&a, &b, 300, 300, 0.95, 8));
    }

    #[test]
    fn paired_comparison_rejects_degenerate_input() {
        assert_eq!(paired_comparison(&[1.0, 2.0], &[1.0], 100, 100, 0.95, 0), None);
        assert_eq!(paired_comparison(&[], &[], 100, 100, 0.95, 0), None);
        assert_eq!(paired_comparison(&[1.0], &[2.0], 100, 0, 0.95, 0), None);
        assert_eq!(paired_comparison(&[1.0], &[2.0], 0, 100, 0.95, 0), None);
        assert_eq!(paired_comparison(&[1.0], &[2.0], 100, 100, 1.0, 0), None);
        assert_eq!(paired_comparison(&[f64::NAN], &[2.0], 100, 100, 0.95, 0), None);
        // Finite inputs whose difference overflows.
        assert_eq!(paired_comparison(&[-f64::MAX], &[f64::MAX], 100, 100, 0.95, 0), None);
    }
}
