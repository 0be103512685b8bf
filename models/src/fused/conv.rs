//! Canon's residual causal depthwise convolution along the sequence.

use super::*;

// ------------------------------------------------------------------------------------------------
// y[b,t,c] = x[b,t,c] + Σ_{j<k} W[c,j] · ctx[b,t+j,c],  ctx = [past (k−1 positions) | x]
// Composed, every tap is a narrow, a broadcast product and an add, each a fresh (B,T,C) tensor,
// and the backward of each narrow pads a zero tensor of the context's size (6× llama's step at
// the default shape); here one pass forward and one backward. The sums run in the composed
// order (the residual, then taps 0 … k−1), so the forward is bit-identical to it.
// ------------------------------------------------------------------------------------------------

struct CausalConv {
    k: usize,
}

/// (B, T, C, k) of the operands past (B,k−1,C), x (B,T,C), w (C,k).
fn dims(past: &Shape, x: &Shape, w: &Shape) -> Result<(usize, usize, usize, usize)> {
    let (b, t, c) = x.dims3()?;
    let (wc, k) = w.dims2()?;
    if k < 2 || wc != c || past.dims() != [b, k - 1, c] {
        candle_core::bail!(
            "causal conv: past {:?}, x {:?}, w {:?} (k ≥ 2, past (B,k−1,C), w (C,k))",
            past.dims(),
            x.dims(),
            w.dims()
        );
    }
    Ok((b, t, c, k))
}

/// Row `s` of the context of one sequence: past rows 0 … k−2, then x's.
#[inline(always)]
fn ctx_row<'a>(past: &'a [f32], x: &'a [f32], k: usize, c: usize, s: usize) -> &'a [f32] {
    match s < k - 1 {
        true => &past[s * c..][..c],
        false => &x[(s + 1 - k) * c..][..c],
    }
}

/// W (C,k) as its taps (k, C): each tap's row is contiguous over channels.
fn taps(w: &[f32], c: usize, k: usize) -> Vec<f32> {
    (0..k)
        .flat_map(|j| (0..c).map(move |ch| w[ch * k + j]))
        .collect()
}

impl CustomOp3 for CausalConv {
    fn name(&self) -> &'static str {
        "fused-causal-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, c, k) = dims(l1.shape(), l2.shape(), l3.shape())?;
        let (past, x, w) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let wt = taps(w, c, k);
        let job = |(bi, y): (usize, &mut [Uninit])| {
            let (p, xs) = (
                &past[bi * (k - 1) * c..][..(k - 1) * c],
                &x[bi * t * c..][..t * c],
            );
            let mut acc = vec![0f32; c];
            simd(
                #[inline(always)]
                || {
                    for (ti, row) in y.chunks_mut(c).enumerate() {
                        acc.copy_from_slice(&xs[ti * c..][..c]); // the residual
                        for (j, wj) in wt.chunks(c).enumerate() {
                            let src = ctx_row(p, xs, k, c, ti + j);
                            for ((a, &w), &s) in acc.iter_mut().zip(wj).zip(src) {
                                *a += w * s;
                            }
                        }
                        for (o, &a) in row.iter_mut().zip(&acc) {
                            o.write(a);
                        }
                    }
                },
            )
        };
        // SAFETY: the per-sequence chunks cover the output and every element is written.
        let y = unsafe {
            written(b * t * c, |y| {
                if y.len() < PAR_MIN {
                    y.chunks_mut(t * c).enumerate().for_each(job);
                } else {
                    y.par_chunks_mut(t * c).enumerate().for_each(job);
                }
            })
        };
        Ok((CpuStorage::F32(y), l2.shape().clone()))
    }

    fn bwd(
        &self,
        past: &Tensor,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, c, k) = dims(past.shape(), x.shape(), w.shape())?;
        debug_assert_eq!(k, self.k);
        // dx[s] = gy[s] + Σ_j W[:,j] ⊙ gy[s + k−1 − j]   (context row s + k−1 is x's row s)
        // dW[c,j] = Σ_{b,t} gy[b,t,c] · ctx[b,t+j,c]      (per-sequence partials, summed in order)
        let (dx, dw) = with_host([past, x, w, gy], |[hp, hx, hw, hg]| {
            let wt = taps(hw, c, k);
            let mut partial = vec![0f32; b * k * c]; // (B, k, C)
            let job = |(bi, (dx, part)): (usize, (&mut [Uninit], &mut [f32]))| {
                let p = &hp[bi * (k - 1) * c..][..(k - 1) * c];
                let (xs, g) = (&hx[bi * t * c..][..t * c], &hg[bi * t * c..][..t * c]);
                let mut acc = vec![0f32; c];
                simd(
                    #[inline(always)]
                    || {
                        for s in 0..t {
                            acc.copy_from_slice(&g[s * c..][..c]);
                            for (j, wj) in wt.chunks(c).enumerate() {
                                // Output row t_out = s + k−1 − j reads context row s + k−1.
                                let Some(to) = (s + k - 1).checked_sub(j).filter(|&to| to < t)
                                else {
                                    continue;
                                };
                                for ((a, &w), &gg) in acc.iter_mut().zip(wj).zip(&g[to * c..][..c])
                                {
                                    *a += w * gg;
                                }
                            }
                            for (o, &a) in dx[s * c..][..c].iter_mut().zip(&acc) {
                                o.write(a);
                            }
                        }
                        for (j, pj) in part.chunks_mut(c).enumerate() {
                            for ti in 0..t {
                                let src = ctx_row(p, xs, k, c, ti + j);
                                for ((a, &gg), &sv) in pj.iter_mut().zip(&g[ti * c..][..c]).zip(src)
                                {
                                    *a += gg * sv;
                                }
                            }
                        }
                    },
                )
            };
            // SAFETY: the per-sequence chunks cover dx and every element is written.
            let dx = unsafe {
                written(b * t * c, |dx| {
                    let it = dx.chunks_mut(t * c).zip(partial.chunks_mut(k * c));
                    if b * t * c < PAR_MIN {
                        it.enumerate().for_each(job);
                    } else {
                        dx.par_chunks_mut(t * c)
                            .zip(partial.par_chunks_mut(k * c))
                            .enumerate()
                            .for_each(job);
                    }
                })
            };
            // Sum the partials over sequences in a fixed order (any thread count, same bits).
            let mut dw = vec![0f32; c * k];
            for part in partial.chunks(k * c) {
                for (j, pj) in part.chunks(c).enumerate() {
                    for (ch, &v) in pj.iter().enumerate() {
                        dw[ch * k + j] += v;
                    }
                }
            }
            Ok((dx, dw))
        })?;
        Ok((
            None, // the past inputs: zeros in training, the decoding cache otherwise
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// x (B,T,C) + the causal depthwise convolution of [past | x] with w (C,k), k ≥ 2, past
/// (B,k−1,C) — f32 CPU. No gradient flows to `past`.
pub fn causal_conv(past: &Tensor, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    require("causal conv", &[past, x, w])?;
    let k = w.dim(1)?;
    past.contiguous()?
        .apply_op3(&x.contiguous()?, &w.contiguous()?, CausalConv { k })
}
