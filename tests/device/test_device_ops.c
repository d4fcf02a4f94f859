/* Every kernel of a backend against the `ref` oracle, forward and backward, on odd shapes
 * (B=3, T=37, C=96, NH=3, V=259 padded to 264) so no power-of-two or block-size assumption can
 * hide. Gradient buffers start from random values, which checks that backward kernels
 * accumulate (+=) rather than overwrite. The backend under test is `cpu:threads=2`, or the
 * spec given as the first argument (`opencl:threads=2`; exit 77, skipped, when that backend is
 * not built or has no device). The device under test is reached only through the copy calls,
 * so the same test runs on a backend whose memory the host cannot address; the bounds are
 * computed from ref's copies, which are host memory (ref is a host backend).
 *
 * Tolerances (u = 2^-24, the f32 unit roundoff). ref sums in double and rounds each result once
 * (error <= u/2 |ref| + K 2^-53 sum|terms|, negligible against cpu's), so cpu - ref is cpu's
 * f32 error. Matmuls are checked element by element against Higham's bound (3.5) for a sum of K
 * products in any order (blocked, FMA, threads):
 *     |cpu - ref| <= gamma_K sum|a_k b_k| + u |ref|,   gamma_K = K u / (1 - K u),
 * with sum|a_k b_k| computed here from the inputs (the += into the output counts as one more term).
 * The other kernels are compared normwise, max|cpu - ref| / max|ref| per tensor (immune to
 * cancellation in single elements), against a bound given at each check, in units of u, from the
 * kernel's roundings: sums of K terms (gamma_K, no cancellation where all terms are positive),
 * plus ~2 ulp per call of cpu's polynomial exp/tanh where it uses them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/device.h"

#define SKIP 77 /* ctest's SKIP_RETURN_CODE */

enum { B = 3, T = 37, C = 96, NH = 3, V = 259, Vp = 264, N = B * T };

typedef struct pair {
  hm_device *cpu, *ref; /* cpu: the backend under test (cpu unless named on the command line) */
} pair;

static const char *g_spec = "cpu:threads=2";

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *host_rand(size_t n, float scale) {
  float *h = malloc(n * sizeof *h);
  assert_non_null(h);
  for (size_t i = 0; i < n; i++) h[i] = frand() * scale;
  return h;
}

/* a tensor living on both devices with identical contents */
typedef struct twin {
  float *c, *r;
  size_t n;
} twin;

static twin twin_from(pair *p, const float *h, size_t n) {
  twin t = {NULL, NULL, n};
  assert_int_equal(hm_device_alloc(p->cpu, (void **)&t.c, n * 4, "test"), HM_OK);
  assert_int_equal(hm_device_alloc(p->ref, (void **)&t.r, n * 4, "test"), HM_OK);
  assert_int_equal(hm_device_copy_from_f32(p->cpu, t.c, h, n), HM_OK);
  assert_int_equal(hm_device_copy_from_f32(p->ref, t.r, h, n), HM_OK);
  return t;
}

static twin twin_rand(pair *p, size_t n, float scale) {
  float *h = host_rand(n, scale);
  twin t = twin_from(p, h, n);
  free(h);
  return t;
}

static void twin_free(pair *p, twin *t) {
  hm_device_free(p->cpu, t->c);
  hm_device_free(p->ref, t->r);
}

static pair *g_pair;

static double rel_err(const twin *t) {
  float *a = malloc(t->n * 4), *b = malloc(t->n * 4);
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(hm_device_copy_to_f32(g_pair->cpu, a, t->c, t->n), HM_OK);
  assert_int_equal(hm_device_copy_to_f32(g_pair->ref, b, t->r, t->n), HM_OK);
  double maxd = 0, maxr = 0;
  for (size_t i = 0; i < t->n; i++) {
    assert_true(isfinite(a[i]));
    double d = fabs((double)a[i] - b[i]);
    if (d > maxd) maxd = d;
    if (fabs(b[i]) > maxr) maxr = fabs(b[i]);
  }
  free(a);
  free(b);
  return maxr > 0 ? maxd / maxr : maxd;
}

#define U 0x1.0p-24 /* f32 unit roundoff */

/* Normwise bounds of the kernels other than matmul. A sum of K terms errs by at most gamma_K
 * sum|terms| in any order; its rounding errors behave as independent zero-mean variables, so
 * they exceed lambda sqrt(K) u sum|terms| with probability < 2 exp(-lambda^2 / 2) (Higham & Mary
 * 2019): PSUM(K) uses lambda = 6 (< 3e-8). kappa below is sum|terms| / max|result| for these
 * inputs. */
#define PSUM(K) (6 * sqrt((double)(K)) * U)
/* layernorm: row sums of C = 96 (mean, variance, backward's two sums) or N + 1 = 112 (dw, db,
 * onto the old values) terms; kappa <= 3.4 (the mean: E|x| = 1 for x uniform in [-2, 2] over a
 * largest |row mean| of ~0.3; dw: 111 terms of |dout xhat| ~ 0.4 over a largest sum of ~15);
 * the variance's terms are all positive and the mean's error cancels in it to first order. */
