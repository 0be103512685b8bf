//! `REPRODUCTION.md`: every claim's standing ([`crate::reproduce::standing`]) rendered from the
//! committed run folders alone — no clock, no machine state — so a re-render is byte for byte
//! (tested), and the rows of the forest plots ([`crate::plots::forest_plot`]).

use crate::claims::{Claim, LRS, TUNING_SEED};
use crate::reproduce::{arms, committed, standing, Scale, Standing};
use crate::stats::mean_ci;
use crate::verdict::{
    null_report, Judged, Metric, NullResult, Verdict, ALPHA, ALPHA_PER_LOOK, LOOKS,
};
use anyhow::Result;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

pub use crate::plots::ForestRow;

/// What [`report`] renders: the markdown and, per claim with a tested comparison, the rows of
/// its forest plot (drawn by `reproduce::run` as `<claim>-differences.svg`).
pub struct Report {
    pub md: String,
    pub forest: Vec<(String, Vec<ForestRow>)>,
}

/// `REPRODUCTION.md` from the committed results of `claims` (a pure function of the files).
pub fn render(claims: &[Claim], results: &Path) -> Result<String> {
    Ok(report(claims, results)?.md)
}

/// The family sizes the null simulation covers: every size a claim's family has.
const NULL_SIZES: [usize; 5] = [1, 2, 3, 7, 8];

/// The null simulation the report states (run once per process; seeded, so always the same).
pub fn null_results() -> &'static [NullResult] {
    static NULL: OnceLock<Vec<NullResult>> = OnceLock::new();
    NULL.get_or_init(|| null_report(&NULL_SIZES))
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn signed(x: f64) -> String {
    format!("{:+.1}", 100.0 * x)
}

fn p3(p: f64) -> String {
    match p {
        p if p.is_nan() => "-".into(),
        p if p < 0.001 => "< 0.001".into(),
        p => format!("{p:.3}"),
    }
}

