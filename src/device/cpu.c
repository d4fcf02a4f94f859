/* The `cpu` backend: f32 kernels on OpenBLAS sgemm and OpenMP, built to be fast on a few cores.
 *
 * Threading: one OpenMP team of dev->threads threads. Each matmul is cut into fixed pieces of
 * rows, handed out dynamically, and every piece is a single-threaded sgemm, so OpenBLAS's own
 * thread pool never runs (it would spin against the OpenMP team on small machines). Opening a
 * cpu device therefore sets OpenBLAS to one thread process-wide.
 * Attention is tiled causal sgemm per (batch, head), saving only each row's log-sum-exp and
 * recomputing probabilities in backward; elementwise work (layernorm, GELU,
 * softmax, AdamW) is fused per row, vectorized with a polynomial exp, and compiled for
 * x86-64-v3 (AVX2+FMA) with a baseline fallback chosen at load time.
 * Reductions (layernorm weights, bias and embedding gradients, sums) use a fixed partition, so
 * results do not depend on the thread count. Scratch is allocated once and reused: no
 * allocation inside a training step after the first.
 * Not here: f64 (use ref:dtype=f64), half precision. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "device/cpu_bf16.h"
#include "device/device_internal.h"
#include "util/util.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HM_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HM_HOT
#endif

#define HM_GELU_S 0.7978845608f /* sqrt(2/pi) */
#define HM_ROWS_BLOCK 64        /* fixed row blocks for reductions over rows */
#define HM_ATT_BLOCK 64         /* causal attention tile */
#define HM_SUM_BLOCK 8192       /* fixed blocks of sum/sumsq */

typedef struct hm_cpu_impl {
  int threads;
  float **att_scratch; /* per thread: attention tiles, up to 2 x (T,T) */
  size_t att_scratch_elems;
  double *partials; /* fixed-block partial sums */
  size_t partials_elems;
  hm_cpu_bf16 *bf16; /* bf16 mixed precision (cpu_bf16.c), made on first use */
} hm_cpu_impl;

static hm_cpu_impl *hm_cpu(hm_device *dev) { return dev->impl; }

hm_cpu_bf16 **hm_cpu_bf16_slot(hm_device *dev) { return &hm_cpu(dev)->bf16; }

static hm_status hm_cpu_partials(hm_cpu_impl *impl, size_t n) {
  if (n <= impl->partials_elems) return HM_OK;
  double *p = realloc(impl->partials, n * sizeof *p);
  if (!p) return hm_error(HM_ERR_NOMEM, "cpu: %zu partial sums", n);
  impl->partials = p;
  impl->partials_elems = n;
  return HM_OK;
}

/* ---- vectorizable math ------------------------------------------------------------------- */

/* exp(x) for float, ~2 ulp, branch-free so loops around it vectorize (Cephes polynomial with
 * round-to-nearest by the 1.5*2^23 trick; inputs clamped to the finite range). */
