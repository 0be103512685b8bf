//! # arith — arithmetic expressions (following Feng et al. 2023, as used by Seq-VCR and LIMe)
//!
//! **Construction.** Start from one random number (the answer) and, `ops` times, replace a
//! uniformly chosen number `n` of the expression by `(a ∘ b)` with `a ∘ b = n`, `∘` uniform over
//! `+ − × ÷` and `(a, b)` uniform over the pairs that give `n`. Brackets that do not change the
//! parse (standard precedence, left associativity) are dropped, so the rendered text parses back
//! to exactly the constructed tree.
//!
//! * mode `mod`: numbers are residues mod `modulus` (prime), `÷` is multiplication by the modular
//!   inverse and a divisor is never 0.
//! * mode `int`: numbers are integers in `0 ..= max_value`; `÷` is exact division. Every
//!   sub-expression of the tree has a value in `0 ..= max_value`, so every chain-of-thought step
//!   does too, e.g. `(7 + 5) / (6 + 4 * 3 - 2 * 7) = 12 / (6 + 4 * 3 - 2 * 7) = …`.
//!
//! **Sequence.** `expression =` is the prompt; the answer is either the number (`direct`) or the
//! chain of thought (`cot`): each step evaluates the leftmost operation whose operands are both
//! numbers, steps joined by `=`, ending with the number. The answer ends with `<eos>`; every answer
//! position (the prediction of each answer token, EOS included) is supervised.
//!
//! **Tokens.** `0 _` (pad), `1 <eos>`, `2 =`, `3 (`, `4 )`, `5 +`, `6 -`, `7 *`, `8 /`, then numbers
//! from id 9: in `mod` mode one token per residue (`9 + r`, as in Feng et al.); in `int` mode one
//! token per decimal digit (`9 + d`; a number is its digits, most significant first, no leading
//! zeros). The text rendering glues a number's digits and brackets to their contents.
//!
//! **Metric.** Greedy generation; [`Task::score`] cuts the generation at the first `<eos>` (if any)
//! and accepts iff the part after the last `=` is exactly the answer number.

use crate::knobs::{parse_config, pinned, to_config_value, Knobs};
use crate::{Example, Metric, Sample, Task, TaskError, TaskInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const NAME: &str = "arith";

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const EQ: u32 = 2;
pub const LPAR: u32 = 3;
pub const RPAR: u32 = 4;
pub const ADD: u32 = 5;
pub const SUB: u32 = 6;
pub const MUL: u32 = 7;
pub const DIV: u32 = 8;
/// First number id (residue or digit 0).
pub const NUM0: u32 = 9;

/// Number domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Residues modulo a prime; ÷ is the modular inverse.
    Mod,
    /// Integers in `0 ..= max_value`; ÷ is exact division.
    Int,
}

/// Answer format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// The number only.
    Direct,
    /// One evaluation step at a time, joined by `=`, ending with the number.
    Cot,
}

/// arith configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithConfig {
    /// `mod` or `int`. Default `mod` (Feng et al.).
    pub mode: Mode,
    /// Prime modulus for `mod` mode (ignored in `int` mode). Default 11 (Feng et al.). Range: a
    /// prime in 2 ..= 997.
    pub modulus: u32,
    /// Largest operand and sub-expression value in `int` mode (ignored in `mod` mode). Default 20.
    /// Range 1 ..= 99_999.
    pub max_value: u32,
    /// Number of operators (replacement steps). Default 4. Range 1 ..= 64 (levels ops4/5/6; more
    /// for length extrapolation).
    pub ops: u32,
    /// `direct` or `cot`. Default `direct`.
    pub output: Output,
}

impl Default for ArithConfig {
    fn default() -> Self {
        ArithConfig {
            mode: Mode::Mod,
            modulus: 11,
            max_value: 20,
            ops: 4,
            output: Output::Direct,
        }
    }
}

