//! `harness reproduce`: verdicts from committed run folders, rendered byte for byte.

use crate::leaderboard::write_run;
use harness::records::RunStatus;
use harness::reproduce::{arms, claims, plan, protocol, render, report, Scale, Search};
use std::path::Path;

/// Writes every run of the MQAR claim's protocol, with test accuracy `acc(model, level, seed)` at
/// lr 1e-3 (best on val) and 0.1 at the other learning rates.
fn fake_mqar(dir: &Path, acc: impl Fn(&str, &str, u64) -> f64, skip: usize) {
    let c = &claims()[0];
    let specs = protocol(c, Scale::Cpu).unwrap().unwrap();
    for s in specs.iter().skip(skip) {
        let (val, test) = if s.optim.lr == 1e-3 {
            (0.9, acc(&s.model, &s.level, s.seed))
        } else {
            (0.2, 0.1)
        };
        write_run(dir, s, val, test, RunStatus::Ok);
    }
}

/// The verdict rows of the MQAR claim (render only `claims()[..1]`: the rivals claim has kv8 rows too).
fn verdict_lines(md: &str) -> Vec<String> {
    md.lines()
        .filter(|l| l.starts_with("| mqar | kv") && l.contains(" − llama |"))
        .map(String::from)
        .collect()
}

/// Every claim's CPU protocol gives each model, at each level, 3 seeds at each of 3 learning
/// rates (what a verdict needs) and trains exactly the models it compares; a GPU protocol, where
/// defined, resolves too. The rivals claim covers every built-in variant.
#[test]
fn every_protocol_has_three_seeds_and_three_lrs_per_model() {
    for c in claims() {
        let specs = protocol(&c, Scale::Cpu).unwrap().unwrap();
        let mut cells: std::collections::BTreeMap<_, Vec<_>> = Default::default();
        for (arm, arm_specs) in arms(&c, Scale::Cpu).unwrap().unwrap() {
            for s in arm_specs {
                cells
                    .entry((arm.clone(), s.level.clone(), s.model.clone()))
                    .or_default()
                    .push((s.seed, s.optim.lr.to_bits()));
            }
        }
        assert!(cells.len() >= 2, "{}", c.name);
        // The protocol trains exactly the models it compares.
        let models: std::collections::BTreeSet<&str> =
            specs.iter().map(|s| s.model.as_str()).collect();
        let mut compared: std::collections::BTreeSet<&str> =
            c.challengers.iter().copied().collect();
        compared.insert(c.baseline);
        assert_eq!(models, compared, "{}", c.name);
        for ((arm, level, model), runs) in cells {
            let seeds: std::collections::BTreeSet<_> = runs.iter().map(|r| r.0).collect();
            let lrs: std::collections::BTreeSet<_> = runs.iter().map(|r| r.1).collect();
            assert_eq!(
                (seeds.len(), lrs.len(), runs.len()),
                (3, 3, 9),
                "{} {arm} {level} {model}",
                c.name
            );
        }
        if c.name == "rivals" {
            assert_eq!(models.len(), models::Variant::ALL.len());
        }
        if c.gpu.is_some() {
            assert!(!protocol(&c, Scale::Gpu).unwrap().unwrap().is_empty());
        }
    }
}

/// The claims the issue asks for at CPU scale, in report order; the depth claim has one arm per
/// depth (2, 4, 8 layers), each a shape of its own.
#[test]
fn the_claims_and_the_depth_arms() {
    let names: Vec<&str> = claims().iter().map(|c| c.name).collect();
    assert_eq!(names, ["mqar", "rivals", "aet", "prosqa", "depth"]);
    let depth = claims().into_iter().find(|c| c.name == "depth").unwrap();
    let a = arms(&depth, Scale::Cpu).unwrap().unwrap();
    let layers: Vec<(String, Vec<usize>)> = a
        .iter()
        .map(|(label, specs)| {
            let mut l: Vec<usize> = specs.iter().map(|s| s.model_config.n_layers).collect();
            l.dedup();
            (label.clone(), l)
        })
        .collect();
    assert_eq!(
        layers,
        [
            ("2 layers".to_string(), vec![2]),
            ("4 layers".to_string(), vec![4]),
            ("8 layers".to_string(), vec![8])
        ]
    );
}

