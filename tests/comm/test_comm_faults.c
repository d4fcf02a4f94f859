/* Faults of hmcomm: a rank SIGKILLed (dead) or SIGSTOPped (hung: only the heartbeat can tell)
 * in the middle of 64 MiB allreduces is named on every survivor within 5 s; hm_comm_abort from a second thread unblocks a rank stuck in a
 * collective (and a pending nonblocking request); a rank whose peer never arrives gets
 * HM_ERR_TIMEOUT at its deadline, not earlier and not much later. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hm_ranks.h"
#include "util/util.h"

/* Shared scratch layout. */
typedef struct fault_shared {
  volatile uint64_t kill_ns;   /* when the victim killed (or stopped) itself (CLOCK_MONOTONIC) */
  volatile int victim_pid;
  volatile int stop_instead;   /* the victim SIGSTOPs itself: hung, not dead (heartbeat path) */
  volatile int done[HM_RANKS_MAX];
  volatile int iterations[HM_RANKS_MAX];
} fault_shared;

static fault_shared *shared_of(hm_rank_ctx *ctx) { return (fault_shared *)(void *)ctx->shared; }

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits (bounded) until flag becomes nonzero. */
static int wait_flag(volatile int *flag, double seconds) {
  double end = hm_now_s() + seconds;
  while (!*flag) {
    if (hm_now_s() > end) return 0;
    sleep_ms(5);
  }
  return 1;
}

/* ---- SIGKILL during 64 MiB allreduces ---- */
enum { KILL_NRANKS = 4, KILL_VICTIM = 2 };
#define KILL_COUNT ((size_t)16 << 20) /* 16 Mi f32 = 64 MiB */

static void *victim_thread(void *arg) {
  hm_rank_ctx *ctx = arg;
  fault_shared *sh = shared_of(ctx);
  /* Let every rank get into the loop, then die at an arbitrary point inside a collective. */
  double end = hm_now_s() + 30;
  while (sh->iterations[ctx->rank] < 2 && hm_now_s() < end) sleep_ms(1);
  sleep_ms(37);
  sh->victim_pid = (int)getpid();
  sh->kill_ns = hm_now_ns();
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  raise(sh->stop_instead ? SIGSTOP : SIGKILL);
  return NULL;
}

static int rank_kill(hm_rank_ctx *ctx) {
  fault_shared *sh = shared_of(ctx);
  if (ctx->arg) sh->stop_instead = 1; /* every rank writes the same value before any kill */
  float *a = malloc(KILL_COUNT * sizeof(float)), *b = malloc(KILL_COUNT * sizeof(float));
  if (!a || !b) return hm_rank_fail(ctx, "out of memory");
  for (size_t i = 0; i < KILL_COUNT; i++) a[i] = (float)(i % 7);
  pthread_t th;
  if (ctx->rank == KILL_VICTIM) pthread_create(&th, NULL, victim_thread, ctx);
  hm_status st = HM_OK;
  double end = hm_now_s() + 60;
  int it = 0;
  while (hm_now_s() < end) {
    st = hm_comm_allreduce(ctx->comm, a, b, KILL_COUNT, HM_FLOAT32, HM_SUM);
    if (st != HM_OK) break;
    sh->iterations[ctx->rank] = ++it;
  }
  uint64_t err_ns = hm_now_ns();
  char err[1024];
  snprintf(err, sizeof err, "%s", hm_last_error());
  free(a), free(b);
  /* A stopped victim never exits by itself: the first survivor to see the error ends it. */
  if (sh->stop_instead && sh->victim_pid > 0) kill(sh->victim_pid, SIGKILL);
  if (st == HM_OK) return hm_rank_fail(ctx, "no error 60 s after the start (%d allreduces)", it);
  if (sh->kill_ns == 0)
    return hm_rank_fail(ctx, "error before the kill: %s: %s", hm_status_name(st), err);
  double secs = (double)(err_ns - sh->kill_ns) * 1e-9;
  ctx->value = secs;
  int fails = 0;
  if (st != HM_ERR_PEER_DEAD)
    fails += hm_rank_fail(ctx, "status %s, expected peer_dead (%s)", hm_status_name(st), err);
  char want[32];
  snprintf(want, sizeof want, "rank %d", KILL_VICTIM);
  if (!strstr(err, want)) fails += hm_rank_fail(ctx, "message does not name %s: '%s'", want, err);
  if (secs >= 5.0) fails += hm_rank_fail(ctx, "error came %.2f s after the kill (limit 5 s)", secs);
  /* The broken communicator keeps failing fast, and abort + destroy return promptly. */
  double t0 = hm_now_s();
  int32_t x = 1, y = 0;
  hm_status again = hm_comm_allreduce(ctx->comm, &x, &y, 1, HM_INT32, HM_SUM);
  if (again == HM_OK) fails += hm_rank_fail(ctx, "allreduce after the death succeeded");
  hm_comm_abort(ctx->comm);
  hm_comm_destroy(ctx->comm);
  ctx->skip_destroy = 1;
  if (hm_now_s() - t0 > 5.0)
    fails += hm_rank_fail(ctx, "follow-up call + abort + destroy took %.1f s", hm_now_s() - t0);
  if (!fails) snprintf(ctx->msg, sizeof ctx->msg, "%s", err);
  return fails != 0;
}

