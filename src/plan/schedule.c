/* The 1F1B op-list generator: the one schedule both the simulator and the pipeline runtime use.
 * It only orders ops; it knows no times, devices or bytes. */
#include <stdlib.h>

#include "hetmix/plan.h"
#include "util/util.h"

static const char *const op_names[HM_OP_KIND_COUNT] = {
    "fwd",       "bwd",       "send_act",      "recv_act",  "send_grad",
    "recv_grad", "allreduce", "tied_emb_sync", "grad_norm", "optimizer"};

const char *hm_op_kind_name(hm_op_kind k) {
  return (k >= 0 && k < HM_OP_KIND_COUNT) ? op_names[k] : "unknown";
}

static void emit(hm_stage_ops *st, hm_op_kind kind, int micro, int peer, int lb, int le) {
  st->ops[st->nops++] = (hm_op){.kind = kind, .micro = micro, .peer = peer,
                                .layer_begin = lb, .layer_end = le};
}

static void emit_fwd(hm_stage_ops *st, int s, int p, int k, int lb, int le) {
  if (s > 0) emit(st, HM_OP_RECV_ACT, k, s - 1, lb, le);
  emit(st, HM_OP_FWD, k, -1, lb, le);
  if (s < p - 1) emit(st, HM_OP_SEND_ACT, k, s + 1, lb, le);
}

static void emit_bwd(hm_stage_ops *st, int s, int p, int k, int lb, int le) {
  if (s < p - 1) emit(st, HM_OP_RECV_GRAD, k, s + 1, lb, le);
  emit(st, HM_OP_BWD, k, -1, lb, le);
  if (s > 0) emit(st, HM_OP_SEND_GRAD, k, s - 1, lb, le);
}

hm_status hm_schedule_1f1b(const hm_schedule_config *cfg, hm_schedule *out) {
  if (!cfg || !out) return hm_error(HM_ERR_INVALID_ARG, "hm_schedule_1f1b: NULL argument");
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
  const int per_bucket = cfg->layers_per_bucket > 0 ? cfg->layers_per_bucket : 1;
  out->nstages = p;
  out->nmicro = m;
  out->stages = hm_calloc((size_t)p, sizeof *out->stages, "schedule stages");
  if (!out->stages) return HM_ERR_NOMEM;
  for (int s = 0; s < p; s++) {
    const int lb = cfg->stage_layers[s], le = cfg->stage_layers[s + 1];
    const int nbuckets = cfg->data_parallel ? (le - lb + per_bucket - 1) / per_bucket : 0;
    const size_t cap = (size_t)m * 6 + (size_t)nbuckets + 3;
    hm_stage_ops *st = &out->stages[s];
    st->ops = hm_malloc(cap * sizeof *st->ops, "schedule ops");
    if (!st->ops) {
      hm_schedule_free(out);
      return HM_ERR_NOMEM;
    }
    const int warmup = (p - 1 - s) < m ? (p - 1 - s) : m;
    for (int k = 0; k < warmup; k++) emit_fwd(st, s, p, k, lb, le);
    for (int i = 0; i < m - warmup; i++) {
      emit_fwd(st, s, p, warmup + i, lb, le);
      emit_bwd(st, s, p, i, lb, le);
    }
    for (int k = m - warmup; k < m; k++) emit_bwd(st, s, p, k, lb, le);
    /* last layers' gradients are complete first in backprop order: bucket from the end */
    for (int hi = le; hi > lb && cfg->data_parallel; hi -= per_bucket) {
      int lo = hi - per_bucket > lb ? hi - per_bucket : lb;
      emit(st, HM_OP_ALLREDUCE, -1, -1, lo, hi);
    }
    if (cfg->tied_embeddings && p > 1 && (s == 0 || s == p - 1))
      emit(st, HM_OP_TIED_EMB_SYNC, -1, s == 0 ? p - 1 : 0, s == 0 ? lb : le - 1, s == 0 ? lb + 1 : le);
    emit(st, HM_OP_GRAD_NORM, -1, -1, lb, le);
    emit(st, HM_OP_OPTIMIZER, -1, -1, lb, le);
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
