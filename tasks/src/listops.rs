//! # listops — ListOps with a seed (following LRA, Tay et al. 2021; Nangia & Bowman 2018)
//!
//! A prefix expression tree over the digits `0 … 9` with four list operators, evaluated to one
//! digit:
//!
//! ```text
//! [MAX 2 9 [MIN 4 7 ] 0 ] = 9 <eos>
//! ```
//!
//! * `MIN`, `MAX`; `MED` is the median, and for an even number of arguments the mean of the two
//!   middle values rounded down (LRA's `int(np.median(·))`); `SM` is the sum modulo 10.
//! * **Tree law (LRA's).** The root is an operator. Below it, a node at operator level
//!   `ℓ ≤ max_depth` is an operator with probability `op_prob` (LRA: 0.25) and otherwise a digit;
//!   nodes at level `max_depth + 1` are digits. An operator takes a uniform number of arguments in
//!   `2 ..= max_args` and is uniform over the four operators; digits are uniform. *Depth* is the
//!   number of operator levels on the deepest path (`[SM 1 2 ]` has depth 1).
//! * **Windows.** A tree whose depth is below `min_depth`, or whose token count is outside
//!   `min_tokens ..= max_tokens`, is rejected and redrawn from the same rng (LRA filters by length
//!   the same way; a tree is abandoned as soon as it grows past `max_tokens`). So the distribution
//!   is LRA's, conditioned on the windows; levels fix the depth exactly (`min_depth = max_depth`).
//!   [`Listops::new`] rejects configs whose windows accept (almost) nothing.
//! * LRA's generator is unseeded and deduplicates through a Python set (hash order); here every
//!   example is a pure function of its seed, and split disjointness is the crate's hash partition.
//!
//! **Sequence.** Prompt `tree =`, answer `<digit> <eos>`; both answer positions are supervised.
//! **Metric: generation** (10-way). [`Task::score`] cuts at the first `<eos>` and accepts iff what
//! precedes it is exactly the digit of `meta.value`.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 =`, `3 ]`, `4 [MIN`, `5 [MAX`, `6 [MED`, `7 [SM`,
//! `8 … 17` the digits 0 … 9.

use crate::draw::first_accepted;
use crate::knobs::{parse_config, pinned, to_config_value, Edge, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "listops";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const EQ: u32 = 2;
pub const END: u32 = 3;
pub const MIN: u32 = 4;
pub const MAX: u32 = 5;
pub const MED: u32 = 6;
pub const SM: u32 = 7;
/// Digit 0.
pub const DIG0: u32 = 8;

/// Draws (per example) after which sampling gives up; the constructor's feasibility check makes
/// reaching it practically impossible for an accepted config.
const MAX_DRAWS: u32 = 10_000_000;
/// Draws the constructor's feasibility check tries.
const CHECK_DRAWS: u32 = 20_000;

/// listops configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListopsConfig {
    /// Smallest accepted tree depth (operator levels). Default 1. Range 1 ..= max_depth.
    pub min_depth: u32,
    /// Largest tree depth: operators only at levels 1 ..= max_depth. Default 4. Range 1 ..= 20.
    pub max_depth: u32,
    /// Largest argument count of an operator (at least 2 are drawn). Default 5 (LRA: 10, the
    /// original ListOps: 5). Range 2 ..= 10.
    pub max_args: u32,
    /// Probability that a non-root node above the depth cap is an operator. Default 0.25 (LRA's
    /// VALUE_P). Range [0.01, 1].
    pub op_prob: f64,
    /// Fewest tree tokens (the prompt without `=`). Default 0. Range 0 ..= max_tokens.
    pub min_tokens: u32,
    /// Most tree tokens. Default 128. Range 4 ..= 8192.
    pub max_tokens: u32,
}

impl Default for ListopsConfig {
    fn default() -> Self {
        ListopsConfig {
            min_depth: 1,
            max_depth: 4,
            max_args: 5,
            op_prob: 0.25,
            min_tokens: 0,
            max_tokens: 128,
        }
    }
}

