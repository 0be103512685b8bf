//! SVG figures next to the leaderboard, per task:
//!
//! * `<task>-loss-vs-flops.svg` and `<task>-val-acc-vs-flops.svg`: one line per leaderboard row
//!   (model, level, setting) at its chosen lr, the mean over its seeds with a shaded band (95%
//!   Student-t CI with ≥ 3 seeds, min–max with 2), log x axis, the FLOP budget as a dashed line;
//! * `<task>-accuracy-vs-level.svg`: the level names on a categorical x axis, a point per model
//!   with its 95% CI error bar (models offset so bars don't overlap), chance as a dashed line;
//! * router heatmaps: per run (`runs/<id>/router-heatmap.svg`) and per row, the mean over its
//!   seeds (`<task>-<level>-<model>-router-heatmap.svg`): values in the cells, a colour bar,
//!   layers named at cell centres, the layer without a router marked.
//!
//! One colour per model in every figure ([`model_color`]). The legend sits outside the plot
//! area, tick labels are at most 8 characters and drawn at [`TICK_FONT`] px (tests/plots.rs
//! renders every kind and checks both).

use crate::leaderboard::{Record, Row};
use crate::rundir::{MetricLine, RunDir};
use anyhow::{Context, Result};
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Font size of tick labels (and of nothing else), so a test can find them in the SVG.
pub const TICK_FONT: u32 = 12;
const LEGEND_FONT: u32 = 13;
const LEGEND_W: u32 = 230;
const BUDGET: RGBColor = RGBColor(90, 90, 90);

const PALETTE: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(57, 59, 121),
    RGBColor(173, 73, 74),
    RGBColor(99, 121, 57),
    RGBColor(206, 109, 189),
    RGBColor(140, 162, 82),
    RGBColor(189, 158, 57),
    RGBColor(82, 84, 163),
];

/// The colour of a model in every figure: its place among the known variants (llama blue,
/// lime red, …); a name no variant has is placed after them by a hash of its name, so its colour
/// is stable and differs from every built-in's.
pub fn model_color(model: &str) -> RGBColor {
    let all = models::Variant::all();
    let i = all
        .iter()
        .position(|v| v.name() == model)
        .unwrap_or_else(|| {
            let h = model.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            all.len() + (h % 64) as usize
        });
    color_at(i)
}

/// The i-th colour: the 16-colour palette, then hues a golden angle apart at three lightnesses,
/// each kept only if it differs by at least 32 in some channel from every colour before it (56
/// such colours in all, then they repeat; the same ones on every run).
fn color_at(i: usize) -> RGBColor {
    if i < PALETTE.len() {
        return PALETTE[i];
    }
    let far = |a: &RGBColor, b: &RGBColor| {
        (a.0 as i32 - b.0 as i32)
            .abs()
            .max((a.1 as i32 - b.1 as i32).abs())
            .max((a.2 as i32 - b.2 as i32).abs())
            >= 32
    };
    let mut kept: Vec<RGBColor> = PALETTE.to_vec();
    let mut k = 0u32;
    while kept.len() <= i {
        let hue = (285.0 + 137.508 * f64::from(k)) % 360.0;
        let c = hsl(hue, 0.65, [0.42, 0.58, 0.30][(k % 3) as usize]);
        // Past 20,000 candidates the space is spent: repeat rather than loop for ever.
        if k > 20_000 || kept.iter().all(|p| far(p, &c)) {
            kept.push(c);
        }
        k += 1;
    }
    kept[i]
}

/// HSL (hue in degrees, saturation and lightness in 0..1) to RGB.
fn hsl(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(to(r), to(g), to(b))
}

/// A tick value in at most 8 characters: `1e11`, `2.5e12`, `0.001`, `350`.
pub fn tick(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{x:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return s.chars().take(8).collect();
    }
    let e = a.log10().floor() as i32;
    let m = x / 10f64.powi(e);
    let m = format!("{m:.1}");
    let m = m.trim_end_matches('0').trim_end_matches('.');
    format!("{m}e{e}")
}

