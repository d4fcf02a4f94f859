#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on loopback, for tests: munged, slurmctld and slurmd
# from Debian's packages, run directly (no systemd) with all state in one temp directory.
#
#   source slurm_cluster.sh
#   hm_slurm_start            # sets SLURM_CONF, HM_SLURM_DIR, HM_SLURM_NODE; waits for "idle"
#   srun -n 4 ...             # use it
#   hm_slurm_stop             # kills the daemons, removes the directory (idempotent)
#
# Needs root (slurmd runs jobs as the submitting user and must be able to switch to it) and
# the packages slurmctld slurmd slurm-client munge (scripts/install-deps.sh).
# hm_slurm_start returns 77 (the "skipped" code) when those are missing, 1 on a real failure,
# after printing the daemons' logs so a CI failure can be read without rerunning.

HM_SLURM_DIR=""
HM_SLURM_NODE=hmnode
HM_SLURM_START_TIMEOUT=${HM_SLURM_START_TIMEOUT:-60}

hm_slurm_log() { echo "slurm-cluster: $*" >&2; }

hm_slurm_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

hm_slurm_dump_logs() {
  [ -n "$HM_SLURM_DIR" ] || return 0
  local f
  for f in munged.log slurmctld.log slurmd.log; do
    if [ -s "$HM_SLURM_DIR/$f" ]; then
      echo "----- $f (last 40 lines)" >&2
      tail -n 40 "$HM_SLURM_DIR/$f" >&2
    fi
  done
}

# Kills a daemon by its pid file, SIGTERM then SIGKILL, waiting with a deadline.
hm_slurm_kill_pidfile() {
  local pidfile=$1 pid i
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

hm_slurm_stop() {
  [ -n "$HM_SLURM_DIR" ] || return 0
  # slurmd first (it owns the job steps), then the controller, then munge
  hm_slurm_kill_pidfile "$HM_SLURM_DIR/slurmd.pid"
  hm_slurm_kill_pidfile "$HM_SLURM_DIR/slurmctld.pid"
  hm_slurm_kill_pidfile "$HM_SLURM_DIR/munged.pid"
  rm -rf "$HM_SLURM_DIR"
  HM_SLURM_DIR=""
}

hm_slurm_start() {
  local b
  for b in munged slurmctld slurmd srun sinfo; do
    if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ]; then
      hm_slurm_log "$b not installed (scripts/install-deps.sh installs Slurm and munge)"
      return 77
    fi
  done
  if [ "$(id -u)" -ne 0 ]; then
    hm_slurm_log "needs root to run slurmd"
    return 77
  fi
  export PATH="$PATH:/usr/sbin:/sbin"

  HM_SLURM_DIR=$(mktemp -d /tmp/hm-slurm-XXXXXX)
  chmod 755 "$HM_SLURM_DIR"
  local d=$HM_SLURM_DIR
  mkdir -p "$d/state" "$d/spool" "$d/munge"
  chmod 700 "$d/munge"

  # munge: a fresh key, its socket and files inside our directory
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$d/munge/munge.key"
  if ! munged --force --key-file="$d/munge/munge.key" --socket="$d/munge/munge.sock" \
      --pid-file="$d/munged.pid" --log-file="$d/munged.log" --seed-file="$d/munge/seed" \
      >"$d/munged.out" 2>&1; then
    hm_slurm_log "munged did not start"; cat "$d/munged.out" >&2; hm_slurm_dump_logs; return 1
  fi

  local ctld_port slurmd_port host cpus
  ctld_port=$(hm_slurm_free_port)
  slurmd_port=$(hm_slurm_free_port)
  host=$(hostname -s)
  cpus=$(nproc)
  cat >"$d/slurm.conf" <<EOF
ClusterName=hetmixtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.sock
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$HM_SLURM_NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=hetmix Nodes=$HM_SLURM_NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  # no cgroups in a container without systemd: tracking by /proc (linuxproc) needs none
  cat >"$d/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
  export SLURM_CONF=$d/slurm.conf

  slurmctld -i -f "$SLURM_CONF" >"$d/slurmctld.out" 2>&1 || {
    hm_slurm_log "slurmctld did not start"; cat "$d/slurmctld.out" >&2; hm_slurm_dump_logs; return 1; }
  slurmd -N "$HM_SLURM_NODE" -f "$SLURM_CONF" >"$d/slurmd.out" 2>&1 || {
    hm_slurm_log "slurmd did not start"; cat "$d/slurmd.out" >&2; hm_slurm_dump_logs; return 1; }

  local deadline=$((SECONDS + HM_SLURM_START_TIMEOUT)) state=""
  while [ $SECONDS -lt $deadline ]; do
    state=$(sinfo -h -n "$HM_SLURM_NODE" -o %t 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mix|alloc) hm_slurm_log "node $HM_SLURM_NODE is $state (conf $SLURM_CONF)"; return 0 ;;
    esac
    sleep 0.5
  done
  hm_slurm_log "node $HM_SLURM_NODE not idle after ${HM_SLURM_START_TIMEOUT}s (state '$state')"
  sinfo -N -l >&2 2>&1 || true
  hm_slurm_dump_logs
  return 1
}
