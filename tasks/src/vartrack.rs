//! # vartrack — variable tracking (following RULER, Hsieh et al. 2024)
//!
//! `chains` chains of assignments are interleaved with `distractors` stand-alone assignments and
//! `filler` noise words; the question names the last variable of one chain and the answer is the
//! value that reaches it through `hops` copy links:
//!
//! ```text
//! X12 = 57 ; green X3 = 8 ; X40 = X12 ; X9 = X3 ; sky X22 = 61 ; X5 = X40 ; … ? X5 = 57 <eos>
//! └ chain 0 ┘          └ chain 0, link 1 ┘               └ chain 0, link 2 ┘   └ query ┘ └ answer ┘
//! ```
//!
//! * A chain is `v0 = <value> ;` followed by `hops` links `v{j} = v{j−1} ;`. Every statement names
//!   a fresh variable (all `chains·(hops+1) + distractors` names are distinct, drawn uniformly from
//!   `names` tokens), so every variable is assigned exactly once and resolution is unambiguous.
//! * Chain values are distinct (drawn from `values` number tokens); distractor values are uniform
//!   and may coincide with a chain value (the question asks for a variable, not for a value).
//! * Statement order is a uniformly random interleaving that keeps each chain's statements in
//!   order. Each of the `filler` noise words (RULER's "the grass is green" haystack) goes, uniformly
//!   and independently, into one of the gaps before, between or after the statements; the words are
//!   uniform over 8 filler tokens.
//! * The query is the *last* variable of a uniformly chosen chain, so every question needs exactly
//!   `hops` link resolutions.
//!
//! **Sequence.** Prompt `statements … ? <var> =`, answer `<value> <eos>`; the two answer positions
//! (value and EOS) are supervised. **Metric: generation.** [`Task::score`] cuts the generation at
//! the first `<eos>` and accepts iff what precedes it is exactly the value token recorded in
//! `meta.value` — the same protocol as arith/prosqa, so the answer is scored the way answer tasks
//! are. `meta` holds every chain (its variables in order and its value), the queried chain, the
//! query variable and the value, so the answer can be re-derived from `meta` alone; the test suite
//! also re-derives it from the rendered text with an independent resolver.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 =`, `3 ;`, `4 ?`, `5..13` filler words, then `values`
//! number tokens (rendered `0`, `1`, …), then `names` variable tokens (rendered `X0`, `X1`, …).
//! Every example has exactly `4·(chains·(hops+1) + distractors) + filler + 3 + 2` tokens.

use crate::draw::{distinct, shuffle};
use crate::knobs::{parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "vartrack";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const EQ: u32 = 2;
pub const SEMI: u32 = 3;
pub const QUERY: u32 = 4;
/// First filler-word id.
pub const FILLER0: u32 = 5;
/// The filler words (RULER's haystack sentences, one token per word).
pub const FILLER_WORDS: [&str; 8] = ["the", "grass", "is", "green", "sky", "blue", "sun", "here"];
/// First number id (value 0).
pub const NUM0: u32 = FILLER0 + FILLER_WORDS.len() as u32;

/// vartrack configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VartrackConfig {
    /// Copy links per chain (`v_j = v_{j−1}`); the question needs this many resolutions.
    /// Default 2. Range 1 ..= 64 (levels hops1/2/4/8).
    pub hops: u32,
    /// Number of chains (one is queried, the others are distractor chains). Default 2.
    /// Range 1 ..= 32, and at most `values`.
    pub chains: u32,
    /// Stand-alone distractor assignments `v = <value> ;`. Default 2. Range 0 ..= 256.
    pub distractors: u32,
    /// Filler (noise) words scattered between statements. Default 8. Range 0 ..= 4096.
    pub filler: u32,
    /// Number of value tokens (values are `0 .. values`). Default 100. Range 2 ..= 10_000, and at
    /// least `chains` (chain values are distinct).
    pub values: u32,
    /// Number of variable-name tokens. Default 64. Range 2 ..= 10_000, and at least the number of
    /// variables of an example, `chains·(hops+1) + distractors`.
    pub names: u32,
}

impl Default for VartrackConfig {
    fn default() -> Self {
        VartrackConfig {
            hops: 2,
            chains: 2,
            distractors: 2,
            filler: 8,
            values: 100,
            names: 64,
        }
    }
}

