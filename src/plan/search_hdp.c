/* Heterogeneous data parallelism with each class its own schedule (docs/plan.md, section 6):
 * replica classes of one device type each, built from that type's best single-type templates
 * (those of the upper bound's own search), the global batch split between the classes by their
 * simulated speed at the share they get, and each class interleaved on its own (its own v, or
 * plain 1F1B) at that share. Family 2 of search.c water-fills plain-1F1B estimates of each
 * type's single best template; a class that gets few micro-batches has a larger bubble than
 * that template had with the whole batch, so another template (less memory per device, which
 * leaves room for interleaving) and another split can be faster; every plan here is simulated
 * whole, gradient sync across the classes included. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

/* Rounds of "simulate each class at its share, split again by the speeds measured". */
#define HDP_ROUNDS 2

/* Class 0 of type plan tp alone, with m micro-batches per replica and R replicas, interleaved on
 * its own when that is faster: the class in *out, its step alone in *step (INFINITY when it does
 * not fit). */
static hm_status class_alone(const hm_plan_inputs *in, const hm_plan *tp, int R, int m, int maxp,
                             int max_chunks, hm_plan *scratch, hm_plan_class *out, double *step,
                             int64_t *nsim) {
  hm_train t1 = *in->train;
  const hm_plan_inputs in1 = {in->cluster, in->model, &t1, in->profile};
  memset(scratch, 0, sizeof *scratch);
  scratch->micro_batch = tp->micro_batch;
  scratch->nclasses = 1;
  scratch->classes[0] = tp->classes[0];
  scratch->classes[0].nreplicas = R;
  scratch->classes[0].nmicro = m;
  scratch->global_batch = t1.global_batch = (int64_t)R * m * tp->micro_batch;
  if (nsim) (*nsim)++;
  HM_TRY(hm_plan_predict(&in1, scratch, NULL));
  if (max_chunks > 1) HM_TRY(hm_plan_interleave(&in1, scratch, maxp, max_chunks, nsim));
  *out = scratch->classes[0];
  *step = scratch->over_memory ? INFINITY : scratch->step_time;
  return HM_OK;
}

/* Splits M micro-batches over the classes (R[i] replicas, speed rate[i] micro-batches per second
 * per replica): real shares m[i] with sum R[i] m[i] = M, at least one each. */
static void shares(int n, const int *R, const double *rate, int64_t M, double *m) {
  double sum = 0;
  for (int i = 0; i < n; i++) sum += R[i] * rate[i];
  for (int i = 0; i < n; i++) {
    m[i] = (double)M * rate[i] / sum;
    if (m[i] < 1) m[i] = 1;
  }
}

/* Builds the plan of the shares: class i gets floor(m[i]) micro-batches per replica, and the
 * micro-batches left over go one per replica to the classes that would finish first with one
 * more (a class split in two: some replicas with one more). Returns 0 when it cannot. */
static int build(const hm_plan_class *cls, int n, const int *R, const double *m,
                 const double *rate, int64_t M, int64_t mb, hm_plan *p) {
  int fl[HM_PLAN_MAX_TYPES], extra[HM_PLAN_MAX_TYPES] = {0};
  int64_t left = M;
  for (int i = 0; i < n; i++) {
    fl[i] = (int)floor(m[i]);
    if (fl[i] < 1) fl[i] = 1;
    left -= (int64_t)R[i] * fl[i];
  }
  while (left > 0) { /* one replica of the class whose replicas would end first gets one more */
    int bi = -1;
    double bt = INFINITY;
    for (int i = 0; i < n; i++) {
      if (extra[i] == R[i]) continue;
      const double t = (fl[i] + 1) / rate[i];
      if (t < bt) bt = t, bi = i;
    }
    if (bi < 0) return 0;
    /* the rest of this class's replicas at once when enough are left */
    int64_t take = (int64_t)(R[bi] - extra[bi]) < left ? R[bi] - extra[bi] : left;
    extra[bi] += (int)take;
    left -= take;
  }
  if (left < 0) return 0;
  memset(p, 0, sizeof *p);
  p->micro_batch = mb;
  for (int i = 0; i < n; i++) {
    if (p->nclasses + 2 > HM_PLAN_MAX_CLASSES) return 0;
    if (extra[i] > 0) {
      p->classes[p->nclasses] = cls[i];
      p->classes[p->nclasses].nreplicas = extra[i];
      p->classes[p->nclasses++].nmicro = fl[i] + 1;
    }
    if (R[i] - extra[i] > 0) {
      p->classes[p->nclasses] = cls[i];
      p->classes[p->nclasses].nreplicas = R[i] - extra[i];
      p->classes[p->nclasses++].nmicro = fl[i];
    }
  }
  p->global_batch = M * mb;
  return 1;
}

