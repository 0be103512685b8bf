//! RMSNorm and RoPE.

use super::*;

// ------------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x²) + eps) · w over the last dim.
// ------------------------------------------------------------------------------------------------

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        zip_chunks(
            &mut y,
            d * 64,
            x,
            d * 64,
            #[inline(always)]
            |yc, xc| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let ms = xr.iter().map(|a| a * a).sum::<f32>() / d as f32;
                    let r = 1.0 / (ms + self.eps).sqrt();
                    for ((o, a), b) in yr.iter_mut().zip(xr).zip(w) {
                        *o = a * r * b;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        with_host([x, w, gy], |[hx, hw, hg]| self.grads(x, w, hx, hw, hg))
    }
}

impl RmsNormOp {
    /// dx, dw from host views of x, w and dy.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        hx: &[f32],
        hw: &[f32],
        hg: &[f32],
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = hw.len();
        let mut dx = vec![0f32; hx.len()];
        // dx = r·(w∘g) − x·r³·mean((w∘g)∘x);  dw = Σ_rows g∘x·r (partial sums per chunk).
        let dws: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * 64)
            .zip(hx.par_chunks(d * 64).zip(hg.par_chunks(d * 64)))
            .map(|(dc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                simd(
                    #[inline(always)]
                    || {
                        for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                            let ms = xr.iter().map(|a| a * a).sum::<f32>() / d as f32;
                            let r = 1.0 / (ms + self.eps).sqrt();
                            let dot = xr
                                .iter()
                                .zip(gr)
                                .zip(hw)
                                .map(|((a, g), w)| a * g * w)
                                .sum::<f32>()
                                / d as f32;
                            for i in 0..d {
                                dr[i] = r * hw[i] * gr[i] - xr[i] * r * r * r * dot;
                                dw[i] += gr[i] * xr[i] * r;
                            }
                        }
                    },
                );
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for part in &dws {
            for (a, b) in dw.iter_mut().zip(part) {
                *a += b;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// Fused RMSNorm over the last dim; `w` has that dim's size.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

// ------------------------------------------------------------------------------------------------
// RoPE ("rotate half"): (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin) per position.
// ------------------------------------------------------------------------------------------------

struct RopeOp {
    /// (T, d/2) tables.
    cos: std::sync::Arc<Vec<f32>>,
    sin: std::sync::Arc<Vec<f32>>,
    /// Rotate by −θ (the backward of a rotation is its inverse).
    inverse: bool,
}

#[inline(always)]
pub(super) fn rope_rows(
    x: &[f32],
    y: &mut [f32],
    t: usize,
    d: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = d / 2;
    let sgn = if inverse { -1.0 } else { 1.0 };
    for (row, (xr, yr)) in x.chunks(d).zip(y.chunks_mut(d)).enumerate() {
        let p = row % t;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for i in 0..half {
            let (a, b) = (xr[i], xr[i + half]);
            yr[i] = a * c[i] - sgn * b * s[i];
            yr[i + half] = b * c[i] + sgn * a * s[i];
        }
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let dims = l.shape().dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if self.cos.len() != t * d / 2 {
            candle_core::bail!(
                "rope: table size {} does not match T={t}, d={d}",
                self.cos.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        zip_chunks(
            &mut y,
            t * d,
            x,
            t * d,
            #[inline(always)]
            |yc, xc| rope_rows(xc, yc, t, d, &self.cos, &self.sin, self.inverse),
        );
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        let inv = RopeOp {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        Ok(Some(gy.contiguous()?.apply_op1(inv)?))
    }
}

/// Fused RoPE of x (..., T, d) with cos/sin tables (T, d/2) (f32).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let op = RopeOp {
        cos: std::sync::Arc::new(host(cos)?),
        sin: std::sync::Arc::new(host(sin)?),
        inverse: false,
    };
    x.contiguous()?.apply_op1(op)
}
