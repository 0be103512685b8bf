//! A run folder, named once: `<results>/runs/<id>/` holds `config.json` (the [`RunSpec`]),
//! `metrics.jsonl` (one [`MetricLine`] per log or evaluation), `result.json` (the [`RunResult`],
//! written last), `best.safetensors` (the selected weights), `ckpt/` (the resumable state while
//! training) and `lock` (the one writer's `flock`). Every command finds and reads runs here;
//! nothing else spells these names.

use crate::io::read_json;
use crate::records::RunResult;
use crate::spec::RunSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The folder of a results directory that holds its run folders.
pub const RUNS: &str = "runs";
/// The run folders' file names.
pub const CONFIG: &str = "config.json";
pub const RESULT: &str = "result.json";
pub const METRICS: &str = "metrics.jsonl";
pub const BEST: &str = "best.safetensors";
pub const CKPT: &str = "ckpt";
pub const LOCK: &str = "lock";

/// One line of `metrics.jsonl`: a training log (step, FLOPs, loss, lr, throughput) or an
/// evaluation (step, val accuracy and loss). Written by the training loop, read by the plots,
/// the FLOPs-to-τ evidence and anyone with the folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricLine {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

/// One run's folder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The folder of run `id` under a results directory.
    pub fn of(results: &Path, id: &str) -> RunDir {
        RunDir(results.join(RUNS).join(id))
    }

    /// A run folder given by its own path (`harness rerun <dir>`, `export-hf <dir>`).
    pub fn at(path: &Path) -> RunDir {
        RunDir(path.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join(CONFIG)
    }
    pub fn result(&self) -> PathBuf {
        self.0.join(RESULT)
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join(METRICS)
    }
    pub fn best(&self) -> PathBuf {
        self.0.join(BEST)
    }
    pub fn ckpt(&self) -> PathBuf {
        self.0.join(CKPT)
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join(LOCK)
    }

    /// Whether the run finished (its `result.json` is written last, atomically).
    pub fn finished(&self) -> bool {
        self.result().is_file()
    }

    pub fn read_spec(&self) -> Result<RunSpec> {
        read_json(&self.config())
    }

    pub fn read_result(&self) -> Result<RunResult> {
        read_json(&self.result())
    }

    /// The metric lines, in order; a missing file reads as none, a line that does not parse is
    /// an error naming the file and line.
    pub fn read_metrics(&self) -> Result<Vec<MetricLine>> {
        let path = self.metrics();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!("{} line {}: not a metric line", path.display(), i + 1)
                })
            })
            .collect()
    }
}

/// The run folders of a results directory, sorted by name; none when it has no `runs/`.
pub fn list(results: &Path) -> Result<Vec<RunDir>> {
    let runs = results.join(RUNS);
    if !runs.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<RunDir> = std::fs::read_dir(&runs)
        .with_context(|| format!("cannot read {}", runs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(RunDir)
        .collect();
    out.sort();
    Ok(out)
}

/// Whether a results directory has a `runs/` folder.
pub fn has_runs(results: &Path) -> bool {
    results.join(RUNS).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metric line round-trips, absent fields stay absent in the file, and a line with an
    /// unknown key is refused with the file and line named.
    #[test]
    fn metric_lines_round_trip_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::of(dir.path(), "x");
        std::fs::create_dir_all(run.path()).unwrap();
        let a = MetricLine {
            step: 3,
            loss: Some(1.5),
            ..MetricLine::default()
        };
        let b = MetricLine {
            step: 4,
            val_acc: Some(0.25),
            val_loss: Some(2.0),
            ..MetricLine::default()
        };
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(text.lines().next().unwrap(), r#"{"step":3,"loss":1.5}"#);
        std::fs::write(run.metrics(), &text).unwrap();
        assert_eq!(run.read_metrics().unwrap(), vec![a, b]);
        std::fs::write(run.metrics(), "{\"step\":1,\"acc\":2}\n").unwrap();
        let err = run.read_metrics().unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(RunDir::of(dir.path(), "none")
            .read_metrics()
            .unwrap()
            .is_empty());
        assert_eq!(list(dir.path()).unwrap(), vec![run]);
    }
}
