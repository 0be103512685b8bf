//! The rivals (`denseformer`, `hyper`, `hyper-static`, `resformer`) and the LIMe router ablations
//! (`lime-avg`, `lime-last-2`, `lime-first-2`, `lime-same-head`, `lime-per-dim`,
//! `lime-random-init`): exact reductions at each variant's documented neutral setting, causality,
//! parameter counts, finite-difference gradients, KV-cache decoding, overfitting with a gradient
//! for every Var, fused-f32 vs composed-f64 agreement, names, a golden FLOP table, and scalar
//! references (plain loops, from the papers' equations) for `denseformer`, `hyper` and
//! `hyper-static` at random, non-neutral weights, with deliberate-bug checks (section 9).
//!
//! Neutral settings (see each module's docs):
//! - router ablations with a trainable router: current-layer identity, zeros elsewhere → llama;
//!   `lime-avg` has no weights: it equals `lime` with W_l = [I … I]/(l+1);
//! - `denseformer`: its init (α_ii = 1, else 0) → llama;
//! - `hyper`, `hyper-static` (n = 4): their init with `norm_eps` = 0 → llama with unit norm gains;
//! - `resformer`: λ = 0 (`Model::with_def` with `ResFormer { lambda: 0.0 }`) → llama.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use models::accounting::{num_params, table, FlopMode};
use models::{
    init_varmap, param_group, sorted_vars, state_dict, Config, KvCache, Model, ParamGroup, Variant,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::models_correctness::{cfg, fd_check, loss, max_abs_diff, random_ids, randomize};

/// Every variant this file covers: the built-ins other than llama, lime and lime-dynamic (which
/// `models_correctness.rs` covers), so a newly registered built-in is covered here by default.
fn rivals() -> Vec<Variant> {
    let covered = crate::models_correctness::COVERED;
    Variant::ALL
        .iter()
        .copied()
        .filter(|v| !covered.contains(v))
        .collect()
}

fn shapes() -> Vec<(usize, usize, usize, bool)> {
    // (layers, heads, kv heads, tied)
    vec![(4, 4, 4, false), (4, 4, 2, true), (3, 2, 1, false)]
}

pub(crate) fn with(variant: Variant, c: &Config) -> Config {
    Config {
        variant,
        ..c.clone()
    }
}

/// Copies every parameter of `from` that `to` also has; returns the names only `to` has.
pub(crate) fn copy_shared(from: &VarMap, to: &VarMap) -> Result<Vec<String>> {
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

/// ResFormer with mixing weight λ over the weights of `vm`.
fn with_lambda(vm: &VarMap, c: &Config, lambda: f64, dtype: DType) -> Result<Model> {
    let vb = models::seeded_var_builder(vm, c.variant, 0, dtype, &Device::Cpu);
    let def = models::resformer::ResFormer { lambda };
    Ok(Model::with_def(c, vb, models::Backend::Reference, &def)?)
}

/// Builds `variant` and llama with the same shared weights (f64); returns both and the names
/// only the variant has.
pub(crate) fn pair(c: &Config, seed: u64) -> Result<(VarMap, Model, Model, Vec<String>)> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    let (llama_vm, llama) =
        init_varmap(&with(Variant::LLAMA, c), seed + 1, DType::F64, &Device::Cpu)?;
    let own = copy_shared(&llama_vm, &vm)?;
    Ok((vm, model, llama, own))
}

#[test]
fn router_ablations_reduce_to_llama_with_neutral_routers() -> Result<()> {
    for v in [
        Variant::LIME_LAST_2,
        Variant::LIME_FIRST_2,
        Variant::LIME_SAME_HEAD,
        Variant::LIME_PER_DIM,
        Variant::LIME_RANDOM_INIT,
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
        let c = cfg(Variant::LIME_AVG, l, h, r, tie);
        let (avg_vm, avg) = init_varmap(&c, 5, DType::F64, &Device::Cpu)?;
        let (lime_vm, lime) = init_varmap(&with(Variant::LIME, &c), 6, DType::F64, &Device::Cpu)?;
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
        let ws = avg.mixing_weights()?;
        ensure!(ws.len() == l - 1);
        let w1: Vec<Vec<f64>> = ws[0].to_vec2()?;
        ensure!(w1[0][0] == 0.5 && w1[0][r] == 0.5);
    }
    Ok(())
}

#[test]
fn denseformer_at_init_equals_llama() -> Result<()> {
    for (l, h, r, tie) in shapes() {
        let c = cfg(Variant::DENSEFORMER, l, h, r, tie);
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
    for v in [Variant::HYPER, Variant::HYPER_STATIC] {
        for (l, h, r, tie) in shapes() {
            let c = Config {
                norm_eps: 0.0,
                ..cfg(v, l, h, r, tie)
            };
            let (vm, model, llama, own) = pair(&c, 10)?;
            let per_conn = if v == Variant::HYPER { 6 } else { 2 };
            ensure!(own.len() == 2 * l * per_conn, "{v:?}: {own:?}");
            // HC blocks have gain-free norms; llama's are ones at init (the neutral setting).
            let ids = random_ids(2, 9, c.vocab_size, 11)?;
            let reference = llama.forward(&ids)?;
            let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
            ensure!(d <= 1e-6, "{v:?} {c:?} at init vs llama: {d}");
            let pat = if v == Variant::HYPER {
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
    let c = cfg(Variant::HYPER, 2, 4, 2, false);
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
        let c = cfg(Variant::RESFORMER, l, h, r, tie);
        let (vm, model, llama, own) = pair(&c, 14)?;
        ensure!(own.is_empty(), "resformer has no new parameters");
        let ids = random_ids(2, 9, c.vocab_size, 15)?;
        let reference = llama.forward(&ids)?;
        let d0 = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d0 > 1e-5, "λ = ½ should change the logits ({d0})");
        let model = with_lambda(&vm, &c, 0.0, DType::F64)?;
        let d = max_abs_diff(&model.forward(&ids)?, &reference)?;
        ensure!(d <= 1e-6, "resformer λ = 0 vs llama: {d}");
    }
    Ok(())
}

/// ResFormer's values: layer l ≥ 1 uses exactly ½V_0 + ½V_l (checked against λ = 0 values).
#[test]
fn resformer_values_are_the_half_mix() -> Result<()> {
    let c = cfg(Variant::RESFORMER, 3, 4, 2, false);
    let (vm, model) = init_varmap(&c, 16, DType::F64, &Device::Cpu)?;
    let ids = random_ids(2, 6, c.vocab_size, 17)?;
    let (_, tr) = model.forward_trace(&ids)?;
    // Own values of layer 2, from its input, with λ = 0 on the same weights.
    let plain = with_lambda(&vm, &c, 0.0, DType::F64)?;
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
    for v in rivals() {
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
fn formula_extra(c: &Config) -> Option<i64> {
    let (l, r, d, dh) = (
        c.n_layers as i64,
        c.n_kv_heads as i64,
        c.d_model as i64,
        c.head_dim() as i64,
    );
    let n = models::hyper::STREAMS as i64;
    let blocks = l * (l + 1) / 2 - 1;
    let window: i64 = (1..l).map(|i| i.min(2) + 1).sum();
    Some(match c.variant.name() {
        "lime-avg" | "resformer" => 0,
        "lime-last-2" | "lime-first-2" => r * r * window,
        "lime-same-head" => r * blocks,
        "lime-per-dim" => r * r * dh * blocks,
        "lime-random-init" => r * r * blocks,
        "denseformer" => l * (l + 3) / 2, // N(N+3)/2
        "hyper" => 2 * l * (n * (n + 1) + n + d * (n + 1) + d + 2) - 2 * l * d,
        "hyper-static" => 2 * l * (n * (n + 1) + n) - 2 * l * d,
        // w and g (D each) for 2L ops: L−1 attention (not layer 0's), L MLP, 1 output.
        "attnres" | "attnres-block" => 2 * d * ((l - 1) + l + 1),
        "muddformer" => {
            let da: i64 = (0..l)
                .map(|i| {
                    let last = i + 1 == l;
                    let (c, n) = (if last { 1 } else { 4 }, i + 2);
                    let hid = (c * n * if last { 4 } else { 1 } / 64 + 1) * 64; // round64
                    hid * d + c * n * hid + c * n
                })
                .sum();
            da + 2 * (l - 1) * d // + the k and v input norms of blocks 1 … L−1
        }
        // Per site fn ((2+n)n × nD), base ((2+n)n), scale (3); head fn (n × nD), base, scale.
        "mhc" => 2 * l * ((2 + n) * n * n * d + (2 + n) * n + 3) + n * n * d + n + 1,
        // Canon: a (channels, k) kernel per position and layer; A, C: D; B: q|k|v; D: gate|up.
        "canon" => {
            let k = c.setting("canon_kernel") as i64;
            let mask = c.setting("canon_positions");
            let (h, f) = (c.n_heads as i64, c.d_ff as i64);
            let ch = [d, (h + 2 * r) * dh, d, 2 * f];
            l * k
                * (0..4)
                    .filter(|i| mask >> i & 1 == 1)
                    .map(|i| ch[i])
                    .sum::<i64>()
        }
        // DCA: block i's GRN b (3, i+1, D) and w (3, D), its k/v norms; the output GRN over L+1.
        "dca" => (0..l).map(|i| 3 * (i + 1) * d + 3 * d + 2 * d).sum::<i64>() + (l + 1) * d + d,
        // LAuReL-RW+LR: α, β and a rank-r pair (r, D), (D, r) per block.
        "laurel" => l * (2 + 2 * c.setting("laurel_rank") as i64 * d),
        // A variant without a closed form here is checked against its own declared count only.
        _ => return None,
    })
}

#[test]
fn num_params_match_built_tensors_and_formulas() -> Result<()> {
    for v in rivals() {
        for (l, h, r, tie) in shapes().into_iter().chain([(1, 4, 4, true)]) {
            let c = cfg(v, l, h, r, tie);
            let (vm, _) = init_varmap(&c, 0, DType::F32, &Device::Cpu)?;
            let built = models::count_params(&vm) as u64;
            ensure!(
                built == num_params(&c),
                "{c:?}: built {built} vs accounting {}",
                num_params(&c)
            );
            let llama = num_params(&with(Variant::LLAMA, &c)) as i64;
            if let Some(f) = formula_extra(&c) {
                ensure!(
                    built as i64 - llama == f,
                    "{c:?}: extra {} vs formula {f}",
                    built as i64 - llama,
                );
            }
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
    for v in rivals() {
        let (vm, _) = init_varmap(&cfg(v, 3, 4, 2, false), 0, DType::F32, &Device::Cpu)?;
        for (name, _) in sorted_vars(&vm) {
            if let Some(g) = expect(&name) {
                ensure!(
                    param_group(v, &name) == g,
                    "{name}: {:?}",
                    param_group(v, &name)
                );
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
            Variant::LIME_AVG,
            &[("layers.0.attn.k_proj.weight", &[0, 33])],
        ),
        (
            Variant::LIME_LAST_2,
            &[("layers.3.attn.router.w", &[0, 5, 11])],
        ),
        (
            Variant::LIME_FIRST_2,
            &[("layers.3.attn.router.w", &[1, 3, 10])],
        ),
        (
            Variant::LIME_SAME_HEAD,
            &[("layers.2.attn.router.w_head", &[0, 2, 5])],
        ),
        (
            Variant::LIME_PER_DIM,
            &[("layers.2.attn.router.w_dim", &[0, 7, 45])],
        ),
        (
            Variant::LIME_RANDOM_INIT,
            &[("layers.1.attn.router.w_rand", &[0, 3, 6])],
        ),
        (
            Variant::DENSEFORMER,
            &[
                ("layers.1.dwa.alpha", &[0, 1, 2]),
                ("layers.3.dwa.alpha", &[4]),
            ],
        ),
        (
            Variant::HYPER,
            &[
                ("layers.1.hc_attn.dynamic_alpha_fn", &[0, 7, 40]),
                ("layers.2.hc_mlp.dynamic_beta_fn", &[3]),
                ("layers.0.hc_mlp.dynamic_alpha_scale", &[0]),
                ("layers.1.hc_attn.static_alpha", &[0, 6, 19]),
                ("layers.3.hc_mlp.static_beta", &[2]),
            ],
        ),
        (
            Variant::HYPER_STATIC,
            &[
                ("layers.2.hc_attn.static_alpha", &[1, 12]),
                ("layers.0.hc_mlp.static_beta", &[0, 3]),
            ],
        ),
        (
            Variant::RESFORMER,
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
        for (name, idxs) in list {
            let label = format!("{v:?}");
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
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. KV-cache decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn kv_cache_decoding_matches_full_forward() -> Result<()> {
    for v in rivals() {
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
    rivals()
        .into_iter()
        .try_for_each(crate::models_correctness::overfit_one_batch)
}

// ---------------------------------------------------------------------------------------------
// 7. Fused f32 path vs composed f64 path
// ---------------------------------------------------------------------------------------------

#[test]
fn fused_f32_matches_composed_f64() -> Result<()> {
    for v in rivals() {
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
            let l = model.cross_entropy(&logits, &targets)?;
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
    for &v in Variant::ALL {
        ensure!(Variant::from_name(v.name()) == Some(v), "{v:?}");
        ensure!(seen.insert(v.name()), "duplicate name {}", v.name());
        // The serde name (configs, run records) is the same string.
        let json = serde_json::to_string(&v)?;
        ensure!(json == format!("\"{}\"", v.name()), "{v:?}: serde {json}");
        ensure!(serde_json::from_str::<Variant>(&json)? == v);
    }
    for v in rivals() {
        ensure!(Variant::ALL.contains(&v));
    }
    ensure!(Variant::from_name("lime-last-3").is_none());
    Ok(())
}

#[test]
fn golden_small_flop_table() {
    let base = Config {
        variant: Variant::LLAMA,
        vocab_size: 64,
        d_model: 32,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 4,
        d_ff: 96,
        tie_embeddings: false,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        settings: Default::default(),
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

// ---------------------------------------------------------------------------------------------
// 9. Scalar references (plain Rust loops, no candle) at random, non-neutral weights
// ---------------------------------------------------------------------------------------------
//
// Written from the papers' equations (as restated in the module docs of `denseformer.rs` and
// `hyper.rs`), not from the candle code:
//
// DenseFormer (Pagliardini et al. 2024, Eq. of the DWA):
//   Y_0 = embed;  Y_{i+1} = Block_i(X_i)  (llama block, residuals included);
//   X_{i+1} = Σ_{j=0}^{i+1} α_{i,j} Y_j   (`layers.{i}.dwa.alpha`[j]);  logits = head(norm(X_L)).
//
// Hyper-Connections (Zhu et al. 2024, Eqs. 1–5 and 10–13; the authors' pseudocode / `hc.py`):
//   H = (h_1 … h_n)ᵀ (n × D), H_0 = (x, …, x).  Per sub-layer 𝒯 (attention or MLP, each with a
//   gain-free pre-norm), with A = [A_m | A_r] (n × (n+1)), row j = stream j:
//     dynamic: H̄ = RMSNorm(H) per stream (gain-free; the module's documented deviation from
//              the authors' affine-free LayerNorm), A += s_α · tanh(H̄ W_α), B += s_β · tanh(H̄ W_β)
//     h_0 = A_mᵀ H = Σ_j A[j][0] · h_j
//     H'  = Bᵀ 𝒯(h_0) + A_rᵀ H:  h'_i = B_i · 𝒯(h_0) + Σ_j A[j][1+i] · h_j
//   read-out Σ_i h_i → final norm → head.

pub(crate) type Seq = Vec<Vec<f64>>; // [t][D]

/// Named f64 weights plus a record of which names the reference read (every Var must be read).
pub(crate) struct RefWeights {
    pub(crate) w: std::collections::HashMap<String, Vec<f64>>,
    pub(crate) used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl RefWeights {
    pub(crate) fn get(&self, name: &str) -> &[f64] {
        self.used.borrow_mut().insert(name.to_string());
        self.w
            .get(name)
            .unwrap_or_else(|| panic!("reference reads a missing weight {name}"))
    }
}

/// Deliberate bugs in the references: each must make the comparison fail (mutation checks).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// DenseFormer: α_{i,j} read as α_{i,i+1−j} (α reversed over depth).
    AlphaReversed,
    /// HC: A_r transposed (h'_i = Σ_j A_r[i][j] h_j).
    ArTransposed,
    /// HC: the depth weights B of streams 0 and 1 swapped.
    BetaStreamsSwapped,
    /// HC: the sub-layer reads A_r's first column instead of A_m.
    AmOffByOne,
    /// HC dynamic: the tanh argument uses H instead of the normalised H̄.
    NoDynamicNorm,
}

// The scalar building blocks (matvec, RMSNorm, RoPE) are the llama reference's own.
use crate::models_correctness::{
    causal_attention_ref, head_ref, matvec as ref_matvec, rmsnorm_ref as ref_rmsnorm,
};

pub(crate) fn ref_add(a: &Seq, b: &Seq) -> Seq {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(u, v)| u + v).collect())
        .collect()
}

/// Attn_l(norm(x_t)) for every position t of one sequence (causal, RoPE, GQA), no residual.
/// `gain`: the block norm has its learned gain (llama, denseformer) or none (hyper*).
pub(crate) fn ref_attention(c: &Config, w: &RefWeights, l: usize, xs: &Seq, gain: bool) -> Seq {
    let (nh, r, dh) = (c.n_heads, c.n_kv_heads, c.head_dim());
    let group = nh / r;
    let gw = gain.then(|| w.get(&format!("layers.{l}.attn_norm.weight")));
    let h: Seq = xs.iter().map(|x| ref_rmsnorm(x, gw, c.norm_eps)).collect();
    let heads = |name: &str| -> Vec<Seq> {
        let m = w.get(&format!("layers.{l}.attn.{name}.weight"));
        h.iter()
            .map(|ht| ref_matvec(m, ht).chunks(dh).map(|c| c.to_vec()).collect())
            .collect()
    };
    let (q, k, v) = (heads("q_proj"), heads("k_proj"), heads("v_proj")); // [t][head][d_h]
    (0..xs.len())
        .map(|t| {
            let y = causal_attention_ref(&q, &k, &v, t, group, c.rope_theta);
            ref_matvec(w.get(&format!("layers.{l}.attn.o_proj.weight")), &y)
        })
        .collect()
}

/// MLP_l(norm(x)) (SwiGLU), no residual.
pub(crate) fn ref_mlp(c: &Config, w: &RefWeights, l: usize, x: &[f64], gain: bool) -> Vec<f64> {
    let gw = gain.then(|| w.get(&format!("layers.{l}.mlp_norm.weight")));
    let h = ref_rmsnorm(x, gw, c.norm_eps);
    let gate = ref_matvec(w.get(&format!("layers.{l}.mlp.w_gate.weight")), &h);
    let up = ref_matvec(w.get(&format!("layers.{l}.mlp.w_up.weight")), &h);
    let act: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
        .collect();
    ref_matvec(w.get(&format!("layers.{l}.mlp.w_down.weight")), &act)
}

pub(crate) fn ref_embed(c: &Config, w: &RefWeights, ids: &[u32]) -> Seq {
    let d = c.d_model;
    let e = w.get("embed_tokens.weight");
    ids.iter()
        .map(|&id| e[id as usize * d..][..d].to_vec())
        .collect()
}

pub(crate) fn ref_head(c: &Config, w: &RefWeights, x: &Seq) -> Seq {
    head_ref(c, |name| w.get(name), x)
}

/// DenseFormer logits [t][vocab] of one sequence.
fn ref_denseformer(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let (d, tn) = (c.d_model, ids.len());
    let mut x = ref_embed(c, w, ids); // X_0 = Y_0
    let mut ys = vec![x.clone()];
    for i in 0..c.n_layers {
        // Y_{i+1} = Block_i(X_i): x += Attn(norm(x)); x += MLP(norm(x)).
        let y = ref_add(&x, &ref_attention(c, w, i, &x, true));
        let m: Seq = y.iter().map(|yt| ref_mlp(c, w, i, yt, true)).collect();
        ys.push(ref_add(&y, &m));
        // X_{i+1} = Σ_{j=0}^{i+1} α_{i,j} Y_j.
        let alpha = w.get(&format!("layers.{i}.dwa.alpha"));
        assert_eq!(alpha.len(), i + 2);
        let a = |j: usize| match bug {
            Bug::AlphaReversed => alpha[i + 1 - j],
            _ => alpha[j],
        };
        x = (0..tn)
            .map(|t| {
                (0..d)
                    .map(|e| (0..=i + 1).map(|j| a(j) * ys[j][t][e]).sum())
                    .collect()
            })
            .collect();
    }
    ref_head(c, w, &x)
}

/// The paper's expansion rate n used by `hyper`/`hyper-static` (spec: n = 4).
const HC_N: usize = 4;

/// Hyper-Connections (`hyper` dynamic, `hyper-static`) logits [t][vocab] of one sequence.
fn ref_hyper(c: &Config, w: &RefWeights, ids: &[u32], bug: Bug) -> Seq {
    let (n, d, tn) = (HC_N, c.d_model, ids.len());
    let dynamic = c.variant == Variant::HYPER;
    // hs[t][i]: stream i of token t; H_0 = (x, …, x).
    let mut hs: Vec<Seq> = ref_embed(c, w, ids)
        .into_iter()
        .map(|x| vec![x; n])
        .collect();
    for l in 0..c.n_layers {
        for sub in ["hc_attn", "hc_mlp"] {
            let pre = format!("layers.{l}.{sub}.");
            let sa = w.get(&format!("{pre}static_alpha")); // (n, n+1) row-major
            let sb = w.get(&format!("{pre}static_beta")); // (n,)
                                                          // Per token: A[j][k] (row j = source stream j; k = 0 is A_m, k = 1 + i is A_r[j][i])
                                                          // and B[i].
            let mut a_t: Vec<Seq> = Vec::with_capacity(tn);
            let mut b_t: Seq = Vec::with_capacity(tn);
            for h in &hs {
                let mut a: Seq = (0..n)
                    .map(|j| sa[j * (n + 1)..][..n + 1].to_vec())
                    .collect();
                let mut b = sb.to_vec();
                if dynamic {
                    let wa = w.get(&format!("{pre}dynamic_alpha_fn")); // (D, n+1)
                    let s_a = w.get(&format!("{pre}dynamic_alpha_scale"))[0];
                    let wb = w.get(&format!("{pre}dynamic_beta_fn")); // (D,)
                    let s_b = w.get(&format!("{pre}dynamic_beta_scale"))[0];
                    for j in 0..n {
                        let hbar = match bug {
                            Bug::NoDynamicNorm => h[j].clone(),
                            _ => ref_rmsnorm(&h[j], None, c.norm_eps),
                        };
                        for (k, ajk) in a[j].iter_mut().enumerate() {
                            let z: f64 = (0..d).map(|e| hbar[e] * wa[e * (n + 1) + k]).sum();
                            *ajk += s_a * z.tanh();
                        }
                        let z: f64 = (0..d).map(|e| hbar[e] * wb[e]).sum();
                        b[j] += s_b * z.tanh();
                    }
                }
                if bug == Bug::BetaStreamsSwapped {
                    b.swap(0, 1);
                }
                a_t.push(a);
                b_t.push(b);
            }
            // h_0 = A_mᵀ H.
            let m = if bug == Bug::AmOffByOne { 1 } else { 0 };
            let h0: Seq = (0..tn)
                .map(|t| {
                    (0..d)
                        .map(|e| (0..n).map(|j| a_t[t][j][m] * hs[t][j][e]).sum())
                        .collect()
                })
                .collect();
            // 𝒯(h_0): the sub-layer with its gain-free pre-norm, no residual.
            let y: Seq = if sub == "hc_attn" {
                ref_attention(c, w, l, &h0, false)
            } else {
                h0.iter().map(|x| ref_mlp(c, w, l, x, false)).collect()
            };
            // H' = Bᵀ 𝒯(h_0) + A_rᵀ H.
            let ar = |t: usize, j: usize, i: usize| match bug {
                Bug::ArTransposed => a_t[t][i][1 + j],
                _ => a_t[t][j][1 + i],
            };
            hs = (0..tn)
                .map(|t| {
                    (0..n)
                        .map(|i| {
                            (0..d)
                                .map(|e| {
                                    b_t[t][i] * y[t][e]
                                        + (0..n).map(|j| ar(t, j, i) * hs[t][j][e]).sum::<f64>()
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect();
        }
    }
    // Read-out: the sum of the streams.
    let x: Seq = hs
        .iter()
        .map(|h| (0..d).map(|e| (0..n).map(|i| h[i][e]).sum()).collect())
        .collect();
    ref_head(c, w, &x)
}

/// Sets every Var (in `sorted_vars` order, one seeded ChaCha stream) to random, non-neutral
/// values and returns them by name. Uniform ranges by kind: norm gains 1 ± 0.5; DenseFormer α and
/// the static HC matrices ±1 (far from one-hot / identity / ones); dynamic HC weights ±0.7 and
/// scales ±1 (tanh well away from 0 and from saturation); other matrices ±1.5/√fan_in.
pub(crate) fn randomize_every_var(vm: &VarMap, seed: u64) -> Result<RefWeights> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = std::collections::HashMap::new();
    for (name, v) in sorted_vars(vm) {
        let dims = v.dims().to_vec();
        let (centre, half) = if name.ends_with("norm.weight") {
            (1.0, 0.5)
        } else if name.ends_with("_scale") || name.ends_with(".dwa.alpha") {
            (0.0, 1.0)
        } else if name.contains(".static_") {
            (0.0, 1.0)
        } else if name.contains(".mudd.dynamic_") {
            (0.0, 1.5 / (dims[1] as f64).sqrt()) // MUDDFormer's W1, W2: fan-in scaled
        } else if name.ends_with(".query") {
            (0.0, 0.7) // AttnRes pseudo-queries: softmax over depth far from uniform and one-hot
        } else if name.ends_with(".key_gain") {
            (1.0, 0.5)
        } else if name.ends_with(".hc_base") {
            (0.0, 1.0) // mHC gate biases
        } else if name.contains(".dca") && name.ends_with(".bias") {
            (1.0, 0.5) // DCA's static GRN weights: far from all-ones
        } else if name.ends_with(".laurel.alpha") || name.ends_with(".laurel.beta") {
            (1.0, 0.5) // LAuReL's α, β
        } else if name.contains(".dynamic_") {
            (0.0, 0.7)
        } else if dims.len() == 2 {
            (0.0, 1.5 / (dims[1] as f64).sqrt())
        } else {
            anyhow::bail!("no random range for {name} {dims:?}")
        };
        let vals: Vec<f64> = (0..v.elem_count())
            .map(|_| centre + half * (2.0 * rng.gen::<f64>() - 1.0))
            .collect();
        v.set(&Tensor::from_vec(vals.clone(), dims, &Device::Cpu)?)?;
        w.insert(name, vals);
    }
    Ok(RefWeights {
        w,
        used: Default::default(),
    })
}

/// Tiny configs: (layers, heads, kv heads, tied); d = 8, vocab 11, F = 12.
pub(crate) fn tiny(variant: Variant, l: usize, h: usize, r: usize, tie: bool) -> Config {
    Config {
        tie_embeddings: tie,
        norm_eps: 1e-3,
        ..Config::mha(variant, 11, 8, l, h)
            .with_kv_heads(r)
            .with_d_ff(12)
    }
}

/// Max |model − reference| over a (B=2, T=5) batch, at random weights (seed), for `bug`.
fn reference_gap(c: &Config, seed: u64, bug: Bug) -> Result<f64> {
    let (vm, model) = init_varmap(c, seed, DType::F64, &Device::Cpu)?;
    let w = randomize_every_var(&vm, seed ^ 0x5eed)?;
    let ids = random_ids(2, 5, c.vocab_size, seed + 1)?;
    let logits: Vec<Vec<Vec<f64>>> = model.forward(&ids)?.to_vec3()?;
    let ids: Vec<Vec<u32>> = ids.to_vec2()?;
    let mut gap = 0.0f64;
    for (b, seq) in ids.iter().enumerate() {
        let reference = match c.variant.name() {
            "denseformer" => ref_denseformer(c, &w, seq, bug),
            "hyper" | "hyper-static" => ref_hyper(c, &w, seq, bug),
            v => anyhow::bail!("no scalar reference for {v:?}"),
        };
        ensure!(reference.len() == seq.len());
        for (m_t, r_t) in logits[b].iter().zip(&reference) {
            ensure!(m_t.len() == r_t.len() && r_t.iter().all(|x| x.is_finite()));
            for (a, e) in m_t.iter().zip(r_t) {
                gap = gap.max((a - e).abs());
            }
        }
    }
    // The reference must have read every parameter of the model (nothing the model has is
    // ignored by the equations above).
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
    vec![
        tiny(v, 3, 2, 2, false),
        tiny(v, 2, 2, 1, true),
        // 5 blocks: more blocks than streams, so A_m's init index l mod n wraps (irrelevant at
        // random weights, but the stream bookkeeping runs for longer).
        tiny(v, 5, 2, 1, false),
    ]
}

#[test]
fn denseformer_and_hyper_connections_match_scalar_references_at_random_weights() -> Result<()> {
    assert_eq!(models::hyper::STREAMS, HC_N, "spec: n = 4 streams");
    for v in [Variant::DENSEFORMER, Variant::HYPER, Variant::HYPER_STATIC] {
        for (k, c) in reference_configs(v).into_iter().enumerate() {
            let gap = reference_gap(&c, 100 + k as u64, Bug::None)?;
            ensure!(
                gap <= 1e-9,
                "{c:?}: model vs scalar reference differ by {gap}"
            );
        }
    }
    Ok(())
}

/// The comparison above can fail: each deliberate bug in a reference is caught by a wide margin.
#[test]
fn scalar_references_catch_deliberate_bugs() -> Result<()> {
    let cases = [
        (Variant::DENSEFORMER, Bug::AlphaReversed),
        (Variant::HYPER, Bug::ArTransposed),
        (Variant::HYPER, Bug::BetaStreamsSwapped),
        (Variant::HYPER, Bug::AmOffByOne),
        (Variant::HYPER, Bug::NoDynamicNorm),
        (Variant::HYPER_STATIC, Bug::ArTransposed),
        (Variant::HYPER_STATIC, Bug::BetaStreamsSwapped),
        (Variant::HYPER_STATIC, Bug::AmOffByOne),
    ];
    for (v, bug) in cases {
        let c = tiny(v, 3, 2, 2, false);
        let gap = reference_gap(&c, 100, bug)?;
        ensure!(gap > 1e-4, "{v:?} with {bug:?} went unnoticed (gap {gap})");
    }
    Ok(())
}
