/* `hetmix train --cluster ...`: the multi-worker path of `hetmix train` on this machine.
 * Chains the other commands as child processes (each is a subcommand of this same executable):
 * profile the local device types, plan, launch the plan's workers, then report predicted vs
 * measured step time per stage, utilization against the planner's upper bound, where the two
 * traces are, and a text sample from the trained model. Without a cluster file it uses an
 * embedded one: this machine as two unlike workers (one OpenBLAS thread, and one OpenBLAS thread
 * emulating a chip half as fast).
 * Not here: the single-process trainer (cmd_train.c), the worker (src/runtime/pipeline.c). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "util/files.h"
#include "util/util.h"

/* This machine as two unlike devices. slow=2 is an emulation (sleeps after each kernel), so the
 * two single-thread workers fit two cores. */
static const char hm_default_cluster[] =
    "{\"version\": 1, \"name\": \"local-mixed\",\n"
    " \"note\": \"this machine as two unlike workers: one OpenBLAS thread, and one emulating a chip half as fast\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"cpu\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5},\n"
    "  {\"name\": \"cpu-half\", \"backend\": \"cpu:threads=1,slow=2\", \"peak_flops\": {\"fp32\": 5e10},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"cpu\", \"count\": 1}, {\"type\": \"cpu-half\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n";

static void train_cluster_usage(FILE *f) {
  fprintf(f,
          "usage: hetmix train --cluster FILE|local [options]\n"
          "\n"
          "Profiles the cluster's local device types, plans, launches one worker per device of the\n"
          "plan, trains, and prints predicted vs measured step time per stage and a text sample.\n"
          "Files land in --out: cluster.json, model.json, train.json, profile.json, plan.json,\n"
          "predicted.json and measured.json (Chrome/Perfetto traces), metrics.jsonl, stages/.\n"
          "\n"
          "options:\n"
          "  --cluster FILE|local  cluster spec; `local` is this machine as cpu + an emulated half-speed cpu\n"
          "  --model NAME          gpt-mini (default), tiny, or L6,C384,NH6,V256,T256\n"
          "  --global-batch N      sequences per optimizer step [16]\n"
          "  --steps N             [200]\n"
          "  --lr X                [1e-3]\n"
          "  --data FILE.tok       token file [the default corpus under data/]\n"
          "  --out DIR             [out]\n"
          "  --reps N              profile repetitions [3]\n"
          "  --sample N            bytes of text to generate at the end [200]\n"
          "  --ckpt-every N        also checkpoint every N steps, in stages/step-<N>/ [0: only the end]\n"
          "  --keep K              keep the newest K of those step folders (0: all) [3]\n"
          "  --rebalance           let the workers move micro-batches between data-parallel\n"
          "                        replicas from their measured pace (docs/runtime.md)\n");
}

/* Runs this executable with args (NULL-terminated, without argv[0]); output goes to ours. */
static hm_status run_self(const char *self, char *const *args, const char *what) {
  char *argv[64];
  int n = 0;
  argv[n++] = (char *)self;
  for (int i = 0; args[i] && n < 63; i++) argv[n++] = args[i];
  argv[n] = NULL;
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 1;
  o.argv = argv;
  hm_launch_result res;
  hm_status st = hm_launch_run(&o, &res);
  if (st == HM_ERR_PEER_DEAD)
    return hm_error(st, "%s failed (%s)", what,
                    res.term_signal ? "killed by a signal" : "see its error above");
  return st;
}

static hm_status write_text(const char *path, const char *text) {
  return hm_atomic_write_file(path, text, strlen(text));
}

static cJSON *read_json(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = n > 0 ? malloc((size_t)n + 1) : NULL;
  cJSON *j = NULL;
  if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
    buf[n] = '\0';
    j = cJSON_Parse(buf);
  }
  free(buf);
  fclose(f);
  return j;
}

/* Mean step time and per-stage compute time over metrics.jsonl, the first step left out (it
 * warms caches and allocators up). */
