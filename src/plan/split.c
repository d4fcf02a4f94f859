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
  double *bt;             /* (p, n+1) boundary seconds of stage s ending at j (0 on the last) */
  int *infl;              /* (p) micro-batches in flight on stage s */
  int *lo;                /* (p, n+1) smallest start i of a stage s ending at j that fits memory */
  unsigned char *use;     /* (p, n+1) stage s may end at j in some split that fits (compute_use) */
  int *ulo, *uhi;         /* (p) smallest and largest such j of stage s (ulo > uhi: none) */
} split_ctx;

/* Time of stage s over layers [i, j): the prefix difference plus the boundary term. Adding a
 * boundary of 0.0 leaves a non-negative difference unchanged, so one expression serves all. */
static double seg_time(const split_ctx *c, int s, int i, int j) {
  const double *pt = c->pt + (size_t)s * (c->n + 1);
  return (pt[j] - pt[i]) + c->bt[(size_t)s * (c->n + 1) + j];
}

static int seg_fits(const split_ctx *c, int s, int i, int j) {
  if (!c->pb->mem_cap) return 1;
  const size_t o = (size_t)s * (c->n + 1);
  const int infl = c->infl[s];
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

/* Prefix sums, boundary terms and in-flight counts, computed once per problem. */
static void ctx_fill(split_ctx *c) {
  const hm_split_problem *pb = c->pb;
  for (int s = 0; s < c->p; s++) {
    const size_t o = (size_t)s * (c->n + 1), r = (size_t)s * c->n;
    c->pt[o] = c->pms[o] = c->pma[o] = c->bt[o] = 0.0;
    for (int l = 0; l < c->n; l++) {
      c->pt[o + l + 1] = c->pt[o + l] + pb->time[r + l];
      c->pms[o + l + 1] = c->pms[o + l] + (pb->mem_static ? pb->mem_static[r + l] : 0.0);
      c->pma[o + l + 1] = c->pma[o + l] + (pb->mem_act ? pb->mem_act[r + l] : 0.0);
      c->bt[o + l + 1] = s < c->p - 1 && pb->boundary ? pb->boundary[r + l] : 0.0;
    }
    c->infl[s] = pb->inflight ? pb->inflight[s] : (c->p - s < pb->nmicro ? c->p - s : pb->nmicro);
  }
}

static hm_status ctx_init(split_ctx *c, const hm_split_problem *pb) {
  memset(c, 0, sizeof *c);
  c->pb = pb;
  c->n = pb->nlayers;
  c->p = pb->nstages;
  const size_t sz = (size_t)c->p * (c->n + 1);
  /* every entry is written by ctx_fill: no need to clear it first */
  c->pt = hm_malloc((sz * 4 + (size_t)c->p) * sizeof(double), "layer split prefix sums");
  if (!c->pt) return HM_ERR_NOMEM;
  c->pms = c->pt + sz;
  c->pma = c->pms + sz;
  c->bt = c->pma + sz;
  c->infl = (int *)(c->bt + sz); /* p ints fit in the p doubles after bt */
  c->lo = NULL;
  ctx_fill(c);
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

/* use[s][j]: some split that fits memory has stage s end at j, i.e. (s, j) is reachable from
 * layer 0 (forward) and reaches layer n with the stages after s (backward); memory only, so it
 * holds under every cap. The DPs compute only these entries, and that is exact: an entry that
 * is not reachable forward stays INFINITY in every DP (INFINITY + t or max(INFINITY, t) never
 * improves anything), and an entry (s-1, i) read by a useful (s, j) through a segment that fits
 * is reachable backward through it, so every entry a useful one reads is computed as before.
 * The final entry (p-1, n) and the argmin path back from it are useful. */
static void mark_forward(split_ctx *c, int *cnt) {
  const int n = c->n, w = n + 1;
  for (int j = 1; j <= n; j++) c->use[j] = j <= n - (c->p - 1) && first_start(c, 0, j) == 0;
  for (int s = 1; s < c->p; s++) {
    const unsigned char *prev = c->use + (size_t)(s - 1) * w;
    cnt[0] = 0; /* cnt[i]: reachable ends of stage s-1 below i */
    for (int i = 0; i < n; i++) cnt[i + 1] = cnt[i] + prev[i];
    for (int j = s + 1; j <= n - (c->p - 1 - s); j++)
      c->use[(size_t)s * w + j] = cnt[j] - cnt[first_start(c, s, j)] > 0;
  }
}

static void mark_backward(split_ctx *c, int *cover) {
  const int n = c->n, w = n + 1;
  unsigned char *last = c->use + (size_t)(c->p - 1) * w;
  for (int j = 0; j < n; j++) last[j] = 0;
  for (int s = c->p - 1; s >= 1; s--) {
    /* cover[i] > 0: some reachable end j of stage s has a start at i that fits */
    memset(cover, 0, (size_t)(w + 1) * sizeof *cover);
    for (int j = s + 1; j <= n; j++)
      if (c->use[(size_t)s * w + j]) {
        cover[first_start(c, s, j)]++;
        cover[j]--;
      }
    unsigned char *prev = c->use + (size_t)(s - 1) * w;
    for (int i = 0, run = 0; i <= n; i++) {
      run += cover[i];
      prev[i] = prev[i] && run > 0;
    }
  }
}

static void compute_use(split_ctx *c, int *tmp) {
  memset(c->use, 0, (size_t)c->p * (c->n + 1));
  mark_forward(c, tmp);
  mark_backward(c, tmp);
  for (int s = 0; s < c->p; s++) {
    c->ulo[s] = c->n + 1;
    c->uhi[s] = 0;
    for (int j = s + 1; j <= c->n - (c->p - 1 - s); j++) /* the ends stage s can have */
      if (c->use[(size_t)s * (c->n + 1) + j]) {
        if (j < c->ulo[s]) c->ulo[s] = j;
        c->uhi[s] = j;
      }
  }
}

/* Starts of stage s > 0 ending at j worth scanning, from hi down to lo: those of
 * [first_start, j-1] inside stage s-1's useful window. A start cut off is not useful although
 * it is reachable backward through this fitting segment, so it is not reachable forward and
 * reads INFINITY (no effect) in the DPs; and
 * cutting them never skips a break: segment times only grow as i falls, so a segment over
 * the bound at a cut start above hi is over it at hi too. */
static void start_range(const split_ctx *c, int s, int j, int *hi, int *lo) {
  const int f = first_start(c, s, j);
  *hi = j - 1 < c->uhi[s - 1] ? j - 1 : c->uhi[s - 1];
  *lo = f > c->ulo[s - 1] ? f : c->ulo[s - 1];
}

/* Stage s may end at j in [s+1, n-(p-1-s)] and start at i in [s, j-1] (i = 0 for s = 0).
 * The DP loops walk i downwards: the segment's time and memory only grow, so they stop early. */

/* Min over splits of the largest stage time; INFINITY when nothing fits. */
static double minmax_bottleneck(const split_ctx *c, double *g) {
  const int n = c->n, w = n + 1;
  for (int k = 0; k < c->p * w; k++) g[k] = INFINITY;
  for (int j = c->ulo[0]; j <= c->uhi[0]; j++)
    if (c->use[j]) g[j] = seg_time(c, 0, 0, j); /* max(0.0, t) < INFINITY for t >= 0 */
  for (int s = 1; s < c->p; s++)
    for (int j = c->ulo[s]; j <= c->uhi[s]; j++) {
      if (!c->use[(size_t)s * w + j]) continue;
      double *out = &g[(size_t)s * w + j];
      int hi, lo;
      start_range(c, s, j, &hi, &lo);
      for (int i = hi; i >= lo; i--) {
        double t = seg_time(c, s, i, j);
        if (t >= *out) break; /* longer segments only cost more */
        double prev = g[(size_t)(s - 1) * w + i];
        double v = prev > t ? prev : t;
        if (v < *out) *out = v;
      }
    }
  return g[(size_t)(c->p - 1) * w + n];
}

/* Best start of stage s > 0 ending at j under cap: min over i of prev[i] + T(i, j), walking i
 * downwards from hi to lo and stopping at the first segment over the cap (segments only grow);
 * ties keep the larger i. The row pointers and the boundary term are loop invariants. Returns
 * -1 when no start improves *out. */
static int best_start(const double *pt, const double *prev, double ptj, double b, int hi, int lo,
                      double cap, double *out) {
  double best = *out;
  int arg = -1;
  for (int i = hi; i >= lo; i--) {
    const double t = (ptj - pt[i]) + b;
    if (t > cap) break;
    const double v = prev[i] + t;
    const int better = v < best; /* selects, not branches: the outcome is data-dependent */
    arg = better ? i : arg;
    best = better ? v : best;
  }
  *out = best;
  return arg;
}

/* Min sum of stage times with every stage <= cap; fills arg for reconstruction. */
static double min_sum(const split_ctx *c, double cap, double *f, int *arg) {
  const int n = c->n, w = n + 1;
  for (int k = 0; k < c->p * w; k++) f[k] = INFINITY;
  for (int j = c->ulo[0]; j <= c->uhi[0]; j++) { /* stage 0 starts at layer 0 */
    const double t = seg_time(c, 0, 0, j);
    if (c->use[j] && !(t > cap) && 0.0 + t < f[j]) {
      f[j] = 0.0 + t;
      arg[j] = 0;
    }
  }
  for (int s = 1; s < c->p; s++) {
    const size_t o = (size_t)s * w;
    const double *pt = c->pt + o, *bt = c->bt + o, *prev = f + o - w;
    for (int j = c->ulo[s]; j <= c->uhi[s]; j++) {
      if (!c->use[o + j]) continue;
      int hi, lo;
      start_range(c, s, j, &hi, &lo);
      const int i = best_start(pt, prev, pt[j], bt[j], hi, lo, cap, &f[o + j]);
      if (i >= 0) arg[o + j] = i;
    }
  }
  return f[(size_t)(c->p - 1) * w + n];
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

/* Segment times in (above, below), sorted and distinct. above >= 0 (a min-max bottleneck), so
 * every value kept is > 0 and the radix sort orders them as a comparison sort would. */
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
  hm_status st = hm_sort_positive(v, (size_t)k);
  if (st != HM_OK) {
    free(v);
    return st;
  }
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
  c.lo = hm_malloc((sz + 2 * (size_t)c.p + c.n + 2) * sizeof *c.lo, "layer split table");
  c.use = hm_malloc(sz, "layer split table");
  if (!c.lo || !c.use) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  c.ulo = c.lo + sz;
  c.uhi = c.ulo + c.p;
  compute_lo(&c);
  compute_use(&c, c.uhi + c.p); /* n+2 ints of scratch */
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
  free(c.use);
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
