/* Named GPT-2 configurations and parameter counts. Not the model itself (gpt.c). */
#include <stdio.h>
#include <string.h>

#include "hetmix/model.h"
#include "util/util.h"

static const hm_model_config hm_named_configs[] = {
    {"gpt-mini", 6, 384, 6, 256, 256},
    {"gpt2-124m", 12, 768, 12, 50304, 1024},
    {"gpt2-350m", 24, 1024, 16, 50304, 1024},
    {"tiny", 2, 32, 4, 256, 16},
};
enum { HM_N_NAMED = sizeof hm_named_configs / sizeof hm_named_configs[0] };

hm_status hm_model_config_check(const hm_model_config *c) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "model config is NULL");
  // limits keep every size product inside int64 and every index inside int32
  if (c->L < 1 || c->L > 1024) return hm_error(HM_ERR_INVALID_ARG, "model config: L=%d must be in 1..1024", c->L);
  if (c->C < 1 || c->C > 65536) return hm_error(HM_ERR_INVALID_ARG, "model config: C=%d must be in 1..65536", c->C);
  if (c->NH < 1 || c->NH > c->C || c->C % c->NH != 0)
    return hm_error(HM_ERR_INVALID_ARG, "model config: NH=%d must divide C=%d", c->NH, c->C);
  if (c->V < 2 || c->V > (1 << 24)) return hm_error(HM_ERR_INVALID_ARG, "model config: V=%d must be in 2..16777216", c->V);
  if (c->T < 1 || c->T > 65536) return hm_error(HM_ERR_INVALID_ARG, "model config: T=%d must be in 1..65536", c->T);
  return HM_OK;
}

hm_status hm_model_config_lookup(const char *name, hm_model_config *out) {
  if (!name || !out) return hm_error(HM_ERR_INVALID_ARG, "model config name is NULL");
  for (int i = 0; i < HM_N_NAMED; i++)
    if (strcmp(name, hm_named_configs[i].name) == 0) {
      *out = hm_named_configs[i];
      return HM_OK;
    }
  hm_model_config c = {"custom", 0, 0, 0, 0, 0};
  char tail;
  if (sscanf(name, "L%d,C%d,NH%d,V%d,T%d%c", &c.L, &c.C, &c.NH, &c.V, &c.T, &tail) == 5) {
    HM_TRY(hm_model_config_check(&c));
    *out = c;
    return HM_OK;
  }
  char known[256] = "";
  for (int i = 0; i < HM_N_NAMED; i++) {
    strncat(known, hm_named_configs[i].name, sizeof known - strlen(known) - 1);
    strncat(known, ", ", sizeof known - strlen(known) - 1);
  }
  return hm_error(HM_ERR_NOT_FOUND, "unknown model '%s' (known: %sor L<n>,C<n>,NH<n>,V<n>,T<n>)", name, known);
}

int hm_model_num_layers(const hm_model_config *c) { return c->L + 2; }

size_t hm_model_layer_params(const hm_model_config *c, int layer) {
  size_t C = (size_t)c->C;
  if (layer == 0) return (size_t)c->V * C + (size_t)c->T * C;  // wte, wpe
  if (layer == c->L + 1) return 2 * C;                         // lnf w,b (wte is the embedding's)
  // ln1 2C, qkv 3CC+3C, attproj CC+C, ln2 2C, fc 4CC+4C, fcproj 4CC+C
  return 12 * C * C + 13 * C;
}

size_t hm_model_num_params(const hm_model_config *c) {
  size_t n = 0;
  for (int l = 0; l < hm_model_num_layers(c); l++) n += hm_model_layer_params(c, l);
  return n;
}
