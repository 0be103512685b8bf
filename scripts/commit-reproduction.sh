#!/usr/bin/env bash
# Commit the finished runs under results/reproduction/runs/ (config.json, result.json,
# metrics.jsonl; never checkpoints) together with the REPRODUCTION.md, leaderboard and figures
# rendered from exactly that set — so the committed report always re-renders byte for byte
# (tests/reproduce.rs), even while `harness reproduce` is still training the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HARNESS:-$(scripts/target-dir.sh)/release/harness}
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
mkdir -p "$snap/runs"
n=0
for d in results/reproduction/runs/*/; do
  [ -f "$d/result.json" ] || continue # still training
  id=$(basename "$d")
  mkdir -p "$snap/runs/$id"
  cp "$d/config.json" "$d/result.json" "$d/metrics.jsonl" "$snap/runs/$id/"
  n=$((n + 1))
done
"$bin" reproduce --render-only --results "$snap" --out REPRODUCTION.md
cp "$snap"/leaderboard.* "$snap"/*.svg results/reproduction/ 2>/dev/null || true
git add REPRODUCTION.md results/reproduction/leaderboard.* results/reproduction/*.svg
for d in "$snap"/runs/*/; do
  id=$(basename "$d")
  git add results/reproduction/runs/"$id"/{config.json,result.json,metrics.jsonl}
  if [ -f "$d/router-heatmap.svg" ]; then
    cp "$d/router-heatmap.svg" "results/reproduction/runs/$id/"
    git add "results/reproduction/runs/$id/router-heatmap.svg"
  fi
done
git commit -q -m "results: $n finished reproduction runs and the REPRODUCTION.md they render to" \
  -m "Rendered by scripts/commit-reproduction.sh (harness reproduce --render-only) from exactly the committed run folders."
echo "committed $n runs"