pub fn info() -> TaskInfo {
    let depth = pinned(&["min_depth", "max_depth"], &[("depth2", 2), ("depth4", 4)]);
    TaskInfo {
        name: NAME,
        about: "ListOps (LRA, seeded): evaluate a nested MIN/MAX/MED/SM expression over digits",
        defaults: to_config_value(&ListopsConfig::default()),
        levels: [
            depth,
            vec![
                (
                    "depth6",
                    json!({"min_depth": 6, "max_depth": 6, "max_tokens": 256}),
                ),
                ("mixed", json!({})),
            ],
        ]
        .concat(),
        default_level: "depth2",
        generalization: Some(crate::Generalization {
            axis: "nesting depth",
            train: "depth2",
            ood: &["depth4", "depth6"],
        }),
    }
}

/// Value of operator `op` over `args` (LRA's semantics).
pub fn apply(op: u32, args: &mut [u32]) -> u32 {
    match op {
        MIN => *args.iter().min().unwrap(),
        MAX => *args.iter().max().unwrap(),
        SM => args.iter().sum::<u32>() % 10,
        MED => {
            args.sort_unstable();
            let n = args.len();
            if n % 2 == 1 {
                args[n / 2]
            } else {
                (args[n / 2 - 1] + args[n / 2]) / 2
            }
        }
        _ => unreachable!("not an operator: {op}"),
    }
}

pub struct Listops {
    cfg: ListopsConfig,
}

/// Statistics of a drawn tree.
struct Drawn {
    value: u32,
    depth: u32,
    ops: u32,
}

impl Listops {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: ListopsConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: ListopsConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("max_depth", c.max_depth, 1..=20)?;
        k.int_in("min_depth", c.min_depth, "1..=max_depth", 1..=c.max_depth)?;
        k.int("max_args", c.max_args, 2..=10)?;
        k.real("op_prob", c.op_prob, Edge::Closed(0.01), Edge::Closed(1.0))?;
        k.int("max_tokens", c.max_tokens, 4..=8192)?;
        k.int_in(
            "min_tokens",
            c.min_tokens,
            "0..=max_tokens",
            0..=c.max_tokens,
        )?;
        // The smallest tree of depth d is a spine of d binary operators: 3d + 1 tokens.
        k.require(3 * c.min_depth < c.max_tokens, || {
            format!(
                "max_tokens = {} is below {} tokens, the smallest tree of depth min_depth = {}",
                c.max_tokens,
                3 * c.min_depth + 1,
                c.min_depth
            )
        })?;
        let t = Listops { cfg: c };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut buf = Vec::new();
        let ok = first_accepted(CHECK_DRAWS, || t.draw(&mut rng, &mut buf)).is_some();
        k.require(ok, || {
            format!(
                "no tree accepted in {CHECK_DRAWS} draws: widen the depth or token window (or raise op_prob)"
            )
        })?;
        Ok(t)
    }

    pub fn cfg(&self) -> &ListopsConfig {
        &self.cfg
    }

    /// One candidate tree into `out` (cleared); `None` if it falls outside the windows.
    fn draw(&self, rng: &mut ChaCha8Rng, out: &mut Vec<u32>) -> Option<Drawn> {
        out.clear();
        let mut ops = 0;
        let (value, depth) = self.node(rng, 1, out, &mut ops)?;
        let n = out.len() as u32;
        (depth >= self.cfg.min_depth && n >= self.cfg.min_tokens).then_some(Drawn {
            value,
            depth,
            ops,
        })
    }

    /// Node at operator level `level`; returns (value, depth below and including it), or `None`
    /// as soon as the tree exceeds `max_tokens`.
    fn node(
        &self,
        rng: &mut ChaCha8Rng,
        level: u32,
        out: &mut Vec<u32>,
        ops: &mut u32,
    ) -> Option<(u32, u32)> {
        if out.len() as u32 >= self.cfg.max_tokens {
            return None;
        }
        let is_op =
            level <= self.cfg.max_depth && (level == 1 || rng.gen::<f64>() < self.cfg.op_prob);
        if !is_op {
            let d = rng.gen_range(0..10);
            out.push(DIG0 + d);
            return Some((d, 0));
        }
        *ops += 1;
        let op = MIN + rng.gen_range(0..4);
        let n = rng.gen_range(2..=self.cfg.max_args);
        out.push(op);
        let mut args = Vec::with_capacity(n as usize);
        let mut depth = 0;
        for _ in 0..n {
            let (v, d) = self.node(rng, level + 1, out, ops)?;
            args.push(v);
            depth = depth.max(d);
        }
        out.push(END);
        if out.len() as u32 > self.cfg.max_tokens {
            return None;
        }
        Some((apply(op, &mut args), depth + 1))
    }
}

