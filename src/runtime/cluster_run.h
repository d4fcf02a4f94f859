/* The files of an end-to-end cluster run (`hetmix train --cluster`; cluster_run.c): the spec
 * files it plans from and the layout of its plan. Internal to the runtime and its CLI. */
#ifndef HETMIX_CLUSTER_RUN_H
#define HETMIX_CLUSTER_RUN_H

#include <stddef.h>

#include "hetmix/model.h"

/* Writes <out>/model.json (the model config under `name`, fp32, through the planner's spec
 * writer) and <out>/train.json (global batch, micro-batch sizes 1, 2, 4, fp32), and
 * <out>/cluster.json from cluster_json when given; every file atomically. */
hm_status hm_cluster_write_specs(const char *out, const char *cluster_json, const hm_spec_model_config *cfg,
                                 const char *name, int global_batch);

/* Workers and pipeline stages of a plan, read with the plan reader (virtual stages with
 * interleaved 1F1B: one stage checkpoint each). */
hm_status hm_cluster_plan_shape(const char *plan_path, int *nranks, int *nstages);

/* ---- the chain of a cluster run (cluster_train.c): each step a child process of this same
 * executable, in the run's folder; the caller says what happens between them. */

typedef struct hm_cluster_job {
  const char *self;         /* this executable */
  const char *cluster_path; /* the cluster spec */
  const char *out;          /* the run's folder: model.json and train.json already there */
  const char *data;         /* token file, or NULL for the default corpus */
  int reps;                 /* profile repetitions */
  int profile_alone;        /* profile each device type by itself (else all at once) */
  int netns;                /* the testbed's network namespaces (launch and profile --netns) */
  int steps, ckpt_every, keep, max_restarts, drop_after, rebalance;
  double lr;
  const char *exclude;      /* ranks whose devices are left out ("R0,R1"), or NULL */
  int max_chunks;           /* hetmix plan --max-chunks (0: 1, plain 1F1B) */
  int mem_every;            /* workers' --mem-every (0: none) */
} hm_cluster_job;

/* Runs `self args...` as one child process and waits; HM_ERR_PEER_DEAD naming `what` when it
 * fails (its own error is on its stderr). */
hm_status hm_run_self(const char *self, char *const *args, const char *what);
/* profile.json of the cluster's local device types (`hetmix profile`; all at once unless
 * profile_alone: the plan's workers train at once and share cores, caches and bandwidth). */
hm_status hm_cluster_profile(const hm_cluster_job *job);
/* plan.json and predicted.json (its timeline) from the specs and the profile (`hetmix plan`). */
hm_status hm_cluster_plan(const hm_cluster_job *job);
/* Trains the plan's workers (`hetmix launch --plan`: traces, stage checkpoints in stages/,
 * metrics.jsonl; restarts and re-plans as the job says). */
hm_status hm_cluster_train(const hm_cluster_job *job);
/* The plan the workers ended with: the newest re-plan's (<out>/replan<k>/plan.json, written by
 * hetmix launch when it dropped a device), else <out>/plan.json. */
void hm_cluster_current_plan(const char *out, char *path, size_t cap);
/* Joins the final stage checkpoints (<out>/stages/) of the current plan into <out>/model-final.hmc
 * (its path into merged). */
hm_status hm_cluster_merge_final(const char *out, char *merged, size_t cap);

/* ---- predicted against measured (cluster_report.c) */

typedef struct hm_cluster_report_row {
  int replica, cls, stage; /* replicas numbered class by class, as the workers are */
  char device[64];         /* device type */
  int layer_begin, layer_end, micro;
  double predicted_s;      /* the plan's compute per step of the stage (0: none recorded) */
  double measured_s;       /* the mean measured compute, NAN where the metrics hold none */
} hm_cluster_report_row;

typedef struct hm_cluster_report {
  int nsteps;              /* steps averaged (metrics.jsonl without its first step) */
  int no_steps;            /* 1 when the metrics hold no step after the first (or cannot be read) */
  int nrows;
  hm_cluster_report_row *rows;
  double step_predicted_s, step_measured_s;
  double tokens_per_s_predicted, tokens_per_s_measured;
  double upper_bound_tokens_per_s; /* the plan's profile-predicted bound, 0 when none */
} hm_cluster_report;

/* Means over metrics.jsonl without its first step (caches and allocators warm up): the step
 * time, and each worker's compute time busy[r*p + s] for R replicas of p stages (NAN where the
 * file has no figure: files from before per-replica figures hold replica 0's only). *nsteps:
 * the steps averaged. HM_ERR_NOT_FOUND when the file cannot be read or has no step after the
 * first. */
hm_status hm_metrics_mean(const char *path, int R, int p, double *step_s, double *busy, int *nsteps);
/* The plan (through the plan reader) against the workers' metrics: one row per stage of every
 * replica, the step time and the throughput (tokens_per_step = global batch x T). */
hm_status hm_cluster_report_load(const char *plan_path, const char *metrics_path, double tokens_per_step,
                                 hm_cluster_report *r);
void hm_cluster_report_free(hm_cluster_report *r);

#endif
