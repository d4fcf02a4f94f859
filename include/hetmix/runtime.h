/* hetmix runtime: starting and supervising the workers of a job on one machine.
 *
 * hm_launch_run() is the library half of `hetmix launch`: it spawns N copies of a command with
 * the environment hmcomm bootstraps from (HETMIX_RANK, HETMIX_WORLD_SIZE, HETMIX_LOCAL_RANK,
 * HETMIX_LOCAL_WORLD_SIZE, HETMIX_STORE_ADDR on loopback, a fresh HETMIX_SECRET), forwards
 * SIGINT/SIGTERM/SIGHUP to them, and on the first worker that fails stops the rest (SIGTERM,
 * then SIGKILL after a grace period) and reports which rank failed and how. No worker outlives
 * the call: each leads its own session and process group (so the scheduler's autogroups treat
 * workers as separate jobs), every group is killed before returning, and each child asks the
 * kernel to kill it if the launcher dies (PR_SET_PDEATHSIG).
 *
 * Workers started by mpirun or Slurm's srun do not go through this file: they read their rank
 * from the launcher's environment with hm_launch_env_read() (include/hetmix/comm.h).
 *
 * hm_launch_with_restarts() adds failure detection through worker heartbeats and automatic
 * restarts from the newest complete checkpoint (docs/runtime.md, "Failure model"). */
#ifndef HETMIX_RUNTIME_H
#define HETMIX_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hm_launch_opts {
  int nworkers;            /* number of local workers (ranks 0..nworkers-1), > 0 */
  char *const *argv;       /* command each worker runs, NULL-terminated; argv[0] is looked up
                              in PATH when it has no '/' */
  int tag_output;          /* prefix every output line with "[rank R] " (through pipes) */
  int out_fd, err_fd;      /* where tagged stdout/stderr lines go [1, 2]; 0 takes the default */
  int grace_ms;            /* SIGTERM -> SIGKILL delay when stopping workers [2000] */
  int timeout_ms;          /* limit on the whole job; 0 = none (workers' own waits have
                              deadlines; a training run may last hours) */
  const char *store_host;  /* rendezvous host for HETMIX_STORE_ADDR ["127.0.0.1"]; loopback only */
  char *const *extra_env;  /* "NAME=value" entries added to every worker, NULL-terminated, or NULL */
  /* Failure detection beyond exits (docs/runtime.md, "Failure model"); off when NULL: */
  const char *heartbeat_dir; /* workers beat into this folder (set as HETMIX_HEARTBEAT_DIR) */
  int silence_ms;          /* silence floor: a rank that beat once and then stays silent for
                              max(this, HM_WATCH_FACTOR x the longest beat gap seen) failed
                              (stopped, frozen, dead) [HM_SILENCE_FLOOR_MS] */
  int step_deadline_ms;    /* progress watchdog floor: a rank that completed no step for
                              max(this, HM_WATCH_FACTOR x the longest step seen) is hung (each
                              phase, a checkpoint snapshot or an evaluation, timed on its own);
                              0: off */
  int first_step_deadline_ms; /* the deadline of a rank's first step, of a phase's first time
                              and of what follows the last step [max(60000, floor)] */
  int external;            /* 1: argv is a launcher (srun ... hetmix worker) that starts the
                              nworkers ranks itself: one process is spawned, given
                              HETMIX_STORE_ADDR and HETMIX_SECRET but no rank; the heartbeat
                              watch names ranks, a silent or hung one is killed when on this host */
  char *const *rank_netns; /* per rank (nworkers entries): the network namespace (a name under
                              /run/netns, as `ip netns` makes) the worker runs in, or NULL */
  char *const *const *rank_env; /* per rank: NULL-terminated "NAME=value" entries for that worker
                              only (before extra_env), or NULL */
} hm_launch_opts;

#define HM_LAUNCH_OPTS_INIT {0, NULL, 0, 0, 0, 0, 0, NULL, NULL, NULL, 0, 0, 0, 0, NULL, NULL}

/* The factor of the progress watchdog over the longest step (or checkpoint snapshot, or
 * evaluation) seen in the job, and of heartbeat silence over the longest gap between two beats
 * (docs/runtime.md, "Failure model": why 5). */
#define HM_WATCH_FACTOR 5
/* The default floors of the two deadlines: hetmix launch --silence-ms and --watchdog. */
#define HM_SILENCE_FLOOR_MS 1000
#define HM_WATCHDOG_FLOOR_MS 1000

/* How a failed rank was found. */
enum { HM_FAIL_NONE = 0, HM_FAIL_EXIT, HM_FAIL_SIGNAL, HM_FAIL_SILENT, HM_FAIL_HANG };

