//! Training one run spec into its run directory, with resume: [`run_one`] drives the loop, [`step`]
//! is the one training step (also what `harness bench train` times). Batches and scores are in
//! [`crate::eval`], the checkpoint folder in [`crate::checkpoint`], the one-writer lock in
//! [`crate::claim`].
//!
//! Run directory `<out>/runs/<id>/`: `config.json` (the [`RunSpec`], written before step 0),
//! `metrics.jsonl` (one line per logged step and per evaluation), `ckpt/` (weights, optimizer
//! moments and trainer state; replaced atomically), `result.json` (written atomically at the end).
//! Every batch is a pure function of (spec, step), so a resumed run ends bit-for-bit where an
//! uninterrupted one would.

use crate::checkpoint::{
    find_checkpoint, load_tensors, save_checkpoint, save_tensors, set_weights, temp_checkpoints,
    weights_of, TrainState,
};
use crate::claim::claim_run;
pub use crate::claim::WhenBusy;
use crate::device::device_name;
use crate::eval::{
    generation_accuracy, make_batch, supervised_logits, teacher_forced, val_score, Batch,
};
use crate::io::{read_json, write_atomic, write_json};
use crate::optim::{lr_at, AdamW};
use crate::records::{RunResult, RunStatus};
use crate::spec::RunSpec;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tasks::{Example, Split, Task};

#[derive(Serialize, Deserialize)]
struct MetricLine {
    step: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    flops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_acc: Option<f64>,
}

/// Indices of the train examples of `step` (fresh stream or draws from a fixed pool).
fn train_indices(spec: &RunSpec, step: u64) -> Vec<u64> {
    let b = spec.batch_size as u64;
    if spec.train_pool == 0 {
        // Each seed reads its own stretch of the (unbounded) train split.
        let base = spec.seed << 40;
        (0..b).map(|j| base + step * b + j).collect()
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step,
        );
        (0..b).map(|_| rng.gen_range(0..spec.train_pool)).collect()
    }
}

fn train_batch(task: &dyn Task, digest: &[u8; 32], spec: &RunSpec, step: u64) -> Vec<Example> {
    use rayon::prelude::*;
    train_indices(spec, step)
        .into_par_iter()
        .map(|i| tasks::generate_with(task, digest, Split::Train, i))
        .collect()
}

/// Keep only metric lines up to `step` (after resuming from a checkpoint at `step`).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<MetricLine>(l)
                .map(|m| m.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn append_metric(path: &Path, m: &MetricLine) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What one training [`step`] measured.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// The batch's mean cross-entropy before the update.
    pub loss: f64,
    /// Seconds of (forward and loss, backward, optimiser); measured only when `timed`.
    pub seconds: [f64; 3],
}

/// One training step: logits at the batch's supervised positions, cross-entropy, backward, then
/// AdamW at `lr` (which checks that every trainable weight received a gradient and clips the
/// global norm). A non-finite loss returns before backward with the weights untouched (the caller
/// records the divergence). `timed` waits for the device between phases, for `harness bench`.
pub fn step(
    model: &models::Model,
    opt: &mut AdamW,
    batch: &Batch,
    lr: f64,
    timed: bool,
) -> Result<StepReport> {
    let dev = batch.input.device();
    let sync = || if timed { dev.synchronize() } else { Ok(()) };
    let t0 = Instant::now();
    let logits = supervised_logits(model, batch)?;
    let loss = model.cross_entropy(&logits, &batch.targets)?;
    let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let mut seconds = [0.0; 3];
    if !loss_v.is_finite() {
        return Ok(StepReport {
            loss: loss_v,
            seconds,
        });
    }
    sync()?;
    let t1 = Instant::now();
    let grads = loss.backward()?;
    sync()?;
    let t2 = Instant::now();
    opt.apply(&grads, lr)?;
    sync()?;
    seconds = [
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        t2.elapsed().as_secs_f64(),
    ];
    Ok(StepReport {
        loss: loss_v,
        seconds,
    })
}

/// Outcome of [`run_one`].
pub enum Outcome {
    Done(RunResult),
    /// The result existed (made earlier, or by the process this one waited for).
    Skipped(RunResult),
    /// Stopped early by `--stop-after` (testing aid).
    Interrupted,
    /// Held by another process and [`WhenBusy::Skip`] was asked for.
    Busy,
}

