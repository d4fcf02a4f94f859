/* Planner inputs: the in-memory form of the cluster, model, training and profile specs, and
 * their JSON readers (validated, every error names the field path) and writers.
 *
 * This header holds data, not policy: the planner (include/hetmix/plan.h) decides how to use
 * the figures. A cluster is stored per device type and per host group, never per device, so a
 * 10,240-device cluster is a handful of structs; hm_cluster_locate() maps a rank to its
 * (host, device) when a per-rank view is needed. The JSON formats and every formula used to
 * expand a model config into layers are documented in docs/spec.md. */
#ifndef HETMIX_SPEC_H
#define HETMIX_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/cost.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cJSON;

#define HM_SPEC_NAME_MAX 64      /* names of device types, host groups, pools, layer kinds */
#define HM_SPEC_BACKEND_MAX 128  /* hetmix backend string, e.g. "cpu:threads=1" */
#define HM_SPEC_HOST_KINDS_MAX 8 /* device types within one host */
#define HM_SPEC_MBS_MAX 32       /* micro-batch sizes to consider */
#define HM_SPEC_POOLS_MAX 256    /* pools in one cluster */

/* ------------------------------------------------------------------------------------------ */
/* Data types                                                                                 */

typedef enum hm_spec_dtype {
  HM_DTYPE_FP32 = 0,
  HM_DTYPE_BF16,
  HM_DTYPE_FP16,
  HM_DTYPE_FP8,
  HM_SPEC_DTYPE_COUNT
} hm_spec_dtype;

/* The spec's own names (hm_spec_dtype, hm_spec_dtype_*) differ from hmcomm's hm_dtype (comm.h),
 * so one file can include this header next to it, and one program can link both. */
const char *hm_spec_dtype_name(hm_spec_dtype t); /* "fp32", "bf16", "fp16", "fp8" */
int hm_spec_dtype_parse(const char *s);          /* -1 when unknown */
size_t hm_spec_dtype_size(hm_spec_dtype t);      /* bytes per element: 4, 2, 2, 1 */

/* ------------------------------------------------------------------------------------------ */
/* Cluster                                                                                    */

typedef struct hm_device_type {
  char name[HM_SPEC_NAME_MAX];
  double peak_flops[HM_SPEC_DTYPE_COUNT]; /* FLOP/s, dense; 0 = no native support (fp32 required) */
  double memory_bytes;               /* device memory */
  double memory_bandwidth;           /* bytes/s of device memory */
  double efficiency;                 /* fraction of peak a large matmul reaches (default 0.5) */
  char backend[HM_SPEC_BACKEND_MAX]; /* hetmix backend string; "" when not executable here */
  hm_link intra_link;                /* between two devices of this type in one host */
  /* GEMM shape model (docs/plan.md "Shape-aware compute"): compute units (SMs/CUs) and the
   * output tile one unit computes at a time; 0 = unknown (constant `efficiency` instead).
   * Optional "gemm" object of the spec; defaults from the type's name for known GPUs. */
  int gemm_units, gemm_tile_m, gemm_tile_n;
  int gemm_given;                    /* 1 when the spec gave the "gemm" object */
  /* derived by the reader */
  int64_t count;                     /* devices of this type in the whole cluster */
} hm_device_type;

/* Peak FLOP/s for dtype t; a type without native support for t computes in fp32. */
double hm_device_type_peak(const hm_device_type *dt, hm_spec_dtype t);

typedef struct hm_host_devices {
  int type;      /* index into hm_cluster.types */
  int count;     /* devices of that type in each host of the group */
} hm_host_devices;

/* `count` identical hosts. */
typedef struct hm_host_group {
  char name[HM_SPEC_NAME_MAX];
  int64_t count;                                 /* hosts in the group */
  int nkinds;                                    /* entries used in dev[] */
  hm_host_devices dev[HM_SPEC_HOST_KINDS_MAX];   /* devices per host, by type (types distinct) */
  int devices_per_host;                          /* sum of dev[].count */
  hm_link nic;                                   /* one NIC: bandwidth per direction, latency */
  int nic_count;                                 /* NICs per host (default 1) */
  hm_link host_link;  /* between devices of different types in one host; set iff nkinds > 1 */
  int pool;           /* index into hm_cluster.pools, -1 when the cluster has no pools */
  char **hostnames;   /* count names, or NULL when the file gives none */
  /* derived by the reader */
  int64_t first_host; /* global index of this group's first host */
  int64_t first_rank; /* global rank of this group's first device */
} hm_host_group;

