/* Interleaved 1F1B (virtual pipeline stages): the generator's lists against an order rebuilt here
 * from Megatron-LM's description, op-list invariants (every chunk of every micro-batch forward
 * and backward once, sends matching receives, buckets and optimizer per chunk), no deadlock in
 * the simulator for any (p, v, m), the published bubble (p-1)/v stage times on equal stages, and
 * memory from the activations each device holds. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/plan.h"

enum { MAXV = 64 };

/* The schedule table: micro-batches in groups of p, the last group holding the remainder too
 * (p + m mod p, or m when m < p); within a group every micro-batch of chunk 0, then chunk 1, ...;
 * entry k -> (micro, chunk). *gmax: the largest group. */
static void table(int p, int v, int m, int k, int *micro, int *chunk, int *gmax) {
  int n = 0;
  *gmax = 0;
  for (int g = 0; g < m;) {
    const int size = m - g < 2 * p ? m - g : p;
    if (size > *gmax) *gmax = size;
    for (int c = 0; c < v; c++)
      for (int i = 0; i < size; i++, n++)
        if (n == k) *micro = g + i, *chunk = c;
    g += size;
  }
}

/* Expected compute order of stage s: warm-up forwards, 1F1B pairs, cool-down backwards. */
static void expected_order(int p, int v, int m, int s, int *is_fwd, int *micro, int *chunk) {
  int g, mi, c;
  table(p, v, m, 0, &mi, &c, &g);
  const int total = m * v, w0 = 2 * (p - 1 - s) + (v - 1) * g, w = w0 < total ? w0 : total;
  int n = 0, f = 0, b = 0;
  for (; f < w; f++, n++) is_fwd[n] = 1, table(p, v, m, f, &micro[n], &chunk[n], &g);
  while (f < total || b < total) {
    if (f < total) is_fwd[n] = 1, table(p, v, m, f++, &micro[n], &chunk[n], &g), n++;
    is_fwd[n] = 0, table(p, v, m, b++, &micro[n], &chunk[n], &g), chunk[n] = v - 1 - chunk[n], n++;
  }
}

