/* Prediction benchmark: predicted vs measured step time of several plans on this machine.
 *
 * Writes a cluster spec of this machine's local devices (`cpu` = one OpenBLAS thread, twice;
 * `cpu-half` = the same emulating a chip of half the speed), a GPT-2 model spec, profiles them
 * with `hetmix profile`, then for each plan (one stage; two stages split unevenly; two stages
 * with the half-speed device; two data-parallel replicas; ...) and each run: profiles the layers
 * again right before and right after the run (links once), predicts the step time with the planner on
 * each profile and takes the mean (hm_plan_predict,
 * what `hetmix simulate --plan planN.json --profile ...` prints) and measures it by training the
 * plan with `hetmix launch --plan planN.json` right after, so both see the same machine load. Prints predicted, measured (median step after the first), the error, and per stage
 * the predicted and measured compute per step, so a wrong prediction shows where it is wrong.
 *
 * Not a unit test: on a shared machine the figures move with its load, which the table header
 * records (loadavg before and after). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "hetmix/plan.h"

typedef struct bench_args {
  const char *hetmix;   /* the hetmix executable */
  const char *dir;      /* work folder: specs, profile, plans, runs */
  const char *data_dir; /* default corpus cache */
  const char *model;    /* worker's model string, e.g. L4,C128,NH4,V256,T128 */
  const char *profile;  /* an existing profile to use instead of measuring */
  const char *only;     /* run only plans whose name contains this */
  int mb, steps, runs, reps; /* reps 0: hetmix profile's default */
  double min_time;      /* < 0: hetmix profile's default --min-time */
  int profiles;         /* > 0: only predict each plan on this many fresh profiles (no training) */
  int alone;            /* 1: profile each type alone, not under the plan's own load */
} bench_args;

typedef struct bench_plan {
  const char *name;
  int nstages, nreplicas;
  int bounds[5];        /* layer bounds; -1 entries are filled from the model (last = L+2) */
  const char *types[4]; /* device type per stage */
  int micro[4];         /* micro-batches per replica */
  const char *profile;  /* how to profile for it: the workers it runs at once on this host */
} bench_plan;

static const char *type_backend(const char *type) {
  return !strcmp(type, "cpu-half") ? "cpu:threads=1,slow=2" : "cpu:threads=1";
}

static double loadavg(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1) l = -1;
    fclose(f);
  }
  return l;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

