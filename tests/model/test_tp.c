/* Tensor parallelism inside a stage: TP2 and TP4 ranks (threads, each with its own device, joined
 * by an in-process allreduce) train 20 AdamW steps with gradient clipping and two micro-batches
 * per step, and must give the parameters of one unsplit stage; so must PP2 x TP2 and DP2 x TP2
 * (the model's side of what the pipeline runtime builds) in f64.
 *
 * Bounds. f64 (ref:dtype=f64): every tensor within 1e-12 relative to its largest element. TP
 * changes only the order of sums (the row-parallel products are summed over ranks, the bias is
 * added before that sum instead of after, the softmax normalizer is a sum of per-rank sums): each
 * such reordering moves a result by a few u64 = 1.1e-16 relative; AdamW's step divides a gradient
 * by its own RMS, so over 20 steps an error of ~1e-15 relative in a gradient stays ~1e-15 in the
 * parameter (it is multiplied by lr/RMS ~ 1/|g|, i.e. relative). 1e-12 leaves three orders of
 * magnitude (measured: printed per run).
 * f32 (cpu): as test_pipeline.c, against the f64 reference, scaled by how far the unsplit f32 run
 * drifted from it: error <= DRIFT_C * drift per tensor, DRIFT_C = 8 (a TP run is one more f32
 * rounding history of the same dynamics, about 2 drift; the rest covers maxima of few elements).
 * A wrong TP (a missing allreduce, a bias added twice, a wrong shard) moves parameters by ~lr per
 * step, far above both bounds. Also: replicated tensors stay bitwise equal on every rank, shard
 * checkpoints merge into the unsplit model, and bad layouts are refused by name.
 * Every case runs twice: on a GPT-2 model and on a Llama model with grouped-query attention
 * (query and key/value heads, SwiGLU columns, wte and the untied lm_head split; same bounds: the
 * same reorderings of sums, and no biases). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "model/tp_shard.h"

#define STEPS 20
#define MICRO 2
#define DRIFT_C 8.0
/* arch, L, C, NH, kv_heads, ffn, V, T, tied, flash. The model under test (set per group): GPT-2
 * L2 C32 NH4 V64 T16, then Llama L2 C32 NH8 KV4 F48 V64 T16 (two query heads per key/value head:
 * at TP4 each rank holds two query heads sharing one key/value head). */
static const hm_spec_model_config gpt_cfg = {HM_ARCH_GPT2, 2, 32, 4, 4, 128, 64, 16, 1, 0};
static const hm_spec_model_config llama_cfg = {HM_ARCH_LLAMA, 2, 32, 8, 4, 48, 64, 16, 0, 0};
/* Vocabularies the degrees do not divide (V = 67, prime: 33 | 34 rows at TP2, 22 | 22 | 23 at TP3,
 * 16 | 17 | 17 | 17 at TP4): GPT-2 L2 C32 NH4 V67 T16 (the tied wte split unevenly in both the
 * embedding and the head) and llama-mini's proportions in small, Llama L2 C48 NH12 KV6 F48 V67
 * T16. Same bounds: an uneven split changes only which rank sums which logits. */
static const hm_spec_model_config gpt_odd_cfg = {HM_ARCH_GPT2, 2, 32, 4, 4, 128, 67, 16, 1, 0};
static const hm_spec_model_config llama_odd_cfg = {HM_ARCH_LLAMA, 2, 48, 12, 6, 48, 67, 16, 0, 0};
static hm_spec_model_config cfg;
enum { B = 2, T = 13, MAXTP = 4 };

/* ---- an in-process allreduce: every rank reduces all buffers in rank order (bitwise equal) ---- */
typedef struct tp_group {
  int n, f64;
  pthread_barrier_t bar;
  void *bufs[MAXTP];
  double sumsq[MAXTP];
} tp_group;
typedef struct tp_rank {
  tp_group *g;
  int rank;
  void *tmp;
} tp_rank;

