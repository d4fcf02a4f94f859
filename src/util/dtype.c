/* hm_dtype_size (include/hetmix/dtype.h). */
#include "hetmix/dtype.h"

size_t hm_dtype_size(hm_dtype dt) {
  static const size_t sizes[HM_DTYPE_COUNT] = {1, 1, 4, 4, 8, 8, 2, 2, 4, 8};
  return ((int)dt >= 0 && dt < HM_DTYPE_COUNT) ? sizes[dt] : 0;
}
