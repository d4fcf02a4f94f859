/* Elastic re-plan of a --plan job (replan.h; docs/runtime.md, "Elastic re-plan"): the spec files
 * the job was planned from, less the devices that keep failing, for the planner to plan again;
 * the new plan's layout; the newest checkpoint re-sharded to it in place. The planning itself
 * is `hetmix plan` (the launcher runs it), the re-shard hm_ckpt_reshard. */
#include "runtime/replan.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plan/spec_json.h"
#include "runtime/pipeline_internal.h"
#include "util/files.h"
#include "util/util.h"

static int hm_jint(const cJSON *o, const char *key, int def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valueint : def;
}

/* Replaces hosts[g] (count n > 1) of the cluster by n groups of one host each, in place (ranks
 * keep their numbers: they go group by group, host by host); hostnames split with them. The
 * array is rebuilt (no cJSON_InsertItemInArray: some cJSON versions lose items inserted in the
 * middle). */
static hm_status hm_explode_group(cJSON *cluster, int g, int n) {
  const cJSON *hosts = cJSON_GetObjectItemCaseSensitive(cluster, "hosts");
  cJSON *out = cJSON_CreateArray();
  int i = 0;
  for (const cJSON *grp = hosts->child; grp && out; grp = grp->next, i++) {
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(grp, "hostnames");
    const cJSON *gname = cJSON_GetObjectItemCaseSensitive(grp, "name");
    for (int h = 0; h < (i == g ? n : 1); h++) {
      cJSON *one = cJSON_Duplicate(grp, 1);
      if (!one) break;
      cJSON_AddItemToArray(out, one);
      if (i != g) continue;
      cJSON_ReplaceItemInObjectCaseSensitive(one, "count", cJSON_CreateNumber(1));
      if (cJSON_IsArray(names)) {
        cJSON *nm = cJSON_CreateArray();
        cJSON_AddItemToArray(nm, cJSON_Duplicate(cJSON_GetArrayItem(names, h), 1));
        cJSON_ReplaceItemInObjectCaseSensitive(one, "hostnames", nm);
      }
      if (cJSON_IsString(gname)) {
        char nb[160];
        snprintf(nb, sizeof nb, "%s-%d", gname->valuestring, h);
        cJSON_ReplaceItemInObjectCaseSensitive(one, "name", cJSON_CreateString(nb));
      }
    }
  }
  if (!out || cJSON_GetArraySize(out) != cJSON_GetArraySize(hosts) + n - 1) {
    cJSON_Delete(out);
    return hm_error(HM_ERR_NOMEM, "re-plan: splitting host group %d", g);
  }
  cJSON_ReplaceItemInObjectCaseSensitive(cluster, "hosts", out);
  return HM_OK;
}

/* Takes one device of type `type` from global host `host` of the cluster object. */
static hm_status hm_take_device(cJSON *cluster, int host, const char *type) {
  cJSON *hosts = cJSON_GetObjectItemCaseSensitive(cluster, "hosts");
  int first = 0, g = 0;
  for (cJSON *grp = hosts ? hosts->child : NULL; grp; grp = grp->next, g++) {
    const int count = hm_jint(grp, "count", 1);
    if (host < first + count) {
      if (count > 1) {
        HM_TRY(hm_explode_group(cluster, g, count));
        return hm_take_device(cluster, host, type);
      }
      cJSON *devs = cJSON_GetObjectItemCaseSensitive(grp, "devices");
      int k = 0;
      for (cJSON *d = devs ? devs->child : NULL; d; d = d->next, k++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, type) != 0) continue;
        const int left = hm_jint(d, "count", 1) - 1;
        if (left > 0) cJSON_ReplaceItemInObjectCaseSensitive(d, "count", cJSON_CreateNumber(left));
        else cJSON_DeleteItemFromArray(devs, k);
        if (cJSON_GetArraySize(devs) == 0) cJSON_DeleteItemFromArray(hosts, g);
        return HM_OK;
      }
      break;
    }
    first += count;
  }
  return hm_error(HM_ERR_INVALID_ARG, "re-plan: the plan's cluster has no device of type %s on host %d", type, host);
}

