/* Cluster spec: JSON reader and writer, rank <-> (host, device) mapping and link lookup.
 *
 * The cluster is kept per device type and per host group (N identical hosts), so a
 * 10,240-device cluster is read in microseconds and the planner reasons per group. The JSON
 * format is documented in docs/spec.md; this file validates every field against it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "plan/spec_json.h"
#include "util/util.h"

#define HM_CLUSTER_MAX_DEVICES ((int64_t)1 << 30)
#define HM_CLUSTER_MAX_TYPES 64
#define HM_CLUSTER_MAX_GROUPS 65536

static const char *const dtype_names[HM_SPEC_DTYPE_COUNT + 1] = {"fp32", "bf16", "fp16", "fp8", NULL};

const char *hm_spec_dtype_name(hm_spec_dtype t) {
  return (t >= 0 && t < HM_SPEC_DTYPE_COUNT) ? dtype_names[t] : "unknown";
}

int hm_spec_dtype_parse(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < HM_SPEC_DTYPE_COUNT; i++)
    if (strcmp(s, dtype_names[i]) == 0) return i;
  return -1;
}

size_t hm_spec_dtype_size(hm_spec_dtype t) {
  switch (t) {
    case HM_DTYPE_FP32: return 4;
    case HM_DTYPE_BF16:
    case HM_DTYPE_FP16: return 2;
    case HM_DTYPE_FP8: return 1;
    default: return 0;
  }
}

double hm_device_type_peak(const hm_device_type *dt, hm_spec_dtype t) {
  if (t >= 0 && t < HM_SPEC_DTYPE_COUNT && dt->peak_flops[t] > 0) return dt->peak_flops[t];
  return dt->peak_flops[HM_DTYPE_FP32];
}

void hm_cluster_free(hm_cluster *c) {
  if (!c) return;
  for (int g = 0; g < c->ngroups && c->groups; g++) {
    if (c->groups[g].hostnames) {
      for (int64_t h = 0; h < c->groups[g].count; h++) free(c->groups[g].hostnames[h]);
      free(c->groups[g].hostnames);
    }
  }
  free(c->types);
  free(c->groups);
  free(c->pools);
  free(c->pool_links);
  memset(c, 0, sizeof *c);
}

int hm_cluster_find_type(const hm_cluster *c, const char *name) {
  for (int i = 0; i < c->ntypes; i++)
    if (strcmp(c->types[i].name, name) == 0) return i;
  return -1;
}

/* ' (did you mean "x"?)' for a misspelt name among the n names at stride bytes from first. */
static const char *suggest(const char *word, const char *first, size_t stride, int n, char *buf,
                           size_t cap) {
  int bestd = 99;
  const char *best = NULL;
  for (int i = 0; i < n; i++) {
    const char *cand = first + (size_t)i * stride;
    int d = hm_json_edit_distance(word, cand);
    if (d < bestd) {
      bestd = d;
      best = cand;
    }
  }
  buf[0] = '\0';
  if (best && hm_json_is_close(word, best, bestd)) snprintf(buf, cap, " (did you mean \"%s\"?)", best);
  return buf;
}

static int find_pool(const hm_cluster *c, const char *name) {
  for (int i = 0; i < c->npools; i++)
    if (strcmp(c->pools[i].name, name) == 0) return i;
  return -1;
}

/* ---- reader ------------------------------------------------------------------------------ */

/* Optional "gemm": {"units", "tile_m", "tile_n"}, all three required when given. */
static hm_status read_gemm(const cJSON *o, const char *path, hm_device_type *dt) {
  static const char *const keys[] = {"units", "tile_m", "tile_n", NULL};
  const cJSON *g = NULL;
  HM_TRY(hm_json_object(o, path, "gemm", 0, &g));
  dt->gemm_given = g != NULL;
  if (!g) return HM_OK;
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, "gemm");
  HM_TRY(hm_json_check_object(g, p, keys));
  int64_t units = 0, tm = 0, tn = 0;
  HM_TRY(hm_json_int(g, p, "units", 1, 1, 100000, 0, &units));
  HM_TRY(hm_json_int(g, p, "tile_m", 1, 1, 4096, 0, &tm));
  HM_TRY(hm_json_int(g, p, "tile_n", 1, 1, 4096, 0, &tn));
  dt->gemm_units = (int)units;
  dt->gemm_tile_m = (int)tm;
  dt->gemm_tile_n = (int)tn;
  return HM_OK;
}

