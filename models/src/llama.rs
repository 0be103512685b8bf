//! `llama`, the baseline: the plain residual loop `x_{l+1} = Block_l(x_l)` over the shared decoder
//! (`decoder.rs`), nothing added. Every other variant is measured against it.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::ops::Backend;
use crate::variant::{
    plain_kv, Config, Connection, ExtraFlops, FlopMode, Layers, ParamGroup, Role, Variant,
    VariantDef,
};

/// `llama`: `x_{l+1} = Block_l(x_l)`.
pub struct Llama;

impl Variant {
    pub const LLAMA: Variant = Variant::new(&Llama);
}

/// The plain residual stream (llama's connection).
#[derive(Debug)]
pub struct Residual;

impl Connection for Residual {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        for l in 0..net.len() {
            x = net.block(l, &x, &mut plain_kv)?; // (B,T,D)
            net.record(&x);
        }
        Ok(x)
    }
}

impl VariantDef for Llama {
    fn role(&self) -> Role {
        Role::Baseline
    }
    fn name(&self) -> &'static str {
        "llama"
    }
    fn summary(&self) -> &'static str {
        "baseline: pre-norm decoder, RoPE attention, SwiGLU MLP"
    }
    fn build(&self, _: &Config, _: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        Ok(Arc::new(Residual))
    }
    fn packable(&self) -> bool {
        true // no parameters of its own
    }
    fn init(&self, _: &str, _: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        None
    }
    fn param_group(&self, _: &str) -> Option<ParamGroup> {
        None
    }
    fn extra_params(&self, _: &Config) -> i64 {
        0
    }
    fn extra_flops(&self, _: &Config, _: usize, _: FlopMode) -> ExtraFlops {
        ExtraFlops::default()
    }
}
