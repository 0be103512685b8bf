//! `--pack N`: seeds and learning rates of a cell trained packed into one model leave the run
//! folders the unpacked runs leave — same ids, same results (test accuracy within one example,
//! loss curves within 1e-4 relative) — resume per run from their own checkpoints, and a run that
//! diverges is recorded as diverged while the others go on as if alone.

use crate::cli::{harness, losses, result_files, stderr, tiny_run};
use serde_json::Value;
use std::path::Path;

/// The tiny run for `models`, 2 seeds × 2 lrs, `steps` steps, plus `extra` flags.
fn grid(out: &Path, models: &str, lrs: &str, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args = tiny_run(out);
    for (flag, value) in [
        ("--models", models.to_string()),
        ("--lr", lrs.to_string()),
        ("--steps", steps.to_string()),
    ] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value;
    }
    args.extend(["--seeds", "2"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn train(args: &[String]) {
    let o = harness().args(args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Packed and unpacked results of the same runs agree: ids, every field but the clock and the
/// throughput, test accuracy within one example, losses within 1e-4 relative.
fn assert_same_runs(a: &Path, b: &Path) {
    let (ra, rb) = (result_files(a), result_files(b));
    let ids = |r: &[(String, Value)]| r.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&ra), ids(&rb), "packing changed the run folders");
    for ((id, x), (_, y)) in ra.iter().zip(&rb) {
        let n_test = 16.0;
        for key in ["test_acc", "val_acc", "test_token_acc"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1.0 / n_test + 1e-9,
                "{id}: {key} {u} vs {v}"
            );
        }
        for key in [
            "status",
            "steps",
            "tokens_seen",
            "flops_spent",
            "params",
            "seed",
            "lr",
        ] {
            assert_eq!(x[key], y[key], "{id}: {key}");
        }
        let (u, v) = (
            x["final_loss"].as_f64().unwrap(),
            y["final_loss"].as_f64().unwrap(),
        );
        assert!(
            (u - v).abs() <= 1e-4 * u.abs(),
            "{id}: final loss {u} vs {v}"
        );
        let (ca, cb) = (
            losses(&a.join("runs").join(id)),
            losses(&b.join("runs").join(id)),
        );
        assert_eq!(ca.len(), cb.len(), "{id}");
        for ((s, u), (t, v)) in ca.iter().zip(&cb) {
            assert_eq!(s, t);
            assert!(
                (u - v).abs() <= 1e-4 * u.abs(),
                "{id} step {s}: loss {u} vs {v}"
            );
        }
        for f in ["config.json", "best.safetensors"] {
            assert!(b.join("runs").join(id).join(f).is_file(), "{id}: no {f}");
        }
    }
}

#[test]
fn packed_runs_leave_the_folders_and_numbers_of_unpacked_ones() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let models = "llama,lime,resformer,denseformer"; // denseformer cannot pack: runs alone
    train(&grid(a.path(), models, "0.003,0.01", 120, &[]));
    train(&grid(b.path(), models, "0.003,0.01", 120, &["--pack", "4"]));
    assert_eq!(result_files(a.path()).len(), 16);
    assert_same_runs(a.path(), b.path());
}

#[test]
fn a_killed_pack_resumes_each_run_from_its_own_checkpoint() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let packed = |out: &Path, extra: &[&str]| {
        let mut e = vec!["--pack", "4"];
        e.extend_from_slice(extra);
        grid(out, "lime", "0.003,0.01", 24, &e)
    };
    train(&packed(a.path(), &[]));
    // Killed (as if) after 5 steps, resumed packed: the same bits as uninterrupted.
    train(&packed(b.path(), &["--stop-after", "5"]));
    assert!(result_files_count(b.path()) == 0);
    train(&packed(b.path(), &[]));
    assert_eq!(result_files(a.path()), result_files(b.path()));
    // A pack's checkpoints are ordinary ones: resumed one run at a time, within tolerance.
    train(&packed(c.path(), &["--stop-after", "5"]));
    train(&grid(c.path(), "lime", "0.003,0.01", 24, &[]));
    assert_same_runs(a.path(), c.path());
}

fn result_files_count(out: &Path) -> usize {
    std::fs::read_dir(out.join("runs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("result.json").is_file())
        .count()
}

#[test]
fn a_diverging_run_in_a_pack_leaves_the_others_alone() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(&grid(a.path(), "lime", "0.003", 24, &[]));
    // Stop the pack after 5 steps and poison seed 1's checkpoint: resumed, it diverges at once.
    train(&grid(
        b.path(),
        "lime",
        "0.003",
        24,
        &["--pack", "4", "--stop-after", "5"],
    ));
    let mut poisoned = None;
    for e in std::fs::read_dir(b.path().join("runs")).unwrap() {
        let dir = e.unwrap().path();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        if cfg["seed"] == 1 {
            let path = dir.join("ckpt").join("weights.safetensors");
            let w = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
            let nan: std::collections::HashMap<String, candle_core::Tensor> = w
                .into_iter()
                .map(|(k, t)| (k, (t.ones_like().unwrap() * f64::NAN).unwrap()))
                .collect();
            candle_core::safetensors::save(&nan, &path).unwrap();
            poisoned = Some(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let poisoned = poisoned.expect("a seed-1 run");
    train(&grid(b.path(), "lime", "0.003", 24, &["--pack", "4"]));
    let rb = result_files(b.path());
    let (id, r) = rb.iter().find(|(id, _)| *id == poisoned).unwrap();
    assert_eq!(r["status"], "diverged", "{id}: {r}");
    assert!(r["test_acc"].is_null());
    std::fs::remove_dir_all(b.path().join("runs").join(id)).unwrap();
    let ra = result_files(a.path());
    std::fs::remove_dir_all(
        a.path()
            .join("runs")
            .join(&ra.iter().find(|(i, _)| *i == poisoned).unwrap().0),
    )
    .unwrap();
    assert_same_runs(a.path(), b.path());
}

#[test]
fn pack_zero_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    let o = harness()
        .args(grid(d.path(), "lime", "0.003", 4, &["--pack", "0"]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("--pack must be at least 1"), "{e}");
}

#[test]
fn bench_sweep_times_one_run_against_a_pack() {
    let o = harness()
        .args([
            "bench", "sweep", "--task", "arith", "--packs", "1,2", "--warmup", "0",
        ])
        .args(["--repeats", "1", "--models", "llama"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| llama")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].contains("| 1.00 ") && out.contains("CPU:"), "{out}");
}
