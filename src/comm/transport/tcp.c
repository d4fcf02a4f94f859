/* The TCP transport: each transfer moves as DATA frames (32-byte header + at most tcp_chunk
 * payload bytes) over the pair's data connections (streams, HETMIX_TCP_STREAMS), nonblocking
 * sockets with TCP_NODELAY and 4 MiB buffers. Frame k of the pair goes on stream k mod
 * nstreams, so a message is striped over every stream (several TCP flows for a link one flow
 * cannot fill) and the receiver knows where each frame comes from without numbering them.
 * A frame goes out with sendmsg (header and payload in one call) and may take several steps;
 * each stream has one frame in flight. A receive reads the header first and, for a plain copy
 * whose header checks out, the payload straight into the destination (else into a staging
 * buffer to reduce from). Waits sleep in poll() on the data sockets. Chunks of floating-point data to a peer behind a
 * slow link may go compressed (HM_WIRE_FLAG_ZIP): compress_link.c decides and codes them.
 * Not here: sockets and frames in general (net.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "comm/transport/transport.h"
#include "util/util.h"

static hm_status tcp_connect(hm_comm_t c, int r, const hm_rank_info *mine, const hm_rank_info *peer,
                             uint32_t *ready_aux) {
  (void)mine;
  (void)peer;
  hm_peer *p = &c->peers[r];
  *ready_aux = 0;
  for (int k = 0; k < p->ndata; k++) hm_net_tune(p->data_fd[k], 1);
  p->tcp.rx_buf = hm_malloc(c->tcp_chunk, "tcp receive staging");
  return p->tcp.rx_buf ? HM_OK : HM_ERR_NOMEM;
}

static void tcp_close(hm_comm_t c, int r) {
  hm_zip_peer_free(c, r);
  free(c->peers[r].tcp.rx_buf);
  c->peers[r].tcp.rx_buf = NULL;
}

static void tcp_link(hm_link *out) { *out = (hm_link){3e9, 25e-6, 6e9, 0}; }

/* Whether a frame to rank r is still being written (its payload must stay valid). */
static int tcp_tx_busy(const hm_peer *p) {
  for (int k = 0; k < p->ndata; k++)
    if (p->tcp.tx[k].busy) return 1;
  return 0;
}

/* A send waits on the stream its next frame goes out on, or on one still writing a frame; a
 * receive on the stream its next frame comes from. None (0) where the transfer waits for
 * another one, not for its socket: a send with nothing to write yet (the data it forwards has
 * not arrived) and a receive holding a whole frame it may not reduce yet; watching those
 * sockets would wake the wait at once (an idle socket is writable, the next frame readable). */
static int tcp_poll_fd(hm_comm_t c, const hm_xfer *x, struct pollfd *pf) {
  const hm_peer *p = &c->peers[x->peer];
  const hm_tcp_peer *t = &p->tcp;
  if (x->is_send && !tcp_tx_busy(p) && x->bytes > 0 && hm_xfer_send_limit(x) == x->done) return 0;
  if (!x->is_send && t->rx_off >= HM_WIRE_HDR_BYTES && t->rx_off == HM_WIRE_HDR_BYTES + t->rx_h.len) return 0;
  int k = x->is_send ? p->tcp.tx_next : p->tcp.rx_next;
  for (int i = 0; x->is_send && i < p->ndata && !p->tcp.tx[k].busy; i++) k = (p->tcp.tx_next + i) % p->ndata;
  *pf = (struct pollfd){p->data_fd[k], (short)(x->is_send ? POLLOUT : POLLIN), 0};
  return 1;
}

