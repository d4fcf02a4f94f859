/* Heartbeat silence and progress watchdog over the workers of a job (watch.h), with deadlines
 * taken from the pace measured in the job (docs/runtime.md, "Failure model").
 *
 * Silence: a rank whose beat counter has not changed for max(silence floor, HM_WATCH_FACTOR x the
 * longest gap between two beats seen so far) after it was first seen is stopped (SIGSTOP),
 * frozen or dead: its heartbeat thread runs independently of training, so silence is never a
 * slow step. Watchdog: a rank that made no progress mark (a completed step, a phase change) for
 * its phase's deadline is hung while still beating. Each phase (steps, checkpoint snapshots,
 * evaluations) is timed on its own: the deadline is max(floor, HM_WATCH_FACTOR x the longest
 * interval of that phase seen so far); a rank's first step counts from the job's start (start-up
 * included) and sets the deadline of its second only; a phase's first time and the final phase
 * (the final dump) get first_ns. When several ranks are past the deadline, one whose training
 * thread is not waiting on peers (heartbeat "waiting 0": computing, writing, or stuck on its
 * own) is named before those waiting on a collective or a receive, which are its victims; among
 * equals, the one whose progress stopped first. A hang is judged only while every rank still
 * beats: a rank whose beats are late (twice the longest gap seen, three beat periods at least)
 * is stopped or frozen, and its fate is the silence deadline's to decide; otherwise a rank
 * stopped right after a progress mark, whose step deadline ends before its silence deadline,
 * would be named hung. */
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
  w->silence_floor_ns = (uint64_t)(silence_ms > 0 ? silence_ms : HM_SILENCE_FLOOR_MS) * 1000000ull;
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

static uint64_t hm_paced(uint64_t floor, uint64_t longest) {
  const uint64_t paced = HM_WATCH_FACTOR * longest;
  return paced > floor ? paced : floor;
}

uint64_t hm_watch_step_deadline(const hm_watch *w, int r) {
  const hm_watch_rank *x = &w->r[r];
  if (x->phase == HM_HB_FINAL) return w->first_ns;
  if (x->phase != HM_HB_STEP) return w->longest_ns[x->phase] ? hm_paced(w->floor_ns, w->longest_ns[x->phase]) : w->first_ns;
  if (x->nsteps <= 0) return w->first_ns;
  /* the first step (start-up included) paces only until a steady step was seen */
  return hm_paced(w->floor_ns, w->longest_ns[HM_HB_STEP] ? w->longest_ns[HM_HB_STEP] : w->first_step_ns);
}

uint64_t hm_watch_silence_deadline(const hm_watch *w) {
  return hm_paced(w->silence_floor_ns, w->longest_beat_ns);
}

/* Closes rank x's interval that a new progress mark ended: it counts for the phase it was
 * spent in (the last one read; a phase shorter than one poll is folded into its neighbour,
 * which can only lengthen that one's deadline). */
static void hm_watch_interval(hm_watch *w, hm_watch_rank *x, uint64_t now) {
  const uint64_t d = now - x->mark_ns;
  uint64_t *longest = x->phase == HM_HB_FINAL ? NULL
                      : x->phase == HM_HB_STEP && x->nsteps == 0 ? &w->first_step_ns
                                                                  : &w->longest_ns[x->phase];
  if (longest && d > *longest) *longest = d;
}

/* Takes in rank r's latest heartbeat. */
static void hm_watch_read(hm_watch *w, int r, uint64_t now) {
  hm_watch_rank *x = &w->r[r];
  hm_hb_state hb;
  if (hm_hb_read(w->dir, r, &hb) != HM_OK) return;
  if (!x->seen) { /* intervals count from the job's start */
    x->beat = hb.beat, x->beat_ns = now;
    x->step = hb.step, x->marks = hb.marks, x->mark_ns = w->start_ns, x->phase = hb.phase;
    if (hb.step > 0) { /* first read after its first steps: start-up and they took at most this */
      x->nsteps = 1;
      if (now - w->start_ns > w->first_step_ns) w->first_step_ns = now - w->start_ns;
    }
  }
  if (hb.beat != x->beat) {
    if (now - x->beat_ns > w->longest_beat_ns) w->longest_beat_ns = now - x->beat_ns;
    x->beat = hb.beat, x->beat_ns = now;
  }
  if (hb.marks != x->marks || hb.step != x->step) {
    hm_watch_interval(w, x, now);
    if (hb.step != x->step) x->nsteps++;
    x->marks = hb.marks, x->mark_ns = now, x->phase = hb.phase, x->step = hb.step;
  }
  if (hb.step > w->steps_seen) w->steps_seen = hb.step;
  if (hb.step_wall_s > 0 && (w->first_step_wall_s == 0 || hb.step_wall_s < w->first_step_wall_s))
    w->first_step_wall_s = hb.step_wall_s;
  x->seen = 1;
  x->last = hb;
}

