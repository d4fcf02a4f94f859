/* Exact non-uniform layer split for a given stage order: minimizes (m-1) * max_s T_s + sum_s T_s
 * under per-stage memory limits. Not a search over stage orders or degrees (search.c does that).
 *
 * Why it is exact: the optimum's bottleneck equals some segment time B*. For a cap B, the
 * min-sum DP S(B) over splits with every T_s <= B gives a split whose objective is at most
 * g(B) = (m-1) B + S(B), and g(B*) is the optimum, so min over caps of g is the answer. Caps
 * start at the min-max bottleneck; caps above (best - S(inf)) / (m-1) cannot win; S is a
 * non-increasing step function, so between two caps with equal S nothing beats the left one,
 * and an interval whose smallest cap plus the S at its right end reaches the best is skipped.
 * Layer times must be >= 0 (segment times then grow with the segment). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "util/util.h"

typedef struct split_ctx {
  const hm_split_problem *pb;
  int n, p;
  double *pt, *pms, *pma; /* (p, n+1) prefix sums of time, static and activation bytes */
  int *lo;                /* (p, n+1) smallest start i of a stage s ending at j that fits memory */
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
  c->lo = NULL;
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

static double objective_ctx(const split_ctx *c, const int *bounds) {
  double mx = 0, sum = 0;
  for (int s = 0; s < c->p; s++) {
    if (bounds[s + 1] <= bounds[s] || !seg_fits(c, s, bounds[s], bounds[s + 1])) return INFINITY;
    double t = seg_time(c, s, bounds[s], bounds[s + 1]);
    sum += t;
    if (t > mx) mx = t;
  }
  return (c->pb->nmicro - 1) * mx + sum;
}

double hm_split_objective(const hm_split_problem *pb, const int *bounds) {
  if (check_problem(pb) != HM_OK || !bounds || bounds[0] != 0 || bounds[pb->nstages] != pb->nlayers)
    return INFINITY;
  split_ctx c;
  if (ctx_init(&c, pb) != HM_OK) return INFINITY;
  const double obj = objective_ctx(&c, bounds);
  free(c.pt);
  return obj;
}

/* Memory only grows with the segment, so the starts that fit are an interval [lo, j-1]. */
static void compute_lo(split_ctx *c) {
  for (int s = 0; s < c->p; s++) {
    int i = s;
    for (int j = s + 1; j <= c->n; j++) {
      int *lo = &c->lo[(size_t)s * (c->n + 1) + j];
      if (s == 0) {
        *lo = seg_fits(c, 0, 0, j) ? 0 : j;
        continue;
      }
      while (i < j && !seg_fits(c, s, i, j)) i++;
      *lo = i;
    }
  }
}

static int first_start(const split_ctx *c, int s, int j) {
  int lo = c->lo[(size_t)s * (c->n + 1) + j];
  return lo > s ? lo : s;
}

/* Stage s may end at j in [s+1, n-(p-1-s)] and start at i in [s, j-1] (i = 0 for s = 0).
 * The DP loops walk i downwards: the segment's time and memory only grow, so they stop early. */

/* Min over splits of the largest stage time; INFINITY when nothing fits. */
static double minmax_bottleneck(const split_ctx *c, double *g) {
  const int n = c->n;
  for (int k = 0; k < c->p * (n + 1); k++) g[k] = INFINITY;
  for (int s = 0; s < c->p; s++)
    for (int j = s + 1; j <= n - (c->p - 1 - s); j++) {
      double *out = &g[(size_t)s * (n + 1) + j];
      for (int i = s == 0 ? 0 : j - 1; i >= first_start(c, s, j); i--) {
        double t = seg_time(c, s, i, j);
        if (t >= *out) break; /* longer segments only cost more */
        double prev = s == 0 ? 0.0 : g[(size_t)(s - 1) * (n + 1) + i];
        double v = prev > t ? prev : t;
        if (v < *out) *out = v;
        if (s == 0) break;
      }
    }
  return g[(size_t)(c->p - 1) * (n + 1) + n];
}

