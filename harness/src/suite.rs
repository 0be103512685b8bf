//! `harness suite`: the scorecard — every task family at one calibrated CPU-scale setting, every
//! model trained on each under the verdict rules, and one profile per architecture with honest
//! aggregate statistics ([`crate::aggregate`]).
//!
//! The protocol is the reproduction's ([`crate::reproduce`]): per (family, model) the tuning seed
//! at every lr of the grid (extended along the ladder at an edge), then evaluation seeds 1, 2, …
//! at the chosen lr, as many as the verdict rules ask for when each model is compared with llama
//! (undirected: *differs* or *equivalent*, Holm over every comparison of the suite). llama gets
//! [`AA_SEEDS`] evaluation seeds, so its two disjoint halves measure the scorecard's own noise
//! floor (the A/A comparison). Runs land in `results/suite/runs/`, cached and resumable;
//! `SUITE.md`, `suite.json` and the performance-profile figure are rendered from them alone.
//!
//! Scores: per run, (test accuracy − floor) / (1 − floor) with the verdicts' floor
//! ([`crate::reproduce::spec_floor`]); per model the first [`AGG_SEEDS`] evaluation seeds of
//! each family enter the aggregates (every model the same count), over the families where every
//! model has them.

use crate::aggregate as agg;
use crate::claims::{Arm, Challengers, Claim, ClaimRules, Family, Setting, LADDER, TUNING_SEED};
use crate::flags::{DeviceFlag, Progress};
use crate::leaderboard::Record;
use crate::overrides::Overrides;
use crate::reproduce::{committed, standing, ArmRuns, Drive, Scale, Standing};
use crate::spec::RunSpec;
use crate::train::{RunOptions, WhenBusy};
use crate::verdict::Direction;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Models, comma-separated, llama first (the baseline) [default: llama, lime and four
    /// rivals: `DEFAULT_MODELS`]. A researcher's variant: `--models llama,<yours>`, reusing every
    /// committed run whose spec is unchanged.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    #[command(flatten)]
    pub stage: crate::reproduce::Stage,
    /// One seed per (family, model) at its calibration lr, no lr search, no verdicts: a first look in about
    /// 20 minutes on 2 cores for two models, labelled as not a verdict. Its runs are the full
    /// protocol's tuning runs at that lr, so nothing is trained twice.
    #[arg(long)]
    pub quick: bool,
    /// The committed runs (under `<results>/runs/`).
    #[arg(long, default_value = "results/suite")]
    pub results: PathBuf,
    /// The report [default: SUITE.md, or SUITE-quick.md with --quick].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub progress: Progress,
}

/// The baseline every model is compared with.
pub const BASELINE: &str = "llama";
/// The committed suite's models: llama, LIMe and four rivals (one of each kind of depth
/// connection: weighted sums of past layers, expanded residual streams, short convolutions,
/// per-input cross-layer gates).
pub const DEFAULT_MODELS: [&str; 6] = ["llama", "lime", "denseformer", "hyper", "canon", "dca"];
/// FLOPs per run at CPU scale (each family at its preset's shape).
pub const CPU_BUDGET: f64 = 2e12;
/// FLOPs per run at GPU scale (d_model 256, each family's preset depth).
pub const GPU_BUDGET: f64 = 3e14;
/// Evaluation seeds per model and family that enter the aggregates.
pub const AGG_SEEDS: usize = 5;
/// llama's evaluation seeds: two disjoint halves of [`AGG_SEEDS`] for the A/A noise floor.
pub const AA_SEEDS: usize = 2 * AGG_SEEDS;
/// The lr a family is calibrated at unless its setting says otherwise (and `--quick`'s): the
/// grid's top, which the staged search chose for most cells at these short budgets (lr 1e-3
/// left llama at the floor of hop-k k2 at 4 layers); its runs are the protocol's tuning runs.
pub const CALIBRATION_LR: f64 = 3e-3;
/// Where the performance profile is evaluated (normalized score thresholds).
const TAUS: usize = 41;

/// One task family's suite setting: its level and budget (and, where the preset's would leave
/// llama at the floor, task knobs or a depth), chosen by `harness calibrate` for llama at lr
/// [`CALIBRATION_LR`], seed 0 — the level bisected at [`CPU_BUDGET`], or where even the easiest level stays
/// below the band, the budget at that level. The evidence: [`FamilySetting::calibration_file`]
/// under `results/suite/`, written by [`FamilySetting::calibration_command`].
pub struct FamilySetting {
    pub task: &'static str,
    pub level: &'static str,
    /// FLOPs per run.
    pub budget: f64,
    /// What the calibration searched: `level` or `budget`.
    pub knob: &'static str,
    /// Task knobs (`--set`) and model knobs (`--model-set`) beyond the preset's.
    pub sets: &'static [&'static str],
    pub model_sets: &'static [&'static str],
    /// Selected and judged on the two-way choice (`--val-metric choice`), with this batch size.
    pub choice_batch: Option<usize>,
    /// The lr its calibration ran at (one of the grid's), which `--quick` trains at.
    pub lr: f64,
}

