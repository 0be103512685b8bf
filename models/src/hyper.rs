//! Hyper-Connections (Zhu et al. 2024, arXiv 2409.19606): n = [`STREAMS`] residual streams
//! H = (h_1 … h_n) instead of one, and per sub-layer (attention and MLP separately) a learned
//! width connection (which mix of the streams the sub-layer reads) and depth connection (how its
//! output and the old streams form the new streams).
//!
//! ```text
//! H_0 = (x, …, x)                      embedding replicated into n streams       (B,T,n,D)
//! per sub-layer T ∈ {Attn∘attn_norm, MLP∘mlp_norm} of block l:
//!   H̄  = RMSNorm(H)                                       (per stream, no gain; dynamic only)
//!   A  = [A_m | A_r] + s_α · tanh(H̄ · W_α)                (B,T,n,n+1)   (static part (n,n+1))
//!   B  = B_s + s_β · tanh(H̄ · W_β)                        (B,T,n)       (static part (n,))
//!   h  = A_mᵀ H                                           (B,T,D)  the sub-layer's input
//!   H' = B ⊗ T(h) + A_rᵀ H                                (B,T,n,D)
//! read-out: x_L = Σ_i h_i (sum of the streams) → final norm → LM head
//! ```
//!
//! Init (paper): A_m = e_(l mod n) (l = block index, used for both sub-layers of the block, as in
//! the LIMe authors' HC baseline `src/lm/hc.py`), A_r = I, B_s = 1, W_α = W_β = 0,
//! s_α = s_β = [`SCALE_INIT`]. The read-out sums the streams, as in that baseline.
//! `hyper-static` has no dynamic part (H̄, W, s). The block norms have **no gain** (the authors'
//! baseline deletes the RMSNorm weights of the blocks), which is what makes the parameter count
//! equal to the paper's Table 8 (+328,512 at 1B).
//!
//! **Deviation (documented):** the authors normalise with an affine-free LayerNorm (for H̄ and
//! the block norms); we use an affine-free RMSNorm (eps = `norm_eps`), the skeleton's norm, so that
//! the neutral setting below is exactly llama. Parameter counts are unaffected; the `fvcore` FLOP
//! mode counts the authors' LayerNorm (see `accounting.rs`).
//!
//! **Neutral setting (exact reduction):** at init every stream holds the same vector, each
//! sub-layer reads x (A_m = e_k) and writes x + T(x) to every stream (A_r = I, B = 1, tanh(0) = 0),
//! so block by block the streams equal llama's residual stream (with unit norm gains) and the
//! read-out is n·x_L. The final RMSNorm removes the factor n exactly when `norm_eps` = 0 (with
//! eps > 0 the difference is eps/n² in the norm's denominator). So: HC at init with `norm_eps` = 0
//! equals llama with unit norm gains — tested for n = 4, dynamic and static.
//!
//! | name (per block l, `hc_attn` and `hc_mlp`) | shape    |
//! |--------------------------------------------|----------|
//! | `layers.{l}.hc_attn.static_alpha`          | (n, n+1) |
//! | `layers.{l}.hc_attn.static_beta`           | (n,)     |
//! | `layers.{l}.hc_attn.dynamic_alpha_fn`      | (D, n+1) | hyper only
//! | `layers.{l}.hc_attn.dynamic_alpha_scale`   | (1,)     | hyper only
//! | `layers.{l}.hc_attn.dynamic_beta_fn`       | (D,)     | hyper only
//! | `layers.{l}.hc_attn.dynamic_beta_scale`    | (1,)     | hyper only
//!
//! Per-token mixing only, so the KV cache needs nothing extra. Residual memory is ×n.

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::init::{layer_of, ParamGroup};
use crate::ops::Backend;
use crate::variant::{
    plain_kv, Config, Connection, ExtraFlops, Layers, Mixing, Variant, VariantDef,
};

/// Number of residual streams (the paper's expansion rate n).
pub const STREAMS: usize = 4;
/// Initial value of the dynamic scales s_α and s_β.
pub const SCALE_INIT: f64 = 0.01;