/// How [`run_one`] runs: the main job's and the sweep's switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// No progress bars or messages.
    pub quiet: bool,
    /// Recompute a run whose result exists.
    pub force: bool,
    /// Testing aid: stop (as if killed) after this many steps, leaving the checkpoint.
    pub stop_after: Option<u64>,
    pub when_busy: WhenBusy,
}

/// Train and evaluate one spec in `<out>/runs/<id>/`. The run folder is claimed first
/// ([`claim_run`]): one process writes a run; another waits (or, with [`WhenBusy::Skip`], moves
/// on) and then uses the finished result.
pub fn run_one(spec: &RunSpec, out: &Path, dev: &Device, o: RunOptions) -> Result<Outcome> {
    spec.precision.check_device(dev)?; // before anything is written
    let id = spec.id();
    let dir = out.join("runs").join(&id);
    let result_path = dir.join("result.json");
    if result_path.is_file() && !o.force {
        return Ok(Outcome::Skipped(read_json(&result_path)?));
    }
    let Some(_claim) = claim_run(&dir, o.when_busy, o.quiet)? else {
        return Ok(Outcome::Busy);
    };
    // Under the claim: the result may have been written while this process waited.
    if result_path.is_file() && !o.force {
        return Ok(Outcome::Skipped(read_json(&result_path)?));
    }
    if o.force {
        let _ = std::fs::remove_dir_all(dir.join("ckpt"));
        for t in temp_checkpoints(&dir) {
            let _ = std::fs::remove_dir_all(t);
        }
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
    }
    write_json(&dir.join("config.json"), spec)?;
    let (quiet, stop_after) = (o.quiet, o.stop_after);

    let task = task_from_spec(spec)?;
    let task = task.as_ref();
    let digest = tasks::config_digest(task);
    let val = tasks::generate_range(task, Split::Val, 0, spec.n_val);
    let (varmap, model) =
        models::init_model(&spec.model_config, spec.seed, DType::F32, dev, spec.backend)?;
    let model = model.with_matmul_dtype(spec.precision.matmul_dtype());
    let params = models::accounting::num_params(&spec.model_config);
    let mut opt = AdamW::new(&varmap, spec.model_config.variant, &spec.optim)?;
    let metrics_path = dir.join("metrics.jsonl");

    let mut st = TrainState {
        step: 0,
        best_val: None,
        best_step: None,
        elapsed_s: 0.0,
        last_loss: None,
    };
    let mut best: Option<HashMap<String, Tensor>> = None;
    if let Some(ck) = find_checkpoint(&dir) {
        st = read_json(&ck.join("state.json"))?;
        set_weights(
            &varmap,
            &load_tensors(&ck.join("weights.safetensors"), dev)?,
        )?;
        opt.load_state(&load_tensors(&ck.join("optim.safetensors"), dev)?, st.step)?;
        if ck.join("best.safetensors").is_file() {
            best = Some(load_tensors(&ck.join("best.safetensors"), dev)?);
        }
        truncate_metrics(&metrics_path, st.step)?;
        if ck != dir.join("ckpt") {
            // A kill between removing ckpt/ and the rename: make the found folder the checkpoint.
            std::fs::rename(&ck, dir.join("ckpt"))
                .with_context(|| format!("cannot move {} to ckpt/", ck.display()))?;
        }
    } else {
        let _ = std::fs::remove_file(&metrics_path);
    }
    // Temporary folders of killed processes (incomplete, or superseded by ckpt/).
    for t in temp_checkpoints(&dir) {
        let _ = std::fs::remove_dir_all(t);
    }

    let pb = progress(spec, quiet, st.step);
    let t0 = Instant::now() - std::time::Duration::from_secs_f64(st.elapsed_s);
    let log_every = (spec.steps / 50).max(1);
    let mut diverged = false;
    let mut window = Instant::now();
    let mut window_tokens = 0u64;
    while st.step < spec.steps {
        if stop_after.is_some_and(|s| st.step >= s) {
            pb.abandon();
            return Ok(Outcome::Interrupted);
        }
        let step = st.step;
        let batch = make_batch(
            task,
            &train_batch(task, &digest, spec, step),
            spec.seq_len,
            dev,
        )?;
        let lr = lr_at(&spec.optim, spec.optim.lr, step, spec.steps);
        let loss_v = self::step(&model, &mut opt, &batch, lr, false)?.loss;
        if !loss_v.is_finite() {
            diverged = true;
            append_metric(
                &metrics_path,
                &MetricLine {
                    step,
                    flops: None,
                    loss: Some(f64::NAN),
                    lr: None,
                    tokens_per_s: None,
                    val_acc: None,
                },
            )
            .ok();
            break;
        }
        st.step += 1;
        st.last_loss = Some(loss_v);
        window_tokens += (spec.batch_size * spec.seq_len) as u64;
        pb.set_position(st.step);
        if st.step.is_multiple_of(log_every) || st.step == spec.steps {
            let tps = window_tokens as f64 / window.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("loss {loss_v:.4}"));
            append_metric(
                &metrics_path,
                &MetricLine {
                    step: st.step,
                    flops: Some(st.step as f64 * spec.flops_per_step),
                    loss: Some(loss_v),
                    lr: Some(lr),
                    tokens_per_s: Some(tps),
                    val_acc: None,
                },
            )?;
            window = Instant::now();
            window_tokens = 0;
        }
        if st.step.is_multiple_of(spec.eval_every) || st.step == spec.steps {
            let score = val_score(
                task,
                teacher_forced(&model, task, &val, spec.seq_len, dev, spec.batch_size)?,
            );
            append_metric(
                &metrics_path,
                &MetricLine {
                    step: st.step,
                    flops: None,
                    loss: None,
                    lr: None,
                    tokens_per_s: None,
                    val_acc: Some(score),
                },
            )?;
            if st.best_val.is_none_or(|b| score > b) {
                st.best_val = Some(score);
                st.best_step = Some(st.step);
                best = Some(weights_of(&varmap)?);
            }
            st.elapsed_s = t0.elapsed().as_secs_f64();
            if st.step.is_multiple_of(spec.ckpt_every) && st.step < spec.steps {
                save_checkpoint(&dir, &varmap, &opt, &best, &st)?;
            }
        }
    }
    pb.finish_and_clear();

    let tokens_seen = st.step * (spec.batch_size * spec.seq_len) as u64;
    let mut result = RunResult {
        id,
        status: if diverged {
            RunStatus::Diverged
        } else {
            RunStatus::Ok
        },
        task: spec.task.clone(),
        level: spec.level.clone(),
        model: spec.model.clone(),
        seed: spec.seed,
        lr: spec.optim.lr,
        params,
        budget_flops: spec.budget_flops,
        flops_spent: st.step as f64 * spec.flops_per_step,
        steps: st.step,
        tokens_seen,
        wall_clock_s: 0.0,
        device: device_name(dev),
        metric: task.metric(),
        chance: task.chance(),
        final_loss: st.last_loss,
        best_step: None,
        val_acc: None,
        test_acc: None,
        test_token_acc: None,
        test_macro_acc: None,
        router_heatmap: Vec::new(),
    };
    if !diverged {
        if let Some(b) = &best {
            set_weights(&varmap, b)?;
        }
        let test = tasks::generate_range(task, Split::Test, 0, spec.n_test);
        let tf = teacher_forced(&model, task, &test, spec.seq_len, dev, spec.batch_size)?;
        result.test_token_acc = Some(tf.token_acc);
        result.test_macro_acc = Some(tf.macro_acc);
        result.test_acc = Some(match task.metric() {
            tasks::Metric::TeacherForced => tf.token_acc,
            tasks::Metric::Generate => generation_accuracy(&model, task, &test, dev)?,
        });
        result.best_step = st.best_step;
        result.router_heatmap = model.router_heatmap()?;
        result.val_acc = st.best_val;
        if let Some(b) = &best {
            save_tensors(&dir.join("best.safetensors"), b)?;
        }
    }
    result.wall_clock_s = t0.elapsed().as_secs_f64();
    write_json(&result_path, &result)?;
    let _ = std::fs::remove_dir_all(dir.join("ckpt"));
    for t in temp_checkpoints(&dir) {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(Outcome::Done(result))
}

/// Rebuild the task from the exact config stored in the spec.
pub fn task_from_spec(spec: &RunSpec) -> Result<Box<dyn Task>, tasks::TaskError> {
    let sets: Vec<(String, String)> = spec
        .task_config
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
        .unwrap_or_default();
    tasks::build(&spec.task, Some(&spec.level), &sets)
}

fn progress(spec: &RunSpec, quiet: bool, pos: u64) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(spec.steps),
        indicatif::ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>28} [{bar:30}] {pos}/{len} {msg} ({eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(format!("{} {} s{}", spec.task, spec.model, spec.seed));
    pb.set_position(pos);
    pb
}