typedef struct hm_pool {
  char name[HM_SPEC_NAME_MAX];
} hm_pool;

/* Link between two pools: bandwidth is the aggregate the two pools share. */
typedef struct hm_pool_link {
  int a, b; /* pool indices, a < b */
  hm_link link;
} hm_pool_link;

typedef struct hm_cluster {
  char name[HM_SPEC_NAME_MAX];
  int ntypes;
  hm_device_type *types;
  int ngroups;
  hm_host_group *groups;
  int npools;               /* 0 when the file names no pools */
  hm_pool *pools;
  int npool_links;          /* every pair of pools has exactly one link */
  hm_pool_link *pool_links;
  /* derived by the reader */
  int64_t nhosts;
  int64_t ndevices;
} hm_cluster;

/* Where a rank lives. Ranks are numbered host group by host group (file order), host by host,
 * and within a host by the order of its "devices" entries. */
typedef struct hm_rank_loc {
  int group;             /* host group index */
  int64_t host;          /* global host index */
  int64_t host_in_group; /* host index within its group */
  int type;              /* device type index */
  int local_device;      /* device index within the host, 0..devices_per_host-1 */
  int index_in_type;     /* index among this host's devices of that type */
} hm_rank_loc;

hm_status hm_cluster_locate(const hm_cluster *c, int64_t rank, hm_rank_loc *out);
/* Inverse of hm_cluster_locate: the rank of device `index_in_type` of type `type` on host
 * `host_in_group` of `group`. */
hm_status hm_cluster_rank(const hm_cluster *c, int group, int64_t host_in_group, int type,
                          int index_in_type, int64_t *rank);

/* The link one transfer sees between a device of type ta in group ga and one of type tb in
 * group gb. same_host != 0 means the two devices share a host (then ga must equal gb):
 *   same host, same type: types[ta].intra_link; same host, other types: groups[ga].host_link;
 *   other hosts: one NIC (min bandwidth, max latency of the two groups' NICs); hosts in
 *   different pools: additionally the pool link (min bandwidth, latencies add).
 * The figures are for one flow; callers divide shared bandwidth (NICs, pool links) themselves. */
hm_status hm_cluster_link(const hm_cluster *c, int ga, int ta, int gb, int tb, int same_host,
                          hm_link *out);
/* Same, for two ranks. */
hm_status hm_cluster_link_ranks(const hm_cluster *c, int64_t ra, int64_t rb, hm_link *out);

int hm_cluster_find_type(const hm_cluster *c, const char *name); /* -1 when absent */
void hm_cluster_free(hm_cluster *c);

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                      */

typedef enum hm_arch { HM_ARCH_GPT2 = 0, HM_ARCH_LLAMA, HM_ARCH_COUNT } hm_arch;
const char *hm_arch_name(hm_arch a); /* "gpt2", "llama" */

/* The one model description of planner, model and runtime (model.h's stages are built from it). */
typedef struct hm_spec_model_config {
  hm_arch arch;
  int64_t L;        /* transformer blocks */
  int64_t C;        /* channels (hidden size) */
  int64_t NH;       /* attention heads */
  int64_t kv_heads; /* key/value heads (== NH for gpt2) */
  int64_t ffn;      /* FFN hidden size (gpt2 default 4C) */
  int64_t V;        /* vocabulary size */
  int64_t T;        /* sequence length */
  int tied_embeddings;  /* head reuses the token embedding (gpt2 default 1, llama default 0) */
  int flash_attention;  /* attention does not keep the (NH,T,T) matrix (default 0) */
} hm_spec_model_config;

/* One pipeline-splittable layer. All per-sample figures are for one sequence of T tokens. */
typedef struct hm_layer {
  char kind[HM_SPEC_NAME_MAX]; /* "embedding", "block", "head" or a user kind; profile key */
  double fwd_flops;            /* forward FLOPs per sample */
  double bwd_flops;            /* backward FLOPs per sample (default 2 * fwd_flops) */
  double params;               /* parameters this layer owns */
  double shared_params;        /* parameters it uses but another layer owns (tied head) */
  int shared_with;             /* index of the owning layer, -1 when shared_params == 0 */
  double act_bytes;            /* activation bytes kept for backward, per sample */
  double in_bytes;             /* bytes of its input per sample (kept under full recompute) */
  double out_bytes;            /* bytes of its output per sample (pipeline send) */
  double tp_comm_bytes;        /* tensor-parallel allreduce bytes per sample, forward */
  double tp_comm_bwd_bytes;    /* the same in backward; < 0: as in forward (the default) */
  int64_t tp_divides;          /* a tensor-parallel degree must divide this; 0 = any */
} hm_layer;

