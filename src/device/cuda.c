/* The `cuda` backend: devices, memory, copies and events (kernels: cuda_ops.c and
 * cuda_kernels.cu). Tensors live in GPU memory; their addresses are device pointers the host
 * never dereferences. Work is queued in order on one compute stream; asynchronous staging
 * copies run on a second (copy) stream that first waits for the compute stream's work, so
 * hmcomm's staging pipeline overlaps device<->host copies with transfers. Pinned host buffers
 * come from cudaMallocHost. The same source builds for HIP (gpu_compat.h).
 *
 * Spec: cuda:device=N (f32). HETMIX_CUDA_TF32=0 turns TensorFloat-32 GEMMs off (default on:
 * f32 GEMMs with 10-bit-mantissa products and f32 accumulation, as PyTorch's allow_tf32). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/cuda_backend.h"
#include "util/util.h"

hm_status hm_cu_fail(gpuError_t e, const char *what) {
  hm_status st = e == gpuErrorMemoryAllocation ? HM_ERR_NOMEM : HM_ERR_IO;
  return hm_error(st, "cuda: %s: %s (%d)", what, gpuGetErrorString(e), (int)e);
}

hm_status hm_cu_blas_fail(gpublasStatus_t e, const char *what) {
  return hm_error(HM_ERR_IO, "cuda: %s: BLAS status %d", what, (int)e);
}

/* ---- memory -------------------------------------------------------------------------------- */

hm_status hm_cu_alloc(hm_device *dev, void **ptr, size_t bytes) {
  (void)dev;
  *ptr = NULL;
  GPU_TRY(gpuMalloc(ptr, bytes ? bytes : 1), "cudaMalloc");
  return HM_OK;
}

void hm_cu_free(hm_device *dev, void *ptr) {
  (void)dev;
  if (ptr) gpuFree(ptr);
}

hm_status hm_cu_scratch(hm_cu_impl *impl, size_t bytes, void **out) {
  if (bytes > impl->scratch_bytes) {
    GPU_TRY(gpuStreamSynchronize(impl->stream), "waiting before growing the scratch buffer");
    if (impl->scratch) gpuFree(impl->scratch);
    impl->scratch = NULL;
    impl->scratch_bytes = 0;
    GPU_TRY(gpuMalloc(&impl->scratch, bytes), "kernel scratch buffer");
    impl->scratch_bytes = bytes;
  }
  *out = impl->scratch;
  return HM_OK;
}

hm_status hm_cu_alloc_host(hm_device *dev, void **ptr, size_t bytes) {
  (void)dev;
  *ptr = NULL;
  GPU_TRY(gpuMallocHost(ptr, bytes ? bytes : 1), "pinned host buffer (cudaMallocHost)");
  return HM_OK;
}

void hm_cu_free_host(hm_device *dev, void *ptr) {
  (void)dev;
  if (ptr) gpuFreeHost(ptr);
}

hm_status hm_cu_mem_info(hm_device *dev, size_t *total, size_t *free_bytes) {
  (void)dev;
  GPU_TRY(gpuMemGetInfo(free_bytes, total), "cudaMemGetInfo");
  return HM_OK;
}

/* ---- copies (blocking ones wait for the compute stream, so they see every queued kernel) ---- */

static hm_status hm_cu_copy(hm_device *dev, void *dst, const void *src, size_t bytes, gpuMemcpyKind kind,
                            const char *what) {
  hm_cu_impl *impl = dev->impl;
  if (!bytes) return HM_OK;
  GPU_TRY(gpuMemcpyAsync(dst, src, bytes, kind, impl->stream), what);
  if (kind != gpuMemcpyDeviceToDevice) GPU_TRY(gpuStreamSynchronize(impl->stream), what);
  return HM_OK;
}

hm_status hm_cu_h2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  return hm_cu_copy(dev, dst, src, bytes, gpuMemcpyHostToDevice, "copy_h2d");
}

