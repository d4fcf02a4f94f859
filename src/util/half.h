/* IEEE half (f16) and bfloat16 conversions to and from float (and double to bfloat16),
 * rounding to nearest even (subnormals, infinities and NaN kept; NaN stays a quiet NaN). Used
 * by the reduction kernels (src/comm/reduce.c), the collective benchmark's value checks
 * (src/cli/cmd_bench.c) and the bf16 mixed-precision kernels (src/device/bf16_kernels.inc).
 * Not a public header. */
#ifndef HETMIX_UTIL_HALF_H
#define HETMIX_UTIL_HALF_H

#include <stdint.h>
#include <string.h>

static inline float hm_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalize */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t hm_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
  uint32_t man = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    man |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into exponent: correct */
  return (uint16_t)h;
}

static inline float hm_bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t hm_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

/* double to bfloat16 with a single rounding to nearest even: the double is first rounded to
 * float toward zero with a sticky last bit (round to odd), then to bf16 to nearest even. Round
 * to odd into a format with at least two more bits (24 >= 8 + 2) makes the second rounding
 * equal the direct one, so no double rounding happens at ties. */
static inline uint16_t hm_f64_to_bf16(double d) {
  float f = (float)d;
  if (d == d && (double)f != d && f - f == 0.0f) { /* inexact and finite */
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((f < 0 ? -(double)f : (double)f) > (d < 0 ? -d : d)) x -= 1; /* the truncation */
    x |= 1;                                                          /* sticky bit */
    memcpy(&f, &x, 4);
  }
  return hm_f32_to_bf16(f);
}

/* Rounds a float to the nearest bfloat16 value (to nearest even), kept as a float. */
static inline float hm_round_bf16(float f) { return hm_bf16_to_f32(hm_f32_to_bf16(f)); }
static inline double hm_round_bf16_f64(double d) { return (double)hm_bf16_to_f32(hm_f64_to_bf16(d)); }

#endif