#[derive(Clone, Debug)]
struct Dynamic {
    /// W_α (D, n+1).
    alpha_fn: Tensor,
    /// s_α (1,).
    alpha_scale: Tensor,
    /// W_β (D, 1).
    beta_fn: Tensor,
    /// s_β (1,).
    beta_scale: Tensor,
}

/// One hyper-connection (around one sub-layer).
#[derive(Clone, Debug)]
pub struct HyperConnection {
    /// [A_m | A_r] (n, n+1).
    static_alpha: Tensor,
    /// B (n,).
    static_beta: Tensor,
    dynamic: Option<Dynamic>,
    norm_eps: f64,
}

/// What the width connection hands to the depth connection.
pub struct Width {
    /// A_rᵀ H (B,T,n,D).
    pub carried: Tensor,
    /// B (B,T,n,1) or (1,1,n,1).
    pub beta: Tensor,
    /// The read-in weights A_m (B,T,n) or (1,1,n): how much of each stream the sub-layer reads.
    pub read: Tensor,
}

impl HyperConnection {
    pub fn new(cfg: &Config, dynamic: bool, vb: VarBuilder) -> Result<Self> {
        let (n, d) = (STREAMS, cfg.d_model);
        let dynamic = if dynamic {
            Some(Dynamic {
                alpha_fn: vb.get((d, n + 1), "dynamic_alpha_fn")?,
                alpha_scale: vb.get(1, "dynamic_alpha_scale")?,
                beta_fn: vb.get(d, "dynamic_beta_fn")?.reshape((d, 1))?,
                beta_scale: vb.get(1, "dynamic_beta_scale")?,
            })
        } else {
            None
        };
        Ok(Self {
            static_alpha: vb.get((n, n + 1), "static_alpha")?,
            static_beta: vb.get(n, "static_beta")?,
            dynamic,
            norm_eps: cfg.norm_eps,
        })
    }

    /// Width connection: streams H (B,T,n,D) → the sub-layer input h = A_mᵀH (B,T,D) and the
    /// carried streams A_rᵀH with the depth weights B.
    pub fn width(&self, hs: &Tensor) -> Result<(Tensor, Width)> {
        let n = hs.dim(2)?;
        let (alpha, beta) = match &self.dynamic {
            None => (
                self.static_alpha.unsqueeze(0)?.unsqueeze(0)?, // (1,1,n,n+1)
                self.static_beta.reshape((1, 1, n, 1))?,       // (1,1,n,1)
            ),
            Some(dy) => {
                let ms = hs.sqr()?.mean_keepdim(D::Minus1)?; // (B,T,n,1)
                let hn = hs.broadcast_div(&(ms + self.norm_eps)?.sqrt()?)?; // H̄ (B,T,n,D)
                let a = hn
                    .broadcast_matmul(&dy.alpha_fn)? // (B,T,n,n+1)
                    .tanh()?
                    .broadcast_mul(&dy.alpha_scale)?
                    .broadcast_add(&self.static_alpha)?;
                let be = hn
                    .broadcast_matmul(&dy.beta_fn)? // (B,T,n,1)
                    .tanh()?
                    .broadcast_mul(&dy.beta_scale)?
                    .broadcast_add(&self.static_beta.reshape((n, 1))?)?;
                (a, be)
            }
        };
        // mix[.., i, :] = Σ_j A[.., j, i] · H[.., j, :] for i = 0..=n, as n broadcast products
        // (A varies per token, so this is not one GEMM).
        let mut mix: Option<Tensor> = None;
        for j in 0..n {
            let a_j = alpha.narrow(2, j, 1)?.transpose(2, 3)?; // (·,·,n+1,1)
            let term = a_j.broadcast_mul(&hs.narrow(2, j, 1)?)?; // (B,T,n+1,D)
            mix = Some(match mix {
                None => term,
                Some(m) => (m + term)?,
            });
        }
        let mix = mix.expect("n ≥ 1");
        let h = mix.narrow(2, 0, 1)?.squeeze(2)?; // A_mᵀH (B,T,D)
        let carried = mix.narrow(2, 1, n)?; // A_rᵀH (B,T,n,D)
        let read = alpha.narrow(3, 0, 1)?.squeeze(3)?; // A_m (·,·,n)
        Ok((
            h,
            Width {
                carried,
                beta,
                read,
            },
        ))
    }

