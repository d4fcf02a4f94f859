/* hmcomm API entry points: argument checks (naming the argument), operation descriptors,
 * issue-order execution, nonblocking requests, groups.
 *
 * Execution: a blocking call with nothing queued runs in the caller's thread (the low-latency
 * path: no hand-off). Nonblocking calls go to a per-communicator progress thread, started on
 * first use, that runs the queue in issue order; a blocking call issued behind queued work waits
 * its turn. Consecutive point-to-point operations in the queue or in a group run as one set of
 * transfers, so any send/receive pattern completes. One thread issues calls on a communicator at
 * a time (as with NCCL); abort() may come from any thread. */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_internal.h"
#include "util/util.h"

struct hm_request {
  hm_comm_t comm;
  int is_p2p;
  hm_coll_args a;      /* collectives */
  int peer, is_send;   /* point to point */
  void *buf;
  size_t bytes, count;
  hm_dtype dt;
  hm_status status;
  char err[512];
  _Atomic int done;
  int is_request;      /* the caller holds it (free on wait), else the submitter frees it */
  int orphan;          /* its waiter gave up (abort): whoever finishes it frees it */
  hm_op *next;
  hm_op *rprev, *rnext; /* the communicator's list of requests not yet waited on */
  struct hm_devreq *dv; /* a nonblocking call on device buffers (device_async.c), else NULL */
};

/* Requests handed to the caller are listed on their communicator, so that destroying it frees
 * the ones never waited on (comm.h allows that). Guarded by q_mu. */
static void req_track(hm_op *o) {
  hm_comm_t c = o->comm;
  pthread_mutex_lock(&c->q_mu);
  o->rprev = NULL;
  o->rnext = c->requests;
  if (c->requests) c->requests->rprev = o;
  c->requests = o;
  pthread_mutex_unlock(&c->q_mu);
}

static void req_untrack_locked(hm_op *o) {
  hm_comm_t c = o->comm;
  if (o->rprev) o->rprev->rnext = o->rnext; else if (c->requests == o) c->requests = o->rnext;
  if (o->rnext) o->rnext->rprev = o->rprev;
  o->rprev = o->rnext = NULL;
}

static void req_free(hm_op *o) {
  hm_comm_t c = o->comm;
  pthread_mutex_lock(&c->q_mu);
  req_untrack_locked(o);
  pthread_mutex_unlock(&c->q_mu);
  free(o);
}

/* At destroy, after the progress thread stopped: requests nobody waited on. */
void hm_comm_free_requests(hm_comm_t c) {
  pthread_mutex_lock(&c->q_mu);
  while (c->requests) {
    hm_op *o = c->requests;
    req_untrack_locked(o);
    if (o->dv) hm_devasync_discard(o->dv);
    free(o);
  }
  for (int k = 0; k < 2; k++) c->self_pending[k] = NULL; /* they were requests too: freed above */
  pthread_mutex_unlock(&c->q_mu);
}

static _Thread_local int g_group_depth;
static _Thread_local hm_op *g_group_head, *g_group_tail;

/* ---- checks ---- */
static hm_status comm_state(hm_comm_t c, const char *fn) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "%s: comm is NULL", fn);
  if (atomic_load_explicit(&c->aborted, memory_order_relaxed))
    return hm_error(HM_ERR_ABORTED, "%s: rank %d: communicator was aborted", fn, c->rank);
  int b = atomic_load_explicit(&c->broken, memory_order_acquire);
  if (b != HM_OK) {
    pthread_mutex_lock(&c->err_mu);
    hm_error((hm_status)b, "%s: communicator is broken by an earlier error: %s", fn, c->broken_msg);
    pthread_mutex_unlock(&c->err_mu);
    return (hm_status)b;
  }
  return HM_OK;
}

static hm_status check_dtype(const char *fn, hm_dtype dt) {
  if ((int)dt < 0 || dt >= HM_DTYPE_COUNT)
    return hm_error(HM_ERR_INVALID_ARG, "%s: dtype %d is not a valid hm_dtype", fn, (int)dt);
  return HM_OK;
}

static hm_status check_op(const char *fn, hm_redop op) {
  if ((int)op < 0 || op >= HM_REDOP_COUNT)
    return hm_error(HM_ERR_INVALID_ARG, "%s: op %d is not a valid hm_redop", fn, (int)op);
  return HM_OK;
}

static hm_status check_bytes(const char *fn, size_t count, size_t mult, hm_dtype dt, size_t *bytes) {
  size_t es = hm_dtype_size(dt);
  if (count > ((size_t)1 << 40) / es / (mult ? mult : 1))
    return hm_error(HM_ERR_INVALID_ARG, "%s: count %zu is too large", fn, count);
  *bytes = count * es * mult;
  return HM_OK;
}

static hm_status check_buf(const char *fn, const void *p, const char *name, size_t bytes) {
  if (!p && bytes) return hm_error(HM_ERR_INVALID_ARG, "%s: %s is NULL with %zu bytes to move", fn, name, bytes);
  return HM_OK;
}

static int overlap(const void *a, size_t an, const void *b, size_t bn) {
  const char *x = a, *y = b;
  return an && bn && x < y + bn && y < x + an;
}

