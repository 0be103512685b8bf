#!/usr/bin/env bash
# The README's figures: what the main job draws after the default run (`harness --task mqar`) and
# after the same run with two seeds, copied to docs/figures/mqar-seeds{1,2}/. Runs committed under
# results/reproduction/runs/ with the same spec (so the same id) are reused; any other is trained.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HARNESS:-target/release/harness}
for seeds in 1 2; do
  work=$(mktemp -d)
  mkdir -p "$work/runs"
  for id in $("$bin" --task mqar --seeds "$seeds" --plan | awk -F'|' 'NR > 2 && NF > 3 { gsub(/ /, "", $2); print $2 }'); do
    src=results/reproduction/runs/$id
    if [ -f "$src/result.json" ]; then cp -r "$src" "$work/runs/"; fi
  done
  "$bin" --task mqar --seeds "$seeds" --out "$work" --quiet >/dev/null
  out=docs/figures/mqar-seeds$seeds
  rm -rf "$out"
  mkdir -p "$out"
  cp "$work"/*.svg "$out/"
  rm -rf "$work"
  echo "wrote $out: $(ls "$out" | tr '\n' ' ')"
done
