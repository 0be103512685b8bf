//! `harness reproduce`: protocols, lr selection without leakage, verdicts from committed run
//! folders, rendered byte for byte.

use crate::leaderboard::write_run;
use harness::claims::{claims, LRS, TUNING_SEED};
use harness::records::RunStatus;
use harness::report::{render, report};
use harness::reproduce::{arms, cells, choose_lr, committed, standing, Scale};
use harness::verdict::Tuned;
use harness::verdict::{Metric, Verdict};
use std::path::Path;

/// Every claim's CPU protocol: each cell can train the tuning seed at every lr of the grid and
/// evaluation seeds up to the last look; the protocol trains exactly the models its families
/// compare; a GPU protocol, where defined, resolves too. The rivals claim covers every built-in
/// variant.
#[test]
fn every_protocol_trains_what_its_families_compare() {
    for c in claims() {
        let a = arms(&c, Scale::Cpu).unwrap().unwrap();
        let cs = cells(&a);
        let models: std::collections::BTreeSet<&str> =
            cs.iter().map(|x| x.model.as_str()).collect();
        let compared: std::collections::BTreeSet<&str> = c.models().into_iter().collect();
        assert_eq!(models, compared, "{}", c.name);
        for cell in &cs {
            for lr in LRS {
                assert!(cell
                    .specs
                    .iter()
                    .any(|s| s.seed == TUNING_SEED && s.optim.lr == lr));
            }
            assert!(
                cell.specs.iter().any(|s| s.seed == 10),
                "{} {}",
                c.name,
                cell.model
            );
        }
        if c.name == "rivals" {
            assert_eq!(models.len(), models::Variant::ALL.len());
        }
        if c.gpu.is_some() {
            assert!(!arms(&c, Scale::Gpu).unwrap().unwrap().is_empty());
        }
    }
}

/// The claims in report order; the depth claim has one arm per depth (2, 3, 4 layers), the rivals
/// claim one for the rivals (the MQAR preset's 2 layers) and one for the router ablations at 4.
#[test]
fn the_claims_and_their_arms() {
    let names: Vec<&str> = claims().iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        ["mqar", "rivals", "aet", "prosqa", "depth", "generalization"]
    );
    let layers = |name: &str| -> Vec<(String, Vec<usize>)> {
        let c = claims().into_iter().find(|c| c.name == name).unwrap();
        arms(&c, Scale::Cpu)
            .unwrap()
            .unwrap()
            .iter()
            .map(|(label, specs)| {
                let mut l: Vec<usize> = specs.iter().map(|s| s.model_config.n_layers).collect();
                l.dedup();
                (label.clone(), l)
            })
            .collect()
    };
    assert_eq!(
        layers("depth"),
        [
            ("2 layers".to_string(), vec![2]),
            ("3 layers".to_string(), vec![3]),
            ("4 layers".to_string(), vec![4])
        ]
    );
    // The generalization claim: the depth claim's 2-layer cell, judged on k4 and k8.
    let c = claims()
        .into_iter()
        .find(|c| c.name == "generalization")
        .unwrap();
    for (_, specs) in arms(&c, Scale::Cpu).unwrap().unwrap() {
        for s in specs {
            let levels: Vec<&str> = s.eval_levels.iter().map(|e| e.level.as_str()).collect();
            assert_eq!((s.level.as_str(), levels), ("k2", vec!["k4", "k8"]));
            assert_eq!(s.judge, harness::overrides::Judge::Ood);
            assert_eq!(s.model_config.n_layers, 2);
        }
    }
    assert_eq!(
        layers("rivals"),
        [
            ("2 layers".to_string(), vec![2]),
            ("4 layers".to_string(), vec![4])
        ]
    );
}

fn tuned(lr: f64, acc: f64, loss: Option<f64>) -> Tuned {
    Tuned {
        lr,
        val_acc: Some(acc),
        val_loss: loss,
    }
}

