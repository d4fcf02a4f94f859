/* The shared cost model: formulas at known points, busbw factors, deterministic best choice. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hetmix/cost.h"

static const hm_link lan = {.bandwidth = 1e9, .latency = 1e-5, .reduce_bw = 0};
/* Tolerances: each formula is a handful of f64 operations on values of 1e-5 .. 1e-2, so its
 * rounding is a few u64 (1.1e-16) relative, ~1e-18 absolute; 1e-15 (factors near 1) and 1e-12
 * (times near 6e-3) leave orders of magnitude to spare, and a wrong term (one more latency,
 * a factor n or 2) changes a result by 1e-5 or more. */

static void test_p2p(void **state) {
  (void)state;
  assert_true(fabs(hm_cost_p2p(&lan, 1e6) - (1e-5 + 1e-3)) < 1e-15);
}

static void test_ring_allreduce_formula(void **state) {
  (void)state;
  /* 2(n-1) alpha + 2(n-1)/n * bytes / bw */
  double t = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, 4, 4e6, &lan);
  assert_true(fabs(t - (6 * 1e-5 + 1.5 * 4e6 / 1e9)) < 1e-12);
  assert_true(hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, 1, 4e6, &lan) == 0.0);
}

static void test_best_algo_by_size(void **state) {
  (void)state;
  /* tiny messages: latency-bound, recursive doubling wins; large: ring wins */
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 8, 8, &lan, NULL), HM_ALGO_RECURSIVE_DOUBLING);
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 8, 64e6, &lan, NULL), HM_ALGO_RING);
  /* unsupported combination is negative, never chosen */
  assert_true(hm_cost_collective(HM_COLL_ALLTOALL, HM_ALGO_TREE, 4, 1e3, &lan) < 0);
}

static void test_busbw_factors(void **state) {
  (void)state;
  assert_true(fabs(hm_busbw_factor(HM_COLL_ALLREDUCE, 4) - 1.5) < 1e-15);
  assert_true(fabs(hm_busbw_factor(HM_COLL_ALLGATHER, 4) - 0.75) < 1e-15);
  assert_true(fabs(hm_busbw_factor(HM_COLL_BROADCAST, 4) - 1.0) < 1e-15);
}

static void test_algo_names_roundtrip(void **state) {
  (void)state;
  for (int a = 0; a < HM_ALGO_COUNT; a++)
    assert_int_equal(hm_coll_algo_parse(hm_coll_algo_name((hm_coll_algo)a)), a);
  assert_int_equal(hm_coll_algo_parse("bogus"), -1);
}

/* Compressed links: the pipeline's pace is its slowest stage; compression pays on a slow link
 * for a large transfer, not on a fast link, not for one small chunk, not without figures. */
static void test_zip_costs(void **state) {
  (void)state;
  const hm_zip_figures z = {.ratio = 0.7, .compress_bw = 500e6, .decompress_bw = 1e9};
  const hm_link gbit = {.bandwidth = 125e6, .latency = 1e-4, .reduce_bw = 0};
  const hm_link ten = {.bandwidth = 1.25e9, .latency = 1e-5, .reduce_bw = 0};
  assert_true(fabs(hm_cost_zip_bandwidth(125e6, &z) - 125e6 / 0.7) < 1e-3); /* the link: 178.6 MB/s */
  assert_true(hm_cost_zip_bandwidth(1.25e9, &z) == 500e6);                   /* the compressor */
  /* 64 MiB in 512 KiB chunks: latency + fill (one chunk compressed, one decompressed) + the rest */
  const double b = 64.0 * (1 << 20), c = 512.0 * 1024;
  assert_true(fabs(hm_cost_p2p_zip(&gbit, b, c, &z) - (1e-4 + c / 500e6 + c / 1e9 + b * 0.7 / 125e6)) < 1e-12);
  assert_true(hm_cost_zip_pays(&gbit, b, c, &z));
  assert_false(hm_cost_zip_pays(&ten, b, c, &z));
  assert_false(hm_cost_zip_pays(&gbit, 4096, c, &z)); /* 4 KiB: compress + decompress exceed the saving */
  const hm_zip_figures none = {0};
  assert_true(hm_cost_p2p_zip(&gbit, b, c, &none) < 0);
  assert_false(hm_cost_zip_pays(&gbit, b, c, &none));
  hm_link eff;
  hm_cost_link_with_zip(&gbit, &z, &eff);
  assert_true(eff.bandwidth == hm_cost_zip_bandwidth(125e6, &z) && eff.latency == gbit.latency);
  hm_cost_link_with_zip(&ten, &z, &eff); /* never slower than sending as is */
  assert_true(eff.bandwidth == ten.bandwidth);
}