pub fn info() -> TaskInfo {
    TaskInfo {
        name: NAME,
        about: "arithmetic expressions (Feng et al. 2023): evaluate mod p or over integers, direct or CoT",
        defaults: to_config_value(&ArithConfig::default()),
        levels: pinned(&["ops"], &[("ops4", 4), ("ops5", 5), ("ops6", 6), ("ops8", 8)]),
        default_level: "ops4",
        generalization: Some(crate::Generalization {
            axis: "operands",
            train: "ops4",
            ood: &["ops5", "ops6"],
        }),
    }
}

fn is_prime(p: u32) -> bool {
    p >= 2
        && (2..)
            .take_while(|d| d * d <= p)
            .all(|d| !p.is_multiple_of(d))
}

fn digits(mut v: u64) -> usize {
    let mut d = 1;
    while v >= 10 {
        v /= 10;
        d += 1;
    }
    d
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    fn prec(self) -> u8 {
        match self {
            Op::Add | Op::Sub => 1,
            Op::Mul | Op::Div => 2,
        }
    }
    fn token(self) -> u32 {
        match self {
            Op::Add => ADD,
            Op::Sub => SUB,
            Op::Mul => MUL,
            Op::Div => DIV,
        }
    }
}

/// Expression tree in an arena; node 0 is the root.
#[derive(Clone, Copy, Debug)]
struct Node {
    val: u64,
    /// `Some((op, left, right))` for an operation, `None` for a number.
    op: Option<(Op, usize, usize)>,
}

pub struct Arith {
    cfg: ArithConfig,
}

impl Arith {
    pub fn from_json(cfg: Value) -> Result<Self, TaskError> {
        let c: ArithConfig = parse_config(NAME, cfg)?;
        Self::new(c)
    }

    pub fn new(c: ArithConfig) -> Result<Self, TaskError> {
        let k = Knobs::new(NAME);
        k.require(is_prime(c.modulus) && c.modulus <= 997, || {
            format!("modulus = {} must be a prime in 2..=997", c.modulus)
        })?;
        k.int("max_value", c.max_value, 1..=99_999)?;
        k.int("ops", c.ops, 1..=64)?;
        Ok(Arith { cfg: c })
    }

    /// Token length of the longest number.
    fn num_width(&self) -> usize {
        match self.cfg.mode {
            Mode::Mod => 1,
            Mode::Int => digits(self.cfg.max_value as u64),
        }
    }

    /// Number of distinct values (answers).
    fn num_values(&self) -> u64 {
        match self.cfg.mode {
            Mode::Mod => self.cfg.modulus as u64,
            Mode::Int => self.cfg.max_value as u64 + 1,
        }
    }

