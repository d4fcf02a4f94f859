/* The `cuda` backend's host side (cuda.c: memory, copies, events; cuda_ops.c: the kernel
 * entries, GEMMs through cuBLAS). C only; the kernels' launchers are in cuda_internal.h. */
#ifndef HETMIX_CUDA_BACKEND_H
#define HETMIX_CUDA_BACKEND_H

#include "device/cuda_internal.h"
#include "device/gpu_blas.h"
#include "device/device_impl.h"

typedef struct hm_cu_impl {
  int index;
  char name[256];
  gpuStream_t stream;      /* every kernel and blocking copy, in order */
  gpuStream_t copy_stream; /* asynchronous staging copies */
  gpublasHandle_t blas;
  void *scratch;           /* grown on demand: attention and column-sum temporaries */
  size_t scratch_bytes;
  int *flag;               /* device int: a kernel reports a bad argument through it */
  double *partial;         /* HM_CUK_SUM_BLOCKS partial sums of sum/sumsq */
} hm_cu_impl;

hm_status hm_cu_fail(gpuError_t e, const char *what);
hm_status hm_cu_blas_fail(gpublasStatus_t e, const char *what);
#define GPU_TRY(call, what)                                   \
  do {                                                        \
    gpuError_t hm_e_ = (call);                                \
    if (hm_e_ != gpuSuccess) return hm_cu_fail(hm_e_, what);  \
  } while (0)
#define BLAS_TRY(call, what)                                                \
  do {                                                                      \
    gpublasStatus_t hm_b_ = (call);                                         \
    if (hm_b_ != GPUBLAS_STATUS_SUCCESS) return hm_cu_blas_fail(hm_b_, what); \
  } while (0)

/* at least `bytes` of device scratch (contents undefined; valid until the next call) */
hm_status hm_cu_scratch(hm_cu_impl *impl, size_t bytes, void **out);

hm_status hm_cu_alloc(hm_device *dev, void **ptr, size_t bytes);
void hm_cu_free(hm_device *dev, void *ptr);
hm_status hm_cu_alloc_host(hm_device *dev, void **ptr, size_t bytes);
void hm_cu_free_host(hm_device *dev, void *ptr);
hm_status hm_cu_mem_info(hm_device *dev, size_t *total, size_t *free_bytes);
hm_status hm_cu_h2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cu_d2h(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cu_d2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cu_zero(hm_device *dev, void *ptr, size_t bytes);
hm_status hm_cu_from_f32(hm_device *dev, void *dst, const float *src, size_t n);
hm_status hm_cu_to_f32(hm_device *dev, float *dst, const void *src, size_t n);
hm_status hm_cu_synchronize(hm_device *dev);
hm_status hm_cu_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
hm_status hm_cu_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
hm_status hm_cu_event_query(hm_device *dev, void *event, int *done);
void hm_cu_close(hm_device *dev);

extern const hm_device_ops hm_cuda_ops;

#endif
