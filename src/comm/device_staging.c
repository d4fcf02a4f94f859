/* hmcomm with device buffers: the registered device of a communicator and the staging pipeline.
 *
 * A call on device buffers is cut into chunks along its elements (per block, for collectives
 * whose buffers hold one block per rank), the same chunks on every rank, and each chunk runs as
 * an ordinary host-memory collective or message. On a non-host device a chunk crosses through a
 * ring of pinned host slots (a send side and a receive side each): the device->host copies of
 * the next chunks are queued ahead (as many as the ring has slots) and run on the device's queue
 * while the host transfers and reduces chunk k, and chunk k's host->device copy is queued right
 * after and completes while chunk k+1 moves. A slot's receive side is reused only after its
 * host->device copy completed, its send side only after its chunk's transfer returned. The
 * device queue is in order, so the event of a chunk's last copy covers the chunk's other pieces.
 * On a host device the chunks pass through in place (its addresses are host pointers), except
 * for per-rank block layouts cut into several chunks, which are copied into the slots (memcpy).
 * On a host-unified device (hm_device_host_unified: pocl on the CPU, an integrated GPU) staging
 * copies would only copy memory to memory: the call maps its buffers (hm_device_map, which
 * waits for the kernels queued before it) and runs as on a host device on the mapped bytes.
 * Reductions run on the host, in the collective algorithms, on the slots or the mapped bytes,
 * except allreduce sums that the cost model sends to the device (device_reduce.c). */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define STAGE_CHUNK_DEFAULT (1L << 20)
#define STAGE_SLOTS_DEFAULT 4

/* ---- registration ---- */
/* HETMIX_REDUCE_SITE: auto (the cost model) [default], host or device. */
static hm_status reduce_site_env(int *mode) {
  const char *v = getenv("HETMIX_REDUCE_SITE");
  *mode = -1;
  if (!v || !*v || strcmp(v, "auto") == 0) return HM_OK;
  if (strcmp(v, "host") == 0) *mode = HM_REDUCE_ON_HOST;
  else if (strcmp(v, "device") == 0) *mode = HM_REDUCE_ON_DEVICE;
  else return hm_error(HM_ERR_INVALID_ARG, "HETMIX_REDUCE_SITE='%s': expected auto, host or device", v);
  return HM_OK;
}

static void stage_free_slots(hm_devstage *s) {
  for (int i = 0; i < HM_STAGE_MAX_SLOTS; i++) {
    if (s->dev) {
      hm_device_free_host(s->dev, s->send[i]);
      hm_device_free_host(s->dev, s->recv[i]);
    }
    s->send[i] = s->recv[i] = NULL;
  }
}

hm_status hm_comm_register_device(hm_comm_t c, struct hm_device *dev) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_register_device: comm is NULL");
  long chunk = STAGE_CHUNK_DEFAULT, slots = STAGE_SLOTS_DEFAULT, map = 1;
  int site = -1;
  if (dev) {
    HM_TRY(reduce_site_env(&site));
    HM_TRY(hm_env_long("HETMIX_STAGE_CHUNK", STAGE_CHUNK_DEFAULT, 4096, 64L << 20, &chunk));
    HM_TRY(hm_env_long("HETMIX_STAGE_SLOTS", STAGE_SLOTS_DEFAULT, 2, HM_STAGE_MAX_SLOTS, &slots));
    HM_TRY(hm_env_long("HETMIX_STAGE_MAP", 1, 0, 1, &map));
  }
  stage_free_slots(&c->stage);
  hm_devasync_release(&c->stage);
  hm_devreduce_release(&c->stage);
  c->stage.dev = dev;
  c->stage.site_mode = site;
  c->stage.host = dev ? hm_device_is_host(dev) : 1;
  c->stage.map = dev && !c->stage.host && map && hm_device_host_unified(dev);
  c->stage.chunk = (size_t)chunk;
  c->stage.nslots = (int)slots;
  return HM_OK;
}

