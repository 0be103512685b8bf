//! Training and evaluation of one run spec, with run directories, checkpoints and resume.
//!
//! Run directory `<out>/runs/<id>/`: `config.json` (the [`RunSpec`], written before step 0),
//! `metrics.jsonl` (one line per logged step and per evaluation), `ckpt/` (weights, optimizer
//! moments and trainer state; replaced atomically), `result.json` (written atomically at the end).
//! Every batch is a pure function of (spec, step), so a resumed run ends bit-for-bit where an
//! uninterrupted one would.

use crate::io::{read_json, write_atomic, write_json};
use crate::optim::{lr_at, AdamW};
use crate::records::RunResult;
use crate::spec::RunSpec;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tasks::{Example, Split, Task};

/// Trainer state saved with each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainState {
    step: u64,
    best_val: Option<f64>,
    best_step: Option<u64>,
    elapsed_s: f64,
    last_loss: Option<f64>,
}

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

/// Parse `--device`.
pub fn device(spec: &str) -> Result<Device> {
    let cuda = |i: usize| -> Result<Device> {
        if !cfg!(feature = "cuda") {
            bail!(
                "--device {spec}: this binary was built without CUDA (build with --features cuda)"
            );
        }
        Device::new_cuda(i).with_context(|| format!("--device {spec}: no usable CUDA device {i}"))
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        // The first GPU if one can be opened (a CUDA build on a machine without a driver, or
        // with a broken one, falls back to the CPU), else the CPU.
        "auto" => Ok(if cfg!(feature = "cuda") {
            cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "cuda" => cuda(0),
        s if s.starts_with("cuda:") => cuda(
            s[5..]
                .parse()
                .with_context(|| format!("bad device `{s}`"))?,
        ),
        s => bail!("unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"),
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        other => format!("{other:?}"),
    }
}

/// A batch: padded inputs and the supervised positions.
pub struct Batch {
    /// (B, T) u32 token ids.
    pub input: Tensor,
    /// (N,) u32 flat indices b*T + p of supervised positions.
    pub rows: Tensor,
    /// (N,) u32 expected tokens.
    pub targets: Tensor,
    /// Number of supervised positions per example (to score whole sequences).
    pub per_example: Vec<usize>,
}

pub fn make_batch(
    task: &dyn Task,
    examples: &[Example],
    seq_len: usize,
    device: &Device,
) -> Result<Batch> {
    let b = examples.len();
    let mut input = vec![task.pad_id(); b * seq_len];
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut per_example = Vec::with_capacity(b);
    for (i, ex) in examples.iter().enumerate() {
        let n = ex.tokens.len().min(seq_len);
        input[i * seq_len..i * seq_len + n].copy_from_slice(&ex.tokens[..n]);
        let mut k = 0;
        for &(p, t) in &ex.targets {
            if (p as usize) < seq_len {
                rows.push((i * seq_len + p as usize) as u32);
                targets.push(t);
                k += 1;
            }
        }
        per_example.push(k);
    }
    if rows.is_empty() {
        bail!("batch has no supervised positions");
    }
    let n = rows.len();
    Ok(Batch {
        input: Tensor::from_vec(input, (b, seq_len), device)?,
        rows: Tensor::from_vec(rows, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
        per_example,
    })
}

/// Logits at the supervised positions, (N, V).
pub fn supervised_logits(model: &models::Model, batch: &Batch) -> Result<Tensor> {
    // The LM head runs on the supervised rows only (MQAR supervises a few positions of 64+).
    let hidden = model.forward_hidden(&batch.input)?; // (B, T, D)
    let (b, t, d) = hidden.dims3()?;
    let rows = hidden.reshape((b * t, d))?.index_select(&batch.rows, 0)?; // (N, D)
    Ok(model.lm_head(&rows)?) // (N, V)
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

/// Teacher-forced scores over supervised positions.
#[derive(Clone, Copy, Debug)]
pub struct TfScores {
    /// Micro accuracy: fraction of supervised positions predicted right.
    pub token_acc: f64,
    /// Fraction of examples with every supervised position right.
    pub seq_acc: f64,
    /// Macro accuracy: mean over target classes of each class's accuracy (MAD's torchmetrics
    /// default), reported as a second figure.
    pub macro_acc: f64,
}

/// Teacher-forced accuracy of `examples` (batched by `bs`).
pub fn teacher_forced(
    model: &models::Model,
    task: &dyn Task,
    examples: &[Example],
    seq_len: usize,
    device: &Device,
    bs: usize,
) -> Result<TfScores> {
    let (mut right, mut total, mut seq_right) = (0usize, 0usize, 0usize);
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for chunk in examples.chunks(bs.max(1)) {
        let batch = make_batch(task, chunk, seq_len, device)?;
        let pred = supervised_logits(model, &batch)?.argmax(D::Minus1)?;
        let (pv, tv): (Vec<u32>, Vec<u32>) = (pred.to_vec1()?, batch.targets.to_vec1()?);
        pairs.extend(tv.into_iter().zip(pv));
        let ok: Vec<u8> = pred.eq(&batch.targets)?.to_vec1()?;
        right += ok.iter().map(|&x| x as usize).sum::<usize>();
        total += ok.len();
        let mut off = 0;
        for &k in &batch.per_example {
            if ok[off..off + k].iter().all(|&x| x == 1) {
                seq_right += 1;
            }
            off += k;
        }
    }
    Ok(TfScores {
        token_acc: right as f64 / total.max(1) as f64,
        seq_acc: seq_right as f64 / examples.len().max(1) as f64,
        macro_acc: tasks::mad::macro_accuracy(&pairs),
    })
}

/// Greedy decoding with the KV cache from `prompt` until EOS or `max_new` tokens.
pub fn greedy(
    model: &models::Model,
    prompt: &[u32],
    eos: Option<u32>,
    max_new: usize,
    device: &Device,
) -> Result<Vec<u32>> {
    let mut cache = models::KvCache::with_capacity(model.config(), prompt.len() + max_new);
    let mut out = Vec::new();
    let mut input = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), device)?;
    for _ in 0..max_new {
        let logits = model.forward_cached(&input, &mut cache)?; // (1, t, V)
        let t = logits.dim(1)?;
        let next = logits
            .i((0, t - 1))?
            .argmax(D::Minus1)?
            .to_scalar::<u32>()?;
        out.push(next);
        if Some(next) == eos {
            break;
        }
        input = Tensor::from_vec(vec![next], (1, 1), device)?;
    }
    Ok(out)
}

/// Verifier accuracy of greedy generations.
pub fn generation_accuracy(
    model: &models::Model,
    task: &dyn Task,
    examples: &[Example],
    device: &Device,
) -> Result<f64> {
    let mut right = 0usize;
    for ex in examples {
        let max_new = task
            .max_new_tokens()
            .min(task.max_len().saturating_sub(ex.prompt_len).max(1));
        let gen = greedy(model, ex.prompt(), task.eos_id(), max_new, device)?;
        if task.score(ex, &gen) {
            right += 1;
        }
    }
    Ok(right as f64 / examples.len().max(1) as f64)
}

/// The validation score used for model selection (cheap: teacher-forced).
fn val_score(task: &dyn Task, tf: TfScores) -> f64 {
    match task.metric() {
        tasks::Metric::TeacherForced => tf.token_acc,
        tasks::Metric::Generate => tf.seq_acc,
    }
}

fn weights_of(varmap: &candle_nn::VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn set_weights(varmap: &candle_nn::VarMap, w: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        let t = w.get(k).with_context(|| format!("checkpoint lacks {k}"))?;
        v.set(&t.to_device(v.device())?)?;
    }
    Ok(())
}

fn save_tensors(path: &Path, map: &HashMap<String, Tensor>) -> Result<()> {
    let cpu: HashMap<String, Tensor> = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, v)| (k.clone(), v)), None)
        .context("serialize safetensors")?;
    write_atomic(path, &bytes)
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Write a checkpoint: into `ckpt-new-<pid>/` (a folder of this process's own), then swap it in
/// for `ckpt/`. `state.json` is written last and marks a folder complete, so a kill at any point
/// leaves either `ckpt/` or a complete `ckpt-new-<pid>/` (found by [`find_checkpoint`]).
fn save_checkpoint(
    dir: &Path,
    varmap: &candle_nn::VarMap,
    opt: &AdamW,
    best: &Option<HashMap<String, Tensor>>,
    st: &TrainState,
) -> Result<()> {
    let new = dir.join(format!("{CKPT_NEW}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&new);
    std::fs::create_dir_all(&new).with_context(|| format!("cannot create {}", new.display()))?;
    save_tensors(&new.join("weights.safetensors"), &weights_of(varmap)?)?;
    save_tensors(&new.join("optim.safetensors"), &opt.state())?;
    if let Some(b) = best {
        save_tensors(&new.join("best.safetensors"), b)?;
    }
    write_json(&new.join("state.json"), st)?; // last: marks the folder complete
    let cur = dir.join("ckpt");
    let _ = std::fs::remove_dir_all(&cur);
    std::fs::rename(&new, &cur)
        .with_context(|| format!("cannot move checkpoint into {}", cur.display()))?;
    Ok(())
}

/// Prefix of the per-process temporary checkpoint folders.
const CKPT_NEW: &str = "ckpt-new-";

/// The checkpoint to resume from: `ckpt/`, else the newest complete temporary folder (a process
/// killed between removing `ckpt/` and renaming its new one). Called under the run's lock.
fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    let cur = dir.join("ckpt");
    if cur.join("state.json").is_file() {
        return Some(cur);
    }
    let step_of = |p: &Path| {
        read_json::<TrainState>(&p.join("state.json"))
            .ok()
            .map(|s| s.step)
    };
    temp_checkpoints(dir)
        .into_iter()
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

/// Temporary checkpoint folders left in `dir` (by this or a killed process).
fn temp_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(CKPT_NEW))
        .map(|e| e.path())
        .collect()
}

/// A run folder claimed by this process: an exclusive OS lock (`flock`) on `<run>/lock`, held
/// until drop. The OS drops it when the process dies, however it dies (kill -9 included), so a
/// claim never outlives its writer and a rerun resumes as usual.
pub struct RunClaim {
    _file: std::fs::File,
}

/// What [`run_one`] does when another process holds the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenBusy {
    /// Wait for the other process, then use its result (or resume, if it stopped early).
    #[default]
    Wait,
    /// Return [`Outcome::Busy`] at once (sweeps: the other process is doing that run).
    Skip,
}

