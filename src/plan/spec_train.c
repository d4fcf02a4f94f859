/* Training spec (global batch, micro-batch sizes, precision, optimizer, recompute) with its
 * JSON reader and writer, and hm_spec_resolve, which completes and cross-checks the specs once
 * they are all read. Memory and time formulas that use these figures live in the planner. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "plan/spec_json.h"
#include "util/util.h"

static const char *const precision_names[] = {"auto", "fp32", "bf16-mixed", "fp16-mixed", NULL};
static const char *const recompute_names[HM_RECOMPUTE_COUNT + 1] = {"none", "full", NULL};
static const char *const optimizer_names[] = {"adamw", NULL};

const char *hm_precision_name(hm_precision p) {
  return (p >= HM_PREC_AUTO && p < HM_PREC_COUNT) ? precision_names[p + 1] : "unknown";
}

const char *hm_recompute_name(hm_recompute r) {
  return (r >= 0 && r < HM_RECOMPUTE_COUNT) ? recompute_names[r] : "unknown";
}

void hm_train_default(hm_train *t) {
  memset(t, 0, sizeof *t);
  t->global_batch = 8;
  t->n_micro_batch_sizes = 4;
  for (int i = 0; i < 4; i++) t->micro_batch_sizes[i] = (int64_t)1 << i;
  t->precision = HM_PREC_AUTO;
  t->compute_dtype = HM_DTYPE_FP32;
  hm_strcpy(t->optimizer, sizeof t->optimizer, "adamw");
  t->weight_bytes = t->grad_bytes = t->master_bytes = t->optimizer_bytes = -1;
  t->recompute = HM_RECOMPUTE_NONE;
  t->zero_stage = 0;
  t->memory_fraction = 0.9;
  t->zip_below = 1.25e9;
}

double hm_layer_train_flops(const hm_layer *l, const hm_train *t) {
  return l->fwd_flops + l->bwd_flops + (t->recompute == HM_RECOMPUTE_FULL ? l->fwd_flops : 0);
}

double hm_layer_held_act_bytes(const hm_layer *l, const hm_train *t) {
  return t->recompute == HM_RECOMPUTE_FULL ? l->in_bytes : l->act_bytes;
}

/* ---- reader ------------------------------------------------------------------------------ */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* "compression": {"ratio", "compress_bw", "decompress_bw", "below"} (docs/spec.md). */
static hm_status zip_read(const cJSON *j, const char *root, hm_train *t) {
  static const char *const keys[] = {"ratio", "compress_bw", "decompress_bw", "below", NULL};
  const cJSON *z = NULL;
  char p[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_object(j, root, "compression", 0, &z));
  if (!z) return HM_OK;
  hm_json_path_key(p, root, "compression");
  HM_TRY(hm_json_check_object(z, p, keys));
  HM_TRY(hm_json_number(z, p, "ratio", 1, HM_RANGE_POSITIVE(1), 0, &t->zip.ratio));
  HM_TRY(hm_json_number(z, p, "compress_bw", 1, HM_RANGE_POSITIVE(1e16), 0, &t->zip.compress_bw));
  HM_TRY(hm_json_number(z, p, "decompress_bw", 1, HM_RANGE_POSITIVE(1e16), 0, &t->zip.decompress_bw));
  return hm_json_number(z, p, "below", 0, HM_RANGE_POSITIVE(1e16), 1.25e9, &t->zip_below);
}

