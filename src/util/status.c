/* Status names and the per-thread error message (see include/hetmix/status.h). */
#include "hetmix/status.h"
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define HM_ERRMSG_MAX 1024

static _Thread_local char hm_errmsg[HM_ERRMSG_MAX];

static const char *const hm_status_names[HM_STATUS_COUNT] = {
    [HM_OK] = "ok",
    [HM_ERR_INVALID_ARG] = "invalid argument",
    [HM_ERR_NOMEM] = "out of memory",
    [HM_ERR_IO] = "i/o error",
    [HM_ERR_TIMEOUT] = "timeout",
    [HM_ERR_PEER_DEAD] = "peer dead",
    [HM_ERR_MISMATCH] = "mismatched call",
    [HM_ERR_PROTOCOL] = "protocol error",
    [HM_ERR_AUTH] = "authentication failed",
    [HM_ERR_ABORTED] = "aborted",
    [HM_ERR_UNSUPPORTED] = "unsupported",
    [HM_ERR_SPEC] = "invalid spec",
    [HM_ERR_CORRUPT] = "corrupt file",
    [HM_ERR_NOT_FOUND] = "not found",
    [HM_ERR_NO_FIT] = "does not fit",
    [HM_ERR_INTERNAL] = "internal error",
};

const char *hm_status_name(hm_status st) {
  if ((int)st < 0 || st >= HM_STATUS_COUNT) return "unknown status";
  return hm_status_names[st];
}

const char *hm_last_error(void) { return hm_errmsg; }

void hm_clear_error(void) { hm_errmsg[0] = '\0'; }

hm_status hm_error(hm_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(hm_errmsg, sizeof hm_errmsg, fmt, ap);
  va_end(ap);
  return st;
}

hm_status hm_error_context(hm_status st, const char *fmt, ...) {
  char prefix[256];
  char old[HM_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, hm_errmsg, sizeof old);
  size_t n = strlen(prefix);
  if (n >= sizeof hm_errmsg) n = sizeof hm_errmsg - 1;
  memcpy(hm_errmsg, prefix, n);
  hm_strcpy(hm_errmsg + n, sizeof hm_errmsg - n, old);
  return st;
}
