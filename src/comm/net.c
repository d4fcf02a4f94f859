/* TCP helpers for hmcomm: listen/connect/accept with deadlines, whole-buffer reads and writes
 * over nonblocking sockets, frame send/receive, randomness and the diagnostic logger.
 * Not here: the pipelined data path (engine.c drives data sockets itself). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "util/util.h"

/* ---- logging: HETMIX_LOG=error|warn|info|debug prints to stderr; a hook sees everything ---- */
static hm_comm_log_fn g_log_fn;
static void *g_log_arg;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void hm_comm_set_log_hook(hm_comm_log_fn fn, void *arg) {
  pthread_mutex_lock(&g_log_mu);
  g_log_fn = fn;
  g_log_arg = arg;
  pthread_mutex_unlock(&g_log_mu);
}

static int env_log_level(void) {
  const char *s = getenv("HETMIX_LOG");
  if (!s) return -1;
  static const char *names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

void hm_log(int level, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&g_log_mu);
  if (g_log_fn) g_log_fn(level, msg, g_log_arg);
  pthread_mutex_unlock(&g_log_mu);
  if (level <= env_log_level()) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "hetmix comm %s: %s\n", names[level & 3], msg);
  }
}

/* Nonces and secrets: getrandom() blocks only before the kernel pool is seeded at boot. */
void hm_random_bytes(void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    p += r;
    n -= (size_t)r;
  }
  if (n > 0) { /* no getrandom (old kernel or seccomp): the urandom device is equivalent */
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
      n -= fread(p, 1, n, f);
      fclose(f);
    }
  }
}

int hm_net_timeleft_ms(uint64_t deadline_ns) {
  if (deadline_ns == 0) return 1000;
  uint64_t now = hm_now_ns();
  if (now >= deadline_ns) return 0;
  uint64_t ms = (deadline_ns - now + 999999) / 1000000;
  return ms > 1000000 ? 1000000 : (int)ms;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static hm_status resolve(const char *host, int port, struct sockaddr_in *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (!host || !*host) host = "127.0.0.1";
  if (inet_pton(AF_INET, host, &sa->sin_addr) == 1) return HM_OK;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0 || !res)
    return hm_error(HM_ERR_INVALID_ARG, "cannot resolve host '%s': %s", host, gai_strerror(rc));
  sa->sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return HM_OK;
}

hm_status hm_net_listen(const char *addr, int port, int *fd_out, int *bound_port) {
  struct sockaddr_in sa;
  HM_TRY(resolve(addr, port, &sa));
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return hm_error(HM_ERR_IO, "socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int e = errno;
    close(fd);
    return hm_error(HM_ERR_IO, "bind %s:%d: %s", addr ? addr : "127.0.0.1", port, strerror(e));
  }
  if (listen(fd, 256) != 0 || set_nonblock(fd) != 0) {
    int e = errno;
    close(fd);
    return hm_error(HM_ERR_IO, "listen %s:%d: %s", addr ? addr : "127.0.0.1", port, strerror(e));
  }
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  *bound_port = ntohs(sa.sin_port);
  *fd_out = fd;
  return HM_OK;
}

void hm_net_tune(int fd, int bulk) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (bulk) {
    int sz = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
}

hm_status hm_net_connect(const char *host, int port, uint64_t deadline_ns, int *fd_out) {
  struct sockaddr_in sa;
  HM_TRY(resolve(host, port, &sa));
  /* The listener may not be up yet (a rank starting before rank 0): retry until the deadline. */
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return hm_error(HM_ERR_IO, "socket: %s", strerror(errno));
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc != 0 && errno == EINPROGRESS) {
      struct pollfd p = {fd, POLLOUT, 0};
      int pr = poll(&p, 1, hm_net_timeleft_ms(deadline_ns));
      if (pr == 1) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        rc = err == 0 ? 0 : -1;
        errno = err;
      } else {
        rc = -1;
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) {
      hm_net_tune(fd, 0);
      *fd_out = fd;
      return HM_OK;
    }
    int e = errno;
    close(fd);
    if (hm_deadline_passed(deadline_ns) || (e != ECONNREFUSED && e != ETIMEDOUT && e != EAGAIN))
      return hm_error(e == ETIMEDOUT || e == ECONNREFUSED ? HM_ERR_TIMEOUT : HM_ERR_IO,
                      "connect to %s:%d: %s", host ? host : "127.0.0.1", port, strerror(e));
    usleep(20000);
  }
}

void hm_net_peer_name(int fd, char *buf, size_t cap) {
  struct sockaddr_in sa;
  socklen_t sl = sizeof sa;
  char ip[INET_ADDRSTRLEN] = "?";
  if (getpeername(fd, (struct sockaddr *)&sa, &sl) == 0)
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
  snprintf(buf, cap, "%s:%d", ip, sl ? ntohs(sa.sin_port) : 0);
}