static hm_status read_device_type(const cJSON *o, const char *path, hm_device_type *dt) {
  static const char *const keys[] = {"name",       "peak_flops", "memory_bytes", "memory_bandwidth",
                                     "efficiency", "backend",    "intra_host_link", "gemm", NULL};
  static const char *const flop_keys[] = {"fp32", "bf16", "fp16", "fp8", NULL};
  char p[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(o, path, keys));
  HM_TRY(hm_json_name(o, path, "name", 1, NULL, dt->name, sizeof dt->name));
  const cJSON *pf = NULL;
  HM_TRY(hm_json_object(o, path, "peak_flops", 1, &pf));
  hm_json_path_key(p, path, "peak_flops");
  HM_TRY(hm_json_check_object(pf, p, flop_keys));
  HM_TRY(hm_json_number(pf, p, "fp32", 1, HM_RANGE_POSITIVE(1e20), 0,
                        &dt->peak_flops[HM_DTYPE_FP32]));
  for (int t = 1; t < HM_SPEC_DTYPE_COUNT; t++)
    HM_TRY(hm_json_number(pf, p, dtype_names[t], 0, HM_RANGE_POSITIVE(1e20), 0,
                          &dt->peak_flops[t]));
  HM_TRY(hm_json_number(o, path, "memory_bytes", 1, HM_RANGE_POSITIVE(1e16), 0, &dt->memory_bytes));
  HM_TRY(hm_json_number(o, path, "memory_bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0,
                        &dt->memory_bandwidth));
  HM_TRY(hm_json_number(o, path, "efficiency", 0, (hm_json_range){0.0, 1.0, 1, 0}, 0.5,
                        &dt->efficiency));
  HM_TRY(hm_json_string(o, path, "backend", 0, "", dt->backend, sizeof dt->backend));
  HM_TRY(read_gemm(o, path, dt));
  int present = 0;
  HM_TRY(hm_json_link(o, path, "intra_host_link", 0, &dt->intra_link, &present));
  if (!present) dt->intra_link = (hm_link){0, 0, 0, 0};
  return HM_OK;
}

static hm_status read_host_devices(const hm_cluster *c, const cJSON *o, const char *path,
                                   hm_host_devices *hd) {
  static const char *const keys[] = {"type", "count", NULL};
  HM_TRY(hm_json_check_object(o, path, keys));
  char tname[HM_SPEC_NAME_MAX];
  HM_TRY(hm_json_string(o, path, "type", 1, NULL, tname, sizeof tname));
  int t = hm_cluster_find_type(c, tname);
  if (t < 0) {
    char p[HM_JSON_PATH_MAX], hint[96];
    return hm_error(HM_ERR_SPEC, "%s: unknown device type \"%s\" (not in cluster.device_types)%s",
                    hm_json_path_key(p, path, "type"), tname,
                    suggest(tname, c->types[0].name, sizeof c->types[0], c->ntypes, hint,
                            sizeof hint));
  }
  int64_t n = 0;
  HM_TRY(hm_json_int(o, path, "count", 0, 1, 4096, 1, &n));
  hd->type = t;
  hd->count = (int)n;
  return HM_OK;
}