static inline float hm_expf(float x) {
  float v = x;
  v = v < -87.0f ? -87.0f : v;
  v = v > 88.0f ? 88.0f : v;
  float t = v * 1.44269504088896341f + 12582912.0f;
  float n = t - 12582912.0f;
  float r = v - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* Row reductions with 8 running partial sums: the compiler turns the inner lane loop into one
 * vector op without -ffast-math, and the summation order is fixed by this code, not by the
 * vector width or the thread count. */
static inline float hm_hsum8(const float a[8]) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static inline float hm_row_sum(const float *x, int n) {
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += x[i + j];
  float s = hm_hsum8(acc);
  for (; i < n; i++) s += x[i];
  return s;
}

static inline float hm_row_dot(const float *x, const float *y, int n) {
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += x[i + j] * y[i + j];
  float s = hm_hsum8(acc);
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}

/* sum of w * d * (x - m) */
static inline float hm_row_dot_centered(const float *w, const float *d, const float *x, float m,
                                        int n) {
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += w[i + j] * d[i + j] * (x[i + j] - m);
  float s = hm_hsum8(acc);
  for (; i < n; i++) s += w[i] * d[i] * (x[i] - m);
  return s;
}

static inline float hm_row_max(const float *x, int n) {
  float acc[8];
  for (int j = 0; j < 8; j++) acc[j] = -INFINITY;
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  float m = -INFINITY;
  for (int j = 0; j < 8; j++) m = acc[j] > m ? acc[j] : m;
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

/* x[i] = exp(x[i] - shift) in place; returns their sum */
static inline float hm_row_exp_sum(float *x, int n, float shift) {
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) {
      float e = hm_expf(x[i + j] - shift);
      x[i + j] = e;
      acc[j] += e;
    }
  float s = hm_hsum8(acc);
  for (; i < n; i++) {
    x[i] = hm_expf(x[i] - shift);
    s += x[i];
  }
  return s;
}

/* ---- matmul ------------------------------------------------------------------------------- */

/* Work is cut into fixed pieces handed out dynamically rather than one static slice per thread:
 * on a machine shared with other processes a thread that loses its core leaves its pieces to
 * the others instead of stalling the team at the barrier. Piece boundaries depend only on the
 * shapes, so results do not depend on the thread count or on who ran what. */
#define HM_GEMM_PIECE 256 /* rows (or columns) of C per sgemm call */

/* C (M,N) = alpha op(A) op(B) + beta C, split along the larger dimension of C into pieces
 * shared by the calling OpenMP team (no barrier at the end: callers chain independent
 * products and meet at the region's end). Row-major; each piece is a single-threaded sgemm. */
static void hm_gemm_team(int transA, int transB, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc) {
  int splitM = M >= N;
  int len = splitM ? M : N;
  int npieces = (len + HM_GEMM_PIECE - 1) / HM_GEMM_PIECE;
  enum CBLAS_TRANSPOSE ta = transA ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE tb = transB ? CblasTrans : CblasNoTrans;
#pragma omp for schedule(dynamic, 1) nowait
  for (int piece = 0; piece < npieces; piece++) {
    int lo = piece * HM_GEMM_PIECE, hi = lo + HM_GEMM_PIECE > len ? len : lo + HM_GEMM_PIECE;
    if (splitM) {
      const float *a = transA ? A + lo : A + (size_t)lo * lda;
      cblas_sgemm(CblasRowMajor, ta, tb, hi - lo, N, K, alpha, a, lda, B, ldb, beta,
                  C + (size_t)lo * ldc, ldc);
    } else {
      const float *b = transB ? B + (size_t)lo * ldb : B + lo;
      cblas_sgemm(CblasRowMajor, ta, tb, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
    }
  }
}

static hm_status hm_cpu_matmul_forward(hm_device *dev, void *out_, const void *inp_,
                                       const void *weight_, const void *bias_, int N, int C,
                                       int OC) {
  // out (N,OC) = inp (N,C) weight (OC,C)^T + bias (OC)
  float *out = out_;
  const float *inp = inp_, *weight = weight_, *bias = bias_;
  int nt = hm_cpu(dev)->threads;
#pragma omp parallel num_threads(nt)
  {
    if (bias) {
      /* bias first, then accumulate (beta = 1): OpenBLAS's beta = 0 is an extra pass anyway */
#pragma omp for schedule(static)
      for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
    }
    hm_gemm_team(0, 1, N, OC, C, 1.0f, inp, C, weight, C, bias ? 1.0f : 0.0f, out, OC);
  }
  return HM_OK;
}

HM_HOT static void hm_colsum_add(float *restrict dst, const float *restrict src, int rows, int ld, int c0, int c1) {
  // dst[c] += sum over rows of src[r, c] for c in [c0, c1): rows in order, so deterministic
  double acc[256];
  for (int cb = c0; cb < c1; cb += 256) {
    int ce = cb + 256 < c1 ? cb + 256 : c1;
    for (int c = cb; c < ce; c++) acc[c - cb] = 0;
    for (int r = 0; r < rows; r++) {
      const float *s = src + (size_t)r * ld;
      for (int c = cb; c < ce; c++) acc[c - cb] += s[c];
    }
    for (int c = cb; c < ce; c++) dst[c] += (float)acc[c - cb];
  }
}

static hm_status hm_cpu_matmul_backward(hm_device *dev, void *dinp_, void *dweight_,
                                        void *dbias_, const void *dout_, const void *inp_,
                                        const void *weight_, int N, int C, int OC) {
  float *dinp = dinp_, *dweight = dweight_, *dbias = dbias_;
  const float *dout = dout_, *inp = inp_, *weight = weight_;
  int nt = hm_cpu(dev)->threads;
#pragma omp parallel num_threads(nt)
  {
    // dinp (N,C) += dout (N,OC) weight (OC,C)
    if (dinp) hm_gemm_team(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    // dweight (OC,C) += dout^T (OC,N) inp (N,C)
    hm_gemm_team(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int c0 = 0; c0 < OC; c0 += 64) hm_colsum_add(dbias, dout, N, OC, c0, c0 + 64 < OC ? c0 + 64 : OC);
    }
  }
  return HM_OK;
}

/* ---- encoder ------------------------------------------------------------------------------ */

static hm_status hm_cpu_encoder_forward(hm_device *dev, void *out_, const int32_t *inp,
                                        const void *wte_, const void *wpe_, int B, int T, int C) {
  float *out = out_;
  const float *wte = wte_, *wpe = wpe_;
  int nt = hm_cpu(dev)->threads;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    float *o = out + (size_t)bt * C;
    const float *we = wte + (size_t)inp[bt] * C, *pe = wpe + (size_t)(bt % T) * C;
    for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
  }
  return HM_OK;
}

static hm_status hm_cpu_encoder_backward(hm_device *dev, void *dwte_, void *dwpe_,
                                         const void *dout_, const int32_t *inp, int B, int T,
                                         int C) {
  // each thread owns a range of channels, so the scatter-add needs no atomics and runs in
  // (b,t) order for every element: deterministic
  float *dwte = dwte_, *dwpe = dwpe_;
  const float *dout = dout_;
  int nt = hm_cpu(dev)->threads;
#pragma omp parallel num_threads(nt)
  {
    int tid = omp_get_thread_num(), team = omp_get_num_threads();
    int chunk = ((C + team - 1) / team + 15) / 16 * 16;
    int c0 = tid * chunk, c1 = c0 + chunk > C ? C : c0 + chunk;
    for (int bt = 0; bt < B * T && c0 < c1; bt++) {
      const float *d = dout + (size_t)bt * C;
      float *dwe = dwte + (size_t)inp[bt] * C, *dpe = dwpe + (size_t)(bt % T) * C;
      for (int c = c0; c < c1; c++) {
        dwe[c] += d[c];
        dpe[c] += d[c];
      }
    }
  }
  return HM_OK;
}

/* ---- layernorm ---------------------------------------------------------------------------- */

HM_HOT static void hm_layernorm_row(float *restrict o, float *mean, float *rstd,
                                    const float *restrict x, const float *restrict w,
                                    const float *restrict b, int C) {
  float m = hm_row_sum(x, C) / C;
  float acc[8] = {0};
  int c = 0;
  for (; c + 8 <= C; c += 8)
    for (int j = 0; j < 8; j++) acc[j] += (x[c + j] - m) * (x[c + j] - m);
  float var = hm_hsum8(acc);
  for (; c < C; c++) var += (x[c] - m) * (x[c] - m);
  var /= C;
  float s = 1.0f / sqrtf(var + 1e-5f);
  for (c = 0; c < C; c++) o[c] = (x[c] - m) * s * w[c] + b[c];
  *mean = m;
  *rstd = s;
}

static hm_status hm_cpu_layernorm_forward(hm_device *dev, void *out_, void *mean_, void *rstd_,
                                          const void *inp_, const void *weight_,
                                          const void *bias_, int N, int C) {
  float *out = out_, *mean = mean_, *rstd = rstd_;
  const float *inp = inp_, *weight = weight_, *bias = bias_;
  int nt = hm_cpu(dev)->threads;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 64)
  for (int n = 0; n < N; n++)
    hm_layernorm_row(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C, weight, bias, C);
  return HM_OK;
}

