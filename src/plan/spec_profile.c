/* Measured profile: per device type and layer kind, forward/backward seconds at given
 * micro-batch sizes, and measured links between device types. Reader, writer (used by the
 * runtime's profiler), name resolution and lookup with interpolation. The planner prefers
 * these figures over its analytic estimates; this file only stores and looks them up. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "plan/spec_json.h"
#include "plan/spec_profile_staging.h"
#include "util/util.h"

void hm_profile_free(hm_profile *p) {
  if (!p) return;
  free(p->layers);
  free(p->links);
  free(p->staging);
  memset(p, 0, sizeof *p);
}

static hm_status grow(void **arr, int *cap, int need, size_t elem, const char *what) {
  if (need <= *cap) return HM_OK;
  int ncap = *cap ? *cap * 2 : 16;
  while (ncap < need) ncap *= 2;
  void *n = realloc(*arr, (size_t)ncap * elem);
  if (!n) return hm_error(HM_ERR_NOMEM, "cannot grow the profile's %s to %d entries", what, ncap);
  *arr = n;
  *cap = ncap;
  return HM_OK;
}

static hm_status layer_valid(const hm_profile_layer *e) {
  if (!e->device_type[0] || !e->kind[0] || e->micro_batch < 1 || !(e->fwd_s >= 0) ||
      !(e->bwd_s >= 0) || !(e->mem_bytes >= 0) || e->tp < 0 || e->tp > 4096)
    return hm_error(HM_ERR_INVALID_ARG,
                    "profile entry (%s, %s, micro-batch %lld) has an empty name, a negative "
                    "figure or a tp outside 0..4096",
                    e->device_type, e->kind, (long long)e->micro_batch);
  return HM_OK;
}

static hm_status link_valid(const hm_profile_link *e) {
  if (!e->type_a[0] || !e->type_b[0] || !(e->link.bandwidth > 0) || !(e->link.latency >= 0))
    return hm_error(HM_ERR_INVALID_ARG, "profile link (%s, %s) has an empty name or bad figures",
                    e->type_a, e->type_b);
  return HM_OK;
}

static int tp_of(const hm_profile_layer *e) { return e->tp > 1 ? e->tp : 1; }

static int same_layer(const hm_profile_layer *a, const hm_profile_layer *b) {
  return a->micro_batch == b->micro_batch && tp_of(a) == tp_of(b) && strcmp(a->kind, b->kind) == 0 &&
         strcmp(a->device_type, b->device_type) == 0;
}

static int same_link(const hm_profile_link *a, const hm_profile_link *b) {
  return a->inter_host == b->inter_host &&
         ((strcmp(a->type_a, b->type_a) == 0 && strcmp(a->type_b, b->type_b) == 0) ||
          (strcmp(a->type_a, b->type_b) == 0 && strcmp(a->type_b, b->type_a) == 0));
}

static hm_status duplicate_layer(const hm_profile_layer *e, int first, int second) {
  char tp[32] = "";
  if (tp_of(e) > 1) snprintf(tp, sizeof tp, ", tp %d", tp_of(e));
  return hm_error(HM_ERR_SPEC,
                  "profile.layers[%d]: a second entry for device type \"%s\", kind \"%s\", "
                  "micro_batch %lld%s (first is [%d])",
                  second, e->device_type, e->kind, (long long)e->micro_batch, tp, first);
}

static hm_status duplicate_link(const hm_profile_link *e, int first, int second) {
  return hm_error(HM_ERR_SPEC,
                  "profile.links[%d]: a second %s link between \"%s\" and \"%s\" (first is [%d])",
                  second, e->inter_host ? "inter_host" : "intra_host", e->type_a, e->type_b, first);
}

static hm_status append_layer(hm_profile *p, const hm_profile_layer *e) {
  HM_TRY(grow((void **)&p->layers, &p->cap_layers, p->nlayers + 1, sizeof *p->layers, "layers"));
  p->layers[p->nlayers] = *e;
  p->layers[p->nlayers].type = -1;
  p->nlayers++;
  return HM_OK;
}

static hm_status append_link(hm_profile *p, const hm_profile_link *e) {
  HM_TRY(grow((void **)&p->links, &p->cap_links, p->nlinks + 1, sizeof *p->links, "links"));
  p->links[p->nlinks] = *e;
  p->links[p->nlinks].a = p->links[p->nlinks].b = -1;
  p->nlinks++;
  return HM_OK;
}

hm_status hm_profile_add_layer(hm_profile *p, const hm_profile_layer *e) {
  HM_TRY(layer_valid(e));
  for (int i = 0; i < p->nlayers; i++)
    if (same_layer(&p->layers[i], e)) return duplicate_layer(e, i, p->nlayers);
  return append_layer(p, e);
}

hm_status hm_profile_add_link(hm_profile *p, const hm_profile_link *e) {
  HM_TRY(link_valid(e));
  for (int i = 0; i < p->nlinks; i++)
    if (same_link(&p->links[i], e)) return duplicate_link(e, i, p->nlinks);
  return append_link(p, e);
}

/* The reader appends entries unchecked, then finds repeats by sorting (a file may hold a million
 * entries: 5e11 comparisons of each with every earlier one). It reports what hm_profile_add_*
 * would have: the earliest entry that repeats an earlier one, and the first. */
