/* The asynchronous copy wrappers of include/hetmix/device.h: argument checks, and the
 * synchronous fallback for backends whose table has no asynchronous copies (host backends,
 * whose copies are memcpy and complete at once). */
#include <sched.h>
#include <time.h>

#include "device/device_internal.h"
#include "util/util.h"

static hm_status copy_async(hm_device *dev, int h2d, void *dst, const void *src, size_t bytes,
                            hm_device_event **event) {
  const char *fn = h2d ? "hm_device_copy_h2d_async" : "hm_device_copy_d2h_async";
  if (event) *event = NULL;
  if (!dev) return hm_error(HM_ERR_INVALID_ARG, "%s: dev is NULL", fn);
  if (!bytes) return HM_OK;
  if (!dst || !src) return hm_error(HM_ERR_INVALID_ARG, "%s: %s is NULL", fn, dst ? "src" : "dst");
  hm_status (*fn_async)(hm_device *, void *, const void *, size_t, void **) =
      h2d ? dev->ops->copy_h2d_async : dev->ops->copy_d2h_async;
  if (!fn_async || !dev->ops->event_query)
    return h2d ? dev->ops->copy_h2d(dev, dst, src, bytes) : dev->ops->copy_d2h(dev, dst, src, bytes);
  return fn_async(dev, dst, src, bytes, (void **)event);
}

hm_status hm_device_copy_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes,
                                   hm_device_event **event) {
  return copy_async(dev, 1, dst, src, bytes, event);
}

hm_status hm_device_copy_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes,
                                   hm_device_event **event) {
  return copy_async(dev, 0, dst, src, bytes, event);
}

/* Polls: a short run of yields (a copy of a chunk takes tens of microseconds), then 50 us
 * sleeps, so the copy's own threads get the core on a small machine. */
hm_status hm_device_event_wait(hm_device *dev, hm_device_event *event, int timeout_ms) {
  if (!event) return HM_OK;
  if (!dev) return hm_error(HM_ERR_INVALID_ARG, "hm_device_event_wait: dev is NULL");
  uint64_t deadline = hm_deadline_after_ms((uint64_t)(timeout_ms > 0 ? timeout_ms : 1));
  for (int spins = 0;; spins++) {
    int done = 0;
    hm_status st = dev->ops->event_query(dev, event, &done);
    if (st != HM_OK) return hm_error_context(st, "device %s: ", dev->spec);
    if (done) return HM_OK;
    if (hm_now_ns() >= deadline) {
      dev->ops->event_query(dev, event, NULL); /* release the handle; the copy runs on */
      return hm_error(HM_ERR_TIMEOUT, "device %s: an asynchronous copy did not complete within %d ms",
                      dev->spec, timeout_ms);
    }
    if (spins < 64) {
      sched_yield();
    } else {
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
  }
}
