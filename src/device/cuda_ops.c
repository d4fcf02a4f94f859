/* The `cuda` backend's kernel entries: GEMMs through cuBLAS (row-major wrappers below), the
 * rest through the launchers of cuda_kernels.cu. Attention follows llm.c: q, k, v permuted to
 * (B,NH,T,hs), scores and outputs by strided-batched GEMMs, a causal softmax kernel between
 * them; the saved tensors are q, k, v and the probabilities. Deterministic: cuBLAS gives the same
 * bits on the same GPU model, and no kernel here uses atomics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "device/cuda_backend.h"
#include "util/util.h"

#define IMPL(dev) ((hm_cu_impl *)(dev)->impl)
#define K_TRY(call, what) GPU_TRY(call, what)

/* row-major C (M,N) = alpha op(A) op(B) + beta C, batched with element strides sa, sb, sc
 * (batch 1: strides unused). lda/ldb/ldc are row strides. A row-major matrix is its transpose
 * in column-major terms, so this is the column-major C^T = op(B)^T op(A)^T with the same flags. */
static hm_status hm_cu_gemm(hm_cu_impl *im, int ta, int tb, int M, int N, int K, float alpha,
                            const float *A, int lda, long long sa, const float *B, int ldb,
                            long long sb, float beta, float *C, int ldc, long long sc, int batch) {
  const int opa = ta ? GPUBLAS_OP_T : GPUBLAS_OP_N, opb = tb ? GPUBLAS_OP_T : GPUBLAS_OP_N;
  if (batch == 1)
    BLAS_TRY(gpublasSgemm(im->blas, opb, opa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc), "GEMM");
  else
    BLAS_TRY(gpublasSgemmStridedBatched(im->blas, opb, opa, N, M, K, &alpha, B, ldb, sb, A, lda, sa,
                                        &beta, C, ldc, sc, batch),
             "batched GEMM");
  return HM_OK;
}

/* ---- embedding --------------------------------------------------------------------------------- */

static hm_status cu_encoder_forward(hm_device *dev, void *out, const int32_t *inp, const void *wte,
                                    const void *wpe, int B, int T, int C) {
  K_TRY(hm_cuk_encoder_forward(IMPL(dev)->stream, out, inp, wte, wpe, B, T, C), "encoder_forward");
  return HM_OK;
}

/* Groups positions by token on the host (a stable counting sort of the N tokens), so that each
 * token's rows of dwte are summed by one thread per channel in ascending position order. */
typedef struct {
  int32_t *order, *start, *len, *token;
  int nb;
} hm_cu_buckets;

static hm_status hm_cu_bucket(const int32_t *tok, int N, hm_cu_buckets *bk, int32_t *host) {
  int32_t vmax = 0;
  for (int i = 0; i < N; i++) vmax = tok[i] > vmax ? tok[i] : vmax;
  int32_t *count = calloc((size_t)vmax + 2, sizeof *count);
  if (!count) return hm_error(HM_ERR_NOMEM, "cuda: encoder_backward token histogram");
  for (int i = 0; i < N; i++) count[tok[i] + 1]++;
  for (int32_t v = 0; v <= vmax; v++) count[v + 1] += count[v]; /* count[v] = first slot of v */
  bk->order = host, bk->start = host + N, bk->len = host + 2 * N, bk->token = host + 3 * N;
  bk->nb = 0;
  for (int32_t v = 0; v <= vmax; v++)
    if (count[v + 1] > count[v]) {
      bk->start[bk->nb] = count[v], bk->len[bk->nb] = count[v + 1] - count[v], bk->token[bk->nb] = v;
      bk->nb++;
    }
  for (int i = 0; i < N; i++) bk->order[count[tok[i]]++] = i;
  free(count);
  return HM_OK;
}

