/* Shared-memory segments and single-producer single-consumer slot rings for ranks on one host.
 * Each rank owns one POSIX shm segment holding its inbound rings (one per same-host peer); the
 * peer maps it and produces into it. A slot is a 32-byte header plus payload: the producer fills
 * the payload, then stores the stamp (release); the consumer spins on the stamp (acquire), uses
 * the payload in place (copy or reduce straight out of the slot) and releases the slot by
 * advancing `consumed`. Small messages therefore cost one cache line each way.
 * The segment is unlinked as soon as every peer mapped it, so nothing is left behind. Both sides
 * map it populated (MAP_POPULATE): the first operations then take no page faults (a 1 MiB ring
 * costs about a millisecond of faults otherwise, all in the first large operation). */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm/comm_internal.h"

size_t hm_shm_ring_bytes(uint32_t nslots, uint32_t payload) {
  return sizeof(hm_shm_ring_ctl) + (size_t)nslots * (payload + 64);
}

void hm_shm_chan_init(hm_shm_chan *c, void *ring, uint32_t nslots, uint32_t payload) {
  memset(c, 0, sizeof *c);
  c->ctl = ring;
  c->slots = (char *)ring + sizeof(hm_shm_ring_ctl);
  c->nslots = nslots;
  c->payload = payload;
  c->stride = payload + 64;
}

/* A rank unlinks its segment at the end of bootstrap, failed or not; one killed during bootstrap
 * cannot, and its segment would stay in /dev/shm. The first segment a process creates sweeps
 * such leftovers: hetmix segments of this user whose creating process (the pid in the name:
 * /hetmix-<tag>-<rank>-<pid>-<n>) is gone and that are older than any bootstrap lasts (10 min;
 * a live job's segment is unlinked within its bootstrap, so also another pid namespace's is safe). */
int hm_shm_sweep_stale(int min_age_s) {
  int removed = 0;
  DIR *d = opendir("/dev/shm");
  if (!d) return 0;
  const time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned tag, n;
    int rank, pid;
    if (sscanf(e->d_name, "hetmix-%8x-%d-%d-%u", &tag, &rank, &pid, &n) != 4 || pid <= 0) continue;
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
    struct stat sb;
    if (stat(path, &sb) != 0 || sb.st_uid != geteuid() || now - sb.st_mtime < min_age_s) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    char name[300];
    snprintf(name, sizeof name, "/%s", e->d_name);
    if (shm_unlink(name) == 0) {
      removed++;
      hm_log(HM_LOG_INFO, "removed stale shared memory %s (pid %d is gone)", name, pid);
    }
  }
  closedir(d);
  return removed;
}

hm_status hm_shm_segment_create(const char *name, size_t bytes, void **base) {
  static _Atomic int swept;
  if (!atomic_exchange(&swept, 1)) hm_shm_sweep_stale(600);
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return hm_error(HM_ERR_IO, "shm_open(%s): %s", name, strerror(errno));
  if (ftruncate(fd, (off_t)bytes) != 0) {
    int e = errno;
    close(fd);
    shm_unlink(name);
    return hm_error(HM_ERR_IO, "ftruncate shared memory %s to %zu bytes: %s", name, bytes, strerror(e));
  }
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(name);
    return hm_error(HM_ERR_IO, "mmap shared memory %s (%zu bytes): %s", name, bytes, strerror(e));
  }
  *base = p;
  return HM_OK;
}

hm_status hm_shm_segment_open(const char *name, size_t bytes, void **base) {
  int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return hm_error(HM_ERR_IO, "shm_open(%s) of a peer: %s", name, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || (size_t)sb.st_size < bytes) {
    close(fd);
    return hm_error(HM_ERR_PROTOCOL, "peer shared memory %s is smaller than %zu bytes", name, bytes);
  }
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return hm_error(HM_ERR_IO, "mmap peer shared memory %s: %s", name, strerror(e));
  *base = p;
  return HM_OK;
}

/* Called after publishing a slot or freeing one: a full fence orders our store before reading
 * `sleepers` (the sleeper orders its `sleepers` store before re-checking the rings), so either
 * it sees our data or we see it asleep. */
void hm_shm_bell_ring(hm_shm_bell *b) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&b->sleepers, memory_order_relaxed) == 0) return;
  atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
  syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void hm_shm_bell_wait(hm_shm_bell *b, uint32_t seen, int timeout_us) {
  struct timespec ts = {timeout_us / 1000000, (long)(timeout_us % 1000000) * 1000};
  syscall(SYS_futex, (uint32_t *)&b->seq, FUTEX_WAIT, seen, &ts, NULL, 0);
}