impl Task for Listops {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (DIG0 + 10) as usize
    }
    fn max_len(&self) -> usize {
        // Tree tokens are bounded by max_tokens and by the full tree (every operator at every
        // level with max_args arguments): S(0) = 1, S(d) = 2 + max_args·S(d−1).
        let mut full: u64 = 1;
        for _ in 0..self.cfg.max_depth {
            full = (2 + self.cfg.max_args as u64 * full).min(u64::from(u32::MAX));
        }
        full.min(self.cfg.max_tokens as u64) as usize + 3
    }
    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn max_new_tokens(&self) -> usize {
        2
    }
    fn token_str(&self, id: u32) -> String {
        match id {
            PAD => "_".into(),
            EOS => "<eos>".into(),
            EQ => "=".into(),
            END => "]".into(),
            MIN => "[MIN".into(),
            MAX => "[MAX".into(),
            MED => "[MED".into(),
            SM => "[SM".into(),
            d if (DIG0..DIG0 + 10).contains(&d) => (d - DIG0).to_string(),
            n => format!("<{n}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let mut tokens = Vec::with_capacity(self.max_len());
        let drawn =
            first_accepted(MAX_DRAWS, || self.draw(rng, &mut tokens)).unwrap_or_else(|| {
                panic!(
                    "listops: no tree accepted in {MAX_DRAWS} draws for {}",
                    self.config()
                )
            });
        let tree_len = tokens.len();
        tokens.push(EQ);
        let prompt_len = tokens.len();
        tokens.push(DIG0 + drawn.value);
        tokens.push(EOS);
        let targets = crate::answer_targets(&tokens, prompt_len);
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(drawn.depth));
        meta.insert("ops".into(), json!(drawn.ops));
        meta.insert("tree_tokens".into(), json!(tree_len));
        meta.insert("max_depth".into(), json!(self.cfg.max_depth));
        meta.insert("max_args".into(), json!(self.cfg.max_args));
        meta.insert("value".into(), json!(drawn.value));
        Sample {
            tokens,
            prompt_len,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        let Some(v) = ex.meta.get("value").and_then(Value::as_u64) else {
            return false;
        };
        v < 10 && crate::until_eos(generated, EOS) == [DIG0 + v as u32]
    }
    fn chance(&self) -> f64 {
        0.1
    }
    fn metric(&self) -> Metric {
        Metric::Generate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, rejection, sets};
    use crate::{build, generate, Split};
    use rand::SeedableRng;

    /// Independent evaluator over the rendered text: a stack machine. Returns (value, depth,
    /// operator count, max argument count).
    fn evaluate(text: &str) -> (u32, u32, u32, usize) {
        let mut stack: Vec<(String, Vec<u32>)> = Vec::new();
        let (mut depth, mut ops, mut max_args) = (0u32, 0u32, 0usize);
        let mut result = None;
        for w in text.split(' ') {
            assert!(result.is_none(), "tokens after the root closed: {text}");
            if let Some(op) = w.strip_prefix('[') {
                stack.push((op.to_string(), Vec::new()));
                depth = depth.max(stack.len() as u32);
                ops += 1;
            } else if w == "]" {
                let (op, mut a) = stack.pop().expect("unbalanced");
                assert!(a.len() >= 2, "operator with {} args", a.len());
                max_args = max_args.max(a.len());
                a.sort();
                let v = match op.as_str() {
                    "MIN" => a[0],
                    "MAX" => a[a.len() - 1],
                    "SM" => a.iter().sum::<u32>() % 10,
                    // Median as f64, truncated like int(np.median(.)).
                    "MED" => {
                        let n = a.len();
                        let m = if n % 2 == 1 {
                            a[n / 2] as f64
                        } else {
                            (a[n / 2 - 1] as f64 + a[n / 2] as f64) / 2.0
                        };
                        m.trunc() as u32
                    }
                    o => panic!("unknown operator {o}"),
                };
                match stack.last_mut() {
                    Some(parent) => parent.1.push(v),
                    None => result = Some(v),
                }
            } else {
                let d: u32 = w.parse().unwrap();
                assert!(d < 10);
                stack.last_mut().expect("digit outside a list").1.push(d);
            }
        }
        (result.expect("root never closed"), depth, ops, max_args)
    }

    #[test]
    fn independent_evaluator_agrees() {
        let cases = [
            ("depth2", sets(&[])),
            ("depth4", sets(&[])),
            ("depth6", sets(&[])),
            ("mixed", sets(&[])),
            (
                "mixed",
                sets(&[
                    ("max_args", "10"),
                    ("max_depth", "10"),
                    ("min_tokens", "40"),
                    ("max_tokens", "200"),
                ]),
            ),
            ("depth2", sets(&[("op_prob", "1"), ("max_args", "2")])),
        ];
        for (lvl, s) in cases {
            let t = build(NAME, Some(lvl), &s).unwrap();
            let cfg: ListopsConfig = serde_json::from_value(t.config()).unwrap();
            let mut values = [0usize; 10];
            let mut ops_seen = [false; 4];
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert!(ex.tokens.len() <= t.max_len());
                assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()));
                let tree = &ex.tokens[..ex.prompt_len - 1];
                assert_eq!(ex.tokens[ex.prompt_len - 1], EQ);
                for &x in tree {
                    if (MIN..=SM).contains(&x) {
                        ops_seen[(x - MIN) as usize] = true;
                    }
                }
                let (v, depth, ops, max_args) = evaluate(&t.render(tree));
                assert_eq!(json!(v), ex.meta["value"]);
                assert_eq!(json!(depth), ex.meta["depth"]);
                assert_eq!(json!(ops), ex.meta["ops"]);
                assert!((cfg.min_depth..=cfg.max_depth).contains(&depth));
                assert!(max_args <= cfg.max_args as usize);
                let n = tree.len() as u32;
                assert!((cfg.min_tokens..=cfg.max_tokens).contains(&n), "{n} tokens");
                assert_eq!(json!(n), ex.meta["tree_tokens"]);
                assert_eq!(t.render(ex.answer()), format!("{v} <eos>"));
                assert_eq!(ex.targets.len(), 2);
                assert!(ex
                    .targets
                    .iter()
                    .all(|&(p, tok)| ex.tokens[p as usize + 1] == tok));
                values[v as usize] += 1;
            }
            assert!(ops_seen.iter().all(|&s| s), "{lvl}: every operator occurs");
            assert!(
                values.iter().filter(|&&c| c > 0).count() >= 8,
                "{lvl}: {values:?}"
            );
        }
    }

    #[test]
    fn median_rounds_down_like_lra() {
        assert_eq!(apply(MED, &mut [1, 2]), 1);
        assert_eq!(apply(MED, &mut [9, 0, 4, 8]), 6);
        assert_eq!(apply(MED, &mut [7, 1, 3]), 3);
        assert_eq!(apply(SM, &mut [9, 9, 5]), 3);
        assert_eq!(apply(MIN, &mut [4, 2, 8]), 2);
        assert_eq!(apply(MAX, &mut [4, 2, 8]), 8);
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        for lvl in ["depth2", "depth4", "depth6"] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Test, i);
                let ans = ex.answer().to_vec();
                assert!(t.score(&ex, &ans));
                assert!(t.score(&ex, &ans[..1]));
                for d in 0..10 {
                    let other = DIG0 + d;
                    assert_eq!(t.score(&ex, &[other, EOS]), other == ans[0]);
                }
                assert!(!t.score(&ex, &[ans[0], ans[0], EOS]));
                assert!(!t.score(&ex, &[EOS]));
                assert!(!t.score(&ex, &[]));
            }
        }
    }

    #[test]
    fn range_validation() {
        assert_rejected(
            NAME,
            Some("mixed"),
            &[
                ("max_depth", "0", "max_depth"),
                ("max_depth", "21", "max_depth"),
                ("min_depth", "0", "min_depth"),
                ("min_depth", "5", "min_depth"),
                ("max_args", "1", "max_args"),
                ("max_args", "11", "max_args"),
                ("op_prob", "0", "op_prob"),
                ("op_prob", "1.5", "op_prob"),
                ("max_tokens", "3", "max_tokens"),
                ("min_tokens", "129", "min_tokens"),
            ],
        );
        let e = rejection(NAME, Some("depth6"), &[("max_tokens", "12")]);
        assert!(e.contains("smallest tree"), "{e}");
        // Feasible by size but (practically) never drawn: a depth-8 spine that must be long.
        let e = rejection(
            NAME,
            Some("mixed"),
            &[
                ("max_depth", "8"),
                ("min_depth", "8"),
                ("op_prob", "0.01"),
                ("max_args", "2"),
                ("max_tokens", "30"),
            ],
        );
        assert!(e.contains("no tree accepted"), "{e}");
        let e = Listops::from_json(json!({"min_depth": 1, "max_depth": 4, "max_args": 5,
            "op_prob": 0.25, "min_tokens": 0, "max_tokens": 128, "max_length": 5}))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("unknown field `max_length`"), "{e}");
    }

    #[test]
    fn levels_accept_often_enough() {
        // Rejection sampling must stay cheap at every level: measure the acceptance rate and the
        // tree sizes on a fixed stream.
        for (lvl, min_rate) in [
            ("depth2", 0.05),
            ("depth4", 0.01),
            ("depth6", 0.002),
            ("mixed", 0.5),
        ] {
            let cfg = crate::resolve_config(&info(), Some(lvl), &[]).unwrap();
            let t = Listops::from_json(cfg).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let mut buf = Vec::new();
            let (mut ok, mut len) = (0usize, 0usize);
            let n = 20_000;
            for _ in 0..n {
                if t.draw(&mut rng, &mut buf).is_some() {
                    ok += 1;
                    len += buf.len();
                }
            }
            let rate = ok as f64 / n as f64;
            println!(
                "{lvl}: acceptance {rate:.4}, mean tree tokens {:.1}",
                len as f64 / ok.max(1) as f64
            );
            assert!(rate >= min_rate, "{lvl}: acceptance {rate}");
        }
    }

    #[test]
    fn config_roundtrip_and_rendering() {
        let t = build(NAME, None, &[]).unwrap();
        let t2 = Listops::from_json(t.config()).unwrap();
        assert_eq!(t2.config(), t.config());
        assert_eq!(t.vocab_size(), 18);
        // depth2: at most [OP (5 × [OP d d d d d ]) ] = 37 tree tokens; deeper levels: max_tokens.
        let lvl = |l: &str| build(NAME, Some(l), &[]).unwrap().max_len();
        assert_eq!(lvl("depth2"), 37 + 3);
        assert_eq!(lvl("depth4"), 128 + 3);
        assert_eq!(lvl("depth6"), 256 + 3);
        let full = build(
            NAME,
            Some("depth2"),
            &sets(&[("op_prob", "1"), ("max_args", "2")]),
        )
        .unwrap();
        assert_eq!(full.max_len(), 2 + 2 * (2 + 2) + 3);
        for i in 0..50 {
            assert_eq!(
                generate(full.as_ref(), Split::Train, i).tokens.len(),
                full.max_len()
            );
        }
        assert_eq!(
            t.render(&[
                MAX,
                DIG0 + 2,
                MIN,
                DIG0,
                DIG0 + 9,
                END,
                END,
                EQ,
                DIG0 + 2,
                EOS
            ]),
            "[MAX 2 [MIN 0 9 ] ] = 2 <eos>"
        );
        assert_eq!(t.chance(), 0.1);
    }
}