typedef struct hm_model {
  char name[HM_SPEC_NAME_MAX];
  int has_config;           /* 1: layers were expanded from cfg; 0: explicit list */
  hm_spec_model_config cfg;
  hm_spec_dtype dtype;           /* activation / weight dtype of the layers' byte figures */
  int64_t T;                /* tokens per sample */
  int nlayers;
  hm_layer *layers;
  /* derived */
  double params;            /* sum of layers[].params */
  double flops_per_token;   /* for MFU: 6N + 12 L C T with a config (docs/ARCHITECTURE.md), else
                               (sum of fwd + bwd FLOPs) / T */
} hm_model;

/* Expands cfg into model->layers (embedding, L blocks, head) with the formulas of docs/spec.md;
 * fills every field of *model. dtype sets the byte figures. */
hm_status hm_model_from_config(const hm_spec_model_config *cfg, hm_spec_dtype dtype, const char *name,
                               hm_model *model);
/* Parameter count of a config (no allocation); equals the sum over the expanded layers. The one
 * parameter-count formula: the model module (model.h) allocates exactly these counts. */
double hm_model_config_params(const hm_spec_model_config *cfg);
/* Fills what a config may leave 0 (ffn: 4C for gpt2, 8C/3 rounded up to 256 for llama; kv_heads:
 * NH) and checks it; HM_ERR_SPEC naming path.field. */
hm_status hm_spec_model_config_complete(hm_spec_model_config *cfg, const char *path);
void hm_model_free(hm_model *m);

/* ------------------------------------------------------------------------------------------ */
/* Training                                                                                   */

typedef enum hm_precision {
  HM_PREC_AUTO = -1,  /* follow the model's dtype; hm_spec_resolve replaces it */
  HM_PREC_FP32 = 0,   /* everything fp32 */
  HM_PREC_BF16_MIXED, /* bf16 weights/activations/grads, fp32 master weights */
  HM_PREC_FP16_MIXED, /* fp16 likewise (with loss scaling) */
  HM_PREC_COUNT
} hm_precision;
const char *hm_precision_name(hm_precision p); /* "auto", "fp32", "bf16-mixed", "fp16-mixed" */

typedef enum hm_recompute {
  HM_RECOMPUTE_NONE = 0, /* keep every activation */
  HM_RECOMPUTE_FULL,     /* keep each layer's input only; redo the forward in backward */
  HM_RECOMPUTE_COUNT
} hm_recompute;
const char *hm_recompute_name(hm_recompute r); /* "none", "full" */

typedef struct hm_train {
  int64_t global_batch;                       /* samples per optimizer step */
  int n_micro_batch_sizes;
  int64_t micro_batch_sizes[HM_SPEC_MBS_MAX]; /* candidates, ascending, distinct */
  hm_precision precision;      /* HM_PREC_AUTO until hm_spec_resolve */
  hm_spec_dtype compute_dtype;      /* dtype whose peak FLOP/s applies (set by hm_spec_resolve) */
  char optimizer[16];          /* "adamw" */
  /* Bytes per parameter; negative = "from the precision" until hm_spec_resolve fills them. */
  double weight_bytes;         /* as used in compute */
  double grad_bytes;
  double master_bytes;         /* fp32 copy in mixed precision, else 0 */
  double optimizer_bytes;      /* optimizer state (AdamW: m and v in fp32, 8) */
  hm_recompute recompute;
  int zero_stage;              /* 0; 1 shards master weights + optimizer state over DP */
  double memory_fraction;      /* part of device memory a plan may use (default 0.9) */
  /* hmcomm's link compression as the planner counts it ("compression"): figures measured by
   * bench_comm_zip; zip.ratio 0 = not counted. Inter-host links slower than zip_below carry
   * at hm_cost_link_with_zip's bandwidth. */
  hm_zip_figures zip;
  double zip_below;
} hm_train;

/* Defaults of docs/spec.md (global batch 8, micro-batch sizes 1 2 4 8, precision "auto",
 * AdamW, no recompute, memory fraction 0.9). */
