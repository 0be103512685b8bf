//! # hopk — k-hop induction heads (following Sanford, Hsu & Telgarsky 2024)
//!
//! A string `x_0 … x_{n−1}` over an alphabet of `alphabet` letters with no two equal neighbours is
//! preceded by one token `K<k>` naming the hop count, so an example is `K<k> x_0 … x_{n−1}` (no EOS;
//! `meta.start = 1` is the index of `x_0`). With 0-based string positions:
//!
//! * `find(i) = j + 1` where `j < i` is the most recent earlier position with `x_j = x_i`, undefined
//!   if `x_i` has not occurred before (the paper's `find_X(i) = max{j ≤ i : X_{j−1} = X_i}`,
//!   `0 = ⊥`, written 0-based). Because neighbours differ, `find(i) < i`.
//! * `hop_0(i) = x_i`, and `hop_k(i) = x_{find^k(i)}` (the token after the most recent earlier
//!   occurrence of the current token, iterated k times); undefined once any `find` is undefined.
//!
//! Supervision: at input position `start + i` the model must output `hop_k(i)`; positions where the
//! hop is undefined (and the `K` token) are unsupervised. The target is in general not the next
//! token. The metric is teacher-forced accuracy over the targets; per-k error comes from `meta.hops`.
//!
//! [`Task::score`] takes the model's predictions at the target positions, in target order, one token
//! per target, and accepts iff all are right.

use crate::knobs::{parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "hopk";
/// Largest hop count with a `K` token (the vocabulary always holds `K0 ..= K16`).
pub const MAX_HOPS: u32 = 16;
/// Padding id (never appears in an example).
pub const PAD: u32 = 0;

/// hop-k configuration. Each example draws its hop count uniformly from `min_hops ..= max_hops`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopkConfig {
    /// Alphabet size (letters `a`, `b`, …). Default 4 (the paper). Range 3 ..= 26.
    pub alphabet: u32,
    /// String length (tokens after the `K` token). Default 100 (the paper). Range 8 ..= 8192.
    pub length: u32,
    /// Smallest hop count drawn. Default 0. Range 0 ..= max_hops.
    pub min_hops: u32,
    /// Largest hop count drawn. Default 16. Range min_hops ..= 16.
    pub max_hops: u32,
}

impl Default for HopkConfig {
    fn default() -> Self {
        HopkConfig {
            alphabet: 4,
            length: 100,
            min_hops: 0,
            max_hops: MAX_HOPS,
        }
    }
}

pub fn info() -> TaskInfo {
    let k = pinned(
        &["min_hops", "max_hops"],
        &[("k1", 1), ("k2", 2), ("k4", 4), ("k8", 8), ("k16", 16)],
    );
    TaskInfo {
        name: NAME,
        about: "k-hop induction heads (Sanford, Hsu, Telgarsky 2024): follow the induction pointer k times",
        defaults: to_config_value(&HopkConfig::default()),
        levels: [k, vec![("mix", json!({}))]].concat(),
        default_level: "k4",
        generalization: Some(crate::Generalization {
            axis: "hops",
            train: "k2",
            ood: &["k4", "k8"],
        }),
    }
}

pub struct Hopk {
    cfg: HopkConfig,
}

impl Hopk {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: HopkConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: HopkConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("alphabet", c.alphabet, 3..=26)?;
        k.int("length", c.length, 8..=8192)?;
        k.int("max_hops", c.max_hops, 0..=MAX_HOPS)?;
        k.int_in("min_hops", c.min_hops, "0..=max_hops", 0..=c.max_hops)?;
        Ok(Hopk { cfg: c })
    }

    /// Id of letter `l` (0-based).
    pub fn letter_id(&self, l: u32) -> u32 {
        1 + l
    }
    /// Id of the hop-count token `K<k>`.
    pub fn hops_id(&self, k: u32) -> u32 {
        1 + self.cfg.alphabet + k
    }
}

/// `hop_k(i)` for every position of `x` (`None` where undefined), O(k·n).
pub fn hops(x: &[u32], k: u32) -> Vec<Option<u32>> {
    // find[i] = j + 1 for the most recent j < i with x[j] == x[i].
    let mut last: Vec<(u32, usize)> = Vec::new();
    let find: Vec<Option<usize>> = x
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let f = last.iter().find(|e| e.0 == c).map(|e| e.1 + 1);
            match last.iter_mut().find(|e| e.0 == c) {
                Some(e) => e.1 = i,
                None => last.push((c, i)),
            }
            f
        })
        .collect();
    (0..x.len())
        .map(|i| {
            let mut p = Some(i);
            for _ in 0..k {
                p = p.and_then(|p| find[p]);
            }
            p.map(|p| x[p])
        })
        .collect()
}

