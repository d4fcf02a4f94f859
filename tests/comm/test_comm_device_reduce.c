/* Where allreduce sums of device buffers run (src/comm/device_reduce.c): on the host (staged or
 * mapped data) or on the device (a kernel adds each incoming segment). Both sites give results
 * bitwise identical to each other, and to host buffers wherever the call is one chunk or has
 * two ranks (several chunks on three ranks cut the ring's segments differently from one
 * unchunked call, on either site), in f32 and f64, on 2 and 3 ranks, at 1, 7, 1023 and 10,007
 * elements (several 16 KiB chunks), out of place and in place. The values are random with
 * magnitudes spread over 2^-10..2^10, so a different association of the sums would change bits.
 * HETMIX_REDUCE_SITE forces each site in turn (the device site is taken only where the host
 * would run the ring, which the test predicts with hm_coll_choose); in auto mode the test
 * recomputes the cost model's choice from the exchanged terms and checks that the path taken
 * follows it.
 *
 *   test_comm_device_reduce          host devices: cpu f32, ref f64, ref + cpu f32 mixed
 *   test_comm_device_reduce opencl   opencl and cpu buffers mixed (exit 77 without opencl) */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "hetmix/cost.h"
#include "hetmix/device.h"
#include "hm_ranks.h"
#include "opencl_case.h"

#define CHUNK_BYTES 16384 /* HETMIX_STAGE_CHUNK, set by main for every rank */

typedef struct setup {
  const char *specs[3]; /* device of rank r */
  int nranks;
  size_t count;
} setup;

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static double value(int rank, size_t i) {
  uint64_t h = mix64(((uint64_t)rank << 40) ^ i);
  double u = (double)(h >> 11) * 0x1.0p-53 * 2.0 - 1.0;
  return ldexp(u, (int)(h % 21) - 10);
}

/* Allreduce sum of x on the registered device under HETMIX_REDUCE_SITE=site into out (host);
 * *on_device: whether the sums ran on the device. */
static int run_site(hm_rank_ctx *ctx, hm_device *dev, const char *site, void *sb, void *rb, const void *x,
                    void *out, size_t count, int in_place, int *on_device) {
  size_t bytes = count * hm_device_elem_size(dev);
  hm_dtype dt = hm_device_dtype(dev);
  setenv("HETMIX_REDUCE_SITE", site, 1);
  hm_status st = hm_comm_register_device(ctx->comm, dev);
  if (st != HM_OK) return hm_rank_fail(ctx, "register: %s", hm_last_error());
  if (hm_device_copy_h2d(dev, in_place ? rb : sb, x, bytes) != HM_OK) return hm_rank_fail(ctx, "h2d: %s", hm_last_error());
  uint64_t before = ctx->comm->stage.dev_reductions;
  st = hm_comm_allreduce(ctx->comm, in_place ? rb : sb, rb, count, dt, HM_SUM);
  if (st != HM_OK) return hm_rank_fail(ctx, "allreduce (%s, %s): %s", site, in_place ? "in place" : "out of place", hm_last_error());
  *on_device = ctx->comm->stage.dev_reductions != before;
  if (hm_device_copy_d2h(dev, out, rb, bytes) != HM_OK) return hm_rank_fail(ctx, "d2h: %s", hm_last_error());
  return 0;
}

/* Whether the device site can take this call: the host path runs the ring on every chunk. */
static int ring_everywhere(hm_comm_t c, size_t count, size_t es) {
  size_t chunk = CHUNK_BYTES / es, full = count < chunk ? count : chunk, last = count % chunk ? count % chunk : full;
  return c->nranks == 2 || (hm_coll_choose(c, HM_COLL_ALLREDUCE, full * es) == HM_ALGO_RING &&
                            hm_coll_choose(c, HM_COLL_ALLREDUCE, last * es) == HM_ALGO_RING);
}

/* The cost model's choice from the terms every rank exchanged. */
static int model_says_device(hm_comm_t c, size_t count, size_t es) {
  hm_device_xfer t[3];
  for (int r = 0; r < c->nranks; r++) memcpy(&t[r], &c->stage.table[(size_t)r * HM_DEVSTAGE_TERMS], sizeof t[r]);
  size_t chunk = CHUNK_BYTES / es, full = count < chunk ? count : chunk;
  return hm_cost_reduce_site(t, c->nranks, c->nranks, (double)(full * es), &c->link, NULL, NULL) == HM_REDUCE_ON_DEVICE;
}

