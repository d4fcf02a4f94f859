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

/* Seconds of virtual stage j's layers [lo, hi). */
static double chunk_time(const double *time, int n, int j, int lo, int hi) {
  double t = 0;
  for (int l = lo; l < hi; l++) t += time[(size_t)j * n + l];
  return t;
}

/* The DP minimizes (m v - 1) B + S over the chunks (B the largest), but in the steady state each
 * device runs all v of its chunks per micro-batch, so the largest sum of a device's chunks sets
 * the pace, and splits of equal B can differ there (Llama-2-70B on 4 MI250 stages, v = 7: the DP's
 * 27 chunks of 3 layers and the head alone leave the last device 2 layers short of the others;
 * one block moved to the head's chunk simulated 0.4% faster in a two-class plan; but an A100-only
 * plan of mixed-10240-3types simulated 0.9% slower balanced, so it is a further candidate where
 * asked, not a replacement of the DP's split). So layers move
 * one at a time across a chunk boundary, from the device of the larger sum to the other's, while
 * both sums end below the larger, no chunk empties and none exceeds B. Each move lowers the sum of
 * the squared device sums, so it ends; deterministic (boundaries in order). */
static void balance_devices(const double *time, int n, int p, int pv, int *bounds, double B) {
  double dev[HM_PLAN_MAX_STAGES] = {0};
  for (int j = 0; j < pv; j++) dev[j % p] += chunk_time(time, n, j, bounds[j], bounds[j + 1]);
  const double eps = 1e-12 * B;
  for (int moved = 1, rounds = 0; moved && rounds < 4 * n; rounds++) {
    moved = 0;
    for (int k = 1; k < pv; k++) { /* boundary between chunks k-1 and k */
      const int a = (k - 1) % p, b = k % p, l = bounds[k];
      /* the last layer of chunk k-1 to chunk k, or the first of chunk k to chunk k-1 */
      const int down = dev[a] > dev[b];
      const int from = down ? k - 1 : k, to = down ? k : k - 1, layer = down ? l - 1 : l;
      if (bounds[from + 1] - bounds[from] < 2) continue;
      const double w_from = time[(size_t)from * n + layer], w_to = time[(size_t)to * n + layer];
      const double hi = dev[down ? a : b], lo = dev[down ? b : a];
      if (!(lo + w_to < hi - eps && hi - w_from < hi - eps)) continue;
      if (chunk_time(time, n, to, bounds[to], bounds[to + 1]) + w_to > B + eps) continue;
      bounds[k] += down ? -1 : 1;
      dev[from % p] -= w_from;
      dev[to % p] += w_to;
      moved = 1;
    }
  }
}

/* Class c (plain, p device stages) as v chunks: layers split over p*v virtual stages; *est: the
 * class's estimated pipeline time. */
static hm_status split_chunks(const hm_plan_inputs *in, ilv_scratch *x, int64_t mb,
                              hm_plan_class *c, int v, int balance, double *est) {
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
  for (int j = 0; j < pv; j++) B = fmax(B, chunk_time(x->time, n, j, bounds[j], bounds[j + 1]));
  if (balance) balance_devices(x->time, n, p, pv, bounds, B);
  B = 0;
  for (int j = 0; j < pv; j++) {
    const double t = chunk_time(x->time, n, j, bounds[j], bounds[j + 1]);
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

int hm_plan_class_chunks_fit(const hm_plan_class *c, int v, int nlayers, int maxp) {
  const int p = hm_plan_class_devstages(c);
  return v >= 2 && p >= 2 && p * v <= maxp && p * v <= nlayers &&
         c->nmicro <= HM_SEARCH_INTERLEAVE_MAX_MICRO;
}

hm_status hm_plan_class_rechunk(const hm_plan_inputs *in, int64_t mb, hm_plan_class *c, int v,
                                int balance) {
  ilv_scratch *x = hm_calloc(1, sizeof *x, "interleave scratch");
  hm_status st = HM_ERR_NOMEM;
  if (x) x->time = hm_malloc((size_t)HM_PLAN_MAX_STAGES * in->model->nlayers * sizeof(double),
                             "interleave scratch");
  if (x && x->time) {
    c->nstages = hm_plan_class_devstages(c); /* its device stages, in order, as a plain class */
    c->nchunks = 1;
    double est;
    st = split_chunks(in, x, mb, c, v, balance, &est);
  }
  if (x) {
    for (int i = 0; i < x->ncosts; i++) hm_layer_costs_free(&x->costs[i]);
    free(x->time);
  }
  free(x);
  return st;
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
        st = split_chunks(in, x, trial->micro_batch, &trial->classes[c], v, 0, &e);
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
