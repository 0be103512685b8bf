//! The contract between the shared decoder and a model variant, and the config both read.
//!
//! - [`Config`]: the decoder's shape and the variant (by name) — the serde boundary between the
//!   harness and the model code.
//! - [`VariantDef`]: one variant — its name, parameters and their init, its optimizer groups
//!   ([`ParamGroup`]), its parameter and FLOP counts ([`ExtraFlops`] in a [`FlopMode`]), its own
//!   settings ([`VariantSetting`]) and the [`Connection`] it builds — behind a copyable handle,
//!   [`Variant`].
//! - [`Connection`]: the loop over the decoder's blocks, which it drives through [`Layers`]
//!   (a block, or its sub-layers, with keys and values routed by a [`KvRoute`]).
//!
//! This module names no other module of the crate but [`crate::ops`]: the decoder
//! (`decoder.rs`) implements [`Layers`] and runs a [`Connection`]; each variant's file implements
//! [`VariantDef`]; the registry (`registry.rs`, the top of the crate) lists the built-ins and
//! resolves names ([`Variant::from_name`], deserialisation). `tests/layering.rs` keeps the
//! crate's imports one way.
//!
//! Every built-in variant lives in its own file (`llama.rs`, `lime.rs`, `lime_dynamic.rs`,
//! `lime_ablations.rs`, `denseformer.rs`, `hyper.rs`, `resformer.rs`, `attnres.rs`,
//! `muddformer.rs`, `mhc.rs`, `canon.rs`, `dca.rs`, `laurel.rs`), which declares its
//! `Variant::NAME` constant; [`Variant::ALL`] (in
//! `registry.rs`) is the list of them. A variant defined outside this crate (a researcher's
//! experiment, a test) is made known with [`crate::register`], after which it is found by name
//! like the built-ins. Nothing else in the crate matches on variants.
//!
//! The contract a variant keeps (tested for every built-in, and for the toy variant of
//! `tests/models_variant.rs`): [`VariantDef::extra_params`] equals the element count of the
//! parameters its connection creates beyond llama's; every parameter it creates has an init rule
//! in [`VariantDef::init`]; its parameter names are under `layers.{l}.` and do not collide with
//! the skeleton's (`*.weight` of projections and norms).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize, Serializer};

use crate::ops::Backend;

// ------------------------------------------------------------------------------------------------
// The config
// ------------------------------------------------------------------------------------------------

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
    /// The variant's own settings ([`VariantDef::settings`]) where they differ from
    /// their defaults; left out of the serialised config when empty, so configs, run specs and
    /// run ids at the defaults are what they were before a variant declared a setting.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, usize>,
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
            settings: BTreeMap::new(),
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

    /// The same config for another variant, keeping only the settings that variant declares
    /// (at values other than their defaults).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        let given = std::mem::take(&mut self.settings);
        for (k, v) in given {
            self = self.with_setting(&k, v);
        }
        self
    }

    /// The declaration of one of the variant's settings.
    fn declared(&self, key: &str) -> Option<&'static VariantSetting> {
        self.variant.def().settings().iter().find(|s| s.key == key)
    }

    /// A setting of the variant: its value here, else the variant's declared default (0 for a
    /// key the variant does not declare).
    pub fn setting(&self, key: &str) -> usize {
        self.settings
            .get(key)
            .copied()
            .unwrap_or_else(|| self.declared(key).map_or(0, |s| s.default))
    }

    /// The same config with one setting of its variant: kept in the map only where it differs
    /// from the declared default; a key the variant does not declare is ignored (so `settings`
    /// only ever holds what the variant reads).
    pub fn with_setting(mut self, key: &str, value: usize) -> Self {
        match self.declared(key) {
            Some(s) if s.default == value => {
                self.settings.remove(key);
            }
            Some(_) => {
                self.settings.insert(key.to_string(), value);
            }
            None => {}
        }
        self
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

// ------------------------------------------------------------------------------------------------
// The variant
// ------------------------------------------------------------------------------------------------

/// Where a variant stands in the suite's comparisons: the harness's claims draw their families
/// from it (the rivals against llama, the router ablations against LIMe), so a new built-in joins
/// them by declaring it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The LLaMA-style baseline every rival is compared with.
    Baseline,
    /// Full static LIMe, the paper's model.
    Lime,
    /// One of the LIMe paper's router ablations (or its dynamic router), compared with LIMe.
    LimeAblation,
    /// Another paper's depth connection, compared with the baseline (the default).
    Rival,
}

