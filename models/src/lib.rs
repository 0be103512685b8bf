//! models — candle implementations of the LLaMA-style baseline ([`llama`]), LIMe ([`lime`]:
//! `lime`, our `lime-dynamic` extension and the `lime-*` router ablations) and the rivals:
//! DenseFormer ([`denseformer`]), Hyper-Connections ([`hyper`]) and ResFormer ([`resformer`]),
//! with deterministic name-keyed initialisation ([`init`]). [`Variant::ALL`] lists every model.
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

/// Version of the models' numerics: initialisation, every variant's forward and backward, the
/// fused kernels. Recorded in every run spec (so a bump changes every run id and finished runs
/// from older code are never reused). `tests/numerics.rs` pins a fingerprint of each variant's
/// loss and gradients on fixed weights and fails with "bump models::NUMERICS_VERSION" when the
/// numbers move; bump it in the same commit as the change that moved them.
pub const NUMERICS_VERSION: u32 = 1;

pub mod config;
pub mod denseformer;
pub mod fused;
pub mod hyper;
pub mod init;
pub mod lime;
pub mod llama;
pub mod resformer;

pub use config::{Config, LimeWindow, Variant};
pub use init::{
    count_params, init_tensor, init_varmap, load_state_dict, load_weights, param_group,
    param_groups, param_kind, save_weights, seeded_var_builder, sorted_vars, state_dict,
    ParamGroup, ParamKind, INIT_STD, ROUTER_LR_MULT,
};
pub use lime::{LimeBuffer, LimeRouter};
pub use llama::{validate_config, KvCache, Model, Trace};
