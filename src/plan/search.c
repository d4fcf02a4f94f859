/* Plan search. Reasons per device type and host group, never per device: a candidate is a few
 * pipeline templates (stage types in order, tp per type, exact DP layer split) with replica
 * counts and micro-batches per replica; its step time is first estimated from the DP objective,
 * then the best candidates are simulated on their op lists and re-ranked.
 *
 * Candidates, for each micro-batch size:
 *   1. one type alone: tp in {1,2,4,8} (fits a host, divides the layers), pipeline depth p,
 *      replicas = tp groups / p, micro-batches spread as evenly as the global batch allows;
 *   2. heterogeneous data parallelism: the best single-type template of each type in a subset,
 *      micro-batches per replica class set by water-filling on their affine step-time estimates;
 *   3. heterogeneous pipelines: stages of several types in one replica, for every order of the
 *      types (all orders up to 4 types, else by memory and by speed), replicas R and stages per
 *      type floor(groups / R), pruned by a lower bound on the pipeline time; tp per type from its
 *      best single-type plan, or its largest degree (one type at a time); and the same pipelines
 *      with the devices they leave idle running each type's best single-type replicas; and
 *      for two types, the first type's stages split around the other (a, b, a), one stage moved
 *      to the end.
 * Small clusters (at most HM_SEARCH_WIDE_DEVICES devices) get a wider set: every tp per type in
 * mixed pipelines, every stage count per type and replica count, every interleaving of the first
 * type around the others, fewer replicas than the devices allow, a second split that balances
 * the optimizer step too, every single-type template on the devices a pipeline leaves idle, and
 * a longer simulated shortlist; the types taken in turn (a b a b, a b c b c) and, for three
 * types, the second type's stages inside the first's run (a b a a c); and pairs of the
 * most device-efficient templates split (pool_pairs: two mixed pipelines, or a mixed pipeline
 * beside replicas of another type). The best simulated plans are then refined by simulation (split
 * boundaries and micro-batches between classes, search_refine.c). The exhaustive search of
 * search_exact.c is the oracle these are tested against.
 * The optimizations here are exact pruning (bounds) and memoized per-layer costs; the heuristic
 * parts are the candidate families above (documented in docs/plan.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

enum { NTP = 4, MAXK = HM_PLAN_MAX_TYPES };
/* Clusters of at most this many devices get the wide search (docs/plan.md, section 6). */
#define HM_SEARCH_WIDE_DEVICES 64
/* Plans refined by simulation, and the simulations each may take: beyond the small clusters
 * the best plan only, with a budget that keeps the search's time (a simulation of a large plan
 * is not free); on a small cluster the best 64 (with 32, seed 123 of bench_search_exact was
 * left 4.6% off once the round-robin orders joined the list; with 48, seed 113 0.8% off once
 * the inserted orders did). */
#define HM_SEARCH_REFINE 1
#define HM_SEARCH_REFINE_SIMS 48
#define HM_SEARCH_REFINE_WIDE 64
#define HM_SEARCH_REFINE_WIDE_SIMS 4096
/* Wide search: templates kept for pairs of replica classes of any two of them (pool_pairs), on
 * clusters of at most HM_SEARCH_POOL_DEVICES devices, else HM_SEARCH_WIDE_POOL_LARGE (the pairs
 * cost the square of the pool times the replica counts). */
#define HM_SEARCH_WIDE_POOL 256
#define HM_SEARCH_WIDE_POOL_LARGE 64
#define HM_SEARCH_POOL_DEVICES 16
/* Wide search: all stage counts per type when there are at most this many vectors of them. */
#define HM_SEARCH_WIDE_COUNTS 512
/* Wide search: candidates simulated (ranked by estimate, then by simulation). */
#define HM_SEARCH_WIDE_SIMULATE 256
/* Plans of the simulated list whose interleaved variants are tried (search_interleave.c). */
#define HM_SEARCH_INTERLEAVE_TOP 8
static const int tp_values[NTP] = {1, 2, 4, 8};

typedef struct tmpl {
  int nstages;
  signed char types[HM_PLAN_MAX_STAGES];
  int bounds[HM_PLAN_MAX_STAGES + 1];
  double B, S;    /* bottleneck and sum of the DP's stage times */
  double opt;     /* largest optimizer time over stages */
  double sync1;   /* gradient bytes / tp of the heaviest stage (for the sync estimate) */
} tmpl;

typedef struct cand {
  double est;
  int mbi;
  int seq; /* order of generation within its micro-batch size: the tie-break */
  int nclasses;
  int tmpl_of[HM_PLAN_MAX_CLASSES];
  int nrep[HM_PLAN_MAX_CLASSES], nmicro[HM_PLAN_MAX_CLASSES];
  int ntmpl;
  int tp_of[MAXK]; /* tensor-parallel degree of each type used */
  tmpl t[4];
} cand;

/* Best candidates by estimate, sorted, without duplicates. */
typedef struct clist {
  int n, cap;
  cand *c;
} clist;

typedef struct sctx {
  const hm_plan_inputs *in;
  const hm_search_options *opt;
  int n, K, maxp, nmb;
  int64_t mbs[HM_SPEC_MBS_MAX];
  hm_layer_costs *costs; /* [k][tpi][mbi] */
  int64_t groups[MAXK][NTP];
  int single_only; /* -1 or the type */
  int ties;        /* the model ties its first and last layer (tied-embedding sync) */
  int share;       /* family 1 at a class's share of the batch (hetero_dp_top): this type's list only */
  int wide;        /* small cluster: every tp per type and interleaved orders in mixed pipelines */
  int wide_p;      /* wide: templates of family 1 kept for 1..wide_p stages */
  tmpl *wide_t;    /* wide: [k][tpi][mbi][p-1] family 1's split (nstages 0: none) */
  struct ptmpl *pool; /* wide, per worker: the most efficient distinct templates (pool_add) */
  int npool, pool_cap;
  clist all;              /* every family */
  clist by_type[MAXK];    /* single-type candidates of each type (the upper bound) */
  /* best single-type template per (type, mb): index into a per-type list */
  cand *best_single; /* [k][mbi] */
  int *have_single;
  int64_t nsplits;
  struct sctx *root; /* owner of the shared shortlists (workers run micro-batch sizes in parallel) */
  int seq;
  double *time, *bnd, *ms, *ma, *cap; /* DP scratch */
  int *infl;
} sctx;

static hm_layer_costs *costs_of(sctx *x, int k, int tpi, int mbi) {
  return &x->costs[((size_t)k * NTP + tpi) * x->nmb + mbi];
}

static tmpl *wide_tmpl(sctx *x, int k, int ti, int mbi, int p) {
  return &x->wide_t[(((size_t)k * NTP + ti) * x->nmb + mbi) * x->wide_p + (p - 1)];
}

static int tp_index(int tp) {
  for (int i = 0; i < NTP; i++)
    if (tp_values[i] == tp) return i;
  return 0;
}

static int tmpl_equal(const tmpl *a, const tmpl *b) {
  if (a->nstages != b->nstages) return 0;
  for (int s = 0; s < a->nstages; s++)
    if (a->types[s] != b->types[s] || a->bounds[s + 1] != b->bounds[s + 1]) return 0;
  return 1;
}

/* Same plan reached by two families (e.g. a type given no micro-batches by water-filling). */
static int cand_equal(const cand *a, const cand *b) {
  if (a->mbi != b->mbi || a->nclasses != b->nclasses) return 0;
  for (int i = 0; i < a->nclasses; i++) {
    const tmpl *ta = &a->t[a->tmpl_of[i]], *tb = &b->t[b->tmpl_of[i]];
    if (a->nrep[i] != b->nrep[i] || a->nmicro[i] != b->nmicro[i] || !tmpl_equal(ta, tb)) return 0;
    for (int s = 0; s < ta->nstages; s++)
      if (a->tp_of[(int)ta->types[s]] != b->tp_of[(int)tb->types[s]]) return 0;
  }
  return 1;
}

/* Adds c to the sorted top list if it beats the worst kept (ties keep the earlier one). */
/* Total order of candidates: estimate, then micro-batch size, then generation order, so that the
 * lists do not depend on which worker thread got there first. */
static int cand_before(const cand *a, const cand *b) {
  if (a->est != b->est) return a->est < b->est;
  if (a->mbi != b->mbi) return a->mbi < b->mbi;
  return a->seq < b->seq;
}

static void keep_in(clist *l, const cand *c) {
  if (l->n == l->cap && !cand_before(c, &l->c[l->n - 1])) return;
  for (int i = 0; i < l->n; i++)
    if (cand_equal(&l->c[i], c)) return;
  int i = l->n < l->cap ? l->n++ : l->n - 1;
  while (i > 0 && cand_before(c, &l->c[i - 1])) {
    l->c[i] = l->c[i - 1];
    i--;
  }
  l->c[i] = *c;
}

static double worst_in(const clist *l) { return l->n < l->cap ? INFINITY : l->c[l->n - 1].est; }

/* The shortlists are shared by the workers; a candidate whose lower bound is strictly above the
 * worst kept can never enter, whatever the timing, so pruning keeps results deterministic. */
static void keep(sctx *x, clist *(*which)(sctx *, int), int k, cand *c) {
  c->seq = x->seq++;
#pragma omp critical(hm_plan_shortlist)
  keep_in(which(x->root, k), c);
}