static hm_status read_host_group(hm_cluster *c, const cJSON *o, const char *path, int index,
                                  hm_host_group *g) {
  static const char *const keys[] = {"name", "count",     "devices",   "nic", "nic_count",
                                     "pool", "host_link", "hostnames", NULL};
  char p[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(o, path, keys));
  char defname[HM_SPEC_NAME_MAX];
  snprintf(defname, sizeof defname, "hosts%d", index);
  HM_TRY(hm_json_name(o, path, "name", 0, defname, g->name, sizeof g->name));
  HM_TRY(hm_json_int(o, path, "count", 0, 1, 10000000, 1, &g->count));

  hm_json_path_key(p, path, "devices");
  const cJSON *dv = cJSON_GetObjectItemCaseSensitive(o, "devices");
  if (!dv) return hm_error(HM_ERR_SPEC, "%s: missing (expected an object or an array)", p);
  if (cJSON_IsObject(dv)) {
    g->nkinds = 1;
    HM_TRY(read_host_devices(c, dv, p, &g->dev[0]));
  } else if (cJSON_IsArray(dv)) {
    int n = 0;
    for (const cJSON *e = dv->child; e; e = e->next, n++) {
      if (n == HM_SPEC_HOST_KINDS_MAX)
        return hm_error(HM_ERR_SPEC, "%s: more than %d device types in one host", p,
                        HM_SPEC_HOST_KINDS_MAX);
      HM_TRY(read_host_devices(c, e, hm_json_path_index(q, p, n), &g->dev[n]));
      for (int k = 0; k < n; k++)
        if (g->dev[k].type == g->dev[n].type)
          return hm_error(HM_ERR_SPEC, "%s.type: device type \"%s\" is listed twice in this host",
                          q, c->types[g->dev[n].type].name);
    }
    if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one entry, got []", p);
    g->nkinds = n;
  } else {
    char desc[64];
    hm_json_describe(dv, desc, sizeof desc);
    return hm_error(HM_ERR_SPEC, "%s: expected an object or an array, got %s", p, desc);
  }
  g->devices_per_host = 0;
  for (int k = 0; k < g->nkinds; k++) g->devices_per_host += g->dev[k].count;
  if (g->devices_per_host > 4096)
    return hm_error(HM_ERR_SPEC, "%s: %d devices in one host, more than 4096", p,
                    g->devices_per_host);

  int present = 0;
  HM_TRY(hm_json_link(o, path, "nic", 0, &g->nic, &present));
  if (!present) g->nic = (hm_link){0, 0, 0, 0};
  int64_t nics = 1;
  HM_TRY(hm_json_int(o, path, "nic_count", 0, 1, 1024, 1, &nics));
  g->nic_count = (int)nics;
  HM_TRY(hm_json_link(o, path, "host_link", 0, &g->host_link, &present));
  if (!present) {
    g->host_link = (hm_link){0, 0, 0, 0};
    if (g->nkinds > 1)
      return hm_error(HM_ERR_SPEC,
                      "%s: missing (expected a link object: this host holds %d device types, "
                      "and host_link joins devices of different types)",
                      hm_json_path_key(p, path, "host_link"), g->nkinds);
  }

  g->pool = -1;
  if (c->npools > 0) {
    char pname[HM_SPEC_NAME_MAX];
    HM_TRY(hm_json_string(o, path, "pool", 1, NULL, pname, sizeof pname));
    g->pool = find_pool(c, pname);
    char hint[96];
    if (g->pool < 0)
      return hm_error(HM_ERR_SPEC, "%s: unknown pool \"%s\" (not in cluster.pools)%s",
                      hm_json_path_key(p, path, "pool"), pname,
                      suggest(pname, c->pools[0].name, sizeof c->pools[0], c->npools, hint,
                              sizeof hint));
  } else if (cJSON_GetObjectItemCaseSensitive(o, "pool")) {
    return hm_error(HM_ERR_SPEC, "%s: names a pool but cluster.pools is absent",
                    hm_json_path_key(p, path, "pool"));
  }

  const cJSON *hn = NULL;
  int nnames = 0;
  HM_TRY(hm_json_array(o, path, "hostnames", 0, &hn, &nnames));
  if (hn) {
    hm_json_path_key(p, path, "hostnames");
    if (nnames != g->count)
      return hm_error(HM_ERR_SPEC, "%s: has %d names but the group has %lld hosts", p, nnames,
                      (long long)g->count);
    g->hostnames = hm_calloc((size_t)nnames, sizeof(char *), "host names");
    if (!g->hostnames) return HM_ERR_NOMEM;
    int i = 0;
    for (const cJSON *e = hn->child; e; e = e->next, i++) {
      if (!cJSON_IsString(e) || !e->valuestring || !e->valuestring[0] ||
          strlen(e->valuestring) > 255) {
        char desc[64];
        hm_json_describe(e, desc, sizeof desc);
        return hm_error(HM_ERR_SPEC, "%s: expected a host name (1..255 characters), got %s",
                        hm_json_path_index(q, p, i), desc);
      }
      g->hostnames[i] = strdup(e->valuestring);
      if (!g->hostnames[i]) return hm_error(HM_ERR_NOMEM, "cannot copy host names");
    }
  }
  return HM_OK;
}

