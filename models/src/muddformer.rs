//! MUDDFormer (Xiao et al. 2025, arXiv 2502.12170; code Caiyun-AI/MUDDFormer): MUltiway Dynamic
//! Dense connections. After every block a small per-position MLP on the block's output produces,
//! for each of C = 4 streams (query, key, value, residual), weights over all hidden states so far
//! X_0 … X_{i+1}; the next block takes its q, k and v inputs and its residual from those four
//! aggregates. After the last block one aggregate (C = 1) feeds the final norm.
//!
//! ```text
//! X_0 = embed(ids)                                                  (B,T,D)
//! block 0:   X_1 = Block_0(X_0)                                     (the llama block)
//! after block i (i = 0 … L−1), n = i+2 sources, C_i = 4 (C_{L−1} = 1):
//!   A_i  = W2_i · GELU(W1_i · RMSNorm(X_{i+1})) + a_i              (B,T,C_i,n)  (RMSNorm: no gain)
//!   X̄_{i,c} = Σ_j A_i[c, j] · X_j                                  (B,T,D), c ∈ {q, k, v, r}
//! block i+1 (i+1 ≤ L−1), the multiway block:
//!   h    = X̄_r + Attn_{i+1}(q ← attn_norm(X̄_q), k ← k_norm(X̄_k), v ← v_norm(X̄_v))
//!   X_{i+2} = h + MLP_{i+1}(mlp_norm(h))
//! final:     x_L = X̄_{L−1,0} → final norm → LM head
//! ```
//!
//! Shapes: W1_i (H_i, D), W2_i (C_i·n, H_i), a_i (C_i, n) with the hidden width
//! H_i = round64(C_i · n · e_i), round64(m) = (⌊m/64⌋ + 1)·64 (the authors' rounding, always up
//! by at least one), e_i = 1, and e_{L−1} = 4 for the last layer (`expand_last`). Blocks i ≥ 1 have
//! separate RMSNorms (with gain) for the q, k and v inputs (`sepln`): the skeleton's `attn_norm`
//! serves the queries, `attn_k_norm`/`attn_v_norm` are this variant's.
//!
//! Init (the authors' JAX training code, `llama2.py`): W1 ~ N(0, 1/D) (variance scaling 1.0,
//! fan-in, normal), W2 = 0, a_i = [0 … 0 1] in every stream ("current only": X_{i+1}), the new
//! norm gains 1. So at init every stream is X_{i+1}, exactly the llama residual stream.
//! Optimizer: W1, W2 decayed (matrices; the authors' MaxText AdamW masks nothing), a_i and the
//! norm gains not decayed (as every vector/gain here), base lr.
//!
//! | name                                   | shape         | init           |
//! |----------------------------------------|---------------|----------------|
//! | `layers.{i}.mudd.dynamic_w1`           | (H_i, D)      | N(0, 1/D)      |
//! | `layers.{i}.mudd.dynamic_w2`           | (C_i·(i+2), H_i) | 0           |
//! | `layers.{i}.mudd.static_bias`          | (C_i, i+2)    | e_{i+1} per row |
//! | `layers.{l}.attn_k_norm.weight`, l ≥ 1 | (D,)          | 1              |
//! | `layers.{l}.attn_v_norm.weight`, l ≥ 1 | (D,)          | 1              |
//!
//! Parameters: Σ_i [H_i·D + C_i(i+2)·H_i + C_i(i+2)] + 2(L−1)·D.
//!
//! **Deviations (documented):** GELU is the exact (erf) GELU of the authors' PyTorch port (their
//! JAX code uses flax's default tanh approximation). The authors' optional extras that are not
//! part of the method — QK-norm (`use_qk_norm`), the `mudd_prenorm`/`mudd_postnorm` options — are
//! off, as in their default configuration. The DA norm's eps is `norm_eps`.
//!
//! **Neutral setting (exact reduction):** W2 = 0, a_i = e_{i+1} and `attn_k_norm` =
//! `attn_v_norm` = `attn_norm` gains: every aggregate is X_{i+1} and the multiway block is the
//! llama block. The init is this setting, so MUDDFormer at init equals llama (tested, eps > 0).
//!
//! FLOPs (causal/full, 2 per MAC; per DA i and token): W1 D·H_i, W2 H_i·C_i(i+2), aggregation
//! C_i(i+2)·D, all in `depth`. fvcore (our extension of the Table 8 inventory, not checked
//! against a trace): the gain-free RMSNorm 4·T·D + 7·T, the bias add T·C_i(i+2), and the two
//! extra input norms of every multiway block 2·(5·T·D + 7·T).
//!
//! Mixing is per token (the hidden states of a token's own column), so the KV cache needs nothing
//! extra; residual memory is ×(L+1) hidden states.

