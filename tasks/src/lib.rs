//! # tasks — deterministic synthetic reasoning datasets
//!
//! Every example is a pure function of `(GENERATOR_VERSION, task name, canonical config, split,
//! index)`: [`generate`] hashes that tuple (SHA-256) into the seed of a fresh `ChaCha8Rng` for that
//! one example, so example *i* is the same whether 10 or 10 million are drawn, on any machine and at
//! any rayon thread count. There is no global RNG anywhere in this crate.
//!
//! **Splits are disjoint by construction.** Each canonical token sequence belongs to exactly one
//! split, decided by a stable hash of the tokens ([`split_of`]). A candidate drawn for split `S`
//! that hashes to another split is rejected and redrawn from the next attempt's seed; the number of
//! redraws is recorded on the example (`Example::redraws`). A test sequence can therefore never occur
//! in train, however large the train set grows.
//!
//! A task is a [`Task`] trait object built from a serde config (`deny_unknown_fields`, validated
//! ranges) by [`build`], optionally through a named difficulty level and `key=value` overrides.
//! Resolving those and checking the knobs is one shared path ([`knobs`]); so are the rng draws
//! several generators need ([`draw`]), each pinned to the exact rng calls it makes.
//! The crate does no I/O and never depends on candle: the harness owns files, models own tensors.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub mod arith;
pub mod counting;
pub mod draw;
pub mod floor;
pub mod hopk;
pub mod knobs;
pub mod listops;
pub mod mad;
pub mod mqar;
pub mod parity;
pub mod prosqa;
pub mod reachability;
pub mod s5;
pub mod vartrack;

pub use knobs::{check, parse_config, resolve_config, set_keys, to_config_value};

/// Bump when any generator's output for an existing config changes.
pub const GENERATOR_VERSION: u32 = 1;

/// Errors from building a task. All messages fit on one line.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task `{0}` (known tasks: {1})")]
    UnknownTask(String, String),
    #[error("unknown level `{level}` for task `{task}` (known levels: {known})")]
    UnknownLevel {
        task: String,
        level: String,
        known: String,
    },
    #[error("unknown config key `{key}` for task `{task}` (known keys: {known})")]
    UnknownKey {
        task: String,
        key: String,
        known: String,
    },
    #[error("invalid config for task `{task}`: {msg}")]
    Config { task: String, msg: String },
}

/// Dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}` (expected train, val or test)")),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task is scored by the harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Teacher-forced accuracy over `targets` (recall-style tasks: mqar, hopk).
    TeacherForced,
    /// Greedy generation from the prompt scored by [`Task::score`] (arith, prosqa).
    Generate,
}

/// What a task's sampler returns: one example before split/index bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Prompt followed by the answer (ending with EOS where the task has one).
    pub tokens: Vec<u32>,
    /// Number of prompt tokens; `tokens[prompt_len..]` is what a generator must produce.
    pub prompt_len: usize,
    /// Supervised next-token predictions: at input position `p` the model must output `t`
    /// (normally `t == tokens[p + 1]`). Sorted by position, no duplicates.
    pub targets: Vec<(u32, u32)>,
    /// Per-example difficulty values and parameters (task-specific keys).
    pub meta: Map<String, Value>,
}

/// One generated example with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub split: Split,
    pub index: u64,
    /// Rejected candidates before this one (they hashed to another split).
    pub redraws: u32,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub targets: Vec<(u32, u32)>,
    pub meta: Map<String, Value>,
}

