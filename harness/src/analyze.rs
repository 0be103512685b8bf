//! `harness analyze RUN_DIR`: the LIMe paper's diagnostics of a trained run, for every model —
//! why one model beats another, not only that it does.
//!
//! From the run's best-on-val weights (`best.safetensors`) and the first test examples of its own
//! task config:
//! * **value entropy per layer** (the paper's representation-collapse measure): per sequence the
//!   values as attention consumes them (after LIMe's routing; `Trace::values`), a (T, R·d_h)
//!   matrix, each feature normalised by its mean and unbiased std over all sequences and
//!   positions (eps 1e-5); p = clamp(eig(X Xᵀ), 0) / trace; the matrix Rényi entropy of order
//!   α = ½, H = log(Σ p^α) / (1 − α); mean and std over sequences. The same for the residual
//!   stream (`Trace::hidden`: the embedding output, then each block's output);
//! * **linear probe accuracy per layer**: softmax regression on each residual state at the
//!   supervised positions, predicting the target token, fitted on the first half of the probe
//!   examples and scored on the second;
//! * the **router heatmap** (LIMe's mean |W| per layer × source; lime-dynamic: its static part)
//!   and, for the other depth connections, a **mixing heatmap**: per reader (a sub-layer's input,
//!   a MUDDFormer stream, the final norm's input) the share of each source in its weights —
//!   DenseFormer's static α, or the mean |weight| over the analysed tokens of the weights a trace
//!   records (`Trace::mixing`: AttnRes's softmax over sources, MUDDFormer's dense aggregation
//!   weights, DCA's per-source GRN weights, HC's A_m and mHC's pre over the residual streams,
//!   LAuReL's α and β, and Canon's mean |W| per kernel tap).
//!
//! Output: `analysis.json` ([`Analysis`]) and SVG figures in `--out` (default `RUN_DIR/analysis`).
//! Over a results folder (`DIR/runs/…`), every run with weights is analysed into
//! `DIR/analysis/<run-id>/` and each task/level gets one figure per diagnostic with a line per
//! model (mean over its analysed runs).

use crate::checkpoint::load_tensors;
use crate::flags::DeviceFlag;
use crate::io::write_atomic;
pub use crate::records::Analysis;
use crate::spec::RunSpec;
use crate::train::{run_model, task_from_spec};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tasks::Split;

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// A run folder (config.json, best.safetensors) or a results folder (runs/ under it).
    pub run_dir: PathBuf,
    /// Output folder [default: RUN_DIR/analysis].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test sequences for the entropies.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Test examples for the linear probes (half to fit, half to score).
    #[arg(long, default_value_t = 512)]
    pub probe_n: usize,
    #[command(flatten)]
    pub device: DeviceFlag,
}

/// A mixing heatmap with its labels (`Analysis::mixing_*`).
#[derive(Default)]
struct MixingMap {
    rows: Vec<String>,
    sources: Vec<String>,
    shares: Vec<Vec<f64>>,
}

/// Row-normalised shares (a row of zeros stays zeros).
fn shares(row: &[f64]) -> Vec<f64> {
    let s: f64 = row.iter().sum();
    row.iter()
        .map(|x| if s > 0.0 { x / s } else { 0.0 })
        .collect()
}

/// The running sum of |weight| per reader × source over the analysed tokens, from each
/// sequence's `Trace::mixing` (its shares are those of the mean: the token count cancels).
#[derive(Default)]
struct MixingMean {
    /// (reader, sources, Σ|w| per source).
    rows: Vec<(String, Vec<String>, Vec<f64>)>,
}

