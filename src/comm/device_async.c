/* Nonblocking calls on device buffers: hm_comm_isend, hm_comm_irecv and hm_comm_iallreduce with
 * buffers on the registered device, alone or between hm_group_start and hm_group_end.
 *
 * A call is cut into the same chunks as the blocking path (device_staging.c: HETMIX_STAGE_CHUNK
 * bytes of elements), each chunk an ordinary nonblocking host-memory message or allreduce, so a
 * rank's nonblocking call pairs with a peer's blocking one. The returned request carries the
 * device-side work, all of it done in the caller's thread (the device is used from that thread
 * only):
 *  - host device (cpu, ref): the chunks run on the buffers in place; nothing else to do.
 *  - host-unified device with mapping on (HETMIX_STAGE_MAP): the buffers are mapped at issue
 *    (hm_device_map waits for the kernels queued before it), the chunks run on the mapped
 *    bytes, and the wait (or the test that finds them done) unmaps them.
 *  - other devices: the bytes cross through one pinned host buffer per request (a pool on the
 *    communicator reuses them). At issue every chunk's device->host copy is queued, and each
 *    chunk's transfer is issued as soon as its copy completed (chunk k moves while chunk k+1 is
 *    copied). At the wait each chunk's host->device copy is queued as soon as its transfer
 *    completed (it runs while the next chunk's transfer is waited for); the wait ends when the
 *    last copy has.
 * Allreduce sums of nonblocking calls run on the host (device_reduce.c serves blocking calls).
 * Every wait has a deadline: the transfers their own (hm_comm_config.timeout_ms), device copies
 * hm_device_event_wait's. On any error the request's outstanding chunks are waited for, its
 * mapping undone and its host buffer returned before the first error is reported. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

enum { DV_HOST, DV_MAP, DV_STAGE };

struct hm_devreq {
  hm_comm_t c;
  hm_device *dev;
  int mode;
  int is_send;         /* 1: nothing comes back to the device (send) */
  hm_request_t *req;   /* one per chunk; NULL once waited */
  size_t nreq;
  size_t es, total, chunk; /* bytes per element, elements, elements per chunk */
  char *out;           /* device address the results land in (recv, allreduce), else NULL */
  char *hs, *hr;       /* host bytes of the send and receive sides (mapped, pooled or in place) */
  char *map_dev[2];    /* mapped device ranges (NULL: none) */
  char *map_host[2];
  int slot;            /* pool entry of the host buffer, -1: none */
};

/* ---- the pool of pinned host buffers ---- */
void hm_devasync_release(hm_devstage *s) {
  for (int i = 0; i < HM_STAGE_POOL; i++) {
    if (s->dev && s->pool[i]) hm_device_free_host(s->dev, s->pool[i]);
    s->pool[i] = NULL;
    s->pool_bytes[i] = 0;
    s->pool_busy[i] = 0;
  }
}

/* The smallest free pooled buffer of at least `bytes`, else a new one in a free entry (the
 * largest idle one is replaced when every entry is taken but some are idle). */
static hm_status pool_take(hm_devstage *s, size_t bytes, int *slot, char **buf) {
  int best = -1, empty = -1, idle = -1;
  for (int i = 0; i < HM_STAGE_POOL; i++) {
    if (s->pool_busy[i]) continue;
    if (!s->pool[i]) {
      if (empty < 0) empty = i;
    } else if (s->pool_bytes[i] >= bytes) {
      if (best < 0 || s->pool_bytes[i] < s->pool_bytes[best]) best = i;
    } else if (idle < 0) {
      idle = i;
    }
  }
  if (best < 0) {
    best = empty >= 0 ? empty : idle;
    if (best < 0)
      return hm_error(HM_ERR_UNSUPPORTED, "more than %d nonblocking staged calls in flight on device %s",
                      HM_STAGE_POOL, hm_device_spec(s->dev));
    hm_device_free_host(s->dev, s->pool[best]);
    s->pool[best] = NULL;
    s->pool_bytes[best] = 0;
    HM_TRY(hm_device_alloc_host(s->dev, &s->pool[best], bytes, "hmcomm nonblocking staging buffer"));
    s->pool_bytes[best] = bytes;
  }
  s->pool_busy[best] = 1;
  *slot = best;
  *buf = s->pool[best];
  return HM_OK;
}

/* ---- completion and cleanup ---- */
static size_t chunk_n(const struct hm_devreq *d, size_t k) {
  size_t off = k * d->chunk;
  return d->total - off < d->chunk ? d->total - off : d->chunk;
}

