/* The transfer engine of hmcomm: runs a set of point-to-point transfers (each a send or a
 * receive of `bytes` with one peer, through that peer's transport table: transport/transport.h)
 * to completion, moving chunks on every channel that can move, so pipelines (forward what
 * arrived, reduce what arrived) and any send/receive pattern complete without deadlock. Every chunk carries the sender's operation
 * sequence number and descriptor; a receiver checks both before it touches the data.
 * Waiting: spin on the shared cache lines first (the low-latency path), then yield, then sleep
 * on the doorbell (shared memory only) or in poll() on the sockets that can move (and on the
 * doorbell socket where shared-memory transfers wait as well); the control sockets are watched throughout, so a dead peer (EOF), an
 * error notice from a peer, abort() and the deadline all end the wait (liveness.c watches them).
 * Not here: which transfers a collective needs (coll.c), peer liveness (liveness.c). */
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/transport/transport.h"
#include "util/util.h"

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

void hm_xfer_send(hm_xfer *x, int peer, const void *src, size_t bytes, uint32_t seq, uint64_t desc) {
  memset(x, 0, sizeof *x);
  x->peer = peer;
  x->is_send = 1;
  x->cma_ok = 1; /* the algorithms clear it where the receiver reduces */
  x->src = src;
  x->bytes = bytes;
  x->seq = seq;
  x->desc = desc;
}

void hm_xfer_recv(hm_xfer *x, int peer, void *dst, size_t bytes, uint32_t seq, uint64_t desc) {
  memset(x, 0, sizeof *x);
  x->peer = peer;
  x->dst = dst;
  x->bytes = bytes;
  x->seq = seq;
  x->desc = desc;
}

void hm_xfer_recv_reduce(hm_xfer *x, int peer, void *dst, const void *operand, size_t bytes,
                         uint32_t seq, uint64_t desc, int final_div) {
  hm_xfer_recv(x, peer, dst, bytes, seq, desc);
  x->mode = HM_X_REDUCE;
  x->src = operand;
  x->final_div = final_div;
}

char *hm_comm_scratch(hm_comm_t c, size_t bytes) {
  if (bytes <= c->scratch_bytes) return c->scratch;
  free(c->scratch);
  c->scratch = hm_aligned_alloc(64, bytes, "collective scratch buffer");
  c->scratch_bytes = c->scratch ? bytes : 0;
  return c->scratch;
}

/* ---- what the transports share ---- */
hm_status hm_xfer_bad_chunk(const hm_xctx *cx, const hm_xfer *x, uint32_t seq, uint64_t desc, uint32_t len) {
  hm_comm_t c = cx->comm;
  if (seq == x->seq && desc == x->desc) {
    hm_error(HM_ERR_PROTOCOL, "rank %d: chunk of %u bytes from rank %d where %zu bytes remain",
             c->rank, len, x->peer, x->bytes - x->done);
    return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
  }
  char theirs[128], mine[128];
  hm_desc_format(desc, theirs, sizeof theirs);
  hm_desc_format(x->desc, mine, sizeof mine);
  hm_desc dm;
  hm_desc_unpack(x->desc, &dm);
  if (dm.kind == HM_DESC_P2P)
    hm_error(HM_ERR_MISMATCH, "rank %d: mismatched calls: rank %d sent %s (message #%u) where this rank receives %s (message #%u)",
             c->rank, x->peer, theirs, (unsigned)seq, mine, (unsigned)x->seq);
  else
    hm_error(HM_ERR_MISMATCH, "rank %d: mismatched collectives: rank %d called %s as operation #%u while this rank called %s as operation #%u",
             c->rank, x->peer, theirs, (unsigned)seq, mine, (unsigned)x->seq);
  return hm_comm_fail(c, HM_ERR_MISMATCH, 1);
}

/* One step of transfer x on its peer's transport. */
static inline hm_status step(const hm_xctx *cx, hm_xfer *all, int n, hm_xfer *x, int *progress) {
  const hm_transport *tp = cx->comm->peers[x->peer].tp;
  if (!x->is_send) return tp->recv_step(cx, all, n, x, progress);
  if (tp->progress) HM_TRY(tp->progress(cx->comm, x->peer));
  return tp->send_step(cx, all, n, x, progress);
}

