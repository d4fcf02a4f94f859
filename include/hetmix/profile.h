/* hetmix profiler: measures what the planner needs to know about the devices of this machine,
 * and writes it as a profile (docs/spec.md, "Profile"; read by `hetmix plan --profile`).
 *
 * For each device type of a cluster spec that has a backend string (e.g. "cpu:threads=1",
 * "ref", "cpu:threads=1,slow=2"), the profiler opens that device, builds a one-layer model
 * stage for each layer kind of the model (embedding, block, head) at each micro-batch size, and
 * times forward and backward (warm-up, then the median of reps) and the device memory the stage
 * used. Between two processes on this machine it times hmcomm send/recv ping-pong at several
 * sizes over shared memory and over TCP (loopback) and fits latency + bytes / bandwidth.
 *
 * Not here: other hosts (one machine only: inter-host links are left to the cluster spec),
 * planning (include/hetmix/plan.h), the spec types themselves (include/hetmix/spec.h).
 * This header names the spec types only by their struct tags, so it can be included next to
 * either spec.h or comm.h/device.h. */
#ifndef HETMIX_PROFILE_H
#define HETMIX_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/cost.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct hm_cluster;
struct hm_model;
struct hm_profile;
struct hm_spec_model_config;

#define HM_PROFILE_MAX_SIZES 16  /* ping-pong message sizes */
#define HM_PROFILE_MAX_MBS 32    /* micro-batch sizes (HM_SPEC_MBS_MAX) */
#define HM_PROFILE_MAX_PASSES 256 /* measurement passes whose median a figure is */
#define HM_PROFILE_MAX_TYPES 16  /* device types measured in one call */

/* Latency and bandwidth of one transport between two local processes, fitted to ping-pong
 * one-way times t(b) = latency + b / bandwidth by least squares on the relative error. */
typedef struct hm_link_fit {
  char transport[8];                       /* "shm" or "tcp" */
  int npoints;
  double bytes[HM_PROFILE_MAX_SIZES];      /* message sizes */
  double seconds[HM_PROFILE_MAX_SIZES];    /* one-way time: median over batches of round trip / 2 */
  double latency;                          /* seconds */
  double bandwidth;                        /* bytes per second */
  double burst;                            /* bytes a shaped link passes at once (hm_link_fit_rate) */
  double max_rel_err;                      /* largest |fit - measured| / measured over the points */
} hm_link_fit;

typedef struct hm_link_probe_options {
  const char *transport;   /* "shm" | "tcp" | "auto" */
  int nsizes;              /* sizes to time (default: 8 B .. 16 MiB, 7 sizes) */
  size_t sizes[HM_PROFILE_MAX_SIZES];
  double seconds_per_size; /* time spent per size (default 0.05) */
  int timeout_ms;          /* deadline of the whole measurement (default 30000) */
  const char *netns[2];    /* rank r runs in network namespace netns[r] (a testbed host,
                              scripts/testbed.sh) and listens on its address; NULL: here */
  int allreduce_ranks;     /* 0: send/recv ping-pong of two processes; 2..8: time an in-place
                              float32 sum allreduce among that many processes instead (what
                              tensor-parallel ranks do), fitted as one operation */
} hm_link_probe_options;

/* Forks two processes (allreduce_ranks of them for the allreduce probe) that bootstrap an hmcomm
 * communicator (hm_get_unique_id in this process, hm_comm_init_rank in each child) and time
 * send/recv ping-pong (or the allreduce); then fits. No child outlives
 * the call: on the deadline both are killed and HM_ERR_TIMEOUT names the one still running.
 * Call before this process starts threads of its own if it can (fork copies only the caller). */
hm_status hm_profile_link_probe(const hm_link_probe_options *opt, hm_link_fit *out);

/* Fits latency + bytes / bandwidth to n (bytes, seconds) points, minimizing the relative error
 * (each point weighs 1/seconds^2, so small messages set the latency and large ones the
 * bandwidth). Negative fitted terms are clamped (latency >= 0; bandwidth from the largest point
 * when the slope is not positive). */
hm_status hm_link_fit_points(const double *bytes, const double *seconds, int n, double *latency,
                             double *bandwidth);

