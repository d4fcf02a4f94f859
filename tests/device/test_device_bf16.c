/* bf16 mixed precision at the device level: the rounding (ties to even, NaN, infinities,
 * subnormals, overflow, no double rounding from double); the ref backend's kernels against a
 * direct evaluation of their definition (bitwise: ref is the exact emulation); the cpu
 * backend's kernels (oneDNN matmuls, f32 sums) against ref at odd shapes; a clear
 * HM_ERR_UNSUPPORTED from a device without the kernels.
 *
 * cpu vs ref bounds. Both round at the same points; before a rounding the cpu's f32 sum of K
 * exact bf16 products differs from ref's exact one by at most K u32 sum|a_i b_i| (u32 = 2^-24,
 * Higham 3.5). The rounded results are then equal, or one bf16 ulp apart (<= 2^-7 |r|) where
 * that difference straddles a rounding boundary. Per element: |cpu - ref| <= 2^-7 |ref| +
 * 2 K u32 sum|a_i b_i| for a single rounding point (matmul), and, per tensor, n_r 2^-7 max|ref|
 * for a kernel with n_r rounding points on the path (attention: s, p, out forward; d.v, dp, the
 * three sums backward). A straddle needs the exact value within K u32 of a boundary, whose
 * spacing is 2^-7 relative: at most a fraction of about K 2^-17 of the elements differ at all
 * (K <= 96 here: < 0.1%); the test allows 5%, so a rounding point missing on one side (every
 * element differing) fails. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h" /* hm_splitmix64 */
#include "util/half.h"
#include "util/util.h"

