//! prosqa — ProsQA-style search over a DAG, following Coconut (Hao et al. 2024).
//!
//! Coconut released ProsQA's data but no generator; this module is our own generator, calibrated
//! against the released items (see `docs/prosqa.md` for the measured real-vs-generated table and
//! `bench/prosqa_stats.py` for the script that computes it).
//!
//! # The graph
//! Nodes are numbered topologically while the graph grows (the numbering is internal: names and
//! fact order are shuffled, so nothing in an example reveals it). Nodes 0 and 1 are persons; every
//! later node is either an extra person (rare, early, one child) or a concept with 1–6 parents drawn
//! from earlier nodes, preferring deeper ones. Each concept draws its parents from person 0's side
//! only, person 1's side only, or anywhere, so the graph is mostly two interleaved DAGs with a few
//! cross links, as in the released data.
//!
//! One of persons 0/1 is the root. The **answer** is a sink reachable from the root and not from
//! the other person, at the greatest BFS depth among such sinks; `hops` is that depth. The
//! **distractor** is a sink reachable from the other person and never from the root, usually one of
//! the deepest on its side. Both candidates are therefore sinks, each reachable from persons of its
//! own side only, and the question lists them in random order.
//!
//! # Renderings (word-level vocabulary)
//! Ids: `0 <pad>`, `1 <eos>`, `2 Every`, `3 is`, `4 a`, `5 .`, `6 Is`, `7 or`, `8 ?`, `9 |`,
//! `10 :`, then the person names, then the `-pus` concepts (pool sizes are knobs).
//! * `sentences` — prompt: the facts in random order, `Every A is a B.` / `Name is a B.`, then
//!   `Is Name a X or Y?`. Answer: with `cot`, the BFS shortest path as sentences
//!   (`Name is a A. Every A is a B. … Every Y is a X.`), then always `Name is a X.`, then `<eos>`.
//! * `symbolic` — prompt: the edges as `u v |` in random order, then `? root X Y :`. Answer: with
//!   `cot`, the path `root a b … X`; without, just `X`; then `<eos>`.
//!
//! # Scoring
//! [`Task::score`] cuts the continuation at its first `<eos>` and accepts iff it ends with the
//! reference's final statement: the sentence `Name is a X.` (sentences) or the token `X`
//! (symbolic). Anything before that (CoT steps, even wrong ones) is ignored by `score`;
//! [`Prosqa::path_valid`] checks the steps.
use crate::draw::first_accepted;
use crate::knobs::{parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashSet, VecDeque};

const NAME: &str = "prosqa";

/// Person names (the first 17 are the pool of the released data, a ProntoQA-style name list).
#[rustfmt::skip]
const PERSONS: [&str; 24] = [
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly",
    "Rex", "Sally", "Sam", "Stella", "Tom", "Wren", "Anna", "Ben", "Cleo", "Dan", "Ivy", "Leo",
    "Nina",
];

/// Fictional concepts (the first 38 are the ProntoQA-style `-pus` words of the released data; the
/// rest are ours, for larger pools).
#[rustfmt::skip]
const CONCEPTS: [&str; 64] = [
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus",
    "grimpus", "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus",
    "numpus", "quimpus", "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus",
    "terpus", "timpus", "tumpus", "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus",
    "zhorpus", "zumpus", "blimpus", "dorpus", "flumpus", "glorpus", "harpus", "jumpus", "klompus",
    "lumpus", "mimpus", "norpus", "pelpus", "plimpus", "quorpus", "sampus", "skorpus", "snumpus",
    "talpus", "thimpus", "vorpus", "whelpus", "xumpus", "yompus", "zelpus", "zimpus", "drompus",
    "frumpus",
];

const PAD: u32 = 0;
const EOS: u32 = 1;
const EVERY: u32 = 2;
const IS: u32 = 3;
const A: u32 = 4;
const DOT: u32 = 5;
const IS_Q: u32 = 6;
const OR: u32 = 7;
const QMARK: u32 = 8;
const BAR: u32 = 9;
const COLON: u32 = 10;
const FIRST_NAME: u32 = 11;
const SPECIALS: [&str; 11] = [
    "<pad>", "<eos>", "Every", "is", "a", ".", "Is", "or", "?", "|", ":",
];

// Generator constants, calibrated against the released data (docs/prosqa.md).
/// Success probability of the binomial node count `min_nodes + Bin(max_nodes - min_nodes, p)`.
const NODES_P: f64 = 0.63;
/// Parent-count distribution of a concept node (1..=6 parents), before truncation.
const PARENTS: [f64; 6] = [0.45, 0.31, 0.16, 0.055, 0.02, 0.005];
/// Probability that a concept draws its parents from one side only (each side half of this).
const ONE_SIDE: f64 = 0.8;
/// Parent weight `1 + DEPTH_W * level` (level = longest path from a person).
const DEPTH_W: f64 = 1.5;
/// Extra person at node v with probability `EXTRA_P0 * EXTRA_DECAY^(v-2)`.
const EXTRA_P0: f64 = 0.09;
const EXTRA_DECAY: f64 = 0.85;
/// Per later concept, probability that it takes a pending extra person as a parent.
const EXTRA_ATTACH: f64 = 0.25;
/// Distractor: among the other side's sinks, depth rank 0 (deepest) / 1 / 2+ with these odds.
const DISTRACTOR_RANK: [f64; 3] = [0.7, 0.27, 0.03];
/// Rejection-sampling cap per example (a config whose hop range is infeasible panics here).
const MAX_GRAPH_TRIES: u32 = 1_000_000;

