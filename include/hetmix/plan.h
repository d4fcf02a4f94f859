/* hetmix planner core: the per-stage op lists of a 1F1B pipeline step ("one schedule, two
 * consumers": the simulator times these lists, the pipeline runtime executes them), the
 * event-driven simulator over abstract stage costs, and the exact layer-split dynamic program.
 *
 * Nothing here knows about cluster or model specs: callers give seconds, bytes and links.
 * The spec-aware part (cost of a step, search, plan.json) follows in the second half. */
#ifndef HETMIX_PLAN_H
#define HETMIX_PLAN_H

#include <stdio.h>

#include "hetmix/cost.h"
#include "hetmix/spec.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Schedule: each stage's ordered op list for one training step of one pipeline replica. */

typedef enum hm_op_kind {
  HM_OP_FWD = 0,       /* forward of micro-batch `micro` through the stage's layers */
  HM_OP_BWD,           /* backward of micro-batch `micro` (frees its saved activations) */
  HM_OP_SEND_ACT,      /* send micro's output activations to stage `peer` (= s+1), non-blocking */
  HM_OP_RECV_ACT,      /* wait for micro's input activations from stage `peer` (= s-1) */
  HM_OP_SEND_GRAD,     /* send micro's input gradient to stage `peer` (= s-1), non-blocking */
  HM_OP_RECV_GRAD,     /* wait for micro's output gradient from stage `peer` (= s+1) */
  HM_OP_ALLREDUCE,     /* data-parallel allreduce of the gradients of layers [layer_begin,layer_end) */
  HM_OP_TIED_EMB_SYNC, /* sum the tied embedding's gradient between first and last stage (`peer`) */
  HM_OP_GRAD_NORM,     /* global gradient norm (one scalar allreduce over every rank) */
  HM_OP_OPTIMIZER,     /* optimizer step on the stage's parameters */
  HM_OP_KIND_COUNT
} hm_op_kind;

typedef struct hm_op {
  hm_op_kind kind;
  int micro;       /* micro-batch index for FWD/BWD/SEND_ and RECV_; -1 otherwise */
  int peer;        /* peer stage for SEND_, RECV_ and TIED_EMB_SYNC; -1 otherwise */
  int layer_begin; /* layers the op covers: the stage's range, or an ALLREDUCE bucket's */
  int layer_end;
  int chunk;       /* model chunk the op serves (interleaved: virtual stage chunk*p + s); 0 else */
} hm_op;

typedef struct hm_stage_ops {
  int nops;
  hm_op *ops;
} hm_stage_ops;

typedef struct hm_schedule {
  int nstages, nmicro; /* nstages: devices (op lists) */
  hm_stage_ops *stages; /* (nstages) */
} hm_schedule;

typedef struct hm_schedule_config {
  int nstages;             /* p >= 1 */
  int nmicro;              /* m >= 1 micro-batches of this replica */
  const int *stage_layers; /* (p+1) bounds: stage s holds layers [b[s], b[s+1]); b[0] = 0 */
  int data_parallel;       /* 1: emit ALLREDUCE buckets (more than one replica holds each layer) */
  int layers_per_bucket;   /* >= 1; buckets go from the last layer of the stage backwards */
  int tied_embeddings;     /* 1: the first and last layer share weights (TIED_EMB_SYNC when p > 1) */
  int nchunks;             /* v: model chunks per stage (interleaved 1F1B when > 1; 0 or 1: plain
                              1F1B). Then stage_layers has p*v+1 bounds: virtual stage j = c*p + s
                              (chunk c of stage s) holds layers [b[j], b[j+1]) */
} hm_schedule_config;

/* Interleaved lists are generated op by op like plain ones, but the simulator runs them to the end
 * (no extrapolation): at most this many micro-batches per replica with nchunks > 1. */
