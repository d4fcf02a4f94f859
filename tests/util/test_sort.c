/* hm_sort_positive against qsort: the same order, bit for bit, on arrays of every size class
 * (insertion sort and radix passes), with duplicates, +0.0, subnormals, values spanning the
 * whole exponent range, and arrays where some bytes are equal everywhere (skipped passes). */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/util.h"

static unsigned rng_state = 2024;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) & 0xffffff;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Kind 0: few distinct values (many ties); 1: one binade; 2: anything from subnormal to huge. */
static double value(int kind) {
  switch (kind) {
  case 0: return (double)(rnd() % 7) * 0.125;
  case 1: return 1.0 + rnd() / 16777216.0;
  default: {
    const int r = rnd() % 16;
    if (r == 0) return 0.0;
    if (r == 1) return DBL_MIN * (rnd() % 1000) / 1000.0; /* subnormal */
    if (r == 2) return DBL_MAX / (1 + rnd() % 1000);
    return ldexp(1.0 + rnd() / 16777216.0, (int)(rnd() % 200) - 100);
  }
  }
}

static void test_same_order_as_qsort(void **state) {
  (void)state;
  static const size_t sizes[] = {0, 1, 2, 47, 48, 49, 300, 5000};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
    for (int kind = 0; kind < 3; kind++) {
      const size_t n = sizes[si];
      double *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
      assert_non_null(a);
      assert_non_null(b);
      for (size_t i = 0; i < n; i++) a[i] = b[i] = value(kind);
      assert_int_equal(hm_sort_positive(a, n), HM_OK);
      qsort(b, n, sizeof *b, cmp_double);
      if (n > 0) assert_memory_equal(a, b, n * sizeof *a);
      free(a);
      free(b);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_order_as_qsort),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
