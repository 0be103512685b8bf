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
//!
//! ## Router ablations (paper appendix D and reviewers' requests)
//! Each replaces the (R, S) matrix W_l by a restricted or fixed one; the rest is unchanged.
//!
//! | variant            | parameter (l ≥ 1)                 | K_l = … (same for V)                               |
//! |--------------------|-----------------------------------|----------------------------------------------------|
//! | `lime-avg`         | none                              | (1/(l+1)) Σ_j K_j, per kv head (W = [I … I]/(l+1)) |
//! | `lime-last-j`      | `router.w` (R, (m+1)·R), m=min(j,l) | W · [K_{l−m}; …; K_l]                            |
//! | `lime-first-j`     | `router.w` (R, (m+1)·R), m=min(j,l) | W · [K_0; …; K_{m−1}; K_l]                       |
//! | `lime-same-head`   | `router.w_head` (R, l+1)          | K_l[r] = Σ_j w[r, j] · K_j[r]                      |
//! | `lime-per-dim`     | `router.w_dim` (R, S, d_h)        | K_l[r, c] = Σ_s w[r, s, c] · K_buf[s, c]           |
//! | `lime-random-init` | `router.w_rand` (R, S)            | as `lime`; init U(−b, b) everywhere, no identity   |
//!
//! `lime-avg` averages over layers per kv head (not over all (l+1)·R rows, which would give every
//! head the same vector). Init follows `lime`: U(−b, b) with b = sqrt(3 / fan-in) (fan-in = number
//! of sources a weight mixes), current layer = identity (`w_head`: last column 1; `w_dim`: the
//! identity block for every channel). So every ablation except `lime-avg` and `lime-random-init`
//! reduces to llama with the current-layer identity and zeros elsewhere.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::config::{Config, LimeWindow, Variant};

/// The pre-RoPE K|V of all layers processed so far in one forward pass: a `(S, B, T, 2·d_h)`
/// tensor grown by concatenation (the reference path), or, for the full-matrix routers on the
/// f32 CPU path, a [`crate::fused::KvStack`] appended in place (no O(L²) copies).
#[derive(Clone, Debug, Default)]
pub struct LimeBuffer {
    kv: Option<Tensor>,
    /// The key and value stacks of the in-place path.
    stacks: Option<(
        std::sync::Arc<crate::fused::KvStack>,
        std::sync::Arc<crate::fused::KvStack>,
    )>,
}

/// How a layer l ≥ 1 mixes the buffer (see the module docs).
#[derive(Clone, Debug)]
enum Mix {
    /// `lime`, `lime-dynamic`, `lime-random-init` (W trainable) and `lime-avg` (W constant):
    /// W (R, S) over the whole buffer.
    Full(Tensor),
    /// `lime-last-j` / `lime-first-j`: W (R, k·R) over the source layers `sources` (k of them).
    Window { w: Tensor, sources: Vec<usize> },
    /// `lime-same-head`: w (R, l+1).
    SameHead(Tensor),
    /// `lime-per-dim`: w (R, S, d_h).
    PerDim(Tensor),
}

/// The router of one layer.
#[derive(Clone, Debug)]
pub struct LimeRouter {
    layer: usize,
    n_kv_heads: usize,
    /// `None` for layer 0.
    mix: Option<Mix>,
    /// Whether the mixing weights are a Var (false for `lime-avg`).
    trainable: bool,
    /// U_l as a linear map D → R·(l+1)·R; lime-dynamic, l ≥ 1.
    u: Option<Linear>,
    norm_eps: f64,
    /// Every layer's router is a full (R, S) matrix (`lime`, `lime-avg`, `lime-random-init`),
    /// so f32 CPU passes may use the in-place K|V stack.
    stackable: bool,
    n_layers: usize,
}

/// The source layers of a windowed router at layer l.
fn window_sources(window: LimeWindow, layer: usize) -> Vec<usize> {
    match window {
        LimeWindow::Last(j) => (layer.saturating_sub(j)..=layer).collect(),
        LimeWindow::First(j) => (0..j.min(layer)).chain([layer]).collect(),
    }
}

