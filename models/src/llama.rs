//! The shared LLaMA-style decoder (pre-norm, RoPE, SwiGLU, optional GQA), read top to bottom.
//!
//! ```text
//! ids (B,T) ─ embed_tokens ─► x (B,T,D)
//! for each layer l:   x += Attn_l(attn_norm(x))     (causal, RoPE on q and k)
//!                     x += MLP_l(mlp_norm(x))        (SwiGLU: w_down(silu(w_gate x) * w_up x))
//! logits = lm_head(norm(x))                          (lm_head = embed_tokens when tied)
//! ```
//!
//! The LIMe variants (`lime`, `lime-dynamic` and the `lime-*` router ablations) differ from this
//! file only inside [`Attention::forward`], in the block marked `LIMe routed path`: the
//! per-kv-head keys and values (pre-RoPE) are routed through [`crate::lime::LimeRouter`] before
//! RoPE is applied. `resformer` differs only in the block marked `ResFormer value residual` right
//! after it ([`crate::resformer`]). The two residual-stream variants change only the loop in
//! [`Model::run`] (marked `depth connection`): `denseformer` averages block outputs
//! ([`crate::denseformer`]), `hyper`/`hyper-static` carry n streams around each sub-layer
//! ([`crate::hyper`]; their block norms have no gain). Everything else is shared.
//!
//! Checkpoint tree (the names of the `VarBuilder` paths, used verbatim in safetensors files):
//!
//! | name                               | shape            | notes                         |
//! |------------------------------------|------------------|-------------------------------|
//! | `embed_tokens.weight`              | (V, D)           |                               |
//! | `layers.{l}.attn_norm.weight`      | (D,)             | not for hyper*                |
//! | `layers.{l}.attn.q_proj.weight`    | (H·d_h, D)       |                               |
//! | `layers.{l}.attn.k_proj.weight`    | (R·d_h, D)       |                               |
//! | `layers.{l}.attn.v_proj.weight`    | (R·d_h, D)       |                               |
//! | `layers.{l}.attn.o_proj.weight`    | (D, H·d_h)       |                               |
//! | `layers.{l}.attn.router.w`         | (R, (l+1)·R)     | lime, lime-dynamic; l ≥ 1     |
//! | `layers.{l}.attn.router.u`         | (R·(l+1)·R, D)   | lime-dynamic only; l ≥ 1      |
//! | `layers.{l}.attn.router.*`         | see `lime.rs`    | router ablations; l ≥ 1       |
//! | `layers.{l}.mlp_norm.weight`       | (D,)             | not for hyper*                |
//! | `layers.{l}.mlp.w_gate.weight`     | (F, D)           |                               |
//! | `layers.{l}.mlp.w_up.weight`       | (F, D)           |                               |
//! | `layers.{l}.mlp.w_down.weight`     | (D, F)           |                               |
//! | `layers.{l}.dwa.alpha`             | (l+2,)           | denseformer                   |
//! | `layers.{l}.hc_{attn,mlp}.*`       | see `hyper.rs`   | hyper, hyper-static           |
//! | `norm.weight`                      | (D,)             | final norm                    |
//! | `lm_head.weight`                   | (V, D)           | only when `tie_embeddings` is false |
//!
//! Notation: B batch, T tokens, D `d_model`, H `n_heads`, R `n_kv_heads`, d_h = D/H, F `d_ff`,
//! V `vocab_size`, g = H/R query heads per kv head.
//!
//! Only primitive candle ops are used (see `shared/notes/candle.md` §1): the fused candle-nn
//! `rms_norm`, `softmax_last_dim` and `rope*` kernels have no backward on CPU.