/// The lr is the tuning seed's best on val; a tie within 1/n_val goes to the lower val loss and
/// is flagged; without losses, to the middle lr; a winner on the edge asks for the ladder's next
/// lr, at most twice; a diverged run ranks below every finished one.
#[test]
fn the_lr_is_chosen_on_the_tuning_seed_with_ties_and_edges_handled() {
    // Missing tuning runs are wanted, nothing is chosen.
    let s = choose_lr(&[tuned(1e-3, 0.5, None)], 512);
    assert_eq!((s.chosen, s.want.clone()), (None, vec![3e-4, 3e-3]));
    // A clear interior winner.
    let s = choose_lr(
        &[
            tuned(3e-4, 0.5, None),
            tuned(1e-3, 0.9, None),
            tuned(3e-3, 0.6, None),
        ],
        512,
    );
    assert_eq!((s.chosen, s.tie, s.edge), (Some(1e-3), false, false));
    // An exact tie between 1e-3 and 3e-3, broken by val loss (3e-3 lower), flagged; the
    // winner on the edge then wants 1e-2.
    let runs = [
        tuned(3e-4, 0.5, Some(1.0)),
        tuned(1e-3, 1.0, Some(0.02)),
        tuned(3e-3, 1.0, Some(0.01)),
    ];
    let s = choose_lr(&runs, 512);
    assert_eq!((s.chosen, s.want.clone()), (None, vec![1e-2]));
    let mut more = runs.to_vec();
    more.push(tuned(1e-2, 0.2, Some(3.0)));
    let s = choose_lr(&more, 512);
    assert_eq!(
        (s.chosen, s.tie, s.tie_by_loss, s.edge),
        (Some(3e-3), true, true, false)
    );
    // Within 1/n_val is a tie too; without losses the middle lr wins (flagged).
    let s = choose_lr(
        &[
            tuned(3e-4, 0.5, None),
            tuned(1e-3, 0.999, None),
            tuned(3e-3, 1.0, None),
        ],
        512,
    );
    assert_eq!((s.chosen, s.tie, s.tie_by_loss), (Some(1e-3), true, false));
    // Two extensions at most: 3e-3 → 1e-2 → 3e-2, and a winner at 3e-2 stays on the edge.
    let mut up = vec![
        tuned(3e-4, 0.1, None),
        tuned(1e-3, 0.2, None),
        tuned(3e-3, 0.3, None),
    ];
    assert_eq!(choose_lr(&up, 512).want, vec![1e-2]);
    up.push(tuned(1e-2, 0.4, None));
    assert_eq!(choose_lr(&up, 512).want, vec![3e-2]);
    up.push(tuned(3e-2, 0.5, None));
    let s = choose_lr(&up, 512);
    assert_eq!((s.chosen, s.edge, s.grid.len()), (Some(3e-2), true, 5));
    // A diverged run (no val accuracy) never wins.
    let s = choose_lr(
        &[
            tuned(3e-4, 0.1, None),
            Tuned {
                lr: 1e-3,
                val_acc: None,
                val_loss: None,
            },
            tuned(3e-3, 0.05, None),
        ],
        512,
    );
    // 3e-4 wins (1e-3 diverged), on the low edge: the ladder's 1e-4 is wanted next.
    assert_eq!((s.chosen, s.want), (None, vec![1e-4]));
}

/// Writes the MQAR claim's tuning runs (val 0.9 at lr 1e-3, 0.2 elsewhere) and evaluation seeds
/// 1..=n at 1e-3 with test accuracy `acc(model, level, seed)`; the tuning seed's own test
/// accuracy is 1.0 everywhere, so a statistic that included it would show.
fn fake_mqar(dir: &Path, n: u64, acc: impl Fn(&str, &str, u64) -> f64) {
    let c = &claims()[0];
    for (_, specs) in arms(c, Scale::Cpu).unwrap().unwrap() {
        for s in specs {
            if s.seed == TUNING_SEED && LRS.contains(&s.optim.lr) {
                let val = if s.optim.lr == 1e-3 { 0.9 } else { 0.2 };
                write_run(dir, &s, val, 1.0, RunStatus::Ok);
            } else if s.seed >= 1 && s.seed <= n && s.optim.lr == 1e-3 {
                write_run(dir, &s, 0.5, acc(&s.model, &s.level, s.seed), RunStatus::Ok);
            }
        }
    }
}

