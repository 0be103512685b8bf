//! `harness sweep PLAN.toml [--shard i/n]`: a grid of independent runs. Each cell is skipped when
//! its result exists, so a sweep resumes for free; `--shard i/n` runs every n-th cell starting at i
//! (a Slurm array index or a Kubernetes completion index), and shards merge by collecting run
//! folders into one `runs/`.

use crate::overrides::Overrides;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The plan (TOML).
    pub plan: PathBuf,
    /// Run only cells with index % n == i (0-based): `--shard 0/4`.
    #[arg(long)]
    pub shard: Option<String>,
    /// List the cells (with their run ids) without running them.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub progress: crate::flags::Progress,
}

/// A sweep plan (TOML): the main job's settings under their plan keys (see [`Overrides`]). Every
/// key is optional except `tasks`; unset keys use each task's preset.
pub type Plan = Overrides;

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s
        .split_once('/')
        .with_context(|| format!("--shard expects i/n, got `{s}`"))?;
    let (i, n): (usize, usize) = (
        i.trim().parse().context("--shard index")?,
        n.trim().parse().context("--shard count")?,
    );
    if n == 0 || i >= n {
        bail!("--shard {s}: need 0 <= i < n");
    }
    Ok((i, n))
}

/// The plan's cells as run specs, in a stable order.
pub fn cells(plan: &Plan) -> Result<Vec<crate::spec::RunSpec>> {
    let plan = match &plan.experiment {
        Some(name) => Overrides {
            experiment: None,
            ..crate::overrides::experiment(name, plan)?
        },
        None => plan.clone(),
    };
    if plan.task.is_empty() {
        bail!("the plan lists no tasks");
    }
    let levels: Vec<Vec<String>> = if plan.level.is_empty() {
        vec![vec![]]
    } else {
        plan.level.iter().map(|l| vec![l.clone()]).collect()
    };
    let mut out = Vec::new();
    for task in &plan.task {
        for level in &levels {
            let cell = Overrides {
                task: vec![task.clone()],
                level: level.clone(),
                ..plan.clone()
            };
            out.extend(crate::spec::resolve(&cell).with_context(|| {
                format!(
                    "cell {task}{}",
                    level
                        .first()
                        .map(|l| format!(" level {l}"))
                        .unwrap_or_default()
                )
            })?);
        }
    }
    Ok(out)
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.plan)
        .with_context(|| format!("cannot read plan {}", a.plan.display()))?;
    let plan: Plan = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid plan {}: {}", a.plan.display(), e.message()))?;
    let (i, n) = a
        .shard
        .as_deref()
        .map(parse_shard)
        .transpose()?
        .unwrap_or((0, 1));
    let all = cells(&plan)?;
    let mine: Vec<_> = all
        .iter()
        .enumerate()
        .filter(|(k, _)| k % n == i)
        .map(|(_, s)| s)
        .collect();
    if a.dry_run {
        for s in &mine {
            println!("{}", s.id());
        }
        return Ok(());
    }
    plan.pack()?;
    let dev = crate::device::device(plan.device())?;
    plan.precision.check_device(&dev)?;
    let out = plan.out();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    eprintln!(
        "sweep: {} of {} cells in shard {i}/{n}",
        mine.len(),
        all.len()
    );
    // A cell another process is training (an overlapping shard, a second job on the same
    // volume) is left to it and reported; rerunning the sweep later picks up its result.
    let opts = crate::train::RunOptions {
        quiet: a.progress.quiet,
        when_busy: crate::train::WhenBusy::Skip,
        ..Default::default()
    };
    let mine: Vec<_> = mine.into_iter().cloned().collect();
    let mut busy = Vec::new();
    crate::train::run_all(&mine, &out, &dev, opts, plan.pack()?, |s, done| {
        if let crate::train::Outcome::Busy = done {
            busy.push(s.id());
        }
    })?;
    if !busy.is_empty() {
        eprintln!(
            "sweep: {} cell(s) held by another process, left to it: {}",
            busy.len(),
            busy.join(", ")
        );
    }
    Ok(())
}
