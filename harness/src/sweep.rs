//! `harness sweep PLAN.toml [--shard i/n]`: a grid of independent runs. Each cell is skipped when
//! its result exists, so a sweep resumes for free; `--shard i/n` runs every n-th cell starting at i
//! (a Slurm array index or a Kubernetes completion index), and shards merge by collecting run
//! folders into one `runs/`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
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
    #[arg(long)]
    pub quiet: bool,
}

/// A sweep plan. Every key is optional except `tasks`; unset keys use each task's preset.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub tasks: Vec<String>,
    #[serde(default)]
    pub levels: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub seeds: Option<u64>,
    #[serde(default)]
    pub lrs: Vec<f64>,
    pub budget_flops: Option<f64>,
    /// `"flops"` (default) or `"steps"`, as `--match`.
    #[serde(default, rename = "match")]
    pub match_mode: crate::spec::MatchMode,
    /// Steps per run with `match = "steps"`, as `--steps`.
    pub steps: Option<u64>,
    /// Epochs of the fixed train pool, as `--epochs`.
    pub epochs: Option<u64>,
    /// `"f32"` (default) or `"bf16"` (GPU), as `--precision`.
    #[serde(default)]
    pub precision: crate::spec::Precision,
    /// `"fused"` (default) or `"reference"`, as `--backend`.
    #[serde(default)]
    pub backend: models::Backend,
    pub batch_size: Option<usize>,
    pub train_pool: Option<u64>,
    pub n_val: Option<u64>,
    pub n_test: Option<u64>,
    #[serde(default = "default_out")]
    pub out: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    /// Task knobs, as `--set`.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    /// Model-shape keys, as `--model-set`.
    #[serde(default)]
    pub model_set: BTreeMap<String, toml::Value>,
}

fn default_out() -> PathBuf {
    PathBuf::from("runs")
}
fn default_device() -> String {
    "cpu".into()
}

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

fn toml_sets(m: &BTreeMap<String, toml::Value>) -> Vec<String> {
    m.iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect()
}

/// The plan's cells as run specs, in a stable order.
pub fn cells(plan: &Plan) -> Result<Vec<crate::spec::RunSpec>> {
    if plan.tasks.is_empty() {
        bail!("the plan lists no tasks");
    }
    let levels: Vec<Vec<String>> = if plan.levels.is_empty() {
        vec![vec![]]
    } else {
        plan.levels.iter().map(|l| vec![l.clone()]).collect()
    };
    let mut out = Vec::new();
    for task in &plan.tasks {
        for level in &levels {
            let args = crate::spec::RunArgs {
                task: vec![task.clone()],
                models: plan.models.clone(),
                level: level.clone(),
                sets: toml_sets(&plan.set),
                model_sets: toml_sets(&plan.model_set),
                budget_flops: plan.budget_flops,
                match_mode: plan.match_mode,
                steps: plan.steps,
                epochs: plan.epochs,
                precision: plan.precision,
                backend: plan.backend,
                seeds: plan.seeds.unwrap_or(1),
                lr: plan.lrs.clone(),
                batch_size: plan.batch_size,
                train_pool: plan.train_pool,
                n_val: plan.n_val,
                n_test: plan.n_test,
                device: plan.device.clone(),
                out: plan.out.clone(),
                ..Default::default()
            };
            out.extend(crate::spec::resolve(&args).with_context(|| {
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
    let dev = crate::device::device(&plan.device)?;
    plan.precision.check_device(&dev)?;
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("cannot create {}", plan.out.display()))?;
    eprintln!(
        "sweep: {} of {} cells in shard {i}/{n}",
        mine.len(),
        all.len()
    );
    // A cell another process is training (an overlapping shard, a second job on the same
    // volume) is left to it and reported; rerunning the sweep later picks up its result.
    let opts = crate::train::RunOptions {
        quiet: a.quiet,
        when_busy: crate::train::WhenBusy::Skip,
        ..Default::default()
    };
    let mut busy = Vec::new();
    for s in mine {
        if let crate::train::Outcome::Busy = crate::train::run_one(s, &plan.out, &dev, opts)? {
            busy.push(s.id());
        }
    }
    if !busy.is_empty() {
        eprintln!(
            "sweep: {} cell(s) held by another process, left to it: {}",
            busy.len(),
            busy.join(", ")
        );
    }
    Ok(())
}