fn rows<'a>(md: &'a str, prefix: &str) -> Vec<&'a str> {
    md.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn statistics_never_include_the_tuning_seed() {
    let dir = tempfile::tempdir().unwrap();
    fake_mqar(dir.path(), 5, |_, _, seed| 0.4 + 0.01 * seed as f64);
    let md = render(&claims()[..1], dir.path()).unwrap();
    // Seeds 1..=5: 41..45 %, mean 43.0; the tuning seed's 100% appears nowhere.
    let r = rows(&md, "| mqar | kv4 | lime |");
    assert_eq!(r.len(), 1, "{md}");
    assert!(
        r[0].contains("| 5 | 41.0 42.0 43.0 44.0 45.0 | 0/5 | 43.0 ± "),
        "{}",
        r[0]
    );
    let c = &claims()[0];
    let a = arms(c, Scale::Cpu).unwrap().unwrap();
    let recs = committed(dir.path()).unwrap();
    let st = standing(c, &a, &recs, dir.path()).unwrap();
    for ev in &st.evaluation {
        assert!(ev.iter().all(|r| r.result.seed != TUNING_SEED));
    }
}

/// `reproduce --stale` lists exactly the committed runs no protocol resolves to: a protocol's own
/// runs are kept, a run of another setting (here MQAR at a budget no claim uses) is listed.
#[test]
fn stale_runs_are_the_ones_no_protocol_wants() {
    let dir = tempfile::tempdir().unwrap();
    fake_mqar(dir.path(), 1, |_, _, _| 0.5);
    let c = &claims()[0];
    let mut other = arms(c, Scale::Cpu).unwrap().unwrap()[0].1[0].clone();
    other.budget_flops *= 2.0;
    write_run(dir.path(), &other, 0.5, 0.5, RunStatus::Ok);
    let stale = harness::reproduce::stale(dir.path()).unwrap();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].ends_with(other.id()));
    assert!(committed(dir.path()).unwrap().len() > 1);
}

/// The MQAR claim end to end on fake runs: tuning first, then five evaluation seeds; 5/5 solved
/// against 0/5 is reproduced (Boschloo 2⁻⁹ survives Holm over the family of two), three seeds
/// continue to five, and 5/5 against 1/5 asks for seven.
#[test]
fn verdicts_follow_the_rules_on_fake_runs() {
    let c = &claims()[0];
    let a = arms(c, Scale::Cpu).unwrap().unwrap();
    // Nothing committed: the tuning runs are wanted (3 lrs × 2 models × 2 levels).
    let empty = tempfile::tempdir().unwrap();
    let st = standing(c, &a, &[], empty.path()).unwrap();
    assert_eq!(st.wanted.len(), 12);
    assert!(st.wanted.iter().all(|s| s.seed == TUNING_SEED));

    let three = tempfile::tempdir().unwrap();
    fake_mqar(
        three.path(),
        3,
        |m, _, _| if m == "lime" { 1.0 } else { 0.15 },
    );
    let recs = committed(three.path()).unwrap();
    let st = standing(c, &a, &recs, three.path()).unwrap();
    // Five seeds per cell wanted at 1e-3: 12 tuning + 4 × 5.
    assert_eq!(st.wanted.len(), 32);
    assert_eq!(st.missing(&recs).len(), 8);
    let md = render(&claims()[..1], three.path()).unwrap();
    assert!(md.contains("continue: 5 seeds per arm next"), "{md}");

    let dir = tempfile::tempdir().unwrap();
    fake_mqar(dir.path(), 5, |m, level, seed| match (m, level) {
        ("lime", _) => 1.0,
        (_, "kv4") => [0.3, 1.0, 0.2, 0.2, 0.2][seed as usize - 1],
        _ => 0.15,
    });
    let recs = committed(dir.path()).unwrap();
    let st = standing(c, &a, &recs, dir.path()).unwrap();
    let judged: Vec<_> = st.families[0]
        .iter()
        .map(|(_, j)| j.clone().unwrap())
        .collect();
    // kv4: lime 5/5 vs llama 1/5: Boschloo p ≈ 0.048 is not enough at 0.0221: continue to 7.
    assert_eq!(judged[0].verdict, Verdict::Continue { seeds: 7 });
    assert_eq!(judged[0].test.as_ref().unwrap().metric, Metric::SolveRate);
    // kv8: 5/5 vs 0/5.
    let t = judged[1].test.as_ref().unwrap();
    assert_eq!(judged[1].verdict, Verdict::Reproduced { smaller: false });
    assert!((t.p - 2.0 / 1024.0).abs() < 1e-9 && (t.p_holm - 4.0 / 1024.0).abs() < 1e-9);
    // The rules now want 7 seeds of the kv4 cells only.
    let missing = st.missing(&recs);
    assert_eq!(missing.len(), 4, "{missing:?}");
    assert!(missing
        .iter()
        .all(|s| s.level == "kv4" && s.seed >= 6 && s.seed <= 7));
    let md = render(&claims()[..1], dir.path()).unwrap();
    let glance = rows(&md, "| `mqar` |");
    assert_eq!(glance.len(), 2, "{md}");
    assert!(glance[1].contains("| **reproduced** |"), "{}", glance[1]);
    assert!(
        glance[0].contains("continue: 7 seeds per arm next"),
        "{}",
        glance[0]
    );
    // Byte-identical on a second render.
    assert_eq!(md, render(&claims()[..1], dir.path()).unwrap());
}

