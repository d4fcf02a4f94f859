/* The exhaustive search (hm_plan_search_exhaustive) as the oracle of the default search, on
 * random small heterogeneous clusters (bench/plan/exact_cases.h; up to 6 devices here so that
 * the oracle stays quick, bench_search_exact runs 200 cases of up to 8):
 *  - the oracle's plan validates, fits in memory, and is never slower than the default's;
 *  - the default search's best is within 2% of the oracle's on every case and within 0.5% on
 *    at least HM_EXACT_WITHIN_HALF_PERCENT of them (docs/plan.md, section 6);
 *  - cases of 8 devices the default search once lost, whose exhaustive best pairs two replica
 *    templates of which at least one mixes types, are within 0.5% (pool_pairs in search.c),
 *    and so are those of types taken in turn and one the refinement's move order lost;
 *  - clusters too large for the oracle are refused with a clear message. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exact_cases.h"
#include "hetmix/plan.h"

enum { NCASES = 24 };

static void test_default_against_oracle(void **state) {
  (void)state;
  hm_plan *best = calloc(1, sizeof *best);
  assert_non_null(best);
  int done = 0, half = 0, over2 = 0;
  double worst = 0;
  for (uint64_t seed = 1; done < NCASES; seed++) {
    exact_case e;
    assert_int_equal(exact_case_make(seed, 6, &e), HM_OK);
    hm_search_options o;
    hm_search_options_default(&o);
    o.top_k = 1;
    o.upper_bound = 0;
    hm_search_result r;
    hm_status st = hm_plan_search(&e.in, &o, &r);
    if (st == HM_ERR_NO_FIT) {
      exact_case_free(&e);
      continue;
    }
    if (st != HM_OK) fail_msg("%s: %s", e.desc, hm_last_error());
    int64_t ns = 0;
    if (hm_plan_search_exhaustive(&e.in, &o, best, &ns) != HM_OK)
      fail_msg("%s: exhaustive: %s", e.desc, hm_last_error());
    assert_int_equal(hm_plan_validate(&e.in, best), HM_OK);
    assert_false(best->over_memory);
    /* the oracle starts from the default's best: never slower (same simulator, same figures) */
    if (best->step_time > r.plans[0].step_time * (1 + 1e-12))
      fail_msg("%s: exhaustive %.9g slower than default %.9g", e.desc, best->step_time,
               r.plans[0].step_time);
    const double gap = r.plans[0].step_time / best->step_time - 1;
    if (gap > worst) worst = gap;
    half += gap <= 0.005;
    if (gap > 0.005) print_message("%s: default %.3f%% slower than exhaustive\n", e.desc, 100 * gap);
    over2 += gap > 0.02;
    hm_search_result_free(&r);
    exact_case_free(&e);
    done++;
  }
  print_message("%d cases: %d within 0.5%% of the exhaustive best, worst %+.3f%%\n", done, half,
                100 * worst);
  assert_int_equal(over2, 0);
  assert_true(half * 100 >= 99 * done);
  free(best);
}

/* Gap of the default search's best to the exhaustive best on case `seed` of up to 8 devices. */
static double gap_of(uint64_t seed, char *desc, size_t n) {
  exact_case e;
  assert_int_equal(exact_case_make(seed, 8, &e), HM_OK);
  snprintf(desc, n, "%s", e.desc);
  hm_search_options o;
  hm_search_options_default(&o);
  o.top_k = 1;
  o.upper_bound = 0;
  hm_search_result r;
  if (hm_plan_search(&e.in, &o, &r) != HM_OK) fail_msg("%s: %s", e.desc, hm_last_error());
  hm_plan *best = calloc(1, sizeof *best);
  assert_non_null(best);
  if (hm_plan_search_exhaustive(&e.in, &o, best, NULL) != HM_OK)
    fail_msg("%s: exhaustive: %s", e.desc, hm_last_error());
  const double gap = r.plans[0].step_time / best->step_time - 1;
  free(best);
  hm_search_result_free(&r);
  exact_case_free(&e);
  return gap;
}

/* Cases whose exhaustive best is two replica templates, at least one of mixed types, that the
 * search did not pair before pool_pairs (gap then, from bench_search_exact -v): seed 75
 * [t2/tp2 t1 t1] + [t2/tp2 t0 t0] (+1.23%), 78 [t2 t1 t2 t2] + [t1 t0/tp2] (+2.26%), 91
 * [t0 t1 t1] + [t2 t2 t1 t1 t1] (+3.71%), 175 [t0/tp2 t1] + [t0/tp2 t1 t2] (+7.47%), 189
 * [t2/tp2 t0] + [t2/tp2 t1 t1 t1] (+4.21%). */
static void test_paired_mixed_templates(void **state) {
  (void)state;
  static const uint64_t seeds[] = {75, 78, 91, 175, 189};
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    char desc[256];
    const double gap = gap_of(seeds[i], desc, sizeof desc);
    if (gap > 0.005) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
  }
}

