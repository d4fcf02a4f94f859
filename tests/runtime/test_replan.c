/* Elastic re-plan of a --plan job (hetmix launch --drop-after, --exclude; docs/runtime.md,
 * "Elastic re-plan"). A 3-device plan (three one-thread cpu workers, as three device types whose
 * memory holds the model only split: 3 stages) loses rank 1's device for good: its worker is
 * killed on the first attempt and again on the second (HETMIX_FAULT ...:attempt=1), so with
 * --drop-after 2 the launcher re-plans on the 2 devices left (2 stages, layers moved), re-shards
 * the newest complete checkpoint to them and finishes. The losses of every step are printed beside
 * an uninterrupted 3-device run's and must be bitwise equal: the new plan keeps the micro-batch
 * size, the micro-batch count and one replica, so every layer sees the same inputs and sums its
 * gradients over the same micro-batches in the same order on the same backend; only which process
 * computes a layer changed (a tolerance would hide a re-shard that moved a moment or a step). The
 * new plan's predicted step time is printed against the measured one. --exclude re-plans before
 * starting. Scaled for CI: a 6-layer model of 32 channels, 12 steps, a few seconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define STEPS 12

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128];
static const char *plan_name = "plan.json"; /* the plan launch() starts */

static const char cluster_json[] =
    "{\"version\": 1, \"name\": \"three-cpus\",\n"
    " \"note\": \"three one-thread cpu workers as three types whose memory holds the model only split\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"cpu-a\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 1.2e6,\n"
    "   \"memory_bandwidth\": 1e10, \"efficiency\": 0.5},\n"
    "  {\"name\": \"cpu-b\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 1.2e6,\n"
    "   \"memory_bandwidth\": 1e10, \"efficiency\": 0.5},\n"
    "  {\"name\": \"cpu-c\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 1.2e6,\n"
    "   \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"cpu-a\", \"count\": 1}, {\"type\": \"cpu-b\", \"count\": 1}, {\"type\": \"cpu-c\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n";
static const char model_json[] =
    "{\"version\": 1, \"name\": \"tiny6\", \"dtype\": \"fp32\",\n"
    " \"config\": {\"arch\": \"gpt2\", \"L\": 4, \"C\": 32, \"NH\": 4, \"V\": 256, \"T\": 16}}\n";
static const char train_json[] =
    "{\"version\": 1, \"global_batch\": 8, \"micro_batch_sizes\": [1, 2, 4], \"precision\": \"fp32\"}\n";