/// A setting a variant declares beyond the shared shape: a `--model-set key=value` only the
/// variants that declare the key read (kept in [`Config::settings`] where it differs from its
/// default, so a run at the defaults keeps the id it had before the setting existed).
#[derive(Clone, Copy, Debug)]
pub struct VariantSetting {
    pub key: &'static str,
    pub default: usize,
    /// Smallest accepted value.
    pub min: usize,
    /// Non-empty for a set of named options: the value may be given as letters from this string
    /// (`--model-set canon_positions=AC`), stored as the bit mask Σ 2^i over the letters' indices
    /// i (A = 1, B = 2, C = 4, D = 8 for "ABCD"); [`VariantSetting::parse`].
    pub letters: &'static str,
    pub about: &'static str,
}

impl VariantSetting {
    /// The value of `--model-set key=text`: an integer ≥ `min` (below 2^letters.len() for a letter
    /// set), or for a letter set the letters themselves, each once.
    pub fn parse(&self, text: &str) -> std::result::Result<usize, String> {
        let n = self.letters.chars().count();
        let bound = (n > 0).then(|| (1usize << n) - 1);
        let expect = || {
            match bound {
            Some(max) => format!(
                "model key `{}` expects letters from `{}`, each at most once (or their bit mask, {}..={max}), got `{text}`",
                self.key, self.letters, self.min
            ),
            None => format!(
                "model key `{}` expects an integer >= {}, got `{text}`",
                self.key, self.min
            ),
        }
        };
        if let Ok(v) = text.parse::<usize>() {
            return match bound {
                Some(max) if v > max => Err(expect()),
                _ if v < self.min => Err(expect()),
                _ => Ok(v),
            };
        }
        if n == 0 || text.is_empty() {
            return Err(expect());
        }
        let mut mask = 0usize;
        for c in text.chars() {
            let i = self.letters.find(c).ok_or_else(expect)?;
            let bit = 1usize << self.letters[..i].chars().count();
            if mask & bit != 0 {
                return Err(expect());
            }
            mask |= bit;
        }
        if mask < self.min {
            return Err(expect());
        }
        Ok(mask)
    }

    /// A letter set's value as its letters (`5` → `AC` for "ABCD"); the number otherwise.
    pub fn show(&self, value: usize) -> String {
        if self.letters.is_empty() {
            return value.to_string();
        }
        self.letters
            .chars()
            .enumerate()
            .filter(|(i, _)| value >> i & 1 == 1)
            .map(|(_, c)| c)
            .collect()
    }
}

/// A variant's FLOPs beyond llama's for one sequence (see `accounting.rs` for the conventions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraFlops {
    /// Mixing of the attention inputs across depth (LIMe's router).
    pub router: u64,
    /// The variant's other added connections: across depth (DenseFormer's DWA,
    /// Hyper-Connections, DCA's GRNs), along the sequence (Canon's convolutions) or around the
    /// residual (LAuReL's low-rank map).
    pub depth: u64,
    /// Elementwise ops; counted in [`FlopMode::Fvcore`] only, and may be negative (HC's blocks
    /// have no residual adds).
    pub elementwise: i64,
}

/// One model variant (see the module docs). Implementations are plain `static` values.
pub trait VariantDef: std::any::Any + Send + Sync {
    /// The name on the command line, in configs and run specs (`lime`, `lime-last-2`, ...).
    fn name(&self) -> &'static str;
    /// One line for `harness models` and error messages.
    fn summary(&self) -> &'static str;
    /// Builds the variant's depth connection and creates its parameters (`vb` is the model's
    /// root, so names read `layers.{l}.…`).
    fn build(&self, cfg: &Config, vb: &VarBuilder, backend: Backend)
        -> Result<Arc<dyn Connection>>;
    /// Whether the connection runs packed (`pack.rs`): built from a var builder that
    /// hands out every parameter with a leading run axis (P, …) and fed run-major rows
    /// (P·B, T, D), it applies run p's parameters to run p's rows. `false` (the default) makes
    /// the harness train the variant's runs one after another.
    fn packable(&self) -> bool {
        false
    }
    /// Its own settings (none by default).
    fn settings(&self) -> &'static [VariantSetting] {
        &[]
    }
    /// Checks what its settings need of the shape (a rank at most `d_model`, …), so a bad
    /// combination fails when a run is specified, before anything is written or trained.
    fn validate(&self, _cfg: &Config) -> Result<()> {
        Ok(())
    }
    /// Its place in the suite's comparisons ([`Role::Rival`] unless it says otherwise).
    fn role(&self) -> Role {
        Role::Rival
    }
    /// Whether the blocks' RMSNorms carry a learned gain (Hyper-Connections' do not).
    fn norm_gain(&self) -> bool {
        true
    }
    /// The initial values of one of this variant's parameters, drawn from `rng` (already keyed by
    /// seed and name); `None` when `name` is not one of its parameters.
    fn init(&self, _name: &str, _shape: &Shape, _rng: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        None
    }
    /// The optimizer group of one of its parameters; `None` leaves the skeleton's rule.
    fn param_group(&self, _name: &str) -> Option<ParamGroup> {
        None
    }
    /// Parameters beyond llama's with the same `cfg` (negative where it removes some).
    fn extra_params(&self, cfg: &Config) -> i64;
    /// Forward FLOPs beyond llama's for one sequence of `seq_len` tokens.
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops;
}

