//! The 2025–26 rivals: `attnres` and `attnres-block` (Attention Residuals, Kimi 2026),
//! `muddformer` (MUDDFormer, Xiao et al. 2025), `mhc` (mHC, DeepSeek 2025, as DeepSeek-V4 runs it).
//!
//! The generic checks of `models_rivals.rs` and `models_accounting.rs` already cover every
//! built-in (parameter counts vs built tensors and a plain formula, FLOP recount, causality at
//! init, KV-cache decoding at init, overfitting with a gradient for every Var, fused f32 vs
//! composed f64, names, the golden FLOP tables). This file adds what those do not:
//! - exact reductions to llama at each variant's neutral setting, and which settings are not
//!   neutral (section 1);
//! - causality, KV-cache decoding and finite-difference gradients at *random, non-neutral*
//!   weights (their init is llama-like or uniform, which hides bugs) (sections 2–4);
//! - scalar f64 references written from the papers' equations (plain loops), matching the model
//!   within 1e-9 at random weights, with deliberate-bug checks (section 5);
//! - the AttnRes source counts the FLOP formula relies on, against the forward pass and a closed
//!   form (section 6), and the optimizer groups (section 7).
//!
//! Neutral settings (each module's docs): `attnres`, `attnres-block`: every pseudo-query 0 and
//! `norm_eps` = 0 (their init with eps = 0); with eps > 0 there is **no** exact reduction.
//! `muddformer`: W2 = 0, a = e_current, k/v input norms = attn_norm (its init, any eps).
//! `mhc`: **none** (σ + ε gates and ε-guarded Sinkhorn steps come within ~1e-6 of llama, never
//! exactly; section 1 tests that statement).

// Plain index loops are the point of the scalar references (they read as the equations).
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use models::{init_varmap, param_group, sorted_vars, Config, KvCache, ParamGroup, Variant};

use crate::models_correctness::{
    causal_attention_ref, cfg, fd_check, loss, matvec, max_abs_diff, random_ids, randomize,
    rmsnorm_ref, var,
};
use crate::models_rivals::{
    copy_shared, pair, randomize_every_var, ref_add, ref_attention, ref_embed, ref_head, ref_mlp,
    tiny, with, RefWeights, Seq,
};

/// The variants of this file.
const NEW: [Variant; 4] = [
    Variant::ATTNRES,
    Variant::ATTNRES_BLOCK,
    Variant::MUDDFORMER,
    Variant::MHC,
];

fn shapes() -> Vec<(usize, usize, usize, bool)> {
    // (layers, heads, kv heads, tied)
    vec![
        (4, 4, 4, false),
        (4, 4, 2, true),
        (3, 2, 1, false),
        (1, 2, 2, false),
    ]
}

