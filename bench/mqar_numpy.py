#!/usr/bin/env python3
"""Independent numpy implementation of Zoology's MQAR generator, as a speed baseline.

Algorithm (Zoology, Arora et al. 2023, `multiquery_ar`), re-implemented from its description:
  * keys: `kv` distinct ids from 1 .. vocab/2, values: `kv` distinct ids from vocab/2 .. vocab;
  * context `k1 v1 k2 v2 ...` (2*kv tokens);
  * query region of seq_len - 2*kv tokens with space = (seq_len - 2*kv) // 2 even slots; `kv` distinct
    slots drawn without replacement with p(g) ∝ a * g^(a-1), g = 1..space; key i is written at
    2*kv + 2*slot_i, its label (the value) at that same input position; everything else is filler 0
    (random_non_queries=False) and label -100.

Two implementations:
  --impl zoology     row-wise sampling with np.random.choice (one call per row per draw kind, as the
                     reference code does through np.apply_along_axis); this is what people run.
  --impl vectorized  a batched version (iid draws with redraw of rows holding a repeat for keys/values,
                     Efraimidis-Spirakis exponential keys for the weighted slots), to show the best
                     a straightforward numpy port can do.

Prints {"examples_per_s": ...} (plus the settings) as JSON.
"""
import argparse
import json
import time

import numpy as np


def gap_probs(space, power_a):
    g = np.arange(1, space + 1, dtype=np.float64)
    p = power_a * g ** (power_a - 1.0)
    return p / p.sum()


def mqar_zoology(n, vocab, seq_len, kv, power_a, seed):
    rs = np.random.RandomState(seed)
    ctx = 2 * kv
    half = vocab // 2
    key_pool = np.arange(1, half)
    val_pool = np.arange(half, vocab)
    keys = np.apply_along_axis(
        lambda row: rs.choice(row, size=kv, replace=False), 1, np.tile(key_pool, (n, 1)))
    vals = np.apply_along_axis(
        lambda row: rs.choice(row, size=kv, replace=False), 1, np.tile(val_pool, (n, 1)))
    space = (seq_len - ctx) // 2
    p = gap_probs(space, power_a)
    slots = np.apply_along_axis(
        lambda row: rs.choice(row, size=kv, replace=False, p=p), 1, np.tile(np.arange(space), (n, 1)))
    return assemble(keys, vals, slots, n, seq_len, kv)


def mqar_vectorized(n, vocab, seq_len, kv, power_a, seed):
    rng = np.random.default_rng(seed)
    ctx = 2 * kv
    half = vocab // 2
    keys = distinct_rows(rng, n, 1, half, kv)
    vals = distinct_rows(rng, n, half, vocab, kv)
    space = (seq_len - ctx) // 2
    p = gap_probs(space, power_a)
    # Efraimidis-Spirakis: the kv smallest Exp(1)/p_g are a successive weighted sample w/o replacement.
    e = rng.exponential(size=(n, space)) / p
    slots = np.argpartition(e, kv - 1, axis=1)[:, :kv] if kv < space else np.argsort(e, axis=1)
    return assemble(keys, vals, slots, n, seq_len, kv)


def distinct_rows(rng, n, lo, hi, kv):
    """n rows of kv distinct ints from lo..hi: draw iid, redraw the rows that have a repeat."""
    if 4 * kv > hi - lo:  # dense: random permutations
        return lo + np.argsort(rng.random((n, hi - lo)), axis=1)[:, :kv]
    out = rng.integers(lo, hi, size=(n, kv))
    bad = np.arange(n)
    while bad.size:
        s = np.sort(out[bad], axis=1)
        bad = bad[(s[:, 1:] == s[:, :-1]).any(axis=1)]
        out[bad] = rng.integers(lo, hi, size=(bad.size, kv))
    return out


def assemble(keys, vals, slots, n, seq_len, kv):
    ctx = 2 * kv
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = vals
    pos = ctx + 2 * slots
    np.put_along_axis(inputs, pos, keys, axis=1)
    labels = np.full((n, seq_len), -100, dtype=np.int64)
    np.put_along_axis(labels, pos, vals, axis=1)
    return inputs, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="examples to generate")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--kv", type=int, default=16)
    ap.add_argument("--power-a", type=float, default=0.01)
    ap.add_argument("--impl", choices=["zoology", "vectorized"], default="zoology")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    assert a.seq_len % 2 == 0 and 4 * a.kv <= a.seq_len and a.kv < a.vocab // 2
    f = mqar_zoology if a.impl == "zoology" else mqar_vectorized
    t0 = time.perf_counter()
    inputs, labels = f(a.n, a.vocab, a.seq_len, a.kv, a.power_a, a.seed)
    dt = time.perf_counter() - t0
    # Sanity: every example has kv supervised positions, each on a re-inserted key.
    assert ((labels != -100).sum(axis=1) == a.kv).all()
    print(json.dumps({
        "examples_per_s": a.n / dt,
        "impl": a.impl, "n": a.n, "vocab": a.vocab, "seq_len": a.seq_len, "kv": a.kv,
        "seconds": dt, "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
