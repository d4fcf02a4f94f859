/* Heartbeat silence and progress watchdog over the workers of a job (watch.h).
 *
 * Silence: a rank whose beat counter has not changed for silence_ns after it was first seen is
 * stopped (SIGSTOP), frozen or dead: its heartbeat thread runs independently of training, so
 * silence is never a slow step. Watchdog: a rank that completed no step for the deadline
 * (floor, or HM_WATCH_FACTOR x the longest step seen so far, whichever is longer; first_ns for
 * its first step, counted from the job's start) is hung while still beating. When several
 * ranks are past the deadline, one whose training thread is not waiting on peers (heartbeat
 * "waiting 0": computing, writing, or stuck on its own) is named before those waiting on a
 * collective or a receive, which are its victims; among equals, the one whose progress stopped
 * first. */
#include "runtime/watch.h"

#include <stdlib.h>
#include <string.h>

#include "hetmix/runtime.h"
#include "util/util.h"

hm_status hm_watch_init(hm_watch *w, const char *dir, int n, int silence_ms, int floor_ms, int first_ms) {
  memset(w, 0, sizeof *w);
  w->r = hm_calloc((size_t)n, sizeof *w->r, "heartbeat watch");
  if (!w->r) return HM_ERR_NOMEM;
  w->dir = dir;
  w->n = n;
  w->start_ns = hm_now_ns();
  w->silence_ns = (uint64_t)(silence_ms > 0 ? silence_ms : 2000) * 1000000ull;
  w->floor_ns = (uint64_t)(floor_ms > 0 ? floor_ms : 0) * 1000000ull;
  uint64_t first = (uint64_t)(first_ms > 0 ? first_ms : 60000) * 1000000ull;
  w->first_ns = first > w->floor_ns ? first : w->floor_ns;
  w->steps_seen = -1;
  return HM_OK;
}

void hm_watch_free(hm_watch *w) {
  free(w->r);
  w->r = NULL;
}

uint64_t hm_watch_step_deadline(const hm_watch *w, int r) {
  if (w->r[r].step <= 0) return w->first_ns;
  uint64_t adaptive = HM_WATCH_FACTOR * w->longest_step_ns;
  return adaptive > w->floor_ns ? adaptive : w->floor_ns;
}

/* Takes in rank r's latest heartbeat. */
static void hm_watch_read(hm_watch *w, int r, uint64_t now) {
  hm_watch_rank *x = &w->r[r];
  hm_hb_state hb;
  if (hm_hb_read(w->dir, r, &hb) != HM_OK) return;
  if (!x->seen || hb.beat != x->beat) x->beat = hb.beat, x->beat_ns = now;
  if (!x->seen) x->step_ns = w->start_ns;
  if (hb.step != x->step) {
    /* the interval between two completions seen in this job; a rank's first completion counts
     * from the job's start (start-up included, so it can only lengthen the deadline): without it
     * a second step slower than the floor would be taken for a hang */
    const uint64_t since = x->seen && x->step > 0 ? x->step_ns : w->start_ns;
    if (now - since > w->longest_step_ns) w->longest_step_ns = now - since;
    x->step = hb.step;
    x->step_ns = now;
    if (hb.step > w->steps_seen) w->steps_seen = hb.step;
    if (hb.step_wall_s > 0 && (w->first_step_wall_s == 0 || hb.step_wall_s < w->first_step_wall_s))
      w->first_step_wall_s = hb.step_wall_s;
  }
  x->seen = 1;
  x->last = hb;
}

int hm_watch_check(hm_watch *w, uint64_t now, const int *exited, int *cause, double *idle_s) {
  int silent = -1, hung = -1, hung_waiting = 1;
  uint64_t hung_since = 0;
  for (int r = 0; r < w->n; r++) {
    if (exited && exited[r]) continue;
    hm_watch_read(w, r, now);
    const hm_watch_rank *x = &w->r[r];
    if (x->seen && now - x->beat_ns > w->silence_ns && silent < 0) silent = r;
    const uint64_t since = x->seen ? x->step_ns : w->start_ns;
    if (!x->seen || w->floor_ns == 0 || now - since <= hm_watch_step_deadline(w, r)) continue;
    /* prefer a rank working on its own over one waiting on peers, then the earliest stopped */
    const int waiting = x->last.waiting != 0;
    if (hung < 0 || waiting < hung_waiting || (waiting == hung_waiting && since < hung_since))
      hung = r, hung_since = since, hung_waiting = waiting;
  }
  if (silent >= 0) {
    *cause = HM_FAIL_SILENT;
    *idle_s = (double)(now - w->r[silent].beat_ns) * 1e-9;
    return silent;
  }
  if (hung >= 0) {
    *cause = HM_FAIL_HANG;
    *idle_s = (double)(now - hung_since) * 1e-9;
    return hung;
  }
  return -1;
}
