/* Each backward kernel against central finite differences, in f64 on `ref:dtype=f64`, and in
 * f32 on the backend named as the first argument (`opencl:threads=2`; exit 77, skipped, when
 * it is not built or has no device).
 *
 * For a kernel y = f(x...) we take the scalar L = sum(y * R) with a fixed random R, run the
 * backward kernel with dout = R into zeroed gradients, and compare every input element's
 * gradient with (L(x+h) - L(x-h)) / 2h. In double with h = 1e-5 the truncation error is
 * ~h^2 |f'''| ~ 1e-10 and the rounding error ~ 1e-16 |L| / h ~ 1e-10, so a tolerance of
 * 1e-7 absolute plus 1e-6 relative separates a right gradient from a wrong one by orders of
 * magnitude. Shapes are tiny (B=2, T=5, C=8, NH=2, V=11 padded to 13) so every element is
 * checked.
 *
 * In f32 (eps = 6e-8) we take h = 1e-2. Outputs that do not depend on the perturbed element
 * are recomputed bitwise identically (the kernels are deterministic) and cancel in L(x+h) -
 * L(x-h); the at most 3C = 24 outputs that do depend on it carry rounding errors of a few eps
 * times |y| <= ~4 each, ~1e-6 together, so the rounding error of the difference quotient is
 * ~1e-6 / 2h = 5e-5; the truncation error is h^2/6 |f^(3)| ~ 2e-5 for the O(1) third
 * derivatives of these functions, and rounding x0 +- h to f32 changes the step by eps |x0| / h
 * < 1e-4 relative. A tolerance of 1e-3 absolute plus 1e-2 relative is ten times these, and
 * still far below the O(0.1 - 1) error of a wrong gradient (a missing term, = instead of +=). */
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

enum { B = 2, T = 5, C = 8, NH = 2, V = 11, Vp = 13, N = B * T };
#define OK(x) assert_int_equal((x), HM_OK)

static hm_device *dev;
static const char *g_spec = "ref:dtype=f64";
static int f32; /* the device computes in f32: the f32 step and tolerances (above) apply */
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static double drand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

/* Tensors are device addresses typed double * for brevity; their elements are the device
 * dtype (f64 or f32), reached only through these copies. */
static double *dalloc(size_t n) {
  double *p = NULL;
  OK(hm_device_alloc(dev, (void **)&p, n * hm_device_elem_size(dev), "test tensor"));
  return p;
}
/* host doubles -> device elements i0 .. i0+n */
static void dput(double *buf, size_t i0, const double *h, size_t n) {
  void *at = hm_device_offset(dev, buf, i0);
  if (!f32) {
    OK(hm_device_copy_h2d(dev, at, h, n * sizeof *h));
    return;
  }
  float *f = malloc(n * sizeof *f);
  for (size_t i = 0; i < n; i++) f[i] = (float)h[i];
  OK(hm_device_copy_from_f32(dev, at, f, n));
  free(f);
}
static void dread(double *h, const double *buf, size_t n) {
  if (!f32) {
    OK(hm_device_copy_d2h(dev, h, buf, n * sizeof *h));
    return;
  }
  float *f = malloc(n * sizeof *f);
  OK(hm_device_copy_to_f32(dev, f, buf, n));
  for (size_t i = 0; i < n; i++) h[i] = f[i];
  free(f);
}
static double *drandn(size_t n, double scale) {
  double *h = malloc(n * sizeof *h), *d = dalloc(n);
  for (size_t i = 0; i < n; i++) h[i] = drand() * scale;
  dput(d, 0, h, n);
  free(h);
  return d;
}
static double *dzeros(size_t n) {
  double *d = dalloc(n);
  OK(hm_device_zero(dev, d, n * hm_device_elem_size(dev)));
  return d;
}
static double dget(const double *buf, size_t i) {
  double v;
  dread(&v, hm_device_offset(dev, (void *)buf, i), 1);
  return v;
}
static void dset(double *buf, size_t i, double v) { dput(buf, i, &v, 1); }
/* int32 values on the device (token ids, targets) */
static int32_t *dints(const int32_t *h, size_t n) {
  int32_t *p = NULL;
  OK(hm_device_alloc(dev, (void **)&p, n * sizeof *p, "test ints"));
  OK(hm_device_copy_h2d(dev, p, h, n * sizeof *p));
  return p;
}

