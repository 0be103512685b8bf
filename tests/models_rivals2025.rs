//! The rivals the LIMe reviews asked for: `canon` (Canon layers, Allen-Zhu 2025), `dca`
//! (DeepCrossAttention, Heddes et al. 2025) and `laurel` (LAuReL-RW+LR, Menghani et al. 2024).
//!
//! The generic checks of `models_rivals.rs` and `models_accounting.rs` cover them as every
//! built-in (parameter counts vs built tensors and a closed form, FLOP recount, causality and
//! KV-cache decoding at init, overfitting with a gradient for every Var, names, golden FLOP
//! tables). This file adds, as `models_rivals2026.rs` does for its variants:
//! - exact reductions to llama at each neutral setting, at random shared weights (section 1);
//! - causality and KV-cache (and convolution-state) decoding at random weights, over Canon's
//!   position sets and kernel sizes (sections 2–3);
//! - f64 finite-difference gradients of the new weights (section 4);
//! - scalar references from the papers' equations (plain loops) within 1e-9 at random weights,
//!   with deliberate bugs they must catch (section 5);
//! - the published inits, DCA's gradient through ReLU at 0, optimizer groups, the trace's
//!   mixing weights and the letter-valued setting (sections 6–8).
//!
//! Neutral settings (each module's docs): `canon`: every kernel 0; `dca`: b = 1, w = 0, k/v input
//! norms = attn_norm (its init); `laurel`: α = β = 1, U = 0 (its init).

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use models::{init_varmap, param_group, sorted_vars, Config, KvCache, ParamGroup, Variant};

use crate::models_correctness::{
    causal_attention_ref, cfg, loss, matvec, max_abs_diff, random_ids, randomize, rmsnorm_ref, var,
};
use crate::models_rivals::{
    copy_shared, pair, randomize_every_var, ref_add, ref_attention, ref_embed, ref_head, ref_mlp,
    tiny, with, RefWeights, Seq,
};
use crate::models_rivals2026::{
    causal_at_random_weights, fd_check_at_random_weights, model_vs_reference, ref_attention_qkv,
    ref_mlp_seq,
};

const NEW: [Variant; 3] = [Variant::CANON, Variant::DCA, Variant::LAUREL];

/// Canon's (positions mask, kernel) sweep: the default ABCD k = 4, and subsets and sizes that
/// exercise each hook alone and the k = 1 / k > T edge cases.
const CANON_SETTINGS: [(usize, usize); 6] = [
    (0b1111, 4),
    (0b0001, 2),
    (0b0010, 3),
    (0b0100, 1),
    (0b1000, 4),
    (0b0101, 12),
];

/// Configs of `v` over the usual shapes (layers, heads, kv heads, tied), with Canon's settings
/// and LAuReL's ranks swept.
fn configs(v: Variant) -> Vec<Config> {
    let mut out = Vec::new();
    for (l, h, r, tie) in [
        (3, 4, 4, false),
        (2, 4, 2, true),
        (3, 2, 1, false),
        (1, 2, 2, false),
    ] {
        let c = cfg(v, l, h, r, tie);
        match v {
            v if v == Variant::CANON => {
                for (m, k) in CANON_SETTINGS {
                    out.push(
                        c.clone()
                            .with_setting("canon_positions", m)
                            .with_setting("canon_kernel", k),
                    );
                }
            }
            v if v == Variant::LAUREL => {
                out.push(c.clone());
                out.push(c.clone().with_setting("laurel_rank", 1));
                out.push(c.with_setting("laurel_rank", 16)); // full rank at D = 16
            }
            _ => out.push(c),
        }
    }
    out
}

