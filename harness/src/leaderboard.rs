//! Leaderboards from saved runs: mean ± 95% CI (Student t over seeds) per cell, with the learning
//! rate chosen on val. A cell is one experiment: the runs whose resolved specs are equal except
//! for seed and learning rate ([`RunSpec::cell_key`]). Runs that differ in anything else — budget,
//! shape, task knobs, batch, precision, code version — are separate rows, and the `setting`
//! column names what tells rows of one task, level and model apart. Reads only each run folder's
//! `config.json` and `result.json`, so shards of a sweep merge by copying their run folders
//! together; a folder that cannot be read is named under the table and the rest still render.
//! Where `harness analyze` has written a run's `analysis.json` (in the run folder's `analysis/`,
//! or under `<results>/analysis/<run-id>/`), the row also gets the mean value entropy of its
//! analysed runs (a column that appears only when some row has one).

use crate::records::{Analysis, RunResult, RunStatus};
use crate::spec::RunSpec;
use crate::verdict::{ArmData, Rules};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct LeaderboardArgs {
    /// Folder holding `runs/` (as given to --out).
    #[arg(long, default_value = "runs")]
    pub results: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// Only these tasks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Judge every other model against this one (the reproduction's verdict rules: solve rate or
    /// mean accuracy or FLOPs-to-99%, Holm over the table, TOST at ±2 points): a table of
    /// verdicts under the leaderboard (markdown only).
    #[arg(long)]
    pub versus: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Md,
    Csv,
    Json,
}

/// One leaderboard row: one cell at its chosen learning rate.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub task: String,
    pub level: String,
    pub model: String,
    /// [`RunSpec::cell_key`] of the cell's runs.
    pub cell: String,
    /// What distinguishes this row from other rows of the same task, level and model:
    /// `key=value` pairs of the spec (e.g. `budget_flops=2e11`), empty when nothing does.
    pub setting: String,
    pub params: u64,
    pub flops: f64,
    pub lr: f64,
    /// Distinct seeds at the chosen lr.
    pub seeds: usize,
    pub diverged: usize,
    pub test_mean: Option<f64>,
    /// Half-width of the 95% Student-t interval (None with one seed).
    pub test_ci95: Option<f64>,
    pub val_mean: Option<f64>,
    /// Mean teacher-forced macro accuracy on test (second figure; MAD's default).
    pub test_macro_mean: Option<f64>,
    pub chance: f64,
    pub wall_clock_s: f64,
    /// Mean over the chosen lr's analysed runs of their value entropy averaged over layers
    /// (`harness analyze`, nats); None where no run of the row has an `analysis.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_entropy: Option<f64>,
    /// How many of the row's runs that mean covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysed: Option<usize>,
    /// Out-of-distribution score (`--eval-levels`): per run the mean test accuracy over its
    /// evaluation levels, then the mean over the row's runs; None where no run has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood_mean: Option<f64>,
    /// Half-width of its 95% Student-t interval over seeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood_ci95: Option<f64>,
    /// Test accuracy per evaluation level over the row's runs: mean and 95% CI half-width.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub eval_levels: BTreeMap<String, LevelMean>,
}

/// A row's test accuracy at one evaluation level, over its runs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LevelMean {
    pub mean: f64,
    /// Half-width of the 95% Student-t interval (None with one seed).
    pub ci95: Option<f64>,
    /// Chance at that level.
    pub chance: f64,
}