static hm_status group_allreduce(void *ctx, void *buf, size_t n, hm_tp_op op) {
  tp_rank *r = ctx;
  tp_group *g = r->g;
  g->bufs[r->rank] = buf;
  pthread_barrier_wait(&g->bar);
  for (size_t i = 0; i < n; i++) {
    double acc = 0;
    for (int k = 0; k < g->n; k++) {
      double v = g->f64 ? ((double *)g->bufs[k])[i] : ((float *)g->bufs[k])[i];
      acc = k == 0 ? v : op == HM_TP_MAX ? fmax(acc, v) : (g->f64 ? acc + v : (double)((float)acc + (float)v));
    }
    if (g->f64) ((double *)r->tmp)[i] = acc;
    else ((float *)r->tmp)[i] = (float)acc;
  }
  pthread_barrier_wait(&g->bar);
  memcpy(buf, r->tmp, n * (g->f64 ? 8 : 4));
  return HM_OK;
}

static double group_sum(tp_rank *r, double v) {
  r->g->sumsq[r->rank] = v;
  pthread_barrier_wait(&r->g->bar);
  double total = 0;
  for (int k = 0; k < r->g->n; k++) total += r->g->sumsq[k];
  pthread_barrier_wait(&r->g->bar);
  return total;
}

/* ---- training ------------------------------------------------------------------------------- */
static void batch(int step, int mb, int32_t *inp, int32_t *tgt) {
  uint64_t seed = 1000u * (uint64_t)step + 17u * (uint64_t)mb;
  for (int i = 0; i < B * T; i++) {
    inp[i] = (int32_t)(hm_splitmix64(seed * 7919u + 2 * (uint64_t)i) % (uint64_t)cfg.V);
    tgt[i] = (int32_t)(hm_splitmix64(seed * 7919u + 2 * (uint64_t)i + 1) % (uint64_t)cfg.V);
  }
}

typedef struct run {
  const char *device;
  int tp, rank;
  tp_group *g;
  hm_stage *stage; /* kept open for the comparison */
  hm_device *dev;
  float loss[STEPS];
  const char *save; /* checkpoint path (rank suffix added), or NULL */
  hm_status st;
  char err[512];
} run;

static hm_status train(run *r, tp_rank *tr) {
  hm_stage_options o = {0, cfg.L + 2, B, T, MICRO, {r->rank, r->tp, r->tp > 1 ? group_allreduce : NULL, tr}};
  hm_status st = hm_device_open(r->device, &r->dev);
  if (st == HM_OK) st = hm_stage_create(&cfg, r->dev, &o, &r->stage);
  if (st == HM_OK) st = hm_stage_init_params(r->stage, 42);
  const hm_adamw opt = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  int32_t inp[B * T], tgt[B * T];
  for (int step = 0; step < STEPS && st == HM_OK; step++) {
    st = hm_stage_zero_grad(r->stage);
    double loss = 0;
    for (int mb = 0; mb < MICRO && st == HM_OK; mb++) {
      batch(step, mb, inp, tgt);
      float l = 0;
      st = hm_stage_forward(r->stage, mb, inp, NULL, tgt, &l);
      loss += l / MICRO;
    }
    for (int mb = 0; mb < MICRO && st == HM_OK; mb++) st = hm_stage_backward(r->stage, mb, NULL, 1.0f / MICRO);
    double sumsq = 0;
    if (st == HM_OK) st = hm_stage_grad_sumsq(r->stage, &sumsq);
    if (r->tp > 1) sumsq = group_sum(tr, sumsq);
    r->loss[step] = (float)loss;
    if (st == HM_OK) st = hm_stage_adamw(r->stage, &opt, step + 1, hm_grad_clip_scale(sumsq, 1.0f));
  }
  if (st == HM_OK && r->save) {
    char path[256];
    snprintf(path, sizeof path, "%s.%d", r->save, r->rank);
    hm_ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.step = STEPS;
    st = hm_stage_save(r->stage, path, &meta);
  }
  return st;
}

static void *rank_main(void *arg) {
  run *r = arg;
  tp_rank tr = {r->g, r->rank, NULL};
  tr.tmp = malloc((size_t)B * T * cfg.V * 8);
  r->st = train(r, &tr);
  if (r->st != HM_OK) snprintf(r->err, sizeof r->err, "%s", hm_last_error());
  free(tr.tmp);
  return NULL;
}

