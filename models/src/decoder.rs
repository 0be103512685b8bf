//! The shared LLaMA-style decoder (pre-norm, RoPE, SwiGLU, optional GQA), read top to bottom. The
//! `llama` variant (`llama.rs`) runs its blocks as a plain residual loop; every other variant
//! runs them its own way.
//!
//! ```text
//! ids (B,T) ─ embed_tokens ─► x (B,T,D)
//! for each layer l:   x += Attn_l(attn_norm(x))     (causal, RoPE on q and k)
//!                     x += MLP_l(mlp_norm(x))        (SwiGLU: w_down(silu(w_gate x) * w_up x))
//! logits = lm_head(norm(x))                          (lm_head = embed_tokens when tied)
//! ```
//!
//! A variant ([`crate::variant`]) changes only what happens between the embedding and the final
//! norm: its [`Connection::run`] drives the blocks through [`Layers`] — a whole block
//! ([`Layers::block`]) or its two sub-layers ([`Layers::attn`], [`Layers::mlp`]; or
//! [`Layers::attn_qkv`] with separate query, key and value inputs, for MUDDFormer and DCA) — and
//! may route each attention layer's keys and values before RoPE through a [`KvRoute`] (LIMe,
//! ResFormer), its queries through a [`crate::variant::QRoute`] and the MLP's gate and up
//! projections through a [`crate::variant::GateUpRoute`] (Canon), keeping what an op that mixes
//! along the sequence needs between decoding steps with [`Layers::past`]. [`Blocks`] with the state of one forward pass (RoPE tables, mask, cache, trace)
//! is that [`Layers`].
//!
//! Checkpoint tree (the names of the `VarBuilder` paths, used verbatim in safetensors files); each
//! variant's file lists the parameters it adds:
//!
//! | name                               | shape            | notes                         |
//! |------------------------------------|------------------|-------------------------------|
//! | `embed_tokens.weight`              | (V, D)           |                               |
//! | `layers.{l}.attn_norm.weight`      | (D,)             | not for hyper*                |
//! | `layers.{l}.attn.q_proj.weight`    | (H·d_h, D)       |                               |
//! | `layers.{l}.attn.k_proj.weight`    | (R·d_h, D)       |                               |
//! | `layers.{l}.attn.v_proj.weight`    | (R·d_h, D)       |                               |
//! | `layers.{l}.attn.o_proj.weight`    | (D, H·d_h)       |                               |
//! | `layers.{l}.mlp_norm.weight`       | (D,)             | not for hyper*                |
//! | `layers.{l}.mlp.w_gate.weight`     | (F, D)           |                               |
//! | `layers.{l}.mlp.w_up.weight`       | (F, D)           |                               |
//! | `layers.{l}.mlp.w_down.weight`     | (D, F)           |                               |
//! | `norm.weight`                      | (D,)             | final norm                    |
//! | `lm_head.weight`                   | (V, D)           | only when `tie_embeddings` is false |
//!
//! Notation: B batch, T tokens, D `d_model`, H `n_heads`, R `n_kv_heads`, d_h = D/H, F `d_ff`,
//! V `vocab_size`, g = H/R query heads per kv head. The numerics are those of [`crate::ops`],
//! in the [`Backend`] the model was built with.

use std::sync::Arc;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::ops::{self, Backend};
use crate::variant::{
    plain_gate_up, plain_q, Config, Connection, GateUpRoute, KvRoute, Layers, Mixing, QRoute,
    VariantDef,
};

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
    cfg.variant.def().validate(cfg)
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