pub fn info() -> TaskInfo {
    TaskInfo {
        name: NAME,
        about: "variable tracking (RULER): follow a chain of `X = Y` copies to the assigned value",
        defaults: to_config_value(&VartrackConfig::default()),
        levels: pinned(
            &["hops"],
            &[("hops1", 1), ("hops2", 2), ("hops4", 4), ("hops8", 8)],
        ),
        default_level: "hops2",
        generalization: Some(crate::Generalization {
            axis: "hops",
            train: "hops2",
            ood: &["hops4", "hops8"],
        }),
    }
}

pub struct Vartrack {
    cfg: VartrackConfig,
}

impl Vartrack {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: VartrackConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: VartrackConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("hops", c.hops, 1..=64)?;
        k.int("chains", c.chains, 1..=32)?;
        k.int("distractors", c.distractors, 0..=256)?;
        k.int("filler", c.filler, 0..=4096)?;
        k.int("values", c.values, 2..=10_000)?;
        k.require(c.chains <= c.values, || {
            format!(
                "chains = {} must not exceed values = {} (chain values are distinct)",
                c.chains, c.values
            )
        })?;
        k.int("names", c.names, 2..=10_000)?;
        let vars = c.chains * (c.hops + 1) + c.distractors;
        k.require(vars <= c.names, || {
            format!(
                "names = {} must be at least chains*(hops+1)+distractors = {vars} (every variable is distinct)",
                c.names
            )
        })?;
        Ok(Vartrack { cfg: c })
    }

    pub fn cfg(&self) -> &VartrackConfig {
        &self.cfg
    }
    /// Token of value `v`.
    pub fn value_id(&self, v: u32) -> u32 {
        NUM0 + v
    }
    /// Token of variable name `i`.
    pub fn name_id(&self, i: u32) -> u32 {
        NUM0 + self.cfg.values + i
    }
    fn statements(&self) -> usize {
        (self.cfg.chains * (self.cfg.hops + 1) + self.cfg.distractors) as usize
    }
}