/// A run's OOD score: the mean of its evaluation levels' test accuracies (None without any).
pub fn ood_score(r: &RunResult) -> Option<f64> {
    let v: Vec<f64> = r.eval_levels.values().map(|s| s.test_acc).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A finished run as the leaderboard reads it: the result, the spec that made it and, where
/// `harness analyze` wrote one, its analysis.
#[derive(Clone, Debug)]
pub struct Record {
    pub result: RunResult,
    pub spec: RunSpec,
    pub analysis: Option<Analysis>,
}

impl Record {
    /// The test number a run is judged on: its OOD score for a run judged on its evaluation
    /// levels (`--judge ood`); else what its val selected on — the two-way choice accuracy for a
    /// run selected on choices, else `test_acc`. None for a diverged run.
    pub fn judged_acc(&self) -> Option<f64> {
        if self.spec.judge == crate::overrides::Judge::Ood {
            return ood_score(&self.result);
        }
        match self.spec.val_metric {
            crate::overrides::ValMetric::Choice => self.result.test_choice_acc,
            _ => self.result.test_acc,
        }
    }
}

/// Run folders that could not be read: (folder, why).
pub type Unreadable = Vec<(PathBuf, String)>;

/// Runs grouped by cell — (task, level, model, [`RunSpec::cell_key`]) — then by learning rate.
type Cells<'a> = BTreeMap<(String, String, String, String), BTreeMap<String, Vec<&'a Record>>>;

/// The readable records of a results folder, and the folders that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// (run folder, why): an unparsable or unreadable `result.json`/`config.json`, or a result
    /// whose id does not match its folder and spec.
    pub unreadable: Unreadable,
}

impl Loaded {
    pub fn results(&self) -> Vec<RunResult> {
        self.records.iter().map(|r| r.result.clone()).collect()
    }
}

pub use crate::stats::mean_ci;

/// Every finished run under `<dir>/runs/` (a folder with a `result.json`), sorted by id. A folder
/// whose files cannot be read or do not agree is listed in [`Loaded::unreadable`]; only a missing
/// or unreadable `runs/` folder is an error.
pub fn load_results(dir: &Path) -> Result<Loaded> {
    let runs = dir.join(crate::rundir::RUNS);
    if !runs.is_dir() {
        anyhow::bail!(
            "no runs in {} (expected {}/runs/<id>/result.json)",
            dir.display(),
            dir.display()
        );
    }
    let mut out = Loaded::default();
    for e in std::fs::read_dir(&runs).with_context(|| format!("cannot read {}", runs.display()))? {
        let run_dir = e
            .with_context(|| format!("cannot read {}", runs.display()))?
            .path();
        if !crate::rundir::RunDir::at(&run_dir).finished() {
            continue; // unfinished (or not a run folder)
        }
        match load_record(&run_dir) {
            Ok(r) => out.records.push(r),
            Err(e) => out.unreadable.push((run_dir, crate::one_line(&e))),
        }
    }
    out.records.sort_by(|a, b| a.result.id.cmp(&b.result.id));
    out.unreadable.sort();
    Ok(out)
}

fn load_record(run_dir: &Path) -> Result<Record> {
    let run = crate::rundir::RunDir::at(run_dir);
    let result: RunResult = run.read_result()?;
    let spec: RunSpec = run.read_spec()?;
    let folder = run_dir.file_name().unwrap_or_default().to_string_lossy();
    if result.id != folder {
        anyhow::bail!(
            "result.json is run {}'s, not this folder's (copied or renamed?)",
            result.id
        );
    }
    if spec.id() != result.id {
        anyhow::bail!(
            "config.json is run {}'s, result.json run {}'s",
            spec.id(),
            result.id
        );
    }
    let analysis = match crate::records::analysis_paths(run_dir, &result.id)
        .into_iter()
        .find(|p| p.is_file())
    {
        None => None,
        Some(p) => {
            let a: Analysis = crate::io::read_json(&p)?;
            if a.run != result.id {
                anyhow::bail!(
                    "{} is run {}'s analysis, not this run's",
                    p.display(),
                    a.run
                );
            }
            Some(a)
        }
    };
    Ok(Record {
        result,
        spec,
        analysis,
    })
}

