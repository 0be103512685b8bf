//! Packed models (`models::pack`): P runs stacked on a leading axis compute, run for run, the
//! losses and gradients of the P unpacked runs — for llama, LIMe and a rival (ResFormer), in the
//! f64 reference and the fused f32 backend — and a run that goes non-finite leaves the others'
//! numbers untouched.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use models::{Backend, Config, Variant};

const P: usize = 3;
const B: usize = 2;
const T: usize = 12;
const V: usize = 16;

fn cfg(variant: Variant) -> Config {
    // GQA (4 heads, 2 kv heads) so the routers are (R, S) with R > 1.
    let mut c = Config::mha(variant, V, 16, 3, 4).with_d_ff(24);
    c.n_kv_heads = 2;
    c
}

/// Run p's ids and next-token targets (different data per run, as seeds give).
fn data(p: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let ids: Vec<u32> = (0..B * T)
        .map(|i| ((i * 7 + p * 5 + i / 3) % V) as u32)
        .collect();
    let targets: Vec<u32> = ids.iter().map(|&x| (x * 3 + 1) % V as u32).collect();
    Ok((
        Tensor::from_vec(ids, (B, T), dev)?,
        Tensor::from_vec(targets, B * T, dev)?,
    ))
}

struct Run {
    loss: f64,
    grads: HashMap<String, Tensor>,
}

fn grads_of(
    vars: &[(String, Var)],
    g: &candle_core::backprop::GradStore,
    pick: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(n, v)| {
            let g = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient reaches {n}"));
            Ok((n.clone(), pick(g)?))
        })
        .collect()
}

/// The P runs one at a time: weights, loss and gradients of each.
fn unpacked(
    c: &Config,
    dtype: DType,
    backend: Backend,
) -> Result<(Vec<HashMap<String, Tensor>>, Vec<Run>)> {
    let dev = Device::Cpu;
    let mut weights = Vec::new();
    let mut runs = Vec::new();
    for p in 0..P {
        let (vm, model) = models::init_model(c, 10 + p as u64, dtype, &dev, backend)?;
        weights.push(models::state_dict(&vm)?);
        let (ids, targets) = data(p, &dev)?;
        let logits = model.forward(&ids)?.reshape((B * T, V))?;
        let loss = model.cross_entropy(&logits, &targets)?;
        let g = loss.backward()?;
        runs.push(Run {
            loss: loss.to_dtype(DType::F64)?.to_scalar()?,
            grads: grads_of(&models::sorted_vars(&vm), &g, |t| Ok(t.clone()))?,
        });
    }
    Ok((weights, runs))
}

/// The same P runs packed: per-run losses and the gradient slices of Σ_p loss_p.
fn packed(c: &Config, weights: &[HashMap<String, Tensor>], backend: Backend) -> Result<Vec<Run>> {
    let dev = Device::Cpu;
    let vm = models::pack::stack(weights)?;
    let model = models::pack::model(c, &vm, P, backend)?;
    assert_eq!(model.pack(), P);
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for p in 0..P {
        let (i, t) = data(p, &dev)?;
        ids.push(i);
        targets.push(t);
    }
    let hidden = model.forward_hidden(&Tensor::cat(&ids, 0)?)?; // (P·B,T,D)
    let d = hidden.dim(2)?;
    let mut losses = Vec::new();
    for (p, t) in targets.iter().enumerate() {
        let rows = hidden.narrow(0, p * B, B)?.reshape((B * T, d))?;
        losses.push(model.cross_entropy(&model.lm_head_of(p, &rows)?, t)?);
    }
    let total = losses
        .iter()
        .skip(1)
        .try_fold(losses[0].clone(), |a, l| a + l)?;
    let g = total.backward()?;
    let vars = models::sorted_vars(&vm);
    (0..P)
        .map(|p| {
            Ok(Run {
                loss: losses[p].to_dtype(DType::F64)?.to_scalar()?,
                grads: grads_of(&vars, &g, |t| t.get(p))?,
            })
        })
        .collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    Ok(a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale)))
}

#[test]
fn packed_runs_compute_the_unpacked_losses_and_gradients() -> Result<()> {
    for variant in [Variant::LLAMA, Variant::LIME, Variant::RESFORMER] {
        for (dtype, backend, tol) in [
            (DType::F64, Backend::Reference, 1e-12),
            (DType::F32, Backend::Fused, 2e-5),
        ] {
            let c = cfg(variant);
            let (weights, want) = unpacked(&c, dtype, backend)?;
            let got = packed(&c, &weights, backend)?;
            for (p, (w, g)) in want.iter().zip(&got).enumerate() {
                let rel = (w.loss - g.loss).abs() / w.loss.abs();
                assert!(
                    rel < tol,
                    "{variant} {backend:?} run {p}: loss {} vs {}",
                    g.loss,
                    w.loss
                );
                assert_eq!(w.grads.len(), g.grads.len());
                for (name, gw) in &w.grads {
                    let e = max_rel(&g.grads[name], gw)?;
                    assert!(
                        e < tol,
                        "{variant} {backend:?} run {p} {name}: gradient off by {e:e}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_non_finite_run_leaves_the_others_untouched() -> Result<()> {
    let c = cfg(Variant::LIME);
    let (mut weights, want) = unpacked(&c, DType::F32, Backend::Fused)?;
    let emb = &weights[1]["embed_tokens.weight"];
    let nan = (emb.ones_like()? * f64::NAN)?;
    weights[1].insert("embed_tokens.weight".into(), nan);
    let got = packed(&c, &weights, Backend::Fused)?;
    assert!(!got[1].loss.is_finite());
    for p in [0, 2] {
        assert!((got[p].loss - want[p].loss).abs() <= 2e-5 * want[p].loss);
        for (name, gw) in &want[p].grads {
            assert!(max_rel(&got[p].grads[name], gw)? < 2e-5, "run {p} {name}");
        }
    }
    Ok(())
}

#[test]
fn a_pack_gives_each_run_its_weights_back() -> Result<()> {
    let c = cfg(Variant::LIME);
    let (weights, _) = unpacked(&c, DType::F32, Backend::Fused)?;
    let vm = models::pack::stack(&weights)?;
    for (p, w) in weights.iter().enumerate() {
        let back = models::pack::member(&vm, P, p)?;
        assert_eq!(back.len(), w.len());
        for (name, t) in w {
            assert_eq!(back[name].shape(), t.shape(), "{name}");
            assert_eq!(max_rel(&back[name], t)?, 0.0, "{name}");
        }
    }
    Ok(())
}

#[test]
fn variants_without_a_run_axis_refuse_to_pack() -> Result<()> {
    for &v in Variant::ALL {
        let c = cfg(v);
        let (vm, _) = models::init_model(&c, 0, DType::F32, &Device::Cpu, Backend::Fused)?;
        let w = models::state_dict(&vm)?;
        let vm = models::pack::stack(&[w.clone(), w])?;
        match models::pack::model(&c, &vm, 2, Backend::Fused) {
            Ok(m) => assert!(v.def().packable() && m.pack() == 2, "{v}"),
            Err(e) => {
                assert!(!v.def().packable(), "{v}: {e}");
                assert!(
                    e.to_string().contains("cannot be trained packed"),
                    "{v}: {e}"
                );
            }
        }
    }
    Ok(())
}
