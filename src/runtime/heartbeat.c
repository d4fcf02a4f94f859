/* Worker heartbeats (heartbeat.h): a thread rewrites "<dir>/rank<R>" every HM_HB_PERIOD_MS;
 * the launcher reads it to tell a silent (stopped, dead) worker from a slow or hung one. */
#include "runtime/heartbeat.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

static struct {
  int running;
  pthread_t thread;
  atomic_int stop;
  atomic_llong step;
  atomic_int waiting;
  atomic_int phase;
  uint64_t marks;       /* under lock */
  _Atomic double step_wall;
  uint64_t beat;
  pthread_mutex_t lock; /* one writer of the file at a time (the thread, a step) */
  int rank;
  char dir[1024];
  char host[64];
  char device[160];
  char end_path[1200];  /* "<dir>/rank<R>.end": written when this process ends on its own terms */
  struct sigaction old_term;
} hm_hb;

/* Marks an orderly end: a normal return, or SIGTERM from a launcher stopping the job. A rank
 * without the mark died abruptly (SIGKILL, a crash): under an external launcher that is how the
 * cause is told from the peers stopped after it. Async-signal-safe. */
static void hm_hb_mark_end(const char *why) {
  int fd = open(hm_hb.end_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, why, strlen(why));
  (void)w;
  close(fd);
}

static void hm_hb_on_term(int sig) {
  hm_hb_mark_end("term\n");
  signal(sig, SIG_DFL);
  raise(sig);
}

static double hm_wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One beat: the state into a temp file, renamed over the last one (a reader sees either). A
 * progress mark (a step, a phase change) counts itself first. */
static void hm_hb_write(int mark) {
  pthread_mutex_lock(&hm_hb.lock);
  hm_hb.marks += mark != 0;
  char path[1200], tmp[1220];
  snprintf(path, sizeof path, "%s/rank%d", hm_hb.dir, hm_hb.rank);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) { /* the folder is gone (the launcher cleaned up): nothing to tell */
    pthread_mutex_unlock(&hm_hb.lock);
    return;
  }
  fprintf(f, "pid %d\nhost %s\ndevice %s\nbeat %llu\nstep %lld\nstep_wall %.6f\nwaiting %d\nphase %d\nmarks %llu\n",
          (int)getpid(), hm_hb.host, hm_hb.device, (unsigned long long)++hm_hb.beat,
          (long long)atomic_load(&hm_hb.step), atomic_load(&hm_hb.step_wall), atomic_load(&hm_hb.waiting),
          atomic_load(&hm_hb.phase), (unsigned long long)hm_hb.marks);
  if (fclose(f) == 0) rename(tmp, path);
  pthread_mutex_unlock(&hm_hb.lock);
}