    fn push_num(&self, v: u64, out: &mut Vec<u32>) {
        match self.cfg.mode {
            Mode::Mod => out.push(NUM0 + v as u32),
            Mode::Int => {
                let start = out.len();
                let mut v = v;
                loop {
                    out.push(NUM0 + (v % 10) as u32);
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                out[start..].reverse();
            }
        }
    }

    fn inv(&self, a: u64) -> u64 {
        // Fermat: a^(p-2) mod p.
        let p = self.cfg.modulus as u64;
        let (mut base, mut e, mut r) = (a % p, p - 2, 1u64);
        while e > 0 {
            if e & 1 == 1 {
                r = r * base % p;
            }
            base = base * base % p;
            e >>= 1;
        }
        r
    }

    /// Operands `(a, b)` with `a op b = n`, uniform over all valid pairs.
    fn operands(&self, rng: &mut ChaCha8Rng, op: Op, n: u64) -> (u64, u64) {
        match self.cfg.mode {
            Mode::Mod => {
                let p = self.cfg.modulus as u64;
                match op {
                    Op::Add => {
                        let a = rng.gen_range(0..p);
                        (a, (n + p - a) % p)
                    }
                    Op::Sub => {
                        let b = rng.gen_range(0..p);
                        ((n + b) % p, b)
                    }
                    Op::Mul if n == 0 => zero_product(rng, p - 1),
                    Op::Mul => {
                        let a = rng.gen_range(1..p);
                        (a, n * self.inv(a) % p)
                    }
                    Op::Div => {
                        let b = rng.gen_range(1..p);
                        (n * b % p, b)
                    }
                }
            }
            Mode::Int => {
                let m = self.cfg.max_value as u64;
                match op {
                    Op::Add => {
                        let a = rng.gen_range(0..=n);
                        (a, n - a)
                    }
                    Op::Sub => {
                        let b = rng.gen_range(0..=m - n);
                        (n + b, b)
                    }
                    Op::Mul if n == 0 => zero_product(rng, m),
                    Op::Mul => {
                        let divs: Vec<u64> = (1..=n)
                            .take_while(|d| d * d <= n)
                            .filter(|d| n.is_multiple_of(*d))
                            .collect();
                        // Each divisor d ≤ √n pairs with n/d; count both orders once each.
                        let mut all = divs.clone();
                        all.extend(divs.iter().rev().map(|d| n / d).filter(|&q| q * q != n));
                        let a = all[rng.gen_range(0..all.len())];
                        (a, n / a)
                    }
                    Op::Div if n == 0 => (0, rng.gen_range(1..=m)),
                    Op::Div => {
                        let b = rng.gen_range(1..=m / n);
                        (n * b, b)
                    }
                }
            }
        }
    }

    fn build_tree(&self, rng: &mut ChaCha8Rng) -> Vec<Node> {
        let ops = self.cfg.ops as usize;
        let mut nodes = Vec::with_capacity(2 * ops + 1);
        nodes.push(Node {
            val: rng.gen_range(0..self.num_values()),
            op: None,
        });
        let mut leaves = vec![0usize];
        for _ in 0..ops {
            let li = rng.gen_range(0..leaves.len());
            let at = leaves[li];
            let op = [Op::Add, Op::Sub, Op::Mul, Op::Div][rng.gen_range(0..4)];
            let (a, b) = self.operands(rng, op, nodes[at].val);
            let (l, r) = (nodes.len(), nodes.len() + 1);
            nodes.push(Node { val: a, op: None });
            nodes.push(Node { val: b, op: None });
            nodes[at].op = Some((op, l, r));
            leaves[li] = l;
            leaves.push(r);
        }
        nodes
    }

    fn render_tree(&self, nodes: &[Node], at: usize, out: &mut Vec<u32>) {
        match nodes[at].op {
            None => self.push_num(nodes[at].val, out),
            Some((op, l, r)) => {
                let wrap_l = matches!(nodes[l].op, Some((c, ..)) if c.prec() < op.prec());
                let wrap_r = matches!(nodes[r].op, Some((c, ..)) if c.prec() <= op.prec());
                self.render_child(nodes, l, wrap_l, out);
                out.push(op.token());
                self.render_child(nodes, r, wrap_r, out);
            }
        }
    }

    fn render_child(&self, nodes: &[Node], at: usize, wrap: bool, out: &mut Vec<u32>) {
        if wrap {
            out.push(LPAR);
        }
        self.render_tree(nodes, at, out);
        if wrap {
            out.push(RPAR);
        }
    }

    /// Leftmost (in-order) operation node whose operands are both numbers.
    fn leftmost_ready(nodes: &[Node], at: usize) -> Option<usize> {
        let (_, l, r) = nodes[at].op?;
        if nodes[l].op.is_none() && nodes[r].op.is_none() {
            return Some(at);
        }
        Self::leftmost_ready(nodes, l).or_else(|| Self::leftmost_ready(nodes, r))
    }

    /// Token length of an expression with `k` operators, at most.
    fn expr_bound(&self, k: usize) -> usize {
        (k + 1) * self.num_width() + k + 2 * k.saturating_sub(1)
    }

    /// The number tokens of `v`.
    fn num_tokens(&self, v: u64) -> Vec<u32> {
        let mut t = Vec::new();
        self.push_num(v, &mut t);
        t
    }

    /// Answer value recorded in `meta`.
    fn value_of(ex: &Example) -> Option<u64> {
        ex.meta.get("value")?.as_u64()
    }
}

/// The value of an expression in arith's tokens (recursive descent: expr := term (± term)*,
/// term := factor (×÷ factor)*, factor := number | ( expr )), mod `modulus` or over the integers
/// with exact division; None when the tokens do not parse or a division is not exact / by zero.
fn eval_tokens(t: &[u32], modulus: Option<i64>) -> Option<i64> {
    struct P<'a> {
        t: &'a [u32],
        i: usize,
        m: Option<i64>,
    }
    impl P<'_> {
        fn apply(&self, op: u32, x: i64, y: i64) -> Option<i64> {
            let v = match (op, self.m) {
                (ADD, _) => x + y,
                (SUB, _) => x - y,
                (MUL, _) => x.checked_mul(y)?,
                (DIV, Some(p)) => {
                    let inv = (1..p).find(|z| y.rem_euclid(p) * z % p == 1)?;
                    x * inv
                }
                (DIV, None) => {
                    if y == 0 || x % y != 0 {
                        return None;
                    }
                    x / y
                }
                _ => return None,
            };
            Some(match self.m {
                Some(p) => v.rem_euclid(p),
                None => v,
            })
        }
        fn expr(&mut self) -> Option<i64> {
            let mut a = self.term()?;
            while let Some(&op @ (ADD | SUB)) = self.t.get(self.i) {
                self.i += 1;
                let b = self.term()?;
                a = self.apply(op, a, b)?;
            }
            Some(a)
        }
        fn term(&mut self) -> Option<i64> {
            let mut a = self.factor()?;
            while let Some(&op @ (MUL | DIV)) = self.t.get(self.i) {
                self.i += 1;
                let b = self.factor()?;
                a = self.apply(op, a, b)?;
            }
            Some(a)
        }
        fn factor(&mut self) -> Option<i64> {
            match *self.t.get(self.i)? {
                LPAR => {
                    self.i += 1;
                    let a = self.expr()?;
                    (self.t.get(self.i) == Some(&RPAR)).then_some(())?;
                    self.i += 1;
                    Some(a)
                }
                d if d >= NUM0 => {
                    let mut v: i64 = 0;
                    while let Some(&d) = self.t.get(self.i).filter(|&&d| d >= NUM0) {
                        v = v.checked_mul(if self.m.is_some() { 0 } else { 10 })?
                            + (d - NUM0) as i64;
                        self.i += 1;
                        if self.m.is_some() {
                            break; // one token per residue
                        }
                    }
                    Some(v)
                }
                _ => None,
            }
        }
    }
    let mut p = P {
        t,
        i: 0,
        m: modulus,
    };
    let v = p.expr()?;
    (p.i == t.len()).then_some(v)
}

