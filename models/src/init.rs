//! Deterministic, name-keyed initialisation; optimizer parameter groups; weight (de)serialisation
//! helpers.
//!
//! ## Initialisation
//! Every parameter is generated on the host in f64 from its own `ChaCha8Rng`, seeded with
//! `SHA-256("lime-bench/init/v1" ‖ seed (u64 LE) ‖ name)`, then converted to the requested dtype
//! and moved to the device. A parameter's value depends only on (seed, name, shape), not on which
//! other parameters exist, creation order or thread count. (The normal samples use Box–Muller;
//! `sqrt` is exact IEEE, `ln`/`cos` come from the platform libm, which is correctly rounded for
//! practically all inputs on glibc.)
//!
//! Rules of the shared skeleton; each variant's file gives the init and group of its own
//! parameters ([`crate::VariantDef::init`], [`crate::VariantDef::param_group`]), which are asked
//! first:
//!
//! | parameter                                   | init                                                   |
//! |---------------------------------------------|--------------------------------------------------------|
//! | `embed_tokens.weight` (V, D)                | N(0, 0.02²)                                            |
//! | `*.q_proj/k_proj/v_proj/o_proj.weight`      | N(0, 0.02²)                                            |
//! | `*.mlp.w_gate/w_up/w_down.weight`           | N(0, 0.02²)                                            |
//! | `lm_head.weight` (V, D), untied only        | N(0, 0.02²)                                            |
//! | `*_norm.weight`, `norm.weight` (D,)         | ones                                                   |
//!
//! No residual-projection rescaling is applied (plain N(0, 0.02) everywhere, as in the spec).
//!
//! ## Optimizer groups ([`param_group`])
//! - [`ParamGroup::Router`]: every LIMe router parameter — lr × [`ROUTER_LR_MULT`], no weight
//!   decay (LIMe paper: decay on the router hurts).
//! - [`ParamGroup::Decay`]: projection matrices, the untied `lm_head.weight` (and variants'
//!   parameters that say so, e.g. the dynamic Hyper-Connection weights).
//! - [`ParamGroup::NoDecay`]: norms, `embed_tokens.weight` (and variants' parameters that say so:
//!   static Hyper-Connection weights, DenseFormer's α).
//!   **Tied embeddings:** the shared matrix exists once, under the name `embed_tokens.weight`,
//!   and follows the embedding rule (not decayed), even though it also serves as the LM head.

use std::collections::{BTreeMap, HashMap};

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::decoder::Model;
use crate::ops::Backend;
pub use crate::variant::ParamGroup;
use crate::variant::{Config, Variant};

/// Standard deviation of the normal init of linear layers and embeddings.
pub const INIT_STD: f64 = 0.02;
/// Learning-rate multiplier of the router group (paper: 1e-2 vs base 1e-3).
pub const ROUTER_LR_MULT: f64 = 10.0;

/// The optimizer group of parameter `name` of a `variant` model (see module docs).
pub fn param_group(variant: Variant, name: &str) -> ParamGroup {
    if let Some(g) = variant.def().param_group(name) {
        return g;
    }
    if is_norm(name) || name == "embed_tokens.weight" {
        ParamGroup::NoDecay
    } else {
        ParamGroup::Decay
    }
}

fn is_norm(name: &str) -> bool {
    name == "norm.weight" || name.ends_with("_norm.weight")
}

/// All Vars of `varmap` split by group, each list sorted by name.
pub fn param_groups(varmap: &VarMap, variant: Variant) -> BTreeMap<ParamGroup, Vec<(String, Var)>> {
    let mut out: BTreeMap<ParamGroup, Vec<(String, Var)>> = BTreeMap::new();
    for (name, var) in sorted_vars(varmap) {
        out.entry(param_group(variant, &name))
            .or_default()
            .push((name, var));
    }
    out
}

/// (name, Var) pairs sorted by name (never rely on `VarMap`'s HashMap order).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"lime-bench/init/v1");
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

pub(crate) fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.gen::<f64>(); // (0, 1]
        let u2 = rng.gen::<f64>();
        let rad = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push(std * rad * a.cos());
        out.push(std * rad * a.sin());
    }
    out.truncate(n);
    out
}

/// The layer index l of a name `layers.{l}.…`.
pub fn layer_of(name: &str) -> Result<usize> {
    match name
        .strip_prefix("layers.")
        .and_then(|r| r.split('.').next())
    {
        Some(l) => l
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("no layer index in `{name}`"))),
        None => bail!("no layer index in `{name}`"),
    }
}

/// The initial value of parameter `name` with `shape` of a `variant` model for `seed`, as an f64
/// tensor on the host: the variant's rule if it has one for `name`, else the skeleton's.
pub fn init_tensor(variant: Variant, name: &str, shape: &Shape, seed: u64) -> Result<Tensor> {
    let mut rng = rng_for(seed, name);
    let vals = match variant.def().init(name, shape, &mut rng) {
        Some(vals) => vals?,
        None if name == "embed_tokens.weight" => normal(&mut rng, shape.elem_count(), INIT_STD),
        None if is_norm(name) => vec![1.0; shape.elem_count()],
        None if name.ends_with(".weight") => normal(&mut rng, shape.elem_count(), INIT_STD),
        None => bail!(
            "no init rule for parameter `{name}` of `{}`",
            variant.name()
        ),
    };
    if vals.len() != shape.elem_count() {
        bail!(
            "init of `{name}`: {} values for shape {shape:?}",
            vals.len()
        );
    }
    Tensor::from_vec(vals, shape.clone(), &Device::Cpu)
}