impl Example {
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }
    /// The span a generator must produce (everything after the prompt).
    pub fn answer(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// A configured task. Object safe; built by [`build`].
pub trait Task: Send + Sync {
    /// Registry name, e.g. `"mqar"`.
    fn name(&self) -> &'static str;
    /// Canonical JSON of the full config (every knob present). Part of the seed hash.
    fn config(&self) -> Value;
    /// Number of token ids; every id is `< vocab_size()`.
    fn vocab_size(&self) -> usize;
    /// Upper bound on `tokens.len()` for every example of this config.
    fn max_len(&self) -> usize;
    /// Padding id for batching (never supervised).
    fn pad_id(&self) -> u32 {
        0
    }
    /// End-of-sequence id, if the task's answers end with one (generation stops there).
    fn eos_id(&self) -> Option<u32>;
    /// Text of one token.
    fn token_str(&self, id: u32) -> String;
    /// Human-readable text of a token span (prompt or answer).
    fn render(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .map(|&t| self.token_str(t))
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// Draw one example from `rng`. Must use no other source of randomness.
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample;
    /// Score a model's generated continuation of `ex.prompt()` (may or may not include EOS).
    fn score(&self, ex: &Example, generated: &[u32]) -> bool;
    /// Accuracy of uniform guessing under this task's metric.
    fn chance(&self) -> f64;
    fn metric(&self) -> Metric;
    /// Generation length cap for [`Metric::Generate`].
    fn max_new_tokens(&self) -> usize {
        self.max_len()
    }
    /// Where the example is a choice between two candidates (ProsQA's `Is Name a X or Y?`):
    /// the decisive prediction, so a model can be scored on which candidate it ranks higher
    /// (chance exactly 1/2) beside its generated answer. None for other tasks.
    fn choice(&self, _ex: &Example) -> Option<Choice> {
        None
    }
    /// Shallow heuristics a model can reach without solving the task, each as one predicted
    /// token per supervised target (None: no prediction), in target order — hop-k's copy of the
    /// current token and its one-hop induction. The measured floor is the best of them
    /// ([`floor::shallow`]).
    fn shallow(&self, _ex: &Example) -> Vec<Vec<Option<u32>>> {
        Vec::new()
    }
    /// For tasks whose answers are worked solutions (arith's chain of steps): whether every step
    /// of `generated` is valid, whatever the final answer. None for other tasks.
    fn steps_valid(&self, _ex: &Example, _generated: &[u32]) -> Option<bool> {
        None
    }
}

/// A two-way choice inside an example: at input `position` the model predicts the next token,
/// which is `right` in the reference and `wrong` had the other candidate been the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub position: u32,
    pub right: u32,
    pub wrong: u32,
}

/// The generated span up to (not including) the first `eos`, for verifiers of answer tasks.
pub fn until_eos(generated: &[u32], eos: u32) -> &[u32] {
    match generated.iter().position(|&t| t == eos) {
        Some(p) => &generated[..p],
        None => generated,
    }
}

/// Targets of answer tasks: every answer token is supervised, each predicted from the position
/// before it (`(p, tokens[p + 1])` for `p` in `prompt_len − 1 .. len − 1`), EOS included.
pub fn answer_targets(tokens: &[u32], prompt_len: usize) -> Vec<(u32, u32)> {
    (prompt_len - 1..tokens.len() - 1)
        .map(|p| (p as u32, tokens[p + 1]))
        .collect()
}

/// A state-tracking example (parity, s5) from `tokens` = the steps, the query tokens and the
/// answer token, and `states` = `(position, state so far)` at each step. With `running`, every
/// step is supervised with its state and the last query position with the answer, all of it
/// teacher-forced input (no EOS); otherwise the answer is generated, closed by `eos`.
pub fn state_tracking_sample(
    mut tokens: Vec<u32>,
    mut states: Vec<(u32, u32)>,
    running: bool,
    eos: u32,
    meta: Map<String, Value>,
) -> Sample {
    let prompt_len = tokens.len() - 1;
    if running {
        states.push(((prompt_len - 1) as u32, tokens[prompt_len]));
        return Sample {
            prompt_len: tokens.len(),
            tokens,
            targets: states,
            meta,
        };
    }
    tokens.push(eos);
    Sample {
        targets: answer_targets(&tokens, prompt_len),
        tokens,
        prompt_len,
        meta,
    }
}

/// The metric of a state-tracking task (parity, S5): every running state teacher-forced, or the
/// final state generated.
pub fn state_tracking_metric(running: bool) -> Metric {
    if running {
        Metric::TeacherForced
    } else {
        Metric::Generate
    }
}

/// Verifier of [`state_tracking_sample`]'s examples: every target (running), or exactly the
/// answer token before the first `eos`.
pub fn state_tracking_score(ex: &Example, generated: &[u32], running: bool, eos: u32) -> bool {
    if running {
        return targets_match(ex, generated);
    }
    ex.tokens
        .get(ex.prompt_len)
        .is_some_and(|&a| until_eos(generated, eos) == [a])
}

/// Verifier of teacher-forced tasks: `generated` holds the model's prediction at each target
/// position, in order; the example is right iff every one equals its target.
pub fn targets_match(ex: &Example, generated: &[u32]) -> bool {
    generated.len() == ex.targets.len()
        && ex
            .targets
            .iter()
            .zip(generated)
            .all(|(&(_, want), &got)| want == got)
}

/// Static description of a registered task, for `harness tasks` / `gen --list`.
#[derive(Clone, Debug, Serialize)]
pub struct TaskInfo {
    pub name: &'static str,
    pub about: &'static str,
    /// The default config as JSON (every knob with its default).
    pub defaults: Value,
    /// Named difficulty levels: (name, overrides applied to the defaults).
    pub levels: Vec<(&'static str, Value)>,
    pub default_level: &'static str,
    /// The axis along which the task gets harder and its default split of levels into one to
    /// train on and harder ones to test on (`harness --eval-levels`); None where nothing
    /// extrapolates (memorization).
    pub generalization: Option<Generalization>,
}

/// A task's generalization axis (`hops`, `length`, …) and its default in-distribution level and
/// out-of-distribution levels.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Generalization {
    pub axis: &'static str,
    pub train: &'static str,
    pub ood: &'static [&'static str],
}

