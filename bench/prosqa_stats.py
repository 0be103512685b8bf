#!/usr/bin/env python3
"""Structural statistics of ProsQA-style items (lime-bench's own script).

Usage: prosqa_stats.py FILE [FILE ...]
Each FILE is either a JSON array or JSONL of objects with the keys
`idx_to_symbol`, `edges`, `root`, `target`, `neg_target`, `question`, `steps` (the layout of
Coconut's released data; `cargo test -p tasks prosqa_dump -- --ignored` writes ours in it).
Prints one table of statistics used to compare the generator with the released data.
"""
import json
import sys
from collections import Counter, deque


def load(path):
    txt = open(path).read().strip()
    if txt.startswith("["):
        return json.loads(txt)
    return [json.loads(l) for l in txt.splitlines() if l.strip()]


def bfs(adj, src):
    dist = {src: 0}
    q = deque([src])
    while q:
        u = q.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist


def n_shortest(adj, src, dst):
    dist = bfs(adj, src)
    cnt = {src: 1}
    for u in sorted(dist, key=lambda x: dist[x]):
        for v in adj[u]:
            if dist.get(v) == dist[u] + 1:
                cnt[v] = cnt.get(v, 0) + cnt[u]
    return cnt.get(dst, 0)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def dist_str(c, total):
    return " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(c.items()))


def pct(xs):
    xs = sorted(xs)
    f = lambda x: f"{x:.2f}" if isinstance(x, float) else str(x)
    q = lambda p: f(xs[min(len(xs) - 1, int(p * len(xs)))])
    return f"min {f(xs[0])} p10 {q(0.1)} med {q(0.5)} p90 {q(0.9)} max {f(xs[-1])} mean {mean(xs):.2f}"


