/* Measures the rate of one TCP stream through a shaped testbed link (tests/testbed).
 *   tb_rate recv PORT SECONDS      accept one stream, print its steady rate in bits/s
 *   tb_rate send ADDR PORT SECONDS send as fast as the link takes for SECONDS
 * The receiver times the bytes after the first quarter of the run, so the token bucket's
 * initial burst and TCP's slow start do not count. And the time of one message after an idle
 * spell (what a token bucket lets through at once):
 *   tb_rate echo PORT COUNT                  answer COUNT messages with one byte each
 *   tb_rate ping ADDR PORT BYTES COUNT GAP_MS send COUNT messages of BYTES, each after GAP_MS
 *                                            idle, print the median seconds to the answer
 * Every wait has a deadline. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int do_recv(int port, double secs) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 1) != 0) {
    perror("tb_rate recv: bind/listen");
    return 1;
  }
  struct pollfd p = {.fd = l, .events = POLLIN};
  if (poll(&p, 1, (int)(secs * 1000) + 10000) != 1) {
    fprintf(stderr, "tb_rate recv: no sender within the deadline\n");
    return 1;
  }
  int fd = accept(l, NULL, NULL);
  static char buf[1 << 16];
  const double t0 = now_s(), warm = t0 + secs / 4, end = t0 + secs + 5;
  double t_first = 0, t_last = 0;
  long long counted = 0;
  for (;;) {
    struct pollfd q = {.fd = fd, .events = POLLIN};
    int left = (int)((end - now_s()) * 1000);
    if (left <= 0 || poll(&q, 1, left) != 1) break;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    double t = now_s();
    if (t >= warm) {
      if (!t_first) t_first = t;
      else counted += n;
      t_last = t;
    }
  }
  if (t_last <= t_first) {
    fprintf(stderr, "tb_rate recv: too little data to time\n");
    return 1;
  }
  printf("%.0f\n", (double)counted * 8 / (t_last - t_first));
  return 0;
}

static int do_send(const char *addr, int port, double secs) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return 2;
  const double give_up = now_s() + 10;
  while (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (now_s() > give_up) {
      perror("tb_rate send: connect");
      return 1;
    }
    close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    usleep(20000);
  }
  static char buf[1 << 16];
  memset(buf, 0x5a, sizeof buf);
  const double end = now_s() + secs;
  while (now_s() < end) {
    struct pollfd q = {.fd = fd, .events = POLLOUT};
    if (poll(&q, 1, 1000) != 1) continue;
    if (write(fd, buf, sizeof buf) < 0) return 1;
  }
  close(fd);
  return 0;
}

/* Blocking I/O with a 5 s deadline per call (SO_RCVTIMEO / SO_SNDTIMEO). */
static void deadline(int fd) {
  struct timeval tv = {5, 0};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int io_all(int fd, char *buf, size_t n, int out) {
  while (n > 0) {
    ssize_t k = out ? write(fd, buf, n) : read(fd, buf, n);
    if (k <= 0) return -1;
    buf += k, n -= (size_t)k;
  }
  return 0;
}

static int do_echo(int port, int count) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  struct pollfd p = {.fd = l, .events = POLLIN};
  if (bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 1) != 0 || poll(&p, 1, 15000) != 1) {
    fprintf(stderr, "tb_rate echo: no sender within the deadline\n");
    return 1;
  }
  int fd = accept(l, NULL, NULL);
  deadline(fd);
  static char buf[1 << 20];
  for (int i = 0; i < count; i++) {
    uint64_t len = 0;
    if (io_all(fd, (char *)&len, sizeof len, 0) || len > sizeof buf || io_all(fd, buf, len, 0) || io_all(fd, buf, 1, 1)) {
      fprintf(stderr, "tb_rate echo: message %d lost or late\n", i);
      return 1;
    }
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int do_ping(const char *addr, int port, size_t bytes, int count, int gap_ms) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  static char buf[(1 << 20) + 8];
  double t[64];
  if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1 || bytes > (1 << 20) || count < 1 || count > 64) return 2;
  const double give_up = now_s() + 10;
  while (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (now_s() > give_up) {
      perror("tb_rate ping: connect");
      return 1;
    }
    close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    usleep(20000);
  }
  deadline(fd);
  uint64_t len = bytes;
  memcpy(buf, &len, sizeof len);
  for (int i = 0; i < count; i++) {
    usleep((useconds_t)gap_ms * 1000);
    const double t0 = now_s();
    if (io_all(fd, buf, bytes + sizeof len, 1) || io_all(fd, buf + sizeof len, 1, 0)) {
      fprintf(stderr, "tb_rate ping: message %d lost or late\n", i);
      return 1;
    }
    t[i] = now_s() - t0;
  }
  qsort(t, (size_t)count, sizeof t[0], cmp_double);
  printf("%.6f\n", t[count / 2]);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "echo") == 0) return do_echo(atoi(argv[2]), atoi(argv[3]));
  if (argc == 7 && strcmp(argv[1], "ping") == 0)
    return do_ping(argv[2], atoi(argv[3]), (size_t)atol(argv[4]), atoi(argv[5]), atoi(argv[6]));
  if (argc == 4 && strcmp(argv[1], "recv") == 0) return do_recv(atoi(argv[2]), atof(argv[3]));
  if (argc == 5 && strcmp(argv[1], "send") == 0) return do_send(argv[2], atoi(argv[3]), atof(argv[4]));
  fprintf(stderr, "usage: tb_rate recv PORT SECONDS | tb_rate send ADDR PORT SECONDS | tb_rate echo PORT COUNT |\n"
                  "       tb_rate ping ADDR PORT BYTES COUNT GAP_MS\n");
  return 2;
}
