//! What a user can set about a run: [`Overrides`], the one type behind the main job's flags, a
//! sweep plan's keys and the named experiments of `--experiment`. No I/O and no validation here:
//! [`crate::spec::resolve`] checks the values against each task's preset.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every setting of a run that a flag, a sweep plan or a named experiment can give; unset fields
/// take the task's preset. Flags and plan keys are one list (a plan key is the flag's name with
/// `_`, plural where the flag takes a list: `tasks`, `levels`, `lrs`; `--set`/`--model-set` are
/// TOML tables `set`/`model_set`), so a plan can set everything a flag can.
#[derive(Args, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// Task(s), comma-separated (see `harness tasks`). Each has an embedded default experiment.
    #[arg(long, value_delimiter = ',')]
    #[serde(rename = "tasks")]
    pub task: Vec<String>,
    /// Models, comma-separated [default: llama,lime].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Difficulty level(s) of the task, comma-separated: one run per level, so the leaderboard
    /// and the accuracy-vs-level plot break results down by level [default: the preset's level].
    #[arg(long, value_delimiter = ',')]
    #[serde(rename = "levels")]
    pub level: Vec<String>,
    /// Override a task knob (repeatable), e.g. `--set num_kv_pairs=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    #[serde(rename = "set", deserialize_with = "table_sets")]
    pub sets: Vec<String>,
    /// Override a model-shape key (repeatable): d_model, n_layers, n_heads, n_kv_heads, d_ff,
    /// tie_embeddings, rope_theta, norm_eps, attnres_block (layers per block of attnres-block,
    /// default 2).
    #[arg(long = "model-set", value_name = "KEY=VALUE")]
    #[serde(rename = "model_set", deserialize_with = "table_sets")]
    pub model_sets: Vec<String>,
    /// Training FLOP budget per run (3 x forward, 2 FLOPs per multiply-add) [default: preset].
    #[arg(long)]
    pub budget_flops: Option<f64>,
    /// Match models on the FLOP budget or on the step count.
    #[arg(long = "match", value_enum, default_value_t = MatchMode::Flops)]
    #[serde(rename = "match")]
    pub match_mode: MatchMode,
    /// Steps per run with `--match steps` [default: the budget's step count for llama].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Number of seeds (0..N) per cell [default: 1].
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Base learning rate(s), comma-separated; the best on val is reported [default: preset].
    #[arg(long, value_delimiter = ',')]
    #[serde(rename = "lrs")]
    pub lr: Vec<f64>,
    /// Sequences per batch [default: preset].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Train on a fixed pool of N train examples (0 = fresh examples every step) [default: preset].
    #[arg(long)]
    pub train_pool: Option<u64>,
    /// Validation / test set sizes [default: preset].
    #[arg(long)]
    pub n_val: Option<u64>,
    #[arg(long)]
    pub n_test: Option<u64>,
    /// Device: cpu, cuda, cuda:N or auto [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Matmul precision: f32, or bf16 (GPU only: bf16 projections with f32 master weights,
    /// f32 norms/softmax/loss/optimizer; the CPU stays f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// What val scores to choose the early-stopping step: `teacher` (teacher-forced, cheap),
    /// `task` (the task's own metric: greedy generation and the verifier for answer tasks, the
    /// number test reports) or `choice` (two-way choice accuracy, for tasks that pose a choice;
    /// the run is then judged on test's choice accuracy too).
    #[arg(long, value_enum, default_value_t = ValMetric::Teacher)]
    #[serde(default)]
    pub val_metric: ValMetric,
    /// After training, also test the chosen weights on these levels of the same task
    /// (comma-separated; each level's own test split, built with the same `--set` keys):
    /// generalization beyond the training level. Longer sequences than trained on run with
    /// RoPE positions past the trained length (extrapolation); a level the model cannot read
    /// (another vocabulary or answer format) is refused before anything is written.
    #[arg(long, value_delimiter = ',')]
    pub eval_levels: Vec<String>,
    /// Also test the chosen weights on the training level with these knobs changed (repeatable;
    /// one evaluation per flag, `KEY=VALUE` or `K1=V1,K2=V2`), e.g. `--eval-set num_kv_pairs=16`
    /// for a size no level names. Reported like an evaluation level, under the label `K=V`;
    /// refused like one where the model could not read it or nothing changes. Plan key
    /// `eval_sets` (a list of strings).
    #[arg(long = "eval-set", value_name = "KEY=VALUE[,KEY=VALUE]")]
    #[serde(rename = "eval_sets")]
    pub eval_set: Vec<String>,
    /// What a verdict reads of each run: `test` (its test accuracy) or `ood` (its mean test
    /// accuracy over `--eval-levels`; selection stays on the training level's val split).
    #[arg(long, value_enum, default_value_t = Judge::Test)]
    pub judge: Judge,
    /// Implementation of the model's building blocks: `fused` (the f32 CPU kernels where they
    /// apply; elsewhere the reference) or `reference` (composed candle ops, for A/B runs).
    #[arg(long, default_value = "fused", value_parser = parse_backend)]
    #[serde(deserialize_with = "backend_name")]
    pub backend: models::Backend,
    /// Train for this many epochs of the fixed train pool (needs a pool: --train-pool or the
    /// preset's). Implies --match steps with steps = ceil(epochs x pool / batch); batches are
    /// drawn from the pool, so an epoch is pool-many examples seen.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// A named experiment that fills in every flag not given (see `harness --help` and the
    /// README): `arith-paper` = the LIMe paper's arithmetic runs (levels ops4,ops5,ops6, 50,000
    /// train examples each, 200 epochs, batch 256, lr 1e-3 linear decay; llama vs lime) in its
    /// format: integers, step-by-step solutions, val and test scored on generations.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Train up to N runs at once, packed into one model: runs of a cell that differ only in
    /// seed and learning rate (llama, lime, resformer) share one forward and backward per step,
    /// each with its own weights, optimizer state, lr schedule, clip and divergence. An
    /// execution detail: every run keeps its own id, folder, checkpoints and result [default: 1].
    #[arg(long)]
    pub pack: Option<usize>,
    /// Folder for runs and the leaderboard [default: runs].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Judge every other model against this one with the verdict rules of REPRODUCTION.md and
    /// add the table of verdicts under leaderboard.md (plan key `versus`; see `harness
    /// leaderboard --versus`).
    #[arg(long)]
    pub versus: Option<String>,
}

