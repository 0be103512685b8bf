//! Model configuration: the serde boundary between the harness and the model code. The variant
//! is serialised by name ([`Variant`]).

use serde::{Deserialize, Serialize};

pub use crate::variant::Variant;

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
    /// Block AttnRes (`attnres-block`): decoder layers per block, S ≥ 1. Read by that variant
    /// only; left out of the serialised config at its default, so configs, run specs and run
    /// ids written before the key existed are unchanged.
    #[serde(
        default = "default_attnres_block",
        skip_serializing_if = "is_default_attnres_block"
    )]
    pub attnres_block: usize,
}

/// Default of [`Config::attnres_block`]: 2 layers per block (8 blocks at the 16-layer paper-1b
/// shape, the block count the AttnRes paper recommends).
pub const DEFAULT_ATTNRES_BLOCK: usize = 2;

fn default_attnres_block() -> usize {
    DEFAULT_ATTNRES_BLOCK
}

fn is_default_attnres_block(s: &usize) -> bool {
    *s == DEFAULT_ATTNRES_BLOCK
}

impl Config {
    /// The common shape: multi-head attention (as many kv heads as heads), SwiGLU width
    /// 4·d_model, untied LM head, RoPE θ 10⁴, RMSNorm ε 10⁻⁵. Adjust with the `with_*` methods
    /// or struct update syntax.
    pub fn mha(
        variant: Variant,
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
    ) -> Self {
        Self {
            variant,
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            d_ff: 4 * d_model,
            tie_embeddings: false,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            attnres_block: DEFAULT_ATTNRES_BLOCK,
        }
    }

    /// Grouped-query attention with `n` kv heads.
    pub fn with_kv_heads(mut self, n: usize) -> Self {
        self.n_kv_heads = n;
        self
    }

    /// SwiGLU hidden width `n`.
    pub fn with_d_ff(mut self, n: usize) -> Self {
        self.d_ff = n;
        self
    }

    /// The same config for another variant.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}