static _Thread_local int g_background;
void hm_xfer_background(int on) { g_background = on; }

/* Orders each transfer after the earlier one in the same direction with the same peer, unless
 * its transport interleaves streams; *any_poll when some transport's waits sleep in poll(). */
static int prepare(hm_comm_t c, hm_xfer *x, int from, int n, int *any_poll) {
  for (int i = from; i < n; i++) {
    x[i].after = -1;
    if (x[i].peer < 0 || x[i].peer >= c->nranks || x[i].peer == c->rank) return i;
    const unsigned caps = c->peers[x[i].peer].tp->caps;
    if (caps & HM_TP_POLL) *any_poll = 1;
    if (x[i].stream && (caps & HM_TP_STREAMS)) continue; /* interleaves with the other streams: no order to keep */
    for (int j = i - 1; j >= 0; j--)
      if (x[j].peer == x[i].peer && x[j].is_send == x[i].is_send) {
        x[i].after = j;
        break;
      }
  }
  return -1;
}

static void disarm(hm_comm_t c) {
  if (c->poll_armed) {
    atomic_fetch_sub_explicit(&c->bell->pollers, 1, memory_order_relaxed);
    c->poll_armed = 0;
  }
  if (!c->bell_armed) return;
  atomic_fetch_sub_explicit(&c->bell->sleepers, 1, memory_order_relaxed);
  c->bell_armed = 0;
}

/* Empties our doorbell socket (bounded: anyone on this host may send to it). */
static void drain_bell(hm_comm_t c) {
  char b[16];
  for (int i = 0; i < 64 && recv(c->bell_fd, b, sizeof b, MSG_DONTWAIT) >= 0; i++) {
  }
}

/* How a set of transfers waits when nothing moves. */
typedef struct xwait {
  uint64_t spin_ns, yield_ns; /* since idle: spin until spin_ns, then yield until yield_ns, then sleep */
  uint64_t deadline;          /* 0 until the first wait reads the clock */
  uint64_t idle_since, last_health;
  unsigned idle;              /* passes without progress */
  int any_poll;               /* some transfer's transport sleeps in poll() */
} xwait;

/* Latency-bound operations spin longer than bandwidth-bound ones before yielding. On the
 * progress thread (nonblocking operations) the caller's thread is computing meanwhile: a wait
 * there spins briefly and then sleeps on the doorbell, so it takes no core from the compute. */
static void wait_init(hm_comm_t c, const hm_xfer *x, int n, xwait *w) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += x[i].bytes;
  const int small = total < (1u << 20);
  memset(w, 0, sizeof *w);
  w->spin_ns = g_background ? c->spin_ns : small ? c->spin_small_ns : c->spin_ns;
  w->yield_ns = g_background ? w->spin_ns
                : w->spin_ns > c->spin_ns ? w->spin_ns + (c->yield_ns - c->spin_ns) : c->yield_ns;
}

/* One pass: a step of every transfer that may move. *pending when some are unfinished. */
static hm_status sweep(const hm_xctx *cx, hm_xfer *x, int n, int *pending, int *progress) {
  for (int i = 0; i < n; i++) {
    hm_xfer *t = &x[i];
    if (t->finished) {
      if (cx->finished && !t->told) t->told = 1, cx->finished(cx->finished_arg, i);
      continue;
    }
    *pending = 1;
    if (!hm_xfer_may_move(x, t)) continue;
    HM_TRY(step(cx, x, n, t, progress));
  }
  return HM_OK;
}

/* Nothing moved: fails when a peer of an unfinished transfer left or the deadline passed.
 * A receive over a data connection (TCP) is not failed for its peer's BYE: the BYE travels on the
 * control connection and can overtake data the peer sent before it left (on a slow link, a whole
 * message can still be on its way); the transport reports the data connection's end itself. */