/* Hierarchical allreduce, bandwidth terms only: pool ring reduce-scatter + allgather
 * 2 (k-1)/k B / bw_pool, plus the ring across pools on B/k per rank, `sharing` ranks of a host
 * through one host link: 2 (P-1)/P (B/k) / (bw_cross / sharing). */
static void test_hier_allreduce_formula(void **state) {
  (void)state;
  const hm_link pool = {100e6, 0, 0, 0}, cross = {10e6, 0, 0, 0};
  const double b = 64e6;
  double t = hm_cost_hier(HM_COLL_ALLREDUCE, 2, 4, 2, b, &pool, &cross);
  double want = 1.5 * b / 100e6 + 0.5 * b / 10e6;
  assert_true(fabs(t - want) < 1e-12 * want);
  /* the flat ring over the slow link: 2 (n-1)/n B / bw_cross, 2.7x slower here */
  double ring = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, 8, b, &cross);
  assert_true(ring / t > 2.6 && ring / t < 2.8);
  assert_true(hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_HIER, 8, b, &cross) < 0);
  assert_true(hm_cost_hier(HM_COLL_ALLREDUCE, 2, 0, 1, b, &pool, &cross) < 0);
  /* reduce-scatter and allgather: the pool's half, (k-1)/k B / bw_pool, plus the cross ring on
   * the bundle B/k: (P-1)/P (B/k) / (bw_cross / sharing) */
  const double half = 0.75 * b / 100e6 + 0.25 * b / 10e6;
  assert_true(fabs(hm_cost_hier(HM_COLL_REDUCE_SCATTER, 2, 4, 2, b, &pool, &cross) - half) < 1e-12 * half);
  assert_true(fabs(hm_cost_hier(HM_COLL_ALLGATHER, 2, 4, 2, b, &pool, &cross) - half) < 1e-12 * half);
  assert_true(hm_cost_hier(HM_COLL_BROADCAST, 2, 4, 2, b, &pool, &cross) < 0);
}

/* The latency terms against the algorithms' message schedules (src/comm/coll.c): each ring step
 * is one message per rank that the next step forwards, so a ring over n ranks pays n-1 link
 * latencies for reduce-scatter or allgather and 2(n-1) for allreduce; hierarchical allreduce
 * runs three rings one after the other (reduce-scatter over the k ranks of the pool, allreduce
 * across the P pools, allgather in the pool): 2(k-1) pool latencies + 2(P-1) cross latencies.
 * Infinite bandwidths isolate the latencies. */
static void test_latency_counts_match_schedules(void **state) {
  (void)state;
  const double ap = 1e-3, ac = 1e-1; /* distinct, so a pool step counted as a cross step shows */
  const hm_link pool = {INFINITY, ap, 0, 0}, cross = {INFINITY, ac, 0, 0};
  for (int np = 2; np <= 4; np++)
    for (int k = 1; k <= 5; k++) {
      const double t = hm_cost_hier(HM_COLL_ALLREDUCE, np, k, 1, 1e6, &pool, &cross);
      const double want = 2 * (k - 1) * ap + 2 * (np - 1) * ac;
      assert_true(fabs(t - want) < 1e-12 * want);
      const double rs = hm_cost_hier(HM_COLL_REDUCE_SCATTER, np, k, 1, 1e6, &pool, &cross);
      assert_true(fabs(rs - ((k - 1) * ap + (np - 1) * ac)) < 1e-12 * want);
    }
  for (int n = 2; n <= 9; n++) {
    const double t = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, n, 1e6, &cross);
    assert_true(fabs(t - 2 * (n - 1) * ac) < 1e-12 * t);
  }
}

