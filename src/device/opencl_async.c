/* The opencl backend's asynchronous copies: non-blocking reads and writes on the device's
 * in-order queue, each with an event the caller polls (hmcomm's staging pipeline overlaps
 * them with transfers). The host memory must stay valid and untouched until the event
 * completes; pinned buffers (alloc_host) make the copies DMA-able on a GPU. */
#include "device/opencl_internal.h"
#include "util/util.h"

static hm_status cl_async(hm_device *dev, int write, void *dst, const void *src, size_t bytes,
                          void **event) {
  hm_cl_impl *impl = dev->impl;
  cl_mem m;
  size_t off;
  const void *daddr = write ? dst : src;
  HM_TRY(hm_cl_resolve(impl, daddr, bytes, write ? "copy_h2d_async destination" : "copy_d2h_async source",
                       &m, &off));
  cl_event ev = NULL;
  cl_int e = write ? clEnqueueWriteBuffer(impl->queue, m, CL_FALSE, off, bytes, src, 0, NULL, event ? &ev : NULL)
                   : clEnqueueReadBuffer(impl->queue, m, CL_FALSE, off, bytes, dst, 0, NULL, event ? &ev : NULL);
  if (e != CL_SUCCESS) return hm_cl_fail(e, write ? "copy_h2d_async" : "copy_d2h_async");
  if (event) { /* start it (and any event-less copies before it) now, not at the next blocking call */
    clFlush(impl->queue);
    *event = ev;
  }
  return HM_OK;
}

hm_status hm_cl_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event) {
  return cl_async(dev, 1, dst, src, bytes, event);
}

hm_status hm_cl_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes, void **event) {
  return cl_async(dev, 0, dst, (void *)src, bytes, event);
}

hm_status hm_cl_event_query(hm_device *dev, void *event, int *done) {
  (void)dev;
  cl_event ev = event;
  if (!done) return clReleaseEvent(ev) == CL_SUCCESS ? HM_OK : hm_error(HM_ERR_INTERNAL, "opencl: releasing an event");
  cl_int status = CL_QUEUED;
  cl_int e = clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL);
  if (e != CL_SUCCESS || status < 0) {
    clReleaseEvent(ev);
    return hm_cl_fail(e != CL_SUCCESS ? e : status, "asynchronous copy");
  }
  *done = status == CL_COMPLETE;
  if (*done) clReleaseEvent(ev);
  return HM_OK;
}
