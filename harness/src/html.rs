//! `harness report`: one self-contained HTML page of a results folder — the leaderboard (sortable,
//! filterable, the CI beside every mean), the verdicts of REPRODUCTION.md and of the suite where
//! their runs are in the folder, and per row its runs' loss and accuracy curves, its router
//! heatmap, and every run's settings, machine and code version.
//!
//! Nothing is aggregated here: the rows are [`crate::leaderboard::rows`], the curves
//! [`crate::plots::mean_curve`], the verdicts the Markdown of [`crate::report::render`] and
//! [`crate::suite::render`] turned into HTML. Every string read from a run folder is escaped
//! ([`esc`]); figures are inlined (SVG as `data:` images, which run no script), so the page
//! needs no network. The tables are plain HTML first: sorting and filtering are a small script
//! on top, and without scripts the page still reads.

use crate::leaderboard::{Loaded, Record, Row};
use crate::plots::{mean_curve, row_heatmap_file, runs_of, Pick};
use anyhow::{Context, Result};
use clap::Args;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folders holding `runs/` (repeatable: one section each).
    #[arg(long = "results", default_value = "runs")]
    pub results: Vec<PathBuf>,
    /// The page.
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let mut sections = Vec::new();
    for dir in &a.results {
        let loaded = crate::leaderboard::load_results(dir)?;
        // The figures it inlines are the files the leaderboard drew there; it writes nothing.
        let rows = crate::leaderboard::rows(&loaded.records);
        sections.push((dir.clone(), loaded, rows));
    }
    let html = page(&sections)?;
    crate::io::write_atomic(&a.out, html.as_bytes())?;
    println!("wrote {} ({} KB)", a.out.display(), html.len() / 1024);
    Ok(())
}

/// The main job's `report.html`, beside its leaderboard.
pub fn write_beside(dir: &Path, loaded: Loaded, rows: Vec<Row>) -> Result<()> {
    let html = page(&[(dir.to_path_buf(), loaded, rows)])?;
    crate::io::write_atomic(&dir.join("report.html"), html.as_bytes())
}

/// HTML-escape text (element content and attribute values alike).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o += "&amp;",
            '<' => o += "&lt;",
            '>' => o += "&gt;",
            '"' => o += "&quot;",
            '\'' => o += "&#39;",
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.8em 0;font-size:13px}\
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}\
th{background:#f2f2f2;cursor:pointer;position:sticky;top:0}th[aria-sort=ascending]::after{content:' ▲'}\
th[aria-sort=descending]::after{content:' ▼'}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
td.s{max-width:26em;font-size:11px;word-break:break-word}\
.ci{color:#777}details{margin:.4em 0;border:1px solid #ddd;padding:.3em .6em}summary{cursor:pointer}\
img{max-width:100%}.figs{display:flex;flex-wrap:wrap;gap:8px}code{background:#f4f4f4;padding:0 2px}\
.filters{margin:.5em 0}.filters label{margin-right:1em}";

/// Sorting (click a header; `#sort=T-C` in the address clicks column C of table T on load) and
/// filtering (the selects above a leaderboard).
const SCRIPT: &str = r#"(function(){
function key(td){var v=td.getAttribute('data-v');if(v===null)return td.textContent.trim().toLowerCase();var f=parseFloat(v);return isNaN(f)?null:f;}
function sortBy(t,i,th){var asc=th.getAttribute('aria-sort')!=='ascending';
t.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');var tb=t.tBodies[0];var rows=Array.prototype.slice.call(tb.rows);
rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));return asc?c:-c;});
rows.forEach(function(r){tb.appendChild(r);});}
var tables=document.querySelectorAll('table.sortable');
tables.forEach(function(t){t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){sortBy(t,i,th);});});});
document.querySelectorAll('.filters').forEach(function(f){f.hidden=false;var t=document.getElementById(f.getAttribute('data-table'));
var sels=f.querySelectorAll('select');function apply(){Array.prototype.forEach.call(t.tBodies[0].rows,function(r){var show=true;
sels.forEach(function(s){var c=parseInt(s.getAttribute('data-col'));if(s.value&&r.cells[c].textContent.trim()!==s.value)show=false;});r.hidden=!show;});}
sels.forEach(function(s){s.addEventListener('change',apply);});});
document.querySelectorAll('a[data-open]').forEach(function(a){a.addEventListener('click',function(){var d=document.getElementById(a.getAttribute('data-open'));if(d)d.open=true;});});
var m=location.hash.match(/^#sort=(\d+)-(\d+)$/);if(m){var t=tables[parseInt(m[1])];if(t){var th=t.querySelectorAll('th')[parseInt(m[2])];if(th)th.click();}}
})();"#;

