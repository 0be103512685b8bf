//! # s5 — the S5 word problem (state tracking; "The Illusion of State in State-Space Models")
//!
//! Composing permutations of five elements is NC¹-complete (Barrington): no constant-depth
//! transformer solves it at every length, so accuracy against length shows where depth runs out.
//! The abelian subgroup Z5 is the contrast (solvable in constant depth), A5 the smallest
//! non-solvable group.
//!
//! ```text
//! p17 p3 p96 p44 = p71 <eos>
//! └ length perms ┘   └ answer ┘
//! ```
//!
//! * Permutation `p<k>` is the k-th permutation of (0,1,2,3,4) in lexicographic order
//!   (`p0` = (0,1,2,3,4), `p1` = (0,1,2,4,3), …, `p119` = (4,3,2,1,0)).
//! * The state starts at the identity (0,1,2,3,4); each σ in the prompt, left to right, maps the
//!   state by `state[i] → σ[state[i]]`. The answer is `p<m>` for the final state, then `<eos>`.
//! * Each σ is uniform over the `subgroup`: `s5` (all 120), `a5` (the 60 even permutations) or
//!   `z5` (the 5 rotations `i → i + r mod 5`), so the final state is uniform over the subgroup.
//! * Levels by length: `n4`, `n8`, `n16`, `n32` (subgroup s5).
//! * `running = true` (optional): the per-position form — at every σ the model must output the
//!   state so far, at `=` the final one; the sequence is `perms… = <answer>` with no `<eos>`, all
//!   input (teacher-forced).
//!
//! **Metric.** Generation (`running = false`, scored on the answer token before `<eos>`), or
//! teacher-forced (`running = true`). `meta` holds the final `state` (as an array) and `index` m.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 =`, then `p0 … p119`.

use crate::knobs::{check, parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "s5";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const EQ: u32 = 2;
/// Id of `p0`.
pub const PERM0: u32 = 3;
/// |S5|.
pub const ORDER: u32 = 120;
/// A configuration must have at least this many distinct prompts (else disjoint splits cannot
/// be filled).
const MIN_SPACE: f64 = 1e5;

/// The group the permutations are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subgroup {
    S5,
    A5,
    Z5,
}

/// s5 configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S5Config {
    /// Permutations before `=`. Default 8. Range 1 ..= 4096, with |subgroup|^length ≥ 10⁵.
    pub length: u32,
    pub subgroup: Subgroup,
    /// Supervise the state after every permutation (teacher-forced) instead of the answer only.
    pub running: bool,
}

impl Default for S5Config {
    fn default() -> Self {
        S5Config {
            length: 8,
            subgroup: Subgroup::S5,
            running: false,
        }
    }
}

pub fn info() -> TaskInfo {
    TaskInfo {
        name: NAME,
        about: "S5 word problem: compose permutations of 5 elements left to right (state tracking)",
        defaults: to_config_value(&S5Config::default()),
        levels: pinned(
            &["length"],
            &[("n4", 4), ("n8", 8), ("n16", 16), ("n32", 32)],
        ),
        default_level: "n8",
        generalization: Some(crate::Generalization {
            axis: "length",
            train: "n8",
            ood: &["n16", "n32"],
        }),
    }
}

/// The k-th permutation of (0,1,2,3,4) in lexicographic order (factorial number system).
pub fn perm(k: u32) -> [u8; 5] {
    let mut left: Vec<u8> = (0..5).collect();
    let mut k = k as usize;
    let mut out = [0u8; 5];
    for (i, slot) in out.iter_mut().enumerate() {
        let f = (1..5 - i).product::<usize>();
        *slot = left.remove(k / f);
        k %= f;
    }
    out
}

/// The lexicographic index of a permutation of (0,1,2,3,4).
pub fn index(p: &[u8; 5]) -> u32 {
    (0..5)
        .map(|i| {
            let smaller_after = p[i + 1..].iter().filter(|&&x| x < p[i]).count();
            (smaller_after * (1..5 - i).product::<usize>()) as u32
        })
        .sum()
}

fn even(p: &[u8; 5]) -> bool {
    let inversions = (0..5)
        .flat_map(|i| (i + 1..5).map(move |j| (i, j)))
        .filter(|&(i, j)| p[i] > p[j])
        .count();
    inversions % 2 == 0
}

/// The lexicographic indices of the subgroup's elements, ascending.
pub fn elements(g: Subgroup) -> Vec<u32> {
    (0..ORDER)
        .filter(|&k| {
            let p = perm(k);
            match g {
                Subgroup::S5 => true,
                Subgroup::A5 => even(&p),
                Subgroup::Z5 => (0..5).all(|i| p[i] as usize == (i + p[0] as usize) % 5),
            }
        })
        .collect()
}

pub struct S5 {
    cfg: S5Config,
    /// Lexicographic indices of the subgroup.
    group: Vec<u32>,
}

impl S5 {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        Self::new(parse_config(NAME, cfg)?)
    }

    pub fn new(c: S5Config) -> Result<Self, TaskError> {
        Knobs::new(NAME).int("length", c.length, 1..=4096)?;
        let group = elements(c.subgroup);
        let space = (group.len() as f64).powi(c.length.min(64) as i32);
        check(NAME, space >= MIN_SPACE, || {
            format!(
                "length = {} gives only {space} distinct prompts over {:?}; use a longer length",
                c.length, c.subgroup
            )
        })?;
        Ok(S5 { cfg: c, group })
    }
}

