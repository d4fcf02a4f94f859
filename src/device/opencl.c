/* The `opencl` backend: devices, memory and copies. Tensors live in OpenCL buffers; the device
 * addresses handed to callers are opaque (see opencl_internal.h), and every host<->device move
 * is a copy through the command queue. Kernels: opencl_ops.c; program cache: opencl_program.c.
 *
 * Spec: opencl:platform=P,device=D,threads=N. threads=N caps the worker threads of pocl's CPU
 * device (POCL_MAX_PTHREAD_COUNT, read by pocl 3.1's pthread driver when the platform is first
 * initialised), so two local devices need not fight for the same cores; it is process-wide and
 * fixed by the first opencl device the process opens, and other drivers ignore it. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "device/opencl_internal.h"
#include "util/util.h"

/* ---- errors ------------------------------------------------------------------------------ */

const char *hm_cl_errstr(cl_int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE) E(CL_COMPILER_NOT_AVAILABLE)
    E(CL_MEM_OBJECT_ALLOCATION_FAILURE) E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY)
    E(CL_MEM_COPY_OVERLAP) E(CL_BUILD_PROGRAM_FAILURE) E(CL_INVALID_VALUE)
    E(CL_INVALID_DEVICE) E(CL_INVALID_BINARY) E(CL_INVALID_BUFFER_SIZE)
    E(CL_INVALID_KERNEL_ARGS) E(CL_INVALID_WORK_GROUP_SIZE) E(CL_INVALID_ARG_SIZE)
    E(CL_INVALID_ARG_VALUE) E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_PROGRAM_EXECUTABLE)
    E(CL_INVALID_KERNEL_NAME) E(CL_INVALID_GLOBAL_WORK_SIZE) E(CL_PLATFORM_NOT_FOUND_KHR)
    E(CL_INVALID_PLATFORM) E(CL_INVALID_OPERATION)
#undef E
    default: return "OpenCL error";
  }
}

hm_status hm_cl_fail(cl_int err, const char *what) {
  hm_status st = err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_RESOURCES ||
                         err == CL_OUT_OF_HOST_MEMORY
                     ? HM_ERR_NOMEM
                     : HM_ERR_IO;
  return hm_error(st, "opencl: %s: %s (%d)", what, hm_cl_errstr(err), (int)err);
}

#define CL_TRY(call, what)                          \
  do {                                              \
    cl_int hm_e_ = (call);                          \
    if (hm_e_ != CL_SUCCESS) return hm_cl_fail(hm_e_, what); \
  } while (0)

/* ---- address table ------------------------------------------------------------------------ */

/* Index of the last allocation whose base is <= a (or (size_t)-1). */
static size_t hm_cl_find(const hm_cl_impl *impl, uintptr_t a) {
  size_t lo = 0, hi = impl->nallocs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (impl->allocs[mid].base <= a) lo = mid + 1;
    else hi = mid;
  }
  return lo ? lo - 1 : (size_t)-1;
}

hm_status hm_cl_resolve(hm_cl_impl *impl, const void *addr, size_t bytes, const char *what,
                        cl_mem *mem, size_t *offset) {
  uintptr_t a = (uintptr_t)addr;
  size_t i = hm_cl_find(impl, a);
  if (i == (size_t)-1 || a - impl->allocs[i].base >= impl->allocs[i].bytes + (bytes == 0) ||
      bytes > impl->allocs[i].bytes - (a - impl->allocs[i].base))
    return hm_error(HM_ERR_INVALID_ARG,
                    "opencl: %s: %zu bytes at device address %p are not inside one buffer of "
                    "this device", what, bytes, addr);
  *mem = impl->allocs[i].mem;
  *offset = a - impl->allocs[i].base;
  return HM_OK;
}

