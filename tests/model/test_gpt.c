/* GPT-2 stages: every layer's backward against central finite differences in double (ref f64),
 * stages cut at every layer boundary give the same loss and gradients as one stage, micro-batch
 * slots and loss weights, cpu against ref on odd shapes, and memory that does not fit. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h"

// L2 C8 NH2 V11 T6: every tensor small enough to check every element
static const hm_spec_model_config fd_cfg = {HM_ARCH_GPT2, 2, 8, 2, 2, 32, 11, 6, 1, 0};
enum { FD_B = 2, FD_T = 5 };

static void make_batch(const hm_spec_model_config *c, int B, int T, uint64_t seed, int32_t *inp, int32_t *tgt) {
  for (int i = 0; i < B * T; i++) {
    inp[i] = (int32_t)(hm_splitmix64(seed + 2 * (uint64_t)i) % (uint64_t)c->V);
    tgt[i] = (int32_t)(hm_splitmix64(seed + 2 * (uint64_t)i + 1) % (uint64_t)c->V);
  }
}

static hm_stage *make_stage(hm_device *d, const hm_spec_model_config *c, int first, int last, int B, int T, int nmb) {
  hm_stage_options o = {first, last, B, T, nmb, HM_STAGE_TP_NONE};
  hm_stage *s = NULL;
  hm_status st = hm_stage_create(c, d, &o, &s);
  if (st != HM_OK) fail_msg("stage [%d,%d): %s", first, last, hm_last_error());
  return s;
}

// Scales LayerNorm and bias parameters away from 1/0 so their gradients are not special.
static void perturb_params(hm_stage *s, uint64_t seed) {
  double *p = hm_stage_params(s);
  for (size_t i = 0; i < hm_stage_num_params(s); i++)
    p[i] += 0.05 * ((double)(hm_splitmix64(seed + i) >> 11) * 0x1.0p-53 - 0.5);
}

static double loss_f64(hm_stage *s, const int32_t *inp, const int32_t *tgt) {
  float loss = 0;
  assert_int_equal(hm_stage_forward(s, 0, inp, NULL, tgt, &loss), HM_OK);
  // the float loss loses precision; sum the f64 per-token losses ourselves via a second route:
  // logits are in the output buffer, recompute log-softmax in double
  const hm_spec_model_config *c = &fd_cfg;
  const double *logits = hm_stage_output(s, 0);
  double sum = 0;
  for (int i = 0; i < FD_B * FD_T; i++) {
    const double *row = logits + (size_t)i * c->V;
    double mx = row[0];
    for (int v = 1; v < c->V; v++) mx = row[v] > mx ? row[v] : mx;
    double z = 0;
    for (int v = 0; v < c->V; v++) z += exp(row[v] - mx);
    sum += -(row[tgt[i]] - mx - log(z));
  }
  return sum / (FD_B * FD_T);
}

// Every parameter of every layer: analytic gradient vs (L(p+h) - L(p-h)) / 2h in double.
static void test_backward_matches_finite_differences(void **state) {
  (void)state;
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  hm_stage *s = make_stage(d, &fd_cfg, 0, fd_cfg.L + 2, FD_B, FD_T, 1);
  assert_int_equal(hm_stage_init_params(s, 5), HM_OK);
  perturb_params(s, 77);
  int32_t inp[FD_B * FD_T], tgt[FD_B * FD_T];
  make_batch(&fd_cfg, FD_B, FD_T, 3, inp, tgt);
  assert_int_equal(hm_stage_zero_grad(s), HM_OK);
  float lossf = 0;
  assert_int_equal(hm_stage_forward(s, 0, inp, NULL, tgt, &lossf), HM_OK);
  assert_int_equal(hm_stage_backward(s, 0, NULL, 1.0f), HM_OK);
  size_t n = hm_stage_num_params(s);
  double *g = malloc(n * sizeof *g);
  memcpy(g, hm_stage_grads(s), n * sizeof *g);
  double *p = hm_stage_params(s);
  const double h = 1e-5;
  double worst = 0, worst_abs = 0;
  for (int ti = 0; ti < hm_stage_num_tensors(s); ti++) {
    size_t off = hm_stage_tensor_offset(s, ti), cnt = hm_stage_tensor_numel(s, ti);
    for (size_t j = 0; j < cnt; j++) {
      size_t i = off + j;
      double keep = p[i];
      p[i] = keep + h;
      double lp = loss_f64(s, inp, tgt);
      p[i] = keep - h;
      double lm = loss_f64(s, inp, tgt);
      p[i] = keep;
      double fd = (lp - lm) / (2 * h);
      // central differences err O(h^2 * L''') ~ 1e-10 and rounding ~ 1e-16/h ~ 1e-11 (|L| ~ 5):
      // 1e-7 + 1e-5 |fd| is 1000x above both and far below a wrong gradient term
      double err = fabs(fd - g[i]);
      if (fabs(fd) > 1e-6 && err / fabs(fd) > worst) worst = err / fabs(fd);
      if (err > worst_abs) worst_abs = err;
      if (err > 1e-7 + 1e-5 * fabs(fd))
        fail_msg("%s[%zu]: backward %.10g, finite difference %.10g", hm_stage_tensor_name(s, ti), j, g[i], fd);
    }
  }
  print_message("all %zu parameter gradients match finite differences; worst relative error %.2e "
                "(where |fd| > 1e-6), worst absolute %.2e\n", n, worst, worst_abs);
  free(g);
  hm_stage_destroy(s);
  hm_device_close(d);
}

// The model cut into one stage per layer (the pipeline's finest split) gives the same loss and
// gradients as one stage, and each stage's input gradient matches finite differences.
static void test_stage_chain_matches_whole(void **state) {
  (void)state;
  const hm_spec_model_config *c = &fd_cfg;
  const int NL = c->L + 2, N = FD_B * FD_T;
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  hm_stage *whole = make_stage(d, c, 0, NL, FD_B, FD_T, 1);
  hm_stage *parts[8];
  for (int l = 0; l < NL; l++) {
    parts[l] = make_stage(d, c, l, l + 1, FD_B, FD_T, 1);
    assert_int_equal(hm_stage_init_params(parts[l], 9), HM_OK);  // same values by tensor name
  }
  assert_int_equal(hm_stage_init_params(whole, 9), HM_OK);
  int32_t inp[N], tgt[N];
  make_batch(c, FD_B, FD_T, 11, inp, tgt);
  float lw = 0, lc = 0;
  assert_int_equal(hm_stage_zero_grad(whole), HM_OK);
  assert_int_equal(hm_stage_forward(whole, 0, inp, NULL, tgt, &lw), HM_OK);
  assert_int_equal(hm_stage_backward(whole, 0, NULL, 1.0f), HM_OK);
  for (int l = 0; l < NL; l++) {
    assert_int_equal(hm_stage_zero_grad(parts[l]), HM_OK);
    assert_int_equal(hm_stage_forward(parts[l], 0, l == 0 ? inp : NULL, l ? hm_stage_output(parts[l - 1], 0) : NULL,
                                      l == NL - 1 ? tgt : NULL, l == NL - 1 ? &lc : NULL),
                     HM_OK);
  }
  assert_true(lw == lc);
  for (int l = NL - 1; l >= 0; l--)
    assert_int_equal(hm_stage_backward(parts[l], 0, l == NL - 1 ? NULL : hm_stage_dinput(parts[l + 1]), 1.0f), HM_OK);
  // the tied embedding: first and last stage each hold a part of wte's gradient
  size_t nw = 0, nw2 = 0;
  double *gw_first = hm_stage_tied_grad(parts[0], &nw), *gw_last = hm_stage_tied_grad(parts[NL - 1], &nw2);
  assert_non_null(gw_first);
  assert_non_null(gw_last);
  assert_int_equal(nw, nw2);
  assert_null(hm_stage_tied_grad(parts[1], NULL));
  for (size_t i = 0; i < nw; i++) gw_first[i] += gw_last[i];  // what the runtime's allreduce does
  double total_parts = 0, total_whole = 0, part;
  for (int l = 0; l < NL; l++) {
    for (int ti = 0; ti < hm_stage_num_tensors(parts[l]); ti++) {
      const char *name = hm_stage_tensor_name(parts[l], ti);
      int wi = hm_stage_find_tensor(whole, name);
      assert_true(wi >= 0);
      if (l == NL - 1 && strcmp(name, "wte") == 0) continue;  // the head's copy, summed above
      const double *a = (const double *)hm_stage_grads(parts[l]) + hm_stage_tensor_offset(parts[l], ti);
      const double *b = (const double *)hm_stage_grads(whole) + hm_stage_tensor_offset(whole, wi);
      for (size_t j = 0; j < hm_stage_tensor_numel(parts[l], ti); j++)
        /* f64: the same products, the tied embedding's two halves summed in another order:
         * a few u64 (1.1e-16) times sums of <= N*C = 80 terms of magnitude <= 1: < 1e-13 */
        if (fabs(a[j] - b[j]) > 1e-12 * (1 + fabs(b[j]))) fail_msg("%s[%zu]: split %.17g whole %.17g", name, j, a[j], b[j]);
    }
    assert_int_equal(hm_stage_grad_sumsq(parts[l], &part), HM_OK);
    total_parts += part;
  }
  assert_int_equal(hm_stage_grad_sumsq(whole, &total_whole), HM_OK);
  /* sums of squares of ~2000 gradients in f64, grouped differently: ~2000 u64 ~ 2e-13 relative */
  assert_true(fabs(total_parts - total_whole) < 1e-10 * total_whole);

  // input gradient of a block stage vs finite differences through the rest of the chain
  const int probe = 2;  // the second block
  double *x = malloc((size_t)N * c->C * sizeof *x);
  memcpy(x, hm_stage_output(parts[probe - 1], 0), (size_t)N * c->C * sizeof *x);
  double *dx = malloc((size_t)N * c->C * sizeof *dx);
  // recompute dinput of the probe stage cleanly (the loop above overwrote scratch)
  for (int l = probe; l < NL; l++)
    assert_int_equal(hm_stage_forward(parts[l], 0, NULL, l == probe ? x : hm_stage_output(parts[l - 1], 0),
                                      l == NL - 1 ? tgt : NULL, NULL), HM_OK);
  for (int l = NL - 1; l >= probe; l--)
    assert_int_equal(hm_stage_backward(parts[l], 0, l == NL - 1 ? NULL : hm_stage_dinput(parts[l + 1]), 1.0f), HM_OK);
  memcpy(dx, hm_stage_dinput(parts[probe]), (size_t)N * c->C * sizeof *dx);
  const double h = 1e-5;
  for (size_t i = 0; i < (size_t)N * c->C; i += 3) {
    double lpm[2];
    for (int sgn = 0; sgn < 2; sgn++) {
      double keep = x[i];
      x[i] = keep + (sgn ? -h : h);
      float lf = 0;
      for (int l = probe; l < NL; l++)
        assert_int_equal(hm_stage_forward(parts[l], 0, NULL, l == probe ? x : hm_stage_output(parts[l - 1], 0),
                                          l == NL - 1 ? tgt : NULL, &lf), HM_OK);
      x[i] = keep;
      // the f64 mean loss from the head's per-token logits
      const double *logits = hm_stage_output(parts[NL - 1], 0);
      double sum = 0;
      for (int r = 0; r < N; r++) {
        const double *row = logits + (size_t)r * c->V;
        double mx = row[0], z = 0;
        for (int v = 1; v < c->V; v++) mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < c->V; v++) z += exp(row[v] - mx);
        sum += -(row[tgt[r]] - mx - log(z));
      }
      lpm[sgn] = sum / N;
    }
    double fd = (lpm[0] - lpm[1]) / (2 * h);
    /* as in test_backward_matches_finite_differences: O(h^2) truncation + u64 |L| / h rounding */
    if (fabs(fd - dx[i]) > 1e-7 + 1e-5 * fabs(fd)) fail_msg("dinput[%zu]: backward %.10g, finite difference %.10g", i, dx[i], fd);
  }
  free(x);
  free(dx);
  for (int l = 0; l < NL; l++) hm_stage_destroy(parts[l]);
  hm_stage_destroy(whole);
  hm_device_close(d);
}

