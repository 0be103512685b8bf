//! `harness reproduce`: the paper's claims ([`crate::claims`]) trained as ordinary runs and
//! judged from committed results ([`crate::verdict`], rendered by [`crate::report`]).
//!
//! Each run goes through the main job's [`crate::train::run_all`] into
//! `results/reproduction/runs/<id>/`, so it is cached and resumable, and `reproduce` trains only
//! what the protocol wants next given the runs already there:
//!
//! 1. per cell (arm, task, level, model), the **tuning seed** at every lr of the grid; the lr is
//!    chosen on its val accuracy ([`choose_lr`]: ties within 1/n_val broken by val loss, then by
//!    the middle lr, and flagged; a winner on the grid's edge extends the grid along the ladder,
//!    at most twice);
//! 2. **evaluation seeds** 1, 2, … at the chosen lr, as many as the verdict rules ask for (5,
//!    then 7, then 10 per arm while a comparison is undecided).
//!
//! The tuning seed never enters the statistics. [`evidence`] turns a cell's evaluation runs into
//! the per-seed numbers the rules judge (a diverged run counts at the floor, unsolved).

use crate::claims::{claims, Claim, Family, LADDER, LRS, TUNING_SEED};
use crate::flags::{DeviceFlag, Progress};
use crate::leaderboard::{evidence, load_results, Record};
use crate::spec::RunSpec;
use crate::train::{run_all, Outcome, RunOptions, WhenBusy};
use crate::verdict::{choose_lr_on, Comparison, Judged, Rules, Selection, Tuned, LOOKS};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Claims, comma-separated [default: every claim].
    #[arg(long, value_delimiter = ',')]
    pub claims: Vec<String>,
    /// Train only the cells of these models (comma-separated) [default: every model]; the
    /// report still judges every comparison from what is committed.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Train only the cells of these levels (comma-separated) [default: every level].
    #[arg(long, value_delimiter = ',')]
    pub levels: Vec<String>,
    #[command(flatten)]
    pub stage: Stage,
    /// Print the committed run folders no claim's protocol (at either scale) resolves to —
    /// earlier protocols' runs, which git history keeps — and train nothing.
    #[arg(long)]
    pub stale: bool,
    /// The committed results (run folders under `<results>/runs/`).
    #[arg(long, default_value = "results/reproduction")]
    pub results: PathBuf,
    /// The report.
    #[arg(long, default_value = "REPRODUCTION.md")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub progress: Progress,
    /// Train up to N of a claim's runs packed into one model (see the main job's `--pack`);
    /// the results are the runs' own, packed or not.
    #[arg(long, default_value_t = 1)]
    pub pack: usize,
}

/// What a protocol command (`reproduce`, `suite`) does this time: its scale, and whether it
/// trains, only renders, or only lists what it would train.
#[derive(Args, Debug, Clone, Copy)]
pub struct Stage {
    /// Protocol size: `cpu` (fits a 2-core machine) or `gpu` (the paper's sizes where defined;
    /// for the suite, defined and sized but not run here).
    #[arg(long, value_enum, default_value_t = Scale::Cpu)]
    pub scale: Scale,
    /// Train nothing: render the report from the committed results only.
    #[arg(long)]
    pub render_only: bool,
    /// Print the runs the protocol wants next (train nothing, write nothing).
    #[arg(long)]
    pub plan: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    Cpu,
    Gpu,
}

