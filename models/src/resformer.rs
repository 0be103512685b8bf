//! ResFormer (Value Residual Learning, Zhou et al. 2024): every layer l ≥ 1 mixes the values of
//! layer 0 into its own, before attention:
//!
//! ```text
//! V_l ← λ·V_0 + (1 − λ)·V_l,     λ = RESFORMER_LAMBDA = ½   (per token, kv head and channel)
//! ```
//!
//! V_0 and V_l are the per-kv-head values (B, R, T, d_h) right after `v_proj` (values carry no
//! RoPE). No new parameters. λ = 0 is exactly llama (tested with a [`ResFormer`] of λ = 0 through
//! [`crate::Model::with_def`]). FLOPs: the fixed ½/½ mix is elementwise (fvcore: 3·T·R·d_h per
//! layer l ≥ 1).
//!
//! **KV cache:** the cache stores the mixed values; the mixing reads V_0 of the *same* token,
//! which layer 0 computes in the same forward pass, so incremental decoding needs nothing extra.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::accounting::FlopMode;
use crate::ops::Backend;
use crate::variant::{plain_kv, Config, Connection, ExtraFlops, Layers, Variant, VariantDef};

/// The paper's fixed mixing weight of V_0 (½V_0 + ½V_l).
pub const RESFORMER_LAMBDA: f64 = 0.5;

/// ResFormer with mixing weight λ of V_0.
#[derive(Clone, Copy, Debug)]
pub struct ResFormer {
    pub lambda: f64,
}

impl Variant {
    pub const RESFORMER: Variant = Variant::new(&ResFormer {
        lambda: RESFORMER_LAMBDA,
    });
}

impl VariantDef for ResFormer {
    fn name(&self) -> &'static str {
        "resformer"
    }
    fn summary(&self) -> &'static str {
        "ResFormer (Zhou et al. 2024): value residual V_l <- V_0/2 + V_l/2 for l >= 1"
    }
    fn build(&self, _: &Config, _: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        Ok(Arc::new(*self))
    }
    fn packable(&self) -> bool {
        true // no parameters; the mix is per row
    }
    fn extra_params(&self, _: &Config) -> i64 {
        0
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let elementwise = match mode {
            FlopMode::Causal | FlopMode::Full => 0,
            FlopMode::Fvcore => {
                let (t, r, dh) = (seq_len, cfg.n_kv_heads, cfg.head_dim());
                cfg.n_layers.saturating_sub(1) * 3 * t * r * dh
            }
        };
        ExtraFlops {
            elementwise: elementwise as i64,
            ..ExtraFlops::default()
        }
    }
}

impl Connection for ResFormer {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        let mut v0: Option<Tensor> = None; // V_0 (B,R,T,d_h)
        for l in 0..net.len() {
            let mut route = |k, v| {
                let (k, v) = plain_kv(k, v)?; // (B,R,T,d_h) each
                let v = match &v0 {
                    None => {
                        v0 = Some(v.clone()); // layer 0 keeps V_0
                        v
                    }
                    Some(v0) => {
                        (v0.affine(self.lambda, 0.0)? + v.affine(1.0 - self.lambda, 0.0)?)?
                    }
                };
                Ok((k, v))
            };
            x = net.block(l, &x, &mut route)?; // (B,T,D)
            net.record(&x);
        }
        Ok(x)
    }
}
