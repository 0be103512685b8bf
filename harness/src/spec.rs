//! From raw CLI flags to validated run specs.
//!
//! [`Overrides`] is what the user set (flags, a plan or an experiment); [`resolve`] turns it, with each task's embedded
//! [`crate::presets::Preset`], into one [`RunSpec`] per (task, model, lr, seed) cell. Everything a
//! run needs is decided here — including the step count derived from the FLOP budget — so that a
//! bad flag fails before any training starts, and so that the spec's hash identifies the run.

pub use crate::optim::{OptimSpec, Schedule};
use crate::overrides::Overrides;
pub use crate::overrides::{MatchMode, Precision};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Everything that determines a run's result. Its hash is the run id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// What made the numbers: the harness crate version, `models::NUMERICS_VERSION`,
    /// [`TRAIN_NUMERICS_VERSION`] and `tasks::GENERATOR_VERSION` (see [`code_version`]). A code
    /// change that alters results bumps one of the three numerics versions — the golden
    /// fingerprint test (`tests/numerics.rs`) fails until it does — and so changes every run id.
    pub code_version: String,
    pub task: String,
    pub level: String,
    pub task_config: Value,
    pub model: String,
    pub model_config: models::Config,
    pub seed: u64,
    pub optim: OptimSpec,
    pub batch_size: usize,
    /// Padded input length of every batch (the task's max_len).
    pub seq_len: usize,
    pub match_mode: MatchMode,
    pub budget_flops: f64,
    pub flops_per_step: f64,
    pub steps: u64,
    /// 0 = fresh train examples every step; otherwise indices drawn from a pool of this size.
    pub train_pool: u64,
    pub n_val: u64,
    pub n_test: u64,
    pub eval_every: u64,
    pub ckpt_every: u64,
    /// Omitted when f32, so f32 runs keep the ids they had before the flag existed.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Omitted when fused (the default), so fused runs keep the ids they had before the flag.
    /// The two backends agree to float rounding, not bit for bit, so they are different runs.
    #[serde(default, skip_serializing_if = "models::Backend::is_fused")]
    pub backend: models::Backend,
    /// Omitted when teacher-forced (the default), so those runs keep the ids they had before.
    #[serde(
        default,
        skip_serializing_if = "crate::overrides::ValMetric::is_teacher"
    )]
    pub val_metric: crate::overrides::ValMetric,
    /// Levels the chosen weights are also tested on (`--eval-levels`), each with its exact task
    /// config. Omitted when empty, so runs without them keep the ids they had before the flag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_levels: Vec<EvalLevel>,
    /// What a verdict reads of the run; omitted when `test` (the default), so earlier ids stay.
    #[serde(default, skip_serializing_if = "crate::overrides::Judge::is_test")]
    pub judge: crate::overrides::Judge,
}

/// A level a run is also tested on after training: its name and its exact task config (the
/// level's own, with the run's `--set` keys), so its test split is that level's own test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalLevel {
    pub level: String,
    pub task_config: Value,
}

/// The evaluation levels of a run trained on `task` at `level`: each built like a level of its
/// own, and refused (one line, before anything is written) where the trained model could not
/// read it: the training level itself, a repeat, another vocabulary, another answer format.
/// A longer sequence is allowed: RoPE positions past the trained length are extrapolation, and
/// each level's result records its sequence length beside the trained one.
fn eval_levels(
    names: &[String],
    eval_sets: &[String],
    task_name: &str,
    level: &str,
    task: &dyn tasks::Task,
    sets: &[(String, String)],
) -> Result<Vec<EvalLevel>> {
    let mut out: Vec<EvalLevel> = Vec::new();
    // Each evaluation: (its label, the flag that asked for it, the task it builds).
    let mut asked = Vec::new();
    for name in names {
        if name == level {
            bail!("--eval-levels {name}: that is the training level (its test split is the run's own test)");
        }
        let e = tasks::build(task_name, Some(name), sets)
            .with_context(|| format!("--eval-levels {name}"))?;
        asked.push((name.clone(), format!("--eval-levels {name}"), e));
    }
    for raw in eval_sets {
        let flag = format!("--eval-set {raw}");
        let pairs = parse_sets(&raw.split(',').map(str::to_string).collect::<Vec<_>>())
            .with_context(|| flag.clone())?;
        let label = eval_set_label(&pairs);
        let mut all = sets.to_vec();
        all.extend(pairs);
        let e = tasks::build(task_name, Some(level), &all).with_context(|| flag.clone())?;
        if e.config() == task.config() {
            bail!("{flag}: that is the training level's own setting (its test split is the run's own test)");
        }
        asked.push((label, flag, e));
    }
    for (label, flag, e) in asked {
        if out.iter().any(|o| o.level == label) {
            bail!("{flag}: asked for twice");
        }
        if e.vocab_size() != task.vocab_size() {
            bail!(
                "{flag}: its vocabulary has {} tokens, the training level's {} (a model trained on {level} cannot read it)",
                e.vocab_size(),
                task.vocab_size()
            );
        }
        if e.metric() != task.metric() {
            bail!(
                "{flag}: its answers are scored as {:?}, the training level's as {:?}",
                e.metric(),
                task.metric()
            );
        }
        out.push(EvalLevel {
            level: label,
            task_config: e.config(),
        });
    }
    Ok(out)
}

