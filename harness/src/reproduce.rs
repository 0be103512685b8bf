//! `harness reproduce`: the LIMe paper's claims as named protocols, trained as ordinary runs and
//! judged from committed results.
//!
//! A [`Claim`] is a set of [`Overrides`] (tasks, levels, shape, budget, ≥ 3 seeds, ≥ 3 learning
//! rates, the models compared) at CPU scale, and optionally at the paper's GPU scale. Its runs go
//! through the main job's [`crate::train::run_all`] into `results/reproduction/runs/<id>/`, so each
//! is cached and resumable, and `reproduce` skips every run already there. The verdict is
//! rendered only from those folders' `config.json` and `result.json` ([`render`], no clock, no
//! machine state), so `--render-only` re-renders `REPRODUCTION.md` byte for byte (tested) and the
//! verdict survives a change of machine. Per (task, level): each model's learning rate is chosen
//! on val, its test accuracy is the mean ± 95% CI over seeds at that lr, and the challenger's
//! difference to the baseline gets Welch's t-test ([`crate::stats::welch`]).

use crate::device::device;
use crate::leaderboard::{load_results, rows, Record, Row};
use crate::overrides::Overrides;
use crate::records::RunStatus;
use crate::spec::RunSpec;
use crate::stats::welch;
use crate::train::{run_all, Outcome, RunOptions, WhenBusy};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Claims, comma-separated [default: every claim].
    #[arg(long, value_delimiter = ',')]
    pub claims: Vec<String>,
    /// Protocol size: `cpu` (fits a 2-core machine) or `gpu` (the paper's sizes, where defined).
    #[arg(long, value_enum, default_value_t = Scale::Cpu)]
    pub scale: Scale,
    /// Train nothing: render the report from the committed results only.
    #[arg(long)]
    pub render_only: bool,
    /// The committed results (run folders under `<results>/runs/`).
    #[arg(long, default_value = "results/reproduction")]
    pub results: PathBuf,
    /// The report.
    #[arg(long, default_value = "REPRODUCTION.md")]
    pub out: PathBuf,
    /// Device for training: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Train up to N of a claim's runs packed into one model (see the main job's `--pack`);
    /// the results are the runs' own, packed or not.
    #[arg(long, default_value_t = 1)]
    pub pack: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    Cpu,
    Gpu,
}

/// One claim of the paper, as a protocol and a comparison.
pub struct Claim {
    pub name: &'static str,
    pub title: &'static str,
    /// What the paper (or the suite's earlier evidence) reports.
    pub reported: &'static str,
    pub baseline: &'static str,
    /// Each is compared with the baseline.
    pub challengers: &'static [&'static str],
    pub cpu: fn() -> Overrides,
    /// The paper-sized protocol, for a machine with a GPU.
    pub gpu: Option<fn() -> Overrides>,
}

/// Seeds and learning rates of every CPU-scale protocol (the minimum the verdict needs).
const SEEDS: u64 = 3;
const LRS: [f64; 3] = [3e-4, 1e-3, 3e-3];

fn mqar_cpu() -> Overrides {
    Overrides {
        task: vec!["mqar".into()],
        level: vec!["kv4".into(), "kv8".into()],
        models: vec!["llama".into(), "lime".into()],
        seeds: Some(SEEDS),
        lr: LRS.to_vec(),
        ..Overrides::default()
    }
}

fn rivals_cpu() -> Overrides {
    Overrides {
        level: vec!["kv8".into()],
        models: models::Variant::ALL
            .iter()
            .map(|v| v.name().to_string())
            .collect(),
        ..mqar_cpu()
    }
}

/// AET at the paper's shape (the `arith` preset: 4 layers, 4 heads, d=32, lr linear decay) on
/// the paper's 50,000 fixed examples per operand count, with a budget that fits a CPU: 2.5e12
/// FLOPs is about 3,600 steps of 64 at 6 operands (4.6 epochs; ~2 min on 2 cores).
fn aet_cpu() -> Overrides {
    Overrides {
        task: vec!["arith".into()],
        level: vec!["ops4".into(), "ops5".into(), "ops6".into()],
        models: vec!["llama".into(), "lime".into()],
        train_pool: Some(50_000),
        budget_flops: Some(2.5e12),
        seeds: Some(SEEDS),
        lr: LRS.to_vec(),
        ..Overrides::default()
    }
}

