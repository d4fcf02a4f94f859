/* Element access for every hm_dtype, for tests that fill buffers with exactly representable
 * values and check results element by element. f16/bf16 convert with round-to-nearest-even,
 * independently of the library's own conversions (so a library bug cannot hide behind it). */
#ifndef HM_TEST_VALUES_H
#define HM_TEST_VALUES_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "hetmix/comm.h"

static inline uint32_t hm_tv_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float hm_tv_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t hm_tv_to_bf16(float f) {
  uint32_t u = hm_tv_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float hm_tv_from_bf16(uint16_t h) { return hm_tv_bits_f32((uint32_t)h << 16); }

static inline float hm_tv_from_f16(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    float v = ldexpf((float)man, -24);
    return sign ? -v : v;
  }
  if (exp == 31) return hm_tv_bits_f32(sign | 0x7f800000u | (man << 13));
  return hm_tv_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}
static inline uint16_t hm_tv_to_f16(float f) {
  uint32_t u = hm_tv_f32_bits(f), sign = (u >> 16) & 0x8000u;
  float a = fabsf(f);
  if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
  if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
  if (a < 6.103515625e-05f) { /* subnormal: multiples of 2^-24, ties to even */
    float q = a * 16777216.0f;
    float r = nearbyintf(q);
    return (uint16_t)(sign | (uint16_t)r);
  }
  uint32_t au = u & 0x7fffffffu;
  uint32_t exp = (au >> 23) - 112, man = au & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

static inline double hm_tv_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int hm_tv_is_float(hm_dtype dt) { return dt >= HM_FLOAT16; }
static inline int hm_tv_is_signed(hm_dtype dt) {
  return dt == HM_INT8 || dt == HM_INT32 || dt == HM_INT64 || hm_tv_is_float(dt);
}
/* Significand bits including the implicit one (0 for integers). */
static inline int hm_tv_mant_bits(hm_dtype dt) {
  switch (dt) {
    case HM_FLOAT16: return 11;
    case HM_BFLOAT16: return 8;
    case HM_FLOAT32: return 24;
    case HM_FLOAT64: return 53;
    default: return 0;
  }
}

static inline double hm_tv_get(const void *buf, hm_dtype dt, size_t i) {
  switch (dt) {
    case HM_INT8: return ((const int8_t *)buf)[i];
    case HM_UINT8: return ((const uint8_t *)buf)[i];
    case HM_INT32: return ((const int32_t *)buf)[i];
    case HM_UINT32: return ((const uint32_t *)buf)[i];
    case HM_INT64: return (double)((const int64_t *)buf)[i];
    case HM_UINT64: return (double)((const uint64_t *)buf)[i];
    case HM_FLOAT16: return hm_tv_from_f16(((const uint16_t *)buf)[i]);
    case HM_BFLOAT16: return hm_tv_from_bf16(((const uint16_t *)buf)[i]);
    case HM_FLOAT32: return ((const float *)buf)[i];
    case HM_FLOAT64: return ((const double *)buf)[i];
    default: return NAN;
  }
}

/* v must be representable in dt (small integers, or values the test rounded itself). */
static inline void hm_tv_set(void *buf, hm_dtype dt, size_t i, double v) {
  switch (dt) {
    case HM_INT8: ((int8_t *)buf)[i] = (int8_t)v; break;
    case HM_UINT8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case HM_INT32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case HM_UINT32: ((uint32_t *)buf)[i] = (uint32_t)v; break;
    case HM_INT64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case HM_UINT64: ((uint64_t *)buf)[i] = (uint64_t)v; break;
    case HM_FLOAT16: ((uint16_t *)buf)[i] = hm_tv_to_f16((float)v); break;
    case HM_BFLOAT16: ((uint16_t *)buf)[i] = hm_tv_to_bf16((float)v); break;
    case HM_FLOAT32: ((float *)buf)[i] = (float)v; break;
    case HM_FLOAT64: ((double *)buf)[i] = v; break;
    default: break;
  }
}

/* Rounds v as storing it in dt would (integers: as C converts, in range). */
static inline double hm_tv_round(hm_dtype dt, double v) {
  unsigned char tmp[8];
  hm_tv_set(tmp, dt, 0, v);
  return hm_tv_get(tmp, dt, 0);
}

#endif
