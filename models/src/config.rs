//! Model configuration: the serde boundary between the harness and the model code. The variant
//! is serialised by name ([`Variant`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::variant::Variant;

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
    /// The variant's own settings ([`crate::VariantDef::settings`]) where they differ from
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
    fn declared(&self, key: &str) -> Option<&'static crate::VariantSetting> {
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