/// Uniform over the pairs `(a, b)` in `0..=m` with `a·b = 0`: `(0, b)` for any b, `(a, 0)`, a ≠ 0.
fn zero_product(rng: &mut ChaCha8Rng, m: u64) -> (u64, u64) {
    let r = rng.gen_range(0..2 * m + 1);
    if r <= m {
        (0, r)
    } else {
        (r - m, 0)
    }
}

impl Task for Arith {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self) -> Value {
        to_config_value(&self.cfg)
    }
    fn vocab_size(&self) -> usize {
        (NUM0
            + match self.cfg.mode {
                Mode::Mod => self.cfg.modulus,
                Mode::Int => 10,
            }) as usize
    }
    fn max_len(&self) -> usize {
        let k = self.cfg.ops as usize;
        let answer = match self.cfg.output {
            Output::Direct => self.num_width(),
            Output::Cot => (0..k).map(|j| self.expr_bound(j)).sum::<usize>() + (k - 1),
        };
        self.expr_bound(k) + 1 + answer + 1
    }
    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn token_str(&self, id: u32) -> String {
        match id {
            PAD => "_".into(),
            EOS => "<eos>".into(),
            EQ => "=".into(),
            LPAR => "(".into(),
            RPAR => ")".into(),
            ADD => "+".into(),
            SUB => "-".into(),
            MUL => "*".into(),
            DIV => "/".into(),
            n if (n as usize) < self.vocab_size() => (n - NUM0).to_string(),
            n => format!("<{n}?>"),
        }
    }
    fn render(&self, tokens: &[u32]) -> String {
        let mut s = String::new();
        let mut prev: Option<u32> = None;
        for &t in tokens {
            let glue = match prev {
                None => true,
                Some(p) => {
                    p == LPAR || t == RPAR || (self.cfg.mode == Mode::Int && p >= NUM0 && t >= NUM0)
                }
            };
            if !glue {
                s.push(' ');
            }
            s.push_str(&self.token_str(t));
            prev = Some(t);
        }
        s
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> Sample {
        let mut nodes = self.build_tree(rng);
        let value = nodes[0].val;
        let mut tokens = Vec::with_capacity(self.max_len());
        self.render_tree(&nodes, 0, &mut tokens);
        tokens.push(EQ);
        let prompt_len = tokens.len();
        match self.cfg.output {
            Output::Direct => self.push_num(value, &mut tokens),
            Output::Cot => {
                let mut first = true;
                while let Some(at) = Self::leftmost_ready(&nodes, 0) {
                    nodes[at].op = None;
                    if !first {
                        tokens.push(EQ);
                    }
                    first = false;
                    self.render_tree(&nodes, 0, &mut tokens);
                }
            }
        }
        tokens.push(EOS);
        debug_assert!(tokens.len() <= self.max_len());
        let targets = crate::answer_targets(&tokens, prompt_len);
        let mut meta = Map::new();
        meta.insert(
            "mode".into(),
            json!(match self.cfg.mode {
                Mode::Mod => "mod",
                Mode::Int => "int",
            }),
        );
        meta.insert(
            "output".into(),
            json!(match self.cfg.output {
                Output::Direct => "direct",
                Output::Cot => "cot",
            }),
        );
        meta.insert(
            "modulus".into(),
            match self.cfg.mode {
                Mode::Mod => json!(self.cfg.modulus),
                Mode::Int => Value::Null,
            },
        );
        meta.insert(
            "max_value".into(),
            match self.cfg.mode {
                Mode::Mod => Value::Null,
                Mode::Int => json!(self.cfg.max_value),
            },
        );
        meta.insert("ops".into(), json!(self.cfg.ops));
        meta.insert("value".into(), json!(value));
        Sample {
            tokens,
            prompt_len,
            targets,
            meta,
        }
    }
    fn score(&self, ex: &Example, generated: &[u32]) -> bool {
        let Some(value) = Self::value_of(ex) else {
            return false;
        };
        let gen = crate::until_eos(generated, EOS);
        let last = match gen.iter().rposition(|&t| t == EQ) {
            Some(i) => &gen[i + 1..],
            None => gen,
        };
        last == self.num_tokens(value).as_slice()
    }
    fn chance(&self) -> f64 {
        1.0 / self.num_values() as f64
    }
    fn metric(&self) -> Metric {
        Metric::Generate
    }
    /// Every `=`-separated step of the generation (up to `<eos>`) parses and has the prompt
    /// expression's value: the solution is arithmetically valid throughout, whatever its answer.
    fn steps_valid(&self, ex: &Example, generated: &[u32]) -> Option<bool> {
        let modulus = (self.cfg.mode == Mode::Mod).then_some(self.cfg.modulus as i64);
        let prompt = ex.prompt();
        let expr = prompt.strip_suffix(&[EQ]).unwrap_or(prompt);
        let Some(want) = eval_tokens(expr, modulus) else {
            return Some(false);
        };
        let gen = crate::until_eos(generated, EOS);
        Some(
            !gen.is_empty()
                && gen
                    .split(|&t| t == EQ)
                    .all(|step| eval_tokens(step, modulus) == Some(want)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{assert_rejected, sets};
    use crate::{build, generate, Split};
    use rand::SeedableRng;

    // ---- An independent evaluator over the rendered text -------------------------------------

    #[derive(Debug, PartialEq, Clone)]
    enum Ast {
        Num(i64),
        Bin(char, Box<Ast>, Box<Ast>),
    }

    /// Recursive-descent parser: expr := term (('+'|'-') term)*, term := factor (('*'|'/')
    /// factor)*, factor := number | '(' expr ')'. Operates on characters, not token ids.
    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn parse(text: &str) -> Ast {
            let mut p = Parser {
                s: text.as_bytes(),
                i: 0,
            };
            let a = p.expr();
            p.ws();
            assert_eq!(p.i, p.s.len(), "trailing input in {text:?}");
            a
        }
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i] == b' ' {
                self.i += 1;
            }
        }
        fn peek(&mut self) -> Option<u8> {
            self.ws();
            self.s.get(self.i).copied()
        }
        fn expr(&mut self) -> Ast {
            let mut a = self.term();
            while let Some(c @ (b'+' | b'-')) = self.peek() {
                self.i += 1;
                a = Ast::Bin(c as char, Box::new(a), Box::new(self.term()));
            }
            a
        }
        fn term(&mut self) -> Ast {
            let mut a = self.factor();
            while let Some(c @ (b'*' | b'/')) = self.peek() {
                self.i += 1;
                a = Ast::Bin(c as char, Box::new(a), Box::new(self.factor()));
            }
            a
        }
        fn factor(&mut self) -> Ast {
            match self.peek() {
                Some(b'(') => {
                    self.i += 1;
                    let a = self.expr();
                    assert_eq!(self.peek(), Some(b')'));
                    self.i += 1;
                    a
                }
                Some(c) if c.is_ascii_digit() => {
                    let st = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    let d = std::str::from_utf8(&self.s[st..self.i]).unwrap();
                    assert!(d == "0" || !d.starts_with('0'), "leading zero {d}");
                    Ast::Num(d.parse().unwrap())
                }
                c => panic!("unexpected {c:?}"),
            }
        }
    }

    fn ops_in(a: &Ast) -> usize {
        match a {
            Ast::Num(_) => 0,
            Ast::Bin(_, l, r) => 1 + ops_in(l) + ops_in(r),
        }
    }

    /// Evaluate mod p (division by brute-force inverse search) or over integers (exact division,
    /// every intermediate value in 0..=m).
    fn eval(a: &Ast, modulus: Option<i64>, m: i64) -> i64 {
        match a {
            Ast::Num(v) => *v,
            Ast::Bin(c, l, r) => {
                let (x, y) = (eval(l, modulus, m), eval(r, modulus, m));
                let v = match (c, modulus) {
                    ('+', Some(p)) => (x + y) % p,
                    ('-', Some(p)) => (x - y).rem_euclid(p),
                    ('*', Some(p)) => x * y % p,
                    ('/', Some(p)) => {
                        assert_ne!(y, 0, "division by zero mod p");
                        let inv = (1..p).find(|z| y * z % p == 1).unwrap();
                        x * inv % p
                    }
                    ('+', None) => x + y,
                    ('-', None) => x - y,
                    ('*', None) => x * y,
                    ('/', None) => {
                        assert!(y != 0 && x % y == 0, "inexact division {x}/{y}");
                        x / y
                    }
                    _ => unreachable!(),
                };
                if modulus.is_none() {
                    assert!((0..=m).contains(&v), "intermediate {v} outside 0..={m}");
                }
                v
            }
        }
    }

    /// A level and its `key=value` overrides.
    type Case = (Option<&'static str>, Vec<(String, String)>);

    fn configs() -> Vec<Case> {
        vec![
            (Some("ops4"), sets(&[])),
            (Some("ops6"), sets(&[("output", "cot")])),
            (Some("ops5"), sets(&[("modulus", "97"), ("output", "cot")])),
            (Some("ops4"), sets(&[("mode", "int")])),
            (Some("ops6"), sets(&[("mode", "int"), ("output", "cot")])),
            (
                Some("ops8"),
                sets(&[("mode", "int"), ("output", "cot"), ("max_value", "1000")]),
            ),
        ]
    }

    #[test]
    fn independent_evaluator_agrees_on_every_step() {
        for (lvl, sets) in configs() {
            let t = build(NAME, lvl, &sets).unwrap();
            let cfg: ArithConfig = serde_json::from_value(t.config()).unwrap();
            let modulus = (cfg.mode == Mode::Mod).then_some(cfg.modulus as i64);
            let m = cfg.max_value as i64;
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Train, i);
                assert!(ex.tokens.len() <= t.max_len(), "max_len bound");
                assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab_size()));
                assert_eq!(*ex.tokens.last().unwrap(), EOS);
                assert_eq!(ex.tokens[ex.prompt_len - 1], EQ);
                let prompt = t.render(&ex.prompt()[..ex.prompt_len - 1]);
                let ast = Parser::parse(&prompt);
                assert_eq!(ops_in(&ast), cfg.ops as usize, "{prompt}");
                let v = eval(&ast, modulus, m);
                assert_eq!(json!(v), ex.meta["value"], "{prompt}");
                // Brackets are minimal: dropping any pair changes the parse.
                let chars: Vec<char> = prompt.chars().collect();
                for (open, _) in chars.iter().enumerate().filter(|(_, &c)| c == '(') {
                    let mut depth = 0;
                    let close = (open..chars.len())
                        .find(|&j| {
                            depth += (chars[j] == '(') as i32 - (chars[j] == ')') as i32;
                            depth == 0
                        })
                        .unwrap();
                    let without: String = chars
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != open && j != close)
                        .map(|(_, c)| c)
                        .collect();
                    assert_ne!(
                        Parser::parse(&without),
                        ast,
                        "redundant brackets in {prompt}"
                    );
                }
                // Answer: steps joined by '=', each with one operator fewer, ending in the value.
                let ans = &ex.answer()[..ex.answer().len() - 1];
                let steps: Vec<&[u32]> = ans.split(|&x| x == EQ).collect();
                let want_steps = if cfg.output == Output::Cot {
                    cfg.ops as usize
                } else {
                    1
                };
                assert_eq!(steps.len(), want_steps, "{}", t.render(ex.answer()));
                for (j, st) in steps.iter().enumerate() {
                    let a = Parser::parse(&t.render(st));
                    let expect_ops = if cfg.output == Output::Cot {
                        cfg.ops as usize - 1 - j
                    } else {
                        0
                    };
                    assert_eq!(ops_in(&a), expect_ops);
                    assert_eq!(eval(&a, modulus, m), v);
                }
                // Targets are exactly the answer tokens (EOS included), predicted from p - 1.
                assert_eq!(ex.targets.len(), ex.tokens.len() - ex.prompt_len);
                assert!(ex
                    .targets
                    .iter()
                    .all(|&(p, tok)| ex.tokens[p as usize + 1] == tok));
                assert_eq!(ex.meta["ops"], json!(cfg.ops));
                assert_eq!(
                    ex.meta["modulus"],
                    modulus.map(|p| json!(p)).unwrap_or(Value::Null)
                );
            }
        }
    }

    #[test]
    fn cot_steps_evaluate_one_innermost_operation() {
        let t = build(
            NAME,
            Some("ops5"),
            &[
                ("mode".into(), "int".into()),
                ("output".into(), "cot".into()),
            ],
        )
        .unwrap();
        let ex = generate(t.as_ref(), Split::Test, 0);
        let text = t.render(&ex.tokens);
        assert!(text.ends_with("<eos>"), "{text}");
        // Consecutive expressions differ by exactly one operator.
        let parts: Vec<&str> = text.trim_end_matches(" <eos>").split(" = ").collect();
        assert_eq!(parts.len(), 6);
        for w in parts.windows(2) {
            assert_eq!(
                ops_in(&Parser::parse(w[0])),
                ops_in(&Parser::parse(w[1])) + 1
            );
        }
    }

    #[test]
    fn verifier_accepts_own_answer_rejects_corrupted() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (lvl, sets) in configs() {
            let t = build(NAME, lvl, &sets).unwrap();
            for i in 0..300 {
                let ex = generate(t.as_ref(), Split::Test, i);
                let ans = ex.answer().to_vec();
                assert!(t.score(&ex, &ans));
                assert!(t.score(&ex, &ans[..ans.len() - 1]), "without EOS");
                // Corrupt one digit / residue of the final number.
                let last_eq = ans.iter().rposition(|&x| x == EQ).map_or(0, |i| i + 1);
                let mut bad = ans.clone();
                let j = rng.gen_range(last_eq..ans.len() - 1);
                let n_ids = t.vocab_size() as u32 - NUM0;
                // Any other residue / digit (a leading zero is a wrong answer too).
                bad[j] = NUM0 + (bad[j] - NUM0 + rng.gen_range(1..n_ids)) % n_ids;
                assert!(!t.score(&ex, &bad), "{}", t.render(&bad));
                // Extra digit, missing answer, empty.
                let mut longer = ans[..ans.len() - 1].to_vec();
                longer.push(NUM0 + 1);
                assert!(!t.score(&ex, &longer));
                assert!(!t.score(&ex, &[]));
                assert!(!t.score(&ex, &[EQ, EOS]));
            }
        }
    }

    #[test]
    fn max_len_is_a_true_bound() {
        for ops in [1u32, 2, 3, 6] {
            for out in ["direct", "cot"] {
                let ops = ops.to_string();
                let s = sets(&[
                    ("mode", "int"),
                    ("ops", &ops),
                    ("output", out),
                    ("max_value", "99"),
                ]);
                let t = build(NAME, None, &s).unwrap();
                let longest = (0..2000)
                    .map(|i| generate(t.as_ref(), Split::Train, i).tokens.len())
                    .max()
                    .unwrap();
                assert!(
                    longest <= t.max_len(),
                    "ops {ops} {out}: {longest} > {}",
                    t.max_len()
                );
            }
        }
    }

    #[test]
    fn range_validation() {
        assert_rejected(
            NAME,
            None,
            &[
                ("modulus", "12", "modulus"),
                ("modulus", "1009", "modulus"),
                ("max_value", "0", "max_value"),
                ("ops", "0", "ops"),
                ("ops", "65", "ops"),
                ("mode", "float", "unknown variant `float`"),
                ("output", "steps", "unknown variant `steps`"),
            ],
        );
        let mut c = info().defaults;
        c["depth"] = json!(3);
        assert!(Arith::from_json(c)
            .err()
            .unwrap()
            .to_string()
            .contains("unknown field"));
    }

    #[test]
    fn rendering_vocab_and_chance() {
        let t = build(NAME, None, &[("mode".into(), "int".into())]).unwrap();
        assert_eq!(t.vocab_size(), 19);
        let toks = [
            LPAR,
            NUM0 + 7,
            ADD,
            NUM0 + 5,
            RPAR,
            DIV,
            NUM0 + 1,
            NUM0 + 2,
            EQ,
            NUM0 + 1,
            EOS,
        ];
        assert_eq!(t.render(&toks), "(7 + 5) / 12 = 1 <eos>");
        assert!((t.chance() - 1.0 / 21.0).abs() < 1e-12);
        let m = build(NAME, None, &[]).unwrap();
        assert_eq!(m.vocab_size(), 20);
        assert_eq!(m.render(&[NUM0 + 10, MUL, NUM0 + 3]), "10 * 3");
        assert!((m.chance() - 1.0 / 11.0).abs() < 1e-12);
        assert_eq!(m.metric(), Metric::Generate);
        assert_eq!(m.eos_id(), Some(EOS));
        assert_eq!(Arith::from_json(m.config()).unwrap().config(), m.config());
    }

    #[test]
    fn reference_solutions_are_valid_step_by_step_and_corrupted_ones_are_not() {
        for sets_ in [
            sets(&[("mode", "int"), ("output", "cot")]),
            sets(&[("output", "cot")]),
            sets(&[("mode", "int")]),
        ] {
            let t = build(NAME, Some("ops4"), &sets_).unwrap();
            for ex in crate::generate_range(t.as_ref(), Split::Test, 0, 50) {
                assert_eq!(
                    t.steps_valid(&ex, ex.answer()),
                    Some(true),
                    "{}",
                    t.render(&ex.tokens)
                );
                // A wrong final number breaks validity; an unparsable step too.
                let mut bad = ex.answer().to_vec();
                let last = bad.iter().rposition(|&x| x >= NUM0).unwrap();
                bad[last] = if bad[last] == NUM0 { NUM0 + 1 } else { NUM0 };
                assert_eq!(t.steps_valid(&ex, &bad), Some(false));
                assert_eq!(t.steps_valid(&ex, &[ADD, EQ]), Some(false));
                assert_eq!(t.steps_valid(&ex, &[]), Some(false));
            }
        }
    }
}
