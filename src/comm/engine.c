/* The transfer engine of hmcomm: runs a set of point-to-point transfers (each a send or a
 * receive of `bytes` with one peer, over shared memory or TCP) to completion, moving chunks on
 * every channel that can move, so pipelines (forward what arrived, reduce what arrived) and any
 * send/receive pattern complete without deadlock. Every chunk carries the sender's operation
 * sequence number and descriptor; a receiver checks both before it touches the data.
 * Waiting: spin on the shared cache lines first (the low-latency path), then yield, then sleep in
 * poll() on the sockets; the control sockets are watched throughout, so a dead peer (EOF), an
 * error notice from a peer, abort() and the deadline all end the wait (liveness.c watches them).
 * Not here: which transfers a collective needs (coll.c), peer liveness (liveness.c). */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_internal.h"
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

/* ---- TCP channel ---- */
static hm_status tcp_flush(hm_comm_t c, int r) {
  hm_peer *p = &c->peers[r];
  while (p->tx_busy) {
    struct iovec iov[2];
    int n = 0;
    if (p->tx_off < HM_WIRE_HDR_BYTES)
      iov[n++] = (struct iovec){p->tx_hdr + p->tx_off, HM_WIRE_HDR_BYTES - p->tx_off};
    size_t doff = p->tx_off > HM_WIRE_HDR_BYTES ? p->tx_off - HM_WIRE_HDR_BYTES : 0;
    if (p->tx_len > HM_WIRE_HDR_BYTES)
      iov[n++] = (struct iovec){(void *)(p->tx_data + doff), p->tx_len - HM_WIRE_HDR_BYTES - doff};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = (size_t)n;
    ssize_t w = sendmsg(p->data_fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return HM_OK;
      if (errno == EPIPE || errno == ECONNRESET) return hm_comm_peer_gone(c, r, "reset its data connection");
      hm_error(HM_ERR_IO, "rank %d: send to rank %d: %s", c->rank, r, strerror(errno));
      return hm_comm_fail(c, HM_ERR_IO, 1);
    }
    p->tx_off += (size_t)w;
    if (p->tx_off == p->tx_len) p->tx_busy = 0;
  }
  return HM_OK;
}

/* Reads toward one complete frame: the header into rx_hdr (decoded into rx_h), then the payload
 * into `payload` (the staging buffer, or the destination itself for plain copies). *ready when
 * the whole frame is there; *have_hdr once the header is. */
static hm_status tcp_fill(hm_comm_t c, int r, char *payload, int *have_hdr, int *ready) {
  hm_peer *p = &c->peers[r];
  for (;;) {
    *have_hdr = p->rx_off >= HM_WIRE_HDR_BYTES;
    *ready = *have_hdr && p->rx_off == HM_WIRE_HDR_BYTES + p->rx_h.len;
    if (*ready || (*have_hdr && !payload)) return HM_OK;
    char *dst;
    size_t want;
    if (!*have_hdr) {
      dst = (char *)p->rx_hdr + p->rx_off;
      want = HM_WIRE_HDR_BYTES - p->rx_off;
    } else {
      dst = payload + (p->rx_off - HM_WIRE_HDR_BYTES);
      want = HM_WIRE_HDR_BYTES + p->rx_h.len - p->rx_off;
    }
    ssize_t got = recv(p->data_fd, dst, want, MSG_DONTWAIT);
    if (got == 0) return hm_comm_peer_gone(c, r, "closed its data connection");
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return HM_OK;
      if (errno == ECONNRESET) return hm_comm_peer_gone(c, r, "reset its data connection");
      hm_error(HM_ERR_IO, "rank %d: receive from rank %d: %s", c->rank, r, strerror(errno));
      return hm_comm_fail(c, HM_ERR_IO, 1);
    }
    p->rx_off += (size_t)got;
    if (p->rx_off == HM_WIRE_HDR_BYTES) {
      hm_status st = hm_wire_decode_header(p->rx_hdr, HM_WIRE_HDR_BYTES, &p->rx_h);
      if (st == HM_OK && (p->rx_h.type != HM_WIRE_DATA || p->rx_h.len > c->tcp_chunk))
        st = hm_error(HM_ERR_PROTOCOL, "frame type %u with %u bytes where a data chunk of at most %u was due",
                      (unsigned)p->rx_h.type, (unsigned)p->rx_h.len, c->tcp_chunk);
      if (st != HM_OK) {
        hm_error_context(HM_ERR_PROTOCOL, "rank %d: data from rank %d: ", c->rank, r);
        return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
      }
    }
  }
}

