/* The opencl backend's kernel entries: each maps its device addresses to (buffer, offset)
 * pairs, sets the arguments of one or more kernels of opencl_kernels.cl and queues them; the
 * GEMMs of matmul are CLBlast's SGEMM on the same queue. Sums to the host (sum, sumsq) add
 * fixed chunks' partials in order on the host, so every result is deterministic. */
#include <clblast_c.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "device/opencl_internal.h"
#include "util/util.h"

/* ---- argument lists ------------------------------------------------------------------------ */

typedef struct hm_cl_args {
  hm_cl_impl *impl;
  cl_kernel k;
  const char *op;
  cl_uint i;
  hm_status st;
} hm_cl_args;

static hm_cl_args hm_args(hm_device *dev, hm_cl_kernel_id id, const char *op) {
  hm_cl_impl *impl = dev->impl;
  return (hm_cl_args){impl, impl->kernels[id], op, 0, HM_OK};
}

static void hm_arg(hm_cl_args *a, size_t size, const void *value) {
  if (a->st != HM_OK) return;
  cl_int e = clSetKernelArg(a->k, a->i++, size, value);
  if (e != CL_SUCCESS) a->st = hm_cl_fail(e, a->op);
}

static void hm_arg_mem(hm_cl_args *a, cl_mem m, size_t off) {
  cl_ulong o = off;
  hm_arg(a, sizeof m, &m);
  hm_arg(a, sizeof o, &o);
}

/* a tensor of n elements of esize bytes at device address p (NULL: any valid buffer, unused) */
static void hm_arg_t(hm_cl_args *a, const void *p, size_t n, size_t esize) {
  if (a->st != HM_OK) return;
  if (!p) {
    hm_arg_mem(a, a->impl->flag, 0);
    return;
  }
  cl_mem m;
  size_t off;
  a->st = hm_cl_resolve(a->impl, p, n * esize, a->op, &m, &off);
  if (a->st == HM_OK) hm_arg_mem(a, m, off);
}
#define ARG_F(a, p, n) hm_arg_t((a), (p), (size_t)(n), sizeof(float))
#define ARG_I32(a, p, n) hm_arg_t((a), (p), (size_t)(n), sizeof(int32_t))

static void hm_arg_int(hm_cl_args *a, int v) { hm_arg(a, sizeof v, &v); }
static void hm_arg_ulong(hm_cl_args *a, size_t v) {
  cl_ulong u = v;
  hm_arg(a, sizeof u, &u);
}
static void hm_arg_float(hm_cl_args *a, double v) {
  cl_float f = (cl_float)v;
  hm_arg(a, sizeof f, &f);
}

static hm_status hm_run(hm_cl_args *a, size_t global) {
  if (a->st != HM_OK) return a->st;
  if (global == 0) return HM_OK;
  cl_int e = clEnqueueNDRangeKernel(a->impl->queue, a->k, 1, NULL, &global, NULL, 0, NULL, NULL);
  return e == CL_SUCCESS ? HM_OK : hm_cl_fail(e, a->op);
}

/* ---- GEMM ------------------------------------------------------------------------------------ */

static hm_status hm_gemm(hm_device *dev, const char *op, CLBlastTranspose ta, CLBlastTranspose tb,
                         size_t m, size_t n, size_t k, const void *A, size_t lda, const void *B,
                         size_t ldb, void *Cm, size_t ldc) {
  hm_cl_impl *impl = dev->impl;
  cl_mem ma, mb, mc;
  size_t oa, ob, oc;
  HM_TRY(hm_cl_resolve(impl, A, m * k * sizeof(float), op, &ma, &oa));
  HM_TRY(hm_cl_resolve(impl, B, k * n * sizeof(float), op, &mb, &ob));
  HM_TRY(hm_cl_resolve(impl, Cm, m * n * sizeof(float), op, &mc, &oc));
  if ((oa | ob | oc) % sizeof(float))
    return hm_error(HM_ERR_INVALID_ARG, "opencl: %s: a matrix is not float-aligned", op);
  /* beta = 1 always: outputs are initialised (bias, zeros) or accumulated (+=) */
  CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, ta, tb, m, n, k, 1.0f, ma, oa / 4, lda, mb,
                                     ob / 4, ldb, 1.0f, mc, oc / 4, ldc, &impl->queue, NULL);
  if (s != CLBlastSuccess)
    return hm_error(HM_ERR_IO, "opencl: %s: CLBlast SGEMM %zux%zux%zu failed with status %d", op, m, n, k,
                    (int)s);
  return HM_OK;
}

