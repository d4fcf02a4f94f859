/* Memory, copies and conversions for backends whose "device memory" is host memory (cpu, ref).
 * Buffers are 64-byte aligned (one cache line, a full AVX-512 vector) and not zeroed. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/device_internal.h"
#include "util/util.h"

hm_status hm_host_alloc(hm_device *dev, void **ptr, size_t bytes) {
  (void)dev;
  *ptr = hm_aligned_alloc(64, bytes, "device buffer");
  return *ptr ? HM_OK : HM_ERR_NOMEM;
}

void hm_host_free(hm_device *dev, void *ptr) {
  (void)dev;
  free(ptr);
}

hm_status hm_host_copy(hm_device *dev, void *dst, const void *src, size_t bytes) {
  (void)dev;
  memmove(dst, src, bytes);
  return HM_OK;
}

hm_status hm_host_zero(hm_device *dev, void *ptr, size_t bytes) {
  (void)dev;
  memset(ptr, 0, bytes); /* all-zero bytes are 0.0 in IEEE f32 and f64 */
  return HM_OK;
}

hm_status hm_host_copy_from_f32(hm_device *dev, void *dst, const float *src, size_t n) {
  if (dev->dtype == HM_FLOAT32) {
    memmove(dst, src, n * sizeof(float));
  } else if (dev->dtype == HM_FLOAT64) {
    double *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = (double)src[i];
  } else {
    return hm_error(HM_ERR_UNSUPPORTED, "copy_from_f32: dtype %d", (int)dev->dtype);
  }
  return HM_OK;
}

hm_status hm_host_copy_to_f32(hm_device *dev, float *dst, const void *src, size_t n) {
  if (dev->dtype == HM_FLOAT32) {
    memmove(dst, src, n * sizeof(float));
  } else if (dev->dtype == HM_FLOAT64) {
    const double *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
  } else {
    return hm_error(HM_ERR_UNSUPPORTED, "copy_to_f32: dtype %d", (int)dev->dtype);
  }
  return HM_OK;
}

hm_status hm_host_synchronize(hm_device *dev) {
  (void)dev; /* host kernels complete before they return */
  return HM_OK;
}

/* total = physical memory; free = the kernel's MemAvailable estimate (what can be allocated
 * without swapping), falling back to free pages where /proc is missing. */
hm_status hm_host_mem_info(hm_device *dev, size_t *total, size_t *free_bytes) {
  (void)dev;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return hm_error(HM_ERR_IO, "cannot read the physical memory size");
  *total = (size_t)pages * (size_t)page;
  long avail = sysconf(_SC_AVPHYS_PAGES);
  *free_bytes = avail > 0 ? (size_t)avail * (size_t)page : *total;
  FILE *f = fopen("/proc/meminfo", "r");
  if (f) {
    char line[128];
    unsigned long long kb;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        *free_bytes = (size_t)kb * 1024;
        break;
      }
    fclose(f);
  }
  return HM_OK;
}
