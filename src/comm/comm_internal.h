/* hmcomm internals shared by the files of src/comm: sockets and frames, authentication, the
 * rendezvous store, shared-memory rings, the transfer engine, reduction kernels and the
 * communicator itself. Not a public header (include/hetmix/comm.h is the API). */
#ifndef HETMIX_COMM_INTERNAL_H
#define HETMIX_COMM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "comm/compress.h"
#include "comm/device_staging.h"
#include "comm/wire.h"
#include "hetmix/comm.h"
#include "hetmix/cost.h"

#define HM_SECRET_BYTES 32

/* ---- logging (net.c): diagnostics only; errors travel as hm_status ---- */
enum { HM_LOG_ERROR = 0, HM_LOG_WARN = 1, HM_LOG_INFO = 2, HM_LOG_DEBUG = 3 };
void hm_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- sockets and frames (net.c) ---- */
int hm_net_timeleft_ms(uint64_t deadline_ns);
hm_status hm_net_listen(const char *addr, int port, int *fd, int *bound_port);
hm_status hm_net_connect(const char *host, int port, uint64_t deadline_ns, int *fd);
hm_status hm_net_accept(int lfd, uint64_t deadline_ns, int *fd, char *peer, size_t peer_cap);
void hm_net_tune(int fd, int bulk);
hm_status hm_net_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns);
hm_status hm_net_read_all(int fd, void *buf, size_t n, uint64_t deadline_ns);
/* Sends header + payload; reads one frame (payload into buf of cap bytes, length in hdr.len). */
hm_status hm_net_send_frame(int fd, int type, uint32_t seq, uint64_t desc, uint32_t aux,
                            const void *payload, uint32_t len, uint64_t deadline_ns);
hm_status hm_net_recv_frame(int fd, hm_wire_hdr *h, void *buf, size_t cap, uint64_t deadline_ns);
/* A frame read piece by piece from a nonblocking socket. step reads what is there: 1 when the
 * whole frame is in (h, payload; reset before the next), 0 when more is needed, -1 when the
 * peer closed, -2 on an error, a bad header or a payload over limit (message in hm_last_error()). */
typedef struct hm_frame_rx {
  unsigned char hdr[HM_WIRE_HDR_BYTES];
  hm_wire_hdr h;
  size_t off;
  unsigned char *payload;
} hm_frame_rx;
int hm_net_frame_rx_step(int fd, hm_frame_rx *rx, size_t limit);
void hm_net_frame_rx_reset(hm_frame_rx *rx);
void hm_net_frame_rx_free(hm_frame_rx *rx);
void hm_net_peer_name(int fd, char *buf, size_t cap);
void hm_random_bytes(void *buf, size_t n);

/* ---- authentication (auth.c): HMAC-SHA256 challenge-response, both directions ---- */
hm_status hm_auth_connect(int fd, const unsigned char tag[HM_WIRE_TAG_BYTES],
                          const unsigned char secret[HM_SECRET_BYTES], int rank, int purpose,
                          uint64_t deadline_ns);
/* Acceptor side as a state machine driven by the caller's poll loop, one complete frame at a
 * time, so that many handshakes proceed at once and a silent or slow peer delays nobody.
 * lookup returns the secret for a hello (NULL: refused, *why says why). */
