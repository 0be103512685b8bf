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
//! KV cache needs nothing extra. Optimizer: [`crate::ParamGroup::NoDecay`], base lr.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

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

    /// α (i+2,).
    pub fn alpha(&self) -> &Tensor {
        &self.alpha
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