impl Proj {
    /// Run `p`'s projection of a packed weight (P, out, in).
    fn run(&self, p: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.get(p)?,
            compute: self.compute,
        })
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.rank() == 3 {
            // Packed (crate::pack): weight (P,out,in); x (P·B, …, in), run-major rows.
            let (p, out_dim, in_dim) = self.weight.dims3()?;
            let mut dims = x.dims().to_vec();
            let rows = x.elem_count() / (p * in_dim);
            let x = x.reshape((p, rows, in_dim))?; // (P, rows, in)
            let w = self.weight.transpose(1, 2)?; // (P, in, out)
            let y = match self.compute {
                None => x.matmul(&w)?,
                Some(dt) => x
                    .to_dtype(dt)?
                    .matmul(&w.to_dtype(dt)?)?
                    .to_dtype(x.dtype())?,
            }; // (P, rows, out)
            *dims.last_mut().expect("rank ≥ 1") = out_dim;
            return y.reshape(dims);
        }
        match self.compute {
            None => Linear::new(self.weight.clone(), None).forward(x),
            Some(dt) => Linear::new(self.weight.to_dtype(dt)?, None)
                .forward(&x.to_dtype(dt)?)?
                .to_dtype(x.dtype()),
        }
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight` over the last dim.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    backend: Backend,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder, backend: Backend) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
            backend,
        })
    }

    /// A gain-free RMSNorm (weight fixed to ones, not a parameter): the block norms of `hyper*`.
    pub fn unit(dim: usize, eps: f64, vb: &VarBuilder, backend: Backend) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, vb.dtype(), vb.device())?,
            eps,
            backend,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(self.backend, x, &self.weight, self.eps)
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
    backend: Backend,
}

impl Mlp {
    pub fn new(cfg: &Config, vb: VarBuilder, backend: Backend) -> Result<Self> {
        Ok(Self {
            w_gate: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("w_gate"))?,
            w_up: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("w_up"))?,
            w_down: linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("w_down"))?,
            backend,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_hooked(x, &mut plain_gate_up)
    }

    /// The MLP with the variant's hook between the gate/up projections and the SwiGLU.
    fn forward_hooked(&self, x: &Tensor, route: GateUpRoute) -> Result<Tensor> {
        let gate = self.w_gate.forward(x)?; // (B,T,F)
        let up = self.w_up.forward(x)?; // (B,T,F)
        let (gate, up) = route(gate, up)?; // the variant's hook (Canon-D), (B,T,F) each
        self.w_down.forward(&ops::swiglu(self.backend, &gate, &up)?) // silu(gate)·up → (B,T,D)
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
    backend: Backend,
}

impl Attention {
    pub fn new(cfg: &Config, vb: VarBuilder, backend: Backend) -> Result<Self> {
        let (d, h, r, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim());
        Ok(Self {
            q_proj: linear_no_bias(d, h * dh, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(d, r * dh, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(d, r * dh, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(h * dh, d, vb.pp("o_proj"))?,
            n_heads: h,
            n_kv_heads: r,
            head_dim: dh,
            backend,
        })
    }

    /// `[h_q, h_k, h_v]`: the normalised inputs of the query, key and value projections, each
    /// (B,T,D) (the same tensor but for MUDDFormer's multiway inputs); `route`: the variant's k/v
    /// hook, `q_route` its query hook. Returns the attention output (B,T,D) and the values used,
    /// (B,R,T_total,d_h).
    fn forward(
        &self,
        [hq, hk, hv]: [&Tensor; 3],
        pass: &mut Pass,
        layer: usize,
        q_route: QRoute,
        route: KvRoute,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = hq.dims3()?;
        let (nh, r, dh) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self.q_proj.forward(hq)?.reshape((b, t, nh, dh))?; // (B,T,H,d_h)
        let q = q_route(q)?.transpose(1, 2)?; // the variant's hook, pre-RoPE → (B,H,T,d_h)
        let k = self.k_proj.forward(hk)?.reshape((b, t, r, dh))?; // (B,T,R,d_h)
        let v = self.v_proj.forward(hv)?.reshape((b, t, r, dh))?; // (B,T,R,d_h)
        let (k, v) = route(k, v)?; // (B,R,T,d_h) each: the variant's hook, pre-RoPE

        let (cos, sin) = &pass.rope;
        let q = ops::rope(self.backend, &q, cos, sin)?; // (B,H,T,d_h), contiguous
        let k = ops::rope(self.backend, &k, cos, sin)?; // (B,R,T,d_h), contiguous
        let v = v.contiguous()?; // (B,R,T,d_h)
        let (k, v) = match pass.cache.as_deref_mut() {
            None => (k, v),
            // (B,R,T_total,d_h) views of the preallocated cache.
            Some(c) => LayerCache::append(&mut c.layers[layer], c.len, c.capacity, &k, &v)?,
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let y = ops::attention(self.backend, &q, &k, &v, &pass.mask, scale)?; // (B,H,T,d_h)
        let y = y.transpose(1, 2)?.reshape((b, t, nh * dh))?; // (B,T,H·d_h)
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
    pub fn new(cfg: &Config, vb: VarBuilder, backend: Backend) -> Result<Self> {
        let norm = |name: &str| {
            if cfg.variant.def().norm_gain() {
                RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp(name), backend)
            } else {
                RmsNorm::unit(cfg.d_model, cfg.norm_eps, &vb, backend)
            }
        };
        Ok(Self {
            attn_norm: norm("attn_norm")?,
            attn: Attention::new(cfg, vb.pp("attn"), backend)?,
            mlp_norm: norm("mlp_norm")?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), backend)?,
        })
    }
}

/// The decoder blocks.
#[derive(Clone, Debug)]
pub struct Blocks(Vec<Block>);

impl Blocks {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The blocks within one forward pass: what a variant's [`Connection`] drives.
struct Net<'n, 'p> {
    blocks: &'n Blocks,
    pass: Pass<'p>,
}

impl Layers for Net<'_, '_> {
    fn len(&self) -> usize {
        self.blocks.len()
    }

    fn attn(&mut self, l: usize, x: &Tensor, route: KvRoute) -> Result<Tensor> {
        let h = self.blocks.0[l].attn_norm.forward(x)?; // (B,T,D)
        self.attn_qkv(l, [&h, &h, &h], route)
    }

    fn attn_norm(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        self.blocks.0[l].attn_norm.forward(x)
    }

    fn attn_qkv(&mut self, l: usize, h: [&Tensor; 3], route: KvRoute) -> Result<Tensor> {
        self.attn_hooked(l, h, &mut plain_q, route)
    }

    fn attn_hooked(
        &mut self,
        l: usize,
        h: [&Tensor; 3],
        q_route: QRoute,
        route: KvRoute,
    ) -> Result<Tensor> {
        let (y, v) = self.blocks.0[l]
            .attn
            .forward(h, &mut self.pass, l, q_route, route)?;
        if let Some(tr) = self.pass.trace.as_deref_mut() {
            tr.values.push(v);
        }
        Ok(y)
    }

    fn mlp(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        let block = &self.blocks.0[l];
        block.mlp.forward(&block.mlp_norm.forward(x)?)
    }

    fn mlp_norm(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        self.blocks.0[l].mlp_norm.forward(x)
    }

    fn mlp_hooked(&self, l: usize, h: &Tensor, route: GateUpRoute) -> Result<Tensor> {
        self.blocks.0[l].mlp.forward_hooked(h, route)
    }

    fn past(
        &mut self,
        l: usize,
        site: &'static str,
        batch: usize,
        channels: usize,
        k: usize,
    ) -> Result<Tensor> {
        let kept = self
            .pass
            .cache
            .as_deref()
            .and_then(|c| c.pasts.get(&(l, site)));
        match kept {
            Some(t) if t.dims() == [batch, k, channels] => Ok(t.clone()),
            Some(t) => bail!(
                "decoding cache: layer {l} `{site}` keeps {:?}, this pass needs ({batch}, {k}, {channels})",
                t.dims()
            ),
            None => Tensor::zeros((batch, k, channels), self.pass.dtype, &self.pass.device),
        }
    }

    fn keep_past(&mut self, l: usize, site: &'static str, tail: Tensor) {
        if let Some(c) = self.pass.cache.as_deref_mut() {
            c.pasts.insert((l, site), tail);
        }
    }

    fn tracing(&self) -> bool {
        self.pass.trace.is_some()
    }

    fn record(&mut self, x: &Tensor) {
        if let Some(tr) = self.pass.trace.as_deref_mut() {
            tr.hidden.push(x.clone());
        }
    }

    fn record_mixing(&mut self, weights: &Tensor, labels: &dyn Fn() -> (String, Vec<String>)) {
        if let Some(tr) = self.pass.trace.as_deref_mut() {
            let (consumer, sources) = labels();
            tr.mixing.push(Mixing {
                consumer,
                sources,
                weights: weights.clone(),
            });
        }
    }
}

/// What the blocks of one forward pass share: RoPE tables and the mask for its T new positions,
/// the decoding cache, and the trace being recorded.
struct Pass<'a> {
    /// cos/sin, each (T, d_h/2).
    rope: (Tensor, Tensor),
    /// (T, T_total).
    mask: Tensor,
    cache: Option<&'a mut KvCache>,
    trace: Option<&'a mut Trace>,
    /// The model's dtype and device (for the zeros of [`Layers::past`]).
    dtype: DType,
    device: Device,
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
///
/// Variants that mix along the sequence before attention (Canon's causal convolutions) also keep
/// the last inputs of each mixer here ([`Layers::past`], [`Layers::keep_past`]).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// (layer, mixer) → its last k inputs (B,k,C).
    pasts: std::collections::HashMap<(usize, &'static str), Tensor>,
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
            pasts: std::collections::HashMap::new(),
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
        self.pasts.clear();
    }
}

/// Per-layer activations recorded by [`Model::forward_trace`] (for entropy / probe diagnostics).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Residual stream: `hidden[0]` is the embedding output, `hidden[l+1]` the output of block l;
    /// each (B,T,D). DenseFormer: the DWA output after block l (the next block's input).
    /// Hyper-Connections and mHC: the sum of the n streams after block l. AttnRes: the sum of
    /// its sources after block l (what llama's stream would hold). MUDDFormer: X_{l+1}.
    pub hidden: Vec<Tensor>,
    /// Values used by the attention of each layer (after LIMe routing), each (B,R,T,d_h).
    pub values: Vec<Tensor>,
    /// The depth-mixing weights computed in the forward pass, in forward order: AttnRes's
    /// softmax over sources, MUDDFormer's aggregate weights, the hyper-connections' read-in
    /// weights over the streams (HC's A_m, mHC's pre). Empty for the variants whose mixing is a
    /// weight of the model (LIMe's router, DenseFormer's α: `Model::router_heatmap`,
    /// `Model::mixing_weights`) or that have none.
    pub mixing: Vec<Mixing>,
}

/// The decoder: the shared skeleton around a variant's [`Connection`].
#[derive(Clone, Debug)]
pub struct Model {
    embed_tokens: Embedding,
    blocks: Blocks,
    norm: RmsNorm,
    lm_head: Proj,
    connection: Arc<dyn Connection>,
    rope: Rope,
    cfg: Config,
    dtype: DType,
    device: Device,
    backend: Backend,
    /// Runs packed into this model ([`crate::pack`]): 1 for an ordinary model.
    pack: usize,
}

impl Model {
    /// The model `cfg` describes, its parameters taken from `vb`, running `backend`
    /// ([`Backend::resolve`]d for `vb`'s dtype and device).
    pub fn new(cfg: &Config, vb: VarBuilder, backend: Backend) -> Result<Self> {
        Self::with_def(cfg, vb, backend, cfg.variant.def())
    }

    /// Like [`Model::new`] with another definition of the variant (a variant's knobs that are
    /// not part of its name, e.g. ResFormer's λ in the reduction test).
    pub fn with_def(
        cfg: &Config,
        vb: VarBuilder,
        backend: Backend,
        def: &dyn VariantDef,
    ) -> Result<Self> {
        validate_config(cfg)?;
        let backend = backend.resolve(vb.dtype(), vb.device());
        let embed_w = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.d_model), "weight")?;
        // A packed var builder hands out every parameter with a leading run axis (crate::pack).
        let pack = if embed_w.rank() == 3 {
            embed_w.dim(0)?
        } else {
            1
        };
        if pack > 1 && !def.packable() {
            bail!(
                "model `{}` cannot be trained packed (its connection has no run axis); run it without --pack",
                def.name()
            );
        }
        let embed_tokens = Embedding::new(embed_w.clone(), cfg.d_model);
        let blocks = (0..cfg.n_layers)
            .map(|l| Block::new(cfg, vb.pp("layers").pp(l), backend))
            .collect::<Result<Vec<_>>>()?;
        let connection = def.build(cfg, &vb, backend)?;
        let norm = RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("norm"), backend)?;
        let lm_head = if cfg.tie_embeddings {
            Proj::new(embed_w)
        } else {
            linear_no_bias(cfg.d_model, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let rope = Rope::new(cfg.head_dim(), cfg.rope_theta, vb.dtype(), vb.device());
        Ok(Self {
            embed_tokens,
            blocks: Blocks(blocks),
            norm,
            lm_head,
            connection,
            rope,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            backend,
            pack,
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

    /// How many runs this model packs ([`crate::pack`]); 1 for an ordinary model.
    pub fn pack(&self) -> usize {
        self.pack
    }

    /// The backend this model runs (after [`Backend::resolve`]).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Mixed precision: run every projection (q, k, v, o, the MLP and the LM head) in `dt`
    /// (e.g. bf16 on a GPU) with f32 master weights; `None` (or the weights' dtype) turns it off.
    /// Attention scores, softmax, norms, the variants' mixing and the loss stay in the model's
    /// dtype.
    pub fn with_matmul_dtype(mut self, dt: Option<DType>) -> Self {
        for block in &mut self.blocks.0 {
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

    /// Run `p`'s LM head in a packed model (the LM head itself when unpacked): hidden (..., D)
    /// of that run only → logits (..., V).
    pub fn lm_head_of(&self, p: usize, hidden: &Tensor) -> Result<Tensor> {
        match self.pack {
            1 => self.lm_head(hidden),
            _ => self.lm_head.run(p)?.forward(hidden),
        }
    }

    /// Mean cross-entropy of logits (N, V) against targets (N,) u32, in this model's backend.
    pub fn cross_entropy(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        ops::cross_entropy(self.backend, logits, targets)
    }

    /// Like [`Model::forward`] and also returns per-layer hidden states and values.
    pub fn forward_trace(&self, ids: &Tensor) -> Result<(Tensor, Trace)> {
        let mut trace = Trace {
            hidden: Vec::new(),
            values: Vec::new(),
            mixing: Vec::new(),
        };
        let logits = self.lm_head(&self.run(ids, None, Some(&mut trace))?)?;
        Ok((logits, trace))
    }

    /// Incremental decoding: ids (B,t_new) at positions `cache.len()..`, logits (B,t_new,V).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            bail!(
                "KvCache has {} layers, model has {}",
                cache.layers.len(),
                self.blocks.len()
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
        cache: Option<&mut KvCache>,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let pass = Pass {
            rope: self.rope.tables(start, t)?, // (T,d_h/2) each
            mask: causal_mask(start, t, self.dtype, &self.device)?, // (T,T_total)
            cache,
            trace,
            dtype: self.dtype,
            device: self.device.clone(),
        };
        let mut net = Net {
            blocks: &self.blocks,
            pass,
        };
        let x = self.embed(ids)?; // (B,T,D)
        net.record(&x);
        let x = self.connection.run(&mut net, x)?; // the variant's depth loop
        self.norm.forward(&x) // (B,T,D)
    }

    /// ids (B,T) → embeddings (B,T,D); packed, rows are run-major (P·B, T) and row r of run
    /// r / B looks up its own run's table.
    #[allow(clippy::manual_is_multiple_of)] // MSRV
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        if self.pack == 1 {
            return self.embed_tokens.forward(ids);
        }
        let (rows, t) = ids.dims2()?;
        let w = self.embed_tokens.embeddings(); // (P,V,D)
        let (p, v, d) = w.dims3()?;
        if rows % p != 0 {
            bail!("packed model of {p} runs given {rows} rows (not a multiple)");
        }
        let b = rows / p;
        let offsets: Vec<u32> = (0..rows).map(|r| ((r / b) * v) as u32).collect();
        let offsets = Tensor::from_vec(offsets, (rows, 1), ids.device())?;
        let flat = ids.broadcast_add(&offsets)?.flatten_all()?; // (P·B·T,) rows of (P·V, D)
        w.reshape((p * v, d))?
            .index_select(&flat, 0)?
            .reshape((rows, t, d)) // (P·B,T,D)
    }

    /// The variant's mixing weights per layer ([`Connection::mixing_weights`]): LIMe's static
    /// routers as dense (R, (l+1)·R) matrices for l ≥ 1, DenseFormer's α; empty for llama.
    pub fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        self.connection.mixing_weights()
    }

    /// Heatmap rows of the variant's mixing weights ([`Connection::heatmap`]); for LIMe the
    /// paper's Figure 5. Empty for variants without any.
    pub fn router_heatmap(&self) -> Result<Vec<Vec<f64>>> {
        self.connection.heatmap(&self.cfg)
    }
}
