/* hetmix profile: the latency/bandwidth fit on known points; a real measurement of a tiny GPT-2
 * on a cluster of `cpu` and `ref` (plus a type with no backend here) that has every layer kind
 * for every runnable type and nothing for the other, reads back equal from the written file and
 * drives the planner (a predicted stage time is the sum of the profile's figures); the same
 * with every type timed at once in child processes; refusals with clear messages; a link probe
 * past its deadline; the `hetmix profile` command end to end. No child process is left over. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/plan.h"
#include "hetmix/profile.h"
#include "util/util.h"

/* Two runnable types on one host and one that exists only on paper (no backend). */
static const char cluster_json[] =
    "{\"version\": 1, \"name\": \"test-local\", \"device_types\": ["
    " {\"name\": \"fast\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11},"
    "  \"memory_bytes\": 1e9, \"memory_bandwidth\": 1e10,"
    "  \"intra_host_link\": {\"bandwidth\": 1e9, \"latency\": 1e-5}},"
    " {\"name\": \"slow\", \"backend\": \"ref\", \"peak_flops\": {\"fp32\": 1e10},"
    "  \"memory_bytes\": 1e9, \"memory_bandwidth\": 1e10},"
    " {\"name\": \"paper\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e9,"
    "  \"memory_bandwidth\": 1e11}],"
    " \"hosts\": [{\"name\": \"here\", \"count\": 1,"
    "   \"devices\": [{\"type\": \"fast\", \"count\": 2}, {\"type\": \"slow\", \"count\": 1}],"
    "   \"host_link\": {\"bandwidth\": 1e9, \"latency\": 1e-5},"
    "   \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}},"
    "  {\"name\": \"there\", \"count\": 1, \"devices\": [{\"type\": \"paper\", \"count\": 1}],"
    "   \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}}]}";

static const char model_json[] =
    "{\"version\": 1, \"name\": \"tiny\", \"dtype\": \"fp32\","
    " \"config\": {\"arch\": \"gpt2\", \"L\": 3, \"C\": 32, \"NH\": 4, \"V\": 64, \"T\": 16}}";

typedef struct fixture {
  hm_cluster c;
  hm_model m;
} fixture;

static void fixture_load(fixture *f) {
  memset(f, 0, sizeof *f);
  if (hm_cluster_parse(cluster_json, sizeof cluster_json - 1, "test", &f->c) != HM_OK) fail_msg("%s", hm_last_error());
  if (hm_model_parse(model_json, sizeof model_json - 1, "test", &f->m) != HM_OK) fail_msg("%s", hm_last_error());
}

static void fixture_free(fixture *f) {
  hm_cluster_free(&f->c);
  hm_model_free(&f->m);
}

static void quick_options(hm_profile_options *o, const fixture *f) {
  hm_profile_options_default(o);
  o->cluster = &f->c;
  o->model = &f->m;
  o->n_micro_batches = 2;
  o->micro_batches[0] = 2; /* given out of order: stored ascending */
  o->micro_batches[1] = 1;
  o->reps = 3;
  o->warmup = 1;
  o->min_s = 0; /* the given passes only (test_min_time times the repeated ones) */
  o->link_probe.nsizes = 3;
  o->link_probe.sizes[0] = 8;
  o->link_probe.sizes[1] = 4096;
  o->link_probe.sizes[2] = 262144;
  o->link_probe.seconds_per_size = 0.01;
}

/* A token-bucket link (what scripts/testbed.sh's htb classes are): the first `burst` bytes of a
 * message go at line rate, the rest at the shaped rate. The relative-error fit overstates the
 * rate (small messages weigh as much as large ones); hm_link_fit_rate takes the slope between
 * the two largest sizes, both beyond the burst, so it gives the rate itself. */
