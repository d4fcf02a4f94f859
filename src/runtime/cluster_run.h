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

/* Workers and pipeline stages of a plan, read with the plan reader. */
hm_status hm_cluster_plan_shape(const char *plan_path, int *nranks, int *nstages);

#endif