/* Runs tp ranks (threads) to completion; r[0..tp) are filled. */
static void run_tp(const char *device, int tp, run *r, const char *save) {
  tp_group g;
  memset(&g, 0, sizeof g);
  g.n = tp, g.f64 = strstr(device, "f64") != NULL;
  pthread_barrier_init(&g.bar, NULL, (unsigned)tp);
  pthread_t th[MAXTP];
  for (int k = 0; k < tp; k++) {
    memset(&r[k], 0, sizeof r[k]);
    r[k].device = device, r[k].tp = tp, r[k].rank = k, r[k].g = &g, r[k].save = save;
    assert_int_equal(pthread_create(&th[k], NULL, rank_main, &r[k]), 0);
  }
  for (int k = 0; k < tp; k++) pthread_join(th[k], NULL);
  pthread_barrier_destroy(&g.bar);
  for (int k = 0; k < tp; k++)
    if (r[k].st != HM_OK) fail_msg("%s tp %d rank %d: %s", device, tp, k, r[k].err);
}

static void free_runs(run *r, int n) {
  for (int k = 0; k < n; k++) {
    hm_stage_destroy(r[k].stage);
    hm_device_close(r[k].dev);
  }
}

/* Tensor i of the run as the full f64 tensor (shards placed by rank; shards of a vocabulary the
 * degree does not divide differ in size by a row). */
static double *full_tensor(run *r, int tp, int i, size_t *n_out) {
  hm_tensor_split sp;
  hm_stage_tensor_split(r[0].stage, i, &sp);
  const hm_tp_split split = (hm_tp_split)sp.split;
  size_t ns = 0, n = sp.rows * sp.cols, total = 0;
  for (int k = 0; k < tp; k++) {
    const size_t nk = hm_stage_tensor_numel(r[k].stage, i);
    assert_int_equal(nk, hm_tp_shard_numel(sp.rows, sp.cols, split, sp.blocks, tp, k));
    ns = nk > ns ? nk : ns, total += nk;
  }
  assert_int_equal(n, split == HM_TP_REPLICATED ? ns : total);
  float *full = calloc(n, sizeof(float)), *shard = calloc(ns, sizeof(float));
  double *out = calloc(n, sizeof(double));
  for (int k = 0; k < (split == HM_TP_REPLICATED ? 1 : tp); k++) {
    hm_stage *s = r[k].stage;
    ns = hm_stage_tensor_numel(s, i);
    assert_int_equal(hm_device_copy_to_f32(r[k].dev, shard, hm_device_offset(r[k].dev, hm_stage_params(s), hm_stage_tensor_offset(s, i)), ns), HM_OK);
    hm_tensor_shard_copy(full, shard, &sp, sizeof(float), tp, k, 0);
  }
  for (size_t j = 0; j < n; j++) out[j] = full[j];
  if (strstr(r[0].device, "f64") && split == HM_TP_REPLICATED) { /* exact f64 values */
    hm_stage *s = r[0].stage;
    assert_int_equal(hm_device_copy_d2h(r[0].dev, out, hm_device_offset(r[0].dev, hm_stage_params(s), hm_stage_tensor_offset(s, i)), n * 8), HM_OK);
  } else if (strstr(r[0].device, "f64")) {
    double *sh = calloc(ns, sizeof(double));
    for (int k = 0; k < tp; k++) {
      hm_stage *s = r[k].stage;
      ns = hm_stage_tensor_numel(s, i);
      assert_int_equal(hm_device_copy_d2h(r[k].dev, sh, hm_device_offset(r[k].dev, hm_stage_params(s), hm_stage_tensor_offset(s, i)), ns * 8), HM_OK);
      hm_tensor_shard_copy(out, sh, &sp, sizeof(double), tp, k, 0); /* exact f64 values */
    }
    free(sh);
  }
  free(full);
  free(shard);
  *n_out = n;
  return out;
}

/* The attention key biases (the middle third of qkv.b) have an exact gradient of zero (softmax
 * ignores a constant added to every score): they hold rounding noise that AdamW turns into steps
 * of ~lr, so they are compared on their own, in absolute terms, against the noise of the f32
 * reference (as test_pipeline.c does). */
static int is_key_bias(const char *name, size_t k) {
  return strstr(name, ".attn.qkv.b") && k >= (size_t)cfg.C && k < 2 * (size_t)cfg.C;
}