use std::sync::Arc;

use candle_core::{Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::decoder::{Proj, RmsNorm};
use crate::init::{normal, ParamGroup};
use crate::ops::Backend;
use crate::variant::{plain_kv, Config, Connection, ExtraFlops, Layers, Variant, VariantDef};

/// Streams of a multiway aggregate: query, key, value, residual.
pub const STREAMS: usize = 4;

pub struct MuddFormer;

impl Variant {
    pub const MUDDFORMER: Variant = Variant::new(&MuddFormer);
}

/// The authors' rounding of the DA hidden width: (⌊m/64⌋ + 1)·64.
pub fn round64(m: usize) -> usize {
    (m / 64 + 1) * 64
}

/// (C_i, n_i = i+2, H_i) of the DA after block i of an `n_layers` model.
pub fn da_shape(i: usize, n_layers: usize) -> (usize, usize, usize) {
    let last = i + 1 == n_layers;
    let c = if last { 1 } else { STREAMS };
    let expand = if last { 4 } else { 1 };
    (c, i + 2, round64(c * (i + 2) * expand))
}

/// The dynamic dense connection after one block.
#[derive(Clone, Debug)]
struct DenseAggregation {
    w1: Proj,
    w2: Proj,
    /// a_i (C, n).
    bias: Tensor,
    c: usize,
    n: usize,
    eps: f64,
}

impl DenseAggregation {
    fn new(cfg: &Config, i: usize, vb: VarBuilder) -> Result<Self> {
        let (c, n, hid) = da_shape(i, cfg.n_layers);
        Ok(Self {
            w1: Proj::new(vb.get((hid, cfg.d_model), "dynamic_w1")?),
            w2: Proj::new(vb.get((c * n, hid), "dynamic_w2")?),
            bias: vb.get((c, n), "static_bias")?,
            c,
            n,
            eps: cfg.norm_eps,
        })
    }

    /// `hids` = [X_0 … X_{i+1}], each (B,T,D) → the C aggregates (B,T,C,D), and the weights
    /// A_i (B,T,C,n).
    fn forward(&self, hids: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let x = hids.last().expect("n ≥ 2");
        let (b, t, _) = x.dims3()?;
        let ms = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?; // (B,T,1)
        let xn = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?; // gain-free RMSNorm
        let dw = self.w2.forward(&self.w1.forward(&xn)?.gelu_erf()?)?; // (B,T,C·n)
        let dw = dw
            .reshape((b, t, self.c, self.n))?
            .broadcast_add(&self.bias)?; // (B,T,C,n)
        let stacked = Tensor::stack(hids, 2)?; // (B,T,n,D)
        Ok((dw.matmul(&stacked)?, dw)) // (B,T,C,D)
    }
}

#[derive(Debug)]
struct Multiway {
    da: Vec<DenseAggregation>,
    /// k_norm, v_norm of blocks 1 … L−1 (index l−1).
    kv_norms: Vec<(RmsNorm, RmsNorm)>,
}

impl Connection for Multiway {
    fn run(&self, net: &mut dyn Layers, x: Tensor) -> Result<Tensor> {
        let mut hids = vec![x.clone()]; // X_0 …
        let mut y = net.block(0, &x, &mut plain_kv)?; // X_1
        for (i, da) in self.da.iter().enumerate() {
            hids.push(y);
            net.record(hids.last().expect("pushed"));
            let (agg, dw) = da.forward(&hids)?; // (B,T,C,D), (B,T,C,n)
            if net.tracing() {
                let last = i + 1 == net.len();
                for c in 0..da.c {
                    net.record_mixing(&dw.narrow(2, c, 1)?.squeeze(2)?, &|| {
                        let consumer = match last {
                            true => "out".to_string(),
                            false => format!("B{}.{}", i + 1, ["q", "k", "v", "r"][c]),
                        };
                        let sources = std::iter::once("emb".to_string())
                            .chain((0..=i).map(|j| format!("B{j}")))
                            .collect();
                        (consumer, sources)
                    });
                }
            }
            let s = |c: usize| agg.narrow(2, c, 1).and_then(|a| a.squeeze(2)); // (B,T,D)
            if i + 1 == net.len() {
                return s(0); // the final aggregate (C = 1)
            }
            let l = i + 1;
            let (k_norm, v_norm) = &self.kv_norms[i];
            let hq = net.attn_norm(l, &s(0)?)?;
            let hk = k_norm.forward(&s(1)?)?;
            let hv = v_norm.forward(&s(2)?)?;
            let h = (s(3)? + net.attn_qkv(l, [&hq, &hk, &hv], &mut plain_kv)?)?;
            y = (&h + net.mlp(l, &h)?)?; // X_{l+1}
        }
        unreachable!("the last DA returns")
    }
}

fn is_dense(name: &str) -> bool {
    name.contains(".mudd.")
}

impl VariantDef for MuddFormer {
    fn name(&self) -> &'static str {
        "muddformer"
    }
    fn summary(&self) -> &'static str {
        "MUDDFormer (Xiao et al. 2025): dynamic dense q/k/v/residual aggregates of all hidden states"
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        let layer = |l: usize| vb.pp("layers").pp(l);
        let da = (0..cfg.n_layers)
            .map(|i| DenseAggregation::new(cfg, i, layer(i).pp("mudd")))
            .collect::<Result<_>>()?;
        let norm = |l: usize, name: &str| {
            RmsNorm::new(cfg.d_model, cfg.norm_eps, layer(l).pp(name), backend)
        };
        let kv_norms = (1..cfg.n_layers)
            .map(|l| Ok((norm(l, "attn_k_norm")?, norm(l, "attn_v_norm")?)))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Multiway { da, kv_norms }))
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !is_dense(name) {
            return None; // attn_k_norm / attn_v_norm: the skeleton's norm rule (ones)
        }
        let n = shape.elem_count();
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "dynamic_w1" => shape
                .dims2()
                .map(|(_, d)| normal(rng, n, 1.0 / (d as f64).sqrt())),
            "dynamic_w2" => Ok(vec![0.0; n]),
            "static_bias" => shape.dims2().map(|(c, cols)| {
                let mut w = vec![0.0; n];
                for row in 0..c {
                    w[row * cols + cols - 1] = 1.0; // the current hidden state X_{i+1}
                }
                w
            }),
            _ => Err(candle_core::Error::Msg(format!(
                "no init rule for parameter `{name}`"
            ))),
        })
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        match leaf {
            "dynamic_w1" | "dynamic_w2" if is_dense(name) => Some(ParamGroup::Decay),
            "static_bias" if is_dense(name) => Some(ParamGroup::NoDecay),
            _ => None,
        }
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        let (l_n, d) = (cfg.n_layers, cfg.d_model);
        let da: usize = (0..l_n)
            .map(|i| {
                let (c, n, hid) = da_shape(i, l_n);
                hid * d + c * n * hid + c * n
            })
            .sum();
        (da + 2 * (l_n - 1) * d) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d, l_n) = (seq_len as u64, cfg.d_model as u64, cfg.n_layers);
        let mut macs = 0u64;
        let mut elementwise = 0i64;
        for i in 0..l_n {
            let (c, n, hid) = da_shape(i, l_n);
            let (c, n, hid) = (c as u64, n as u64, hid as u64);
            macs += t * (d * hid + hid * c * n + c * n * d);
            elementwise += (4 * t * d + 7 * t + t * c * n) as i64;
        }
        elementwise += 2 * (l_n as i64 - 1) * (5 * t * d + 7 * t) as i64;
        ExtraFlops {
            router: 0,
            depth: per_mac(mode) * macs,
            elementwise: match mode {
                FlopMode::Fvcore => elementwise,
                _ => 0,
            },
        }
    }
}
