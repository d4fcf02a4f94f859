/* Equivalence of the pipeline + data-parallel runtime with one process: a small GPT trained 20
 * steps by the single-process trainer (hm_train_run) and by `hetmix launch ... hetmix worker`
 * with pipeline depth 2 and 4 on non-uniform splits, and 2 replicas x 2 stages with unequal
 * micro-batch counts, must give the same losses and parameters.
 *
 * Why not bitwise: the tied embedding's gradient. One process accumulates the head's and the
 * embedding's contributions into one buffer micro-batch by micro-batch; a pipeline sums each
 * side over its micro-batches and then adds the two (and replicas add partial sums): the same
 * terms in a different order. One stage and one replica performs the very same additions and is
 * checked bitwise.
 *
 * Bounds: against the f64 reference, scaled by how far the f32 reference drifted from it. Two
 * f32 trainings of 20 steps differ from f64 by rounding that AdamW amplifies (it divides each
 * gradient by its own RMS), not by anything a closed-form bound of one step captures. So each run
 * is compared with the single-process f64 reference (ref:dtype=f64), per tensor:
 *     max|run - ref64| / max|ref64| <= DRIFT_C * drift + 2 DUMP_ULP,
 * drift = max|ref32 - ref64| / max|ref64|, the single-process f32 run's own divergence. The
 * pipelined f32 run performs the same f32 operations as ref32 but for the order of the sums named
 * above, so its divergence is ref32's plus an order effect of the same size (one more f32
 * rounding history through the same dynamics): about 2 drift at most; DRIFT_C = 8 leaves a factor
 * 4 for the maxima of few noisy elements (measured: at most 1.84 drift over the OpenBLAS kernel
 * paths Prescott, Sandybridge, Haswell, SkylakeX). 2 DUMP_ULP is the rounding of
 * the two f32 dumps. An f64 run keeps f64 in its dump (checkpoint elem_size 8) and is held to
 * F64_REL = 1e-12 relative per tensor: it performs ref64's operations but for the order of a few
 * sums (tied embedding halves, replicas' partial gradients, tensor-parallel partial products and
 * softmax normalizers), each reordering a few u64 = 1.1e-16 relative; where a tensor amplifies
 * rounding more than 1e-12 / u64, its bound is that amplification as the f32 reference measured
 * it, DRIFT_C * drift * u64/u32 (the same scaling as the f32 bound, at f64 rounding). The one
 * such tensor here is the last block's MLP: its f32 drift is 7.7e-4 = 1.3e4 u32 (elements whose
 * gradient is near zero, which AdamW scales up to steps of ~lr, as the key biases below), so TP,
 * which reorders that block's own partial products, moves it by 1.6e-12 against a bound of
 * 1.15e-11; every other tensor stays within 1e-12 (measured: printed per run). Losses as the f32
 * runs' but scaled by u64/u32 = 2^-29 (metrics hold f32: + 2 DUMP_ULP), over the worst step.
 * The attention key biases form their own group, compared in absolute terms: their exact
 * gradient is zero (softmax ignores a constant added to every score), so they hold only rounding
 * noise, which AdamW divides by its own tiny RMS into steps of the order of lr * noise/eps; their
 * drift is the largest over every block's key biases in ref32 (a steadier measure of noise); an
 * f64 run's key biases within DRIFT_C * drift * 2^-29 (the same noise at f64 rounding). A
 * wrong pipeline (a lost or doubled micro-batch, a stale weight) moves parameters by ~lr per
 * step, far above these bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>

#include "opencl_case.h"
#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "runtime/proc_helpers.h"

#define STEPS 20
#define MODEL "L6,C32,NH4,V256,T16" /* 8 layers: room for 4 non-uniform stages */
#define BATCH 2
#define DRIFT_C 8.0              /* see the top */
#define DUMP_ULP 0x1.0p-24       /* rounding of an f32 dump and of a loss in metrics.jsonl */
#define F64_REL 1e-12            /* an f64 run's parameters against one f64 process (see the top) */

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static const char *g_tp; /* --tp for the next run_and_compare, or NULL */
static const char *g_flag; /* one more worker flag for the next run_and_compare, or NULL */
static const char *g_chunks; /* --chunks for the next run_and_compare, or NULL */
static const char *g_model = MODEL; /* the model of the references and the runs (a name or a spec file) */
static char work[128], tokpath[256];
typedef struct reference {
  const char *device;
  float loss[STEPS];
  hm_ckpt ckpt;
} reference;
static reference ref32 = {.device = "cpu:threads=1"}, ref64 = {.device = "ref:dtype=f64"};

static int read_losses(const char *metrics, float *loss, int n) {
  static char buf[1 << 20];
  if (hm_t_read_file(metrics, buf, sizeof buf) != 0) return -1;
  int k = 0;
  for (char *line = strtok(buf, "\n"); line && k < n; line = strtok(NULL, "\n")) {
    cJSON *j = cJSON_Parse(line);
    if (!j) return -1;
    cJSON *l = cJSON_GetObjectItem(j, "loss");
    if (cJSON_IsNumber(l)) loss[k++] = (float)l->valuedouble;
    cJSON_Delete(j);
  }
  return k;
}

/* The reference: one process, all layers, M = 4 micro-batches per step. */
static int make_reference(reference *ref, const char *name) {
  hm_train_options o;
  hm_train_defaults(&o);
  o.device = ref->device;
  if (hm_model_config_resolve(g_model, &o.config, o.model_name, sizeof o.model_name) != HM_OK) return -1;
  o.data = tokpath;
  o.steps = STEPS;
  o.batch = BATCH;
  o.grad_accum = 4;
  o.lr = 3e-3f;
  char dir[256], path[512];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  o.out_dir = dir;
  hm_train_result res;
  if (hm_train_run(&o, &res) != HM_OK) {
    print_error("reference training on %s failed: %s\n", ref->device, hm_last_error());
    return -1;
  }
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  if (read_losses(path, ref->loss, STEPS) != STEPS) return -1;
  if (hm_resolve_checkpoint(dir, path, sizeof path) != HM_OK || hm_ckpt_read(path, &ref->ckpt) != HM_OK) {
    print_error("reading the reference checkpoint: %s\n", hm_last_error());
    return -1;
  }
  return 0;
}

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "pipe-equiv") != 0) return -1;
  /* tokens: a deterministic mix of text-like bytes */
  enum { NTOK = 60000 };
  static uint8_t tok[NTOK];
  uint64_t x = 42;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 7 == 0 ? ' ' : 'a' + (x % 26));
  }
  snprintf(tokpath, sizeof tokpath, "%s/data.tok", work);
  if (hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) != HM_OK) return -1;

  return make_reference(&ref32, "ref32") || make_reference(&ref64, "ref64");
}