#define HM_SCHEDULE_INTERLEAVED_MAX_MICRO 4096
/* Gradient buckets of stages [layer_begin, layer_end), per layers each: bucket q (0-based, in the
 * order backprop completes them) is [*lo, *hi), bucket 0 ending at layer_end. The schedule's
 * ALLREDUCE ops, the simulator and the runtime all take their buckets from here. */
int hm_grad_bucket_count(int layer_begin, int layer_end, int per);
void hm_grad_bucket(int layer_begin, int layer_end, int per, int q, int *lo, int *hi);

/* 1F1B (PipeDream-flush): stage s runs min(p-1-s, m) warm-up forwards, then alternates one
 * forward and one backward, then drains the remaining backwards; then gradient buckets, tied
 * embedding sync, gradient norm and optimizer. With nchunks = v > 1, interleaved 1F1B (Megatron-LM's
 * virtual pipeline stages, Narayanan et al. SC'21): stage s holds chunks c = 0..v-1 (virtual stages
 * c*p + s); forwards go through the chunks in groups of p micro-batches (the last group holds
 * p + m mod p, or m when m < p), backwards the same with the chunks reversed; warm-up
 * min(2(p-1-s) + (v-1)g, mv) forwards, g the largest group; sends between virtual stages c*p+p-1 and (c+1)*p go from
 * stage p-1 to stage 0 (and gradients back); buckets per chunk, last chunk first; one optimizer op
 * per chunk. Needs p >= 2 and m <= HM_SCHEDULE_INTERLEAVED_MAX_MICRO. */
hm_status hm_schedule_1f1b(const hm_schedule_config *cfg, hm_schedule *out);
/* The same lists one op at a time (hm_schedule_1f1b is built from these; the simulator reads them
 * so, without memory that grows with the micro-batch count). Check cfg once with
 * hm_schedule_1f1b_check; then stage s has hm_schedule_1f1b_nops ops, op i (0 <= i < nops) is
 * hm_schedule_1f1b_op. */
hm_status hm_schedule_1f1b_check(const hm_schedule_config *cfg);
int64_t hm_schedule_1f1b_nops(const hm_schedule_config *cfg, int s);
hm_op hm_schedule_1f1b_op(const hm_schedule_config *cfg, int s, int64_t i);
/* The steady state of stage s: ops [*begin, *begin + *nperiods * *period_ops) repeat the first
 * *period_ops of them with every micro-batch index one higher per period. Period j of a stage is
 * the forward of micro-batch w+j and the backward of micro-batch j, so period j of every stage
 * holds the backward of micro-batch j. */
void hm_schedule_1f1b_steady(const hm_schedule_config *cfg, int s, int64_t *begin, int *period_ops,
                             int64_t *nperiods);
void hm_schedule_free(hm_schedule *s);
const char *hm_op_kind_name(hm_op_kind k);
/* Largest number of micro-batches whose activations the stage holds at once (FWD done, BWD not). */
int hm_schedule_max_inflight(const hm_schedule *s, int stage);

/* ---------------------------------------------------------------------------------------------
 * Simulator: times the op lists of one or more replica classes (a class = identical replicas with
 * the same stages, split and micro-batch count; heterogeneous data parallelism = several classes).
 * Compute ops are serial per stage ("compute" track); sends occupy the sender's link to its peer
 * ("comm" track) and a RECV completes when the matching transfer has arrived. */

/* Gradient allreduce among the replicas that hold a layer: a ring/tree over `link` when
 * ngroups <= 1, else hierarchical: reduce-scatter inside each of ngroups groups over `link`,
 * allreduce of the shards across groups over `outer`, allgather inside; or, where faster (as
 * hmcomm's tuner picks), the flat ring over all of them at the slower link's pace. */
