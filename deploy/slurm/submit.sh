#!/usr/bin/env bash
# Submit a sweep as an N-task Slurm array and its render step after it:
#   deploy/slurm/submit.sh PLAN.toml N [extra sbatch options...]
# Prints the two job ids. The plan's `out` (default `runs`) must be on a shared filesystem.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plan=${1:?usage: submit.sh PLAN.toml N [sbatch options]}
n=${2:?usage: submit.sh PLAN.toml N [sbatch options]}
shift 2
out=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$plan" | head -1)
out=${out:-runs}
array=$(sbatch --parsable --array=0-$((n - 1)) "$@" "$here/sweep.sbatch" "$plan")
render=$(sbatch --parsable --dependency=afterok:"$array" "$@" "$here/render.sbatch" "$out")
echo "$array $render"