/// A claim of several arms compares within each arm (lime vs llama at the same depth), names the
/// arm next to the level, and hands each tested comparison to the difference figure; a claim
/// whose GPU-scale protocol has no committed run says so and prints the command.
#[test]
fn arms_are_compared_apart_and_an_unrun_gpu_protocol_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let all = claims();
    let depth = all.iter().position(|c| c.name == "depth").unwrap();
    for (arm, specs) in arms(&all[depth], Scale::Cpu).unwrap().unwrap() {
        for s in specs {
            // lime wins by 30 points at 2 layers and ties elsewhere; llama's accuracy grows with depth.
            let base = 0.3 + 0.1 * s.model_config.n_layers as f64 / 2.0 + 0.01 * s.seed as f64;
            let acc = if s.model == "lime" && arm == "2 layers" {
                base + 0.3
            } else {
                base
            };
            let (val, test) = if s.optim.lr == 1e-3 {
                (0.9, acc)
            } else {
                (0.2, 0.1)
            };
            write_run(dir.path(), &s, val, test, RunStatus::Ok);
        }
    }
    let r = report(&all[depth..=depth], dir.path()).unwrap();
    // The summary at the top repeats each verdict with the claim's name.
    let glance: Vec<&str> =
        r.md.lines()
            .filter(|l| l.starts_with("| `depth` |"))
            .collect();
    assert_eq!(glance.len(), 3, "{}", r.md);
    assert!(glance[0].starts_with("| `depth` | hopk k4 · 2 layers | lime − llama | +30.0 ± "));
    assert!(glance[0].ends_with("| **reproduced** (same sign, p < 0.05) |"));
    let v: Vec<&str> =
        r.md.lines()
            .filter(|l| l.starts_with("| hopk |") && l.contains(" − llama |"))
            .collect();
    assert_eq!(v.len(), 3, "{}", r.md);
    assert!(
        v[0].starts_with("| hopk | k4 · 2 layers | lime − llama | +30.0 ± "),
        "{}",
        v[0]
    );
    assert!(v[0].contains("**reproduced**"), "{}", v[0]);
    assert!(v[1].starts_with("| hopk | k4 · 4 layers |") && v[1].contains("no difference"));
    assert!(
        r.md.contains("| hopk | k4 · 8 layers | llama | 3 | 1e-3 | 3 | 71.0 ± "),
        "{}",
        r.md
    );
    assert_eq!(r.differences.len(), 1);
    let d = &r.differences[0].1;
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].label, "hopk k4 · 2 layers lime");
    assert!((d[0].diff - 0.3).abs() < 1e-12);
    assert!(r
        .md
        .contains("[figure](results/reproduction/depth-differences.svg)"));

    let aet = all.iter().position(|c| c.name == "aet").unwrap();
    let md = render(&all[aet..=aet], dir.path()).unwrap();
    assert!(
        md.contains("The GPU-scale protocol (54 runs) has not been run: no GPU")
            && md.contains("`harness reproduce --claims aet --scale gpu --device cuda`"),
        "{md}"
    );
    // The figure is drawn: one error bar per comparison.
    let svg = dir.path().join("depth-differences.svg");
    harness::reproduce::difference_plot(&svg, "depth", d).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("k4 · 8 layers lime"), "labels missing");
    assert_eq!(text.matches("<circle").count(), 3);
}

