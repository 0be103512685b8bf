//! LAuReL, the Learned Augmented Residual Layer (Menghani, Kumar, Kumar; ICML 2025, arXiv
//! 2411.07501; no official code), in its RW+LR form: the residual connection of each block,
//! `x + f(x)`, becomes a learned scaling of the block's function and of an identity augmented by
//! a low-rank map.
//!
//! ```text
//! x_{l+1} = α_l · f_l(x_l) + β_l · (x_l + U_l D_l x_l)          (the paper's Eq. 5)
//! f_l(x)  = a + MLP(mlp_norm(x + a)),  a = Attn(attn_norm(x))     (llama's block minus x)
//! α_l, β_l scalars;  D_l (r, D) down,  U_l (D, r) up;  r = `laurel_rank`
//! ```
//!
//! Which form: the paper recommends RW+LR ("the best trade-off in terms of quality improvements
//! and the additional overhead", §4.4) and trains both of its LLMs with it (1B: r = 4; 4B: r = 64);
//! RW+LR+PA is 0.1% lower in test loss in its small-LLM ablation (Table 5) and was not tried on
//! its LLMs, so lime-bench implements RW+LR. Placement: one LAuReL per decoder block around the
//! block's whole function, as the paper's LLM parameter count implies (2N(4D + 1) for N layers at
//! r = 4: one α, β and one rank-4 pair per layer); the low-rank map reads the raw stream x_l (the
//! paper folds norms into f). Default rank r = 4, the paper's 1B setting (the paper suggests
//! r ∈ {32, 48, 64} for LLMs of D ≥ 2048; lime-bench's D is 64–256): `--model-set laurel_rank=R`,
//! 1 ≤ R ≤ D.
//!
//! | name                       | shape   | init                                  |
//! |----------------------------|---------|---------------------------------------|
//! | `layers.{l}.laurel.alpha`  | (1,)    | 1                                     |
//! | `layers.{l}.laurel.beta`   | (1,)    | 1                                     |
//! | `layers.{l}.laurel.down`   | (r, D)  | D_l[j, i] = 1/√(rD) if i mod r = j, else 0 |
//! | `layers.{l}.laurel.up`     | (D, r)  | 0                                     |
//!
//! Init: the paper's LLM init (§3.3 and its footnote: A "column orthogonal", B "always
//! initialized to zero", as in LoRA); α = β = 1, which the paper does not state (see below).
//! Optimizer: D_l, U_l decayed (matrices), α, β not (scalars), base lr.
//!
//! Parameters: L·(2rD + 2). FLOPs (causal/full, 2 per MAC): the low-rank map 2·r·D MACs per token
//! and block, in `depth`. fvcore (our extension): the two scalings, the augmented identity's add
//! and the extra sum, 4·T·D per block beyond llama's two residual adds.
//!
//! **Deviations and choices (documented):** the paper says only that α and β must not "grow
//! unbounded" and that "a normalization function such as softmax or sigmoid helps", without saying
//! which or with what init; a softmax or sigmoid pair starts at α = β = ½ and halves the stream at
//! every block. lime-bench keeps α and β as raw scalars initialised to 1, so the model at init is
//! llama exactly, and leaves their growth to weight-decay-free training (they are reported by
//! `harness analyze` as the mixing weights of each block's output, `f` and `x+UDx`).
//!
//! **Neutral setting (exact reduction):** α = β = 1 and U = 0 (its init; tested at random shared
//! weights). Per token, so the KV cache needs nothing extra. Not packable (its weights have no run
//! axis; the runs train one after another).

use std::sync::Arc;