/* Waits the chunks not waited yet; the first error is kept. */
static hm_status wait_chunks(struct hm_devreq *d, hm_status st) {
  for (size_t k = 0; k < d->nreq; k++) {
    if (!d->req[k]) continue;
    hm_status s2 = hm_request_wait(d->req[k]);
    d->req[k] = NULL;
    if (st == HM_OK && s2 != HM_OK) st = s2;
  }
  return st;
}

/* Unmaps, returns the host buffer and frees d; st (with its message) is what it returns. */
static hm_status devreq_free(struct hm_devreq *d, hm_status st) {
  char keep[512] = "";
  if (st != HM_OK) hm_strcpy(keep, sizeof keep, hm_last_error());
  for (int i = 0; i < 2; i++)
    if (d->map_dev[i]) {
      hm_status su = hm_device_unmap(d->dev, d->map_dev[i], d->map_host[i]);
      if (st == HM_OK && su != HM_OK) st = su, hm_strcpy(keep, sizeof keep, hm_last_error());
    }
  if (d->slot >= 0) d->c->stage.pool_busy[d->slot] = 0;
  free(d->req);
  free(d);
  return st == HM_OK ? HM_OK : hm_error(st, "%s", keep);
}

/* Staged results: each chunk's host->device copy is queued once its transfer completed. */
static hm_status stage_back(struct hm_devreq *d) {
  hm_device_event *ev = NULL;
  for (size_t k = 0; k < d->nreq; k++) {
    hm_status st = d->req[k] ? hm_request_wait(d->req[k]) : HM_OK; /* NULL: a test saw it complete */
    d->req[k] = NULL;
    size_t off = k * d->chunk * d->es, bytes = chunk_n(d, k) * d->es;
    int last = k + 1 == d->nreq;
    if (st == HM_OK && bytes) st = hm_device_copy_h2d_async(d->dev, d->out + off, d->hr + off, bytes, last ? &ev : NULL);
    if (st != HM_OK) {
      st = wait_chunks(d, st);
      char keep[512];
      hm_strcpy(keep, sizeof keep, hm_last_error());
      hm_device_synchronize(d->dev); /* no copy may still read the host buffer */
      return hm_error(st, "%s", keep);
    }
  }
  return hm_device_event_wait(d->dev, ev, d->c->cfg.timeout_ms);
}

hm_status hm_devasync_wait(struct hm_devreq *d) {
  hm_status st = d->mode == DV_STAGE && d->out ? stage_back(d) : wait_chunks(d, HM_OK);
  st = devreq_free(d, st);
  return st == HM_OK ? HM_OK : hm_error_context(st, "waiting for a nonblocking call on device buffers: ");
}

hm_status hm_devasync_test(struct hm_devreq *d, int *done) {
  *done = 0;
  for (size_t k = 0; k < d->nreq; k++) {
    if (!d->req[k]) continue;
    int dk = 0;
    hm_status st = hm_request_test(d->req[k], &dk);
    if (dk) d->req[k] = NULL; /* the test freed it */
    if (st != HM_OK) {
      *done = 1;
      char keep[512];
      hm_strcpy(keep, sizeof keep, hm_last_error());
      wait_chunks(d, st);
      return devreq_free(d, hm_error(st, "%s", keep));
    }
    if (!dk) return HM_OK;
  }
  *done = 1;
  return hm_devasync_wait(d);
}

void hm_devasync_discard(struct hm_devreq *d) {
  free(d->req);
  free(d);
}

/* ---- issue ---- */
static hm_status map_range(struct hm_devreq *d, int i, void *addr, size_t bytes, int flags, char **host) {
  HM_TRY(hm_device_map(d->dev, addr, bytes, flags, (void **)host));
  d->map_dev[i] = addr;
  d->map_host[i] = *host;
  return HM_OK;
}

/* Points hs/hr at host bytes: in place, mapped, or a pooled buffer the send side is copied into
 * (the copies queued; events in ev[k], one per chunk). */