/* The figures of a rate-shaped link (a token bucket: tc htb/tbf) from n >= 2 points: such a link
 * lets a burst go at line rate, so small messages cross faster than the rate and a relative-error
 * fit over every size overstates the bandwidth (the testbed's 80 Mbit/s link fitted 41% fast).
 * The bandwidth is the slope between the two largest sizes (both beyond the burst), the latency
 * the smallest message's time less its bytes at that bandwidth (clamped at 0). The burst (burst
 * may be NULL) is what the large messages arrive ahead of latency + bytes / bandwidth, in bytes
 * at that bandwidth: each ping-pong message finds the link idle and its bucket full, so a large
 * message takes latency + (bytes - burst) / bandwidth (clamped at 0: a plain link's line lies
 * at or above latency + bytes / bandwidth). */
hm_status hm_link_fit_rate(const double *bytes, const double *seconds, int n, double *latency, double *bandwidth,
                           double *burst);
/* The fit's one-way time for a message: latency + max(0, bytes - burst) / bandwidth. */
double hm_link_fit_time(const hm_link_fit *f, double bytes);

/* One layer kind at one micro-batch size on one device. */
typedef struct hm_layer_timing {
  double fwd_s, bwd_s;         /* median over the timed rounds left after outliers (rounds more
                                  than 3 scaled median absolute deviations from the median) */
  double spread;               /* relative: half the interquartile range of fwd+bwd over the
                                  rounds kept, over their median (hm_profile_layer.spread) */
  int rejected;                /* timed rounds dropped as outliers */
  double fwd_min_s, bwd_min_s; /* fastest rep (spread = median / min) */
  double mem_bytes;            /* device bytes of the one-layer stage: params, grads, AdamW
                                  moments, one micro-batch's activations, scratch */
  int reps;                    /* timed rounds (fewer than asked when the budget ran out) */
  int fits;                    /* 0: the stage did not fit the device (no times) */
} hm_layer_timing;

/* Progress lines for a caller that wants to show them (the library itself prints nothing). */
typedef void (*hm_profile_progress_fn)(const char *line, void *user);

typedef struct hm_profile_options {
  const struct hm_cluster *cluster;
  const struct hm_model *model;      /* needs a gpt2 config (its stages are what is timed) */
  int n_micro_batches;               /* 0: 1, 2, 4 */
  int64_t micro_batches[HM_PROFILE_MAX_MBS];
  int warmup;                        /* untimed forward+backward rounds first, in every pass [1] */
  int reps;                          /* timed rounds in all, spread over the passes; outliers
                                        dropped, the median of the rest kept [9] */
  int passes;                        /* each type alone (not concurrent, one copy): the types are
                                        measured in this many passes, in alternating order (a, b,
                                        then b, a, ...), each with reps/passes rounds; per entry the
                                        median of the passes is kept, so every type sees the same
                                        stretch of the machine's load [3] */
  double budget_s;                   /* stop timing a (kind, size) after this many seconds of
                                        timed rounds, at least one round [2]; <= 0: no limit */
  double min_s;                      /* measure the layers for at least this many seconds: the
                                        passes are repeated until then (at most
                                        HM_PROFILE_MAX_PASSES) and each figure is their median, so
                                        a slow stretch of the machine moves a minority of them
                                        [0: the passes above only] */
  int ntypes;                        /* 0: every device type with a backend string */
  const char *types[16];             /* else only these type names */
  int concurrent;                    /* 1: time every selected type at the same time, each in its
                                        own process (as a heterogeneous plan's workers run) */
  int copies;                        /* processes per type timed at once [1]; > 1 or concurrent:
                                        the figures include what the others take from the host */
  int timeout_s;                     /* deadline of a concurrent measurement [3600] */
  int links;                         /* 1: probe shm and tcp between two local processes */
  int tp_split;                      /* 1: also time every type's layers split at each
                                        tensor-parallel degree 2, 4, 8 that a host holds of it
                                        and that splits the model (entries with "tp") [1] */
  const char *link_transport;        /* which probe the intra-host entries record ["shm"] */
  int netns;                         /* 1: also probe the links between the cluster's hosts, each
                                        host the network namespace named like it (a testbed) */
  hm_link_probe_options link_probe;  /* sizes and time per size (transport is set per probe) */
  uint64_t seed;                     /* parameters and inputs of the timed stages */
  hm_profile_progress_fn progress;
  void *user;
} hm_profile_options;

void hm_profile_options_default(hm_profile_options *o);