#define LN_TOL (PSUM(112) * 3.4 + 4 * U)
/* attention: scores are dot products of hs = 32 terms, softmax sums up to T = 130 positive
 * exps (cpu's polynomial exp: 2 ulp), the output averages up to T rows of V whose values cancel
 * (kappa up to sqrt(T) ~ 11.4 for values uniform in [-1, 1]), and backward repeats each of
 * these once more: 2 (PSUM(130) * 11.4 + 4 u). */
#define ATT_TOL (2 * (PSUM(130) * 11.4 + 4 * U))
/* gelu backward: 1 - tanh^2 near saturation turns tanh's 2 ulp into 4 u absolute, multiplied by
 * |x| sqrt(2/pi) (1 + 3 * 0.044715 x^2) <= 10 for |x| <= 4, plus ~8 roundings, over
 * max|dinp| >= 1: 48 u. */
#define GELU_BWD_TOL (48 * U)
/* softmax and cross-entropy: exp (2 ulp), a sum of V = 259 positive terms, a division or log:
 * PSUM(259) + 4 u; the loss (log of the sum) inherits the sum's relative error as an absolute
 * one, over max|loss| > 1. */
#define SOFTMAX_TOL (PSUM(259) + 4 * U)
/* AdamW: 3 steps of ~5 f32 roundings per state update (m, v, the update of p), against ref's
 * double: 15 u. */
#define ADAMW_TOL (16 * U)

/* RMSNorm: the sum of squares (C = 96 positive terms, kappa 1) and backward's two sums have the
 * layernorm's structure: backward's row dot product sum(w dout x) enters dinp through
 * rstd^3 |x| / C (~0.014 over max|dinp| >= ~0.8: kappa < 1) and dw sums N + 1 = 112 terms with
 * kappa <= 3.4 as layernorm's dw does: LN_TOL bounds both. */
#define RMS_TOL LN_TOL
/* rope: each output is x1 c - x2 s (two products, one sum) with cos and sin rounded to f32 once
 * (u/2 each): <= 3u (|x1| + |x2|) <= 6u max|x| per element, over max|result| ~ max|x| (the
 * rotation keeps each pair's norm; thousands of pairs): 8 u. */
#define ROPE_TOL (8 * U)
/* SwiGLU: exp (libm expf, 1 ulp), 1 + e, a division and two products, ~6 roundings; backward's
 * 1 - sigmoid loses sigmoid's u absolutely, times |g| <= 2, plus ~8 roundings: 16 u. */
#define SWIGLU_TOL (16 * U)
/* KV repeat: forward copies (exact); backward sums rep = 3 terms of magnitude <= 1: gamma_2 * 3
 * over max|sum| >= ~2 (thousands of sums): 4 u. */
#define KV_TOL (4 * U)

