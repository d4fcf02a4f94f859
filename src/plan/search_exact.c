/* Exhaustive plan search for small clusters: the oracle the default search (search.c) is tested
 * against. Space (docs/plan.md, section 6): every micro-batch size; every tensor-parallel degree
 * per type (plan.json holds one degree per type); every stage order, device types interleaved
 * (a, b, b, a); every layer split, each judged by the simulator; plans of one or two stage orders
 * with any replica counts that fit, every micro-batch count of the first and the rest spread
 * evenly over the second (each order's replicas may hold m and m-1 micro-batches). A class's split
 * is the best of every split simulated for one replica of it at its micro-batch count; the plan
 * is then simulated whole. Pruning is exact: a split, a class or a plan is skipped only when a
 * lower bound of its simulated step time is no better than the best plan found. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

enum { XMAXP = 12, XMAXN = 16, XMAXM = 256 };

typedef struct xseq {
  int p;
  signed char t[XMAXP];
  int use[HM_PLAN_MAX_TYPES]; /* stages of each type */
} xseq;

typedef struct xmemo {
  double g;                    /* best simulated one-replica step, or a bound >= the best plan */
  double lb;                   /* seq_bound (0: not computed yet) */
  int have;                    /* 1: g computed */
  int found;                   /* 1: bounds hold the split reaching g */
  unsigned char b[XMAXP + 1];
} xmemo;

typedef struct xctx {
  const hm_plan_inputs *in;
  int n, K, maxp, M;
  int64_t mb;
  int tp[HM_PLAN_MAX_TYPES];
  int64_t groups[HM_PLAN_MAX_TYPES];
  hm_layer_costs lc[HM_PLAN_MAX_TYPES];
  xseq *seqs;
  int nseq, capseq;
  xmemo *memo; /* [seq][m] */
  hm_plan best, tmp;
  double best_t;
  int64_t nsim;
  hm_status st;
} xctx;

static int add_seq(xctx *x, const xseq *s) {
  if (x->nseq >= 200000) return 0;
  if (x->nseq == x->capseq) {
    int cap = x->capseq ? 2 * x->capseq : 256;
    xseq *n = realloc(x->seqs, (size_t)cap * sizeof *n);
    if (!n) return 0;
    x->seqs = n;
    x->capseq = cap;
  }
  x->seqs[x->nseq++] = *s;
  return 1;
}

/* Every stage order of at most maxp stages whose type counts fit the tensor-parallel groups. */
static int enum_seqs(xctx *x, xseq *s) {
  if (s->p > 0 && !add_seq(x, s)) return 0;
  if (s->p == x->maxp || s->p == x->n) return 1;
  for (int k = 0; k < x->K; k++) {
    if (x->tp[k] == 0 || s->use[k] >= x->groups[k]) continue;
    s->t[s->p++] = (signed char)k;
    s->use[k]++;
    int ok = enum_seqs(x, s);
    s->use[k]--;
    s->p--;
    if (!ok) return 0;
  }
  return 1;
}

static double layer_time(const xctx *x, int k, int l) { return x->lc[k].fwd[l] + x->lc[k].bwd[l]; }

/* Lower bound of the one-replica step of a split with m micro-batches: stage s cannot start
 * before micro-batch 0 crossed the stages before it, runs its 2m ops, and its last backward must
 * cross back: max_s (m T_s + sum_{j<s} T_j); then the gradient norm waits for all of them and
 * every stage's optimizer step follows it: + max_s O_s. */
static double split_bound(const xctx *x, const xseq *q, const unsigned char *b, int m) {
  double pre = 0, lb = 0, opt = 0;
  for (int s = 0; s < q->p; s++) {
    double t = 0, o = 0;
    for (int l = b[s]; l < b[s + 1]; l++) {
      t += layer_time(x, q->t[s], l);
      o += x->lc[(int)q->t[s]].opt[l];
    }
    if (m * t + pre > lb) lb = m * t + pre;
    if (o > opt) opt = o;
    pre += t;
  }
  return lb + opt; /* every optimizer step waits for the gradient norm, after every backward */
}