/// The paper's AET protocol (`--experiment arith-paper`: 200 epochs of 50,000, batch 256) with
/// the verdict's seeds and learning rates.
fn aet_gpu() -> Overrides {
    Overrides {
        experiment: Some("arith-paper".into()),
        seeds: Some(SEEDS),
        lr: LRS.to_vec(),
        ..Overrides::default()
    }
}

/// Every claim, in report order.
pub fn claims() -> Vec<Claim> {
    vec![
        Claim {
            name: "mqar",
            title: "MQAR: does LIMe recall better than llama at equal FLOPs?",
            reported: "not a table of the paper; a one-seed PyTorch time-to-99% run of a nearby \
                   setting took llama 2,850 steps and lime 300",
            baseline: "llama",
            challengers: &["lime"],
            // The MQAR preset (V256, T64, 2 layers, d=64, 2 heads, batch 128, 6e12 FLOPs per run).
            cpu: mqar_cpu,
            gpu: None,
        },
        Claim {
            name: "rivals",
            title: "Every depth connection against llama on one MQAR cell",
            reported:
                "each rival's paper reports gains over its baseline (DenseFormer, \
                       Hyper-Connections, ResFormer); the router ablations are the LIMe paper's own",
            baseline: "llama",
            challengers: &[
                "lime",
                "lime-dynamic",
                "lime-avg",
                "lime-last-2",
                "lime-first-2",
                "lime-same-head",
                "lime-per-dim",
                "lime-random-init",
                "denseformer",
                "hyper",
                "hyper-static",
                "resformer",
            ],
            // The MQAR claim's kv8 cell: its llama and lime runs are the same runs (same specs).
            cpu: rivals_cpu,
            gpu: None,
        },
        Claim {
            name: "aet",
            title: "Arithmetic expressions: does LIMe solve deeper expressions than llama?",
            reported: "LIMe 71.6% vs LLaMA 41.3% at 6 operands, similar at 4 (4 layers, 4 heads, \
                   d=32; 50,000 examples per operand count, 200 epochs, lr 1e-3 linear decay)",
            baseline: "llama",
            challengers: &["lime"],
            cpu: aet_cpu,
            gpu: Some(aet_gpu),
        },
    ]
}

fn selected(names: &[String]) -> Result<Vec<Claim>> {
    let all = claims();
    if names.is_empty() {
        return Ok(all);
    }
    let known: Vec<&str> = all.iter().map(|c| c.name).collect();
    for n in names {
        if !known.contains(&n.as_str()) {
            bail!("unknown claim `{n}` (known: {})", known.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| names.iter().any(|n| n == c.name))
        .collect())
}

/// The claim's runs at `scale` (`None`: no protocol at that scale).
pub fn protocol(claim: &Claim, scale: Scale) -> Result<Option<Vec<RunSpec>>> {
    let o = match scale {
        Scale::Cpu => Some((claim.cpu)()),
        Scale::Gpu => claim.gpu.map(|f| f()),
    };
    o.map(|o| crate::spec::resolve(&o).with_context(|| format!("claim {}", claim.name)))
        .transpose()
}

pub fn run(a: &ReproduceArgs) -> Result<()> {
    let claims = selected(&a.claims)?;
    if !a.render_only {
        let dev = device(&a.device)?;
        for c in &claims {
            let Some(specs) = protocol(c, a.scale)? else {
                eprintln!("claim {}: no {:?}-scale protocol", c.name, a.scale);
                continue;
            };
            let opts = RunOptions {
                quiet: a.quiet,
                when_busy: WhenBusy::Skip,
                ..RunOptions::default()
            };
            let mut n = 0;
            run_all(
                &specs,
                &a.results,
                &dev,
                opts,
                a.pack.max(1),
                |spec, done| {
                    n += 1;
                    match done {
                        Outcome::Done(r) if !a.quiet => eprintln!(
                            "claim {} run {n}/{}: {} {}",
                            c.name,
                            specs.len(),
                            r.id,
                            r.status
                        ),
                        Outcome::Busy => {
                            eprintln!("{}: held by another process, left to it", spec.id())
                        }
                        _ => {}
                    }
                },
            )?;
        }
    }
    let text = render(&claims, &a.results)?;
    crate::io::write_atomic(&a.out, text.as_bytes())?;
    eprintln!("wrote {}", a.out.display());
    if a.results.join("runs").is_dir() {
        // The leaderboard and its figures of every committed run, beside the run folders.
        crate::job::write_report(&a.results)?;
        eprintln!(
            "wrote {}/leaderboard.md and its figures",
            a.results.display()
        );
    }
    Ok(())
}

/// Test accuracies of the row's finished, non-diverged runs (its task, level, model, chosen lr).
fn accs(records: &[&Record], row: &Row) -> Vec<f64> {
    records
        .iter()
        .filter(|r| r.result.task == row.task && r.result.level == row.level)
        .filter(|r| r.result.model == row.model && r.result.lr == row.lr)
        .filter(|r| r.result.status == RunStatus::Ok)
        .filter_map(|r| r.result.test_acc)
        .collect()
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}", 100.0 * v))
        .unwrap_or_else(|| "-".into())
}

