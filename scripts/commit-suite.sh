#!/usr/bin/env bash
# Commit the suite's finished runs (config.json, result.json, metrics.jsonl; never checkpoints)
# under results/suite/runs/ — its protocol's and its calibrations' (every candidate a calibration
# tried is kept, as evidence) — with the calibrations and SUITE.md / SUITE-quick.md rendered from
# exactly that set, so the committed reports re-render byte for byte (tests/suite.rs), even while
# `harness suite` trains on.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HARNESS:-$(scripts/target-dir.sh)/release/harness}
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
mkdir -p "$snap/runs" "$snap/calibration"
cp results/suite/calibration/*.json "$snap/calibration/"
for d in results/suite/runs/*/; do
  [ -f "$d/result.json" ] || continue # still training
  id=$(basename "$d")
  mkdir -p "$snap/runs/$id"
  cp "$d/config.json" "$d/result.json" "$d/metrics.jsonl" "$snap/runs/$id/"
done
"$bin" suite --render-only --results "$snap" --out SUITE.md
"$bin" suite --render-only --quick --models llama,lime --results "$snap" --out SUITE-quick.md
cp "$snap"/suite*.json "$snap"/*.svg results/suite/
git add SUITE.md SUITE-quick.md results/suite/suite*.json results/suite/*.svg results/suite/calibration/*.json
n=0
for d in "$snap"/runs/*/; do
  id=$(basename "$d")
  git add results/suite/runs/"$id"/{config.json,result.json,metrics.jsonl}
  n=$((n + 1))
done
git commit -q -m "results: the suite's $n finished runs, its calibrations and the SUITE.md they render to"
echo "committed $n runs"
