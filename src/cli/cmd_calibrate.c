/* `hetmix calibrate`: self-calibration. Reads what a finished training run of a plan measured
 * (the trace and metrics its workers wrote: `hetmix launch --plan plan.json -- --trace
 * DIR/trace.json --out DIR`), folds the stage compute into the profile the plan was predicted on
 * (hm_profile_calibrate) and writes the calibrated profile for the next `hetmix plan --profile`;
 * prints the plan's prediction on both profiles beside the run's measured step. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/plan.h"
#include "hetmix/spec.h"
#include "options.h"
#include "plan/spec_json.h"
#include "util/util.h"

/* Mean seconds per forward and per backward of each stage of replica 0 in a worker trace
 * (pid = replica * 1000 + stage, tid 0 = compute, "fwd k" / "bwd k", durations in us). */
static hm_status trace_stage_times(const char *path, int nstages, double *fwd, double *bwd) {
  cJSON *root = NULL;
  HM_TRY(hm_json_load_file(path, "trace", &root));
  const cJSON *ev = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
  int nf[HM_PLAN_MAX_STAGES] = {0}, nb[HM_PLAN_MAX_STAGES] = {0};
  for (int s = 0; s < nstages; s++) fwd[s] = bwd[s] = 0;
  for (const cJSON *e = cJSON_IsArray(ev) ? ev->child : NULL; e; e = e->next) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name"), *pid = cJSON_GetObjectItemCaseSensitive(e, "pid");
    const cJSON *tid = cJSON_GetObjectItemCaseSensitive(e, "tid"), *dur = cJSON_GetObjectItemCaseSensitive(e, "dur");
    if (!cJSON_IsString(name) || !cJSON_IsNumber(pid) || !cJSON_IsNumber(tid) || !cJSON_IsNumber(dur)) continue;
    const int s = pid->valueint;
    if (tid->valueint != 0 || s < 0 || s >= nstages) continue; /* replica 0's compute only */
    if (!strncmp(name->valuestring, "fwd ", 4)) fwd[s] += dur->valuedouble * 1e-6, nf[s]++;
    if (!strncmp(name->valuestring, "bwd ", 4)) bwd[s] += dur->valuedouble * 1e-6, nb[s]++;
  }
  cJSON_Delete(root);
  for (int s = 0; s < nstages; s++) {
    if (!nf[s] || !nb[s])
      return hm_error(HM_ERR_INVALID_ARG, "%s: no forward or backward of replica 0's stage %d (a worker trace of "
                      "this plan's run, `-- --trace FILE`?)", path, s);
    fwd[s] /= nf[s], bwd[s] /= nb[s];
  }
  return HM_OK;
}

/* Median step_time_s of the steps after the first in metrics.jsonl (0 when none). */
static double metrics_step(const char *path) {
  char *text = NULL;
  size_t len = 0;
  if (hm_json_read_file(path, &text, &len) != HM_OK) {
    hm_clear_error();
    return 0;
  }
  double v[4096];
  int n = 0;
  for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && n < 4096; line = strtok_r(NULL, "\n", &save)) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step"), *t = cJSON_GetObjectItemCaseSensitive(j, "step_time_s");
    if (cJSON_IsNumber(st) && cJSON_IsNumber(t) && st->valuedouble > 1) v[n++] = t->valuedouble;
    cJSON_Delete(j);
  }
  free(text);
  for (int a = 1; a < n; a++)
    for (int b = a; b > 0 && v[b] < v[b - 1]; b--) {
      const double x = v[b];
      v[b] = v[b - 1], v[b - 1] = x;
    }
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void print_result(const hm_cluster *c, const hm_plan *p0, const hm_plan *p1, const double *fwd,
                         const double *bwd, double (*scale)[2], double measured) {
  const hm_plan_class *pc = &p0->classes[0];
  printf("%5s %-12s %9s %14s %14s %14s %14s\n", "stage", "type", "layers", "fwd pred(ms)", "fwd run(ms)",
         "bwd pred(ms)", "bwd run(ms)");
  for (int s = 0; s < pc->nstages; s++)
    printf("%5d %-12s %4d-%-4d %14.3f %14.3f %14.3f %14.3f\n", s, c->types[pc->stages[s].type].name,
           pc->stages[s].layer_begin, pc->stages[s].layer_end - 1, 1e3 * pc->stages[s].fwd, 1e3 * fwd[s],
           1e3 * pc->stages[s].bwd, 1e3 * bwd[s]);
  for (int k = 0; k < c->ntypes && k < HM_PLAN_MAX_TYPES; k++)
    if (scale[k][0] > 0)
      printf("type %s: layer figures x %.3f forward, x %.3f backward (marked \"source\": \"run\")\n", c->types[k].name,
             scale[k][0], scale[k][1]);
  printf("links: not calibrated (the profile's or the cluster spec's figures stay)\n\n");
  printf("%-34s %12s %10s\n", "", "step(s)", "vs run");
  printf("%-34s %12.4f %+9.1f%%\n", "predicted on the profile", p0->step_time,
         measured > 0 ? 100 * (p0->step_time / measured - 1) : 0.0);
  printf("%-34s %12.4f %+9.1f%%\n", "predicted on the calibrated profile", p1->step_time,
         measured > 0 ? 100 * (p1->step_time / measured - 1) : 0.0);
  if (measured > 0) printf("%-34s %12.4f\n", "measured (median after step 1)", measured);
}