/// Aggregate: per cell pick the lr with the best mean val accuracy, then report its test mean ±
/// CI over distinct seeds.
pub fn rows(records: &[Record]) -> Vec<Row> {
    let mut cells: Cells = BTreeMap::new();
    for r in records {
        let res = &r.result;
        let by_lr = cells
            .entry((
                res.task.clone(),
                res.level.clone(),
                res.model.clone(),
                r.spec.cell_key(),
            ))
            .or_default()
            .entry(format!("{:e}", res.lr))
            .or_default();
        // A seed counts once (two records of one cell, lr and seed would be one run id).
        if !by_lr.iter().any(|o| o.result.seed == res.seed) {
            by_lr.push(r);
        }
    }
    let settings = settings(&cells);
    let mut out = Vec::new();
    for ((task, level, model, cell), by_lr) in &cells {
        let score = |rs: &Vec<&Record>| {
            let v: Vec<f64> = rs.iter().filter_map(|r| r.result.val_acc).collect();
            if v.is_empty() {
                f64::NEG_INFINITY
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let chosen = by_lr
            .values()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .expect("non-empty cell");
        let best: Vec<&RunResult> = chosen.iter().map(|r| &r.result).collect();
        let ok: Vec<&RunResult> = best
            .iter()
            .copied()
            .filter(|r| r.status == RunStatus::Ok)
            .collect();
        let test: Vec<f64> = ok.iter().filter_map(|r| r.test_acc).collect();
        let val: Vec<f64> = ok.iter().filter_map(|r| r.val_acc).collect();
        let macro_: Vec<f64> = ok.iter().filter_map(|r| r.test_macro_acc).collect();
        let (test_mean, test_ci95) = mean_ci(&test);
        let entropies: Vec<f64> = chosen
            .iter()
            .filter(|r| r.result.status == RunStatus::Ok)
            .filter_map(|r| r.analysis.as_ref())
            .filter(|a| !a.value_entropy.is_empty())
            .map(|a| a.value_entropy.iter().sum::<f64>() / a.value_entropy.len() as f64)
            .collect();
        let ood: Vec<f64> = ok.iter().filter_map(|r| ood_score(r)).collect();
        let (ood_mean, ood_ci95) = mean_ci(&ood);
        let mut per_level: BTreeMap<String, (Vec<f64>, f64)> = BTreeMap::new();
        for r in &ok {
            for (level, score) in &r.eval_levels {
                let e = per_level.entry(level.clone()).or_default();
                e.0.push(score.test_acc);
                e.1 = score.chance;
            }
        }
        let eval_levels = per_level
            .into_iter()
            .filter_map(|(l, (v, chance))| {
                let (mean, ci95) = mean_ci(&v);
                Some((
                    l,
                    LevelMean {
                        mean: mean?,
                        ci95,
                        chance,
                    },
                ))
            })
            .collect();
        let r0 = best[0];
        let n = best.len() as f64;
        out.push(Row {
            task: task.clone(),
            level: level.clone(),
            model: model.clone(),
            cell: cell.clone(),
            setting: settings[cell].clone(),
            params: r0.params,
            flops: best.iter().map(|r| r.flops_spent).sum::<f64>() / n,
            lr: r0.lr,
            seeds: best.len(),
            diverged: best.len() - ok.len(),
            test_mean,
            test_ci95,
            val_mean: mean_ci(&val).0,
            test_macro_mean: mean_ci(&macro_).0,
            chance: r0.chance,
            wall_clock_s: best.iter().map(|r| r.wall_clock_s).sum::<f64>() / n,
            value_entropy: mean_ci(&entropies).0,
            analysed: (!entropies.is_empty()).then_some(entropies.len()),
            ood_mean,
            ood_ci95,
            eval_levels,
        });
    }
    // Rows of one task, level and model in order of FLOPs (then setting), not of cell hashes.
    out.sort_by(|a, b| {
        (&a.task, &a.level, &a.model)
            .cmp(&(&b.task, &b.level, &b.model))
            .then(a.flops.total_cmp(&b.flops))
            .then(a.setting.cmp(&b.setting))
    });
    out
}

/// Spec keys that follow from others (the budget and the model) and only add noise to a setting.
const DERIVED_KEYS: [&str; 3] = ["flops_per_step", "eval_every", "ckpt_every"];

/// The `setting` of each cell: the spec keys that vary between cells of the same (task, level,
/// model), shown with this cell's values for every row of that (task, level), so the rows that
/// would otherwise look alike say what they are (`budget_flops=2e11, steps=96`).
fn settings(cells: &Cells) -> BTreeMap<String, String> {
    // Each cell's spec, flattened to dotted keys (`model_config.d_model`), seed and lr dropped.
    let flat: BTreeMap<&str, BTreeMap<String, String>> = cells
        .iter()
        .map(|((_, _, _, cell), by_lr)| {
            let spec = &by_lr.values().next().expect("non-empty")[0].spec;
            let mut f = BTreeMap::new();
            flatten(
                "",
                &serde_json::to_value(spec).expect("specs serialize"),
                &mut f,
            );
            f.remove("seed");
            f.remove("optim.lr");
            (cell.as_str(), f)
        })
        .collect();
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    for (task, level, model, cell) in cells.keys() {
        groups.entry((task, level, model)).or_default().push(cell);
    }
    let mut varying: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for ((task, level, _), group) in &groups {
        let keys = varying.entry((task, level)).or_default();
        let first = &flat[group[0]];
        for cell in &group[1..] {
            let other = &flat[cell];
            for k in first.keys().chain(other.keys()) {
                if first.get(k) != other.get(k) {
                    keys.insert(k);
                }
            }
        }
    }
    for keys in varying.values_mut() {
        if keys.iter().any(|k| !DERIVED_KEYS.contains(k)) {
            keys.retain(|k| !DERIVED_KEYS.contains(k));
        }
    }
    cells
        .keys()
        .map(|(task, level, _, cell)| {
            let f = &flat[cell.as_str()];
            let s = varying[&(task.as_str(), level.as_str())]
                .iter()
                .map(|k| format!("{k}={}", f.get(*k).map(String::as_str).unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(", ");
            (cell.clone(), s)
        })
        .collect()
}

/// `v` as dotted keys with short renderings (`2e11`, `256`, `cosine`).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().expect("f64");
            let s = if x.fract() == 0.0 && x.abs() < 1e6 {
                format!("{x}")
            } else {
                format!("{x:e}")
            };
            out.insert(prefix.to_string(), s);
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}", 100.0 * v))
        .unwrap_or_else(|| "-".into())
}

/// Render rows; `wall_clock` false replaces timings with "-" (for snapshots).
pub fn render(rows: &[Row], format: Format, wall_clock: bool) -> Result<String> {
    // The value-entropy columns only where some run has been analysed.
    let with_entropy = rows.iter().any(|r| r.value_entropy.is_some());
    // The OOD columns only where some run was tested on evaluation levels: the score, then one
    // column per level (csv: `eval_<level>`).
    let levels: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.eval_levels.keys()).collect();
    let with_ood = !levels.is_empty();
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(rows)? + "\n",
        Format::Csv => {
            let mut s = String::from("task,level,model,cell,setting,params,flops,lr,seeds,diverged,test_mean,test_ci95,val_mean,test_macro_mean,chance,wall_clock_s");
            if with_entropy {
                s += ",value_entropy,analysed";
            }
            if with_ood {
                s += ",ood_mean,ood_ci95";
                for l in &levels {
                    s += &format!(",eval_{l}");
                }
            }
            s += "\n";
            for r in rows {
                let o = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
                s += &format!(
                    "{},{},{},{},\"{}\",{},{:.6e},{:e},{},{},{},{},{},{},{:.6},{}",
                    r.task,
                    r.level,
                    r.model,
                    r.cell,
                    r.setting.replace('"', "\"\""),
                    r.params,
                    r.flops,
                    r.lr,
                    r.seeds,
                    r.diverged,
                    o(r.test_mean),
                    o(r.test_ci95),
                    o(r.val_mean),
                    o(r.test_macro_mean),
                    r.chance,
                    if wall_clock {
                        format!("{:.1}", r.wall_clock_s)
                    } else {
                        String::new()
                    }
                );
                if with_entropy {
                    s += &format!(
                        ",{},{}",
                        o(r.value_entropy),
                        r.analysed.map(|n| n.to_string()).unwrap_or_default()
                    );
                }
                if with_ood {
                    s += &format!(",{},{}", o(r.ood_mean), o(r.ood_ci95));
                    for l in &levels {
                        s += &format!(",{}", o(r.eval_levels.get(*l).map(|m| m.mean)));
                    }
                }
                s += "\n";
            }
            s
        }
        Format::Md => {
            use tabled::{builder::Builder, settings::Style};
            // The setting column only where some rows need telling apart.
            let with_setting = rows.iter().any(|r| !r.setting.is_empty());
            let mut b = Builder::default();
            let mut header = vec!["task", "level", "model"];
            if with_setting {
                header.push("setting");
            }
            header.extend([
                "params",
                "FLOPs",
                "lr",
                "seeds",
                "test acc % (95% CI)",
                "val acc %",
                "test macro acc %",
                "chance %",
                "wall-clock",
            ]);
            if with_entropy {
                header.push("value entropy (nats, analysed runs)");
            }
            if with_ood {
                header.push("OOD test acc % (95% CI)");
                header.push("test acc % by evaluation level");
            }
            b.push_record(header);
            for r in rows {
                let test = match (r.test_mean, r.test_ci95) {
                    (Some(m), Some(c)) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * c),
                    (Some(m), None) => format!("{:.1}", 100.0 * m),
                    _ => "diverged".into(),
                };
                let test = if r.diverged > 0 && r.test_mean.is_some() {
                    format!("{test} ({} diverged)", r.diverged)
                } else {
                    test
                };
                let mut record = vec![r.task.clone(), r.level.clone(), r.model.clone()];
                if with_setting {
                    record.push(r.setting.clone());
                }
                record.extend([
                    r.params.to_string(),
                    format!("{:.3e}", r.flops),
                    format!("{:e}", r.lr),
                    r.seeds.to_string(),
                    test,
                    pct(r.val_mean),
                    pct(r.test_macro_mean),
                    format!("{:.1}", 100.0 * r.chance),
                    if wall_clock {
                        format!("{:.0} s", r.wall_clock_s)
                    } else {
                        "-".into()
                    },
                ]);
                if with_entropy {
                    record.push(match (r.value_entropy, r.analysed) {
                        (Some(h), Some(n)) => format!("{h:.2} ({n} of {})", r.seeds),
                        _ => "-".into(),
                    });
                }
                if with_ood {
                    record.push(match (r.ood_mean, r.ood_ci95) {
                        (Some(m), Some(c)) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * c),
                        (Some(m), None) => format!("{:.1}", 100.0 * m),
                        _ => "-".into(),
                    });
                    let by_level: Vec<String> = r
                        .eval_levels
                        .iter()
                        .map(|(l, a)| format!("{l} {:.1}", 100.0 * a.mean))
                        .collect();
                    record.push(by_level.join(", "));
                }
                b.push_record(record);
            }
            let mut t = b.build();
            t.with(Style::markdown());
            format!("{t}\n")
        }
    })
}

