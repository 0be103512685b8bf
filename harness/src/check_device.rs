//! `harness check-device`: is this device computing the same model as the CPU reference?
//!
//! For each model variant, one forward and backward step of a small model runs twice from the same
//! seeded weights: on the CPU in f64 through the composed ops (the reference the model tests
//! use), and on `--device` in f32 (plus `--precision bf16` if asked). It compares the logits, the
//! loss and the gradient of every weight, and exits non-zero if any differs by more than the
//! tolerance of that precision. On a GPU machine, where there is no Rust toolchain to run
//! `cargo test`, this is the CUDA test subset: it ships inside the binary. On the CPU it checks
//! the fused f32 kernels against the f64 reference.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;

use crate::spec::Precision;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Device to check: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Matmul precision on the device (bf16 needs a GPU).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Models to check (comma-separated) [default: every variant].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
}

/// One variant's worst differences to the f64 CPU reference.
#[derive(Clone, Debug)]
pub struct Check {
    pub model: String,
    /// max |logits − ref| / max |ref|.
    pub logits: f64,
    /// |loss − ref| / |ref|.
    pub loss: f64,
    /// Worst over weights of max |g − g_ref| / max |g_ref| (a floor of 1e-3 on the denominator).
    pub grads: f64,
    /// The weight with that worst gradient.
    pub worst: String,
}

impl Check {
    /// Tolerances: f32 on any device, and bf16 projections (8 mantissa bits).
    pub fn ok(&self, p: Precision) -> bool {
        let (l, g) = match p {
            Precision::F32 => (1e-4, 1e-3),
            Precision::Bf16 => (5e-2, 1.5e-1),
        };
        self.logits < l && self.loss < l && self.grads < g
    }
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

/// Relative max difference of `a` (any dtype/device) to the f64 CPU reference `r`.
fn rel(a: &Tensor, r: &Tensor, floor: f64) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    Ok(max_abs(&(a - r)?)? / max_abs(r)?.max(floor))
}

/// Logits, loss and the gradient of every weight (by name) of one step.
type Step = (Tensor, Tensor, Vec<(String, Tensor)>);

/// Logits, loss and named gradients of one step of `cfg` on `dev` in `dtype`.
fn step(cfg: &models::Config, dtype: DType, dev: &Device, p: Precision) -> Result<Step> {
    let (b, t, v) = (2, 12, cfg.vocab_size);
    let (vm, model) = models::init_varmap(cfg, 7, dtype, dev)?;
    let model = model.with_matmul_dtype(p.matmul_dtype());
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
    let targets: Vec<u32> = ids.iter().map(|x| (x * 5 + 1) % v as u32).collect();
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    let targets = Tensor::from_vec(targets, b * t, dev)?;
    let logits = model.forward(&ids)?.reshape((b * t, v))?;
    let loss = model.cross_entropy(&logits, &targets)?;
    let grads = loss.backward()?;
    let mut named = Vec::new();
    for (name, var) in models::sorted_vars(&vm) {
        let Some(g) = grads.get(var.as_tensor()) else {
            bail!(
                "{}: weight {name} received no gradient on {dev:?}",
                cfg.variant.name()
            );
        };
        named.push((name, g.clone()));
    }
    Ok((logits, loss, named))
}

/// Whether two model configs compute the same function: from the same seed in f64 on the CPU
/// they have the same parameters (names and shapes), the same logits and the same gradient of
/// every weight (to 1e-12 relative). An ablation that is its parent at some shape (LIMe's
/// `lime-last-2` at 2 layers, where the last two layers are all there are) is no ablation there.
pub fn same_function(a: &models::Config, b: &models::Config) -> Result<bool> {
    if models::accounting::num_params(a) != models::accounting::num_params(b) {
        return Ok(false);
    }
    let (la, lossa, ga) = step(a, DType::F64, &Device::Cpu, Precision::F32)?;
    let (lb, lossb, gb) = step(b, DType::F64, &Device::Cpu, Precision::F32)?;
    if ga.len() != gb.len()
        || ga
            .iter()
            .zip(&gb)
            .any(|((na, x), (nb, y))| na != nb || x.dims() != y.dims())
    {
        return Ok(false);
    }
    let close = |x: &Tensor, y: &Tensor| -> Result<bool> { Ok(rel(x, y, 1e-12)? <= 1e-12) };
    if !close(&la, &lb)? || !close(&lossa, &lossb)? {
        return Ok(false);
    }
    for ((_, x), (_, y)) in ga.iter().zip(&gb) {
        if !close(x, y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the check for `variants` on `dev`.
pub fn check(variants: &[models::Variant], dev: &Device, p: Precision) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for &variant in variants {
        let cfg = models::Config::mha(variant, 37, 32, 3, 4)
            .with_kv_heads(2)
            .with_d_ff(64);
        let (rl, rloss, rg) = step(&cfg, DType::F64, &Device::Cpu, Precision::F32)?;
        let (l, loss, g) = step(&cfg, DType::F32, dev, p)?;
        let mut worst = (0.0f64, String::new());
        for ((name, a), (_, r)) in g.iter().zip(&rg) {
            let d = rel(a, r, 1e-3)?;
            if d > worst.0 || worst.1.is_empty() {
                worst = (d, name.clone());
            }
        }
        out.push(Check {
            model: variant.name().to_string(),
            logits: rel(&l, &rl, 1e-6)?,
            loss: rel(&loss, &rloss, 1e-6)?,
            grads: worst.0,
            worst: worst.1,
        });
    }
    Ok(out)
}

pub fn run(a: &CheckArgs) -> Result<()> {
    let dev = crate::device::device(&a.device)?;
    a.precision.check_device(&dev)?;
    let variants = if a.models.is_empty() {
        models::Variant::ALL.to_vec()
    } else {
        a.models
            .iter()
            .map(|m| crate::spec::parse_variant(m))
            .collect::<Result<_>>()?
    };
    let checks = check(&variants, &dev, a.precision)?;
    let mut failed = 0;
    println!(
        "device {} ({}) vs CPU f64 reference, one forward+backward step per model:",
        crate::device::device_name(&dev),
        match a.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 projections",
        }
    );
    println!(
        "| model | logits rel. diff | loss rel. diff | worst gradient rel. diff (weight) | ok |"
    );
    println!("|---|---:|---:|---|---|");
    for c in &checks {
        let ok = c.ok(a.precision);
        failed += usize::from(!ok);
        println!(
            "| {} | {:.2e} | {:.2e} | {:.2e} ({}) | {} |",
            c.model,
            c.logits,
            c.loss,
            c.grads,
            c.worst,
            if ok { "yes" } else { "NO" }
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} models differ from the CPU reference beyond tolerance",
            checks.len()
        );
    }
    Ok(())
}
