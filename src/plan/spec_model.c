/* Model spec: a GPT-2/Llama config expanded into pipeline-splittable layers (embedding, L
 * blocks, head) with FLOPs, parameters and activation bytes per sample, or an explicit layer
 * list; JSON reader and writer. Every formula here is written out in docs/spec.md ("Model
 * formulas"), and tests/plan/spec checks them against hand-computed values. This file does not
 * time anything: seconds come from the planner's roofline or a measured profile. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "plan/spec_json.h"
#include "util/util.h"

#define HM_MODEL_MAX_LAYERS 100000

static const char *const arch_names[HM_ARCH_COUNT + 1] = {"gpt2", "llama", NULL};
static const char *const dtype_names[HM_SPEC_DTYPE_COUNT + 1] = {"fp32", "bf16", "fp16", "fp8", NULL};

const char *hm_arch_name(hm_arch a) {
  return (a >= 0 && a < HM_ARCH_COUNT) ? arch_names[a] : "unknown";
}

void hm_model_free(hm_model *m) {
  if (!m) return;
  free(m->layers);
  memset(m, 0, sizeof *m);
}

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Validates a config; messages start with path (e.g. "model.config"). */
static hm_status config_check(const hm_spec_model_config *cfg, const char *path) {
  if (cfg->arch < 0 || cfg->arch >= HM_ARCH_COUNT)
    return hm_error(HM_ERR_SPEC, "%s.arch: unknown architecture %d", path, (int)cfg->arch);
  struct {
    const char *name;
    int64_t v, max;
  } f[] = {{"L", cfg->L, 10000},      {"C", cfg->C, 1000000},       {"NH", cfg->NH, 100000},
           {"kv_heads", cfg->kv_heads, 100000}, {"ffn", cfg->ffn, 10000000},
           {"V", cfg->V, 100000000},  {"T", cfg->T, 100000000}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i].v < 1 || f[i].v > f[i].max)
      return hm_error(HM_ERR_SPEC, "%s.%s: expected an integer in [1, %lld], got %lld", path,
                      f[i].name, (long long)f[i].max, (long long)f[i].v);
  if (cfg->C % cfg->NH != 0)
    return hm_error(HM_ERR_SPEC, "%s.C: %lld is not divisible by NH = %lld", path,
                    (long long)cfg->C, (long long)cfg->NH);
  if (cfg->arch == HM_ARCH_GPT2 && cfg->kv_heads != cfg->NH)
    return hm_error(HM_ERR_SPEC, "%s.kv_heads: arch \"gpt2\" needs kv_heads == NH (%lld), got %lld",
                    path, (long long)cfg->NH, (long long)cfg->kv_heads);
  if (cfg->NH % cfg->kv_heads != 0)
    return hm_error(HM_ERR_SPEC, "%s.kv_heads: %lld does not divide NH = %lld", path,
                    (long long)cfg->kv_heads, (long long)cfg->NH);
  return HM_OK;
}

/* Llama's FFN size when the file gives none: 8C/3 rounded up to a multiple of 256. */
static int64_t llama_default_ffn(int64_t C) {
  int64_t f = (8 * C + 2) / 3;
  return (f + 255) / 256 * 256;
}

/* Parameters of one transformer block. */
static double block_params(const hm_spec_model_config *cfg) {
  double C = (double)cfg->C, F = (double)cfg->ffn;
  double kvd = C * (double)cfg->kv_heads / (double)cfg->NH;
  if (cfg->arch == HM_ARCH_GPT2) /* qkv + proj (with biases), fc + fcproj (with biases), 2 LN */
    return (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C) + 4 * C;
  /* q, k, v, o (no biases), gate, up, down, 2 RMSNorm weights */
  return (C * C + 2 * C * kvd + C * C) + 3 * C * F + 2 * C;
}

/* Weights that take part in the block's matmuls (FLOPs are 2 per weight per token). */
static double block_matmul_weights(const hm_spec_model_config *cfg) {
  double C = (double)cfg->C, F = (double)cfg->ffn;
  double kvd = C * (double)cfg->kv_heads / (double)cfg->NH;
  if (cfg->arch == HM_ARCH_GPT2) return 4 * C * C + 2 * C * F;
  return 2 * C * C + 2 * C * kvd + 3 * C * F;
}