/// The lines under a markdown table naming the run folders that could not be read.
pub fn unreadable_footer(unreadable: &Unreadable) -> String {
    if unreadable.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n{} run folder(s) could not be read and are not in the table:\n",
        unreadable.len()
    );
    for (dir, why) in unreadable {
        s += &format!("- {}: {why}\n", dir.display());
    }
    s
}

/// The table of `dir`'s runs (optionally only some tasks). Unreadable run folders are named
/// under a markdown table, and on stderr for csv and json (whose output stays machine-readable).
pub fn render_dir(dir: &Path, tasks: Option<&[String]>, format: Format) -> Result<String> {
    let mut loaded = load_results(dir)?;
    if let Some(ts) = tasks.filter(|t| !t.is_empty()) {
        loaded.records.retain(|r| ts.contains(&r.result.task));
    }
    let table = render(&rows(&loaded.records), format, true)?;
    let footer = unreadable_footer(&loaded.unreadable);
    Ok(if format == Format::Md {
        table + &footer
    } else {
        eprint!("{footer}");
        table
    })
}

pub fn run(a: &LeaderboardArgs) -> Result<()> {
    print!("{}", render_dir(&a.results, Some(&a.task), a.format)?);
    if let Some(base) = &a.versus {
        if a.format != Format::Md {
            anyhow::bail!("--versus renders a markdown table: use --format md");
        }
        let loaded = load_results(&a.results)?;
        let records: Vec<Record> = loaded
            .records
            .into_iter()
            .filter(|r| a.task.is_empty() || a.task.contains(&r.result.task))
            .collect();
        print!("{}", versus_table(&records, base, &a.results)?);
    }
    Ok(())
}

