/* The pipeline + data-parallel worker: executes its stage's op list from the planner's 1F1B
 * generator with the model's stage functions and hmcomm (see include/hetmix/pipeline.h).
 *
 * What crosses between workers has one "wire" element type the whole job agrees on at start:
 * float64 when any worker computes in f64 (ref:dtype=f64), else float32, so no worker loses
 * precision it has. That is activations and their gradients (B,T,C) per micro-batch, gradient
 * buckets for the data-parallel allreduce, the tied embedding's gradient (V,C). Activations,
 * their gradients and the gradient buckets cross on communicators of their own (pipe_dev,
 * dp_dev) with the worker's device registered (hm_comm_register_device): a device whose dtype
 * is the wire type hands hmcomm its device buffers (hmcomm maps them on host-unified devices or
 * stages them chunk by chunk through pinned slots, docs/comm.md), nonblocking sends and
 * allreduces included, so they overlap compute as before. A device of another dtype (an f32
 * device on an f64 wire) converts into host wire buffers and hands those over (its registered
 * device there is a host one: itself, or a ref device of the wire type). The tied embedding's
 * gradient and the mixed-layout sums go through host memory on pipe and dp.
 *
 * Not here: choosing the layout (the planner), starting processes (launch.c), the run identity
 * and the check of a resume's stage checkpoints (pipeline_resume.c), persisting periodic
 * checkpoints (ckpt_agent.c), the corpus and metrics bookkeeping (src/model/runbook.c). */
#include "hetmix/pipeline.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/device.h"
#include "hetmix/plan.h"
#include "model/runbook.h"
#include "runtime/ckpt_agent.h"
#include "runtime/failslow.h"
#include "runtime/heartbeat.h"
#include "runtime/pipeline_internal.h"
#include "runtime/pipeline_resume.h"
#include "runtime/pipeline_tp.h"
#include "util/files.h"
#include "util/util.h"

/* ---------------------------------------------------------------- layout checks */

/* Interleaved 1F1B (nchunks > 1): what this runtime runs of it. */
static hm_status hm_pipeline_check_chunks(const hm_pipeline_options *o) {
  const int p = o->nstages, v = o->nchunks;
  if (v < 0 || v > HM_PIPE_MAX_STAGES)
    return hm_error(HM_ERR_SPEC, "pipeline: %d chunks per stage, need 1..%d", v, HM_PIPE_MAX_STAGES);
  if (v <= 1) return HM_OK;
  if (p < 2 || p * v > HM_PIPE_MAX_STAGES)
    return hm_error(HM_ERR_SPEC, "pipeline: interleaved 1F1B with %d chunks per stage needs 2 or more stages and at "
                    "most %d virtual stages (got %d stages)", v, HM_PIPE_MAX_STAGES, p);
  const char *what = o->train->resume ? "resuming (--resume)"
                     : o->train->ckpt_every > 0 ? "periodic checkpoints (--ckpt-every)"
                     : o->mem_every > 0 ? "memory snapshots (--mem-every)"
                     : o->rebalance ? "rebalancing (--rebalance)" : NULL;
  for (int r = 0; !what && r < o->nreplicas && r < HM_PIPE_MAX_REPLICAS; r++)
    for (int s = 0; !what && s < p; s++)
      if (o->tp[r][s] > 1) what = "tensor-parallel stages (--tp > 1)";
  if (what)
    return hm_error(HM_ERR_UNSUPPORTED, "pipeline: interleaved 1F1B (%d chunks per stage) with %s is not supported "
                    "yet; run it with one chunk per stage (`hetmix plan --max-chunks 1`)", v, what);
  return HM_OK;
}

hm_status hm_pipeline_check(const hm_pipeline_options *o, int world_size) {
  if (!o || !o->train) return hm_error(HM_ERR_INVALID_ARG, "pipeline: no options");
  const hm_train_options *t = o->train;
  HM_TRY(hm_model_config_check(&t->config));
  const int nl = hm_model_num_layers(&t->config);
  const int p = o->nstages, R = o->nreplicas;
  if (p < 1 || p > HM_PIPE_MAX_STAGES)
    return hm_error(HM_ERR_SPEC, "pipeline: %d stages, need 1..%d", p, HM_PIPE_MAX_STAGES);
  if (R < 1 || R > HM_PIPE_MAX_REPLICAS)
    return hm_error(HM_ERR_SPEC, "pipeline: %d replicas, need 1..%d", R, HM_PIPE_MAX_REPLICAS);
  HM_TRY(hm_pipeline_check_chunks(o));
  const int nv = p * (o->nchunks > 1 ? o->nchunks : 1); /* virtual stages (p without interleaving) */
  if (nv > nl)
    return hm_error(HM_ERR_SPEC, "pipeline: %d %sstages but model %s has only %d layers (L+2)", nv,
                    nv > p ? "virtual " : "", t->model_name, nl);
  if (o->stage_layers[0] != 0 || o->stage_layers[nv] != nl)
    return hm_error(HM_ERR_SPEC, "pipeline: stage layers must start at 0 and end at %d (L+2 of model %s), "
                    "got %d..%d", nl, t->model_name, o->stage_layers[0], o->stage_layers[nv]);
  for (int s = 0; s < nv; s++)
    if (o->stage_layers[s + 1] <= o->stage_layers[s])
      return hm_error(HM_ERR_SPEC, "pipeline: %sstage %d has no layers ([%d, %d))", nv > p ? "virtual " : "", s,
                      o->stage_layers[s], o->stage_layers[s + 1]);
  for (int r = 0; r < R; r++)
    if (o->micro[r] < 1)
      return hm_error(HM_ERR_SPEC, "pipeline: replica %d has %d micro-batches, need >= 1", r, o->micro[r]);
  for (int r = 0; r < R; r++)
    for (int s = 0; s < p; s++) {
      const int tp = o->tp[r][s] > 1 ? o->tp[r][s] : 1;
      hm_tp_sizes sz;
      if (o->tp[r][s] < 0 || hm_stage_tp_sizes(&t->config, tp, 0, &sz) != HM_OK)
        return hm_error(HM_ERR_SPEC, "pipeline: replica %d stage %d: tensor-parallel degree %d must be in 1..64 and "
                        "divide the model's NH=%d and V=%d%s", r, s, o->tp[r][s], (int)t->config.NH, (int)t->config.V,
                        t->config.arch == HM_ARCH_LLAMA ? " (and, for Llama, kv_heads and ffn)" : "");
    }
  const int need = hm_pipeline_world_size(o);
  if (world_size != need)
    return hm_error(HM_ERR_SPEC, "pipeline: %d replicas x %d stages (with their tensor-parallel degrees) need %d "
                    "workers, but %d were started", R, p, need, world_size);
  if (t->batch < 1 || t->steps < 1)
    return hm_error(HM_ERR_INVALID_ARG, "pipeline: batch %d and steps %d must be >= 1", t->batch, t->steps);
  return HM_OK;
}

/* ---------------------------------------------------------------- worker state */

typedef struct hm_span {
  size_t offset, count; /* elements in the stage's flat gradient buffer */
} hm_span;

typedef struct hm_bucket {
  int layer_begin, layer_end;
  int nspans;
  hm_span spans[8]; /* contiguous runs of the bucket's tensors (usually one) */
} hm_bucket;

#define HM_PIPE_MAX_TP 64
typedef struct hm_send_slot {
  void *buf;
  hm_request_t req[HM_PIPE_MAX_TP]; /* one per receiving tensor-parallel rank; NULL when free */
  int nreq;
} hm_send_slot;

/* A model chunk of this worker's stage: v of them with interleaved 1F1B (chunk c is virtual stage
 * c*p + stage), else one. The fields the helpers below work on live in hm_pipe for the chunk in
 * use (hm_pipe_use swaps them in), so that they and the plain path stay as they are; ck[c] holds
 * them for every other chunk. */
typedef struct hm_pipe_chunk {
  hm_stage *st;
  int first, last, nslots;
  hm_bucket *buckets;
  int nbuckets, nissued;
  void *stage_buf;
  int staged;
} hm_pipe_chunk;

typedef struct hm_trace_rec {
  int32_t stage, replica, track, kind, micro, pad;
  int64_t start_ns, dur_ns;
} hm_trace_rec;