use candle_core::{bail, DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::{Config, Variant};
use crate::denseformer::DepthWeightedAverage;
use crate::hyper::HyperLayer;
use crate::lime::{LimeBuffer, LimeRouter};
use crate::resformer::{ValueResidual, RESFORMER_LAMBDA};

/// Checks the shape constraints that the model code relies on.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.80
pub fn validate_config(cfg: &Config) -> Result<()> {
    if cfg.n_heads == 0 || cfg.n_kv_heads == 0 || cfg.n_layers == 0 || cfg.vocab_size == 0 {
        bail!("config: n_heads, n_kv_heads, n_layers and vocab_size must be positive");
    }
    if cfg.d_model % cfg.n_heads != 0 {
        bail!(
            "config: d_model {} not divisible by n_heads {}",
            cfg.d_model,
            cfg.n_heads
        );
    }
    if cfg.n_heads % cfg.n_kv_heads != 0 {
        bail!(
            "config: n_heads {} not divisible by n_kv_heads {}",
            cfg.n_heads,
            cfg.n_kv_heads
        );
    }
    if cfg.head_dim() % 2 != 0 {
        bail!("config: head_dim {} must be even for RoPE", cfg.head_dim());
    }
    Ok(())
}

fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Proj> {
    Ok(Proj::new(vb.get((out_dim, in_dim), "weight")?))
}

/// A bias-free projection `y = x Wᵀ`, W (out, in).
///
/// Mixed precision ([`Model::with_matmul_dtype`], the harness's `--precision bf16`): with
/// `compute = Some(dt)` the product runs in `dt` — input and weight are cast per call, the f32
/// weight stays the master copy that the optimizer updates (its gradient arrives in f32 through
/// the cast's backward), and the output is cast back to the input's dtype, so norms, softmax,
/// residual stream, loss and optimizer all stay f32.
#[derive(Clone, Debug)]
pub struct Proj {
    weight: Tensor,
    compute: Option<DType>,
}

impl Proj {
    pub fn new(weight: Tensor) -> Self {
        Self {
            weight,
            compute: None,
        }
    }

    fn set_compute(&mut self, dt: Option<DType>) {
        self.compute = dt.filter(|&d| d != self.weight.dtype());
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.compute {
            None => Linear::new(self.weight.clone(), None).forward(x),
            Some(dt) => Linear::new(self.weight.to_dtype(dt)?, None)
                .forward(&x.to_dtype(dt)?)?
                .to_dtype(x.dtype()),
        }
    }
}

/// RMSNorm from primitive ops: `x / sqrt(mean(x²) + eps) * weight` over the last dim.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// A gain-free RMSNorm (weight fixed to ones, not a parameter): the block norms of `hyper*`.
    pub fn unit(dim: usize, eps: f64, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, dtype, device)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::fused::usable(x) {
            return crate::fused::rms_norm(x, &self.weight, self.eps); // one pass, same maths
        }
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
        let x = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?; // (..., D)
        x.broadcast_mul(&self.weight)
    }
}

/// Rotary position embedding, "rotate half" convention (pairs (i, i + d_h/2)),
/// frequencies θ^(−2i/d_h). Tables are built on the host in f64 for the requested positions.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    dtype: DType,
    device: Device,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, dtype: DType, device: &Device) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        Self {
            inv_freq,
            dtype,
            device: device.clone(),
        }
    }

    /// cos and sin tables for absolute positions `start..start + t`, each (t, d_h/2).
    pub fn tables(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let mk = |v: Vec<f64>| -> Result<Tensor> {
            Tensor::from_vec(v, (t, half), &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)
        };
        Ok((mk(cos)?, mk(sin)?))
    }

    /// x: (B, n, T, d_h) with cos/sin (T, d_h/2) → (B, n, T, d_h).
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if crate::fused::usable(x) {
            return crate::fused::rope(x, cos, sin); // one pass, same maths
        }
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?; // (B,n,T,d_h/2)
        let x2 = x.narrow(D::Minus1, half, half)?; // (B,n,T,d_h/2)
        let cos = cos.unsqueeze(0)?.unsqueeze(0)?; // (1,1,T,d_h/2)
        let sin = sin.unsqueeze(0)?.unsqueeze(0)?; // (1,1,T,d_h/2)
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[r1, r2], D::Minus1) // (B,n,T,d_h)
    }
}