/* sum(y * r) over n elements */
static double dot(const double *y, const double *r, size_t n) {
  double *hy = malloc(n * sizeof *hy), *hr = malloc(n * sizeof *hr);
  dread(hy, y, n);
  dread(hr, r, n);
  double s = 0;
  for (size_t i = 0; i < n; i++) s += hy[i] * hr[i];
  free(hy);
  free(hr);
  return s;
}

typedef double (*loss_fn)(void *ctx);

/* compares grad (device, n) with central differences of loss over x (device, n) */
static void check_grad(const char *what, loss_fn loss, void *ctx, double *x, const double *grad,
                       size_t n) {
  const double h = f32 ? 1e-2 : 1e-5, abs_tol = f32 ? 1e-3 : 1e-7, rel_tol = f32 ? 1e-2 : 1e-6;
  for (size_t i = 0; i < n; i++) {
    double x0 = dget(x, i);
    dset(x, i, x0 + h);
    double lp = loss(ctx);
    dset(x, i, x0 - h);
    double lm = loss(ctx);
    dset(x, i, x0);
    double fd = (lp - lm) / (2 * h), an = dget(grad, i);
    if (fabs(fd - an) > abs_tol + rel_tol * fabs(fd))
      fail_msg("%s[%zu]: analytic %.12g vs finite difference %.12g", what, i, an, fd);
  }
}

/* ---- matmul ------------------------------------------------------------------------------ */
typedef struct mm_ctx {
  double *out, *inp, *w, *b, *r;
  int n, c, oc;
} mm_ctx;
static double mm_loss(void *p) {
  mm_ctx *k = p;
  OK(hm_dev_matmul_forward(dev, k->out, k->inp, k->w, k->b, k->n, k->c, k->oc));
  return dot(k->out, k->r, (size_t)k->n * k->oc);
}
static void test_matmul(void **state) {
  (void)state;
  mm_ctx k = {.n = N, .c = C, .oc = 3 * C};
  k.out = dalloc((size_t)N * 3 * C);
  k.inp = drandn((size_t)N * C, 1);
  k.w = drandn((size_t)3 * C * C, 0.5);
  k.b = drandn(3 * C, 0.5);
  k.r = drandn((size_t)N * 3 * C, 1);
  double *dinp = dzeros((size_t)N * C), *dw = dzeros((size_t)3 * C * C), *db = dzeros(3 * C);
  OK(hm_dev_matmul_backward(dev, dinp, dw, db, k.r, k.inp, k.w, N, C, 3 * C));
  check_grad("matmul dinp", mm_loss, &k, k.inp, dinp, (size_t)N * C);
  check_grad("matmul dweight", mm_loss, &k, k.w, dw, (size_t)3 * C * C);
  check_grad("matmul dbias", mm_loss, &k, k.b, db, 3 * C);
}

/* ---- layernorm --------------------------------------------------------------------------- */
typedef struct ln_ctx {
  double *out, *mean, *rstd, *inp, *w, *b, *r;
} ln_ctx;
static double ln_loss(void *p) {
  ln_ctx *k = p;
  OK(hm_dev_layernorm_forward(dev, k->out, k->mean, k->rstd, k->inp, k->w, k->b, N, C));
  return dot(k->out, k->r, (size_t)N * C);
}
static void test_layernorm(void **state) {
  (void)state;
  ln_ctx k = {dalloc((size_t)N * C), dalloc(N), dalloc(N), drandn((size_t)N * C, 2),
              drandn(C, 1), drandn(C, 1), drandn((size_t)N * C, 1)};
  ln_loss(&k); /* fills mean and rstd */
  double *dinp = dzeros((size_t)N * C), *dw = dzeros(C), *db = dzeros(C);
  OK(hm_dev_layernorm_backward(dev, dinp, dw, db, k.r, k.inp, k.w, k.mean, k.rstd, N, C));
  check_grad("layernorm dinp", ln_loss, &k, k.inp, dinp, (size_t)N * C);
  check_grad("layernorm dweight", ln_loss, &k, k.w, dw, C);
  check_grad("layernorm dbias", ln_loss, &k, k.b, db, C);
}

