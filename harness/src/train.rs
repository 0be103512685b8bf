//! Training one run spec into its run directory, with resume: [`run_one`] claims and prepares the
//! run, `train_pack` is the loop (a `Trainer`: `train_step`, `evaluate`, `checkpoint`, `finish`),
//! [`step`] is the one training step (also what `harness bench train` times). Batches and scores
//! are in [`crate::eval`], the checkpoint folder in [`crate::checkpoint`], the one-writer lock in
//! [`crate::claim`], the run folder's layout in [`crate::rundir`].
//!
//! Run directory `<out>/runs/<id>/`: `config.json` (the [`RunSpec`], written before step 0),
//! `metrics.jsonl` (one line per logged step and per evaluation), `ckpt/` (weights, optimizer
//! moments and trainer state; replaced atomically), `result.json` (written atomically at the end).
//! Every batch is a pure function of (spec, step), so a resumed run ends bit-for-bit where an
//! uninterrupted one would.

use crate::checkpoint::{
    adopt_checkpoint, load_tensors, save_checkpoint, save_tensors, temp_checkpoints, TrainState,
};
pub use crate::claim::WhenBusy;
use crate::claim::{claim_run, RunClaim};
use crate::device::run_device_name;
use crate::eval::{
    choice_accuracy, generation_accuracy, generation_scores, make_batch, teacher_forced, val_score,
    Batch,
};
use crate::io::{read_json, write_atomic, write_json};
use crate::optim::{lr_at, AdamW};
use crate::records::{RunResult, RunStatus};
use crate::spec::RunSpec;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::rundir::{MetricLine, RunDir};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;
use tasks::{Example, Split, Task};

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

pub(crate) fn train_batch(
    task: &dyn Task,
    digest: &[u8; 32],
    spec: &RunSpec,
    step: u64,
) -> Vec<Example> {
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
    let r = step_pack(model, opt, std::slice::from_ref(batch), &[Some(lr)], timed)?;
    Ok(StepReport {
        loss: r.losses[0],
        seconds: r.seconds,
    })
}

/// What one [`step_pack`] measured.
#[derive(Clone, Debug)]
pub struct PackReport {
    /// Each run's mean cross-entropy before the update.
    pub losses: Vec<f64>,
    /// As [`StepReport::seconds`], for the whole pack.
    pub seconds: [f64; 3],
}

/// [`step`] for a packed model (`models::pack`) of P runs: `batches[p]` is run p's batch (all of
/// one shape), `lrs[p]` its learning rate, `None` for a run that is not stepped (diverged). The
/// runs' inputs are stacked run-major and go through one forward and one backward of
/// Σ_p loss_p, whose gradient on run p's slice is run p's own; each run then takes its own AdamW
/// step (own gradient norm and clip). A run whose loss is not finite gets no update (its
/// divergence is for the caller to record); the others are stepped as usual.
pub fn step_pack(
    model: &models::Model,
    opt: &mut AdamW,
    batches: &[Batch],
    lrs: &[Option<f64>],
    timed: bool,
) -> Result<PackReport> {
    let pack = model.pack();
    if batches.len() != pack || lrs.len() != pack {
        anyhow::bail!("a pack of {pack} runs given {} batches", batches.len());
    }
    let dev = batches[0].input.device();
    let sync = || if timed { dev.synchronize() } else { Ok(()) };
    let t0 = Instant::now();
    let input = match batches {
        [one] => one.input.clone(),
        _ => Tensor::cat(&batches.iter().map(|b| &b.input).collect::<Vec<_>>(), 0)?,
    }; // (P·B, T)
    let hidden = model.forward_hidden(&input)?; // (P·B, T, D)
    let (rows, t, d) = hidden.dims3()?;
    let b = rows / pack;
    let mut losses = Vec::with_capacity(pack);
    let mut stepped: Option<Tensor> = None; // Σ of the finite losses of the runs stepped
    let mut lrs = lrs.to_vec();
    for (p, batch) in batches.iter().enumerate() {
        let h = match pack {
            1 => hidden.clone(),
            _ => hidden.narrow(0, p * b, b)?,
        }; // (B, T, D) of run p
           // The LM head runs on the supervised rows only (MQAR supervises a few positions of 64+).
        let sup = h.reshape((b * t, d))?.index_select(&batch.rows, 0)?; // (N, D)
        let loss = model.cross_entropy(&model.lm_head_of(p, &sup)?, &batch.targets)?;
        let v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        losses.push(v);
        if !v.is_finite() {
            lrs[p] = None;
        } else if lrs[p].is_some() {
            stepped = Some(match stepped {
                None => loss,
                Some(s) => (s + loss)?,
            });
        }
    }
    let mut seconds = [0.0; 3];
    let Some(total) = stepped else {
        return Ok(PackReport { losses, seconds });
    };
    sync()?;
    let t1 = Instant::now();
    let grads = total.backward()?;
    sync()?;
    let t2 = Instant::now();
    opt.apply_runs(&grads, &lrs)?;
    sync()?;
    seconds = [
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        t2.elapsed().as_secs_f64(),
    ];
    Ok(PackReport { losses, seconds })
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
    let mut outcomes = run_pack(std::slice::from_ref(spec), out, dev, o)?;
    Ok(outcomes.pop().expect("one outcome per spec"))
}