/// How an example is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rendering {
    /// English facts `Every A is a B.` and the question `Is Name a X or Y?`.
    Sentences,
    /// Edge list `u v |` and `? root X Y :` (as in "Reasoning by Superposition").
    Symbolic,
}

/// ProsQA config. Every knob has a default (see [`Default`]) and a validated range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProsqaConfig {
    /// Fewest nodes (persons + concepts) per graph. Default 14, range 6..=64.
    pub min_nodes: usize,
    /// Most nodes per graph. Default 28, range min_nodes..=64.
    pub max_nodes: usize,
    /// Most edges (facts) per graph; larger graphs are redrawn. Default 54, range max_nodes..=4*max_nodes.
    pub max_edges: usize,
    /// Fewest BFS hops from the root to the answer. Default 3, range 1..=max_hops.
    pub min_hops: usize,
    /// Most BFS hops. Default 6, range min_hops..=8 and at most max_nodes - 6.
    pub max_hops: usize,
    /// `sentences` (default) or `symbolic`.
    pub rendering: Rendering,
    /// Put the shortest path (CoT steps) before the final answer. Default false.
    pub cot: bool,
    /// Number of person names in use. Default 17 (the released pool), range 4..=24.
    pub person_pool: usize,
    /// Number of concept names in use. Default 38 (the released pool), range max_nodes-2..=64.
    pub concept_pool: usize,
}

impl Default for ProsqaConfig {
    fn default() -> Self {
        ProsqaConfig {
            min_nodes: 14,
            max_nodes: 28,
            max_edges: 54,
            min_hops: 3,
            max_hops: 6,
            rendering: Rendering::Sentences,
            cot: false,
            person_pool: 17,
            concept_pool: 38,
        }
    }
}

pub fn info() -> TaskInfo {
    let hops = pinned(
        &["min_hops", "max_hops"],
        &[("hops3", 3), ("hops4", 4), ("hops5", 5), ("hops6", 6)],
    );
    TaskInfo {
        name: NAME,
        about: "ProsQA (Coconut): is <person> a <X> or <Y>? — exactly one is reachable in a DAG of facts",
        defaults: to_config_value(&ProsqaConfig::default()),
        levels: [vec![("mixed", json!({}))], hops].concat(),
        default_level: "mixed",
        generalization: Some(crate::Generalization {
            axis: "hops",
            train: "hops3",
            ood: &["hops4", "hops5", "hops6"],
        }),
    }
}

/// The ProsQA task.
pub struct Prosqa {
    cfg: ProsqaConfig,
}