/* Rows [r0, r1): dinp rows += ...; pw/pb (C) = this block's dweight/dbias partials. */
HM_HOT static void hm_layernorm_backward_rows(float *restrict dinp, float *restrict pw,
                                              float *restrict pb, const float *restrict dout,
                                              const float *restrict inp,
                                              const float *restrict w, const float *mean,
                                              const float *rstd, int r0, int r1, int C) {
  for (int c = 0; c < C; c++) pw[c] = pb[c] = 0;
  for (int n = r0; n < r1; n++) {
    const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    float m = mean[n], s = rstd[n];
    float dnorm_mean = hm_row_dot(w, d, C) / C;
    float dnorm_norm_mean = hm_row_dot_centered(w, d, x, m, C) * s / C;
    for (int c = 0; c < C; c++) {
      float norm = (x[c] - m) * s;
      float dnorm = w[c] * d[c];
      pb[c] += d[c];
      pw[c] += norm * d[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
}

static hm_status hm_cpu_layernorm_backward(hm_device *dev, void *dinp_, void *dweight_,
                                           void *dbias_, const void *dout_, const void *inp_,
                                           const void *weight_, const void *mean_,
                                           const void *rstd_, int N, int C) {
  float *dinp = dinp_, *dweight = dweight_, *dbias = dbias_;
  const float *dout = dout_, *inp = inp_, *weight = weight_, *mean = mean_, *rstd = rstd_;
  hm_cpu_impl *impl = hm_cpu(dev);
  int nblocks = (N + HM_ROWS_BLOCK - 1) / HM_ROWS_BLOCK;
  /* float partials of each fixed row block, stored in the double scratch (2 floats a slot) */
  HM_TRY(hm_cpu_partials(impl, ((size_t)nblocks * 2 * C + 1) / 2));
  float *part = (float *)impl->partials;
#pragma omp parallel num_threads(impl->threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < nblocks; blk++) {
      int r0 = blk * HM_ROWS_BLOCK, r1 = r0 + HM_ROWS_BLOCK > N ? N : r0 + HM_ROWS_BLOCK;
      hm_layernorm_backward_rows(dinp, part + (size_t)blk * 2 * C, part + (size_t)blk * 2 * C + C,
                                 dout, inp, weight, mean, rstd, r0, r1, C);
    }
    // blocks summed in order for each channel
#pragma omp for schedule(static)
    for (int c = 0; c < C; c++) {
      float sw = 0, sb = 0;
      for (int blk = 0; blk < nblocks; blk++) {
        sw += part[(size_t)blk * 2 * C + c];
        sb += part[(size_t)blk * 2 * C + C + c];
      }
      dweight[c] += sw;
      dbias[c] += sb;
    }
  }
  return HM_OK;
}

/* ---- attention ---------------------------------------------------------------------------- */
/* Causal attention per (batch, head) in tiles of HM_ATT_BLOCK query rows. A tile's scores reach
 * only keys [0, r1), so nothing above the diagonal block is computed. The forward saves the
 * log-sum-exp of each score row (B,NH,T), not the (B,NH,T,T) probabilities: backward recomputes
 * a tile's probabilities with one more sgemm, which is cheaper on a CPU than writing and
 * re-reading T*T floats per head through memory (and 1/T of the activation memory). Tiles live
 * in a per-thread scratch that stays in cache (forward: one tile; backward: one head's P and
 * dS). */

static size_t hm_cpu_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH) {
  (void)dev;
  (void)C;
  return (size_t)B * NH * T; /* log-sum-exp of each score row */
}

static hm_status hm_cpu_att_scratch(hm_cpu_impl *impl, size_t need) {
  if (need <= impl->att_scratch_elems) return HM_OK;
  for (int i = 0; i < impl->threads; i++) {
    free(impl->att_scratch[i]);
    impl->att_scratch[i] = hm_aligned_alloc(64, need * sizeof(float), "cpu attention scratch");
    if (!impl->att_scratch[i]) {
      impl->att_scratch_elems = 0;
      return HM_ERR_NOMEM;
    }
  }
  impl->att_scratch_elems = need;
  return HM_OK;
}

/* OpenBLAS implements beta = 0 as a separate scaling pass that costs as much as a small
 * tile's product; zeroing here and accumulating with beta = 1 skips it. */
static void hm_zero_tile(float *c, int rows, int cols, int ldc) {
  for (int r = 0; r < rows; r++) memset(c + (size_t)r * ldc, 0, (size_t)cols * sizeof(float));
}

/* row[0..len) = softmax(row[0..len)), zeros in [len, n); returns the log-sum-exp */
HM_HOT static float hm_softmax_row_causal(float *row, int len, int n) {
  float maxv = hm_row_max(row, len);
  float sum = hm_row_exp_sum(row, len, maxv);
  float inv = 1.0f / sum;
  for (int i = 0; i < len; i++) row[i] *= inv;
  for (int i = len; i < n; i++) row[i] = 0;
  return maxv + logf(sum);
}

/* row[0..len) = exp(row - lse), zeros in [len, n): the forward's probabilities again */
HM_HOT static void hm_probs_row_causal(float *row, int len, int n, float lse) {
  for (int i = 0; i < len; i++) row[i] = hm_expf(row[i] - lse);
  for (int i = len; i < n; i++) row[i] = 0;
}

