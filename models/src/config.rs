//! Model configuration: the serde boundary between the harness and the model code.

use serde::{Deserialize, Serialize};

/// Which depth-connection scheme a model uses. Everything else is the shared LLaMA-style skeleton.
///
/// Every variant is a plain unit variant (the enum stays `Copy`); knobs that the papers vary are
/// part of the name (`lime-last-2`: j = 2). [`Variant::name`] and [`Variant::from_name`]
/// round-trip, and the serde name is the same string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Baseline: pre-norm decoder, RoPE attention, SwiGLU MLP.
    Llama,
    /// LIMe, static router over the pre-RoPE K/V buffer of all earlier layers.
    Lime,
    /// LIMe with a per-token correction of the router (our extension; starts as `Lime`).
    LimeDynamic,
    /// Router ablation: fixed uniform average over the layers of the buffer, per kv head; no
    /// trainable router.
    LimeAvg,
    /// Router ablation: only the last j = 2 earlier layers plus the current one are routed.
    #[serde(rename = "lime-last-2")]
    LimeLast2,
    /// Router ablation: only the first j = 2 layers plus the current one are routed.
    #[serde(rename = "lime-first-2")]
    LimeFirst2,
    /// Router ablation: kv head r of layer l mixes only kv head r of the layers so far.
    LimeSameHead,
    /// Router ablation: one weight per channel (d_h of them) instead of one per head pair.
    LimePerDim,
    /// Router ablation: the whole router U(−b, b), no identity block for the current layer.
    LimeRandomInit,
    /// DenseFormer (Pagliardini et al. 2024): depth-weighted average after every block.
    #[serde(rename = "denseformer")]
    DenseFormer,
    /// Hyper-Connections (Zhu et al. 2024), dynamic, n = 4 residual streams.
    Hyper,
    /// Hyper-Connections without the dynamic (per-token) part.
    HyperStatic,
    /// ResFormer (Zhou et al. 2024): value residual V_l ← ½V_0 + ½V_l for l ≥ 1.
    #[serde(rename = "resformer")]
    ResFormer,
}

/// Which source layers a windowed LIMe router (`lime-last-j`, `lime-first-j`) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimeWindow {
    /// Layers l−j ..= l (the last j earlier layers and the current one).
    Last(usize),
    /// Layers 0 .. j and the current layer l.
    First(usize),
}

impl Variant {
    pub const ALL: [Variant; 13] = [
        Variant::Llama,
        Variant::Lime,
        Variant::LimeDynamic,
        Variant::LimeAvg,
        Variant::LimeLast2,
        Variant::LimeFirst2,
        Variant::LimeSameHead,
        Variant::LimePerDim,
        Variant::LimeRandomInit,
        Variant::DenseFormer,
        Variant::Hyper,
        Variant::HyperStatic,
        Variant::ResFormer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Llama => "llama",
            Variant::Lime => "lime",
            Variant::LimeDynamic => "lime-dynamic",
            Variant::LimeAvg => "lime-avg",
            Variant::LimeLast2 => "lime-last-2",
            Variant::LimeFirst2 => "lime-first-2",
            Variant::LimeSameHead => "lime-same-head",
            Variant::LimePerDim => "lime-per-dim",
            Variant::LimeRandomInit => "lime-random-init",
            Variant::DenseFormer => "denseformer",
            Variant::Hyper => "hyper",
            Variant::HyperStatic => "hyper-static",
            Variant::ResFormer => "resformer",
        }
    }

    pub fn from_name(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    /// Whether the attention layers carry a LIMe router (the K/V buffer is routed).
    pub fn is_lime(self) -> bool {
        matches!(
            self,
            Variant::Lime
                | Variant::LimeDynamic
                | Variant::LimeAvg
                | Variant::LimeLast2
                | Variant::LimeFirst2
                | Variant::LimeSameHead
                | Variant::LimePerDim
                | Variant::LimeRandomInit
        )
    }

    /// The source window of `lime-last-j` / `lime-first-j`.
    pub fn lime_window(self) -> Option<LimeWindow> {
        match self {
            Variant::LimeLast2 => Some(LimeWindow::Last(2)),
            Variant::LimeFirst2 => Some(LimeWindow::First(2)),
            _ => None,
        }
    }

    /// Whether the residual stream is a set of Hyper-Connection streams.
    pub fn is_hyper(self) -> bool {
        matches!(self, Variant::Hyper | Variant::HyperStatic)
    }
}

/// Decoder hyper-parameters. `d_model` must be divisible by `n_heads`, and `n_heads` by `n_kv_heads`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub variant: Variant,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when `< n_heads`).
    pub n_kv_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: usize,
    /// Share the embedding matrix with the LM head.
    pub tie_embeddings: bool,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl Config {
    /// The common shape: multi-head attention (as many kv heads as heads), SwiGLU width
    /// 4·d_model, untied LM head, RoPE θ 10⁴, RMSNorm ε 10⁻⁵. Adjust with the `with_*` methods
    /// or struct update syntax.
    pub fn mha(
        variant: Variant,
        vocab_size: usize,
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
    ) -> Self {
        Self {
            variant,
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            d_ff: 4 * d_model,
            tie_embeddings: false,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    /// Grouped-query attention with `n` kv heads.
    pub fn with_kv_heads(mut self, n: usize) -> Self {
        self.n_kv_heads = n;
        self
    }

    /// SwiGLU hidden width `n`.
    pub fn with_d_ff(mut self, n: usize) -> Self {
        self.d_ff = n;
        self
    }

    /// The same config for another variant.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}