/* ---- attention --------------------------------------------------------------------------- */
typedef struct att_ctx {
  double *out, *saved, *qkv, *r;
} att_ctx;
static double att_loss(void *p) {
  att_ctx *k = p;
  OK(hm_dev_attention_forward(dev, k->out, k->saved, k->qkv, B, T, C, NH));
  return dot(k->out, k->r, (size_t)N * C);
}
static void test_attention(void **state) {
  (void)state;
  att_ctx k = {dalloc((size_t)N * C), dalloc(hm_dev_attention_saved_elems(dev, B, T, C, NH)),
               drandn((size_t)N * 3 * C, 1.5), drandn((size_t)N * C, 1)};
  att_loss(&k);
  double *dqkv = dzeros((size_t)N * 3 * C);
  OK(hm_dev_attention_backward(dev, dqkv, k.r, k.qkv, k.saved, B, T, C, NH));
  check_grad("attention dqkv", att_loss, &k, k.qkv, dqkv, (size_t)N * 3 * C);
}

/* ---- Llama: RMSNorm, rotary embedding, SwiGLU, key/value repeat --------------------------- */
typedef struct rms_ctx {
  double *out, *rstd, *inp, *w, *r;
} rms_ctx;
static double rms_loss(void *p) {
  rms_ctx *k = p;
  OK(hm_dev_rmsnorm_forward(dev, k->out, k->rstd, k->inp, k->w, N, C));
  return dot(k->out, k->r, (size_t)N * C);
}
static void test_rmsnorm(void **state) {
  (void)state;
  rms_ctx k = {dalloc((size_t)N * C), dalloc(N), drandn((size_t)N * C, 2), drandn(C, 1), drandn((size_t)N * C, 1)};
  rms_loss(&k); /* fills rstd */
  double *dinp = dzeros((size_t)N * C), *dw = dzeros(C);
  OK(hm_dev_rmsnorm_backward(dev, dinp, dw, k.r, k.inp, k.w, k.rstd, N, C));
  check_grad("rmsnorm dinp", rms_loss, &k, k.inp, dinp, (size_t)N * C);
  check_grad("rmsnorm dweight", rms_loss, &k, k.w, dw, C);
}

/* rope on H = 2 heads of hd = 4 in rows of stride 10 (the 2 trailing elements stay as they are) */
enum { RH = 2, RHD = 4, RS = 10 };
typedef struct rope_ctx {
  double *x, *y, *r;
} rope_ctx;
static double rope_loss(void *p) {
  rope_ctx *k = p;
  OK(hm_device_copy_d2d(dev, k->y, k->x, (size_t)N * RS * hm_device_elem_size(dev)));
  OK(hm_dev_rope_forward(dev, k->y, B, T, RH, RHD, RS));
  return dot(k->y, k->r, (size_t)N * RS);
}
static void test_rope(void **state) {
  (void)state;
  rope_ctx k = {drandn((size_t)N * RS, 1), dalloc((size_t)N * RS), drandn((size_t)N * RS, 1)};
  double *dx = dalloc((size_t)N * RS);
  OK(hm_device_copy_d2d(dev, dx, k.r, (size_t)N * RS * hm_device_elem_size(dev)));
  OK(hm_dev_rope_backward(dev, dx, B, T, RH, RHD, RS));
  check_grad("rope dx", rope_loss, &k, k.x, dx, (size_t)N * RS);
}

typedef struct glu_ctx {
  double *out, *inp, *r;
} glu_ctx;
static double glu_loss(void *p) {
  glu_ctx *k = p;
  OK(hm_dev_swiglu_forward(dev, k->out, k->inp, N, C));
  return dot(k->out, k->r, (size_t)N * C);
}
static void test_swiglu(void **state) {
  (void)state;
  glu_ctx k = {dalloc((size_t)N * C), drandn((size_t)N * 2 * C, 2), drandn((size_t)N * C, 1)};
  double *dinp = dalloc((size_t)N * 2 * C);
  OK(hm_dev_swiglu_backward(dev, dinp, k.inp, k.r, N, C));
  check_grad("swiglu dinp", glu_loss, &k, k.inp, dinp, (size_t)N * 2 * C);
}

