#!/usr/bin/env bash
# Starts a real single-node Slurm (slurm_cluster.sh), runs `srun -n 4` and checks that every
# task got its place in the job from Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) and that
# the hetmix workers bootstrapped from it; then a killed worker is restarted through srun
# (hetmix launch --launcher srun --max-restarts). Daemons and files are removed on every exit path.
#   test_srun.sh <path to the hetmix executable>
# Exit 0 pass, 1 fail, 77 skipped (no Slurm packages or not root).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hetmix=${1:?usage: test_srun.sh <hetmix executable>}
# shellcheck source=slurm_cluster.sh
source "$here/slurm_cluster.sh"

out=""
cleanup() {
  hm_slurm_stop
  [ -n "$out" ] && rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "test_srun: FAIL: $*" >&2; hm_slurm_dump_logs; exit 1; }

hm_slurm_start
rc=$?
[ $rc -eq 0 ] || exit $rc

ntasks=4
out=$(mktemp -d /tmp/hm-srun-XXXXXX)
chmod 755 "$out"

# 1. every task's view of the job, as Slurm set it
timeout 60 srun --overcommit -n $ntasks --time=1 \
  sh -c 'env > "$0/env.$SLURM_PROCID"' "$out" || fail "srun exited with $?"
for r in $(seq 0 $((ntasks - 1))); do
  f=$out/env.$r
  [ -s "$f" ] || fail "task $r wrote no environment"
  grep -qx "SLURM_PROCID=$r" "$f" || fail "task $r: SLURM_PROCID wrong: $(grep SLURM_PROCID "$f")"
  grep -qx "SLURM_NTASKS=$ntasks" "$f" || fail "task $r: SLURM_NTASKS wrong: $(grep SLURM_NTASKS "$f")"
  grep -qx "SLURM_LOCALID=$r" "$f" || fail "task $r: SLURM_LOCALID wrong: $(grep SLURM_LOCALID "$f")"
  grep -qx "SLURM_JOB_NODELIST=$HM_SLURM_NODE" "$f" || fail "task $r: SLURM_JOB_NODELIST wrong"
done
echo "test_srun: $ntasks tasks saw SLURM_PROCID 0..$((ntasks - 1)), SLURM_NTASKS=$ntasks, SLURM_LOCALID"

# 2. hetmix workers take their rank from Slurm and bootstrap hmcomm from it
port=$(hm_slurm_free_port)
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
timeout 90 env HETMIX_STORE_ADDR=127.0.0.1:$port HETMIX_SECRET="$secret" \
  srun --overcommit -n $ntasks --time=1 "$hetmix" worker --selftest >"$out/selftest.out" 2>&1 ||
  { cat "$out/selftest.out" >&2; fail "hetmix worker --selftest under srun failed"; }
n_ok=$(grep -c 'selftest ok' "$out/selftest.out" || true)
[ "$n_ok" -eq $ntasks ] || { cat "$out/selftest.out" >&2; fail "$n_ok of $ntasks workers passed"; }
grep -q 'source slurm' "$out/selftest.out" || { cat "$out/selftest.out" >&2; fail "rank not taken from Slurm"; }
echo "test_srun: $ntasks hetmix workers bootstrapped hmcomm from Slurm's environment"

# 3. train through srun: a 2-stage pipeline x 2 replicas of the tiny model on the default corpus
port=$(hm_slurm_free_port)
timeout 120 env HETMIX_STORE_ADDR=127.0.0.1:$port HETMIX_SECRET="$secret" \
  srun --overcommit -n 4 --time=2 "$hetmix" worker --model tiny --stages 0,2,4 --micro 2,2 --steps 5 \
  --batch 2 --data-dir "$out/data" --out "$out/train" >"$out/train.out" 2>&1 ||
  { cat "$out/train.out" >&2; fail "training under srun failed"; }
grep -q 'step     5/5' "$out/train.out" || { cat "$out/train.out" >&2; fail "no progress line for step 5"; }
[ "$(wc -l <"$out/train/metrics.jsonl")" -eq 5 ] || fail "metrics.jsonl does not have 5 steps"
echo "test_srun: trained 5 steps through srun (2 replicas x 2 stages): $(grep '^done' "$out/train.out")"

# 4. automatic restart through srun: rank 1 kills itself before step 5 on the first attempt;
# hetmix launch --launcher srun names it, starts srun again from the newest complete checkpoint
# (step 2's, or step 4's when its background write and manifest were done before the kill),
# and the job finishes
timeout 180 env HETMIX_FAULT="kill:rank=1:step=5" "$hetmix" launch -n 2 --max-restarts 2 \
  --launcher "srun --overcommit -n 2 --time=2 --kill-on-bad-exit=1" -- "$hetmix" worker --model tiny \
  --stages 0,2,4 --steps 6 --batch 2 --data-dir "$out/data" --dump "$out/restart" --ckpt-every 2 --quiet \
  >"$out/restart.out" 2>&1 || { cat "$out/restart.out" >&2; fail "the restarted job under srun did not finish"; }
grep -q 'attempt 0 failed: rank 1 ' "$out/restart.out" || { cat "$out/restart.out" >&2; fail "rank 1 not named"; }
grep -q 'restart 1: resuming from .*step-0000000[24]' "$out/restart.out" ||
  { cat "$out/restart.out" >&2; fail "not resumed from the checkpoint of step 2 or 4"; }
[ -s "$out/restart/stage1.hmc" ] || fail "no final checkpoint after the restart"
echo "test_srun: restart through srun: $(grep 'attempt 0 failed' "$out/restart.out" | cut -c1-160)"
exit 0
