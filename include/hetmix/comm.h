/* hmcomm: hetmix's collective communication library.
 *
 * NCCL-shaped: a unique id (or the launcher's environment) bootstraps a communicator of
 * nranks processes; collectives, point-to-point and group calls then run over hmcomm's own
 * transports (shared memory inside a host, TCP between hosts). Buffers are host memory, or
 * device memory of a registered device (hm_comm_register_device); vendor-library adaptors come
 * later behind the same calls.
 *
 * Semantics follow NCCL where NCCL defines them:
 *  - Operations on one communicator execute in the order they were issued on that rank, and
 *    every rank must issue the same collectives in the same order (a mismatch is detected and
 *    reported as HM_ERR_MISMATCH, never silently computed).
 *  - In place: allreduce/reduce/broadcast/reduce_scatter/allgather/alltoall/gather/scatter are
 *    in place when sendbuf == recvbuf (reduce_scatter: sendbuf == recvbuf - rank*recvcount
 *    elements; allgather: sendbuf == recvbuf + rank*sendcount elements; gather/scatter: the
 *    root's own slot).
 *  - HM_AVG divides the sum by nranks (integers truncate, as NCCL's ncclAvg).
 *  - Every blocking wait has a deadline (hm_comm_config.timeout_ms); a dead peer is reported on
 *    every survivor as HM_ERR_PEER_DEAD naming its rank; hm_comm_abort() from any thread makes
 *    pending and future calls on the communicator return HM_ERR_ABORTED.
 * All calls return an hm_status; on failure hm_last_error() holds a message with context. */
#ifndef HETMIX_COMM_H
#define HETMIX_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/dtype.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hm_comm *hm_comm_t;
typedef struct hm_request *hm_request_t;

/* Opaque bootstrap handle made by one process and passed to all others out of band. */
#define HM_UNIQUE_ID_BYTES 128
typedef struct hm_unique_id {
  char internal[HM_UNIQUE_ID_BYTES];
} hm_unique_id;

typedef enum hm_redop { HM_SUM = 0, HM_PROD, HM_MIN, HM_MAX, HM_AVG, HM_REDOP_COUNT } hm_redop;

const char *hm_dtype_name(hm_dtype dt);  /* "f32", "bf16", ... */
const char *hm_redop_name(hm_redop op);  /* "sum", ... */

/* Per-communicator configuration. Zero / NULL fields take the default in brackets; the
 * HETMIX_* environment variable named beside a field overrides the default (not an explicit value). */
typedef struct hm_comm_config {
  int timeout_ms;           /* deadline of every blocking wait [30000]  HETMIX_TIMEOUT_MS */
  int heartbeat_ms;         /* liveness probe period [500]              HETMIX_HEARTBEAT_MS */
  int peer_dead_ms;         /* silence after which a peer is dead [3000] HETMIX_PEER_DEAD_MS */
  const char *transport;    /* "auto" | "shm" | "tcp" ["auto"]          HETMIX_TRANSPORT */
  const char *algorithm;    /* "auto" | "ring" | "rd" (recursive doubling) | "tree" ["auto"]
                               HETMIX_ALGO */
  const char *listen_addr;  /* address data sockets bind to ["127.0.0.1"] HETMIX_LISTEN_ADDR */
  const char *name;         /* label used in messages and traces [""] */
  const char *compress;     /* "auto" | "off" | "zstd" | "lz4": lossless compression of floating-point
                               chunks over TCP links slower than HETMIX_COMPRESS_BELOW where the cost
                               model says it pays ("auto": zstd, else lz4, if built in) ["auto"]
                               HETMIX_COMPRESS (docs/comm.md, "Compression") */
} hm_comm_config;

#define HM_COMM_CONFIG_INIT {0, 0, 0, NULL, NULL, NULL, NULL, NULL}

/* Rank 0 (or a launcher) creates the id: it starts the rendezvous store in this process,
 * listening on HETMIX_STORE_ADDR or loopback, and embeds a fresh random job secret. */
hm_status hm_get_unique_id(hm_unique_id *id);
/* Text form of an id for passing through files or environment variables. */
hm_status hm_unique_id_to_string(const hm_unique_id *id, char *buf, size_t cap);
hm_status hm_unique_id_from_string(hm_unique_id *id, const char *text);

hm_status hm_comm_init_rank(hm_comm_t *comm, int nranks, const hm_unique_id *id, int rank,
                            const hm_comm_config *cfg);

/* Where a process learned its place in the job. */
typedef struct hm_launch_env {
  int rank, size, local_rank, local_size;  /* local_* are -1 when unknown */
  char store_host[256];                    /* rendezvous host (rank 0's) */
  int store_port;
  const char *source;  /* "hetmix", "torchrun", "openmpi", "mpich", "slurm" */
} hm_launch_env;

/* Reads HETMIX_RANK/HETMIX_WORLD_SIZE/HETMIX_LOCAL_RANK/HETMIX_STORE_ADDR, else torchrun's
 * RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, else OMPI_COMM_WORLD_*, else PMI_*, else
 * SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_JOB_NODELIST (first host). */
hm_status hm_launch_env_read(hm_launch_env *env);

/* Bootstraps from hm_launch_env_read(): rank 0 hosts the store at store_host:store_port, the
 * others connect to it. The job secret comes from HETMIX_SECRET or the file HETMIX_SECRET_FILE. */
hm_status hm_comm_init_env(hm_comm_t *comm, const hm_comm_config *cfg);