hm_status hm_net_accept(int lfd, uint64_t deadline_ns, int *fd_out, char *peer, size_t peer_cap) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      hm_net_tune(fd, 0);
      if (peer) hm_net_peer_name(fd, peer, peer_cap);
      *fd_out = fd;
      return HM_OK;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      return hm_error(HM_ERR_IO, "accept: %s", strerror(errno));
    int left = hm_net_timeleft_ms(deadline_ns);
    if (left <= 0) return hm_error(HM_ERR_TIMEOUT, "timed out waiting for peers to connect");
    struct pollfd p = {lfd, POLLIN, 0};
    poll(&p, 1, left > 100 ? 100 : left);
  }
}

hm_status hm_net_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return hm_error(errno == EPIPE || errno == ECONNRESET ? HM_ERR_PEER_DEAD : HM_ERR_IO,
                      "send: %s", strerror(errno));
    int left = hm_net_timeleft_ms(deadline_ns);
    if (left <= 0) return hm_error(HM_ERR_TIMEOUT, "send timed out");
    struct pollfd pf = {fd, POLLOUT, 0};
    poll(&pf, 1, left);
  }
  return HM_OK;
}

hm_status hm_net_read_all(int fd, void *buf, size_t n, uint64_t deadline_ns) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r > 0) {
      p += r;
      n -= (size_t)r;
      continue;
    }
    if (r == 0) return hm_error(HM_ERR_PEER_DEAD, "connection closed by peer");
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return hm_error(errno == ECONNRESET ? HM_ERR_PEER_DEAD : HM_ERR_IO, "recv: %s", strerror(errno));
    int left = hm_net_timeleft_ms(deadline_ns);
    if (left <= 0) return hm_error(HM_ERR_TIMEOUT, "receive timed out");
    struct pollfd pf = {fd, POLLIN, 0};
    poll(&pf, 1, left);
  }
  return HM_OK;
}

hm_status hm_net_send_frame(int fd, int type, uint32_t seq, uint64_t desc, uint32_t aux,
                            const void *payload, uint32_t len, uint64_t deadline_ns) {
  hm_wire_hdr h;
  hm_wire_make_header(&h, type, seq, len, desc, aux);
  unsigned char hb[HM_WIRE_HDR_BYTES];
  hm_wire_encode_header(&h, hb);
  HM_TRY(hm_net_write_all(fd, hb, sizeof hb, deadline_ns));
  if (len) HM_TRY(hm_net_write_all(fd, payload, len, deadline_ns));
  return HM_OK;
}

hm_status hm_net_recv_frame(int fd, hm_wire_hdr *h, void *buf, size_t cap, uint64_t deadline_ns) {
  unsigned char hb[HM_WIRE_HDR_BYTES];
  HM_TRY(hm_net_read_all(fd, hb, sizeof hb, deadline_ns));
  HM_TRY(hm_wire_decode_header(hb, sizeof hb, h));
  if (h->len > cap)
    return hm_error(HM_ERR_PROTOCOL, "frame of type %u carries %u bytes, at most %zu expected",
                    (unsigned)h->type, (unsigned)h->len, cap);
  if (h->len) HM_TRY(hm_net_read_all(fd, buf, h->len, deadline_ns));
  return HM_OK;
}

/* ---- one frame read piece by piece from a nonblocking socket (acceptors' poll loops) ---- */
int hm_net_frame_rx_step(int fd, hm_frame_rx *rx, size_t limit) {
  for (;;) {
    unsigned char *dst;
    size_t want;
    if (rx->off < HM_WIRE_HDR_BYTES) {
      dst = rx->hdr + rx->off;
      want = HM_WIRE_HDR_BYTES - rx->off;
    } else {
      dst = rx->payload + (rx->off - HM_WIRE_HDR_BYTES);
      want = HM_WIRE_HDR_BYTES + rx->h.len - rx->off;
    }
    if (want == 0) return 1; /* a frame without payload */
    ssize_t got = recv(fd, dst, want, MSG_DONTWAIT);
    if (got == 0) {
      hm_error(HM_ERR_PEER_DEAD, "closed the connection");
      return -1;
    }
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
      hm_error(HM_ERR_IO, "recv: %s", strerror(errno));
      return -2;
    }
    rx->off += (size_t)got;
    if (rx->off == HM_WIRE_HDR_BYTES) {
      if (hm_wire_decode_header(rx->hdr, HM_WIRE_HDR_BYTES, &rx->h) != HM_OK) return -2;
      if (rx->h.len > limit) {
        hm_error(HM_ERR_PROTOCOL, "frame of type %u carries %u bytes, at most %zu expected", (unsigned)rx->h.type,
                 (unsigned)rx->h.len, limit);
        return -2;
      }
      free(rx->payload);
      rx->payload = malloc(rx->h.len ? rx->h.len : 1);
      if (!rx->payload) {
        hm_error(HM_ERR_NOMEM, "out of memory for a frame of %u bytes", (unsigned)rx->h.len);
        return -2;
      }
    }
    if (rx->off >= HM_WIRE_HDR_BYTES && rx->off == HM_WIRE_HDR_BYTES + rx->h.len) return 1;
  }
}

void hm_net_frame_rx_reset(hm_frame_rx *rx) { rx->off = 0; }

void hm_net_frame_rx_free(hm_frame_rx *rx) {
  free(rx->payload);
  rx->payload = NULL;
  rx->off = 0;
}