/// Ticks of a log axis: 1, 2 and 5 times the powers of ten inside [lo, hi].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut e = lo.log10().floor() as i32;
    while 10f64.powi(e) <= hi {
        for m in [1.0, 2.0, 5.0] {
            let x = m * 10f64.powi(e);
            if (lo..=hi).contains(&x) {
                out.push(x);
            }
        }
        e += 1;
    }
    out
}

/// Which number of a metric line a curve follows.
pub type Pick = fn(&MetricLine) -> Option<f64>;

/// (flops, value) points of a run's metrics.jsonl: the training loss, or the val accuracy (whose
/// lines carry only the step: x = step × FLOPs per step). A folder whose metrics cannot be read
/// draws no curve.
fn curve(dir: &Path, r: &Record, pick: Pick) -> Vec<(f64, f64)> {
    let lines = RunDir::of(dir, &r.result.id)
        .read_metrics()
        .unwrap_or_default();
    lines
        .iter()
        .filter_map(|m| {
            let y = pick(m)?;
            let x = m.flops.unwrap_or(m.step as f64 * r.spec.flops_per_step);
            Some((x, y))
        })
        .filter(|(x, y)| *x > 0.0 && y.is_finite())
        .collect()
}

/// One line of a figure: mean over seeds with its band.
struct Series {
    label: String,
    color: RGBColor,
    /// (x, mean, lo, hi).
    pts: Vec<(f64, f64, f64, f64)>,
}

/// Mean and band of values at one x: 95% t CI with ≥ 3 values, min–max with 2, none with 1.
fn band(v: &[f64]) -> (f64, f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    match v.len() {
        1 => (m, m, m),
        2 => (m, v[0].min(v[1]), v[0].max(v[1])),
        _ => {
            let h = crate::stats::mean_ci(v).1.unwrap_or(0.0);
            (m, m - h, m + h)
        }
    }
}

/// The runs of a row: its cell at its chosen lr.
pub fn runs_of<'a>(records: &'a [Record], row: &Row) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| r.spec.cell_key() == row.cell && r.result.lr == row.lr)
        .collect()
}

/// The label of a row among the rows of its task.
fn row_label(row: &Row, many_levels: bool) -> String {
    let mut s = row.model.clone();
    if many_levels {
        s += &format!(" {}", row.level);
    }
    if !row.setting.is_empty() {
        s += &format!(" ({})", row.setting);
    }
    s
}

/// A row's curve: per logged point (x, mean over its runs, band low, band high).
pub fn mean_curve(dir: &Path, runs: &[&Record], pick: Pick) -> Vec<(f64, f64, f64, f64)> {
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| curve(dir, r, pick)).collect();
    let n = curves.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let x = curves[0][i].0;
            let ys: Vec<f64> = curves.iter().map(|c| c[i].1).collect();
            let (m, lo, hi) = band(&ys);
            (x, m, lo, hi)
        })
        .collect()
}

