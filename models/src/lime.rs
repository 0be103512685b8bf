//! LIMe (Layer-Integrated Memory, arXiv 2502.09245; reference code corl-team/lime
//! `src/lm/lime.py`): each attention layer mixes the pre-RoPE keys and values of all layers so
//! far through a small learned router. As a diff of [`crate::llama`] it is one [`KvRoute`]: the
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
//! on the router hurts). The router variants share this file's buffer and loop, built through
//! [`crate::lime_family`] (the [`Mix`] trait, router names, init, groups and counts):
//! `lime-dynamic` ([`crate::lime_dynamic`]) and the ablations ([`crate::lime_ablations`]).

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::FlopMode;
use crate::config::Config;
use crate::init::ParamGroup;
pub use crate::lime_family::{build, Mix};
use crate::lime_family::{
    heatmap, identity_block_init, routed_blocks, router_flops, router_group, router_leaf, sq,
};
use crate::llama::{Blocks, Pass};
use crate::ops::{self, Backend};
use crate::variant::{Connection, ExtraFlops, Variant, VariantDef};

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

/// A full (R, S) router (`lime`; also the constant of `lime-avg`).
#[derive(Debug)]
pub struct Full(pub Tensor);

impl Mix for Full {
    fn mix(&self, all: &Tensor, _x: &Tensor, backend: Backend) -> Result<Tensor> {
        let (s, b, t, kv) = all.dims4()?;
        if self.0.rank() == 3 {
            // Packed (crate::pack): W (P,R,S), rows b run-major; one batched product per run.
            let (p, r, _) = self.0.dims3()?;
            let per_run = all.reshape((s, p, (b / p) * t * kv))?.transpose(0, 1)?; // (P,S,N)
            let routed = self.0.matmul(&per_run.contiguous()?)?; // (P,R,N)
            return routed.transpose(0, 1)?.reshape((r, b, t, kv)); // (R,P·B,T,2d_h)
        }
        let r = self.0.dim(0)?;
        let routed = ops::depth_mix(backend, &self.0, &all.reshape((s, b * t * kv))?)?; // (R,N)
        routed.reshape((r, b, t, kv))
    }
    fn dense(&self) -> Result<Tensor> {
        Ok(self.0.clone())
    }
    fn full(&self) -> Option<&Tensor> {
        (self.0.rank() == 2).then_some(&self.0) // packed routers take the composed path
    }
}

/// The LIMe connection: llama's residual loop, each layer's k/v routed through its [`Mix`].
#[derive(Debug)]
pub struct LimeConnection {
    /// `None` at layer 0 (it only appends).
    pub(crate) mixes: Vec<Option<Box<dyn Mix>>>,
    pub(crate) n_kv_heads: usize,
    pub(crate) backend: Backend,
    /// Every router is a full matrix and the backend is fused: in-place stacks.
    pub(crate) stacked: bool,
}

/// The pre-RoPE K|V of the layers so far in one forward pass.
#[derive(Default)]
struct Buffer {
    /// (S,B,T,2d_h), grown by concatenation (the reference path).
    kv: Option<Tensor>,
    /// The fused backend's in-place key and value stacks.
    stacks: Option<crate::fused::KvStacks>,
}

impl LimeConnection {
    /// Layer l: appends k, v (B,T,R,d_h) to the buffer, returns the routed (K_l, V_l), each
    /// (B,R,T,d_h), still without RoPE.
    fn route(
        &self,
        l: usize,
        k: Tensor,
        v: Tensor,
        x: &Tensor,
        buf: &mut Buffer,
    ) -> Result<(Tensor, Tensor)> {
        let mix = self.mixes[l].as_deref();
        if self.stacked {
            let rows = self.mixes.len() * self.n_kv_heads;
            return crate::fused::KvStacks::route(
                &mut buf.stacks,
                rows,
                mix.and_then(|m| m.full()),
                &k,
                &v,
            );
        }
        let dh = k.dim(D::Minus1)?;
        let kv = Tensor::cat(&[k, v], D::Minus1)?
            .permute((2, 0, 1, 3))?
            .contiguous()?; // (R,B,T,2d_h)
        let all = match buf.kv.take() {
            None => kv.clone(),
            Some(prev) => Tensor::cat(&[&prev, &kv], 0)?, // (S,B,T,2d_h), S = (l+1)·R
        };
        buf.kv = Some(all.clone());
        let routed = match mix {
            None => kv,                               // layer 0: unrouted
            Some(m) => m.mix(&all, x, self.backend)?, // (R,B,T,2d_h)
        };
        let routed = routed.transpose(0, 1)?; // (B,R,T,2d_h)
        Ok((
            routed.narrow(D::Minus1, 0, dh)?,
            routed.narrow(D::Minus1, dh, dh)?,
        ))
    }
}

impl Connection for LimeConnection {
    fn run(&self, net: &Blocks, mut x: Tensor, pass: &mut Pass) -> Result<Tensor> {
        let mut buf = Buffer::default();
        for l in 0..net.len() {
            let input = x.clone(); // the block input x_t (lime-dynamic's router reads it)
            let mut route = |k, v| self.route(l, k, v, &input, &mut buf); // ← the diff to llama
            x = net.block(l, &x, pass, &mut route)?; // (B,T,D)
            pass.record(&x);
        }
        Ok(x)
    }

    fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        self.mixes.iter().flatten().map(|m| m.dense()).collect()
    }

    fn heatmap(&self, cfg: &Config) -> Result<Vec<Vec<f64>>> {
        heatmap(&self.mixing_weights()?, cfg.n_kv_heads)
    }
}