/// Runs `specs` (their outcomes in the same order), up to `pack` at a time packed into one model
/// ([`run_pack`]): specs that differ only in seed and learning rate ([`pack_key`]) of a packable
/// variant share a pack; the rest run one by one. `pack` 1 is the plain loop of [`run_one`].
pub fn run_all(
    specs: &[RunSpec],
    out: &Path,
    dev: &Device,
    o: RunOptions,
    pack: usize,
    mut report: impl FnMut(&RunSpec, &Outcome),
) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = specs.iter().map(|_| None).collect();
    for group in packs(specs, pack) {
        let members: Vec<RunSpec> = group.iter().map(|&i| specs[i].clone()).collect();
        let done = run_pack(&members, out, dev, o)?;
        let stop = done.iter().any(|d| matches!(d, Outcome::Interrupted));
        for (i, d) in group.into_iter().zip(done) {
            report(&specs[i], &d);
            outcomes[i] = Some(d);
        }
        if stop {
            break;
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// What specs must share to be packed: everything but the seed and the learning rate.
pub fn pack_key(spec: &RunSpec) -> String {
    spec.cell_key()
}

/// The specs (indices) in packs of at most `pack`, in order of first appearance.
fn packs(specs: &[RunSpec], pack: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let key = match pack > 1 && s.model_config.variant.def().packable() {
            true => pack_key(s),
            false => format!("#{i}"), // alone
        };
        match groups.iter_mut().find(|(k, g)| *k == key && g.len() < pack) {
            Some((_, g)) => g.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// A run of a pack, claimed and ready to train.
struct Member<'a> {
    spec: &'a RunSpec,
    run: RunDir,
    _claim: RunClaim,
    st: TrainState,
    /// The weights to start from (the checkpoint's, else the seed's init); taken when the pack
    /// is built.
    weights: Option<HashMap<String, Tensor>>,
    optim: Option<HashMap<String, Tensor>>,
    best: Option<HashMap<String, Tensor>>,
    diverged: bool,
}

/// Claims `spec`'s folder and loads where it stands, or says why it is not to be trained.
fn prepare<'a>(
    spec: &'a RunSpec,
    out: &Path,
    dev: &Device,
    o: RunOptions,
) -> Result<std::result::Result<Member<'a>, Outcome>> {
    spec.precision.check_device(dev)?; // before anything is written
    let run = RunDir::of(out, &spec.id());
    let dir = run.path().to_path_buf();
    let result_path = run.result();
    if result_path.is_file() && !o.force {
        return Ok(Err(Outcome::Skipped(read_json(&result_path)?)));
    }
    let Some(claim) = claim_run(&dir, o.when_busy, o.quiet)? else {
        return Ok(Err(Outcome::Busy));
    };
    // Under the claim: the result may have been written while this process waited.
    if result_path.is_file() && !o.force {
        return Ok(Err(Outcome::Skipped(read_json(&result_path)?)));
    }
    if o.force {
        let _ = std::fs::remove_dir_all(run.ckpt());
        for t in temp_checkpoints(&dir) {
            let _ = std::fs::remove_dir_all(t);
        }
        let _ = std::fs::remove_file(run.metrics());
    }
    write_json(&run.config(), spec)?;
    let metrics_path = run.metrics();
    let mut m = Member {
        spec,
        run: run.clone(),
        _claim: claim,
        st: TrainState {
            step: 0,
            best_val: None,
            best_val_loss: None,
            best_step: None,
            elapsed_s: 0.0,
            last_loss: None,
        },
        weights: None,
        optim: None,
        best: None,
        diverged: false,
    };
    if let Some(ck) = adopt_checkpoint(&dir)? {
        m.st = read_json(&ck.join("state.json"))?;
        m.weights = Some(load_tensors(&ck.join("weights.safetensors"), dev)?);
        m.optim = Some(load_tensors(&ck.join("optim.safetensors"), dev)?);
        if ck.join(crate::rundir::BEST).is_file() {
            m.best = Some(load_tensors(&ck.join(crate::rundir::BEST), dev)?);
        }
        truncate_metrics(&metrics_path, m.st.step)?;
    } else {
        let _ = std::fs::remove_file(&metrics_path);
        let (varmap, _) =
            models::init_model(&spec.model_config, spec.seed, DType::F32, dev, spec.backend)?;
        m.weights = Some(models::state_dict(&varmap)?);
    }
    // Temporary folders of killed processes (incomplete, or superseded by ckpt/).
    for t in temp_checkpoints(&dir) {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(Ok(m))
}

/// Train and evaluate `specs` — runs that differ only in seed and learning rate ([`pack_key`];
/// one spec is an ordinary run) — packed into one model (`models::pack`), each in its own
/// folder exactly as [`run_one`] would leave it: its `config.json`, `metrics.jsonl`,
/// checkpoints, selection on val and `result.json`. Finished runs are skipped, and each run
/// resumes from its own checkpoint (runs whose checkpoints stand at different steps train in
/// separate packs). A run that diverges is recorded as such and the others go on unchanged.
/// Folders are claimed in run-id order, so two packing processes never wait on each other.
pub fn run_pack(
    specs: &[RunSpec],
    out: &Path,
    dev: &Device,
    o: RunOptions,
) -> Result<Vec<Outcome>> {
    if let Some(s) = specs.iter().find(|s| pack_key(s) != pack_key(&specs[0])) {
        anyhow::bail!(
            "cannot pack {} with {}: they differ in more than seed and learning rate",
            s.id(),
            specs[0].id()
        );
    }
    let mut outcomes: Vec<Option<Outcome>> = specs.iter().map(|_| None).collect();
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| specs[i].id());
    let mut members = Vec::new();
    for i in order {
        match prepare(&specs[i], out, dev, o)? {
            Ok(m) => members.push((i, m)),
            Err(done) => outcomes[i] = Some(done),
        }
    }
    members.sort_by_key(|(i, m)| (m.st.step, *i));
    while !members.is_empty() {
        let at = members[0].1.st.step;
        let rest = members.split_off(members.iter().take_while(|(_, m)| m.st.step == at).count());
        let (idx, group): (Vec<usize>, Vec<Member>) =
            std::mem::replace(&mut members, rest).into_iter().unzip();
        for (i, done) in idx.into_iter().zip(train_pack(group, dev, o)?) {
            outcomes[i] = Some(done);
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|d| d.expect("every spec has an outcome"))
        .collect())
}

/// The model of one run's weights `w` (for evaluation), in the run's backend and precision.
pub fn run_model(
    spec: &RunSpec,
    w: &HashMap<String, Tensor>,
    dev: &Device,
) -> Result<models::Model> {
    let vb = candle_nn::VarBuilder::from_tensors(w.clone(), DType::F32, dev);
    Ok(models::Model::new(&spec.model_config, vb, spec.backend)?
        .with_matmul_dtype(spec.precision.matmul_dtype()))
}

/// The training loop of [`run_pack`] for members standing at the same step: one run reads top
/// to bottom; a pack of several runs is the same loop over a stacked model.
fn train_pack(members: Vec<Member>, dev: &Device, o: RunOptions) -> Result<Vec<Outcome>> {
    let mut t = Trainer::new(members, dev, o)?;
    while t.step < t.steps {
        if o.stop_after.is_some_and(|s| t.step >= s) {
            return Ok(t.interrupt());
        }
        t.train_step()?;
        if t.all_diverged() {
            break;
        }
        if t.step.is_multiple_of(t.eval_every) || t.step == t.steps {
            t.evaluate()?;
            t.checkpoint()?;
        }
    }
    t.finish()
}

/// The state of a training loop: the (packed) model and optimizer, the task and its val split,
/// the runs it trains and where each stands.
struct Trainer<'a> {
    members: Vec<Member<'a>>,
    dev: &'a Device,
    task: Box<dyn Task>,
    /// The task config's digest (train batches are keyed by it).
    digest: [u8; 32],
    val: Vec<Example>,
    /// The packed weights: member p's parameters are slice p of each.
    varmap: candle_nn::VarMap,
    model: models::Model,
    opt: AdamW,
    bars: Vec<indicatif::ProgressBar>,
    /// When each member started, its earlier sessions' time included.
    t0: Vec<Instant>,
    step: u64,
    steps: u64,
    eval_every: u64,
    log_every: u64,
    /// Throughput since the last log line.
    window: Instant,
    window_tokens: u64,
}

