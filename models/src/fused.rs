//! Fused CPU kernels (f32) with hand-written backward passes.
//!
//! candle composes attention, RMSNorm, RoPE and cross-entropy from many small ops, each of which
//! allocates a fresh buffer and walks memory once; for the small models of this suite that is
//! where a training step spends its time (see BENCHMARKS.md). The kernels below do each of them in
//! one pass per row (rayon over rows/heads, `gemm` for the matrix products) and implement `bwd`, so
//! gradients flow exactly as through the composed ops — which they are tested against.
//!
//! They are used only for contiguous f32 tensors on the CPU ([`usable`]); every other case (f64
//! gradient checks, CUDA) takes the composed path, which stays the reference.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Runs `f` compiled for the widest SIMD level of this CPU: the kernels' loops are written
/// plainly, and `f` (inlined into a `#[target_feature]` function) is vectorised with AVX-512 or
/// AVX2 where the CPU has them, with SSE2 (the x86-64 baseline the binary is built for) otherwise.
/// The level is detected once. Results do not depend on it: the loops are plain IEEE arithmetic
/// (no fused multiply-add contraction, reductions keep their written order), so every level
/// computes the same bits. Call it per task (per row or chunk), inside rayon's closures.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match simd_level() {
            // SAFETY: the CPU has the features these functions are compiled with.
            SimdLevel::V4 => return unsafe { simd_v4(f) },
            SimdLevel::V3 => return unsafe { simd_v3(f) },
            SimdLevel::Base => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum SimdLevel {
    Base,
    V3,
    V4,
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> SimdLevel {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    let l = match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let l = if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                3
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                2
            } else {
                1
            };
            LEVEL.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    };
    match l {
        3 => SimdLevel::V4,
        2 => SimdLevel::V3,
        _ => SimdLevel::Base,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn simd_v4<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_v3<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The f32 GEMM kernel family `gemm` (candle's and ours) picks on this CPU at run time, as gemm
/// 0.19 decides it: AVX-512 where the CPU has it (our build enables gemm's `x86-v4` feature),
/// else AVX2+FMA, else scalar. For benchmark reports.
pub fn gemm_kernels() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "x86-v4 (AVX-512F)"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "x86-v3 (AVX2+FMA)"
        } else {
            "scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Whether the fused kernels apply to `t` (f32 on the CPU). Which implementation a model runs is
/// decided once, by its [`crate::Backend`]; the kernels refuse other tensors.
pub fn usable(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu)
}

/// Errors unless every tensor is f32 on the CPU.
fn require(op: &str, ts: &[&Tensor]) -> Result<()> {
    match ts.iter().find(|t| !usable(t)) {
        Some(t) => candle_core::bail!(
            "fused {op}: f32 CPU tensors only, got {:?} on {:?} (use the reference backend)",
            t.dtype(),
            t.device().location()
        ),
        None => Ok(()),
    }
}

/// Below this many output elements a kernel runs on the calling thread: handing a tiny job to the
/// rayon pool (an injection, a wake-up and a latch wait) costs more than the job itself. That is
/// the decoding case (batch 1, one new token), where it was ~35% of a token's time (perf).
const PAR_MIN: usize = 1 << 14;

/// `f(y_chunk, x_chunk)` over matching chunks of `y` and `x`, on the pool only for big jobs.
fn zip_chunks<F>(y: &mut [f32], yc: usize, x: &[f32], xc: usize, f: F)
where
    F: Fn(&mut [f32], &[f32]) + Sync + Send,
{
    // Each chunk runs under [`simd`]: `f`'s loops are vectorised for this CPU.
    if y.len() < PAR_MIN {
        y.chunks_mut(yc).zip(x.chunks(xc)).for_each(|(a, b)| {
            simd(
                #[inline(always)]
                || f(a, b),
            )
        });
    } else {
        y.par_chunks_mut(yc)
            .zip(x.par_chunks(xc))
            .for_each(|(a, b)| {
                simd(
                    #[inline(always)]
                    || f(a, b),
                )
            });
    }
}

/// The contiguous f32 data of a storage/layout pair.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let all = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Runs `f` on the f32 data of `ts` in place (read locks on their storage, no copy; only a
/// non-contiguous tensor is copied first). The backward passes read their saved inputs this
/// way: copying them to fresh host vectors cost a full pass over every activation (for LIMe's
/// depth mix, the whole K|V buffer per layer).
fn with_host<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> Result<R>,
) -> Result<R> {
    let owned: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut views: [&[f32]; N] = [&[]; N];
    for (view, (storage, layout)) in views.iter_mut().zip(&guards) {
        *view = match &**storage {
            candle_core::Storage::Cpu(c) => slice(c, layout)?,
            _ => candle_core::bail!("fused op: CPU tensors only"),
        };
    }
    f(views)
}

