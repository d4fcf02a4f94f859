/* Fault-injection hooks for the restart tests and the soak benchmark (heartbeat.h): a worker
 * kills, stops, hangs or slows itself at a given step when HETMIX_FAULT asks it to, on the
 * first attempt of a job only (HETMIX_ATTEMPT absent or 0), or on attempt A for an entry with
 * ":attempt=A" (a device that keeps failing). Inert without the variable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/heartbeat.h"

typedef struct hm_fault {
  char kind[16];
  int rank, step, attempt;
  double factor;
} hm_fault;

static int hm_attempt_now(void) {
  const char *a = getenv("HETMIX_ATTEMPT");
  return a ? atoi(a) : 0;
}

/* Parses one "kind:rank=R:step=K[:factor=F]" entry; 0 when it is not one. */
static int hm_fault_parse(const char *s, size_t n, hm_fault *f) {
  char buf[128];
  if (n >= sizeof buf) return 0;
  memcpy(buf, s, n);
  buf[n] = '\0';
  memset(f, 0, sizeof *f);
  f->rank = -1, f->step = -1, f->attempt = 0, f->factor = 1.0;
  char *save = NULL, *tok = strtok_r(buf, ":", &save);
  if (!tok || strlen(tok) >= sizeof f->kind) return 0;
  strcpy(f->kind, tok);
  while ((tok = strtok_r(NULL, ":", &save)) != NULL) {
    if (strncmp(tok, "rank=", 5) == 0) f->rank = atoi(tok + 5);
    else if (strncmp(tok, "step=", 5) == 0) f->step = atoi(tok + 5);
    else if (strncmp(tok, "factor=", 7) == 0) f->factor = atof(tok + 7);
    else if (strncmp(tok, "attempt=", 8) == 0) f->attempt = atoi(tok + 8);
  }
  return f->rank >= 0 && f->step >= 0;
}

/* The entry of HETMIX_FAULT of that kind for rank (at step, or at any step when step < 0). */
static int hm_fault_find(const char *kind, int rank, int step, hm_fault *out) {
  const char *spec = getenv("HETMIX_FAULT");
  if (!spec || !*spec) return 0;
  const int attempt = hm_attempt_now();
  for (const char *p = spec; *p;) {
    size_t n = strcspn(p, ";");
    if (hm_fault_parse(p, n, out) && strcmp(out->kind, kind) == 0 && out->rank == rank &&
        out->attempt == attempt && (step < 0 || out->step == step))
      return 1;
    p += n;
    if (*p == ';') p++;
  }
  return 0;
}

static void hm_fault_announce(const char *kind, int rank, int step) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char line[160];
  int n = snprintf(line, sizeof line, "hetmix fault: %s rank %d step %d at %.6f\n", kind, rank, step,
                   (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
  ssize_t w = write(2, line, (size_t)n);
  (void)w;
}

void hm_fault_point(int where, int rank, int step) {
  hm_fault f;
  if (where == HM_FAULT_CKPT) {
    if (hm_fault_find("ckptkill", rank, step, &f)) hm_fault_announce("ckptkill", rank, step), raise(SIGKILL);
    return;
  }
  if (hm_fault_find("kill", rank, step, &f)) hm_fault_announce("kill", rank, step), raise(SIGKILL);
  if (hm_fault_find("stop", rank, step, &f)) hm_fault_announce("stop", rank, step), raise(SIGSTOP);
  if (hm_fault_find("hang", rank, step, &f)) {
    hm_fault_announce("hang", rank, step);
    for (;;) pause(); /* the launcher's watchdog ends this process */
  }
}

double hm_fault_slow_factor(int rank, int step) {
  hm_fault f;
  if (!hm_fault_find("slow", rank, -1, &f) || step < f.step || !(f.factor > 1.0)) return 1.0;
  if (step == f.step) hm_fault_announce("slow", rank, step);
  return f.factor;
}

void hm_fault_slow_step(int rank, int step, double *busy_s, double *fb_s) {
  const double f = hm_fault_slow_factor(rank, step);
  if (f <= 1.0 || !(*busy_s > 0)) return;
  const double extra = (f - 1.0) * *busy_s;
  *fb_s += extra; /* the rebalancer's pace follows it too */
  struct timespec ts = {(time_t)extra, (long)((extra - (double)(time_t)extra) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
  *busy_s *= f;
}