typedef struct hm_launch_result {
  int failed_rank;       /* first rank that failed, -1 when none did */
  int failed_pid;        /* its process id, 0 when none */
  int exit_code;         /* its exit status when it exited, else -1 */
  int term_signal;       /* the signal that killed it, else 0 */
  int interrupt_signal;  /* SIGINT/SIGTERM/SIGHUP the launcher received and forwarded, else 0 */
  int timed_out;         /* 1 when opts.timeout_ms passed and the job was stopped */
  int store_port;        /* the port given in HETMIX_STORE_ADDR */
  double elapsed_s;      /* from the first spawn to the last worker reaped */
  double stop_s;         /* from the first failure (or signal) seen to the last worker reaped */
  int cause;             /* HM_FAIL_*: how failed_rank was found */
  char host[64];         /* failed rank's host and device from its heartbeat ("" when none) */
  char device[160];
  double failed_wall_s;  /* CLOCK_REALTIME seconds when the failure was seen, else 0 */
  long long steps_seen;  /* most steps any rank reported done (heartbeats), -1 when none */
  double first_step_wall_s; /* CLOCK_REALTIME seconds of the first step this job completed, else 0 */
} hm_launch_result;

/* Runs the job to completion. HM_OK when every worker exited with status 0. Otherwise:
 *  HM_ERR_PEER_DEAD  a worker failed; the message reads "rank 2 (pid N) was killed by signal 9
 *                    (Killed)" or "rank 1 (pid N) exited with status 3", and res says the same;
 *  HM_ERR_ABORTED    the launcher received a signal (res->interrupt_signal) and stopped the job;
 *  HM_ERR_TIMEOUT    opts.timeout_ms passed;
 *  HM_ERR_NOT_FOUND  argv[0] cannot be executed (nothing is left running).
 * One call at a time per process (it installs, then restores, handlers for the forwarded
 * signals). The caller's other children are never waited for. res may be NULL. */
hm_status hm_launch_run(const hm_launch_opts *opts, hm_launch_result *res);

/* A job with automatic restarts (`hetmix launch --max-restarts N`): runs launch; when a worker
 * fails (HM_ERR_PEER_DEAD: exit, signal, heartbeat silence, progress watchdog) and restarts are
 * left, it starts the whole job again resuming from the newest step whose every shard is in the
 * peers' memory, or hm_ckpt_newest_complete(run_dir) when that is newer (the argument after
 * "--resume" in argv is replaced, or "--resume PATH" appended; from scratch when there is none).
 * With restarts and a run_dir the job gets a memory folder of its own for the peer copies
 * (HETMIX_PEER_DIR=<peer root>/hetmix-mem-XXXXXX, removed at the end; none when
 * HETMIX_PEER_DIR=none). Every attempt gets HETMIX_ATTEMPT=<k> and a fresh heartbeat folder. */
typedef struct hm_restart_event {
  int attempt;             /* the attempt that ended (0 = the first) */
  hm_status status;        /* how it ended */
  const char *message;     /* hm_last_error() of that attempt */
  const hm_launch_result *res;
  int restarting;          /* 1: another attempt follows */
  long long resume_step;   /* its resume point, -1 from scratch */
  const char *resume_path; /* NULL from scratch */
  int resume_memory;       /* 1: resume_path is a step complete in the peers' memory, not on disk */
} hm_restart_event;

typedef struct hm_restart_opts {
  hm_launch_opts launch;   /* heartbeat_dir is set per attempt (under tmp_dir) */
  int max_restarts;        /* >= 0 */
  const char *run_dir;     /* the workers' --dump folder, or NULL (restarts start from scratch) */
  const char *tmp_dir;     /* where heartbeat folders go [$TMPDIR or /tmp] */
  void (*on_attempt)(const hm_restart_event *ev, void *user); /* after each attempt, or NULL */
  void *user;
  /* Before a restart, or NULL: may replace the command (without --resume) and the number of
   * workers of the next attempts (dropping a device that keeps failing); *argv stays the
   * caller's. An error ends the job with it. */
  hm_status (*reshape)(const hm_restart_event *ev, void *user, char *const **argv, int *nworkers);
} hm_restart_opts;

/* HM_OK when an attempt succeeds; else the last attempt's status. *restarts: attempts - 1. */
hm_status hm_launch_with_restarts(const hm_restart_opts *opts, hm_launch_result *res, int *restarts);


/* Fills buf with 2*nbytes lowercase hex digits of fresh randomness from getrandom(2) (the job
 * secret format HETMIX_SECRET expects: 32 bytes, 64 digits). cap >= 2*nbytes + 1. */
hm_status hm_random_hex(char *buf, size_t cap, size_t nbytes);

/* A TCP port on host (loopback) that is free at the time of the call (bind to port 0). */
hm_status hm_launch_free_port(const char *host, int *port);

/* The IPv4 address of network namespace `netns` (a name under /run/netns): the first address of
 * an interface that is up and not loopback. HM_ERR_NOT_FOUND when there is none. */
hm_status hm_netns_addr(const char *netns, char *addr, size_t cap);
/* Opens /run/netns/<netns> (O_CLOEXEC) for setns(2); *fd is -1 and a message set on failure. */
hm_status hm_netns_open(const char *netns, int *fd);


#ifdef __cplusplus
}
#endif
#endif