static hm_status cu_encoder_backward(hm_device *dev, void *dwte, void *dwpe, const void *dout,
                                     const int32_t *inp, int B, int T, int C) {
  hm_cu_impl *im = IMPL(dev);
  const int N = B * T;
  int32_t *tok = malloc((size_t)N * 5 * sizeof *tok);
  if (!tok) return hm_error(HM_ERR_NOMEM, "cuda: encoder_backward host buffers");
  hm_cu_buckets bk = {0};
  void *dscratch = NULL;
  hm_status st = hm_cu_d2h(dev, tok, inp, (size_t)N * sizeof *tok);
  if (st == HM_OK) st = hm_cu_bucket(tok, N, &bk, tok + N);
  if (st == HM_OK) st = hm_cu_scratch(im, (size_t)N * 4 * sizeof *tok, &dscratch);
  if (st == HM_OK) st = hm_cu_h2d(dev, dscratch, tok + N, (size_t)N * 4 * sizeof *tok);
  free(tok);
  HM_TRY(st);
  int32_t *d = dscratch;
  K_TRY(hm_cuk_encoder_backward_wte(im->stream, dwte, dout, d, d + N, d + 2 * N, d + 3 * N, bk.nb, C),
        "encoder_backward (wte)");
  K_TRY(hm_cuk_encoder_backward_wpe(im->stream, dwpe, dout, B, T, C), "encoder_backward (wpe)");
  return HM_OK;
}

/* ---- layernorm and matmul ------------------------------------------------------------------------ */

static hm_status cu_layernorm_forward(hm_device *dev, void *out, void *mean, void *rstd, const void *inp,
                                      const void *w, const void *b, int N, int C) {
  K_TRY(hm_cuk_layernorm_forward(IMPL(dev)->stream, out, mean, rstd, inp, w, b, N, C), "layernorm_forward");
  return HM_OK;
}

static hm_status cu_layernorm_backward(hm_device *dev, void *dinp, void *dw, void *db, const void *dout,
                                       const void *inp, const void *w, const void *mean, const void *rstd,
                                       int N, int C) {
  hm_cu_impl *im = IMPL(dev);
  void *partial = NULL;
  HM_TRY(hm_cu_scratch(im, (size_t)2 * C * hm_cuk_colsum_chunks(N) * sizeof(float), &partial));
  K_TRY(hm_cuk_layernorm_backward_params(im->stream, dw, db, partial, dout, inp, mean, rstd, N, C),
        "layernorm_backward (weights)");
  K_TRY(hm_cuk_layernorm_backward_input(im->stream, dinp, dout, inp, w, mean, rstd, N, C),
        "layernorm_backward (input)");
  return HM_OK;
}

static hm_status cu_matmul_forward(hm_device *dev, void *out, const void *inp, const void *weight,
                                   const void *bias, int N, int C, int OC) {
  hm_cu_impl *im = IMPL(dev);
  /* out (N,OC) = inp (N,C) weight (OC,C)^T */
  HM_TRY(hm_cu_gemm(im, 0, 1, N, OC, C, 1.0f, inp, C, 0, weight, C, 0, 0.0f, out, OC, 0, 1));
  if (bias) K_TRY(hm_cuk_add_bias(im->stream, out, bias, N, OC), "matmul_forward bias");
  return HM_OK;
}

static hm_status cu_matmul_backward(hm_device *dev, void *dinp, void *dweight, void *dbias, const void *dout,
                                    const void *inp, const void *weight, int N, int C, int OC) {
  hm_cu_impl *im = IMPL(dev);
  if (dinp) /* dinp (N,C) += dout (N,OC) weight (OC,C) */
    HM_TRY(hm_cu_gemm(im, 0, 0, N, C, OC, 1.0f, dout, OC, 0, weight, C, 0, 1.0f, dinp, C, 0, 1));
  /* dweight (OC,C) += dout^T (OC,N) inp (N,C) */
  HM_TRY(hm_cu_gemm(im, 1, 0, OC, C, N, 1.0f, dout, OC, 0, inp, C, 0, 1.0f, dweight, C, 0, 1));
  if (dbias) {
    void *partial = NULL;
    HM_TRY(hm_cu_scratch(im, (size_t)OC * hm_cuk_colsum_chunks(N) * sizeof(float), &partial));
    K_TRY(hm_cuk_bias_backward(im->stream, dbias, partial, dout, N, OC), "matmul_backward bias");
  }
  return HM_OK;
}

/* ---- attention ------------------------------------------------------------------------------------ */

static size_t cu_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH) {
  (void)dev;
  return (size_t)3 * B * T * C + (size_t)B * NH * T * T; /* q, k, v permuted; probabilities */
}