/* Smallest split_bound over every split (exact DP over the end of stage s). */
static double seq_bound(const xctx *x, const xseq *q, int m) {
  const int n = x->n;
  /* f[s][e]: smallest bound of stages 0..s-1 ending at layer e, with each stage's prefix
   * replaced by the sum of the fastest times of the layers before it (no larger) */
  double f[XMAXP + 1][XMAXN + 1];
  double fast[XMAXN + 1];
  fast[0] = 0;
  double opt = 0; /* the largest stage's optimizer is at least the mean of the smallest */
  for (int l = 0; l < n; l++) {
    double best = INFINITY, ob = INFINITY;
    for (int s = 0; s < q->p; s++) {
      double t = layer_time(x, q->t[s], l), o = x->lc[(int)q->t[s]].opt[l];
      if (t < best) best = t;
      if (o < ob) ob = o;
    }
    fast[l + 1] = fast[l] + best;
    opt += ob / q->p;
  }
  for (int s = 0; s <= q->p; s++)
    for (int e = 0; e <= n; e++) f[s][e] = INFINITY;
  f[0][0] = 0;
  for (int s = 0; s < q->p; s++)
    for (int a = s; a < n; a++) {
      if (f[s][a] == INFINITY) continue;
      double t = 0;
      for (int e = a + 1; e <= n - (q->p - 1 - s); e++) {
        t += layer_time(x, q->t[s], e - 1);
        double v = m * t + fast[a];
        if (v < f[s][a]) v = f[s][a];
        if (v < f[s + 1][e]) f[s + 1][e] = v;
      }
    }
  return f[q->p][n] + opt;
}

static double bound_of(xctx *x, int qi, int m) {
  xmemo *e = &x->memo[(size_t)qi * (x->M + 1) + m];
  if (e->lb == 0) e->lb = seq_bound(x, &x->seqs[qi], m);
  return e->lb;
}

/* Simulates a plan (over-memory plans give INFINITY). */
static double simulate_plan(xctx *x, hm_plan *p) {
  p->micro_batch = x->mb;
  p->global_batch = 0;
  x->nsim++;
  hm_status st = hm_plan_predict(x->in, p, NULL);
  if (st == HM_ERR_SPEC) { /* a layer's tp_divides, caught before: never here */
    hm_clear_error();
    return INFINITY;
  }
  if (st != HM_OK) {
    x->st = st;
    return INFINITY;
  }
  return p->over_memory ? INFINITY : p->step_time;
}

static void set_class(xctx *x, hm_plan_class *c, const xseq *q, const unsigned char *b, int R,
                      int m) {
  memset(c, 0, sizeof *c);
  c->nreplicas = R;
  c->nmicro = m;
  c->nstages = q->p;
  for (int s = 0; s < q->p; s++) {
    c->stages[s].type = q->t[s];
    c->stages[s].tp = x->tp[(int)q->t[s]];
    c->stages[s].layer_begin = b[s];
    c->stages[s].layer_end = b[s + 1];
  }
}

typedef struct xsplit {
  double lb;
  unsigned char b[XMAXP + 1];
} xsplit;

static int cmp_split(const void *a, const void *b) {
  double x = ((const xsplit *)a)->lb, y = ((const xsplit *)b)->lb;
  return x < y ? -1 : x > y;
}

/* Every split of q, in order of its bound; returns the number written (at most cap). */
static int all_splits(const xctx *x, const xseq *q, int m, xsplit *out, int cap) {
  unsigned char b[XMAXP + 1];
  int cnt = 0;
  b[0] = 0;
  b[q->p] = (unsigned char)x->n;
  for (int s = 1; s < q->p; s++) b[s] = (unsigned char)s;
  for (;;) {
    if (cnt < cap) {
      memcpy(out[cnt].b, b, sizeof b);
      out[cnt].lb = split_bound(x, q, b, m);
    }
    cnt++;
    int s = q->p - 1;
    while (s >= 1 && b[s] == x->n - (q->p - s)) s--;
    if (s < 1) break;
    b[s]++;
    for (int j = s + 1; j < q->p; j++) b[j] = (unsigned char)(b[j - 1] + 1);
  }
  return cnt < cap ? cnt : cap;
}

/* g(q, m): the best simulated one-replica step over every split (memoized). */
static const xmemo *class_best(xctx *x, int qi, int m) {
  xmemo *e = &x->memo[(size_t)qi * (x->M + 1) + m];
  if (e->have && (e->found || e->g >= x->best_t)) return e;
  const xseq *q = &x->seqs[qi];
  enum { CAP = 8192 }; /* C(15, 7) = 6435 splits at most */
  static _Thread_local xsplit sp[CAP];
  const int ns = all_splits(x, q, m, sp, CAP);
  qsort(sp, (size_t)ns, sizeof *sp, cmp_split);
  e->have = 1;
  e->found = 0;
  e->g = INFINITY;
  for (int i = 0; i < ns && x->st == HM_OK; i++) {
    if (sp[i].lb >= e->g || sp[i].lb >= x->best_t) break;
    x->tmp.nclasses = 1;
    set_class(x, &x->tmp.classes[0], q, sp[i].b, 1, m);
    double t = simulate_plan(x, &x->tmp);
    if (t < e->g) {
      e->g = t;
      e->found = 1;
      memcpy(e->b, sp[i].b, sizeof e->b);
    }
  }
  if (!e->found) e->g = x->best_t; /* every split is at least as slow as the best plan */
  return e;
}