hm_status hm_cl_alloc_fn(hm_device *dev, void **ptr, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  size_t want = bytes ? bytes : 1;
  if (want > impl->max_alloc)
    return hm_error(HM_ERR_NO_FIT, "opencl: one buffer of %zu bytes exceeds the device's largest "
                    "allocation (%zu bytes, CL_DEVICE_MAX_MEM_ALLOC_SIZE)", want, impl->max_alloc);
  if (impl->nallocs == impl->cap_allocs) {
    size_t cap = impl->cap_allocs ? 2 * impl->cap_allocs : 64;
    hm_cl_alloc *a = realloc(impl->allocs, cap * sizeof *a);
    if (!a) return hm_error(HM_ERR_NOMEM, "opencl: allocation table");
    impl->allocs = a;
    impl->cap_allocs = cap;
  }
  long page = sysconf(_SC_PAGESIZE);
  size_t reserved = (want + (size_t)page - 1) / (size_t)page * (size_t)page;
  void *base = mmap(NULL, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED)
    return hm_error(HM_ERR_NOMEM, "opencl: reserving %zu bytes of address space: %s", reserved,
                    strerror(errno));
  cl_int err = CL_SUCCESS;
  cl_mem mem = clCreateBuffer(impl->ctx, CL_MEM_READ_WRITE, want, NULL, &err);
  if (err != CL_SUCCESS) {
    munmap(base, reserved);
    return hm_cl_fail(err, "clCreateBuffer");
  }
  uintptr_t b = (uintptr_t)base;
  size_t at = hm_cl_find(impl, b) + 1; /* insert after the last base below it */
  memmove(&impl->allocs[at + 1], &impl->allocs[at], (impl->nallocs - at) * sizeof *impl->allocs);
  impl->allocs[at] = (hm_cl_alloc){b, want, reserved, mem};
  impl->nallocs++;
  impl->allocated += want;
  *ptr = base;
  return HM_OK;
}

void hm_cl_free_fn(hm_device *dev, void *ptr) {
  hm_cl_impl *impl = dev->impl;
  size_t i = hm_cl_find(impl, (uintptr_t)ptr);
  if (i == (size_t)-1 || impl->allocs[i].base != (uintptr_t)ptr) return;
  hm_cl_alloc a = impl->allocs[i];
  clReleaseMemObject(a.mem);
  munmap((void *)a.base, a.reserved);
  impl->allocated -= a.bytes;
  memmove(&impl->allocs[i], &impl->allocs[i + 1], (impl->nallocs - i - 1) * sizeof *impl->allocs);
  impl->nallocs--;
}

hm_status hm_cl_scratch(hm_cl_impl *impl, size_t bytes, cl_mem *out) {
  if (bytes > impl->scratch_bytes) {
    if (impl->scratch) clReleaseMemObject(impl->scratch);
    impl->scratch = NULL;
    impl->scratch_bytes = 0;
    cl_int err = CL_SUCCESS;
    impl->scratch = clCreateBuffer(impl->ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS) return hm_cl_fail(err, "kernel scratch buffer");
    impl->scratch_bytes = bytes;
  }
  *out = impl->scratch;
  return HM_OK;
}

/* ---- pinned host staging ------------------------------------------------------------------ */

hm_status hm_cl_alloc_host(hm_device *dev, void **ptr, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  if (impl->npinned == impl->cap_pinned) {
    size_t cap = impl->cap_pinned ? 2 * impl->cap_pinned : 16;
    hm_cl_pinned *p = realloc(impl->pinned, cap * sizeof *p);
    if (!p) return hm_error(HM_ERR_NOMEM, "opencl: pinned buffer table");
    impl->pinned = p;
    impl->cap_pinned = cap;
  }
  cl_int err = CL_SUCCESS;
  cl_mem mem = clCreateBuffer(impl->ctx, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, bytes, NULL, &err);
  if (err != CL_SUCCESS) return hm_cl_fail(err, "pinned host buffer");
  void *host = clEnqueueMapBuffer(impl->queue, mem, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, bytes,
                                  0, NULL, NULL, &err);
  if (err != CL_SUCCESS) {
    clReleaseMemObject(mem);
    return hm_cl_fail(err, "mapping a pinned host buffer");
  }
  impl->pinned[impl->npinned++] = (hm_cl_pinned){host, mem};
  *ptr = host;
  return HM_OK;
}

