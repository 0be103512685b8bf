//! The rivals (`denseformer`, `hyper`, `hyper-static`, `resformer`) and the LIMe router ablations
//! (`lime-avg`, `lime-last-2`, `lime-first-2`, `lime-same-head`, `lime-per-dim`,
//! `lime-random-init`): exact reductions at each variant's documented neutral setting, causality,
//! parameter counts, finite-difference gradients, KV-cache decoding, overfitting with a gradient
//! for every Var, fused-f32 vs composed-f64 agreement, names, and a golden FLOP table.
//!
//! Neutral settings (see each module's docs):
//! - router ablations with a trainable router: current-layer identity, zeros elsewhere → llama;
//!   `lime-avg` has no weights: it equals `lime` with W_l = [I … I]/(l+1);
//! - `denseformer`: its init (α_ii = 1, else 0) → llama;
//! - `hyper`, `hyper-static` (n = 4): their init with `norm_eps` = 0 → llama with unit norm gains;
//! - `resformer`: λ = 0 (`Model::with_value_residual(0.0)`) → llama.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use models::accounting::{num_params, table, FlopMode};
use models::{
    init_varmap, param_group, param_groups, sorted_vars, state_dict, Config, KvCache, Model,
    ParamGroup, Variant,
};

use crate::models_correctness::{
    cfg, get_flat, loss, max_abs_diff, random_ids, randomize, set_flat, var,
};

/// Every variant this file covers.
const RIVALS: [Variant; 10] = [
    Variant::LimeAvg,
    Variant::LimeLast2,
    Variant::LimeFirst2,
    Variant::LimeSameHead,
    Variant::LimePerDim,
    Variant::LimeRandomInit,
    Variant::DenseFormer,
    Variant::Hyper,
    Variant::HyperStatic,
    Variant::ResFormer,
];

fn shapes() -> Vec<(usize, usize, usize, bool)> {
    // (layers, heads, kv heads, tied)
    vec![(4, 4, 4, false), (4, 4, 2, true), (3, 2, 1, false)]
}

fn with(variant: Variant, c: &Config) -> Config {
    Config {
        variant,
        ..c.clone()
    }
}

/// Copies every parameter of `from` that `to` also has; returns the names only `to` has.
fn copy_shared(from: &VarMap, to: &VarMap) -> Result<Vec<String>> {
    let sd = state_dict(from)?;
    let mut own = Vec::new();
    for (name, v) in sorted_vars(to) {
        match sd.get(&name) {
            Some(t) => v.set(t)?,
            None => own.push(name),
        }
    }
    Ok(own)
}