def stats(items):
    S = {}
    acc = lambda k, v: S.setdefault(k, []).append(v)
    for it in items:
        names = it["idx_to_symbol"]
        n = len(names)
        E = [tuple(e) for e in it["edges"]]
        m = len(E)
        adj = [[] for _ in range(n)]
        radj = [[] for _ in range(n)]
        for u, v in E:
            adj[u].append(v)
            radj[v].append(u)
        indeg = [len(r) for r in radj]
        outdeg = [len(a) for a in adj]
        r, t, d = it["root"], it["target"], it["neg_target"]
        persons = [i for i in range(n) if names[i][0].isupper()]
        acc("nodes", n)
        acc("edges", m)
        acc("edges/node", m / n)
        acc("topological (u<v)", all(u < v for u, v in E))
        acc("persons", len(persons))
        acc("persons have indeg 0", all(indeg[p] == 0 for p in persons))
        acc("indeg-0 nodes are persons", all(names[i][0].isupper() for i in range(n) if indeg[i] == 0))
        acc("root index", r)
        acc("root is lowest-numbered person", r == min(persons))
        acc("root out-degree", outdeg[r])
        dr = bfs(adj, r)
        hops = dr.get(t, -1)
        acc("hops (BFS root->target)", hops)
        acc("len(steps) == hops", len(it["steps"]) == hops)
        acc("target reachable", t in dr)
        acc("distractor reachable", d in dr)
        acc("root-reachable nodes (excl root)", len(dr) - 1)
        acc("max BFS depth from root", max(dr.values()))
        acc("target is at max BFS depth", hops == max(dr.values()))
        acc("#shortest root->target paths", n_shortest(adj, r, t))
        acc("target rel index t/(n-1)", round(t / (n - 1), 1))
        acc("distractor rel index", round(d / (n - 1), 1))
        acc("target index > distractor index", t > d)
        acc("target indeg", indeg[t])
        acc("distractor indeg", indeg[d])
        acc("target outdeg", outdeg[t])
        acc("distractor outdeg", outdeg[d])
        acc("target is sink", outdeg[t] == 0)
        acc("distractor is sink", outdeg[d] == 0)
        # who reaches each candidate
        reach = {p: bfs(adj, p) for p in persons}
        acc("persons reaching target", sum(t in reach[p] for p in persons))
        acc("persons reaching distractor", sum(d in reach[p] for p in persons))
        dd = [reach[p][d] for p in persons if d in reach[p]]
        acc("distractor BFS depth from nearest person", min(dd) if dd else -1)
        acc("distractor depth - hops", (min(dd) if dd else -1) - hops)
        # is the distractor's nearest person reaching also root-reachable nodes?
        # undirected distance from distractor to the root-reachable set
        und = [[] for _ in range(n)]
        for u, v in E:
            und[u].append(v)
            und[v].append(u)
        du = bfs(und, d)
        acc("undirected dist distractor->root-reachable set", min(du.get(x, 99) for x in dr))
        # ancestors of distractor that also reach root-reachable nodes (shared parents)
        anc_d = {x for x in range(n) if d in bfs(adj, x) and x != d}
        acc("distractor ancestors", len(anc_d))
        acc("target ancestors", sum(1 for x in range(n) if x != t and t in bfs(adj, x)))
        # candidate mention counts in the facts (a surface shortcut)
        q = it["question"]
        facts = q[: q.rfind("Is ")]
        sym = lambda i: names[i]
        cnt = lambda s: sum(1 for w in facts.replace(".", " ").split() if w == s)
        acc("target mentions", cnt(sym(t)))
        acc("distractor mentions", cnt(sym(d)))
        qq = q[q.rfind("Is ") :]
        a_first = qq.split(" or ")[0].split()[-1] == sym(t)
        acc("answer first", a_first)
        acc("facts == edges", facts.count(".") == m)
        for i in range(n):
            acc("out-degree (all nodes)", outdeg[i])
            if indeg[i] > 0:
                acc("in-degree (concept nodes)", indeg[i])
        # node classes by which persons reach them
        only_root = sum(1 for x in range(n) if x in dr and not any(x in reach[p] for p in persons if p != r))
        acc("nodes reached by root only (frac)", round(only_root / n, 1))
        # heuristic baselines (accuracy of picking by a surface rule; ties -> first candidate)
        def pick(score):
            st, sd = score(t), score(d)
            return st > sd or (st == sd and a_first)
        acc("H: pick higher index", pick(lambda x: x))
        acc("H: pick more in-edges", pick(lambda x: indeg[x]))
        acc("H: pick fewer out-edges", pick(lambda x: -outdeg[x]))
        acc("H: pick more mentions", pick(lambda x: cnt(sym(x))))
        acc("H: pick more ancestors", pick(lambda x: sum(1 for y in range(n) if y != x and x in bfs(adj, y))))
        acc("H: pick candidate with a concept parent", pick(lambda x: any(names[p][0].islower() for p in radj[x])))
        acc("H: pick first", True if a_first else False)
    return S


def summarize(S):
    out = {}
    for k, v in S.items():
        if isinstance(v[0], bool):
            out[k] = f"{100 * mean([float(x) for x in v]):.1f}%"
        elif k in ("hops (BFS root->target)", "persons", "root index", "#shortest root->target paths", "target indeg",
                   "distractor indeg", "target outdeg", "distractor outdeg", "persons reaching target",
                   "persons reaching distractor", "distractor BFS depth from nearest person", "distractor depth - hops",
                   "undirected dist distractor->root-reachable set", "target rel index t/(n-1)", "distractor rel index",
                   "root out-degree", "out-degree (all nodes)", "in-degree (concept nodes)", "nodes reached by root only (frac)",
                   "max BFS depth from root"):
            c = Counter(v)
            out[k] = f"mean {mean(v):.2f} | " + dist_str(c, len(v))
        else:
            out[k] = pct(v)
    return out


if __name__ == "__main__":
    res = []
    for f in sys.argv[1:]:
        items = load(f)
        res.append((f, len(items), summarize(stats(items))))
    if len(res) == 1:
        f, n, s = res[0]
        print(f"{f} ({n} items)")
        for k, v in s.items():
            print(f"  {k:50s} {v}")
    else:  # markdown table, one column per file
        print("| statistic | " + " | ".join(f"{f} ({n})" for f, n, _ in res) + " |")
        print("|---" * (len(res) + 1) + "|")
        for k in res[0][2]:
            print(f"| {k} | " + " | ".join(s.get(k, "") for _, _, s in res) + " |")
