/* The shared-memory transport: segments and single-producer single-consumer slot rings for ranks
 * on one host, and the transport table (transport.h) that moves transfers through them.
 * Each rank owns one POSIX shm segment holding its inbound rings (one per same-host peer); the
 * peer maps it and produces into it. A slot is a 32-byte header plus payload: the producer fills
 * the payload, then stores the stamp (release); the consumer spins on the stamp (acquire), uses
 * the payload in place (copy or reduce straight out of the slot) and releases the slot by
 * advancing `consumed`. Small messages therefore cost one cache line each way.
 * The segment is unlinked as soon as every peer mapped it, so nothing is left behind. Both sides
 * map it populated (MAP_POPULATE): the first operations then take no page faults (a 1 MiB ring
 * costs about a millisecond of faults otherwise, all in the first large operation).
 * Beyond the plain ring protocol: single copy (a slot describes the sender's memory, the receiver
 * reads it with process_vm_readv), fused forwarding (a receive produces straight into the next
 * hop's slot) and interleaved streams (docs/comm.md). */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "comm/transport/transport.h"
#include "util/util.h"

size_t hm_shm_ring_bytes(uint32_t nslots, uint32_t payload) {
  return sizeof(hm_shm_ring_ctl) + (size_t)nslots * (payload + 64);
}

static void chan_init(hm_shm_chan *c, void *ring, uint32_t nslots, uint32_t payload) {
  memset(c, 0, sizeof *c);
  c->ctl = ring;
  c->slots = (char *)ring + sizeof(hm_shm_ring_ctl);
  c->nslots = nslots;
  c->payload = payload;
  c->stride = payload + 64;
}

/* A rank unlinks its segment at the end of bootstrap, failed or not; one killed during bootstrap
 * cannot, and its segment would stay in /dev/shm. The first segment a process creates sweeps
 * such leftovers: hetmix segments of this user whose creating process (the pid in the name:
 * /hetmix-<tag>-<rank>-<pid>-<n>) is gone and that are older than any bootstrap lasts (10 min;
 * a live job's segment is unlinked within its bootstrap, so also another pid namespace's is safe). */
int hm_shm_sweep_stale(int min_age_s) {
  int removed = 0;
  DIR *d = opendir("/dev/shm");
  if (!d) return 0;
  const time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned tag, n;
    int rank, pid;
    if (sscanf(e->d_name, "hetmix-%8x-%d-%d-%u", &tag, &rank, &pid, &n) != 4 || pid <= 0) continue;
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
    struct stat sb;
    if (stat(path, &sb) != 0 || sb.st_uid != geteuid() || now - sb.st_mtime < min_age_s) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    char name[300];
    snprintf(name, sizeof name, "/%s", e->d_name);
    if (shm_unlink(name) == 0) {
      removed++;
      hm_log(HM_LOG_INFO, "removed stale shared memory %s (pid %d is gone)", name, pid);
    }
  }
  closedir(d);
  return removed;
}

hm_status hm_shm_segment_create(const char *name, size_t bytes, void **base) {
  static _Atomic int swept;
  if (!atomic_exchange(&swept, 1)) hm_shm_sweep_stale(600);
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return hm_error(HM_ERR_IO, "shm_open(%s): %s", name, strerror(errno));
  if (ftruncate(fd, (off_t)bytes) != 0) {
    int e = errno;
    close(fd);
    shm_unlink(name);
    return hm_error(HM_ERR_IO, "ftruncate shared memory %s to %zu bytes: %s", name, bytes, strerror(e));
  }
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(name);
    return hm_error(HM_ERR_IO, "mmap shared memory %s (%zu bytes): %s", name, bytes, strerror(e));
  }
  *base = p;
  return HM_OK;
}

static hm_status segment_open(const char *name, size_t bytes, void **base) {
  int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return hm_error(HM_ERR_IO, "shm_open(%s) of a peer: %s", name, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || (size_t)sb.st_size < bytes) {
    close(fd);
    return hm_error(HM_ERR_PROTOCOL, "peer shared memory %s is smaller than %zu bytes", name, bytes);
  }
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return hm_error(HM_ERR_IO, "mmap peer shared memory %s: %s", name, strerror(e));
  *base = p;
  return HM_OK;
}