static int teardown(void **state) {
  (void)state;
  hm_ckpt_free(&ref32.ckpt);
  hm_ckpt_free(&ref64.ckpt);
  hm_t_rmtree(work);
  return 0;
}

/* Key bias of block tensor "param/h<i>.attn.qkv.b": elements [C, 2C). */
static int is_key_bias(const char *name, uint64_t k) {
  const char *q = strstr(name, ".attn.qkv.b");
  return q && q[11] == '\0' && k >= 32 && k < 64; /* C = 32 */
}

/* Errors of a tensor a against b: err[0] = max |a - b| over its elements other than key biases,
 * divided by max |b| over the tensor; err[1] = max |a - b| over its key biases, absolute (their
 * exact value is 0, see the top). */
static void group_errors(const char *name, const hm_ckpt *ca, const hm_ckpt_tensor *a, const hm_ckpt *cb,
                         const hm_ckpt_tensor *b, double err[2]) {
  double amax = 0;
  err[0] = err[1] = 0;
  for (uint64_t k = 0; k < b->numel; k++) amax = fmax(amax, fabs(hm_ckpt_value(cb, b, k)));
  for (uint64_t k = 0; k < b->numel; k++) {
    double *e = &err[is_key_bias(name, k)];
    *e = fmax(*e, fabs(hm_ckpt_value(ca, a, k) - hm_ckpt_value(cb, b, k)));
  }
  if (amax > 0) err[0] /= amax;
}

/* How far the f32 reference drifted from the f64 one: drift[0] in this tensor; drift[1] in the
 * key biases of every block (pooled: they are rounding noise, and the largest of all 6 x 32 is a
 * steadier measure of its size than the largest of one block's 32). */
static void f32_drift(const char *name, double drift[2]) {
  const hm_ckpt_tensor *a = hm_ckpt_find(&ref32.ckpt, name), *b = hm_ckpt_find(&ref64.ckpt, name);
  if (!a || !b || a->numel != b->numel) fail_msg("references lack %s", name);
  double e[2];
  group_errors(name, &ref32.ckpt, a, &ref64.ckpt, b, e);
  drift[0] = e[0];
  drift[1] = 0;
  for (int i = 0; i < ref32.ckpt.n_tensors; i++) {
    const hm_ckpt_tensor *t = &ref32.ckpt.tensors[i], *u = hm_ckpt_find(&ref64.ckpt, t->name);
    if (strncmp(t->name, "param/", 6) || !strstr(t->name, ".attn.qkv.b") || !u) continue;
    group_errors(t->name, &ref32.ckpt, t, &ref64.ckpt, u, e);
    drift[1] = fmax(drift[1], e[1]);
  }
}

static double max_loss_rel(const float *a, const float *b) {
  double worst = 0;
  for (int i = 0; i < STEPS; i++) worst = fmax(worst, fabs((double)a[i] - b[i]) / fabs((double)b[i]));
  return worst;
}

/* The bound of a run's error against the f64 reference, from the f32 reference's drift d:
 * f32 runs C d + 2 DUMP_ULP; f64 runs C d u64/u32 + 2 DUMP_ULP (see the top). */
static double drift_bound(int f64, double d) { return DRIFT_C * d * (f64 ? 0x1.0p-29 : 1.0) + 2 * DUMP_ULP; }
/* The bound of a parameter tensor's error (group g: 1 for the key biases): f32 runs as
 * drift_bound; f64 runs (f64 dumps) F64_REL or, for a tensor that amplifies rounding more,
 * DRIFT_C d u64/u32; their key biases DRIFT_C d u64/u32 (see the top). */
static double param_bound(int f64, int g, double d) {
  if (!f64) return drift_bound(0, d);
  return g ? DRIFT_C * d * 0x1.0p-29 : fmax(F64_REL, DRIFT_C * d * 0x1.0p-29);
}

/* Runs `hetmix launch -n <workers> -- hetmix worker ...` and compares with the references:
 * bitwise with the f32 one (expect_bitwise), else within drift_bound of the f64 one. */
/* devices: per-rank device specs ("A|B"), or NULL for ref->device everywhere; rebalance adds
 * --rebalance and checks that the split the run ended with differs from `micro`. */
static void run_and_compare_ex(const reference *ref, const char *name, int workers, const char *stages,
                               const char *micro, int nstages, int expect_bitwise, const char *devices,
                               int rebalance);
static void run_and_compare(const reference *ref, const char *name, int workers, const char *stages,
                            const char *micro, int nstages, int expect_bitwise) {
  run_and_compare_ex(ref, name, workers, stages, micro, nstages, expect_bitwise, NULL, 0);
}

/* The last compare_params' largest relative error outside the key biases, and its tensor. */
static double g_worst_rel;
static char g_worst_rel_name[HM_CKPT_NAME_MAX];

/* Every parameter tensor of the run's stages against the references; returns the worst error as
 * a fraction of its bound, and the tensor's name in worst_name. */
