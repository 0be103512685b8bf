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
        attnres_block: models::config::DEFAULT_ATTNRES_BLOCK,
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
    let o = harness_bin(&["--task", "arith", "--epochs", "3", "--plan"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--epochs needs a fixed train pool"));
    let o = harness_bin(&["--experiment", "nope", "--plan"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown experiment `nope`"));
}