static void run_kill(int stop_instead) {
  const char *how = stop_instead ? "SIGSTOP" : "SIGKILL";
  hm_ranks_opts o = {.nranks = KILL_NRANKS, .timeout_s = 90, .expect_dead = 1u << KILL_VICTIM};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192];
  int failed = hm_ranks_run(&o, rank_kill, stop_instead ? (void *)&o : NULL, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  for (int r = 0; r < KILL_NRANKS; r++)
    if (r != KILL_VICTIM && res[r].reported)
      printf("# survivor %d: error %.3f s after %s of rank %d: %s\n", r, res[r].value, how,
             KILL_VICTIM, res[r].msg);
  if (res[KILL_VICTIM].signo != SIGKILL)
    printf("# victim did not end by SIGKILL (signal %d, exit %d)\n", res[KILL_VICTIM].signo,
           res[KILL_VICTIM].exit_code);
  if (failed) printf("%s", diag);
  assert_int_equal(res[KILL_VICTIM].signo, SIGKILL);
  assert_int_equal(failed, 0);
}

static void test_sigkill_named_within_5s(void **state) {
  (void)state;
  run_kill(0);
}

/* A hung rank (stopped, sockets open) is found by the heartbeat, also within 5 s. */
static void test_sigstop_named_within_5s(void **state) {
  (void)state;
  run_kill(1);
}

/* ---- abort from a second thread ---- */
typedef struct abort_arg {
  hm_comm_t comm;
  int delay_ms;
  volatile uint64_t abort_ns;
} abort_arg;

static void *abort_thread(void *p) {
  abort_arg *a = p;
  sleep_ms(a->delay_ms);
  a->abort_ns = hm_now_ns();
  hm_comm_abort(a->comm);
  return NULL;
}

