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

mod attention;
mod conv;
mod loss;
mod mix;
mod norm;
mod optim;
mod stack;
mod swiglu;

pub use attention::causal_attention;
use attention::lanes;
pub use conv::causal_conv;
pub use loss::cross_entropy;
pub use mix::depth_mix;
use mix::sum_partials;
pub use norm::{rms_norm, rope};
pub use optim::{adamw_update, sum_squares_f64, AdamWStep};
pub use stack::{stack_route, KvStack, KvStacks};
pub use swiglu::swiglu;
use swiglu::{exp_f32, written, Uninit};

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

#[cfg(test)]
mod tests {
    use super::*;
    use super::{attention::softmax_rows, norm::rope_rows, swiglu::sigmoid};

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
