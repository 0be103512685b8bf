#!/usr/bin/env bash
# The one build of the deploy images (and of CI's check of them): the release `harness` binary,
# copied to dist/deploy/<flavour>/harness.
#   deploy/build.sh          # CPU (what deploy/Dockerfile runs, and CI)
#   deploy/build.sh cuda     # CUDA, through scripts/build-cuda.sh (deploy/Dockerfile.cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-cpu}
out=dist/deploy/$flavour
mkdir -p "$out"
case $flavour in
  cpu)
    cargo build --release --locked -p harness
    cp "$(scripts/target-dir.sh)/release/harness" "$out/harness"
    ;;
  cuda)
    scripts/build-cuda.sh
    cp "${CARGO_TARGET_DIR:-target/cuda}/release/harness" "$out/harness"
    ;;
  *)
    echo "deploy/build.sh: unknown flavour \`$flavour\` (cpu or cuda)" >&2
    exit 2
    ;;
esac
"$out/harness" --version
echo "built $out/harness"