typedef struct hm_sync_model {
  int nranks;    /* replicas taking part (all classes together) */
  hm_link link;  /* link between replicas (inter-host NIC, or intra-host when all on one host) */
  int ngroups;   /* pools the replicas span (hierarchical when > 1) */
  hm_link outer; /* link between pools, the share of one device when every device of a pool
                    crosses at once (the bandwidth divided by the devices per pool) */
  double pool_bandwidth; /* the link between pools as a whole (bytes/s, one direction): the
                            simulator shares it among the devices crossing at each moment
                            (docs/plan.md, section 2); 0: every crossing gets `outer` */
} hm_sync_model;

/* Seconds to allreduce `bytes` under the sync model, with hm_cost_best_algo at each level. */
double hm_sync_allreduce_time(const hm_sync_model *m, double bytes);

typedef struct hm_sim_stage {
  int layer_begin, layer_end; /* layers of this stage */
  int tp;                     /* tensor-parallel degree (gradient shard = layer bytes / tp) */
  double fwd, bwd;            /* seconds for one micro-batch (recompute included in bwd) */
  const double *layer_bwd;    /* (layer_end - layer_begin) relative backward time of each layer
                                 (bwd is split in these proportions), or NULL: equal shares */
  double act_bytes;           /* bytes of one micro-batch's output sent to stage s+1 per device */
  hm_link link_next;          /* link to stage s+1 (unused on the last stage) */
  hm_device_xfer staging;     /* staging copies of the stage's device type (all 0: host memory):
                                 added to its sends, receives, allreduces and tied syncs */
  int in_pool;                /* 1 + index of the one pool holding the stage's devices; 0: not
                                 known or several (its buckets cross as `sync` says) */
  double optimizer;           /* seconds of the optimizer step */
  double mem_static;          /* bytes per device: weights + gradients + optimizer state */
  double mem_act;             /* bytes per device per micro-batch held between FWD and BWD */
  double mem_capacity;        /* bytes per device available */
} hm_sim_stage;

typedef struct hm_sim_class {
  int nreplicas; /* identical replicas of this class */
  int nstages;   /* virtual stages p*v in model order (p devices when nchunks <= 1) */
  int nmicro;
  hm_sim_stage *stages; /* (nstages) virtual stage j runs on device stage j % p */
  int nchunks;   /* v: chunks per device (interleaved 1F1B when > 1; 0 or 1: plain 1F1B). The
                    device's memory is the sum of its chunks' mem_static plus the activations it
                    holds; tp, staging, capacity come from its first chunk */
} hm_sim_class;

typedef struct hm_sim_input {
  int nclasses;
  const hm_sim_class *classes;
  int nlayers;
  const double *layer_grad_bytes; /* (nlayers) gradient bytes of each whole layer */
  hm_sync_model sync;             /* nranks = sum of nreplicas (set by the caller) */
  int layers_per_bucket;
  int overlap_sync;               /* 1: a bucket may start during the stage's last backward, once
                                     that backward is done with the bucket's layers (the runtime's
                                     default); 0: after the last backward */
  int tied_embeddings;            /* layer 0 and layer nlayers-1 share weights */
  hm_link tied_link;              /* link between a replica's first and last stage */
  double grad_norm_time;          /* seconds of the scalar allreduce */
  int full_micro;                 /* classes with more micro-batches are extrapolated once their
                                     steady state repeats (docs/plan.md, section 4); 0: default
                                     HM_SIM_FULL_MICRO; INT_MAX: always every op */
} hm_sim_input;

/* Classes with up to this many micro-batches are simulated op by op to the end (and traced in
 * full); beyond it the simulator stops at the first repeat of the 1F1B steady state and shifts
 * the rest, so its time and memory do not grow with the micro-batch count. */
#define HM_SIM_FULL_MICRO 256
/* Extrapolation keeps O(stages^2) numbers; classes of more stages are simulated op by op. */
#define HM_SIM_EXTRAPOLATE_MAX_STAGES 256

/* Per virtual stage: with nchunks > 1 each entry holds its device's figures (busy, idle, end, memory
 * are the device's, shared by its chunks). */