int hm_cmd_calibrate(int argc, char **argv) {
  const char *plan_path = NULL, *run_dir = NULL, *profile_path = NULL, *out_path = "calibrated-profile.json";
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("plan", 0, &plan_path, "FILE", "plan.json the run trained"),
      HM_OPT_STR_ROW("run", 0, &run_dir, "DIR", "the run's --out folder: DIR/trace.json (the workers' --trace) and\n"
                     "DIR/metrics.jsonl"),
      HM_OPT_STR_ROW("profile", 0, &profile_path, "FILE", "the profile the plan was predicted on"),
      HM_OPT_STR_ROW("output", 'o', &out_path, "FILE", "the calibrated profile [calibrated-profile.json]"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "calibrate", "hetmix calibrate --plan plan.json --run DIR --profile profile.json [-o out.json]",
      "Self-calibration: reads the forward and backward time per micro-batch of each stage that a\n"
      "finished run of the plan measured (replica 0, from DIR/trace.json), scales the profile's layer\n"
      "figures of each device type by measured / predicted, and writes the calibrated profile for the\n"
      "next `hetmix plan --profile` (its entries marked \"source\": \"run\"; links are not calibrated).\n"
      "Prints the plan predicted on both profiles beside the run's measured step.",
      opts, NULL, 0, 0};
  hm_opt_result res = {NULL, 0, 0};
  int rc = hm_opts_parse(&spec, argc, argv, &res);
  if (rc != HM_OPTS_CONTINUE) return rc;
  if (!plan_path || !run_dir || !profile_path)
    return hm_cli_fail("for example: hetmix calibrate --plan plan.json --run run1 --profile profile.json",
                       "calibrate needs --plan, --run and --profile");
  rc = 0;
  hm_plan *p0 = calloc(2, sizeof *p0);
  hm_cluster c;
  hm_model m;
  hm_train t;
  hm_profile pr, cp;
  memset(&c, 0, sizeof c), memset(&m, 0, sizeof m), memset(&pr, 0, sizeof pr), memset(&cp, 0, sizeof cp);
  hm_train_default(&t);
  if (!p0) return hm_cli_fail(NULL, "out of memory");
  hm_plan *p1 = p0 + 1;
  double fwd[HM_PLAN_MAX_STAGES], bwd[HM_PLAN_MAX_STAGES], scale[HM_PLAN_MAX_TYPES][2];
  char path[4200];
  hm_status st = hm_plan_load(plan_path, NULL, p0, &c, &m, &t);
  if (st != HM_OK) {
    rc = hm_cli_fail_status(st, "plan", "give the plan.json the run trained");
    goto done;
  }
  if ((st = hm_profile_load(profile_path, &pr)) != HM_OK || (st = hm_spec_resolve(&c, &m, &t, &pr)) != HM_OK) {
    rc = hm_cli_fail_status(st, "profile", "give the profile the plan was predicted on (format: docs/spec.md)");
    goto done;
  }
  snprintf(path, sizeof path, "%s/trace.json", run_dir);
  if ((st = trace_stage_times(path, p0->classes[0].nstages, fwd, bwd)) != HM_OK) {
    rc = hm_cli_fail_status(st, "run", "train the plan with `hetmix launch --plan P -- --trace DIR/trace.json --out DIR`");
    goto done;
  }
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t, .profile = &pr};
  *p1 = *p0;
  if ((st = hm_plan_predict(&in, p0, NULL)) != HM_OK || (st = hm_profile_calibrate(&in, p0, 0, fwd, bwd, &cp, scale)) != HM_OK) {
    rc = hm_cli_fail_status(st, "calibrate", NULL);
    goto done;
  }
  hm_plan_inputs in1 = in;
  in1.profile = &cp;
  if ((st = hm_plan_predict(&in1, p1, NULL)) != HM_OK) {
    rc = hm_cli_fail_status(st, "calibrate", NULL);
    goto done;
  }
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  printf("plan %s, run %s, profile %s\n\n", plan_path, run_dir, profile_path);
  print_result(&c, p0, p1, fwd, bwd, scale, metrics_step(path));
  if ((st = hm_profile_write(&cp, out_path)) != HM_OK) {
    rc = hm_cli_fail_status(st, "writing the calibrated profile", NULL);
    goto done;
  }
  printf("\nwrote %s\nnext: hetmix plan --cluster C --model M --profile %s\n", out_path, out_path);
done:
  hm_profile_free(&cp);
  hm_profile_free(&pr);
  hm_model_free(&m);
  hm_cluster_free(&c);
  free(p0);
  return rc;
}
