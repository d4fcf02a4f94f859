/* The end-to-end report of `hetmix train --cluster` (train_report.c) and its measured bound
 * (train_bound.c). Reading, measuring through child processes, printing; no training here. */
#ifndef HETMIX_CLI_TRAIN_REPORT_H
#define HETMIX_CLI_TRAIN_REPORT_H

#include "hetmix/status.h"

#define HM_CLI_BOUND_MAX_TYPES 16

/* The measured bound: each device type of the plan trained the whole global batch alone. */
typedef struct hm_cli_bound {
  int ntypes;
  char name[HM_CLI_BOUND_MAX_TYPES][64];
  double device_tokens_per_s[HM_CLI_BOUND_MAX_TYPES]; /* one device of the type, alone */
  long long count[HM_CLI_BOUND_MAX_TYPES];            /* devices of the type in the cluster */
  double tokens_per_s;                                /* sum over types of count x device rate */
} hm_cli_bound;

/* Prints predicted vs measured compute time for every stage of every replica, the step time,
 * throughput, and utilization against the profile-predicted bound stored in the plan and, when
 * bound is not NULL, against the measured bound. tokens_per_step = global batch x T. */
int hm_cli_train_report(const char *plan_path, const char *metrics_path, double tokens_per_step,
                        const hm_cli_bound *bound);

/* Measures the bound: one worker per device type of the plan, one type after the other, trains
 * the global batch alone (every layer, the plan's micro-batch size) for `steps` steps; rate =
 * tokens per step / mean step time. run_dir receives one metrics folder per type. */
typedef struct hm_cli_bound_job {
  const char *self;         /* this executable */
  const char *cluster_path; /* the cluster spec: each type's backend and device count */
  const char *plan_path;    /* which types the plan uses, its micro-batch size */
  const char *model;        /* model config "L6,C384,NH6,V256,T256" */
  const char *data;         /* token file or NULL (the default corpus) */
  const char *run_dir;      /* output folder of the runs */
  int global_batch, seq_len, steps;
} hm_cli_bound_job;

hm_status hm_cli_measure_bound(const hm_cli_bound_job *job, hm_cli_bound *out);

#endif
