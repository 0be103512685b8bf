//! `lime-dynamic` — **our extension**, not from the paper: LIMe's static router plus a per-token
//! correction computed from the block input x_t (the residual stream before `attn_norm`):
//!
//! ```text
//! W_l(x_t) = W_l + reshape_{R×S}(U_l · RMSNorm(x_t)),   U_l ∈ R^{(R·S) × D}, U_l = 0 at init
//! ```
//!
//! RMSNorm(x_t) is *parameter-free* (no gain, eps = `norm_eps`), so U_l is the only extra
//! parameter ([`crate::accounting::LIME_DYNAMIC_NORM_HAS_WEIGHT`] = false); row `r·S + s` of U_l
//! produces entry (r, s). At init the model is exactly static LIMe (tested). The paper's v1
//! "dynamic" variant instead routed hidden states with a softmax over layers; this is different.
//! The per-token part is a batched product `(B,T,R,S) @ (B,T,S,2·d_h)`, added to the static one.
//!
//! | name                        | shape          | init                      |
//! |-----------------------------|----------------|---------------------------|
//! | `layers.{l}.attn.router.w`  | (R, (l+1)·R)   | as `lime`                 |
//! | `layers.{l}.attn.router.u`  | (R·(l+1)·R, D) | zeros                     |
//!
//! Extra parameters (1 + D)·R²·(L(L+1)/2 − 1). FLOPs as computed: the static mixing, U_l·n_t
//! (D → R·S per token) and the per-token mixing, i.e. router = 2·(static mixing) + 2·T·D·R²·(…).

use std::sync::Arc;

use candle_core::{Module, Result, Shape, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode, LIME_DYNAMIC_NORM_HAS_WEIGHT};
use crate::init::ParamGroup;
use crate::lime::{self, Full, Mix};
use crate::lime_family;
use crate::ops::Backend;
use crate::variant::{Config, Connection, ExtraFlops, Variant, VariantDef};

pub struct LimeDynamic;

impl Variant {
    pub const LIME_DYNAMIC: Variant = Variant::new(&LimeDynamic);
}

/// W_l plus U_l as a linear map D → R·S.
#[derive(Debug)]
struct Dynamic {
    w: Full,
    u: Linear,
    norm_eps: f64,
}

impl Mix for Dynamic {
    fn mix(&self, all: &Tensor, x: &Tensor, backend: Backend) -> Result<Tensor> {
        let (s, b, t, _) = all.dims4()?;
        let r = self.w.0.dim(0)?;
        let routed = self.w.mix(all, x, backend)?; // (R,B,T,2d_h)
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (B,T,1)
        let nx = x.broadcast_div(&(ms + self.norm_eps)?.sqrt()?)?; // parameter-free RMSNorm (B,T,D)
        let dw = self.u.forward(&nx)?.reshape((b, t, r, s))?; // ΔW_l(x_t) (B,T,R,S)
        let per_tok = all.permute((1, 2, 0, 3))?.contiguous()?; // (B,T,S,2d_h)
        let dyn_part = dw.matmul(&per_tok)?; // (B,T,R,2d_h)
        routed + dyn_part.permute((2, 0, 1, 3))? // (R,B,T,2d_h)
    }
    /// The static part W_l.
    fn dense(&self) -> Result<Tensor> {
        self.w.dense()
    }
}

impl VariantDef for LimeDynamic {
    fn role(&self) -> crate::variant::Role {
        crate::variant::Role::LimeAblation
    }
    fn name(&self) -> &'static str {
        "lime-dynamic"
    }
    fn summary(&self) -> &'static str {
        "LIMe with a per-token correction of the router (our extension; starts as lime)"
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        let (r, d) = (cfg.n_kv_heads, cfg.d_model);
        lime::build(cfg, vb, backend, |l, vb| {
            let s = (l + 1) * r;
            Ok(Box::new(Dynamic {
                w: Full(vb.get((r, s), "w")?),
                u: Linear::new(vb.get((r * s, d), "u")?, None),
                norm_eps: cfg.norm_eps,
            }))
        })
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if lime_family::router_leaf(name, "u") {
            return Some(Ok(vec![0.0; shape.elem_count()]));
        }
        lime::Lime.init(name, shape, rng)
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        lime_family::router_group(name)
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        let routed = lime_family::routed_blocks(cfg.n_layers) * lime_family::sq(cfg.n_kv_heads);
        let norm = if LIME_DYNAMIC_NORM_HAS_WEIGHT {
            cfg.d_model * cfg.n_layers.saturating_sub(1)
        } else {
            0
        };
        (routed * (1 + cfg.d_model as u64) + norm as u64) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d, r, dh) = (
            seq_len as u64,
            cfg.d_model as u64,
            cfg.n_kv_heads as u64,
            cfg.head_dim() as u64,
        );
        let blocks = lime_family::routed_blocks(cfg.n_layers) * r * r;
        let mixing = lime_family::router_flops(cfg, seq_len, mode, blocks).router;
        let elementwise = match mode {
            FlopMode::Causal | FlopMode::Full => 0,
            // Per routed layer: the parameter-free RMSNorm 4·T·D + 7·T, the static + dynamic add.
            FlopMode::Fvcore => {
                let norm_w = if LIME_DYNAMIC_NORM_HAS_WEIGHT {
                    t * d
                } else {
                    0
                };
                (cfg.n_layers as u64).saturating_sub(1)
                    * (4 * t * d + 7 * t + norm_w + t * r * 2 * dh)
            }
        };
        ExtraFlops {
            router: 2 * mixing + per_mac(mode) * t * d * blocks,
            depth: 0,
            elementwise: elementwise as i64,
        }
    }
}