static int rank_abort(hm_rank_ctx *ctx) {
  fault_shared *sh = shared_of(ctx);
  int fails = 0;
  if (ctx->rank == 1) {
    /* Never joins; stays alive (heartbeating) until rank 0 is done. */
    if (!wait_flag(&sh->done[0], 60)) fails += hm_rank_fail(ctx, "rank 0 never finished");
    hm_comm_abort(ctx->comm);
    hm_comm_destroy(ctx->comm);
    ctx->skip_destroy = 1;
    return fails;
  }
  /* Blocking collective stuck on a peer that never joins. */
  abort_arg arg = {.comm = ctx->comm, .delay_ms = 500};
  pthread_t th;
  pthread_create(&th, NULL, abort_thread, &arg);
  int32_t x[256] = {0}, y[256];
  hm_status st = hm_comm_allreduce(ctx->comm, x, y, 256, HM_INT32, HM_SUM);
  uint64_t ret_ns = hm_now_ns();
  pthread_join(th, NULL);
  if (st != HM_ERR_ABORTED)
    fails += hm_rank_fail(ctx, "stuck allreduce returned %s (%s), expected aborted",
                          hm_status_name(st), hm_last_error());
  else if (arg.abort_ns == 0 || ret_ns < arg.abort_ns)
    fails += hm_rank_fail(ctx, "allreduce returned before the abort");
  else {
    ctx->value = (double)(ret_ns - arg.abort_ns) * 1e-9;
    if (ctx->value > 1.0)
      fails += hm_rank_fail(ctx, "allreduce returned %.2f s after the abort", ctx->value);
  }
  /* Every later call fails fast with aborted, a pending request included. */
  st = hm_comm_barrier(ctx->comm);
  if (st != HM_ERR_ABORTED)
    fails += hm_rank_fail(ctx, "barrier after abort returned %s", hm_status_name(st));
  hm_request_t req = NULL;
  st = hm_comm_iallreduce(ctx->comm, x, y, 256, HM_INT32, HM_SUM, &req);
  if (st == HM_OK && req) st = hm_request_wait(req);
  if (st != HM_ERR_ABORTED)
    fails += hm_rank_fail(ctx, "iallreduce after abort returned %s", hm_status_name(st));
  hm_status as = HM_OK;
  hm_comm_get_async_error(ctx->comm, &as);
  if (as == HM_OK) fails += hm_rank_fail(ctx, "async error is ok after abort");
  double t0 = hm_now_s();
  hm_comm_destroy(ctx->comm);
  ctx->skip_destroy = 1;
  if (hm_now_s() - t0 > 5.0) fails += hm_rank_fail(ctx, "destroy after abort took %.1f s", hm_now_s() - t0);
  sh->done[0] = 1;
  return fails != 0;
}

/* A pending nonblocking request is released by an abort from another thread. */
static int rank_abort_request(hm_rank_ctx *ctx) {
  fault_shared *sh = shared_of(ctx);
  int fails = 0;
  if (ctx->rank == 1) {
    if (!wait_flag(&sh->done[0], 60)) fails += hm_rank_fail(ctx, "rank 0 never finished");
    hm_comm_abort(ctx->comm);
    hm_comm_destroy(ctx->comm);
    ctx->skip_destroy = 1;
    return fails;
  }
  int32_t x[64] = {0};
  hm_request_t req = NULL;
  hm_status st = hm_comm_irecv(ctx->comm, x, 64, HM_INT32, 1, &req);
  if (st != HM_OK) {
    sh->done[0] = 1;
    return hm_rank_fail(ctx, "irecv: %s: %s", hm_status_name(st), hm_last_error());
  }
  abort_arg arg = {.comm = ctx->comm, .delay_ms = 300};
  pthread_t th;
  pthread_create(&th, NULL, abort_thread, &arg);
  st = hm_request_wait(req);
  uint64_t ret_ns = hm_now_ns();
  pthread_join(th, NULL);
  if (st != HM_ERR_ABORTED)
    fails += hm_rank_fail(ctx, "pending irecv returned %s (%s), expected aborted",
                          hm_status_name(st), hm_last_error());
  else if (ret_ns < arg.abort_ns || (double)(ret_ns - arg.abort_ns) * 1e-9 > 1.0)
    fails += hm_rank_fail(ctx, "wait returned %.2f s after the abort",
                          (double)(ret_ns - arg.abort_ns) * 1e-9);
  hm_comm_destroy(ctx->comm);
  ctx->skip_destroy = 1;
  sh->done[0] = 1;
  return fails != 0;
}

