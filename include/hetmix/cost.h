/* The one cost model of hetmix: time of point-to-point transfers and collectives over a link,
 * used by both the planner (src/plan) and hmcomm's algorithm tuner (src/comm).
 *
 * Alpha-beta-gamma model: a message of b bytes over a link takes latency + b / bandwidth; a
 * reduction of b bytes costs b / reduce_bw on the reducing process. Collective costs use the
 * textbook step counts of each algorithm; bytes is always the whole array (as busbw is defined).
 * A measured profile overrides the link figures; the formulas stay here. */
#ifndef HETMIX_COST_H
#define HETMIX_COST_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hm_link {
  double bandwidth;  /* bytes per second, one direction */
  double latency;    /* seconds per message */
  double reduce_bw;  /* bytes per second a rank can reduce (0 = free) */
  double burst;      /* bytes a rate-shaped link (a token bucket) passes at once after idling:
                        measured (hm_link_fit_rate); 0 = a plain link, every byte at the rate */
} hm_link;

typedef enum hm_coll_kind {
  HM_COLL_ALLREDUCE = 0,
  HM_COLL_REDUCE,
  HM_COLL_BROADCAST,
  HM_COLL_REDUCE_SCATTER,
  HM_COLL_ALLGATHER,
  HM_COLL_ALLTOALL,
  HM_COLL_GATHER,
  HM_COLL_SCATTER,
  HM_COLL_BARRIER,
  HM_COLL_KIND_COUNT
} hm_coll_kind;

typedef enum hm_coll_algo {
  HM_ALGO_RING = 0,          /* bandwidth-optimal */
  HM_ALGO_RECURSIVE_DOUBLING, /* latency-optimal for small messages */
  HM_ALGO_TREE,              /* binomial tree (rooted collectives, small allreduce) */
  HM_ALGO_HIER,              /* hierarchical over pools (hm_cost_hier) */
  HM_ALGO_COUNT
} hm_coll_algo;

const char *hm_coll_kind_name(hm_coll_kind k);
const char *hm_coll_algo_name(hm_coll_algo a);  /* "ring", "rd", "tree", "hier" */
/* Parses "ring" | "rd" | "tree" | "hier"; returns -1 for anything else. */
int hm_coll_algo_parse(const char *s);

/* latency + bytes / bandwidth. */
double hm_cost_p2p(const hm_link *link, double bytes);

/* Predicted seconds for one collective of `bytes` (the whole array) over nranks equal links.
 * Returns a negative value when the algorithm does not implement that collective. */
double hm_cost_collective(hm_coll_kind kind, hm_coll_algo algo, int nranks, double bytes,
                          const hm_link *link);

/* Hierarchical collectives over npools pools of per_pool ranks each (bytes: the whole array,
 * as everywhere). Allreduce: ring reduce-scatter inside each pool (per_pool segments), ring
 * allreduce of each segment between the pools (the ranks with the same place in their pool),
 * ring allgather inside each pool. Reduce-scatter: the pool's reduce-scatter of the whole array
 * (each rank keeps the bundle of the pools' blocks for its place), then reduce-scatter of that
 * bundle between the pools. Allgather: allgather between the pools, then of the bundles inside
 * the pool. `pool` is the slowest link of a pool's ring, `cross` a host's link to another pool;
 * all ranks of a pool cross at once, `sharing` of them (the ranks of one host) through one host's
 * link. Negative for other kinds. hm_cost_collective gives -1 for HM_ALGO_HIER: it needs the
 * topology. */
double hm_cost_hier(hm_coll_kind kind, int npools, int per_pool, int sharing, double bytes, const hm_link *pool,
                    const hm_link *cross);

/* The algorithm with the lowest predicted time (ties go to the lower enum value), so every rank
 * given the same inputs picks the same one. *seconds may be NULL. */
hm_coll_algo hm_cost_best_algo(hm_coll_kind kind, int nranks, double bytes, const hm_link *link,
                               double *seconds);

/* Lossless compression of what crosses a link (hmcomm compresses chunks on slow TCP links,
 * docs/comm.md "Compression"): ratio = compressed / raw bytes; the codec's throughputs in raw
 * bytes per second on the sending and the receiving host. */
typedef struct hm_zip_figures {
  double ratio;
  double compress_bw;
  double decompress_bw;
} hm_zip_figures;

