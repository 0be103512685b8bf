//! Numerics fingerprints: a code change that alters results must bump a version, or this fails.
//!
//! Every run id hashes `code_version` (`harness::spec::code_version`), which carries three
//! numerics versions: `tasks::GENERATOR_VERSION`, `models::NUMERICS_VERSION` and
//! `harness::spec::TRAIN_NUMERICS_VERSION`. `golden/numerics.json` records, with the versions
//! current when it was blessed,
//! - tasks: the sha256 of the first examples of every split of every task's default config;
//! - models: each variant's loss, logit moments and per-parameter gradient norms on fixed
//!   name-seeded weights and fixed tokens, in f32 (the fused CPU kernels training uses) and f64
//!   (the composed reference);
//! - train: the per-step losses of a short llama and lime run through the main job.
//!
//! A section whose numbers moved while its version stayed fails with "bump ...": finished runs
//! made by the old code would otherwise be reused as if current. After the bump, re-bless with
//! `LIME_BENCH_BLESS=1 cargo test -p harness --test integration numerics` (blessing refuses
//! while a moved section's version is unchanged). A newly registered variant is an addition,
//! not a move: the same blessing adds its fingerprints and leaves every existing number as is. Floats are compared with a relative tolerance
//! of 1e-4, far above the rounding differences between CPUs and thread counts (~1e-6) and far
//! below what a real change of a kernel, an init or a schedule does.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

const REL_TOL: f64 = 1e-4;
const ABS_TOL: f64 = 1e-7;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct Golden {
    generator_version: u32,
    models_numerics_version: u32,
    train_numerics_version: u32,
    /// task name → split → sha256 of its first examples.
    tasks: BTreeMap<String, BTreeMap<String, String>>,
    /// variant → dtype → named values.
    models: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// model → step losses of the short run.
    train: BTreeMap<String, Vec<f64>>,
}

fn golden_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../golden/numerics.json"
    ))
}

fn task_fingerprints() -> BTreeMap<String, BTreeMap<String, String>> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    for name in tasks::task_names() {
        let task = tasks::build(name, None, &[]).unwrap();
        let mut per = BTreeMap::new();
        for split in tasks::Split::ALL {
            let mut h = sha2::Sha256::new();
            for ex in tasks::generate_range(task.as_ref(), split, 0, 16) {
                for t in &ex.tokens {
                    h.update(t.to_le_bytes());
                }
                h.update((ex.prompt_len as u64).to_le_bytes());
                for (p, t) in &ex.targets {
                    h.update(p.to_le_bytes());
                    h.update(t.to_le_bytes());
                }
                h.update([0xff]);
            }
            per.insert(split.to_string(), harness::io::hex(&h.finalize()));
        }
        out.insert(name.to_string(), per);
    }
    out
}

/// Rounded to 7 significant digits, so the file reads well and stays stable.
fn sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.6e}").parse().unwrap()
}

fn model_fingerprint(variant: models::Variant, dtype: DType) -> BTreeMap<String, f64> {
    let cfg = models::Config::mha(variant, 29, 32, 3, 4)
        .with_kv_heads(2)
        .with_d_ff(48);
    let dev = Device::Cpu;
    let (varmap, model) = models::init_varmap(&cfg, 7, dtype, &dev).unwrap();
    let (b, t) = (3usize, 11usize);
    let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 7 + 3) % 29).collect();
    let targets: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 5 + 1) % 29).collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
    let targets = Tensor::from_vec(targets, b * t, &dev).unwrap();
    let logits = model.forward(&ids).unwrap().reshape((b * t, 29)).unwrap(); // (B*T, V)
    let loss = model.cross_entropy(&logits, &targets).unwrap();
    let scalar = |x: &Tensor| x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let mut out = BTreeMap::new();
    out.insert("loss".to_string(), sig(scalar(&loss)));
    out.insert(
        "logits.mean".into(),
        sig(scalar(&logits.mean_all().unwrap())),
    );
    out.insert(
        "logits.mean_sq".into(),
        sig(scalar(&logits.sqr().unwrap().mean_all().unwrap())),
    );
    let grads = loss.backward().unwrap();
    for (name, var) in models::sorted_vars(&varmap) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{variant:?}: no gradient for {name}"));
        let norm = scalar(&g.sqr().unwrap().sum_all().unwrap()).sqrt();
        out.insert(format!("grad_norm.{name}"), sig(norm));
    }
    out
}