typedef struct hm_pipe {
  const hm_pipeline_options *o;
  const hm_train_options *t;
  hm_comm_t world, pipe, dp; /* pipe: this replica's workers; dp: this stage across replicas */
  hm_comm_t pipe_dev, dp_dev; /* the same ranks, for wire data, with wire_dev registered */
  hm_device *wire_host;      /* a ref device of the wire type registered for an f32 non-host
                                device on an f64 wire (it hands over host buffers), else NULL */
  hm_comm_t tpc;             /* this stage's tensor-parallel ranks in this replica (tp > 1) */
  hm_comm_t tied;            /* first and last stage's workers of this replica when their degrees
                                differ (the tied gradient is summed through the full layout) */
  int rank, replica, stage, p, R, m, M, micro_off, first, last, is_first, is_last;
  int tp, tp_rank;           /* this stage's tensor-parallel degree and this worker's rank in it */
  int pipe_base[HM_PIPE_MAX_STAGES + 1]; /* pipe rank of each stage's tp rank 0 in this replica */
  int dp_mixed;              /* 1: replicas split this stage differently (hm_pipe_dp_sum_mixed) */
  int dp_due;                /* mixed: this step's gradients still wait for the sum */
  hm_pipe_tp tpx;            /* the model's tensor-parallel allreduce context */
  int N, C;                  /* N = B*T rows per micro-batch */
  hm_device *dev;
  hm_stage *st;
  int nslots;
  int start_step;            /* steps already taken (resume), 0 for a fresh run */
  uint64_t run_id;           /* the run's identity, the same on every worker (pipeline_resume.h) */
  hm_pipe_op *ops;           /* this stage's op list (the planner's 1F1B generator) */
  int nops;
  hm_tokfile tf;
  int have_tf;
  hm_dataloader dl;
  int32_t *inputs, *targets; /* (m, N) this step's micro-batches (first / last stage) */
  float *losses;             /* (m) */
  hm_dtype wire;             /* element type of everything sent (see the top of the file) */
  size_t wire_size;
  void *recv_buf;            /* (N*C) host, wire type (not native), else NULL */
  void *dev_x;               /* (N*C) device: received activations or output gradient */
  hm_send_slot *sends;
  int nsends, next_send;
  hm_bucket *buckets;
  int nbuckets;
  int overlap;           /* 1: buckets are issued from the last backward as their layers finish */
  int nissued;           /* buckets issued this step (in bucket order) */
  hm_request_t *pending; /* outstanding allreduces of this step */
  int npending, cap_pending;
  void *stage_buf;       /* (n_params) wire-typed host gradients when not native, else NULL */
  void *tied_mine, *tied_peer; /* (V*C) host, wire type */
  float *conv;           /* f32 scratch for an f32 device on an f64 wire, else NULL */
  int native;            /* 1: the device computes in the wire type: hmcomm moves its buffers */
  int staged;            /* 1: allreduced sums wait in stage_buf to be converted back (not native) */
  hm_trace_rec *trace;
  int ntrace, cap_trace, tracing;
  FILE *metrics;
  int micro[HM_PIPE_MAX_REPLICAS]; /* the split in use (rebalancing changes it) */
  double pace[HM_PIPE_MAX_REPLICAS]; /* smoothed seconds of compute per micro-batch, per replica */
  int paced;
  hm_ckpt_agent *agent;  /* periodic checkpoints (--ckpt-every with --dump), else NULL */
  int v, cur;            /* chunks of this stage (nchunks, 1 without interleaving); the one in use */
  hm_pipe_chunk ck[HM_PIPE_MAX_STAGES];
  hm_comm_t act[HM_PIPE_MAX_STAGES], grad[HM_PIPE_MAX_STAGES]; /* interleaved: see hm_op_comm */
  double snap_s;         /* the training thread's checkpoint work after the last step (ckpt_s) */
} hm_pipe;

/* Makes chunk c the one the helpers work on (w->st, first, last, buckets, ...). */
static void hm_pipe_use(hm_pipe *w, int c) {
  if (c == w->cur) return;
  w->ck[w->cur] = (hm_pipe_chunk){w->st, w->first, w->last, w->nslots, w->buckets, w->nbuckets, w->nissued,
                                  w->stage_buf, w->staged};
  const hm_pipe_chunk *k = &w->ck[c];
  w->st = k->st, w->first = k->first, w->last = k->last, w->nslots = k->nslots;
  w->buckets = k->buckets, w->nbuckets = k->nbuckets, w->nissued = k->nissued;
  w->stage_buf = k->stage_buf, w->staged = k->staged;
  w->cur = c;
}

static hm_status hm_pipe_ctx(hm_status st, const hm_pipe *w) {
  if (st == HM_OK) return st;
  return hm_error_context(st, "rank %d (replica %d, stage %d): ", w->rank, w->replica, w->stage);
}

static void hm_trace_add(hm_pipe *w, int track, int kind, int micro, uint64_t t0, uint64_t t1) {
  if (!w->tracing) return;
  if (w->ntrace == w->cap_trace) {
    int cap = w->cap_trace ? 2 * w->cap_trace : 256;
    hm_trace_rec *n = realloc(w->trace, (size_t)cap * sizeof *n);
    if (!n) return; /* a trace is a diagnostic: a short one beats a failed run */
    w->trace = n;
    w->cap_trace = cap;
  }
  w->trace[w->ntrace++] = (hm_trace_rec){w->stage, w->replica, track, (int32_t)kind, micro, 0,
                                         (int64_t)t0, (int64_t)(t1 - t0)};
}

static hm_status hm_build_buckets(hm_pipe *w) {
  int per = w->o->layers_per_bucket > 0 ? w->o->layers_per_bucket : 1;
  const int n = hm_grad_bucket_count(w->first, w->last, per);
  w->buckets = hm_calloc((size_t)n, sizeof *w->buckets, "gradient buckets");
  if (!w->buckets) return HM_ERR_NOMEM;
  w->nbuckets = 0;
  const int nt = hm_stage_num_tensors(w->st);
  /* the schedule's buckets (hm_grad_bucket), in its order: from the last layer backwards */
  for (int q = 0; q < n; q++) {
    int lo, hi;
    hm_grad_bucket(w->first, w->last, per, q, &lo, &hi);
    hm_bucket *b = &w->buckets[w->nbuckets++];
    b->layer_begin = lo, b->layer_end = hi;
    for (int i = 0; i < nt; i++) {
      int l = hm_stage_tensor_layer(w->st, i);
      if (l < 0)
        return hm_error(HM_ERR_INTERNAL, "tensor '%s' belongs to no layer", hm_stage_tensor_name(w->st, i));
      if (l < lo || l >= hi) continue;
      size_t off = hm_stage_tensor_offset(w->st, i), cnt = hm_stage_tensor_numel(w->st, i);
      if (b->nspans > 0 && b->spans[b->nspans - 1].offset + b->spans[b->nspans - 1].count == off) {
        b->spans[b->nspans - 1].count += cnt;
      } else {
        if (b->nspans == 8)
          return hm_error(HM_ERR_INTERNAL, "bucket [%d,%d) is split in more than 8 runs", lo, hi);
        b->spans[b->nspans++] = (hm_span){off, cnt};
      }
    }
  }
  return HM_OK;
}

/* ---------------------------------------------------------------- transfers */

/* Device buffer (dev->dtype) -> host wire buffer, n elements. */
static hm_status hm_to_wire(hm_pipe *w, void *dst, const void *src, size_t n) {
  return hm_pipe_to_wire(w->dev, w->wire, w->conv, dst, src, n);
}

/* Host wire buffer -> device buffer, n elements. */
static hm_status hm_from_wire(hm_pipe *w, void *dst, const void *src, size_t n) {
  return hm_pipe_from_wire(w->dev, w->wire, w->conv, dst, src, n);
}

static hm_status hm_wait_pending(hm_pipe *w) {
  hm_status first = HM_OK;
  for (int i = 0; i < w->npending; i++) {
    hm_status st = hm_request_wait(w->pending[i]);
    if (st != HM_OK && first == HM_OK) first = st;
  }
  w->npending = 0;
  return first;
}

static hm_status hm_push_pending(hm_pipe *w, hm_request_t r) {
  if (w->npending == w->cap_pending) {
    int cap = w->cap_pending ? 2 * w->cap_pending : 16;
    hm_request_t *n = realloc(w->pending, (size_t)cap * sizeof *n);
    if (!n) return hm_error(HM_ERR_NOMEM, "pending request list");
    w->pending = n;
    w->cap_pending = cap;
  }
  w->pending[w->npending++] = r;
  return HM_OK;
}

static hm_status hm_wait_slot(hm_send_slot *sl) {
  hm_status first = HM_OK;
  for (int i = 0; i < sl->nreq; i++)
    if (sl->req[i]) {
      hm_status st = hm_request_wait(sl->req[i]);
      sl->req[i] = NULL;
      if (st != HM_OK && first == HM_OK) first = st;
    }
  sl->nreq = 0;
  return first;
}

/* Between stages of different tensor-parallel degrees. Every tensor-parallel rank of a stage
 * holds the whole (N,C) activation (after the row-parallel allreduce) and the whole gradient of
 * its input (after the column-parallel one), and every rank of the neighbour needs all of it:
 * receiver j takes it from the sender's rank j mod (the sender's degree), so sender i sends to
 * j = i, i + tp_sender, ... below the receiver's degree (none when i >= it). */
static int hm_tp_at(const hm_pipe *w, int stage) { return w->pipe_base[stage + 1] - w->pipe_base[stage]; }

/* Sends (N,C) device activations (or their gradient) to stage peer (its tensor-parallel ranks as
 * above) without blocking: copied into a free device slot (native; the source is rewritten by the
 * next micro-batch) or converted into a host one, then isend. A slot is reused only after its
 * sends completed. */
static hm_status hm_send_act(hm_pipe *w, hm_comm_t comm, const void *dev_src, int peer) {
  hm_send_slot *sl = &w->sends[w->next_send];
  w->next_send = (w->next_send + 1) % w->nsends;
  HM_TRY(hm_wait_slot(sl));
  const int tp_peer = hm_tp_at(w, peer);
  if (w->tp_rank >= tp_peer) return HM_OK;
  const size_t n = (size_t)w->N * w->C;
  if (w->native) HM_TRY(hm_device_copy_d2d(w->dev, sl->buf, dev_src, n * w->wire_size));
  else HM_TRY(hm_to_wire(w, sl->buf, dev_src, n));
  for (int j = w->tp_rank; j < tp_peer; j += w->tp)
    HM_TRY(hm_comm_isend(comm, sl->buf, n, w->wire, w->pipe_base[peer] + j, &sl->req[sl->nreq++]));
  return HM_OK;
}

static hm_status hm_recv_act(hm_pipe *w, hm_comm_t comm, int peer) {
  const size_t n = (size_t)w->N * w->C;
  const int from = w->pipe_base[peer] + w->tp_rank % hm_tp_at(w, peer);
  if (w->native) return hm_comm_recv(comm, w->dev_x, n, w->wire, from);
  HM_TRY(hm_comm_recv(comm, w->recv_buf, n, w->wire, from));
  return hm_from_wire(w, w->dev_x, w->recv_buf, n);
}