/* A rate-shaped link (a token bucket) passes up to `burst` bytes of a message at once after it
 * idled long enough to refill them (burst / bandwidth). A ring step's message follows the link's
 * previous one after a latency, so each step gets min(burst, bandwidth x latency, message) free;
 * the hierarchy's first cross step comes after the pool's reduce-scatter, during which the links
 * between pools idled: it gets min(burst, message of the host) free. Figures as measured on the
 * testbed (bench/comm/testbed_allreduce.sh: 100 MB/s 30 us 3000 B, 10 MB/s 33 us 2200 B). */
static void test_burst_credit(void **state) {
  (void)state;
  const hm_link pool = {100e6, 30e-6, 0, 3000}, cross = {10e6, 33e-6, 0, 2200};
  hm_link plain_pool = pool, plain_cross = cross;
  plain_pool.burst = plain_cross.burst = 0;
  const double b = 65536;
  /* flat ring over 8 ranks: 14 steps of b/8 = 8 KiB, each 330 B (10 MB/s x 33 us) free */
  const double ring = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, 8, b, &cross);
  const double ring0 = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, 8, b, &plain_cross);
  assert_true(fabs(ring0 - ring - 14 * 330 / 10e6) < 1e-12 * ring0);
  /* hierarchy, 2 pools of 4 ranks, 2 per host: 6 pool steps of 16 KiB with 3000 B free each
   * (100 MB/s x 30 us), 2 cross steps of 8 KiB per rank (16 KiB per host link): the first gets
   * the whole 2200 B burst, the second 330 B */
  const double hier = hm_cost_hier(HM_COLL_ALLREDUCE, 2, 4, 2, b, &pool, &cross);
  const double hier0 = hm_cost_hier(HM_COLL_ALLREDUCE, 2, 4, 2, b, &plain_pool, &plain_cross);
  const double saved = 6 * 3000 / 100e6 + (2200 + 330) / 10e6;
  assert_true(fabs(hier0 - hier - saved) < 1e-12 * hier0);
  const double rs = hm_cost_hier(HM_COLL_REDUCE_SCATTER, 2, 4, 2, b, &pool, &cross);
  const double rs0 = hm_cost_hier(HM_COLL_REDUCE_SCATTER, 2, 4, 2, b, &plain_pool, &plain_cross);
  assert_true(fabs(rs0 - rs - (3 * 3000 / 100e6 + 2200 / 10e6)) < 1e-12 * rs0);
  /* a burst beyond every message: only the latencies are left, never less */
  hm_link huge_pool = pool, huge_cross = cross;
  huge_pool.burst = huge_cross.burst = 1e9;
  huge_pool.latency = huge_cross.latency = 1; /* refills any burst within a step */
  const double lat_only = 6 * 1.0 + 2 * 1.0;
  assert_true(fabs(hm_cost_hier(HM_COLL_ALLREDUCE, 2, 4, 2, b, &huge_pool, &huge_cross) - lat_only) < 1e-12);
  /* a plain link (burst 0) keeps the alpha-beta figures exactly */
  assert_true(hier0 == hm_cost_hier(HM_COLL_ALLREDUCE, 2, 4, 2, b, &plain_pool, &plain_cross));
  assert_true(fabs(ring0 - (14 * 33e-6 + 14.0 / 8 * b / 10e6)) < 1e-12 * ring0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_p2p),
      cmocka_unit_test(test_ring_allreduce_formula),
      cmocka_unit_test(test_best_algo_by_size),
      cmocka_unit_test(test_busbw_factors),
      cmocka_unit_test(test_algo_names_roundtrip),
      cmocka_unit_test(test_zip_costs),
      cmocka_unit_test(test_hier_allreduce_formula),
      cmocka_unit_test(test_latency_counts_match_schedules),
      cmocka_unit_test(test_burst_credit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
