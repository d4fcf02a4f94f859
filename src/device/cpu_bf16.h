/* The cpu backend's bf16 mixed-precision kernels (cpu_bf16.c), entries of its function table.
 * Not a public header. */
#ifndef HETMIX_DEVICE_CPU_BF16_H
#define HETMIX_DEVICE_CPU_BF16_H

#include "device/device_internal.h"

typedef struct hm_cpu_bf16 hm_cpu_bf16; /* oneDNN engine, primitives and scratch (lazily made) */
/* cpu.c: the device's slot for that state (NULL until first use) */
hm_cpu_bf16 **hm_cpu_bf16_slot(hm_device *dev);
void hm_cpu_bf16_free(hm_cpu_bf16 *b);

hm_status hm_cpu_to_bf16(hm_device *dev, void *dst, const void *src, size_t n);
hm_status hm_cpu_matmul_forward_bf16(hm_device *dev, void *out, const void *inp, const void *weight,
                                     const void *bias, int N, int C, int OC);
hm_status hm_cpu_matmul_backward_bf16(hm_device *dev, void *dinp, void *dweight, void *dbias, const void *dout,
                                      const void *inp, const void *weight, int N, int C, int OC);
hm_status hm_cpu_attention_forward_bf16(hm_device *dev, void *out, void *lse, const void *qkv, int B, int T, int C,
                                        int NH);
hm_status hm_cpu_attention_backward_bf16(hm_device *dev, void *dqkv, const void *dout, const void *qkv,
                                         const void *lse, int B, int T, int C, int NH);

#endif
