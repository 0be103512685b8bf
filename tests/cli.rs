//! The `harness` binary end to end: export contract, determinism across thread counts, bad input,
//! a tiny training run, resume, skip, leaderboard and sweep sharding.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn harness() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    c.env_remove("RAYON_NUM_THREADS");
    c
}

pub(crate) fn run(args: &[&str]) -> Output {
    harness().args(args).output().expect("harness runs")
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failing command: non-zero exit, exactly one line on stderr starting with `error`, no panic.
pub(crate) fn assert_one_line_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "expected one line, got: {e:?}"
    );
    assert!(e.starts_with("error"), "{e:?}");
    assert!(!e.contains("panicked"), "{e:?}");
    assert!(e.contains(needle), "expected {needle:?} in {e:?}");
}

pub(crate) fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const SMALL_MQAR: [&str; 6] = [
    "--set",
    "vocab_size=64",
    "--set",
    "seq_len=32",
    "--set",
    "num_kv_pairs=4",
];

fn gen_to(dir: &Path, name: &str, threads: &str) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec![
        "gen",
        "--task",
        "mqar",
        "--split",
        "test",
        "--n",
        "300",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(SMALL_MQAR);
    let o = harness()
        .env("RAYON_NUM_THREADS", threads)
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn gen_writes_the_jsonl_contract_and_a_matching_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = gen_to(dir.path(), "d.jsonl", "2");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300);
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
        let keys: Vec<&str> = v.keys().map(|k| k.as_str()).collect();
        for k in [
            "task",
            "split",
            "index",
            "prompt",
            "answer",
            "tokens",
            "prompt_len",
            "targets",
            "meta",
        ] {
            assert!(keys.contains(&k), "line {i} lacks {k}");
        }
        assert!(
            l.starts_with(r#"{"task":"mqar","split":"test","index":"#),
            "field order: {l}"
        );
        assert_eq!(v["index"], i as u64);
        let tokens = v["tokens"].as_array().unwrap();
        assert!(!v["targets"].as_array().unwrap().is_empty());
        for t in v["targets"].as_array().unwrap() {
            // MQAR (Zoology): the value is a label at the query key, not the next input token.
            let (p, tok) = (t[0].as_u64().unwrap() as usize, t[1].as_u64().unwrap());
            assert!(p < tokens.len() && tok < 64, "{t}");
        }
        assert_eq!(v["meta"]["vocab_size"], 64);
        assert_eq!(v["meta"]["num_kv_pairs"], 4);
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("d.manifest.json")).unwrap())
            .unwrap();
    use sha2::Digest;
    assert_eq!(
        m["sha256"].as_str().unwrap(),
        harness::io::hex(&sha2::Sha256::digest(text.as_bytes()))
    );
    assert_eq!(m["n"], 300);
    assert_eq!(m["config"]["num_kv_pairs"], 4);
    assert_eq!(
        files_in(dir.path()),
        ["d.jsonl", "d.manifest.json"],
        "no temporaries left"
    );
}

#[test]
fn gen_bytes_do_not_depend_on_thread_count_or_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(gen_to(dir.path(), "a.jsonl", "1")).unwrap();
    let b = std::fs::read(gen_to(dir.path(), "b.jsonl", "2")).unwrap();
    let c = std::fs::read(gen_to(dir.path(), "c.jsonl", "7")).unwrap();
    assert!(a == b && b == c, "exports differ across thread counts");
    let ma = std::fs::read_to_string(dir.path().join("a.manifest.json")).unwrap();
    let mc = std::fs::read_to_string(dir.path().join("c.manifest.json")).unwrap();
    assert_eq!(ma.replace("a.jsonl", "x"), mc.replace("c.jsonl", "x"));
}

#[test]
fn bad_gen_input_is_one_line_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");
    let o = out.to_str().unwrap();
    assert_one_line_error(
        &run(&["gen", "--task", "nope", "--out", o]),
        "unknown task `nope`",
    );
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--out", o, "--set", "bogus=1"]),
        "unknown config key `bogus`",
    );
    assert_one_line_error(
        &run(&[
            "gen",
            "--task",
            "mqar",
            "--out",
            o,
            "--set",
            "num_kv_pairs=0",
        ]),
        "num_kv_pairs",
    );
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--out", o, "--level", "nope"]),
        "unknown level",
    );
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--out", o, "--split", "dev"]),
        "unknown split",
    );
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--out", "/nonexistent-dir/x.jsonl"]),
        "does not exist",
    );
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--bogus-flag"]),
        "--bogus-flag",
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // An existing file is not clobbered by a failing export.
    std::fs::write(&out, "keep me").unwrap();
    assert_one_line_error(
        &run(&["gen", "--task", "mqar", "--out", o, "--set", "power_a=-1"]),
        "power_a",
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    assert_eq!(files_in(dir.path()), ["x.jsonl"]);
}