#[test]
fn verdicts_follow_the_evidence() {
    let dir = tempfile::tempdir().unwrap();
    // kv4: lime clearly better on every seed; kv8: lime better on average but noisy.
    fake_mqar(
        dir.path(),
        |m, level, seed| match (m, level) {
            ("lime", "kv4") => 0.9 + 0.01 * seed as f64,
            ("llama", "kv4") => 0.5 + 0.01 * seed as f64,
            ("lime", "kv8") => [0.3, 0.9, 0.5][seed as usize],
            _ => [0.4, 0.45, 0.5][seed as usize],
        },
        0,
    );
    let md = render(&claims()[..1], dir.path()).unwrap();
    let v = verdict_lines(&md);
    assert_eq!(v.len(), 2, "{md}");
    // se = sqrt(2 · 0.01² / 3), df 4: 2.776 · 0.816 = 2.3 points.
    assert!(v[0].contains("| +40.0 ± 2.3 |"), "{}", v[0]);
    assert!(v[0].contains("**reproduced**"), "{}", v[0]);
    assert!(v[1].contains("same sign, not significant"), "{}", v[1]);
    // The chosen lr is the one best on val, with its three seeds.
    assert!(
        md.contains("| mqar | kv4 | lime | 3 | 1e-3 | 3 | 91.0 ± "),
        "{md}"
    );
    // Byte-identical on a second render.
    assert_eq!(md, render(&claims()[..1], dir.path()).unwrap());
}

#[test]
fn a_worse_challenger_is_not_reproduced_and_missing_runs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    fake_mqar(
        dir.path(),
        |m, _, seed| if m == "lime" { 0.3 } else { 0.6 } + 0.01 * seed as f64,
        0,
    );
    let v = verdict_lines(&render(&claims()[..1], dir.path()).unwrap());
    assert!(v.iter().all(|l| l.contains("**not reproduced**")), "{v:?}");

    // Both models at or below chance (0.01 in these fake runs): inconclusive, whatever the sign.
    let untrained = tempfile::tempdir().unwrap();
    fake_mqar(
        untrained.path(),
        |m, _, seed| if m == "lime" { 0.0 } else { 0.011 } + 0.001 * seed as f64,
        0,
    );
    let v = verdict_lines(&render(&claims()[..1], untrained.path()).unwrap());
    assert!(v.iter().all(|l| l.contains("**inconclusive**")), "{v:?}");

    let partial = tempfile::tempdir().unwrap();
    fake_mqar(partial.path(), |_, _, _| 0.5, 3);
    let v = verdict_lines(&render(&claims()[..1], partial.path()).unwrap());
    assert!(v[0].contains("incomplete: 3 run(s)"), "{v:?}");
}

/// The rivals claim also sets each router ablation against LIMe itself, with no direction
/// assumed: a clearly worse ablation *differs*, an equal one does not, none is ever
/// *reproduced*; the difference figure keeps the claim's comparisons with llama alone.
#[test]
fn ablations_are_compared_with_lime_without_a_direction() {
    let dir = tempfile::tempdir().unwrap();
    let all = claims();
    let rivals = all.iter().position(|c| c.name == "rivals").unwrap();
    // Every model's seed 0 is best on val at lr 1e-3, so the staged search keeps that lr.
    for s in protocol(&all[rivals], Scale::Cpu).unwrap().unwrap() {
        let test = match s.model.as_str() {
            "lime" | "lime-last-2" => 0.9,
            "lime-avg" => 0.4,
            _ => 0.5,
        } + 0.01 * s.seed as f64;
        let val = if s.optim.lr == 1e-3 { 0.9 } else { 0.2 };
        write_run(dir.path(), &s, val, test, RunStatus::Ok);
    }
    let r = report(&all[rivals..=rivals], dir.path()).unwrap();
    let row = |cmp: &str| {
        r.md.lines()
            .find(|l| l.starts_with("| mqar | kv8 |") && l.contains(&format!("| {cmp} |")))
            .unwrap_or_else(|| panic!("no row {cmp}: {}", r.md))
            .to_string()
    };
    let avg = row("lime-avg − lime");
    assert!(
        avg.contains("| -50.0 ± ") && avg.contains("**differs** (p < 0.05)"),
        "{avg}"
    );
    let last2 = row("lime-last-2 − lime");
    assert!(
        last2.contains("| +0.0 ± ") && last2.contains("| no significant difference |"),
        "{last2}"
    );
    // Against llama the same ablation is judged with the reported direction.
    assert!(
        row("lime-avg − llama").contains("**not reproduced**"),
        "{}",
        row("lime-avg − llama")
    );
    let versus: Vec<&str> = r.md.lines().filter(|l| l.contains(" − lime |")).collect();
    // 7 pairs, each in the verdict table and in the at-a-glance summary.
    assert_eq!(versus.len(), 14, "{versus:?}");
    assert!(
        versus.iter().all(|l| !l.contains("reproduced")),
        "{versus:?}"
    );
    let (_, diffs) = &r.differences[0];
    assert_eq!(diffs.len(), all[rivals].challengers.len());
    assert!(diffs.iter().all(|d| d.label.starts_with("mqar kv8 ")));
}