/* Per tensor i: err[2i] = max|a-b|/max|b| outside the key biases, err[2i+1] = max|a-b| in them. */
static void compare(run *a, int tpa, run *b, double *err) {
  const int nt = hm_stage_num_tensors(b[0].stage);
  assert_int_equal(hm_stage_num_tensors(a[0].stage), nt);
  for (int i = 0; i < nt; i++) {
    size_t na, nb;
    const char *name = hm_stage_tensor_name(b[0].stage, i);
    double *x = full_tensor(a, tpa, i, &na), *y = full_tensor(b, 1, i, &nb);
    assert_int_equal(na, nb);
    double e[2] = {0, 0}, mx = 0;
    for (size_t j = 0; j < na; j++) {
      e[is_key_bias(name, j)] = fmax(e[is_key_bias(name, j)], fabs(x[j] - y[j]));
      mx = fmax(mx, fabs(y[j]));
    }
    err[2 * i] = mx > 0 ? e[0] / mx : e[0];
    err[2 * i + 1] = e[1];
    free(x);
    free(y);
  }
}

/* The largest key-bias difference of the f32 reference from the f64 one, over every block. */
static double key_bias_drift(const double *drift, int nt) {
  double d = 0;
  for (int i = 0; i < nt; i++) d = fmax(d, drift[2 * i + 1]);
  return d;
}

/* Replicated tensors are bitwise equal on every rank. */
static void check_replicas(run *r, int tp) {
  for (int i = 0; i < hm_stage_num_tensors(r[0].stage); i++) {
    hm_tensor_split sp;
    hm_stage_tensor_split(r[0].stage, i, &sp);
    if (sp.split != HM_TP_REPLICATED) continue;
    size_t n = hm_stage_tensor_numel(r[0].stage, i), es = hm_device_elem_size(r[0].dev);
    for (int k = 1; k < tp; k++)
      if (memcmp(hm_device_offset(r[0].dev, hm_stage_params(r[0].stage), hm_stage_tensor_offset(r[0].stage, i)),
                 hm_device_offset(r[k].dev, hm_stage_params(r[k].stage), hm_stage_tensor_offset(r[k].stage, i)), n * es))
        fail_msg("replicated tensor %s differs between tp ranks 0 and %d", hm_stage_tensor_name(r[0].stage, i), k);
  }
}

static run ref64[1], ref32[1];
static double *g_drift; /* the f32 reference's drift from the f64 one (compare's layout) */

static int setup(void **state) {
  (void)state;
  run_tp("ref:dtype=f64", 1, ref64, NULL);
  run_tp("cpu:threads=1", 1, ref32, NULL);
  g_drift = calloc(2 * (size_t)hm_stage_num_tensors(ref64[0].stage), sizeof(double));
  compare(ref32, 1, ref64, g_drift);
  return 0;
}
static int teardown(void **state) {
  (void)state;
  free_runs(ref64, 1);
  free_runs(ref32, 1);
  free(g_drift);
  return 0;
}

static void check_f64(int tp) {
  run r[MAXTP];
  run_tp("ref:dtype=f64", tp, r, NULL);
  check_replicas(r, tp);
  const int nt = hm_stage_num_tensors(ref64[0].stage);
  double *err = calloc(2 * (size_t)nt, sizeof(double)), worst = 0, kb = 0;
  compare(r, tp, ref64, err);
  const double kb_bound = DRIFT_C * key_bias_drift(g_drift, nt) * 0x1.0p-29;
  int wi = 0;
  for (int i = 0; i < nt; i++) {
    if (err[2 * i] > worst) worst = err[2 * i], wi = i;
    kb = fmax(kb, err[2 * i + 1]);
    if (err[2 * i] > 1e-12)
      fail_msg("TP%d f64: %s differs from one stage by %.3e relative (bound 1e-12)", tp,
               hm_stage_tensor_name(ref64[0].stage, i), err[2 * i]);
  }
  double lerr = 0;
  for (int s = 0; s < STEPS; s++) lerr = fmax(lerr, fabs((double)r[0].loss[s] - ref64[0].loss[s]) / ref64[0].loss[s]);
  print_message("  TP%d f64: params within %.2e relative of one stage (worst %s), key biases %.2e (bound %.2e), "
                "losses %.2e\n", tp, worst, hm_stage_tensor_name(ref64[0].stage, wi), kb, kb_bound, lerr);
  if (kb > kb_bound) fail_msg("TP%d f64: key biases differ by %.3e (bound %.3e)", tp, kb, kb_bound);
  if (lerr > 0x1.0p-23) fail_msg("TP%d f64: losses differ by %.3e (bound: one f32 rounding)", tp, lerr);
  free(err);
  free_runs(r, tp);
}

static void test_tp2_f64(void **state) { (void)state; check_f64(2); }
static void test_tp4_f64(void **state) { (void)state; check_f64(4); }
static void test_tp3_f64(void **state) { (void)state; check_f64(3); }