impl Prosqa {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: ProsqaConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: ProsqaConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.int("min_nodes", c.min_nodes, 6..=64)?;
        k.int_in("max_nodes", c.max_nodes, "min_nodes..=64", c.min_nodes..=64)?;
        k.int_in(
            "max_edges",
            c.max_edges,
            "max_nodes..=4*max_nodes",
            c.max_nodes..=4 * c.max_nodes,
        )?;
        k.int_in("min_hops", c.min_hops, "1..=max_hops", 1..=c.max_hops)?;
        k.int_in(
            "max_hops",
            c.max_hops,
            "min_hops..=min(8, max_nodes-6)",
            c.min_hops..=8.min(c.max_nodes - 6),
        )?;
        k.int("person_pool", c.person_pool, 4..=PERSONS.len())?;
        k.int_in(
            "concept_pool",
            c.concept_pool,
            "max_nodes-2..=64",
            c.max_nodes - 2..=CONCEPTS.len(),
        )?;
        Ok(Prosqa { cfg: c })
    }

    pub fn cfg(&self) -> &ProsqaConfig {
        &self.cfg
    }

    fn person_tok(&self, i: usize) -> u32 {
        FIRST_NAME + i as u32
    }
    fn concept_tok(&self, i: usize) -> u32 {
        FIRST_NAME + (self.cfg.person_pool + i) as u32
    }

    /// Draw one graph with its question (rejection sampling until the hop count is in range).
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> Item {
        first_accepted(MAX_GRAPH_TRIES, || self.try_draw(rng)).unwrap_or_else(|| {
            panic!(
                "prosqa: no graph with {}..={} hops in {MAX_GRAPH_TRIES} tries",
                self.cfg.min_hops, self.cfg.max_hops
            )
        })
    }

    fn try_draw(&self, rng: &mut ChaCha8Rng) -> Option<Item> {
        let c = &self.cfg;
        let span = c.max_nodes - c.min_nodes;
        let n = c.min_nodes + (0..span).filter(|_| rng.gen_bool(NODES_P)).count();
        let g = grow(n, c.person_pool, rng);
        if g.edges.len() > c.max_edges {
            return None;
        }
        let d0 = bfs(&g.children, 0);
        let d1 = bfs(&g.children, 1);
        let sink = |v: usize| g.children[v].is_empty() && !g.person[v];
        // Each person's exclusive sinks and the deepest of them; the root is the person whose
        // exclusive sinks reach deeper (ties at random), as in the released data, where the
        // distractor's side is never deeper than the answer.
        let only = |a: &[Option<usize>], b: &[Option<usize>]| -> Vec<usize> {
            (0..n)
                .filter(|&v| sink(v) && a[v].is_some() && b[v].is_none())
                .collect()
        };
        let (only0, only1) = (only(&d0, &d1), only(&d1, &d0));
        let deepest0 = only0.iter().map(|&v| d0[v].unwrap()).max()?;
        let deepest1 = only1.iter().map(|&v| d1[v].unwrap()).max()?;
        let root = match deepest0.cmp(&deepest1) {
            std::cmp::Ordering::Greater => 0,
            std::cmp::Ordering::Less => 1,
            std::cmp::Ordering::Equal => rng.gen_range(0..2usize),
        };
        let (dr, dother, root_only, other_only) = if root == 0 {
            (d0, d1, only0, only1)
        } else {
            (d1, d0, only1, only0)
        };
        // Answer: the deepest root-only sink (ties broken at random).
        let hops = deepest0.max(deepest1);
        if hops < c.min_hops || hops > c.max_hops {
            return None;
        }
        let deepest: Vec<usize> = root_only
            .iter()
            .copied()
            .filter(|&v| dr[v] == Some(hops))
            .collect();
        let answer = *deepest.choose(rng)?;
        // Distractor: a sink of the other side, never reachable from the root, usually deep.
        let mut levels: Vec<usize> = other_only.iter().map(|&v| dother[v].unwrap()).collect();
        levels.sort_unstable_by(|a, b| b.cmp(a));
        levels.dedup();
        if levels.is_empty() {
            return None;
        }
        let u: f64 = rng.gen();
        let rank = if u < DISTRACTOR_RANK[0] {
            0
        } else if u < DISTRACTOR_RANK[0] + DISTRACTOR_RANK[1] {
            1
        } else {
            2
        };
        let level = levels[rank.min(levels.len() - 1)];
        let at: Vec<usize> = other_only
            .iter()
            .copied()
            .filter(|&v| dother[v] == Some(level))
            .collect();
        let distractor = *at.choose(rng)?;
        // Names.
        let mut pnames: Vec<usize> = (0..c.person_pool).collect();
        let mut cnames: Vec<usize> = (0..c.concept_pool).collect();
        pnames.shuffle(rng);
        cnames.shuffle(rng);
        let (mut pi, mut ci) = (0, 0);
        let mut names = Vec::with_capacity(n);
        for v in 0..n {
            if g.person[v] {
                names.push(self.person_tok(pnames[pi]));
                pi += 1;
            } else {
                names.push(self.concept_tok(cnames[ci]));
                ci += 1;
            }
        }
        let path = shortest_path(&g.children, root, answer);
        let mut order: Vec<usize> = (0..g.edges.len()).collect();
        order.shuffle(rng);
        let answer_first = rng.gen_bool(0.5);
        Some(Item {
            n,
            edges: g.edges,
            person: g.person,
            names,
            root,
            answer,
            distractor,
            hops,
            path,
            order,
            answer_first,
            distractor_depth: level,
        })
    }

    /// Tokens of an item: (prompt, answer incl. EOS).
    fn encode(&self, it: &Item) -> (Vec<u32>, Vec<u32>) {
        let nm = |v: usize| it.names[v];
        let (x, y) = if it.answer_first {
            (it.answer, it.distractor)
        } else {
            (it.distractor, it.answer)
        };
        let mut p = Vec::new();
        let mut a = Vec::new();
        match self.cfg.rendering {
            Rendering::Sentences => {
                for &e in &it.order {
                    let (u, v) = it.edges[e];
                    if it.person[u] {
                        p.extend([nm(u), IS, A, nm(v), DOT]);
                    } else {
                        p.extend([EVERY, nm(u), IS, A, nm(v), DOT]);
                    }
                }
                p.extend([IS_Q, nm(it.root), A, nm(x), OR, nm(y), QMARK]);
                if self.cfg.cot {
                    a.extend([nm(it.root), IS, A, nm(it.path[1]), DOT]);
                    for w in it.path[1..].windows(2) {
                        a.extend([EVERY, nm(w[0]), IS, A, nm(w[1]), DOT]);
                    }
                }
                a.extend([nm(it.root), IS, A, nm(it.answer), DOT]);
            }
            Rendering::Symbolic => {
                for &e in &it.order {
                    let (u, v) = it.edges[e];
                    p.extend([nm(u), nm(v), BAR]);
                }
                p.extend([QMARK, nm(it.root), nm(x), nm(y), COLON]);
                if self.cfg.cot {
                    a.extend(it.path.iter().map(|&v| nm(v)));
                } else {
                    a.push(nm(it.answer));
                }
            }
        }
        a.push(EOS);
        (p, a)
    }

    /// Length of the final statement that [`Task::score`] compares.
    fn final_len(&self) -> usize {
        match self.cfg.rendering {
            Rendering::Sentences => 5,
            Rendering::Symbolic => 1,
        }
    }

    /// Facts stated in a prompt, as `(from, to)` token pairs, and the question's root token.
    fn parse_prompt(&self, prompt: &[u32]) -> (HashSet<(u32, u32)>, Option<u32>) {
        let mut edges = HashSet::new();
        let mut i = 0;
        match self.cfg.rendering {
            Rendering::Sentences => {
                while i < prompt.len() {
                    match prompt[i..] {
                        [EVERY, u, IS, A, v, DOT, ..] => {
                            edges.insert((u, v));
                            i += 6;
                        }
                        [IS_Q, r, ..] => return (edges, Some(r)),
                        [u, IS, A, v, DOT, ..] => {
                            edges.insert((u, v));
                            i += 5;
                        }
                        _ => break,
                    }
                }
            }
            Rendering::Symbolic => {
                while i < prompt.len() {
                    match prompt[i..] {
                        [QMARK, r, ..] => return (edges, Some(r)),
                        [u, v, BAR, ..] => {
                            edges.insert((u, v));
                            i += 3;
                        }
                        _ => break,
                    }
                }
            }
        }
        (edges, None)
    }

    /// Whether a CoT continuation's steps form a valid path: starting at the question's person,
    /// each step a fact stated in the prompt, ending at the correct answer, followed by the final
    /// statement (`Name is a X.` for sentences). Any path length is accepted (not only the
    /// shortest). The continuation is cut at its first `<eos>`. Always false when `cot` is off.
    pub fn path_valid(&self, ex: &Example, generated: &[u32]) -> bool {
        if !self.cfg.cot {
            return false;
        }
        let gen = crate::until_eos(generated, EOS);
        let (edges, root) = self.parse_prompt(ex.prompt());
        let Some(root) = root else { return false };
        let reference = crate::until_eos(ex.answer(), EOS);
        let answer = reference[reference.len() - 2 + (self.final_len() == 1) as usize];
        let mut nodes = Vec::new();
        match self.cfg.rendering {
            Rendering::Sentences => {
                let mut s = gen;
                match *s {
                    [r, IS, A, v, DOT, ref rest @ ..] if r == root => {
                        nodes.extend([r, v]);
                        s = rest;
                    }
                    _ => return false,
                }
                while let [EVERY, u, IS, A, v, DOT, ref rest @ ..] = *s {
                    if Some(&u) != nodes.last() {
                        return false;
                    }
                    nodes.push(v);
                    s = rest;
                }
                if s != [root, IS, A, answer, DOT] {
                    return false;
                }
            }
            Rendering::Symbolic => nodes.extend_from_slice(gen),
        }
        nodes.len() >= 2
            && nodes[0] == root
            && *nodes.last().unwrap() == answer
            && nodes.windows(2).all(|w| edges.contains(&(w[0], w[1])))
    }
}