/// Additive causal mask (t_new, t_total): 0 where key j ≤ query position `start + i`, −inf after.
fn causal_mask(start: usize, t_new: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let t_total = start + t_new;
    let m: Vec<f64> = (0..t_new)
        .flat_map(|i| {
            (0..t_total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (t_new, t_total), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// SwiGLU MLP: `w_down(silu(w_gate x) * w_up x)`, no biases.
#[derive(Clone, Debug)]
pub struct Mlp {
    w_gate: Proj,
    w_up: Proj,
    w_down: Proj,
}

impl Mlp {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            w_gate: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("w_gate"))?,
            w_up: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("w_up"))?,
            w_down: linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("w_down"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.w_gate.forward(x)?; // (B,T,F)
        let up = self.w_up.forward(x)?; // (B,T,F)
        self.w_down.forward(&crate::fused::swiglu(&gate, &up)?) // silu(gate)·up, then (B,T,D)
    }
}

/// Per-layer decoding state: post-routing, post-RoPE keys and values, each preallocated as
/// (B, R, capacity, d_h); positions `0..len` (the [`KvCache`]'s length) are valid. New positions
/// are written in place ([`Tensor::slice_set`]), so a decoding step copies only its own keys and
/// values, never the whole cache (the buffers double when full).
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

impl LayerCache {
    /// Writes `k`/`v` (B,R,t,d_h) at positions `len..len + t` and returns views of positions
    /// `0..len + t`, each (B,R,len + t,d_h) (a narrow of the buffer: heads are strided).
    fn append(
        slot: &mut Option<Self>,
        len: usize,
        min_capacity: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, r, t, dh) = k.dims4()?;
        let need = len + t;
        let cap = slot.as_ref().map_or(0, |c| c.k.dim(2).unwrap_or(0));
        if need > cap {
            // (Re)allocate with room to grow and carry the valid prefix over.
            let new_cap = need.max(min_capacity).max(2 * cap).next_power_of_two();
            let zeros = || Tensor::zeros((b, r, new_cap, dh), k.dtype(), k.device());
            let fresh = Self {
                k: zeros()?,
                v: zeros()?,
            };
            if let Some(old) = slot.take() {
                if len > 0 {
                    fresh
                        .k
                        .slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                    fresh
                        .v
                        .slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
            }
            *slot = Some(fresh);
        }
        let c = slot.as_ref().expect("allocated above");
        c.k.slice_set(&k.contiguous()?, 2, len)?;
        c.v.slice_set(&v.contiguous()?, 2, len)?;
        Ok((c.k.narrow(2, 0, need)?, c.v.narrow(2, 0, need)?)) // (B,R,len+t,d_h) each
    }
}

/// What one layer's attention reads and writes of the decoding cache in one pass.
pub(crate) struct CacheSlot<'a> {
    layer: &'a mut Option<LayerCache>,
    len: usize,
    min_capacity: usize,
}

/// State shared by the layers of one forward pass (all of it per token of this pass).
#[derive(Debug, Default)]
pub struct PassState {
    /// LIMe: the pre-RoPE K|V of the layers so far.
    pub lime: LimeBuffer,
    /// ResFormer: the values V_0 of layer 0, (B,R,T,d_h).
    pub v0: Option<Tensor>,
}

/// Causal multi-head attention with RoPE and grouped-query attention.
#[derive(Clone, Debug)]
pub struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// `Some` for the LIMe variants (every layer, layer 0 only appends to the buffer).
    router: Option<LimeRouter>,
    /// ResFormer's value residual (`Off` for every other variant).
    value_residual: ValueResidual,
}