static hm_status check_root(const char *fn, hm_comm_t c, int root) {
  if (root < 0 || root >= c->nranks)
    return hm_error(HM_ERR_INVALID_ARG, "%s: root %d out of range [0, %d)", fn, root, c->nranks);
  return HM_OK;
}

/* ---- execution ---- */
/* Sends to and receives from this rank itself pair up in issue order within one batch. */
static hm_status exec_self(hm_op **ops, int n) {
  hm_comm_t c = ops[0]->comm;
  int si = 0, ri = 0;
  for (;;) {
    while (si < n && !(ops[si]->peer == c->rank && ops[si]->is_send)) si++;
    while (ri < n && !(ops[ri]->peer == c->rank && !ops[ri]->is_send)) ri++;
    if (si == n && ri == n) return HM_OK;
    if (si == n || ri == n)
      return hm_error(HM_ERR_INVALID_ARG, "rank %d: a %s to this rank itself has no matching %s in the same group",
                      c->rank, si < n ? "send" : "receive", si < n ? "receive" : "send");
    hm_op *s = ops[si++], *r = ops[ri++];
    if (s->bytes != r->bytes || s->dt != r->dt)
      return hm_error(HM_ERR_MISMATCH, "rank %d: send to self of %zu x %s but receive of %zu x %s", c->rank,
                      s->count, hm_dtype_name(s->dt), r->count, hm_dtype_name(r->dt));
    if (s->bytes && s->buf != r->buf) memmove(r->buf, s->buf, s->bytes);
  }
}

static void p2p_xfer(hm_comm_t c, hm_op *o, hm_xfer *x) {
  hm_desc d = {HM_DESC_P2P, (int)o->dt, 0, -1, o->count};
  hm_peer *p = &c->peers[o->peer];
  if (o->is_send)
    hm_xfer_send(x, o->peer, o->buf, o->bytes, p->send_p2p_seq++, hm_desc_pack(&d));
  else
    hm_xfer_recv(x, o->peer, o->buf, o->bytes, p->recv_p2p_seq++, hm_desc_pack(&d));
}

/* The progress thread's running point-to-point set takes in the point-to-point operations
 * queued after it started (an irecv issued after an isend it must pair with, say). */
typedef struct p2p_refill_state {
  hm_comm_t c;
  hm_op **ops;
  int *nops, cap;
} p2p_refill_state;

static int p2p_refill(void *arg, hm_xfer *x, int n, int cap) {
  p2p_refill_state *st = arg;
  hm_comm_t c = st->c;
  pthread_mutex_lock(&c->q_mu);
  while (c->q_head && c->q_head->is_p2p && n < cap && *st->nops < st->cap) {
    hm_op *o = c->q_head;
    c->q_head = o->next;
    if (!c->q_head) c->q_tail = NULL;
    st->ops[(*st->nops)++] = o;
    p2p_xfer(c, o, &x[n++]);
  }
  pthread_mutex_unlock(&c->q_mu);
  return n;
}

static void finish(hm_op *o, hm_status st);

/* The engine dropped the finished transfers (their ops, NULL here) from its set: same here. */
static void p2p_compact(void *arg) {
  p2p_refill_state *st = arg;
  int m = 0;
  for (int i = 0; i < *st->nops; i++)
    if (st->ops[i]) st->ops[m++] = st->ops[i];
  *st->nops = m;
}

/* A transfer of the progress thread's running set finished while others still run: its
 * operation completes now (its waiter may go on and issue the next chunk of a message, which a
 * peer may need before the rest of the set can end), and leaves the batch (ops[i] = NULL). */
static void p2p_finished(void *arg, int i) {
  p2p_refill_state *st = arg;
  hm_comm_t c = st->c;
  pthread_mutex_lock(&c->q_mu);
  hm_op *o = st->ops[i];
  st->ops[i] = NULL;
  if (o) {
    finish(o, HM_OK);
    atomic_store(&o->done, 1);
    if (o->orphan) free(o);
    atomic_fetch_sub(&c->q_pending, 1);
    pthread_cond_broadcast(&c->q_cv);
  }
  pthread_mutex_unlock(&c->q_mu);
}

/* The progress thread's running set of point-to-point transfers, kept for the thread's life. */
static _Thread_local hm_xfer *g_pt_x;

/* ops[0..*n) are point-to-point operations of one communicator; with cap > 0 (progress thread)
 * more may join while it runs (up to cap at once; finished ones leave), and *n changes. */
