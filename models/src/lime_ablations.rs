//! LIMe's router ablations (the paper's appendix D and reviewers' requests). Each replaces the
//! (R, S) matrix W_l of [`crate::lime`] by a restricted or fixed one; the buffer, the loop and
//! the rest of the model are LIMe's.
//!
//! | variant            | parameter (l ≥ 1)                 | K_l = … (same for V)                               |
//! |--------------------|-----------------------------------|----------------------------------------------------|
//! | `lime-avg`         | none                              | (1/(l+1)) Σ_j K_j, per kv head (W = [I … I]/(l+1)) |
//! | `lime-last-2`      | `router.w` (R, (m+1)·R), m=min(2,l) | W · [K_{l−m}; …; K_l]                            |
//! | `lime-first-2`     | `router.w` (R, (m+1)·R), m=min(2,l) | W · [K_0; …; K_{m−1}; K_l]                       |
//! | `lime-same-head`   | `router.w_head` (R, l+1)          | K_l[r] = Σ_j w[r, j] · K_j[r]                      |
//! | `lime-per-dim`     | `router.w_dim` (R, S, d_h)        | K_l[r, c] = Σ_s w[r, s, c] · K_buf[s, c]           |
//! | `lime-random-init` | `router.w_rand` (R, S)            | as `lime`; init U(−b, b) everywhere, no identity   |
//!
//! `lime-avg` averages over layers per kv head (not over all (l+1)·R rows, which would give every
//! head the same vector). Init follows `lime`: U(−b, b) with b = sqrt(3 / fan-in) (fan-in = number
//! of sources a weight mixes), current layer = identity (`w_head`: last column 1; `w_dim`: the
//! identity block for every channel). So every ablation except `lime-avg` and `lime-random-init`
//! reduces to llama with the current-layer identity and zeros elsewhere. All are trained like
//! `lime` (router group: lr × 10, no decay), so that only the router differs.
//!
//! Parameters and router MACs per token and routed channel, with nb = L(L+1)/2 − 1:
//! `lime-avg` 0 and R²·nb (the constant is applied as a product); windows R²·Σ_l (min(2,l)+1)
//! both; `lime-same-head` R·nb both; `lime-per-dim` R²·d_h·nb and R²·nb; `lime-random-init` as
//! `lime`.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::FlopMode;
use crate::init::ParamGroup;
use crate::lime::{self, Full, Mix};
use crate::lime_family::{self, routed_blocks, router_flops, router_group, router_leaf, sq};
use crate::ops::{self, Backend};
use crate::variant::{Config, Connection, ExtraFlops, Variant, VariantDef};

/// One ablation: its name and router kind.
pub struct Ablation {
    name: &'static str,
    summary: &'static str,
    kind: Kind,
}

/// Which source layers a windowed router reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Layers l−j ..= l (the last j earlier layers and the current one).
    Last(usize),
    /// Layers 0 .. j and the current layer l.
    First(usize),
}

enum Kind {
    Avg,
    Window(Window),
    SameHead,
    PerDim,
    RandomInit,
}

impl Variant {
    pub const LIME_AVG: Variant = Variant::new(&Ablation {
        name: "lime-avg",
        summary: "router ablation: fixed uniform average over the layers, per kv head",
        kind: Kind::Avg,
    });
    pub const LIME_LAST_2: Variant = Variant::new(&Ablation {
        name: "lime-last-2",
        summary: "router ablation: only the last 2 earlier layers and the current one",
        kind: Kind::Window(Window::Last(2)),
    });
    pub const LIME_FIRST_2: Variant = Variant::new(&Ablation {
        name: "lime-first-2",
        summary: "router ablation: only the first 2 layers and the current one",
        kind: Kind::Window(Window::First(2)),
    });
    pub const LIME_SAME_HEAD: Variant = Variant::new(&Ablation {
        name: "lime-same-head",
        summary: "router ablation: kv head r mixes only kv head r of the layers so far",
        kind: Kind::SameHead,
    });
    pub const LIME_PER_DIM: Variant = Variant::new(&Ablation {
        name: "lime-per-dim",
        summary: "router ablation: one weight per channel instead of one per head pair",
        kind: Kind::PerDim,
    });
    pub const LIME_RANDOM_INIT: Variant = Variant::new(&Ablation {
        name: "lime-random-init",
        summary: "router ablation: the whole router U(-b, b), no identity block",
        kind: Kind::RandomInit,
    });
}

/// The source layers of a windowed router at layer l.
pub fn window_sources(window: Window, layer: usize) -> Vec<usize> {
    match window {
        Window::Last(j) => (layer.saturating_sub(j)..=layer).collect(),
        Window::First(j) => (0..j.min(layer)).chain([layer]).collect(),
    }
}

/// W (R, k·R) over the source layers `sources`.
#[derive(Debug)]
struct Windowed {
    w: Tensor,
    sources: Vec<usize>,
    layer: usize,
}

impl Mix for Windowed {
    fn mix(&self, all: &Tensor, _x: &Tensor, backend: Backend) -> Result<Tensor> {
        let (_, b, t, kv) = all.dims4()?;
        let r = self.w.dim(0)?;
        let rows: Vec<Tensor> = self
            .sources
            .iter()
            .map(|&j| all.narrow(0, j * r, r))
            .collect::<Result<_>>()?;
        let sub = Tensor::cat(&rows, 0)?.reshape((self.sources.len() * r, b * t * kv))?; // (k·R, N)
        ops::depth_mix(backend, &self.w, &sub)?.reshape((r, b, t, kv))
    }
    /// Zeros outside the window.
    fn dense(&self) -> Result<Tensor> {
        let r = self.w.dim(0)?;
        let zeros = self.w.narrow(1, 0, r)?.zeros_like()?;
        let blocks: Vec<Tensor> = (0..=self.layer)
            .map(|j| match self.sources.iter().position(|&s| s == j) {
                Some(k) => self.w.narrow(1, k * r, r),
                None => Ok(zeros.clone()),
            })
            .collect::<Result<_>>()?;
        Tensor::cat(&blocks, 1)
    }
}