static double worst_kept(sctx *x, clist *(*which)(sctx *, int), int k) {
  double w;
#pragma omp critical(hm_plan_shortlist)
  w = worst_in(which(x->root, k));
  return w;
}

static clist *list_all(sctx *r, int k) {
  (void)k;
  return &r->all;
}

static clist *list_type(sctx *r, int k) { return &r->by_type[k]; }


/* Gradient sync estimate of a template among `nranks` replicas. */
static double sync_estimate(sctx *x, const tmpl *t, const int *tp_of, int nranks, unsigned mask,
                            int64_t devices) {
  if (nranks <= 1) return 0.0;
  hm_sync_model sm = hm_plan_sync_model(x->in, mask, nranks, devices);
  double worst = 0;
  for (int s = 0; s < t->nstages; s++) {
    double sum = 0;
    for (int l = t->bounds[s]; l < t->bounds[s + 1]; l++) {
      const hm_layer *ly = &x->in->model->layers[l];
      sum += hm_sync_allreduce_time(&sm, (ly->params + ly->shared_params) *
                                             x->in->train->grad_bytes / tp_of[t->types[s]]);
    }
    if (sum > worst) worst = sum;
  }
  return worst;
}

/* The first stage before s whose rows equal stage s's: the same type (its time, memory rows),
 * and for the boundary row also the same next type (or both last); -1 when none. The rows are
 * functions of exactly these (the tp and host-fit test depend on the type alone within one
 * template), so copying them yields the values a recomputation would. */
static int same_rows_before(const tmpl *t, int s, int with_next) {
  const int p = t->nstages;
  for (int r = 0; r < s; r++) {
    if (t->types[r] != t->types[s]) continue;
    if (!with_next) return r;
    const int nr = r + 1 < p ? t->types[r + 1] : -1, ns = s + 1 < p ? t->types[s + 1] : -1;
    if (nr == ns && (r + 1 < p) == (s + 1 < p)) return r;
  }
  return -1;
}

/* Boundary row of stage s (seconds added when its last layer is l): activations forward, their
 * gradients back, each with the staging copies of both ends. */
static void boundary_row(sctx *x, const tmpl *t, int s, const int *tp_of, const int *per_type,
                         const hm_layer_costs *lc) {
  const int p = t->nstages, n = x->n, k = t->types[s];
  double *row = x->bnd + (size_t)s * n;
  if (s + 1 >= p) {
    for (int l = 0; l < n; l++) row[l] = 0.0;
    return;
  }
  const int k2 = t->types[s + 1];
  int same = k2 == k && tp_of[k] * per_type[k] <= hm_type_per_host_max(x->in->cluster, k);
  hm_link link = hm_stage_link(x->in, k, k2, same);
  hm_device_xfer sk = hm_profile_staging_of(x->in->profile, k),
                 sk2 = hm_profile_staging_of(x->in->profile, k2);
  for (int l = 0; l < n; l++)
    row[l] = 2 * hm_cost_p2p(&link, lc->out_bytes[l]) + hm_cost_staged_send(&sk, &sk2, lc->out_bytes[l]) +
             hm_cost_staged_send(&sk2, &sk, lc->out_bytes[l]);
}

/* Time and memory rows of stage s. */
static void layer_rows(sctx *x, const tmpl *t, int s, const hm_layer_costs *lc, int m, int dp,
                       int fold_opt) {
  const int p = t->nstages, n = x->n;
  for (int l = 0; l < n; l++) {
    const size_t i = (size_t)s * n + l;
    x->time[i] = lc->fwd[l] + lc->bwd[l] + (fold_opt ? lc->opt[l] / m : 0.0);
    x->ms[i] = hm_static_bytes(x->in->train, lc->params[l] - (p == 1 ? lc->shared[l] : 0.0), dp);
    x->ma[i] = lc->act[l];
  }
}

static void copy_row(double *a, int n, int from, int to) {
  memcpy(a + (size_t)to * n, a + (size_t)from * n, (size_t)n * sizeof *a);
}

/* DP split of a stage-type sequence; fills t (bounds, B, S, opt). HM_ERR_NO_FIT if it cannot fit. */
static hm_status split_template_opt(sctx *x, tmpl *t, const int *tp_of, int mbi, int m, int dp,
                                    int fold_opt) {
  const int p = t->nstages, n = x->n;
  int per_type[MAXK] = {0};
  for (int s = 0; s < p; s++) per_type[(int)t->types[s]]++;
  for (int s = 0; s < p; s++) {
    const int k = t->types[s];
    const hm_layer_costs *lc = costs_of(x, k, tp_index(tp_of[k]), mbi);
    if (!lc->ok) return HM_ERR_NO_FIT;
    const int r = same_rows_before(t, s, 0), rb = same_rows_before(t, s, 1);
    if (r < 0) {
      layer_rows(x, t, s, lc, m, dp, fold_opt);
    } else {
      copy_row(x->time, n, r, s);
      copy_row(x->ms, n, r, s);
      copy_row(x->ma, n, r, s);
    }
    if (rb < 0) boundary_row(x, t, s, tp_of, per_type, lc);
    else copy_row(x->bnd, n, rb, s);
    x->cap[s] = lc->capacity - lc->reserve;
    x->infl[s] = p - s < m ? p - s : m;
  }
  hm_split_problem pb = {.nlayers = n, .nstages = p, .nmicro = m, .time = x->time,
                         .boundary = x->bnd, .mem_static = x->ms, .mem_act = x->ma,
                         .mem_cap = x->cap, .inflight = x->infl};
  double obj;
  x->nsplits++;
  hm_status st = hm_split_dp(&pb, t->bounds, &obj);
  if (st != HM_OK) return st;
  t->B = 0;
  t->S = 0;
  t->opt = 0;
  for (int s = 0; s < p; s++) {
    double ts = 0, o = 0;
    const int k = t->types[s];
    const hm_layer_costs *lc = costs_of(x, k, tp_index(tp_of[k]), mbi);
    for (int l = t->bounds[s]; l < t->bounds[s + 1]; l++) {
      ts += lc->fwd[l] + lc->bwd[l];
      o += lc->opt[l];
    }
    if (s + 1 < p) ts += x->bnd[(size_t)s * n + t->bounds[s + 1] - 1];
    t->S += ts;
    if (ts > t->B) t->B = ts;
    if (o > t->opt) t->opt = o;
  }
  return HM_OK;
}

static hm_status split_template(sctx *x, tmpl *t, const int *tp_of, int mbi, int m, int dp) {
  return split_template_opt(x, t, tp_of, mbi, m, dp, 0);
}


/* Spreads M micro-batches over replica classes (R_c replicas, affine time (m-1) B_c + S_c):
 * smallest T such that sum R_c * m_c(T) >= M, then trims the excess by splitting classes.
 * Returns the number of classes written into c (0 when it cannot). */
static int distribute(cand *c, int ntm, const int *rep, const tmpl *t, int64_t M) {
  double lo = 0, hi = 0;
  int64_t total_rep = 0;
  for (int i = 0; i < ntm; i++) {
    total_rep += rep[i];
    double h = (double)M * t[i].B + t[i].S;
    if (h > hi) hi = h;
  }
  if (total_rep > M) return 0;
  for (int it = 0; it < 100; it++) {
    double mid = 0.5 * (lo + hi);
    int64_t got = 0;
    for (int i = 0; i < ntm; i++) {
      double mm = t[i].B > 0 ? floor((mid - t[i].S) / t[i].B) + 1 : (double)M;
      if (mm > (double)M) mm = (double)M;
      if (mm >= 1) got += (int64_t)mm * rep[i];
    }
    if (got >= M) hi = mid; else lo = mid;
  }
  int64_t m[8], got = 0;
  for (int i = 0; i < ntm; i++) {
    double mm = t[i].B > 0 ? floor((hi - t[i].S) / t[i].B) + 1 : (double)M;
    if (mm > (double)M) mm = (double)M;
    m[i] = mm < 1 ? 0 : (int64_t)mm;
    got += m[i] * rep[i];
  }
  int64_t excess = got - M;
  int nc = 0;
  for (int i = 0; i < ntm; i++) { /* largest m first loses a micro-batch on some replicas */
    if (m[i] < 1) continue;
    int64_t cut = excess < rep[i] ? excess : rep[i];
    if (m[i] == 1) cut = 0; /* a replica keeps at least one micro-batch */
    excess -= cut;
    if (rep[i] - cut > 0) {
      c->tmpl_of[nc] = i, c->nrep[nc] = (int)(rep[i] - cut), c->nmicro[nc] = (int)m[i];
      nc++;
    }
    if (cut > 0) {
      c->tmpl_of[nc] = i, c->nrep[nc] = (int)cut, c->nmicro[nc] = (int)(m[i] - 1);
      nc++;
    }
  }
  if (excess != 0) return 0;
  c->nclasses = nc;
  return nc;
}

/* Tied-embedding sync of a template (the simulator's TIED_EMB_SYNC): when the model ties its
 * first and last layer and the template has more than one stage, both ends all-reduce the
 * first layer's gradient after their backward, over the link between the two ends' types. */