/// The model shape and batch of the tiny runs: 2 layers, d=16, 2 heads, SwiGLU 32, batch 8.
const TINY_SHAPE: [&str; 10] = [
    "--model-set",
    "d_model=16",
    "--model-set",
    "n_layers=2",
    "--model-set",
    "n_heads=2",
    "--model-set",
    "d_ff=32",
    "--batch-size",
    "8",
];

/// Flags of a tiny, fast training run (a few seconds on 2 cores).
pub(crate) fn tiny_run(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "--task",
        "mqar",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "vocab_size=32",
        "--set",
        "seq_len=16",
        "--set",
        "num_kv_pairs=2",
        "--match",
        "steps",
        "--steps",
        "12",
        "--n-val",
        "16",
        "--n-test",
        "16",
        "--lr",
        "0.003",
    ]
    .iter()
    .chain(&TINY_SHAPE)
    .map(|s| s.to_string())
    .collect();
    v.push("--models".into());
    v.push("llama,lime".into());
    v
}

pub(crate) fn result_files(out: &Path) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let mut r: Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("result.json")).unwrap())
                    .unwrap();
            r["wall_clock_s"] = Value::Null;
            (p.file_name().unwrap().to_string_lossy().into_owned(), r)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub(crate) fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn tiny_run_trains_resumes_identically_and_skips_when_done() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Uninterrupted.
    let o = harness().args(tiny_run(a.path())).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("| mqar") && table.contains("llama") && table.contains("lime"),
        "{table}"
    );
    // Killed after 5 steps, then resumed.
    let mut killed = tiny_run(b.path());
    killed.extend(["--stop-after".to_string(), "5".to_string()]);
    let o = harness().args(&killed).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let runs: Vec<PathBuf> = std::fs::read_dir(b.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.join("ckpt").join("state.json").is_file()),
        "a checkpoint must exist after the kill"
    );
    assert!(runs.iter().all(|r| !r.join("result.json").exists()));
    let o = harness().args(tiny_run(b.path())).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (ra, rb) = (result_files(a.path()), result_files(b.path()));
    assert_eq!(ra.len(), 2);
    assert_eq!(ra, rb, "resumed results differ from uninterrupted ones");
    for (id, _) in &ra {
        assert_eq!(
            losses(&a.path().join("runs").join(id)),
            losses(&b.path().join("runs").join(id)),
            "loss curves differ for {id}"
        );
    }
    // Finished runs are skipped, results untouched.
    let before = std::fs::read(a.path().join("runs").join(&ra[0].0).join("result.json")).unwrap();
    let mut again = tiny_run(a.path());
    again.retain(|s| s != "--quiet");
    let o = harness().args(&again).output().unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
    assert_eq!(
        before,
        std::fs::read(a.path().join("runs").join(&ra[0].0).join("result.json")).unwrap()
    );
    for f in [
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.json",
        "mqar-loss-vs-flops.svg",
    ] {
        assert!(a.path().join(f).is_file(), "missing {f}");
    }
    // Snapshot: rounded loss curves and results (wall-clock and device redacted).
    let mut snap = String::new();
    for (id, r) in &ra {
        let curve: Vec<String> = losses(&a.path().join("runs").join(id))
            .iter()
            .map(|(s, l)| format!("{s}:{l:.2}"))
            .collect();
        snap += &format!(
            "{} {}: loss {}\n",
            r["model"].as_str().unwrap(),
            id,
            curve.join(" ")
        );
        let mut r = r.clone();
        r["device"] = Value::String("[device]".into());
        if let Some(rows) = r["router_heatmap"].as_array().cloned() {
            let rounded: Vec<Value> = rows
                .iter()
                .map(|row| {
                    Value::Array(
                        row.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| Value::String(format!("{:.2}", x.as_f64().unwrap())))
                            .collect(),
                    )
                })
                .collect();
            r["router_heatmap"] = Value::Array(rounded);
        }
        for k in [
            "final_loss",
            "val_loss",
            "val_acc",
            "test_acc",
            "test_token_acc",
            "test_macro_acc",
        ] {
            if let Some(x) = r[k].as_f64() {
                r[k] = Value::String(format!("{x:.2}"));
            }
        }
        snap += &serde_json::to_string_pretty(&r).unwrap();
        snap += "\n";
    }
    crate::golden().bind(|| insta::assert_snapshot!("tiny_run", snap));
}

