#!/usr/bin/env bash
# Workers started by Open MPI's mpirun: each gets its place from OMPI_COMM_WORLD_* and the
# hetmix workers bootstrap hmcomm from it.
#   test_mpirun.sh <mpirun> <hetmix executable>
set -uo pipefail
mpirun=${1:?usage: test_mpirun.sh <mpirun> <hetmix>}
hetmix=${2:?usage: test_mpirun.sh <mpirun> <hetmix>}
# Debian's Open MPI refuses root unless told so; CI containers run as root. 2 cores, 4 ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp -d /tmp/hm-mpirun-XXXXXX)
trap 'rm -rf "$out"' EXIT
fail() { echo "test_mpirun: FAIL: $*" >&2; exit 1; }
n=4

timeout 60 "$mpirun" -np $n --oversubscribe sh -c 'env > "$0/env.$OMPI_COMM_WORLD_RANK"' "$out" ||
  fail "mpirun exited with $?"
for r in $(seq 0 $((n - 1))); do
  f=$out/env.$r
  [ -s "$f" ] || fail "rank $r wrote no environment"
  grep -qx "OMPI_COMM_WORLD_RANK=$r" "$f" || fail "rank $r: OMPI_COMM_WORLD_RANK wrong"
  grep -qx "OMPI_COMM_WORLD_SIZE=$n" "$f" || fail "rank $r: OMPI_COMM_WORLD_SIZE wrong"
  grep -qx "OMPI_COMM_WORLD_LOCAL_RANK=$r" "$f" || fail "rank $r: OMPI_COMM_WORLD_LOCAL_RANK wrong"
  grep -qx "OMPI_COMM_WORLD_LOCAL_SIZE=$n" "$f" || fail "rank $r: OMPI_COMM_WORLD_LOCAL_SIZE wrong"
done
echo "test_mpirun: $n ranks saw OMPI_COMM_WORLD_RANK 0..$((n - 1)), SIZE, LOCAL_RANK, LOCAL_SIZE"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
timeout 90 "$mpirun" -np $n --oversubscribe -x HETMIX_STORE_ADDR=127.0.0.1:$port -x HETMIX_SECRET="$secret" \
  "$hetmix" worker --selftest >"$out/selftest.out" 2>&1 ||
  { cat "$out/selftest.out" >&2; fail "hetmix worker --selftest under mpirun failed"; }
n_ok=$(grep -c 'selftest ok' "$out/selftest.out" || true)
[ "$n_ok" -eq $n ] || { cat "$out/selftest.out" >&2; fail "$n_ok of $n workers passed"; }
grep -q 'source openmpi' "$out/selftest.out" || { cat "$out/selftest.out" >&2; fail "rank not taken from Open MPI"; }
echo "test_mpirun: $n hetmix workers bootstrapped hmcomm from Open MPI's environment"

# train through mpirun: 2 stages of the tiny model
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
timeout 120 "$mpirun" -np 2 --oversubscribe -x HETMIX_STORE_ADDR=127.0.0.1:$port -x HETMIX_SECRET="$secret" \
  "$hetmix" worker --model tiny --stages 0,3,4 --micro 3 --steps 4 --batch 2 --data-dir "$out/data" \
  >"$out/train.out" 2>&1 || { cat "$out/train.out" >&2; fail "training under mpirun failed"; }
grep -q 'step     4/4' "$out/train.out" || { cat "$out/train.out" >&2; fail "no progress line for step 4"; }
echo "test_mpirun: trained 4 steps through mpirun (2 stages): $(grep '^done' "$out/train.out")"
