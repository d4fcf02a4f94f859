/* `hetmix profile`'s staging figures: for a device type whose memory is not host memory, the
 * bandwidth of device->host and host->device copies between a device buffer and pinned host
 * memory, and their latency, which the planner adds to every transfer from or to that type
 * (docs/plan.md). Measured in a forked child when the profiling process has not initialised the
 * device's runtime yet (it forks later, and OpenCL's threads do not survive a fork), else here. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hetmix/device.h"
#include "hetmix/profile.h"
#include "util/util.h"

typedef struct staging_slot {
  int status; /* hm_status of the child; -1 until it reports */
  int staged; /* 1: the device's memory is not host memory */
  hm_device_xfer x;
  char msg[256];
} staging_slot;

/* Best of reps: one copy of `bytes` each way, and one of 64 bytes (the latency). */
static hm_status time_copies(hm_device *dev, size_t bytes, int reps, hm_device_xfer *x) {
  void *d = NULL, *h = NULL;
  HM_TRY(hm_device_alloc(dev, &d, bytes, "staging probe (device)"));
  HM_TRY(hm_device_alloc_host(dev, &h, bytes, "staging probe (host)"));
  memset(h, 0, bytes);
  double d2h = INFINITY, h2d = INFINITY, lat = INFINITY;
  hm_status st = hm_device_copy_h2d(dev, d, h, bytes); /* first touch, untimed */
  for (int r = 0; st == HM_OK && r < reps; r++) {
    double t0 = hm_now_s();
    if ((st = hm_device_copy_d2h(dev, h, d, bytes)) != HM_OK) break;
    double t1 = hm_now_s();
    if ((st = hm_device_copy_h2d(dev, d, h, bytes)) != HM_OK) break;
    double t2 = hm_now_s();
    if ((st = hm_device_copy_d2h(dev, h, d, 64 < bytes ? 64 : bytes)) != HM_OK) break;
    double t3 = hm_now_s();
    d2h = fmin(d2h, t1 - t0), h2d = fmin(h2d, t2 - t1), lat = fmin(lat, t3 - t2);
  }
  hm_device_free(dev, d);
  hm_device_free_host(dev, h);
  HM_TRY(st);
  x->copy_latency = lat;
  x->d2h_bw = (double)bytes / fmax(d2h - lat, 1e-9);
  x->h2d_bw = (double)bytes / fmax(h2d - lat, 1e-9);
  return HM_OK;
}

static hm_status child_measure(const char *backend, size_t bytes, int reps, staging_slot *s) {
  hm_device *dev = NULL;
  HM_TRY(hm_device_open(backend, &dev));
  s->staged = !hm_device_is_host(dev);
  hm_status st = s->staged ? time_copies(dev, bytes, reps, &s->x) : HM_OK;
  hm_device_close(dev);
  return st;
}

hm_status hm_profile_time_staging(const char *backend, size_t bytes, int reps, int in_child, int timeout_s,
                                  hm_device_xfer *out, int *staged) {
  if (!backend || !out || !staged || !bytes || reps < 1)
    return hm_error(HM_ERR_INVALID_ARG, "hm_profile_time_staging: missing argument");
  memset(out, 0, sizeof *out);
  *staged = 0;
  if (!in_child) { /* this process already runs the device's runtime (it timed the layers) */
    staging_slot here;
    memset(&here, 0, sizeof here);
    HM_TRY(child_measure(backend, bytes, reps, &here));
    *out = here.x;
    *staged = here.staged;
    return HM_OK;
  }
  staging_slot *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) return hm_error(HM_ERR_NOMEM, "profile: shared memory for the staging probe: %s", strerror(errno));
  memset(s, 0, sizeof *s);
  s->status = -1;
  fflush(stdout);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    munmap(s, sizeof *s);
    return hm_error(HM_ERR_IO, "profile: fork: %s", strerror(errno));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    hm_status cs = child_measure(backend, bytes, reps, s);
    if (cs != HM_OK) hm_strcpy(s->msg, sizeof s->msg, hm_last_error());
    __atomic_store_n(&s->status, (int)cs, __ATOMIC_RELEASE);
    _exit(cs == HM_OK ? 0 : 1);
  }
  const uint64_t deadline = hm_deadline_after_ms((uint64_t)(timeout_s > 0 ? timeout_s : 600) * 1000u);
  int wst = 0;
  pid_t w;
  while ((w = waitpid(pid, &wst, WNOHANG)) == 0 || (w < 0 && errno == EINTR)) {
    if (hm_deadline_passed(deadline)) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
      }
      munmap(s, sizeof *s);
      return hm_error(HM_ERR_TIMEOUT, "profile: the staging probe of %s took over %d s; stopped it", backend,
                      timeout_s > 0 ? timeout_s : 600);
    }
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  int status = __atomic_load_n(&s->status, __ATOMIC_ACQUIRE);
  hm_status st = HM_OK;
  if (status != HM_OK)
    st = hm_error(status > 0 ? (hm_status)status : HM_ERR_PEER_DEAD, "profile: staging probe of %s: %s", backend,
                  s->msg[0] ? s->msg : "the measuring process failed");
  else {
    *out = s->x;
    *staged = s->staged;
  }
  munmap(s, sizeof *s);
  return st;
}
