/* The 1F1B op-list generator: the one schedule both the simulator and the pipeline runtime use.
 * It only orders ops; it knows no times, devices or bytes. Op i of a stage is a function of i
 * (hm_schedule_1f1b_op): the runtime gets the whole lists (hm_schedule_1f1b), the simulator reads
 * them one op at a time, so that it needs no memory that grows with the micro-batch count. */
#include <limits.h>
#include <stdlib.h>

#include "hetmix/plan.h"
#include "util/util.h"

static const char *const op_names[HM_OP_KIND_COUNT] = {
    "fwd",       "bwd",       "send_act",      "recv_act",  "send_grad",
    "recv_grad", "allreduce", "tied_emb_sync", "grad_norm", "optimizer"};

const char *hm_op_kind_name(hm_op_kind k) {
  return (k >= 0 && k < HM_OP_KIND_COUNT) ? op_names[k] : "unknown";
}

hm_status hm_schedule_1f1b_check(const hm_schedule_config *cfg) {
  if (!cfg) return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: NULL argument");
  const int p = cfg->nstages, m = cfg->nmicro;
  if (p < 1 || m < 1)
    return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: need stages >= 1 and micro-batches >= 1 "
                    "(got %d, %d)", p, m);
  if (!cfg->stage_layers)
    return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: stage_layers is NULL");
  for (int s = 0; s < p; s++)
    if (cfg->stage_layers[s + 1] <= cfg->stage_layers[s])
      return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: stage %d has no layers ([%d, %d))", s,
                      cfg->stage_layers[s], cfg->stage_layers[s + 1]);
  return HM_OK;
}

/* Ops of one forward group ([RECV_ACT] FWD [SEND_ACT]) or backward group of stage s. */
static int group_len(int s, int p) { return 1 + (s > 0) + (s < p - 1); }

static int warmup_of(int s, int p, int m) { return (p - 1 - s) < m ? (p - 1 - s) : m; }

static int per_bucket_of(const hm_schedule_config *cfg) {
  return cfg->layers_per_bucket > 0 ? cfg->layers_per_bucket : 1;
}

static int nbuckets_of(const hm_schedule_config *cfg, int s) {
  return cfg->data_parallel
             ? hm_grad_bucket_count(cfg->stage_layers[s], cfg->stage_layers[s + 1], per_bucket_of(cfg))
             : 0;
}

static int tied_of(const hm_schedule_config *cfg, int s) {
  return cfg->tied_embeddings && cfg->nstages > 1 && (s == 0 || s == cfg->nstages - 1);
}

int64_t hm_schedule_1f1b_nops(const hm_schedule_config *cfg, int s) {
  const int p = cfg->nstages;
  return (int64_t)cfg->nmicro * 2 * group_len(s, p) + nbuckets_of(cfg, s) + tied_of(cfg, s) + 2;
}

static hm_op make(hm_op_kind kind, int micro, int peer, int lb, int le) {
  return (hm_op){.kind = kind, .micro = micro, .peer = peer, .layer_begin = lb, .layer_end = le};
}

/* Op r of the forward (fwd = 1) or backward group of micro-batch k on stage s. */
static hm_op group_op(int s, int p, int fwd, int k, int r, int lb, int le) {
  const int has_in = fwd ? s > 0 : s < p - 1; /* a receive first */
  if (has_in && r == 0)
    return make(fwd ? HM_OP_RECV_ACT : HM_OP_RECV_GRAD, k, fwd ? s - 1 : s + 1, lb, le);
  if (r == has_in) return make(fwd ? HM_OP_FWD : HM_OP_BWD, k, -1, lb, le);
  return make(fwd ? HM_OP_SEND_ACT : HM_OP_SEND_GRAD, k, fwd ? s + 1 : s - 1, lb, le);
}

/* Stage s (0-based) of p: w = min(p-1-s, m) warm-up forwards, then m-w periods of one forward
 * (micro w+j) and one backward (micro j), then the w remaining backwards; then the sync ops. */
