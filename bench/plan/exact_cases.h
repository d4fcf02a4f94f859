/* Random small heterogeneous planning problems (seeded) for comparing the default search with
 * the exhaustive one: 2 or 3 device types (datasheet-like figures drawn over a decade), at most 8
 * devices (or fewer, per case) in 1 to 3 hosts per type, a GPT-2 or Llama config model of 2 to 8 blocks (4 to 10
 * layers), a global batch of 4 to 48 samples and micro-batch sizes {1, 2, 4}; device memory
 * from 0.3 to 3 times what the whole model's weights and optimizer state need, so pipelines,
 * tensor parallelism and mixed plans are all needed in some cases. Shared by
 * bench/plan/bench_search_exact.c and tests/plan/test_search_exact.c. */
#ifndef HETMIX_BENCH_EXACT_CASES_H
#define HETMIX_BENCH_EXACT_CASES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hetmix/plan.h"

typedef struct exact_case {
  hm_cluster c;
  hm_model m;
  hm_train t;
  hm_plan_inputs in;
  char desc[256];
} exact_case;

static uint64_t exact_rng(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double exact_unif(uint64_t *s, double lo, double hi) {
  return lo + (hi - lo) * (double)(exact_rng(s) >> 11) / 9007199254740992.0;
}

static int exact_int(uint64_t *s, int lo, int hi) { return lo + (int)(exact_rng(s) % (uint64_t)(hi - lo + 1)); }

static void exact_case_free(exact_case *e) {
  hm_cluster_free(&e->c);
  hm_model_free(&e->m);
}

/* Builds case `seed` with at most `maxdev` devices (3 to 8); returns HM_OK or the reader's
 * status (never expected). */
static hm_status exact_case_make(uint64_t seed, int maxdev, exact_case *e) {
  memset(e, 0, sizeof *e);
  uint64_t s = seed * 7919 + 1;
  char buf[4096];
  static const int Cs[] = {256, 512, 1024, 2048, 4096};
  const int arch = exact_int(&s, 0, 1), L = exact_int(&s, 2, 8), C = Cs[exact_int(&s, 0, 4)];
  const int T = 128 << exact_int(&s, 0, 4);
  snprintf(buf, sizeof buf,
           "{\"name\": \"m%llu\", \"dtype\": \"bf16\", \"config\": {\"arch\": \"%s\", \"L\": %d, "
           "\"C\": %d, \"NH\": %d, \"V\": %d, \"T\": %d}}",
           (unsigned long long)seed, arch ? "llama" : "gpt2", L, C, C / 64, 32000, T);
  hm_status st = hm_model_parse(buf, strlen(buf), "case", &e->m);
  if (st != HM_OK) return st;
  const double need = e->m.params * 16.0; /* bf16 weights and grads, fp32 master and AdamW */
  const int K = exact_int(&s, 2, 3);
  int left = maxdev - K; /* devices beyond one per type */
  if (left < 0) left = 0;
  size_t n = (size_t)snprintf(buf, sizeof buf, "{\"name\": \"c%llu\", \"device_types\": [",
                              (unsigned long long)seed);
  for (int k = 0; k < K; k++) {
    const double peak = exact_unif(&s, 50e12, 500e12);
    n += (size_t)snprintf(buf + n, sizeof buf - n,
                          "%s{\"name\": \"t%d\", \"peak_flops\": {\"fp32\": %.6g, \"bf16\": %.6g}, "
                          "\"memory_bytes\": %.6g, \"memory_bandwidth\": %.6g, \"efficiency\": %.3f, "
                          "\"intra_host_link\": {\"bandwidth\": %.6g, \"latency\": %.3g}}",
                          k ? ", " : "", k, peak / 8, peak, need * exact_unif(&s, 0.3, 3.0),
                          exact_unif(&s, 0.5e12, 3.5e12), exact_unif(&s, 0.3, 0.6),
                          exact_unif(&s, 20e9, 300e9), exact_unif(&s, 1e-6, 5e-6));
  }
  n += (size_t)snprintf(buf + n, sizeof buf - n, "], \"hosts\": [");
  int total = 0;
  for (int k = 0; k < K; k++) {
    int extra = k == K - 1 ? left : exact_int(&s, 0, left);
    left -= extra;
    const int dev = 1 + extra; /* devices of this type: hosts of equal size */
    int per = dev;
    const int split = exact_int(&s, 0, 2);
    if (split == 1 && dev % 2 == 0) per = dev / 2;
    if (split == 2 && dev % 3 == 0) per = dev / 3;
    total += dev;
    n += (size_t)snprintf(buf + n, sizeof buf - n,
                          "%s{\"name\": \"h%d\", \"count\": %d, \"devices\": {\"type\": \"t%d\", "
                          "\"count\": %d}, \"nic\": {\"bandwidth\": %.6g, \"latency\": 5e-6}}",
                          k ? ", " : "", k, dev / per, k, per, exact_unif(&s, 5e9, 50e9));
  }
  snprintf(buf + n, sizeof buf - n, "]}");
  if ((st = hm_cluster_parse(buf, strlen(buf), "case", &e->c)) != HM_OK) return st;
  const int G = 4 * exact_int(&s, 1, 12);
  snprintf(buf, sizeof buf, "{\"global_batch\": %d, \"micro_batch_sizes\": [1, 2, 4], "
           "\"precision\": \"bf16-mixed\"}", G);
  if ((st = hm_train_parse(buf, strlen(buf), "case", &e->t)) != HM_OK) return st;
  if ((st = hm_spec_resolve(&e->c, &e->m, &e->t, NULL)) != HM_OK) return st;
  e->in = (hm_plan_inputs){.cluster = &e->c, .model = &e->m, .train = &e->t};
  snprintf(e->desc, sizeof e->desc, "seed %llu: %d types, %d devices, %s L=%d C=%d T=%d, batch %d",
           (unsigned long long)seed, K, total, arch ? "llama" : "gpt2", L, C, T, G);
  return HM_OK;
}

#endif
