//! Aggregate statistics across task families, as the ML-evaluation literature asks for them
//! (Agarwal et al. 2021, *Deep RL at the Edge of the Statistical Precipice*): the interquartile
//! mean, probability of improvement, performance profiles, each with a stratified bootstrap
//! confidence interval, and mean ranks. Small pure functions over normalized scores, so each is
//! tested on its own (closed forms, exact enumeration of the bootstrap); the suite's report and
//! figure are drawn from their outputs.
//!
//! Scores are given per model as `strata[task][run]`: one stratum per task family, one score per
//! evaluation seed. The bootstrap resamples runs *within* each stratum (never across tasks), so
//! every resample keeps every task.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One model's performance profile (the fraction of its runs above each τ) and its band.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileCurve {
    pub model: String,
    pub taus: Vec<f64>,
    pub fraction: Vec<f64>,
    pub band: Vec<(f64, f64)>,
}

/// Bootstrap resamples behind every interval (fixed, like the seed, so a re-render is
/// byte-identical).
pub const REPS: usize = 2000;
/// The bootstrap's seed; every interval derives its own stream from it and a label.
pub const SEED: u64 = 0x5u64 << 32 | 0x17e;

/// A normalized score: 0 at the floor (the best trivial predictor), 1 at a perfect test score.
/// Below the floor it is negative (kept: clamping would hide a model worse than trivial).
pub fn normalized(acc: f64, floor: f64) -> f64 {
    (acc - floor) / (1.0 - floor).max(1e-12)
}

/// The interquartile mean: the mean of the scores left after removing the lowest and the highest
/// ⌊n/4⌋ (scipy's `trim_mean(x, 0.25)`, which rliable's IQM is). `None` when empty.
pub fn iqm(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let cut = v.len() / 4;
    let mid = &v[cut..v.len() - cut];
    Some(mid.iter().sum::<f64>() / mid.len() as f64)
}

/// The mean of all scores. `None` when empty.
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Every run of every stratum, in order.
pub fn flatten(strata: &[Vec<f64>]) -> Vec<f64> {
    strata.iter().flatten().copied().collect()
}