static double tied_estimate(sctx *x, const tmpl *t, const int *tp_of) {
  const hm_model *md = x->in->model;
  if (t->nstages < 2 || !x->ties) return 0.0;
  const int a = t->types[0], b = t->types[t->nstages - 1];
  const double bytes =
      (md->layers[0].params + md->layers[0].shared_params) * x->in->train->grad_bytes / tp_of[a];
  const hm_link link = hm_stage_link(x->in, a, b, 0);
  double d = 0;
  hm_cost_best_algo(HM_COLL_ALLREDUCE, 2, bytes, &link, &d);
  const hm_device_xfer xa = hm_profile_staging_of(x->in->profile, a),
                       xb = hm_profile_staging_of(x->in->profile, b);
  const double sa = hm_cost_staging(&xa, bytes), sb = hm_cost_staging(&xb, bytes);
  return d + (sa > sb ? sa : sb);
}

/* Estimated step time of a candidate whose classes are set. */
static double estimate(sctx *x, cand *c, const int *tp_of) {
  int nranks = 0;
  unsigned mask = 0;
  int64_t devices = 0;
  for (int i = 0; i < c->nclasses; i++) {
    nranks += c->nrep[i];
    const tmpl *t = &c->t[c->tmpl_of[i]];
    for (int s = 0; s < t->nstages; s++) {
      mask |= 1u << t->types[s];
      devices += (int64_t)c->nrep[i] * tp_of[(int)t->types[s]];
    }
  }
  double worst = 0;
  for (int i = 0; i < c->nclasses; i++) {
    const tmpl *t = &c->t[c->tmpl_of[i]];
    double v = (c->nmicro[i] - 1) * t->B + t->S + sync_estimate(x, t, tp_of, nranks, mask, devices) +
               tied_estimate(x, t, tp_of) + t->opt;
    if (v > worst) worst = v;
  }
  c->est = worst;
  return worst;
}

/* Wide search: the same stage list split with each layer's optimizer time folded into its
 * per-micro-batch time (opt / m), so that the split also balances the optimizer step, which
 * the formula leaves out; kept as a further candidate when the split differs. c: before
 * its split (one template, types set). */
static void keep_opt_split(sctx *x, const cand *c, const int *tp_of, int mbi, int m, int R,
                           int64_t M) {
  cand d = *c;
  if (split_template_opt(x, &d.t[0], tp_of, mbi, m, R, 1) != HM_OK) return;
  int rep = R;
  if (!distribute(&d, 1, &rep, d.t, M)) return;
  estimate(x, &d, tp_of);
  keep(x, list_all, 0, &d);
}

/* Wide search: a template for pairs of replica classes (pool_pairs): its stage types and
 * split, the tp of the types it uses, tp groups of each type per replica, and its key. */
typedef struct ptmpl {
  tmpl t;
  int tp_of[MAXK];
  int use[MAXK];
  double key; /* bottleneck time x devices per replica: smaller uses its devices better */
} ptmpl;

static int ptmpl_same_stages(const ptmpl *a, const ptmpl *b) {
  if (a->t.nstages != b->t.nstages) return 0;
  for (int s = 0; s < a->t.nstages; s++)
    if (a->t.types[s] != b->t.types[s]) return 0;
  return !memcmp(a->tp_of, b->tp_of, sizeof a->tp_of);
}

/* Keeps template t (tp_of of its types) among the pool_cap best by key, one split per stage list
 * (the better key). */
static void pool_add(sctx *x, const tmpl *t, const int *tp_of) {
  if (!x->pool) return;
  ptmpl e;
  memset(&e, 0, sizeof e);
  e.t = *t;
  int dev = 0;
  for (int s = 0; s < t->nstages; s++) {
    const int k = t->types[s];
    e.tp_of[k] = tp_of[k];
    e.use[k]++;
    dev += tp_of[k];
  }
  e.key = t->B * dev;
  int i = 0;
  while (i < x->npool && !ptmpl_same_stages(&x->pool[i], &e)) i++;
  if (i < x->npool) {
    if (x->pool[i].key <= e.key) return;
    memmove(&x->pool[i], &x->pool[i + 1], (size_t)(x->npool - i - 1) * sizeof e);
    x->npool--;
  }
  if (x->npool == x->pool_cap && x->pool[x->npool - 1].key <= e.key) return;
  i = x->npool < x->pool_cap ? x->npool++ : x->npool - 1;
  while (i > 0 && x->pool[i - 1].key > e.key) {
    x->pool[i] = x->pool[i - 1];
    i--;
  }
  x->pool[i] = e;
}

/* Wide search: pairs of pooled templates (mixed pipelines of two stage orders, a mixed pipeline
 * beside another type's replicas) whose tp agree on the types both use: every replica count of
 * the first with the most of the second that the devices left allow. */
static void pool_pair(sctx *x, const ptmpl *a, const ptmpl *b, int mbi, int64_t M) {
  int tp_of[MAXK];
  for (int k = 0; k < x->K; k++) {
    if (a->tp_of[k] && b->tp_of[k] && a->tp_of[k] != b->tp_of[k]) return;
    tp_of[k] = a->tp_of[k] ? a->tp_of[k] : b->tp_of[k];
  }
  for (int64_t r1 = 1; r1 < M; r1++) {
    int64_t r2 = M - r1;
    for (int k = 0; k < x->K && r2 >= 1; k++) {
      if (!tp_of[k]) continue;
      const int64_t left = x->groups[k][tp_index(tp_of[k])] - r1 * a->use[k];
      if (left < 0) r2 = 0;
      else if (b->use[k] && left / b->use[k] < r2) r2 = left / b->use[k];
    }
    if (r2 < 1) break;
    cand c;
    memset(&c, 0, sizeof c);
    c.mbi = mbi;
    c.ntmpl = 2;
    c.t[0] = a->t;
    c.t[1] = b->t;
    memcpy(c.tp_of, tp_of, sizeof c.tp_of);
    int reps[2] = {(int)r1, (int)r2};
    if (!distribute(&c, 2, reps, c.t, M)) continue;
    estimate(x, &c, tp_of);
    keep(x, list_all, 0, &c);
  }
}

static void pool_pairs(sctx *x, int mbi, int64_t M) {
  for (int k = 0; k < x->K; k++) /* each type's single-type templates join the pool */
    for (int ti = 0; ti < NTP; ti++)
      for (int p = 1; p <= x->wide_p; p++) {
        const tmpl *t = wide_tmpl(x, k, ti, mbi, p);
        int tp_of[MAXK] = {0};
        tp_of[k] = tp_values[ti];
        if (t->nstages) pool_add(x, t, tp_of);
      }
  for (int i = 0; i < x->npool; i++)
    for (int j = i + 1; j < x->npool; j++) pool_pair(x, &x->pool[i], &x->pool[j], mbi, M);
}

/* 1. one device type alone */
static void search_single(sctx *x, int k, int mbi, int64_t M) {
  cand *best = &x->best_single[(size_t)k * x->nmb + mbi];
  int *have = &x->have_single[(size_t)k * x->nmb + mbi];
  for (int ti = 0; ti < NTP; ti++) {
    const int tp = tp_values[ti];
    if (!costs_of(x, k, ti, mbi)->ok || x->groups[k][ti] < 1) continue;
    int tp_of[MAXK] = {0};
    tp_of[k] = tp;
    for (int p = 1; p <= x->maxp && p <= x->n; p++) {
      int64_t Rmax = x->groups[k][ti] / p;
      if (Rmax < 1) break;
      if (Rmax > M) Rmax = M;
      if (Rmax > (1 << 30)) Rmax = 1 << 30;
      /* wide: fewer replicas too (their gradient sync may cost more than they bring) */
      for (int64_t R = Rmax; R >= (x->wide ? 1 : Rmax); R--) {
        const int m = (int)((M + R - 1) / R);
        cand c;
        memset(&c, 0, sizeof c);
        c.mbi = mbi;
        c.ntmpl = 1;
        c.tp_of[k] = tp;
        c.t[0].nstages = p;
        for (int s = 0; s < p; s++) c.t[0].types[s] = (signed char)k;
        /* lower bound before the DP: no split beats perfect balance */
        double W = 0;
        const hm_layer_costs *lc = costs_of(x, k, ti, mbi);
        for (int l = 0; l < x->n; l++) W += lc->fwd[l] + lc->bwd[l];
        double lb = (m - 1) * W / p + W;
        /* cannot enter the overall list nor this type's list (the upper bound's) */
        if (!x->wide && lb > worst_kept(x, list_type, k) &&
            (x->share || lb > worst_kept(x, list_all, 0)))
          continue;
        if (x->wide && !x->share) keep_opt_split(x, &c, tp_of, mbi, m, (int)R, M);
        if (split_template(x, &c.t[0], tp_of, mbi, m, (int)R) != HM_OK) continue;
        if (x->wide && !x->share && p <= x->wide_p && R == Rmax) *wide_tmpl(x, k, ti, mbi, p) = c.t[0];
        int rep = (int)R;
        if (!distribute(&c, 1, &rep, c.t, M)) continue;
        estimate(x, &c, tp_of);
        keep(x, list_type, k, &c);
        if (x->share) continue;
        keep(x, list_all, 0, &c);
        if (!*have || c.est < best->est) {
          *best = c;
          *have = 1;
        }
      }
    }
  }
}

/* Wide search: two replica classes of single-type templates (a, b: (type, tp index, stages);
 * the same type twice with two depths too), every replica count of the first with the most of
 * the second that the devices left allow. */