static void write_text(const char *name, const char *text) {
  char p[300];
  snprintf(p, sizeof p, "%s/%s", work, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Runs argv (stdout and stderr into out and err); its exit status, -1 at the deadline. */
static int run(char *const *argv, char *out, size_t ocap, char *err, size_t ecap) {
  char op[300], ep[300];
  snprintf(op, sizeof op, "%s/cmd.out", work);
  snprintf(ep, sizeof ep, "%s/cmd.err", work);
  pid_t pid = hm_t_spawn(argv, op, ep);
  int st = hm_t_wait(pid, 150.0);
  out[0] = err[0] = '\0';
  hm_t_read_file(op, out, ocap);
  hm_t_read_file(ep, err, ecap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* The loss of each step 1..STEPS in metrics.jsonl (the last line of a step a restart repeated). */
static void read_losses(const char *path, double *loss) {
  static char buf[1 << 16];
  hm_t_read_file(path, buf, sizeof buf);
  for (int s = 0; s <= STEPS; s++) loss[s] = -1;
  for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *st = cJSON_GetObjectItem(j, "step"), *l = cJSON_GetObjectItem(j, "loss");
    if (cJSON_IsNumber(st) && cJSON_IsNumber(l) && st->valueint >= 1 && st->valueint <= STEPS)
      loss[st->valueint] = l->valuedouble;
    cJSON_Delete(j);
  }
}

/* hetmix launch --plan plan.json [extra launch options] -- <training of STEPS steps>. */
static int launch(const char *tag, const char *const *extra, int nextra, char *out, size_t ocap, char *err,
                  size_t ecap) {
  char plan[300], dump[300], outd[300], tok[300];
  snprintf(plan, sizeof plan, "%s/%s", work, plan_name);
  snprintf(dump, sizeof dump, "%s/%s-ckpt", work, tag);
  snprintf(outd, sizeof outd, "%s/%s-out", work, tag);
  snprintf(tok, sizeof tok, "%s/data.tok", work);
  char *argv[48] = {(char *)hetmix_bin, "launch", "--plan", plan, "--timeout", "120"};
  int n = 6;
  for (int i = 0; i < nextra; i++) argv[n++] = (char *)extra[i];
  char *rest[] = {"--", "--data", tok, "--steps", "12", "--warmup", "2", "--dump", dump, "--ckpt-every", "2",
                  "--out", outd, NULL};
  for (int i = 0; rest[i]; i++) argv[n++] = rest[i];
  argv[n] = NULL;
  return run(argv, out, ocap, err, ecap);
}

static void test_device_lost_for_good(void **state) {
  (void)state;
  static char out[1 << 16], err[1 << 16];
  const char *none[] = {NULL};
  assert_int_equal(launch("ref", none, 0, out, sizeof out, err, sizeof err), 0);
  const char *opts[] = {"--max-restarts", "4", "--drop-after", "2"};
  setenv("HETMIX_FAULT", "kill:rank=1:step=5;kill:rank=1:step=7:attempt=1", 1);
  const int rc = launch("drop", opts, 4, out, sizeof out, err, sizeof err);
  unsetenv("HETMIX_FAULT");
  if (rc != 0) fail_msg("the job did not finish (exit %d):\n%s", rc, err);
  if (!strstr(err, "re-plan 1: dropped rank 1 (host 0, device 1, cpu-b") || !strstr(err, "stages [0,3) [3,6)"))
    fail_msg("rank 1's device was not dropped, or the new plan is not 2 stages of layers [0,3) [3,6):\n%s", err);
  if (!strstr(err, "re-sharded ")) fail_msg("no checkpoint was re-sharded:\n%s", err);
  /* the final dump: the new layout's 2 stages at the last step */
  hm_ckpt_meta m;
  char p[400];
  snprintf(p, sizeof p, "%s/drop-ckpt/stage1.hmc", work);
  assert_int_equal(hm_ckpt_read_meta(p, &m), HM_OK);
  assert_int_equal(m.step, STEPS);
  assert_int_equal(m.stage_count, 2);
  assert_int_equal(m.layer_first, 3);
  double ref[STEPS + 1], got[STEPS + 1];
  snprintf(p, sizeof p, "%s/ref-out/metrics.jsonl", work);
  read_losses(p, ref);
  snprintf(p, sizeof p, "%s/drop-out/metrics.jsonl", work);
  read_losses(p, got);
  print_message("  step  loss (3 devices, uninterrupted)  loss (rank 1 lost, re-planned on 2)\n");
  for (int s = 1; s <= STEPS; s++) {
    print_message("  %4d  %.9f                      %.9f\n", s, ref[s], got[s]);
    if (got[s] != ref[s]) fail_msg("step %d: loss %.9g after the re-plan, %.9g uninterrupted", s, got[s], ref[s]);
  }
  const char *pred = strstr(err, "predicted step "), *meas = strstr(out, "done: ");
  print_message("  new plan: %.40s; measured: %.60s\n", pred ? pred : "?", meas ? meas : "?");
}

/* --exclude 2: planned again on ranks 0 and 1's devices before anything starts. */
static void test_exclude_replans_before_start(void **state) {
  (void)state;
  static char out[1 << 16], err[1 << 16];
  const char *opts[] = {"--exclude", "2"};
  const int rc = launch("excl", opts, 2, out, sizeof out, err, sizeof err);
  if (rc != 0) fail_msg("the job did not finish (exit %d):\n%s", rc, err);
  if (!strstr(err, "dropped rank 2 (host 0, device 2, cpu-c") || !strstr(err, "no checkpoint to re-shard"))
    fail_msg("rank 2's device was not excluded:\n%s", err);
  char p[400];
  hm_ckpt_meta m;
  snprintf(p, sizeof p, "%s/excl-ckpt/stage1.hmc", work);
  assert_int_equal(hm_ckpt_read_meta(p, &m), HM_OK);
  assert_int_equal(m.stage_count, 2);
}

/* A host group of 3 hosts (one device each) loses its second host's device: the group is split
 * into single hosts, the 2 left keep their names, and the job runs on them. */
static void test_exclude_splits_a_host_group(void **state) {
  (void)state;
  write_text("hosts", "{\"version\": 1, \"name\": \"three-hosts\",\n"
             " \"device_types\": [{\"name\": \"cpu\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11},\n"
             "   \"memory_bytes\": 1.2e6, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
             " \"hosts\": [{\"name\": \"n\", \"count\": 3, \"hostnames\": [\"n0\", \"n1\", \"n2\"],\n"
             "   \"devices\": [{\"type\": \"cpu\", \"count\": 1}], \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}}]}\n");
  static char out[1 << 16], err[1 << 16];
  char c[300], m[300], t[300], pl[300];
  snprintf(c, sizeof c, "%s/hosts", work);
  snprintf(m, sizeof m, "%s/model.json", work);
  snprintf(t, sizeof t, "%s/train.json", work);
  snprintf(pl, sizeof pl, "%s/hosts-plan/plan.json", work);
  char *plan[] = {(char *)hetmix_bin, "plan", "--cluster", c, "--model", m, "--train", t, "-o", pl, NULL};
  snprintf(out, sizeof out, "mkdir -p %s/hosts-plan", work);
  assert_int_equal(system(out), 0);
  if (run(plan, out, sizeof out, err, sizeof err) != 0) fail_msg("hetmix plan:\n%s", err);
  plan_name = "hosts-plan/plan.json";
  const char *opts[] = {"--exclude", "1"};
  const int rc = launch("hosts", opts, 2, out, sizeof out, err, sizeof err);
  plan_name = "plan.json";
  if (rc != 0 || !strstr(err, "dropped rank 1 (host 1, device 0, cpu"))
    fail_msg("host 1's device was not dropped (exit %d):\n%s", rc, err);
  snprintf(pl, sizeof pl, "%s/hosts-plan/replan1/cluster.json", work);
  hm_t_read_file(pl, out, sizeof out);
  if (!strstr(out, "\"n0\"") || !strstr(out, "\"n2\"") || strstr(out, "\"n1\""))
    fail_msg("the cluster without host n1's device is not hosts n0 and n2:\n%s", out);
}

/* ---- a tensor-parallel plan that loses a device */

/* Two device types of f64 reference devices: fa x2 (one stage split 2 ways) and fb x1. */
static const char tp_cluster_json[] =
    "{\"version\": 1, \"name\": \"tp-f64\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"fa\", \"backend\": \"ref:dtype=f64\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 1e9,\n"
    "   \"memory_bandwidth\": 1e10, \"efficiency\": 0.5, \"intra_host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}},\n"
    "  {\"name\": \"fb\", \"backend\": \"ref:dtype=f64\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 1e9,\n"
    "   \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"fa\", \"count\": 2}, {\"type\": \"fb\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n";

/* One rank of the fixed layout below. */
static cJSON *tp_rank(int rank, int device, const char *type, int stage, int tp_rank, int lo, int hi) {
  cJSON *r = cJSON_CreateObject();
  cJSON_AddNumberToObject(r, "rank", rank);
  cJSON_AddNumberToObject(r, "host", 0);
  cJSON_AddNumberToObject(r, "device", device);
  cJSON_AddStringToObject(r, "device_type", type);
  cJSON_AddStringToObject(r, "backend", "ref:dtype=f64");
  cJSON_AddNumberToObject(r, "class", 0);
  cJSON_AddNumberToObject(r, "replica", 0);
  cJSON_AddNumberToObject(r, "stage", stage);
  cJSON_AddNumberToObject(r, "tp_rank", tp_rank);
  int layers[2] = {lo, hi};
  cJSON_AddItemToObject(r, "layers", cJSON_CreateIntArray(layers, 2));
  cJSON_AddNumberToObject(r, "micro_batches", 2);
  return r;
}

static cJSON *tp_stage(const char *type, int tp, int lo, int hi) {
  cJSON *st = cJSON_CreateObject();
  cJSON_AddStringToObject(st, "device_type", type);
  cJSON_AddNumberToObject(st, "tp", tp);
  int layers[2] = {lo, hi};
  cJSON_AddItemToObject(st, "layers", cJSON_CreateIntArray(layers, 2));
  return st;
}

/* tp-plan.json: `hetmix plan`'s file for the cluster above (its embedded specs) with a fixed
 * layout whatever the planner chose: micro-batches of 4, 2 per step; stage 0 = layers [0,4) on
 * fa split 2 ways (ranks 0, 1), stage 1 = [4,6) on fb (rank 2). */
static void write_tp_plan(void) {
  static char out[1 << 16], err[1 << 16];
  char c[300], m[300], t[300], pl[300];
  write_text("tp-cluster.json", tp_cluster_json);
  snprintf(c, sizeof c, "%s/tp-cluster.json", work);
  snprintf(m, sizeof m, "%s/model.json", work);
  snprintf(t, sizeof t, "%s/train.json", work);
  snprintf(pl, sizeof pl, "%s/tp-plan.json", work);
  char *plan[] = {(char *)hetmix_bin, "plan", "--cluster", c, "--model", m, "--train", t, "-o", pl, "--max-chunks", "1", NULL};
  if (run(plan, out, sizeof out, err, sizeof err) != 0) fail_msg("hetmix plan:\n%s", err);
  static char text[1 << 18];
  hm_t_read_file(pl, text, sizeof text);
  cJSON *j = cJSON_Parse(text);
  assert_non_null(j);
  cJSON_ReplaceItemInObject(j, "micro_batch", cJSON_CreateNumber(4));
  cJSON *cls = cJSON_CreateObject(), *stages = cJSON_CreateArray(), *classes = cJSON_CreateArray();
  cJSON_AddNumberToObject(cls, "replicas", 1);
  cJSON_AddNumberToObject(cls, "micro_batches", 2);
  cJSON_AddStringToObject(cls, "schedule", "1f1b");
  cJSON_AddNumberToObject(cls, "chunks", 1);
  cJSON_AddItemToArray(stages, tp_stage("fa", 2, 0, 4));
  cJSON_AddItemToArray(stages, tp_stage("fb", 1, 4, 6));
  cJSON_AddItemToObject(cls, "stages", stages);
  cJSON_AddItemToArray(classes, cls);
  cJSON_ReplaceItemInObject(j, "classes", classes);
  cJSON *ranks = cJSON_CreateArray();
  cJSON_AddItemToArray(ranks, tp_rank(0, 0, "fa", 0, 0, 0, 4));
  cJSON_AddItemToArray(ranks, tp_rank(1, 1, "fa", 0, 1, 0, 4));
  cJSON_AddItemToArray(ranks, tp_rank(2, 2, "fb", 1, 0, 4, 6));
  cJSON_ReplaceItemInObject(j, "ranks", ranks);
  char *txt = cJSON_Print(j);
  cJSON_Delete(j);
  write_text("tp-plan.json", txt);
  free(txt);
}

/* The whole model of a final dump folder (its stage files merged), read into ck. */
static void read_whole(const char *dir, hm_ckpt *ck) {
  char p[400], whole[400];
  hm_ckpt_meta m;
  snprintf(p, sizeof p, "%s/stage0.hmc", dir);
  assert_int_equal(hm_ckpt_read_meta(p, &m), HM_OK);
  snprintf(whole, sizeof whole, "%s.whole.hmc", dir);
  if (hm_ckpt_merge_stages(dir, m.stage_count, whole) != HM_OK) fail_msg("merging %s: %s", dir, hm_last_error());
  assert_int_equal(hm_ckpt_read(whole, ck), HM_OK);
  assert_int_equal(hm_ckpt_elem_size(ck), 8);
}

/* 1 for element k of an attention key bias ("param/h<i>.attn.qkv.b" elements [C, 2C)). */
static int is_key_bias(const char *name, uint64_t k, int64_t C) {
  return strstr(name, ".attn.qkv.b") && k >= (uint64_t)C && k < 2 * (uint64_t)C;
}

/* A tensor-parallel plan (stage 0 split over fa ranks 0 and 1, f64 devices) loses rank 1's
 * device for good: the launcher merges stage 0's two tensor-parallel shards of the newest
 * checkpoint, re-plans on fa x1 + fb x1 and re-shards to whatever the planner chose (the tensor-
 * parallel degree and the layers change), and the run finishes. Its final parameters against the
 * uninterrupted run's: the same f64 operations but for the order of the tensor-parallel partial
 * sums and of the micro-batch and replica sums the new layout does in other groupings, each a
 * few u64 = 1.1e-16 relative, so every tensor within F64_REL = 1e-12 relative (max |a - b| / max
 * |b|), test_pipeline's bound for f64 tensor-parallel runs against one process. The attention
 * key biases apart: their exact gradient is zero, so both runs move them by rounding noise that
 * AdamW scales by its own tiny RMS; a step of AdamW moves an element by at most lr (Kingma & Ba,
 * 2.1: |m/sqrt(v)| <= 1 for beta1 0.9 < sqrt(beta2 0.95)), so they differ by at most twice the
 * learning rates summed over the steps after the re-plan. A lost or misplaced shard moves
 * whole tensors by ~lr per step, far above 1e-12 relative. */
static void test_tp_plan_loses_a_device(void **state) {
  (void)state;
  static char out[1 << 16], err[1 << 16];
  write_tp_plan();
  plan_name = "tp-plan.json";
  const char *none[] = {NULL};
  if (launch("tpref", none, 0, out, sizeof out, err, sizeof err) != 0) fail_msg("the TP plan's run failed:\n%s", err);
  const char *opts[] = {"--max-restarts", "3", "--drop-after", "1"};
  setenv("HETMIX_FAULT", "kill:rank=1:step=5", 1);
  const int rc = launch("tpdrop", opts, 4, out, sizeof out, err, sizeof err);
  unsetenv("HETMIX_FAULT");
  plan_name = "plan.json";
  if (rc != 0) fail_msg("the job did not finish (exit %d):\n%s", rc, err);
  const char *nl = strstr(err, "re-plan 1: dropped rank 1 (host 0, device 1, fa");
  if (!nl || !strstr(err, "re-sharded ")) fail_msg("rank 1's device was not dropped and re-sharded:\n%s", err);
  const char *eol = strchr(nl, '\n');
  print_message("  %.*s\n", eol ? (int)(eol - nl) : 200, nl);
  hm_ckpt a, b;
  char da[300], db[300];
  snprintf(da, sizeof da, "%s/tpref-ckpt", work);
  snprintf(db, sizeof db, "%s/tpdrop-ckpt", work);
  read_whole(da, &a);
  read_whole(db, &b);
  assert_int_equal(a.meta.step, STEPS);
  assert_int_equal(b.meta.step, STEPS);
  hm_train_options to;
  hm_train_defaults(&to);
  to.steps = STEPS, to.warmup = 2;
  double lr_sum = 0;
  for (int s = 5; s <= STEPS; s++) lr_sum += hm_train_lr_at(&to, s); /* steps 5.. ran on the new layout (resumed at 4 at the latest) */
  double worst = 0, worst_kb = 0;
  const char *worst_name = "";
  for (int i = 0; i < a.n_tensors; i++) {
    const hm_ckpt_tensor *x = &a.tensors[i], *y = hm_ckpt_find(&b, x->name);
    if (strncmp(x->name, "param/", 6) != 0) continue;
    if (!y || y->numel != x->numel) fail_msg("tensor %s is missing or of another size after the re-plan", x->name);
    double d = 0, mag = 0;
    for (uint64_t k = 0; k < x->numel; k++) {
      const double e = fabs(hm_ckpt_value(&a, x, k) - hm_ckpt_value(&b, y, k));
      if (is_key_bias(x->name, k, a.meta.config.C)) worst_kb = fmax(worst_kb, e);
      else d = fmax(d, e), mag = fmax(mag, fabs(hm_ckpt_value(&a, x, k)));
    }
    const double rel = mag > 0 ? d / mag : d;
    if (rel > worst) worst = rel, worst_name = x->name;
  }
  print_message("  final parameters against the uninterrupted TP run: largest error %.2e relative (%s; bound 1e-12), "
                "key biases %.2e absolute (bound %.2e)\n", worst, worst_name, worst_kb, 2 * lr_sum);
  if (worst > 1e-12) fail_msg("%s differs by %.3g relative after the re-plan (bound 1e-12)", worst_name, worst);
  if (worst_kb > 2 * lr_sum) fail_msg("a key bias differs by %.3g (bound %.3g)", worst_kb, 2 * lr_sum);
  hm_ckpt_free(&a);
  hm_ckpt_free(&b);
}

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "replan") != 0) return -1;
  write_text("cluster.json", cluster_json);
  write_text("model.json", model_json);
  write_text("train.json", train_json);
  static char text[40000];
  uint64_t x = 7;
  for (size_t i = 0; i + 1 < sizeof text; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    text[i] = (char)(i % 7 == 0 ? ' ' : 'a' + (int)((x >> 33) % 26));
  }
  write_text("data.txt", text);
  char c[300], m[300], t[300], pl[300], txt[300], tok[300];
  snprintf(c, sizeof c, "%s/cluster.json", work);
  snprintf(m, sizeof m, "%s/model.json", work);
  snprintf(t, sizeof t, "%s/train.json", work);
  snprintf(pl, sizeof pl, "%s/plan.json", work);
  snprintf(txt, sizeof txt, "%s/data.txt", work);
  snprintf(tok, sizeof tok, "%s/data.tok", work);
  static char out[1 << 16], err[1 << 16];
  char *prep[] = {(char *)hetmix_bin, "prepare", txt, "-o", tok, NULL};
  if (run(prep, out, sizeof out, err, sizeof err) != 0) return fprintf(stderr, "%s", err), -1;
  char *plan[] = {(char *)hetmix_bin, "plan", "--cluster", c, "--model", m, "--train", t, "-o", pl, NULL};
  if (run(plan, out, sizeof out, err, sizeof err) != 0) return fprintf(stderr, "%s", err), -1;
  if (!strstr(out, "layers 3,1,2")) return fprintf(stderr, "not the 3-stage plan:\n%s", out), -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  hm_t_rmtree(work);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_lost_for_good),
      cmocka_unit_test(test_exclude_replans_before_start),
      cmocka_unit_test(test_exclude_splits_a_host_group),
      cmocka_unit_test(test_tp_plan_loses_a_device),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