// Two slots in flight (forward 0, forward 1, backward 0, backward 1) with weights 1/2 give the
// mean of the two micro-batches' gradients, as two separate passes do.
static void test_microbatch_slots_and_weights(void **state) {
  (void)state;
  const hm_spec_model_config *c = &fd_cfg;
  const int NL = c->L + 2, N = FD_B * FD_T;
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  hm_stage *a = make_stage(d, c, 0, NL, FD_B, FD_T, 2), *b = make_stage(d, c, 0, NL, FD_B, FD_T, 1);
  assert_int_equal(hm_stage_init_params(a, 4), HM_OK);
  assert_int_equal(hm_stage_init_params(b, 4), HM_OK);
  int32_t i0[N], t0[N], i1[N], t1[N];
  make_batch(c, FD_B, FD_T, 100, i0, t0);
  make_batch(c, FD_B, FD_T, 200, i1, t1);
  float l0, l1, m0, m1;
  hm_stage_zero_grad(a);
  assert_int_equal(hm_stage_forward(a, 0, i0, NULL, t0, &l0), HM_OK);
  assert_int_equal(hm_stage_forward(a, 1, i1, NULL, t1, &l1), HM_OK);
  assert_int_equal(hm_stage_backward(a, 0, NULL, 0.5f), HM_OK);
  assert_int_equal(hm_stage_backward(a, 1, NULL, 0.5f), HM_OK);
  assert_int_equal(hm_stage_backward(a, 1, NULL, 0.5f), HM_ERR_INVALID_ARG);  // one backward per forward
  assert_int_equal(hm_stage_forward(a, 2, i1, NULL, t1, &l1), HM_ERR_INVALID_ARG);  // no such slot
  hm_stage_zero_grad(b);
  assert_int_equal(hm_stage_forward(b, 0, i0, NULL, t0, &m0), HM_OK);
  assert_int_equal(hm_stage_backward(b, 0, NULL, 0.5f), HM_OK);
  assert_int_equal(hm_stage_forward(b, 0, i1, NULL, t1, &m1), HM_OK);
  assert_int_equal(hm_stage_backward(b, 0, NULL, 0.5f), HM_OK);
  assert_true(l0 == m0 && l1 == m1 && l0 != l1);
  const double *ga = hm_stage_grads(a), *gb = hm_stage_grads(b);
  for (size_t i = 0; i < hm_stage_num_params(a); i++)
    /* f64, the same two accumulations in the same order (weights 1/2 exact): a few u64 */
    if (fabs(ga[i] - gb[i]) > 1e-13 * (1 + fabs(gb[i]))) fail_msg("grad[%zu]: slots %.17g sequential %.17g", i, ga[i], gb[i]);
  // bad inputs are errors that name the problem
  i0[3] = c->V;
  assert_int_equal(hm_stage_forward(a, 0, i0, NULL, t0, &l0), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "position 3"));
  assert_int_equal(hm_stage_forward(a, 0, NULL, NULL, t0, &l0), HM_ERR_INVALID_ARG);
  hm_stage_destroy(a);
  hm_stage_destroy(b);
  hm_device_close(d);
}