static double compare_params(const reference *ref, const char *name, const char *dump, int nstages, int expect_bitwise,
                             int f64, char *worst_name, size_t cap) {
  double worst = 0;
  int ntensors = 0;
  g_worst_rel = 0;
  float *wte_first = NULL, *wte_last = NULL;
  size_t wte_n = 0;
  hm_ckpt ck[8];
  char path[512];
  for (int s = 0; s < nstages; s++) {
    snprintf(path, sizeof path, "%s/stage%d.hmc", dump, s);
    if (hm_ckpt_read(path, &ck[s]) != HM_OK) fail_msg("%s: %s", name, hm_last_error());
    if (hm_ckpt_elem_size(&ck[s]) != (f64 ? 8u : 4u)) /* an f64 run's dump keeps f64 */
      fail_msg("%s: stage %d's dump holds %zu-byte elements, the run computed in %s", name, s,
               hm_ckpt_elem_size(&ck[s]), f64 ? "f64" : "f32");
    for (int i = 0; i < ck[s].n_tensors; i++) {
      const hm_ckpt_tensor *t = &ck[s].tensors[i];
      if (strncmp(t->name, "param/", 6) != 0) continue;
      const hm_ckpt_tensor *r = hm_ckpt_find(&ref->ckpt, t->name), *r64 = hm_ckpt_find(&ref64.ckpt, t->name);
      if (!r || !r64) fail_msg("%s: stage %d tensor %s is not in the reference", name, s, t->name);
      assert_int_equal(r->numel, t->numel);
      if (expect_bitwise)
        for (uint64_t k = 0; k < t->numel; k++)
          if (hm_ckpt_value(&ck[s], t, k) != hm_ckpt_value(&ref->ckpt, r, k))
            fail_msg("%s: %s[%llu] %.17g != %.17g", name, t->name, (unsigned long long)k, hm_ckpt_value(&ck[s], t, k),
                     hm_ckpt_value(&ref->ckpt, r, k));
      double err[2], drift[2];
      group_errors(t->name, &ck[s], t, &ref64.ckpt, r64, err);
      f32_drift(t->name, drift);
      if (err[0] > g_worst_rel) g_worst_rel = err[0], snprintf(g_worst_rel_name, sizeof g_worst_rel_name, "%s", t->name);
      for (int g = 0; g < 2; g++) {
        const double bound = param_bound(f64, g, drift[g]), frac = err[g] / bound;
        if (getenv("HM_TEST_VERBOSE") && err[g] > 0)
          print_message("    %s%s: error %.2e, f32 drift %.2e, ratio %.2f, %.3f of the bound\n", t->name,
                        g ? " (key biases)" : "", err[g], drift[g], drift[g] > 0 ? err[g] / drift[g] : 0, frac);
        if (frac > 1)
          fail_msg("%s: %s%s differs from f64 by %.3e relative, the f32 reference by %.3e: bound %.3e", name,
                   t->name, g ? " (key biases)" : "", err[g], drift[g], bound);
        if (frac > worst) worst = frac, snprintf(worst_name, cap, "%s", t->name);
      }
      ntensors++;
      if (strcmp(t->name, "param/wte") == 0) {
        if (s == 0) wte_first = t->data;
        else wte_last = t->data;
        wte_n = t->numel;
      }
    }
  }
  /* every reference tensor is somewhere (the head's extra wte copy aside) */
  int nref = 0;
  for (int i = 0; i < ref->ckpt.n_tensors; i++) nref += strncmp(ref->ckpt.tensors[i].name, "param/", 6) == 0;
  const int tied = ref->ckpt.meta.config.tied_embeddings;
  assert_int_equal(ntensors, nref + (nstages > 1 && tied ? 1 : 0));
  /* the two copies of the tied embedding stay bitwise equal */
  if (nstages > 1 && tied) {
    assert_non_null(wte_first);
    assert_non_null(wte_last);
    assert_memory_equal(wte_first, wte_last, wte_n * (f64 ? sizeof(double) : sizeof(float)));
  }
  for (int s = 0; s < nstages; s++) hm_ckpt_free(&ck[s]);
  return worst;
}

static void run_and_compare_ex(const reference *ref, const char *name, int workers, const char *stages,
                               const char *micro, int nstages, int expect_bitwise, const char *devices,
                               int rebalance) {
  const int f64 = strstr(ref->device, "f64") != NULL;
  char dir[256], dump[300], nstr[16], errp[300];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  snprintf(dump, sizeof dump, "%s/dump", dir);
  snprintf(nstr, sizeof nstr, "%d", workers);
  mkdir(dir, 0755);
  snprintf(errp, sizeof errp, "%s/launch.err", dir);
  char steps[16];
  snprintf(steps, sizeof steps, "%d", STEPS);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", nstr, "--tag-output", "--", (char *)hetmix_bin, "worker",
                  "--model", (char *)g_model, "--data", tokpath, "--steps", steps, "--batch", "2", "--lr", "3e-3",
                  "--stages", (char *)stages, "--micro", (char *)micro,
                  devices ? "--devices" : "--device", devices ? (char *)devices : (char *)ref->device,
                  "--out", dir, "--dump", dump, "--quiet", NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  int na = (int)(sizeof argv / sizeof argv[0]) - 7;
  if (rebalance) argv[na++] = "--rebalance";
  if (g_chunks) argv[na++] = "--chunks", argv[na++] = (char *)g_chunks;
  if (g_flag) argv[na++] = (char *)g_flag;
  if (g_tp) argv[na++] = "--tp", argv[na++] = (char *)g_tp;
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 100.0);
  char err[8192] = "";
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s: launch failed:\n%s", name, err);

  float loss[STEPS];
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  assert_int_equal(read_losses(path, loss, STEPS), STEPS);
  for (int i = 0; expect_bitwise && i < STEPS; i++)
    if (loss[i] != ref->loss[i]) fail_msg("%s: step %d loss %.9g != %.9g", name, i + 1, loss[i], ref->loss[i]);
  const double loss_err = max_loss_rel(loss, ref64.loss), loss_drift = max_loss_rel(ref32.loss, ref64.loss);
  if (loss_err > drift_bound(f64, loss_drift))
    fail_msg("%s: losses differ from f64 by %.3e relative, the f32 reference's by %.3e: bound %.3e", name, loss_err,
             loss_drift, drift_bound(f64, loss_drift));
  if (rebalance) { /* the split moved: the last step did not run with the initial one */
    static char buf[1 << 20];
    assert_int_equal(hm_t_read_file(path, buf, sizeof buf), 0);
    char *last = strrchr(buf, '{');
    cJSON *j = last ? cJSON_Parse(last) : NULL;
    cJSON *mi = j ? cJSON_GetObjectItem(j, "micro") : NULL;
    assert_true(cJSON_IsArray(mi));
    char got[64] = "";
    for (int r = 0; r < cJSON_GetArraySize(mi); r++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", r ? "," : "", cJSON_GetArrayItem(mi, r)->valueint);
    cJSON_Delete(j);
    print_message("  %-8s split %s -> %s\n", name, micro, got);
    if (strcmp(got, micro) == 0) fail_msg("%s: --rebalance kept the split %s though replica 1 is 4x slower", name, micro);
  }
  char worst_name[HM_CKPT_NAME_MAX] = "";
  double worst = compare_params(ref, name, dump, nstages, expect_bitwise, f64, worst_name, sizeof worst_name);
  print_message("  %-8s %-14s stages %-10s micro %-4s%s%s: losses vs f64 %.2e (f32 drift %.2e), worst param %.3f of "
                "its bound (%s), largest relative error %.2e (%s)\n", name, ref->device, stages, micro, g_tp ? " tp " : "",
                g_tp ? g_tp : "", loss_err, loss_drift, worst, worst_name, g_worst_rel, g_worst_rel_name);
}

static void test_one_stage_is_bitwise(void **state) {
  (void)state;
  run_and_compare(&ref32, "p1", 1, "0,8", "4", 1, 1);
}

static void test_depth2_nonuniform(void **state) {
  (void)state;
  run_and_compare(&ref32, "p2", 2, "0,5,8", "4", 2, 0);
  run_and_compare(&ref64, "p2-f64", 2, "0,5,8", "4", 2, 0);
}

static void test_depth4_nonuniform(void **state) {
  (void)state;
  run_and_compare(&ref32, "p4", 4, "0,1,4,6,8", "4", 4, 0);
  run_and_compare(&ref64, "p4-f64", 4, "0,1,4,6,8", "4", 4, 0);
}

