/* Where each rank is: its machine, its host (a machine's network namespace counts as a host of
 * its own, so a testbed of namespaces on one machine is a cluster of hosts), its pool, and the
 * link figures of the pool and of the links between pools, all learned at bootstrap from the
 * shared rank table so that every rank derives the same topology and the tuner's choices agree.
 *
 * Environment (set by `hetmix launch --cluster`, or by hand):
 *   HETMIX_POOL        the pool (machine room) of this rank; unset: one pool
 *   HETMIX_LINK_POOL   "BW,LAT[,BURST]": bytes/s and seconds of a link between two hosts of one
 *                      pool, and the bytes it passes at once after idling (a shaped link's burst)
 *   HETMIX_LINK_CROSS  "BW,LAT[,BURST]": the same for one rank's link into another pool
 * Rank 0's figures are the ones every rank uses. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "comm/transport/transport.h"
#include "util/util.h"

static uint64_t fnv(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Hostname + boot id: one machine (ranks on it share its cores and memory). */
static uint64_t machine_key(void) {
  char buf[512] = "";
  gethostname(buf, 255);
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    size_t l = strlen(buf);
    if (!fgets(buf + l, (int)(sizeof buf - l), f)) buf[l] = '\0';
    fclose(f);
  }
  return fnv(1469598103934665603ull, buf);
}

/* The machine plus this process's network namespace: ranks in other namespaces reach us only
 * through the network, as another host would. */
static uint64_t host_key(uint64_t machine) {
  struct stat st;
  if (stat("/proc/self/ns/net", &st) != 0) return machine;
  char buf[64];
  snprintf(buf, sizeof buf, "netns:%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  return fnv(machine, buf);
}

static hm_status read_link(const char *var, double out[3]) {
  out[0] = out[1] = out[2] = 0;
  const char *v = getenv(var);
  if (!v || !*v) return HM_OK;
  char *end;
  errno = 0;
  double bw = strtod(v, &end), lat = -1, burst = 0;
  if (*end == ',') lat = strtod(end + 1, &end);
  if (*end == ',') { /* the burst: optional, but not empty */
    const char *b = end + 1;
    burst = strtod(b, &end);
    if (end == b) burst = -1;
  }
  if (errno || *end || !(bw > 0) || !isfinite(bw) || !(lat >= 0) || !(lat <= 10) || !(burst >= 0) || !(burst < 1e12))
    return hm_error(HM_ERR_INVALID_ARG,
                    "%s='%s': give \"bandwidth,latency[,burst]\" in bytes/s (> 0), seconds (0..10) and bytes (>= 0)",
                    var, v);
  out[0] = bw;
  out[1] = lat;
  out[2] = burst;
  return HM_OK;
}

hm_status hm_topo_local(hm_rank_info *me) {
  me->machine_key = machine_key();
  me->host_key = host_key(me->machine_key);
  const char *pool = getenv("HETMIX_POOL");
  if (pool && *pool) {
    size_t n = strlen(pool);
    for (size_t i = 0; i < n; i++)
      if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+", pool[i]))
        return hm_error(HM_ERR_INVALID_ARG, "HETMIX_POOL='%.64s': a pool name has letters, digits and _-.+ only", pool);
    if (n >= sizeof me->pool)
      return hm_error(HM_ERR_INVALID_ARG, "HETMIX_POOL: '%.64s...' is longer than %zu characters", pool,
                      sizeof me->pool - 1);
    memcpy(me->pool, pool, n + 1);
  }
  HM_TRY(read_link("HETMIX_LINK_POOL", me->pool_link));
  return read_link("HETMIX_LINK_CROSS", me->cross_link);
}

/* Index of the first rank < r with the same key, else a new index. */
static int classify(int *of, int n, int *count, int (*same)(const hm_rank_info *, const hm_rank_info *),
                    const hm_rank_info *info) {
  *count = 0;
  for (int r = 0; r < n; r++) {
    of[r] = -1;
    for (int q = 0; q < r && of[r] < 0; q++)
      if (same(&info[q], &info[r])) of[r] = of[q];
    if (of[r] < 0) of[r] = (*count)++;
  }
  return *count;
}
static int same_host(const hm_rank_info *a, const hm_rank_info *b) { return a->host_key == b->host_key; }
static int same_pool(const hm_rank_info *a, const hm_rank_info *b) { return strcmp(a->pool, b->pool) == 0; }

void hm_topo_free(hm_topo *t) {
  free(t->host_of);
  free(t->pool_of);
  free(t->members);
  memset(t, 0, sizeof *t);
}

/* Pools of equal size: members[p * per_pool + i] is the i-th rank (in rank order) of pool p. */
static void layout_pools(hm_topo *t, int n) {
  t->per_pool = n / t->npools;
  t->regular = t->npools >= 2 && t->per_pool * t->npools == n;
  for (int p = 0; p < t->npools && t->regular; p++) {
    int k = 0;
    for (int r = 0; r < n; r++)
      if (t->pool_of[r] == p) {
        if (k == t->per_pool) break;
        t->members[p * t->per_pool + k++] = r;
      }
    if (k != t->per_pool) t->regular = 0;
  }
}

hm_status hm_topo_build(hm_topo *t, const hm_rank_info *info, int n, int me) {
  memset(t, 0, sizeof *t);
  t->host_of = hm_calloc((size_t)n, sizeof(int), "host table");
  t->pool_of = hm_calloc((size_t)n, sizeof(int), "pool table");
  t->members = hm_calloc((size_t)n, sizeof(int), "pool members");
  if (!t->host_of || !t->pool_of || !t->members) {
    hm_topo_free(t);
    return HM_ERR_NOMEM;
  }
  classify(t->host_of, n, &t->nhosts, same_host, info);
  classify(t->pool_of, n, &t->npools, same_pool, info);
  for (int h = 0; h < t->nhosts; h++) {
    int k = 0;
    for (int r = 0; r < n; r++) k += t->host_of[r] == h;
    if (k > t->per_host) t->per_host = k;
  }
  layout_pools(t, n);
  t->me_pool = t->pool_of[me];
  t->me_index = 0;
  for (int r = 0; r < me; r++) t->me_index += t->pool_of[r] == t->me_pool;
  /* the tuner's figures: rank 0's, where given; else the transports' constants */
  hm_link tp;
  hm_transport_job_link(info, n, &tp);
  t->pool_link = t->cross_link = tp;
  const double *pl = info[0].pool_link, *cl = info[0].cross_link;
  if (pl[0] > 0) t->pool_link = (hm_link){pl[0], pl[1], tp.reduce_bw, pl[2]};
  if (cl[0] > 0) t->cross_link = (hm_link){cl[0], cl[1], tp.reduce_bw, cl[2]};
  t->measured = info[0].pool_link[0] > 0 || info[0].cross_link[0] > 0;
  return HM_OK;
}

void hm_topo_peer_links(const hm_topo *t, const hm_rank_info *info, int n, int me, struct hm_peer *peers) {
  for (int r = 0; r < n; r++) {
    const int cross = t->pool_of[r] != t->pool_of[me];
    if (r == me || (!cross && t->host_of[r] == t->host_of[me])) continue;
    peers[r].link_bw = cross ? info[0].cross_link[0] : info[0].pool_link[0];
  }
}

int hm_topo_same_machine(const hm_rank_info *info, int n, int me) {
  int k = 0;
  for (int r = 0; r < n; r++) k += info[r].machine_key == info[me].machine_key;
  return k;
}
