/* The manifest of a distributed checkpoint (docs/runtime.md, "Checkpoints and failures"):
 * "<folder>/manifest.json" names every shard of one step with its size and XXH3-64, and is
 * renamed into place only once every shard is durable, so its presence is what makes the
 * folder a complete checkpoint. Reading checks every field; verifying checks the shards.
 * Not here: finding and pruning checkpoint folders (ckpt_keep.c), writing shards (the runtime). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

#define HM_MANIFEST_FORMAT "hetmix-checkpoint"
#define HM_MANIFEST_VERSION 2 /* 2: shards of tensor-parallel stages (tp_rank, tp_size); 1 still read */
#define HM_MANIFEST_MAX_BYTES (1u << 20)

static void hm_hex64(char out[17], uint64_t v) { snprintf(out, 17, "%016" PRIx64, v); }

int hm_ckpt_manifest_nshards(const hm_ckpt_manifest *m) { return m->nshards > 0 ? m->nshards : m->nstages; }

int hm_ckpt_manifest_find(const hm_ckpt_manifest *m, int stage, int tp_rank) {
  for (int i = 0; i < hm_ckpt_manifest_nshards(m); i++)
    if (m->shards[i].stage == stage && m->shards[i].tp_rank == tp_rank) return i;
  return -1;
}

void hm_ckpt_shard_name(int stage, int tp_rank, int tp_size, char *out, size_t cap) {
  if (tp_size > 1) snprintf(out, cap, "stage%d.tp%d.hmc", stage, tp_rank);
  else snprintf(out, cap, "stage%d.hmc", stage);
}

/* 1 when some shard is one of a tensor-parallel stage (the manifest then needs version 2). */
static int hm_manifest_has_tp(const hm_ckpt_manifest *m) {
  for (int i = 0; i < hm_ckpt_manifest_nshards(m); i++)
    if (m->shards[i].tp_size > 1) return 1;
  return 0;
}

static cJSON *hm_manifest_json(const hm_ckpt_manifest *m) {
  cJSON *j = cJSON_CreateObject();
  char hex[17];
  const int tp = hm_manifest_has_tp(m); /* version 1 where it suffices, for older readers */
  cJSON_AddStringToObject(j, "format", HM_MANIFEST_FORMAT);
  cJSON_AddNumberToObject(j, "version", tp ? 2 : 1);
  hm_hex64(hex, m->run_id);
  cJSON_AddStringToObject(j, "run_id", hex);
  cJSON_AddNumberToObject(j, "step", (double)m->step);
  cJSON_AddNumberToObject(j, "data_position", (double)m->data_position);
  cJSON_AddNumberToObject(j, "stages", m->nstages);
  cJSON_AddNumberToObject(j, "world", m->world);
  cJSON *arr = cJSON_AddArrayToObject(j, "shards");
  for (int s = 0; s < hm_ckpt_manifest_nshards(m); s++) {
    const hm_ckpt_shard_info *i = &m->shards[s];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "stage", i->stage);
    if (tp) {
      cJSON_AddNumberToObject(o, "tp_rank", i->tp_rank);
      cJSON_AddNumberToObject(o, "tp_size", i->tp_size > 1 ? i->tp_size : 1);
    }
    cJSON_AddStringToObject(o, "file", i->file);
    cJSON_AddNumberToObject(o, "bytes", (double)i->bytes);
    hm_hex64(hex, i->xxh3);
    cJSON_AddStringToObject(o, "xxh3", hex);
    cJSON_AddItemToArray(arr, o);
  }
  return j;
}

hm_status hm_ckpt_manifest_write(const char *dir, const hm_ckpt_manifest *m) {
  if (m->nstages < 1 || m->nstages > HM_CKPT_MAX_SHARDS || hm_ckpt_manifest_nshards(m) < m->nstages ||
      hm_ckpt_manifest_nshards(m) > HM_CKPT_MAX_SHARDS)
    return hm_error(HM_ERR_INVALID_ARG, "manifest: %d stages and %d shards, need 1..%d", m->nstages,
                    hm_ckpt_manifest_nshards(m), HM_CKPT_MAX_SHARDS);
  cJSON *j = hm_manifest_json(m);
  char *txt = j ? cJSON_Print(j) : NULL;
  cJSON_Delete(j);
  if (!txt) return hm_error(HM_ERR_NOMEM, "manifest of %s", dir);
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, HM_CKPT_MANIFEST);
  size_t n = strlen(txt);
  txt[n] = '\n'; /* cJSON's terminator becomes the final newline */
  hm_status st = hm_atomic_write_file(path, txt, n + 1);
  free(txt);
  return st;
}

