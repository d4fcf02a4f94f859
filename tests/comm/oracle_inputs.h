/* Inputs shared by the Open MPI oracle program and hetmix's cross-check: rank r's element i
 * for each integer dtype, from a counter-based hash so both sides agree without sharing state.
 * Unsigned types use their whole range (sums wrap modulo 2^bits on both sides); signed types
 * stay small enough that sums of up to 8 ranks cannot overflow. Header-only, no hetmix link. */
#ifndef HM_ORACLE_INPUTS_H
#define HM_ORACLE_INPUTS_H

#include <stddef.h>
#include <stdint.h>

enum { HM_ORACLE_I8, HM_ORACLE_U8, HM_ORACLE_I32, HM_ORACLE_U32, HM_ORACLE_I64, HM_ORACLE_U64,
       HM_ORACLE_NTYPES };
static const size_t hm_oracle_size[HM_ORACLE_NTYPES] = {1, 1, 4, 4, 8, 8};
static const size_t hm_oracle_counts[] = {1, 7, 1023, 1000003};
#define HM_ORACLE_NCOUNTS (sizeof hm_oracle_counts / sizeof hm_oracle_counts[0])

static inline uint64_t hm_oracle_mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Writes element i of rank r for type t into dst (hm_oracle_size[t] bytes). */
static inline void hm_oracle_input(int t, int r, size_t i, void *dst) {
  uint64_t x = hm_oracle_mix(((uint64_t)t << 56) ^ ((uint64_t)r << 40) ^ (uint64_t)i);
  switch (t) {
    case HM_ORACLE_I8: *(int8_t *)dst = (int8_t)((int)(x % 16) - 8); break;
    case HM_ORACLE_U8: *(uint8_t *)dst = (uint8_t)x; break;
    case HM_ORACLE_I32: *(int32_t *)dst = (int32_t)((int64_t)(x % (1ull << 28)) - (1ll << 27)); break;
    case HM_ORACLE_U32: *(uint32_t *)dst = (uint32_t)x; break;
    case HM_ORACLE_I64: *(int64_t *)dst = (int64_t)(x % (1ull << 60)) - (1ll << 59); break;
    default: *(uint64_t *)dst = x; break;
  }
}

#endif