hm_status hm_devstage_alloc_slots(hm_devstage *s) {
  for (int i = 0; i < s->nslots; i++) {
    if (!s->send[i]) HM_TRY(hm_device_alloc_host(s->dev, &s->send[i], s->chunk, "hmcomm staging slot (send)"));
    if (!s->recv[i]) HM_TRY(hm_device_alloc_host(s->dev, &s->recv[i], s->chunk, "hmcomm staging slot (receive)"));
  }
  return HM_OK;
}

/* ---- the plan of one call ---- */
typedef struct stage_side {
  char *dev;     /* device address of block 0 */
  int blocks;    /* 0: not used on this rank; else 1 or nranks */
  size_t stride; /* bytes from one block to the next in the device buffer */
} stage_side;

typedef struct stage_plan {
  hm_comm_t c;
  hm_device *dev;
  stage_side s, r;
  size_t es;     /* bytes per element */
  size_t total;  /* elements per block */
  size_t chunk;  /* elements per block in one chunk (the same on every rank) */
  int hostmem;   /* s.dev and r.dev are host pointers (host device, or mapped): memcpy stages */
  /* one chunk's host-memory operation */
  hm_coll_kind kind;
  hm_dtype dt;
  hm_redop op;
  int root, peer, is_p2p, is_send;
} stage_plan;

static hm_status plan_run(const stage_plan *p, const void *hs, void *hr, size_t n) {
  if (p->is_p2p) return hm_comm_p2p_host(p->c, p->is_send ? (void *)hs : hr, n, p->dt, p->peer, p->is_send);
  return hm_comm_coll_host(p->c, p->kind, hs, hr, n, p->dt, p->op, p->root);
}

/* The per-rank block counts a collective's buffers nominally hold (every rank alike). */
static void kind_blocks(hm_coll_kind k, int n, int *sb, int *rb) {
  *sb = (k == HM_COLL_REDUCE_SCATTER || k == HM_COLL_ALLTOALL || k == HM_COLL_SCATTER) ? n : 1;
  *rb = (k == HM_COLL_ALLGATHER || k == HM_COLL_ALLTOALL || k == HM_COLL_GATHER) ? n : 1;
}

static size_t chunk_elems(const hm_devstage *s, size_t es, int blocks) {
  size_t c = s->chunk / (es * (size_t)blocks);
  return c ? c : 1;
}

/* ---- the pipeline ---- */
typedef struct stage_ring {
  hm_device_event *in[HM_STAGE_MAX_SLOTS], *out[HM_STAGE_MAX_SLOTS];
} stage_ring;

/* One staging copy: queued on the device, or a memcpy where both sides are host memory. */
static hm_status stage_copy(const stage_plan *p, int h2d, void *dst, const void *src, size_t bytes,
                            hm_device_event **ev) {
  if (p->hostmem) {
    if (bytes) memcpy(dst, src, bytes);
    return HM_OK;
  }
  return h2d ? hm_device_copy_h2d_async(p->dev, dst, src, bytes, ev) : hm_device_copy_d2h_async(p->dev, dst, src, bytes, ev);
}

/* Queues the device->host copies of chunk k (elements [off, off+n) of each block) into slot i. */
static hm_status stage_in(const stage_plan *p, stage_ring *g, int i, size_t off, size_t n) {
  char *slot = p->c->stage.send[i];
  for (int q = 0; q < p->s.blocks; q++) {
    int last = q == p->s.blocks - 1;
    HM_TRY(stage_copy(p, 0, slot + (size_t)q * n * p->es, p->s.dev + (size_t)q * p->s.stride + off * p->es,
                      n * p->es, last ? &g->in[i] : NULL));
  }
  return HM_OK;
}

/* Queues the host->device copies of chunk k out of slot i. */
static hm_status stage_out(const stage_plan *p, stage_ring *g, int i, size_t off, size_t n) {
  char *slot = p->c->stage.recv[i];
  for (int q = 0; q < p->r.blocks; q++) {
    int last = q == p->r.blocks - 1;
    HM_TRY(stage_copy(p, 1, p->r.dev + (size_t)q * p->r.stride + off * p->es, slot + (size_t)q * n * p->es,
                      n * p->es, last ? &g->out[i] : NULL));
  }
  return HM_OK;
}

