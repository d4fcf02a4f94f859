/* Clocks, checked allocation and environment helpers (see util.h). */
#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t hm_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double hm_now_s(void) { return (double)hm_now_ns() * 1e-9; }

void *hm_malloc(size_t bytes, const char *what) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) hm_error(HM_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
  return p;
}

void *hm_calloc(size_t n, size_t size, const char *what) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) hm_error(HM_ERR_NOMEM, "cannot allocate %zu x %zu bytes for %s", n, size, what);
  return p;
}

void *hm_aligned_alloc(size_t alignment, size_t bytes, const char *what) {
  void *p = NULL;
  int rc = posix_memalign(&p, alignment, bytes ? bytes : alignment);
  if (rc != 0) {
    hm_error(HM_ERR_NOMEM, "cannot allocate %zu bytes (aligned %zu) for %s", bytes, alignment, what);
    return NULL;
  }
  return p;
}

hm_status hm_env_long(const char *name, long def, long lo, long hi, long *out) {
  const char *s = getenv(name);
  *out = def;
  if (!s || !*s) return HM_OK;
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
    return hm_error(HM_ERR_INVALID_ARG, "environment variable %s=\"%.40s\" is not a whole number in %ld..%ld", name, s,
                    lo, hi);
  *out = v;
  return HM_OK;
}

int hm_strcpy(char *dst, size_t cap, const char *src) {
  if (cap == 0) return -1;
  size_t n = strlen(src);
  if (n >= cap) {
    memcpy(dst, src, cap - 1);
    dst[cap - 1] = '\0';
    return -1;
  }
  memcpy(dst, src, n + 1);
  return 0;
}