static hm_status read_pool_link(hm_cluster *c, const cJSON *o, const char *path, hm_pool_link *pl) {
  static const char *const keys[] = {"pools", "bandwidth", "latency", NULL};
  char p[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(o, path, keys));
  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(o, path, "pools", 1, &arr, &n));
  hm_json_path_key(p, path, "pools");
  if (n != 2) return hm_error(HM_ERR_SPEC, "%s: expected two pool names, got %d entries", p, n);
  int idx[2];
  int i = 0;
  for (const cJSON *e = arr->child; e; e = e->next, i++) {
    hm_json_path_index(q, p, i);
    if (!cJSON_IsString(e) || !e->valuestring) {
      char desc[64];
      hm_json_describe(e, desc, sizeof desc);
      return hm_error(HM_ERR_SPEC, "%s: expected a pool name, got %s", q, desc);
    }
    idx[i] = find_pool(c, e->valuestring);
    if (idx[i] < 0)
      return hm_error(HM_ERR_SPEC, "%s: unknown pool \"%.64s\" (not in cluster.pools)", q,
                      e->valuestring);
  }
  if (idx[0] == idx[1])
    return hm_error(HM_ERR_SPEC, "%s: links pool \"%s\" to itself", p, c->pools[idx[0]].name);
  pl->a = idx[0] < idx[1] ? idx[0] : idx[1];
  pl->b = idx[0] < idx[1] ? idx[1] : idx[0];
  pl->link = (hm_link){0, 0, 0, 0};
  HM_TRY(hm_json_number(o, path, "bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &pl->link.bandwidth));
  HM_TRY(hm_json_number(o, path, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &pl->link.latency));
  return HM_OK;
}

static hm_status cluster_read(const cJSON *j, const char *root, hm_cluster *c) {
  static const char *const keys[] = {"version", "name",       "device_types", "hosts",
                                     "pools",   "pool_links", NULL};
  char p[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(j, root, keys));
  HM_TRY(hm_json_version(j, root));
  HM_TRY(hm_json_name(j, root, "name", 0, "cluster", c->name, sizeof c->name));

  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(j, root, "device_types", 1, &arr, &n));
  hm_json_path_key(p, root, "device_types");
  if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one device type, got []", p);
  if (n > HM_CLUSTER_MAX_TYPES)
    return hm_error(HM_ERR_SPEC, "%s: %d device types, more than %d", p, n, HM_CLUSTER_MAX_TYPES);
  c->types = hm_calloc((size_t)n, sizeof *c->types, "device types");
  if (!c->types) return HM_ERR_NOMEM;
  int i = 0;
  for (const cJSON *e = arr->child; e; e = e->next, i++) {
    HM_TRY(read_device_type(e, hm_json_path_index(q, p, i), &c->types[i]));
    c->ntypes = i + 1;
    for (int k = 0; k < i; k++)
      if (strcmp(c->types[k].name, c->types[i].name) == 0)
        return hm_error(HM_ERR_SPEC, "%s.name: device type \"%s\" is defined twice (also [%d])", q,
                        c->types[i].name, k);
  }

  HM_TRY(hm_json_array(j, root, "pools", 0, &arr, &n));
  if (arr) {
    hm_json_path_key(p, root, "pools");
    if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one pool, got []", p);
    if (n > HM_SPEC_POOLS_MAX)
      return hm_error(HM_ERR_SPEC, "%s: %d pools, more than %d", p, n, HM_SPEC_POOLS_MAX);
    c->pools = hm_calloc((size_t)n, sizeof *c->pools, "pools");
    if (!c->pools) return HM_ERR_NOMEM;
    static const char *const pool_keys[] = {"name", NULL};
    i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
      hm_json_path_index(q, p, i);
      HM_TRY(hm_json_check_object(e, q, pool_keys));
      HM_TRY(hm_json_name(e, q, "name", 1, NULL, c->pools[i].name, sizeof c->pools[i].name));
      for (int k = 0; k < i; k++)
        if (strcmp(c->pools[k].name, c->pools[i].name) == 0)
          return hm_error(HM_ERR_SPEC, "%s.name: pool \"%s\" is defined twice (also [%d])", q,
                          c->pools[i].name, k);
      c->npools = i + 1;
    }
  }

  HM_TRY(hm_json_array(j, root, "pool_links", 0, &arr, &n));
  hm_json_path_key(p, root, "pool_links");
  if (arr && c->npools == 0)
    return hm_error(HM_ERR_SPEC, "%s: given but cluster.pools is absent", p);
  /* which link joins each pair of pools: (npools, npools), 0 = none, else 1 + its index */
  int *link_of = NULL;
  if (c->npools > 0) {
    link_of = hm_calloc((size_t)c->npools * c->npools, sizeof *link_of, "pool pairs");
    if (!link_of) return HM_ERR_NOMEM;
  }
  hm_status st = HM_OK;
  if (n > 0) {
    c->pool_links = hm_calloc((size_t)n, sizeof *c->pool_links, "pool links");
    if (!c->pool_links) st = HM_ERR_NOMEM;
    i = 0;
    for (const cJSON *e = arr ? arr->child : NULL; e && st == HM_OK; e = e->next, i++) {
      hm_pool_link *pl = &c->pool_links[i];
      if ((st = read_pool_link(c, e, hm_json_path_index(q, p, i), pl)) != HM_OK) break;
      int *slot = &link_of[(size_t)pl->a * c->npools + pl->b];
      if (*slot)
        st = hm_error(HM_ERR_SPEC, "%s: pools \"%s\" and \"%s\" are linked twice (also [%d])", q,
                      c->pools[pl->a].name, c->pools[pl->b].name, *slot - 1);
      *slot = i + 1;
      c->npool_links = i + 1;
    }
  }
  for (int a = 0; a < c->npools && st == HM_OK; a++)
    for (int b = a + 1; b < c->npools && st == HM_OK; b++)
      if (!link_of[(size_t)a * c->npools + b])
        st = hm_error(HM_ERR_SPEC, "%s: no link between pools \"%s\" and \"%s\"", p,
                      c->pools[a].name, c->pools[b].name);
  free(link_of);
  HM_TRY(st);

  HM_TRY(hm_json_array(j, root, "hosts", 1, &arr, &n));
  hm_json_path_key(p, root, "hosts");
  if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one host group, got []", p);
  if (n > HM_CLUSTER_MAX_GROUPS)
    return hm_error(HM_ERR_SPEC, "%s: %d host groups, more than %d (use \"count\")", p, n,
                    HM_CLUSTER_MAX_GROUPS);
  c->groups = hm_calloc((size_t)n, sizeof *c->groups, "host groups");
  if (!c->groups) return HM_ERR_NOMEM;
  i = 0;
  for (const cJSON *e = arr->child; e; e = e->next, i++) {
    hm_host_group *g = &c->groups[i];
    c->ngroups = i + 1; /* counted before reading so hm_cluster_free sees partial host names */
    HM_TRY(read_host_group(c, e, hm_json_path_index(q, p, i), i, g));
    for (int k = 0; k < i; k++)
      if (strcmp(c->groups[k].name, g->name) == 0)
        return hm_error(HM_ERR_SPEC, "%s.name: host group \"%s\" is defined twice (also [%d])", q,
                        g->name, k);
    g->first_host = c->nhosts;
    g->first_rank = c->ndevices;
    c->nhosts += g->count;
    c->ndevices += g->count * g->devices_per_host;
    if (c->ndevices > HM_CLUSTER_MAX_DEVICES)
      return hm_error(HM_ERR_SPEC, "%s: the cluster exceeds %lld devices", q,
                      (long long)HM_CLUSTER_MAX_DEVICES);
    for (int k = 0; k < g->nkinds; k++) c->types[g->dev[k].type].count += g->count * g->dev[k].count;
  }

  /* Links that some host needs must be given; the error names the field to add. */
  for (int gi = 0; gi < c->ngroups; gi++) {
    const hm_host_group *g = &c->groups[gi];
    hm_json_path_index(q, p, gi);
    if (c->nhosts > 1 && g->nic.bandwidth <= 0)
      return hm_error(HM_ERR_SPEC,
                      "%s.nic: missing (expected a link object: the cluster has %lld hosts)", q,
                      (long long)c->nhosts);
    for (int k = 0; k < g->nkinds; k++) {
      const hm_device_type *dt = &c->types[g->dev[k].type];
      if (g->dev[k].count > 1 && dt->intra_link.bandwidth <= 0)
        return hm_error(HM_ERR_SPEC,
                        "%s.device_types[%d].intra_host_link: missing (expected a link object: "
                        "host group \"%s\" holds %d devices of type \"%s\" per host)",
                        root, g->dev[k].type, g->name, g->dev[k].count, dt->name);
    }
  }
  for (int t = 0; t < c->ntypes; t++)
    if (c->types[t].count == 0)
      return hm_error(HM_ERR_SPEC, "%s.device_types[%d]: device type \"%s\" is in no host", root, t,
                      c->types[t].name);
  return HM_OK;
}