static int replicas_of(const hm_plan *p) {
  int r = 0;
  for (int c = 0; c < p->nclasses; c++) r += p->classes[c].nreplicas;
  return r;
}

/* One combination: plan pick[i] of each type used; *out (predicted) when it fits. */
static hm_status combine(const hm_plan_inputs *in, const hm_plan *const *pick, int n, int maxp,
                         int max_chunks, hm_plan *scratch, hm_plan *out, int *ok, int64_t *nsim) {
  *ok = 0;
  const int64_t mb = pick[0]->micro_batch, M = in->train->global_batch / mb;
  int R[HM_PLAN_MAX_TYPES];
  double rate[HM_PLAN_MAX_TYPES], m[HM_PLAN_MAX_TYPES];
  hm_plan_class cls[HM_PLAN_MAX_TYPES];
  int64_t Rsum = 0;
  for (int i = 0; i < n; i++) {
    if (pick[i]->micro_batch != mb) return HM_OK;
    R[i] = replicas_of(pick[i]);
    Rsum += R[i];
    /* its speed alone with the batch it was planned for */
    rate[i] = (double)(pick[i]->global_batch / mb) / R[i] / pick[i]->step_time;
  }
  if (Rsum > M) return HM_OK;
  for (int round = 0; round < HDP_ROUNDS; round++) {
    shares(n, R, rate, M, m);
    for (int i = 0; i < n; i++) {
      int mi = (int)floor(m[i] + 0.5);
      double step;
      if (mi < 1) mi = 1;
      HM_TRY(class_alone(in, pick[i], R[i], mi, maxp, max_chunks, scratch, &cls[i], &step, nsim));
      if (!(step < INFINITY)) return HM_OK;
      rate[i] = mi / step;
    }
  }
  shares(n, R, rate, M, m);
  if (!build(cls, n, R, m, rate, M, mb, out)) return HM_OK;
  if (nsim) (*nsim)++;
  HM_TRY(hm_plan_predict(in, out, NULL));
  *ok = !out->over_memory;
  return HM_OK;
}

/* Whether classes a and b run on the same device stages (types and tp, in order): the two parts
 * of a class split by micro-batch count. */
static int same_devstages(const hm_plan_class *a, const hm_plan_class *b) {
  const int p = hm_plan_class_devstages(a);
  if (hm_plan_class_devstages(b) != p) return 0;
  for (int s = 0; s < p; s++)
    if (a->stages[s].type != b->stages[s].type || a->stages[s].tp != b->stages[s].tp) return 0;
  return 1;
}

/* The classes c.. that run on c's device stages (c and the other part of it when it was split by
 * micro-batch count): one past the last. */
static int group_end(const hm_plan *p, int c) {
  int d = c + 1;
  while (d < p->nclasses && same_devstages(&p->classes[c], &p->classes[d])) d++;
  return d;
}

/* Class group [c, end) of best as v chunks (balance: the device-balanced split); 0 when some
 * class cannot run v chunks or the split equals best's. */