static hm_status check_stalled(hm_comm_t c, const hm_xfer *x, int n, uint64_t now, uint64_t deadline) {
  for (int i = 0; i < n; i++) /* a peer that left will never send or drain */
    if (!x[i].finished && c->peers[x[i].peer].left &&
        (x[i].is_send || !c->peers[x[i].peer].tp->data_conns)) {
      hm_error(HM_ERR_PEER_DEAD, "rank %d: peer rank %d left the communicator (destroyed it) in the middle of an operation",
               c->rank, x[i].peer);
      return hm_comm_fail(c, HM_ERR_PEER_DEAD, 1);
    }
  if (now < deadline) return HM_OK;
  int waiting = -1;
  for (int i = 0; i < n && waiting < 0; i++)
    if (!x[i].finished) waiting = x[i].peer;
  char d[128];
  hm_desc_format(x[0].desc, d, sizeof d);
  hm_error(HM_ERR_TIMEOUT, "rank %d: %s (operation #%u) timed out after %d ms waiting for rank %d",
           c->rank, d, (unsigned)x[0].seq, c->cfg.timeout_ms, waiting);
  /* Nothing of this operation moved: the channels are as before it, the communicator stays
   * usable (a late peer then shows up as a mismatch). Otherwise it is broken. */
  int moved = 0;
  for (int i = 0; i < n; i++) moved |= x[i].nchunks > 0;
  return moved ? hm_comm_fail(c, HM_ERR_TIMEOUT, 1) : HM_ERR_TIMEOUT;
}

/* Looks at the control connections at most once a millisecond while spinning or yielding. */
static inline hm_status health_tick(hm_comm_t c, xwait *w, uint64_t now, int restamp) {
  if (now - w->last_health <= 1000000ull) return HM_OK;
  HM_TRY(hm_comm_health_poll(c, NULL, 0, 0));
  w->last_health = restamp ? hm_now_ns() : now;
  return HM_OK;
}

/* Sleeps until a transport's socket moves (or a control event): data sockets wake us. Only
 * transfers that can move on their socket are watched: one waiting for another transfer (its
 * channel's earlier transfer, its gate, the data it forwards) would make poll() return at once
 * (an idle socket is writable) and the sleep a busy loop that takes the core from the ranks it
 * waits for. */
static hm_status wait_poll(hm_comm_t c, const hm_xfer *x, int n, xwait *w) {
  struct pollfd pf[65];
  int np = 0, local = 0;
  for (int i = 0; i < n && np < 64; i++) {
    const hm_transport *tp = c->peers[x[i].peer].tp;
    if (x[i].finished || !hm_xfer_may_move(x, &x[i])) continue;
    if (tp->poll_fd)
      np += tp->poll_fd(c, &x[i], &pf[np]);
    else
      local = 1;
  }
  /* Shared-memory transfers wait too: their peers wake us through the doorbell socket. Announce
   * it, look once more (the caller sweeps again), then sleep: a peer publishes before it reads
   * `pollers`, we announce before we look, so either we see its data or it sees us. */
  if (local && c->bell && c->bell_fd >= 0) {
    if (!c->poll_armed) {
      atomic_fetch_add_explicit(&c->bell->pollers, 1, memory_order_relaxed);
      atomic_thread_fence(memory_order_seq_cst);
      c->poll_armed = 1;
      return HM_OK;
    }
    pf[np++] = (struct pollfd){c->bell_fd, POLLIN, 0};
  }
  HM_TRY(hm_comm_health_poll(c, pf, np, 2));
  if (c->poll_armed) drain_bell(c);
  w->last_health = hm_now_ns();
  return HM_OK;
}

/* Waits on memory the peers write: spin on the shared lines (the low-latency path), then yield,
 * then sleep on our doorbell (announce it, look once more, then wait 1 ms at most). */