static void test_fit_rate_shaped(void **state) {
  (void)state;
  const double lat = 10e-6, rate = 10e6, line = 1e9, burst = 65536;
  double x[5] = {8, 4096, 65536, 262144, 1 << 20}, t[5];
  for (int i = 0; i < 5; i++) t[i] = lat + (x[i] < burst ? x[i] : burst) / line + (x[i] > burst ? x[i] - burst : 0) / rate;
  double a = 0, b = 0;
  assert_int_equal(hm_link_fit_points(x, t, 5, &a, &b), HM_OK);
  printf("# relative-error fit of the shaped link: %.3g B/s for a %.3g B/s rate\n", b, rate);
  assert_true(b > 1.1 * rate); /* the fit this replaces for shaped links: more than 10% fast */
  double u = -1;
  assert_int_equal(hm_link_fit_rate(x, t, 5, &a, &b, &u), HM_OK);
  /* slope (x4 - x3) / (t4 - t3): t4 and t3 carry a few roundings each (u64 relative), their
   * difference loses (t4 + t3) / (t4 - t3) < 1.7 of that, the quotient adds one: 16 u64 bounds it */
  assert_true(fabs(b - rate) <= 16 * 0x1.0p-53 * rate);
  /* latency: the 8-byte message's time less 8 bytes at the rate (below the burst it went at line
   * rate, so that is lat + 8/line - 8/rate, 0.79 us under lat) */
  assert_true(fabs(a - (t[0] - 8 / rate)) <= 1e-15);
  /* burst: the large messages arrive (burst - 8)(1 - rate/line) bytes' time at the rate ahead of
   * a + bytes / rate (the burst went at line rate, not at once; the fitted latency holds the 8-byte
   * message's 8 bytes). It is (a + x/b - t) b from times of 0.1 s whose difference is 6.5 ms: a
   * few u64 each on 0.1 s, over 6.5 ms, plus b's 16 u64: 1e-12 relative bounds it. */
  const double want_u = (burst - 8) * (1 - rate / line);
  assert_true(fabs(u - want_u) <= 1e-12 * want_u);
  assert_true(fabs(hm_link_fit_time(&(hm_link_fit){.latency = a, .bandwidth = b, .burst = u}, x[4]) - t[4]) <=
              1e-12 * t[4]);
  /* a plain link (every byte at the rate): no burst, up to rounding (bytes at 10 MB/s of a few
   * u64 of 0.1 s) */
  double tp[5], a2u, b2u;
  for (int i = 0; i < 5; i++) tp[i] = lat + x[i] / rate;
  assert_int_equal(hm_link_fit_rate(x, tp, 5, &a2u, &b2u, &u), HM_OK);
  assert_true(u >= 0 && u < 1e-6);
  /* order of the points does not matter; sizes must differ at the top; noise that makes the
   * largest message faster than the second falls back to the largest message's rate */
  double xr[3] = {1 << 20, 8, 262144}, tr[3] = {t[4], t[0], t[3]};
  double a2, b2;
  assert_int_equal(hm_link_fit_rate(xr, tr, 3, &a2, &b2, NULL), HM_OK);
  assert_true(b2 == b && a2 == a);
  double xs[2] = {4096, 4096}, ts[2] = {1e-3, 2e-3};
  assert_int_equal(hm_link_fit_rate(xs, ts, 2, &a2, &b2, NULL), HM_ERR_INVALID_ARG);
  double tf[2] = {2e-3, 1e-3}, xf[2] = {4096, 65536};
  assert_int_equal(hm_link_fit_rate(xf, tf, 2, &a2, &b2, NULL), HM_OK);
  assert_true(b2 == 65536 / 1e-3 && a2 >= 0);
  assert_int_equal(hm_link_fit_rate(x, t, 1, &a2, &b2, NULL), HM_ERR_INVALID_ARG);
}

static void test_fit_exact(void **state) {
  (void)state;
  const double lat = 4e-6, bw = 3e9;
  double x[5] = {8, 1024, 65536, 1 << 20, 16 << 20}, t[5];
  for (int i = 0; i < 5; i++) t[i] = lat + x[i] / bw;
  double a = 0, b = 0;
  assert_int_equal(hm_link_fit_points(x, t, 5, &a, &b), HM_OK);
  /* Exact data: only rounding separates the fit from (lat, bw). The fit solves the 2x2 weighted
   * normal equations by Cramer's rule, a = (t0 s2 - s1 t1) / det, slope = (s0 t1 - s1 t0) / det,
   * det = s0 s2 - s1^2, from sums of 5 terms (gamma_5 each, all terms positive); each
   * difference loses the cancellation factor (|p| + |q|) / |p - q| of its terms. So the
   * relative error is at most (5 + 4) u64 times the numerator's factor plus the determinant's
   * (first order), times 2 for safety; bw = 1 / slope adds one rounding. */
  double s0 = 0, s1 = 0, s2 = 0, t0 = 0, t1 = 0;
  for (int i = 0; i < 5; i++) {
    const double w = 1 / (t[i] * t[i]);
    s0 += w, s1 += w * x[i], s2 += w * x[i] * x[i], t0 += w * t[i], t1 += w * x[i] * t[i];
  }
  const double u64 = 0x1.0p-53, k_det = (s0 * s2 + s1 * s1) / (s0 * s2 - s1 * s1);
  const double k_a = (t0 * s2 + s1 * t1) / fabs(t0 * s2 - s1 * t1), k_b = (s0 * t1 + s1 * t0) / fabs(s0 * t1 - s1 * t0);
  assert_true(fabs(a - lat) <= 2 * 9 * u64 * (k_a + k_det) * lat);
  assert_true(fabs(b - bw) <= 2 * (9 * u64 * (k_b + k_det) + u64) * bw);

  /* a fall with size (noise) cannot give a negative bandwidth: the largest point decides */
  double tf[3] = {1e-3, 5e-4, 4e-4}, xf[3] = {8, 4096, 65536};
  assert_int_equal(hm_link_fit_points(xf, tf, 3, &a, &b), HM_OK);
  assert_true(b > 0 && a >= 0 && a <= 4e-4);
  assert_true(fabs(b - 65536 / 4e-4) <= 2 * 0x1.0p-53 * b); /* 1 / (4e-4 / 65536): two roundings */

  /* a negative intercept is clamped to zero latency, slope through the origin */
  double tn[2] = {1e-9, 1e-3}, xn[2] = {1000, 1e6};
  assert_int_equal(hm_link_fit_points(xn, tn, 2, &a, &b), HM_OK);
  assert_true(a == 0 && b > 0);

  assert_int_equal(hm_link_fit_points(x, t, 1, &a, &b), HM_ERR_INVALID_ARG);
  double tz[2] = {0, 1e-3};
  assert_int_equal(hm_link_fit_points(xn, tz, 2, &a, &b), HM_ERR_INVALID_ARG);
}

