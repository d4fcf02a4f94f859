/* plan.json: writer, reader and validator (schema in docs/plan.md), and the assignment of
 * devices to the plan's roles. The reader refuses a plan that does not match its cluster and
 * model: types, layers, device counts, and the ranks list must agree with the layout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "plan/plan_internal.h"
#include "plan/spec_json.h"
#include "util/util.h"

/* Devices are taken per type, host group by host group, host by host, tp at a time inside a
 * host; classes, replicas and stages in order. */
typedef struct type_cursor {
  int group;
  int64_t host;
  int used; /* devices of the type already taken on this host */
} type_cursor;

static int per_host(const hm_cluster *c, int g, int type) {
  for (int k = 0; k < c->groups[g].nkinds; k++)
    if (c->groups[g].dev[k].type == type) return c->groups[g].dev[k].count;
  return 0;
}

/* Moves the cursor to the next host with tp free devices of the type; 0 when none is left. */
static int take(const hm_cluster *c, type_cursor *cur, int type, int tp) {
  while (cur->group < c->ngroups) {
    int ph = per_host(c, cur->group, type);
    if (ph - cur->used >= tp && cur->host < c->groups[cur->group].count) return 1;
    cur->used = 0;
    if (ph > 0 && cur->host + 1 < c->groups[cur->group].count) {
      cur->host++;
    } else {
      cur->group++;
      cur->host = 0;
    }
  }
  return 0;
}

/* Devices the plan uses: one role each. */
static int64_t plan_devices(const hm_plan *p) {
  int64_t total = 0;
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < hm_plan_class_devstages(&p->classes[ci]); s++)
      total += (int64_t)p->classes[ci].nreplicas * p->classes[ci].stages[s].tp;
  return total;
}

hm_status hm_plan_assign_ranks(const hm_plan_inputs *in, const hm_plan *p, hm_plan_rank **ranks,
                               int64_t *nranks) {
  const hm_cluster *c = in->cluster;
  const int64_t total = plan_devices(p);
  hm_plan_rank *r = hm_malloc((size_t)(total ? total : 1) * sizeof *r, "plan ranks");
  if (!r) return HM_ERR_NOMEM;
  type_cursor cur[HM_PLAN_MAX_TYPES];
  memset(cur, 0, sizeof cur);
  int64_t n = 0;
  for (int ci = 0; ci < p->nclasses; ci++) {
    const hm_plan_class *cl = &p->classes[ci];
    for (int rep = 0; rep < cl->nreplicas; rep++)
      for (int s = 0; s < hm_plan_class_devstages(cl); s++) { /* later chunks: same devices */
        const int k = cl->stages[s].type, tp = cl->stages[s].tp;
        if (!take(c, &cur[k], k, tp)) {
          free(r);
          return hm_error(HM_ERR_SPEC, "plan: class %d replica %d stage %d needs %d more %s devices "
                          "in one host than cluster \"%s\" has left", ci, rep, s, tp,
                          c->types[k].name, c->name);
        }
        for (int t = 0; t < tp; t++) {
          int64_t rank;
          hm_status st = hm_cluster_rank(c, cur[k].group, cur[k].host, k, cur[k].used + t, &rank);
          if (st != HM_OK) {
            free(r);
            return st;
          }
          r[n++] = (hm_plan_rank){.rank = rank, .cls = ci, .replica = rep, .stage = s, .tp_rank = t};
        }
        cur[k].used += tp;
      }
  }
  *ranks = r;
  *nranks = n;
  return HM_OK;
}

#define ADD_OR_FAIL(x) \
  do {                 \
    if (!(x)) goto oom; \
  } while (0)