static void test_tp2_f32(void **state) {
  (void)state;
  run r[2];
  run_tp("cpu:threads=1", 2, r, NULL);
  check_replicas(r, 2);
  const int nt = hm_stage_num_tensors(ref64[0].stage);
  double *err = calloc(2 * (size_t)nt, sizeof(double)), worst = 0;
  compare(r, 2, ref64, err);
  const double kd = key_bias_drift(g_drift, nt);
  int wi = 0, wg = 0;
  for (int i = 0; i < nt; i++)
    for (int g = 0; g < 2; g++) {
      double d = g ? kd : g_drift[2 * i], bound = DRIFT_C * d + 0x1.0p-24;
      double frac = err[2 * i + g] / bound;
      if (frac > worst) worst = frac, wi = i, wg = g;
      if (frac > 1)
        fail_msg("TP2 f32: %s%s differs from f64 by %.3e, the unsplit f32 run by %.3e: bound %.3e",
                 hm_stage_tensor_name(ref64[0].stage, i), g ? " (key biases)" : "", err[2 * i + g], d, bound);
    }
  print_message("  TP2 f32: worst tensor %s%s at %.3f of its bound (error %.2e)\n", hm_stage_tensor_name(ref64[0].stage, wi),
                wg ? " (key biases)" : "", worst, err[2 * wi + wg]);
  free(err);
  free_runs(r, 2);
}

/* Shard checkpoints merge into the unsplit model: loaded into one stage they give the TP run's
 * parameters, and a shard loads back into its own rank only. */
static void test_ckpt_merge(void **state) {
  (void)state;
  char dir[] = "/tmp/hm_tp_XXXXXX", base[64], p0[96], p1[96], merged[96];
  assert_non_null(mkdtemp(dir));
  snprintf(base, sizeof base, "%s/s", dir);
  run r[2];
  run_tp("ref:dtype=f64", 2, r, base);
  snprintf(p0, sizeof p0, "%s.0", base), snprintf(p1, sizeof p1, "%s.1", base), snprintf(merged, sizeof merged, "%s/m", dir);
  const char *paths[2] = {p0, p1}, *swapped[2] = {p1, p0};
  assert_int_equal(hm_ckpt_merge_tp(swapped, 2, merged), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "rank 1 of 2, expected rank 0"));
  assert_int_equal(hm_ckpt_merge_tp(paths, 2, merged), HM_OK);
  hm_device *d;
  hm_stage *one;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  hm_stage_options o = {0, cfg.L + 2, B, T, 1, HM_STAGE_TP_NONE};
  assert_int_equal(hm_stage_create(&cfg, d, &o, &one), HM_OK);
  assert_int_equal(hm_stage_load(one, p0, NULL), HM_ERR_INVALID_ARG); /* a shard into an unsplit stage */
  assert_non_null(strstr(hm_last_error(), "tensor-parallel rank 0 of 2"));
  hm_ckpt_meta meta;
  assert_int_equal(hm_stage_load(one, merged, &meta), HM_OK);
  assert_int_equal(meta.tp_size, 1);
  run single = {.device = "ref:dtype=f64", .tp = 1, .stage = one, .dev = d};
  for (int i = 0; i < hm_stage_num_tensors(one); i++) { /* checkpoints hold f32: compare in f32 */
    size_t na, nb;
    double *x = full_tensor(r, 2, i, &na), *y = full_tensor(&single, 1, i, &nb);
    assert_int_equal(na, nb);
    for (size_t j = 0; j < na; j++)
      if ((float)x[j] != (float)y[j]) fail_msg("merged %s[%zu]: %.9g != %.9g", hm_stage_tensor_name(one, i), j, x[j], y[j]);
    free(x);
    free(y);
  }
  assert_int_equal(hm_stage_load(r[1].stage, p1, NULL), HM_OK);
  assert_int_equal(hm_stage_load(r[1].stage, p0, NULL), HM_ERR_INVALID_ARG);
  hm_stage_destroy(one);
  hm_device_close(d);
  free_runs(r, 2);
  unlink(p0), unlink(p1), unlink(merged), rmdir(dir);
}

