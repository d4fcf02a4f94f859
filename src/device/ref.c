/* The `ref` backend: portable C, plain loops, no BLAS, no OpenMP. It is the oracle every other
 * backend is tested against op by op, it supports dtype=f64 for finite-difference gradient
 * checks, and it serves as a genuinely different (slower) second chip in heterogeneous runs on
 * one machine. Its kernels live in ref_kernels.inc, compiled here for float and for double.
 * Not fast by design: clarity and a fixed summation order come first. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "device/device_internal.h"
#include "util/util.h"

typedef struct hm_ref_impl {
  void *scratch; /* grown on demand; rows of double sums for matmul and attention backward */
  size_t scratch_bytes;
} hm_ref_impl;

static void *hm_ref_scratch(hm_device *dev, size_t bytes) {
  hm_ref_impl *impl = dev->impl;
  if (bytes > impl->scratch_bytes) {
    void *p = realloc(impl->scratch, bytes);
    if (!p) {
      hm_error(HM_ERR_NOMEM, "ref: %zu bytes of kernel scratch", bytes);
      return NULL;
    }
    impl->scratch = p;
    impl->scratch_bytes = bytes;
  }
  return impl->scratch;
}

static void hm_ref_close(hm_device *dev) {
  hm_ref_impl *impl = dev->impl;
  if (impl) free(impl->scratch);
  free(impl);
  dev->impl = NULL;
}

static size_t hm_ref_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH) {
  (void)dev;
  (void)C;
  return (size_t)B * NH * T * T; /* softmax probabilities */
}

#define HM_REF_CAT_(a, b) a##b
#define HM_REF_CAT(a, b) HM_REF_CAT_(a, b)
#define ACC double

/* bf16 mixed precision on f32 devices: exact sums in double of the bf16-rounded values, one
 * direct rounding (double to bf16) at each rounding point: the oracle of the other backends. */
#define BFN(name) HM_REF_CAT(name, _ref)
#define BRND hm_round_bf16_f64
#define BF_THREADS(dev) ((void)(dev), 1)
static inline double hm_ref_bf16_dot(const float *a, const float *b, int n) {
  double v = 0;
  for (int i = 0; i < n; i++) v += (double)a[i] * b[i];
  return v;
}
#define BF_DOT hm_ref_bf16_dot
#include "device/bf16_kernels.inc"
#undef BFN
#undef BRND
#undef BF_THREADS
#undef BF_DOT

#define REAL float
#define SFX _f32
#define HM_REF_BF16_ENTRIES                                                                        \
  .to_bf16 = to_bf16_ref, .matmul_forward_bf16 = matmul_forward_bf16_loops_ref,                    \
  .matmul_backward_bf16 = matmul_backward_bf16_loops_ref,                                          \
  .attention_forward_bf16 = attention_forward_bf16_ref,                                            \
  .attention_backward_bf16 = attention_backward_bf16_ref,
#include "device/ref_kernels.inc"
#undef REAL
#undef SFX
#undef HM_REF_BF16_ENTRIES

#define REAL double
#define SFX _f64
#define HM_REF_BF16_ENTRIES
#include "device/ref_kernels.inc"
#undef REAL
#undef SFX
#undef HM_REF_BF16_ENTRIES

static hm_status hm_ref_open(hm_device *dev, const hm_device_options *opt) {
  if (opt->threads > 1)
    return hm_error(HM_ERR_INVALID_ARG, "ref is single-threaded: threads=%d (use threads=1 or the cpu backend)",
                    opt->threads);
  if (opt->index != 0)
    return hm_error(HM_ERR_INVALID_ARG, "ref has one device: device=%d (use device=0)", opt->index);
  if (opt->platform != 0)
    return hm_error(HM_ERR_INVALID_ARG, "ref has no OpenCL platforms: platform=%d (opencl only)", opt->platform);
  if (opt->dtype != HM_FLOAT32 && opt->dtype != HM_FLOAT64)
    return hm_error(HM_ERR_UNSUPPORTED, "ref supports dtype=f32 and dtype=f64 only");
  hm_ref_impl *impl = hm_calloc(1, sizeof *impl, "ref backend state");
  if (!impl) return HM_ERR_NOMEM;
  dev->impl = impl;
  dev->kind = HM_DEVICE_HOST;
  dev->threads = 1;
  dev->ops = opt->dtype == HM_FLOAT64 ? &hm_ref_ops_f64 : &hm_ref_ops_f32;
  return HM_OK;
}

const hm_device_backend hm_device_backend_ref = {
    .name = "ref",
    .description = "portable C reference (plain loops, f32/f64, single thread): the oracle",
    .open = hm_ref_open,
};