double hm_model_config_params(const hm_spec_model_config *cfg) {
  double C = (double)cfg->C, V = (double)cfg->V, T = (double)cfg->T;
  double emb = V * C + (cfg->arch == HM_ARCH_GPT2 ? T * C : 0);
  double head = (cfg->arch == HM_ARCH_GPT2 ? 2 * C : C) + (cfg->tied_embeddings ? 0 : V * C);
  return emb + (double)cfg->L * block_params(cfg) + head;
}

static void model_derive(hm_model *m) {
  m->params = 0;
  double flops = 0;
  for (int i = 0; i < m->nlayers; i++) {
    m->params += m->layers[i].params;
    flops += m->layers[i].fwd_flops + m->layers[i].bwd_flops;
  }
  if (m->has_config)
    m->flops_per_token = 6 * m->params + 12.0 * (double)m->cfg.L * (double)m->cfg.C * (double)m->cfg.T;
  else
    m->flops_per_token = flops / (double)m->T;
}

hm_status hm_spec_model_config_complete(hm_spec_model_config *cfg, const char *path) {
  if (cfg->ffn == 0 && cfg->C > 0)
    cfg->ffn = cfg->arch == HM_ARCH_GPT2 ? 4 * cfg->C : llama_default_ffn(cfg->C);
  if (cfg->kv_heads == 0) cfg->kv_heads = cfg->NH;
  return config_check(cfg, path ? path : "config");
}

static hm_status expand_config(const hm_spec_model_config *cfg_in, hm_spec_dtype dtype, const char *name,
                               const char *path, hm_model *m) {
  memset(m, 0, sizeof *m);
  hm_spec_model_config cfg = *cfg_in;
  HM_TRY(hm_spec_model_config_complete(&cfg, path));
  if (dtype < 0 || dtype >= HM_SPEC_DTYPE_COUNT)
    return hm_error(HM_ERR_SPEC, "%s: unknown dtype %d", path, (int)dtype);
  hm_strcpy(m->name, sizeof m->name, name && name[0] ? name : "model");
  m->has_config = 1;
  m->cfg = cfg;
  m->dtype = dtype;
  m->T = cfg.T;
  m->nlayers = (int)cfg.L + 2;
  m->layers = hm_calloc((size_t)m->nlayers, sizeof *m->layers, "model layers");
  if (!m->layers) return HM_ERR_NOMEM;

  const double d = (double)hm_spec_dtype_size(dtype);
  const double C = (double)cfg.C, T = (double)cfg.T, V = (double)cfg.V, NH = (double)cfg.NH;
  const double F = (double)cfg.ffn, kvd = C * (double)cfg.kv_heads / NH;
  const int gpt2 = cfg.arch == HM_ARCH_GPT2;

  hm_layer *e = &m->layers[0]; /* token (+ position) embedding */
  hm_strcpy(e->kind, sizeof e->kind, "embedding");
  e->params = V * C + (gpt2 ? T * C : 0);
  e->fwd_flops = gpt2 ? T * C : 0; /* the wte + wpe add; a lookup is no FLOPs */
  e->act_bytes = 4 * T;            /* token ids (int32) for the gradient scatter */
  e->in_bytes = 4 * T;
  e->out_bytes = T * C * d;
  e->tp_comm_bytes = T * C * d;    /* vocabulary-parallel lookup: one allreduce of (T,C) */
  e->tp_comm_bwd_bytes = 0;        /* each rank scatters into its own rows: no allreduce */
  e->tp_divides = 0;
  e->shared_with = -1;

  /* Activations kept for backward in one block, per sample, in elements:
   * gpt2:  x, ln1 out, q, k, v, attention out, x2, ln2 out (8 TC) + fc out, gelu out (8 TC)
   * llama: x, norm1 out, q, attention out, x2, norm2 out (6 TC) + k, v (2 T kvd)
   *        + gate, up, silu(gate)*up (3 TF)
   * plus the softmax (NH,T,T) unless flash attention, which keeps a fp32 (NH,T) log-sum-exp. */
  double block_act = gpt2 ? 16 * T * C : 6 * T * C + 2 * T * kvd + 3 * T * F;
  double act_bytes = block_act * d + (cfg.flash_attention ? 4 * NH * T : NH * T * T * d);
  for (int64_t l = 0; l < cfg.L; l++) {
    hm_layer *b = &m->layers[1 + l];
    hm_strcpy(b->kind, sizeof b->kind, "block");
    b->params = block_params(&cfg);
    /* matmuls 2 FLOPs per weight per token; attention QK^T and AV 2*T*T*C each (the
     * 12*L*C*T per token for forward + backward of docs/ARCHITECTURE.md's MFU). */
    b->fwd_flops = 2 * T * block_matmul_weights(&cfg) + 4 * T * T * C;
    b->act_bytes = act_bytes;
    b->in_bytes = T * C * d;
    b->out_bytes = T * C * d;
    b->tp_comm_bytes = 2 * T * C * d; /* Megatron: after attention and after the MLP */
    b->tp_comm_bwd_bytes = -1;        /* backward: the two column-parallel input gradients */
    b->tp_divides = gcd64(cfg.kv_heads, cfg.ffn);
    b->shared_with = -1;
  }

  hm_layer *h = &m->layers[m->nlayers - 1]; /* final norm + LM head + loss */
  hm_strcpy(h->kind, sizeof h->kind, "head");
  h->params = (gpt2 ? 2 * C : C) + (cfg.tied_embeddings ? 0 : V * C);
  h->shared_params = cfg.tied_embeddings ? V * C : 0;
  h->shared_with = cfg.tied_embeddings ? 0 : -1;
  h->fwd_flops = 2 * T * C * V;
  h->act_bytes = (2 * T * C + T * V) * d; /* norm in, norm out, probabilities (T,V) */
  h->in_bytes = T * C * d;
  h->out_bytes = 4;                       /* the loss (fp32) */
  h->tp_comm_bytes = 3 * T * d;           /* vocabulary-parallel cross-entropy: row max; sum-exp, target */
  h->tp_comm_bwd_bytes = T * C * d;       /* the column-parallel head's input gradient */
  h->tp_divides = 0;

  for (int i = 0; i < m->nlayers; i++) m->layers[i].bwd_flops = 2 * m->layers[i].fwd_flops;
  model_derive(m);
  return HM_OK;
}

