//! # counting — how many times does a symbol occur? (a depth probe)
//!
//! Counting is where constant-depth attention is known to strain (counting ability and
//! tokenisation studies): the answer is a sum over the whole prompt, not a lookup.
//!
//! ```text
//! c a d a b a d c count a = 3 <eos>
//! └──── length symbols ────┘ └ query ┘ └ answer ┘
//! ```
//!
//! * The prompt is `length` symbols from an alphabet of `alphabet` letters (`a`, `b`, …), then
//!   `count X =` where `X` is one letter. The answer is the decimal number of occurrences of `X`
//!   before `count`, as one number token, then `<eos>`.
//! * Drawing: `X` uniform over the alphabet; its count `c` uniform over `min_count ..= max_count`;
//!   `c` distinct positions uniform among the `length`; every other position uniform over the
//!   `alphabet − 1` letters other than `X`. So the answer is uniform over the count range whatever
//!   the length, and no shortcut (the last symbol, the length) predicts it.
//! * Levels by sequence length and count range: `n16` (counts 0–8), `n32` (0–16), `n64` (0–32),
//!   `n128` (0–64).
//!
//! **Sequence and metric.** Prompt `symbols… count X =`, answer `<count> <eos>` (both supervised).
//! Generation, scored like every answer task: [`Task::score`] cuts at the first `<eos>` and
//! accepts iff what precedes it is exactly the count token. `meta` holds `symbol`, `count`.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 count`, `3 =`, then `alphabet` letters, then number
//! tokens `0 ..= length` (rendered in decimal).

use crate::draw::distinct_by_shuffle;
use crate::knobs::{parse_config, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "counting";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const COUNT: u32 = 2;
pub const EQ: u32 = 3;
/// First letter id (`a`).
pub const LETTER0: u32 = 4;

/// counting configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountingConfig {
    /// Letters in the alphabet. Default 8. Range 2 ..= 26.
    pub alphabet: u32,
    /// Symbols before `count`. Default 32. Range 4 ..= 4096.
    pub length: u32,
    /// Smallest count of the queried symbol. Default 0. Range 0 ..= max_count.
    pub min_count: u32,
    /// Largest count of the queried symbol. Default 16. Range min_count ..= length.
    pub max_count: u32,
}

impl Default for CountingConfig {
    fn default() -> Self {
        CountingConfig {
            alphabet: 8,
            length: 32,
            min_count: 0,
            max_count: 16,
        }
    }
}

pub fn info() -> TaskInfo {
    let level = |n: u32| json!({"length": n, "min_count": 0, "max_count": n / 2});
    TaskInfo {
        name: NAME,
        about: "counting: how many times does X occur among the symbols before `count X =`?",
        defaults: to_config_value(&CountingConfig::default()),
        levels: vec![
            ("n16", level(16)),
            ("n32", level(32)),
            ("n64", level(64)),
            ("n128", level(128)),
        ],
        default_level: "n32",
        // The answer vocabulary holds the counts up to each level's length, so no longer level can
        // be read by a model trained on a shorter one (train with `--set max_count=…` for that).
        generalization: None,
    }
}

pub struct Counting {
    cfg: CountingConfig,
}

impl Counting {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        Self::new(parse_config(NAME, cfg)?)
    }

    pub fn new(c: CountingConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("alphabet", c.alphabet, 2..=26)?;
        k.int("length", c.length, 4..=4096)?;
        k.int_in("max_count", c.max_count, "0..=length", 0..=c.length)?;
        k.int_in("min_count", c.min_count, "0..=max_count", 0..=c.max_count)?;
        Ok(Counting { cfg: c })
    }

    pub fn letter_id(&self, l: u32) -> u32 {
        LETTER0 + l
    }

    /// Id of the number token `n`.
    pub fn number_id(&self, n: u32) -> u32 {
        LETTER0 + self.cfg.alphabet + n
    }
}

