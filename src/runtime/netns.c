/* Network namespaces for `hetmix launch` on a testbed (scripts/testbed.sh): the namespace file a
 * worker enters before exec, and a namespace's address, read by a short-lived thread that enters
 * the namespace (setns(2) with CLONE_NEWNET moves only the calling thread). */
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/runtime.h"
#include "util/util.h"

static int netns_name_ok(const char *s) {
  if (!s || !*s || strlen(s) > 200 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
  for (; *s; s++)
    if (*s == '/') return 0;
  return 1;
}

hm_status hm_netns_open(const char *netns, int *fd) {
  *fd = -1;
  if (!netns_name_ok(netns))
    return hm_error(HM_ERR_INVALID_ARG, "network namespace name '%s' is not a plain name", netns ? netns : "(null)");
  char path[256];
  snprintf(path, sizeof path, "/run/netns/%s", netns);
  *fd = open(path, O_RDONLY | O_CLOEXEC);
  if (*fd < 0)
    return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "network namespace %s: %s (%s)", netns,
                    strerror(errno), errno == ENOENT ? "make it with scripts/testbed.sh up" : path);
  return HM_OK;
}

typedef struct addr_job {
  int fd;
  char addr[INET_ADDRSTRLEN];
  int err; /* errno of setns/getifaddrs, or -1: no address */
} addr_job;

static void *addr_thread(void *arg) {
  addr_job *j = arg;
  if (setns(j->fd, CLONE_NEWNET) != 0) {
    j->err = errno;
    return NULL;
  }
  struct ifaddrs *all;
  if (getifaddrs(&all) != 0) {
    j->err = errno;
    return NULL;
  }
  j->err = -1;
  for (struct ifaddrs *i = all; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    if ((i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP)) continue;
    const struct sockaddr_in *sa = (const struct sockaddr_in *)i->ifa_addr;
    if (inet_ntop(AF_INET, &sa->sin_addr, j->addr, sizeof j->addr)) {
      j->err = 0;
      break;
    }
  }
  freeifaddrs(all);
  return NULL;
}

hm_status hm_netns_addr(const char *netns, char *addr, size_t cap) {
  addr_job j = {.fd = -1, .err = 0};
  HM_TRY(hm_netns_open(netns, &j.fd));
  pthread_t t;
  int rc = pthread_create(&t, NULL, addr_thread, &j);
  if (rc == 0) pthread_join(t, NULL);
  close(j.fd);
  if (rc != 0) return hm_error(HM_ERR_IO, "network namespace %s: cannot start a thread: %s", netns, strerror(rc));
  if (j.err > 0) return hm_error(HM_ERR_IO, "network namespace %s: %s", netns, strerror(j.err));
  if (j.err < 0) return hm_error(HM_ERR_NOT_FOUND, "network namespace %s has no IPv4 address on an interface that is up", netns);
  if (hm_strcpy(addr, cap, j.addr) != 0) return hm_error(HM_ERR_INVALID_ARG, "hm_netns_addr: buffer too small");
  return HM_OK;
}