static hm_status cu_attention_forward(hm_device *dev, void *out, void *saved, const void *qkv, int B, int T,
                                      int C, int NH) {
  hm_cu_impl *im = IMPL(dev);
  const int hs = C / NH, BH = B * NH;
  const size_t btc = (size_t)B * T * C;
  float *q = saved, *k = q + btc, *v = k + btc, *att = v + btc, *y = NULL;
  HM_TRY(hm_cu_scratch(im, btc * sizeof(float), (void **)&y));
  K_TRY(hm_cuk_attn_permute(im->stream, q, k, v, qkv, B, T, C, NH), "attention permute");
  const float scale = 1.0f / sqrtf((float)hs);
  const long long tt = (long long)T * T, th = (long long)T * hs;
  HM_TRY(hm_cu_gemm(im, 0, 1, T, T, hs, scale, q, hs, th, k, hs, th, 0.0f, att, T, tt, BH));
  K_TRY(hm_cuk_attn_softmax_causal(im->stream, att, BH * T, T), "attention softmax");
  HM_TRY(hm_cu_gemm(im, 0, 0, T, hs, T, 1.0f, att, T, tt, v, hs, th, 0.0f, y, hs, th, BH));
  K_TRY(hm_cuk_attn_unpermute(im->stream, out, y, B, T, C, NH), "attention unpermute");
  return HM_OK;
}

static hm_status cu_attention_backward(hm_device *dev, void *dqkv, const void *dout, const void *qkv,
                                       const void *saved, int B, int T, int C, int NH) {
  (void)qkv;
  hm_cu_impl *im = IMPL(dev);
  const int hs = C / NH, BH = B * NH;
  const size_t btc = (size_t)B * T * C, bhtt = (size_t)BH * T * T;
  const float *q = saved, *k = q + btc, *v = k + btc, *att = v + btc;
  float *dy = NULL;
  HM_TRY(hm_cu_scratch(im, (4 * btc + bhtt) * sizeof(float), (void **)&dy));
  float *datt = dy + btc, *dq = datt + bhtt, *dk = dq + btc, *dv = dk + btc;
  const long long tt = (long long)T * T, th = (long long)T * hs;
  K_TRY(hm_cuk_attn_permute_dout(im->stream, dy, dout, B, T, C, NH), "attention backward permute");
  HM_TRY(hm_cu_gemm(im, 0, 1, T, T, hs, 1.0f, dy, hs, th, v, hs, th, 0.0f, datt, T, tt, BH)); /* dy v^T */
  HM_TRY(hm_cu_gemm(im, 1, 0, T, hs, T, 1.0f, att, T, tt, dy, hs, th, 0.0f, dv, hs, th, BH)); /* att^T dy */
  K_TRY(hm_cuk_attn_softmax_causal_backward(im->stream, datt, att, BH * T, T, 1.0f / sqrtf((float)hs)),
        "attention softmax backward");
  HM_TRY(hm_cu_gemm(im, 0, 0, T, hs, T, 1.0f, datt, T, tt, k, hs, th, 0.0f, dq, hs, th, BH)); /* dpre k */
  HM_TRY(hm_cu_gemm(im, 1, 0, T, hs, T, 1.0f, datt, T, tt, q, hs, th, 0.0f, dk, hs, th, BH)); /* dpre^T q */
  K_TRY(hm_cuk_attn_accumulate_dqkv(im->stream, dqkv, dq, dk, dv, B, T, C, NH), "attention backward gather");
  return HM_OK;
}

/* ---- elementwise ------------------------------------------------------------------------------------ */

static hm_status cu_gelu_forward(hm_device *dev, void *out, const void *inp, size_t n) {
  K_TRY(hm_cuk_gelu_forward(IMPL(dev)->stream, out, inp, n), "gelu_forward");
  return HM_OK;
}

static hm_status cu_gelu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout, size_t n) {
  K_TRY(hm_cuk_gelu_backward(IMPL(dev)->stream, dinp, inp, dout, n), "gelu_backward");
  return HM_OK;
}

static hm_status cu_residual_forward(hm_device *dev, void *out, const void *a, const void *b, size_t n) {
  K_TRY(hm_cuk_residual_forward(IMPL(dev)->stream, out, a, b, n), "residual_forward");
  return HM_OK;
}

static hm_status cu_residual_backward(hm_device *dev, void *d1, void *d2, const void *dout, size_t n) {
  K_TRY(hm_cuk_residual_backward(IMPL(dev)->stream, d1, d2, dout, n), "residual_backward");
  return HM_OK;
}

static hm_status cu_scale(hm_device *dev, void *x, double s, size_t n) {
  K_TRY(hm_cuk_scale(IMPL(dev)->stream, x, (float)s, n), "scale");
  return HM_OK;
}