/// One drawn graph and question (internal numbering is topological: every edge goes low → high).
#[derive(Clone, Debug)]
pub struct Item {
    pub n: usize,
    pub edges: Vec<(usize, usize)>,
    pub person: Vec<bool>,
    /// Token id of each node's name.
    pub names: Vec<u32>,
    pub root: usize,
    pub answer: usize,
    pub distractor: usize,
    pub hops: usize,
    /// A BFS shortest path root → answer (nodes, `hops + 1` of them).
    pub path: Vec<usize>,
    /// Order of the facts in the prompt (indices into `edges`).
    pub order: Vec<usize>,
    pub answer_first: bool,
    /// BFS depth of the distractor from the other person.
    pub distractor_depth: usize,
}

struct Graph {
    edges: Vec<(usize, usize)>,
    children: Vec<Vec<usize>>,
    person: Vec<bool>,
}

/// Grow a DAG of `n` nodes in topological order (see the module docs).
fn grow(n: usize, person_pool: usize, rng: &mut ChaCha8Rng) -> Graph {
    let mut children = vec![Vec::new(); n];
    let mut edges = Vec::new();
    let mut person = vec![false; n];
    // side bit 1: reachable from person 0, bit 2: from person 1.
    let mut side = vec![0u8; n];
    let mut level = vec![0usize; n];
    person[0] = true;
    person[1] = true;
    side[0] = 1;
    side[1] = 2;
    let mut persons = 2;
    let mut pending: Vec<usize> = Vec::new();
    for v in 2..n {
        let last = v == n - 1;
        let p_extra = EXTRA_P0 * EXTRA_DECAY.powi(v as i32 - 2);
        if !last && persons < person_pool && rng.gen_bool(p_extra) {
            person[v] = true;
            persons += 1;
            pending.push(v);
            continue;
        }
        let u: f64 = rng.gen();
        let allowed = |s: u8| -> bool {
            if u < ONE_SIDE / 2.0 {
                s & 2 == 0
            } else if u < ONE_SIDE {
                s & 1 == 0
            } else {
                true
            }
        };
        let mut cand: Vec<usize> = (0..v)
            .filter(|&x| !pending.contains(&x) && allowed(side[x]) && (side[x] != 0 || !person[x]))
            .collect();
        if cand.is_empty() {
            cand = (0..v).filter(|&x| !pending.contains(&x)).collect();
        }
        let r: f64 = rng.gen();
        let mut k = 1;
        let mut acc = 0.0;
        for (i, p) in PARENTS.iter().enumerate() {
            acc += p;
            if r < acc {
                k = i + 1;
                break;
            }
            k = i + 1;
        }
        let k = k.min(cand.len());
        let mut parents = Vec::with_capacity(k + 1);
        for _ in 0..k {
            let w: Vec<f64> = cand
                .iter()
                .map(|&x| 1.0 + DEPTH_W * level[x] as f64)
                .collect();
            let total: f64 = w.iter().sum();
            let mut t = rng.gen::<f64>() * total;
            let mut j = cand.len() - 1;
            for (i, wi) in w.iter().enumerate() {
                if t < *wi {
                    j = i;
                    break;
                }
                t -= wi;
            }
            parents.push(cand.swap_remove(j));
        }
        // Extra persons hang off a later concept (one child each, as in the released data).
        let mut i = 0;
        while i < pending.len() {
            if last || rng.gen_bool(EXTRA_ATTACH) {
                parents.push(pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
        parents.sort_unstable();
        for &p in &parents {
            edges.push((p, v));
            children[p].push(v);
            side[v] |= side[p];
            level[v] = level[v].max(level[p] + 1);
        }
    }
    Graph {
        edges,
        children,
        person,
    }
}

fn bfs(children: &[Vec<usize>], src: usize) -> Vec<Option<usize>> {
    let mut d = vec![None; children.len()];
    d[src] = Some(0);
    let mut q = VecDeque::from([src]);
    while let Some(u) = q.pop_front() {
        for &v in &children[u] {
            if d[v].is_none() {
                d[v] = Some(d[u].unwrap() + 1);
                q.push_back(v);
            }
        }
    }
    d
}

/// A shortest path (BFS, children in edge order) from `src` to `dst`, which must be reachable.
fn shortest_path(children: &[Vec<usize>], src: usize, dst: usize) -> Vec<usize> {
    let mut prev = vec![usize::MAX; children.len()];
    prev[src] = src;
    let mut q = VecDeque::from([src]);
    while let Some(u) = q.pop_front() {
        for &v in &children[u] {
            if prev[v] == usize::MAX {
                prev[v] = u;
                q.push_back(v);
            }
        }
    }
    let mut path = vec![dst];
    while *path.last().unwrap() != src {
        path.push(prev[*path.last().unwrap()]);
    }
    path.reverse();
    path
}

impl Task for Prosqa {
    fn name(&self) -> &'static str {
        NAME
    }

    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }

    fn vocab_size(&self) -> usize {
        FIRST_NAME as usize + self.cfg.person_pool + self.cfg.concept_pool
    }

    fn max_len(&self) -> usize {
        let c = &self.cfg;
        match c.rendering {
            // facts ≤ 6 tokens each, question 7, CoT 5 + 6 per later hop, final 5, EOS.
            Rendering::Sentences => {
                6 * c.max_edges + 7 + if c.cot { 5 + 6 * (c.max_hops - 1) } else { 0 } + 5 + 1
            }
            // 3 per edge, query 5, path (hops + 1) or answer 1, EOS.
            Rendering::Symbolic => 3 * c.max_edges + 5 + if c.cot { c.max_hops + 1 } else { 1 } + 1,
        }
    }

    fn pad_id(&self) -> u32 {
        PAD
    }

    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }

    fn token_str(&self, id: u32) -> String {
        let id = id as usize;
        let p = self.cfg.person_pool;
        if id < SPECIALS.len() {
            SPECIALS[id].to_string()
        } else if id < SPECIALS.len() + p {
            PERSONS[id - SPECIALS.len()].to_string()
        } else if id < self.vocab_size() {
            CONCEPTS[id - SPECIALS.len() - p].to_string()
        } else {
            format!("<unk{id}>")
        }
    }

    /// Words joined by spaces; in `sentences`, `.` and `?` attach to the previous word.
    fn render(&self, tokens: &[u32]) -> String {
        let mut s = String::new();
        for &t in tokens {
            let glue = self.cfg.rendering == Rendering::Sentences && (t == DOT || t == QMARK);
            if !s.is_empty() && !glue {
                s.push(' ');
            }
            s.push_str(&self.token_str(t));
        }
        s
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let it = self.draw(rng);
        let (mut tokens, answer) = self.encode(&it);
        let prompt_len = tokens.len();
        tokens.extend(answer);
        let targets = crate::answer_targets(&tokens, prompt_len);
        let nm = |v: usize| Value::String(self.token_str(it.names[v]));
        let mut meta = Map::new();
        meta.insert("hops".into(), json!(it.hops));
        meta.insert("nodes".into(), json!(it.n));
        meta.insert("edges".into(), json!(it.edges.len()));
        meta.insert(
            "persons".into(),
            json!(it.person.iter().filter(|&&p| p).count()),
        );
        meta.insert("answer_first".into(), json!(it.answer_first));
        meta.insert("root".into(), nm(it.root));
        meta.insert("answer".into(), nm(it.answer));
        meta.insert("distractor".into(), nm(it.distractor));
        meta.insert("distractor_depth".into(), json!(it.distractor_depth));
        Sample {
            tokens,
            prompt_len,
            targets,
            meta,
        }
    }

    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        let gen = crate::until_eos(generated, EOS);
        let reference = crate::until_eos(ex.answer(), EOS);
        let k = self.final_len();
        reference.len() >= k
            && gen.len() >= k
            && gen[gen.len() - k..] == reference[reference.len() - k..]
    }

    fn chance(&self) -> f64 {
        0.5
    }

    fn metric(&self) -> Metric {
        Metric::Generate
    }

    /// The final answer's concept token (its last occurrence in the answer) against the
    /// distractor's: which of the two the model ranks higher where the reference names the
    /// answer, with the reference's own path before it.
    fn choice(&self, ex: &Example) -> Option<crate::Choice> {
        let id = |key: &str| {
            let name = ex.meta.get(key)?.as_str()?;
            (0..self.vocab_size() as u32).find(|&t| self.token_str(t) == name)
        };
        let (right, wrong) = (id("answer")?, id("distractor")?);
        let at = (ex.prompt_len..ex.tokens.len())
            .rev()
            .find(|&i| ex.tokens[i] == right)?;
        Some(crate::Choice {
            position: at as u32 - 1,
            right,
            wrong,
        })
    }

    fn max_new_tokens(&self) -> usize {
        let c = &self.cfg;
        match c.rendering {
            Rendering::Sentences => (if c.cot { 5 + 6 * (c.max_hops - 1) } else { 0 }) + 5 + 1,
            Rendering::Symbolic => (if c.cot { c.max_hops + 1 } else { 1 }) + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::sets;
    use crate::{generate, Split};
    use rand::SeedableRng;

    fn task(s: &[(&str, &str)]) -> Prosqa {
        Prosqa::from_json(crate::resolve_config(&info(), None, &sets(s)).unwrap()).unwrap()
    }

    /// Writes drawn items in the released data's JSON layout for `bench/prosqa_stats.py`:
    /// `PROSQA_DUMP=/tmp/ours.jsonl cargo test -p tasks prosqa_dump -- --ignored`.
    #[test]
    #[ignore]
    fn prosqa_dump() {
        let path = std::env::var("PROSQA_DUMP").unwrap_or("/tmp/prosqa_ours.jsonl".into());
        let n: u64 = std::env::var("PROSQA_DUMP_N")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        let t = task(&[]);
        let mut out = String::new();
        for i in 0..n {
            let mut rng = ChaCha8Rng::seed_from_u64(i);
            let it = t.draw(&mut rng);
            let (p, _) = t.encode(&it);
            let steps: Vec<String> = std::iter::once(format!(
                "{} is a {}.",
                t.token_str(it.names[it.root]),
                t.token_str(it.names[it.path[1]])
            ))
            .chain(it.path[1..].windows(2).map(|w| {
                format!(
                    "Every {} is a {}.",
                    t.token_str(it.names[w[0]]),
                    t.token_str(it.names[w[1]])
                )
            }))
            .collect();
            let j = json!({
                "question": t.render(&p),
                "steps": steps,
                "idx_to_symbol": it.names.iter().map(|&x| t.token_str(x)).collect::<Vec<_>>(),
                "edges": it.edges.iter().map(|&(u, v)| [u, v]).collect::<Vec<_>>(),
                "root": it.root, "target": it.answer, "neg_target": it.distractor,
            });
            out.push_str(&j.to_string());
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap();
    }

    /// All configurations the property tests sweep.
    fn variants() -> Vec<Prosqa> {
        let mut v = Vec::new();
        for r in ["sentences", "symbolic"] {
            for cot in ["false", "true"] {
                v.push(task(&[("rendering", r), ("cot", cot)]));
            }
        }
        v
    }

    /// The graph as stated in the prompt: edges between name tokens, plus the question.
    fn parse(t: &Prosqa, ex: &Example) -> (Vec<(u32, u32)>, u32, u32, u32) {
        let p = ex.prompt();
        let (edges, root) = t.parse_prompt(p);
        let q = match t.cfg.rendering {
            Rendering::Sentences => &p[p.len() - 7..],
            Rendering::Symbolic => &p[p.len() - 5..],
        };
        let (x, y) = match t.cfg.rendering {
            Rendering::Sentences => {
                assert_eq!([q[0], q[2], q[4], q[6]], [IS_Q, A, OR, QMARK]);
                (q[3], q[5])
            }
            Rendering::Symbolic => {
                assert_eq!([q[0], q[4]], [QMARK, COLON]);
                (q[2], q[3])
            }
        };
        let n_facts = match t.cfg.rendering {
            Rendering::Sentences => p.iter().filter(|&&x| x == DOT).count(),
            Rendering::Symbolic => p.iter().filter(|&&x| x == BAR).count(),
        };
        assert_eq!(edges.len(), n_facts, "every fact parses and none repeats");
        (edges.into_iter().collect(), root.unwrap(), x, y)
    }

    fn dist(edges: &[(u32, u32)], src: u32) -> std::collections::HashMap<u32, usize> {
        let mut d = std::collections::HashMap::from([(src, 0usize)]);
        let mut q = VecDeque::from([src]);
        while let Some(u) = q.pop_front() {
            for &(a, b) in edges {
                if a == u && !d.contains_key(&b) {
                    d.insert(b, d[&u] + 1);
                    q.push_back(b);
                }
            }
        }
        d
    }

    fn is_dag(edges: &[(u32, u32)]) -> bool {
        // Kahn's algorithm on the stated facts.
        let nodes: HashSet<u32> = edges.iter().flat_map(|&(a, b)| [a, b]).collect();
        let mut indeg: std::collections::HashMap<u32, usize> =
            nodes.iter().map(|&x| (x, 0)).collect();
        for &(_, b) in edges {
            *indeg.get_mut(&b).unwrap() += 1;
        }
        let mut q: Vec<u32> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&x, _)| x)
            .collect();
        let mut seen = 0;
        while let Some(u) = q.pop() {
            seen += 1;
            for &(a, b) in edges {
                if a == u {
                    let d = indeg.get_mut(&b).unwrap();
                    *d -= 1;
                    if *d == 0 {
                        q.push(b);
                    }
                }
            }
        }
        seen == nodes.len()
    }

    #[test]
    fn structure_holds_over_many_seeds() {
        for t in variants() {
            for i in 0..300 {
                let ex = generate(&t, Split::Train, i);
                assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()));
                assert!(
                    ex.tokens.len() <= t.max_len(),
                    "{} > {}",
                    ex.tokens.len(),
                    t.max_len()
                );
                assert!(ex.answer().len() <= t.max_new_tokens());
                assert_eq!(ex.tokens.last(), Some(&EOS));
                assert_eq!(ex.tokens.iter().filter(|&&x| x == EOS).count(), 1);
                let (edges, root, x, y) = parse(&t, &ex);
                assert!(is_dag(&edges), "cycle in example {i}");
                let d = dist(&edges, root);
                // Exactly one candidate reachable; it is the answer.
                assert!(
                    d.contains_key(&x) != d.contains_key(&y),
                    "example {i}: reachability of candidates"
                );
                let (ans, other) = if d.contains_key(&x) { (x, y) } else { (y, x) };
                assert_eq!(ex.meta["answer_first"], json!(ans == x));
                assert_eq!(ex.meta["answer"], json!(t.token_str(ans)));
                assert_eq!(ex.meta["distractor"], json!(t.token_str(other)));
                let hops = d[&ans];
                assert_eq!(ex.meta["hops"], json!(hops));
                assert!((t.cfg.min_hops..=t.cfg.max_hops).contains(&hops));
                assert_eq!(ex.meta["edges"], json!(edges.len()));
                // Both candidates are sinks; the root is a person.
                assert!(!edges.iter().any(|&(a, _)| a == ans || a == other));
                assert!(PERSONS.contains(&t.token_str(root).as_str()));
                // targets: exactly the answer span, teacher-forced.
                let want: Vec<(u32, u32)> = (ex.prompt_len - 1..ex.tokens.len() - 1)
                    .map(|p| (p as u32, ex.tokens[p + 1]))
                    .collect();
                assert_eq!(ex.targets, want);
                if t.cfg.cot {
                    assert!(
                        t.path_valid(&ex, ex.answer()),
                        "reference CoT must be a valid path"
                    );
                    let steps = match t.cfg.rendering {
                        Rendering::Sentences => {
                            ex.answer().iter().filter(|&&x| x == DOT).count() - 1
                        }
                        Rendering::Symbolic => ex.answer().len() - 2,
                    };
                    assert_eq!(steps, hops, "CoT is a shortest path");
                }
            }
        }
    }

    #[test]
    fn verifier_accepts_answer_and_rejects_corruptions() {
        for t in variants() {
            for i in 0..300 {
                let ex = generate(&t, Split::Val, i);
                let a = ex.answer().to_vec();
                let (edges, _, x, y) = parse(&t, &ex);
                let ans: u32 = if ex.meta["answer_first"] == json!(true) {
                    x
                } else {
                    y
                };
                let other = if ans == x { y } else { x };
                assert!(t.score(&ex, &a), "own answer rejected");
                assert!(
                    t.score(&ex, &a[..a.len() - 1]),
                    "answer without EOS rejected"
                );
                let mut trailing = a.clone();
                trailing.extend([DOT, EVERY]);
                assert!(t.score(&ex, &trailing), "tokens after EOS must be ignored");
                // Naming the distractor instead.
                let swap = |v: &[u32]| -> Vec<u32> {
                    let mut v = v.to_vec();
                    let k = v.len() - 1 - t.final_len()
                        + (t.cfg.rendering == Rendering::Sentences) as usize * 3;
                    assert_eq!(v[k], ans);
                    v[k] = other;
                    v
                };
                assert!(!t.score(&ex, &swap(&a)), "distractor accepted");
                assert!(!t.score(&ex, &[]), "empty accepted");
                assert!(!t.score(&ex, &[EOS]), "bare EOS accepted");
                assert!(
                    !t.score(&ex, &a[..a.len() - 2]),
                    "truncated answer accepted"
                );
                let mut wrong_name = a.clone();
                if t.cfg.rendering == Rendering::Sentences {
                    let k = wrong_name.len() - 6;
                    wrong_name[k] = if wrong_name[k] == FIRST_NAME {
                        FIRST_NAME + 1
                    } else {
                        FIRST_NAME
                    };
                    assert!(!t.score(&ex, &wrong_name), "wrong person accepted");
                }
                if t.cfg.cot {
                    assert!(!t.path_valid(&ex, &swap(&a)));
                    // Break the path: replace the first step's concept by a node that is not a
                    // child of the root.
                    let root_children: HashSet<u32> = edges
                        .iter()
                        .filter(|e| Some(e.0) == t.parse_prompt(ex.prompt()).1)
                        .map(|e| e.1)
                        .collect();
                    let bad = (FIRST_NAME + t.cfg.person_pool as u32..t.vocab_size() as u32)
                        .find(|c| !root_children.contains(c))
                        .unwrap();
                    let mut broken = a.clone();
                    let k = match t.cfg.rendering {
                        Rendering::Sentences => 3,
                        Rendering::Symbolic => 1,
                    };
                    broken[k] = bad;
                    if t.cfg.rendering == Rendering::Sentences {
                        // `Every <bad> is a x2.`: the chain stays locally consistent, but the
                        // fact `root is a <bad>` is not in the prompt.
                        assert_eq!(broken[5], EVERY);
                        broken[6] = bad;
                    }
                    assert!(
                        !t.path_valid(&ex, &broken),
                        "path through a non-fact accepted"
                    );
                    assert!(t.score(&ex, &broken), "score ignores the steps");
                }
            }
        }
    }

    #[test]
    fn levels_pin_hops_and_mixed_covers_range() {
        for h in 3..=6usize {
            let t = crate::build(NAME, Some(&format!("hops{h}")), &[]).unwrap();
            for i in 0..40 {
                assert_eq!(generate(t.as_ref(), Split::Train, i).meta["hops"], json!(h));
            }
        }
        let t = crate::build(NAME, None, &[]).unwrap();
        let mut seen = [0usize; 7];
        for ex in crate::generate_range(t.as_ref(), Split::Train, 0, 400) {
            seen[ex.meta["hops"].as_u64().unwrap() as usize] += 1;
        }
        assert_eq!(seen[..3], [0, 0, 0]);
        assert!(seen[3..].iter().all(|&c| c > 0), "{seen:?}");
    }

    #[test]
    fn sentences_render_as_english() {
        let t = task(&[("cot", "true")]);
        let ex = generate(&t, Split::Test, 0);
        let text = t.render(&ex.tokens);
        assert!(text.contains(". Every ") || text.starts_with("Every "));
        assert!(!text.contains(" .") && !text.contains(" ?"));
        let q = t.render(&ex.prompt()[ex.prompt_len - 7..]);
        assert!(
            q.starts_with("Is ") && q.ends_with('?') && q.contains(" or "),
            "{q}"
        );
        let ans = t.render(ex.answer());
        assert!(
            ans.ends_with(&format!(
                "{} is a {}. <eos>",
                ex.meta["root"].as_str().unwrap(),
                ex.meta["answer"].as_str().unwrap()
            )),
            "{ans}"
        );
        for s in t.render(&ex.tokens[..ex.tokens.len() - 1]).split(". ") {
            let w: Vec<&str> = s.split(' ').collect();
            assert!(w.len() >= 4, "{s}");
        }
    }

    #[test]
    fn config_is_validated() {
        let d = to_config_value(&ProsqaConfig::default());
        assert_eq!(task(&[]).config(), d);
        let bad = |k: &str, v: Value| {
            let mut c = d.clone();
            c[k] = v;
            Prosqa::from_json(c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad("min_nodes", json!(3)).contains("min_nodes"));
        assert!(bad("max_nodes", json!(10)).contains("max_nodes"));
        assert!(bad("min_hops", json!(7)).contains("min_hops"));
        assert!(bad("max_hops", json!(9)).contains("max_hops"));
        assert!(bad("concept_pool", json!(10)).contains("concept_pool"));
        assert!(bad("person_pool", json!(30)).contains("person_pool"));
        assert!(bad("max_edges", json!(5)).contains("max_edges"));
        assert!(bad("rendering", json!("graph")).contains("unknown variant"));
        let mut c = d.clone();
        c["hop"] = json!(3);
        assert!(Prosqa::from_json(c)
            .err()
            .unwrap()
            .to_string()
            .contains("unknown field"));
        let e = crate::build(NAME, None, &[("hops".into(), "3".into())])
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown config key"));
    }

    #[test]
    fn generation_is_deterministic() {
        let t = task(&[]);
        let a = generate(&t, Split::Test, 7);
        let b = generate(&task(&[]), Split::Test, 7);
        assert_eq!(a, b);
        assert_ne!(a.tokens, generate(&t, Split::Test, 8).tokens);
    }

    #[test]
    fn the_two_way_choice_points_at_the_final_answer() {
        for rendering in ["sentences", "symbolic"] {
            for cot in ["true", "false"] {
                let t = task(&[("rendering", rendering), ("cot", cot)]);
                for ex in crate::generate_range(&t, Split::Test, 0, 20) {
                    let c = t.choice(&ex).expect("every ProsQA example is a choice");
                    // The reference predicts `right` at `position`, a supervised position.
                    assert_eq!(ex.tokens[c.position as usize + 1], c.right);
                    assert!(ex.targets.contains(&(c.position, c.right)));
                    assert_ne!(c.right, c.wrong);
                    assert_eq!(
                        t.token_str(c.wrong),
                        ex.meta["distractor"].as_str().unwrap()
                    );
                    // Both candidates are named in the question.
                    assert!(ex.prompt().contains(&c.right) && ex.prompt().contains(&c.wrong));
                }
            }
        }
    }
}
