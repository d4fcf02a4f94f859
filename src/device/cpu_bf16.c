/* The cpu backend's bf16 mixed-precision kernels (include/hetmix/device.h, "bf16 mixed
 * precision"). Matmuls go to oneDNN when it is built in (HETMIX_HAVE_DNNL; Debian's libdnnl-dev):
 * bf16 inputs, f32 accumulation and f32 results (AVX512-BF16 dot products where the CPU has them),
 * which this file then rounds to bf16 after adding the bias. Rounding, attention and the
 * matmuls without oneDNN run the shared loops of bf16_kernels.inc with f32 sums. One oneDNN
 * primitive per GEMM shape is created once and kept (a small cache per device). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "device/cpu_bf16.h"
#include "util/util.h"

#define ACC float
#define BRND hm_round_bf16
#define BFN(name) name##_cpu
#define BF_THREADS(dev) ((dev)->threads)
/* a dot product in 8 running lanes: the compiler makes the lane loop one vector */
static inline float hm_cpu_bf16_dot(const float *a, const float *b, int n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) lane[l] += a[i + l] * b[i + l];
  float v = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  for (; i < n; i++) v += a[i] * b[i];
  return v;
}
#define BF_DOT hm_cpu_bf16_dot
#include "device/bf16_kernels.inc"

#ifdef HETMIX_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>

enum { HM_DNNL_CACHE = 48 };

typedef struct {
  int M, K, N, ta, tb;
  dnnl_primitive_t prim; /* NULL: oneDNN has no implementation for this shape (loops) */
  dnnl_memory_t a, b, c;
} hm_dnnl_mm;

struct hm_cpu_bf16 {
  dnnl_engine_t eng;
  dnnl_stream_t stream;
  int broken; /* engine creation failed: loops only */
  hm_dnnl_mm mm[HM_DNNL_CACHE];
  int n_mm;
  uint16_t *d16; /* dout rounded to bf16 */
  size_t d16_elems;
  float *tmp; /* f32 GEMM results before rounding */
  size_t tmp_elems;
};

void hm_cpu_bf16_free(hm_cpu_bf16 *b) {
  if (!b) return;
  for (int i = 0; i < b->n_mm; i++) {
    if (b->mm[i].prim) dnnl_primitive_destroy(b->mm[i].prim);
    if (b->mm[i].a) dnnl_memory_destroy(b->mm[i].a);
    if (b->mm[i].b) dnnl_memory_destroy(b->mm[i].b);
    if (b->mm[i].c) dnnl_memory_destroy(b->mm[i].c);
  }
  if (b->stream) dnnl_stream_destroy(b->stream);
  if (b->eng) dnnl_engine_destroy(b->eng);
  free(b->d16);
  free(b->tmp);
  free(b);
}

static hm_cpu_bf16 *hm_bf16_state(hm_device *dev) {
  hm_cpu_bf16 **slot = hm_cpu_bf16_slot(dev);
  if (!*slot) {
    hm_cpu_bf16 *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    if (dnnl_engine_create(&b->eng, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&b->stream, b->eng, dnnl_stream_default_flags) != dnnl_success)
      b->broken = 1;
    *slot = b;
  }
  return *slot;
}

/* rows x cols, stored row-major or (trans) as its transpose */
static int hm_dnnl_md(dnnl_memory_desc_t *md, int rows, int cols, int trans, dnnl_data_type_t dt) {
  dnnl_dims_t dims = {rows, cols};
  dnnl_dims_t strides = {trans ? 1 : cols, trans ? rows : 1};
  return dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides) == dnnl_success;
}