static hm_status exec_p2p_batch(hm_op **ops, int *n, int cap) {
  hm_comm_t c = ops[0]->comm;
  enum { STACK = 64 };
  hm_xfer stack[STACK];
  if (cap > 0 && !g_pt_x && !(g_pt_x = hm_malloc(sizeof(hm_xfer) * (size_t)cap, "p2p transfers")))
    return HM_ERR_NOMEM;
  int xcap = cap > 0 ? cap : *n;
  hm_xfer *x = cap > 0 ? g_pt_x : xcap <= STACK ? stack : hm_malloc(sizeof(hm_xfer) * (size_t)xcap, "p2p transfers");
  if (!x) return HM_ERR_NOMEM;
  int nx = 0, nself = 0;
  for (int i = 0; i < *n; i++) {
    if (ops[i]->peer == c->rank) {
      nself++;
      continue;
    }
    p2p_xfer(c, ops[i], &x[nx++]);
  }
  hm_status st = nself ? exec_self(ops, *n) : HM_OK;
  p2p_refill_state rs = {c, ops, n, cap};
  hm_xctx cx = {.comm = c, .dt = HM_UINT8, .op = HM_SUM}; /* copies only: byte granularity */
  if (cap > 0 && !nself) {
    cx.refill = p2p_refill;
    cx.refill_arg = &rs;
    cx.cap = cap;
    cx.finished = p2p_finished; /* x[i] is ops[i]'s transfer: no self sends in the set */
    cx.finished_arg = &rs;
    cx.compact = p2p_compact;
  }
  if (st == HM_OK && (nx || cx.refill)) st = hm_xfer_run(&cx, x, nx);
  if (x != stack && x != g_pt_x) free(x);
  return st;
}

/* Runs ops[0..*n) (one collective, or point-to-point ops of one communicator; cap > 0 lets
 * queued point-to-point ops join, growing *n). */
static hm_status exec_ops(hm_op **ops, int *n, int cap) {
  hm_comm_t c = ops[0]->comm;
  hm_status st = comm_state(c, ops[0]->is_p2p ? "send/recv" : hm_coll_kind_name(ops[0]->a.kind));
  if (st == HM_OK) st = ops[0]->is_p2p ? exec_p2p_batch(ops, n, cap) : hm_coll_execute(c, &ops[0]->a);
  if (st != HM_OK && st != HM_ERR_ABORTED && st != HM_ERR_TIMEOUT && atomic_load(&c->broken) == HM_OK)
    hm_comm_fail(c, st, 1); /* tell the peers, so they do not wait for this rank */
  return st;
}

static void finish(hm_op *o, hm_status st) {
  o->status = st;
  if (st != HM_OK) hm_strcpy(o->err, sizeof o->err, hm_last_error());
}

/* Operations the progress thread runs at once: a group's sends and receives must all fit (a set
 * of sends alone can fill the transports while the receives the peer waits for stay queued),
 * finished ones leaving the set as it runs (engine.c compact). */
enum { PT_CAP = 4096 };

static void *progress_main(void *arg) {
  hm_comm_t c = arg;
  static _Thread_local hm_op *batch[PT_CAP];
  hm_xfer_background(1);
  pthread_mutex_lock(&c->q_mu);
  for (;;) {
    while (!c->q_head && !c->q_stop) pthread_cond_wait(&c->q_cv, &c->q_mu);
    if (!c->q_head) break;
    int n = 0;
    batch[n++] = c->q_head;
    c->q_head = c->q_head->next;
    while (batch[0]->is_p2p && c->q_head && c->q_head->is_p2p && n < PT_CAP) {
      batch[n++] = c->q_head;
      c->q_head = c->q_head->next;
    }
    if (!c->q_head) c->q_tail = NULL;
    pthread_mutex_unlock(&c->q_mu);
    hm_status st = exec_ops(batch, &n, batch[0]->is_p2p ? PT_CAP : 0);
    pthread_mutex_lock(&c->q_mu);
    for (int i = 0; i < n; i++) {
      if (!batch[i]) continue; /* completed on its own (p2p_finished) */
      finish(batch[i], st);
      atomic_store(&batch[i]->done, 1);
      if (batch[i]->orphan) free(batch[i]);
      atomic_fetch_sub(&c->q_pending, 1);
    }
    pthread_cond_broadcast(&c->q_cv);
  }
  pthread_mutex_unlock(&c->q_mu);
  free(g_pt_x);
  g_pt_x = NULL;
  return NULL;
}

static hm_status enqueue(hm_comm_t c, hm_op *o) {
  pthread_mutex_lock(&c->q_mu);
  if (!c->q_thread_started) {
    if (pthread_create(&c->q_thread, NULL, progress_main, c) != 0) {
      pthread_mutex_unlock(&c->q_mu);
      return hm_error(HM_ERR_INTERNAL, "rank %d: cannot start the progress thread", c->rank);
    }
    c->q_thread_started = 1;
  }
  o->next = NULL;
  if (c->q_tail) c->q_tail->next = o; else c->q_head = o;
  c->q_tail = o;
  atomic_fetch_add(&c->q_pending, 1);
  pthread_cond_broadcast(&c->q_cv);
  pthread_mutex_unlock(&c->q_mu);
  return HM_OK;
}

/* Waits for a queued op. On abort the op is left to the progress thread (orphan) and
 * *freed_by_thread says so. */
static hm_status wait_op(hm_op *o, int *orphaned) {
  hm_comm_t c = o->comm;
  *orphaned = 0;
  for (int i = 0; i < 2000 && !atomic_load(&o->done); i++) sched_yield();
  pthread_mutex_lock(&c->q_mu);
  while (!atomic_load(&o->done)) {
    if (atomic_load(&c->aborted)) {
      o->orphan = 1;
      *orphaned = 1;
      req_untrack_locked(o);
      pthread_mutex_unlock(&c->q_mu);
      return hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted while waiting", c->rank);
    }
    /* each queued op ends by its own deadline; this wakes up for abort */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&c->q_cv, &c->q_mu, &ts);
  }
  pthread_mutex_unlock(&c->q_mu);
  if (o->status != HM_OK) hm_error(o->status, "%s", o->err);
  return o->status;
}

