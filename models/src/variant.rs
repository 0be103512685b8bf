//! What a model variant is: one [`VariantDef`] (its name, parameters and their init, its
//! optimizer groups, its parameter and FLOP counts, and the [`Connection`] it builds into the
//! shared decoder of [`crate::llama`]) behind a copyable handle, [`Variant`].
//!
//! Every built-in variant lives in its own file (`llama.rs`, `lime.rs`, `lime_dynamic.rs`,
//! `lime_ablations.rs`, `denseformer.rs`, `hyper.rs`, `resformer.rs`, `attnres.rs`,
//! `muddformer.rs`, `mhc.rs`), which declares its
//! `Variant::NAME` constant; [`Variant::ALL`] (in `registry.rs`) is the list of them. A variant
//! defined outside this crate (a researcher's experiment, a test) is made known with
//! [`register`], after which it is found by name like the built-ins. Nothing else in the crate
//! matches on variants.
//!
//! The contract a variant keeps (tested for every built-in, and for the toy variant of
//! `tests/models_variant.rs`): [`VariantDef::extra_params`] equals the element count of the
//! parameters its connection creates beyond llama's; every parameter it creates has an init rule
//! in [`VariantDef::init`]; its parameter names are under `layers.{l}.` and do not collide with
//! the skeleton's (`*.weight` of projections and norms).

use std::fmt;
use std::sync::{Arc, RwLock};

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::accounting::FlopMode;
use crate::config::Config;
use crate::init::ParamGroup;
use crate::llama::{Blocks, Pass};
use crate::ops::Backend;

/// Where a variant stands in the suite's comparisons: the harness's claims draw their families
/// from it (the rivals against llama, the router ablations against LIMe), so a new built-in joins
/// them by declaring it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The LLaMA-style baseline every rival is compared with.
    Baseline,
    /// Full static LIMe, the paper's model.
    Lime,
    /// One of the LIMe paper's router ablations (or its dynamic router), compared with LIMe.
    LimeAblation,
    /// Another paper's depth connection, compared with the baseline (the default).
    Rival,
}

/// A setting a variant declares beyond the shared shape: a `--model-set key=value` only the
/// variants that declare the key read (kept in [`Config::settings`] where it differs from its
/// default, so a run at the defaults keeps the id it had before the setting existed).
#[derive(Clone, Copy, Debug)]
pub struct VariantSetting {
    pub key: &'static str,
    pub default: usize,
    /// Smallest accepted value.
    pub min: usize,
    pub about: &'static str,
}

/// A variant's FLOPs beyond llama's for one sequence (see `accounting.rs` for the conventions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraFlops {
    /// Mixing of the attention inputs across depth (LIMe's router).
    pub router: u64,
    /// Residual-stream connections (DenseFormer's DWA, Hyper-Connections).
    pub depth: u64,
    /// Elementwise ops; counted in [`FlopMode::Fvcore`] only, and may be negative (HC's blocks
    /// have no residual adds).
    pub elementwise: i64,
}

/// One model variant (see the module docs). Implementations are plain `static` values.
pub trait VariantDef: std::any::Any + Send + Sync {
    /// The name on the command line, in configs and run specs (`lime`, `lime-last-2`, ...).
    fn name(&self) -> &'static str;
    /// One line for `harness models` and error messages.
    fn summary(&self) -> &'static str;
    /// Builds the variant's depth connection and creates its parameters (`vb` is the model's
    /// root, so names read `layers.{l}.…`).
    fn build(&self, cfg: &Config, vb: &VarBuilder, backend: Backend)
        -> Result<Arc<dyn Connection>>;
    /// Whether the connection runs packed ([`crate::pack`]): built from a var builder that
    /// hands out every parameter with a leading run axis (P, …) and fed run-major rows
    /// (P·B, T, D), it applies run p's parameters to run p's rows. `false` (the default) makes
    /// the harness train the variant's runs one after another.
    fn packable(&self) -> bool {
        false
    }
    /// Its own settings (none by default).
    fn settings(&self) -> &'static [VariantSetting] {
        &[]
    }
    /// Its place in the suite's comparisons ([`Role::Rival`] unless it says otherwise).
    fn role(&self) -> Role {
        Role::Rival
    }
    /// Whether the blocks' RMSNorms carry a learned gain (Hyper-Connections' do not).
    fn norm_gain(&self) -> bool {
        true
    }
    /// The initial values of one of this variant's parameters, drawn from `rng` (already keyed by
    /// seed and name); `None` when `name` is not one of its parameters.
    fn init(&self, _name: &str, _shape: &Shape, _rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        None
    }
    /// The optimizer group of one of its parameters; `None` leaves the skeleton's rule.
    fn param_group(&self, _name: &str) -> Option<ParamGroup> {
        None
    }
    /// Parameters beyond llama's with the same `cfg` (negative where it removes some).
    fn extra_params(&self, cfg: &Config) -> i64;
    /// Forward FLOPs beyond llama's for one sequence of `seq_len` tokens.
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops;
}

