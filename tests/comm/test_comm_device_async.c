/* Nonblocking calls on device buffers (src/comm/device_async.c): hm_comm_isend, hm_comm_irecv
 * and hm_comm_iallreduce with buffers of the registered device, several requests in flight at
 * once, sends and receives in a group, a nonblocking send met by a blocking receive, and both
 * ranks' isends crossing their blocking receives (several chunks each way). Every
 * result is compared bitwise with the same call on host buffers (the values are random with
 * magnitudes over 2^-10..2^10, so a different association of a sum would change bits; two
 * ranks, so the allreduce adds the same two operands on every path). Counts 1, 7, 1023 and
 * 10,007 (three 16 KiB chunks), and 1,048,576 on cpu (256 chunks). A peer that dies mid-transfer makes the waits fail within the
 * deadline, and the failed requests leave nothing mapped (the ranges map again).
 *
 *   test_comm_device_async          cpu with cpu, ref:dtype=f64 with ref:dtype=f64, ref with cpu
 *   test_comm_device_async opencl   opencl with cpu and opencl, mapped and staged
 *                                   (HETMIX_STAGE_MAP=0); exit 77 without opencl */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "hetmix/device.h"
#include "hm_ranks.h"
#include "opencl_case.h"
#include "util/util.h"

#define NBUF 3

typedef struct setup {
  const char *specs[2];
  const char *map; /* HETMIX_STAGE_MAP */
  size_t count;
} setup;

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static void fill(hm_dtype dt, void *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) {
    uint64_t h = mix64((seed << 40) ^ i);
    double v = ldexp((double)(h >> 11) * 0x1.0p-53 * 2.0 - 1.0, (int)(h % 21) - 10);
    if (dt == HM_FLOAT64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
  }
}

typedef struct bufs {
  hm_device *dev;
  hm_dtype dt;
  size_t n, bytes;
  void *d[NBUF];       /* device buffers */
  char *h[NBUF];       /* host buffers: the same calls on host memory */
  char *got;           /* a device buffer's bytes read back */
} bufs;

static int check(hm_rank_ctx *ctx, bufs *b, int i, const char *what) {
  if (hm_device_copy_d2h(b->dev, b->got, b->d[i], b->bytes) != HM_OK)
    return hm_rank_fail(ctx, "%s: d2h: %s", what, hm_last_error());
  if (memcmp(b->got, b->h[i], b->bytes) != 0)
    return hm_rank_fail(ctx, "%s, %zu elements, buffer %d: not bitwise equal to host buffers", what, b->n, i);
  return 0;
}

static int load(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  for (int i = 0; i < NBUF; i++) {
    fill(b->dt, b->h[i], b->n, seed * 16 + (uint64_t)(ctx->rank * NBUF + i));
    if (hm_device_copy_h2d(b->dev, b->d[i], b->h[i], b->bytes) != HM_OK)
      return hm_rank_fail(ctx, "h2d: %s", hm_last_error());
  }
  return 0;
}

static int wait_all(hm_rank_ctx *ctx, hm_request_t *r, int n, int reverse, const char *what) {
  int rc = 0;
  for (int k = 0; k < n; k++) {
    int i = reverse ? n - 1 - k : k;
    if (!r[i]) continue;
    if (hm_request_wait(r[i]) != HM_OK && !rc) rc = hm_rank_fail(ctx, "%s: wait: %s", what, hm_last_error());
    r[i] = NULL;
  }
  return rc;
}

/* Rank 0 sends its NBUF buffers, rank 1 receives them; all in flight at once. The host copy on
 * the receiver becomes what was sent (the same fill as the sender's). */
static int case_many(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  int peer = 1 - ctx->rank, rc = load(ctx, b, seed);
  hm_request_t r[NBUF] = {NULL};
  for (int i = 0; i < NBUF && !rc; i++) {
    hm_status st = ctx->rank == 0 ? hm_comm_isend(ctx->comm, b->d[i], b->n, b->dt, peer, &r[i])
                                  : hm_comm_irecv(ctx->comm, b->d[i], b->n, b->dt, peer, &r[i]);
    if (st != HM_OK) rc = hm_rank_fail(ctx, "issue %d: %s", i, hm_last_error());
  }
  int wrc = wait_all(ctx, r, NBUF, ctx->rank == 1, "isend/irecv in flight");
  rc = rc ? rc : wrc;
  for (int i = 0; i < NBUF && !rc; i++) {
    if (ctx->rank == 1) fill(b->dt, b->h[i], b->n, seed * 16 + (uint64_t)i);
    rc = check(ctx, b, i, "isend/irecv in flight");
  }
  return rc;
}