static const hm_profile_layer *find_layer_tp(const hm_profile *p, const char *type, const char *kind, int64_t mb,
                                             int tp) {
  for (int i = 0; i < p->nlayers; i++)
    if (!strcmp(p->layers[i].device_type, type) && !strcmp(p->layers[i].kind, kind) &&
        p->layers[i].micro_batch == mb && (p->layers[i].tp > 1 ? p->layers[i].tp : 1) == tp)
      return &p->layers[i];
  return NULL;
}

static const hm_profile_layer *find_layer(const hm_profile *p, const char *type, const char *kind, int64_t mb) {
  return find_layer_tp(p, type, kind, mb, 1);
}

static void check_complete(const fixture *f, const hm_profile *p) {
  static const char *const kinds[3] = {"embedding", "block", "head"};
  static const char *const types[2] = {"fast", "slow"};
  assert_string_equal(p->model, "tiny");
  /* 2 types x 3 kinds x 2 sizes unsplit, and "fast" (two devices on one host) split at tp 2 */
  assert_int_equal(p->nlayers, 2 * 3 * 2 + 3 * 2);
  for (int k = 0; k < 3; k++)
    for (int64_t mb = 1; mb <= 2; mb++) {
      const hm_profile_layer *e = find_layer_tp(p, "fast", kinds[k], mb, 2);
      assert_non_null(e);
      assert_true(e->fwd_s > 0 && e->fwd_s < 10 && e->bwd_s > 0 && e->bwd_s < 10);
      /* one rank's shard: half the block's and head's weights, gradients and AdamW moments */
      if (k > 0) assert_true(e->mem_bytes < find_layer(p, "fast", kinds[k], mb)->mem_bytes);
      assert_null(find_layer_tp(p, "slow", kinds[k], mb, 2)); /* one "slow" device: never split */
    }
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 3; k++)
      for (int64_t mb = 1; mb <= 2; mb++) {
        const hm_profile_layer *e = find_layer(p, types[t], kinds[k], mb);
        assert_non_null(e);
        assert_true(e->fwd_s > 0 && e->fwd_s < 10);
        assert_true(e->bwd_s > 0 && e->bwd_s < 10);
        assert_true(e->mem_bytes > 0);
      }
  for (int i = 0; i < p->nlayers; i++) assert_string_not_equal(p->layers[i].device_type, "paper");
  /* memory of a one-layer stage grows with the micro-batch (activations) */
  assert_true(find_layer(p, "fast", "block", 2)->mem_bytes > find_layer(p, "fast", "block", 1)->mem_bytes);
  /* the two runnable types share a host, and "fast" has two devices there: two intra-host links */
  assert_int_equal(p->nlinks, 2);
  int seen_pair = 0, seen_self = 0;
  for (int i = 0; i < p->nlinks; i++) {
    const hm_profile_link *l = &p->links[i];
    assert_int_equal(l->inter_host, 0);
    assert_true(l->link.bandwidth > 1e6 && l->link.latency >= 0 && l->link.latency < 1e-2);
    if (!strcmp(l->type_a, "fast") && !strcmp(l->type_b, "fast")) seen_self = 1;
    if ((!strcmp(l->type_a, "fast") && !strcmp(l->type_b, "slow")) ||
        (!strcmp(l->type_a, "slow") && !strcmp(l->type_b, "fast")))
      seen_pair = 1;
  }
  assert_true(seen_pair && seen_self);
  /* "fast" has two devices on one host: the tensor-parallel allreduce among 2 processes */
  assert_int_equal(p->ntp_allreduce, 1);
  assert_int_equal(p->tp_allreduce[0].ranks, 2);
  assert_true(p->tp_allreduce[0].bandwidth > 1e6 && p->tp_allreduce[0].latency >= 0 &&
              p->tp_allreduce[0].latency < 1e-2);
  (void)f;
}

/* Measures once (the expensive part) and checks the profile, its file and the planner on it. */
/* The robust centre of timed rounds: a preempted round (5x) is dropped, the median of the rest
 * kept, the spread half their interquartile range over it (values by hand, see the numbers). */
static void test_robust_centre(void **state) {
  (void)state;
  double v[5] = {1.0, 1.01, 0.99, 1.02, 5.0};
  int kept = 0;
  double spread = -1;
  /* median 1.01, MAD 0.01: bound 3 x 1.4826 x 0.01 = 0.0445 keeps 0.99 .. 1.02, drops 5.0 */
  const double m = hm_profile_robust(v, 5, &kept, &spread);
  assert_int_equal(kept, 4);
  assert_true(fabs(m - 1.005) < 1e-15);
  /* quartiles of 0.99, 1, 1.01, 1.02 at 0.75 and 2.25: 0.9975 and 1.0125 */
  assert_true(fabs(spread - 0.5 * 0.015 / 1.005) < 1e-14);
  double three[3] = {1.0, 1.001, 1.2}; /* too few to call one an outlier: the plain median */
  assert_true(hm_profile_robust(three, 3, &kept, &spread) == 1.001 && kept == 3);
  double same[3] = {2, 2, 2};
  assert_true(hm_profile_robust(same, 3, &kept, &spread) == 2 && kept == 3 && spread == 0);
}