static uint32_t bits_of(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  return x;
}
static float float_of(uint32_t x) {
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static void test_rounding(void **state) {
  (void)state;
  assert_int_equal(hm_f32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(hm_f32_to_bf16(float_of(0x3f808000)), 0x3f80); /* tie: to even (down) */
  assert_int_equal(hm_f32_to_bf16(float_of(0x3f818000)), 0x3f82); /* tie: to even (up) */
  assert_int_equal(hm_f32_to_bf16(float_of(0x3f808001)), 0x3f81); /* above the tie */
  assert_int_equal(hm_f32_to_bf16(float_of(0xbf808001)), 0xbf81); /* negative, magnitude rounds */
  assert_int_equal(hm_f32_to_bf16(INFINITY), 0x7f80);
  assert_int_equal(hm_f32_to_bf16(-INFINITY), 0xff80);
  assert_int_equal(hm_f32_to_bf16(float_of(0x7f7fffff)), 0x7f80); /* FLT_MAX overflows to inf */
  assert_int_equal(hm_f32_to_bf16(float_of(0x7f7f7fff)), 0x7f7f); /* below the midpoint: max bf16 */
  uint16_t n = hm_f32_to_bf16(float_of(0x7f800001));              /* signalling NaN, low payload */
  assert_true((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0 && (n & 0x40));   /* a quiet NaN, not inf */
  assert_true(isnan(hm_bf16_to_f32(hm_f32_to_bf16(NAN))));
  assert_int_equal(hm_f32_to_bf16(float_of(0x00008000)), 0x0000); /* subnormal tie to even 0 */
  assert_int_equal(hm_f32_to_bf16(float_of(0x00018000)), 0x0002); /* subnormal tie to even up */
  assert_int_equal(hm_f32_to_bf16(float_of(0x00010001)), 0x0001);
  assert_int_equal(hm_f32_to_bf16(float_of(0x007fffff)), 0x0080); /* largest subnormal -> min normal */
  assert_int_equal(hm_f32_to_bf16(-0.0f), 0x8000);
  assert_true(hm_bf16_to_f32(0x0001) > 0 && hm_bf16_to_f32(0x0001) == float_of(0x00010000));
  /* double: 1 + 2^-8 + 2^-30 rounds to float as the tie 1 + 2^-8 (which would then go to 1.0);
   * the single rounding goes up */
  assert_int_equal(hm_f64_to_bf16(1.0 + ldexp(1, -8) + ldexp(1, -30)), 0x3f81);
  assert_int_equal(hm_f64_to_bf16(1.0 + ldexp(1, -8) - ldexp(1, -30)), 0x3f80);
  assert_int_equal(hm_f64_to_bf16(1.0 + ldexp(1, -8)), 0x3f80);           /* exact tie: even */
  assert_int_equal(hm_f64_to_bf16(-(1.0 + 3 * ldexp(1, -8))), 0xbf82);    /* tie to even, negative */
  assert_int_equal(hm_f64_to_bf16(1e300), 0x7f80);
  assert_int_equal(hm_f64_to_bf16(ldexp(1, -140)), 0x0000 | hm_f32_to_bf16((float)ldexp(1, -140)));
  assert_int_equal(hm_f64_to_bf16(ldexp(1, -133) * 1.5), 0x0001 + 1); /* 1.5 of the smallest subnormal: tie to even 2 */
  assert_int_equal(hm_f64_to_bf16(ldexp(1, -133) * 1.5000001), 0x0002);
  assert_int_equal(hm_f64_to_bf16(ldexp(1, -133) * 0.5000001), 0x0001);
  assert_int_equal(hm_f64_to_bf16(ldexp(1, -133) * 0.5), 0x0000);
  assert_true(isnan(hm_bf16_to_f32(hm_f64_to_bf16(NAN))));
  /* every bf16 value converts back to itself */
  for (uint32_t b = 0; b < 0x10000; b++) {
    float f = hm_bf16_to_f32((uint16_t)b);
    if (isnan(f)) continue;
    assert_int_equal(hm_f32_to_bf16(f), b);
    assert_int_equal(hm_f64_to_bf16((double)f), b);
  }
  (void)bits_of;
}

/* deterministic values in [-1, 1) */
static void fill(float *x, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) x[i] = (float)((double)(hm_splitmix64(seed + i) >> 11) * 0x1.0p-52 - 1.0);
}

static void round_all(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = hm_f32_to_bf16(src[i]);
}

typedef struct {
  hm_device *d;
  void *buf[8];
  int n;
} devbufs;

static void *put(devbufs *b, const void *host, size_t bytes) {
  void *p = NULL;
  assert_int_equal(hm_device_alloc(b->d, &p, bytes, "test"), HM_OK);
  if (host)
    assert_int_equal(hm_device_copy_h2d(b->d, p, host, bytes), HM_OK);
  else
    assert_int_equal(hm_device_zero(b->d, p, bytes), HM_OK);
  b->buf[b->n++] = p;
  return p;
}

static void get(devbufs *b, void *host, const void *p, size_t bytes) {
  assert_int_equal(hm_device_copy_d2h(b->d, host, p, bytes), HM_OK);
}

static void release(devbufs *b) {
  for (int i = 0; i < b->n; i++) hm_device_free(b->d, b->buf[i]);
  b->n = 0;
}

enum { MN = 37, MC = 45, MOC = 29 }; /* odd shapes */

/* matmul forward and backward on one device: out (N,OC), dinp (N,C), dw (OC,C), db (OC) */
static void run_matmul(const char *spec, float *out, float *dinp, float *dw, float *db) {
  float x[MN * MC], w[MOC * MC], bias[MOC], dout[MN * MOC];
  uint16_t x16[MN * MC], w16[MOC * MC];
  fill(x, MN * MC, 1), fill(w, MOC * MC, 2), fill(bias, MOC, 3), fill(dout, MN * MOC, 4);
  round_all(x16, x, MN * MC), round_all(w16, w, MOC * MC);
  devbufs b = {0};
  assert_int_equal(hm_device_open(spec, &b.d), HM_OK);
  assert_true(hm_device_supports_bf16(b.d));
  void *dx = put(&b, x16, sizeof x16), *dwt = put(&b, w16, sizeof w16), *dbias = put(&b, bias, sizeof bias);
  void *dout_d = put(&b, dout, sizeof dout), *o = put(&b, NULL, sizeof(float) * MN * MOC);
  void *gi = put(&b, NULL, sizeof(float) * MN * MC), *gw = put(&b, NULL, sizeof(float) * MOC * MC);
  void *gb = put(&b, NULL, sizeof(float) * MOC);
  assert_int_equal(hm_dev_matmul_forward_bf16(b.d, o, dx, dwt, dbias, MN, MC, MOC), HM_OK);
  assert_int_equal(hm_dev_matmul_backward_bf16(b.d, gi, gw, gb, dout_d, dx, dwt, MN, MC, MOC), HM_OK);
  get(&b, out, o, sizeof(float) * MN * MOC), get(&b, dinp, gi, sizeof(float) * MN * MC);
  get(&b, dw, gw, sizeof(float) * MOC * MC), get(&b, db, gb, sizeof(float) * MOC);
  release(&b);
  hm_device_close(b.d);
}

/* ref's matmul is its definition evaluated exactly: compare bitwise with the same sums here */
static void test_ref_matmul_is_the_definition(void **state) {
  (void)state;
  static float out[MN * MOC], dinp[MN * MC], dw[MOC * MC], db[MOC];
  run_matmul("ref", out, dinp, dw, db);
  float x[MN * MC], w[MOC * MC], bias[MOC], dout[MN * MOC];
  fill(x, MN * MC, 1), fill(w, MOC * MC, 2), fill(bias, MOC, 3), fill(dout, MN * MOC, 4);
  for (int n = 0; n < MN; n++)
    for (int o = 0; o < MOC; o++) {
      double v = 0;
      for (int c = 0; c < MC; c++) v += (double)hm_round_bf16(x[n * MC + c]) * hm_round_bf16(w[o * MC + c]);
      v += hm_round_bf16(bias[o]);
      assert_true(out[n * MOC + o] == (float)hm_round_bf16_f64(v));
    }
  for (int o = 0; o < MOC; o++) {
    double s = 0;
    for (int n = 0; n < MN; n++) s += hm_round_bf16(dout[n * MOC + o]);
    assert_true(db[o] == (float)hm_round_bf16_f64(s));
    for (int c = 0; c < MC; c++) {
      double g = 0;
      for (int n = 0; n < MN; n++) g += (double)hm_round_bf16(dout[n * MOC + o]) * hm_round_bf16(x[n * MC + c]);
      assert_true(dw[o * MC + c] == (float)hm_round_bf16_f64(g));
    }
  }
  for (int n = 0; n < MN; n++)
    for (int c = 0; c < MC; c++) {
      double g = 0;
      for (int o = 0; o < MOC; o++) g += (double)hm_round_bf16(dout[n * MOC + o]) * hm_round_bf16(w[o * MC + c]);
      assert_true(dinp[n * MC + c] == (float)hm_round_bf16_f64(g));
    }
}

/* |a - r| <= 2^-7 |r| + 2 K 2^-24 S per element (S = sum |a_i b_i| <= K here: inputs in [-1,1]);
 * at most 5% of the elements differ at all */
static void check_close(const char *what, const float *a, const float *r, size_t n, int K) {
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) {
    double bound = ldexp(fabs(r[i]), -7) + 2.0 * K * K * ldexp(1, -24);
    if (fabs((double)a[i] - r[i]) > bound) fail_msg("%s[%zu]: cpu %.9g ref %.9g bound %.3g", what, i, a[i], r[i], bound);
    differ += a[i] != r[i];
  }
  print_message("%s: %zu of %zu differ by one bf16 ulp\n", what, differ, n);
  assert_true(differ * 20 <= n);
}

static void test_cpu_matmul_matches_ref(void **state) {
  (void)state;
  static float ro[MN * MOC], ri[MN * MC], rw[MOC * MC], rb[MOC], co[MN * MOC], ci[MN * MC], cw[MOC * MC], cb[MOC];
  run_matmul("ref", ro, ri, rw, rb);
  run_matmul("cpu:threads=2", co, ci, cw, cb);
  check_close("matmul out", co, ro, MN * MOC, MC);
  check_close("matmul dinp", ci, ri, MN * MC, MOC);
  check_close("matmul dweight", cw, rw, MOC * MC, MN);
  check_close("matmul dbias", cb, rb, MOC, MN);
}

enum { AB = 2, AT = 19, AC = 24, ANH = 3 }; /* hs 8, T odd */

static void run_attention(const char *spec, float *out, float *dqkv) {
  static float qkv[AB * AT * 3 * AC], dout[AB * AT * AC];
  fill(qkv, sizeof qkv / sizeof *qkv, 11), fill(dout, sizeof dout / sizeof *dout, 12);
  for (size_t i = 0; i < sizeof qkv / sizeof *qkv; i++) qkv[i] *= 3; /* peakier softmax */
  devbufs b = {0};
  assert_int_equal(hm_device_open(spec, &b.d), HM_OK);
  void *q = put(&b, qkv, sizeof qkv), *dd = put(&b, dout, sizeof dout), *o = put(&b, NULL, sizeof dout);
  void *lse = put(&b, NULL, hm_dev_attention_bf16_saved_elems(AB, AT, AC, ANH) * sizeof(float));
  void *g = put(&b, NULL, sizeof qkv);
  assert_int_equal(hm_dev_attention_forward_bf16(b.d, o, lse, q, AB, AT, AC, ANH), HM_OK);
  assert_int_equal(hm_dev_attention_backward_bf16(b.d, g, dd, q, lse, AB, AT, AC, ANH), HM_OK);
  get(&b, out, o, sizeof dout), get(&b, dqkv, g, sizeof qkv);
  release(&b);
  hm_device_close(b.d);
}

/* per tensor: |cpu - ref| <= n_r 2^-7 max|ref|; outputs are bf16 values */
static void check_tensor(const char *what, const float *a, const float *r, size_t n, int n_r) {
  double mx = 0, worst = 0;
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) {
    mx = fmax(mx, fabs(r[i]));
    worst = fmax(worst, fabs((double)a[i] - r[i]));
    differ += a[i] != r[i];
    assert_true(a[i] == hm_round_bf16(a[i]));
  }
  print_message("%s: max diff %.3g = %.3g of max|ref| (bound %.3g); %zu of %zu differ\n", what, worst, worst / mx,
                n_r * ldexp(1, -7), differ, n);
  assert_true(worst <= n_r * ldexp(1, -7) * mx);
  assert_true(differ * 20 <= n);
}