cJSON *hm_plan_to_cjson(const hm_plan_inputs *in, const hm_plan *p) {
  const hm_cluster *c = in->cluster;
  hm_plan_rank *ranks = NULL;
  int64_t nranks = 0;
  if (hm_plan_assign_ranks(in, p, &ranks, &nranks) != HM_OK) return NULL;
  cJSON *j = cJSON_CreateObject();
  ADD_OR_FAIL(j);
  ADD_OR_FAIL(cJSON_AddNumberToObject(j, "version", 1));
  ADD_OR_FAIL(cJSON_AddStringToObject(j, "format", "hetmix-plan"));
  ADD_OR_FAIL(cJSON_AddNumberToObject(j, "micro_batch", (double)p->micro_batch));
  ADD_OR_FAIL(cJSON_AddNumberToObject(j, "global_batch", (double)p->global_batch));
  cJSON *classes = cJSON_AddArrayToObject(j, "classes");
  ADD_OR_FAIL(classes);
  for (int ci = 0; ci < p->nclasses; ci++) {
    const hm_plan_class *cl = &p->classes[ci];
    cJSON *o = cJSON_CreateObject();
    ADD_OR_FAIL(o);
    cJSON_AddItemToArray(classes, o);
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "replicas", cl->nreplicas));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "micro_batches", cl->nmicro));
    ADD_OR_FAIL(cJSON_AddStringToObject(o, "schedule", hm_plan_class_chunks(cl) > 1
                                                           ? "interleaved-1f1b" : "1f1b"));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "chunks", hm_plan_class_chunks(cl)));
    cJSON *stages = cJSON_AddArrayToObject(o, "stages");
    ADD_OR_FAIL(stages);
    for (int s = 0; s < cl->nstages; s++) {
      const hm_plan_stage *st = &cl->stages[s];
      cJSON *so = cJSON_CreateObject();
      ADD_OR_FAIL(so);
      cJSON_AddItemToArray(stages, so);
      ADD_OR_FAIL(cJSON_AddStringToObject(so, "device_type", c->types[st->type].name));
      ADD_OR_FAIL(cJSON_AddNumberToObject(so, "tp", st->tp));
      int lr[2] = {st->layer_begin, st->layer_end};
      cJSON *layers = cJSON_CreateIntArray(lr, 2);
      ADD_OR_FAIL(layers);
      cJSON_AddItemToObject(so, "layers", layers);
      cJSON *pr = cJSON_AddObjectToObject(so, "predicted");
      ADD_OR_FAIL(pr);
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "fwd_s", st->fwd));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "bwd_s", st->bwd));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "busy_s", st->busy));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "idle_s", st->idle));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mem_static_bytes", st->mem_static));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mem_act_bytes_per_micro_batch", st->mem_act));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "max_inflight", st->max_inflight));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mem_peak_bytes", st->mem_peak));
      ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mem_capacity_bytes", st->mem_capacity));
    }
  }
  cJSON *pr = cJSON_AddObjectToObject(j, "predicted");
  ADD_OR_FAIL(pr);
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "step_time_s", p->step_time));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "tokens_per_s", p->tokens_per_s));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "bubble_fraction", p->bubble_fraction));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mem_peak_bytes", p->mem_peak_max));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "devices_used", (double)p->devices_used));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "mfu", p->mfu));
  cJSON *mt = cJSON_AddObjectToObject(pr, "mfu_by_type");
  ADD_OR_FAIL(mt);
  for (int k = 0; k < c->ntypes && k < HM_PLAN_MAX_TYPES; k++)
    if (p->devices_by_type[k] > 0) ADD_OR_FAIL(cJSON_AddNumberToObject(mt, c->types[k].name, p->mfu_by_type[k]));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "upper_bound_tokens_per_s", p->upper_bound_tokens_per_s));
  ADD_OR_FAIL(cJSON_AddNumberToObject(pr, "utilization", p->utilization));
  cJSON *ra = cJSON_AddArrayToObject(j, "ranks");
  ADD_OR_FAIL(ra);
  for (int64_t i = 0; i < nranks; i++) {
    const hm_plan_rank *r = &ranks[i];
    const hm_plan_stage *st = &p->classes[r->cls].stages[r->stage];
    hm_rank_loc loc;
    if (hm_cluster_locate(c, r->rank, &loc) != HM_OK) goto oom;
    cJSON *o = cJSON_CreateObject();
    ADD_OR_FAIL(o);
    cJSON_AddItemToArray(ra, o);
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "rank", (double)r->rank));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "host", (double)loc.host));
    const hm_host_group *g = &c->groups[loc.group];
    if (g->hostnames) ADD_OR_FAIL(cJSON_AddStringToObject(o, "hostname", g->hostnames[loc.host_in_group]));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "device", loc.local_device));
    ADD_OR_FAIL(cJSON_AddStringToObject(o, "device_type", c->types[loc.type].name));
    if (c->types[loc.type].backend[0]) /* absent: the type is not executable by hetmix here */
      ADD_OR_FAIL(cJSON_AddStringToObject(o, "backend", c->types[loc.type].backend));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "class", r->cls));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "replica", r->replica));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "stage", r->stage));
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "tp_rank", r->tp_rank));
    int lr[2] = {st->layer_begin, st->layer_end};
    cJSON *layers = cJSON_CreateIntArray(lr, 2);
    ADD_OR_FAIL(layers);
    cJSON_AddItemToObject(o, "layers", layers);
    ADD_OR_FAIL(cJSON_AddNumberToObject(o, "micro_batches", p->classes[r->cls].nmicro));
  }
  cJSON *cj = hm_cluster_to_cjson(in->cluster), *mj = hm_model_to_cjson(in->model),
        *tj = hm_train_to_cjson(in->train);
  if (!cj || !mj || !tj) {
    cJSON_Delete(cj);
    cJSON_Delete(mj);
    cJSON_Delete(tj);
    goto oom;
  }
  cJSON_AddItemToObject(j, "cluster", cj);
  cJSON_AddItemToObject(j, "model", mj);
  cJSON_AddItemToObject(j, "train", tj);
  free(ranks);
  return j;