/* scores tile (r1-r0, r1) at s (ld r1) = scale * q[r0:r1] k[0:r1]^T */
static void hm_att_scores(float *s, const float *q, const float *k, int r0, int r1, int hs,
                          int C3, float scale) {
  hm_zero_tile(s, r1 - r0, r1, r1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, hs, scale,
              q + (size_t)r0 * C3, C3, k, C3, 1.0f, s, r1);
}

static hm_status hm_cpu_attention_forward(hm_device *dev, void *out_, void *lse_,
                                          const void *qkv_, int B, int T, int C, int NH) {
  // out (B,T,C), lse (B,NH,T), qkv (B,T,3C)
  float *out = out_, *lse = lse_;
  const float *qkv = qkv_;
  hm_cpu_impl *impl = hm_cpu(dev);
  int hs = C / NH, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);
  HM_TRY(hm_cpu_att_scratch(impl, (size_t)HM_ATT_BLOCK * T));
#pragma omp parallel for num_threads(impl->threads) schedule(dynamic, 1)
  for (int bh = 0; bh < B * NH; bh++) {
    int b = bh / NH, h = bh % NH;
    float *p = impl->att_scratch[omp_get_thread_num()];
    const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *o = out + (size_t)b * T * C + h * hs, *l = lse + (size_t)bh * T;
    for (int r0 = 0; r0 < T; r0 += HM_ATT_BLOCK) {
      int r1 = r0 + HM_ATT_BLOCK < T ? r0 + HM_ATT_BLOCK : T;
      hm_att_scores(p, q, k, r0, r1, hs, C3, scale);
      for (int t = r0; t < r1; t++) l[t] = hm_softmax_row_causal(p + (size_t)(t - r0) * r1, t + 1, r1);
      hm_zero_tile(o + (size_t)r0 * C, r1 - r0, hs, C);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hs, r1, 1.0f, p, r1, v,
                  C3, 1.0f, o + (size_t)r0 * C, C);
    }
  }
  return HM_OK;
}

/* ds[0..n) = p * (dp - sum(p * dp)) * scale, in place over dp */
HM_HOT static void hm_softmax_backward_row(float *dp, const float *p, int n, float scale) {
  float dot = hm_row_dot(p, dp, n);
  for (int i = 0; i < n; i++) dp[i] = p[i] * (dp[i] - dot) * scale;
}

static hm_status hm_cpu_attention_backward(hm_device *dev, void *dqkv_, const void *dout_,
                                           const void *qkv_, const void *lse_, int B, int T,
                                           int C, int NH) {
  float *dqkv = dqkv_;
  const float *dout = dout_, *qkv = qkv_, *lse = lse_;
  hm_cpu_impl *impl = hm_cpu(dev);
  int hs = C / NH, C3 = 3 * C;
  float scale = 1.0f / sqrtf((float)hs);
  /* one head's P and dS (T,T) per thread: dk and dv then run as sgemms over all the query rows
   * that see a key tile, far more efficient than one small product per row tile */
  HM_TRY(hm_cpu_att_scratch(impl, (size_t)2 * T * T));
#pragma omp parallel for num_threads(impl->threads) schedule(dynamic, 1)
  for (int bh = 0; bh < B * NH; bh++) {
    int b = bh / NH, h = bh % NH;
    float *p = impl->att_scratch[omp_get_thread_num()], *ds = p + (size_t)T * T;
    const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *dq = dqkv + (size_t)b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
    const float *d = dout + (size_t)b * T * C + h * hs, *l = lse + (size_t)bh * T;
    for (int r0 = 0; r0 < T; r0 += HM_ATT_BLOCK) {
      int r1 = r0 + HM_ATT_BLOCK < T ? r0 + HM_ATT_BLOCK : T, rb = r1 - r0;
      float *pt = p + (size_t)r0 * T, *dst = ds + (size_t)r0 * T;
      // P of this tile again (rows r0..r1, keys 0..r1), and dP = dout v^T
      hm_zero_tile(pt, rb, r1, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, r1, hs, scale, q + (size_t)r0 * C3,
                  C3, k, C3, 1.0f, pt, T);
      for (int t = r0; t < r1; t++) hm_probs_row_causal(p + (size_t)t * T, t + 1, r1, l[t]);
      hm_zero_tile(dst, rb, r1, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, r1, hs, 1.0f, d + (size_t)r0 * C,
                  C, v, C3, 1.0f, dst, T);
      // dS in place (0 wherever P is 0, i.e. above the diagonal); dq[r0:r1] += dS k[0:r1]
      for (int t = r0; t < r1; t++)
        hm_softmax_backward_row(ds + (size_t)t * T, p + (size_t)t * T, r1, scale);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, hs, r1, 1.0f, dst, T, k, C3,
                  1.0f, dq + (size_t)r0 * C3, C3);
    }
    for (int c0 = 0; c0 < T; c0 += HM_ATT_BLOCK) {
      int c1 = c0 + HM_ATT_BLOCK < T ? c0 + HM_ATT_BLOCK : T;
      // keys [c0,c1) are seen by queries [c0,T), whose tiles all reach column c1:
      // dk += dS^T q, dv += P^T dout
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, hs, T - c0, 1.0f,
                  ds + (size_t)c0 * T + c0, T, q + (size_t)c0 * C3, C3, 1.0f,
                  dk + (size_t)c0 * C3, C3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, hs, T - c0, 1.0f,
                  p + (size_t)c0 * T + c0, T, d + (size_t)c0 * C, C, 1.0f,
                  dv + (size_t)c0 * C3, C3);
    }
  }
  return HM_OK;
}

/* ---- GELU, residual, scale ------------------------------------------------------------------ */

/* 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one exp instead of a libm tanh */
HM_HOT static void hm_gelu_fwd_span(float *restrict out, const float *restrict inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float u = HM_GELU_S * (x + 0.044715f * x * x * x);
    float sig = 1.0f / (1.0f + hm_expf(-2.0f * u));
    out[i] = x * sig;
  }
}