hm_status hm_model_from_config(const hm_spec_model_config *cfg, hm_spec_dtype dtype, const char *name,
                               hm_model *model) {
  hm_status st = expand_config(cfg, dtype, name, "config", model);
  if (st != HM_OK) hm_model_free(model);
  return st;
}

/* ---- reader ------------------------------------------------------------------------------ */

static hm_status read_config(const cJSON *o, const char *path, hm_spec_model_config *cfg) {
  static const char *const keys[] = {"arch", "L", "C", "NH", "kv_heads", "ffn", "V", "T",
                                     "tied_embeddings", "flash_attention", NULL};
  HM_TRY(hm_json_check_object(o, path, keys));
  int arch = 0;
  HM_TRY(hm_json_enum(o, path, "arch", 1, arch_names, 0, &arch));
  cfg->arch = (hm_arch)arch;
  HM_TRY(hm_json_int(o, path, "L", 1, 1, 10000, 0, &cfg->L));
  HM_TRY(hm_json_int(o, path, "C", 1, 1, 1000000, 0, &cfg->C));
  HM_TRY(hm_json_int(o, path, "NH", 1, 1, 100000, 0, &cfg->NH));
  HM_TRY(hm_json_int(o, path, "kv_heads", 0, 1, 100000, cfg->NH, &cfg->kv_heads));
  int64_t def_ffn = arch == HM_ARCH_GPT2 ? 4 * cfg->C : llama_default_ffn(cfg->C);
  HM_TRY(hm_json_int(o, path, "ffn", 0, 1, 10000000, def_ffn, &cfg->ffn));
  HM_TRY(hm_json_int(o, path, "V", 1, 1, 100000000, 0, &cfg->V));
  HM_TRY(hm_json_int(o, path, "T", 1, 1, 100000000, 0, &cfg->T));
  HM_TRY(hm_json_bool(o, path, "tied_embeddings", arch == HM_ARCH_GPT2, &cfg->tied_embeddings));
  HM_TRY(hm_json_bool(o, path, "flash_attention", 0, &cfg->flash_attention));
  return config_check(cfg, path);
}

