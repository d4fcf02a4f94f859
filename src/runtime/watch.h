/* The launcher's watch over its workers' heartbeats (watch.c): heartbeat silence and the
 * progress watchdog, both with deadlines taken from the pace measured in the job. Internal to
 * the runtime. */
#ifndef HETMIX_WATCH_H
#define HETMIX_WATCH_H

#include <stdint.h>

#include "hetmix/status.h"
#include "runtime/heartbeat.h"

typedef struct hm_watch_rank {
  int seen;           /* a heartbeat was read */
  uint64_t beat;      /* last beat counter, and when it last changed (monotonic ns) */
  uint64_t beat_ns;
  long long step;     /* last step count */
  long long nsteps;   /* steps seen completed in this job */
  uint64_t marks;     /* last progress-mark counter, and when it last changed */
  uint64_t mark_ns;
  int phase;          /* the phase last read (HM_HB_*) */
  hm_hb_state last;   /* the last heartbeat read */
} hm_watch_rank;

typedef struct hm_watch {
  const char *dir;
  int n;
  hm_watch_rank *r;
  uint64_t start_ns;
  uint64_t first_step_ns;         /* longest time from the job's start to a rank's first step */
  uint64_t longest_ns[HM_HB_NPHASES]; /* per phase, the longest interval seen (steps: after the
                                         first of each rank) */
  uint64_t longest_beat_ns;       /* longest gap between two beats of one rank */
  uint64_t silence_floor_ns, floor_ns, first_ns;
  long long steps_seen;     /* -1 before any */
  double first_step_wall_s; /* 0 before any */
  double limit_s;           /* the deadline the last failure found was judged against */
} hm_watch;

/* silence_ms: the floor of the silence deadline [1000]; floor_ms: the watchdog's floor (0: no
 * watchdog); first_ms: the deadline of a rank's first step, a phase's first time and the
 * final phase [max(60000, floor)]. */
hm_status hm_watch_init(hm_watch *w, const char *dir, int n, int silence_ms, int floor_ms, int first_ms);
void hm_watch_free(hm_watch *w);
/* Reads every rank's heartbeat. Returns a failed rank and sets *cause (HM_FAIL_SILENT or
 * HM_FAIL_HANG) and *idle_s (how long it was silent or without progress), or -1. exited[r] != 0
 * skips rank r (its exit is judged by its status instead). */
int hm_watch_check(hm_watch *w, uint64_t now_ns, const int *exited, int *cause, double *idle_s);
/* The watchdog's deadline for rank r's current phase now (ns): max(floor, HM_WATCH_FACTOR x the
 * longest interval of that phase seen); a rank's first step first_ns from the job's start, its
 * second max(floor, HM_WATCH_FACTOR x the first); a phase never completed before, and the final
 * phase, first_ns. */
uint64_t hm_watch_step_deadline(const hm_watch *w, int r);
/* The silence deadline now (ns): max(silence floor, HM_WATCH_FACTOR x the longest beat gap). */
uint64_t hm_watch_silence_deadline(const hm_watch *w);

#endif
