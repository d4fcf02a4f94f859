/* What-if clusters: the same cluster with devices of one type added or removed, whole hosts at a
 * time. The change is made on the cluster's JSON form and read back through the spec reader, so
 * the result is validated and its derived fields (counts, first ranks) are recomputed exactly as
 * for a cluster file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include "hetmix/plan.h"
#include "util/util.h"

/* Groups that may change: they hold `type` and nothing else, in `pool` when one is given. */
static int group_eligible(const hm_host_group *g, int type, int pool) {
  return g->nkinds == 1 && g->dev[0].type == type && (pool < 0 || g->pool == pool);
}

static int find_pool(const hm_cluster *c, const char *name) {
  for (int i = 0; i < c->npools; i++)
    if (strcmp(c->pools[i].name, name) == 0) return i;
  return -1;
}

/* Sets the host count of group object `o` (a host group of the JSON form); a group whose host
 * names are listed loses them (a what-if cluster names no new hosts). */
static hm_status set_hosts(cJSON *o, int64_t hosts) {
  cJSON_DeleteItemFromObjectCaseSensitive(o, "hostnames");
  cJSON *n = cJSON_CreateNumber((double)hosts);
  if (!n || !cJSON_ReplaceItemInObjectCaseSensitive(o, "count", n)) {
    cJSON_Delete(n);
    return hm_error(HM_ERR_NOMEM, "what-if cluster: out of memory");
  }
  return HM_OK;
}

/* Plans the change group by group: hosts[g] is the new host count of group g (0: removed). */
static hm_status plan_change(const hm_cluster *c, int type, int pool, int64_t delta,
                             int64_t *hosts) {
  const char *tn = c->types[type].name;
  int any = 0;
  for (int g = 0; g < c->ngroups; g++) {
    hosts[g] = c->groups[g].count;
    any |= group_eligible(&c->groups[g], type, pool);
  }
  if (!any)
    return hm_error(HM_ERR_INVALID_ARG, "what-if: no host group holds only \"%s\" devices%s%s "
                    "(devices are added and removed as whole hosts of such a group)", tn,
                    pool >= 0 ? " in pool " : "", pool >= 0 ? c->pools[pool].name : "");
  if (delta > 0) { /* the first eligible group whose host size divides the count grows */
    for (int g = 0; g < c->ngroups; g++) {
      const hm_host_group *hg = &c->groups[g];
      if (!group_eligible(hg, type, pool) || delta % hg->dev[0].count) continue;
      hosts[g] += delta / hg->dev[0].count;
      return HM_OK;
    }
    return hm_error(HM_ERR_INVALID_ARG, "what-if: cannot add %lld \"%s\" devices as whole hosts: "
                    "no eligible host group has a host size dividing %lld", (long long)delta, tn,
                    (long long)delta);
  }
  int64_t left = -delta; /* removed from the last eligible groups first */
  for (int g = c->ngroups - 1; g >= 0 && left > 0; g--) {
    const hm_host_group *hg = &c->groups[g];
    if (!group_eligible(hg, type, pool)) continue;
    int64_t per = hg->dev[0].count, take = left / per;
    if (take > hg->count) take = hg->count;
    hosts[g] -= take;
    left -= take * per;
  }
  if (left > 0)
    return hm_error(HM_ERR_INVALID_ARG, "what-if: cannot remove %lld \"%s\" devices as whole "
                    "hosts%s%s (%lld would remain to remove)", (long long)-delta, tn,
                    pool >= 0 ? " of pool " : "", pool >= 0 ? c->pools[pool].name : "",
                    (long long)left);
  return HM_OK;
}

hm_status hm_cluster_whatif(const hm_cluster *c, const char *type, int64_t delta, const char *pool,
                            hm_cluster *out) {
  if (!c || !type || !out) return hm_error(HM_ERR_INVALID_ARG, "what-if: NULL argument");
  memset(out, 0, sizeof *out);
  const int k = hm_cluster_find_type(c, type);
  if (k < 0)
    return hm_error(HM_ERR_INVALID_ARG, "what-if: cluster \"%s\" has no device type \"%s\"",
                    c->name, type);
  const int pi = pool ? find_pool(c, pool) : -1;
  if (pool && pi < 0)
    return hm_error(HM_ERR_INVALID_ARG, "what-if: cluster \"%s\" has no pool \"%s\"", c->name,
                    pool);
  if (delta == 0) return hm_error(HM_ERR_INVALID_ARG, "what-if: a count of 0 devices");
  int64_t *hosts = hm_calloc((size_t)c->ngroups, sizeof *hosts, "what-if");
  if (!hosts) return HM_ERR_NOMEM;
  hm_status st = plan_change(c, k, pi, delta, hosts);
  cJSON *j = st == HM_OK ? hm_cluster_to_cjson(c) : NULL;
  if (st == HM_OK && !j) st = hm_error(HM_ERR_NOMEM, "what-if cluster: out of memory");
  cJSON *arr = j ? cJSON_GetObjectItemCaseSensitive(j, "hosts") : NULL;
  for (int g = c->ngroups - 1; st == HM_OK && g >= 0; g--) {
    if (hosts[g] == c->groups[g].count) continue;
    if (hosts[g] == 0) cJSON_DeleteItemFromArray(arr, g);
    else st = set_hosts(cJSON_GetArrayItem(arr, g), hosts[g]);
  }
  if (st == HM_OK && c->types[k].count + delta == 0) /* the type leaves the cluster */
    cJSON_DeleteItemFromArray(cJSON_GetObjectItemCaseSensitive(j, "device_types"), k);
  if (st == HM_OK && cJSON_GetArraySize(arr) == 0)
    st = hm_error(HM_ERR_INVALID_ARG, "what-if: removing %lld \"%s\" devices leaves no host",
                  (long long)-delta, type);
  if (st == HM_OK) st = hm_cluster_from_cjson(j, "cluster", out);
  cJSON_Delete(j);
  free(hosts);
  return st;
}

hm_status hm_plan_carry_over(const hm_plan_inputs *from, const hm_plan *plan,
                             const hm_plan_inputs *to, hm_plan *out) {
  if (!from || !from->cluster || !plan || !to || !to->cluster || !out)
    return hm_error(HM_ERR_INVALID_ARG, "plan carry-over: NULL argument");
  *out = *plan;
  for (int ci = 0; ci < out->nclasses; ci++)
    for (int s = 0; s < out->classes[ci].nstages; s++) {
      hm_plan_stage *st = &out->classes[ci].stages[s];
      if (st->type < 0 || st->type >= from->cluster->ntypes)
        return hm_error(HM_ERR_SPEC, "plan carry-over: stage type %d is not in cluster \"%s\"",
                        st->type, from->cluster->name);
      const char *name = from->cluster->types[st->type].name;
      st->type = hm_cluster_find_type(to->cluster, name);
      if (st->type < 0)
        return hm_error(HM_ERR_NO_FIT, "plan carry-over: cluster \"%s\" has no \"%s\" devices",
                        to->cluster->name, name);
    }
  HM_TRY(hm_plan_validate(to, out));
  return hm_plan_predict(to, out, NULL);
}