/// At the MQAR preset's 2 layers `lime-last-2` and `lime-first-2` compute LIMe's function (same
/// parameters, logits and gradients from one seed): no ablation there; at 4 layers they differ,
/// and so do lime and llama everywhere.
#[test]
fn an_arm_identical_to_its_baseline_is_detected() {
    let cfg = |v: &str, layers: usize| {
        let mut c = models::Config::mha(models::Variant::from_name(v).unwrap(), 64, 32, layers, 2);
        c.d_ff = 64;
        c
    };
    let same = harness::check_device::same_function;
    assert!(same(&cfg("lime-last-2", 2), &cfg("lime", 2)).unwrap());
    assert!(same(&cfg("lime-first-2", 2), &cfg("lime", 2)).unwrap());
    assert!(!same(&cfg("lime-last-2", 4), &cfg("lime", 4)).unwrap());
    assert!(!same(&cfg("lime", 2), &cfg("llama", 2)).unwrap());
    assert!(!same(&cfg("lime-avg", 2), &cfg("lime", 2)).unwrap());
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

/// Every *reproduced* (or *differs*) verdict of the committed results survives an exact test at
/// 0.05 recomputed here from its per-seed values, by brute force: the permutation test over every
/// relabelling for mean metrics, Fisher's test over every table for solve rates.
#[test]
fn every_committed_positive_verdict_survives_an_exact_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let results = root.join("results/reproduction");
    let recs = committed(&results).unwrap();
    let mut checked = 0;
    for c in claims() {
        let a = arms(&c, Scale::Cpu).unwrap().unwrap();
        let st = standing(&c, &a, &recs, &results).unwrap();
        for (l, j) in st.families.iter().flatten() {
            let Some(j) = j else { continue };
            if !j.verdict.asserts_difference() {
                continue;
            }
            let t = j.test.as_ref().unwrap();
            let n = t.n;
            let acc = |i: usize| -> Vec<f64> {
                st.evaluation[i][..n]
                    .iter()
                    .map(|r| r.result.test_acc.unwrap_or(0.0))
                    .collect()
            };
            let (xa, xb) = (acc(l.challenger), acc(l.baseline));
            let p = match t.metric {
                Metric::SolveRate => {
                    let k = |x: &[f64]| x.iter().filter(|&&v| v >= c.rules.tau).count();
                    fisher_brute(k(&xa), n, k(&xb), n)
                }
                Metric::Accuracy => permutation_brute(&xa, &xb),
                // FLOPs-to-τ: from metrics.jsonl, through the same reader as the rules.
                Metric::FlopsToTau => {
                    let f = |i: usize| -> Vec<f64> {
                        st.evaluation[i][..n]
                            .iter()
                            .map(|r| harness::leaderboard::flops_to_tau(&results, r, c.rules.tau))
                            .collect()
                    };
                    permutation_brute(&f(l.challenger), &f(l.baseline))
                }
            };
            assert!(
                p <= 0.05,
                "{} {} {}: exact p {p}",
                c.name,
                l.level,
                st.cells[l.challenger].model
            );
            checked += 1;
        }
    }
    eprintln!("{checked} positive verdicts checked");
}