oom:
  free(ranks);
  cJSON_Delete(j);
  return NULL;
}

hm_status hm_plan_write(const hm_plan_inputs *in, const hm_plan *p, const char *path) {
  cJSON *j = hm_plan_to_cjson(in, p);
  if (!j) {
    const char *e = hm_last_error();
    return e[0] ? HM_ERR_SPEC : hm_error(HM_ERR_NOMEM, "plan: cannot build plan.json");
  }
  hm_status st = hm_json_write_file(j, path, "plan");
  cJSON_Delete(j);
  return st;
}

static hm_status read_stage(const cJSON *so, const char *path, const hm_cluster *c,
                            hm_plan_stage *st) {
  static const char *const keys[] = {"device_type", "tp", "layers", "predicted", NULL};
  HM_TRY(hm_json_check_object(so, path, keys));
  char name[HM_SPEC_NAME_MAX], p2[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_string(so, path, "device_type", 1, NULL, name, sizeof name));
  st->type = hm_cluster_find_type(c, name);
  if (st->type < 0)
    return hm_error(HM_ERR_SPEC, "%s: cluster \"%s\" has no device type \"%s\"",
                    hm_json_path_key(p2, path, "device_type"), c->name, name);
  int64_t v;
  HM_TRY(hm_json_int(so, path, "tp", 1, 1, 8, 1, &v));
  st->tp = (int)v;
  const cJSON *layers;
  int n;
  HM_TRY(hm_json_array(so, path, "layers", 1, &layers, &n));
  hm_json_path_key(p2, path, "layers");
  if (n != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(layers, 0)) ||
      !cJSON_IsNumber(cJSON_GetArrayItem(layers, 1)))
    return hm_error(HM_ERR_SPEC, "%s: expected [begin, end] (two integers)", p2);
  double a = cJSON_GetArrayItem(layers, 0)->valuedouble, b = cJSON_GetArrayItem(layers, 1)->valuedouble;
  /* both bounded before the conversion to int (validation compares them with the model) */
  if (!(a >= 0 && a <= 1e6 && b >= 0 && b <= 1e6) || a != floor(a) || b != floor(b))
    return hm_error(HM_ERR_SPEC, "%s: expected [begin, end] (two integers in [0, 1000000])", p2);
  st->layer_begin = (int)a;
  st->layer_end = (int)b;
  return HM_OK;
}

