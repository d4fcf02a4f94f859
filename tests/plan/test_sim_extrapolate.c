/* The simulator's steady-state extrapolation (docs/plan.md, section 4): the op-at-a-time
 * generator gives exactly the lists hm_schedule_1f1b builds and repeats as it declares; on random
 * pipelines (unequal stages, links, several classes, data-parallel and tied syncs, stage times
 * near ties) the extrapolated step equals the op-by-op simulation of the same lists; and a class
 * of 10^9 micro-batches is simulated with a bounded number of periods.
 *
 * Tolerance 1e-9 relative to the step: the extrapolation accepts a repeat when every state value
 * differs from the one c periods earlier by the same delta within 32 (c+1) eps |state|, and one
 * period's times are maxima of sums of the previous period's (non-expansive), so the K shifted
 * repeats are off by at most that per repeat: K * 32 (c+1) eps (j+p) delta / (K delta) relative,
 * with j <= 600 periods (the repeat came by period 514 in 14,000 random classes), p <= 8,
 * c <= 2p+2: < 1e-10; the op-by-op run itself rounds ~6m eps (m <= 5,600 here). */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/plan.h"

static unsigned rng_state = 4242;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) & 0xffffff;
}
static double unit(void) { return (rnd() % 1000000) / 1e6; }

static int op_equal(const hm_op *a, const hm_op *b) {
  return a->kind == b->kind && a->micro == b->micro && a->peer == b->peer &&
         a->layer_begin == b->layer_begin && a->layer_end == b->layer_end;
}

static void test_generator_one_op_at_a_time(void **state) {
  (void)state;
  for (int p = 1; p <= 7; p++)
    for (int m = 1; m <= 12; m++) {
      int bounds[8];
      for (int s = 0; s <= p; s++) bounds[s] = 2 * s;
      hm_schedule_config cfg = {.nstages = p, .nmicro = m, .stage_layers = bounds,
                                .data_parallel = m % 2, .layers_per_bucket = 1,
                                .tied_embeddings = m % 3 == 0};
      hm_schedule sc;
      assert_int_equal(hm_schedule_1f1b(&cfg, &sc), HM_OK);
      for (int s = 0; s < p; s++) {
        assert_int_equal(hm_schedule_1f1b_nops(&cfg, s), sc.stages[s].nops);
        for (int i = 0; i < sc.stages[s].nops; i++) {
          hm_op op = hm_schedule_1f1b_op(&cfg, s, i);
          assert_true(op_equal(&op, &sc.stages[s].ops[i]));
        }
        /* the declared steady state: period j is period 0 with micro-batches + j, and holds
         * the backward of micro-batch j */
        int64_t begin, nper;
        int len;
        hm_schedule_1f1b_steady(&cfg, s, &begin, &len, &nper);
        assert_int_equal(nper, m - (p - 1 - s < m ? p - 1 - s : m));
        for (int64_t j = 0; j < nper; j++) {
          int has_bwd = 0;
          for (int r = 0; r < len; r++) {
            hm_op a = sc.stages[s].ops[begin + j * len + r], b = sc.stages[s].ops[begin + r];
            b.micro += (int)j;
            assert_true(op_equal(&a, &b));
            has_bwd |= a.kind == HM_OP_BWD && a.micro == j;
          }
          assert_true(has_bwd);
        }
      }
      hm_schedule_free(&sc);
    }
}

typedef struct instance {
  int nclasses, nlayers;
  hm_sim_class cls[3];
  hm_sim_stage st[3][8];
  double grads[12];
} instance;

/* A stage time: half the instances use times of one size, half times over four decades. */
static double stage_time(int wide) { return wide ? pow(10.0, 4 * unit() - 2) : 0.5 + 10 * unit(); }

static void random_instance(instance *x, int family, int extra_micro) {
  memset(x, 0, sizeof *x);
  x->nlayers = 12;
  x->nclasses = 1 + rnd() % 3;
  const int wide = family == 1;
  const double base_f = stage_time(0), base_b = stage_time(0);
  for (int c = 0; c < x->nclasses; c++) {
    const int p = 1 + rnd() % 8;
    int cut[9] = {0}, n = 1;
    while (n < p) { /* p-1 distinct cuts in 1..11 */
      int v = 1 + rnd() % 11, dup = 0;
      for (int i = 1; i < n; i++) dup |= cut[i] == v;
      if (!dup) cut[n++] = v;
    }
    for (int i = 1; i < n; i++)
      for (int j = i + 1; j < n; j++)
        if (cut[j] < cut[i]) { int t = cut[i]; cut[i] = cut[j]; cut[j] = t; }
    cut[p] = x->nlayers;
    const int comm = rnd() % 3; /* 0: none, 1: latency only, 2: bandwidth too */
    for (int s = 0; s < p; s++) {
      hm_sim_stage *sg = &x->st[c][s];
      sg->layer_begin = cut[s];
      sg->layer_end = cut[s + 1];
      sg->tp = 1 + rnd() % 2;
      if (family == 2) { /* near ties: equal stages up to relative 1e-6 .. 1e-12 */
        const double eps = pow(10.0, -6.0 - 6 * unit());
        sg->fwd = base_f * (1 + eps * (unit() - 0.5));
        sg->bwd = base_b * (1 + eps * (unit() - 0.5));
      } else {
        sg->fwd = stage_time(wide);
        sg->bwd = stage_time(wide) * (wide ? 1 : 2);
      }
      sg->optimizer = 0.1 * unit();
      sg->act_bytes = comm == 2 ? 1e6 * unit() : 0;
      sg->link_next = (hm_link){.bandwidth = comm == 2 ? 1e5 + 1e7 * unit() : 0,
                                .latency = comm ? 0.5 * unit() : 0};
      sg->mem_static = 1e9 * unit();
      sg->mem_act = 1e8 * unit();
    }
    x->cls[c] = (hm_sim_class){.nreplicas = 1 + rnd() % 4, .nstages = p,
                               .nmicro = p + 1 + extra_micro + (int)(rnd() % 300), .stages = x->st[c]};
  }
  for (int l = 0; l < x->nlayers; l++) x->grads[l] = 1e8 * unit();
}

