// The cuda backend's own kernels (the GEMMs are cuBLAS calls in cuda_ops.c), in the shape of
// llm.c's CUDA kernels: one thread per element for elementwise work, one block per row for row
// reductions, and column sums in two passes (fixed row chunks, then the chunks in order).
// Every reduction is a shared-memory tree over a fixed block size: no atomics, no warp-size
// assumptions (AMD wavefronts are 64 wide), so results are bitwise reproducible and the same
// source compiles with hipcc.
#if defined(HETMIX_HIP)
#include <hip/hip_runtime.h>
#endif
#include <math.h>

#include "device/cuda_internal.h"

#define HM_BLOCK 256  // threads per block of every kernel (a power of two)
#define HM_CHUNK 256  // rows per partial column sum

static unsigned hm_grid(size_t n) { return (unsigned)((n + HM_BLOCK - 1) / HM_BLOCK); }

template <typename T> __device__ T hm_block_sum(T v, T *sh) {
  const int tid = threadIdx.x;
  sh[tid] = v;
  __syncthreads();
  for (int s = HM_BLOCK / 2; s > 0; s >>= 1) {
    if (tid < s) sh[tid] += sh[tid + s];
    __syncthreads();
  }
  T r = sh[0];
  __syncthreads();
  return r;
}

__device__ float hm_block_max(float v, float *sh) {
  const int tid = threadIdx.x;
  sh[tid] = v;
  __syncthreads();
  for (int s = HM_BLOCK / 2; s > 0; s >>= 1) {
    if (tid < s) sh[tid] = fmaxf(sh[tid], sh[tid + s]);
    __syncthreads();
  }
  float r = sh[0];
  __syncthreads();
  return r;
}

// ---- embedding -------------------------------------------------------------------------------

__global__ void k_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe,
                                  int B, int T, int C) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * T * C) return;
  size_t bt = i / C;
  int c = (int)(i % C), t = (int)(bt % T);
  out[i] = wte[(size_t)inp[bt] * C + c] + wpe[(size_t)t * C + c];
}

// grid (buckets, C chunks): each thread sums one channel over one token's positions in order
__global__ void k_encoder_backward_wte(float *dwte, const float *dout, const int32_t *order,
                                       const int32_t *start, const int32_t *len,
                                       const int32_t *token, int C) {
  int bkt = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int j = 0; j < len[bkt]; j++) acc += dout[(size_t)order[start[bkt] + j] * C + c];
  dwte[(size_t)token[bkt] * C + c] += acc;
}

__global__ void k_encoder_backward_wpe(float *dwpe, const float *dout, int B, int T, int C) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)T * C) return;
  float acc = 0.0f;
  for (int b = 0; b < B; b++) acc += dout[(size_t)b * T * C + i];
  dwpe[i] += acc;
}

// ---- layernorm -------------------------------------------------------------------------------

__global__ void k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                    const float *w, const float *b, int C) {
  __shared__ float sh[HM_BLOCK];
  const float *x = inp + (size_t)blockIdx.x * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += HM_BLOCK) s += x[c];
  float m = hm_block_sum(s, sh) / C;
  float v = 0.0f;
  for (int c = threadIdx.x; c < C; c += HM_BLOCK) v += (x[c] - m) * (x[c] - m);
  float r = rsqrtf(hm_block_sum(v, sh) / C + 1e-5f);
  float *o = out + (size_t)blockIdx.x * C;
  for (int c = threadIdx.x; c < C; c += HM_BLOCK) o[c] = (x[c] - m) * r * w[c] + b[c];
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = m;
    rstd[blockIdx.x] = r;
  }
}

__global__ void k_layernorm_backward_input(float *dinp, const float *dout, const float *inp,
                                           const float *w, const float *mean, const float *rstd,
                                           int C) {
  __shared__ float sh[HM_BLOCK];
  const size_t row = (size_t)blockIdx.x * C;
  const float m = mean[blockIdx.x], r = rstd[blockIdx.x];
  float a = 0.0f, bsum = 0.0f;
  for (int c = threadIdx.x; c < C; c += HM_BLOCK) {
    float norm = (inp[row + c] - m) * r, dn = w[c] * dout[row + c];
    a += dn;
    bsum += dn * norm;
  }
  float dmean = hm_block_sum(a, sh) / C, dnorm_mean = hm_block_sum(bsum, sh) / C;
  for (int c = threadIdx.x; c < C; c += HM_BLOCK) {
    float norm = (inp[row + c] - m) * r, dn = w[c] * dout[row + c];
    dinp[row + c] += (dn - dmean - norm * dnorm_mean) * r;
  }
}

