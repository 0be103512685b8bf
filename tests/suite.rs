//! `harness suite`: the scorecard's protocol, aggregates and A/A noise floor on fake committed
//! runs, recomputed here from the accuracies; the settings against their calibration evidence.

use crate::leaderboard::write_run;
use harness::aggregate as agg;
use harness::claims::{LRS, TUNING_SEED};
use harness::records::RunStatus;
use harness::reproduce::Scale;
use harness::suite::{self, AA_SEEDS, AGG_SEEDS};

fn models(names: &[&str]) -> Vec<String> {
    suite::models(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// Fake committed runs of a two-model suite: tuning runs (val 0.9 at lr 1e-3, 0.2 elsewhere,
/// test 1.0 so a statistic that read them would show) and evaluation seeds at 1e-3 — llama
/// seeds 1..=10, lime 1..=5 — whose test accuracy is `acc(family index, model, seed)`.
fn fake_suite(dir: &std::path::Path, acc: impl Fn(usize, &str, u64) -> f64) {
    let models = models(&["llama", "lime"]);
    // A run judged on the two-way choice (ProsQA's) reports it as its choice accuracy too.
    let write = |s: &harness::spec::RunSpec, val: f64, test: f64| {
        write_run(dir, s, val, test, RunStatus::Ok);
        if s.val_metric == harness::overrides::ValMetric::Choice {
            let path = dir.join("runs").join(s.id()).join("result.json");
            let mut r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            r["test_choice_acc"] = test.into();
            std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        }
    };
    for (f, (_, specs)) in suite::arms(&models, Scale::Cpu).unwrap().iter().enumerate() {
        for s in specs {
            let last = if s.model == "llama" {
                AA_SEEDS
            } else {
                AGG_SEEDS
            } as u64;
            if s.seed == TUNING_SEED && LRS.contains(&s.optim.lr) {
                let val = if s.optim.lr == 1e-3 { 0.9 } else { 0.2 };
                write(s, val, 1.0);
            } else if s.seed >= 1 && s.seed <= last && s.optim.lr == 1e-3 {
                write(s, 0.5, acc(f, &s.model, s.seed));
            }
        }
    }
}

/// On fake runs: every family complete, the aggregates equal to the aggregate functions on the
/// normalized scores recomputed here (tuning seed never read), the A/A numbers at their closed
/// forms, the figure written, and a re-render byte-identical.
#[test]
fn the_scorecard_aggregates_what_the_runs_show() {
    let dir = tempfile::tempdir().unwrap();
    // lime beats llama by 0.1 everywhere; llama's seeds 6–10 sit above its seeds 1–5.
    let acc = |f: usize, m: &str, seed: u64| {
        let base = 0.55 + 0.02 * f as f64 + 0.001 * seed as f64;
        if m == "lime" {
            base + 0.1
        } else {
            base
        }
    };
    fake_suite(dir.path(), acc);
    let models = models(&["llama", "lime"]);
    let arms = suite::arms(&models, Scale::Cpu).unwrap();
    let claim = suite::claim(&models);
    let r = suite::render(&models, &arms, &claim, dir.path(), false).unwrap();
    let j = &r.json;
    assert_eq!(j.complete_families.len(), suite::SETTINGS.len());
    // Recompute: strata[family][seed] of normalized scores.
    let floors: Vec<f64> = j.families.iter().map(|f| f.floor.unwrap()).collect();
    let strata = |m: &str, seeds: std::ops::RangeInclusive<u64>| -> Vec<Vec<f64>> {
        (0..floors.len())
            .map(|f| {
                seeds
                    .clone()
                    .map(|s| agg::normalized(acc(f, m, s), floors[f]))
                    .collect()
            })
            .collect()
    };
    let (llama, lime) = (strata("llama", 1..=5), strata("lime", 1..=5));
    let a = &j.aggregates;
    assert_eq!(a[0].iqm, agg::iqm(&agg::flatten(&llama)));
    assert_eq!(a[1].mean, agg::mean(&agg::flatten(&lime)));
    // lime is above llama on every seed pair of every family.
    assert_eq!(a[1].poi_llama, Some(1.0));
    assert_eq!(a[0].poi_lime, Some(0.0));
    assert_eq!(a[1].poi_llama_ci, Some((1.0, 1.0)));
    assert_eq!((a[0].mean_rank, a[1].mean_rank), (Some(2.0), Some(1.0)));
    // The IQM interval brackets the IQM.
    let (lo, hi) = a[1].iqm_ci.unwrap();
    assert!(lo <= a[1].iqm.unwrap() && a[1].iqm.unwrap() <= hi);
    // A/A: seeds 6–10 above 1–5 in every family → P = 1 on the committed split.
    let nf = &j.noise_floor;
    assert_eq!(nf.families, suite::SETTINGS.len());
    assert_eq!(nf.poi, Some(1.0));
    assert_eq!(nf.splits, 126);
    let d = agg::iqm(&agg::flatten(&strata("llama", 6..=10))).unwrap()
        - agg::iqm(&agg::flatten(&llama)).unwrap();
    assert!((nf.iqm_diff.unwrap() - d).abs() < 1e-12);
    // The performance profile: lime's curve never below llama's.
    let (pl, pm) = (&j.profile[0].fraction, &j.profile[1].fraction);
    assert!(pm.iter().zip(pl).all(|(m, l)| m >= l));
    // Written and re-rendered byte for byte.
    let again = suite::render(&models, &arms, &claim, dir.path(), false).unwrap();
    assert_eq!(r.md, again.md);
    assert!(
        r.md.contains("| lime |") && r.md.contains("P(better than llama)"),
        "{}",
        r.md
    );
    assert!(!r.md.contains("incomplete"), "{}", r.md);
}

/// `--quick` reads only the tuning seed at each family's calibration lr and says it is not a
/// verdict.
#[test]
fn quick_reads_one_run_per_cell_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    fake_suite(dir.path(), |_, _, _| 0.5);
    let models = models(&["llama", "lime"]);
    let arms = suite::arms(&models, Scale::Cpu).unwrap();
    let claim = suite::claim(&models);
    let r = suite::render(&models, &arms, &claim, dir.path(), true).unwrap();
    assert!(r.md.contains("NOT A VERDICT"));
    for f in &r.json.families {
        for s in &f.models {
            assert_eq!(s.scores.len(), 1);
            assert_eq!(s.acc, Some(1.0), "the tuning run's test accuracy");
            assert!(s.verdict.is_none());
        }
    }
    assert!(r.json.aggregates[0].iqm_ci.is_none());
}

/// The models a suite takes: llama first, known, none twice — else one line, nothing written.
#[test]
fn suite_models_are_checked() {
    let bad = |m: &[&str], needle: &str| {
        let e = suite::models(&m.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err();
        assert!(format!("{e:#}").contains(needle), "{e:#}");
    };
    bad(&["lime", "llama"], "must start with llama");
    bad(&["llama", "lime", "lime"], "twice");
    bad(&["llama", "nope"], "unknown model `nope`");
    assert_eq!(models(&[]).len(), suite::DEFAULT_MODELS.len());
}

/// Every family's setting is the value its committed calibration chose:
/// `harness calibrate` at the setting, llama, the family's lr, seed 0 — and the calibration's
/// chosen run is the suite's own tuning run of llama at that lr.
#[test]
fn suite_settings_are_their_calibrations() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/suite");
    let models = models(&["llama"]);
    let arms = suite::arms(&models, Scale::Cpu).unwrap();
    let mut checked = 0;
    for (f, (_, specs)) in suite::SETTINGS.iter().zip(&arms) {
        let path = root.join(f.calibration_file());
        let text = std::fs::read_to_string(&path).unwrap();
        let cal: harness::calibrate::Calibration = serde_json::from_str(&text).unwrap();
        let value = f.calibrated_value();
        assert_eq!(cal.chosen.as_ref(), Some(&value), "{}", f.task);
        let run = cal
            .tried
            .iter()
            .find(|t| t.value == value)
            .unwrap()
            .run
            .clone();
        let ours = specs
            .iter()
            .find(|s| s.seed == TUNING_SEED && s.optim.lr == f.lr)
            .unwrap();
        assert_eq!(run, ours.id(), "{}", f.task);
        checked += 1;
    }
    // Every family's calibration is committed.
    assert_eq!(checked, suite::SETTINGS.len());
}

/// SUITE.md and SUITE-quick.md are pure functions of the committed runs: re-rendered from
/// `results/suite/` they are byte for byte what is committed.
#[test]
fn committed_suite_md_re_renders_byte_for_byte() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let results = repo.join("results/suite");
    let mut checked = 0;
    for (file, quick, names) in [
        ("SUITE.md", false, &[][..]),
        ("SUITE-quick.md", true, &["llama", "lime"][..]),
    ] {
        let Ok(committed) = std::fs::read_to_string(repo.join(file)) else {
            continue;
        };
        let models = models(names);
        let arms = suite::arms(&models, Scale::Cpu).unwrap();
        let claim = suite::claim(&models);
        let r = suite::render(&models, &arms, &claim, &results, quick).unwrap();
        assert!(r.md == committed, "{file} differs from its re-render");
        checked += 1;
    }
    eprintln!("{checked} committed suite reports re-rendered");
}