/* Removes the device types no host holds any more. */
static void hm_drop_unused_types(cJSON *cluster) {
  cJSON *types = cJSON_GetObjectItemCaseSensitive(cluster, "device_types");
  const cJSON *hosts = cJSON_GetObjectItemCaseSensitive(cluster, "hosts");
  for (int i = cJSON_GetArraySize(types) - 1; i >= 0; i--) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(types, i), "name");
    int used = 0;
    for (const cJSON *g = hosts ? hosts->child : NULL; g && !used; g = g->next) {
      const cJSON *devs = cJSON_GetObjectItemCaseSensitive(g, "devices");
      for (const cJSON *d = devs ? devs->child : NULL; d; d = d->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "type");
        used |= cJSON_IsString(t) && cJSON_IsString(name) && strcmp(t->valuestring, name->valuestring) == 0;
      }
    }
    if (!used) cJSON_DeleteItemFromArray(types, i);
  }
}

/* Whether the cluster object still has a device type of this name. */
static int hm_has_type(const cJSON *cluster, const char *name) {
  const cJSON *types = cJSON_GetObjectItemCaseSensitive(cluster, "device_types");
  for (const cJSON *t = types ? types->child : NULL; t; t = t->next) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(t, "name");
    if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0) return 1;
  }
  return 0;
}

/* Whether a profile entry names a device type the cluster no longer has ("device_type", or one
 * of "types"). */
static int hm_names_gone_type(const cJSON *e, const cJSON *cluster) {
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "device_type");
  if (cJSON_IsString(dt) && !hm_has_type(cluster, dt->valuestring)) return 1;
  const cJSON *ts = cJSON_GetObjectItemCaseSensitive(e, "types");
  for (const cJSON *t = cJSON_IsArray(ts) ? ts->child : NULL; t; t = t->next)
    if (cJSON_IsString(t) && !hm_has_type(cluster, t->valuestring)) return 1;
  return 0;
}

/* The profile without the entries of device types that left the cluster (the planner refuses a
 * profile naming a type the cluster lacks), parsed from path; NULL when it cannot be read. */
static cJSON *hm_profile_for(const char *path, const cJSON *cluster) {
  char *text = NULL;
  size_t len = 0;
  if (hm_json_read_file(path, &text, &len) != HM_OK) return NULL;
  cJSON *j = cJSON_ParseWithLength(text, len);
  free(text);
  if (!j) {
    hm_error(HM_ERR_SPEC, "re-plan: the profile %s is not JSON", path);
    return NULL;
  }
  for (cJSON *arr = j->child; arr; arr = arr->next) {
    if (!cJSON_IsArray(arr)) continue;
    for (int i = cJSON_GetArraySize(arr) - 1; i >= 0; i--)
      if (hm_names_gone_type(cJSON_GetArrayItem(arr, i), cluster)) cJSON_DeleteItemFromArray(arr, i);
  }
  return j;
}

static hm_status hm_write_item(const char *dir, const char *name, const cJSON *item, char *path, size_t cap) {
  snprintf(path, cap, "%s/%s", dir, name);
  char *txt = item ? cJSON_Print(item) : NULL;
  if (!txt) return hm_error(HM_ERR_INVALID_ARG, "re-plan: the plan has no %s to write to %s", name, path);
  size_t n = strlen(txt);
  txt[n] = '\n';
  hm_status st = hm_atomic_write_file(path, txt, n + 1);
  free(txt);
  return st;
}