/// The configs to sweep for `v`: every shape, and for `attnres-block` block sizes 1, 2, 3.
fn configs(v: Variant, eps: f64) -> Vec<Config> {
    let sizes: &[Option<usize>] = if v == Variant::ATTNRES_BLOCK {
        &[Some(1), Some(2), Some(3)]
    } else {
        &[None]
    };
    let mut out = Vec::new();
    for (l, h, r, tie) in shapes() {
        for &s in sizes {
            let c = Config {
                norm_eps: eps,
                ..cfg(v, l, h, r, tie)
            };
            out.push(match s {
                Some(s) => c.with_setting("attnres_block", s),
                None => c,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Exact reductions, and the settings that are not neutral
// ---------------------------------------------------------------------------------------------

#[test]
fn attnres_at_init_without_eps_equals_llama() -> Result<()> {
    for v in [Variant::ATTNRES, Variant::ATTNRES_BLOCK] {
        for c in configs(v, 0.0) {
            let (vm, model, llama, own) = pair(&c, 50)?;
            let l = c.n_layers;
            ensure!(own.len() == 4 * l, "{v:?}: own params {own:?}");
            let ids = random_ids(2, 9, c.vocab_size, 51)?;
            let reference = llama.forward(&ids)?;
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(
                d <= 1e-9,
                "{v:?} {c:?}: zero pseudo-queries, eps 0 vs llama: {d}"
            );
            // Non-zero pseudo-queries make the softmax over depth non-uniform (only when some op
            // has ≥ 2 sources whose keys differ: always here).
            ensure!(randomize(&vm, ".query", 0.5, 52)? == 2 * l);
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(
                d > 1e-4,
                "{v:?}: non-zero queries should change the logits ({d})"
            );
        }
    }
    Ok(())
}

/// With eps > 0 AttnRes at init is *not* llama: each sub-layer reads x/n, and RMSNorm(x/n) ≠
/// RMSNorm(x) when eps > 0. No other setting of its weights recovers the unit-weight sum (the
/// softmax weights sum to 1), so `attnres*` have no neutral setting at eps > 0.
#[test]
fn attnres_has_no_neutral_setting_with_eps() -> Result<()> {
    for v in [Variant::ATTNRES, Variant::ATTNRES_BLOCK] {
        let c = Config {
            norm_eps: 1e-2,
            ..cfg(v, 3, 4, 2, false)
        };
        let (_, model, llama, _) = pair(&c, 53)?;
        let ids = random_ids(1, 7, c.vocab_size, 54)?;
        let d = max_abs_diff(&model.forward(&ids)?, &llama.forward(&ids)?)?;
        ensure!(d > 1e-7, "{v:?}: eps > 0 should leave a difference ({d})");
    }
    Ok(())
}

#[test]
fn muddformer_at_its_neutral_setting_equals_llama() -> Result<()> {
    for c in configs(Variant::MUDDFORMER, 1e-6) {
        let l = c.n_layers;
        // At init (any eps): W2 = 0, a = e_current, k/v norms = attn_norm = 1.
        let (vm, model, llama, own) = pair(&c, 55)?;
        ensure!(own.len() == 3 * l + 2 * (l - 1), "own params {own:?}");
        let ids = random_ids(2, 9, c.vocab_size, 56)?;
        let d = max_abs_diff(&model.forward(&ids)?, &llama.forward(&ids)?)?;
        ensure!(d <= 1e-12, "{c:?}: muddformer at init vs llama: {d}");

        // The neutral setting at random shared weights: random llama (norm gains included),
        // random W1, the k/v input norms copied from attn_norm.
        let (llama_vm, llama) =
            init_varmap(&with(Variant::LLAMA, &c), 57, DType::F64, &Device::Cpu)?;
        randomize_every_var(&llama_vm, 58)?;
        copy_shared(&llama_vm, &vm)?;
        randomize(&vm, ".dynamic_w1", 0.5, 59)?;
        for layer in 1..l {
            let g = var(&vm, &format!("layers.{layer}.attn_norm.weight"))?;
            for n in ["attn_k_norm", "attn_v_norm"] {
                var(&vm, &format!("layers.{layer}.{n}.weight"))?.set(g.as_tensor())?;
            }
        }
        let reference = llama.forward(&ids)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-12, "{c:?}: neutral muddformer vs random llama: {d}");
        // Any dynamic part (W2 ≠ 0), or a static weight off e_current, breaks it.
        randomize(&vm, ".dynamic_w2", 0.1, 60)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d > 1e-5, "W2 ≠ 0 should change the logits ({d})");
    }
    Ok(())
}

/// mHC has no neutral setting. The closest one — fn = 0 (no dynamic part), base_post =
/// logit(1 − ε) (post = 1 up to rounding), norm_eps = 0, equal streams — still differs from llama:
/// Sinkhorn's ε guards leave the rows of comb summing to 1 − O(ε), so the residual shrinks by
/// O(ε) per site. The difference is small and not zero; at init mHC is far from llama.
#[test]
fn mhc_has_no_neutral_setting() -> Result<()> {
    let n = models::mhc::STREAMS;
    let eps = models::mhc::HC_EPS;
    let c = Config {
        norm_eps: 0.0,
        ..cfg(Variant::MHC, 3, 4, 2, false)
    };
    let (vm, model, llama, _) = pair(&c, 71)?;
    let ids = random_ids(2, 9, c.vocab_size, 72)?;
    let reference = llama.forward(&ids)?;
    let d_init = max_abs_diff(&model.forward(&ids)?, &reference)?;
    ensure!(
        d_init > 1e-3,
        "mHC at init should be far from llama ({d_init})"
    );
    let logit = ((1.0 - eps) / eps).ln();
    for (name, v) in sorted_vars(&vm) {
        if name.ends_with(".hc_fn") {
            v.set(&v.as_tensor().zeros_like()?)?;
        } else if name.ends_with(".hc_base") && !name.contains(".mhc_head.") {
            let mut b = vec![0.0; (2 + n) * n];
            b[n..2 * n].fill(logit); // post = σ(logit) + ε = 1
            v.set(&Tensor::from_vec(b, (2 + n) * n, &Device::Cpu)?)?;
        }
    }
    let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
    ensure!(
        d > 0.0 && d < 1e-3 && d < d_init / 100.0,
        "closest setting vs llama: {d} (init: {d_init})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Causality at random weights
// ---------------------------------------------------------------------------------------------

#[test]
fn new_rivals_are_causal_at_random_weights() -> Result<()> {
    for v in NEW {
        for c in configs(v, 1e-6).into_iter().step_by(2) {
            causal_at_random_weights(&c, 61)?;
        }
    }
    Ok(())
}

/// At random non-neutral weights (seeds `seed` … `seed + 2`), changing token 6 of a 10-token
/// sequence leaves the logits of positions 0–5 exactly as they were and changes those after.
pub(crate) fn causal_at_random_weights(c: &Config, seed: u64) -> Result<()> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    randomize_every_var(&vm, seed + 1)?;
    let ids = random_ids(1, 10, c.vocab_size, seed + 2)?;
    let base = model.forward(&ids)?;
    let p = 6;
    let mut changed: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    changed[p] = (changed[p] + 1) % c.vocab_size as u32;
    let out = model.forward(&Tensor::from_vec(changed, (1, 10), &Device::Cpu)?)?;
    let before = max_abs_diff(&base.narrow(1, 0, p)?, &out.narrow(1, 0, p)?)?;
    ensure!(before == 0.0, "{c:?}: positions < {p} changed by {before}");
    let after = max_abs_diff(&base.narrow(1, p, 10 - p)?, &out.narrow(1, p, 10 - p)?)?;
    ensure!(after > 1e-6, "{c:?}: positions ≥ {p} should change");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. KV-cache decoding at random weights
// ---------------------------------------------------------------------------------------------

#[test]
fn new_rivals_kv_cache_matches_full_forward_at_random_weights() -> Result<()> {
    for v in NEW {
        for c in configs(v, 1e-6) {
            let (vm, model) = init_varmap(&c, 64, DType::F64, &Device::Cpu)?;
            randomize_every_var(&vm, 65)?;
            let ids = random_ids(2, 9, c.vocab_size, 66)?;
            let full = model.forward(&ids)?;
            let mut cache = KvCache::new(&c);
            let mut pos = 0;
            for n in [3, 1, 1, 4] {
                let out = model.forward_cached(&ids.narrow(1, pos, n)?, &mut cache)?;
                let d = max_abs_diff(&out, &full.narrow(1, pos, n)?)?;
                ensure!(d <= 1e-10, "{c:?}: chunk at {pos} (len {n}) differs by {d}");
                pos += n;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Finite-difference gradients of the new weights (f64, random weights)
// ---------------------------------------------------------------------------------------------

#[test]
fn new_weights_match_finite_differences() -> Result<()> {
    let checks: [(Variant, usize, &[(&str, &[usize])]); 5] = [
        (
            Variant::ATTNRES,
            2,
            &[
                ("layers.1.attnres_attn.query", &[0, 7, 13]),
                ("layers.2.attnres_mlp.key_gain", &[3, 15]),
                ("layers.0.attnres_mlp.query", &[5]),
                ("layers.3.attnres_out.query", &[1, 11]),
                ("layers.3.attnres_out.key_gain", &[2]),
            ],
        ),
        (
            Variant::ATTNRES_BLOCK,
            2,
            &[
                ("layers.2.attnres_attn.query", &[0, 9]),
                ("layers.3.attnres_attn.key_gain", &[4]),
                ("layers.1.attnres_mlp.query", &[6]),
                ("layers.3.attnres_out.query", &[2, 14]),
            ],
        ),
        (
            Variant::ATTNRES_BLOCK,
            1,
            &[
                ("layers.1.attnres_attn.query", &[1, 8]),
                ("layers.2.attnres_mlp.key_gain", &[0]),
                ("layers.3.attnres_out.key_gain", &[10]),
            ],
        ),
        (
            Variant::MUDDFORMER,
            2,
            &[
                ("layers.0.mudd.dynamic_w1", &[0, 77, 500]),
                ("layers.1.mudd.dynamic_w2", &[3, 200, 700]),
                ("layers.2.mudd.static_bias", &[0, 5, 15]),
                ("layers.3.mudd.static_bias", &[0, 4]),
                ("layers.3.mudd.dynamic_w2", &[1, 130]),
                ("layers.2.attn_k_norm.weight", &[2]),
                ("layers.1.attn_v_norm.weight", &[9]),
            ],
        ),
        (
            Variant::MHC,
            2,
            &[
                ("layers.0.mhc_attn.hc_fn", &[0, 333, 1500]),
                ("layers.2.mhc_mlp.hc_fn", &[64, 1000]),
                ("layers.1.mhc_attn.hc_base", &[1, 6, 20]),
                ("layers.3.mhc_mlp.hc_scale", &[0, 1, 2]),
                ("layers.3.mhc_head.hc_fn", &[5, 200]),
                ("layers.3.mhc_head.hc_base", &[3]),
                ("layers.3.mhc_head.hc_scale", &[0]),
            ],
        ),
    ];
    for (v, s, list) in checks {
        let c = cfg(v, 4, 4, 2, false).with_setting("attnres_block", s);
        fd_check_at_random_weights(&c, 67, list)?;
    }
    Ok(())
}

/// f64 central differences against backward for the entries `list` names, at random non-neutral
/// weights (`randomize_every_var`), on a (2, 7) batch; seeds `seed` … `seed + 3`.
pub(crate) fn fd_check_at_random_weights(
    c: &Config,
    seed: u64,
    list: &[(&str, &[usize])],
) -> Result<()> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    randomize_every_var(&vm, seed + 1)?;
    let ids = random_ids(2, 7, c.vocab_size, seed + 2)?;
    let targets = random_ids(2, 7, c.vocab_size, seed + 3)?;
    let grads = loss(&model, &ids, &targets)?.backward()?;
    let label = format!("{:?}", c.variant);
    for (name, idxs) in list {
        fd_check(
            &label,
            &model,
            &vm,
            (&ids, &targets),
            &grads,
            name,
            idxs,
            true,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Scalar references (plain loops, no candle) at random, non-neutral weights
// ---------------------------------------------------------------------------------------------
//
// Attention Residuals (arXiv 2603.15031, Eqs. for h_l and α_{i→l}; Block AttnRes as the paper's
// pseudocode `block_attn_res`): an op with pseudo-query w and key gain g over sources v_i reads
//   α_i = exp(w · RMSNorm_g(v_i)) / Σ_j exp(w · RMSNorm_g(v_j)),   h = Σ_i α_i v_i.
// Full: sources = embedding and every earlier sub-layer output. Block: embedding, completed
// block sums and the current block's partial sum; a block is S layers; the final norm reads one
// more op over all sources (documented choice).
//
// MUDDFormer (arXiv 2502.12170, as restated in muddformer.rs from the authors' code): after block i,
//   A = W2 · GELU(W1 · RMSNorm(X_{i+1})) + a, (C × (i+2));  X̄_c = Σ_j A[c][j] X_j;
// block i+1: h = X̄_r + Attn(q: attn_norm(X̄_q), k: k_norm(X̄_k), v: v_norm(X̄_v)),
// X_{i+2} = h + MLP(mlp_norm(h)); the last DA has C = 1 and feeds the final norm.

/// Deliberate bugs in the references: each must make the comparison fail.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// AttnRes: logits from the raw sources (no RMSNorm of the keys).
    KeysNotNormalised,
    /// AttnRes: the last source left out of every op with ≥ 2 sources.
    LastSourceDropped,
    /// Block AttnRes: a block closes one layer late.
    BlockBoundaryLate,
    /// MUDDFormer: the key and value aggregates swapped.
    KeyValueSwapped,
    /// MUDDFormer: the residual taken from the query aggregate.
    ResidualFromQuery,
    /// MUDDFormer: the DA weights read the block output without the RMSNorm.
    DenseNotNormalised,
    /// mHC: no Sinkhorn projection (comb = σ(·) + ε as is).
    NoSinkhorn,
    /// mHC: comb transposed in the write-out (H'_i = Σ_j comb[j][i] H_j).
    CombTransposed,
    /// mHC: the write-out weights taken from the read-in gate.
    PostIsPre,
}

/// One AttnRes op at every position (`prefix` names its weights; one source: the identity).
fn ref_attnres_op(c: &Config, w: &RefWeights, prefix: &str, srcs: &[&Seq], bug: Bug) -> Seq {
    if srcs.len() == 1 {
        return srcs[0].clone();
    }
    let srcs = match bug {
        Bug::LastSourceDropped => &srcs[..srcs.len() - 1],
        _ => srcs,
    };
    let q = w.get(&format!("{prefix}.query"));
    let g = w.get(&format!("{prefix}.key_gain"));
    (0..srcs[0].len())
        .map(|t| {
            let logits: Vec<f64> = srcs
                .iter()
                .map(|s| {
                    let k = match bug {
                        Bug::KeysNotNormalised => s[t].clone(),
                        _ => rmsnorm_ref(&s[t], Some(g), c.norm_eps),
                    };
                    q.iter().zip(&k).map(|(a, b)| a * b).sum()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|z| (z - m).exp()).collect();
            let z: f64 = e.iter().sum();
            (0..c.d_model)
                .map(|d| srcs.iter().zip(&e).map(|(s, ei)| ei / z * s[t][d]).sum())
                .collect()
        })
        .collect()
}

pub(crate) fn ref_mlp_seq(c: &Config, w: &RefWeights, l: usize, h: &Seq) -> Seq {
    h.iter().map(|x| ref_mlp(c, w, l, x, true)).collect()
}

/// `attnres` / `attnres-block` logits [t][vocab] of one sequence.
fn ref_attnres(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let emb = ref_embed(c, w, ids);
    let last = c.n_layers - 1;
    if c.variant == Variant::ATTNRES {
        let mut src: Vec<Seq> = vec![emb];
        for l in 0..c.n_layers {
            let h = ref_attnres_op(
                c,
                w,
                &format!("layers.{l}.attnres_attn"),
                &src.iter().collect::<Vec<_>>(),
                bug,
            );
            src.push(ref_attention(c, w, l, &h, true));
            let h = ref_attnres_op(
                c,
                w,
                &format!("layers.{l}.attnres_mlp"),
                &src.iter().collect::<Vec<_>>(),
                bug,
            );
            src.push(ref_mlp_seq(c, w, l, &h));
        }
        let x = ref_attnres_op(
            c,
            w,
            &format!("layers.{last}.attnres_out"),
            &src.iter().collect::<Vec<_>>(),
            bug,
        );
        return ref_head(c, w, &x);
    }
    // Block AttnRes: `blocks` holds the embedding and the completed block sums.
    let s = c.setting("attnres_block");
    let mut blocks: Vec<Seq> = Vec::new();
    let mut partial: Option<Seq> = Some(emb);
    let sources = |blocks: &Vec<Seq>, partial: &Option<Seq>| -> Vec<Seq> {
        blocks.iter().chain(partial.iter()).cloned().collect()
    };
    for l in 0..c.n_layers {
        let boundary = match bug {
            Bug::BlockBoundaryLate => l == 0 || (l >= s && l % s == 1),
            _ => l % s == 0,
        };
        if boundary {
            blocks.push(partial.take().expect("a block has begun"));
        }
        let src = sources(&blocks, &partial);
        let h = ref_attnres_op(
            c,
            w,
            &format!("layers.{l}.attnres_attn"),
            &src.iter().collect::<Vec<_>>(),
            bug,
        );
        let y = ref_attention(c, w, l, &h, true);
        let p = match partial.take() {
            Some(p) => ref_add(&p, &y),
            None => y,
        };
        let src = sources(&blocks, &Some(p.clone()));
        let h = ref_attnres_op(
            c,
            w,
            &format!("layers.{l}.attnres_mlp"),
            &src.iter().collect::<Vec<_>>(),
            bug,
        );
        partial = Some(ref_add(&p, &ref_mlp_seq(c, w, l, &h)));
    }
    let src = sources(&blocks, &partial);
    let x = ref_attnres_op(
        c,
        w,
        &format!("layers.{last}.attnres_out"),
        &src.iter().collect::<Vec<_>>(),
        bug,
    );
    ref_head(c, w, &x)
}

fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2))
}

/// Attention of layer l on normalised, separate q, k, v inputs (each [t][D]), no residual.
pub(crate) fn ref_attention_qkv(c: &Config, w: &RefWeights, l: usize, h: [&Seq; 3]) -> Seq {
    let (nh, r, dh) = (c.n_heads, c.n_kv_heads, c.head_dim());
    let heads = |name: &str, x: &Seq| -> Vec<Seq> {
        let m = w.get(&format!("layers.{l}.attn.{name}.weight"));
        x.iter()
            .map(|xt| matvec(m, xt).chunks(dh).map(|c| c.to_vec()).collect())
            .collect()
    };
    let (q, k, v) = (
        heads("q_proj", h[0]),
        heads("k_proj", h[1]),
        heads("v_proj", h[2]),
    );
    (0..h[0].len())
        .map(|t| {
            let y = causal_attention_ref(&q, &k, &v, t, nh / r, c.rope_theta);
            matvec(w.get(&format!("layers.{l}.attn.o_proj.weight")), &y)
        })
        .collect()
}

/// `muddformer` logits [t][vocab] of one sequence.
fn ref_muddformer(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let (d, big_l) = (c.d_model, c.n_layers);
    let x0 = ref_embed(c, w, ids);
    // Block 0: the llama block.
    let y = ref_add(&x0, &ref_attention(c, w, 0, &x0, true));
    let mut y = ref_add(&y, &ref_mlp_seq(c, w, 0, &y));
    let mut hids: Vec<Seq> = vec![x0];
    for i in 0..big_l {
        hids.push(y.clone());
        let last = i + 1 == big_l;
        let (cs, n) = (if last { 1 } else { 4 }, i + 2);
        let pre = format!("layers.{i}.mudd");
        let (w1, w2, a) = (
            w.get(&format!("{pre}.dynamic_w1")),
            w.get(&format!("{pre}.dynamic_w2")),
            w.get(&format!("{pre}.static_bias")),
        );
        // agg[c][t] = Σ_j A_t[c][j] X_j[t].
        let mut agg: Vec<Seq> = vec![Vec::new(); cs];
        for t in 0..ids.len() {
            let xn = match bug {
                Bug::DenseNotNormalised => hids[i + 1][t].clone(),
                _ => rmsnorm_ref(&hids[i + 1][t], None, c.norm_eps),
            };
            let hidden: Vec<f64> = matvec(w1, &xn).into_iter().map(gelu_erf).collect();
            let dw = matvec(w2, &hidden); // (C·n)
            for (ci, out) in agg.iter_mut().enumerate() {
                out.push(
                    (0..d)
                        .map(|e| {
                            (0..n)
                                .map(|j| (dw[ci * n + j] + a[ci * n + j]) * hids[j][t][e])
                                .sum()
                        })
                        .collect(),
                );
            }
        }
        if last {
            return ref_head(c, w, &agg[0]);
        }
        let l = i + 1;
        let norm = |name: &str, x: &Seq| -> Seq {
            let g = w.get(&format!("layers.{l}.{name}.weight"));
            x.iter()
                .map(|xt| rmsnorm_ref(xt, Some(g), c.norm_eps))
                .collect()
        };
        let (kk, vv) = match bug {
            Bug::KeyValueSwapped => (2, 1),
            _ => (1, 2),
        };
        let hq = norm("attn_norm", &agg[0]);
        let hk = norm("attn_k_norm", &agg[kk]);
        let hv = norm("attn_v_norm", &agg[vv]);
        let res = match bug {
            Bug::ResidualFromQuery => &agg[0],
            _ => &agg[3],
        };
        let h = ref_add(res, &ref_attention_qkv(c, w, l, [&hq, &hk, &hv]));
        y = ref_add(&h, &ref_mlp_seq(c, w, l, &h));
    }
    unreachable!("the last DA returns")
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// mHC (arXiv 2512.24880 as DeepSeek-V4 runs it; module docs of `mhc.rs`): n streams; per site
/// m = fn·f / rms(f) with f the concatenated streams; pre, post = σ(s·m + base) + ε;
/// comb = Sinkhorn_K(σ(s·m + base) + ε); h = Σ pre_i H_i; H'_i = post_i 𝒯(h) + Σ_j comb[i][j] H_j;
/// head Σ pre_i H_i with its own gate.
fn ref_mhc(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let (n, d, tn) = (models::mhc::STREAMS, c.d_model, ids.len());
    let (e, iters) = (models::mhc::HC_EPS, models::mhc::SINKHORN_ITERS);
    // m[k] for one token's streams.
    let mix = |fnw: &[f64], rows: usize, h: &[Vec<f64>]| -> Vec<f64> {
        let f: Vec<f64> = h.concat();
        let rms = (f.iter().map(|x| x * x).sum::<f64>() / f.len() as f64 + c.norm_eps).sqrt();
        (0..rows)
            .map(|k| {
                fnw[k * n * d..][..n * d]
                    .iter()
                    .zip(&f)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / rms
            })
            .collect()
    };
    let mut hs: Vec<Seq> = ref_embed(c, w, ids)
        .into_iter()
        .map(|x| vec![x; n])
        .collect();
    for l in 0..c.n_layers {
        for site in ["mhc_attn", "mhc_mlp"] {
            let p = format!("layers.{l}.{site}");
            let (fnw, base, s) = (
                w.get(&format!("{p}.hc_fn")),
                w.get(&format!("{p}.hc_base")),
                w.get(&format!("{p}.hc_scale")),
            );
            let mut pres = Vec::new();
            let mut posts = Vec::new();
            let mut combs = Vec::new();
            for h in &hs {
                let m = mix(fnw, (2 + n) * n, h);
                let gate = |k: usize, sc: f64| sigmoid(sc * m[k] + base[k]) + e;
                let pre: Vec<f64> = (0..n).map(|i| gate(i, s[0])).collect();
                let post: Vec<f64> = match bug {
                    Bug::PostIsPre => pre.clone(),
                    _ => (0..n).map(|i| gate(n + i, s[1])).collect(),
                };
                let mut comb: Vec<Vec<f64>> = (0..n)
                    .map(|i| (0..n).map(|j| gate(2 * n + i * n + j, s[2])).collect())
                    .collect();
                if bug != Bug::NoSinkhorn {
                    for _ in 0..iters {
                        for row in comb.iter_mut() {
                            let z: f64 = row.iter().sum::<f64>() + e;
                            row.iter_mut().for_each(|x| *x /= z);
                        }
                        for j in 0..n {
                            let z: f64 = (0..n).map(|i| comb[i][j]).sum::<f64>() + e;
                            (0..n).for_each(|i| comb[i][j] /= z);
                        }
                    }
                }
                pres.push(pre);
                posts.push(post);
                combs.push(comb);
            }
            let x: Seq = (0..tn)
                .map(|t| {
                    (0..d)
                        .map(|k| (0..n).map(|i| pres[t][i] * hs[t][i][k]).sum())
                        .collect()
                })
                .collect();
            let y: Seq = if site == "mhc_attn" {
                ref_attention(c, w, l, &x, true)
            } else {
                ref_mlp_seq(c, w, l, &x)
            };
            let cm = |t: usize, i: usize, j: usize| match bug {
                Bug::CombTransposed => combs[t][j][i],
                _ => combs[t][i][j],
            };
            hs = (0..tn)
                .map(|t| {
                    (0..n)
                        .map(|i| {
                            (0..d)
                                .map(|k| {
                                    posts[t][i] * y[t][k]
                                        + (0..n).map(|j| cm(t, i, j) * hs[t][j][k]).sum::<f64>()
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect();
        }
    }
    let p = format!("layers.{}.mhc_head", c.n_layers - 1);
    let (fnw, base, s) = (
        w.get(&format!("{p}.hc_fn")),
        w.get(&format!("{p}.hc_base")),
        w.get(&format!("{p}.hc_scale"))[0],
    );
    let x: Seq = hs
        .iter()
        .map(|h| {
            let m = mix(fnw, n, h);
            let pre: Vec<f64> = (0..n).map(|i| sigmoid(s * m[i] + base[i]) + e).collect();
            (0..d)
                .map(|k| (0..n).map(|i| pre[i] * h[i][k]).sum())
                .collect()
        })
        .collect();
    ref_head(c, w, &x)
}

/// Max |model − reference| over a (B=2, T=5) batch at random weights, for `bug`.
fn reference_gap(c: &Config, seed: u64, bug: Bug) -> Result<f64> {
    model_vs_reference(c, seed, 5, &|w, seq| {
        Ok(match c.variant.name() {
            "attnres" | "attnres-block" => ref_attnres(c, w, seq, bug),
            "muddformer" => ref_muddformer(c, w, seq, bug),
            "mhc" => ref_mhc(c, w, seq, bug),
            v => anyhow::bail!("no scalar reference for {v:?}"),
        })
    })
}

/// Max |model − reference| over a (B=2, T=`t`) batch at random weights (`seed`), where
/// `reference(w, ids)` gives one sequence's logits [t][vocab] from the weights by name; fails
/// when the reference leaves a weight unread (it would check less than it claims).
pub(crate) fn model_vs_reference(
    c: &Config,
    seed: u64,
    t: usize,
    reference: &dyn Fn(&RefWeights, &[u32]) -> Result<Seq>,
) -> Result<f64> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    let w = randomize_every_var(&vm, seed ^ 0x5eed)?;
    let ids = random_ids(2, t, c.vocab_size, seed + 1)?;
    let logits: Vec<Vec<Vec<f64>>> = model.forward(&ids)?.to_vec3()?;
    let ids: Vec<Vec<u32>> = ids.to_vec2()?;
    let mut gap = 0.0f64;
    for (b, seq) in ids.iter().enumerate() {
        let reference = reference(&w, seq)?;
        ensure!(reference.len() == seq.len());
        for (m_t, r_t) in logits[b].iter().zip(&reference) {
            ensure!(m_t.len() == r_t.len() && r_t.iter().all(|x| x.is_finite()));
            for (a, e) in m_t.iter().zip(r_t) {
                gap = gap.max((a - e).abs());
            }
        }
    }
    let unread: Vec<&String> =
        w.w.keys()
            .filter(|k| !w.used.borrow().contains(*k))
            .collect();
    ensure!(
        unread.is_empty(),
        "{:?}: reference ignores {unread:?}",
        c.variant
    );
    Ok(gap)
}

fn reference_configs(v: Variant) -> Vec<Config> {
    let mut out = vec![
        tiny(v, 3, 2, 2, false),
        tiny(v, 2, 2, 1, true),
        tiny(v, 5, 2, 1, false),
    ];
    if v == Variant::ATTNRES_BLOCK {
        for s in [1, 3] {
            out.push(tiny(v, 5, 2, 1, false).with_setting("attnres_block", s));
        }
        out.push(tiny(v, 1, 2, 2, true).with_setting("attnres_block", 1));
    }
    out
}

#[test]
fn new_rivals_match_scalar_references_at_random_weights() -> Result<()> {
    for v in NEW {
        for (k, c) in reference_configs(v).into_iter().enumerate() {
            let gap = reference_gap(&c, 200 + k as u64, Bug::None)?;
            ensure!(
                gap <= 1e-9,
                "{c:?}: model vs scalar reference differ by {gap}"
            );
        }
    }
    Ok(())
}

#[test]
fn new_scalar_references_catch_deliberate_bugs() -> Result<()> {
    let block3 = |l| tiny(Variant::ATTNRES_BLOCK, l, 2, 2, false).with_setting("attnres_block", 3);
    let cases = [
        (
            tiny(Variant::ATTNRES, 3, 2, 2, false),
            Bug::KeysNotNormalised,
        ),
        (
            tiny(Variant::ATTNRES, 3, 2, 2, false),
            Bug::LastSourceDropped,
        ),
        (
            tiny(Variant::ATTNRES_BLOCK, 3, 2, 2, false),
            Bug::KeysNotNormalised,
        ),
        (
            tiny(Variant::ATTNRES_BLOCK, 3, 2, 2, false),
            Bug::LastSourceDropped,
        ),
        (block3(5), Bug::BlockBoundaryLate),
        (
            tiny(Variant::MUDDFORMER, 3, 2, 2, false),
            Bug::KeyValueSwapped,
        ),
        (
            tiny(Variant::MUDDFORMER, 3, 2, 2, false),
            Bug::ResidualFromQuery,
        ),
        (
            tiny(Variant::MUDDFORMER, 3, 2, 2, false),
            Bug::DenseNotNormalised,
        ),
        (tiny(Variant::MHC, 3, 2, 2, false), Bug::NoSinkhorn),
        (tiny(Variant::MHC, 3, 2, 2, false), Bug::CombTransposed),
        (tiny(Variant::MHC, 3, 2, 2, false), Bug::PostIsPre),
    ];
    for (c, bug) in cases {
        let gap = reference_gap(&c, 200, bug)?;
        ensure!(
            gap > 1e-4,
            "{:?} with {bug:?} went unnoticed (gap {gap})",
            c.variant
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. AttnRes source counts: forward pass = FLOP formula = closed form
// ---------------------------------------------------------------------------------------------

/// The forward pass checks every op's source count against `attnres::source_counts` (it fails
/// otherwise), and the FLOP count is built from those counts; here they also meet the closed
/// form of the paper's description.
#[test]
fn attnres_source_counts_match_forward_and_closed_form() -> Result<()> {
    use models::attnres::{source_counts, Op};
    for l_n in 1..=6 {
        for s in 1..=7 {
            for block in [false, true] {
                let v = if block {
                    Variant::ATTNRES_BLOCK
                } else {
                    Variant::ATTNRES
                };
                let c = cfg(v, l_n, 2, 2, false).with_setting("attnres_block", s);
                let (ops, adds) = source_counts(&c, block);
                ensure!(ops.len() == 2 * l_n + 1);
                for (op, n) in &ops {
                    let want = match (block, *op) {
                        (false, Op::Attn(l)) => 2 * l + 1,
                        (false, Op::Mlp(l)) => 2 * l + 2,
                        (false, Op::Out) => 2 * l_n + 1,
                        (true, Op::Attn(l)) if l % s == 0 => l / s + 1,
                        (true, Op::Attn(l)) => l / s + 2,
                        (true, Op::Mlp(l)) => l / s + 2,
                        (true, Op::Out) => (l_n - 1) / s + 2,
                    };
                    ensure!(*n == want, "{c:?} {op:?}: {n} vs {want}");
                }
                let blocks = if block { l_n.div_ceil(s) } else { 2 * l_n };
                ensure!(adds == 2 * l_n - blocks, "{c:?}: {adds} partial-sum adds");
                if s <= 3 {
                    let (_, model) = init_varmap(&c, 1, DType::F64, &Device::Cpu)?;
                    model.forward(&random_ids(1, 3, c.vocab_size, 2)?)?; // counts checked inside
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Optimizer groups
// ---------------------------------------------------------------------------------------------

#[test]
fn new_rivals_optimizer_groups() -> Result<()> {
    for v in NEW {
        let (vm, _) = init_varmap(&cfg(v, 3, 4, 2, false), 0, DType::F32, &Device::Cpu)?;
        let mut own = 0;
        for (name, _) in sorted_vars(&vm) {
            let want = if name.ends_with(".query")
                || name.ends_with(".key_gain")
                || name.ends_with(".hc_base")
                || name.ends_with(".hc_scale")
            {
                ParamGroup::NoDecay
            } else if name.contains(".mudd.dynamic_") || name.ends_with(".hc_fn") {
                ParamGroup::Decay
            } else if name.contains(".mudd.static_") || name.ends_with("_norm.weight") {
                ParamGroup::NoDecay
            } else {
                continue;
            };
            own += 1;
            ensure!(
                param_group(v, &name) == want,
                "{name}: {:?}",
                param_group(v, &name)
            );
        }
        ensure!(own > 0, "{v:?}: no own parameters found");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. The mixing weights a trace records (`Trace::mixing`, read by `harness analyze`)
// ---------------------------------------------------------------------------------------------

/// The (reader, sources) labels and the (B·T, S) weights of every mixing record.
fn mixing_of(
    model: &models::Model,
    ids: &Tensor,
) -> Result<Vec<(String, Vec<String>, Vec<Vec<f64>>)>> {
    let (logits, trace) = model.forward_trace(ids)?;
    // Recording changes nothing in the forward pass.
    ensure!(max_abs_diff(&logits, &model.forward(ids)?)? == 0.0);
    trace
        .mixing
        .iter()
        .map(|m| {
            let s = m.weights.dim(candle_core::D::Minus1)?;
            ensure!(s == m.sources.len(), "{}: {s} weights", m.consumer);
            let w = m
                .weights
                .to_dtype(DType::F64)?
                .reshape(((), s))?
                .to_vec2::<f64>()?;
            Ok((m.consumer.clone(), m.sources.clone(), w))
        })
        .collect()
}

fn names(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

/// At init every variant's recorded weights are its neutral read, exactly as its module docs
/// state: AttnRes uniform over its sources (zero pseudo-queries), MUDDFormer all on the newest
/// hidden state (W2 = 0, a = e_current), HC on stream l mod n (A_m = e_(l mod n)), mHC σ(0) + ε
/// on every stream (fn ~ N(0, 0.02²) makes it approximate); with the readers and sources named.
#[test]
fn traces_record_each_variants_mixing_weights_at_init() -> Result<()> {
    let ids = random_ids(2, 5, 23, 3)?; // cfg's vocabulary
    let model = |v: Variant| -> Result<models::Model> {
        Ok(init_varmap(&cfg(v, 3, 4, 2, false), 0, DType::F32, &Device::Cpu)?.1)
    };
    // attnres: A0 M0 A1 M1 A2 M2 out over emb, A0, M0, …
    let m = mixing_of(&model(Variant::ATTNRES)?, &ids)?;
    let readers: Vec<&str> = m.iter().map(|r| r.0.as_str()).collect();
    ensure!(
        readers == ["A0", "M0", "A1", "M1", "A2", "M2", "out"],
        "{readers:?}"
    );
    ensure!(m[3].1 == names(&["emb", "A0", "M0", "A1"]), "{:?}", m[3].1);
    for (i, (r, src, w)) in m.iter().enumerate() {
        ensure!(
            src.len() == i + 1 && w.len() == if i == 0 { 1 } else { 10 },
            "{r}"
        );
        let u = 1.0 / src.len() as f64;
        ensure!(
            w.iter().flatten().all(|&x| (x - u).abs() < 1e-6),
            "{r}: {w:?}"
        );
    }
    // attnres-block, 2 layers per block: emb, then b1 (layers 0–1), b2 (layer 2) as they fill.
    let m = mixing_of(&model(Variant::ATTNRES_BLOCK)?, &ids)?;
    let got: Vec<(&str, usize)> = m.iter().map(|r| (r.0.as_str(), r.1.len())).collect();
    ensure!(
        got == [
            ("A0", 1),
            ("M0", 2),
            ("A1", 2),
            ("M1", 2),
            ("A2", 2),
            ("M2", 3),
            ("out", 3)
        ],
        "{got:?}"
    );
    ensure!(m[6].1 == names(&["emb", "b1", "b2"]));
    // muddformer: q, k, v, r into blocks 1 and 2, then out; one-hot on the newest state.
    let m = mixing_of(&model(Variant::MUDDFORMER)?, &ids)?;
    let readers: Vec<&str> = m.iter().map(|r| r.0.as_str()).collect();
    ensure!(
        readers == ["B1.q", "B1.k", "B1.v", "B1.r", "B2.q", "B2.k", "B2.v", "B2.r", "out"],
        "{readers:?}"
    );
    ensure!(m[8].1 == names(&["emb", "B0", "B1", "B2"]));
    for (r, src, w) in &m {
        let k = src.len() - 1;
        ensure!(
            w.iter().all(|row| row
                .iter()
                .enumerate()
                .all(|(j, &x)| x == (j == k) as u8 as f64)),
            "{r}: {w:?}"
        );
    }
    // hyper and hyper-static: A_m = e_(l mod 4), the static one once (1,1,n) per reader.
    for (v, rows) in [(Variant::HYPER, 10), (Variant::HYPER_STATIC, 1)] {
        let m = mixing_of(&model(v)?, &ids)?;
        ensure!(m.len() == 6, "{v:?}");
        for (i, (r, src, w)) in m.iter().enumerate() {
            ensure!(
                *src == models::Mixing::streams(4) && w.len() == rows,
                "{v:?} {r}"
            );
            let l = i / 2;
            ensure!(*r == format!("{}{l}", ["A", "M"][i % 2]));
            ensure!(
                w.iter().all(|row| row
                    .iter()
                    .enumerate()
                    .all(|(j, &x)| x == (j == l % 4) as u8 as f64)),
                "{v:?} {r}: {w:?}"
            );
        }
    }
    // mhc: pre = σ(small) + ε ≈ ½ on every stream, for the six sites and the head.
    let m = mixing_of(&model(Variant::MHC)?, &ids)?;
    ensure!(m.len() == 7 && m[6].0 == "out");
    let off = m
        .iter()
        .flat_map(|r| r.2.iter().flatten())
        .fold(0.0f64, |a, &x| a.max((x - 0.5).abs()));
    ensure!(
        off > 0.0 && off < 0.2,
        "mhc pre at init: max |pre − ½| = {off}"
    );
    Ok(())
}

/// At random weights the records are the weights the forward pass used: AttnRes's sum to 1 per
/// token (a softmax), hyper-static's are its static A_m column, mHC's lie in (ε, 1 + ε), and
/// tokens differ where the weights are per token.
#[test]
fn traces_record_the_weights_the_forward_pass_uses() -> Result<()> {
    let ids = random_ids(2, 5, 23, 4)?;
    for v in [
        Variant::ATTNRES,
        Variant::ATTNRES_BLOCK,
        Variant::MUDDFORMER,
        Variant::HYPER,
        Variant::HYPER_STATIC,
        Variant::MHC,
    ] {
        let (vm, model) = init_varmap(&cfg(v, 3, 4, 2, false), 0, DType::F64, &Device::Cpu)?;
        let w = randomize_every_var(&vm, 11)?;
        let m = mixing_of(&model, &ids)?;
        ensure!(!m.is_empty(), "{v:?}");
        for (r, _, rows) in &m {
            let per_token = v != Variant::HYPER_STATIC && rows.len() > 1;
            if per_token {
                ensure!(
                    rows.iter().any(|x| x != &rows[0]),
                    "{v:?} {r}: the same weights at every token"
                );
            }
            if v == Variant::ATTNRES || v == Variant::ATTNRES_BLOCK {
                ensure!(
                    rows.iter()
                        .all(|x| (x.iter().sum::<f64>() - 1.0).abs() < 1e-12),
                    "{v:?} {r}"
                );
            }
            if v == Variant::MHC {
                ensure!(
                    rows.iter().flatten().all(|&x| x > 0.0 && x < 1.0 + 2e-6),
                    "{r}"
                );
            }
        }
        if v == Variant::HYPER_STATIC {
            for (i, (r, _, rows)) in m.iter().enumerate() {
                let name = format!(
                    "layers.{}.{}.static_alpha",
                    i / 2,
                    ["hc_attn", "hc_mlp"][i % 2]
                );
                let a = w.get(&name); // (n, n+1) row-major
                let want: Vec<f64> = (0..4).map(|j| a[j * 5]).collect();
                ensure!(rows[0] == want, "{r}: {:?} vs {want:?}", rows[0]);
            }
        }
    }
    Ok(())
}