static int rank_main(hm_rank_ctx *ctx) {
  const setup *su = ctx->arg;
  hm_device *dev = NULL;
  if (hm_device_open(su->specs[ctx->rank], &dev) != HM_OK) return hm_rank_fail(ctx, "open: %s", hm_last_error());
  hm_dtype dt = hm_device_dtype(dev);
  size_t n = su->count, es = hm_device_elem_size(dev), bytes = n * es;
  char *x = malloc(bytes), *ref = malloc(bytes), *out = malloc(bytes);
  void *sb = NULL, *rb = NULL;
  int rc = 0;
  if (!x || !ref || !out || hm_device_alloc(dev, &sb, bytes, "send") != HM_OK ||
      hm_device_alloc(dev, &rb, bytes, "recv") != HM_OK) {
    rc = hm_rank_fail(ctx, "buffers: %s", hm_last_error());
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    if (dt == HM_FLOAT64) ((double *)x)[i] = value(ctx->rank, i);
    else ((float *)x)[i] = (float)value(ctx->rank, i);
  }
  if (hm_comm_allreduce(ctx->comm, x, ref, n, dt, HM_SUM) != HM_OK) { /* host buffers */
    rc = hm_rank_fail(ctx, "host allreduce: %s", hm_last_error());
    goto done;
  }
  int one_cut = ctx->nranks == 2 || bytes <= CHUNK_BYTES, expect_dev = ring_everywhere(ctx->comm, n, es);
  char *host_site = malloc(bytes);
  if (!host_site) {
    rc = hm_rank_fail(ctx, "no memory");
    goto done;
  }
  const char *sites[3] = {"host", "device", "auto"};
  for (int ip = 0; ip < 2 && !rc; ip++)
    for (int s = 0; s < 3 && !rc; s++) {
      int on_dev = 0;
      if ((rc = run_site(ctx, dev, sites[s], sb, rb, x, s == 0 ? host_site : out, n, ip, &on_dev))) break;
      int want = s == 0 ? 0 : s == 1 ? expect_dev : expect_dev && model_says_device(ctx->comm, n, es);
      if (on_dev != want)
        rc = hm_rank_fail(ctx, "site %s, %zu elements: sums ran on the %s, expected the %s", sites[s], n,
                          on_dev ? "device" : "host", want ? "device" : "host");
      else if (s > 0 && memcmp(out, host_site, bytes) != 0)
        rc = hm_rank_fail(ctx, "site %s, %zu elements%s: not bitwise equal to the host site", sites[s], n,
                          ip ? " in place" : "");
      else if (s == 0 && one_cut && memcmp(host_site, ref, bytes) != 0)
        rc = hm_rank_fail(ctx, "host site, %zu elements: not bitwise equal to host buffers", n);
    }
  free(host_site);
  hm_comm_register_device(ctx->comm, NULL);
done:
  free(x), free(ref), free(out);
  hm_device_close(dev);
  return rc;
}

static int run_setups(const setup *list, int count) {
  int bad = 0;
  for (int k = 0; k < count; k++) {
    hm_ranks_opts o = {.nranks = list[k].nranks, .timeout_s = 120};
    char diag[16384];
    int failed = hm_ranks_run(&o, rank_main, (void *)&list[k], NULL, diag, sizeof diag);
    printf("%s %d ranks (%s, %s%s%s), %zu elements\n", failed ? "FAIL" : "ok  ", list[k].nranks, list[k].specs[0],
           list[k].specs[1], list[k].nranks > 2 ? ", " : "", list[k].nranks > 2 ? list[k].specs[2] : "",
           list[k].count);
    if (failed < 0) printf("  harness: %s\n", hm_last_error());
    if (failed) printf("%s", diag);
    bad += failed != 0;
  }
  return bad;
}

/* Whether opencl opens, tried in a child: this process must not initialise OpenCL (pocl's
 * threads do not survive the fork of the ranks). */
static int opencl_missing(void) {
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) _exit(hm_test_opencl_missing("opencl:threads=1"));
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return !WIFEXITED(ws) || WEXITSTATUS(ws) != 0;
}

int main(int argc, char **argv) {
  static const size_t counts[] = {1, 7, 1023, 10007};
  int opencl = hm_test_opencl_only(argc, argv);
  if (opencl && opencl_missing()) return HM_TEST_SKIP;
  setenv("HETMIX_STAGE_CHUNK", "16384", 1);
  const char *host_sets[][3] = {{"cpu:threads=1", "cpu:threads=1", "cpu:threads=1"},
                                {"ref:dtype=f64", "ref:dtype=f64", "ref:dtype=f64"},
                                {"ref", "cpu:threads=1", "ref"}};
  const char *cl_sets[][3] = {{"opencl:threads=1", "cpu:threads=1", "opencl:threads=1"},
                              {"cpu:threads=1", "opencl:threads=1", "opencl:threads=1"}};
  setup list[64];
  int ns = 0;
  int nsets = opencl ? 2 : 3;
  for (int s = 0; s < nsets; s++)
    for (int nr = 2; nr <= 3; nr++)
      for (int c = 0; c < 4; c++) {
        setup su = {{NULL, NULL, NULL}, nr, counts[c]};
        for (int r = 0; r < 3; r++) su.specs[r] = opencl ? cl_sets[s][r] : host_sets[s][r];
        list[ns++] = su;
      }
  return run_setups(list, ns) ? 1 : 0;
}