/* A non-negative whole number no larger than 2^53 (exact in a JSON double). */
static int hm_json_u64(const cJSON *o, const char *key, uint64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0 ||
      v->valuedouble != (double)(uint64_t)v->valuedouble)
    return -1;
  *out = (uint64_t)v->valuedouble;
  return 0;
}

static int hm_json_hex(const cJSON *o, const char *key, uint64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(v) || strlen(v->valuestring) != 16 || strspn(v->valuestring, "0123456789abcdef") != 16) return -1;
  *out = strtoull(v->valuestring, NULL, 16);
  return 0;
}

/* A shard's file name: "stage<digits>.hmc", nothing that could leave the folder. */
static int hm_shard_name_ok(const char *name) {
  size_t nd = strncmp(name, "stage", 5) == 0 ? strspn(name + 5, "0123456789") : 0;
  return nd > 0 && nd < 6 && strcmp(name + 5 + nd, ".hmc") == 0;
}

/* Shard k of a manifest: in order, stage by stage, each stage's tensor-parallel ranks 0..size-1
 * (*stage, *rank: where the list stands); version 1 lists one unsplit shard per stage. */
static hm_status hm_manifest_shard_parse(const cJSON *o, const char *path, int version, int k, int *stage, int *rank,
                                         hm_ckpt_shard_info *i) {
#define HM_BAD(...) hm_error(HM_ERR_CORRUPT, "manifest %s: " __VA_ARGS__)
  uint64_t s = 0, r = 0, size = 1;
  const cJSON *file = cJSON_GetObjectItemCaseSensitive(o, "file");
  if (hm_json_u64(o, "stage", &s) || s != (uint64_t)*stage)
    return HM_BAD("shard %d does not say \"stage\": %d", path, k, *stage);
  if (version >= 2 && (hm_json_u64(o, "tp_rank", &r) || hm_json_u64(o, "tp_size", &size) || size < 1 || size > 64 ||
                       r != (uint64_t)*rank))
    return HM_BAD("shard %d (stage %d) does not say \"tp_rank\": %d with a \"tp_size\" of 1..64", path, k, *stage,
                  *rank);
  char want[64];
  hm_ckpt_shard_name(*stage, *rank, (int)size, want, sizeof want);
  if (!cJSON_IsString(file) || (version == 1 ? !hm_shard_name_ok(file->valuestring) : strcmp(file->valuestring, want) != 0))
    return HM_BAD("shard %d's \"file\" is not %s", path, k, version == 1 ? "a name stage<s>.hmc" : want);
  if (hm_json_u64(o, "bytes", &i->bytes) || hm_json_hex(o, "xxh3", &i->xxh3))
    return HM_BAD("shard %d's \"bytes\" or \"xxh3\" is missing or malformed", path, k);
  i->stage = *stage, i->tp_rank = *rank, i->tp_size = (int)size;
  hm_strcpy(i->file, sizeof i->file, file->valuestring);
  if (++*rank == (int)size) ++*stage, *rank = 0;
  return HM_OK;
#undef HM_BAD
}

static hm_status hm_manifest_parse(const cJSON *j, const char *path, hm_ckpt_manifest *m) {
#define HM_BAD(...) hm_error(HM_ERR_CORRUPT, "manifest %s: " __VA_ARGS__)
  memset(m, 0, sizeof *m);
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(j, "format");
  uint64_t version = 0, stages = 0, world = 0;
  if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, HM_MANIFEST_FORMAT) != 0)
    return HM_BAD("\"format\" is not \"%s\"", path, HM_MANIFEST_FORMAT);
  if (hm_json_u64(j, "version", &version) || version < 1 || version > HM_MANIFEST_VERSION)
    return HM_BAD("\"version\" is not 1..%d", path, HM_MANIFEST_VERSION);
  if (hm_json_hex(j, "run_id", &m->run_id)) return HM_BAD("\"run_id\" is not 16 hex digits", path);
  if (hm_json_u64(j, "step", &m->step) || hm_json_u64(j, "data_position", &m->data_position))
    return HM_BAD("\"step\" or \"data_position\" is not a whole number", path);
  if (hm_json_u64(j, "stages", &stages) || stages < 1 || stages > HM_CKPT_MAX_SHARDS)
    return HM_BAD("\"stages\" is not 1..%d", path, HM_CKPT_MAX_SHARDS);
  if (hm_json_u64(j, "world", &world) || world < stages || world > 1u << 20)
    return HM_BAD("\"world\" is not a worker count of at least \"stages\"", path);
  m->nstages = (int)stages, m->world = (int)world;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "shards");
  const int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
  if (version == 1 ? n != m->nstages : n < m->nstages || n > HM_CKPT_MAX_SHARDS)
    return HM_BAD("\"shards\" does not list %s%d shards", path, version == 1 ? "" : "at least ", m->nstages);
  m->nshards = n;
  int k = 0, stage = 0, rank = 0;
  for (const cJSON *o = arr->child; o; o = o->next, k++)
    HM_TRY(hm_manifest_shard_parse(o, path, (int)version, k, &stage, &rank, &m->shards[k]));
  if (stage != m->nstages) return HM_BAD("\"shards\" end at stage %d of %d", path, stage, m->nstages);
  return HM_OK;
