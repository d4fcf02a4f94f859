/* Internals shared by the device registry and the host backends (cpu, ref): host memory,
 * copies and conversions that both implement the same way. Not a public header. */
#ifndef HETMIX_DEVICE_INTERNAL_H
#define HETMIX_DEVICE_INTERNAL_H

#include <math.h>

#include "device/device_impl.h"

extern const hm_device_backend hm_device_backend_cpu;
extern const hm_device_backend hm_device_backend_ref;
#ifdef HETMIX_HAVE_OPENCL
extern const hm_device_backend hm_device_backend_opencl;
#endif
#ifdef HETMIX_HAVE_CUDA
extern const hm_device_backend hm_device_backend_cuda;
#endif

/* Host-memory implementations of the memory entries of hm_device_ops (alloc/free serve as
 * alloc_host/free_host too: host backends stage in ordinary aligned memory). */
hm_status hm_host_alloc(hm_device *dev, void **ptr, size_t bytes);
void hm_host_free(hm_device *dev, void *ptr);
hm_status hm_host_copy(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_host_zero(hm_device *dev, void *ptr, size_t bytes);

hm_status hm_host_copy_from_f32(hm_device *dev, void *dst, const float *src, size_t n);
hm_status hm_host_copy_to_f32(hm_device *dev, float *dst, const void *src, size_t n);
hm_status hm_host_synchronize(hm_device *dev);
hm_status hm_host_mem_info(hm_device *dev, size_t *total, size_t *free_bytes);

/* Rotary embedding: the angle of pair i (< hd/2) at position t, t * 10000^(-2i/hd), in double so
 * that every host backend rotates by the same angle. */
static inline double hm_rope_angle(int t, int i, int hd) { return (double)t * pow(10000.0, -2.0 * i / hd); }

#endif