static void wide_pair(sctx *x, int mbi, int64_t M, const int *a, const int *b) {
  const tmpl *ta = wide_tmpl(x, a[0], a[1], mbi, a[2]), *tb = wide_tmpl(x, b[0], b[1], mbi, b[2]);
  if (!ta->nstages || !tb->nstages) return;
  int tp_of[MAXK] = {0};
  tp_of[a[0]] = tp_values[a[1]];
  tp_of[b[0]] = tp_values[b[1]];
  const int64_t ga = x->groups[a[0]][a[1]], gb = x->groups[b[0]][b[1]];
  for (int64_t r1 = 1; r1 * a[2] <= ga && r1 < M; r1++) {
    int64_t r2 = (gb - (a[0] == b[0] ? r1 * a[2] : 0)) / b[2];
    if (r2 > M - r1) r2 = M - r1;
    if (r2 < 1) break;
    cand c;
    memset(&c, 0, sizeof c);
    c.mbi = mbi;
    c.ntmpl = 2;
    c.t[0] = *ta;
    c.t[1] = *tb;
    memcpy(c.tp_of, tp_of, sizeof c.tp_of);
    int reps[2] = {(int)r1, (int)r2};
    if (!distribute(&c, 2, reps, c.t, M)) continue;
    estimate(x, &c, tp_of);
    keep(x, list_all, 0, &c);
  }
}

static void wide_pairs(sctx *x, int mbi, int64_t M) {
  for (int k1 = 0; k1 < x->K; k1++)
    for (int t1 = 0; t1 < NTP; t1++)
      for (int p1 = 1; p1 <= x->wide_p; p1++)
        for (int k2 = k1; k2 < x->K; k2++)
          for (int t2 = 0; t2 < NTP; t2++)
            for (int p2 = 1; p2 <= x->wide_p; p2++) {
              if (k1 == k2 && (t1 != t2 || p2 <= p1)) continue; /* one tp per type */
              const int a[3] = {k1, t1, p1}, b[3] = {k2, t2, p2};
              wide_pair(x, mbi, M, a, b);
            }
}

/* 2. heterogeneous data parallelism over the types in `mask` */
static void search_hetero_dp(sctx *x, unsigned mask, int mbi, int64_t M, int *tp_best) {
  cand c;
  memset(&c, 0, sizeof c);
  c.mbi = mbi;
  int rep[8], tp_of[MAXK] = {0};
  for (int k = 0; k < x->K; k++) {
    if (!(mask & (1u << k))) continue;
    if (!x->have_single[(size_t)k * x->nmb + mbi] || c.ntmpl == 4) return;
    const cand *b = &x->best_single[(size_t)k * x->nmb + mbi];
    c.t[c.ntmpl] = b->t[0];
    int r = 0;
    for (int i = 0; i < b->nclasses; i++) r += b->nrep[i];
    rep[c.ntmpl++] = r;
    tp_of[k] = tp_best[k];
  }
  memcpy(c.tp_of, tp_of, sizeof c.tp_of);
  if (!distribute(&c, c.ntmpl, rep, c.t, M)) return;
  estimate(x, &c, tp_of);
  keep(x, list_all, 0, &c);
}

static int next_perm(int *a, int n) {
  int i = n - 2;
  while (i >= 0 && a[i] >= a[i + 1]) i--;
  if (i < 0) return 0;
  int j = n - 1;
  while (a[j] <= a[i]) j--;
  int t = a[i];
  a[i] = a[j];
  a[j] = t;
  for (int l = i + 1, r = n - 1; l < r; l++, r--) t = a[l], a[l] = a[r], a[r] = t;
  return 1;
}

/* Interleaved orders (wide search): j of the first type's p0 stages moved to the end of the
 * pipeline (a^(p0-j) b... a^j), for every j; c holds the contiguous order. */
static void try_interleaved(sctx *x, const cand *c, int p0, const int *tp_of, int mbi, int m,
                            int R, int64_t M) {
  const int P = c->t[0].nstages;
  for (int j = 1; j < p0; j++) {
    cand d = *c;
    /* rotated: stages j.. of the contiguous order first, then the first type's first j */
    for (int s = 0; s < P - j; s++) d.t[0].types[s] = c->t[0].types[s + j];
    for (int s = 0; s < j; s++) d.t[0].types[P - j + s] = c->t[0].types[0];
    keep_opt_split(x, &d, tp_of, mbi, m, R, M);
    if (split_template(x, &d.t[0], tp_of, mbi, m, R) != HM_OK) continue;
    pool_add(x, &d.t[0], tp_of);
    int rep = R;
    if (!distribute(&d, 1, &rep, d.t, M)) continue;
    estimate(x, &d, tp_of);
    keep(x, list_all, 0, &d);
  }
}

/* Wide search, three types or more: the second type's stages inside the first type's run
 * (a^j b.. a^(p0-j) c..), for every j; c holds the contiguous order, before its split. */
static void try_inserted(sctx *x, const cand *c, const int *p, int nt, const int *tp_of, int mbi,
                         int m, int R, int64_t M) {
  for (int j = 1; nt >= 3 && j < p[0]; j++) {
    cand d = *c;
    for (int s = 0; s < p[1]; s++) d.t[0].types[j + s] = c->t[0].types[p[0] + s];
    for (int s = 0; s < p[0] - j; s++) d.t[0].types[j + p[1] + s] = c->t[0].types[0];
    keep_opt_split(x, &d, tp_of, mbi, m, R, M);
    if (split_template(x, &d.t[0], tp_of, mbi, m, R) != HM_OK) continue;
    pool_add(x, &d.t[0], tp_of);
    int rep = R;
    if (!distribute(&d, 1, &rep, d.t, M)) continue;
    estimate(x, &d, tp_of);
    keep(x, list_all, 0, &d);
  }
}

/* Wide search: the types taken in turn (a b a b ..., a b c b c when a runs out), p[i] stages of
 * order[i]; kept when it differs from the contiguous order (c: that order, before its split). */
static void try_round_robin(sctx *x, const cand *c, const int *order, int nt, const int *p,
                            const int *tp_of, int mbi, int m, int R, int64_t M) {
  int left[MAXK], s = 0, differs = 0;
  cand d = *c;
  for (int i = 0; i < nt; i++) left[i] = p[i];
  while (s < c->t[0].nstages)
    for (int i = 0; i < nt; i++)
      if (left[i] > 0) {
        left[i]--;
        differs |= order[i] != c->t[0].types[s];
        d.t[0].types[s++] = (signed char)order[i];
      }
  if (!differs) return;
  keep_opt_split(x, &d, tp_of, mbi, m, R, M);
  if (split_template(x, &d.t[0], tp_of, mbi, m, R) != HM_OK) return;
  pool_add(x, &d.t[0], tp_of);
  int rep = R;
  if (!distribute(&d, 1, &rep, d.t, M)) return;
  estimate(x, &d, tp_of);
  keep(x, list_all, 0, &d);
}

/* Wide search: the leftover devices of type k (avail groups) as replicas of type k's single-type
 * template of p stages, for every p family 1 split; one candidate each (d: the pipeline's). */
static void wide_leftovers(sctx *x, const cand *d0, int rep, int k, int64_t avail, int mbi,
                           int64_t M, const int *tp_of) {
  const int ti = tp_index(tp_of[k]);
  for (int p = 1; p <= avail && p <= x->wide_p; p++) {
    const tmpl *t = wide_tmpl(x, k, ti, mbi, p);
    if (!t->nstages) continue;
    int64_t r2 = avail / p;
    if (r2 > M - rep) r2 = M - rep;
    if (r2 < 1) continue;
    cand d = *d0;
    d.t[1] = *t;
    d.ntmpl = 2;
    int reps[2] = {rep, (int)r2};
    if (!distribute(&d, 2, reps, d.t, M)) continue;
    estimate(x, &d, tp_of);
    keep(x, list_all, 0, &d);
  }
}

/* One mixed pipeline: p[i] stages of type order[i], R replicas (W: sum over layers of the fastest
 * type's time, for the lower bound); and the variant with the devices it leaves idle. */
