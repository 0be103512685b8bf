//! Canon layers (Allen-Zhu 2025, *Physics of Language Models: Part 4.1, Architecture Design and
//! the Magic of Canon Layers*; official code facebookresearch/PhysicsLM4, `huggingface/
//! modeling_llama_canon.py` and `canon_helper.py`, and its lingua training code): a residual,
//! causal, depthwise 1-D convolution along the sequence, `h ← h + conv_k(h)`, at up to four places
//! in every block.
//!
//! ```text
//! conv_k(h)[t, c] = Σ_{j=0}^{k−1} W[c, j] · h[t − (k−1) + j, c]      (h at t < 0 is 0; W[c, k−1]
//!                                                                    weighs the current token)
//! block l:  h = attn_norm(x);            A: h ← h + conv_A(h)        (D channels)
//!           q, k, v = W_q h, W_k h, W_v h;  B: each ← itself + conv_B   ((H + 2R)·d_h channels,
//!                                                                    before RoPE and the cache)
//!           x ← x + W_o Attn(q, k, v)
//!           h = mlp_norm(x);             C: h ← h + conv_C(h)        (D channels)
//!           g, u = W_gate h, W_up h;     D: [g|u] ← [g|u] + conv_D    (2F channels)
//!           x ← x + W_down(silu(g) · u)
//! ```
//!
//! Settings (`--model-set`): `canon_positions` — which of A, B, C, D (default `ABCD`, the paper's
//! headline configuration and every Canon recipe of the official code; e.g. `canon_positions=AC`;
//! stored as the mask A = 1, B = 2, C = 4, D = 8); `canon_kernel` — k (default 4, the official
//! default). The official defaults we keep: residual on, no activation (the README calls SiLU
//! "not recommended" for Transformers), no bias (the official code cannot initialise one), the
//! same positions in every layer. The official B convolution runs over the concatenation
//! [q | k | v]; a depthwise convolution treats every channel alone, so it is three convolutions
//! here, one per projection, each with its rows of the one `canon_b` kernel.
//!
//! | name                       | shape              | init                    |
//! |----------------------------|--------------------|-------------------------|
//! | `layers.{l}.canon_a.weight`| (D, k)             | U(−1/√k, 1/√k)          |
//! | `layers.{l}.canon_b.weight`| ((H + 2R)·d_h, k)  | U(−1/√k, 1/√k); rows q, k, v |
//! | `layers.{l}.canon_c.weight`| (D, k)             | U(−1/√k, 1/√k)          |
//! | `layers.{l}.canon_d.weight`| (2F, k)            | U(−1/√k, 1/√k); rows gate, up |
//!
//! Init: PyTorch's default for `nn.Conv1d` (kaiming-uniform with a = √5, fan-in k for a
//! depthwise kernel), which the official `_init_weights` keeps on purpose (`reset_parameters()`;
//! its demo notes std ≈ 0.288 = 1/√12 at k = 4). Optimizer: decayed, like every other kernel
//! (the official training decays all weights).
//!
//! Parameters per layer: k·(D·[A] + (H + 2R)·d_h·[B] + D·[C] + 2F·[D]).
//! FLOPs (causal/full, 2 per MAC): T·C·k MACs per convolution of C channels, in `depth`; fvcore
//! (our extension, not checked against a trace): fvcore's conv count T·C·k plus the residual add
//! T·C, in `depth` and `elementwise` respectively.
//!
//! **Deviations (documented):** the official Canon recipes also shrink RoPE to the first d_h/4
//! dimensions of each head (`rope_dim`) and train with QK-norm; neither is part of Canon (the
//! official llama baselines use QK-norm too, and partial RoPE is "suggested" with Canon), so
//! lime-bench keeps llama's full RoPE and no QK-norm, and the comparison isolates the
//! convolutions.
//!
//! Numerics: on f32 CPU the convolution is one fused kernel with a hand-written backward
//! (`fused/conv.rs`, bit-identical forward); the composed ops (`ops::causal_conv`) are the
//! reference it is tested against, and the path of f64, GPU and k = 1.
//!
//! **Neutral setting (exact reduction):** every kernel zero — each site is h + 0, the llama block
//! (tested). **Decoding:** each convolution keeps its last k − 1 inputs in the decoding cache
//! ([`Layers::past`]); the official code keeps the last k (the same values). Not packable: the
//! kernels have no run axis (the runs train one after another).

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::ops::{self, Backend};
use crate::variant::{
    plain_gate_up, plain_kv, Config, Connection, ExtraFlops, Layers, ParamGroup, Variant,
    VariantDef, VariantSetting,
};

