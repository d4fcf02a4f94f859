/* Named model configurations and the checks of what the stages can run. The description itself
 * is the spec's hm_spec_model_config (include/hetmix/spec.h); parameter counts come from the
 * spec's formula (hm_model_config_params). Not the model itself (gpt.c, llama.c). */
#include <stdio.h>
#include <string.h>

#include "hetmix/model.h"
#include "util/util.h"

typedef struct {
  const char *name;
  hm_spec_model_config cfg;
} hm_named_config;

/* arch, L, C, NH, kv_heads, ffn, V, T, tied, flash.
 * llama-mini: gpt-mini's depth, width, vocabulary and context (L6 C384 V256 T256), with 12 query
 * heads of 32 in grouped-query attention (6 KV heads, two query heads each) and ffn 1152 = 3C:
 * 10,818,432 parameters (untied head, no wpe, no biases) against gpt-mini's 10,844,160 (0.24%
 * fewer), so the two compare at near-equal size and near-equal FLOPs per token. Heads, KV heads
 * and ffn divide by 2, 3 and 6, so tensor parallelism 2, 3 and 6 split it (the vocabulary 256
 * splits unevenly for 3 and 6). */
static const hm_named_config hm_named_configs[] = {
    {"gpt-mini", {HM_ARCH_GPT2, 6, 384, 6, 6, 1536, 256, 256, 1, 0}},
    {"gpt2-124m", {HM_ARCH_GPT2, 12, 768, 12, 12, 3072, 50304, 1024, 1, 0}},
    {"gpt2-350m", {HM_ARCH_GPT2, 24, 1024, 16, 16, 4096, 50304, 1024, 1, 0}},
    {"tiny", {HM_ARCH_GPT2, 2, 32, 4, 4, 128, 256, 16, 1, 0}},
    {"llama-mini", {HM_ARCH_LLAMA, 6, 384, 12, 6, 1152, 256, 256, 0, 0}},
    {"llama-tiny", {HM_ARCH_LLAMA, 2, 32, 4, 2, 48, 256, 16, 0, 0}},
};
enum { HM_N_NAMED = sizeof hm_named_configs / sizeof hm_named_configs[0] };

hm_status hm_model_config_check(const hm_spec_model_config *c) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "model config is NULL");
  hm_spec_model_config k = *c;
  if (k.ffn == 0 || k.kv_heads == 0)
    return hm_error(HM_ERR_INVALID_ARG, "model config: ffn and kv_heads must be filled in (hm_spec_model_config_complete)");
  if (hm_spec_model_config_complete(&k, "model config") != HM_OK) return hm_error_context(HM_ERR_INVALID_ARG, "%s", "");
  // limits keep every size product inside int64 and every index inside int32
  if (c->L > 1024) return hm_error(HM_ERR_INVALID_ARG, "model config: L=%lld must be in 1..1024", (long long)c->L);
  if (c->C > 65536) return hm_error(HM_ERR_INVALID_ARG, "model config: C=%lld must be in 1..65536", (long long)c->C);
  if (c->NH > c->C) return hm_error(HM_ERR_INVALID_ARG, "model config: NH=%lld must divide C=%lld", (long long)c->NH, (long long)c->C);
  if (c->V < 2 || c->V > (1 << 24))
    return hm_error(HM_ERR_INVALID_ARG, "model config: V=%lld must be in 2..16777216", (long long)c->V);
  if (c->T > 65536) return hm_error(HM_ERR_INVALID_ARG, "model config: T=%lld must be in 1..65536", (long long)c->T);
  if (c->ffn > 4 * 65536) return hm_error(HM_ERR_INVALID_ARG, "model config: ffn=%lld must be at most 262144", (long long)c->ffn);
  if (c->arch == HM_ARCH_GPT2) {
    if (c->ffn != 4 * c->C)
      return hm_error(HM_ERR_INVALID_ARG, "model config: gpt2 runs ffn = 4C = %lld, got ffn=%lld", (long long)(4 * c->C),
                      (long long)c->ffn);
    if (!c->tied_embeddings)
      return hm_error(HM_ERR_INVALID_ARG, "model config: gpt2 runs with tied embeddings (tied_embeddings: true)");
  } else {
    if (c->tied_embeddings)
      return hm_error(HM_ERR_INVALID_ARG, "model config: llama runs with untied embeddings (tied_embeddings: false)");
    if ((c->C / c->NH) % 2 != 0)
      return hm_error(HM_ERR_INVALID_ARG, "model config: llama's head size C/NH=%lld must be even (rotary embedding)",
                      (long long)(c->C / c->NH));
  }
  return HM_OK;
}