hm_op hm_schedule_1f1b_op(const hm_schedule_config *cfg, int s, int64_t i) {
  const int p = cfg->nstages, m = cfg->nmicro, g = group_len(s, p), w = warmup_of(s, p, m);
  const int lb = cfg->stage_layers[s], le = cfg->stage_layers[s + 1];
  const int64_t steady = (int64_t)w * g, cool = steady + (int64_t)(m - w) * 2 * g;
  if (i < steady) return group_op(s, p, 1, (int)(i / g), (int)(i % g), lb, le);
  if (i < cool) {
    const int64_t j = (i - steady) / (2 * g);
    const int r = (int)((i - steady) % (2 * g));
    return r < g ? group_op(s, p, 1, (int)(w + j), r, lb, le)
                 : group_op(s, p, 0, (int)j, r - g, lb, le);
  }
  const int64_t sync = cool + (int64_t)w * g;
  if (i < sync) return group_op(s, p, 0, (int)(m - w + (i - cool) / g), (int)((i - cool) % g), lb, le);
  /* last layers' gradients are complete first in backprop order: bucket from the end */
  int q = (int)(i - sync);
  const int nb = nbuckets_of(cfg, s);
  if (q < nb) {
    int lo, hi;
    hm_grad_bucket(lb, le, per_bucket_of(cfg), q, &lo, &hi);
    return make(HM_OP_ALLREDUCE, -1, -1, lo, hi);
  }
  q -= nb;
  if (tied_of(cfg, s) && q-- == 0)
    return make(HM_OP_TIED_EMB_SYNC, -1, s == 0 ? p - 1 : 0, s == 0 ? lb : le - 1,
                s == 0 ? lb + 1 : le);
  return make(q == 0 ? HM_OP_GRAD_NORM : HM_OP_OPTIMIZER, -1, -1, lb, le);
}

void hm_schedule_1f1b_steady(const hm_schedule_config *cfg, int s, int64_t *begin, int *period_ops,
                             int64_t *nperiods) {
  const int p = cfg->nstages, m = cfg->nmicro, g = group_len(s, p), w = warmup_of(s, p, m);
  *begin = (int64_t)w * g;
  *period_ops = 2 * g;
  *nperiods = m - w;
}

hm_status hm_schedule_1f1b(const hm_schedule_config *cfg, hm_schedule *out) {
  if (!out) return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: NULL argument");
  HM_TRY(hm_schedule_1f1b_check(cfg));
  const int p = cfg->nstages;
  for (int s = 0; s < p; s++)
    if (hm_schedule_1f1b_nops(cfg, s) > INT_MAX / 2)
      return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: %d micro-batches give more ops than "
                      "one list holds; the runtime runs far fewer per step", cfg->nmicro);
  out->nstages = p;
  out->nmicro = cfg->nmicro;
  out->stages = hm_calloc((size_t)p, sizeof *out->stages, "schedule stages");
  if (!out->stages) return HM_ERR_NOMEM;
  for (int s = 0; s < p; s++) {
    const int n = (int)hm_schedule_1f1b_nops(cfg, s);
    hm_stage_ops *st = &out->stages[s];
    st->ops = hm_malloc((size_t)n * sizeof *st->ops, "schedule ops");
    if (!st->ops) {
      hm_schedule_free(out);
      return HM_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) st->ops[i] = hm_schedule_1f1b_op(cfg, s, i);
    st->nops = n;
  }
  return HM_OK;
}

void hm_schedule_free(hm_schedule *s) {
  if (!s || !s->stages) return;
  for (int i = 0; i < s->nstages; i++) free(s->stages[i].ops);
  free(s->stages);
  s->stages = NULL;
}

int hm_schedule_max_inflight(const hm_schedule *s, int stage) {
  if (!s || stage < 0 || stage >= s->nstages) return 0;
  const hm_stage_ops *st = &s->stages[stage];
  int live = 0, peak = 0;
  for (int i = 0; i < st->nops; i++) {
    if (st->ops[i].kind == HM_OP_FWD && ++live > peak) peak = live;
    if (st->ops[i].kind == HM_OP_BWD) live--;
  }
  return peak;
}