pub struct Canon;

impl Variant {
    pub const CANON: Variant = Variant::new(&Canon);
}

/// The setting naming the positions (`canon_positions=ABCD`).
pub const POSITIONS: &str = "canon_positions";
/// The setting for the kernel size k (`canon_kernel=4`).
pub const KERNEL: &str = "canon_kernel";

const SETTINGS: [VariantSetting; 2] = [
    VariantSetting {
        key: POSITIONS,
        default: 0b1111,
        min: 1,
        letters: "ABCD",
        about: "where the convolutions go: A attention input, B q/k/v, C MLP input, D gate/up",
    },
    VariantSetting {
        key: KERNEL,
        default: 4,
        min: 1,
        letters: "",
        about: "kernel size k: each token reads itself and the k - 1 before it",
    },
];

/// A position's bit in `canon_positions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    A = 1,
    B = 2,
    C = 4,
    D = 8,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::A, Site::B, Site::C, Site::D];

    /// Whether `cfg` has this position.
    pub fn on(self, cfg: &Config) -> bool {
        cfg.setting(POSITIONS) & self as usize != 0
    }

    /// Its parameter's name under `layers.{l}.`.
    pub fn param(self) -> &'static str {
        match self {
            Site::A => "canon_a",
            Site::B => "canon_b",
            Site::C => "canon_c",
            Site::D => "canon_d",
        }
    }

    /// The channels of its convolution.
    pub fn channels(self, cfg: &Config) -> usize {
        let dh = cfg.head_dim();
        match self {
            Site::A | Site::C => cfg.d_model,
            Site::B => (cfg.n_heads + 2 * cfg.n_kv_heads) * dh,
            Site::D => 2 * cfg.d_ff,
        }
    }
}

/// A residual causal depthwise convolution over `w`'s channels: `h + conv_k(h)`.
#[derive(Clone, Debug)]
struct CausalConv {
    /// (C, k).
    w: Tensor,
    /// Its name in the decoding cache.
    site: &'static str,
    backend: Backend,
}

impl CausalConv {
    fn k(&self) -> usize {
        self.w.dim(1).unwrap_or(1)
    }

    /// The k − 1 inputs before this pass, (B, k−1, C), from `net` (zeros at a sequence start).
    fn past(&self, net: &mut dyn Layers, l: usize, batch: usize) -> Result<Option<Tensor>> {
        match self.k() {
            1 => Ok(None),
            k => Ok(Some(net.past(
                l,
                self.site,
                batch,
                self.w.dim(0)?,
                k - 1,
            )?)),
        }
    }

    /// h (B,T,C) → (h + conv_k(h) (B,T,C), the last k − 1 inputs (B,k−1,C) to keep).
    fn forward(&self, past: Option<&Tensor>, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let y = ops::causal_conv(self.backend, past, h, &self.w)?;
        let t = h.dim(1)?;
        let tail = match past {
            None => None, // k = 1: nothing to keep
            Some(p) => {
                let keep = p.dim(1)?; // k − 1
                Some(match t >= keep {
                    true => h.narrow(1, t - keep, keep)?,
                    false => Tensor::cat(&[&p.narrow(1, t, keep - t)?, h], 1)?,
                }) // (B,k−1,C): the last k − 1 inputs
            }
        };
        Ok((y, tail))
    }
}

/// One block's convolutions (`None` where its position is off).
#[derive(Clone, Debug)]
struct CanonBlock {
    a: Option<CausalConv>,
    /// q, k, v: rows of the one `canon_b` kernel.
    b: Option<[CausalConv; 3]>,
    c: Option<CausalConv>,
    /// gate, up: rows of `canon_d`.
    d: Option<[CausalConv; 2]>,
}

#[derive(Debug)]
struct CanonNet {
    blocks: Vec<CanonBlock>,
}

/// Runs `conv` on `h` (B,T,C) in block l, reading and keeping its past through `net`.
fn apply(net: &mut dyn Layers, l: usize, conv: &CausalConv, h: &Tensor) -> Result<Tensor> {
    let past = conv.past(net, l, h.dim(0)?)?;
    let (y, tail) = conv.forward(past.as_ref(), h)?;
    if let Some(tail) = tail {
        net.keep_past(l, conv.site, tail);
    }
    Ok(y)
}

