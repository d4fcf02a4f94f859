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

#define REAL float
#define SFX _f32
#include "device/ref_kernels.inc"
#undef REAL
#undef SFX

#define REAL double
#define SFX _f64
#include "device/ref_kernels.inc"
#undef REAL
#undef SFX

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