void hm_train_default(hm_train *t);
/* Forward + backward FLOPs of one layer per sample under t's recompute setting. */
double hm_layer_train_flops(const hm_layer *l, const hm_train *t);
/* Activation bytes a layer holds per in-flight sample under t's recompute setting: act_bytes,
 * or in_bytes only with full recompute (the layer being recomputed then needs act_bytes for
 * one micro-batch at a time on top). */
double hm_layer_held_act_bytes(const hm_layer *l, const hm_train *t);

/* ------------------------------------------------------------------------------------------ */
/* Profile (measured)                                                                         */

typedef struct hm_profile_layer {
  char device_type[HM_SPEC_NAME_MAX];
  char kind[HM_SPEC_NAME_MAX];
  int64_t micro_batch;
  double fwd_s;        /* seconds for forward of one micro-batch through one layer */
  double bwd_s;        /* seconds for backward (without recompute) */
  double mem_bytes;    /* peak memory measured for the layer at this micro-batch; 0 = unknown */
  double spread;       /* relative uncertainty of fwd_s + bwd_s as measured (half the interquartile
                          range of the rounds over their median, or half the range of the passes'
                          values, the larger); 0 = unknown */
  int reps;            /* timed rounds behind the figures (after outliers were dropped); 0 = unknown */
  int from_run;        /* 1: calibrated by a training run's measurements (hm_profile_calibrate),
                          "source": "run"; 0: measured by `hetmix profile`, "source": "profile" */
  int tp;              /* "tp": the tensor-parallel degree the layer was split at, one rank's
                          shard timed (its allreduces are not in the figures: tp_allreduce
                          costs them); 0 or 1 = unsplit */
  int type;            /* resolved device type index, -1 until hm_profile_resolve */
} hm_profile_layer;

/* Measured link between device types; scope "intra_host" or "inter_host". */
typedef struct hm_profile_link {
  char type_a[HM_SPEC_NAME_MAX], type_b[HM_SPEC_NAME_MAX];
  int inter_host;      /* 0: same host; 1: different hosts */
  hm_link link;
  int a, b;            /* resolved device type indices, -1 until hm_profile_resolve */
} hm_profile_link;

/* A measured tensor-parallel allreduce: `ranks` processes of one host summing a float32 buffer
 * in place with hmcomm, t(bytes) = latency + bytes / bandwidth fitted to the timed sizes. */
#define HM_PROFILE_MAX_TP_ALLREDUCE 8
typedef struct hm_profile_allreduce {
  int ranks;
  double latency, bandwidth;
} hm_profile_allreduce;
/* Measured staging copies of a device type whose memory is not host memory (opencl, a GPU):
 * what a transfer from or to such a device pays on top of the link, because the runtime moves
 * its buffers through host memory (device->host before sending, host->device after
 * receiving). Types without an entry are host memory (no copies). */
typedef struct hm_profile_staging {
  char device_type[HM_SPEC_NAME_MAX];
  hm_device_xfer xfer; /* d2h_bw, h2d_bw, copy_latency (the other terms are 0) */
  int type;            /* resolved device type index, -1 until hm_profile_resolve */
} hm_profile_staging;

typedef struct hm_profile {
  char model[HM_SPEC_NAME_MAX]; /* name of the model measured; "" = not recorded */
  int nlayers, cap_layers;
  hm_profile_layer *layers;
  int nlinks, cap_links;
  hm_profile_link *links;
  int ntp_allreduce;            /* "tp_allreduce": one entry per rank count */
  hm_profile_allreduce tp_allreduce[HM_PROFILE_MAX_TP_ALLREDUCE];
  int nstaging, cap_staging;
  hm_profile_staging *staging;
  /* "host_links": the links between hosts that `hetmix profile --netns` measured, one per link
   * class of the cluster: [0] two hosts of one pool ("pool"), [1] hosts of two pools ("cross");
   * bandwidth 0 = not measured. hmcomm's tuner takes them (hetmix launch --netns --profile). */
  hm_link host_link[2];
} hm_profile;

/* Appends an entry (the runtime's profiler builds a profile this way, then writes it). */
hm_status hm_profile_add_layer(hm_profile *p, const hm_profile_layer *e);
hm_status hm_profile_add_link(hm_profile *p, const hm_profile_link *e);
/* Checks the names against a cluster (and the kinds against a model if non-NULL), fills the
 * resolved indices; unknown names are HM_ERR_SPEC with the entry's path. */