typedef struct hm_sim_stage_result {
  double busy;       /* seconds of compute ops (FWD, BWD, OPTIMIZER) */
  double comm;       /* seconds the stage's comm track was busy (sends, allreduce, syncs) */
  double idle;       /* step_time - busy */
  double end;        /* when the stage's last op ended */
  int max_inflight;  /* micro-batches held at once, from the op list */
  double mem_peak;   /* mem_static + max_inflight * mem_act */
} hm_sim_stage_result;

typedef struct hm_sim_result {
  double step_time;
  double bubble_fraction;     /* 1 - sum busy / (stages * step_time), over all classes' stages */
  double mem_peak_max;        /* bytes, the largest over every stage of every class */
  int over_memory;            /* 1 if some stage's peak exceeds its capacity */
  int64_t periods_skipped;    /* steady periods extrapolated instead of simulated, all classes */
  int nclasses;
  int *nstages;               /* (nclasses) */
  hm_sim_stage_result **stages; /* [class][stage] */
} hm_sim_result;

/* A timed event for the trace (Chrome/Perfetto "X" events). */
typedef struct hm_sim_event {
  int cls, stage, track; /* track 0 = compute, 1 = comm */
  hm_op_kind kind;
  int micro;
  double start, dur;
} hm_sim_event;

typedef struct hm_sim_trace {
  int nevents, cap;
  hm_sim_event *events;
} hm_sim_trace;

/* Simulates one step. trace may be NULL (for an extrapolated class it holds the periods simulated,
 * not the skipped ones). Time and memory do not grow with the micro-batch count once the steady
 * state repeats. On HM_OK, result must be freed with hm_sim_result_free. */
hm_status hm_simulate(const hm_sim_input *in, hm_sim_result *result, hm_sim_trace *trace);
void hm_sim_result_free(hm_sim_result *r);
void hm_sim_trace_free(hm_sim_trace *t);
/* Writes the trace as Chrome/Perfetto JSON {"traceEvents": [...]}: pid = class*1000 + stage
 * (named "class c stage s"), tid 0 = compute, 1 = comm; times in microseconds. */
hm_status hm_sim_trace_write(const hm_sim_trace *t, const char *path);

/* ---------------------------------------------------------------------------------------------
 * Layer split: assign contiguous layers to p stages (each at least one layer) minimizing the
 * pipeline objective (m-1) * max_s T_s + sum_s T_s, where T_s is the time of stage s's layers on
 * stage s's devices plus the send of its last layer's output, subject to memory per stage. */

typedef struct hm_split_problem {
  int nlayers;              /* n >= p */
  int nstages;              /* p >= 1 */
  int nmicro;               /* m >= 1 */
  const double *time;       /* (p, n) seconds of layer l (fwd+bwd, one micro-batch) on stage s */
  const double *boundary;   /* (p, n) or NULL: seconds added to stage s < p-1 whose last layer is l */
  const double *mem_static; /* (p, n) or NULL: bytes per device of layer l on stage s */
  const double *mem_act;    /* (p, n) or NULL: bytes per device per micro-batch in flight */
  const double *mem_cap;    /* (p) or NULL: bytes per device of stage s */
  const int *inflight;      /* (p) or NULL: micro-batches stage s holds (1F1B: min(m, p-s)) */
} hm_split_problem;

/* Objective of a given split (bounds: p+1 entries); INFINITY if a stage is empty or over memory. */
double hm_split_objective(const hm_split_problem *pb, const int *bounds);
/* Exact: enumerates the bottleneck value, each with a min-sum dynamic program under that cap.
 * Returns HM_ERR_NO_FIT when no split fits in memory. bounds: p+1 entries. */
hm_status hm_split_dp(const hm_split_problem *pb, int *bounds, double *objective);
/* Tries every split (for tests; C(n-1, p-1) of them). */
hm_status hm_split_exhaustive(const hm_split_problem *pb, int *bounds, double *objective);