static void check_lists(int p, int v, int m, const int *bounds) {
  hm_schedule_config cfg = {.nstages = p, .nmicro = m, .stage_layers = bounds, .data_parallel = 1,
                            .layers_per_bucket = 2, .tied_embeddings = 1, .nchunks = v};
  hm_schedule sc;
  assert_int_equal(hm_schedule_1f1b(&cfg, &sc), HM_OK);
  int *isf = malloc(sizeof(int) * 2 * m * v), *mi = malloc(sizeof(int) * 2 * m * v),
      *ch = malloc(sizeof(int) * 2 * m * v);
  for (int s = 0; s < p; s++) {
    const hm_stage_ops *st = &sc.stages[s];
    assert_int_equal(st->nops, (int)hm_schedule_1f1b_nops(&cfg, s));
    expected_order(p, v, m, s, isf, mi, ch);
    int n = 0, nopt = 0, nbucket_layers = 0, norm = 0;
    for (int i = 0; i < st->nops; i++) {
      const hm_op *op = &st->ops[i];
      const int j = op->chunk * p + s, last = p * v - 1;
      assert_true(op->chunk >= 0 && op->chunk < v);
      if (op->kind == HM_OP_FWD || op->kind == HM_OP_BWD) {
        assert_int_equal(op->kind == HM_OP_FWD, isf[n]);
        assert_int_equal(op->micro, mi[n]);
        assert_int_equal(op->chunk, ch[n]);
        assert_int_equal(op->layer_begin, bounds[j]);
        assert_int_equal(op->layer_end, bounds[j + 1]);
        n++;
        /* the group around it: a receive before unless first (forward) / last (backward) */
        const int fwd = op->kind == HM_OP_FWD, has_in = fwd ? j > 0 : j < last;
        const int has_out = fwd ? j < last : j > 0;
        if (has_in) {
          assert_int_equal(st->ops[i - 1].kind, fwd ? HM_OP_RECV_ACT : HM_OP_RECV_GRAD);
          assert_int_equal(st->ops[i - 1].micro, op->micro);
          assert_int_equal(st->ops[i - 1].peer, fwd ? (s + p - 1) % p : (s + 1) % p);
        }
        if (has_out) {
          assert_int_equal(st->ops[i + 1].kind, fwd ? HM_OP_SEND_ACT : HM_OP_SEND_GRAD);
          assert_int_equal(st->ops[i + 1].chunk, op->chunk);
          assert_int_equal(st->ops[i + 1].peer, fwd ? (s + 1) % p : (s + p - 1) % p);
        }
      } else if (op->kind == HM_OP_ALLREDUCE) {
        nbucket_layers += op->layer_end - op->layer_begin;
        assert_true(op->layer_begin >= bounds[j] && op->layer_end <= bounds[j + 1]);
      } else if (op->kind == HM_OP_OPTIMIZER) {
        assert_int_equal(op->chunk, nopt++);
        assert_int_equal(op->layer_begin, bounds[j]);
      } else if (op->kind == HM_OP_GRAD_NORM) {
        norm++;
      } else if (op->kind == HM_OP_TIED_EMB_SYNC) {
        assert_true(s == 0 || s == p - 1);
        assert_int_equal(op->peer, s == 0 ? p - 1 : 0);
      }
    }
    assert_int_equal(n, 2 * m * v);
    assert_int_equal(nopt, v);
    assert_int_equal(norm, 1);
    int held = 0;
    for (int c = 0; c < v; c++) held += bounds[c * p + s + 1] - bounds[c * p + s];
    assert_int_equal(nbucket_layers, held);
    /* sends of virtual stage j (stage s) match receives of j+1 (stage (s+1) % p) in order */
    for (int c = 0; c < v && c * p + s < p * v - 1; c++) {
      const int j = c * p + s, to = (s + 1) % p, tc = (j + 1) / p;
      const hm_stage_ops *nx = &sc.stages[to];
      int a = 0, b = 0;
      for (int k = 0; k < m; k++) {
        while (!(st->ops[a].kind == HM_OP_SEND_ACT && st->ops[a].chunk == c)) a++;
        while (!(nx->ops[b].kind == HM_OP_RECV_ACT && nx->ops[b].chunk == tc)) b++;
        assert_int_equal(st->ops[a].micro, nx->ops[b].micro);
        a++, b++;
      }
    }
  }
  free(isf);
  free(mi);
  free(ch);
  hm_schedule_free(&sc);
}

static void test_lists(void **state) {
  (void)state;
  int bounds[MAXV + 1];
  for (int p = 2; p <= 5; p++)
    for (int v = 2; v <= 4; v++)
      for (int m = 1; m <= 13; m++) {
        for (int j = 0; j <= p * v; j++) bounds[j] = 2 * j + (j > 0); /* first chunk 3 layers */
        check_lists(p, v, m, bounds);
      }
}

/* One class of p stages x v chunks, chunk j holds layer j; zero communication. */
static hm_status sim(int p, int v, int m, const double *f, const double *b, hm_sim_result *r) {
  hm_sim_stage st[MAXV];
  memset(st, 0, sizeof st);
  for (int j = 0; j < p * v; j++)
    st[j] = (hm_sim_stage){.layer_begin = j, .layer_end = j + 1, .tp = 1, .fwd = f[j], .bwd = b[j],
                           .mem_static = 100, .mem_act = 1 + j};
  hm_sim_class cl = {.nreplicas = 1, .nstages = p * v, .nmicro = m, .stages = st, .nchunks = v};
  hm_sim_input in = {.nclasses = 1, .classes = &cl, .nlayers = p * v, .layers_per_bucket = 1};
  return hm_simulate(&in, r, NULL);
}

/* No (p, v, m) deadlocks (sends never block, receives wait: a cycle would not depend on the
 * times). With a short last group (m mod p micro-batches) after full ones, p=4 v=3 m=5 did. */
static void test_no_deadlock(void **state) {
  (void)state;
  unsigned seed = 7;
  for (int p = 2; p <= 8; p++)
    for (int v = 2; v <= 4 && p * v <= MAXV; v++)
      for (int m = 1; m <= 24; m++) {
        double f[MAXV], b[MAXV];
        for (int j = 0; j < p * v; j++) {
          seed = seed * 1103515245u + 12345u;
          f[j] = 0.5 + (seed >> 16) % 100 / 50.0;
          b[j] = 2 * f[j];
        }
        hm_sim_result r;
        if (sim(p, v, m, f, b, &r) != HM_OK) fail_msg("p=%d v=%d m=%d: %s", p, v, m, hm_last_error());
        hm_sim_result_free(&r);
      }
}

