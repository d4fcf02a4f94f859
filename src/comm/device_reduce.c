/* Allreduce sums of device buffers reduced on the device: where reductions of device buffers
 * run, host or device, decided by the cost model (cost.h: hm_cost_reduce_site) from every
 * rank's terms, or forced with HETMIX_REDUCE_SITE=host|device.
 *
 * The device path is coll.c's ring allreduce run step by step, chunk by chunk (the staging
 * layer's chunks): the same segments, the same order of steps and the same neighbours, so every
 * element is summed in the same association as on the host path, and the results are bitwise
 * the same (each step adds two operands; IEEE addition is commutative). Each reduce-scatter
 * step copies the segment to send device->host, exchanges it with the neighbours (one send and
 * one receive in a group), copies the incoming segment host->device and adds it into the
 * destination with a device kernel (hm_dev_residual_backward: dst += incoming, elementwise);
 * the allgather steps copy finished segments the same way. It is taken only where the host
 * path would run the ring for every chunk (or with two ranks, where every algorithm adds the
 * same two operands), for sums in the dtype of every rank's device.
 *
 * Every rank must take the same path. The terms (staging copy bandwidth and latency, host and
 * device reduction bandwidth, kernel latency, whether the host path maps the buffers) are
 * measured by each rank at its first allreduce sum on device buffers and exchanged there with
 * an allgather, so all ranks decide from the same table. */
#include <math.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

_Static_assert(sizeof(hm_device_xfer) == HM_DEVICE_XFER_FIELDS * sizeof(double),
               "hm_device_xfer is exchanged as an array of doubles");

/* The segments of coll.c's ring (seg_off/seg_len there). */
static size_t seg_off(size_t count, int n, int i) {
  size_t base = count / (size_t)n, rem = count % (size_t)n;
  return (size_t)i * base + ((size_t)i < rem ? (size_t)i : rem);
}
static size_t seg_len(size_t count, int n, int i) {
  return count / (size_t)n + ((size_t)i < count % (size_t)n ? 1 : 0);
}
static int mod(int a, int n) { return ((a % n) + n) % n; }

void hm_devreduce_release(hm_devstage *s) {
  if (s->dev) {
    hm_device_free(s->dev, s->tmp);
    hm_device_free_host(s->dev, s->table);
  }
  s->tmp = NULL;
  s->table = NULL;
}

static hm_status ensure_tmp(hm_devstage *s) {
  if (!s->tmp) HM_TRY(hm_device_alloc(s->dev, &s->tmp, 2 * s->chunk, "hmcomm device reduction scratch"));
  return HM_OK;
}

/* ---- the terms ---- */
static double seconds(uint64_t t0) { return (double)(hm_now_ns() - t0) * 1e-9; }

typedef struct probe_times {
  double d2h, h2d, small_copy, kernel, small_kernel, host;
} probe_times;

static hm_status probe_once(hm_comm_t c, size_t n, probe_times *t) {
  hm_devstage *s = &c->stage;
  hm_device *d = s->dev;
  size_t es = hm_device_elem_size(d), bytes = n * es;
  char *a = s->tmp, *b = hm_device_offset(d, s->tmp, n);
  uint64_t t0 = hm_now_ns();
  if (!s->host) {
    HM_TRY(hm_device_copy_d2h(d, s->send[0], a, bytes));
    t->d2h = seconds(t0);
    t0 = hm_now_ns();
    HM_TRY(hm_device_copy_h2d(d, a, s->recv[0], bytes));
    t->h2d = seconds(t0);
    t0 = hm_now_ns();
    HM_TRY(hm_device_copy_d2h(d, s->send[0], a, es));
    t->small_copy = seconds(t0);
  }
  t0 = hm_now_ns();
  HM_TRY(hm_dev_residual_backward(d, a, NULL, b, n));
  HM_TRY(hm_device_synchronize(d));
  t->kernel = seconds(t0);
  t0 = hm_now_ns();
  HM_TRY(hm_dev_residual_backward(d, a, NULL, b, 1));
  HM_TRY(hm_device_synchronize(d));
  t->small_kernel = seconds(t0);
  t0 = hm_now_ns();
  hm_reduce(s->recv[0], s->recv[0], s->send[0], n, hm_device_dtype(d), HM_SUM, 0);
  t->host = seconds(t0);
  return HM_OK;
}

