/* Gradient buckets of a stage: the one definition that the schedule's ALLREDUCE ops, the
 * simulator's gradient sync and the runtime's bucket table all use, so that the prediction and the
 * run reduce the same layers in the same order. */
#include "hetmix/plan.h"

int hm_grad_bucket_count(int layer_begin, int layer_end, int per) {
  if (per < 1) per = 1;
  const int n = layer_end - layer_begin;
  return n > 0 ? (n + per - 1) / per : 0;
}

/* Backprop completes the last layers' gradients first: bucket 0 ends at the stage's last layer. */
void hm_grad_bucket(int layer_begin, int layer_end, int per, int q, int *lo, int *hi) {
  if (per < 1) per = 1;
  const int h = layer_end - q * per;
  *hi = h;
  *lo = h - per > layer_begin ? h - per : layer_begin;
}