    /// Depth connection: H' = B ⊗ y + A_rᵀH, with the sub-layer output y (B,T,D).
    pub fn depth(&self, y: &Tensor, w: Width) -> Result<Tensor> {
        w.beta
            .broadcast_mul(&y.unsqueeze(2)?)?
            .broadcast_add(&w.carried) // (B,T,n,D)
    }

    /// The static weights [A_m | A_r] (n, n+1) and B (n,).
    pub fn static_weights(&self) -> (&Tensor, &Tensor) {
        (&self.static_alpha, &self.static_beta)
    }
}

/// The two hyper-connections of one block.
#[derive(Clone, Debug)]
pub struct HyperLayer {
    pub attn: HyperConnection,
    pub mlp: HyperConnection,
}

impl HyperLayer {
    pub fn new(cfg: &Config, dynamic: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: HyperConnection::new(cfg, dynamic, vb.pp("hc_attn"))?,
            mlp: HyperConnection::new(cfg, dynamic, vb.pp("hc_mlp"))?,
        })
    }
}

/// Embedding (B,T,D) → n identical streams (B,T,n,D).
pub fn expand(x: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.unsqueeze(2)?
        .broadcast_as((b, t, STREAMS, d))?
        .contiguous()
}

/// Read-out: the sum of the streams (B,T,n,D) → (B,T,D).
pub fn read_out(hs: &Tensor) -> Result<Tensor> {
    hs.sum(2)
}

/// `hyper` (`dynamic`) and `hyper-static`.
pub struct Hyper {
    dynamic: bool,
}

impl Variant {
    pub const HYPER: Variant = Variant::new(&Hyper { dynamic: true });
    pub const HYPER_STATIC: Variant = Variant::new(&Hyper { dynamic: false });
}

/// The hyper-connections of every block.
#[derive(Debug)]
struct Streams(Vec<HyperLayer>);

impl Connection for Streams {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        let mut hs = expand(&x)?; // (B,T,n,D)
        for (l, hc) in self.0.iter().enumerate() {
            let (h, w) = hc.attn.width(&hs)?; // h = A_mᵀH (B,T,D)
            net.record_mixing(&w.read, &|| (format!("A{l}"), Mixing::streams(STREAMS)));
            hs = hc.attn.depth(&net.attn(l, &h, &mut plain_kv)?, w)?; // (B,T,n,D)
            let (h, w) = hc.mlp.width(&hs)?;
            net.record_mixing(&w.read, &|| (format!("M{l}"), Mixing::streams(STREAMS)));
            hs = hc.mlp.depth(&net.mlp(l, &h)?, w)?;
            if net.tracing() || l + 1 == self.0.len() {
                x = read_out(&hs)?; // Σ_i h_i (B,T,D): trace and head
                net.record(&x);
            }
        }
        Ok(x)
    }
}