static void hm_dnnl_create(hm_cpu_bf16 *b, hm_dnnl_mm *m) {
  dnnl_memory_desc_t a_md, b_md, c_md;
  dnnl_matmul_desc_t desc;
  dnnl_primitive_desc_t pd = NULL;
  if (!hm_dnnl_md(&a_md, m->M, m->K, m->ta, dnnl_bf16) || !hm_dnnl_md(&b_md, m->K, m->N, m->tb, dnnl_bf16) ||
      !hm_dnnl_md(&c_md, m->M, m->N, 0, dnnl_f32) ||
      dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md) != dnnl_success ||
      dnnl_primitive_desc_create(&pd, &desc, NULL, b->eng, NULL) != dnnl_success)
    return;
  if (dnnl_primitive_create(&m->prim, pd) != dnnl_success) m->prim = NULL;
  dnnl_primitive_desc_destroy(pd);
  if (m->prim && (dnnl_memory_create(&m->a, &a_md, b->eng, DNNL_MEMORY_NONE) != dnnl_success ||
                  dnnl_memory_create(&m->b, &b_md, b->eng, DNNL_MEMORY_NONE) != dnnl_success ||
                  dnnl_memory_create(&m->c, &c_md, b->eng, DNNL_MEMORY_NONE) != dnnl_success)) {
    dnnl_primitive_destroy(m->prim);
    m->prim = NULL;
  }
}

/* The cached primitive for this shape (created on first use); NULL: use the loops. */
static hm_dnnl_mm *hm_dnnl_find(hm_cpu_bf16 *b, int M, int K, int N, int ta, int tb) {
  if (b->broken) return NULL;
  for (int i = 0; i < b->n_mm; i++) {
    hm_dnnl_mm *m = &b->mm[i];
    if (m->M == M && m->K == K && m->N == N && m->ta == ta && m->tb == tb) return m->prim ? m : NULL;
  }
  if (b->n_mm == HM_DNNL_CACHE) return NULL;
  hm_dnnl_mm *m = &b->mm[b->n_mm++];
  memset(m, 0, sizeof *m);
  m->M = M, m->K = K, m->N = N, m->ta = ta, m->tb = tb;
  hm_dnnl_create(b, m);
  return m->prim ? m : NULL;
}

/* c (M,N) f32 = a (M,K) x b (K,N), bf16 inputs (either stored transposed) */
static hm_status hm_dnnl_run(hm_device *dev, hm_dnnl_mm *m, hm_cpu_bf16 *b, float *c, const uint16_t *pa,
                             const uint16_t *pb) {
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, m->a}, {DNNL_ARG_WEIGHTS, m->b}, {DNNL_ARG_DST, m->c}};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(dev->threads); /* oneDNN's OpenMP team: the device's thread count */
  dnnl_status_t st = dnnl_memory_set_data_handle(m->a, (void *)pa);
  if (st == dnnl_success) st = dnnl_memory_set_data_handle(m->b, (void *)pb);
  if (st == dnnl_success) st = dnnl_memory_set_data_handle(m->c, c);
  if (st == dnnl_success) st = dnnl_primitive_execute(m->prim, b->stream, 3, args);
  if (st == dnnl_success) st = dnnl_stream_wait(b->stream);
  omp_set_num_threads(saved);
  if (st != dnnl_success)
    return hm_error(HM_ERR_INTERNAL, "%s: oneDNN bf16 matmul %dx%dx%d failed (status %d)", dev->spec, m->M, m->K,
                    m->N, (int)st);
  return HM_OK;
}

static hm_status hm_grow(void **p, size_t *have, size_t n, size_t es, const char *what) {
  if (n <= *have) return HM_OK;
  void *q = realloc(*p, n * es);
  if (!q) return hm_error(HM_ERR_NOMEM, "cpu: %zu elements of %s", n, what);
  *p = q;
  *have = n;
  return HM_OK;
}

hm_status hm_cpu_matmul_forward_bf16(hm_device *dev, void *out_, const void *inp, const void *weight,
                                     const void *bias_, int N, int C, int OC) {
  hm_cpu_bf16 *b = hm_bf16_state(dev);
  if (!b) return hm_error(HM_ERR_NOMEM, "cpu: bf16 state");
  hm_dnnl_mm *m = hm_dnnl_find(b, N, C, OC, 0, 1);
  if (!m) return matmul_forward_bf16_loops_cpu(dev, out_, inp, weight, bias_, N, C, OC);
  float *out = out_;
  const float *bias = bias_;
  HM_TRY(hm_dnnl_run(dev, m, b, out, inp, weight));
  const int nt = dev->threads;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int n = 0; n < N; n++) {
    float *o = out + (size_t)n * OC;
    if (bias)
      for (int j = 0; j < OC; j++) o[j] = hm_round_bf16(o[j] + hm_round_bf16(bias[j]));
    else
      for (int j = 0; j < OC; j++) o[j] = hm_round_bf16(o[j]);
  }
  return HM_OK;
}

