#!/usr/bin/env python3
"""Side-by-side CPU training throughput: our Rust `harness bench train` vs the PyTorch eager
reference (bench/torch_reference.py), run alternately on the same machine with the same thread
count, so that load changes hit both.

Install PyTorch first (PyPI only; the default Linux wheel also pulls the CUDA wheels, ~3 GB):

    pip install -r bench/requirements.txt        # torch==2.15.0
    # or, where download.pytorch.org is reachable, the much smaller CPU-only build:
    # pip install torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu

Build the Rust binary, then compare (use a quiet machine for figures you report):

    cargo build --release -p harness
    python3 bench/compare_torch.py --threads 2 --rounds 3 --warmup 3 --repeats 10
    python3 bench/compare_torch.py --configs tiny --rounds 1 --repeats 3 \
        --harness /work/target-bench/release/harness

For each config and round the order is: rust llama, torch llama, rust lime, torch lime. Each
measurement is a fresh process (init + --warmup untimed steps + median of --repeats steps; 3 and
10 by default, the protocol PyTorch's steady state needs); the table
reports the median over rounds of those per-process medians, and the min-max over rounds.
Threads: RAYON_NUM_THREADS (Rust/candle) and torch.set_num_threads via --threads plus
torch.set_num_interop_threads(1) (torch);
OMP_NUM_THREADS and MKL_NUM_THREADS are set to the same number for both processes.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def core_counts():
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    physical = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip():
                    if core is not None:
                        physical.add((phys, core))
                    phys = core = None
            if core is not None:
                physical.add((phys, core))
    except OSError:
        pass
    return logical, usable, len(physical) or None


def thread_env(threads):
    env = dict(os.environ)
    n = str(threads)
    env.update(RAYON_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    return env


def parse_rust_table(text, config, model):
    """Tokens/s and ms/step of the (config, model) row of the Markdown table of `bench train`."""
    header = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            if "tokens/s" in cells:
                header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # separator row
        row = dict(zip(header, cells))
        if row.get("config") == config and row.get("model") == model:
            return float(row["tokens/s"]), float(row["ms/step"]), row.get("fwd / bwd / optim ms", "")
    raise RuntimeError(f"no row for {config}/{model} in the harness output:\n{text}")


def run_rust(harness, config, model, repeats, threads, device="cpu", precision="f32", warmup=3):
    cmd = [harness, "bench", "train", "--configs", config, "--models", model, "--repeats", str(repeats),
           "--warmup", str(warmup), "--device", device, "--precision", precision]
    out = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    tps, ms, split = parse_rust_table(out.stdout, config, model)
    gemm = re.search(r"GEMM rate \(best 1024\^3 f32 matmul\) ([0-9.]+) GFLOP/s", out.stdout)
    kernel = re.search(r"GEMM kernels: ([^;\n]+)", out.stdout)
    return {"impl": "rust", "config": config, "model": model, "tokens_per_s": tps, "ms_per_step": ms,
            "split_ms": split, "gemm_gflops": float(gemm.group(1)) if gemm else None,
            "gemm_kernels": kernel.group(1).strip() if kernel else None}


def run_torch(python, config, model, repeats, threads, optim_impl, device="cpu", precision="f32", warmup=3,
              compile=False):
    cmd = [python, os.path.join(HERE, "torch_reference.py"), "--config", config, "--model", model,
           "--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(threads), "--optim-impl", optim_impl,
           "--device", device, "--precision", precision] + (["--compile"] if compile else [])
    out = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    for line in out.stdout.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("impl", "").startswith("torch") and rec.get("config") == config and rec.get("model") == model:
            rec["split_ms"] = f"{rec['fwd_ms']:.0f} / {rec['bwd_ms']:.0f} / {rec['optim_ms']:.0f}"
            return rec
    raise RuntimeError(f"no torch JSON line for {config}/{model}:\n{out.stdout}")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def torch_version(python):
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "torch not importable"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rust vs PyTorch CPU training tokens/s, run alternately.")
    ap.add_argument("--configs", default="default,tiny,mqar,medium")
    ap.add_argument("--models", default="llama,lime")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per config (median reported)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per process (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per process first")
    ap.add_argument("--threads", type=int, default=2, help="threads for both implementations")
    ap.add_argument("--harness", default=os.path.join(REPO, "target", "release", "harness"),
                    help="path of the release harness binary")
    ap.add_argument("--python", default=sys.executable, help="python with torch installed")
    ap.add_argument("--optim-impl", default="default", choices=("default", "loop", "foreach", "fused"),
                    help="passed to torch_reference.py")
    ap.add_argument("--json-out", help="also write every raw measurement to this file (JSON lines)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both implementations")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="bf16: the harness's --precision bf16 vs torch.autocast(bfloat16)")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile (inductor) beside eager, in the same rounds")
    args = ap.parse_args(argv)

    if not os.access(args.harness, os.X_OK):
        ap.error(f"harness binary not found at {args.harness} (cargo build --release -p harness)")
    configs = [c for c in args.configs.split(",") if c]
    models = [m for m in args.models.split(",") if m]

    impls = ("rust", "torch", "torch-compile") if args.compile else ("rust", "torch")
    raw = []
    t_start = time.time()
    for c in configs:
        for rnd in range(args.rounds):
            for m in models:
                for impl in impls:
                    if impl == "rust":
                        rec = run_rust(args.harness, c, m, args.repeats, args.threads, args.device,
                                       args.precision, args.warmup)
                    else:
                        rec = run_torch(args.python, c, m, args.repeats, args.threads, args.optim_impl,
                                        args.device, args.precision, args.warmup, impl == "torch-compile")
                    rec["round"] = rnd
                    raw.append(rec)
                    print(f"# round {rnd + 1}/{args.rounds} {c:7s} {m:5s} {impl:13s} "
                          f"{rec['tokens_per_s']:10.0f} tok/s  {rec['ms_per_step']:9.1f} ms/step",
                          file=sys.stderr, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            for rec in raw:
                f.write(json.dumps(rec) + "\n")

    def pick(c, m, impl):
        return [r for r in raw if r["config"] == c and r["model"] == m and r["impl"] == impl]

    others = [i for i in impls if i != "rust"]
    names = {"torch": "torch eager", "torch-compile": "torch.compile"}
    lines = [
        "| config | model | rust tokens/s | " + " | ".join(f"{names[i]} tokens/s" for i in others)
        + " | " + " | ".join(f"rust / {names[i]}" for i in others)
        + " | rust ms/step (fwd / bwd / optim) | " + " | ".join(f"{names[i]} ms/step (fwd / bwd / optim)" for i in others)
        + " | rust min-max | " + " | ".join(f"{names[i]} min-max" for i in others) + " |",
        "|---|---|" + "---:|" * (1 + 2 * len(others)) + "---|" * (1 + len(others)) + "---|" * (1 + len(others)),
    ]
    for c in configs:
        for m in models:
            recs = {i: pick(c, m, i) for i in impls}
            med = {i: median([r["tokens_per_s"] for r in recs[i]]) for i in impls}
            # The split shown is the one of the round whose tokens/s is closest to the median.
            mid = {i: min(recs[i], key=lambda r: abs(r["tokens_per_s"] - med[i])) for i in impls}
            cells = [c, m, f"{med['rust']:.0f}"] + [f"{med[i]:.0f}" for i in others]
            cells += [f"{med['rust'] / med[i]:.2f}x" for i in others]
            cells += [f"{mid[i]['ms_per_step']:.1f} ({mid[i]['split_ms']})" for i in impls]
            cells += [f"{min(r['tokens_per_s'] for r in recs[i]):.0f}-{max(r['tokens_per_s'] for r in recs[i]):.0f}"
                      for i in impls]
            lines.append("| " + " | ".join(cells) + " |")
    logical, usable, physical = core_counts()
    try:
        load = "load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load avg n/a"
    print("\n".join(lines))
    print()
    def rates(impl):
        xs = [r["gemm_gflops"] for r in raw if r["impl"].startswith(impl) and r.get("gemm_gflops")]
        return f"{median(xs):.0f} GFLOP/s (median of {len(xs)} processes)" if xs else "n/a"
    kernels = sorted({r["gemm_kernels"] for r in raw if r.get("gemm_kernels")})
    print(f"1024^3 f32 matmul, best of 5 per process: rust {rates('rust')} "
          f"[{', '.join(kernels) or 'kernels n/a'}], torch {rates('torch')}")
    print(f"machine: {cpu_model()}; {physical or '?'} physical cores, {logical} logical CPUs "
          f"({usable} usable); torch {torch_version(args.python)} (optimizer: {args.optim_impl}); "
          f"threads: RAYON_NUM_THREADS={args.threads} (rust), torch.set_num_threads({args.threads}), "
          f"set_num_interop_threads(1), OMP/MKL_NUM_THREADS={args.threads}; per process {args.warmup} warm-up "
          f"+ median of {args.repeats} steps, "
          f"median over {args.rounds} alternating rounds; {load} at the end; wall {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
