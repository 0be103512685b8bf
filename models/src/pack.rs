//! Packed models: P runs of one shape (other seeds, other learning rates) trained as one model.
//!
//! Every parameter of a packed model carries a leading run axis — `q_proj.weight` is (P, out, in)
//! where the run's own is (out, in) — and activations are run-major rows: the input ids are the
//! P runs' batches stacked, (P·B, T), so rows `p·B..(p+1)·B` belong to run p. Only the modules
//! that hold parameters know about the axis:
//!
//! | module            | packed                                                          |
//! |-------------------|-----------------------------------------------------------------|
//! | projections       | one batched matmul (P, rows, in) @ (P, in, out)                  |
//! | RMSNorm           | the shared normalisation, then run p's gain on run p's rows      |
//! | embedding         | run p's ids offset by p·V into the (P·V, D) table                |
//! | LM head           | per run ([`Model::lm_head_of`]: each run scores its own rows)    |
//! | connection        | the variant's ([`crate::VariantDef::packable`]; LIMe: (P,R,S))   |
//!
//! Attention, RoPE, SwiGLU and the residual stream act per row and need nothing. The runs never
//! mix: the gradient of Σ_p loss_p with respect to run p's slice is run p's own gradient (tested
//! against the unpacked runs, `tests/models_pack.rs`), and a non-finite run cannot reach another
//! run's slices.
//!
//! A packed model is built from the runs' ordinary weight maps ([`stack`]) and gives each run's
//! weights back in the ordinary names and shapes ([`member`]), so checkpoints, evaluation and
//! saved weights are those of unpacked runs.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::decoder::Model;
use crate::ops::Backend;
use crate::variant::Config;

/// Stacks the runs' weights (each the full name → tensor map of one ordinary model of the same
/// config) into one map of (P, …) Vars. With one run the Vars keep the run's own shapes, so a
/// pack of one is an ordinary model.
pub fn stack(runs: &[HashMap<String, Tensor>]) -> Result<VarMap> {
    let Some(first) = runs.first() else {
        bail!("a pack needs at least one run")
    };
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for name in first.keys() {
            let parts = runs
                .iter()
                .map(|r| match r.get(name) {
                    Some(t) if t.shape() == first[name].shape() => Ok(t),
                    Some(t) => bail!(
                        "pack: {name} is {:?} in one run, {:?} in another",
                        t.shape(),
                        first[name].shape()
                    ),
                    None => bail!("pack: a run lacks {name}"),
                })
                .collect::<Result<Vec<_>>>()?;
            let t = match parts.len() {
                1 => parts[0].copy()?,
                _ => Tensor::stack(&parts, 0)?, // (P, …)
            };
            data.insert(name.clone(), Var::from_tensor(&t)?);
        }
        if let Some(r) = runs.iter().find(|r| r.len() != first.len()) {
            bail!("pack: runs with {} and {} parameters", r.len(), first.len());
        }
    }
    Ok(varmap)
}

/// The model over `varmap` (from [`stack`]) of `pack` runs of `cfg`.
pub fn model(cfg: &Config, varmap: &VarMap, pack: usize, backend: Backend) -> Result<Model> {
    let (dtype, dev) = {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.values().next() {
            Some(v) => (v.dtype(), v.device().clone()),
            None => bail!("pack: no parameters"),
        }
    };
    let vb = VarBuilder::from_backend(
        Box::new(Packed {
            varmap: varmap.clone(),
            pack,
        }),
        dtype,
        dev,
    );
    let model = Model::new(cfg, vb, backend)?;
    if model.pack() != pack {
        bail!("pack: built {} runs, expected {pack}", model.pack());
    }
    Ok(model)
}

/// Run p's weights out of a packed `varmap` of `pack` runs, in the run's own names and shapes
/// (copies).
pub fn member(varmap: &VarMap, pack: usize, p: usize) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    data.iter()
        .map(|(k, v)| {
            let t = match pack {
                1 => v.as_tensor().copy()?,
                _ => v.as_tensor().get(p)?.copy()?,
            };
            Ok((k.clone(), t))
        })
        .collect()
}

/// Run p's slice of one packed tensor (the tensor itself when `pack` is 1), a view.
pub fn slice(t: &Tensor, pack: usize, p: usize) -> Result<Tensor> {
    match pack {
        1 => Ok(t.clone()),
        _ => t.get(p),
    }
}

/// Hands out the packed Vars, checking each is (P, shape the model asks for).
struct Packed {
    varmap: VarMap,
    pack: usize,
}

impl Packed {
    fn shape_of(&self, s: &Shape) -> Shape {
        match self.pack {
            1 => s.clone(),
            p => {
                let mut dims = vec![p];
                dims.extend_from_slice(s.dims());
                Shape::from(dims)
            }
        }
    }
}

impl SimpleBackend for Packed {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        _dtype: DType,
        _dev: &Device,
    ) -> Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let Some(var) = data.get(name) else {
            bail!("pack: no parameter {name}")
        };
        let want = self.shape_of(&s);
        if var.shape() != &want {
            bail!("pack: {name} is {:?}, expected {want:?}", var.shape());
        }
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => bail!("pack: no parameter {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        data.contains_key(name)
    }
}