static void *hm_hb_main(void *arg) {
  (void)arg;
  while (!atomic_load(&hm_hb.stop)) {
    hm_hb_write(0);
    struct timespec ts = {0, HM_HB_PERIOD_MS * 1000000L};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

hm_status hm_hb_start(int rank, const char *device) {
  const char *dir = getenv("HETMIX_HEARTBEAT_DIR");
  if (!dir || !*dir || hm_hb.running) return HM_OK;
  if (hm_strcpy(hm_hb.dir, sizeof hm_hb.dir, dir) != 0)
    return hm_error(HM_ERR_INVALID_ARG, "HETMIX_HEARTBEAT_DIR is longer than %zu bytes", sizeof hm_hb.dir - 1);
  if (gethostname(hm_hb.host, sizeof hm_hb.host) != 0) hm_strcpy(hm_hb.host, sizeof hm_hb.host, "?");
  hm_hb.host[sizeof hm_hb.host - 1] = '\0';
  hm_strcpy(hm_hb.device, sizeof hm_hb.device, device ? device : "?");
  for (char *c = hm_hb.device; *c; c++)
    if (*c == '\n') *c = ' ';
  hm_hb.rank = rank;
  hm_hb.beat = 0;
  hm_hb.marks = 0;
  atomic_store(&hm_hb.phase, HM_HB_STEP);
  pthread_mutex_init(&hm_hb.lock, NULL);
  atomic_store(&hm_hb.stop, 0);
  atomic_store(&hm_hb.step, 0);
  atomic_store(&hm_hb.step_wall, 0.0);
  snprintf(hm_hb.end_path, sizeof hm_hb.end_path, "%s/rank%d.end", hm_hb.dir, rank);
  unlink(hm_hb.end_path);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hm_hb_on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &hm_hb.old_term);
  int rc = pthread_create(&hm_hb.thread, NULL, hm_hb_main, NULL);
  if (rc != 0) return hm_error(HM_ERR_IO, "cannot start the heartbeat thread: %s", strerror(rc));
  hm_hb.running = 1;
  return HM_OK;
}

void hm_hb_step(int64_t step) {
  if (!hm_hb.running) return;
  atomic_store(&hm_hb.step_wall, hm_wall_s());
  atomic_store(&hm_hb.step, (long long)step);
  hm_hb_write(1); /* at once: a step seen only at the next beat could be lost with the process */
}

void hm_hb_step_phase(int64_t step, int phase) {
  if (!hm_hb.running || phase < 0 || phase >= HM_HB_NPHASES) return;
  atomic_store(&hm_hb.step_wall, hm_wall_s());
  atomic_store(&hm_hb.step, (long long)step);
  atomic_store(&hm_hb.phase, phase);
  hm_hb_write(1); /* one mark: the step ends in the step phase, the next interval is the new phase's */
}

void hm_hb_phase(int phase) {
  if (!hm_hb.running || phase < 0 || phase >= HM_HB_NPHASES || atomic_load(&hm_hb.phase) == phase) return;
  atomic_store(&hm_hb.phase, phase);
  hm_hb_write(1);
}

void hm_hb_waiting(int waiting) {
  if (hm_hb.running) atomic_store(&hm_hb.waiting, waiting);
}

void hm_hb_stop(void) {
  if (!hm_hb.running) return;
  atomic_store(&hm_hb.stop, 1);
  pthread_join(hm_hb.thread, NULL);
  pthread_mutex_destroy(&hm_hb.lock);
  hm_hb_mark_end("exit\n");
  sigaction(SIGTERM, &hm_hb.old_term, NULL);
  hm_hb.running = 0;
}

hm_status hm_hb_read(const char *dir, int rank, hm_hb_state *out) {
  char path[1200], line[256];
  snprintf(path, sizeof path, "%s/rank%d", dir, rank);
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) return hm_error(HM_ERR_NOT_FOUND, "no heartbeat from rank %d yet (%s)", rank, path);
  int fields = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *v = strchr(line, ' ');
    if (!v) continue;
    *v++ = '\0';
    if (strcmp(line, "pid") == 0) out->pid = atoi(v), fields++;
    else if (strcmp(line, "host") == 0) hm_strcpy(out->host, sizeof out->host, v), fields++;
    else if (strcmp(line, "device") == 0) hm_strcpy(out->device, sizeof out->device, v), fields++;
    else if (strcmp(line, "beat") == 0) out->beat = strtoull(v, NULL, 10), fields++;
    else if (strcmp(line, "step") == 0) out->step = strtoll(v, NULL, 10), fields++;
    else if (strcmp(line, "step_wall") == 0) out->step_wall_s = strtod(v, NULL), fields++;
    else if (strcmp(line, "waiting") == 0) out->waiting = atoi(v), fields++;
    else if (strcmp(line, "phase") == 0) out->phase = atoi(v), fields++;
    else if (strcmp(line, "marks") == 0) out->marks = strtoull(v, NULL, 10), fields++;
  }
  fclose(f);
  if (out->phase < 0 || out->phase >= HM_HB_NPHASES) out->phase = HM_HB_STEP;
  if (fields < 9) return hm_error(HM_ERR_CORRUPT, "heartbeat %s is incomplete", path);
  return HM_OK;
}

int hm_hb_ended_orderly(const char *dir, int rank) {
  char path[1200];
  snprintf(path, sizeof path, "%s/rank%d.end", dir, rank);
  return access(path, F_OK) == 0;
}
