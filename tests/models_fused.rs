//! The fused f32 CPU kernels (`models::fused`) against the composed candle ops they replace:
//! same forward values and same gradients, within f32 tolerance.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Composed reference: causal softmax attention with GQA, query i at absolute position i + Tk − Tq.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let (b, h, tq, d) = q.dims4().unwrap();
    let (_, r, tk, _) = k.dims4().unwrap();
    let g = h / r;
    let k = k
        .unsqueeze(2)
        .unwrap()
        .expand((b, r, g, tk, d))
        .unwrap()
        .reshape((b, h, tk, d))
        .unwrap();
    let v = v
        .unsqueeze(2)
        .unwrap()
        .expand((b, r, g, tk, d))
        .unwrap()
        .reshape((b, h, tk, d))
        .unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    let mask: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= i + tk - tq {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu).unwrap();
    let p = candle_nn::ops::softmax(&s.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    p.matmul(&v).unwrap()
}

/// The 3-layer model the whole-model tests use: vocab 23, d 32, 4 heads, `kv` kv heads.
fn small_cfg(variant: models::Variant, kv: usize) -> models::Config {
    models::Config::mha(variant, 23, 32, 3, 4)
        .with_kv_heads(kv)
        .with_d_ff(48)
}

/// Token ids of the given shape for [`small_cfg`]'s vocabulary (23): element i is (a·i + c) mod 23.
fn small_ids(shape: &[usize], a: u32, c: u32) -> Tensor {
    let n = shape.iter().product::<usize>() as u32;
    let ids: Vec<u32> = (0..n).map(|i| (i * a + c) % 23).collect();
    Tensor::from_vec(ids, shape, &Device::Cpu).unwrap()
}

/// Forward and input gradients of `f` under a fixed random upstream gradient.
fn fwd_grads(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.copy().unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let w = randn(y.dims(), seed);
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("gradient reaches every input")
                .clone()
        })
        .collect();
    (y, gs)
}