type Section = (PathBuf, Loaded, Vec<Row>);

/// The whole page: one section per results folder.
pub fn page(sections: &[Section]) -> Result<String> {
    let mut h = String::new();
    h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
          <meta name=\"viewport\" content=\"width=device-width\"><title>lime-bench report</title><style>";
    h += STYLE;
    h += "</style></head><body>\n<h1>lime-bench report</h1>\n";
    let _ = writeln!(
        h,
        "<p>Generated by <code>harness report</code> {} from the run folders below; every number \
         is the leaderboard's (mean over seeds at the lr each cell's val chose, 95% Student-t \
         interval). Click a column header to sort.</p>",
        esc(env!("CARGO_PKG_VERSION"))
    );
    for (k, (dir, loaded, rows)) in sections.iter().enumerate() {
        h += &section(k, dir, loaded, rows)?;
    }
    h += "<script>";
    h += SCRIPT;
    h += "</script>\n</body></html>\n";
    Ok(h)
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or_default()
}

/// A numeric cell: its value for sorting, its text.
fn num(v: Option<f64>, text: String) -> String {
    match v {
        Some(v) => format!("<td class=\"n\" data-v=\"{v}\">{text}</td>"),
        None => "<td class=\"n\" data-v=\"\"></td>".into(),
    }
}

fn mean_ci_cell(mean: Option<f64>, ci: Option<f64>) -> String {
    let text = match (mean, ci) {
        (Some(m), Some(c)) => format!(
            "{:.1} <span class=\"ci\">± {:.1}</span>",
            100.0 * m,
            100.0 * c
        ),
        (Some(m), None) => format!("{:.1}", 100.0 * m),
        _ => String::new(),
    };
    num(mean, text)
}

