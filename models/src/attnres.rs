//! Attention Residuals (Kimi Team 2026, arXiv 2603.15031; code MoonshotAI/Attention-Residuals):
//! the residual stream is replaced by softmax attention over depth. Every sub-layer (attention and
//! MLP separately) reads a softmax-weighted sum of *sources* — the embedding and earlier
//! sub-layer outputs (`attnres`), or the embedding, completed block sums and the current block's
//! partial sum (`attnres-block`) — with weights from a learned per-sub-layer pseudo-query dotted
//! with the RMS-normalised sources (softmax over depth, per token).
//!
//! ```text
//! one AttnRes op (pseudo-query w (D,), key gain g (D,)) over n sources v_0 … v_{n−1}, each (B,T,D):
//!   k_i   = RMSNorm_g(v_i)                        (B,T,D)   keys = normalised values
//!   α_i   = softmax_i(w · k_i)                    (B,T)     over depth i, per token
//!   h     = Σ_i α_i v_i                           (B,T,D)
//!
//! attnres (Full AttnRes), 2L sub-layers f_s (s = 2l: Attn_l∘attn_norm_l, s = 2l+1: MLP_l∘mlp_norm_l):
//!   v_0 = embed(ids);  for s = 0 … 2L−1:  v_{s+1} = f_s(AttnRes_s(v_0 … v_s))
//!   x_L = AttnRes_out(v_0 … v_{2L})  → final norm → LM head
//!
//! attnres-block (Block AttnRes, S = cfg.attnres_block decoder layers per block, 2S sub-layers):
//!   sources = [b_0 = embedding, b_1 … b_k completed block sums, p = the current block's partial
//!   sum of sub-layer outputs] (p only when the block has begun); every sub-layer reads
//!   AttnRes(sources) and adds its output to p; at the start of layer l with l mod S = 0 the
//!   partial sum (at l = 0: the embedding) becomes a completed source b.
//!   x_L = AttnRes_out(sources after the last layer)
//! ```
//!
//! Source counts (what the FLOPs count, checked against the forward pass at every op):
//! `attnres`: sub-layer s reads s+1 sources, the output op 2L+1. `attnres-block`: the attention
//! of layer l reads ⌊l/S⌋+1 sources when l mod S = 0, else ⌊l/S⌋+2; its MLP ⌊l/S⌋+2; the output
//! op ⌊(L−1)/S⌋+2.
//!
//! Init (paper): pseudo-queries w = 0 (uniform weights over the sources at init), key norm gains
//! g = 1 (an RMSNorm with weight, the `attn_res_norm`/`mlp_res_norm` of the reference code).
//! Optimizer: [`ParamGroup::NoDecay`], base lr (the paper gives no group of their own; decay
//! would pull w toward uniform mixing and g toward 0).
//!
//! | name (per block l; `attnres_mlp` likewise)    | shape | init |
//! |-----------------------------------------------|-------|------|
//! | `layers.{l}.attnres_attn.query`, l ≥ 1        | (D,)  | 0    |
//! | `layers.{l}.attnres_attn.key_gain`, l ≥ 1     | (D,)  | 1    |
//! | `layers.{l}.attnres_mlp.query`                | (D,)  | 0    |
//! | `layers.{l}.attnres_mlp.key_gain`             | (D,)  | 1    |
//! | `layers.{L−1}.attnres_out.query`              | (D,)  | 0    |
//! | `layers.{L−1}.attnres_out.key_gain`           | (D,)  | 1    |
//!
//! Parameters: 2L ops of 2D each, **4·L·D** (both variants).
//!
//! **Deviations (documented):**
//! - The first sub-layer (layer 0's attention) has a single source, the embedding, for which the
//!   softmax is 1 whatever w and g: its op has no effect and no gradient, so we do not create its
//!   two vectors (the paper's count would be 2D more).
//! - The paper defines the sub-layer inputs h_l; the input of the final norm is not spelled out
//!   in the equations. We form it by one more AttnRes op (`attnres_out`, own w and g) over all
//!   sources, the same rule as every sub-layer (a plain sum would reintroduce the unit-weight
//!   accumulation the method removes).
//! - Key-norm eps is the skeleton's `norm_eps`.
//!
//! **Neutral setting (exact reduction):** every w = 0 and `norm_eps` = 0. Then every op is the
//! mean of its sources, and the sources always sum to llama's residual stream (the embedding plus
//! every sub-layer output so far: `attnres` keeps them apart, `attnres-block` sums them per
//! block). So each sub-layer reads x/n, where x is llama's residual stream, and its pre-norm
//! RMSNorm (scale-invariant when eps = 0) gives exactly llama's normalised input; likewise the
//! final norm. At init (w = 0) with eps = 0 both variants equal llama — tested. With eps > 0 the
//! difference is eps·n² in the norm's denominator.
//!
//! FLOPs (causal/full, 2 per MAC): per op with n sources and per token, logits n·D and weighted sum
//! n·D MACs: `depth` = 2 · T · 2D · Σ_ops n. Full AttnRes: Σ_ops n = (2L+1)(L+1) − 1. fvcore mode
//! (our extension of the Table 8 inventory, not checked against a trace): per op the key RMSNorm
//! with gain n·(5·T·D + 7·T) and the softmax n·T; minus the skeleton's residual adds (2·T·D per
//! block); plus, for `attnres-block`, one T·D add per sub-layer output added to a non-empty
//! partial sum.
//!
//! Mixing is per token, so the KV cache needs nothing extra. Residual memory is ×(2L+1) sources
//! for `attnres`, ×(L/S + 2) for `attnres-block`.

