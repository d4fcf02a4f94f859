/* The opencl backend's host mapping (hm_device_map): clEnqueueMapBuffer, blocking, on the
 * device's in-order queue, so the map completes only after every kernel and copy queued
 * before it (the producing work). On a host-unified device (pocl on the CPU, an integrated
 * GPU) the driver hands out the buffer's own memory: no bytes move. Unmap is queued; work
 * queued after it sees the host's writes. */
#include "device/opencl_internal.h"
#include "util/util.h"

hm_status hm_cl_map(hm_device *dev, void *addr, size_t bytes, int flags, void **host) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  HM_TRY(hm_cl_resolve(impl, addr, bytes ? bytes : 1, "map", &m, &off));
  cl_map_flags f = ((flags & HM_MAP_READ) ? CL_MAP_READ : 0) | ((flags & HM_MAP_WRITE) ? CL_MAP_READ | CL_MAP_WRITE : 0);
  cl_int err = CL_SUCCESS;
  void *p = clEnqueueMapBuffer(impl->queue, m, CL_TRUE, f, off, bytes ? bytes : 1, 0, NULL, NULL, &err);
  if (err != CL_SUCCESS) return hm_cl_fail(err, "clEnqueueMapBuffer");
  *host = p;
  return HM_OK;
}

hm_status hm_cl_unmap(hm_device *dev, void *addr, void *host) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  HM_TRY(hm_cl_resolve(impl, addr, 1, "unmap", &m, &off));
  cl_int err = clEnqueueUnmapMemObject(impl->queue, m, host, 0, NULL, NULL);
  if (err != CL_SUCCESS) return hm_cl_fail(err, "clEnqueueUnmapMemObject");
  clFlush(impl->queue);
  return HM_OK;
}