static hm_status wait_local(hm_comm_t c, xwait *w, uint64_t now) {
  if (now - w->idle_since < w->spin_ns) {
    cpu_relax();
    return health_tick(c, w, now, 0);
  }
  if (now - w->idle_since < w->yield_ns) {
    sched_yield();
    return health_tick(c, w, now, 0);
  }
  if (!c->bell) {
    HM_TRY(hm_comm_health_poll(c, NULL, 0, 1));
    w->last_health = hm_now_ns();
    return HM_OK;
  }
  if (!c->bell_armed) {
    atomic_fetch_add_explicit(&c->bell->sleepers, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    c->bell_seen = atomic_load_explicit(&c->bell->seq, memory_order_acquire);
    c->bell_armed = 1;
    return HM_OK;
  }
  hm_shm_bell_wait(c->bell, c->bell_seen, 1000);
  disarm(c);
  return health_tick(c, w, now, 1);
}

/* Nothing moved in the last pass: spin a little, then check for dead peers and the deadline
 * and wait the way the transports allow. */
static hm_status wait_idle(const hm_xctx *cx, const hm_xfer *x, int n, xwait *w) {
  hm_comm_t c = cx->comm;
  if (atomic_load_explicit(&c->aborted, memory_order_relaxed))
    return hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted", c->rank);
  w->idle++;
  if (!w->any_poll && (w->idle & 63) != 0) {
    cpu_relax();
    return HM_OK;
  }
  uint64_t now = hm_now_ns();
  if (w->deadline == 0) { /* the clock is read at the first wait (within 64 spins), not on the fast path */
    w->deadline = now + (uint64_t)c->cfg.timeout_ms * 1000000ull;
    c->op_start_ns = now;
    w->last_health = now;
  }
  if (w->idle_since == 0) w->idle_since = now;
  HM_TRY(check_stalled(c, x, n, now, w->deadline));
  if (w->any_poll && w->idle >= 16) return wait_poll(c, x, n, w);
  return wait_local(c, w, now);
}

/* Operations issued meanwhile join the running set (cx->refill); *n becomes the new count. */
/* Drops the transfers already reported finished from a full running set (keeping the order of
 * the rest; an ordering on a dropped one is met), so that refill has room: a set of sends alone
 * could otherwise fill it while the receives their peer waits for stay queued. The owner of the
 * set drops the same entries (its compact callback). Point-to-point sets only (no gates, no
 * forwards between transfers). */
static int compact(const hm_xctx *cx, hm_xfer *x, int n) {
  int *to = malloc(sizeof(int) * (size_t)n);
  if (!to) return n; /* stays full: refill waits for the set to end */
  int m = 0;
  for (int i = 0; i < n; i++) to[i] = x[i].told ? -1 : m++;
  if (m == n) {
    free(to);
    return n;
  }
  for (int i = 0; i < n; i++) {
    if (to[i] < 0) continue;
    hm_xfer t = x[i];
    t.after = t.after >= 0 ? to[t.after] : -1;
    x[to[i]] = t;
  }
  free(to);
  cx->compact(cx->refill_arg);
  return m;
}

static hm_status refill(const hm_xctx *cx, hm_xfer *x, int *n, xwait *w) {
  if (*n == cx->cap && cx->compact) *n = compact(cx, x, *n);
  int m = cx->refill(cx->refill_arg, x, *n, cx->cap);
  if (m <= *n) return HM_OK;
  int bad = prepare(cx->comm, x, *n, m, &w->any_poll);
  if (bad >= 0) return hm_error(HM_ERR_INTERNAL, "rank %d: transfer with invalid peer %d", cx->comm->rank, x[bad].peer);
  *n = m;
  return HM_OK;
}

static hm_status xfer_loop(const hm_xctx *cx, hm_xfer *x, int n) {
  hm_comm_t c = cx->comm;
  xwait w;
  wait_init(c, x, n, &w);
  int bad = prepare(c, x, 0, n, &w.any_poll);
  if (bad >= 0) return hm_error(HM_ERR_INTERNAL, "rank %d: transfer with invalid peer %d", c->rank, x[bad].peer);
  for (;;) {
    int progress = 0, pending = 0;
    HM_TRY(sweep(cx, x, n, &pending, &progress));
    if (!pending) return HM_OK;
    if (progress) {
      w.idle = 0;
      w.idle_since = 0;
      disarm(c);
      continue;
    }
    if (cx->refill && (n < cx->cap || cx->compact) && (w.idle & 15) == 0) {
      int before = n;
      HM_TRY(refill(cx, x, &n, &w));
      if (n > before) continue;
    }
    HM_TRY(wait_idle(cx, x, n, &w));
  }
}

hm_status hm_xfer_run(const hm_xctx *cx, hm_xfer *x, int n) {
  hm_status st = xfer_loop(cx, x, n);
  disarm(cx->comm);
  return st;
}