fn assert_same(
    name: &str,
    fused: &dyn Fn(&[Tensor]) -> Tensor,
    reference: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    tol: f32,
) {
    let (yf, gf) = fwd_grads(fused, inputs, 99);
    let (yr, gr) = fwd_grads(reference, inputs, 99);
    let d = max_diff(&yf, &yr);
    assert!(d < tol, "{name}: forward differs by {d}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        let d = max_diff(a, b);
        assert!(d < tol, "{name}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn fused_attention_matches_composed_mha_gqa_and_offset() {
    for (b, h, r, tq, tk, d) in [
        (2, 4, 4, 7, 7, 8),
        (2, 4, 2, 9, 9, 4),
        (1, 6, 2, 3, 11, 8),
        (3, 2, 1, 1, 5, 16),
    ] {
        let q = randn(&[b, h, tq, d], 1);
        let k = randn(&[b, r, tk, d], 2);
        let v = randn(&[b, r, tk, d], 3);
        let scale = 1.0 / (d as f64).sqrt();
        assert_same(
            &format!("attention b{b} h{h} r{r} tq{tq} tk{tk}"),
            &|x| models::fused::causal_attention(&x[0], &x[1], &x[2], scale).unwrap(),
            &|x| attention_ref(&x[0], &x[1], &x[2], scale),
            &[q, k, v],
            1e-5,
        );
    }
}

#[test]
fn fused_attention_reads_narrowed_kv_views_in_place() {
    // The decoding cache hands the kernel K/V as narrows of a (B,R,capacity,d) buffer: the heads
    // are then strided. The result must equal the same K/V made contiguous.
    let (b, h, r, cap, tk, tq, d) = (2, 4, 2, 16, 11, 3, 8);
    let q = randn(&[b, h, tq, d], 4);
    let kbuf = randn(&[b, r, cap, d], 5);
    let vbuf = randn(&[b, r, cap, d], 6);
    let (k, v) = (
        kbuf.narrow(2, 0, tk).unwrap(),
        vbuf.narrow(2, 0, tk).unwrap(),
    );
    assert!(!k.is_contiguous());
    let scale = 1.0 / (d as f64).sqrt();
    let strided = models::fused::causal_attention(&q, &k, &v, scale).unwrap();
    let dense = models::fused::causal_attention(
        &q,
        &k.contiguous().unwrap(),
        &v.contiguous().unwrap(),
        scale,
    )
    .unwrap();
    assert_eq!(max_diff(&strided, &dense), 0.0);
    let reference = attention_ref(
        &q,
        &k.contiguous().unwrap(),
        &v.contiguous().unwrap(),
        scale,
    );
    assert!(max_diff(&strided, &reference) < 1e-5);
}

#[test]
fn fused_kv_cache_decoding_matches_full_forward_across_growth() {
    // f32 on the CPU takes the fused kernels; capacity 3 forces the cache to grow twice.
    for &variant in models::Variant::ALL {
        let cfg = small_cfg(variant, 2);
        let (_vm, model) = models::init_varmap(&cfg, 8, DType::F32, &Device::Cpu).unwrap();
        let ids = small_ids(&[2, 10], 7, 3);
        let full = model.forward(&ids).unwrap();
        let mut cache = models::KvCache::with_capacity(&cfg, 3);
        let mut pos = 0;
        for n in [2, 1, 1, 4, 1, 1] {
            let out = model
                .forward_cached(&ids.narrow(1, pos, n).unwrap(), &mut cache)
                .unwrap();
            let d = max_diff(&out, &full.narrow(1, pos, n).unwrap());
            assert!(
                d < 1e-5,
                "{variant:?}: step at {pos} (len {n}) differs by {d}"
            );
            pos += n;
        }
        // A cleared cache is reused from position 0 and gives the same logits again.
        cache.clear();
        let again = model
            .forward_cached(&ids.narrow(1, 0, 5).unwrap(), &mut cache)
            .unwrap();
        assert!(max_diff(&again, &full.narrow(1, 0, 5).unwrap()) < 1e-5);
    }
}

#[test]
fn fused_rms_norm_matches_composed() {
    let x = randn(&[3, 5, 16], 4);
    let w = (randn(&[16], 5) + 1.5).unwrap();
    assert_same(
        "rms_norm",
        &|t| models::fused::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        &|t| {
            let ms = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            t[0].broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&t[1])
                .unwrap()
        },
        &[x, w],
        1e-5,
    );
}

#[test]
fn fused_rope_matches_composed() {
    let (t, d) = (6, 8);
    let x = randn(&[2, 3, t, d], 6);
    let ang: Vec<f32> = (0..t)
        .flat_map(|p| (0..d / 2).map(move |i| p as f32 * 10000f32.powf(-2.0 * i as f32 / d as f32)))
        .collect();
    let cos = Tensor::from_vec(
        ang.iter().map(|a| a.cos()).collect::<Vec<_>>(),
        (t, d / 2),
        &Device::Cpu,
    )
    .unwrap();
    let sin = Tensor::from_vec(
        ang.iter().map(|a| a.sin()).collect::<Vec<_>>(),
        (t, d / 2),
        &Device::Cpu,
    )
    .unwrap();
    assert_same(
        "rope",
        &|x| models::fused::rope(&x[0], &cos, &sin).unwrap(),
        &|x| {
            let (x1, x2) = (
                x[0].narrow(D::Minus1, 0, d / 2).unwrap(),
                x[0].narrow(D::Minus1, d / 2, d / 2).unwrap(),
            );
            let r1 = (x1.broadcast_mul(&cos).unwrap() - x2.broadcast_mul(&sin).unwrap()).unwrap();
            let r2 = (x2.broadcast_mul(&cos).unwrap() + x1.broadcast_mul(&sin).unwrap()).unwrap();
            Tensor::cat(&[r1, r2], D::Minus1).unwrap()
        },
        &[x],
        1e-5,
    );
}

#[test]
fn fused_cross_entropy_matches_candle() {
    let z = (randn(&[10, 7], 7) * 3.0).unwrap();
    let t = Tensor::from_vec(
        (0..10u32).map(|i| (i * 3) % 7).collect::<Vec<_>>(),
        10,
        &Device::Cpu,
    )
    .unwrap();
    assert_same(
        "cross_entropy",
        &|x| models::fused::cross_entropy(&x[0], &t).unwrap(),
        &|x| candle_nn::loss::cross_entropy(&x[0], &t).unwrap(),
        &[z],
        1e-5,
    );
    // Out-of-range targets are an error, not a silent read.
    let bad = Tensor::from_vec(vec![9u32; 10], 10, &Device::Cpu).unwrap();
    assert!(models::fused::cross_entropy(&randn(&[10, 7], 8), &bad).is_err());
    // The kernel is f32 CPU only; the reference backend takes every other dtype.
    let z64 = randn(&[10, 7], 8).to_dtype(DType::F64).unwrap();
    assert!(models::fused::cross_entropy(&z64, &t).is_err());
    let reference = models::ops::cross_entropy(models::Backend::Reference, &z64, &t).unwrap();
    assert_eq!(reference.dtype(), DType::F64);
}

/// The whole model on the fused f32 path against the composed f64 path (same seeded weights):
/// logits and every parameter's gradient agree to f32 precision, for every variant and GQA.
#[test]
fn fused_f32_model_matches_composed_f64_model() {
    for &variant in models::Variant::ALL {
        for kv in [4, 2] {
            let cfg = small_cfg(variant, kv);
            let ids = small_ids(&[2, 9], 7, 3);
            let targets = small_ids(&[18], 5, 1);
            let run = |dtype: DType| {
                let (vm, model) = models::init_varmap(&cfg, 3, dtype, &Device::Cpu).unwrap();
                let logits = model.forward(&ids).unwrap().reshape((18, 23)).unwrap();
                let loss = model.cross_entropy(&logits, &targets).unwrap();
                let grads = loss.backward().unwrap();
                let mut g: Vec<(String, Tensor)> = models::sorted_vars(&vm)
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            n,
                            grads
                                .get(v.as_tensor())
                                .expect("every weight gets a gradient")
                                .to_dtype(DType::F32)
                                .unwrap(),
                        )
                    })
                    .collect();
                g.sort_by(|a, b| a.0.cmp(&b.0));
                (logits.to_dtype(DType::F32).unwrap(), g)
            };
            let (l32, g32) = run(DType::F32);
            let (l64, g64) = run(DType::F64);
            let d = max_diff(&l32, &l64);
            assert!(d < 1e-4, "{variant:?} kv{kv}: logits differ by {d}");
            for ((n, a), (_, b)) in g32.iter().zip(&g64) {
                let scale = b
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .max(1e-3);
                let d = max_diff(a, b) / scale;
                assert!(
                    d < 1e-3,
                    "{variant:?} kv{kv}: gradient of {n} differs by {d} (relative)"
                );
            }
        }
    }
}