/* Called after publishing a slot or freeing one: a full fence orders our store before reading
 * `sleepers` (the sleeper orders its `sleepers` store before re-checking the rings), so either
 * it sees our data or we see it asleep. */
void hm_shm_bell_ring(hm_comm_t c, hm_peer *q) {
  hm_shm_bell *b = q->shm.bell;
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&b->pollers, memory_order_relaxed) != 0 && c->bell_fd >= 0 && q->shm.bell_len)
    (void)sendto(c->bell_fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&q->shm.bell_addr,
                 q->shm.bell_len); /* a full socket has a wake-up pending already */
  if (atomic_load_explicit(&b->sleepers, memory_order_relaxed) == 0) return;
  atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
  syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

socklen_t hm_shm_bell_addr(const char *shm_name, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  int n = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "hetmix-bell%s", shm_name);
  if (n < 0 || (size_t)n >= sizeof sa->sun_path - 1) return 0;
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

void hm_shm_bell_socket(hm_comm_t c, const char *shm_name) {
  struct sockaddr_un sa;
  socklen_t len = hm_shm_bell_addr(shm_name, &sa);
  int fd = len ? socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
  if (fd >= 0 && bind(fd, (const struct sockaddr *)&sa, len) != 0) {
    hm_log(HM_LOG_DEBUG, "rank %d: no doorbell socket (%s): mixed waits wake on poll()'s timeout", c->rank,
           strerror(errno));
    close(fd);
    fd = -1;
  }
  c->bell_fd = fd;
}

void hm_shm_bell_wait(hm_shm_bell *b, uint32_t seen, int timeout_us) {
  struct timespec ts = {timeout_us / 1000000, (long)(timeout_us % 1000000) * 1000};
  syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAIT, seen, &ts, NULL, 0);
}

/* ---- the transport table ---- */
const uint64_t hm_shm_cma_probe = 0x434d412070726f62ull; /* read by same-host peers to test CMA */

/* Can this process read the peer's memory with process_vm_readv (same user, no ptrace limits,
 * not forbidden by seccomp)? */
static int cma_works(int pid, uint64_t addr) {
  uint64_t v = 0;
  struct iovec l = {&v, sizeof v}, r = {(void *)(uintptr_t)addr, sizeof v};
  return process_vm_readv(pid, &l, 1, &r, 1, 0) == (ssize_t)sizeof v && v == hm_shm_cma_probe;
}

/* Maps peer r's segment: we produce into our ring there and consume r's ring in ours. READY tells
 * r whether we can read its memory directly (so it may send us large transfers single-copy). */
static hm_status shm_connect(hm_comm_t c, int r, const hm_rank_info *mine, const hm_rank_info *peer,
                             uint32_t *ready_aux) {
  hm_shm_peer *s = &c->peers[r].shm;
  uint32_t slots = (uint32_t)peer->shm_slots, payload = (uint32_t)peer->shm_payload;
  s->seg_bytes = HM_SHM_HDR_BYTES + (size_t)c->nranks * hm_shm_ring_bytes(slots, payload);
  HM_TRY(segment_open(peer->shm_name, s->seg_bytes, &s->seg));
  s->bell = s->seg;
  s->bell_len = hm_shm_bell_addr(peer->shm_name, &s->bell_addr);
  chan_init(&s->tx, (char *)s->seg + HM_SHM_HDR_BYTES + (size_t)c->rank * hm_shm_ring_bytes(slots, payload), slots,
            payload);
  uint32_t ms = (uint32_t)mine->shm_slots, mp = (uint32_t)mine->shm_payload;
  chan_init(&s->rx, (char *)c->shm_base + HM_SHM_HDR_BYTES + (size_t)r * hm_shm_ring_bytes(ms, mp), ms, mp);
  *ready_aux = c->env.cma && cma_works(peer->pid, peer->cma_probe);
  return HM_OK;
}

static void shm_ready(hm_comm_t c, int r, uint32_t peer_aux) { c->peers[r].shm.peer_reads_me = peer_aux == 1; }