/* Writes what stream k's socket takes of the frame it is sending to rank r. */
static hm_status tcp_flush_stream(hm_comm_t c, int r, int k) {
  hm_peer *p = &c->peers[r];
  hm_tcp_tx *t = &p->tcp.tx[k];
  while (t->busy) {
    struct iovec iov[2];
    int n = 0;
    if (t->off < HM_WIRE_HDR_BYTES) iov[n++] = (struct iovec){t->hdr + t->off, HM_WIRE_HDR_BYTES - t->off};
    size_t doff = t->off > HM_WIRE_HDR_BYTES ? t->off - HM_WIRE_HDR_BYTES : 0;
    if (t->len > HM_WIRE_HDR_BYTES)
      iov[n++] = (struct iovec){(void *)(t->data + doff), t->len - HM_WIRE_HDR_BYTES - doff};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = (size_t)n;
    ssize_t w = sendmsg(p->data_fd[k], &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return HM_OK;
      if (errno == EPIPE || errno == ECONNRESET) return hm_comm_peer_gone(c, r, "reset its data connection");
      hm_error(HM_ERR_IO, "rank %d: send to rank %d (stream %d): %s", c->rank, r, k, strerror(errno));
      return hm_comm_fail(c, HM_ERR_IO, 1);
    }
    t->off += (size_t)w;
    if (t->off == t->len) t->busy = 0;
  }
  return HM_OK;
}

/* Writes what the sockets take of the frames being sent to rank r. */
static hm_status tcp_flush(hm_comm_t c, int r) {
  for (int k = 0; k < c->peers[r].ndata; k++) HM_TRY(tcp_flush_stream(c, r, k));
  return HM_OK;
}

static hm_status tcp_send_step(const hm_xctx *cx, const hm_xfer *all, int n_all, hm_xfer *x, int *progress) {
  (void)all;
  (void)n_all;
  hm_comm_t c = cx->comm;
  hm_peer *p = &c->peers[x->peer];
  hm_tcp_peer *t = &p->tcp;
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      if (!tcp_tx_busy(p)) x->finished = 1;
      return HM_OK;
    }
    size_t n = hm_xfer_send_limit(x) - x->done;
    if (n == 0 && x->bytes > 0) return HM_OK; /* waiting for the data it forwards */
    const int k = t->tx_next;
    hm_tcp_tx *s = &t->tx[k];
    if (s->busy) return HM_OK;
    if (n > c->tcp_chunk) n = c->tcp_chunk;
    const char *payload;
    uint32_t len;
    uint16_t flags;
    HM_TRY(hm_zip_tx(c, x->peer, k, x->desc, x->bytes, x->src + x->done, (uint32_t)n, &payload, &len, &flags));
    hm_wire_hdr h;
    hm_wire_make_header(&h, HM_WIRE_DATA, x->seq, len, x->desc, 0);
    h.flags = flags;
    hm_wire_encode_header(&h, s->hdr);
    s->data = payload;
    s->len = HM_WIRE_HDR_BYTES + len;
    s->off = 0;
    s->busy = 1;
    t->tx_next = (k + 1) % p->ndata;
    HM_TRY(tcp_flush_stream(c, x->peer, k));
    x->done += n;
    x->nchunks++;
    *progress = 1;
  }
}

/* Checks a data frame's header as it completes. */
static hm_status check_header(hm_comm_t c, int r, hm_tcp_peer *t) {
  hm_status st = hm_wire_decode_header(t->rx_hdr, HM_WIRE_HDR_BYTES, &t->rx_h);
  if (st == HM_OK && (t->rx_h.type != HM_WIRE_DATA || t->rx_h.len > c->tcp_chunk))
    st = hm_error(HM_ERR_PROTOCOL, "frame type %u with %u bytes where a data chunk of at most %u was due",
                  (unsigned)t->rx_h.type, (unsigned)t->rx_h.len, c->tcp_chunk);
  if (st == HM_OK) return HM_OK;
  hm_error_context(HM_ERR_PROTOCOL, "rank %d: data from rank %d: ", c->rank, r);
  return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
}

/* Reads toward one complete frame: the header into rx_hdr (decoded into rx_h), then the payload
 * into `payload` (the staging buffer, or the destination itself for plain copies). *ready when
 * the whole frame is there; *have_hdr once the header is. */
