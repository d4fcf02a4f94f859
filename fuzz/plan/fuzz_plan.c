/* libFuzzer target over the plan.json reader (hm_plan_parse, the text form of hm_plan_load):
 * whatever the bytes, the reader returns a status without crashing, leaking or hanging. A plan
 * it accepts must validate, re-predict, give each class's op lists, and survive a write and a
 * second read unchanged. Run (docs/plan.md, "Fuzzing the plan.json reader"):
 *   CC=clang cmake -S . -B build-fuzz -DHETMIX_FUZZ=ON -DHETMIX_BENCH=OFF
 *   cmake --build build-fuzz --target fuzz_plan hetmix_cli
 *   mkdir -p fuzz/corpus-plan
 *   build-fuzz/hetmix plan --cluster examples/local-2backend.json \
 *       --model examples/gpt-mini.json --train examples/train-local.json -o fuzz/corpus-plan/seed.json
 *   build-fuzz/fuzz/plan/fuzz_plan -max_total_time=60 -dict=fuzz/plan/plan.dict fuzz/corpus-plan */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "hetmix/plan.h"

/* Simulating a plan costs about (stages x micro-batches) per class; an accepted plan with a
 * million micro-batches is valid but would only slow the fuzzer down. */
static int64_t plan_work(const hm_plan *p) {
  int64_t w = 0;
  for (int c = 0; c < p->nclasses; c++)
    w += (int64_t)p->classes[c].nstages * p->classes[c].nmicro;
  return w;
}

static int same_layout(const hm_plan *a, const hm_plan *b) {
  if (a->micro_batch != b->micro_batch || a->nclasses != b->nclasses) return 0;
  for (int c = 0; c < a->nclasses; c++) {
    const hm_plan_class *x = &a->classes[c], *y = &b->classes[c];
    if (x->nreplicas != y->nreplicas || x->nmicro != y->nmicro || x->nstages != y->nstages) return 0;
    for (int s = 0; s < x->nstages; s++)
      if (x->stages[s].type != y->stages[s].type || x->stages[s].tp != y->stages[s].tp ||
          x->stages[s].layer_begin != y->stages[s].layer_begin ||
          x->stages[s].layer_end != y->stages[s].layer_end)
        return 0;
  }
  return 1;
}

static void check_plan(hm_plan *p, const hm_plan_inputs *in) {
  if (hm_plan_validate(in, p) != HM_OK) abort();
  for (int c = 0; c < p->nclasses; c++) {
    hm_schedule sc;
    if (plan_work(p) > 100000) break;
    if (hm_plan_schedule(in, p, c, &sc) != HM_OK) abort();
    hm_schedule_free(&sc);
  }
  if (plan_work(p) <= 100000 && hm_plan_predict(in, p, NULL) != HM_OK) abort();

  /* write it back with its own specs and read it again: the same layout */
  cJSON *j = hm_plan_to_cjson(in, p);
  if (!j) abort();
  char *text = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (!text) abort();
  hm_plan *back = malloc(sizeof *back);
  if (!back) abort();
  if (hm_plan_parse(text, strlen(text), "round-trip", NULL, back, NULL, NULL, NULL) != HM_OK ||
      !same_layout(p, back))
    abort();
  /* and against the specs given separately (a runtime with its own copies) */
  if (hm_plan_parse(text, strlen(text), "round-trip", in, back, NULL, NULL, NULL) != HM_OK ||
      !same_layout(p, back))
    abort();
  free(back);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  hm_plan *p = malloc(sizeof *p);
  if (!p) return 0;
  hm_cluster c;
  hm_model m;
  hm_train t;
  if (hm_plan_parse((const char *)data, size, NULL, NULL, p, &c, &m, &t) == HM_OK) {
    hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};
    check_plan(p, &in);
    hm_cluster_free(&c);
    hm_model_free(&m);
  }
  free(p);
  return 0;
}
