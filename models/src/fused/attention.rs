//! Causal grouped-query attention with a hand-written backward.

use super::*;

// ------------------------------------------------------------------------------------------------
// Causal attention (grouped-query): y_h = softmax(scale · q_h k_rᵀ + causal) v_r, r = h / (H/R).
// ------------------------------------------------------------------------------------------------

struct CausalAttention {
    scale: f32,
}

/// Shapes of a (B,H,Tq,d) / (B,R,Tk,d) problem.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    r: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn new(q: &Shape, k: &Shape) -> Result<Self> {
        let (b, h, tq, d) = q.dims4()?;
        let (b2, r, tk, d2) = k.dims4()?;
        if b != b2 || d != d2 || r == 0 || h % r != 0 || tk < tq {
            candle_core::bail!("causal_attention: bad shapes q {q:?} k {k:?}");
        }
        Ok(Self { b, h, r, tq, tk, d })
    }
    fn g(&self) -> usize {
        self.h / self.r
    }
}

/// Row-normalised causal probabilities P (tq×tk) of one head into `p`; query i sees keys
/// j ≤ i + (tk − tq).
fn probs(dm: Dims, scale: f32, q: &[f32], k: &[f32], p: &mut [f32]) {
    let (tq, tk, d) = (dm.tq, dm.tk, dm.d);
    mm(tq, tk, d, p, false, q, d, 1, k, 1, d, 1.0); // p = q kᵀ
    simd(
        #[inline(always)]
        || softmax_rows(tq, tk, scale, p),
    )
}

/// Scaled causal softmax of each row of `p` (tq×tk) in place.
#[inline(always)]
pub(super) fn softmax_rows(tq: usize, tk: usize, scale: f32, p: &mut [f32]) {
    let off = tk - tq;
    for i in 0..tq {
        let (live, dead) = p[i * tk..(i + 1) * tk].split_at_mut(i + off + 1);
        // Separate passes so that each one vectorises (libm's exp and a running sum do not).
        for x in live.iter_mut() {
            *x *= scale;
        }
        let m = lanes(live, f32::NEG_INFINITY, f32::max);
        for x in live.iter_mut() {
            *x = exp_f32(*x - m);
        }
        let inv = 1.0 / lanes(live, 0.0, |a, b| a + b);
        for x in live.iter_mut() {
            *x *= inv;
        }
        dead.fill(0.0);
    }
}

/// A reduction of `v` with `f` over 8 interleaved accumulators (so that it vectorises), then
/// across them.
#[inline(always)]
pub(super) fn lanes(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let mut r = tail.iter().fold(init, |a, &b| f(a, b));
    for a in acc {
        r = f(r, a);
    }
    r
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
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
        let dm = Dims::new(l1.shape(), l2.shape())?;
        if l3.shape() != l2.shape() {
            candle_core::bail!("causal_attention: k and v shapes differ");
        }
        let q = slice(s1, l1)?;
        let ((k, ks), (v, vs)) = (head_slices(s2, l2)?, head_slices(s3, l3)?);
        let (g, tq, tk, d) = (dm.g(), dm.tq, dm.tk, dm.d);
        let mut y = vec![0f32; dm.b * dm.h * tq * d];
        // One task per (batch, kv head): its g query heads are contiguous in q and y.
        let head = |p: &mut Vec<f32>, (br, yg): (usize, &mut [f32])| {
            let (ko, vo) = (br * ks, br * vs);
            for j in 0..g {
                let qo = (br * g + j) * tq * d;
                probs(dm, self.scale, &q[qo..qo + tq * d], &k[ko..ko + tk * d], p);
                mm(
                    tq,
                    d,
                    tk,
                    &mut yg[j * tq * d..(j + 1) * tq * d],
                    false,
                    p,
                    tk,
                    1,
                    &v[vo..vo + tk * d],
                    d,
                    1,
                    1.0,
                );
            }
        };
        let scratch = || vec![0f32; tq * tk];
        if y.len() * tk < PAR_MIN {
            let mut p = scratch();
            y.chunks_mut(g * tq * d)
                .enumerate()
                .for_each(|job| head(&mut p, job));
        } else {
            y.par_chunks_mut(g * tq * d)
                .enumerate()
                .for_each_init(scratch, head);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::new(q.shape(), k.shape())?;
        with_host([q, k, v, y, gy], |[hq, hk, hv, hy, hg]| {
            self.grads(dm, q, k, v, [hq, hk, hv, hy, hg])
        })
    }
}