#define EXPECT_CLOSE(tw, tol)                                                         \
  do {                                                                                \
    double e_ = rel_err(&(tw));                                                       \
    if (getenv("HM_TEST_VERBOSE")) print_message("    %s: %.3g u (bound %.3g u)\n", #tw, e_ / U, (tol) / U); \
    if (!(e_ <= (tol))) fail_msg("%s: relative error %.3g > %.3g", #tw, e_, (double)(tol)); \
  } while (0)

#define OK(x) assert_int_equal((x), HM_OK)

static double gamma_k(int k) { return k * U / (1 - k * U); }

/* Element-wise check of a sum of products: |cpu - ref| <= gamma_K * absum + u |ref|. */
static void expect_within_sum_bound(const char *what, const twin *t, const double *absum, int K) {
  double worst = 0;
  float *c = malloc(t->n * sizeof *c); /* the device under test's result, copied out */
  assert_non_null(c);
  assert_int_equal(hm_device_copy_to_f32(g_pair->cpu, c, t->c, t->n), HM_OK);
  for (size_t i = 0; i < t->n; i++) {
    double bound = gamma_k(K) * absum[i] + U * fabs((double)t->r[i]);
    double e = fabs((double)c[i] - t->r[i]);
    if (!(e <= bound))
      fail_msg("%s[%zu]: %s %.9g, ref %.9g: error %.3g > bound %.3g (K = %d)", what, i, g_spec, c[i], t->r[i], e,
               bound, K);
    if (bound > 0 && e / bound > worst) worst = e / bound;
  }
  free(c);
  if (getenv("HM_TEST_VERBOSE")) print_message("    %s: worst %.3f of the bound\n", what, worst);
}

static int setup(void **state) {
  pair *p = calloc(1, sizeof *p);
  if (!p) return -1;
  if (hm_device_open(g_spec, &p->cpu) != HM_OK) {
    fprintf(stderr, "cannot open %s: %s\n", g_spec, hm_last_error());
    return -1;
  }
  if (hm_device_open("ref", &p->ref) != HM_OK) return -1;
  *state = p;
  g_pair = p;
  return 0;
}

static int teardown(void **state) {
  pair *p = *state;
  hm_device_close(p->cpu);
  hm_device_close(p->ref);
  free(p);
  return 0;
}

/* int32 values copied to a device (token ids, targets live in device memory) */
static int32_t *dev_ints(hm_device *d, const int32_t *h, size_t n) {
  int32_t *p = NULL;
  OK(hm_device_alloc(d, (void **)&p, n * sizeof *p, "test ints"));
  OK(hm_device_copy_h2d(d, p, h, n * sizeof *p));
  return p;
}

/* element i of a device tensor, read back */
static float dev_get(hm_device *d, const float *t, size_t i) {
  float v;
  OK(hm_device_copy_d2h(d, &v, hm_device_offset(d, (void *)t, i), sizeof v));
  return v;
}

static void test_encoder(void **state) {
  pair *p = *state;
  int32_t htok[N];
  for (int i = 0; i < N; i++) htok[i] = (int32_t)((i * 7919u + 13) % V);
  htok[5] = htok[40] = htok[77] = 3; /* repeated tokens exercise the scatter-add */
  int32_t *tok = dev_ints(p->cpu, htok, N), *tok_r = dev_ints(p->ref, htok, N);
  twin wte = twin_rand(p, (size_t)V * C, 0.5f), wpe = twin_rand(p, (size_t)T * C, 0.5f);
  twin out = twin_rand(p, (size_t)N * C, 1);
  OK(hm_dev_encoder_forward(p->cpu, out.c, tok, wte.c, wpe.c, B, T, C));
  OK(hm_dev_encoder_forward(p->ref, out.r, tok_r, wte.r, wpe.r, B, T, C));
  EXPECT_CLOSE(out, U); /* one addition: both round the same exact sum (<= u/2 each) */
  twin dout = twin_rand(p, (size_t)N * C, 1);
  twin dwte = twin_rand(p, (size_t)V * C, 1), dwpe = twin_rand(p, (size_t)T * C, 1);
  OK(hm_dev_encoder_backward(p->cpu, dwte.c, dwpe.c, dout.c, tok, B, T, C));
  OK(hm_dev_encoder_backward(p->ref, dwte.r, dwpe.r, dout.r, tok_r, B, T, C));
  /* scatter-add: <= 4 repeats of a token plus the old value, 5 terms of magnitude <= 1:
     * gamma_5 * 5 = 25 u over max|ref| ~ 1 (thousands of values uniform in [-1, 1]) */
  EXPECT_CLOSE(dwte, 32 * U);
  EXPECT_CLOSE(dwpe, 32 * U); /* B = 3 terms plus the old value: 16 u */
  twin_free(p, &wte); twin_free(p, &wpe); twin_free(p, &out); twin_free(p, &dout);
  twin_free(p, &dwte); twin_free(p, &dwpe);
  hm_device_free(p->cpu, tok);
  hm_device_free(p->ref, tok_r);
}

static void test_layernorm(void **state) {
  pair *p = *state;
  twin inp = twin_rand(p, (size_t)N * C, 2), w = twin_rand(p, C, 1), b = twin_rand(p, C, 1);
  twin out = twin_rand(p, (size_t)N * C, 1), mean = twin_rand(p, N, 1), rstd = twin_rand(p, N, 1);
  OK(hm_dev_layernorm_forward(p->cpu, out.c, mean.c, rstd.c, inp.c, w.c, b.c, N, C));
  OK(hm_dev_layernorm_forward(p->ref, out.r, mean.r, rstd.r, inp.r, w.r, b.r, N, C));
  EXPECT_CLOSE(out, LN_TOL);
  EXPECT_CLOSE(mean, LN_TOL);
  EXPECT_CLOSE(rstd, LN_TOL);
  twin dout = twin_rand(p, (size_t)N * C, 1), dinp = twin_rand(p, (size_t)N * C, 1);
  twin dw = twin_rand(p, C, 1), db = twin_rand(p, C, 1);
  OK(hm_dev_layernorm_backward(p->cpu, dinp.c, dw.c, db.c, dout.c, inp.c, w.c, mean.c, rstd.c, N, C));
  OK(hm_dev_layernorm_backward(p->ref, dinp.r, dw.r, db.r, dout.r, inp.r, w.r, mean.r, rstd.r, N, C));
  EXPECT_CLOSE(dinp, LN_TOL);
  EXPECT_CLOSE(dw, LN_TOL);
  EXPECT_CLOSE(db, LN_TOL);
  twin_free(p, &inp); twin_free(p, &w); twin_free(p, &b); twin_free(p, &out); twin_free(p, &mean);
  twin_free(p, &rstd); twin_free(p, &dout); twin_free(p, &dinp); twin_free(p, &dw); twin_free(p, &db);
}

/* sum|a_k b_k| of every output of the matmul forward and backward (host-side, in double). */
typedef struct mm_absums {
  double *out, *dinp, *dw, *db;
} mm_absums;

static mm_absums matmul_absums(const twin *inp, const twin *w, const twin *bias, int with_bias, const twin *dout,
                               const twin *dinp, const twin *dw, const twin *db, int n, int c, int oc) {
  mm_absums a = {calloc((size_t)n * oc, 8), calloc((size_t)n * c, 8), calloc((size_t)oc * c, 8), calloc(oc, 8)};
  assert_true(a.out && a.dinp && a.dw && a.db);
  for (int i = 0; i < n; i++)
    for (int o = 0; o < oc; o++) {
      double s = with_bias ? fabs(bias->r[o]) : 0;
      for (int k = 0; k < c; k++) s += fabs(inp->r[(size_t)i * c + k]) * fabs(w->r[(size_t)o * c + k]);
      a.out[(size_t)i * oc + o] = s;
    }
  for (int i = 0; i < n; i++) /* dinp += dout x w: OC products and the old value */
    for (int k = 0; k < c; k++) {
      double s = fabs(dinp->r[(size_t)i * c + k]);
      for (int o = 0; o < oc; o++) s += fabs(dout->r[(size_t)i * oc + o]) * fabs(w->r[(size_t)o * c + k]);
      a.dinp[(size_t)i * c + k] = s;
    }
  for (int o = 0; o < oc; o++) { /* dw += dout^T x inp, db += column sums: N terms and the old value */
    double sb = fabs(db->r[o]);
    for (int i = 0; i < n; i++) sb += fabs(dout->r[(size_t)i * oc + o]);
    a.db[o] = sb;
    for (int k = 0; k < c; k++) {
      double s = fabs(dw->r[(size_t)o * c + k]);
      for (int i = 0; i < n; i++) s += fabs(dout->r[(size_t)i * oc + o]) * fabs(inp->r[(size_t)i * c + k]);
      a.dw[(size_t)o * c + k] = s;
    }
  }
  return a;
}

static void matmul_case(pair *p, int n, int c, int oc, int with_bias) {
  twin inp = twin_rand(p, (size_t)n * c, 1), w = twin_rand(p, (size_t)oc * c, 0.2f);
  twin bias = twin_rand(p, oc, 1);
  twin out = twin_rand(p, (size_t)n * oc, 1);
  twin dout = twin_rand(p, (size_t)n * oc, 1), dinp = twin_rand(p, (size_t)n * c, 1);
  twin dw = twin_rand(p, (size_t)oc * c, 1), db = twin_rand(p, oc, 1);
  /* bounds from the inputs, before the backward accumulates into dinp, dw, db */
  mm_absums a = matmul_absums(&inp, &w, &bias, with_bias, &dout, &dinp, &dw, &db, n, c, oc);
  OK(hm_dev_matmul_forward(p->cpu, out.c, inp.c, w.c, with_bias ? bias.c : NULL, n, c, oc));
  OK(hm_dev_matmul_forward(p->ref, out.r, inp.r, w.r, with_bias ? bias.r : NULL, n, c, oc));
  expect_within_sum_bound("out", &out, a.out, c + 1);
  OK(hm_dev_matmul_backward(p->cpu, dinp.c, dw.c, with_bias ? db.c : NULL, dout.c, inp.c, w.c, n, c, oc));
  OK(hm_dev_matmul_backward(p->ref, dinp.r, dw.r, with_bias ? db.r : NULL, dout.r, inp.r, w.r, n, c, oc));
  expect_within_sum_bound("dinp", &dinp, a.dinp, oc + 1);
  expect_within_sum_bound("dw", &dw, a.dw, n + 1);
  expect_within_sum_bound("db", &db, a.db, n + 1); /* untouched (= exactly equal) without bias */
  free(a.out), free(a.dinp), free(a.dw), free(a.db);
  twin_free(p, &inp); twin_free(p, &w); twin_free(p, &bias); twin_free(p, &out);
  twin_free(p, &dout); twin_free(p, &dinp); twin_free(p, &dw); twin_free(p, &db);
}

static void test_matmul(void **state) {
  pair *p = *state;
  matmul_case(p, N, C, 3 * C, 1);  /* qkv projection */
  matmul_case(p, N, 4 * C, C, 1);  /* MLP down projection (K = 384) */
  matmul_case(p, N, C, Vp, 0);     /* head, no bias */
  matmul_case(p, 1, C, 4 * C, 1);  /* one row: the split goes along OC */
  matmul_case(p, 5, 3, 2, 1);      /* tiny */
}

static void attention_case(pair *p, int b, int t, int c, int nh) {
  /* what forward saves for backward is backend-defined (ref: probabilities, cpu: log-sum-exp),
   * so only the outputs and the gradients are compared */
  void *saved_c, *saved_r;
  assert_int_equal(hm_device_alloc(p->cpu, &saved_c, 4 * hm_dev_attention_saved_elems(p->cpu, b, t, c, nh), "saved"), HM_OK);
  assert_int_equal(hm_device_alloc(p->ref, &saved_r, 4 * hm_dev_attention_saved_elems(p->ref, b, t, c, nh), "saved"), HM_OK);
  twin qkv = twin_rand(p, (size_t)b * t * 3 * c, 1), out = twin_rand(p, (size_t)b * t * c, 1);
  OK(hm_dev_attention_forward(p->cpu, out.c, saved_c, qkv.c, b, t, c, nh));
  OK(hm_dev_attention_forward(p->ref, out.r, saved_r, qkv.r, b, t, c, nh));
  EXPECT_CLOSE(out, ATT_TOL);
  twin dout = twin_rand(p, (size_t)b * t * c, 1), dqkv = twin_rand(p, (size_t)b * t * 3 * c, 1);
  OK(hm_dev_attention_backward(p->cpu, dqkv.c, dout.c, qkv.c, saved_c, b, t, c, nh));
  OK(hm_dev_attention_backward(p->ref, dqkv.r, dout.r, qkv.r, saved_r, b, t, c, nh));
  EXPECT_CLOSE(dqkv, ATT_TOL);
  hm_device_free(p->cpu, saved_c);
  hm_device_free(p->ref, saved_r);
  twin_free(p, &qkv); twin_free(p, &out); twin_free(p, &dout); twin_free(p, &dqkv);
}

static void test_attention(void **state) {
  pair *p = *state;
  attention_case(p, B, T, C, NH);
  attention_case(p, 2, 130, 64, 4); /* T spans three 64-row tiles, the last one partial */
  attention_case(p, 1, 1, 8, 1);
}

static void test_gelu_residual_scale(void **state) {
  pair *p = *state;
  size_t n = (size_t)N * 4 * C + 3; /* not a multiple of any span or vector width */
  twin inp = twin_rand(p, n, 4), out = twin_rand(p, n, 1);
  float *h = malloc(n * 4);
  OK(hm_device_copy_to_f32(p->ref, h, inp.r, n));
  h[0] = -30; h[1] = 30; h[2] = 0; /* saturated tails and the origin */
  OK(hm_device_copy_from_f32(p->cpu, inp.c, h, n));
  OK(hm_device_copy_from_f32(p->ref, inp.r, h, n));
  free(h);
  OK(hm_dev_gelu_forward(p->cpu, out.c, inp.c, n));
  OK(hm_dev_gelu_forward(p->ref, out.r, inp.r, n));
  EXPECT_CLOSE(out, 16 * U); /* 0.5 x (1 + tanh z): tanh 2 ulp + ~6 roundings, relative to |x| */
  twin dout = twin_rand(p, n, 1), dinp = twin_rand(p, n, 1);
  OK(hm_dev_gelu_backward(p->cpu, dinp.c, inp.c, dout.c, n));
  OK(hm_dev_gelu_backward(p->ref, dinp.r, inp.r, dout.r, n));
  EXPECT_CLOSE(dinp, GELU_BWD_TOL);
  OK(hm_dev_residual_forward(p->cpu, out.c, inp.c, dout.c, n));
  OK(hm_dev_residual_forward(p->ref, out.r, inp.r, dout.r, n));
  EXPECT_CLOSE(out, U); /* a + b: both round the same exact sum */
  OK(hm_dev_residual_backward(p->cpu, out.c, dinp.c, dout.c, n));
  OK(hm_dev_residual_backward(p->ref, out.r, dinp.r, dout.r, n));
  EXPECT_CLOSE(out, U); /* out += dout: the same exact sum */
  /* dinp += dout carries gelu backward's error, over a maximum an added dout of the same scale
   * can at most halve, plus one rounding: 2 GELU_BWD_TOL; doubling and scaling by 0.37 keep it
   * (a doubling is exact, a scaling is one more rounding) */
  EXPECT_CLOSE(dinp, 2 * GELU_BWD_TOL);
  OK(hm_dev_residual_backward(p->cpu, NULL, dinp.c, dinp.c, n)); /* aliasing: dinp doubles */
  OK(hm_dev_residual_backward(p->ref, NULL, dinp.r, dinp.r, n));
  EXPECT_CLOSE(dinp, 2 * GELU_BWD_TOL);
  OK(hm_dev_scale(p->cpu, dinp.c, 0.37, n));
  OK(hm_dev_scale(p->ref, dinp.r, 0.37, n));
  EXPECT_CLOSE(dinp, 2 * GELU_BWD_TOL + U);
  twin_free(p, &inp); twin_free(p, &out); twin_free(p, &dout); twin_free(p, &dinp);
}

static void test_softmax_crossentropy(void **state) {
  pair *p = *state;
  twin logits = twin_rand(p, (size_t)N * Vp, 8);
  int32_t htgt[N];
  for (int i = 0; i < N; i++) htgt[i] = (int32_t)((i * 31u + 7) % V);
  htgt[0] = V - 1;
  htgt[4] = -1; /* ignored position */
  int32_t *tgt = dev_ints(p->cpu, htgt, N), *tgt_r = dev_ints(p->ref, htgt, N);
  twin probs = twin_rand(p, (size_t)N * Vp, 1);
  OK(hm_dev_softmax_forward(p->cpu, probs.c, logits.c, N, V, Vp));
  OK(hm_dev_softmax_forward(p->ref, probs.r, logits.r, N, V, Vp));
  EXPECT_CLOSE(probs, SOFTMAX_TOL);
  twin losses = twin_rand(p, N, 1), dlogits = twin_rand(p, (size_t)N * Vp, 1);
  OK(hm_dev_crossentropy_forward_backward(p->cpu, losses.c, dlogits.c, logits.c, tgt, 1.0 / N, N, V, Vp));
  OK(hm_dev_crossentropy_forward_backward(p->ref, losses.r, dlogits.r, logits.r, tgt_r, 1.0 / N, N, V, Vp));
  EXPECT_CLOSE(losses, SOFTMAX_TOL);
  EXPECT_CLOSE(dlogits, SOFTMAX_TOL);
  assert_true(dev_get(p->cpu, losses.c, 4) == 0.0f);
  for (int i = V; i < Vp; i++) assert_true(dev_get(p->cpu, dlogits.c, (size_t)7 * Vp + i) == 0.0f);
  /* forward only, and in place (dlogits == logits) */
  OK(hm_dev_crossentropy_forward_backward(p->cpu, losses.c, NULL, logits.c, tgt, 1.0 / N, N, V, Vp));
  EXPECT_CLOSE(losses, SOFTMAX_TOL);
  OK(hm_dev_crossentropy_forward_backward(p->cpu, losses.c, logits.c, logits.c, tgt, 1.0 / N, N, V, Vp));
  OK(hm_dev_crossentropy_forward_backward(p->ref, losses.r, logits.r, logits.r, tgt_r, 1.0 / N, N, V, Vp));
  EXPECT_CLOSE(logits, SOFTMAX_TOL);
  EXPECT_CLOSE(losses, SOFTMAX_TOL);
  /* a target outside the vocabulary is an error on every backend, not an out-of-bounds read */
  htgt[9] = V;
  OK(hm_device_copy_h2d(p->cpu, tgt, htgt, sizeof htgt));
  OK(hm_device_copy_h2d(p->ref, tgt_r, htgt, sizeof htgt));
  assert_int_equal(hm_dev_crossentropy_forward_backward(p->cpu, losses.c, NULL, logits.c, tgt, 1.0, N, V, Vp),
                   HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "row 9"));
  assert_int_equal(hm_dev_crossentropy_forward_backward(p->ref, losses.r, NULL, logits.r, tgt_r, 1.0, N, V, Vp),
                   HM_ERR_INVALID_ARG);
  hm_device_free(p->cpu, tgt);
  hm_device_free(p->ref, tgt_r);
  twin_free(p, &logits); twin_free(p, &probs); twin_free(p, &losses); twin_free(p, &dlogits);
}

static void test_adamw_sums(void **state) {
  pair *p = *state;
  size_t n = 100003;
  twin par = twin_rand(p, n, 1), g = twin_rand(p, n, 1), m = twin_rand(p, n, 0.1f);
  float *hv = host_rand(n, 0.1f);
  for (size_t i = 0; i < n; i++) hv[i] = fabsf(hv[i]); /* second moments are >= 0 */
  twin v = twin_from(p, hv, n);
  free(hv);
  for (int t = 1; t <= 3; t++) {
    OK(hm_dev_adamw_update(p->cpu, par.c, g.c, m.c, v.c, n, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5, t));
    OK(hm_dev_adamw_update(p->ref, par.r, g.r, m.r, v.r, n, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.5, t));
  }
  EXPECT_CLOSE(par, ADAMW_TOL);
  EXPECT_CLOSE(m, ADAMW_TOL);
  EXPECT_CLOSE(v, ADAMW_TOL);
  double sc, sr, qc, qr;
  OK(hm_dev_sum(p->cpu, &sc, g.c, n));
  OK(hm_dev_sum(p->ref, &sr, g.r, n));
  OK(hm_dev_sumsq(p->cpu, &qc, g.c, n));
  OK(hm_dev_sumsq(p->ref, &qr, g.r, n));
  /* both sum in double (u64 = 2^-53), in different orders: each errs by <= gamma_n sum|g| */
  double abs_sum = 0;
  for (size_t i = 0; i < n; i++) abs_sum += fabs(g.r[i]); /* ref: host memory */
  assert_true(fabs(sc - sr) <= 2 * n * 0x1.0p-53 * abs_sum);
  assert_true(fabs(qc - qr) <= 2 * n * 0x1.0p-53 * qr); /* positive terms: sum|terms| = the sum */
  twin_free(p, &par); twin_free(p, &g); twin_free(p, &m); twin_free(p, &v);
}

static void test_zero_and_copies(void **state) {
  pair *p = *state;
  size_t n = (3u << 20) / 4 + 5; /* over the cpu backend's threshold for a parallel zero */
  twin t = twin_rand(p, n, 1);
  OK(hm_device_zero(p->cpu, t.c, n * 4 - 4)); /* all but the last element */
  float *h = malloc(n * 4);
  OK(hm_device_copy_d2h(p->cpu, h, t.c, n * 4));
  for (size_t i = 0; i + 1 < n; i++) assert_true(h[i] == 0.0f);
  assert_true(h[n - 1] != 0.0f);
  /* d2d inside the device under test: a second buffer, then back over the zeroed one */
  OK(hm_device_copy_to_f32(p->ref, h, t.r, n));
  void *u = NULL;
  OK(hm_device_alloc(p->cpu, &u, n * 4, "copy target"));
  OK(hm_device_copy_from_f32(p->cpu, u, h, n));
  OK(hm_device_copy_d2d(p->cpu, t.c, u, n * 4));
  assert_true(rel_err(&t) == 0.0);
  /* overlapping d2d moves like memmove */
  OK(hm_device_copy_d2d(p->cpu, hm_device_offset(p->cpu, t.c, 1), t.c, (n - 1) * 4));
  assert_true(dev_get(p->cpu, t.c, 1) == h[0] && dev_get(p->cpu, t.c, n - 1) == h[n - 2]);
  hm_device_free(p->cpu, u);
  free(h);
  twin_free(p, &t);
}

/* Llama's kernels on odd shapes: RMSNorm (N = 111 rows of C = 96), rope on q (3 heads of 32)
 * and on k (1 head) inside rows of stride C + 2*32 = 160, SwiGLU with F = 96, and the KV repeat
 * of NH = 6 heads of 16 from KVH = 2 (three query heads per KV head). */
static void test_llama_kernels(void **state) {
  pair *p = *state;
  twin inp = twin_rand(p, (size_t)N * C, 2), w = twin_rand(p, C, 1);
  twin out = twin_rand(p, (size_t)N * C, 1), rstd = twin_rand(p, N, 1);
  OK(hm_dev_rmsnorm_forward(p->cpu, out.c, rstd.c, inp.c, w.c, N, C));
  OK(hm_dev_rmsnorm_forward(p->ref, out.r, rstd.r, inp.r, w.r, N, C));
  EXPECT_CLOSE(out, RMS_TOL);
  EXPECT_CLOSE(rstd, RMS_TOL);
  twin dout = twin_rand(p, (size_t)N * C, 1), dinp = twin_rand(p, (size_t)N * C, 1), dw = twin_rand(p, C, 1);
  OK(hm_dev_rmsnorm_backward(p->cpu, dinp.c, dw.c, dout.c, inp.c, w.c, rstd.c, N, C));
  OK(hm_dev_rmsnorm_backward(p->ref, dinp.r, dw.r, dout.r, inp.r, w.r, rstd.r, N, C));
  EXPECT_CLOSE(dinp, RMS_TOL);
  EXPECT_CLOSE(dw, RMS_TOL);
  enum { HD = C / NH, KV = 1, S = C + 2 * KV * HD };
  twin qk = twin_rand(p, (size_t)N * S, 1);
  for (int fwd = 1; fwd >= 0; fwd--) {
    hm_status (*rope)(hm_device *, void *, int, int, int, int, int) = fwd ? hm_dev_rope_forward : hm_dev_rope_backward;
    OK(rope(p->cpu, qk.c, B, T, NH, HD, S));
    OK(rope(p->ref, qk.r, B, T, NH, HD, S));
    OK(rope(p->cpu, hm_device_offset(p->cpu, qk.c, C), B, T, KV, HD, S));
    OK(rope(p->ref, hm_device_offset(p->ref, qk.r, C), B, T, KV, HD, S));
    EXPECT_CLOSE(qk, ROPE_TOL);
  }
  twin gu = twin_rand(p, (size_t)N * 2 * C, 2), h = twin_rand(p, (size_t)N * C, 1);
  OK(hm_dev_swiglu_forward(p->cpu, h.c, gu.c, N, C));
  OK(hm_dev_swiglu_forward(p->ref, h.r, gu.r, N, C));
  EXPECT_CLOSE(h, SWIGLU_TOL);
  twin dgu = twin_rand(p, (size_t)N * 2 * C, 1);
  OK(hm_dev_swiglu_backward(p->cpu, dgu.c, gu.c, dout.c, N, C));
  OK(hm_dev_swiglu_backward(p->ref, dgu.r, gu.r, dout.r, N, C));
  EXPECT_CLOSE(dgu, SWIGLU_TOL);
  enum { GNH = 6, GKV = 2, GW = C + 2 * GKV * (C / GNH) };
  twin kv = twin_rand(p, (size_t)N * GW, 1), full = twin_rand(p, (size_t)N * 3 * C, 1);
  OK(hm_dev_repeat_kv_forward(p->cpu, full.c, kv.c, N, C, GNH, GKV));
  OK(hm_dev_repeat_kv_forward(p->ref, full.r, kv.r, N, C, GNH, GKV));
  EXPECT_CLOSE(full, 0);
  OK(hm_dev_repeat_kv_backward(p->cpu, kv.c, full.c, N, C, GNH, GKV));
  OK(hm_dev_repeat_kv_backward(p->ref, kv.r, full.r, N, C, GNH, GKV));
  EXPECT_CLOSE(kv, KV_TOL);
  twin_free(p, &inp); twin_free(p, &w); twin_free(p, &out); twin_free(p, &rstd); twin_free(p, &dout);
  twin_free(p, &dinp); twin_free(p, &dw); twin_free(p, &qk); twin_free(p, &gu); twin_free(p, &h);
  twin_free(p, &dgu); twin_free(p, &kv); twin_free(p, &full);
}

/* Same inputs, different thread counts: bitwise-identical results, because the cpu backend's
 * work pieces are fixed by the shapes, not by the team size. */
static void test_cpu_thread_count_invariance(void **state) {
  (void)state;
  if (strncmp(g_spec, "cpu", 3) != 0) skip(); /* about the cpu backend's work split only */
  hm_device *d1, *d2;
  OK(hm_device_open("cpu:threads=1", &d1));
  OK(hm_device_open("cpu:threads=2", &d2));
  size_t nx = (size_t)N * C;
  float *x = host_rand(nx, 1), *dy = host_rand(nx, 1), *w = host_rand(C, 1);
  float mean[N], rstd[N], y[N * C];
  float dx1[N * C] = {0}, dx2[N * C] = {0}, dw1[C] = {0}, dw2[C] = {0}, db1[C] = {0}, db2[C] = {0};
  /* host backends take host pointers, so plain arrays serve as device memory here */
  OK(hm_dev_layernorm_forward(d1, y, mean, rstd, x, w, w, N, C));
  OK(hm_dev_layernorm_backward(d1, dx1, dw1, db1, dy, x, w, mean, rstd, N, C));
  OK(hm_dev_layernorm_backward(d2, dx2, dw2, db2, dy, x, w, mean, rstd, N, C));
  assert_memory_equal(dw1, dw2, sizeof dw1);
  /* RMSNorm's weight gradient is a reduction over the rows as well */
  float rr[N], dxr1[N * C] = {0}, dxr2[N * C] = {0}, dwr1[C] = {0}, dwr2[C] = {0};
  OK(hm_dev_rmsnorm_forward(d1, y, rr, x, w, N, C));
  OK(hm_dev_rmsnorm_backward(d1, dxr1, dwr1, dy, x, w, rr, N, C));
  OK(hm_dev_rmsnorm_backward(d2, dxr2, dwr2, dy, x, w, rr, N, C));
  assert_memory_equal(dwr1, dwr2, sizeof dwr1);
  assert_memory_equal(dxr1, dxr2, sizeof dxr1);
  assert_memory_equal(db1, db2, sizeof db1);
  assert_memory_equal(dx1, dx2, sizeof dx1);
  /* matmul over several pieces (600 rows) and attention (one head per piece) too */
  enum { MR = 600, OC = 2 * C };
  float *xm = host_rand((size_t)MR * C, 1), *wt = host_rand((size_t)OC * C, 0.1f);
  float *o1 = malloc((size_t)MR * OC * 4), *o2 = malloc((size_t)MR * OC * 4);
  OK(hm_dev_matmul_forward(d1, o1, xm, wt, NULL, MR, C, OC));
  OK(hm_dev_matmul_forward(d2, o2, xm, wt, NULL, MR, C, OC));
  assert_memory_equal(o1, o2, (size_t)MR * OC * 4);
  float *dw1m = calloc((size_t)OC * C, 4), *dw2m = calloc((size_t)OC * C, 4);
  float *dx1m = calloc((size_t)MR * C, 4), *dx2m = calloc((size_t)MR * C, 4);
  float *db1m = calloc(OC, 4), *db2m = calloc(OC, 4);
  OK(hm_dev_matmul_backward(d1, dx1m, dw1m, db1m, o1, xm, wt, MR, C, OC));
  OK(hm_dev_matmul_backward(d2, dx2m, dw2m, db2m, o2, xm, wt, MR, C, OC));
  assert_memory_equal(dx1m, dx2m, (size_t)MR * C * 4);
  assert_memory_equal(dw1m, dw2m, (size_t)OC * C * 4);
  assert_memory_equal(db1m, db2m, OC * 4);
  free(xm); free(wt); free(o1); free(o2); free(dw1m); free(dw2m); free(dx1m); free(dx2m);
  free(db1m); free(db2m);
  float *qkv = host_rand(3 * nx, 1), *a1 = malloc(nx * 4), *a2 = malloc(nx * 4);
  float *l1 = malloc(hm_dev_attention_saved_elems(d1, B, T, C, NH) * 4);
  float *l2 = malloc(hm_dev_attention_saved_elems(d2, B, T, C, NH) * 4);
  float *dq1 = calloc(3 * nx, 4), *dq2 = calloc(3 * nx, 4);
  OK(hm_dev_attention_forward(d1, a1, l1, qkv, B, T, C, NH));
  OK(hm_dev_attention_forward(d2, a2, l2, qkv, B, T, C, NH));
  assert_memory_equal(a1, a2, nx * 4);
  OK(hm_dev_attention_backward(d1, dq1, dy, qkv, l1, B, T, C, NH));
  OK(hm_dev_attention_backward(d2, dq2, dy, qkv, l2, B, T, C, NH));
  assert_memory_equal(dq1, dq2, 3 * nx * 4);
  free(qkv); free(a1); free(a2); free(l1); free(l2); free(dq1); free(dq2);
  double s1, s2;
  OK(hm_dev_sumsq(d1, &s1, x, nx));
  OK(hm_dev_sumsq(d2, &s2, x, nx));
  assert_memory_equal(&s1, &s2, sizeof s1);
  free(x); free(dy); free(w);
  hm_device_close(d1);
  hm_device_close(d2);
}

int main(int argc, char **argv) {
  if (argc > 1) g_spec = argv[1];
  hm_device *probe = NULL;
  hm_status st = hm_device_open(g_spec, &probe);
  if (st == HM_ERR_NOT_FOUND) { /* backend not built, or no such device on this machine */
    printf("SKIP: %s: %s\n", g_spec, hm_last_error());
    return SKIP;
  }
  hm_device_close(probe);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_encoder),
      cmocka_unit_test(test_layernorm),
      cmocka_unit_test(test_matmul),
      cmocka_unit_test(test_attention),
      cmocka_unit_test(test_gelu_residual_scale),
      cmocka_unit_test(test_softmax_crossentropy),
      cmocka_unit_test(test_adamw_sums),
      cmocka_unit_test(test_zero_and_copies),
      cmocka_unit_test(test_llama_kernels),
      cmocka_unit_test(test_cpu_thread_count_invariance),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
