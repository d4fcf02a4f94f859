/* Tensor parallelism in the pipeline runtime (pipeline_tp.c): the model's allreduce callback on a
 * stage's tensor-parallel communicator, the conversion of device buffers to the job's wire type,
 * and the data-parallel gradient sum between replicas whose stages are split differently. */
#ifndef HETMIX_PIPELINE_TP_H
#define HETMIX_PIPELINE_TP_H

#include <stdint.h>

#include "hetmix/comm.h"
#include "hetmix/device.h"
#include "hetmix/model.h"

/* The context of hm_pipe_tp_allreduce: the stage's tensor-parallel ranks of one replica. A host
 * device is reduced in place; any other stages through `host` (pinned, cap bytes). All ranks of
 * a stage have one device type, so the reduction runs in the device dtype. */
typedef struct hm_pipe_tp {
  hm_comm_t comm;
  hm_device *dev;
  void *host;
  size_t cap;
  uint64_t ns; /* time spent in allreduces (a step's share is read and reset by the caller) */
} hm_pipe_tp;

hm_status hm_pipe_tp_allreduce(void *ctx, void *buf, size_t n, hm_tp_op op);

/* Checks that the tensor-parallel workers of comm run on one host (their allreduce follows every
 * layer: it must not cross a NIC); HM_ERR_SPEC naming the hosts otherwise. Collective over comm. */
hm_status hm_pipe_tp_check_host(hm_comm_t comm, int replica, int stage);

/* Device buffer (device dtype) <-> host buffer of the wire type, n elements; conv: f32 scratch
 * of n elements when the device is f32 and the wire f64, else unused. */
hm_status hm_pipe_to_wire(hm_device *dev, hm_dtype wire, float *conv, void *dst, const void *src, size_t n);
hm_status hm_pipe_from_wire(hm_device *dev, hm_dtype wire, float *conv, void *dst, const void *src, size_t n);

/* Sums the stage's gradients over replicas whose tensor-parallel degrees differ: every rank
 * places its shards in a zeroed full-size buffer (replicated tensors: tp rank 0 only), the
 * buffers are summed over `dp` (all ranks of this stage in every replica), and each rank takes
 * its shards back. Exact placement (a sum with zeros), at the cost of full-size messages. */
hm_status hm_pipe_dp_sum_mixed(hm_stage *st, hm_device *dev, hm_comm_t dp, hm_dtype wire, int tp_size, int tp_rank);
/* The same for the tied embedding alone (tensor `only`), over `comm` = the first and the last
 * stage's workers of one replica when the two stages have different tensor-parallel degrees. */
hm_status hm_pipe_sum_full(hm_stage *st, hm_device *dev, hm_comm_t comm, hm_dtype wire, int tp_size, int tp_rank,
                           int only);

#endif
