//! # parity — the sum of a bit string mod 2 (a state-tracking depth probe)
//!
//! Parity is the smallest state-tracking problem: one bit of state, flipped by every `1`. A
//! fixed-depth transformer must compute it in one pass over the whole string, which is where
//! constant depth is known to break as the length grows.
//!
//! ```text
//! 1 0 0 1 1 0 1 0 parity = 0 <eos>
//! └─ length bits ─┘ └ query ┘ └ answer ┘
//! ```
//!
//! * The prompt is `length` bits `0`/`1` (each uniform and independent, so the answer is uniform),
//!   then `parity =`. The answer is `0` or `1`, the sum of the bits mod 2, then `<eos>`.
//! * Levels by length: `n16`, `n32`, `n64`, `n128`.
//! * `running = true` (optional): the per-position form used to train state trackers — at every
//!   bit the model must output the parity of the bits so far, and at `=` the final answer. The
//!   sequence is then `bits… parity = <answer>` with no `<eos>`, all of it input
//!   (teacher-forced): targets are `(i, parity(bits[0..=i]))` for each bit `i` and
//!   `(length + 1, answer)` at `=`.
//!
//! **Metric.** Generation (`running = false`): [`Task::score`] cuts at the first `<eos>` and
//! accepts iff what precedes it is exactly the answer bit. Teacher-forced (`running = true`):
//! every target right. `meta` holds `ones` (the number of 1s) and `parity`.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 0`, `3 1`, `4 parity`, `5 =`.

use crate::knobs::{parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "parity";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
/// The bit tokens `0` and `1` (answers use them too).
pub const BIT0: u32 = 2;
pub const PARITY: u32 = 4;
pub const EQ: u32 = 5;

/// parity configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityConfig {
    /// Bits before `parity`. Default 16. Range 16 ..= 4096 (shorter strings have too few
    /// distinct sequences to fill disjoint splits).
    pub length: u32,
    /// Supervise the running parity at every bit (teacher-forced) instead of the answer only.
    pub running: bool,
}

impl Default for ParityConfig {
    fn default() -> Self {
        ParityConfig {
            length: 16,
            running: false,
        }
    }
}

pub fn info() -> TaskInfo {
    TaskInfo {
        name: NAME,
        about: "parity: the sum mod 2 of the bits before `parity =` (optionally at every bit)",
        defaults: to_config_value(&ParityConfig::default()),
        levels: pinned(
            &["length"],
            &[("n16", 16), ("n32", 32), ("n64", 64), ("n128", 128)],
        ),
        default_level: "n16",
        generalization: Some(crate::Generalization {
            axis: "length",
            train: "n16",
            ood: &["n32", "n64", "n128"],
        }),
    }
}

pub struct Parity {
    cfg: ParityConfig,
}

impl Parity {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        Self::new(parse_config(NAME, cfg)?)
    }

    pub fn new(c: ParityConfig) -> Result<Self, TaskError> {
        Knobs::new(NAME).int("length", c.length, 16..=4096)?;
        Ok(Parity { cfg: c })
    }
}

impl Task for Parity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        6
    }
    fn max_len(&self) -> usize {
        self.cfg.length as usize + 2 + if self.cfg.running { 1 } else { 2 }
    }
    fn eos_id(&self) -> Option<u32> {
        (!self.cfg.running).then_some(EOS)
    }
    fn max_new_tokens(&self) -> usize {
        2
    }
    fn token_str(&self, id: u32) -> String {
        match id {
            PAD => "_".into(),
            EOS => "<eos>".into(),
            2 => "0".into(),
            3 => "1".into(),
            PARITY => "parity".into(),
            EQ => "=".into(),
            i => format!("<{i}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let n = self.cfg.length as usize;
        let mut tokens = Vec::with_capacity(self.max_len());
        let mut running = Vec::with_capacity(n);
        let mut p = 0u32;
        for i in 0..n {
            let b = rng.gen_range(0..2u32);
            p ^= b;
            tokens.push(BIT0 + b);
            running.push((i as u32, BIT0 + p));
        }
        tokens.extend([PARITY, EQ, BIT0 + p]);
        let mut meta = Map::new();
        let ones = tokens[..n].iter().filter(|&&t| t == BIT0 + 1).count();
        meta.insert("ones".into(), json!(ones));
        meta.insert("parity".into(), json!(p));
        crate::state_tracking_sample(tokens, running, self.cfg.running, EOS, meta)
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::state_tracking_score(ex, generated, self.cfg.running, EOS)
    }
    fn chance(&self) -> f64 {
        0.5
    }
    fn metric(&self) -> Metric {
        crate::state_tracking_metric(self.cfg.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, sets};
    use crate::{build, generate_range, Split};

    /// The answer from the rendered prompt alone: `bits… parity =`.
    fn rederive(prompt: &str) -> u32 {
        let w: Vec<&str> = prompt.split(' ').collect();
        assert_eq!(&w[w.len() - 2..], ["parity", "="], "{prompt}");
        w[..w.len() - 2]
            .iter()
            .map(|b| b.parse::<u32>().unwrap())
            .sum::<u32>()
            % 2
    }

    #[test]
    fn answers_rederive_from_the_rendering_and_are_balanced() {
        for lvl in ["n16", "n32", "n64", "n128"] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            let mut ones = 0;
            for ex in generate_range(t.as_ref(), Split::Train, 0, 400) {
                let want = rederive(&t.render(ex.prompt()));
                assert_eq!(t.render(ex.answer()), format!("{want} <eos>"));
                ones += want;
            }
            assert!((150..=250).contains(&ones), "{lvl}: {ones} of 400 odd");
        }
    }

    #[test]
    fn running_targets_are_the_prefix_parities() {
        let t = build(NAME, Some("n32"), &sets(&[("running", "true")])).unwrap();
        assert_eq!(t.metric(), Metric::TeacherForced);
        for ex in generate_range(t.as_ref(), Split::Test, 0, 50) {
            let text = t.render(&ex.tokens);
            let w: Vec<&str> = text.split(' ').collect();
            assert_eq!(w.len(), 32 + 3);
            let prompt = w[..34].join(" ");
            assert_eq!(w[34], rederive(&prompt).to_string());
            assert_eq!(ex.targets.len(), 33);
            let mut p = 0;
            for (i, &(pos, want)) in ex.targets[..32].iter().enumerate() {
                p = (p + w[i].parse::<u32>().unwrap()) % 2;
                assert_eq!((pos as usize, t.token_str(want)), (i, p.to_string()));
            }
            assert_eq!(ex.targets[32], (33, ex.tokens[34]));
        }
    }

    #[test]
    fn knobs_are_range_checked() {
        assert_rejected(
            NAME,
            None,
            &[("length", "8", "length"), ("running", "2", "boolean")],
        );
    }
}
