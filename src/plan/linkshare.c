/* Transfers that share one link (the link between pools) as a fluid: every device that is moving
 * bytes over it at a moment gets an equal share of its bandwidth, at most its own NIC's. Used by
 * the simulator's gradient sync across pools (docs/plan.md, section 2: "Cost of the sync across
 * pools"): buckets that cross at the same time divide the link, a bucket crossing alone gets it
 * whole. Event-driven and exact for that model: between two events (a job starting, ending one of
 * its parts) the share is constant. */
#include <math.h>
#include <stdlib.h>

#include "plan/plan_internal.h"
#include "util/util.h"

enum { WAITING, BEFORE, SHARED, AFTER, DONE };

typedef struct track_state {
  int job, end_job;  /* next or running job; one past the track's last */
  int phase;
  double until;      /* end of BEFORE / AFTER */
  double left;       /* SHARED: bytes per device still to move */
  double free;       /* when the previous job ended */
  double event;      /* time of the track's next transition */
} track_state;

/* Time of the track's next transition at per-device rate `rate` from time t. */
static double next_event(const hm_share_job *jobs, const track_state *ts, double t, double rate) {
  switch (ts->phase) {
    case WAITING: return fmax(jobs[ts->job].ready, ts->free);
    case BEFORE:
    case AFTER: return ts->until;
    case SHARED: return ts->left > 0 ? t + ts->left / rate : t;
    default: return INFINITY;
  }
}

/* Moves the track to its next part at time t. */
static void transition(hm_share_job *jobs, track_state *ts, double t) {
  hm_share_job *j = &jobs[ts->job];
  switch (ts->phase) {
    case WAITING:
      j->start = t;
      ts->phase = BEFORE;
      ts->until = t + j->pre;
      break;
    case BEFORE:
      ts->phase = SHARED;
      ts->left = j->devices > 0 ? j->bytes : 0.0;
      break;
    case SHARED:
      ts->phase = AFTER;
      ts->until = t + j->post;
      break;
    case AFTER:
      j->end = ts->until;
      ts->free = ts->until;
      ts->phase = ++ts->job < ts->end_job ? WAITING : DONE;
      break;
    default: break;
  }
}

hm_status hm_share_run(hm_share_job *jobs, const int *first, const double *track_free, int ntracks,
                       double capacity, double cap) {
  if (ntracks <= 0) return HM_OK;
  track_state *ts = hm_calloc((size_t)ntracks, sizeof *ts, "shared link tracks");
  if (!ts) return HM_ERR_NOMEM;
  for (int i = 0; i < ntracks; i++) {
    ts[i] = (track_state){.job = first[i], .end_job = first[i + 1], .free = track_free[i]};
    ts[i].phase = ts[i].job < ts[i].end_job ? WAITING : DONE;
  }
  double t = -INFINITY;
  for (;;) {
    double sharing = 0; /* devices moving bytes over the link now */
    for (int i = 0; i < ntracks; i++)
      if (ts[i].phase == SHARED && ts[i].left > 0) sharing += jobs[ts[i].job].devices;
    double rate = capacity / fmax(sharing, 1.0);
    if (cap > 0 && cap < rate) rate = cap;
    double tnext = INFINITY;
    for (int i = 0; i < ntracks; i++) {
      ts[i].event = next_event(jobs, &ts[i], t, rate);
      if (ts[i].event < tnext) tnext = ts[i].event;
    }
    if (tnext == INFINITY) break;
    for (int i = 0; i < ntracks; i++)
      if (ts[i].phase == SHARED && ts[i].left > 0)
        ts[i].left = ts[i].event <= tnext ? 0.0 : ts[i].left - rate * (tnext - t);
    t = tnext;
    for (int i = 0; i < ntracks; i++)
      if (ts[i].event <= tnext) transition(jobs, &ts[i], t);
  }
  free(ts);
  return HM_OK;
}