/* The communicator of a transfer op. Interleaved 1F1B: every boundary between virtual stages j
 * and j+1 of the same lower chunk j / p has its own for activations and for gradients, so what
 * one carries in one direction is one chunk's micro-batches, sent and received in micro-batch
 * order; a message of another chunk or kind cannot be taken for it. Else pipe_dev. */
static hm_comm_t hm_op_comm(const hm_pipe *w, const hm_pipe_op *op) {
  if (w->v == 1) return w->pipe_dev;
  const int j = op->chunk * w->p + w->stage;
  const int lower = op->kind == HM_PIPE_OP_RECV_ACT || op->kind == HM_PIPE_OP_SEND_GRAD ? j - 1 : j;
  const int act = op->kind == HM_PIPE_OP_SEND_ACT || op->kind == HM_PIPE_OP_RECV_ACT;
  return (act ? w->act : w->grad)[lower / w->p];
}

static hm_status hm_wait_sends(hm_pipe *w) {
  hm_status first = HM_OK;
  for (int i = 0; i < w->nsends; i++) {
    hm_status st = hm_wait_slot(&w->sends[i]);
    if (st != HM_OK && first == HM_OK) first = st;
  }
  return first;
}

/* Issues the data-parallel allreduce of bucket b (sum over replicas). */
static hm_status hm_issue_bucket(hm_pipe *w, const hm_bucket *b) {
  void *grads = hm_stage_grads(w->st);
  for (int i = 0; i < b->nspans; i++) {
    void *buf;
    if (w->native) {
      buf = hm_device_offset(w->dev, grads, b->spans[i].offset);
    } else {
      buf = (char *)w->stage_buf + b->spans[i].offset * w->wire_size;
      HM_TRY(hm_to_wire(w, buf, hm_device_offset(w->dev, grads, b->spans[i].offset), b->spans[i].count));
      w->staged = 1;
    }
    hm_request_t r = NULL;
    HM_TRY(hm_comm_iallreduce(w->dp_dev, buf, buf, b->spans[i].count, w->wire, HM_SUM, &r));
    HM_TRY(hm_push_pending(w, r));
  }
  return HM_OK;
}

/* The schedule's ALLREDUCE op of bucket [lb, le): issues it unless the last backward already did
 * (overlap). Either way the same buckets go out in the same order with the same final sums, so
 * the result is bitwise that of issuing them all after the backward. */
static hm_status hm_allreduce_bucket(hm_pipe *w, int lb, int le) {
  int k = 0;
  while (k < w->nbuckets && !(w->buckets[k].layer_begin == lb && w->buckets[k].layer_end == le)) k++;
  if (k == w->nbuckets) return hm_error(HM_ERR_INTERNAL, "the schedule's bucket [%d,%d) is not one of this stage's", lb, le);
  if (w->dp_mixed) { /* summed whole by hm_finish_allreduce */
    w->dp_due = 1;
    return HM_OK;
  }
  if (k < w->nissued) return HM_OK;
  if (k != w->nissued)
    return hm_error(HM_ERR_INTERNAL, "bucket [%d,%d) comes before bucket %d was issued", lb, le, w->nissued);
  w->nissued++;
  return hm_issue_bucket(w, &w->buckets[k]);
}

/* Grad hook of the step's last backward: layer `layer` and every later one of the stage have
 * their final gradients, so every bucket that starts at or above it goes out now. */
static hm_status hm_pipe_grad_hook(void *user, int layer) {
  hm_pipe *w = user;
  while (w->nissued < w->nbuckets && w->buckets[w->nissued].layer_begin >= layer)
    HM_TRY(hm_issue_bucket(w, &w->buckets[w->nissued++]));
  return HM_OK;
}

/* Index of each chunk's last backward of the step in the op list (-1: none). */
static void hm_last_bwds(const hm_pipe *w, int *last) {
  for (int c = 0; c < w->v; c++) last[c] = -1;
  for (int i = 0; i < w->nops; i++)
    if (w->ops[i].kind == HM_PIPE_OP_BWD) last[w->ops[i].chunk] = i;
}

/* Completes the allreduces and, where not native, converts the sums back, once: a second call
 * in the same step (the tied sync, then the gradient norm) must not copy the pre-sync sums over
 * the tied embedding's synced gradient. */
static hm_status hm_finish_allreduce(hm_pipe *w) {
  HM_TRY(hm_wait_pending(w));
  if (w->dp_due) {
    w->dp_due = 0;
    return hm_pipe_dp_sum_mixed(w->st, w->dev, w->dp, w->wire, w->tp, w->tp_rank);
  }
  if (w->native || !w->staged) return HM_OK;
  w->staged = 0;
  void *grads = hm_stage_grads(w->st);
  for (int k = 0; k < w->nbuckets; k++)
    for (int i = 0; i < w->buckets[k].nspans; i++) {
      const hm_span *sp = &w->buckets[k].spans[i];
      HM_TRY(hm_from_wire(w, hm_device_offset(w->dev, grads, sp->offset),
                          (char *)w->stage_buf + sp->offset * w->wire_size, sp->count));
    }
  return HM_OK;
}

/* hm_finish_allreduce for every chunk; the chunk in use stays. */
static hm_status hm_finish_allreduces(hm_pipe *w) {
  const int cur = w->cur;
  for (int c = 0; c < w->v; c++) {
    hm_pipe_use(w, c);
    HM_TRY(hm_finish_allreduce(w));
  }
  hm_pipe_use(w, cur);
  return HM_OK;
}

/* First and last stage swap their copies of the tied embedding's gradient and both keep the
 * sum. a + b == b + a exactly in IEEE arithmetic, so the two copies stay bitwise equal. */
static hm_status hm_tied_sync(hm_pipe *w, int peer) {
  size_t n = 0;
  void *g = hm_stage_tied_grad(w->st, &n);
  if (!g) return hm_error(HM_ERR_INTERNAL, "stage [%d,%d) has no tied embedding to sync", w->first, w->last);
  if (w->tied)
    return hm_pipe_sum_full(w->st, w->dev, w->tied, w->wire, w->tp, w->tp_rank, hm_stage_find_tensor(w->st, "wte"));
  HM_TRY(hm_to_wire(w, w->tied_mine, g, n));
  hm_request_t rs = NULL, rr = NULL;
  HM_TRY(hm_group_start());
  /* the same tensor-parallel rank of the other end holds the same vocabulary rows */
  hm_status st = hm_comm_isend(w->pipe, w->tied_mine, n, w->wire, w->pipe_base[peer] + w->tp_rank, &rs);
  if (st == HM_OK) st = hm_comm_irecv(w->pipe, w->tied_peer, n, w->wire, w->pipe_base[peer] + w->tp_rank, &rr);
  hm_status st2 = hm_group_end();
  if (st == HM_OK) st = st2;
  if (rs) {
    hm_status s3 = hm_request_wait(rs);
    if (st == HM_OK) st = s3;
  }
  if (rr) {
    hm_status s3 = hm_request_wait(rr);
    if (st == HM_OK) st = s3;
  }
  HM_TRY(st);
  if (w->wire == HM_FLOAT32) {
    float *a = w->tied_mine;
    const float *b = w->tied_peer;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
  } else {
    double *a = w->tied_mine;
    const double *b = w->tied_peer;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
  }
  return hm_from_wire(w, g, w->tied_mine, n);
}

/* ---------------------------------------------------------------- one step */

typedef struct hm_step_out {
  double loss_sum;  /* sum of this replica's micro-batch losses (last stage) */
  double sumsq;     /* global gradient sum of squares */
  double busy_s;    /* this worker's compute time */
  double fb_s;      /* ... of which forward and backward (what scales with micro-batches) */
  float lr;
} hm_step_out;

/* Zeroes every chunk's gradients for a new step; chunk 0 in use after. */
static hm_status hm_pipe_zero_grads(hm_pipe *w) {
  for (int c = w->v - 1; c >= 0; c--) {
    hm_pipe_use(w, c);
    HM_TRY(hm_stage_zero_grad(w->st));
    w->nissued = 0;
  }
  return HM_OK;
}

/* The global gradient sum of squares. Each chunk's own sum (each pipe rank's, tensor-parallel
 * ranks apart) goes in its slot of a vector summed over the pipe (one nonzero term per slot:
 * exact), and the slots are added in order (virtual stage order with interleaving): the result
 * depends neither on the allreduce's order of additions nor on how chunks sit on workers, so an
 * interleaved run gets the bits of a plain run of its virtual stages. */
static hm_status hm_pipe_grad_sumsq(hm_pipe *w, double *sumsq) {
  const int n = hm_comm_size(w->pipe), me = hm_comm_rank(w->pipe), cur = w->cur;
  const size_t len = (size_t)n * (size_t)w->v;
  double *v = hm_calloc(2 * len, sizeof *v, "gradient norm terms");
  if (!v) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int c = 0; c < w->v && st == HM_OK; c++) {
    hm_pipe_use(w, c);
    st = hm_stage_grad_sumsq(w->st, &v[(size_t)c * n + me]);
  }
  hm_pipe_use(w, cur);
  if (st == HM_OK) st = hm_comm_allreduce(w->pipe, v, v + len, len, HM_FLOAT64, HM_SUM);
  *sumsq = 0;
  for (size_t i = 0; st == HM_OK && i < len; i++) *sumsq += v[len + i];
  free(v);
  return st;
}

