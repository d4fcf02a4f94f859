/* Acceptance: the dynamic-programming layer split equals exhaustive search of the same objective
 * on random small instances (up to 12 layers, 4 stages, 3 device types), with unequal layers,
 * boundary transfers and memory limits; it reports when nothing fits; and on larger instances
 * (up to 64 stages, where the search's pipelines are deep and memory leaves few ends per stage)
 * it returns exactly the splits it returned before its speed-ups (a digest of every bound and
 * objective bit, recorded with the straightforward DP of commit e589423). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/plan.h"

/* test_dp_splits_unchanged's digest, recorded before the DP's speed-ups */
#ifndef SPLIT_DIGEST
#define SPLIT_DIGEST 0xf74a16410d6ac8b9ull
#endif

static unsigned rng_state = 777;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) & 0xffffff;
}

enum { MAXL = 12, MAXP = 4, NTYPES = 3 };

static void test_dp_equals_exhaustive(void **state) {
  (void)state;
  int instances = 0, nofit = 0, ties = 0;
  for (int it = 0; it < 3000; it++) {
    const int n = 1 + rnd() % MAXL;
    const int p = 1 + rnd() % (n < MAXP ? n : MAXP);
    const int m = 1 + rnd() % 16;
    /* device types: speed and memory; each stage gets one of them */
    double speed[NTYPES], cap[NTYPES];
    for (int k = 0; k < NTYPES; k++) {
      speed[k] = 0.25 + (rnd() % 400) / 100.0;
      cap[k] = 4 + rnd() % 40;
    }
    double work[MAXL], wbytes[MAXL], abytes[MAXL], out[MAXL];
    for (int l = 0; l < n; l++) {
      /* integer-valued work makes exact ties common, which stresses tie handling */
      work[l] = (it % 3 == 0) ? 1 + rnd() % 4 : 0.1 + (rnd() % 1000) / 97.0;
      wbytes[l] = 1 + rnd() % 6;
      abytes[l] = rnd() % 3;
      out[l] = (rnd() % 50) / 100.0;
    }
    double time[MAXP * MAXL], bnd[MAXP * MAXL], ms[MAXP * MAXL], ma[MAXP * MAXL], mc[MAXP];
    for (int s = 0; s < p; s++) {
      int k = rnd() % NTYPES;
      mc[s] = (it % 4 == 0) ? 1e30 : cap[k];
      for (int l = 0; l < n; l++) {
        time[s * n + l] = work[l] / speed[k];
        bnd[s * n + l] = out[l];
        ms[s * n + l] = wbytes[l];
        ma[s * n + l] = abytes[l];
      }
    }
    hm_split_problem pb = {.nlayers = n, .nstages = p, .nmicro = m, .time = time,
                           .boundary = (it % 2) ? bnd : NULL, .mem_static = ms, .mem_act = ma,
                           .mem_cap = mc};
    int bd[MAXP + 1], be[MAXP + 1];
    double od = 0, oe = 0;
    hm_status sd = hm_split_dp(&pb, bd, &od);
    hm_status se = hm_split_exhaustive(&pb, be, &oe);
    assert_int_equal(sd, se);
    instances++;
    if (sd == HM_ERR_NO_FIT) {
      nofit++;
      continue;
    }
    assert_int_equal(sd, HM_OK);
    /* both evaluate the same objective (a max and a sum over <= 16 stage times, ~1e-15
     * relative rounding) in different orders; a worse split differs by at least one layer's
     * time, >= 1e-3 of the total here */
    if (fabs(od - oe) > 1e-9 * (1 + fabs(oe))) {
      print_error("instance %d: n=%d p=%d m=%d dp %.12g exhaustive %.12g\n", it, n, p, m, od, oe);
      fail();
    }
    /* the DP's own split really achieves what it reports */
    assert_true(fabs(hm_split_objective(&pb, bd) - od) <= 1e-12 * (1 + od)); /* the same sums, other order */
    ties += memcmp(bd, be, sizeof(int) * (p + 1)) != 0;
  }
  assert_true(instances - nofit >= 1000);
  assert_true(nofit > 0); /* the memory limits bind on some instances */
  print_message("%d instances, %d with no split in memory, %d equal-objective ties\n", instances,
                nofit, ties);
}

