//! The floor of a task: the test accuracy of the best context-free predictor, measured.
//!
//! Chance (uniform guessing) understates what a model reaches without using its context: MQAR
//! answers, arithmetic results and k-hop targets are not uniform. [`majority`] predicts, for
//! each supervised position, the most frequent target at that position's ordinal among `n_train`
//! training examples (teacher-forced tasks), or the most frequent whole answer (generated
//! tasks, scored by the task's own verifier), and returns its accuracy on `test` under the
//! task's metric. A model below it has learnt nothing from the context; a verdict's floor gate
//! uses the larger of it and chance. [`shallow`] measures the task's own shallow heuristics
//! (hop-k's copy of the current token and its one-hop induction), which a model of too few
//! layers can still compute.

use crate::{generate_range, Example, Metric, Split, Task};
use std::collections::BTreeMap;

/// The most frequent item (the smallest on a tie, so the result is deterministic).
fn mode<K: Ord + Clone>(counts: &BTreeMap<K, u64>) -> Option<K> {
    let best = counts.values().copied().max()?;
    counts
        .iter()
        .find(|(_, &c)| c == best)
        .map(|(k, _)| k.clone())
}

/// The majority predictor's test accuracy (see the module docs).
pub fn majority(task: &dyn Task, n_train: u64, test: &[Example]) -> f64 {
    let train = generate_range(task, Split::Train, 0, n_train);
    match task.metric() {
        Metric::TeacherForced => {
            // Per ordinal of the supervised position: target counts.
            let mut counts: Vec<BTreeMap<u32, u64>> = Vec::new();
            for ex in &train {
                for (j, &(_, t)) in ex.targets.iter().enumerate() {
                    if counts.len() <= j {
                        counts.resize(j + 1, BTreeMap::new());
                    }
                    *counts[j].entry(t).or_default() += 1;
                }
            }
            let guess: Vec<Option<u32>> = counts.iter().map(mode).collect();
            let (mut right, mut total) = (0u64, 0u64);
            for ex in test {
                for (j, &(_, t)) in ex.targets.iter().enumerate() {
                    total += 1;
                    right += u64::from(guess.get(j).copied().flatten() == Some(t));
                }
            }
            right as f64 / total.max(1) as f64
        }
        Metric::Generate => {
            let mut counts: BTreeMap<Vec<u32>, u64> = BTreeMap::new();
            for ex in &train {
                *counts.entry(ex.answer().to_vec()).or_default() += 1;
            }
            let Some(answer) = mode(&counts) else {
                return 0.0;
            };
            let right = test.iter().filter(|ex| task.score(ex, &answer)).count();
            right as f64 / test.len().max(1) as f64
        }
    }
}

/// The best accuracy on `test` of the task's shallow heuristics ([`Task::shallow`]), micro over
/// supervised targets; 0 where the task has none.
pub fn shallow(task: &dyn Task, test: &[Example]) -> f64 {
    let mut best = 0.0f64;
    let predictors = test.first().map(|ex| task.shallow(ex).len()).unwrap_or(0);
    for h in 0..predictors {
        let (mut right, mut total) = (0u64, 0u64);
        for ex in test {
            let preds = task.shallow(ex);
            for (j, &(_, t)) in ex.targets.iter().enumerate() {
                total += 1;
                let guess = preds.get(h).and_then(|p| p.get(j).copied().flatten());
                right += u64::from(guess == Some(t));
            }
        }
        best = best.max(right as f64 / total.max(1) as f64);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    #[test]
    fn the_majority_floor_is_at_least_what_chance_suggests_and_beats_it_where_answers_skew() {
        // Parity: balanced labels, so the majority predictor sits at chance (1/2) up to noise.
        let t = build("parity", None, &[]).unwrap();
        let test = generate_range(t.as_ref(), Split::Test, 0, 2000);
        let f = majority(t.as_ref(), 2000, &test);
        assert!((f - 0.5).abs() < 0.05, "parity floor {f}");
        // Brute force on a tiny hand-made case through the public path: the floor of a task is
        // the share of test targets equal to the train mode at their ordinal.
        let t = build("mqar", Some("kv4"), &[]).unwrap();
        let test = generate_range(t.as_ref(), Split::Test, 0, 500);
        let train = generate_range(t.as_ref(), Split::Train, 0, 500);
        let f = majority(t.as_ref(), 500, &test);
        let mut by_ord: BTreeMap<usize, BTreeMap<u32, u64>> = BTreeMap::new();
        for ex in &train {
            for (j, &(_, tok)) in ex.targets.iter().enumerate() {
                *by_ord.entry(j).or_default().entry(tok).or_default() += 1;
            }
        }
        let (mut r, mut n) = (0, 0);
        for ex in &test {
            for (j, &(_, tok)) in ex.targets.iter().enumerate() {
                let m = by_ord[&j]
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .unwrap()
                    .0;
                n += 1;
                r += usize::from(*m == tok);
            }
        }
        assert_eq!(f, r as f64 / n as f64);
        assert!(f >= 0.0 && f < 0.2, "mqar floor {f}");
    }

    #[test]
    fn hopk_shallow_heuristics_are_the_lower_hops() {
        // hop_0 (copy) and hop_1 (one induction head), each scored against hop_k by brute force
        // from the definition; the floor is the better one.
        let t = build("hopk", Some("k4"), &[]).unwrap();
        let test = generate_range(t.as_ref(), Split::Test, 0, 200);
        let s = shallow(t.as_ref(), &test);
        let m = majority(t.as_ref(), 2000, &test);
        assert!(s > 0.0 && s < 1.0, "{s}");
        // Each predictor's accuracy, by hand from the definition of hops.
        let mut best = 0.0f64;
        for j in 0..2 {
            let (mut r, mut n) = (0, 0);
            for ex in &test {
                let h = crate::hopk::hops(&ex.tokens[1..], j);
                for &(p, tok) in &ex.targets {
                    n += 1;
                    r += usize::from(h[p as usize - 1] == Some(tok));
                }
            }
            best = best.max(r as f64 / n as f64);
        }
        assert_eq!(s, best);
        eprintln!("hopk k4: shallow floor {s:.3}, majority {m:.3}");
        // Tasks without heuristics measure 0.
        let p = build("parity", None, &[]).unwrap();
        let pt = generate_range(p.as_ref(), Split::Test, 0, 10);
        assert_eq!(shallow(p.as_ref(), &pt), 0.0);
    }
}