HM_HOT static void hm_gelu_bwd_span(float *restrict dinp, const float *restrict inp,
                                     const float *restrict dout, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float u = HM_GELU_S * (x + 0.044715f * x * x * x);
    float sig = 1.0f / (1.0f + hm_expf(-2.0f * u));
    float th = 2.0f * sig - 1.0f;
    float g = sig + 0.5f * x * (1.0f - th * th) * HM_GELU_S * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] += g * dout[i];
  }
}

HM_HOT static void hm_add_span(float *out, const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

HM_HOT static void hm_acc_span(float *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

HM_HOT static void hm_acc2_span(float *d1, float *d2, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float g = src[i];
    d1[i] += g;
    d2[i] += g;
  }
}

HM_HOT static void hm_scale_span(float *x, float s, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] *= s;
}

/* Elementwise work in fixed spans of 16 KiB; small tensors stay on one thread. */
#define HM_SPAN 4096
#define HM_FOR_SPANS(dev, n, body)                                                        \
  do {                                                                                    \
    size_t hm_nspans_ = ((n) + HM_SPAN - 1) / HM_SPAN;                                    \
    _Pragma("omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 8) if(hm_nspans_ > 4)") \
    for (size_t hm_s_ = 0; hm_s_ < hm_nspans_; hm_s_++) {                                 \
      size_t i0 = hm_s_ * HM_SPAN, len = (n) - i0 < HM_SPAN ? (n) - i0 : HM_SPAN;         \
      body;                                                                               \
    }                                                                                     \
  } while (0)

static hm_status hm_cpu_gelu_forward(hm_device *dev, void *out_, const void *inp_, size_t n) {
  float *out = out_;
  const float *inp = inp_;
  HM_FOR_SPANS(dev, n, hm_gelu_fwd_span(out + i0, inp + i0, len));
  return HM_OK;
}

static hm_status hm_cpu_gelu_backward(hm_device *dev, void *dinp_, const void *inp_,
                                      const void *dout_, size_t n) {
  float *dinp = dinp_;
  const float *inp = inp_, *dout = dout_;
  HM_FOR_SPANS(dev, n, hm_gelu_bwd_span(dinp + i0, inp + i0, dout + i0, len));
  return HM_OK;
}

static hm_status hm_cpu_residual_forward(hm_device *dev, void *out_, const void *a_,
                                         const void *b_, size_t n) {
  float *out = out_;
  const float *a = a_, *b = b_;
  HM_FOR_SPANS(dev, n, hm_add_span(out + i0, a + i0, b + i0, len));
  return HM_OK;
}

static hm_status hm_cpu_residual_backward(hm_device *dev, void *d1_, void *d2_,
                                          const void *dout_, size_t n) {
  float *d1 = d1_, *d2 = d2_;
  const float *dout = dout_;
  if (d1 && d2) /* reads each dout[i] before adding, so d1 or d2 may alias dout */
    HM_FOR_SPANS(dev, n, hm_acc2_span(d1 + i0, d2 + i0, dout + i0, len));
  else if (d1 || d2) {
    float *d = d1 ? d1 : d2;
    HM_FOR_SPANS(dev, n, hm_acc_span(d + i0, dout + i0, len));
  }
  return HM_OK;
}

static hm_status hm_cpu_scale(hm_device *dev, void *x_, double s, size_t n) {
  float *x = x_;
  float sf = (float)s;
  HM_FOR_SPANS(dev, n, hm_scale_span(x + i0, sf, len));
  return HM_OK;
}

/* ---- softmax, cross-entropy ---------------------------------------------------------------- */

/* returns log(sum exp(l - max)) + max over l[0..V) */
HM_HOT static float hm_logsumexp_row(const float *l, int V) {
  float maxv = hm_row_max(l, V);
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= V; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += hm_expf(l[i + j] - maxv);
  float sum = hm_hsum8(acc);
  for (; i < V; i++) sum += hm_expf(l[i] - maxv);
  return maxv + logf(sum);
}

HM_HOT static void hm_probs_row(float *p, const float *l, float lse, int V) {
  for (int i = 0; i < V; i++) p[i] = hm_expf(l[i] - lse);
}

static hm_status hm_cpu_softmax_forward(hm_device *dev, void *probs_, const void *logits_, int N,
                                        int V, int Vp) {
  float *probs = probs_;
  const float *logits = logits_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 32) if (N > 4)
  for (int n = 0; n < N; n++) {
    const float *l = logits + (size_t)n * Vp;
    float *p = probs + (size_t)n * Vp;
    hm_probs_row(p, l, hm_logsumexp_row(l, V), V);
    for (int i = V; i < Vp; i++) p[i] = 0;
  }
  return HM_OK;
}

static hm_status hm_cpu_crossentropy_forward_backward(hm_device *dev, void *losses_,
                                                      void *dlogits_, const void *logits_,
                                                      const int32_t *targets, double dloss,
                                                      int N, int V, int Vp) {
  float *losses = losses_, *dlogits = dlogits_;
  const float *logits = logits_;
  float dl = (float)dloss;
  int bad = -1; /* a row whose target is >= V; checked here because reading l[y] would overrun */
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 32) if (N > 4)
  for (int n = 0; n < N; n++) {
    const float *l = logits + (size_t)n * Vp;
    int y = targets[n];
    if (y >= V) {
#pragma omp atomic write
      bad = n;
      continue;
    }
    float lse = hm_logsumexp_row(l, V);
    losses[n] = y >= 0 ? lse - l[y] : 0.0f;
    if (!dlogits) continue;
    float *d = dlogits + (size_t)n * Vp; /* may alias l: l[y] was read above */
    if (y < 0) {
      memset(d, 0, (size_t)Vp * sizeof(float));
      continue;
    }
    hm_probs_row(d, l, lse, V);
    d[y] -= 1.0f;
    hm_scale_span(d, dl, (size_t)V);
    for (int i = V; i < Vp; i++) d[i] = 0;
  }
  if (bad >= 0)
    return hm_error(HM_ERR_INVALID_ARG, "target %d at row %d is outside the vocabulary (V = %d)",
                    (int)targets[bad], bad, V);
  return HM_OK;
}