hm_status hm_profile_resolve(hm_profile *p, const hm_cluster *c, const hm_model *m);
/* Measured forward/backward seconds of one layer kind on one device type at micro-batch mb:
 * exact entry, else linear interpolation between the nearest sizes, else the nearest size
 * scaled by mb / size. Returns 1 when the profile has that (type, kind), 0 otherwise. */
int hm_profile_layer_time(const hm_profile *p, int type, const char *kind, int64_t mb,
                          double *fwd_s, double *bwd_s);
/* The same among the entries measured split at tensor-parallel degree tp (tp <= 1: the unsplit
 * ones, as hm_profile_layer_time): one rank's shard, without its allreduces. */
int hm_profile_layer_time_tp(const hm_profile *p, int type, const char *kind, int64_t mb, int tp,
                             double *fwd_s, double *bwd_s);
/* The measured link of a class between hosts (cross 0: one pool, 1: two pools); returns 1 when
 * the profile has it. */
int hm_profile_host_link(const hm_profile *p, int cross, hm_link *out);
/* Measured link between two device types, if any; returns 1 when found. */
int hm_profile_link_find(const hm_profile *p, int ta, int tb, int inter_host, hm_link *out);
/* Measured seconds of an allreduce of `bytes` among `ranks` tensor-parallel processes of one
 * host; returns 1 when the profile has that rank count, 0 otherwise. */
int hm_profile_tp_allreduce_time(const hm_profile *p, int ranks, double bytes, double *seconds);
/* Appends a staging entry (one per device type; a second is HM_ERR_INVALID_ARG). */
hm_status hm_profile_add_staging(hm_profile *p, const hm_profile_staging *e);
/* The staging terms of resolved device type `type`: all zero (no copies) when p is NULL or has
 * no entry for it. */
hm_device_xfer hm_profile_staging_of(const hm_profile *p, int type);
void hm_profile_free(hm_profile *p);

/* ------------------------------------------------------------------------------------------ */
/* Cross-checks, once after reading and before planning: completes t against m (precision
 * "auto" follows the model's dtype; per-parameter bytes from the precision), rejects a
 * precision whose compute dtype differs from the dtype of the model's byte figures, and
 * resolves the profile's names against the cluster and model (p may be NULL). */
hm_status hm_spec_resolve(const hm_cluster *c, const hm_model *m, hm_train *t, hm_profile *p);

/* ------------------------------------------------------------------------------------------ */
/* Readers and writers. Every reader validates fully: a missing, mistyped, out-of-range or
 * unknown field is HM_ERR_SPEC and the message starts with its path, e.g.
 * `cluster.device_types[1].memory_bytes: expected a positive number, got "16GB"`.
 * `origin` names the source in messages (a file name); may be NULL. On error *out is left
 * freed (safe to free again). */

hm_status hm_cluster_load(const char *path, hm_cluster *out);
hm_status hm_cluster_parse(const char *json, size_t len, const char *origin, hm_cluster *out);
hm_status hm_cluster_from_cjson(const struct cJSON *j, const char *root, hm_cluster *out);
struct cJSON *hm_cluster_to_cjson(const hm_cluster *c); /* NULL on allocation failure */

hm_status hm_model_load(const char *path, hm_model *out);
hm_status hm_model_parse(const char *json, size_t len, const char *origin, hm_model *out);
hm_status hm_model_from_cjson(const struct cJSON *j, const char *root, hm_model *out);
struct cJSON *hm_model_to_cjson(const hm_model *m);

hm_status hm_train_load(const char *path, hm_train *out);
hm_status hm_train_parse(const char *json, size_t len, const char *origin, hm_train *out);
hm_status hm_train_from_cjson(const struct cJSON *j, const char *root, hm_train *out);
struct cJSON *hm_train_to_cjson(const hm_train *t);

hm_status hm_profile_load(const char *path, hm_profile *out);
hm_status hm_profile_parse(const char *json, size_t len, const char *origin, hm_profile *out);
hm_status hm_profile_from_cjson(const struct cJSON *j, const char *root, hm_profile *out);
struct cJSON *hm_profile_to_cjson(const hm_profile *p);
/* Writes the profile as JSON (atomically: temporary file, then rename). */
hm_status hm_profile_write(const hm_profile *p, const char *path);

#ifdef __cplusplus
}
#endif
#endif
