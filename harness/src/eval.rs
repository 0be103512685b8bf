//! Batches and scores: padding examples into a batch with its supervised positions, the logits
//! there, teacher-forced accuracy (micro, whole-sequence, macro) and greedy decoding with the KV
//! cache for the answer tasks. Pure functions of a model and examples; no files.

use anyhow::{bail, Result};
use candle_core::{Device, IndexOp, Tensor, D};
use tasks::{Example, Task};

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
    /// Mean cross-entropy (nats) at the supervised positions: what breaks a tie in val accuracy.
    pub loss: f64,
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
    let mut nll = 0.0f64;
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for chunk in examples.chunks(bs.max(1)) {
        let batch = make_batch(task, chunk, seq_len, device)?;
        let logits = supervised_logits(model, &batch)?; // (N, V)
        let pred = logits.argmax(D::Minus1)?;
        let (pv, tv): (Vec<u32>, Vec<u32>) = (pred.to_vec1()?, batch.targets.to_vec1()?);
        // Cross-entropy on the host, in f64: logsumexp − the target's logit, per row.
        let rows: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        for (row, &t) in rows.iter().zip(&tv) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            nll += lse - row[t as usize] as f64;
        }
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
        loss: nll / total.max(1) as f64,
    })
}

/// Two-way choice accuracy (tasks whose examples are a choice between two candidates, see
/// `Task::choice`): the fraction of examples where the model, teacher-forced on the reference up
/// to the decisive position, gives the right candidate a higher logit than the wrong one (a tie
/// counts as wrong). None when the task poses no choice.
pub fn choice_accuracy(
    model: &models::Model,
    task: &dyn Task,
    examples: &[Example],
    seq_len: usize,
    device: &Device,
    bs: usize,
) -> Result<Option<f64>> {
    if examples.first().and_then(|ex| task.choice(ex)).is_none() {
        return Ok(None);
    }
    let (mut right, mut total) = (0usize, 0usize);
    for chunk in examples.chunks(bs.max(1)) {
        let batch = make_batch(task, chunk, seq_len, device)?;
        let logits: Vec<Vec<f32>> = supervised_logits(model, &batch)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?; // (N, V)
        let mut offset = 0;
        for (ex, &k) in chunk.iter().zip(&batch.per_example) {
            if let Some(c) = task.choice(ex) {
                // The row of the decisive position among this example's supervised rows.
                let kept = ex.targets.iter().filter(|&&(p, _)| (p as usize) < seq_len);
                if let Some(j) = kept.clone().position(|&(p, _)| p == c.position) {
                    let row = &logits[offset + j];
                    total += 1;
                    right += usize::from(row[c.right as usize] > row[c.wrong as usize]);
                }
            }
            offset += k;
        }
    }
    Ok(Some(right as f64 / total.max(1) as f64))
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
    Ok(generation_scores(model, task, examples, device)?.0)
}

/// Verifier accuracy of greedy generations and, for tasks with worked solutions
/// (`Task::steps_valid`), the fraction of generations whose every step is valid.
pub fn generation_scores(
    model: &models::Model,
    task: &dyn Task,
    examples: &[Example],
    device: &Device,
) -> Result<(f64, Option<f64>)> {
    let (mut right, mut valid, mut judged) = (0usize, 0usize, 0usize);
    for ex in examples {
        let max_new = task
            .max_new_tokens()
            .min(task.max_len().saturating_sub(ex.prompt_len).max(1));
        let gen = greedy(model, ex.prompt(), task.eos_id(), max_new, device)?;
        if task.score(ex, &gen) {
            right += 1;
        }
        if let Some(ok) = task.steps_valid(ex, &gen) {
            judged += 1;
            valid += usize::from(ok);
        }
    }
    let n = examples.len().max(1) as f64;
    Ok((
        right as f64 / n,
        (judged > 0).then(|| valid as f64 / judged as f64),
    ))
}

/// The validation score used for model selection (cheap: teacher-forced).
pub(crate) fn val_score(task: &dyn Task, tf: TfScores) -> f64 {
    match task.metric() {
        tasks::Metric::TeacherForced => tf.token_acc,
        tasks::Metric::Generate => tf.seq_acc,
    }
}