static hm_status wait_event(const stage_plan *p, hm_device_event **ev) {
  hm_device_event *e = *ev;
  *ev = NULL;
  return hm_device_event_wait(p->dev, e, p->c->cfg.timeout_ms);
}

/* After an error: every copy still queued ends before its slot is touched again; the first
 * error stays the one reported. */
static hm_status drain(const stage_plan *p, stage_ring *g, int nslots, hm_status st) {
  char keep[512];
  hm_strcpy(keep, sizeof keep, hm_last_error());
  for (int i = 0; i < nslots; i++) {
    wait_event(p, &g->in[i]);
    wait_event(p, &g->out[i]);
  }
  return hm_error(st, "%s", keep);
}

static size_t chunk_len(const stage_plan *p, size_t k) {
  size_t off = k * p->chunk;
  return p->total - off < p->chunk ? p->total - off : p->chunk;
}

/* Where a staged call's time went (logged at level debug for calls of several chunks). */
typedef struct stage_times {
  uint64_t wait_in, run, wait_out; /* ns waiting for device->host copies, in transfers, for host->device */
} stage_times;

static hm_status timed_wait(const stage_plan *p, hm_device_event **ev, uint64_t *acc) {
  uint64_t t0 = hm_now_ns();
  hm_status st = wait_event(p, ev);
  *acc += hm_now_ns() - t0;
  return st;
}

static hm_status pipeline_steps(const stage_plan *p, stage_ring *g, size_t nch, int ns, stage_times *tm) {
  for (size_t k = 0; k < nch && k < (size_t)ns; k++)
    if (p->s.blocks) HM_TRY(stage_in(p, g, (int)k, k * p->chunk, chunk_len(p, k)));
  for (size_t k = 0; k < nch; k++) {
    int i = (int)(k % (size_t)ns);
    size_t n = chunk_len(p, k);
    HM_TRY(timed_wait(p, &g->in[i], &tm->wait_in));   /* chunk k is in slot i */
    HM_TRY(timed_wait(p, &g->out[i], &tm->wait_out)); /* chunk k-ns left slot i */
    uint64_t t0 = hm_now_ns();
    HM_TRY(plan_run(p, p->s.blocks ? p->c->stage.send[i] : NULL, p->r.blocks ? p->c->stage.recv[i] : NULL, n));
    tm->run += hm_now_ns() - t0;
    if (p->r.blocks) HM_TRY(stage_out(p, g, i, k * p->chunk, n));
    if (p->s.blocks && k + (size_t)ns < nch) HM_TRY(stage_in(p, g, i, (k + (size_t)ns) * p->chunk, chunk_len(p, k + (size_t)ns)));
  }
  for (int i = 0; i < ns; i++) HM_TRY(timed_wait(p, &g->out[i], &tm->wait_out));
  return HM_OK;
}

/* A call of one chunk has nothing to overlap: blocking copies, no events to make and poll. */
static hm_status single_chunk(const stage_plan *p) {
  hm_devstage *s = &p->c->stage;
  size_t n = p->total, bytes = n * p->es;
  char *hs = s->send[0], *hr = s->recv[0];
  for (int q = 0; q < p->s.blocks; q++)
    HM_TRY(p->hostmem ? stage_copy(p, 0, hs + (size_t)q * bytes, p->s.dev + (size_t)q * p->s.stride, bytes, NULL)
                      : hm_device_copy_d2h(p->dev, hs + (size_t)q * bytes, p->s.dev + (size_t)q * p->s.stride, bytes));
  HM_TRY(plan_run(p, p->s.blocks ? hs : NULL, p->r.blocks ? hr : NULL, n));
  for (int q = 0; q < p->r.blocks; q++)
    HM_TRY(p->hostmem ? stage_copy(p, 1, p->r.dev + (size_t)q * p->r.stride, hr + (size_t)q * bytes, bytes, NULL)
                      : hm_device_copy_h2d(p->dev, p->r.dev + (size_t)q * p->r.stride, hr + (size_t)q * bytes, bytes));
  return HM_OK;
}

