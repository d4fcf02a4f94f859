/* The figures of an end-to-end cluster run's report (cluster_run.h): the plan's recorded
 * predictions, read through the plan reader (src/plan/planio.c), against the workers' measured
 * means from metrics.jsonl. No printing here: the CLI prints them (src/cli/train_report.c). */
#include "runtime/cluster_run.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "hetmix/spec.h"
#include "util/util.h"

static double hm_num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

static double hm_item(const cJSON *a, int i) {
  const cJSON *v = cJSON_GetArrayItem(a, i);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Adds one metrics line's compute times to sum[r*p + s]; replica 0's alone in older files. */
static void hm_add_busy(const cJSON *j, int R, int p, double *sum) {
  const cJSON *rb = cJSON_GetObjectItemCaseSensitive(j, "replica_busy_s");
  const cJSON *b0 = cJSON_GetObjectItemCaseSensitive(j, "stage_busy_s");
  for (int r = 0; r < R; r++)
    for (int s = 0; s < p; s++)
      sum[r * p + s] += cJSON_IsArray(rb) ? hm_item(cJSON_GetArrayItem(rb, r), s) : r == 0 ? hm_item(b0, s) : NAN;
}

hm_status hm_metrics_mean(const char *path, int R, int p, double *step_s, double *busy, int *nsteps) {
  *nsteps = 0;
  FILE *f = fopen(path, "r");
  if (!f) return hm_error(HM_ERR_NOT_FOUND, "cannot read %s", path);
  char line[65536];
  int n = 0, first = 1;
  *step_s = 0;
  for (int i = 0; i < R * p; i++) busy[i] = 0;
  while (fgets(line, sizeof line, f)) {
    cJSON *j = cJSON_Parse(line);
    if (!j) continue;
    if (!first) {
      *step_s += hm_num(j, "step_time_s");
      hm_add_busy(j, R, p, busy);
      n++;
    }
    first = 0;
    cJSON_Delete(j);
  }
  fclose(f);
  if (n == 0) return hm_error(HM_ERR_NOT_FOUND, "%s has no step after the first", path);
  *step_s /= n;
  for (int i = 0; i < R * p; i++) busy[i] /= n;
  *nsteps = n;
  return HM_OK;
}

/* One row per stage of every replica, replicas numbered class by class as the workers are. */
static void hm_report_rows(const hm_plan *plan, const hm_cluster *cl, const double *busy, int R, int p,
                           hm_cluster_report *r) {
  int rep = 0;
  for (int c = 0; c < plan->nclasses; c++) {
    const hm_plan_class *k = &plan->classes[c];
    for (int q = 0; q < k->nreplicas && rep < R; q++, rep++)
      for (int s = 0; s < p && s < k->nstages; s++) {
        hm_cluster_report_row *row = &r->rows[r->nrows++];
        const hm_plan_stage *st = &k->stages[s];
        row->replica = rep, row->cls = c, row->stage = s, row->micro = k->nmicro;
        hm_strcpy(row->device, sizeof row->device, cl->types[st->type].name);
        row->layer_begin = st->layer_begin, row->layer_end = st->layer_end;
        row->predicted_s = st->busy;
        row->measured_s = busy[rep * p + s];
      }
  }
}

hm_status hm_cluster_report_load(const char *plan_path, const char *metrics_path, double tokens_per_step,
                                 hm_cluster_report *r) {
  memset(r, 0, sizeof *r);
  hm_plan *plan = hm_calloc(1, sizeof *plan, "plan");
  if (!plan) return HM_ERR_NOMEM;
  hm_cluster cl;
  memset(&cl, 0, sizeof cl);
  hm_status st = hm_plan_load(plan_path, NULL, plan, &cl, NULL, NULL);
  int R = 0, p = st == HM_OK ? hm_plan_class_devstages(&plan->classes[0]) : 0; /* workers per replica */
  for (int c = 0; st == HM_OK && c < plan->nclasses; c++) R += plan->classes[c].nreplicas;
  double *busy = st == HM_OK ? hm_calloc((size_t)R * (size_t)p, sizeof *busy, "measured compute") : NULL;
  r->rows = st == HM_OK ? hm_calloc((size_t)R * (size_t)p, sizeof *r->rows, "report rows") : NULL;
  if (st == HM_OK && (!busy || !r->rows)) st = HM_ERR_NOMEM;
  if (st == HM_OK) st = hm_metrics_mean(metrics_path, R, p, &r->step_measured_s, busy, &r->nsteps);
  const int no_steps = st == HM_ERR_NOT_FOUND && r->rows;
  if (st == HM_OK) {
    hm_report_rows(plan, &cl, busy, R, p, r);
    r->step_predicted_s = plan->step_time;
    r->tokens_per_s_predicted = plan->tokens_per_s;
    r->tokens_per_s_measured = tokens_per_step / r->step_measured_s;
    r->upper_bound_tokens_per_s = plan->upper_bound_tokens_per_s;
  }
  free(busy);
  free(plan);
  hm_cluster_free(&cl);
  if (st != HM_OK) hm_cluster_report_free(r);
  r->no_steps = st != HM_OK && no_steps;
  return st;
}

void hm_cluster_report_free(hm_cluster_report *r) {
  free(r->rows);
  r->rows = NULL;
  r->nrows = 0;
}