/// Every family's setting, one line each.
pub const SETTINGS: [FamilySetting; 15] = [
    fam("mqar", "kv4"),
    fam("arith", "ops5"),
    // The reproduction's ProsQA posing (edge list, answer alone, small graphs, two-way choice).
    FamilySetting {
        sets: &[
            "rendering=symbolic",
            "cot=false",
            "min_nodes=8",
            "max_nodes=14",
            "max_edges=40",
        ],
        choice_batch: Some(16),
        ..fam("prosqa", "hops3").at_budget(2e13).at_lr(1e-3)
    },
    // At 4 layers and 2e12 FLOPs llama stays at k2's floor: the depth claim's 2 layers, budget
    // calibrated.
    FamilySetting {
        model_sets: &["n_layers=2"],
        ..fam("hopk", "k2").at_budget(3e12)
    },
    fam("vartrack", "hops2").at_lr(1e-3),
    fam("listops", "depth2"),
    fam("recall", "base"),
    fam("fuzzy-recall", "base"),
    fam("noisy-recall", "f20"),
    fam("selective-copy", "copy16").at_budget(4e12),
    fam("memorize", "v8192"),
    fam("counting", "n32"),
    fam("parity", "n16"),
    fam("s5", "n4"),
    fam("reachability", "d3"),
];

/// A family whose level was calibrated at [`CPU_BUDGET`] with the preset's knobs.
const fn fam(task: &'static str, level: &'static str) -> FamilySetting {
    FamilySetting {
        task,
        level,
        budget: CPU_BUDGET,
        knob: "level",
        sets: &[],
        model_sets: &[],
        choice_batch: None,
        lr: CALIBRATION_LR,
    }
}

impl FamilySetting {
    /// Its budget calibrated at its level instead (budget candidates, largest first).
    const fn at_budget(self, budget: f64) -> Self {
        FamilySetting {
            budget,
            knob: "budget",
            ..self
        }
    }

    /// Calibrated at another lr of the grid (where [`CALIBRATION_LR`] left llama below the band
    /// and it did not).
    const fn at_lr(self, lr: f64) -> Self {
        FamilySetting { lr, ..self }
    }

    /// The committed calibration, relative to the results folder.
    pub fn calibration_file(&self) -> String {
        format!("calibration/{}-llama-{}.json", self.task, self.knob)
    }

    /// The value its calibration chose, as the calibration writes it.
    pub fn calibrated_value(&self) -> String {
        match self.knob {
            "budget" => format!("{:e}", self.budget),
            _ => self.level.to_string(),
        }
    }

    /// The command that calibrates it, given the candidates (easiest first).
    pub fn calibration_command(&self, values: &str) -> String {
        let mut c = format!(
            "harness calibrate --task {} --models llama --lr {:e}",
            self.task, self.lr
        );
        for s in self.sets {
            c += &format!(" --set {s}");
        }
        for s in self.model_sets {
            c += &format!(" --model-set {s}");
        }
        if let Some(b) = self.choice_batch {
            c += &format!(" --val-metric choice --batch-size {b}");
        }
        match self.knob {
            "budget" => c += &format!(" --level {} --knob budget", self.level),
            _ => c += &format!(" --budget-flops {:e} --knob level", self.budget),
        }
        c + &format!(" --values {values} --out results/suite")
    }
}

/// The models a suite compares: llama first, each a known variant, none twice.
pub fn models(names: &[String]) -> Result<Vec<String>> {
    let names: Vec<String> = match names.is_empty() {
        true => DEFAULT_MODELS.iter().map(|s| s.to_string()).collect(),
        false => names.to_vec(),
    };
    if names.first().map(String::as_str) != Some(BASELINE) {
        bail!("--models must start with {BASELINE} (the baseline every model is compared with)");
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            bail!("--models names {n} twice");
        }
        if models::Variant::from_name(n).is_none() {
            bail!("--models: unknown model `{n}` (see `harness models`)");
        }
    }
    Ok(names)
}