/* acc (n) += round_bf16(tmp (n)) */
static void hm_add_rounded(hm_device *dev, float *acc, const float *tmp, size_t n) {
  const int nt = dev->threads;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (size_t i = 0; i < n; i++) acc[i] += hm_round_bf16(tmp[i]);
}

hm_status hm_cpu_matmul_backward_bf16(hm_device *dev, void *dinp, void *dweight, void *dbias_, const void *dout_,
                                      const void *inp, const void *weight, int N, int C, int OC) {
  hm_cpu_bf16 *b = hm_bf16_state(dev);
  if (!b) return hm_error(HM_ERR_NOMEM, "cpu: bf16 state");
  hm_dnnl_mm *mw = hm_dnnl_find(b, OC, N, C, 1, 0), *mi = dinp ? hm_dnnl_find(b, N, OC, C, 0, 0) : NULL;
  if (!mw || (dinp && !mi))
    return matmul_backward_bf16_loops_cpu(dev, dinp, dweight, dbias_, dout_, inp, weight, N, C, OC);
  const size_t big = (size_t)N * C > (size_t)OC * C ? (size_t)N * C : (size_t)OC * C;
  HM_TRY(hm_grow((void **)&b->d16, &b->d16_elems, (size_t)N * OC, sizeof(uint16_t), "rounded output gradient"));
  HM_TRY(hm_grow((void **)&b->tmp, &b->tmp_elems, big, sizeof(float), "bf16 matmul results"));
  HM_TRY(to_bf16_cpu(dev, b->d16, dout_, (size_t)N * OC));
  if (dinp) {
    HM_TRY(hm_dnnl_run(dev, mi, b, b->tmp, b->d16, weight));
    hm_add_rounded(dev, dinp, b->tmp, (size_t)N * C);
  }
  HM_TRY(hm_dnnl_run(dev, mw, b, b->tmp, b->d16, inp));
  hm_add_rounded(dev, dweight, b->tmp, (size_t)OC * C);
  if (dbias_) {
    float *dbias = dbias_;
    const uint16_t *d = b->d16;
    const int nt = dev->threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int o = 0; o < OC; o++) {
      float s = 0;
      for (int n = 0; n < N; n++) s += hm_bf16_to_f32(d[(size_t)n * OC + o]);
      dbias[o] += hm_round_bf16(s);
    }
  }
  return HM_OK;
}

#else /* no oneDNN: the loops */

void hm_cpu_bf16_free(hm_cpu_bf16 *b) { (void)b; }

hm_status hm_cpu_matmul_forward_bf16(hm_device *dev, void *out, const void *inp, const void *weight,
                                     const void *bias, int N, int C, int OC) {
  return matmul_forward_bf16_loops_cpu(dev, out, inp, weight, bias, N, C, OC);
}

hm_status hm_cpu_matmul_backward_bf16(hm_device *dev, void *dinp, void *dweight, void *dbias, const void *dout,
                                      const void *inp, const void *weight, int N, int C, int OC) {
  return matmul_backward_bf16_loops_cpu(dev, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

#endif

hm_status hm_cpu_to_bf16(hm_device *dev, void *dst, const void *src, size_t n) { return to_bf16_cpu(dev, dst, src, n); }

hm_status hm_cpu_attention_forward_bf16(hm_device *dev, void *out, void *lse, const void *qkv, int B, int T, int C,
                                        int NH) {
  return attention_forward_bf16_cpu(dev, out, lse, qkv, B, T, C, NH);
}

hm_status hm_cpu_attention_backward_bf16(hm_device *dev, void *dqkv, const void *dout, const void *qkv,
                                         const void *lse, int B, int T, int C, int NH) {
  return attention_backward_bf16_cpu(dev, dqkv, dout, qkv, lse, B, T, C, NH);
}