// ---- cpu (f32, OpenBLAS) against an f64 reference ------------------------------------------
//
// Error analysis. The cpu backend sums in f32 (u = 2^-24) in an order set by OpenBLAS's kernel
// (blocking, FMA, threads): another machine, another order. The ref backend in dtype=f64 runs
// the same formulas with u64 = 2^-53, so its own error is negligible (< 1e-12 relative here)
// and cpu_f32 - ref_f64 is the cpu's error alone. Each step starts all stages from the SAME
// state: the cpu stage's params and AdamW moments (f32 values, exact in f64) are copied into
// the reference through a checkpoint, so what is compared is one step's rounding, never the
// divergence of two trajectories (AdamW turns a sign flip of a tiny gradient into a 2*lr step,
// which the next steps then carry through the whole network).
//
// One step's f32 error, per output element, is bounded (first order, Higham 3.5) by
// gamma_K * sum_i |a_i b_i| = K u sum_i |a_i b_i| for every dot product of length K on its path,
// plus the error its inputs carry times the op's condition. This model's longest dot products
// are K = 4C = 384 (mlp.proj forward, mlp.fc input gradient; the weight gradients sum K = B*T =
// 111 rows) and a gradient element lies behind at most ODD_DEPTH = 3L + 2 = 8 dot-product layers
// of the forward and backward chains (qkv, attention, proj, fc, mlp-proj per block, the head).
// Taking sum|a_i b_i| at the tensor's largest element gives the normwise tolerance
//     max_i |cpu_i - ref_i| <= ODD_DEPTH * K * u * max_i |ref_i| = 8 * 384 * 2^-24 ~ 1.8e-4.
// gamma_K assumes every rounding has the same sign; they behave as independent zero-mean errors
// (Higham & Mary 2019: lambda sqrt(K) u with probability 1 - 2 exp(-lambda^2 / 2)), so the
// bound still holds when cancellation makes sum|a_i b_i| up to sqrt(K) / lambda ~ 3 (lambda = 6)
// times the result. Measured on every OpenBLAS kernel (Prescott .. SkylakeX, 1 and 2 threads):
// under 1% of it (printed); a real defect (a wrong index, a missed accumulation, a wrong scale)
// gives errors of 1e-2 and more.
static const double fp32_u = 0x1.0p-24;
enum { ODD_DEPTH = 8, ODD_K = 384 };
#define ODD_TOL (ODD_DEPTH * ODD_K * fp32_u)