/// Every registered task.
pub fn registry() -> Vec<TaskInfo> {
    vec![
        mqar::info(),
        arith::info(),
        prosqa::info(),
        hopk::info(),
        vartrack::info(),
        listops::info(),
        mad::recall_info(),
        mad::fuzzy_recall_info(),
        mad::noisy_recall_info(),
        mad::selective_copy_info(),
        mad::memorize_info(),
        counting::info(),
        parity::info(),
        s5::info(),
        reachability::info(),
    ]
}

pub fn task_names() -> Vec<&'static str> {
    registry().iter().map(|i| i.name).collect()
}

/// Build a task from its name, an optional level (defaults to the task's default level) and
/// `key=value` overrides applied after the level. Values parse as JSON when they can
/// (`4`, `0.01`, `true`, `"x"`), otherwise as a bare string.
pub fn build(
    name: &str,
    level: Option<&str>,
    sets: &[(String, String)],
) -> Result<Box<dyn Task>, TaskError> {
    let info = registry()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| TaskError::UnknownTask(name.to_string(), task_names().join(", ")))?;
    let cfg = resolve_config(&info, level, sets)?;
    match name {
        "mqar" => mqar::Mqar::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "arith" => arith::Arith::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "prosqa" => prosqa::Prosqa::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "hopk" => hopk::Hopk::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "vartrack" => vartrack::Vartrack::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "listops" => listops::Listops::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "recall" => mad::Recall::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "noisy-recall" => mad::Recall::noisy_from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "fuzzy-recall" => mad::FuzzyRecall::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "selective-copy" => {
            mad::SelectiveCopy::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>)
        }
        "memorize" => mad::Memorize::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "counting" => counting::Counting::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "parity" => parity::Parity::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "s5" => s5::S5::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>),
        "reachability" => {
            reachability::Reachability::from_json(cfg).map(|t| Box::new(t) as Box<dyn Task>)
        }
        _ => unreachable!("registry and build disagree on {name}"),
    }
}

