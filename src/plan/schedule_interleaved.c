/* Interleaved 1F1B (Megatron-LM's virtual pipeline stages, Narayanan et al. SC'21): stage s of p
 * holds v model chunks, chunk c being virtual stage j = c*p + s of the p*v in model order.
 *
 * Order of the compute ops of stage s: the k-th forward runs entry k of a table that walks the
 * micro-batches in groups: within a group, every micro-batch of chunk 0, then of chunk 1, ...
 * Groups hold p micro-batches (Megatron-LM's order, which needs p | m), except the last, which
 * holds p + (m mod p) (or m when m < p), so any m runs. The k-th backward runs entry k with the
 * chunk reversed (v-1-c). Warm-up: the first W = min(2(p-1-s) + (v-1)g, mv) forwards, g the
 * largest group (Megatron-core's 2(p-1-s) + (v-1) x group size); then one forward and one backward alternate; then the
 * remaining W backwards. Each forward of virtual stage j is [RECV_ACT] FWD [SEND_ACT], a receive
 * unless j = 0 and a send unless j = pv-1, from / to stage s-1 / s+1 modulo p (virtual stage
 * c*p+p-1 feeds (c+1)*p on stage 0); backwards mirror it. Then the gradient buckets of each chunk,
 * last chunk first; the tied-embedding sync (stage 0's chunk 0 with stage p-1's chunk v-1); the
 * gradient norm; one optimizer op per chunk.
 *
 * Op i is a function of i: the ops before compute slot n are counted in closed form (a forward
 * or backward group has 3 ops less the missing receive or send of the first and last virtual
 * stages), and slot n of op i is found by bisection, so nothing is built per micro-batch. */
#include "plan/schedule_internal.h"
#include "util/util.h"

typedef struct ilv {
  int p, v, m, s;
  int nfull, last; /* groups of p micro-batches before the last group, size of the last group */
  int64_t total;  /* forwards (= backwards) of the stage: m*v */
  int64_t W;      /* warm-up forwards */
} ilv;

static ilv ilv_of(const hm_schedule_config *cfg, int s) {
  ilv x = {.p = cfg->nstages, .v = cfg->nchunks, .m = cfg->nmicro, .s = s};
  /* a remainder joins the last group: a short group after full ones would deadlock some
   * (p, v, m) under the warm-up formula (p=4, v=3, m=5 for one) */
  x.nfull = x.m / x.p > 0 ? x.m / x.p - 1 : 0;
  x.last = x.m - x.nfull * x.p;
  x.total = (int64_t)x.m * x.v;
  const int g = x.last > x.p ? x.last : (x.nfull > 0 ? x.p : x.last);
  const int64_t w = 2 * (int64_t)(x.p - 1 - s) + (int64_t)(x.v - 1) * g;
  x.W = w < x.total ? w : x.total;
  return x;
}

static int64_t clamp64(int64_t a, int64_t lo, int64_t hi) { return a < lo ? lo : a > hi ? hi : a; }

/* Table entries among the first F whose chunk is c. */
static int64_t count_chunk(const ilv *x, int64_t F, int c) {
  const int64_t pv = (int64_t)x->p * x->v, full = (int64_t)x->nfull * pv, a = F < full ? F : full;
  int64_t n = a / pv * x->p + clamp64(a % pv - (int64_t)c * x->p, 0, x->p);
  if (F > full) n += clamp64(F - full - (int64_t)c * x->last, 0, x->last);
  return n;
}

/* Table entry k: micro-batch and chunk. */
static void entry(const ilv *x, int64_t k, int *micro, int *chunk) {
  const int64_t pv = (int64_t)x->p * x->v, full = (int64_t)x->nfull * pv;
  if (k < full) {
    *chunk = (int)(k % pv / x->p);
    *micro = (int)(k / pv * x->p + k % x->p);
  } else {
    *chunk = (int)((k - full) / x->last);
    *micro = (int)((int64_t)x->nfull * x->p + (k - full) % x->last);
  }
}

/* Ops of the first F forwards and B backwards of the stage. */
static int64_t ops_of(const ilv *x, int64_t F, int64_t B) {
  int64_t n = 3 * (F + B);
  if (x->s == 0) n -= count_chunk(x, F, 0) + count_chunk(x, B, x->v - 1);
  if (x->s == x->p - 1) n -= count_chunk(x, F, x->v - 1) + count_chunk(x, B, 0);
  return n;
}

/* Forwards and backwards done before compute slot n (0 <= n <= 2mv). */
static void done_before(const ilv *x, int64_t n, int64_t *F, int64_t *B) {
  if (n <= x->W) {
    *F = n, *B = 0;
  } else if (n <= 2 * x->total - x->W) {
    *F = x->W + (n - x->W + 1) / 2, *B = (n - x->W) / 2;
  } else {
    *F = x->total, *B = n - x->total;
  }
}

static int64_t ops_before(const ilv *x, int64_t n) {
  int64_t F, B;
  done_before(x, n, &F, &B);
  return ops_of(x, F, B);
}

static int vstage(const ilv *x, int chunk) { return chunk * x->p + x->s; }

static hm_op mk(hm_op_kind kind, int micro, int peer, int lb, int le, int chunk) {
  return (hm_op){.kind = kind, .micro = micro, .peer = peer, .layer_begin = lb, .layer_end = le,
                 .chunk = chunk};
}

