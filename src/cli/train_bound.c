/* The measured bound of `hetmix train --cluster --measure-bound`: each device type of the plan
 * trains the whole global batch alone, one type after the other (as bench/runtime/hetero.sh's
 * "isolated" bound); the bound is the sum over types of the type's device count times one
 * device's measured tokens/s. Exact for types with one device (--cluster local); for more it
 * assumes the devices of a type scale linearly, which the report says. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/plan.h"
#include "hetmix/spec.h"
#include "runtime/cluster_run.h"
#include "train_report.h"
#include "util/util.h"

/* The device types the plan's stages use, in order of first use, and its micro-batch size, read
 * through the plan reader. */
static hm_status plan_types(const char *path, hm_cli_bound *b, int *micro_batch) {
  hm_plan *plan = calloc(1, sizeof *plan);
  if (!plan) return hm_error(HM_ERR_NOMEM, "reading %s", path);
  hm_cluster cl;
  memset(&cl, 0, sizeof cl);
  hm_status st = hm_plan_load(path, NULL, plan, &cl, NULL, NULL);
  *micro_batch = st == HM_OK ? (int)plan->micro_batch : 0;
  for (int c = 0; st == HM_OK && c < plan->nclasses; c++)
    for (int s = 0; s < plan->classes[c].nstages; s++) {
      const char *name = cl.types[plan->classes[c].stages[s].type].name;
      int k = 0;
      while (k < b->ntypes && strcmp(b->name[k], name) != 0) k++;
      if (k == b->ntypes && k < HM_CLI_BOUND_MAX_TYPES) hm_strcpy(b->name[b->ntypes++], sizeof b->name[0], name);
    }
  free(plan);
  hm_cluster_free(&cl);
  HM_TRY(st);
  if (*micro_batch < 1 || b->ntypes == 0) return hm_error(HM_ERR_SPEC, "%s: no micro_batch or no stages", path);
  return HM_OK;
}

/* One worker of `backend` trains the global batch alone; returns its mean tokens/s. */
static hm_status run_alone(const hm_cli_bound_job *job, const char *type, const char *backend, int micro_batch,
                           double *tokens_per_s) {
  char dir[PATH_MAX], metrics[PATH_MAX + 16], mb[16], micro[16], steps[16];
  snprintf(dir, sizeof dir, "%s/bound-%s", job->run_dir, type);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  snprintf(mb, sizeof mb, "%d", micro_batch);
  snprintf(micro, sizeof micro, "%d", job->global_batch / micro_batch);
  snprintf(steps, sizeof steps, "%d", job->steps);
  char *args[24] = {"worker", "--model", (char *)job->model, "--batch", mb, "--micro", micro, "--device",
                    (char *)backend, "--steps", steps, "--out", dir, "--quiet"};
  int n = 14;
  if (job->data) args[n++] = "--data", args[n++] = (char *)job->data;
  args[n] = NULL;
  remove(metrics); /* a file of an earlier run must not pass for this one */
  char what[128];
  snprintf(what, sizeof what, "training %s alone", type);
  HM_TRY(hm_cli_run_self(job->self, args, what));
  double step_s = 0, busy = 0;
  int nsteps = 0;
  if (hm_metrics_mean(metrics, 1, 1, &step_s, &busy, &nsteps) != HM_OK || !(step_s > 0))
    return hm_error(HM_ERR_IO, "%s: no timed step (give --bound-steps 2 or more)", metrics);
  *tokens_per_s = (double)job->global_batch * job->seq_len / step_s;
  return HM_OK;
}

hm_status hm_cli_measure_bound(const hm_cli_bound_job *job, hm_cli_bound *out) {
  memset(out, 0, sizeof *out);
  int micro_batch = 0;
  HM_TRY(plan_types(job->plan_path, out, &micro_batch));
  hm_cluster c;
  memset(&c, 0, sizeof c);
  HM_TRY(hm_cluster_load(job->cluster_path, &c));
  hm_status st = HM_OK;
  for (int k = 0; k < out->ntypes && st == HM_OK; k++) {
    const int t = hm_cluster_find_type(&c, out->name[k]);
    if (t < 0 || !c.types[t].backend[0]) {
      st = hm_error(HM_ERR_SPEC, "%s: device type %s has no backend to run here", job->cluster_path, out->name[k]);
      break;
    }
    out->count[k] = (long long)c.types[t].count;
    printf("measuring the bound: %s (%s) trains the global batch alone, %d steps\n", out->name[k], c.types[t].backend,
           job->steps);
    fflush(stdout);
    st = run_alone(job, out->name[k], c.types[t].backend, micro_batch, &out->device_tokens_per_s[k]);
    out->tokens_per_s += (double)out->count[k] * out->device_tokens_per_s[k];
  }
  hm_cluster_free(&c);
  return st;
}