hm_status hm_cu_d2h(hm_device *dev, void *dst, const void *src, size_t bytes) {
  return hm_cu_copy(dev, dst, src, bytes, gpuMemcpyDeviceToHost, "copy_d2h");
}

hm_status hm_cu_d2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  return hm_cu_copy(dev, dst, src, bytes, gpuMemcpyDeviceToDevice, "copy_d2d");
}

hm_status hm_cu_zero(hm_device *dev, void *ptr, size_t bytes) {
  hm_cu_impl *impl = dev->impl;
  if (bytes) GPU_TRY(gpuMemsetAsync(ptr, 0, bytes, impl->stream), "zero");
  return HM_OK;
}

hm_status hm_cu_from_f32(hm_device *dev, void *dst, const float *src, size_t n) {
  return hm_cu_h2d(dev, dst, src, n * sizeof(float));
}

hm_status hm_cu_to_f32(hm_device *dev, float *dst, const void *src, size_t n) {
  return hm_cu_d2h(dev, dst, src, n * sizeof(float));
}

hm_status hm_cu_synchronize(hm_device *dev) {
  hm_cu_impl *impl = dev->impl;
  GPU_TRY(gpuStreamSynchronize(impl->stream), "synchronize");
  GPU_TRY(gpuStreamSynchronize(impl->copy_stream), "synchronize (copy stream)");
  return HM_OK;
}

/* ---- asynchronous copies on the copy stream, one event each ---------------------------------- */

static hm_status hm_cu_async(hm_device *dev, void *dst, const void *src, size_t bytes, gpuMemcpyKind kind,
                             void **event) {
  hm_cu_impl *impl = dev->impl;
  gpuEvent_t ready = NULL, done = NULL;
  /* the copy stream waits for the kernels queued so far (producers of a d2h, readers of an h2d
   * destination), then copies; later kernels that read an h2d destination are ordered by the
   * caller, which waits for the event before using the data */
  GPU_TRY(gpuEventCreateWithFlags(&ready, gpuEventDisableTiming), "event");
  gpuError_t e = gpuEventRecord(ready, impl->stream);
  if (e == gpuSuccess) e = gpuStreamWaitEvent(impl->copy_stream, ready, 0);
  if (e == gpuSuccess) e = gpuMemcpyAsync(dst, src, bytes, kind, impl->copy_stream);
  if (e == gpuSuccess && event) e = gpuEventCreateWithFlags(&done, gpuEventDisableTiming);
  if (e == gpuSuccess && event) e = gpuEventRecord(done, impl->copy_stream);
  gpuEventDestroy(ready); /* released once the stream has passed it */
  if (e != gpuSuccess) {
    if (done) gpuEventDestroy(done);
    return hm_cu_fail(e, kind == gpuMemcpyHostToDevice ? "copy_h2d_async" : "copy_d2h_async");
  }
  if (event) *event = done;
  return HM_OK;
}

hm_status hm_cu_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event) {
  return hm_cu_async(dev, dst, src, bytes, gpuMemcpyHostToDevice, event);
}

hm_status hm_cu_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event) {
  return hm_cu_async(dev, dst, (void *)src, bytes, gpuMemcpyDeviceToHost, event);
}

hm_status hm_cu_event_query(hm_device *dev, void *event, int *done) {
  hm_cu_impl *impl = dev->impl;
  gpuEvent_t ev = event;
  if (!done) {
    gpuEventDestroy(ev);
    return HM_OK;
  }
  gpuError_t e = gpuEventQuery(ev);
  if (e == gpuErrorNotReady) {
    *done = 0;
    return HM_OK;
  }
  /* an h2d copy's destination is read by kernels on the compute stream: order them after it */
  if (e == gpuSuccess) e = gpuStreamWaitEvent(impl->stream, ev, 0);
  gpuEventDestroy(ev);
  if (e != gpuSuccess) return hm_cu_fail(e, "asynchronous copy");
  *done = 1;
  return HM_OK;
}

