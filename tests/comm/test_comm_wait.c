/* A rank that waits for a late peer over TCP sleeps: its process takes under a tenth of the wait
 * in CPU time. Two schedules where the transfer engine used to poll() sockets that were ready at
 * once, which turned the sleep into a busy loop (on a host with more ranks than cores, the loop
 * took the core from the ranks it waited for):
 *   - ring allreduce: the allgather's send forwards what the reduce-scatter's receive brings, so
 *     until the late peer's data arrives it has nothing to write, and its idle socket is writable;
 *   - tree reduce: the root reduces its children in a fixed order, so the frames of the early
 *     child wait in its socket (readable) until the late child's have been reduced.
 * The bound: a sleeping wait wakes every 2 ms (the engine's poll timeout, to look at the peers'
 * health), a few microseconds each, under 1% of the wait; 10% leaves that room tenfold for a
 * loaded machine, while a busy loop takes whatever share of a core the scheduler gives it (all
 * of one on an idle machine, half at load 4 on 2 cores). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hm_ranks.h"

#define LATE_MS 600
#define COUNT 16384 /* 64 KiB of f32: 16 frames of 4 KiB */

typedef enum { CASE_RING, CASE_TREE } wait_case;

static void env_setup(int rank, int nranks, void *arg) {
  (void)rank, (void)nranks, (void)arg;
  setenv("HETMIX_TRANSPORT", "tcp", 1);
  setenv("HETMIX_COMPRESS", "off", 1);
  setenv("HETMIX_ALGO", "ring", 1);
  setenv("HETMIX_TCP_CHUNK", "4096", 1);
}

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static hm_status run_op(hm_rank_ctx *ctx, wait_case wc, const float *x, float *y) {
  if (wc == CASE_RING) return hm_comm_allreduce(ctx->comm, x, y, COUNT, HM_FLOAT32, HM_SUM);
  return hm_comm_reduce(ctx->comm, x, y, COUNT, HM_FLOAT32, HM_SUM, 0);
}

/* Rank 0 times its operation while `late` joins LATE_MS after everyone else. */
static int rank_wait(hm_rank_ctx *ctx) {
  const wait_case wc = *(const wait_case *)ctx->arg;
  const int late = 1; /* ring: rank 0's left neighbour; tree: the root's first child */
  float *x = calloc(COUNT, sizeof *x), *y = calloc(COUNT, sizeof *y);
  if (!x || !y) return free(x), free(y), hm_rank_fail(ctx, "out of memory");
  for (size_t i = 0; i < COUNT; i++) x[i] = (float)((i + (size_t)ctx->rank) % 7);
  hm_status st = run_op(ctx, wc, x, y); /* warm: connections and buffers in place */
  if (st == HM_OK) st = hm_comm_barrier(ctx->comm);
  if (st == HM_OK && ctx->rank == late) usleep(LATE_MS * 1000);
  const double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
  if (st == HM_OK) st = run_op(ctx, wc, x, y);
  const double wall = clock_s(CLOCK_MONOTONIC) - w0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
  int fails = 0;
  if (st != HM_OK) fails += hm_rank_fail(ctx, "%s: %s", hm_status_name(st), hm_last_error());
  for (size_t i = 0; i < COUNT && !fails && (wc == CASE_RING || ctx->rank == 0); i++) {
    double want = 0;
    for (int r = 0; r < ctx->nranks; r++) want += (double)((i + (size_t)r) % 7);
    if ((double)y[i] != want) fails += hm_rank_fail(ctx, "element %zu: %g, expected %g", i, (double)y[i], want);
  }
  if (!fails && ctx->rank == 0) {
    snprintf(ctx->msg, sizeof ctx->msg, "waited %.0f ms, %.1f ms CPU", wall * 1e3, cpu * 1e3);
    if (wall < 0.8 * LATE_MS * 1e-3) fails += hm_rank_fail(ctx, ": the operation did not wait for the late rank");
    if (cpu > 0.1 * wall) fails += hm_rank_fail(ctx, ": more than a tenth of the wait in CPU time (a busy wait)");
  }
  free(x), free(y);
  return fails != 0;
}

static void run_case(int nranks, wait_case wc) {
  hm_ranks_opts o = {.nranks = nranks, .timeout_s = 60, .env_setup = env_setup};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192] = "";
  int failed = hm_ranks_run(&o, rank_wait, &wc, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  printf("rank 0: %s\n", res[0].msg);
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

static void test_ring_forward_sleeps(void **state) {
  (void)state;
  run_case(2, CASE_RING);
}

static void test_tree_held_frame_sleeps(void **state) {
  (void)state;
  run_case(3, CASE_TREE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ring_forward_sleeps),
      cmocka_unit_test(test_tree_held_frame_sleeps),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
