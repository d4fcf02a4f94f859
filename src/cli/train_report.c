/* The end-to-end report of `hetmix train --cluster`: plan.json's predicted compute per stage of
 * each replica class against the workers' measured compute (metrics.jsonl), for every replica;
 * the step time, the throughput, and utilization against the profile-predicted bound and, when
 * measured, against the measured bound. Reading and printing only. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plan/spec_json.h"
#include "train_report.h"

static double num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

static double item(const cJSON *a, int i) {
  const cJSON *v = cJSON_GetArrayItem(a, i);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Adds one metrics line's compute times to sum[r*p + s]; replica 0's alone in older files. */
static void add_busy(const cJSON *j, int R, int p, double *sum) {
  const cJSON *rb = cJSON_GetObjectItemCaseSensitive(j, "replica_busy_s");
  const cJSON *b0 = cJSON_GetObjectItemCaseSensitive(j, "stage_busy_s");
  for (int r = 0; r < R; r++)
    for (int s = 0; s < p; s++)
      sum[r * p + s] += cJSON_IsArray(rb) ? item(cJSON_GetArrayItem(rb, r), s) : r == 0 ? item(b0, s) : NAN;
}

int hm_cli_metrics_mean(const char *path, int R, int p, double *step_s, double *busy) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[65536];
  int n = 0, first = 1;
  *step_s = 0;
  for (int i = 0; i < R * p; i++) busy[i] = 0;
  while (fgets(line, sizeof line, f)) {
    cJSON *j = cJSON_Parse(line);
    if (!j) continue;
    if (!first) {
      *step_s += num(j, "step_time_s");
      add_busy(j, R, p, busy);
      n++;
    }
    first = 0;
    cJSON_Delete(j);
  }
  fclose(f);
  if (n == 0) return -1;
  *step_s /= n;
  for (int i = 0; i < R * p; i++) busy[i] /= n;
  return n;
}

/* The simulator's busy time of a stage (forward, backward, optimizer), as a worker measures it. */
static double predicted_busy(const cJSON *stage, int nmicro) {
  const cJSON *sp = cJSON_GetObjectItemCaseSensitive(stage, "predicted");
  if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(sp, "busy_s"))) return num(sp, "busy_s");
  return nmicro * (num(sp, "fwd_s") + num(sp, "bwd_s"));
}

static void print_row(int r, int c, int s, const cJSON *stage, int nmicro, double measured) {
  const cJSON *lay = cJSON_GetObjectItemCaseSensitive(stage, "layers");
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(stage, "device_type");
  const double p = predicted_busy(stage, nmicro);
  char lays[32], meas[32], err[32];
  snprintf(lays, sizeof lays, "%.0f-%.0f", item(lay, 0), item(lay, 1) - 1);
  snprintf(meas, sizeof meas, isnan(measured) ? "-" : "%.4f", measured);
  snprintf(err, sizeof err, isnan(measured) || !(p > 0) ? "-" : "%+.1f%%", 100.0 * (measured - p) / p);
  printf("  %-7d %-5d %-5d %-10s %-9s %5d %12.4f %12s %8s\n", r, c, s, cJSON_IsString(dt) ? dt->valuestring : "?",
         lays, nmicro, p, meas, err);
}

/* One row per stage of every replica, replicas numbered class by class as the workers are. */
static int print_stages(const cJSON *classes, const double *busy, int R, int p) {
  printf("  %-7s %-5s %-5s %-10s %-9s %5s %12s %12s %8s\n", "replica", "class", "stage", "device", "layers", "micro",
         "predicted s", "measured s", "error");
  int r = 0;
  for (int c = 0; c < cJSON_GetArraySize(classes); c++) {
    const cJSON *cl = cJSON_GetArrayItem(classes, c);
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(cl, "stages");
    const int nrep = (int)num(cl, "replicas"), nmicro = (int)num(cl, "micro_batches");
    for (int k = 0; k < nrep && r < R; k++, r++)
      for (int s = 0; s < p && s < cJSON_GetArraySize(stages); s++)
        print_row(r, c, s, cJSON_GetArrayItem(stages, s), nmicro, busy[r * p + s]);
  }
  return r;
}

static void print_utilization(double tok_meas, const cJSON *pred, const hm_cli_bound *bound) {
  const double ub = num(pred, "upper_bound_tokens_per_s");
  printf("throughput %.0f tokens/s measured, %.0f predicted\n", tok_meas, num(pred, "tokens_per_s"));
  if (ub > 0)
    printf("utilization vs profile-predicted bound: %.1f%% of %.0f tokens/s (each device type planned alone "
           "from the profile)\n", 100.0 * tok_meas / ub, ub);
  if (!bound) {
    printf("utilization vs measured bound: not measured (--measure-bound trains each device type alone)\n");
    return;
  }
  printf("utilization vs measured bound: %.1f%% of %.0f tokens/s (each device type trained alone:", 100.0 * tok_meas /
         bound->tokens_per_s, bound->tokens_per_s);
  for (int k = 0; k < bound->ntypes; k++) {
    printf("%s %s %.0f", k ? " +" : "", bound->name[k], bound->device_tokens_per_s[k] * (double)bound->count[k]);
    if (bound->count[k] > 1) printf(" (%lld x %.0f, scaled linearly)", bound->count[k], bound->device_tokens_per_s[k]);
  }
  printf(")\n");
}

int hm_cli_train_report(const char *plan_path, const char *metrics_path, double tokens_per_step,
                        const hm_cli_bound *bound) {
  cJSON *plan = NULL;
  hm_status st = hm_json_load_file(plan_path, "plan", &plan);
  if (st != HM_OK) return hm_cli_fail_status(st, "train: report", NULL);
  const cJSON *classes = cJSON_GetObjectItemCaseSensitive(plan, "classes");
  const cJSON *pred = cJSON_GetObjectItemCaseSensitive(plan, "predicted");
  const int p = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(classes, 0), "stages"));
  int R = 0;
  for (int c = 0; c < cJSON_GetArraySize(classes); c++) R += (int)num(cJSON_GetArrayItem(classes, c), "replicas");
  double step_meas = 0, *busy = calloc((size_t)(R * p > 0 ? R * p : 1), sizeof *busy);
  const int nmeas = busy && R > 0 && p > 0 ? hm_cli_metrics_mean(metrics_path, R, p, &step_meas, busy) : -1;
  if (nmeas < 1) {
    free(busy);
    cJSON_Delete(plan);
    return hm_cli_fail("train with --steps 2 or more", "%s has no timed step for plan %s", metrics_path, plan_path);
  }
  printf("\npredicted vs measured (mean of %d steps; a stage's time is its compute: forward and backward of its "
         "micro-batches and the optimizer):\n", nmeas);
  print_stages(classes, busy, R, p);
  const double step_pred = num(pred, "step_time_s");
  printf("  %-46s %12.4f %12.4f %+7.1f%%\n", "step", step_pred, step_meas,
         step_pred > 0 ? 100.0 * (step_meas - step_pred) / step_pred : 0.0);
  print_utilization(tokens_per_step / step_meas, pred, bound);
  free(busy);
  cJSON_Delete(plan);
  return 0;
}