/// (B,T,G,d) → (B,T,G·d) through `conv` with `past`, back to (B,T,G,d); the tail goes to `keep`.
fn heads(
    conv: &CausalConv,
    past: Option<&Tensor>,
    x: Tensor,
    keep: &mut Option<Tensor>,
) -> Result<Tensor> {
    let (b, t, g, d) = x.dims4()?;
    let (y, tail) = conv.forward(past, &x.reshape((b, t, g * d))?)?;
    *keep = tail;
    y.reshape((b, t, g, d))
}

impl CanonBlock {
    /// Each convolution of block l with the name of what it reads (`A{l}` the attention input,
    /// `B{l}.q` its queries, `M{l}` the MLP input, `D{l}.gate` its gate projection, …).
    fn convs(&self, l: usize) -> Vec<(String, &CausalConv)> {
        let mut out = Vec::new();
        out.extend(self.a.iter().map(|c| (format!("A{l}"), c)));
        if let Some([q, k, v]) = &self.b {
            out.extend([
                (format!("B{l}.q"), q),
                (format!("B{l}.k"), k),
                (format!("B{l}.v"), v),
            ]);
        }
        out.extend(self.c.iter().map(|c| (format!("M{l}"), c)));
        if let Some([g, u]) = &self.d {
            out.extend([(format!("D{l}.gate"), g), (format!("D{l}.up"), u)]);
        }
        out
    }
}

/// While tracing: each convolution's mean |W| per tap over its channels, (1,1,k), with the taps
/// named by the token they read (`t-3` … `t`) — how far back each site looks (`harness analyze`'s
/// mixing heatmap).
fn record_taps(net: &mut dyn Layers, l: usize, cb: &CanonBlock) -> Result<()> {
    for (reader, conv) in cb.convs(l) {
        let k = conv.k();
        let taps = conv.w.abs()?.mean(0)?.reshape((1, 1, k))?;
        net.record_mixing(&taps, &|| {
            let names = (0..k)
                .map(|j| match k - 1 - j {
                    0 => "t".to_string(),
                    back => format!("t-{back}"),
                })
                .collect();
            (reader.clone(), names)
        });
    }
    Ok(())
}

impl Connection for CanonNet {
    fn run(&self, net: &mut dyn Layers, mut x: Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        for (l, cb) in self.blocks.iter().enumerate() {
            if net.tracing() {
                record_taps(net, l, cb)?;
            }
            // Attention: A on its input, B on q, k, v.
            let mut h = net.attn_norm(l, &x)?; // (B,T,D)
            if let Some(a) = &cb.a {
                h = apply(net, l, a, &h)?;
            }
            let attn = match &cb.b {
                None => net.attn_qkv(l, [&h, &h, &h], &mut plain_kv)?,
                Some([cq, ck, cv]) => {
                    let (pq, pk, pv) = (
                        cq.past(net, l, batch)?,
                        ck.past(net, l, batch)?,
                        cv.past(net, l, batch)?,
                    );
                    let (mut tq, mut tk, mut tv) = (None, None, None);
                    let mut q_route = |q: Tensor| heads(cq, pq.as_ref(), q, &mut tq); // (B,T,H,d_h)
                    let mut kv_route = |k: Tensor, v: Tensor| {
                        let k = heads(ck, pk.as_ref(), k, &mut tk)?; // (B,T,R,d_h)
                        let v = heads(cv, pv.as_ref(), v, &mut tv)?;
                        plain_kv(k, v)
                    };
                    let y = net.attn_hooked(l, [&h, &h, &h], &mut q_route, &mut kv_route)?;
                    for (conv, tail) in [(cq, tq), (ck, tk), (cv, tv)] {
                        if let Some(tail) = tail {
                            net.keep_past(l, conv.site, tail);
                        }
                    }
                    y
                }
            };
            x = (x + attn)?; // (B,T,D)
                             // MLP: C on its input, D on gate and up.
            let mut h = net.mlp_norm(l, &x)?;
            if let Some(c) = &cb.c {
                h = apply(net, l, c, &h)?;
            }
            let y = match &cb.d {
                None => net.mlp_hooked(l, &h, &mut plain_gate_up)?,
                Some([cg, cu]) => {
                    let (pg, pu) = (cg.past(net, l, batch)?, cu.past(net, l, batch)?);
                    let (mut tg, mut tu) = (None, None);
                    let mut route = |g: Tensor, u: Tensor| {
                        let (g, tail_g) = cg.forward(pg.as_ref(), &g)?; // (B,T,F)
                        let (u, tail_u) = cu.forward(pu.as_ref(), &u)?;
                        (tg, tu) = (tail_g, tail_u);
                        Ok((g, u))
                    };
                    let y = net.mlp_hooked(l, &h, &mut route)?;
                    for (conv, tail) in [(cg, tg), (cu, tu)] {
                        if let Some(tail) = tail {
                            net.keep_past(l, conv.site, tail);
                        }
                    }
                    y
                }
            };
            x = (x + y)?; // (B,T,D)
            net.record(&x);
        }
        Ok(x)
    }
}