static void run_two(hm_rank_fn fn, const hm_comm_config *cfg, const char *what) {
  hm_ranks_opts o = {.nranks = 2, .timeout_s = 60, .cfg = cfg};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192];
  int failed = hm_ranks_run(&o, fn, NULL, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  printf("# %s: rank 0 %.3f s %s\n", what, res[0].value, res[0].msg);
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

static void test_abort_unblocks_collective(void **state) {
  (void)state;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 60000; /* far away: only the abort can end the wait */
  run_two(rank_abort, &cfg, "abort unblocks allreduce");
}

static void test_abort_unblocks_request(void **state) {
  (void)state;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 60000;
  run_two(rank_abort_request, &cfg, "abort releases a pending irecv");
}

/* ---- deadline: the peer is alive but never joins ---- */
#define TIMEOUT_MS 1500
static int rank_timeout(hm_rank_ctx *ctx) {
  fault_shared *sh = shared_of(ctx);
  int use_collective = *(const int *)ctx->arg;
  int fails = 0;
  int32_t x[16], y[16];
  for (int i = 0; i < 16; i++) x[i] = ctx->rank + 1;
  if (ctx->rank == 1) {
    /* Skips rank 0's first operation; joins the next one once rank 0 has timed out. */
    if (!wait_flag(&sh->done[0], 60)) return hm_rank_fail(ctx, "rank 0 never timed out");
    hm_status st = hm_comm_allreduce(ctx->comm, x, y, 16, HM_INT32, HM_SUM);
    if (st == HM_OK && y[0] != 3) fails += hm_rank_fail(ctx, "allreduce after the timeout: sum %d", y[0]);
    if (st != HM_OK && !use_collective)
      fails += hm_rank_fail(ctx, "allreduce after the timeout: %s: %s", hm_status_name(st), hm_last_error());
    sh->done[1] = 1;
    return fails;
  }
  const char *what = use_collective ? "allreduce" : "recv";
  double t0 = hm_now_s();
  hm_status st = use_collective ? hm_comm_allreduce(ctx->comm, x, y, 16, HM_INT32, HM_SUM)
                                : hm_comm_recv(ctx->comm, y, 16, HM_INT32, 1);
  double dt = hm_now_s() - t0;
  ctx->value = dt;
  sh->done[0] = 1;
  if (st != HM_ERR_TIMEOUT)
    return hm_rank_fail(ctx, "%s returned %s after %.2f s (%s), expected timeout", what,
                        hm_status_name(st), dt, hm_last_error());
  snprintf(ctx->msg, sizeof ctx->msg, "%s", hm_last_error());
  if (dt < TIMEOUT_MS * 1e-3 * 0.9 || dt > TIMEOUT_MS * 1e-3 + 2.0)
    fails += hm_rank_fail(ctx, "%s timed out after %.2f s (deadline %.2f s)", what, dt,
                          TIMEOUT_MS * 1e-3);
  /* A receive that moved nothing leaves the communicator usable (docs/comm.md): once the peer
   * shows up, an allreduce completes. A collective that timed out half way breaks it: the next
   * call must then fail at once (no second wait, no garbage). */
  t0 = hm_now_s();
  st = hm_comm_allreduce(ctx->comm, x, y, 16, HM_INT32, HM_SUM);
  dt = hm_now_s() - t0;
  if (st == HM_OK && y[0] != 3) fails += hm_rank_fail(ctx, "allreduce after the timeout: sum %d", y[0]);
  if (st != HM_OK && !use_collective)
    fails += hm_rank_fail(ctx, "allreduce after the timeout: %s: %s", hm_status_name(st), hm_last_error());
  if (st != HM_OK && dt > 1.0)
    fails += hm_rank_fail(ctx, "allreduce on the broken communicator took %.2f s to fail", dt);
  wait_flag(&sh->done[1], 30);
  return fails != 0;
}

static void test_timeout_when_peer_never_joins(void **state) {
  (void)state;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = TIMEOUT_MS;
  for (int k = 0; k < 2; k++) {
    hm_ranks_opts o = {.nranks = 2, .timeout_s = 60, .cfg = &cfg};
    hm_rank_result res[HM_RANKS_MAX];
    char diag[8192];
    int failed = hm_ranks_run(&o, rank_timeout, &k, res, diag, sizeof diag);
    if (failed < 0) fail_msg("harness: %s", hm_last_error());
    printf("# %s, peer never joins: timeout after %.3f s: %s\n", k ? "allreduce" : "recv",
           res[0].value, res[0].msg);
    if (failed) printf("%s", diag);
    assert_int_equal(failed, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_abort_unblocks_collective),
      cmocka_unit_test(test_abort_unblocks_request),
      cmocka_unit_test(test_timeout_when_peer_never_joins),
      cmocka_unit_test(test_sigkill_named_within_5s),
      cmocka_unit_test(test_sigstop_named_within_5s),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