static int mean_metrics(const char *path, double *step_s, double *busy, int nstages) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[8192];
  int n = 0, first = 1;
  *step_s = 0;
  for (int s = 0; s < nstages; s++) busy[s] = 0;
  while (fgets(line, sizeof line, f)) {
    cJSON *j = cJSON_Parse(line);
    if (!j) continue;
    if (!first) {
      const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step_time_s");
      const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stage_busy_s");
      if (cJSON_IsNumber(st)) *step_s += st->valuedouble;
      for (int s = 0; s < nstages; s++)
        if (cJSON_IsNumber(cJSON_GetArrayItem(b, s))) busy[s] += cJSON_GetArrayItem(b, s)->valuedouble;
      n++;
    }
    first = 0;
    cJSON_Delete(j);
  }
  fclose(f);
  if (n == 0) return -1;
  *step_s /= n;
  for (int s = 0; s < nstages; s++) busy[s] /= n;
  return n;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

/* Joins replica 0's stage checkpoints into one checkpoint of the whole model (the head's copy of
 * the tied embedding is dropped: it equals the first stage's), for `hetmix sample`. */
static hm_status merge_stages(const char *dir, int nstages, const char *out) {
  hm_ckpt *ck = hm_calloc((size_t)nstages, sizeof *ck, "stage checkpoints");
  if (!ck) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  int total = 0;
  for (int s = 0; s < nstages && st == HM_OK; s++) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/stage%d.hmc", dir, s);
    st = hm_ckpt_read(path, &ck[s]);
    total += st == HM_OK ? ck[s].n_tensors : 0;
  }
  hm_ckpt_tensor *all = st == HM_OK ? hm_calloc((size_t)total, sizeof *all, "merged tensors") : NULL;
  if (st == HM_OK && !all) st = HM_ERR_NOMEM;
  int n = 0;
  /* checkpoint order: params of every stage, then adam_m, then adam_v, as one stage writes them */
  static const char *const groups[] = {"param/", "adam_m/", "adam_v/"};
  for (int g = 0; g < 3 && st == HM_OK; g++)
    for (int s = 0; s < nstages; s++)
      for (int i = 0; i < ck[s].n_tensors; i++) {
        const hm_ckpt_tensor *t = &ck[s].tensors[i];
        if (strncmp(t->name, groups[g], strlen(groups[g])) != 0) continue;
        if (s > 0 && strcmp(t->name + strlen(groups[g]), "wte") == 0) continue; /* the head's copy */
        all[n++] = *t;
      }
  if (st == HM_OK) {
    hm_ckpt_meta m = ck[nstages - 1].meta;
    m.layer_first = 0;
    m.layer_last = hm_model_num_layers(&m.config);
    st = hm_ckpt_write(out, &m, all, n);
  }
  free(all);
  for (int s = 0; s < nstages; s++) hm_ckpt_free(&ck[s]);
  free(ck);
  return st;
}