/* ---- vocabulary-parallel cross-entropy (one shard of the vocabulary per rank) ----------- */

static hm_status hm_cpu_rowmax(hm_device *dev, void *rowmax_, const void *logits_, int N, int V) {
  float *rowmax = rowmax_;
  const float *logits = logits_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(static) if (N > 4)
  for (int n = 0; n < N; n++) {
    const float *l = logits + (size_t)n * V;
    float m = l[0];
    for (int i = 1; i < V; i++) m = l[i] > m ? l[i] : m;
    rowmax[n] = m;
  }
  return HM_OK;
}

static hm_status hm_cpu_crossentropy_shard_forward(hm_device *dev, void *stats_, const void *logits_,
                                                   const void *rowmax_, const int32_t *targets, int lo,
                                                   int N, int V) {
  float *stats = stats_;
  const float *logits = logits_, *rowmax = rowmax_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(static) if (N > 4)
  for (int n = 0; n < N; n++) {
    const float *l = logits + (size_t)n * V;
    float sum = 0.0f;
    for (int i = 0; i < V; i++) sum += expf(l[i] - rowmax[n]);
    stats[n] = sum;
    int y = targets[n] - lo;
    stats[N + n] = targets[n] >= 0 && y >= 0 && y < V ? l[y] : 0.0f;
  }
  return HM_OK;
}

static hm_status hm_cpu_crossentropy_shard_backward(hm_device *dev, void *dlogits_, const void *logits_,
                                                    const void *rowmax_, const void *sumexp_,
                                                    const int32_t *targets, int lo, double dloss, int N,
                                                    int V) {
  float *dlogits = dlogits_;
  const float *logits = logits_, *rowmax = rowmax_, *sumexp = sumexp_;
  const float dl = (float)dloss;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(static) if (N > 4)
  for (int n = 0; n < N; n++) {
    const float *l = logits + (size_t)n * V;
    float *d = dlogits + (size_t)n * V; /* may alias l: each l[i] is read before written */
    if (targets[n] < 0) {
      memset(d, 0, (size_t)V * sizeof(float));
      continue;
    }
    const float inv = 1.0f / sumexp[n];
    const int y = targets[n] - lo;
    for (int i = 0; i < V; i++) d[i] = (expf(l[i] - rowmax[n]) * inv - (i == y ? 1.0f : 0.0f)) * dl;
  }
  return HM_OK;
}

/* ---- AdamW, sums ------------------------------------------------------------------------- */

HM_HOT static void hm_adamw_span(float *restrict p, const float *restrict g, float *restrict m,
                                 float *restrict v, size_t n, float lr,
                                 float b1, float b2, float eps, float wd, float gs, float bc1,
                                 float bc2) {
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * gs;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * p[i]);
  }
}

static hm_status hm_cpu_adamw_update(hm_device *dev, void *params_, const void *grads_, void *m_,
                                     void *v_, size_t n, double lr, double beta1, double beta2,
                                     double eps, double weight_decay, double grad_scale, int t) {
  float *params = params_, *m = m_, *v = v_;
  const float *grads = grads_;
  float bc1 = (float)(1.0 - pow(beta1, t)), bc2 = (float)(1.0 - pow(beta2, t));
  HM_FOR_SPANS(dev, n, hm_adamw_span(params + i0, grads + i0, m + i0, v + i0, len, (float)lr,
                                     (float)beta1, (float)beta2, (float)eps, (float)weight_decay,
                                     (float)grad_scale, bc1, bc2));
  return HM_OK;
}

HM_HOT static double hm_sum_span(const float *x, size_t n, int squares) {
  double s = 0;
  if (squares)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  else
    for (size_t i = 0; i < n; i++) s += x[i];
  return s;
}

static hm_status hm_cpu_reduce(hm_device *dev, double *out, const float *x, size_t n,
                               int squares) {
  hm_cpu_impl *impl = hm_cpu(dev);
  size_t nb = (n + HM_SUM_BLOCK - 1) / HM_SUM_BLOCK;
  HM_TRY(hm_cpu_partials(impl, nb ? nb : 1));
  double *part = impl->partials;
#pragma omp parallel for num_threads(impl->threads) schedule(dynamic, 8) if (nb > 4)
  for (size_t b = 0; b < nb; b++) {
    size_t i0 = b * HM_SUM_BLOCK, len = n - i0 < HM_SUM_BLOCK ? n - i0 : HM_SUM_BLOCK;
    part[b] = hm_sum_span(x + i0, len, squares);
  }
  double s = 0;
  for (size_t b = 0; b < nb; b++) s += part[b];
  *out = s;
  return HM_OK;
}

static hm_status hm_cpu_sum(hm_device *dev, double *out, const void *x, size_t n) {
  return hm_cpu_reduce(dev, out, x, n, 0);
}

static hm_status hm_cpu_sumsq(hm_device *dev, double *out, const void *x, size_t n) {
  return hm_cpu_reduce(dev, out, x, n, 1);
}

/* ---- backend ----------------------------------------------------------------------------- */

static void hm_cpu_close(hm_device *dev) {
  hm_cpu_impl *impl = dev->impl;
  if (!impl) return;
  if (impl->att_scratch)
    for (int i = 0; i < impl->threads; i++) free(impl->att_scratch[i]);
  free(impl->att_scratch);
  free(impl->partials);
  hm_cpu_bf16_free(impl->bf16);
  free(impl);
  dev->impl = NULL;
}