/* A rank past its deadline while waiting on peers is a victim: the rank it waits for stopped at
 * about the same time, one step or less apart, but may have marked its last progress a little
 * later and so not be past the deadline yet. A rank not waiting that has made no progress for
 * over half its deadline (2.5 x the longest step at least: far more than any step takes) is that
 * culprit and is named instead; the one stopped earliest among such. */
static void hm_watch_culprit(const hm_watch *w, uint64_t now, const int *exited, int *hung, uint64_t *since,
                             uint64_t *limit) {
  int best = -1;
  for (int r = 0; r < w->n; r++) {
    const hm_watch_rank *x = &w->r[r];
    if ((exited && exited[r]) || !x->seen || x->last.waiting != 0) continue;
    const uint64_t lim = hm_watch_step_deadline(w, r);
    if (now - x->mark_ns > lim / 2 && (best < 0 || x->mark_ns < w->r[best].mark_ns)) best = r;
  }
  if (best < 0) return;
  *hung = best, *since = w->r[best].mark_ns, *limit = hm_watch_step_deadline(w, best);
}

/* Rank x's beats are later than its normal gaps: it may be stopped, and is not judged hung. */
static int hm_watch_beats_late(const hm_watch *w, const hm_watch_rank *x, uint64_t now) {
  uint64_t window = 2 * w->longest_beat_ns;
  if (window < 3ull * HM_HB_PERIOD_MS * 1000000ull) window = 3ull * HM_HB_PERIOD_MS * 1000000ull;
  return now - x->beat_ns > window;
}

int hm_watch_check(hm_watch *w, uint64_t now, const int *exited, int *cause, double *idle_s) {
  int silent = -1, hung = -1, hung_waiting = 1, late = 0;
  uint64_t hung_since = 0, hung_limit = 0;
  for (int r = 0; r < w->n; r++)
    if (!(exited && exited[r])) hm_watch_read(w, r, now);
  const uint64_t silence = hm_watch_silence_deadline(w);
  for (int r = 0; r < w->n; r++) {
    if (exited && exited[r]) continue;
    const hm_watch_rank *x = &w->r[r];
    if (!x->seen) continue;
    if (now - x->beat_ns > silence && silent < 0) silent = r;
    late |= hm_watch_beats_late(w, x, now);
    const uint64_t limit = hm_watch_step_deadline(w, r);
    if (w->floor_ns == 0 || now - x->mark_ns <= limit) continue;
    /* prefer a rank working on its own over one waiting on peers, then the earliest stopped */
    const int waiting = x->last.waiting != 0;
    if (hung < 0 || waiting < hung_waiting || (waiting == hung_waiting && x->mark_ns < hung_since))
      hung = r, hung_since = x->mark_ns, hung_waiting = waiting, hung_limit = limit;
  }
  if (silent >= 0) {
    *cause = HM_FAIL_SILENT;
    *idle_s = (double)(now - w->r[silent].beat_ns) * 1e-9;
    w->limit_s = (double)silence * 1e-9;
    return silent;
  }
  if (late) return -1; /* a rank may be stopped: the silence deadline names it */
  if (hung >= 0 && hung_waiting) hm_watch_culprit(w, now, exited, &hung, &hung_since, &hung_limit);
  if (hung >= 0) {
    *cause = HM_FAIL_HANG;
    *idle_s = (double)(now - hung_since) * 1e-9;
    w->limit_s = (double)hung_limit * 1e-9;
    return hung;
  }
  return -1;
}
