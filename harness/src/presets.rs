//! The embedded default experiment of each task: what `harness --task NAME` runs with no other flag.
//! Every field can be overridden from the command line; the numbers the README quotes were measured
//! with these presets.

use crate::optim::{OptimSpec, Schedule};
use anyhow::Result;

#[derive(Clone, Debug)]
pub struct Preset {
    pub level: String,
    /// Task knob overrides applied after the level.
    pub task_sets: Vec<(String, String)>,
    pub models: Vec<String>,
    /// Model shape (`variant` and `vocab_size` are filled in per run).
    pub model: models::Config,
    pub batch_size: usize,
    pub optim: OptimSpec,
    pub budget_flops: f64,
    pub train_pool: u64,
    pub n_val: u64,
    pub n_test: u64,
    /// Validation evaluations (and checkpoints) per run.
    pub evals_per_run: u64,
}

fn shape(d_model: usize, n_layers: usize, n_heads: usize) -> models::Config {
    // vocab_size 0: each task sets its own.
    models::Config::mha(models::Variant::LLAMA, 0, d_model, n_layers, n_heads)
}

fn sets(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn preset(task: &str) -> Result<Preset> {
    let base = |level: &str, model: models::Config| Preset {
        level: level.into(),
        task_sets: vec![],
        models: vec!["llama".into(), "lime".into()],
        model,
        batch_size: 64,
        optim: OptimSpec::default(),
        budget_flops: 1e13,
        train_pool: 0,
        n_val: 512,
        n_test: 1024,
        evals_per_run: 10,
    };
    Ok(match task {
        // Zoology-style MQAR at a setting attention learns (T=64, 4 kv pairs, small vocab so the LM
        // head does not dominate), 2 layers, d=64, 2 heads.
        "mqar" => Preset {
            task_sets: sets(&[("vocab_size", "256"), ("seq_len", "64")]),
            batch_size: 128,
            budget_flops: 6.0e12,
            ..base("kv4", shape(64, 2, 2))
        },
        // The LIMe paper's arithmetic models: 4 layers, 4 heads, d=32, linear decay.
        "arith" => Preset {
            optim: OptimSpec {
                schedule: Schedule::Linear,
                ..OptimSpec::default()
            },
            budget_flops: 1.0e13,
            ..base("ops4", shape(32, 4, 4))
        },
        "prosqa" => Preset {
            budget_flops: 5.0e12,
            ..base("mixed", shape(64, 4, 4))
        },
        // Depth is the point of hop-k: 4 layers reach k = 4 in principle (log2 k + 1 suffices).
        "hopk" => Preset {
            budget_flops: 5.0e12,
            ..base("k4", shape(64, 4, 4))
        },
        "vartrack" => Preset {
            budget_flops: 5.0e12,
            ..base("hops2", shape(64, 4, 4))
        },
        "listops" => Preset {
            budget_flops: 5.0e12,
            ..base("depth2", shape(64, 4, 4))
        },
        // MAD's synthetic suite: small models, MAD's data sizes (a fixed pool of train sequences).
        "recall" | "noisy-recall" | "fuzzy-recall" => {
            let level = if task == "noisy-recall" {
                "f20"
            } else {
                "base"
            };
            Preset {
                train_pool: 12_800,
                budget_flops: 3.0e12,
                ..base(level, shape(64, 2, 2))
            }
        }
        "selective-copy" => Preset {
            batch_size: 32,
            budget_flops: 3.0e12,
            ..base("copy16", shape(64, 2, 4))
        },
        "memorize" => Preset {
            train_pool: 256,
            budget_flops: 3.0e12,
            ..base("v256", shape(128, 2, 2))
        },
        // The depth probes: 4 layers (the depth claim's middle shape), 2e12 FLOPs so the default
        // experiment of each trains in under 3 minutes on 2 cores.
        "counting" | "parity" | "s5" | "reachability" => Preset {
            budget_flops: 2.0e12,
            ..base(
                match task {
                    "counting" => "n32",
                    "parity" => "n16",
                    "s5" => "n8",
                    _ => "d2",
                },
                shape(64, 4, 4),
            )
        },
        other => anyhow::bail!(
            "unknown task `{other}` (known tasks: {})",
            tasks::task_names().join(", ")
        ),
    })
}