static void mixed_candidate(sctx *x, const int *order, int nt, int mbi, int64_t M,
                            const int *tp_of, int64_t R, const int *p, double W) {
  int64_t P = 0;
  for (int i = 0; i < nt; i++) P += p[i];
  const int m = (int)((M + R - 1) / R);
  double lb = (m - 1) * W / P + W;
  if (lb > worst_kept(x, list_all, 0)) return;
  cand c;
  memset(&c, 0, sizeof c);
  c.mbi = mbi;
  c.ntmpl = 1;
  memcpy(c.tp_of, tp_of, sizeof c.tp_of);
  int s = 0;
  for (int i = 0; i < nt; i++)
    for (int j = 0; j < p[i]; j++) c.t[0].types[s++] = (signed char)order[i];
  c.t[0].nstages = P;
  /* interleaved orders: all on a small cluster, else one stage moved, for two types */
  if (x->wide || nt == 2)
    try_interleaved(x, &c, x->wide ? p[0] : (p[0] < 2 ? p[0] : 2), tp_of, mbi, m, (int)R, M);
  if (x->wide) try_round_robin(x, &c, order, nt, p, tp_of, mbi, m, (int)R, M);
  if (x->wide) try_inserted(x, &c, p, nt, tp_of, mbi, m, (int)R, M);
  if (x->wide) keep_opt_split(x, &c, tp_of, mbi, m, (int)R, M);
  if (split_template(x, &c.t[0], tp_of, mbi, m, (int)R) != HM_OK) return;
  pool_add(x, &c.t[0], tp_of);
  int rep = (int)R;
  cand d = c; /* before distribute: the same template, for the variant with leftovers */
  if (distribute(&c, 1, &rep, c.t, M)) {
    estimate(x, &c, tp_of);
    keep(x, list_all, 0, &c);
  }
  if (x->wide) /* every single-type template on the devices of one type left idle */
    for (int k = 0; k < x->K; k++) {
      if (!tp_of[k]) continue;
      int64_t used = 0;
      for (int i = 0; i < nt; i++)
        if (order[i] == k) used = R * p[i];
      wide_leftovers(x, &d, rep, k, x->groups[k][tp_index(tp_of[k])] - used, mbi, M, tp_of);
    }
  /* the devices these pipelines leave idle: replicas of each type's best single template,
   * the micro-batches spread over both kinds by water-filling */
  int reps[4] = {rep};
  int64_t total = R;
  for (int k = 0; k < x->K && d.ntmpl < 4; k++) {
    const size_t bi = (size_t)k * x->nmb + mbi;
    if (!x->have_single[bi] || x->best_single[bi].tp_of[k] != tp_of[k]) continue;
    int64_t used = 0;
    for (int i = 0; i < nt; i++)
      if (order[i] == k) used = R * p[i];
    int64_t r2 = (x->groups[k][tp_index(tp_of[k])] - used) / x->best_single[bi].t[0].nstages;
    if (r2 > M - total) r2 = M - total;
    if (r2 < 1) continue;
    d.t[d.ntmpl] = x->best_single[bi].t[0];
    reps[d.ntmpl++] = (int)r2;
    total += r2;
  }
  if (d.ntmpl > 1 && distribute(&d, d.ntmpl, reps, d.t, M)) {
    estimate(x, &d, tp_of);
    keep(x, list_all, 0, &d);
  }
}

/* Wide search: every stage count per type (1..groups) within the depth limit, each with every
 * replica count its counts allow, when there are at most HM_SEARCH_WIDE_COUNTS such pairs.
 * Returns 0 (nothing done) when there are more. */
static int wide_counts(sctx *x, const int *order, int nt, int mbi, int64_t M, const int *tp_of,
                       const int64_t *G, double W) {
  const int64_t lim = x->maxp < x->n ? x->maxp : x->n;
  int p[MAXK];
  for (int pass = 0; pass < 2; pass++) {
    int64_t count = 0;
    for (int i = 0; i < nt; i++) p[i] = 1;
    for (;;) {
      int64_t P = 0, R = INT64_MAX;
      for (int i = 0; i < nt; i++) {
        P += p[i];
        if (G[i] / p[i] < R) R = G[i] / p[i];
      }
      if (R > M) R = M;
      for (; P <= lim && R >= 1; R--) { /* fewer replicas too */
        if (pass == 0 && ++count > HM_SEARCH_WIDE_COUNTS) return 0;
        if (pass == 1) mixed_candidate(x, order, nt, mbi, M, tp_of, R, p, W);
      }
      int i = 0;
      while (i < nt && (p[i] >= G[i] || p[i] >= lim)) p[i++] = 1;
      if (i == nt) break;
      p[i]++;
    }
  }
  return 1;
}

static void search_mixed_order(sctx *x, const int *order, int nt, int mbi, int64_t M,
                               const int *tp_of) {
  int64_t G[MAXK] = {0};
  double W = 0;
  for (int l = 0; l < x->n; l++) {
    double best = INFINITY;
    for (int i = 0; i < nt; i++) {
      const hm_layer_costs *lc = costs_of(x, order[i], tp_index(tp_of[order[i]]), mbi);
      if (lc->fwd[l] + lc->bwd[l] < best) best = lc->fwd[l] + lc->bwd[l];
    }
    W += best;
  }
  for (int i = 0; i < nt; i++) G[i] = x->groups[order[i]][tp_index(tp_of[order[i]])];
  if (x->wide && wide_counts(x, order, nt, mbi, M, tp_of, G, W)) return;
  /* R replicas from large to small (at most one per micro-batch); each R gives the stage counts
   * floor(G_i / R), and only the largest R of each set of counts is tried (more replicas, same
   * stages): the next R is the largest that raises some count */
  int64_t R = G[0];
  for (int i = 1; i < nt; i++) if (G[i] < R) R = G[i];
  if (R > M) R = M;
  for (int64_t next_R; R >= 1; R = next_R) {
    int64_t pl[MAXK], P = 0;
    next_R = 0;
    for (int i = 0; i < nt; i++) {
      pl[i] = G[i] / R;
      P += pl[i];
      if (G[i] / (pl[i] + 1) > next_R) next_R = G[i] / (pl[i] + 1);
    }
    if (P > x->maxp || P > x->n) break;
    int p[MAXK];
    for (int i = 0; i < nt; i++) p[i] = (int)pl[i];
    mixed_candidate(x, order, nt, mbi, M, tp_of, R, p, W);
  }
}

static void search_mixed(sctx *x, unsigned mask, int mbi, int64_t M, const int *tp_best) {
  int order[MAXK], nt = 0;
  for (int k = 0; k < x->K; k++)
    if (mask & (1u << k)) order[nt++] = k;
  if (nt <= 4) {
    do search_mixed_order(x, order, nt, mbi, M, tp_best);
    while (next_perm(order, nt));
    return;
  }
  /* many types: larger memory first (early stages hold more micro-batches), and fastest first */
  const hm_cluster *c = x->in->cluster;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < nt; i++)
      for (int j = i + 1; j < nt; j++) {
        double a = pass == 0 ? c->types[order[i]].memory_bytes
                             : hm_device_type_peak(&c->types[order[i]], x->in->train->compute_dtype);
        double b = pass == 0 ? c->types[order[j]].memory_bytes
                             : hm_device_type_peak(&c->types[order[j]], x->in->train->compute_dtype);
        if (b > a) {
          int t = order[i];
          order[i] = order[j];
          order[j] = t;
        }
      }
    search_mixed_order(x, order, nt, mbi, M, tp_best);
  }
}

/* Turns a candidate into a plan and simulates it. */
static hm_status materialize(sctx *x, const cand *c, hm_plan *p) {
  memset(p, 0, sizeof *p);
  p->micro_batch = x->mbs[c->mbi];
  p->nclasses = c->nclasses;
  for (int i = 0; i < c->nclasses; i++) {
    const tmpl *t = &c->t[c->tmpl_of[i]];
    hm_plan_class *pc = &p->classes[i];
    pc->nreplicas = c->nrep[i];
    pc->nmicro = c->nmicro[i];
    pc->nstages = t->nstages;
    for (int s = 0; s < t->nstages; s++) {
      pc->stages[s].type = t->types[s];
      pc->stages[s].tp = c->tp_of[(int)t->types[s]];
      pc->stages[s].layer_begin = t->bounds[s];
      pc->stages[s].layer_end = t->bounds[s + 1];
    }
  }
  return hm_plan_predict(x->in, p, NULL);
}

/* Family 1 for one micro-batch size. */
static void search_singles(sctx *x, int mbi) {
  const int64_t M = x->in->train->global_batch / x->mbs[mbi];
  for (int k = 0; k < x->K; k++)
    if (x->opt->only_type < 0 || x->opt->only_type == k) search_single(x, k, mbi, M);
}

/* Wide search: mixed pipelines for every tensor-parallel degree of each type of `mask`. */
static void search_mixed_tps(sctx *x, unsigned mask, int mbi, int64_t M, int *tp_of, int k) {
  if (k == x->K) {
    search_mixed(x, mask, mbi, M, tp_of);
    return;
  }
  if (!(mask & (1u << k))) {
    search_mixed_tps(x, mask, mbi, M, tp_of, k + 1);
    return;
  }
  const int keep_tp = tp_of[k];
  for (int ti = 0; ti < NTP; ti++) {
    if (!costs_of(x, k, ti, mbi)->ok || x->groups[k][ti] < 1) continue;
    tp_of[k] = tp_values[ti];
    search_mixed_tps(x, mask, mbi, M, tp_of, k + 1);
  }
  tp_of[k] = keep_tp;
}

/* Families 2 and 3 for one micro-batch size, after family 1 for every size. */
static void search_mixes(sctx *x, int mbi) {
  const int64_t M = x->in->train->global_batch / x->mbs[mbi];
  if (x->opt->only_type >= 0) return;
  int tp_best[MAXK];
  for (int k = 0; k < x->K; k++) {
    tp_best[k] = 1;
    if (x->have_single[(size_t)k * x->nmb + mbi]) {
      tp_best[k] = x->best_single[(size_t)k * x->nmb + mbi].tp_of[k];
    } else { /* cannot hold the model alone: the largest degree relieves memory most */
      for (int ti = NTP - 1; ti >= 0; ti--)
        if (costs_of(x, k, ti, mbi)->ok && x->groups[k][ti] > 0) {
          tp_best[k] = tp_values[ti];
          break;
        }
    }
  }
  /* mixed pipelines also try the largest tensor-parallel degree of each type (fewer, larger
   * stages; less memory per device), one type at a time */
  int tp_max[MAXK];
  for (int k = 0; k < x->K; k++) {
    tp_max[k] = tp_best[k];
    for (int ti = NTP - 1; ti >= 0; ti--)
      if (costs_of(x, k, ti, mbi)->ok && x->groups[k][ti] > 0) {
        tp_max[k] = tp_values[ti];
        break;
      }
  }
  if (x->wide) wide_pairs(x, mbi, M);
  if (x->wide) x->npool = 0;
  const unsigned all = (1u << x->K) - 1;
  for (unsigned mask = 1; mask <= all; mask++) {
    if (__builtin_popcount(mask) < 2 || (x->K > 6 && mask != all)) continue;
    search_hetero_dp(x, mask, mbi, M, tp_best);
    if (x->wide) {
      int tp_var[MAXK];
      memcpy(tp_var, tp_best, sizeof tp_var);
      search_mixed_tps(x, mask, mbi, M, tp_var, 0);
      continue;
    }
    search_mixed(x, mask, mbi, M, tp_best);
    for (int k = 0; k < x->K; k++) {
      if (!(mask & (1u << k)) || tp_max[k] == tp_best[k]) continue;
      int tp_var[MAXK];
      memcpy(tp_var, tp_best, sizeof tp_var);
      tp_var[k] = tp_max[k];
      search_mixed(x, mask, mbi, M, tp_var);
    }
  }
  if (x->wide) pool_pairs(x, mbi, M);
}