/* "schedule" ("1f1b" or "interleaved-1f1b", default from "chunks") and "chunks" (v, default 1). */
static hm_status read_schedule(const cJSON *o, const char *path, hm_plan_class *cl) {
  char sched[32], p2[HM_JSON_PATH_MAX];
  int64_t v;
  HM_TRY(hm_json_int(o, path, "chunks", 0, 1, HM_PLAN_MAX_STAGES, 1, &v));
  HM_TRY(hm_json_string(o, path, "schedule", 0, v > 1 ? "interleaved-1f1b" : "1f1b", sched,
                        sizeof sched));
  const int ilv = strcmp(sched, "interleaved-1f1b") == 0;
  if (!ilv && strcmp(sched, "1f1b") != 0)
    return hm_error(HM_ERR_SPEC, "%s: \"%s\"; expected \"1f1b\" or \"interleaved-1f1b\"",
                    hm_json_path_key(p2, path, "schedule"), sched);
  if (ilv != (v > 1))
    return hm_error(HM_ERR_SPEC, "%s: %lld with schedule \"%s\" (interleaved-1f1b needs chunks >= 2, "
                    "1f1b chunks 1)", hm_json_path_key(p2, path, "chunks"), (long long)v, sched);
  cl->nchunks = (int)v;
  return HM_OK;
}

/* A stage's recorded compute per step and the rest of its step (informational, as the plan's
 * other predictions: what the runtime's report compares with the measured): "busy_s", or in
 * files without it nmicro x ("fwd_s" + "bwd_s"); 0 when absent. fwd and bwd stay 0 (they are
 * the predictor's, filled by hm_plan_predict). */
static void read_recorded_busy(const cJSON *so, int nmicro, hm_plan_stage *st) {
  const cJSON *pr = cJSON_GetObjectItemCaseSensitive(so, "predicted");
  const cJSON *busy = pr ? cJSON_GetObjectItemCaseSensitive(pr, "busy_s") : NULL;
  const cJSON *idle = pr ? cJSON_GetObjectItemCaseSensitive(pr, "idle_s") : NULL;
  const cJSON *fwd = pr ? cJSON_GetObjectItemCaseSensitive(pr, "fwd_s") : NULL;
  const cJSON *bwd = pr ? cJSON_GetObjectItemCaseSensitive(pr, "bwd_s") : NULL;
  double b = 0;
  if (cJSON_IsNumber(busy)) b = busy->valuedouble;
  else if (cJSON_IsNumber(fwd) && cJSON_IsNumber(bwd)) b = nmicro * (fwd->valuedouble + bwd->valuedouble);
  st->busy = isfinite(b) && b > 0 ? b : 0;
  st->idle = cJSON_IsNumber(idle) && isfinite(idle->valuedouble) && idle->valuedouble > 0 ? idle->valuedouble : 0;
}

