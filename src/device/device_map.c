/* Host mapping of device memory (include/hetmix/device.h: hm_device_map/unmap): argument
 * checks, and the host backends' trivial map (the address is the host pointer). A backend
 * whose memory is host memory (host_unified) gives the bytes themselves, so a caller such as
 * hmcomm reads and writes device buffers in place instead of staging copies. */
#include "device/device_internal.h"
#include "util/util.h"

int hm_device_host_unified(const hm_device *dev) {
  return dev && (dev->kind == HM_DEVICE_HOST || dev->host_unified);
}

hm_status hm_device_map(hm_device *dev, void *addr, size_t bytes, int flags, void **host) {
  if (host) *host = NULL;
  if (!dev) return hm_error(HM_ERR_INVALID_ARG, "hm_device_map: dev is NULL");
  if (!host) return hm_error(HM_ERR_INVALID_ARG, "hm_device_map: host is NULL");
  if (!addr) return hm_error(HM_ERR_INVALID_ARG, "hm_device_map: addr is NULL");
  if (!flags || (flags & ~(HM_MAP_READ | HM_MAP_WRITE)))
    return hm_error(HM_ERR_INVALID_ARG, "hm_device_map: flags %d (HM_MAP_READ and/or HM_MAP_WRITE)", flags);
  if (dev->ops->map) {
    hm_status st = dev->ops->map(dev, addr, bytes, flags, host);
    return st == HM_OK ? HM_OK : hm_error_context(st, "device %s: ", dev->spec);
  }
  if (dev->kind != HM_DEVICE_HOST)
    return hm_error(HM_ERR_UNSUPPORTED, "device %s: the backend cannot map device memory", dev->spec);
  *host = addr;
  return HM_OK;
}

hm_status hm_device_unmap(hm_device *dev, void *addr, void *host) {
  if (!dev) return hm_error(HM_ERR_INVALID_ARG, "hm_device_unmap: dev is NULL");
  if (!host || !addr) return hm_error(HM_ERR_INVALID_ARG, "hm_device_unmap: %s is NULL", host ? "addr" : "host");
  if (!dev->ops->unmap) return HM_OK; /* host backends: nothing was mapped */
  hm_status st = dev->ops->unmap(dev, addr, host);
  return st == HM_OK ? HM_OK : hm_error_context(st, "device %s: ", dev->spec);
}
