/* The mesh acceptor of a bootstrapping rank: accepts the connections of the higher ranks and
 * authenticates them all at once in one poll loop. Its port is reachable by any local user, so
 * an idle, slow or lying connection must cost the real peers nothing: every pending handshake
 * has its own deadline, at most MESH_MAX_PENDING are kept (a newcomer evicts the oldest one
 * that has sent nothing yet), and a connection that has not proven the job secret is logged as "unauthenticated connection from
 * ADDR" and never blamed on the rank it claims to be. Not here: what a rank does with an
 * authenticated connection (bootstrap.c). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define MESH_MAX_PENDING 64
#define MESH_HANDSHAKE_MS 5000

typedef struct mesh_pending {
  int fd;
  uint64_t since_ns, deadline_ns;
  char who[64];
  hm_auth_pending auth;
  hm_frame_rx rx;
} mesh_pending;

typedef struct mesh_acceptor {
  const unsigned char *tag, *secret;
  int me;
  mesh_pending p[MESH_MAX_PENDING];
  int n;
} mesh_acceptor;

static const unsigned char *mesh_secret(const hm_wire_hello *h, void *arg, const char **why) {
  const mesh_acceptor *a = arg;
  if (memcmp(h->tag, a->tag, HM_WIRE_TAG_BYTES) != 0) {
    *why = "hello for another job (job tag differs)";
    return NULL;
  }
  if (h->purpose != HM_CONN_CTRL && h->purpose != HM_CONN_DATA) {
    *why = "hello for a connection that is not a mesh one";
    return NULL;
  }
  return a->secret;
}

/* Forgets pending connection i (closing it unless kept: handed over to the caller). */
static void forget(mesh_acceptor *a, int i, int keep) {
  if (!keep) close(a->p[i].fd);
  hm_net_frame_rx_free(&a->p[i].rx);
  a->p[i] = a->p[--a->n];
}

static void drop(mesh_acceptor *a, int i, const char *why) {
  hm_log(HM_LOG_WARN, "rank %d: unauthenticated connection from %s: %s; ignored", a->me, a->p[i].who, why);
  forget(a, i, 0);
}

/* The handshake to evict: the oldest of those that sent nothing yet (a real peer sends its
 * hello at once, so a flood of silent connections cannot push it out), else the oldest. */
static int victim(const mesh_acceptor *a) {
  int o = -1;
  for (int silent = 1; silent >= 0 && o < 0; silent--)
    for (int i = 0; i < a->n; i++) {
      const mesh_pending *p = &a->p[i];
      if (silent && (p->auth.state != HM_AUTH_HELLO || p->rx.off > 0)) continue;
      if (o < 0 || p->since_ns < a->p[o].since_ns) o = i;
    }
  return o;
}

/* Accepts what the listener holds; a full table evicts its oldest handshake for each newcomer. */
static void accept_new(mesh_acceptor *a, int lfd, uint64_t deadline_ns) {
  for (int k = 0; k < MESH_MAX_PENDING; k++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return; /* EAGAIN, or an error the next poll reports again */
    if (a->n == MESH_MAX_PENDING) drop(a, victim(a), "evicted (too many handshakes pending)");
    mesh_pending *p = &a->p[a->n++];
    memset(p, 0, sizeof *p);
    p->fd = fd;
    hm_net_tune(fd, 0);
    hm_net_peer_name(fd, p->who, sizeof p->who);
    p->since_ns = hm_now_ns();
    p->deadline_ns = hm_deadline_after_ms(MESH_HANDSHAKE_MS);
    if (deadline_ns && p->deadline_ns > deadline_ns) p->deadline_ns = deadline_ns;
  }
}

/* Reads and answers what connection i sent. Returns 1 when it authenticated (still in the table),
 * 0 when it waits for more, -1 when it was dropped. */
static int advance(mesh_acceptor *a, int i) {
  mesh_pending *p = &a->p[i];
  for (;;) {
    int r = hm_net_frame_rx_step(p->fd, &p->rx, HM_WIRE_HELLO_BYTES);
    if (r == 0) return 0;
    if (r < 0 || hm_auth_accept_step(p->fd, &p->auth, &p->rx.h, p->rx.payload, mesh_secret, a) != HM_OK) {
      drop(a, i, hm_last_error());
      return -1;
    }
    hm_net_frame_rx_reset(&p->rx);
    if (p->auth.state == HM_AUTH_DONE) return 1;
  }
}

hm_status hm_mesh_accept(int lfd, const unsigned char *tag, const unsigned char *secret, int me, int expected,
                         hm_mesh_take_fn take, void *arg, uint64_t deadline_ns) {
  mesh_acceptor *a = hm_calloc(1, sizeof *a, "mesh acceptor");
  if (!a) return HM_ERR_NOMEM;
  a->tag = tag;
  a->secret = secret;
  a->me = me;
  struct pollfd pf[MESH_MAX_PENDING + 1];
  hm_status st = HM_OK;
  while (expected > 0) {
    int left = hm_net_timeleft_ms(deadline_ns);
    if (left <= 0) {
      st = hm_error(HM_ERR_TIMEOUT, "timed out waiting for %d connection(s) from higher ranks "
                    "(%d unauthenticated connection(s) pending)", expected, a->n);
      break;
    }
    pf[0] = (struct pollfd){lfd, POLLIN, 0};
    for (int i = 0; i < a->n; i++) pf[i + 1] = (struct pollfd){a->p[i].fd, POLLIN, 0};
    int rc = poll(pf, (nfds_t)a->n + 1, left < 100 ? left : 100);
    if (rc < 0 && errno != EINTR) {
      st = hm_error(HM_ERR_IO, "poll: %s", strerror(errno));
      break;
    }
    uint64_t now = hm_now_ns();
    /* backwards: forgetting i moves the last entry (already visited) into its place */
    for (int i = a->n - 1; i >= 0; i--) {
      int got = rc > 0 && (pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) ? advance(a, i) : 0;
      if (got == 1) {
        hm_wire_hello hello = a->p[i].auth.hello;
        char who[64];
        memcpy(who, a->p[i].who, sizeof who);
        int fd = a->p[i].fd;
        forget(a, i, 1);
        if (take(arg, &hello, fd, who)) expected--;
        else close(fd);
      } else if (got == 0 && now > a->p[i].deadline_ns) {
        drop(a, i, "did not authenticate in time");
      }
    }
    if (rc > 0 && (pf[0].revents & POLLIN)) accept_new(a, lfd, deadline_ns);
  }
  while (a->n > 0) drop(a, a->n - 1, "still unauthenticated when the bootstrap ended");
  free(a);
  return st;
}