hm_status hm_cluster_from_cjson(const cJSON *j, const char *root, hm_cluster *out) {
  memset(out, 0, sizeof *out);
  hm_status st = cluster_read(j, root ? root : "cluster", out);
  if (st != HM_OK) hm_cluster_free(out);
  return st;
}

hm_status hm_cluster_parse(const char *json, size_t len, const char *origin, hm_cluster *out) {
  memset(out, 0, sizeof *out);
  cJSON *j = NULL;
  HM_TRY(hm_json_parse(json, len, origin, "cluster", &j));
  hm_status st = hm_cluster_from_cjson(j, "cluster", out);
  cJSON_Delete(j);
  if (st != HM_OK && origin) hm_error_context(st, "%s: ", origin);
  return st;
}

hm_status hm_cluster_load(const char *path, hm_cluster *out) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(path, &text, &len));
  hm_status st = hm_cluster_parse(text, len, path, out);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------ */

#define ADD(expr)        \
  do {                   \
    if (!(expr)) goto fail; \
  } while (0)

cJSON *hm_cluster_to_cjson(const hm_cluster *c) {
  cJSON *j = cJSON_CreateObject();
  if (!j) return NULL;
  ADD(cJSON_AddNumberToObject(j, "version", 1));
  ADD(cJSON_AddStringToObject(j, "name", c->name));
  cJSON *types = cJSON_AddArrayToObject(j, "device_types");
  ADD(types);
  for (int i = 0; i < c->ntypes; i++) {
    const hm_device_type *dt = &c->types[i];
    cJSON *o = cJSON_CreateObject();
    ADD(o);
    cJSON_AddItemToArray(types, o);
    ADD(cJSON_AddStringToObject(o, "name", dt->name));
    cJSON *pf = cJSON_AddObjectToObject(o, "peak_flops");
    ADD(pf);
    for (int t = 0; t < HM_SPEC_DTYPE_COUNT; t++)
      if (dt->peak_flops[t] > 0) ADD(cJSON_AddNumberToObject(pf, dtype_names[t], dt->peak_flops[t]));
    ADD(cJSON_AddNumberToObject(o, "memory_bytes", dt->memory_bytes));
    ADD(cJSON_AddNumberToObject(o, "memory_bandwidth", dt->memory_bandwidth));
    ADD(cJSON_AddNumberToObject(o, "efficiency", dt->efficiency));
    if (dt->backend[0]) ADD(cJSON_AddStringToObject(o, "backend", dt->backend));
    if (dt->gemm_given) {
      cJSON *g = cJSON_AddObjectToObject(o, "gemm");
      ADD(g);
      ADD(cJSON_AddNumberToObject(g, "units", dt->gemm_units));
      ADD(cJSON_AddNumberToObject(g, "tile_m", dt->gemm_tile_m));
      ADD(cJSON_AddNumberToObject(g, "tile_n", dt->gemm_tile_n));
    }
    if (dt->intra_link.bandwidth > 0) {
      cJSON *l = hm_json_link_to_cjson(&dt->intra_link);
      ADD(l);
      cJSON_AddItemToObject(o, "intra_host_link", l);
    }
  }
  if (c->npools > 0) {
    cJSON *pools = cJSON_AddArrayToObject(j, "pools");
    ADD(pools);
    for (int i = 0; i < c->npools; i++) {
      cJSON *o = cJSON_CreateObject();
      ADD(o);
      cJSON_AddItemToArray(pools, o);
      ADD(cJSON_AddStringToObject(o, "name", c->pools[i].name));
    }
    cJSON *links = cJSON_AddArrayToObject(j, "pool_links");
    ADD(links);
    for (int i = 0; i < c->npool_links; i++) {
      const hm_pool_link *pl = &c->pool_links[i];
      cJSON *o = cJSON_CreateObject();
      ADD(o);
      cJSON_AddItemToArray(links, o);
      const char *names[2] = {c->pools[pl->a].name, c->pools[pl->b].name};
      cJSON *pn = cJSON_CreateStringArray(names, 2);
      ADD(pn);
      cJSON_AddItemToObject(o, "pools", pn);
      ADD(cJSON_AddNumberToObject(o, "bandwidth", pl->link.bandwidth));
      ADD(cJSON_AddNumberToObject(o, "latency", pl->link.latency));
    }
  }
  cJSON *hosts = cJSON_AddArrayToObject(j, "hosts");
  ADD(hosts);
  for (int i = 0; i < c->ngroups; i++) {
    const hm_host_group *g = &c->groups[i];
    cJSON *o = cJSON_CreateObject();
    ADD(o);
    cJSON_AddItemToArray(hosts, o);
    ADD(cJSON_AddStringToObject(o, "name", g->name));
    ADD(cJSON_AddNumberToObject(o, "count", (double)g->count));
    cJSON *devs = cJSON_AddArrayToObject(o, "devices");
    ADD(devs);
    for (int k = 0; k < g->nkinds; k++) {
      cJSON *d = cJSON_CreateObject();
      ADD(d);
      cJSON_AddItemToArray(devs, d);
      ADD(cJSON_AddStringToObject(d, "type", c->types[g->dev[k].type].name));
      ADD(cJSON_AddNumberToObject(d, "count", g->dev[k].count));
    }
    if (g->nic.bandwidth > 0) {
      cJSON *l = hm_json_link_to_cjson(&g->nic);
      ADD(l);
      cJSON_AddItemToObject(o, "nic", l);
      ADD(cJSON_AddNumberToObject(o, "nic_count", g->nic_count));
    }
    if (g->host_link.bandwidth > 0) {
      cJSON *l = hm_json_link_to_cjson(&g->host_link);
      ADD(l);
      cJSON_AddItemToObject(o, "host_link", l);
    }
    if (g->pool >= 0) ADD(cJSON_AddStringToObject(o, "pool", c->pools[g->pool].name));
    if (g->hostnames) {
      cJSON *hn = cJSON_AddArrayToObject(o, "hostnames");
      ADD(hn);
      for (int64_t h = 0; h < g->count; h++) {
        cJSON *s = cJSON_CreateString(g->hostnames[h]);
        ADD(s);
        cJSON_AddItemToArray(hn, s);
      }
    }
  }
  return j;
fail:
  cJSON_Delete(j);
  return NULL;
}