/// Fisher's two-sided exact p from integer binomials.
fn fisher_brute(k1: usize, n1: usize, k2: usize, n2: usize) -> f64 {
    fn c(n: usize, k: usize) -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }
    let k = k1 + k2;
    let p = |x: usize| c(n1, x) * c(n2, k - x) / c(n1 + n2, k);
    let obs = p(k1);
    (k.saturating_sub(n2)..=k.min(n1))
        .map(p)
        .filter(|&q| q <= obs * (1.0 + 1e-7))
        .sum()
}

/// The permutation p by recursion over every subset (independent of the library's enumerator).
fn permutation_brute(a: &[f64], b: &[f64]) -> f64 {
    let all: Vec<f64> = a.iter().chain(b).copied().collect();
    let total: f64 = all.iter().sum();
    let (n, k) = (all.len(), a.len());
    let obs = (a.iter().sum::<f64>() / k as f64 - b.iter().sum::<f64>() / (n - k) as f64).abs();
    fn walk(all: &[f64], i: usize, left: usize, sum: f64, out: &mut Vec<f64>) {
        if left == 0 {
            out.push(sum);
            return;
        }
        if all.len() - i < left {
            return;
        }
        walk(all, i + 1, left - 1, sum + all[i], out);
        walk(all, i + 1, left, sum, out);
    }
    let mut sums = Vec::new();
    walk(&all, 0, k, 0.0, &mut sums);
    let hits = sums
        .iter()
        .filter(|&&s| (s / k as f64 - (total - s) / (n - k) as f64).abs() >= obs - 1e-12)
        .count();
    hits as f64 / sums.len() as f64
}

/// The README's paragraph on what the committed runs say quotes REPRODUCTION.md: every signed
/// difference (`+85.0`, `-0.8`) in it is in the rendered file, so the summary cannot drift from
/// the results it summarises.
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
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | ':' | '[' | ']'))
        .map(|w| w.trim_end_matches('.')) // a sentence's full stop
        .filter(|w| !w.is_empty())
        .collect();
    let mut quoted = Vec::new();
    for w in &words {
        let number = |x: &str| x.contains('.') && x.chars().all(|c| c.is_ascii_digit() || c == '.');
        if (w.starts_with('+') || w.starts_with('-')) && number(&w[1..]) {
            quoted.push(w.to_string());
        }
    }
    assert!(quoted.len() >= 3, "{quoted:?}");
    for q in &quoted {
        assert!(
            report.contains(q.as_str()),
            "README quotes {q}, which REPRODUCTION.md does not show"
        );
    }
}

/// The forest plot draws one interval per comparison, the ±δ band, per-seed dots and the
/// paper's tick.
#[test]
fn the_forest_plot_draws_what_the_report_says() {
    let dir = tempfile::tempdir().unwrap();
    fake_mqar(dir.path(), 5, |m, _, seed| {
        if m == "lime" {
            0.6 + 0.01 * seed as f64
        } else {
            0.4
        }
    });
    let r = report(&claims()[..1], dir.path()).unwrap();
    let (_, rows) = &r.forest[0];
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].seeds.len(), 5);
    let svg = dir.path().join("mqar-differences.svg");
    let mut with_paper = rows.clone();
    with_paper[0].paper = Some(30.0);
    harness::plots::forest_plot(&svg, "mqar", &with_paper).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("mqar kv4 lime − llama"), "labels missing");
    // Two big dots (the differences) and ten seed dots.
    assert_eq!(text.matches("<circle").count(), 12);
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

