#!/usr/bin/env bash
# Print cargo's target folder for this workspace — `target/` unless CARGO_TARGET_DIR (or a
# cargo config) says otherwise — so scripts find the binaries cargo built wherever they are.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
