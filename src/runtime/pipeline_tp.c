/* Tensor parallelism in the pipeline runtime: where each worker sits in a layout with tensor-
 * parallel stages, the model's allreduce callback on hmcomm, wire conversions, and the gradient
 * sum between replicas split differently (see pipeline_tp.h). Not here: the step (pipeline.c). */
#include "runtime/pipeline_tp.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/pipeline.h"
#include "util/util.h"

static int hm_tp_of(const hm_pipeline_options *o, int r, int s) { return o->tp[r][s] > 1 ? o->tp[r][s] : 1; }

int hm_pipeline_world_size(const hm_pipeline_options *o) {
  int n = 0;
  for (int r = 0; r < o->nreplicas && r < HM_PIPE_MAX_REPLICAS; r++)
    for (int s = 0; s < o->nstages && s < HM_PIPE_MAX_STAGES; s++) n += hm_tp_of(o, r, s);
  return n;
}

int hm_pipeline_rank_of(const hm_pipeline_options *o, int replica, int stage, int tp_rank) {
  int n = 0;
  for (int r = 0; r < o->nreplicas && r < HM_PIPE_MAX_REPLICAS; r++)
    for (int s = 0; s < o->nstages && s < HM_PIPE_MAX_STAGES; s++) {
      if (r == replica && s == stage) return tp_rank >= 0 && tp_rank < hm_tp_of(o, r, s) ? n + tp_rank : -1;
      n += hm_tp_of(o, r, s);
    }
  return -1;
}

void hm_pipeline_locate(const hm_pipeline_options *o, int rank, int *replica, int *stage, int *tp_rank) {
  *replica = *stage = *tp_rank = -1;
  int n = 0;
  for (int r = 0; r < o->nreplicas && r < HM_PIPE_MAX_REPLICAS; r++)
    for (int s = 0; s < o->nstages && s < HM_PIPE_MAX_STAGES; s++) {
      if (rank >= n && rank < n + hm_tp_of(o, r, s)) {
        *replica = r, *stage = s, *tp_rank = rank - n;
        return;
      }
      n += hm_tp_of(o, r, s);
    }
}

hm_status hm_pipe_tp_allreduce(void *ctx, void *buf, size_t n, hm_tp_op op) {
  hm_pipe_tp *c = ctx;
  const uint64_t t0 = hm_now_ns();
  const hm_dtype dt = hm_device_dtype(c->dev);
  const size_t bytes = n * hm_device_elem_size(c->dev);
  const hm_redop rop = op == HM_TP_MAX ? HM_MAX : HM_SUM;
  hm_status st;
  if (hm_device_is_host(c->dev)) {
    st = hm_comm_allreduce(c->comm, buf, buf, n, dt, rop);
  } else if (bytes > c->cap) {
    st = hm_error(HM_ERR_INTERNAL, "tensor-parallel allreduce of %zu bytes exceeds the %zu-byte staging buffer", bytes,
                  c->cap);
  } else {
    st = hm_device_copy_d2h(c->dev, c->host, buf, bytes);
    if (st == HM_OK) st = hm_comm_allreduce(c->comm, c->host, c->host, n, dt, rop);
    if (st == HM_OK) st = hm_device_copy_h2d(c->dev, buf, c->host, bytes);
  }
  c->ns += hm_now_ns() - t0;
  return st;
}

hm_status hm_pipe_tp_check_host(hm_comm_t comm, int replica, int stage) {
  enum { NAME = 64 };
  const int n = hm_comm_size(comm);
  char mine[NAME] = "";
  gethostname(mine, NAME - 1);
  char *all = hm_calloc((size_t)n, NAME, "tensor-parallel host names");
  if (!all) return HM_ERR_NOMEM;
  hm_status st = hm_comm_allgather(comm, mine, all, NAME, HM_UINT8);
  for (int r = 1; st == HM_OK && r < n; r++)
    if (strncmp(all, all + (size_t)r * NAME, NAME) != 0)
      st = hm_error(HM_ERR_SPEC, "replica %d stage %d: tensor-parallel rank 0 runs on host %s and rank %d on %s; a "
                    "stage's tensor-parallel workers must share a host", replica, stage, all, r, all + (size_t)r * NAME);
  free(all);
  return st;
}