pub fn selected(names: &[String]) -> Result<Vec<Claim>> {
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

/// An arm's label and every run it may train.
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

/// The learning rate the tuning seed chooses: the best val accuracy over the grid; lrs within
/// 1/n_val of the best are a tie, broken by the lower val loss (where every tied run has one),
/// else by the lr nearest the grid's geometric middle (the smaller on equal distance); a winner
/// on the grid's edge adds the ladder's next lr beyond it (at most two extensions in all).
pub fn choose_lr(tuned: &[Tuned], n_val: u64) -> Selection {
    choose_lr_on(tuned, n_val, &LRS, &LADDER)
}

/// One cell of a protocol: an arm's (task, level, model) with every spec it may train.
#[derive(Clone, Debug)]
pub struct Cell {
    pub arm: String,
    pub task: String,
    pub level: String,
    pub model: String,
    pub specs: Vec<RunSpec>,
}

impl Cell {
    /// The cell's spec of one seed and lr, if its protocol has it.
    pub fn spec(&self, seed: u64, lr: f64) -> Option<&RunSpec> {
        self.specs
            .iter()
            .find(|s| s.seed == seed && s.optim.lr == lr)
    }

    fn is(&self, arm: &str, task: &str, level: &str, model: &str) -> bool {
        self.arm == arm && self.task == task && self.level == level && self.model == model
    }
}

/// The cells of a protocol, in order of first appearance.
pub fn cells(arms: &[ArmRuns]) -> Vec<Cell> {
    let mut out: Vec<Cell> = Vec::new();
    for (arm, specs) in arms {
        for s in specs {
            match out
                .iter_mut()
                .find(|c| c.is(arm, &s.task, &s.level, &s.model))
            {
                Some(c) => c.specs.push(s.clone()),
                None => out.push(Cell {
                    arm: arm.clone(),
                    task: s.task.clone(),
                    level: s.level.clone(),
                    model: s.model.clone(),
                    specs: vec![s.clone()],
                }),
            }
        }
    }
    out
}

/// A spec's committed run, if any (`records` sorted by id).
pub fn record<'a>(records: &'a [Record], spec: &RunSpec) -> Option<&'a Record> {
    let id = spec.id();
    records
        .binary_search_by(|r| r.result.id.as_str().cmp(&id))
        .ok()
        .map(|i| &records[i])
}

/// The lr selection of a cell from its committed tuning runs.
pub fn selection(cell: &Cell, records: &[Record]) -> Selection {
    let tuned: Vec<Tuned> = cell
        .specs
        .iter()
        .filter(|s| s.seed == TUNING_SEED)
        .filter_map(|s| record(records, s))
        .map(crate::leaderboard::tuned)
        .collect();
    let n_val = cell.specs.first().map(|s| s.n_val).unwrap_or(1).max(1);
    choose_lr(&tuned, n_val)
}