#[test]
fn main_job_rejects_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    assert_one_line_error(
        &run(&["--task", "nope", "--out", out]),
        "unknown task `nope`",
    );
    assert_one_line_error(
        &run(&["--task", "mqar", "--models", "gpt5", "--out", out]),
        "unknown model `gpt5`",
    );
    assert_one_line_error(
        &run(&["--task", "mqar", "--budget-flops", "10", "--out", out]),
        "smaller than one training step",
    );
    assert_one_line_error(
        &run(&["--task", "mqar", "--model-set", "d_model=33", "--out", out]),
        "not divisible",
    );
    assert_one_line_error(
        &run(&["--task", "mqar", "--model-set", "widht=3", "--out", out]),
        "unknown model key `widht`",
    );
    assert_one_line_error(
        &run(&[
            "--task",
            "mqar",
            "--model-set",
            "canon_positions=AE",
            "--out",
            out,
        ]),
        "canon_positions",
    );
    assert_one_line_error(
        &run(&[
            "--task",
            "mqar",
            "--models",
            "laurel",
            "--model-set",
            "laurel_rank=65",
            "--out",
            out,
        ]),
        "laurel_rank must be between 1 and d_model (64)",
    );
    assert_one_line_error(&run(&["--task", "mqar", "--lr", "7", "--out", out]), "--lr");
    assert_one_line_error(
        &run(&["--task", "mqar", "--device", "tpu", "--out", out]),
        "unknown device",
    );
    assert_one_line_error(&run(&["--task", "mqar", "--frobnicate"]), "--frobnicate");
    assert_one_line_error(
        &run(&["sweep", "/nonexistent/plan.toml"]),
        "cannot read plan",
    );
    let plan = dir.path().join("bad.toml");
    std::fs::write(&plan, "tasks = [\"mqar\"]\nmodles = [\"lime\"]\n").unwrap();
    assert_one_line_error(&run(&["sweep", plan.to_str().unwrap()]), "modles");
    assert_one_line_error(
        &run(&["leaderboard", "--results", "/nonexistent"]),
        "no runs",
    );
    assert!(
        !dir.path().join("runs").exists(),
        "nothing may be written on bad input"
    );
}

#[test]
fn sweep_shards_partition_the_cells() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "tasks = [\"mqar\"]\nlevels = [\"kv4\", \"kv8\"]\nmodels = [\"llama\", \"lime\"]\nseeds = 3\n").unwrap();
    let p = plan.to_str().unwrap();
    let list = |args: &[&str]| -> Vec<String> {
        let o = run(args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect()
    };
    let all = list(&["sweep", p, "--dry-run"]);
    assert_eq!(all.len(), 12);
    let mut union = Vec::new();
    for i in 0..3 {
        let s = format!("{i}/3");
        let part = list(&["sweep", p, "--dry-run", "--shard", &s]);
        assert_eq!(part.len(), 4);
        union.extend(part);
    }
    union.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(union, sorted);
    assert_one_line_error(&run(&["sweep", p, "--shard", "3/3"]), "--shard");
}