// max_i |a_i - ref_i| / max_i |ref_i| for an f32 tensor against its f64 reference.
static double normwise_err(const float *a, const double *ref, size_t n, size_t *where) {
  double mx = 0, scale = 0;
  for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - ref[i]);
    if (e > mx) mx = e, *where = i;
  }
  return mx / (scale + 1e-300);
}

// Copies params and AdamW moments of `from` into `to` (any dtype) through an f32 checkpoint.
static void sync_state(hm_stage *from, hm_stage *to, const char *path) {
  hm_ckpt_meta meta;
  memset(&meta, 0, sizeof meta);
  assert_int_equal(hm_stage_save(from, path, &meta), HM_OK);
  assert_int_equal(hm_stage_load(to, path, NULL), HM_OK);
}

// Bound on |p_cpu - p_ref| after one AdamW step from the same (p, m, v) when the gradients
// differ by d = |g_cpu - g_ref|. With mhat = (b1 m + (1-b1) g) / bc1, s = sqrt((b2 v + (1-b2) g^2)
// / bc2) and r = mhat / (s + eps), over the interval g in [g_ref - d, g_ref + d]:
//   |dr/dg| <= ((1-b1)/bc1 + |r| sqrt((1-b2)/bc2)) / (s + eps)      (since (1-b2)|g|/bc2 <=
//                                                                    sqrt((1-b2)/bc2) s)
// evaluated with the interval's smallest s and largest |mhat| (so the bound holds on all of it),
// and |r_cpu - r_ref| <= 2 max|r| always: a gradient whose sign the error leaves open moves the
// parameter by up to 2 lr (AdamW's amplification of tiny gradients, up to lr / eps per unit of
// gradient error). Plus the f32 rounding of the update: p' = p - lr (r + wd p) rounds p' (u|p'|)
// and r and wd*p take <= 6 roundings each.
static double adamw_bound(const hm_adamw *o, int t, double p, double m, double v, double g, double d) {
  const double b1 = o->beta1, b2 = o->beta2, eps = o->eps;
  const double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
  const double gmin = fmax(0, fabs(g) - d), gmax = fabs(g) + d;
  const double smin = sqrt((b2 * v + (1 - b2) * gmin * gmin) / bc2);
  const double rmax = (b1 * fabs(m) + (1 - b1) * gmax) / bc1 / (smin + eps);
  const double lip = ((1 - b1) / bc1 + rmax * sqrt((1 - b2) / bc2)) / (smin + eps);
  const double dr = fmin(lip * d, 2 * rmax);
  return o->lr * dr + fp32_u * (2 * fabs(p) + 6 * o->lr * (rmax + o->weight_decay * fabs(p)));
}