impl VariantDef for Hyper {
    fn name(&self) -> &'static str {
        if self.dynamic {
            "hyper"
        } else {
            "hyper-static"
        }
    }
    fn summary(&self) -> &'static str {
        if self.dynamic {
            "Hyper-Connections (Zhu et al. 2024), dynamic, n = 4 residual streams"
        } else {
            "Hyper-Connections without the dynamic (per-token) part"
        }
    }
    fn build(&self, cfg: &Config, vb: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        let layers = (0..cfg.n_layers)
            .map(|l| HyperLayer::new(cfg, self.dynamic, vb.pp("layers").pp(l)))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Streams(layers)))
    }
    fn norm_gain(&self) -> bool {
        false
    }
    fn init(&self, name: &str, shape: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !(name.contains(".hc_attn.") || name.contains(".hc_mlp.")) {
            return None;
        }
        let n = shape.elem_count();
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "static_alpha" => static_alpha_init(name, shape),
            "static_beta" => Ok(vec![1.0; n]),
            "dynamic_alpha_fn" | "dynamic_beta_fn" => Ok(vec![0.0; n]),
            "dynamic_alpha_scale" | "dynamic_beta_scale" => Ok(vec![SCALE_INIT; n]),
            _ => Err(candle_core::Error::Msg(format!(
                "no init rule for parameter `{name}`"
            ))),
        })
    }
    /// Static weights: no decay; the dynamic ones are decayed (the LIMe authors' HC baseline,
    /// `train_utils.py`).
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        match leaf {
            "static_alpha" | "static_beta" => Some(ParamGroup::NoDecay),
            _ if leaf.starts_with("dynamic_") => Some(ParamGroup::Decay),
            _ => None,
        }
    }
    /// Per block 2 connections of n(n+1) + n static (+ D(n+1) + D + 2 dynamic), minus the 2·D
    /// block-norm gains.
    fn extra_params(&self, cfg: &Config) -> i64 {
        let (n, d, l) = (STREAMS as i64, cfg.d_model as i64, cfg.n_layers as i64);
        let dynamic = if self.dynamic { d * (n + 1) + d + 2 } else { 0 };
        2 * l * (n * (n + 1) + n + dynamic) - 2 * l * d
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d, l, n) = (
            seq_len as u64,
            cfg.d_model as u64,
            cfg.n_layers as u64,
            STREAMS as u64,
        );
        let k = per_mac(mode);
        // Per connection and token: width mix (n+1)·n·D, then B ⊗ T(h) n·D (Causal/Full) or
        // fvcore's einsum count ⌊T·n·D/2⌋; dynamic: projections n·D·(n+1) + n·D.
        let proj = if self.dynamic {
            n * d * (n + 1) + n * d
        } else {
            0
        };
        let outer = match mode {
            FlopMode::Causal | FlopMode::Full => k * t * n * d,
            FlopMode::Fvcore => t * n * d / 2,
        };
        let depth = 2 * l * (k * t * (proj + (n + 1) * n * d) + outer);
        let elementwise = match mode {
            FlopMode::Causal | FlopMode::Full => 0,
            FlopMode::Fvcore => {
                // Per block: two affine-free LayerNorms (4·T·D each) instead of two RMSNorms
                // (5·T·D + 7·T each), no residual adds (2·T·D), and per connection the LayerNorm
                // of H, tanh/scale/add of α and β when dynamic, and the depth add.
                let (td, tnd) = ((t * d) as i64, (t * n * d) as i64);
                let dyn_ops = if self.dynamic {
                    (4 * t * n * d + 3 * t * n * (n + 1) + 3 * t * n) as i64
                } else {
                    0
                };
                let rms_norm = 5 * td + 7 * t as i64;
                l as i64 * (2 * 4 * td + 2 * (dyn_ops + tnd) - 2 * rms_norm - 2 * td)
            }
        };
        ExtraFlops {
            router: 0,
            depth,
            elementwise,
        }
    }
}

/// [A_m | A_r] (n, n+1) of block l: A_m = e_(l mod n), A_r = I.
fn static_alpha_init(name: &str, shape: &Shape) -> Result<Vec<f64>> {
    let (n_streams, cols) = shape.dims2()?;
    if cols != n_streams + 1 {
        candle_core::bail!("`{name}` has shape ({n_streams}, {cols}), expected (n, n+1)");
    }
    let layer = layer_of(name)?;
    let mut w = vec![0.0; n_streams * cols];
    w[(layer % n_streams) * cols] = 1.0; // A_m = e_(l mod n)
    for i in 0..n_streams {
        w[i * cols + 1 + i] = 1.0; // A_r = I
    }
    Ok(w)
}