/* Both ranks send buffer 0 and receive into buffer 1 in one group; the requests are tested
 * until done (hm_request_test). */
static int case_group(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  int peer = 1 - ctx->rank, rc = load(ctx, b, seed);
  hm_request_t r[2] = {NULL, NULL};
  if (rc) return rc;
  hm_group_start();
  hm_status st = hm_comm_isend(ctx->comm, b->d[0], b->n, b->dt, peer, &r[0]);
  if (st == HM_OK) st = hm_comm_irecv(ctx->comm, b->d[1], b->n, b->dt, peer, &r[1]);
  hm_status se = hm_group_end();
  if (st != HM_OK || se != HM_OK) rc = hm_rank_fail(ctx, "group: %s", hm_last_error());
  for (int i = 0; i < 2 && !rc; i++) {
    int done = 0;
    uint64_t t0 = hm_now_ns();
    while (!done && !rc && hm_now_ns() - t0 < 30ull * 1000000000ull)
      if (hm_request_test(r[i], &done) != HM_OK) rc = hm_rank_fail(ctx, "group: test: %s", hm_last_error());
    if (done || rc) r[i] = NULL;
    else rc = hm_rank_fail(ctx, "group: request %d not done after 30 s", i);
  }
  int wrc = wait_all(ctx, r, 2, 0, "group");
  rc = rc ? rc : wrc;
  fill(b->dt, b->h[1], b->n, seed * 16 + (uint64_t)(peer * NBUF));
  if (!rc) rc = check(ctx, b, 1, "group");
  return rc;
}

/* Two allreduces in flight (buffer 0 in place, buffer 1 into buffer 2), against host buffers. */
static int case_allreduce(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  int rc = load(ctx, b, seed);
  hm_request_t r[2] = {NULL, NULL};
  if (rc) return rc;
  if (hm_comm_iallreduce(ctx->comm, b->d[0], b->d[0], b->n, b->dt, HM_SUM, &r[0]) != HM_OK ||
      hm_comm_iallreduce(ctx->comm, b->d[1], b->d[2], b->n, b->dt, HM_SUM, &r[1]) != HM_OK)
    rc = hm_rank_fail(ctx, "iallreduce: %s", hm_last_error());
  int wrc = wait_all(ctx, r, 2, 1, "iallreduce");
  rc = rc ? rc : wrc;
  if (rc) return rc;
  /* the same sums on host buffers, on a communicator without a device */
  return 0;
}

static int host_sums(hm_rank_ctx *ctx, bufs *b) {
  if (hm_comm_allreduce(ctx->comm, b->h[0], b->h[0], b->n, b->dt, HM_SUM) != HM_OK ||
      hm_comm_allreduce(ctx->comm, b->h[1], b->h[2], b->n, b->dt, HM_SUM) != HM_OK)
    return hm_rank_fail(ctx, "host allreduce: %s", hm_last_error());
  int rc = check(ctx, b, 0, "iallreduce in place");
  return rc ? rc : check(ctx, b, 2, "iallreduce out of place");
}

/* Rank 0's isend meets rank 1's blocking receive (the pipeline's activation pattern). */
static int case_mixed_forms(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  int rc = load(ctx, b, seed);
  if (rc) return rc;
  hm_request_t r = NULL;
  hm_status st = ctx->rank == 0 ? hm_comm_isend(ctx->comm, b->d[0], b->n, b->dt, 1, &r)
                                : hm_comm_recv(ctx->comm, b->d[0], b->n, b->dt, 0);
  if (st == HM_OK && r) st = hm_request_wait(r);
  if (st != HM_OK) return hm_rank_fail(ctx, "isend to a blocking recv: %s", hm_last_error());
  if (ctx->rank == 1) fill(b->dt, b->h[0], b->n, seed * 16);
  return check(ctx, b, 0, "isend to a blocking recv");
}

/* Both ranks at once (1F1B's crossing pattern: stage 0 sends an activation and waits for a
 * gradient while stage 1 sends that gradient and waits for the next activation): an isend, then
 * a blocking receive of several chunks from the same peer, then the wait. The receive's chunks
 * are issued one after another; each must complete on its own, not only once the isend in the
 * same progress batch has (that deadlocked: each side's second chunk waited for the other's). */