use std::sync::Arc;

use candle_core::{bail, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::accounting::{per_mac, FlopMode};
use crate::init::ParamGroup;
use crate::ops::{self, Backend};
use crate::variant::{plain_kv, Config, Connection, ExtraFlops, Layers, Variant, VariantDef};

/// `attnres` (`block: false`, Full AttnRes) and `attnres-block` (Block AttnRes).
pub struct AttnRes {
    block: bool,
}

impl Variant {
    pub const ATTNRES: Variant = Variant::new(&AttnRes { block: false });
    pub const ATTNRES_BLOCK: Variant = Variant::new(&AttnRes { block: true });
}

/// Where one AttnRes op sits: the input of a sub-layer, or of the final norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Attn(usize),
    Mlp(usize),
    Out,
}

/// The number of sources each op reads, in forward order (layer 0's attention first, the
/// output op last), and the number of additions into a non-empty partial block sum
/// (`attnres-block`; 0 for `attnres`). What [`VariantDef::extra_flops`] counts; the forward pass
/// checks every op against it.
pub fn source_counts(cfg: &Config, block: bool) -> (Vec<(Op, usize)>, usize) {
    let l_n = cfg.n_layers;
    let mut ops = Vec::with_capacity(2 * l_n + 1);
    let mut adds = 0;
    if !block {
        for l in 0..l_n {
            ops.push((Op::Attn(l), 2 * l + 1));
            ops.push((Op::Mlp(l), 2 * l + 2));
        }
        ops.push((Op::Out, 2 * l_n + 1));
        return (ops, adds);
    }
    // Simulate the source list: `done` completed sources, `partial` whether a partial sum exists.
    let s = cfg.setting(BLOCK).max(1);
    let (mut done, mut partial) = (0usize, true); // the embedding starts as the partial
    for l in 0..l_n {
        if l % s == 0 {
            done += 1; // the partial sum (the embedding at l = 0) becomes a completed source
            partial = false;
        }
        ops.push((Op::Attn(l), done + partial as usize));
        adds += partial as usize;
        partial = true;
        ops.push((Op::Mlp(l), done + 1));
        adds += 1;
    }
    ops.push((Op::Out, done + partial as usize));
    (ops, adds)
}

/// One AttnRes op: pseudo-query w (D,) and key-norm gain g (D,).
#[derive(Clone, Debug)]
pub struct AttnResOp {
    /// w as (D, 1).
    query: Tensor,
    /// g (D,).
    key_gain: Tensor,
    eps: f64,
    backend: Backend,
}

impl AttnResOp {
    pub fn new(cfg: &Config, vb: VarBuilder, backend: Backend) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            query: vb.get(d, "query")?.reshape((d, 1))?,
            key_gain: vb.get(d, "key_gain")?,
            eps: cfg.norm_eps,
            backend,
        })
    }

    /// Σ_i softmax_i(w · RMSNorm_g(v_i)) v_i over `sources` (each (B,T,D)) → (B,T,D), and
    /// the weights α (B,T,n).
    pub fn mix(&self, sources: &[&Tensor]) -> Result<(Tensor, Tensor)> {
        let v = Tensor::stack(sources, 2)?; // (B,T,n,D)
        let k = ops::rms_norm(self.backend, &v, &self.key_gain, self.eps)?; // (B,T,n,D)
        let logits = k.broadcast_matmul(&self.query)?; // (B,T,n,1)
        let alpha = candle_nn::ops::softmax(&logits, 2)?.transpose(2, 3)?; // (B,T,1,n) over depth
        let y = alpha.matmul(&v)?.squeeze(2)?; // (B,T,1,n)·(B,T,n,D) → (B,T,D)
        Ok((y, alpha.squeeze(2)?))
    }
}

