//! DenseFormer (Pagliardini et al. 2024): a depth-weighted average (DWA) after every block.
//!
//! ```text
//! Y_0 = embed(ids);   for block i = 0..L−1:   Y_{i+1} = Block_i(X_i)      (X_0 = Y_0)
//!                                              X_{i+1} = Σ_{j=0}^{i+1} α_{i,j} · Y_j
//! logits = lm_head(norm(X_L))
//! ```
//!
//! Block_i is the unchanged llama block (its own residual included); α are scalars, init
//! α_{i,i+1} = 1 (the block just computed) and 0 otherwise, so at init X_{i+1} = Y_{i+1}: exactly
//! llama. The DWA after the last block feeds the final norm (the paper has a DWA after every
//! block, the last included).
//!
//! | name                 | shape  | init                    |
//! |----------------------|--------|-------------------------|
//! | `layers.{i}.dwa.alpha` | (i+2,) | zeros, last entry 1   |
//!
//! Parameters: Σ_{i=0}^{L−1} (i+2) = L(L+3)/2 — the paper's N(N+3)/2 with N = L blocks (its DWA
//! i has i+1 weights over the embedding and blocks 1..i, i = 1..N). Mixing is per token, so the
//! KV cache needs nothing extra. Optimizer: [`crate::ParamGroup::NoDecay`], base lr (no decay,
//! which would pull α_ii = 1 toward 0 and so away from the identity path). FLOPs: DWA i is (i+2)
//! MACs per element of x, T·D·L(L+3)/2 MACs per sequence.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::init::ParamGroup;
use crate::ops::Backend;
use crate::variant::{plain_kv, Config, Connection, ExtraFlops, Layers, Variant, VariantDef};

pub struct DenseFormer;

impl Variant {
    pub const DENSEFORMER: Variant = Variant::new(&DenseFormer);
}

impl VariantDef for DenseFormer {
    fn name(&self) -> &'static str {
        "denseformer"
    }
    fn summary(&self) -> &'static str {
        "DenseFormer (Pagliardini et al. 2024), 1x1 (no dilation, no period): depth-weighted average of all earlier block outputs after every block"
    }
    fn build(&self, cfg: &Config, vb: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        let dwa = (0..cfg.n_layers)
            .map(|l| DepthWeightedAverage::new(l, vb.pp("layers").pp(l).pp("dwa")))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Dense(dwa)))
    }
    fn init(&self, name: &str, shape: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        name.ends_with(".dwa.alpha").then(|| {
            let n = shape.elem_count();
            let mut w = vec![0.0; n];
            w[n - 1] = 1.0; // α_{i,i+1} = 1: the block just computed
            Ok(w)
        })
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        name.ends_with(".dwa.alpha").then_some(ParamGroup::NoDecay)
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        let l = cfg.n_layers as i64;
        l * (l + 3) / 2
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let l = cfg.n_layers as u64;
        ExtraFlops {
            depth: per_mac(mode) * (seq_len * cfg.d_model) as u64 * (l * (l + 3) / 2),
            ..ExtraFlops::default()
        }
    }
}

/// The DWAs after every block.
#[derive(Debug)]
struct Dense(Vec<DepthWeightedAverage>);

impl Connection for Dense {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        let mut ys = vec![x.clone()]; // Y_0 ..= Y_{l+1}, each (B,T,D)
        for (l, dwa) in self.0.iter().enumerate() {
            ys.push(net.block(l, &x, &mut plain_kv)?);
            x = dwa.forward(&ys)?; // Σ_j α_lj Y_j (B,T,D)
            net.record(&x);
        }
        Ok(x)
    }

    /// α of every DWA, each (l+2,).
    fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        Ok(self.0.iter().map(|a| a.alpha.clone()).collect())
    }
}

/// The DWA after one block.
#[derive(Clone, Debug)]
pub struct DepthWeightedAverage {
    /// α (i+2,) over Y_0 ..= Y_{i+1}.
    alpha: Tensor,
}

impl DepthWeightedAverage {
    pub fn new(layer: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            alpha: vb.get(layer + 2, "alpha")?,
        })
    }

    /// `ys` = [Y_0, …, Y_{i+1}], each (B,T,D) → Σ_j α_j Y_j (B,T,D): one (1, i+2) @ (i+2, B·T·D)
    /// product.
    pub fn forward(&self, ys: &[Tensor]) -> Result<Tensor> {
        let shape = ys[0].shape().clone();
        let k = ys.len();
        let stacked = Tensor::stack(ys, 0)?.reshape((k, shape.elem_count()))?; // (i+2, B·T·D)
        self.alpha
            .reshape((1, k))?
            .matmul(&stacked)? // (1, B·T·D)
            .reshape(shape)
    }
}