/// SHA-256 of (generator version, task name, canonical config JSON). Keys every example's seed and
/// is recorded in manifests.
pub fn config_digest(task: &dyn Task) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENERATOR_VERSION.to_le_bytes());
    h.update(task.name().as_bytes());
    h.update([0u8]);
    h.update(canonical_json(&task.config()).as_bytes());
    h.finalize().into()
}

/// JSON with object keys sorted (serde_json's default `Map` is a BTreeMap, so `to_string` is
/// already canonical; kept as a function so the contract is explicit).
pub fn canonical_json(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values always serialize")
}

/// The split a canonical token sequence belongs to: xxh3 of the little-endian token bytes,
/// bucket `h % 32`: 0 → test, 1 → val, otherwise train (≈ 3% / 3% / 94% of the example space).
pub fn split_of(tokens: &[u32]) -> Split {
    // Hash the little-endian bytes without allocating: a u32 slice *is* those bytes on
    // little-endian targets; elsewhere copy into a stack-sized chunked hasher.
    #[cfg(target_endian = "little")]
    let h = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice::<u32, u8>(tokens));
    #[cfg(not(target_endian = "little"))]
    let h = {
        let mut st = xxhash_rust::xxh3::Xxh3Default::new();
        for t in tokens {
            st.update(&t.to_le_bytes());
        }
        st.digest()
    };
    match h % 32 {
        0 => Split::Test,
        1 => Split::Val,
        _ => Split::Train,
    }
}

/// Seed for attempt `attempt` of example `index` of `split`.
pub fn example_seed(digest: &[u8; 32], split: Split, index: u64, attempt: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(digest);
    h.update(split.as_str().as_bytes());
    h.update(index.to_le_bytes());
    h.update(attempt.to_le_bytes());
    h.finalize().into()
}

/// Safety valve: a config whose example space is so small that a split cannot be filled.
const MAX_ATTEMPTS: u32 = 100_000;

/// Example `index` of `split`. `digest` is [`config_digest`] of `task` (pass it in so bulk
/// generation hashes the config once).
pub fn generate_with(task: &dyn Task, digest: &[u8; 32], split: Split, index: u64) -> Example {
    for attempt in 0..MAX_ATTEMPTS {
        let mut rng = ChaCha8Rng::from_seed(example_seed(digest, split, index, attempt));
        let s = task.sample(&mut rng);
        if split_of(&s.tokens) == split {
            return Example {
                split,
                index,
                redraws: attempt,
                tokens: s.tokens,
                prompt_len: s.prompt_len,
                targets: s.targets,
                meta: s.meta,
            };
        }
    }
    panic!("task {} could not draw a {split} example in {MAX_ATTEMPTS} attempts: its example space is too small", task.name())
}

/// Example `index` of `split`.
pub fn generate(task: &dyn Task, split: Split, index: u64) -> Example {
    generate_with(task, &config_digest(task), split, index)
}

/// Examples `start..start + n` of `split`, in index order, generated in parallel (rayon). The
/// result does not depend on the thread count.
pub fn generate_range(task: &dyn Task, split: Split, start: u64, n: u64) -> Vec<Example> {
    let digest = config_digest(task);
    (start..start + n)
        .into_par_iter()
        .map(|i| generate_with(task, &digest, split, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_of_is_stable_and_covers_all_splits() {
        // Pinned: a change here silently reshuffles every dataset.
        assert_eq!(split_of(&[1, 2, 3]), split_of(&[1, 2, 3]));
        let mut seen = [0usize; 3];
        for i in 0..3200u32 {
            seen[split_of(&[i, i + 1]) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
        assert!(seen[0] > 2800, "train share too small: {seen:?}");
    }

    #[test]
    fn unknown_task_is_an_error() {
        let e = build("nope", None, &[]).err().unwrap();
        assert!(e.to_string().contains("unknown task `nope`"));
    }
}
