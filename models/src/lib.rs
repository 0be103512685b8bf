//! models — candle implementations of the LLaMA-style baseline ([`llama`]) and LIMe ([`lime`]:
//! `lime` and our `lime-dynamic` extension), with deterministic name-keyed initialisation
//! ([`init`]).
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
pub mod config;
pub mod fused;
pub mod init;
pub mod lime;
pub mod llama;

pub use config::{Config, Variant};
pub use init::{
    count_params, init_tensor, init_varmap, load_state_dict, load_weights, param_group,
    param_groups, param_kind, save_weights, seeded_var_builder, sorted_vars, state_dict,
    ParamGroup, ParamKind, INIT_STD, ROUTER_LR_MULT,
};
pub use lime::{LimeBuffer, LimeRouter};
pub use llama::{validate_config, KvCache, Model, Trace};
