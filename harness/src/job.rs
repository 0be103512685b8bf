//! The main job (`harness --task ...`): resolve the flags into specs, run every cell (skipping
//! finished ones, waiting for runs another process holds), then write the report — tables and
//! plots — for the whole results folder. The top of the chain: flags → [`crate::spec`] →
//! [`crate::train`] → [`crate::leaderboard`] / [`crate::plots`].

use crate::device::device;
use crate::overrides::Overrides;
use crate::spec::RunSpec;
use crate::train::{run_all, Outcome, RunOptions, WhenBusy};
use anyhow::{Context, Result};
use clap::Args;
use std::path::Path;

/// Flags of the main job (`harness --task mqar ...`): the run settings, then this process's switches.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub run: Overrides,
    /// Print the resolved runs (id, steps, batch, FLOPs, ...) and exit without training.
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub progress: crate::flags::Progress,
    /// Recompute runs whose result already exists.
    #[arg(long)]
    pub force: bool,
    /// Testing aid: stop (as if killed) after this many steps of each run, leaving its checkpoint.
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

/// The main job: resolve, run every cell (skipping finished ones), print the leaderboard.
/// `--plan`: the resolved runs, one row each, without training.
fn plan_table(specs: &[RunSpec]) -> String {
    use tabled::{builder::Builder, settings::Style};
    let mut b = Builder::default();
    b.push_record([
        "run",
        "steps",
        "batch",
        "seq_len",
        "train pool",
        "FLOPs",
        "lr",
        "precision",
    ]);
    for s in specs {
        b.push_record([
            s.id(),
            s.steps.to_string(),
            s.batch_size.to_string(),
            s.seq_len.to_string(),
            s.train_pool.to_string(),
            format!("{:.3e}", s.budget_flops),
            format!("{:e}", s.optim.lr),
            format!("{:?}", s.precision).to_lowercase(),
        ]);
    }
    let mut t = b.build();
    t.with(Style::markdown());
    format!("{t}\n{} runs\n", specs.len())
}

pub fn main_job(a: &RunArgs) -> Result<()> {
    let specs = crate::spec::resolve(&a.run)?;
    if a.plan {
        print!("{}", plan_table(&specs));
        return Ok(());
    }
    a.run.pack()?;
    let dev = device(a.run.device())?;
    a.run.precision.check_device(&dev)?;
    let out = a.run.out();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let opts = RunOptions {
        quiet: a.progress.quiet,
        force: a.force,
        stop_after: a.stop_after,
        when_busy: WhenBusy::Wait,
    };
    let outcomes = run_all(
        &specs,
        &out,
        &dev,
        opts,
        a.run.pack()?,
        |spec, done| match done {
            Outcome::Done(r) if !a.progress.quiet => eprintln!(
                "{}: {} test acc {} in {:.0}s",
                r.id,
                r.status,
                fmt_opt(r.test_acc),
                r.wall_clock_s
            ),
            Outcome::Skipped(r) if !a.progress.quiet => {
                eprintln!("{}: already done, skipped", r.id)
            }
            Outcome::Interrupted => eprintln!(
                "{}: stopped after {} steps (--stop-after)",
                spec.id(),
                a.stop_after.unwrap_or(0)
            ),
            _ => {}
        },
    )?;
    if outcomes.iter().any(|d| matches!(d, Outcome::Interrupted)) {
        return Ok(());
    }
    // One pass over the run folders: write every table and plot, print this job's tasks.
    let (mut rows, unreadable) = write_report(&out)?;
    rows.retain(|r| specs.iter().any(|s| s.task == r.task));
    println!(
        "{}{}",
        crate::leaderboard::render(&rows, crate::leaderboard::Format::Md, true)?,
        crate::leaderboard::unreadable_footer(&unreadable)
    );
    if let Some(base) = &a.run.versus {
        // The verdicts of this job's tasks, printed and appended to leaderboard.md.
        let records: Vec<crate::leaderboard::Record> = crate::leaderboard::load_results(&out)?
            .records
            .into_iter()
            .filter(|r| specs.iter().any(|s| s.task == r.result.task))
            .collect();
        let table = crate::leaderboard::versus_table(&records, base, &out)?;
        print!("{table}");
        let path = out.join("leaderboard.md");
        let mut md = std::fs::read_to_string(&path).unwrap_or_default();
        md += &table;
        crate::io::write_atomic(&path, md.as_bytes())?;
    }
    Ok(())
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// Write leaderboard.{md,csv,json}, the SVG plots and report.html into `dir` from every run
/// under it; returns the rows written and the run folders that could not be read.
pub fn write_report(
    dir: &Path,
) -> Result<(Vec<crate::leaderboard::Row>, crate::leaderboard::Unreadable)> {
    let (loaded, rs) = crate::plots::write_leaderboard(dir)?;
    let unreadable = loaded.unreadable.clone();
    crate::html::write_beside(dir, loaded, rs.clone())?;
    Ok((rs, unreadable))
}
