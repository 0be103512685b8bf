//! mHC: Manifold-Constrained Hyper-Connections (Xie et al., DeepSeek 2025, arXiv 2512.24880),
//! as DeepSeek-V4 runs them (reference: HF transformers `DeepseekV4HyperConnection` and
//! `DeepseekV4HyperHead`). Hyper-Connections with n = [`STREAMS`] residual streams whose
//! stream-mixing matrix is projected onto the doubly stochastic matrices by Sinkhorn–Knopp
//! iterations, and whose read-in (pre) and read-out (post) maps are non-negative (sigmoid).
//!
//! ```text
//! H_0 = (x, …, x)                                  embedding replicated into n streams  (B,T,n,D)
//! per site (attention and MLP of block l, each with its own fn, base, scale):
//!   f     = flatten(H)                                                          (B,T,n·D)
//!   m     = (f · fnᵀ) / sqrt(mean(f²) + ε_norm)                                 (B,T,(2+n)·n)
//!   pre   = σ(s₀ · m[0:n]   + base[0:n])   + ε                                  (B,T,n)
//!   post  = σ(s₁ · m[n:2n]  + base[n:2n])  + ε                                  (B,T,n)
//!   comb  = Sinkhorn_K(σ(s₂ · m[2n:] + base[2n:]) + ε)                          (B,T,n,n)
//!           K times: comb ← comb / (rowsum + ε);  comb ← comb / (colsum + ε)
//!   h     = Σ_i pre_i · H_i                        the sub-layer input           (B,T,D)
//!   H'_i  = post_i · 𝒯(h) + Σ_j comb[i][j] · H_j   (𝒯 = Attn∘attn_norm or MLP∘mlp_norm)
//! head: pre = σ(s · (f · fn_headᵀ)/rms(f) + base_head) + ε;  x_L = Σ_i pre_i H_i → final norm
//! ```
//!
//! Constants (DeepSeek-V4 config): n = 4 (`hc_mult`), K = 20 (`hc_sinkhorn_iters`), ε = 1e-6
//! (`hc_eps`); ε_norm is the skeleton's `norm_eps`. Init (V4's `_init_weights`): fn ~ N(0, 0.02²)
//! (`initializer_range`), base = 0, scale = 1. The block norms keep their learned gains (V4's
//! `input_layernorm` / `post_attention_layernorm`). Optimizer: fn decayed (a matrix), base and
//! scale not (vectors), base lr: the sources name no group of their own.
//!
//! | name (per block l; `mhc_mlp` likewise)   | shape              | init        |
//! |------------------------------------------|--------------------|-------------|
//! | `layers.{l}.mhc_attn.hc_fn`              | ((2+n)·n, n·D)     | N(0, 0.02²) |
//! | `layers.{l}.mhc_attn.hc_base`            | ((2+n)·n,)         | 0           |
//! | `layers.{l}.mhc_attn.hc_scale`           | (3,)               | 1           |
//! | `layers.{L−1}.mhc_head.hc_fn`            | (n, n·D)           | N(0, 0.02²) |
//! | `layers.{L−1}.mhc_head.hc_base`          | (n,)               | 0           |
//! | `layers.{L−1}.mhc_head.hc_scale`         | (1,)               | 1           |
//!
//! Parameters: 2L·((2+n)n·(nD + 1) + 3) + n·(nD + 1) + 1.
//!
//! **Deviations (documented):** we follow the DeepSeek-V4 reference code, which differs from the
//! mHC paper's equations in two places: post = σ(·) + ε (the paper: 2σ(·)) and the Sinkhorn input
//! σ(·) + ε (the paper: exp(·)); the coefficients come from one projection of the flattened,
//! RMS-scaled streams (no learned gain), as in V4. Everything runs in the model's dtype (V4
//! keeps these modules in f32, which our f32 training already is).
//!
//! **No neutral setting:** no weights make mHC equal llama exactly. Equal streams and a unit-sum
//! read-in reproduce llama's normalised sub-layer input, but the residual needs post_i = 1 and
//! `Σ_j comb[i][j]` = 1: σ(·) + ε reaches 1 only at one finite logit (1 up to rounding), and K
//! Sinkhorn steps with the +ε guards leave row sums 1 − O(ε). At fn = 0, base_post =
//! logit(1 − ε), `norm_eps` = 0 the logits differ from llama's by a small amount, never 0
//! (tested: 0 < difference < 1e-3, and far below the difference at init).
//!
//! FLOPs (causal/full, 2 per MAC; per site and token): fn projection (2+n)n·nD, read-in n·D,
//! write-out n·D + n²·D; head n·nD + n·D; all in `depth`. fvcore (our extension, not checked
//! against a trace), per site and token: RMS of f 3nD + 7, scaling of m (2+n)n, σ/scale/base/ε
//! 4·(2+n)n, Sinkhorn K·2·(2n² + n), the write-out add nD; head 3nD + 7 + 4n; minus the
//! skeleton's residual adds 2·T·D per block.
//!
//! Per-token mixing only, so the KV cache needs nothing extra. Residual memory is ×n.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::init::{normal, ParamGroup};
use crate::ops::Backend;
use crate::variant::{
    plain_kv, Config, Connection, ExtraFlops, Layers, Mixing, Variant, VariantDef,
};