/// P(X > Y) over one task: the probability that a run of X scores above a run of Y, ties counting
/// one half — the Mann–Whitney U statistic over n·m. `None` when either side is empty.
pub fn p_greater(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let mut s = 0.0;
    for a in x {
        for b in y {
            s += match a.total_cmp(b) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    Some(s / (x.len() * y.len()) as f64)
}

/// The probability of improvement of X over Y: [`p_greater`] per task, averaged over the tasks
/// (each task weighs the same). `None` unless both have the same tasks, each non-empty.
pub fn probability_of_improvement(x: &[Vec<f64>], y: &[Vec<f64>]) -> Option<f64> {
    if x.is_empty() || x.len() != y.len() {
        return None;
    }
    let ps: Option<Vec<f64>> = x.iter().zip(y).map(|(a, b)| p_greater(a, b)).collect();
    mean(&ps?)
}

/// The fraction of runs scoring above each threshold τ (the performance profile), over all runs.
pub fn profile(xs: &[f64], taus: &[f64]) -> Vec<f64> {
    taus.iter()
        .map(|t| xs.iter().filter(|x| *x > t).count() as f64 / xs.len().max(1) as f64)
        .collect()
}

/// One resample of `strata`: each stratum's runs drawn with replacement, as many as it has.
fn resample(strata: &[Vec<f64>], rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
    strata
        .iter()
        .map(|s| (0..s.len()).map(|_| s[rng.gen_range(0..s.len())]).collect())
        .collect()
}

/// A bootstrap stream: [`SEED`] mixed with a label, so each interval's resamples are its own and
/// do not change when another interval is added.
pub fn rng_for(label: &str) -> ChaCha8Rng {
    let mut h: u64 = SEED;
    for b in label.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// The percentile interval of a bootstrap distribution at `level` (0.95: the 2.5% and 97.5%
/// quantiles, linear interpolation between order statistics, numpy's default).
pub fn percentile_interval(mut draws: Vec<f64>, level: f64) -> (f64, f64) {
    draws.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let h = p * (draws.len() - 1) as f64;
        let (i, f) = (h.floor() as usize, h - h.floor());
        if i + 1 < draws.len() {
            draws[i] + f * (draws[i + 1] - draws[i])
        } else {
            draws[i]
        }
    };
    let a = (1.0 - level) / 2.0;
    (q(a), q(1.0 - a))
}

/// A stratified bootstrap percentile interval of `stat` (a function of every run, flattened
/// stratum by stratum): `reps` resamples within strata. `None` when there are no runs.
pub fn stratified_ci(
    strata: &[Vec<f64>],
    stat: impl Fn(&[f64]) -> Option<f64>,
    reps: usize,
    level: f64,
    rng: &mut ChaCha8Rng,
) -> Option<(f64, f64)> {
    if strata.iter().any(|s| s.is_empty()) || strata.is_empty() {
        return None;
    }
    let draws: Option<Vec<f64>> = (0..reps)
        .map(|_| stat(&flatten(&resample(strata, rng))))
        .collect();
    Some(percentile_interval(draws?, level))
}

/// A stratified bootstrap interval of the probability of improvement: X's and Y's runs resampled
/// within each task, independently.
pub fn poi_ci(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    reps: usize,
    level: f64,
    rng: &mut ChaCha8Rng,
) -> Option<(f64, f64)> {
    probability_of_improvement(x, y)?;
    let draws: Vec<f64> = (0..reps)
        .map(|_| {
            let (a, b) = (resample(x, rng), resample(y, rng));
            probability_of_improvement(&a, &b).expect("same tasks")
        })
        .collect();
    Some(percentile_interval(draws, level))
}

/// A stratified bootstrap band of the performance profile: the interval at every τ, from the
/// same resamples.
pub fn profile_band(
    strata: &[Vec<f64>],
    taus: &[f64],
    reps: usize,
    level: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<(f64, f64)> {
    if strata.is_empty() || strata.iter().any(|s| s.is_empty()) {
        return Vec::new();
    }
    let draws: Vec<Vec<f64>> = (0..reps)
        .map(|_| profile(&flatten(&resample(strata, rng)), taus))
        .collect();
    (0..taus.len())
        .map(|i| percentile_interval(draws.iter().map(|d| d[i]).collect(), level))
        .collect()
}

/// Ranks of `means` (1 = highest), ties sharing the average of the ranks they span.
pub fn ranks(means: &[f64]) -> Vec<f64> {
    means
        .iter()
        .map(|m| {
            let above = means.iter().filter(|x| *x > m).count() as f64;
            let tied = means.iter().filter(|x| *x == m).count() as f64;
            above + (tied + 1.0) / 2.0
        })
        .collect()
}

/// Every way of splitting `n` seeds into two disjoint halves, each split once (the half holding
/// seed 0 first): C(n, n/2)/2 splits. The A/A noise floor compares the baseline with itself over
/// each.
pub fn half_splits(n: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut out = Vec::new();
    if n < 2 || n % 2 == 1 || n > 20 {
        return out;
    }
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != n / 2 || mask & 1 == 0 {
            continue;
        }
        let a: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
        let b: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 0).collect();
        out.push((a, b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqm_is_the_quarter_trimmed_mean() {
        // n = 8: drop 2 from each end, mean of 3, 4, 5, 6.
        let x = [8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0];
        assert_eq!(iqm(&x), Some(4.5));
        // n = 10: drop 2 from each end (⌊10/4⌋), mean of the middle 6; an outlier moves nothing.
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 1e9];
        assert_eq!(iqm(&x), Some(4.5));
        // n < 4 trims nothing.
        assert_eq!(iqm(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(iqm(&[]), None);
    }

    #[test]
    fn probability_of_improvement_counts_pairs() {
        // Every run of x above every run of y: 1; the reverse: 0; the same runs: 1/2.
        assert_eq!(p_greater(&[2.0, 3.0], &[0.0, 1.0]), Some(1.0));
        assert_eq!(p_greater(&[0.0, 1.0], &[2.0, 3.0]), Some(0.0));
        assert_eq!(p_greater(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), Some(0.5));
        // x = {1, 3}, y = {2}: one pair above, one below.
        assert_eq!(p_greater(&[1.0, 3.0], &[2.0]), Some(0.5));
        // Averaged over tasks with equal weight, whatever their run counts.
        let x = vec![vec![1.0], vec![0.0, 0.0, 0.0]];
        let y = vec![vec![0.0], vec![1.0]];
        assert_eq!(probability_of_improvement(&x, &y), Some(0.5));
        assert_eq!(probability_of_improvement(&x, &y[..1]), None);
    }

    /// Every resample of tiny strata, enumerated: the bootstrap distribution exactly.
    fn exact_draws(strata: &[Vec<f64>], stat: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
        let mut picks: Vec<Vec<Vec<f64>>> = vec![vec![]];
        for s in strata {
            let n = s.len();
            let mut next = Vec::new();
            for p in &picks {
                for code in 0..n.pow(n as u32) {
                    let mut c = code;
                    let draw: Vec<f64> = (0..n)
                        .map(|_| {
                            let v = s[c % n];
                            c /= n;
                            v
                        })
                        .collect();
                    let mut q = p.clone();
                    q.push(draw);
                    next.push(q);
                }
            }
            picks = next;
        }
        picks.iter().map(|p| stat(&flatten(p))).collect()
    }

    #[test]
    fn stratified_bootstrap_matches_exact_enumeration() {
        // Two tasks of three runs: 27 × 27 equally likely resamples.
        let strata = vec![vec![0.1, 0.5, 0.9], vec![0.0, 0.2, 1.0]];
        let stat = |x: &[f64]| iqm(x).unwrap();
        let exact = exact_draws(&strata, &stat);
        let (elo, ehi) = percentile_interval(exact.clone(), 0.9);
        let mut rng = rng_for("test");
        let (lo, hi) = stratified_ci(&strata, |x| iqm(x), 40_000, 0.9, &mut rng).unwrap();
        // The Monte Carlo quantiles sit within a small distance of the exact ones.
        assert!(
            (lo - elo).abs() < 0.02 && (hi - ehi).abs() < 0.02,
            "{lo} {hi} vs {elo} {ehi}"
        );
        // Within strata only: a stratum of one value never varies, so the mean's interval is
        // the other stratum's alone, shifted.
        let fixed = vec![vec![0.5, 0.5, 0.5], vec![0.0, 0.2, 1.0]];
        let exact = exact_draws(&fixed, &|x: &[f64]| mean(x).unwrap());
        let lo_exact = exact.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!((lo_exact - (1.5 + 0.0) / 6.0).abs() < 1e-12);
        let (lo, _) = stratified_ci(&fixed, mean, 40_000, 1.0, &mut rng).unwrap();
        assert!(
            (lo - lo_exact).abs() < 1e-12,
            "the smallest resample is all zeros there"
        );
        // The same seed gives the same interval (byte-identical re-renders).
        let a = stratified_ci(&strata, iqm, 500, 0.95, &mut rng_for("x"));
        let b = stratified_ci(&strata, iqm, 500, 0.95, &mut rng_for("x"));
        assert_eq!(a, b);
    }

    #[test]
    fn poi_interval_matches_exact_enumeration() {
        // One task; x and y resampled independently: 27 × 27 resamples, enumerated.
        let (x, y) = (vec![vec![0.2, 0.6, 0.7]], vec![vec![0.1, 0.5, 0.65]]);
        let mut exact = Vec::new();
        let draws = |s: &[f64]| -> Vec<Vec<f64>> {
            let n = s.len();
            (0..n.pow(n as u32))
                .map(|mut c| {
                    (0..n)
                        .map(|_| {
                            let v = s[c % n];
                            c /= n;
                            v
                        })
                        .collect()
                })
                .collect()
        };
        for a in draws(&x[0]) {
            for b in draws(&y[0]) {
                exact.push(p_greater(&a, &b).unwrap());
            }
        }
        let (elo, ehi) = percentile_interval(exact, 0.9);
        let (lo, hi) = poi_ci(&x, &y, 40_000, 0.9, &mut rng_for("poi")).unwrap();
        assert!(
            (lo - elo).abs() < 0.03 && (hi - ehi).abs() < 0.03,
            "{lo} {hi} vs {elo} {ehi}"
        );
        // 0.2 > 0.1; 0.6 > 0.1, 0.5; 0.7 > all three: 6 of 9 pairs.
        assert_eq!(probability_of_improvement(&x, &y), Some(6.0 / 9.0));
    }

    #[test]
    fn profile_counts_runs_above_each_threshold() {
        let x = [0.0, 0.25, 0.5, 0.75, 1.0];
        assert_eq!(
            profile(&x, &[-0.1, 0.0, 0.5, 0.99, 1.0]),
            [1.0, 0.8, 0.4, 0.2, 0.0]
        );
        // A band brackets the profile and is flat where no resample can differ.
        let strata = vec![vec![0.3, 0.3], vec![0.8, 0.8]];
        let band = profile_band(&strata, &[0.5], 100, 0.95, &mut rng_for("p"));
        assert_eq!(band, [(0.5, 0.5)]);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[0.5, 0.9, 0.5, 0.1]), [2.5, 1.0, 2.5, 4.0]);
    }

    #[test]
    fn half_splits_enumerate_each_split_once() {
        let s = half_splits(10);
        assert_eq!(s.len(), 126); // C(10, 5) / 2
        assert!(s
            .iter()
            .all(|(a, b)| a.len() == 5 && b.len() == 5 && a[0] == 0));
        let s4 = half_splits(4);
        assert_eq!(s4.len(), 3);
        assert_eq!(s4[0], (vec![0, 1], vec![2, 3]));
        assert!(half_splits(5).is_empty());
    }

    #[test]
    fn percentile_interval_interpolates_like_numpy() {
        // numpy.percentile([0, 1, 2, 3, 4], [2.5, 97.5]) = [0.1, 3.9].
        let (lo, hi) = percentile_interval(vec![4.0, 0.0, 2.0, 1.0, 3.0], 0.95);
        assert!((lo - 0.1).abs() < 1e-12 && (hi - 3.9).abs() < 1e-12);
        assert_eq!(normalized(0.75, 0.5), 0.5);
    }
}