impl Task for Hopk {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (1 + self.cfg.alphabet + MAX_HOPS + 1) as usize
    }
    fn max_len(&self) -> usize {
        1 + self.cfg.length as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        let a = self.cfg.alphabet;
        if id == PAD {
            "_".into()
        } else if id <= a {
            ((b'a' + (id - 1) as u8) as char).to_string()
        } else if id <= a + 1 + MAX_HOPS {
            format!("K{}", id - a - 1)
        } else {
            format!("<{id}?>")
        }
    }
    fn render(&self, tokens: &[u32]) -> String {
        // Letters are single characters: print the string compactly after the K token.
        let mut s = String::new();
        for &t in tokens {
            let ts = self.token_str(t);
            if ts.len() != 1 && !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&ts);
            if ts.len() != 1 {
                s.push(' ');
            }
        }
        s.trim_end().to_string()
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let a = self.cfg.alphabet;
        let n = self.cfg.length as usize;
        let k = rng.gen_range(self.cfg.min_hops..=self.cfg.max_hops);
        let mut x = Vec::with_capacity(n);
        let mut prev = rng.gen_range(0..a);
        x.push(prev);
        for _ in 1..n {
            // Uniform over the a − 1 letters different from prev.
            let c = rng.gen_range(0..a - 1);
            prev = if c >= prev { c + 1 } else { c };
            x.push(prev);
        }
        let h = hops(&x, k);
        let mut tokens = Vec::with_capacity(n + 1);
        tokens.push(self.hops_id(k));
        tokens.extend(x.iter().map(|&l| self.letter_id(l)));
        let targets = h
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|l| ((1 + i) as u32, self.letter_id(l))))
            .collect();
        let mut meta = Map::new();
        meta.insert("hops".into(), json!(k));
        meta.insert("start".into(), json!(1));
        meta.insert("alphabet".into(), json!(a));
        Sample {
            tokens,
            prompt_len: n + 1,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    /// `hop_0` (copy the current token) and `hop_1` (one induction head): what one or two layers
    /// compute without solving k hops. (At k4, copying the current token scores 35% — the
    /// plateau every model of the first depth protocol reached.)
    fn shallow(&self, ex: &Example) -> Vec<Vec<Option<u32>>> {
        let x = &ex.tokens[1..];
        (0..2)
            .map(|j| {
                let h = hops(x, j);
                ex.targets
                    .iter()
                    .map(|&(p, _)| h.get(p as usize - 1).copied().flatten())
                    .collect()
            })
            .collect()
    }
    fn chance(&self) -> f64 {
        1.0 / self.cfg.alphabet as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, generate, Split};
    use rand::SeedableRng;

    /// Brute force straight from the definition: scan back for the most recent earlier equal
    /// token, step to the token after it, k times.
    fn brute(x: &[u32], k: u32, i: usize) -> Option<u32> {
        let mut p = i;
        for _ in 0..k {
            let j = (0..p).rev().find(|&j| x[j] == x[p])?;
            p = j + 1;
        }
        Some(x[p])
    }

    #[test]
    fn hops_match_brute_force() {
        for (lvl, k) in [("k1", 1), ("k2", 2), ("k4", 4), ("k8", 8), ("k16", 16)] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            for i in 0..100 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert_eq!(ex.tokens.len(), t.max_len());
                assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()));
                assert_eq!(ex.tokens[0], 5 + k, "K token");
                assert_eq!(ex.meta["hops"], json!(k));
                assert_eq!(ex.meta["start"], json!(1));
                let x: Vec<u32> = ex.tokens[1..].to_vec();
                assert!(x.windows(2).all(|w| w[0] != w[1]), "equal neighbours");
                assert!(x.iter().all(|&c| (1..=4).contains(&c)));
                let want: Vec<(u32, u32)> = (0..x.len())
                    .filter_map(|i| brute(&x, k, i).map(|v| (1 + i as u32, v)))
                    .collect();
                assert_eq!(ex.targets, want);
                assert!(!ex.targets.is_empty());
            }
        }
    }

    #[test]
    fn hops_on_hand_example() {
        // x = a b c a b d a ; hop_1(6: a) → after most recent earlier a (3) is b.
        let x = [0, 1, 2, 0, 1, 3, 0];
        let h1 = hops(&x, 1);
        assert_eq!(h1, vec![None, None, None, Some(1), Some(2), None, Some(1)]);
        // hop_2(6): find(6) = 4 (b), find(4) = 2 (after b at 1) → c.
        assert_eq!(hops(&x, 2)[6], Some(2));
        assert_eq!(hops(&x, 0), x.iter().map(|&c| Some(c)).collect::<Vec<_>>());
    }

    #[test]
    fn mix_level_covers_all_hop_counts() {
        let t = build(NAME, Some("mix"), &[]).unwrap();
        let mut seen = [false; 17];
        for i in 0..400 {
            let ex = generate(t.as_ref(), Split::Train, i);
            seen[ex.meta["hops"].as_u64().unwrap() as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        let t = build(NAME, Some("k2"), &[]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for i in 0..300 {
            let ex = generate(t.as_ref(), Split::Val, i);
            let good: Vec<u32> = ex.targets.iter().map(|t| t.1).collect();
            assert!(t.score(&ex, &good));
            let mut bad = good.clone();
            let j = rng.gen_range(0..bad.len());
            bad[j] = 1 + (bad[j] % 4); // another letter
            assert!(!t.score(&ex, &bad));
            assert!(!t.score(&ex, &good[1..]));
        }
    }

    #[test]
    fn range_validation() {
        crate::knobs::assert_rejected(
            NAME,
            Some("k4"),
            &[
                ("alphabet", "2", "alphabet"),
                ("alphabet", "27", "alphabet"),
                ("length", "7", "length"),
                ("max_hops", "17", "max_hops"),
                ("min_hops", "5", "min_hops"),
            ],
        );
        assert!(Hopk::from_json(
            json!({"alphabet": 4, "length": 100, "min_hops": 0, "max_hops": 1, "k": 2})
        )
        .err()
        .unwrap()
        .to_string()
        .contains("unknown field"));
    }

    #[test]
    fn rendering_and_info() {
        let t = build(NAME, Some("k2"), &[]).unwrap();
        assert_eq!(t.vocab_size(), 22);
        assert_eq!(t.render(&[7, 1, 2, 3, 4, 1]), "K2 abcda");
        assert_eq!(
            t.config(),
            json!({"alphabet": 4, "length": 100, "min_hops": 2, "max_hops": 2})
        );
        assert_eq!(Hopk::from_json(t.config()).unwrap().config(), t.config());
        assert_eq!(t.chance(), 0.25);
        assert_eq!(t.metric(), Metric::TeacherForced);
    }
}