/// Sets every router parameter to its neutral value: identity on the current layer, zeros
/// elsewhere.
fn neutral_router(vm: &VarMap) -> Result<usize> {
    let mut n = 0;
    for (name, v) in sorted_vars(vm) {
        let t = if name.ends_with(".router.w") || name.ends_with(".router.w_rand") {
            let (r, s) = v.dims2()?;
            let zeros = Tensor::zeros((r, s - r), DType::F64, &Device::Cpu)?;
            Tensor::cat(&[zeros, Tensor::eye(r, DType::F64, &Device::Cpu)?], 1)?
        } else if name.ends_with(".router.w_head") {
            let (r, s) = v.dims2()?;
            let zeros = Tensor::zeros((r, s - 1), DType::F64, &Device::Cpu)?;
            Tensor::cat(&[zeros, Tensor::ones((r, 1), DType::F64, &Device::Cpu)?], 1)?
        } else if name.ends_with(".router.w_dim") {
            let (r, s, dh) = v.dims3()?;
            let zeros = Tensor::zeros((r, s - r, dh), DType::F64, &Device::Cpu)?;
            let eye = Tensor::eye(r, DType::F64, &Device::Cpu)?
                .unsqueeze(2)?
                .broadcast_as((r, r, dh))?;
            Tensor::cat(&[zeros, eye.contiguous()?], 1)?
        } else {
            continue;
        };
        v.set(&t)?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// 1. Exact reductions
// ---------------------------------------------------------------------------------------------

/// Builds `variant` and llama with the same shared weights (f64); returns both and the names
/// only the variant has.
fn pair(c: &Config, seed: u64) -> Result<(VarMap, Model, Model, Vec<String>)> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    let (llama_vm, llama) =
        init_varmap(&with(Variant::Llama, c), seed + 1, DType::F64, &Device::Cpu)?;
    let own = copy_shared(&llama_vm, &vm)?;
    Ok((vm, model, llama, own))
}

#[test]
fn router_ablations_reduce_to_llama_with_neutral_routers() -> Result<()> {
    for v in [
        Variant::LimeLast2,
        Variant::LimeFirst2,
        Variant::LimeSameHead,
        Variant::LimePerDim,
        Variant::LimeRandomInit,
    ] {
        for (l, h, r, tie) in shapes() {
            let c = cfg(v, l, h, r, tie);
            let (vm, model, llama, own) = pair(&c, 3)?;
            ensure!(
                own.len() == l - 1 && own.iter().all(|n| n.contains(".router.")),
                "{v:?}: own params {own:?}"
            );
            let ids = random_ids(2, 9, c.vocab_size, 4)?;
            let reference = llama.forward(&ids)?;
            let d0 = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(
                d0 > 1e-4,
                "{v:?}: the init router should change the logits ({d0})"
            );
            ensure!(neutral_router(&vm)? == l - 1);
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(d <= 1e-6, "{v:?} {c:?}: neutral router vs llama: {d}");
        }
    }
    Ok(())
}

#[test]
fn lime_avg_is_lime_with_a_uniform_router() -> Result<()> {
    for (l, h, r, tie) in shapes() {
        let c = cfg(Variant::LimeAvg, l, h, r, tie);
        let (avg_vm, avg) = init_varmap(&c, 5, DType::F64, &Device::Cpu)?;
        let (lime_vm, lime) = init_varmap(&with(Variant::Lime, &c), 6, DType::F64, &Device::Cpu)?;
        let own = copy_shared(&avg_vm, &lime_vm)?;
        ensure!(own.len() == l - 1, "lime-avg has no router params: {own:?}");
        ensure!(sorted_vars(&avg_vm).len() + l - 1 == sorted_vars(&lime_vm).len());
        let ids = random_ids(2, 9, c.vocab_size, 7)?;
        let reference = avg.forward(&ids)?;
        ensure!(max_abs_diff(&lime.forward(&ids)?, &reference)? > 1e-4);
        for (name, w) in sorted_vars(&lime_vm) {
            if name.ends_with(".router.w") {
                let (rr, s) = w.dims2()?;
                let eye = Tensor::eye(rr, DType::F64, &Device::Cpu)?;
                let uniform = (Tensor::cat(&vec![eye; s / rr], 1)? / (s / rr) as f64)?;
                w.set(&uniform)?;
            }
        }
        let d = max_abs_diff(&lime.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-6, "lime-avg vs lime with [I…I]/(l+1): {d}");
        // The dense router diagnostics show the uniform matrix.
        let ws = avg.router_weights();
        ensure!(ws.len() == l - 1);
        let w1: Vec<Vec<f64>> = ws[0].to_vec2()?;
        ensure!(w1[0][0] == 0.5 && w1[0][r] == 0.5);
    }
    Ok(())
}

#[test]
fn denseformer_at_init_equals_llama() -> Result<()> {
    for (l, h, r, tie) in shapes() {
        let c = cfg(Variant::DenseFormer, l, h, r, tie);
        let (vm, model, llama, own) = pair(&c, 8)?;
        ensure!(own.len() == l && own.iter().all(|n| n.ends_with(".dwa.alpha")));
        let ids = random_ids(2, 9, c.vocab_size, 9)?;
        let reference = llama.forward(&ids)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-6, "denseformer at init vs llama: {d}");
        ensure!(randomize(&vm, ".dwa.alpha", 0.3, 1)? == l);
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d > 1e-4, "non-trivial α should change the logits ({d})");
    }
    Ok(())
}

