//! `harness calibrate`: find the difficulty at which a baseline is informative.
//!
//! A protocol that trains neither model (or that both saturate) says nothing about a claim. Given
//! a task, a baseline model, a budget and a knob with candidate values listed from easiest to
//! hardest, `calibrate` trains the baseline at candidates chosen by bisection (ordinary cached
//! runs under `--out`) until one lands in the target band of val accuracy — by default 25–75% of
//! the way from the floor the verdicts use ([`crate::reproduce::spec_floor`]: the majority
//! predictor, the task's shallow heuristics or chance, whichever is highest) to 100% — and writes what it tried and chose to `<out>/calibration/<task>-<model>-<knob>.json`
//! for the protocol to cite. The knob is a task knob (`--set` key), `level`, `budget`
//! (`budget_flops`), `steps`, or `model.<key>` (a `--model-set` key such as `model.n_layers`).

use crate::overrides::Overrides;
use crate::train::{run_all, Outcome, RunOptions, WhenBusy};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub run: Overrides,
    /// The knob to search: a task knob, `level`, `budget`, `steps` or `model.<key>`.
    #[arg(long)]
    pub knob: String,
    /// Its candidate values, from easiest to hardest (comma-separated): for `budget` and
    /// `steps` that is the largest first.
    #[arg(long, value_delimiter = ',', required = true)]
    pub values: Vec<String>,
    /// The target band, as fractions of the way from the floor to 100% (`lo,hi`).
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.75])]
    pub band: Vec<f64>,
    #[command(flatten)]
    pub progress: crate::flags::Progress,
}

/// One candidate tried.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tried {
    pub value: String,
    pub run: String,
    pub val_acc: f64,
    pub floor: f64,
    /// (val − floor) / (1 − floor).
    pub position: f64,
}

/// What `calibrate` writes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub task: String,
    pub model: String,
    pub knob: String,
    pub values: Vec<String>,
    pub band: (f64, f64),
    pub tried: Vec<Tried>,
    /// The value in the band, or (none in it) the one nearest its middle.
    pub chosen: Option<String>,
    pub in_band: bool,
}

/// What [`bisect`] found: the index chosen, whether it is in the band, the (index, position) pairs
/// tried in order.
pub type Bisection = (Option<usize>, bool, Vec<(usize, f64)>);

/// Bisection over candidates ordered easiest → hardest: `position(i)` is where candidate i's
/// baseline lands (0 = floor, 1 = perfect); above the band means too easy (go harder), below
/// means too hard (go easier). Returns (index chosen, whether it is in the band, indices tried in
/// order). Pure, so it is tested with made-up positions.
pub fn bisect(
    n: usize,
    band: (f64, f64),
    mut position: impl FnMut(usize) -> Result<f64>,
) -> Result<Bisection> {
    let (mut lo, mut hi) = (0i64, n as i64 - 1);
    let mut tried: Vec<(usize, f64)> = Vec::new();
    while lo <= hi {
        let mid = ((lo + hi) / 2) as usize;
        let p = position(mid)?;
        tried.push((mid, p));
        if p > band.1 {
            lo = mid as i64 + 1; // too easy: harder values
        } else if p < band.0 {
            hi = mid as i64 - 1; // too hard: easier values
        } else {
            return Ok((Some(mid), true, tried));
        }
    }
    let centre = 0.5 * (band.0 + band.1);
    let nearest = tried
        .iter()
        .min_by(|a, b| (a.1 - centre).abs().total_cmp(&(b.1 - centre).abs()))
        .map(|t| t.0);
    Ok((nearest, false, tried))
}

/// The overrides of one candidate value.
fn with_value(base: &Overrides, knob: &str, value: &str) -> Result<Overrides> {
    let mut o = base.clone();
    match knob {
        "level" => o.level = vec![value.to_string()],
        "budget" | "budget_flops" => {
            o.budget_flops = Some(value.parse().with_context(|| format!("budget `{value}`"))?)
        }
        "steps" => o.steps = Some(value.parse().with_context(|| format!("steps `{value}`"))?),
        k if k.starts_with("model.") => o.model_sets.push(format!("{}={value}", &k[6..])),
        k => o.sets.push(format!("{k}={value}")),
    }
    Ok(o)
}