/// [`render`] and the rows behind its forest plots.
pub fn report(claims: &[Claim], results: &Path) -> Result<Report> {
    let records = committed(results)?;
    let null = null_results();
    let worst = null
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .expect("simulated");
    let alpha_look = ALPHA_PER_LOOK;
    let mut head = String::from("# Reproduction: the LIMe paper's claims at matched FLOPs\n\n");
    head += &format!(
        "Rendered by `harness reproduce --render-only` from the run folders committed under \
         `results/reproduction/runs/` (each run's `config.json`, `result.json`, `metrics.jsonl`); \
         re-rendering gives this file byte for byte, and `harness reproduce --claims NAME` trains \
         what the rules want next (`--plan` lists it). To check any number, `harness rerun \
         results/reproduction/runs/<id>` retrains that run from its `config.json` alone and \
         compares every figure of its `result.json` (exactly equal on the same kind of machine).\n\n\
         **How a verdict is reached.** Each claim declares, before it runs, its families of \
         comparisons, a margin δ, a solve threshold τ and a floor. Per cell (task, level, model, \
         shape) the learning rate is chosen by a *tuning seed* (seed {TUNING_SEED}) alone, on val \
         accuracy over the grid {} (val ties within 1/n_val broken by val loss, then by the middle \
         lr, and flagged; a winner on the grid's edge extends the grid by a half-decade step, at \
         most twice); the statistics use only *evaluation seeds* 1, 2, … at that lr, never the \
         tuning seed. Every comparison then goes through these rules, in order: *incomplete* (an \
         arm has fewer seeds than the look needs) → *inconclusive (floor)* (no arm solved a seed \
         and no arm's 95% lower bound clears floor + δ) → *saturated* (every seed of both arms ≥ \
         τ: the metric becomes FLOPs-to-τ, the fraction of the budget spent when val accuracy \
         first reached τ, censored at the budget) → the **solve rate** (k/n solved, Wilson \
         intervals, Newcombe's interval of the difference, Boschloo's exact test) where the solve \
         counts differ or an arm mixes solved and unsolved seeds, else **mean accuracy** (Welch's \
         test, each arm's variance floored at its rounding error, and an exact permutation test \
         that must agree) → **Holm** within the family at {alpha_look:.4} per look ({ALPHA} spent \
         evenly over the looks) → *reproduced* (Holm rejects and the family-adjusted interval, at \
         1 − {alpha_look:.4}/K, lies above 0; *smaller than reported* when its upper end is under half the paper's \
         effect), *contradicted* (below 0), *no effect* (TOST: the 1 − 2·{alpha_look:.4} \
         interval inside ±δ), else *continue*: more seeds, at looks of {} seeds per arm; after \
         the last look, *inconclusive (underpowered)*. Comparisons without a reported direction \
         (an ablation against LIMe) are *differs* / *equivalent* / *inconclusive*. A diverged \
         run counts at the floor, unsolved; a challenger that computes the same function as its \
         baseline at the claim's shape (same parameters, logits and gradients from one seed) is \
         refused.\n\n\
         **Family-wise error, measured.** A seeded null simulation of the whole procedure (every \
         look, Holm, the floor and saturation rules; challengers drawn like a shared baseline; \
         1,000 families per case, seed fixed) counts the families in which it wrongly asserts a \
         difference: at most {:.3} (scenario {:?}, {} comparison(s) per family), against the \
         {ALPHA} it is built to hold:\n\n",
        LRS.iter()
            .map(|l| format!("{l:e}"))
            .collect::<Vec<_>>()
            .join(", "),
        LOOKS
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        worst.rate(),
        worst.scenario,
        worst.family,
    );
    head += "| scenario | ";
    head += &NULL_SIZES
        .iter()
        .map(|k| format!("K = {k}"))
        .collect::<Vec<_>>()
        .join(" | ");
    head += " |\n|---|";
    head += &"---:|".repeat(NULL_SIZES.len());
    head += "\n";
    let mut scenarios: Vec<_> = null.iter().map(|r| r.scenario).collect();
    scenarios.dedup();
    for s in scenarios {
        let _ = write!(head, "| {s:?} |");
        for k in NULL_SIZES {
            let r = null.iter().find(|r| r.scenario == s && r.family == k);
            let _ = write!(
                head,
                " {} |",
                r.map(|r| format!("{:.3}", r.rate())).unwrap_or_default()
            );
        }
        head += "\n";
    }
    head += "\n(Accuracy: every seed N(60%, 3 points); Bimodal: a seed solves with probability \
             1/2, else ~15%; Saturated: every seed solves, FLOPs-to-τ uniform over the ten \
             evaluations.)\n";

    let mut md = String::new();
    let mut summary = String::new();
    let mut remaining = String::new();
    let mut forest = Vec::new();
    for c in claims {
        let _ = write!(
            md,
            "\n## {} (`{}`)\n\nReported: {}.\n\n",
            c.title, c.name, c.reported
        );
        md += &implemented_line(c);
        md += &setting_line(c);
        md += &rules_line(c);
        let Some(cpu) = arms(c, Scale::Cpu)? else {
            continue;
        };
        let st = standing(c, &cpu, &records, results)?;
        let (text, rows, glance) = section(c, "CPU scale", &st, &records, results);
        md += &text;
        summary += &glance;
        let missing = st.missing(&records).len();
        if missing > 0 {
            let _ = writeln!(
                remaining,
                "- `{}`: {missing} run(s) — `harness reproduce --claims {}`",
                c.name, c.name
            );
        }
        if !rows.is_empty() {
            let _ = write!(
                md,
                "\nThe differences with their adjusted intervals, ±δ and per-seed dots: \
                 [figure](results/reproduction/{}-differences.svg).\n",
                c.name
            );
            forest.push((c.name.to_string(), rows));
        }
        if let Some(gpu) = arms(c, Scale::Gpu)? {
            let st = standing(c, &gpu, &records, results)?;
            let cmd = format!(
                "`harness reproduce --claims {} --scale gpu --device cuda`",
                c.name
            );
            let ids: BTreeSet<String> = gpu.iter().flat_map(|(_, s)| s).map(|s| s.id()).collect();
            if records.iter().any(|r| ids.contains(&r.result.id)) {
                let _ = write!(md, "\n### The GPU-scale protocol ({cmd})\n\n");
                let (text, _, glance) = section(c, "GPU scale", &st, &records, results);
                md += &text;
                summary += &glance.replace(
                    &format!("| `{}` |", c.name),
                    &format!("| `{}` (GPU) |", c.name),
                );
            } else {
                let _ = write!(
                    md,
                    "\nThe GPU-scale protocol has not been run: no GPU has been lent to the \
                     sessions that trained these results. Its tuning alone is {} runs, then {} \
                     evaluation seeds per cell or more. To run it: {cmd}, then commit its runs \
                     with `scripts/commit-reproduction.sh`.\n",
                    st.wanted.len(),
                    LOOKS[0]
                );
            }
        }
    }
    let mut out = head;
    out += "\n## Every verdict at a glance\n\n\
            | claim | task, level | comparison | metric | n | difference (adjusted CI) | Holm p | verdict |\n\
            |---|---|---|---|---:|---:|---:|---|\n";
    out += &summary;
    if !remaining.is_empty() {
        out +=
            "\n**What the rules still want** (CPU scale; committed runs are never retrained):\n\n";
        out += &remaining;
    }
    out += &md;
    Ok(Report { md: out, forest })
}