/// A `VarBuilder` backend that creates missing parameters with [`init_tensor`] and stores them as
/// Vars in a `VarMap`; existing Vars are returned as they are (shape-checked).
struct SeededBackend {
    varmap: VarMap,
    seed: u64,
    variant: Variant,
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                bail!("shape mismatch on {name}: {:?} <> {:?}", var.shape(), s);
            }
            return Ok(var.as_tensor().clone());
        }
        let t = init_tensor(self.variant, name, &s, self.seed)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => bail!("cannot find tensor {name} (its shape is needed to initialise it)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        data.contains_key(name)
    }
}

/// A `VarBuilder` that creates every missing parameter of a `variant` model deterministically
/// from `seed` (by name) and registers it as a trainable Var in `varmap`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    variant: Variant,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededBackend {
        varmap: varmap.clone(),
        seed,
        variant,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// Builds a model whose parameters are fresh Vars initialised from `seed` (see module docs), with
/// the default [`Backend`] (fused where it applies).
pub fn init_varmap(
    cfg: &Config,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(VarMap, Model)> {
    init_model(cfg, seed, dtype, device, Backend::default())
}

/// [`init_varmap`] with the backend chosen.
pub fn init_model(
    cfg: &Config,
    seed: u64,
    dtype: DType,
    device: &Device,
    backend: Backend,
) -> Result<(VarMap, Model)> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, cfg.variant, seed, dtype, device);
    let model = Model::new(cfg, vb, backend)?;
    Ok((varmap, model))
}

/// Total number of elements over all Vars.
pub fn count_params(varmap: &VarMap) -> usize {
    sorted_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// A copy of every Var, keyed by its checkpoint name (write it with `candle_core::safetensors::save`).
pub fn state_dict(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    sorted_vars(varmap)
        .into_iter()
        .map(|(k, v)| Ok((k, v.as_tensor().copy()?)))
        .collect()
}

/// Sets every Var from `tensors` (converted to the Var's dtype and device). Errors if a Var is
/// missing, a shape differs, or `tensors` holds names the model does not have.
pub fn load_state_dict(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let vars = sorted_vars(varmap);
    for (name, var) in &vars {
        let Some(t) = tensors.get(name) else {
            bail!("tensor `{name}` missing from weights")
        };
        if t.shape() != var.shape() {
            bail!(
                "shape mismatch on {name}: file {:?}, model {:?}",
                t.shape(),
                var.shape()
            );
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    if tensors.len() != vars.len() {
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| vars.iter().all(|(n, _)| n != *k))
            .collect();
        extra.sort();
        bail!("weights contain tensors the model does not have: {extra:?}");
    }
    Ok(())
}

/// Writes all Vars to a safetensors file at a path chosen by the caller.
pub fn save_weights<P: AsRef<std::path::Path>>(varmap: &VarMap, path: P) -> Result<()> {
    candle_core::safetensors::save(&state_dict(varmap)?, path)
}

/// Reads a safetensors file written by [`save_weights`] into the existing Vars (strict).
pub fn load_weights<P: AsRef<std::path::Path>>(varmap: &VarMap, path: P) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    load_state_dict(varmap, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_rules_by_name() {
        let lime = Variant::LIME;
        assert_eq!(
            param_group(lime, "layers.3.attn.router.w"),
            ParamGroup::Router
        );
        assert_eq!(
            param_group(lime, "layers.0.attn_norm.weight"),
            ParamGroup::NoDecay
        );
        assert_eq!(
            param_group(lime, "layers.1.mlp.w_down.weight"),
            ParamGroup::Decay
        );
        assert_eq!(
            param_group(lime, "embed_tokens.weight"),
            ParamGroup::NoDecay
        );
        assert_eq!(param_group(lime, "lm_head.weight"), ParamGroup::Decay);
        // A name no rule knows has no init.
        assert!(init_tensor(lime, "layers.0.attn.router.bias", &Shape::from((2, 2)), 0).is_err());
        // A router name of another variant is not llama's.
        assert!(init_tensor(
            Variant::LLAMA,
            "layers.1.attn.router.w",
            &Shape::from((2, 4)),
            0
        )
        .is_err());
    }

    #[test]
    fn router_init_block_structure() -> Result<()> {
        // l = 2, R = 3: (3, 9), identity in columns 6..9, the rest in (−b, b), b = sqrt(3/9).
        let w: Vec<Vec<f64>> = init_tensor(
            Variant::LIME,
            "layers.2.attn.router.w",
            &Shape::from((3, 9)),
            5,
        )?
        .to_vec2()?;
        let b = (3.0f64 / 9.0).sqrt();
        for (i, row) in w.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if j >= 6 {
                    assert_eq!(x, if j - 6 == i { 1.0 } else { 0.0 });
                } else {
                    assert!(x.abs() < b);
                }
            }
        }
        // Not a (R, (l+1)R) shape.
        assert!(init_tensor(
            Variant::LIME,
            "layers.2.attn.router.w",
            &Shape::from((3, 8)),
            5
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn normal_init_statistics() -> Result<()> {
        let v: Vec<f64> =
            init_tensor(Variant::LLAMA, "x.weight", &Shape::from(40_000), 1)?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 3.0 * INIT_STD / n.sqrt() * 2.0, "mean {mean}");
        assert!((std / INIT_STD - 1.0).abs() < 0.02, "std {std}");
        // Same (seed, name) ⇒ same values; another name ⇒ different values.
        let again: Vec<f64> =
            init_tensor(Variant::LLAMA, "x.weight", &Shape::from(40_000), 1)?.to_vec1()?;
        assert_eq!(v, again);
        let other: Vec<f64> =
            init_tensor(Variant::LLAMA, "y.weight", &Shape::from(40_000), 1)?.to_vec1()?;
        assert_ne!(v, other);
        Ok(())
    }
}