/* Cases whose exhaustive best takes the types in turn (try_round_robin in search.c; gap before):
 * seed 146 [t1/tp2 t0/tp2 t1/tp2 t0/tp2] (+1.19%), 174 [t0 t2 t1/tp2 t2 t1/tp2] (+0.70%). */
static void test_round_robin_orders(void **state) {
  (void)state;
  static const uint64_t seeds[] = {146, 174};
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    char desc[256];
    const double gap = gap_of(seeds[i], desc, sizeof desc);
    if (gap > 0.005) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
  }
}

/* Seed 139: the pair [t1 x6] m=8 + [t1 5 | t1 1] m=12 is refined; a layer move first (to 4 | 2,
 * 0.5% faster) ended the refinement beside the micro-batch move to m=7 and 13, 6% faster
 * (search_refine.c tries micro-batch moves first on small clusters; gap before +3.25%). */
static void test_refine_micro_batches_first(void **state) {
  (void)state;
  char desc[256];
  const double gap = gap_of(139, desc, sizeof desc);
  if (gap > 0.005) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
}

/* Plans that need refinement from a place in the simulated list past 32 (64 refined on a small
 * cluster): seed 113 [t1 t0 x4 t2/tp2] (+0.79% before), and seed 123 [t2 x3 t0 x2 t1 x3], left
 * 4.6% off when the round-robin orders took refinement places with 32. Seed 113 came out exact
 * with 64, and +0.726% once the simulator overlapped gradient buckets with the backward and
 * costed the head's tensor-parallel allreduce: it is held to the acceptance's hard bound (2%;
 * at most 1% of cases may sit between 0.5% and 2%), seed 123 to 0.5%. */
static void test_refined_shortlist(void **state) {
  (void)state;
  static const struct { uint64_t seed; double bound; } cases[] = {{113, 0.02}, {123, 0.005}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char desc[256];
    const double gap = gap_of(cases[i].seed, desc, sizeof desc);
    if (gap > cases[i].bound) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
  }
}

/* Cases whose exhaustive best has the second type's stages inside the first type's run
 * (try_inserted in search.c; gap before): seed 263 [t1 t0 t1 t1 t2/tp4] (+2.50%), 380
 * [t2/tp2 t1 t2/tp2 t0] (+2.03%), 321 [t1 t0/tp4 t1 t1 t2] (+0.84%). */
static void test_inserted_orders(void **state) {
  (void)state;
  /* and seed 272 [t2/tp2 t0 t0] + [t2/tp2 t1/tp2], which the inserted orders pushed out of a
   * pool of 128 templates (+2.84%; 256 now) */
  static const uint64_t seeds[] = {263, 380, 321, 272};
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    char desc[256];
    const double gap = gap_of(seeds[i], desc, sizeof desc);
    if (gap > 0.005) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
  }
}

/* Seed 593 (held out, seeds 401-600): GPT-2 ties its embedding, and a pipeline of two stages or
 * more all-reduces that gradient between its ends after the backward (5.2 ms over the NIC here,
 * half the step). The estimates left it out, so 16 multi-stage t0 plans estimated at 5.9 ms
 * (simulated 10.9 ms) filled t0's shortlist and the one-stage [t0/tp2] at micro-batch 4
 * (8.73 ms, no tied sync) was never simulated: +7.30% before the estimate counted it. */
static void test_tied_sync_estimated(void **state) {
  (void)state;
  char desc[256];
  const double gap = gap_of(593, desc, sizeof desc);
  if (gap > 0.005) fail_msg("%s: default %.3f%% slower than exhaustive", desc, 100 * gap);
}

static void test_too_large_refused(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/examples/reference-768.json", HM_SOURCE_DIR);
  hm_cluster c;
  hm_model m;
  hm_train t;
  assert_int_equal(hm_cluster_load(path, &c), HM_OK);
  snprintf(path, sizeof path, "%s/examples/llama2-70b.json", HM_SOURCE_DIR);
  assert_int_equal(hm_model_load(path, &m), HM_OK);
  hm_train_default(&t);
  assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_OK);
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};
  hm_plan *p = calloc(1, sizeof *p);
  assert_non_null(p);
  assert_int_equal(hm_plan_search_exhaustive(&in, NULL, p, NULL), HM_ERR_UNSUPPORTED);
  assert_non_null(strstr(hm_last_error(), "at most 16 devices"));
  free(p);
  hm_cluster_free(&c);
  hm_model_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_against_oracle),
      cmocka_unit_test(test_paired_mixed_templates),
      cmocka_unit_test(test_round_robin_orders),
      cmocka_unit_test(test_refine_micro_batches_first),
      cmocka_unit_test(test_refined_shortlist),
      cmocka_unit_test(test_inserted_orders),
      cmocka_unit_test(test_tied_sync_estimated),
      cmocka_unit_test(test_too_large_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