static hm_sim_input input_of(instance *x, int full_micro) {
  hm_sim_input in = {.nclasses = x->nclasses, .classes = x->cls, .nlayers = x->nlayers,
                     .layer_grad_bytes = x->grads, .layers_per_bucket = 1 + (int)(rnd() % 3),
                     .tied_embeddings = (int)(rnd() % 2), .full_micro = full_micro};
  in.sync = (hm_sync_model){.link = {.bandwidth = 1e10, .latency = 1e-5}, .ngroups = 1};
  in.tied_link = (hm_link){.bandwidth = 1e9, .latency = 1e-5};
  in.grad_norm_time = 1e-4;
  return in;
}

static void assert_close(double a, double b, double scale) {
  if (!(fabs(a - b) <= 1e-9 * scale)) fail_msg("%.17g vs %.17g (scale %.17g)", a, b, scale);
}

/* Extrapolated against op-by-op; returns 1 if the run extrapolated. */
static int compare_one(instance *x) {
  const unsigned keep = rng_state;
  hm_sim_input full = input_of(x, INT_MAX);
  rng_state = keep; /* the same bucket and tied settings */
  hm_sim_input fast = input_of(x, 1);
  hm_sim_result a, b;
  assert_int_equal(hm_simulate(&full, &a, NULL), HM_OK);
  assert_int_equal(hm_simulate(&fast, &b, NULL), HM_OK);
  assert_int_equal(a.periods_skipped, 0);
  const double scale = a.step_time;
  assert_close(a.step_time, b.step_time, scale);
  assert_close(a.bubble_fraction, b.bubble_fraction, 1.0);
  assert_true(a.mem_peak_max == b.mem_peak_max);
  assert_int_equal(a.over_memory, b.over_memory);
  for (int c = 0; c < x->nclasses; c++)
    for (int s = 0; s < x->cls[c].nstages; s++) {
      const hm_sim_stage_result *u = &a.stages[c][s], *v = &b.stages[c][s];
      assert_close(u->busy, v->busy, scale);
      assert_close(u->comm, v->comm, scale);
      assert_close(u->idle, v->idle, scale);
      assert_close(u->end, v->end, scale);
      assert_int_equal(u->max_inflight, v->max_inflight);
      assert_true(u->mem_peak == v->mem_peak);
    }
  const int skipped = b.periods_skipped > 0;
  hm_sim_result_free(&a);
  hm_sim_result_free(&b);
  return skipped;
}

static void run_family(int family, int n, int extra_micro, int min_extrapolated) {
  int extrapolated = 0;
  for (int it = 0; it < n; it++) {
    instance x;
    random_instance(&x, family, extra_micro);
    extrapolated += compare_one(&x);
  }
  print_message("family %d: %d of %d instances extrapolated\n", family, extrapolated, n);
  assert_true(extrapolated >= min_extrapolated);
}

static void test_extrapolation_equals_full(void **state) {
  (void)state;
  run_family(0, 1500, 0, 1400);
}

static void test_extrapolation_wide_times(void **state) {
  (void)state;
  run_family(1, 1500, 0, 1400);
}

static void test_extrapolation_near_ties(void **state) {
  (void)state;
  run_family(2, 500, 0, 450);
}

/* Long runs: thousands of periods shifted at once. */
static void test_extrapolation_long_runs(void **state) {
  (void)state;
  for (int family = 0; family < 3; family++) run_family(family, 30, 5000, 30);
}

/* 10^9 micro-batches: equal stages without communication give (m+p-1)(f+b) exactly; the run
 * simulates a bounded number of periods (checked through the count it skipped). */
static void test_huge_micro_count(void **state) {
  (void)state;
  hm_sim_stage st[8];
  memset(st, 0, sizeof st);
  const int p = 8, m = 1000000000;
  for (int s = 0; s < p; s++)
    st[s] = (hm_sim_stage){.layer_begin = s, .layer_end = s + 1, .tp = 1, .fwd = 1.25, .bwd = 2.5};
  hm_sim_class cl = {.nreplicas = 1, .nstages = p, .nmicro = m, .stages = st};
  hm_sim_input in = {.nclasses = 1, .classes = &cl, .nlayers = p, .layers_per_bucket = 1};
  hm_sim_result r;
  hm_sim_trace tr = {0};
  assert_int_equal(hm_simulate(&in, &r, &tr), HM_OK);
  const double want = (double)(m + p - 1) * 3.75;
  assert_true(fabs(r.step_time - want) <= 1e-12 * want);
  assert_true(r.periods_skipped > m - 1000);
  assert_true(tr.nevents < 100000); /* the trace holds the simulated periods only */
  assert_int_equal(r.stages[0][0].max_inflight, p);
  hm_sim_trace_free(&tr);
  hm_sim_result_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_generator_one_op_at_a_time),
      cmocka_unit_test(test_extrapolation_equals_full),
      cmocka_unit_test(test_extrapolation_wide_times),
      cmocka_unit_test(test_extrapolation_near_ties),
      cmocka_unit_test(test_extrapolation_long_runs),
      cmocka_unit_test(test_huge_micro_count),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