/* Waits until nothing is queued (before a group runs in the caller's thread). */
static hm_status quiesce(hm_comm_t c) {
  if (atomic_load(&c->q_pending) == 0) return HM_OK;
  pthread_mutex_lock(&c->q_mu);
  while (atomic_load(&c->q_pending) != 0 && !atomic_load(&c->aborted)) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&c->q_cv, &c->q_mu, &ts);
  }
  pthread_mutex_unlock(&c->q_mu);
  return atomic_load(&c->aborted) ? hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted", c->rank) : HM_OK;
}

void hm_comm_stop_progress(hm_comm_t c) {
  pthread_mutex_lock(&c->q_mu);
  c->q_stop = 1;
  pthread_cond_broadcast(&c->q_cv);
  int started = c->q_thread_started;
  pthread_mutex_unlock(&c->q_mu);
  if (started) pthread_join(c->q_thread, NULL);
  c->q_thread_started = 0;
}

/* Issues an op built on the caller's stack: in a group it is recorded; with nothing queued and
 * no request wanted it runs right here; otherwise it is queued (and waited for if blocking). */
static hm_status submit(hm_op *tmpl, hm_request_t *req) {
  hm_comm_t c = tmpl->comm;
  if (!req && g_group_depth == 0 && atomic_load_explicit(&c->q_pending, memory_order_acquire) == 0) {
    hm_op *one = tmpl;
    int n1 = 1;
    return exec_ops(&one, &n1, 0);
  }
  hm_op *o = hm_malloc(sizeof *o, "operation");
  if (!o) return HM_ERR_NOMEM;
  *o = *tmpl;
  o->is_request = req != NULL;
  if (req) {
    *req = o;
    req_track(o);
  }
  if (g_group_depth > 0) {
    o->next = NULL;
    if (g_group_tail) g_group_tail->next = o; else g_group_head = o;
    g_group_tail = o;
    return HM_OK;
  }
  hm_status st = enqueue(c, o);
  if (st != HM_OK) {
    free(o);
    if (req) *req = NULL;
    return st;
  }
  if (req) return HM_OK;
  int orphaned;
  st = wait_op(o, &orphaned);
  if (!orphaned) free(o);
  return st;
}

static hm_status coll_host(hm_comm_t c, hm_coll_kind kind, const void *sb, void *rb, size_t count, hm_dtype dt,
                           hm_redop op, int root, hm_request_t *req) {
  int reducing = kind == HM_COLL_ALLREDUCE || kind == HM_COLL_REDUCE || kind == HM_COLL_REDUCE_SCATTER;
  hm_desc d = {(int)kind, (int)dt, reducing ? (int)op : 0, root, count};
  hm_coll_args a = {kind, sb, rb, count, dt, op, root, c->coll_seq++, hm_desc_pack(&d)};
  if (!req && g_group_depth == 0 && atomic_load_explicit(&c->q_pending, memory_order_acquire) == 0) {
    /* the fast path: run it here, without building a queueable operation */
    hm_status st = hm_coll_execute(c, &a);
    if (st != HM_OK && st != HM_ERR_ABORTED && st != HM_ERR_TIMEOUT && atomic_load(&c->broken) == HM_OK)
      hm_comm_fail(c, st, 1);
    return st;
  }
  hm_op o;
  memset(&o, 0, sizeof o);
  o.comm = c;
  o.a = a;
  return submit(&o, req);
}

hm_status hm_comm_coll_host(hm_comm_t c, hm_coll_kind kind, const void *sb, void *rb, size_t count, hm_dtype dt,
                            hm_redop op, int root) {
  return coll_host(c, kind, sb, rb, count, dt, op, root, NULL);
}

/* Buffers on a registered non-host device go through the staging layer (blocking calls only). */
static hm_status staged_unsupported(hm_comm_t c, const char *what) {
  return hm_error(HM_ERR_UNSUPPORTED, "rank %d: %s with buffers on device %s: device buffers move in blocking "
                  "calls outside groups and in hm_comm_isend, hm_comm_irecv and hm_comm_iallreduce (in groups too)", c->rank, what,
                  hm_device_spec(c->stage.dev));
}

hm_status hm_comm_iallreduce_host(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, hm_redop op,
                                  hm_request_t *req) {
  return coll_host(c, HM_COLL_ALLREDUCE, sb, rb, count, dt, op, -1, req);
}

hm_status hm_comm_devrequest(hm_comm_t c, struct hm_devreq *d, hm_request_t *req) {
  hm_op *o = hm_calloc(1, sizeof *o, "request");
  if (!o) return HM_ERR_NOMEM;
  o->comm = c;
  o->is_request = 1;
  o->dv = d;
  req_track(o);
  *req = o;
  return HM_OK;
}

