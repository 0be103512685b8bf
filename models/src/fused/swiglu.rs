//! The SwiGLU product.

use super::*;

// ------------------------------------------------------------------------------------------------
// SwiGLU product: y = silu(a) · b with silu(a) = a·σ(a) (a = W_gate x, b = W_up x).
// Composed, this is silu (exp per element), mul, and a backward of five more elementwise ops,
// each a fresh tensor; here one pass forward and one backward.
// ------------------------------------------------------------------------------------------------

/// e^x in f32 without a libm call, so that loops over it vectorise: x·log2(e) = i + f with i the
/// nearest integer and |f| ≤ ½; 2^f = e^(f·ln 2) by its degree-6 Taylor polynomial (relative
/// error < 2e-7: |f·ln 2| ≤ 0.347), 2^i from the exponent bits. x is clamped to [−87, 88].
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: (t + ROUND) − ROUND rounds t to an integer
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    let i = (t + ROUND) - ROUND;
    let y = (t - i) * std::f32::consts::LN_2;
    let p = 1.0
        + y * (1.0
            + y * (1.0 / 2.0
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0))))));
    f32::from_bits(((i as i32 + 127) << 23) as u32) * p
}

#[inline(always)]
pub(super) fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-a))
}

/// An output element not yet written.
pub(super) type Uninit = MaybeUninit<f32>;

/// A vector of `n` f32 filled by `fill`, without zeroing it first (a memset per output was ~3%
/// of a small model's training step).
///
/// # Safety
/// `fill` must write every one of the `n` elements.
pub(super) unsafe fn written(n: usize, fill: impl FnOnce(&mut [Uninit])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller guarantees that `fill` initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (slice(s1, l1)?, slice(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "swiglu: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let job = |(y, (a, b)): (&mut [Uninit], (&[f32], &[f32]))| {
            simd(
                #[inline(always)]
                || {
                    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                        y.write(a * sigmoid(a) * b);
                    }
                },
            )
        };
        const CHUNK: usize = 1 << 14;
        // SAFETY: the chunks cover the output and every element is written.
        let y = unsafe {
            written(a.len(), |y| {
                if y.len() < PAR_MIN {
                    job((y, (a, b)));
                } else {
                    y.par_chunks_mut(CHUNK)
                        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                        .for_each(job);
                }
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // da = g·b·σ(a)·(1 + a·(1 − σ(a))),  db = g·a·σ(a).
        let (da, db) = with_host([a, b, gy], |[ha, hb, hg]| {
            const CHUNK: usize = 1 << 14;
            let mut db = Vec::with_capacity(ha.len());
            // SAFETY: the chunks cover both outputs and every element of each is written.
            let da = unsafe {
                written(ha.len(), |da| {
                    da.par_chunks_mut(CHUNK)
                        .zip(db.spare_capacity_mut()[..ha.len()].par_chunks_mut(CHUNK))
                        .zip(
                            ha.par_chunks(CHUNK)
                                .zip(hb.par_chunks(CHUNK).zip(hg.par_chunks(CHUNK))),
                        )
                        .for_each(|((da, db), (a, (b, g)))| {
                            simd(
                                #[inline(always)]
                                || {
                                    for i in 0..da.len() {
                                        let s = sigmoid(a[i]);
                                        da[i].write(g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s)));
                                        db[i].write(g[i] * a[i] * s);
                                    }
                                },
                            )
                        })
                })
            };
            unsafe { db.set_len(ha.len()) };
            Ok((da, db))
        })?;
        Ok((
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// silu(a) · b, f32 CPU (the reference is `a.silu()? * b`).
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    require("swiglu", &[a, b])?;
    a.contiguous()?.apply_op2(&b.contiguous()?, SwiGlu)
}
