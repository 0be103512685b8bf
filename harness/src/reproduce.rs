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
//!
//! A claim searches its learning rates one of two ways ([`Search`]): the full grid (every seed at
//! every lr, the lr chosen on the mean val over seeds), or staged (seed 0 at every lr, the lr
//! chosen on seed 0's val, then the other seeds at that lr only: 5 runs per model instead of 9,
//! the same ≥ 3 lrs tried and ≥ 3 seeds at the chosen lr). [`plan`] says which runs a staged
//! protocol wants given the results so far; `run` trains a model's stage 1 and then its stage 2.

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
use std::path::{Path, PathBuf};

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
    /// Further comparisons `(challenger, baseline)` among the protocol's own models, for which
    /// no paper gives a direction: judged *differs* (p < 0.05) or not, never *reproduced*.
    pub versus: &'static [(&'static str, &'static str)],
    pub cpu: fn() -> Vec<Arm>,
    /// The GPU-scale protocol (the paper's sizes where it gives them), for a machine with a GPU.
    pub gpu: Option<fn() -> Vec<Arm>>,
    /// How the learning rate is searched (both scales).
    pub search: Search,
}

/// How a claim searches its learning rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Every seed at every lr; the lr with the best mean val over seeds.
    Grid,
    /// Seed 0 at every lr; the lr with the best seed-0 val; then the other seeds at that lr.
    Staged,
}

/// One arm of a claim's protocol: runs compared among themselves. Most claims have one arm (an
/// empty label); the depth claim has one per depth, so that lime is compared with llama at the
/// same depth.
pub struct Arm {
    /// Shown next to the level (`k4 · 2 layers`); empty for a claim of one arm.
    pub label: String,
    pub overrides: Overrides,
}

