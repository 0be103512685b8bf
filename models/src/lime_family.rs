//! What the LIMe router variants (`lime`, `lime-dynamic`, the ablations) share beside the buffer
//! and loop of [`crate::lime`]: the [`Mix`] trait a router implements, the constructor of the
//! family's connection, and the router parameters' names, init, optimizer group and counts.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::config::Config;
use crate::init::ParamGroup;
use crate::lime::LimeConnection;
use crate::ops::Backend;
use crate::variant::{Connection, ExtraFlops};

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