#[test]
fn hyper_connections_at_init_equal_llama_without_eps() -> Result<()> {
    for v in [Variant::Hyper, Variant::HyperStatic] {
        for (l, h, r, tie) in shapes() {
            let c = Config {
                norm_eps: 0.0,
                ..cfg(v, l, h, r, tie)
            };
            let (vm, model, llama, own) = pair(&c, 10)?;
            let per_conn = if v == Variant::Hyper { 6 } else { 2 };
            ensure!(own.len() == 2 * l * per_conn, "{v:?}: {own:?}");
            // HC blocks have gain-free norms; llama's are ones at init (the neutral setting).
            let ids = random_ids(2, 9, c.vocab_size, 11)?;
            let reference = llama.forward(&ids)?;
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(d <= 1e-6, "{v:?} {c:?} at init vs llama: {d}");
            let pat = if v == Variant::Hyper {
                "dynamic_alpha_fn"
            } else {
                "static_alpha"
            };
            ensure!(randomize(&vm, pat, 0.3, 2)? == 2 * l);
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(
                d > 1e-4,
                "{v:?}: non-neutral {pat} should change the logits ({d})"
            );
        }
    }
    // With eps > 0 the read-out n·x_L is normalised slightly differently (documented).
    let c = cfg(Variant::Hyper, 2, 4, 2, false);
    let (_, model, llama, _) = pair(&c, 12)?;
    let ids = random_ids(1, 5, c.vocab_size, 13)?;
    let d = max_abs_diff(&model.forward(&ids)?, &llama.forward(&ids)?)?;
    ensure!(
        d > 0.0 && d < 1e-2,
        "eps effect should be small and non-zero: {d}"
    );
    Ok(())
}

#[test]
fn resformer_with_lambda_zero_equals_llama() -> Result<()> {
    for (l, h, r, tie) in shapes() {
        let c = cfg(Variant::ResFormer, l, h, r, tie);
        let (_, model, llama, own) = pair(&c, 14)?;
        ensure!(own.is_empty(), "resformer has no new parameters");
        let ids = random_ids(2, 9, c.vocab_size, 15)?;
        let reference = llama.forward(&ids)?;
        let d0 = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d0 > 1e-5, "λ = ½ should change the logits ({d0})");
        let model = model.with_value_residual(0.0);
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-6, "resformer λ = 0 vs llama: {d}");
    }
    Ok(())
}