/// A staged search trains seed 0 at every lr, then the other seeds at the lr seed 0 chose on val
/// (5 runs per model, not 9); runs at other lrs — even better ones — do not enter its statistics,
/// and a stage 1 still training counts its stage 2 as missing.
#[test]
fn a_staged_search_picks_the_lr_on_seed_0_and_uses_only_its_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let all = claims();
    let prosqa = all.iter().position(|c| c.name == "prosqa").unwrap();
    assert_eq!(all[prosqa].search, Search::Staged);
    let specs = protocol(&all[prosqa], Scale::Cpu).unwrap().unwrap();
    let llama: Vec<_> = specs
        .iter()
        .filter(|s| s.model == "llama")
        .cloned()
        .collect();
    let records = || {
        harness::leaderboard::load_results(dir.path())
            .map(|l| l.records)
            .unwrap_or_default()
    };
    let p = plan(Search::Staged, &llama, &records());
    assert_eq!((p.runs.len(), p.pending, p.chosen), (3, 2, None));
    assert!(p.runs.iter().all(|s| s.seed == 0));
    // Seed 0: lr 3e-3 is best on val.
    let val0 = |lr: f64| if lr == 3e-3 { 0.8 } else { 0.5 };
    for s in specs.iter().filter(|s| s.seed == 0) {
        write_run(dir.path(), s, val0(s.optim.lr), 0.5, RunStatus::Ok);
    }
    let p = plan(Search::Staged, &llama, &records());
    assert_eq!((p.runs.len(), p.pending, p.chosen), (5, 0, Some(3e-3)));
    assert!(p
        .runs
        .iter()
        .filter(|s| s.seed > 0)
        .all(|s| s.optim.lr == 3e-3));
    assert_eq!(plan(Search::Grid, &llama, &records()).runs.len(), 9);
    let md = render(&all[prosqa..=prosqa], dir.path()).unwrap();
    assert!(md.contains("Protocol (CPU scale): 10 runs"), "{md}");
    assert!(md.contains("incomplete: 4 run(s)"), "{md}");
    // Seeds 1 and 2 everywhere: at the chosen lr lime leads by 20 points; at the other lrs both
    // models score 0.99 on val and test, which must not count.
    for s in specs.iter().filter(|s| s.seed > 0) {
        let (val, test) = match (s.optim.lr == 3e-3, s.model.as_str()) {
            (true, "lime") => (0.8, 0.7),
            (true, _) => (0.8, 0.5),
            (false, _) => (0.99, 0.99),
        };
        write_run(dir.path(), s, val, test, RunStatus::Ok);
    }
    let md = render(&all[prosqa..=prosqa], dir.path()).unwrap();
    assert!(
        md.contains("| prosqa | mixed | llama | 3 | 3e-3 | 3 | 50.0 ± 0.0 |"),
        "{md}"
    );
    assert!(
        md.contains("| prosqa | mixed | lime | 3 | 3e-3 | 3 | 63.3 ± "),
        "{md}"
    );
    assert!(md.contains("10 of them committed"), "{md}");
    let v: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| prosqa |") && l.contains(" − llama |"))
        .collect();
    assert!(v[0].contains("| +13.3 ± "), "{}", v[0]);
}