fn model_fingerprints() -> BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> {
    models::Variant::ALL
        .iter()
        .map(|&v| {
            let per = [(DType::F32, "f32"), (DType::F64, "f64")]
                .into_iter()
                .map(|(dt, n)| (n.to_string(), model_fingerprint(v, dt)))
                .collect();
            (v.name().to_string(), per)
        })
        .collect()
}

fn train_fingerprints() -> BTreeMap<String, Vec<f64>> {
    let dir = tempfile::tempdir().unwrap();
    let args = harness::overrides::Overrides {
        task: vec!["mqar".into()],
        models: vec!["llama".into(), "lime".into()],
        seeds: Some(1),
        sets: ["vocab_size=32", "seq_len=16", "num_kv_pairs=2"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        model_sets: ["d_model=16", "n_layers=2", "n_heads=2", "d_ff=32"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        match_mode: harness::spec::MatchMode::Steps,
        steps: Some(8),
        batch_size: Some(8),
        n_val: Some(8),
        n_test: Some(8),
        lr: vec![3e-3],
        out: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut out = BTreeMap::new();
    for spec in harness::spec::resolve(&args).unwrap() {
        let opts = harness::train::RunOptions {
            quiet: true,
            ..Default::default()
        };
        harness::train::run_one(&spec, dir.path(), &Device::Cpu, opts).unwrap();
        let text = std::fs::read_to_string(
            dir.path()
                .join("runs")
                .join(spec.id())
                .join("metrics.jsonl"),
        )
        .unwrap();
        let losses: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get("loss")?.as_f64().map(sig)
            })
            .collect();
        assert_eq!(losses.len(), 8, "{}: one loss per step", spec.model);
        out.insert(spec.model.clone(), losses);
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= REL_TOL * a.abs().max(b.abs()) + ABS_TOL
}

/// Where two fingerprints of one section differ: `key: old → new` lines (at most a few).
fn differences(
    old: &serde_json::Value,
    new: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value as V;
    match (old, new) {
        (V::Object(a), V::Object(b)) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differences(x, y, &p, out),
                    (x, y) => out.push(format!("{p}: {x:?} → {y:?}")),
                }
            }
        }
        (V::Array(a), V::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{path}/{i}"), out);
            }
        }
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if !close(x, y) {
                out.push(format!("{path}: {x} → {y}"));
            }
        }
        (x, y) if x != y => out.push(format!("{path}: {x} → {y}")),
        _ => {}
    }
}

fn moved<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let mut out = Vec::new();
    differences(
        &serde_json::to_value(old).unwrap(),
        &serde_json::to_value(new).unwrap(),
        "",
        &mut out,
    );
    out
}