static void test_no_fit_message(void **state) {
  (void)state;
  double time[4] = {1, 1, 1, 1}, ms[4] = {10, 10, 10, 10}, mc[2] = {15, 15};
  hm_split_problem pb = {.nlayers = 2, .nstages = 2, .nmicro = 4, .time = time,
                         .mem_static = ms, .mem_cap = mc};
  int b[3];
  double o;
  assert_int_equal(hm_split_dp(&pb, b, &o), HM_OK);
  assert_int_equal(b[1], 1);
  mc[1] = 5;
  assert_int_equal(hm_split_dp(&pb, b, &o), HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "fits in memory"));
  pb.nstages = 3;
  assert_int_equal(hm_split_dp(&pb, b, &o), HM_ERR_NO_FIT);
}

/* FNV-1a over bytes: a digest of many splits, sensitive to any bound or objective bit. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

enum { BIGL = 96, BIGP = 64 };

/* One deep instance: few layer patterns (so equal-objective ties are common), stage types that
 * repeat, boundary transfers, and memory caps from loose to one-or-two layers per stage. */
static void big_instance(int it, hm_split_problem *pb, double *time, double *bnd, double *ms,
                         double *ma, double *mc) {
  const int n = 8 + rnd() % (BIGL - 7);
  const int p = 1 + rnd() % (n < BIGP ? n : BIGP);
  double work[BIGL], out[BIGL], wb[BIGL];
  for (int l = 0; l < n; l++) {
    work[l] = (it % 2) ? 1 + rnd() % 3 : 0.1 + (rnd() % 1000) / 97.0;
    out[l] = (rnd() % 20) / 100.0;
    wb[l] = 1 + (l == 0 || l == n - 1 ? 3 : 0) + rnd() % 2;
  }
  const double per_stage = (double)n / p; /* layers a stage holds on average */
  for (int s = 0; s < p; s++) {
    const int k = rnd() % 3;
    mc[s] = (it % 5 == 0) ? 1e30 : (2.0 + k) * (1.0 + per_stage * (0.8 + (rnd() % 100) / 100.0));
    for (int l = 0; l < n; l++) {
      time[s * n + l] = work[l] / (0.5 + k);
      bnd[s * n + l] = out[l] * (k + 1);
      ms[s * n + l] = wb[l];
      ma[s * n + l] = 0.25 * (l % 2);
    }
  }
  *pb = (hm_split_problem){.nlayers = n, .nstages = p, .nmicro = 1 + rnd() % 64, .time = time,
                           .boundary = (it % 3) ? bnd : NULL, .mem_static = ms, .mem_act = ma,
                           .mem_cap = mc};
}

static void test_dp_splits_unchanged(void **state) {
  (void)state;
  static double time[BIGP * BIGL], bnd[BIGP * BIGL], ms[BIGP * BIGL], ma[BIGP * BIGL], mc[BIGP];
  rng_state = 4242;
  uint64_t h = 1469598103934665603ull;
  int fit = 0, nofit = 0;
  for (int it = 0; it < 1500; it++) {
    hm_split_problem pb;
    big_instance(it, &pb, time, bnd, ms, ma, mc);
    int b[BIGP + 1];
    double o = 0;
    const hm_status st = hm_split_dp(&pb, b, &o);
    h = fnv(h, &st, sizeof st);
    if (st != HM_OK) {
      nofit++;
      continue;
    }
    fit++;
    h = fnv(h, b, sizeof(int) * (size_t)(pb.nstages + 1));
    h = fnv(h, &o, sizeof o);
  }
  print_message("%d instances fit, %d do not; digest %016llx\n", fit, nofit, (unsigned long long)h);
  assert_true(fit >= 500 && nofit >= 100); /* both the fitting and the binding-memory paths */
  assert_true(h == SPLIT_DIGEST);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dp_equals_exhaustive),
      cmocka_unit_test(test_no_fit_message),
      cmocka_unit_test(test_dp_splits_unchanged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