/* ---------------------------------------------------------------------------------------------
 * Plans: which devices serve which stages and layers, for a cluster, model and training spec.
 * A plan is a set of replica classes; each class is `nreplicas` identical pipelines (stages of
 * one device type and tensor-parallel degree each, in order) that each run `nmicro`
 * micro-batches per step. Several classes = heterogeneous data parallelism. */

#define HM_PLAN_MAX_STAGES 64
#define HM_PLAN_MAX_CLASSES 8
#define HM_PLAN_MAX_TYPES 16

typedef struct hm_plan_stage {
  int type;                   /* device type index in the cluster */
  int tp;                     /* tensor-parallel degree (devices of one host) */
  int layer_begin, layer_end; /* model layers [begin, end) */
  /* predictions (hm_plan_predict) */
  double fwd, bwd;            /* seconds per micro-batch */
  double mem_static;          /* bytes per device: weights, gradients, master, optimizer state */
  double mem_act;             /* bytes per device per micro-batch in flight */
  double mem_peak;            /* bytes per device at the schedule's peak */
  double mem_capacity;        /* bytes per device usable (memory_bytes * memory_fraction) */
  int max_inflight;
  double busy, idle;          /* seconds of compute (FWD, BWD, optimizer) and the rest of the step */
} hm_plan_stage;

typedef struct hm_plan_class {
  int nreplicas;
  int nmicro; /* micro-batches per replica per step */
  int nstages; /* stages in model order: p*v virtual stages with interleaving, else p */
  hm_plan_stage stages[HM_PLAN_MAX_STAGES];
  int nchunks; /* v: model chunks per device group (interleaved 1F1B when > 1; 0 or 1: plain
                  1F1B). Virtual stage j runs on the devices of stage j % p, p = nstages / v:
                  stages j and j % p have the same type and tp; a stage's predicted busy, idle and
                  memory are its devices' */
} hm_plan_class;

/* Chunks per device group of a class (1 without interleaving). */
static inline int hm_plan_class_chunks(const hm_plan_class *c) {
  return c->nchunks > 1 ? c->nchunks : 1;
}
/* Device groups (pipeline stages with devices) of a class: nstages / chunks. */
static inline int hm_plan_class_devstages(const hm_plan_class *c) {
  return c->nstages / hm_plan_class_chunks(c);
}

typedef struct hm_plan {
  int64_t micro_batch;  /* samples per micro-batch */
  int64_t global_batch; /* samples per step = micro_batch * sum(nreplicas * nmicro) */
  int nclasses;
  hm_plan_class classes[HM_PLAN_MAX_CLASSES];
  /* predictions (hm_plan_predict) */
  double step_time;       /* seconds */
  double tokens_per_s;
  double bubble_fraction;
  double mem_peak_max;    /* bytes, largest over devices */
  int over_memory;        /* 1 if some device exceeds its usable memory */
  int64_t devices_used;
  int64_t devices_by_type[HM_PLAN_MAX_TYPES];
  double mfu;                           /* over all devices used (docs/ARCHITECTURE.md) */
  double mfu_by_type[HM_PLAN_MAX_TYPES]; /* tokens/s share of the type's replicas, see docs */
  double upper_bound_tokens_per_s;      /* 0 when not computed */
  double utilization;                   /* tokens_per_s / upper bound */
} hm_plan;

typedef struct hm_plan_inputs {
  const hm_cluster *cluster;
  const hm_model *model;
  const hm_train *train;
  const hm_profile *profile; /* NULL: analytic estimates only (resolved against the cluster) */
} hm_plan_inputs;

/* Fills every prediction of a plan whose classes, stages and layer ranges are set, by running the
 * simulator on the op lists; trace (optional) receives the predicted timeline. */