/// For a claim whose challengers are drawn by role (the rivals): which variant of each model is
/// implemented, from the models' own summaries (each file's header has the rest).
fn implemented_line(c: &Claim) -> String {
    let by_role = c
        .families
        .iter()
        .any(|f| matches!(f.challengers, crate::claims::Challengers::Role(_)));
    if !by_role {
        return String::new();
    }
    let items: Vec<String> = c
        .models()
        .into_iter()
        .filter_map(models::Variant::from_name)
        .map(|v| format!("`{}` — {}", v.name(), v.def().summary()))
        .collect();
    format!(
        "Models as implemented (`harness models`; each model's file under `models/src/` states its \
         equations, init, deviations and neutral setting): {}.

",
        items.join("; ")
    )
}

/// The declared rules of a claim, one paragraph.
/// How the CPU protocol's difficulty was set: the calibration that chose it, or why it is fixed.
fn setting_line(c: &Claim) -> String {
    match c.setting {
        crate::claims::Setting::Calibrated { file, command } => format!(
            "Setting: calibrated — `{command}` chose it (baseline at the tuning seed; what it \
             tried and chose: [{name}]({file})).\n\n",
            name = file.rsplit('/').next().unwrap_or(file)
        ),
        crate::claims::Setting::Fixed(why) => format!("Setting: not calibrated — {why}.\n\n"),
    }
}