/* Op r of compute slot n's group. */
static hm_op slot_op(const hm_schedule_config *cfg, const ilv *x, int64_t n, int r) {
  int fwd;
  int64_t k;
  if (n < x->W) {
    fwd = 1, k = n;
  } else if (n < 2 * x->total - x->W) {
    fwd = (n - x->W) % 2 == 0;
    k = fwd ? x->W + (n - x->W) / 2 : (n - x->W) / 2;
  } else {
    fwd = 0, k = n - x->total;
  }
  int micro, chunk;
  entry(x, k, &micro, &chunk);
  if (!fwd) chunk = x->v - 1 - chunk;
  const int j = vstage(x, chunk), last = x->p * x->v - 1;
  const int lb = cfg->stage_layers[j], le = cfg->stage_layers[j + 1];
  const int prev = (x->s + x->p - 1) % x->p, next = (x->s + 1) % x->p;
  const int has_in = fwd ? j > 0 : j < last;
  if (has_in && r == 0)
    return mk(fwd ? HM_OP_RECV_ACT : HM_OP_RECV_GRAD, micro, fwd ? prev : next, lb, le, chunk);
  if (r == has_in) return mk(fwd ? HM_OP_FWD : HM_OP_BWD, micro, -1, lb, le, chunk);
  return mk(fwd ? HM_OP_SEND_ACT : HM_OP_SEND_GRAD, micro, fwd ? next : prev, lb, le, chunk);
}

static int per_bucket(const hm_schedule_config *cfg) {
  return cfg->layers_per_bucket > 0 ? cfg->layers_per_bucket : 1;
}

static int chunk_buckets(const hm_schedule_config *cfg, const ilv *x, int c) {
  const int j = vstage(x, c);
  return cfg->data_parallel
             ? hm_grad_bucket_count(cfg->stage_layers[j], cfg->stage_layers[j + 1], per_bucket(cfg))
             : 0;
}

static int tied(const hm_schedule_config *cfg, int s) {
  return cfg->tied_embeddings && (s == 0 || s == cfg->nstages - 1);
}

hm_status hm_schedule_ilv_check(const hm_schedule_config *cfg) {
  const int p = cfg->nstages, v = cfg->nchunks;
  if (p < 2)
    return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: %d model chunks per stage need at least "
                    "2 stages (got %d)", v, p);
  if (v > HM_PLAN_MAX_STAGES || (int64_t)p * v > HM_PLAN_MAX_STAGES)
    return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: %d stages x %d chunks exceed %d virtual "
                    "stages", p, v, HM_PLAN_MAX_STAGES);
  if (cfg->nmicro > HM_SCHEDULE_INTERLEAVED_MAX_MICRO)
    return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: interleaved 1F1B runs at most %d "
                    "micro-batches per replica (got %d)", HM_SCHEDULE_INTERLEAVED_MAX_MICRO,
                    cfg->nmicro);
  for (int j = 0; j < p * v; j++)
    if (cfg->stage_layers[j + 1] <= cfg->stage_layers[j])
      return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: virtual stage %d (chunk %d of stage %d) "
                      "has no layers ([%d, %d))", j, j / p, j % p, cfg->stage_layers[j],
                      cfg->stage_layers[j + 1]);
  return HM_OK;
}

int64_t hm_schedule_ilv_nops(const hm_schedule_config *cfg, int s) {
  const ilv x = ilv_of(cfg, s);
  int64_t n = ops_before(&x, 2 * x.total) + tied(cfg, s) + 1 + x.v;
  for (int c = 0; c < x.v; c++) n += chunk_buckets(cfg, &x, c);
  return n;
}

hm_op hm_schedule_ilv_op(const hm_schedule_config *cfg, int s, int64_t i) {
  const ilv x = ilv_of(cfg, s);
  const int64_t npipe = ops_before(&x, 2 * x.total);
  if (i < npipe && s > 0 && s < x.p - 1) /* inner stages: every group has 3 ops */
    return slot_op(cfg, &x, i / 3, (int)(i % 3));
  if (i < npipe) { /* the last slot n with ops_before(n) <= i; groups have 2 or 3 ops */
    int64_t lo = i / 3, hi = i / 2 < 2 * x.total - 1 ? i / 2 : 2 * x.total - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (ops_before(&x, mid) <= i) lo = mid; else hi = mid - 1;
    }
    return slot_op(cfg, &x, lo, (int)(i - ops_before(&x, lo)));
  }
  int64_t q = i - npipe;
  for (int c = x.v - 1; c >= 0; c--) { /* buckets: last chunk first, from its last layer back */
    const int nb = chunk_buckets(cfg, &x, c);
    if (q < nb) {
      const int j = vstage(&x, c);
      int lo, hi;
      hm_grad_bucket(cfg->stage_layers[j], cfg->stage_layers[j + 1], per_bucket(cfg), (int)q, &lo, &hi);
      return mk(HM_OP_ALLREDUCE, -1, -1, lo, hi, c);
    }
    q -= nb;
  }
  if (tied(cfg, s) && q-- == 0) {
    const int j = s == 0 ? 0 : x.p * x.v - 1, lb = cfg->stage_layers[j], le = cfg->stage_layers[j + 1];
    return mk(HM_OP_TIED_EMB_SYNC, -1, s == 0 ? x.p - 1 : 0, s == 0 ? lb : le - 1,
              s == 0 ? lb + 1 : le, s == 0 ? 0 : x.v - 1);
  }
  if (q == 0) return mk(HM_OP_GRAD_NORM, -1, -1, cfg->stage_layers[s], cfg->stage_layers[s + 1], 0);
  const int c = (int)(q - 1), j = vstage(&x, c < x.v ? c : x.v - 1);
  return mk(HM_OP_OPTIMIZER, -1, -1, cfg->stage_layers[j], cfg->stage_layers[j + 1], c);
}