int hm_cmd_train_cluster(int argc, char **argv) {
  const char *cluster = NULL, *model_name = "gpt-mini", *out = "out", *data = NULL, *lr = "1e-3";
  int global_batch = 16, steps = 200, reps = 3, sample = 200, rebalance = 0, ckpt_every = 0, keep = 3;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      train_cluster_usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--rebalance")) {
      rebalance = 1;
      continue;
    }
    if (!v) return hm_cli_fail("see `hetmix train --cluster local --help`", "%s needs a value", a);
    i++;
    if (!strcmp(a, "--cluster")) cluster = v;
    else if (!strcmp(a, "--model")) model_name = v;
    else if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--data")) data = v;
    else if (!strcmp(a, "--lr")) lr = v;
    else if (!strcmp(a, "--global-batch")) global_batch = atoi(v);
    else if (!strcmp(a, "--steps")) steps = atoi(v);
    else if (!strcmp(a, "--reps")) reps = atoi(v);
    else if (!strcmp(a, "--sample")) sample = atoi(v);
    else if (!strcmp(a, "--ckpt-every")) ckpt_every = atoi(v);
    else if (!strcmp(a, "--keep")) keep = atoi(v);
    else return hm_cli_fail("see `hetmix train --cluster local --help`", "unknown option '%s' for the multi-worker path", a);
  }
  if (global_batch < 1 || steps < 1 || reps < 1 || sample < 0)
    return hm_cli_fail(NULL, "--global-batch, --steps and --reps must be >= 1");
  if (ckpt_every < 0 || keep < 0) return hm_cli_fail(NULL, "--ckpt-every and --keep must be >= 0");
  hm_model_config cfg;
  hm_status st = hm_model_config_lookup(model_name, &cfg);
  if (st != HM_OK) return hm_cli_fail_status(st, "--model", NULL);
  if ((st = hm_make_dirs(out, 0755, HM_DIR_OUTPUT)) != HM_OK || (st = hm_clean_tmp_files(out, NULL)) != HM_OK)
    return hm_cli_fail_status(st, "--out", "pick a folder of your own for --out");

  char self[PATH_MAX];
  ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sn <= 0) return hm_cli_fail(NULL, "cannot find the hetmix executable (/proc/self/exe)");
  self[sn] = '\0';
  char cl_path[PATH_MAX], model_path[PATH_MAX], train_path[PATH_MAX], prof_path[PATH_MAX], plan_path[PATH_MAX];
  char pred_path[PATH_MAX], meas_path[PATH_MAX], stages_dir[PATH_MAX], metrics_path[PATH_MAX], text[1024];
  snprintf(model_path, sizeof model_path, "%s/model.json", out);
  snprintf(train_path, sizeof train_path, "%s/train.json", out);
  snprintf(prof_path, sizeof prof_path, "%s/profile.json", out);
  snprintf(plan_path, sizeof plan_path, "%s/plan.json", out);
  snprintf(pred_path, sizeof pred_path, "%s/predicted.json", out);
  snprintf(meas_path, sizeof meas_path, "%s/measured.json", out);
  snprintf(stages_dir, sizeof stages_dir, "%s/stages", out);
  snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", out);
  if (!cluster || !strcmp(cluster, "local")) {
    snprintf(cl_path, sizeof cl_path, "%s/cluster.json", out);
    if ((st = write_text(cl_path, hm_default_cluster)) != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  } else {
    hm_strcpy(cl_path, sizeof cl_path, cluster);
  }
  snprintf(text, sizeof text,
           "{\"version\": 1, \"name\": \"%s\", \"dtype\": \"fp32\", \"config\": {\"arch\": \"gpt2\", \"L\": %d, "
           "\"C\": %d, \"NH\": %d, \"V\": %d, \"T\": %d}}\n",
           cfg.name, cfg.L, cfg.C, cfg.NH, cfg.V, cfg.T);
  if ((st = write_text(model_path, text)) != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  snprintf(text, sizeof text,
           "{\"version\": 1, \"global_batch\": %d, \"micro_batch_sizes\": [1, 2, 4, 8], \"precision\": \"fp32\"}\n",
           global_batch);
  if ((st = write_text(train_path, text)) != HM_OK) return hm_cli_fail_status(st, "train", NULL);

  char reps_s[16], steps_s[16], ckpt_s[16], keep_s[16];
  snprintf(reps_s, sizeof reps_s, "%d", reps);
  snprintf(steps_s, sizeof steps_s, "%d", steps);
  snprintf(ckpt_s, sizeof ckpt_s, "%d", ckpt_every);
  snprintf(keep_s, sizeof keep_s, "%d", keep);
  printf("== 1/3 profile: %s on %s\n", cfg.name, cl_path);
  fflush(stdout);
  char *prof_args[] = {"profile", "--cluster", cl_path, "--model", model_path, "--train", train_path, "-o", prof_path,
                       "--reps", reps_s, NULL};
  if ((st = run_self(self, prof_args, "hetmix profile")) != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  printf("\n== 2/3 plan\n");
  fflush(stdout);
  char *plan_args[] = {"plan", "--cluster", cl_path, "--model", model_path, "--train", train_path, "--profile",
                       prof_path, "-o", plan_path, "--trace", pred_path, "--top", "3", NULL};
  if ((st = run_self(self, plan_args, "hetmix plan")) != HM_OK) return hm_cli_fail_status(st, "train", NULL);

  cJSON *plan = read_json(plan_path);
  if (!plan) return hm_cli_fail(NULL, "cannot read %s", plan_path);
  const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(plan, "ranks");
  const cJSON *cls0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(plan, "classes"), 0);
  const cJSON *stages = cJSON_GetObjectItemCaseSensitive(cls0, "stages");
  const cJSON *pred = cJSON_GetObjectItemCaseSensitive(plan, "predicted");
  const int nranks = cJSON_GetArraySize(ranks), nstages = cJSON_GetArraySize(stages);
  const int nmicro = (int)num(cls0, "micro_batches");
  printf("\n== 3/3 train: %d workers, %d steps\n", nranks, steps);
  fflush(stdout);

  char *launch_args[40];
  int na = 0;
  launch_args[na++] = "launch";
  launch_args[na++] = "--plan";
  launch_args[na++] = plan_path;
  launch_args[na++] = "--";
  launch_args[na++] = "--steps";
  launch_args[na++] = steps_s;
  launch_args[na++] = "--lr";
  launch_args[na++] = (char *)lr;
  launch_args[na++] = "--out";
  launch_args[na++] = (char *)out;
  launch_args[na++] = "--trace";
  launch_args[na++] = meas_path;
  launch_args[na++] = "--trace-steps";
  launch_args[na++] = "2";
  launch_args[na++] = "--dump";
  launch_args[na++] = stages_dir;
  if (data) launch_args[na++] = "--data", launch_args[na++] = (char *)data;
  if (rebalance) launch_args[na++] = "--rebalance";
  launch_args[na++] = "--ckpt-every", launch_args[na++] = ckpt_s;
  launch_args[na++] = "--keep", launch_args[na++] = keep_s;
  launch_args[na] = NULL;
  if ((st = run_self(self, launch_args, "training")) != HM_OK) {
    cJSON_Delete(plan);
    return hm_cli_fail_status(st, "train", NULL);
  }

  double step_meas = 0, busy[64] = {0};
  const int nmeas = mean_metrics(metrics_path, &step_meas, busy, nstages < 64 ? nstages : 64);
  if (nmeas < 1) {
    cJSON_Delete(plan);
    return hm_cli_fail("train with --steps 2 or more", "%s has no timed step", metrics_path);
  }
  const double step_pred = num(pred, "step_time_s");
  const double tok_meas = (double)global_batch * cfg.T / step_meas;
  printf("\npredicted vs measured (mean of %d steps; a stage's time is its compute: forward and backward of its "
         "%d micro-batches and the optimizer):\n", nmeas, nmicro);
  printf("  %-6s %-10s %-9s %12s %12s %8s\n", "stage", "device", "layers", "predicted s", "measured s", "error");
  for (int s = 0; s < nstages && s < 64; s++) {
    const cJSON *sj = cJSON_GetArrayItem(stages, s);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(sj, "predicted");
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(sj, "layers");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(sj, "device_type");
    /* the simulator's busy time (forward, backward, optimizer), as the worker measures it */
    double p = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(sp, "busy_s")) ? num(sp, "busy_s")
                                                                               : nmicro * (num(sp, "fwd_s") + num(sp, "bwd_s"));
    char lays[32];
    snprintf(lays, sizeof lays, "%d-%d", cJSON_GetArrayItem(lay, 0) ? cJSON_GetArrayItem(lay, 0)->valueint : -1,
             cJSON_GetArrayItem(lay, 1) ? cJSON_GetArrayItem(lay, 1)->valueint - 1 : -1);
    printf("  %-6d %-10s %-9s %12.4f %12.4f %+7.1f%%\n", s, cJSON_IsString(dt) ? dt->valuestring : "?", lays, p,
           busy[s], p > 0 ? 100.0 * (busy[s] - p) / p : 0.0);
  }
  printf("  %-27s %12.4f %12.4f %+7.1f%%\n", "step", step_pred, step_meas,
         step_pred > 0 ? 100.0 * (step_meas - step_pred) / step_pred : 0.0);
  const double bound = num(pred, "upper_bound_tokens_per_s");
  printf("throughput %.0f tokens/s measured, %.0f predicted", tok_meas, num(pred, "tokens_per_s"));
  if (bound > 0)
    printf("; utilization %.1f%% of the upper bound %.0f tokens/s (each device type alone, from the profile)",
           100.0 * tok_meas / bound, bound);
  printf("\ntraces: %s (predicted) and %s (measured): open both in https://ui.perfetto.dev\n", pred_path, meas_path);
  cJSON_Delete(plan);

  if (sample > 0) {
    char merged[PATH_MAX];
    snprintf(merged, sizeof merged, "%s/model-final.hmc", out);
    if ((st = merge_stages(stages_dir, nstages, merged)) != HM_OK) return hm_cli_fail_status(st, "train: sample", NULL);
    size_t cap = (size_t)sample + 64;
    char *txt = malloc(cap);
    if (!txt) return hm_cli_fail(NULL, "out of memory");
    st = hm_sample_text("cpu", merged, "\n", sample, 0.8f, 40, 1337, txt, cap);
    if (st != HM_OK) {
      free(txt);
      return hm_cli_fail_status(st, "train: sample", NULL);
    }
    printf("\nsample (%s, %d bytes, temperature 0.8):\n%s\n", merged, sample, txt);
    free(txt);
  }
  return 0;
}