impl Overrides {
    pub fn seeds(&self) -> u64 {
        self.seeds.unwrap_or(1)
    }

    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    /// Runs per pack (`--pack`, plan key `pack`); at least 1.
    pub fn pack(&self) -> Result<usize> {
        match self.pack.unwrap_or(1) {
            0 => bail!("--pack must be at least 1 (1 = one run at a time)"),
            n => Ok(n),
        }
    }

    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs"))
    }
}

/// A plan's `set = { num_kv_pairs = 8 }` table as the flags' `KEY=VALUE` strings.
fn table_sets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let table = std::collections::BTreeMap::<String, toml::Value>::deserialize(d)?;
    Ok(table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect())
}

/// A plan's `backend = "reference"`, with `--backend`'s error.
fn backend_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<models::Backend, D::Error> {
    parse_backend(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// `--backend NAME`.
pub fn parse_backend(s: &str) -> Result<models::Backend, String> {
    models::Backend::from_name(s).ok_or_else(|| {
        let names: Vec<_> = models::Backend::ALL.iter().map(|b| b.name()).collect();
        format!("unknown backend `{s}` (expected {})", names.join(" or "))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// Every model trains floor(budget / training FLOPs per step) steps.
    #[default]
    Flops,
    /// Every model trains the same number of steps.
    Steps,
}

/// What the early-stopping step (and, through it, the lr) is chosen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValMetric {
    /// Teacher-forced: token accuracy (recall tasks) or whole-answer accuracy (answer tasks).
    #[default]
    Teacher,
    /// The task's own metric: for answer tasks, the verifier's score of a greedy generation —
    /// what test reports, so selection and report agree (slower: one generation per val example).
    Task,
    /// Two-way choice accuracy (tasks that pose a choice between two candidates, ProsQA): which
    /// candidate the model ranks higher at the decisive position. A run selected on it is judged
    /// on it too (`Record::judged_acc`): chance is exactly 1/2.
    Choice,
}

impl ValMetric {
    pub fn is_teacher(&self) -> bool {
        *self == ValMetric::Teacher
    }
}

/// What a verdict reads of a run (`Record::judged_acc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Judge {
    /// Its test accuracy at the training level (or its choice accuracy, when selected on it).
    #[default]
    Test,
    /// Its OOD score: the mean test accuracy over its `--eval-levels`, against the mean of those
    /// levels' floors. The lr and the early-stopping step are still chosen on the training
    /// level's val split: nothing of the evaluation levels leaks into the selection.
    Ood,
}

impl Judge {
    pub fn is_test(&self) -> bool {
        *self == Judge::Test
    }
}

/// Matmul precision of a run (see `models::Model::with_matmul_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// bf16 projections (q, k, v, o, MLP, LM head), f32 master weights and everything else f32.
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// Errors unless this precision can run on `dev`: bf16 needs a GPU, the CPU trains in f32.
    pub fn check_device(self, dev: &candle_core::Device) -> Result<()> {
        if self != Precision::F32 && dev.is_cpu() {
            bail!("--precision bf16 needs a GPU (--device cuda, or auto on a GPU machine); the device is the CPU, where training stays f32");
        }
        Ok(())
    }

    /// The dtype of the projections' matmuls, `None` for plain f32.
    pub fn matmul_dtype(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
        }
    }
}

/// The named experiments of `--experiment`: flags the user did not give are filled in.
pub fn experiment(name: &str, given: &Overrides) -> Result<Overrides> {
    let mut a = given.clone();
    match name {
        // The LIMe paper's arithmetic experiment (arXiv 2502.09245, section 4): one model per
        // operand count (4/5/6), 4 layers, 4 heads, d=32 (the `arith` preset's shape), 50,000
        // examples per operand count, 200 epochs, lr 1e-3 with linear decay. The paper gives no
        // batch size; 256 keeps a GPU busy (39,063 steps per run).
        "arith-paper" => {
            if a.task.is_empty() {
                a.task = vec!["arith".into()];
            }
            if a.level.is_empty() {
                a.level = vec!["ops4".into(), "ops5".into(), "ops6".into()];
            }
            a.train_pool.get_or_insert(50_000);
            a.batch_size.get_or_insert(256);
            if a.steps.is_none() {
                a.epochs.get_or_insert(200);
            }
            if a.lr.is_empty() {
                a.lr = vec![1e-3];
            }
            // The paper's format: integers with step-by-step solutions, the answer read from the
            // generation, val scored the same way (a `--set` of either key keeps the user's).
            for (key, value) in [("mode", "int"), ("output", "cot")] {
                if !a.sets.iter().any(|s| s.split('=').next() == Some(key)) {
                    a.sets.push(format!("{key}={value}"));
                }
            }
            if a.val_metric == ValMetric::Teacher {
                a.val_metric = ValMetric::Task;
            }
        }
        other => bail!("unknown experiment `{other}` (known: arith-paper)"),
    }
    Ok(a)
}