static hm_status tcp_fill(hm_comm_t c, int r, char *payload, int *have_hdr, int *ready) {
  hm_peer *p = &c->peers[r];
  hm_tcp_peer *t = &p->tcp;
  for (;;) {
    *have_hdr = t->rx_off >= HM_WIRE_HDR_BYTES;
    *ready = *have_hdr && t->rx_off == HM_WIRE_HDR_BYTES + t->rx_h.len;
    if (*ready || (*have_hdr && !payload)) return HM_OK;
    char *dst;
    size_t want;
    if (!*have_hdr) {
      dst = (char *)t->rx_hdr + t->rx_off;
      want = HM_WIRE_HDR_BYTES - t->rx_off;
    } else {
      dst = payload + (t->rx_off - HM_WIRE_HDR_BYTES);
      want = HM_WIRE_HDR_BYTES + t->rx_h.len - t->rx_off;
    }
    ssize_t got = recv(p->data_fd[t->rx_next], dst, want, MSG_DONTWAIT);
    if (got == 0) return hm_comm_peer_gone(c, r, "closed its data connection");
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return HM_OK;
      if (errno == ECONNRESET) return hm_comm_peer_gone(c, r, "reset its data connection");
      hm_error(HM_ERR_IO, "rank %d: receive from rank %d (stream %d): %s", c->rank, r, t->rx_next, strerror(errno));
      return hm_comm_fail(c, HM_ERR_IO, 1);
    }
    t->rx_off += (size_t)got;
    if (t->rx_off == HM_WIRE_HDR_BYTES) HM_TRY(check_header(c, r, t));
  }
}

static hm_status tcp_recv_step(const hm_xctx *cx, const hm_xfer *all, int n_all, hm_xfer *x, int *progress) {
  (void)all;
  (void)n_all;
  hm_comm_t c = cx->comm;
  hm_tcp_peer *t = &c->peers[x->peer].tcp;
  const size_t es = hm_dtype_size(cx->dt);
  for (;;) {
    if (x->done == x->bytes && x->nchunks > 0) {
      x->finished = 1;
      return HM_OK;
    }
    int have_hdr, ready;
    HM_TRY(tcp_fill(c, x->peer, NULL, &have_hdr, &ready));
    if (!have_hdr) return HM_OK;
    const uint32_t seq = t->rx_h.seq;
    const uint64_t desc = t->rx_h.desc;
    const int zip = (t->rx_h.flags & HM_WIRE_FLAG_ZIP) != 0;
    uint32_t len = t->rx_h.len; /* bytes of the chunk: for a compressed frame, what it decodes to */
    /* plain copies land straight in the destination once the header checked out */
    const int direct = !zip && x->mode == HM_X_COPY && !x->avail && seq == x->seq && desc == x->desc &&
                       len <= x->bytes - x->done;
    char *data = direct ? x->dst + x->done : t->rx_buf;
    if (zip) HM_TRY(hm_zip_rx_buffer(c, x->peer, &data));
    HM_TRY(tcp_fill(c, x->peer, data, &have_hdr, &ready));
    if (!ready) return HM_OK;
    hm_zip_frame zf;
    if (zip) HM_TRY(hm_zip_rx_parse(c, x->peer, data, t->rx_h.len, &zf));
    if (zip) len = zf.raw_len;
    HM_TRY(hm_xfer_check_chunk(cx, x, seq, desc, len, es));
    if (x->avail && *x->avail < x->done + len) return HM_OK; /* operand not reduced yet */
    if (zip) { /* a copy decodes straight into the destination */
      char *out = x->mode == HM_X_COPY ? x->dst + x->done : t->rx_buf;
      HM_TRY(hm_zip_rx_decode(c, x->peer, &zf, out));
      if (out == t->rx_buf) hm_xfer_deliver(cx, x, t->rx_buf, len, es);
    } else if (len && !direct)
      hm_xfer_deliver(cx, x, data, len, es);
    t->rx_off = 0;
    t->rx_next = (t->rx_next + 1) % c->peers[x->peer].ndata;
    x->done += len;
    x->nchunks++;
    *progress = 1;
  }
}

const hm_transport hm_transport_tcp = {
    .name = "tcp",
    .caps = HM_TP_POLL,
    .data_conns = 1,
    .connect = tcp_connect,
    .send_step = tcp_send_step,
    .recv_step = tcp_recv_step,
    .progress = tcp_flush,
    .poll_fd = tcp_poll_fd,
    .close = tcp_close,
    .link = tcp_link,
};
