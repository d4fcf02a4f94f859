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
 * from the launcher's environment with hm_launch_env_read() (include/hetmix/comm.h). */
#ifndef HETMIX_RUNTIME_H
#define HETMIX_RUNTIME_H

#include <stddef.h>

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
  char *const *rank_netns; /* per rank (nworkers entries): the network namespace (a name under
                              /run/netns, as `ip netns` makes) the worker runs in, or NULL */
  char *const *const *rank_env; /* per rank: NULL-terminated "NAME=value" entries for that worker
                              only (before extra_env), or NULL */
} hm_launch_opts;

#define HM_LAUNCH_OPTS_INIT {0, NULL, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL}

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