static hm_status hm_pipe_step(hm_pipe *w, int step /* 0-based */, hm_step_out *out) {
  const hm_train_options *t = w->t;
  memset(out, 0, sizeof *out);
  HM_TRY(hm_pipe_zero_grads(w));
  if (w->is_first || w->is_last) {
    for (int k = 0; k < w->m; k++) {
      /* the single-process trainer's (step*M + micro_off + k)-th micro-batch of B sequences */
      w->dl.position = ((uint64_t)step * (uint64_t)w->M + (uint64_t)(w->micro_off + k)) * (uint64_t)t->batch;
      hm_dataloader_next(&w->dl, w->inputs + (size_t)k * w->N, w->targets + (size_t)k * w->N);
    }
  }
  const float loss_weight = 1.0f / (float)w->M;
  uint64_t busy = 0, fb = 0;
  int last_bwd[HM_PIPE_MAX_STAGES];
  hm_last_bwds(w, last_bwd);
  for (int i = 0; i < w->nops; i++) {
    const hm_pipe_op *op = &w->ops[i];
    hm_pipe_use(w, op->chunk);
    /* the chunk's micro-batches in flight are consecutive: k mod its slots tells them apart */
    const int k = op->micro, slot = k >= 0 ? k % w->nslots : 0;
    const int vfirst = w->is_first && op->chunk == 0, vlast = w->is_last && op->chunk == w->v - 1;
    const uint64_t t0 = hm_now_ns();
    int track = 1;
    hm_hb_waiting(!(op->kind == HM_PIPE_OP_FWD || op->kind == HM_PIPE_OP_BWD || op->kind == HM_PIPE_OP_OPTIMIZER));
    switch (op->kind) {
      case HM_PIPE_OP_RECV_ACT:
      case HM_PIPE_OP_RECV_GRAD:
        HM_TRY(hm_recv_act(w, hm_op_comm(w, op), op->peer));
        break;
      case HM_PIPE_OP_FWD:
        track = 0;
        HM_TRY(hm_stage_forward(w->st, slot, vfirst ? w->inputs + (size_t)k * w->N : NULL,
                                vfirst ? NULL : w->dev_x, vlast ? w->targets + (size_t)k * w->N : NULL,
                                vlast ? &w->losses[k] : NULL));
        HM_TRY(hm_device_synchronize(w->dev)); /* an asynchronous queue: time the work, not its enqueueing */
        break;
      case HM_PIPE_OP_SEND_ACT:
        HM_TRY(hm_send_act(w, hm_op_comm(w, op), hm_stage_output(w->st, slot), op->peer));
        break;
      case HM_PIPE_OP_BWD:
        track = 0;
        if (w->overlap && i == last_bwd[op->chunk]) hm_stage_set_grad_hook(w->st, hm_pipe_grad_hook, w);
        hm_status bst = hm_stage_backward(w->st, slot, vlast ? NULL : w->dev_x, loss_weight);
        hm_stage_set_grad_hook(w->st, NULL, NULL);
        HM_TRY(bst);
        HM_TRY(hm_device_synchronize(w->dev));
        break;
      case HM_PIPE_OP_SEND_GRAD:
        HM_TRY(hm_send_act(w, hm_op_comm(w, op), hm_stage_dinput(w->st), op->peer));
        break;
      case HM_PIPE_OP_ALLREDUCE:
        HM_TRY(hm_allreduce_bucket(w, op->layer_begin, op->layer_end));
        break;
      case HM_PIPE_OP_TIED_EMB_SYNC:
        HM_TRY(hm_finish_allreduces(w)); /* the tied gradient is summed over replicas first */
        HM_TRY(hm_tied_sync(w, op->peer));
        break;
      case HM_PIPE_OP_GRAD_NORM: {
        HM_TRY(hm_finish_allreduces(w));
        /* every replica holds the same summed gradients: the norm is over this replica's stages */
        HM_TRY(hm_pipe_grad_sumsq(w, &out->sumsq));
        if (!isfinite(out->sumsq))
          return hm_error(HM_ERR_INTERNAL, "step %d: gradient norm is not finite; lower the learning rate", step + 1);
        break;
      }
      case HM_PIPE_OP_OPTIMIZER: {
        track = 0;
        hm_adamw a = {hm_train_lr_at(t, step + 1), t->beta1, t->beta2, t->eps, t->weight_decay};
        out->lr = a.lr;
        HM_TRY(hm_stage_adamw(w->st, &a, step + 1, hm_grad_clip_scale(out->sumsq, t->grad_clip)));
        HM_TRY(hm_device_synchronize(w->dev));
        break;
      }
      default:
        return hm_error(HM_ERR_INTERNAL, "unknown op kind %d in the schedule", (int)op->kind);
    }
    const uint64_t t1 = hm_now_ns();
    if (track == 0) busy += t1 - t0;
    if (op->kind == HM_PIPE_OP_FWD || op->kind == HM_PIPE_OP_BWD) fb += t1 - t0;
    hm_trace_add(w, track, op->kind, k, t0, t1);
  }
  HM_TRY(hm_wait_sends(w));
  out->busy_s = (double)busy * 1e-9;
  out->fb_s = (double)fb * 1e-9;
  if (w->is_last)
    for (int k = 0; k < w->m; k++) out->loss_sum += w->losses[k];
  return HM_OK;
}

/* Chunk c's part of an evaluation forward (virtual stage c*p + stage): the loss lands in *loss
 * on the last virtual stage. */
static hm_status hm_pipe_eval_chunk(hm_pipe *w, int c, float *loss) {
  hm_pipe_use(w, c);
  const int vfirst = w->is_first && c == 0, vlast = w->is_last && c == w->v - 1;
  const hm_pipe_op in = {HM_PIPE_OP_RECV_ACT, 0, (w->stage + w->p - 1) % w->p, 0, 0, c};
  const hm_pipe_op out = {HM_PIPE_OP_SEND_ACT, 0, (w->stage + 1) % w->p, 0, 0, c};
  if (!vfirst) HM_TRY(hm_recv_act(w, hm_op_comm(w, &in), in.peer));
  HM_TRY(hm_stage_forward(w->st, 0, vfirst ? w->inputs : NULL, vfirst ? NULL : w->dev_x, vlast ? w->targets : NULL,
                          vlast ? loss : NULL));
  if (!vlast) HM_TRY(hm_send_act(w, hm_op_comm(w, &out), hm_stage_output(w->st, 0), out.peer));
  return HM_OK;
}

/* Validation loss of the current weights, on replica 0 (the other replicas hold the same weights
 * and skip it): forward only, the first stage feeding validation batch i (the single-process
 * trainer's, hm_run_eval_batches of them) down the pipeline and the last computing its loss, as
 * the single-process trainer does; the mean lands in *val on the last stage. */
static hm_status hm_pipe_eval(hm_pipe *w, float *val) {
  *val = 0;
  if (w->replica != 0) return HM_OK;
  int n = 0;
  int64_t mine = 0, count = 0;
  hm_status st = w->is_first ? hm_run_eval_batches(w->t, &w->dl, &n) : HM_OK;
  mine = st == HM_OK ? n : -1;
  HM_TRY(hm_comm_broadcast(w->pipe, &mine, &count, 1, HM_INT64, 0)); /* every stage learns n, or that it failed */
  if (count < 1) return st != HM_OK ? st : hm_error(HM_ERR_INVALID_ARG, "evaluation: stage 0 found no validation batch");
  double sum = 0;
  for (int64_t i = 0; i < count; i++) {
    if (w->is_first || w->is_last) hm_dataloader_val(&w->dl, (uint64_t)i, w->inputs, w->targets);
    float loss = 0;
    for (int c = 0; c < w->v; c++) HM_TRY(hm_pipe_eval_chunk(w, c, &loss));
    sum += loss;
  }
  HM_TRY(hm_wait_sends(w));
  *val = (float)(sum / (double)count);
  return HM_OK;
}

/* ---------------------------------------------------------------- setup, trace, teardown */

/* 1 when some stage of some replica is tensor-parallel. */
static int hm_pipe_any_tp(const hm_pipeline_options *o) {
  for (int r = 0; o && r < o->nreplicas && r < HM_PIPE_MAX_REPLICAS; r++)
    for (int s = 0; s < o->nstages && s < HM_PIPE_MAX_STAGES; s++)
      if (o->tp[r][s] > 1) return 1;
  return 0;
}

static hm_status hm_pipe_open_wire_comms(hm_pipe *w);

/* Interleaved 1F1B: chunks v-1 .. 1 of this stage (virtual stages c*p + stage), each a stage of
 * the model with its own activation slots (nslots[c]), fresh parameters and buckets; chunk 0,
 * whose layers are the stage's own bounds, is left in use for the plain setup to complete. */
static hm_status hm_pipe_open_chunks(hm_pipe *w, int T, const int *nslots) {
  const hm_train_options *t = w->t;
  for (int c = w->v - 1; c >= 1; c--) {
    hm_pipe_use(w, c);
    const int j = c * w->p + w->stage;
    w->first = w->o->stage_layers[j], w->last = w->o->stage_layers[j + 1];
    w->nslots = nslots[c];
    hm_stage_options so = {w->first, w->last, t->batch, T, w->nslots, {0, 1, NULL, NULL}};
    HM_TRY(hm_stage_create(&t->config, w->dev, &so, &w->st));
    HM_TRY(hm_stage_init_params(w->st, t->seed));
    HM_TRY(hm_build_buckets(w));
  }
  hm_pipe_use(w, 0);
  return HM_OK;
}

/* The largest chunk's parameter count; with wire-typed host gradients (not native, replicas),
 * each chunk's staging buffer. Chunk 0 in use after. */