static void test_2replicas_x_2stages_unequal_micro(void **state) {
  (void)state;
  run_and_compare(&ref32, "r2p2", 4, "0,3,8", "3,1", 2, 0);
  run_and_compare(&ref64, "r2p2-f64", 4, "0,3,8", "3,1", 2, 0);
}

/* Overlapped gradient sync (the default: each bucket's allreduce is issued during the last
 * backward as soon as its layers are done) against --sync-after-backward (every bucket after the
 * backward): the same buckets are summed in the same order from the same final gradients, so
 * losses, parameters and AdamW moments must be bitwise equal, f32 and f64. Two replicas of one
 * stage (the tied embedding's bucket is the last, after the embedding's backward) and two
 * replicas of two stages. */
static void assert_dumps_bitwise(const char *a, const char *b, int nstages) {
  char pa[512], pb[512];
  float la[STEPS], lb[STEPS];
  snprintf(pa, sizeof pa, "%s/%s/metrics.jsonl", work, a);
  snprintf(pb, sizeof pb, "%s/%s/metrics.jsonl", work, b);
  assert_int_equal(read_losses(pa, la, STEPS), STEPS);
  assert_int_equal(read_losses(pb, lb, STEPS), STEPS);
  for (int i = 0; i < STEPS; i++)
    if (la[i] != lb[i]) fail_msg("%s vs %s: step %d loss %.9g != %.9g", a, b, i + 1, la[i], lb[i]);
  for (int s = 0; s < nstages; s++) {
    hm_ckpt ca, cb;
    snprintf(pa, sizeof pa, "%s/%s/dump/stage%d.hmc", work, a, s);
    snprintf(pb, sizeof pb, "%s/%s/dump/stage%d.hmc", work, b, s);
    if (hm_ckpt_read(pa, &ca) != HM_OK || hm_ckpt_read(pb, &cb) != HM_OK) fail_msg("%s", hm_last_error());
    assert_int_equal(ca.n_tensors, cb.n_tensors);
    assert_int_equal(ca.meta.elem_size, cb.meta.elem_size);
    const size_t es = ca.meta.elem_size == 8 ? 8 : 4;
    for (int i = 0; i < ca.n_tensors; i++) {
      const hm_ckpt_tensor *x = &ca.tensors[i], *y = hm_ckpt_find(&cb, x->name);
      if (!y || y->numel != x->numel) fail_msg("%s vs %s: stage %d tensor %s differs in shape", a, b, s, x->name);
      if (memcmp(x->data, y->data, x->numel * es) != 0)
        fail_msg("%s vs %s: stage %d tensor %s is not bitwise equal", a, b, s, x->name);
    }
    hm_ckpt_free(&ca);
    hm_ckpt_free(&cb);
  }
}

static void overlap_case(const reference *ref, const char *name, int workers, const char *stages, const char *micro,
                         int nstages) {
  char on[64], off[64];
  snprintf(on, sizeof on, "%s-overlap", name);
  snprintf(off, sizeof off, "%s-after", name);
  run_and_compare(ref, on, workers, stages, micro, nstages, 0);
  g_flag = "--sync-after-backward";
  run_and_compare(ref, off, workers, stages, micro, nstages, 0);
  g_flag = NULL;
  assert_dumps_bitwise(on, off, nstages);
}

static void test_dp_overlap_is_bitwise(void **state) {
  (void)state;
  overlap_case(&ref32, "r2", 2, "0,8", "3,1", 1);
  overlap_case(&ref64, "r2-f64", 2, "0,8", "3,1", 1);
  overlap_case(&ref32, "r2p2o", 4, "0,3,8", "3,1", 2);
  overlap_case(&ref64, "r2p2o-f64", 4, "0,3,8", "3,1", 2);
}

/* Rebalancing moves micro-batches between replicas during the run (replica 1 emulates a chip
 * four times slower); every step still trains on the same global batch with the same weights.
 * In f64 the parameters match to ~1e-13. In f32 the steps before the move add the micro-batch
 * gradients grouped (g0+g1)+(g2+g3) where the reference adds ((g0+g1)+g2)+g3; AdamW then
 * amplifies that rounding over 20 steps to a few 1e-5 relative in a handful of weights (the
 * losses still agree to 1e-7), hence the looser f32 bound for this case. */
static void test_rebalanced_replicas(void **state) {
  (void)state;
  run_and_compare_ex(&ref64, "r2-rebal-f64", 2, "0,8", "2,2", 1, 0, "ref:dtype=f64|ref:dtype=f64,slow=4", 1);
  run_and_compare_ex(&ref32, "r2-rebal", 2, "0,8", "2,2", 1, 0, "cpu:threads=1|cpu:threads=1,slow=4", 1);
}

/* Every worker on opencl (memory the host cannot address): activations, their gradients, the
 * tied embedding's gradient and the data-parallel allreduce all pass through pinned host
 * staging buffers (device -> host, hmcomm, host -> device). Held to the f32 layouts' bounds:
 * within a multiple of the f32 reference's drift from f64 (opencl's kernels round like cpu's,
 * in other orders). */
static void test_opencl_workers(void **state) {
  (void)state;
  run_and_compare_ex(&ref32, "r2p2-opencl", 4, "0,3,8", "3,1", 2, 0,
                     "opencl:threads=1|opencl:threads=1|opencl:threads=1|opencl:threads=1", 0);
  /* two device runtimes in one job (rank = replica x 2 + stage): replica 0 runs opencl then cpu,
   * replica 1 cpu then opencl, so activations cross between the runtimes in both directions and
   * each stage's allreduce joins an opencl and a cpu worker */
  run_and_compare_ex(&ref32, "r2p2-mixed", 4, "0,3,8", "3,1", 2, 0,
                     "opencl:threads=1|cpu:threads=1|cpu:threads=1|opencl:threads=1", 0);
}

/* The layouts the local default (cpu + opencl, `hetmix train`) plans: one pipeline of two
 * stages, cpu then opencl and opencl then cpu (activations and their gradients cross the two
 * runtimes through pinned staging; the tied embedding's gradient is swapped between them), and
 * two data-parallel replicas of the whole model, one cpu and one opencl, with unequal
 * micro-batch counts (the allreduce of every gradient joins the two runtimes). Same bounds. */
static void test_opencl_cpu_layouts(void **state) {
  (void)state;
  run_and_compare_ex(&ref32, "p2-cpu-opencl", 2, "0,5,8", "4", 2, 0, "cpu:threads=1|opencl:threads=1", 0);
  run_and_compare_ex(&ref32, "p2-opencl-cpu", 2, "0,5,8", "4", 2, 0, "opencl:threads=1|cpu:threads=1", 0);
  run_and_compare_ex(&ref32, "r2-cpu-opencl", 2, "0,8", "3,1", 1, 0, "cpu:threads=1|opencl:threads=1", 0);
}

