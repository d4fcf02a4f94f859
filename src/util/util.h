/* Small internal helpers shared by every module: clocks and deadlines, checked allocation,
 * and the HM_TRY propagation macro. Not a public header. */
#ifndef HETMIX_UTIL_H
#define HETMIX_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/status.h"

/* Propagate a failing status unchanged (the callee already set the message). */
#define HM_TRY(expr)                    \
  do {                                  \
    hm_status hm_try_st_ = (expr);      \
    if (hm_try_st_ != HM_OK) return hm_try_st_; \
  } while (0)

/* Monotonic clock in nanoseconds and seconds. */
uint64_t hm_now_ns(void);
double hm_now_s(void);

/* A deadline is an absolute hm_now_ns() value; 0 means "none" (still use a bounded wait). */
static inline uint64_t hm_deadline_after_ms(uint64_t ms) { return hm_now_ns() + ms * 1000000ull; }
static inline int hm_deadline_passed(uint64_t deadline_ns) {
  return deadline_ns != 0 && hm_now_ns() >= deadline_ns;
}

/* Allocation that records HM_ERR_NOMEM with what was being allocated. Return NULL on failure. */
void *hm_malloc(size_t bytes, const char *what);
void *hm_calloc(size_t n, size_t size, const char *what);
void *hm_aligned_alloc(size_t alignment, size_t bytes, const char *what);

/* Sorts n finite doubles, each > 0 or +0.0 (never -0.0 or NaN), ascending: the order of any
 * comparison sort, since equal values are then bit-identical. HM_ERR_NOMEM when its buffers cannot be allocated. */
hm_status hm_sort_positive(double *v, size_t n);

/* Reads an integer environment variable (a tuning knob): *out = def when it is unset or empty;
 * HM_ERR_INVALID_ARG naming the variable when it is not a whole decimal number in [lo, hi], so
 * a typo never falls back silently to a default. */
hm_status hm_env_long(const char *name, long def, long lo, long hi, long *out);

/* strlcpy-like: always NUL-terminates, returns 0 if it fit, -1 if truncated. */
int hm_strcpy(char *dst, size_t cap, const char *src);

#endif