static void test_measure_write_read_plan(void **state) {
  (void)state;
  fixture f;
  fixture_load(&f);
  hm_profile_options o;
  quick_options(&o, &f);
  hm_profile p;
  memset(&p, 0, sizeof p);
  hm_profile_report rep;
  hm_status st = hm_profile_measure(&o, &p, &rep);
  if (st != HM_OK) fail_msg("measure: %s", hm_last_error());
  assert_int_equal(rep.nfits, 2);
  assert_string_equal(rep.fits[0].transport, "shm");
  assert_string_equal(rep.fits[1].transport, "tcp");
  assert_int_equal(rep.ntypes_measured, 2);
  check_complete(&f, &p);

  /* written through spec's writer, read back by spec's reader: the same figures */
  char path[] = "/tmp/hm_test_profile_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(hm_profile_write(&p, path), HM_OK);
  hm_profile q;
  memset(&q, 0, sizeof q);
  st = hm_profile_load(path, &q);
  if (st != HM_OK) fail_msg("load: %s", hm_last_error());
  unlink(path);
  check_complete(&f, &q);
  for (int i = 0; i < p.nlayers; i++) {
    const hm_profile_layer *a = &p.layers[i];
    const hm_profile_layer *b = find_layer_tp(&q, a->device_type, a->kind, a->micro_batch, a->tp > 1 ? a->tp : 1);
    assert_non_null(b);
    /* written with 17 significant digits (cJSON) and read back: exact; 1e-12 allows a writer
     * that keeps 13 digits, and a wrong field or unit differs by far more */
    assert_true(fabs(a->fwd_s - b->fwd_s) <= 1e-12 * a->fwd_s);
    assert_true(fabs(a->bwd_s - b->bwd_s) <= 1e-12 * a->bwd_s);
    assert_true(fabs(a->mem_bytes - b->mem_bytes) <= 1e-12 * a->mem_bytes);
    /* the measured spread and the rounds behind it are recorded and read back */
    assert_true(a->reps >= 1 && a->reps <= o.reps);
    assert_int_equal(a->reps, b->reps);
    assert_true(a->spread >= 0 && fabs(a->spread - b->spread) <= 1e-12 * a->spread);
  }

  /* the planner uses it: a 2-stage plan fast [0,2) + slow [2,5) at micro-batch 2 predicts each
   * stage's forward and backward as the sum of the profile's per-layer figures */
  hm_train t;
  hm_train_default(&t);
  t.global_batch = 8;
  t.n_micro_batch_sizes = 1;
  t.micro_batch_sizes[0] = 2;
  st = hm_spec_resolve(&f.c, &f.m, &t, &q);
  if (st != HM_OK) fail_msg("resolve: %s", hm_last_error());
  hm_plan plan;
  memset(&plan, 0, sizeof plan);
  plan.micro_batch = 2;
  plan.global_batch = 8;
  plan.nclasses = 1;
  plan.classes[0].nreplicas = 1;
  plan.classes[0].nmicro = 4;
  plan.classes[0].nstages = 2;
  const int fast = hm_cluster_find_type(&f.c, "fast"), slow = hm_cluster_find_type(&f.c, "slow");
  plan.classes[0].stages[0] = (hm_plan_stage){.type = fast, .tp = 1, .layer_begin = 0, .layer_end = 2};
  plan.classes[0].stages[1] = (hm_plan_stage){.type = slow, .tp = 1, .layer_begin = 2, .layer_end = 5};
  hm_plan_inputs in = {.cluster = &f.c, .model = &f.m, .train = &t, .profile = &q};
  st = hm_plan_predict(&in, &plan, NULL);
  if (st != HM_OK) fail_msg("predict: %s", hm_last_error());
  const hm_profile_layer *emb = find_layer(&q, "fast", "embedding", 2), *blk_f = find_layer(&q, "fast", "block", 2);
  const hm_profile_layer *blk_s = find_layer(&q, "slow", "block", 2), *head = find_layer(&q, "slow", "head", 2);
  const double f0 = emb->fwd_s + blk_f->fwd_s, b0 = emb->bwd_s + blk_f->bwd_s;
  const double f1 = 2 * blk_s->fwd_s + head->fwd_s, b1 = 2 * blk_s->bwd_s + head->bwd_s;
  /* the planner adds the same profile times (a few f64 additions, ~1e-16 relative each) and
   * may scale them by micro-batch size; 1e-9 relative is far below a missing or extra layer */
  assert_true(fabs(plan.classes[0].stages[0].fwd - f0) <= 1e-9 * f0);
  assert_true(fabs(plan.classes[0].stages[0].bwd - b0) <= 1e-9 * b0);
  assert_true(fabs(plan.classes[0].stages[1].fwd - f1) <= 1e-9 * f1);
  assert_true(fabs(plan.classes[0].stages[1].bwd - b1) <= 1e-9 * b1);
  /* and the step is at least the pipeline's compute bound (m-1) max t_s + sum t_s */
  const double t0s = f0 + b0, t1s = f1 + b1;
  assert_true(plan.step_time >= 3 * fmax(t0s, t1s) + t0s + t1s - 1e-12); /* rounding of ~10 additions of ~1e-3 s */

  /* the prediction's uncertainty from the profile's spread: every figure 10% up moves a step made
   * of compute and constants (max and + of them) up by more than 0 and at most 10% (scaling
   * everything by 1.1 scales the step by exactly 1.1); none without a recorded spread. 1e-12:
   * rounding of the ~20 additions, far below either bound's margin. */
  double rel = -1;
  for (int i = 0; i < q.nlayers; i++) q.layers[i].spread = 0.1;
  assert_int_equal(hm_plan_spread(&in, &plan, &rel), HM_OK);
  assert_true(rel > 0.01 && rel <= 0.1 + 1e-12);
  for (int i = 0; i < q.nlayers; i++) q.layers[i].spread = 0;
  assert_int_equal(hm_plan_spread(&in, &plan, &rel), HM_OK);
  assert_true(rel == 0);

  /* self-calibration: a run measured the fast stage at 2x forward and 3x backward and the slow
   * one as predicted; the calibrated profile predicts exactly that (each stage is a sum of its
   * layers' figures, each scaled once: 1e-12 relative is ~10 roundings), marks the entries
   * "source": "run" and reads back so */
  const double mf[2] = {2 * plan.classes[0].stages[0].fwd, plan.classes[0].stages[1].fwd};
  const double mb[2] = {3 * plan.classes[0].stages[0].bwd, plan.classes[0].stages[1].bwd};
  hm_profile cal;
  double scale[HM_PLAN_MAX_TYPES][2];
  assert_int_equal(hm_profile_calibrate(&in, &plan, 0, mf, mb, &cal, scale), HM_OK);
  assert_true(fabs(scale[fast][0] - 2) < 1e-12 && fabs(scale[fast][1] - 3) < 1e-12);
  assert_true(fabs(scale[slow][0] - 1) < 1e-12 && fabs(scale[slow][1] - 1) < 1e-12);
  hm_plan_inputs in_cal = in;
  in_cal.profile = &cal;
  hm_plan pc = plan;
  assert_int_equal(hm_plan_predict(&in_cal, &pc, NULL), HM_OK);
  for (int s = 0; s < 2; s++) {
    assert_true(fabs(pc.classes[0].stages[s].fwd - mf[s]) <= 1e-12 * mf[s]);
    assert_true(fabs(pc.classes[0].stages[s].bwd - mb[s]) <= 1e-12 * mb[s]);
  }
  for (int i = 0; i < cal.nlayers; i++) assert_int_equal(cal.layers[i].from_run, 1);
  char cpath[] = "/tmp/hm_test_calibrated_XXXXXX";
  int cfd = mkstemp(cpath);
  assert_true(cfd >= 0);
  close(cfd);
  assert_int_equal(hm_profile_write(&cal, cpath), HM_OK);
  hm_profile back;
  memset(&back, 0, sizeof back);
  st = hm_profile_load(cpath, &back);
  unlink(cpath);
  if (st != HM_OK) fail_msg("load calibrated: %s", hm_last_error());
  for (int i = 0; i < back.nlayers; i++) assert_int_equal(back.layers[i].from_run, 1);
  hm_profile_free(&back);
  hm_profile_free(&cal);

  /* the first stage at tp 2: the layer times are the profile's split entries (one rank's shard,
   * measured) and each layer adds the profile's measured
   * allreduce of its tp_comm_bytes in forward, not the cost model's; in backward the block's
   * (its two column-parallel input gradients) but not the embedding's (a vocabulary-parallel
   * lookup's gradient is scattered into each rank's own rows: no allreduce) */
  plan.classes[0].stages[0].tp = 2;
  st = hm_plan_predict(&in, &plan, NULL);
  if (st != HM_OK) fail_msg("predict at tp 2: %s", hm_last_error());
  double ar_f = 0, ar_b = 0;
  const hm_profile_allreduce *fit = &q.tp_allreduce[0];
  for (int l = 0; l < 2; l++) {
    const hm_layer *ly = &f.m.layers[l];
    const double bwd = ly->tp_comm_bwd_bytes < 0 ? ly->tp_comm_bytes : ly->tp_comm_bwd_bytes;
    if (ly->tp_comm_bytes > 0) ar_f += fit->latency + ly->tp_comm_bytes * 2 / fit->bandwidth;
    if (bwd > 0) ar_b += fit->latency + bwd * 2 / fit->bandwidth;
  }
  assert_int_equal((int)f.m.layers[0].tp_comm_bwd_bytes, 0); /* the embedding */
  assert_true(ar_f > ar_b && ar_b > 0);
  const hm_profile_layer *emb2 = find_layer_tp(&q, "fast", "embedding", 2, 2);
  const hm_profile_layer *blk2 = find_layer_tp(&q, "fast", "block", 2, 2);
  const double f0s = emb2->fwd_s + blk2->fwd_s, b0s = emb2->bwd_s + blk2->bwd_s;
  assert_true(fabs(plan.classes[0].stages[0].fwd - (f0s + ar_f)) <= 1e-9 * f0s);
  assert_true(fabs(plan.classes[0].stages[0].bwd - (b0s + ar_b)) <= 1e-9 * b0s);

  hm_profile_free(&p);
  hm_profile_free(&q);
  fixture_free(&f);
}