/* ---- kernels --------------------------------------------------------------------------------- */

static hm_status hm_cl_encoder_forward(hm_device *dev, void *out, const int32_t *inp, const void *wte,
                                       const void *wpe, int B, int T, int C) {
  hm_cl_args a = hm_args(dev, HM_CLK_ENCODER_FORWARD, "encoder_forward");
  const size_t n = (size_t)B * T * C;
  ARG_F(&a, out, n); ARG_I32(&a, inp, (size_t)B * T);
  /* wte (V,C): rows are picked by token ids, which callers keep in [0,V) as on every backend
   * (the model checks them on the host); only its first row is range-checked here */
  ARG_F(&a, wte, C);
  ARG_F(&a, wpe, (size_t)T * C);
  hm_arg_int(&a, T); hm_arg_int(&a, C); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_encoder_backward(hm_device *dev, void *dwte, void *dwpe, const void *dout,
                                        const int32_t *inp, int B, int T, int C) {
  const int N = B * T;
  hm_cl_args a = hm_args(dev, HM_CLK_ENCODER_BACKWARD_WTE, "encoder_backward");
  ARG_F(&a, dwte, C); /* (V,C), indexed by token ids as in encoder_forward */
  ARG_F(&a, dout, (size_t)N * C); ARG_I32(&a, inp, N);
  hm_arg_int(&a, N); hm_arg_int(&a, C);
  HM_TRY(hm_run(&a, (size_t)C));
  hm_cl_args b = hm_args(dev, HM_CLK_ENCODER_BACKWARD_WPE, "encoder_backward");
  ARG_F(&b, dwpe, (size_t)T * C); ARG_F(&b, dout, (size_t)N * C);
  hm_arg_int(&b, B); hm_arg_int(&b, T); hm_arg_int(&b, C);
  return hm_run(&b, (size_t)T * C);
}

static hm_status hm_cl_layernorm_forward(hm_device *dev, void *out, void *mean, void *rstd, const void *inp,
                                         const void *weight, const void *bias, int N, int C) {
  hm_cl_args a = hm_args(dev, HM_CLK_LAYERNORM_FORWARD, "layernorm_forward");
  const size_t NC = (size_t)N * C;
  ARG_F(&a, out, NC); ARG_F(&a, mean, N); ARG_F(&a, rstd, N); ARG_F(&a, inp, NC);
  ARG_F(&a, weight, C); ARG_F(&a, bias, C);
  hm_arg_int(&a, N); hm_arg_int(&a, C);
  return hm_run(&a, (size_t)N);
}

static hm_status hm_cl_layernorm_backward(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                          const void *dout, const void *inp, const void *weight,
                                          const void *mean, const void *rstd, int N, int C) {
  const size_t NC = (size_t)N * C;
  hm_cl_args a = hm_args(dev, HM_CLK_LAYERNORM_BACKWARD_DINP, "layernorm_backward");
  ARG_F(&a, dinp, NC); ARG_F(&a, dout, NC); ARG_F(&a, inp, NC); ARG_F(&a, weight, C);
  ARG_F(&a, mean, N); ARG_F(&a, rstd, N);
  hm_arg_int(&a, N); hm_arg_int(&a, C);
  HM_TRY(hm_run(&a, (size_t)N));
  hm_cl_args b = hm_args(dev, HM_CLK_LAYERNORM_BACKWARD_DWB, "layernorm_backward");
  ARG_F(&b, dweight, C); ARG_F(&b, dbias, C); ARG_F(&b, dout, NC); ARG_F(&b, inp, NC);
  ARG_F(&b, mean, N); ARG_F(&b, rstd, N);
  hm_arg_int(&b, N); hm_arg_int(&b, C);
  return hm_run(&b, (size_t)C);
}

static hm_status hm_cl_matmul_forward(hm_device *dev, void *out, const void *inp, const void *weight,
                                      const void *bias, int N, int C, int OC) {
  hm_cl_args a = hm_args(dev, HM_CLK_BIAS_FILL, "matmul_forward");
  const size_t n = (size_t)N * OC;
  ARG_F(&a, out, n); ARG_F(&a, bias, OC);
  hm_arg_int(&a, bias != NULL); hm_arg_int(&a, OC); hm_arg_ulong(&a, n);
  HM_TRY(hm_run(&a, n));
  /* out (N,OC) += inp (N,C) weight (OC,C)^T */
  return hm_gemm(dev, "matmul_forward", CLBlastTransposeNo, CLBlastTransposeYes, (size_t)N, (size_t)OC,
                 (size_t)C, inp, (size_t)C, weight, (size_t)C, out, (size_t)OC);
}

static hm_status hm_cl_matmul_backward(hm_device *dev, void *dinp, void *dweight, void *dbias, const void *dout,
                                       const void *inp, const void *weight, int N, int C, int OC) {
  const char *op = "matmul_backward";
  if (dinp) /* dinp (N,C) += dout (N,OC) weight (OC,C) */
    HM_TRY(hm_gemm(dev, op, CLBlastTransposeNo, CLBlastTransposeNo, (size_t)N, (size_t)C, (size_t)OC, dout,
                   (size_t)OC, weight, (size_t)C, dinp, (size_t)C));
  /* dweight (OC,C) += dout^T (OC,N) inp (N,C) */
  HM_TRY(hm_gemm(dev, op, CLBlastTransposeYes, CLBlastTransposeNo, (size_t)OC, (size_t)C, (size_t)N, dout,
                 (size_t)OC, inp, (size_t)C, dweight, (size_t)C));
  if (!dbias) return HM_OK;
  hm_cl_args a = hm_args(dev, HM_CLK_BIAS_BACKWARD, op);
  ARG_F(&a, dbias, OC); ARG_F(&a, dout, (size_t)N * OC);
  hm_arg_int(&a, N); hm_arg_int(&a, OC);
  return hm_run(&a, (size_t)OC);
}

/* saved = the softmax probabilities (B,NH,T,T), as ref */
static size_t hm_cl_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH) {
  (void)dev;
  (void)C;
  return (size_t)B * NH * T * T;
}