fn rules_line(c: &Claim) -> String {
    let floor = "measured per level: the best of chance, the majority predictor (the most \
                 frequent target per supervised position, or the most frequent answer, counted \
                 on 4,096 train examples) and the task's shallow heuristics (hop-k: copying the \
                 current token, one induction hop), scored on the test split (the floor % column); 1/2 for \
                 runs judged on the two-way choice, whose candidates come in random order";
    let families = c
        .families
        .iter()
        .map(|f| {
            format!(
                "`{}` ({}, {} comparison(s) per level)",
                f.name,
                match f.direction {
                    crate::verdict::Direction::Directed => "directed",
                    crate::verdict::Direction::Undirected => "undirected",
                },
                f.challengers.names().len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let paper = match c.paper {
        [] => String::new(),
        p => format!(
            " The paper's effect: {}.",
            p.iter()
                .map(|(l, e)| format!("{} points at {l}", signed(*e)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "Rules (declared): a seed solves at test accuracy ≥ {}%; δ = {} points ({}% of the budget \
         on FLOPs-to-τ); floor: {floor}. Families: {families}.{paper}\n\n",
        pct(c.rules.tau),
        pct(c.rules.delta),
        pct(c.rules.delta_flops)
    )
}

/// The protocol line, the per-model table and the verdict table of one scale of a claim; its
/// forest rows; its rows of the summary table.
fn section(
    c: &Claim,
    scale: &str,
    st: &Standing,
    records: &[crate::leaderboard::Record],
    results: &Path,
) -> (String, Vec<ForestRow>, String) {
    let mut md = String::new();
    let committed: BTreeSet<&str> = records.iter().map(|r| r.result.id.as_str()).collect();
    let wanted_ids: BTreeSet<String> = st.wanted.iter().map(|s| s.id()).collect();
    let have = wanted_ids
        .iter()
        .filter(|id| committed.contains(id.as_str()))
        .count();
    let places: BTreeSet<String> = st
        .cells
        .iter()
        .map(|x| {
            let arm = if x.arm.is_empty() {
                String::new()
            } else {
                format!(" ({})", x.arm)
            };
            format!("{} {}{arm}", x.task, x.level)
        })
        .collect();
    let budgets: BTreeSet<String> = st
        .cells
        .iter()
        .map(|x| format!("{:.1e}", x.specs[0].budget_flops))
        .collect();
    let _ = write!(
        md,
        "Protocol ({scale}): {}; models {}; {} FLOPs per run. The rules want {} runs so far \
         (tuning and evaluation seeds); {} of them committed.\n\n",
        places.into_iter().collect::<Vec<_>>().join(", "),
        c.models().join(", "),
        budgets.into_iter().collect::<Vec<_>>().join(" / "),
        wanted_ids.len(),
        have
    );
    md += "| task | level | model | lrs tried | lr (tuning seed) | flags | eval seeds | test acc % per seed | solved | test acc % (95% CI) | FLOPs to τ on val, % of budget | tuning val acc % | chance % | floor % | params | FLOPs |\n";
    md += "|---|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let shown = |level: &str, arm: &str| match arm {
        "" => level.to_string(),
        a => format!("{level} · {a}"),
    };
    for (i, cell) in st.cells.iter().enumerate() {
        let sel = &st.selections[i];
        let ev = &st.evaluation[i];
        let tuning = sel
            .chosen
            .and_then(|lr| cell.spec(TUNING_SEED, lr))
            .and_then(|s| crate::reproduce::record(records, s))
            .and_then(|r| r.result.val_acc);
        let mut flags = Vec::new();
        if sel.tie {
            flags.push(if sel.tie_by_loss {
                "val tie (broken by loss)"
            } else {
                "val tie (middle lr)"
            });
        }
        if sel.edge {
            flags.push("lr on the grid's edge");
        }
        if ev
            .iter()
            .any(|r| r.result.status != crate::records::RunStatus::Ok)
        {
            flags.push("diverged seed");
        }
        let accs: Vec<f64> = ev.iter().map(|r| r.judged_acc().unwrap_or(0.0)).collect();
        let solved = accs.iter().filter(|&&a| a >= c.rules.tau).count();
        let (m, h) = mean_ci(&accs);
        let r0 = ev.first();
        // FLOPs to τ on val per seed (censored at the budget): the mean, and how many reached it.
        let to_tau: Vec<f64> = ev
            .iter()
            .map(|r| crate::leaderboard::flops_to_tau(results, r, c.rules.tau))
            .collect();
        let reached = ev
            .iter()
            .filter(|r| crate::leaderboard::reaches_tau(results, r, c.rules.tau))
            .count();
        let to_tau_s = match to_tau.is_empty() {
            true => "-".to_string(),
            false => format!(
                "{:.0} ({reached}/{})",
                100.0 * to_tau.iter().sum::<f64>() / to_tau.len() as f64,
                to_tau.len()
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {to_tau_s} | {} | {} | {} | {} | {} |",
            cell.task,
            shown(&cell.level, &cell.arm),
            cell.model,
            sel.grid.len(),
            sel.chosen.map(|l| format!("{l:e}")).unwrap_or("-".into()),
            flags.join(", "),
            ev.len(),
            accs.iter().map(|&a| pct(a)).collect::<Vec<_>>().join(" "),
            if ev.is_empty() {
                "-".into()
            } else {
                format!("{solved}/{}", ev.len())
            },
            match (m, h) {
                (Some(m), Some(h)) => format!("{} ± {}", pct(m), pct(h)),
                (Some(m), None) => pct(m),
                _ => "-".into(),
            },
            tuning.map(pct).unwrap_or("-".into()),
            r0.map(|r| pct(r.result.chance)).unwrap_or("-".into()),
            st.floors[i].map(pct).unwrap_or("-".into()),
            r0.map(|r| r.result.params.to_string())
                .unwrap_or("-".into()),
            r0.map(|r| format!("{:.2e}", r.result.flops_spent))
                .unwrap_or("-".into()),
        );
    }
    // Worked solutions: how many generations are valid at every step (arith's chain).
    let valid: Vec<String> = st
        .cells
        .iter()
        .zip(&st.evaluation)
        .filter_map(|(cell, ev)| {
            let v: Vec<f64> = ev
                .iter()
                .filter_map(|r| r.result.test_steps_valid)
                .collect();
            (!v.is_empty()).then(|| {
                format!(
                    "{} {} {} {}% ({} seeds)",
                    cell.task,
                    shown(&cell.level, &cell.arm),
                    cell.model,
                    pct(v.iter().sum::<f64>() / v.len() as f64),
                    v.len()
                )
            })
        })
        .collect();
    if !valid.is_empty() {
        let _ = write!(
            md,
            "\nTest generations valid at every step (each `=`-separated step parses and keeps the \
             expression's value; mean over evaluation seeds): {}.\n",
            valid.join("; ")
        );
    }
    // Name the metric behind each accuracy column, from the cells' own specs.
    let metrics: BTreeSet<String> = st
        .cells
        .iter()
        .filter_map(|cell| {
            let spec = &cell.specs[0];
            let task = crate::train::task_from_spec(spec).ok()?;
            let test = match (spec.val_metric, task.metric()) {
                (crate::overrides::ValMetric::Choice, _) => {
                    "two-way choice accuracy (the answer's logit above the distractor's at the \
                     decisive position, teacher-forced on the reference before it)"
                }
                (_, tasks::Metric::TeacherForced) => {
                    "teacher-forced accuracy at the supervised positions"
                }
                (_, tasks::Metric::Generate) => "the verifier's score of a greedy generation",
            };
            let val = match (spec.val_metric, task.metric()) {
                (crate::overrides::ValMetric::Task | crate::overrides::ValMetric::Choice, _)
                | (_, tasks::Metric::TeacherForced) => "the same".to_string(),
                _ => "teacher-forced whole-answer accuracy".to_string(),
            };
            Some(format!("{}: test = {test}, val = {val}", cell.task))
        })
        .collect();
    if !metrics.is_empty() {
        let _ = write!(
            md,
            "\nMetrics: {}.\n",
            metrics.into_iter().collect::<Vec<_>>().join("; ")
        );
    }
    md += "\nTest accuracy per seed lists evaluation seeds 1, 2, … in order. FLOPs to τ: the mean \
           over evaluation seeds of the budget fraction spent when val accuracy first reached τ \
           (100 where it never did), with how many seeds reached it — MQAR's own evidence is a \
           time-to-99% run. The tuning val column is the tuning seed's best of its ~10 val \
           checkpoints at the chosen lr: it selects, and reads optimistic beside test.\n";
    md += "\n| family | task | level | comparison | per seed % (challenger; baseline) | metric | n | solved | difference (adjusted CI) | p | Holm p | exact p | TOST p | flags | verdict |\n";
    md += "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n";
    let mut forest = Vec::new();
    let mut glance = String::new();
    for (f, comps) in c.families.iter().zip(&st.families) {
        for (l, judged) in comps {
            let (ch, base) = (&st.cells[l.challenger].model, &st.cells[l.baseline].model);
            let level = shown(&l.level, &l.arm);
            let cmp = format!("{ch} − {base}");
            let Some(j) = judged else {
                let v = "refused: computes the same function as the baseline at this shape";
                let _ = writeln!(
                    md,
                    "| {} | {} | {level} | {cmp} | - | - | - | - | - | - | - | - | - | - | {v} |",
                    f.name, l.task
                );
                let _ = writeln!(
                    glance,
                    "| `{}` | {} {level} | {cmp} | - | - | - | - | {v} |",
                    c.name, l.task
                );
                continue;
            };
            let tuning_pending = [l.challenger, l.baseline]
                .iter()
                .any(|&i| st.selections[i].chosen.is_none());
            let verdict = match j.verdict {
                Verdict::Incomplete { .. } if tuning_pending => {
                    "incomplete: the lr search is not finished".to_string()
                }
                v => v.label(),
            };
            let (cells, diff_s, mut flags) = row_cells(j);
            // The lr selection's flags of either arm.
            let sels = [&st.selections[l.challenger], &st.selections[l.baseline]];
            for (on, what) in [
                (sels.iter().any(|s| s.tie), "val tie"),
                (sels.iter().any(|s| s.edge), "lr at edge"),
            ] {
                if on {
                    flags += &format!("{}{what}", if flags.is_empty() { "" } else { ", " });
                }
            }
            // The per-seed values the look judged (its first n seeds of each arm).
            let n = j.test.as_ref().map(|t| t.n).unwrap_or(0);
            let seeds = |i: usize| {
                st.evaluation[i]
                    .iter()
                    .take(n)
                    .map(|r| r.judged_acc().map(pct).unwrap_or("div".into()))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let per_seed = match n {
                0 => "-".to_string(),
                _ => format!("{}; {}", seeds(l.challenger), seeds(l.baseline)),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {level} | {cmp} | {per_seed} | {cells} | {flags} | {verdict} |",
                f.name, l.task
            );
            let (metric, n) = match &j.test {
                Some(t) => (t.metric.name(), t.n.to_string()),
                None => ("-", "-".into()),
            };
            let holm = j.test.as_ref().map(|t| p3(t.p_holm)).unwrap_or("-".into());
            let _ = writeln!(
                glance,
                "| `{}` | {} {level} | {cmp} | {metric} | {n} | {diff_s} | {holm} | {verdict} |",
                c.name, l.task
            );
            if let Some(t) = &j.test {
                if t.ci.0.is_finite() {
                    let (ea, eb) = (&st.evaluation[l.challenger], &st.evaluation[l.baseline]);
                    let seeds = match t.metric {
                        Metric::Accuracy => ea
                            .iter()
                            .zip(eb)
                            .take(t.n)
                            .filter_map(|(a, b)| Some(a.judged_acc()? - b.judged_acc()?))
                            .map(|d| 100.0 * d)
                            .collect(),
                        _ => Vec::new(),
                    };
                    let paper = c
                        .rules(f, &l.level, 0.0)
                        .paper_effect
                        .filter(|_| t.metric != Metric::FlopsToTau);
                    forest.push(ForestRow {
                        label: format!("{} {level} {cmp} ({})", l.task, t.metric.name()),
                        diff: 100.0 * t.diff,
                        lo: 100.0 * t.ci.0,
                        hi: 100.0 * t.ci.1,
                        delta: 100.0 * t.delta,
                        paper: paper.map(|e| 100.0 * e),
                        seeds,
                        verdict: verdict.clone(),
                    });
                }
            }
        }
    }
    md += "\nDifferences are challenger − baseline in points (solve rate: of the fraction of \
           seeds solved; FLOPs-to-τ: baseline − challenger in % of the budget, so positive \
           favours the challenger), with the family-adjusted interval (1 − α/K per look). p is \
           the decision test's (Welch, or Boschloo for solve rates), Holm p its adjusted value \
           within the family, exact p the permutation test (Boschloo for solve rates), TOST p \
           the equivalence test against ±δ.\n";
    let devices: BTreeSet<&str> = st
        .evaluation
        .iter()
        .flatten()
        .map(|r| r.result.device.as_str())
        .collect();
    if !devices.is_empty() {
        let _ = write!(
            md,
            "\nEvaluation runs made on: {}.\n",
            devices.into_iter().collect::<Vec<_>>().join("; ")
        );
    }
    (md, forest, glance)
}

/// A judged comparison's cells from `metric` to `TOST p`, the difference alone, and its flags.
fn row_cells(j: &Judged) -> (String, String, String) {
    let mut flags = Vec::new();
    if j.floor {
        flags.push("floor");
    }
    if j.saturated {
        flags.push("saturated");
    }
    let Some(t) = &j.test else {
        return (
            "- | - | - | - | - | - | - | -".into(),
            "-".into(),
            flags.join(", "),
        );
    };
    let diff = match t.ci.0.is_finite() {
        true => format!(
            "{} [{}, {}]",
            signed(t.diff),
            signed(t.ci.0),
            signed(t.ci.1)
        ),
        false => signed(t.diff),
    };
    let solved = format!("{}/{} vs {}/{}", t.solved.0, t.n, t.solved.1, t.n);
    (
        format!(
            "{} | {} | {solved} | {diff} | {} | {} | {} | {}",
            t.metric.name(),
            t.n,
            p3(t.p),
            p3(t.p_holm),
            p3(t.p_exact),
            p3(t.p_tost)
        ),
        diff,
        flags.join(", "),
    )
}

/// Write `--out` (REPRODUCTION.md) and, beside the committed runs, their leaderboard, figures and
/// each claim's forest plot.
pub fn write(a: &crate::reproduce::ReproduceArgs) -> Result<()> {
    use anyhow::Context as _;
    let claims = crate::reproduce::selected(&a.claims)?;
    let report = report(&claims, &a.results)?;
    crate::io::write_atomic(&a.out, report.md.as_bytes())?;
    eprintln!("wrote {}", a.out.display());
    if crate::rundir::has_runs(&a.results) {
        // The leaderboard and its figures of every committed run, beside the run folders.
        crate::plots::write_leaderboard(&a.results)?;
        for (name, rows) in &report.forest {
            let path = a.results.join(format!("{name}-differences.svg"));
            crate::plots::forest_plot(&path, name, rows)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        eprintln!(
            "wrote {}/leaderboard.md and its figures",
            a.results.display()
        );
    }
    Ok(())
}