/* ---- Llama: RMSNorm, rotary embedding, SwiGLU, grouped-query key/value repeat ---------------- */

static hm_status hm_cpu_rmsnorm_forward(hm_device *dev, void *out_, void *rstd_, const void *inp_,
                                        const void *weight_, int N, int C) {
  float *out = out_, *rstd = rstd_;
  const float *inp = inp_, *w = weight_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 64)
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * C;
    float r = 1.0f / sqrtf(hm_row_dot(x, x, C) / C + 1e-5f);
    float *o = out + (size_t)n * C;
    for (int c = 0; c < C; c++) o[c] = x[c] * r * w[c];
    rstd[n] = r;
  }
  return HM_OK;
}

/* Rows [r0, r1): dinp rows += ...; pw (C) = this block's dweight partial. */
HM_HOT static void hm_rmsnorm_backward_rows(float *restrict dinp, float *restrict pw, const float *restrict dout,
                                            const float *restrict inp, const float *restrict w,
                                            const float *rstd, int r0, int r1, int C) {
  for (int c = 0; c < C; c++) pw[c] = 0;
  for (int n = r0; n < r1; n++) {
    const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    float r = rstd[n], dot = 0;
    for (int c = 0; c < C; c++) dot += w[c] * d[c] * x[c];
    float k = r * r * r * dot / C;
    for (int c = 0; c < C; c++) {
      dx[c] += r * w[c] * d[c] - k * x[c];
      pw[c] += d[c] * x[c] * r;
    }
  }
}

static hm_status hm_cpu_rmsnorm_backward(hm_device *dev, void *dinp_, void *dweight_, const void *dout_,
                                         const void *inp_, const void *weight_, const void *rstd_, int N, int C) {
  float *dinp = dinp_, *dweight = dweight_;
  const float *dout = dout_, *inp = inp_, *weight = weight_, *rstd = rstd_;
  hm_cpu_impl *impl = hm_cpu(dev);
  int nblocks = (N + HM_ROWS_BLOCK - 1) / HM_ROWS_BLOCK;
  HM_TRY(hm_cpu_partials(impl, ((size_t)nblocks * C + 1) / 2));
  float *part = (float *)impl->partials;
#pragma omp parallel num_threads(impl->threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < nblocks; blk++) {
      int r0 = blk * HM_ROWS_BLOCK, r1 = r0 + HM_ROWS_BLOCK > N ? N : r0 + HM_ROWS_BLOCK;
      hm_rmsnorm_backward_rows(dinp, part + (size_t)blk * C, dout, inp, weight, rstd, r0, r1, C);
    }
    // blocks summed in order for each channel: the same result for any thread count
#pragma omp for schedule(static)
    for (int c = 0; c < C; c++) {
      float sw = 0;
      for (int blk = 0; blk < nblocks; blk++) sw += part[(size_t)blk * C + c];
      dweight[c] += sw;
    }
  }
  return HM_OK;
}

static hm_status hm_cpu_rope(hm_device *dev, void *x_, int B, int T, int H, int hd, int stride, int sign) {
  float *x = x_;
  const int half = hd / 2;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 4)
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      const double a = hm_rope_angle(t, i, hd);
      const float c = (float)cos(a), sn = (float)(sign * sin(a));
      for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
          float *p = x + ((size_t)b * T + t) * stride + (size_t)h * hd;
          float x1 = p[i], x2 = p[i + half];
          p[i] = x1 * c - x2 * sn;
          p[i + half] = x1 * sn + x2 * c;
        }
    }
  return HM_OK;
}

static hm_status hm_cpu_swiglu_forward(hm_device *dev, void *out_, const void *inp_, int N, int F) {
  float *out = out_;
  const float *inp = inp_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 16)
  for (int n = 0; n < N; n++) {
    const float *g = inp + (size_t)n * 2 * F, *u = g + F;
    float *o = out + (size_t)n * F;
    for (int f = 0; f < F; f++) o[f] = g[f] / (1.0f + expf(-g[f])) * u[f];
  }
  return HM_OK;
}

static hm_status hm_cpu_swiglu_backward(hm_device *dev, void *dinp_, const void *inp_, const void *dout_, int N,
                                        int F) {
  float *dinp = dinp_;
  const float *inp = inp_, *dout = dout_;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 16)
  for (int n = 0; n < N; n++) {
    const float *g = inp + (size_t)n * 2 * F, *u = g + F, *d = dout + (size_t)n * F;
    float *dg = dinp + (size_t)n * 2 * F, *du = dg + F;
    for (int f = 0; f < F; f++) {
      float sg = 1.0f / (1.0f + expf(-g[f]));
      dg[f] = d[f] * u[f] * sg * (1.0f + g[f] * (1.0f - sg));
      du[f] = d[f] * g[f] * sg;
    }
  }
  return HM_OK;
}

static hm_status hm_cpu_repeat_kv_forward(hm_device *dev, void *out_, const void *inp_, int N, int C, int NH,
                                          int KVH) {
  float *out = out_;
  const float *inp = inp_;
  const int hd = C / NH, kvd = KVH * hd, rep = NH / KVH, W = C + 2 * kvd;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 64)
  for (int n = 0; n < N; n++) {
    const float *in = inp + (size_t)n * W;
    float *o = out + (size_t)n * 3 * C;
    memcpy(o, in, (size_t)C * sizeof(float));
    for (int h = 0; h < NH; h++) {
      memcpy(o + C + h * hd, in + C + (h / rep) * hd, (size_t)hd * sizeof(float));
      memcpy(o + 2 * C + h * hd, in + C + kvd + (h / rep) * hd, (size_t)hd * sizeof(float));
    }
  }
  return HM_OK;
}

