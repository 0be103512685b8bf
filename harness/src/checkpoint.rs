//! A run's checkpoint folder `ckpt/`: weights, optimizer moments, the best-on-val weights and the
//! trainer state, replaced atomically (see [`save_checkpoint`]) so that a kill at any moment
//! leaves a checkpoint to resume from.

use crate::io::{read_json, write_atomic, write_json};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Trainer state saved with each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainState {
    pub step: u64,
    pub best_val: Option<f64>,
    /// Val loss at the best step (absent from checkpoints written before it was recorded).
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub elapsed_s: f64,
    pub last_loss: Option<f64>,
}

pub(crate) fn save_tensors(path: &Path, map: &HashMap<String, Tensor>) -> Result<()> {
    let cpu: HashMap<String, Tensor> = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, v)| (k.clone(), v)), None)
        .context("serialize safetensors")?;
    write_atomic(path, &bytes)
}

pub(crate) fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Write a checkpoint: into `ckpt-new-<pid>/` (a folder of this process's own), then swap it in
/// for `ckpt/`. `state.json` is written last and marks a folder complete, so a kill at any point
/// leaves either `ckpt/` or a complete `ckpt-new-<pid>/` (found by [`find_checkpoint`]).
pub(crate) fn save_checkpoint(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
    best: &Option<HashMap<String, Tensor>>,
    st: &TrainState,
) -> Result<()> {
    let new = dir.join(format!("{CKPT_NEW}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&new);
    std::fs::create_dir_all(&new).with_context(|| format!("cannot create {}", new.display()))?;
    save_tensors(&new.join("weights.safetensors"), weights)?;
    save_tensors(&new.join("optim.safetensors"), optim)?;
    if let Some(b) = best {
        save_tensors(&new.join(crate::rundir::BEST), b)?;
    }
    write_json(&new.join("state.json"), st)?; // last: marks the folder complete
    let cur = dir.join(crate::rundir::CKPT);
    let _ = std::fs::remove_dir_all(&cur);
    std::fs::rename(&new, &cur)
        .with_context(|| format!("cannot move checkpoint into {}", cur.display()))?;
    Ok(())
}

/// Prefix of the per-process temporary checkpoint folders.
const CKPT_NEW: &str = "ckpt-new-";

/// The checkpoint to resume from: `ckpt/`, else the newest complete temporary folder (a process
/// killed between removing `ckpt/` and renaming its new one). Called under the run's lock.
pub(crate) fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    let cur = dir.join(crate::rundir::CKPT);
    if cur.join("state.json").is_file() {
        return Some(cur);
    }
    let step_of = |p: &Path| {
        read_json::<TrainState>(&p.join("state.json"))
            .ok()
            .map(|s| s.step)
    };
    temp_checkpoints(dir)
        .into_iter()
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

/// Temporary checkpoint folders left in `dir` (by this or a killed process).
pub(crate) fn temp_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(CKPT_NEW))
        .map(|e| e.path())
        .collect()
}
