/* The transport interface of hmcomm: how the transfer engine (engine.c) moves the chunks of a
 * transfer (hm_xfer) to or from one peer. Each pair of ranks talks through one transport, chosen
 * at bootstrap from the shared rank table (hm_transport_select), so both ends pick alike; the
 * engine then calls the peer's table (hm_peer.tp) and never asks which transport it is.
 *
 *   transport/shm.c  shared-memory slot rings: fused forwarding, interleaved streams, single copy
 *                    (process_vm_readv), streaming stores
 *   transport/tcp.c  framed chunks over the pair's data socket (nonblocking, sendmsg)
 *
 * Adding a transport (a vendor collective library's point-to-point path, say): write a table,
 * give hm_peer the per-peer state it needs, teach hm_transport_select when a pair uses it, and
 * publish what a peer must know about this rank in hm_rank_info. docs/comm.md has the steps.
 *
 * Device buffers do not reach the transports: device_staging.c stages them through pinned host
 * slots above the collective algorithms, so every hm_xfer src/dst pointer is host memory. A
 * transport that can move device memory itself (GPU-direct RDMA, a vendor library) would
 * instead wrap or replace a table here, at hm_peer.tp, and tell the staging layer to pass its
 * device pointers through. */
#ifndef HETMIX_COMM_TRANSPORT_H
#define HETMIX_COMM_TRANSPORT_H

#include <poll.h>
#include <string.h>

#include "comm/comm_internal.h"

enum {
  HM_TP_LOCAL = 1u << 0,   /* the peer runs on this host's cores: waits spin and yield with it */
  HM_TP_STREAMS = 1u << 1, /* chunks of one operation's streams may interleave on the channel */
  HM_TP_POLL = 1u << 2,    /* waits sleep in poll() on poll_fd instead of spinning */
};

typedef struct hm_transport {
  const char *name;
  unsigned caps;  /* HM_TP_* */
  int data_conns; /* 1: the mesh opens authenticated data sockets per pair (hm_peer.data_fd, as many
                     as hm_peer.ndata: the pair's stream count); 0: none */
  /* After the mesh is up: set up the channel with peer r (map its segment, allocate staging).
   * *ready_aux is what this rank tells r in its READY frame. */
  hm_status (*connect)(hm_comm_t c, int r, const hm_rank_info *mine, const hm_rank_info *peer,
                       uint32_t *ready_aux);
  /* Takes r's READY aux (optional). */
  void (*ready)(hm_comm_t c, int r, uint32_t peer_aux);
  /* Move what can move now of transfer x (one of all[0..n)): as many chunks as the channel and
   * x->avail allow, without waiting; *progress = 1 when something moved, x->finished once done.
   * Errors go through hm_comm_fail (the communicator is broken). */
  hm_status (*send_step)(const hm_xctx *cx, const hm_xfer *all, int n, hm_xfer *x, int *progress);
  hm_status (*recv_step)(const hm_xctx *cx, const hm_xfer *all, int n, hm_xfer *x, int *progress);
  /* Optional: pushes what is already queued toward peer r (a half-written frame); the engine
   * calls it before each send step. */
  hm_status (*progress)(hm_comm_t c, int r);
  /* Optional (HM_TP_POLL): fills *pf with the descriptor a wait on x sleeps on; returns 1. */
  int (*poll_fd)(hm_comm_t c, const hm_xfer *x, struct pollfd *pf);
  /* Releases what connect set up with r (the mesh closes the sockets). */
  void (*close)(hm_comm_t c, int r);
  /* The figures the tuner uses for a pair on this transport. */
  void (*link)(hm_link *out);
} hm_transport;

extern const hm_transport hm_transport_shm;
extern const hm_transport hm_transport_tcp;

/* The transport of the pair (a, b), from their bootstrap records (both ranks compute the same). */
const hm_transport *hm_transport_select(const hm_rank_info *a, const hm_rank_info *b);
/* The tuner's figures for a job: those of the slowest transport any pair of it uses. */
void hm_transport_job_link(const hm_rank_info *info, int n, hm_link *out);

/* ---- helpers of the engine for the transports (engine.c) ---- */
/* Fails the communicator: chunk (seq, desc, len) is not what x expects. */
hm_status hm_xfer_bad_chunk(const hm_xctx *cx, const hm_xfer *x, uint32_t seq, uint64_t desc, uint32_t len);

/* Checks an incoming chunk's call (seq, desc) and length against receive x. */
static inline hm_status hm_xfer_check_chunk(const hm_xctx *cx, const hm_xfer *x, uint32_t seq, uint64_t desc,
                                            uint32_t len, size_t es) {
  size_t left = x->bytes - x->done;
  if (seq != x->seq || desc != x->desc || len > left || (left > 0 && len == 0) || (es > 1 && len % es))
    return hm_xfer_bad_chunk(cx, x, seq, desc, len);
  return HM_OK;
}

/* Bytes of send x that may go: all of them, or what its dependency has made ready. */
static inline size_t hm_xfer_send_limit(const hm_xfer *x) {
  if (!x->avail) return x->bytes;
  size_t a = *x->avail;
  return a < x->bytes ? a : x->bytes;
}

/* Whether x may move now: its predecessor on the channel finished and its gate is open. */
static inline int hm_xfer_may_move(const hm_xfer *all, const hm_xfer *x) {
  return !(x->after >= 0 && !all[x->after].finished) && !(x->gate && !*x->gate);
}

/* Writes the next len bytes of receive x from data: reduce with the operand, or copy (with
 * streaming stores when the destination is large and not forwarded). */
static inline void hm_xfer_deliver(const hm_xctx *cx, hm_xfer *x, const char *data, size_t len, size_t es) {
  if (x->mode == HM_X_REDUCE)
    hm_reduce(x->dst + x->done, x->src + x->done, data, len / es, cx->dt, cx->op, x->final_div);
  else if (x->bytes >= HM_STREAM_MIN_BYTES && !x->fwd)
    hm_copy_stream(x->dst + x->done, data, len);
  else
    memcpy(x->dst + x->done, data, len);
}

#endif