static hm_status train_read(const cJSON *j, const char *root, hm_train *t) {
  static const char *const keys[] = {"version",   "global_batch", "micro_batch_sizes",
                                     "optimizer", "precision",    "recompute",
                                     "zero_stage", "memory_fraction", "bytes_per_param", "compression", NULL};
  static const char *const bpp_keys[] = {"weights", "grads", "master", "optimizer", NULL};
  char p[HM_JSON_PATH_MAX], q[HM_JSON_PATH_MAX];
  hm_train_default(t);
  HM_TRY(hm_json_check_object(j, root, keys));
  HM_TRY(hm_json_version(j, root));
  HM_TRY(hm_json_int(j, root, "global_batch", 1, 1, 1000000000, 0, &t->global_batch));

  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(j, root, "micro_batch_sizes", 0, &arr, &n));
  hm_json_path_key(p, root, "micro_batch_sizes");
  if (arr) {
    if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one size, got []", p);
    if (n > HM_SPEC_MBS_MAX)
      return hm_error(HM_ERR_SPEC, "%s: %d sizes, more than %d", p, n, HM_SPEC_MBS_MAX);
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
      double v = 0;
      hm_json_path_index(q, p, i);
      HM_TRY(hm_json_number_value(e, q, HM_RANGE_INT(1, 1000000000), &v));
      if ((int64_t)v > t->global_batch)
        return hm_error(HM_ERR_SPEC, "%s: micro-batch size %lld is larger than global_batch %lld",
                        q, (long long)v, (long long)t->global_batch);
      for (int k = 0; k < i; k++)
        if (t->micro_batch_sizes[k] == (int64_t)v)
          return hm_error(HM_ERR_SPEC, "%s: micro-batch size %lld is listed twice", q,
                          (long long)v);
      t->micro_batch_sizes[i] = (int64_t)v;
    }
    t->n_micro_batch_sizes = n;
    qsort(t->micro_batch_sizes, (size_t)n, sizeof t->micro_batch_sizes[0], cmp_i64);
  } else {
    /* The default sizes 1, 2, 4, 8, ... up to the global batch. */
    n = 0;
    for (int64_t s = 1; s <= t->global_batch && n < 4; s *= 2) t->micro_batch_sizes[n++] = s;
    t->n_micro_batch_sizes = n;
  }

  int opt = 0;
  HM_TRY(hm_json_enum(j, root, "optimizer", 0, optimizer_names, 0, &opt));
  hm_strcpy(t->optimizer, sizeof t->optimizer, optimizer_names[opt]);
  int prec = 0;
  HM_TRY(hm_json_enum(j, root, "precision", 0, precision_names, 0, &prec));
  t->precision = (hm_precision)(prec - 1);
  int rc = 0;
  HM_TRY(hm_json_enum(j, root, "recompute", 0, recompute_names, 0, &rc));
  t->recompute = (hm_recompute)rc;
  int64_t zero = 0;
  HM_TRY(hm_json_int(j, root, "zero_stage", 0, 0, 1, 0, &zero));
  t->zero_stage = (int)zero;
  HM_TRY(hm_json_number(j, root, "memory_fraction", 0, (hm_json_range){0, 1, 1, 0}, 0.9,
                        &t->memory_fraction));
  const cJSON *bpp = NULL;
  HM_TRY(hm_json_object(j, root, "bytes_per_param", 0, &bpp));
  if (bpp) {
    hm_json_path_key(p, root, "bytes_per_param");
    HM_TRY(hm_json_check_object(bpp, p, bpp_keys));
    HM_TRY(hm_json_number(bpp, p, "weights", 0, HM_RANGE_POSITIVE(64), -1, &t->weight_bytes));
    HM_TRY(hm_json_number(bpp, p, "grads", 0, HM_RANGE_POSITIVE(64), -1, &t->grad_bytes));
    HM_TRY(hm_json_number(bpp, p, "master", 0, HM_RANGE_NONNEG(64), -1, &t->master_bytes));
    HM_TRY(hm_json_number(bpp, p, "optimizer", 0, HM_RANGE_NONNEG(64), -1, &t->optimizer_bytes));
  }
  return zip_read(j, root, t);
}

hm_status hm_train_from_cjson(const cJSON *j, const char *root, hm_train *out) {
  hm_status st = train_read(j, root ? root : "train", out);
  if (st != HM_OK) hm_train_default(out);
  return st;
}

hm_status hm_train_parse(const char *json, size_t len, const char *origin, hm_train *out) {
  hm_train_default(out);
  cJSON *j = NULL;
  HM_TRY(hm_json_parse(json, len, origin, "train", &j));
  hm_status st = hm_train_from_cjson(j, "train", out);
  cJSON_Delete(j);
  if (st != HM_OK && origin) hm_error_context(st, "%s: ", origin);
  return st;
}

hm_status hm_train_load(const char *path, hm_train *out) {
  hm_train_default(out);
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(path, &text, &len));
  hm_status st = hm_train_parse(text, len, path, out);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------ */