/* The GPU + CPU job: one cuda stage and one cpu stage in both orders, and a cuda replica beside
 * a cpu replica. Activations, their gradients and the allreduces cross between GPU memory and
 * host memory through pinned staging. Same bounds as the opencl layouts (run with TensorFloat-32
 * off, HETMIX_CUDA_TF32=0, so every product is an f32 product). */
static void test_cuda_cpu_layouts(void **state) {
  (void)state;
  run_and_compare_ex(&ref32, "p2-cuda-cpu", 2, "0,5,8", "4", 2, 0, "cuda|cpu:threads=1", 0);
  run_and_compare_ex(&ref32, "p2-cpu-cuda", 2, "0,5,8", "4", 2, 0, "cpu:threads=1|cuda", 0);
  run_and_compare_ex(&ref32, "r2-cuda-cpu", 2, "0,8", "3,1", 1, 0, "cuda|cpu:threads=1", 0);
}

/* An opencl worker's measured compute is the device's work, not the time to enqueue it: its queue
 * is asynchronous, so a backward that returned at once used to be charged to whatever waited
 * next (the next forward's loss read, the allreduce's staging copy) and the worker's busy time
 * (the report's and --rebalance's figure) left the last backward of every step out. A backward
 * does twice a forward's matmul work (dinput and dweight for each weight), so over a step the
 * backward time must be at least half the forward time (it is near 0.002 when only enqueued). */
static void test_opencl_compute_is_timed(void **state) {
  (void)state;
  char dir[256], trace[300], errp[300];
  snprintf(dir, sizeof dir, "%s/timed-opencl", work);
  snprintf(trace, sizeof trace, "%s/trace.json", dir);
  snprintf(errp, sizeof errp, "%s/launch.err", work);
  mkdir(dir, 0755);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "1", "--", (char *)hetmix_bin, "worker", "--model",
                  "L2,C128,NH4,V256,T64", "--data", tokpath, "--steps", "2", "--batch", "4", "--stages", "0,4",
                  "--micro", "2", "--device", "opencl:threads=1", "--out", dir, "--trace", trace, "--quiet", NULL};
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 100.0);
  char err[8192] = "";
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("launch failed:\n%s", err);
  static char buf[1 << 20];
  assert_int_equal(hm_t_read_file(trace, buf, sizeof buf), 0);
  cJSON *j = cJSON_Parse(buf), *e;
  assert_non_null(j);
  double fwd = 0, bwd = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "traceEvents")) {
    const cJSON *name = cJSON_GetObjectItem(e, "name"), *dur = cJSON_GetObjectItem(e, "dur");
    if (!cJSON_IsString(name) || !cJSON_IsNumber(dur)) continue;
    if (!strncmp(name->valuestring, "fwd ", 4)) fwd += dur->valuedouble;
    if (!strncmp(name->valuestring, "bwd ", 4)) bwd += dur->valuedouble;
  }
  cJSON_Delete(j);
  print_message("  opencl worker: forward %.1f ms, backward %.1f ms over the traced step\n", fwd / 1e3, bwd / 1e3);
  assert_true(fwd > 0);
  if (bwd < 0.5 * fwd) fail_msg("backward %.3f ms < half the forward %.3f ms: the queue was not waited for", bwd / 1e3, fwd / 1e3);
}

/* Tensor parallelism inside stages (--tp): TP2 and TP4 of the whole model, PP2 x TP2, DP2 x TP2,
 * two replicas split differently (TP2 next to TP1: their gradients are summed through the full
 * layout) and a pipeline whose middle stage has another degree than its neighbours (activations
 * and their gradients go between TP2 and TP1 ranks). Same bounds as the layouts above: a TP run
 * performs the reference's operations but for the order of the sums over ranks, the bias added
 * before the sum, and the softmax normalizer summed per rank; in f64 its f64 dump is held to
 * F64_REL = 1e-12 of ref64 over the 20 steps. devices64: per-rank devices of the f64 run (two
 * device types), or NULL. */
static void tp_case_ex(const char *name, int workers, const char *stages, const char *micro, int nstages,
                       const char *tp, const char *devices64) {
  char n64[64];
  snprintf(n64, sizeof n64, "%s-f64", name);
  g_tp = tp;
  run_and_compare(&ref32, name, workers, stages, micro, nstages, 0);
  run_and_compare_ex(&ref64, n64, workers, stages, micro, nstages, 0, devices64, 0);
  g_tp = NULL;
}
static void tp_case(const char *name, int workers, const char *stages, const char *micro, int nstages, const char *tp) {
  tp_case_ex(name, workers, stages, micro, nstages, tp, NULL);
}
static void test_tp2(void **state) { (void)state; tp_case("tp2", 2, "0,8", "4", 1, "2"); }
static void test_tp4(void **state) { (void)state; tp_case("tp4", 4, "0,8", "4", 1, "4"); }
static void test_pp2_tp2(void **state) { (void)state; tp_case("p2tp2", 4, "0,5,8", "4", 2, "2"); }
static void test_dp2_tp2(void **state) { (void)state; tp_case("r2tp2", 4, "0,8", "3,1", 1, "2"); }
/* Two device types with different tp: replica 0 at TP2 on one type, replica 1 at TP1 on another
 * (in f64 a second, slower ref type: ref:dtype=f64,slow=2). */
static void test_tp_mixed_replicas(void **state) {
  (void)state;
  tp_case_ex("r2tp21", 3, "0,8", "3,1", 1, "2,1", "ref:dtype=f64|ref:dtype=f64|ref:dtype=f64,slow=2");
}
static int run_cli(char *const argv[], char *err, size_t cap);

/* A Llama spec model (grouped-query attention, SwiGLU, RMSNorm, untied embeddings: L4 C32 NH4
 * KV2 F48 V256 T16) at TP2 and PP2 x TP2: query and key/value heads, SwiGLU columns, wte and
 * lm_head split. Its own token file and references (one process, f32 and f64), the same bounds;
 * the GPT-2 references and data are put back afterwards. (Measured: the f32 runs' worst tensor,
 * an MLP weight, at 0.66 of its bound, about 5 drift: above the ~2 drift of the GPT-2 layouts; the
 * f64 runs equal ref64 to the dump's rounding, and test_model_tp holds Llama TP2/TP4 to 1e-12 in
 * f64 memory.) */