fn section(k: usize, dir: &Path, loaded: &Loaded, rows: &[Row]) -> Result<String> {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<h2>{}</h2>\n<p>{} runs in {} leaderboard rows.</p>",
        esc(&dir.display().to_string()),
        loaded.records.len(),
        rows.len()
    );
    // Filters (shown by the script; without it the table is all there is).
    let table_id = format!("lb-{k}");
    let options = |f: fn(&Row) -> &str| -> String {
        let set: BTreeSet<&str> = rows.iter().map(f).collect();
        set.into_iter()
            .map(|v| format!("<option>{}</option>", esc(v)))
            .collect()
    };
    let _ = writeln!(
        h,
        "<div class=\"filters\" data-table=\"{table_id}\" hidden>\
         <label>task <select data-col=\"0\"><option value=\"\">all</option>{}</select></label>\
         <label>model <select data-col=\"2\"><option value=\"\">all</option>{}</select></label></div>",
        options(|r| &r.task),
        options(|r| &r.model)
    );
    let ood = rows.iter().any(|r| r.ood_mean.is_some());
    let _ = write!(
        h,
        "<table class=\"sortable\" id=\"{table_id}\"><thead><tr><th>task</th><th>level</th>\
         <th>model</th><th>setting</th><th>lr</th><th>seeds</th><th>test acc % (95% CI)</th>{}\
         <th>val acc %</th><th>chance %</th><th>params</th><th>FLOPs</th><th>wall-clock s</th>\
         <th>runs</th></tr></thead><tbody>\n",
        if ood {
            "<th>OOD acc % (95% CI)</th>"
        } else {
            ""
        }
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"s\">{}</td>{}{}{}",
            esc(&r.task),
            esc(&r.level),
            esc(&r.model),
            esc(&r.setting),
            num(Some(r.lr), format!("{:e}", r.lr)),
            num(Some(r.seeds as f64), r.seeds.to_string()),
            mean_ci_cell(r.test_mean, r.test_ci95),
        );
        if ood {
            h += &mean_ci_cell(r.ood_mean, r.ood_ci95);
        }
        let _ = writeln!(
            h,
            "{}{}{}{}{}<td><a href=\"#d-{k}-{i}\" data-open=\"d-{k}-{i}\">curves, runs</a></td></tr>",
            num(r.val_mean, pct(r.val_mean)),
            num(Some(r.chance), pct(Some(r.chance))),
            num(Some(r.params as f64), r.params.to_string()),
            num(Some(r.flops), format!("{:.2e}", r.flops)),
            num(Some(r.wall_clock_s), format!("{:.0}", r.wall_clock_s)),
        );
    }
    h += "</tbody></table>\n";
    if !loaded.unreadable.is_empty() {
        h += "<h3>Run folders that could not be read</h3><ul>";
        for (p, why) in &loaded.unreadable {
            let _ = write!(
                h,
                "<li><code>{}</code>: {}</li>",
                esc(&p.display().to_string()),
                esc(why)
            );
        }
        h += "</ul>\n";
    }
    // The leaderboard's figures per task (the files it drew beside the runs).
    let tasks: BTreeSet<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    for task in tasks {
        let mut figs = String::new();
        let mut names = vec![
            format!("{task}-loss-vs-flops.svg"),
            format!("{task}-val-acc-vs-flops.svg"),
            format!("{task}-accuracy-vs-level.svg"),
        ];
        let levels: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.task == task)
            .map(|r| r.level.as_str())
            .collect();
        names.extend(
            levels
                .iter()
                .map(|l| format!("{task}-{l}-generalization.svg")),
        );
        for name in names {
            figs += &svg_img(&dir.join(&name), &name).unwrap_or_default();
        }
        if !figs.is_empty() {
            let _ = writeln!(
                h,
                "<details><summary>{} figures</summary><div class=\"figs\">{figs}</div></details>",
                esc(task)
            );
        }
    }
    h += &verdicts(dir, &loaded.records)?;
    h += "<h3>Per row: curves, heatmap, runs</h3>\n";
    for (i, r) in rows.iter().enumerate() {
        h += &row_details(k, i, dir, &loaded.records, r);
    }
    Ok(h)
}

/// A row's details: its curves, its router heatmap (where it has one) and every run with its
/// settings, machine and code version.
fn row_details(k: usize, i: usize, dir: &Path, records: &[Record], r: &Row) -> String {
    let runs = runs_of(records, r);
    let mut h = String::new();
    let _ = write!(
        h,
        "<details id=\"d-{k}-{i}\"><summary>{} {} {}{}</summary><div class=\"figs\">",
        esc(&r.task),
        esc(&r.level),
        esc(&r.model),
        if r.setting.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&r.setting))
        }
    );
    let loss: Pick = |m| m.loss;
    let val: Pick = |m| m.val_acc;
    h += &sparkline("training loss", &mean_curve(dir, &runs, loss), false);
    h += &sparkline("val accuracy", &mean_curve(dir, &runs, val), true);
    if let Some(img) = svg_img(&dir.join(row_heatmap_file(r)), "router heatmap") {
        h += &img;
    }
    h += "</div>";
    h += "<table><thead><tr><th>run</th><th>seed</th><th>lr</th><th>status</th><th>test acc %</th>\
          <th>val acc %</th><th>steps</th><th>wall-clock s</th><th>machine</th><th>code version</th>\
          <th>settings</th></tr></thead><tbody>";
    for x in &runs {
        let s = &x.spec;
        let settings = format!(
            "d_model {} · {} layers · {} heads · batch {} · budget {:.2e} FLOPs · n_test {} · task {}",
            s.model_config.d_model,
            s.model_config.n_layers,
            s.model_config.n_heads,
            s.batch_size,
            s.budget_flops,
            s.n_test,
            s.task_config
        );
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:e}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.result.id),
            x.result.seed,
            x.result.lr,
            esc(&format!("{:?}", x.result.status)),
            pct(x.result.test_acc),
            pct(x.result.val_acc),
            x.result.steps,
            x.result.wall_clock_s,
            esc(&x.result.device),
            esc(&s.code_version),
            esc(&settings)
        );
    }
    h += "</tbody></table></details>\n";
    h
}