fn set_all(vm: &candle_nn::VarMap, suffix: &str, value: f64) -> Result<usize> {
    let mut n = 0;
    for (name, v) in sorted_vars(vm) {
        if name.ends_with(suffix) {
            v.set(&(v.as_tensor().ones_like()? * value)?)?;
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// 1. Exact reductions
// ---------------------------------------------------------------------------------------------

#[test]
fn canon_with_zero_kernels_equals_llama() -> Result<()> {
    for c in configs(Variant::CANON) {
        let (vm, model, _, own) = pair(&c, 80)?;
        let sites = c.setting("canon_positions").count_ones() as usize;
        ensure!(own.len() == sites * c.n_layers, "{c:?}: own {own:?}");
        // Random llama weights (norm gains included) shared, every kernel zero.
        let (llama_vm, llama) =
            init_varmap(&with(Variant::LLAMA, &c), 81, DType::F64, &Device::Cpu)?;
        randomize_every_var(&llama_vm, 82)?;
        copy_shared(&llama_vm, &vm)?;
        for name in &own {
            let v = var(&vm, name)?;
            v.set(&v.as_tensor().zeros_like()?)?;
        }
        let ids = random_ids(2, 9, c.vocab_size, 83)?;
        let reference = llama.forward(&ids)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d == 0.0, "{c:?}: zero kernels vs llama: {d}");
        // Any one kernel off zero changes the logits.
        randomize(&vm, &own[own.len() - 1], 0.3, 84)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(
            d > 1e-6,
            "{c:?}: a non-zero kernel should change the logits ({d})"
        );
    }
    Ok(())
}

#[test]
fn dca_at_its_neutral_setting_equals_llama() -> Result<()> {
    for c in configs(Variant::DCA) {
        let l = c.n_layers;
        let (vm, model, llama, own) = pair(&c, 85)?;
        ensure!(own.len() == 4 * l + 2, "own params {own:?}");
        let ids = random_ids(2, 9, c.vocab_size, 86)?;
        let d = max_abs_diff(&model.forward(&ids)?, &llama.forward(&ids)?)?;
        ensure!(d <= 1e-12, "{c:?}: dca at init vs llama: {d}");
        // Random shared weights, the k/v norms copied from attn_norm, b = 1, w = 0.
        let (llama_vm, llama) =
            init_varmap(&with(Variant::LLAMA, &c), 87, DType::F64, &Device::Cpu)?;
        randomize_every_var(&llama_vm, 88)?;
        copy_shared(&llama_vm, &vm)?;
        for layer in 0..l {
            let g = var(&vm, &format!("layers.{layer}.attn_norm.weight"))?;
            for n in ["attn_k_norm", "attn_v_norm"] {
                var(&vm, &format!("layers.{layer}.{n}.weight"))?.set(g.as_tensor())?;
            }
        }
        let reference = llama.forward(&ids)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-12, "{c:?}: neutral dca vs random llama: {d}");
        // The input-dependent part (w ≠ 0) breaks it; so does a static weight off 1.
        randomize(&vm, ".dca.w", 0.3, 89)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d > 1e-6, "w ≠ 0 should change the logits ({d})");
        randomize(&vm, ".dca.w", 0.0, 89)?;
        set_all(&vm, "dca_out.bias", 0.5)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d > 1e-6, "b ≠ 1 should change the logits ({d})");
    }
    Ok(())
}