/// `harness calibrate` on a small task: MQAR with 16 tokens and 2 pairs, a one-layer llama,
/// steps from easy (1,600) to hard (50). The bisection trains the baseline at the candidates it
/// needs (ordinary runs under --out) and lands in the default band (25–75% of the way from the
/// measured floor to 100%); a band the wrong way round is a one-line error.
#[test]
fn calibrate_lands_a_small_task_in_the_band() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "calibrate",
        "--task",
        "mqar",
        "--models",
        "llama",
        "--set",
        "vocab_size=16",
        "--set",
        "seq_len=16",
        "--set",
        "num_kv_pairs=2",
        "--model-set",
        "d_model=16",
        "--model-set",
        "n_layers=1",
        "--model-set",
        "n_heads=2",
        "--model-set",
        "d_ff=32",
        "--match",
        "steps",
        "--batch-size",
        "16",
        "--n-val",
        "32",
        "--n-test",
        "32",
        "--lr",
        "3e-3",
        "--knob",
        "steps",
        "--values",
        "1600,800,400,200,100,50",
        "--out",
        out,
        "--quiet",
    ];
    let o = crate::cli::run(&args);
    assert!(o.status.success(), "{}", crate::cli::stderr(&o));
    let cal: harness::calibrate::Calibration = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("calibration/mqar-llama-steps.json")).unwrap(),
    )
    .unwrap();
    assert!(cal.in_band, "{cal:?}");
    let chosen = cal
        .tried
        .iter()
        .find(|t| Some(&t.value) == cal.chosen.as_ref())
        .unwrap();
    assert!((0.25..=0.75).contains(&chosen.position), "{cal:?}");
    // Each candidate tried is an ordinary run folder with its result.
    for t in &cal.tried {
        assert!(dir
            .path()
            .join("runs")
            .join(&t.run)
            .join("result.json")
            .is_file());
        assert!(t.floor >= 1.0 / 16.0 - 1e-12);
    }
    let mut bad = args.to_vec();
    bad.extend(["--band", "0.8,0.2"]);
    let o = crate::cli::run(&bad);
    assert!(!o.status.success());
    let err = crate::cli::stderr(&o);
    assert!(err.contains("--band must be lo,hi"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A calibrated protocol cites a committed `harness calibrate` output whose chosen value landed in
/// the band, and whose chosen run is the protocol's own tuning run of the calibrated baseline
/// (same spec id) — so the protocol runs exactly what was calibrated; the calibration's command
/// names its knob. A fixed protocol says why.
#[test]
fn calibrated_protocols_run_what_was_calibrated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut calibrated = 0;
    for c in claims() {
        match c.setting {
            harness::claims::Setting::Calibrated { file, command } => {
                calibrated += 1;
                let text = std::fs::read_to_string(root.join(file)).unwrap();
                let cal: harness::calibrate::Calibration = serde_json::from_str(&text).unwrap();
                assert!(cal.in_band, "{}: {file}", c.name);
                assert!(
                    command.contains(&format!("--knob {}", cal.knob)),
                    "{command}"
                );
                let chosen = cal.chosen.clone().unwrap();
                let run = &cal.tried.iter().find(|t| t.value == chosen).unwrap().run;
                let a = arms(&c, Scale::Cpu).unwrap().unwrap();
                let own = cells(&a).iter().any(|cell| {
                    cell.model == cal.model
                        && cell
                            .specs
                            .iter()
                            .any(|s| s.seed == TUNING_SEED && &s.id() == run)
                });
                assert!(
                    own,
                    "{}: {run} is not one of the protocol's tuning runs",
                    c.name
                );
                // The run it chose is committed beside it.
                let dir = Path::new(file).parent().unwrap().parent().unwrap();
                assert!(root
                    .join(dir)
                    .join("runs")
                    .join(run)
                    .join("result.json")
                    .is_file());
            }
            harness::claims::Setting::Fixed(why) => assert!(why.len() > 40, "{}", c.name),
        }
    }
    assert!(calibrated >= 1);
}

/// `--val-metric task` selects on what test reports: for an answer task the early-stopping step
/// is chosen by the verifier's score of greedy generations on val, so the result's val accuracy
/// is the generation accuracy of the saved best weights on the val split; the default
/// (teacher-forced) keeps the ids runs had before the option existed.
#[test]
fn val_is_scored_with_the_tasks_metric_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = crate::cli::three_tiny_steps(
        "arith",
        &["llama".to_string()],
        &["mode=int", "output=cot", "max_value=5"],
        1,
        dir.path(),
    );
    let teacher = harness::spec::resolve(&args).unwrap().remove(0);
    assert!(!serde_json::to_string(&teacher)
        .unwrap()
        .contains("val_metric"));
    args.val_metric = harness::overrides::ValMetric::Task;
    args.n_val = Some(12);
    let spec = harness::spec::resolve(&args).unwrap().remove(0);
    assert_ne!(spec.id(), teacher.id());
    let r = crate::cli::train_to_done(&spec, dir.path());
    let (model, task, dev) = best_model(&spec, dir.path());
    let val = tasks::generate_range(task.as_ref(), tasks::Split::Val, 0, spec.n_val);
    let gen = harness::eval::generation_accuracy(&model, task.as_ref(), &val, &dev).unwrap();
    assert_eq!(r.val_acc, Some(gen));
    // Worked solutions also report how many test generations are valid at every step.
    let test = tasks::generate_range(task.as_ref(), tasks::Split::Test, 0, spec.n_test);
    let (acc, steps) =
        harness::eval::generation_scores(&model, task.as_ref(), &test, &dev).unwrap();
    assert_eq!((r.test_acc, r.test_steps_valid), (Some(acc), steps));
    assert!(steps.is_some());
}

