/* Elementwise reduction kernels of hmcomm: dst = a op b for every dtype and op, plus dtype and
 * op names. Integers wrap (computed in unsigned arithmetic, so no undefined overflow); f16 and
 * bf16 are reduced in float and rounded back to nearest even; HM_AVG sums and divides at the
 * last step, as NCCL's ncclAvg. Compiled at -O3 (see CMakeLists.txt) so the loops vectorize. */
#include <math.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#include <stdint.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/half.h"

static const char *const dtype_names[HM_DTYPE_COUNT] = {"i8",  "u8",  "i32", "u32",  "i64",
                                                         "u64", "f16", "bf16", "f32", "f64"};
static const char *const redop_names[HM_REDOP_COUNT] = {"sum", "prod", "min", "max", "avg"};

const char *hm_dtype_name(hm_dtype dt) {
  return ((int)dt >= 0 && dt < HM_DTYPE_COUNT) ? dtype_names[dt] : "unknown";
}
const char *hm_redop_name(hm_redop op) {
  return ((int)op >= 0 && op < HM_REDOP_COUNT) ? redop_names[op] : "unknown";
}

/* dst may equal a exactly (in place), never partially overlap: two restrict-qualified forms. */
#define BIN_LOOP(T, EXPR)                                        \
  do {                                                           \
    if ((const void *)dst == a) {                                \
      T *restrict d_ = dst;                                      \
      const T *restrict b_ = b;                                  \
      for (size_t i = 0; i < n; i++) {                           \
        T x = d_[i], y = b_[i];                                  \
        d_[i] = (EXPR);                                          \
      }                                                          \
    } else {                                                     \
      T *restrict d_ = dst;                                      \
      const T *restrict a_ = a, *restrict b_ = b;                \
      for (size_t i = 0; i < n; i++) {                           \
        T x = a_[i], y = b_[i];                                  \
        d_[i] = (EXPR);                                          \
      }                                                          \
    }                                                            \
  } while (0)

/* Unsigned arithmetic for sum/prod: defined wrap-around for signed types too. */
#define INT_KERNEL(T, UT)                                                           \
  static void red_##T(void *dst, const void *a, const void *b, size_t n, int op, int div) { \
    switch (op) {                                                                   \
      case HM_SUM:                                                                  \
      case HM_AVG:                                                                  \
        BIN_LOOP(T, (T)((UT)x + (UT)y));                                            \
        break;                                                                      \
      case HM_PROD:                                                                 \
        BIN_LOOP(T, (T)((UT)x * (UT)y));                                            \
        break;                                                                      \
      case HM_MIN:                                                                  \
        BIN_LOOP(T, x < y ? x : y);                                                 \
        break;                                                                      \
      default:                                                                      \
        BIN_LOOP(T, x > y ? x : y);                                                 \
        break;                                                                      \
    }                                                                               \
    if (div > 1) {                                                                  \
      T *d = dst;                                                                   \
      for (size_t i = 0; i < n; i++) d[i] = (T)(d[i] / (T)div);                    \
    }                                                                               \
  }

INT_KERNEL(int8_t, uint8_t)
INT_KERNEL(uint8_t, uint8_t)
INT_KERNEL(int32_t, uint32_t)
INT_KERNEL(uint32_t, uint32_t)
INT_KERNEL(int64_t, uint64_t)
INT_KERNEL(uint64_t, uint64_t)

/* min/max keep NaN out unless both are NaN, as fminf/fmaxf do. */
#define FLOAT_KERNEL(T, NAME, MINF, MAXF)                                          \
  static void red_##NAME(void *dst, const void *a, const void *b, size_t n, int op, int div) { \
    switch (op) {                                                                  \
      case HM_SUM:                                                                 \
        BIN_LOOP(T, x + y);                                                        \
        break;                                                                     \
      case HM_AVG:                                                                 \
        if (div > 1) {                                                             \
          const T dv = (T)div;                                                     \
          BIN_LOOP(T, (x + y) / dv);                                               \
        } else {                                                                   \
          BIN_LOOP(T, x + y);                                                      \
        }                                                                          \
        break;                                                                     \
      case HM_PROD:                                                                \
        BIN_LOOP(T, x * y);                                                        \
        break;                                                                     \
      case HM_MIN:                                                                 \
        BIN_LOOP(T, MINF(x, y));                                                   \
        break;                                                                     \
      default:                                                                     \
        BIN_LOOP(T, MAXF(x, y));                                                   \
        break;                                                                     \
    }                                                                              \
  }