/* Worker copy of the search state for one micro-batch size: shares the read-only costs and the
 * per-(type, size) best slots, owns its shortlists and DP scratch. */
static hm_status worker_init(sctx *w, sctx *x) {
  *w = *x;
  w->nsplits = 0;
  w->seq = 0;
  w->root = x;
  const size_t pn = (size_t)HM_PLAN_MAX_STAGES * x->n;
  w->time = hm_malloc((pn * 4 + HM_PLAN_MAX_STAGES) * sizeof(double), "split scratch");
  w->infl = hm_malloc(HM_PLAN_MAX_STAGES * sizeof(int), "split scratch");
  w->pool = NULL;
  w->npool = 0;
  w->pool_cap = x->in->cluster->ndevices <= HM_SEARCH_POOL_DEVICES ? HM_SEARCH_WIDE_POOL
                                                                   : HM_SEARCH_WIDE_POOL_LARGE;
  if (x->wide && !(w->pool = hm_malloc((size_t)w->pool_cap * sizeof *w->pool, "templates")))
    return HM_ERR_NOMEM;
  if (!w->time || !w->infl) return HM_ERR_NOMEM;
  w->bnd = w->time + pn;
  w->ms = w->bnd + pn;
  w->ma = w->ms + pn;
  w->cap = w->ma + pn;
  return HM_OK;
}

static void worker_free(sctx *w) {
  free(w->pool);
  free(w->time);
  free(w->infl);
}

void hm_search_options_default(hm_search_options *o) {
  memset(o, 0, sizeof *o);
  o->top_k = 5;
  o->max_stages = HM_PLAN_MAX_STAGES;
  o->only_type = -1;
  o->upper_bound = 1;
  o->max_chunks = HM_SEARCH_MAX_CHUNKS;
}

void hm_search_result_free(hm_search_result *r) {
  if (!r) return;
  free(r->plans);
  r->plans = NULL;
  r->nplans = 0;
}

static int cmp_plan(const void *a, const void *b) {
  const hm_plan *x = a, *y = b;
  if (x->step_time != y->step_time) return x->step_time < y->step_time ? -1 : 1;
  return 0;
}

static void sctx_free(sctx *x) {
  if (x->costs)
    for (int i = 0; i < x->K * NTP * x->nmb; i++) hm_layer_costs_free(&x->costs[i]);
  free(x->costs);
  free(x->all.c);
  for (int k = 0; k < MAXK; k++) free(x->by_type[k].c);
  free(x->best_single);
  free(x->have_single);
  free(x->wide_t);
  free(x->time);
  free(x->infl);
}

static int plan_same(const hm_plan *a, const hm_plan *b) {
  if (a->micro_batch != b->micro_batch || a->nclasses != b->nclasses) return 0;
  for (int c = 0; c < a->nclasses; c++) {
    const hm_plan_class *x = &a->classes[c], *y = &b->classes[c];
    if (x->nreplicas != y->nreplicas || x->nmicro != y->nmicro || x->nstages != y->nstages ||
        hm_plan_class_chunks(x) != hm_plan_class_chunks(y))
      return 0;
    for (int s = 0; s < x->nstages; s++)
      if (x->stages[s].type != y->stages[s].type || x->stages[s].tp != y->stages[s].tp ||
          x->stages[s].layer_end != y->stages[s].layer_end)
        return 0;
  }
  return 1;
}

/* Refinement by simulation of the best simulated plans (the first HM_SEARCH_REFINE_WIDE on a
 * small cluster, else HM_SEARCH_REFINE), then ranked again without duplicates. */
static void rank_unique(hm_search_result *out) {
  qsort(out->plans, (size_t)out->nplans, sizeof *out->plans, cmp_plan);
  int k = 0;
  for (int i = 0; i < out->nplans; i++) {
    int dup = 0;
    for (int j = 0; j < k && !dup; j++) dup = plan_same(&out->plans[j], &out->plans[i]);
    if (!dup) out->plans[k++] = out->plans[i];
  }
  out->nplans = k;
}

static hm_status refine_top(sctx *x, hm_search_result *out) {
  const int lim = x->wide ? HM_SEARCH_REFINE_WIDE : HM_SEARCH_REFINE;
  const int n = out->nplans < lim ? out->nplans : lim;
  for (int i = 0; i < n; i++)
    HM_TRY(hm_plan_refine(x->in, &out->plans[i], x->wide,
                          x->wide ? HM_SEARCH_REFINE_WIDE_SIMS : HM_SEARCH_REFINE_SIMS, &x->nsplits));
  rank_unique(out);
  return HM_OK;
}

static int is_interleaved(const hm_plan *p) {
  for (int c = 0; c < p->nclasses; c++)
    if (hm_plan_class_chunks(&p->classes[c]) > 1) return 1;
  return 0;
}

/* An interleaved plan is simulated op by op (no extrapolation): beyond small clusters its
 * refinement gets a third of the plain plans' budget, which keeps the search's time. */
static hm_status refine_one(sctx *x, hm_plan *p) {
  return hm_plan_refine(x->in, p, x->wide,
                        x->wide ? HM_SEARCH_REFINE_WIDE_SIMS : HM_SEARCH_REFINE_SIMS / 3, &x->nsplits);
}

/* Interleaved variants of the best HM_SEARCH_INTERLEAVE_TOP plans join the list beside them;
 * the best of them (on a small cluster the best HM_SEARCH_REFINE_WIDE) is refined like the
 * plain plans. */
static hm_status interleave_top(sctx *x, hm_search_result *out) {
  const int n = out->nplans < HM_SEARCH_INTERLEAVE_TOP ? out->nplans : HM_SEARCH_INTERLEAVE_TOP;
  hm_plan *pl = realloc(out->plans, (size_t)(out->nplans + n + 1) * sizeof *pl);
  if (!pl) return hm_error(HM_ERR_NOMEM, "plan search: cannot grow the plan list");
  out->plans = pl;
  for (int i = 0; i < n; i++) {
    pl[out->nplans] = pl[i];
    HM_TRY(hm_plan_interleave(x->in, &pl[out->nplans], x->maxp, x->opt->max_chunks, &x->nsplits));
    if (is_interleaved(&pl[out->nplans])) out->nplans++;
  }
  rank_unique(out);
  const int lim = x->wide ? HM_SEARCH_REFINE_WIDE : HM_SEARCH_REFINE;
  for (int i = 0, done = 0; i < out->nplans && done < lim; i++)
    if (is_interleaved(&pl[i])) {
      HM_TRY(refine_one(x, &pl[i]));
      done++;
    }
  rank_unique(out);
  return HM_OK;
}

/* Each type's own shortlist (the upper bound's candidates), simulated: the plans within memory,
 * fastest first (ties keep the shortlist's order). */
typedef struct type_plans {
  hm_plan *p[MAXK];
  int n[MAXK];
} type_plans;

static hm_status type_plans_make(sctx *x, type_plans *tp) {
  for (int k = 0; k < x->K; k++) {
    tp->p[k] = hm_malloc((size_t)(x->by_type[k].n + 1) * sizeof(hm_plan), "plans");
    if (!tp->p[k]) return HM_ERR_NOMEM;
    for (int i = 0; i < x->by_type[k].n; i++) {
      hm_plan *q = &tp->p[k][tp->n[k]];
      HM_TRY(materialize(x, &x->by_type[k].c[i], q));
      if (q->over_memory) continue;
      hm_plan t = *q; /* insertion, stable */
      int j = tp->n[k]++;
      while (j > 0 && tp->p[k][j - 1].step_time > t.step_time) {
        tp->p[k][j] = tp->p[k][j - 1];
        j--;
      }
      tp->p[k][j] = t;
    }
  }
  return HM_OK;
}

/* Templates per type tried by the heterogeneous data parallelism of search_hdp.c: more with
 * fewer types (the combinations grow as the product). */
static int hdp_templates(int K) { return K <= 2 ? 4 : 1; }

static int same_template(const hm_plan *a, const hm_plan *b) {
  return a->micro_batch == b->micro_batch && a->classes[0].nstages == b->classes[0].nstages &&
         a->classes[0].stages[0].tp == b->classes[0].stages[0].tp;
}

