/* Planner internals shared by stepcost.c, search.c and planio.c. Not a public header. */
#ifndef HETMIX_PLAN_INTERNAL_H
#define HETMIX_PLAN_INTERNAL_H

#include "hetmix/plan.h"

/* Gradient buckets of a plan's schedule: one layer each (a layer of a large model is already
 * hundreds of MB; the simulator and the runtime use the same value). */
#define HM_PLAN_LAYERS_PER_BUCKET 1
/* The runtime issues each gradient bucket during the last backward (hm_pipeline_options
 * sync_after_backward = 0): the simulator times that overlap. */
#define HM_PLAN_OVERLAP_SYNC 1

/* Per-layer figures of one (device type, tp, micro-batch size), before the split. */
typedef struct hm_layer_costs {
  int type, tp;
  int64_t mb;
  int ok;             /* 0: tp does not divide some layer's tp_divides or exceeds a host */
  double *fwd, *bwd;  /* (n) seconds per micro-batch (tp allreduces and recompute included) */
  double *out_bytes;  /* (n) bytes per device of the layer's output for one micro-batch */
  double *params;     /* (n) parameters per device, tied copy included (counted when p > 1) */
  double *shared;     /* (n) of which the tied copy */
  double *act;        /* (n) bytes per device per micro-batch held for backward */
  double *opt;        /* (n) optimizer seconds */
  double reserve;     /* bytes per device of one layer recomputed at a time (full recompute) */
  double capacity;    /* usable bytes per device */
} hm_layer_costs;

/* GEMM shape model of one device type (gemmcost.c, docs/plan.md "Shape-aware compute"). */
typedef struct hm_gemm_device {
  double peak;        /* FLOP/s of the compute dtype */
  double efficiency;  /* fraction of peak a full wave of whole tiles reaches */
  double membw;       /* bytes/s */
  double elem_bytes;  /* bytes per operand element */
  int units, tile_m, tile_n;
} hm_gemm_device;

/* Fills gemm_units/tile_m/tile_n from the type's name when the spec gave none (known GPUs);
 * leaves them 0 for an unknown type. */
void hm_device_type_gemm_defaults(hm_device_type *dt);
int hm_gemm_model_known(const hm_device_type *dt);
/* Seconds of `batch` GEMMs of M x N x K (C[M,N] = A[M,K] B[K,N]): waves of tiles, or the
 * operands' bytes over memory bandwidth when that is longer. */
double hm_gemm_time(const hm_gemm_device *g, double M, double N, double K, double batch);
/* Achieved fraction of peak of those GEMMs. */
double hm_gemm_efficiency(const hm_gemm_device *g, double M, double N, double K, double batch);
/* GEMM seconds of one transformer block (is_head 0) or LM head (1) of cfg for a micro-batch
 * of mb samples on one of tp tensor-parallel devices: forward, and backward (input and weight
 * gradients) without recompute. */
void hm_block_gemm_times(const hm_gemm_device *g, const hm_spec_model_config *cfg, int is_head,
                         double mb, int tp, double *fwd, double *bwd);

hm_status hm_layer_costs_init(const hm_plan_inputs *in, int type, int tp, int64_t mb,
                              hm_layer_costs *out);
void hm_layer_costs_free(hm_layer_costs *c);

/* Bytes per device of weights, gradients, master copy and optimizer state for `params`
 * parameters per device, with `dp` data-parallel replicas (ZeRO-1 shards the last two). */
double hm_static_bytes(const hm_train *t, double params, int dp);

/* Link between consecutive stages of types ta -> tb (docs/plan.md: same host when a replica's
 * stages of one type fit one host, else the NIC share of one device). */
hm_link hm_stage_link(const hm_plan_inputs *in, int ta, int tb, int same_host);
/* NIC bandwidth one device gets when every device of its host transfers at once. */
hm_link hm_device_nic(const hm_cluster *c, int type);
/* Gradient-sync model for a plan using `types_mask` device types and `nranks` replicas. */
hm_sync_model hm_plan_sync_model(const hm_plan_inputs *in, unsigned types_mask, int nranks,
                                 int64_t devices);
/* The pool holding every device of type k; -1 when they sit in several pools or in none. */
int hm_type_pool(const hm_cluster *c, int type);