/* ---- ranks and links --------------------------------------------------------------------- */

hm_status hm_cluster_locate(const hm_cluster *c, int64_t rank, hm_rank_loc *out) {
  if (rank < 0 || rank >= c->ndevices)
    return hm_error(HM_ERR_INVALID_ARG, "rank %lld is outside the cluster's %lld devices",
                    (long long)rank, (long long)c->ndevices);
  /* Binary search over groups: first_rank is increasing. */
  int lo = 0, hi = c->ngroups - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo + 1) / 2;
    if (c->groups[mid].first_rank <= rank)
      lo = mid;
    else
      hi = mid - 1;
  }
  const hm_host_group *g = &c->groups[lo];
  int64_t off = rank - g->first_rank;
  out->group = lo;
  out->host_in_group = off / g->devices_per_host;
  out->host = g->first_host + out->host_in_group;
  int local = (int)(off % g->devices_per_host);
  out->local_device = local;
  for (int k = 0; k < g->nkinds; k++) {
    if (local < g->dev[k].count) {
      out->type = g->dev[k].type;
      out->index_in_type = local;
      return HM_OK;
    }
    local -= g->dev[k].count;
  }
  return hm_error(HM_ERR_INTERNAL, "rank %lld: host group \"%s\" is inconsistent", (long long)rank,
                  g->name);
}

