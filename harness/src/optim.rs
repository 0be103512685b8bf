//! AdamW with parameter groups and saveable state, keyed by parameter *name*.
//!
//! candle-nn's `AdamW` has one learning rate and weight decay for all parameters and no way to
//! save its moments, so an exact resume is impossible with it. This one keeps `m`, `v` per name,
//! iterates names in sorted order (never HashMap order) and applies per-group settings:
//! router weights get `lr * router_lr_mult` and no decay; matrices get decoupled weight decay;
//! norms and embeddings get neither (see `models::param_group`).

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
}

/// Optimiser settings (AdamW, decoupled weight decay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    pub lr: f64,
    /// Router weights get `lr * router_lr_mult` and no weight decay.
    pub router_lr_mult: f64,
    /// Applied to matrices only (not norms, embeddings, routers).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    pub schedule: Schedule,
    /// Fraction of the steps spent in linear warm-up.
    pub warmup_frac: f64,
}

/// The presets' AdamW: lr 1e-3 (router ×10, no decay), weight decay 0.1 on matrices, betas
/// 0.9 / 0.95, eps 1e-8, clip 1.0, 5% warm-up then cosine.
impl Default for OptimSpec {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            router_lr_mult: 10.0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            schedule: Schedule::Cosine,
            warmup_frac: 0.05,
        }
    }
}

pub struct AdamW {
    /// (name, var, group) in sorted name order.
    params: Vec<(String, Var, models::ParamGroup)>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    pub step: u64,
    cfg: OptimSpec,
}

