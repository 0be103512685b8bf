//! lime-bench workspace integration tests: one binary, one module per area.
//!
//! Snapshots live in `golden/` (see [`golden`]); under `CI=true` a missing snapshot fails.

mod analyze;
mod cli;
mod device;
mod export_formats;
mod html;
mod layering;
mod leaderboard;
mod models_accounting;
mod models_correctness;
mod models_fused;
mod models_pack;
mod models_rivals;
mod models_rivals2025;
mod models_rivals2026;
mod models_variant;
mod numerics;
mod pack;
mod plots;
mod reproduce;
mod runs;
mod suite;
mod task_contract;
mod tasks_common;
mod tasks_probes;
mod tasks_prosqa;

/// insta settings that put named snapshots in `<repo>/golden/`.
pub fn golden() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../golden"));
    s.set_prepend_module_to_snapshot(false);
    s
}
