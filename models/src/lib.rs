//! models — candle implementations of the LLaMA-style baseline ([`llama`]), LIMe ([`lime`]; our
//! [`lime_dynamic`] extension and the [`lime_ablations`]) and the rivals: DenseFormer
//! ([`denseformer`]), Hyper-Connections ([`hyper`]), ResFormer ([`resformer`]), Attention
//! Residuals ([`attnres`]), MUDDFormer ([`muddformer`]), mHC ([`mhc`]), Canon layers
//! ([`canon`]), DeepCrossAttention ([`dca`]) and LAuReL ([`laurel`]), with
//! deterministic name-keyed initialisation ([`init`]) and analytic counts ([`accounting`]).
//!
//! Design: one shared decoder skeleton ([`decoder`]) and, per variant, one file holding everything
//! that variant is — its parameters and their init, its optimizer groups, its parameter and FLOP
//! counts, and the [`Connection`] that drives the skeleton's blocks — behind the [`VariantDef`]
//! trait ([`variant`]: the contract, with the [`Config`] both sides read). [`Variant::ALL`]
//! (`registry.rs`) lists the built-ins, one line each; nothing else matches on variants.
//!
//! Imports flow one way (`tests/layering.rs`): `fused` ← `ops` ← `variant` ← `decoder` ←
//! `init`, `accounting`, `pack` ← the variants' files ← `registry`. The numerics come from [`ops`] in one [`Backend`] chosen when the model
//! is built: the composed candle reference or the fused f32 CPU kernels of [`fused`]. Runs of one
//! shape can be trained as one model ([`pack`]: a leading run axis on every parameter).
//!
//! ```ignore
//! let (varmap, model) = models::init_varmap(&cfg, seed, DType::F32, &Device::Cpu)?;
//! let logits = model.forward(&ids)?;                 // ids (B,T) u32 → (B,T,V)
//! let mut cache = models::KvCache::new(&cfg);
//! let step = model.forward_cached(&ids, &mut cache)?; // incremental decoding
//! ```
//!
//! The library does no file I/O of its own except [`save_weights`]/[`load_weights`], which write
//! and read a path chosen by the caller; prefer [`state_dict`]/[`load_state_dict`].
pub mod accounting;
pub mod attnres;
pub mod canon;
pub mod dca;

/// Version of the models' numerics: initialisation, every variant's forward and backward, the
/// fused kernels. Recorded in every run spec (so a bump changes every run id and finished runs
/// from older code are never reused). `tests/numerics.rs` pins a fingerprint of each variant's
/// loss and gradients on fixed weights and fails with "bump models::NUMERICS_VERSION" when the
/// numbers move; bump it in the same commit as the change that moved them.
pub const NUMERICS_VERSION: u32 = 1;

pub mod decoder;
pub mod denseformer;
pub mod fused;
pub mod hyper;
pub mod init;
pub mod laurel;
pub mod lime;
pub mod lime_ablations;
pub mod lime_dynamic;
pub mod lime_family;
pub mod llama;
pub mod mhc;
pub mod muddformer;
pub mod ops;
pub mod pack;
mod registry;
pub mod resformer;
pub mod variant;

pub use decoder::{validate_config, Blocks, KvCache, Model, Trace};
pub use init::{
    count_params, init_model, init_tensor, init_varmap, load_state_dict, load_weights, param_group,
    param_groups, save_weights, seeded_var_builder, sorted_vars, state_dict, INIT_STD,
    ROUTER_LR_MULT,
};
pub use ops::Backend;
pub use registry::register;
pub use variant::{
    plain_gate_up, plain_kv, plain_q, Config, Connection, ExtraFlops, FlopMode, GateUpRoute,
    KvRoute, Layers, Mixing, ParamGroup, QRoute, Role, Variant, VariantDef, VariantSetting,
};