/// The ops of one model, in forward order, each with its expected source count.
#[derive(Debug)]
struct DepthAttention {
    /// `attnres_attn` of layer l (None for l = 0: a single source), `attnres_mlp` of layer l.
    attn: Vec<Option<AttnResOp>>,
    mlp: Vec<AttnResOp>,
    out: AttnResOp,
    /// Source count per op ([`source_counts`]), checked at run time.
    counts: Vec<(Op, usize)>,
    block: Option<usize>,
}

impl DepthAttention {
    /// Applies op `which`, after checking its source count against [`source_counts`], and
    /// records its weights in the trace.
    fn apply(&self, which: Op, sources: &[&Tensor], net: &mut dyn Layers) -> Result<Tensor> {
        let labels = || {
            let consumer = match which {
                Op::Attn(l) => format!("A{l}"),
                Op::Mlp(l) => format!("M{l}"),
                Op::Out => "out".to_string(),
            };
            // Sources: the embedding, then every sub-layer output (`A0`, `M0`, `A1`, …) or,
            // per block of `attnres_block` layers, the block's (partial) sum `b1`, `b2`, ….
            let source = |i: usize| match (i, self.block) {
                (0, _) => "emb".to_string(),
                (i, Some(_)) => format!("b{i}"),
                (i, None) if i % 2 == 1 => format!("A{}", i / 2),
                (i, None) => format!("M{}", i / 2 - 1),
            };
            (consumer, (0..sources.len()).map(source).collect())
        };
        if !self.counts.contains(&(which, sources.len())) {
            bail!(
                "attnres: {which:?} reads {} sources, the FLOP count assumes {:?}",
                sources.len(),
                self.counts.iter().find(|(o, _)| *o == which)
            );
        }
        let op = match which {
            Op::Attn(l) => self.attn[l].as_ref(),
            Op::Mlp(l) => Some(&self.mlp[l]),
            Op::Out => Some(&self.out),
        };
        match op {
            Some(op) => {
                let (y, alpha) = op.mix(sources)?;
                net.record_mixing(&alpha, &labels);
                Ok(y)
            }
            None if sources.len() == 1 => {
                if net.tracing() {
                    let one = Tensor::ones((1, 1, 1), sources[0].dtype(), sources[0].device())?;
                    net.record_mixing(&one, &labels);
                }
                Ok(sources[0].clone())
            }
            None => bail!(
                "attnres: {which:?} has no weights but {} sources",
                sources.len()
            ),
        }
    }
}

/// Σ of tensors (the trace's residual-stream equivalent).
fn sum_all(xs: &[&Tensor]) -> Result<Tensor> {
    let mut acc = xs[0].clone();
    for x in &xs[1..] {
        acc = (acc + *x)?;
    }
    Ok(acc)
}

impl Connection for DepthAttention {
    fn run(&self, net: &mut dyn Layers, x: Tensor) -> Result<Tensor> {
        match self.block {
            None => {
                let mut src = vec![x]; // v_0 …, each (B,T,D)
                for l in 0..net.len() {
                    let h = self.apply(Op::Attn(l), &src.iter().collect::<Vec<_>>(), net)?;
                    src.push(net.attn(l, &h, &mut plain_kv)?);
                    let h = self.apply(Op::Mlp(l), &src.iter().collect::<Vec<_>>(), net)?;
                    src.push(net.mlp(l, &h)?);
                    if net.tracing() {
                        net.record(&sum_all(&src.iter().collect::<Vec<_>>())?);
                    }
                }
                self.apply(Op::Out, &src.iter().collect::<Vec<_>>(), net)
            }
            Some(s) => {
                let mut done: Vec<Tensor> = Vec::new(); // b_0 = embedding, completed block sums
                let mut partial = Some(x); // the current block's partial sum
                let with = |done: &[Tensor], p: &Option<Tensor>| -> Vec<Tensor> {
                    done.iter().chain(p.iter()).cloned().collect()
                };
                for l in 0..net.len() {
                    if l % s == 0 {
                        done.extend(partial.take());
                    }
                    let src = with(&done, &partial);
                    let h = self.apply(Op::Attn(l), &src.iter().collect::<Vec<_>>(), net)?;
                    let y = net.attn(l, &h, &mut plain_kv)?;
                    let p = match partial.take() {
                        Some(p) => (p + y)?,
                        None => y,
                    };
                    let src = with(&done, &Some(p.clone()));
                    let h = self.apply(Op::Mlp(l), &src.iter().collect::<Vec<_>>(), net)?;
                    let p = (p + net.mlp(l, &h)?)?;
                    partial = Some(p);
                    if net.tracing() {
                        let src = with(&done, &partial);
                        net.record(&sum_all(&src.iter().collect::<Vec<_>>())?);
                    }
                }
                let src = with(&done, &partial);
                self.apply(Op::Out, &src.iter().collect::<Vec<_>>(), net)
            }
        }
    }
}