#[test]
fn fused_depth_mix_matches_matmul() {
    // N spans several parallel chunks and a ragged last one.
    let w = randn(&[3, 5], 11);
    let x = randn(&[5, 40_000], 12);
    assert_same(
        "depth_mix",
        &|t| models::fused::depth_mix(&t[0], &t[1]).unwrap(),
        &|t| t[0].matmul(&t[1]).unwrap(),
        &[w, x],
        1e-3,
    );
}

#[test]
fn fused_swiglu_matches_composed() {
    // Spans several parallel chunks, and values far into both tails of the sigmoid.
    let a = (randn(&[3, 50, 257], 21) * 12.0).unwrap();
    let b = randn(&[3, 50, 257], 22);
    assert_same(
        "swiglu",
        &|t| models::fused::swiglu(&t[0], &t[1]).unwrap(),
        &|t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        &[a, b],
        2e-5,
    );
}

#[test]
fn lime_stack_gradients_survive_a_second_backward() {
    // The stacked LIMe path deposits gradients for earlier layers outside autograd's edges; a
    // second backward over the same graph must give the same gradients, not doubled deposits.
    for variant in [models::Variant::LIME, models::Variant::LIME_AVG] {
        let cfg = small_cfg(variant, 2);
        let (vm, model) = models::init_varmap(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
        let ids = small_ids(&[2, 7], 5, 2);
        let loss = model
            .forward(&ids)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let (g1, g2) = (loss.backward().unwrap(), loss.backward().unwrap());
        for (name, var) in models::sorted_vars(&vm) {
            let (a, b) = (
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(
                max_diff(a, b),
                0.0,
                "{variant:?}: {name} differs on a second backward"
            );
        }
    }
}

/// The vendored matmul's split-K path (a long reduction into a small output, split into fixed
/// chunks run across threads: the weight gradients `xᵀ·g` over all B·T rows) against an f64 loop,
/// for a transposed view, a contiguous operand and a k the chunk size does not divide. (That the
/// split leaves training identical at any thread count: `device::training_gives_the_same_…`.)
#[test]
fn split_k_matmul_matches_an_f64_reference() {
    for (m, n, k) in [(64, 48, 8192), (32, 64, 4099), (256, 64, 8192)] {
        let x = randn(&[k, m], 11); // (k, m): the product reads xᵀ, a strided view
        let g = randn(&[k, n], 12);
        let (xs, gs) = (x.to_vec2::<f32>().unwrap(), g.to_vec2::<f32>().unwrap());
        let mut want = vec![0f64; m * n];
        for r in 0..k {
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] += xs[r][i] as f64 * gs[r][j] as f64;
                }
            }
        }
        let want = Tensor::from_vec(
            want.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (m, n),
            &Device::Cpu,
        )
        .unwrap();
        let strided = x.t().unwrap().matmul(&g).unwrap();
        let contiguous = x.t().unwrap().contiguous().unwrap().matmul(&g).unwrap();
        // Each entry sums k products of magnitude ≤ 1: f32 rounding is ~1e-7 · k.
        let tol = 1e-6 * k as f32;
        for got in [strided, contiguous] {
            assert_eq!(got.dims(), &[m, n]);
            let d = max_diff(&got, &want);
            assert!(d < tol, "({m}, {n}, {k}): max diff {d} ≥ {tol}");
        }
    }
}