/// The label an `--eval-set` evaluation is reported under: its `KEY=VALUE` pairs, comma-joined.
/// Level names never hold `=`, so a label tells which kind of evaluation it is.
fn eval_set_label(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl EvalLevel {
    /// The level its task is built at: its own, or for an `--eval-set` evaluation (a label with
    /// `=`) the run's training level, whose config it overrides.
    pub fn base_level<'a>(&'a self, training_level: &'a str) -> &'a str {
        if self.level.contains('=') {
            training_level
        } else {
            &self.level
        }
    }
}

impl RunSpec {
    pub fn id(&self) -> String {
        format!(
            "{}-{}-{}-s{}-{}",
            self.task,
            self.level,
            self.model,
            self.seed,
            short_hash(self)
        )
    }

    /// The leaderboard cell this run belongs to: the hash of the spec with `seed` and `optim.lr`
    /// cleared. Runs of one cell differ only in seed and learning rate, so a cell's mean is a
    /// mean over seeds of one experiment and its lr is chosen on val; runs that differ in
    /// anything else (budget, shape, task knobs, batch, precision, code version...) are different
    /// cells and never averaged together.
    pub fn cell_key(&self) -> String {
        let mut s = self.clone();
        s.seed = 0;
        s.optim.lr = 0.0;
        short_hash(&s)
    }
}

/// The first 12 hex digits of the sha256 of a spec's JSON.
fn short_hash(spec: &RunSpec) -> String {
    let json = serde_json::to_string(spec).expect("specs serialize");
    crate::io::hex(&Sha256::digest(json.as_bytes()))[..12].to_string()
}

/// Version of the training numerics: batching, loss, AdamW, the schedule, gradient clipping and
/// evaluation. Bump it when a change alters what a run computes; `tests/numerics.rs` pins a short
/// training run's losses and fails with "bump TRAIN_NUMERICS_VERSION" when they move.
pub const TRAIN_NUMERICS_VERSION: u32 = 1;

/// The code version recorded in every spec (and so in every run id).
pub fn code_version() -> String {
    format!(
        "harness-{}+models-n{}+train-n{}+gen{}",
        env!("CARGO_PKG_VERSION"),
        models::NUMERICS_VERSION,
        TRAIN_NUMERICS_VERSION,
        tasks::GENERATOR_VERSION
    )
}

/// Parse `key=value` strings.
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("--set expects KEY=VALUE, got `{s}`"),
        })
        .collect()
}

