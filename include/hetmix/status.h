/* hetmix status codes and the per-thread error message.
 *
 * Every library call that can fail returns an hm_status. On failure it also records a
 * message with context (rank, peer, field path, file position) that hm_last_error()
 * returns on the same thread. The library never prints and never exits: the caller
 * (usually the CLI) decides what to do. */
#ifndef HETMIX_STATUS_H
#define HETMIX_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum hm_status {
  HM_OK = 0,
  HM_ERR_INVALID_ARG,  /* an API argument is wrong; the message names it */
  HM_ERR_NOMEM,        /* host or device allocation failed */
  HM_ERR_IO,           /* file or socket I/O failed (errno text in the message) */
  HM_ERR_TIMEOUT,      /* a deadline passed */
  HM_ERR_PEER_DEAD,    /* a peer process stopped answering or closed its connection */
  HM_ERR_MISMATCH,     /* ranks called collectives that do not match */
  HM_ERR_PROTOCOL,     /* a malformed or unexpected wire message */
  HM_ERR_AUTH,         /* authentication with the job secret failed */
  HM_ERR_ABORTED,      /* the communicator or job was aborted */
  HM_ERR_UNSUPPORTED,  /* valid request that this build or backend cannot do */
  HM_ERR_SPEC,         /* a spec file (cluster, model, plan, training) is invalid */
  HM_ERR_CORRUPT,      /* a checkpoint or data file fails its checks */
  HM_ERR_NOT_FOUND,    /* a named thing (backend, config, file) does not exist */
  HM_ERR_NO_FIT,       /* the work does not fit the memory available */
  HM_ERR_INTERNAL,     /* a bug in hetmix */
  HM_STATUS_COUNT
} hm_status;

/* Short stable name, e.g. "timeout". Never NULL. */
const char *hm_status_name(hm_status st);

/* The message recorded by the last failing call on this thread ("" if none). */
const char *hm_last_error(void);

/* Records a formatted message for this thread and returns st (for `return hm_error(...)`). */
hm_status hm_error(hm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prepends context ("rank 3: ") to the current message and returns st. */
hm_status hm_error_context(hm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void hm_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
