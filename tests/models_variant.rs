//! "How to add a model" (ARCHITECTURE.md), followed by a test: a toy depth-connection variant is
//! written in this one file and made known with one line (`models::register`), and then it is a
//! model like the built-ins — found by name, its parameters created, initialised and grouped by
//! its own rules, counted by the analytic accounting, reducing to llama at its neutral setting,
//! every weight receiving a gradient, and trained by the harness's main job.
//!
//! The toy: an embedding skip, `x_{l+1} = Block_l(x_l) + β_l · x_0` with one scalar β_l per
//! layer (init 0, so it starts as llama).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use models::accounting::{per_mac, FlopMode};
use models::{
    plain_kv, Backend, Config, Connection, ExtraFlops, Layers, ParamGroup, Variant, VariantDef,
};

// ---- the variant file ------------------------------------------------------------------------

/// `toy-skip`: every block adds β_l times the embedding output.
pub struct ToySkip;

pub const TOY_SKIP: Variant = Variant::new(&ToySkip);

#[derive(Debug)]
struct Skip {
    /// β_l, each (1,).
    beta: Vec<Tensor>,
}

impl Connection for Skip {
    fn run(&self, net: &mut dyn Layers, x: Tensor) -> Result<Tensor> {
        let x0 = x.clone(); // (B,T,D)
        let mut x = x;
        for (l, beta) in self.beta.iter().enumerate() {
            let y = net.block(l, &x, &mut plain_kv)?; // (B,T,D)
            x = (y + x0.broadcast_mul(beta)?)?;
            net.record(&x);
        }
        Ok(x)
    }

    fn mixing_weights(&self) -> Result<Vec<Tensor>> {
        Ok(self.beta.clone())
    }
}

impl VariantDef for ToySkip {
    fn name(&self) -> &'static str {
        "toy-skip"
    }
    fn summary(&self) -> &'static str {
        "test variant: x_{l+1} = Block_l(x_l) + beta_l x_0"
    }
    fn build(&self, cfg: &Config, vb: &VarBuilder, _: Backend) -> Result<Arc<dyn Connection>> {
        let beta = (0..cfg.n_layers)
            .map(|l| vb.pp("layers").pp(l).pp("skip").get(1, "beta"))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Skip { beta }))
    }
    fn init(&self, name: &str, shape: &Shape, _: &mut ChaCha8Rng) -> Option<Result<Vec<f64>>> {
        name.ends_with(".skip.beta")
            .then(|| Ok(vec![0.0; shape.elem_count()]))
    }
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        name.ends_with(".skip.beta").then_some(ParamGroup::NoDecay)
    }
    fn extra_params(&self, cfg: &Config) -> i64 {
        cfg.n_layers as i64
    }
    fn extra_flops(&self, cfg: &Config, seq_len: usize, mode: FlopMode) -> ExtraFlops {
        ExtraFlops {
            depth: per_mac(mode) * (cfg.n_layers * seq_len * cfg.d_model) as u64,
            ..ExtraFlops::default()
        }
    }
}

// ---- the one registry line, and the checks -----------------------------------------------------

fn register() {
    models::register(TOY_SKIP).unwrap();
}

fn toy_cfg() -> Config {
    Config::mha(TOY_SKIP, 19, 16, 3, 2).with_d_ff(24)
}

#[test]
fn a_registered_variant_is_found_by_name_and_serialised_by_name() {
    register();
    register(); // idempotent
    assert_eq!(Variant::from_name("toy-skip"), Some(TOY_SKIP));
    assert!(Variant::all().contains(&TOY_SKIP));
    let json = serde_json::to_string(&toy_cfg()).unwrap();
    assert!(json.contains("\"variant\":\"toy-skip\""), "{json}");
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, toy_cfg());
    // Another definition under a taken name is refused.
    assert!(models::register(Variant::new(&NotLlama)).is_err());
}

/// A second definition that claims the name `llama`.
struct NotLlama;

impl VariantDef for NotLlama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn summary(&self) -> &'static str {
        "impostor"
    }
    fn build(&self, c: &Config, vb: &VarBuilder, b: Backend) -> Result<Arc<dyn Connection>> {
        ToySkip.build(c, vb, b)
    }
    fn extra_params(&self, _: &Config) -> i64 {
        0
    }
    fn extra_flops(&self, _: &Config, _: usize, _: FlopMode) -> ExtraFlops {
        ExtraFlops::default()
    }
}

#[test]
fn the_toy_variant_is_counted_initialised_and_reduces_to_llama() -> anyhow::Result<()> {
    register();
    let cfg = toy_cfg();
    let (vm, model) = models::init_varmap(&cfg, 5, DType::F64, &Device::Cpu)?;
    assert_eq!(
        models::count_params(&vm) as u64,
        models::accounting::num_params(&cfg)
    );
    let vars = models::sorted_vars(&vm);
    let betas: Vec<&String> = vars
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".skip.beta"))
        .collect();
    assert_eq!(betas.len(), cfg.n_layers);
    for n in &betas {
        assert_eq!(models::param_group(TOY_SKIP, n), ParamGroup::NoDecay);
    }
    let llama_flops = models::accounting::forward_flops(
        &cfg.clone().with_variant(Variant::LLAMA),
        10,
        FlopMode::Causal,
    );
    assert_eq!(
        models::accounting::forward_flops(&cfg, 10, FlopMode::Causal),
        llama_flops + 2 * 3 * 10 * 16
    );

    // β = 0: exactly llama with the same (name-keyed) weights.
    let (_, llama) = models::init_varmap(
        &cfg.clone().with_variant(Variant::LLAMA),
        5,
        DType::F64,
        &Device::Cpu,
    )?;
    let ids = Tensor::from_vec((0..12u32).map(|i| i % 19).collect(), (2, 6), &Device::Cpu)?;
    let diff = (model.forward(&ids)? - llama.forward(&ids)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert_eq!(diff, 0.0);
    // β ≠ 0 changes the logits.
    for (n, v) in &vars {
        if n.ends_with(".skip.beta") {
            v.set(&Tensor::new(&[0.5f64], &Device::Cpu)?)?;
        }
    }
    let moved = (model.forward(&ids)? - llama.forward(&ids)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(moved > 1e-6);
    Ok(())
}

/// The harness trains it like any built-in: the main job's spec resolution finds it by name,
/// the run checks every weight's gradient at every step, and the result names the model.
#[test]
fn the_toy_variant_trains_through_the_main_job() {
    register();
    let dir = tempfile::tempdir().unwrap();
    let args = crate::cli::three_tiny_steps(
        "mqar",
        &["llama".to_string(), "toy-skip".to_string()],
        &["vocab_size=32", "seq_len=16", "num_kv_pairs=2"],
        2,
        dir.path(),
    );
    let specs = harness::spec::resolve(&args).unwrap();
    assert_eq!(specs.len(), 2);
    for spec in &specs {
        let r = crate::cli::train_to_done(spec, dir.path());
        assert_eq!(r.model, spec.model);
        assert!(r.final_loss.is_some_and(f64::is_finite));
    }
    // Matched FLOPs: the toy's extra depth FLOPs are in its spec.
    assert!(specs[1].flops_per_step > specs[0].flops_per_step);
}
