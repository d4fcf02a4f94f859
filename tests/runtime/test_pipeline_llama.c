/* The pipeline runtime runs Llama stages: a small Llama (GQA, SwiGLU, untied embeddings) from a
 * spec model file, trained 10 steps by `hetmix launch ... hetmix worker --model FILE.json` with
 * 2 stages and with 2 replicas x 2 stages, in f64 on ref, against the single-process trainer
 * (hm_train_run) on the same file; and a plan made by `hetmix plan` for that model runs through
 * `hetmix launch --plan` (the workers build their stages from the plan's model).
 *
 * Bounds: both sides run in f64 the same operations but for the grouping of sums that the
 * layout changes (the gradient norm summed per stage, replicas' partial gradients added), so
 * they differ by a few u64 = 1.1e-16 per step, which 10 AdamW steps amplify at most by
 * lr/eps-scale factors far below 2^-29 of the f32 scale. The dumps of f64 runs hold f64: each
 * parameter tensor within PARAM_TOL = 1e-12 relative, normwise. The losses are written in f32
 * (metrics), so each may differ by the rounding of the two f32 copies: 2 u32 = 2^-23 relative. A lost or doubled micro-batch, a stale
 * weight or a wrong stage moves parameters by ~lr = 3e-3 per step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>

#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define STEPS 10
#define TOL 0x1.0p-23     /* two f32 roundings, relative (see the top) */
#define PARAM_TOL 1e-12   /* f64 parameters, relative normwise (see the top) */

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256], modelpath[256];
static float ref_loss[STEPS];
static hm_ckpt ref_ckpt;

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

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "pipe-llama") != 0) return -1;
  enum { NTOK = 40000 };
  static uint8_t tok[NTOK];
  uint64_t x = 7;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 6 == 0 ? ' ' : 'a' + (x % 26));
  }
  snprintf(tokpath, sizeof tokpath, "%s/data.tok", work);
  if (hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) != HM_OK) return -1;
  snprintf(modelpath, sizeof modelpath, "%s/llama.json", work);
  FILE *f = fopen(modelpath, "w");
  if (!f) return -1;
  fputs("{\"version\": 1, \"name\": \"llama-pipe\", \"dtype\": \"fp32\", \"config\": {\"arch\": \"llama\", "
        "\"L\": 4, \"C\": 32, \"NH\": 4, \"kv_heads\": 2, \"ffn\": 48, \"V\": 256, \"T\": 16}}\n", f);
  fclose(f);
  /* the reference: one process, every layer, 4 micro-batches per step */
  hm_train_options o;
  hm_train_defaults(&o);
  o.device = "ref:dtype=f64";
  if (hm_model_config_resolve(modelpath, &o.config, o.model_name, sizeof o.model_name) != HM_OK) return -1;
  o.data = tokpath;
  o.steps = STEPS;
  o.batch = 2;
  o.grad_accum = 4;
  o.lr = 3e-3f;
  char dir[256], path[512];
  snprintf(dir, sizeof dir, "%s/ref", work);
  o.out_dir = dir;
  hm_train_result res;
  if (hm_train_run(&o, &res) != HM_OK) {
    print_error("reference: %s\n", hm_last_error());
    return -1;
  }
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  if (read_losses(path, ref_loss, STEPS) != STEPS) return -1;
  if (hm_resolve_checkpoint(dir, path, sizeof path) != HM_OK || hm_ckpt_read(path, &ref_ckpt) != HM_OK) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  hm_ckpt_free(&ref_ckpt);
  hm_t_rmtree(work);
  return 0;
}

static int run_cli(char *const argv[], char *err, size_t cap) {
  char errp[300];
  snprintf(errp, sizeof errp, "%s/cli.err", work);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 200.0);
  err[0] = '\0';
  hm_t_read_file(errp, err, cap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* max|a - b| / max|b| over two tensors of checkpoints */
static double rel_ckpt(const hm_ckpt *ca, const hm_ckpt_tensor *a, const hm_ckpt *cb, const hm_ckpt_tensor *b) {
  double d = 0, m = 0;
  for (uint64_t i = 0; i < b->numel; i++) {
    d = fmax(d, fabs(hm_ckpt_value(ca, a, i) - hm_ckpt_value(cb, b, i)));
    m = fmax(m, fabs(hm_ckpt_value(cb, b, i)));
  }
  return m > 0 ? d / m : d;
}

/* max|a - b| / max|b| */
static double rel(const float *a, const float *b, size_t n) {
  double d = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - b[i]));
    m = fmax(m, fabs((double)b[i]));
  }
  return m > 0 ? d / m : d;
}