#[test]
fn numerics_fingerprints_match_their_versions() {
    let now = Golden {
        generator_version: tasks::GENERATOR_VERSION,
        models_numerics_version: models::NUMERICS_VERSION,
        train_numerics_version: harness::spec::TRAIN_NUMERICS_VERSION,
        tasks: task_fingerprints(),
        models: model_fingerprints(),
        train: train_fingerprints(),
    };
    let path = golden_path();
    let bless = std::env::var("LIME_BENCH_BLESS").is_ok_and(|v| v == "1");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let write = |g: &Golden| {
        std::fs::write(&path, serde_json::to_string_pretty(g).unwrap() + "\n").unwrap();
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert!(
            !ci,
            "golden/numerics.json is missing: bless it with LIME_BENCH_BLESS=1 and commit it"
        );
        write(&now);
        return;
    };
    let old: Golden = serde_json::from_str(&text).expect("golden/numerics.json parses");

    // A section that moved must come with a bump of its version.
    let mut errors = Vec::new();
    let mut check =
        |what: &str, diffs: Vec<String>, same_version: bool, blame: bool| {
            if !diffs.is_empty() && same_version && blame {
                errors.push(format!(
                "{what} numerics changed without a version bump: bump {what_version} (every run \
                 id changes), then re-bless with LIME_BENCH_BLESS=1. First differences:\n  {}",
                diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n  "),
                what_version = match what {
                    "tasks" => "tasks::GENERATOR_VERSION",
                    "models" => "models::NUMERICS_VERSION",
                    _ => "harness::spec::TRAIN_NUMERICS_VERSION",
                }
            ));
            }
            !diffs.is_empty()
        };
    // A task the golden file does not know yet is an addition too (see the variants below).
    let added_tasks: BTreeMap<_, _> = now
        .tasks
        .iter()
        .filter(|(k, _)| !old.tasks.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut known_tasks = now.tasks.clone();
    known_tasks.retain(|k, _| !added_tasks.contains_key(k));
    let tasks_moved = check(
        "tasks",
        moved(&old.tasks, &known_tasks),
        old.generator_version == now.generator_version,
        true,
    );
    // A variant the golden file does not know yet is an addition, not a move: it needs a
    // blessing (below), not a version bump, and the existing fingerprints stay as they are.
    let added: BTreeMap<_, _> = now
        .models
        .iter()
        .filter(|(k, _)| !old.models.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut known = now.models.clone();
    known.retain(|k, _| !added.contains_key(k));
    let models_moved = check(
        "models",
        moved(&old.models, &known),
        old.models_numerics_version == now.models_numerics_version,
        true,
    );
    // Training follows the tasks and models it runs: it is blamed only when they did not move.
    check(
        "train",
        moved(&old.train, &now.train),
        old.train_numerics_version == now.train_numerics_version,
        !tasks_moved && !models_moved,
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let versions_changed = (
        old.generator_version,
        old.models_numerics_version,
        old.train_numerics_version,
    ) != (
        now.generator_version,
        now.models_numerics_version,
        now.train_numerics_version,
    );
    if bless && !versions_changed {
        // Nothing moved (checked above): add the new variants, keep every existing number.
        let mut merged = old.clone();
        merged.models.extend(added);
        merged.tasks.extend(added_tasks);
        write(&merged);
    } else if bless {
        write(&now);
    } else {
        assert!(
            added.is_empty() && added_tasks.is_empty(),
            "golden/numerics.json has no fingerprint for {:?}: bless it with \
             LIME_BENCH_BLESS=1 (adds the new variants and tasks, leaves the others) and commit it",
            added.keys().chain(added_tasks.keys()).collect::<Vec<_>>()
        );
        assert!(
            !versions_changed,
            "a numerics version was bumped (now gen {} / models {} / train {}, golden/numerics.json \
             has {} / {} / {}): re-bless it with LIME_BENCH_BLESS=1 and commit it",
            now.generator_version,
            now.models_numerics_version,
            now.train_numerics_version,
            old.generator_version,
            old.models_numerics_version,
            old.train_numerics_version
        );
    }
}

/// The version check is only as good as its comparison: a relative change of 1e-3 in one gradient
/// norm is caught, rounding-sized noise is not.
#[test]
fn numerics_comparison_catches_small_real_changes() {
    let a = model_fingerprints();
    let k = a["lime"]["f32"]
        .keys()
        .find(|k| k.contains("router"))
        .unwrap()
        .clone();
    let scaled = |f: f64| {
        let mut b = a.clone();
        *b.get_mut("lime")
            .unwrap()
            .get_mut("f32")
            .unwrap()
            .get_mut(&k)
            .unwrap() *= f;
        b
    };
    let diffs = moved(&a, &scaled(1.001));
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(diffs[0].contains(&k), "{diffs:?}");
    assert!(moved(&a, &scaled(1.0 + 1e-6)).is_empty());
}