static void test_bad_layouts(void **state) {
  (void)state;
  hm_device *d;
  hm_stage *s = NULL;
  assert_int_equal(hm_device_open("ref", &d), HM_OK);
  hm_stage_options o = {0, cfg.L + 2, B, T, 1, {0, 3, group_allreduce, NULL}};
  assert_int_equal(hm_stage_create(&cfg, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "must divide the heads NH=4"));
  o.tp = (hm_stage_tp){2, 2, group_allreduce, NULL};
  assert_int_equal(hm_stage_create(&cfg, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "rank 2 of 2"));
  o.tp = (hm_stage_tp){0, 2, NULL, NULL};
  assert_int_equal(hm_stage_create(&cfg, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "needs an allreduce callback"));
  assert_null(s);
  hm_device_close(d);
}

/* ---- several stages and replicas of TP ranks: what the pipeline runtime builds, in f64 ------
 * R replicas x P stages (stage 0 holds layers [0, cut)), every stage at degree tp, one thread per
 * worker, in lock-step phases: stage 0's rank q feeds stage 1's rank q its activation (every TP
 * rank holds all of it) and receives the input gradient back; replicas sum their gradients shard
 * with shard (replica 0's term first), then the first and last stage's rank q sum the tied
 * embedding's rows they both hold; the norm sums replica 0's workers. Must match one unsplit
 * stage within 1e-12 as above, the key biases (noise, see above) left out (the runtime's own
 * runs are checked through f32 dumps). */
enum { MAXW = 8 };
typedef struct layout {
  int R, P, tp, cut;
  pthread_barrier_t all;
  tp_group groups[MAXW];
  hm_stage *st[MAXW];
  hm_device *dev[MAXW];
  double sumsq[MAXW];
  char err[MAXW][256];
} layout;
typedef struct worker {
  layout *L;
  int r, s, q;
} worker;

static int widx(const layout *L, int r, int s, int q) { return (r * L->P + s) * L->tp + q; }

/* dst (n doubles) = a + b, then (after every worker read) into a: the same bits on both sides */
static void pair_sum(layout *L, double *a, const double *b, double *tmp, size_t n, int first) {
  for (size_t i = 0; i < n; i++) tmp[i] = first ? a[i] + b[i] : b[i] + a[i];
  pthread_barrier_wait(&L->all);
  memcpy(a, tmp, n * sizeof(double));
  pthread_barrier_wait(&L->all);
}

static hm_status worker_steps(worker *w, tp_rank *tr, double *tmp) {
  layout *L = w->L;
  const int me = widx(L, w->r, w->s, w->q), per = MICRO / L->R;
  hm_stage *st = L->st[me];
  const hm_adamw opt = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  int32_t inp[B * T], tgt[B * T];
  hm_status rc = HM_OK;
  for (int step = 0; step < STEPS; step++) { /* a failed worker still meets every barrier */
    if (rc == HM_OK) rc = hm_stage_zero_grad(st);
    for (int mb = 0; mb < per; mb++) {
      batch(step, w->r * per + mb, inp, tgt);
      for (int s = 0; s < L->P; s++) {
        if (s == w->s && rc == HM_OK) {
          const void *x = s > 0 ? hm_stage_output(L->st[widx(L, w->r, s - 1, w->q)], mb) : NULL;
          float loss;
          rc = hm_stage_forward(st, mb, s == 0 ? inp : NULL, x, s == L->P - 1 ? tgt : NULL, &loss);
        }
        pthread_barrier_wait(&L->all);
      }
    }
    for (int mb = 0; mb < per; mb++)
      for (int s = L->P - 1; s >= 0; s--) {
        if (s == w->s && rc == HM_OK) {
          const void *d = s < L->P - 1 ? hm_stage_dinput(L->st[widx(L, w->r, s + 1, w->q)]) : NULL;
          rc = hm_stage_backward(st, mb, d, 1.0f / MICRO);
        }
        pthread_barrier_wait(&L->all);
      }
    size_t n = hm_stage_num_params(st);
    if (L->R == 2) pair_sum(L, hm_stage_grads(st), hm_stage_grads(L->st[widx(L, 1 - w->r, w->s, w->q)]), tmp, n, w->r == 0);
    if (L->P == 2 && cfg.tied_embeddings) { /* Llama's embeddings are untied */
      size_t nt;
      double *g = hm_stage_tied_grad(st, &nt);
      pair_sum(L, g, hm_stage_tied_grad(L->st[widx(L, w->r, 1 - w->s, w->q)], NULL), tmp, nt, w->s == 0);
    }
    double ss = 0;
    if (rc == HM_OK) rc = hm_stage_grad_sumsq(st, &ss);
    L->sumsq[me] = ss;
    pthread_barrier_wait(&L->all);
    double total = 0;
    for (int k = 0; k < L->P * L->tp; k++) total += L->sumsq[k]; /* replica 0's workers */
    pthread_barrier_wait(&L->all);
    if (rc == HM_OK) rc = hm_stage_adamw(st, &opt, step + 1, hm_grad_clip_scale(total, 1.0f));
  }
  (void)tr;
  return rc;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  layout *L = w->L;
  const int me = widx(L, w->r, w->s, w->q);
  tp_rank tr = {&L->groups[w->r * L->P + w->s], w->q, malloc((size_t)B * T * cfg.V * 8)};
  double *tmp = malloc(hm_stage_num_params(L->st[me]) * sizeof(double));
  hm_status rc = tmp && tr.tmp ? worker_steps(w, &tr, tmp) : HM_ERR_NOMEM;
  if (rc != HM_OK) snprintf(L->err[me], sizeof L->err[me], "%s", hm_last_error());
  free(tmp);
  free(tr.tmp);
  return NULL;
}

