//! What a finished run leaves behind (`result.json`), read by the leaderboard, the plots and
//! anyone with the run folder. Written by the training loop's `finish`, never edited afterwards. Also what
//! `harness analyze` writes of a run (`analysis.json`), which the leaderboard reads where present.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a run ended (`"ok"` / `"diverged"` in `result.json`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Trained to its step count and evaluated.
    Ok,
    /// A NaN/inf loss stopped training; no accuracy is reported.
    Diverged,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Ok => "ok",
            RunStatus::Diverged => "diverged",
        })
    }
}

/// What a finished run records (`result.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    pub id: String,
    pub status: RunStatus,
    pub task: String,
    pub level: String,
    pub model: String,
    pub seed: u64,
    pub lr: f64,
    pub params: u64,
    pub budget_flops: f64,
    pub flops_spent: f64,
    pub steps: u64,
    pub tokens_seen: u64,
    pub wall_clock_s: f64,
    pub device: String,
    pub metric: tasks::Metric,
    pub chance: f64,
    pub final_loss: Option<f64>,
    /// Step whose weights were selected on val (early stopping).
    pub best_step: Option<u64>,
    pub val_acc: Option<f64>,
    /// Teacher-forced cross-entropy on val at the selected step: breaks a val-accuracy tie when
    /// learning rates are chosen (absent from results written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The reported number: teacher-forced accuracy at supervised positions (recall tasks) or the
    /// verifier's accuracy on greedy generations (answer tasks).
    pub test_acc: Option<f64>,
    /// Teacher-forced token accuracy on test (all tasks).
    pub test_token_acc: Option<f64>,
    /// Teacher-forced macro accuracy on test (mean per-class accuracy; MAD's default metric).
    pub test_macro_acc: Option<f64>,
    /// Two-way choice accuracy on test, for tasks whose examples choose between two candidates
    /// (ProsQA): which the model ranks higher at the decisive position (chance exactly 1/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_choice_acc: Option<f64>,
    /// For worked solutions (arith with `output=cot`): the fraction of test generations whose
    /// every step is arithmetically valid, whatever their final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_steps_valid: Option<f64>,
    /// LIMe variants: mean |W_l| per (layer, source layer) of the selected weights, rows
    /// normalised to 1 (the paper's Figure 5). Empty for models without a router.
    #[serde(default)]
    pub router_heatmap: Vec<Vec<f64>>,
    /// Test results on the spec's evaluation levels (`--eval-levels`), by level; absent when
    /// none was asked (and in results from before the flag).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval_levels: BTreeMap<String, LevelScore>,
}

/// A run's test on one evaluation level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelScore {
    /// The task's metric on the level's test split (the run's `n_test` first examples).
    pub test_acc: f64,
    /// Padded length of the level's sequences; above the run's `seq_len`, the model read
    /// positions it never trained on (RoPE extrapolation).
    pub seq_len: usize,
    /// Chance accuracy at that level.
    pub chance: f64,
}

/// Where `harness analyze` writes a run's `analysis.json` by default, in the order the
/// leaderboard looks: `RUN/analysis/` (one run), `RESULTS/analysis/<id>/` (over a results folder
/// whose `runs/<id>` is `run_dir`).
pub fn analysis_paths(run_dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = vec![run_dir.join(ANALYSIS_DIR).join(ANALYSIS_FILE)];
    if let Some(results) = run_dir.parent().and_then(Path::parent) {
        out.push(results.join(ANALYSIS_DIR).join(id).join(ANALYSIS_FILE));
    }
    out
}

/// The folder name `harness analyze` writes into, beside `runs/` or inside a run folder.
pub const ANALYSIS_DIR: &str = "analysis";
/// The file name of one run's analysis.
pub const ANALYSIS_FILE: &str = "analysis.json";

/// What `analysis.json` holds (one run).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    pub run: String,
    pub task: String,
    pub level: String,
    pub model: String,
    /// Sequences behind the entropies.
    pub n: usize,
    /// Mean over sequences of the values' matrix entropy, one per layer.
    pub value_entropy: Vec<f64>,
    pub value_entropy_std: Vec<f64>,
    /// The same for the residual stream: the embedding output, then each block's output.
    pub hidden_entropy: Vec<f64>,
    pub hidden_entropy_std: Vec<f64>,
    /// Linear-probe accuracy on the target token, per residual state (as `hidden_entropy`).
    pub probe_acc: Vec<f64>,
    /// Examples fitted / scored by the probes.
    pub probe_examples: (usize, usize),
    /// LIMe's router: mean |W| per layer × source layer (empty for other variants).
    pub router_heatmap: Vec<Vec<f64>>,
    /// Depth-mixing weights of the other variants: per reader (`mixing_rows`), the share of
    /// each source (`mixing_sources`, the longest reader's; the others read a prefix of them) in
    /// mean |weight| — DenseFormer's static α, or the weights computed per token averaged over
    /// the analysed tokens (AttnRes, MUDDFormer, HC, mHC); each row sums to 1; empty where none.
    #[serde(default)]
    pub mixing_heatmap: Vec<Vec<f64>>,
    /// The readers of `mixing_heatmap`: `A2`/`M2` layer 2's attention/MLP input, `B3.q` a
    /// MUDDFormer stream into block 3, `B3` DenseFormer's mix after block 3, `out` the final
    /// norm's input.
    #[serde(default)]
    pub mixing_rows: Vec<String>,
    /// Its sources: `emb` the embedding, `A0`/`M0` sub-layer outputs, `B0` block outputs, `b1`
    /// AttnRes blocks, `s0` residual streams.
    #[serde(default)]
    pub mixing_sources: Vec<String>,
}