/* Family 1 for type k at its share of the batch (M_k micro-batches of each size), its own
 * shortlist of 16 only; the plans within memory, fastest first, distinct templates, at most lim. */
static hm_status share_templates(sctx *x, int k, double share, int lim, unsigned mbs, hm_plan *pick,
                                 int *np) {
  sctx tmp = *x;
  tmp.by_type[k].n = 0;
  tmp.by_type[k].cap = 16;
  tmp.by_type[k].c = hm_calloc(16, sizeof(cand), "candidates");
  hm_status st = tmp.by_type[k].c ? HM_OK : HM_ERR_NOMEM;
  for (int mbi = 0; mbi < x->nmb && st == HM_OK; mbi++) {
    if (!(mbs & (1u << mbi))) continue;
    sctx w;
    int64_t Mk = llround((double)(x->in->train->global_batch / x->mbs[mbi]) * share);
    if ((st = worker_init(&w, &tmp)) == HM_OK && Mk >= 1) {
      w.share = 1;
      search_single(&w, k, mbi, Mk);
      x->nsplits += w.nsplits;
    }
    worker_free(&w);
  }
  /* simulated, fastest first (the shortlist's order on ties), one plan per template */
  type_plans sl;
  memset(&sl, 0, sizeof sl);
  if (st == HM_OK) {
    sctx only = *x;
    only.by_type[k] = tmp.by_type[k];
    only.K = k + 1; /* type_plans_make fills types 0..K-1: the others have empty lists here */
    for (int j = 0; j < k; j++) only.by_type[j].n = 0;
    st = type_plans_make(&only, &sl);
  }
  *np = 0;
  for (int i = 0; st == HM_OK && i < sl.n[k] && *np < lim; i++) {
    int dup = 0;
    for (int j = 0; j < *np && !dup; j++) dup = same_template(&pick[j], &sl.p[k][i]);
    if (!dup) pick[(*np)++] = sl.p[k][i];
  }
  for (int j = 0; j <= k; j++) free(sl.p[j]);
  free(tmp.by_type[k].c);
  return st;
}

/* Heterogeneous data parallelism with a schedule per class (search_hdp.c): each type's share of
 * the batch from its speed alone, at most hdp_templates(K) distinct templates per type from
 * family 1 run at that share (micro-batch sizes of the types' fastest plans); the best
 * combination, refined, joins the list when it fits. */
static hm_status hetero_dp_top(sctx *x, const type_plans *tp, hm_search_result *out) {
  if (x->K < 2) return HM_OK;
  hm_plan *pick[MAXK] = {0}, *best = hm_malloc(sizeof *best, "plan");
  int np[MAXK] = {0}, found = 0;
  hm_status st = best ? HM_OK : HM_ERR_NOMEM;
  const int lim = hdp_templates(x->K);
  /* each type's share of the batch: its speed alone (its fastest plan) over the sum */
  double speed[MAXK] = {0}, sum = 0;
  unsigned mbs = 0; /* the micro-batch sizes of the types' fastest plans */
  for (int k = 0; k < x->K; k++) {
    if (tp->n[k] == 0) continue;
    sum += speed[k] = (double)tp->p[k][0].global_batch / tp->p[k][0].step_time;
    for (int i = 0; i < x->nmb; i++)
      if (x->mbs[i] == tp->p[k][0].micro_batch) mbs |= 1u << i;
  }
  for (int k = 0; k < x->K && st == HM_OK; k++) {
    if (!(pick[k] = hm_malloc((size_t)lim * sizeof(hm_plan), "plans"))) st = HM_ERR_NOMEM;
    else if (speed[k] > 0) st = share_templates(x, k, speed[k] / sum, lim, mbs, pick[k], &np[k]);
  }
  if (st == HM_OK)
    st = hm_plan_hetero_dp(x->in, (const hm_plan *const *)pick, np, x->K, x->maxp,
                           x->opt->max_chunks, best, &found, &x->nsplits);
  if (st == HM_OK && found) st = refine_one(x, best);
  if (st == HM_OK && found && !best->over_memory) {
    hm_plan *pl = realloc(out->plans, (size_t)(out->nplans + 1) * sizeof *pl);
    if (!pl) st = hm_error(HM_ERR_NOMEM, "plan search: cannot grow the plan list");
    else {
      out->plans = pl;
      pl[out->nplans++] = *best;
      rank_unique(out);
    }
  }
  for (int k = 0; k < x->K; k++) free(pick[k]);
  free(best);
  return st;
}

static hm_status no_fit_error(sctx *x) {
  const hm_plan_inputs *in = x->in;
  double need = hm_static_bytes(in->train, in->model->params, 1), have = 0, biggest = 0;
  for (int k = 0; k < in->cluster->ntypes; k++) {
    if (x->single_only >= 0 && k != x->single_only) continue;
    double cap = in->cluster->types[k].memory_bytes * in->train->memory_fraction;
    have += cap * (double)in->cluster->types[k].count;
    if (cap > biggest) biggest = cap;
  }
  if (need > have)
    return hm_error(HM_ERR_NO_FIT, "model \"%s\" cannot fit: its %.4g parameters need %.4g GB of "
                    "weights, gradients and optimizer state, the devices offer %.4g GB in all "
                    "(memory_fraction %.2f)", in->model->name, in->model->params, need / 1e9,
                    have / 1e9, in->train->memory_fraction);
  /* the smallest stage possible: one layer, one micro-batch in flight, the largest tp */
  char why[512] = "";
  size_t w = 0;
  int layer_too_big = 1;
  for (int k = 0; k < x->K; k++) {
    if (x->single_only >= 0 && k != x->single_only) continue;
    double need = INFINITY;
    int need_tp = 1, need_l = 0;
    for (int ti = 0; ti < NTP; ti++) {
      const hm_layer_costs *lc = costs_of(x, k, ti, 0);
      if (!lc->ok || x->groups[k][ti] < 1) continue;
      double worst = 0;
      int wl = 0;
      for (int l = 0; l < x->n; l++) {
        double b = hm_static_bytes(in->train, lc->params[l] - lc->shared[l], 1) + lc->act[l];
        if (b > worst) worst = b, wl = l;
      }
      worst += lc->reserve;
      if (worst < need) need = worst, need_tp = tp_values[ti], need_l = wl;
    }
    const double cap = in->cluster->types[k].memory_bytes * in->train->memory_fraction;
    if (need <= cap) layer_too_big = 0;
    if (w < sizeof why && need < INFINITY)
      w += snprintf(why + w, sizeof why - w, "%s%s: layer %d (%s) needs %.3g GB at tp %d, %.3g GB "
                    "usable", w ? "; " : "", in->cluster->types[k].name, need_l,
                    in->model->layers[need_l].kind, need / 1e9, need_tp, cap / 1e9);
  }
  if (layer_too_big)
    return hm_error(HM_ERR_NO_FIT, "model \"%s\" cannot fit: even one layer per device with "
                    "micro-batch %lld does not fit (%s)", in->model->name, (long long)x->mbs[0], why);
  return hm_error(HM_ERR_NO_FIT, "model \"%s\" fits no plan within %d pipeline stages and tensor "
                  "parallelism up to 8 (%s; largest device %.4g GB usable): the layers fit one by one, "
                  "but no pipeline within that depth and the devices available holds them all (%s)", in->model->name, x->maxp,
                  x->single_only >= 0 ? in->cluster->types[x->single_only].name : "all types",
                  biggest / 1e9, why);
}

static hm_status check_inputs(const hm_plan_inputs *in) {
  if (!in || !in->cluster || !in->model || !in->train)
    return hm_error(HM_ERR_INVALID_ARG, "plan search: cluster, model and training are required");
  if (in->cluster->ntypes < 1 || in->cluster->ntypes > HM_PLAN_MAX_TYPES)
    return hm_error(HM_ERR_UNSUPPORTED, "plan search: %d device types (1 to %d supported)",
                    in->cluster->ntypes, HM_PLAN_MAX_TYPES);
  if (in->model->nlayers < 1) return hm_error(HM_ERR_SPEC, "model: has no layers");
  if (in->train->weight_bytes < 0 || in->train->optimizer_bytes < 0)
    return hm_error(HM_ERR_INVALID_ARG, "plan search: the training spec is not resolved (call "
                    "hm_spec_resolve after reading the specs)");
  if (in->train->global_batch < 1)
    return hm_error(HM_ERR_SPEC, "training.global_batch: must be >= 1");
  return HM_OK;
}