static const float *ckpt_tensor(const hm_ckpt *ck, const char *kind, const char *name) {
  char full[HM_CKPT_NAME_MAX + 16];
  snprintf(full, sizeof full, "%s/%s", kind, name);
  const hm_ckpt_tensor *t = hm_ckpt_find(ck, full);
  if (!t) fail_msg("checkpoint has no %s", full);
  return t->data;
}

typedef struct odd_run {
  hm_stage *sc, *sd; /* cpu f32, ref f64 */
  const char *ckpt;  /* the state both started the step from */
  int N, V;
  double worst_logits, worst_grad, worst_param; /* as fractions of their bounds */
} odd_run;

static void check_forward(odd_run *r, int step, float lc, float ld) {
  // the loss is a mean of N = 111 log-softmax terms over V logits: one more sum, shorter than K
  const double tol = ODD_TOL;
  size_t w = 0;
  if (fabs((double)lc - ld) > tol * fabs(ld)) fail_msg("step %d loss: cpu %.9g, f64 %.9g", step, lc, ld);
  double e = normwise_err(hm_stage_output(r->sc, 0), hm_stage_output(r->sd, 0), (size_t)r->N * r->V, &w);
  if (e > tol) fail_msg("step %d logits[%zu]: error %.3g of the largest logit, bound %.3g", step, w, e, tol);
  r->worst_logits = fmax(r->worst_logits, e / tol);
}

