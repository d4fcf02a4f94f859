/* Element types shared by every hetmix module (hmcomm collectives, device tensors, wires):
 * the enum and its one size function. A base header with no other dependency, so that
 * device.h and comm.h can both use it without including each other. */
#ifndef HETMIX_DTYPE_H
#define HETMIX_DTYPE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum hm_dtype {
  HM_INT8 = 0,
  HM_UINT8,
  HM_INT32,
  HM_UINT32,
  HM_INT64,
  HM_UINT64,
  HM_FLOAT16,
  HM_BFLOAT16,
  HM_FLOAT32,
  HM_FLOAT64,
  HM_DTYPE_COUNT
} hm_dtype;

/* Bytes per element: 1, 2, 4 or 8; 0 for a value outside the enum. */
size_t hm_dtype_size(hm_dtype dt);

#ifdef __cplusplus
}
#endif
#endif