#[test]
fn flops_cli_reproduces_table_8() {
    let o = run(&["flops", "--preset", "paper-1b", "--models", "llama,lime"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    for needle in [
        "1,176,735,744",
        "1,076,072,448",
        "1,176,873,984",
        "1,076,081,088",
        "2.9679T",
        "2.7615T",
        "3.0041T",
        "2.7638T",
    ] {
        assert!(t.contains(needle), "missing {needle} in\n{t}");
    }
    crate::golden().bind(|| insta::assert_snapshot!("cli_flops_paper_1b", t));
}

/// Main-job flags for 3 steps of a tiny model (d=16, 2 heads) on `task`.
pub fn three_tiny_steps(
    task: &str,
    models: &[String],
    sets: &[&str],
    n_layers: usize,
    out: &Path,
) -> harness::overrides::Overrides {
    harness::overrides::Overrides {
        task: vec![task.to_string()],
        models: models.to_vec(),
        seeds: Some(1),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        model_sets: vec![
            "d_model=16".into(),
            format!("n_layers={n_layers}"),
            "n_heads=2".into(),
            "d_ff=32".into(),
        ],
        match_mode: harness::spec::MatchMode::Steps,
        steps: Some(3),
        batch_size: Some(4),
        n_val: Some(4),
        n_test: Some(4),
        out: Some(out.to_path_buf()),
        ..Default::default()
    }
}

/// Every registered task has an embedded default experiment, and trains end to end through the
/// main job (3 steps of a tiny llama and lime, generation-scored tasks included).
#[test]
fn every_task_has_a_default_and_trains_through_the_main_job() {
    let dir = tempfile::tempdir().unwrap();
    for name in tasks::task_names() {
        let defaults = harness::overrides::Overrides {
            task: vec![name.to_string()],
            seeds: Some(1),
            ..Default::default()
        };
        let specs = harness::spec::resolve(&defaults).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(
            specs.len() >= 2 && specs.iter().all(|s| s.steps >= 1),
            "{name}"
        );
        let tiny = three_tiny_steps(name, &[], &[], 2, dir.path());
        for spec in harness::spec::resolve(&tiny).unwrap() {
            let r = train_to_done(&spec, dir.path());
            assert_eq!(
                r.status,
                harness::records::RunStatus::Ok,
                "{name} {}",
                r.model
            );
            assert!(
                r.test_acc.is_some_and(|a| (0.0..=1.0).contains(&a)),
                "{name}"
            );
            assert!(r.final_loss.is_some_and(f64::is_finite), "{name}");
        }
    }
}

/// Runs `spec` on the CPU (quiet, no --force) to completion; panics on any other outcome.
pub fn train_to_done(spec: &harness::spec::RunSpec, out: &Path) -> harness::records::RunResult {
    let opts = harness::train::RunOptions {
        quiet: true,
        ..Default::default()
    };
    match harness::train::run_one(spec, out, &candle_core::Device::Cpu, opts) {
        Ok(harness::train::Outcome::Done(r)) => r,
        Ok(_) => panic!("{} {}: unexpected outcome", spec.task, spec.model),
        Err(e) => panic!("{} {}: {e:#}", spec.task, spec.model),
    }
}

/// Every model variant trains through the main job (3 steps, tiny shapes), with every weight
/// receiving a gradient (the trainer checks that at every step) and a finite loss.
#[test]
fn every_model_trains_through_the_main_job() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = models::Variant::ALL
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    let args = three_tiny_steps(
        "mqar",
        &names,
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        3,
        dir.path(),
    );
    let specs = harness::spec::resolve(&args).unwrap();
    assert_eq!(specs.len(), names.len());
    for spec in &specs {
        let r = train_to_done(spec, dir.path());
        assert_eq!(r.status, harness::records::RunStatus::Ok, "{}", r.model);
        assert!(r.final_loss.is_some_and(f64::is_finite), "{}", r.model);
        assert_eq!(
            r.params,
            models::accounting::num_params(&spec.model_config),
            "{}",
            r.model
        );
    }
    // LIMe runs carry their router heatmap (rows sum to 1), plotted next to the run.
    let lime_id = specs.iter().find(|s| s.model == "lime").unwrap().id();
    let lime: harness::records::RunResult = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("runs").join(&lime_id).join("result.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lime.router_heatmap.len(), 3);
    for row in &lime.router_heatmap {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{row:?}");
    }
    harness::job::write_report(dir.path()).unwrap();
    assert!(dir
        .path()
        .join("runs")
        .join(&lime_id)
        .join("router-heatmap.svg")
        .is_file());
    // ... and each appears in the leaderboard.
    let table =
        harness::leaderboard::render_dir(dir.path(), None, harness::leaderboard::Format::Md)
            .unwrap();
    for n in &names {
        assert!(
            table.contains(&format!("| {n} ")),
            "{n} missing from\n{table}"
        );
    }
}

/// The manifests (sha256 of the data, exact config, digest) of every task's default config, per
/// split, and of the test split's Parquet export: any change to a generator, its defaults, the
/// split partition or an export format shows up here.
#[test]
fn default_config_manifests_are_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let mut snap = String::new();
    for name in tasks::task_names() {
        let task = tasks::build(name, None, &[]).unwrap();
        let level = harness::cli::default_level(name);
        for split in tasks::Split::ALL {
            let out = dir.path().join(format!("{name}-{split}.jsonl"));
            let m = harness::gen::export(task.as_ref(), &level, split, 0, 64, &out).unwrap();
            snap += &format!(
                "{name} {level} {split}: sha256 {} redraws {} digest {}\n",
                m.sha256, m.redraws, m.config_digest
            );
            if split == tasks::Split::Test {
                snap += &format!("  config {}\n", serde_json::to_string(&m.config).unwrap());
                let pq = dir.path().join(format!("{name}-{split}.parquet"));
                let p = harness::gen::export(task.as_ref(), &level, split, 0, 64, &pq).unwrap();
                snap += &format!("  parquet sha256 {}\n", p.sha256);
            }
        }
    }
    crate::golden().bind(|| insta::assert_snapshot!("manifests_default_configs", snap));
}

/// `--model-set attnres_block=S` changes the runs of attnres-block only: every other model keeps
/// the run id (and so the cached run) it has without the key.
#[test]
fn attnres_block_changes_only_attnres_block_ids() {
    let ids = |sets: Vec<String>| -> Vec<String> {
        harness::spec::resolve(&harness::overrides::Overrides {
            task: vec!["mqar".into()],
            models: vec!["llama".into(), "lime".into(), "attnres-block".into()],
            seeds: Some(1),
            model_sets: sets,
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|s| s.id())
        .collect()
    };
    let plain = ids(vec![]);
    let block1 = ids(vec!["attnres_block=1".into()]);
    assert_eq!(plain[..2], block1[..2]);
    assert_ne!(plain[2], block1[2]);
}

/// Canon's and LAuReL's settings change their own runs only, and `canon_positions` given as
/// letters or as its mask is the same run.
#[test]
fn canon_and_laurel_settings_change_only_their_ids() {
    let ids = |sets: &[&str]| -> Vec<String> {
        harness::spec::resolve(&harness::overrides::Overrides {
            task: vec!["mqar".into()],
            models: ["llama", "canon", "laurel", "dca"]
                .map(String::from)
                .to_vec(),
            seeds: Some(1),
            model_sets: sets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|s| s.id())
        .collect()
    };
    let plain = ids(&[]);
    assert_eq!(plain, ids(&["canon_positions=ABCD", "laurel_rank=4"]));
    let ac = ids(&["canon_positions=AC"]);
    assert_eq!(ac, ids(&["canon_positions=5"]));
    assert_ne!(plain[1], ac[1]);
    assert_eq!([&plain[0], &plain[2], &plain[3]], [&ac[0], &ac[2], &ac[3]]);
    let r8 = ids(&["laurel_rank=8", "canon_kernel=2"]);
    assert_ne!(plain[1], r8[1]);
    assert_ne!(plain[2], r8[2]);
    assert_eq!([&plain[0], &plain[3]], [&r8[0], &r8[3]]);
}

/// `--eval-levels`: trained at parity n16, each run is also tested on n32 and n64 — their own
/// test splits (the lines `harness gen` writes for those levels), longer than the trained
/// length — into `result.json`, and the leaderboard gains the OOD score and a column per level.
/// Without the flag the run ids are unchanged.
#[test]
fn eval_levels_test_each_run_beyond_its_training_level() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let mut args: Vec<String> = [
        "--task",
        "parity",
        "--level",
        "n16",
        "--models",
        "llama,lime",
        "--quiet",
        "--out",
        out,
        "--match",
        "steps",
        "--steps",
        "6",
        "--n-val",
        "16",
        "--n-test",
        "16",
    ]
    .map(String::from)
    .to_vec();
    args.extend(TINY_SHAPE.map(String::from));
    args.extend(["--eval-levels".to_string(), "n32,n64".to_string()]);
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let results = result_files(dir.path());
    assert_eq!(results.len(), 2);
    for (_, r) in &results {
        let levels = r["eval_levels"]
            .as_object()
            .expect("eval_levels in result.json");
        assert_eq!(levels.keys().collect::<Vec<_>>(), ["n32", "n64"]);
        for (l, s) in levels {
            let acc = s["test_acc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc), "{l}: {acc}");
            assert!(
                s["seq_len"].as_u64().unwrap() > 16,
                "{l}: longer than trained"
            );
        }
    }
    // The examples behind those numbers are the levels' own test splits, byte for byte.
    let loaded = harness::leaderboard::load_results(dir.path()).unwrap();
    let spec = &loaded.records[0].spec;
    for (i, level) in ["n32", "n64"].iter().enumerate() {
        let gen = dir.path().join(format!("{level}.jsonl"));
        let o = run(&[
            "gen",
            "--task",
            "parity",
            "--level",
            level,
            "--split",
            "test",
            "--n",
            "16",
            "--out",
            gen.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let task = harness::train::eval_level_task(spec, i).unwrap();
        let ours: String = harness::train::eval_level_examples(spec, i)
            .unwrap()
            .iter()
            .map(|e| harness::gen::example_line(task.as_ref(), e) + "\n")
            .collect();
        assert_eq!(ours, std::fs::read_to_string(&gen).unwrap(), "{level}");
    }
    let md = std::fs::read_to_string(dir.path().join("leaderboard.md")).unwrap();
    assert!(
        md.contains("OOD test acc % (95% CI)") && md.contains("n32 "),
        "{md}"
    );
    // The extrapolation figure: the training level marked, then the evaluation levels.
    let svg = std::fs::read_to_string(dir.path().join("parity-n16-generalization.svg")).unwrap();
    for label in ["n16*", "n32", "n64", "lime", "llama", "trained at n16"] {
        assert!(svg.contains(label), "{label} missing from the figure");
    }
    let o = run(&["leaderboard", "--results", out, "--format", "csv"]);
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",ood_mean,ood_ci95,eval_n32,eval_n64"),
        "{csv}"
    );
    // Without --eval-levels the ids are those of runs without evaluation levels: unchanged.
    let ids = |extra: &[&str]| -> Vec<String> {
        let mut o = harness::overrides::Overrides {
            task: vec!["parity".into()],
            level: vec!["n16".into()],
            seeds: Some(1),
            ..Default::default()
        };
        o.eval_levels = extra.iter().map(|s| s.to_string()).collect();
        harness::spec::resolve(&o)
            .unwrap()
            .iter()
            .map(|s| s.id())
            .collect()
    };
    let spec_json = serde_json::to_string(
        &harness::spec::resolve(&harness::overrides::Overrides {
            task: vec!["parity".into()],
            seeds: Some(1),
            ..Default::default()
        })
        .unwrap()[0],
    )
    .unwrap();
    assert!(!spec_json.contains("eval_levels"), "{spec_json}");
    assert_ne!(ids(&[]), ids(&["n32"]));
}

/// Every task's declared generalization split is one the harness accepts: its training level
/// and every out-of-distribution level exist, and a model trained on the first can be tested on
/// the others (same vocabulary and answer format), with the OOD levels at least as long.
#[test]
fn every_declared_generalization_split_resolves() {
    let (mut declared, mut failures) = (0, Vec::new());
    for info in tasks::registry() {
        let Some(g) = info.generalization else {
            continue;
        };
        declared += 1;
        let specs = harness::spec::resolve(&harness::overrides::Overrides {
            task: vec![info.name.into()],
            level: vec![g.train.into()],
            models: vec!["llama".into()],
            seeds: Some(1),
            eval_levels: g.ood.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .map_err(|e| format!("{}: {e:#}", info.name));
        let specs = match specs {
            Ok(s) => s,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let spec = &specs[0];
        assert_eq!(spec.eval_levels.len(), g.ood.len(), "{}", info.name);
        for i in 0..g.ood.len() {
            let t = harness::train::eval_level_task(spec, i).unwrap();
            assert!(
                t.max_len() >= spec.seq_len,
                "{} {}: shorter",
                info.name,
                g.ood[i]
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(declared >= 13, "{declared} tasks declare a split");
    let table = harness::cli::tasks_table();
    assert!(table.contains("length: n16 → n32 n64 n128"), "{table}");
}

/// `--judge ood`: a verdict reads a run's OOD score (the mean over its evaluation levels) against
/// the mean of those levels' floors; the run's selection is unchanged (same steps, same val).
#[test]
fn judged_on_ood_reads_the_evaluation_levels() {
    use harness::overrides::{Judge, Overrides};
    let base = Overrides {
        task: vec!["hopk".into()],
        level: vec!["k2".into()],
        models: vec!["llama".into()],
        seeds: Some(1),
        eval_levels: vec!["k4".into(), "k8".into()],
        ..Default::default()
    };
    let test = harness::spec::resolve(&base).unwrap().remove(0);
    let ood = harness::spec::resolve(&Overrides {
        judge: Judge::Ood,
        ..base.clone()
    })
    .unwrap()
    .remove(0);
    assert_ne!(test.id(), ood.id());
    assert_eq!((test.steps, test.eval_every), (ood.steps, ood.eval_every));
    // The floor: the mean of the evaluation levels' own floors.
    let level_floor = |i: usize| {
        let e = &ood.eval_levels[i];
        harness::reproduce::spec_floor(&harness::spec::RunSpec {
            level: e.level.clone(),
            task_config: e.task_config.clone(),
            eval_levels: Vec::new(),
            judge: Judge::Test,
            ..ood.clone()
        })
        .unwrap()
    };
    let want = (level_floor(0) + level_floor(1)) / 2.0;
    let got = harness::reproduce::spec_floor(&ood).unwrap();
    assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    assert_ne!(got, harness::reproduce::spec_floor(&test).unwrap());
    // The judged number: the mean of the levels' accuracies, not the training level's.
    let mut result: harness::records::RunResult = serde_json::from_value(serde_json::json!({
        "id": ood.id(), "status": "ok", "task": "hopk", "level": "k2", "model": "llama",
        "seed": 0, "lr": 1e-3, "params": 1, "budget_flops": 1.0, "flops_spent": 1.0, "steps": 1,
        "tokens_seen": 1, "wall_clock_s": 0.0, "device": "cpu", "metric": "teacher-forced",
        "chance": 0.25, "final_loss": 1.0, "best_step": 1, "val_acc": 0.9, "test_acc": 0.8,
        "test_token_acc": 0.8, "test_macro_acc": 0.8,
    }))
    .unwrap();
    for (l, a) in [("k4", 0.5), ("k8", 0.3)] {
        let s = harness::records::LevelScore {
            test_acc: a,
            seq_len: 100,
            chance: 0.25,
        };
        result.eval_levels.insert(l.into(), s);
    }
    let record = |spec: &harness::spec::RunSpec| harness::leaderboard::Record {
        result: result.clone(),
        spec: spec.clone(),
        analysis: None,
    };
    assert_eq!(record(&ood).judged_acc(), Some(0.4));
    assert_eq!(record(&test).judged_acc(), Some(0.8));
    // Without evaluation levels there is nothing to judge: one line.
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(
        &run(&[
            "--task",
            "hopk",
            "--judge",
            "ood",
            "--out",
            dir.path().to_str().unwrap(),
        ]),
        "--judge ood reads the evaluation levels",
    );
}

/// A level the trained model cannot read, or that is no evaluation at all, fails with one line
/// before any run folder is written.
#[test]
fn bad_eval_levels_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let bad = |level: &str, eval: &str, needle: &str| {
        let task = if level.starts_with('v') {
            "memorize"
        } else {
            "parity"
        };
        assert_one_line_error(
            &run(&[
                "--task",
                task,
                "--level",
                level,
                "--eval-levels",
                eval,
                "--out",
                out,
            ]),
            needle,
        );
    };
    bad("v256", "v512", "its vocabulary has");
    bad("n16", "n16", "that is the training level");
    bad("n16", "n32,n32", "twice");
    bad("n16", "n999", "--eval-levels n999");
    assert!(!dir.path().join("runs").exists(), "nothing may be written");
}

/// `--eval-set`: a knob no level names, tested like a level. `--eval-set length=32` on parity
/// n16 is n32's exact config, so its examples are n32's test split byte for byte; the label is
/// the `KEY=VALUE` and the plan key `eval_sets` gives the same spec as the flag.
#[test]
fn eval_set_tests_a_knob_beyond_the_levels() {
    use harness::overrides::Overrides;
    let base = Overrides {
        task: vec!["parity".into()],
        level: vec!["n16".into()],
        models: vec!["llama".into()],
        seeds: Some(1),
        ..Default::default()
    };
    let by_level = harness::spec::resolve(&Overrides {
        eval_levels: vec!["n32".into()],
        ..base.clone()
    })
    .unwrap()
    .remove(0);
    let by_set = harness::spec::resolve(&Overrides {
        eval_set: vec!["length=32".into(), "length=40".into()],
        ..base.clone()
    })
    .unwrap()
    .remove(0);
    let labels: Vec<&str> = by_set
        .eval_levels
        .iter()
        .map(|e| e.level.as_str())
        .collect();
    assert_eq!(labels, ["length=32", "length=40"]);
    assert_eq!(
        by_set.eval_levels[0].task_config,
        by_level.eval_levels[0].task_config
    );
    let examples = |spec: &harness::spec::RunSpec, i: usize| {
        let t = harness::train::eval_level_task(spec, i).unwrap();
        let e = harness::train::eval_level_examples(spec, i).unwrap();
        e.iter()
            .map(|x| harness::gen::example_line(t.as_ref(), x))
            .collect::<Vec<_>>()
    };
    assert_eq!(examples(&by_set, 0), examples(&by_level, 0));
    let t40 = harness::train::eval_level_task(&by_set, 1).unwrap();
    assert_eq!(t40.config()["length"], 40);
    // A plan's `eval_sets` is the flag.
    let plan: harness::sweep::Plan = toml::from_str(
        "tasks = [\"parity\"]\nlevels = [\"n16\"]\nmodels = [\"llama\"]\nseeds = 1\neval_sets = [\"length=32\", \"length=40\"]\n",
    )
    .unwrap();
    let from_plan = harness::sweep::cells(&plan).unwrap();
    assert_eq!(from_plan[0].id(), by_set.id());
    // Refused with one line, nothing written: no change, a repeat, an unknown knob, a
    // vocabulary the model cannot read, not KEY=VALUE.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let bad = |task: &str, level: &str, sets: &[&str], needle: &str| {
        let mut args = vec!["--task", task, "--level", level, "--out", out];
        for s in sets {
            args.extend(["--eval-set", s]);
        }
        assert_one_line_error(&run(&args), needle);
    };
    bad(
        "parity",
        "n16",
        &["length=16"],
        "the training level's own setting",
    );
    bad(
        "parity",
        "n16",
        &["length=32", "length=32"],
        "asked for twice",
    );
    bad("parity", "n16", &["lenght=32"], "--eval-set lenght=32");
    bad(
        "memorize",
        "v256",
        &["vocab_size=512"],
        "its vocabulary has",
    );
    bad("parity", "n16", &["length"], "KEY=VALUE");
    assert!(!dir.path().join("runs").exists(), "nothing may be written");
}

/// A plan sets what the flags set: `match`, `steps`, `epochs`, `precision` give the same specs
/// (so the same run ids) as `--match steps --steps 7` on the main job.
#[test]
fn a_plan_sets_what_the_flags_set() {
    let plan: harness::sweep::Plan = toml::from_str(
        "tasks = [\"mqar\"]\nmodels = [\"llama\", \"lime\"]\nmatch = \"steps\"\nsteps = 7\n",
    )
    .unwrap();
    let from_plan = harness::sweep::cells(&plan).unwrap();
    let from_flags = harness::spec::resolve(&harness::overrides::Overrides {
        task: vec!["mqar".into()],
        models: vec!["llama".into(), "lime".into()],
        seeds: Some(1),
        match_mode: harness::spec::MatchMode::Steps,
        steps: Some(7),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(from_plan, from_flags);
    assert!(from_plan.iter().all(|s| s.steps == 7));
    let bad: Result<harness::sweep::Plan, _> =
        toml::from_str("tasks = [\"mqar\"]\nmatch = \"tokens\"\n");
    assert!(bad.is_err());
}

/// `--backend reference` runs the composed candle ops instead of the fused kernels: the same
/// training to float rounding, recorded in the spec (a different run id), while a default run's
/// spec does not mention the backend (so fused runs keep the ids they had before the flag).
#[test]
fn the_reference_backend_trains_like_the_fused_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = three_tiny_steps(
        "mqar",
        &["llama".into(), "lime".into()],
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        3,
        dir.path(),
    );
    let fused = harness::spec::resolve(&args).unwrap();
    args.backend = models::Backend::Reference;
    let reference = harness::spec::resolve(&args).unwrap();
    for (f, r) in fused.iter().zip(&reference) {
        assert!(!serde_json::to_string(f).unwrap().contains("backend"));
        assert_ne!(f.id(), r.id());
        assert_eq!(r.backend, models::Backend::Reference);
        let (lf, lr) = (
            train_to_done(f, dir.path()).final_loss.unwrap(),
            train_to_done(r, dir.path()).final_loss.unwrap(),
        );
        assert!(
            (lf - lr).abs() <= 1e-4 * lf.abs(),
            "{}: fused {lf} vs reference {lr}",
            f.model
        );
    }
    let err = harness::overrides::parse_backend("fast").unwrap_err();
    assert_eq!(err, "unknown backend `fast` (expected reference or fused)");
}

/// Flags and plan keys are one type: every flag of a run, given on the command line, equals the
/// same setting written as a plan key (so a plan can set everything a flag can, by construction).
#[test]
fn every_run_flag_is_a_plan_key() {
    let cli = harness::cli::parse_from([
        "harness",
        "--task",
        "mqar",
        "--models",
        "llama,lime",
        "--level",
        "kv8",
        "--set",
        "num_kv_pairs=8",
        "--model-set",
        "n_layers=3",
        "--budget-flops",
        "1e12",
        "--match",
        "steps",
        "--steps",
        "7",
        "--epochs",
        "3",
        "--seeds",
        "2",
        "--lr",
        "0.001,0.003",
        "--batch-size",
        "16",
        "--train-pool",
        "100",
        "--n-val",
        "8",
        "--n-test",
        "9",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--backend",
        "reference",
        "--experiment",
        "arith-paper",
        "--out",
        "elsewhere",
        "--versus",
        "llama",
        "--val-metric",
        "task",
    ])
    .unwrap();
    let plan: harness::sweep::Plan = toml::from_str(
        r#"
        tasks = ["mqar"]
        models = ["llama", "lime"]
        levels = ["kv8"]
        set = { num_kv_pairs = 8 }
        model_set = { n_layers = 3 }
        budget_flops = 1e12
        match = "steps"
        steps = 7
        epochs = 3
        seeds = 2
        lrs = [0.001, 0.003]
        batch_size = 16
        train_pool = 100
        n_val = 8
        n_test = 9
        device = "cpu"
        precision = "bf16"
        backend = "reference"
        experiment = "arith-paper"
        out = "elsewhere"
        versus = "llama"
        val_metric = "task"
        "#,
    )
    .unwrap();
    assert_eq!(cli.run.run, plan);
    assert_eq!(plan.seeds(), 2);
    assert_ne!(plan, harness::sweep::Plan::default());
    let bad: Result<harness::sweep::Plan, _> =
        toml::from_str("tasks = [\"mqar\"]\nbackend = \"fast\"\n");
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("unknown backend `fast`"));
}

/// `harness models` lists every built-in variant with its parameter count at the small shape.
#[test]
fn models_lists_every_variant() {
    let o = run(&["models"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for &v in models::Variant::ALL {
        let params = models::accounting::num_params(&models::Config::mha(v, 256, 64, 2, 2));
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {} ", v.name())))
            .unwrap_or_else(|| panic!("{} missing from\n{out}", v.name()));
        assert!(row.contains(&format!("| {params} ")), "{row}");
    }
}

/// Printing into a closed pipe (`harness … | head`) ends the process quietly, by SIGPIPE as any
/// Unix tool does, never with a panic: the read end is closed before the binary writes.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let mut child = harness()
        .args(["tasks"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `bench train --configs default` is the default experiment's shape, read from the mqar preset,
/// and `bench/torch_reference.py` times the same shape (its CONFIGS["default"] tuple) — so the
/// side-by-side comparison at the shape the verdicts run at cannot drift from either.
#[test]
fn bench_default_config_is_the_default_experiment_on_both_sides() {
    let (cfg, t, b) =
        harness::bench::train_config("default", models::Variant::LLAMA).expect("default config");
    let preset = harness::presets::preset("mqar").unwrap();
    assert_eq!(b, preset.batch_size);
    assert_eq!(
        (cfg.n_layers, cfg.d_model, cfg.n_heads),
        (
            preset.model.n_layers,
            preset.model.d_model,
            preset.model.n_heads
        )
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::fs::read_to_string(root.join("bench/torch_reference.py")).unwrap();
    let line = py
        .lines()
        .find(|l| l.trim_start().starts_with("\"default\":"))
        .expect("torch_reference.py has a default config");
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        nums,
        [cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size, t, b],
        "(layers, d, heads, vocab, T, batch)"
    );
    // The torch model's fixed choices hold at the default shape too.
    assert_eq!(cfg.d_ff, 4 * cfg.d_model);
    assert_eq!(cfg.n_kv_heads, cfg.n_heads);
    assert!(!cfg.tie_embeddings);
}