static hm_status pipeline(const stage_plan *p) {
  hm_devstage *s = &p->c->stage;
  HM_TRY(hm_devstage_alloc_slots(s));
  size_t nch = p->total ? (p->total + p->chunk - 1) / p->chunk : 1;
  if (nch == 1) return single_chunk(p);
  stage_ring g;
  memset(&g, 0, sizeof g);
  stage_times tm = {0, 0, 0};
  uint64_t t0 = hm_now_ns();
  hm_status st = pipeline_steps(p, &g, nch, s->nslots, &tm);
  if (st == HM_OK && nch > 1)
    hm_log(HM_LOG_DEBUG, "rank %d: staged %s of %zu x %zu elements in %zu chunks: %.0f us, of which %.0f us "
           "in transfers, %.0f us waiting for device->host copies, %.0f us for host->device copies",
           p->c->rank, p->is_p2p ? (p->is_send ? "send" : "recv") : hm_coll_kind_name(p->kind), p->total,
           p->s.blocks > p->r.blocks ? (size_t)p->s.blocks : (size_t)p->r.blocks, nch,
           (double)(hm_now_ns() - t0) / 1e3, (double)tm.run / 1e3, (double)tm.wait_in / 1e3, (double)tm.wait_out / 1e3);
  return st == HM_OK ? HM_OK : drain(p, &g, s->nslots, st);
}

/* Host device, one block per side (or one chunk): each chunk runs on the buffers in place. */
static hm_status pass_through(const stage_plan *p) {
  size_t nch = p->total ? (p->total + p->chunk - 1) / p->chunk : 1;
  for (size_t k = 0; k < nch; k++) {
    size_t off = k * p->chunk * p->es;
    HM_TRY(plan_run(p, p->s.blocks ? p->s.dev + off : NULL, p->r.blocks ? p->r.dev + off : NULL, chunk_len(p, k)));
  }
  return HM_OK;
}

/* Buffers that are host memory (host device, or mapped): in place, or through the slots by
 * memcpy where a chunk of several blocks is not contiguous. */
static hm_status host_exec(const stage_plan *p) {
  size_t nch = p->total ? (p->total + p->chunk - 1) / p->chunk : 1;
  int strided = p->s.blocks > 1 || p->r.blocks > 1;
  if (!strided || nch == 1) return pass_through(p);
  return pipeline(p);
}

/* ---- mapped buffers (host-unified devices) ---- */
typedef struct stage_maps {
  char *dev[2], *host[2]; /* the mapped device ranges (NULL: none) and their host pointers */
} stage_maps;

static size_t side_bytes(const stage_plan *p, const stage_side *sd) {
  return sd->blocks ? (size_t)(sd->blocks - 1) * sd->stride + p->total * p->es : 0;
}

static hm_status unmap_sides(const stage_plan *p, stage_maps *m) {
  hm_status st = HM_OK;
  for (int i = 0; i < 2; i++) {
    if (!m->dev[i]) continue;
    hm_status su = hm_device_unmap(p->dev, m->dev[i], m->host[i]);
    if (st == HM_OK) st = su;
    m->dev[i] = NULL;
  }
  return st;
}

/* Maps each used side of p into host memory and points q's sides at the mapped bytes. Sides
 * that overlap (in place, or one allocation's overlapping ranges) are mapped once, as one
 * range, so their host pointers keep the same relation as the device addresses. */
