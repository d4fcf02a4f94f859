/* Spec files and plan layout of an end-to-end cluster run (cluster_run.h). The specs are built
 * as JSON objects (the planner's readers take them back: hm_model_load, hm_train_load); the plan
 * is read by the runtime's plan reader over the planner's (pipeline_plan.c, src/plan/planio.c). */
#include "runtime/cluster_run.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "runtime/pipeline_internal.h"
#include "util/files.h"
#include "util/util.h"

static hm_status hm_write_json(const char *out, const char *name, cJSON *j) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", out, name);
  char *txt = j ? cJSON_Print(j) : NULL;
  cJSON_Delete(j);
  if (!txt) return hm_error(HM_ERR_NOMEM, "writing %s", path);
  size_t n = strlen(txt);
  txt[n] = '\n'; /* the terminator becomes the final newline */
  hm_status st = hm_atomic_write_file(path, txt, n + 1);
  free(txt);
  return st;
}

/* The model's spec through the planner's own writer, so planner and workers read one model. */
static cJSON *hm_model_spec(const hm_spec_model_config *cfg, const char *name) {
  hm_model m;
  if (hm_model_from_config(cfg, HM_DTYPE_FP32, name, &m) != HM_OK) return NULL;
  cJSON *j = hm_model_to_cjson(&m);
  hm_model_free(&m);
  return j;
}

static cJSON *hm_train_spec(int global_batch) {
  static const int sizes[] = {1, 2, 4};
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "version", 1);
  cJSON_AddNumberToObject(j, "global_batch", global_batch);
  cJSON_AddItemToObject(j, "micro_batch_sizes", cJSON_CreateIntArray(sizes, 3));
  cJSON_AddStringToObject(j, "precision", "fp32");
  return j;
}

hm_status hm_cluster_write_specs(const char *out, const char *cluster_json, const hm_spec_model_config *cfg,
                                 const char *name, int global_batch) {
  if (cluster_json) {
    char path[4200];
    snprintf(path, sizeof path, "%s/cluster.json", out);
    HM_TRY(hm_atomic_write_file(path, cluster_json, strlen(cluster_json)));
  }
  HM_TRY(hm_write_json(out, "model.json", hm_model_spec(cfg, name)));
  return hm_write_json(out, "train.json", hm_train_spec(global_batch));
}

hm_status hm_cluster_plan_shape(const char *plan_path, int *nranks, int *nstages) {
  hm_pipe_plan *pl = hm_calloc(1, sizeof *pl, "plan layout");
  if (!pl) return HM_ERR_NOMEM;
  hm_status st = hm_pipe_plan_load(plan_path, NULL, NULL, pl);
  *nranks = pl->nranks;
  *nstages = pl->nstages * pl->nchunks; /* one stage checkpoint per (virtual) stage */
  free(pl);
  return st;
}