static void run_and_compare(const char *name, const char *workers, const char *stages, const char *micro, int nstages) {
  char dir[256], dump[300], err[8192], steps[16];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  snprintf(dump, sizeof dump, "%s/dump", dir);
  snprintf(steps, sizeof steps, "%d", STEPS);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", (char *)workers, "--", (char *)hetmix_bin, "worker",
                  "--model", modelpath, "--data", tokpath, "--steps", steps, "--batch", "2", "--lr", "3e-3",
                  "--stages", (char *)stages, "--micro", (char *)micro, "--device", "ref:dtype=f64",
                  "--out", dir, "--dump", dump, "--quiet", NULL};
  if (run_cli(argv, err, sizeof err) != 0) fail_msg("%s: launch failed:\n%s", name, err);
  float loss[STEPS];
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  assert_int_equal(read_losses(path, loss, STEPS), STEPS);
  double worst_loss = rel(loss, ref_loss, STEPS), worst = 0;
  if (worst_loss > TOL) fail_msg("%s: losses differ by %.3g relative (bound %.3g)", name, worst_loss, TOL);
  int seen = 0, nref = 0;
  for (int s = 0; s < nstages; s++) {
    hm_ckpt ck;
    snprintf(path, sizeof path, "%s/stage%d.hmc", dump, s);
    if (hm_ckpt_read(path, &ck) != HM_OK) fail_msg("%s: %s", name, hm_last_error());
    assert_int_equal(ck.meta.config.arch, HM_ARCH_LLAMA);
    for (int i = 0; i < ck.n_tensors; i++) {
      const hm_ckpt_tensor *t = &ck.tensors[i], *r = hm_ckpt_find(&ref_ckpt, t->name);
      if (strncmp(t->name, "param/", 6) != 0) continue;
      if (!r || r->numel != t->numel) fail_msg("%s: %s is not in the reference", name, t->name);
      if (hm_ckpt_elem_size(&ck) != 8) fail_msg("%s: the f64 run's dump of stage %d holds f32", name, s);
      double e = rel_ckpt(&ck, t, &ref_ckpt, r);
      if (e > PARAM_TOL) fail_msg("%s: %s differs by %.3g relative (bound %.3g)", name, t->name, e, PARAM_TOL);
      worst = fmax(worst, e);
      seen++;
    }
    hm_ckpt_free(&ck);
  }
  for (int i = 0; i < ref_ckpt.n_tensors; i++) nref += strncmp(ref_ckpt.tensors[i].name, "param/", 6) == 0;
  assert_int_equal(seen, nref); /* untied: every tensor on exactly one stage */
  print_message("  %-6s stages %-8s micro %-4s: losses %.2e (bound %.2e), worst parameter tensor %.2e relative "
                "(bound %.2e)\n", name, stages, micro, worst_loss, TOL, worst, PARAM_TOL);
}

static void test_two_stages(void **state) {
  (void)state;
  run_and_compare("p2", "2", "0,3,6", "4", 2);
}

static void test_two_replicas_two_stages(void **state) {
  (void)state;
  run_and_compare("r2p2", "4", "0,2,6", "2,2", 2);
}

static void test_plan_runs(void **state) {
  (void)state;
  char plan[300], out[300], err[8192];
  snprintf(plan, sizeof plan, "%s/plan.json", work);
  snprintf(out, sizeof out, "%s/planrun", work);
  char *mk[] = {(char *)hetmix_bin, "plan", "--cluster", HM_SOURCE_DIR "/examples/local-2backend.json", "--model",
                modelpath, "--train", HM_SOURCE_DIR "/examples/train-local.json", "-o", plan, "--top", "1", NULL};
  if (run_cli(mk, err, sizeof err) != 0) fail_msg("hetmix plan failed:\n%s", err);
  char *run[] = {(char *)hetmix_bin, "launch", "--plan", plan, "--", "--data", tokpath, "--steps", "2", "--out", out,
                 "--quiet", NULL};
  if (run_cli(run, err, sizeof err) != 0) fail_msg("running the plan failed:\n%s", err);
  char path[400], buf[4096];
  snprintf(path, sizeof path, "%s/metrics.jsonl", out);
  assert_int_equal(hm_t_read_file(path, buf, sizeof buf), 0);
  assert_non_null(strstr(buf, "\"step\":2"));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_two_stages), cmocka_unit_test(test_two_replicas_two_stages),
                                     cmocka_unit_test(test_plan_runs)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