static hm_status coll(hm_comm_t c, hm_coll_kind kind, const void *sb, void *rb, size_t count, hm_dtype dt,
                      hm_redop op, int root, hm_request_t *req) {
  if (c->stage.dev && kind != HM_COLL_BARRIER) {
    if (!req && g_group_depth == 0) return hm_devstage_coll(c, kind, sb, rb, count, dt, op, root);
    if (req && kind == HM_COLL_ALLREDUCE) return hm_devasync_allreduce(c, sb, rb, count, dt, op, req);
    if (!c->stage.host)
      return staged_unsupported(c, req ? "a nonblocking collective" : "a collective in a group");
  }
  return coll_host(c, kind, sb, rb, count, dt, op, root, req);
}

/* ---- collectives: argument checks then issue ---- */
#define CHECK(expr) HM_TRY(expr)

/* The in-place form a collective allows where its buffers overlap. */
enum {
  IP_SAME,         /* sendbuf == recvbuf */
  IP_RECV_IN_SEND, /* recvbuf == sendbuf + k * recvbytes (reduce_scatter, scatter) */
  IP_SEND_IN_RECV, /* sendbuf == recvbuf + k * sendbytes (allgather, gather) */
};

/* What one collective's arguments must satisfy; k above is the rank, or the root when rooted. */
typedef struct coll_rule {
  int has_op, rooted;
  int send_n, recv_n;       /* the buffer holds nranks blocks of count elements */
  int send_root, recv_root; /* only the root's buffer is used (and checked) */
  int recv_first;           /* name a NULL recvbuf before a NULL sendbuf */
  int inplace;
  const char *overlap_msg;  /* after "fn: "; NULL: the plain one */
} coll_rule;

static const coll_rule k_rules[HM_COLL_KIND_COUNT] = {
    [HM_COLL_ALLREDUCE] = {1, 0, 0, 0, 0, 0, 0, IP_SAME,
                           "sendbuf and recvbuf overlap without being equal (in place needs sendbuf == recvbuf)"},
    [HM_COLL_REDUCE] = {1, 1, 0, 0, 0, 1, 0, IP_SAME, NULL},
    [HM_COLL_BROADCAST] = {0, 1, 0, 0, 1, 0, 0, IP_SAME, NULL},
    [HM_COLL_REDUCE_SCATTER] = {1, 0, 1, 0, 0, 0, 0, IP_RECV_IN_SEND,
                                "buffers overlap but recvbuf != sendbuf + rank*recvcount (the in-place form)"},
    [HM_COLL_ALLGATHER] = {0, 0, 0, 1, 0, 0, 0, IP_SEND_IN_RECV,
                           "buffers overlap but sendbuf != recvbuf + rank*sendcount (the in-place form)"},
    [HM_COLL_ALLTOALL] = {0, 0, 1, 1, 0, 0, 0, IP_SAME, NULL},
    [HM_COLL_GATHER] = {0, 1, 0, 1, 0, 1, 0, IP_SEND_IN_RECV, "buffers overlap but sendbuf != recvbuf + root*sendcount"},
    [HM_COLL_SCATTER] = {0, 1, 1, 0, 1, 0, 1, IP_RECV_IN_SEND, "buffers overlap but recvbuf != sendbuf + root*recvcount"},
};

static hm_status check_overlap(const char *fn, const coll_rule *r, const char *sb, size_t sbytes, const char *rb,
                               size_t rbytes, size_t k) {
  int in_place = r->inplace == IP_SAME           ? sb == rb
                 : r->inplace == IP_RECV_IN_SEND ? sb + k * rbytes == rb
                                                 : rb + k * sbytes == sb;
  if (in_place || !overlap(sb, sbytes, rb, rbytes)) return HM_OK;
  return hm_error(HM_ERR_INVALID_ARG, "%s: %s", fn,
                  r->overlap_msg ? r->overlap_msg : "sendbuf and recvbuf overlap without being equal");
}

/* The argument checks of every collective but barrier, driven by k_rules. */
static hm_status coll_checks(const char *fn, hm_coll_kind kind, hm_comm_t c, const void *sb, const void *rb,
                             size_t count, hm_dtype dt, hm_redop op, int root) {
  const coll_rule *r = &k_rules[kind];
  CHECK(comm_state(c, fn));
  CHECK(check_dtype(fn, dt));
  if (r->has_op) CHECK(check_op(fn, op));
  if (r->rooted) CHECK(check_root(fn, c, root));
  size_t n = (size_t)c->nranks, sbytes = 0, rbytes = 0;
  CHECK(check_bytes(fn, count, r->send_n ? n : 1, dt, &sbytes));
  CHECK(check_bytes(fn, count, r->recv_n ? n : 1, dt, &rbytes));
  const int at_root = r->rooted && c->rank == root;
  const int use_send = !r->send_root || at_root, use_recv = !r->recv_root || at_root;
  const char *sname = r->send_root ? "sendbuf (at the root)" : "sendbuf";
  const char *rname = r->recv_root ? "recvbuf (at the root)" : "recvbuf";
  if (r->recv_first && use_recv) CHECK(check_buf(fn, rb, rname, rbytes));
  if (use_send) CHECK(check_buf(fn, sb, sname, sbytes));
  if (!r->recv_first && use_recv) CHECK(check_buf(fn, rb, rname, rbytes));
  if (r->rooted && !at_root) return HM_OK; /* only the root uses both buffers */
  return check_overlap(fn, r, sb, sbytes, rb, rbytes, (size_t)(r->rooted ? root : c->rank));
}