/// Write leaderboard.{md,csv,json} and the SVG plots into `dir` from every run under it (what
/// the main job and `reproduce` put beside their runs); returns what was read and the rows.
pub fn write_leaderboard(dir: &Path) -> Result<(crate::leaderboard::Loaded, Vec<Row>)> {
    use crate::leaderboard::{load_results, render, rows, unreadable_footer, Format};
    let loaded = load_results(dir)?;
    let rs = rows(&loaded.records);
    for (f, name) in [
        (Format::Md, "leaderboard.md"),
        (Format::Csv, "leaderboard.csv"),
        (Format::Json, "leaderboard.json"),
    ] {
        let mut text = render(&rs, f, true)?;
        if f == Format::Md {
            text += &unreadable_footer(&loaded.unreadable);
        }
        crate::io::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    write_plots(dir, &loaded.records, &rs)?;
    Ok((loaded, rs))
}

pub fn write_plots(dir: &Path, records: &[Record], rows: &[Row]) -> Result<()> {
    for r in records.iter().filter(|r| r.result.router_heatmap.len() > 1) {
        let path = RunDir::of(dir, &r.result.id)
            .path()
            .join("router-heatmap.svg");
        let title = format!(
            "{} {} seed {}: mean |W| per source",
            r.result.model, r.result.level, r.result.seed
        );
        heatmap(&path, &title, &r.result.router_heatmap)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut by_task: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_task.entry(&r.task).or_default().push(r);
    }
    for (task, rows) in by_task {
        let mut levels: Vec<&str> = rows.iter().map(|r| r.level.as_str()).collect();
        levels.sort();
        levels.dedup();
        let many = levels.len() > 1;
        let loss: Pick = |m| m.loss;
        let val: Pick = |m| m.val_acc;
        for (pick, accuracy, file, yl) in [
            (loss, false, "loss-vs-flops", "training loss"),
            (val, true, "val-acc-vs-flops", "val accuracy"),
        ] {
            let series: Vec<Series> = rows
                .iter()
                .map(|row| Series {
                    label: row_label(row, many),
                    color: model_color(&row.model),
                    pts: mean_curve(dir, &runs_of(records, row), pick),
                })
                .filter(|s| !s.pts.is_empty())
                .collect();
            if series.is_empty() {
                continue;
            }
            let mut budgets: Vec<f64> = rows
                .iter()
                .flat_map(|row| runs_of(records, row))
                .map(|r| r.spec.budget_flops)
                .collect();
            budgets.sort_by(f64::total_cmp);
            budgets.dedup();
            let path = dir.join(format!("{task}-{file}.svg"));
            let title = format!("{task}: {yl} vs FLOPs (mean over seeds, 95% CI band)");
            flops_plot(&path, &title, yl, &series, &budgets, accuracy)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let path = dir.join(format!("{task}-accuracy-vs-level.svg"));
        level_plot(&path, task, &levels, &rows)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // Runs tested beyond their training level (`--eval-levels`): one figure per training
        // level, the extrapolation curve per row.
        for level in &levels {
            let tested: Vec<&Row> = rows
                .iter()
                .copied()
                .filter(|r| r.level == *level && !r.eval_levels.is_empty())
                .collect();
            if tested.is_empty() {
                continue;
            }
            let path = dir.join(format!("{task}-{level}-generalization.svg"));
            generalization_plot(&path, task, level, &tested)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for row in rows.iter() {
            let maps: Vec<&Vec<Vec<f64>>> = runs_of(records, row)
                .iter()
                .map(|r| &r.result.router_heatmap)
                .filter(|h| h.len() > 1)
                .collect();
            if maps.is_empty() {
                continue;
            }
            let mean: Vec<Vec<f64>> = maps[0]
                .iter()
                .enumerate()
                .map(|(l, row0)| {
                    (0..row0.len())
                        .map(|j| maps.iter().map(|m| m[l][j]).sum::<f64>() / maps.len() as f64)
                        .collect()
                })
                .collect();
            let path = dir.join(row_heatmap_file(row));
            let title = format!(
                "{} {}: mean |W| per source, mean of {} seed(s)",
                row.model,
                row.level,
                maps.len()
            );
            heatmap(&path, &title, &mean)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// The file (beside the runs) of a row's mean router heatmap, where its runs have one.
pub fn row_heatmap_file(row: &Row) -> String {
    let cell = if row.setting.is_empty() {
        String::new()
    } else {
        format!("-{}", &row.cell[..8.min(row.cell.len())])
    };
    format!(
        "{}-{}-{}{cell}-router-heatmap.svg",
        row.task, row.level, row.model
    )
}

/// The legend, outside the plot area: a swatch and a label per entry.
fn legend(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[(String, RGBColor, bool)],
) -> Result<()> {
    for (i, (label, color, dashed)) in entries.iter().enumerate() {
        let y = 50 + 22 * i as i32;
        if *dashed {
            area.draw(&plotters::element::DashedPathElement::new(
                vec![(8, y), (34, y)],
                5,
                3,
                color.stroke_width(2),
            ))?;
        } else {
            area.draw(&PathElement::new(
                vec![(8, y), (34, y)],
                color.stroke_width(3),
            ))?;
        }
        let text: String = label.chars().take(30).collect();
        area.draw(&Text::new(
            text,
            (40, y - 7),
            ("sans-serif", LEGEND_FONT).into_font(),
        ))?;
    }
    Ok(())
}

fn flops_plot(
    path: &Path,
    title: &str,
    yl: &str,
    series: &[Series],
    budgets: &[f64],
    unit_y: bool,
) -> Result<()> {
    let pts = || series.iter().flat_map(|s| s.pts.iter());
    let x0 = pts().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts()
        .map(|p| p.0)
        .chain(budgets.iter().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = (x0 / 1.2, if x1 > x0 { x1 * 1.2 } else { x0 * 2.0 });
    let (y0, y1) = if unit_y {
        (0.0, 1.0)
    } else {
        let lo = pts().map(|p| p.2).fold(f64::INFINITY, f64::min);
        let hi = pts().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.05).max(1e-3);
        ((lo - pad).max(0.0), hi + pad)
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(900 - LEGEND_W);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x0..x1).log_scale().with_key_points(log_ticks(x0, x1)),
                y0..y1,
            )?;
        chart
            .configure_mesh()
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", TICK_FONT))
            .x_desc("training FLOPs (log scale)")
            .y_desc(yl)
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for s in series {
            if s.pts.iter().any(|p| p.3 > p.2) {
                let mut poly: Vec<(f64, f64)> = s.pts.iter().map(|p| (p.0, p.3)).collect();
                poly.extend(s.pts.iter().rev().map(|p| (p.0, p.2)));
                chart.draw_series(std::iter::once(Polygon::new(
                    poly,
                    s.color.mix(0.18).filled(),
                )))?;
            }
            chart.draw_series(LineSeries::new(
                s.pts.iter().map(|p| (p.0, p.1)),
                s.color.stroke_width(2),
            ))?;
            if s.pts.len() == 1 {
                chart.draw_series(
                    s.pts
                        .iter()
                        .map(|p| Circle::new((p.0, p.1), 4, s.color.filled())),
                )?;
            }
        }
        for &b in budgets {
            chart.draw_series(DashedLineSeries::new(
                vec![(b, y0), (b, y1)],
                6,
                4,
                BUDGET.stroke_width(1),
            ))?;
        }
        let mut entries: Vec<(String, RGBColor, bool)> = series
            .iter()
            .map(|s| (s.label.clone(), s.color, false))
            .collect();
        entries.push(("FLOP budget".into(), BUDGET, true));
        legend(&side, &entries)?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

fn level_plot(path: &Path, task: &str, levels: &[&str], rows: &[&Row]) -> Result<()> {
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.sort();
    models.dedup();
    // One group per (model, setting), offset around the level's position.
    let mut groups: Vec<(String, &str)> = rows
        .iter()
        .map(|r| {
            let label = if r.setting.is_empty() {
                r.model.clone()
            } else {
                format!("{} ({})", r.model, r.setting)
            };
            (label, r.model.as_str())
        })
        .collect();
    groups.sort();
    groups.dedup();
    let width = 0.6 / groups.len().max(1) as f64;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(900 - LEGEND_W);
        let names: Vec<String> = levels.iter().map(|l| l.chars().take(8).collect()).collect();
        let caption = format!("{task}: test accuracy by level (mean, 95% CI over seeds)");
        let mut chart = level_chart(&plot, caption, &names, "level")?;
        let grey = RGBColor(110, 110, 110);
        for (i, level) in levels.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.level == *level) {
                let x = i as f64;
                chart.draw_series(DashedLineSeries::new(
                    vec![(x - 0.45, r.chance), (x + 0.45, r.chance)],
                    6,
                    4,
                    grey.stroke_width(2),
                ))?;
            }
        }
        for (g, (label, model)) in groups.iter().enumerate() {
            let color = model_color(model);
            let off = (g as f64 - (groups.len() as f64 - 1.0) / 2.0) * width;
            for r in rows.iter().filter(|r| {
                let l = if r.setting.is_empty() {
                    r.model.clone()
                } else {
                    format!("{} ({})", r.model, r.setting)
                };
                &l == label
            }) {
                let (Some(m), Some(i)) = (r.test_mean, levels.iter().position(|l| *l == r.level))
                else {
                    continue;
                };
                let x = i as f64 + off;
                // One seed has no interval: the point alone.
                if let Some(h) = r.test_ci95 {
                    let (lo, hi) = ((m - h).max(0.0), (m + h).min(1.0));
                    let cap = (width * 0.25).min(0.05);
                    for seg in [
                        vec![(x, lo), (x, hi)],
                        vec![(x - cap, lo), (x + cap, lo)],
                        vec![(x - cap, hi), (x + cap, hi)],
                    ] {
                        chart.draw_series(std::iter::once(PathElement::new(
                            seg,
                            color.stroke_width(2),
                        )))?;
                    }
                }
                chart.draw_series(std::iter::once(Circle::new((x, m), 6, color.filled())))?;
            }
        }
        let mut entries: Vec<(String, RGBColor, bool)> = groups
            .iter()
            .map(|(label, model)| (label.clone(), model_color(model), false))
            .collect();
        entries.push(("chance".into(), grey, true));
        legend(&side, &entries)?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

/// A chart of test accuracy (y, 0–100%) over categorical levels (x: `names` at 0 … n−1), its
/// mesh drawn.
fn level_chart<'a, 'b>(
    plot: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: String,
    names: &[String],
    x_desc: &str,
) -> Result<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let n = names.len();
    let mut chart = ChartBuilder::on(plot)
        .caption(caption, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, -0.02..1.05)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_labels(12)
        .y_label_formatter(&|y| {
            if (0.0..=1.0).contains(y) {
                format!("{:.0}%", 100.0 * y)
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", TICK_FONT))
        .x_desc(x_desc)
        .y_desc("test accuracy")
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    Ok(chart)
}

/// The extrapolation figure of rows trained at `train` and tested beyond it: the training level
/// first (shaded, `*`), then the evaluation levels in the task's order; per row its mean test
/// accuracy at each with the 95% CI bar, joined by a line; chance per level dashed.
fn generalization_plot(path: &Path, task: &str, train: &str, rows: &[&Row]) -> Result<()> {
    let order: Vec<&str> = tasks::registry()
        .into_iter()
        .find(|i| i.name == task)
        .map(|i| i.levels.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    let mut evals: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.eval_levels.keys().map(String::as_str))
        .collect();
    evals.sort_by_key(|l| order.iter().position(|o| o == l).unwrap_or(usize::MAX));
    evals.dedup();
    let levels: Vec<&str> = std::iter::once(train).chain(evals).collect();
    let n = levels.len();
    // (mean, CI half-width, chance) of a row at level i.
    let at = |r: &Row, i: usize| -> Option<(f64, Option<f64>, f64)> {
        match i {
            0 => r.test_mean.map(|m| (m, r.test_ci95, r.chance)),
            _ => r
                .eval_levels
                .get(levels[i])
                .map(|e| (e.mean, e.ci95, e.chance)),
        }
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(900 - LEGEND_W);
        let names: Vec<String> = levels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l: String = l.chars().take(7).collect();
                if i == 0 {
                    format!("{l}*")
                } else {
                    l
                }
            })
            .collect();
        let caption =
            format!("{task}: trained at {train}, tested beyond (mean, 95% CI over seeds)");
        let mut chart = level_chart(&plot, caption, &names, "level (* = trained on)")?;
        let shade = RGBColor(235, 235, 235);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(-0.5, -0.02), (0.5, 1.05)],
            shade.filled(),
        )))?;
        let grey = RGBColor(110, 110, 110);
        for i in 0..n {
            if let Some((_, _, chance)) = rows.iter().find_map(|r| at(r, i)) {
                let x = i as f64;
                chart.draw_series(DashedLineSeries::new(
                    vec![(x - 0.45, chance), (x + 0.45, chance)],
                    6,
                    4,
                    grey.stroke_width(2),
                ))?;
            }
        }
        let width = 0.5 / rows.len().max(1) as f64;
        let mut entries = Vec::new();
        for (g, r) in rows.iter().enumerate() {
            let color = model_color(&r.model);
            let off = (g as f64 - (rows.len() as f64 - 1.0) / 2.0) * width;
            let pts: Vec<(f64, f64, Option<f64>)> = (0..n)
                .filter_map(|i| at(r, i).map(|(m, h, _)| (i as f64 + off, m, h)))
                .collect();
            chart.draw_series(std::iter::once(PathElement::new(
                pts.iter().map(|&(x, m, _)| (x, m)).collect::<Vec<_>>(),
                color.stroke_width(2),
            )))?;
            for &(x, m, h) in &pts {
                if let Some(h) = h {
                    let (lo, hi) = ((m - h).max(0.0), (m + h).min(1.0));
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(x, lo), (x, hi)],
                        color.stroke_width(2),
                    )))?;
                }
                chart.draw_series(std::iter::once(Circle::new((x, m), 5, color.filled())))?;
            }
            let label = if r.setting.is_empty() {
                r.model.clone()
            } else {
                format!("{} ({})", r.model, r.setting)
            };
            entries.push((label, color, false));
        }
        entries.push(("chance".into(), grey, true));
        legend(&side, &entries)?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

