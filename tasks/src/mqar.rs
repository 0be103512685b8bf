//! # mqar — multi-query associative recall (following Zoology, Arora et al. 2023)
//!
//! One example is exactly `seq_len` tokens (no EOS, no separate answer span: the whole sequence is
//! the prompt and the metric is teacher-forced):
//!
//! ```text
//! k1 v1 k2 v2 … kN vN | _ _ k3 _ _ _ k1 _ k7 _ …
//! └── context (2N) ──┘ └── query region (seq_len − 2N) ──┘
//! ```
//!
//! * Keys are distinct ids drawn uniformly from `1 .. vocab_size / 2` (id 0 is the filler), values
//!   are distinct ids drawn uniformly from `vocab_size / 2 .. vocab_size`, as in Zoology.
//! * The query region has `space = (seq_len − 2N) / 2` even slots. `N` distinct slots (gaps) are drawn
//!   without replacement with probability ∝ `power_a · g^(power_a − 1)`, `g = 1 … space` (small gaps
//!   likely); key *i* is re-inserted at position `2N + 2·gap_i`. Sampling without replacement is
//!   successive: each draw is from the remaining slots with renormalised weights (the same law as
//!   numpy's `choice(replace=False, p=…)`), done exactly with an integer Fenwick tree.
//! * Supervision: at the position of each query key the model must output that key's value. As in
//!   Zoology the value is *not* written into the sequence (the next token is filler), so
//!   `targets[j].1 != tokens[targets[j].0 + 1]`. Every other position is unsupervised. Filler is 0
//!   (Zoology's `random_non_queries=False`).
//!
//! [`Task::score`] for this teacher-forced task takes the model's predictions *at the target
//! positions, in target order* (one token per target) and accepts iff all are right.

use crate::draw::distinct;
use crate::knobs::{parse_config, pinned, to_config_value, Edge, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::cell::RefCell;

const NAME: &str = "mqar";
/// Filler id (also the padding id).
pub const FILLER: u32 = 0;

/// MQAR configuration. Constraints (checked by [`Mqar::from_json`]): `seq_len ≥ 4·num_kv_pairs`
/// (Zoology's assert: enough gap slots for every query) and `num_kv_pairs < vocab_size / 2`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqarConfig {
    /// Number of token ids: filler 0, keys `1 .. vocab_size/2`, values `vocab_size/2 .. vocab_size`.
    /// Default 8192 (Zoology). Range 8 ..= 1_000_000.
    pub vocab_size: u32,
    /// Sequence length in tokens (context plus query region). Default 256. Range 8 ..= 65_536, even.
    pub seq_len: u32,
    /// Key-value pairs per example (= queries per example). Default 16 (Zoology's T=256 setting).
    /// Range 1 ..= seq_len / 4, and below vocab_size / 2.
    pub num_kv_pairs: u32,
    /// Power-law exponent of the query gap distribution, p(g) ∝ g^(power_a − 1). Default 0.01
    /// (Zoology). Range (0, 1]; 1 is uniform.
    pub power_a: f64,
}

impl Default for MqarConfig {
    fn default() -> Self {
        MqarConfig {
            vocab_size: 8192,
            seq_len: 256,
            num_kv_pairs: 16,
            power_a: 0.01,
        }
    }
}

pub fn info() -> TaskInfo {
    TaskInfo {
        name: NAME,
        about: "multi-query associative recall (Zoology): recall each re-queried key's value",
        defaults: to_config_value(&MqarConfig::default()),
        levels: pinned(
            &["num_kv_pairs"],
            &[
                ("kv4", 4),
                ("kv8", 8),
                ("kv16", 16),
                ("kv32", 32),
                ("kv64", 64),
            ],
        ),
        default_level: "kv16",
        generalization: Some(crate::Generalization {
            axis: "key-value pairs",
            train: "kv4",
            ood: &["kv8", "kv16"],
        }),
    }
}