/// The first evaluation at which a run's val accuracy reached `tau` (`metrics.jsonl`): its step.
fn first_step_at(results: &Path, r: &Record, tau: f64) -> Option<u64> {
    let lines = crate::rundir::RunDir::of(results, &r.result.id)
        .read_metrics()
        .unwrap_or_default();
    lines
        .iter()
        .find(|m| m.val_acc.is_some_and(|a| a >= tau))
        .map(|m| m.step)
}

/// The fraction of the budget a run had spent when its val accuracy first reached `tau`
/// (`metrics.jsonl`), 1.0 when it never did (censored at the budget).
pub fn flops_to_tau(results: &Path, r: &Record, tau: f64) -> f64 {
    match first_step_at(results, r, tau) {
        Some(step) => (step as f64 * r.spec.flops_per_step / r.spec.budget_flops).min(1.0),
        None => 1.0,
    }
}

/// Whether a run's val accuracy ever reached `tau`.
pub fn reaches_tau(results: &Path, r: &Record, tau: f64) -> bool {
    first_step_at(results, r, tau).is_some()
}

/// The per-seed numbers of a cell's evaluation runs, for the verdict rules.
pub fn evidence(results: &Path, runs: &[&Record], rules: &Rules) -> ArmData {
    let mut d = ArmData::default();
    for r in runs {
        let ok = r.result.status == RunStatus::Ok;
        d.acc.push(match (ok, r.judged_acc()) {
            (true, Some(a)) => a,
            _ => rules.floor,
        });
        d.flops_to_tau.push(match ok {
            true => flops_to_tau(results, r, rules.tau),
            false => 1.0,
        });
        d.resolution = 1.0 / r.spec.n_test.max(1) as f64;
        d.flops_resolution =
            (r.spec.eval_every as f64 * r.spec.flops_per_step / r.spec.budget_flops).min(1.0);
    }
    d
}