void hm_cl_free_host(hm_device *dev, void *ptr) {
  hm_cl_impl *impl = dev->impl;
  for (size_t i = 0; i < impl->npinned; i++)
    if (impl->pinned[i].host == ptr) {
      clEnqueueUnmapMemObject(impl->queue, impl->pinned[i].mem, ptr, 0, NULL, NULL);
      clFinish(impl->queue);
      clReleaseMemObject(impl->pinned[i].mem);
      impl->pinned[i] = impl->pinned[--impl->npinned];
      return;
    }
}

/* ---- copies ------------------------------------------------------------------------------- */

hm_status hm_cl_h2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  HM_TRY(hm_cl_resolve(impl, dst, bytes, "copy_h2d destination", &m, &off));
  CL_TRY(clEnqueueWriteBuffer(impl->queue, m, CL_TRUE, off, bytes, src, 0, NULL, NULL), "copy_h2d");
  return HM_OK;
}

hm_status hm_cl_d2h(hm_device *dev, void *dst, const void *src, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  HM_TRY(hm_cl_resolve(impl, src, bytes, "copy_d2h source", &m, &off));
  CL_TRY(clEnqueueReadBuffer(impl->queue, m, CL_TRUE, off, bytes, dst, 0, NULL, NULL), "copy_d2h");
  return HM_OK;
}

hm_status hm_cl_d2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  cl_mem md, ms;
  size_t od, os;
  HM_TRY(hm_cl_resolve(impl, dst, bytes, "copy_d2d destination", &md, &od));
  HM_TRY(hm_cl_resolve(impl, src, bytes, "copy_d2d source", &ms, &os));
  if (md == ms && od < os + bytes && os < od + bytes) { /* overlap: memmove semantics via host */
    void *tmp = hm_malloc(bytes, "opencl overlapping copy");
    if (!tmp) return HM_ERR_NOMEM;
    cl_int e = clEnqueueReadBuffer(impl->queue, ms, CL_TRUE, os, bytes, tmp, 0, NULL, NULL);
    if (e == CL_SUCCESS) e = clEnqueueWriteBuffer(impl->queue, md, CL_TRUE, od, bytes, tmp, 0, NULL, NULL);
    free(tmp);
    return e == CL_SUCCESS ? HM_OK : hm_cl_fail(e, "copy_d2d (overlapping)");
  }
  CL_TRY(clEnqueueCopyBuffer(impl->queue, ms, md, os, od, bytes, 0, NULL, NULL), "copy_d2d");
  return HM_OK;
}

hm_status hm_cl_zero(hm_device *dev, void *ptr, size_t bytes) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  const cl_uchar zero = 0;
  HM_TRY(hm_cl_resolve(impl, ptr, bytes, "zero", &m, &off));
  CL_TRY(clEnqueueFillBuffer(impl->queue, m, &zero, 1, off, bytes, 0, NULL, NULL), "zero");
  return HM_OK;
}

/* f32 is the only dtype: the converting copies are plain copies */
hm_status hm_cl_from_f32(hm_device *dev, void *dst, const float *src, size_t n) {
  return hm_cl_h2d(dev, dst, src, n * sizeof(float));
}
hm_status hm_cl_to_f32(hm_device *dev, float *dst, const void *src, size_t n) {
  return hm_cl_d2h(dev, dst, src, n * sizeof(float));
}

hm_status hm_cl_synchronize(hm_device *dev) {
  hm_cl_impl *impl = dev->impl;
  CL_TRY(clFinish(impl->queue), "synchronize");
  return HM_OK;
}

