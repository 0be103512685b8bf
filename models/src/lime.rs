//! LIMe (Layer-Integrated Memory, arXiv 2502.09245; reference code corl-team/lime
//! `src/lm/lime.py`): each attention layer mixes the pre-RoPE keys and values of all layers so
//! far through a small learned router. As a diff of llama ([`crate::llama`]) it is one [`KvRoute`]: the
//! blocks, norms, projections and RoPE are llama's.
//!
//! Layer l computes its per-kv-head keys k_l and values v_l as in llama and appends them (before
//! RoPE) to a buffer of all layers so far: S = (l+1)·R rows, row `j·R + r` = (source layer j, kv
//! head r). For l ≥ 1 the router W_l (R × S) mixes the buffer, shared by keys and values, with no
//! softmax:
//!
//! ```text
//! K_l = W_l · K_buf,   V_l = W_l · V_buf          (per token and channel)
//! ```
//!
//! RoPE is applied to the routed keys afterwards; queries are not routed; layer 0 only appends.
//! With W_l = [0 … 0 | I] the model is exactly llama with the same weights (tested).
//!
//! **Representation.** The buffer is source-major, `(S, B, T, 2·d_h)`, keys and values
//! concatenated on the last dim, so routing a layer is one product `(R, S) @ (S, B·T·2·d_h)`.
//! With the fused backend and a full (R, S) router the buffer is instead a pair of in-place
//! stacks ([`crate::fused::KvStacks`]: no O(L²) concatenation; same numbers, tested).
//!
//! | name                        | shape          | init                                              |
//! |-----------------------------|----------------|---------------------------------------------------|
//! | `layers.{l}.attn.router.w`  | (R, (l+1)·R)   | U(−b, b), b = sqrt(3/((l+1)·R)); last R×R block = I |
//!
//! Extra parameters R²·(L(L+1)/2 − 1); router FLOPs 2·T·2d_h·R²·(L(L+1)/2 − 1) per sequence
//! (causal mode). Optimizer group [`ParamGroup::Router`]: lr × 10, no weight decay (the paper: decay
//! on the router hurts). The buffer, the loop and the full router live in [`crate::lime_family`]
//! (with the [`Mix`] trait, router names, init, groups and counts), shared with `lime-dynamic`
//! ([`crate::lime_dynamic`]) and the ablations ([`crate::lime_ablations`]).

use std::sync::Arc;

use candle_core::{Result, Shape};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::FlopMode;
use crate::init::ParamGroup;
pub use crate::lime_family::{build, Full, LimeConnection, Mix};
use crate::lime_family::{
    identity_block_init, routed_blocks, router_flops, router_group, router_leaf, sq,
};
use crate::ops::Backend;
use crate::variant::{Config, Connection, ExtraFlops, Variant, VariantDef};

/// `lime`: the paper's static router.
pub struct Lime;

impl Variant {
    pub const LIME: Variant = Variant::new(&Lime);
}

impl VariantDef for Lime {
    fn role(&self) -> crate::variant::Role {
        crate::variant::Role::Lime
    }
    fn name(&self) -> &'static str {
        "lime"
    }
    fn summary(&self) -> &'static str {
        "LIMe: static router over the pre-RoPE K/V of all earlier layers"
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        let r = cfg.n_kv_heads;
        build(cfg, vb, backend, |l, vb| {
            Ok(Box::new(Full(vb.get((r, (l + 1) * r), "w")?)))
        })
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        router_leaf(name, "w").then(|| identity_block_init(shape, rng))
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        router_group(name)
    }
    fn packable(&self) -> bool {
        true // `Full` mixes per run
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        (routed_blocks(cfg.n_layers) * sq(cfg.n_kv_heads)) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let macs = routed_blocks(cfg.n_layers) * sq(cfg.n_kv_heads);
        router_flops(cfg, seq_len, mode, macs)
    }
}