impl Task for Counting {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (LETTER0 + self.cfg.alphabet + self.cfg.length + 1) as usize
    }
    fn max_len(&self) -> usize {
        self.cfg.length as usize + 3 + 2
    }
    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn max_new_tokens(&self) -> usize {
        2
    }
    fn token_str(&self, id: u32) -> String {
        let a = self.cfg.alphabet;
        match id {
            PAD => "_".into(),
            EOS => "<eos>".into(),
            COUNT => "count".into(),
            EQ => "=".into(),
            i if i < LETTER0 + a => ((b'a' + (i - LETTER0) as u8) as char).to_string(),
            i if i < LETTER0 + a + self.cfg.length + 1 => (i - LETTER0 - a).to_string(),
            i => format!("<{i}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let (a, n) = (self.cfg.alphabet, self.cfg.length);
        let x = rng.gen_range(0..a);
        let c = rng.gen_range(self.cfg.min_count..=self.cfg.max_count);
        let at = distinct_by_shuffle(rng, 0, n, c as usize);
        let mut is_x = vec![false; n as usize];
        for p in at {
            is_x[p as usize] = true;
        }
        let mut tokens = Vec::with_capacity(self.max_len());
        for &hit in &is_x {
            let l = if hit {
                x
            } else {
                // Uniform over the a − 1 letters other than x.
                let o = rng.gen_range(0..a - 1);
                if o >= x {
                    o + 1
                } else {
                    o
                }
            };
            tokens.push(self.letter_id(l));
        }
        tokens.extend([COUNT, self.letter_id(x), EQ]);
        let prompt_len = tokens.len();
        tokens.extend([self.number_id(c), EOS]);
        let mut meta = Map::new();
        meta.insert("symbol".into(), json!(self.token_str(self.letter_id(x))));
        meta.insert("count".into(), json!(c));
        Sample {
            targets: crate::answer_targets(&tokens, prompt_len),
            tokens,
            prompt_len,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        let Some(c) = ex.meta.get("count").and_then(Value::as_u64) else {
            return false;
        };
        crate::until_eos(generated, EOS) == [self.number_id(c as u32)]
    }
    fn chance(&self) -> f64 {
        1.0 / (self.cfg.max_count - self.cfg.min_count + 1) as f64
    }
    fn metric(&self) -> Metric {
        Metric::Generate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, rejection};
    use crate::{build, generate_range, Split};

    /// The answer from the rendered prompt alone: `symbols… count X =`.
    fn rederive(prompt: &str) -> u32 {
        let w: Vec<&str> = prompt.split(' ').collect();
        let n = w.len();
        assert_eq!((w[n - 3], w[n - 1]), ("count", "="), "{prompt}");
        w[..n - 3].iter().filter(|&&s| s == w[n - 2]).count() as u32
    }

    #[test]
    fn answers_rederive_from_the_rendering_and_cover_the_count_range() {
        for lvl in ["n16", "n32", "n64", "n128"] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            let cfg: CountingConfig = serde_json::from_value(t.config()).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for ex in generate_range(t.as_ref(), Split::Train, 0, 400) {
                let want = rederive(&t.render(ex.prompt()));
                assert_eq!(t.render(ex.answer()), format!("{want} <eos>"));
                assert_eq!(ex.prompt_len, cfg.length as usize + 3);
                seen.insert(want);
            }
            assert_eq!(seen.len() as u32, cfg.max_count + 1, "{lvl}: {seen:?}");
        }
    }

    #[test]
    fn knobs_are_range_checked() {
        assert_rejected(
            NAME,
            None,
            &[
                ("alphabet", "1", "alphabet"),
                ("length", "2", "length"),
                ("max_count", "33", "max_count"),
            ],
        );
        let e = rejection(NAME, None, &[("min_count", "5"), ("max_count", "4")]);
        assert!(e.contains("min_count"), "{e}");
    }
}