/* q of C = 8 in NH = 4 heads of 2, one KV head of 2 shared by all four (the widest repeat) */
enum { KNH = 4, KKV = 1, KW = C + 2 * KKV * (C / KNH) };
typedef struct kv_ctx {
  double *out, *inp, *r;
} kv_ctx;
static double kv_loss(void *p) {
  kv_ctx *k = p;
  OK(hm_dev_repeat_kv_forward(dev, k->out, k->inp, N, C, KNH, KKV));
  return dot(k->out, k->r, (size_t)N * 3 * C);
}
static void test_repeat_kv(void **state) {
  (void)state;
  kv_ctx k = {dalloc((size_t)N * 3 * C), drandn((size_t)N * KW, 1), drandn((size_t)N * 3 * C, 1)};
  double *dinp = dalloc((size_t)N * KW);
  OK(hm_dev_repeat_kv_backward(dev, dinp, k.r, N, C, KNH, KKV));
  check_grad("repeat_kv dinp", kv_loss, &k, k.inp, dinp, (size_t)N * KW);
}

/* ---- GELU, residual ---------------------------------------------------------------------- */
typedef struct ew_ctx {
  double *out, *a, *b, *r;
  size_t n;
  int residual;
} ew_ctx;
static double ew_loss(void *p) {
  ew_ctx *k = p;
  if (k->residual) OK(hm_dev_residual_forward(dev, k->out, k->a, k->b, k->n));
  else OK(hm_dev_gelu_forward(dev, k->out, k->a, k->n));
  return dot(k->out, k->r, k->n);
}
static void test_gelu_residual(void **state) {
  (void)state;
  size_t n = 97;
  ew_ctx k = {dalloc(n), drandn(n, 4), drandn(n, 1), drandn(n, 1), n, 0};
  double *da = dzeros(n), *db = dzeros(n);
  OK(hm_dev_gelu_backward(dev, da, k.a, k.r, n));
  check_grad("gelu dinp", ew_loss, &k, k.a, da, n);
  k.residual = 1;
  OK(hm_device_zero(dev, da, n * hm_device_elem_size(dev)));
  OK(hm_dev_residual_backward(dev, da, db, k.r, n));
  check_grad("residual dinp1", ew_loss, &k, k.a, da, n);
  check_grad("residual dinp2", ew_loss, &k, k.b, db, n);
}

/* ---- encoder ----------------------------------------------------------------------------- */
typedef struct enc_ctx {
  double *out, *wte, *wpe, *r;
  int32_t *tok; /* device */
} enc_ctx;
static double enc_loss(void *p) {
  enc_ctx *k = p;
  OK(hm_dev_encoder_forward(dev, k->out, k->tok, k->wte, k->wpe, B, T, C));
  return dot(k->out, k->r, (size_t)N * C);
}
static void test_encoder(void **state) {
  (void)state;
  enc_ctx k = {dalloc((size_t)N * C), drandn((size_t)V * C, 1), drandn((size_t)T * C, 1),
               drandn((size_t)N * C, 1), NULL};
  int32_t tok[N];
  for (int i = 0; i < N; i++) tok[i] = (int32_t)((i * 5) % V);
  tok[7] = tok[2]; /* a repeated token */
  k.tok = dints(tok, N);
  double *dwte = dzeros((size_t)V * C), *dwpe = dzeros((size_t)T * C);
  OK(hm_dev_encoder_backward(dev, dwte, dwpe, k.r, k.tok, B, T, C));
  check_grad("encoder dwte", enc_loss, &k, k.wte, dwte, (size_t)V * C);
  check_grad("encoder dwpe", enc_loss, &k, k.wpe, dwpe, (size_t)T * C);
}