/* ---- open / close ---------------------------------------------------------------------------- */

void hm_cu_close(hm_device *dev) {
  hm_cu_impl *impl = dev->impl;
  if (!impl) return;
  if (impl->stream) gpuStreamSynchronize(impl->stream);
  if (impl->copy_stream) gpuStreamSynchronize(impl->copy_stream);
  if (impl->scratch) gpuFree(impl->scratch);
  if (impl->flag) gpuFree(impl->flag);
  if (impl->partial) gpuFree(impl->partial);
  if (impl->blas) gpublasDestroy(impl->blas);
  if (impl->copy_stream) gpuStreamDestroy(impl->copy_stream);
  if (impl->stream) gpuStreamDestroy(impl->stream);
  free(impl);
  dev->impl = NULL;
}

static hm_status hm_cu_setup(hm_cu_impl *impl, int index, int *sms) {
  int count = 0;
  gpuError_t e = gpuGetDeviceCount(&count);
  if (e != gpuSuccess || count == 0)
    return hm_error(HM_ERR_NOT_FOUND, "cuda: no %s device is usable here (%s)", GPU_RUNTIME_NAME,
                    e != gpuSuccess ? gpuGetErrorString(e) : "the driver reports 0 devices");
  if (index >= count)
    return hm_error(HM_ERR_NOT_FOUND, "cuda: device=%d, but there are %d device(s)", index, count);
  gpuDeviceProp prop;
  GPU_TRY(gpuSetDevice(index), "cudaSetDevice");
  GPU_TRY(gpuGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  snprintf(impl->name, sizeof impl->name, "%s", prop.name);
  impl->index = index;
  *sms = prop.multiProcessorCount;
  GPU_TRY(gpuStreamCreateWithFlags(&impl->stream, gpuStreamNonBlocking), "compute stream");
  GPU_TRY(gpuStreamCreateWithFlags(&impl->copy_stream, gpuStreamNonBlocking), "copy stream");
  GPU_TRY(gpuMalloc((void **)&impl->flag, sizeof(int)), "flag");
  GPU_TRY(gpuMalloc((void **)&impl->partial, HM_CUK_SUM_BLOCKS * sizeof(double)), "reduction partials");
  BLAS_TRY(gpublasCreate(&impl->blas), "creating the BLAS handle");
  BLAS_TRY(gpublasSetStream(impl->blas, impl->stream), "setting the BLAS stream");
  long tf32 = 1;
  HM_TRY(hm_env_long("HETMIX_CUDA_TF32", 1, 0, 1, &tf32));
  BLAS_TRY(gpublasAllowTF32(impl->blas, tf32 != 0), "setting the GEMM math mode");
  return HM_OK;
}

static hm_status hm_cu_open(hm_device *dev, const hm_device_options *opt) {
  if (opt->dtype != HM_FLOAT32) return hm_error(HM_ERR_UNSUPPORTED, "cuda supports dtype=f32 only");
  if (opt->platform != 0)
    return hm_error(HM_ERR_INVALID_ARG, "cuda has no platforms: platform=%d (opencl only)", opt->platform);
  hm_cu_impl *impl = hm_calloc(1, sizeof *impl, "cuda backend state");
  if (!impl) return HM_ERR_NOMEM;
  dev->impl = impl;
  int sms = 0;
  hm_status st = hm_cu_setup(impl, opt->index, &sms);
  if (st != HM_OK) {
    hm_cu_close(dev);
    return st;
  }
  dev->kind = HM_DEVICE_CUDA;
  dev->threads = sms;
  dev->ops = &hm_cuda_ops;
  return HM_OK;
}

const hm_device_backend hm_device_backend_cuda = {
    .name = "cuda",
    .description = "NVIDIA GPUs: cuBLAS GEMMs (TF32) + own deterministic kernels (f32; HIP-portable)",
    .open = hm_cu_open,
};