/// The suite's arms at `scale`: one per family (labelled by its task), every model.
pub fn arms(models: &[String], scale: Scale) -> Result<Vec<ArmRuns>> {
    SETTINGS
        .iter()
        .map(|f| {
            let mut o = Overrides {
                task: vec![f.task.into()],
                level: vec![f.level.into()],
                sets: f.sets.iter().map(|s| s.to_string()).collect(),
                model_sets: f.model_sets.iter().map(|s| s.to_string()).collect(),
                val_metric: match f.choice_batch {
                    Some(_) => crate::overrides::ValMetric::Choice,
                    None => crate::overrides::ValMetric::Teacher,
                },
                batch_size: f.choice_batch,
                models: models.to_vec(),
                seeds: Some(1 + crate::verdict::LOOKS[crate::verdict::LOOKS.len() - 1] as u64),
                lr: LADDER.to_vec(),
                budget_flops: Some(f.budget),
                ..Overrides::default()
            };
            if scale == Scale::Gpu {
                o.budget_flops = Some(GPU_BUDGET);
                o.model_sets.push("d_model=256".into());
            }
            let arm = Arm {
                label: f.task.into(),
                overrides: o,
            };
            let specs = crate::spec::resolve(&arm.overrides)
                .with_context(|| format!("suite family {}", f.task))?;
            Ok((arm.label, specs))
        })
        .collect()
}

/// The suite as a claim of the verdict machinery: one family of comparisons, every model
/// against llama, undirected, over every arm.
pub fn claim(models: &[String]) -> Claim {
    let challengers: Vec<&'static str> = models[1..]
        .iter()
        .map(|m| &*Box::leak(m.clone().into_boxed_str()))
        .collect();
    let families: &'static [Family] = Box::leak(Box::new([Family {
        name: "every model vs llama, every family",
        baseline: BASELINE,
        challengers: Challengers::Named(Box::leak(challengers.into_boxed_slice())),
        direction: Direction::Undirected,
        arms: &[],
    }]));
    Claim {
        name: "suite",
        title: "The suite scorecard",
        reported: "",
        families,
        cpu: Vec::<Arm>::new,
        gpu: None,
        rules: ClaimRules {
            delta: 0.02,
            delta_flops: 0.1,
            tau: 0.95,
        },
        paper: &[],
        setting: Setting::Fixed("each family calibrated by `harness calibrate`"),
    }
}

/// llama's A/A seeds beyond what the verdicts ask for: seeds up to [`AA_SEEDS`] at its chosen
/// lr, per family.
fn aa_wanted(st: &Standing) -> Vec<RunSpec> {
    let mut out = Vec::new();
    for (c, sel) in st.cells.iter().zip(&st.selections) {
        if c.model != BASELINE {
            continue;
        }
        if let Some(lr) = sel.chosen {
            for seed in 1..=AA_SEEDS as u64 {
                if let Some(s) = c.spec(TUNING_SEED + seed, lr) {
                    out.push(s.clone());
                }
            }
        }
    }
    out
}

/// The runs of `--quick`: the tuning seed at each family's calibration lr, per model.
fn quick_specs(arms: &[ArmRuns]) -> Vec<RunSpec> {
    arms.iter()
        .zip(&SETTINGS)
        .flat_map(|((_, specs), f)| {
            specs
                .iter()
                .filter(move |s| s.seed == TUNING_SEED && s.optim.lr == f.lr)
        })
        .cloned()
        .collect()
}

pub fn run(a: &SuiteArgs) -> Result<()> {
    let models = models(&a.models)?;
    let arms = arms(&models, a.stage.scale)?;
    let claim = claim(&models);
    if !a.stage.render_only {
        let dev = a.device.open()?;
        let drive = Drive {
            name: "suite",
            results: &a.results,
            plan: a.stage.plan,
            pack: 1,
            opts: RunOptions {
                quiet: a.progress.quiet,
                when_busy: WhenBusy::Skip,
                ..RunOptions::default()
            },
        };
        let want = |records: &[Record]| -> Result<Vec<RunSpec>> {
            if a.quick {
                return Ok(quick_specs(&arms));
            }
            let st = standing(&claim, &arms, records, &a.results)?;
            let mut want = st.wanted.clone();
            want.extend(aa_wanted(&st));
            Ok(want
                .into_iter()
                .filter(|s| crate::reproduce::record(records, s).is_none())
                .collect())
        };
        drive.run(&dev, want, |_| true)?;
        if a.stage.plan {
            return Ok(());
        }
    }
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(match a.quick {
            true => "SUITE-quick.md",
            false => "SUITE.md",
        })
    });
    let report = render(&models, &arms, &claim, &a.results, a.quick)?;
    std::fs::create_dir_all(&a.results)
        .with_context(|| format!("cannot create {}", a.results.display()))?;
    let figure = a.results.join(match a.quick {
        true => "performance-profile-quick.svg",
        false => "performance-profile.svg",
    });
    crate::plots::performance_profile(&figure, &report.json.profile)?;
    let json = a.results.join(match a.quick {
        true => "suite-quick.json",
        false => "suite.json",
    });
    crate::io::write_json(&json, &report.json)?;
    crate::io::write_atomic(&out, report.md.as_bytes())?;
    println!(
        "wrote {}, {} and {}",
        out.display(),
        json.display(),
        figure.display()
    );
    Ok(())
}

