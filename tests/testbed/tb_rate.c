/* Measures the rate of one TCP stream through a shaped testbed link (tests/testbed).
 *   tb_rate recv PORT SECONDS      accept one stream, print its steady rate in bits/s
 *   tb_rate send ADDR PORT SECONDS send as fast as the link takes for SECONDS
 * The receiver times the bytes after the first quarter of the run, so the token bucket's
 * initial burst and TCP's slow start do not count. Every wait has a deadline. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
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

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "recv") == 0) return do_recv(atoi(argv[2]), atof(argv[3]));
  if (argc == 5 && strcmp(argv[1], "send") == 0) return do_send(argv[2], atoi(argv[3]), atof(argv[4]));
  fprintf(stderr, "usage: tb_rate recv PORT SECONDS | tb_rate send ADDR PORT SECONDS\n");
  return 2;
}
