//! The flags several commands share, each defined once with one meaning (a command flattens the
//! struct into its own arguments):
//!
//! - `--device` ([`DeviceFlag`]): where the command computes — cpu (the default), cuda, cuda:N or
//!   auto. (`check-device` alone defaults to `auto`, checking a GPU being its purpose; the main
//!   job's `--device` is a run setting of `Overrides`, so that plans can set it, with the same
//!   values and default.)
//! - `--quiet` ([`Progress`]): no progress bars.
//!
//! And one naming rule for paths, which every command keeps: `--results` is a folder of runs
//! (`<results>/runs/<id>/`) that the command reads (and, for `reproduce`, trains into); `--out`
//! is what the command writes — the main job's and `rerun`'s runs folder, `analyze`'s and
//! `export-hf`'s output folder, `gen`'s file, `reproduce`'s report — and its help says which.

use anyhow::Result;
use candle_core::Device;

/// `--device`, shared by the commands that train or evaluate.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceFlag {
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceFlag {
    /// The device named (a clear error where it cannot be opened).
    pub fn open(&self) -> Result<Device> {
        crate::device::device(&self.device)
    }
}

/// `--quiet`, shared by the commands that train.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct Progress {
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}