/// The block convolutions `cfg` asks for, their kernels taken from `vb` (the model's root).
fn build_block(cfg: &Config, vb: &VarBuilder, l: usize, backend: Backend) -> Result<CanonBlock> {
    let k = cfg.setting(KERNEL);
    let kernel = |site: Site| -> Result<Option<Tensor>> {
        match site.on(cfg) {
            true => Ok(Some(
                vb.pp("layers")
                    .pp(l)
                    .pp(site.param())
                    .get((site.channels(cfg), k), "weight")?,
            )),
            false => Ok(None),
        }
    };
    let conv = |w: &Tensor, from: usize, n: usize, site: &'static str| -> Result<CausalConv> {
        Ok(CausalConv {
            w: w.narrow(0, from, n)?,
            site,
            backend,
        })
    };
    let (q, kv, f) = (
        cfg.n_heads * cfg.head_dim(),
        cfg.n_kv_heads * cfg.head_dim(),
        cfg.d_ff,
    );
    Ok(CanonBlock {
        a: kernel(Site::A)?
            .map(|w| conv(&w, 0, cfg.d_model, "canon_a"))
            .transpose()?,
        b: kernel(Site::B)?
            .map(|w| -> Result<[CausalConv; 3]> {
                Ok([
                    conv(&w, 0, q, "canon_b.q")?,
                    conv(&w, q, kv, "canon_b.k")?,
                    conv(&w, q + kv, kv, "canon_b.v")?,
                ])
            })
            .transpose()?,
        c: kernel(Site::C)?
            .map(|w| conv(&w, 0, cfg.d_model, "canon_c"))
            .transpose()?,
        d: kernel(Site::D)?
            .map(|w| -> Result<[CausalConv; 2]> {
                Ok([
                    conv(&w, 0, f, "canon_d.gate")?,
                    conv(&w, f, f, "canon_d.up")?,
                ])
            })
            .transpose()?,
    })
}

/// Channels of all convolutions of one block under `cfg`.
fn channels_per_block(cfg: &Config) -> usize {
    Site::ALL
        .iter()
        .filter(|s| s.on(cfg))
        .map(|s| s.channels(cfg))
        .sum()
}

fn is_canon(name: &str) -> bool {
    Site::ALL
        .iter()
        .any(|s| name.ends_with(&format!(".{}.weight", s.param())))
}

impl VariantDef for Canon {
    fn name(&self) -> &'static str {
        "canon"
    }
    fn summary(&self) -> &'static str {
        "Canon layers (Allen-Zhu 2025): residual causal depthwise convs (k = 4) at A, B, C, D"
    }
    fn settings(&self) -> &'static [VariantSetting] {
        &SETTINGS
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        if cfg.setting(POSITIONS) == 0 || cfg.setting(POSITIONS) > 0b1111 {
            candle_core::bail!("canon_positions must name some of A, B, C, D");
        }
        if cfg.setting(KERNEL) == 0 {
            candle_core::bail!("canon_kernel must be at least 1");
        }
        Ok(())
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        self.validate(cfg)?;
        let blocks = (0..cfg.n_layers)
            .map(|l| build_block(cfg, vb, l, backend))
            .collect::<Result<_>>()?;
        Ok(Arc::new(CanonNet { blocks }))
    }
    fn init(&self, name: &str, shape: &Shape, rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !is_canon(name) {
            return None;
        }
        Some(shape.dims2().map(|(c, k)| {
            let bound = 1.0 / (k as f64).sqrt(); // PyTorch's Conv1d default, fan-in k
            (0..c * k)
                .map(|_| bound * (2.0 * rng.gen::<f64>() - 1.0))
                .collect()
        }))
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        is_canon(name).then_some(ParamGroup::Decay)
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        (cfg.n_layers * cfg.setting(KERNEL) * channels_per_block(cfg)) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let c = (cfg.n_layers * channels_per_block(cfg) * seq_len) as u64; // T·C over all sites
        let k = cfg.setting(KERNEL) as u64;
        ExtraFlops {
            router: 0,
            depth: per_mac(mode) * c * k,
            elementwise: match mode {
                FlopMode::Fvcore => c as i64, // the residual adds
                _ => 0,
            },
        }
    }
}
