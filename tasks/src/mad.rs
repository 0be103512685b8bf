//! # mad — the MAD synthetic token-manipulation tasks (following MAD, Poli et al. 2024)
//!
//! Five registered tasks, defined as in MAD-lab's generators (read for the definitions; nothing
//! is copied): `recall` (in-context recall), `noisy-recall`, `fuzzy-recall`, `selective-copy` and
//! `memorize`. Baselines are MAD's: vocab 16 and seq 128 for the recall tasks (noisy: vocab 32 of
//! which 16 are noise tokens), seq 256 with 16 tokens to copy for selective copying, vocab 256 and
//! seq 32 for memorization. Levels are MAD's difficulty "changes" (vocab, seq_len, noise fraction,
//! tokens to copy).
//!
//! **Ids.** `vocab_size` is MAD's vocabulary (content and MAD's special tokens). Our sequences
//! shift every MAD id by one so that id 0 is a padding id that never occurs in an example:
//! [`Task::vocab_size`] is `vocab_size + 1`.
//!
//! **Supervision.** Teacher-forced on the *answerable* positions only, exactly MAD's test-time
//! targets: in MAD the training loss is next-token on every position of recall sequences, which
//! includes unpredictable keys; here the harness trains and scores on the answerable positions.
//! A target `(p, t)` asks the model to output `t` at input position `p`; for the recall tasks
//! `t` is the next token, for selective copying and memorization it is not (MAD writes blanks /
//! an insert token at the answer positions and puts the answer in the label only).
//!
//! **Metric.** The harness computes *micro* accuracy over all targets (every answerable position
//! weighs the same) — that is our reported metric. MAD's torchmetrics `Accuracy` defaulted to
//! *macro* accuracy (mean over classes of per-class accuracy); compute it with
//! [`macro_accuracy`] from `(target, prediction)` pairs and report it as the second figure, named
//! "macro". [`Task::score`] takes the predictions at the target positions, in target order, and
//! accepts iff all are right (sequence accuracy).
//!
//! Deviations from MAD-lab (deliberate, documented per task): no split-dependent distributions
//! (MAD's fuzzy recall draws only maximal-size keys at test time; ours draws the training law for
//! every split, since a split here is a hash partition of one distribution), MAD's shared global
//! numpy RNG in selective copying is replaced by the example's own rng, and generator edge cases
//! that could emit an unanswerable target are closed (see each task).

use crate::draw::{distinct_by_rejection, distinct_by_shuffle};
use crate::knobs::{parse_config, pinned, to_config_value, Edge, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Padding id (never occurs in an example).
pub const PAD: u32 = 0;

type Ids = std::ops::Range<u32>;

/// Macro accuracy (MAD's torchmetrics default): the mean, over the classes that occur as a
/// target, of that class's accuracy. `pairs` are `(target, prediction)`. Empty input gives 0.
/// Micro accuracy (the harness's teacher-forced metric) is instead the fraction of all pairs that
/// are right; the two differ when classes are unevenly represented.
pub fn macro_accuracy(pairs: &[(u32, u32)]) -> f64 {
    let mut per: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for &(t, p) in pairs {
        let e = per.entry(t).or_default();
        e.0 += (t == p) as usize;
        e.1 += 1;
    }
    if per.is_empty() {
        return 0.0;
    }
    per.values().map(|&(r, n)| r as f64 / n as f64).sum::<f64>() / per.len() as f64
}

/// Micro accuracy: the fraction of `(target, prediction)` pairs that agree (0 for none).
pub fn micro_accuracy(pairs: &[(u32, u32)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    pairs.iter().filter(|(t, p)| t == p).count() as f64 / pairs.len() as f64
}

/// Largest `seq_len` and `vocab_size` of every MAD task.
const MAX_KNOB: u32 = 65_536;

// ---------------------------------------------------------------------------------------------
// recall and noisy-recall
// ---------------------------------------------------------------------------------------------

/// `recall` configuration (MAD's in-context recall, multi-query as in MAD's benchmark).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallConfig {
    /// MAD vocabulary: keys are ids `0 .. V/2`, values `V/2 .. V`. Default 16. Range 4 ..= 65_536.
    pub vocab_size: u32,
    /// Sequence length (`seq_len / 2` key-value pairs). Default 128. Range 4 ..= 65_536, even.
    pub seq_len: u32,
}

impl Default for RecallConfig {
    fn default() -> Self {
        RecallConfig {
            vocab_size: 16,
            seq_len: 128,
        }
    }
}

/// `noisy-recall` configuration (MAD's noisy in-context recall).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoisyRecallConfig {
    /// MAD vocabulary including the noise tokens: keys `0 .. C/2`, values `C/2 .. C` with
    /// `C = vocab_size − noise_vocab_size`, noise `C .. vocab_size`. Default 32. Range 8 ..= 65_536.
    pub vocab_size: u32,
    /// Sequence length. Default 128. Range 4 ..= 65_536, even.
    pub seq_len: u32,
    /// Noise tokens. Default 16. Range 1 ..= vocab_size − 4.
    pub noise_vocab_size: u32,
    /// Probability that a pair slot holds two noise tokens instead of a key-value pair.
    /// Default 0.2. Range [0, 1).
    pub frac_noise: f64,
}

impl Default for NoisyRecallConfig {
    fn default() -> Self {
        NoisyRecallConfig {
            vocab_size: 32,
            seq_len: 128,
            noise_vocab_size: 16,
            frac_noise: 0.2,
        }
    }
}

pub fn recall_info() -> TaskInfo {
    TaskInfo {
        name: "recall",
        about: "MAD in-context recall: recall the value bound to each repeated key",
        defaults: to_config_value(&RecallConfig::default()),
        levels: [
            vec![("base", json!({}))],
            pinned(&["vocab_size"], &[("v32", 32), ("v64", 64), ("v128", 128)]),
            pinned(
                &["seq_len"],
                &[("t256", 256), ("t512", 512), ("t1024", 1024)],
            ),
        ]
        .concat(),
        default_level: "base",
        generalization: Some(crate::Generalization {
            axis: "sequence length",
            train: "base",
            ood: &["t256", "t512"],
        }),
    }
}