/// ProsQA's two-way choice is scored beside its generated answer: a run's `test_choice_acc`
/// equals, to one example, the fraction of test examples where the saved model — run on each
/// example alone, unbatched — gives the answer a higher logit than the distractor at the
/// decisive position.
#[test]
fn prosqa_runs_report_the_two_way_choice() {
    let dir = tempfile::tempdir().unwrap();
    let mut args =
        crate::cli::three_tiny_steps("prosqa", &["llama".to_string()], &[], 1, dir.path());
    args.n_test = Some(16);
    let spec = harness::spec::resolve(&args).unwrap().remove(0);
    let r = crate::cli::train_to_done(&spec, dir.path());
    let got = r.test_choice_acc.expect("prosqa reports the choice");
    let (model, task, dev) = best_model(&spec, dir.path());
    let test = tasks::generate_range(task.as_ref(), tasks::Split::Test, 0, spec.n_test);
    let mut right = 0;
    for ex in &test {
        let c = task.choice(ex).unwrap();
        let ids =
            candle_core::Tensor::from_vec(ex.tokens.clone(), (1, ex.tokens.len()), &dev).unwrap();
        let logits = model.forward(&ids).unwrap(); // (1, T, V)
        let row: Vec<f32> = logits
            .get(0)
            .unwrap()
            .get(c.position as usize)
            .unwrap()
            .to_vec1()
            .unwrap();
        right += usize::from(row[c.right as usize] > row[c.wrong as usize]);
    }
    let want = right as f64 / test.len() as f64;
    assert!(
        (got - want).abs() <= 1.0 / test.len() as f64 + 1e-12,
        "{got} vs {want}"
    );
    // Other tasks pose no choice.
    let mqar = tasks::build("mqar", None, &[]).unwrap();
    let ex = tasks::generate_range(mqar.as_ref(), tasks::Split::Test, 0, 1).remove(0);
    assert!(mqar.choice(&ex).is_none());
}