/// Residual streams (`hc_mult`).
pub const STREAMS: usize = 4;
/// Sinkhorn–Knopp iterations (`hc_sinkhorn_iters`).
pub const SINKHORN_ITERS: usize = 20;
/// The ε of the gates and the Sinkhorn guards (`hc_eps`).
pub const HC_EPS: f64 = 1e-6;
/// Std of the normal init of `hc_fn` (`initializer_range`).
pub const FN_INIT_STD: f64 = 0.02;

pub struct Mhc;

impl Variant {
    pub const MHC: Variant = Variant::new(&Mhc);
}

/// The coefficient projection shared by sites and head: fn (M, n·D), base (M,), scale.
#[derive(Clone, Debug)]
struct Coeffs {
    /// fnᵀ (n·D, M).
    fn_t: Tensor,
    base: Tensor,
    scale: Tensor,
    eps: f64,
}

impl Coeffs {
    fn new(cfg: &Config, rows: usize, scales: usize, vb: &VarBuilder) -> Result<Self> {
        let nd = STREAMS * cfg.d_model;
        Ok(Self {
            fn_t: vb.get((rows, nd), "hc_fn")?.t()?,
            base: vb.get(rows, "hc_base")?,
            scale: vb.get(scales, "hc_scale")?,
            eps: cfg.norm_eps,
        })
    }

    /// m = (f · fnᵀ)/rms(f) for streams (B,T,n,D) → (B,T,M).
    fn mix(&self, hs: &Tensor) -> Result<Tensor> {
        let (b, t, n, d) = hs.dims4()?;
        let f = hs.reshape((b, t, n * d))?; // (B,T,n·D)
        let ms = f.sqr()?.mean_keepdim(D::Minus1)?; // (B,T,1)
        f.broadcast_matmul(&self.fn_t)?
            .broadcast_div(&(ms + self.eps)?.sqrt()?)
    }

    /// σ(scale[k] · m[lo..lo+len] + base[lo..lo+len]) + ε, (B,T,len).
    fn gate(&self, m: &Tensor, k: usize, lo: usize, len: usize) -> Result<Tensor> {
        let z = m
            .narrow(2, lo, len)?
            .broadcast_mul(&self.scale.narrow(0, k, 1)?)?
            .broadcast_add(&self.base.narrow(0, lo, len)?)?;
        candle_nn::ops::sigmoid(&z)? + HC_EPS
    }
}

/// Σ_i w_i H_i: weights (B,T,n), streams (B,T,n,D) → (B,T,D).
fn read_in(w: &Tensor, hs: &Tensor) -> Result<Tensor> {
    w.unsqueeze(2)?.matmul(hs)?.squeeze(2) // (B,T,1,n)·(B,T,n,D)
}

/// Sinkhorn–Knopp as V4 runs it: K times row then column normalisation, each guarded by +ε.
pub fn sinkhorn(mut comb: Tensor) -> Result<Tensor> {
    for _ in 0..SINKHORN_ITERS {
        comb = comb.broadcast_div(&(comb.sum_keepdim(3)? + HC_EPS)?)?; // rows
        comb = comb.broadcast_div(&(comb.sum_keepdim(2)? + HC_EPS)?)?; // columns
    }
    Ok(comb)
}

/// One manifold-constrained hyper-connection (around one sub-layer).
#[derive(Clone, Debug)]
struct Site(Coeffs);

impl Site {
    /// Streams (B,T,n,D) → the sub-layer input h (B,T,D), post (B,T,n) and comb (B,T,n,n);
    /// `pre` (B,T,n) is recorded in the trace as the consumer's mixing weights.
    fn width(
        &self,
        hs: &Tensor,
        net: &mut dyn Layers,
        consumer: impl Fn() -> String,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = STREAMS;
        let m = self.0.mix(hs)?; // (B,T,(2+n)n)
        let pre = self.0.gate(&m, 0, 0, n)?;
        net.record_mixing(&pre, &|| (consumer(), Mixing::streams(STREAMS)));
        let post = self.0.gate(&m, 1, n, n)?;
        let (b, t, _) = m.dims3()?;
        let comb = sinkhorn(self.0.gate(&m, 2, 2 * n, n * n)?.reshape((b, t, n, n))?)?;
        Ok((read_in(&pre, hs)?, post, comb))
    }