static hm_status cu_adamw(hm_device *dev, void *params, const void *grads, void *m, void *v, size_t n,
                          double lr, double beta1, double beta2, double eps, double wd, double grad_scale,
                          int t) {
  const float bc1 = (float)(1.0 - pow(beta1, t)), bc2 = (float)(1.0 - pow(beta2, t));
  K_TRY(hm_cuk_adamw(IMPL(dev)->stream, params, grads, m, v, n, (float)lr, (float)beta1, (float)beta2,
                     (float)eps, (float)wd, (float)grad_scale, bc1, bc2),
        "adamw_update");
  return HM_OK;
}

/* ---- softmax, cross-entropy, reductions ------------------------------------------------------------- */

static hm_status cu_softmax_forward(hm_device *dev, void *probs, const void *logits, int N, int V, int Vp) {
  K_TRY(hm_cuk_softmax_forward(IMPL(dev)->stream, probs, logits, N, V, Vp), "softmax_forward");
  return HM_OK;
}

static hm_status cu_crossentropy(hm_device *dev, void *losses, void *dlogits, const void *logits,
                                 const int32_t *targets, double dloss, int N, int V, int Vp) {
  hm_cu_impl *im = IMPL(dev);
  int bad = 0;
  GPU_TRY(gpuMemsetAsync(im->flag, 0, sizeof(int), im->stream), "crossentropy flag");
  K_TRY(hm_cuk_crossentropy(im->stream, losses, dlogits, logits, targets, (float)dloss, N, V, Vp, im->flag),
        "crossentropy_forward_backward");
  HM_TRY(hm_cu_d2h(dev, &bad, im->flag, sizeof bad));
  if (bad) return hm_error(HM_ERR_INVALID_ARG, "cuda: a target is outside the vocabulary (V = %d)", V);
  return HM_OK;
}

static hm_status cu_reduce(hm_device *dev, double *out, const void *x, size_t n, int squares) {
  hm_cu_impl *im = IMPL(dev);
  double part[HM_CUK_SUM_BLOCKS];
  K_TRY(hm_cuk_sum_partials(im->stream, im->partial, x, n, squares), squares ? "sumsq" : "sum");
  HM_TRY(hm_cu_d2h(dev, part, im->partial, sizeof part));
  double s = 0;
  for (int i = 0; i < HM_CUK_SUM_BLOCKS; i++) s += part[i];
  *out = s;
  return HM_OK;
}

static hm_status cu_sum(hm_device *dev, double *out, const void *x, size_t n) { return cu_reduce(dev, out, x, n, 0); }
static hm_status cu_sumsq(hm_device *dev, double *out, const void *x, size_t n) { return cu_reduce(dev, out, x, n, 1); }

const hm_device_ops hm_cuda_ops = {
    .alloc = hm_cu_alloc,
    .free = hm_cu_free,
    .copy_h2d = hm_cu_h2d,
    .copy_d2h = hm_cu_d2h,
    .copy_d2d = hm_cu_d2d,
    .zero = hm_cu_zero,
    .alloc_host = hm_cu_alloc_host,
    .free_host = hm_cu_free_host,
    .copy_from_f32 = hm_cu_from_f32,
    .copy_to_f32 = hm_cu_to_f32,
    .synchronize = hm_cu_synchronize,
    .copy_h2d_async = hm_cu_h2d_async,
    .copy_d2h_async = hm_cu_d2h_async,
    .event_query = hm_cu_event_query,
    .mem_info = hm_cu_mem_info,
    .close = hm_cu_close,
    .encoder_forward = cu_encoder_forward,
    .encoder_backward = cu_encoder_backward,
    .layernorm_forward = cu_layernorm_forward,
    .layernorm_backward = cu_layernorm_backward,
    .matmul_forward = cu_matmul_forward,
    .matmul_backward = cu_matmul_backward,
    .attention_saved_elems = cu_attention_saved_elems,
    .attention_forward = cu_attention_forward,
    .attention_backward = cu_attention_backward,
    .gelu_forward = cu_gelu_forward,
    .gelu_backward = cu_gelu_backward,
    .residual_forward = cu_residual_forward,
    .residual_backward = cu_residual_backward,
    .softmax_forward = cu_softmax_forward,
    .crossentropy_forward_backward = cu_crossentropy,
    .adamw_update = cu_adamw,
    .sum = cu_sum,
    .sumsq = cu_sumsq,
    .scale = cu_scale,
};
