//! LIMe (Layer-Integrated Memory, arXiv 2502.09245): the router that mixes the pre-RoPE keys and
//! values of all layers so far. This is the whole diff to [`crate::llama`]; the attention layer
//! calls [`LimeRouter::route`] in its block marked `LIMe routed path` and is otherwise unchanged.
//!
//! ## Static router (`lime`, the paper's method)
//! Layer l computes its per-kv-head keys k_l and values v_l from its own input as in llama, and
//! appends them (before RoPE) to a buffer of all layers so far: S = (l+1)·R rows, row
//! `j·R + r` = (source layer j, kv head r). For l ≥ 1 the router W_l (R × S) mixes the buffer,
//! shared by keys and values, with no softmax:
//!
//! ```text
//! K_l = W_l · K_buf,   V_l = W_l · V_buf          (per token and channel)
//! ```
//!
//! RoPE is applied to the routed keys afterwards; queries are not routed; layer 0 only appends.
//! With W_l = [0 … 0 | I] the model is exactly llama with the same weights.
//!
//! **Representation.** The buffer is stored source-major, `(S, B, T, 2·d_h)`, with keys and values
//! concatenated on the last dim. Routing a layer is then a single GEMM over the whole buffer:
//! `(R, S) @ (S, B·T·2·d_h)`, and appending a layer is a contiguous concatenation on dim 0.
//!
//! ## Dynamic router (`lime-dynamic`, **our extension**, not from the paper)
//! A per-token correction of the static router:
//!
//! ```text
//! W_l(x_t) = W_l + reshape_{R×S}(U_l · RMSNorm(x_t)),   U_l ∈ R^{(R·S) × D}, U_l = 0 at init
//! ```
//!
//! RMSNorm(x_t) is a *parameter-free* RMSNorm (no gain, eps = `norm_eps`) of the block's input
//! x_t (the residual stream before `attn_norm`), so U_l is the only extra parameter
//! (this matches `accounting::LIME_DYNAMIC_NORM_HAS_WEIGHT = false`); row `r·S + s` of U_l
//! produces entry (r, s). At init the model is
//! exactly static LIMe. (The paper's v1 "dynamic" variant instead routed hidden states with a
//! softmax over layers; this is different.) The per-token part is a batched matmul
//! `(B,T,R,S) @ (B,T,S,2·d_h)`.
//!
//! ## Parameters (l ≥ 1 only)
//! | name                        | shape          | init                                              |
//! |-----------------------------|----------------|---------------------------------------------------|
//! | `layers.{l}.attn.router.w`  | (R, (l+1)·R)   | U(−b, b), b = sqrt(3/((l+1)·R)); last R×R block = I |
//! | `layers.{l}.attn.router.u`  | (R·(l+1)·R, D) | zeros (lime-dynamic only)                         |
//!
//! Extra parameters: static R²·(L(L+1)/2 − 1); dynamic adds R²·D·(L(L+1)/2 − 1).
//! Optimizer group [`crate::ParamGroup::Router`]: lr ×10, no weight decay.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::config::{Config, Variant};

/// The pre-RoPE K|V of all layers processed so far in one forward pass, `(S, B, T, 2·d_h)`.
#[derive(Clone, Debug, Default)]
pub struct LimeBuffer {
    kv: Option<Tensor>,
}

impl LimeBuffer {
    /// The buffer (S, B, T, 2·d_h), keys in `[.., :d_h]`, values in `[.., d_h:]`.
    pub fn tensor(&self) -> Option<&Tensor> {
        self.kv.as_ref()
    }
}

/// The router of one layer.
#[derive(Clone, Debug)]
pub struct LimeRouter {
    layer: usize,
    /// W_l (R, (l+1)·R); `None` for layer 0.
    w: Option<Tensor>,
    /// U_l as a linear map D → R·(l+1)·R; lime-dynamic, l ≥ 1.
    u: Option<Linear>,
    norm_eps: f64,
}

impl LimeRouter {
    pub fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let (r, s) = (cfg.n_kv_heads, (layer + 1) * cfg.n_kv_heads);
        let w = if layer == 0 {
            None
        } else {
            Some(vb.get((r, s), "w")?)
        };
        let u = match cfg.variant {
            Variant::LimeDynamic if layer > 0 => {
                Some(Linear::new(vb.get((r * s, cfg.d_model), "u")?, None))
            }
            _ => None,
        };
        Ok(Self {
            layer,
            w,
            u,
            norm_eps: cfg.norm_eps,
        })
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The static router W_l, (R, (l+1)·R); `None` for layer 0.
    pub fn weight(&self) -> Option<&Tensor> {
        self.w.as_ref()
    }

    /// The dynamic router U_l, (R·(l+1)·R, D); `None` unless lime-dynamic and l ≥ 1.
    pub fn dynamic_weight(&self) -> Option<&Tensor> {
        self.u.as_ref().map(|u| u.weight())
    }

    /// Appends this layer's k, v (B,T,R,d_h) to `buf` and returns the routed (K_l, V_l), each
    /// (B,R,T,d_h), still without RoPE. `x` (B,T,D) is the block input x_t (dynamic router only).
    pub fn route(
        &self,
        k: &Tensor,
        v: &Tensor,
        x: &Tensor,
        buf: &mut LimeBuffer,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, r, dh) = k.dims4()?;
        let kv = Tensor::cat(&[k, v], D::Minus1)?; // (B,T,R,2d_h)
        let kv = kv.permute((2, 0, 1, 3))?.contiguous()?; // (R,B,T,2d_h)
        let all = match buf.kv.take() {
            None => kv.clone(),
            Some(prev) => Tensor::cat(&[&prev, &kv], 0)?, // (S,B,T,2d_h), S = (l+1)·R
        };
        buf.kv = Some(all.clone());
        let s = all.dim(0)?;
        let routed = match &self.w {
            None => kv, // layer 0: unrouted, (R,B,T,2d_h)
            Some(w) => {
                // One GEMM over the buffer: (R,S) @ (S, B·T·2d_h).
                let flat = all.reshape((s, b * t * 2 * dh))?; // (S, B·T·2d_h)
                let routed = crate::fused::depth_mix(w, &flat)?.reshape((r, b, t, 2 * dh))?; // (R,B,T,2d_h)
                match &self.u {
                    None => routed,
                    Some(u) => {
                        // Parameter-free RMSNorm of x_t, then ΔW_l(x_t) = reshape(U_l · n_t).
                        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (B,T,1)
                        let n = x.broadcast_div(&(ms + self.norm_eps)?.sqrt()?)?; // (B,T,D)
                        let dw = u.forward(&n)?.reshape((b, t, r, s))?; // (B,T,R,S)
                        let per_tok = all.permute((1, 2, 0, 3))?.contiguous()?; // (B,T,S,2d_h)
                        let dyn_part = dw.matmul(&per_tok)?; // (B,T,R,2d_h)
                        (routed + dyn_part.permute((2, 0, 1, 3))?)? // (R,B,T,2d_h)
                    }
                }
            }
        };
        let routed = routed.transpose(0, 1)?; // (B,R,T,2d_h)
        let k = routed.narrow(D::Minus1, 0, dh)?; // (B,R,T,d_h)
        let v = routed.narrow(D::Minus1, dh, dh)?; // (B,R,T,d_h)
        Ok((k, v))
    }
}