/* Min sum of stage times with every stage <= cap; fills arg for reconstruction. */
static double min_sum(const split_ctx *c, double cap, double *f, int *arg) {
  const int n = c->n;
  for (int k = 0; k < c->p * (n + 1); k++) f[k] = INFINITY;
  for (int s = 0; s < c->p; s++)
    for (int j = s + 1; j <= n - (c->p - 1 - s); j++) {
      double *out = &f[(size_t)s * (n + 1) + j];
      for (int i = s == 0 ? 0 : j - 1; i >= first_start(c, s, j); i--) {
        double t = seg_time(c, s, i, j);
        if (t > cap) break;
        double prev = s == 0 ? 0.0 : f[(size_t)(s - 1) * (n + 1) + i];
        if (prev + t < *out) {
          *out = prev + t;
          arg[(size_t)s * (n + 1) + j] = i;
        }
        if (s == 0) break;
      }
    }
  return f[(size_t)(c->p - 1) * (n + 1) + n];
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

/* The caps of the objective's outer minimization: g(B) = (m-1) B + S(B), S non-increasing. */
typedef struct split_search {
  const split_ctx *c;
  double *f;
  int *arg, *cand, *bounds;
  double best;
  int m;
  double *caps; /* sorted distinct segment times worth trying */
  int ncaps;
} split_search;

/* S(cap); the split it finds updates the best objective. */
static double eval_cap(split_search *ss, double cap) {
  double sum = min_sum(ss->c, cap, ss->f, ss->arg);
  if (sum < INFINITY) {
    reconstruct(ss->c, ss->arg, ss->cand);
    double obj = objective_ctx(ss->c, ss->cand);
    if (obj < ss->best) {
      ss->best = obj;
      memcpy(ss->bounds, ss->cand, (size_t)(ss->c->p + 1) * sizeof *ss->bounds);
    }
  }
  return sum;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static hm_status collect_caps(const split_ctx *c, double above, double below, double **out, int *n) {
  int cap = 256, k = 0;
  double *v = hm_malloc((size_t)cap * sizeof *v, "layer split caps");
  if (!v) return HM_ERR_NOMEM;
  for (int s = 0; s < c->p; s++)
    for (int j = s + 1; j <= c->n - (c->p - 1 - s); j++)
      for (int i = s == 0 ? 0 : j - 1; i >= first_start(c, s, j); i--) {
        double t = seg_time(c, s, i, j);
        if (t >= below) break;
        if (t > above) {
          if (k == cap) {
            double *nv = realloc(v, (size_t)cap * 2 * sizeof *v);
            if (!nv) {
              free(v);
              return hm_error(HM_ERR_NOMEM, "layer split: cannot grow the cap list");
            }
            v = nv;
            cap *= 2;
          }
          v[k++] = t;
        }
        if (s == 0) break;
      }
  qsort(v, (size_t)k, sizeof *v, cmp_double);
  int u = 0;
  for (int i = 0; i < k; i++)
    if (u == 0 || v[i] != v[u - 1]) v[u++] = v[i];
  *out = v;
  *n = u;
  return HM_OK;
}

/* Caps strictly between index a (S = sa) and b (S = sb); index -1 is cap0. Where S does not
 * change between a and b, nothing inside beats a; where even (m-1) * (first cap) + sb reaches
 * the best, nothing inside can improve it. Otherwise bisect. */
static void explore(split_search *ss, int a, double sa, int b, double sb) {
  if (b - a <= 1 || sa == sb) return;
  if ((ss->m - 1) * ss->caps[a + 1] + sb >= ss->best) return;
  int mid = a + (b - a) / 2;
  double sm = eval_cap(ss, ss->caps[mid]);
  explore(ss, a, sa, mid, sm);
  explore(ss, mid, sm, b, sb);
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
  c.lo = hm_malloc(sz * sizeof *c.lo, "layer split table");
  if (!c.lo) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  compute_lo(&c);
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
    best = objective_ctx(&c, bounds);
    goto done;
  }
  split_search ss = {.c = &c, .f = f, .arg = arg, .cand = cand, .bounds = bounds, .best = INFINITY,
                     .m = m};
  const double s0 = eval_cap(&ss, cap);
  const double limit = (ss.best - s_inf) / (m - 1);
  /* only caps below limit can beat best: (m-1) B + S(B) >= (m-1) B + s_inf */
  if ((st = collect_caps(&c, cap, limit, &ss.caps, &ss.ncaps)) != HM_OK) goto done;
  if (ss.ncaps > 0) {
    const double s_last = eval_cap(&ss, ss.caps[ss.ncaps - 1]);
    explore(&ss, -1, s0, ss.ncaps - 1, s_last);
  }
  free(ss.caps);
  best = ss.best;
done:
  if (st == HM_OK && objective) *objective = best;
  free(f);
  free(arg);
  free(cand);
  free(c.pt);
  free(c.lo);
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