/// Apply `key=value` overrides to a serializable struct through JSON, so unknown keys and bad
/// types are caught by serde (`deny_unknown_fields`).
pub fn apply_sets<T: Serialize + serde::de::DeserializeOwned>(
    base: &T,
    sets: &[(String, String)],
    what: &str,
) -> Result<T> {
    let mut v = serde_json::to_value(base)?;
    let obj = v.as_object_mut().expect("structs serialize to objects");
    if let Err(k) = tasks::set_keys(obj, sets) {
        bail!(
            "unknown {what} key `{k}` (known: {})",
            obj.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    serde_json::from_value(v).with_context(|| format!("invalid {what} setting"))
}

pub fn parse_variant(name: &str) -> Result<models::Variant> {
    models::Variant::from_name(name).with_context(|| {
        format!(
            "unknown model `{name}` (known: {})",
            models::Variant::ALL
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Apply `--model-set` keys to a preset shape. Derived keys follow the keys they derive from
/// unless given explicitly: an MHA preset stays MHA when only `n_heads` changes, and a preset
/// with `d_ff = 4 d_model` keeps that ratio when only `d_model` changes.
pub fn shape_with_sets(base: &models::Config, sets: &[(String, String)]) -> Result<models::Config> {
    // A key some variant declares as its own setting (`VariantDef::settings`) goes to the
    // config's settings (each model keeps the ones its variant declares: `with_variant`, so the
    // other models keep their ids whatever `--model-set` gives a setting they do not read); the
    // rest are shape keys.
    let declared = |k: &str| {
        models::Variant::all()
            .into_iter()
            .flat_map(|v| v.def().settings().iter())
            .find(|s| s.key == k)
    };
    let (own, sets): (Vec<_>, Vec<_>) = sets
        .iter()
        .cloned()
        .partition(|(k, _)| declared(k).is_some());
    let sets = &sets[..];
    let mut c = apply_sets(base, sets, "model")?;
    for (k, v) in own {
        let setting = declared(&k).expect("partitioned on being declared");
        let value = setting.parse(&v).map_err(anyhow::Error::msg)?;
        c.settings.insert(k, value);
    }
    let given = |k: &str| sets.iter().any(|(key, _)| key == k);
    if given("n_heads") && !given("n_kv_heads") && base.n_kv_heads == base.n_heads {
        c.n_kv_heads = c.n_heads;
    }
    if given("d_model") && !given("d_ff") && base.d_ff == 4 * base.d_model {
        c.d_ff = 4 * c.d_model;
    }
    Ok(c)
}

fn validate_model(c: &models::Config) -> Result<()> {
    if c.d_model == 0 || c.d_ff == 0 {
        bail!("model dimensions must be positive");
    }
    // The model's own shape checks (divisibility, even head dimension for RoPE).
    Ok(models::validate_config(c)?)
}

/// Training FLOPs of one optimiser step, as budgets count them
/// (`models::accounting::train_flops_per_step`: 3 x forward in `BUDGET_MODE` x batch).
pub fn flops_per_step(cfg: &models::Config, seq_len: usize, batch: usize) -> f64 {
    models::accounting::train_flops_per_step(cfg, seq_len, batch) as f64
}

/// Resolve the main job's flags into run specs (all cells, in a stable order).
pub fn resolve(a: &Overrides) -> Result<Vec<RunSpec>> {
    let with_experiment;
    let a = match &a.experiment {
        None => a,
        Some(name) => {
            with_experiment = crate::overrides::experiment(name, a)?;
            &with_experiment
        }
    };
    if a.task.is_empty() {
        bail!(
            "no task given: use --task NAME (known: {})",
            tasks::task_names().join(", ")
        );
    }
    if a.seeds() == 0 || a.seeds() > 1000 {
        bail!("--seeds must be between 1 and 1000");
    }
    if a.epochs == Some(0) || a.epochs.is_some_and(|e| e > 1_000_000) {
        bail!("--epochs must be between 1 and 1000000");
    }
    if a.epochs.is_some() && a.steps.is_some() {
        bail!("give --epochs or --steps, not both");
    }
    let sets = parse_sets(&a.sets)?;
    let model_sets = parse_sets(&a.model_sets)?;
    let mut specs = Vec::new();
    for task_name in &a.task {
        let preset = crate::presets::preset(task_name)?;
        let levels = if a.level.is_empty() {
            vec![preset.level.clone()]
        } else {
            a.level.clone()
        };
        for level in levels {
            specs.extend(resolve_cell(
                a,
                task_name,
                &level,
                &preset,
                &sets,
                &model_sets,
            )?);
        }
    }
    Ok(specs)
}

/// The runs of one (task, level): every model x lr x seed.
fn resolve_cell(
    a: &Overrides,
    task_name: &str,
    level: &str,
    preset: &crate::presets::Preset,
    sets: &[(String, String)],
    model_sets: &[(String, String)],
) -> Result<Vec<RunSpec>> {
    let mut specs = Vec::new();
    {
        let level = level.to_string();
        let mut all_sets = preset.task_sets.clone();
        all_sets.extend(sets.iter().cloned());
        let task = tasks::build(task_name, Some(&level), &all_sets)?;
        let seq_len = task.max_len();
        if seq_len == 0 {
            bail!("task {task_name} produces sequences too short to train on");
        }
        let eval_levels = eval_levels(
            &a.eval_levels,
            &a.eval_set,
            task_name,
            &level,
            task.as_ref(),
            &all_sets,
        )?;
        if a.judge == crate::overrides::Judge::Ood && eval_levels.is_empty() {
            bail!(
                "--judge ood reads the evaluation levels' scores: give --eval-levels or --eval-set"
            );
        }
        if a.val_metric == crate::overrides::ValMetric::Choice
            && task
                .choice(&tasks::generate(task.as_ref(), tasks::Split::Val, 0))
                .is_none()
        {
            bail!("--val-metric choice needs a task that poses a two-way choice (prosqa); {task_name} does not");
        }
        let batch_size = a.batch_size.unwrap_or(preset.batch_size);
        if batch_size == 0 || batch_size > 1 << 16 {
            bail!("--batch-size must be between 1 and 65536");
        }
        let lrs = if a.lr.is_empty() {
            vec![preset.optim.lr]
        } else {
            a.lr.clone()
        };
        for &lr in &lrs {
            if !(lr > 0.0 && lr < 1.0) {
                bail!("--lr {lr} is out of range (0, 1)");
            }
        }
        let budget = a.budget_flops.unwrap_or(preset.budget_flops);
        if !(budget.is_finite() && budget > 0.0) {
            bail!("--budget-flops must be a positive number");
        }
        let model_names: Vec<String> = if a.models.is_empty() {
            preset.models.clone()
        } else {
            a.models.clone()
        };
        let n_val = a.n_val.unwrap_or(preset.n_val);
        let n_test = a.n_test.unwrap_or(preset.n_test);
        if n_val == 0 || n_test == 0 {
            bail!("--n-val and --n-test must be at least 1");
        }
        // Baseline step count, for --match steps without --steps.
        let mut base_shape = preset.model.clone();
        base_shape.vocab_size = task.vocab_size();
        let base_shape = shape_with_sets(&base_shape, model_sets)?;
        validate_model(&base_shape)?;
        let llama_steps = (budget
            / flops_per_step(
                &base_shape.clone().with_variant(models::Variant::LLAMA),
                seq_len,
                batch_size,
            ))
        .floor() as u64;
        let train_pool = a.train_pool.unwrap_or(preset.train_pool);
        let epoch_steps = match a.epochs {
            None => None,
            Some(_) if train_pool == 0 => {
                bail!("--epochs needs a fixed train pool (--train-pool N)")
            }
            Some(e) => Some((e * train_pool).div_ceil(batch_size as u64)),
        };
        let match_mode = if epoch_steps.is_some() {
            MatchMode::Steps
        } else {
            a.match_mode
        };
        for model_name in &model_names {
            let variant = parse_variant(model_name)?;
            let cfg = base_shape.clone().with_variant(variant);
            validate_model(&cfg)?; // the variant's own settings against the shape
            let fps = flops_per_step(&cfg, seq_len, batch_size);
            let steps = match match_mode {
                MatchMode::Flops => {
                    let s = (budget / fps).floor() as u64;
                    if s == 0 {
                        bail!("budget {budget:.3e} FLOPs is smaller than one training step of {model_name} on {task_name} ({fps:.3e} FLOPs)");
                    }
                    s
                }
                MatchMode::Steps => match a.steps.or(epoch_steps) {
                    Some(0) => bail!("--steps must be at least 1"),
                    Some(s) => s,
                    None if llama_steps == 0 => bail!("budget {budget:.3e} FLOPs is smaller than one training step of llama on {task_name}"),
                    None => llama_steps,
                },
            };
            // With --match steps the budget is what these steps cost this model.
            let budget = if match_mode == MatchMode::Steps {
                steps as f64 * fps
            } else {
                budget
            };
            let eval_every = (steps / preset.evals_per_run.max(1)).max(1);
            for &lr in &lrs {
                for seed in 0..a.seeds() {
                    specs.push(RunSpec {
                        code_version: code_version(),
                        task: task_name.to_string(),
                        level: level.clone(),
                        task_config: task.config(),
                        model: model_name.clone(),
                        model_config: cfg.clone(),
                        seed,
                        optim: OptimSpec {
                            lr,
                            ..preset.optim.clone()
                        },
                        batch_size,
                        seq_len,
                        match_mode,
                        budget_flops: budget,
                        flops_per_step: fps,
                        steps,
                        train_pool,
                        n_val,
                        n_test,
                        eval_every,
                        ckpt_every: eval_every,
                        precision: a.precision,
                        backend: a.backend,
                        val_metric: a.val_metric,
                        eval_levels: eval_levels.clone(),
                        judge: a.judge,
                    });
                }
            }
        }
    }
    Ok(specs)
}
