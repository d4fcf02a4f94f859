/* Exact non-uniform layer split for a given stage order: minimizes (m-1) * max_s T_s + sum_s T_s
 * under per-stage memory limits. Not a search over stage orders or degrees (search.c does that).
 *
 * Why it is exact: the optimum's bottleneck equals some segment time B*. For a cap B, the
 * min-sum DP S(B) over splits with every T_s <= B gives a split whose objective is at most
 * (m-1) B + S(B). Caps are tried in increasing order from the min-max bottleneck; once
 * (m-1) B + S(inf) reaches the best found, no larger cap can do better since S(B) >= S(inf). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "util/util.h"

typedef struct split_ctx {
  const hm_split_problem *pb;
  int n, p;
  double *pt, *pms, *pma; /* (p, n+1) prefix sums of time, static and activation bytes */
} split_ctx;

static double seg_time(const split_ctx *c, int s, int i, int j) {
  const double *pt = c->pt + (size_t)s * (c->n + 1);
  double t = pt[j] - pt[i];
  if (s < c->p - 1 && c->pb->boundary) t += c->pb->boundary[(size_t)s * c->n + j - 1];
  return t;
}

static int seg_fits(const split_ctx *c, int s, int i, int j) {
  if (!c->pb->mem_cap) return 1;
  const size_t o = (size_t)s * (c->n + 1);
  const int infl = c->pb->inflight ? c->pb->inflight[s]
                                   : (c->p - s < c->pb->nmicro ? c->p - s : c->pb->nmicro);
  double mem = (c->pms[o + j] - c->pms[o + i]) + infl * (c->pma[o + j] - c->pma[o + i]);
  return mem <= c->pb->mem_cap[s];
}

static hm_status check_problem(const hm_split_problem *pb) {
  if (!pb || !pb->time) return hm_error(HM_ERR_INVALID_ARG, "layer split: no layer times");
  if (pb->nstages < 1 || pb->nmicro < 1)
    return hm_error(HM_ERR_INVALID_ARG, "layer split: need stages >= 1 and micro-batches >= 1 "
                    "(got %d, %d)", pb->nstages, pb->nmicro);
  if (pb->nlayers < pb->nstages)
    return hm_error(HM_ERR_NO_FIT, "layer split: %d layers cannot fill %d stages", pb->nlayers,
                    pb->nstages);
  return HM_OK;
}

static hm_status ctx_init(split_ctx *c, const hm_split_problem *pb) {
  memset(c, 0, sizeof *c);
  c->pb = pb;
  c->n = pb->nlayers;
  c->p = pb->nstages;
  const size_t sz = (size_t)c->p * (c->n + 1);
  c->pt = hm_calloc(sz * 3, sizeof(double), "layer split prefix sums");
  if (!c->pt) return HM_ERR_NOMEM;
  c->pms = c->pt + sz;
  c->pma = c->pms + sz;
  for (int s = 0; s < c->p; s++) {
    const size_t o = (size_t)s * (c->n + 1), r = (size_t)s * c->n;
    for (int l = 0; l < c->n; l++) {
      c->pt[o + l + 1] = c->pt[o + l] + pb->time[r + l];
      c->pms[o + l + 1] = c->pms[o + l] + (pb->mem_static ? pb->mem_static[r + l] : 0.0);
      c->pma[o + l + 1] = c->pma[o + l] + (pb->mem_act ? pb->mem_act[r + l] : 0.0);
    }
  }
  return HM_OK;
}

double hm_split_objective(const hm_split_problem *pb, const int *bounds) {
  if (check_problem(pb) != HM_OK || !bounds || bounds[0] != 0 || bounds[pb->nstages] != pb->nlayers)
    return INFINITY;
  split_ctx c;
  if (ctx_init(&c, pb) != HM_OK) return INFINITY;
  double mx = 0, sum = 0;
  for (int s = 0; s < c.p; s++) {
    if (bounds[s + 1] <= bounds[s] || !seg_fits(&c, s, bounds[s], bounds[s + 1])) {
      free(c.pt);
      return INFINITY;
    }
    double t = seg_time(&c, s, bounds[s], bounds[s + 1]);
    sum += t;
    if (t > mx) mx = t;
  }
  free(c.pt);
  return (pb->nmicro - 1) * mx + sum;
}

/* Stage s may end at j in [s+1, n-(p-1-s)] and start at i in [s, j-1]. */
#define FOR_SEGMENTS(c, s, i, j)                           \
  for (int s = 0; s < (c)->p; s++)                         \
    for (int j = s + 1; j <= (c)->n - ((c)->p - 1 - s); j++) \
      for (int i = (s == 0 ? 0 : s); i <= (s == 0 ? 0 : j - 1); i++)

/* Min over splits of the largest stage time; INFINITY when nothing fits. */
static double minmax_bottleneck(const split_ctx *c, double *g) {
  const int n = c->n;
  for (int k = 0; k < c->p * (n + 1); k++) g[k] = INFINITY;
  FOR_SEGMENTS(c, s, i, j) {
    double prev = s == 0 ? 0.0 : g[(size_t)(s - 1) * (n + 1) + i];
    if (prev == INFINITY || !seg_fits(c, s, i, j)) continue;
    double t = seg_time(c, s, i, j), v = prev > t ? prev : t;
    if (v < g[(size_t)s * (n + 1) + j]) g[(size_t)s * (n + 1) + j] = v;
  }
  return g[(size_t)(c->p - 1) * (n + 1) + n];
}

