//! Correctness of the `models` crate: reductions (lime → llama, lime-dynamic → lime), causality,
//! parameter counts, finite-difference gradients, KV-cache decoding, overfitting with gradients on
//! every Var, deterministic name-keyed init, and safetensors round trips.
//!
//! All models are tiny (d ≤ 32, ≤ 3 layers, T ≤ 16); exactness checks run in f64.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use models::{
    count_params, init_varmap, load_state_dict, load_weights, param_group, param_groups,
    save_weights, sorted_vars, state_dict, Config, KvCache, Model, ParamGroup, Variant,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn cfg(
    variant: Variant,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    tie: bool,
) -> Config {
    Config {
        variant,
        vocab_size: 23,
        d_model: 16,
        n_layers,
        n_heads,
        n_kv_heads,
        d_ff: 40,
        tie_embeddings: tie,
        rope_theta: 10_000.0,
        norm_eps: 1e-6,
        settings: Default::default(),
    }
}

/// The variants this file covers (the rivals and router ablations: `models_rivals.rs`).
pub const COVERED: [Variant; 3] = [Variant::LLAMA, Variant::LIME, Variant::LIME_DYNAMIC];

/// The configurations most tests sweep: the covered variants, MHA and GQA, tied and untied.
fn sweep() -> Vec<Config> {
    let mut out = Vec::new();
    for v in COVERED {
        out.push(cfg(v, 3, 4, 4, false));
        out.push(cfg(v, 3, 4, 2, true));
        out.push(cfg(v, 2, 2, 1, false));
    }
    out
}

pub(crate) fn random_ids(b: usize, t: usize, vocab: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u32> = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    Ok(Tensor::from_vec(v, (b, t), &Device::Cpu)?)
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

pub(crate) fn var(varmap: &VarMap, name: &str) -> Result<Var> {
    sorted_vars(varmap)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .with_context(|| format!("no var {name}"))
}

/// Overwrites every Var whose name contains `pat` with seeded N(0, std²) values.
pub(crate) fn randomize(varmap: &VarMap, pat: &str, std: f64, seed: u64) -> Result<usize> {
    let mut n = 0;
    for (name, v) in sorted_vars(varmap) {
        if !name.contains(pat) {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name.len() as u64 ^ (n as u64) << 8);
        let vals: Vec<f64> = (0..v.elem_count())
            .map(|_| std * (rng.gen::<f64>() * 2.0 - 1.0) * 1.7)
            .collect();
        let t = Tensor::from_vec(vals, v.shape().clone(), &Device::Cpu)?.to_dtype(v.dtype())?;
        v.set(&t)?;
        n += 1;
    }
    Ok(n)
}

pub(crate) fn loss(model: &Model, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = model.forward(ids)?; // (B,T,V)
    let (b, t, v) = logits.dims3()?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.reshape((b * t, v))?,
        &targets.flatten_all()?,
    )?)
}