/* ---- one transfer step ---- */
static hm_status mismatch(const hm_xctx *cx, const hm_xfer *x, uint32_t seq, uint64_t desc) {
  hm_comm_t c = cx->comm;
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

static size_t send_limit(const hm_xfer *x) {
  if (!x->avail) return x->bytes;
  size_t a = *x->avail;
  return a < x->bytes ? a : x->bytes;
}

/* The next free slot of a shared-memory channel we produce into, or NULL when it is full. */
static hm_shm_slot *chan_slot(hm_shm_chan *ch) {
  if (ch->count - ch->seen_consumed >= ch->nslots) {
    ch->seen_consumed = atomic_load_explicit(&ch->ctl->consumed, memory_order_acquire);
    if (ch->count - ch->seen_consumed >= ch->nslots) return NULL;
  }
  return (hm_shm_slot *)(ch->slots + (size_t)(ch->count % ch->nslots) * ch->stride);
}

/* Publishes slot s (payload filled) of transfer x to peer q: header, then the stamp (release). */
static void chan_publish(hm_peer *q, hm_shm_slot *s, const hm_xfer *x, uint32_t len, uint32_t kind) {
  s->len = len;
  s->seq = x->seq;
  s->desc = x->desc;
  s->kind = kind;
  s->stream = (uint32_t)x->stream;
  q->tx.count++;
  atomic_store_explicit(&s->stamp, q->tx.count, memory_order_release);
  hm_shm_bell_ring(q->bell);
}

static hm_status step_send(const hm_xctx *cx, hm_xfer *x, int *progress) {
  hm_comm_t c = cx->comm;
  hm_peer *p = &c->peers[x->peer];
  if (!p->is_shm) HM_TRY(tcp_flush(c, x->peer));
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      if (p->is_shm ? (!x->cma_until ||
                       atomic_load_explicit(&p->tx.ctl->cma_bytes, memory_order_acquire) >= x->cma_until)
                    : !p->tx_busy)
        x->finished = 1;
      return HM_OK;
    }
    size_t lim = send_limit(x);
    size_t n = lim - x->done;
    if (n == 0 && x->bytes > 0) return HM_OK; /* waiting for the data it forwards */
    if (p->is_shm) {
      hm_shm_chan *ch = &p->tx;
      const int cma = x->cma_ok && p->peer_reads_me && x->bytes >= HM_CMA_MIN_BYTES && n > 0;
      if (cma) {
        if (n > HM_CMA_MAX_DESC) n = HM_CMA_MAX_DESC;
        /* while forwarded data trickles in, describe it in pieces worth a system call */
        if (n < x->bytes - x->done && n < HM_CMA_MIN_BYTES) return HM_OK;
      } else if (n > ch->payload) {
        n = ch->payload;
      }
      hm_shm_slot *s = chan_slot(ch);
      if (!s) return HM_OK;
      if (cma) {
        uint64_t addr = (uint64_t)(uintptr_t)(x->src + x->done);
        memcpy((char *)s + 32, &addr, sizeof addr);
        ch->cma_posted += n;
        x->cma_until = ch->cma_posted;
      } else if (n) {
        memcpy((char *)s + 32, x->src + x->done, n);
      }
      chan_publish(p, s, x, (uint32_t)n, cma ? HM_SLOT_CMA : HM_SLOT_DATA);
    } else {
      if (p->tx_busy) return HM_OK;
      if (n > c->tcp_chunk) n = c->tcp_chunk;
      hm_wire_hdr h;
      hm_wire_make_header(&h, HM_WIRE_DATA, x->seq, (uint32_t)n, x->desc, 0);
      hm_wire_encode_header(&h, p->tx_hdr);
      p->tx_data = x->src + x->done;
      p->tx_len = HM_WIRE_HDR_BYTES + n;
      p->tx_off = 0;
      p->tx_busy = 1;
      HM_TRY(tcp_flush(c, x->peer));
    }
    x->done += n;
    x->nchunks++;
    *progress = 1;
    if (x->stream && p->is_shm) return HM_OK; /* one chunk a turn: leave slots to the streams it interleaves with */
  }
}

/* Single copy: reads `len` bytes at the sender's address straight into the destination (or, to
 * reduce, through a small staging buffer), then tells the sender they were read. */
