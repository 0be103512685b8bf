#!/usr/bin/env bash
# The README's figures: what the main job draws after the default run (`harness --task mqar`) and
# after the same run with two seeds, copied to docs/figures/mqar-seeds{1,2}/. Runs committed under
# results/reproduction/runs/ with the same spec (so the same id) are reused; any other is trained.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HARNESS:-$(scripts/target-dir.sh)/release/harness}
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

# The diagnostics of the default run's two models (`harness analyze`), which need the runs' saved
# weights: the default run is trained into $DEFAULT_RUN (kept; a finished run there is reused).
# SKIP_ANALYZE=1 leaves docs/figures/analysis/ as it is.
if [ "${SKIP_ANALYZE:-0}" != 1 ]; then
  run=${DEFAULT_RUN:-runs/readme-default}
  "$bin" --task mqar --out "$run" --quiet >/dev/null
  work=$(mktemp -d)
  "$bin" analyze "$run" --out "$work" >/dev/null
  out=docs/figures/analysis
  rm -rf "$out"
  mkdir -p "$out"
  cp "$work"/*.svg "$out/"
  for a in "$work"/*/analysis.json; do cp "$a" "$out/$(basename "$(dirname "$a")").analysis.json"; done
  rm -rf "$work"
  echo "wrote $out: $(ls "$out" | tr '\n' ' ')"
fi
