/* Alpha-beta-gamma cost functions shared by the planner and hmcomm's tuner (see cost.h).
 * Step counts are the standard ones (Thakur, Rabenseifner, Gropp 2005). */
#include "hetmix/cost.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[HM_COLL_KIND_COUNT] = {
    "allreduce", "reduce", "broadcast", "reduce_scatter", "allgather",
    "alltoall",  "gather", "scatter",   "barrier"};
static const char *const algo_names[HM_ALGO_COUNT] = {"ring", "rd", "tree", "hier"};

const char *hm_coll_kind_name(hm_coll_kind k) {
  return (k >= 0 && k < HM_COLL_KIND_COUNT) ? kind_names[k] : "unknown";
}

const char *hm_coll_algo_name(hm_coll_algo a) {
  return (a >= 0 && a < HM_ALGO_COUNT) ? algo_names[a] : "unknown";
}

int hm_coll_algo_parse(const char *s) {
  if (!s) return -1;
  for (int a = 0; a < HM_ALGO_COUNT; a++)
    if (strcmp(s, algo_names[a]) == 0) return a;
  if (strcmp(s, "recursive_doubling") == 0) return HM_ALGO_RECURSIVE_DOUBLING;
  return -1;
}

double hm_cost_p2p(const hm_link *link, double bytes) {
  return link->latency + (link->bandwidth > 0 ? bytes / link->bandwidth : 0.0);
}

static double reduce_time(const hm_link *l, double bytes) {
  return l->reduce_bw > 0 ? bytes / l->reduce_bw : 0.0;
}

/* A rate-shaped link (a token bucket) refills while it idles, up to its burst, and then passes
 * that many bytes of the next message at once. A ring step's message follows the link's previous
 * one after at least a latency (the step's data crossed a hop meanwhile): refill min(burst,
 * bandwidth x idle). Returns the bytes a message of msg bytes gets free after idle_s. */
static double burst_credit(const hm_link *l, double msg, double idle_s) {
  if (!(l->burst > 0) || !(l->bandwidth > 0) || !(idle_s > 0)) return 0.0;
  return fmin(fmin(l->burst, l->bandwidth * idle_s), msg);
}

/* Seconds a ring of steps of msg bytes each saves on a shaped link (0 for a plain link). */
static double ring_burst_saving(const hm_link *l, double steps, double msg) {
  return l->bandwidth > 0 ? steps * burst_credit(l, msg, l->latency) / l->bandwidth : 0.0;
}

static int ceil_log2(int n) {
  int k = 0;
  while ((1 << k) < n) k++;
  return k;
}

double hm_cost_collective(hm_coll_kind kind, hm_coll_algo algo, int nranks, double bytes,
                          const hm_link *l) {
  if (nranks <= 1) return 0.0;
  const double n = nranks, a = l->latency;
  const double b = l->bandwidth > 0 ? 1.0 / l->bandwidth : 0.0;
  const int lg = ceil_log2(nranks);
  const int pow2 = (1 << lg) == nranks;
  switch (algo) {
    case HM_ALGO_RING:
      switch (kind) {
        case HM_COLL_ALLREDUCE:
          return 2 * (n - 1) * a + 2 * (n - 1) / n * bytes * b + (n - 1) / n * reduce_time(l, bytes) -
                 ring_burst_saving(l, 2 * (n - 1), bytes / n);
        case HM_COLL_REDUCE_SCATTER:
          return (n - 1) * a + (n - 1) / n * bytes * b + (n - 1) / n * reduce_time(l, bytes) -
                 ring_burst_saving(l, n - 1, bytes / n);
        case HM_COLL_ALLGATHER:
          return (n - 1) * a + (n - 1) / n * bytes * b - ring_burst_saving(l, n - 1, bytes / n);
        case HM_COLL_ALLTOALL:
          return (n - 1) * a + (n - 1) / n * bytes * b;
        case HM_COLL_BROADCAST:  /* pipelined chain: roughly (n-1) hops of latency plus one copy */
          return (n - 1) * a + bytes * b;
        case HM_COLL_REDUCE:
          return (n - 1) * a + bytes * b + reduce_time(l, bytes);
        case HM_COLL_GATHER:
        case HM_COLL_SCATTER:
          return (n - 1) * a + (n - 1) / n * bytes * b;
        case HM_COLL_BARRIER:
          return 2 * (n - 1) * a;
        default:
          return -1.0;
      }
    case HM_ALGO_RECURSIVE_DOUBLING: {
      /* non-power-of-two sizes fold the extra ranks in and out: two more steps */
      const double extra = pow2 ? 0.0 : 2.0;
      switch (kind) {
        case HM_COLL_ALLREDUCE:
          return (lg + extra) * a + (lg + extra) * bytes * b + lg * reduce_time(l, bytes);
        case HM_COLL_ALLGATHER:
          return (lg + extra) * a + (n - 1) / n * bytes * b + extra * bytes * b;
        case HM_COLL_REDUCE_SCATTER:
          return (lg + extra) * a + (n - 1) / n * bytes * b + extra * bytes * b +
                 (n - 1) / n * reduce_time(l, bytes);
        case HM_COLL_BARRIER:
          return (lg + extra) * a;
        default:
          return -1.0;
      }
    }
    case HM_ALGO_TREE:
      switch (kind) {
        case HM_COLL_BROADCAST:
          return lg * (a + bytes * b);
        case HM_COLL_REDUCE:
          return lg * (a + bytes * b + reduce_time(l, bytes));
        case HM_COLL_ALLREDUCE:  /* reduce then broadcast */
          return 2 * lg * (a + bytes * b) + lg * reduce_time(l, bytes);
        case HM_COLL_GATHER:
        case HM_COLL_SCATTER:
          return lg * a + (n - 1) / n * bytes * b;
        case HM_COLL_BARRIER:
          return 2 * lg * a;
        default:
          return -1.0;
      }
    default:
      return -1.0;
  }
}