hm_status hm_plan_predict(const hm_plan_inputs *in, hm_plan *plan, hm_sim_trace *trace);
/* Relative uncertainty of plan's predicted step time (already predicted on in) from the spread
 * its profile measured (hm_profile_layer.spread): the plan predicted again with every measured
 * layer figure at the upper end of its spread, fwd and bwd x (1 + spread), all together (as one
 * load change of the machine moves them), and *rel = that step / the step - 1. 0 when the
 * profile records no spread or there is no profile. */
hm_status hm_plan_spread(const hm_plan_inputs *in, const hm_plan *plan, double *rel);

/* Self-calibration: folds what a training run of `plan` measured into `out` (a copy of
 * in->profile, which plan was predicted on). fwd[s], bwd[s]: the run's mean seconds per
 * micro-batch of stage s of class cls (replica 0's). For each device type of that class's tp-1
 * stages that the profile has layer entries for, scale = (sum of measured) / (sum of predicted)
 * over the type's stages, forward and backward apart, and every layer entry of that type is
 * multiplied by it and marked from_run (a stage's time is a sum of its layers: one run separates
 * device types, not layer kinds). scale[k][0..1] (optional, cluster types) receives the factors,
 * 0 for types left alone. Links are not calibrated. */
hm_status hm_profile_calibrate(const hm_plan_inputs *in, const hm_plan *plan, int cls, const double *fwd,
                               const double *bwd, hm_profile *out, double (*scale)[2]);

/* The op lists one replica of class `cls` executes: the schedule hm_plan_predict simulates
 * (same stages, micro-batches, gradient buckets of one layer, tied-embedding sync when the model
 * ties its embedding). The pipeline runtime runs this. Free with hm_schedule_free. */
hm_status hm_plan_schedule(const hm_plan_inputs *in, const hm_plan *plan, int cls,
                           hm_schedule *out);

/* Checks a plan against a cluster and model: device types exist, every stage's tp fits a host
 * and divides the layers' tp_divides, layers are covered in order, devices suffice, batch adds up.
 * HM_ERR_SPEC with the plan's field path otherwise. */
hm_status hm_plan_validate(const hm_plan_inputs *in, const hm_plan *plan);

typedef struct hm_search_options {
  int top_k;          /* plans to return (default 5) */
  int max_stages;     /* pipeline depth limit (default and maximum HM_PLAN_MAX_STAGES) */
  int only_type;      /* -1: every type; k: plans that use device type k alone */
  int upper_bound;    /* 1: also plan each type alone, fill the bound and utilization */
  int max_chunks;     /* interleaved 1F1B with up to this many chunks per stage (default
                         HM_SEARCH_MAX_CHUNKS_DEFAULT; 1: plain 1F1B only, which the pipeline
                         runtime executes today) */
} hm_search_options;

#define HM_SEARCH_MAX_CHUNKS_DEFAULT 8

void hm_search_options_default(hm_search_options *o);

typedef struct hm_search_result {
  int nplans;
  hm_plan *plans;                                  /* best first (shortest simulated step) */
  double type_best_tokens_per_s[HM_PLAN_MAX_TYPES]; /* each type alone; 0 if it cannot fit */
  double upper_bound_tokens_per_s;                 /* sum of the above */
  int best_single_type;                            /* type of the best single-type plan, -1 */
  hm_plan best_single;                             /* that plan (valid when best_single_type >= 0) */
  int64_t candidates;                              /* layer splits evaluated */
  double seconds;                                  /* wall time of the search */
} hm_search_result;

/* Searches tensor-parallel degree per type, pipeline depth and stage types in order, the exact
 * layer split, data-parallel degree, heterogeneous data parallelism (unequal micro-batch counts)
 * and micro-batch size, under memory limits. HM_ERR_NO_FIT with the reason when nothing fits.
 * Deterministic: same inputs give the same plans. */
hm_status hm_plan_search(const hm_plan_inputs *in, const hm_search_options *opt,
                         hm_search_result *out);
