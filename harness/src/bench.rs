//! `harness bench gen|train|decode`: throughput measurements (median of repeats after warm-up).
//! Figures go to BENCHMARKS.md with the machine they were measured on; nothing here is a test.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: BenchWhat,
    /// Repeats (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Untimed training steps before the repeats (`train`).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Models for `train`/`decode` (comma-separated) [default: llama,lime].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Configs for `train` (comma-separated): default (the default experiment's shape), tiny,
    /// mqar, medium [default: all].
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Examples per repeat for `gen`.
    #[arg(long, default_value_t = 20_000)]
    pub n: u64,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
    /// Matmul precision for `train`/`decode` (bf16 needs a GPU).
    #[arg(long, value_enum, default_value_t = crate::spec::Precision::F32)]
    pub precision: crate::spec::Precision,
    /// Pack sizes for `sweep` (comma-separated) [default: 1,4,16].
    #[arg(long, value_delimiter = ',')]
    pub packs: Vec<usize>,
    /// Task whose default cell `sweep` trains [default: mqar].
    #[arg(long, default_value = "mqar")]
    pub task: String,
    /// `fused` or `reference` building blocks (`bench train`, `bench generate`).
    #[arg(long, default_value = "fused", value_parser = crate::overrides::parse_backend)]
    pub backend: models::Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchWhat {
    Gen,
    Train,
    Decode,
    /// Packed runs (`--pack`): the default cell of `--task` (seeds 0..N) one run per step vs N
    /// packed into one step, at each of `--packs`.
    Sweep,
    /// The training step's operations one by one at the default experiment's shape (forward, and
    /// forward + backward), beside the whole step: where a step's time goes.
    Ops,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "forward / backward / optimizer" milliseconds from the medians of columns 1..=3 (seconds).
fn phases_ms(med: &dyn Fn(usize) -> f64) -> String {
    format!(
        "{:.0} / {:.0} / {:.0}",
        med(1) * 1e3,
        med(2) * 1e3,
        med(3) * 1e3
    )
}

fn md(header: &[&str], rows: Vec<Vec<String>>) -> String {
    use tabled::{builder::Builder, settings::Style};
    let mut b = Builder::default();
    b.push_record(header.iter().map(|s| s.to_string()));
    for r in rows {
        b.push_record(r);
    }
    let mut t = b.build();
    t.with(Style::markdown());
    format!("{t}\n")
}

fn bench_gen(a: &BenchArgs) -> Result<String> {
    let mut cases: Vec<(String, Box<dyn tasks::Task>)> = Vec::new();
    let mqar_sets: Vec<(String, String)> = [
        ("vocab_size", "8192"),
        ("seq_len", "256"),
        ("num_kv_pairs", "16"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    cases.push((
        "mqar (vocab 8192, T=256, 16 kv)".into(),
        tasks::build("mqar", None, &mqar_sets)?,
    ));
    for info in tasks::registry() {
        if let Ok(t) = tasks::build(info.name, None, &[]) {
            cases.push((
                format!("{} (default: {})", info.name, info.default_level),
                t,
            ));
        }
    }
    let mut rows = Vec::new();
    for (name, task) in &cases {
        let _ = tasks::generate_range(task.as_ref(), tasks::Split::Train, 0, a.n.min(1000)); // warm-up
        let times: Vec<f64> = (0..a.repeats.max(1))
            .map(|r| {
                let t0 = Instant::now();
                let v =
                    tasks::generate_range(task.as_ref(), tasks::Split::Train, r as u64 * a.n, a.n);
                std::hint::black_box(&v);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(times);
        rows.push(vec![
            name.clone(),
            format!("{:.0}", a.n as f64 / s),
            format!("{:.2}", s * 1e6 / a.n as f64),
        ]);
    }
    Ok(
        md(&["task", "examples/s (train split)", "µs/example"], rows)
            + &format!(
                "threads: {}; {} examples per repeat, median of {}\n",
                rayon::current_num_threads(),
                a.n,
                a.repeats
            ),
    )
}

/// Named training-benchmark shapes: the model config for `variant`, T and the batch size.
/// `default` is the default experiment's (`harness --task mqar`: its preset's model, T and batch,
/// read from the resolved spec so it cannot drift); the others are fixed shapes with d_ff = 4d,
/// as many kv heads as heads and an untied head (`bench/torch_reference.py` has the same table).
pub fn train_config(
    name: &str,
    variant: models::Variant,
) -> Result<(models::Config, usize, usize)> {
    let fixed = |l: usize, d: usize, h: usize, v: usize, t: usize, b: usize| {
        (models::Config::mha(variant, v, d, l, h), t, b)
    };
    Ok(match name {
        "default" => {
            let spec = crate::spec::resolve(&crate::overrides::Overrides {
                task: vec!["mqar".into()],
                models: vec!["llama".into()],
                ..Default::default()
            })?
            .remove(0);
            let cfg = spec.model_config.with_variant(variant);
            (cfg, spec.seq_len, spec.batch_size)
        }
        "tiny" => fixed(4, 32, 4, 64, 64, 64),
        "mqar" => fixed(4, 128, 4, 8192, 256, 32),
        "medium" => fixed(8, 256, 8, 512, 256, 16),
        other => bail!("unknown bench config `{other}` (known: default, tiny, mqar, medium)"),
    })
}

fn model_cfg(variant: models::Variant, l: usize, d: usize, h: usize, v: usize) -> models::Config {
    models::Config::mha(variant, v, d, l, h)
}

/// The machine's practical f32 matmul rate on `dev`: best of 5 timed 1024³ matmuls (GFLOP/s).
/// Training throughput is reported as a fraction of it.
fn gemm_rate(dev: &Device) -> Result<f64> {
    let n = 1024;
    let x = Tensor::ones((n, n), DType::F32, dev)?;
    let _ = x.matmul(&x)?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        let y = x.matmul(&x)?;
        dev.synchronize()?;
        std::hint::black_box(&y);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

fn bench_train(a: &BenchArgs, dev: &Device) -> Result<String> {
    let peak = gemm_rate(dev)?;
    let configs = if a.configs.is_empty() {
        vec![
            "default".to_string(),
            "tiny".into(),
            "mqar".into(),
            "medium".into(),
        ]
    } else {
        a.configs.clone()
    };
    let model_names = if a.models.is_empty() {
        vec!["llama".to_string(), "lime".into()]
    } else {
        a.models.clone()
    };
    let mut rows = Vec::new();
    for c in &configs {
        for m in &model_names {
            let (cfg, t, b) = train_config(c, crate::spec::parse_variant(m)?)?;
            let v = cfg.vocab_size;
            let (varmap, model) = models::init_model(&cfg, 0, DType::F32, dev, a.backend)?;
            let model = model.with_matmul_dtype(a.precision.matmul_dtype());
            let optim = crate::presets::preset("mqar")?.optim;
            let mut opt = crate::optim::AdamW::new(&varmap, cfg.variant, &optim)?;
            let ids: Vec<u32> = (0..b * t).map(|i| (i * 7919 % v) as u32).collect();
            // Every position supervised: the LM head and the loss over all B·T rows.
            let batch = crate::eval::Batch {
                input: Tensor::from_vec(ids.clone(), (b, t), dev)?,
                rows: Tensor::arange(0u32, (b * t) as u32, dev)?,
                targets: Tensor::from_vec(
                    ids.iter().map(|x| (x + 1) % v as u32).collect::<Vec<_>>(),
                    b * t,
                    dev,
                )?,
                per_example: vec![t; b],
            };
            // (total, forward, backward, optimizer) seconds of the training step itself.
            let mut step = || -> Result<[f64; 4]> {
                let [f, bw, o] = crate::train::step(&model, &mut opt, &batch, 1e-3, true)?.seconds;
                Ok([f + bw + o, f, bw, o])
            };
            for _ in 0..a.warmup {
                step()?;
            }
            let times = (0..a.repeats.max(1))
                .map(|_| step())
                .collect::<Result<Vec<_>>>()?;
            let med = |k: usize| median(times.iter().map(|x| x[k]).collect());
            let s = med(0);
            let flops = crate::spec::flops_per_step(&cfg, t, b);
            rows.push(vec![
                c.clone(),
                m.clone(),
                format!("{:.1}", s * 1e3),
                phases_ms(&med),
                format!("{:.0}", (b * t) as f64 / s),
                format!("{:.1}", flops / s / 1e9),
                format!("{:.0}%", 100.0 * flops / s / 1e9 / peak),
            ]);
        }
    }
    Ok(md(
        &[
            "config",
            "model",
            "ms/step",
            "fwd / bwd / optim ms",
            "tokens/s",
            "GFLOP/s (model FLOPs)",
            "of GEMM rate",
        ],
        rows,
    ) + &format!(
        "device: {}; backend: {}; CPU: {}; GEMM kernels: {}; median of {} steps after {} warm-up; GEMM rate (best 1024^3 f32 matmul) {:.0} GFLOP/s\n",
        crate::device::device_name(dev),
        a.backend.name(),
        crate::device::cpu_model(),
        models::fused::gemm_kernels(),
        a.repeats,
        a.warmup,
        peak
    ))
}

/// `bench sweep`: the training step of N runs of the task's default cell (seeds 0..N, real
/// batches of each seed's stream) packed into one model, against one run's step; the cost of N
/// runs packed is N_packed_step / one_step, sequential it is N.
fn bench_sweep(a: &BenchArgs, dev: &Device) -> Result<String> {
    let peak = gemm_rate(dev)?;
    let packs = if a.packs.is_empty() {
        vec![1, 4, 16]
    } else {
        a.packs.clone()
    };
    let model_names = if a.models.is_empty() {
        vec!["lime".to_string()]
    } else {
        a.models.clone()
    };
    let mut rows = Vec::new();
    for m in &model_names {
        let most = packs.iter().copied().max().unwrap_or(1).max(1);
        let o = crate::overrides::Overrides {
            task: vec![a.task.clone()],
            models: vec![m.clone()],
            seeds: Some(most as u64),
            backend: a.backend,
            ..Default::default()
        };
        let specs = crate::spec::resolve(&o)?;
        let task = crate::train::task_from_spec(&specs[0])?;
        let digest = tasks::config_digest(task.as_ref());
        let mut one = None;
        for &n in &packs {
            if n == 0 {
                bail!("--packs: a pack holds at least 1 run");
            }
            let members = &specs[..n];
            let weights = members
                .iter()
                .map(|s| {
                    let (vm, _) =
                        models::init_model(&s.model_config, s.seed, DType::F32, dev, a.backend)?;
                    Ok(models::state_dict(&vm)?)
                })
                .collect::<Result<Vec<_>>>()?;
            let varmap = models::pack::stack(&weights)?;
            let model = models::pack::model(&specs[0].model_config, &varmap, n, a.backend)?;
            let mut opt = crate::optim::AdamW::packed(
                &varmap,
                specs[0].model_config.variant,
                &specs[0].optim,
                n,
            )?;
            let lrs: Vec<Option<f64>> = members.iter().map(|s| Some(s.optim.lr)).collect();
            let mut times = Vec::new();
            for k in 0..a.warmup + a.repeats.max(1) {
                let batches = members
                    .iter()
                    .map(|s| {
                        let ex = crate::train::train_batch(task.as_ref(), &digest, s, k as u64);
                        crate::eval::make_batch(task.as_ref(), &ex, s.seq_len, dev)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let r = crate::train::step_pack(&model, &mut opt, &batches, &lrs, true)?;
                if k >= a.warmup {
                    let [f, b, o] = r.seconds;
                    times.push([f + b + o, f, b, o]);
                }
            }
            let med = |k: usize| median(times.iter().map(|x| x[k]).collect());
            let s = med(0);
            let one_s = *one.get_or_insert(if n == 1 { s } else { f64::NAN });
            let flops = n as f64 * specs[0].flops_per_step;
            rows.push(vec![
                m.clone(),
                n.to_string(),
                format!("{:.1}", s * 1e3),
                phases_ms(&med),
                format!("{:.2}", s / one_s),
                format!("{:.2}x", n as f64 * one_s / s),
                format!("{:.1}", flops / s / 1e9),
                format!("{:.0}%", 100.0 * flops / s / 1e9 / peak),
            ]);
        }
    }
    let s0 = crate::spec::resolve(&crate::overrides::Overrides {
        task: vec![a.task.clone()],
        models: vec![model_names[0].clone()],
        ..Default::default()
    })?
    .remove(0);
    Ok(md(
        &[
            "model",
            "runs packed N",
            "ms/step",
            "fwd / bwd / optim ms",
            "cost of N runs / one run",
            "speed-up vs N sequential",
            "GFLOP/s (model FLOPs)",
            "of GEMM rate",
        ],
        rows,
    ) + &format!(
        "task {} default cell (batch {}, T {}, {:.3e} FLOPs per run-step); device: {}; backend: {}; CPU: {}; median of {} steps after {} warm-up; GEMM rate (best 1024^3 f32 matmul) {:.0} GFLOP/s; evaluation not included (see BENCHMARKS.md for whole runs)\n",
        a.task,
        s0.batch_size,
        s0.seq_len,
        s0.flops_per_step,
        crate::device::device_name(dev),
        a.backend.name(),
        crate::device::cpu_model(),
        a.repeats,
        a.warmup,
        peak
    ))
}

/// `bench ops`: each operation of one llama block, the embedding and the loss at the default
/// experiment's shape, timed alone (forward; forward and backward from a random upstream
/// gradient), and what one step of the model does with them (`count` per step), beside the whole
/// llama and lime steps. Median of `--repeats` after `--warmup`.
fn bench_ops(a: &BenchArgs, dev: &Device) -> Result<String> {
    use candle_core::Var;
    let (cfg, t, b) = train_config("default", models::Variant::LLAMA)?;
    let be = a.backend;
    let (d, h, dh, f, v) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.head_dim(),
        cfg.d_ff,
        cfg.vocab_size,
    );
    let n = b * t;
    let randn = |shape: &[usize]| -> Result<Var> {
        Ok(Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, dev)?)?)
    };
    let x = randn(&[b, t, d])?;
    let (w_dd, w_fd, w_df, w_vd) = (
        randn(&[d, d])?,
        randn(&[f, d])?,
        randn(&[d, f])?,
        randn(&[v, d])?,
    );
    let gain = Var::from_tensor(&Tensor::ones(d, DType::F32, dev)?)?;
    let (q, k, vv) = (
        randn(&[b, h, t, dh])?,
        randn(&[b, h, t, dh])?,
        randn(&[b, h, t, dh])?,
    );
    let (ga, up) = (randn(&[b, t, f])?, randn(&[b, t, f])?);
    // LIMe's K|V of one layer (B,T,R,d_h), and layer 1's router (R, 2R) over layers 0 and 1.
    let r = cfg.n_kv_heads;
    let (lk, lv, router) = (
        randn(&[b, t, r, dh])?,
        randn(&[b, t, r, dh])?,
        randn(&[r, 2 * r])?,
    );
    let hid = randn(&[n, d])?;
    let targets = Tensor::from_vec((0..n).map(|i| (i % v) as u32).collect::<Vec<_>>(), n, dev)?;
    let ids = targets.reshape((b, t))?; // the same tokens as inputs
    let emb = randn(&[v, d])?;
    let rope = {
        let half = dh / 2;
        let ang: Vec<f32> = (0..t * half)
            .map(|i| (i / half) as f32 / 10_000f32.powf((i % half) as f32 / half as f32))
            .collect();
        let ang = Tensor::from_vec(ang, (t, half), dev)?;
        (ang.cos()?, ang.sin()?)
    };
    let mask = Tensor::zeros((t, t), DType::F32, dev)?;
    let scale = 1.0 / (dh as f64).sqrt();
    // The models' own projection (one (B·T, in) product), as a block runs it.
    let lin = |x: &Tensor, w: &Tensor| -> candle_core::Result<Tensor> {
        models::decoder::Proj::new(w.clone()).forward(x)
    };
    use candle_core::Module;
    type Op<'a> = Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>;
    // (name, per step (both layers, or once), the op)
    let ops: Vec<(&str, usize, Op)> = vec![
        (
            "embedding",
            1,
            Box::new(|| candle_nn::Embedding::new(emb.as_tensor().clone(), d).forward(&ids)),
        ),
        (
            "rms_norm (B,T,D)",
            2 * cfg.n_layers + 1,
            Box::new(|| models::ops::rms_norm(be, &x, &gain, 1e-5)),
        ),
        (
            "q/k/v/o projection (B·T,D)x(D,D)",
            4 * cfg.n_layers,
            Box::new(|| lin(&x, &w_dd)),
        ),
        (
            "rope (B,H,T,d_h)",
            2 * cfg.n_layers,
            Box::new(|| models::ops::rope(be, &q, &rope.0, &rope.1)),
        ),
        (
            "causal attention (B,H,T,d_h)",
            cfg.n_layers,
            Box::new(|| models::ops::attention(be, &q, &k, &vv, &mask, scale)),
        ),
        (
            "lime K|V route, layers 0 and 1 (+ one add)",
            (cfg.n_layers == 2) as usize,
            Box::new(|| {
                let mut stacks = None;
                let rows = 2 * r;
                let route = models::fused::KvStacks::route;
                let (k0, v0) = route(&mut stacks, rows, None, &lk, &lv)?;
                let (k1, v1) = route(&mut stacks, rows, Some(&router), &lk, &lv)?;
                (k0 + v0)? + (k1 + v1)?
            }),
        ),
        (
            "head transposes + reshape",
            cfg.n_layers,
            Box::new(|| q.transpose(1, 2)?.reshape((b, t, h * dh))),
        ),
        (
            "residual add (B,T,D)",
            2 * cfg.n_layers,
            Box::new(|| x.as_tensor() + x.as_tensor()),
        ),
        (
            "gate/up projection (B·T,D)x(D,F)",
            2 * cfg.n_layers,
            Box::new(|| lin(&x, &w_fd)),
        ),
        (
            "swiglu (B,T,F)",
            cfg.n_layers,
            Box::new(|| models::ops::swiglu(be, &ga, &up)),
        ),
        (
            "down projection (B·T,F)x(F,D)",
            cfg.n_layers,
            Box::new(|| lin(&ga, &w_df)),
        ),
        ("lm head (B·T,D)x(D,V)", 1, Box::new(|| lin(&hid, &w_vd))),
        (
            "cross-entropy (B·T,V)",
            1,
            Box::new(|| {
                let logits = lin(&hid, &w_vd)?;
                models::ops::cross_entropy(be, &logits, &targets)
            }),
        ),
    ];
    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        for _ in 0..a.warmup {
            f()?;
        }
        let mut ts = Vec::new();
        for _ in 0..a.repeats.max(1) {
            let t0 = Instant::now();
            f()?;
            dev.synchronize()?;
            ts.push(t0.elapsed().as_secs_f64());
        }
        Ok(median(ts))
    };
    let mut rows = Vec::new();
    let mut total = [0.0, 0.0];
    for (name, count, op) in &ops {
        let fwd = time(&|| {
            std::hint::black_box(op()?);
            Ok(())
        })?;
        // Backward from a dense random upstream gradient r, through (y · r).sum(): what that
        // harness costs on its own (the same on a leaf of y's shape) is measured and taken off,
        // so the row is the op's own forward and backward.
        let y0 = op()?;
        let up = (y0.rank() > 0)
            .then(|| y0.randn_like(0.0, 1.0))
            .transpose()?;
        let through = |y: Tensor| -> Result<()> {
            let s = match &up {
                None => y,
                Some(r) => (y * r)?.sum_all()?,
            };
            std::hint::black_box(s.backward()?);
            Ok(())
        };
        let harness = match &up {
            None => 0.0,
            Some(_) => {
                let leaf = Var::from_tensor(&y0.detach())?;
                time(&|| through(leaf.as_tensor().clone()))?
            }
        };
        let both = (time(&|| through(op()?))? - harness).max(fwd);
        if !name.starts_with("lime") {
            total[0] += fwd * *count as f64;
            total[1] += both * *count as f64;
        }
        rows.push(vec![
            name.to_string(),
            count.to_string(),
            format!("{:.2}", fwd * 1e3),
            format!("{:.2}", both * 1e3),
            format!("{:.1}", both * *count as f64 * 1e3),
        ]);
    }
    rows.push(vec![
        "sum of the above × count (llama: without the lime row)".into(),
        String::new(),
        String::new(),
        String::new(),
        format!("{:.1} (fwd alone {:.1})", total[1] * 1e3, total[0] * 1e3),
    ]);
    // The whole step of each model, for comparison (bench train's measurement).
    let batch = crate::eval::Batch {
        input: ids.clone(),
        rows: Tensor::arange(0u32, n as u32, dev)?,
        targets: targets.clone(),
        per_example: vec![t; b],
    };
    let optim = crate::presets::preset("mqar")?.optim;
    for variant in [models::Variant::LLAMA, models::Variant::LIME] {
        let (cfg, _, _) = train_config("default", variant)?;
        let (varmap, model) = models::init_model(&cfg, 0, DType::F32, dev, be)?;
        let opt = std::cell::RefCell::new(crate::optim::AdamW::new(&varmap, variant, &optim)?);
        let step = time(&|| {
            crate::train::step(&model, &mut opt.borrow_mut(), &batch, 1e-3, true)?;
            Ok(())
        })?;
        rows.push(vec![
            format!(
                "one training step ({}, all rows supervised)",
                variant.name()
            ),
            "1".into(),
            String::new(),
            String::new(),
            format!("{:.1}", step * 1e3),
        ]);
    }
    Ok(md(
        &["operation", "per step", "fwd ms", "fwd+bwd ms", "fwd+bwd ms per step"],
        rows,
    ) + &format!(
        "default experiment's shape (B {b}, T {t}, D {d}, H {h}, d_h {dh}, F {f}, V {v}); backward from a random upstream gradient (the harness's own cost, measured on a leaf, taken off); device: {}; backend: {}; CPU: {}; median of {} after {} warm-up\n",
        crate::device::device_name(dev),
        be.name(),
        crate::device::cpu_model(),
        a.repeats,
        a.warmup
    ))
}

fn bench_decode(a: &BenchArgs, dev: &Device) -> Result<String> {
    let model_names = if a.models.is_empty() {
        vec!["llama".to_string(), "lime".into()]
    } else {
        a.models.clone()
    };
    let (l, d, h, v, t) = (4, 128, 4, 512, 256);
    let mut rows = Vec::new();
    for m in &model_names {
        let cfg = model_cfg(crate::spec::parse_variant(m)?, l, d, h, v);
        let (_vm, model) = models::init_model(&cfg, 0, DType::F32, dev, a.backend)?;
        let model = model.with_matmul_dtype(a.precision.matmul_dtype());
        let prompt: Vec<u32> = (0..8u32).collect();
        let new = t - prompt.len();
        let cached_once = || -> Result<f64> {
            let t0 = Instant::now();
            let g = crate::eval::greedy(&model, &prompt, None, new, dev)?;
            Ok(g.len() as f64 / t0.elapsed().as_secs_f64())
        };
        // No cache: re-run the full forward over the growing sequence.
        let full_once = || -> Result<f64> {
            let t0 = Instant::now();
            let mut seq = prompt.clone();
            for _ in 0..new {
                let x = Tensor::from_vec(seq.clone(), (1, seq.len()), dev)?;
                let logits = model.forward(&x)?;
                let next = logits
                    .get(0)?
                    .get(seq.len() - 1)?
                    .argmax(0)?
                    .to_scalar::<u32>()?;
                seq.push(next);
            }
            Ok(new as f64 / t0.elapsed().as_secs_f64())
        };
        // Warm-up (first-touch allocations), then the median of the repeats.
        cached_once()?;
        full_once()?;
        let reps = a.repeats.clamp(1, 5);
        let cached = median(
            (0..reps)
                .map(|_| cached_once())
                .collect::<Result<Vec<_>>>()?,
        );
        let full = median((0..reps).map(|_| full_once()).collect::<Result<Vec<_>>>()?);
        rows.push(vec![
            m.clone(),
            format!("{cached:.0}"),
            format!("{full:.0}"),
            format!("{:.1}x", cached / full),
        ]);
    }
    Ok(md(&["model", "tokens/s (KV cache)", "tokens/s (no cache)", "speed-up"], rows)
        + &format!("4 layers, d=128, vocab 512, greedy decoding of {} tokens after an 8-token prompt, median of {} after a warm-up; device {}; CPU {}; backend {}\n", t - 8, a.repeats.clamp(1, 5), crate::device::device_name(dev), crate::device::cpu_model(), a.backend.name()))
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let dev = a.device.open()?;
    a.precision.check_device(&dev)?;
    let out = match a.what {
        BenchWhat::Gen => bench_gen(a)?,
        BenchWhat::Train => bench_train(a, &dev)?,
        BenchWhat::Decode => bench_decode(a, &dev)?,
        BenchWhat::Sweep => bench_sweep(a, &dev)?,
        BenchWhat::Ops => bench_ops(a, &dev)?,
    };
    print!("{out}");
    Ok(())
}