/// What the axes of a [`heatmap_with`] name: rows, columns, and rows drawn as "no router".
pub struct HeatmapAxes {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub row_desc: String,
    pub col_desc: String,
    /// Rows without mixing weights of their own (LIMe's layer 0).
    pub blank_rows: Vec<usize>,
}

/// LIMe's router heatmap: row l = layer, column j = source layer (its K|V), value in [0, 1],
/// written in its cell; the colour bar on the right; row 0 (layer 0 has no router: it sees only
/// itself) marked.
pub fn heatmap(path: &Path, title: &str, rows: &[Vec<f64>]) -> Result<()> {
    let names: Vec<String> = (0..rows.len()).map(|l| format!("L{l}")).collect();
    let axes = HeatmapAxes {
        rows: names.clone(),
        cols: names,
        row_desc: "layer".into(),
        col_desc: "source layer (its K|V)".into(),
        blank_rows: vec![0],
    };
    heatmap_with(path, title, rows, &axes)
}

/// A heatmap of mixing weights (rows may be shorter than the columns: a lower-triangular
/// matrix), values in the cells, a colour bar, the axes named by `axes`.
pub fn heatmap_with(path: &Path, title: &str, rows: &[Vec<f64>], axes: &HeatmapAxes) -> Result<()> {
    let (n, m) = (rows.len(), axes.cols.len().max(1));
    let shade = |v: f64| {
        let s = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
        RGBColor(s, s, 255)
    };
    let cell = (440 / n.max(m).max(1)).clamp(24, 90) as u32;
    let (side_x, side) = (cell * m as u32, cell * n as u32);
    let (w, h) = (side_x + 230, side + 120);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, bar) = root.split_horizontally(side_x + 100);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 13))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..m as f64 - 0.5, -0.5..n as f64 - 0.5)?;
        let name = |v: f64, names: &[String]| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].chars().take(8).collect()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(m + 1)
            .y_labels(n + 1)
            .x_label_formatter(&|x| name(*x, &axes.cols))
            .y_label_formatter(&|y| name(*y, &axes.rows))
            .label_style(("sans-serif", TICK_FONT))
            .x_desc(axes.col_desc.as_str())
            .y_desc(axes.row_desc.as_str())
            .axis_desc_style(("sans-serif", 13))
            .draw()?;
        let font = ("sans-serif", 11).into_font();
        for (l, row) in rows.iter().enumerate() {
            let (yl, yh) = (l as f64 - 0.5, l as f64 + 0.5);
            if axes.blank_rows.contains(&l) {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(-0.5, yl), (0.5, yh)],
                    RGBColor(225, 225, 225).filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    "no router",
                    (-0.4, l as f64 + 0.1),
                    font.clone(),
                )))?;
                continue;
            }
            for (j, &v) in row.iter().enumerate() {
                let (xl, xh) = (j as f64 - 0.5, j as f64 + 0.5);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(xl, yl), (xh, yh)],
                    shade(v).filled(),
                )))?;
                let ink = if v > 0.55 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (j as f64 - 0.22, l as f64 + 0.1),
                    font.clone().color(&ink),
                )))?;
            }
        }
        // Colour bar: 0 (white) to 1 (full blue).
        let (bx, by, bh) = (20, 40, side as i32);
        for k in 0..bh {
            let v = 1.0 - k as f64 / bh as f64;
            bar.draw(&Rectangle::new(
                [(bx, by + k), (bx + 18, by + k + 1)],
                shade(v).filled(),
            ))?;
        }
        bar.draw(&Rectangle::new(
            [(bx, by), (bx + 18, by + bh)],
            BLACK.stroke_width(1),
        ))?;
        for (v, label) in [(1.0, "1"), (0.5, "0.5"), (0.0, "0")] {
            let y = by + ((1.0 - v) * bh as f64) as i32;
            bar.draw(&Text::new(
                label,
                (bx + 24, y - 6),
                ("sans-serif", TICK_FONT).into_font(),
            ))?;
        }
        bar.draw(&Text::new(
            "share",
            (bx - 4, by - 22),
            ("sans-serif", 13).into_font(),
        ))?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