/// Canon's causal depthwise convolution: the fused kernel against the composed reference
/// (`ops::causal_conv` on the reference backend), with a non-zero past (a decoding cache), T
/// shorter than the kernel, one new token, and a shape spanning the parallel chunks. The forward
/// sums in the composed order, so it is bit-identical.
#[test]
fn fused_causal_conv_matches_composed() {
    use models::{ops::causal_conv, Backend};
    for (i, (b, t, c, k)) in [
        (2, 7, 5, 4),
        (3, 50, 130, 4),
        (2, 2, 9, 4),
        (1, 1, 8, 3),
        (2, 6, 4, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 40 + 3 * i as u64;
        let past = randn(&[b, k - 1, c], seed);
        let (x, w) = (randn(&[b, t, c], seed + 1), randn(&[c, k], seed + 2));
        let fused =
            |ts: &[Tensor]| causal_conv(Backend::Fused, Some(&past), &ts[0], &ts[1]).unwrap();
        let reference =
            |ts: &[Tensor]| causal_conv(Backend::Reference, Some(&past), &ts[0], &ts[1]).unwrap();
        let name = format!("causal_conv {b}x{t}x{c} k{k}");
        assert_same(&name, &fused, &reference, &[x.clone(), w.clone()], 1e-5);
        let d = max_diff(&fused(&[x.clone(), w.clone()]), &reference(&[x, w]));
        assert_eq!(d, 0.0, "{name}: the forward should be bit-identical");
    }
}