/* Equal chunks (forward tf/v, backward tb/v) and m >= p: the step is m (tf + tb) plus the bubble
 * (p-1)(tf + tb)/v of Narayanan et al. (SC'21, section 2.2), 1/v of plain 1F1B's. The times are
 * sums of at most 2mv + 2pv terms of the same few values: exact to ~1e-13 relative. */
static void test_bubble(void **state) {
  (void)state;
  for (int p = 2; p <= 8; p++)
    for (int v = 2; v <= 4; v++)
      for (int m = p; m <= 4 * p; m++) {
        const double tf = 1.0, tb = 2.0;
        double f[MAXV], b[MAXV];
        for (int j = 0; j < p * v; j++) f[j] = tf / v, b[j] = tb / v;
        hm_sim_result r;
        assert_int_equal(sim(p, v, m, f, b, &r), HM_OK);
        const double want = m * (tf + tb) + (p - 1) * (tf + tb) / v;
        if (fabs(r.step_time - want) > 1e-9 * want)
          fail_msg("p=%d v=%d m=%d: step %.12g, expected %.12g", p, v, m, r.step_time, want);
        hm_sim_result_free(&r);
      }
}

/* A device holds the activations of every chunk's micro-batches in flight: its peak is its
 * chunks' static bytes plus the largest sum of held mem_act over the list, counted here from the
 * op list. */
static void test_memory(void **state) {
  (void)state;
  const int p = 3, v = 2, m = 6;
  double f[MAXV], b[MAXV];
  int bounds[MAXV + 1];
  for (int j = 0; j < p * v; j++) f[j] = 1, b[j] = 2;
  for (int j = 0; j <= p * v; j++) bounds[j] = j;
  hm_sim_result r;
  assert_int_equal(sim(p, v, m, f, b, &r), HM_OK);
  hm_schedule_config cfg = {.nstages = p, .nmicro = m, .stage_layers = bounds, .nchunks = v};
  hm_schedule sc;
  assert_int_equal(hm_schedule_1f1b(&cfg, &sc), HM_OK);
  for (int s = 0; s < p; s++) {
    double live = 0, peak = 0;
    for (int i = 0; i < sc.stages[s].nops; i++) {
      const hm_op *op = &sc.stages[s].ops[i];
      const double a = 1 + op->chunk * p + s;
      if (op->kind == HM_OP_FWD) live += a, peak = fmax(peak, live);
      if (op->kind == HM_OP_BWD) live -= a;
    }
    assert_true(fabs(r.stages[0][s].mem_peak - (100.0 * v + peak)) < 1e-9);
    assert_int_equal(r.stages[0][s].max_inflight, hm_schedule_max_inflight(&sc, s));
    for (int c = 1; c < v; c++) assert_true(r.stages[0][c * p + s].mem_peak == r.stages[0][s].mem_peak);
  }
  hm_schedule_free(&sc);
  hm_sim_result_free(&r);
}

static void test_bad_config(void **state) {
  (void)state;
  int bounds[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  hm_schedule sc;
  hm_schedule_config one = {.nstages = 1, .nmicro = 4, .stage_layers = bounds, .nchunks = 2};
  assert_int_equal(hm_schedule_1f1b(&one, &sc), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "at least 2 stages"));
  int empty[5] = {0, 1, 1, 2, 3};
  hm_schedule_config e = {.nstages = 2, .nmicro = 4, .stage_layers = empty, .nchunks = 2};
  assert_int_equal(hm_schedule_1f1b(&e, &sc), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "virtual stage 1 (chunk 0 of stage 1) has no layers"));
  hm_schedule_config big = {.nstages = 2, .nmicro = HM_SCHEDULE_INTERLEAVED_MAX_MICRO + 1,
                            .stage_layers = bounds, .nchunks = 2};
  assert_int_equal(hm_schedule_1f1b(&big, &sc), HM_ERR_INVALID_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lists),  cmocka_unit_test(test_no_deadlock),
      cmocka_unit_test(test_bubble), cmocka_unit_test(test_memory),
      cmocka_unit_test(test_bad_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
