/* `hetmix train --cluster ...`: the multi-worker path of `hetmix train` on this machine.
 * Parses the options; the runtime chains the other commands as child processes (each is a
 * subcommand of this same executable; src/runtime/cluster_train.c): profile the local device
 * types, plan, launch the plan's workers; then this prints the report (train_report.c)
 * predicted vs measured compute of every stage of every replica, utilization against the
 * profile-predicted bound and, with --measure-bound, the measured one (train_bound.c), where the
 * two traces are, and a text sample from the trained model. Without a cluster file it uses an
 * embedded one (local_cluster.c): this machine as a cpu and an opencl device, one core each, or,
 * without a working opencl backend, a cpu and an emulated half-speed cpu.
 * The spec files, the plan's layout, the chain, the merged checkpoint and the report's figures
 * come from the runtime (src/runtime/cluster_run.c, cluster_train.c, cluster_report.c).
 * Not here: the single-process trainer (cmd_train.c), the worker (src/runtime/pipeline.c). */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "options.h"
#include "runtime/cluster_run.h"
#include "train_report.h"
#include "util/files.h"
#include "util/util.h"

typedef struct cluster_args {
  const char *cluster, *model, *out, *data;
  int global_batch, steps, reps, sample, rebalance, measure_bound, bound_steps, ckpt_every, keep, profile_alone;
  double lr;
  int max_restarts;
  int netns;
  int drop_after;
  const char *exclude;
  int max_chunks;
  int mem_every;
} cluster_args;