static void check_layout(const char *name, int R, int P, int tp, int cut) {
  layout *L = calloc(1, sizeof *L);
  L->R = R, L->P = P, L->tp = tp, L->cut = cut;
  const int n = R * P * tp;
  pthread_barrier_init(&L->all, NULL, (unsigned)n);
  static tp_rank ctx[MAXW];
  for (int g = 0; g < R * P; g++) {
    L->groups[g].n = tp, L->groups[g].f64 = 1;
    pthread_barrier_init(&L->groups[g].bar, NULL, (unsigned)tp);
  }
  for (int r = 0; r < R; r++)
    for (int s = 0; s < P; s++)
      for (int q = 0; q < tp; q++) {
        const int k = widx(L, r, s, q);
        ctx[k] = (tp_rank){&L->groups[r * P + s], q, malloc((size_t)B * T * cfg.V * 8)};
        hm_stage_options o = {s == 0 ? 0 : cut, s == P - 1 ? cfg.L + 2 : cut, B, T, MICRO,
                              {q, tp, group_allreduce, &ctx[k]}};
        assert_int_equal(hm_device_open("ref:dtype=f64", &L->dev[k]), HM_OK);
        if (hm_stage_create(&cfg, L->dev[k], &o, &L->st[k]) != HM_OK) fail_msg("%s: %s", name, hm_last_error());
        assert_int_equal(hm_stage_init_params(L->st[k], 42), HM_OK);
      }
  worker w[MAXW];
  pthread_t th[MAXW];
  for (int r = 0; r < R; r++)
    for (int s = 0; s < P; s++)
      for (int q = 0; q < tp; q++) {
        const int k = widx(L, r, s, q);
        w[k] = (worker){L, r, s, q};
        assert_int_equal(pthread_create(&th[k], NULL, worker_main, &w[k]), 0);
      }
  for (int k = 0; k < n; k++) pthread_join(th[k], NULL);
  for (int k = 0; k < n; k++)
    if (L->err[k][0]) fail_msg("%s worker %d: %s", name, k, L->err[k]);
  /* replica 0's tensors, placed whole, against the unsplit stage */
  double worst = 0;
  char wname[64] = "";
  for (int s = 0; s < P; s++) {
    run rr[MAXTP];
    for (int q = 0; q < tp; q++) {
      memset(&rr[q], 0, sizeof rr[q]);
      rr[q].device = "ref:dtype=f64", rr[q].stage = L->st[widx(L, 0, s, q)], rr[q].dev = L->dev[widx(L, 0, s, q)];
    }
    for (int i = 0; i < hm_stage_num_tensors(rr[0].stage); i++) {
      const char *tn = hm_stage_tensor_name(rr[0].stage, i);
      const int j = hm_stage_find_tensor(ref64[0].stage, tn);
      assert_true(j >= 0);
      size_t na, nb;
      double *x = full_tensor(rr, tp, i, &na), *y = full_tensor(ref64, 1, j, &nb);
      assert_int_equal(na, nb);
      double e = 0, mx = 0;
      for (size_t k = 0; k < na; k++)
        if (!is_key_bias(tn, k)) e = fmax(e, fabs(x[k] - y[k])), mx = fmax(mx, fabs(y[k]));
      if (mx > 0 && e / mx > worst) worst = e / mx, snprintf(wname, sizeof wname, "%s", tn);
      free(x);
      free(y);
    }
  }
  print_message("  %s f64: params within %.2e relative of one stage (worst %s)\n", name, worst, wname);
  if (worst > 1e-12) fail_msg("%s f64: %s differs from one stage by %.3e relative (bound 1e-12)", name, wname, worst);
  for (int k = 0; k < n; k++) {
    hm_stage_destroy(L->st[k]);
    hm_device_close(L->dev[k]);
    free(ctx[k].tmp);
  }
  for (int g = 0; g < R * P; g++) pthread_barrier_destroy(&L->groups[g].bar);
  pthread_barrier_destroy(&L->all);
  free(L);
}