static void hm_attn_dims(hm_cl_args *a, int B, int T, int C, int NH) {
  hm_arg_int(a, B); hm_arg_int(a, T); hm_arg_int(a, C); hm_arg_int(a, NH);
}

static hm_status hm_cl_attention_forward(hm_device *dev, void *out, void *saved, const void *qkv, int B, int T,
                                         int C, int NH) {
  const size_t rows = (size_t)B * NH * T, BTC = (size_t)B * T * C;
  hm_cl_args a = hm_args(dev, HM_CLK_ATTENTION_PROBS, "attention_forward");
  ARG_F(&a, saved, rows * T); ARG_F(&a, qkv, 3 * BTC);
  hm_attn_dims(&a, B, T, C, NH);
  HM_TRY(hm_run(&a, rows));
  hm_cl_args b = hm_args(dev, HM_CLK_ATTENTION_OUT, "attention_forward");
  ARG_F(&b, out, BTC); ARG_F(&b, saved, rows * T); ARG_F(&b, qkv, 3 * BTC);
  hm_attn_dims(&b, B, T, C, NH);
  return hm_run(&b, BTC);
}

static hm_status hm_cl_attention_backward(hm_device *dev, void *dqkv, const void *dout, const void *qkv,
                                          const void *saved, int B, int T, int C, int NH) {
  hm_cl_impl *impl = dev->impl;
  const char *op = "attention_backward";
  const size_t rows = (size_t)B * NH * T, BTC = (size_t)B * T * C;
  cl_mem dpre;
  HM_TRY(hm_cl_scratch(impl, rows * T * sizeof(float), &dpre));
  hm_cl_args a = hm_args(dev, HM_CLK_ATTENTION_DPRE, op);
  hm_arg_mem(&a, dpre, 0); ARG_F(&a, dout, BTC); ARG_F(&a, saved, rows * T); ARG_F(&a, qkv, 3 * BTC);
  hm_attn_dims(&a, B, T, C, NH);
  HM_TRY(hm_run(&a, rows));
  hm_cl_args b = hm_args(dev, HM_CLK_ATTENTION_DQ, op);
  ARG_F(&b, dqkv, 3 * BTC); hm_arg_mem(&b, dpre, 0); ARG_F(&b, qkv, 3 * BTC);
  hm_attn_dims(&b, B, T, C, NH);
  HM_TRY(hm_run(&b, BTC));
  hm_cl_args c = hm_args(dev, HM_CLK_ATTENTION_DKV, op);
  ARG_F(&c, dqkv, 3 * BTC); hm_arg_mem(&c, dpre, 0); ARG_F(&c, saved, rows * T); ARG_F(&c, qkv, 3 * BTC);
  ARG_F(&c, dout, BTC);
  hm_attn_dims(&c, B, T, C, NH);
  return hm_run(&c, BTC);
}