static hm_status read_layers(const cJSON *arr, const char *path, hm_model *m) {
  static const char *const keys[] = {"kind",      "count",       "fwd_flops",     "fwd_flops_per_token", "bwd_flops",
                                     "params",    "param_bytes", "shared_params", "shared_with",
                                     "act_bytes", "in_bytes",    "out_bytes",     "tp_comm_bytes",
                                     "tp_comm_bwd_bytes", "tp_divides", NULL};
  char p[HM_JSON_PATH_MAX];
  const double big = 1e30;
  /* First pass: count the expanded layers so the array is allocated once. */
  int64_t total = 0;
  int i = 0;
  for (const cJSON *e = arr->child; e; e = e->next, i++) {
    hm_json_path_index(p, path, i);
    HM_TRY(hm_json_check_object(e, p, keys));
    int64_t count = 1;
    HM_TRY(hm_json_int(e, p, "count", 0, 1, HM_MODEL_MAX_LAYERS, 1, &count));
    total += count;
    if (total > HM_MODEL_MAX_LAYERS)
      return hm_error(HM_ERR_SPEC, "%s: more than %d layers in all", path, HM_MODEL_MAX_LAYERS);
  }
  if (total == 0) return hm_error(HM_ERR_SPEC, "%s: expected at least one layer, got []", path);
  m->layers = hm_calloc((size_t)total, sizeof *m->layers, "model layers");
  if (!m->layers) return HM_ERR_NOMEM;
  const double dsize = (double)hm_spec_dtype_size(m->dtype);
  int n = 0;
  i = 0;
  for (const cJSON *e = arr->child; e; e = e->next, i++) {
    hm_json_path_index(p, path, i);
    hm_layer l;
    memset(&l, 0, sizeof l);
    int64_t count = 1;
    HM_TRY(hm_json_int(e, p, "count", 0, 1, HM_MODEL_MAX_LAYERS, 1, &count));
    HM_TRY(hm_json_name(e, p, "kind", 1, NULL, l.kind, sizeof l.kind));
    const cJSON *fpt = cJSON_GetObjectItemCaseSensitive(e, "fwd_flops_per_token");
    if (fpt && cJSON_GetObjectItemCaseSensitive(e, "fwd_flops"))
      return hm_error(HM_ERR_SPEC, "%s: give \"fwd_flops\" or \"fwd_flops_per_token\", not both",
                      p);
    if (fpt) {
      double per_token = 0;
      HM_TRY(hm_json_number(e, p, "fwd_flops_per_token", 1, HM_RANGE_NONNEG(big), 0, &per_token));
      l.fwd_flops = per_token * (double)m->T;
    } else {
      HM_TRY(hm_json_number(e, p, "fwd_flops", 1, HM_RANGE_NONNEG(big), 0, &l.fwd_flops));
    }
    HM_TRY(hm_json_number(e, p, "bwd_flops", 0, HM_RANGE_NONNEG(big), 2 * l.fwd_flops,
                          &l.bwd_flops));
    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(e, "params");
    const cJSON *pb = cJSON_GetObjectItemCaseSensitive(e, "param_bytes");
    if (pc && pb)
      return hm_error(HM_ERR_SPEC, "%s: give \"params\" or \"param_bytes\", not both", p);
    if (pb) {
      double bytes = 0;
      HM_TRY(hm_json_number(e, p, "param_bytes", 1, HM_RANGE_NONNEG(big), 0, &bytes));
      l.params = bytes / dsize;
    } else {
      HM_TRY(hm_json_number(e, p, "params", 1, (hm_json_range){0, 9e15, 0, 1}, 0, &l.params));
    }
    HM_TRY(hm_json_number(e, p, "act_bytes", 1, HM_RANGE_NONNEG(big), 0, &l.act_bytes));
    HM_TRY(hm_json_number(e, p, "out_bytes", 1, HM_RANGE_NONNEG(big), 0, &l.out_bytes));
    double prev_out = n > 0 ? m->layers[n - 1].out_bytes : 0;
    HM_TRY(hm_json_number(e, p, "in_bytes", 0, HM_RANGE_NONNEG(big), prev_out, &l.in_bytes));
    HM_TRY(hm_json_number(e, p, "tp_comm_bytes", 0, HM_RANGE_NONNEG(big), 0, &l.tp_comm_bytes));
    HM_TRY(hm_json_number(e, p, "tp_comm_bwd_bytes", 0, HM_RANGE_NONNEG(big), -1, &l.tp_comm_bwd_bytes));
    HM_TRY(hm_json_int(e, p, "tp_divides", 0, 0, 1000000000, 1, &l.tp_divides));
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "shared_params");
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(e, "shared_with");
    l.shared_with = -1;
    if ((sp != NULL) != (sw != NULL))
      return hm_error(HM_ERR_SPEC, "%s.%s: missing (\"shared_params\" and \"shared_with\" go "
                      "together)", p, sp ? "shared_with" : "shared_params");
    if (sp) {
      int64_t owner = 0;
      HM_TRY(hm_json_number(e, p, "shared_params", 1, (hm_json_range){0, 9e15, 0, 1}, 0,
                            &l.shared_params));
      HM_TRY(hm_json_int(e, p, "shared_with", 1, 0, total - 1, 0, &owner));
      if (count > 1 || owner == n)
        return hm_error(HM_ERR_SPEC, "%s.shared_with: layer %lld cannot share with itself%s",
                        p, (long long)owner, count > 1 ? " (a shared layer needs count 1)" : "");
      l.shared_with = (int)owner;
    }
    for (int64_t k = 0; k < count; k++) {
      m->layers[n] = l;
      if (k > 0) m->layers[n].in_bytes = l.out_bytes;
      n++;
    }
  }
  m->nlayers = n;
  /* The owner of shared parameters must own at least that many. */
  for (int k = 0; k < n; k++) {
    const hm_layer *l = &m->layers[k];
    if (l->shared_with >= 0 && m->layers[l->shared_with].params < l->shared_params)
      return hm_error(HM_ERR_SPEC,
                      "%s: layer %d shares %.17g parameters of layer %d, which owns only %.17g",
                      path, k, l->shared_params, l->shared_with, m->layers[l->shared_with].params);
  }
  return HM_OK;
}