impl LimeRouter {
    pub fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let (r, s) = (cfg.n_kv_heads, (layer + 1) * cfg.n_kv_heads);
        let mut trainable = true;
        let mix = if layer == 0 {
            None
        } else {
            Some(match cfg.variant {
                Variant::LimeAvg => {
                    // W = [I … I] / (l+1): a constant, not a Var.
                    trainable = false;
                    let eye = Tensor::eye(r, DType::F64, &candle_core::Device::Cpu)?;
                    let w = Tensor::cat(&vec![eye; layer + 1], 1)? / (layer + 1) as f64;
                    Mix::Full(w?.to_dtype(vb.dtype())?.to_device(vb.device())?)
                }
                Variant::LimeRandomInit => Mix::Full(vb.get((r, s), "w_rand")?),
                Variant::LimeSameHead => Mix::SameHead(vb.get((r, layer + 1), "w_head")?),
                Variant::LimePerDim => Mix::PerDim(vb.get((r, s, cfg.head_dim()), "w_dim")?),
                v => match v.lime_window() {
                    Some(win) => {
                        let sources = window_sources(win, layer);
                        let w = vb.get((r, sources.len() * r), "w")?;
                        Mix::Window { w, sources }
                    }
                    None => Mix::Full(vb.get((r, s), "w")?),
                },
            })
        };
        let u = match cfg.variant {
            Variant::LimeDynamic if layer > 0 => {
                Some(Linear::new(vb.get((r * s, cfg.d_model), "u")?, None))
            }
            _ => None,
        };
        Ok(Self {
            layer,
            n_kv_heads: r,
            mix,
            trainable,
            u,
            norm_eps: cfg.norm_eps,
            stackable: matches!(
                cfg.variant,
                Variant::Lime | Variant::LimeAvg | Variant::LimeRandomInit
            ),
            n_layers: cfg.n_layers,
        })
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The trainable router parameter of this layer as stored (`w` (R, S) or (R, k·R),
    /// `w_rand` (R, S), `w_head` (R, l+1) or `w_dim` (R, S, d_h)); `None` for layer 0 and
    /// `lime-avg`.
    pub fn weight(&self) -> Option<&Tensor> {
        if !self.trainable {
            return None;
        }
        self.mix.as_ref().map(|m| match m {
            Mix::Full(w) | Mix::Window { w, .. } | Mix::SameHead(w) | Mix::PerDim(w) => w,
        })
    }

    /// The static mixing as a dense (R, (l+1)·R) matrix over the whole buffer, for diagnostics:
    /// zeros outside a window, block-diagonal for `lime-same-head`, the mean over channels for
    /// `lime-per-dim`, the constant for `lime-avg`. `None` for layer 0.
    pub fn dense_weight(&self) -> Result<Option<Tensor>> {
        let r = self.n_kv_heads;
        let Some(mix) = &self.mix else {
            return Ok(None);
        };
        let n_src = self.layer + 1;
        Ok(Some(match mix {
            Mix::Full(w) => w.clone(),
            Mix::Window { w, sources } => {
                let zeros = w.narrow(1, 0, r)?.zeros_like()?;
                let blocks: Vec<Tensor> = (0..n_src)
                    .map(|j| match sources.iter().position(|&s| s == j) {
                        Some(k) => w.narrow(1, k * r, r),
                        None => Ok(zeros.clone()),
                    })
                    .collect::<Result<_>>()?;
                Tensor::cat(&blocks, 1)?
            }
            Mix::SameHead(w) => {
                // (R, l+1, 1) * (R, 1, R) eye → (R, l+1, R) → (R, S).
                let eye = Tensor::eye(r, w.dtype(), w.device())?.unsqueeze(1)?;
                w.unsqueeze(2)?
                    .broadcast_mul(&eye)?
                    .reshape((r, n_src * r))?
            }
            Mix::PerDim(w) => w.mean(D::Minus1)?,
        }))
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
        if self.stackable && crate::fused::usable(k) {
            // Same maths as the `Mix::Full` arm below, keys and values on their own in-place
            // stacks, straight from (B,T,R,d_h) to (B,R,T,d_h) (see fused.rs).
            let w = match &self.mix {
                None => None,
                Some(Mix::Full(w)) => Some(w),
                Some(_) => candle_core::bail!("lime stack: only full routers are stacked"),
            };
            if w.is_none() {
                let new = || {
                    let rows = self.n_layers * r;
                    std::sync::Arc::new(crate::fused::KvStack::with_capacity(rows, b * t * dh))
                };
                buf.stacks = Some((new(), new()));
            }
            let Some((ks, vs)) = &buf.stacks else {
                candle_core::bail!("lime stack: layer {} routed before layer 0", self.layer);
            };
            let k = crate::fused::stack_route(ks, w, k)?; // (B,R,T,d_h)
            let v = crate::fused::stack_route(vs, w, v)?; // (B,R,T,d_h)
            return Ok((k, v));
        }
        let kv = Tensor::cat(&[k, v], D::Minus1)?; // (B,T,R,2d_h)
        let kv = kv.permute((2, 0, 1, 3))?.contiguous()?; // (R,B,T,2d_h)
        let all = match buf.kv.take() {
            None => kv.clone(),
            Some(prev) => Tensor::cat(&[&prev, &kv], 0)?, // (S,B,T,2d_h), S = (l+1)·R
        };
        buf.kv = Some(all.clone());
        let s = all.dim(0)?;
        let n = b * t * 2 * dh;
        let routed = match &self.mix {
            None => kv, // layer 0: unrouted, (R,B,T,2d_h)
            // One GEMM over the buffer: (R,S) @ (S, B·T·2d_h).
            Some(Mix::Full(w)) => {
                crate::fused::depth_mix(w, &all.reshape((s, n))?)?.reshape((r, b, t, 2 * dh))?
            }
            Some(Mix::Window { w, sources }) => {
                let rows: Vec<Tensor> = sources
                    .iter()
                    .map(|&j| all.narrow(0, j * r, r))
                    .collect::<Result<_>>()?;
                let sub = Tensor::cat(&rows, 0)?.reshape((sources.len() * r, n))?; // (k·R, N)
                crate::fused::depth_mix(w, &sub)?.reshape((r, b, t, 2 * dh))?
            }
            Some(Mix::SameHead(w)) => {
                let per_head = all.reshape((s / r, r, n))?.transpose(0, 1)?.contiguous()?; // (R, l+1, N)
                let w = w.unsqueeze(1)?; // (R, 1, l+1)
                w.matmul(&per_head)?.reshape((r, b, t, 2 * dh))?
            }
            Some(Mix::PerDim(w)) => {
                // Batched over the d_h channels: (d_h, R, S) @ (d_h, S, B·T·2).
                let src = all
                    .reshape((s, b * t * 2, dh))?
                    .permute((2, 0, 1))?
                    .contiguous()?; // (d_h, S, B·T·2)
                let w = w.permute((2, 0, 1))?.contiguous()?; // (d_h, R, S)
                w.matmul(&src)? // (d_h, R, B·T·2)
                    .permute((1, 2, 0))?
                    .contiguous()?
                    .reshape((r, b, t, 2 * dh))?
            }
        };
        let routed = match &self.u {
            None => routed,
            Some(u) => {
                // Parameter-free RMSNorm of x_t, then ΔW_l(x_t) = reshape(U_l · n_t).
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (B,T,1)
                let nx = x.broadcast_div(&(ms + self.norm_eps)?.sqrt()?)?; // (B,T,D)
                let dw = u.forward(&nx)?.reshape((b, t, r, s))?; // (B,T,R,S)
                let per_tok = all.permute((1, 2, 0, 3))?.contiguous()?; // (B,T,S,2d_h)
                let dyn_part = dw.matmul(&per_tok)?; // (B,T,R,2d_h)
                (routed + dyn_part.permute((2, 0, 1, 3))?)? // (R,B,T,2d_h)
            }
        };
        let routed = routed.transpose(0, 1)?; // (B,R,T,2d_h)
        let k = routed.narrow(D::Minus1, 0, dh)?; // (B,R,T,d_h)
        let v = routed.narrow(D::Minus1, dh, dh)?; // (B,R,T,d_h)
        Ok((k, v))
    }
}