cJSON *hm_train_to_cjson(const hm_train *t) {
  cJSON *j = cJSON_CreateObject();
  if (!j) return NULL;
  cJSON *mbs = NULL, *bpp = NULL;
  if (!cJSON_AddNumberToObject(j, "version", 1) ||
      !cJSON_AddNumberToObject(j, "global_batch", (double)t->global_batch) ||
      !(mbs = cJSON_AddArrayToObject(j, "micro_batch_sizes")))
    goto fail;
  for (int i = 0; i < t->n_micro_batch_sizes; i++) {
    cJSON *v = cJSON_CreateNumber((double)t->micro_batch_sizes[i]);
    if (!v) goto fail;
    cJSON_AddItemToArray(mbs, v);
  }
  if (!cJSON_AddStringToObject(j, "optimizer", t->optimizer) ||
      !cJSON_AddStringToObject(j, "precision", hm_precision_name(t->precision)) ||
      !cJSON_AddStringToObject(j, "recompute", hm_recompute_name(t->recompute)) ||
      !cJSON_AddNumberToObject(j, "zero_stage", t->zero_stage) ||
      !cJSON_AddNumberToObject(j, "memory_fraction", t->memory_fraction))
    goto fail;
  cJSON *z = NULL;
  if (t->zip.ratio > 0 &&
      (!(z = cJSON_AddObjectToObject(j, "compression")) || !cJSON_AddNumberToObject(z, "ratio", t->zip.ratio) ||
       !cJSON_AddNumberToObject(z, "compress_bw", t->zip.compress_bw) ||
       !cJSON_AddNumberToObject(z, "decompress_bw", t->zip.decompress_bw) ||
       !cJSON_AddNumberToObject(z, "below", t->zip_below)))
    goto fail;
  if (t->weight_bytes >= 0 || t->grad_bytes >= 0 || t->master_bytes >= 0 ||
      t->optimizer_bytes >= 0) {
    if (!(bpp = cJSON_AddObjectToObject(j, "bytes_per_param"))) goto fail;
    const struct {
      const char *k;
      double v;
    } f[] = {{"weights", t->weight_bytes},
             {"grads", t->grad_bytes},
             {"master", t->master_bytes},
             {"optimizer", t->optimizer_bytes}};
    for (int i = 0; i < 4; i++)
      if (f[i].v >= 0 && !cJSON_AddNumberToObject(bpp, f[i].k, f[i].v)) goto fail;
  }
  return j;
fail:
  cJSON_Delete(j);
  return NULL;
}

/* ---- cross-checks ------------------------------------------------------------------------ */

hm_status hm_spec_resolve(const hm_cluster *c, const hm_model *m, hm_train *t, hm_profile *p) {
  if (!c || !m || !t) return hm_error(HM_ERR_INVALID_ARG, "hm_spec_resolve: NULL spec");
  if (t->precision == HM_PREC_AUTO) {
    switch (m->dtype) {
      case HM_DTYPE_FP32: t->precision = HM_PREC_FP32; break;
      case HM_DTYPE_BF16: t->precision = HM_PREC_BF16_MIXED; break;
      case HM_DTYPE_FP16: t->precision = HM_PREC_FP16_MIXED; break;
      default:
        return hm_error(HM_ERR_SPEC,
                        "train.precision: \"auto\" has no training precision for model.dtype "
                        "\"%s\"; give train.precision explicitly",
                        hm_spec_dtype_name(m->dtype));
    }
  }
  hm_spec_dtype compute = t->precision == HM_PREC_FP32       ? HM_DTYPE_FP32
                     : t->precision == HM_PREC_BF16_MIXED ? HM_DTYPE_BF16
                                                          : HM_DTYPE_FP16;
  /* fp8 byte figures go with a 16-bit mixed precision (fp8 matmuls, 16-bit master path). */
  if (compute != m->dtype && !(m->dtype == HM_DTYPE_FP8 && compute != HM_DTYPE_FP32))
    return hm_error(HM_ERR_SPEC,
                    "train.precision: \"%s\" computes in %s but model.dtype is \"%s\" (the model's "
                    "activation bytes are for %s); make them agree or use \"auto\"",
                    hm_precision_name(t->precision), hm_spec_dtype_name(compute),
                    hm_spec_dtype_name(m->dtype), hm_spec_dtype_name(m->dtype));
  t->compute_dtype = m->dtype == HM_DTYPE_FP8 ? HM_DTYPE_FP8 : compute;
  int mixed = t->precision != HM_PREC_FP32;
  if (t->weight_bytes < 0) t->weight_bytes = mixed ? 2 : 4;
  /* bf16-mixed keeps f32 gradients and reduces them in f32, as the runtime does
   * (docs/model.md, "bf16 mixed precision"): 2 + 4 + 4 + 8 = 18 bytes per parameter */
  if (t->grad_bytes < 0) t->grad_bytes = t->precision == HM_PREC_BF16_MIXED ? 4 : mixed ? 2 : 4;
  if (t->master_bytes < 0) t->master_bytes = mixed ? 4 : 0;
  if (t->optimizer_bytes < 0) t->optimizer_bytes = 8;
  if (p) HM_TRY(hm_profile_resolve(p, c, m));
  return HM_OK;
}