/// Gap weights scaled to integers: `w_g = round(2^32 · g^(power_a − 1))`, at least 1. Integer
/// arithmetic makes the draws exact (no float residue when a slot is removed).
fn gap_weights(space: usize, power_a: f64) -> Vec<u64> {
    (1..=space)
        .map(|g| {
            let w = (g as f64).powf(power_a - 1.0);
            ((w * 4_294_967_296.0).round() as u64).max(1)
        })
        .collect()
}

/// Fenwick tree (1-based in `t[1..=n]`, `t[0]` unused) over `w`.
fn fenwick_build(w: &[u64]) -> Vec<u64> {
    let n = w.len();
    let mut t = vec![0u64; n + 1];
    for i in 1..=n {
        t[i] += w[i - 1];
        let j = i + (i & i.wrapping_neg());
        if j <= n {
            let v = t[i];
            t[j] += v;
        }
    }
    t
}

pub struct Mqar {
    cfg: MqarConfig,
    space: usize,
    weights: Vec<u64>,
    fenwick: Vec<u64>,
    total: u64,
    /// Highest power of two ≤ space (Fenwick descent start).
    top_bit: usize,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl Mqar {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: MqarConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: MqarConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("vocab_size", c.vocab_size, 8..=1_000_000)?;
        k.even("seq_len", c.seq_len, 8..=65_536)?;
        k.int_in(
            "num_kv_pairs",
            c.num_kv_pairs,
            "1..=seq_len/4",
            1..=c.seq_len / 4,
        )?;
        k.require(c.num_kv_pairs < c.vocab_size / 2, || {
            format!(
                "num_kv_pairs = {} must be below vocab_size/2 = {} (distinct keys from 1..vocab_size/2)",
                c.num_kv_pairs,
                c.vocab_size / 2
            )
        })?;
        k.real("power_a", c.power_a, Edge::Open(0.0), Edge::Closed(1.0))?;
        let space = ((c.seq_len - 2 * c.num_kv_pairs) / 2) as usize;
        let weights = gap_weights(space, c.power_a);
        let fenwick = fenwick_build(&weights);
        let total = weights.iter().sum();
        let mut top_bit = 1;
        while top_bit * 2 <= space {
            top_bit *= 2;
        }
        Ok(Mqar {
            cfg: c,
            space,
            weights,
            fenwick,
            total,
            top_bit,
        })
    }

    pub fn cfg(&self) -> &MqarConfig {
        &self.cfg
    }

    fn key_lo(&self) -> u32 {
        1
    }
    fn key_hi(&self) -> u32 {
        self.cfg.vocab_size / 2
    }
    fn is_key(&self, id: u32) -> bool {
        id >= self.key_lo() && id < self.key_hi()
    }

    /// `n` distinct gap slots in `0..space`, successive power-law draws without replacement.
    fn gaps(&self, rng: &mut ChaCha8Rng, n: usize, out: &mut Vec<u32>) {
        out.clear();
        SCRATCH.with(|s| {
            let mut t = s.borrow_mut();
            t.clear();
            t.extend_from_slice(&self.fenwick);
            let mut total = self.total;
            for _ in 0..n {
                // Smallest slot whose prefix weight exceeds r.
                let mut r = rng.gen_range(0..total);
                let mut pos = 0usize;
                let mut step = self.top_bit;
                while step > 0 {
                    let nxt = pos + step;
                    if nxt <= self.space && t[nxt] <= r {
                        pos = nxt;
                        r -= t[nxt];
                    }
                    step >>= 1;
                }
                // pos is the 0-based slot index (1-based pos + 1).
                let w = self.weights[pos];
                let mut i = pos + 1;
                while i <= self.space {
                    t[i] -= w;
                    i += i & i.wrapping_neg();
                }
                total -= w;
                out.push(pos as u32);
            }
        });
    }
}

