/* Split refinement by simulation: the layer split of search.c minimizes the formula
 * (m-1) max T_s + sum T_s, which is not the simulated timeline (docs/plan.md, section 4) and
 * ignores gradient sync and the optimizer; the micro-batches of replica classes come from
 * water-filling on the same formula. Around those choices, this moves one stage boundary of one
 * class by one layer, or one micro-batch per replica between two classes of equal replica
 * counts, at a time, and keeps a move when the simulated step gets shorter and every device stays within memory (first improvement, repeated until no move
 * helps or the round limit is reached). */
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

/* Moves boundary s (between stages s-1 and s) of class c by d; 0 when a stage would be empty. */
static int move_boundary(hm_plan_class *cl, int s, int d) {
  hm_plan_stage *a = &cl->stages[s - 1], *b = &cl->stages[s];
  const int at = b->layer_begin + d;
  if (at <= a->layer_begin || at >= b->layer_end) return 0;
  a->layer_end = at;
  b->layer_begin = at;
  return 1;
}

/* Trial i of a round: boundary moves first (class, boundary, direction), then micro-batch moves
 * between two classes of equal replica counts (one micro-batch per replica from a to b), then
 * two classes swapped in the plan's order. Returns
 * 0 when the trial does not apply, -1 past the last trial. */
static int make_trial(const hm_plan *p, int i, hm_plan *t) {
  *t = *p;
  for (int c = 0; c < p->nclasses; c++) {
    const int n = 2 * (p->classes[c].nstages - 1);
    if (i < n) return move_boundary(&t->classes[c], 1 + i / 2, i % 2 ? 1 : -1);
    i -= n;
  }
  const int nc = p->nclasses;
  if (i < nc * nc) {
    hm_plan_class *a = &t->classes[i / nc], *b = &t->classes[i % nc];
    if (a == b || a->nreplicas != b->nreplicas || a->nmicro < 2) return 0;
    a->nmicro--;
    b->nmicro++;
    return 1;
  }
  i -= nc * nc; /* two classes swapped: the order of classes decides which gradient sync waits */
  if (i >= nc * nc) return -1;
  if (i / nc >= i % nc) return 0;
  t->classes[i / nc] = p->classes[i % nc];
  t->classes[i % nc] = p->classes[i / nc];
  return 1;
}

hm_status hm_plan_refine(const hm_plan_inputs *in, hm_plan *p, int max_rounds, int64_t *nsim) {
  hm_plan *trial = hm_malloc(sizeof *trial, "plan");
  if (!trial) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int round = 0, improved = 1; improved && round < max_rounds && st == HM_OK; round++) {
    improved = 0;
    for (int i = 0, r; !improved && (r = make_trial(p, i, trial)) >= 0; i++) {
      if (!r) continue;
      if (nsim) (*nsim)++;
      if ((st = hm_plan_predict(in, trial, NULL)) != HM_OK) break;
      if (trial->over_memory || trial->step_time >= p->step_time) continue;
      *p = *trial;
      improved = 1;
    }
  }
  free(trial);
  return st;
}