/* Takes the devices of the listed ranks out of the plan's cluster and names them in out. */
static hm_status hm_drop_ranks(cJSON *plan, cJSON *cluster, const int *drop, int n, hm_replan_specs *out) {
  const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(plan, "ranks");
  size_t len = 0;
  for (int i = 0; i < n; i++) {
    const cJSON *r = cJSON_GetArrayItem(ranks, drop[i]);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(r, "device_type");
    const cJSON *be = cJSON_GetObjectItemCaseSensitive(r, "backend");
    if (!r || !cJSON_IsString(type))
      return hm_error(HM_ERR_INVALID_ARG, "re-plan: the plan has no rank %d (it has %d)", drop[i],
                      cJSON_GetArraySize(ranks));
    const int host = hm_jint(r, "host", 0);
    HM_TRY(hm_take_device(cluster, host, type->valuestring));
    len += (size_t)snprintf(out->dropped + len, sizeof out->dropped - len, "%srank %d (host %d, device %d, %s%s%s)",
                            i ? ", " : "", drop[i], host, hm_jint(r, "device", 0), type->valuestring,
                            cJSON_IsString(be) ? " " : "", cJSON_IsString(be) ? be->valuestring : "");
    if (len >= sizeof out->dropped) len = sizeof out->dropped - 1;
  }
  hm_drop_unused_types(cluster);
  if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(cluster, "hosts")) == 0)
    return hm_error(HM_ERR_INVALID_ARG, "re-plan: dropping %s leaves no device", out->dropped);
  return HM_OK;
}

hm_status hm_replan_write_specs(const char *plan_path, const char *profile, const int *drop, int n,
                                const char *out_dir, hm_replan_specs *out) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(plan_path, &text, &len));
  cJSON *plan = cJSON_ParseWithLength(text, len);
  free(text);
  if (!plan) return hm_error(HM_ERR_SPEC, "re-plan: %s is not JSON", plan_path);
  cJSON *cluster = cJSON_GetObjectItemCaseSensitive(plan, "cluster");
  hm_status st = cluster ? hm_make_dirs(out_dir, 0755, HM_DIR_OUTPUT)
                         : hm_error(HM_ERR_SPEC, "re-plan: %s embeds no cluster", plan_path);
  if (st == HM_OK) st = hm_drop_ranks(plan, cluster, drop, n, out);
  if (st == HM_OK) st = hm_write_item(out_dir, "cluster.json", cluster, out->cluster, sizeof out->cluster);
  if (st == HM_OK)
    st = hm_write_item(out_dir, "model.json", cJSON_GetObjectItemCaseSensitive(plan, "model"), out->model,
                       sizeof out->model);
  if (st == HM_OK)
    st = hm_write_item(out_dir, "train.json", cJSON_GetObjectItemCaseSensitive(plan, "train"), out->train,
                       sizeof out->train);
  if (st == HM_OK && profile) {
    cJSON *pj = hm_profile_for(profile, cluster);
    st = pj ? hm_write_item(out_dir, "profile.json", pj, out->profile, sizeof out->profile) : HM_ERR_SPEC;
    cJSON_Delete(pj);
  }
  cJSON_Delete(plan);
  return st;
}

/* plan.json's predicted.step_time_s (the planner's simulated step), 0 when absent. */
static double hm_plan_file_step_s(const char *plan_path) {
  char *text = NULL;
  size_t len = 0;
  if (hm_json_read_file(plan_path, &text, &len) != HM_OK) return 0;
  cJSON *j = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "predicted"), "step_time_s");
  const double s = cJSON_IsNumber(v) ? v->valuedouble : 0;
  cJSON_Delete(j);
  return s;
}

/* How stage s is stored in a re-sharded checkpoint: split as every replica splits it (each
 * worker then loads its own shard), or unsplit when replicas split it differently (a worker cuts
 * its part out of the unsplit file, whatever its degree). */
static int hm_replan_stage_tp(const hm_pipe_plan *pl, int s) {
  const int t0 = pl->tp[0][s] > 1 ? pl->tp[0][s] : 1;
  for (int r = 1; r < pl->nreplicas; r++)
    if ((pl->tp[r][s] > 1 ? pl->tp[r][s] : 1) != t0) return 1;
  return t0;
}