/// A cell's evaluation runs at its chosen lr: seeds 1, 2, … in order, as far as they are
/// committed without a gap.
pub fn evaluation_runs<'a>(cell: &Cell, lr: f64, records: &'a [Record]) -> Vec<&'a Record> {
    let mut out = Vec::new();
    for seed in TUNING_SEED + 1.. {
        match cell.spec(seed, lr).and_then(|s| record(records, s)) {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// One comparison of a family, located: arm, task, level, challenger and baseline cells.
#[derive(Clone, Debug)]
pub struct Located {
    pub arm: String,
    pub task: String,
    pub level: String,
    pub challenger: usize,
    pub baseline: usize,
    /// The challenger computes the same function as the baseline at this shape (same
    /// parameters, logits and gradients from the same seed): the comparison is refused.
    pub vacuous: bool,
}

/// A family's comparisons over `cells`, in arm, level and challenger order.
pub fn locate(family: &Family, cells: &[Cell]) -> Result<Vec<Located>> {
    let mut out = Vec::new();
    let mut places: Vec<(String, String, String)> = Vec::new();
    for c in cells.iter().filter(|c| family.covers(&c.arm)) {
        let p = (c.arm.clone(), c.task.clone(), c.level.clone());
        if !places.contains(&p) {
            places.push(p);
        }
    }
    for (arm, task, level) in places {
        let find = |m: &str| cells.iter().position(|c| c.is(&arm, &task, &level, m));
        let Some(b) = find(family.baseline) else {
            continue;
        };
        for ch in family.challengers.names() {
            let Some(a) = find(ch) else {
                continue;
            };
            let (sa, sb) = (&cells[a].specs[0], &cells[b].specs[0]);
            let vacuous = crate::check_device::same_function(&sa.model_config, &sb.model_config)?;
            out.push(Located {
                arm: arm.clone(),
                task: task.clone(),
                level: level.clone(),
                challenger: a,
                baseline: b,
                vacuous,
            });
        }
    }
    Ok(out)
}

/// Train examples the majority predictor counts.
const FLOOR_TRAIN: u64 = 4096;

/// A cell's measured floor: the best of its task's chance, the majority predictor's test
/// accuracy ([`tasks::floor::majority`]) and the task's shallow heuristics
/// ([`tasks::floor::shallow`]), over the cell's own test split, remembered by task config in
/// `memo`.
pub fn floor_of(cell: &Cell, memo: &mut BTreeMap<String, f64>) -> Result<f64> {
    let spec = &cell.specs[0];
    let key = format!(
        "{}/{}/{}/{}/{:?}/{:?}/{:?}",
        spec.task,
        spec.level,
        spec.task_config,
        spec.n_test,
        spec.val_metric,
        spec.judge,
        spec.eval_levels
    );
    if let Some(&f) = memo.get(&key) {
        return Ok(f);
    }
    let f = spec_floor(spec)?;
    memo.insert(key, f);
    Ok(f)
}

/// The floor of what a run is judged on ([`floor_of`] without the memo; `harness calibrate`
/// measures its positions from it too).
pub fn spec_floor(spec: &RunSpec) -> Result<f64> {
    // Judged on its evaluation levels: the mean of their floors, as its score is the mean of
    // their accuracies.
    if spec.judge == crate::overrides::Judge::Ood && !spec.eval_levels.is_empty() {
        let floors = spec
            .eval_levels
            .iter()
            .map(|e| {
                spec_floor(&RunSpec {
                    level: e.base_level(&spec.level).to_string(),
                    task_config: e.task_config.clone(),
                    eval_levels: Vec::new(),
                    judge: crate::overrides::Judge::Test,
                    ..spec.clone()
                })
            })
            .collect::<Result<Vec<f64>>>()?;
        return Ok(floors.iter().sum::<f64>() / floors.len() as f64);
    }
    // Judged on a two-way choice whose candidates the question lists in random order: no
    // predictor that ignores the facts beats 1/2.
    if spec.val_metric == crate::overrides::ValMetric::Choice {
        return Ok(0.5);
    }
    let task =
        crate::train::task_from_spec(spec).map_err(|e| anyhow::anyhow!("{}: {e}", spec.task))?;
    let test = tasks::generate_range(task.as_ref(), tasks::Split::Test, 0, spec.n_test);
    Ok(tasks::floor::majority(task.as_ref(), FLOOR_TRAIN, &test)
        .max(tasks::floor::shallow(task.as_ref(), &test))
        .max(task.chance()))
}

/// Where a claim stands at one scale: every cell's selection and evaluation runs, every
/// family's verdicts, and the runs the rules want next.
pub struct Standing {
    pub cells: Vec<Cell>,
    pub selections: Vec<Selection>,
    /// Per cell, its evaluation runs (seeds 1.. at the chosen lr, committed, no gap).
    pub evaluation: Vec<Vec<Record>>,
    /// Per family: its comparisons and their verdicts (refused ones have none).
    pub families: Vec<Vec<(Located, Option<Judged>)>>,
    /// Runs the protocol wants (tuning and evaluation), committed or not.
    pub wanted: Vec<RunSpec>,
    /// Per cell, its measured floor (cells in some live comparison).
    pub floors: Vec<Option<f64>>,
}

impl Standing {
    /// Wanted runs not yet committed.
    pub fn missing(&self, records: &[Record]) -> Vec<RunSpec> {
        self.wanted
            .iter()
            .filter(|s| record(records, s).is_none())
            .cloned()
            .collect()
    }
}

/// The standing of `claim` at `scale` given the committed `records` (sorted by id) under
/// `results`.
pub fn standing(
    claim: &Claim,
    arms: &[ArmRuns],
    records: &[Record],
    results: &Path,
) -> Result<Standing> {
    let cells = cells(arms);
    let selections: Vec<Selection> = cells.iter().map(|c| selection(c, records)).collect();
    let evaluation: Vec<Vec<Record>> = cells
        .iter()
        .zip(&selections)
        .map(|(c, s)| match s.chosen {
            Some(lr) => evaluation_runs(c, lr, records)
                .into_iter()
                .cloned()
                .collect(),
            None => Vec::new(),
        })
        .collect();
    // Every family's comparisons, and the cells some comparison that is not refused involves:
    // only those are trained and get a floor.
    let located: Vec<Vec<Located>> = claim
        .families
        .iter()
        .map(|f| locate(f, &cells))
        .collect::<Result<_>>()?;
    let mut involved = vec![false; cells.len()];
    for l in located.iter().flatten().filter(|l| !l.vacuous) {
        involved[l.challenger] = true;
        involved[l.baseline] = true;
    }
    let mut memo = BTreeMap::new();
    let floors = cells
        .iter()
        .zip(&involved)
        .map(|(c, &inv)| match inv {
            true => floor_of(c, &mut memo).map(Some),
            false => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    // Seeds per arm each cell is asked for: the first look's, or more where a comparison of it
    // continues.
    let mut seeds_wanted = vec![LOOKS[0]; cells.len()];
    let mut families = Vec::new();
    for (f, located) in claim.families.iter().zip(located) {
        let live: Vec<usize> = (0..located.len())
            .filter(|&i| !located[i].vacuous)
            .collect();
        // One rules per comparison (the floor and the paper's effect vary by level); Holm over
        // the family.
        let comps: Vec<(Comparison, Rules)> = live
            .iter()
            .map(|&i| {
                let l = &located[i];
                // Both cells are involved, so both have a floor.
                let floor = [l.baseline, l.challenger]
                    .iter()
                    .filter_map(|&c| floors[c])
                    .fold(0.0, f64::max);
                let rules = claim.rules(f, &l.level, floor);
                let arm =
                    |c: usize| evidence(results, &evaluation[c].iter().collect::<Vec<_>>(), &rules);
                (
                    Comparison {
                        a: arm(l.challenger),
                        b: arm(l.baseline),
                    },
                    rules,
                )
            })
            .collect();
        let mut out = crate::verdict::judge_family_with(&comps);
        crate::verdict::fill_exact(&mut out, &comps);
        let mut judged: Vec<Option<Judged>> = vec![None; located.len()];
        for (&i, j) in live.iter().zip(out) {
            if let Some(n) = j.verdict.wants() {
                let l = &located[i];
                for c in [l.challenger, l.baseline] {
                    seeds_wanted[c] = seeds_wanted[c].max(n);
                }
            }
            judged[i] = Some(j);
        }
        families.push(located.into_iter().zip(judged).collect());
    }
    let mut wanted = Vec::new();
    for (i, (c, sel)) in cells.iter().zip(&selections).enumerate() {
        if !involved[i] {
            continue; // only in refused comparisons
        }
        for s in c
            .specs
            .iter()
            .filter(|x| x.seed == TUNING_SEED && sel.grid.contains(&x.optim.lr))
        {
            wanted.push(s.clone());
        }
        if let Some(lr) = sel.chosen {
            for seed in 1..=seeds_wanted[i] as u64 {
                if let Some(x) = c.spec(TUNING_SEED + seed, lr) {
                    wanted.push(x.clone());
                }
            }
        }
    }
    Ok(Standing {
        cells,
        selections,
        evaluation,
        families,
        wanted,
        floors,
    })
}

/// The run folders under `results` whose spec no claim's protocol resolves to, at either scale.
pub fn stale(results: &Path) -> Result<Vec<PathBuf>> {
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for c in claims() {
        for scale in [Scale::Cpu, Scale::Gpu] {
            for (_, specs) in arms(&c, scale)?.unwrap_or_default() {
                ids.extend(specs.iter().map(|s| s.id()));
            }
        }
    }
    Ok(committed(results)?
        .into_iter()
        .filter(|r| !ids.contains(&r.result.id))
        .map(|r| {
            crate::rundir::RunDir::of(results, &r.result.id)
                .path()
                .to_path_buf()
        })
        .collect())
}

/// Records under `results` (none when it has no `runs/`), sorted by id.
pub fn committed(results: &Path) -> Result<Vec<Record>> {
    match crate::rundir::has_runs(results) {
        true => Ok(load_results(results)?.records),
        false => Ok(Vec::new()),
    }
}

/// Train what the selected claims' rules want, until they want nothing new (nothing with
/// `--render-only`; with `--plan`, print it instead).
pub fn train(a: &ReproduceArgs) -> Result<()> {
    let claims = selected(&a.claims)?;
    // A filter naming nothing the selected claims train is a typo, not an empty plan.
    for (what, names) in [("--models", &a.models), ("--levels", &a.levels)] {
        for n in names {
            let known = claims.iter().any(|c| {
                arms(c, a.stage.scale).ok().flatten().is_some_and(|arms| {
                    arms.iter()
                        .flat_map(|(_, s)| s)
                        .any(|s| &s.model == n || &s.level == n)
                })
            });
            if !known {
                bail!("{what}: `{n}` is in none of the selected claims' protocols");
            }
        }
    }
    if a.stale {
        for path in stale(&a.results)? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    if !a.stage.render_only {
        let dev = a.device.open()?;
        let opts = RunOptions {
            quiet: a.progress.quiet,
            when_busy: WhenBusy::Skip,
            ..RunOptions::default()
        };
        let keep = |s: &RunSpec| {
            (a.models.is_empty() || a.models.contains(&s.model))
                && (a.levels.is_empty() || a.levels.contains(&s.level))
        };
        for c in &claims {
            let Some(arms) = arms(c, a.stage.scale)? else {
                eprintln!("claim {}: no {:?}-scale protocol", c.name, a.stage.scale);
                continue;
            };
            let want = |records: &[Record]| -> Result<Vec<RunSpec>> {
                Ok(standing(c, &arms, records, &a.results)?.missing(records))
            };
            let drive = Drive {
                name: c.name,
                results: &a.results,
                plan: a.stage.plan,
                pack: a.pack,
                opts,
            };
            if !drive.run(&dev, want, keep)? {
                break;
            }
        }
    }
    Ok(())
}

/// How [`Drive::run`] trains: into `results`, under a name for its messages.
pub struct Drive<'a> {
    pub name: &'a str,
    pub results: &'a Path,
    /// Print the runs wanted next instead of training them.
    pub plan: bool,
    pub pack: usize,
    pub opts: RunOptions,
}

impl Drive<'_> {
    /// Train what `want` asks for given the committed runs (those `keep` keeps), then ask again,
    /// until it asks for nothing new (or only for runs another process holds). Returns false when
    /// interrupted.
    pub fn run(
        &self,
        dev: &candle_core::Device,
        want: impl Fn(&[Record]) -> Result<Vec<RunSpec>>,
        keep: impl Fn(&RunSpec) -> bool,
    ) -> Result<bool> {
        let mut tried: BTreeSet<String> = BTreeSet::new();
        let mut n = 0;
        loop {
            let records = committed(self.results)?;
            let todo: Vec<RunSpec> = want(&records)?
                .into_iter()
                .filter(|s| keep(s) && !tried.contains(&s.id()))
                .collect();
            if self.plan {
                for s in &todo {
                    println!(
                        "{}\t{} {} {} ({} layers) seed {} lr {:e}",
                        self.name,
                        s.task,
                        s.level,
                        s.model,
                        s.model_config.n_layers,
                        s.seed,
                        s.optim.lr
                    );
                }
                return Ok(true);
            }
            if todo.is_empty() {
                return Ok(true);
            }
            tried.extend(todo.iter().map(|s| s.id()));
            let done = run_all(
                &todo,
                self.results,
                dev,
                self.opts,
                self.pack.max(1),
                |spec, done| {
                    n += 1;
                    match done {
                        Outcome::Done(r) if !self.opts.quiet => {
                            eprintln!("{} run {n}: {} {}", self.name, r.id, r.status)
                        }
                        Outcome::Busy => {
                            eprintln!("{}: held by another process, left to it", spec.id())
                        }
                        _ => {}
                    }
                },
            )?;
            if done.iter().any(|d| matches!(d, Outcome::Interrupted)) {
                return Ok(false);
            }
        }
    }
}