static hm_status model_read(const cJSON *j, const char *root, hm_model *m) {
  static const char *const keys[] = {"version", "name", "dtype", "config", "layers", "seq_len",
                                     NULL};
  char p[HM_JSON_PATH_MAX];
  HM_TRY(hm_json_check_object(j, root, keys));
  HM_TRY(hm_json_version(j, root));
  char name[HM_SPEC_NAME_MAX];
  HM_TRY(hm_json_name(j, root, "name", 0, "model", name, sizeof name));
  int dt = 0;
  HM_TRY(hm_json_enum(j, root, "dtype", 0, dtype_names, HM_DTYPE_FP32, &dt));
  const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(j, "config");
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(j, "layers");
  if (cfg && layers)
    return hm_error(HM_ERR_SPEC, "%s: give \"config\" or \"layers\", not both", root);
  if (!cfg && !layers)
    return hm_error(HM_ERR_SPEC, "%s.config: missing (expected a model config, or \"layers\")",
                    root);
  if (cfg) {
    if (cJSON_GetObjectItemCaseSensitive(j, "seq_len"))
      return hm_error(HM_ERR_SPEC, "%s: \"seq_len\" belongs to a layer list; a config has T",
                      hm_json_path_key(p, root, "seq_len"));
    const cJSON *co = NULL;
    HM_TRY(hm_json_object(j, root, "config", 1, &co));
    hm_spec_model_config c;
    memset(&c, 0, sizeof c);
    hm_json_path_key(p, root, "config");
    HM_TRY(read_config(co, p, &c));
    return expand_config(&c, (hm_spec_dtype)dt, name, p, m);
  }
  memset(m, 0, sizeof *m);
  hm_strcpy(m->name, sizeof m->name, name);
  m->dtype = (hm_spec_dtype)dt;
  HM_TRY(hm_json_int(j, root, "seq_len", 1, 1, 100000000, 0, &m->T));
  const cJSON *arr = NULL;
  int n = 0;
  HM_TRY(hm_json_array(j, root, "layers", 1, &arr, &n));
  HM_TRY(read_layers(arr, hm_json_path_key(p, root, "layers"), m));
  model_derive(m);
  return HM_OK;
}

hm_status hm_model_from_cjson(const cJSON *j, const char *root, hm_model *out) {
  memset(out, 0, sizeof *out);
  hm_status st = model_read(j, root ? root : "model", out);
  if (st != HM_OK) hm_model_free(out);
  return st;
}

hm_status hm_model_parse(const char *json, size_t len, const char *origin, hm_model *out) {
  memset(out, 0, sizeof *out);
  cJSON *j = NULL;
  HM_TRY(hm_json_parse(json, len, origin, "model", &j));
  hm_status st = hm_model_from_cjson(j, "model", out);
  cJSON_Delete(j);
  if (st != HM_OK && origin) hm_error_context(st, "%s: ", origin);
  return st;
}

hm_status hm_model_load(const char *path, hm_model *out) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  HM_TRY(hm_json_read_file(path, &text, &len));
  hm_status st = hm_model_parse(text, len, path, out);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------ */

