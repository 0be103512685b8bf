//! vartrack, listops, the MAD family (recall, noisy-recall, fuzzy-recall, selective-copy,
//! memorize) and the depth probes (counting, parity, s5, reachability): golden snapshots of the first test examples at every level, and the generation
//! contract (thread-count independence, disjoint splits, token and length bounds, verifier).
use std::collections::HashSet;
use tasks::{build, generate, generate_range, registry, split_of, Example, Metric, Split, Task};

const TASKS: [&str; 11] = [
    "vartrack",
    "listops",
    "recall",
    "noisy-recall",
    "fuzzy-recall",
    "selective-copy",
    "memorize",
    "counting",
    "parity",
    "s5",
    "reachability",
];

/// (snapshot name, task, level) for every level of every task covered here.
fn cases() -> Vec<(String, &'static str, &'static str)> {
    let reg = registry();
    TASKS
        .iter()
        .flat_map(|&name| {
            let info = reg
                .iter()
                .find(|i| i.name == name)
                .unwrap_or_else(|| panic!("{name} is not registered"));
            info.levels
                .iter()
                .map(move |(lvl, _)| (format!("{name}_{lvl}"), name, *lvl))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn build_case(task: &str, level: &str) -> Box<dyn Task> {
    build(task, Some(level), &[]).unwrap_or_else(|e| panic!("{task}/{level}: {e}"))
}

/// Fewer examples for the long-sequence levels (the contract does not depend on the count).
fn n_for(task: &dyn Task, n: u64) -> u64 {
    if task.max_len() > 300 {
        n / 4
    } else {
        n
    }
}

/// The targets line of an example: a count for generated answers, `position:token` pairs for
/// teacher-forced positions.
fn show_targets(task: &dyn Task, ex: &Example) -> String {
    match task.metric() {
        Metric::Generate => format!(
            "targets: {} (next token at every answer position)\n",
            ex.targets.len()
        ),
        Metric::TeacherForced => {
            let t: Vec<String> = ex
                .targets
                .iter()
                .map(|&(p, t)| format!("{p}:{}", task.token_str(t)))
                .collect();
            format!("targets: {}\n", t.join(" "))
        }
    }
}

#[test]
fn tasks_probes_golden() {
    for (name, task, level) in cases() {
        let t = build_case(task, level);
        let text = crate::task_contract::golden_text(t.as_ref(), 2, show_targets);
        crate::golden().bind(|| insta::assert_snapshot!(name, text));
    }
}

#[test]
fn tasks_probes_same_bytes_at_1_and_4_threads() {
    for (name, task, level) in cases() {
        let t = build_case(task, level);
        let n = n_for(t.as_ref(), 200);
        crate::task_contract::assert_thread_independent(&name, t.as_ref(), n);
        // Example i does not depend on where the range starts.
        let tail = generate_range(t.as_ref(), Split::Val, 7, 5);
        assert_eq!(tail[0], generate(t.as_ref(), Split::Val, 7), "{name}");
    }
}

#[test]
fn tasks_probes_splits_are_disjoint() {
    for (name, task, level) in cases() {
        let t = build_case(task, level);
        let train = generate_range(t.as_ref(), Split::Train, 0, n_for(t.as_ref(), 3000));
        assert!(train.iter().all(|e| split_of(&e.tokens) == Split::Train));
        let seen: HashSet<&Vec<u32>> = train.iter().map(|e| &e.tokens).collect();
        // Draws are varied: few duplicate sequences within train either (listops `mixed` has
        // the most: small depth-1 trees recur, ~6%; LRA deduplicates, a per-example generator
        // cannot).
        assert!(
            seen.len() * 100 >= train.len() * 90,
            "{name}: only {} distinct of {} train examples",
            seen.len(),
            train.len()
        );
        for split in [Split::Val, Split::Test] {
            let other = generate_range(t.as_ref(), split, 0, n_for(t.as_ref(), 1000));
            let overlap = other.iter().filter(|e| seen.contains(&e.tokens)).count();
            assert_eq!(
                overlap, 0,
                "{name}: {overlap} {split} examples also in train"
            );
            assert!(other
                .iter()
                .all(|e| split_of(&e.tokens) == split && e.split == split));
        }
    }
}

#[test]
fn tasks_probes_bounds_and_verifier() {
    for (name, task, level) in cases() {
        let t = build_case(task, level);
        let mut pairs = Vec::new();
        for ex in generate_range(t.as_ref(), Split::Test, 0, n_for(t.as_ref(), 400)) {
            assert!(
                ex.tokens.len() <= t.max_len(),
                "{name}: {} > max_len {}",
                ex.tokens.len(),
                t.max_len()
            );
            assert!(
                ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()),
                "{name}: token id out of range"
            );
            assert!(
                ex.tokens.iter().all(|&x| x != t.pad_id()),
                "{name}: pad inside an example"
            );
            assert!(!ex.targets.is_empty(), "{name}: nothing supervised");
            assert!(
                ex.targets.windows(2).all(|w| w[0].0 < w[1].0),
                "{name}: targets not sorted/unique"
            );
            assert!(ex
                .targets
                .iter()
                .all(|&(p, v)| (p as usize) < ex.tokens.len() && (v as usize) < t.vocab_size()));
            let own: Vec<u32> = match t.metric() {
                Metric::Generate => {
                    assert_eq!(Some(*ex.tokens.last().unwrap()), t.eos_id(), "{name}");
                    assert!(ex.answer().len() <= t.max_new_tokens());
                    ex.answer().to_vec()
                }
                Metric::TeacherForced => {
                    assert_eq!(ex.prompt_len, ex.tokens.len(), "{name}");
                    ex.targets.iter().map(|&(_, v)| v).collect()
                }
            };
            assert!(
                t.score(&ex, &own),
                "{name}: verifier rejects the generator's answer"
            );
            assert!(
                !t.score(&ex, &[]),
                "{name}: verifier accepts an empty answer"
            );
            pairs.extend(ex.targets.iter().map(|&(_, v)| (v, v)));
        }
        assert!(t.chance() > 0.0 && t.chance() < 1.0, "{name}");
        // Perfect predictions score 1 under both MAD accuracies.
        assert_eq!(tasks::mad::macro_accuracy(&pairs), 1.0);
        assert_eq!(tasks::mad::micro_accuracy(&pairs), 1.0);
    }
}
