//! The figures a researcher reads: every kind (loss and val accuracy vs FLOPs, accuracy by
//! level, router heatmaps per run and per cell) rendered with resvg after a one-seed run and a
//! two-seed run of two levels; data must be drawn inside the plot area, tick labels must be at
//! most 8 characters, and the SVG structure of each kind is a named snapshot.

use crate::leaderboard::write_run;
use harness::overrides::Overrides;
use harness::records::{RunResult, RunStatus};
use std::path::{Path, PathBuf};

/// Fake finished runs of `seeds` seeds of llama and lime on mqar at `levels`, each with a loss
/// curve and val accuracies in its metrics.jsonl and (lime) a router heatmap.
fn runs(dir: &Path, levels: &[&str], seeds: u64) {
    let o = Overrides {
        task: vec!["mqar".into()],
        level: levels.iter().map(|l| l.to_string()).collect(),
        models: vec!["llama".into(), "lime".into()],
        seeds: Some(seeds),
        budget_flops: Some(2e12),
        ..Overrides::default()
    };
    for s in harness::spec::resolve(&o).unwrap() {
        let lime = s.model == "lime";
        let skill = if lime { 0.9 } else { 0.5 } - 0.02 * s.seed as f64;
        write_run(dir, &s, skill, skill, RunStatus::Ok);
        let d = dir.join("runs").join(s.id());
        let mut m = String::new();
        for k in 1..=20u64 {
            let step = k * s.steps / 20;
            let loss = 5.0 * (-(k as f64) * skill / 8.0).exp() + 0.05 * s.seed as f64;
            m += &format!(
                "{{\"step\":{step},\"flops\":{},\"loss\":{loss},\"lr\":0.001}}\n",
                step as f64 * s.flops_per_step
            );
            if k % 4 == 0 {
                m += &format!(
                    "{{\"step\":{step},\"val_acc\":{}}}\n",
                    skill * k as f64 / 20.0
                );
            }
        }
        std::fs::write(d.join("metrics.jsonl"), m).unwrap();
        if lime {
            let p = d.join("result.json");
            let mut r: RunResult =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            r.router_heatmap = vec![
                vec![1.0],
                vec![0.3 + 0.1 * s.seed as f64, 0.7 - 0.1 * s.seed as f64],
            ];
            std::fs::write(&p, serde_json::to_string(&r).unwrap()).unwrap();
        }
    }
}

fn svgs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    for run in std::fs::read_dir(dir.join("runs")).unwrap() {
        let p = run.unwrap().path().join("router-heatmap.svg");
        if p.exists() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Pixels of saturated colour (data: lines, points, bars, cells; not the black and grey axes,
/// grid, text or the white background) left of `x_max`.
fn data_pixels(svg: &str, x_max: u32) -> usize {
    let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).unwrap();
    let size = tree.size().to_int_size();
    let mut pix = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pix.as_mut(),
    );
    let w = size.width() as usize;
    pix.pixels()
        .iter()
        .enumerate()
        .filter(|(i, _)| ((i % w) as u32) < x_max)
        .filter(|(_, p)| {
            let c = [p.red(), p.green(), p.blue()];
            c.iter().max().unwrap() - c.iter().min().unwrap() > 60
        })
        .count()
}

/// The texts drawn at the tick-label size (plotters writes sizes in px: pt / 1.24).
fn tick_labels(svg: &str) -> Vec<String> {
    let size = format!("font-size=\"{}\"", harness::plots::TICK_FONT as f64 / 1.24);
    svg.split("<text ")
        .skip(1)
        .filter(|t| t.split('>').next().unwrap().contains(&size))
        .map(|t| {
            let body = &t[t.find('>').unwrap() + 1..];
            body[..body.find("</text>").unwrap()].trim().to_string()
        })
        .collect()
}

/// Element counts of an SVG: its structure, without coordinates.
fn structure(svg: &str) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for tag in svg.split('<').skip(1) {
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if !name.is_empty() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn every_figure_shows_its_data_with_readable_ticks() {
    let mut snapshot = String::new();
    for (name, levels, seeds) in [
        ("one seed", &["kv4"][..], 1),
        ("two seeds", &["kv4", "kv8"][..], 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        runs(dir.path(), levels, seeds);
        harness::job::write_report(dir.path()).unwrap();
        let files = svgs(dir.path());
        let kinds: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "mqar-loss-vs-flops.svg",
            "mqar-val-acc-vs-flops.svg",
            "mqar-accuracy-vs-level.svg",
            "mqar-kv4-lime-router-heatmap.svg",
            "router-heatmap.svg",
        ] {
            assert!(
                kinds.iter().any(|k| k == want),
                "{name}: no {want} in {kinds:?}"
            );
        }
        snapshot += &format!("## {name}\n");
        for p in &files {
            let svg = std::fs::read_to_string(p).unwrap();
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            // The legend (or colour bar) is the right-hand 230 px; data lies left of it.
            let width: u32 = svg
                .split("width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let px = data_pixels(&svg, width - 230);
            assert!(
                px > 200,
                "{name} {file}: only {px} data pixels in the plot area"
            );
            let ticks = tick_labels(&svg);
            assert!(ticks.len() >= 3, "{name} {file}: tick labels not found");
            for t in &ticks {
                assert!(
                    t.chars().count() <= 8,
                    "{name} {file}: tick label `{t}` too long"
                );
            }
            snapshot += &format!(
                "{file}: {}\n  ticks: {}\n",
                structure(&svg),
                ticks.join(" ")
            );
        }
    }
    crate::golden().bind(|| insta::assert_snapshot!("plots_structure", snapshot));
}

#[test]
fn tick_labels_are_short() {
    use harness::plots::tick;
    assert_eq!(tick(1e11), "1e11");
    assert_eq!(tick(2.5e12), "2.5e12");
    assert_eq!(tick(3e12), "3e12");
    assert_eq!(tick(0.5), "0.5");
    assert_eq!(tick(0.0), "0");
    assert_eq!(tick(350.0), "350");
    for x in [1.23456789e-7, 9.99e13, 1234.5678, 0.00123, 77777.7] {
        assert!(tick(x).len() <= 8, "{x}: {}", tick(x));
    }
}