// partial sums over one chunk of rows: grid (C blocks of columns, chunks)
__global__ void k_layernorm_params_partial(float *pw, float *pb, const float *dout, const float *inp,
                                           const float *mean, const float *rstd, int N, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y;
  if (c >= C) return;
  float aw = 0.0f, ab = 0.0f;
  int n1 = min(N, (ch + 1) * HM_CHUNK);
  for (int n = ch * HM_CHUNK; n < n1; n++) {
    float d = dout[(size_t)n * C + c];
    aw += (inp[(size_t)n * C + c] - mean[n]) * rstd[n] * d;
    ab += d;
  }
  pw[(size_t)ch * C + c] = aw;
  pb[(size_t)ch * C + c] = ab;
}

__global__ void k_colsum_finish(float *dst, const float *partial, int chunks, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int ch = 0; ch < chunks; ch++) acc += partial[(size_t)ch * C + c];
  dst[c] += acc;
}

__global__ void k_colsum_partial(float *partial, const float *x, int N, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y;
  if (c >= C) return;
  float acc = 0.0f;
  int n1 = min(N, (ch + 1) * HM_CHUNK);
  for (int n = ch * HM_CHUNK; n < n1; n++) acc += x[(size_t)n * C + c];
  partial[(size_t)ch * C + c] = acc;
}

__global__ void k_add_bias(float *out, const float *bias, int N, int OC) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < (size_t)N * OC) out[i] += bias[i % OC];
}

// ---- attention ------------------------------------------------------------------------------

// one thread per element of q (B,NH,T,hs); reads the three parts of qkv (B,T,3C)
__global__ void k_attn_permute(float *q, float *k, float *v, const float *qkv, int B, int T, int C,
                               int NH) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * T * C) return;
  int hs = C / NH;
  int d = (int)(i % hs);
  size_t r = i / hs;
  int t = (int)(r % T);
  r /= T;
  int h = (int)(r % NH), b = (int)(r / NH);
  size_t src = ((size_t)b * T + t) * 3 * C + (size_t)h * hs + d;
  q[i] = qkv[src];
  k[i] = qkv[src + C];
  v[i] = qkv[src + 2 * C];
}

// out (B,T,C) <- y (B,NH,T,hs); one thread per element of out
__global__ void k_attn_unpermute(float *out, const float *y, int B, int T, int C, int NH) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * T * C) return;
  int hs = C / NH;
  int c = (int)(i % C);
  size_t bt = i / C;
  int t = (int)(bt % T), b = (int)(bt / T), h = c / hs, d = c % hs;
  out[i] = y[(((size_t)b * NH + h) * T + t) * hs + d];
}

// dy (B,NH,T,hs) <- dout (B,T,C); one thread per element of dy
__global__ void k_attn_permute_dout(float *dy, const float *dout, int B, int T, int C, int NH) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * T * C) return;
  int hs = C / NH;
  int d = (int)(i % hs);
  size_t r = i / hs;
  int t = (int)(r % T);
  r /= T;
  int h = (int)(r % NH), b = (int)(r / NH);
  dy[i] = dout[((size_t)b * T + t) * C + (size_t)h * hs + d];
}

// dqkv (B,T,3C) += dq, dk, dv (B,NH,T,hs); one thread per element of dq
__global__ void k_attn_accumulate_dqkv(float *dqkv, const float *dq, const float *dk, const float *dv,
                                       int B, int T, int C, int NH) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)B * T * C) return;
  int hs = C / NH;
  int d = (int)(i % hs);
  size_t r = i / hs;
  int t = (int)(r % T);
  r /= T;
  int h = (int)(r % NH), b = (int)(r / NH);
  size_t dst = ((size_t)b * T + t) * 3 * C + (size_t)h * hs + d;
  dqkv[dst] += dq[i];
  dqkv[dst + C] += dk[i];
  dqkv[dst + 2 * C] += dv[i];
}