static void test_cpu_attention_matches_ref(void **state) {
  (void)state;
  static float ro[AB * AT * AC], rg[AB * AT * 3 * AC], co[AB * AT * AC], cg[AB * AT * 3 * AC];
  run_attention("ref", ro, rg);
  run_attention("cpu:threads=2", co, cg);
  check_tensor("attention out", co, ro, sizeof ro / sizeof *ro, 3);
  check_tensor("attention dqkv", cg, rg, sizeof rg / sizeof *rg, 6);
}

/* round(p) v with p a softmax of q.k: a row whose keys are all equal attends uniformly */
static void test_attention_uniform(void **state) {
  (void)state;
  static float qkv[1 * 5 * 3 * 8], out[5 * 8], lse[5];
  for (int t = 0; t < 5; t++)
    for (int c = 0; c < 8; c++) {
      qkv[t * 24 + c] = 1, qkv[t * 24 + 8 + c] = 0.5f; /* equal scores */
      qkv[t * 24 + 16 + c] = (float)(t + 1);            /* values 1..5 */
    }
  devbufs b = {0};
  assert_int_equal(hm_device_open("ref", &b.d), HM_OK);
  void *q = put(&b, qkv, sizeof qkv), *o = put(&b, NULL, sizeof out), *l = put(&b, NULL, sizeof lse);
  assert_int_equal(hm_dev_attention_forward_bf16(b.d, o, l, q, 1, 5, 8, 1), HM_OK);
  get(&b, out, o, sizeof out), get(&b, lse, l, sizeof lse);
  /* row t: mean of 1..t+1 with p = round_bf16(1/(t+1)) */
  for (int t = 0; t < 5; t++) {
    double p = hm_round_bf16_f64(1.0 / (t + 1)), v = 0;
    for (int t2 = 0; t2 <= t; t2++) v += p * (t2 + 1);
    assert_true(out[t * 8] == (float)hm_round_bf16_f64(v));
  }
  release(&b);
  hm_device_close(b.d);
}

static void test_unsupported_is_clear(void **state) {
  (void)state;
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  assert_false(hm_device_supports_bf16(d));
  void *a = NULL, *o = NULL;
  assert_int_equal(hm_device_alloc(d, &a, 64, "t"), HM_OK);
  assert_int_equal(hm_device_alloc(d, &o, 64, "t"), HM_OK);
  assert_int_equal(hm_dev_to_bf16(d, o, a, 4), HM_ERR_UNSUPPORTED);
  assert_non_null(strstr(hm_last_error(), "bf16"));
  assert_int_equal(hm_dev_matmul_forward_bf16(d, o, a, a, NULL, 1, 1, 1), HM_ERR_UNSUPPORTED);
  assert_non_null(strstr(hm_last_error(), "--precision fp32"));
  hm_device_free(d, a);
  hm_device_free(d, o);
  hm_device_close(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rounding),
      cmocka_unit_test(test_ref_matmul_is_the_definition),
      cmocka_unit_test(test_cpu_matmul_matches_ref),
      cmocka_unit_test(test_cpu_attention_matches_ref),
      cmocka_unit_test(test_attention_uniform),
      cmocka_unit_test(test_unsupported_is_clear),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