/// The verdict of one comparison.
fn verdict(missing: usize, w: Option<crate::stats::Welch>) -> String {
    match (missing, w) {
        (0, Some(w)) if w.diff > 0.0 && w.p < 0.05 => "**reproduced** (same sign, p < 0.05)".into(),
        (0, Some(w)) if w.diff > 0.0 => "same sign, not significant".into(),
        (0, Some(w)) if w.diff == 0.0 => "**not reproduced** (no difference)".into(),
        (0, Some(_)) => "**not reproduced**".into(),
        (0, None) => "too few runs for a test".into(),
        (m, _) => format!("incomplete: {m} run(s) of the protocol not yet committed"),
    }
}

/// `REPRODUCTION.md` from the committed results of `claims` (a pure function of the files).
pub fn render(claims: &[Claim], results: &std::path::Path) -> Result<String> {
    let loaded = if results.join("runs").is_dir() {
        load_results(results)?
    } else {
        Default::default()
    };
    let mut md = String::from(
        "# Reproduction: the LIMe paper's claims at matched FLOPs\n\n\
         Rendered by `harness reproduce --render-only` from the run folders committed under \
         `results/reproduction/runs/` (each run's `config.json`, `result.json`, `metrics.jsonl`); \
         re-rendering gives this file byte for byte, and `harness reproduce --claims NAME` trains \
         whatever a protocol still lacks. Per task and level, each model's learning rate is chosen \
         on val; test accuracy is the mean ± 95% Student-t CI over seeds at that lr; the \
         difference challenger − baseline has Welch's 95% CI and two-sided p-value. Verdicts: \
         *reproduced* (same sign as reported, p < 0.05), *same sign, not significant*, *not \
         reproduced*.\n",
    );
    for c in claims {
        md += &format!(
            "\n## {} (`{}`)\n\nReported: {}.\n\n",
            c.title, c.name, c.reported
        );
        let specs = protocol(c, Scale::Cpu)?.unwrap_or_default();
        let ids: BTreeSet<String> = specs.iter().map(|s| s.id()).collect();
        let mine: Vec<&Record> = loaded
            .records
            .iter()
            .filter(|r| ids.contains(&r.result.id))
            .collect();
        let mut lrs: Vec<f64> = specs.iter().map(|s| s.optim.lr).collect();
        lrs.sort_by(f64::total_cmp);
        lrs.dedup();
        let lrs: Vec<String> = lrs.iter().map(|l| format!("{l:e}")).collect();
        let seeds: BTreeSet<u64> = specs.iter().map(|s| s.seed).collect();
        md += &format!(
            "Protocol (CPU scale): {} runs — tasks {}, models {} vs {}, seeds {}, learning rates \
             {}, {} per run; {} of them committed.{}\n\n",
            specs.len(),
            specs.iter().map(|s| format!("{} {}", s.task, s.level)).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", "),
            c.challengers.join(", "),
            c.baseline,
            seeds.len(),
            lrs.join(", "),
            specs.first().map(|s| format!("{:.1e} FLOPs", s.budget_flops)).unwrap_or_default(),
            mine.len(),
            match c.gpu {
                Some(_) => format!(
                    " The paper-sized protocol: `harness reproduce --claims {} --scale gpu --device cuda`.",
                    c.name
                ),
                None => String::new(),
            }
        );
        md += "| task | level | model | lrs tried | lr (chosen on val) | seeds | test acc % (95% CI) | val acc % | params | FLOPs | wall-clock s |\n";
        md += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        let owned: Vec<Record> = mine.iter().map(|r| (*r).clone()).collect();
        let table = rows(&owned);
        let mut by_level: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
        for r in &table {
            by_level
                .entry((r.task.clone(), r.level.clone()))
                .or_default()
                .push(r);
            let tried: BTreeSet<String> = mine
                .iter()
                .filter(|x| x.result.task == r.task && x.result.level == r.level)
                .filter(|x| x.result.model == r.model)
                .map(|x| format!("{:e}", x.result.lr))
                .collect();
            md += &format!(
                "| {} | {} | {} | {} | {:e} | {} | {} ± {} | {} | {} | {:.2e} | {:.0} |\n",
                r.task,
                r.level,
                r.model,
                tried.len(),
                r.lr,
                r.seeds,
                pct(r.test_mean),
                pct(r.test_ci95),
                pct(r.val_mean),
                r.params,
                r.flops,
                r.wall_clock_s
            );
        }
        md += "\n| task | level | comparison | difference (pts, 95% CI) | Welch t, df | p | verdict |\n|---|---|---|---:|---:|---:|---|\n";
        let levels: BTreeSet<(String, String)> = specs
            .iter()
            .map(|s| (s.task.clone(), s.level.clone()))
            .collect();
        for (task, level) in levels {
            let rows_here = by_level.get(&(task.clone(), level.clone()));
            let pick = |m: &str| rows_here.and_then(|rs| rs.iter().find(|r| r.model == m).copied());
            // Protocol runs of model `m` at this level not yet committed.
            let missing = |m: &str| {
                let want = specs
                    .iter()
                    .filter(|s| s.task == task && s.level == level && s.model == m)
                    .count();
                let have = mine
                    .iter()
                    .filter(|r| r.result.task == task && r.result.level == level)
                    .filter(|r| r.result.model == m)
                    .count();
                want - have
            };
            for &ch in c.challengers {
                let w = match (pick(ch), pick(c.baseline)) {
                    (Some(a), Some(b)) => welch(&accs(&mine, a), &accs(&mine, b)),
                    _ => None,
                };
                let (diff, tdf, p) = match w {
                    Some(w) => (
                        format!("{:+.1} ± {:.1}", 100.0 * w.diff, 100.0 * w.ci95),
                        format!("{:.2}, {:.1}", w.t, w.df),
                        format!("{:.3}", w.p),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                md += &format!(
                    "| {task} | {level} | {ch} − {} | {diff} | {tdf} | {p} | {} |\n",
                    c.baseline,
                    verdict(missing(ch) + missing(c.baseline), w)
                );
            }
        }
        if !mine.is_empty() {
            let tasks: BTreeSet<&str> = specs.iter().map(|s| s.task.as_str()).collect();
            md += "\nFigures (all committed runs, written by the same command): ";
            md += &tasks
                .iter()
                .map(|t| {
                    format!(
                        "[{t} accuracy by level](results/reproduction/{t}-accuracy-vs-level.svg), \
                         [{t} loss vs FLOPs](results/reproduction/{t}-loss-vs-flops.svg)"
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            md += ".\n";
        }
        let devices: BTreeSet<&str> = mine.iter().map(|r| r.result.device.as_str()).collect();
        if !devices.is_empty() {
            md += &format!(
                "\nRuns made on: {}.\n",
                devices.into_iter().collect::<Vec<_>>().join("; ")
            );
        }
    }
    Ok(md)
}
