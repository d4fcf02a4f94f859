/* Liveness of a communicator's peers: the first error breaks the communicator and is told to
 * the peers (CTRL_ERROR); the control connections are watched for error notices, BYE and EOF (a
 * dead peer); a thread sends CTRL_HEARTBEAT on every control connection each heartbeat_ms, and a
 * wait that has heard nothing from a peer for peer_dead_ms fails naming it; abort() and the broken
 * state end every wait. The transfer engine calls hm_comm_health_poll while it waits.
 * Not here: the data path (engine.c, transport/). */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_internal.h"
#include "util/util.h"

/* ---- errors shared by the whole communicator ---- */
hm_status hm_comm_fail(hm_comm_t c, hm_status st, int notify) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", hm_last_error());
  pthread_mutex_lock(&c->err_mu);
  int first = atomic_load(&c->broken) == HM_OK;
  if (first) {
    snprintf(c->broken_msg, sizeof c->broken_msg, "%s", msg);
    atomic_store(&c->broken, (int)st);
  }
  pthread_mutex_unlock(&c->err_mu);
  if (first && notify) {
    for (int r = 0; r < c->nranks; r++) {
      if (r == c->rank || c->peers[r].ctrl_fd < 0) continue;
      /* best effort: a peer that is gone finds out on its own */
      hm_comm_ctrl_send(c, r, HM_WIRE_CTRL_ERROR, (uint32_t)st, msg, (uint32_t)strlen(msg), 200);
    }
    hm_log(HM_LOG_WARN, "%s", msg);
  }
  return hm_error(st, "%s", msg);
}

hm_status hm_comm_peer_gone(hm_comm_t c, int r, const char *how) {
  hm_error(HM_ERR_PEER_DEAD, "rank %d: peer rank %d (pid %d) %s: it died or left the communicator",
           c->rank, r, c->peers[r].pid, how);
  return hm_comm_fail(c, HM_ERR_PEER_DEAD, 0);
}

/* Reads what arrived on control connection r: an error notice or EOF. */
static hm_status ctrl_event(hm_comm_t c, int r) {
  hm_wire_hdr h;
  char msg[512];
  hm_status st = hm_net_recv_frame(c->peers[r].ctrl_fd, &h, msg, sizeof msg - 1, hm_deadline_after_ms(500));
  if (st == HM_ERR_PEER_DEAD) return hm_comm_peer_gone(c, r, "closed its connection");
  if (st != HM_OK) return hm_comm_fail(c, st, 0);
  c->last_heard[r] = hm_now_ns();
  if (h.type == HM_WIRE_CTRL_HEARTBEAT) return HM_OK;
  if (h.type == HM_WIRE_CTRL_BYE) {
    c->peers[r].left = 1;
    return HM_OK;
  }
  if (h.type == HM_WIRE_CTRL_ERROR) {
    msg[h.len] = '\0';
    hm_status pst = (h.aux > HM_OK && h.aux < HM_STATUS_COUNT) ? (hm_status)h.aux : HM_ERR_INTERNAL;
    hm_error(pst, "rank %d: peer rank %d failed: %s", c->rank, r, msg);
    return hm_comm_fail(c, pst, 0);
  }
  hm_error(HM_ERR_PROTOCOL, "rank %d: unexpected frame type %u on the control connection of rank %d",
           c->rank, (unsigned)h.type, r);
  return hm_comm_fail(c, HM_ERR_PROTOCOL, 0);
}

static hm_status broken_status(hm_comm_t c) {
  int b = atomic_load(&c->broken);
  if (b == HM_OK) return HM_OK;
  pthread_mutex_lock(&c->err_mu);
  hm_error((hm_status)b, "%s", c->broken_msg);
  pthread_mutex_unlock(&c->err_mu);
  return (hm_status)b;
}

