/* Fail-slow localization (failslow.h): a pure function of the measured and predicted compute
 * per rank and step, so every worker reaches the same verdict from the same numbers. */
#include "runtime/failslow.h"

#include <stdlib.h>
#include <string.h>

#include "hetmix/pipeline.h"
#include "util/util.h"

hm_status hm_failslow_init(hm_failslow *fs, int n) {
  memset(fs, 0, sizeof *fs);
  if (n <= 0) return hm_error(HM_ERR_INVALID_ARG, "fail-slow detector for %d ranks", n);
  fs->n = n;
  fs->base = hm_calloc((size_t)n * HM_FS_BASELINE_STEPS, sizeof(double), "fail-slow baselines");
  fs->base_ratio = hm_calloc((size_t)n, sizeof(double), "fail-slow baselines");
  fs->hist = hm_calloc((size_t)n, sizeof(unsigned), "fail-slow state");
  fs->reported = hm_calloc((size_t)n, sizeof(int), "fail-slow state");
  if (!fs->base || !fs->base_ratio || !fs->hist || !fs->reported) {
    hm_failslow_free(fs);
    return HM_ERR_NOMEM;
  }
  return HM_OK;
}

void hm_failslow_free(hm_failslow *fs) {
  free(fs->base);
  free(fs->base_ratio);
  free(fs->hist);
  free(fs->reported);
  memset(fs, 0, sizeof *fs);
}

static int hm_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median of v[0..n) (sorts v). */
static double hm_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, hm_cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Median of ratio[] without rank skip; tmp holds n doubles. */
static double hm_median_others(const double *ratio, int n, int skip, double *tmp) {
  int k = 0;
  for (int j = 0; j < n; j++)
    if (j != skip) tmp[k++] = ratio[j];
  return hm_median(tmp, k);
}

int hm_failslow_step(hm_failslow *fs, const double *measured, const double *expected, int *newly, double *ref) {
  const int n = fs->n, B = HM_FS_BASELINE_STEPS;
  memset(newly, 0, (size_t)n * sizeof *newly);
  const int k = fs->steps++;
  for (int i = 0; i < n; i++) {
    if (k < B) fs->base[i * B + k] = measured[i];
    ref[i] = expected[i];
  }
  if (k < B - 1) return 0;
  double *ratio = hm_calloc(2 * (size_t)n, sizeof(double), "fail-slow ratios");
  if (!ratio) return 0; /* a diagnostic: no verdict this step rather than a failed run */
  double *tmp = ratio + n;
  for (int i = 0; i < n; i++) {
    double own[HM_FS_BASELINE_STEPS];
    memcpy(own, fs->base + i * B, sizeof own);
    const double base = hm_median(own, B);
    if (!(ref[i] > 0)) ref[i] = base;
    ratio[i] = ref[i] > 0 ? measured[i] / ref[i] : 1.0;
    if (k == B - 1) fs->base_ratio[i] = base > 0 && ref[i] > 0 ? base / ref[i] : 1.0;
  }
  int count = 0;
  for (int i = 0; k >= B && i < n; i++) {
    const double peer = n > 1 ? hm_median_others(ratio, n, i, tmp) : fs->base_ratio[i];
    const double pace = peer * ref[i]; /* what the rank would take at its peers' pace */
    const unsigned slow = peer > 0 && ratio[i] > HM_FS_THRESHOLD * peer && measured[i] - pace >= HM_FS_MIN_EXCESS_S;
    fs->hist[i] = ((fs->hist[i] << 1) | slow) & ((1u << HM_FS_WINDOW) - 1);
    const int hits = __builtin_popcount(fs->hist[i]);
    if (!fs->reported[i] && hits >= HM_FS_HITS) fs->reported[i] = newly[i] = 1, count++;
    else if (fs->reported[i] && hits == 0) fs->reported[i] = 0;
  }
  free(ratio);
  return count;
}

int hm_failslow_pipe_step(hm_failslow *fs, const hm_pipeline_options *o, int rank, int steps_done, int p,
                          const int *split, const double *busy) {
  const int n = fs->n;
  double *buf = hm_calloc(3 * (size_t)n, sizeof(double), "fail-slow step");
  int *newly = hm_calloc((size_t)n, sizeof(int), "fail-slow step");
  int count = 0;
  if (buf && newly) {
    double *measured = buf, *ref = buf + n;
    for (int i = 0; i < n; i++) {
      const int m = split[i / p] > 0 ? split[i / p] : 1;
      measured[i] = busy[i] / m;
    }
    count = hm_failslow_step(fs, measured, busy + n, newly, ref);
    for (int i = 0; count > 0 && o->on_slow && i < n; i++) {
      if (!newly[i]) continue;
      const int m = split[i / p] > 0 ? split[i / p] : 1;
      hm_slow_report r = {i, i / p, i % p, steps_done, i == rank, ref[i] * m, busy[i]};
      o->on_slow(&r, o->slow_user);
    }
  }
  free(buf);
  free(newly);
  return count;
}