// one block per row (b,h,t) of att (rows, T): positions 0..t are live
__global__ void k_attn_softmax_causal(float *att, int T) {
  __shared__ float sh[HM_BLOCK];
  const size_t row = blockIdx.x;
  const int t = (int)(row % T);
  float *a = att + row * T;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= t; j += HM_BLOCK) mx = fmaxf(mx, a[j]);
  mx = hm_block_max(mx, sh);
  float s = 0.0f;
  for (int j = threadIdx.x; j <= t; j += HM_BLOCK) s += expf(a[j] - mx);
  float inv = 1.0f / hm_block_sum(s, sh);
  for (int j = threadIdx.x; j < T; j += HM_BLOCK) a[j] = j <= t ? expf(a[j] - mx) * inv : 0.0f;
}

__global__ void k_attn_softmax_causal_backward(float *datt, const float *att, int T, float scale) {
  __shared__ float sh[HM_BLOCK];
  const size_t row = blockIdx.x;
  const int t = (int)(row % T);
  const float *a = att + row * T;
  float *d = datt + row * T;
  float dot = 0.0f;
  for (int j = threadIdx.x; j <= t; j += HM_BLOCK) dot += a[j] * d[j];
  dot = hm_block_sum(dot, sh);
  for (int j = threadIdx.x; j < T; j += HM_BLOCK) d[j] = j <= t ? a[j] * (d[j] - dot) * scale : 0.0f;
}

// ---- elementwise ------------------------------------------------------------------------------

#define HM_GELU_S 0.7978845608028654f  // sqrt(2/pi)

__global__ void k_gelu_forward(float *out, const float *inp, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = inp[i];
  out[i] = 0.5f * x * (1.0f + tanhf(HM_GELU_S * (x + 0.044715f * x * x * x)));
}

__global__ void k_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = inp[i];
  float th = tanhf(HM_GELU_S * (x + 0.044715f * x * x * x));
  float g = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * HM_GELU_S * (1.0f + 3.0f * 0.044715f * x * x);
  dinp[i] += g * dout[i];
}

__global__ void k_residual_forward(float *out, const float *a, const float *b, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

__global__ void k_residual_backward(float *d1, float *d2, const float *dout, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = dout[i];  // read first: d1 or d2 may alias dout
  if (d1) d1[i] += g;
  if (d2) d2[i] += g;
}

__global__ void k_scale(float *x, float a, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                        float b2, float eps, float wd, float gs, float bc1, float bc2) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float gi = g[i] * gs;
  float mi = b1 * m[i] + (1.0f - b1) * gi;
  float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  float pi = p[i];
  p[i] = pi - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
}

// ---- softmax and cross-entropy over the vocabulary ---------------------------------------------

__global__ void k_softmax_forward(float *probs, const float *logits, int V, int Vp) {
  __shared__ float sh[HM_BLOCK];
  const float *l = logits + (size_t)blockIdx.x * Vp;
  float *p = probs + (size_t)blockIdx.x * Vp;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += HM_BLOCK) mx = fmaxf(mx, l[i]);
  mx = hm_block_max(mx, sh);
  float s = 0.0f;
  for (int i = threadIdx.x; i < V; i += HM_BLOCK) s += expf(l[i] - mx);
  float inv = 1.0f / hm_block_sum(s, sh);
  for (int i = threadIdx.x; i < Vp; i += HM_BLOCK) p[i] = i < V ? expf(l[i] - mx) * inv : 0.0f;
}

__global__ void k_crossentropy(float *losses, float *dlogits, const float *logits, const int32_t *targets,
                               float dloss, int V, int Vp, int *bad) {
  __shared__ float sh[HM_BLOCK];
  const size_t n = blockIdx.x;
  const float *l = logits + n * Vp;
  const int y = targets[n];
  if (y >= V) {  // uniform across the block: every thread returns before any barrier
    if (threadIdx.x == 0) {
      *bad = 1;
      losses[n] = 0.0f;
    }
    return;
  }
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += HM_BLOCK) mx = fmaxf(mx, l[i]);
  mx = hm_block_max(mx, sh);
  float s = 0.0f;
  for (int i = threadIdx.x; i < V; i += HM_BLOCK) s += expf(l[i] - mx);
  const float lse = mx + logf(hm_block_sum(s, sh));
  if (threadIdx.x == 0) losses[n] = y >= 0 ? lse - l[y] : 0.0f;
  __syncthreads();  // l[y] is read before dlogits (which may alias logits) is written
  if (!dlogits) return;
  float *dl = dlogits + n * Vp;
  for (int i = threadIdx.x; i < Vp; i += HM_BLOCK)
    dl[i] = (i < V && y >= 0) ? (expf(l[i] - lse) - (i == y ? 1.0f : 0.0f)) * dloss : 0.0f;
}