pub fn noisy_recall_info() -> TaskInfo {
    TaskInfo {
        name: "noisy-recall",
        about: "MAD noisy in-context recall: recall with noise-token pairs interleaved",
        defaults: to_config_value(&NoisyRecallConfig::default()),
        levels: [
            vec![("f20", json!({}))],
            pinned(&["frac_noise"], &[("f40", 0.4), ("f60", 0.6), ("f80", 0.8)]),
            pinned(&["vocab_size"], &[("v48", 48), ("v80", 80)]),
            pinned(&["seq_len"], &[("t256", 256), ("t512", 512)]),
        ]
        .concat(),
        default_level: "f20",
        generalization: Some(crate::Generalization {
            axis: "sequence length",
            train: "f20",
            ood: &["t256", "t512"],
        }),
    }
}

/// In-context recall, with or without noise.
///
/// `seq_len / 2` pair slots. Slots `0 .. n−1` (all but the last) each hold, with probability
/// `frac_noise`, two noise tokens (uniform, with replacement), else a key-value pair: a uniform
/// key and its value (drawn uniformly the first time the key appears, then fixed for the
/// sequence). One uniformly chosen slot among them is never noise, so at least one key occurs.
/// The last slot repeats a uniformly chosen key already presented (the probe). Targets: at the
/// position of every key that has been presented before, its value (the next token). As in MAD,
/// keys repeat a lot at vocab 16 (8 keys for 63 pairs), so most pairs are queries.
///
/// Deviation: MAD picks the never-noise slot among all `n` slots, including the probe slot it
/// never draws, which can leave no key to probe; ours picks among the `n − 1` drawn slots.
pub struct Recall {
    name: &'static str,
    cfg: Value,
    vocab: u32,
    seq_len: u32,
    noise_vocab: u32,
    frac_noise: f64,
}

impl Recall {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: RecallConfig = parse_config("recall", cfg)?;
        let k = Knobs::new("recall");
        k.int("vocab_size", c.vocab_size, 4..=MAX_KNOB)?;
        k.even("seq_len", c.seq_len, 4..=MAX_KNOB)?;
        Ok(Recall {
            name: "recall",
            cfg: to_config_value(&c),
            vocab: c.vocab_size,
            seq_len: c.seq_len,
            noise_vocab: 0,
            frac_noise: 0.0,
        })
    }

    pub fn noisy_from_json(cfg: Value) -> Result<Self, TaskError> {
        let n = "noisy-recall";
        let c: NoisyRecallConfig = parse_config(n, cfg)?;
        let k = Knobs::new(n);
        k.int("vocab_size", c.vocab_size, 8..=MAX_KNOB)?;
        k.even("seq_len", c.seq_len, 4..=MAX_KNOB)?;
        k.require((1..=c.vocab_size - 4).contains(&c.noise_vocab_size), || {
            format!(
                "noise_vocab_size = {} must be in 1..=vocab_size-4 = 1..={} (at least 2 keys and 2 values)",
                c.noise_vocab_size,
                c.vocab_size - 4
            )
        })?;
        k.real(
            "frac_noise",
            c.frac_noise,
            Edge::Closed(0.0),
            Edge::Open(1.0),
        )?;
        Ok(Recall {
            name: "noisy-recall",
            cfg: to_config_value(&c),
            vocab: c.vocab_size,
            seq_len: c.seq_len,
            noise_vocab: c.noise_vocab_size,
            frac_noise: c.frac_noise,
        })
    }

    /// Key / value / noise id ranges in MAD ids: (keys, values, noise).
    fn ranges(&self) -> (Ids, Ids, Ids) {
        let c = self.vocab - self.noise_vocab;
        (0..c / 2, c / 2..c, c..self.vocab)
    }
}

