/* The chain of an end-to-end cluster run (`hetmix train --cluster`; cluster_run.h): profile the
 * local device types, plan, launch the plan's workers, each a child process of this same
 * executable in the run's folder; then the final stage checkpoints joined into one model through
 * the checkpoint module. The plan is read through the plan reader (cluster_run.c). Not here: the
 * spec files (cluster_run.c), the report's figures (cluster_report.c), printing (the CLI). */
#include "runtime/cluster_run.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/runtime.h"
#include "util/util.h"

hm_status hm_run_self(const char *self, char *const *args, const char *what) {
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
    return hm_error(st, "%s failed (%s)", what, res.term_signal ? "killed by a signal" : "see its error above");
  return st;
}

/* <out>/<name> */
static void hm_out_path(const hm_cluster_job *job, const char *name, char *path, size_t cap) {
  snprintf(path, cap, "%s/%s", job->out, name);
}

hm_status hm_cluster_profile(const hm_cluster_job *job) {
  char model_path[PATH_MAX], train_path[PATH_MAX], prof_path[PATH_MAX], reps_s[16];
  hm_out_path(job, "model.json", model_path, sizeof model_path);
  hm_out_path(job, "train.json", train_path, sizeof train_path);
  hm_out_path(job, "profile.json", prof_path, sizeof prof_path);
  snprintf(reps_s, sizeof reps_s, "%d", job->reps);
  char *args[16] = {"profile", "--cluster", (char *)job->cluster_path, "--model", model_path, "--train", train_path,
                    "-o", prof_path, "--reps", reps_s};
  int n = 11;
  if (!job->profile_alone) args[n++] = "--concurrent";
  if (job->netns) args[n++] = "--netns"; /* the links between the testbed's hosts too */
  args[n] = NULL;
  return hm_run_self(job->self, args, "hetmix profile");
}

hm_status hm_cluster_plan(const hm_cluster_job *job) {
  char model_path[PATH_MAX], train_path[PATH_MAX], prof_path[PATH_MAX], plan_path[PATH_MAX], pred_path[PATH_MAX];
  hm_out_path(job, "model.json", model_path, sizeof model_path);
  hm_out_path(job, "train.json", train_path, sizeof train_path);
  hm_out_path(job, "profile.json", prof_path, sizeof prof_path);
  hm_out_path(job, "plan.json", plan_path, sizeof plan_path);
  hm_out_path(job, "predicted.json", pred_path, sizeof pred_path);
  char chunks[16];
  snprintf(chunks, sizeof chunks, "%d", job->max_chunks > 1 ? job->max_chunks : 1);
  char *args[] = {"plan", "--cluster", (char *)job->cluster_path, "--model", model_path, "--train", train_path,
                  "--profile", prof_path, "-o", plan_path, "--trace", pred_path, "--top", "3",
                  "--max-chunks", chunks, NULL};
  return hm_run_self(job->self, args, "hetmix plan");
}

hm_status hm_cluster_train(const hm_cluster_job *job) {
  char plan_path[PATH_MAX], meas_path[PATH_MAX], stages_dir[PATH_MAX], prof_path[PATH_MAX], steps_s[16], lr_s[32];
  char ckpt_s[16], keep_s[16], restarts_s[16], drop_s[16], mem_s[16];
  snprintf(restarts_s, sizeof restarts_s, "%d", job->max_restarts);
  snprintf(drop_s, sizeof drop_s, "%d", job->drop_after);
  hm_out_path(job, "plan.json", plan_path, sizeof plan_path);
  hm_out_path(job, "profile.json", prof_path, sizeof prof_path);
  hm_out_path(job, "measured.json", meas_path, sizeof meas_path);
  hm_out_path(job, "stages", stages_dir, sizeof stages_dir);
  snprintf(steps_s, sizeof steps_s, "%d", job->steps);
  snprintf(lr_s, sizeof lr_s, "%.9g", job->lr);
  snprintf(ckpt_s, sizeof ckpt_s, "%d", job->ckpt_every);
  snprintf(keep_s, sizeof keep_s, "%d", job->keep);
  snprintf(mem_s, sizeof mem_s, "%d", job->mem_every);
  char *args[48] = {"launch", "--plan", plan_path, "--max-restarts", restarts_s, "--profile", prof_path};
  int n = 7;
  if (job->netns) /* launch's own options */
    args[n++] = "--cluster", args[n++] = (char *)job->cluster_path, args[n++] = "--netns";
  if (job->drop_after > 0) args[n++] = "--drop-after", args[n++] = drop_s;
  if (job->exclude) args[n++] = "--exclude", args[n++] = (char *)job->exclude;
  char *worker[] = {"--", "--steps", steps_s, "--lr", lr_s, "--out", (char *)job->out, "--trace", meas_path,
                    "--trace-steps", "2", "--dump", stages_dir, NULL};
  for (int i = 0; worker[i]; i++) args[n++] = worker[i];
  if (job->data) args[n++] = "--data", args[n++] = (char *)job->data;
  if (job->rebalance) args[n++] = "--rebalance";
  args[n++] = "--ckpt-every", args[n++] = ckpt_s;
  args[n++] = "--keep", args[n++] = keep_s;
  if (job->mem_every > 0) args[n++] = "--mem-every", args[n++] = mem_s;
  args[n] = NULL;
  return hm_run_self(job->self, args, "training");
}

void hm_cluster_current_plan(const char *out, char *path, size_t cap) {
  snprintf(path, cap, "%s/plan.json", out);
  for (int k = 1; k < 1000; k++) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/replan%d/plan.json", out, k);
    if (access(p, R_OK) != 0) break;
    hm_strcpy(path, cap, p);
  }
}

hm_status hm_cluster_merge_final(const char *out, char *merged, size_t cap) {
  char plan_path[PATH_MAX], stages_dir[PATH_MAX];
  hm_cluster_current_plan(out, plan_path, sizeof plan_path);
  snprintf(stages_dir, sizeof stages_dir, "%s/stages", out);
  snprintf(merged, cap, "%s/model-final.hmc", out);
  int nranks = 0, nstages = 0;
  HM_TRY(hm_cluster_plan_shape(plan_path, &nranks, &nstages));
  return hm_ckpt_merge_stages(stages_dir, nstages, merged);
}
