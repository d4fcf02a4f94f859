/* Sorting of positive doubles by their bit patterns (LSD radix, byte digits).
 *
 * Why it equals a comparison sort: for finite doubles >= +0.0 the IEEE-754 bit pattern read as
 * an unsigned 64-bit integer is monotone in the value (the exponent sits above the mantissa and
 * the sign bit is clear), so ordering the integers orders the doubles, and equal doubles have
 * equal patterns. A byte that is the same in every element is skipped: it cannot reorder them. */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

enum { RADIX_BITS = 8, RADIX = 1 << RADIX_BITS, DIGITS = 64 / RADIX_BITS, SMALL = 48 };

static uint64_t bits_of(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static void insertion_sort(double *v, size_t n) {
  for (size_t i = 1; i < n; i++) {
    const double x = v[i];
    size_t j = i;
    for (; j > 0 && v[j - 1] > x; j--) v[j] = v[j - 1];
    v[j] = x;
  }
}

/* One stable pass on digit d from src into dst, with that digit's histogram. */
static void radix_pass(const double *src, double *dst, size_t n, int d, const size_t *hist) {
  size_t pos[RADIX], sum = 0;
  for (int b = 0; b < RADIX; b++) {
    pos[b] = sum;
    sum += hist[b];
  }
  for (size_t i = 0; i < n; i++) {
    const unsigned b = (unsigned)(bits_of(src[i]) >> (d * RADIX_BITS)) & (RADIX - 1);
    dst[pos[b]++] = src[i];
  }
}

hm_status hm_sort_positive(double *v, size_t n) {
  if (n <= SMALL) {
    insertion_sort(v, n);
    return HM_OK;
  }
  size_t(*hist)[RADIX] = hm_calloc(DIGITS, sizeof *hist, "sort histograms");
  double *tmp = hm_malloc(n * sizeof *v, "sort buffer");
  if (!hist || !tmp) {
    free(hist);
    free(tmp);
    return HM_ERR_NOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const uint64_t u = bits_of(v[i]);
    for (int d = 0; d < DIGITS; d++) hist[d][(u >> (d * RADIX_BITS)) & (RADIX - 1)]++;
  }
  double *src = v, *dst = tmp;
  for (int d = 0; d < DIGITS; d++) {
    const unsigned b0 = (unsigned)(bits_of(src[0]) >> (d * RADIX_BITS)) & (RADIX - 1);
    if (hist[d][b0] == n) continue; /* the same byte everywhere: the pass would not move anything */
    radix_pass(src, dst, n, d, hist[d]);
    double *t = src;
    src = dst;
    dst = t;
  }
  if (src != v) memcpy(v, src, n * sizeof *v);
  free(hist);
  free(tmp);
  return HM_OK;
}
