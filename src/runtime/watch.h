/* The launcher's watch over its workers' heartbeats (watch.c): heartbeat silence and the
 * progress watchdog. Internal to the runtime. */
#ifndef HETMIX_WATCH_H
#define HETMIX_WATCH_H

#include <stdint.h>

#include "hetmix/status.h"
#include "runtime/heartbeat.h"

typedef struct hm_watch_rank {
  int seen;           /* a heartbeat was read */
  uint64_t beat;      /* last beat counter, and when it last changed (monotonic ns) */
  uint64_t beat_ns;
  long long step;     /* last step count, and when it last changed */
  uint64_t step_ns;
  hm_hb_state last;   /* the last heartbeat read */
} hm_watch_rank;

typedef struct hm_watch {
  const char *dir;
  int n;
  hm_watch_rank *r;
  uint64_t start_ns;
  uint64_t longest_step_ns; /* longest time between two step completions of one rank */
  uint64_t silence_ns, floor_ns, first_ns;
  long long steps_seen;     /* -1 before any */
  double first_step_wall_s; /* 0 before any */
} hm_watch;

hm_status hm_watch_init(hm_watch *w, const char *dir, int n, int silence_ms, int floor_ms, int first_ms);
void hm_watch_free(hm_watch *w);
/* Reads every rank's heartbeat. Returns a failed rank and sets *cause (HM_FAIL_SILENT or
 * HM_FAIL_HANG) and *idle_s (how long it was silent or without a step), or -1. exited[r] != 0
 * skips rank r (its exit is judged by its status instead). */
int hm_watch_check(hm_watch *w, uint64_t now_ns, const int *exited, int *cause, double *idle_s);
/* The deadline for a step of rank r now (ns). */
uint64_t hm_watch_step_deadline(const hm_watch *w, int r);

#endif
