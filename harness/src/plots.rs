//! SVG plots next to the leaderboard: training loss vs FLOPs (one line per run) and test accuracy
//! vs difficulty level (one line per model), per task.

use crate::leaderboard::Row;
use crate::records::RunResult;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// (flops, loss) points of a run's metrics.jsonl.
fn loss_curve(run_dir: &Path) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("flops")?.as_f64()?, v.get("loss")?.as_f64()?)))
        .filter(|(f, l)| *f > 0.0 && l.is_finite() && *l > 0.0)
        .collect()
}

pub fn write_plots(dir: &Path, results: &[RunResult], rows: &[Row]) -> Result<()> {
    for r in results.iter().filter(|r| r.router_heatmap.len() > 1) {
        let path = dir.join("runs").join(&r.id).join("router-heatmap.svg");
        heatmap(
            &path,
            &format!("{} {}: mean |W| per source layer", r.model, r.id),
            &r.router_heatmap,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut by_task: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by_task.entry(&r.task).or_default().push(r);
    }
    for (task, runs) in by_task {
        let curves: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|r| {
                (
                    format!("{} {} s{} lr{:e}", r.model, r.level, r.seed, r.lr),
                    loss_curve(&dir.join("runs").join(&r.id)),
                )
            })
            .filter(|(_, c)| c.len() >= 2)
            .collect();
        if !curves.is_empty() {
            let path = dir.join(format!("{task}-loss-vs-flops.svg"));
            line_plot(
                &path,
                &format!("{task}: training loss vs FLOPs"),
                "training FLOPs",
                "loss",
                &curves,
                true,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // One line per model and setting (rows of one model that differ in budget, shape, ...).
        let mut models: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let levels: Vec<&str> = {
            let mut l: Vec<&str> = rows
                .iter()
                .filter(|r| r.task == task)
                .map(|r| r.level.as_str())
                .collect();
            l.sort();
            l.dedup();
            l
        };
        for r in rows.iter().filter(|r| r.task == task) {
            if let (Some(m), Some(i)) = (r.test_mean, levels.iter().position(|l| *l == r.level)) {
                let name = if r.setting.is_empty() {
                    r.model.clone()
                } else {
                    format!("{} ({})", r.model, r.setting)
                };
                models.entry(name).or_default().push((i as f64, m));
            }
        }
        if !models.is_empty() {
            let curves: Vec<(String, Vec<(f64, f64)>)> = models.into_iter().collect();
            let path = dir.join(format!("{task}-accuracy-vs-level.svg"));
            let xl = format!("level ({})", levels.join(", "));
            line_plot(
                &path,
                &format!("{task}: test accuracy by level"),
                &xl,
                "test accuracy",
                &curves,
                false,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

fn line_plot(
    path: &Path,
    title: &str,
    xl: &str,
    yl: &str,
    curves: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> Result<()> {
    let pts = curves.iter().flat_map(|(_, c)| c.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart.configure_mesh().x_desc(xl).y_desc(yl).draw()?;
                for (i, (name, c)) in curves.iter().enumerate() {
                    let col = palette(i);
                    chart
                        .draw_series(LineSeries::new(c.iter().copied(), col.stroke_width(2)))?
                        .label(name.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                        });
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if log_x {
            draw!(b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?);
        } else {
            draw!(b.build_cartesian_2d(x0 - 0.5..x1 + 0.5, y0.min(0.0)..y1.max(1.0))?);
        }
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

/// Lower-triangular heatmap: row l = layer, column j = source layer, value in [0, 1].
fn heatmap(path: &Path, title: &str, rows: &[Vec<f64>]) -> Result<()> {
    let n = rows.len();
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (520, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(40)
            .build_cartesian_2d(0..n, 0..n)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("source layer")
            .y_desc("layer")
            .draw()?;
        for (l, row) in rows.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let shade = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
                let color = RGBColor(shade, shade, 255);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(j, l), (j + 1, l + 1)],
                    color.filled(),
                )))?;
            }
        }
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}