static hm_status rechunk_group(const hm_plan_inputs *in, const hm_plan *best, int c, int end, int v,
                               int balance, int maxp, hm_plan *trial, int *ok) {
  *trial = *best;
  *ok = 1;
  for (int d = c; d < end && *ok; d++) {
    *ok = hm_plan_class_chunks_fit(&trial->classes[d], v, in->model->nlayers, maxp);
    if (*ok) HM_TRY(hm_plan_class_rechunk(in, trial->micro_batch, &trial->classes[d], v, balance));
  }
  int same = *ok;
  for (int d = c; d < end && same; d++) {
    const hm_plan_class *a = &trial->classes[d], *b = &best->classes[d];
    same = a->nstages == b->nstages && hm_plan_class_chunks(a) == hm_plan_class_chunks(b);
    for (int s = 0; s < a->nstages && same; s++)
      same = a->stages[s].layer_begin == b->stages[s].layer_begin &&
             a->stages[s].layer_end == b->stages[s].layer_end;
  }
  if (same) *ok = 0;
  return HM_OK;
}

/* The chunk count of each class chosen on the whole plan. Each class (with the other part of it,
 * when it was split by micro-batch count) was interleaved alone, by an estimate that leaves out
 * what the classes do to each other, the gradient sync across them above all (the buckets of the
 * first layers, whose holders finish the backward last, wait for every class's holders and end
 * the step); so every v from 2 up that fits is tried for it with the other classes unchanged, its
 * layers split again over its virtual stages by the DP and, as a second candidate, with the sums
 * of each device's chunks evened out, and the plan simulated whole; the fastest within memory is
 * kept. */
static hm_status chunks_on_whole_plan(const hm_plan_inputs *in, hm_plan *best, int maxp,
                                      int max_chunks, hm_plan *trial, int64_t *nsim) {
  for (int c = 0; c < best->nclasses; c = group_end(best, c)) {
    const int end = group_end(best, c);
    for (int v = 2; v <= max_chunks; v++)
      for (int balance = 0; balance < 2; balance++) {
        int ok;
        HM_TRY(rechunk_group(in, best, c, end, v, balance, maxp, trial, &ok));
        if (!ok) continue;
        if (nsim) (*nsim)++;
        HM_TRY(hm_plan_predict(in, trial, NULL));
        if (!trial->over_memory && trial->step_time < best->step_time) *best = *trial;
      }
  }
  return HM_OK;
}

hm_status hm_plan_hetero_dp(const hm_plan_inputs *in, const hm_plan *const *type_plans,
                            const int *nplans, int ntypes, int maxp, int max_chunks,
                            hm_plan *best, int *found, int64_t *nsim) {
  *found = 0;
  hm_plan *scratch = hm_malloc(sizeof *scratch, "plan"), *trial = hm_malloc(sizeof *trial, "plan");
  hm_status st = HM_OK;
  if (!scratch || !trial) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  /* every choice of one plan (or none) per type, at least two types used */
  int idx[HM_PLAN_MAX_TYPES] = {0}; /* 0: type unused, j > 0: its plan j-1 */
  for (;;) {
    const hm_plan *pick[HM_PLAN_MAX_TYPES];
    int n = 0;
    for (int k = 0; k < ntypes; k++)
      if (idx[k] > 0) pick[n++] = &type_plans[k][idx[k] - 1];
    if (n >= 2) {
      int ok;
      if ((st = combine(in, pick, n, maxp, max_chunks, scratch, trial, &ok, nsim)) != HM_OK) break;
      if (ok && (!*found || trial->step_time < best->step_time)) {
        *best = *trial;
        *found = 1;
      }
    }
    int k = 0;
    while (k < ntypes && idx[k] == nplans[k]) idx[k++] = 0;
    if (k == ntypes) break;
    idx[k]++;
  }
  if (st == HM_OK && *found && max_chunks > 1)
    st = chunks_on_whole_plan(in, best, maxp, max_chunks, trial, nsim);
done:
  free(scratch);
  free(trial);
  return st;
}
