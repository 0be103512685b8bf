//! `harness rerun RUN_DIR`: retrain a saved run from its `config.json` alone and say whether the
//! new result equals the saved `result.json` — how anyone checks a committed number. Training is
//! deterministic (batches are a function of spec and step, weights of seed and name), so on the
//! same kind of machine every figure but the wall-clock must come back equal.

use crate::flags::{DeviceFlag, Progress};
use crate::records::RunResult;
use crate::spec::RunSpec;
use crate::train::{run_one, Outcome, RunOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RerunArgs {
    /// The saved run folder (holding config.json and result.json).
    pub run_dir: PathBuf,
    /// Where to retrain [default: a temporary folder, removed afterwards].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub progress: Progress,
}

/// The fields of two results that differ, ignoring wall-clock and device (`name: saved vs new`).
pub fn differences(saved: &RunResult, new: &RunResult) -> Vec<String> {
    let mut a = serde_json::to_value(saved).expect("results serialize");
    let mut b = serde_json::to_value(new).expect("results serialize");
    let mut out = Vec::new();
    for v in [&mut a, &mut b] {
        let o = v.as_object_mut().expect("a result is an object");
        o.remove("wall_clock_s");
        o.remove("device");
    }
    for (k, va) in a.as_object().expect("object") {
        let vb = &b[k];
        if va != vb {
            out.push(format!("{k}: saved {va} vs new {vb}"));
        }
    }
    out
}

pub fn run(a: &RerunArgs) -> Result<()> {
    let run = crate::rundir::RunDir::at(&a.run_dir);
    let spec: RunSpec = run
        .read_spec()
        .with_context(|| format!("rerun {}", a.run_dir.display()))?;
    let saved: RunResult = run
        .read_result()
        .with_context(|| format!("rerun {}", a.run_dir.display()))?;
    if saved.id != spec.id() {
        bail!(
            "{}: result.json is run {}'s, config.json run {}'s",
            a.run_dir.display(),
            saved.id,
            spec.id()
        );
    }
    if spec.code_version != crate::spec::code_version() {
        eprintln!(
            "note: the run was made by {}, this binary is {}: numbers may differ",
            spec.code_version,
            crate::spec::code_version()
        );
    }
    let tmp;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
            tmp.path().to_path_buf()
        }
    };
    let dev = a.device.open()?;
    let opts = RunOptions {
        quiet: a.progress.quiet,
        force: true,
        ..RunOptions::default()
    };
    let new = match run_one(&spec, &out, &dev, opts)? {
        Outcome::Done(r) => r,
        _ => bail!("rerun of {} did not finish", spec.id()),
    };
    let diff = differences(&saved, &new);
    if diff.is_empty() {
        println!(
            "{}: reproduced — every figure equal (test acc {}, {:.0} s here, {:.0} s saved)",
            spec.id(),
            new.test_acc
                .map(|x| format!("{x:.6}"))
                .unwrap_or_else(|| "-".into()),
            new.wall_clock_s,
            saved.wall_clock_s
        );
        Ok(())
    } else {
        // Sums in another order (another SIMD width, another CPU kind) move the last bits and,
        // over hundreds of steps, the figures: say where each result was made.
        let machines = if saved.device == new.device {
            String::new()
        } else {
            format!(
                " (saved on {}, rerun on {}: results are exact only on the same kind of machine)",
                saved.device, new.device
            )
        };
        bail!(
            "{}: the rerun differs: {}{machines}",
            spec.id(),
            diff.join("; ")
        )
    }
}