impl AdamW {
    /// The optimizer of a `variant` model's parameters (their groups are the variant's).
    pub fn new(varmap: &VarMap, variant: models::Variant, cfg: &OptimSpec) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var, models::ParamGroup)> = data
            .iter()
            .map(|(n, v)| (n.clone(), v.clone(), models::param_group(variant, n)))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (n, var, _) in &params {
            m.insert(n.clone(), var.as_tensor().zeros_like()?);
            v.insert(n.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self {
            params,
            m,
            v,
            step: 0,
            cfg: cfg.clone(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _, _)| n.as_str())
    }

    /// The global L2 norm of `gradients` (as returned by [`AdamW::gradients`]), summed in f64 in
    /// parameter-name order so it is deterministic.
    pub fn grad_norm(gradients: &[Tensor]) -> anyhow::Result<f64> {
        let mut sq = 0f64;
        for g in gradients {
            sq += match models::fused::sum_squares_f64(g)? {
                Some(s) => s,
                None => g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
        Ok(sq.sqrt())
    }

    /// Every parameter's gradient, in parameter order, for [`AdamW::grad_norm`] and
    /// [`AdamW::step`], detached (a gradient can carry the autograd graph of its forward pass,
    /// which the moments would otherwise retain every step). Errors if a parameter received no
    /// gradient: every training step checks that every weight got one.
    pub fn gradients(
        &self,
        grads: &candle_core::backprop::GradStore,
    ) -> anyhow::Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|(name, var, _)| {
                let g = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no gradient reaches {name}"))?;
                Ok(g.detach())
            })
            .collect()
    }

    /// The optimiser half of every training step — `run_one`'s and `bench train`'s alike: every
    /// weight's gradient (an error if one received none), global-norm clipping at the spec's
    /// `grad_clip` (gradients scaled by clip / (norm + 1e-6) above it), one AdamW step at `lr`.
    /// Returns the gradient norm before clipping.
    pub fn apply(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> anyhow::Result<f64> {
        let gradients = self.gradients(grads)?;
        let norm = Self::grad_norm(&gradients)?;
        let clip = self.cfg.grad_clip;
        let scale = if norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.step(&gradients, lr, scale)?;
        Ok(norm)
    }

    /// One AdamW step at learning rate `lr` with gradients scaled by `grad_scale` (clipping).
    pub fn step(&mut self, gradients: &[Tensor], lr: f64, grad_scale: f64) -> anyhow::Result<()> {
        if gradients.len() != self.params.len() {
            anyhow::bail!(
                "{} gradients for {} parameters",
                gradients.len(),
                self.params.len()
            );
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for ((name, var, group), g) in self.params.iter().zip(gradients) {
            let (plr, wd) = match group {
                models::ParamGroup::Router => (lr * self.cfg.router_lr_mult, 0.0),
                models::ParamGroup::Decay => (lr, self.cfg.weight_decay),
                models::ParamGroup::NoDecay => (lr, 0.0),
            };
            let h = models::fused::AdamWStep {
                grad_scale,
                beta1: b1,
                beta2: b2,
                bc1,
                bc2,
                eps: self.cfg.eps,
                lr: plr,
                weight_decay: wd,
            };
            let (theta, m, v) = (var.as_tensor(), &self.m[name], &self.v[name]);
            // f32 CPU: one fused pass computing the same values as the composed ops.
            let (t2, m, v) = match models::fused::adamw_update(theta, g, m, v, h)? {
                Some(new) => new,
                None => composed_update(theta, g, m, v, h)?,
            };
            var.set(&t2)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// Moments as a name → tensor map (`m.<name>`, `v.<name>`) for safetensors.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (n, t) in &self.m {
            out.insert(format!("m.{n}"), t.clone());
        }
        for (n, t) in &self.v {
            out.insert(format!("v.{n}"), t.clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        for (n, _, _) in &self.params {
            for (prefix, map) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{n}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                let dev = map[n].device().clone();
                map.insert(n.clone(), t.to_device(&dev)?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The AdamW update of one tensor as candle ops (any device and dtype): (θ', m', v').
pub fn composed_update(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: models::fused::AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b1, b2) = (h.beta1, h.beta2);
    let g = (g * h.grad_scale)?;
    let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let update = ((&m / h.bc1)? / ((&v / h.bc2)?.sqrt()? + h.eps)?)?;
    let decayed = if h.weight_decay > 0.0 {
        (theta * (1.0 - h.lr * h.weight_decay))?
    } else {
        theta.clone()
    };
    Ok(((decayed - (update * h.lr)?)?, m, v))
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up, then cosine or linear decay to 0.
pub fn lr_at(cfg: &OptimSpec, base_lr: f64, step: u64, total: u64) -> f64 {
    let warm = ((cfg.warmup_frac * total as f64).ceil() as u64).min(total);
    if step < warm {
        return base_lr * (step + 1) as f64 / warm as f64;
    }
    let span = (total - warm).max(1) as f64;
    let p = ((step - warm) as f64 / span).clamp(0.0, 1.0);
    match cfg.schedule {
        Schedule::Cosine => base_lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        Schedule::Linear => base_lr * (1.0 - p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Regression: LIMe router gradients carried their forward graph into the moments, so each
    /// step retained the previous step's activations (24 GB after a few hundred MQAR steps).
    /// The fused f32 CPU update gives exactly the composed ops' values (with and without decay,
    /// large and small tensors, moments from earlier steps).
    #[test]
    fn fused_adamw_update_equals_the_composed_ops() {
        use candle_core::Device;
        let dev = Device::Cpu;
        for (n, wd) in [(37usize, 0.0), (70_000, 0.1)] {
            let r = |seed: u64, scale: f64| {
                let v: Vec<f32> = (0..n as u64)
                    .map(|i| {
                        let x = (i.wrapping_mul(2_654_435_761) ^ seed) % 10_007;
                        (x as f64 / 10_007.0 - 0.5) as f32 * scale as f32
                    })
                    .collect();
                Tensor::from_vec(v, n, &dev).unwrap()
            };
            let (theta, g, m) = (r(1, 2.0), r(2, 0.3), r(3, 0.01));
            let v = r(4, 0.01).sqr().unwrap();
            let h = models::fused::AdamWStep {
                grad_scale: 0.7,
                beta1: 0.9,
                beta2: 0.95,
                bc1: 1.0 - 0.9f64.powi(3),
                bc2: 1.0 - 0.95f64.powi(3),
                eps: 1e-8,
                lr: 3e-3,
                weight_decay: wd,
            };
            let fused = models::fused::adamw_update(&theta, &g, &m, &v, h)
                .unwrap()
                .expect("f32 CPU");
            let composed = composed_update(&theta, &g, &m, &v, h).unwrap();
            for (a, b) in [
                (&fused.0, &composed.0),
                (&fused.1, &composed.1),
                (&fused.2, &composed.2),
            ] {
                assert_eq!(
                    a.to_vec1::<f32>().unwrap(),
                    b.to_vec1::<f32>().unwrap(),
                    "n {n} wd {wd}"
                );
            }
        }
    }

    /// The fused sum of squares is candle's f64 `sqr().sum_all()` to the bit.
    #[test]
    fn fused_sum_of_squares_equals_candle() {
        let v: Vec<f32> = (0..100_009u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % 10_007) as f32 - 5_003.0) * 1e-3)
            .collect();
        let t = Tensor::from_vec(v, (7, 14_286 + 1), &candle_core::Device::Cpu).unwrap();
        let composed = t
            .to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let fused = models::fused::sum_squares_f64(&t).unwrap().unwrap();
        assert_eq!(fused.to_bits(), composed.to_bits());
    }

    #[test]
    fn optimizer_state_holds_no_autograd_graph() {
        for variant in [models::Variant::LLAMA, models::Variant::LIME] {
            let cfg = models::Config::mha(variant, 16, 16, 3, 2).with_d_ff(32);
            let (vm, model) = models::init_varmap(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
            let mut opt = AdamW::new(&vm, cfg.variant, &OptimSpec::default()).unwrap();
            let ids = Tensor::from_vec(
                (0..32u32).map(|i| i % 16).collect::<Vec<_>>(),
                (2, 16),
                &Device::Cpu,
            )
            .unwrap();
            let t = Tensor::from_vec(
                (0..32u32).map(|i| (i + 1) % 16).collect::<Vec<_>>(),
                32,
                &Device::Cpu,
            )
            .unwrap();
            for _ in 0..2 {
                let logits = model.forward(&ids).unwrap().reshape((32, 16)).unwrap();
                let g = model
                    .cross_entropy(&logits, &t)
                    .unwrap()
                    .backward()
                    .unwrap();
                opt.step(&opt.gradients(&g).unwrap(), 1e-3, 1.0).unwrap();
            }
            for (name, s) in opt.state() {
                assert!(
                    !s.track_op(),
                    "{variant:?}: optimizer state {name} keeps an autograd graph"
                );
            }
        }
    }
}