/* Every type at once, two processes each (as four workers sharing the host): the same complete
 * set of entries, measured in children that are all gone afterwards. */
static void test_measure_together(void **state) {
  (void)state;
  fixture f;
  fixture_load(&f);
  hm_profile_options o;
  quick_options(&o, &f);
  o.links = 0;
  o.concurrent = 1;
  o.copies = 2;
  o.reps = 2;
  hm_profile p;
  memset(&p, 0, sizeof p);
  hm_profile_report rep;
  hm_status st = hm_profile_measure(&o, &p, &rep);
  if (st != HM_OK) fail_msg("measure together: %s", hm_last_error());
  assert_int_equal(rep.ntypes_measured, 2);
  assert_int_equal(p.nlayers, 2 * 3 * 2 + 3 * 2); /* and "fast" split at tp 2 */
  static const char *const kinds[3] = {"embedding", "block", "head"};
  for (int k = 0; k < 3; k++)
    for (int64_t mb = 1; mb <= 2; mb++) {
      const hm_profile_layer *a = find_layer(&p, "fast", kinds[k], mb), *b = find_layer(&p, "slow", kinds[k], mb);
      assert_non_null(a);
      assert_non_null(b);
      assert_true(a->fwd_s > 0 && a->bwd_s > 0 && b->fwd_s > 0 && b->bwd_s > 0 && a->mem_bytes > 0);
    }
  int wst;
  assert_int_equal(waitpid(-1, &wst, WNOHANG), -1);
  assert_int_equal(errno, ECHILD);
  /* a backend that cannot open fails in its child and is named */
  hm_profile q;
  memset(&q, 0, sizeof q);
  const char *bad[1] = {"nosuchbackend"};
  hm_spec_model_config shape = {HM_ARCH_GPT2, 3, 32, 4, 4, 128, 64, 16, 1, 0};
  int layer = 1;
  int64_t mb = 1;
  hm_layer_timing t[2];
  st = hm_profile_time_layers_together(1, bad, 2, &shape, 1, &layer, 1, &mb, 1, 0, 1, 0, 0, 1, 60, t, NULL, 0, NULL, NULL);
  assert_int_not_equal(st, HM_OK);
  if (!strstr(hm_last_error(), "nosuchbackend")) fail_msg("message: %s", hm_last_error());
  assert_int_equal(waitpid(-1, &wst, WNOHANG), -1);
  hm_profile_free(&p);
  hm_profile_free(&q);
  fixture_free(&f);
}