/* The ranks list must be exactly the assignment this plan gives on this cluster. */
static hm_status check_ranks(const cJSON *ra, int count, const hm_plan_inputs *in, const hm_plan *p) {
  /* counted before the roles are listed: a short file may claim a billion devices */
  const int64_t ndev = plan_devices(p);
  if (count != ndev)
    return hm_error(HM_ERR_SPEC, "plan.ranks: lists %d ranks, the plan uses %lld devices of "
                    "cluster \"%s\"", count, (long long)ndev, in->cluster->name);
  hm_plan_rank *want = NULL;
  int64_t nwant = 0;
  HM_TRY(hm_plan_assign_ranks(in, p, &want, &nwant));
  hm_status st = HM_OK;
  for (int i = 0; i < count; i++) {
    const cJSON *o = cJSON_GetArrayItem(ra, i);
    char path[HM_JSON_PATH_MAX];
    hm_json_path_index(path, "plan.ranks", i);
    static const char *const keys[] = {"rank", "host", "hostname", "device", "device_type",
                                       "backend", "class", "replica", "stage", "tp_rank",
                                       "layers", "micro_batches", NULL};
    if ((st = hm_json_check_object(o, path, keys)) != HM_OK) goto done;
    int64_t rank, cls, rep, stage, tpr;
    if ((st = hm_json_int(o, path, "rank", 1, 0, INT64_MAX / 2, 0, &rank)) != HM_OK ||
        (st = hm_json_int(o, path, "class", 1, 0, HM_PLAN_MAX_CLASSES, 0, &cls)) != HM_OK ||
        (st = hm_json_int(o, path, "replica", 1, 0, INT32_MAX, 0, &rep)) != HM_OK ||
        (st = hm_json_int(o, path, "stage", 1, 0, HM_PLAN_MAX_STAGES, 0, &stage)) != HM_OK ||
        (st = hm_json_int(o, path, "tp_rank", 1, 0, 8, 0, &tpr)) != HM_OK)
      goto done;
    const hm_plan_rank *w = &want[i];
    if (rank != w->rank || cls != w->cls || rep != w->replica || stage != w->stage ||
        tpr != w->tp_rank) {
      st = hm_error(HM_ERR_SPEC, "%s: rank %lld as class %lld replica %lld stage %lld tp_rank %lld "
                    "does not match the plan's layout on cluster \"%s\" (expected rank %lld as "
                    "class %d replica %d stage %d tp_rank %d)", path, (long long)rank,
                    (long long)cls, (long long)rep, (long long)stage, (long long)tpr,
                    in->cluster->name, (long long)w->rank, w->cls, w->replica, w->stage, w->tp_rank);
      goto done;
    }
    char tname[HM_SPEC_NAME_MAX], backend[HM_SPEC_BACKEND_MAX], hostname[256];
    if ((st = hm_json_string(o, path, "device_type", 1, NULL, tname, sizeof tname)) != HM_OK) goto done;
    hm_rank_loc loc;
    if ((st = hm_cluster_locate(in->cluster, rank, &loc)) != HM_OK) goto done;
    const hm_device_type *dt = &in->cluster->types[loc.type];
    if (strcmp(tname, dt->name) != 0) {
      st = hm_error(HM_ERR_SPEC, "%s.device_type: \"%s\", but rank %lld of cluster \"%s\" is a %s",
                    path, tname, (long long)rank, in->cluster->name, dt->name);
      goto done;
    }
    /* the rest of the role follows from the plan and the cluster: it must say the same */
    const hm_plan_stage *sg = &p->classes[w->cls].stages[w->stage];
    const hm_host_group *g = &in->cluster->groups[loc.group];
    int64_t host, dev, mb;
    const cJSON *layers;
    int nl;
    if ((st = hm_json_int(o, path, "host", 1, 0, INT64_MAX / 2, 0, &host)) != HM_OK ||
        (st = hm_json_int(o, path, "device", 1, 0, INT32_MAX, 0, &dev)) != HM_OK ||
        (st = hm_json_int(o, path, "micro_batches", 1, 1, INT32_MAX, 1, &mb)) != HM_OK ||
        (st = hm_json_string(o, path, "backend", 0, "", backend, sizeof backend)) != HM_OK ||
        (st = hm_json_array(o, path, "layers", 1, &layers, &nl)) != HM_OK)
      goto done;
    const cJSON *l0 = cJSON_GetArrayItem(layers, 0), *l1 = cJSON_GetArrayItem(layers, 1);
    const char *bad = host != loc.host                                  ? "host"
                      : dev != loc.local_device                         ? "device"
                      : mb != p->classes[w->cls].nmicro                 ? "micro_batches"
                      : strcmp(backend, dt->backend) != 0               ? "backend"
                      : nl != 2 || !cJSON_IsNumber(l0) || !cJSON_IsNumber(l1) ||
                                l0->valuedouble != sg->layer_begin || l1->valuedouble != sg->layer_end
                                                                        ? "layers"
                                                                        : NULL;
    if (!bad && g->hostnames) {
      if ((st = hm_json_string(o, path, "hostname", 1, NULL, hostname, sizeof hostname)) != HM_OK)
        goto done;
      if (strcmp(hostname, g->hostnames[loc.host_in_group]) != 0) bad = "hostname";
    }
    if (bad) {
      st = hm_error(HM_ERR_SPEC, "%s.%s: does not match rank %lld's role in this plan on cluster "
                    "\"%s\" (host %lld, device %d, %s, layers [%d, %d), %d micro-batches)", path,
                    bad, (long long)rank, in->cluster->name, (long long)loc.host, loc.local_device,
                    dt->name, sg->layer_begin, sg->layer_end, p->classes[w->cls].nmicro);
      goto done;
    }
  }
done:
  free(want);
  return st;
}