/// Independent parameter count, written here from the spec (a second opinion next to
/// `models::accounting::num_params`).
fn formula_num_params(c: &Config) -> usize {
    let (v, d, f, l, r) = (c.vocab_size, c.d_model, c.d_ff, c.n_layers, c.n_kv_heads);
    let kv = r * c.head_dim();
    let per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d;
    let base = v * d * if c.tie_embeddings { 1 } else { 2 } + l * per_layer + d;
    let blocks = l * (l + 1) / 2 - 1; // Σ_{l=1}^{L-1} (l+1)
    match c.variant.name() {
        "llama" => base,
        "lime" => base + r * r * blocks,
        "lime-dynamic" => base + r * r * blocks * (1 + d),
        v => unreachable!("{v:?} is covered in models_rivals.rs"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Reductions
// ---------------------------------------------------------------------------------------------

#[test]
fn lime_with_identity_router_equals_llama() -> Result<()> {
    let dev = Device::Cpu;
    for (h, r, tie) in [(4, 4, false), (4, 2, true), (4, 1, false)] {
        let lime_cfg = cfg(Variant::LIME, 3, h, r, tie);
        let llama_cfg = Config {
            variant: Variant::LLAMA,
            ..lime_cfg.clone()
        };
        let (lime_vm, lime) = init_varmap(&lime_cfg, 11, DType::F64, &dev)?;
        // Different seed on purpose: weights are copied over explicitly below.
        let (llama_vm, llama) = init_varmap(&llama_cfg, 12, DType::F64, &dev)?;
        let ids = random_ids(2, 12, lime_cfg.vocab_size, 1)?;

        // Shared weights: copy every llama parameter into the lime model.
        let llama_sd = state_dict(&llama_vm)?;
        let mut n_router = 0;
        for (name, v) in sorted_vars(&lime_vm) {
            if let Some(t) = llama_sd.get(&name) {
                v.set(t)?;
            } else {
                ensure!(
                    name.ends_with(".router.w"),
                    "unexpected lime-only param {name}"
                );
                n_router += 1;
            }
        }
        ensure!(
            n_router == 2,
            "expected routers for layers 1 and 2, got {n_router}"
        );
        let reference = llama.forward(&ids)?;

        // At init the router mixes in earlier layers: lime must differ from llama.
        let d_init = max_abs_diff(&lime.forward(&ids)?, &reference)?;
        ensure!(
            d_init > 1e-4,
            "random router should change the logits (diff {d_init})"
        );

        // Router [0 … 0 | I]: exactly llama.
        for (name, v) in sorted_vars(&lime_vm) {
            if name.ends_with(".router.w") {
                let (rr, s) = v.dims2()?;
                let zeros = Tensor::zeros((rr, s - rr), DType::F64, &dev)?;
                let eye = Tensor::eye(rr, DType::F64, &dev)?;
                v.set(&Tensor::cat(&[zeros, eye], 1)?)?;
            }
        }
        let d = max_abs_diff(&lime.forward(&ids)?, &reference)?;
        ensure!(
            d <= 1e-6,
            "lime [0|I] vs llama (H={h}, R={r}): max diff {d}"
        );
    }
    Ok(())
}

#[test]
fn lime_dynamic_at_init_equals_lime() -> Result<()> {
    let dev = Device::Cpu;
    for (h, r) in [(4, 4), (4, 2)] {
        let dyn_cfg = cfg(Variant::LIME_DYNAMIC, 3, h, r, false);
        let lime_cfg = Config {
            variant: Variant::LIME,
            ..dyn_cfg.clone()
        };
        let (dyn_vm, dynamic) = init_varmap(&dyn_cfg, 5, DType::F64, &dev)?;
        let (lime_vm, lime) = init_varmap(&lime_cfg, 6, DType::F64, &dev)?;
        let lime_sd = state_dict(&lime_vm)?;
        for (name, v) in sorted_vars(&dyn_vm) {
            match lime_sd.get(&name) {
                Some(t) => v.set(t)?,
                None => {
                    ensure!(name.ends_with(".router.u"), "unexpected param {name}");
                    let all_zero = v.as_tensor().abs()?.sum_all()?.to_scalar::<f64>()? == 0.0;
                    ensure!(all_zero, "{name} must be initialised to zero");
                }
            }
        }
        let ids = random_ids(2, 10, dyn_cfg.vocab_size, 2)?;
        let reference = lime.forward(&ids)?;
        let d = max_abs_diff(&dynamic.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-6, "lime-dynamic at init vs lime: {d}");
        // A non-zero U_l must change the output (the dynamic path is live).
        ensure!(randomize(&dyn_vm, ".router.u", 0.1, 3)? == 2);
        let d = max_abs_diff(&dynamic.forward(&ids)?, &reference)?;
        ensure!(d > 1e-4, "non-zero U_l should change the logits (diff {d})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1b. An independent scalar reference (plain Rust loops, no candle) for all variants
// ---------------------------------------------------------------------------------------------

/// y = W x with W row-major (rows, cols).
pub(crate) fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

pub(crate) fn rmsnorm_ref(x: &[f64], g: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, v)| v / rms * g.map_or(1.0, |g| g[i]))
        .collect()
}

/// RoPE, rotate-half pairs (i, i + d_h/2), angle p·θ^(−2i/d_h).
pub(crate) fn rope_ref(u: &[f64], p: usize, theta: f64) -> Vec<f64> {
    let half = u.len() / 2;
    let mut out = u.to_vec();
    for i in 0..half {
        let a = p as f64 * theta.powf(-2.0 * i as f64 / u.len() as f64);
        out[i] = u[i] * a.cos() - u[i + half] * a.sin();
        out[i + half] = u[i + half] * a.cos() + u[i] * a.sin();
    }
    out
}

/// Causal softmax attention of position `t` over positions 0..=t with RoPE on queries and keys
/// and grouped queries (query head n reads kv head n / `g`); q, k, v are [position][head][d_h].
/// Returns the heads' outputs concatenated (H·d_h).
pub(crate) fn causal_attention_ref(
    q: &[Vec<Vec<f64>>],
    k: &[Vec<Vec<f64>>],
    v: &[Vec<Vec<f64>>],
    t: usize,
    g: usize,
    theta: f64,
) -> Vec<f64> {
    let dh = q[t][0].len();
    let mut y = Vec::with_capacity(q[t].len() * dh);
    for (n, qt) in q[t].iter().enumerate() {
        let kv = n / g;
        let qn = rope_ref(qt, t, theta);
        let scores: Vec<f64> = (0..=t)
            .map(|j| {
                let kj = rope_ref(&k[j][kv], j, theta);
                qn.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for dd in 0..dh {
            y.push((0..=t).map(|j| e[j] / z * v[j][kv][dd]).sum());
        }
    }
    y
}

/// Logits [t][vocab] from the last residual stream x [t][D]: final RMSNorm, then the LM head
/// (the embedding matrix when tied). `get` reads a weight by its checkpoint name.
pub(crate) fn head_ref<'a>(
    c: &Config,
    get: impl Fn(&str) -> &'a [f64],
    x: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    let head = if c.tie_embeddings {
        "embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    x.iter()
        .map(|xt| {
            matvec(
                get(head),
                &rmsnorm_ref(xt, Some(get("norm.weight")), c.norm_eps),
            )
        })
        .collect()
}

/// Logits [t][vocab] of one sequence, computed token by token from the spec's equations.
fn reference_forward(c: &Config, w: &HashMap<String, Vec<f64>>, ids: &[u32]) -> Vec<Vec<f64>> {
    let (d, nh, r, dh) = (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim());
    let g = nh / r;
    let p = |name: String| -> &Vec<f64> { &w[&name] };
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .map(|&id| p("embed_tokens.weight".into())[id as usize * d..][..d].to_vec())
        .collect();
    // Pre-RoPE K and V of every layer: [layer][t][kv head] → d_h vector.
    let mut kbuf: Vec<Vec<Vec<Vec<f64>>>> = Vec::new();
    let mut vbuf: Vec<Vec<Vec<Vec<f64>>>> = Vec::new();
    for l in 0..c.n_layers {
        let pre = format!("layers.{l}.");
        let h: Vec<Vec<f64>> = x
            .iter()
            .map(|xt| rmsnorm_ref(xt, Some(p(pre.clone() + "attn_norm.weight")), c.norm_eps))
            .collect();
        let heads = |m: Vec<f64>| -> Vec<Vec<f64>> { m.chunks(dh).map(|c| c.to_vec()).collect() };
        let q: Vec<Vec<Vec<f64>>> = h
            .iter()
            .map(|ht| heads(matvec(p(pre.clone() + "attn.q_proj.weight"), ht)))
            .collect();
        kbuf.push(
            h.iter()
                .map(|ht| heads(matvec(p(pre.clone() + "attn.k_proj.weight"), ht)))
                .collect(),
        );
        vbuf.push(
            h.iter()
                .map(|ht| heads(matvec(p(pre.clone() + "attn.v_proj.weight"), ht)))
                .collect(),
        );
        // K_l[t][r] = Σ_{j ≤ l, r'} W_l(x_t)[r, j·R + r'] · K_j[t][r'] (same for V).
        let (mut k, mut v) = (kbuf[l].clone(), vbuf[l].clone());
        if c.variant != Variant::LLAMA && l > 0 {
            let s = (l + 1) * r;
            for t in 0..ids.len() {
                let mut wt = p(pre.clone() + "attn.router.w").clone(); // (R, S) row-major
                if c.variant == Variant::LIME_DYNAMIC {
                    let n = rmsnorm_ref(&x[t], None, c.norm_eps);
                    let dw = matvec(p(pre.clone() + "attn.router.u"), &n); // R·S
                    wt.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                }
                for rr in 0..r {
                    let (mut ks, mut vs) = (vec![0.0; dh], vec![0.0; dh]);
                    for src in 0..s {
                        let (j, r2) = (src / r, src % r);
                        let coef = wt[rr * s + src];
                        for e in 0..dh {
                            ks[e] += coef * kbuf[j][t][r2][e];
                            vs[e] += coef * vbuf[j][t][r2][e];
                        }
                    }
                    k[t][rr] = ks;
                    v[t][rr] = vs;
                }
            }
        }
        let mut x_new = x.clone();
        for t in 0..ids.len() {
            let y = causal_attention_ref(&q, &k, &v, t, g, c.rope_theta);
            let o = matvec(p(pre.clone() + "attn.o_proj.weight"), &y);
            x_new[t].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h2 = rmsnorm_ref(
                &x_new[t],
                Some(p(pre.clone() + "mlp_norm.weight")),
                c.norm_eps,
            );
            let gate = matvec(p(pre.clone() + "mlp.w_gate.weight"), &h2);
            let up = matvec(p(pre.clone() + "mlp.w_up.weight"), &h2);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                .collect();
            let down = matvec(p(pre.clone() + "mlp.w_down.weight"), &act);
            x_new[t].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        x = x_new;
    }
    head_ref(c, |name| p(name.into()), &x)
}

#[test]
fn all_variants_match_a_scalar_reference() -> Result<()> {
    for c in sweep() {
        let (vm, model) = init_varmap(&c, 17, DType::F64, &Device::Cpu)?;
        randomize(&vm, ".router.u", 0.1, 2)?;
        // Larger norm gains than ones so that a swapped / missing gain would show.
        randomize(&vm, "norm.weight", 1.0, 3)?;
        let w: HashMap<String, Vec<f64>> = state_dict(&vm)?
            .into_iter()
            .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f64>()?)))
            .collect::<Result<_>>()?;
        let (b, t) = (2, 7);
        let ids = random_ids(b, t, c.vocab_size, 19)?;
        let logits: Vec<Vec<Vec<f64>>> = model.forward(&ids)?.to_vec3()?;
        let ids: Vec<Vec<u32>> = ids.to_vec2()?;
        for bi in 0..b {
            let reference = reference_forward(&c, &w, &ids[bi]);
            for ti in 0..t {
                for (a, e) in logits[bi][ti].iter().zip(&reference[ti]) {
                    ensure!(
                        (a - e).abs() <= 1e-10,
                        "{c:?}: b{bi} t{ti}: model {a} vs reference {e}"
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Causality
// ---------------------------------------------------------------------------------------------

#[test]
fn future_tokens_never_change_earlier_logits() -> Result<()> {
    let dev = Device::Cpu;
    for c in sweep() {
        let (vm, model) = init_varmap(&c, 21, DType::F64, &dev)?;
        randomize(&vm, ".router.u", 0.1, 4)?; // make lime-dynamic's per-token path non-trivial
        let (b, t) = (2, 11);
        let ids = random_ids(b, t, c.vocab_size, 7)?;
        let base = model.forward(&ids)?;
        for p in [0, 4, t - 1] {
            let mut v: Vec<u32> = ids.flatten_all()?.to_vec1()?;
            for row in 0..b {
                v[row * t + p] = (v[row * t + p] + 1) % c.vocab_size as u32;
            }
            let changed = model.forward(&Tensor::from_vec(v, (b, t), &dev)?)?;
            if p > 0 {
                let d = max_abs_diff(&base.narrow(1, 0, p)?, &changed.narrow(1, 0, p)?)?;
                ensure!(
                    d <= 1e-12,
                    "{:?}: changing token {p} changed earlier logits by {d}",
                    c
                );
            }
            let d = max_abs_diff(&base.narrow(1, p, t - p)?, &changed.narrow(1, p, t - p)?)?;
            ensure!(
                d > 1e-6,
                "{:?}: changing token {p} should change logits at ≥ {p}",
                c
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Parameter count
// ---------------------------------------------------------------------------------------------

#[test]
fn num_params_matches_built_tensors() -> Result<()> {
    let mut cfgs = sweep();
    for v in COVERED {
        cfgs.push(Config {
            d_model: 24,
            d_ff: 56,
            vocab_size: 31,
            ..cfg(v, 1, 3, 3, true)
        });
        cfgs.push(Config {
            d_model: 32,
            d_ff: 64,
            ..cfg(v, 3, 8, 2, false)
        });
    }
    for c in &cfgs {
        let (vm, _) = init_varmap(c, 0, DType::F32, &Device::Cpu)?;
        let built = count_params(&vm);
        ensure!(
            built == formula_num_params(c),
            "{c:?}: built {built} vs formula"
        );
        // lime-only parameters are exactly the router ones.
        let n_router: usize = sorted_vars(&vm)
            .iter()
            .filter(|(n, _)| param_group(c.variant, n) == ParamGroup::Router)
            .map(|(_, v)| v.elem_count())
            .sum();
        let llama = formula_num_params(&Config {
            variant: Variant::LLAMA,
            ..c.clone()
        });
        ensure!(
            built - n_router == llama,
            "{c:?}: non-router params differ from llama"
        );
    }
    Ok(())
}

#[test]
fn param_groups_follow_the_rules() -> Result<()> {
    for tie in [false, true] {
        let c = cfg(Variant::LIME_DYNAMIC, 3, 4, 2, tie);
        let (vm, _) = init_varmap(&c, 0, DType::F32, &Device::Cpu)?;
        for (name, v) in sorted_vars(&vm) {
            let g = param_group(c.variant, &name);
            let expected = if name.contains(".router.") {
                ParamGroup::Router
            } else if name.ends_with("norm.weight") || name == "embed_tokens.weight" {
                ParamGroup::NoDecay
            } else {
                ParamGroup::Decay
            };
            ensure!(g == expected, "{name}: {g:?}, expected {expected:?}");
            if g == ParamGroup::Decay {
                ensure!(v.rank() >= 2, "{name}: decayed params must be matrices");
            }
        }
        let groups = param_groups(&vm, c.variant);
        let n_lm_head = groups[&ParamGroup::Decay]
            .iter()
            .filter(|(n, _)| n == "lm_head.weight");
        ensure!(
            n_lm_head.count() == usize::from(!tie),
            "lm_head exists iff untied"
        );
        ensure!(groups[&ParamGroup::Router].len() == 4, "W_1, W_2, U_1, U_2");
    }
    Ok(())
}

#[test]
fn router_init_is_uniform_with_identity_block() -> Result<()> {
    let c = cfg(Variant::LIME, 3, 4, 2, false);
    let (vm, model) = init_varmap(&c, 3, DType::F64, &Device::Cpu)?;
    let ws = model.mixing_weights()?;
    ensure!(ws.len() == 2);
    for (i, w) in ws.iter().enumerate() {
        let l = i + 1;
        let (r, s) = w.dims2()?;
        ensure!(r == 2 && s == (l + 1) * 2, "W_{l} shape {:?}", w.dims());
        let vals: Vec<Vec<f64>> = w.to_vec2()?;
        let b = (3.0 / s as f64).sqrt();
        for (i, row) in vals.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if j >= s - r {
                    ensure!(
                        x == if i == j + r - s { 1.0 } else { 0.0 },
                        "identity block"
                    );
                } else {
                    ensure!(
                        x.abs() < b && x != 0.0,
                        "W_{l}[{i},{j}] = {x} outside U(-{b},{b})"
                    );
                }
            }
        }
    }
    // The heatmap rows are normalised and the diagonal dominates at init.
    let rows = model.router_heatmap()?;
    ensure!(rows.len() == 3 && rows[0] == vec![1.0]);
    for row in &rows[1..] {
        ensure!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    ensure!(var(&vm, "layers.1.attn.router.w").is_ok());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Finite-difference gradients
// ---------------------------------------------------------------------------------------------

/// Central finite differences (ε = 1e-5, f64) of the loss at `batch` (ids, targets) against
/// backward's gradient `grads`, at entries `idxs` of parameter `name`; with `nonzero`, a zero
/// gradient fails too (it would check nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fd_check(
    label: &str,
    model: &Model,
    vm: &VarMap,
    batch: (&Tensor, &Tensor),
    grads: &candle_core::backprop::GradStore,
    name: &str,
    idxs: &[usize],
    nonzero: bool,
) -> Result<()> {
    let (ids, targets) = batch;
    let eps = 1e-5;
    let w = var(vm, name)?;
    let g: Vec<f64> = grads
        .get(w.as_tensor())
        .with_context(|| format!("{label}: no grad for {name}"))?
        .flatten_all()?
        .to_vec1()?;
    for &i in idxs {
        let x0 = get_flat(&w, i)?;
        set_flat(&w, i, x0 + eps)?;
        let lp = loss(model, ids, targets)?.to_scalar::<f64>()?;
        set_flat(&w, i, x0 - eps)?;
        let lm = loss(model, ids, targets)?.to_scalar::<f64>()?;
        set_flat(&w, i, x0)?;
        let fd = (lp - lm) / (2.0 * eps);
        let err = (fd - g[i]).abs();
        ensure!(
            err <= 1e-8 + 1e-5 * g[i].abs(),
            "{label} {name}[{i}]: backward {} vs FD {fd} (err {err})",
            g[i]
        );
        ensure!(
            !nonzero || g[i] != 0.0,
            "{label} {name}[{i}]: zero gradient checks nothing"
        );
    }
    Ok(())
}

pub(crate) fn get_flat(v: &Var, i: usize) -> Result<f64> {
    Ok(v.as_tensor().flatten_all()?.get(i)?.to_scalar::<f64>()?)
}

pub(crate) fn set_flat(v: &Var, i: usize, x: f64) -> Result<()> {
    let mut vals: Vec<f64> = v.as_tensor().flatten_all()?.to_vec1()?;
    vals[i] = x;
    v.set(&Tensor::from_vec(vals, v.shape().clone(), &Device::Cpu)?)?;
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    for c in [
        cfg(Variant::LIME_DYNAMIC, 3, 4, 2, false),
        cfg(Variant::LIME, 3, 2, 2, true),
    ] {
        let (vm, model) = init_varmap(&c, 8, DType::F64, &dev)?;
        randomize(&vm, ".router.u", 0.05, 9)?;
        let ids = random_ids(2, 8, c.vocab_size, 10)?;
        let targets = random_ids(2, 8, c.vocab_size, 11)?;
        let grads = loss(&model, &ids, &targets)?.backward()?;
        let mut checks = vec![
            ("layers.2.attn.router.w", vec![0, 3, 5]),
            ("layers.1.attn.router.w", vec![0, 1, 2]),
            ("layers.0.attn.k_proj.weight", vec![0, 17, 100]),
            ("layers.1.attn.v_proj.weight", vec![3, 50]),
            ("layers.1.mlp.w_gate.weight", vec![7]),
            ("embed_tokens.weight", vec![16 * 3 + 2]),
        ];
        if c.variant == Variant::LIME_DYNAMIC {
            checks.push(("layers.2.attn.router.u", vec![0, 31, 150]));
        }
        for (name, idxs) in checks {
            let label = format!("{:?}", c.variant);
            fd_check(
                &label,
                &model,
                &vm,
                (&ids, &targets),
                &grads,
                name,
                &idxs,
                false,
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. KV-cache decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn kv_cache_decoding_matches_full_forward() -> Result<()> {
    let dev = Device::Cpu;
    for c in sweep() {
        let (vm, model) = init_varmap(&c, 31, DType::F64, &dev)?;
        randomize(&vm, ".router.u", 0.1, 5)?;
        let (b, t) = (2, 10);
        let ids = random_ids(b, t, c.vocab_size, 12)?;
        let full = model.forward(&ids)?; // (B,T,V)

        // Token by token.
        let mut cache = KvCache::new(&c);
        for i in 0..t {
            let step = model.forward_cached(&ids.narrow(1, i, 1)?, &mut cache)?;
            ensure!(cache.len() == i + 1);
            let d = max_abs_diff(&step, &full.narrow(1, i, 1)?)?;
            ensure!(d <= 1e-10, "{c:?}: token-by-token step {i} differs by {d}");
        }

        // Prompt of 4, then chunks of 1 and 5 (capacity 2: the buffers grow on the way).
        let mut cache = KvCache::with_capacity(&c, 2);
        let mut pos = 0;
        for n in [4, 1, 5] {
            let out = model.forward_cached(&ids.narrow(1, pos, n)?, &mut cache)?;
            let d = max_abs_diff(&out, &full.narrow(1, pos, n)?)?;
            ensure!(d <= 1e-10, "{c:?}: chunk at {pos} (len {n}) differs by {d}");
            pos += n;
            ensure!(cache.len() == pos);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Overfitting one batch, with a gradient for every Var
// ---------------------------------------------------------------------------------------------

/// Trains a tiny model of `variant` on one fixed batch with AdamW (our parameter groups) until
/// the loss falls below 10% of its start (at most 200 steps), checking on the first two steps
/// that every Var receives a non-zero gradient. Exception: Hyper-Connections' scales s_α, s_β
/// multiply tanh(H̄·W) = tanh(0) at init, so their gradient is exactly 0 on the first step and
/// must be live on the second.
pub(crate) fn overfit_one_batch(variant: Variant) -> Result<()> {
    let c = Config {
        d_model: 32,
        d_ff: 64,
        vocab_size: 32,
        ..cfg(variant, 2, 4, 2, false)
    };
    let (vm, model) = init_varmap(&c, 1, DType::F32, &Device::Cpu)?;
    let ids = random_ids(4, 16, c.vocab_size, 100)?;
    let targets = random_ids(4, 16, c.vocab_size, 101)?;

    let base_lr = 1e-2;
    let mut opts = Vec::new();
    for (group, vars) in param_groups(&vm, c.variant) {
        let (lr, weight_decay) = match group {
            ParamGroup::Router => (base_lr * models::ROUTER_LR_MULT, 0.0),
            ParamGroup::Decay => (base_lr, 0.01),
            ParamGroup::NoDecay => (base_lr, 0.0),
        };
        let params = ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        };
        opts.push(AdamW::new(
            vars.into_iter().map(|(_, v)| v).collect(),
            params,
        )?);
    }

    let (mut first, mut last) = (None, f32::INFINITY);
    for step in 0..200 {
        let l = loss(&model, &ids, &targets)?;
        let lv = l.to_scalar::<f32>()?;
        ensure!(lv.is_finite(), "{variant:?}: loss {lv} at step {step}");
        let grads = l.backward()?;
        if step <= 1 {
            for (name, v) in sorted_vars(&vm) {
                let g = grads.get(v.as_tensor());
                ensure!(g.is_some(), "{variant:?}: no gradient reaches {name}");
                let norm = g.unwrap().sqr()?.sum_all()?.to_scalar::<f32>()?;
                // Zero at init by construction: HC's dynamic scales (tanh(0)); AttnRes's key
                // gains (w = 0); MUDDFormer's W1 (W2 = 0); LAuReL's down map D (U = 0).
                let zero_at_init = step == 0
                    && ((variant.name().starts_with("hyper") && name.ends_with("_scale"))
                        || (variant.name().starts_with("attnres") && name.ends_with(".key_gain"))
                        || (variant == Variant::MUDDFORMER && name.ends_with(".dynamic_w1"))
                        || (variant == Variant::LAUREL && name.ends_with(".laurel.down")));
                ensure!(
                    zero_at_init || norm > 0.0,
                    "{variant:?}: zero gradient for {name} at step {step}"
                );
            }
        }
        for o in opts.iter_mut() {
            o.step(&grads)?;
        }
        first.get_or_insert(lv);
        last = lv;
        if lv < 0.1 * first.unwrap() {
            eprintln!(
                "{variant:?}: loss {} → {lv} after {step} steps",
                first.unwrap()
            );
            break;
        }
    }
    let first = first.unwrap();
    ensure!(
        last < 0.1 * first,
        "{variant:?}: loss {first} → {last}, not below 10%"
    );
    Ok(())
}

#[test]
fn tiny_models_overfit_one_batch_and_every_var_gets_a_gradient() -> Result<()> {
    COVERED.into_iter().try_for_each(overfit_one_batch)
}

// ---------------------------------------------------------------------------------------------
// 7. Deterministic, name-keyed init
// ---------------------------------------------------------------------------------------------

fn f64_values(vm: &VarMap) -> Result<Vec<(String, Vec<f64>)>> {
    sorted_vars(vm)
        .into_iter()
        .map(|(n, v)| {
            Ok((
                n,
                v.as_tensor()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1()?,
            ))
        })
        .collect()
}

#[test]
fn init_is_deterministic_and_name_keyed() -> Result<()> {
    let dev = Device::Cpu;
    let c = cfg(Variant::LIME_DYNAMIC, 3, 4, 2, false);
    let a = f64_values(&init_varmap(&c, 42, DType::F32, &dev)?.0)?;
    let b = f64_values(&init_varmap(&c, 42, DType::F32, &dev)?.0)?;
    ensure!(a.len() == b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        ensure!(na == nb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        ensure!(same, "{na} differs between two inits with the same seed");
    }

    // Different seeds: every random tensor differs (norms are ones, U_l zeros in both).
    let other: HashMap<String, Vec<f64>> = f64_values(&init_varmap(&c, 43, DType::F32, &dev)?.0)?
        .into_iter()
        .collect();
    for (name, v) in &a {
        let random = !(name.ends_with("norm.weight") || name.ends_with(".router.u"));
        ensure!(
            (v != &other[name]) == random,
            "{name}: seed dependence wrong"
        );
    }

    // Name-keyed: a parameter does not depend on which other parameters exist.
    let variants = [
        cfg(Variant::LLAMA, 1, 4, 2, true),
        cfg(Variant::LIME, 2, 4, 2, false),
        cfg(Variant::LIME_DYNAMIC, 3, 4, 2, true),
    ];
    let all: Vec<HashMap<String, Vec<f64>>> = variants
        .iter()
        .map(|c| {
            Ok(f64_values(&init_varmap(c, 42, DType::F32, &dev)?.0)?
                .into_iter()
                .collect())
        })
        .collect::<Result<_>>()?;
    let reference: HashMap<String, Vec<f64>> = a.into_iter().collect();
    let mut shared = 0;
    for m in &all {
        for (name, v) in m {
            if let Some(r) = reference.get(name) {
                ensure!(v == r, "{name} depends on the rest of the model");
                shared += 1;
            }
        }
    }
    ensure!(shared > 20, "too few shared names compared ({shared})");

    // f32 init is the f64 init rounded: the same values on the host whatever the dtype.
    let (vm64, _) = init_varmap(&c, 42, DType::F64, &dev)?;
    let w64 = var(&vm64, "layers.1.attn.q_proj.weight")?
        .as_tensor()
        .to_dtype(DType::F32)?;
    let w32 = &reference["layers.1.attn.q_proj.weight"];
    let w64: Vec<f64> = w64.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    ensure!(&w64 == w32, "f32 init is not the rounded f64 init");

    // The normal init has the documented scale.
    let q = &reference["layers.1.mlp.w_gate.weight"];
    let std = (q.iter().map(|x| x * x).sum::<f64>() / q.len() as f64).sqrt();
    ensure!(
        (std - 0.02).abs() < 0.002,
        "w_gate std {std}, expected 0.02"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Safetensors round trip
// ---------------------------------------------------------------------------------------------

#[test]
fn safetensors_round_trip_preserves_logits() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    for c in [
        cfg(Variant::LIME_DYNAMIC, 3, 4, 2, false),
        cfg(Variant::LLAMA, 2, 4, 4, true),
    ] {
        let (vm, model) = init_varmap(&c, 77, DType::F32, &dev)?;
        randomize(&vm, ".router.u", 0.1, 6)?;
        let ids = random_ids(2, 9, c.vocab_size, 13)?;
        let logits = model.forward(&ids)?;

        // Helper path.
        let path = dir.path().join(format!("{}.safetensors", c.variant.name()));
        save_weights(&vm, &path)?;
        let (vm2, model2) = init_varmap(&c, 78, DType::F32, &dev)?;
        ensure!(
            max_abs_diff(&model2.forward(&ids)?, &logits)? > 1e-4,
            "seeds should differ"
        );
        load_weights(&vm2, &path)?;
        ensure!(
            max_abs_diff(&model2.forward(&ids)?, &logits)? == 0.0,
            "helper round trip"
        );

        // Harness path: state_dict → candle_core::safetensors → load_state_dict; names are the
        // VarBuilder tree.
        let path2 = dir.path().join("sd.safetensors");
        candle_core::safetensors::save(&state_dict(&vm)?, &path2)?;
        let loaded = candle_core::safetensors::load(&path2, &dev)?;
        ensure!(loaded.contains_key("layers.0.attn.q_proj.weight"));
        ensure!(loaded.contains_key("norm.weight"));
        let (vm3, model3) = init_varmap(&c, 79, DType::F32, &dev)?;
        load_state_dict(&vm3, &loaded)?;
        ensure!(
            max_abs_diff(&model3.forward(&ids)?, &logits)? == 0.0,
            "state_dict round trip"
        );

        // VarMap::load works as well (same names).
        let (mut vm4, model4) = init_varmap(&c, 80, DType::F32, &dev)?;
        vm4.load(&path)?;
        ensure!(
            max_abs_diff(&model4.forward(&ids)?, &logits)? == 0.0,
            "VarMap::load"
        );

        // Strictness: a missing tensor is an error.
        let mut partial = loaded.clone();
        partial.remove("norm.weight");
        ensure!(load_state_dict(&vm3, &partial).is_err());
    }
    Ok(())
}

// Trace diagnostics have the documented shapes.
#[test]
fn forward_trace_shapes() -> Result<()> {
    let c = cfg(Variant::LIME, 3, 4, 2, false);
    let (_, model) = init_varmap(&c, 1, DType::F32, &Device::Cpu)?;
    let ids = random_ids(2, 5, c.vocab_size, 1)?;
    let (logits, trace) = model.forward_trace(&ids)?;
    ensure!(max_abs_diff(&logits, &model.forward(&ids)?)? == 0.0);
    ensure!(trace.hidden.len() == 4 && trace.values.len() == 3);
    ensure!(trace.hidden[3].dims() == [2, 5, 16]);
    ensure!(trace.values[2].dims() == [2, 2, 5, 4]);
    let _ = logits.argmax(D::Minus1)?;
    Ok(())
}