static int parse_cluster_args(int argc, char **argv, cluster_args *a) {
  *a = (cluster_args){NULL, "gpt-mini", "out", NULL, 16, 20, 3, 200, 0, 0, 5, 0, 3, 0, 1e-3, 0, 0, 0, NULL, 1, 0};
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("cluster", 0, &a->cluster, "FILE|local",
                     "cluster spec; `local` is this machine as a cpu and an opencl\n"
                     "device (cpu + an emulated half-speed cpu without opencl)"),
      HM_OPT_STR_ROW("model", 0, &a->model, "NAME", "gpt-mini (default), llama-mini, tiny, L6,C384,NH6,V256,T256 or FILE.json"),
      HM_OPT_ROW(HM_OPT_INT, "global-batch", 0, &a->global_batch, 1, 1e9, "N", "sequences per optimizer step [16]"),
      HM_OPT_ROW(HM_OPT_INT, "steps", 0, &a->steps, 1, 1e9, "N",
                 "optimizer steps [20: a few minutes of gpt-mini on two cores]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "lr", 0, &a->lr, 0, FLT_MAX, "X", "peak learning rate [1e-3]"),
      HM_OPT_STR_ROW("data", 0, &a->data, "FILE.tok", "token file [the default corpus under data/]"),
      HM_OPT_STR_ROW("out", 0, &a->out, "DIR", "[out]"),
      HM_OPT_ROW(HM_OPT_INT, "reps", 0, &a->reps, 1, 1000, "N", "profile repetitions [3]"),
      HM_OPT_ROW(HM_OPT_INT, "sample", 0, &a->sample, 0, 1000000, "N", "bytes of text to generate at the end [200]"),
      HM_OPT_ROW(HM_OPT_INT, "ckpt-every", 0, &a->ckpt_every, 0, 1e9, "N",
                 "also checkpoint every N steps, in stages/step-<N>/ [0: only the end]"),
      HM_OPT_ROW(HM_OPT_INT, "keep", 0, &a->keep, 0, 1e9, "K", "keep the newest K of those step folders (0: all) [3]"),
      HM_OPT_ROW(HM_OPT_INT, "mem-every", 0, &a->mem_every, 0, 1e9, "N",
                 "with --ckpt-every: also snapshot into memory only every N steps\n"
                 "(hetmix worker --mem-every; restarts resume from it) [0]"),
      HM_OPT_ROW(HM_OPT_INT, "max-restarts", 0, &a->max_restarts, 0, 1000000, "N",
                 "after a worker fails, restart the workers from the newest complete\n"
                 "checkpoint up to N times (hetmix launch --max-restarts) [0]"),
      HM_OPT_ROW(HM_OPT_INT, "drop-after", 0, &a->drop_after, 0, 1000000, "K",
                 "a rank that failed K times loses its device: plan again on the\n"
                 "rest, re-shard the checkpoint, go on (hetmix launch --drop-after) [0: never]"),
      HM_OPT_STR_ROW("exclude", 0, &a->exclude, "R0[,R1..]", "plan again without these ranks' devices before training"),
      HM_OPT_FLAG_ROW("rebalance", 0, &a->rebalance,
                      "let the workers move micro-batches between data-parallel\n"
                      "replicas from their measured pace (docs/runtime.md)"),
      HM_OPT_FLAG_ROW("profile-alone", 0, &a->profile_alone,
                      "profile each device type by itself instead of all at once\n"
                      "(the workers train at once, so at once is the default)"),
      HM_OPT_FLAG_ROW("measure-bound", 0, &a->measure_bound,
                      "after training, train each device type of the plan alone\n"
                      "(one after the other) and report utilization against that\n"
                      "measured bound too"),
      HM_OPT_ROW(HM_OPT_INT, "bound-steps", 0, &a->bound_steps, 2, 1000000, "N",
                 "steps of each --measure-bound run (the first is not timed) [5]"),
      HM_OPT_ROW(HM_OPT_INT, "max-chunks", 0, &a->max_chunks, 1, 8, "V",
                 "let the plan use interleaved 1F1B with up to V model chunks per\n"
                 "stage (hetmix plan --max-chunks; not with tensor parallelism,\n"
                 "checkpoints every N steps or restarts yet) [1]"),
      HM_OPT_FLAG_ROW("netns", 0, &a->netns,
                      "run each host's workers in the network namespace named like\n"
                      "the host (a testbed from scripts/testbed.sh; hetmix launch --netns),\n"
                      "and profile the links between the hosts (hetmix profile --netns)"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "train --cluster local", "hetmix train --cluster FILE|local [options]",
      "Profiles the cluster's local device types, plans, launches one worker per device of the\n"
      "plan, trains, and prints predicted vs measured compute time of every stage of every\n"
      "replica, utilization, and a text sample. Files land in --out: cluster.json, model.json,\n"
      "train.json, profile.json, plan.json, predicted.json and measured.json (Chrome/Perfetto\n"
      "traces), metrics.jsonl, stages/.",
      opts, NULL, 0, 0};
  hm_opt_result res = {NULL, 0, 0};
  return hm_opts_parse(&spec, argc, argv, &res);
}

/* Writes cluster.json (for `local`), model.json and train.json under out (cluster_run.c). */
static int write_specs(const cluster_args *a, const hm_spec_model_config *cfg, const char *name, char *cl_path,
                       size_t cap) {
  const char *local = NULL;
  if (!a->cluster || !strcmp(a->cluster, "local")) {
    char why[512];
    local = hm_cli_local_cluster(why, sizeof why);
    if (why[0])
      printf("note: the opencl backend cannot run here (%s);\n"
             "      using this machine as cpu + cpu-half instead (the cpu backend emulating a chip half as "
             "fast, slow=2)\n", why);
    else if (strstr(local, "\"cuda\""))
      printf("local cluster: cuda (cuda:device=0) + cpu (cpu:threads=4)\n");
    else
      printf("local cluster: cpu (cpu:threads=1) + opencl (opencl:threads=1), one core each\n");
    fflush(stdout);
    snprintf(cl_path, cap, "%s/cluster.json", a->out);
  } else {
    hm_strcpy(cl_path, cap, a->cluster);
  }
  hm_status st = hm_cluster_write_specs(a->out, local, cfg, name, a->global_batch);
  return st == HM_OK ? 0 : hm_cli_fail_status(st, "train", NULL);
}

/* The chain's settings from the options (src/runtime/cluster_train.c runs it). */
static hm_cluster_job cluster_job(const char *self, const cluster_args *a, const char *cl_path) {
  hm_cluster_job j = {self, cl_path, a->out, a->data, a->reps, a->profile_alone, a->netns, a->steps, a->ckpt_every,
                      a->keep, a->max_restarts, a->drop_after, a->rebalance, a->lr, a->exclude, a->max_chunks,
                      a->mem_every};
  return j;
}

/* Profile, then plan (child processes). Every device type is timed at the same time unless
 * --profile-alone: the plan's workers train at the same time on this host and take cores,
 * caches and memory bandwidth from one another. */
static int profile_and_plan(const hm_cluster_job *job, const char *name) {
  printf("== 1/3 profile: %s on %s\n", name, job->cluster_path);
  fflush(stdout);
  hm_status st = hm_cluster_profile(job);
  if (st != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  printf("\n== 2/3 plan\n");
  fflush(stdout);
  st = hm_cluster_plan(job);
  return st == HM_OK ? 0 : hm_cli_fail_status(st, "train", NULL);
}

/* Launches the plan's workers; a re-plan (--drop-after, --exclude) plans with the same spec
 * files and the profile. */
static int train_plan(const hm_cluster_job *job) {
  char plan_path[PATH_MAX];
  snprintf(plan_path, sizeof plan_path, "%s/plan.json", job->out);
  int nranks = 0, nstages = 0;
  hm_status st = hm_cluster_plan_shape(plan_path, &nranks, &nstages);
  if (st != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  printf("\n== 3/3 train: %d workers, %d steps\n", nranks, job->steps);
  fflush(stdout);
  st = hm_cluster_train(job);
  return st == HM_OK ? 0 : hm_cli_fail_status(st, "train", NULL);
}

/* Joins the stage checkpoints into one model and prints a text sample from it. */
static int print_sample(const cluster_args *a) {
  char merged[PATH_MAX];
  hm_status st = hm_cluster_merge_final(a->out, merged, sizeof merged);
  if (st != HM_OK) return hm_cli_fail_status(st, "train: sample", NULL);
  size_t cap = (size_t)a->sample + 64;
  char *txt = malloc(cap);
  if (!txt) return hm_cli_fail(NULL, "out of memory");
  st = hm_sample_text("cpu", merged, "\n", a->sample, 0.8f, 40, 1337, txt, cap);
  if (st != HM_OK) {
    free(txt);
    return hm_cli_fail_status(st, "train: sample", NULL);
  }
  printf("\nsample (%s, %d bytes, temperature 0.8):\n%s\n", merged, a->sample, txt);
  free(txt);
  return 0;
}

/* The report, after the bound runs when asked for. */
static int report(const char *self, const cluster_args *a, const hm_spec_model_config *cfg, const char *cl_path) {
  char plan_path[PATH_MAX], metrics_path[PATH_MAX], model_s[PATH_MAX];
  hm_cluster_current_plan(a->out, plan_path, sizeof plan_path);
  snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", a->out);
  snprintf(model_s, sizeof model_s, "%s/model.json", a->out); /* the workers read the spec itself */
  hm_cli_bound bound;
  int have_bound = 0;
  if (a->measure_bound) {
    printf("\n");
    const hm_cli_bound_job job = {self, cl_path, plan_path, model_s, a->data, a->out, a->global_batch, (int)cfg->T,
                                  a->bound_steps};
    hm_status st = hm_cli_measure_bound(&job, &bound);
    if (st != HM_OK) return hm_cli_fail_status(st, "train: --measure-bound", NULL);
    have_bound = 1;
  }
  int rc = hm_cli_train_report(plan_path, metrics_path, (double)a->global_batch * cfg->T, have_bound ? &bound : NULL);
  if (rc) return rc;
  printf("traces: %s/predicted.json (predicted) and %s/measured.json (measured): open both in "
         "https://ui.perfetto.dev\n", a->out, a->out);
  return 0;
}

int hm_cmd_train_cluster(int argc, char **argv) {
  cluster_args a;
  int rc = parse_cluster_args(argc, argv, &a);
  if (rc != HM_OPTS_CONTINUE) return rc;
  hm_spec_model_config cfg;
  char name[64];
  hm_status st = hm_model_config_resolve(a.model, &cfg, name, sizeof name);
  if (st != HM_OK) return hm_cli_fail_status(st, "--model", NULL);
  if ((st = hm_make_dirs(a.out, 0755, HM_DIR_OUTPUT)) != HM_OK || (st = hm_clean_tmp_files(a.out, NULL)) != HM_OK)
    return hm_cli_fail_status(st, "--out", "pick a folder of your own for --out");
  char self[PATH_MAX], cl_path[PATH_MAX];
  ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sn <= 0) return hm_cli_fail(NULL, "cannot find the hetmix executable (/proc/self/exe)");
  self[sn] = '\0';
  if ((rc = write_specs(&a, &cfg, name, cl_path, sizeof cl_path)) != 0) return rc;
  const hm_cluster_job job = cluster_job(self, &a, cl_path);
  if ((rc = profile_and_plan(&job, name)) != 0) return rc;
  if ((rc = train_plan(&job)) != 0) return rc;
  if ((rc = report(self, &a, &cfg, cl_path)) != 0) return rc;
  return a.sample > 0 ? print_sample(&a) : 0;
}
