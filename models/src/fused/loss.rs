//! Cross-entropy.

use super::*;

// ------------------------------------------------------------------------------------------------
// Cross-entropy: mean over rows of logsumexp(z) − z[target].
// ------------------------------------------------------------------------------------------------

struct CrossEntropyOp {
    targets: std::sync::Arc<Vec<u32>>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = slice(s, l)?;
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!("cross_entropy: {} targets for {n} rows", self.targets.len());
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross_entropy: target {t} out of range for {v} classes");
        }
        let total: f64 = z
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let (m, s) = simd(
                    #[inline(always)]
                    || max_and_sum_exp(row),
                );
                (m + s.ln() - row[t as usize]) as f64
            })
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, z: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let n = z.dim(0)?;
        let scale = g.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        with_host([z], |[hz]| self.grad(z, hz, scale)).map(Some)
    }
}

impl CrossEntropyOp {
    /// dz from a host view of the logits z (N, V) and the upstream gradient / N.
    fn grad(&self, z: &Tensor, hz: &[f32], scale: f32) -> Result<Tensor> {
        let (n, v) = z.dims2()?;
        let mut dz = vec![0f32; hz.len()];
        dz.par_chunks_mut(v)
            .zip(hz.par_chunks(v))
            .zip(self.targets.par_iter())
            .for_each(|((dr, row), &t)| {
                simd(
                    #[inline(always)]
                    || {
                        // Separate passes so that each vectorises.
                        let m = lanes(row, f32::NEG_INFINITY, f32::max);
                        for (o, x) in dr.iter_mut().zip(row) {
                            *o = exp_f32(x - m);
                        }
                        let inv = scale / lanes(dr, 0.0, |a, b| a + b);
                        for o in dr.iter_mut() {
                            *o *= inv;
                        }
                    },
                );
                dr[t as usize] -= scale;
            });
        Tensor::from_vec(dz, (n, v), z.device())
    }
}

/// A row's maximum m and Σ e^(z − m), each over 8 interleaved lanes so that it vectorises.
#[inline(always)]
fn max_and_sum_exp(row: &[f32]) -> (f32, f32) {
    let m = lanes(row, f32::NEG_INFINITY, f32::max);
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += exp_f32(c[k] - m);
        }
    }
    let mut s = tail.iter().fold(0.0, |a, &x| a + exp_f32(x - m));
    for a in acc {
        s += a;
    }
    (m, s)
}

/// Mean cross-entropy of logits (N, V) f32 CPU against targets (N,) u32 (the reference is
/// `candle_nn::loss::cross_entropy`, [`crate::ops::cross_entropy`]).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    require("cross_entropy", &[logits])?;
    let t = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    logits.contiguous()?.apply_op1(CrossEntropyOp {
        targets: std::sync::Arc::new(t),
    })
}