#[test]
fn laurel_at_its_neutral_setting_equals_llama() -> Result<()> {
    for c in configs(Variant::LAUREL) {
        let (vm, model, llama, own) = pair(&c, 90)?;
        ensure!(own.len() == 4 * c.n_layers, "own params {own:?}");
        let ids = random_ids(2, 9, c.vocab_size, 91)?;
        let d = max_abs_diff(&model.forward(&ids)?, &llama.forward(&ids)?)?;
        ensure!(d <= 1e-12, "{c:?}: laurel at init vs llama: {d}");
        // Random shared weights and a random down map D: still llama while U = 0, α = β = 1.
        let (llama_vm, llama) =
            init_varmap(&with(Variant::LLAMA, &c), 92, DType::F64, &Device::Cpu)?;
        randomize_every_var(&llama_vm, 93)?;
        copy_shared(&llama_vm, &vm)?;
        randomize(&vm, ".laurel.down", 0.5, 94)?;
        let reference = llama.forward(&ids)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-12, "{c:?}: neutral laurel vs random llama: {d}");
        for (what, pat) in [("U ≠ 0", ".laurel.up"), ("α ≠ 1", ".laurel.alpha")] {
            let (vm2, model2, _, _) = pair(&c, 90)?;
            copy_shared(&llama_vm, &vm2)?;
            randomize(&vm2, pat, 0.5, 95)?;
            let d = max_abs_diff(&model2.forward(&ids)?, &reference)?;
            ensure!(d > 1e-6, "{c:?}: {what} should change the logits ({d})");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Causality at random weights
// ---------------------------------------------------------------------------------------------

#[test]
fn canon_dca_laurel_are_causal_at_random_weights() -> Result<()> {
    for v in NEW {
        for c in configs(v) {
            causal_at_random_weights(&c, 96)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. KV-cache (and convolution-state) decoding at random weights
// ---------------------------------------------------------------------------------------------

#[test]
fn canon_dca_laurel_decoding_matches_full_forward_at_random_weights() -> Result<()> {
    for v in NEW {
        for c in configs(v) {
            let (vm, model) = init_varmap(&c, 99, DType::F64, &Device::Cpu)?;
            randomize_every_var(&vm, 100)?;
            let ids = random_ids(2, 11, c.vocab_size, 101)?;
            let full = model.forward(&ids)?;
            let mut cache = KvCache::new(&c);
            // Two sequences through one cache: `clear` must forget the convolutions' inputs too.
            for round in 0..2 {
                let mut pos = 0;
                for n in [3, 1, 1, 4, 2] {
                    let out = model.forward_cached(&ids.narrow(1, pos, n)?, &mut cache)?;
                    let d = max_abs_diff(&out, &full.narrow(1, pos, n)?)?;
                    ensure!(
                        d <= 1e-10,
                        "{c:?} round {round}: chunk at {pos} (len {n}) differs by {d}"
                    );
                    pos += n;
                }
                cache.clear();
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Finite-difference gradients of the new weights (f64, random weights)
// ---------------------------------------------------------------------------------------------

#[test]
fn canon_dca_laurel_weights_match_finite_differences() -> Result<()> {
    let checks: [(Config, &[(&str, &[usize])]); 4] = [
        (
            cfg(Variant::CANON, 3, 4, 2, false),
            &[
                ("layers.0.canon_a.weight", &[0, 17, 63]),
                ("layers.1.canon_b.weight", &[2, 70, 100, 127]), // q, k and v rows
                ("layers.2.canon_c.weight", &[5, 40]),
                ("layers.1.canon_d.weight", &[3, 170, 300]), // gate and up rows
            ],
        ),
        (
            cfg(Variant::CANON, 2, 2, 2, false).with_setting("canon_kernel", 2),
            &[
                ("layers.0.canon_b.weight", &[1, 60]),
                ("layers.1.canon_d.weight", &[0, 159]),
            ],
        ),
        (
            cfg(Variant::DCA, 3, 4, 2, false),
            &[
                ("layers.0.dca.bias", &[0, 20, 47]),
                ("layers.2.dca.bias", &[3, 70, 143]),
                ("layers.1.dca.w", &[0, 17, 40]),
                ("layers.2.dca_out.bias", &[1, 33, 63]),
                ("layers.2.dca_out.w", &[2, 9]),
                ("layers.1.attn_k_norm.weight", &[4]),
                ("layers.0.attn_v_norm.weight", &[11]),
            ],
        ),
        (
            cfg(Variant::LAUREL, 3, 4, 2, false),
            &[
                ("layers.0.laurel.alpha", &[0]),
                ("layers.2.laurel.beta", &[0]),
                ("layers.1.laurel.down", &[0, 33, 63]),
                ("layers.2.laurel.up", &[5, 60]),
            ],
        ),
    ];
    for (c, list) in checks {
        fd_check_at_random_weights(&c, 102, list)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Scalar references (plain loops, no candle) at random, non-neutral weights
// ---------------------------------------------------------------------------------------------
//
// Canon (the official code, `canon_helper.py` / `modeling_llama_canon.py`): at a position on,
//   h'[t][c] = h[t][c] + Σ_{j<k} W[c][j] · h[t−(k−1)+j][c]   (h[<0] = 0);
// A on attn_norm(x), B on [q|k|v] after the projections (before RoPE), C on mlp_norm(x), D on
// [gate|up] before silu(gate)·up.
// DCA (arXiv 2502.06785, Fig. 4 and GRN-v3 of §3.1): GRN_c(G)[t] = Σ_j (b_c[j] + ReLU(w_c·G_j[t]))
// ⊙ G_j[t]; block l: a = Attn(attn_norm(q̄), k_norm(k̄), v_norm(v̄)), o_l = a + MLP(q̄ + a);
// output GRN over [x_0, o_0, …, o_{L−1}].
// LAuReL-RW+LR (arXiv 2411.07501, Eq. 5): x' = α·(a + MLP(x + a)) + β·(x + U·D·x).

/// Deliberate bugs in the references: each must make the comparison fail.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// Canon: the kernel read back to front (W[c][k−1−j]).
    KernelFlipped,
    /// Canon: the convolution without its residual (h' = conv(h)).
    ConvWithoutResidual,
    /// Canon: B's key rows taken for the values and the value rows for the keys.
    KeyValueRowsSwapped,
    /// DCA: the ReLU over the static weight too (ReLU(b + w·G)).
    ReluOverBias,
    /// DCA: the block output keeps its input (o_l = q̄ + a + MLP(q̄ + a)).
    BlockAddsInput,
    /// DCA: the output is the plain sum of the stack (no output GRN).
    NoOutputGrn,
    /// LAuReL: β scales only the low-rank term (x + β·U·D·x).
    BetaOnLowRankOnly,
    /// LAuReL: the low-rank map reads the block's normalised input.
    LowRankReadsNorm,
}

/// One residual causal depthwise convolution over a sequence of C-vectors, kernel (C, k).
fn ref_conv(x: &Seq, w: &[f64], k: usize, bug: Bug) -> Seq {
    (0..x.len())
        .map(|t| {
            (0..x[t].len())
                .map(|ch| {
                    let conv: f64 = (0..k)
                        .filter(|&j| t + j + 1 >= k)
                        .map(|j| {
                            let tap = match bug {
                                Bug::KernelFlipped => w[ch * k + (k - 1 - j)],
                                _ => w[ch * k + j],
                            };
                            tap * x[t + j + 1 - k][ch]
                        })
                        .sum();
                    match bug {
                        Bug::ConvWithoutResidual => conv,
                        _ => x[t][ch] + conv,
                    }
                })
                .collect()
        })
        .collect()
}

fn ref_canon(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let (d, dh, f) = (c.d_model, c.head_dim(), c.d_ff);
    let (nq, nkv) = (c.n_heads * dh, c.n_kv_heads * dh);
    let (mask, k) = (c.setting("canon_positions"), c.setting("canon_kernel"));
    let on = |bit: usize| mask & bit != 0;
    let kernel = |l: usize, s: &str| w.get(&format!("layers.{l}.canon_{s}.weight"));
    let mut x = ref_embed(c, w, ids);
    for l in 0..c.n_layers {
        let g = w.get(&format!("layers.{l}.attn_norm.weight"));
        let mut h: Seq = x
            .iter()
            .map(|xt| rmsnorm_ref(xt, Some(g), c.norm_eps))
            .collect();
        if on(1) {
            h = ref_conv(&h, kernel(l, "a"), k, bug);
        }
        // [q | k | v] per position, flat (head-major), as the official B convolution reads it.
        let mut qkv: Seq = h
            .iter()
            .map(|ht| {
                ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .flat_map(|p| matvec(w.get(&format!("layers.{l}.attn.{p}.weight")), ht))
                    .collect()
            })
            .collect();
        if on(2) {
            let mut wb = kernel(l, "b").to_vec(); // rows q | k | v
            if bug == Bug::KeyValueRowsSwapped {
                let (kr, vr) = ((nq * k)..((nq + nkv) * k), ((nq + nkv) * k)..wb.len());
                let (kk, vv) = (wb[kr.clone()].to_vec(), wb[vr.clone()].to_vec());
                wb[kr].copy_from_slice(&vv);
                wb[vr].copy_from_slice(&kk);
            }
            qkv = ref_conv(&qkv, &wb, k, bug);
        }
        let split = |from: usize, n: usize| -> Vec<Seq> {
            qkv.iter()
                .map(|r| r[from..from + n].chunks(dh).map(|c| c.to_vec()).collect())
                .collect()
        };
        let (q, kk, v) = (split(0, nq), split(nq, nkv), split(nq + nkv, nkv));
        let attn: Seq = (0..ids.len())
            .map(|t| {
                let y =
                    causal_attention_ref(&q, &kk, &v, t, c.n_heads / c.n_kv_heads, c.rope_theta);
                matvec(w.get(&format!("layers.{l}.attn.o_proj.weight")), &y)
            })
            .collect();
        x = ref_add(&x, &attn);
        let g = w.get(&format!("layers.{l}.mlp_norm.weight"));
        let mut h: Seq = x
            .iter()
            .map(|xt| rmsnorm_ref(xt, Some(g), c.norm_eps))
            .collect();
        if on(4) {
            h = ref_conv(&h, kernel(l, "c"), k, bug);
        }
        let mut gu: Seq = h
            .iter()
            .map(|ht| {
                let gate = matvec(w.get(&format!("layers.{l}.mlp.w_gate.weight")), ht);
                let up = matvec(w.get(&format!("layers.{l}.mlp.w_up.weight")), ht);
                gate.into_iter().chain(up).collect()
            })
            .collect();
        if on(8) {
            gu = ref_conv(&gu, kernel(l, "d"), k, bug);
        }
        let m: Seq = gu
            .iter()
            .map(|r| {
                let act: Vec<f64> = (0..f)
                    .map(|i| r[i] / (1.0 + (-r[i]).exp()) * r[f + i])
                    .collect();
                matvec(w.get(&format!("layers.{l}.mlp.w_down.weight")), &act)
            })
            .collect();
        x = ref_add(&x, &m);
        assert_eq!(x[0].len(), d);
    }
    ref_head(c, w, &x)
}

/// One GRN-v3 with `streams` outputs over `stack`, weights under `prefix`.
fn ref_grn(
    c: &Config,
    w: &RefWeights,
    prefix: &str,
    stack: &[Seq],
    streams: usize,
    bug: Bug,
) -> Vec<Seq> {
    let (d, n) = (c.d_model, stack.len());
    let (b, wv) = (
        w.get(&format!("{prefix}.bias")),
        w.get(&format!("{prefix}.w")),
    );
    (0..streams)
        .map(|ci| {
            (0..stack[0].len())
                .map(|t| {
                    let mut out = vec![0.0; d];
                    for j in 0..n {
                        let g = &stack[j][t];
                        let logit: f64 = (0..d).map(|i| wv[ci * d + i] * g[i]).sum();
                        for i in 0..d {
                            let bias = b[(ci * n + j) * d + i];
                            let weight = match bug {
                                Bug::ReluOverBias => (bias + logit).max(0.0),
                                _ => bias + logit.max(0.0),
                            };
                            out[i] += weight * g[i];
                        }
                    }
                    out
                })
                .collect()
        })
        .collect()
}

fn ref_dca(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let big_l = c.n_layers;
    let mut stack = vec![ref_embed(c, w, ids)];
    for l in 0..big_l {
        let agg = ref_grn(c, w, &format!("layers.{l}.dca"), &stack, 3, bug);
        let norm = |s: &Seq, name: &str| -> Seq {
            let g = w.get(&format!("layers.{l}.{name}.weight"));
            s.iter()
                .map(|x| rmsnorm_ref(x, Some(g), c.norm_eps))
                .collect()
        };
        let (hq, hk, hv) = (
            norm(&agg[0], "attn_norm"),
            norm(&agg[1], "attn_k_norm"),
            norm(&agg[2], "attn_v_norm"),
        );
        let a = ref_attention_qkv(c, w, l, [&hq, &hk, &hv]);
        let mut o = ref_add(&a, &ref_mlp_seq(c, w, l, &ref_add(&agg[0], &a)));
        if bug == Bug::BlockAddsInput {
            o = ref_add(&o, &agg[0]);
        }
        stack.push(o);
    }
    let out = ref_grn(
        c,
        w,
        &format!("layers.{}.dca_out", big_l - 1),
        &stack,
        1,
        bug,
    )
    .remove(0);
    let x = match bug {
        Bug::NoOutputGrn => stack[1..]
            .iter()
            .fold(stack[0].clone(), |s, o| ref_add(&s, o)),
        _ => out,
    };
    ref_head(c, w, &x)
}

fn ref_laurel(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let mut x = ref_embed(c, w, ids);
    for l in 0..c.n_layers {
        let p = format!("layers.{l}.laurel");
        let (alpha, beta) = (
            w.get(&format!("{p}.alpha"))[0],
            w.get(&format!("{p}.beta"))[0],
        );
        let (down, up) = (w.get(&format!("{p}.down")), w.get(&format!("{p}.up")));
        let a = ref_attention(c, w, l, &x, true);
        let xa = ref_add(&x, &a);
        let m: Seq = xa.iter().map(|t| ref_mlp(c, w, l, t, true)).collect();
        let g = w.get(&format!("layers.{l}.attn_norm.weight"));
        x = (0..x.len())
            .map(|t| {
                let src = match bug {
                    Bug::LowRankReadsNorm => rmsnorm_ref(&x[t], Some(g), c.norm_eps),
                    _ => x[t].clone(),
                };
                let lr = matvec(up, &matvec(down, &src));
                (0..c.d_model)
                    .map(|i| {
                        let f = a[t][i] + m[t][i];
                        match bug {
                            Bug::BetaOnLowRankOnly => alpha * f + x[t][i] + beta * lr[i],
                            _ => alpha * f + beta * (x[t][i] + lr[i]),
                        }
                    })
                    .collect()
            })
            .collect();
    }
    ref_head(c, w, &x)
}

/// Max |model − reference| over a (B=2, T=6) batch at random weights, for `bug`.
fn reference_gap(c: &Config, seed: u64, bug: Bug) -> Result<f64> {
    model_vs_reference(c, seed, 6, &|w, seq| {
        Ok(match c.variant.name() {
            "canon" => ref_canon(c, w, seq, bug),
            "dca" => ref_dca(c, w, seq, bug),
            "laurel" => ref_laurel(c, w, seq, bug),
            v => anyhow::bail!("no scalar reference for {v:?}"),
        })
    })
}

fn reference_configs(v: Variant) -> Vec<Config> {
    let mut out = vec![
        tiny(v, 3, 2, 2, false),
        tiny(v, 2, 2, 1, true),
        tiny(v, 1, 2, 1, false),
    ];
    if v == Variant::CANON {
        for (m, k) in CANON_SETTINGS {
            out.push(
                tiny(v, 2, 2, 1, false)
                    .with_setting("canon_positions", m)
                    .with_setting("canon_kernel", k),
            );
        }
    }
    if v == Variant::LAUREL {
        out.push(tiny(v, 2, 2, 1, false).with_setting("laurel_rank", 3));
    }
    out
}

#[test]
fn canon_dca_laurel_match_scalar_references_at_random_weights() -> Result<()> {
    for v in NEW {
        for (i, c) in reference_configs(v).into_iter().enumerate() {
            let gap = reference_gap(&c, 300 + i as u64, Bug::None)?;
            ensure!(
                gap <= 1e-9,
                "{c:?}: model vs scalar reference differ by {gap}"
            );
        }
    }
    Ok(())
}

#[test]
fn canon_dca_laurel_references_catch_deliberate_bugs() -> Result<()> {
    let t = |v| tiny(v, 3, 2, 2, false);
    let cases = [
        (t(Variant::CANON), Bug::KernelFlipped),
        (t(Variant::CANON), Bug::ConvWithoutResidual),
        (
            t(Variant::CANON).with_setting("canon_positions", 2),
            Bug::KeyValueRowsSwapped,
        ),
        (t(Variant::DCA), Bug::ReluOverBias),
        (t(Variant::DCA), Bug::BlockAddsInput),
        (t(Variant::DCA), Bug::NoOutputGrn),
        (t(Variant::LAUREL), Bug::BetaOnLowRankOnly),
        (t(Variant::LAUREL), Bug::LowRankReadsNorm),
    ];
    for (c, bug) in cases {
        let gap = reference_gap(&c, 300, bug)?;
        ensure!(
            gap > 1e-4,
            "{:?} with {bug:?} went unnoticed (gap {gap})",
            c.variant
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Inits as published, DCA's gradient at w = 0, optimizer groups
// ---------------------------------------------------------------------------------------------

#[test]
fn inits_are_the_published_ones() -> Result<()> {
    // Canon: PyTorch's Conv1d default, U(−1/√k, 1/√k) (std 1/√(3k)), every position.
    for k in [4usize, 2] {
        let c = Config::mha(Variant::CANON, 50, 64, 2, 4).with_setting("canon_kernel", k);
        let (vm, _) = init_varmap(&c, 1, DType::F64, &Device::Cpu)?;
        let vals: Vec<f64> = sorted_vars(&vm)
            .into_iter()
            .filter(|(n, _)| n.contains(".canon_"))
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect();
        let bound = 1.0 / (k as f64).sqrt();
        ensure!(vals.len() == 2 * k * (64 + 3 * 64 + 64 + 2 * 256));
        ensure!(
            vals.iter().all(|x| x.abs() < bound),
            "k = {k}: outside ±{bound}"
        );
        let n = vals.len() as f64;
        let std = (vals.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
        let want = bound / 3f64.sqrt();
        ensure!(
            (std / want - 1.0).abs() < 0.05,
            "k = {k}: std {std} vs {want}"
        );
    }
    // LAuReL: D[j][i] = 1/√(rD) where i mod r = j (column-orthogonal), U = 0, α = β = 1.
    let c = cfg(Variant::LAUREL, 2, 4, 4, false).with_setting("laurel_rank", 3);
    let (vm, _) = init_varmap(&c, 1, DType::F64, &Device::Cpu)?;
    let down: Vec<Vec<f64>> = var(&vm, "layers.1.laurel.down")?.as_tensor().to_vec2()?;
    let v = 1.0 / (3.0f64 * 16.0).sqrt();
    for (j, row) in down.iter().enumerate() {
        for (i, &x) in row.iter().enumerate() {
            ensure!(
                x == if i % 3 == j { v } else { 0.0 },
                "down[{j}][{i}] = {x}"
            );
        }
    }
    let up = var(&vm, "layers.0.laurel.up")?.as_tensor().clone();
    ensure!(up.dims() == [16, 3] && up.abs()?.sum_all()?.to_scalar::<f64>()? == 0.0);
    ensure!(
        var(&vm, "layers.0.laurel.alpha")?
            .as_tensor()
            .to_vec1::<f64>()?
            == [1.0]
    );
    // DCA: b = 1, w = 0.
    let (vm, _) = init_varmap(
        &cfg(Variant::DCA, 2, 4, 4, false),
        1,
        DType::F64,
        &Device::Cpu,
    )?;
    for (name, v) in sorted_vars(&vm) {
        let want = match name.rsplit('.').next() {
            Some("bias") => 1.0,
            Some("w") => 0.0,
            _ => continue,
        };
        let vals: Vec<f64> = v.as_tensor().flatten_all()?.to_vec1()?;
        ensure!(vals.iter().all(|&x| x == want), "{name}");
    }
    Ok(())
}

/// With the published w = 0 every GRN logit is exactly 0 at init: ReLU's derivative there must
/// let the gradient through (1, candle's convention) or the input-dependent part never trains.
#[test]
fn dca_dynamic_weights_get_a_gradient_at_init() -> Result<()> {
    let c = cfg(Variant::DCA, 3, 4, 2, false);
    let (vm, model) = init_varmap(&c, 5, DType::F64, &Device::Cpu)?;
    let ids = random_ids(2, 7, c.vocab_size, 6)?;
    let targets = random_ids(2, 7, c.vocab_size, 7)?;
    let grads = loss(&model, &ids, &targets)?.backward()?;
    for (name, v) in sorted_vars(&vm) {
        if name.ends_with(".w") {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let norm = g.sqr()?.sum_all()?.to_scalar::<f64>()?;
            ensure!(norm > 0.0, "{name}: no gradient at init");
        }
    }
    Ok(())
}

#[test]
fn canon_dca_laurel_optimizer_groups() -> Result<()> {
    for v in NEW {
        let (vm, _) = init_varmap(&cfg(v, 2, 4, 2, false), 0, DType::F32, &Device::Cpu)?;
        let mut own = 0;
        for (name, _) in sorted_vars(&vm) {
            let want =
                if name.contains(".canon_") || name.ends_with(".down") || name.ends_with(".up") {
                    ParamGroup::Decay
                } else if name.contains(".dca")
                    || name.contains(".laurel.")
                    || name.ends_with("_k_norm.weight")
                    || name.ends_with("_v_norm.weight")
                {
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
// 7. The mixing weights a trace records (read by `harness analyze`): DCA's per token, LAuReL's
//    α and β, Canon's taps
// ---------------------------------------------------------------------------------------------

#[test]
fn dca_traces_its_per_token_mixing_weights() -> Result<()> {
    let c = cfg(Variant::DCA, 3, 4, 2, false);
    let ids = random_ids(2, 5, c.vocab_size, 3)?;
    let (vm, model) = init_varmap(&c, 0, DType::F64, &Device::Cpu)?;
    let (logits, trace) = model.forward_trace(&ids)?;
    ensure!(max_abs_diff(&logits, &model.forward(&ids)?)? == 0.0);
    let readers: Vec<&str> = trace.mixing.iter().map(|m| m.consumer.as_str()).collect();
    ensure!(
        readers == ["B0.q", "B0.k", "B0.v", "B1.q", "B1.k", "B1.v", "B2.q", "B2.k", "B2.v", "out"],
        "{readers:?}"
    );
    ensure!(trace.mixing[9].sources == ["emb", "B0", "B1", "B2"]);
    // At init every source weighs 1 (b = 1, ReLU(0) = 0): the plain residual sum.
    for m in &trace.mixing {
        let w: Vec<f64> = m.weights.flatten_all()?.to_vec1()?;
        ensure!(
            w.len() == 10 * m.sources.len() && w.iter().all(|&x| x == 1.0),
            "{}",
            m.consumer
        );
    }
    // At random weights they vary per token, and equal mean_i b[j][i] + ReLU(w · G_j).
    randomize_every_var(&vm, 4)?;
    let (_, trace) = model.forward_trace(&ids)?;
    let w: Vec<f64> = trace.mixing[4].weights.flatten_all()?.to_vec1()?; // B1.k over 2 sources
    ensure!(
        w.chunks(2).any(|x| x != &w[..2]),
        "the same weights at every token"
    );
    // LAuReL records (α, β) as each block output's weights on its two terms.
    let c = cfg(Variant::LAUREL, 2, 4, 4, false);
    let (vm, model) = init_varmap(&c, 0, DType::F64, &Device::Cpu)?;
    var(&vm, "layers.1.laurel.beta")?.set(&Tensor::new(&[0.25f64], &Device::Cpu)?)?;
    let (_, trace) = model.forward_trace(&ids)?;
    let got: Vec<(String, Vec<String>, Vec<f64>)> = trace
        .mixing
        .iter()
        .map(|m| {
            let w = m.weights.flatten_all().unwrap().to_vec1().unwrap();
            (m.consumer.clone(), m.sources.clone(), w)
        })
        .collect();
    let terms = vec!["f".to_string(), "x+UDx".to_string()];
    ensure!(
        got == [
            ("B0".to_string(), terms.clone(), vec![1.0, 1.0]),
            ("B1".to_string(), terms, vec![1.0, 0.25])
        ],
        "{got:?}"
    );
    // Canon records each convolution's mean |W| per tap, named by the token it reads.
    let c = cfg(Variant::CANON, 2, 4, 2, false).with_setting("canon_kernel", 3);
    let (vm, model) = init_varmap(&c, 0, DType::F64, &Device::Cpu)?;
    let (_, trace) = model.forward_trace(&ids)?;
    let readers: Vec<&str> = trace.mixing.iter().map(|m| m.consumer.as_str()).collect();
    ensure!(
        readers[..7] == ["A0", "B0.q", "B0.k", "B0.v", "M0", "D0.gate", "D0.up"]
            && readers.len() == 14,
        "{readers:?}"
    );
    ensure!(trace.mixing[0].sources == ["t-2", "t-1", "t"]);
    let w: Vec<Vec<f64>> = var(&vm, "layers.1.canon_c.weight")?.as_tensor().to_vec2()?;
    let want: Vec<f64> = (0..3)
        .map(|j| w.iter().map(|row| row[j].abs()).sum::<f64>() / w.len() as f64)
        .collect();
    let got: Vec<f64> = trace.mixing[11].weights.flatten_all()?.to_vec1()?; // M1
    ensure!(
        trace.mixing[11].consumer == "M1"
            && got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
        "{got:?} vs {want:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Canon's letter-valued setting
// ---------------------------------------------------------------------------------------------

#[test]
fn canon_positions_read_as_letters_or_a_mask() -> Result<()> {
    let s = Variant::CANON
        .def()
        .settings()
        .iter()
        .find(|s| s.key == "canon_positions")
        .expect("declared");
    for (text, want) in [
        ("ABCD", 15),
        ("AC", 5),
        ("CA", 5),
        ("B", 2),
        ("D", 8),
        ("5", 5),
    ] {
        ensure!(s.parse(text) == Ok(want), "{text}: {:?}", s.parse(text));
    }
    for bad in ["", "AA", "E", "ab", "0", "16", "A C"] {
        let e = s.parse(bad).expect_err(bad);
        ensure!(
            e.contains("canon_positions") && e.contains("ABCD"),
            "{bad}: {e}"
        );
    }
    ensure!(s.show(5) == "AC" && s.show(15) == "ABCD");
    // The model builds the kernels of the positions asked for, and only those.
    let c = cfg(Variant::CANON, 2, 4, 4, false).with_setting("canon_positions", 5);
    let (vm, _) = init_varmap(&c, 0, DType::F32, &Device::Cpu)?;
    let own: Vec<String> = sorted_vars(&vm)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.contains(".canon_"))
        .collect();
    ensure!(
        own == [
            "layers.0.canon_a.weight",
            "layers.0.canon_c.weight",
            "layers.1.canon_a.weight",
            "layers.1.canon_c.weight"
        ],
        "{own:?}"
    );
    Ok(())
}