static hm_status hm_pipe_chunk_bufs(hm_pipe *w, size_t *most) {
  *most = 0;
  for (int c = w->v - 1; c >= 0; c--) {
    hm_pipe_use(w, c);
    const size_t n = hm_stage_num_params(w->st);
    if (n > *most) *most = n;
    if (!w->native && w->R > 1)
      HM_TRY(hm_device_alloc_host(w->dev, &w->stage_buf, n * w->wire_size, "gradient staging"));
  }
  return HM_OK;
}

static hm_status hm_pipe_setup(hm_pipe *w) {
  const hm_pipeline_options *o = w->o;
  const hm_train_options *t = w->t;
  w->p = o->nstages, w->R = o->nreplicas;
  w->v = o->nchunks > 1 ? o->nchunks : 1;
  w->rank = hm_comm_rank(w->world);
  HM_TRY(hm_pipeline_check(o, hm_comm_size(w->world)));
  hm_pipeline_locate(o, w->rank, &w->replica, &w->stage, &w->tp_rank);
  w->tp = o->tp[w->replica][w->stage] > 1 ? o->tp[w->replica][w->stage] : 1;
  w->pipe_base[0] = 0;
  for (int s = 0; s < w->p; s++)
    w->pipe_base[s + 1] = w->pipe_base[s] + (o->tp[w->replica][s] > 1 ? o->tp[w->replica][s] : 1);
  for (int r = 0; r < w->R; r++)
    if ((o->tp[r][w->stage] > 1 ? o->tp[r][w->stage] : 1) != w->tp) w->dp_mixed = 1;
  w->m = o->micro[w->replica];
  for (int r = 0; r < w->R; r++) {
    if (r < w->replica) w->micro_off += o->micro[r];
    w->M += o->micro[r];
    w->micro[r] = o->micro[r];
  }
  /* rebalancing may hand this replica up to M - (R-1) micro-batches: size for that */
  const int m_cap = o->rebalance && w->R > 1 ? w->M - (w->R - 1) : w->m;
  w->first = o->stage_layers[w->stage], w->last = o->stage_layers[w->stage + 1];
  w->is_first = w->stage == 0, w->is_last = w->stage == w->p - 1;
  const int T = t->seq_len > 0 ? t->seq_len : t->config.T;
  w->N = t->batch * T, w->C = t->config.C;

  /* pipe: the replica's workers in stage, tp-rank order (pipe rank = pipe_base[stage] + tp rank);
   * dp: this stage's workers of the same tp rank in every replica, or, when replicas split the
   * stage differently, all of this stage's workers; tpc: this stage's tp ranks of this replica */
  HM_TRY(hm_comm_split(w->world, w->replica, w->stage * HM_PIPE_MAX_TP + w->tp_rank, &w->pipe, NULL));
  HM_TRY(hm_comm_split(w->world, w->dp_mixed ? w->stage : w->stage * HM_PIPE_MAX_TP + w->tp_rank,
                       w->replica * HM_PIPE_MAX_TP + w->tp_rank, &w->dp, NULL));
  HM_TRY(hm_comm_split(w->world, w->replica * HM_PIPE_MAX_STAGES + w->stage, w->tp_rank, &w->tpc, NULL));
  if (w->tp > 1) HM_TRY(hm_pipe_tp_check_host(w->tpc, w->replica, w->stage));
  const int tied_mixed = w->p > 1 && hm_tp_at(w, 0) != hm_tp_at(w, w->p - 1);
  HM_TRY(hm_comm_split(w->world, tied_mixed && (w->is_first || w->is_last) ? w->replica : HM_SPLIT_NOCOLOR,
                       w->stage * HM_PIPE_MAX_TP + w->tp_rank, &w->tied, NULL));

  int nslots[HM_PIPE_MAX_STAGES] = {0}, cap_slots[HM_PIPE_MAX_STAGES] = {0}; /* per chunk */
  if (m_cap > w->m) { /* activation slots for the largest share this replica may get */
    HM_TRY(hm_pipe_stage_ops(w->p, w->v, m_cap, o->stage_layers, w->R > 1, o->layers_per_bucket > 0 ? o->layers_per_bucket : 1,
                              t->config.tied_embeddings, w->stage, &w->ops, &w->nops, cap_slots));
    free(w->ops);
    w->ops = NULL;
  }
  HM_TRY(hm_pipe_stage_ops(w->p, w->v, w->m, o->stage_layers, w->R > 1, o->layers_per_bucket > 0 ? o->layers_per_bucket : 1,
                            t->config.tied_embeddings, w->stage, &w->ops, &w->nops, nslots));
  for (int c = 0; c < w->v; c++) {
    if (cap_slots[c] > nslots[c]) nslots[c] = cap_slots[c];
    if (nslots[c] < 1) nslots[c] = 1;
  }
  w->nslots = nslots[0];

  char shard[1024];
  HM_TRY(hm_pipe_run_identity(w->world, o, w->stage, w->M, &w->run_id, shard, sizeof shard));
  HM_TRY(hm_device_open(t->device ? t->device : "cpu", &w->dev));
  w->tpx.comm = w->tpc, w->tpx.dev = w->dev;
  if (w->tp > 1 && !hm_device_is_host(w->dev)) { /* the largest allreduce is one (N,C) activation */
    w->tpx.cap = (size_t)w->N * w->C * hm_device_elem_size(w->dev);
    HM_TRY(hm_device_alloc_host(w->dev, &w->tpx.host, w->tpx.cap, "tensor-parallel staging"));
  }
  HM_TRY(hm_pipe_open_chunks(w, T, nslots)); /* chunks 1..v-1 of interleaved 1F1B */
  hm_stage_options so = {w->first, w->last, t->batch, T, w->nslots,
                         {w->tp_rank, w->tp, w->tp > 1 ? hm_pipe_tp_allreduce : NULL, &w->tpx}};
  HM_TRY(hm_stage_create(&t->config, w->dev, &so, &w->st));
  if (t->resume) {
    /* a checkpoint of an earlier run of this layout (its shards checked to be one run at one
     * step by hm_pipe_run_identity): this stage's params, moments, step */
    const char *path = shard;
    hm_ckpt_meta m;
    /* a tensor-parallel rank loads its own shard, or cuts it out of an unsplit stage file */
    HM_TRY(hm_pipe_load_stage(w->st, w->dev, path, w->tp, w->tp_rank, &m));
    const int T_run = t->seq_len > 0 ? t->seq_len : t->config.T;
    if (m.batch != t->batch || m.seq_len != T_run || m.data_seed != t->seed ||
        m.data_position != m.step * (uint64_t)w->M * (uint64_t)t->batch)
      return hm_error(HM_ERR_INVALID_ARG, "%s was trained with batch %d, seq_len %d, seed %llu and %llu sequences per "
                      "step; this run has %d, %d, %llu and %d (resume with the same layout and options)", path,
                      m.batch, m.seq_len, (unsigned long long)m.data_seed,
                      (unsigned long long)(m.step ? m.data_position / m.step : 0), t->batch, T_run,
                      (unsigned long long)t->seed, w->M * t->batch);
    w->start_step = (int)m.step;
  } else {
    HM_TRY(hm_stage_init_params(w->st, t->seed));
  }
  HM_TRY(hm_build_buckets(w));
  w->overlap = !o->sync_after_backward && w->R > 1 && !w->dp_mixed;

  if (w->is_first || w->is_last) {
    HM_TRY(hm_run_open_data(t, t->batch, T, &w->tf, &w->dl));
    w->have_tf = 1;
    w->inputs = hm_malloc((size_t)m_cap * w->N * sizeof(int32_t), "micro-batch inputs");
    w->targets = hm_malloc((size_t)m_cap * w->N * sizeof(int32_t), "micro-batch targets");
    w->losses = hm_calloc((size_t)m_cap, sizeof(float), "micro-batch losses");
    if (!w->inputs || !w->targets || !w->losses) return HM_ERR_NOMEM;
  }
  /* leftovers of killed writes go before anyone writes there (the allreduce below orders it) */
  if (o->dump_dir && w->replica == 0) {
    HM_TRY(hm_make_dirs(o->dump_dir, 0755, HM_DIR_OUTPUT));
    HM_TRY(hm_clean_tmp_files(o->dump_dir, NULL));
  }
  if (o->dump_dir && t->ckpt_every > 0) { /* one shard per replica-0 worker, tensor-parallel ranks apart */
    hm_ckpt_shard_info *tab = NULL;
    int n0 = 0;
    HM_TRY(hm_pipe_ckpt_shards(o, &tab, &n0));
    hm_ckpt_agent_config ac = {o->dump_dir, hm_ckpt_peer_root(), t->keep, w->stage, w->p, w->replica, w->run_id, tab, n0};
    hm_status as = hm_ckpt_agent_open(w->world, &ac, &w->agent);
    free(tab);
    HM_TRY(as);
  }
  /* the wire type: f64 as soon as one worker computes in f64 */
  int64_t esize = (int64_t)hm_device_elem_size(w->dev), esize_max = 0;
  HM_TRY(hm_comm_allreduce(w->world, &esize, &esize_max, 1, HM_INT64, HM_MAX));
  w->wire = esize_max >= 8 ? HM_FLOAT64 : HM_FLOAT32;
  w->wire_size = hm_dtype_size(w->wire);
  w->native = hm_device_dtype(w->dev) == w->wire;
  HM_TRY(hm_pipe_open_wire_comms(w));
  const size_t nc = (size_t)w->N * w->C, vc = (size_t)t->config.V * t->config.C;
  size_t np = 0;
  HM_TRY(hm_pipe_chunk_bufs(w, &np));
  if (hm_device_dtype(w->dev) != w->wire) { /* f32 device on an f64 wire */
    size_t most = nc > vc ? nc : vc;
    if (np > most) most = np;
    w->conv = hm_malloc(most * sizeof(float), "f32 conversion scratch");
    if (!w->conv) return HM_ERR_NOMEM;
  }
  /* every host buffer a conversion goes through is the device's pinned host memory */
  if (!w->native) HM_TRY(hm_device_alloc_host(w->dev, &w->recv_buf, nc * w->wire_size, "received activations"));
  HM_TRY(hm_device_alloc(w->dev, &w->dev_x, nc * hm_device_elem_size(w->dev), "received activations"));
  /* sends in flight at once: at most the micro-batches between two waits, bounded by m; with
   * interleaving a stage's sends of every chunk may wait for later receives, so every send of a
   * step (2 m v) has its own slot and none waits for a slot within the step */
  w->nsends = w->v > 1 ? 2 * m_cap * w->v + 1 : m_cap + 1;
  w->sends = hm_calloc((size_t)w->nsends, sizeof *w->sends, "send slots");
  if (!w->sends) return HM_ERR_NOMEM;
  if (w->p > 1)
    for (int i = 0; i < w->nsends; i++) {
      if (w->native) HM_TRY(hm_device_alloc(w->dev, &w->sends[i].buf, nc * w->wire_size, "send slot"));
      else HM_TRY(hm_device_alloc_host(w->dev, &w->sends[i].buf, nc * w->wire_size, "send slot"));
    }
  if (w->p > 1 && (w->is_first || w->is_last) && w->o->train->config.tied_embeddings) {
    HM_TRY(hm_device_alloc_host(w->dev, &w->tied_mine, vc * w->wire_size, "tied embedding gradient"));
    HM_TRY(hm_device_alloc_host(w->dev, &w->tied_peer, vc * w->wire_size, "tied embedding gradient (peer)"));
  }
  return HM_OK;
}

