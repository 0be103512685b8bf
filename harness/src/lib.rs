//! # harness — the lime-bench command line
//!
//! Raw CLI arguments ([`cli`]) are resolved into validated [`spec::RunSpec`]s — one per
//! (task, level, model, seed, lr) cell, with the step count derived from the FLOP budget there —
//! before anything runs. [`train`] executes one spec into a run directory keyed by the hash of that
//! spec (config.json first, metrics.jsonl while training, checkpoints, an atomic result.json last),
//! so a finished run is skipped and a killed one resumes bit-for-bit; one process writes a run at a
//! time (an OS lock on the folder). [`leaderboard`] only reads run directories, which is also how
//! sweep shards merge; [`job`] ties the main job together. Imports flow one way (ARCHITECTURE.md).
//! This crate is the only one that does I/O.

pub mod cli;
pub mod gen;
pub mod io;

/// An error chain on one line (`outer: inner: root`), for the binary's stderr. A candle error
/// is shown without the backtrace candle attaches to it under `RUST_BACKTRACE`.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(ce) => {
                let mut ce = ce;
                while let candle_core::Error::WithBacktrace { inner, .. } = ce {
                    ce = inner;
                }
                ce.to_string()
            }
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}
pub mod aggregate;
pub mod analyze;
pub mod bench;
pub mod calibrate;
pub mod check_device;
pub mod checkpoint;
pub mod claim;
pub mod claims;
pub mod device;
pub mod eval;
pub mod export_hf;
pub mod flags;
pub mod flops_cmd;
pub mod html;
pub mod job;
pub mod leaderboard;
pub mod optim;
pub mod overrides;
pub mod plots;
pub mod presets;
pub mod records;
pub mod report;
pub mod reproduce;
pub mod rerun;
pub mod rundir;
pub mod spec;
pub mod stats;
pub mod suite;
pub mod sweep;
pub mod train;
pub mod verdict;

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_drops_candle_backtraces() {
        let inner = candle_core::Error::Msg("config: d_model 33 not divisible".into());
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = anyhow::Error::from(traced).context("bad model");
        assert_eq!(
            super::one_line(&e),
            "bad model: config: d_model 33 not divisible"
        );
    }
}