/// One model's evaluation scores and verdict in one family.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyScore {
    pub model: String,
    pub lr: Option<f64>,
    /// Normalized scores of its evaluation seeds (or of `--quick`'s one run), in seed order.
    pub scores: Vec<f64>,
    pub mean: Option<f64>,
    pub ci95: Option<f64>,
    /// Mean test accuracy over the same runs.
    pub acc: Option<f64>,
    /// Its verdict against llama (none for llama, or with `--quick`).
    pub verdict: Option<String>,
    pub diff: Option<String>,
}

/// One family's row.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyRow {
    pub task: String,
    pub level: String,
    pub layers: usize,
    pub floor: Option<f64>,
    /// What its committed calibration found (`harness calibrate`): llama's place between the
    /// floor and 100% at the chosen value, and whether that is in the band.
    pub calibration: String,
    /// Every model has [`AGG_SEEDS`] evaluation seeds (`--quick`: its run): in the aggregates.
    pub complete: bool,
    pub models: Vec<FamilyScore>,
}

/// A model's aggregate over the complete families.
#[derive(Clone, Debug, Serialize)]
pub struct ModelAggregate {
    pub model: String,
    pub iqm: Option<f64>,
    pub iqm_ci: Option<(f64, f64)>,
    pub mean: Option<f64>,
    pub mean_ci: Option<(f64, f64)>,
    /// Probability of improvement over llama and over LIMe (where LIMe is in the suite).
    pub poi_llama: Option<f64>,
    pub poi_llama_ci: Option<(f64, f64)>,
    pub poi_lime: Option<f64>,
    pub poi_lime_ci: Option<(f64, f64)>,
    pub mean_rank: Option<f64>,
}

/// The A/A comparison: llama's evaluation seeds split into two disjoint halves.
#[derive(Clone, Debug, Serialize)]
pub struct NoiseFloor {
    /// Families with all [`AA_SEEDS`] of llama's seeds.
    pub families: usize,
    /// The committed split: seeds 1–5 against 6–10.
    pub poi: Option<f64>,
    pub poi_ci: Option<(f64, f64)>,
    pub iqm_diff: Option<f64>,
    /// Over every split of the ten seeds into two halves (126): the fraction whose
    /// probability-of-improvement interval excludes 1/2 (the scorecard's false-positive rate
    /// at its 95% level), and the 95th percentile of |IQM difference| (the smallest aggregate
    /// difference that stands out of llama's own noise).
    pub splits: usize,
    pub false_positive_rate: Option<f64>,
    pub detectable_iqm_diff: Option<f64>,
}

pub use crate::aggregate::ProfileCurve;

#[derive(Clone, Debug, Serialize)]
pub struct SuiteJson {
    pub quick: bool,
    pub models: Vec<String>,
    pub budget_flops: f64,
    pub families: Vec<FamilyRow>,
    pub complete_families: Vec<String>,
    pub aggregates: Vec<ModelAggregate>,
    pub noise_floor: NoiseFloor,
    pub profile: Vec<ProfileCurve>,
    /// Runs behind the report and their summed wall-clock, with the devices they ran on.
    pub runs: usize,
    pub wall_clock_s: f64,
    pub devices: Vec<String>,
    /// The GPU scale's size (defined, not run here): its runs at the first look and their FLOPs.
    pub gpu_runs: usize,
    pub gpu_flops: f64,
}

pub struct Rendered {
    pub md: String,
    pub json: SuiteJson,
}

fn normalized_of(r: &Record, floor: f64) -> f64 {
    let ok = r.result.status == crate::records::RunStatus::Ok;
    match (ok, r.judged_acc()) {
        (true, Some(a)) => agg::normalized(a, floor),
        _ => 0.0, // a diverged run counts at the floor, as in the verdicts
    }
}