/* pipe_dev and dp_dev: pipe's and dp's ranks again, with the device that wire data lives on
 * registered (see the top of the file). */
static hm_status hm_pipe_open_wire_comms(hm_pipe *w) {
  HM_TRY(hm_comm_split(w->pipe, 0, hm_comm_rank(w->pipe), &w->pipe_dev, NULL));
  HM_TRY(hm_comm_split(w->dp, 0, hm_comm_rank(w->dp), &w->dp_dev, NULL));
  if (!w->native && !hm_device_is_host(w->dev))
    HM_TRY(hm_device_open(w->wire == HM_FLOAT64 ? "ref:dtype=f64" : "ref", &w->wire_host));
  hm_device *reg = w->wire_host ? w->wire_host : w->dev;
  HM_TRY(hm_comm_register_device(w->pipe_dev, reg));
  for (int b = 0; w->v > 1 && b < w->v; b++) { /* interleaved 1F1B's channels (hm_op_comm) */
    HM_TRY(hm_comm_split(w->pipe, 0, hm_comm_rank(w->pipe), &w->act[b], NULL));
    HM_TRY(hm_comm_register_device(w->act[b], reg));
    HM_TRY(hm_comm_split(w->pipe, 0, hm_comm_rank(w->pipe), &w->grad[b], NULL));
    HM_TRY(hm_comm_register_device(w->grad[b], reg));
  }
  return hm_comm_register_device(w->dp_dev, reg);
}

static void hm_pipe_close_comm(hm_comm_t *c) {
  if (!*c) return;
  hm_comm_register_device(*c, NULL);
  hm_comm_destroy(*c);
  *c = NULL;
}

static void hm_pipe_close_wire_comms(hm_pipe *w) {
  if (w->pipe_dev) {
    hm_comm_register_device(w->pipe_dev, NULL);
    hm_comm_destroy(w->pipe_dev);
  }
  if (w->dp_dev) {
    hm_comm_register_device(w->dp_dev, NULL);
    hm_comm_destroy(w->dp_dev);
  }
  w->pipe_dev = w->dp_dev = NULL;
  for (int b = 0; b < w->v; b++) {
    hm_pipe_close_comm(&w->act[b]);
    hm_pipe_close_comm(&w->grad[b]);
  }
  if (w->wire_host) hm_device_close(w->wire_host);
  w->wire_host = NULL;
}

/* Rank 0 gathers every worker's trace records and writes them in the simulator's format
 * (pid = replica*1000 + stage, tid 0 compute / 1 comm), times from the earliest record. */
static hm_status hm_pipe_write_trace(hm_pipe *w) {
  const int n = hm_comm_size(w->world);
  int64_t mine = w->ntrace, most = 0;
  HM_TRY(hm_comm_allreduce(w->world, &mine, &most, 1, HM_INT64, HM_MAX));
  const size_t rec = sizeof(hm_trace_rec);
  const size_t per = (size_t)(most > 0 ? most : 1) * rec;
  unsigned char *send = hm_calloc(per, 1, "trace records");
  unsigned char *all = w->rank == 0 ? hm_calloc(per * (size_t)n, 1, "trace records") : NULL;
  int64_t *counts = w->rank == 0 ? hm_calloc((size_t)n, sizeof(int64_t), "trace counts") : NULL;
  hm_status st = (!send || (w->rank == 0 && (!all || !counts))) ? HM_ERR_NOMEM : HM_OK;
  /* every rank must enter the collectives even when its own allocation failed */
  if (send && w->ntrace) memcpy(send, w->trace, (size_t)w->ntrace * rec);
  hm_status s2 = hm_comm_gather(w->world, &mine, counts, 1, HM_INT64, 0);
  if (st == HM_OK) st = s2;
  s2 = hm_comm_gather(w->world, send ? send : (unsigned char *)&mine, all, per, HM_UINT8, 0);
  if (st == HM_OK) st = s2;
  if (st == HM_OK && w->rank == 0) {
    int64_t total = 0, t_min = INT64_MAX;
    int nev = 0;
    for (int r = 0; r < n; r++) total += counts[r];
    hm_pipe_event *ev = hm_calloc((size_t)(total > 0 ? total : 1), sizeof *ev, "trace events");
    if (!ev) st = HM_ERR_NOMEM;
    for (int r = 0; st == HM_OK && r < n; r++)
      for (int64_t i = 0; i < counts[r]; i++) {
        const hm_trace_rec *e = (const hm_trace_rec *)(all + (size_t)r * per) + i;
        if (e->start_ns < t_min) t_min = e->start_ns;
      }
    for (int r = 0; st == HM_OK && r < n; r++)
      for (int64_t i = 0; i < counts[r]; i++) {
        const hm_trace_rec *e = (const hm_trace_rec *)(all + (size_t)r * per) + i;
        ev[nev++] = (hm_pipe_event){e->replica, e->stage, e->track, e->kind, e->micro,
                                    (double)(e->start_ns - t_min) * 1e-9, (double)e->dur_ns * 1e-9};
      }
    if (st == HM_OK) st = hm_pipe_trace_write(ev, nev, w->o->trace_path);
    free(ev);
  }
  free(send);
  free(all);
  free(counts);
  return st;
}

/* Every chunk but the one in use (whose fields hm_pipe_free frees with the rest). */
static void hm_pipe_free_chunks(hm_pipe *w) {
  for (int c = 0; c < w->v; c++) {
    if (c == w->cur) continue;
    hm_stage_destroy(w->ck[c].st);
    free(w->ck[c].buckets);
    if (w->dev) hm_device_free_host(w->dev, w->ck[c].stage_buf);
  }
}

static void hm_pipe_free(hm_pipe *w) {
  hm_wait_pending(w);
  if (w->sends) hm_wait_sends(w);
  if (w->sends && w->dev)
    for (int i = 0; i < w->nsends; i++) {
      if (w->native && w->sends[i].buf) hm_device_free(w->dev, w->sends[i].buf);
      else hm_device_free_host(w->dev, w->sends[i].buf);
    }
  hm_pipe_close_wire_comms(w); /* before the devices close */
  free(w->sends);
  free(w->pending);
  free(w->buckets);
  if (w->dev) {
    hm_device_free_host(w->dev, w->stage_buf);
    hm_device_free_host(w->dev, w->tied_mine);
    hm_device_free_host(w->dev, w->tied_peer);
    hm_device_free_host(w->dev, w->recv_buf);
    hm_device_free_host(w->dev, w->tpx.host);
  }
  free(w->conv);
  free(w->inputs);
  free(w->targets);
  free(w->losses);
  free(w->trace);
  if (w->dev && w->dev_x) hm_device_free(w->dev, w->dev_x);
  hm_pipe_free_chunks(w);
  hm_stage_destroy(w->st);
  hm_device_close(w->dev);
  if (w->have_tf) hm_tokfile_close(&w->tf);
  free(w->ops);
  if (w->metrics) fclose(w->metrics);
  if (w->pipe) hm_comm_destroy(w->pipe);
  if (w->dp) hm_comm_destroy(w->dp);
  if (w->tpc) hm_comm_destroy(w->tpc);
  if (w->tied) hm_comm_destroy(w->tied);
}

/* The identity and state fields of this stage's checkpoint after `steps` steps. */
static void hm_pipe_meta(const hm_pipe *w, int steps, hm_ckpt_meta *m) {
  const hm_train_options *t = w->t;
  memset(m, 0, sizeof *m);
  m->config = t->config;
  hm_strcpy(m->model_name, sizeof m->model_name, t->model_name);
  m->layer_first = w->first, m->layer_last = w->last;
  m->step = (uint64_t)steps;
  m->data_seed = t->seed;
  m->data_position = (uint64_t)steps * (uint64_t)w->M * (uint64_t)t->batch;
  m->lr = t->lr, m->beta1 = t->beta1, m->beta2 = t->beta2, m->eps = t->eps;
  m->weight_decay = t->weight_decay, m->grad_clip = t->grad_clip;
  m->batch = t->batch, m->seq_len = w->N / t->batch;
  m->run_id = w->run_id;
  m->stage_index = w->stage, m->stage_count = w->p, m->micro_batches = w->M;
}