    /// H'_i = post_i · y + Σ_j comb[i][j] H_j.
    fn depth(y: &Tensor, post: &Tensor, comb: &Tensor, hs: &Tensor) -> Result<Tensor> {
        post.unsqueeze(3)?
            .broadcast_mul(&y.unsqueeze(2)?)? // (B,T,n,D)
            .add(&comb.matmul(hs)?) // (B,T,n,n)·(B,T,n,D)
    }
}

#[derive(Debug)]
struct Streams {
    /// (attention site, MLP site) per block.
    sites: Vec<(Site, Site)>,
    head: Coeffs,
}

impl Streams {
    fn head(&self, hs: &Tensor, net: &mut dyn Layers) -> Result<Tensor> {
        let m = self.head.mix(hs)?; // (B,T,n)
        let pre = self.head.gate(&m, 0, 0, STREAMS)?;
        net.record_mixing(&pre, &|| ("out".to_string(), Mixing::streams(STREAMS)));
        read_in(&pre, hs)
    }
}

impl Connection for Streams {
    fn run(&self, net: &mut dyn Layers, x: Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let mut hs = x
            .unsqueeze(2)?
            .broadcast_as((b, t, STREAMS, d))?
            .contiguous()?; // (B,T,n,D)
        for (l, (attn, mlp)) in self.sites.iter().enumerate() {
            let (h, post, comb) = attn.width(&hs, net, || format!("A{l}"))?;
            let y = net.attn(l, &h, &mut plain_kv)?;
            hs = Site::depth(&y, &post, &comb, &hs)?;
            let (h, post, comb) = mlp.width(&hs, net, || format!("M{l}"))?;
            let y = net.mlp(l, &h)?;
            hs = Site::depth(&y, &post, &comb, &hs)?;
            if net.tracing() {
                net.record(&hs.sum(2)?); // the sum of the streams
            }
        }
        self.head(&hs, net)
    }
}

fn is_own(name: &str) -> bool {
    name.contains(".mhc_attn.") || name.contains(".mhc_mlp.") || name.contains(".mhc_head.")
}

impl VariantDef for Mhc {
    fn name(&self) -> &'static str {
        "mhc"
    }
    fn summary(&self) -> &'static str {
        "mHC (DeepSeek 2025): hyper-connections, n = 4, Sinkhorn doubly stochastic stream mixing"
    }
    fn build(&self, cfg: &Config, vb: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        let n = STREAMS;
        let layer = |l: usize| vb.pp("layers").pp(l);
        let site =
            |l: usize, name: &str| Coeffs::new(cfg, (2 + n) * n, 3, &layer(l).pp(name)).map(Site);
        let sites = (0..cfg.n_layers)
            .map(|l| Ok((site(l, "mhc_attn")?, site(l, "mhc_mlp")?)))
            .collect::<Result<_>>()?;
        let head = Coeffs::new(cfg, n, 1, &layer(cfg.n_layers - 1).pp("mhc_head"))?;
        Ok(Arc::new(Streams { sites, head }))
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !is_own(name) {
            return None;
        }
        let n = shape.elem_count();
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "hc_fn" => Ok(normal(rng, n, FN_INIT_STD)),
            "hc_base" => Ok(vec![0.0; n]),
            "hc_scale" => Ok(vec![1.0; n]),
            _ => Err(candle_core::Error::Msg(format!(
                "no init rule for parameter `{name}`"
            ))),
        })
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        if !is_own(name) {
            return None;
        }
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "hc_fn" => ParamGroup::Decay,
            _ => ParamGroup::NoDecay,
        })
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        let (n, d, l) = (STREAMS as i64, cfg.d_model as i64, cfg.n_layers as i64);
        2 * l * ((2 + n) * n * (n * d + 1) + 3) + n * (n * d + 1) + 1
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d, l, n) = (
            seq_len as u64,
            cfg.d_model as u64,
            cfg.n_layers as u64,
            STREAMS as u64,
        );
        let site = (2 + n) * n * n * d + n * d + n * d + n * n * d;
        let head = n * n * d + n * d;
        let depth = per_mac(mode) * t * (2 * l * site + head);
        let elementwise = match mode {
            FlopMode::Causal | FlopMode::Full => 0,
            FlopMode::Fvcore => {
                let k = SINKHORN_ITERS as u64;
                let site = 3 * n * d + 7 + 5 * (2 + n) * n + k * 2 * (2 * n * n + n) + n * d;
                let head = 3 * n * d + 7 + 4 * n;
                (t * (2 * l * site + head)) as i64 - 2 * (l * t * d) as i64
            }
        };
        ExtraFlops {
            router: 0,
            depth,
            elementwise,
        }
    }
}