/// One line of [`layer_plot`]: its label, colour and (layer, value) points.
pub type LayerSeries = (String, RGBColor, Vec<(f64, f64)>);

/// A value per layer: `names` on a categorical x axis, a line with points per series (the
/// diagnostics of `harness analyze`), the legend outside the plot.
pub fn layer_plot(
    path: &Path,
    title: &str,
    yl: &str,
    names: &[String],
    series: &[LayerSeries],
) -> Result<()> {
    let n = names.len().max(1);
    let ys = || series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
    let lo = ys().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = ys().fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-9);
    let pad = (hi - lo) * 0.08;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(900 - LEGEND_W);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, lo..hi + pad)?;
        let short: Vec<String> = names.iter().map(|l| l.chars().take(8).collect()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .y_labels(8)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < short.len() {
                    short[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", TICK_FONT))
            .x_desc("layer")
            .y_desc(yl)
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for (_, color, pts) in series {
            chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
        let entries: Vec<(String, RGBColor, bool)> = series
            .iter()
            .map(|(l, c, _)| (l.clone(), *c, false))
            .collect();
        legend(&side, &entries)?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

/// One comparison as the forest plot draws it (all in points: accuracy and solve-rate
/// differences ×100, FLOPs-to-τ in % of the budget).
#[derive(Clone, Debug, PartialEq)]
pub struct ForestRow {
    /// `task level[ · arm] challenger − baseline (metric)`.
    pub label: String,
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
    /// The no-effect margin ±δ.
    pub delta: f64,
    /// The paper's effect, where it reports one.
    pub paper: Option<f64>,
    /// Per seed, challenger minus baseline of the same seed (accuracy metrics only).
    pub seeds: Vec<f64>,
    pub verdict: String,
}

/// A claim's comparisons as a forest plot: per comparison the difference (points) with its
/// family-adjusted interval, the ±δ band of *no effect* (shaded), a tick at the paper's effect
/// where it reports one, and the per-seed differences as small dots; the zero line dashed.
pub fn forest_plot(path: &Path, claim: &str, rows: &[ForestRow]) -> Result<()> {
    let n = rows.len();
    let mut lo = rows
        .iter()
        .flat_map(|r| [r.lo, -r.delta].into_iter().chain(r.seeds.iter().copied()))
        .fold(0.0f64, f64::min);
    let mut hi = rows
        .iter()
        .flat_map(|r| {
            [r.hi, r.delta]
                .into_iter()
                .chain(r.paper)
                .chain(r.seeds.iter().copied())
        })
        .fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.05).max(1.0);
    lo = (lo - pad).max(-100.0 - pad);
    hi = (hi + pad).min(100.0 + pad);
    let mut buf = String::new();
    {
        let height = 130 + 40 * n as u32;
        let root = SVGBackend::with_string(&mut buf, (1000, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{claim}: challenger − baseline (adjusted CI; ±δ shaded; red triangle: the paper)"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d(lo..hi, -0.5..n as f64 - 0.5)?;
        let names: Vec<String> = rows.iter().map(|d| d.label.clone()).collect();
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
            .x_desc("difference (points; FLOPs-to-τ: % of the budget saved)")
            .draw()?;
        let blue = RGBColor(31, 119, 180);
        let grey = RGBColor(200, 200, 200);
        for (i, d) in rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(-d.delta, y - 0.35), (d.delta, y + 0.35)],
                grey.mix(0.5).filled(),
            )))?;
        }
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, -0.5), (0.0, n as f64 - 0.5)],
            4,
            4,
            BLACK.stroke_width(1),
        ))?;
        for (i, d) in rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(d.lo, y), (d.hi, y)],
                blue.stroke_width(2),
            )))?;
            for x in [d.lo, d.hi] {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, y - 0.15), (x, y + 0.15)],
                    blue.stroke_width(2),
                )))?;
            }
            for &s in &d.seeds {
                chart.draw_series(std::iter::once(Circle::new(
                    (s, y + 0.22),
                    2,
                    BLACK.mix(0.6).filled(),
                )))?;
            }
            chart.draw_series(std::iter::once(Circle::new((d.diff, y), 5, blue.filled())))?;
            if let Some(p) = d.paper {
                chart.draw_series(std::iter::once(TriangleMarker::new(
                    (p, y - 0.22),
                    5,
                    RED.filled(),
                )))?;
            }
        }
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}