/// ResFormer's values: layer l ≥ 1 uses exactly ½V_0 + ½V_l (checked against λ = 0 values).
#[test]
fn resformer_values_are_the_half_mix() -> Result<()> {
    let c = cfg(Variant::ResFormer, 3, 4, 2, false);
    let (_, model) = init_varmap(&c, 16, DType::F64, &Device::Cpu)?;
    let ids = random_ids(2, 6, c.vocab_size, 17)?;
    let (_, tr) = model.forward_trace(&ids)?;
    // Own values of layer 2, from its input, with λ = 0 on a copy of the same weights.
    let plain = model.clone().with_value_residual(0.0);
    let (_, tr0) = plain.forward_trace(&ids)?;
    // Layer 0 is identical; layer 1's own values depend only on layer 1's input, which is the
    // same in both runs (layer 0 is unchanged).
    ensure!(max_abs_diff(&tr.values[0], &tr0.values[0])? == 0.0);
    let want = ((&tr0.values[0] * 0.5)? + (&tr0.values[1] * 0.5)?)?;
    ensure!(max_abs_diff(&tr.values[1], &want)? <= 1e-12);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Causality
// ---------------------------------------------------------------------------------------------

#[test]
fn rivals_are_causal() -> Result<()> {
    for v in RIVALS {
        let c = cfg(v, 3, 4, 2, false);
        let (vm, model) = init_varmap(&c, 18, DType::F64, &Device::Cpu)?;
        randomize(&vm, "dynamic_", 0.3, 3)?; // make HC's per-token part live
        randomize(&vm, ".dwa.alpha", 0.3, 4)?;
        let ids = random_ids(1, 10, c.vocab_size, 19)?;
        let base = model.forward(&ids)?;
        let mut changed: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let p = 6;
        changed[p] = (changed[p] + 1) % c.vocab_size as u32;
        let ids2 = Tensor::from_vec(changed, (1, 10), &Device::Cpu)?;
        let out = model.forward(&ids2)?;
        let before = max_abs_diff(&base.narrow(1, 0, p)?, &out.narrow(1, 0, p)?)?;
        ensure!(before == 0.0, "{v:?}: positions < {p} changed by {before}");
        let after = max_abs_diff(&base.narrow(1, p, 10 - p)?, &out.narrow(1, p, 10 - p)?)?;
        ensure!(after > 1e-6, "{v:?}: positions ≥ {p} should change");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Parameter counts and optimizer groups
// ---------------------------------------------------------------------------------------------

/// A second opinion on the extra parameters, from the papers' formulas.
fn formula_extra(c: &Config) -> i64 {
    let (l, r, d, dh) = (
        c.n_layers as i64,
        c.n_kv_heads as i64,
        c.d_model as i64,
        c.head_dim() as i64,
    );
    let n = models::hyper::STREAMS as i64;
    let blocks = l * (l + 1) / 2 - 1;
    let window: i64 = (1..l).map(|i| i.min(2) + 1).sum();
    match c.variant {
        Variant::LimeAvg | Variant::ResFormer => 0,
        Variant::LimeLast2 | Variant::LimeFirst2 => r * r * window,
        Variant::LimeSameHead => r * blocks,
        Variant::LimePerDim => r * r * dh * blocks,
        Variant::LimeRandomInit => r * r * blocks,
        Variant::DenseFormer => l * (l + 3) / 2, // N(N+3)/2
        Variant::Hyper => 2 * l * (n * (n + 1) + n + d * (n + 1) + d + 2) - 2 * l * d,
        Variant::HyperStatic => 2 * l * (n * (n + 1) + n) - 2 * l * d,
        v => panic!("{v:?} not a rival"),
    }
}

#[test]
fn num_params_match_built_tensors_and_formulas() -> Result<()> {
    for v in RIVALS {
        for (l, h, r, tie) in shapes().into_iter().chain([(1, 4, 4, true)]) {
            let c = cfg(v, l, h, r, tie);
            let (vm, _) = init_varmap(&c, 0, DType::F32, &Device::Cpu)?;
            let built = models::count_params(&vm) as u64;
            ensure!(
                built == num_params(&c),
                "{c:?}: built {built} vs accounting {}",
                num_params(&c)
            );
            let llama = num_params(&with(Variant::Llama, &c)) as i64;
            ensure!(
                built as i64 - llama == formula_extra(&c),
                "{c:?}: extra {} vs formula {}",
                built as i64 - llama,
                formula_extra(&c)
            );
        }
    }
    Ok(())
}

#[test]
fn optimizer_groups_of_the_new_weights() -> Result<()> {
    let expect = |name: &str| -> Option<ParamGroup> {
        if name.contains(".router.") {
            Some(ParamGroup::Router)
        } else if name.ends_with(".dwa.alpha") || name.contains(".static_") {
            Some(ParamGroup::NoDecay)
        } else if name.contains(".dynamic_") {
            Some(ParamGroup::Decay)
        } else {
            None
        }
    };
    for v in RIVALS {
        let (vm, _) = init_varmap(&cfg(v, 3, 4, 2, false), 0, DType::F32, &Device::Cpu)?;
        for (name, _) in sorted_vars(&vm) {
            if let Some(g) = expect(&name) {
                ensure!(param_group(&name) == g, "{name}: {:?}", param_group(&name));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Finite-difference gradients (f64) of each variant's new weights
// ---------------------------------------------------------------------------------------------

#[test]
fn new_weights_match_finite_differences() -> Result<()> {
    let checks: [(Variant, &[(&str, &[usize])]); 10] = [
        (
            Variant::LimeAvg,
            &[("layers.0.attn.k_proj.weight", &[0, 33])],
        ),
        (
            Variant::LimeLast2,
            &[("layers.3.attn.router.w", &[0, 5, 11])],
        ),
        (
            Variant::LimeFirst2,
            &[("layers.3.attn.router.w", &[1, 3, 10])],
        ),
        (
            Variant::LimeSameHead,
            &[("layers.2.attn.router.w_head", &[0, 2, 5])],
        ),
        (
            Variant::LimePerDim,
            &[("layers.2.attn.router.w_dim", &[0, 7, 45])],
        ),
        (
            Variant::LimeRandomInit,
            &[("layers.1.attn.router.w_rand", &[0, 3, 6])],
        ),
        (
            Variant::DenseFormer,
            &[
                ("layers.1.dwa.alpha", &[0, 1, 2]),
                ("layers.3.dwa.alpha", &[4]),
            ],
        ),
        (
            Variant::Hyper,
            &[
                ("layers.1.hc_attn.dynamic_alpha_fn", &[0, 7, 40]),
                ("layers.2.hc_mlp.dynamic_beta_fn", &[3]),
                ("layers.0.hc_mlp.dynamic_alpha_scale", &[0]),
                ("layers.1.hc_attn.static_alpha", &[0, 6, 19]),
                ("layers.3.hc_mlp.static_beta", &[2]),
            ],
        ),
        (
            Variant::HyperStatic,
            &[
                ("layers.2.hc_attn.static_alpha", &[1, 12]),
                ("layers.0.hc_mlp.static_beta", &[0, 3]),
            ],
        ),
        (
            Variant::ResFormer,
            &[("layers.0.attn.v_proj.weight", &[0, 21, 70])],
        ),
    ];
    for (v, list) in checks {
        let c = cfg(v, 4, 4, 2, false);
        let (vm, model) = init_varmap(&c, 21, DType::F64, &Device::Cpu)?;
        // Move off the init so that no gradient is trivially zero (tanh(0), α one-hot).
        randomize(&vm, "dynamic_", 0.1, 5)?;
        randomize(&vm, ".dwa.alpha", 0.3, 6)?;
        let ids = random_ids(2, 7, c.vocab_size, 22)?;
        let targets = random_ids(2, 7, c.vocab_size, 23)?;
        let grads = loss(&model, &ids, &targets)?.backward()?;
        let eps = 1e-5;
        for (name, idxs) in list {
            let w = var(&vm, name)?;
            let g: Vec<f64> = grads
                .get(w.as_tensor())
                .with_context(|| format!("{v:?}: no grad for {name}"))?
                .flatten_all()?
                .to_vec1()?;
            for &i in idxs.iter() {
                let x0 = get_flat(&w, i)?;
                set_flat(&w, i, x0 + eps)?;
                let lp = loss(&model, &ids, &targets)?.to_scalar::<f64>()?;
                set_flat(&w, i, x0 - eps)?;
                let lm = loss(&model, &ids, &targets)?.to_scalar::<f64>()?;
                set_flat(&w, i, x0)?;
                let fd = (lp - lm) / (2.0 * eps);
                let err = (fd - g[i]).abs();
                ensure!(
                    err <= 1e-8 + 1e-5 * g[i].abs(),
                    "{v:?} {name}[{i}]: backward {} vs FD {fd} (err {err})",
                    g[i]
                );
                ensure!(
                    g[i] != 0.0,
                    "{v:?} {name}[{i}]: zero gradient checks nothing"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. KV-cache decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn kv_cache_decoding_matches_full_forward() -> Result<()> {
    for v in RIVALS {
        for (l, h, r, tie) in shapes() {
            let c = cfg(v, l, h, r, tie);
            let (vm, model) = init_varmap(&c, 31, DType::F64, &Device::Cpu)?;
            randomize(&vm, "dynamic_", 0.2, 7)?;
            randomize(&vm, ".dwa.alpha", 0.3, 8)?;
            let t = 9;
            let ids = random_ids(2, t, c.vocab_size, 32)?;
            let full = model.forward(&ids)?;
            let mut cache = KvCache::new(&c);
            let mut pos = 0;
            for n in [3, 1, 1, 4] {
                let out = model.forward_cached(&ids.narrow(1, pos, n)?, &mut cache)?;
                let d = max_abs_diff(&out, &full.narrow(1, pos, n)?)?;
                ensure!(d <= 1e-10, "{c:?}: chunk at {pos} (len {n}) differs by {d}");
                pos += n;
                ensure!(cache.len() == pos);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Overfitting one batch, with a gradient for every Var
// ---------------------------------------------------------------------------------------------

#[test]
fn tiny_rivals_overfit_one_batch_and_every_var_gets_a_gradient() -> Result<()> {
    for v in RIVALS {
        let c = Config {
            d_model: 32,
            d_ff: 64,
            vocab_size: 32,
            ..cfg(v, 2, 4, 2, false)
        };
        let (vm, model) = init_varmap(&c, 1, DType::F32, &Device::Cpu)?;
        let ids = random_ids(4, 16, c.vocab_size, 100)?;
        let targets = random_ids(4, 16, c.vocab_size, 101)?;
        let base_lr = 1e-2;
        let mut opts = Vec::new();
        for (group, vars) in param_groups(&vm) {
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
            ensure!(lv.is_finite(), "{v:?}: loss {lv} at step {step}");
            let grads = l.backward()?;
            if step <= 1 {
                for (name, w) in sorted_vars(&vm) {
                    let g = grads.get(w.as_tensor());
                    ensure!(g.is_some(), "{v:?}: no gradient reaches {name}");
                    let norm = g.unwrap().sqr()?.sum_all()?.to_scalar::<f32>()?;
                    // HC's scales s_α, s_β multiply tanh(H̄·W) = tanh(0) at init: their
                    // gradient is exactly 0 on the first step and must be live on the second.
                    let zero_at_init = name.ends_with("_scale") && step == 0;
                    ensure!(
                        zero_at_init || norm > 0.0,
                        "{v:?}: zero gradient for {name} at step {step}"
                    );
                }
            }
            for o in opts.iter_mut() {
                o.step(&grads)?;
            }
            first.get_or_insert(lv);
            last = lv;
            if lv < 0.1 * first.unwrap() {
                eprintln!("{v:?}: loss {} → {lv} after {step} steps", first.unwrap());
                break;
            }
        }
        let first = first.unwrap();
        ensure!(
            last < 0.1 * first,
            "{v:?}: loss {first} → {last}, not below 10%"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Fused f32 path vs composed f64 path
// ---------------------------------------------------------------------------------------------

#[test]
fn fused_f32_matches_composed_f64() -> Result<()> {
    for v in RIVALS {
        let c = Config {
            d_model: 32,
            d_ff: 48,
            ..cfg(v, 3, 4, 2, false)
        };
        let ids = random_ids(2, 9, c.vocab_size, 40)?;
        let targets = random_ids(2, 9, c.vocab_size, 41)?.flatten_all()?;
        let run = |dtype: DType| -> Result<(Tensor, Vec<(String, Tensor)>)> {
            let (vm, model) = init_varmap(&c, 3, dtype, &Device::Cpu)?;
            randomize(&vm, "dynamic_", 0.2, 9)?;
            randomize(&vm, ".dwa.alpha", 0.3, 10)?;
            let logits = model.forward(&ids)?.reshape((18, c.vocab_size))?;
            let l = models::fused::cross_entropy(&logits, &targets)?;
            let grads = l.backward()?;
            let g = sorted_vars(&vm)
                .into_iter()
                .map(|(n, w)| {
                    let g = grads.get(w.as_tensor()).context("gradient")?;
                    Ok((n, g.to_dtype(DType::F64)?))
                })
                .collect::<Result<_>>()?;
            Ok((logits.to_dtype(DType::F64)?, g))
        };
        let (l32, g32) = run(DType::F32)?;
        let (l64, g64) = run(DType::F64)?;
        let d = max_abs_diff(&l32, &l64)?;
        ensure!(d < 1e-4, "{v:?}: logits differ by {d}");
        for ((n, a), (_, b)) in g32.iter().zip(&g64) {
            let scale = b
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?
                .max(1e-3);
            let d = max_abs_diff(a, b)? / scale;
            ensure!(d < 1e-3, "{v:?}: gradient of {n} differs by {d} (relative)");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Names and the golden FLOP table
// ---------------------------------------------------------------------------------------------

#[test]
fn names_round_trip_everywhere() -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for v in Variant::ALL {
        ensure!(Variant::from_name(v.name()) == Some(v), "{v:?}");
        ensure!(seen.insert(v.name()), "duplicate name {}", v.name());
        // The serde name (configs, run records) is the same string.
        let json = serde_json::to_string(&v)?;
        ensure!(json == format!("\"{}\"", v.name()), "{v:?}: serde {json}");
        ensure!(serde_json::from_str::<Variant>(&json)? == v);
    }
    for v in RIVALS {
        ensure!(Variant::ALL.contains(&v));
    }
    ensure!(Variant::from_name("lime-last-3").is_none());
    Ok(())
}

#[test]
fn golden_small_flop_table() {
    let base = Config {
        variant: Variant::Llama,
        vocab_size: 64,
        d_model: 32,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 4,
        d_ff: 96,
        tie_embeddings: false,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
    };
    let t = 27;
    let mut text = format!(
        "## L4 H4 D32 F96 V64, untied, one {t}-token sequence, forward, mode `causal`\n\n\
         | model | attention | params | params vs llama | forward FLOPs | FLOPs vs llama |\n\
         |---|---|---:|---:|---:|---:|\n"
    );
    for kv in [4, 2] {
        let cfgs: Vec<Config> = Variant::ALL
            .iter()
            .map(|&v| Config {
                variant: v,
                n_kv_heads: kv,
                ..base.clone()
            })
            .collect();
        for r in table(&cfgs, t, FlopMode::Causal) {
            text += &format!(
                "| {} | {} | {} | {:+.2}% | {} | {:+.2}% |\n",
                r.model,
                r.attention,
                r.params,
                r.params_overhead_pct,
                r.forward_flops,
                r.flops_overhead_pct
            );
        }
    }
    crate::golden().bind(|| insta::assert_snapshot!("flops_small_all_models", text));
}