/* --min-time: the passes are repeated until the measurement has lasted that long, alone and with
 * copies at once, and each figure stands on the rounds of every pass (more than one pass holds);
 * without it (min_s 0) the given passes only. */
static void test_min_time(void **state) {
  (void)state;
  fixture f;
  fixture_load(&f);
  for (int copies = 1; copies <= 2; copies++) {
    hm_profile_options o;
    quick_options(&o, &f);
    o.links = 0;
    o.tp_split = 0;
    o.ntypes = 1;
    o.types[0] = "fast";
    o.n_micro_batches = 1;
    o.copies = copies;
    o.min_s = 0.4;
    hm_profile p;
    memset(&p, 0, sizeof p);
    hm_profile_report rep;
    const double t0 = hm_now_s();
    hm_status st = hm_profile_measure(&o, &p, &rep);
    const double took = hm_now_s() - t0;
    if (st != HM_OK) fail_msg("measure (copies %d): %s", copies, hm_last_error());
    if (took < o.min_s) fail_msg("copies %d: measured for %.3f s, asked for at least %.1f s", copies, took, o.min_s);
    assert_int_equal(p.nlayers, 3);
    for (int i = 0; i < p.nlayers; i++) {
      const hm_profile_layer *e = &p.layers[i];
      /* one pass keeps at most o.reps rounds (alone: reps over the 3 given passes) */
      if (e->reps <= o.reps) fail_msg("copies %d, %s: %d rounds kept, no more than one pass holds", copies, e->kind, e->reps);
      assert_true(e->fwd_s > 0 && e->bwd_s > 0 && e->spread >= 0);
    }
    hm_profile_free(&p);
  }
  int wst;
  assert_int_equal(waitpid(-1, &wst, WNOHANG), -1);
  fixture_free(&f);
}

static void expect_error(hm_status got, hm_status want, const char *needle) {
  assert_int_equal(got, want);
  if (!strstr(hm_last_error(), needle)) fail_msg("message '%s' lacks '%s'", hm_last_error(), needle);
}

