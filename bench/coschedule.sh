#!/usr/bin/env bash
# Two training processes on one machine (BENCHMARKS.md, "Two runs on one machine"): the training
# step of each model timed by one process alone, by two identical processes at once with the
# default threads each, and by two at once with the CPUs split between them (taskset; the harness
# then takes as many threads as it may use). Run on an otherwise idle machine:
#   bench/coschedule.sh [MODELS]          (default llama,mhc; HARNESS=path/to/harness)
# Prints a markdown table, one row per process and setting.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HARNESS:-$(scripts/target-dir.sh)/release/harness}
models=${1:-llama,mhc}
n=$(nproc)
[ "$n" -ge 2 ] || { echo "coschedule: needs at least 2 CPUs"; exit 1; }
half=$((n / 2))
args=(bench train --configs mqar --models "$models" --warmup 3 --repeats 10)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rows() { grep "^| mqar" "$1" | sed "s/^| /| $2 /"; }

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $n CPUs; $bin ${args[*]}"
echo "| setting | config | model | ms/step | fwd / bwd / optim ms | tokens/s | GFLOP/s | of GEMM rate |"
"$bin" "${args[@]}" >"$out/alone"
rows "$out/alone" "one process |"
"$bin" "${args[@]}" >"$out/a" &
"$bin" "${args[@]}" >"$out/b"
wait
rows "$out/a" "two, default threads (1st) |"
rows "$out/b" "two, default threads (2nd) |"
taskset -c "0-$((half - 1))" "$bin" "${args[@]}" >"$out/a" &
taskset -c "$half-$((n - 1))" "$bin" "${args[@]}" >"$out/b"
wait
rows "$out/a" "two, CPUs split (1st) |"
rows "$out/b" "two, CPUs split (2nd) |"
grep '^device' "$out/alone"