impl Task for Recall {
    fn name(&self) -> &'static str {
        self.name
    }
    fn config(&self) -> Value {
        self.cfg.clone()
    }
    fn vocab_size(&self) -> usize {
        self.vocab as usize + 1
    }
    fn max_len(&self) -> usize {
        self.seq_len as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        if id == PAD || id > self.vocab {
            return if id == PAD {
                "_".into()
            } else {
                format!("<{id}?>")
            };
        }
        let m = id - 1;
        let (k, v, _) = self.ranges();
        if k.contains(&m) {
            format!("k{m}")
        } else if v.contains(&m) {
            format!("v{m}")
        } else {
            format!("n{m}")
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let (keys, values, noise) = self.ranges();
        let slots = (self.seq_len / 2) as usize;
        let keep = rng.gen_range(0..slots - 1);
        let mut tokens = Vec::with_capacity(self.seq_len as usize);
        let mut targets = Vec::new();
        let mut map: HashMap<u32, u32> = HashMap::new();
        let mut presented: Vec<u32> = Vec::new();
        let mut noise_slots = 0usize;
        for i in 0..slots - 1 {
            if self.frac_noise > 0.0 && i != keep && rng.gen::<f64>() < self.frac_noise {
                tokens.push(1 + rng.gen_range(noise.clone()));
                tokens.push(1 + rng.gen_range(noise.clone()));
                noise_slots += 1;
                continue;
            }
            let k = rng.gen_range(keys.clone());
            let v = *map
                .entry(k)
                .or_insert_with(|| rng.gen_range(values.clone()));
            if presented.contains(&k) {
                targets.push((tokens.len() as u32, 1 + v));
            } else {
                presented.push(k);
            }
            tokens.push(1 + k);
            tokens.push(1 + v);
        }
        let k = presented[rng.gen_range(0..presented.len())];
        targets.push((tokens.len() as u32, 1 + map[&k]));
        tokens.push(1 + k);
        tokens.push(1 + map[&k]);
        let mut meta = Map::new();
        meta.insert("vocab_size".into(), json!(self.vocab));
        meta.insert("seq_len".into(), json!(self.seq_len));
        if self.name == "noisy-recall" {
            meta.insert("frac_noise".into(), json!(self.frac_noise));
            meta.insert("noise_pairs".into(), json!(noise_slots));
        }
        meta.insert("distinct_keys".into(), json!(presented.len()));
        meta.insert("queries".into(), json!(targets.len()));
        Sample {
            prompt_len: tokens.len(),
            tokens,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    fn chance(&self) -> f64 {
        1.0 / self.ranges().1.len() as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

// ---------------------------------------------------------------------------------------------
// fuzzy-recall
// ---------------------------------------------------------------------------------------------

/// `fuzzy-recall` configuration (MAD's fuzzy in-context recall, multi-query).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuzzyRecallConfig {
    /// MAD vocabulary: with `C = vocab_size − 1`, key tokens `0 .. C/2`, value tokens `C/2 .. C`;
    /// MAD's pad id `C` is reserved (never emitted; our pad is id 0). Default 16.
    /// Range 6 ..= 65_536, with at least `k_motif_size` key and `v_motif_size` value tokens.
    pub vocab_size: u32,
    /// Upper bound on the sequence length. Default 128. Range 8 ..= 65_536, and above
    /// `4·(k_motif_size + v_motif_size)`.
    pub seq_len: u32,
    /// Largest key length in tokens (key lengths are uniform in `1 ..= k_motif_size`). Default 3.
    /// Range 1 ..= 8.
    pub k_motif_size: u32,
    /// Largest value length in tokens. Default 3. Range 1 ..= 8.
    pub v_motif_size: u32,
}

impl Default for FuzzyRecallConfig {
    fn default() -> Self {
        FuzzyRecallConfig {
            vocab_size: 16,
            seq_len: 128,
            k_motif_size: 3,
            v_motif_size: 3,
        }
    }
}

pub fn fuzzy_recall_info() -> TaskInfo {
    TaskInfo {
        name: "fuzzy-recall",
        about:
            "MAD fuzzy in-context recall: keys and values are multi-token motifs of varying length",
        defaults: to_config_value(&FuzzyRecallConfig::default()),
        levels: [
            vec![("base", json!({}))],
            pinned(&["vocab_size"], &[("v32", 32), ("v64", 64), ("v128", 128)]),
            pinned(&["seq_len"], &[("t256", 256), ("t512", 512)]),
        ]
        .concat(),
        default_level: "base",
        generalization: Some(crate::Generalization {
            axis: "sequence length",
            train: "base",
            ood: &["t256", "t512"],
        }),
    }
}

/// Fuzzy in-context recall.
///
/// Keys are tuples of `1 ..= k_motif_size` distinct key tokens, values tuples of
/// `1 ..= v_motif_size` distinct value tokens (length uniform, then the tuple uniform); key and
/// value tokens come from disjoint ranges, so pair boundaries are visible. A probe pair is drawn
/// first and inserted once the sequence reaches a uniform position, then pairs are appended
/// (a key's value is fixed at its first appearance; drawing the probe key yields the probe value)
/// while a maximal pair (and the probe, if still pending) fits, and finally the probe pair is
/// repeated at the end. Targets: for every pair whose key tuple was presented before, each value
/// token, predicted from the previous position (the last key token, then each value token).
/// Sequences are at most `seq_len` tokens and are not padded (MAD left-pads to `seq_len`).
///
/// Deviations: MAD draws only maximal keys at test time (see the module docs); MAD can end its
/// loop before inserting the probe, leaving the final probe unanswerable — ours always inserts it.
pub struct FuzzyRecall {
    cfg: FuzzyRecallConfig,
}

impl FuzzyRecall {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let n = "fuzzy-recall";
        let c: FuzzyRecallConfig = parse_config(n, cfg)?;
        let k = Knobs::new(n);
        k.int("k_motif_size", c.k_motif_size, 1..=8)?;
        k.int("v_motif_size", c.v_motif_size, 1..=8)?;
        k.int("vocab_size", c.vocab_size, 6..=MAX_KNOB)?;
        let cc = c.vocab_size - 1;
        k.require(
            cc / 2 >= c.k_motif_size && cc - cc / 2 >= c.v_motif_size,
            || {
                format!(
                    "vocab_size = {} gives {} key and {} value tokens, too few for motifs of {} and {} distinct tokens",
                    c.vocab_size,
                    cc / 2,
                    cc - cc / 2,
                    c.k_motif_size,
                    c.v_motif_size
                )
            },
        )?;
        k.int("seq_len", c.seq_len, 8..=MAX_KNOB)?;
        let m = c.k_motif_size + c.v_motif_size;
        k.require(c.seq_len > 4 * m, || {
            format!(
                "seq_len = {} must exceed 4*(k_motif_size+v_motif_size) = {}",
                c.seq_len,
                4 * m
            )
        })?;
        Ok(FuzzyRecall { cfg: c })
    }

    fn ranges(&self) -> (u32, u32, u32) {
        let c = self.cfg.vocab_size - 1;
        (0, c / 2, c)
    }
}

impl Task for FuzzyRecall {
    fn name(&self) -> &'static str {
        "fuzzy-recall"
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size as usize + 1
    }
    fn max_len(&self) -> usize {
        self.cfg.seq_len as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        let (_, mid, end) = self.ranges();
        match id {
            PAD => "_".into(),
            i if i <= mid => format!("k{}", i - 1),
            i if i <= end => format!("v{}", i - 1),
            i => format!("<{i}?>"),
        }
    }
    fn render(&self, tokens: &[u32]) -> String {
        // Glue each motif's tokens with '.', separate motifs by spaces: `k3.k1 v9 k0 v7.v8`.
        let (_, mid, _) = self.ranges();
        let mut s = String::new();
        let mut prev_key: Option<bool> = None;
        for &t in tokens {
            let is_key = t != PAD && t <= mid;
            match prev_key {
                Some(p) if p == is_key && t != PAD => s.push('.'),
                Some(_) => s.push(' '),
                None => {}
            }
            s.push_str(&self.token_str(t));
            prev_key = Some(is_key);
        }
        s
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let (klo, mid, end) = self.ranges();
        let (kmax, vmax) = (self.cfg.k_motif_size, self.cfg.v_motif_size);
        let t = self.cfg.seq_len as usize;
        let draw_key = |rng: &mut ChaCha8Rng| {
            let n = rng.gen_range(1..=kmax) as usize;
            distinct_by_rejection(rng, klo, mid, n)
        };
        let draw_value = |rng: &mut ChaCha8Rng| {
            let n = rng.gen_range(1..=vmax) as usize;
            distinct_by_rejection(rng, mid, end, n)
        };
        let kp = draw_key(rng);
        let vp = draw_value(rng);
        let kvp = kp.len() + vp.len();
        let body_max = t - kvp;
        let probe_at = rng.gen_range(0..t - 2 * kvp);
        let pair_max = (kmax + vmax) as usize;

        let mut tokens: Vec<u32> = Vec::with_capacity(t);
        let mut targets = Vec::new();
        let mut map: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
        let mut pairs = 0usize;
        let mut push =
            |tokens: &mut Vec<u32>, k: &[u32], v: &[u32], map: &mut HashMap<Vec<u32>, Vec<u32>>| {
                let seen = map.contains_key(k);
                tokens.extend(k.iter().map(|&x| x + 1));
                if seen {
                    for (j, &x) in v.iter().enumerate() {
                        targets.push(((tokens.len() + j - 1) as u32, x + 1));
                    }
                } else {
                    map.insert(k.to_vec(), v.to_vec());
                }
                tokens.extend(v.iter().map(|&x| x + 1));
                pairs += 1;
            };
        let mut probe_added = false;
        loop {
            if !probe_added && tokens.len() >= probe_at {
                push(&mut tokens, &kp, &vp, &mut map);
                probe_added = true;
                continue;
            }
            let reserve = if probe_added { 0 } else { kvp };
            if tokens.len() + pair_max + reserve > body_max {
                break;
            }
            let k = draw_key(rng);
            let v = if k == kp {
                probe_added = true;
                vp.clone()
            } else {
                match map.get(&k) {
                    Some(v) => v.clone(),
                    None => draw_value(rng),
                }
            };
            push(&mut tokens, &k, &v, &mut map);
        }
        if !probe_added {
            push(&mut tokens, &kp, &vp, &mut map);
        }
        push(&mut tokens, &kp, &vp, &mut map);
        debug_assert!(tokens.len() <= t);
        let mut meta = Map::new();
        meta.insert("vocab_size".into(), json!(self.cfg.vocab_size));
        meta.insert("seq_len".into(), json!(self.cfg.seq_len));
        meta.insert("k_motif_size".into(), json!(kmax));
        meta.insert("v_motif_size".into(), json!(vmax));
        meta.insert("pairs".into(), json!(pairs));
        meta.insert("distinct_keys".into(), json!(map.len()));
        meta.insert("probe_key_len".into(), json!(kp.len()));
        meta.insert("probe_value_len".into(), json!(vp.len()));
        Sample {
            prompt_len: tokens.len(),
            tokens,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    fn chance(&self) -> f64 {
        let (_, mid, end) = self.ranges();
        1.0 / (end - mid) as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

// ---------------------------------------------------------------------------------------------
// selective-copy
// ---------------------------------------------------------------------------------------------

/// `selective-copy` configuration (MAD's selective copying).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectiveCopyConfig {
    /// MAD vocabulary: content tokens `0 .. V−2`, blank `V−2`, copy `V−1`. Default 16.
    /// Range 4 ..= 65_536.
    pub vocab_size: u32,
    /// Sequence length. Default 256. Range 4 ..= 65_536, above `2·num_tokens_to_copy + 1`.
    pub seq_len: u32,
    /// Content tokens scattered in the input and copied after the copy token. Default 16.
    /// Range 1 ..= 4096.
    pub num_tokens_to_copy: u32,
}

impl Default for SelectiveCopyConfig {
    fn default() -> Self {
        SelectiveCopyConfig {
            vocab_size: 16,
            seq_len: 256,
            num_tokens_to_copy: 16,
        }
    }
}

pub fn selective_copy_info() -> TaskInfo {
    TaskInfo {
        name: "selective-copy",
        about: "MAD selective copying: copy the non-blank tokens, in order, after the copy token",
        defaults: to_config_value(&SelectiveCopyConfig::default()),
        levels: [
            vec![("copy16", json!({}))],
            pinned(
                &["num_tokens_to_copy"],
                &[("copy32", 32), ("copy64", 64), ("copy96", 96)],
            ),
            pinned(&["vocab_size"], &[("v32", 32)]),
            pinned(&["seq_len"], &[("t512", 512), ("t1024", 1024)]),
        ]
        .concat(),
        default_level: "copy16",
        generalization: Some(crate::Generalization {
            axis: "tokens to copy",
            train: "copy16",
            ood: &["copy32", "copy64"],
        }),
    }
}

/// Selective copying.
///
/// `n = num_tokens_to_copy` content tokens (uniform, with replacement) sit at `n` uniformly
/// chosen positions, in order, among the first `seq_len − n − 1` positions, blanks elsewhere; then
/// the copy token and `n` blanks. Targets: at the j-th trailing blank, the j-th content token (as
/// in MAD, the answer is never written into the input, so the target is not the next token).
///
/// Deviation: MAD inserts its blanks at indices drawn from numpy's *global* RNG, and only before
/// existing tokens, so its last content token always sits right before the copy token; ours
/// draws the positions uniformly with the example's rng.
pub struct SelectiveCopy {
    cfg: SelectiveCopyConfig,
}

impl SelectiveCopy {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let n = "selective-copy";
        let c: SelectiveCopyConfig = parse_config(n, cfg)?;
        let k = Knobs::new(n);
        k.int("vocab_size", c.vocab_size, 4..=MAX_KNOB)?;
        k.int("num_tokens_to_copy", c.num_tokens_to_copy, 1..=4096)?;
        k.int("seq_len", c.seq_len, 4..=MAX_KNOB)?;
        k.require(c.seq_len > 2 * c.num_tokens_to_copy + 1, || {
            format!(
                "seq_len = {} must exceed 2*num_tokens_to_copy+1 = {}",
                c.seq_len,
                2 * c.num_tokens_to_copy + 1
            )
        })?;
        Ok(SelectiveCopy { cfg: c })
    }
    fn blank(&self) -> u32 {
        self.cfg.vocab_size - 2 + 1
    }
    fn copy(&self) -> u32 {
        self.cfg.vocab_size - 1 + 1
    }
}

impl Task for SelectiveCopy {
    fn name(&self) -> &'static str {
        "selective-copy"
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size as usize + 1
    }
    fn max_len(&self) -> usize {
        self.cfg.seq_len as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        match id {
            PAD => "_".into(),
            i if i == self.blank() => ".".into(),
            i if i == self.copy() => "COPY".into(),
            i if i < self.blank() => format!("t{}", i - 1),
            i => format!("<{i}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let n = self.cfg.num_tokens_to_copy as usize;
        let t = self.cfg.seq_len as usize;
        let region = t - n - 1;
        let content: Vec<u32> = (0..n)
            .map(|_| 1 + rng.gen_range(0..self.cfg.vocab_size - 2))
            .collect();
        // n distinct positions of 0..region (partial Fisher–Yates), then in increasing order.
        let mut pos = distinct_by_shuffle(rng, 0, region as u32, n);
        pos.sort_unstable();
        let mut tokens = vec![self.blank(); t];
        for (&p, &c) in pos.iter().zip(&content) {
            tokens[p as usize] = c;
        }
        tokens[region] = self.copy();
        let targets = content
            .iter()
            .enumerate()
            .map(|(j, &c)| ((region + 1 + j) as u32, c))
            .collect();
        let mut meta = Map::new();
        meta.insert("vocab_size".into(), json!(self.cfg.vocab_size));
        meta.insert("seq_len".into(), json!(self.cfg.seq_len));
        meta.insert("num_tokens_to_copy".into(), json!(n));
        meta.insert("first_position".into(), json!(pos[0]));
        meta.insert("last_position".into(), json!(pos[n - 1]));
        Sample {
            prompt_len: t,
            tokens,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    fn chance(&self) -> f64 {
        1.0 / (self.cfg.vocab_size - 2) as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

// ---------------------------------------------------------------------------------------------
// memorize
// ---------------------------------------------------------------------------------------------

/// `memorize` configuration (MAD's memorization).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorizeConfig {
    /// MAD vocabulary: with `C = vocab_size − 1`, keys `0 .. C/2`, values `C/2 .. C`, insert
    /// token `C`. Default 256. Range 6 ..= 65_536.
    pub vocab_size: u32,
    /// Sequence length (`seq_len / 2` key/insert pairs). Default 32. Range 2 ..= 65_536, even.
    pub seq_len: u32,
    /// Extra seed for the fixed key→value map (the map is a function of the whole config, this
    /// knob included). Default 0. Range: any u64.
    pub map_seed: u64,
}

impl Default for MemorizeConfig {
    fn default() -> Self {
        MemorizeConfig {
            vocab_size: 256,
            seq_len: 32,
            map_seed: 0,
        }
    }
}

pub fn memorize_info() -> TaskInfo {
    TaskInfo {
        name: "memorize",
        about: "MAD memorization: recall a fixed key-to-value map from the weights (nothing in context)",
        defaults: to_config_value(&MemorizeConfig::default()),
        levels: [
            vec![("v256", json!({}))],
            pinned(
                &["vocab_size"],
                &[
                    ("v512", 512),
                    ("v1024", 1024),
                    ("v2048", 2048),
                    ("v4096", 4096),
                    ("v8192", 8192),
                ],
            ),
        ]
        .concat(),
        default_level: "v256",
        generalization: None, // a fixed map: nothing to extrapolate to
    }
}

/// Memorization.
///
/// **The key→value map is fixed per config, not per example**: it is drawn once, in the
/// constructor, from a `ChaCha8Rng` seeded with SHA-256 of the canonical config (so `map_seed`
/// or any other knob changes it); every key gets a distinct value (a uniformly random injection
/// from keys to values, as MAD's shuffled zip). An example is `seq_len / 2` pairs `key INS` with
/// keys uniform (with replacement); the target at each `INS` is that key's value, which never
/// appears in the input. Train, val and test are different *sequences* over the same map (the
/// crate's hash partition keeps them disjoint as sequences); the facts are shared on purpose — the
/// task measures whether the map was stored in the weights.
pub struct Memorize {
    cfg: MemorizeConfig,
    /// `map[k]` = value (MAD id) of key `k`.
    map: Vec<u32>,
}

impl Memorize {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let n = "memorize";
        let c: MemorizeConfig = parse_config(n, cfg)?;
        let k = Knobs::new(n);
        k.int("vocab_size", c.vocab_size, 6..=MAX_KNOB)?;
        k.even("seq_len", c.seq_len, 2..=MAX_KNOB)?;
        let mut h = Sha256::new();
        h.update(b"lime-bench memorize kv map\0");
        h.update(crate::canonical_json(&to_config_value(&c)).as_bytes());
        let mut rng = ChaCha8Rng::from_seed(h.finalize().into());
        let cc = c.vocab_size - 1;
        // Keys 0..cc/2 get distinct values from cc/2..cc (cc/2 ≤ cc − cc/2 values).
        let map = distinct_by_shuffle(&mut rng, cc / 2, cc, (cc / 2) as usize);
        Ok(Memorize { cfg: c, map })
    }
    /// The fixed map: `kv_map()[k]` is the value (MAD id) of key `k` (MAD id).
    pub fn kv_map(&self) -> &[u32] {
        &self.map
    }
    fn insert(&self) -> u32 {
        self.cfg.vocab_size - 1 + 1
    }
}

impl Task for Memorize {
    fn name(&self) -> &'static str {
        "memorize"
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size as usize + 1
    }
    fn max_len(&self) -> usize {
        self.cfg.seq_len as usize
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    fn token_str(&self, id: u32) -> String {
        let nk = self.map.len() as u32;
        match id {
            PAD => "_".into(),
            i if i == self.insert() => "INS".into(),
            i if i <= nk => format!("k{}", i - 1),
            i if i < self.insert() => format!("v{}", i - 1),
            i => format!("<{i}?>"),
        }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let pairs = (self.cfg.seq_len / 2) as usize;
        let mut tokens = Vec::with_capacity(2 * pairs);
        let mut targets = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let k = rng.gen_range(0..self.map.len());
            tokens.push(1 + k as u32);
            targets.push((tokens.len() as u32, 1 + self.map[k]));
            tokens.push(self.insert());
        }
        let mut meta = Map::new();
        meta.insert("vocab_size".into(), json!(self.cfg.vocab_size));
        meta.insert("seq_len".into(), json!(self.cfg.seq_len));
        meta.insert("num_keys".into(), json!(self.map.len()));
        meta.insert("map_seed".into(), json!(self.cfg.map_seed));
        Sample {
            prompt_len: tokens.len(),
            tokens,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        crate::targets_match(ex, generated)
    }
    fn chance(&self) -> f64 {
        let cc = self.cfg.vocab_size - 1;
        1.0 / (cc - cc / 2) as f64
    }
    fn metric(&self) -> Metric {
        Metric::TeacherForced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::sets;
    use crate::{build, generate, generate_range, Split};
    use std::collections::HashSet;

    const TASKS: [&str; 5] = [
        "recall",
        "noisy-recall",
        "fuzzy-recall",
        "selective-copy",
        "memorize",
    ];

    fn infos() -> Vec<TaskInfo> {
        vec![
            recall_info(),
            noisy_recall_info(),
            fuzzy_recall_info(),
            selective_copy_info(),
            memorize_info(),
        ]
    }

    /// Brute-force recall labels from the MAD-id sequence: keys `< half`, values in
    /// `half..content`, anything else is noise; pairs are read two tokens at a time.
    fn recall_reference(m: &[u32], half: u32, content: u32) -> Vec<(u32, u32)> {
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let mut out = Vec::new();
        for p in (0..m.len()).step_by(2) {
            let (k, v) = (m[p], m[p + 1]);
            if k >= content {
                assert!(v >= content, "noise comes in pairs");
                continue;
            }
            assert!(k < half && (half..content).contains(&v), "pair shape");
            match seen.get(&k) {
                Some(&old) => {
                    assert_eq!(old, v, "a key's value is fixed in a sequence");
                    out.push((p as u32, v + 1));
                }
                None => {
                    seen.insert(k, v);
                }
            }
        }
        out
    }

    #[test]
    fn recall_labels_match_brute_force() {
        for (task, lvl, s) in [
            ("recall", "base", sets(&[])),
            ("recall", "v128", sets(&[])),
            (
                "recall",
                "base",
                sets(&[("vocab_size", "4"), ("seq_len", "4")]),
            ),
            ("noisy-recall", "f20", sets(&[])),
            ("noisy-recall", "f80", sets(&[])),
            ("noisy-recall", "f80", sets(&[("seq_len", "4")])),
        ] {
            let t = build(task, Some(lvl), &s).unwrap();
            let v = t.config()["vocab_size"].as_u64().unwrap() as u32;
            let nv = t
                .config()
                .get("noise_vocab_size")
                .map_or(0, |x| x.as_u64().unwrap() as u32);
            let content = v - nv;
            let mut noise_slots = 0usize;
            let mut slots = 0usize;
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert_eq!(ex.tokens.len(), t.max_len());
                assert!(ex
                    .tokens
                    .iter()
                    .all(|&x| x != PAD && (x as usize) < t.vocab_size()));
                let m: Vec<u32> = ex.tokens.iter().map(|&x| x - 1).collect();
                let want = recall_reference(&m, content / 2, content);
                assert_eq!(ex.targets, want, "{task} {lvl} #{i}");
                // The last pair is always a probe of a presented key.
                assert_eq!(ex.targets.last().unwrap().0 as usize, ex.tokens.len() - 2);
                assert!(ex
                    .targets
                    .iter()
                    .all(|&(p, tok)| ex.tokens[p as usize + 1] == tok));
                noise_slots += m.iter().step_by(2).filter(|&&k| k >= content).count();
                slots += m.len() / 2 - 1;
            }
            if let Some(f) = t.config().get("frac_noise").and_then(Value::as_f64) {
                let got = noise_slots as f64 / slots as f64;
                if slots > 10_000 {
                    assert!(
                        (got - f).abs() < 0.02,
                        "{task} {lvl}: noise fraction {got} vs {f}"
                    );
                }
            } else {
                assert_eq!(noise_slots, 0);
            }
        }
    }

    #[test]
    fn fuzzy_recall_labels_match_brute_force() {
        for (lvl, s) in [
            ("base", sets(&[])),
            ("v64", sets(&[])),
            (
                "t256",
                sets(&[("k_motif_size", "1"), ("v_motif_size", "1")]),
            ),
            (
                "base",
                sets(&[
                    ("k_motif_size", "2"),
                    ("v_motif_size", "4"),
                    ("seq_len", "25"),
                ]),
            ),
        ] {
            let t = build("fuzzy-recall", Some(lvl), &s).unwrap();
            let cfg: FuzzyRecallConfig = serde_json::from_value(t.config()).unwrap();
            let mid = (cfg.vocab_size - 1) / 2;
            let mut key_lens = HashSet::new();
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert!(ex.tokens.len() <= t.max_len());
                assert!(ex.tokens.iter().all(|&x| x != PAD && x < cfg.vocab_size));
                // Parse runs of key tokens / value tokens.
                let m: Vec<u32> = ex.tokens.iter().map(|&x| x - 1).collect();
                let mut runs: Vec<(usize, Vec<u32>)> = Vec::new();
                for (p, &x) in m.iter().enumerate() {
                    let is_key = x < mid;
                    match runs.last_mut() {
                        Some((s, r)) if (r[0] < mid) == is_key => {
                            let _ = s;
                            r.push(x)
                        }
                        _ => runs.push((p, vec![x])),
                    }
                }
                assert_eq!(runs.len() % 2, 0, "alternating key/value runs");
                assert!(runs[0].1[0] < mid, "starts with a key");
                let mut seen: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
                let mut want = Vec::new();
                for pair in runs.chunks(2) {
                    let (k, (vs, v)) = (&pair[0].1, (&pair[1].0, &pair[1].1));
                    assert!(
                        k.len() <= cfg.k_motif_size as usize
                            && v.len() <= cfg.v_motif_size as usize
                    );
                    for r in [k, v] {
                        let d: HashSet<&u32> = r.iter().collect();
                        assert_eq!(d.len(), r.len(), "motif tokens distinct");
                    }
                    key_lens.insert(k.len());
                    match seen.get(k) {
                        Some(old) => {
                            assert_eq!(old, v);
                            for (j, &x) in v.iter().enumerate() {
                                want.push(((vs + j - 1) as u32, x + 1));
                            }
                        }
                        None => {
                            seen.insert(k.clone(), v.clone());
                        }
                    }
                }
                assert_eq!(ex.targets, want, "{lvl} #{i}");
                // The final pair is a repeated key: its value is supervised.
                let last = &runs[runs.len() - 1];
                assert_eq!(
                    ex.targets.last().unwrap().0 as usize,
                    last.0 + last.1.len() - 2
                );
                assert!(ex
                    .targets
                    .iter()
                    .all(|&(p, tok)| ex.tokens[p as usize + 1] == tok));
            }
            assert_eq!(
                key_lens.len(),
                cfg.k_motif_size as usize,
                "every key length occurs"
            );
        }
    }

    #[test]
    fn selective_copy_labels_match_brute_force() {
        for (lvl, s) in [
            ("copy16", sets(&[])),
            ("copy96", sets(&[])),
            ("v32", sets(&[])),
            ("copy16", sets(&[("seq_len", "34")])),
        ] {
            let t = build("selective-copy", Some(lvl), &s).unwrap();
            let cfg: SelectiveCopyConfig = serde_json::from_value(t.config()).unwrap();
            let (blank, copy) = (cfg.vocab_size - 1, cfg.vocab_size);
            let n = cfg.num_tokens_to_copy as usize;
            let mut last_before_copy = 0;
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert_eq!(ex.tokens.len(), cfg.seq_len as usize);
                assert!(ex
                    .tokens
                    .iter()
                    .all(|&x| x != PAD && (x as usize) < t.vocab_size()));
                let c = ex.tokens.iter().position(|&x| x == copy).unwrap();
                assert_eq!(c, cfg.seq_len as usize - n - 1);
                assert!(ex.tokens[c + 1..].iter().all(|&x| x == blank));
                let content: Vec<u32> = ex.tokens[..c]
                    .iter()
                    .copied()
                    .filter(|&x| x != blank)
                    .collect();
                assert_eq!(content.len(), n);
                let want: Vec<(u32, u32)> = content
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| ((c + 1 + j) as u32, x))
                    .collect();
                assert_eq!(ex.targets, want);
                last_before_copy += (ex.tokens[c - 1] != blank) as usize;
            }
            // Not MAD's quirk: the last content token is not pinned before the copy token.
            if cfg.seq_len > 4 * cfg.num_tokens_to_copy {
                assert!(last_before_copy < 150, "{lvl}: {last_before_copy}/300");
            }
        }
    }

    #[test]
    fn memorize_map_is_fixed_per_config_and_labels_follow_it() {
        let t = Memorize::from_json(memorize_info().defaults).unwrap();
        let same = Memorize::from_json(memorize_info().defaults).unwrap();
        assert_eq!(t.kv_map(), same.kv_map());
        let nk = t.kv_map().len();
        assert_eq!(nk, 127);
        let distinct: HashSet<&u32> = t.kv_map().iter().collect();
        assert_eq!(distinct.len(), nk, "injective");
        assert!(t.kv_map().iter().all(|&v| (127..255).contains(&v)));
        let other =
            Memorize::from_json(json!({"vocab_size": 256, "seq_len": 32, "map_seed": 1})).unwrap();
        assert_ne!(t.kv_map(), other.kv_map(), "map_seed changes the map");
        let longer =
            Memorize::from_json(json!({"vocab_size": 256, "seq_len": 64, "map_seed": 0})).unwrap();
        assert_ne!(
            t.kv_map(),
            longer.kv_map(),
            "the map is a function of the whole config"
        );
        // Not the identity-like layout: the map is shuffled.
        assert!(t.kv_map().windows(2).filter(|w| w[1] == w[0] + 1).count() < 10);
        for split in Split::ALL {
            for ex in generate_range(&t, split, 0, 200) {
                assert_eq!(ex.tokens.len(), 32);
                for (j, &(p, v)) in ex.targets.iter().enumerate() {
                    assert_eq!(p as usize, 2 * j + 1);
                    assert_eq!(ex.tokens[p as usize], 256, "INS");
                    let k = ex.tokens[2 * j] - 1;
                    assert_eq!(v, 1 + t.kv_map()[k as usize]);
                }
            }
        }
        // Test sequences are new sequences over the same map.
        let train: HashSet<Vec<u32>> = generate_range(&t, Split::Train, 0, 2000)
            .into_iter()
            .map(|e| e.tokens)
            .collect();
        assert!(generate_range(&t, Split::Test, 0, 300)
            .iter()
            .all(|e| !train.contains(&e.tokens)));
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for info in infos() {
            for (lvl, _) in &info.levels {
                let t = build(info.name, Some(lvl), &[]).unwrap();
                let n = if lvl.contains("1024") || lvl.contains("8192") {
                    30
                } else {
                    200
                };
                for ex in generate_range(t.as_ref(), Split::Test, 0, n) {
                    assert!(ex.tokens.len() <= t.max_len(), "{} {lvl}", info.name);
                    assert!(ex
                        .tokens
                        .iter()
                        .all(|&x| (x as usize) < t.vocab_size() && x != PAD));
                    assert!(!ex.targets.is_empty());
                    assert!(ex.targets.windows(2).all(|w| w[0].0 < w[1].0));
                    let good: Vec<u32> = ex.targets.iter().map(|t| t.1).collect();
                    assert!(t.score(&ex, &good));
                    let mut bad = good.clone();
                    let j = rng.gen_range(0..bad.len());
                    bad[j] = if bad[j] == 1 { 2 } else { bad[j] - 1 };
                    assert!(!t.score(&ex, &bad));
                    assert!(!t.score(&ex, &good[..good.len() - 1]));
                    assert!(!t.score(&ex, &[]));
                    let mut longer = good.clone();
                    longer.push(good[0]);
                    assert!(!t.score(&ex, &longer));
                }
                assert!(t.chance() > 0.0 && t.chance() < 1.0);
                assert_eq!(t.metric(), Metric::TeacherForced);
            }
        }
    }

    #[test]
    fn macro_and_micro_accuracy() {
        // Class 1: 3 of 4 right; class 2: 0 of 1 right. Micro 3/5, macro (0.75 + 0) / 2.
        let pairs = [(1, 1), (1, 1), (1, 1), (1, 2), (2, 1)];
        assert!((micro_accuracy(&pairs) - 0.6).abs() < 1e-12);
        assert!((macro_accuracy(&pairs) - 0.375).abs() < 1e-12);
        assert_eq!(macro_accuracy(&[]), 0.0);
        assert_eq!(micro_accuracy(&[]), 0.0);
        let all_right = [(3, 3), (4, 4), (4, 4)];
        assert_eq!(macro_accuracy(&all_right), 1.0);
        // A class that is only ever predicted (never a target) does not count.
        assert_eq!(macro_accuracy(&[(5, 5), (6, 6), (6, 7)]), 0.75);
    }

    #[test]
    fn range_validation() {
        let bad: [(&str, &str, &str, &str); 18] = [
            ("recall", "vocab_size", "3", "vocab_size"),
            ("recall", "seq_len", "127", "seq_len"),
            ("recall", "seq_len", "2", "seq_len"),
            ("noisy-recall", "noise_vocab_size", "0", "noise_vocab_size"),
            ("noisy-recall", "noise_vocab_size", "29", "noise_vocab_size"),
            ("noisy-recall", "frac_noise", "1", "frac_noise"),
            ("noisy-recall", "frac_noise", "-0.1", "frac_noise"),
            ("fuzzy-recall", "k_motif_size", "0", "k_motif_size"),
            ("fuzzy-recall", "v_motif_size", "9", "v_motif_size"),
            ("fuzzy-recall", "vocab_size", "6", "too few"),
            (
                "fuzzy-recall",
                "seq_len",
                "24",
                "4*(k_motif_size+v_motif_size)",
            ),
            ("selective-copy", "vocab_size", "3", "vocab_size"),
            (
                "selective-copy",
                "num_tokens_to_copy",
                "0",
                "num_tokens_to_copy",
            ),
            ("selective-copy", "seq_len", "33", "2*num_tokens_to_copy+1"),
            ("memorize", "vocab_size", "5", "vocab_size"),
            ("memorize", "seq_len", "31", "seq_len"),
            ("memorize", "seq_len", "0", "seq_len"),
            ("recall", "seq_len", "70000", "seq_len"),
        ];
        for (task, k, v, needle) in bad {
            crate::knobs::assert_rejected(task, None, &[(k, v, needle)]);
        }
        for task in TASKS {
            let mut cfg = infos()
                .into_iter()
                .find(|i| i.name == task)
                .unwrap()
                .defaults;
            cfg.as_object_mut()
                .unwrap()
                .insert("multi_query".into(), json!(true));
            let e = match task {
                "recall" => Recall::from_json(cfg).err(),
                "noisy-recall" => Recall::noisy_from_json(cfg).err(),
                "fuzzy-recall" => FuzzyRecall::from_json(cfg).err(),
                "selective-copy" => SelectiveCopy::from_json(cfg).err(),
                _ => Memorize::from_json(cfg).err(),
            };
            assert!(
                e.unwrap()
                    .to_string()
                    .contains("unknown field `multi_query`"),
                "{task}"
            );
        }
    }

    #[test]
    fn config_roundtrip_rendering_and_chance() {
        for info in infos() {
            let t = build(info.name, None, &[]).unwrap();
            assert_eq!(t.config(), info.defaults, "{}", info.name);
        }
        let r = build("recall", None, &[]).unwrap();
        assert_eq!(r.vocab_size(), 17);
        assert_eq!(r.render(&[1, 9, 8, 16]), "k0 v8 k7 v15");
        assert_eq!(r.chance(), 1.0 / 8.0);
        let n = build("noisy-recall", None, &[]).unwrap();
        assert_eq!(n.render(&[1, 9, 17, 32]), "k0 v8 n16 n31");
        let f = build("fuzzy-recall", None, &[]).unwrap();
        assert_eq!(f.render(&[1, 3, 8, 10, 2, 9]), "k0.k2 v7.v9 k1 v8");
        assert_eq!(f.chance(), 1.0 / 8.0);
        let s = build("selective-copy", None, &[]).unwrap();
        assert_eq!(s.render(&[1, 15, 14, 16]), "t0 . t13 COPY");
        assert_eq!(s.chance(), 1.0 / 14.0);
        let m = build("memorize", None, &[]).unwrap();
        assert_eq!(m.render(&[1, 256, 128, 255]), "k0 INS v127 v254");
        assert_eq!(m.chance(), 1.0 / 128.0);
    }

    #[test]
    fn splits_disjoint_and_deterministic() {
        for info in infos() {
            let t = build(info.name, None, &[]).unwrap();
            let a = generate_range(t.as_ref(), Split::Val, 0, 40);
            let b = generate_range(t.as_ref(), Split::Val, 10, 10);
            assert_eq!(&a[10..20], &b[..]);
            let distinct: HashSet<&Vec<u32>> = a.iter().map(|e| &e.tokens).collect();
            assert_eq!(distinct.len(), 40, "{}", info.name);
        }
    }
}