hm_status hm_cluster_rank(const hm_cluster *c, int group, int64_t host_in_group, int type,
                          int index_in_type, int64_t *rank) {
  if (group < 0 || group >= c->ngroups)
    return hm_error(HM_ERR_INVALID_ARG, "host group %d does not exist", group);
  const hm_host_group *g = &c->groups[group];
  if (host_in_group < 0 || host_in_group >= g->count)
    return hm_error(HM_ERR_INVALID_ARG, "host group \"%s\" has no host %lld", g->name,
                    (long long)host_in_group);
  int local = 0;
  for (int k = 0; k < g->nkinds; k++) {
    if (g->dev[k].type == type) {
      if (index_in_type < 0 || index_in_type >= g->dev[k].count) break;
      *rank = g->first_rank + host_in_group * g->devices_per_host + local + index_in_type;
      return HM_OK;
    }
    local += g->dev[k].count;
  }
  return hm_error(HM_ERR_INVALID_ARG, "host group \"%s\" has no device %d of type %d", g->name,
                  index_in_type, type);
}

static const hm_link *pool_link(const hm_cluster *c, int a, int b) {
  if (a > b) {
    int t = a;
    a = b;
    b = t;
  }
  for (int k = 0; k < c->npool_links; k++)
    if (c->pool_links[k].a == a && c->pool_links[k].b == b) return &c->pool_links[k].link;
  return NULL;
}