/* One bucket's allreduce under m (m->ngroups > 1), in the parts that the link between pools
 * divides: seconds before the crossing (the reduce-scatter inside the pools, latencies), bytes
 * each crossing device moves over that link, seconds after (the allgather), and the devices
 * that cross per replica holding the bucket (per tensor-parallel rank: R/P of the R replicas
 * for the hierarchical allreduce, one for the flat ring, whose ring crosses between pools once
 * each way). The algorithm is the one hm_sync_allreduce_time takes (the faster at the `outer`
 * share), and at that share pre + bytes / rate + post is its time, rate being outer.bandwidth
 * (hierarchical) or min(link, outer) (flat ring). */
typedef struct hm_sync_parts {
  double pre, bytes, post, crossing;
} hm_sync_parts;
void hm_sync_split(const hm_sync_model *m, double bytes, hm_sync_parts *out);

/* A transfer on a track that shares one link with the other tracks' (linkshare.c): it starts at
 * max(ready, end of the track's previous job), takes `pre` seconds, then moves `bytes` per device
 * over the shared link with `devices` devices, then `post` seconds. */
typedef struct hm_share_job {
  double ready, pre, bytes, devices, post;
  double start, end; /* set by hm_share_run */
} hm_share_job;

/* Runs jobs[first[i] .. first[i+1]) on track i, one after another, from track_free[i] on. While
 * moving bytes, every device gets capacity / (devices moving bytes at that moment, at least 1)
 * bytes/s, at most `cap` (cap <= 0: no cap); capacity > 0. Deterministic; O(jobs x tracks). */
hm_status hm_share_run(hm_share_job *jobs, const int *first, const double *track_free, int ntracks,
                       double capacity, double cap);

/* Number of tensor-parallel groups of size tp of type k (each inside one host). */
int64_t hm_type_groups(const hm_cluster *c, int type, int tp);
/* Largest number of devices of type k in one host. */
int hm_type_per_host_max(const hm_cluster *c, int type);

/* Refinement by simulation (search_refine.c): moves a layer between two stages of one class
 * (neighbours only unless `ranges`), a micro-batch per replica between two classes, or swaps
 * two classes, while the simulated step gets shorter within memory; at most max_sims
 * simulations. p must be predicted; it stays predicted. *nsim (may be NULL) counts them. */
hm_status hm_plan_refine(const hm_plan_inputs *in, hm_plan *p, int ranges, int max_sims,
                         int64_t *nsim);

/* Interleaved 1F1B in the search (search_interleave.c): v = 2..HM_SEARCH_MAX_CHUNKS chunks per
 * device stage, for classes of at most HM_SEARCH_INTERLEAVE_MAX_MICRO micro-batches (an
 * interleaved class is simulated op by op). */
#define HM_SEARCH_MAX_CHUNKS HM_SEARCH_MAX_CHUNKS_DEFAULT
#define HM_SEARCH_INTERLEAVE_MAX_MICRO 256
/* Replaces predicted plan p by its fastest interleaved variant within memory (every class that
 * can, with the same v, layers split again by the DP over the virtual stages), when one
 * simulates faster; p unchanged otherwise. maxp: virtual stages at most; v <= max_chunks.
 * *nsim counts. */
hm_status hm_plan_interleave(const hm_plan_inputs *in, hm_plan *p, int maxp, int max_chunks,
                             int64_t *nsim);

/* Whether class c's device stages can run v >= 2 chunks in the search (p >= 2, p*v <= maxp and
 * the layers, at most HM_SEARCH_INTERLEAVE_MAX_MICRO micro-batches). */
int hm_plan_class_chunks_fit(const hm_plan_class *c, int v, int nlayers, int maxp);
/* Class c (plain or interleaved) as v >= 2 chunks of its device stages, its layers split again
 * by the DP over the p*v virtual stages (as hm_plan_interleave splits them); with `balance`, then
 * moved one at a time across chunk boundaries to even the sums of each device's chunks without
 * raising the largest chunk (search_interleave.c, balance_devices). */
hm_status hm_plan_class_rechunk(const hm_plan_inputs *in, int64_t mb, hm_plan_class *c, int v,
                                int balance);

/* Heterogeneous data parallelism with a schedule per class (search_hdp.c): for every choice of
 * one plan or none per type (type_plans[k][0..nplans[k]-1]: single-type plans of type k, plain,
 * predicted), at least two types, one replica class per type with the template and replicas of
 * the chosen plan, the micro-batches split by each class's simulated speed at its share, each
 * class interleaved on its own (v <= max_chunks) when that is faster. *best: the fastest within
 * memory (*found 1), simulated whole. *nsim counts simulations. */
hm_status hm_plan_hetero_dp(const hm_plan_inputs *in, const hm_plan *const *type_plans,
                            const int *nplans, int ntypes, int maxp, int max_chunks,
                            hm_plan *best, int *found, int64_t *nsim);

#endif