static hm_status hm_cpu_repeat_kv_backward(hm_device *dev, void *dinp_, const void *dout_, int N, int C, int NH,
                                           int KVH) {
  float *dinp = dinp_;
  const float *dout = dout_;
  const int hd = C / NH, kvd = KVH * hd, rep = NH / KVH, W = C + 2 * kvd;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 64)
  for (int n = 0; n < N; n++) {
    const float *g = dout + (size_t)n * 3 * C;
    float *di = dinp + (size_t)n * W;
    memcpy(di, g, (size_t)C * sizeof(float));
    for (int j = 0; j < KVH; j++)
      for (int d = 0; d < hd; d++) {
        float sk = 0, sv = 0; /* the group's heads in order */
        for (int r = 0; r < rep; r++) {
          sk += g[C + (j * rep + r) * hd + d];
          sv += g[2 * C + (j * rep + r) * hd + d];
        }
        di[C + j * hd + d] = sk;
        di[C + kvd + j * hd + d] = sv;
      }
  }
  return HM_OK;
}

/* Gradient buffers are zeroed every step; two threads write memory faster than one. */
static hm_status hm_cpu_zero(hm_device *dev, void *ptr, size_t bytes) {
  char *p = ptr;
  size_t chunk = (size_t)1 << 16, nchunks = (bytes + chunk - 1) / chunk;
#pragma omp parallel for num_threads(hm_cpu(dev)->threads) schedule(dynamic, 4) if (nchunks > 16)
  for (size_t i = 0; i < nchunks; i++) {
    size_t off = i * chunk;
    memset(p + off, 0, bytes - off < chunk ? bytes - off : chunk);
  }
  return HM_OK;
}

static const hm_device_ops hm_cpu_ops = {
    .alloc = hm_host_alloc,
    .free = hm_host_free,
    .copy_h2d = hm_host_copy,
    .copy_d2h = hm_host_copy,
    .copy_d2d = hm_host_copy,
    .zero = hm_cpu_zero,
    .alloc_host = hm_host_alloc,
    .free_host = hm_host_free,
    .copy_from_f32 = hm_host_copy_from_f32,
    .copy_to_f32 = hm_host_copy_to_f32,
    .synchronize = hm_host_synchronize,
    .mem_info = hm_host_mem_info,
    .close = hm_cpu_close,
    .encoder_forward = hm_cpu_encoder_forward,
    .encoder_backward = hm_cpu_encoder_backward,
    .layernorm_forward = hm_cpu_layernorm_forward,
    .layernorm_backward = hm_cpu_layernorm_backward,
    .matmul_forward = hm_cpu_matmul_forward,
    .matmul_backward = hm_cpu_matmul_backward,
    .attention_saved_elems = hm_cpu_attention_saved_elems,
    .attention_forward = hm_cpu_attention_forward,
    .attention_backward = hm_cpu_attention_backward,
    .gelu_forward = hm_cpu_gelu_forward,
    .gelu_backward = hm_cpu_gelu_backward,
    .rmsnorm_forward = hm_cpu_rmsnorm_forward,
    .rmsnorm_backward = hm_cpu_rmsnorm_backward,
    .rope = hm_cpu_rope,
    .swiglu_forward = hm_cpu_swiglu_forward,
    .swiglu_backward = hm_cpu_swiglu_backward,
    .repeat_kv_forward = hm_cpu_repeat_kv_forward,
    .repeat_kv_backward = hm_cpu_repeat_kv_backward,
    .residual_forward = hm_cpu_residual_forward,
    .residual_backward = hm_cpu_residual_backward,
    .softmax_forward = hm_cpu_softmax_forward,
    .crossentropy_forward_backward = hm_cpu_crossentropy_forward_backward,
    .rowmax = hm_cpu_rowmax,
    .crossentropy_shard_forward = hm_cpu_crossentropy_shard_forward,
    .crossentropy_shard_backward = hm_cpu_crossentropy_shard_backward,
    .adamw_update = hm_cpu_adamw_update,
    .sum = hm_cpu_sum,
    .sumsq = hm_cpu_sumsq,
    .scale = hm_cpu_scale,
    .to_bf16 = hm_cpu_to_bf16,
    .matmul_forward_bf16 = hm_cpu_matmul_forward_bf16,
    .matmul_backward_bf16 = hm_cpu_matmul_backward_bf16,
    .attention_forward_bf16 = hm_cpu_attention_forward_bf16,
    .attention_backward_bf16 = hm_cpu_attention_backward_bf16,
};

static hm_status hm_cpu_open(hm_device *dev, const hm_device_options *opt) {
  if (opt->dtype != HM_FLOAT32)
    return hm_error(HM_ERR_UNSUPPORTED, "cpu computes in f32 only (use ref:dtype=f64 for f64)");
  if (opt->index != 0)
    return hm_error(HM_ERR_INVALID_ARG, "cpu has one device: device=%d (use device=0)", opt->index);
  if (opt->platform != 0)
    return hm_error(HM_ERR_INVALID_ARG, "cpu has no OpenCL platforms: platform=%d (opencl only)", opt->platform);
  hm_cpu_impl *impl = hm_calloc(1, sizeof *impl, "cpu backend state");
  if (!impl) return HM_ERR_NOMEM;
  impl->threads = opt->threads > 0 ? opt->threads : omp_get_num_procs();
  impl->att_scratch = hm_calloc((size_t)impl->threads, sizeof(float *), "cpu scratch table");
  if (!impl->att_scratch) {
    free(impl);
    return HM_ERR_NOMEM;
  }
  openblas_set_num_threads(1); /* see the top of this file */
  dev->impl = impl;
  dev->kind = HM_DEVICE_HOST;
  dev->threads = impl->threads;
  dev->ops = &hm_cpu_ops;
  return HM_OK;
}

const hm_device_backend hm_device_backend_cpu = {
    .name = "cpu",
    .description = "OpenBLAS sgemm + OpenMP, f32",
    .open = hm_cpu_open,
};