/// A raw output pointer shared by rayon tasks that write disjoint ranges of one buffer.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every user writes only ranges no other task touches (stated at each use).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `i` elements in (a method, so closures capture the whole `Out`).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// C (m×n) = alpha·C + beta·A·B with explicit row/column strides (all single-threaded: callers
/// parallelise over heads).
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    acc: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    beta: f32,
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: `c` holds the m×n result densely; the callers' shapes bound a and b.
    unsafe {
        mm_raw(
            m,
            n,
            k,
            c.as_mut_ptr(),
            n,
            acc,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            beta,
        )
    }
}

/// [`mm`] into a raw C with row stride `c_rs` (rows of a larger matrix, written by one task).
///
/// # Safety
/// `c` must be valid for writes at `i·c_rs + j` for i < m, j < n, and no other thread may touch
/// those elements meanwhile; a and b must cover every index their strides reach.
#[allow(clippy::too_many_arguments)]
unsafe fn mm_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: usize,
    acc: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        acc,
        a.as_ptr(),
        a_cs as isize,
        a_rs as isize,
        b.as_ptr(),
        b_cs as isize,
        b_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

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
fn softmax_rows(tq: usize, tk: usize, scale: f32, p: &mut [f32]) {
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
fn lanes(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
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
fn rope_rows(
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
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|x| (x - m).exp()).sum();
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
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for (o, x) in dr.iter_mut().zip(row) {
                    *o = (x - m).exp();
                    s += *o;
                }
                let inv = scale / s;
                for o in dr.iter_mut() {
                    *o *= inv;
                }
                dr[t as usize] -= scale;
            });
        Tensor::from_vec(dz, (n, v), z.device())
    }
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
fn sum_partials(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
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

// ------------------------------------------------------------------------------------------------
// LIMe's K|V stack: the buffer of every layer's pre-RoPE K|V rows without concatenation.
//
// With `Tensor::cat`, layer l copies the whole buffer of layers 0..l (O(L²) copies per step) and
// its backward splits and re-adds those gradients (O(L²) more); the K|V concatenation, permutes
// and narrows around it cost a few more copies per layer each way. Here one pass owns two growing
// stacks (keys, values), each (S, N) f32 with row s = (layer, kv head) and N = B·T·d_h columns
// ordered (b, t, c). [`stack_route`] takes a layer's k or v in the projection's layout
// (B,T,R,d_h), appends its R rows, and returns the routed tensor directly in attention's layout
// (B,R,T,d_h): W_l · stack for l ≥ 1, the layer's own rows for l = 0. Autograd sees each op with
// only the layer's own k or v as input, so the gradient that layer l sends to the rows of an
// earlier layer j is deposited in the stack's gradient rows, and op j adds it to its own input
// gradient. That is exact because
// backward visits op l before op j whenever l > j (op l consumes, through the residual stream, the
// output of op j): by the time op j runs, every later layer has deposited. Op j then zeroes the
// rows it collected, so a second backward over the same graph starts from zero again (tested);
// the composed `cat` path stays the reference (f64, GPU) and the two are tested equal.
// ------------------------------------------------------------------------------------------------

/// One forward pass's K|V stack (see above).
#[derive(Debug)]
pub struct KvStack {
    inner: std::sync::Mutex<StackInner>,
}

#[derive(Debug)]
struct StackInner {
    /// Row-major (rows, n).
    data: Vec<f32>,
    /// Gradient rows deposited by later layers (allocated at the first backward).
    grad: Vec<f32>,
    /// Row width: B·T·d_h.
    n: usize,
}

impl KvStack {
    /// A stack that will hold up to `rows` rows of width `n` without reallocating.
    pub fn with_capacity(rows: usize, n: usize) -> Self {
        Self {
            inner: std::sync::Mutex::new(StackInner {
                data: Vec::with_capacity(rows * n),
                grad: Vec::new(),
                n,
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, StackInner>> {
        self.inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("lime stack: poisoned lock".into()))
    }
}

/// The (B, T, R, d_h) shape of one layer's k or v.
#[derive(Clone, Copy, Debug)]
struct Btrd {
    b: usize,
    t: usize,
    r: usize,
    d: usize,
}

impl Btrd {
    fn of(shape: &Shape) -> Result<Self> {
        let (b, t, r, d) = shape.dims4()?;
        Ok(Self { b, t, r, d })
    }
    /// Stack columns: N = B·T·d_h.
    fn n(&self) -> usize {
        self.b * self.t * self.d
    }
}

impl StackInner {
    /// Rows stacked so far.
    fn rows(&self) -> usize {
        self.data.len() / self.n.max(1)
    }

    /// Appends x (B,T,R,d_h) as rows `before..before + R` (row r = head r over (b, t, c)).
    fn push(&mut self, before: usize, x: &[f32], s: Btrd) -> Result<()> {
        let n = s.n();
        if self.rows() != before || self.n != n {
            candle_core::bail!(
                "lime stack: appending {} rows of {n} at row {before}, stack has {} rows of {}",
                s.r,
                self.rows(),
                self.n
            );
        }
        let start = self.data.len();
        self.data.resize(start + s.r * n, 0.0);
        let rows = &mut self.data[start..];
        for (bt, src) in x.chunks_exact(s.r * s.d).enumerate() {
            for (h, v) in src.chunks_exact(s.d).enumerate() {
                rows[h * n + bt * s.d..h * n + (bt + 1) * s.d].copy_from_slice(v);
            }
        }
        Ok(())
    }
}

/// The first R rows of a stack-layout matrix (.., N) → (B,R,T,d_h).
fn rows_to_brtd(src: &[f32], s: Btrd) -> Vec<f32> {
    let (n, td) = (s.n(), s.t * s.d);
    let mut out = vec![0f32; s.b * s.r * td];
    for (bh, o) in out.chunks_exact_mut(td).enumerate() {
        let (bi, h) = (bh / s.r, bh % s.r);
        let at = h * n + bi * td;
        o.copy_from_slice(&src[at..at + td]);
    }
    out
}

/// A stack-layout matrix (R, N) plus rows `dep_row0..dep_row0 + R` of `dep` → (B,T,R,d_h).
fn rows_to_btrd(src: &[f32], dep: &[f32], dep_row0: usize, s: Btrd) -> Vec<f32> {
    let n = s.n();
    let mut out = vec![0f32; s.b * s.t * s.r * s.d];
    for (bt, o) in out.chunks_exact_mut(s.r * s.d).enumerate() {
        for (h, v) in o.chunks_exact_mut(s.d).enumerate() {
            let (at, dat) = (h * n + bt * s.d, (dep_row0 + h) * n + bt * s.d);
            for ((a, x), d) in v
                .iter_mut()
                .zip(&src[at..at + s.d])
                .zip(&dep[dat..dat + s.d])
            {
                *a = x + d;
            }
        }
    }
    out
}

/// (B,R,T,d_h) → stack layout (R, N).
fn brtd_to_rows(g: &[f32], s: Btrd) -> Vec<f32> {
    let (n, td) = (s.n(), s.t * s.d);
    let mut out = vec![0f32; s.r * n];
    for (bh, src) in g.chunks_exact(td).enumerate() {
        let (bi, h) = (bh / s.r, bh % s.r);
        out[h * n + bi * td..h * n + (bi + 1) * td].copy_from_slice(src);
    }
    out
}

/// One layer's routing of its k or v through a stack: layer 0 (`before == 0`, no W) only
/// appends; layer l ≥ 1 appends at row `before = l·R` and mixes with W (R, (l+1)·R).
struct StackRoute {
    stack: std::sync::Arc<KvStack>,
    before: usize,
}

impl StackRoute {
    /// Forward: append x (B,T,R,d_h), return the routed (B,R,T,d_h).
    fn forward(&self, w: Option<&[f32]>, x: &[f32], shape: &Shape) -> Result<(CpuStorage, Shape)> {
        let s = Btrd::of(shape)?;
        let mut st = self.stack.lock()?;
        st.push(self.before, x, s)?;
        let out_shape = Shape::from((s.b, s.r, s.t, s.d));
        let Some(w) = w else {
            return Ok((CpuStorage::F32(rows_to_brtd(&st.data, s)), out_shape));
        };
        let (n, td, rows) = (s.n(), s.t * s.d, st.rows());
        if w.len() != s.r * rows {
            candle_core::bail!("lime stack: W has {} entries for {} x {rows}", w.len(), s.r);
        }
        let x = &st.data[..rows * n];
        let mut out = vec![0f32; s.b * s.r * td];
        let o = Out(out.as_mut_ptr());
        // Per batch row b: out[b] (R × T·d_h) = W (R × S) · stack[:, b block] (S × T·d_h).
        let job = |bi: usize| {
            // SAFETY: batch row bi of `out` belongs to this job alone.
            unsafe {
                mm_raw(
                    s.r,
                    td,
                    rows,
                    o.at(bi * s.r * td),
                    td,
                    false,
                    w,
                    rows,
                    1,
                    &x[bi * td..],
                    n,
                    1,
                    1.0,
                )
            };
        };
        if out.len() * rows < PAR_MIN {
            (0..s.b).for_each(job);
        } else {
            (0..s.b).into_par_iter().for_each(job);
        }
        Ok((CpuStorage::F32(out), out_shape))
    }

    /// Backward: dW (R × S) if W is given, and dx (B,T,R,d_h) including the deposits of later
    /// layers; deposits this layer's gradient for the earlier rows.
    fn backward(
        &self,
        w: Option<&[f32]>,
        g: &[f32],
        s: Btrd,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let mut guard = self.stack.lock()?;
        let st = &mut *guard;
        let (n, td, before) = (s.n(), s.t * s.d, self.before);
        let rows = before + s.r;
        if st.grad.len() < st.data.len() {
            st.grad.resize(st.data.len(), 0.0);
        }
        let Some(w) = w else {
            // dx = g (this layer's rows, read back to (B,T,R,d_h)) + the deposits for them.
            let g_rows = brtd_to_rows(g, s);
            let dx = rows_to_btrd(&g_rows, &st.grad, 0, s);
            st.grad[..s.r * n].fill(0.0); // collected: a later backward starts from zero
            return Ok((None, dx));
        };
        let x = &st.data[..rows * n];
        let dep = Out(st.grad.as_mut_ptr());
        let mut own = vec![0f32; s.r * n]; // W[:, before..]ᵀ G in stack layout
        let o = Out(own.as_mut_ptr());
        let parts: Vec<Vec<f32>> = (0..s.b)
            .into_par_iter()
            .map(|bi| {
                let gb = &g[bi * s.r * td..]; // G_b (R × T·d_h), row stride T·d_h
                let col = bi * td;
                // SAFETY (both): batch block bi of these stack-layout rows belongs to this job.
                unsafe {
                    // Earlier layers' rows: grad[0..before, block] += W[:, ..before]ᵀ G_b.
                    mm_raw(
                        before,
                        td,
                        s.r,
                        dep.at(col),
                        n,
                        true,
                        w,
                        1,
                        rows,
                        gb,
                        td,
                        1,
                        1.0,
                    );
                    // This layer's rows: own[:, block] = W[:, before..]ᵀ G_b.
                    mm_raw(
                        s.r,
                        td,
                        s.r,
                        o.at(col),
                        n,
                        false,
                        &w[before..],
                        1,
                        rows,
                        gb,
                        td,
                        1,
                        1.0,
                    );
                }
                // dW partial = G_b (R × T·d_h) · X_bᵀ (T·d_h × S).
                let mut dw = vec![0f32; s.r * rows];
                mm(
                    s.r,
                    rows,
                    td,
                    &mut dw,
                    false,
                    gb,
                    td,
                    1,
                    &x[col..],
                    1,
                    n,
                    1.0,
                );
                dw
            })
            .collect();
        let dx = rows_to_btrd(&own, &st.grad, before, s);
        st.grad[before * n..rows * n].fill(0.0); // collected: a later backward starts from zero
        Ok((Some(sum_partials(&parts, s.r * rows)), dx))
    }
}

/// Layer 0.
struct StackRoute0(StackRoute);

impl CustomOp1 for StackRoute0 {
    fn name(&self) -> &'static str {
        "lime-stack-route"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.forward(None, slice(s, l)?, l.shape())
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let s = Btrd::of(x.shape())?;
        let (_, dx) = with_host([g], |[hg]| self.0.backward(None, hg, s))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

impl CustomOp2 for StackRoute {
    fn name(&self) -> &'static str {
        "lime-stack-route"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(Some(slice(s1, l1)?), slice(s2, l2)?, l2.shape())
    }

    fn bwd(
        &self,
        w: &Tensor,
        x: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = Btrd::of(x.shape())?;
        let (dw, dx) = with_host([w, g], |[hw, hg]| self.backward(Some(hw), hg, s))?;
        Ok((
            dw.map(|d| Tensor::from_vec(d, w.shape(), w.device()))
                .transpose()?,
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
        ))
    }
}

/// Routes one layer's k or v (B,T,R,d_h) through a pass's stack: returns (B,R,T,d_h), the
/// layer's own heads for layer 0 (`w = None`), W (R, (l+1)·R) · stack for layer l ≥ 1.
/// f32 CPU only ([`usable`]); layers must come in order.
pub fn stack_route(
    stack: &std::sync::Arc<KvStack>,
    w: Option<&Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let r = x.dim(2)?;
    match w {
        None => x.apply_op1(StackRoute0(StackRoute {
            stack: stack.clone(),
            before: 0,
        })),
        Some(w) => {
            let before = w.dim(1)?.saturating_sub(r);
            w.contiguous()?.apply_op2(
                &x,
                StackRoute {
                    stack: stack.clone(),
                    before,
                },
            )
        }
    }
}

/// The key and value stacks of one LIMe forward pass (the fused backend's buffer).
#[derive(Debug)]
pub struct KvStacks {
    k: std::sync::Arc<KvStack>,
    v: std::sync::Arc<KvStack>,
}

impl KvStacks {
    /// Routes one layer's k and v (B,T,R,d_h) through the pass's stacks (created at layer 0,
    /// `w = None`, with room for `rows` = L·R rows): returns (K_l, V_l), each (B,R,T,d_h), the
    /// same numbers as the concatenated buffer of `lime.rs` with `W · buffer`.
    pub fn route(
        stacks: &mut Option<KvStacks>,
        rows: usize,
        w: Option<&Tensor>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        require("lime stack", &[k, v])?;
        if w.is_none() {
            let (b, t, _, dh) = k.dims4()?;
            let new = || std::sync::Arc::new(KvStack::with_capacity(rows, b * t * dh));
            *stacks = Some(KvStacks { k: new(), v: new() });
        }
        let Some(s) = stacks else {
            candle_core::bail!("lime stack: a layer routed before layer 0");
        };
        Ok((stack_route(&s.k, w, k)?, stack_route(&s.v, w, v)?))
    }
}

// ------------------------------------------------------------------------------------------------
// SwiGLU product: y = silu(a) · b with silu(a) = a·σ(a) (a = W_gate x, b = W_up x).
// Composed, this is silu (exp per element), mul, and a backward of five more elementwise ops,
// each a fresh tensor; here one pass forward and one backward.
// ------------------------------------------------------------------------------------------------

/// e^x in f32 without a libm call, so that loops over it vectorise: x·log2(e) = i + f with i the
/// nearest integer and |f| ≤ ½; 2^f = e^(f·ln 2) by its degree-6 Taylor polynomial (relative
/// error < 2e-7: |f·ln 2| ≤ 0.347), 2^i from the exponent bits. x is clamped to [−87, 88].
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
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
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-a))
}

/// An output element not yet written.
type Uninit = MaybeUninit<f32>;

/// A vector of `n` f32 filled by `fill`, without zeroing it first (a memset per output was ~3%
/// of a small model's training step).
///
/// # Safety
/// `fill` must write every one of the `n` elements.
unsafe fn written(n: usize, fill: impl FnOnce(&mut [Uninit])) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs in a wide range (with exact zeros and negatives) from a fixed LCG.
    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 12.0
            })
            .collect()
    }

    /// `simd` changes speed, not results: each kernel loop gives the same bits under it as
    /// compiled for the baseline (on a CPU with AVX-512 or AVX2 this compares the two builds).
    #[test]
    fn simd_levels_compute_the_same_bits() {
        let (tq, tk) = (37, 45);
        let p0 = data(tq * tk, 1);
        let (mut a, mut b) = (p0.clone(), p0.clone());
        softmax_rows(tq, tk, 0.3, &mut a);
        simd(
            #[inline(always)]
            || softmax_rows(tq, tk, 0.3, &mut b),
        );
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let (x, t, d) = (data(6 * 16, 2), 3, 16);
        let half = t * d / 2;
        let (cos, sin) = (data(half, 3), data(half, 4));
        let (mut ya, mut yb) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        rope_rows(&x, &mut ya, t, d, &cos, &sin, false);
        simd(
            #[inline(always)]
            || rope_rows(&x, &mut yb, t, d, &cos, &sin, false),
        );
        assert_eq!(ya, yb);
        let (u, v) = (data(1000, 5), data(1000, 6));
        let silu = |a: &[f32], b: &[f32]| -> Vec<f32> {
            a.iter().zip(b).map(|(&a, &b)| a * sigmoid(a) * b).collect()
        };
        let plain = silu(&u, &v);
        let wide = simd(
            #[inline(always)]
            || silu(&u, &v),
        );
        assert_eq!(
            plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            wide.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}