/* Polls the control connections (and extra fds) for up to poll_ms. */
hm_status hm_comm_health_poll(hm_comm_t c, struct pollfd *extra, int nextra, int poll_ms) {
  if (atomic_load(&c->aborted)) return hm_error(HM_ERR_ABORTED, "rank %d: communicator aborted", c->rank);
  HM_TRY(broken_status(c));
  struct pollfd pf[256 + 64];
  int map[256 + 64], n = 0;
  for (int r = 0; r < c->nranks && n < 256; r++) {
    if (r == c->rank || c->peers[r].ctrl_fd < 0 || c->peers[r].left) continue;
    pf[n] = (struct pollfd){c->peers[r].ctrl_fd, POLLIN, 0};
    map[n++] = r;
  }
  int nctrl = n;
  for (int i = 0; i < nextra && n < 256 + 64; i++) pf[n++] = extra[i];
  int rc = poll(pf, (nfds_t)n, poll_ms);
  if (rc > 0)
    for (int i = 0; i < nctrl; i++)
      if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) HM_TRY(ctrl_event(c, map[i]));
  /* alive but silent (stopped, hung host, cut network): nothing for peer_dead_ms while we wait */
  if (c->hb_started && c->op_start_ns) {
    uint64_t now = hm_now_ns(), limit = (uint64_t)c->cfg.peer_dead_ms * 1000000ull;
    for (int i = 0; i < nctrl; i++) {
      int r = map[i];
      uint64_t since = c->last_heard[r] > c->op_start_ns ? c->last_heard[r] : c->op_start_ns;
      if (now > since + limit) {
        hm_error(HM_ERR_PEER_DEAD, "rank %d: peer rank %d (pid %d) sent no heartbeat for %d ms: it hangs or is unreachable",
                 c->rank, r, c->peers[r].pid, (int)((now - since) / 1000000));
        return hm_comm_fail(c, HM_ERR_PEER_DEAD, 1);
      }
    }
  }
  return HM_OK;
}

hm_status hm_comm_check_health(hm_comm_t c, int poll_ms) { return hm_comm_health_poll(c, NULL, 0, poll_ms); }

hm_status hm_comm_ctrl_send(hm_comm_t c, int r, int type, uint32_t aux, const void *payload,
                            uint32_t len, int timeout_ms) {
  pthread_mutex_lock(&c->ctrl_mu);
  hm_status st = c->peers[r].ctrl_fd < 0 ? HM_OK
                 : hm_net_send_frame(c->peers[r].ctrl_fd, type, 0, 0, aux, payload, len,
                                     hm_deadline_after_ms((uint64_t)timeout_ms));
  pthread_mutex_unlock(&c->ctrl_mu);
  return st;
}

static void *heartbeat_main(void *arg) {
  hm_comm_t c = arg;
  pthread_mutex_lock(&c->hb_mu);
  while (!c->hb_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)c->cfg.heartbeat_ms * 1000000ull;
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    pthread_cond_timedwait(&c->hb_cv, &c->hb_mu, &ts);
    if (c->hb_stop) break;
    pthread_mutex_unlock(&c->hb_mu);
    for (int r = 0; r < c->nranks; r++)
      if (r != c->rank && !c->peers[r].left) hm_comm_ctrl_send(c, r, HM_WIRE_CTRL_HEARTBEAT, 0, NULL, 0, 100);
    pthread_mutex_lock(&c->hb_mu);
  }
  pthread_mutex_unlock(&c->hb_mu);
  return NULL;
}

hm_status hm_comm_heartbeat_start(hm_comm_t c) {
  if (c->nranks < 2 || c->cfg.heartbeat_ms <= 0 || c->cfg.peer_dead_ms <= 0) return HM_OK;
  c->last_heard = hm_calloc((size_t)c->nranks, sizeof(uint64_t), "heartbeat times");
  if (!c->last_heard) return HM_ERR_NOMEM;
  uint64_t now = hm_now_ns();
  for (int r = 0; r < c->nranks; r++) c->last_heard[r] = now;
  if (pthread_create(&c->hb_thread, NULL, heartbeat_main, c) != 0)
    return hm_error(HM_ERR_INTERNAL, "rank %d: cannot start the heartbeat thread", c->rank);
  c->hb_started = 1;
  return HM_OK;
}

void hm_comm_heartbeat_stop(hm_comm_t c) {
  if (!c->hb_started) return;
  pthread_mutex_lock(&c->hb_mu);
  c->hb_stop = 1;
  pthread_cond_broadcast(&c->hb_cv);
  pthread_mutex_unlock(&c->hb_mu);
  pthread_join(c->hb_thread, NULL);
  c->hb_started = 0;
}