typedef struct entry_key {
  const char *a, *b; /* names (a link's in a fixed order) */
  int64_t c;         /* micro-batch x 2^16 + tp, or scope */
  int index;         /* in the file */
} entry_key;

static int key_cmp(const entry_key *x, const entry_key *y) {
  int c = strcmp(x->a, y->a);
  if (!c) c = strcmp(x->b, y->b);
  if (!c) c = (x->c > y->c) - (x->c < y->c);
  return c;
}

static int cmp_entry(const void *a, const void *b) {
  const entry_key *x = a, *y = b;
  int c = key_cmp(x, y);
  return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* Sorts k; returns the index of the earliest repeat (its first occurrence in *first), or -1. */
static int earliest_repeat(entry_key *k, int n, int *first) {
  qsort(k, (size_t)n, sizeof *k, cmp_entry);
  int second = -1;
  for (int i = 1; i < n; i++) /* a run of equal keys is in file order: its second is k[i] */
    if (!key_cmp(&k[i], &k[i - 1]) && (i < 2 || key_cmp(&k[i - 1], &k[i - 2])) &&
        (second < 0 || k[i].index < second)) {
      second = k[i].index;
      *first = k[i - 1].index;
    }
  return second;
}

static hm_status check_repeats(const hm_profile *p, int links) {
  const int n = links ? p->nlinks : p->nlayers;
  entry_key *k = hm_malloc((size_t)(n ? n : 1) * sizeof *k, "profile check");
  if (!k) return HM_ERR_NOMEM;
  for (int i = 0; i < n; i++) {
    if (!links) {
      const hm_profile_layer *e = &p->layers[i];
      k[i] = (entry_key){e->device_type, e->kind, e->micro_batch * 65536 + tp_of(e), i};
    } else {
      const hm_profile_link *e = &p->links[i];
      const int swap = strcmp(e->type_a, e->type_b) > 0;
      k[i] = (entry_key){swap ? e->type_b : e->type_a, swap ? e->type_a : e->type_b,
                         e->inter_host, i};
    }
  }
  int first = 0;
  const int second = earliest_repeat(k, n, &first);
  free(k);
  if (second < 0) return HM_OK;
  return links ? duplicate_link(&p->links[second], first, second)
               : duplicate_layer(&p->layers[second], first, second);
}

/* Lists the cluster's device type names for "unknown device type" messages. */
static void type_list(const hm_cluster *c, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (int i = 0; i < c->ntypes; i++) {
    int w = snprintf(buf + n, cap - n, "%s\"%s\"", i ? ", " : "", c->types[i].name);
    if (w < 0 || (size_t)w >= cap - n) break;
    n += (size_t)w;
  }
}

hm_status hm_profile_resolve(hm_profile *p, const hm_cluster *c, const hm_model *m) {
  char known[256];
  if (m && p->model[0] && strcmp(p->model, m->name) != 0)
    return hm_error(HM_ERR_SPEC, "profile.model: measured for model \"%s\", not \"%s\"", p->model,
                    m->name);
  for (int i = 0; i < p->nlayers; i++) {
    hm_profile_layer *e = &p->layers[i];
    e->type = hm_cluster_find_type(c, e->device_type);
    if (e->type < 0) {
      type_list(c, known, sizeof known);
      return hm_error(HM_ERR_SPEC, "profile.layers[%d].device_type: unknown device type \"%s\" "
                      "(the cluster has %s)", i, e->device_type, known);
    }
    if (m) {
      int found = 0;
      for (int k = 0; k < m->nlayers && !found; k++) found = strcmp(m->layers[k].kind, e->kind) == 0;
      if (!found)
        return hm_error(HM_ERR_SPEC, "profile.layers[%d].kind: the model has no layer of kind \"%s\"",
                        i, e->kind);
    }
  }
  for (int i = 0; i < p->nlinks; i++) {
    hm_profile_link *e = &p->links[i];
    e->a = hm_cluster_find_type(c, e->type_a);
    e->b = hm_cluster_find_type(c, e->type_b);
    if (e->a < 0 || e->b < 0) {
      type_list(c, known, sizeof known);
      return hm_error(HM_ERR_SPEC, "profile.links[%d].types[%d]: unknown device type \"%s\" "
                      "(the cluster has %s)", i, e->a < 0 ? 0 : 1,
                      e->a < 0 ? e->type_a : e->type_b, known);
    }
  }
  return hm_profile_staging_resolve(p, c);
}

int hm_profile_layer_time(const hm_profile *p, int type, const char *kind, int64_t mb,
                          double *fwd_s, double *bwd_s) {
  return hm_profile_layer_time_tp(p, type, kind, mb, 1, fwd_s, bwd_s);
}

int hm_profile_layer_time_tp(const hm_profile *p, int type, const char *kind, int64_t mb, int tp,
                             double *fwd_s, double *bwd_s) {
  const hm_profile_layer *lo = NULL, *hi = NULL; /* nearest sizes below and above mb */
  if (tp < 1) tp = 1;
  for (int i = 0; i < p->nlayers; i++) {
    const hm_profile_layer *e = &p->layers[i];
    if (e->type != type || tp_of(e) != tp || strcmp(e->kind, kind) != 0) continue;
    if (e->micro_batch == mb) {
      *fwd_s = e->fwd_s;
      *bwd_s = e->bwd_s;
      return 1;
    }
    if (e->micro_batch < mb && (!lo || e->micro_batch > lo->micro_batch)) lo = e;
    if (e->micro_batch > mb && (!hi || e->micro_batch < hi->micro_batch)) hi = e;
  }
  if (!lo && !hi) return 0;
  if (lo && hi) {
    double w = (double)(mb - lo->micro_batch) / (double)(hi->micro_batch - lo->micro_batch);
    *fwd_s = lo->fwd_s + w * (hi->fwd_s - lo->fwd_s);
    *bwd_s = lo->bwd_s + w * (hi->bwd_s - lo->bwd_s);
    return 1;
  }
  const hm_profile_layer *e = lo ? lo : hi;
  double scale = (double)mb / (double)e->micro_batch;
  *fwd_s = e->fwd_s * scale;
  *bwd_s = e->bwd_s * scale;
  return 1;
}

int hm_profile_link_find(const hm_profile *p, int ta, int tb, int inter_host, hm_link *out) {
  for (int i = 0; i < p->nlinks; i++) {
    const hm_profile_link *e = &p->links[i];
    if (e->inter_host != (inter_host != 0)) continue;
    if ((e->a == ta && e->b == tb) || (e->a == tb && e->b == ta)) {
      *out = e->link;
      return 1;
    }
  }
  return 0;
}

int hm_profile_tp_allreduce_time(const hm_profile *p, int ranks, double bytes, double *seconds) {
  for (int i = 0; i < p->ntp_allreduce; i++)
    if (p->tp_allreduce[i].ranks == ranks) {
      *seconds = p->tp_allreduce[i].latency + bytes / p->tp_allreduce[i].bandwidth;
      return 1;
    }
  return 0;
}

int hm_profile_host_link(const hm_profile *p, int cross, hm_link *out) {
  if (!p || cross < 0 || cross > 1 || !(p->host_link[cross].bandwidth > 0)) return 0;
  *out = p->host_link[cross];
  return 1;
}

/* ---- reader ------------------------------------------------------------------------------ */

static const char *const host_link_classes[] = {"pool", "cross", NULL};

/* "host_links": {"pool": {"bandwidth": B, "latency": L, "burst": N}, "cross": {...}}, each class
 * optional, "burst" too (0: a plain link). */
static hm_status host_links_read(const cJSON *j, const char *root, hm_profile *p) {
  static const char *const keys[] = {"bandwidth", "latency", "burst", NULL};
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "host_links");
  if (!o) return HM_OK;
  char path[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  hm_json_path_key(path, root, "host_links");
  HM_TRY(hm_json_check_object(o, path, host_link_classes));
  for (int k = 0; k < 2; k++) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, host_link_classes[k]);
    if (!e) continue;
    hm_json_path_key(q, path, host_link_classes[k]);
    HM_TRY(hm_json_check_object(e, q, keys));
    HM_TRY(hm_json_number(e, q, "bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &p->host_link[k].bandwidth));
    HM_TRY(hm_json_number(e, q, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &p->host_link[k].latency));
    HM_TRY(hm_json_number(e, q, "burst", 0, HM_RANGE_NONNEG(1e12), 0, &p->host_link[k].burst));
  }
  return HM_OK;
}

static hm_status tp_allreduce_read(const cJSON *j, const char *root, hm_profile *p) {
  static const char *const keys[] = {"ranks", "bandwidth", "latency", NULL};
  char path[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(j, root, "tp_allreduce", 0, &arr, &n));
  hm_json_path_key(path, root, "tp_allreduce");
  if (n > HM_PROFILE_MAX_TP_ALLREDUCE)
    return hm_error(HM_ERR_SPEC, "%s: %d entries, at most %d", path, n, HM_PROFILE_MAX_TP_ALLREDUCE);
  int i = 0;
  for (const cJSON *e = arr ? arr->child : NULL; e; e = e->next, i++) {
    hm_json_path_index(q, path, i);
    HM_TRY(hm_json_check_object(e, q, keys));
    hm_profile_allreduce a;
    memset(&a, 0, sizeof a);
    int64_t ranks = 0;
    HM_TRY(hm_json_int(e, q, "ranks", 1, 2, 64, 0, &ranks));
    a.ranks = (int)ranks;
    HM_TRY(hm_json_number(e, q, "bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &a.bandwidth));
    HM_TRY(hm_json_number(e, q, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &a.latency));
    for (int k = 0; k < p->ntp_allreduce; k++)
      if (p->tp_allreduce[k].ranks == a.ranks)
        return hm_error(HM_ERR_SPEC, "%s: a second entry for %d ranks (first is [%d])", q, a.ranks, k);
    p->tp_allreduce[p->ntp_allreduce++] = a;
  }
  return HM_OK;
}

static hm_status profile_read(const cJSON *j, const char *root, hm_profile *p) {
  static const char *const keys[] = {"version", "model", "layers", "links", "tp_allreduce", "staging", "host_links",
                                     NULL};
  static const char *const layer_keys[] = {"device_type", "kind",  "micro_batch",
                                           "fwd_s",       "bwd_s", "mem_bytes",
                                           "spread",      "reps",  "source",
                                           "tp",          NULL};
  static const char *const sources[] = {"profile", "run", NULL};
  static const char *const link_keys[] = {"types", "scope", "bandwidth", "latency", NULL};
  static const char *const scopes[] = {"intra_host", "inter_host", NULL};
  char path[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX], r[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(j, root, keys));
  HM_TRY(hm_json_version(j, root));
  HM_TRY(hm_json_name(j, root, "model", 0, "", p->model, sizeof p->model));

  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(j, root, "layers", 0, &arr, &n));
  hm_json_path_key(path, root, "layers");
  int i = 0;
  for (const cJSON *e = arr ? arr->child : NULL; e; e = e->next, i++) {
    hm_json_path_index(q, path, i);
    HM_TRY(hm_json_check_object(e, q, layer_keys));
    hm_profile_layer l;
    memset(&l, 0, sizeof l);
    HM_TRY(hm_json_name(e, q, "device_type", 1, NULL, l.device_type, sizeof l.device_type));
    HM_TRY(hm_json_name(e, q, "kind", 1, NULL, l.kind, sizeof l.kind));
    HM_TRY(hm_json_int(e, q, "micro_batch", 1, 1, 1000000000, 0, &l.micro_batch));
    HM_TRY(hm_json_number(e, q, "fwd_s", 1, HM_RANGE_NONNEG(1e6), 0, &l.fwd_s));
    HM_TRY(hm_json_number(e, q, "bwd_s", 1, HM_RANGE_NONNEG(1e6), 0, &l.bwd_s));
    HM_TRY(hm_json_number(e, q, "mem_bytes", 0, HM_RANGE_NONNEG(1e16), 0, &l.mem_bytes));
    HM_TRY(hm_json_number(e, q, "spread", 0, HM_RANGE_NONNEG(100), 0, &l.spread));
    int64_t reps = 0;
    HM_TRY(hm_json_int(e, q, "reps", 0, 0, 1000000, 0, &reps));
    l.reps = (int)reps;
    HM_TRY(hm_json_enum(e, q, "source", 0, sources, 0, &l.from_run));
    int64_t tp = 1;
    HM_TRY(hm_json_int(e, q, "tp", 0, 1, 4096, 1, &tp));
    l.tp = (int)tp;
    HM_TRY(append_layer(p, &l));
  }
  HM_TRY(check_repeats(p, 0));

  HM_TRY(hm_json_array(j, root, "links", 0, &arr, &n));
  hm_json_path_key(path, root, "links");
  i = 0;
  for (const cJSON *e = arr ? arr->child : NULL; e; e = e->next, i++) {
    hm_json_path_index(q, path, i);
    HM_TRY(hm_json_check_object(e, q, link_keys));
    hm_profile_link l;
    memset(&l, 0, sizeof l);
    const cJSON *types = NULL;
    int nt = 0;
    HM_TRY(hm_json_array(e, q, "types", 1, &types, &nt));
    hm_json_path_key(r, q, "types");
    if (nt != 2)
      return hm_error(HM_ERR_SPEC, "%s: expected two device type names, got %d entries", r, nt);
    const cJSON *t0 = types->child, *t1 = t0->next;
    const cJSON *tv[2] = {t0, t1};
    char *dst[2] = {l.type_a, l.type_b};
    for (int k = 0; k < 2; k++) {
      if (!cJSON_IsString(tv[k]) || !tv[k]->valuestring || !tv[k]->valuestring[0] ||
          strlen(tv[k]->valuestring) >= HM_SPEC_NAME_MAX) {
        char desc[64], rp[HM_JSON_PATH_MAX];
        hm_json_describe(tv[k], desc, sizeof desc);
        return hm_error(HM_ERR_SPEC, "%s: expected a device type name, got %s",
                        hm_json_path_index(rp, r, k), desc);
      }
      memcpy(dst[k], tv[k]->valuestring, strlen(tv[k]->valuestring) + 1);
    }
    int scope = 0;
    HM_TRY(hm_json_enum(e, q, "scope", 1, scopes, 0, &scope));
    l.inter_host = scope;
    HM_TRY(hm_json_number(e, q, "bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &l.link.bandwidth));
    HM_TRY(hm_json_number(e, q, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &l.link.latency));
    HM_TRY(append_link(p, &l));
  }
  HM_TRY(tp_allreduce_read(j, root, p));
  HM_TRY(host_links_read(j, root, p));
  HM_TRY(check_repeats(p, 1));
  return hm_profile_staging_read(j, root, p);
}

hm_status hm_profile_from_cjson(const cJSON *j, const char *root, hm_profile *out) {
  memset(out, 0, sizeof *out);
  hm_status st = profile_read(j, root ? root : "profile", out);
  if (st != HM_OK) hm_profile_free(out);
  return st;
}

hm_status hm_profile_parse(const char *json, size_t len, const char *origin, hm_profile *out) {
  memset(out, 0, sizeof *out);
  cJSON *j = NULL;
  HM_TRY(hm_json_parse(json, len, origin, "profile", &j));
  hm_status st = hm_profile_from_cjson(j, "profile", out);
  cJSON_Delete(j);
  if (st != HM_OK && origin) hm_error_context(st, "%s: ", origin);
  return st;
}

hm_status hm_profile_load(const char *path, hm_profile *out) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(path, &text, &len));
  hm_status st = hm_profile_parse(text, len, path, out);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------ */

static int host_links_write(cJSON *j, const hm_profile *p) {
  if (!(p->host_link[0].bandwidth > 0) && !(p->host_link[1].bandwidth > 0)) return 1;
  cJSON *o = cJSON_AddObjectToObject(j, "host_links");
  if (!o) return 0;
  for (int k = 0; k < 2; k++) {
    if (!(p->host_link[k].bandwidth > 0)) continue;
    cJSON *e = cJSON_AddObjectToObject(o, host_link_classes[k]);
    if (!e || !cJSON_AddNumberToObject(e, "bandwidth", p->host_link[k].bandwidth) ||
        !cJSON_AddNumberToObject(e, "latency", p->host_link[k].latency) ||
        !cJSON_AddNumberToObject(e, "burst", p->host_link[k].burst))
      return 0;
  }
  return 1;
}

cJSON *hm_profile_to_cjson(const hm_profile *p) {
  cJSON *j = cJSON_CreateObject();
  cJSON *layers = NULL, *links = NULL;
  if (!j || !cJSON_AddNumberToObject(j, "version", 1)) goto fail;
  if (p->model[0] && !cJSON_AddStringToObject(j, "model", p->model)) goto fail;
  if (!(layers = cJSON_AddArrayToObject(j, "layers"))) goto fail;
  for (int i = 0; i < p->nlayers; i++) {
    const hm_profile_layer *e = &p->layers[i];
    cJSON *o = cJSON_CreateObject();
    if (!o) goto fail;
    cJSON_AddItemToArray(layers, o);
    if (!cJSON_AddStringToObject(o, "device_type", e->device_type) ||
        !cJSON_AddStringToObject(o, "kind", e->kind) ||
        !cJSON_AddNumberToObject(o, "micro_batch", (double)e->micro_batch) ||
        !cJSON_AddNumberToObject(o, "fwd_s", e->fwd_s) ||
        !cJSON_AddNumberToObject(o, "bwd_s", e->bwd_s) ||
        (e->mem_bytes > 0 && !cJSON_AddNumberToObject(o, "mem_bytes", e->mem_bytes)) ||
        (e->spread > 0 && !cJSON_AddNumberToObject(o, "spread", e->spread)) ||
        (e->reps > 0 && !cJSON_AddNumberToObject(o, "reps", e->reps)) ||
        (e->tp > 1 && !cJSON_AddNumberToObject(o, "tp", e->tp)) ||
        (e->from_run && !cJSON_AddStringToObject(o, "source", "run")))
      goto fail;
  }
  if (!(links = cJSON_AddArrayToObject(j, "links"))) goto fail;
  for (int i = 0; i < p->nlinks; i++) {
    const hm_profile_link *e = &p->links[i];
    cJSON *o = cJSON_CreateObject();
    if (!o) goto fail;
    cJSON_AddItemToArray(links, o);
    const char *names[2] = {e->type_a, e->type_b};
    cJSON *t = cJSON_CreateStringArray(names, 2);
    if (!t) goto fail;
    cJSON_AddItemToObject(o, "types", t);
    if (!cJSON_AddStringToObject(o, "scope", e->inter_host ? "inter_host" : "intra_host") ||
        !cJSON_AddNumberToObject(o, "bandwidth", e->link.bandwidth) ||
        !cJSON_AddNumberToObject(o, "latency", e->link.latency))
      goto fail;
  }
  if (p->ntp_allreduce > 0) {
    cJSON *ar = cJSON_AddArrayToObject(j, "tp_allreduce");
    if (!ar) goto fail;
    for (int i = 0; i < p->ntp_allreduce; i++) {
      cJSON *o = cJSON_CreateObject();
      if (!o) goto fail;
      cJSON_AddItemToArray(ar, o);
      if (!cJSON_AddNumberToObject(o, "ranks", p->tp_allreduce[i].ranks) ||
          !cJSON_AddNumberToObject(o, "bandwidth", p->tp_allreduce[i].bandwidth) ||
          !cJSON_AddNumberToObject(o, "latency", p->tp_allreduce[i].latency))
        goto fail;
    }
  }
  if (!hm_profile_staging_write(j, p) || !host_links_write(j, p)) goto fail;
  return j;
fail:
  cJSON_Delete(j);
  return NULL;
}

hm_status hm_profile_write(const hm_profile *p, const char *path) {
  cJSON *j = hm_profile_to_cjson(p);
  if (!j) return hm_error(HM_ERR_NOMEM, "cannot build the profile JSON for %s", path);
  hm_status st = hm_json_write_file(j, path, "profile");
  cJSON_Delete(j);
  return st;
}