static hm_status cma_read(const hm_xctx *cx, hm_xfer *x, hm_peer *p, uint64_t addr, uint32_t len) {
  hm_comm_t c = cx->comm;
  const size_t es = hm_dtype_size(cx->dt), piece = 256u << 10;
  if (x->mode == HM_X_REDUCE && !c->cma_tmp) {
    c->cma_tmp = hm_aligned_alloc(64, piece, "single-copy staging");
    if (!c->cma_tmp) return HM_ERR_NOMEM;
  }
  size_t off = 0;
  while (off < len) {
    size_t n = len - off;
    char *dst = x->dst + x->done + off;
    if (x->mode == HM_X_REDUCE) {
      if (n > piece) n = piece;
      dst = c->cma_tmp;
    }
    struct iovec l = {dst, n}, r = {(void *)(uintptr_t)(addr + off), n};
    ssize_t got = process_vm_readv(p->pid, &l, 1, &r, 1, 0);
    if (got <= 0) {
      int e = errno;
      if (got < 0 && e == ESRCH) return hm_comm_peer_gone(c, x->peer, "exited during a single-copy read");
      hm_error(HM_ERR_IO, "rank %d: single-copy read of %zu bytes from rank %d (pid %d): %s", c->rank, n,
               x->peer, p->pid, got < 0 ? strerror(e) : "nothing read");
      return hm_comm_fail(c, HM_ERR_IO, 1);
    }
    n = (size_t)got - (size_t)got % (es ? es : 1);
    if (n == 0) continue;
    if (x->mode == HM_X_REDUCE)
      hm_reduce(x->dst + x->done + off, x->src + x->done + off, c->cma_tmp, n / es, cx->dt, cx->op, x->final_div);
    off += n;
  }
  atomic_fetch_add_explicit(&p->rx.ctl->cma_bytes, len, memory_order_release);
  hm_shm_bell_ring(p->bell);
  return HM_OK;
}

/* The forwarding send f can take this receive's next chunk of len bytes straight into its
 * channel: it is the running send on that channel, has forwarded everything received so far,
 * and a slot is free. */
static hm_shm_slot *fwd_slot(hm_comm_t c, const hm_xfer *all, const hm_xfer *x, uint32_t len) {
  const hm_xfer *f = x->fwd;
  if (!f || f->finished || len == 0 || f->done != x->done || f->done + len > f->bytes) return NULL;
  if ((f->after >= 0 && !all[f->after].finished) || (f->gate && !*f->gate)) return NULL;
  hm_peer *q = &c->peers[f->peer];
  if (!q->is_shm || len > q->tx.payload || f->cma_until) return NULL;
  return chan_slot(&q->tx);
}

