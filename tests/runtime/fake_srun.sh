#!/usr/bin/env bash
# Stands in for `srun -n N cmd...` on this host for test_restart: starts N tasks with the SLURM_*
# variables hmcomm bootstraps from, and when one fails stops the others (SIGTERM) and exits with
# its status, as srun --kill-on-bad-exit=1 does.
#   fake_srun.sh -n N cmd [args...]
set -u
[ "${1:-}" = "-n" ] || { echo "usage: fake_srun.sh -n N cmd [args...]" >&2; exit 2; }
n=$2
shift 2
pids=()
for r in $(seq 0 $((n - 1))); do
  SLURM_PROCID=$r SLURM_NTASKS=$n SLURM_LOCALID=$r SLURM_NTASKS_PER_NODE=$n SLURM_JOB_NODELIST=localhost \
    SLURM_JOB_ID=1 SLURM_STEP_ID=0 "$@" &
  pids+=($!)
done
rc=0
for _ in "${pids[@]}"; do
  wait -n
  s=$?
  if [ $s -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$s
    kill -TERM "${pids[@]}" 2>/dev/null
  fi
done
exit $rc
