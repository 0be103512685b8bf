//! # reachability — is t reachable from s in a directed graph? (a depth probe)
//!
//! Graph reachability is the search problem that "Reasoning by Superposition" / continuous
//! chain-of-thought studies: a plain transformer needs depth that grows with the path length.
//!
//! ```text
//! n3>n7 n1>n2 n7>n5 n0>n3 n2>n6 ? n0 n5 yes <eos>
//! └──────── edges, shuffled ────────┘ └ query ┘ └ answer ┘
//! ```
//!
//! * Every example holds two disjoint chains of `d` edges on distinct nodes, `d` uniform over
//!   `min_dist ..= max_dist`: A = a_0 → … → a_d and B = b_0 → … → b_d. The source is s = a_0 in
//!   both cases; the label is a fair coin: **yes** puts the target at t = a_d (the shortest path
//!   is exactly `d` edges), **no** at t = b_d (the other chain's end). So in both cases s has an
//!   outgoing edge and t an incoming one, t ends a chain of `d` edges and s starts one: no count
//!   of degrees, edges or nodes decides the answer; the model has to follow the edges.
//! * Then up to `extra_edges` noise edges, each a uniform pair of distinct nodes not already an
//!   edge, kept only if the answer and the shortest-path length stay what they were (a candidate
//!   that would add a path from s to t in a no case, or shorten the path in a yes case, is
//!   skipped); at most 50 candidates per wanted edge.
//! * Node roles come from a uniform draw of `2(d + 1)` of the `nodes` names, so names carry
//!   nothing; the edges are shuffled.
//! * Levels by shortest-path length and graph size: `d1`, `d2`, `d3`, `d4` (16 nodes, 8 noise
//!   edges), `d6` (24 nodes, 12), `n32` (32 nodes, 24 noise edges, d 2–4).
//!
//! **Sequence and metric.** Prompt `u > v …  ? s t` (rendered `u>v` without spaces), answer
//! `yes <eos>` or `no <eos>`; generation, scored on the answer word before `<eos>`. `meta` holds
//! `reachable`, `dist` (the chains' length d: the shortest path in a yes case), `source`,
//! `target` and `edges` (the number of edges).
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 >`, `3 ?`, `4 yes`, `5 no`, then `nodes` names `n0 …`.

use crate::draw::{distinct_by_shuffle, shuffle};
use crate::knobs::{check, parse_config, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "reachability";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const ARROW: u32 = 2;
pub const QUERY: u32 = 3;
pub const YES: u32 = 4;
pub const NO: u32 = 5;
/// Id of node `n0`.
pub const NODE0: u32 = 6;
/// Noise-edge candidates drawn per wanted noise edge, at most.
const TRIES_PER_EDGE: u32 = 50;

/// reachability configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachabilityConfig {
    /// Node names. Default 16. Range 4 ..= 256, and at least 2·(max_dist + 1).
    pub nodes: u32,
    /// Noise edges wanted beyond the two chains. Default 8. Range 0 ..= nodes.
    pub extra_edges: u32,
    /// Shortest chain length. Default 2. Range 1 ..= max_dist.
    pub min_dist: u32,
    /// Longest chain length. Default 2. Range min_dist ..= 64.
    pub max_dist: u32,
}

impl Default for ReachabilityConfig {
    fn default() -> Self {
        ReachabilityConfig {
            nodes: 16,
            extra_edges: 8,
            min_dist: 2,
            max_dist: 2,
        }
    }
}

pub fn info() -> TaskInfo {
    let level = |nodes: u32, extra: u32, lo: u32, hi: u32| json!({"nodes": nodes, "extra_edges": extra, "min_dist": lo, "max_dist": hi});
    TaskInfo {
        name: NAME,
        about: "graph reachability: given directed edges u>v, is t reachable from s?",
        defaults: to_config_value(&ReachabilityConfig::default()),
        levels: vec![
            ("d1", level(16, 8, 1, 1)),
            ("d2", level(16, 8, 2, 2)),
            ("d3", level(16, 8, 3, 3)),
            ("d4", level(16, 8, 4, 4)),
            ("d6", level(24, 12, 6, 6)),
            ("n32", level(32, 24, 2, 4)),
        ],
        default_level: "d2",
        generalization: Some(crate::Generalization {
            axis: "distance",
            train: "d2",
            ood: &["d3", "d4"], // d6 needs more nodes: another vocabulary
        }),
    }
}

/// Shortest-path lengths (in edges) from `s` over `edges` among `n` nodes (`None`: unreachable).
pub fn distances(n: usize, edges: &[(u32, u32)], s: u32) -> Vec<Option<u32>> {
    let mut dist = vec![None; n];
    dist[s as usize] = Some(0);
    let mut frontier = vec![s];
    let mut d = 0;
    while !frontier.is_empty() {
        d += 1;
        let mut next = Vec::new();
        for &(u, v) in edges {
            if frontier.contains(&u) && dist[v as usize].is_none() {
                dist[v as usize] = Some(d);
                next.push(v);
            }
        }
        frontier = next;
    }
    dist
}

pub struct Reachability {
    cfg: ReachabilityConfig,
}

impl Reachability {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        Self::new(parse_config(NAME, cfg)?)
    }

    pub fn new(c: ReachabilityConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("nodes", c.nodes, 4..=256)?;
        k.int_in("extra_edges", c.extra_edges, "0..=nodes", 0..=c.nodes)?;
        k.int("max_dist", c.max_dist, 1..=64)?;
        k.int_in("min_dist", c.min_dist, "1..=max_dist", 1..=c.max_dist)?;
        check(NAME, 2 * (c.max_dist + 1) <= c.nodes, || {
            format!(
                "nodes = {} cannot hold two chains of max_dist = {} edges (needs {})",
                c.nodes,
                c.max_dist,
                2 * (c.max_dist + 1)
            )
        })?;
        Ok(Reachability { cfg: c })
    }

    fn node_id(&self, v: u32) -> u32 {
        NODE0 + v
    }
}

impl Task for Reachability {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (NODE0 + self.cfg.nodes) as usize
    }
    fn max_len(&self) -> usize {
        let edges = 2 * self.cfg.max_dist + self.cfg.extra_edges;
        3 * edges as usize + 3 + 2
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
            ARROW => ">".into(),
            QUERY => "?".into(),
            YES => "yes".into(),
            NO => "no".into(),
            i if (NODE0..NODE0 + self.cfg.nodes).contains(&i) => format!("n{}", i - NODE0),
            i => format!("<{i}?>"),
        }
    }
    /// Space-separated, except that an edge `u > v` is written `u>v`.
    fn render(&self, tokens: &[u32]) -> String {
        let mut s = String::new();
        for (i, &t) in tokens.iter().enumerate() {
            let glued = t == ARROW || (i > 0 && tokens[i - 1] == ARROW);
            if i > 0 && !glued {
                s.push(' ');
            }
            s.push_str(&self.token_str(t));
        }
        s
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let n = self.cfg.nodes;
        let d = rng.gen_range(self.cfg.min_dist..=self.cfg.max_dist) as usize;
        let reachable = rng.gen_range(0..2u32) == 1;
        let roles = distinct_by_shuffle(rng, 0, n, 2 * (d + 1));
        let (a, b) = roles.split_at(d + 1);
        let mut edges: Vec<(u32, u32)> = a
            .windows(2)
            .chain(b.windows(2))
            .map(|w| (w[0], w[1]))
            .collect();
        let (s, t) = (a[0], if reachable { a[d] } else { b[d] });
        let want = reachable.then_some(d as u32);
        let mut added = 0;
        for _ in 0..self.cfg.extra_edges * TRIES_PER_EDGE {
            if added == self.cfg.extra_edges {
                break;
            }
            let u = rng.gen_range(0..n);
            let v = rng.gen_range(0..n - 1);
            let v = if v >= u { v + 1 } else { v };
            if edges.contains(&(u, v)) {
                continue;
            }
            edges.push((u, v));
            if distances(n as usize, &edges, s)[t as usize] == want {
                added += 1;
            } else {
                edges.pop();
            }
        }
        shuffle(rng, &mut edges);
        let mut tokens = Vec::with_capacity(self.max_len());
        for &(u, v) in &edges {
            tokens.extend([self.node_id(u), ARROW, self.node_id(v)]);
        }
        tokens.extend([QUERY, self.node_id(s), self.node_id(t)]);
        let prompt_len = tokens.len();
        tokens.extend([if reachable { YES } else { NO }, EOS]);
        let mut meta = Map::new();
        meta.insert("reachable".into(), json!(reachable));
        meta.insert("dist".into(), json!(d));
        meta.insert("source".into(), json!(format!("n{s}")));
        meta.insert("target".into(), json!(format!("n{t}")));
        meta.insert("edges".into(), json!(edges.len()));
        Sample {
            targets: crate::answer_targets(&tokens, prompt_len),
            tokens,
            prompt_len,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        let Some(r) = ex.meta.get("reachable").and_then(Value::as_bool) else {
            return false;
        };
        crate::until_eos(generated, EOS) == [if r { YES } else { NO }]
    }
    fn chance(&self) -> f64 {
        0.5
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
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    /// From the rendered prompt alone (`u>v … ? s t`): whether t is reachable from s, the
    /// shortest path length, s's out-degree and t's in-degree — by an independent BFS over names.
    fn rederive(prompt: &str) -> (bool, Option<usize>, usize, usize) {
        let w: Vec<&str> = prompt.split(' ').collect();
        let n = w.len();
        assert_eq!(w[n - 3], "?", "{prompt}");
        let (s, t) = (w[n - 2], w[n - 1]);
        let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let (mut out_s, mut in_t) = (0, 0);
        for e in &w[..n - 3] {
            let (u, v) = e.split_once('>').unwrap();
            adj.entry(u).or_default().push(v);
            out_s += (u == s) as usize;
            in_t += (v == t) as usize;
        }
        let mut seen = BTreeMap::from([(s, 0usize)]);
        let mut q = VecDeque::from([s]);
        while let Some(u) = q.pop_front() {
            for &v in adj.get(u).map(Vec::as_slice).unwrap_or(&[]) {
                if !seen.contains_key(v) {
                    seen.insert(v, seen[u] + 1);
                    q.push_back(v);
                }
            }
        }
        (seen.contains_key(t), seen.get(t).copied(), out_s, in_t)
    }

    #[test]
    fn answers_rederive_and_no_degree_decides_them() {
        for lvl in ["d1", "d2", "d3", "d4", "d6", "n32"] {
            let t = build(NAME, Some(lvl), &[]).unwrap();
            let cfg: ReachabilityConfig = serde_json::from_value(t.config()).unwrap();
            let mut yes = 0;
            let mut dists = BTreeSet::new();
            let mut full = 0;
            for ex in generate_range(t.as_ref(), Split::Train, 0, 400) {
                let (r, dist, out_s, in_t) = rederive(&t.render(ex.prompt()));
                let word = if r { "yes" } else { "no" };
                assert_eq!(t.render(ex.answer()), format!("{word} <eos>"), "{lvl}");
                assert!(
                    out_s >= 1 && in_t >= 1,
                    "{lvl}: a degree decides the answer"
                );
                if r {
                    yes += 1;
                    let d = dist.unwrap() as u32;
                    assert!((cfg.min_dist..=cfg.max_dist).contains(&d), "{lvl}: {d}");
                    assert_eq!(ex.meta["dist"], d);
                    dists.insert(d);
                }
                let edges = ex.meta["edges"].as_u64().unwrap() as u32;
                full += (edges == 2 * ex.meta["dist"].as_u64().unwrap() as u32 + cfg.extra_edges)
                    as u32;
            }
            assert!((160..=240).contains(&yes), "{lvl}: {yes} of 400 yes");
            assert_eq!(dists.len() as u32, cfg.max_dist - cfg.min_dist + 1, "{lvl}");
            assert!(
                full >= 390,
                "{lvl}: only {full} of 400 got every noise edge"
            );
        }
    }

    #[test]
    fn rendering_glues_edges() {
        let t = build(NAME, None, &[]).unwrap();
        let ex = crate::generate(t.as_ref(), Split::Test, 0);
        let text = t.render(ex.prompt());
        assert!(
            text.split(' ').rev().nth(3).unwrap().contains('>'),
            "{text}"
        );
        assert!(!text.contains(" > "), "{text}");
    }

    #[test]
    fn knobs_are_range_checked() {
        assert_rejected(
            NAME,
            None,
            &[
                ("nodes", "3", "nodes"),
                ("extra_edges", "17", "extra_edges"),
                ("max_dist", "65", "max_dist"),
                ("min_dist", "0", "min_dist"),
            ],
        );
        let e = rejection(NAME, None, &[("max_dist", "8")]);
        assert!(e.contains("two chains"), "{e}");
    }
}
