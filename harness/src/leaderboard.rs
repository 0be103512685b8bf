//! Leaderboards from saved runs: mean ± 95% CI (Student t over seeds) per (task, level, model),
//! with the learning rate chosen on val. Reads only `result.json` files, so shards of a sweep merge
//! by copying their run folders together.

use crate::train::RunResult;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Md,
    Csv,
    Json,
}

/// One leaderboard row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub task: String,
    pub level: String,
    pub model: String,
    pub params: u64,
    pub flops: f64,
    pub lr: f64,
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
}

/// Two-sided 95% Student t quantile t_{0.975, df}.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        // Cornish-Fisher expansion around the normal quantile; < 1e-3 off beyond df 30.
        d => {
            let z = 1.959964f64;
            let n = d as f64;
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// Mean and 95% CI half-width.
pub fn mean_ci(xs: &[f64]) -> (Option<f64>, Option<f64>) {
    if xs.is_empty() {
        return (None, None);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (Some(mean), None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (Some(mean), Some(t975(xs.len() - 1) * (var / n).sqrt()))
}

/// Every `result.json` under `<dir>/runs/`, sorted by id.
pub fn load_results(dir: &Path) -> Result<Vec<RunResult>> {
    let runs = dir.join("runs");
    if !runs.is_dir() {
        anyhow::bail!(
            "no runs in {} (expected {}/runs/<id>/result.json)",
            dir.display(),
            dir.display()
        );
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&runs).with_context(|| format!("cannot read {}", runs.display()))? {
        let p = e?.path().join("result.json");
        if p.is_file() {
            out.push(crate::io::read_json::<RunResult>(&p)?);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Aggregate: per (task, level, model) pick the lr with the best mean val accuracy, then report
/// its test mean ± CI over seeds.
pub fn rows(results: &[RunResult]) -> Vec<Row> {
    let mut cells: BTreeMap<(String, String, String), BTreeMap<String, Vec<&RunResult>>> =
        BTreeMap::new();
    for r in results {
        cells
            .entry((r.task.clone(), r.level.clone(), r.model.clone()))
            .or_default()
            .entry(format!("{:e}", r.lr))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((task, level, model), by_lr) in cells {
        let score = |rs: &Vec<&RunResult>| {
            let v: Vec<f64> = rs.iter().filter_map(|r| r.val_acc).collect();
            if v.is_empty() {
                f64::NEG_INFINITY
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let best = by_lr
            .values()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .expect("non-empty cell");
        let ok: Vec<&RunResult> = best.iter().copied().filter(|r| r.status == "ok").collect();
        let test: Vec<f64> = ok.iter().filter_map(|r| r.test_acc).collect();
        let val: Vec<f64> = ok.iter().filter_map(|r| r.val_acc).collect();
        let macro_: Vec<f64> = ok.iter().filter_map(|r| r.test_macro_acc).collect();
        let (test_mean, test_ci95) = mean_ci(&test);
        let r0 = best[0];
        out.push(Row {
            task,
            level,
            model,
            params: r0.params,
            flops: best.iter().map(|r| r.flops_spent).sum::<f64>() / best.len() as f64,
            lr: r0.lr,
            seeds: best.len(),
            diverged: best.len() - ok.len(),
            test_mean,
            test_ci95,
            val_mean: mean_ci(&val).0,
            test_macro_mean: mean_ci(&macro_).0,
            chance: r0.chance,
            wall_clock_s: best.iter().map(|r| r.wall_clock_s).sum::<f64>() / best.len() as f64,
        });
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}", 100.0 * v))
        .unwrap_or_else(|| "-".into())
}

/// Render rows; `wall_clock` false replaces timings with "-" (for snapshots).
pub fn render(rows: &[Row], format: Format, wall_clock: bool) -> Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(rows)? + "\n",
        Format::Csv => {
            let mut s = String::from("task,level,model,params,flops,lr,seeds,diverged,test_mean,test_ci95,val_mean,test_macro_mean,chance,wall_clock_s\n");
            for r in rows {
                let o = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
                s += &format!(
                    "{},{},{},{},{:.6e},{:e},{},{},{},{},{},{},{:.6},{}\n",
                    r.task,
                    r.level,
                    r.model,
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
            }
            s
        }
        Format::Md => {
            use tabled::{builder::Builder, settings::Style};
            let mut b = Builder::default();
            b.push_record([
                "task",
                "level",
                "model",
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
                b.push_record([
                    r.task.clone(),
                    r.level.clone(),
                    r.model.clone(),
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
            }
            let mut t = b.build();
            t.with(Style::markdown());
            format!("{t}\n")
        }
    })
}

pub fn render_dir(dir: &Path, tasks: Option<&[String]>, format: Format) -> Result<String> {
    let mut results = load_results(dir)?;
    if let Some(ts) = tasks.filter(|t| !t.is_empty()) {
        results.retain(|r| ts.contains(&r.task));
    }
    render(&rows(&results), format, true)
}

/// Write leaderboard.{md,csv,json} and the SVG plots into `dir`; returns the rows written.
pub fn write_all(dir: &Path) -> Result<Vec<Row>> {
    let results = load_results(dir)?;
    let rs = rows(&results);
    for (f, name) in [
        (Format::Md, "leaderboard.md"),
        (Format::Csv, "leaderboard.csv"),
        (Format::Json, "leaderboard.json"),
    ] {
        crate::io::write_atomic(&dir.join(name), render(&rs, f, true)?.as_bytes())?;
    }
    crate::plots::write_plots(dir, &results, &rs)?;
    Ok(rs)
}

pub fn run(a: &LeaderboardArgs) -> Result<()> {
    print!("{}", render_dir(&a.results, Some(&a.task), a.format)?);
    Ok(())
}