/* A tensor-parallel stage's checkpoint: each rank writes its shards to stage<s>.tp<r>.hmc, rank
 * 0 merges them into the unsplit stage<s>.hmc (which any layout can resume from: a rank cuts its
 * shard out), then the shard files go. All tp ranks learn whether every part succeeded. */
static hm_status hm_pipe_dump_tp(hm_pipe *w, const char *dir, const char *path, const hm_ckpt_meta *m) {
  char shard[4200];
  snprintf(shard, sizeof shard, "%s/stage%d.tp%d.hmc", dir, w->stage, w->tp_rank);
  hm_status mine = hm_stage_save(w->st, shard, m);
  int64_t failed = mine != HM_OK, any = 0;
  HM_TRY(hm_comm_allreduce(w->tpc, &failed, &any, 1, HM_INT64, HM_MAX));
  if (w->tp_rank == 0 && !any) {
    const size_t cap = strlen(dir) + 64;
    char *paths = hm_calloc((size_t)w->tp, cap, "shard paths");
    const char *pp[HM_PIPE_MAX_TP];
    for (int r = 0; paths && r < w->tp; r++) {
      snprintf(paths + (size_t)r * cap, cap, "%s/stage%d.tp%d.hmc", dir, w->stage, r);
      pp[r] = paths + (size_t)r * cap;
    }
    mine = paths ? hm_ckpt_merge_tp(pp, w->tp, path) : HM_ERR_NOMEM;
    free(paths);
  }
  int64_t failed2 = mine != HM_OK, any2 = 0;
  HM_TRY(hm_comm_allreduce(w->tpc, &failed2, &any2, 1, HM_INT64, HM_MAX));
  unlink(shard);
  if (mine != HM_OK) return mine;
  if (any || any2) return hm_error(HM_ERR_IO, "%s: another tensor-parallel rank's part failed (see its error)", path);
  return HM_OK;
}

/* This stage's checkpoint "<dir>/stage<s>.hmc" after `steps` steps (replica 0's workers). */
static hm_status hm_pipe_dump(hm_pipe *w, const char *dir, int steps) {
  HM_TRY(hm_make_dirs(dir, 0755, HM_DIR_OUTPUT));
  char path[4200];
  snprintf(path, sizeof path, "%s/stage%d.hmc", dir, w->stage);
  hm_ckpt_meta m;
  hm_pipe_meta(w, steps, &m);
  return w->tp > 1 ? hm_pipe_dump_tp(w, dir, path, &m) : hm_stage_save(w->st, path, &m);
}

/* Interleaved 1F1B's dump: chunk c as "<dir>/stage<j>.hmc" of its virtual stage j = c*p + stage,
 * stage j of p*v: the files a plain run of the virtual stages writes. */
static hm_status hm_pipe_dump_chunks(hm_pipe *w, const char *dir, int steps) {
  HM_TRY(hm_make_dirs(dir, 0755, HM_DIR_OUTPUT));
  for (int c = 0; c < w->v; c++) {
    hm_pipe_use(w, c);
    const int j = c * w->p + w->stage;
    char path[4200];
    snprintf(path, sizeof path, "%s/stage%d.hmc", dir, j);
    hm_ckpt_meta m;
    hm_pipe_meta(w, steps, &m);
    m.stage_index = j, m.stage_count = w->p * w->v;
    HM_TRY(hm_stage_save(w->st, path, &m));
  }
  return HM_OK;
}

/* After every step with periodic checkpoints (--ckpt-every): at a checkpoint step replica 0's
 * workers snapshot their stage into host memory (the first phase; ckpt_agent.c persists it in
 * the background); at every step the agent follows the outstanding checkpoint to its manifest. */
/* A periodic checkpoint that failed to persist (every worker gets the same HM_ERR_IO) is
 * skipped with a warning: a full or failing disk costs that checkpoint, not the run. */
static hm_status hm_pipe_ckpt_skipped(hm_status st, const hm_pipeline_options *o, hm_pipeline_result *res) {
  if (st != HM_ERR_IO) return st;
  res->ckpt_skipped++;
  if (o->on_warning) o->on_warning(hm_last_error(), o->warning_user);
  return HM_OK;
}

static hm_status hm_pipe_checkpoint(hm_pipe *w, int done, int kind) {
  void *image = NULL;
  size_t bytes = 0;
  hm_ckpt_meta m;
  hm_pipe_meta(w, done, &m);
  if (w->tp > 1) m.tp_rank = w->tp_rank, m.tp_size = w->tp; /* this rank's own shard */
  if (kind != HM_SNAP_NONE && w->replica == 0) HM_TRY(hm_stage_snapshot(w->st, w->dev, &m, &image, &bytes));
  return hm_ckpt_agent_step(w->agent, done, kind, m.data_position, image, bytes);
}

/* What the snapshot after `done` of `steps` steps is: a disk checkpoint every ckpt_every steps,
 * memory only every mem_every steps between them, none after the last step (the final dump). */
static int hm_pipe_snap_kind(const hm_pipe *w, int done, int steps) {
  if (done >= steps) return HM_SNAP_NONE;
  if (done % w->t->ckpt_every == 0) return HM_SNAP_DISK;
  return w->o->mem_every > 0 && done % w->o->mem_every == 0 ? HM_SNAP_MEMORY : HM_SNAP_NONE;
}

/* Predicted step time of a split: each replica's 1F1B takes about (m + p - 1) micro-batch
 * paces of its slowest stage; the step waits for the slowest replica. */
static double hm_split_time(const int *m, const double *pace, int R, int p) {
  double worst = 0;
  for (int r = 0; r < R; r++) {
    double t = (m[r] + p - 1) * pace[r];
    if (t > worst) worst = t;
  }
  return worst;
}

/* After a step: every rank contributes its forward+backward time per micro-batch; all compute
 * the same new split from the same numbers (so they agree without a further message), and it
 * replaces the current one when it is predicted at least 2% faster. The first step (warm-up)
 * is not used; the pace is smoothed (half old, half new) so one noisy step moves little. */
static hm_status hm_pipe_rebalance(hm_pipe *w, int step, const hm_step_out *so, int *changed) {
  *changed = 0;
  const int R = w->R, p = w->p;
  double mine[HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES] = {0}, all[HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES];
  mine[w->replica * p + w->stage] = so->fb_s / (w->m > 0 ? w->m : 1);
  /* MAX: a stage's tensor-parallel ranks all report (each slot holds one stage's values) */
  HM_TRY(hm_comm_allreduce(w->world, mine, all, (size_t)(R * p), HM_FLOAT64, HM_MAX));
  if (step == w->start_step) return HM_OK;
  for (int r = 0; r < R; r++) {
    double t = 0;
    for (int s = 0; s < p; s++) t = all[r * p + s] > t ? all[r * p + s] : t;
    if (!(t > 0)) return HM_OK; /* nothing measured (cannot happen with m >= 1): keep the split */
    w->pace[r] = w->paced ? 0.5 * w->pace[r] + 0.5 * t : t;
  }
  w->paced = 1;
  int m[HM_PIPE_MAX_REPLICAS];
  for (int r = 0; r < R; r++) m[r] = 1;
  for (int k = R; k < w->M; k++) { /* each further micro-batch to the replica that finishes first with it */
    int best = 0;
    for (int r = 1; r < R; r++)
      if ((m[r] + p) * w->pace[r] < (m[best] + p) * w->pace[best]) best = r;
    m[best]++;
  }
  if (hm_split_time(m, w->pace, R, p) > 0.98 * hm_split_time(w->micro, w->pace, R, p)) return HM_OK;
  int nslots = 0, nops = 0;
  hm_pipe_op *ops = NULL;
  HM_TRY(hm_pipe_stage_ops(p, 1, m[w->replica], w->o->stage_layers, 1,
                            w->o->layers_per_bucket > 0 ? w->o->layers_per_bucket : 1,
                            w->o->train->config.tied_embeddings, w->stage, &ops, &nops, &nslots));
  if (nslots > w->nslots) { /* cannot happen: the stage was sized for the largest share */
    free(ops);
    return hm_error(HM_ERR_INTERNAL, "rebalancing needs %d activation slots, the stage has %d", nslots, w->nslots);
  }
  free(w->ops);
  w->ops = ops, w->nops = nops;
  w->micro_off = 0;
  for (int r = 0; r < R; r++) {
    if (r < w->replica) w->micro_off += m[r];
    w->micro[r] = m[r];
  }
  w->m = m[w->replica];
  *changed = 1;
  return HM_OK;
}