FLOAT_KERNEL(float, f32, fminf, fmaxf)
FLOAT_KERNEL(double, f64, fmin, fmax)

static float op_f(float x, float y, int op, int div) {
  switch (op) {
    case HM_SUM: return x + y;
    case HM_AVG: return div > 1 ? (x + y) / (float)div : x + y;
    case HM_PROD: return x * y;
    case HM_MIN: return fminf(x, y);
    default: return fmaxf(x, y);
  }
}

static void red_half(void *dst, const void *a, const void *b, size_t n, int op, int div, int bf) {
  uint16_t *d = dst;
  const uint16_t *x = a, *y = b;
  for (size_t i = 0; i < n; i++) {
    float fx = bf ? hm_bf16_to_f32(x[i]) : hm_f16_to_f32(x[i]);
    float fy = bf ? hm_bf16_to_f32(y[i]) : hm_f16_to_f32(y[i]);
    float r = op_f(fx, fy, op, div);
    d[i] = bf ? hm_f32_to_bf16(r) : hm_f32_to_f16(r);
  }
}

void hm_reduce(void *dst, const void *a, const void *b, size_t count, hm_dtype dt, hm_redop op,
               int final_div) {
  int div = op == HM_AVG ? final_div : 0;
  switch (dt) {
    case HM_INT8: red_int8_t(dst, a, b, count, op, div); break;
    case HM_UINT8: red_uint8_t(dst, a, b, count, op, div); break;
    case HM_INT32: red_int32_t(dst, a, b, count, op, div); break;
    case HM_UINT32: red_uint32_t(dst, a, b, count, op, div); break;
    case HM_INT64: red_int64_t(dst, a, b, count, op, div); break;
    case HM_UINT64: red_uint64_t(dst, a, b, count, op, div); break;
    case HM_FLOAT16: red_half(dst, a, b, count, op, div, 0); break;
    case HM_BFLOAT16: red_half(dst, a, b, count, op, div, 1); break;
    case HM_FLOAT32: red_f32(dst, a, b, count, op, div); break;
    case HM_FLOAT64: red_f64(dst, a, b, count, op, div); break;
    default: break;
  }
}

/* Copy with streaming (non-temporal) stores: the destination bypasses the caches, so a large
 * result that will not be read again soon costs no read-for-ownership and evicts nothing. On
 * a machine whose memory bandwidth is the limit (two ranks on two cores) that is a third less
 * memory traffic than memcpy. x86-64 only (SSE2 is part of its baseline); memcpy elsewhere. */
void hm_copy_stream(void *dst, const void *src, size_t n) {
#if defined(__x86_64__)
  char *d = dst;
  const char *s = src;
  size_t head = (size_t)(-(uintptr_t)d & 15u);
  if (head > n) head = n;
  memcpy(d, s, head);
  d += head, s += head, n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
    __m128i e = _mm_loadu_si128((const __m128i *)(s + 32)), f = _mm_loadu_si128((const __m128i *)(s + 48));
    _mm_stream_si128((__m128i *)d, a);
    _mm_stream_si128((__m128i *)(d + 16), b);
    _mm_stream_si128((__m128i *)(d + 32), e);
    _mm_stream_si128((__m128i *)(d + 48), f);
  }
  memcpy(d, s, n);
  _mm_sfence(); /* order the streamed stores before whatever publishes them */
#else
  memcpy(dst, src, n);
#endif
}