static hm_status step_recv(const hm_xctx *cx, const hm_xfer *all, int n_all, hm_xfer *x, int *progress) {
  hm_comm_t c = cx->comm;
  hm_peer *p = &c->peers[x->peer];
  const size_t es = hm_dtype_size(cx->dt);
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      x->finished = 1;
      return HM_OK;
    }
    uint32_t len, seq;
    uint64_t desc, cma_addr = 0;
    const char *data;
    hm_shm_slot *s = NULL;
    if (p->is_shm) {
      hm_shm_chan *ch = &p->rx;
      s = (hm_shm_slot *)(ch->slots + (size_t)(ch->count % ch->nslots) * ch->stride);
      if (atomic_load_explicit(&s->stamp, memory_order_acquire) != ch->count + 1) return HM_OK;
      if (s->stream != (uint32_t)x->stream && s->seq == x->seq && s->desc == x->desc) {
        /* another stream's chunk is first: its receive takes it, unless there is none */
        for (const hm_xfer *o = all; o < all + n_all; o++)
          if (!o->is_send && !o->finished && o->peer == x->peer && (uint32_t)o->stream == s->stream && o->stream)
            return HM_OK;
        hm_error(HM_ERR_PROTOCOL, "rank %d: chunk of stream %u from rank %d matches no pending transfer",
                 c->rank, (unsigned)s->stream, x->peer);
        return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
      }
      len = s->len;
      seq = s->seq;
      desc = s->desc;
      data = (const char *)s + 32;
      if (s->kind == HM_SLOT_CMA) {
        memcpy(&cma_addr, data, sizeof cma_addr);
        data = NULL;
      } else if (len > ch->payload) {
        len = UINT32_MAX; /* rejected below */
      }
    } else {
      int have_hdr, ready;
      HM_TRY(tcp_fill(c, x->peer, NULL, &have_hdr, &ready));
      if (!have_hdr) return HM_OK;
      len = p->rx_h.len;
      seq = p->rx_h.seq;
      desc = p->rx_h.desc;
      /* plain copies land straight in the destination once the header checked out */
      int direct = x->mode == HM_X_COPY && !x->avail && seq == x->seq && desc == x->desc && len <= x->bytes - x->done;
      data = direct ? x->dst + x->done : p->rx_buf;
      HM_TRY(tcp_fill(c, x->peer, (char *)data, &have_hdr, &ready));
      if (!ready) return HM_OK;
      if (direct) data = NULL; /* already in place */
    }
    if (seq != x->seq || desc != x->desc) return mismatch(cx, x, seq, desc);
    size_t left = x->bytes - x->done;
    if (len > left || (left > 0 && len == 0) || (es > 1 && len % es)) {
      hm_error(HM_ERR_PROTOCOL, "rank %d: chunk of %u bytes from rank %d where %zu bytes remain",
               c->rank, len, x->peer, left);
      return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
    }
    if (x->avail && *x->avail < x->done + len) return HM_OK; /* operand not reduced yet */
    hm_shm_slot *out = (len && data && p->is_shm) ? fwd_slot(c, all, x, len) : NULL;
    const int stream = x->bytes >= HM_STREAM_MIN_BYTES;
    if (out) {
      /* produce into the next hop's slot (cached), publish it, then fill dst from there */
      char *o = (char *)out + 32;
      if (x->mode == HM_X_REDUCE)
        hm_reduce(o, x->src + x->done, data, len / es, cx->dt, cx->op, x->final_div);
      else
        memcpy(o, data, len);
      chan_publish(&c->peers[x->fwd->peer], out, x->fwd, len, HM_SLOT_DATA);
      x->fwd->done += len;
      x->fwd->nchunks++;
      if (stream)
        hm_copy_stream(x->dst + x->done, o, len);
      else
        memcpy(x->dst + x->done, o, len);
    } else if (len && cma_addr) {
      HM_TRY(cma_read(cx, x, p, cma_addr, len));
    } else if (len && data) {
      if (x->mode == HM_X_REDUCE)
        hm_reduce(x->dst + x->done, x->src + x->done, data, len / es, cx->dt, cx->op, x->final_div);
      else if (stream && !x->fwd)
        hm_copy_stream(x->dst + x->done, data, len);
      else
        memcpy(x->dst + x->done, data, len);
    }
    if (p->is_shm) {
      p->rx.count++;
      atomic_store_explicit(&p->rx.ctl->consumed, p->rx.count, memory_order_release);
      hm_shm_bell_ring(p->bell);
    } else {
      p->rx_off = 0;
    }
    x->done += len;
    x->nchunks++;
    *progress = 1;
  }
}

static _Thread_local int g_background;
void hm_xfer_background(int on) { g_background = on; }

static int prepare(hm_comm_t c, hm_xfer *x, int from, int n, int *any_tcp) {
  for (int i = from; i < n; i++) {
    x[i].after = -1;
    if (x[i].peer < 0 || x[i].peer >= c->nranks || x[i].peer == c->rank) return i;
    if (!c->peers[x[i].peer].is_shm) *any_tcp = 1;
    else if (x[i].stream) continue; /* interleaves with the other streams: no order to keep */
    for (int j = i - 1; j >= 0; j--)
      if (x[j].peer == x[i].peer && x[j].is_send == x[i].is_send) {
        x[i].after = j;
        break;
      }
  }
  return -1;
}

static void disarm(hm_comm_t c) {
  if (!c->bell_armed) return;
  atomic_fetch_sub_explicit(&c->bell->sleepers, 1, memory_order_relaxed);
  c->bell_armed = 0;
}