static void shm_close(hm_comm_t c, int r) {
  hm_shm_peer *s = &c->peers[r].shm;
  if (s->seg) munmap(s->seg, s->seg_bytes);
  s->seg = NULL;
}

static void shm_link(hm_link *out) { *out = (hm_link){8e9, 1.5e-6, 6e9, 0}; }

/* The next free slot of a shared-memory channel we produce into, or NULL when it is full. */
static hm_shm_slot *chan_slot(hm_shm_chan *ch) {
  if (ch->count - ch->seen_consumed >= ch->nslots) {
    ch->seen_consumed = atomic_load_explicit(&ch->ctl->consumed, memory_order_acquire);
    if (ch->count - ch->seen_consumed >= ch->nslots) return NULL;
  }
  return (hm_shm_slot *)(ch->slots + (size_t)(ch->count % ch->nslots) * ch->stride);
}

/* Publishes slot s (payload filled) of transfer x to peer q: header, then the stamp (release). */
static void chan_publish(hm_comm_t c, hm_peer *q, hm_shm_slot *s, const hm_xfer *x, uint32_t len, uint32_t kind) {
  s->len = len;
  s->seq = x->seq;
  s->desc = x->desc;
  s->kind = kind;
  s->stream = (uint32_t)x->stream;
  q->shm.tx.count++;
  atomic_store_explicit(&s->stamp, q->shm.tx.count, memory_order_release);
  hm_shm_bell_ring(c, q);
}

/* How many bytes of send x the next slot carries (0 with *go = 0: wait for more); single copy
 * describes up to HM_CMA_MAX_DESC bytes of the source, a data slot holds up to its payload. */
static size_t send_chunk(const hm_xfer *x, const hm_shm_peer *s, int *cma, int *go) {
  size_t n = hm_xfer_send_limit(x) - x->done;
  *go = !(n == 0 && x->bytes > 0); /* else waiting for the data it forwards */
  *cma = x->cma_ok && s->peer_reads_me && x->bytes >= HM_CMA_MIN_BYTES && n > 0;
  if (*cma) {
    if (n > HM_CMA_MAX_DESC) n = HM_CMA_MAX_DESC;
    /* while forwarded data trickles in, describe it in pieces worth a system call */
    if (n < x->bytes - x->done && n < HM_CMA_MIN_BYTES) *go = 0;
  } else if (n > s->tx.payload) {
    n = s->tx.payload;
  }
  return n;
}

static hm_status shm_send_step(const hm_xctx *cx, const hm_xfer *all, int n_all, hm_xfer *x, int *progress) {
  (void)all;
  (void)n_all;
  hm_peer *p = &cx->comm->peers[x->peer];
  hm_shm_chan *ch = &p->shm.tx;
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      if (!x->cma_until || atomic_load_explicit(&ch->ctl->cma_bytes, memory_order_acquire) >= x->cma_until)
        x->finished = 1;
      return HM_OK;
    }
    int cma, go;
    size_t n = send_chunk(x, &p->shm, &cma, &go);
    if (!go) return HM_OK;
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
    chan_publish(cx->comm, p, s, x, (uint32_t)n, cma ? HM_SLOT_CMA : HM_SLOT_DATA);
    x->done += n;
    x->nchunks++;
    *progress = 1;
    if (x->stream) return HM_OK; /* one chunk a turn: leave slots to the streams it interleaves with */
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
  atomic_fetch_add_explicit(&p->shm.rx.ctl->cma_bytes, len, memory_order_release);
  hm_shm_bell_ring(c, p);
  return HM_OK;
}

/* The forwarding send f can take this receive's next chunk of len bytes straight into its
 * channel: it is the running send on that channel, has forwarded everything received so far,
 * its peer is on shared memory too, and a slot is free. */
static hm_shm_slot *fwd_slot(hm_comm_t c, const hm_xfer *all, const hm_xfer *x, uint32_t len) {
  const hm_xfer *f = x->fwd;
  if (!f || f->finished || len == 0 || f->done != x->done || f->done + len > f->bytes) return NULL;
  if (!hm_xfer_may_move(all, f)) return NULL;
  hm_peer *q = &c->peers[f->peer];
  if (q->tp != &hm_transport_shm || len > q->shm.tx.payload || f->cma_until) return NULL;
  return chan_slot(&q->shm.tx);
}