static void test_refusals(void **state) {
  (void)state;
  fixture f;
  fixture_load(&f);
  hm_profile_options o;
  quick_options(&o, &f);
  o.links = 0;
  hm_profile p;
  memset(&p, 0, sizeof p);

  o.ntypes = 1;
  o.types[0] = "fsat";
  expect_error(hm_profile_measure(&o, &p, NULL), HM_ERR_NOT_FOUND, "'fsat'");
  o.types[0] = "paper";
  expect_error(hm_profile_measure(&o, &p, NULL), HM_ERR_INVALID_ARG, "no \"backend\"");
  o.ntypes = 0;

  /* an explicit layer list has no stages to build */
  static const char explicit_json[] =
      "{\"version\": 1, \"name\": \"listed\", \"seq_len\": 16, \"layers\": ["
      " {\"kind\": \"block\", \"count\": 2, \"fwd_flops\": 1e6, \"params\": 1000, \"act_bytes\": 100,"
      "  \"out_bytes\": 10}]}";
  hm_model listed;
  memset(&listed, 0, sizeof listed);
  hm_status st = hm_model_parse(explicit_json, sizeof explicit_json - 1, "test", &listed);
  if (st != HM_OK) fail_msg("explicit model: %s", hm_last_error());
  o.model = &listed;
  expect_error(hm_profile_measure(&o, &p, NULL), HM_ERR_UNSUPPORTED, "explicit layer list");
  hm_model_free(&listed);
  o.model = &f.m;

  /* a cluster with nothing runnable here */
  hm_cluster paper;
  memset(&paper, 0, sizeof paper);
  static const char paper_json[] =
      "{\"version\": 1, \"name\": \"elsewhere\", \"device_types\": [{\"name\": \"gpu\", \"peak_flops\":"
      " {\"fp32\": 1e12}, \"memory_bytes\": 1e9, \"memory_bandwidth\": 1e11}], \"hosts\": [{\"name\":"
      " \"h\", \"count\": 1, \"devices\": [{\"type\": \"gpu\", \"count\": 1}]}]}";
  assert_int_equal(hm_cluster_parse(paper_json, sizeof paper_json - 1, "test", &paper), HM_OK);
  o.cluster = &paper;
  expect_error(hm_profile_measure(&o, &p, NULL), HM_ERR_NOT_FOUND, "elsewhere");
  hm_cluster_free(&paper);
  o.cluster = &f.c;

  o.micro_batches[0] = 0;
  expect_error(hm_profile_measure(&o, &p, NULL), HM_ERR_INVALID_ARG, "micro-batch size 0");

  hm_link_probe_options lo;
  memset(&lo, 0, sizeof lo);
  lo.transport = "infiniband";
  hm_link_fit fit;
  expect_error(hm_profile_link_probe(&lo, &fit), HM_ERR_INVALID_ARG, "infiniband");
  hm_profile_free(&p);
  fixture_free(&f);
}

/* A probe that cannot finish in time fails with a message naming the transport, and leaves no
 * child process behind (this test process has no other children). Deterministic: the work asked
 * for cannot fit the deadline on any machine. A size's round trips are capped at 20000 per batch
 * and it takes 5 batches plus a warm-up, so with seconds_per_size far beyond the cap the 4 MiB
 * size alone moves 6 * 20000 * 2 * 4 MiB ~ 1 TB, minutes even at memory bandwidth, against a
 * deadline of timeout_ms + 2 s = 3 s. (A 1 ms timeout raced bootstrap against loopback speed
 * and sometimes let the probe succeed.) Either the parent's deadline stops both ranks
 * (HM_ERR_TIMEOUT) or, on a starved machine, a rank's own 1 s wait gives up first: both are the
 * failure this checks, and both name the transport and the rank. */
static void test_probe_deadline(void **state) {
  (void)state;
  hm_link_probe_options lo;
  memset(&lo, 0, sizeof lo);
  lo.transport = "tcp";
  lo.nsizes = 2;
  lo.sizes[0] = 8;
  lo.sizes[1] = 4 << 20;
  lo.seconds_per_size = 1e9; /* every batch at the 20000 round-trip cap */
  lo.timeout_ms = 1000;
  hm_link_fit fit;
  const uint64_t t0 = hm_now_ns();
  hm_status st = hm_profile_link_probe(&lo, &fit);
  const double secs = (double)(hm_now_ns() - t0) * 1e-9;
  if (!(st == HM_ERR_TIMEOUT || st == HM_ERR_PEER_DEAD || st == HM_ERR_IO))
    fail_msg("status %s after %.2f s: %s", hm_status_name(st), secs, hm_last_error());
  if (!strstr(hm_last_error(), "link probe over tcp: rank")) fail_msg("message: %s", hm_last_error());
  /* the deadline (3 s) plus the time to kill and reap two processes */
  if (secs > 3.0 + 2.0) fail_msg("the probe returned after %.2f s, its deadline is 3 s", secs);
  int wst;
  assert_int_equal(waitpid(-1, &wst, WNOHANG), -1);
  assert_int_equal(errno, ECHILD);
}

/* The session of a child of `parent` (reading /proc/<pid>/stat: pid (comm) state ppid pgrp
 * session ...), its pid in *child; -1 while it has none. */
static pid_t child_session(pid_t parent, pid_t *child) {
  DIR *d = opendir("/proc");
  if (!d) return -1;
  pid_t sid = -1;
  for (struct dirent *e; sid < 0 && (e = readdir(d));) {
    char path[300], buf[1024];
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *r = strrchr(buf, ')');
    int ppid = 0, pgrp = 0, session = 0;
    char state;
    if (r && sscanf(r + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) == 4 && ppid == parent) {
      sid = session;
      *child = (pid_t)atoi(e->d_name);
    }
  }
  closedir(d);
  return sid;
}

