//! Model configuration: the serde boundary between the harness and the model code.

use serde::{Deserialize, Serialize};

/// Which depth-connection scheme a model uses. Everything else is the shared LLaMA-style skeleton.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Baseline: pre-norm decoder, RoPE attention, SwiGLU MLP.
    Llama,
    /// LIMe, static router over the pre-RoPE K/V buffer of all earlier layers.
    Lime,
    /// LIMe with a per-token correction of the router (our extension; starts as `Lime`).
    LimeDynamic,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Llama, Variant::Lime, Variant::LimeDynamic];
    pub fn name(self) -> &'static str {
        match self {
            Variant::Llama => "llama",
            Variant::Lime => "lime",
            Variant::LimeDynamic => "lime-dynamic",
        }
    }
    pub fn from_name(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// Decoder hyper-parameters. `d_model` must be divisible by `n_heads`, and `n_heads` by `n_kv_heads`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub variant: Variant,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when `< n_heads`).
    pub n_kv_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: usize,
    /// Share the embedding matrix with the LM head.
    pub tie_embeddings: bool,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}