hm_status hm_pipeline_run(const hm_pipeline_options *o, hm_comm_t world, hm_pipeline_result *res) {
  hm_pipeline_result local;
  if (!res) res = &local;
  memset(res, 0, sizeof *res);
  if (!world) return hm_error(HM_ERR_INVALID_ARG, "pipeline: no communicator");
  hm_pipe w;
  memset(&w, 0, sizeof w);
  w.o = o;
  w.t = o ? o->train : NULL;
  w.world = world;
  hm_status st = hm_pipe_setup(&w);
  hm_failslow fs;
  memset(&fs, 0, sizeof fs);
  if (st == HM_OK) st = hm_hb_start(w.rank, w.t->device);
  if (st == HM_OK) st = hm_failslow_init(&fs, w.R * w.p);
  const int reporter = w.replica == 0 && w.is_last && w.tp_rank == 0; /* holds replica 0's losses */
  if (st == HM_OK && reporter) st = hm_run_open_metrics(w.t, o->metrics_path, &w.metrics);
  const int steps = w.t ? (w.t->stop_after > 0 && w.t->stop_after < w.t->steps ? w.t->stop_after : w.t->steps) : 0;
  const int trace_steps = o && o->trace_steps > 0 ? o->trace_steps : 1;
  double timed_s = 0, t_start = hm_now_s();
  int timed_steps = 0;
  double busy_sum[HM_PIPE_MAX_STAGES] = {0}, tp_sum[HM_PIPE_MAX_STAGES] = {0};
  const int any_tp = hm_pipe_any_tp(o);
  uint64_t tokens = 0;
  res->steps_done = w.start_step;
  for (int step = w.start_step; st == HM_OK && step < steps; step++) {
    w.tracing = o->trace_path && step >= steps - trace_steps && w.tp_rank == 0;
    hm_hb_waiting(0);
    hm_fault_point(HM_FAULT_STEP, w.rank, step);
    const double ts = hm_now_s();
    w.tpx.ns = 0;
    hm_step_out so;
    st = hm_pipe_step(&w, step, &so);
    if (st != HM_OK) break;
    hm_fault_slow_step(w.rank, step, &so.busy_s, &so.fb_s);
    hm_hb_waiting(1); /* the step's remaining collectives */
    /* the step's loss over all M micro-batches: the last stages hold it (each tensor-parallel
     * rank the same; rank 0 of each counts) */
    double loss_sum = w.tp_rank == 0 ? so.loss_sum : 0, loss_all = 0;
    if (w.R > 1) st = hm_comm_allreduce(w.world, &loss_sum, &loss_all, 1, HM_FLOAT64, HM_SUM);
    else loss_all = loss_sum;
    if (st != HM_OK) break;
    const double dt = hm_now_s() - ts;
    /* slowest worker's step time and every worker's compute time (at 1 + its world rank
     * replica*p + stage, so replica 0's stages come first), all in one call */
    /* then every worker's predicted compute per micro-batch (fail-slow) at 1 + RP + ..., and
     * each stage's tensor-parallel allreduce time at 1 + 2 RP + ... */
    double stat[1 + 3 * HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES];
    double stat_max[1 + 3 * HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES];
    const int RP = w.R * w.p;
    memset(stat, 0, sizeof(double) * (size_t)(1 + 3 * RP));
    stat[0] = dt;
    stat[1 + w.replica * w.p + w.stage] = so.busy_s;
    stat[1 + RP + w.replica * w.p + w.stage] = o->expected_busy_s;
    stat[1 + 2 * RP + w.replica * w.p + w.stage] = (double)w.tpx.ns * 1e-9;
    st = hm_comm_allreduce(w.world, stat, stat_max, (size_t)(1 + 3 * RP), HM_FLOAT64, HM_MAX);
    if (st != HM_OK) break;
    tokens += (uint64_t)w.M * (uint64_t)w.N;
    if (step > w.start_step || steps == w.start_step + 1) { /* the first step warms caches and allocators up */
      timed_s += stat_max[0];
      timed_steps++;
      for (int s = 0; s < w.p; s++) busy_sum[s] += stat_max[1 + s], tp_sum[s] += stat_max[1 + 2 * RP + s];
    }
    int split_used[HM_PIPE_MAX_REPLICAS]; /* the split this step ran with */
    memcpy(split_used, w.micro, sizeof split_used);
    if (step > w.start_step)
      res->slow_reports += hm_failslow_pipe_step(&fs, o, w.rank, step + 1, w.p, split_used, stat_max + 1);
    if (o->rebalance && w.R > 1) {
      int changed = 0;
      st = hm_pipe_rebalance(&w, step, &so, &changed);
      if (st != HM_OK) break;
      res->rebalances += changed;
    }
    float val_loss = 0;
    const int has_val = hm_run_eval_due(w.t, step + 1, steps);
    if (has_val) { /* timed by the launcher's watchdog as its own phase */
      hm_hb_phase(HM_HB_EVAL);
      st = hm_pipe_eval(&w, &val_loss);
      hm_hb_phase(HM_HB_STEP);
      if (st != HM_OK) break;
    }
    res->steps_done = step + 1;
    res->last_loss = (float)(loss_all / w.M);
    if (reporter) {
      hm_train_progress pr;
      memset(&pr, 0, sizeof pr);
      pr.step = step + 1, pr.steps = w.t->steps;
      pr.loss = res->last_loss;
      pr.lr = so.lr;
      pr.grad_norm = (float)sqrt(so.sumsq);
      pr.has_val = has_val, pr.val_loss = val_loss;
      pr.elapsed_s = hm_now_s() - t_start;
      pr.tokens_per_s = (double)tokens / pr.elapsed_s;
      pr.eta_s = (double)(steps - step - 1) * pr.elapsed_s / (double)(step + 1 - w.start_step);
      if (w.metrics) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "step", pr.step);
        cJSON_AddNumberToObject(j, "loss", pr.loss);
        cJSON_AddNumberToObject(j, "lr", pr.lr);
        cJSON_AddNumberToObject(j, "grad_norm", pr.grad_norm);
        cJSON_AddNumberToObject(j, "tokens_per_s", pr.tokens_per_s);
        cJSON_AddNumberToObject(j, "step_time_s", stat_max[0]);
        cJSON_AddNumberToObject(j, "elapsed_s", pr.elapsed_s);
        if (has_val) cJSON_AddNumberToObject(j, "val_loss", val_loss);
        if (w.agent) cJSON_AddNumberToObject(j, "ckpt_s", w.snap_s);
        cJSON *busy = cJSON_AddArrayToObject(j, "stage_busy_s");
        for (int s = 0; s < w.p; s++) cJSON_AddItemToArray(busy, cJSON_CreateNumber(stat_max[1 + s]));
        if (any_tp) { /* replica 0's stages: time in tensor-parallel allreduces (inside stage_busy_s) */
          cJSON *tpa = cJSON_AddArrayToObject(j, "stage_tp_allreduce_s");
          for (int s = 0; s < w.p; s++) cJSON_AddItemToArray(tpa, cJSON_CreateNumber(stat_max[1 + 2 * RP + s]));
        }
        if (w.R > 1) {
          cJSON *rb = cJSON_AddArrayToObject(j, "replica_busy_s");
          for (int r = 0; r < w.R; r++) {
            cJSON *row = cJSON_CreateArray();
            for (int s = 0; s < w.p; s++) cJSON_AddItemToArray(row, cJSON_CreateNumber(stat_max[1 + r * w.p + s]));
            cJSON_AddItemToArray(rb, row);
          }
          cJSON *mi = cJSON_AddArrayToObject(j, "micro");
          for (int r = 0; r < w.R; r++) cJSON_AddItemToArray(mi, cJSON_CreateNumber(split_used[r]));
        }
        st = hm_run_metrics_line(w.metrics, j);
        if (st != HM_OK) break;
      }
      if (w.t->on_progress) w.t->on_progress(&pr, w.t->user);
    }
    const int done = step + 1; /* the last step's state is the final dump below */
    const int kind = w.agent ? hm_pipe_snap_kind(&w, done, steps) : HM_SNAP_NONE;
    if (kind != HM_SNAP_NONE) hm_hb_waiting(0);
    hm_hb_step_phase(done, kind != HM_SNAP_NONE ? HM_HB_CKPT : HM_HB_STEP);
    if (w.agent) {
      if (kind == HM_SNAP_DISK) hm_fault_point(HM_FAULT_CKPT, w.rank, done);
      const double t_snap = hm_now_s();
      st = hm_pipe_checkpoint(&w, done, kind);
      w.snap_s = hm_now_s() - t_snap;
      st = hm_pipe_ckpt_skipped(st, o, res);
      hm_hb_phase(HM_HB_STEP);
    }
  }
  hm_hb_phase(HM_HB_FINAL); /* the last writes and the final dump are no step */
  if (st == HM_OK && w.agent) st = hm_pipe_ckpt_skipped(hm_ckpt_agent_finish(w.agent), o, res);
  hm_failslow_free(&fs);
  for (int r = 0; r < w.R && r < HM_PIPE_MAX_REPLICAS; r++) res->micro[r] = w.micro[r];
  if (timed_steps > 0) {
    res->step_time_s = timed_s / timed_steps;
    res->tokens_per_s = (double)w.M * (double)w.N / res->step_time_s;
    for (int s = 0; s < w.p && s < HM_PIPE_MAX_STAGES; s++) {
      res->stage_busy_s[s] = busy_sum[s] / timed_steps;
      res->stage_tp_s[s] = tp_sum[s] / timed_steps;
    }
  }
  if (st == HM_OK && o->trace_path) st = hm_pipe_write_trace(&w);
  if (st == HM_OK && o->dump_dir && w.replica == 0)
    st = w.v > 1 ? hm_pipe_dump_chunks(&w, o->dump_dir, res->steps_done) : hm_pipe_dump(&w, o->dump_dir, res->steps_done);
  hm_ckpt_agent_close(w.agent, st == HM_OK); /* a run that ended well needs no peer copies */
  w.agent = NULL;
  st = hm_pipe_ctx(st, &w);
  if (st != HM_OK) { /* peers blocked on this worker fail fast instead of waiting out deadlines */
    if (w.pipe) hm_comm_abort(w.pipe);
    if (w.dp) hm_comm_abort(w.dp);
    if (w.tpc) hm_comm_abort(w.tpc);
    if (w.tied) hm_comm_abort(w.tied);
    for (int b = 0; b < w.v; b++) {
      if (w.act[b]) hm_comm_abort(w.act[b]);
      if (w.grad[b]) hm_comm_abort(w.grad[b]);
    }
    hm_comm_abort(world);
  }
  hm_pipe_free(&w);
  hm_hb_stop(); /* after the final dump: a long write is not silence */
  return st;
}