hm_status hm_plan_from_cjson(const cJSON *j, const hm_plan_inputs *against, hm_plan *p,
                             hm_cluster *cluster, hm_model *model, hm_train *train) {
  static const char *const keys[] = {"version", "format", "micro_batch", "global_batch", "classes",
                                     "predicted", "ranks", "cluster", "model", "train", NULL};
  const char *root = "plan";
  memset(p, 0, sizeof *p);
  HM_TRY(hm_json_check_object(j, root, keys));
  HM_TRY(hm_json_version(j, root));
  char format[32];
  HM_TRY(hm_json_string(j, root, "format", 0, "hetmix-plan", format, sizeof format));
  if (strcmp(format, "hetmix-plan") != 0)
    return hm_error(HM_ERR_SPEC, "plan.format: expected \"hetmix-plan\", got \"%s\"", format);
  hm_cluster c_own;
  hm_model m_own;
  hm_train t_own;
  memset(&c_own, 0, sizeof c_own);
  memset(&m_own, 0, sizeof m_own);
  hm_train_default(&t_own);
  hm_status st = HM_OK;
  const cJSON *sub;
  if ((st = hm_json_object(j, root, "cluster", 1, &sub)) != HM_OK) goto fail;
  if ((st = hm_cluster_from_cjson(sub, "plan.cluster", &c_own)) != HM_OK) goto fail;
  if ((st = hm_json_object(j, root, "model", 1, &sub)) != HM_OK) goto fail;
  if ((st = hm_model_from_cjson(sub, "plan.model", &m_own)) != HM_OK) goto fail;
  if ((st = hm_json_object(j, root, "train", 1, &sub)) != HM_OK) goto fail;
  if ((st = hm_train_from_cjson(sub, "plan.train", &t_own)) != HM_OK) goto fail;
  if ((st = hm_spec_resolve(&c_own, &m_own, &t_own, NULL)) != HM_OK) {
    hm_error_context(st, "plan."); /* "train.precision: ..." is plan.train's */
    goto fail;
  }
  hm_plan_inputs own = {.cluster = &c_own, .model = &m_own, .train = &t_own};
  const hm_plan_inputs *in = against ? against : &own;
  if (against && against->model->nlayers != m_own.nlayers) {
    st = hm_error(HM_ERR_SPEC, "plan.model: the plan was made for \"%s\" with %d layers, not \"%s\" "
                  "with %d", m_own.name, m_own.nlayers, against->model->name, against->model->nlayers);
    goto fail;
  }
  int64_t v;
  if ((st = hm_json_int(j, root, "micro_batch", 1, 1, INT32_MAX, 1, &v)) != HM_OK) goto fail;
  p->micro_batch = v;
  if ((st = hm_json_int(j, root, "global_batch", 1, 1, INT64_MAX / 4, 1, &v)) != HM_OK) goto fail;
  p->global_batch = v;
  const cJSON *classes;
  int ncl;
  if ((st = hm_json_array(j, root, "classes", 1, &classes, &ncl)) != HM_OK) goto fail;
  if (ncl < 1 || ncl > HM_PLAN_MAX_CLASSES) {
    st = hm_error(HM_ERR_SPEC, "plan.classes: need 1 to %d classes, got %d", HM_PLAN_MAX_CLASSES, ncl);
    goto fail;
  }
  p->nclasses = ncl;
  for (int ci = 0; ci < ncl; ci++) {
    char path[HM_JSON_PATH_MAX], sp[HM_JSON_PATH_MAX], spi[HM_JSON_PATH_MAX];
    hm_json_path_index(path, "plan.classes", ci);
    const cJSON *o = cJSON_GetArrayItem(classes, ci);
    static const char *const ckeys[] = {"replicas", "micro_batches", "schedule", "chunks", "stages",
                                        NULL};
    if ((st = hm_json_check_object(o, path, ckeys)) != HM_OK) goto fail;
    hm_plan_class *cl = &p->classes[ci];
    if ((st = hm_json_int(o, path, "replicas", 1, 1, INT32_MAX, 1, &v)) != HM_OK) goto fail;
    cl->nreplicas = (int)v;
    if ((st = hm_json_int(o, path, "micro_batches", 1, 1, INT32_MAX, 1, &v)) != HM_OK) goto fail;
    cl->nmicro = (int)v;
    if ((st = read_schedule(o, path, cl)) != HM_OK) goto fail;
    const cJSON *stages;
    int ns;
    if ((st = hm_json_array(o, path, "stages", 1, &stages, &ns)) != HM_OK) goto fail;
    if (ns < 1 || ns > HM_PLAN_MAX_STAGES) {
      st = hm_error(HM_ERR_SPEC, "%s: need 1 to %d stages, got %d", hm_json_path_key(sp, path, "stages"),
                    HM_PLAN_MAX_STAGES, ns);
      goto fail;
    }
    cl->nstages = ns;
    hm_json_path_key(sp, path, "stages");
    for (int s = 0; s < ns; s++) {
      hm_json_path_index(spi, sp, s);
      if ((st = read_stage(cJSON_GetArrayItem(stages, s), spi, in->cluster, &cl->stages[s])) != HM_OK)
        goto fail;
      read_recorded_busy(cJSON_GetArrayItem(stages, s), cl->nmicro, &cl->stages[s]);
    }
  }
  if ((st = hm_plan_validate(in, p)) != HM_OK) goto fail;
  /* predictions are informational (hm_plan_predict fills them again); the bound is kept for
   * utilization */
  const cJSON *pred = cJSON_GetObjectItemCaseSensitive(j, "predicted");
  const cJSON *ub = pred ? cJSON_GetObjectItemCaseSensitive(pred, "upper_bound_tokens_per_s") : NULL;
  if (cJSON_IsNumber(ub) && ub->valuedouble > 0 && isfinite(ub->valuedouble))
    p->upper_bound_tokens_per_s = ub->valuedouble;
  /* and the recorded prediction, for what the runtime derives from it (the progress watchdog's
   * deadline, the report) when nothing re-predicts */
  const cJSON *stp = pred ? cJSON_GetObjectItemCaseSensitive(pred, "step_time_s") : NULL;
  const cJSON *tps = pred ? cJSON_GetObjectItemCaseSensitive(pred, "tokens_per_s") : NULL;
  if (cJSON_IsNumber(stp) && stp->valuedouble > 0 && isfinite(stp->valuedouble)) p->step_time = stp->valuedouble;
  if (cJSON_IsNumber(tps) && tps->valuedouble > 0 && isfinite(tps->valuedouble)) p->tokens_per_s = tps->valuedouble;
  const cJSON *ra;
  int nr;
  if ((st = hm_json_array(j, root, "ranks", 1, &ra, &nr)) != HM_OK) goto fail;
  if ((st = check_ranks(ra, nr, in, p)) != HM_OK) goto fail;
  if (cluster) *cluster = c_own; else hm_cluster_free(&c_own);
  if (model) *model = m_own; else hm_model_free(&m_own);
  if (train) *train = t_own;
  return HM_OK;
fail:
  hm_cluster_free(&c_own);
  hm_model_free(&m_own);
  return st;
}

hm_status hm_plan_parse(const char *json, size_t len, const char *origin,
                        const hm_plan_inputs *against, hm_plan *plan, hm_cluster *cluster,
                        hm_model *model, hm_train *train) {
  cJSON *j = NULL;
  HM_TRY(hm_json_parse(json, len, origin, "plan", &j));
  hm_status st = hm_plan_from_cjson(j, against, plan, cluster, model, train);
  cJSON_Delete(j);
  if (st != HM_OK && origin) hm_error_context(st, "%s: ", origin);
  return st;
}

hm_status hm_plan_load(const char *path, const hm_plan_inputs *against, hm_plan *plan,
                       hm_cluster *cluster, hm_model *model, hm_train *train) {
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(path, &text, &len));
  hm_status st = hm_plan_parse(text, len, path, against, plan, cluster, model, train);
  free(text);
  return st;
}
