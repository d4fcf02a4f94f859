/* The backend side of include/hetmix/device.h, in the manner of ggml-backend-impl.h: the
 * function table a backend fills, the device struct behind the public opaque handle, and the
 * backend descriptor. Only src/device/ (and tests of the registry) include it; model, runtime
 * and CLI code see hm_device as opaque and reach device memory only through the copy calls.
 * Kernel entries receive arguments already checked by the hm_dev_* wrappers (device.c). */
#ifndef HETMIX_DEVICE_IMPL_H
#define HETMIX_DEVICE_IMPL_H

#include "hetmix/device.h"

/* The function table a backend fills. Kernel entries receive already-checked arguments. */
typedef struct hm_device_ops {
  /* memory */
  hm_status (*alloc)(hm_device *dev, void **ptr, size_t bytes); /* 64-byte aligned, not zeroed */
  void (*free)(hm_device *dev, void *ptr);
  hm_status (*copy_h2d)(hm_device *dev, void *dst, const void *src, size_t bytes);
  hm_status (*copy_d2h)(hm_device *dev, void *dst, const void *src, size_t bytes);
  hm_status (*copy_d2d)(hm_device *dev, void *dst, const void *src, size_t bytes);
  hm_status (*zero)(hm_device *dev, void *ptr, size_t bytes);
  /* pinned host staging memory (host backends: 64-byte-aligned malloc) */
  hm_status (*alloc_host)(hm_device *dev, void **ptr, size_t bytes);
  void (*free_host)(hm_device *dev, void *ptr);
  /* converting copies between host f32 and device dtype (n elements) */
  hm_status (*copy_from_f32)(hm_device *dev, void *dst, const float *src, size_t n);
  hm_status (*copy_to_f32)(hm_device *dev, float *dst, const void *src, size_t n);
  hm_status (*synchronize)(hm_device *dev);
  /* Optional asynchronous copies between pinned host memory (alloc_host) and the device,
   * queued in order on the device's queue. *event (when event is not NULL) receives a handle
   * for event_query; NULL entries: the wrappers copy synchronously and report no event. */
  hm_status (*copy_h2d_async)(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
  hm_status (*copy_d2h_async)(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
  /* *done = 1 once the event's copy has completed (then, and on an error, it is released);
   * done NULL: release it now without waiting (the copy runs on) */
  hm_status (*event_query)(hm_device *dev, void *event, int *done);
  /* Optional host mapping of a device range (hm_device_map): blocks until the work queued
   * before it finished; flags HM_MAP_READ | HM_MAP_WRITE. NULL entries: the wrappers return
   * the address itself on HM_DEVICE_HOST devices and refuse elsewhere. */
  hm_status (*map)(hm_device *dev, void *addr, size_t bytes, int flags, void **host);
  hm_status (*unmap)(hm_device *dev, void *addr, void *host);
  /* physical memory of the device: total and currently free (before the mem= cap) */
  hm_status (*mem_info)(hm_device *dev, size_t *total, size_t *free_bytes);
  void (*close)(hm_device *dev); /* releases impl; buffers must already be freed */

  /* kernels (shapes: see the hm_dev_* wrappers below) */
  hm_status (*encoder_forward)(hm_device *dev, void *out, const int32_t *inp, const void *wte,
                               const void *wpe, int B, int T, int C);
  hm_status (*encoder_backward)(hm_device *dev, void *dwte, void *dwpe, const void *dout,
                                const int32_t *inp, int B, int T, int C);
  hm_status (*layernorm_forward)(hm_device *dev, void *out, void *mean, void *rstd,
                                 const void *inp, const void *weight, const void *bias, int N,
                                 int C);
  hm_status (*layernorm_backward)(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                  const void *dout, const void *inp, const void *weight,
                                  const void *mean, const void *rstd, int N, int C);
  hm_status (*matmul_forward)(hm_device *dev, void *out, const void *inp, const void *weight,
                              const void *bias, int N, int C, int OC);
  hm_status (*matmul_backward)(hm_device *dev, void *dinp, void *dweight, void *dbias,
                               const void *dout, const void *inp, const void *weight, int N,
                               int C, int OC);
  size_t (*attention_saved_elems)(hm_device *dev, int B, int T, int C, int NH);
  hm_status (*attention_forward)(hm_device *dev, void *out, void *saved, const void *qkv, int B,
                                 int T, int C, int NH);
  hm_status (*attention_backward)(hm_device *dev, void *dqkv, const void *dout, const void *qkv,
                                  const void *saved, int B, int T, int C, int NH);
  hm_status (*gelu_forward)(hm_device *dev, void *out, const void *inp, size_t n);
  hm_status (*gelu_backward)(hm_device *dev, void *dinp, const void *inp, const void *dout,
                             size_t n);
  hm_status (*rmsnorm_forward)(hm_device *dev, void *out, void *rstd, const void *inp, const void *weight, int N,
                               int C);
  hm_status (*rmsnorm_backward)(hm_device *dev, void *dinp, void *dweight, const void *dout, const void *inp,
                                const void *weight, const void *rstd, int N, int C);
  /* sign +1: forward rotation, -1: its inverse (the gradient) */
  hm_status (*rope)(hm_device *dev, void *x, int B, int T, int H, int hd, int stride, int sign);
  hm_status (*swiglu_forward)(hm_device *dev, void *out, const void *inp, int N, int F);
  hm_status (*swiglu_backward)(hm_device *dev, void *dinp, const void *inp, const void *dout, int N, int F);
  hm_status (*repeat_kv_forward)(hm_device *dev, void *out, const void *inp, int N, int C, int NH, int KVH);
  hm_status (*repeat_kv_backward)(hm_device *dev, void *dinp, const void *dout, int N, int C, int NH, int KVH);
  hm_status (*residual_forward)(hm_device *dev, void *out, const void *inp1, const void *inp2,
                                size_t n);
  hm_status (*residual_backward)(hm_device *dev, void *dinp1, void *dinp2, const void *dout,
                                 size_t n);
  hm_status (*softmax_forward)(hm_device *dev, void *probs, const void *logits, int N, int V,
                               int Vp);
  hm_status (*crossentropy_forward_backward)(hm_device *dev, void *losses, void *dlogits,
                                             const void *logits, const int32_t *targets,
                                             double dloss, int N, int V, int Vp);
  /* vocabulary-parallel cross-entropy; optional (NULL: HM_ERR_UNSUPPORTED) */
  hm_status (*rowmax)(hm_device *dev, void *rowmax, const void *logits, int N, int V);
  hm_status (*crossentropy_shard_forward)(hm_device *dev, void *stats, const void *logits,
                                          const void *rowmax, const int32_t *targets, int lo, int N,
                                          int V);
  hm_status (*crossentropy_shard_backward)(hm_device *dev, void *dlogits, const void *logits,
                                           const void *rowmax, const void *sumexp,
                                           const int32_t *targets, int lo, double dloss, int N,
                                           int V);
  hm_status (*adamw_update)(hm_device *dev, void *params, const void *grads, void *m, void *v,
                            size_t n, double lr, double beta1, double beta2, double eps,
                            double weight_decay, double grad_scale, int t);
  hm_status (*sum)(hm_device *dev, double *out_host, const void *x, size_t n);
  hm_status (*sumsq)(hm_device *dev, double *out_host, const void *x, size_t n);
  hm_status (*scale)(hm_device *dev, void *x, double s, size_t n);
  /* bf16 mixed precision (hm_dev_*_bf16 in device.h; docs/device.md, "bf16 mixed precision"):
   * bf16 buffers hold uint16 bfloat16 values, the rest the device dtype (f32). Optional (NULL:
   * HM_ERR_UNSUPPORTED). */
  hm_status (*to_bf16)(hm_device *dev, void *dst, const void *src, size_t n);
  hm_status (*matmul_forward_bf16)(hm_device *dev, void *out, const void *inp, const void *weight,
                                   const void *bias, int N, int C, int OC);
  hm_status (*matmul_backward_bf16)(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                    const void *dout, const void *inp, const void *weight, int N,
                                    int C, int OC);
  hm_status (*attention_forward_bf16)(hm_device *dev, void *out, void *lse, const void *qkv, int B,
                                      int T, int C, int NH);
  hm_status (*attention_backward_bf16)(hm_device *dev, void *dqkv, const void *dout,
                                       const void *qkv, const void *lse, int B, int T, int C,
                                       int NH);
} hm_device_ops;

struct hm_device {
  const char *name;        /* backend name: "cpu", "ref", "opencl" */
  char spec[128];          /* the spec it was opened with, e.g. "cpu:threads=2,slow=2" */
  hm_device_kind kind;
  int host_unified;        /* device memory is host memory (hm_device_host_unified) */
  hm_dtype dtype;          /* HM_FLOAT32 or HM_FLOAT64 */
  size_t dtype_size;       /* bytes per element of dtype */
  int threads;             /* effective thread count */
  double slow;             /* >= 1: see hm_device_slow() */
  size_t mem_limit;        /* effective cap on allocated bytes */
  const hm_device_ops *ops;
  void *impl;              /* backend state */
  hm_device_stats stats;
  uint64_t slow_debt_ns;   /* sleep owed but not yet taken (short kernels are batched) */
};

struct hm_device_backend {
  const char *name;        /* "cpu" */
  const char *description; /* one line for listings */
  /* Fills dev->ops, dev->impl, kind, threads; options already parsed; reject what it can't do. */
  hm_status (*open)(hm_device *dev, const hm_device_options *opt);
};

#endif
