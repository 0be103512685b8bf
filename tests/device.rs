//! Devices and precision: `harness check-device` (the CUDA test subset shipped in the binary),
//! bf16 mixed precision (checked on the CPU, where candle has bf16 matmuls, although the CLI
//! only offers it on a GPU), the `--experiment arith-paper` preset and `--epochs`.

use candle_core::{DType, Device, Tensor};
use harness::check_device::{check, Check};
use harness::spec::Precision;
use models::Variant;
use std::process::Command;

fn harness_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .output()
        .expect("harness runs")
}

fn assert_all_ok(checks: &[Check], p: Precision) {
    assert!(!checks.is_empty());
    for c in checks {
        assert!(c.ok(p), "{c:?} beyond the {p:?} tolerance");
    }
}

#[test]
fn cpu_f32_matches_the_f64_reference_for_every_variant() {
    let checks = check(&Variant::ALL, &Device::Cpu, Precision::F32).unwrap();
    assert_eq!(checks.len(), Variant::ALL.len());
    assert_all_ok(&checks, Precision::F32);
}

#[test]
fn bf16_projections_stay_close_to_f32_and_really_run_in_bf16() {
    // On the CPU the projections then go through candle's bf16 matmul; every weight still gets a
    // gradient (check() fails otherwise) and the step stays within the bf16 tolerance.
    let variants = [Variant::LLAMA, Variant::LIME, Variant::HYPER];
    let checks = check(&variants, &Device::Cpu, Precision::Bf16).unwrap();
    assert_all_ok(&checks, Precision::Bf16);
    // ... and it is not silently f32: the logits move by more than f32 rounding would.
    for c in &checks {
        assert!(c.logits > 1e-4, "{c:?}: bf16 logits equal f32 ones");
    }
}

#[test]
fn bf16_master_weights_and_gradients_stay_f32() {
    let cfg = models::Config {
        variant: Variant::LIME,
        vocab_size: 17,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        d_ff: 32,
        tie_embeddings: true,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        settings: Default::default(),
    };
    let (vm, model) = models::init_varmap(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let model = model.with_matmul_dtype(Some(DType::BF16));
    let ids = Tensor::from_vec((0..10u32).collect::<Vec<_>>(), (2, 5), &Device::Cpu).unwrap();
    let logits = model.forward(&ids).unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    let grads = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in models::sorted_vars(&vm) {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        let g = grads
            .get(var.as_tensor())
            .expect("every weight gets a gradient");
        assert_eq!(g.dtype(), DType::F32, "{name}");
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_the_cpu_reference_in_f32_and_bf16() {
    let dev = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
    assert_all_ok(
        &check(&Variant::ALL, &dev, Precision::F32).unwrap(),
        Precision::F32,
    );
    let bf = check(&[Variant::LLAMA, Variant::LIME], &dev, Precision::Bf16).unwrap();
    assert_all_ok(&bf, Precision::Bf16);
}

/// A process allowed fewer CPUs than the machine has cores (taskset here; Slurm's
/// `--cpus-per-task` or a container's CPU limit on a cluster) computes with that many threads,
/// not with the machine's core count, and its results say so.
#[test]
fn the_thread_count_follows_the_cpus_the_process_may_use() {
    let o = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_harness")])
        .args(["check-device", "--device", "cpu", "--models", "llama"])
        .output()
        .expect("taskset (util-linux) runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("device cpu (1 threads)"), "{out}");
}

/// Training does not depend on the thread count: the default MQAR cell (full-size GEMMs, which
/// the GEMM kernels do split across threads) trained at 1 and 3 threads gives the same losses,
/// val scores and result, every figure but speed and the device's name. So a run made by a
/// process pinned to one CPU reruns exactly on the whole machine.
#[test]
fn training_gives_the_same_figures_at_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let scrub_speed = |t: String| {
        t.lines()
            .map(|l| match l.find(",\"tokens_per_s\"") {
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut runs = Vec::new();
    for threads in ["1", "3"] {
        let out = dir.path().join(threads);
        let o = crate::cli::harness()
            .env("RAYON_NUM_THREADS", threads)
            .args([
                "--task", "mqar", "--models", "lime,mhc", "--seeds", "1", "--match", "steps",
            ])
            .args([
                "--steps", "4", "--n-val", "32", "--n-test", "32", "--quiet", "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        runs.push(out.join("runs"));
    }
    let mut ids: Vec<_> = std::fs::read_dir(&runs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let read = |k: usize, f: &str| std::fs::read_to_string(runs[k].join(&id).join(f)).unwrap();
        let metrics = scrub_speed(read(0, "metrics.jsonl"));
        assert!(metrics.len() > 4, "{metrics:?}");
        assert_eq!(metrics, scrub_speed(read(1, "metrics.jsonl")), "{id:?}");
        let result = |k: usize| {
            let mut r: harness::records::RunResult =
                serde_json::from_str(&read(k, "result.json")).unwrap();
            assert!(
                r.device
                    .starts_with(&format!("cpu ({} threads", ["1", "3"][k])),
                "{}",
                r.device
            );
            r.wall_clock_s = 0.0;
            r.device.clear();
            serde_json::to_string(&r).unwrap()
        };
        assert_eq!(result(0), result(1), "{id:?}");
    }
}

#[test]
fn check_device_cli_passes_on_the_cpu_and_rejects_bf16_there() {
    let o = harness_bin(&["check-device", "--device", "cpu", "--models", "llama,lime"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.matches("| yes |").count(), 2, "{out}");
    for args in [
        &["check-device", "--device", "cpu", "--precision", "bf16"][..],
        &["--task", "mqar", "--precision", "bf16"][..],
        &["bench", "train", "--precision", "bf16"][..],
    ] {
        let o = harness_bin(args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains("bf16 needs a GPU"), "{e}");
    }
}

#[test]
fn arith_paper_experiment_and_epochs_resolve_to_the_papers_runs() {
    let o = harness_bin(&["--experiment", "arith-paper", "--plan"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 3 operand counts x {llama, lime}; ceil(200 epochs x 50,000 / 256) steps each.
    assert!(out.contains("6 runs"), "{out}");
    assert_eq!(out.matches("| 39063 ").count(), 6, "{out}");
    for level in ["ops4", "ops5", "ops6"] {
        assert!(out.contains(&format!("arith-{level}-lime-s0")), "{out}");
    }
    // The paper's format: integers with step-by-step solutions, selected on generations — the
    // same specs as the aet claim's GPU protocol at its lr.
    let a = harness::overrides::experiment("arith-paper", &Default::default()).unwrap();
    assert!(a.sets.contains(&"mode=int".to_string()) && a.sets.contains(&"output=cot".to_string()));
    assert_eq!(a.val_metric, harness::overrides::ValMetric::Task);
    let mine = harness::overrides::Overrides {
        sets: vec!["output=direct".into()],
        ..Default::default()
    };
    let b = harness::overrides::experiment("arith-paper", &mine).unwrap();
    assert_eq!(b.sets, ["output=direct", "mode=int"]);
    let o = harness_bin(&["--task", "arith", "--epochs", "3", "--plan"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--epochs needs a fixed train pool"));
    let o = harness_bin(&["--experiment", "nope", "--plan"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown experiment `nope`"));
}
