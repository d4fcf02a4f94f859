/* libFuzzer target over the spec readers: every input goes through the cluster, model,
 * training and profile readers; what a reader accepts is then written back and read again,
 * and (for clusters) its rank mapping and links are queried. A reader must never crash, leak
 * or hang, whatever the bytes. Run (docs/spec.md, "Fuzzing"):
 *   CC=clang cmake -S . -B build-fuzz -DHETMIX_FUZZ=ON -DHETMIX_BENCH=OFF
 *   cmake --build build-fuzz --target fuzz_spec
 *   build-fuzz/fuzz/plan/fuzz_spec -max_total_time=60 -dict=fuzz/plan/spec.dict \
 *       fuzz/corpus-spec examples */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "hetmix/spec.h"

static void check_cluster(const hm_cluster *c) {
  if (c->ndevices <= 0) abort();
  int64_t probe[4] = {0, c->ndevices / 2, c->ndevices - 1, c->ndevices / 3};
  for (int i = 0; i < 4; i++) {
    hm_rank_loc loc;
    if (hm_cluster_locate(c, probe[i], &loc) != HM_OK) abort();
    int64_t back = -1;
    if (hm_cluster_rank(c, loc.group, loc.host_in_group, loc.type, loc.index_in_type, &back) !=
            HM_OK ||
        back != probe[i])
      abort();
    hm_link l;
    (void)hm_cluster_link_ranks(c, probe[0], probe[i], &l);
  }
  cJSON *j = hm_cluster_to_cjson(c);
  if (!j) return;
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (!s) return;
  hm_cluster back;
  if (hm_cluster_parse(s, strlen(s), "round-trip", &back) != HM_OK) abort();
  if (back.ndevices != c->ndevices || back.ntypes != c->ntypes) abort();
  hm_cluster_free(&back);
  free(s);
}

static void check_model(const hm_model *m) {
  cJSON *j = hm_model_to_cjson(m);
  if (!j) return;
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (!s) return;
  hm_model back;
  if (hm_model_parse(s, strlen(s), "round-trip", &back) != HM_OK) abort();
  if (back.nlayers != m->nlayers) abort();
  hm_model_free(&back);
  free(s);
  hm_train t;
  hm_train_default(&t);
  for (int i = 0; i < m->nlayers; i++) {
    (void)hm_layer_train_flops(&m->layers[i], &t);
    (void)hm_layer_held_act_bytes(&m->layers[i], &t);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  hm_cluster c;
  if (hm_cluster_parse(text, size, NULL, &c) == HM_OK) check_cluster(&c);
  hm_cluster_free(&c);

  hm_model m;
  if (hm_model_parse(text, size, NULL, &m) == HM_OK) check_model(&m);
  hm_model_free(&m);

  hm_train t;
  if (hm_train_parse(text, size, NULL, &t) == HM_OK) {
    cJSON *j = hm_train_to_cjson(&t);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    hm_train back;
    if (s && hm_train_parse(s, strlen(s), NULL, &back) != HM_OK) abort();
    free(s);
  }

  hm_profile p;
  if (hm_profile_parse(text, size, NULL, &p) == HM_OK) {
    double f, b;
    for (int i = 0; i < p.nlayers && i < 4; i++)
      (void)hm_profile_layer_time(&p, p.layers[i].type, p.layers[i].kind, 3, &f, &b);
    cJSON *j = hm_profile_to_cjson(&p);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    hm_profile back;
    if (s && hm_profile_parse(s, strlen(s), NULL, &back) != HM_OK) abort();
    hm_profile_free(&back);
    free(s);
  }
  hm_profile_free(&p);
  return 0;
}