hm_status hm_comm_allreduce(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, hm_redop op) {
  HM_TRY(coll_checks("hm_comm_allreduce", HM_COLL_ALLREDUCE, c, sb, rb, count, dt, op, 0));
  return coll(c, HM_COLL_ALLREDUCE, sb, rb, count, dt, op, -1, NULL);
}

hm_status hm_comm_iallreduce(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, hm_redop op,
                             hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_iallreduce: req is NULL");
  *req = NULL;
  HM_TRY(coll_checks("hm_comm_iallreduce", HM_COLL_ALLREDUCE, c, sb, rb, count, dt, op, 0));
  return coll(c, HM_COLL_ALLREDUCE, sb, rb, count, dt, op, -1, req);
}

hm_status hm_comm_reduce(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, hm_redop op, int root) {
  HM_TRY(coll_checks("hm_comm_reduce", HM_COLL_REDUCE, c, sb, rb, count, dt, op, root));
  return coll(c, HM_COLL_REDUCE, sb, rb, count, dt, op, root, NULL);
}

hm_status hm_comm_broadcast(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, int root) {
  HM_TRY(coll_checks("hm_comm_broadcast", HM_COLL_BROADCAST, c, sb, rb, count, dt, HM_SUM, root));
  return coll(c, HM_COLL_BROADCAST, sb, rb, count, dt, HM_SUM, root, NULL);
}

hm_status hm_comm_ibroadcast(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt, int root,
                             hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_ibroadcast: req is NULL");
  *req = NULL;
  HM_TRY(coll_checks("hm_comm_ibroadcast", HM_COLL_BROADCAST, c, sb, rb, count, dt, HM_SUM, root));
  return coll(c, HM_COLL_BROADCAST, sb, rb, count, dt, HM_SUM, root, req);
}

hm_status hm_comm_reduce_scatter(hm_comm_t c, const void *sb, void *rb, size_t rc, hm_dtype dt, hm_redop op) {
  HM_TRY(coll_checks("hm_comm_reduce_scatter", HM_COLL_REDUCE_SCATTER, c, sb, rb, rc, dt, op, 0));
  return coll(c, HM_COLL_REDUCE_SCATTER, sb, rb, rc, dt, op, -1, NULL);
}

hm_status hm_comm_ireduce_scatter(hm_comm_t c, const void *sb, void *rb, size_t rc, hm_dtype dt, hm_redop op,
                                  hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_ireduce_scatter: req is NULL");
  *req = NULL;
  HM_TRY(coll_checks("hm_comm_ireduce_scatter", HM_COLL_REDUCE_SCATTER, c, sb, rb, rc, dt, op, 0));
  return coll(c, HM_COLL_REDUCE_SCATTER, sb, rb, rc, dt, op, -1, req);
}

hm_status hm_comm_allgather(hm_comm_t c, const void *sb, void *rb, size_t sc, hm_dtype dt) {
  HM_TRY(coll_checks("hm_comm_allgather", HM_COLL_ALLGATHER, c, sb, rb, sc, dt, HM_SUM, 0));
  return coll(c, HM_COLL_ALLGATHER, sb, rb, sc, dt, HM_SUM, -1, NULL);
}

hm_status hm_comm_iallgather(hm_comm_t c, const void *sb, void *rb, size_t sc, hm_dtype dt, hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_iallgather: req is NULL");
  *req = NULL;
  HM_TRY(coll_checks("hm_comm_iallgather", HM_COLL_ALLGATHER, c, sb, rb, sc, dt, HM_SUM, 0));
  return coll(c, HM_COLL_ALLGATHER, sb, rb, sc, dt, HM_SUM, -1, req);
}

hm_status hm_comm_allgather_internal(hm_comm_t c, const void *mine, void *all, size_t bytes) {
  return hm_comm_allgather(c, mine, all, bytes, HM_UINT8);
}

hm_status hm_comm_alltoall(hm_comm_t c, const void *sb, void *rb, size_t count, hm_dtype dt) {
  HM_TRY(coll_checks("hm_comm_alltoall", HM_COLL_ALLTOALL, c, sb, rb, count, dt, HM_SUM, 0));
  return coll(c, HM_COLL_ALLTOALL, sb, rb, count, dt, HM_SUM, -1, NULL);
}

hm_status hm_comm_gather(hm_comm_t c, const void *sb, void *rb, size_t sc, hm_dtype dt, int root) {
  HM_TRY(coll_checks("hm_comm_gather", HM_COLL_GATHER, c, sb, rb, sc, dt, HM_SUM, root));
  return coll(c, HM_COLL_GATHER, sb, rb, sc, dt, HM_SUM, root, NULL);
}

hm_status hm_comm_scatter(hm_comm_t c, const void *sb, void *rb, size_t rc, hm_dtype dt, int root) {
  HM_TRY(coll_checks("hm_comm_scatter", HM_COLL_SCATTER, c, sb, rb, rc, dt, HM_SUM, root));
  return coll(c, HM_COLL_SCATTER, sb, rb, rc, dt, HM_SUM, root, NULL);
}