/// What a variant builds into a model: the loop over the decoder blocks, and its mixing weights
/// for diagnostics.
pub trait Connection: fmt::Debug + Send + Sync {
    /// Runs the blocks of `net` over the embedding output `x` (B,T,D) and returns the input of
    /// the final norm (B,T,D). Each block's output is recorded with [`Pass::record`].
    fn run(&self, net: &Blocks, x: Tensor, pass: &mut Pass) -> Result<Tensor>;
    /// Heatmap rows (the paper's Figure 5 for LIMe): for each layer with mixing weights, the
    /// share of each source layer. Empty where the variant has none.
    fn heatmap(&self, _cfg: &Config) -> Result<Vec<Vec<f64>>> {
        Ok(Vec::new())
    }
    /// The static mixing matrices per layer (LIMe's W_l as dense (R, (l+1)·R) matrices,
    /// DenseFormer's α), for diagnostics and tests.
    fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// A model variant: a copyable handle on its [`VariantDef`], compared, hashed and serialised by
/// name.
#[derive(Clone, Copy)]
pub struct Variant(&'static dyn VariantDef);

impl Variant {
    pub const fn new(def: &'static dyn VariantDef) -> Self {
        Self(def)
    }

    pub fn def(self) -> &'static dyn VariantDef {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// A built-in ([`Variant::ALL`]) or [`register`]ed variant by name.
    pub fn from_name(s: &str) -> Option<Variant> {
        Variant::all().into_iter().find(|v| v.name() == s)
    }

    /// The built-in variants of one role, in registry order.
    pub fn with_role(role: Role) -> Vec<Variant> {
        Variant::ALL
            .iter()
            .copied()
            .filter(|v| v.def().role() == role)
            .collect()
    }

    /// Every known variant: the built-ins, then the registered ones in registration order.
    pub fn all() -> Vec<Variant> {
        let extra = registered().read().unwrap_or_else(|e| e.into_inner());
        Variant::ALL.iter().chain(extra.iter()).copied().collect()
    }
}

fn registered() -> &'static RwLock<Vec<Variant>> {
    static EXTRA: RwLock<Vec<Variant>> = RwLock::new(Vec::new());
    &EXTRA
}

/// Makes a variant defined outside this crate known by name (to [`Variant::from_name`], configs
/// and the harness). Registering the same definition (same name and type) twice is a no-op;
/// another variant under a taken name is an error.
pub fn register(v: Variant) -> Result<()> {
    let mut extra = registered().write().unwrap_or_else(|e| e.into_inner());
    match Variant::ALL
        .iter()
        .chain(extra.iter())
        .find(|o| o.name() == v.name())
    {
        Some(o) if same_type(o.0, v.0) => Ok(()),
        Some(_) => candle_core::bail!("a variant named `{}` already exists", v.name()),
        None => {
            extra.push(v);
            Ok(())
        }
    }
}

fn same_type(a: &dyn VariantDef, b: &dyn VariantDef) -> bool {
    let (a, b): (&dyn std::any::Any, &dyn std::any::Any) = (a, b);
    a.type_id() == b.type_id()
}

impl PartialEq for Variant {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Variant {}

impl std::hash::Hash for Variant {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl fmt::Debug for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Variant {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Variant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Variant::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = Variant::all().iter().map(|v| v.name()).collect();
            serde::de::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                known.join(", ")
            ))
        })
    }
}