impl Task for Vartrack {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (NUM0 + self.cfg.values + self.cfg.names) as usize
    }
    fn max_len(&self) -> usize {
        4 * self.statements() + self.cfg.filler as usize + 3 + 2
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
            SEMI => ";".into(),
            QUERY => "?".into(),
            f if (FILLER0..NUM0).contains(&f) => FILLER_WORDS[(f - FILLER0) as usize].into(),
            n if n >= NUM0 && n < NUM0 + self.cfg.values => (n - NUM0).to_string(),
            n if (n as usize) < self.vocab_size() => format!("X{}", n - NUM0 - self.cfg.values),
            n => format!("<{n}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let c = &self.cfg;
        let (chains, links) = (c.chains as usize, c.hops as usize + 1);
        let n_stmt = self.statements();
        let names = distinct(rng, 0, c.names, n_stmt);
        let chain_values = distinct(rng, 0, c.values, chains);
        let distractor_values: Vec<u32> = (0..c.distractors)
            .map(|_| rng.gen_range(0..c.values))
            .collect();
        // chain_vars[k] = names of chain k in order; distractor j uses names[chains*links + j].
        let chain_vars: Vec<&[u32]> = (0..chains)
            .map(|k| &names[k * links..(k + 1) * links])
            .collect();
        // Uniform interleaving: shuffle the multiset of statement labels.
        let mut labels: Vec<usize> = (0..chains)
            .flat_map(|k| (0..links).map(move |_| k))
            .chain((0..c.distractors as usize).map(|j| chains + j))
            .collect();
        shuffle(rng, &mut labels);
        // Filler: each word goes to gap g in 0..=n_stmt (gap g precedes statement g).
        let mut gaps: Vec<Vec<u32>> = vec![Vec::new(); n_stmt + 1];
        for _ in 0..c.filler {
            let g = rng.gen_range(0..=n_stmt);
            let w = rng.gen_range(0..FILLER_WORDS.len() as u32);
            gaps[g].push(FILLER0 + w);
        }
        let q = rng.gen_range(0..chains);

        let mut tokens = Vec::with_capacity(self.max_len());
        let mut next_link = vec![0usize; chains];
        for (g, &l) in labels.iter().enumerate() {
            tokens.extend_from_slice(&gaps[g]);
            if l < chains {
                let j = next_link[l];
                next_link[l] += 1;
                tokens.push(self.name_id(chain_vars[l][j]));
                tokens.push(EQ);
                tokens.push(if j == 0 {
                    self.value_id(chain_values[l])
                } else {
                    self.name_id(chain_vars[l][j - 1])
                });
            } else {
                let d = l - chains;
                tokens.push(self.name_id(names[chains * links + d]));
                tokens.push(EQ);
                tokens.push(self.value_id(distractor_values[d]));
            }
            tokens.push(SEMI);
        }
        tokens.extend_from_slice(&gaps[n_stmt]);
        let query = chain_vars[q][links - 1];
        tokens.extend_from_slice(&[QUERY, self.name_id(query), EQ]);
        let prompt_len = tokens.len();
        tokens.push(self.value_id(chain_values[q]));
        tokens.push(EOS);
        debug_assert_eq!(tokens.len(), self.max_len());
        let targets = crate::answer_targets(&tokens, prompt_len);

        let name_str = |i: u32| self.token_str(self.name_id(i));
        let mut meta = Map::new();
        meta.insert("hops".into(), json!(c.hops));
        meta.insert("chains".into(), json!(c.chains));
        meta.insert("distractors".into(), json!(c.distractors));
        meta.insert("filler".into(), json!(c.filler));
        meta.insert(
            "chain_vars".into(),
            json!(chain_vars
                .iter()
                .map(|v| v.iter().map(|&i| name_str(i)).collect::<Vec<_>>())
                .collect::<Vec<_>>()),
        );
        meta.insert("chain_values".into(), json!(chain_values));
        meta.insert("query_chain".into(), json!(q));
        meta.insert("query".into(), json!(name_str(query)));
        meta.insert("value".into(), json!(chain_values[q]));
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
        crate::until_eos(generated, EOS) == [self.value_id(v as u32)]
    }
    fn chance(&self) -> f64 {
        1.0 / self.cfg.values as f64
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
    use std::collections::HashMap;

    /// Independent resolver over the rendered prompt text: parse `NAME = RHS ;` statements
    /// (ignoring any other word), then follow the query variable until a number is reached.
    /// Returns (value, number of links followed).
    fn resolve(text: &str) -> (u32, u32) {
        let words: Vec<&str> = text.split(' ').collect();
        let q = words.iter().rposition(|&w| w == "?").unwrap();
        assert_eq!(words.len(), q + 3, "prompt ends with `? X =`: {text}");
        assert_eq!(words[q + 2], "=");
        let mut assign: HashMap<&str, &str> = HashMap::new();
        for i in 0..q {
            if words[i] == "=" {
                assert_eq!(words[i + 2], ";", "{text}");
                let lhs = words[i - 1];
                assert!(lhs.starts_with('X'));
                assert!(
                    assign.insert(lhs, words[i + 1]).is_none(),
                    "{lhs} assigned twice"
                );
            }
        }
        let mut cur = words[q + 1];
        let mut links = 0;
        loop {
            let rhs = assign[cur];
            if let Ok(v) = rhs.parse::<u32>() {
                return (v, links);
            }
            cur = rhs;
            links += 1;
        }
    }

    #[test]
    fn independent_resolver_agrees() {
        let cases = [
            ("hops1", sets(&[])),
            ("hops2", sets(&[])),
            ("hops4", sets(&[("chains", "4"), ("filler", "40")])),
            ("hops8", sets(&[("distractors", "0"), ("filler", "0")])),
            (
                "hops8",
                sets(&[("chains", "1"), ("values", "2"), ("names", "11")]),
            ),
        ];
        for (lvl, s) in cases {
            let t = build(NAME, Some(lvl), &s).unwrap();
            let cfg: VartrackConfig = serde_json::from_value(t.config()).unwrap();
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert_eq!(ex.tokens.len(), t.max_len(), "length is exact");
                assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()));
                let text = t.render(ex.prompt());
                let (v, links) = resolve(&text);
                assert_eq!(links, cfg.hops, "{text}");
                assert_eq!(json!(v), ex.meta["value"], "{text}");
                assert_eq!(t.render(ex.answer()), format!("{v} <eos>"));
                // Re-derive from meta alone: the queried chain's last variable and value.
                let q = ex.meta["query_chain"].as_u64().unwrap() as usize;
                let chain = ex.meta["chain_vars"][q].as_array().unwrap();
                assert_eq!(chain.len() as u32, cfg.hops + 1);
                assert_eq!(chain.last().unwrap(), &ex.meta["query"]);
                assert_eq!(ex.meta["chain_values"][q], ex.meta["value"]);
                // Every chain in meta resolves to its value in the text, and values are distinct.
                let mut vals = Vec::new();
                for (k, ch) in ex.meta["chain_vars"].as_array().unwrap().iter().enumerate() {
                    let last = ch.as_array().unwrap().last().unwrap().as_str().unwrap();
                    let p = text.rfind(" ? ").unwrap();
                    let (vk, lk) = resolve(&format!("{} ? {last} =", &text[..p]));
                    assert_eq!(lk, cfg.hops);
                    assert_eq!(json!(vk), ex.meta["chain_values"][k]);
                    vals.push(vk);
                }
                vals.sort();
                vals.dedup();
                assert_eq!(vals.len() as u32, cfg.chains);
                let words = text.split(' ').filter(|w| FILLER_WORDS.contains(w)).count();
                assert_eq!(words as u32, cfg.filler);
                let stmts = text.split(' ').filter(|&w| w == ";").count();
                assert_eq!(stmts as u32, cfg.chains * (cfg.hops + 1) + cfg.distractors);
                assert_eq!(ex.targets.len(), 2);
                assert!(ex
                    .targets
                    .iter()
                    .all(|&(p, tok)| ex.tokens[p as usize + 1] == tok));
                assert_eq!(ex.targets[0].0 as usize, ex.prompt_len - 1);
            }
        }
    }

    #[test]
    fn interleaving_and_query_are_not_degenerate() {
        // The queried chain is uniform, and statements of different chains do interleave.
        let t = build(NAME, Some("hops2"), &[]).unwrap();
        let mut first_chain_first = 0;
        let mut q0 = 0;
        let n = 400;
        for i in 0..n {
            let ex = generate(t.as_ref(), Split::Train, i);
            q0 += (ex.meta["query_chain"] == json!(0)) as usize;
            let text = t.render(ex.prompt());
            let pos = |v: &Value| text.find(&format!("{} =", v.as_str().unwrap())).unwrap();
            let c0 = &ex.meta["chain_vars"][0];
            let c1 = &ex.meta["chain_vars"][1];
            first_chain_first += (pos(&c0[2]) < pos(&c1[0])) as usize;
        }
        assert!((150..250).contains(&q0), "query chain 0 in {q0}/{n}");
        // P(all of chain 0 before chain 1 starts) for 3+3 statements is 1/20.
        assert!(first_chain_first < 60, "{first_chain_first}");
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for lvl in ["hops1", "hops2", "hops4", "hops8"] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Test, i);
                let ans = ex.answer().to_vec();
                assert!(t.score(&ex, &ans));
                assert!(t.score(&ex, &ans[..1]), "EOS optional");
                let mut trailing = ans.clone();
                trailing.push(SEMI);
                assert!(t.score(&ex, &trailing), "text after EOS is ignored");
                let mut bad = ans.clone();
                let v = bad[0] - NUM0;
                bad[0] = NUM0 + (v + rng.gen_range(1..100)) % 100;
                assert!(!t.score(&ex, &bad));
                assert!(!t.score(&ex, &[ans[0], ans[0], EOS]));
                assert!(!t.score(&ex, &[EOS]));
                assert!(!t.score(&ex, &[]));
                // The query variable's name is not its value.
                assert!(!t.score(&ex, &[ex.tokens[ex.prompt_len - 2], EOS]));
            }
        }
    }

    #[test]
    fn range_validation() {
        assert_rejected(
            NAME,
            None,
            &[
                ("hops", "0", "hops"),
                ("hops", "65", "hops"),
                ("chains", "0", "chains"),
                ("chains", "33", "chains"),
                ("distractors", "257", "distractors"),
                ("filler", "5000", "filler"),
                ("values", "1", "values"),
                ("names", "1", "names"),
            ],
        );
        let e = rejection(NAME, Some("hops8"), &[("chains", "8")]);
        assert!(e.contains("chains*(hops+1)+distractors = 74"), "{e}");
        let e = rejection(NAME, None, &[("chains", "3"), ("values", "2")]);
        assert!(e.contains("distinct"), "{e}");
        let e = Vartrack::from_json(
            json!({"hops": 2, "chains": 2, "distractors": 2, "filler": 8,
            "values": 100, "names": 64, "noise": 1}),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("unknown field `noise`"), "{e}");
    }

    #[test]
    fn config_roundtrip_and_rendering() {
        let t = build(NAME, None, &[]).unwrap();
        assert_eq!(t.config(), info().defaults);
        assert_eq!(t.vocab_size(), 13 + 100 + 64);
        assert_eq!(t.max_len(), 4 * 8 + 8 + 5);
        assert_eq!(
            t.render(&[EQ, SEMI, QUERY, FILLER0 + 3, NUM0 + 57, NUM0 + 100 + 7]),
            "= ; ? green 57 X7"
        );
        assert!((t.chance() - 0.01).abs() < 1e-15);
        assert_eq!(t.metric(), Metric::Generate);
    }
}