static void check_grads(odd_run *r, int step) {
  const double tol = ODD_TOL;
  const float *gc = hm_stage_grads(r->sc);
  const double *gd = hm_stage_grads(r->sd);
  for (int ti = 0; ti < hm_stage_num_tensors(r->sc); ti++) {
    size_t off = hm_stage_tensor_offset(r->sc, ti), cnt = hm_stage_tensor_numel(r->sc, ti), w = 0;
    double e = normwise_err(gc + off, gd + off, cnt, &w);
    if (e > tol)
      fail_msg("step %d grad %s[%zu]: cpu %.9g, f64 %.9g: error %.3g of the tensor's largest, bound %.3g", step,
               hm_stage_tensor_name(r->sc, ti), w, gc[off + w], gd[off + w], e, tol);
    r->worst_grad = fmax(r->worst_grad, e / tol);
  }
}

// Every parameter after the step against adamw_bound with the moments both sides started from.
static void check_params(odd_run *r, int step, const hm_adamw *o, const float *p0, const float *gc) {
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_read(r->ckpt, &ck), HM_OK);
  const float *pc = hm_stage_params(r->sc);
  const double *pd = hm_stage_params(r->sd), *gd = hm_stage_grads(r->sd);
  for (int ti = 0; ti < hm_stage_num_tensors(r->sc); ti++) {
    const char *name = hm_stage_tensor_name(r->sc, ti);
    const float *m = ckpt_tensor(&ck, "adam_m", name), *v = ckpt_tensor(&ck, "adam_v", name);
    size_t off = hm_stage_tensor_offset(r->sc, ti);
    for (size_t j = 0; j < hm_stage_tensor_numel(r->sc, ti); j++) {
      size_t i = off + j;
      double b = adamw_bound(o, step, p0[i], m[j], v[j], gd[i], fabs((double)gc[i] - gd[i]));
      double e = fabs((double)pc[i] - pd[i]);
      if (e > b) fail_msg("step %d param %s[%zu]: cpu %.9g, f64 %.9g, bound %.3g", step, name, j, pc[i], pd[i], b);
      r->worst_param = fmax(r->worst_param, e / b);
    }
  }
  hm_ckpt_free(&ck);
}