use candle_core::{Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::decoder::Proj;
use crate::ops::Backend;
use crate::variant::{
    plain_kv, Config, Connection, ExtraFlops, Layers, ParamGroup, Variant, VariantDef,
    VariantSetting,
};

pub struct Laurel;

impl Variant {
    pub const LAUREL: Variant = Variant::new(&Laurel);
}

/// The setting for the rank r (`laurel_rank=4`).
pub const RANK: &str = "laurel_rank";

const SETTINGS: [VariantSetting; 1] = [VariantSetting {
    key: RANK,
    default: 4,
    min: 1,
    letters: "",
    about: "rank r of the low-rank map U·D (1 <= r <= d_model)",
}];

/// One block's LAuReL-RW+LR.
#[derive(Clone, Debug)]
struct LaurelBlock {
    /// α, β: (1,) each.
    alpha: Tensor,
    beta: Tensor,
    down: Proj,
    up: Proj,
}

#[derive(Debug)]
struct LaurelNet {
    blocks: Vec<LaurelBlock>,
}

impl Connection for LaurelNet {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        for (l, lb) in self.blocks.iter().enumerate() {
            let a = net.attn(l, &x, &mut plain_kv)?; // (B,T,D)
            let m = net.mlp(l, &(&x + &a)?)?; // (B,T,D)
            let f = (a + m)?; // f_l(x): llama's block minus its input
            let g = (&x + lb.up.forward(&lb.down.forward(&x)?)?)?; // x + U D x
            x = (f.broadcast_mul(&lb.alpha)? + g.broadcast_mul(&lb.beta)?)?; // (B,T,D)
            if net.tracing() {
                // (α_l, β_l) as the block output's weights on its two terms, (1,1,2).
                let w = Tensor::cat(&[&lb.alpha, &lb.beta], 0)?.reshape((1, 1, 2))?;
                net.record_mixing(&w, &|| {
                    (format!("B{l}"), vec!["f".to_string(), "x+UDx".to_string()])
                });
            }
            net.record(&x);
        }
        Ok(x)
    }
}

fn is_own(name: &str) -> bool {
    name.contains(".laurel.")
}

impl VariantDef for Laurel {
    fn name(&self) -> &'static str {
        "laurel"
    }
    fn summary(&self) -> &'static str {
        "LAuReL-RW+LR (Menghani et al. 2024): x <- a*f(x) + b*(x + U D x), rank laurel_rank"
    }
    fn settings(&self) -> &'static [VariantSetting] {
        &SETTINGS
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        let (r, d) = (cfg.setting(RANK), cfg.d_model);
        if r == 0 || r > d {
            candle_core::bail!("laurel_rank must be between 1 and d_model ({d}), got {r}");
        }
        Ok(())
    }
    fn build(&self, cfg: &Config, vb: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        self.validate(cfg)?;
        let (r, d) = (cfg.setting(RANK), cfg.d_model);
        let blocks = (0..cfg.n_layers)
            .map(|l| {
                let vb = vb.pp("layers").pp(l).pp("laurel");
                Ok(LaurelBlock {
                    alpha: vb.get(1, "alpha")?,
                    beta: vb.get(1, "beta")?,
                    down: Proj::new(vb.get((r, d), "down")?),
                    up: Proj::new(vb.get((d, r), "up")?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Arc::new(LaurelNet { blocks }))
    }
    fn init(&self, name: &str, shape: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !is_own(name) {
            return None;
        }
        let n = shape.elem_count();
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "alpha" | "beta" => Ok(vec![1.0; n]),
            "up" => Ok(vec![0.0; n]),
            "down" => shape.dims2().map(|(r, d)| {
                let v = 1.0 / ((r * d) as f64).sqrt();
                (0..r * d)
                    .map(|k| if (k % d) % r == k / d { v } else { 0.0 }) // [j, i]: i mod r = j
                    .collect()
            }),
            _ => Err(candle_core::Error::Msg(format!(
                "no init rule for parameter `{name}`"
            ))),
        })
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        match name.rsplit('.').next() {
            Some("alpha" | "beta") if is_own(name) => Some(ParamGroup::NoDecay),
            Some("down" | "up") if is_own(name) => Some(ParamGroup::Decay),
            _ => None,
        }
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        (cfg.n_layers * (2 * cfg.setting(RANK) * cfg.d_model + 2)) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d, l) = (seq_len as u64, cfg.d_model as u64, cfg.n_layers as u64);
        let r = cfg.setting(RANK) as u64;
        ExtraFlops {
            router: 0,
            depth: per_mac(mode) * l * t * 2 * r * d,
            elementwise: match mode {
                FlopMode::Fvcore => (l * 4 * t * d) as i64,
                _ => 0,
            },
        }
    }
}