pub fn run(a: &CalibrateArgs) -> Result<()> {
    if a.run.task.len() != 1 || a.run.models.len() != 1 {
        bail!("calibrate needs one --task and one --models (the baseline)");
    }
    if a.band.len() != 2
        || !(0.0..=1.0).contains(&a.band[0])
        || a.band[0] > a.band[1]
        || a.band[1] > 1.0
    {
        bail!("--band must be lo,hi with 0 <= lo <= hi <= 1");
    }
    if a.run.seeds() != 1 || a.run.lr.len() > 1 {
        bail!("calibrate trains one seed at one lr per candidate: drop --seeds / give one --lr");
    }
    let band = (a.band[0], a.band[1]);
    let out = a.run.out();
    // Every candidate resolves before anything trains (bad values fail at once).
    let candidates: Vec<crate::spec::RunSpec> = a
        .values
        .iter()
        .map(|v| {
            let specs = crate::spec::resolve(&with_value(&a.run, &a.knob, v)?)
                .with_context(|| format!("--knob {} = {v}", a.knob))?;
            match specs.as_slice() {
                [s] => Ok(s.clone()),
                _ => bail!(
                    "--knob {} = {v} resolves to {} runs, not one",
                    a.knob,
                    specs.len()
                ),
            }
        })
        .collect::<Result<_>>()?;
    let dev = crate::device::device(a.run.device())?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let opts = RunOptions {
        quiet: a.progress.quiet,
        when_busy: WhenBusy::Wait,
        ..RunOptions::default()
    };
    let mut tried = Vec::new();
    let (chosen, in_band, _) = bisect(candidates.len(), band, |i| {
        let spec = &candidates[i];
        let done = run_all(std::slice::from_ref(spec), &out, &dev, opts, 1, |_, _| {})?;
        let result = match done.into_iter().next() {
            Some(Outcome::Done(r)) | Some(Outcome::Skipped(r)) => r,
            _ => bail!("{}: did not finish", spec.id()),
        };
        let floor = crate::reproduce::spec_floor(spec)?;
        let val = result.val_acc.unwrap_or(floor);
        let position = ((val - floor) / (1.0 - floor).max(1e-12)).clamp(0.0, 1.0);
        eprintln!(
            "{} = {}: val {:.1}% (floor {:.1}%): {:.0}% of the way",
            a.knob,
            a.values[i],
            100.0 * val,
            100.0 * floor,
            100.0 * position
        );
        tried.push(Tried {
            value: a.values[i].clone(),
            run: spec.id(),
            val_acc: val,
            floor,
            position,
        });
        Ok(position)
    })?;
    let cal = Calibration {
        task: a.run.task[0].clone(),
        model: a.run.models[0].clone(),
        knob: a.knob.clone(),
        values: a.values.clone(),
        band,
        tried,
        chosen: chosen.map(|i| a.values[i].clone()),
        in_band,
    };
    let path: PathBuf = out.join("calibration").join(format!(
        "{}-{}-{}.json",
        cal.task,
        cal.model,
        cal.knob.replace('.', "-")
    ));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    crate::io::write_json(&path, &cal)?;
    match (&cal.chosen, in_band) {
        (Some(v), true) => println!(
            "{} = {v}: in the band (written to {})",
            cal.knob,
            path.display()
        ),
        (Some(v), false) => println!(
            "no value in the band; nearest: {} = {v} (written to {})",
            cal.knob,
            path.display()
        ),
        (None, _) => println!("nothing tried (written to {})", path.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_moves_toward_the_band() {
        // Eight candidates, easiest first: positions fall from 1.0 to 0.0.
        let pos = [1.0, 0.95, 0.9, 0.8, 0.6, 0.3, 0.1, 0.0];
        let (chosen, ok, tried) = bisect(8, (0.25, 0.75), |i| Ok(pos[i])).unwrap();
        assert!(ok);
        let c = chosen.unwrap();
        assert!((0.25..=0.75).contains(&pos[c]), "{c}");
        // It tried index 3 (0.8, too easy), then went harder.
        assert_eq!(tried[0], (3, 0.8));
        assert!(tried.len() <= 3);
        // Nothing in the band: the nearest to its middle, flagged.
        let pos = [1.0, 1.0, 0.9, 0.05, 0.0];
        let (chosen, ok, _) = bisect(5, (0.25, 0.75), |i| Ok(pos[i])).unwrap();
        assert!(!ok);
        // Tried 2 (0.9: too easy), then 3 (0.05: too hard); 0.9 is 0.4 from the middle, 0.05 is
        // 0.45 away.
        assert_eq!(chosen, Some(2));
    }
}