hm_status hm_comm_barrier(hm_comm_t c) {
  CHECK(comm_state(c, "hm_comm_barrier"));
  return coll(c, HM_COLL_BARRIER, NULL, NULL, 0, HM_UINT8, HM_MAX, -1, NULL);
}

/* ---- point to point ---- */
/* Outside a group, a send to this rank itself pairs with the oldest unmatched receive from
 * itself (and vice versa); an unmatched blocking one could never complete, so it is an error. */
static hm_status self_p2p(const char *fn, hm_op *o, hm_request_t *req) {
  hm_comm_t c = o->comm;
  hm_op **other = &c->self_pending[!o->is_send];
  if (*other) {
    hm_op *m = *other;
    *other = m->next;
    hm_op *s = o->is_send ? o : m, *r = o->is_send ? m : o;
    hm_status st = HM_OK;
    if (s->bytes != r->bytes || s->dt != r->dt)
      st = hm_error(HM_ERR_MISMATCH, "%s: rank %d: send to self of %zu x %s but receive of %zu x %s", fn, c->rank,
                    s->count, hm_dtype_name(s->dt), r->count, hm_dtype_name(r->dt));
    else if (s->bytes && s->buf != r->buf)
      memmove(r->buf, s->buf, s->bytes);
    finish(m, st);
    atomic_store(&m->done, 1);
    if (req) {
      hm_op *h = hm_malloc(sizeof *h, "request");
      if (!h) return HM_ERR_NOMEM;
      *h = *o;
      h->is_request = 1;
      finish(h, st);
      atomic_store(&h->done, 1);
      *req = h;
      req_track(h);
      return HM_OK;
    }
    return st;
  }
  if (!req)
    return hm_error(HM_ERR_INVALID_ARG, "%s: peer %d is this rank and no matching nonblocking %s is pending "
                    "(use a group or a nonblocking call)", fn, o->peer, o->is_send ? "receive" : "send");
  hm_op *h = hm_malloc(sizeof *h, "request");
  if (!h) return HM_ERR_NOMEM;
  *h = *o;
  h->is_request = 1;
  req_track(h);
  h->next = NULL;
  hm_op **tail = &c->self_pending[o->is_send];
  while (*tail) tail = &(*tail)->next;
  *tail = h;
  *req = h;
  return HM_OK;
}

/* A send or receive of `bytes` between this rank and `peer`, ready to submit. */
static void p2p_op(hm_op *o, hm_comm_t c, void *buf, size_t bytes, size_t count, hm_dtype dt, int peer, int is_send) {
  memset(o, 0, sizeof *o);
  o->comm = c;
  o->is_p2p = 1;
  o->peer = peer;
  o->is_send = is_send;
  o->buf = buf;
  o->bytes = bytes;
  o->count = count;
  o->dt = dt;
}

static hm_status p2p(const char *fn, hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send,
                     hm_request_t *req) {
  CHECK(comm_state(c, fn));
  CHECK(check_dtype(fn, dt));
  if (peer < 0 || peer >= c->nranks)
    return hm_error(HM_ERR_INVALID_ARG, "%s: peer %d out of range [0, %d)", fn, peer, c->nranks);
  size_t bytes = 0;
  CHECK(check_bytes(fn, count, 1, dt, &bytes));
  CHECK(check_buf(fn, buf, "buf", bytes));
  hm_op o;
  p2p_op(&o, c, buf, bytes, count, dt, peer, is_send);
  if (c->stage.dev && req && peer != c->rank) return hm_devasync_p2p(c, buf, count, dt, peer, is_send, req);
  if (c->stage.dev && !c->stage.host && (g_group_depth > 0 || peer == c->rank))
    return staged_unsupported(c, peer == c->rank ? "a send/receive to this rank itself"
                                                 : "a blocking send/receive in a group");
  if (c->stage.dev && !req && g_group_depth == 0 && peer != c->rank)
    return hm_devstage_p2p(c, buf, count, dt, peer, is_send);
  if (peer == c->rank && g_group_depth == 0) return self_p2p(fn, &o, req);
  return submit(&o, req);
}

hm_status hm_comm_p2p_host(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send) {
  hm_op o;
  p2p_op(&o, c, buf, count * hm_dtype_size(dt), count, dt, peer, is_send);
  return submit(&o, NULL);
}

hm_status hm_comm_ip2p_host(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send,
                            hm_request_t *req) {
  hm_op o;
  p2p_op(&o, c, buf, count * hm_dtype_size(dt), count, dt, peer, is_send);
  return submit(&o, req);
}

hm_status hm_comm_send(hm_comm_t c, const void *buf, size_t count, hm_dtype dt, int peer) {
  return p2p("hm_comm_send", c, (void *)buf, count, dt, peer, 1, NULL);
}
hm_status hm_comm_recv(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer) {
  return p2p("hm_comm_recv", c, buf, count, dt, peer, 0, NULL);
}
hm_status hm_comm_isend(hm_comm_t c, const void *buf, size_t count, hm_dtype dt, int peer, hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_isend: req is NULL");
  *req = NULL;
  return p2p("hm_comm_isend", c, (void *)buf, count, dt, peer, 1, req);
}
hm_status hm_comm_irecv(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, hm_request_t *req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_irecv: req is NULL");
  *req = NULL;
  return p2p("hm_comm_irecv", c, buf, count, dt, peer, 0, req);
}