/// The report of the suite's committed runs.
pub fn render(
    models: &[String],
    arms: &[ArmRuns],
    claim: &Claim,
    results: &Path,
    quick: bool,
) -> Result<Rendered> {
    let records = committed(results)?;
    let st = standing(claim, arms, &records, results)?;
    let mut memo = BTreeMap::new();
    let mut used: Vec<&Record> = Vec::new();
    let mut families = Vec::new();
    // llama's A/A seeds per family (all AA_SEEDS, or none).
    let mut aa: Vec<Vec<f64>> = Vec::new();
    for (k, (label, _)) in arms.iter().enumerate() {
        let mut row = FamilyRow {
            calibration: calibration_line(&SETTINGS[k], results),
            task: label.clone(),
            level: String::new(),
            layers: 0,
            floor: None,
            complete: true,
            models: Vec::new(),
        };
        for m in models {
            let Some(ci) = st
                .cells
                .iter()
                .position(|c| &c.arm == label && &c.model == m)
            else {
                row.complete = false;
                continue;
            };
            let cell = &st.cells[ci];
            row.level = cell.level.clone();
            row.layers = cell.specs[0].model_config.n_layers;
            // The standing measured the floor of every cell in a comparison; a suite of llama
            // alone has none, so its floor is measured here.
            let floor = match st.floors[ci] {
                Some(f) => f,
                None => crate::reproduce::floor_of(cell, &mut memo)?,
            };
            row.floor = Some(floor);
            let (lr, runs): (Option<f64>, Vec<&Record>) = match quick {
                true => {
                    let lr = SETTINGS[k].lr;
                    let r = cell
                        .spec(TUNING_SEED, lr)
                        .and_then(|s| crate::reproduce::record(&records, s));
                    (Some(lr), r.into_iter().collect())
                }
                false => {
                    let lr = st.selections[ci].chosen;
                    let runs = match lr {
                        Some(lr) => crate::reproduce::evaluation_runs(cell, lr, &records),
                        None => Vec::new(),
                    };
                    (lr, runs)
                }
            };
            if m == BASELINE && !quick && runs.len() >= AA_SEEDS {
                aa.push(
                    runs[..AA_SEEDS]
                        .iter()
                        .map(|r| normalized_of(r, floor))
                        .collect(),
                );
            }
            let n = if quick { 1 } else { AGG_SEEDS };
            let runs: Vec<&Record> = runs.into_iter().take(n).collect();
            if runs.len() < n {
                row.complete = false;
            }
            used.extend(&runs);
            let scores: Vec<f64> = runs.iter().map(|r| normalized_of(r, floor)).collect();
            let (mean, ci95) = crate::stats::mean_ci(&scores);
            let accs: Vec<f64> = runs.iter().filter_map(|r| r.judged_acc()).collect();
            let (verdict, diff) = match (quick, m == BASELINE, runs.is_empty()) {
                (false, false, false) => verdict_of(&st, ci),
                _ => (None, None),
            };
            row.models.push(FamilyScore {
                model: m.clone(),
                lr,
                scores,
                mean,
                ci95,
                acc: agg::mean(&accs),
                verdict,
                diff,
            });
        }
        families.push(row);
    }
    let complete: Vec<&FamilyRow> = families.iter().filter(|f| f.complete).collect();
    // strata[model][family][seed]
    let strata: Vec<Vec<Vec<f64>>> = (0..models.len())
        .map(|i| {
            complete
                .iter()
                .map(|f| f.models[i].scores.clone())
                .collect()
        })
        .collect();
    let lime = models.iter().position(|m| m == "lime");
    let ranks: Vec<Vec<f64>> = complete
        .iter()
        .map(|f| {
            agg::ranks(
                &f.models
                    .iter()
                    .map(|s| s.mean.unwrap_or(f64::NEG_INFINITY))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let level = 0.95;
    let ci = |s: &[Vec<f64>], stat: fn(&[f64]) -> Option<f64>, label: &str| {
        (!quick && !s.is_empty())
            .then(|| agg::stratified_ci(s, stat, agg::REPS, level, &mut agg::rng_for(label)))
            .flatten()
    };
    let aggregates: Vec<ModelAggregate> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let s = &strata[i];
            let flat = agg::flatten(s);
            let poi = |j: Option<usize>, what: &str| match j {
                Some(j) if j != i && !s.is_empty() => (
                    agg::probability_of_improvement(s, &strata[j]),
                    (!quick)
                        .then(|| {
                            agg::poi_ci(
                                s,
                                &strata[j],
                                agg::REPS,
                                level,
                                &mut agg::rng_for(&format!("poi {m} {what}")),
                            )
                        })
                        .flatten(),
                ),
                _ => (None, None),
            };
            let (poi_llama, poi_llama_ci) = poi(Some(0), "llama");
            let (poi_lime, poi_lime_ci) = poi(lime, "lime");
            ModelAggregate {
                model: m.clone(),
                iqm: agg::iqm(&flat),
                iqm_ci: ci(s, agg::iqm, &format!("iqm {m}")),
                mean: agg::mean(&flat),
                mean_ci: ci(s, agg::mean, &format!("mean {m}")),
                poi_llama,
                poi_llama_ci,
                poi_lime,
                poi_lime_ci,
                mean_rank: agg::mean(&ranks.iter().map(|r| r[i]).collect::<Vec<_>>()),
            }
        })
        .collect();
    let taus: Vec<f64> = (0..TAUS).map(|k| k as f64 / (TAUS - 1) as f64).collect();
    let profile: Vec<ProfileCurve> = models
        .iter()
        .enumerate()
        .filter(|_| !complete.is_empty())
        .map(|(i, m)| ProfileCurve {
            model: m.clone(),
            taus: taus.clone(),
            fraction: agg::profile(&agg::flatten(&strata[i]), &taus),
            band: match quick {
                true => Vec::new(),
                false => agg::profile_band(
                    &strata[i],
                    &taus,
                    agg::REPS,
                    level,
                    &mut agg::rng_for(&format!("profile {m}")),
                ),
            },
        })
        .collect();
    let noise_floor = noise_floor(&aa);
    let (gpu_runs, gpu_flops) = size(models, Scale::Gpu)?;
    let devices: std::collections::BTreeSet<String> =
        used.iter().map(|r| r.result.device.clone()).collect();
    let json = SuiteJson {
        quick,
        models: models.to_vec(),
        budget_flops: arms
            .first()
            .and_then(|(_, s)| s.first())
            .map(|s| s.budget_flops)
            .unwrap_or(CPU_BUDGET),
        complete_families: complete.iter().map(|f| f.task.clone()).collect(),
        families,
        aggregates,
        noise_floor,
        profile,
        runs: used.len(),
        wall_clock_s: used.iter().map(|r| r.result.wall_clock_s).sum::<f64>() + 0.0,
        devices: devices.into_iter().collect(),
        gpu_runs,
        gpu_flops,
    };
    let md = markdown(&json);
    Ok(Rendered { md, json })
}

/// A family's committed calibration in a few words.
fn calibration_line(f: &FamilySetting, results: &Path) -> String {
    let path = results.join(f.calibration_file());
    let Ok(text) = std::fs::read_to_string(&path) else {
        return "not calibrated".into();
    };
    let Ok(cal) = serde_json::from_str::<crate::calibrate::Calibration>(&text) else {
        return format!("unreadable calibration {}", f.calibration_file());
    };
    let Some(chosen) = cal.chosen else {
        return "nothing tried".into();
    };
    let position = cal
        .tried
        .iter()
        .find(|t| t.value == chosen)
        .map(|t| t.position)
        .unwrap_or(0.0);
    format!(
        "{} {chosen} at lr {:e}: {:.0}% of the way, {}",
        cal.knob,
        f.lr,
        100.0 * position,
        match (cal.in_band, position < cal.band.0) {
            (true, _) => "in the band".to_string(),
            (false, true) => format!("below the band (the nearest of {})", cal.values.join(", ")),
            (false, false) => format!("above the band (the nearest of {})", cal.values.join(", ")),
        }
    )
}

/// The verdict of cell `ci`'s comparison with llama, if it has one.
fn verdict_of(st: &Standing, ci: usize) -> (Option<String>, Option<String>) {
    for (l, j) in st.families.iter().flatten() {
        if l.challenger == ci {
            return match (l.vacuous, j) {
                (true, _) => (Some("refused: computes llama's function".into()), None),
                (false, Some(j)) => (
                    Some(j.verdict.label()),
                    j.test.as_ref().map(|t| {
                        format!(
                            "{} [{}, {}]",
                            signed(t.diff),
                            signed(t.ci.0),
                            signed(t.ci.1)
                        )
                    }),
                ),
                (false, None) => (None, None),
            };
        }
    }
    (None, None)
}

/// The A/A noise floor of llama's per-family seed sets (each of [`AA_SEEDS`] scores).
pub fn noise_floor(aa: &[Vec<f64>]) -> NoiseFloor {
    let mut nf = NoiseFloor {
        families: aa.len(),
        poi: None,
        poi_ci: None,
        iqm_diff: None,
        splits: 0,
        false_positive_rate: None,
        detectable_iqm_diff: None,
    };
    if aa.is_empty() {
        return nf;
    }
    let halves = |idx: &[usize]| -> Vec<Vec<f64>> {
        aa.iter()
            .map(|s| idx.iter().map(|&i| s[i]).collect())
            .collect()
    };
    let iqm = |s: &[Vec<f64>]| agg::iqm(&agg::flatten(s)).unwrap_or(0.0);
    let first: Vec<usize> = (0..AGG_SEEDS).collect();
    let second: Vec<usize> = (AGG_SEEDS..AA_SEEDS).collect();
    let (a, b) = (halves(&first), halves(&second));
    nf.poi = agg::probability_of_improvement(&b, &a);
    nf.poi_ci = agg::poi_ci(&b, &a, agg::REPS, 0.95, &mut agg::rng_for("aa"));
    nf.iqm_diff = Some(iqm(&b) - iqm(&a));
    let splits = agg::half_splits(AA_SEEDS);
    let mut excluded = 0;
    let mut diffs = Vec::new();
    for (k, (x, y)) in splits.iter().enumerate() {
        let (a, b) = (halves(x), halves(y));
        let reps = agg::REPS / 4;
        let (lo, hi) = agg::poi_ci(&b, &a, reps, 0.95, &mut agg::rng_for(&format!("aa {k}")))
            .unwrap_or((0.0, 1.0));
        if lo > 0.5 || hi < 0.5 {
            excluded += 1;
        }
        diffs.push((iqm(&b) - iqm(&a)).abs());
    }
    nf.splits = splits.len();
    nf.false_positive_rate = Some(excluded as f64 / splits.len() as f64);
    nf.detectable_iqm_diff = Some(agg::percentile_interval(diffs, 0.9).1);
    nf
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or("-".into())
}

fn signed(x: f64) -> String {
    format!("{:+.1}", 100.0 * x)
}

fn interval(c: Option<(f64, f64)>) -> String {
    c.map(|(a, b)| format!(" [{:.1}, {:.1}]", 100.0 * a, 100.0 * b))
        .unwrap_or_default()
}

fn prob(x: Option<f64>, c: Option<(f64, f64)>) -> String {
    match x {
        Some(v) => format!(
            "{v:.2}{}",
            c.map(|(a, b)| format!(" [{a:.2}, {b:.2}]"))
                .unwrap_or_default()
        ),
        None => "-".into(),
    }
}

fn markdown(j: &SuiteJson) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# The lime-bench suite scorecard{}\n",
        if j.quick {
            " — QUICK LOOK, NOT A VERDICT"
        } else {
            ""
        }
    );
    md += "<!-- Rendered by `harness suite` from the committed runs under results/suite/; do not \
           edit by hand. -->\n\n";
    if j.quick {
        md += "**`--quick`: one seed per (family, model) at the family's calibration lr, no lr \
               search, no verdicts and no intervals.** A first look, not evidence: the full \
               protocol tunes the lr and trains five or more evaluation seeds.\n\n";
    }
    let _ = writeln!(
        md,
        "Every task family at one calibrated CPU-scale setting ({:.0e} FLOPs per run unless its \
         calibration chose a budget, each family's preset shape unless stated), models {}. Scores are normalized per run: (test accuracy − floor) / (1 − floor), \
         with the verdicts' floor (the best of chance, the majority predictor and the task's shallow \
         heuristics); 0 is trivial, 1 perfect.\n",
        j.budget_flops,
        j.models.join(", ")
    );
    md += "## The noise floor (llama against llama)\n\n";
    let nf = &j.noise_floor;
    if nf.families == 0 {
        md +=
            "Not measured yet: llama's ten evaluation seeds per family are not all committed.\n\n";
    } else {
        let _ = writeln!(
            md,
            "llama's evaluation seeds 1–5 against 6–10, same lr, over the {} families that have all \
             ten: probability of improvement {}; IQM difference {:+.1} points. Over all {} ways to \
             split the ten seeds in two halves: the probability-of-improvement interval excludes \
             1/2 in {:.1}% of them (the scorecard's false-positive rate at its 95% level), and \
             |IQM difference| stays below **{:.1} points** in 90% of them — an aggregate difference \
             smaller than that is within llama's own seed noise.\n",
            nf.families,
            prob(nf.poi, nf.poi_ci),
            100.0 * nf.iqm_diff.unwrap_or(0.0),
            nf.splits,
            100.0 * nf.false_positive_rate.unwrap_or(0.0),
            100.0 * nf.detectable_iqm_diff.unwrap_or(0.0),
        );
    }
    md += "## Aggregate over families\n\n";
    if j.complete_families.is_empty() {
        md += "No family is complete yet (every model with its evaluation seeds); nothing to \
               aggregate.\n\n";
    } else {
        let intervals = match j.quick {
            true => "no intervals (one run per cell)".to_string(),
            false => format!(
                "95% stratified bootstrap intervals ({} resamples, runs resampled within each \
                 family)",
                agg::REPS
            ),
        };
        let _ = writeln!(
            md,
            "Over the {} complete families ({}), {} run(s) per model and family; {intervals}.\n",
            j.complete_families.len(),
            j.complete_families.join(", "),
            if j.quick { 1 } else { AGG_SEEDS },
        );
        md += "| model | IQM × 100 | mean × 100 | P(better than llama) | P(better than lime) | mean rank |\n";
        md += "|---|---:|---:|---:|---:|---:|\n";
        for a in &j.aggregates {
            let _ = writeln!(
                md,
                "| {} | {}{} | {}{} | {} | {} | {} |",
                a.model,
                pct(a.iqm),
                interval(a.iqm_ci),
                pct(a.mean),
                interval(a.mean_ci),
                prob(a.poi_llama, a.poi_llama_ci),
                prob(a.poi_lime, a.poi_lime_ci),
                a.mean_rank.map(|r| format!("{r:.2}")).unwrap_or("-".into()),
            );
        }
        let fig = if j.quick {
            "performance-profile-quick.svg"
        } else {
            "performance-profile.svg"
        };
        let _ = writeln!(
            md,
            "\n![performance profile](results/suite/{fig})\n\nThe performance profile: per model \
             the fraction of its runs (over the complete families) whose normalized score exceeds \
             τ, with its 95% stratified bootstrap band.\n"
        );
    }
    md += "## Per family\n\n";
    md += match j.quick {
        true => "Normalized score × 100 of the one run (test accuracy % in parentheses).\n\n",
        false => {
            "Normalized score × 100, mean ± 95% CI over evaluation seeds (test accuracy % in \
                  parentheses); under it the verdict against llama (difference of mean test \
                  accuracy in points, Holm-adjusted interval).\n\n"
        }
    };
    md += "Where each family's setting comes from (llama's val accuracy at the tuning seed, as a \
           share of the way from the floor to 100%, against the band 25–75%):\n\n";
    for f in &j.families {
        let _ = writeln!(md, "- {}: {}", f.task, f.calibration);
    }
    md += "\n";
    let _ = write!(md, "| family | level · layers | floor % |");
    for m in &j.models {
        let _ = write!(md, " {m} |");
    }
    md += "\n|---|---|---:|";
    for _ in &j.models {
        md += "---|";
    }
    md += "\n";
    for f in &j.families {
        let _ = write!(
            md,
            "| {}{} | {} · {} | {} |",
            f.task,
            if f.complete { "" } else { " (incomplete)" },
            f.level,
            f.layers,
            pct(f.floor)
        );
        for s in &f.models {
            let mut cell = match s.mean {
                Some(m) => format!(
                    "{:.1}{} ({:.1}, n={})",
                    100.0 * m,
                    s.ci95
                        .map(|c| format!(" ± {:.1}", 100.0 * c))
                        .unwrap_or_default(),
                    100.0 * s.acc.unwrap_or(0.0),
                    s.scores.len()
                ),
                None => "waiting".into(),
            };
            if let Some(v) = &s.verdict {
                let _ = write!(
                    cell,
                    "<br>{}{}",
                    v.replace("**", ""),
                    s.diff.as_ref().map(|d| format!(" {d}")).unwrap_or_default()
                );
            }
            let _ = write!(md, " {cell} |");
        }
        md += "\n";
    }
    let hours = j.wall_clock_s / 3600.0;
    let _ =
        writeln!(
        md,
        "\n## Cost\n\n{} runs behind this report, {:.2} hours of training wall-clock (each run's \
         own, summed), on: {}.\n",
        j.runs,
        hours,
        if j.devices.is_empty() { "-".into() } else { j.devices.join("; ") }
    );
    let _ = writeln!(
        md,
        "The GPU scale (`--scale gpu`: d_model 256, {GPU_BUDGET:.0e} FLOPs per run) is defined and \
         sized — {} runs at the first look, {:.1e} FLOPs in all — and **not run**: no GPU has \
         trained it.",
        j.gpu_runs, j.gpu_flops
    );
    md
}

/// What a suite at `scale` trains at most: runs and FLOPs (tuning grid of 3 lrs plus up to two
/// extensions, evaluation seeds up to the last look, llama's A/A seeds).
pub fn size(models: &[String], scale: Scale) -> Result<(usize, f64)> {
    let arms = arms(models, scale)?;
    let per_cell_min = crate::claims::LRS.len() + AGG_SEEDS;
    let cells = arms.len() * models.len();
    let runs = cells * per_cell_min + arms.len() * (AA_SEEDS - AGG_SEEDS);
    let budget = arms[0].1[0].budget_flops;
    Ok((runs, runs as f64 * budget))
}
