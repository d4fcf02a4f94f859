/* hmcomm's bridge to device memory (device_staging.c): the device a communicator's buffers
 * live on (hm_comm_register_device) and the ring of pinned host slots through which a staged
 * collective or send/receive moves, chunk by chunk, with the device copies overlapping the
 * transfers. It sits above the collective algorithms: each chunk is an ordinary host-memory
 * collective (or message) on the slots. Internal to src/comm. */
#ifndef HETMIX_COMM_DEVICE_STAGING_H
#define HETMIX_COMM_DEVICE_STAGING_H

#include <stddef.h>

#include "hetmix/comm.h"
#include "hetmix/cost.h"
#include "hetmix/device.h"

#define HM_STAGE_MAX_SLOTS 16
#define HM_STAGE_POOL 32 /* pinned host buffers of nonblocking staged calls (device_async.c) */

typedef struct hm_devstage {
  hm_device *dev;  /* NULL: buffers are host memory (the plain path, untouched) */
  int host;        /* the device's addresses are host pointers: chunks pass through in place */
  int map;         /* host-unified device: calls map the buffers and run in place (zero copy)
                      HETMIX_STAGE_MAP [1]; 0 stages through the slots */
  size_t chunk;    /* bytes of one slot side [1 MiB]  HETMIX_STAGE_CHUNK */
  int nslots;      /* slots in the ring [4]            HETMIX_STAGE_SLOTS */
  void *send[HM_STAGE_MAX_SLOTS], *recv[HM_STAGE_MAX_SLOTS]; /* pinned, made on first use */
  /* where allreduce sums run (device_reduce.c) */
  int site_mode;   /* HETMIX_REDUCE_SITE: -1 auto (cost model), HM_REDUCE_ON_HOST, HM_REDUCE_ON_DEVICE */
  double *table;   /* every rank's hm_device_xfer terms and device dtype, exchanged at the first
                      allreduce sum on device buffers (nranks x HM_DEVSTAGE_TERMS) */
  void *tmp;       /* device scratch: two chunks (incoming pieces; the probe's operands) */
  uint64_t dev_reductions; /* allreduce calls whose sums ran on the device (tests) */
  /* nonblocking staged calls: one pinned host buffer per request in flight, reused */
  void *pool[HM_STAGE_POOL];
  size_t pool_bytes[HM_STAGE_POOL];
  int pool_busy[HM_STAGE_POOL];
} hm_devstage;

#define HM_DEVSTAGE_TERMS (HM_DEVICE_XFER_FIELDS + 1)

/* A collective whose buffers are on the registered device (arguments already checked). */
hm_status hm_devstage_coll(hm_comm_t c, hm_coll_kind kind, const void *sendbuf, void *recvbuf, size_t count,
                           hm_dtype dt, hm_redop op, int root);
/* A blocking send or receive of a buffer on the registered device (arguments checked). */
hm_status hm_devstage_p2p(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send);

/* Allocates the slots the registration has not made yet. */
hm_status hm_devstage_alloc_slots(hm_devstage *s);

/* device_reduce.c: an allreduce of device buffers whose sums run on the device, where the cost
 * model (or HETMIX_REDUCE_SITE) says so. *done = 0: not taken here (run the host path). */
hm_status hm_devreduce_allreduce(hm_comm_t c, const void *sendbuf, void *recvbuf, size_t count, hm_dtype dt,
                                 hm_redop op, size_t chunk, int *done);
/* Frees what device_reduce.c holds (before the device changes or closes). */
void hm_devreduce_release(hm_devstage *s);
/* This rank's terms (cost.h) for its registered device, measured on chunk-sized copies, kernels
 * and host reductions. */
hm_status hm_devreduce_measure(hm_comm_t c, hm_device_xfer *out);

/* device_async.c: nonblocking calls on device buffers (arguments checked, peer not this rank).
 * The request carries the device-side work; hm_request_wait / hm_request_test complete it in
 * the caller's thread (hm_devasync_wait / hm_devasync_test, which free d). */
struct hm_devreq;
hm_status hm_devasync_p2p(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send,
                          hm_request_t *req);
hm_status hm_devasync_allreduce(hm_comm_t c, const void *sendbuf, void *recvbuf, size_t count, hm_dtype dt,
                                hm_redop op, hm_request_t *req);
hm_status hm_devasync_wait(struct hm_devreq *d);
hm_status hm_devasync_test(struct hm_devreq *d, int *done);
void hm_devasync_discard(struct hm_devreq *d); /* at destroy: frees d only (the device may be gone) */
void hm_devasync_release(hm_devstage *s);      /* frees the pool (no request in flight) */

/* comm.c: the host-memory paths the staging layer drives, one chunk at a time. */
hm_status hm_comm_coll_host(hm_comm_t c, hm_coll_kind kind, const void *sendbuf, void *recvbuf, size_t count,
                            hm_dtype dt, hm_redop op, int root);
hm_status hm_comm_p2p_host(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send);
hm_status hm_comm_ip2p_host(hm_comm_t c, void *buf, size_t count, hm_dtype dt, int peer, int is_send,
                            hm_request_t *req);
hm_status hm_comm_iallreduce_host(hm_comm_t c, const void *sendbuf, void *recvbuf, size_t count, hm_dtype dt,
                                  hm_redop op, hm_request_t *req);
/* A request handed to the caller whose completion is d's (hm_devasync_wait). */
hm_status hm_comm_devrequest(hm_comm_t c, struct hm_devreq *d, hm_request_t *req);

#endif