hm_status hm_devreduce_measure(hm_comm_t c, hm_device_xfer *out) {
  hm_devstage *s = &c->stage;
  HM_TRY(hm_devstage_alloc_slots(s));
  HM_TRY(ensure_tmp(s));
  hm_device *d = s->dev;
  size_t es = hm_device_elem_size(d), n = s->chunk / es, bytes = n * es;
  HM_TRY(hm_device_zero(d, s->tmp, 2 * bytes)); /* zeros: no denormals or NaNs in the timed sums */
  memset(s->send[0], 0, bytes);
  memset(s->recv[0], 0, bytes);
  HM_TRY(hm_device_synchronize(d));
  probe_times best = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
  for (int rep = 0; rep < 2; rep++) { /* the faster of two: the first may pay first-touch costs */
    probe_times t = {0, 0, 0, 0, 0, 0};
    HM_TRY(probe_once(c, n, &t));
    best.d2h = fmin(best.d2h, t.d2h), best.h2d = fmin(best.h2d, t.h2d);
    best.small_copy = fmin(best.small_copy, t.small_copy), best.kernel = fmin(best.kernel, t.kernel);
    best.small_kernel = fmin(best.small_kernel, t.small_kernel), best.host = fmin(best.host, t.host);
  }
  double b = (double)bytes, tiny = 1e-9;
  memset(out, 0, sizeof *out);
  if (!s->host) {
    out->d2h_bw = b / fmax(best.d2h, tiny);
    out->h2d_bw = b / fmax(best.h2d, tiny);
    out->copy_latency = best.small_copy;
  }
  out->host_reduce_bw = b / fmax(best.host, tiny);
  out->dev_reduce_bw = b / fmax(best.kernel - best.small_kernel, tiny);
  out->kernel_latency = best.small_kernel;
  out->mapped = s->map ? 1.0 : 0.0;
  return HM_OK;
}

/* Measures this rank's terms and gathers every rank's (all ranks are in the same allreduce). */
static hm_status exchange_terms(hm_comm_t c) {
  hm_devstage *s = &c->stage;
  double mine[HM_DEVSTAGE_TERMS];
  hm_device_xfer t;
  HM_TRY(hm_devreduce_measure(c, &t));
  memcpy(mine, &t, sizeof t);
  mine[HM_DEVICE_XFER_FIELDS] = (double)hm_device_dtype(s->dev);
  double *table = NULL;
  HM_TRY(hm_device_alloc_host(s->dev, (void **)&table, sizeof mine * (size_t)c->nranks, "hmcomm reduction terms"));
  hm_status st = hm_comm_coll_host(c, HM_COLL_ALLGATHER, mine, table, HM_DEVSTAGE_TERMS, HM_FLOAT64, HM_SUM, 0);
  if (st != HM_OK) {
    hm_device_free_host(s->dev, table);
    return st;
  }
  s->table = table;
  return HM_OK;
}

/* 1: this allreduce (count elements of dt, chunks of `chunk`) sums on the device. Every input
 * is the same on every rank (arguments, the exchanged table, the shared link figures). */
static int choose_device(hm_comm_t c, size_t count, hm_dtype dt, size_t chunk) {
  const hm_devstage *s = &c->stage;
  const int n = c->nranks;
  const size_t es = hm_dtype_size(dt);
  for (int r = 0; r < n; r++)
    if ((int)s->table[(size_t)r * HM_DEVSTAGE_TERMS + HM_DEVICE_XFER_FIELDS] != (int)dt) return 0;
  size_t full = count < chunk ? count : chunk, last = count % chunk ? count % chunk : full;
  if (n > 2 && (hm_coll_choose(c, HM_COLL_ALLREDUCE, full * es) != HM_ALGO_RING ||
                hm_coll_choose(c, HM_COLL_ALLREDUCE, last * es) != HM_ALGO_RING))
    return 0;
  if (s->site_mode >= 0) return s->site_mode == HM_REDUCE_ON_DEVICE;
  hm_device_xfer terms[64];
  int nt = n < 64 ? n : 64;
  for (int r = 0; r < nt; r++) memcpy(&terms[r], &s->table[(size_t)r * HM_DEVSTAGE_TERMS], sizeof terms[r]);
  double th = 0, td = 0;
  hm_reduce_site site = hm_cost_reduce_site(terms, nt, n, (double)(full * es), &c->link, &th, &td);
  hm_log(HM_LOG_DEBUG, "rank %d: allreduce of %zu x %s on device buffers: host %.0f us, device %.0f us per "
         "chunk: sums on the %s", c->rank, count, hm_dtype_name(dt), th * 1e6, td * 1e6,
         site == HM_REDUCE_ON_DEVICE ? "device" : "host");
  return site == HM_REDUCE_ON_DEVICE;
}