impl Task for S5 {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (PERM0 + ORDER) as usize
    }
    fn max_len(&self) -> usize {
        self.cfg.length as usize + 1 + if self.cfg.running { 1 } else { 2 }
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
            EQ => "=".into(),
            i if (PERM0..PERM0 + ORDER).contains(&i) => format!("p{}", i - PERM0),
            i => format!("<{i}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let n = self.cfg.length as usize;
        let mut state: [u8; 5] = [0, 1, 2, 3, 4];
        let mut tokens = Vec::with_capacity(self.max_len());
        let mut running = Vec::with_capacity(n + 1);
        for i in 0..n {
            let k = self.group[rng.gen_range(0..self.group.len())];
            let s = perm(k);
            state = state.map(|x| s[x as usize]);
            tokens.push(PERM0 + k);
            running.push((i as u32, PERM0 + index(&state)));
        }
        let m = index(&state);
        tokens.extend([EQ, PERM0 + m]);
        let mut meta = Map::new();
        meta.insert("state".into(), json!(state));
        meta.insert("index".into(), json!(m));
        crate::state_tracking_sample(tokens, running, self.cfg.running, EOS, meta)
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::state_tracking_score(ex, generated, self.cfg.running, EOS)
    }
    fn chance(&self) -> f64 {
        1.0 / self.group.len() as f64
    }
    fn metric(&self) -> Metric {
        crate::state_tracking_metric(self.cfg.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, rejection, sets};
    use crate::{build, generate_range, Split};

    /// An independent composition over the rendered prompt: enumerate the permutations in
    /// lexicographic order with a next-permutation step, then apply each to the state.
    fn rederive(prompt: &str) -> String {
        let mut all = vec![[0u8, 1, 2, 3, 4]];
        loop {
            let mut p = *all.last().unwrap();
            let Some(i) = (0..4).rev().find(|&i| p[i] < p[i + 1]) else {
                break;
            };
            let j = (i + 1..5).rev().find(|&j| p[j] > p[i]).unwrap();
            p.swap(i, j);
            p[i + 1..].reverse();
            all.push(p);
        }
        assert_eq!(all.len(), 120);
        let w: Vec<&str> = prompt.split(' ').collect();
        assert_eq!(*w.last().unwrap(), "=");
        let mut state = [0u8, 1, 2, 3, 4];
        for t in &w[..w.len() - 1] {
            let s = all[t.strip_prefix('p').unwrap().parse::<usize>().unwrap()];
            for x in state.iter_mut() {
                *x = s[*x as usize];
            }
        }
        format!("p{}", all.iter().position(|p| *p == state).unwrap())
    }

    #[test]
    fn lexicographic_indices_round_trip_and_subgroups_have_their_orders() {
        assert_eq!(perm(0), [0, 1, 2, 3, 4]);
        assert_eq!(perm(1), [0, 1, 2, 4, 3]);
        assert_eq!(perm(119), [4, 3, 2, 1, 0]);
        assert!((0..ORDER).all(|k| index(&perm(k)) == k));
        assert_eq!(elements(Subgroup::S5).len(), 120);
        assert_eq!(elements(Subgroup::A5).len(), 60);
        // Z5: the identity and the four rotations, closed under composition.
        let z = elements(Subgroup::Z5);
        assert_eq!(z.len(), 5);
        for &a in &z {
            for &b in &z {
                let (pa, pb) = (perm(a), perm(b));
                assert!(z.contains(&index(&pa.map(|x| pb[x as usize]))));
            }
        }
    }

    #[test]
    fn answers_rederive_from_the_rendering() {
        for (lvl, s) in [
            ("n4", sets(&[])),
            ("n32", sets(&[])),
            ("n8", sets(&[("subgroup", "a5")])),
            ("n16", sets(&[("subgroup", "z5")])),
        ] {
            let t = build(NAME, Some(lvl), &s).unwrap();
            let mut answers = std::collections::BTreeSet::new();
            for ex in generate_range(t.as_ref(), Split::Train, 0, 400) {
                let want = rederive(&t.render(ex.prompt()));
                assert_eq!(t.render(ex.answer()), format!("{want} <eos>"), "{lvl}");
                answers.insert(want);
            }
            // The final state is spread over the subgroup (z5 has 5 states, a5 60, s5 120).
            assert!(answers.len() >= (0.8 / t.chance()) as usize, "{lvl} {s:?}");
        }
    }

    #[test]
    fn running_targets_are_the_prefix_states() {
        let t = build(NAME, Some("n8"), &sets(&[("running", "true")])).unwrap();
        for ex in generate_range(t.as_ref(), Split::Val, 0, 50) {
            let w: Vec<String> = ex.tokens.iter().map(|&x| t.token_str(x)).collect();
            assert_eq!(ex.targets.len(), 9);
            for i in 0..8 {
                let prefix = format!("{} =", w[..=i].join(" "));
                assert_eq!(ex.targets[i], (i as u32, ex.targets[i].1));
                assert_eq!(t.token_str(ex.targets[i].1), rederive(&prefix));
            }
            assert_eq!(ex.targets[8], (8, ex.tokens[9]));
            assert!(t.score(&ex, &ex.targets.iter().map(|x| x.1).collect::<Vec<_>>()));
        }
    }

    #[test]
    fn knobs_are_range_checked() {
        assert_rejected(
            NAME,
            None,
            &[
                ("length", "0", "length"),
                ("subgroup", "s4", "unknown variant"),
            ],
        );
        let e = rejection(NAME, Some("n4"), &[("subgroup", "z5")]);
        assert!(e.contains("distinct prompts"), "{e}");
    }
}