static hm_status prepare(struct hm_devreq *d, char *sb, char *rb, hm_device_event **ev) {
  size_t bytes = d->total * d->es;
  if (d->mode == DV_HOST || !bytes) {
    d->hs = sb;
    d->hr = rb;
    return HM_OK;
  }
  if (d->mode == DV_MAP) {
    if (sb && rb && sb == rb) {
      HM_TRY(map_range(d, 0, sb, bytes, HM_MAP_READ | HM_MAP_WRITE, &d->hs));
      d->hr = d->hs;
      return HM_OK;
    }
    if (sb) HM_TRY(map_range(d, 0, sb, bytes, HM_MAP_READ, &d->hs));
    if (rb) HM_TRY(map_range(d, 1, rb, bytes, HM_MAP_WRITE, &d->hr));
    return HM_OK;
  }
  char *buf = NULL;
  HM_TRY(pool_take(&d->c->stage, bytes, &d->slot, &buf));
  d->hs = sb ? buf : NULL;
  d->hr = rb ? buf : NULL;
  for (size_t k = 0; sb && k < d->nreq; k++) {
    size_t off = k * d->chunk * d->es;
    HM_TRY(hm_device_copy_d2h_async(d->dev, buf + off, sb + off, chunk_n(d, k) * d->es, &ev[k]));
  }
  return HM_OK;
}

/* Issues chunk k once its device->host copy (if any) completed. */
static hm_status issue_chunk(struct hm_devreq *d, size_t k, hm_device_event **ev, int is_p2p, int peer,
                             hm_dtype dt, hm_redop op) {
  if (ev[k]) {
    hm_device_event *e = ev[k];
    ev[k] = NULL;
    HM_TRY(hm_device_event_wait(d->dev, e, d->c->cfg.timeout_ms));
  }
  size_t off = k * d->chunk * d->es, n = chunk_n(d, k);
  char *s = d->hs ? d->hs + off : NULL, *r = d->hr ? d->hr + off : NULL;
  if (is_p2p) return hm_comm_ip2p_host(d->c, d->is_send ? s : r, n, dt, peer, d->is_send, &d->req[k]);
  return hm_comm_iallreduce_host(d->c, s, r, n, dt, op, &d->req[k]);
}

/* After a failed issue: the copies still queued end, the chunks issued are waited for. */
static hm_status issue_failed(struct hm_devreq *d, hm_device_event **ev, hm_status st) {
  char keep[512];
  hm_strcpy(keep, sizeof keep, hm_last_error());
  for (size_t k = 0; k < d->nreq; k++)
    if (ev[k]) hm_device_event_wait(d->dev, ev[k], d->c->cfg.timeout_ms);
  wait_chunks(d, st);
  return devreq_free(d, hm_error(st, "%s", keep));
}

static hm_status devasync_issue(hm_comm_t c, char *sb, char *rb, size_t count, hm_dtype dt, hm_redop op,
                                int is_p2p, int peer, int is_send, hm_request_t *req) {
  hm_devstage *s = &c->stage;
  struct hm_devreq *d = hm_calloc(1, sizeof *d, "nonblocking device request");
  if (!d) return HM_ERR_NOMEM;
  d->c = c;
  d->dev = s->dev;
  d->mode = s->host ? DV_HOST : s->map ? DV_MAP : DV_STAGE;
  d->is_send = is_send;
  d->es = hm_dtype_size(dt);
  d->total = count;
  d->chunk = s->chunk / d->es ? s->chunk / d->es : 1;
  d->nreq = count ? (count + d->chunk - 1) / d->chunk : 1;
  d->out = rb;
  d->slot = -1;
  d->req = hm_calloc(d->nreq, sizeof *d->req, "nonblocking device request chunks");
  hm_device_event **ev = hm_calloc(d->nreq, sizeof *ev, "staging copy events");
  if (!d->req || !ev) {
    free(ev);
    return devreq_free(d, HM_ERR_NOMEM);
  }
  hm_status st = prepare(d, sb, rb, ev);
  for (size_t k = 0; st == HM_OK && k < d->nreq; k++) st = issue_chunk(d, k, ev, is_p2p, peer, dt, op);
  if (st == HM_OK) st = hm_comm_devrequest(c, d, req);
  if (st != HM_OK) st = issue_failed(d, ev, st);
  free(ev);
  return st;
}

hm_status hm_devasync_p2p(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send,
                          hm_request_t *req) {
  hm_status st = devasync_issue(c, is_send ? buf : NULL, is_send ? NULL : buf, count, dt, HM_SUM, 1, peer, is_send, req);
  if (st != HM_OK)
    return hm_error_context(st, "%s on device %s: ", is_send ? "isend" : "irecv", hm_device_spec(c->stage.dev));
  return st;
}

hm_status hm_devasync_allreduce(hm_comm_t c, const void *sendbuf, void *recvbuf, size_t count, hm_dtype dt,
                                hm_redop op, hm_request_t *req) {
  hm_status st = devasync_issue(c, (char *)sendbuf, recvbuf, count, dt, op, 0, -1, 0, req);
  if (st != HM_OK) return hm_error_context(st, "iallreduce on device %s: ", hm_device_spec(c->stage.dev));
  return st;
}