static int sh(const char *cmd) {
  fflush(stdout);
  int rc = system(cmd);
  return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* Median of the step_time_s of steps after the first, and the mean stage compute per step. */
/* Profiles the layers now (under the plan's own load unless --alone), predicts the plan on that
 * profile, writes plan and predicted trace on the first call; the step time and each stage's
 * predicted compute per step come back. */
static int predict_once(const bench_args *a, const bench_plan *bp, int pi, int run, int after, const hm_profile *links,
                        const hm_cluster *c, const hm_model *m, hm_plan *plan, const char *plan_path, double *step,
                        double *stage_busy, double *uncertainty) {
  char prof_run[1024], cmd[8192], reps[64] = "";
  if (a->reps > 0) snprintf(reps, sizeof reps, "--reps %d", a->reps);
  if (a->min_time >= 0) snprintf(reps + strlen(reps), sizeof reps - strlen(reps), " --min-time %g", a->min_time);
  snprintf(prof_run, sizeof prof_run, "%s/profile-plan%d-run%d%s.json", a->dir, pi + 1, run + 1, after ? "-after" : "");
  if (a->profile) {
    snprintf(prof_run, sizeof prof_run, "%s", a->profile);
  } else {
    snprintf(cmd, sizeof cmd,
             "%s profile --cluster %s/cluster.json --model %s/model.json --micro-batches %d %s "
             "--no-links %s -o %s > %s.log 2>&1",
             a->hetmix, a->dir, a->dir, a->mb, reps, a->alone ? "" : bp->profile, prof_run, prof_run);
    if (sh(cmd) != 0) return fprintf(stderr, "predict_bench: profiling failed; see %s.log\n", prof_run), 1;
  }
  hm_profile pr;
  memset(&pr, 0, sizeof pr);
  if (hm_profile_load(prof_run, &pr) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;
  for (int i = 0; i < links->nlinks && !a->profile; i++)
    if (hm_profile_add_link(&pr, &links->links[i]) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;
  hm_train t;
  hm_train_default(&t);
  t.global_batch = plan->global_batch;
  t.n_micro_batch_sizes = 1;
  t.micro_batch_sizes[0] = a->mb;
  if (hm_spec_resolve(c, m, &t, &pr) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;
  hm_plan_inputs in = {.cluster = c, .model = m, .train = &t, .profile = &pr};
  char pred_trace[1024];
  snprintf(pred_trace, sizeof pred_trace, "%s/plan%d-predicted.json", a->dir, pi + 1);
  hm_sim_trace trace = {0};
  hm_status st = hm_plan_predict(&in, plan, &trace);
  const int first = run == 0 && !after;
  if (st == HM_OK && first) st = hm_plan_write(&in, plan, plan_path);
  if (st == HM_OK && first) st = hm_sim_trace_write(&trace, pred_trace);
  if (st == HM_OK && uncertainty) st = hm_plan_spread(&in, plan, uncertainty);
  hm_sim_trace_free(&trace);
  hm_profile_free(&pr);
  if (st != HM_OK) return fprintf(stderr, "plan %d: %s\n", pi + 1, hm_last_error()), 1;
  *step = plan->step_time;
  const hm_plan_class *cl = &plan->classes[0];
  for (int s = 0; s < bp->nstages; s++) stage_busy[s] = cl->nmicro * (cl->stages[s].fwd + cl->stages[s].bwd);
  return 0;
}

static int read_metrics(const char *path, double *step, double *busy, int nstages) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  double v[4096];
  int n = 0;
  char line[8192];
  for (int s = 0; s < nstages; s++) busy[s] = 0;
  while (fgets(line, sizeof line, f) && n < 4096) {
    cJSON *j = cJSON_Parse(line);
    if (!j) continue;
    const cJSON *st = cJSON_GetObjectItem(j, "step"), *t = cJSON_GetObjectItem(j, "step_time_s");
    const cJSON *b = cJSON_GetObjectItem(j, "stage_busy_s");
    if (cJSON_IsNumber(st) && cJSON_IsNumber(t) && st->valuedouble > 1) {
      v[n++] = t->valuedouble;
      for (int s = 0; s < nstages && cJSON_IsArray(b) && s < cJSON_GetArraySize(b); s++)
        busy[s] += cJSON_GetArrayItem(b, s)->valuedouble;
    }
    cJSON_Delete(j);
  }
  fclose(f);
  if (n == 0) return -1;
  for (int s = 0; s < nstages; s++) busy[s] /= n;
  for (int a = 1; a < n; a++)
    for (int b2 = a; b2 > 0 && v[b2] < v[b2 - 1]; b2--) {
      double x = v[b2];
      v[b2] = v[b2 - 1];
      v[b2 - 1] = x;
    }
  *step = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return 0;
}

static double median(const double *x, int n) {
  double v[16];
  for (int i = 0; i < n; i++) v[i] = x[i];
  for (int a = 1; a < n; a++)
    for (int b = a; b > 0 && v[b] < v[b - 1]; b--) {
      double t = v[b];
      v[b] = v[b - 1];
      v[b - 1] = t;
    }
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The predicted step of one plan on a.profiles fresh profiles, one after another: how much the
 * profile alone moves the prediction, beside the uncertainty each profile claims for it. */
static int profile_spread(const bench_args *a, const bench_plan *bp, int pi, const hm_profile *links,
                          const hm_cluster *c, const hm_model *m, hm_plan *plan) {
  double step[16], unc[16], busy[4];
  const int n = a->profiles < 16 ? a->profiles : 16;
  printf("plan %d: %s, %d fresh profiles (%s)\n", pi + 1, bp->name, n, a->alone ? "each type alone" : bp->profile);
  for (int k = 0; k < n; k++) {
    char plan_path[1024];
    snprintf(plan_path, sizeof plan_path, "%s/plan%d.json", a->dir, pi + 1);
    if (predict_once(a, bp, pi, k, 0, links, c, m, plan, plan_path, &step[k], busy, &unc[k]) != 0) return 1;
    printf("  profile %d: predicted step %.4f s, its own uncertainty +-%.1f%%  (loadavg %.2f)\n", k + 1, step[k],
           100 * unc[k], loadavg());
  }
  double lo = step[0], hi = step[0];
  for (int k = 1; k < n; k++) lo = step[k] < lo ? step[k] : lo, hi = step[k] > hi ? step[k] : hi;
  const double med = median(step, n);
  printf("plan %d: predicted step over %d profiles: median %.4f s, min %.4f, max %.4f: spread (max - min) / median "
         "%.1f%% (target < 3%%); median claimed uncertainty +-%.1f%%\n",
         pi + 1, n, med, lo, hi, 100 * (hi - lo) / med, 100 * median(unc, n));
  return 0;
}

static void usage(void) {
  printf("usage: predict_bench --hetmix PATH [--dir DIR] [--data-dir DIR] [--model L4,C128,NH4,V256,T128]\n"
         "                     [--mb 4] [--steps 8] [--runs 3] [--reps N] [--min-time S] [--profile P] [--only NAME] [--alone]\n"
         "                     [--profiles K]\n"
         "Each run profiles the layers under the plan's own load (the workers it runs at once: hetmix\n"
         "profile --copies / --concurrent); --alone profiles each type by itself instead. --reps: timed rounds\n"
         "per profile [hetmix profile's default]. --profiles K: no training; predict each plan on K fresh\n"
         "profiles and print how far the prediction moves between them.\n");
}

int main(int argc, char **argv) {
  bench_args a = {NULL, "predict-bench", "data", "L4,C128,NH4,V256,T128", NULL, NULL, 4, 8, 3, 0, -1, 0, 0};
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(k, "-h") || !strcmp(k, "--help")) {
      usage();
      return 0;
    }
    if (!strcmp(k, "--alone")) {
      a.alone = 1;
      continue;
    }
    if (!v) {
      usage();
      return 2;
    }
    i++;
    if (!strcmp(k, "--hetmix")) a.hetmix = v;
    else if (!strcmp(k, "--dir")) a.dir = v;
    else if (!strcmp(k, "--data-dir")) a.data_dir = v;
    else if (!strcmp(k, "--model")) a.model = v;
    else if (!strcmp(k, "--profile")) a.profile = v;
    else if (!strcmp(k, "--only")) a.only = v;
    else if (!strcmp(k, "--mb")) a.mb = atoi(v);
    else if (!strcmp(k, "--steps")) a.steps = atoi(v);
    else if (!strcmp(k, "--runs")) a.runs = atoi(v);
    else if (!strcmp(k, "--reps")) a.reps = atoi(v);
    else if (!strcmp(k, "--min-time")) a.min_time = atof(v);
    else if (!strcmp(k, "--profiles")) a.profiles = atoi(v);
    else {
      usage();
      return 2;
    }
  }
  int L, C, NH, V, T;
  char tail;
  if (!a.hetmix || a.mb < 1 || a.steps < 3 || a.runs < 1 || a.reps < 0 || a.profiles < 0 ||
      sscanf(a.model, "L%d,C%d,NH%d,V%d,T%d%c", &L, &C, &NH, &V, &T, &tail) != 5) {
    usage();
    return 2;
  }
  mkdir(a.dir, 0755);
  char path[2048], cmd[16384], text[4096];

  /* this machine as a cluster: two one-thread cpu devices and one emulated half-speed device */
  snprintf(path, sizeof path, "%s/cluster.json", a.dir);
  snprintf(text, sizeof text,
           "{\"version\": 1, \"name\": \"this-machine\", \"device_types\": [\n"
           " {\"name\": \"cpu\", \"backend\": \"%s\", \"peak_flops\": {\"fp32\": 50e9}, \"memory_bytes\": 4e9,\n"
           "  \"memory_bandwidth\": 10e9, \"intra_host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}},\n"
           " {\"name\": \"cpu-half\", \"backend\": \"%s\", \"peak_flops\": {\"fp32\": 25e9}, \"memory_bytes\": 4e9,\n"
           "  \"memory_bandwidth\": 10e9}],\n"
           " \"hosts\": [{\"name\": \"localhost\", \"count\": 1, \"devices\": [{\"type\": \"cpu\", \"count\": 2},\n"
           "  {\"type\": \"cpu-half\", \"count\": 1}], \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n",
           type_backend("cpu"), type_backend("cpu-half"));
  if (write_text(path, text)) return perror(path), 1;
  snprintf(path, sizeof path, "%s/model.json", a.dir);
  snprintf(text, sizeof text,
           "{\"version\": 1, \"name\": \"bench\", \"dtype\": \"fp32\", \"config\": {\"arch\": \"gpt2\", \"L\": %d, "
           "\"C\": %d, \"NH\": %d, \"V\": %d, \"T\": %d}}\n",
           L, C, NH, V, T);
  if (write_text(path, text)) return perror(path), 1;

  const double load0 = loadavg();
  hm_cluster c;
  hm_model m;
  memset(&c, 0, sizeof c);
  memset(&m, 0, sizeof m);
  snprintf(path, sizeof path, "%s/cluster.json", a.dir);
  if (hm_cluster_load(path, &c) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;
  snprintf(path, sizeof path, "%s/model.json", a.dir);
  if (hm_model_load(path, &m) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;

  /* Links are probed once; layer times are measured again right before every run, so that a
   * prediction and its measurement see the same load on a shared machine. */
  hm_profile links;
  memset(&links, 0, sizeof links);
  char profile_path[1024];
  if (a.profile) {
    snprintf(profile_path, sizeof profile_path, "%s", a.profile);
  } else {
    snprintf(profile_path, sizeof profile_path, "%s/profile.json", a.dir);
    snprintf(cmd, sizeof cmd,
             "%s profile --cluster %s/cluster.json --model %s/model.json --micro-batches %d %s%.0d -o %s",
             a.hetmix, a.dir, a.dir, a.mb, a.reps > 0 ? "--reps " : "", a.reps, profile_path);
    printf("$ %s\n", cmd);
    if (sh(cmd) != 0) return fprintf(stderr, "predict_bench: profiling failed\n"), 1;
  }
  if (hm_profile_load(profile_path, &links) != HM_OK) return fprintf(stderr, "%s\n", hm_last_error()), 1;

  const int n = L + 2;
  bench_plan plans[] = {
      {"1 stage", 1, 1, {0, n}, {"cpu"}, {4}, "--types cpu"},
      {"2 stages uneven", 2, 1, {0, 2, n}, {"cpu", "cpu"}, {4}, "--types cpu --copies 2"},
      {"2 stages, half-speed 2nd", 2, 1, {0, n - 2, n}, {"cpu", "cpu-half"}, {4}, "--types cpu,cpu-half --concurrent"},
      {"2 replicas (DP)", 1, 2, {0, n}, {"cpu"}, {2, 2}, "--types cpu --copies 2"},
      {"2 stages even, m=8", 2, 1, {0, n / 2, n}, {"cpu", "cpu"}, {8}, "--types cpu --copies 2"},
  };
  const int nplans = (int)(sizeof plans / sizeof plans[0]);
  double pred[8] = {0}, meas[8] = {0}, err[8] = {0}, serr[8] = {0};
  int done[8] = {0};

  printf("\nmodel %s, micro-batch %d, %d steps per run (first not counted), %d run(s) per plan, each run "
         "between two profiles of the layers (%s; the prediction is the mean of the two); loadavg %.2f before\n",
         a.model, a.mb, a.steps, a.runs, a.alone ? "each type alone" : "under the plan's own load", load0);
  for (int pi = 0; pi < nplans; pi++) {
    const bench_plan *bp = &plans[pi];
    if (a.only && !strstr(bp->name, a.only)) continue;
    int total_micro = 0;
    for (int r = 0; r < bp->nreplicas; r++) total_micro += bp->micro[r];
    hm_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.micro_batch = a.mb;
    plan.global_batch = (int64_t)a.mb * total_micro;
    /* replicas with the same micro-batch count form one class */
    for (int r = 0; r < bp->nreplicas; r++) {
      int ci = 0;
      while (ci < plan.nclasses && plan.classes[ci].nmicro != bp->micro[r]) ci++;
      if (ci == plan.nclasses) {
        plan.nclasses++;
        plan.classes[ci].nmicro = bp->micro[r];
        plan.classes[ci].nstages = bp->nstages;
        for (int s = 0; s < bp->nstages; s++)
          plan.classes[ci].stages[s] = (hm_plan_stage){.type = hm_cluster_find_type(&c, bp->types[s]), .tp = 1,
                                                       .layer_begin = bp->bounds[s], .layer_end = bp->bounds[s + 1]};
      }
      plan.classes[ci].nreplicas++;
    }
    /* the layout in the worker's terms, for the report (the workers read the plan file) */
    char bounds[128] = "", micro[64] = "", devices[512] = "";
    for (int s = 0; s <= bp->nstages; s++)
      snprintf(bounds + strlen(bounds), sizeof bounds - strlen(bounds), "%s%d", s ? "," : "", bp->bounds[s]);
    for (int r = 0; r < bp->nreplicas; r++)
      snprintf(micro + strlen(micro), sizeof micro - strlen(micro), "%s%d", r ? "," : "", bp->micro[r]);
    for (int s = 0; s < bp->nstages; s++)
      snprintf(devices + strlen(devices), sizeof devices - strlen(devices), "%s%s", s ? "|" : "",
               type_backend(bp->types[s]));
    if (a.profiles > 0) {
      if (profile_spread(&a, bp, pi, &links, &c, &m, &plan) != 0) return 1;
      continue;
    }
    double rp[16], rm[16], re[16], rs[16], busy[4] = {0}, busy_sum[4] = {0}, pbusy_sum[4] = {0};
    int ok = 0;
    char plan_path[1024];
    snprintf(plan_path, sizeof plan_path, "%s/plan%d.json", a.dir, pi + 1);
    for (int run = 0; run < a.runs && run < 16; run++) {
      /* predict on fresh profiles of the layers taken right before and right after the run
       * (links from the first profile): their mean, so a drift of the machine's speed during
       * the run moves both sides alike */
      double pstep[2] = {0, 0}, pbusy[2][4] = {{0}};
      for (int k = 0; k < (a.profile ? 1 : 2); k++) {
        if (k == 1) { /* after the run */
          char od[1024];
          snprintf(od, sizeof od, "%s/run%d-%d/metrics.jsonl", a.dir, pi + 1, run + 1);
          struct stat sb;
          if (stat(od, &sb) != 0) break;
        }
        if (predict_once(&a, bp, pi, run, k, &links, &c, &m, &plan, plan_path, &pstep[k], pbusy[k], NULL) != 0)
          return 1;
        if (k == 0) {
          char out_dir[1024];
          snprintf(out_dir, sizeof out_dir, "%s/run%d-%d", a.dir, pi + 1, run + 1);
          snprintf(cmd, sizeof cmd,
                   "rm -rf %s && %s launch --plan %s -- --quiet --steps %d --data-dir %s --out %s --trace %s/trace.json "
                   "> %s.log 2>&1",
                   out_dir, a.hetmix, plan_path, a.steps, a.data_dir, out_dir, out_dir, out_dir);
          if (sh(cmd) != 0) fprintf(stderr, "plan %d run %d failed; see %s.log\n", pi + 1, run + 1, out_dir);
        }
      }
      const int nk = pstep[1] > 0 ? 2 : 1;
      plan.step_time = (pstep[0] + pstep[1]) / nk;
      for (int s = 0; s < bp->nstages; s++) pbusy[0][s] = (pbusy[0][s] + pbusy[1][s]) / nk;

      snprintf(path, sizeof path, "%s/run%d-%d/metrics.jsonl", a.dir, pi + 1, run + 1);
      if (read_metrics(path, &rm[ok], busy, bp->nstages) != 0) continue;
      rp[ok] = plan.step_time;
      re[ok] = plan.step_time / rm[ok] - 1;
      for (int s = 0; s < bp->nstages; s++) {
        busy_sum[s] += busy[s];
        pbusy_sum[s] += pbusy[0][s];
      }
      /* The pipeline formula on the stage compute measured in this very run: separates the model
       * of the step (schedule, bubble) from the compute figures, which a busy machine moves. */
      const int mm = bp->micro[0];
      double tmax = 0, tsum = 0;
      for (int s = 0; s < bp->nstages; s++) {
        const double ts = busy[s] / mm;
        tsum += ts;
        if (ts > tmax) tmax = ts;
      }
      rs[ok] = ((mm - 1) * tmax + tsum) / rm[ok] - 1;
      printf("  plan %d run %d: predicted %.4f s, measured %.4f s, error %+.1f%%; (m-1) max t + sum t on this "
             "run's stage compute %.4f s (%+.1f%%)  (loadavg %.2f)\n",
             pi + 1, run + 1, rp[ok], rm[ok], 100 * re[ok], (mm - 1) * tmax + tsum, 100 * rs[ok], loadavg());
      ok++;
    }
    if (!ok) continue;
    pred[pi] = median(rp, ok);
    meas[pi] = median(rm, ok);
    err[pi] = median(re, ok);
    serr[pi] = median(rs, ok);
    done[pi] = 1;
    printf("plan %d: %s  (%s: stages %s, micro-batches %s, devices '%s')\n", pi + 1, bp->name, plan_path, bounds,
           micro, devices);
    for (int s = 0; s < bp->nstages; s++)
      printf("  stage %d (%s, layers [%d,%d)): compute per step predicted %.4f s, measured %.4f s (means)\n", s,
             bp->types[s], bp->bounds[s], bp->bounds[s + 1], pbusy_sum[s] / ok, busy_sum[s] / ok);
  }
  const double load1 = loadavg();
  printf("\n%-4s %-28s %12s %12s %8s %10s   (medians over the runs; error = predicted / measured - 1;\n"
         "%70s sched = the pipeline formula on each run's own stage compute)\n",
         "plan", "layout", "predicted(s)", "measured(s)", "error", "sched", "");
  double worst = 0;
  for (int pi = 0; pi < nplans; pi++) {
    if (!done[pi]) continue;
    if (fabs(err[pi]) > worst) worst = fabs(err[pi]);
    printf("%-4d %-28s %12.4f %12.4f %+7.1f%% %+9.1f%%\n", pi + 1, plans[pi].name, pred[pi], meas[pi], 100 * err[pi],
           100 * serr[pi]);
  }
  printf("largest error %.1f%% (target 5%%); loadavg %.2f before, %.2f after\n", 100 * worst, load0, load1);
  printf("re-predict a plan: %s simulate --plan %s/planN.json --profile %s/profile-planN-run1.json\n", a.hetmix,
         a.dir, a.dir);
  hm_profile_free(&links);
  hm_model_free(&m);
  hm_cluster_free(&c);
  return 0;
}