static hm_status xfer_loop(const hm_xctx *cx, hm_xfer *x, int n) {
  hm_comm_t c = cx->comm;
  int any_tcp = 0;
  int bad = prepare(c, x, 0, n, &any_tcp);
  if (bad >= 0) return hm_error(HM_ERR_INTERNAL, "rank %d: transfer with invalid peer %d", c->rank, x[bad].peer);
  size_t total = 0;
  for (int i = 0; i < n; i++) total += x[i].bytes;
  /* Latency-bound operations spin longer than bandwidth-bound ones before yielding. On the
   * progress thread (nonblocking operations) the caller's thread is computing meanwhile: a wait
   * there spins briefly and then sleeps on the doorbell, so it takes no core from the compute. */
  const int small = total < (1u << 20);
  const uint64_t spin_ns = g_background ? c->spin_ns : small ? c->spin_small_ns : c->spin_ns;
  const uint64_t yield_ns = g_background ? spin_ns
                            : spin_ns > c->spin_ns ? spin_ns + (c->yield_ns - c->spin_ns) : c->yield_ns;
  /* the clock is read at the first wait (within 64 spins of the start), not on the fast path */
  uint64_t deadline = 0;
  uint64_t idle_since = 0, last_health = 0;
  unsigned idle = 0;
  for (;;) {
    int progress = 0, pending = 0;
    for (int i = 0; i < n; i++) {
      hm_xfer *t = &x[i];
      if (t->finished) continue;
      pending = 1;
      if (t->after >= 0 && !x[t->after].finished) continue;
      if (t->gate && !*t->gate) continue;
      HM_TRY(t->is_send ? step_send(cx, t, &progress) : step_recv(cx, x, n, t, &progress));
    }
    if (!pending) return HM_OK;
    if (progress) {
      idle = 0;
      idle_since = 0;
      disarm(c);
      continue;
    }
    if (cx->refill && n < cx->cap && (idle & 15) == 0) { /* operations issued meanwhile join the running set */
      int m = cx->refill(cx->refill_arg, x, n, cx->cap);
      if (m > n) {
        bad = prepare(c, x, n, m, &any_tcp);
        if (bad >= 0) return hm_error(HM_ERR_INTERNAL, "rank %d: transfer with invalid peer %d", c->rank, x[bad].peer);
        n = m;
        continue;
      }
    }

    if (atomic_load_explicit(&c->aborted, memory_order_relaxed))
      return hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted", c->rank);
    idle++;
    if (!any_tcp && (idle & 63) != 0) {
      cpu_relax();
      continue;
    }
    uint64_t now = hm_now_ns();
    if (deadline == 0) {
      deadline = now + (uint64_t)c->cfg.timeout_ms * 1000000ull;
      c->op_start_ns = now;
      last_health = now;
    }
    if (idle_since == 0) idle_since = now;
    for (int i = 0; i < n; i++) /* nothing moved: a peer that left will never send or drain */
      if (!x[i].finished && c->peers[x[i].peer].left) {
        hm_error(HM_ERR_PEER_DEAD, "rank %d: peer rank %d left the communicator (destroyed it) in the middle of an operation",
                 c->rank, x[i].peer);
        return hm_comm_fail(c, HM_ERR_PEER_DEAD, 1);
      }
    if (now >= deadline) {
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
    if (any_tcp && idle >= 16) {
      /* sleep until a socket moves (or a control event); data sockets wake us */
      struct pollfd pf[64];
      int np = 0;
      for (int i = 0; i < n && np < 64; i++) {
        hm_peer *p = &c->peers[x[i].peer];
        if (x[i].finished || p->is_shm) continue;
        pf[np++] = (struct pollfd){p->data_fd, (short)(x[i].is_send ? POLLOUT : POLLIN), 0};
      }
      HM_TRY(hm_comm_health_poll(c, pf, np, 2));
      last_health = hm_now_ns();
      continue;
    }
    if (now - idle_since < spin_ns) {
      /* spin on the shared lines: the low-latency path */
      cpu_relax();
      if (now - last_health > 1000000ull) {
        HM_TRY(hm_comm_health_poll(c, NULL, 0, 0));
        last_health = now;
      }
    } else if (now - idle_since < yield_ns) {
      sched_yield();
      if (now - last_health > 1000000ull) {
        HM_TRY(hm_comm_health_poll(c, NULL, 0, 0));
        last_health = now;
      }
    } else if (c->bell) {
      /* sleep on our doorbell: announce it, look once more, then wait (1 ms at most) */
      if (!c->bell_armed) {
        atomic_fetch_add_explicit(&c->bell->sleepers, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        c->bell_seen = atomic_load_explicit(&c->bell->seq, memory_order_acquire);
        c->bell_armed = 1;
        continue;
      }
      hm_shm_bell_wait(c->bell, c->bell_seen, 1000);
      disarm(c);
      if (now - last_health > 1000000ull) {
        HM_TRY(hm_comm_health_poll(c, NULL, 0, 0));
        last_health = hm_now_ns();
      }
    } else {
      HM_TRY(hm_comm_health_poll(c, NULL, 0, 1));
      last_health = hm_now_ns();
    }
  }
}

hm_status hm_xfer_run(const hm_xctx *cx, hm_xfer *x, int n) {
  hm_status st = xfer_loop(cx, x, n);
  disarm(cx->comm);
  return st;
}