hm_status hm_cluster_link(const hm_cluster *c, int ga, int ta, int gb, int tb, int same_host,
                          hm_link *out) {
  if (ga < 0 || ga >= c->ngroups || gb < 0 || gb >= c->ngroups || ta < 0 || ta >= c->ntypes ||
      tb < 0 || tb >= c->ntypes)
    return hm_error(HM_ERR_INVALID_ARG, "link query out of range (groups %d, %d; types %d, %d)",
                    ga, gb, ta, tb);
  *out = (hm_link){0, 0, 0, 0};
  if (same_host) {
    if (ga != gb)
      return hm_error(HM_ERR_INVALID_ARG, "devices of host groups %d and %d cannot share a host",
                      ga, gb);
    const hm_link *l = ta == tb ? &c->types[ta].intra_link : &c->groups[ga].host_link;
    if (l->bandwidth <= 0)
      return hm_error(HM_ERR_INVALID_ARG, "host group \"%s\" has no link between %s and %s",
                      c->groups[ga].name, c->types[ta].name, c->types[tb].name);
    *out = *l;
    return HM_OK;
  }
  const hm_host_group *a = &c->groups[ga], *b = &c->groups[gb];
  if (a->nic.bandwidth <= 0 || b->nic.bandwidth <= 0)
    return hm_error(HM_ERR_INVALID_ARG, "host groups \"%s\" and \"%s\" have no NIC", a->name,
                    b->name);
  out->bandwidth = fmin(a->nic.bandwidth, b->nic.bandwidth);
  out->latency = fmax(a->nic.latency, b->nic.latency);
  if (a->pool >= 0 && b->pool >= 0 && a->pool != b->pool) {
    const hm_link *pl = pool_link(c, a->pool, b->pool);
    if (!pl)
      return hm_error(HM_ERR_INTERNAL, "no link between pools %d and %d", a->pool, b->pool);
    out->bandwidth = fmin(out->bandwidth, pl->bandwidth);
    out->latency += pl->latency;
  }
  return HM_OK;
}

hm_status hm_cluster_link_ranks(const hm_cluster *c, int64_t ra, int64_t rb, hm_link *out) {
  hm_rank_loc a, b;
  HM_TRY(hm_cluster_locate(c, ra, &a));
  HM_TRY(hm_cluster_locate(c, rb, &b));
  return hm_cluster_link(c, a.group, a.type, b.group, b.type, a.host == b.host, out);
}