/* hetmix profile measures in a session of its own, as hetmix launch starts workers (with autogroup
 * scheduling a loaded host then gives it a worker's share): while it runs, its measuring process
 * leads a session that is not the caller's. */
static void test_cli_own_session(void **state) {
  (void)state;
  char dir[] = "/tmp/hm_test_profile_sid_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cl[512], md[512], out[600], exe[512];
  snprintf(cl, sizeof cl, "%s/cluster.json", dir);
  snprintf(md, sizeof md, "%s/model.json", dir);
  snprintf(out, sizeof out, "%s/p.json", dir);
  snprintf(exe, sizeof exe, "%s/hetmix", HM_BINARY_DIR);
  FILE *fc = fopen(cl, "w");
  assert_non_null(fc);
  fputs(cluster_json, fc);
  fclose(fc);
  fc = fopen(md, "w");
  assert_non_null(fc);
  fputs(model_json, fc);
  fclose(fc);
  const pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout)) _exit(127);
    execl(exe, exe, "profile", "--cluster", cl, "--model", md, "-o", out, "--micro-batches", "1,2", "--reps", "5",
          "--types", "slow", "--no-links", (char *)NULL);
    _exit(127);
  }
  pid_t child = -1, sid = -1;
  int wst = 0, done = 0;
  const double end = hm_now_s() + 60;
  /* the run takes ~1 s, polled every ms; between its fork and its setsid the child is still in
   * the caller's session, so wait for a look at it that leads its own */
  while (!(sid >= 0 && sid == child) && !done && hm_now_s() < end) {
    sid = child_session(pid, &child);
    done = waitpid(pid, &wst, WNOHANG) == pid;
    if (!(sid >= 0 && sid == child) && !done) usleep(1000);
  }
  if (!done) waitpid(pid, &wst, 0);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
  assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
  if (sid < 0 || sid != child)
    fail_msg("hetmix profile measured in its caller's session (no measuring child leading a session seen)");
  assert_true(sid != getsid(0));
}

static int run(const char *cmd, char *out, size_t cap) {
  FILE *pf = popen(cmd, "r");
  assert_non_null(pf);
  size_t n = fread(out, 1, cap - 1, pf);
  out[n] = '\0';
  int rc = pclose(pf);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_cli(void **state) {
  (void)state;
  char dir[] = "/tmp/hm_test_profile_cli_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cmd[2048], out[16384], path[512];
  snprintf(path, sizeof path, "%s/cluster.json", dir);
  FILE *fc = fopen(path, "w");
  assert_non_null(fc);
  fputs(cluster_json, fc);
  fclose(fc);
  snprintf(path, sizeof path, "%s/model.json", dir);
  fc = fopen(path, "w");
  assert_non_null(fc);
  fputs(model_json, fc);
  fclose(fc);

  snprintf(cmd, sizeof cmd,
           "cd %s && %s/hetmix profile --cluster cluster.json --model model.json -o p.json --micro-batches 1 "
           "--reps 1 --warmup 0 --types slow --no-links 2>&1",
           dir, HM_BINARY_DIR);
  int rc = run(cmd, out, sizeof out);
  if (rc != 0) fail_msg("hetmix profile failed (%d): %s", rc, out);
  assert_non_null(strstr(out, "wrote p.json: 3 layer entries for 1 device type"));
  snprintf(path, sizeof path, "%s/p.json", dir);
  hm_profile p;
  memset(&p, 0, sizeof p);
  assert_int_equal(hm_profile_load(path, &p), HM_OK);
  assert_int_equal(p.nlayers, 3);
  assert_int_equal(p.nlinks, 0);
  hm_profile_free(&p);

  snprintf(cmd, sizeof cmd, "cd %s && %s/hetmix profile --cluster cluster.json --model model.json --types gpu 2>&1",
           dir, HM_BINARY_DIR);
  rc = run(cmd, out, sizeof out);
  assert_int_equal(rc, 1);
  assert_non_null(strstr(out, "hetmix: error: profile: cluster 'test-local' has no device type 'gpu'"));
  snprintf(cmd, sizeof cmd, "%s/hetmix profile --cluster %s/cluster.json 2>&1", HM_BINARY_DIR, dir);
  rc = run(cmd, out, sizeof out);
  assert_int_equal(rc, 1);
  assert_non_null(strstr(out, "needs --cluster and --model"));
  assert_non_null(strstr(out, "hint:"));
  snprintf(cmd, sizeof cmd, "%s/hetmix profile --micro-batches 1,x 2>&1", HM_BINARY_DIR);
  assert_int_equal(run(cmd, out, sizeof out), 2); /* a bad option value is a usage error */
  assert_non_null(strstr(out, "--micro-batches"));

  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fit_exact),
      cmocka_unit_test(test_fit_rate_shaped),
      cmocka_unit_test(test_robust_centre),
      cmocka_unit_test(test_measure_write_read_plan),
      cmocka_unit_test(test_measure_together),
      cmocka_unit_test(test_min_time),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_probe_deadline),
      cmocka_unit_test(test_cli),
      cmocka_unit_test(test_cli_own_session),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