/* What was measured beyond the profile entries, for reporting. */
typedef struct hm_profile_report {
  int nfits;
  hm_link_fit fits[4];        /* shm, tcp (when links were probed); with netns: "pool" (two
                                 hosts of one pool), "cross" (hosts of two pools) */
  int ntypes_measured;
  int nskipped;               /* (type, kind, micro-batch) that did not fit their device */
  double seconds;             /* wall time of the whole measurement */
} hm_profile_report;

/* Measures and appends to out (an empty or existing profile; its model name is set). Errors name
 * the device type, layer kind and micro-batch that failed. rep may be NULL. */
hm_status hm_profile_measure(const hm_profile_options *o, struct hm_profile *out,
                             hm_profile_report *rep);

/* Staging copies of backend (src/runtime/profile_staging.c): opens the device (in a forked
 * child when in_child, which waits at most timeout_s) and, when its memory is not host memory
 * (*staged = 1), times copies of `bytes` device->host and host->device through pinned host
 * memory and a 64-byte copy (the latency), best of reps; *out gets d2h_bw, h2d_bw,
 * copy_latency. Host backends: *staged = 0, *out zero. in_child = 0 only in a process that
 * already opened the backend (a later fork would not carry a device runtime's threads). */
hm_status hm_profile_time_staging(const char *backend, size_t bytes, int reps, int in_child, int timeout_s,
                                  hm_device_xfer *out, int *staged);

/* ---- the device half (src/runtime/profile_layers.c), used by hm_profile_measure ---------- */

/* Stages are built from the spec's model config (struct hm_spec_model_config, the one model
 * description; completed and checked by the model module before timing). */

/* Opens the device `backend` once and times, for each layer index layers[k] (0 = embedding,
 * 1..L = block, L+1 = head) and each micro-batch size mbs[j], a one-layer stage (tp > 1: rank 0's
 * shard of the layer split at that tensor-parallel degree, its allreduces left out; the degree
 * must split the model, hm_stage_tp_sizes):
 * out[k * nmbs + j]: warmup untimed rounds, then up to reps timed ones, stopping once they add up
 * to budget_s (at least one; budget_s <= 0: all reps). A stage that does not fit the device gets fits = 0 (not an error).
 * device_desc (optional, cap bytes) receives e.g. "cpu:threads=1 (1 thread, slow 1)". */
hm_status hm_profile_time_layers(const char *backend, const struct hm_spec_model_config *shape,
                                 int tp, const int *layers, int nlayers, const int64_t *mbs, int nmbs,
                                 int warmup, int reps, double budget_s, uint64_t seed,
                                 hm_layer_timing *out,
                                 char *device_desc, size_t cap, hm_profile_progress_fn progress,
                                 void *user);

/* Robust centre of n > 0 timed rounds (sorted in place): with n >= 4, rounds further than
 * 3 x 1.4826 median absolute deviations from the median are dropped as outliers, the median of the rest returned;
 * *kept (optional) = rounds kept, *spread (optional) = half their interquartile range over that
 * median. */
double hm_profile_robust(double *v, int n, int *kept, double *spread);

/* Times the same layers on njobs devices at once: copies processes per backend, all forked and
 * running together; each process measures pass after pass for at least min_s seconds (<= 0: one
 * pass) and then while others still measure, and keeps per entry the median over its passes; a
 * process done early keeps its device busy until every one is done. out is
 * (njobs, nlayers, nmbs): per backend the figures of its slowest copy (largest total). descs (optional) receives one
 * device description of desc_cap bytes per backend. A failing process stops all and is named;
 * past timeout_s (<= 0: 3600) all are killed. No process outlives the call. The children run
 * device kernels (OpenMP in the cpu backend): call it before this process has started OpenMP
 * threads of its own (libgomp's pool does not survive fork), as `hetmix profile` does. */
hm_status hm_profile_time_layers_together(int njobs, const char *const *backends, int copies,
                                          const struct hm_spec_model_config *shape, int tp, const int *layers, int nlayers,
                                          const int64_t *mbs, int nmbs, int warmup, int reps,
                                          double budget_s, double min_s, uint64_t seed, int timeout_s,
                                          hm_layer_timing *out, char *descs, size_t desc_cap,
                                          hm_profile_progress_fn progress, void *user);

#ifdef __cplusplus
}
#endif
#endif
