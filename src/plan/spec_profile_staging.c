/* The profile's staging entries: per device type whose memory is not host memory, the
 * bandwidth of its device->host and host->device copies and their latency (measured by
 * `hetmix profile`), which the planner adds to every transfer from or to that type. */
#include <stdlib.h>
#include <string.h>

#include "plan/spec_json.h"
#include "plan/spec_profile_staging.h"
#include "util/util.h"

static hm_status staging_valid(const hm_profile_staging *e) {
  if (!e->device_type[0] || !(e->xfer.d2h_bw > 0) || !(e->xfer.h2d_bw > 0) || !(e->xfer.copy_latency >= 0))
    return hm_error(HM_ERR_INVALID_ARG, "profile staging entry (%s) has an empty name or bad figures", e->device_type);
  return HM_OK;
}

hm_status hm_profile_add_staging(hm_profile *p, const hm_profile_staging *e) {
  HM_TRY(staging_valid(e));
  for (int i = 0; i < p->nstaging; i++)
    if (strcmp(p->staging[i].device_type, e->device_type) == 0)
      return hm_error(HM_ERR_INVALID_ARG, "profile.staging[%d]: a second entry for device type \"%s\" (first is [%d])",
                      p->nstaging, e->device_type, i);
  if (p->nstaging == p->cap_staging) {
    int cap = p->cap_staging ? 2 * p->cap_staging : 4;
    hm_profile_staging *n = realloc(p->staging, (size_t)cap * sizeof *n);
    if (!n) return hm_error(HM_ERR_NOMEM, "cannot grow the profile's staging entries");
    p->staging = n;
    p->cap_staging = cap;
  }
  p->staging[p->nstaging] = *e;
  p->staging[p->nstaging].type = -1;
  p->nstaging++;
  return HM_OK;
}

hm_device_xfer hm_profile_staging_of(const hm_profile *p, int type) {
  hm_device_xfer none;
  memset(&none, 0, sizeof none);
  for (int i = 0; p && i < p->nstaging; i++)
    if (p->staging[i].type == type) return p->staging[i].xfer;
  return none;
}

hm_status hm_profile_staging_read(const cJSON *j, const char *root, hm_profile *p) {
  static const char *const keys[] = {"device_type", "d2h_bandwidth", "h2d_bandwidth", "latency", NULL};
  char path[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  const cJSON *arr = NULL;
  int n = 0, i = 0;
  HM_TRY(hm_json_array(j, root, "staging", 0, &arr, &n));
  hm_json_path_key(path, root, "staging");
  for (const cJSON *e = arr ? arr->child : NULL; e; e = e->next, i++) {
    hm_json_path_index(q, path, i);
    HM_TRY(hm_json_check_object(e, q, keys));
    hm_profile_staging s;
    memset(&s, 0, sizeof s);
    HM_TRY(hm_json_name(e, q, "device_type", 1, NULL, s.device_type, sizeof s.device_type));
    HM_TRY(hm_json_number(e, q, "d2h_bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &s.xfer.d2h_bw));
    HM_TRY(hm_json_number(e, q, "h2d_bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &s.xfer.h2d_bw));
    HM_TRY(hm_json_number(e, q, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &s.xfer.copy_latency));
    hm_status st = hm_profile_add_staging(p, &s);
    if (st != HM_OK) return hm_error(HM_ERR_SPEC, "%s: %s", q, hm_last_error());
  }
  return HM_OK;
}

int hm_profile_staging_write(cJSON *j, const hm_profile *p) {
  if (!p->nstaging) return 1;
  cJSON *arr = cJSON_AddArrayToObject(j, "staging");
  if (!arr) return 0;
  for (int i = 0; i < p->nstaging; i++) {
    const hm_profile_staging *e = &p->staging[i];
    cJSON *o = cJSON_CreateObject();
    if (!o) return 0;
    cJSON_AddItemToArray(arr, o);
    if (!cJSON_AddStringToObject(o, "device_type", e->device_type) ||
        !cJSON_AddNumberToObject(o, "d2h_bandwidth", e->xfer.d2h_bw) ||
        !cJSON_AddNumberToObject(o, "h2d_bandwidth", e->xfer.h2d_bw) ||
        !cJSON_AddNumberToObject(o, "latency", e->xfer.copy_latency))
      return 0;
  }
  return 1;
}

hm_status hm_profile_staging_resolve(hm_profile *p, const hm_cluster *c) {
  for (int i = 0; i < p->nstaging; i++) {
    p->staging[i].type = hm_cluster_find_type(c, p->staging[i].device_type);
    if (p->staging[i].type < 0)
      return hm_error(HM_ERR_SPEC, "profile.staging[%d].device_type: unknown device type \"%s\"", i,
                      p->staging[i].device_type);
  }
  return HM_OK;
}