/* Min sum of stage times with every stage <= cap; fills arg for reconstruction. */
static double min_sum(const split_ctx *c, double cap, double *f, int *arg) {
  const int n = c->n;
  for (int k = 0; k < c->p * (n + 1); k++) f[k] = INFINITY;
  FOR_SEGMENTS(c, s, i, j) {
    double prev = s == 0 ? 0.0 : f[(size_t)(s - 1) * (n + 1) + i];
    if (prev == INFINITY) continue;
    double t = seg_time(c, s, i, j);
    if (t > cap || !seg_fits(c, s, i, j)) continue;
    if (prev + t < f[(size_t)s * (n + 1) + j]) {
      f[(size_t)s * (n + 1) + j] = prev + t;
      arg[(size_t)s * (n + 1) + j] = i;
    }
  }
  return f[(size_t)(c->p - 1) * (n + 1) + n];
}

/* Smallest segment time above cap among segments that fit; INFINITY if none. */
static double next_cap(const split_ctx *c, double cap) {
  double best = INFINITY;
  FOR_SEGMENTS(c, s, i, j) {
    double t = seg_time(c, s, i, j);
    if (t > cap && t < best && seg_fits(c, s, i, j)) best = t;
  }
  return best;
}

static void reconstruct(const split_ctx *c, const int *arg, int *bounds) {
  int j = c->n;
  bounds[c->p] = c->n;
  for (int s = c->p - 1; s >= 0; s--) {
    int i = s == 0 ? 0 : arg[(size_t)s * (c->n + 1) + j];
    bounds[s] = i;
    j = i;
  }
}

hm_status hm_split_dp(const hm_split_problem *pb, int *bounds, double *objective) {
  HM_TRY(check_problem(pb));
  if (!bounds) return hm_error(HM_ERR_INVALID_ARG, "layer split: bounds is NULL");
  split_ctx c;
  HM_TRY(ctx_init(&c, pb));
  const size_t sz = (size_t)c.p * (c.n + 1);
  double *f = hm_malloc(sz * sizeof *f, "layer split table");
  int *arg = hm_calloc(sz, sizeof *arg, "layer split table");
  int *cand = hm_malloc((size_t)(c.p + 1) * sizeof *cand, "layer split bounds");
  hm_status st = HM_OK;
  double best = INFINITY;
  if (!f || !arg || !cand) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  double cap = minmax_bottleneck(&c, f);
  if (cap == INFINITY) {
    st = hm_error(HM_ERR_NO_FIT, "layer split: no split of %d layers into %d stages fits in memory",
                  c.n, c.p);
    goto done;
  }
  const int m = pb->nmicro;
  const double s_inf = min_sum(&c, INFINITY, f, arg);
  if (m == 1) { /* the objective is the sum alone */
    reconstruct(&c, arg, bounds);
    best = hm_split_objective(pb, bounds);
    goto done;
  }
  while (cap < INFINITY) {
    if (min_sum(&c, cap, f, arg) < INFINITY) {
      reconstruct(&c, arg, cand);
      double obj = hm_split_objective(pb, cand);
      if (obj < best) {
        best = obj;
        memcpy(bounds, cand, (size_t)(c.p + 1) * sizeof *bounds);
      }
    }
    double nc = next_cap(&c, cap);
    if (nc == INFINITY || (m - 1) * nc + s_inf >= best) break;
    cap = nc;
  }
done:
  if (st == HM_OK && objective) *objective = best;
  free(f);
  free(arg);
  free(cand);
  free(c.pt);
  return st;
}

static void enumerate(const hm_split_problem *pb, int *cur, int s, int *best_b, double *best) {
  const int p = pb->nstages, n = pb->nlayers;
  if (s == p) {
    double obj = hm_split_objective(pb, cur);
    if (obj < *best) {
      *best = obj;
      memcpy(best_b, cur, (size_t)(p + 1) * sizeof *cur);
    }
    return;
  }
  if (s == p - 1) {
    cur[p] = n;
    enumerate(pb, cur, p, best_b, best);
    return;
  }
  for (int j = cur[s] + 1; j <= n - (p - 1 - s); j++) {
    cur[s + 1] = j;
    enumerate(pb, cur, s + 1, best_b, best);
  }
}

hm_status hm_split_exhaustive(const hm_split_problem *pb, int *bounds, double *objective) {
  HM_TRY(check_problem(pb));
  if (!bounds) return hm_error(HM_ERR_INVALID_ARG, "layer split: bounds is NULL");
  int *cur = hm_calloc((size_t)pb->nstages + 1, sizeof *cur, "layer split bounds");
  if (!cur) return HM_ERR_NOMEM;
  double best = INFINITY;
  cur[0] = 0;
  enumerate(pb, cur, 0, bounds, &best);
  free(cur);
  if (objective) *objective = best;
  if (best == INFINITY)
    return hm_error(HM_ERR_NO_FIT, "layer split: no split of %d layers into %d stages fits in memory",
                    pb->nlayers, pb->nstages);
  return HM_OK;
}