/// A tuning run as the lr selection reads it (a diverged run has no val accuracy).
pub fn tuned(r: &Record) -> crate::verdict::Tuned {
    crate::verdict::Tuned {
        lr: r.result.lr,
        val_acc: (r.result.status == RunStatus::Ok)
            .then_some(r.result.val_acc)
            .flatten(),
        val_loss: r.result.val_loss,
    }
}

/// What tells two models' cells apart beyond the model: the spec without the model, its variant,
/// seed, lr and what follows from the model (FLOPs per step, steps, eval and checkpoint cadence).
fn pair_key(spec: &RunSpec) -> String {
    let mut v = serde_json::to_value(spec).expect("a spec serializes");
    if let Some(o) = v.as_object_mut() {
        for k in [
            "model",
            "seed",
            "flops_per_step",
            "steps",
            "eval_every",
            "ckpt_every",
        ] {
            o.remove(k);
        }
        if let Some(m) = o.get_mut("model_config").and_then(|m| m.as_object_mut()) {
            m.remove("variant");
        }
        if let Some(m) = o.get_mut("optim").and_then(|m| m.as_object_mut()) {
            m.remove("lr");
        }
    }
    v.to_string()
}

/// The verdict rules on a researcher's own results: every model against `base` in each setting
/// both were run in. Where several lrs were swept, seed 0 chooses the lr
/// ([`crate::verdict::choose_lr_on`] over the lrs present) and only seeds ≥ 1 at that lr are
/// judged; with one lr every seed is. Holm runs over the whole table.
pub fn versus_table(records: &[Record], base: &str, results: &Path) -> Result<String> {
    use crate::verdict::{judge_family_with, Comparison, Direction, Rules};
    // (pair key, task, level, model) → its records.
    let mut cells: BTreeMap<(String, String, String, String), Vec<&Record>> = BTreeMap::new();
    for r in records {
        cells
            .entry((
                pair_key(&r.spec),
                r.result.task.clone(),
                r.result.level.clone(),
                r.result.model.clone(),
            ))
            .or_default()
            .push(r);
    }
    if !cells.keys().any(|k| k.3 == base) {
        anyhow::bail!(
            "--versus {base}: no run of model {base} in {}",
            results.display()
        );
    }
    let evaluation = |rs: &[&Record]| -> (Option<f64>, Vec<Record>) {
        let lrs: BTreeSet<String> = rs.iter().map(|r| format!("{:e}", r.result.lr)).collect();
        let mut grid: Vec<f64> = rs.iter().map(|r| r.result.lr).collect();
        grid.sort_by(f64::total_cmp);
        grid.dedup();
        let (lr, skip_seed0) = if lrs.len() == 1 {
            (grid[0], false)
        } else {
            let tuned: Vec<crate::verdict::Tuned> = rs
                .iter()
                .filter(|r| r.result.seed == 0)
                .map(|r| tuned(r))
                .collect();
            let n_val = rs[0].spec.n_val.max(1);
            match crate::verdict::choose_lr_on(&tuned, n_val, &grid, &grid).chosen {
                Some(l) => (l, true),
                None => return (None, Vec::new()),
            }
        };
        let mut ev: Vec<Record> = rs
            .iter()
            .filter(|r| r.result.lr == lr && !(skip_seed0 && r.result.seed == 0))
            .map(|r| (*r).clone())
            .collect();
        ev.sort_by_key(|r| r.result.seed);
        (Some(lr), ev)
    };
    let mut comps = Vec::new();
    let mut labels = Vec::new();
    for ((key, task, level, model), rs) in &cells {
        if model == base {
            continue;
        }
        let Some(brs) = cells.get(&(key.clone(), task.clone(), level.clone(), base.to_string()))
        else {
            continue;
        };
        let ((la, ea), (lb, eb)) = (evaluation(rs), evaluation(brs));
        let chance = rs[0].result.chance;
        let rules = Rules {
            direction: Direction::Directed,
            delta: 0.02,
            delta_flops: 0.1,
            tau: 0.99,
            floor: chance,
            paper_effect: None,
        };
        fn refs(e: &[Record]) -> Vec<&Record> {
            e.iter().collect()
        }
        comps.push((
            Comparison {
                a: evidence(results, &refs(&ea), &rules),
                b: evidence(results, &refs(&eb), &rules),
            },
            rules,
        ));
        labels.push((task.clone(), level.clone(), model.clone(), la, lb));
    }
    let mut judged = judge_family_with(&comps);
    crate::verdict::fill_exact(&mut judged, &comps);
    let mut out = format!(
        "\n### Against {base} (verdict rules of REPRODUCTION.md; Holm over these {} comparisons)\n\n\
         | task | level | model | lr | {base} lr | metric | n | solved | difference (adjusted CI) | Holm p | verdict |\n\
         |---|---|---|---:|---:|---|---:|---:|---:|---:|---|\n",
        judged.len()
    );
    let lr = |l: Option<f64>| l.map(|l| format!("{l:e}")).unwrap_or("-".into());
    for ((task, level, model, la, lb), j) in labels.iter().zip(&judged) {
        let (metric, n, solved, diff, holm) = match &j.test {
            Some(t) => (
                t.metric.name().to_string(),
                t.n.to_string(),
                format!("{}/{} vs {}/{}", t.solved.0, t.n, t.solved.1, t.n),
                match t.ci.0.is_finite() {
                    true => format!(
                        "{:+.1} [{:+.1}, {:+.1}]",
                        100.0 * t.diff,
                        100.0 * t.ci.0,
                        100.0 * t.ci.1
                    ),
                    false => format!("{:+.1}", 100.0 * t.diff),
                },
                format!("{:.3}", t.p_holm),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "| {task} | {level} | {model} | {} | {} | {metric} | {n} | {solved} | {diff} | {holm} | {} |\n",
            lr(*la),
            lr(*lb),
            j.verdict.label()
        );
    }
    Ok(out)
}