/// What a variant builds into a model: the loop over the decoder blocks, and its mixing weights
/// for diagnostics.
pub trait Connection: fmt::Debug + Send + Sync {
    /// Runs the blocks of `net` over the embedding output `x` (B,T,D) and returns the input of
    /// the final norm (B,T,D). Each block's output is recorded with [`Layers::record`].
    fn run(&self, net: &mut dyn Layers, x: Tensor) -> Result<Tensor>;
    /// Heatmap rows (the paper's Figure 5 for LIMe): for each layer with mixing weights, the
    /// share of each source layer. Empty where the variant has none.
    fn heatmap(&self, _cfg: &Config) -> Result<Vec<Vec<f64>>> {
        Ok(Vec::new())
    }
    /// The static mixing matrices per layer (LIMe's W_l as dense (R, (l+1)·R) matrices,
    /// DenseFormer's α), for diagnostics and tests.
    fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// What a [`Connection`] drives: the decoder's blocks within one forward pass (the decoder's
/// implementation also carries the pass's RoPE tables, mask, decoding cache and trace).
pub trait Layers {
    /// The number of decoder blocks.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Block l's attention sub-layer without its residual: Attn_l(attn_norm_l(x)), (B,T,D),
    /// with the keys and values routed by `route`.
    fn attn(&mut self, l: usize, x: &Tensor, route: KvRoute) -> Result<Tensor>;
    /// Block l's attention norm: attn_norm_l(x), (B,T,D).
    fn attn_norm(&self, l: usize, x: &Tensor) -> Result<Tensor>;
    /// Block l's attention sub-layer on already-normalised, separate inputs of its query, key
    /// and value projections `[h_q, h_k, h_v]` (each (B,T,D)), without residual: (B,T,D).
    /// `attn(l, x, …)` is `attn_qkv(l, [h, h, h], …)` with h = attn_norm(x).
    fn attn_qkv(&mut self, l: usize, h: [&Tensor; 3], route: KvRoute) -> Result<Tensor>;
    /// Block l's MLP sub-layer without its residual: MLP_l(mlp_norm_l(x)), (B,T,D).
    fn mlp(&self, l: usize, x: &Tensor) -> Result<Tensor>;
    /// Block l's attention on separate normalised inputs (as [`Layers::attn_qkv`]), with a hook
    /// on the queries as well: `q_route` receives the queries (B,T,H,d_h) between the q
    /// projection and RoPE and returns those attention uses, same shape (Canon-B).
    /// `attn_qkv(l, h, route)` is `attn_hooked(l, h, &mut plain_q, route)`.
    fn attn_hooked(
        &mut self,
        l: usize,
        h: [&Tensor; 3],
        q_route: QRoute,
        route: KvRoute,
    ) -> Result<Tensor>;
    /// Block l's MLP norm: mlp_norm_l(x), (B,T,D).
    fn mlp_norm(&self, l: usize, x: &Tensor) -> Result<Tensor>;
    /// Block l's SwiGLU MLP on an already-normalised input h (B,T,D), without residual, with a
    /// hook between the gate/up projections and `silu(gate)·up` (Canon-D): (B,T,D).
    /// `mlp(l, x)` is `mlp_hooked(l, &mlp_norm(l, x), &mut plain_gate_up)`.
    fn mlp_hooked(&self, l: usize, h: &Tensor, route: GateUpRoute) -> Result<Tensor>;
    /// The inputs of one of block l's causal sequence mixers (`site` names it; Canon's short
    /// convolutions) at the `k` positions before this pass, (B,k,C): the decoding cache's, or
    /// zeros at the start of a sequence (a full forward pass, or an empty cache). The mixer
    /// hands back its input's last k positions with [`Layers::keep_past`].
    fn past(
        &mut self,
        l: usize,
        site: &'static str,
        batch: usize,
        channels: usize,
        k: usize,
    ) -> Result<Tensor>;
    /// Keeps `tail` (B,k,C), the last k inputs of block l's mixer `site` up to the end of this
    /// pass, for the next decoding step (a no-op without a cache).
    fn keep_past(&mut self, l: usize, site: &'static str, tail: Tensor);
    /// The whole pre-norm block l: `x += Attn(attn_norm(x)); x += MLP(mlp_norm(x))`.
    fn block(&mut self, l: usize, x: &Tensor, route: KvRoute) -> Result<Tensor> {
        let x = (x + self.attn(l, x, route)?)?; // (B,T,D)
        &x + self.mlp(l, &x)? // (B,T,D)
    }
    /// Whether per-layer hidden states are being recorded (`Model::forward_trace`).
    fn tracing(&self) -> bool;
    /// Records the residual stream after a block (the trace's `hidden`).
    fn record(&mut self, x: &Tensor);
    /// Records the per-token depth-mixing weights one consumer reads its input with (the
    /// trace's `mixing`): `weights` (B,T,S), or (1,1,S) where they do not vary per token, over
    /// S sources; `labels` (called only while tracing) names the consumer and the S sources.
    fn record_mixing(&mut self, weights: &Tensor, labels: &dyn Fn() -> (String, Vec<String>));
}

/// A variant's hook between the k/v projections and RoPE: receives the layer's keys and values
/// (B,T,R,d_h), pre-RoPE, and returns those attention uses, (B,R,T,d_h). [`plain_kv`] is llama's.
pub type KvRoute<'a> = &'a mut dyn FnMut(Tensor, Tensor) -> Result<(Tensor, Tensor)>;

/// llama's keys and values: unchanged, (B,T,R,d_h) → (B,R,T,d_h).
pub fn plain_kv(k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
    Ok((k.transpose(1, 2)?, v.transpose(1, 2)?))
}

/// A variant's hook on the queries between the q projection and RoPE: (B,T,H,d_h) in and out.
/// [`plain_q`] is llama's.
pub type QRoute<'a> = &'a mut dyn FnMut(Tensor) -> Result<Tensor>;

/// llama's queries: unchanged.
pub fn plain_q(q: Tensor) -> Result<Tensor> {
    Ok(q)
}

/// A variant's hook inside the SwiGLU MLP: receives the gate and up projections (each (B,T,F))
/// and returns those `silu(gate)·up` reads. [`plain_gate_up`] is llama's.
pub type GateUpRoute<'a> = &'a mut dyn FnMut(Tensor, Tensor) -> Result<(Tensor, Tensor)>;

/// llama's gate and up projections: unchanged.
pub fn plain_gate_up(gate: Tensor, up: Tensor) -> Result<(Tensor, Tensor)> {
    Ok((gate, up))
}

/// One consumer's depth-mixing weights in a trace ([`crate::decoder::Trace`]).
#[derive(Clone, Debug)]
pub struct Mixing {
    /// What reads the mix (`A2`: layer 2's attention input, `M2`: its MLP input, `B3.q`:
    /// MUDDFormer's query stream of block 3, `out`: the final norm's input).
    pub consumer: String,
    /// What each of the S weights multiplies (`emb`, `A0`, `B1`, a stream `s2`, …); for the
    /// depth-dense variants each consumer's sources are a prefix of the next one's.
    pub sources: Vec<String>,
    /// (B,T,S), or (1,1,S) for weights that do not depend on the token.
    pub weights: Tensor,
}

impl Mixing {
    /// The names of n residual streams as sources: `s0` … `s{n-1}`.
    pub fn streams(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }
}

/// FLOP-counting convention, see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlopMode {
    /// 2 FLOPs per MAC, matmuls only, causal attention (T(T+1)/2 pairs). Used for budgets.
    Causal,
    /// 2 FLOPs per MAC, matmuls only, full attention (T² pairs).
    Full,
    /// The paper's fvcore convention (1 per MAC, full attention, elementwise ops), Table 8.
    Fvcore,
}

impl FlopMode {
    pub const ALL: [FlopMode; 3] = [FlopMode::Causal, FlopMode::Full, FlopMode::Fvcore];
    pub fn name(self) -> &'static str {
        match self {
            FlopMode::Causal => "causal",
            FlopMode::Full => "full",
            FlopMode::Fvcore => "fvcore",
        }
    }
    pub fn from_name(s: &str) -> Option<FlopMode> {
        FlopMode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Optimizer parameter group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParamGroup {
    /// LIMe router weights (W_l, U_l and the ablations' routers): lr × [`crate::init::ROUTER_LR_MULT`], no
    /// weight decay.
    Router,
    /// Matrices (projections, untied LM head) and the dynamic Hyper-Connection weights: weight
    /// decay.
    Decay,
    /// Norm gains, the (possibly tied) embedding, static Hyper-Connection weights and DenseFormer
    /// α: no weight decay.
    NoDecay,
}

/// A model variant: a copyable handle on its [`VariantDef`], compared, hashed and serialised by
/// name.
#[derive(Clone, Copy)]
pub struct Variant(&'static dyn VariantDef);

impl Variant {
    pub const fn new(def: &'static dyn VariantDef) -> Self {
        Self(def)
    }

    pub fn def(self) -> &'static dyn VariantDef {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl PartialEq for Variant {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Variant {}

impl std::hash::Hash for Variant {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl fmt::Debug for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Variant {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}