typedef struct xpart {
  int qi, R, m, a; /* a replicas with m micro-batches, R - a with m - 1 */
} xpart;

/* Builds and simulates the plan of one or two parts when no bound rules it out. */
static void try_plan(xctx *x, const xpart *pt, int np) {
  double lb = 0;
  for (int i = 0; i < np; i++) {
    double v = bound_of(x, pt[i].qi, pt[i].m);
    if (v > lb) lb = v;
  }
  if (lb >= x->best_t) return;
  const xmemo *e[2][2] = {{NULL, NULL}, {NULL, NULL}};
  for (int i = 0; i < np; i++) {
    e[i][0] = class_best(x, pt[i].qi, pt[i].m);
    if (e[i][0]->g >= x->best_t) return;
    if (pt[i].a < pt[i].R && !(e[i][1] = class_best(x, pt[i].qi, pt[i].m - 1))->found) return;
  }
  hm_plan *p = &x->tmp;
  p->nclasses = 0;
  for (int i = 0; i < np; i++) {
    const xseq *q = &x->seqs[pt[i].qi];
    set_class(x, &p->classes[p->nclasses++], q, e[i][0]->b, pt[i].a, pt[i].m);
    if (pt[i].a < pt[i].R)
      set_class(x, &p->classes[p->nclasses++], q, e[i][1]->b, pt[i].R - pt[i].a, pt[i].m - 1);
  }
  double t = simulate_plan(x, p);
  if (t < x->best_t) {
    x->best_t = t;
    x->best = *p;
  }
}

static int64_t max_replicas(const xctx *x, const xseq *q, const int64_t *used) {
  int64_t r = x->M;
  for (int k = 0; k < x->K; k++)
    if (q->use[k] && (x->groups[k] - used[k]) / q->use[k] < r) r = (x->groups[k] - used[k]) / q->use[k];
  return r;
}

/* Plans of one stage order: R replicas, micro-batches spread as evenly as M allows. */
static void plans_one(xctx *x) {
  const int64_t zero[HM_PLAN_MAX_TYPES] = {0};
  for (int qi = 0; qi < x->nseq && x->st == HM_OK; qi++) {
    const int64_t rmax = max_replicas(x, &x->seqs[qi], zero);
    for (int R = 1; R <= rmax; R++) {
      const int m = (x->M + R - 1) / R;
      xpart pt = {qi, R, m, x->M - R * (m - 1)};
      try_plan(x, &pt, 1);
    }
  }
}

/* Plans of two stage orders: every (R1, R2), every micro-batch count of the first order's
 * replicas (a1 of them with m1, the rest m1 - 1), the rest spread evenly over the second's. */
static void plans_two(xctx *x) {
  for (int q1 = 0; q1 < x->nseq && x->st == HM_OK; q1++)
    for (int q2 = 0; q2 < x->nseq && x->st == HM_OK; q2++) {
      if (q1 == q2) continue;
      const int64_t zero[HM_PLAN_MAX_TYPES] = {0};
      const int64_t r1max = max_replicas(x, &x->seqs[q1], zero);
      for (int R1 = 1; R1 <= r1max; R1++) {
        int64_t used[HM_PLAN_MAX_TYPES];
        for (int k = 0; k < x->K; k++) used[k] = (int64_t)R1 * x->seqs[q1].use[k];
        const int64_t r2max = max_replicas(x, &x->seqs[q2], used);
        for (int R2 = 1; R2 <= r2max && R1 + R2 <= x->M; R2++)
          for (int m1 = 1; R1 * (m1 - 1) + 1 + R2 <= x->M; m1++) {
            if (bound_of(x, q1, m1) >= x->best_t) break; /* grows with m1 */
            for (int a1 = m1 == 1 ? R1 : 1; a1 <= R1; a1++) {
              const int rest = x->M - (a1 * m1 + (R1 - a1) * (m1 - 1));
              if (rest < R2) continue;
              const int m2 = (rest + R2 - 1) / R2;
              xpart pt[2] = {{q1, R1, m1, a1}, {q2, R2, m2, rest - R2 * (m2 - 1)}};
              try_plan(x, pt, 2);
            }
          }
      }
    }
}