impl CausalAttention {
    /// dQ, dK, dV from the saved inputs (host views of q, k, v, y and dY).
    #[allow(clippy::type_complexity)]
    fn grads(
        &self,
        dm: Dims,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        [hq, hk, hv, hy, hg]: [&[f32]; 5],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, tq, tk, d) = (dm.g(), dm.tq, dm.tk, dm.d);
        let mut dq = vec![0f32; hq.len()];
        let mut dk = vec![0f32; hk.len()];
        let mut dv = vec![0f32; hv.len()];
        let scale = self.scale;
        dq.par_chunks_mut(g * tq * d)
            .zip(dk.par_chunks_mut(tk * d).zip(dv.par_chunks_mut(tk * d)))
            .enumerate()
            .for_each_init(
                || (vec![0f32; tq * tk], vec![0f32; tq * tk]),
                |(p, dp), (br, (dqg, (dkr, dvr)))| {
                    let kv = br * tk * d;
                    let (kr, vr) = (&hk[kv..kv + tk * d], &hv[kv..kv + tk * d]);
                    for j in 0..g {
                        let qo = (br * g + j) * tq * d;
                        let (qh, yh, gh) = (
                            &hq[qo..qo + tq * d],
                            &hy[qo..qo + tq * d],
                            &hg[qo..qo + tq * d],
                        );
                        probs(dm, scale, qh, kr, p);
                        // dV += Pᵀ dY
                        mm(tk, d, tq, dvr, true, p, 1, tk, gh, d, 1, 1.0);
                        // dP = dY Vᵀ
                        mm(tq, tk, d, dp, false, gh, d, 1, vr, 1, d, 1.0);
                        // dS = P ∘ (dP − rowsum(dY ∘ Y)), times the score scale.
                        simd(
                            #[inline(always)]
                            || {
                                for i in 0..tq {
                                    let di: f32 = gh[i * d..(i + 1) * d]
                                        .iter()
                                        .zip(&yh[i * d..(i + 1) * d])
                                        .map(|(a, b)| a * b)
                                        .sum();
                                    for (x, pp) in dp[i * tk..(i + 1) * tk]
                                        .iter_mut()
                                        .zip(&p[i * tk..(i + 1) * tk])
                                    {
                                        *x = pp * (*x - di) * scale;
                                    }
                                }
                            },
                        );
                        // dQ = dS K ; dK += dSᵀ Q
                        mm(
                            tq,
                            d,
                            tk,
                            &mut dqg[j * tq * d..(j + 1) * tq * d],
                            false,
                            dp,
                            tk,
                            1,
                            kr,
                            d,
                            1,
                            1.0,
                        );
                        mm(tk, d, tq, dkr, true, dp, 1, tk, qh, d, 1, 1.0);
                    }
                },
            );
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// K or V (B,R,Tk,d) as one slice from its first element and the offset between consecutive
/// (batch, kv head) blocks: each block's Tk×d rows must be contiguous, the blocks evenly spaced
/// (a contiguous tensor, or a narrow along Tk of one, such as a preallocated decoding cache).
fn head_slices<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let (st, dims) = (l.stride(), l.dims());
    if !heads_strided(dims, st) {
        candle_core::bail!("fused op: k/v blocks must be row-contiguous and evenly spaced");
    }
    let all = s.as_slice::<f32>()?;
    let start = l.start_offset();
    let block = dims[2] * dims[3];
    let n = dims[0] * dims[1];
    let end = start + if n == 0 { 0 } else { (n - 1) * st[1] + block };
    Ok((&all[start..end], st[1]))
}

/// Whether a (B,R,T,d) layout is readable by [`head_slices`] without a copy.
fn heads_strided(dims: &[usize], st: &[usize]) -> bool {
    dims.len() == 4
        && (dims[3] <= 1 || st[3] == 1)
        && (dims[2] <= 1 || st[2] == dims[3])
        && st[1] >= dims[2] * dims[3]
        && (dims[0] <= 1 || st[0] == dims[1] * st[1])
}

/// K/V as they are when [`head_slices`] can read them, else a contiguous copy.
fn kv_operand(t: &Tensor) -> Result<Tensor> {
    if heads_strided(t.dims(), t.stride()) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Fused causal attention. q: (B,H,Tq,d), k/v: (B,R,Tk,d), Tk ≥ Tq (the last Tq of Tk positions
/// are the queries). Returns (B,H,Tq,d). Inputs must satisfy [`usable`]; k and v may be narrowed
/// views of a larger (B,R,capacity,d) buffer (the decoding cache) and are then read in place.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3(
        &kv_operand(k)?,
        &kv_operand(v)?,
        CausalAttention {
            scale: scale as f32,
        },
    )
}