/// The committed REPRODUCTION.md is exactly what the committed results render to (nobody edits
/// it, or a result, by hand; re-render with `harness reproduce --render-only` after committing runs).
#[test]
fn committed_reproduction_md_re_renders_byte_for_byte() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::fs::read_to_string(root.join("REPRODUCTION.md")).unwrap();
    let fresh = render(&claims(), &root.join("results/reproduction")).unwrap();
    assert!(
        committed == fresh,
        "REPRODUCTION.md differs from a render of results/reproduction: run `harness reproduce --render-only`"
    );
}

/// The README's paragraph on what the committed runs say quotes REPRODUCTION.md: every signed
/// difference (`+85.0`, `-0.8`) and CI half-width (`± 2.1`) in it is in the rendered file, so the
/// summary cannot drift from the results it summarises.
#[test]
fn the_readme_verdict_paragraph_quotes_reproduction_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let report = std::fs::read_to_string(root.join("REPRODUCTION.md")).unwrap();
    let start = readme
        .find("**What the committed runs say**")
        .expect("README has the verdict paragraph");
    let para = &readme[start..start + readme[start..].find("\n\n").unwrap()];
    let words: Vec<&str> = para
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | ':'))
        .map(|w| w.trim_end_matches('.')) // a sentence's full stop
        .filter(|w| !w.is_empty())
        .collect();
    let mut quoted = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let number = |x: &str| x.contains('.') && x.chars().all(|c| c.is_ascii_digit() || c == '.');
        if (w.starts_with('+') || w.starts_with('-')) && number(&w[1..]) {
            quoted.push(w.to_string());
        }
        if *w == "±" && words.get(i + 1).is_some_and(|x| number(x)) {
            quoted.push(format!("± {}", words[i + 1]));
        }
    }
    assert!(quoted.len() >= 10, "{quoted:?}");
    for q in &quoted {
        assert!(
            report.contains(q.as_str()),
            "README quotes {q}, which REPRODUCTION.md does not show"
        );
    }
}

/// `harness rerun` retrains a run from its config.json alone: equal to the saved result, and a
/// saved figure that no training produced is reported as a difference (non-zero exit).
#[test]
fn rerun_checks_a_saved_run() {
    let dir = tempfile::tempdir().unwrap();
    let args = crate::cli::three_tiny_steps(
        "mqar",
        &["lime".to_string()],
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        2,
        dir.path(),
    );
    let spec = &harness::spec::resolve(&args).unwrap()[0];
    crate::cli::train_to_done(spec, dir.path());
    let run_dir = dir.path().join("runs").join(spec.id());
    let o = crate::cli::run(&["rerun", run_dir.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", crate::cli::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("reproduced"));

    let path = run_dir.join("result.json");
    let mut r: harness::records::RunResult =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    r.test_acc = r.test_acc.map(|x| x + 0.25);
    std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
    let o = crate::cli::run(&["rerun", run_dir.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    let err = crate::cli::stderr(&o);
    assert!(err.contains("the rerun differs: test_acc: saved"), "{err}");
    assert!(
        !err.contains("saved on"),
        "same machine, no machine note: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Made elsewhere: the difference comes with both machines' names, still on one line.
    r.device = "cpu (2 threads, Some Other CPU)".into();
    std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
    let o = crate::cli::run(&["rerun", run_dir.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    let err = crate::cli::stderr(&o);
    assert!(
        err.contains("saved on cpu (2 threads, Some Other CPU), rerun on cpu"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Floats survive a JSON round trip bit for bit (serde_json's `float_roundtrip`): without it the
/// committed 1/11 chance of an arith run parsed 1 ulp off, and `harness rerun` reported an exact
/// rerun of a committed run as different.
#[test]
fn result_floats_round_trip_exactly() {
    for x in [1.0 / 11.0, 1.1309772729873657, 0.36201792143386924f64] {
        let s = serde_json::to_string(&x).unwrap();
        let y: f64 = serde_json::from_str(&s).unwrap();
        assert_eq!(x.to_bits(), y.to_bits(), "{s}");
    }
}