/* ---- requests ---- */
hm_status hm_request_test(hm_request_t req, int *done) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_request_test: req is NULL");
  if (!done) return hm_error(HM_ERR_INVALID_ARG, "hm_request_test: done is NULL");
  if (req->dv) {
    hm_status st = hm_devasync_test(req->dv, done);
    if (*done) req->dv = NULL, req_free(req);
    return st;
  }
  *done = atomic_load(&req->done);
  if (!*done) return HM_OK;
  hm_status st = req->status;
  if (st != HM_OK) hm_error(st, "%s", req->err);
  req_free(req);
  return st;
}

hm_status hm_request_wait(hm_request_t req) {
  if (!req) return hm_error(HM_ERR_INVALID_ARG, "hm_request_wait: req is NULL");
  if (req->dv) {
    hm_status st = hm_devasync_wait(req->dv);
    req->dv = NULL;
    req_free(req);
    return st;
  }
  if (atomic_load(&req->done)) {
    hm_status st = req->status;
    if (st != HM_OK) hm_error(st, "%s", req->err);
    req_free(req);
    return st;
  }
  if (req->is_p2p && req->peer == req->comm->rank) { /* unmatched self send/recv: nothing can match it now */
    hm_op **pp = &req->comm->self_pending[req->is_send];
    while (*pp && *pp != req) pp = &(*pp)->next;
    if (*pp) *pp = req->next;
    hm_error(HM_ERR_INVALID_ARG, "hm_request_wait: rank %d: %s to this rank itself was never matched by a %s",
             req->comm->rank, req->is_send ? "send" : "receive", req->is_send ? "receive" : "send");
    req_free(req);
    return HM_ERR_INVALID_ARG;
  }
  int orphaned;
  hm_status st = wait_op(req, &orphaned);
  if (!orphaned) req_free(req);
  return st;
}

/* ---- groups ---- */
hm_status hm_group_start(void) {
  g_group_depth++;
  return HM_OK;
}

hm_status hm_group_end(void) {
  if (g_group_depth <= 0) return hm_error(HM_ERR_INVALID_ARG, "hm_group_end: no matching hm_group_start");
  if (--g_group_depth > 0) return HM_OK;
  hm_op *head = g_group_head;
  g_group_head = g_group_tail = NULL;
  hm_status first = HM_OK;
  char first_msg[512] = "";
  for (hm_op *o = head; o; o = o->next)
    if (first == HM_OK) {
      hm_status st = quiesce(o->comm);
      if (st != HM_OK) first = st, hm_strcpy(first_msg, sizeof first_msg, hm_last_error());
    }
  /* each run of point-to-point ops of one communicator runs as one set, however long (a group's
   * sends and receives must meet: a set of sends alone can deadlock against the peer's) */
  hm_op *o = head;
  while (o) {
    int n = 1;
    hm_op *nx = o->next;
    while (o->is_p2p && nx && nx->is_p2p && nx->comm == o->comm) n++, nx = nx->next;
    hm_op *one[1], **batch = n == 1 ? one : hm_malloc(sizeof(hm_op *) * (size_t)n, "group operations");
    hm_status st = first;
    if (!batch && st == HM_OK) first = st = HM_ERR_NOMEM, hm_strcpy(first_msg, sizeof first_msg, hm_last_error());
    if (batch)
      for (int i = 0; i < n; i++) batch[i] = i ? batch[i - 1]->next : o;
    if (st == HM_OK) {
      st = exec_ops(batch, &n, 0);
      if (st != HM_OK) first = st, hm_strcpy(first_msg, sizeof first_msg, hm_last_error());
    } else {
      hm_error(st, "%s", first_msg);
    }
    for (hm_op *p = o, *next; p != nx; p = next) {
      next = p->next;
      finish(p, st);
      if (p->is_request)
        atomic_store(&p->done, 1);
      else
        free(p);
    }
    if (batch != one) free(batch);
    o = nx;
  }
  if (first != HM_OK) hm_error(first, "%s", first_msg);
  return first;
}

/* ---- queries ---- */
hm_status hm_comm_get_async_error(hm_comm_t c, hm_status *async_error) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_get_async_error: comm is NULL");
  if (!async_error) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_get_async_error: async_error is NULL");
  if (atomic_load(&c->aborted)) {
    *async_error = HM_ERR_ABORTED;
    hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted", c->rank);
    return HM_OK;
  }
  int b = atomic_load(&c->broken);
  *async_error = (hm_status)b;
  if (b != HM_OK) {
    pthread_mutex_lock(&c->err_mu);
    hm_error((hm_status)b, "%s", c->broken_msg);
    pthread_mutex_unlock(&c->err_mu);
  }
  return HM_OK;
}

int hm_comm_rank(const hm_comm_t c) { return c ? c->rank : -1; }
int hm_comm_size(const hm_comm_t c) { return c ? c->nranks : -1; }
