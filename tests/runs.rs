//! One writer per run, with real processes of the built binary: two processes on one spec, a
//! kill -9 in the middle of a run, and a sweep meeting a run another process holds.

use crate::cli::{harness, losses, result_files, stderr, tiny_run};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The tiny main-job run of `cli::tiny_run`, lime only, `steps` steps, with messages on stderr.
fn long_tiny_run(out: &Path, steps: u64) -> Vec<String> {
    let mut args = tiny_run(out);
    args.retain(|a| a != "--quiet");
    let at = args.iter().position(|a| a == "--steps").unwrap();
    args[at + 1] = steps.to_string();
    let at = args.iter().position(|a| a == "--models").unwrap();
    args[at + 1] = "lime".into();
    args
}

fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Every metric line (step, kind) appears once, and the loss steps run 1..=last without gaps.
fn assert_logged_once(run_dir: &Path, steps: u64) {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("whole lines only");
        let kind = if v.get("loss").is_some() {
            "loss"
        } else {
            "val"
        };
        let key = (v["step"].as_u64().unwrap(), kind);
        assert!(
            seen.insert(key),
            "{key:?} logged twice in {}",
            run_dir.display()
        );
    }
    let loss_steps: Vec<u64> = losses(run_dir).iter().map(|(s, _)| *s).collect();
    assert_eq!(loss_steps.last(), Some(&steps));
    assert!(loss_steps.windows(2).all(|w| w[0] < w[1]));
}

/// No checkpoint or temporary folder is left once the run is done.
fn assert_clean(run_dir: &Path) {
    for e in std::fs::read_dir(run_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("ckpt"),
            "{name} left in {}",
            run_dir.display()
        );
    }
}

#[test]
fn two_processes_on_one_run_have_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let args = long_tiny_run(dir.path(), 300);
    let spawn = || {
        harness()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    // Exactly one of them trained; the other waited (or came late) and used its result.
    let trained = |e: &str| e.contains("test acc");
    let (ea, eb) = (stderr(&a), stderr(&b));
    assert!(trained(&ea) != trained(&eb), "a: {ea}\nb: {eb}");
    let other = if trained(&ea) { &eb } else { &ea };
    assert!(other.contains("already done, skipped"), "{other}");
    let dirs = run_dirs(dir.path());
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("result.json").is_file());
    assert_logged_once(&dirs[0], 300);
    assert_clean(&dirs[0]);
}

#[test]
fn a_run_killed_with_sigkill_resumes_and_ends_as_if_uninterrupted() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let steps = 400;
    let o = harness()
        .args(long_tiny_run(a.path(), steps))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let mut child = harness()
        .args(long_tiny_run(b.path(), steps))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once the first checkpoint is on disk (and before the run ends).
    let t0 = Instant::now();
    let killed = loop {
        let ckpt = b.path().join("runs").read_dir().ok().and_then(|mut d| {
            d.next()
                .map(|e| e.unwrap().path().join("ckpt").join("state.json"))
        });
        if ckpt.is_some_and(|p| p.is_file()) {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            break true;
        }
        if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(120) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        killed,
        "the run ended before its first checkpoint could be seen"
    );
    let dirs = run_dirs(b.path());
    assert!(
        !dirs[0].join("result.json").exists(),
        "killed before the end"
    );
    // The claim died with the process: the rerun neither waits nor starts over.
    let o = harness()
        .args(long_tiny_run(b.path(), steps))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("waiting"), "{}", stderr(&o));
    assert_eq!(result_files(a.path()), result_files(b.path()));
    assert_eq!(losses(&run_dirs(a.path())[0]), losses(&dirs[0]));
    assert_logged_once(&dirs[0], steps);
    assert_clean(&dirs[0]);
}

#[test]
fn a_sweep_leaves_a_run_held_by_another_process_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "tasks = [\"mqar\"]\nmodels = [\"llama\"]\nbudget_flops = 5e7\nbatch_size = 4\n\
             n_val = 4\nn_test = 4\nout = {:?}\n[set]\nvocab_size = 32\nseq_len = 16\n\
             num_kv_pairs = 2\n[model_set]\nd_model = 16\nn_layers = 1\nn_heads = 2\nd_ff = 32\n",
            out.to_str().unwrap()
        ),
    )
    .unwrap();
    let p = plan.to_str().unwrap();
    let o = harness().args(["sweep", p, "--dry-run"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let run_dir = out.join("runs").join(&id);
    // This test process holds the run, as another sweep shard would.
    let claim = harness::claim::claim_run(&run_dir, harness::claim::WhenBusy::Skip, true)
        .unwrap()
        .expect("free");
    let o = harness().args(["sweep", p, "--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("held by another process, left to it: {id}")),
        "{}",
        stderr(&o)
    );
    let names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lock"], "nothing written under another's claim");
    // Released: the next sweep trains it.
    drop(claim);
    let o = harness().args(["sweep", p, "--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run_dir.join("result.json").is_file());
}