hm_status hm_plan_search(const hm_plan_inputs *in, const hm_search_options *opt_in,
                         hm_search_result *out) {
  const double t0 = hm_now_s();
  if (!out) return hm_error(HM_ERR_INVALID_ARG, "plan search: result is NULL");
  memset(out, 0, sizeof *out);
  out->best_single_type = -1;
  HM_TRY(check_inputs(in));
  hm_search_options opt;
  if (opt_in) opt = *opt_in; else hm_search_options_default(&opt);
  if (opt.top_k < 1) opt.top_k = 1;
  if (opt.max_chunks < 1 || opt.max_chunks > HM_SEARCH_MAX_CHUNKS) opt.max_chunks = HM_SEARCH_MAX_CHUNKS;
  if (opt.max_stages < 1 || opt.max_stages > HM_PLAN_MAX_STAGES) opt.max_stages = HM_PLAN_MAX_STAGES;
  if (opt.only_type >= in->cluster->ntypes)
    return hm_error(HM_ERR_INVALID_ARG, "plan search: no device type %d", opt.only_type);
  sctx x;
  memset(&x, 0, sizeof x);
  type_plans tpl;
  memset(&tpl, 0, sizeof tpl);
  x.in = in;
  x.opt = &opt;
  x.n = in->model->nlayers;
  x.K = in->cluster->ntypes;
  x.maxp = opt.max_stages;
  x.single_only = opt.only_type;
  for (int l = 0; l < x.n; l++)
    if (in->model->layers[l].shared_with >= 0) x.ties = 1;
  for (int i = 0; i < in->train->n_micro_batch_sizes; i++)
    if (in->train->global_batch % in->train->micro_batch_sizes[i] == 0)
      x.mbs[x.nmb++] = in->train->micro_batch_sizes[i];
  if (x.nmb == 0)
    return hm_error(HM_ERR_SPEC, "training.micro_batch_sizes: none divides global_batch %lld",
                    (long long)in->train->global_batch);
  hm_status st = HM_OK;
  /* small clusters get the wide candidate set and a longer simulated shortlist */
  x.wide = in->cluster->ndevices <= HM_SEARCH_WIDE_DEVICES;
  int capc = opt.top_k * 8 > 48 ? opt.top_k * 8 : 48; /* simulated to re-rank */
  if (x.wide && capc < HM_SEARCH_WIDE_SIMULATE) capc = HM_SEARCH_WIDE_SIMULATE;
  if (x.wide) {
    x.wide_p = x.n < x.maxp ? x.n : x.maxp;
    if (x.wide_p > in->cluster->ndevices) x.wide_p = (int)in->cluster->ndevices;
    x.wide_t = hm_calloc((size_t)x.K * NTP * x.nmb * x.wide_p, sizeof *x.wide_t, "templates");
    if (!x.wide_t) x.wide = 0;
  }
  x.all.cap = capc;
  x.all.c = hm_calloc((size_t)capc, sizeof(cand), "candidates");
  /* each type alone: a shortlist of 16, the same as a search restricted to that type keeps */
  const int cap1 = 16;
  if (opt.only_type >= 0) x.all.cap = cap1;
  for (int k = 0; k < x.K && x.all.c; k++) {
    x.by_type[k].cap = cap1;
    if (!(x.by_type[k].c = hm_calloc((size_t)cap1, sizeof(cand), "candidates"))) x.all.cap = 0;
  }
  x.costs = hm_calloc((size_t)x.K * NTP * x.nmb, sizeof *x.costs, "layer costs");
  x.best_single = hm_calloc((size_t)x.K * x.nmb, sizeof *x.best_single, "candidates");
  x.have_single = hm_calloc((size_t)x.K * x.nmb, sizeof *x.have_single, "candidates");
  const size_t pn = (size_t)HM_PLAN_MAX_STAGES * x.n;
  x.time = hm_malloc((pn * 4 + HM_PLAN_MAX_STAGES) * sizeof(double), "split scratch");
  x.infl = hm_malloc(HM_PLAN_MAX_STAGES * sizeof(int), "split scratch");
  if (!x.costs || !x.all.c || !x.all.cap || !x.best_single || !x.have_single || !x.time || !x.infl) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  x.bnd = x.time + pn;
  x.ms = x.bnd + pn;
  x.ma = x.ms + pn;
  x.cap = x.ma + pn;
  for (int k = 0; k < x.K; k++)
    for (int ti = 0; ti < NTP; ti++) {
      x.groups[k][ti] = hm_type_groups(in->cluster, k, tp_values[ti]);
      for (int mbi = 0; mbi < x.nmb; mbi++)
        if ((st = hm_layer_costs_init(in, k, tp_values[ti], x.mbs[mbi], costs_of(&x, k, ti, mbi))) != HM_OK)
          goto done;
    }
  {
    /* micro-batch sizes, in parallel with HETMIX_PLAN_THREADS > 1 (OpenMP), sharing the
     * shortlists; results do not depend on the thread count */
    sctx *w = hm_calloc((size_t)x.nmb, sizeof *w, "search workers");
    if (!w) {
      st = HM_ERR_NOMEM;
      goto done;
    }
    for (int mbi = 0; mbi < x.nmb && st == HM_OK; mbi++) st = worker_init(&w[mbi], &x);
    if (st == HM_OK) {
      /* default one thread: on a shared machine the workers mostly wait for a core and prune
       * less (bench_plan shows both) */
      long threads = 1;
      st = hm_env_long("HETMIX_PLAN_THREADS", 1, 1, 1024, &threads);
      if (threads > x.nmb) threads = x.nmb;
      /* family 1 in order (the per-size best single-type templates it leaves depend on what
       * was pruned, so it is not run concurrently); families 2 and 3 in parallel: they only add
       * to the shared list, whose final content does not depend on timing */
      for (int mbi = 0; mbi < x.nmb; mbi++) search_singles(&w[mbi], mbi);
#pragma omp parallel for schedule(dynamic, 1) num_threads((int)threads)
      for (int mbi = 0; mbi < x.nmb; mbi++) search_mixes(&w[mbi], mbi);
      for (int mbi = 0; mbi < x.nmb; mbi++) x.nsplits += w[mbi].nsplits;
    }
    for (int mbi = 0; mbi < x.nmb; mbi++) worker_free(&w[mbi]);
    free(w);
    if (st != HM_OK) goto done;
  }
  /* simulate the best estimates; keep those within memory; rank by simulated step time */
  /* with each type's own shortlist: the best single-type plans are ranked by simulation too,
   * whatever the estimates of the mixed candidates */
  int nby = 0;
  for (int k = 0; k < x.K; k++) nby += x.by_type[k].n;
  out->plans = hm_calloc((size_t)(x.all.n + nby) + 1, sizeof *out->plans, "plans");
  if (!out->plans) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  for (int i = 0; i < x.all.n + nby; i++) {
    const cand *c = i < x.all.n ? &x.all.c[i] : NULL;
    for (int k = 0, j = i - x.all.n; !c; j -= x.by_type[k++].n)
      if (j < x.by_type[k].n) c = &x.by_type[k].c[j];
    int dup = 0;
    for (int j = 0; j < x.all.n && i >= x.all.n && !dup; j++) dup = cand_equal(&x.all.c[j], c);
    if (dup) continue;
    hm_plan *p = &out->plans[out->nplans];
    if ((st = materialize(&x, c, p)) != HM_OK) goto done;
    if (!p->over_memory) out->nplans++;
  }
  if (out->nplans == 0) {
    st = no_fit_error(&x);
    goto done;
  }
  qsort(out->plans, (size_t)out->nplans, sizeof *out->plans, cmp_plan);
  if ((st = refine_top(&x, out)) != HM_OK) goto done;
  if ((st = interleave_top(&x, out)) != HM_OK) goto done;
  if (opt.only_type < 0 && (st = type_plans_make(&x, &tpl)) != HM_OK) goto done;
  if (opt.only_type < 0 && (st = hetero_dp_top(&x, &tpl, out)) != HM_OK) goto done;
  if (out->nplans > opt.top_k) out->nplans = opt.top_k;
  out->candidates = x.nsplits;
  if (opt.upper_bound && opt.only_type < 0) {
    /* the bound: each type alone, i.e. exactly the candidates a search restricted to that type
     * keeps (same pruning against that type's own list), simulated and ranked the same way */
    /* each type's best plan then gets its interleaved variant, as the mixed plans do */
    hm_plan *tbest = hm_malloc(sizeof *tbest, "plan");
    if (!tbest) {
      st = HM_ERR_NOMEM;
      goto done;
    }
    for (int k = 0; k < x.K && st == HM_OK; k++) {
      if (tpl.n[k] == 0) continue;
      *tbest = tpl.p[k][0];
      out->type_best_tokens_per_s[k] = tbest->tokens_per_s;
      st = hm_plan_interleave(in, tbest, x.maxp, opt.max_chunks, &x.nsplits);
      if (st == HM_OK && is_interleaved(tbest)) st = refine_one(&x, tbest);
      if (st != HM_OK) continue;
      out->type_best_tokens_per_s[k] = tbest->tokens_per_s;
      if (out->best_single_type < 0 || tbest->tokens_per_s > out->best_single.tokens_per_s) {
        out->best_single_type = k;
        out->best_single = *tbest;
      }
    }
    free(tbest);
    if (st != HM_OK) goto done;
    for (int k = 0; k < x.K; k++) out->upper_bound_tokens_per_s += out->type_best_tokens_per_s[k];
    hm_clear_error();
    for (int i = 0; i < out->nplans; i++) {
      out->plans[i].upper_bound_tokens_per_s = out->upper_bound_tokens_per_s;
      out->plans[i].utilization = out->upper_bound_tokens_per_s > 0
                                      ? out->plans[i].tokens_per_s / out->upper_bound_tokens_per_s
                                      : 0;
    }
    if (out->best_single_type >= 0) {
      out->best_single.upper_bound_tokens_per_s = out->upper_bound_tokens_per_s;
      out->best_single.utilization =
          out->best_single.tokens_per_s / out->upper_bound_tokens_per_s;
    }
  }
done:
  out->seconds = hm_now_s() - t0;
  for (int k = 0; k < MAXK; k++) free(tpl.p[k]);
  sctx_free(&x);
  if (st != HM_OK) hm_search_result_free(out);
  return st;
}
