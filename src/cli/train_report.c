/* The end-to-end report of `hetmix train --cluster`: the plan's predicted compute per stage of
 * each replica class against the workers' measured compute, for every replica; the step time,
 * the throughput, and utilization against the profile-predicted bound and, when measured,
 * against the measured bound. Printing only: the figures come from the runtime
 * (src/runtime/cluster_report.c, the plan read through the plan reader). */
#include <math.h>
#include <stdio.h>

#include "cli.h"
#include "runtime/cluster_run.h"
#include "train_report.h"

static void print_row(const hm_cluster_report_row *w) {
  const double p = w->predicted_s, measured = w->measured_s;
  char lays[32], meas[32], err[32];
  snprintf(lays, sizeof lays, "%d-%d", w->layer_begin, w->layer_end - 1);
  snprintf(meas, sizeof meas, isnan(measured) ? "-" : "%.4f", measured);
  snprintf(err, sizeof err, isnan(measured) || !(p > 0) ? "-" : "%+.1f%%", 100.0 * (measured - p) / p);
  printf("  %-7d %-5d %-5d %-10s %-9s %5d %12.4f %12s %8s\n", w->replica, w->cls, w->stage, w->device, lays, w->micro,
         p, meas, err);
}

/* One row per stage of every replica, replicas numbered class by class as the workers are. */
static void print_stages(const hm_cluster_report *r) {
  printf("  %-7s %-5s %-5s %-10s %-9s %5s %12s %12s %8s\n", "replica", "class", "stage", "device", "layers", "micro",
         "predicted s", "measured s", "error");
  for (int i = 0; i < r->nrows; i++) print_row(&r->rows[i]);
}

static void print_utilization(const hm_cluster_report *r, const hm_cli_bound *bound) {
  const double ub = r->upper_bound_tokens_per_s, tok_meas = r->tokens_per_s_measured;
  printf("throughput %.0f tokens/s measured, %.0f predicted\n", tok_meas, r->tokens_per_s_predicted);
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
  hm_cluster_report r;
  hm_status st = hm_cluster_report_load(plan_path, metrics_path, tokens_per_step, &r);
  if (st != HM_OK && r.no_steps)
    return hm_cli_fail("train with --steps 2 or more", "%s has no timed step for plan %s", metrics_path, plan_path);
  if (st != HM_OK) return hm_cli_fail_status(st, "train: report", NULL);
  printf("\npredicted vs measured (mean of %d steps; a stage's time is its compute: forward and backward of its "
         "micro-batches and the optimizer):\n", r.nsteps);
  print_stages(&r);
  const double step_pred = r.step_predicted_s, step_meas = r.step_measured_s;
  printf("  %-46s %12.4f %12.4f %+7.1f%%\n", "step", step_pred, step_meas,
         step_pred > 0 ? 100.0 * (step_meas - step_pred) / step_pred : 0.0);
  print_utilization(&r, bound);
  hm_cluster_report_free(&r);
  return 0;
}