hm_status hm_pipe_to_wire(hm_device *dev, hm_dtype wire, float *conv, void *dst, const void *src, size_t n) {
  if (hm_device_dtype(dev) == wire) return hm_device_copy_d2h(dev, dst, src, n * hm_dtype_size(wire));
  if (wire == HM_FLOAT32) return hm_device_copy_to_f32(dev, dst, src, n);
  HM_TRY(hm_device_copy_to_f32(dev, conv, src, n)); /* f32 device, f64 wire: exact */
  double *d = dst;
  for (size_t i = 0; i < n; i++) d[i] = conv[i];
  return HM_OK;
}

hm_status hm_pipe_from_wire(hm_device *dev, hm_dtype wire, float *conv, void *dst, const void *src, size_t n) {
  if (hm_device_dtype(dev) == wire) return hm_device_copy_h2d(dev, dst, src, n * hm_dtype_size(wire));
  if (wire == HM_FLOAT32) return hm_device_copy_from_f32(dev, dst, src, n);
  const double *d = src;
  for (size_t i = 0; i < n; i++) conv[i] = (float)d[i];
  return hm_device_copy_from_f32(dev, dst, conv, n);
}

hm_status hm_pipe_dp_sum_mixed(hm_stage *st, hm_device *dev, hm_comm_t dp, hm_dtype wire, int tp_size, int tp_rank) {
  return hm_pipe_sum_full(st, dev, dp, wire, tp_size, tp_rank, -1);
}

hm_status hm_pipe_sum_full(hm_stage *st, hm_device *dev, hm_comm_t comm, hm_dtype wire, int tp_size, int tp_rank,
                           int only) {
  const int nt = hm_stage_num_tensors(st);
  const size_t es = hm_dtype_size(wire);
  size_t full_n = 0, most = 0;
  for (int i = 0; i < nt; i++) {
    if (only >= 0 && i != only) continue;
    hm_tensor_split sp;
    hm_stage_tensor_split(st, i, &sp);
    full_n += sp.rows * sp.cols;
    most = sp.rows * sp.cols > most ? sp.rows * sp.cols : most;
  }
  char *full = hm_calloc(full_n, es, "mixed-layout gradient sum");
  char *shard = hm_malloc(most * es, "mixed-layout gradient shard");
  float *conv = hm_malloc(most * sizeof(float), "mixed-layout conversion");
  hm_status s = full && shard && conv ? HM_OK : HM_ERR_NOMEM;
  void *grads = hm_stage_grads(st);
  size_t off = 0;
  for (int i = 0; i < nt && s == HM_OK; i++) { /* place this rank's shards */
    if (only >= 0 && i != only) continue;
    hm_tensor_split sp;
    hm_stage_tensor_split(st, i, &sp);
    const size_t n = hm_stage_tensor_numel(st, i);
    if (sp.split != 0 || tp_rank == 0) {
      s = hm_pipe_to_wire(dev, wire, conv, shard, hm_device_offset(dev, grads, hm_stage_tensor_offset(st, i)), n);
      if (s == HM_OK) hm_tensor_shard_copy(full + off * es, shard, &sp, es, tp_size, tp_rank, 0);
    }
    off += sp.rows * sp.cols;
  }
  if (s == HM_OK) s = hm_comm_allreduce(comm, full, full, full_n, wire, HM_SUM);
  off = 0;
  for (int i = 0; i < nt && s == HM_OK; i++) { /* take the sums of this rank's shards back */
    if (only >= 0 && i != only) continue;
    hm_tensor_split sp;
    hm_stage_tensor_split(st, i, &sp);
    hm_tensor_shard_copy(full + off * es, shard, &sp, es, tp_size, tp_rank, 1);
    s = hm_pipe_from_wire(dev, wire, conv, hm_device_offset(dev, grads, hm_stage_tensor_offset(st, i)), shard,
                          hm_stage_tensor_numel(st, i));
    off += sp.rows * sp.cols;
  }
  free(full);
  free(shard);
  free(conv);
  return s;
}