/// A small inline SVG of a curve (mean line and band over FLOPs); empty without points.
fn sparkline(title: &str, pts: &[(f64, f64, f64, f64)], unit_y: bool) -> String {
    if pts.is_empty() {
        return String::new();
    }
    let (w, hgt, l, b) = (380.0, 180.0, 48.0, 28.0);
    let x0 = pts.first().map(|p| p.0).unwrap_or(0.0);
    let x1 = pts
        .last()
        .map(|p| p.0)
        .unwrap_or(1.0)
        .max(x0 * 1.000001 + 1e-12);
    let (mut y0, mut y1) = match unit_y {
        true => (0.0, 1.0),
        false => (
            pts.iter().map(|p| p.2).fold(f64::INFINITY, f64::min),
            pts.iter().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max),
        ),
    };
    if !(y1 > y0) {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - 8.0);
    let sy = |y: f64| 8.0 + (y1 - y.clamp(y0, y1)) / (y1 - y0) * (hgt - b - 8.0);
    let line = |f: &dyn Fn(&(f64, f64, f64, f64)) -> f64| -> String {
        pts.iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let band = format!(
        "{} {}",
        line(&|p| p.3),
        pts.iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.2)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let fmt = |y: f64| match unit_y {
        true => format!("{:.0}%", 100.0 * y),
        false => format!("{y:.3}"),
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" role=\"img\" \
         aria-label=\"{title}\"><rect width=\"{w}\" height=\"{hgt}\" fill=\"#fff\"/>\
         <polygon points=\"{band}\" fill=\"#4a7dbb\" fill-opacity=\"0.2\"/>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#2a5d9b\" stroke-width=\"1.5\"/>\
         <line x1=\"{l}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <line x1=\"{l}\" y1=\"8\" x2=\"{l}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <text x=\"{:.1}\" y=\"14\" font-size=\"12\" text-anchor=\"middle\">{title}</text>\
         <text x=\"{:.1}\" y=\"12\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"{l}\" y=\"{:.1}\" font-size=\"10\">{x0:.1e}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{x1:.1e} FLOPs</text></svg>",
        line(&|p| p.1),
        hgt - b,
        w - 8.0,
        hgt - b,
        hgt - b,
        (w + l) / 2.0,
        l - 4.0,
        fmt(y1),
        l - 4.0,
        hgt - b,
        fmt(y0),
        hgt - 10.0,
        w - 8.0,
        hgt - 10.0,
    )
}