static void test_llama_tp(void **state) {
  (void)state;
  char path[300];
  snprintf(path, sizeof path, "%s/llama-tp.json", work);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"name\": \"llama-tp\", \"dtype\": \"fp32\", \"config\": {\"arch\": \"llama\", "
        "\"L\": 4, \"C\": 32, \"NH\": 4, \"kv_heads\": 2, \"ffn\": 48, \"V\": 256, \"T\": 16}}\n", f);
  fclose(f);
  /* the same kind of text as setup's, its 26 letters spread over the vocabulary: 13 in each
   * rank's half at TP2, so both shards of the vocabulary-parallel wte and lm_head see tokens and
   * targets (setup's letters 97..122 all fall in rank 0's half) */
  enum { NTOK = 60000 };
  static uint8_t tok[NTOK];
  uint64_t x = 42;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 7 == 0 ? ' ' : 10 + 9 * (x % 26));
  }
  char gpt_tok[256];
  snprintf(gpt_tok, sizeof gpt_tok, "%s", tokpath);
  snprintf(tokpath, sizeof tokpath, "%s/llama.tok", work);
  assert_int_equal(hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256), HM_OK);
  const reference gpt32 = ref32, gpt64 = ref64;
  memset(&ref32, 0, sizeof ref32), memset(&ref64, 0, sizeof ref64);
  ref32.device = gpt32.device, ref64.device = gpt64.device;
  g_model = path;
  assert_int_equal(make_reference(&ref32, "llama-ref32"), 0);
  assert_int_equal(make_reference(&ref64, "llama-ref64"), 0);
  tp_case("llama-tp2", 2, "0,6", "4", 1, "2");
  tp_case("llama-p2tp2", 4, "0,3,6", "4", 2, "2");
  /* a degree that does not divide kv_heads = 2 is refused, naming it */
  char err[8192];
  char *bad[] = {(char *)hetmix_bin, "launch", "-n", "4", "--", (char *)hetmix_bin, "worker", "--model", path, "--data",
                 tokpath, "--steps", "1", "--stages", "0,6", "--micro", "4", "--tp", "4", "--quiet", NULL};
  assert_int_not_equal(run_cli(bad, err, sizeof err), 0);
  if (!strstr(err, "tensor-parallel degree 4") || !strstr(err, "kv_heads")) fail_msg("tp 4 of kv_heads 2: %s", err);
  hm_ckpt_free(&ref32.ckpt), hm_ckpt_free(&ref64.ckpt);
  ref32 = gpt32, ref64 = gpt64, g_model = MODEL;
  snprintf(tokpath, sizeof tokpath, "%s", gpt_tok);
}
static void test_tp_mixed_stages(void **state) {
  (void)state;
  tp_case("p3tp212", 5, "0,3,5,8", "4", 3, "2,1,2");
  tp_case("p2tp12", 3, "0,1,8", "4", 2, "1,2"); /* the tied embedding's two copies split differently */
}

/* A layout that does not match the model or the workers is refused, naming what is wrong. */
static void test_mismatched_layout_is_refused(void **state) {
  (void)state;
  struct {
    const char *n, *stages, *micro, *expect, *tp;
  } cases[] = {
      {"3", "0,5,8", "4", "need 2 workers, but 3 were started", "1"},
      {"2", "0,5,9", "4", "end at 8", "1"},
      {"2", "0,5,5,8", "4", "stage 1 has no layers", "1"},
      {"3", "0,8", "4", "tensor-parallel degree 3 must be in 1..64 and divide the model's NH=4", "3"},
      {"3", "0,8", "4", "need 2 workers, but 3 were started", "2"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    char errp[300];
    snprintf(errp, sizeof errp, "%s/refuse.err", work);
    char *argv[] = {(char *)hetmix_bin, "launch", "-n", (char *)cases[c].n, "--", (char *)hetmix_bin, "worker",
                    "--model", MODEL, "--data", tokpath, "--steps", "1", "--stages", (char *)cases[c].stages,
                    "--micro", (char *)cases[c].micro, "--tp", (char *)cases[c].tp, "--quiet", NULL};
    pid_t pid = hm_t_spawn(argv, NULL, errp);
    int st = hm_t_wait(pid, 30.0);
    char err[8192] = "";
    hm_t_read_file(errp, err, sizeof err);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0);
    if (!strstr(err, cases[c].expect)) fail_msg("case %zu: expected '%s' in:\n%s", c, cases[c].expect, err);
  }
}

/* Interleaved 1F1B (--chunks 2: stage s holds virtual stages s and p+s). Against one process with
 * the bounds of the plain pipeline above: each chunk performs a plain stage's additions, so the
 * same order-of-sums argument holds. And bitwise against the plain 1F1B run of its p*2 virtual
 * stages (losses, parameters, AdamW moments): each chunk accumulates its micro-batches in the same
 * order (micro-batch order, as 1F1B), the gradient norm adds the same per-virtual-stage terms in
 * the same order (hm_pipe_grad_sumsq), the tied embedding's halves meet as in the plain run, the
 * replicas sum the same buckets; the interleaved dump is the plain run's stage<j>.hmc files.
 * M = 4 micro-batches per step as the references: 2 stages with m = 4, 3 stages with m = 4 (not
 * a multiple of p: the remainder joins the last group of the schedule), ref f64 and cpu f32; 2
 * replicas x 2 stages with m = 3 (not a multiple) and 1 (m < p). */
static void interleaved_case(const reference *ref, const char *name, int p, const char *stages, const char *micro,
                             int replicas) {
  char il[64], plain[64];
  snprintf(il, sizeof il, "%s-ilv", name);
  snprintf(plain, sizeof plain, "%s-1f1b", name);
  g_chunks = "2";
  run_and_compare(ref, il, p * replicas, stages, micro, 2 * p, 0);
  g_chunks = NULL;
  run_and_compare(ref, plain, 2 * p * replicas, stages, micro, 2 * p, 0);
  assert_dumps_bitwise(il, plain, 2 * p);
}

static void test_interleaved(void **state) {
  (void)state;
  interleaved_case(&ref32, "i2", 2, "0,3,4,6,8", "4", 1);
  interleaved_case(&ref64, "i2-f64", 2, "0,3,4,6,8", "4", 1);
  interleaved_case(&ref32, "i3", 3, "0,1,2,4,5,6,8", "4", 1);
  interleaved_case(&ref64, "i3-f64", 3, "0,1,2,4,5,6,8", "4", 1);
  interleaved_case(&ref64, "i2r2-f64", 2, "0,3,4,6,8", "3,1", 2);
}

