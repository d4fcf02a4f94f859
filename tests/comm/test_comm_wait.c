/* Waits of the transfer engine over TCP.
 * 1. A rank that waits for a late peer over TCP sleeps: its process takes under a tenth of the wait
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
 * of one on an idle machine, half at load 4 on 2 cores).
 * 2. A wait on shared-memory and TCP transfers at once (ranks 0 and 1 share memory; rank 2 runs
 * under another host name, a UTS namespace of its own, so it is another host and talks TCP: a
 * ring's middle rank receives over one and sends over the other) is woken by either: the
 * shared-memory peer rings the sleeper's doorbell socket. It used to sleep in poll() on the TCP
 * sockets alone and see the shared-memory data only at poll()'s 2 ms timeout. Checked against
 * the same ring over TCP alone, measured in the same run: the median of 200 one-float allreduces
 * with the mixed ring must stay under twice the all-TCP one plus 200 us (each pair of rings
 * has the same steps; before, the mixed one took 2.1 ms, poll()'s timeout, against 54 us). */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "hm_ranks.h"

#define LATE_MS 600
#define COUNT 16384 /* 64 KiB of f32: 16 frames of 4 KiB */

typedef enum { CASE_RING, CASE_TREE, CASE_MIXED, CASE_ALL_TCP } wait_case;

static void env_setup(int rank, int nranks, void *arg) {
  (void)nranks;
  const wait_case wc = *(const wait_case *)arg;
  setenv("HETMIX_TRANSPORT", wc == CASE_MIXED ? "auto" : "tcp", 1);
  if (wc == CASE_MIXED && rank == 2 && (unshare(CLONE_NEWUTS) != 0 || sethostname("hm-wait-other", 13) != 0))
    fprintf(stderr, "rank 2: cannot take another host name: %s\n", strerror(errno)); /* init then pairs it by shm */
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

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#define LAT_OPS 200
/* Rank 1's median time of LAT_OPS one-float allreduces, in ctx->value. */
static int rank_latency(hm_rank_ctx *ctx) {
  static double t[LAT_OPS];
  float x = (float)ctx->rank, y = 0;
  hm_status st = hm_comm_barrier(ctx->comm);
  for (int i = 0; i < LAT_OPS && st == HM_OK; i++) {
    double t0 = clock_s(CLOCK_MONOTONIC);
    st = hm_comm_allreduce(ctx->comm, &x, &y, 1, HM_FLOAT32, HM_SUM);
    t[i] = clock_s(CLOCK_MONOTONIC) - t0;
    if (st == HM_OK && y != (float)(ctx->nranks * (ctx->nranks - 1) / 2))
      return hm_rank_fail(ctx, "allreduce gave %g", (double)y);
  }
  if (st != HM_OK) return hm_rank_fail(ctx, "%s: %s", hm_status_name(st), hm_last_error());
  qsort(t, LAT_OPS, sizeof t[0], cmp_double);
  ctx->value = t[LAT_OPS / 2];
  return 0;
}

static double run_latency(wait_case wc) {
  hm_ranks_opts o = {.nranks = 3, .timeout_s = 60, .env_setup = env_setup};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192] = "";
  int failed = hm_ranks_run(&o, rank_latency, &wc, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
  return res[1].value;
}

static void test_mixed_wait_wakes_on_shm(void **state) {
  (void)state;
  double tcp = run_latency(CASE_ALL_TCP), mixed = run_latency(CASE_MIXED);
  printf("median one-float allreduce on 3 ranks: %.0f us all TCP, %.0f us with a shared-memory pair\n", tcp * 1e6,
         mixed * 1e6);
  assert_true(mixed < 2 * tcp + 200e-6);
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

/* Whether a process may take a UTS namespace of its own (root, or user namespaces allowed). */
static int can_unshare_uts(void) {
  pid_t pid = fork();
  if (pid == 0) _exit(unshare(CLONE_NEWUTS) == 0 ? 0 : 1);
  int status = 0;
  return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "mixed") == 0) {
    if (!can_unshare_uts()) {
      printf("SKIP: this process may not take a UTS namespace of its own (needs root or user namespaces)\n");
      return 77;
    }
    const struct CMUnitTest mixed[] = {cmocka_unit_test(test_mixed_wait_wakes_on_shm)};
    return cmocka_run_group_tests(mixed, NULL, NULL);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ring_forward_sleeps),
      cmocka_unit_test(test_tree_held_frame_sleeps),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