fn is_own(name: &str) -> bool {
    name.contains(".attnres_attn.")
        || name.contains(".attnres_mlp.")
        || name.contains(".attnres_out.")
}

/// Block AttnRes's one setting: decoder layers per block (`--model-set attnres_block=S`).
pub const BLOCK: &str = "attnres_block";

/// Its declaration: S = 2 by default (8 blocks at the 16-layer paper-1b shape, the block count the
/// AttnRes paper recommends), S ≥ 1.
const BLOCK_SETTINGS: [crate::VariantSetting; 1] = [crate::VariantSetting {
    key: BLOCK,
    default: 2,
    min: 1,
    letters: "",
    about: "decoder layers per block",
}];

impl VariantDef for AttnRes {
    fn name(&self) -> &'static str {
        if self.block {
            "attnres-block"
        } else {
            "attnres"
        }
    }
    fn summary(&self) -> &'static str {
        if self.block {
            "Block AttnRes (Kimi 2026): softmax over depth of block sums, S = attnres_block layers"
        } else {
            "Attention Residuals (Kimi 2026): softmax over depth of every earlier sub-layer output"
        }
    }
    fn settings(&self) -> &'static [crate::VariantSetting] {
        match self.block {
            true => &BLOCK_SETTINGS,
            false => &[],
        }
    }
    fn build(
        &self,
        cfg: &Config,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Arc<dyn Connection>> {
        if self.block && cfg.setting(BLOCK) == 0 {
            bail!("attnres-block: attnres_block (layers per block) must be ≥ 1");
        }
        let layer = |l: usize| vb.pp("layers").pp(l);
        let attn = (0..cfg.n_layers)
            .map(|l| match l {
                0 => Ok(None),
                _ => AttnResOp::new(cfg, layer(l).pp("attnres_attn"), backend).map(Some),
            })
            .collect::<Result<_>>()?;
        let mlp = (0..cfg.n_layers)
            .map(|l| AttnResOp::new(cfg, layer(l).pp("attnres_mlp"), backend))
            .collect::<Result<_>>()?;
        let out = AttnResOp::new(cfg, layer(cfg.n_layers - 1).pp("attnres_out"), backend)?;
        Ok(Arc::new(DepthAttention {
            attn,
            mlp,
            out,
            counts: source_counts(cfg, self.block).0,
            block: self.block.then_some(cfg.setting(BLOCK)),
        }))
    }
    fn init(&self, name: &str, shape: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        if !is_own(name) {
            return None;
        }
        let n = shape.elem_count();
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "query" => Ok(vec![0.0; n]),
            "key_gain" => Ok(vec![1.0; n]),
            _ => Err(candle_core::Error::Msg(format!(
                "no init rule for parameter `{name}`"
            ))),
        })
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        is_own(name).then_some(ParamGroup::NoDecay)
    }
    /// 2L ops (every sub-layer but the first, and the output op) of w and g, D each.
    fn extra_params(&self, cfg: &Config) -> i64 {
        4 * (cfg.n_layers * cfg.d_model) as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        let (t, d) = (seq_len as u64, cfg.d_model as u64);
        let (ops, adds) = source_counts(cfg, self.block);
        // Ops with one source (layer 0's attention) have no weights and cost nothing.
        let n_sum: u64 = ops
            .iter()
            .filter(|(_, n)| *n > 1)
            .map(|(_, n)| *n as u64)
            .sum();
        let depth = per_mac(mode) * t * 2 * d * n_sum;
        let elementwise = match mode {
            FlopMode::Causal | FlopMode::Full => 0,
            FlopMode::Fvcore => {
                let per_source = (5 * t * d + 7 * t + t) as i64; // key RMSNorm with gain, softmax
                let residual_adds = 2 * (cfg.n_layers as u64 * t * d) as i64;
                n_sum as i64 * per_source - residual_adds + (adds as u64 * t * d) as i64
            }
        };
        ExtraFlops {
            router: 0,
            depth,
            elementwise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_counts_of_block_attnres() {
        let c = Config::mha(Variant::ATTNRES_BLOCK, 11, 8, 5, 2);
        let c = c.with_setting(BLOCK, 2);
        let (ops, adds) = source_counts(&c, true);
        let n: Vec<usize> = ops.iter().map(|(_, n)| *n).collect();
        // l=0: [e] | [e,p]; l=1: [e,p] | [e,p]; l=2: [e,B0] | [e,B0,p]; l=3: [e,B0,p] | …; l=4: [e,B0,B1] …
        assert_eq!(n, vec![1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4]);
        assert_eq!(adds, 5 * 2 - 3); // every sub-layer but the first of each of the 3 blocks
    }
}