static int case_crossing(hm_rank_ctx *ctx, bufs *b, uint64_t seed) {
  int rc = load(ctx, b, seed);
  if (rc) return rc;
  const int peer = 1 - ctx->rank;
  hm_request_t r = NULL;
  hm_status st = hm_comm_isend(ctx->comm, b->d[ctx->rank], b->n, b->dt, peer, &r);
  if (st == HM_OK) st = hm_comm_recv(ctx->comm, b->d[peer], b->n, b->dt, peer);
  hm_status sw = r ? hm_request_wait(r) : st;
  if (st == HM_OK) st = sw;
  if (st != HM_OK) return hm_rank_fail(ctx, "isends crossing blocking receives: %s", hm_last_error());
  fill(b->dt, b->h[peer], b->n, seed * 16 + (uint64_t)(peer * NBUF + peer)); /* what the peer sent */
  return check(ctx, b, peer, "isends crossing blocking receives");
}

static int rank_main(hm_rank_ctx *ctx) {
  const setup *su = ctx->arg;
  bufs b;
  memset(&b, 0, sizeof b);
  setenv("HETMIX_STAGE_MAP", su->map, 1);
  if (hm_device_open(su->specs[ctx->rank], &b.dev) != HM_OK) return hm_rank_fail(ctx, "open: %s", hm_last_error());
  b.dt = hm_device_dtype(b.dev);
  b.n = su->count;
  b.bytes = b.n * hm_dtype_size(b.dt);
  int rc = 0;
  b.got = malloc(b.bytes);
  for (int i = 0; i < NBUF; i++) {
    b.h[i] = malloc(b.bytes);
    if (!b.h[i] || hm_device_alloc(b.dev, &b.d[i], b.bytes, "test buffer") != HM_OK) rc = 1;
  }
  if (rc || !b.got) rc = hm_rank_fail(ctx, "buffers: %s", hm_last_error());
  if (!rc && hm_comm_register_device(ctx->comm, b.dev) != HM_OK) rc = hm_rank_fail(ctx, "register: %s", hm_last_error());
  if (!rc) rc = case_many(ctx, &b, 1);
  if (!rc) rc = case_group(ctx, &b, 2);
  if (!rc) rc = case_mixed_forms(ctx, &b, 3);
  if (!rc) rc = case_crossing(ctx, &b, 5);
  if (!rc) rc = case_allreduce(ctx, &b, 4);
  if (!rc && hm_comm_register_device(ctx->comm, NULL) != HM_OK) rc = hm_rank_fail(ctx, "unregister: %s", hm_last_error());
  if (!rc) rc = host_sums(ctx, &b);
  for (int i = 0; i < NBUF; i++) {
    free(b.h[i]);
    hm_device_free(b.dev, b.d[i]);
  }
  free(b.got);
  hm_device_close(b.dev);
  return rc;
}

/* ---- a peer dies mid-transfer ---- */
#define BIG_COUNT (1u << 20)  /* 4 MiB of f32: 256 chunks of 16 KiB */
#define DEAD_COUNT (4u << 20) /* 16 MiB of f32: many chunks, more than the transport buffers */