/// w (R, l+1): head r of layer l mixes head r of every layer.
#[derive(Debug)]
struct SameHead(Tensor);

impl Mix for SameHead {
    fn mix(&self, all: &Tensor, _x: &Tensor, _: Backend) -> Result<Tensor> {
        let (s, b, t, kv) = all.dims4()?;
        let r = self.0.dim(0)?;
        let per_head = all
            .reshape((s / r, r, b * t * kv))?
            .transpose(0, 1)?
            .contiguous()?; // (R, l+1, N)
        let w = self.0.unsqueeze(1)?; // (R, 1, l+1)
        w.matmul(&per_head)?.reshape((r, b, t, kv))
    }
    /// Block-diagonal: (R, l+1, 1) * (R, 1, R) eye → (R, l+1, R) → (R, S).
    fn dense(&self) -> Result<Tensor> {
        let (r, n_src) = self.0.dims2()?;
        let eye = Tensor::eye(r, self.0.dtype(), self.0.device())?.unsqueeze(1)?;
        self.0
            .unsqueeze(2)?
            .broadcast_mul(&eye)?
            .reshape((r, n_src * r))
    }
}

/// w (R, S, d_h): one weight per channel.
#[derive(Debug)]
struct PerDim(Tensor);

impl Mix for PerDim {
    fn mix(&self, all: &Tensor, _x: &Tensor, _: Backend) -> Result<Tensor> {
        let (s, b, t, kv) = all.dims4()?;
        let (r, _, dh) = self.0.dims3()?;
        // Batched over the d_h channels: (d_h, R, S) @ (d_h, S, B·T·2).
        let src = all
            .reshape((s, b * t * 2, dh))?
            .permute((2, 0, 1))?
            .contiguous()?; // (d_h, S, B·T·2)
        let w = self.0.permute((2, 0, 1))?.contiguous()?; // (d_h, R, S)
        w.matmul(&src)? // (d_h, R, B·T·2)
            .permute((1, 2, 0))?
            .contiguous()?
            .reshape((r, b, t, kv))
    }
    /// The mean over channels.
    fn dense(&self) -> Result<Tensor> {
        self.0.mean(D::Minus1)
    }
}

impl VariantDef for Ablation {
    fn role(&self) -> crate::variant::Role {
        crate::variant::Role::LimeAblation
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn summary(&self) -> &'static str {
        self.summary
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        let (r, dh) = (cfg.n_kv_heads, cfg.head_dim());
        lime::build(cfg, vb, backend, |l, vb| -> Result<Box<dyn Mix>> {
            let s = (l + 1) * r;
            Ok(match self.kind {
                Kind::Avg => {
                    // W = [I … I] / (l+1): a constant, not a Var.
                    let eye = Tensor::eye(r, DType::F64, &Device::Cpu)?;
                    let w = (Tensor::cat(&vec![eye; l + 1], 1)? / (l + 1) as f64)?;
                    Box::new(Full(w.to_dtype(vb.dtype())?.to_device(vb.device())?))
                }
                Kind::RandomInit => Box::new(Full(vb.get((r, s), "w_rand")?)),
                Kind::SameHead => Box::new(SameHead(vb.get((r, l + 1), "w_head")?)),
                Kind::PerDim => Box::new(PerDim(vb.get((r, s, dh), "w_dim")?)),
                Kind::Window(win) => {
                    let sources = window_sources(win, l);
                    let w = vb.get((r, sources.len() * r), "w")?;
                    Box::new(Windowed {
                        w,
                        sources,
                        layer: l,
                    })
                }
            })
        })
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        let n = shape.elem_count();
        match self.kind {
            Kind::Avg => None,
            Kind::Window(_) => {
                router_leaf(name, "w").then(|| lime_family::identity_block_init(shape, rng))
            }
            Kind::PerDim => {
                router_leaf(name, "w_dim").then(|| lime_family::identity_block_init(shape, rng))
            }
            Kind::RandomInit => router_leaf(name, "w_rand")
                .then(|| Ok(lime_family::uniform(n, shape.dims()[1], rng))),
            Kind::SameHead => router_leaf(name, "w_head").then(|| {
                let s = shape.dims()[1]; // (R, l+1)
                let mut w = lime_family::uniform(n, s, rng);
                w.chunks_mut(s).for_each(|row| row[s - 1] = 1.0);
                Ok(w)
            }),
        }
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        router_group(name)
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        let (params, _) = self.counts(cfg);
        params as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        router_flops(cfg, seq_len, mode, self.counts(cfg).1)
    }
}

impl Ablation {
    /// (parameters, router MACs per token and routed channel).
    fn counts(&self, cfg: &Config) -> (u64, u64) {
        let (r, dh) = (cfg.n_kv_heads, cfg.head_dim() as u64);
        let nb = routed_blocks(cfg.n_layers);
        match self.kind {
            Kind::Avg => (0, sq(r) * nb),
            Kind::RandomInit => (sq(r) * nb, sq(r) * nb),
            Kind::SameHead => (r as u64 * nb, r as u64 * nb),
            Kind::PerDim => (sq(r) * nb * dh, sq(r) * nb),
            Kind::Window(Window::Last(j) | Window::First(j)) => {
                let w = sq(r)
                    * (1..cfg.n_layers)
                        .map(|l| (j.min(l) + 1) as u64)
                        .sum::<u64>();
                (w, w)
            }
        }
    }
}
