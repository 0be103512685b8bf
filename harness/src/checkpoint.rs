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
/// for `ckpt/` by renames only (the old `ckpt/` is renamed to `ckpt-old-<pid>/` before it is
/// deleted, so no kill leaves a half-deleted `ckpt/`). `state.json` is written last and marks a
/// folder complete, so a kill at any point leaves either a complete `ckpt/` or a complete
/// `ckpt-new-<pid>/` (found by [`find_checkpoint`]).
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
    let old = dir.join(format!("{CKPT_OLD}{}", std::process::id()));
    if cur.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&cur, &old)
            .with_context(|| format!("cannot move {} aside", cur.display()))?;
    }
    std::fs::rename(&new, &cur)
        .with_context(|| format!("cannot move checkpoint into {}", cur.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Prefix of the per-process temporary checkpoint folders.
const CKPT_NEW: &str = "ckpt-new-";
/// Prefix of a replaced checkpoint on its way out (never resumed from).
const CKPT_OLD: &str = "ckpt-old-";

/// Find the checkpoint to resume from ([`find_checkpoint`]) and make it `ckpt/`: a complete
/// temporary folder replaces whatever incomplete `ckpt/` a killed process left (one killed while
/// deleting it, by an older build). Called under the run's lock.
pub(crate) fn adopt_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let Some(found) = find_checkpoint(dir) else {
        return Ok(None);
    };
    let cur = dir.join(crate::rundir::CKPT);
    if found != cur {
        if cur.exists() {
            std::fs::remove_dir_all(&cur)
                .with_context(|| format!("cannot remove the incomplete {}", cur.display()))?;
        }
        std::fs::rename(&found, &cur)
            .with_context(|| format!("cannot move {} to ckpt/", found.display()))?;
    }
    Ok(Some(cur))
}

/// The checkpoint to resume from: `ckpt/`, else the newest complete temporary folder (a process
/// killed between removing `ckpt/` and renaming its new one). Called under the run's lock.
fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
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
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(CKPT_NEW))
        })
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

/// Temporary checkpoint folders (`ckpt-new-*`, `ckpt-old-*`) left in `dir` (by this or a killed
/// process).
pub(crate) fn temp_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(CKPT_NEW) || name.starts_with(CKPT_OLD)
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            best_val: None,
            best_val_loss: None,
            best_step: None,
            elapsed_s: 0.0,
            last_loss: None,
        }
    }

    fn save(dir: &Path, step: u64) {
        let w = HashMap::from([(
            "w".to_string(),
            Tensor::new(&[step as f32], &Device::Cpu).unwrap(),
        )]);
        save_checkpoint(dir, &w, &w, &None, &state(step)).unwrap();
    }

    fn step_of(ck: &Path) -> u64 {
        read_json::<TrainState>(&ck.join("state.json"))
            .unwrap()
            .step
    }

    /// Saving twice leaves one complete `ckpt/` and no temporary folder.
    #[test]
    fn save_replaces_the_checkpoint_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1);
        save(dir.path(), 2);
        assert_eq!(step_of(&dir.path().join(crate::rundir::CKPT)), 2);
        assert!(temp_checkpoints(dir.path()).is_empty());
    }

    /// Each state a kill can leave is resumed from its newest complete checkpoint, including a
    /// `ckpt/` half deleted by an older build (the Slurm requeue CI failure: "cannot move
    /// ckpt-new-… to ckpt/: Directory not empty").
    #[test]
    fn adopt_resumes_from_every_state_a_kill_can_leave() {
        let cur = |d: &Path| d.join(crate::rundir::CKPT);
        // Killed after moving ckpt/ aside, before moving the new folder in.
        let d = tempfile::tempdir().unwrap();
        save(d.path(), 1);
        std::fs::rename(cur(d.path()), d.path().join("ckpt-old-7")).unwrap();
        save(d.path(), 2);
        std::fs::rename(cur(d.path()), d.path().join("ckpt-new-7")).unwrap();
        std::fs::rename(d.path().join("ckpt-old-7"), d.path().join("ckpt-old-8")).unwrap();
        let ck = adopt_checkpoint(d.path()).unwrap().unwrap();
        assert_eq!((ck.clone(), step_of(&ck)), (cur(d.path()), 2));

        // A half-deleted ckpt/ (weights left, state.json gone) beside a complete new folder.
        let d = tempfile::tempdir().unwrap();
        save(d.path(), 3);
        std::fs::rename(cur(d.path()), d.path().join("ckpt-new-9")).unwrap();
        std::fs::create_dir_all(cur(d.path())).unwrap();
        std::fs::write(cur(d.path()).join("weights.safetensors"), b"partial").unwrap();
        let ck = adopt_checkpoint(d.path()).unwrap().unwrap();
        assert_eq!(step_of(&ck), 3);
        assert!(!d.path().join("ckpt-new-9").exists());

        // An incomplete new folder (no state.json) is never resumed from.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ckpt-new-5")).unwrap();
        assert!(adopt_checkpoint(d.path()).unwrap().is_none());
        // A replaced checkpoint on its way out is never resumed from either.
        save(d.path(), 4);
        std::fs::rename(cur(d.path()), d.path().join("ckpt-old-5")).unwrap();
        assert!(adopt_checkpoint(d.path()).unwrap().is_none());
    }
}