impl<'a> Trainer<'a> {
    /// Stack the members' starting weights into one model and load their optimizer states.
    fn new(mut members: Vec<Member<'a>>, dev: &'a Device, o: RunOptions) -> Result<Self> {
        let spec0 = members[0].spec;
        let pack = members.len();
        let task = task_from_spec(spec0)?;
        let digest = tasks::config_digest(task.as_ref());
        let val = tasks::generate_range(task.as_ref(), Split::Val, 0, spec0.n_val);
        let start: Vec<HashMap<String, Tensor>> = members
            .iter_mut()
            .map(|m| m.weights.take().expect("prepared weights"))
            .collect();
        let varmap = models::pack::stack(&start)?;
        drop(start);
        let model = models::pack::model(&spec0.model_config, &varmap, pack, spec0.backend)?
            .with_matmul_dtype(spec0.precision.matmul_dtype());
        let mut opt = AdamW::packed(&varmap, spec0.model_config.variant, &spec0.optim, pack)?;
        for (p, m) in members.iter_mut().enumerate() {
            if let Some(state) = m.optim.take() {
                opt.load_state_of(p, &state, m.st.step)?;
            }
        }
        let bars = members
            .iter()
            .map(|m| progress(m.spec, o.quiet, m.st.step))
            .collect();
        let t0 = members
            .iter()
            .map(|m| Instant::now() - std::time::Duration::from_secs_f64(m.st.elapsed_s))
            .collect();
        Ok(Trainer {
            step: members[0].st.step,
            steps: spec0.steps,
            eval_every: spec0.eval_every,
            log_every: (spec0.steps / 50).max(1),
            members,
            dev,
            task,
            digest,
            val,
            varmap,
            model,
            opt,
            bars,
            t0,
            window: Instant::now(),
            window_tokens: 0,
        })
    }