#undef HM_BAD
}

/* Splits a --resume argument into the folder and its manifest's path. */
static hm_status hm_manifest_paths(const char *arg, char *dir, size_t cap, char *file, size_t fcap) {
  const size_t n = strlen(arg), k = strlen(HM_CKPT_MANIFEST);
  const int is_file = n >= k && strcmp(arg + n - k, HM_CKPT_MANIFEST) == 0 && (n == k || arg[n - k - 1] == '/');
  char d[4200];
  if (is_file) {
    if (n == k) hm_strcpy(d, sizeof d, ".");
    else snprintf(d, sizeof d, "%.*s", (int)(n - k - 1), arg);
  } else if (hm_strcpy(d, sizeof d, arg) != 0) {
    return hm_error(HM_ERR_INVALID_ARG, "checkpoint path too long: %s", arg);
  }
  if (!d[0]) hm_strcpy(d, sizeof d, "/");
  if (snprintf(file, fcap, "%s/%s", d, HM_CKPT_MANIFEST) >= (int)fcap || (dir && hm_strcpy(dir, cap, d) != 0))
    return hm_error(HM_ERR_INVALID_ARG, "checkpoint path too long: %s", arg);
  return HM_OK;
}

hm_status hm_ckpt_manifest_read(const char *path, hm_ckpt_manifest *m, char *dir, size_t cap) {
  char file[4300];
  HM_TRY(hm_manifest_paths(path, dir, cap, file, sizeof file));
  FILE *f = fopen(file, "rb");
  if (!f) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "manifest %s: %s", file, strerror(errno));
  char *buf = hm_malloc(HM_MANIFEST_MAX_BYTES + 1, "manifest");
  size_t got = buf ? fread(buf, 1, HM_MANIFEST_MAX_BYTES + 1, f) : 0;
  fclose(f);
  if (!buf) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  if (got > HM_MANIFEST_MAX_BYTES) st = hm_error(HM_ERR_CORRUPT, "manifest %s: larger than %u bytes", file, HM_MANIFEST_MAX_BYTES);
  cJSON *j = NULL;
  if (st == HM_OK) {
    j = cJSON_ParseWithLength(buf, got);
    if (!cJSON_IsObject(j)) st = hm_error(HM_ERR_CORRUPT, "manifest %s: not a JSON object", file);
  }
  if (st == HM_OK) st = hm_manifest_parse(j, file, m);
  cJSON_Delete(j);
  free(buf);
  return st;
}

hm_status hm_ckpt_file_hash(const char *path, uint64_t *xxh3, uint64_t *bytes) {
  FILE *f = fopen(path, "rb");
  if (!f) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "%s: %s", path, strerror(errno));
  XXH3_state_t *h = XXH3_createState();
  char *buf = hm_malloc(1 << 20, "hash buffer");
  hm_status st = h && buf ? HM_OK : hm_error(HM_ERR_NOMEM, "hashing %s", path);
  uint64_t total = 0;
  if (st == HM_OK) XXH3_64bits_reset(h);
  for (size_t n; st == HM_OK && (n = fread(buf, 1, 1 << 20, f)) > 0; total += n) XXH3_64bits_update(h, buf, n);
  if (st == HM_OK && ferror(f)) st = hm_error(HM_ERR_IO, "reading %s: %s", path, strerror(errno));
  if (st == HM_OK) *xxh3 = XXH3_64bits_digest(h), *bytes = total;
  free(buf);
  if (h) XXH3_freeState(h);
  fclose(f);
  return st;
}

hm_status hm_ckpt_manifest_verify(const char *dir, const hm_ckpt_manifest *m) {
  for (int s = 0; s < hm_ckpt_manifest_nshards(m); s++) {
    const hm_ckpt_shard_info *i = &m->shards[s];
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, i->file);
    uint64_t h = 0, n = 0;
    HM_TRY(hm_ckpt_file_hash(path, &h, &n));
    if (n != i->bytes || h != i->xxh3)
      return hm_error(HM_ERR_CORRUPT, "shard %s is %llu bytes with XXH3 %016llx; the manifest says %llu bytes, %016llx",
                      path, (unsigned long long)n, (unsigned long long)h, (unsigned long long)i->bytes,
                      (unsigned long long)i->xxh3);
  }
  return HM_OK;
}