/* Searches one (micro-batch size, tensor-parallel degree per type). */
static void search_tp(xctx *x) {
  x->nseq = 0;
  xseq s;
  memset(&s, 0, sizeof s);
  if (!enum_seqs(x, &s)) {
    x->st = hm_error(HM_ERR_UNSUPPORTED, "exhaustive search: more than 200000 stage orders (or "
                     "out of memory): the cluster is too large for it");
    return;
  }
  free(x->memo);
  x->memo = calloc((size_t)x->nseq * (x->M + 1), sizeof *x->memo);
  if (!x->memo) {
    x->st = hm_error(HM_ERR_NOMEM, "exhaustive search: out of memory");
    return;
  }
  plans_one(x);
  plans_two(x);
}

/* Every tensor-parallel degree per type (0: the type is not used). */
static void search_tps(xctx *x, int k) {
  static const int tps[] = {0, 1, 2, 4, 8};
  if (k == x->K) {
    int any = 0;
    for (int j = 0; j < x->K; j++) any |= x->tp[j] > 0;
    if (any) search_tp(x);
    return;
  }
  for (int i = 0; i < 5 && x->st == HM_OK; i++) {
    x->tp[k] = tps[i];
    if (tps[i] == 0) {
      search_tps(x, k + 1);
      continue;
    }
    x->groups[k] = hm_type_groups(x->in->cluster, k, tps[i]);
    if (x->groups[k] < 1) continue;
    hm_layer_costs_free(&x->lc[k]);
    if ((x->st = hm_layer_costs_init(x->in, k, tps[i], x->mb, &x->lc[k])) != HM_OK) return;
    if (x->lc[k].ok) search_tps(x, k + 1);
  }
  x->tp[k] = 0;
}

static hm_status check_small(const hm_plan_inputs *in) {
  if (!in || !in->cluster || !in->model || !in->train)
    return hm_error(HM_ERR_INVALID_ARG, "exhaustive search: cluster, model and training are required");
  if (in->cluster->ndevices > 16 || in->model->nlayers > XMAXN || in->cluster->ntypes > 4)
    return hm_error(HM_ERR_UNSUPPORTED, "exhaustive search: for clusters of at most 16 devices "
                    "and 4 types and models of at most %d layers (got %lld devices, %d types, %d "
                    "layers)", XMAXN, (long long)in->cluster->ndevices, in->cluster->ntypes,
                    in->model->nlayers);
  for (int i = 0; i < in->train->n_micro_batch_sizes; i++) {
    const int64_t mb = in->train->micro_batch_sizes[i];
    if (in->train->global_batch % mb == 0 && in->train->global_batch / mb > XMAXM)
      return hm_error(HM_ERR_UNSUPPORTED, "exhaustive search: at most %d micro-batches per step "
                      "(global batch %lld, micro-batch %lld)", XMAXM,
                      (long long)in->train->global_batch, (long long)mb);
  }
  return HM_OK;
}

hm_status hm_plan_search_exhaustive(const hm_plan_inputs *in, const hm_search_options *opt,
                                    hm_plan *best, int64_t *nsimulated) {
  HM_TRY(check_small(in));
  if (!best) return hm_error(HM_ERR_INVALID_ARG, "exhaustive search: best is NULL");
  hm_search_options o;
  if (opt) o = *opt; else hm_search_options_default(&o);
  o.top_k = 1;
  o.upper_bound = 0;
  o.only_type = -1;
  /* the default search's best is the first bound: every plan found later beats it */
  hm_search_result r;
  hm_status st = hm_plan_search(in, &o, &r);
  if (st != HM_OK) return st;
  xctx *x = hm_calloc(1, sizeof *x, "exhaustive search");
  if (!x) {
    hm_search_result_free(&r);
    return HM_ERR_NOMEM;
  }
  x->in = in;
  x->n = in->model->nlayers;
  x->K = in->cluster->ntypes;
  x->maxp = o.max_stages < XMAXP ? o.max_stages : XMAXP;
  x->best = r.plans[0];
  x->best_t = r.plans[0].step_time;
  hm_search_result_free(&r);
  for (int i = 0; i < in->train->n_micro_batch_sizes && x->st == HM_OK; i++) {
    x->mb = in->train->micro_batch_sizes[i];
    if (in->train->global_batch % x->mb) continue;
    x->M = (int)(in->train->global_batch / x->mb);
    search_tps(x, 0);
  }
  st = x->st;
  if (st == HM_OK) {
    *best = x->best;
    st = hm_plan_predict(in, best, NULL); /* every figure, as the default search gives them */
  }
  if (nsimulated) *nsimulated = x->nsim;
  for (int k = 0; k < HM_PLAN_MAX_TYPES; k++) hm_layer_costs_free(&x->lc[k]);
  free(x->seqs);
  free(x->memo);
  free(x);
  return st;
}
