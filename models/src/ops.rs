//! The numerical building blocks of every model, in two implementations chosen once per model:
//! [`Backend::Reference`], plain composed candle ops (any dtype and device: the f64 gradient
//! checks, CUDA, and the readable definition), and [`Backend::Fused`], the f32 CPU kernels of
//! [`crate::fused`] with hand-written backward passes, tested against the reference
//! (`tests/models_fused.rs`). [`Backend::resolve`] turns `Fused` into `Reference` where the
//! kernels do not exist (not f32, not the CPU), so a built model never decides per call.
//!
//! Only primitive candle ops are used on the reference side (`shared/notes/candle.md` §1): the
//! fused candle-nn `rms_norm`, `softmax_last_dim` and `rope*` kernels have no backward on CPU.

use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Which implementation of the building blocks a model runs (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Composed candle ops: the reference.
    Reference,
    /// The fused f32 CPU kernels where they apply (the default).
    #[default]
    Fused,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Reference, Backend::Fused];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Fused => "fused",
        }
    }

    pub fn from_name(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }

    /// The backend a model of `dtype` on `device` actually runs: the fused kernels are f32 CPU.
    pub fn resolve(self, dtype: DType, device: &Device) -> Backend {
        match self {
            Backend::Fused if dtype == DType::F32 && device.is_cpu() => Backend::Fused,
            _ => Backend::Reference,
        }
    }

    pub fn is_fused(&self) -> bool {
        *self == Backend::Fused
    }
}

/// RMSNorm over the last dim: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(b: Backend, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if w.rank() == 2 {
        // Packed (crate::pack): w (P, D), x (P·B, …, D) run-major; normalise, then each run's gain.
        let (p, d) = w.dims2()?;
        let unit = rms_norm(b, x, &Tensor::ones(d, w.dtype(), w.device())?, eps)?;
        let scaled = unit.reshape((p, (), d))?.broadcast_mul(&w.unsqueeze(1)?)?; // (P, rows, D)
        return scaled.reshape(x.shape());
    }
    if b.is_fused() {
        return crate::fused::rms_norm(x, w, eps);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let x = x.broadcast_div(&(ms + eps)?.sqrt()?)?; // (..., D)
    x.broadcast_mul(w)
}

/// Rotary embedding, "rotate half" convention: x (B,n,T,d_h), cos/sin (T,d_h/2) → (B,n,T,d_h).
pub fn rope(b: Backend, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if b.is_fused() {
        return crate::fused::rope(x, cos, sin);
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

/// Causal grouped-query attention: q (B,H,T,d_h), k and v (B,R,T_total,d_h) (query head
/// n = r·g + j uses kv head r), `mask` (T, T_total) additive → (B,H,T,d_h).
pub fn attention(
    b: Backend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    if b.is_fused() {
        // One kernel per (batch, kv head): no T×T mask or score copies.
        return crate::fused::causal_attention(q, k, v, scale);
    }
    let (bs, nh, t, dh) = q.dims4()?;
    let (r, tk) = (k.dim(1)?, k.dim(2)?);
    let g = nh / r;
    let (k, v) = (k.contiguous()?, v.contiguous()?); // cache views are strided
    let q = q.reshape((bs, r, g * t, dh))?; // (B,R,g·T,d_h)
    let scores = (q.matmul(&k.t()?)? * scale)?; // (B,R,g·T,T_total)
    let scores = scores.reshape((bs, nh, t, tk))?.broadcast_add(mask)?; // (B,H,T,T_total)
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?; // (B,H,T,T_total)
    let y = probs.reshape((bs, r, g * t, tk))?.matmul(&v)?; // (B,R,g·T,d_h)
    y.reshape((bs, nh, t, dh)) // (B,H,T,d_h)
}

/// SwiGLU's product silu(a) · b.
pub fn swiglu(b: Backend, a: &Tensor, up: &Tensor) -> Result<Tensor> {
    if b.is_fused() {
        return crate::fused::swiglu(a, up);
    }
    a.silu()? * up
}

/// Depth mixing out (R, N) = w (R, S) · x (S, N) with R, S small and N large.
pub fn depth_mix(b: Backend, w: &Tensor, x: &Tensor) -> Result<Tensor> {
    if b.is_fused() {
        return crate::fused::depth_mix(w, x);
    }
    w.matmul(x)
}

/// Mean cross-entropy of logits (N, V) against targets (N,) u32.
pub fn cross_entropy(b: Backend, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if b.resolve(logits.dtype(), logits.device()).is_fused() {
        return crate::fused::cross_entropy(logits, targets);
    }
    candle_nn::loss::cross_entropy(logits, targets)
}

/// Canon's residual causal depthwise convolution along the sequence: x (B,T,C) plus, per channel,
/// Σ_{j<k} w[c,j] · ctx[t+j] over ctx = [past | x] (past: the k − 1 inputs before x, (B,k−1,C);
/// `None` for k = 1), w (C,k). Returns (B,T,C).
pub fn causal_conv(b: Backend, past: Option<&Tensor>, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let (true, Some(p)) = (b.is_fused(), past) {
        return crate::fused::causal_conv(p, x, w);
    }
    let (k, t) = (w.dim(1)?, x.dim(1)?);
    let ctx = match past {
        Some(p) => Tensor::cat(&[p, x], 1)?, // (B, k−1+T, C)
        None => x.clone(),
    };
    let mut y = x.clone(); // the residual
    for j in 0..k {
        let tap = w.narrow(1, j, 1)?.squeeze(1)?; // (C,)
        y = (y + ctx.narrow(1, j, t)?.broadcast_mul(&tap)?)?; // x[t − (k−1) + j] · w[:, j]
    }
    Ok(y)
}
