#!/usr/bin/env bash
# The Slurm path on a real Slurm: a one-node cluster on localhost (munged, slurmctld, slurmd from
# Debian's slurm-wlm and munge, installed here if missing), a 4-task array of a tiny sweep whose
# task 1 is requeued while it trains (killed and restarted: its run resumes from its checkpoint),
# the render step after it (--dependency=afterok), and the check that the merged leaderboard
# equals the unsharded sweep's (every column but wall-clock). Stops its daemons on exit.
# Needs root and apt. SKIP_SLURM_TEST=1 skips it (say why where you set it).
set -euo pipefail
if [ "${SKIP_SLURM_TEST:-0}" = 1 ]; then
  echo "slurm test: skipped (SKIP_SLURM_TEST=1)"
  exit 0
fi
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${HARNESS:-$(scripts/target-dir.sh)/release/harness}
[ -x "$bin" ] || cargo build --release -p harness
export HARNESS=$bin
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

tmp=$(mktemp -d)
host=$(hostname -s)
cleanup() {
  for p in "$tmp"/slurmd.pid "$tmp"/slurmctld.pid "$tmp"/munged.pid; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$tmp"
}
trap cleanup EXIT

# munge: a fresh key, the daemon on its own socket.
mkdir -p "$tmp"/munge "$tmp"/state "$tmp"/spool
dd if=/dev/urandom bs=1 count=1024 of="$tmp"/munge/munge.key 2>/dev/null
chmod 700 "$tmp"/munge
chmod 400 "$tmp"/munge/munge.key
sock=$tmp/munge/munge.socket
munged --force --key-file="$tmp"/munge/munge.key --socket="$sock" \
  --pid-file="$tmp"/munged.pid --log-file="$tmp"/munged.log --seed-file="$tmp"/munge/seed
cat >"$tmp"/slurm.conf <<CONF
ClusterName=limebench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF=$tmp/slurm.conf
slurmctld
slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 1
done
sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)' || { echo "slurm test: the node never came up"; cat "$tmp"/slurmd.log "$tmp"/slurmctld.log | tail -20; exit 1; }

# A tiny sweep: 2 models x 2 seeds = 4 cells, one per array task (deploy/tiny-plan.toml.in).
plan() {
  sed -e "s|@OUT@|$1|" -e "s|@STEPS@|600|" deploy/tiny-plan.toml.in
}
plan "$tmp/sharded" >"$tmp"/sharded.toml
plan "$tmp/whole" >"$tmp"/whole.toml
read -r array render < <(deploy/slurm/submit.sh "$tmp"/sharded.toml 4 --chdir="$tmp" --cpus-per-task=1)
echo "slurm test: array job $array, render job $render"

# What the jobs did, for a failure's message: each job's state, reason and exit code, the jobs'
# output, the controller's last words.
explain() {
  squeue -a -o '%i %T %r' 2>/dev/null || true
  scontrol show job "$array" 2>/dev/null | grep -E 'JobId=|JobState=|ExitCode=|Restarts=' || true
  scontrol show job "$render" 2>/dev/null | grep -E 'JobId=|JobState=|Dependency=' || true
  for f in "$tmp"/slurm-*.out; do [ -f "$f" ] && { echo "== $f"; tail -5 "$f"; }; done
  tail -20 "$tmp"/slurmctld.log
}
# An array task that ended badly leaves the render step waiting forever: say so at once.
fail_if_a_task_failed() {
  if squeue -h -j "$render" -o %r 2>/dev/null | grep -q DependencyNeverSatisfied; then
    echo "slurm test: an array task failed, the render step can never run"
    explain
    exit 1
  fi
}
# Requeue task 1 while its run trains (it has written metrics but no result yet).
run1=$("$bin" sweep "$tmp"/sharded.toml --dry-run | grep -oE 'mqar-[a-z0-9-]+' | sed -n 2p)
requeued=0
for _ in $(seq 1500); do
  d=$tmp/sharded/runs/$run1
  if [ -s "$d/metrics.jsonl" ] && [ ! -f "$d/result.json" ]; then
    scontrol requeue "${array}_1"
    echo "slurm test: requeued task 1 while $run1 trained"
    # A requeued job waits before it is eligible again; let it start as soon as it can.
    for _ in $(seq 50); do
      squeue -h -j "${array}_1" -o %T | grep -q PENDING && break
      sleep 0.2
    done
    scontrol update JobId="${array}_1" StartTime=now || true
    requeued=1
    break
  fi
  [ -f "$d/result.json" ] && { echo "slurm test: task 1 finished before it could be requeued"; exit 1; }
  fail_if_a_task_failed
  sleep 0.2
done
[ "$requeued" = 1 ] || { echo "slurm test: task 1 never started training within 300 s, nothing was requeued"; exit 1; }
t0=$SECONDS
for _ in $(seq 600); do
  [ -z "$(squeue -h -j "$array,$render" 2>/dev/null)" ] && break
  fail_if_a_task_failed
  sleep 1
done
echo "slurm test: array and render done $((SECONDS - t0)) s after the requeue"
[ -z "$(squeue -h -j "$array,$render")" ] || { echo "slurm test: jobs still queued"; explain; exit 1; }
[ -f "$tmp/sharded/leaderboard.csv" ] || { echo "slurm test: the render step wrote no leaderboard"; explain; exit 1; }

# Each task trained with the one CPU it was given (--cpus-per-task=1), not with the node's cores.
threads=$(sed -n 's/.*"device": *"cpu (\([0-9]*\) threads.*/\1/p' "$tmp"/sharded/runs/*/result.json | sort -u)
[ "$threads" = 1 ] || { echo "slurm test: array tasks trained with '$threads' threads, not 1"; exit 1; }

"$bin" sweep "$tmp"/whole.toml --quiet >/dev/null
bash deploy/slurm/render.sbatch "$tmp/whole" >/dev/null
strip() { python3 -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    r.pop("wall_clock_s")
print(sorted(tuple(sorted(r.items())) for r in rows))' "$1"; }
if [ "$(strip "$tmp/sharded/leaderboard.csv")" != "$(strip "$tmp/whole/leaderboard.csv")" ]; then
  echo "slurm test: the merged leaderboard differs from the unsharded one"
  diff "$tmp/sharded/leaderboard.csv" "$tmp/whole/leaderboard.csv" || true
  exit 1
fi
echo "slurm test: 4-task array (task 1 requeued mid-run) merged = unsharded leaderboard ($(($(wc -l <"$tmp/whole/leaderboard.csv") - 1)) rows)"