static hm_status hm_config_finish(hm_spec_model_config *c) {
  if (hm_spec_model_config_complete(c, "model config") != HM_OK) return hm_error_context(HM_ERR_INVALID_ARG, "%s", "");
  return hm_model_config_check(c);
}

hm_status hm_model_config_lookup(const char *name, hm_spec_model_config *out) {
  if (!name || !out) return hm_error(HM_ERR_INVALID_ARG, "model config name is NULL");
  for (int i = 0; i < HM_N_NAMED; i++)
    if (strcmp(name, hm_named_configs[i].name) == 0) {
      *out = hm_named_configs[i].cfg;
      return HM_OK;
    }
  hm_spec_model_config c;
  memset(&c, 0, sizeof c);
  int L, C, NH, V, T;
  char tail;
  if (sscanf(name, "L%d,C%d,NH%d,V%d,T%d%c", &L, &C, &NH, &V, &T, &tail) == 5) {
    c.arch = HM_ARCH_GPT2, c.L = L, c.C = C, c.NH = NH, c.V = V, c.T = T, c.tied_embeddings = 1;
    HM_TRY(hm_config_finish(&c));
    *out = c;
    return HM_OK;
  }
  char known[256] = "";
  for (int i = 0; i < HM_N_NAMED; i++) {
    strncat(known, hm_named_configs[i].name, sizeof known - strlen(known) - 1);
    strncat(known, ", ", sizeof known - strlen(known) - 1);
  }
  return hm_error(HM_ERR_NOT_FOUND, "unknown model '%s' (known: %sL<n>,C<n>,NH<n>,V<n>,T<n>, or a model .json file)",
                  name, known);
}

hm_status hm_model_config_load(const char *path, hm_spec_model_config *out, char *name, size_t cap) {
  hm_model m;
  HM_TRY(hm_model_load(path, &m));
  hm_status st = HM_OK;
  if (!m.has_config)
    st = hm_error(HM_ERR_INVALID_ARG, "model %s: a layer list cannot be trained; give a \"config\"", path);
  hm_spec_model_config c = m.cfg;
  if (name && cap) hm_strcpy(name, cap, m.name);
  hm_model_free(&m);
  HM_TRY(st);
  if (hm_model_config_check(&c) != HM_OK) return hm_error_context(HM_ERR_INVALID_ARG, "model %s: ", path);
  *out = c;
  return HM_OK;
}

hm_status hm_model_config_resolve(const char *arg, hm_spec_model_config *out, char *name, size_t cap) {
  if (!arg) return hm_error(HM_ERR_INVALID_ARG, "model is NULL");
  size_t n = strlen(arg);
  if (strchr(arg, '/') || (n >= 5 && strcmp(arg + n - 5, ".json") == 0)) return hm_model_config_load(arg, out, name, cap);
  HM_TRY(hm_model_config_lookup(arg, out));
  if (name && cap) hm_strcpy(name, cap, strchr(arg, ',') ? "custom" : arg);
  return HM_OK;
}

int hm_model_num_layers(const hm_spec_model_config *c) { return (int)c->L + 2; }

const char *hm_model_config_str(const hm_spec_model_config *c, char *buf, size_t cap) {
  if (c->arch == HM_ARCH_GPT2)
    snprintf(buf, cap, "L%lld C%lld NH%lld V%lld T%lld", (long long)c->L, (long long)c->C, (long long)c->NH,
             (long long)c->V, (long long)c->T);
  else
    snprintf(buf, cap, "%s L%lld C%lld NH%lld KV%lld F%lld V%lld T%lld", hm_arch_name(c->arch), (long long)c->L,
             (long long)c->C, (long long)c->NH, (long long)c->kv_heads, (long long)c->ffn, (long long)c->V,
             (long long)c->T);
  return buf;
}

int hm_model_config_same(const hm_spec_model_config *a, const hm_spec_model_config *b) {
  return a->arch == b->arch && a->L == b->L && a->C == b->C && a->NH == b->NH && a->kv_heads == b->kv_heads &&
         a->ffn == b->ffn && a->V == b->V && a->T == b->T && a->tied_embeddings == b->tied_embeddings;
}