/* ---- the ring, reducing on the device ---- */
typedef struct ring {
  hm_comm_t c;
  hm_device *d;
  hm_dtype dt;
  size_t es;
  int host; /* device addresses are host pointers: no staging copies */
} ring;

static hm_status sendrecv(const ring *g, const void *hs, size_t sn, void *hr, size_t rn) {
  hm_comm_t c = g->c;
  HM_TRY(hm_group_start());
  hm_status st = hm_comm_p2p_host(c, (void *)hs, sn, g->dt, mod(c->rank + 1, c->nranks), 1);
  if (st == HM_OK) st = hm_comm_p2p_host(c, hr, rn, g->dt, mod(c->rank - 1, c->nranks), 0);
  hm_status se = hm_group_end();
  return st != HM_OK ? st : se;
}

/* Sends sn elements at device address src to the right, receives rn from the left into dst. */
static hm_status exchange(const ring *g, const char *src, size_t sn, char *dst, size_t rn) {
  hm_devstage *s = &g->c->stage;
  if (g->host) return sendrecv(g, src, sn, dst, rn);
  if (sn) HM_TRY(hm_device_copy_d2h(g->d, s->send[0], src, sn * g->es));
  HM_TRY(sendrecv(g, s->send[0], sn, s->recv[0], rn));
  if (rn) HM_TRY(hm_device_copy_h2d(g->d, dst, s->recv[0], rn * g->es));
  return HM_OK;
}

/* One chunk of len elements: sb, rb are device addresses of the chunk's first element. */
static hm_status ring_chunk(const ring *g, const char *sb, char *rb, size_t len) {
  const int n = g->c->nranks, r = g->c->rank;
  const size_t es = g->es;
  char *tmp = g->c->stage.tmp;
  if (sb != rb) HM_TRY(hm_device_copy_d2d(g->d, rb, sb, len * es));
  for (int k = 0; k < n - 1; k++) { /* reduce-scatter: rb[rs] = incoming + ours */
    int ss = mod(r - k - 1, n), rs = mod(r - k - 2, n);
    size_t rn = seg_len(len, n, rs);
    HM_TRY(exchange(g, rb + seg_off(len, n, ss) * es, seg_len(len, n, ss), tmp, rn));
    if (rn) HM_TRY(hm_dev_residual_backward(g->d, rb + seg_off(len, n, rs) * es, NULL, tmp, rn));
  }
  for (int k = 0; k < n - 1; k++) { /* allgather of the finished segments */
    int ss = mod(r - k, n), rs = mod(r - k - 1, n);
    HM_TRY(exchange(g, rb + seg_off(len, n, ss) * es, seg_len(len, n, ss), rb + seg_off(len, n, rs) * es,
                    seg_len(len, n, rs)));
  }
  return HM_OK;
}

hm_status hm_devreduce_allreduce(hm_comm_t c, const void *sendbuf, void *recvbuf, size_t count, hm_dtype dt,
                                 hm_redop op, size_t chunk, int *done) {
  hm_devstage *s = &c->stage;
  *done = 0;
  if (c->nranks < 2 || op != HM_SUM || !count) return HM_OK;
  if (!s->table) HM_TRY(exchange_terms(c));
  if (!choose_device(c, count, dt, chunk)) return HM_OK;
  HM_TRY(hm_devstage_alloc_slots(s));
  HM_TRY(ensure_tmp(s));
  ring g = {c, s->dev, dt, hm_dtype_size(dt), s->host};
  for (size_t off = 0; off < count; off += chunk) {
    size_t len = count - off < chunk ? count - off : chunk;
    HM_TRY(ring_chunk(&g, (const char *)sendbuf + off * g.es, (char *)recvbuf + off * g.es, len));
  }
  s->dev_reductions++;
  *done = 1;
  return HM_OK;
}