hm_status hm_replan_layout(const char *plan_path, hm_reshard_layout *out, double *predicted_step_s) {
  hm_pipe_plan *pl = hm_calloc(1, sizeof *pl, "plan layout");
  if (!pl) return HM_ERR_NOMEM;
  hm_status st = hm_pipe_plan_load(plan_path, NULL, NULL, pl);
  memset(out, 0, sizeof *out);
  if (st == HM_OK && pl->nchunks > 1)
    st = hm_error(HM_ERR_UNSUPPORTED, "re-plan: %s uses interleaved 1F1B (%d chunks per stage); re-sharding to it "
                  "is not supported yet (plan with `hetmix plan --max-chunks 1`)", plan_path, pl->nchunks);
  if (st == HM_OK && pl->nstages > HM_CKPT_MAX_SHARDS)
    st = hm_error(HM_ERR_UNSUPPORTED, "re-plan: %s has %d stages (at most %d)", plan_path, pl->nstages,
                  HM_CKPT_MAX_SHARDS);
  if (st == HM_OK) {
    out->nstages = pl->nstages;
    memcpy(out->bounds, pl->stage_layers, sizeof(int) * (size_t)(pl->nstages + 1));
    for (int r = 0; r < pl->nreplicas; r++) out->micro_batches += pl->micro[r];
    out->batch = pl->micro_batch;
    out->world = pl->nranks;
    for (int s = 0; s < pl->nstages; s++) out->tp[s] = hm_replan_stage_tp(pl, s);
    if (predicted_step_s) *predicted_step_s = hm_plan_file_step_s(plan_path);
  }
  free(pl);
  return st;
}

/* Moves every "step-*" folder of run_dir into run_dir/aside. */
static hm_status hm_move_steps_aside(const char *run_dir, const char *aside) {
  char to[4200];
  snprintf(to, sizeof to, "%s/%s", run_dir, aside);
  if (mkdir(to, 0755) != 0 && errno != EEXIST)
    return hm_error(HM_ERR_IO, "re-plan: cannot make %s: %s", to, strerror(errno));
  DIR *d = opendir(run_dir);
  if (!d) return hm_error(HM_ERR_IO, "re-plan: cannot list %s: %s", run_dir, strerror(errno));
  hm_status st = HM_OK;
  for (struct dirent *e; st == HM_OK && (e = readdir(d)) != NULL;) {
    if (strncmp(e->d_name, "step-", 5) != 0 || strchr(e->d_name, '.')) continue;
    char a[4600], b[4600];
    snprintf(a, sizeof a, "%s/%s", run_dir, e->d_name);
    snprintf(b, sizeof b, "%s/%s", to, e->d_name);
    if (rename(a, b) != 0) st = hm_error(HM_ERR_IO, "re-plan: cannot move %s to %s: %s", a, b, strerror(errno));
  }
  closedir(d);
  return st;
}

hm_status hm_replan_reshard(const char *run_dir, const char *ckpt, const hm_reshard_layout *to, const char *aside) {
  /* into the run folder under the checkpoint's own name: a checkpoint taken from the peers'
   * memory (restart.c) is re-sharded onto disk like one of the run folder */
  const char *name = strrchr(ckpt, '/') ? strrchr(ckpt, '/') + 1 : ckpt;
  char dest[4200], fresh[4300];
  snprintf(dest, sizeof dest, "%s/%s", run_dir, name);
  snprintf(fresh, sizeof fresh, "%s.reshard", dest);
  HM_TRY(hm_ckpt_reshard(ckpt, to, fresh));
  HM_TRY(hm_move_steps_aside(run_dir, aside));
  if (rename(fresh, dest) != 0)
    return hm_error(HM_ERR_IO, "re-plan: cannot move %s to %s: %s", fresh, dest, strerror(errno));
  return HM_OK;
}