/// Claim run folder `dir` (created if missing). `Ok(None)` if it is held and `when` is
/// [`WhenBusy::Skip`].
pub fn claim_run(dir: &Path, when: WhenBusy, quiet: bool) -> Result<Option<RunClaim>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            if when == WhenBusy::Skip {
                return Ok(None);
            }
            if !quiet {
                eprintln!(
                    "{}: another process is training this run; waiting for it",
                    dir.file_name().unwrap_or_default().to_string_lossy()
                );
            }
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(Some(RunClaim { _file: file }))
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
    let (varmap, model) = models::init_varmap(&spec.model_config, spec.seed, DType::F32, dev)?;
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
        let logits = supervised_logits(&model, &batch)?;
        let loss = model.cross_entropy(&logits, &batch.targets)?;
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
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
        let grads = loss.backward()?;
        let lr = lr_at(&spec.optim, spec.optim.lr, step, spec.steps);
        opt.apply(&grads, lr)?; // checks that every weight got a gradient, clips, steps
        st.step += 1;
        st.last_loss = Some(loss_v);
        window_tokens += (spec.batch_size * spec.seq_len) as u64;
        pb.set_position(st.step);
        if st.step % log_every == 0 || st.step == spec.steps {
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
        if st.step % spec.eval_every == 0 || st.step == spec.steps {
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
            if st.step % spec.ckpt_every == 0 && st.step < spec.steps {
                save_checkpoint(&dir, &varmap, &opt, &best, &st)?;
            }
        }
    }
    pb.finish_and_clear();

    let tokens_seen = st.step * (spec.batch_size * spec.seq_len) as u64;
    let mut result = RunResult {
        id,
        status: if diverged {
            "diverged".into()
        } else {
            "ok".into()
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