/* OpenCL reports no free memory: free = global memory less what this device allocated. */
hm_status hm_cl_mem_info(hm_device *dev, size_t *total, size_t *free_bytes) {
  hm_cl_impl *impl = dev->impl;
  *total = impl->global_mem;
  *free_bytes = impl->global_mem > impl->allocated ? impl->global_mem - impl->allocated : 0;
  return HM_OK;
}

/* ---- open / close ------------------------------------------------------------------------- */

void hm_cl_close(hm_device *dev) {
  hm_cl_impl *impl = dev->impl;
  if (!impl) return;
  while (impl->npinned) hm_cl_free_host(dev, impl->pinned[0].host);
  while (impl->nallocs) hm_cl_free_fn(dev, (void *)impl->allocs[0].base);
  for (int i = 0; i < HM_CLK_COUNT; i++)
    if (impl->kernels[i]) clReleaseKernel(impl->kernels[i]);
  if (impl->program) clReleaseProgram(impl->program);
  if (impl->scratch) clReleaseMemObject(impl->scratch);
  if (impl->flag) clReleaseMemObject(impl->flag);
  if (impl->queue) clReleaseCommandQueue(impl->queue);
  if (impl->ctx) clReleaseContext(impl->ctx);
  free(impl->allocs);
  free(impl->pinned);
  free(impl);
  dev->impl = NULL;
}

static pthread_mutex_t hm_cl_env_lock = PTHREAD_MUTEX_INITIALIZER;
static int hm_cl_env_done, hm_cl_env_threads;

/* POCL_MAX_PTHREAD_COUNT must be in the environment before the first clGetPlatformIDs. */
static hm_status hm_cl_set_threads(int threads) {
  pthread_mutex_lock(&hm_cl_env_lock);
  hm_status st = HM_OK;
  if (!hm_cl_env_done) {
    if (threads > 0) {
      char v[16];
      snprintf(v, sizeof v, "%d", threads);
      setenv("POCL_MAX_PTHREAD_COUNT", v, 1);
    }
    hm_cl_env_done = 1;
    hm_cl_env_threads = threads;
  } else if (threads != hm_cl_env_threads) {
    st = hm_error(HM_ERR_UNSUPPORTED,
                  "opencl: threads=%d, but this process already opened OpenCL with threads=%d "
                  "(the driver's thread count is fixed when OpenCL is first used; run the "
                  "devices in separate processes)", threads, hm_cl_env_threads);
  }
  pthread_mutex_unlock(&hm_cl_env_lock);
  return st;
}