typedef const unsigned char *(*hm_secret_lookup_fn)(const hm_wire_hello *hello, void *arg, const char **why);
enum { HM_AUTH_HELLO = 0, HM_AUTH_RESPONSE, HM_AUTH_DONE };
typedef struct hm_auth_pending {
  int state;             /* HM_AUTH_*; DONE: the peer proved the secret, hello says who it is */
  hm_wire_hello hello;
  unsigned char hello_bytes[HM_WIRE_HELLO_BYTES];
  unsigned char nonce[HM_WIRE_NONCE_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
} hm_auth_pending;
/* Feeds frame (h, payload) of the connection on fd and sends the reply (challenge, AUTH_OK).
 * An error status (message set) means the peer did not authenticate: drop it. */
hm_status hm_auth_accept_step(int fd, hm_auth_pending *a, const hm_wire_hdr *h, const unsigned char *payload,
                              hm_secret_lookup_fn lookup, void *arg);

/* The mesh acceptor (mesh_accept.c): accepts and authenticates connections on lfd for job
 * (tag, secret) until `expected` of them were taken, or the deadline. take(arg, hello, fd, who)
 * gets each authenticated one and returns 1 when it keeps fd, 0 when it refuses it (closed). */
typedef int (*hm_mesh_take_fn)(void *arg, const hm_wire_hello *hello, int fd, const char *who);
hm_status hm_mesh_accept(int lfd, const unsigned char *tag, const unsigned char *secret, int me, int expected,
                         hm_mesh_take_fn take, void *arg, uint64_t deadline_ns);

/* ---- rendezvous store (store.c) ---- */
typedef struct hm_store_server hm_store_server;
/* Starts a server thread on addr:port (port 0: ephemeral), serving job (tag, secret) if given. */
hm_status hm_store_server_start(const char *addr, int port, const unsigned char *tag,
                                const unsigned char *secret, hm_store_server **out, int *bound_port);
hm_status hm_store_server_add_job(hm_store_server *s, const unsigned char tag[HM_WIRE_TAG_BYTES],
                                  const unsigned char secret[HM_SECRET_BYTES]);
void hm_store_server_stop(hm_store_server *s);
/* The process-wide server hm_get_unique_id uses (started on first use). */
hm_status hm_store_global(hm_store_server **out, char *host, size_t host_cap, int *port);

typedef struct hm_store_client {
  int fd;
  uint64_t deadline_ns;
} hm_store_client;
hm_status hm_store_connect(hm_store_client *c, const char *host, int port,
                           const unsigned char tag[HM_WIRE_TAG_BYTES],
                           const unsigned char secret[HM_SECRET_BYTES], int rank,
                           uint64_t deadline_ns);
hm_status hm_store_set(hm_store_client *c, const char *key, const void *val, size_t len);
/* Waits (until the client's deadline) for key to exist; *len in: cap, out: value length. */
hm_status hm_store_get(hm_store_client *c, const char *key, void *val, size_t *len);
void hm_store_close(hm_store_client *c);

/* ---- reduction kernels (reduce.c) ---- */
/* dst[i] = a[i] op b[i] for count elements; final_div > 0 divides the result by it (HM_AVG). */
void hm_reduce(void *dst, const void *a, const void *b, size_t count, hm_dtype dt, hm_redop op,
               int final_div);
/* memcpy with streaming stores (the destination is not cached); fenced before it returns. */
void hm_copy_stream(void *dst, const void *src, size_t n);
/* Transfers from this size write their destination with streaming stores when nothing reads it
 * back soon (the data is far beyond the caches' share of one operation). */
#define HM_STREAM_MIN_BYTES (2u << 20)

/* ---- shared-memory segments and rings (transport/shm.c) ---- */
/* One single-producer single-consumer ring of slots, living in the consumer's segment. */
typedef struct hm_shm_slot {
  _Atomic uint64_t stamp; /* chunk number + 1, stored last (release) by the producer */
  uint32_t len;
  uint32_t seq;
  uint64_t desc;
  uint32_t kind;  /* HM_SLOT_DATA: payload holds the bytes; HM_SLOT_CMA: payload holds the
                     sender's address of `len` bytes, read with process_vm_readv */
  uint32_t stream; /* the transfer of the operation it belongs to (hm_xfer.stream; 0: in order) */
} hm_shm_slot; /* payload follows at +32 */
enum { HM_SLOT_DATA = 0, HM_SLOT_CMA = 1 };
#define HM_CMA_MIN_BYTES (256u << 10) /* transfers from this size may go single-copy */
#define HM_CMA_MAX_DESC (1u << 20)    /* bytes one descriptor covers at most */
typedef struct hm_shm_ring_ctl {
  _Atomic uint64_t consumed;  /* chunks the consumer released */
  _Atomic uint64_t cma_bytes; /* bytes the consumer has read out of the producer (single copy) */
  char pad[48];
} hm_shm_ring_ctl;

/* First 64 bytes of every segment: the owner sleeps on `seq` (futex) when it has waited a while;
 * peers that publish into or free space in its rings bump `seq` and wake it if it sleeps. An
 * owner that also waits on sockets (a set with shared-memory and TCP transfers) sleeps in poll()
 * instead, with its doorbell socket among the descriptors (`pollers`): peers then send that
 * socket a datagram, so both kinds of arrival end the sleep. */
typedef struct hm_shm_bell {
  _Atomic uint32_t seq;
  _Atomic uint32_t sleepers;
  _Atomic uint32_t pollers;
  char pad[52];
} hm_shm_bell;
#define HM_SHM_HDR_BYTES 64
struct hm_peer;
/* Wakes peer q if it sleeps on its doorbell (futex or socket); after publishing or freeing. */
void hm_shm_bell_ring(hm_comm_t c, struct hm_peer *q);
/* Our doorbell socket: a datagram socket bound to an abstract name made from the segment's
 * (ranks of one host share its network namespace, so the peers reach it); c->bell_fd stays -1
 * where none can be made, and waits then fall back to poll()'s timeout. */
void hm_shm_bell_socket(hm_comm_t c, const char *shm_name);
/* The abstract address of the doorbell socket of the rank whose segment is shm_name. */
socklen_t hm_shm_bell_addr(const char *shm_name, struct sockaddr_un *sa);
/* Sleeps until seq != seen or timeout_us passed. */
void hm_shm_bell_wait(hm_shm_bell *b, uint32_t seen, int timeout_us);

typedef struct hm_shm_chan {
  hm_shm_ring_ctl *ctl;
  char *slots;
  uint32_t nslots, stride, payload;
  uint64_t count;  /* producer: chunks published; consumer: chunks released */
  uint64_t seen_consumed;
  uint64_t cma_posted;  /* producer: bytes described to the consumer so far */
} hm_shm_chan;

hm_status hm_shm_segment_create(const char *name, size_t bytes, void **base);
/* Unlinks this user's /dev/shm/hetmix-* segments whose creating pid is gone and that are at
 * least min_age_s old (leftovers of a rank killed during bootstrap); returns how many. The
 * first hm_shm_segment_create of a process runs it with 10 minutes. */
int hm_shm_sweep_stale(int min_age_s);
size_t hm_shm_ring_bytes(uint32_t nslots, uint32_t payload);
/* Same-host peers read it with process_vm_readv at bootstrap to learn whether single copy works. */
extern const uint64_t hm_shm_cma_probe;

/* The shared-memory channel with one peer (transport/shm.c). */
typedef struct hm_shm_peer {
  hm_shm_chan tx, rx;  /* we produce into the peer's segment, consume ours */
  int peer_reads_me;   /* the peer can process_vm_readv from this process (probed at bootstrap) */
  hm_shm_bell *bell;   /* the peer's doorbell (in its segment) */
  struct sockaddr_un bell_addr; /* the peer's doorbell socket */
  socklen_t bell_len;
  void *seg;           /* the peer's segment, mapped */
  size_t seg_bytes;
} hm_shm_peer;
/* The TCP data channel with one peer (transport/tcp.c): one or more data connections (streams,
 * HETMIX_TCP_STREAMS). Frame k to a peer goes on stream k mod nstreams and frame k from it is
 * read from the same stream, so the frames of a transfer are striped over every stream and both
 * ends agree without numbering them. Each stream has its own frame being sent; frames are read
 * one at a time, from the stream the next one is due on (the others' arrive meanwhile in their
 * socket buffers). */
#define HM_TCP_MAX_STREAMS HM_ZIP_TX_SLOTS
typedef struct hm_tcp_tx {
  unsigned char hdr[HM_WIRE_HDR_BYTES];
  const char *data;
  size_t len, off; /* bytes of header+payload written */
  int busy;
} hm_tcp_tx;
typedef struct hm_tcp_peer {
  hm_tcp_tx tx[HM_TCP_MAX_STREAMS];
  int tx_next, rx_next;   /* streams the next frame goes out on / comes in from */
  unsigned char rx_hdr[HM_WIRE_HDR_BYTES];
  size_t rx_off;          /* header+payload bytes read */
  hm_wire_hdr rx_h;
  char *rx_buf;           /* staging for one chunk */
} hm_tcp_peer;

/* What a rank tells the others at bootstrap (same build on every rank: raw struct bytes,
 * checked by magic and size); the transports read what they need of it at connect. */
typedef struct hm_rank_info {
  uint32_t magic, size;
  uint64_t host_key;     /* machine + network namespace (topology.c) */
  uint64_t machine_key;  /* hostname + boot id: ranks sharing cores and memory */
  double pool_link[3], cross_link[3]; /* HETMIX_LINK_POOL / _CROSS: bytes/s, s, burst bytes (0: not given) */
  char pool[64];         /* HETMIX_POOL ("" : one pool) */
  int32_t pid, port, nranks, shm_payload, shm_slots, has_shm;
  uint64_t cma_probe;  /* address of hm_shm_cma_probe in this process */
  char addr[64];
  char shm_name[64];
  char transport[8];
  int32_t tcp_streams; /* HETMIX_TCP_STREAMS: a TCP pair opens the smaller of its two ranks' */
} hm_rank_info;

/* ---- topology (topology.c): hosts and pools of the ranks, the same on every rank ---- */
typedef struct hm_topo {
  int nhosts, npools;
  int *host_of, *pool_of; /* per rank: host and pool index (numbered in order of first rank) */
  int regular;            /* 2+ pools of equal size: hierarchy usable */
  int per_pool;           /* ranks per pool (regular) */
  int per_host;           /* most ranks on one host: they share its link across pools */
  int *members;           /* regular: members[p * per_pool + i], the pools' ranks in rank order */
  int me_pool, me_index;  /* this rank's pool and place in it */
  int measured;           /* link figures came from the environment (a profile or cluster file) */
  hm_link pool_link, cross_link; /* the tuner's figures: inside a pool, between pools */
} hm_topo;
/* Fills me's machine and host keys, pool and link figures from the environment. */
hm_status hm_topo_local(hm_rank_info *me);
hm_status hm_topo_build(hm_topo *t, const hm_rank_info *info, int n, int me);
void hm_topo_free(hm_topo *t);
/* Sets each peer's link_bw (the compression decision's link figure) from rank 0's environment
 * figures: a peer of another pool gets the cross link's bandwidth, one of this pool on another
 * host the pool link's; a peer on this host, or a class without a figure, keeps 0 (unknown). */
struct hm_peer;
void hm_topo_peer_links(const hm_topo *t, const hm_rank_info *info, int n, int me, struct hm_peer *peers);
/* How many ranks of the table share rank me's machine (cores), whatever their host. */
int hm_topo_same_machine(const hm_rank_info *info, int n, int me);

/* ---- communicator ---- */
typedef struct hm_peer {
  const struct hm_transport *tp; /* chosen at bootstrap (transport/transport.h); NULL for self */
  int left;         /* sent BYE: its queued data may still be read, nothing more comes */
  int ctrl_fd;      /* authenticated control connection (death detection, error notices) */
  int data_fd[HM_TCP_MAX_STREAMS]; /* data connections of a transport that wants them
                                       (tp->data_conns): ndata of them, the rest -1 */
  int ndata;
  int pid;
  hm_shm_peer shm;
  hm_tcp_peer tcp;
  double link_bw;   /* bytes/s of the link to this peer, 0 when unknown: the host/pool topology sets
                       it; it decides whether chunks to it may be compressed (compress.h) */
  hm_zip_peer *zip; /* compression state for this peer (compress_link.c), made on first use */
  uint32_t send_p2p_seq, recv_p2p_seq;
} hm_peer;

typedef struct hm_request hm_op; /* a queued operation; also what a request points to */

/* Tuning knobs read from the environment at init (HETMIX_TIMEOUT_MS, ...; docs/comm.md). */
typedef struct hm_env_knobs {
  long timeout_ms, heartbeat_ms, peer_dead_ms, shm_chunk, tcp_chunk, cma;
  long compress_always, compress_below, link_bw, tcp_streams;
  long shm_slots, spin_us, yield_us, spin_small_us; /* -1: unset, the default depends on the layout */
} hm_env_knobs;

struct hm_comm {
  int rank, nranks;
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
  hm_comm_config cfg;
  char transport[8], algorithm[8], listen_addr[64], name[64], compress[8];
  hm_zip_conf zip;  /* compression of chunks on slow TCP links (compress.h) */
  int forced_algo;  /* -1 auto */
  _Atomic uint64_t allreduce_runs[HM_ALGO_COUNT]; /* allreduces run per algorithm (tests read it) */
  hm_peer *peers;
  void *shm_base;   /* our segment (doorbell, inbound rings) */
  hm_shm_bell *bell; /* our doorbell */
  int bell_armed;    /* this rank announced it may sleep on the bell */
  int bell_fd;       /* our doorbell socket (bound), -1: none */
  int poll_armed;    /* this rank announced it may sleep in poll() on bell_fd */
  uint64_t spin_ns;  /* how long a wait spins before it yields */
  uint64_t yield_ns; /* ... and until when it yields before it sleeps */
  uint64_t spin_small_ns; /* spin of operations under 1 MiB */
  uint32_t bell_seen;
  size_t shm_bytes;
  uint32_t shm_chunk, tcp_chunk;
  hm_env_knobs env; /* the environment's tuning knobs, checked at init */
  hm_link link;     /* figures the tuner uses: constants every rank agrees on */
  hm_topo topo;     /* hosts and pools (topology.c) */
  uint32_t coll_seq;
  _Atomic int aborted;
  _Atomic int broken;   /* hm_status that broke the communicator */
  char broken_msg[512];
  pthread_mutex_t err_mu;
  char *scratch;
  char *cma_tmp;     /* staging for reductions out of single-copy reads */
  size_t scratch_bytes;
  int split_count;
  /* progress thread and queue of nonblocking operations */
  pthread_mutex_t q_mu;
  pthread_cond_t q_cv;
  hm_op *q_head, *q_tail;
  _Atomic int q_pending;
  int q_thread_started, q_stop;
  pthread_t q_thread;
  int listen_fd;
  /* liveness: a thread sends heartbeats on the control connections; waits check last_heard */
  pthread_mutex_t ctrl_mu;   /* serializes writes to control connections */
  pthread_mutex_t hb_mu;
  pthread_cond_t hb_cv;
  pthread_t hb_thread;
  int hb_started, hb_stop;
  uint64_t *last_heard;      /* per peer, hm_now_ns() of the last control frame read */
  uint64_t op_start_ns;
  hm_store_server *store; /* the rendezvous store this rank hosts (hm_comm_init_env rank 0) */
  hm_op *requests;        /* nonblocking requests not yet waited on (freed at destroy) */
  hm_op *self_pending[2]; /* unmatched nonblocking sends [1] / receives [0] to this rank itself */
  hm_devstage stage;      /* the registered device of this rank's buffers (device_staging.c) */
};

/* ---- transfer engine (engine.c) ---- */
enum { HM_X_COPY = 0, HM_X_REDUCE = 1 };
typedef struct hm_xfer {
  int peer;
  int is_send;
  int mode;            /* recv: HM_X_COPY or HM_X_REDUCE (dst = operand op incoming) */
  int final_div;       /* recv reduce: divide by this at the end (avg) */
  char *dst;           /* recv destination */
  const char *src;     /* send source; recv reduce operand */
  size_t bytes, done;
  const size_t *avail; /* progress bound: bytes [0, *avail) of the dependency are ready */
  const int *gate;     /* if set, nothing moves until *gate is nonzero (another xfer finished) */
  uint32_t seq;
  uint64_t desc;
  int finished;
  int cma_ok;          /* send: the receiver copies, so single copy (process_vm_readv) is worth it */
  uint64_t cma_until;  /* send: finished once the receiver has read this many CMA bytes */
  int nchunks;         /* chunks moved (a zero-byte transfer still moves one) */
  int after;           /* engine-internal: earlier xfer on the same channel */
  int told;            /* engine-internal: hm_xctx.finished was called for it */
  int stream;          /* 0: moves after earlier transfers on its channel (FIFO). k > 0: the
                          k-th stream of a collective; over shared memory its chunks carry k and
                          may interleave with the operation's other streams on the channel (the
                          receiver routes them), so a forward need not wait for a whole earlier
                          transfer. Both sides number matching transfers alike. */
  struct hm_xfer *fwd; /* recv: the send that forwards exactly what this receive writes (same
                          bytes, its src is this dst, gated by avail on this one): over shared
                          memory each chunk is then produced straight into that send's next
                          slot and copied to dst from there, so dst is never read back */
} hm_xfer;

typedef struct hm_xctx {
  hm_comm_t comm;
  hm_dtype dt;
  hm_redop op;
  /* optional: adds transfers (issued meanwhile) to a running set; returns the new count */
  int (*refill)(void *arg, hm_xfer *x, int n, int cap);
  void *refill_arg;
  int cap;
  /* optional: told once of each transfer that finished while others still run (index i) */
  void (*finished)(void *arg, int i);
  void *finished_arg;
  /* optional (with refill and finished): the engine dropped the reported transfers from a full
   * set, keeping the others' order; the owner drops the same entries (refill_arg) */
  void (*compact)(void *arg);
} hm_xctx;

void hm_xfer_send(hm_xfer *x, int peer, const void *src, size_t bytes, uint32_t seq, uint64_t desc);
void hm_xfer_recv(hm_xfer *x, int peer, void *dst, size_t bytes, uint32_t seq, uint64_t desc);
void hm_xfer_recv_reduce(hm_xfer *x, int peer, void *dst, const void *operand, size_t bytes,
                         uint32_t seq, uint64_t desc, int final_div);
/* Runs every transfer to completion (pipelined, any order the channels allow) or fails. All
 * xfers belong to ctx->comm. */
hm_status hm_xfer_run(const hm_xctx *ctx, hm_xfer *x, int n);
/* Marks the calling thread as a background (progress) thread: its waits sleep soon instead of
 * spinning and yielding, leaving the cores to the threads that compute. */
void hm_xfer_background(int on);

/* ---- liveness (liveness.c): error state, control connections, heartbeats ---- */
/* Checks the control connections (dead peers, error notices), abort and broken state. */
hm_status hm_comm_check_health(hm_comm_t c, int poll_ms);
/* The same, also polling nextra more descriptors (a transport's sockets) for up to poll_ms. */
struct pollfd;
hm_status hm_comm_health_poll(hm_comm_t c, struct pollfd *extra, int nextra, int poll_ms);
/* Fails the communicator with HM_ERR_PEER_DEAD: rank r's process is gone (`how` it showed). */
hm_status hm_comm_peer_gone(hm_comm_t c, int r, const char *how);
/* Marks the communicator broken with st (first error wins) and tells the peers. */
hm_status hm_comm_fail(hm_comm_t c, hm_status st, int notify);
/* Writes one frame on rank r's control connection (serialized with the heartbeat thread). */
hm_status hm_comm_ctrl_send(hm_comm_t c, int r, int type, uint32_t aux, const void *payload,
                            uint32_t len, int timeout_ms);
hm_status hm_comm_heartbeat_start(hm_comm_t c);
void hm_comm_heartbeat_stop(hm_comm_t c);

void hm_comm_free_requests(hm_comm_t c);         /* comm.c */
char *hm_comm_scratch(hm_comm_t c, size_t bytes); /* engine.c: the collectives' scratch buffer */

/* ---- collectives (coll.c) ---- */
typedef struct hm_coll_args {
  hm_coll_kind kind;
  const void *sendbuf;
  void *recvbuf;
  size_t count;  /* elements: allreduce/reduce/bcast total; rs recvcount; ag/gather/scatter per rank */
  hm_dtype dt;
  hm_redop op;
  int root;
  uint32_t seq;
  uint64_t desc;
} hm_coll_args;
hm_status hm_coll_execute(hm_comm_t c, const hm_coll_args *a);
hm_coll_algo hm_coll_choose(hm_comm_t c, hm_coll_kind kind, size_t bytes);
/* How many allreduces of more than one rank this communicator ran with algorithm a: lets a test
 * see which algorithm HETMIX_ALGO (or the tuner) actually picked. */
uint64_t hm_coll_allreduce_runs(hm_comm_t c, hm_coll_algo a);

#endif
