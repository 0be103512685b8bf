//! mqar, arith, hopk: golden snapshots of the first test examples at every level, and the
//! generation contract shared by every task (thread-count independence, range independence,
//! disjoint splits, token and length bounds).
use std::collections::HashSet;
use tasks::{build, generate, generate_range, registry, split_of, Example, Split, Task};

/// Task, level and `key=value` overrides of every configuration covered here.
fn cases() -> Vec<(String, &'static str, String, Vec<(String, String)>)> {
    let kv = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for info in registry()
        .into_iter()
        .filter(|i| ["mqar", "arith", "hopk"].contains(&i.name))
    {
        for (level, _) in &info.levels {
            out.push((
                format!("{}_{level}", info.name),
                info.name,
                level.to_string(),
                vec![],
            ));
        }
    }
    for level in ["ops4", "ops6"] {
        out.push((
            format!("arith_{level}_cot"),
            "arith",
            level.into(),
            kv(&[("output", "cot")]),
        ));
        out.push((
            format!("arith_{level}_int"),
            "arith",
            level.into(),
            kv(&[("mode", "int")]),
        ));
        out.push((
            format!("arith_{level}_int_cot"),
            "arith",
            level.into(),
            kv(&[("mode", "int"), ("output", "cot")]),
        ));
    }
    // The small MQAR setting of the Zoology reproduction (T=64, 4 kv pairs).
    out.push((
        "mqar_kv4_t64".into(),
        "mqar",
        "kv4".into(),
        kv(&[("seq_len", "64"), ("vocab_size", "256")]),
    ));
    out
}

fn build_case(task: &str, level: &str, sets: &[(String, String)]) -> Box<dyn Task> {
    build(task, Some(level), sets).unwrap_or_else(|e| panic!("{task}/{level}: {e}"))
}

/// Targets as text: for next-token tasks (target == next token) the answer rendering says it all;
/// otherwise list `position:token` (mqar) or a per-position label line (hopk).
fn show_targets(task: &dyn Task, ex: &Example) -> String {
    match task.name() {
        "hopk" => {
            let start = ex.meta["start"].as_u64().unwrap() as usize;
            let mut line = vec![".".to_string(); ex.tokens.len() - start];
            for &(p, t) in &ex.targets {
                line[p as usize - start] = task.token_str(t);
            }
            format!("labels: {}\n", line.concat())
        }
        "mqar" => {
            let t: Vec<String> = ex
                .targets
                .iter()
                .map(|&(p, t)| format!("{p}:{}", task.token_str(t)))
                .collect();
            format!("targets: {}\n", t.join(" "))
        }
        _ => format!(
            "targets: {} (next token at every answer position)\n",
            ex.targets.len()
        ),
    }
}

#[test]
fn tasks_common_golden() {
    for (name, task, level, sets) in cases() {
        let t = build_case(task, &level, &sets);
        let text = crate::task_contract::golden_text(t.as_ref(), 3, show_targets);
        crate::golden().bind(|| insta::assert_snapshot!(name, text));
    }
}

#[test]
fn tasks_common_same_bytes_at_1_and_4_threads() {
    for (name, task, level, sets) in cases() {
        let t = build_case(task, &level, &sets);
        crate::task_contract::assert_thread_independent(&name, t.as_ref(), 300);
    }
}

#[test]
fn tasks_common_example_independent_of_range_start() {
    for (name, task, level, sets) in cases() {
        let t = build_case(task, &level, &sets);
        let all = generate_range(t.as_ref(), Split::Val, 0, 120);
        let tail = generate_range(t.as_ref(), Split::Val, 70, 50);
        assert_eq!(&all[70..], &tail[..], "{name}");
        for i in [0usize, 13, 119] {
            assert_eq!(
                all[i],
                generate(t.as_ref(), Split::Val, i as u64),
                "{name} #{i}"
            );
            assert_eq!(all[i].index, i as u64);
        }
        // Different indices and splits give different examples.
        let distinct: HashSet<&Vec<u32>> = all.iter().map(|e| &e.tokens).collect();
        assert!(
            distinct.len() >= 110,
            "{name}: only {} distinct of 120",
            distinct.len()
        );
    }
}

#[test]
fn tasks_common_splits_are_disjoint() {
    for (name, task, level, sets) in cases() {
        let t = build_case(task, &level, &sets);
        let train = generate_range(t.as_ref(), Split::Train, 0, 3000);
        let seen: HashSet<&Vec<u32>> = train.iter().map(|e| &e.tokens).collect();
        for split in [Split::Val, Split::Test] {
            let other = generate_range(t.as_ref(), split, 0, 1000);
            let overlap = other.iter().filter(|e| seen.contains(&e.tokens)).count();
            assert_eq!(
                overlap, 0,
                "{name}: {overlap} {split} examples also in train"
            );
            assert!(other
                .iter()
                .all(|e| split_of(&e.tokens) == split && e.split == split));
        }
        assert!(train.iter().all(|e| split_of(&e.tokens) == Split::Train));
    }
}

#[test]
fn tasks_common_bounds_and_verifier() {
    for (name, task, level, sets) in cases() {
        let t = build_case(task, &level, &sets);
        for ex in generate_range(t.as_ref(), Split::Test, 0, 500) {
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
            assert!(ex.prompt_len <= ex.tokens.len());
            assert!(!ex.targets.is_empty(), "{name}: nothing supervised");
            assert!(
                ex.targets.windows(2).all(|w| w[0].0 < w[1].0),
                "{name}: targets not sorted/unique"
            );
            assert!(ex
                .targets
                .iter()
                .all(|&(p, v)| (p as usize) < ex.tokens.len() && (v as usize) < t.vocab_size()));
            assert!(ex
                .targets
                .iter()
                .all(|&(p, _)| ex.tokens[p as usize] != t.pad_id() || task == "mqar"));
            match t.eos_id() {
                Some(eos) => assert_eq!(*ex.tokens.last().unwrap(), eos, "{name}"),
                None => assert_eq!(ex.prompt_len, ex.tokens.len(), "{name}"),
            }
            // The generator's own answer passes its verifier.
            let own: Vec<u32> = match t.metric() {
                tasks::Metric::Generate => ex.answer().to_vec(),
                tasks::Metric::TeacherForced => ex.targets.iter().map(|&(_, v)| v).collect(),
            };
            assert!(
                t.score(&ex, &own),
                "{name}: verifier rejects the generator's answer"
            );
            assert!(
                !t.score(&ex, &[]),
                "{name}: verifier accepts an empty answer"
            );
        }
        assert!(t.chance() > 0.0 && t.chance() < 1.0);
    }
}
