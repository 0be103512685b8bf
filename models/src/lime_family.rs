//! What the LIMe router variants (`lime`, `lime-dynamic`, the ablations) share: the connection
//! (the buffer of every layer's pre-RoPE K|V and the residual loop, [`LimeConnection`]), the
//! [`Mix`] trait a router implements (with [`Full`], the full static router), the constructor of
//! the family's connection, and the router parameters' names, init, optimizer group and counts.
//! Imports flow one way: each variant's file uses this one, never the reverse.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::init::ParamGroup;
use crate::ops::{self, Backend};
use crate::variant::{Config, Connection, ExtraFlops, Layers};

/// How one layer l ≥ 1 mixes its buffer.
pub trait Mix: std::fmt::Debug + Send + Sync {
    /// `all` (S,B,T,2d_h) of the layers so far, `x` (B,T,D) the block input → (R,B,T,2d_h).
    fn mix(&self, all: &Tensor, x: &Tensor, backend: Backend) -> Result<Tensor>;
    /// The static mixing as a dense (R, S) matrix over the whole buffer (diagnostics).
    fn dense(&self) -> Result<Tensor>;
    /// The (R, S) matrix when the mixing is exactly one full matrix (the in-place stack path).
    fn full(&self) -> Option<&Tensor> {
        None
    }
}

/// Builds a LIMe-family connection; `mix(l, vb)` creates layer l's router (l ≥ 1) under
/// `layers.{l}.attn.router`.
pub fn build(
    cfg: &Config,
    vb: &VarBuilder,
    backend: Backend,
    mix: impl Fn(usize, VarBuilder) -> Result<Box<dyn Mix>>,
) -> Result<Arc<dyn Connection>> {
    let mixes = (0..cfg.n_layers)
        .map(|l| match l {
            0 => Ok(None),
            _ => mix(l, vb.pp("layers").pp(l).pp("attn").pp("router")).map(Some),
        })
        .collect::<Result<Vec<_>>>()?;
    let stacked = backend.is_fused() && mixes.iter().flatten().all(|m| m.full().is_some());
    Ok(Arc::new(LimeConnection {
        mixes,
        n_kv_heads: cfg.n_kv_heads,
        backend,
        stacked,
    }))
}

/// For every layer l the mean |W_l| over each source layer j ≤ l (a block of R×R entries),
/// normalised to sum 1; row 0 is `[1]` (layer 0 sees only itself).
pub fn heatmap(weights: &[Tensor], r: usize) -> Result<Vec<Vec<f64>>> {
    let mut rows = vec![vec![1.0]];
    for w in weights {
        let w = w.abs()?.to_dtype(candle_core::DType::F64)?; // (R,(l+1)R)
        let mut row = (0..w.dim(1)? / r)
            .map(|j| w.narrow(1, j * r, r)?.mean_all()?.to_scalar::<f64>())
            .collect::<Result<Vec<f64>>>()?;
        let s: f64 = row.iter().sum();
        if s > 0.0 {
            row.iter_mut().for_each(|x| *x /= s);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Whether `name` is the router parameter `leaf` (`layers.{l}.attn.router.<leaf>`).
pub fn router_leaf(name: &str, leaf: &str) -> bool {
    name.contains(".router.") && name.rsplit('.').next() == Some(leaf)
}

/// Every router parameter is in [`ParamGroup::Router`].
pub fn router_group(name: &str) -> Option<ParamGroup> {
    name.contains(".router.").then_some(ParamGroup::Router)
}

/// U(−b, b) with b = sqrt(3 / S) for a (R, S) router (or (R, S, d_h) per channel), then the
/// current layer's (last) R×R block set to the identity.
pub fn identity_block_init(shape: &Shape, rng: &mut ChaCha8Rng) -> Result<Vec<f64>> {
    let dims = shape.dims();
    let (r, s, c) = match *dims {
        [r, s] => (r, s, 1),
        [r, s, c] => (r, s, c),
        _ => candle_core::bail!("router of shape {dims:?}, expected (R, S) or (R, S, d_h)"),
    };
    if s % r != 0 || s < r {
        candle_core::bail!("router of shape {dims:?}, expected (R, (l+1)·R, …)");
    }
    let mut w = uniform(shape.elem_count(), s, rng);
    for i in 0..r {
        for j in 0..r {
            for ch in 0..c {
                w[(i * s + (s - r) + j) * c + ch] = if i == j { 1.0 } else { 0.0 };
            }
        }
    }
    Ok(w)
}

/// n draws of U(−b, b), b = sqrt(3 / fan_in).
pub fn uniform(n: usize, fan_in: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let b = (3.0 / fan_in as f64).sqrt();
    (0..n).map(|_| rng.gen_range(-b..b)).collect()
}

/// Σ_{l=1}^{L-1} (l+1) = L(L+1)/2 − 1: the (layer, source-layer) blocks a full router mixes.
pub fn routed_blocks(n_layers: usize) -> u64 {
    let l = n_layers as u64;
    (l * (l + 1) / 2).saturating_sub(1)
}

pub fn sq(x: usize) -> u64 {
    (x * x) as u64
}

/// Router FLOPs of `macs` multiply-adds per token and routed channel (keys and values: 2·d_h).
pub fn router_flops(cfg: &Config, seq_len: usize, mode: FlopMode, macs: u64) -> ExtraFlops {
    let k = per_mac(mode) * seq_len as u64 * 2 * cfg.head_dim() as u64;
    ExtraFlops {
        router: k * macs,
        ..ExtraFlops::default()
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
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        let mut buf = Buffer::default();
        for l in 0..net.len() {
            let input = x.clone(); // the block input x_t (lime-dynamic's router reads it)
            let mut route = |k, v| self.route(l, k, v, &input, &mut buf); // ← the diff to llama
            x = net.block(l, &x, &mut route)?; // (B,T,D)
            net.record(&x);
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