/* The cross ring's first step after the pool's reduce-scatter (rs_s seconds, while the links
 * between pools idled): what its host link's bucket holds beyond a ring step's refill, in seconds.
 * The host's `sharing` ranks send their step messages (msg bytes each) through it at once. */
static double cross_first_step_saving(const hm_link *cross, int sharing, double msg, double rs_s) {
  if (!(cross->bandwidth > 0)) return 0.0;
  const double host_msg = sharing * msg;
  return (burst_credit(cross, host_msg, rs_s) - burst_credit(cross, host_msg, cross->latency)) / cross->bandwidth;
}

double hm_cost_hier(hm_coll_kind kind, int npools, int per_pool, int sharing, double bytes, const hm_link *pool,
                    const hm_link *cross) {
  if (npools < 1 || per_pool < 1 || sharing < 1) return -1.0;
  const double part = bytes / per_pool; /* what one rank moves between the pools */
  hm_link shared = *cross;               /* one rank's share of its host's link */
  shared.bandwidth = cross->bandwidth / sharing;
  shared.burst = cross->burst / sharing;
  const double rs = hm_cost_collective(HM_COLL_REDUCE_SCATTER, HM_ALGO_RING, per_pool, bytes, pool);
  const double ag = hm_cost_collective(HM_COLL_ALLGATHER, HM_ALGO_RING, per_pool, bytes, pool);
  const double first = per_pool > 1 && npools > 1 ? cross_first_step_saving(cross, sharing, part / npools, rs) : 0.0;
  switch (kind) {
    case HM_COLL_ALLREDUCE:
      return rs + ag + hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, npools, part, &shared) - first;
    case HM_COLL_REDUCE_SCATTER:
      return rs + hm_cost_collective(HM_COLL_REDUCE_SCATTER, HM_ALGO_RING, npools, part, &shared) - first;
    case HM_COLL_ALLGATHER:
      return hm_cost_collective(HM_COLL_ALLGATHER, HM_ALGO_RING, npools, part, &shared) + ag;
    default:
      return -1.0;
  }
}

hm_coll_algo hm_cost_best_algo(hm_coll_kind kind, int nranks, double bytes, const hm_link *link,
                               double *seconds) {
  hm_coll_algo best = HM_ALGO_RING;
  double best_t = INFINITY;
  for (int a = 0; a < HM_ALGO_COUNT; a++) {
    double t = hm_cost_collective(kind, (hm_coll_algo)a, nranks, bytes, link);
    if (t >= 0 && t < best_t) {
      best_t = t;
      best = (hm_coll_algo)a;
    }
  }
  if (seconds) *seconds = best_t;
  return best;
}

double hm_busbw_factor(hm_coll_kind kind, int nranks) {
  const double n = nranks;
  if (nranks <= 1) return kind == HM_COLL_ALLREDUCE ? 0.0 : 1.0;
  switch (kind) {
    case HM_COLL_ALLREDUCE:
      return 2 * (n - 1) / n;
    case HM_COLL_REDUCE_SCATTER:
    case HM_COLL_ALLGATHER:
    case HM_COLL_ALLTOALL:
    case HM_COLL_GATHER:
    case HM_COLL_SCATTER:
      return (n - 1) / n;
    default:
      return 1.0;
  }
}

double hm_cost_zip_bandwidth(double link_bw, const hm_zip_figures *z) {
  if (!(link_bw > 0) || !(z->ratio > 0) || !(z->compress_bw > 0) || !(z->decompress_bw > 0)) return 0.0;
  return fmin(fmin(z->compress_bw, link_bw / z->ratio), z->decompress_bw);
}

double hm_cost_p2p_zip(const hm_link *link, double bytes, double chunk, const hm_zip_figures *z) {
  const double bw = hm_cost_zip_bandwidth(link->bandwidth, z);
  if (!(bw > 0)) return -1.0;
  const double first = fmin(chunk, bytes);
  return link->latency + first / z->compress_bw + first / z->decompress_bw + bytes / bw;
}

int hm_cost_zip_pays(const hm_link *link, double bytes, double chunk, const hm_zip_figures *z) {
  const double t = hm_cost_p2p_zip(link, bytes, chunk, z);
  return t >= 0 && t < hm_cost_p2p(link, bytes);
}

void hm_cost_link_with_zip(const hm_link *in, const hm_zip_figures *z, hm_link *out) {
  *out = *in;
  const double bw = hm_cost_zip_bandwidth(in->bandwidth, z);
  if (bw > out->bandwidth) out->bandwidth = bw;
}