/* Raw bytes per second a link of link_bw carries when its chunks are compressed: the sender
 * compresses the next chunk while the link carries the last one and the receiver decompresses
 * the one before, so the slowest of the three stages sets the pace:
 * min(compress_bw, link_bw / ratio, decompress_bw). 0 when a figure is missing. */
double hm_cost_zip_bandwidth(double link_bw, const hm_zip_figures *z);

/* Seconds to move `bytes` in chunks of `chunk` bytes compressed: latency, the pipeline's fill
 * (the first chunk is compressed and the last decompressed with nothing to overlap) and the
 * rest at hm_cost_zip_bandwidth. A negative value when the figures are unusable. */
double hm_cost_p2p_zip(const hm_link *link, double bytes, double chunk, const hm_zip_figures *z);

/* Whether compress + send + decompress of `bytes` (chunks of `chunk`) beats sending them as
 * they are: hm_cost_p2p_zip < hm_cost_p2p. */
int hm_cost_zip_pays(const hm_link *link, double bytes, double chunk, const hm_zip_figures *z);

/* The link as the planner sees it when compression is on: out = in, with the bandwidth raised
 * to hm_cost_zip_bandwidth where that is higher (never lowered: hmcomm sends uncompressed
 * where compression does not pay). */
void hm_cost_link_with_zip(const hm_link *in, const hm_zip_figures *z, hm_link *out);

/* busbw factor (docs/ARCHITECTURE.md, Definitions): allreduce 2(n-1)/n; reduce_scatter, allgather, alltoall (n-1)/n;
 * broadcast, reduce 1; gather, scatter (n-1)/n. */
double hm_busbw_factor(hm_coll_kind kind, int nranks);

/* ---- device buffers (cost_device.c) ----
 * What moving and reducing one rank's device buffers costs, per device type: the staging
 * copies between device and host memory (a term of the planner's transfers and of hmcomm's
 * device path) and where a reduction is cheaper. All figures are doubles so that ranks can
 * exchange them as an f64 array (HM_DEVICE_XFER_FIELDS values). */
typedef struct hm_device_xfer {
  double d2h_bw, h2d_bw;  /* bytes/s of a staging copy device->host, host->device; 0: the
                             device's buffers are host memory (no copy) */
  double copy_latency;    /* seconds per staging copy */
  double host_reduce_bw;  /* bytes/s the host reduces (one incoming operand into the result) */
  double dev_reduce_bw;   /* bytes/s of the device's elementwise reduction kernel; 0: none */
  double kernel_latency;  /* seconds per device kernel */
  double mapped;          /* 1: reducing on the host reads the buffers in place (host-unified
                             memory mapped into the host): no staging copies on that path */
} hm_device_xfer;
#define HM_DEVICE_XFER_FIELDS 7

typedef enum hm_reduce_site {
  HM_REDUCE_ON_HOST = 0, /* staged or mapped data, reduced by the host (hmcomm's algorithms) */
  HM_REDUCE_ON_DEVICE    /* each incoming piece copied to the device and added by a kernel */
} hm_reduce_site;

/* Seconds of staging copies of `bytes` each way (device->host and host->device): 0 where the
 * buffers are host memory. */
double hm_cost_staging(const hm_device_xfer *d, double bytes);
/* Seconds of the staging copies of one message of `bytes` from a device with terms `from`
 * (device->host before sending) to one with terms `to` (host->device after receiving). */
double hm_cost_staged_send(const hm_device_xfer *from, const hm_device_xfer *to, double bytes);
/* Predicted seconds for one rank's ring allreduce of `bytes` (the whole array) over nranks
 * with its reductions at `site`: host: max(staging copies (none when mapped), ring with the
 * host's reduce bandwidth), the copies overlapping the transfers; device: 2(n-1) steps, each
 * a device->host copy, a transfer and a host->device copy of bytes/n, and n-1 kernels of
 * bytes/n, one after the other. */
double hm_cost_allreduce_at(hm_reduce_site site, const hm_device_xfer *d, int nranks, double bytes,
                            const hm_link *link);
/* The site every rank uses, from all ranks' terms (terms[0..nterms)): the device only where
 * the slowest rank's device-site time is below the slowest rank's host-site time (ties: host).
 * *t_host / *t_dev (may be NULL) receive those two times. */
hm_reduce_site hm_cost_reduce_site(const hm_device_xfer *terms, int nterms, int nranks, double bytes,
                                   const hm_link *link, double *t_host, double *t_dev);

#ifdef __cplusplus
}
#endif
#endif
