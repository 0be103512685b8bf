//! One writer per run: a run folder is claimed with an OS lock before anything in it is written.

use anyhow::{Context, Result};
use std::path::Path;

/// A run folder claimed by this process: an exclusive OS lock (`flock`) on `<run>/lock`, held
/// until drop. The OS drops it when the process dies, however it dies (kill -9 included), so a
/// claim never outlives its writer and a rerun resumes as usual.
pub struct RunClaim {
    _file: std::fs::File,
}

/// What `train::run_one` (and `run_all`) does when another process holds the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenBusy {
    /// Wait for the other process, then use its result (or resume, if it stopped early).
    #[default]
    Wait,
    /// Return [`Outcome::Busy`] at once (sweeps: the other process is doing that run).
    Skip,
}

/// Claim run folder `dir` (created if missing). `Ok(None)` if it is held and `when` is
/// [`WhenBusy::Skip`].
pub fn claim_run(dir: &Path, when: WhenBusy, quiet: bool) -> Result<Option<RunClaim>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(crate::rundir::LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            if when == WhenBusy::Skip {
                return Ok(None);
            }
            if !quiet {
                eprintln!(
                    "{}: another process is training this run; waiting for it",
                    dir.file_name().unwrap_or_default().to_string_lossy()
                );
            }
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(Some(RunClaim { _file: file }))
}