impl Task for Mqar {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size as usize
    }
    fn max_len(&self) -> usize {
        self.cfg.seq_len as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        if id == FILLER {
            "_".to_string()
        } else if self.is_key(id) {
            format!("k{id}")
        } else {
            format!("v{id}")
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let n = self.cfg.num_kv_pairs as usize;
        let t = self.cfg.seq_len as usize;
        let ctx = 2 * n;
        let keys = distinct(rng, self.key_lo(), self.key_hi(), n);
        let values = distinct(rng, self.key_hi(), self.cfg.vocab_size, n);
        let mut gaps = Vec::with_capacity(n);
        self.gaps(rng, n, &mut gaps);

        let mut tokens = vec![FILLER; t];
        for i in 0..n {
            tokens[2 * i] = keys[i];
            tokens[2 * i + 1] = values[i];
        }
        let mut targets: Vec<(u32, u32)> = (0..n)
            .map(|i| {
                let p = ctx + 2 * gaps[i] as usize;
                tokens[p] = keys[i];
                (p as u32, values[i])
            })
            .collect();
        targets.sort_unstable();

        let mut meta = Map::new();
        meta.insert("vocab_size".into(), json!(self.cfg.vocab_size));
        meta.insert("num_kv_pairs".into(), json!(n));
        meta.insert("seq_len".into(), json!(t));
        Sample {
            tokens,
            prompt_len: t,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    fn chance(&self) -> f64 {
        1.0 / (self.cfg.vocab_size - self.cfg.vocab_size / 2) as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, rejection, sets};
    use crate::{build, generate, generate_range, Split};
    use rand::SeedableRng;
    use std::collections::HashMap;

    fn task(s: &[(&str, &str)]) -> Box<dyn Task> {
        build(NAME, None, &sets(s)).unwrap()
    }

    /// Recompute the answer of an MQAR sequence from its tokens alone: the value that follows each
    /// key in the context, looked up at every later occurrence of that key.
    fn reference_targets(tokens: &[u32], n: usize) -> Vec<(u32, u32)> {
        let mut kv = HashMap::new();
        for i in 0..n {
            assert!(
                kv.insert(tokens[2 * i], tokens[2 * i + 1]).is_none(),
                "repeated key"
            );
        }
        (2 * n..tokens.len())
            .filter(|&p| tokens[p] != FILLER)
            .map(|p| (p as u32, kv[&tokens[p]]))
            .collect()
    }

    #[test]
    fn structure_matches_zoology_definition() {
        for (lvl, t) in [
            ("kv4", "64"),
            ("kv8", "128"),
            ("kv16", "256"),
            ("kv64", "256"),
        ] {
            let mut sets = vec![("seq_len".to_string(), t.to_string())];
            sets.push(("vocab_size".into(), "512".into()));
            let task = build(NAME, Some(lvl), &sets).unwrap();
            let n: usize = lvl[2..].parse().unwrap();
            for i in 0..200 {
                let ex = generate(task.as_ref(), Split::Train, i);
                assert_eq!(ex.tokens.len(), task.max_len());
                assert_eq!(ex.prompt_len, ex.tokens.len());
                assert!(ex.tokens.iter().all(|&x| (x as usize) < task.vocab_size()));
                let half = 256;
                for j in 0..n {
                    assert!((1..half).contains(&ex.tokens[2 * j]), "key range");
                    assert!((half..512).contains(&ex.tokens[2 * j + 1]), "value range");
                }
                let mut vals: Vec<u32> = (0..n).map(|j| ex.tokens[2 * j + 1]).collect();
                vals.sort();
                vals.dedup();
                assert_eq!(vals.len(), n, "values distinct");
                assert_eq!(ex.targets, reference_targets(&ex.tokens, n));
                assert_eq!(ex.targets.len(), n, "every key queried exactly once");
                for &(p, _) in &ex.targets {
                    assert_eq!((p as usize - 2 * n) % 2, 0, "queries on even slots");
                    assert_eq!(ex.tokens[p as usize + 1], FILLER);
                }
                assert_eq!(ex.meta["num_kv_pairs"], json!(n));
                assert_eq!(ex.meta["vocab_size"], json!(512));
            }
        }
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        let task = task(&[
            ("vocab_size", "256"),
            ("seq_len", "64"),
            ("num_kv_pairs", "4"),
        ]);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for i in 0..300 {
            let ex = generate(task.as_ref(), Split::Test, i);
            let good: Vec<u32> = ex.targets.iter().map(|t| t.1).collect();
            assert!(task.score(&ex, &good));
            let mut bad = good.clone();
            let j = rng.gen_range(0..bad.len());
            bad[j] = if bad[j] == 255 { 128 } else { bad[j] + 1 };
            assert!(!task.score(&ex, &bad));
            assert!(!task.score(&ex, &good[..good.len() - 1]));
            assert!(!task.score(&ex, &[]));
        }
    }

    #[test]
    fn gaps_follow_power_law_and_are_exact_without_replacement() {
        // One kv pair: the gap law is exactly p(g) ∝ g^(a-1); check the first slot's frequency.
        let task = Mqar::new(MqarConfig {
            vocab_size: 64,
            seq_len: 66,
            num_kv_pairs: 1,
            power_a: 0.01,
        })
        .unwrap();
        let space = task.space;
        let z: f64 = (1..=space).map(|g| (g as f64).powf(-0.99)).sum();
        let p0 = 1.0 / z;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Vec::new();
        let trials = 40_000;
        let mut hits = 0;
        for _ in 0..trials {
            task.gaps(&mut rng, 1, &mut out);
            hits += (out[0] == 0) as usize;
        }
        let f = hits as f64 / trials as f64;
        let sd = (p0 * (1.0 - p0) / trials as f64).sqrt();
        assert!((f - p0).abs() < 5.0 * sd, "freq {f} vs {p0}");
        // Drawing every slot must return a permutation of 0..space.
        let full = Mqar::new(MqarConfig {
            vocab_size: 1024,
            seq_len: 256,
            num_kv_pairs: 64,
            power_a: 0.01,
        })
        .unwrap();
        for _ in 0..50 {
            full.gaps(&mut rng, 64, &mut out);
            let mut s = out.clone();
            s.sort();
            assert_eq!(s, (0..64).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn range_validation() {
        assert_rejected(
            NAME,
            None,
            &[
                ("vocab_size", "4", "vocab_size"),
                ("seq_len", "255", "seq_len"),
                ("seq_len", "6", "seq_len"),
                ("num_kv_pairs", "0", "num_kv_pairs"),
                ("num_kv_pairs", "65", "num_kv_pairs"),
                ("power_a", "0", "power_a"),
                ("power_a", "1.5", "power_a"),
            ],
        );
        let e = rejection(NAME, None, &[("vocab_size", "16")]);
        assert!(e.contains("vocab_size/2"), "{e}");
        let e = Mqar::from_json(
            json!({"vocab_size": 8192, "seq_len": 256, "num_kv_pairs": 16, "power_a": 0.01, "train_power_a": 0.1}),
        );
        assert!(e.err().unwrap().to_string().contains("train_power_a"));
        let e = Mqar::from_json(json!({"vocab_size": 8192}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn config_roundtrip_and_info() {
        let t = task(&[]);
        assert_eq!(t.config(), info().defaults);
        let t2 = Mqar::from_json(t.config()).unwrap();
        assert_eq!(t2.config(), t.config());
        assert!((t.chance() - 1.0 / 4096.0).abs() < 1e-15);
        assert_eq!(t.metric(), Metric::TeacherForced);
        assert_eq!(t.eos_id(), None);
        assert_eq!(t.render(&[0, 5, 4100]), "_ k5 v4100");
    }

    #[test]
    fn generation_is_deterministic_and_range_independent() {
        let t = task(&[
            ("vocab_size", "128"),
            ("seq_len", "64"),
            ("num_kv_pairs", "4"),
        ]);
        let a = generate_range(t.as_ref(), Split::Train, 0, 50);
        let b = generate_range(t.as_ref(), Split::Train, 20, 10);
        assert_eq!(&a[20..30], &b[..]);
    }
}