impl MixingMean {
    fn add(&mut self, mixing: &[models::Mixing]) -> Result<()> {
        if self.rows.is_empty() {
            self.rows = mixing
                .iter()
                .map(|m| {
                    let zeros = vec![0.0; m.sources.len()];
                    (m.consumer.clone(), m.sources.clone(), zeros)
                })
                .collect();
        }
        if self.rows.len() != mixing.len() {
            bail!(
                "the model recorded {} mixing weights for one sequence and {} for another",
                self.rows.len(),
                mixing.len()
            );
        }
        for ((name, sources, sum), m) in self.rows.iter_mut().zip(mixing) {
            let s = m.weights.dim(candle_core::D::Minus1)?;
            if *name != m.consumer || *sources != m.sources || sources.len() != s {
                bail!(
                    "mixing weights of `{}` do not match their labels",
                    m.consumer
                );
            }
            let w: Vec<Vec<f64>> = m
                .weights
                .abs()?
                .to_dtype(DType::F64)?
                .reshape(((), s))?
                .to_vec2()?;
            for row in &w {
                for (a, x) in sum.iter_mut().zip(row) {
                    *a += x;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<MixingMap> {
        let sources = self
            .rows
            .iter()
            .map(|r| &r.1)
            .max_by_key(|s| s.len())
            .cloned()
            .unwrap_or_default();
        if let Some(r) = self.rows.iter().find(|r| !sources.starts_with(&r.1)) {
            bail!(
                "the sources of mixing row `{}` are not a prefix of {sources:?}",
                r.0
            );
        }
        Ok(MixingMap {
            rows: self.rows.iter().map(|r| r.0.clone()).collect(),
            sources,
            shares: self.rows.iter().map(|(_, _, sum)| shares(sum)).collect(),
        })
    }
}

/// The shares of |w| of each 1-D static mixing vector (DenseFormer's α after block i, over the
/// embedding and the block outputs so far); empty for a variant whose mixing weights are not
/// vectors (LIMe's are matrices: its router heatmap covers them).
fn static_mixing(model: &models::Model) -> Result<MixingMap> {
    let ws = model.mixing_weights()?;
    if ws.iter().any(|w| w.dims().len() != 1) {
        return Ok(MixingMap::default());
    }
    let shares = ws
        .iter()
        .map(|w| Ok(shares(&w.abs()?.to_dtype(DType::F64)?.to_vec1()?)))
        .collect::<Result<Vec<_>>>()?;
    let k = shares.iter().map(Vec::len).max().unwrap_or(0);
    Ok(MixingMap {
        rows: (0..shares.len()).map(|i| format!("B{i}")).collect(),
        sources: std::iter::once("emb".to_string())
            .chain((0..k.saturating_sub(1)).map(|j| format!("B{j}")))
            .collect(),
        shares,
    })
}

/// One sequence's matrix: a row of features per position.
type Rows = Vec<Vec<f64>>;

/// Order of the Rényi entropy.
pub const ALPHA: f64 = 0.5;
const EPS: f64 = 1e-5;

/// Eigenvalues of a symmetric matrix (cyclic Jacobi rotations, f64), in no particular order.
#[allow(clippy::needless_range_loop)] // the rotation reads as the textbook's a[k][p], a[p][k]
pub fn sym_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    let norm: f64 = a.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * norm.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
}

/// The matrix Rényi entropy (order [`ALPHA`]) of the rows of `x` (T × F): the spectrum of the
/// Gram matrix X Xᵀ, computed on the smaller of X Xᵀ and Xᵀ X (same non-zero eigenvalues).
pub fn matrix_entropy(x: &[Vec<f64>]) -> f64 {
    let (t, f) = (x.len(), x.first().map_or(0, Vec::len));
    let gram: Vec<Vec<f64>> = if t <= f {
        (0..t)
            .map(|i| (0..t).map(|j| dot(&x[i], &x[j])).collect())
            .collect()
    } else {
        (0..f)
            .map(|a| {
                (0..f)
                    .map(|b| (0..t).map(|i| x[i][a] * x[i][b]).sum())
                    .collect()
            })
            .collect()
    };
    let trace: f64 = (0..gram.len()).map(|i| gram[i][i]).sum();
    if trace <= 0.0 {
        return 0.0;
    }
    let s: f64 = sym_eigenvalues(gram)
        .into_iter()
        .map(|e| (e.max(0.0) / trace).powf(ALPHA))
        .sum();
    s.ln() / (1.0 - ALPHA)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Normalises every feature (column) by its mean and unbiased std over all sequences and
/// positions of `seqs` (eps added to the std).
pub fn standardize(seqs: &mut [Vec<Vec<f64>>]) {
    let f = seqs
        .iter()
        .flat_map(|s| s.first())
        .map(Vec::len)
        .next()
        .unwrap_or(0);
    let n: usize = seqs.iter().map(Vec::len).sum();
    if n < 2 {
        return;
    }
    for c in 0..f {
        let vals = || seqs.iter().flatten().map(|r| r[c]);
        let mean = vals().sum::<f64>() / n as f64;
        let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt() + EPS;
        for r in seqs.iter_mut().flatten() {
            r[c] = (r[c] - mean) / sd;
        }
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

/// Mean and std over sequences of the standardised entropy of each sequence's matrix.
fn entropy_of(mut seqs: Vec<Rows>) -> (f64, f64) {
    standardize(&mut seqs);
    let h: Vec<f64> = seqs.iter().map(|s| matrix_entropy(s)).collect();
    mean_std(&h)
}

/// Rows of a (1, T, F) tensor, or of a (1, R, T, d_h) one as (T, R·d_h).
fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    let t = match t.dims().len() {
        4 => {
            let (_, r, tt, dh) = t.dims4()?;
            t.squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((tt, r * dh))?
        }
        _ => t.squeeze(0)?,
    };
    Ok(t.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// Softmax regression of `train` (features, class) scored on `test`: features standardised with
/// the train statistics, full-batch Adam with a little L2. A test class never seen in training
/// counts as wrong.
pub fn probe(train: &[(Vec<f64>, u32)], test: &[(Vec<f64>, u32)]) -> f64 {
    if train.is_empty() || test.is_empty() {
        return 0.0;
    }
    let f = train[0].0.len();
    let mut classes: Vec<u32> = train.iter().map(|x| x.1).collect();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    let n = train.len() as f64;
    let mut mean = vec![0.0; f];
    for (x, _) in train {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n;
        }
    }
    let mut sd = vec![0.0; f];
    for (x, _) in train {
        for ((s, v), m) in sd.iter_mut().zip(x).zip(&mean) {
            *s += (v - m).powi(2) / n;
        }
    }
    let norm = |x: &[f64]| -> Vec<f64> {
        x.iter()
            .zip(&mean)
            .zip(&sd)
            .map(|((v, m), s)| (v - m) / (s.sqrt() + EPS))
            .chain(std::iter::once(1.0)) // bias
            .collect()
    };
    let xs: Vec<(Vec<f64>, usize)> = train
        .iter()
        .map(|(x, c)| (norm(x), classes.binary_search(c).expect("a train class")))
        .collect();
    let d = f + 1;
    let mut w = vec![0.0; k * d];
    let (mut m1, mut m2) = (vec![0.0; k * d], vec![0.0; k * d]);
    let (lr, b1, b2, l2) = (0.05, 0.9, 0.999, 1e-4);
    let logits = |w: &[f64], x: &[f64]| -> Vec<f64> {
        (0..k).map(|c| dot(&w[c * d..(c + 1) * d], x)).collect()
    };
    for step in 1..=300 {
        let mut g = vec![0.0; k * d];
        for (x, y) in &xs {
            let z = logits(&w, x);
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..k {
                let p = e[c] / s - if c == *y { 1.0 } else { 0.0 };
                for (gi, xi) in g[c * d..(c + 1) * d].iter_mut().zip(x) {
                    *gi += p * xi / n;
                }
            }
        }
        for i in 0..k * d {
            let gi = g[i] + l2 * w[i];
            m1[i] = b1 * m1[i] + (1.0 - b1) * gi;
            m2[i] = b2 * m2[i] + (1.0 - b2) * gi * gi;
            let mh = m1[i] / (1.0 - b1.powi(step));
            let vh = m2[i] / (1.0 - b2.powi(step));
            w[i] -= lr * mh / (vh.sqrt() + 1e-8);
        }
    }
    let right = test
        .iter()
        .filter(|(x, c)| {
            let z = logits(&w, &norm(x));
            let best = (0..k).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap_or(0);
            classes[best] == *c
        })
        .count();
    right as f64 / test.len() as f64
}

/// The diagnostics of one run folder.
pub fn analyze_run(
    run_dir: &Path,
    n: usize,
    probe_n: usize,
    dev: &candle_core::Device,
) -> Result<Analysis> {
    let run = crate::rundir::RunDir::at(run_dir);
    let spec: RunSpec = run
        .read_spec()
        .with_context(|| format!("analyze {}", run_dir.display()))?;
    let weights = run.best();
    if !weights.is_file() {
        bail!(
            "{}: no best.safetensors (a finished run keeps its best-on-val weights; committed \
             results do not: `harness rerun` retrains one)",
            run_dir.display()
        );
    }
    let model = run_model(&spec, &load_tensors(&weights, dev)?, dev)?;
    let task = task_from_spec(&spec)?;
    let examples = tasks::generate_range(task.as_ref(), Split::Test, 0, n.max(probe_n) as u64);
    // Per layer, per sequence, the (T, F) rows.
    let (mut values, mut hidden): (Vec<Vec<Rows>>, Vec<Vec<Rows>>) = (Vec::new(), Vec::new());
    let mut probe_sets: Vec<Vec<(Vec<f64>, u32)>> = Vec::new();
    let half = probe_n / 2;
    let mut split_at = Vec::new();
    let mut mixing = MixingMean::default();
    for (i, ex) in examples.iter().enumerate() {
        let len = ex.tokens.len().min(spec.seq_len);
        let ids = Tensor::from_vec(ex.tokens[..len].to_vec(), (1, len), dev)?;
        let (_, trace) = model.forward_trace(&ids)?;
        if i < n {
            mixing.add(&trace.mixing)?;
        }
        if values.is_empty() {
            values.resize(trace.values.len(), Vec::new());
            hidden.resize(trace.hidden.len(), Vec::new());
            probe_sets.resize(trace.hidden.len(), Vec::new());
        }
        let hs: Vec<Rows> = trace.hidden.iter().map(rows).collect::<Result<_>>()?;
        if i < n {
            for (l, v) in trace.values.iter().enumerate() {
                values[l].push(rows(v)?);
            }
            for (l, h) in hs.iter().enumerate() {
                hidden[l].push(h.clone());
            }
        }
        if i < probe_n {
            if i == half {
                split_at = probe_sets.iter().map(Vec::len).collect();
            }
            for (l, h) in hs.iter().enumerate() {
                for &(p, t) in ex.targets.iter().filter(|(p, _)| (*p as usize) < len) {
                    probe_sets[l].push((h[p as usize].clone(), t));
                }
            }
        }
    }
    let ent =
        |sets: Vec<Vec<Rows>>| -> (Vec<f64>, Vec<f64>) { sets.into_iter().map(entropy_of).unzip() };
    let (value_entropy, value_entropy_std) = ent(values);
    let (hidden_entropy, hidden_entropy_std) = ent(hidden);
    let probe_acc: Vec<f64> = probe_sets
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let cut = split_at.get(l).copied().unwrap_or(s.len() / 2);
            probe(&s[..cut], &s[cut..])
        })
        .collect();
    let mixing = match mixing.finish()? {
        m if m.rows.is_empty() => static_mixing(&model)?,
        m => m,
    };
    Ok(Analysis {
        run: spec.id(),
        task: spec.task.clone(),
        level: spec.level.clone(),
        model: spec.model.clone(),
        n: n.min(examples.len()),
        value_entropy,
        value_entropy_std,
        hidden_entropy,
        hidden_entropy_std,
        probe_acc,
        probe_examples: (
            half.min(examples.len()),
            probe_n.min(examples.len()) - half.min(examples.len()),
        ),
        router_heatmap: model.router_heatmap()?,
        mixing_heatmap: mixing.shares,
        mixing_rows: mixing.rows,
        mixing_sources: mixing.sources,
    })
}

/// `analysis.json` and the figures of one analysis into `out`.
fn write_one(a: &Analysis, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(a)? + "\n";
    write_atomic(&out.join(crate::records::ANALYSIS_FILE), json.as_bytes())?;
    let color = crate::plots::model_color(&a.model);
    let pts = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect::<Vec<_>>()
    };
    let names = layer_names;
    crate::plots::layer_plot(
        &out.join("value-entropy.svg"),
        &format!("{} {}: Rényi entropy (α=½) of the values", a.model, a.level),
        "entropy (nats)",
        &names(a.value_entropy.len(), false),
        &[(format!("{} values", a.model), color, pts(&a.value_entropy))],
    )?;
    crate::plots::layer_plot(
        &out.join("hidden-entropy.svg"),
        &format!(
            "{} {}: Rényi entropy (α=½) of the residual stream",
            a.model, a.level
        ),
        "entropy (nats)",
        &names(a.hidden_entropy.len(), true),
        &[(format!("{} hidden", a.model), color, pts(&a.hidden_entropy))],
    )?;
    crate::plots::layer_plot(
        &out.join("probe-acc.svg"),
        &format!(
            "{} {}: linear probe accuracy on the target",
            a.model, a.level
        ),
        "probe accuracy",
        &names(a.probe_acc.len(), true),
        &[(a.model.clone(), color, pts(&a.probe_acc))],
    )?;
    if !a.mixing_heatmap.is_empty() {
        let axes = crate::plots::HeatmapAxes {
            rows: a.mixing_rows.clone(),
            cols: a.mixing_sources.clone(),
            row_desc: "reader (A/M: attention/MLP input, B: block, out: final norm)".into(),
            col_desc: "source (emb: embedding, then outputs, blocks or streams)".into(),
            blank_rows: Vec::new(),
        };
        crate::plots::heatmap_with(
            &out.join("mixing-heatmap.svg"),
            &format!("{} {}: share of mean |weight| per source", a.model, a.level),
            &a.mixing_heatmap,
            &axes,
        )?;
    }
    if a.router_heatmap.len() > 1 {
        crate::plots::heatmap(
            &out.join("router-heatmap.svg"),
            &format!("{} {}: mean |W| per source", a.model, a.level),
            &a.router_heatmap,
        )?;
    }
    Ok(())
}

pub fn run(a: &AnalyzeArgs) -> Result<()> {
    let dev = a.device.open()?;
    if a.n == 0 || a.probe_n < 2 {
        bail!("--n must be at least 1 and --probe-n at least 2");
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.run_dir.join(crate::records::ANALYSIS_DIR));
    if !crate::rundir::has_runs(&a.run_dir) {
        let an = analyze_run(&a.run_dir, a.n, a.probe_n, &dev)?;
        write_one(&an, &out)?;
        println!("{}", summary(&an));
        eprintln!("wrote {}/analysis.json and its figures", out.display());
        return Ok(());
    }
    let mut all = Vec::new();
    let runs: Vec<PathBuf> = crate::rundir::list(&a.run_dir)?
        .into_iter()
        .filter(|r| r.best().is_file())
        .map(|r| r.path().to_path_buf())
        .collect();
    if runs.is_empty() {
        bail!(
            "{}: no run with best.safetensors under runs/",
            a.run_dir.display()
        );
    }
    for r in runs {
        let an = analyze_run(&r, a.n, a.probe_n, &dev)?;
        write_one(&an, &out.join(&an.run))?;
        println!("{}", summary(&an));
        all.push(an);
    }
    // One figure per task/level and diagnostic: a line per model, the mean over its runs.
    let mut cells: BTreeMap<(String, String), BTreeMap<String, Vec<&Analysis>>> = BTreeMap::new();
    for an in &all {
        cells
            .entry((an.task.clone(), an.level.clone()))
            .or_default()
            .entry(an.model.clone())
            .or_default()
            .push(an);
    }
    for ((task, level), by_model) in cells {
        for (file, what, emb, get) in [
            (
                "value-entropy",
                "Rényi entropy of the values",
                false,
                (|a: &Analysis| a.value_entropy.clone()) as fn(&Analysis) -> Vec<f64>,
            ),
            (
                "hidden-entropy",
                "Rényi entropy of the residual stream",
                true,
                |a: &Analysis| a.hidden_entropy.clone(),
            ),
            (
                "probe-acc",
                "linear probe accuracy",
                true,
                |a: &Analysis| a.probe_acc.clone(),
            ),
        ] {
            let series: Vec<crate::plots::LayerSeries> = by_model
                .iter()
                .map(|(m, ans)| {
                    let k = ans.iter().map(|a| get(a).len()).min().unwrap_or(0);
                    let pts = (0..k)
                        .map(|i| {
                            let ys: Vec<f64> = ans.iter().map(|a| get(a)[i]).collect();
                            (i as f64, mean_std(&ys).0)
                        })
                        .collect();
                    (
                        format!("{m} ({} run(s))", ans.len()),
                        crate::plots::model_color(m),
                        pts,
                    )
                })
                .collect();
            let k = series.iter().map(|s| s.2.len()).max().unwrap_or(0);
            let names = layer_names(k, emb);
            crate::plots::layer_plot(
                &out.join(format!("{task}-{level}-{file}.svg")),
                &format!("{task} {level}: {what}"),
                if file == "probe-acc" {
                    "probe accuracy"
                } else {
                    "entropy (nats)"
                },
                &names,
                &series,
            )?;
        }
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Axis names of `k` layers: `L0 …`, or `emb L0 …` for residual states (the embedding first).
fn layer_names(k: usize, emb: bool) -> Vec<String> {
    (0..k)
        .map(|i| match (emb, i) {
            (true, 0) => "emb".to_string(),
            (true, i) => format!("L{}", i - 1),
            (false, i) => format!("L{i}"),
        })
        .collect()
}

fn summary(a: &Analysis) -> String {
    let f = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{}: value entropy [{}]  hidden entropy [{}]  probe acc [{}]",
        a.run,
        f(&a.value_entropy),
        f(&a.hidden_entropy),
        f(&a.probe_acc)
    )
}
