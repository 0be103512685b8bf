//! Depth mixing (a LIMe router's product).

use super::*;

// ------------------------------------------------------------------------------------------------
// Depth mixing: out (R, N) = W (R, S) · X (S, N) with R, S tiny (a LIMe router) and N huge.
// A GEMM with 2-4 output rows is far from its efficient shape; this is a memory-bound loop.
// ------------------------------------------------------------------------------------------------

struct MixOp;

/// Columns per rayon task. Each task runs its products as single-threaded GEMMs on its column
/// span. (A first version used axpy loops; its backward reduced dW with a scalar loop-carried
/// sum and took 2.5–4x the time of these GEMMs: 12% of a `medium` LIMe step, perf.)
const MIX_SPAN: usize = 1 << 13;

impl CustomOp2 for MixOp {
    fn name(&self) -> &'static str {
        "fused-depth-mix"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (r, s) = l1.shape().dims2()?;
        let (s2n, n) = l2.shape().dims2()?;
        if s != s2n {
            candle_core::bail!("depth mix: W is {r}x{s} but X has {s2n} rows");
        }
        let (w, x) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut out = vec![0f32; r * n];
        let o = Out(out.as_mut_ptr());
        (0..n.div_ceil(MIX_SPAN)).into_par_iter().for_each(|c| {
            let (lo, m) = (c * MIX_SPAN, MIX_SPAN.min(n - c * MIX_SPAN));
            // out[:, lo..lo+m] = W (R×S) · X[:, lo..lo+m] (S×m).
            // SAFETY: this task alone writes columns lo..lo+m of the R rows of `out`.
            unsafe { mm_raw(r, m, s, o.at(lo), n, false, w, s, 1, &x[lo..], n, 1, 1.0) };
        });
        Ok((CpuStorage::F32(out), Shape::from((r, n))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        x: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (r, s) = w.dims2()?;
        let n = x.dim(1)?;
        let (dw, dx) = with_host([w, x, g], |[hw, hx, hg]| Ok(mix_grads(r, s, n, hw, hx, hg)))?;
        Ok((
            Some(Tensor::from_vec(dw, (r, s), w.device())?),
            Some(Tensor::from_vec(dx, (s, n), x.device())?),
        ))
    }
}

/// dX = Wᵀ G (S×N) and dW = G Xᵀ (R×S, f64 sum of per-span partial products).
fn mix_grads(
    r: usize,
    s: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
    g: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; s * n];
    let o = Out(dx.as_mut_ptr());
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(MIX_SPAN))
        .into_par_iter()
        .map(|c| {
            let (lo, m) = (c * MIX_SPAN, MIX_SPAN.min(n - c * MIX_SPAN));
            // dX[:, span] = Wᵀ (S×R) · G[:, span] (R×m).
            // SAFETY: this task alone writes columns lo..lo+m of the S rows of dX.
            unsafe { mm_raw(s, m, r, o.at(lo), n, false, w, 1, s, &g[lo..], n, 1, 1.0) };
            // dW partial = G[:, span] (R×m) · X[:, span]ᵀ (m×S).
            let mut dw = vec![0f32; r * s];
            mm(r, s, m, &mut dw, false, &g[lo..], n, 1, &x[lo..], 1, n, 1.0);
            dw
        })
        .collect();
    (sum_partials(&parts, r * s), dx)
}

/// The element-wise sum of per-task partial results of length `len` (a dW per column span or
/// batch row), added in f64 in task order, so the total does not depend on rayon's scheduling.
pub(super) fn sum_partials(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0f64; len];
    for part in parts {
        for (a, b) in sum.iter_mut().zip(part) {
            *a += *b as f64;
        }
    }
    sum.into_iter().map(|v| v as f32).collect()
}

/// out (R, N) = w (R, S) · x (S, N), f32 CPU (the reference is `w.matmul(x)`).
pub fn depth_mix(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    require("depth_mix", &[w, x])?;
    w.contiguous()?.apply_op2(&x.contiguous()?, MixOp)
}
