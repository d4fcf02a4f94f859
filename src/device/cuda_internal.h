/* Internals of the `cuda` backend (cuda.c, cuda_ops.c, cuda_kernels.cu): its state and the
 * launchers of its own kernels. The launchers are C functions compiled by nvcc (or hipcc) that
 * queue one kernel on `stream` and return the launch's error code; they check nothing (the
 * hm_dev_* wrappers did). Every reduction inside them has a fixed order (shared-memory trees
 * of a fixed block size, no atomics), so a rerun is bitwise identical. */
#ifndef HETMIX_CUDA_INTERNAL_H
#define HETMIX_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "device/gpu_compat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- launchers (cuda_kernels.cu); f32 tensors, shapes as in hm_device_ops ---------------- */
gpuError_t hm_cuk_encoder_forward(gpuStream_t s, float *out, const int32_t *inp, const float *wte,
                                  const float *wpe, int B, int T, int C);
/* dwte += dout gathered by token, summed per token over its positions in ascending order:
 * order (N) lists positions grouped by token, bucket_start/bucket_len/bucket_token (nb) the
 * groups (built on the host from the tokens). */
gpuError_t hm_cuk_encoder_backward_wte(gpuStream_t s, float *dwte, const float *dout,
                                       const int32_t *order, const int32_t *bucket_start,
                                       const int32_t *bucket_len, const int32_t *bucket_token,
                                       int nb, int C);
/* dwpe (T,C) += sum over b of dout (B,T,C) */
gpuError_t hm_cuk_encoder_backward_wpe(gpuStream_t s, float *dwpe, const float *dout, int B, int T,
                                       int C);
gpuError_t hm_cuk_layernorm_forward(gpuStream_t s, float *out, float *mean, float *rstd,
                                    const float *inp, const float *w, const float *b, int N, int C);
gpuError_t hm_cuk_layernorm_backward_input(gpuStream_t s, float *dinp, const float *dout,
                                           const float *inp, const float *w, const float *mean,
                                           const float *rstd, int N, int C);
/* dweight, dbias (C) += column sums over N rows of norm*dout and dout; partial: 2*C*chunks(N)
 * floats of scratch (hm_cuk_colsum_chunks) */
gpuError_t hm_cuk_layernorm_backward_params(gpuStream_t s, float *dw, float *db, float *partial,
                                            const float *dout, const float *inp, const float *mean,
                                            const float *rstd, int N, int C);
/* out (N,OC) += bias (OC) on every row */
gpuError_t hm_cuk_add_bias(gpuStream_t s, float *out, const float *bias, int N, int OC);
/* dbias (OC) += column sums of dout (N,OC); partial: OC*chunks(N) floats of scratch */
gpuError_t hm_cuk_bias_backward(gpuStream_t s, float *dbias, float *partial, const float *dout,
                                int N, int OC);
int hm_cuk_colsum_chunks(int N); /* row chunks of the column sums above */

/* attention pieces: qkv (B,T,3C) <-> q,k,v (B,NH,T,hs) each; att rows (B*NH*T, T) */
gpuError_t hm_cuk_attn_permute(gpuStream_t s, float *q, float *k, float *v, const float *qkv, int B,
                               int T, int C, int NH);
gpuError_t hm_cuk_attn_unpermute(gpuStream_t s, float *out, const float *y, int B, int T, int C,
                                 int NH);
/* dy (B,NH,T,hs) = dout (B,T,C) rearranged */
gpuError_t hm_cuk_attn_permute_dout(gpuStream_t s, float *dy, const float *dout, int B, int T,
                                    int C, int NH);
/* dqkv (B,T,3C) += dq, dk, dv (B,NH,T,hs) */
gpuError_t hm_cuk_attn_accumulate_dqkv(gpuStream_t s, float *dqkv, const float *dq,
                                       const float *dk, const float *dv, int B, int T, int C,
                                       int NH);
/* in place on pre-scaled scores: causal softmax of each row, zero above the diagonal */
gpuError_t hm_cuk_attn_softmax_causal(gpuStream_t s, float *att, int rows, int T);
/* datt (rows,T) <- att * (datt - sum(att*datt)) * scale, zero above the diagonal */
gpuError_t hm_cuk_attn_softmax_causal_backward(gpuStream_t s, float *datt, const float *att,
                                               int rows, int T, float scale);

gpuError_t hm_cuk_gelu_forward(gpuStream_t s, float *out, const float *inp, size_t n);
gpuError_t hm_cuk_gelu_backward(gpuStream_t s, float *dinp, const float *inp, const float *dout,
                                size_t n);
gpuError_t hm_cuk_residual_forward(gpuStream_t s, float *out, const float *a, const float *b,
                                   size_t n);
gpuError_t hm_cuk_residual_backward(gpuStream_t s, float *d1, float *d2, const float *dout,
                                    size_t n);
gpuError_t hm_cuk_softmax_forward(gpuStream_t s, float *probs, const float *logits, int N, int V,
                                  int Vp);
/* losses (N), dlogits (N,Vp) (may alias logits, or NULL); *bad (device int) is set to 1 when a
 * target is >= V (the caller reads it back) */
gpuError_t hm_cuk_crossentropy(gpuStream_t s, float *losses, float *dlogits, const float *logits,
                               const int32_t *targets, float dloss, int N, int V, int Vp,
                               int *bad);
gpuError_t hm_cuk_adamw(gpuStream_t s, float *params, const float *grads, float *m, float *v,
                        size_t n, float lr, float beta1, float beta2, float eps, float wd,
                        float grad_scale, float bc1, float bc2);
/* partial[HM_CUK_SUM_BLOCKS] (device doubles) = fixed-grid sums of x (or x*x when squares) */
#define HM_CUK_SUM_BLOCKS 256
gpuError_t hm_cuk_sum_partials(gpuStream_t s, double *partial, const float *x, size_t n,
                               int squares);
gpuError_t hm_cuk_scale(gpuStream_t s, float *x, float a, size_t n);

#ifdef __cplusplus
}
#endif

#endif
