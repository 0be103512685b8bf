//! ResFormer (Value Residual Learning, Zhou et al. 2024): every layer l ≥ 1 mixes the values of
//! layer 0 into its own, before attention:
//!
//! ```text
//! V_l ← λ·V_0 + (1 − λ)·V_l,     λ = RESFORMER_LAMBDA = ½   (per token, kv head and channel)
//! ```
//!
//! V_0 and V_l are the per-kv-head values (B, R, T, d_h) right after `v_proj` (values carry no
//! RoPE). No new parameters. λ = 0 is exactly llama; [`crate::Model::with_value_residual`] sets λ
//! (for the reduction test and for ablations).
//!
//! **KV cache:** the cache stores the mixed values; the mixing reads V_0 of the *same* token,
//! which layer 0 computes in the same forward pass, so incremental decoding needs nothing extra.

use candle_core::{Result, Tensor};

/// The paper's fixed mixing weight of V_0 (½V_0 + ½V_l).
pub const RESFORMER_LAMBDA: f64 = 0.5;

/// What one attention layer does with its values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueResidual {
    /// Not ResFormer.
    Off,
    /// ResFormer layer 0: keep V_0 for the later layers.
    Store,
    /// ResFormer layer l ≥ 1: V_l ← λ·V_0 + (1 − λ)·V_l.
    Mix(f64),
}

impl ValueResidual {
    /// Applies the value residual to `v` (B,R,T,d_h); `v0` is the per-pass V_0 slot.
    pub fn apply(self, v: Tensor, v0: &mut Option<Tensor>) -> Result<Tensor> {
        match self {
            ValueResidual::Off => Ok(v),
            ValueResidual::Store => {
                *v0 = Some(v.clone());
                Ok(v)
            }
            ValueResidual::Mix(lambda) => match v0 {
                Some(v0) => v0.affine(lambda, 0.0)? + v.affine(1.0 - lambda, 0.0)?,
                None => candle_core::bail!("resformer: V_0 missing (layer 0 did not run)"),
            },
        }
    }
}
