//! What a finished run leaves behind (`result.json`), read by the leaderboard, the plots and
//! anyone with the run folder. Written by `train::run_one`, never edited afterwards.

use serde::{Deserialize, Serialize};

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
    /// The reported number: teacher-forced accuracy at supervised positions (recall tasks) or the
    /// verifier's accuracy on greedy generations (answer tasks).
    pub test_acc: Option<f64>,
    /// Teacher-forced token accuracy on test (all tasks).
    pub test_token_acc: Option<f64>,
    /// Teacher-forced macro accuracy on test (mean per-class accuracy; MAD's default metric).
    pub test_macro_acc: Option<f64>,
    /// LIMe variants: mean |W_l| per (layer, source layer) of the selected weights, rows
    /// normalised to 1 (the paper's Figure 5). Empty for models without a router.
    #[serde(default)]
    pub router_heatmap: Vec<Vec<f64>>,
}
