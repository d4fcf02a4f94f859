/* Split refinement by simulation: the layer split of search.c minimizes the formula
 * (m-1) max T_s + sum T_s, which is not the simulated timeline (docs/plan.md, section 4) and
 * ignores gradient sync and the optimizer; the micro-batches of replica classes come from
 * water-filling on the same formula. Around those choices, this moves one layer between two
 * stages of one class (the stages between keep their counts and shift), one micro-batch per
 * replica between two classes of equal replica counts, or swaps two classes, one move at a
 * time, and keeps a move when the simulated step gets shorter and every device stays within
 * memory (first improvement, repeated until no move helps or the simulation budget is spent; on
 * small clusters micro-batch moves are tried before layer moves).
 * Without `ranges`, layers move only between neighbouring stages. */
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

/* Moves the boundaries a+1..b of class c by d (d = +1: stage a takes a layer from stage b, the
 * stages between keep their counts and shift; d = -1: the reverse); 0 when a stage would be
 * empty. b = a+1 moves one boundary. */
static int move_range(hm_plan_class *cl, int a, int b, int d) {
  for (int s = a + 1; s <= b; s++) {
    hm_plan_stage *x = &cl->stages[s - 1], *y = &cl->stages[s];
    x->layer_end += d;
    y->layer_begin += d;
  }
  for (int s = a; s <= b; s++)
    if (cl->stages[s].layer_end <= cl->stages[s].layer_begin) return 0;
  return 1;
}

/* Micro-batch move i: one micro-batch per replica from class i / nc to class i % nc (equal
 * replica counts). Returns 0 when it does not apply. */
static int micro_trial(const hm_plan *p, int i, hm_plan *t) {
  const int nc = p->nclasses;
  const hm_plan_class *a = &p->classes[i / nc], *b = &p->classes[i % nc];
  if (a == b || a->nreplicas != b->nreplicas || a->nmicro < 2) return 0;
  *t = *p;
  t->classes[i / nc].nmicro--;
  t->classes[i % nc].nmicro++;
  return 1;
}

/* Trial i of a round: layer moves (class, stages a < b, direction) and micro-batch moves
 * between two classes of equal replica counts (one micro-batch per replica from a to b), then
 * two classes swapped in the plan's order. With `ranges` (small clusters) the micro-batch moves
 * come first: a layer move that helps a little can otherwise end the search beside a better
 * micro-batch move (seed 139 of bench_search_exact: 3.2%). Returns 0 when the trial does not
 * apply, -1 past the last trial. t (a whole plan) is copied from p only for a trial that applies:
 * most indices do not (a layer move between stages that are not neighbours, without ranges). */
static int make_trial(const hm_plan *p, int i, int ranges, hm_plan *t) {
  const int nc = p->nclasses;
  if (ranges && i < nc * nc) return micro_trial(p, i, t);
  if (ranges) i -= nc * nc;
  for (int c = 0; c < p->nclasses; c++) {
    const int ns = p->classes[c].nstages, n = 2 * ns * ns;
    if (i < n) {
      const int a = i / (2 * ns), b = (i / 2) % ns;
      if (b <= a || (!ranges && b != a + 1)) return 0;
      *t = *p;
      return move_range(&t->classes[c], a, b, i % 2 ? 1 : -1);
    }
    i -= n;
  }
  if (!ranges && i < nc * nc) return micro_trial(p, i, t);
  if (!ranges) i -= nc * nc;
  /* two classes swapped: the order of classes decides which gradient sync waits */
  if (i >= nc * nc) return -1;
  if (i / nc >= i % nc) return 0;
  *t = *p;
  t->classes[i / nc] = p->classes[i % nc];
  t->classes[i % nc] = p->classes[i / nc];
  return 1;
}

hm_status hm_plan_refine(const hm_plan_inputs *in, hm_plan *p, int ranges, int max_sims,
                         int64_t *nsim) {
  hm_plan *trial = hm_malloc(sizeof *trial, "plan");
  if (!trial) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int sims = 0, improved = 1; improved && sims < max_sims && st == HM_OK;) {
    improved = 0;
    for (int i = 0, r; !improved && sims < max_sims && (r = make_trial(p, i, ranges, trial)) >= 0;
         i++) {
      if (!r) continue;
      sims++;
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