/* What interleaved 1F1B does not run yet is refused by name, not run wrong. */
static void test_interleaved_refusals(void **state) {
  (void)state;
  struct {
    const char *n, *stages, *flag, *arg, *expect;
  } cases[] = {
      {"4", "0,2,4,6,8", "--tp", "2", "with tensor-parallel stages (--tp > 1) is not supported yet"},
      {"2", "0,2,4,6,8", "--ckpt-every", "1", "with periodic checkpoints (--ckpt-every) is not supported yet"},
      {"2", "0,2,4,8", "--seed", "1", "--stages lists 3 virtual stages, not a multiple of --chunks 2"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    char dump[300], err[8192];
    snprintf(dump, sizeof dump, "%s/irefuse", work);
    char *argv[] = {(char *)hetmix_bin, "launch", "-n", (char *)cases[c].n, "--", (char *)hetmix_bin, "worker",
                    "--model", MODEL, "--data", tokpath, "--steps", "2", "--chunks", "2", "--stages",
                    (char *)cases[c].stages, "--dump", dump, (char *)cases[c].flag, (char *)cases[c].arg, "--quiet", NULL};
    assert_int_not_equal(run_cli(argv, err, sizeof err), 0);
    if (!strstr(err, cases[c].expect)) fail_msg("case %zu: expected '%s' in:\n%s", c, cases[c].expect, err);
  }
}

/* Runs `cmd` (argv) and returns its exit status; its stderr lands in err (cap bytes). */
static int run_cli(char *const argv[], char *err, size_t cap) {
  char errp[300];
  snprintf(errp, sizeof errp, "%s/cli.err", work);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 100.0);
  err[0] = '\0';
  hm_t_read_file(errp, err, cap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* A plan from `hetmix plan` runs through `hetmix launch --plan`; the same plan is refused for
 * another model, for a cluster without its device types, and with the wrong worker count. */
static void test_plan_runs_and_mismatch_is_refused(void **state) {
  (void)state;
  char model[300], cluster[300], plan[300], out[300], err[8192];
  snprintf(model, sizeof model, "%s/model.json", work);
  snprintf(cluster, sizeof cluster, "%s/one-cpu.json", work);
  snprintf(plan, sizeof plan, "%s/plan.json", work);
  snprintf(out, sizeof out, "%s/planrun", work);
  FILE *f = fopen(model, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"name\": \"equiv\", \"dtype\": \"fp32\", "
        "\"config\": {\"arch\": \"gpt2\", \"L\": 6, \"C\": 32, \"NH\": 4, \"V\": 256, \"T\": 16}}\n", f);
  fclose(f);
  f = fopen(cluster, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"name\": \"one-cpu\", \"device_types\": [{\"name\": \"cpu\", \"backend\": "
        "\"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10}], "
        "\"hosts\": [{\"name\": \"h\", \"count\": 1, \"devices\": [{\"type\": \"cpu\", \"count\": 1}], "
        "\"host_link\": {\"bandwidth\": 6e9, \"latency\": 2e-6}}]}\n", f);
  fclose(f);
  char *mk[] = {(char *)hetmix_bin, "plan", "--cluster", HM_SOURCE_DIR "/examples/local-2backend.json", "--model",
                model, "--train", HM_SOURCE_DIR "/examples/train-local.json", "-o", plan, "--top", "1", NULL};
  if (run_cli(mk, err, sizeof err) != 0) fail_msg("hetmix plan failed:\n%s", err);

  char *run[] = {(char *)hetmix_bin, "launch", "--plan", plan, "--", "--data", tokpath, "--steps", "2", "--out", out,
                 "--quiet", NULL};
  if (run_cli(run, err, sizeof err) != 0) fail_msg("running the plan failed:\n%s", err);
  char path[400], buf[4096];
  snprintf(path, sizeof path, "%s/metrics.jsonl", out);
  assert_int_equal(hm_t_read_file(path, buf, sizeof buf), 0);
  assert_non_null(strstr(buf, "\"step\":2"));

  char *wrong_model[] = {(char *)hetmix_bin, "launch", "--plan", plan, "--model", HM_SOURCE_DIR "/examples/gpt-mini.json",
                         NULL};
  assert_int_not_equal(run_cli(wrong_model, err, sizeof err), 0);
  if (!strstr(err, "the plan was made for equiv")) fail_msg("wrong model: %s", err);
  char *wrong_cluster[] = {(char *)hetmix_bin, "launch", "--plan", plan, "--cluster", cluster, NULL};
  assert_int_not_equal(run_cli(wrong_cluster, err, sizeof err), 0);
  if (!strstr(err, "has no device type")) fail_msg("wrong cluster: %s", err);
  char *wrong_n[] = {(char *)hetmix_bin, "launch", "--plan", plan, "-n", "5", NULL};
  assert_int_not_equal(run_cli(wrong_n, err, sizeof err), 0);
  if (!strstr(err, "but -n says 5")) fail_msg("wrong -n: %s", err);
}

/* The same state: meta (all but the run identity, random per fresh run) and every tensor bitwise. */
static void assert_same_state(const char *a, const char *b) {
  hm_ckpt x, y;
  if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) fail_msg("reading %s, %s: %s", a, b, hm_last_error());
  const hm_ckpt_meta *mx = &x.meta, *my = &y.meta;
  assert_true(mx->run_id != 0 && my->run_id != 0);
  assert_int_equal(mx->step, my->step);
  assert_int_equal(mx->data_position, my->data_position);
  assert_int_equal(mx->data_seed, my->data_seed);
  assert_int_equal(mx->layer_first, my->layer_first);
  assert_int_equal(mx->layer_last, my->layer_last);
  assert_int_equal(mx->stage_index, my->stage_index);
  assert_int_equal(mx->stage_count, my->stage_count);
  assert_int_equal(mx->micro_batches, my->micro_batches);
  assert_int_equal(x.n_tensors, y.n_tensors);
  for (int i = 0; i < x.n_tensors; i++) {
    assert_string_equal(x.tensors[i].name, y.tensors[i].name);
    assert_int_equal(x.tensors[i].numel, y.tensors[i].numel);
    assert_int_equal(hm_ckpt_elem_size(&x), hm_ckpt_elem_size(&y));
    if (memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
      fail_msg("tensor %s differs between %s and %s", x.tensors[i].name, a, b);
  }
  hm_ckpt_free(&x);
  hm_ckpt_free(&y);
}

/* Stopping after 3 of 6 steps and resuming from the stage checkpoints gives bitwise the
 * checkpoints of an uninterrupted run (params, AdamW moments, step, data position; the files
 * differ only in the run identity). */
static void test_resume_is_bitwise(void **state) {
  (void)state;
  char full[300], part[300], rest[300], e[8192];
  snprintf(full, sizeof full, "%s/resume-full", work);
  snprintf(part, sizeof part, "%s/resume-part", work);
  snprintf(rest, sizeof rest, "%s/resume-rest", work);
  char *base[] = {(char *)hetmix_bin, "launch", "-n", "4", "--", (char *)hetmix_bin, "worker", "--model", MODEL,
                  "--data", tokpath, "--steps", "6", "--batch", "2", "--stages", "0,3,8", "--micro", "2,1", "--quiet",
                  "--dump", NULL, NULL, NULL, NULL, NULL};
  const int k = 21; /* index of the --dump value */
  base[k] = full;
  if (run_cli(base, e, sizeof e) != 0) fail_msg("uninterrupted run: %s", e);
  base[k] = part, base[k + 1] = "--stop-after", base[k + 2] = "3";
  if (run_cli(base, e, sizeof e) != 0) fail_msg("first half: %s", e);
  base[k] = rest, base[k + 1] = "--resume", base[k + 2] = part;
  if (run_cli(base, e, sizeof e) != 0) fail_msg("resumed half: %s", e);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", full, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
  }
}

/* The same with tensor-parallel stages of different degrees (1 and 2): the shard files are merged
 * into unsplit stage checkpoints, from which each rank of the resumed run cuts its shard. */
static void test_tp_resume_is_bitwise(void **state) {
  (void)state;
  char full[300], part[300], rest[300], e[8192];
  snprintf(full, sizeof full, "%s/tp-resume-full", work);
  snprintf(part, sizeof part, "%s/tp-resume-part", work);
  snprintf(rest, sizeof rest, "%s/tp-resume-rest", work);
  char *base[] = {(char *)hetmix_bin, "launch", "-n", "3", "--", (char *)hetmix_bin, "worker", "--model", MODEL,
                  "--data", tokpath, "--steps", "6", "--batch", "2", "--stages", "0,3,8", "--tp", "1,2", "--quiet",
                  "--dump", NULL, NULL, NULL, NULL, NULL};
  const int k = 21; /* index of the --dump value */
  base[k] = full;
  if (run_cli(base, e, sizeof e) != 0) fail_msg("uninterrupted run: %s", e);
  base[k] = part, base[k + 1] = "--stop-after", base[k + 2] = "3";
  if (run_cli(base, e, sizeof e) != 0) fail_msg("first half: %s", e);
  base[k] = rest, base[k + 1] = "--resume", base[k + 2] = part;
  if (run_cli(base, e, sizeof e) != 0) fail_msg("resumed half: %s", e);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400], shard[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", full, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
    snprintf(shard, sizeof shard, "%s/stage%d.tp0.hmc", full, s);
    assert_int_equal(access(shard, F_OK), -1); /* merged, then removed */
  }
}

