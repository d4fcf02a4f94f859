/* Fail-slow localization (failslow.c): from every rank's measured compute per micro-batch each
 * step, and the plan's prediction where there is one, find a rank that is persistently slower
 * than predicted and than its peers. Internal to the runtime.
 *
 * Rule (docs/runtime.md, "Failure model"): rank i's ratio is measured / expected, expected being
 * the plan's predicted compute per micro-batch for its stage and device, or, where the plan has
 * none, the median of the rank's own first HM_FS_BASELINE_STEPS measured steps. Its slowdown is
 * its ratio over the median ratio of the other ranks (over its own baseline ratio when it is
 * alone), so a machine-wide slowdown (load, clock) flags nobody. A step counts as slow when the
 * slowdown exceeds HM_FS_THRESHOLD and the compute exceeds the peers' pace by at least
 * HM_FS_MIN_EXCESS_S per micro-batch. A rank slow on HM_FS_HITS of its last HM_FS_WINDOW steps
 * is reported once (one or two noisy steps neither raise nor hide it: a rank slowed from step
 * k on is reported after step k+2, k+4 at the latest); it may be reported again after
 * HM_FS_WINDOW steps in a row that were not slow. */
#ifndef HETMIX_FAILSLOW_H
#define HETMIX_FAILSLOW_H

#include "hetmix/status.h"

#define HM_FS_THRESHOLD 2.0 /* a device at half speed or worse; smaller differences are what the
                               rebalancer (--rebalance) evens out from measured pace anyway */
#define HM_FS_MIN_EXCESS_S 0.010 /* and at least this much compute per step above it: a timer
                                    and scheduler's noise (a time slice) is not a slow device */
#define HM_FS_WINDOW 5
#define HM_FS_HITS 3
#define HM_FS_BASELINE_STEPS 3

typedef struct hm_failslow {
  int n;             /* ranks */
  int steps;         /* steps seen */
  double *base;      /* (n * HM_FS_BASELINE_STEPS) first measured values per rank */
  double *base_ratio; /* (n) own baseline ratio (alone: the reference) */
  unsigned *hist;    /* (n) bit j: slow j steps ago */
  int *reported;     /* (n) 1 while reported */
} hm_failslow;

hm_status hm_failslow_init(hm_failslow *fs, int n);
void hm_failslow_free(hm_failslow *fs);

/* One step: measured[i] and expected[i] (seconds per micro-batch; expected 0 = no prediction).
 * A rank counts as slow this step when measured[i] > HM_FS_THRESHOLD * peer * ref[i] and
 * measured[i] - peer * ref[i] >= HM_FS_MIN_EXCESS_S, peer being the others' median ratio.
 * Sets newly[i] = 1 for each rank reported at this step (else 0), and ref[i] to the expected
 * time the rank was judged against (seconds per micro-batch). Returns how many were reported. */
int hm_failslow_step(hm_failslow *fs, const double *measured, const double *expected, int *newly, double *ref);

/* The pipeline's call after each step (after its warm-up step): busy[r*p + s] is the step's
 * compute of replica r's stage s, busy[R*p + r*p + s] its predicted compute per micro-batch
 * (0: none), split[r] the micro-batches replica r ran. Calls o->on_slow for each rank reported;
 * returns how many. */
struct hm_pipeline_options;
int hm_failslow_pipe_step(hm_failslow *fs, const struct hm_pipeline_options *o, int rank, int steps_done, int p,
                          const int *split, const double *busy);

#endif
