//! AdamW's update and the gradient norm in one pass.

use super::*;

// ------------------------------------------------------------------------------------------------
// AdamW: the optimizer's per-tensor update in one pass (harness::optim composes it otherwise).
// ------------------------------------------------------------------------------------------------

/// Σ x² of an f32 CPU tensor, summed in f64 in index order from 0 — exactly what
/// `t.to_dtype(F64)?.sqr()?.sum_all()?` computes on the CPU (candle's f64 sum is that sequential
/// loop), without the f64 copy and the squared tensor. `None` where the fused path does not apply.
pub fn sum_squares_f64(t: &Tensor) -> Result<Option<f64>> {
    if !usable(t) {
        return Ok(None);
    }
    with_host([t], |[x]| {
        let mut s = 0f64;
        for &v in x {
            let v = v as f64;
            s += v * v;
        }
        Ok(Some(s))
    })
}

/// The scalars of one AdamW update (see `harness::optim::AdamW::step`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Gradient multiplier (clipping).
    pub grad_scale: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Bias corrections 1 − β₁ᵗ, 1 − β₂ᵗ.
    pub bc1: f64,
    pub bc2: f64,
    pub eps: f64,
    /// This parameter's learning rate.
    pub lr: f64,
    /// Decoupled weight decay (0 = none).
    pub weight_decay: f64,
}

/// One AdamW update of f32 CPU tensors θ, g, m, v → (θ', m', v'), or `None` where the fused
/// kernel does not apply (the caller composes it). It performs the composed candle ops' f32
/// operations in their order (`t * s` is candle's affine `t·s + 0`, `t / s` is `t·(1/s) + 0`,
/// `t + e` is `t·1 + e`), so the results are the same values, in one pass instead of ~12
/// allocating ones:
/// g̃ = g·s; m' = β₁m + (1−β₁)g̃; v' = β₂v + (1−β₂)g̃²;
/// θ' = θ·(1 − lr·wd) − lr · (m'/bc1) / (√(v'/bc2) + ε).
pub fn adamw_update(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamWStep,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if ![theta, g, m, v].iter().all(|t| usable(t)) {
        return Ok(None);
    }
    let n = theta.elem_count();
    if [g, m, v].iter().any(|t| t.shape() != theta.shape()) {
        candle_core::bail!("adamw_update: shapes differ");
    }
    let f = |x: f64| x as f32;
    let (gs, b1, c1, b2, c2) = (
        f(h.grad_scale),
        f(h.beta1),
        f(1.0 - h.beta1),
        f(h.beta2),
        f(1.0 - h.beta2),
    );
    let (ibc1, ibc2, eps, lr) = (f(1.0 / h.bc1), f(1.0 / h.bc2), f(h.eps), f(h.lr));
    let decay = (h.weight_decay > 0.0).then(|| f(1.0 - h.lr * h.weight_decay));
    let (t2, m2, v2) = with_host([theta, g, m, v], |[ht, hg, hm, hv]| {
        let job = |(t2, (m2, v2)): (&mut [Uninit], (&mut [Uninit], &mut [Uninit])), off: usize| {
            simd(
                #[inline(always)]
                || {
                    for i in 0..t2.len() {
                        let j = off + i;
                        let gj = hg[j] * gs + 0.0;
                        let mj = (hm[j] * b1 + 0.0) + (gj * c1 + 0.0);
                        let vj = (hv[j] * b2 + 0.0) + ((gj * gj) * c2 + 0.0);
                        let den = (vj * ibc2 + 0.0).sqrt() * 1.0 + eps;
                        let u = (mj * ibc1 + 0.0) / den;
                        let th = match decay {
                            Some(d) => ht[j] * d + 0.0,
                            None => ht[j],
                        };
                        t2[i].write(th - (u * lr + 0.0));
                        m2[i].write(mj);
                        v2[i].write(vj);
                    }
                },
            )
        };
        const CHUNK: usize = 1 << 14;
        let (mut m2, mut v2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // SAFETY: the chunks cover all three outputs and each element of each is written.
        let t2 = unsafe {
            written(n, |t2| {
                let (ms, vs) = (
                    &mut m2.spare_capacity_mut()[..n],
                    &mut v2.spare_capacity_mut()[..n],
                );
                if n < PAR_MIN {
                    job((t2, (ms, vs)), 0);
                } else {
                    t2.par_chunks_mut(CHUNK)
                        .zip(ms.par_chunks_mut(CHUNK).zip(vs.par_chunks_mut(CHUNK)))
                        .enumerate()
                        .for_each(|(c, parts)| job(parts, c * CHUNK));
                }
            })
        };
        unsafe {
            m2.set_len(n);
            v2.set_len(n);
        }
        Ok((t2, m2, v2))
    })?;
    let (shape, dev) = (theta.shape(), theta.device());
    Ok(Some((
        Tensor::from_vec(t2, shape, dev)?,
        Tensor::from_vec(m2, shape, dev)?,
        Tensor::from_vec(v2, shape, dev)?,
    )))
}