static void test_pp2_tp2_f64(void **state) { (void)state; check_layout("PP2 x TP2", 1, 2, 2, 2); }
static void test_dp2_tp2_f64(void **state) { (void)state; check_layout("DP2 x TP2", 2, 1, 2, 0); }

/* A Llama tensor-parallel degree must divide kv_heads (each rank holds whole key/value heads). */
static void test_llama_bad_layouts(void **state) {
  (void)state;
  hm_device *d;
  hm_stage *s = NULL;
  assert_int_equal(hm_device_open("ref", &d), HM_OK);
  hm_stage_options o = {0, cfg.L + 2, B, T, 1, {0, 8, group_allreduce, NULL}}; /* NH 8, V 64, ffn 48: divisible */
  assert_int_equal(hm_stage_create(&cfg, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "tensor parallelism 8 must divide the key/value heads kv_heads=4"));
  hm_spec_model_config c = cfg;
  c.ffn = 50; /* kv_heads 4 divisible by 2, ffn 50 by 2, 25 not by 4 */
  o.tp = (hm_stage_tp){0, 4, group_allreduce, NULL};
  assert_int_equal(hm_stage_create(&c, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "SwiGLU width ffn=50"));
  assert_null(s);
  hm_device_close(d);
}

static int setup_gpt(void **state) {
  cfg = gpt_cfg;
  return setup(state);
}
static int setup_llama(void **state) {
  cfg = llama_cfg;
  return setup(state);
}
static int setup_gpt_odd(void **state) {
  cfg = gpt_odd_cfg;
  return setup(state);
}
static int setup_llama_odd(void **state) {
  cfg = llama_odd_cfg;
  return setup(state);
}

int main(void) {
  const struct CMUnitTest llama_tests[] = {
      cmocka_unit_test(test_llama_bad_layouts), cmocka_unit_test(test_tp2_f64), cmocka_unit_test(test_tp4_f64),
      cmocka_unit_test(test_tp2_f32),           cmocka_unit_test(test_ckpt_merge), cmocka_unit_test(test_pp2_tp2_f64),
      cmocka_unit_test(test_dp2_tp2_f64),
  };
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_layouts), cmocka_unit_test(test_tp2_f64), cmocka_unit_test(test_tp4_f64),
      cmocka_unit_test(test_tp2_f32),     cmocka_unit_test(test_ckpt_merge),  cmocka_unit_test(test_pp2_tp2_f64),
      cmocka_unit_test(test_dp2_tp2_f64),
  };
  const struct CMUnitTest gpt_odd_tests[] = {
      cmocka_unit_test(test_tp2_f64), cmocka_unit_test(test_tp4_f64), cmocka_unit_test(test_tp2_f32),
      cmocka_unit_test(test_ckpt_merge),
  };
  const struct CMUnitTest llama_odd_tests[] = {
      cmocka_unit_test(test_tp2_f64), cmocka_unit_test(test_tp3_f64), cmocka_unit_test(test_tp2_f32),
      cmocka_unit_test(test_ckpt_merge), cmocka_unit_test(test_pp2_tp2_f64),
  };
  int failed = cmocka_run_group_tests_name("gpt2", tests, setup_gpt, teardown);
  failed += cmocka_run_group_tests_name("llama", llama_tests, setup_llama, teardown);
  failed += cmocka_run_group_tests_name("gpt2, V not divisible", gpt_odd_tests, setup_gpt_odd, teardown);
  failed += cmocka_run_group_tests_name("llama, V not divisible", llama_odd_tests, setup_llama_odd, teardown);
  return failed;
}