// ---- reductions to the host ---------------------------------------------------------------------

__global__ void k_sum_partials(double *partial, const float *x, size_t n, int squares) {
  __shared__ double sh[HM_BLOCK];
  double acc = 0.0;
  for (size_t i = (size_t)blockIdx.x * HM_BLOCK + threadIdx.x; i < n; i += (size_t)HM_CUK_SUM_BLOCKS * HM_BLOCK) {
    double v = x[i];
    acc += squares ? v * v : v;
  }
  acc = hm_block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// ---- launchers ----------------------------------------------------------------------------------

// queues one kernel (nothing for an empty grid) and returns the launch's error code
#define LAUNCH(kernel, grid, ...)                          \
  do {                                                     \
    dim3 hm_g_(grid);                                      \
    if (hm_g_.x == 0 || hm_g_.y == 0) return gpuSuccess;   \
    kernel<<<hm_g_, HM_BLOCK, 0, s>>>(__VA_ARGS__);        \
    return gpuGetLastError();                              \
  } while (0)

extern "C" {

int hm_cuk_colsum_chunks(int N) { return (N + HM_CHUNK - 1) / HM_CHUNK; }

gpuError_t hm_cuk_encoder_forward(gpuStream_t s, float *out, const int32_t *inp, const float *wte,
                                  const float *wpe, int B, int T, int C) {
  LAUNCH(k_encoder_forward, hm_grid((size_t)B * T * C), out, inp, wte, wpe, B, T, C);
}

gpuError_t hm_cuk_encoder_backward_wte(gpuStream_t s, float *dwte, const float *dout,
                                       const int32_t *order, const int32_t *start, const int32_t *len,
                                       const int32_t *token, int nb, int C) {
  if (nb == 0) return gpuSuccess;
  dim3 grid((unsigned)nb, hm_grid((size_t)C));
  LAUNCH(k_encoder_backward_wte, grid, dwte, dout, order, start, len, token, C);
}

gpuError_t hm_cuk_encoder_backward_wpe(gpuStream_t s, float *dwpe, const float *dout, int B, int T,
                                       int C) {
  LAUNCH(k_encoder_backward_wpe, hm_grid((size_t)T * C), dwpe, dout, B, T, C);
}

gpuError_t hm_cuk_layernorm_forward(gpuStream_t s, float *out, float *mean, float *rstd,
                                    const float *inp, const float *w, const float *b, int N, int C) {
  LAUNCH(k_layernorm_forward, (unsigned)N, out, mean, rstd, inp, w, b, C);
}

gpuError_t hm_cuk_layernorm_backward_input(gpuStream_t s, float *dinp, const float *dout,
                                           const float *inp, const float *w, const float *mean,
                                           const float *rstd, int N, int C) {
  LAUNCH(k_layernorm_backward_input, (unsigned)N, dinp, dout, inp, w, mean, rstd, C);
}

gpuError_t hm_cuk_layernorm_backward_params(gpuStream_t s, float *dw, float *db, float *partial,
                                            const float *dout, const float *inp, const float *mean,
                                            const float *rstd, int N, int C) {
  int chunks = hm_cuk_colsum_chunks(N);
  float *pw = partial, *pb = partial + (size_t)chunks * C;
  k_layernorm_params_partial<<<dim3(hm_grid((size_t)C), (unsigned)chunks), HM_BLOCK, 0, s>>>(
      pw, pb, dout, inp, mean, rstd, N, C);
  k_colsum_finish<<<hm_grid((size_t)C), HM_BLOCK, 0, s>>>(dw, pw, chunks, C);
  LAUNCH(k_colsum_finish, hm_grid((size_t)C), db, pb, chunks, C);
}

gpuError_t hm_cuk_add_bias(gpuStream_t s, float *out, const float *bias, int N, int OC) {
  LAUNCH(k_add_bias, hm_grid((size_t)N * OC), out, bias, N, OC);
}

gpuError_t hm_cuk_bias_backward(gpuStream_t s, float *dbias, float *partial, const float *dout,
                                int N, int OC) {
  int chunks = hm_cuk_colsum_chunks(N);
  k_colsum_partial<<<dim3(hm_grid((size_t)OC), (unsigned)chunks), HM_BLOCK, 0, s>>>(partial, dout, N, OC);
  LAUNCH(k_colsum_finish, hm_grid((size_t)OC), dbias, partial, chunks, OC);
}

gpuError_t hm_cuk_attn_permute(gpuStream_t s, float *q, float *k, float *v, const float *qkv, int B,
                               int T, int C, int NH) {
  LAUNCH(k_attn_permute, hm_grid((size_t)B * T * C), q, k, v, qkv, B, T, C, NH);
}

gpuError_t hm_cuk_attn_unpermute(gpuStream_t s, float *out, const float *y, int B, int T, int C,
                                 int NH) {
  LAUNCH(k_attn_unpermute, hm_grid((size_t)B * T * C), out, y, B, T, C, NH);
}

gpuError_t hm_cuk_attn_permute_dout(gpuStream_t s, float *dy, const float *dout, int B, int T,
                                    int C, int NH) {
  LAUNCH(k_attn_permute_dout, hm_grid((size_t)B * T * C), dy, dout, B, T, C, NH);
}

gpuError_t hm_cuk_attn_accumulate_dqkv(gpuStream_t s, float *dqkv, const float *dq,
                                       const float *dk, const float *dv, int B, int T, int C,
                                       int NH) {
  LAUNCH(k_attn_accumulate_dqkv, hm_grid((size_t)B * T * C), dqkv, dq, dk, dv, B, T, C, NH);
}

gpuError_t hm_cuk_attn_softmax_causal(gpuStream_t s, float *att, int rows, int T) {
  LAUNCH(k_attn_softmax_causal, (unsigned)rows, att, T);
}

gpuError_t hm_cuk_attn_softmax_causal_backward(gpuStream_t s, float *datt, const float *att,
                                               int rows, int T, float scale) {
  LAUNCH(k_attn_softmax_causal_backward, (unsigned)rows, datt, att, T, scale);
}

gpuError_t hm_cuk_gelu_forward(gpuStream_t s, float *out, const float *inp, size_t n) {
  LAUNCH(k_gelu_forward, hm_grid(n), out, inp, n);
}

gpuError_t hm_cuk_gelu_backward(gpuStream_t s, float *dinp, const float *inp, const float *dout,
                                size_t n) {
  LAUNCH(k_gelu_backward, hm_grid(n), dinp, inp, dout, n);
}

gpuError_t hm_cuk_residual_forward(gpuStream_t s, float *out, const float *a, const float *b,
                                   size_t n) {
  LAUNCH(k_residual_forward, hm_grid(n), out, a, b, n);
}

gpuError_t hm_cuk_residual_backward(gpuStream_t s, float *d1, float *d2, const float *dout,
                                    size_t n) {
  LAUNCH(k_residual_backward, hm_grid(n), d1, d2, dout, n);
}

gpuError_t hm_cuk_softmax_forward(gpuStream_t s, float *probs, const float *logits, int N, int V,
                                  int Vp) {
  LAUNCH(k_softmax_forward, (unsigned)N, probs, logits, V, Vp);
}

gpuError_t hm_cuk_crossentropy(gpuStream_t s, float *losses, float *dlogits, const float *logits,
                               const int32_t *targets, float dloss, int N, int V, int Vp, int *bad) {
  LAUNCH(k_crossentropy, (unsigned)N, losses, dlogits, logits, targets, dloss, V, Vp, bad);
}

gpuError_t hm_cuk_adamw(gpuStream_t s, float *params, const float *grads, float *m, float *v,
                        size_t n, float lr, float beta1, float beta2, float eps, float wd,
                        float grad_scale, float bc1, float bc2) {
  LAUNCH(k_adamw, hm_grid(n), params, grads, m, v, n, lr, beta1, beta2, eps, wd, grad_scale, bc1, bc2);
}

gpuError_t hm_cuk_sum_partials(gpuStream_t s, double *partial, const float *x, size_t n,
                               int squares) {
  LAUNCH(k_sum_partials, HM_CUK_SUM_BLOCKS, partial, x, n, squares);
}

gpuError_t hm_cuk_scale(gpuStream_t s, float *x, float a, size_t n) {
  LAUNCH(k_scale, hm_grid(n), x, a, n);
}

}  // extern "C"