/// A protocol of one arm.
fn one(overrides: Overrides) -> Vec<Arm> {
    vec![Arm {
        label: String::new(),
        overrides,
    }]
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

/// The rivals claim's challengers, in training order: lime, the other papers' connections, then
/// LIMe's router ablations.
const RIVALS: [&str; 16] = [
    "lime",
    "denseformer",
    "hyper",
    "hyper-static",
    "resformer",
    "attnres",
    "attnres-block",
    "muddformer",
    "mhc",
    "lime-dynamic",
    "lime-avg",
    "lime-last-2",
    "lime-first-2",
    "lime-same-head",
    "lime-per-dim",
    "lime-random-init",
];

/// LIMe's router ablations (and the dynamic router) against full static LIMe: does the part of
/// the router they remove or add matter on this cell?
const ABLATIONS_VS_LIME: [(&str, &str); 7] = [
    ("lime-dynamic", "lime"),
    ("lime-avg", "lime"),
    ("lime-last-2", "lime"),
    ("lime-first-2", "lime"),
    ("lime-same-head", "lime"),
    ("lime-per-dim", "lime"),
    ("lime-random-init", "lime"),
];

fn rivals_cpu() -> Overrides {
    Overrides {
        level: vec!["kv8".into()],
        models: std::iter::once("llama")
            .chain(RIVALS)
            .map(String::from)
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

/// ProsQA from scratch at the suite's preset (4 layers, 4 heads, d=64, the `mixed` level of 3–6
/// hops, 5e12 FLOPs per run), where the paper fine-tunes a 150M model. At this budget (109 steps
/// of 64) neither model learns the answer format (0.2% vs chance 50%, committed); a symbolic
/// rendering at batch 16 (~1,000 steps, tried once) reached 24%: ProsQA needs the GPU protocol.
fn prosqa_cpu() -> Vec<Arm> {
    one(Overrides {
        task: vec!["prosqa".into()],
        level: vec!["mixed".into()],
        models: vec!["llama".into(), "lime".into()],
        seeds: Some(SEEDS),
        lr: LRS.to_vec(),
        ..Overrides::default()
    })
}

/// ProsQA from scratch at a size that can learn it: 6 layers, d=256, 8 heads, SwiGLU 1024 (~6M
/// parameters), 4e15 FLOPs per run (~5,000 steps of 64). Sized, not yet run.
fn prosqa_gpu() -> Vec<Arm> {
    one(Overrides {
        model_sets: vec![
            "d_model=256".into(),
            "n_layers=6".into(),
            "n_heads=8".into(),
            "n_kv_heads=8".into(),
            "d_ff=1024".into(),
        ],
        budget_flops: Some(4e15),
        ..prosqa_cpu().remove(0).overrides
    })
}

/// k-hop induction heads at k = 4 (needs about log2 k + 1 = 3 layers of plain attention, so 2
/// layers is below that depth), d=64, 4 heads, lime against llama at each depth (one arm per
/// depth), `budget` FLOPs per run.
fn depth_arms(depths: &[usize], budget: f64) -> Vec<Arm> {
    depths
        .iter()
        .map(|&l| Arm {
            label: format!("{l} layers"),
            overrides: Overrides {
                task: vec!["hopk".into()],
                level: vec!["k4".into()],
                models: vec!["llama".into(), "lime".into()],
                model_sets: vec![format!("n_layers={l}")],
                budget_flops: Some(budget),
                seeds: Some(SEEDS),
                lr: LRS.to_vec(),
                ..Overrides::default()
            },
        })
        .collect()
}

/// At 2, 4 and 8 layers and 3e12 FLOPs per run (531 steps of 64 at 2 layers, 133 at 8).
fn depth_cpu() -> Vec<Arm> {
    depth_arms(&[2, 4, 8], 3e12)
}

/// At 2, 4, 8 and 16 layers and 1e14 FLOPs per run (~4,400 steps at 8 layers). Sized, not yet run.
fn depth_gpu() -> Vec<Arm> {
    depth_arms(&[2, 4, 8, 16], 1e14)
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
            versus: &[],
            // The MQAR preset (V256, T64, 2 layers, d=64, 2 heads, batch 128, 6e12 FLOPs per run).
            cpu: || one(mqar_cpu()),
            gpu: None,
            search: Search::Grid,
        },
        Claim {
            name: "rivals",
            title: "Every depth connection against llama on one MQAR cell",
            reported: "each rival's paper reports gains over its baseline (DenseFormer, \
                       Hyper-Connections, ResFormer, Attention Residuals, MUDDFormer, mHC); the \
                       router ablations are the LIMe paper's own, and are also compared with \
                       LIMe itself (no direction assumed: *differs* or not)",
            baseline: "llama",
            challengers: &RIVALS,
            versus: &ABLATIONS_VS_LIME,
            // The MQAR claim's kv8 cell: its llama and lime runs are the same runs (same specs).
            cpu: || one(rivals_cpu()),
            gpu: None,
            search: Search::Staged,
        },
        Claim {
            name: "aet",
            title: "Arithmetic expressions: does LIMe solve deeper expressions than llama?",
            reported: "LIMe 71.6% vs LLaMA 41.3% at 6 operands, similar at 4 (4 layers, 4 heads, \
                   d=32; 50,000 examples per operand count, 200 epochs, lr 1e-3 linear decay)",
            baseline: "llama",
            challengers: &["lime"],
            versus: &[],
            cpu: || one(aet_cpu()),
            gpu: Some(|| one(aet_gpu())),
            search: Search::Grid,
        },
        Claim {
            name: "prosqa",
            title: "ProsQA: does LIMe plan better over a graph of facts?",
            reported: "LIMe 77.8% vs LLaMA 69.4% (150M models fine-tuned on ProsQA); here both \
                   are trained from scratch at 4 layers, d=64",
            baseline: "llama",
            challengers: &["lime"],
            versus: &[],
            cpu: prosqa_cpu,
            gpu: Some(prosqa_gpu),
            search: Search::Staged,
        },
        Claim {
            name: "depth",
            title: "Depth: does LIMe buy what extra layers buy? (k-hop induction, 2/4/8 layers)",
            reported: "deep models where 64-layer LIMe beats 128-layer LLaMA; here lime is \
                   compared with llama at each depth (the table also shows lime at L against \
                   llama at 2L)",
            baseline: "llama",
            challengers: &["lime"],
            versus: &[],
            cpu: depth_cpu,
            gpu: Some(depth_gpu),
            search: Search::Staged,
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

/// An arm's label and its runs.
pub type ArmRuns = (String, Vec<RunSpec>);

/// The claim's arms at `scale`, each with its runs (`None`: no protocol at that scale).
pub fn arms(claim: &Claim, scale: Scale) -> Result<Option<Vec<ArmRuns>>> {
    let arms = match scale {
        Scale::Cpu => Some((claim.cpu)()),
        Scale::Gpu => claim.gpu.map(|f| f()),
    };
    let Some(arms) = arms else {
        return Ok(None);
    };
    arms.into_iter()
        .map(|a| {
            let specs = crate::spec::resolve(&a.overrides)
                .with_context(|| format!("claim {}", claim.name))?;
            Ok((a.label, specs))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The claim's runs at `scale`, every arm's (`None`: no protocol at that scale).
pub fn protocol(claim: &Claim, scale: Scale) -> Result<Option<Vec<RunSpec>>> {
    Ok(arms(claim, scale)?.map(|a| a.into_iter().flat_map(|(_, s)| s).collect()))
}

/// The runs one model of one arm and cell (a task, level, model and shape) of a protocol wants.
pub struct Plan {
    /// Wanted, as far as the results so far tell (stage 1 and, once it is complete, stage 2).
    pub runs: Vec<RunSpec>,
    /// Wanted but not yet named: stage 2's runs while stage 1 is incomplete.
    pub pending: usize,
    /// The lr stage 1 chose (staged search, stage 1 complete).
    pub chosen: Option<f64>,
}

/// The specs of an arm grouped by cell (task, level, model, shape), in order of first appearance.
fn groups(specs: &[RunSpec]) -> Vec<Vec<RunSpec>> {
    let mut out: Vec<(String, Vec<RunSpec>)> = Vec::new();
    for s in specs {
        let key = format!("{}/{}/{}/{}", s.task, s.level, s.model, s.cell_key());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(s.clone()),
            None => out.push((key, vec![s.clone()])),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

/// What one cell's protocol (`group`: its full grid of seeds × lrs) wants, given `records`: the
/// whole grid for [`Search::Grid`]; for [`Search::Staged`] the lowest seed at every lr, then —
/// once all of those are finished — the other seeds at the lr whose lowest-seed run has the best
/// val accuracy (ties broken as the leaderboard breaks them).
pub fn plan(search: Search, group: &[RunSpec], records: &[Record]) -> Plan {
    let first = group.iter().map(|s| s.seed).min().unwrap_or(0);
    let seeds: BTreeSet<u64> = group.iter().map(|s| s.seed).collect();
    if search == Search::Grid {
        return Plan {
            runs: group.to_vec(),
            pending: 0,
            chosen: None,
        };
    }
    let stage1: Vec<RunSpec> = group.iter().filter(|s| s.seed == first).cloned().collect();
    let ids: BTreeSet<String> = stage1.iter().map(|s| s.id()).collect();
    let done: Vec<Record> = records
        .iter()
        .filter(|r| ids.contains(&r.result.id))
        .cloned()
        .collect();
    let chosen = match done.len() == stage1.len() {
        true => rows(&done).first().map(|r| r.lr),
        false => None,
    };
    let pending = (seeds.len() - 1) * usize::from(chosen.is_none());
    let mut runs = stage1;
    if let Some(lr) = chosen {
        runs.extend(
            group
                .iter()
                .filter(|s| s.seed != first && s.optim.lr == lr)
                .cloned(),
        );
    }
    Plan {
        runs,
        pending,
        chosen,
    }
}

pub fn run(a: &ReproduceArgs) -> Result<()> {
    let claims = selected(&a.claims)?;
    if !a.render_only {
        let dev = device(&a.device)?;
        'claims: for c in &claims {
            let Some(arms) = arms(c, a.scale)? else {
                eprintln!("claim {}: no {:?}-scale protocol", c.name, a.scale);
                continue;
            };
            let opts = RunOptions {
                quiet: a.quiet,
                when_busy: WhenBusy::Skip,
                ..RunOptions::default()
            };
            let mut n = 0;
            for (_, specs) in &arms {
                for group in groups(specs) {
                    // Stage 1, then (staged search) stage 2 at the lr stage 1 chose.
                    for _stage in 0..2 {
                        let records = match a.results.join("runs").is_dir() {
                            true => load_results(&a.results)?.records,
                            false => Vec::new(),
                        };
                        let have: BTreeSet<&str> =
                            records.iter().map(|r| r.result.id.as_str()).collect();
                        let todo: Vec<RunSpec> = plan(c.search, &group, &records)
                            .runs
                            .into_iter()
                            .filter(|s| !have.contains(s.id().as_str()))
                            .collect();
                        if todo.is_empty() {
                            continue;
                        }
                        let done = run_all(
                            &todo,
                            &a.results,
                            &dev,
                            opts,
                            a.pack.max(1),
                            |spec, done| {
                                n += 1;
                                match done {
                                    Outcome::Done(r) if !a.quiet => {
                                        eprintln!("claim {} run {n}: {} {}", c.name, r.id, r.status)
                                    }
                                    Outcome::Busy => eprintln!(
                                        "{}: held by another process, left to it",
                                        spec.id()
                                    ),
                                    _ => {}
                                }
                            },
                        )?;
                        if done.iter().any(|d| matches!(d, Outcome::Interrupted)) {
                            break 'claims;
                        }
                    }
                }
            }
        }
    }
    let report = report(&claims, &a.results)?;
    crate::io::write_atomic(&a.out, report.md.as_bytes())?;
    eprintln!("wrote {}", a.out.display());
    if a.results.join("runs").is_dir() {
        // The leaderboard and its figures of every committed run, beside the run folders.
        crate::job::write_report(&a.results)?;
        for (name, diffs) in &report.differences {
            let path = a.results.join(format!("{name}-differences.svg"));
            difference_plot(&path, name, diffs)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
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

/// Whether a row's test accuracy is above chance: the lower end of its 95% CI above the chance
/// level (a single seed, no CI: its accuracy above chance).
fn beats_chance(r: &Row) -> bool {
    r.test_mean
        .is_some_and(|m| m - r.test_ci95.unwrap_or(0.0) > r.chance)
}

/// The verdict of one comparison; `learned`: whether either model beats chance; `directed`:
/// whether a paper reports a direction (positive) to reproduce, else (a [`Claim::versus`] pair)
/// the difference is only judged significant or not.
fn verdict(
    missing: usize,
    w: Option<crate::stats::Welch>,
    learned: bool,
    directed: bool,
) -> String {
    match (missing, w) {
        (0, Some(_)) if !learned => {
            "**inconclusive**: neither model beats chance (the protocol does not train the task)"
                .into()
        }
        (0, Some(w)) if !directed => match w {
            w if w.p < 0.05 => "**differs** (p < 0.05)".into(),
            w if w.diff == 0.0 && w.ci95 == 0.0 => "no difference".into(),
            _ => "no significant difference".into(),
        },
        (0, Some(w)) if w.diff > 0.0 && w.p < 0.05 => "**reproduced** (same sign, p < 0.05)".into(),
        (0, Some(w)) if w.diff > 0.0 => "same sign, not significant".into(),
        (0, Some(w)) if w.diff == 0.0 => "**not reproduced** (no difference)".into(),
        (0, Some(_)) => "**not reproduced**".into(),
        (0, None) => "too few runs for a test".into(),
        (m, _) => format!("incomplete: {m} run(s) of the protocol not yet committed"),
    }
}

/// One challenger − baseline difference with its 95% CI (test accuracy, fractions), for the
/// difference figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// `task level[ · arm] challenger`.
    pub label: String,
    pub diff: f64,
    pub ci95: f64,
}

/// What [`report`] renders: the markdown and, per claim with at least one tested comparison,
/// its differences (drawn by `run` as `<claim>-differences.svg`).
pub struct Report {
    pub md: String,
    pub differences: Vec<(String, Vec<Difference>)>,
}

/// `REPRODUCTION.md` from the committed results of `claims` (a pure function of the files).
pub fn render(claims: &[Claim], results: &Path) -> Result<String> {
    Ok(report(claims, results)?.md)
}

/// [`render`] and the differences behind its verdicts.
pub fn report(claims: &[Claim], results: &Path) -> Result<Report> {
    let loaded = if results.join("runs").is_dir() {
        load_results(results)?
    } else {
        Default::default()
    };
    let head = String::from(
        "# Reproduction: the LIMe paper's claims at matched FLOPs\n\n\
         Rendered by `harness reproduce --render-only` from the run folders committed under \
         `results/reproduction/runs/` (each run's `config.json`, `result.json`, `metrics.jsonl`); \
         re-rendering gives this file byte for byte, and `harness reproduce --claims NAME` trains \
         whatever a protocol still lacks. Per task and level, each model's learning rate is chosen \
         on val; test accuracy is the mean ± 95% Student-t CI over seeds at that lr; the \
         difference challenger − baseline has Welch's 95% CI and two-sided p-value. Verdicts: \
         *reproduced* (same sign as reported, p < 0.05), *same sign, not significant*, *not \
         reproduced*, or *inconclusive* where neither model's test accuracy is above chance \
         (the lower end of its 95% CI above the chance level): a protocol that trains neither \
         model says nothing about the claim. Wall-clock is each run's own training time on the \
         machine named under \"Runs made on\", which was often shared with compiles and other \
         runs: it is a record, not a speed figure (BENCHMARKS.md holds those). To check any \
         number, `harness rerun results/reproduction/runs/<id>` retrains that run from its \
         `config.json` alone and compares every figure of its `result.json` (exactly equal on \
         the same kind of machine).\n",
    );
    let mut md = String::new();
    let mut differences = Vec::new();
    let mut summary = String::new();
    for c in claims {
        md += &format!(
            "\n## {} (`{}`)\n\nReported: {}.\n\n",
            c.title, c.name, c.reported
        );
        let cpu = arms(c, Scale::Cpu)?.unwrap_or_default();
        let (text, diffs, rows) = section(c, "CPU scale", &cpu, &loaded.records);
        md += &text;
        summary += &rows;
        if !diffs.is_empty() {
            md += &format!(
                "\nDifferences {} − {} with their 95% CIs: \
                 [figure](results/reproduction/{}-differences.svg).\n",
                c.challengers.join(", "),
                c.baseline,
                c.name
            );
            differences.push((c.name.to_string(), diffs));
        }
        if let Some(gpu) = arms(c, Scale::Gpu)? {
            let ids: BTreeSet<String> = gpu.iter().flat_map(|(_, s)| s).map(|s| s.id()).collect();
            // Its size as its search would train it (a staged search: 5 runs per model).
            let wanted: usize = gpu
                .iter()
                .flat_map(|(_, s)| groups(s))
                .map(|g| {
                    let p = plan(c.search, &g, &[]);
                    p.runs.len() + p.pending
                })
                .sum();
            let cmd = format!(
                "`harness reproduce --claims {} --scale gpu --device cuda`",
                c.name
            );
            if loaded.records.iter().any(|r| ids.contains(&r.result.id)) {
                md += &format!("\n### The GPU-scale protocol ({cmd})\n\n");
                let (text, _, rows) = section(c, "GPU scale", &gpu, &loaded.records);
                md += &text;
                summary += &rows.replace(
                    &format!("| `{}` |", c.name),
                    &format!("| `{}` (GPU) |", c.name),
                );
            } else {
                md += &format!(
                    "\nThe GPU-scale protocol ({wanted} runs) has not been run: no GPU has been lent \
                     to the sessions that trained these results. To run it: {cmd}, then commit \
                     its runs with `scripts/commit-reproduction.sh`.\n"
                );
            }
        }
    }
    let md = format!(
        "{head}\n## Every verdict at a glance\n\n\
         | claim | task, level | comparison | difference (pts, 95% CI) | p | verdict |\n\
         |---|---|---|---:|---:|---|\n{summary}{md}"
    );
    Ok(Report { md, differences })
}

/// The protocol line, the table and the verdicts of one scale of a claim, its differences, and
/// its verdicts as rows of the summary table.
fn section(
    c: &Claim,
    scale: &str,
    arms: &[ArmRuns],
    records: &[Record],
) -> (String, Vec<Difference>, String) {
    let specs: Vec<&RunSpec> = arms.iter().flat_map(|(_, s)| s).collect();
    let ids: BTreeSet<String> = specs.iter().map(|s| s.id()).collect();
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| ids.contains(&r.result.id))
        .collect();
    let owned: Vec<Record> = mine.iter().map(|r| (*r).clone()).collect();
    // Per arm, each cell's plan (what the search wants given the committed runs).
    let plans: Vec<Vec<Plan>> = arms
        .iter()
        .map(|(_, s)| {
            groups(s)
                .iter()
                .map(|g| plan(c.search, g, &owned))
                .collect()
        })
        .collect();
    let wanted: usize = plans
        .iter()
        .flatten()
        .map(|p| p.runs.len() + p.pending)
        .sum();
    // The ids of the runs the plans want, and of the committed runs.
    let planned: BTreeSet<String> = plans
        .iter()
        .flatten()
        .flat_map(|p| p.runs.iter().map(|s| s.id()))
        .collect();
    let committed: BTreeSet<&str> = mine.iter().map(|r| r.result.id.as_str()).collect();
    let mut lrs: Vec<f64> = specs.iter().map(|s| s.optim.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let lrs: Vec<String> = lrs.iter().map(|l| format!("{l:e}")).collect();
    let seeds: BTreeSet<u64> = specs.iter().map(|s| s.seed).collect();
    let budgets: BTreeSet<String> = specs
        .iter()
        .map(|s| format!("{:.1e}", s.budget_flops))
        .collect();
    let labels: Vec<&str> = arms
        .iter()
        .map(|(l, _)| l.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    let mut md = format!(
        "Protocol ({scale}): {} runs — tasks {}{}, models {} vs {}, seeds {}, learning rates {}{}, \
         {} FLOPs per run; {} of them committed.{}\n\n",
        wanted,
        specs
            .iter()
            .map(|s| format!("{} {}", s.task, s.level))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "),
        if labels.is_empty() {
            String::new()
        } else {
            format!(" at {}", labels.join(", "))
        },
        c.challengers.join(", "),
        c.baseline,
        seeds.len(),
        lrs.join(", "),
        match c.search {
            Search::Grid => " (every seed at every lr)".to_string(),
            Search::Staged => format!(
                " (searched on seed {} alone; the other seeds at the lr it chose on val)",
                seeds.first().copied().unwrap_or(0)
            ),
        },
        budgets.into_iter().collect::<Vec<_>>().join(" / "),
        mine.iter()
            .filter(|r| planned.contains(&r.result.id))
            .count(),
        match (scale, c.gpu) {
            ("CPU scale", Some(_)) => format!(
                " The GPU-scale protocol: `harness reproduce --claims {} --scale gpu --device cuda`.",
                c.name
            ),
            _ => String::new(),
        }
    );
    md += "| task | level | model | lrs tried | lr (chosen on val) | seeds | test acc % (95% CI) | val acc % | chance % | params | FLOPs | wall-clock s |\n";
    md += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let mut verdicts = String::new();
    let mut summary = String::new();
    let mut diffs = Vec::new();
    for ((label, arm_specs), plans) in arms.iter().zip(&plans) {
        let arm_ids: BTreeSet<String> = arm_specs.iter().map(|s| s.id()).collect();
        let arm: Vec<&Record> = mine
            .iter()
            .filter(|r| arm_ids.contains(&r.result.id))
            .copied()
            .collect();
        // The runs behind the statistics: the whole grid, or (staged) the chosen lr's seeds.
        let used_ids: BTreeSet<String> = plans
            .iter()
            .flat_map(|p| {
                p.runs
                    .iter()
                    .filter(move |s| p.chosen.is_none_or(|lr| s.optim.lr == lr))
            })
            .map(|s| s.id())
            .collect();
        let used: Vec<&Record> = arm
            .iter()
            .filter(|r| used_ids.contains(&r.result.id))
            .copied()
            .collect();
        let shown = |level: &str| {
            if label.is_empty() {
                level.to_string()
            } else {
                format!("{level} · {label}")
            }
        };
        let owned: Vec<Record> = used.iter().map(|r| (*r).clone()).collect();
        let table = rows(&owned);
        let mut by_level: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
        for r in &table {
            by_level
                .entry((r.task.clone(), r.level.clone()))
                .or_default()
                .push(r);
            let tried: BTreeSet<String> = arm
                .iter()
                .filter(|x| x.result.task == r.task && x.result.level == r.level)
                .filter(|x| x.result.model == r.model)
                .map(|x| format!("{:e}", x.result.lr))
                .collect();
            md += &format!(
                "| {} | {} | {} | {} | {:e} | {} | {} ± {} | {} | {} | {} | {:.2e} | {:.0} |\n",
                r.task,
                shown(&r.level),
                r.model,
                tried.len(),
                r.lr,
                r.seeds,
                pct(r.test_mean),
                pct(r.test_ci95),
                pct(r.val_mean),
                pct(Some(r.chance)),
                r.params,
                r.flops,
                r.wall_clock_s
            );
        }
        let levels: BTreeSet<(String, String)> = arm_specs
            .iter()
            .map(|s| (s.task.clone(), s.level.clone()))
            .collect();
        for (task, level) in levels {
            let rows_here = by_level.get(&(task.clone(), level.clone()));
            let pick = |m: &str| rows_here.and_then(|rs| rs.iter().find(|r| r.model == m).copied());
            // Protocol runs of model `m` at this level not yet committed.
            let missing = |m: &str| {
                plans
                    .iter()
                    .filter(|p| {
                        p.runs
                            .first()
                            .is_some_and(|s| s.task == task && s.level == level && s.model == m)
                    })
                    .map(|p| {
                        let have = p
                            .runs
                            .iter()
                            .filter(|s| committed.contains(s.id().as_str()))
                            .count();
                        p.runs.len() - have + p.pending
                    })
                    .sum::<usize>()
            };
            // Each comparison: the claim's (challenger − baseline, verdict against the reported
            // direction, drawn in the difference figure), then its `versus` pairs (neutral).
            let pairs = c
                .challengers
                .iter()
                .map(|&ch| (ch, c.baseline, true))
                .chain(c.versus.iter().map(|&(ch, base)| (ch, base, false)));
            for (ch, base, claimed) in pairs {
                let w = match (pick(ch), pick(base)) {
                    (Some(a), Some(b)) => welch(&accs(&used, a), &accs(&used, b)),
                    _ => None,
                };
                let (diff, tdf, p) = match w {
                    Some(w) => {
                        if claimed {
                            diffs.push(Difference {
                                label: format!("{task} {} {ch}", shown(&level)),
                                diff: w.diff,
                                ci95: w.ci95,
                            });
                        }
                        (
                            format!("{:+.1} ± {:.1}", 100.0 * w.diff, 100.0 * w.ci95),
                            format!("{:.2}, {:.1}", w.t, w.df),
                            format!("{:.3}", w.p),
                        )
                    }
                    None => ("-".into(), "-".into(), "-".into()),
                };
                let v = verdict(
                    missing(ch) + missing(base),
                    w,
                    pick(ch).is_some_and(beats_chance) || pick(base).is_some_and(beats_chance),
                    claimed,
                );
                verdicts += &format!(
                    "| {task} | {} | {ch} − {base} | {diff} | {tdf} | {p} | {v} |\n",
                    shown(&level),
                );
                summary += &format!(
                    "| `{}` | {task} {} | {ch} − {base} | {diff} | {p} | {v} |\n",
                    c.name,
                    shown(&level),
                );
            }
        }
    }
    md += "\n| task | level | comparison | difference (pts, 95% CI) | Welch t, df | p | verdict |\n|---|---|---|---:|---:|---:|---|\n";
    md += &verdicts;
    if !mine.is_empty() && scale == "CPU scale" {
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
    (md, diffs, summary)
}

/// The differences of one claim as a forest plot: one row per comparison, the difference in
/// points with its 95% CI as an error bar, and the zero line (no difference).
pub fn difference_plot(path: &Path, claim: &str, diffs: &[Difference]) -> Result<()> {
    use plotters::prelude::*;
    let n = diffs.len();
    let lo = diffs
        .iter()
        .map(|d| 100.0 * (d.diff - d.ci95))
        .fold(0.0f64, f64::min);
    let hi = diffs
        .iter()
        .map(|d| 100.0 * (d.diff + d.ci95))
        .fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.05).max(1.0);
    let (x0, x1) = ((lo - pad).max(-100.0 - pad), (hi + pad).min(100.0 + pad));
    let mut buf = String::new();
    {
        let height = 120 + 36 * n as u32;
        let root = SVGBackend::with_string(&mut buf, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{claim}: challenger − baseline, test accuracy (95% CI)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(200)
            .build_cartesian_2d(x0..x1, -0.5..n as f64 - 0.5)?;
        let names: Vec<String> = diffs.iter().map(|d| d.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    names[n - 1 - i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| format!("{x:+.0}"))
            .x_desc("difference in test accuracy (percentage points)")
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, -0.5), (0.0, n as f64 - 0.5)],
            BLACK.stroke_width(1),
        )))?;
        let blue = RGBColor(31, 119, 180);
        for (i, d) in diffs.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let (m, h) = (100.0 * d.diff, 100.0 * d.ci95);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(m - h, y), (m + h, y)],
                blue.stroke_width(2),
            )))?;
            for x in [m - h, m + h] {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, y - 0.15), (x, y + 0.15)],
                    blue.stroke_width(2),
                )))?;
            }
            chart.draw_series(std::iter::once(Circle::new((m, y), 5, blue.filled())))?;
        }
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}
