/* Interleaved 1F1B in the search: a simulated plan's pipelines are tried with v model chunks per
 * device stage (v = 2..HM_SEARCH_MAX_CHUNKS), each class's layers split again over its p*v virtual
 * stages (virtual stage j on the devices of stage j % p) by the exact DP of split.c on the
 * layer times of each stage's type and tp; the three values of v with the best estimate
 * (m v - 1) B + S / v (B, S: largest and summed chunk time, the fill and drain being one chunk
 * per stage) are simulated, and the faster is kept when its simulated step is shorter within
 * memory. The simulator charges its costs: v times the pipeline
 * sends (every chunk boundary crosses devices, the last stage sends back to the first), the
 * activations of the longer warm-up each device holds (a longer one when p does not divide m:
 * the last micro-batch group is larger). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

/* Whether class c can run v chunks (docs/plan.md, section 1). */
static int chunks_fit(const hm_plan_class *c, int v, int nlayers, int maxp) {
  const int p = hm_plan_class_devstages(c);
  return hm_plan_class_chunks(c) == 1 && p >= 2 && p * v <= maxp && p * v <= nlayers &&
         c->nmicro <= HM_SEARCH_INTERLEAVE_MAX_MICRO;
}

/* Values of v simulated per plan: those of the best estimates. */
enum { NCAND = 3 };

typedef struct ilv_scratch {
  int ncosts;
  hm_layer_costs costs[HM_PLAN_MAX_TYPES * 4];
  double *time; /* (HM_PLAN_MAX_STAGES, n) */
} ilv_scratch;

static hm_status costs_for(const hm_plan_inputs *in, ilv_scratch *x, int type, int tp, int64_t mb,
                           const hm_layer_costs **out) {
  for (int i = 0; i < x->ncosts; i++)
    if (x->costs[i].type == type && x->costs[i].tp == tp && x->costs[i].mb == mb) {
      *out = &x->costs[i];
      return HM_OK;
    }
  if (x->ncosts == (int)(sizeof x->costs / sizeof x->costs[0]))
    return hm_error(HM_ERR_INTERNAL, "interleave: more than %d (type, tp) pairs", x->ncosts);
  HM_TRY(hm_layer_costs_init(in, type, tp, mb, &x->costs[x->ncosts]));
  *out = &x->costs[x->ncosts++];
  return HM_OK;
}

/* Class c (plain, p device stages) as v chunks: layers split over p*v virtual stages; *est: the
 * class's estimated pipeline time. */
static hm_status split_chunks(const hm_plan_inputs *in, ilv_scratch *x, int64_t mb,
                              hm_plan_class *c, int v, double *est) {
  const int p = c->nstages, pv = p * v, n = in->model->nlayers;
  for (int j = 0; j < pv; j++) {
    const hm_layer_costs *lc = NULL;
    HM_TRY(costs_for(in, x, c->stages[j % p].type, c->stages[j % p].tp, mb, &lc));
    for (int l = 0; l < n; l++) x->time[(size_t)j * n + l] = lc->fwd[l] + lc->bwd[l];
  }
  /* each device runs v chunks per micro-batch: the chunk bottleneck repeats m*v times */
  hm_split_problem pb = {.nlayers = n, .nstages = pv, .nmicro = c->nmicro * v, .time = x->time};
  int bounds[HM_PLAN_MAX_STAGES + 1];
  double obj;
  HM_TRY(hm_split_dp(&pb, bounds, &obj));
  double B = 0, S = 0;
  for (int j = 0; j < pv; j++) {
    double t = 0;
    for (int l = bounds[j]; l < bounds[j + 1]; l++) t += x->time[(size_t)j * n + l];
    B = t > B ? t : B;
    S += t;
  }
  *est = ((double)c->nmicro * v - 1) * B + S / v;
  for (int j = pv - 1; j >= 0; j--) {
    c->stages[j] = (hm_plan_stage){.type = c->stages[j % p].type, .tp = c->stages[j % p].tp};
    c->stages[j].layer_begin = bounds[j];
    c->stages[j].layer_end = bounds[j + 1];
  }
  c->nstages = pv;
  c->nchunks = v;
  return HM_OK;
}

hm_status hm_plan_interleave(const hm_plan_inputs *in, hm_plan *p, int maxp, int max_chunks,
                             int64_t *nsim) {
  ilv_scratch *x = hm_calloc(1, sizeof *x, "interleave scratch");
  hm_plan *trial = hm_malloc(sizeof *trial, "plan"), *best = hm_malloc(sizeof *best, "plan");
  hm_plan *cand = hm_malloc(NCAND * sizeof *cand, "plan");
  double cest[NCAND];
  for (int i = 0; i < NCAND; i++) cest[i] = INFINITY;
  hm_status st = HM_OK;
  if (x) x->time = hm_malloc((size_t)HM_PLAN_MAX_STAGES * in->model->nlayers * sizeof(double),
                             "interleave scratch");
  if (!x || !x->time || !trial || !best || !cand) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  *best = *p;
  for (int v = 2; v <= max_chunks && st == HM_OK; v++) {
    *trial = *p;
    int any = 0;
    double est = 0, e;
    for (int c = 0; c < trial->nclasses && st == HM_OK; c++)
      if (chunks_fit(&trial->classes[c], v, in->model->nlayers, maxp)) {
        st = split_chunks(in, x, trial->micro_batch, &trial->classes[c], v, &e);
        est = e > est ? e : est;
        any = 1;
      }
    if (st != HM_OK || !any) continue;
    int slot = NCAND; /* keep the NCAND best estimates, sorted */
    while (slot > 0 && est < cest[slot - 1]) slot--;
    if (slot == NCAND) continue;
    for (int i = NCAND - 1; i > slot; i--) cand[i] = cand[i - 1], cest[i] = cest[i - 1];
    cand[slot] = *trial, cest[slot] = est;
  }
  for (int i = 0; i < NCAND && st == HM_OK && cest[i] < INFINITY; i++) {
    if (nsim) (*nsim)++;
    if ((st = hm_plan_predict(in, &cand[i], NULL)) != HM_OK) break;
    if (!cand[i].over_memory && cand[i].step_time < best->step_time) *best = cand[i];
  }
  if (st == HM_OK) *p = *best;
done:
  if (x) {
    for (int i = 0; i < x->ncosts; i++) hm_layer_costs_free(&x->costs[i]);
    free(x->time);
  }
  free(x);
  free(trial);
  free(best);
  free(cand);
  return st;
}
