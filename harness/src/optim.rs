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
            router_lr_mult: models::ROUTER_LR_MULT,
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

/// AdamW over one model's parameters — or over a packed model's (`models::pack`), where every
/// parameter is (P, …) and each of the P runs keeps its own moments, step count, learning rate,
/// gradient-norm clip and divergence: run p's update reads and writes only slice p, with the same
/// operations as the unpacked optimizer (so a run's update is the same packed or not).
pub struct AdamW {
    /// (name, var, group) in sorted name order.
    params: Vec<(String, Var, models::ParamGroup)>,
    /// One per packed run (one when unpacked).
    runs: Vec<Moments>,
    cfg: OptimSpec,
}

/// One run's moments, by parameter name.
struct Moments {
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    step: u64,
}

impl AdamW {
    /// The optimizer of a `variant` model's parameters (their groups are the variant's).
    pub fn new(varmap: &VarMap, variant: models::Variant, cfg: &OptimSpec) -> Result<Self> {
        Self::packed(varmap, variant, cfg, 1)
    }

    /// The optimizer of a packed model of `pack` runs (`models::pack::stack`), each starting
    /// from zero moments; `cfg.lr` is unused (every step gives each run's lr).
    pub fn packed(
        varmap: &VarMap,
        variant: models::Variant,
        cfg: &OptimSpec,
        pack: usize,
    ) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var, models::ParamGroup)> = data
            .iter()
            .map(|(n, v)| (n.clone(), v.clone(), models::param_group(variant, n)))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let runs = (0..pack)
            .map(|p| {
                let mut m = BTreeMap::new();
                let mut v = BTreeMap::new();
                for (n, var, _) in &params {
                    let zeros = models::pack::slice(var.as_tensor(), pack, p)?.zeros_like()?;
                    m.insert(n.clone(), zeros.clone());
                    v.insert(n.clone(), zeros);
                }
                Ok(Moments { m, v, step: 0 })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            runs,
            cfg: cfg.clone(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _, _)| n.as_str())
    }

    /// Runs packed (1 when unpacked).
    pub fn pack(&self) -> usize {
        self.runs.len()
    }

    /// The steps taken by run p.
    pub fn steps_of(&self, p: usize) -> u64 {
        self.runs[p].step
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
    /// gradient: every training step checks that every weight got one. Packed, these are the
    /// (P, …) gradients of all runs.
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

    /// The optimiser half of every training step — the training loop's and `bench train`'s alike: every
    /// weight's gradient (an error if one received none), global-norm clipping at the spec's
    /// `grad_clip` (gradients scaled by clip / (norm + 1e-6) above it), one AdamW step at `lr`.
    /// Returns the gradient norm before clipping.
    pub fn apply(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> anyhow::Result<f64> {
        if self.pack() != 1 {
            anyhow::bail!(
                "AdamW::apply on a pack of {} runs: use apply_runs",
                self.pack()
            );
        }
        Ok(self.apply_runs(grads, &[Some(lr)])?[0].unwrap_or(f64::NAN))
    }

    /// [`AdamW::apply`] for every run of a pack: run p steps at `lrs[p]` with its own gradient
    /// norm and clip; a run given `None` (diverged) is left as it is. Returns each stepped run's
    /// gradient norm before clipping.
    pub fn apply_runs(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lrs: &[Option<f64>],
    ) -> anyhow::Result<Vec<Option<f64>>> {
        let pack = self.pack();
        if lrs.len() != pack {
            anyhow::bail!("{} learning rates for a pack of {pack}", lrs.len());
        }
        let gradients = self.gradients(grads)?;
        let mut norms = vec![None; pack];
        // New values of each parameter's run slices (the old slice where a run is left).
        let mut slices: Vec<Vec<Tensor>> = vec![Vec::with_capacity(pack); self.params.len()];
        for (p, lr) in lrs.iter().enumerate() {
            let theta: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, var, _)| models::pack::slice(var.as_tensor(), pack, p))
                .collect::<Result<_>>()?;
            let Some(lr) = *lr else {
                slices.iter_mut().zip(theta).for_each(|(s, t)| s.push(t));
                continue;
            };
            let g: Vec<Tensor> = gradients
                .iter()
                .map(|g| models::pack::slice(g, pack, p))
                .collect::<Result<_>>()?;
            let norm = Self::grad_norm(&g)?;
            let clip = self.cfg.grad_clip;
            let scale = if norm > clip {
                clip / (norm + 1e-6)
            } else {
                1.0
            };
            let new = self.update(p, &theta, &g, lr, scale)?;
            slices.iter_mut().zip(new).for_each(|(s, t)| s.push(t));
            norms[p] = Some(norm);
        }
        for ((_, var, _), parts) in self.params.iter().zip(slices) {
            match pack {
                1 => var.set(&parts[0])?,
                _ => var.set(&Tensor::stack(&parts, 0)?)?,
            }
        }
        Ok(norms)
    }

    /// One AdamW step at learning rate `lr` with gradients scaled by `grad_scale` (clipping), of
    /// an unpacked model.
    pub fn step(&mut self, gradients: &[Tensor], lr: f64, grad_scale: f64) -> anyhow::Result<()> {
        if self.pack() != 1 {
            anyhow::bail!("AdamW::step on a pack of {} runs", self.pack());
        }
        let theta: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, v, _)| v.as_tensor().clone())
            .collect();
        let new = self.update(0, &theta, gradients, lr, grad_scale)?;
        for ((_, var, _), t) in self.params.iter().zip(new) {
            var.set(&t)?;
        }
        Ok(())
    }

    /// Run p's AdamW update: its parameters `theta` and gradients `gradients` (parameter order)
    /// → the new parameters; its moments and step advance.
    fn update(
        &mut self,
        p: usize,
        theta: &[Tensor],
        gradients: &[Tensor],
        lr: f64,
        grad_scale: f64,
    ) -> anyhow::Result<Vec<Tensor>> {
        if gradients.len() != self.params.len() || theta.len() != self.params.len() {
            anyhow::bail!(
                "{} gradients for {} parameters",
                gradients.len(),
                self.params.len()
            );
        }
        let run = &mut self.runs[p];
        run.step += 1;
        let t = run.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let mut out = Vec::with_capacity(theta.len());
        for (((name, _, group), g), theta) in self.params.iter().zip(gradients).zip(theta) {
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
            let (m, v) = (&run.m[name], &run.v[name]);
            // f32 CPU: one fused pass computing the same values as the composed ops.
            let (t2, m, v) = match models::fused::adamw_update(theta, g, m, v, h)? {
                Some(new) => new,
                None => composed_update(theta, g, m, v, h)?,
            };
            out.push(t2);
            run.m.insert(name.clone(), m);
            run.v.insert(name.clone(), v);
        }
        Ok(out)
    }

    /// Moments as a name → tensor map (`m.<name>`, `v.<name>`) for safetensors.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.state_of(0)
    }

    /// Run p's moments, in the names and shapes of an unpacked run's [`AdamW::state`].
    pub fn state_of(&self, p: usize) -> HashMap<String, Tensor> {
        let run = &self.runs[p];
        let mut out = HashMap::new();
        for (n, t) in &run.m {
            out.insert(format!("m.{n}"), t.clone());
        }
        for (n, t) in &run.v {
            out.insert(format!("v.{n}"), t.clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        self.load_state_of(0, state, step)
    }

    /// Sets run p's moments and step from an unpacked run's saved [`AdamW::state`].
    pub fn load_state_of(
        &mut self,
        p: usize,
        state: &HashMap<String, Tensor>,
        step: u64,
    ) -> anyhow::Result<()> {
        let run = &mut self.runs[p];
        for (n, _, _) in &self.params {
            for (prefix, map) in [("m", &mut run.m), ("v", &mut run.v)] {
                let key = format!("{prefix}.{n}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                if t.shape() != map[n].shape() {
                    anyhow::bail!(
                        "optimizer state {key} is {:?}, expected {:?}",
                        t.shape(),
                        map[n].shape()
                    );
                }
                let dev = map[n].device().clone();
                map.insert(n.clone(), t.to_device(&dev)?);
            }
        }
        run.step = step;
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
