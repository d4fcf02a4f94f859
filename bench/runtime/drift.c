/* drift_bench: how far this machine's own speed moves between windows of a profile's length.
 * The same layer is timed the way `hetmix profile` times it (hm_profile_time_layers_together:
 * rounds after a warm-up, passes repeated for the window, each figure the median over the
 * passes) in consecutive windows, alone and as two copies at once (the slowest copy, as
 * `--copies 2` writes), beside a fixed compute loop that stays in the core's registers and L1
 * (the core's clock and share, without the caches and memory the host shares). The range of a
 * column over the windows, (max - min) / median, is the least by which profiles of that length
 * taken one after another can differ on this machine, whatever the profile does inside a window.
 *   drift_bench [--windows K] [--window S] [--model L4,C128,NH4,V256,T128] [--mb 4] [--layer block|head]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hetmix/spec.h"
#include "hetmix/profile.h"
#include "util/util.h"

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(const double *x, int n) { /* n <= 4096 */
  double v[4096];
  if (n < 1 || n > 4096) return 0;
  memcpy(v, x, (size_t)n * sizeof *v);
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double range_of(const double *x, int n) {
  double lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
  return (hi - lo) / median(x, n);
}

/* Milliseconds per round of a loop on 16 KiB (L1) for `seconds`: the median round. */
static double core_loop_ms(double seconds) {
  static float a[64 * 64], c[64 * 64];
  for (int i = 0; i < 64 * 64; i++) a[i] = (float)(i % 7) * 0.01f, c[i] = 0;
  double t[4096];
  int n = 0;
  const double end = hm_now_s() + seconds;
  while (n < 4096 && hm_now_s() < end) { /* a round is about 1 ms: 4096 of them cover 4 s */
    const double t0 = hm_now_s();
    for (int r = 0; r < 64; r++)
      for (int i = 0; i < 64; i++)
        for (int k = 0; k < 64; k++) {
          const float x = a[i * 64 + k];
          for (int j = 0; j < 64; j++) c[i * 64 + j] += x * a[k * 64 + j];
        }
    t[n++] = 1e3 * (hm_now_s() - t0);
  }
  volatile float sink = c[5];
  (void)sink;
  return median(t, n);
}

static int parse_model(const char *s, hm_spec_model_config *cfg) {
  long long L, C, NH, V, T;
  if (sscanf(s, "L%lld,C%lld,NH%lld,V%lld,T%lld", &L, &C, &NH, &V, &T) != 5) return -1;
  memset(cfg, 0, sizeof *cfg);
  cfg->arch = HM_ARCH_GPT2;
  cfg->L = L, cfg->C = C, cfg->NH = NH, cfg->V = V, cfg->T = T, cfg->tied_embeddings = 1;
  return hm_spec_model_config_complete(cfg, "drift model") == HM_OK ? 0 : -1;
}

int main(int argc, char **argv) {
  int windows = 8, mb = 4, layer_is_head = 0;
  double window = 3;
  const char *model = "L4,C128,NH4,V256,T128";
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) goto usage;
    if (!strcmp(k, "--windows")) windows = atoi(v);
    else if (!strcmp(k, "--window")) window = atof(v);
    else if (!strcmp(k, "--model")) model = v;
    else if (!strcmp(k, "--mb")) mb = atoi(v);
    else if (!strcmp(k, "--layer") && (!strcmp(v, "block") || !strcmp(v, "head"))) layer_is_head = !strcmp(v, "head");
    else goto usage;
    i++;
  }
  hm_spec_model_config cfg;
  if (windows < 2 || windows > 256 || !(window > 0 && window <= 600) || mb < 1 || mb > 64 || parse_model(model, &cfg))
    goto usage;
  const int layer = layer_is_head ? (int)cfg.L + 1 : 1;
  const int64_t mbs[1] = {mb};
  const char *backends[1] = {"cpu:threads=1"};
  double alone[256], two[256], core[256];
  printf("%s layer of %s at micro-batch %d on cpu:threads=1, timed as hetmix profile times it (9 rounds a pass,\n"
         "passes repeated for %g s, median over the passes), in %d consecutive windows\n\n",
         layer_is_head ? "head" : "block", model, mb, window, windows);
  printf("window  start(s)  alone(ms)  2 copies, slowest(ms)  core loop(ms)\n");
  const double t0 = hm_now_s();
  for (int w = 0; w < windows; w++) {
    const double start = hm_now_s() - t0;
    hm_layer_timing t1[1], t2[1];
    if (hm_profile_time_layers_together(1, backends, 1, &cfg, 1, &layer, 1, mbs, 1, 1, 9, 2.0, window, 1234, 600, t1,
                                        NULL, 0, NULL, NULL) != HM_OK ||
        hm_profile_time_layers_together(1, backends, 2, &cfg, 1, &layer, 1, mbs, 1, 1, 9, 2.0, window, 1234, 600, t2,
                                        NULL, 0, NULL, NULL) != HM_OK) {
      fprintf(stderr, "drift_bench: %s\n", hm_last_error());
      return 1;
    }
    alone[w] = 1e3 * (t1[0].fwd_s + t1[0].bwd_s);
    two[w] = 1e3 * (t2[0].fwd_s + t2[0].bwd_s);
    core[w] = core_loop_ms(window);
    printf("%6d  %8.1f  %9.3f  %21.3f  %13.4f\n", w + 1, start, alone[w], two[w], core[w]);
    fflush(stdout);
  }
  printf("\nrange (max - min) / median over the windows:  alone %.1f%%   2 copies %.1f%%   core loop %.1f%%\n",
         100 * range_of(alone, windows), 100 * range_of(two, windows), 100 * range_of(core, windows));
  printf("(the least by which profiles of %g s taken one after another can differ here; a profile's target is 3%%)\n",
         window);
  return 0;
usage:
  fprintf(stderr, "usage: drift_bench [--windows K (2..256)] [--window S] [--model L4,C128,NH4,V256,T128] [--mb 4]\n"
                  "                   [--layer block|head]\n");
  return 2;
}