#[cfg(test)]
mod colour_tests {
    use super::*;

    /// One colour per model: each of the 40 colours after the palette differs by at least
    /// 32 in some channel from every colour before it, an unknown name never takes a built-in's
    /// colour and keeps its own.
    #[test]
    fn every_model_gets_its_own_colour() {
        let cs: Vec<RGBColor> = (0..PALETTE.len() + 40).map(color_at).collect();
        for (i, a) in cs.iter().enumerate() {
            for b in &cs[..i] {
                let d = (a.0 as i32 - b.0 as i32)
                    .abs()
                    .max((a.1 as i32 - b.1 as i32).abs())
                    .max((a.2 as i32 - b.2 as i32).abs());
                assert!(d > 0, "colour {i} repeats: {a:?}");
                if i >= 16 {
                    assert!(d >= 32, "colour {i} too close to another: {a:?} {b:?}");
                }
            }
        }
        let builtin: Vec<RGBColor> = models::Variant::all()
            .iter()
            .map(|v| model_color(v.name()))
            .collect();
        let mine = model_color("my-variant");
        assert!(!builtin.contains(&mine));
        assert_eq!(mine, model_color("my-variant"));
        assert_eq!(model_color("llama"), PALETTE[0]);
    }
}

/// The suite's performance profile: per model the fraction of runs whose normalized score
/// exceeds τ, a step line over τ ∈ [0, 1] with its bootstrap band shaded.
pub fn performance_profile(path: &Path, curves: &[crate::aggregate::ProfileCurve]) -> Result<()> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, side) = root.split_horizontally(900 - LEGEND_W);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                "performance profile: fraction of runs above each normalized score",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, 0.0..1.02)?;
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{:.0}%", 100.0 * y))
            .label_style(("sans-serif", TICK_FONT))
            .x_desc("normalized score τ ((acc − floor) / (1 − floor))")
            .y_desc("fraction of runs with score > τ")
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        let mut entries = Vec::new();
        for c in curves {
            let color = model_color(&c.model);
            if c.band.len() == c.taus.len() && !c.band.is_empty() {
                let upper = c.taus.iter().zip(&c.band).map(|(&t, b)| (t, b.1));
                let lower = c.taus.iter().zip(&c.band).rev().map(|(&t, b)| (t, b.0));
                chart.draw_series(std::iter::once(Polygon::new(
                    upper.chain(lower).collect::<Vec<_>>(),
                    color.mix(0.15).filled(),
                )))?;
            }
            chart.draw_series(std::iter::once(PathElement::new(
                c.taus
                    .iter()
                    .zip(&c.fraction)
                    .map(|(&t, &f)| (t, f))
                    .collect::<Vec<_>>(),
                color.stroke_width(2),
            )))?;
            entries.push((c.model.clone(), color, false));
        }
        legend(&side, &entries)?;
        root.present()?;
    }
    crate::io::write_atomic(path, buf.as_bytes())
}
