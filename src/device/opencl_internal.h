/* Internals of the opencl backend (opencl.c: devices and memory; opencl_program.c: building
 * and caching the kernels; opencl_ops.c: the kernel entries). Not a public header.
 *
 * Device addresses are not pointers into any memory the host can read: each allocation is one
 * cl_mem plus a range of host address space reserved with PROT_NONE, whose start is the
 * device address handed out. Address arithmetic inside an allocation works as for pointers;
 * any host dereference faults at once. hm_cl_resolve() maps an address back to (cl_mem, byte
 * offset) by binary search over the allocations sorted by address. */
#ifndef HETMIX_OPENCL_INTERNAL_H
#define HETMIX_OPENCL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <CL/cl_ext.h> /* CL_PLATFORM_NOT_FOUND_KHR */

#include "device/device_internal.h"

typedef enum hm_cl_kernel_id {
  HM_CLK_ENCODER_FORWARD = 0,
  HM_CLK_ENCODER_BACKWARD_WTE,
  HM_CLK_ENCODER_BACKWARD_WPE,
  HM_CLK_LAYERNORM_FORWARD,
  HM_CLK_LAYERNORM_BACKWARD_DINP,
  HM_CLK_LAYERNORM_BACKWARD_DWB,
  HM_CLK_BIAS_FILL,
  HM_CLK_BIAS_BACKWARD,
  HM_CLK_ATTENTION_PROBS,
  HM_CLK_ATTENTION_OUT,
  HM_CLK_ATTENTION_DPRE,
  HM_CLK_ATTENTION_DQ,
  HM_CLK_ATTENTION_DKV,
  HM_CLK_GELU_FORWARD,
  HM_CLK_GELU_BACKWARD,
  HM_CLK_RESIDUAL_FORWARD,
  HM_CLK_ACCUMULATE,
  HM_CLK_SOFTMAX_FORWARD,
  HM_CLK_CROSSENTROPY,
  HM_CLK_ADAMW,
  HM_CLK_PARTIAL_SUMS,
  HM_CLK_SCALE,
  HM_CLK_RMSNORM_FORWARD,
  HM_CLK_RMSNORM_BACKWARD_DINP,
  HM_CLK_RMSNORM_BACKWARD_DW,
  HM_CLK_ROPE,
  HM_CLK_SWIGLU_FORWARD,
  HM_CLK_SWIGLU_BACKWARD,
  HM_CLK_REPEAT_KV_FORWARD,
  HM_CLK_REPEAT_KV_BACKWARD,
  HM_CLK_COUNT
} hm_cl_kernel_id;

typedef struct hm_cl_alloc {
  uintptr_t base; /* the device address: start of a PROT_NONE reservation */
  size_t bytes;   /* requested size */
  size_t reserved; /* bytes reserved (whole pages) */
  cl_mem mem;
} hm_cl_alloc;

typedef struct hm_cl_pinned {
  void *host;
  cl_mem mem;
} hm_cl_pinned;

typedef struct hm_cl_impl {
  cl_platform_id platform;
  cl_device_id device;
  cl_context ctx;
  cl_command_queue queue;
  cl_program program;
  cl_kernel kernels[HM_CLK_COUNT];
  int program_cached; /* 1: the program came from the binary cache, 0: built from source */
  hm_cl_alloc *allocs; /* sorted by base */
  size_t nallocs, cap_allocs;
  hm_cl_pinned *pinned;
  size_t npinned, cap_pinned;
  cl_mem scratch;      /* attention's score gradients, partial sums; grown on demand */
  size_t scratch_bytes;
  cl_mem flag;         /* one int: cross-entropy's bad-target report */
  size_t global_mem, max_alloc, allocated;
  int host_unified;    /* CL_DEVICE_HOST_UNIFIED_MEMORY */
  char device_name[256], driver_version[128], platform_version[256];
} hm_cl_impl;

extern const hm_device_ops hm_opencl_ops; /* opencl_ops.c */

/* memory entries of the table (opencl.c) */
hm_status hm_cl_alloc_fn(hm_device *dev, void **ptr, size_t bytes);
void hm_cl_free_fn(hm_device *dev, void *ptr);
hm_status hm_cl_alloc_host(hm_device *dev, void **ptr, size_t bytes);
void hm_cl_free_host(hm_device *dev, void *ptr);
hm_status hm_cl_h2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cl_d2h(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cl_d2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_cl_zero(hm_device *dev, void *ptr, size_t bytes);
hm_status hm_cl_from_f32(hm_device *dev, void *dst, const float *src, size_t n);
hm_status hm_cl_to_f32(hm_device *dev, float *dst, const void *src, size_t n);
hm_status hm_cl_synchronize(hm_device *dev);
/* asynchronous copies and their events (opencl_async.c) */
hm_status hm_cl_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
hm_status hm_cl_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event);
hm_status hm_cl_event_query(hm_device *dev, void *event, int *done);
/* host mapping of a device range (opencl_map.c) */
hm_status hm_cl_map(hm_device *dev, void *addr, size_t bytes, int flags, void **host);
hm_status hm_cl_unmap(hm_device *dev, void *addr, void *host);
hm_status hm_cl_mem_info(hm_device *dev, size_t *total, size_t *free_bytes);
void hm_cl_close(hm_device *dev);

/* (cl_mem, byte offset) of the device address range [addr, addr + bytes), or an error naming
 * what when the range is not inside one allocation of this device. */
hm_status hm_cl_resolve(hm_cl_impl *impl, const void *addr, size_t bytes, const char *what,
                        cl_mem *mem, size_t *offset);
/* The backend's scratch buffer of at least bytes (contents undefined). */
hm_status hm_cl_scratch(hm_cl_impl *impl, size_t bytes, cl_mem *out);
/* Message for an OpenCL error code ("CL_OUT_OF_RESOURCES (-5)"). */
const char *hm_cl_errstr(cl_int err);
hm_status hm_cl_fail(cl_int err, const char *what);

/* Builds impl->program and impl->kernels for impl->device: from the binary cache when a valid
 * entry exists, else from source (then the cache is written, best effort). */
hm_status hm_cl_program_load(hm_cl_impl *impl);
/* The cache folder: $XDG_CACHE_HOME/hetmix/opencl or ~/.cache/hetmix/opencl. */
hm_status hm_cl_cache_dir(char *buf, size_t cap);
/* 1 when the device's program was loaded from the binary cache (tests). */
int hm_opencl_program_was_cached(const hm_device *dev);

#endif