void hm_search_result_free(hm_search_result *r);
/* Exhaustive search for small clusters (at most 16 devices, 4 types, 16 layers, 256 micro-batches
 * per step; HM_ERR_UNSUPPORTED beyond): every micro-batch size, tensor-parallel degree per type,
 * stage order with device types interleaved, layer split judged by the simulator, and plan of
 * one or two stage orders with any replica counts and micro-batch spread (docs/plan.md, section
 * 6). Starts from the default search's best, so *best is never slower than it. The oracle of
 * the default search's tests; *nsimulated (may be NULL) counts the simulations it ran. */
hm_status hm_plan_search_exhaustive(const hm_plan_inputs *in, const hm_search_options *opt,
                                    hm_plan *best, int64_t *nsimulated);

/* plan.json (docs/plan.md): the plan, its predictions, every rank's role, and the cluster, model
 * and training specs it was made for. */
struct cJSON *hm_plan_to_cjson(const hm_plan_inputs *in, const hm_plan *plan);
hm_status hm_plan_write(const hm_plan_inputs *in, const hm_plan *plan, const char *path);
/* Reads a plan file. Its embedded specs are returned in *cluster, *model, *train (caller frees
 * with the spec free functions; each pointer may be NULL to skip). The plan is validated against
 * those specs, or against `against` when non-NULL (a runtime refusing a plan for another
 * cluster or model); the ranks list must match the plan's layout exactly. */
hm_status hm_plan_load(const char *path, const hm_plan_inputs *against, hm_plan *plan,
                       hm_cluster *cluster, hm_model *model, hm_train *train);
/* Same, from text in memory (`origin` names it in messages; may be NULL). */
hm_status hm_plan_parse(const char *json, size_t len, const char *origin,
                        const hm_plan_inputs *against, hm_plan *plan, hm_cluster *cluster,
                        hm_model *model, hm_train *train);
hm_status hm_plan_from_cjson(const struct cJSON *j, const hm_plan_inputs *against, hm_plan *plan,
                             hm_cluster *cluster, hm_model *model, hm_train *train);

/* One rank's role in a plan, in the order plan.json lists ranks (class, replica, stage,
 * tensor-parallel rank). Devices are taken host by host per type (docs/plan.md). */
typedef struct hm_plan_rank {
  int64_t rank;       /* global device rank in the cluster (hm_cluster_locate) */
  int cls, replica, stage, tp_rank;
} hm_plan_rank;
/* Lists the roles of every device the plan uses; *ranks is allocated (free()). */
hm_status hm_plan_assign_ranks(const hm_plan_inputs *in, const hm_plan *plan,
                               hm_plan_rank **ranks, int64_t *nranks);

/* What-if: a copy of cluster c with `delta` devices of type `type` added (delta > 0) or removed
 * (delta < 0), as whole hosts of host groups that hold only that type (in pool `pool` when not
 * NULL). Added devices go to the first such group whose host size divides delta; removed ones
 * come from the last such groups first (a group left with no host, and a type left with no
 * device, leave the cluster). The result is read back through the spec reader (validated,
 * derived fields recomputed); a changed group loses its host names. Free with hm_cluster_free. */
hm_status hm_cluster_whatif(const hm_cluster *c, const char *type, int64_t delta, const char *pool,
                            hm_cluster *out);

/* A plan made for `from` set up for `to` (device types matched by name) and predicted there,
 * with out->upper_bound_tokens_per_s kept from plan (set it to to's bound before the call for
 * utilization against that). HM_ERR_NO_FIT when a type it uses is gone, HM_ERR_SPEC when the
 * plan no longer validates (too few devices, a tp that no longer fits a host). What-if uses it
 * so that adding devices never reports a slower best plan than leaving them idle. */
hm_status hm_plan_carry_over(const hm_plan_inputs *from, const hm_plan *plan,
                             const hm_plan_inputs *to, hm_plan *out);

#ifdef __cplusplus
}
#endif
#endif
