/* Multi-process harness for hmcomm tests: runs one function on N forked ranks.
 *
 * The parent makes the unique id (so the rendezvous store lives in the parent, as in a launcher),
 * forks N children that each init a communicator and call the rank function, and collects each
 * child's verdict, message and exit cause over a pipe. The whole run has a deadline: on expiry
 * every child is SIGKILLed and reaped, so a hanging collective fails the test instead of hanging
 * it. Children die with the parent (PR_SET_PDEATHSIG), so no orphans survive a crashed test.
 * It is not a launcher for real jobs (see hetmix launch). */
#ifndef HM_TEST_RANKS_H
#define HM_TEST_RANKS_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/comm.h"

#define HM_RANKS_MAX 64
#define HM_RANKS_MSG 2048
#define HM_RANKS_SHARED_BYTES 65536

typedef enum hm_ranks_init {
  HM_RANKS_INIT_ID = 0,  /* parent calls hm_get_unique_id, children hm_comm_init_rank */
  HM_RANKS_INIT_ENV,     /* children call env_setup() then hm_comm_init_env */
  HM_RANKS_INIT_NONE,    /* children get comm == NULL and bootstrap themselves */
} hm_ranks_init;

typedef struct hm_rank_ctx {
  int rank, nranks;
  hm_comm_t comm;      /* NULL when init failed (then fn is not called) or with INIT_NONE */
  void *arg;
  const hm_unique_id *id;  /* the parent's id (INIT_ID), else NULL */
  /* MAP_SHARED scratch visible to every rank and to the parent (zeroed before the run). */
  volatile unsigned char *shared;
  char msg[HM_RANKS_MSG];  /* what the rank reports (failure detail or a figure) */
  double value;            /* a number the rank reports (e.g. seconds to an error) */
  int skip_destroy;        /* set by fn to leave the communicator alone (e.g. after abort) */
} hm_rank_ctx;

/* Returns 0 when the rank passed; anything else is a failure described in ctx->msg. */
typedef int (*hm_rank_fn)(hm_rank_ctx *ctx);

typedef struct hm_ranks_opts {
  int nranks;
  double timeout_s;             /* deadline of the whole run [60] */
  const hm_comm_config *cfg;    /* passed to init (NULL: defaults) */
  hm_ranks_init init;
  /* INIT_ENV/INIT_NONE: runs in the child before init (sets environment variables). */
  void (*env_setup)(int rank, int nranks, void *arg);
  /* Ranks expected to die (bit r): their death is not a failure. */
  uint64_t expect_dead;
} hm_ranks_opts;

typedef struct hm_rank_result {
  int reported;        /* the child wrote a verdict before exiting */
  int verdict;         /* fn's return (or -1 when init failed) */
  int exit_code;       /* when it exited */
  int signo;           /* when a signal killed it (0 otherwise) */
  int killed_by_harness;  /* killed at the run's deadline */
  double value;
  char msg[HM_RANKS_MSG];
} hm_rank_result;

/* Runs fn on opts->nranks ranks. results may be NULL. Returns the number of ranks that failed
 * (verdict != 0, crashed, or killed at the deadline; expected deaths excluded), or -1 when the
 * harness itself could not run (message in hm_last_error()). When diag is non-NULL it receives
 * a human summary of every failing rank. */
int hm_ranks_run(const hm_ranks_opts *opts, hm_rank_fn fn, void *arg, hm_rank_result *results,
                 char *diag, size_t diag_cap);

/* Formats into ctx->msg (appending) and returns 1, for `return hm_rank_fail(ctx, ...)`. */
int hm_rank_fail(hm_rank_ctx *ctx, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The shared scratch of the run in progress in the parent (valid during hm_ranks_run). */
volatile unsigned char *hm_ranks_shared(void);

/* Runs argv (PATH searched) with extra "NAME=value" variables added to the environment (env may
 * be NULL), capturing stdout+stderr into out (truncated to cap). The child runs in its own
 * process group, which is SIGKILLed when timeout_s passes. Returns the exit status, 128+signal
 * when killed by a signal, 124 at the timeout, or -1 when it could not start. */
int hm_run_cmd(char *const argv[], char *const env[], double timeout_s, char *out, size_t cap);

/* A TCP port on 127.0.0.1 that was free a moment ago (for store addresses in env launches). */
int hm_free_port(void);

#endif