/* ---- cross-entropy ------------------------------------------------------------------------ */
typedef struct ce_ctx {
  double *losses, *logits;
  int32_t *tgt; /* device */
  double dloss;
} ce_ctx;
static double ce_loss(void *p) {
  ce_ctx *k = p;
  OK(hm_dev_crossentropy_forward_backward(dev, k->losses, NULL, k->logits, k->tgt, k->dloss, N, V, Vp));
  double s;
  OK(hm_dev_sum(dev, &s, k->losses, N));
  return s * k->dloss;
}
static void test_crossentropy(void **state) {
  (void)state;
  ce_ctx k = {dalloc(N), drandn((size_t)N * Vp, 3), NULL, 0.7};
  int32_t tgt[N];
  for (int i = 0; i < N; i++) tgt[i] = (int32_t)((i * 3 + 1) % V);
  tgt[3] = -1;
  k.tgt = dints(tgt, N);
  double *dlogits = dalloc((size_t)N * Vp);
  OK(hm_dev_crossentropy_forward_backward(dev, k.losses, dlogits, k.logits, k.tgt, k.dloss, N, V, Vp));
  check_grad("crossentropy dlogits", ce_loss, &k, k.logits, dlogits, (size_t)N * Vp);
  /* the losses agree with log-softmax computed here */
  for (int n = 0; n < N; n++) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < V; i++) mx = fmax(mx, dget(k.logits, (size_t)n * Vp + i));
    for (int i = 0; i < V; i++) s += exp(dget(k.logits, (size_t)n * Vp + i) - mx);
    double want = tgt[n] < 0 ? 0 : mx + log(s) - dget(k.logits, (size_t)n * Vp + tgt[n]);
    /* f64: both log-sum-exp of V = 11 terms: ~(V + 3) u64 |loss| < 1e-14 (|loss| < 10);
     * f32: the device's lse in f32 (double sums on pocl), a few u32 |loss| < 1e-5 */
    assert_true(fabs(dget(k.losses, n) - want) < (f32 ? 1e-5 : 1e-12));
  }
}

/* ---- AdamW against its formula ---------------------------------------------------------- */
static void test_adamw_formula(void **state) {
  (void)state;
  size_t n = 7;
  double *p = drandn(n, 1), *g = drandn(n, 1), *m = dzeros(n), *v = dzeros(n);
  double hp[7], hg[7], hm[7] = {0}, hv[7] = {0};
  dread(hp, p, n);
  dread(hg, g, n);
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, gs = 0.5;
  for (int t = 1; t <= 5; t++) {
    OK(hm_dev_adamw_update(dev, p, g, m, v, n, lr, b1, b2, eps, wd, gs, t));
    for (size_t i = 0; i < n; i++) {
      double gi = hg[i] * gs;
      hm[i] = b1 * hm[i] + (1 - b1) * gi;
      hv[i] = b2 * hv[i] + (1 - b2) * gi * gi;
      double mh = hm[i] / (1 - pow(b1, t)), vh = hv[i] / (1 - pow(b2, t));
      hp[i] -= lr * (mh / (sqrt(vh) + eps) + wd * hp[i]);
    }
  }
  /* f64: the same formula in another operation order: per step ~1 rounding of |p| <= 4 plus lr
   * x ~8 roundings of |update| <= 3, on each side: 5 steps x 2 x (4 + 0.24) u64 ~ 5e-15.
   * f32 (the host side stays f64): per step one rounding of p, 0.5 u32 x 4 = 2.4e-7, plus lr x
   * ~8 roundings of |update| <= 3, 1.4e-8: worst case 5 x 2.5e-7 = 1.3e-6; bound 1e-5. */
  for (size_t i = 0; i < n; i++) assert_true(fabs(dget(p, i) - hp[i]) < (f32 ? 1e-5 : 1e-14));
}

static int setup(void **state) {
  (void)state;
  if (hm_device_open(g_spec, &dev) != HM_OK) return -1;
  f32 = hm_device_dtype(dev) == HM_FLOAT32;
  return 0;
}
static int teardown(void **state) {
  (void)state;
  hm_device_close(dev); /* frees every buffer still allocated */
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) g_spec = argv[1];
  hm_device *probe = NULL;
  if (hm_device_open(g_spec, &probe) == HM_ERR_NOT_FOUND) {
    printf("SKIP: %s: %s\n", g_spec, hm_last_error());
    return SKIP;
  }
  hm_device_close(probe);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul),      cmocka_unit_test(test_layernorm),
      cmocka_unit_test(test_attention),   cmocka_unit_test(test_gelu_residual),
      cmocka_unit_test(test_encoder),     cmocka_unit_test(test_crossentropy),
      cmocka_unit_test(test_adamw_formula), cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_rope),          cmocka_unit_test(test_swiglu),
      cmocka_unit_test(test_repeat_kv),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