    fn all_diverged(&self) -> bool {
        self.members.iter().all(|m| m.diverged)
    }

    /// Stop as if killed (`--stop-after`): the last checkpoint stays.
    fn interrupt(&self) -> Vec<Outcome> {
        self.bars.iter().for_each(|pb| pb.abandon());
        self.members.iter().map(|_| Outcome::Interrupted).collect()
    }

    /// One optimizer step of every live member on its own batch at its own lr; logs the loss
    /// every `log_every` steps; a non-finite loss marks its member diverged (the others go on).
    fn train_step(&mut self) -> Result<()> {
        let (task, step, steps) = (self.task.as_ref(), self.step, self.steps);
        let batches = self
            .members
            .iter()
            .map(|m| {
                let examples = train_batch(task, &self.digest, m.spec, step);
                make_batch(task, &examples, m.spec.seq_len, self.dev)
            })
            .collect::<Result<Vec<_>>>()?;
        let lrs: Vec<Option<f64>> = self
            .members
            .iter()
            .map(|m| (!m.diverged).then(|| lr_at(&m.spec.optim, m.spec.optim.lr, step, steps)))
            .collect();
        let losses = step_pack(&self.model, &mut self.opt, &batches, &lrs, false)?.losses;
        self.step += 1;
        let step = self.step;
        let spec0 = self.members[0].spec;
        self.window_tokens += (spec0.batch_size * spec0.seq_len) as u64;
        let log = step.is_multiple_of(self.log_every) || step == steps;
        let tps = self.window_tokens as f64 / self.window.elapsed().as_secs_f64().max(1e-9);
        for (p, m) in self.members.iter_mut().enumerate() {
            let (Some(lr), loss) = (lrs[p], losses[p]) else {
                continue; // diverged earlier
            };
            if !loss.is_finite() {
                m.diverged = true;
                let nan = MetricLine {
                    step: step - 1,
                    loss: Some(f64::NAN),
                    ..MetricLine::default()
                };
                append_metric(&m.run.metrics(), &nan).ok();
                continue;
            }
            m.st.step = step;
            m.st.last_loss = Some(loss);
            self.bars[p].set_position(step);
            if log {
                self.bars[p].set_message(format!("loss {loss:.4}"));
                let line = MetricLine {
                    step,
                    flops: Some(step as f64 * m.spec.flops_per_step),
                    loss: Some(loss),
                    lr: Some(lr),
                    tokens_per_s: Some(tps),
                    ..MetricLine::default()
                };
                append_metric(&m.run.metrics(), &line)?;
            }
        }
        if log {
            self.window = Instant::now();
            self.window_tokens = 0;
        }
        Ok(())
    }