static int rank_dies(hm_rank_ctx *ctx) {
  const setup *su = ctx->arg;
  setenv("HETMIX_STAGE_MAP", su->map, 1);
  hm_device *dev = NULL;
  if (hm_device_open(su->specs[ctx->rank], &dev) != HM_OK) return hm_rank_fail(ctx, "open: %s", hm_last_error());
  hm_dtype dt = hm_device_dtype(dev);
  size_t bytes = DEAD_COUNT * hm_dtype_size(dt);
  void *s = NULL, *r = NULL;
  if (hm_device_alloc(dev, &s, bytes, "send") != HM_OK || hm_device_alloc(dev, &r, bytes, "recv") != HM_OK ||
      hm_comm_register_device(ctx->comm, dev) != HM_OK)
    return hm_rank_fail(ctx, "setup: %s", hm_last_error());
  if (ctx->rank == 1) { /* takes a little of the transfer, then dies */
    hm_request_t q = NULL;
    hm_comm_irecv(ctx->comm, r, DEAD_COUNT, dt, 0, &q);
    usleep(50000);
    _exit(3);
  }
  hm_request_t q[2] = {NULL, NULL};
  uint64_t t0 = hm_now_ns();
  hm_status s1 = hm_comm_isend(ctx->comm, s, DEAD_COUNT, dt, 1, &q[0]);
  hm_status s2 = s1 == HM_OK ? hm_comm_irecv(ctx->comm, r, DEAD_COUNT, dt, 1, &q[1]) : s1;
  hm_status w1 = q[0] ? hm_request_wait(q[0]) : s1;
  hm_status w2 = q[1] ? hm_request_wait(q[1]) : s2;
  double secs = (double)(hm_now_ns() - t0) * 1e-9;
  ctx->value = secs;
  ctx->skip_destroy = 1;
  if (w1 == HM_OK && w2 == HM_OK) return hm_rank_fail(ctx, "the waits succeeded although the peer died");
  if (secs > 10.0) return hm_rank_fail(ctx, "the error came after %.1f s (deadline 5 s)", secs);
  void *h = NULL; /* nothing is left mapped: the ranges map again */
  if (hm_device_map(dev, s, bytes, HM_MAP_READ, &h) != HM_OK) return hm_rank_fail(ctx, "send range: %s", hm_last_error());
  hm_device_unmap(dev, s, h);
  if (hm_device_map(dev, r, bytes, HM_MAP_WRITE, &h) != HM_OK) return hm_rank_fail(ctx, "recv range: %s", hm_last_error());
  hm_device_unmap(dev, r, h);
  hm_comm_register_device(ctx->comm, NULL);
  hm_device_free(dev, s);
  hm_device_free(dev, r);
  hm_device_close(dev);
  snprintf(ctx->msg, sizeof ctx->msg, "error after %.2f s", secs);
  return 0;
}

/* Checked in a child: pocl's threads would not survive the fork of the ranks. */
static int opencl_missing(void) {
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) _exit(hm_test_opencl_missing("opencl:threads=1"));
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return !WIFEXITED(ws) || WEXITSTATUS(ws) != 0;
}

static int run_one(const setup *su, hm_rank_fn fn, uint64_t expect_dead) {
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 5000;
  cfg.peer_dead_ms = 1000;
  hm_ranks_opts o = {.nranks = 2, .timeout_s = 120, .cfg = &cfg, .expect_dead = expect_dead};
  char diag[16384] = "";
  hm_rank_result res[2];
  int failed = hm_ranks_run(&o, fn, (void *)su, res, diag, sizeof diag);
  printf("%s %s + %s, map=%s, %zu elements: %s%s\n", fn == rank_dies ? "peer dies:" : "calls:", su->specs[0],
         su->specs[1], su->map, su->count, failed ? "FAILED\n" : "ok ", failed ? diag : res[0].msg);
  return failed != 0;
}

int main(int argc, char **argv) {
  static const size_t counts[] = {1, 7, 1023, 10007};
  int opencl = hm_test_opencl_only(argc, argv);
  if (opencl && opencl_missing()) return HM_TEST_SKIP;
  setenv("HETMIX_STAGE_CHUNK", "16384", 1);
  const char *host_sets[][2] = {{"cpu:threads=1", "cpu:threads=1"}, {"ref:dtype=f64", "ref:dtype=f64"},
                                {"ref", "cpu:threads=1"}};
  const char *cl_sets[][2] = {{"opencl:threads=1", "cpu:threads=1"}, {"cpu:threads=1", "opencl:threads=1"},
                              {"opencl:threads=1", "opencl:threads=1"}};
  const char *maps[] = {"1", "0"};
  int bad = 0;
  for (int m = 0; m < (opencl ? 2 : 1); m++)
    for (int s = 0; s < 3; s++)
      for (int c = 0; c < 4; c++) {
        setup su = {{opencl ? cl_sets[s][0] : host_sets[s][0], opencl ? cl_sets[s][1] : host_sets[s][1]}, maps[m],
                    counts[c]};
        bad += run_one(&su, rank_main, 0);
      }
  if (!opencl) { /* more chunks in flight each way than the transport buffers (the crossing case) */
    setup su = {{"cpu:threads=1", "cpu:threads=1"}, "1", BIG_COUNT};
    bad += run_one(&su, rank_main, 0);
  }
  for (int m = 0; m < (opencl ? 2 : 1); m++) {
    setup su = {{opencl ? "opencl:threads=1" : "cpu:threads=1", "cpu:threads=1"}, maps[m], DEAD_COUNT};
    bad += run_one(&su, rank_dies, 2);
  }
  return bad ? 1 : 0;
}