/* A worker killed in the middle of training: the launcher stops the others and names it. */
static void test_killed_worker_mid_training(void **state) {
  (void)state;
  char dir[300], errp[300], metrics[400];
  snprintf(dir, sizeof dir, "%s/killed", work);
  snprintf(errp, sizeof errp, "%s/killed.err", work);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "4", "--", (char *)hetmix_bin, "worker", "--model", MODEL,
                  "--data", tokpath, "--steps", "100000", "--batch", "2", "--stages", "0,3,8", "--micro", "2,2",
                  "--out", dir, "--quiet", NULL};
  pid_t launcher = hm_t_spawn(argv, NULL, errp);
  assert_int_equal(hm_t_wait_file(metrics, 60.0), 0); /* training is under way */
  /* the launcher's children are the workers; rank 2 is the third one started */
  char path[64], kids[256] = "";
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)launcher, (int)launcher);
  assert_int_equal(hm_t_read_file(path, kids, sizeof kids), 0);
  long pids[4];
  int n = sscanf(kids, "%ld %ld %ld %ld", &pids[0], &pids[1], &pids[2], &pids[3]);
  assert_int_equal(n, 4);
  double t0 = hm_t_now();
  kill((pid_t)pids[2], SIGKILL);
  int st = hm_t_wait(launcher, 10.0);
  double took = hm_t_now() - t0;
  assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 128 + 9);
  char err[8192] = "", expect[96];
  hm_t_read_file(errp, err, sizeof err);
  snprintf(expect, sizeof expect, "rank 2 (pid %ld) was killed by signal 9", pids[2]);
  if (!strstr(err, expect)) fail_msg("launcher said:\n%s", err);
  assert_true(took < 5.0);
  for (int r = 0; r < 4; r++) assert_false(hm_t_pid_running((pid_t)pids[r]));
  print_message("  killed rank 2 of a training job: launcher exited after %.2f s\n", took);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "cuda") == 0) { /* `test_pipeline cuda`: the GPU + CPU layouts */
    if (hm_test_device_missing("cuda")) return HM_TEST_SKIP;
    const struct CMUnitTest cuda_tests[] = {cmocka_unit_test(test_cuda_cpu_layouts)};
    return cmocka_run_group_tests(cuda_tests, setup, teardown);
  }
  if (hm_test_opencl_only(argc, argv)) { /* `test_pipeline opencl`: that case only */
    if (hm_test_opencl_missing("opencl:threads=1")) return HM_TEST_SKIP;
    const struct CMUnitTest opencl_tests[] = {cmocka_unit_test(test_opencl_workers),
                                              cmocka_unit_test(test_opencl_cpu_layouts),
                                              cmocka_unit_test(test_opencl_compute_is_timed)};
    return cmocka_run_group_tests(opencl_tests, setup, teardown);
  }
  if (argc > 1 && strcmp(argv[1], "interleaved") == 0) { /* `test_pipeline interleaved` */
    const struct CMUnitTest ilv_tests[] = {cmocka_unit_test(test_interleaved), cmocka_unit_test(test_interleaved_refusals)};
    return cmocka_run_group_tests(ilv_tests, setup, teardown);
  }
  if (argc > 1 && strcmp(argv[1], "tp") == 0) { /* `test_pipeline tp`: the tensor-parallel layouts */
    const struct CMUnitTest tp_tests[] = {
        cmocka_unit_test(test_tp2),           cmocka_unit_test(test_tp4),
        cmocka_unit_test(test_pp2_tp2),       cmocka_unit_test(test_dp2_tp2),
        cmocka_unit_test(test_tp_mixed_replicas), cmocka_unit_test(test_tp_mixed_stages),
        cmocka_unit_test(test_tp_resume_is_bitwise), cmocka_unit_test(test_llama_tp),
    };
    return cmocka_run_group_tests(tp_tests, setup, teardown);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_stage_is_bitwise),
      cmocka_unit_test(test_depth2_nonuniform),
      cmocka_unit_test(test_depth4_nonuniform),
      cmocka_unit_test(test_2replicas_x_2stages_unequal_micro),
      cmocka_unit_test(test_dp_overlap_is_bitwise),
      cmocka_unit_test(test_rebalanced_replicas),
      cmocka_unit_test(test_mismatched_layout_is_refused),
      cmocka_unit_test(test_plan_runs_and_mismatch_is_refused),
      cmocka_unit_test(test_resume_is_bitwise),
      cmocka_unit_test(test_killed_worker_mid_training),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