    /// Score every live member on val with its spec's val metric, log it, and keep its weights
    /// when they are its best so far (early stopping).
    fn evaluate(&mut self) -> Result<()> {
        let (task, step, dev, pack) = (self.task.as_ref(), self.step, self.dev, self.members.len());
        for (p, m) in self.members.iter_mut().enumerate() {
            if m.diverged {
                continue;
            }
            let weights = models::pack::member(&self.varmap, pack, p)?;
            let model = match pack {
                1 => self.model.clone(),
                _ => run_model(m.spec, &weights, dev)?,
            };
            let (score, loss) = val_scores(&model, task, &self.val, m.spec, dev)?;
            let line = MetricLine {
                step,
                val_acc: Some(score),
                val_loss: Some(loss),
                ..MetricLine::default()
            };
            append_metric(&m.run.metrics(), &line)?;
            if m.st.best_val.is_none_or(|b| score > b) {
                m.st.best_val = Some(score);
                m.st.best_val_loss = Some(loss);
                m.st.best_step = Some(step);
                m.best = Some(weights);
            }
            m.st.elapsed_s = self.t0[p].elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Save the live members' resumable state every `ckpt_every` steps (not at the end: the
    /// result replaces it).
    fn checkpoint(&mut self) -> Result<()> {
        let pack = self.members.len();
        for (p, m) in self.members.iter().enumerate() {
            if m.diverged || !self.step.is_multiple_of(m.spec.ckpt_every) || self.step >= self.steps
            {
                continue;
            }
            let weights = models::pack::member(&self.varmap, pack, p)?;
            save_checkpoint(
                m.run.path(),
                &weights,
                &self.opt.state_of(p),
                &m.best,
                &m.st,
            )?;
        }
        Ok(())
    }

    /// Test every member with its selected weights, write its `result.json` and drop its
    /// checkpoint.
    fn finish(self) -> Result<Vec<Outcome>> {
        self.bars.iter().for_each(|pb| pb.finish_and_clear());
        let task = self.task.as_ref();
        let pack = self.members.len();
        let params = models::accounting::num_params(&self.members[0].spec.model_config);
        let mut outcomes = Vec::with_capacity(pack);
        for (p, m) in self.members.iter().enumerate() {
            let mut result = empty_result(m, params, task, self.dev);
            if !m.diverged {
                let w = match &m.best {
                    Some(b) => b.clone(),
                    None => models::pack::member(&self.varmap, pack, p)?,
                };
                test_into(&mut result, m, &w, task, self.dev)?;
                if let Some(b) = &m.best {
                    save_tensors(&m.run.best(), b)?;
                }
            }
            result.wall_clock_s = self.t0[p].elapsed().as_secs_f64();
            write_json(&m.run.result(), &result)?;
            let _ = std::fs::remove_dir_all(m.run.ckpt());
            for t in temp_checkpoints(m.run.path()) {
                let _ = std::fs::remove_dir_all(t);
            }
            outcomes.push(Outcome::Done(result));
        }
        Ok(outcomes)
    }
}

/// A member's val accuracy by its spec's val metric, and its teacher-forced val loss.
fn val_scores(
    model: &models::Model,
    task: &dyn Task,
    val: &[Example],
    spec: &RunSpec,
    dev: &Device,
) -> Result<(f64, f64)> {
    let tf = teacher_forced(model, task, val, spec.seq_len, dev, spec.batch_size)?;
    let score = match (spec.val_metric, task.metric()) {
        (crate::overrides::ValMetric::Task, tasks::Metric::Generate) => {
            generation_accuracy(model, task, val, dev)?
        }
        // The spec refused `choice` for a task that poses none.
        (crate::overrides::ValMetric::Choice, _) => {
            choice_accuracy(model, task, val, spec.seq_len, dev, spec.batch_size)?.unwrap_or(0.0)
        }
        _ => val_score(task, tf),
    };
    Ok((score, tf.loss))
}

/// A member's result before testing: what it trained, how it ended, nothing measured yet.
fn empty_result(m: &Member, params: u64, task: &dyn Task, dev: &Device) -> RunResult {
    let (spec, st) = (m.spec, &m.st);
    RunResult {
        id: spec.id(),
        status: if m.diverged {
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
        tokens_seen: st.step * (spec.batch_size * spec.seq_len) as u64,
        wall_clock_s: 0.0,
        device: run_device_name(dev),
        metric: task.metric(),
        chance: task.chance(),
        final_loss: st.last_loss,
        best_step: None,
        val_acc: None,
        val_loss: None,
        test_acc: None,
        test_token_acc: None,
        test_macro_acc: None,
        test_choice_acc: None,
        test_steps_valid: None,
        router_heatmap: Vec::new(),
        eval_levels: BTreeMap::new(),
    }
}

/// Test a member's selected weights `w` on the test split into `result`: teacher-forced
/// accuracies, the two-way choice where the task poses one, the generated answers' score (and
/// their steps' validity) for answer tasks, the router heatmap, and the val numbers it was
/// selected on.
fn test_into(
    result: &mut RunResult,
    m: &Member,
    w: &HashMap<String, Tensor>,
    task: &dyn Task,
    dev: &Device,
) -> Result<()> {
    let spec = m.spec;
    let model = run_model(spec, w, dev)?;
    let test = tasks::generate_range(task, Split::Test, 0, spec.n_test);
    let tf = teacher_forced(&model, task, &test, spec.seq_len, dev, spec.batch_size)?;
    result.test_choice_acc =
        choice_accuracy(&model, task, &test, spec.seq_len, dev, spec.batch_size)?;
    result.test_token_acc = Some(tf.token_acc);
    result.test_macro_acc = Some(tf.macro_acc);
    result.test_acc = Some(match task.metric() {
        tasks::Metric::TeacherForced => tf.token_acc,
        tasks::Metric::Generate => {
            let (acc, steps) = generation_scores(&model, task, &test, dev)?;
            result.test_steps_valid = steps;
            acc
        }
    });
    // The same weights on each evaluation level's own test split, scored by the same metric.
    for (i, e) in spec.eval_levels.iter().enumerate() {
        let level_task = eval_level_task(spec, i)?;
        let lt = level_task.as_ref();
        let test = tasks::generate_range(lt, Split::Test, 0, spec.n_test);
        let seq_len = lt.max_len();
        let test_acc = match lt.metric() {
            tasks::Metric::TeacherForced => {
                teacher_forced(&model, lt, &test, seq_len, dev, spec.batch_size)?.token_acc
            }
            tasks::Metric::Generate => generation_scores(&model, lt, &test, dev)?.0,
        };
        let score = crate::records::LevelScore {
            test_acc,
            seq_len,
            chance: lt.chance(),
        };
        result.eval_levels.insert(e.level.clone(), score);
    }
    result.best_step = m.st.best_step;
    result.router_heatmap = model.router_heatmap()?;
    result.val_acc = m.st.best_val;
    result.val_loss = m.st.best_val_loss;
    Ok(())
}

/// Rebuild the task from the exact config stored in the spec.
pub fn task_from_spec(spec: &RunSpec) -> Result<Box<dyn Task>, tasks::TaskError> {
    task_from_config(&spec.task, &spec.level, &spec.task_config)
}

/// A task of `name` at `level` with exactly `config`.
fn task_from_config(
    name: &str,
    level: &str,
    config: &serde_json::Value,
) -> Result<Box<dyn Task>, tasks::TaskError> {
    let sets: Vec<(String, String)> = config
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
        .unwrap_or_default();
    tasks::build(name, Some(level), &sets)
}

/// The task of the spec's evaluation level `i`, from its exact config.
pub fn eval_level_task(spec: &RunSpec, i: usize) -> Result<Box<dyn Task>> {
    let e = &spec.eval_levels[i];
    Ok(task_from_config(
        &spec.task,
        e.base_level(&spec.level),
        &e.task_config,
    )?)
}

/// The examples a run is tested on at its evaluation level `i`: the first `n_test` of that
/// level's own test split (what `harness gen --level L --split test` writes).
pub fn eval_level_examples(spec: &RunSpec, i: usize) -> Result<Vec<Example>> {
    let task = eval_level_task(spec, i)?;
    Ok(tasks::generate_range(
        task.as_ref(),
        Split::Test,
        0,
        spec.n_test,
    ))
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