// cpu (OpenBLAS, OpenMP) against ref in f64 on odd shapes: loss, logits, every gradient and every
// parameter after 3 AdamW steps, each step from the state the cpu reached. (Where a gradient is
// zero in exact arithmetic, e.g. the key biases, params are within 1e-3 of their bound: there
// the linearized bound is attained.)
static void test_cpu_matches_ref(void **state) {
  (void)state;
  const hm_spec_model_config c = {HM_ARCH_GPT2, 2, 96, 3, 3, 384, 259, 37, 1, 0};
  const int B = 3, T = 37, N = B * T, NL = c.L + 2;
  hm_device *dc = NULL, *dd = NULL;
  assert_int_equal(hm_device_open("cpu:threads=2", &dc), HM_OK);
  assert_int_equal(hm_device_open("ref:dtype=f64", &dd), HM_OK);
  char dir[256], ckpt[300];
  snprintf(dir, sizeof dir, "%s/test_gpt.XXXXXX", HM_BINARY_DIR);
  assert_non_null(mkdtemp(dir));
  snprintf(ckpt, sizeof ckpt, "%s/state.hmc", dir);
  odd_run r = {make_stage(dc, &c, 0, NL, B, T, 1), make_stage(dd, &c, 0, NL, B, T, 1), ckpt, N, c.V, 0, 0, 0};
  assert_int_equal(hm_stage_init_params(r.sc, 21), HM_OK);
  const size_t np = hm_stage_num_params(r.sc);
  int32_t *inp = malloc(N * sizeof *inp), *tgt = malloc(N * sizeof *tgt);
  float *p0 = malloc(np * sizeof *p0), *gc = malloc(np * sizeof *gc);
  const hm_adamw adam = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int step = 1; step <= 3; step++) {
    sync_state(r.sc, r.sd, ckpt);
    memcpy(p0, hm_stage_params(r.sc), np * sizeof *p0);
    make_batch(&c, B, T, 1000 + (uint64_t)step, inp, tgt);
    float lc, ld;
    hm_stage_zero_grad(r.sc);
    hm_stage_zero_grad(r.sd);
    assert_int_equal(hm_stage_forward(r.sc, 0, inp, NULL, tgt, &lc), HM_OK);
    assert_int_equal(hm_stage_forward(r.sd, 0, inp, NULL, tgt, &ld), HM_OK);
    check_forward(&r, step, lc, ld);
    assert_int_equal(hm_stage_backward(r.sc, 0, NULL, 1.0f), HM_OK);
    assert_int_equal(hm_stage_backward(r.sd, 0, NULL, 1.0f), HM_OK);
    check_grads(&r, step);
    memcpy(gc, hm_stage_grads(r.sc), np * sizeof *gc);
    assert_int_equal(hm_stage_adamw(r.sc, &adam, step, 1.0f), HM_OK);
    assert_int_equal(hm_stage_adamw(r.sd, &adam, step, 1.0f), HM_OK);
    check_params(&r, step, &adam, p0, gc);
  }
  print_message("cpu vs f64, worst as a fraction of its bound: logits %.3g, gradients %.3g, params %.6f\n",
                r.worst_logits, r.worst_grad, r.worst_param);
  unlink(ckpt);
  rmdir(dir);
  free(inp);
  free(tgt);
  free(p0);
  free(gc);
  hm_stage_destroy(r.sc);
  hm_stage_destroy(r.sd);
  hm_device_close(dc);
  hm_device_close(dd);
}

static void test_memory_that_does_not_fit(void **state) {
  (void)state;
  hm_spec_model_config c;
  assert_int_equal(hm_model_config_lookup("gpt-mini", &c), HM_OK);
  assert_true(hm_model_config_params(&c) == 10844160);  // 12*L*C^2 + 13*L*C + V*C + T*C + 2C
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("cpu:mem=64M", &d), HM_OK);
  hm_stage_options o = {0, c.L + 2, 8, c.T, 1, HM_STAGE_TP_NONE};
  hm_stage *s = NULL;
  assert_int_equal(hm_stage_create(&c, d, &o, &s), HM_ERR_NO_FIT);
  assert_null(s);
  assert_non_null(strstr(hm_last_error(), "GiB are free"));
  hm_stage_memory m;
  assert_int_equal(hm_stage_estimate(&c, d, &o, &m), HM_OK);
  assert_true((double)m.n_params == hm_model_config_params(&c));
  assert_int_equal(m.optimizer, 2 * m.params);
  hm_device_close(d);
  // config errors name the field; unknown names list the known ones
  assert_int_equal(hm_model_config_lookup("gpt-huge", &c), HM_ERR_NOT_FOUND);
  assert_non_null(strstr(hm_last_error(), "gpt-mini"));
  assert_int_equal(hm_model_config_lookup("L2,C30,NH4,V256,T16", &c), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "NH = 4"));
  assert_int_equal(hm_model_config_lookup("L2,C32,NH4,V256,T16", &c), HM_OK);
  assert_int_equal(c.C, 32);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backward_matches_finite_differences),
      cmocka_unit_test(test_stage_chain_matches_whole),
      cmocka_unit_test(test_microbatch_slots_and_weights),
      cmocka_unit_test(test_cpu_matches_ref),
      cmocka_unit_test(test_memory_that_does_not_fit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