/* Fused forwarding: produce the chunk into the next hop's slot (cached), publish it, then fill
 * dst from there, so dst is never read back. */
static void fwd_chunk(const hm_xctx *cx, hm_xfer *x, hm_shm_slot *out, const char *data, uint32_t len, size_t es) {
  char *o = (char *)out + 32;
  if (x->mode == HM_X_REDUCE)
    hm_reduce(o, x->src + x->done, data, len / es, cx->dt, cx->op, x->final_div);
  else
    memcpy(o, data, len);
  chan_publish(cx->comm, &cx->comm->peers[x->fwd->peer], out, x->fwd, len, HM_SLOT_DATA);
  x->fwd->done += len;
  x->fwd->nchunks++;
  if (x->bytes >= HM_STREAM_MIN_BYTES)
    hm_copy_stream(x->dst + x->done, o, len);
  else
    memcpy(x->dst + x->done, o, len);
}

/* The slot at the head of x's inbound ring if x may take it (*out NULL: empty, or another
 * stream's chunk that its own receive takes). */
static hm_status ring_head(const hm_xctx *cx, const hm_xfer *all, int n_all, const hm_xfer *x, hm_shm_slot **out) {
  hm_comm_t c = cx->comm;
  hm_shm_chan *ch = &c->peers[x->peer].shm.rx;
  hm_shm_slot *s = (hm_shm_slot *)(ch->slots + (size_t)(ch->count % ch->nslots) * ch->stride);
  *out = NULL;
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
  *out = s;
  return HM_OK;
}

/* Uses slot s's chunk of len bytes for receive x: forward it fused, read it single-copy, or
 * copy/reduce it out of the slot. */
static hm_status take_chunk(const hm_xctx *cx, const hm_xfer *all, hm_xfer *x, const hm_shm_slot *s, uint32_t len,
                            size_t es) {
  hm_peer *p = &cx->comm->peers[x->peer];
  const char *data = (const char *)s + 32;
  if (len == 0) return HM_OK;
  if (s->kind == HM_SLOT_CMA) {
    uint64_t addr;
    memcpy(&addr, data, sizeof addr);
    return cma_read(cx, x, p, addr, len);
  }
  hm_shm_slot *out = fwd_slot(cx->comm, all, x, len);
  if (out)
    fwd_chunk(cx, x, out, data, len, es);
  else
    hm_xfer_deliver(cx, x, data, len, es);
  return HM_OK;
}

static hm_status shm_recv_step(const hm_xctx *cx, const hm_xfer *all, int n_all, hm_xfer *x, int *progress) {
  hm_peer *p = &cx->comm->peers[x->peer];
  hm_shm_chan *ch = &p->shm.rx;
  const size_t es = hm_dtype_size(cx->dt);
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      x->finished = 1;
      return HM_OK;
    }
    hm_shm_slot *s;
    HM_TRY(ring_head(cx, all, n_all, x, &s));
    if (!s) return HM_OK;
    uint32_t len = s->len;
    if (s->kind != HM_SLOT_CMA && len > ch->payload) len = UINT32_MAX; /* rejected by the check */
    HM_TRY(hm_xfer_check_chunk(cx, x, s->seq, s->desc, len, es));
    if (x->avail && *x->avail < x->done + len) return HM_OK; /* operand not reduced yet */
    HM_TRY(take_chunk(cx, all, x, s, len, es));
    ch->count++;
    atomic_store_explicit(&ch->ctl->consumed, ch->count, memory_order_release);
    hm_shm_bell_ring(cx->comm, p);
    x->done += len;
    x->nchunks++;
    *progress = 1;
  }
}

const hm_transport hm_transport_shm = {
    .name = "shm",
    .caps = HM_TP_LOCAL | HM_TP_STREAMS,
    .data_conns = 0,
    .connect = shm_connect,
    .ready = shm_ready,
    .send_step = shm_send_step,
    .recv_step = shm_recv_step,
    .close = shm_close,
    .link = shm_link,
};