impl Attention {
    pub fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let (d, h, r, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim());
        let router = if cfg.variant.is_lime() {
            Some(LimeRouter::new(cfg, layer, vb.pp("router"))?)
        } else {
            None
        };
        let value_residual = match (cfg.variant, layer) {
            (Variant::ResFormer, 0) => ValueResidual::Store,
            (Variant::ResFormer, _) => ValueResidual::Mix(RESFORMER_LAMBDA),
            _ => ValueResidual::Off,
        };
        Ok(Self {
            q_proj: linear_no_bias(d, h * dh, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(d, r * dh, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(d, r * dh, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(h * dh, d, vb.pp("o_proj"))?,
            n_heads: h,
            n_kv_heads: r,
            head_dim: dh,
            router,
            value_residual,
        })
    }

    /// The LIMe router of this layer, if any.
    pub fn router(&self) -> Option<&LimeRouter> {
        self.router.as_ref()
    }

    /// `x`: block input (B,T,D) (read only by lime-dynamic's router); `h`: normalised input
    /// (B,T,D). `rope`: cos/sin for the T new positions. `mask`: (T, T_total).
    /// Returns the attention output (B,T,D) and the values used, (B,R,T_total,d_h).
    fn forward(
        &self,
        x: &Tensor,
        h: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        pass: &mut PassState,
        cache: Option<CacheSlot>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let (nh, r, dh) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let g = nh / r;
        let q = self
            .q_proj
            .forward(h)?
            .reshape((b, t, nh, dh))?
            .transpose(1, 2)?; // (B,H,T,d_h)
        let k = self.k_proj.forward(h)?.reshape((b, t, r, dh))?; // (B,T,R,d_h)
        let v = self.v_proj.forward(h)?.reshape((b, t, r, dh))?; // (B,T,R,d_h)

        // ---------------- LIMe routed path (the only difference to llama) ----------------
        let (k, v) = match &self.router {
            None => (k.transpose(1, 2)?, v.transpose(1, 2)?), // (B,R,T,d_h)
            // K_l = W_l · K_buf, V_l = W_l · V_buf over every earlier (layer, kv-head), pre-RoPE.
            Some(router) => router.route(&k, &v, x, &mut pass.lime)?, // (B,R,T,d_h)
        };
        // -----------------------------------------------------------------------------------
        // ---------------- ResFormer value residual: V_l ← λV_0 + (1−λ)V_l, l ≥ 1 -------------
        let v = self.value_residual.apply(v, &mut pass.v0)?; // (B,R,T,d_h)
                                                             // -----------------------------------------------------------------------------------

        let (cos, sin) = rope;
        let q = Rope::apply(&q, cos, sin)?; // (B,H,T,d_h), contiguous
        let k = Rope::apply(&k, cos, sin)?; // (B,R,T,d_h), contiguous
        let v = v.contiguous()?; // (B,R,T,d_h)
        let (k, v) = match cache {
            None => (k, v),
            // (B,R,T_total,d_h) views of the preallocated cache.
            Some(c) => LayerCache::append(c.layer, c.len, c.min_capacity, &k, &v)?,
        };
        let tk = k.dim(2)?;

        if crate::fused::usable(&q) {
            // Same maths in one kernel per (batch, kv head): no T×T mask or score copies.
            let y = crate::fused::causal_attention(&q, &k, &v, 1.0 / (dh as f64).sqrt())?; // (B,H,T,d_h)
            let y = y.transpose(1, 2)?.reshape((b, t, nh * dh))?; // (B,T,H·d_h)
            return Ok((self.o_proj.forward(&y)?, v));
        }
        // Grouped-query attention without copying K/V: query head n = r·g + j uses kv head r.
        let (k, v) = (k.contiguous()?, v.contiguous()?); // cache views are strided
        let q = q.reshape((b, r, g * t, dh))?; // (B,R,g·T,d_h)
        let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?; // (B,R,g·T,T_total)
        let scores = scores.reshape((b, nh, t, tk))?.broadcast_add(mask)?; // (B,H,T,T_total)
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?; // (B,H,T,T_total)
        let y = probs.reshape((b, r, g * t, tk))?.matmul(&v)?; // (B,R,g·T,d_h)
        let y = y.reshape((b, nh, t, dh))?.transpose(1, 2)?; // (B,T,H,d_h)
        let y = y.reshape((b, t, nh * dh))?; // (B,T,H·d_h)
        Ok((self.o_proj.forward(&y)?, v))
    }
}

/// Pre-norm decoder block: `x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x))`.
#[derive(Clone, Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let norm = |name: &str| {
            if cfg.variant.is_hyper() {
                RmsNorm::unit(cfg.d_model, cfg.norm_eps, vb.dtype(), vb.device())
            // no gain
            } else {
                RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp(name))
            }
        };
        Ok(Self {
            attn_norm: norm("attn_norm")?,
            attn: Attention::new(cfg, layer, vb.pp("attn"))?,
            mlp_norm: norm("mlp_norm")?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    pub fn attn(&self) -> &Attention {
        &self.attn
    }

    /// The attention sub-layer without its residual: (Attn(attn_norm(x)), values used).
    pub(crate) fn attn_branch(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        pass: &mut PassState,
        cache: Option<CacheSlot>,
    ) -> Result<(Tensor, Tensor)> {
        let h = self.attn_norm.forward(x)?; // (B,T,D)
        self.attn.forward(x, &h, rope, mask, pass, cache)
    }

    /// The MLP sub-layer without its residual: MLP(mlp_norm(x)).
    pub(crate) fn mlp_branch(&self, x: &Tensor) -> Result<Tensor> {
        self.mlp.forward(&self.mlp_norm.forward(x)?)
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        pass: &mut PassState,
        cache: Option<CacheSlot>,
    ) -> Result<(Tensor, Tensor)> {
        let (a, v) = self.attn_branch(x, rope, mask, pass, cache)?;
        let x = (x + a)?; // (B,T,D)
        let x = (&x + self.mlp_branch(&x)?)?; // (B,T,D)
        Ok((x, v))
    }
}

/// How blocks are connected across depth (see the module docs).
#[derive(Clone, Debug)]
enum DepthConnection {
    /// `x_{l+1} = Block_l(x_l)`: llama, LIMe, ResFormer.
    Residual,
    /// DenseFormer: a depth-weighted average after every block.
    Dense(Vec<DepthWeightedAverage>),
    /// Hyper-Connections: n streams, a connection around every sub-layer.
    Hyper(Vec<HyperLayer>),
}

/// Incremental-decoding cache: per layer the post-RoPE keys and values of all past positions.
///
/// For the LIMe variants this is also all that is needed: routing mixes only entries of the
/// *same* position (the buffer rows are (layer, kv-head) pairs of one token), so the routed keys
/// and values of a past token never change, and a new token's routing reads only the pre-RoPE K/V
/// that all layers compute for that new token in the same forward pass. The same holds for every
/// other variant: ResFormer's V_0, DenseFormer's block outputs and the Hyper-Connection streams
/// are all per token, so every variant supports incremental decoding with this cache.
///
/// The buffers are allocated on first use for `max(capacity, positions needed)` positions
/// (default 256; callers that know the final length use [`KvCache::with_capacity`]) and double
/// when full.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(cfg: &Config) -> Self {
        Self::with_capacity(cfg, 256)
    }

    /// A cache that first allocates room for `capacity` positions (it still grows past it).
    pub fn with_capacity(cfg: &Config, capacity: usize) -> Self {
        Self {
            layers: (0..cfg.n_layers).map(|_| None).collect(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position; the buffers are kept for the next sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Per-layer activations recorded by [`Model::forward_trace`] (for entropy / probe diagnostics).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Residual stream: `hidden[0]` is the embedding output, `hidden[l+1]` the output of block l;
    /// each (B,T,D). DenseFormer: the DWA output after block l (the next block's input).
    /// Hyper-Connections: the sum of the n streams after block l.
    pub hidden: Vec<Tensor>,
    /// Values used by the attention of each layer (after LIMe routing), each (B,R,T,d_h).
    pub values: Vec<Tensor>,
}

/// The decoder. Variant-specific parts live in the attention layers (see module docs).
#[derive(Clone, Debug)]
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Proj,
    depth: DepthConnection,
    rope: Rope,
    cfg: Config,
    dtype: DType,
    device: Device,
}

impl Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        validate_config(cfg)?;
        let embed_w = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.d_model), "weight")?;
        let embed_tokens = Embedding::new(embed_w.clone(), cfg.d_model);
        let layers = (0..cfg.n_layers)
            .map(|l| Block::new(cfg, l, vb.pp("layers").pp(l)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("norm"))?;
        let depth = match cfg.variant {
            Variant::DenseFormer => DepthConnection::Dense(
                (0..cfg.n_layers)
                    .map(|l| DepthWeightedAverage::new(l, vb.pp("layers").pp(l).pp("dwa")))
                    .collect::<Result<_>>()?,
            ),
            v if v.is_hyper() => DepthConnection::Hyper(
                (0..cfg.n_layers)
                    .map(|l| HyperLayer::new(cfg, vb.pp("layers").pp(l)))
                    .collect::<Result<_>>()?,
            ),
            _ => DepthConnection::Residual,
        };
        let lm_head = if cfg.tie_embeddings {
            Proj::new(embed_w)
        } else {
            linear_no_bias(cfg.d_model, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let rope = Rope::new(cfg.head_dim(), cfg.rope_theta, vb.dtype(), vb.device());
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            depth,
            rope,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn layers(&self) -> &[Block] {
        &self.layers
    }

    /// Sets ResFormer's λ in V_l ← λV_0 + (1−λ)V_l (default [`RESFORMER_LAMBDA`]); λ = 0 is
    /// llama. No effect on other variants. For the reduction test and ablations.
    pub fn with_value_residual(mut self, lambda: f64) -> Self {
        for block in &mut self.layers {
            if let ValueResidual::Mix(_) = block.attn.value_residual {
                block.attn.value_residual = ValueResidual::Mix(lambda);
            }
        }
        self
    }

    /// Mixed precision: run every projection (q, k, v, o, the MLP and the LM head) in `dt`
    /// (e.g. bf16 on a GPU) with f32 master weights; `None` (or the weights' dtype) turns it off.
    /// Attention scores, softmax, norms, the LIMe router and the loss stay in the model's dtype.
    pub fn with_matmul_dtype(mut self, dt: Option<DType>) -> Self {
        for block in &mut self.layers {
            let a = &mut block.attn;
            for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                p.set_compute(dt);
            }
            let m = &mut block.mlp;
            for p in [&mut m.w_gate, &mut m.w_up, &mut m.w_down] {
                p.set_compute(dt);
            }
        }
        self.lm_head.set_compute(dt);
        self
    }

    /// DenseFormer's α per block (each (l+2,)); empty for other variants.
    pub fn dwa_weights(&self) -> Vec<Tensor> {
        match &self.depth {
            DepthConnection::Dense(d) => d.iter().map(|a| a.alpha().clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// ids (B,T) u32 → logits (B,T,V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.lm_head(&self.run(ids, None, None)?)
    }

    /// ids (B,T) u32 → final hidden states (B,T,D), after the last RMSNorm and before the LM
    /// head. With [`Model::lm_head`] this lets a trainer project only the supervised rows.
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None, None)
    }

    /// The LM head: hidden (..., D) → logits (..., V).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Like [`Model::forward`] and also returns per-layer hidden states and values.
    pub fn forward_trace(&self, ids: &Tensor) -> Result<(Tensor, Trace)> {
        let mut trace = Trace {
            hidden: Vec::new(),
            values: Vec::new(),
        };
        let logits = self.lm_head(&self.run(ids, None, Some(&mut trace))?)?;
        Ok((logits, trace))
    }

    /// Incremental decoding: ids (B,t_new) at positions `cache.len()..`, logits (B,t_new,V).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            bail!(
                "KvCache has {} layers, model has {}",
                cache.layers.len(),
                self.layers.len()
            );
        }
        let t_new = ids.dim(1)?;
        let logits = self.lm_head(&self.run(ids, Some(cache), None)?)?;
        cache.len += t_new;
        Ok(logits)
    }

    /// The decoder up to the final RMSNorm: (B,T) ids → (B,T,D).
    fn run(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let rope = self.rope.tables(start, t)?; // (T,d_h/2) each
        let mask = causal_mask(start, t, self.dtype, &self.device)?; // (T,T_total)
        let mut x = self.embed_tokens.forward(ids)?; // (B,T,D)
        let mut pass = PassState::default();
        if let Some(tr) = trace.as_deref_mut() {
            tr.hidden.push(x.clone());
        }
        // Depth-connection state: DenseFormer's block outputs Y_0..Y_l, HC's streams (B,T,n,D).
        let mut ys = vec![x.clone()];
        let mut hs = match &self.depth {
            DepthConnection::Hyper(_) => Some(crate::hyper::expand(&x)?),
            _ => None,
        };
        for (l, block) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| CacheSlot {
                layer: &mut c.layers[l],
                len: c.len,
                min_capacity: c.capacity,
            });
            let read_out = trace.is_some() || l + 1 == self.layers.len();
            // ---------------- depth connection ----------------
            let v = match (&self.depth, hs.as_mut()) {
                (DepthConnection::Hyper(hc), Some(hs)) => {
                    let (h, w) = hc[l].attn.width(hs)?; // h = A_mᵀH (B,T,D)
                    let (a, v) = block.attn_branch(&h, &rope, &mask, &mut pass, slot)?;
                    *hs = hc[l].attn.depth(&a, w)?; // (B,T,n,D)
                    let (h, w) = hc[l].mlp.width(hs)?;
                    *hs = hc[l].mlp.depth(&block.mlp_branch(&h)?, w)?;
                    if read_out {
                        x = crate::hyper::read_out(hs)?; // Σ_i h_i (B,T,D): trace and head
                    }
                    v
                }
                (DepthConnection::Dense(dwa), _) => {
                    let (y, v) = block.forward(&x, &rope, &mask, &mut pass, slot)?;
                    ys.push(y);
                    x = dwa[l].forward(&ys)?; // Σ_j α_lj Y_j (B,T,D)
                    v
                }
                _ => {
                    let (y, v) = block.forward(&x, &rope, &mask, &mut pass, slot)?;
                    x = y;
                    v
                }
            };
            // ---------------------------------------------------
            if let Some(tr) = trace.as_deref_mut() {
                tr.hidden.push(x.clone());
                tr.values.push(v);
            }
        }
        self.norm.forward(&x) // (B,T,D)
    }

    /// The static LIMe router matrices W_l, l = 1..L−1, each (R, (l+1)·R) (the ablations'
    /// routers as dense matrices, see [`LimeRouter::dense_weight`]); empty for non-LIMe variants.
    pub fn router_weights(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .filter_map(|b| {
                b.attn
                    .router()
                    .and_then(|r| r.dense_weight().ok().flatten())
            })
            .collect()
    }

    /// Heatmap rows for the paper's Figure 5: for every layer l, the mean |W_l| over each source
    /// layer j ≤ l (a block of R×R entries), normalised so that the row sums to 1. Row 0 is `[1]`
    /// (layer 0 only sees itself). Static part only for lime-dynamic; empty for llama.
    pub fn router_heatmap(&self) -> Result<Vec<Vec<f64>>> {
        let r = self.cfg.n_kv_heads;
        let mut rows = Vec::new();
        for block in &self.layers {
            let Some(router) = block.attn.router() else {
                continue;
            };
            let Some(w) = router.dense_weight()? else {
                rows.push(vec![1.0]);
                continue;
            };
            let w = w.abs()?.to_dtype(DType::F64)?; // (R,(l+1)R)
            let n_src = w.dim(1)? / r;
            let mut row = Vec::with_capacity(n_src);
            for j in 0..n_src {
                row.push(w.narrow(1, j * r, r)?.mean_all()?.to_scalar::<f64>()?);
            }
            let s: f64 = row.iter().sum();
            if s > 0.0 {
                row.iter_mut().for_each(|x| *x /= s);
            }
            rows.push(row);
        }
        Ok(rows)
    }
}