/// An SVG file as an `<img>` with a `data:` URI (an image runs no script), if it exists.
fn svg_img(path: &Path, alt: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(format!(
        "<img alt=\"{}\" src=\"data:image/svg+xml;base64,{}\">",
        esc(alt),
        base64(&bytes)
    ))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                o.push(T[(n >> shift & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// The verdicts whose runs are in `dir`: REPRODUCTION.md's claims and the suite, each rendered
/// by its own function and shown as HTML.
fn verdicts(dir: &Path, records: &[Record]) -> Result<String> {
    let ids: BTreeSet<&str> = records.iter().map(|r| r.result.id.as_str()).collect();
    let mut h = String::new();
    let claims = crate::claims::claims();
    let mut has_claim = false;
    for c in &claims {
        if let Some(arms) = crate::reproduce::arms(c, crate::reproduce::Scale::Cpu)? {
            has_claim |= arms
                .iter()
                .flat_map(|(_, s)| s)
                .any(|s| ids.contains(s.id().as_str()));
        }
    }
    if has_claim {
        let md = crate::report::render(&claims, dir).context("the reproduction's verdicts")?;
        h += "<details open><summary><strong>The paper's claims (REPRODUCTION.md)</strong></summary>\n";
        h += &markdown_to_html(&md, dir);
        h += "</details>\n";
    }
    // The suite, with the models it has runs of (llama first).
    let mut models: Vec<String> = vec![crate::suite::BASELINE.to_string()];
    for r in records {
        if !models.contains(&r.result.model) {
            models.push(r.result.model.clone());
        }
    }
    let arms = crate::suite::arms(&models, crate::reproduce::Scale::Cpu)?;
    let mut in_suite: BTreeSet<String> = BTreeSet::new();
    let mut families = 0;
    for (_, specs) in &arms {
        let here: Vec<&crate::spec::RunSpec> = specs
            .iter()
            .filter(|s| ids.contains(s.id().as_str()))
            .collect();
        families += here.iter().any(|s| s.model == crate::suite::BASELINE) as usize;
        in_suite.extend(here.iter().map(|s| s.model.clone()));
    }
    // A suite is here when llama has runs of two families or more (one family's cell can be a
    // claim's own, as hop-k's is the depth claim's).
    if families >= 2 {
        let models: Vec<String> = models
            .into_iter()
            .filter(|m| in_suite.contains(m))
            .collect();
        // The arms already resolved, narrowed to those models (same order, so the same cells).
        let arms: Vec<crate::reproduce::ArmRuns> = arms
            .into_iter()
            .map(|(label, specs)| {
                let specs = specs.into_iter().filter(|s| models.contains(&s.model));
                (label, specs.collect())
            })
            .collect();
        let claim = crate::suite::claim(&models);
        let quick = !records.iter().any(|r| r.result.seed > 0);
        let r = crate::suite::render(&models, &arms, &claim, dir, quick)?;
        h += "<details open><summary><strong>The suite scorecard</strong></summary>\n";
        h += &markdown_to_html(&r.md, dir);
        h += "</details>\n";
    }
    Ok(h)
}

/// A `[text](target)` starting at byte `a` of `s` (where `s[a]` is `[`): (text, target, end
/// index past the `)`), if the `]` that closes it is followed by `(`.
fn bracketed(s: &str, a: usize) -> Option<(&str, &str, usize)> {
    let m = a + s[a..].find(']')?;
    if !s[m + 1..].starts_with('(') {
        return None;
    }
    let e = m + 1 + s[m + 1..].find(')')?;
    Some((&s[a + 1..m], &s[m + 2..e], e + 1))
}

/// Inline Markdown (on already escaped text): images (inlined from the file: its own path, or
/// its name beside the runs), links (anchors and http(s) only; any other target stays text),
/// code, bold, italics, `<br>`.
fn inline(t: &str, dir: &Path) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < t.len() {
        let rest = &t[i..];
        let image = rest.starts_with("![");
        let start = if image { i + 1 } else { i };
        if image || rest.starts_with('[') {
            if let Some((text, target, end)) = bracketed(t, start) {
                if image {
                    let path = Path::new(target);
                    let beside = path.file_name().map(|f| dir.join(f));
                    out += &svg_img(path, text)
                        .or_else(|| beside.and_then(|f| svg_img(&f, text)))
                        .unwrap_or_else(|| format!("[{text}]"));
                } else if let Some(img) = target
                    .ends_with(".svg")
                    .then(|| {
                        let path = Path::new(target);
                        let beside = path.file_name().map(|f| dir.join(f));
                        svg_img(path, text).or_else(|| beside.and_then(|f| svg_img(&f, text)))
                    })
                    .flatten()
                {
                    // A link to a figure: the figure itself (the page is self-contained).
                    out += &img;
                } else if target.starts_with('#')
                    || target.starts_with("https://")
                    || target.starts_with("http://")
                {
                    let _ = write!(out, "<a href=\"{target}\">{text}</a>");
                } else {
                    out += text;
                }
                i = end;
                continue;
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        i += c.len_utf8();
    }
    for (mark, open, close) in [
        ("`", "<code>", "</code>"),
        ("**", "<strong>", "</strong>"),
        ("*", "<em>", "</em>"),
    ] {
        let parts: Vec<&str> = out.split(mark).collect();
        if parts.len() < 3 {
            continue;
        }
        // Complete pairs become tags; an unpaired last mark stays as it is.
        let pairs = (parts.len() - 1) / 2;
        let mut o = parts[0].to_string();
        for (k, p) in parts[1..].iter().enumerate() {
            o += match k < 2 * pairs {
                true if k % 2 == 0 => open,
                true => close,
                false => mark,
            };
            o += p;
        }
        out = o;
    }
    out.replace("&lt;br&gt;", "<br>")
}

/// The Markdown the harness renders (headings, paragraphs, lists, tables, code blocks, inline
/// marks, images), as HTML; every piece of text escaped first.
pub fn markdown_to_html(md: &str, dir: &Path) -> String {
    let mut h = String::new();
    let mut para: Vec<String> = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let flush = |h: &mut String, para: &mut Vec<String>| {
        if !para.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", para.join(" "));
            para.clear();
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_end();
        if t.starts_with("<!--") {
            while i < lines.len() && !lines[i].contains("-->") {
                i += 1;
            }
            i += 1;
            continue;
        }
        if t.starts_with("```") {
            flush(&mut h, &mut para);
            h += "<pre>";
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                h += &esc(lines[i]);
                h += "\n";
                i += 1;
            }
            h += "</pre>\n";
            i += 1;
            continue;
        }
        if t.starts_with('|') {
            flush(&mut h, &mut para);
            let cells = |l: &str| -> Vec<String> {
                let l = l.trim().trim_start_matches('|').trim_end_matches('|');
                l.split('|').map(|c| inline(&esc(c.trim()), dir)).collect()
            };
            h += "<table class=\"sortable\"><thead><tr>";
            for c in cells(t) {
                let _ = write!(h, "<th>{c}</th>");
            }
            h += "</tr></thead><tbody>\n";
            i += 1;
            if i < lines.len() && lines[i].trim_start().starts_with("|-") {
                i += 1;
            }
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                h += "<tr>";
                for c in cells(lines[i]) {
                    let _ = write!(h, "<td>{c}</td>");
                }
                h += "</tr>\n";
                i += 1;
            }
            h += "</tbody></table>\n";
            continue;
        }
        if let Some(level) = (1..=6).find(|&n| t.starts_with(&format!("{} ", "#".repeat(n)))) {
            flush(&mut h, &mut para);
            // Headings one level below the page's own sections.
            let n = (level + 2).min(6);
            let _ = writeln!(h, "<h{n}>{}</h{n}>", inline(&esc(&t[level + 1..]), dir));
        } else if let Some(item) = t.trim_start().strip_prefix("- ") {
            flush(&mut h, &mut para);
            let mut item = item.to_string();
            while i + 1 < lines.len()
                && lines[i + 1].starts_with("  ")
                && !lines[i + 1].trim_start().starts_with("- ")
            {
                i += 1;
                item += " ";
                item += lines[i].trim();
            }
            let _ = writeln!(h, "<ul><li>{}</li></ul>", inline(&esc(&item), dir));
        } else if t.is_empty() {
            flush(&mut h, &mut para);
        } else {
            para.push(inline(&esc(t), dir));
        }
        i += 1;
    }
    flush(&mut h, &mut para);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        // RFC 4648, section 10.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn markdown_text_is_escaped_and_marked_up() {
        let dir = Path::new("/nonexistent");
        let h = markdown_to_html(
            "# T <script>\n\nsome **bold** and `code` and *it*\n\n| a | b |\n|---|---|\n| <script>x</script> | 1<br>2 |\n",
            dir,
        );
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;x&lt;/script&gt;"), "{h}");
        assert!(
            h.contains("<strong>bold</strong>") && h.contains("<code>code</code>"),
            "{h}"
        );
        assert!(h.contains("<em>it</em>"), "{h}");
        assert!(h.contains("<td>1<br>2</td>"), "{h}");
        assert!(h.contains("<h3>T &lt;script&gt;</h3>"), "{h}");
        // A link to a file is text; an anchor stays a link; javascript: never becomes one.
        let h = markdown_to_html("[a](#x) [b](REPRODUCTION.md) [c](javascript:alert(1))", dir);
        assert!(
            h.contains("<a href=\"#x\">a</a>")
                && h.contains(" b ")
                && !h.contains("javascript:alert(1)\""),
            "{h}"
        );
    }
}