#define HM_SPLIT_NOCOLOR (-1)
/* Collective over comm. Ranks with the same color form a new communicator, ordered by key
 * then old rank; HM_SPLIT_NOCOLOR gives *newcomm = NULL. cfg NULL inherits comm's. */
hm_status hm_comm_split(hm_comm_t comm, int color, int key, hm_comm_t *newcomm,
                        const hm_comm_config *cfg);

hm_status hm_comm_destroy(hm_comm_t comm);  /* waits (with deadline) for issued work */
hm_status hm_comm_abort(hm_comm_t comm);    /* safe from any thread; then destroy */
/* HM_OK while healthy; otherwise the error that broke the communicator (message in
 * hm_last_error()). Does not block. */
hm_status hm_comm_get_async_error(hm_comm_t comm, hm_status *async_error);
int hm_comm_rank(const hm_comm_t comm);
int hm_comm_size(const hm_comm_t comm);

/* Blocking collectives. count is in elements. */
hm_status hm_comm_allreduce(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                            hm_dtype dt, hm_redop op);
hm_status hm_comm_reduce(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                         hm_dtype dt, hm_redop op, int root);
hm_status hm_comm_broadcast(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                            hm_dtype dt, int root);
/* recvcount elements per rank; sendbuf holds nranks*recvcount. */
hm_status hm_comm_reduce_scatter(hm_comm_t comm, const void *sendbuf, void *recvbuf,
                                 size_t recvcount, hm_dtype dt, hm_redop op);
/* sendcount elements per rank; recvbuf holds nranks*sendcount. */
hm_status hm_comm_allgather(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t sendcount,
                            hm_dtype dt);
/* count elements to each peer; both buffers hold nranks*count. */
hm_status hm_comm_alltoall(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                           hm_dtype dt);
hm_status hm_comm_gather(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t sendcount,
                         hm_dtype dt, int root);
hm_status hm_comm_scatter(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t recvcount,
                          hm_dtype dt, int root);
hm_status hm_comm_barrier(hm_comm_t comm);

/* Device buffers. After hm_comm_register_device(comm, dev), the buffers this rank passes to
 * collectives and send/recv on comm are device addresses of dev (include/hetmix/device.h),
 * never dereferenced on the host: hmcomm moves them through a ring of pinned host slots, chunk
 * by chunk, the device copies overlapping the transfers (docs/comm.md). A host device (cpu,
 * ref) passes its pointers through in place. Every rank of comm that moves device buffers
 * registers its device, host devices included: all then cut large calls into the same chunks
 * (a rank that did not register takes the plain path and gets HM_ERR_MISMATCH on a call of
 * more than one chunk). On a non-host device, blocking calls outside groups and hm_comm_isend,
 * hm_comm_irecv and hm_comm_iallreduce (in groups too) take device buffers (HM_ERR_UNSUPPORTED
 * otherwise); a nonblocking call's device-side work (unmapping, or the host->device copies) is
 * done by hm_request_wait / hm_request_test in the caller's thread. dev NULL returns comm to
 * host buffers and frees the slots: do that, with no request in flight, before closing dev.
 * The device is used from the calling thread only. */
struct hm_device;
hm_status hm_comm_register_device(hm_comm_t comm, struct hm_device *dev);

/* Point to point. Between hm_group_start/hm_group_end, sends and receives (and collectives)
 * are issued together so that any pattern completes without deadlock. */
hm_status hm_comm_send(hm_comm_t comm, const void *buf, size_t count, hm_dtype dt, int peer);
hm_status hm_comm_recv(hm_comm_t comm, void *buf, size_t count, hm_dtype dt, int peer);
hm_status hm_group_start(void);
hm_status hm_group_end(void);

/* Nonblocking forms: same arguments, plus a request completed by test/wait. Buffers must stay
 * valid and untouched until completion. Every request must be waited on (or the communicator
 * destroyed or aborted). */
hm_status hm_comm_iallreduce(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                             hm_dtype dt, hm_redop op, hm_request_t *req);
hm_status hm_comm_ireduce_scatter(hm_comm_t comm, const void *sendbuf, void *recvbuf,
                                  size_t recvcount, hm_dtype dt, hm_redop op, hm_request_t *req);
hm_status hm_comm_iallgather(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t sendcount,
                             hm_dtype dt, hm_request_t *req);
hm_status hm_comm_ibroadcast(hm_comm_t comm, const void *sendbuf, void *recvbuf, size_t count,
                             hm_dtype dt, int root, hm_request_t *req);
hm_status hm_comm_isend(hm_comm_t comm, const void *buf, size_t count, hm_dtype dt, int peer,
                        hm_request_t *req);
hm_status hm_comm_irecv(hm_comm_t comm, void *buf, size_t count, hm_dtype dt, int peer,
                        hm_request_t *req);
/* *done = 1 when complete (the request is then freed and its status returned). */
hm_status hm_request_test(hm_request_t req, int *done);
/* Waits up to the communicator's timeout; frees the request. */
hm_status hm_request_wait(hm_request_t req);

/* Diagnostics (refused connections with the peer's address, dead peers, bootstrap steps) go
 * to this hook, level 0 error .. 3 debug; HETMIX_LOG=error|warn|info|debug also prints them to
 * stderr. Errors themselves are always returned as hm_status, never only logged. */
typedef void (*hm_comm_log_fn)(int level, const char *msg, void *arg);
void hm_comm_set_log_hook(hm_comm_log_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