static hm_status map_sides(const stage_plan *p, stage_plan *q, stage_maps *m) {
  size_t sb = side_bytes(p, &p->s), rb = side_bytes(p, &p->r);
  char *s0 = p->s.dev, *r0 = p->r.dev;
  int overlap = sb && rb && s0 < r0 + rb && r0 < s0 + sb;
  if (overlap) {
    char *lo = s0 < r0 ? s0 : r0, *hi = s0 + sb > r0 + rb ? s0 + sb : r0 + rb;
    HM_TRY(hm_device_map(p->dev, lo, (size_t)(hi - lo), HM_MAP_READ | HM_MAP_WRITE, (void **)&m->host[0]));
    m->dev[0] = lo;
    q->s.dev = m->host[0] + (s0 - lo);
    q->r.dev = m->host[0] + (r0 - lo);
    return HM_OK;
  }
  if (sb) {
    HM_TRY(hm_device_map(p->dev, s0, sb, HM_MAP_READ, (void **)&m->host[0]));
    m->dev[0] = s0;
    q->s.dev = m->host[0];
  }
  if (rb) {
    hm_status st = hm_device_map(p->dev, r0, rb, HM_MAP_WRITE, (void **)&m->host[1]);
    if (st != HM_OK) {
      unmap_sides(p, m);
      return st;
    }
    m->dev[1] = r0;
    q->r.dev = m->host[1];
  }
  return HM_OK;
}

/* The call runs on the mapped bytes; the buffers are unmapped whatever happened (the first
 * error is the one reported). */
static hm_status mapped_exec(const stage_plan *p) {
  stage_plan q = *p;
  q.hostmem = 1;
  stage_maps m = {{NULL, NULL}, {NULL, NULL}};
  HM_TRY(map_sides(p, &q, &m));
  hm_status st = host_exec(&q);
  if (st == HM_OK) return unmap_sides(p, &m);
  char keep[512];
  hm_strcpy(keep, sizeof keep, hm_last_error());
  unmap_sides(p, &m);
  return hm_error(st, "%s", keep);
}

static hm_status plan_exec(const stage_plan *p) {
  if (p->c->stage.host) return host_exec(p);
  if (p->c->stage.map && p->total) return mapped_exec(p);
  return pipeline(p);
}

hm_status hm_devstage_coll(hm_comm_t c, hm_coll_kind kind, const void *sendbuf, void *recvbuf, size_t count,
                           hm_dtype dt, hm_redop op, int root) {
  int n = c->nranks, sb, rb;
  kind_blocks(kind, n, &sb, &rb);
  stage_plan p = {.c = c, .dev = c->stage.dev, .es = hm_dtype_size(dt), .total = count, .kind = kind,
                  .dt = dt, .op = op, .root = root, .hostmem = c->stage.host};
  p.chunk = chunk_elems(&c->stage, p.es, sb > rb ? sb : rb);
  int at_root = c->rank == root;
  int use_s = !((kind == HM_COLL_BROADCAST || kind == HM_COLL_SCATTER) && !at_root);
  int use_r = !((kind == HM_COLL_REDUCE || kind == HM_COLL_GATHER) && !at_root);
  p.s = (stage_side){(char *)sendbuf, use_s ? sb : 0, count * p.es};
  p.r = (stage_side){recvbuf, use_r ? rb : 0, count * p.es};
  int done = 0;
  hm_status st = kind == HM_COLL_ALLREDUCE ? hm_devreduce_allreduce(c, sendbuf, recvbuf, count, dt, op, p.chunk, &done)
                                           : HM_OK;
  if (st == HM_OK && !done) st = plan_exec(&p);
  if (st != HM_OK) return hm_error_context(st, "%s on device %s: ", hm_coll_kind_name(kind), hm_device_spec(p.dev));
  return st;
}

hm_status hm_devstage_p2p(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send) {
  stage_plan p = {.c = c, .dev = c->stage.dev, .es = hm_dtype_size(dt), .total = count, .dt = dt,
                  .peer = peer, .is_p2p = 1, .is_send = is_send, .hostmem = c->stage.host};
  p.chunk = chunk_elems(&c->stage, p.es, 1);
  p.s = (stage_side){is_send ? buf : NULL, is_send, 0};
  p.r = (stage_side){is_send ? NULL : buf, !is_send, 0};
  hm_status st = plan_exec(&p);
  if (st != HM_OK)
    return hm_error_context(st, "%s on device %s: ", is_send ? "send" : "recv", hm_device_spec(p.dev));
  return st;
}