static hm_status hm_cl_pick(hm_cl_impl *impl, int platform, int device) {
  cl_uint np = 0, nd = 0;
  cl_int err = clGetPlatformIDs(0, NULL, &np);
  if (err == CL_PLATFORM_NOT_FOUND_KHR || np == 0)
    return hm_error(HM_ERR_NOT_FOUND, "opencl: no OpenCL platform is installed (Debian: "
                    "pocl-opencl-icd for the CPU, or a GPU vendor's ICD)");
  CL_TRY(err, "clGetPlatformIDs");
  if ((cl_uint)platform >= np)
    return hm_error(HM_ERR_NOT_FOUND, "opencl: platform=%d, but there are %u platform(s)", platform, np);
  cl_platform_id ps[16];
  CL_TRY(clGetPlatformIDs(np < 16 ? np : 16, ps, NULL), "clGetPlatformIDs");
  impl->platform = ps[platform];
  err = clGetDeviceIDs(impl->platform, CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
  if (err == CL_DEVICE_NOT_FOUND || nd == 0)
    return hm_error(HM_ERR_NOT_FOUND, "opencl: platform %d has no devices", platform);
  CL_TRY(err, "clGetDeviceIDs");
  if ((cl_uint)device >= nd)
    return hm_error(HM_ERR_NOT_FOUND, "opencl: device=%d, but platform %d has %u device(s)", device,
                    platform, nd);
  cl_device_id ds[64];
  CL_TRY(clGetDeviceIDs(impl->platform, CL_DEVICE_TYPE_ALL, nd < 64 ? nd : 64, ds, NULL), "clGetDeviceIDs");
  impl->device = ds[device];
  return HM_OK;
}

static hm_status hm_cl_describe(hm_cl_impl *impl, int *compute_units) {
  cl_ulong gm = 0, ma = 0;
  cl_uint cu = 0;
  CL_TRY(clGetDeviceInfo(impl->device, CL_DEVICE_NAME, sizeof impl->device_name, impl->device_name, NULL),
         "device name");
  CL_TRY(clGetDeviceInfo(impl->device, CL_DRIVER_VERSION, sizeof impl->driver_version,
                         impl->driver_version, NULL), "driver version");
  CL_TRY(clGetPlatformInfo(impl->platform, CL_PLATFORM_VERSION, sizeof impl->platform_version,
                           impl->platform_version, NULL), "platform version");
  CL_TRY(clGetDeviceInfo(impl->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gm, &gm, NULL), "memory size");
  CL_TRY(clGetDeviceInfo(impl->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof ma, &ma, NULL), "allocation size");
  CL_TRY(clGetDeviceInfo(impl->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL), "compute units");
  cl_bool unified = CL_FALSE; /* deprecated in OpenCL 2.0, still answered; absent: not unified */
  if (clGetDeviceInfo(impl->device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL) != CL_SUCCESS)
    unified = CL_FALSE;
  impl->host_unified = unified == CL_TRUE;
  impl->global_mem = (size_t)gm;
  impl->max_alloc = (size_t)ma;
  *compute_units = (int)cu;
  return HM_OK;
}

static hm_status hm_cl_setup(hm_cl_impl *impl, const hm_device_options *opt, int *cu) {
  HM_TRY(hm_cl_pick(impl, opt->platform, opt->index));
  HM_TRY(hm_cl_describe(impl, cu));
  cl_int err = CL_SUCCESS;
  impl->ctx = clCreateContext(NULL, 1, &impl->device, NULL, NULL, &err);
  CL_TRY(err, "clCreateContext");
  impl->queue = clCreateCommandQueue(impl->ctx, impl->device, 0, &err);
  CL_TRY(err, "clCreateCommandQueue");
  impl->flag = clCreateBuffer(impl->ctx, CL_MEM_READ_WRITE, sizeof(cl_int), NULL, &err);
  CL_TRY(err, "flag buffer");
  return hm_cl_program_load(impl);
}

static hm_status hm_cl_open(hm_device *dev, const hm_device_options *opt) {
  if (opt->dtype != HM_FLOAT32)
    return hm_error(HM_ERR_UNSUPPORTED, "opencl supports dtype=f32 only");
  HM_TRY(hm_cl_set_threads(opt->threads));
  hm_cl_impl *impl = hm_calloc(1, sizeof *impl, "opencl backend state");
  if (!impl) return HM_ERR_NOMEM;
  dev->impl = impl;
  int cu = 0;
  hm_status st = hm_cl_setup(impl, opt, &cu);
  if (st != HM_OK) {
    hm_cl_close(dev);
    return st;
  }
  dev->kind = HM_DEVICE_OPENCL;
  dev->host_unified = impl->host_unified;
  dev->threads = opt->threads > 0 && opt->threads < cu ? opt->threads : cu;
  dev->ops = &hm_opencl_ops;
  return HM_OK;
}

int hm_opencl_program_was_cached(const hm_device *dev) {
  return dev && dev->impl && dev->ops == &hm_opencl_ops ? ((const hm_cl_impl *)dev->impl)->program_cached : 0;
}

const hm_device_backend hm_device_backend_opencl = {
    .name = "opencl",
    .description = "OpenCL C kernels + CLBlast GEMMs (f32; any OpenCL 1.2 device, pocl on CPUs)",
    .open = hm_cl_open,
};
