//! # draw — the sampling primitives the generators share
//!
//! Datasets are pinned byte for byte (golden snapshots, `GENERATOR_VERSION`), so a helper here is
//! defined by *exactly which rng calls it makes, in which order*, not only by the law it samples:
//! each doc comment states the calls. Changing one reshuffles every dataset built on it and needs
//! a version bump.
//!
//! Index draws use `gen_range` over `usize` (64-bit draws) and id draws over `u32`, as the
//! generators always have. In particular [`shuffle`] is *not* rand's `SliceRandom::shuffle`
//! (which draws `u32` indices): the two give different permutations from the same rng, and
//! prosqa, which has always used rand's, keeps it.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `n` distinct ids from `lo..hi`, uniformly, in draw order: a uniform ordered `n`-tuple.
/// Rejection against the ids drawn so far while `n` is small next to the range
/// ([`distinct_by_rejection`], `4·n ≤ hi − lo`), partial Fisher–Yates otherwise
/// ([`distinct_by_shuffle`]), so both small and nearly-full draws stay cheap.
pub fn distinct(rng: &mut ChaCha8Rng, lo: u32, hi: u32, n: usize) -> Vec<u32> {
    if n * 4 <= (hi - lo) as usize {
        distinct_by_rejection(rng, lo, hi, n)
    } else {
        distinct_by_shuffle(rng, lo, hi, n)
    }
}

/// `n` distinct ids from `lo..hi` by rejection: `gen_range(lo..hi)` (u32) until `n` new ids have
/// been seen, in draw order. Expected cost grows without bound as `n` nears `hi − lo`; callers
/// with short tuples (MAD's motifs of at most 8 tokens) use it directly.
pub fn distinct_by_rejection(rng: &mut ChaCha8Rng, lo: u32, hi: u32, n: usize) -> Vec<u32> {
    debug_assert!(n <= (hi - lo) as usize);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let x = rng.gen_range(lo..hi);
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// `n` distinct ids from `lo..hi` by partial Fisher–Yates on `lo..hi`: for `i` in `0..n`,
/// swap slot `i` with slot `gen_range(i..hi − lo)` (usize), then keep the first `n` slots.
/// Exactly `n` rng draws; memory `hi − lo`.
pub fn distinct_by_shuffle(rng: &mut ChaCha8Rng, lo: u32, hi: u32, n: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (lo..hi).collect();
    let len = pool.len();
    for i in 0..n {
        let j = rng.gen_range(i..len);
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}

/// Uniform in-place permutation (Durstenfeld): for `i` from `len − 1` down to 1, swap slot `i`
/// with slot `gen_range(0..=i)` (usize). See the module docs for why this is not rand's shuffle.
pub fn shuffle<T>(rng: &mut ChaCha8Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}

/// Rejection sampling: run `attempt` (which draws from the caller's rng) up to `tries` times and
/// return its first `Some`, or `None` if every attempt was rejected. The rng is consumed exactly
/// by the attempts made, so an accepted draw is the same however large `tries` is.
pub fn first_accepted<T>(tries: u32, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    (0..tries).find_map(|_| attempt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The helpers replaced per-module loops; these pin them to those loops' rng use.
    #[test]
    fn draws_match_the_loops_they_replaced() {
        for (lo, hi, n) in [(0u32, 64u32, 8usize), (1, 4096, 16), (0, 10, 7), (5, 9, 4)] {
            let mut a = ChaCha8Rng::seed_from_u64(11);
            let mut b = a.clone();
            let got = distinct(&mut a, lo, hi, n);
            let range = (hi - lo) as usize;
            let want: Vec<u32> = if n * 4 <= range {
                let mut out = Vec::new();
                while out.len() < n {
                    let x = b.gen_range(lo..hi);
                    if !out.contains(&x) {
                        out.push(x);
                    }
                }
                out
            } else {
                let mut pool: Vec<u32> = (lo..hi).collect();
                for i in 0..n {
                    let j = b.gen_range(i..range);
                    pool.swap(i, j);
                }
                pool[..n].to_vec()
            };
            assert_eq!(got, want);
            assert_eq!(a.gen::<u64>(), b.gen::<u64>(), "same number of draws");
        }
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = a.clone();
        let mut v: Vec<usize> = (0..20).collect();
        shuffle(&mut a, &mut v);
        let mut w: Vec<usize> = (0..20).collect();
        for i in (1..w.len()).rev() {
            let j = b.gen_range(0..=i);
            w.swap(i, j);
        }
        assert_eq!(v, w);
        assert_eq!(a.gen::<u64>(), b.gen::<u64>());
    }

    #[test]
    fn first_accepted_stops_at_the_first_success() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut calls = 0;
        let got = first_accepted(100, || {
            calls += 1;
            let x: u32 = rng.gen_range(0..4);
            (x == 0).then_some(calls)
        });
        assert_eq!(got, Some(calls));
        assert_eq!(first_accepted(5, || None::<()>), None);
    }
}