/// `--val-metric choice` selects ProsQA on its two-way choice and judges the run on it: the val
/// accuracy is the saved weights' choice accuracy on val, the judged number is test's choice
/// accuracy (not the generated answer's score), and the floor is exactly 1/2. A task that poses
/// no choice is refused with one line.
#[test]
fn a_run_selected_on_the_choice_is_judged_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut args =
        crate::cli::three_tiny_steps("prosqa", &["llama".to_string()], &[], 1, dir.path());
    args.val_metric = harness::overrides::ValMetric::Choice;
    args.n_val = Some(12);
    args.n_test = Some(12);
    let spec = harness::spec::resolve(&args).unwrap().remove(0);
    assert!(serde_json::to_string(&spec).unwrap().contains("\"choice\""));
    let r = crate::cli::train_to_done(&spec, dir.path());
    let (model, task, dev) = best_model(&spec, dir.path());
    let val = tasks::generate_range(task.as_ref(), tasks::Split::Val, 0, spec.n_val);
    let on_val = harness::eval::choice_accuracy(
        &model,
        task.as_ref(),
        &val,
        spec.seq_len,
        &dev,
        spec.batch_size,
    )
    .unwrap();
    assert_eq!(r.val_acc, on_val);
    let record = harness::leaderboard::Record {
        result: r.clone(),
        spec: spec.clone(),
        analysis: None,
    };
    assert_eq!(record.judged_acc(), r.test_choice_acc);
    assert!(r.test_choice_acc.is_some());
    let cell = harness::reproduce::Cell {
        task: spec.task.clone(),
        level: spec.level.clone(),
        model: spec.model.clone(),
        arm: String::new(),
        specs: vec![spec.clone()],
    };
    let floor = harness::reproduce::floor_of(&cell, &mut Default::default()).unwrap();
    assert_eq!(floor, 0.5);

    let mut mqar = crate::cli::three_tiny_steps("mqar", &["llama".to_string()], &[], 1, dir.path());
    mqar.val_metric = harness::overrides::ValMetric::Choice;
    let err = harness::spec::resolve(&mqar).unwrap_err().to_string();
    assert!(err.contains("--val-metric choice needs a task"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

/// A diverged evaluation run is not dropped (survivorship): it counts at the floor, unsolved,
/// and its cell is flagged.
#[test]
fn a_diverged_seed_counts_at_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    fake_mqar(
        dir.path(),
        5,
        |m, _, _| if m == "lime" { 1.0 } else { 0.15 },
    );
    let c = &claims()[0];
    let a = arms(c, Scale::Cpu).unwrap().unwrap();
    // lime's seed 3 at kv8 diverged.
    let spec = a
        .iter()
        .flat_map(|(_, s)| s)
        .find(|s| s.model == "lime" && s.level == "kv8" && s.seed == 3 && s.optim.lr == 1e-3)
        .unwrap();
    write_run(dir.path(), spec, 0.0, 0.0, RunStatus::Diverged);
    let recs = committed(dir.path()).unwrap();
    let st = standing(c, &a, &recs, dir.path()).unwrap();
    let (l, j) = &st.families[0][1];
    assert_eq!(l.level, "kv8");
    let t = j.as_ref().unwrap().test.as_ref().unwrap();
    assert_eq!(t.solved, (4, 0), "{t:?}");
    let rules = c.rules(&c.families[0], "kv8", st.floors[l.challenger].unwrap());
    let ev: Vec<_> = st.evaluation[l.challenger].iter().collect();
    let d = harness::leaderboard::evidence(dir.path(), &ev, &rules);
    assert_eq!(d.acc[2], rules.floor);
    let md = render(&claims()[..1], dir.path()).unwrap();
    assert!(md.contains("diverged seed"), "{md}");
}

/// `reproduce --plan` lists what the rules want next and trains nothing; a filter naming no
/// model or level of the selected claims is a one-line error.
#[test]
fn reproduce_plan_and_its_filters() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().to_str().unwrap();
    let o = crate::cli::run(&[
        "reproduce",
        "--claims",
        "mqar",
        "--plan",
        "--results",
        results,
    ]);
    assert!(o.status.success(), "{}", crate::cli::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // Nothing committed: the tuning seed at each of 3 lrs, 2 models, 2 levels.
    assert_eq!(out.lines().count(), 12, "{out}");
    assert!(out.lines().all(|l| l.contains(" seed 0 ")), "{out}");
    assert!(!dir.path().join("runs").exists());
    let o = crate::cli::run(&[
        "reproduce",
        "--claims",
        "mqar",
        "--models",
        "gpt",
        "--plan",
        "--results",
        results,
    ]);
    assert!(!o.status.success());
    let err = crate::cli::stderr(&o);
    assert!(
        err.contains("`gpt` is in none of the selected claims"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A finished run's saved best weights as a model, with its task (on the CPU).
fn best_model(
    spec: &harness::spec::RunSpec,
    out: &Path,
) -> (models::Model, Box<dyn tasks::Task>, candle_core::Device) {
    let dev = candle_core::Device::Cpu;
    let best = out.join("runs").join(spec.id()).join("best.safetensors");
    let w = candle_core::safetensors::load(best, &dev).unwrap();
    let model = harness::train::run_model(spec, &w, &dev).unwrap();
    (model, harness::train::task_from_spec(spec).unwrap(), dev)
}