static int layer_equal(const hm_layer *a, const hm_layer *b) {
  return strcmp(a->kind, b->kind) == 0 && a->fwd_flops == b->fwd_flops &&
         a->bwd_flops == b->bwd_flops && a->params == b->params && a->act_bytes == b->act_bytes &&
         a->out_bytes == b->out_bytes && b->in_bytes == a->out_bytes &&
         a->tp_comm_bytes == b->tp_comm_bytes && a->tp_comm_bwd_bytes == b->tp_comm_bwd_bytes &&
         a->tp_divides == b->tp_divides &&
         a->shared_with < 0 && b->shared_with < 0;
}

/* "params" takes whole counts up to 9e15; a count from "param_bytes" that is not one goes back
 * as bytes (exact: dtype sizes are powers of two), so what the reader accepted it reads again. */
static cJSON *add_params(cJSON *o, double params, hm_spec_dtype dtype) {
  if (params == floor(params) && params <= 9e15) return cJSON_AddNumberToObject(o, "params", params);
  return cJSON_AddNumberToObject(o, "param_bytes", params * (double)hm_spec_dtype_size(dtype));
}

cJSON *hm_model_to_cjson(const hm_model *m) {
  cJSON *j = cJSON_CreateObject();
  if (!j) return NULL;
  if (!cJSON_AddNumberToObject(j, "version", 1) || !cJSON_AddStringToObject(j, "name", m->name) ||
      !cJSON_AddStringToObject(j, "dtype", hm_spec_dtype_name(m->dtype)))
    goto fail;
  if (m->has_config) {
    const hm_spec_model_config *c = &m->cfg;
    cJSON *o = cJSON_AddObjectToObject(j, "config");
    if (!o || !cJSON_AddStringToObject(o, "arch", hm_arch_name(c->arch)) ||
        !cJSON_AddNumberToObject(o, "L", (double)c->L) ||
        !cJSON_AddNumberToObject(o, "C", (double)c->C) ||
        !cJSON_AddNumberToObject(o, "NH", (double)c->NH) ||
        !cJSON_AddNumberToObject(o, "kv_heads", (double)c->kv_heads) ||
        !cJSON_AddNumberToObject(o, "ffn", (double)c->ffn) ||
        !cJSON_AddNumberToObject(o, "V", (double)c->V) ||
        !cJSON_AddNumberToObject(o, "T", (double)c->T) ||
        !cJSON_AddBoolToObject(o, "tied_embeddings", c->tied_embeddings) ||
        !cJSON_AddBoolToObject(o, "flash_attention", c->flash_attention))
      goto fail;
    return j;
  }
  if (!cJSON_AddNumberToObject(j, "seq_len", (double)m->T)) goto fail;
  cJSON *arr = cJSON_AddArrayToObject(j, "layers");
  if (!arr) goto fail;
  for (int i = 0; i < m->nlayers;) {
    const hm_layer *l = &m->layers[i];
    int count = 1;
    while (i + count < m->nlayers && layer_equal(l, &m->layers[i + count])) count++;
    cJSON *o = cJSON_CreateObject();
    if (!o) goto fail;
    cJSON_AddItemToArray(arr, o);
    if (!cJSON_AddStringToObject(o, "kind", l->kind) ||
        (count > 1 && !cJSON_AddNumberToObject(o, "count", count)) ||
        !cJSON_AddNumberToObject(o, "fwd_flops", l->fwd_flops) ||
        !cJSON_AddNumberToObject(o, "bwd_flops", l->bwd_flops) ||
        !add_params(o, l->params, m->dtype) ||
        !cJSON_AddNumberToObject(o, "act_bytes", l->act_bytes) ||
        !cJSON_AddNumberToObject(o, "in_bytes", l->in_bytes) ||
        !cJSON_AddNumberToObject(o, "out_bytes", l->out_bytes) ||
        !cJSON_AddNumberToObject(o, "tp_comm_bytes", l->tp_comm_bytes) ||
        !cJSON_AddNumberToObject(o, "tp_divides", (double)l->tp_divides) ||
        (l->tp_comm_bwd_bytes >= 0 && !cJSON_AddNumberToObject(o, "tp_comm_bwd_bytes", l->tp_comm_bwd_bytes)))
      goto fail;
    if (l->shared_with >= 0 &&
        (!cJSON_AddNumberToObject(o, "shared_params", l->shared_params) ||
         !cJSON_AddNumberToObject(o, "shared_with", l->shared_with)))
      goto fail;
    i += count;
  }
  return j;
fail:
  cJSON_Delete(j);
  return NULL;
}