static hm_status hm_cl_gelu_forward(hm_device *dev, void *out, const void *inp, size_t n) {
  hm_cl_args a = hm_args(dev, HM_CLK_GELU_FORWARD, "gelu_forward");
  ARG_F(&a, out, n); ARG_F(&a, inp, n); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_gelu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout, size_t n) {
  hm_cl_args a = hm_args(dev, HM_CLK_GELU_BACKWARD, "gelu_backward");
  ARG_F(&a, dinp, n); ARG_F(&a, inp, n); ARG_F(&a, dout, n); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_residual_forward(hm_device *dev, void *out, const void *inp1, const void *inp2, size_t n) {
  hm_cl_args a = hm_args(dev, HM_CLK_RESIDUAL_FORWARD, "residual_forward");
  ARG_F(&a, out, n); ARG_F(&a, inp1, n); ARG_F(&a, inp2, n); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_accumulate(hm_device *dev, void *y, const void *x, size_t n) {
  hm_cl_args a = hm_args(dev, HM_CLK_ACCUMULATE, "residual_backward");
  ARG_F(&a, y, n); ARG_F(&a, x, n); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

/* dinp1 += dout, dinp2 += dout. When one aliases dout, the other goes first so that it still
 * reads the original gradient. */
static hm_status hm_cl_residual_backward(hm_device *dev, void *dinp1, void *dinp2, const void *dout, size_t n) {
  void *first = dinp1, *second = dinp2;
  if (dinp1 == dout) first = dinp2, second = dinp1;
  if (first) HM_TRY(hm_cl_accumulate(dev, first, dout, n));
  if (second) HM_TRY(hm_cl_accumulate(dev, second, dout, n));
  return HM_OK;
}

static hm_status hm_cl_softmax_forward(hm_device *dev, void *probs, const void *logits, int N, int V, int Vp) {
  hm_cl_args a = hm_args(dev, HM_CLK_SOFTMAX_FORWARD, "softmax_forward");
  ARG_F(&a, probs, (size_t)N * Vp); ARG_F(&a, logits, (size_t)N * Vp);
  hm_arg_int(&a, N); hm_arg_int(&a, V); hm_arg_int(&a, Vp);
  return hm_run(&a, (size_t)N);
}

static hm_status hm_cl_crossentropy(hm_device *dev, void *losses, void *dlogits, const void *logits,
                                    const int32_t *targets, double dloss, int N, int V, int Vp) {
  hm_cl_impl *impl = dev->impl;
  const cl_int none = INT_MAX;
  cl_int e = clEnqueueFillBuffer(impl->queue, impl->flag, &none, sizeof none, 0, sizeof none, 0, NULL, NULL);
  if (e != CL_SUCCESS) return hm_cl_fail(e, "crossentropy_forward_backward");
  hm_cl_args a = hm_args(dev, HM_CLK_CROSSENTROPY, "crossentropy_forward_backward");
  ARG_F(&a, losses, N); ARG_F(&a, dlogits, (size_t)N * Vp); ARG_F(&a, logits, (size_t)N * Vp);
  ARG_I32(&a, targets, N); hm_arg_mem(&a, impl->flag, 0);
  hm_arg_float(&a, dloss); hm_arg_int(&a, dlogits != NULL);
  hm_arg_int(&a, N); hm_arg_int(&a, V); hm_arg_int(&a, Vp);
  HM_TRY(hm_run(&a, (size_t)N));
  cl_int bad = none;
  e = clEnqueueReadBuffer(impl->queue, impl->flag, CL_TRUE, 0, sizeof bad, &bad, 0, NULL, NULL);
  if (e != CL_SUCCESS) return hm_cl_fail(e, "crossentropy_forward_backward");
  if (bad != none) {
    int32_t y = 0;
    hm_cl_d2h(dev, &y, targets + (bad - 1), sizeof y);
    return hm_error(HM_ERR_INVALID_ARG, "target %d at row %d is outside the vocabulary (V = %d)", (int)y,
                    (int)bad - 1, V);
  }
  return HM_OK;
}

static hm_status hm_cl_adamw(hm_device *dev, void *params, const void *grads, void *m, void *v, size_t n,
                             double lr, double beta1, double beta2, double eps, double weight_decay,
                             double grad_scale, int t) {
  hm_cl_args a = hm_args(dev, HM_CLK_ADAMW, "adamw_update");
  ARG_F(&a, params, n); ARG_F(&a, grads, n); ARG_F(&a, m, n); ARG_F(&a, v, n);
  hm_arg_ulong(&a, n);
  hm_arg_float(&a, lr); hm_arg_float(&a, beta1); hm_arg_float(&a, beta2); hm_arg_float(&a, eps);
  hm_arg_float(&a, weight_decay); hm_arg_float(&a, grad_scale);
  hm_arg_float(&a, 1.0 - pow(beta1, t)); hm_arg_float(&a, 1.0 - pow(beta2, t));
  return hm_run(&a, n);
}

/* Chunks of a sum: a fixed function of n, so the result never depends on the device. */
#define HM_CL_SUM_CHUNK 4096

static hm_status hm_cl_sums(hm_device *dev, double *out, const void *x, size_t n, int sq, const char *op) {
  hm_cl_impl *impl = dev->impl;
  *out = 0;
  if (!n) return HM_OK;
  const size_t chunks = (n + HM_CL_SUM_CHUNK - 1) / HM_CL_SUM_CHUNK;
  cl_mem part;
  HM_TRY(hm_cl_scratch(impl, 2 * chunks * sizeof(float), &part));
  hm_cl_args a = hm_args(dev, HM_CLK_PARTIAL_SUMS, op);
  hm_arg(&a, sizeof part, &part); ARG_F(&a, x, n);
  hm_arg_ulong(&a, n); hm_arg_ulong(&a, HM_CL_SUM_CHUNK); hm_arg_int(&a, sq);
  HM_TRY(hm_run(&a, chunks));
  float *host = hm_malloc(2 * chunks * sizeof(float), "opencl partial sums");
  if (!host) return HM_ERR_NOMEM;
  cl_int e = clEnqueueReadBuffer(impl->queue, part, CL_TRUE, 0, 2 * chunks * sizeof(float), host, 0, NULL, NULL);
  double s = 0;
  for (size_t j = 0; j < chunks; j++) s += (double)host[2 * j] + (double)host[2 * j + 1];
  free(host);
  if (e != CL_SUCCESS) return hm_cl_fail(e, op);
  *out = s;
  return HM_OK;
}

static hm_status hm_cl_sum(hm_device *dev, double *out, const void *x, size_t n) {
  return hm_cl_sums(dev, out, x, n, 0, "sum");
}
static hm_status hm_cl_sumsq(hm_device *dev, double *out, const void *x, size_t n) {
  return hm_cl_sums(dev, out, x, n, 1, "sumsq");
}

static hm_status hm_cl_scale(hm_device *dev, void *x, double s, size_t n) {
  hm_cl_args a = hm_args(dev, HM_CLK_SCALE, "scale");
  ARG_F(&a, x, n); hm_arg_float(&a, s); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

/* ---- Llama ------------------------------------------------------------------------------------ */

static hm_status hm_cl_rmsnorm_forward(hm_device *dev, void *out, void *rstd, const void *inp, const void *weight,
                                       int N, int C) {
  hm_cl_args a = hm_args(dev, HM_CLK_RMSNORM_FORWARD, "rmsnorm_forward");
  const size_t NC = (size_t)N * C;
  ARG_F(&a, out, NC); ARG_F(&a, rstd, N); ARG_F(&a, inp, NC); ARG_F(&a, weight, C);
  hm_arg_int(&a, N); hm_arg_int(&a, C);
  return hm_run(&a, (size_t)N);
}

static hm_status hm_cl_rmsnorm_backward(hm_device *dev, void *dinp, void *dweight, const void *dout, const void *inp,
                                        const void *weight, const void *rstd, int N, int C) {
  const size_t NC = (size_t)N * C;
  hm_cl_args a = hm_args(dev, HM_CLK_RMSNORM_BACKWARD_DINP, "rmsnorm_backward");
  ARG_F(&a, dinp, NC); ARG_F(&a, dout, NC); ARG_F(&a, inp, NC); ARG_F(&a, weight, C); ARG_F(&a, rstd, N);
  hm_arg_int(&a, N); hm_arg_int(&a, C);
  HM_TRY(hm_run(&a, (size_t)N));
  hm_cl_args b = hm_args(dev, HM_CLK_RMSNORM_BACKWARD_DW, "rmsnorm_backward");
  ARG_F(&b, dweight, C); ARG_F(&b, dout, NC); ARG_F(&b, inp, NC); ARG_F(&b, rstd, N);
  hm_arg_int(&b, N); hm_arg_int(&b, C);
  return hm_run(&b, (size_t)C);
}

static hm_status hm_cl_rope(hm_device *dev, void *x, int B, int T, int H, int hd, int stride, int sign) {
  hm_cl_args a = hm_args(dev, HM_CLK_ROPE, sign > 0 ? "rope_forward" : "rope_backward");
  const size_t rows = (size_t)B * T, n = rows * H * (hd / 2);
  ARG_F(&a, x, (rows - 1) * stride + (size_t)H * hd);
  hm_arg_int(&a, T); hm_arg_int(&a, H); hm_arg_int(&a, hd); hm_arg_int(&a, stride); hm_arg_int(&a, sign);
  hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_swiglu_forward(hm_device *dev, void *out, const void *inp, int N, int F) {
  hm_cl_args a = hm_args(dev, HM_CLK_SWIGLU_FORWARD, "swiglu_forward");
  const size_t n = (size_t)N * F;
  ARG_F(&a, out, n); ARG_F(&a, inp, 2 * n); hm_arg_int(&a, F); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_swiglu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout, int N, int F) {
  hm_cl_args a = hm_args(dev, HM_CLK_SWIGLU_BACKWARD, "swiglu_backward");
  const size_t n = (size_t)N * F;
  ARG_F(&a, dinp, 2 * n); ARG_F(&a, inp, 2 * n); ARG_F(&a, dout, n); hm_arg_int(&a, F); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_repeat_kv_forward(hm_device *dev, void *out, const void *inp, int N, int C, int NH, int KVH) {
  hm_cl_args a = hm_args(dev, HM_CLK_REPEAT_KV_FORWARD, "repeat_kv_forward");
  const size_t n = (size_t)N * 3 * C, w = (size_t)C + 2 * (size_t)KVH * (C / NH);
  ARG_F(&a, out, n); ARG_F(&a, inp, (size_t)N * w);
  hm_arg_int(&a, C); hm_arg_int(&a, NH); hm_arg_int(&a, KVH); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

static hm_status hm_cl_repeat_kv_backward(hm_device *dev, void *dinp, const void *dout, int N, int C, int NH,
                                          int KVH) {
  hm_cl_args a = hm_args(dev, HM_CLK_REPEAT_KV_BACKWARD, "repeat_kv_backward");
  const size_t w = (size_t)C + 2 * (size_t)KVH * (C / NH), n = (size_t)N * w;
  ARG_F(&a, dinp, n); ARG_F(&a, dout, (size_t)N * 3 * C);
  hm_arg_int(&a, C); hm_arg_int(&a, NH); hm_arg_int(&a, KVH); hm_arg_ulong(&a, n);
  return hm_run(&a, n);
}

const hm_device_ops hm_opencl_ops = {
    .alloc = hm_cl_alloc_fn,
    .free = hm_cl_free_fn,
    .copy_h2d = hm_cl_h2d,
    .copy_d2h = hm_cl_d2h,
    .copy_d2d = hm_cl_d2d,
    .zero = hm_cl_zero,
    .alloc_host = hm_cl_alloc_host,
    .free_host = hm_cl_free_host,
    .copy_from_f32 = hm_cl_from_f32,
    .copy_to_f32 = hm_cl_to_f32,
    .synchronize = hm_cl_synchronize,
    .copy_h2d_async = hm_cl_h2d_async,
    .copy_d2h_async = hm_cl_d2h_async,
    .event_query = hm_cl_event_query,
    .map = hm_cl_map,
    .unmap = hm_cl_unmap,
    .mem_info = hm_cl_mem_info,
    .close = hm_cl_close,
    .encoder_forward = hm_cl_encoder_forward,
    .encoder_backward = hm_cl_encoder_backward,
    .layernorm_forward = hm_cl_layernorm_forward,
    .layernorm_backward = hm_cl_layernorm_backward,
    .matmul_forward = hm_cl_matmul_forward,
    .matmul_backward = hm_cl_matmul_backward,
    .attention_saved_elems = hm_cl_attention_saved_elems,
    .attention_forward = hm_cl_attention_forward,
    .attention_backward = hm_cl_attention_backward,
    .gelu_forward = hm_cl_gelu_forward,
    .gelu_backward = hm_cl_gelu_backward,
    .rmsnorm_forward = hm_cl_rmsnorm_forward,
    .rmsnorm_backward = hm_cl_rmsnorm_backward,
    .rope = hm_cl_rope,
    .swiglu_forward = hm_cl_swiglu_forward,
    .swiglu_backward = hm_cl_swiglu_backward,
    .repeat_kv_forward = hm_cl_repeat_kv_forward,
    .repeat_kv_backward = hm_cl_repeat_kv_backward,
    .residual_forward = hm_cl_residual_forward,
    .residual_backward = hm_cl_residual_backward,
    .softmax_forward = hm_cl_softmax_forward,
    .crossentropy_forward_backward = hm_cl_crossentropy,
    .adamw_update = hm_cl_adamw,
    .sum = hm_cl_sum,
    .sumsq = hm_cl_sumsq,
    .scale = hm_cl_scale,
};
