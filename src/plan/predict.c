/* Prediction of a given plan: turns its stages into simulator input with the cost of stepcost.c,
 * runs the event-driven simulator on the 1F1B op lists, and derives throughput, memory, MFU.
 * Also the structural validation of a plan against a cluster and model. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

/* Samples per step, sum over classes of replicas x micro-batches x micro_batch (all >= 1);
 * HM_ERR_SPEC naming the class when the sum does not fit in 64 bits (a tampered plan file). */
static hm_status plan_samples(const hm_plan *p, int64_t *samples) {
  *samples = 0;
  for (int ci = 0; ci < p->nclasses; ci++) {
    const hm_plan_class *cl = &p->classes[ci];
    int64_t n; /* replicas x micro-batches < 2^62: only the last product and the sum can overflow */
    if (__builtin_mul_overflow((int64_t)cl->nreplicas * cl->nmicro, p->micro_batch, &n) ||
        __builtin_add_overflow(*samples, n, samples))
      return hm_error(HM_ERR_SPEC, "plan.classes[%d]: %d replicas x %d micro-batches x "
                      "micro_batch %lld samples per step is out of range", ci, cl->nreplicas,
                      cl->nmicro, (long long)p->micro_batch);
  }
  return HM_OK;
}

/* Interleaving: v chunks of p >= 2 device stages; virtual stage j on the devices of j % p. */
static hm_status validate_chunks(const hm_plan_class *cl, int ci) {
  const int v = hm_plan_class_chunks(cl), p = cl->nstages / v;
  if (cl->nchunks < 0 || cl->nchunks > HM_PLAN_MAX_STAGES)
    return hm_error(HM_ERR_SPEC, "plan.classes[%d].chunks: must be 1 to %d, got %d", ci,
                    HM_PLAN_MAX_STAGES, cl->nchunks);
  if (v == 1) return HM_OK;
  if (cl->nstages % v || p < 2)
    return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages: %d stages are not %d chunks of at least "
                    "2 device stages", ci, cl->nstages, v);
  if (cl->nmicro > HM_SCHEDULE_INTERLEAVED_MAX_MICRO)
    return hm_error(HM_ERR_SPEC, "plan.classes[%d].micro_batches: %d; interleaved 1F1B runs at most "
                    "%d per replica", ci, cl->nmicro, HM_SCHEDULE_INTERLEAVED_MAX_MICRO);
  for (int j = p; j < cl->nstages; j++)
    if (cl->stages[j].type != cl->stages[j % p].type || cl->stages[j].tp != cl->stages[j % p].tp)
      return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d]: chunk %d of stage %d runs on that "
                      "stage's devices, so its device_type and tp must be stage %d's", ci, j,
                      j / p, j % p, j % p);
  return HM_OK;
}

hm_status hm_plan_validate(const hm_plan_inputs *in, const hm_plan *p) {
  if (!in || !in->cluster || !in->model || !in->train || !p)
    return hm_error(HM_ERR_INVALID_ARG, "plan: cluster, model, training and plan are required");
  if (in->train->weight_bytes < 0)
    return hm_error(HM_ERR_INVALID_ARG, "plan: the training spec is not resolved (hm_spec_resolve)");
  const hm_cluster *c = in->cluster;
  const hm_model *md = in->model;
  if (p->micro_batch < 1)
    return hm_error(HM_ERR_SPEC, "plan.micro_batch: must be >= 1, got %lld", (long long)p->micro_batch);
  if (p->nclasses < 1 || p->nclasses > HM_PLAN_MAX_CLASSES)
    return hm_error(HM_ERR_SPEC, "plan.classes: need 1 to %d classes, got %d", HM_PLAN_MAX_CLASSES,
                    p->nclasses);
  int64_t used[HM_PLAN_MAX_TYPES] = {0}; /* tensor-parallel groups of each type */
  int tp_of[HM_PLAN_MAX_TYPES] = {0};
  for (int ci = 0; ci < p->nclasses; ci++) {
    const hm_plan_class *cl = &p->classes[ci];
    if (cl->nreplicas < 1 || cl->nmicro < 1)
      return hm_error(HM_ERR_SPEC, "plan.classes[%d]: replicas and micro_batches must be >= 1 "
                      "(got %d, %d)", ci, cl->nreplicas, cl->nmicro);
    if (cl->nstages < 1 || cl->nstages > HM_PLAN_MAX_STAGES)
      return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages: need 1 to %d stages, got %d", ci,
                      HM_PLAN_MAX_STAGES, cl->nstages);
    HM_TRY(validate_chunks(cl, ci));
    const int ndev = hm_plan_class_devstages(cl);
    for (int s = 0; s < cl->nstages; s++) {
      const hm_plan_stage *st = &cl->stages[s];
      if (st->type < 0 || st->type >= c->ntypes || st->type >= HM_PLAN_MAX_TYPES)
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].device_type: no device type %d "
                        "in cluster \"%s\"", ci, s, st->type, c->name);
      if (st->tp < 1 || st->tp > 8 || st->tp > hm_type_per_host_max(c, st->type))
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].tp: %d devices of type %s do not "
                        "fit one host (at most %d)", ci, s, st->tp, c->types[st->type].name,
                        hm_type_per_host_max(c, st->type));
      if (tp_of[st->type] && tp_of[st->type] != st->tp)
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].tp: type %s uses tp %d here and "
                        "%d elsewhere (one degree per type)", ci, s, c->types[st->type].name,
                        st->tp, tp_of[st->type]);
      tp_of[st->type] = st->tp;
      int want = s == 0 ? 0 : cl->stages[s - 1].layer_end;
      if (st->layer_begin != want || st->layer_end <= st->layer_begin || st->layer_end > md->nlayers)
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].layers: [%d, %d) must start at "
                        "%d and hold at least one of the model's %d layers", ci, s, st->layer_begin,
                        st->layer_end, want, md->nlayers);
      for (int l = st->layer_begin; l < st->layer_end; l++)
        if (md->layers[l].tp_divides > 0 && md->layers[l].tp_divides % st->tp)
          return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].tp: %d does not divide layer "
                          "%d's %lld", ci, s, st->tp, l, (long long)md->layers[l].tp_divides);
      if (s < ndev) used[st->type] += (int64_t)cl->nreplicas;
    }
    if (cl->stages[cl->nstages - 1].layer_end != md->nlayers)
      return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages: the last stage ends at layer %d, the "
                      "model has %d", ci, cl->stages[cl->nstages - 1].layer_end, md->nlayers);
  }
  for (int k = 0; k < c->ntypes && k < HM_PLAN_MAX_TYPES; k++) {
    if (!used[k]) continue;
    int64_t have = hm_type_groups(c, k, tp_of[k]);
    if (used[k] > have)
      return hm_error(HM_ERR_SPEC, "plan: needs %lld groups of %d %s devices, cluster \"%s\" has %lld",
                      (long long)used[k], tp_of[k], c->types[k].name, c->name, (long long)have);
  }
  int64_t samples;
  HM_TRY(plan_samples(p, &samples));
  if (p->global_batch && samples != p->global_batch)
    return hm_error(HM_ERR_SPEC, "plan.global_batch: %lld, but replicas x micro-batches x "
                    "micro_batch give %lld", (long long)p->global_batch, (long long)samples);
  return HM_OK;
}

/* Whether some layer uses another's weights (a tied embedding): the schedule then syncs them. */
static int model_ties(const hm_model *md) {
  for (int l = 0; l < md->nlayers; l++)
    if (md->layers[l].shared_with >= 0) return 1;
  return 0;
}

typedef struct cost_cache {
  int n;
  hm_layer_costs c[HM_PLAN_MAX_TYPES];
} cost_cache;

static hm_status cached_costs(const hm_plan_inputs *in, cost_cache *cc, int type, int tp,
                              int64_t mb, const hm_layer_costs **out) {
  for (int i = 0; i < cc->n; i++)
    if (cc->c[i].type == type && cc->c[i].tp == tp) {
      *out = &cc->c[i];
      return HM_OK;
    }
  HM_TRY(hm_layer_costs_init(in, type, tp, mb, &cc->c[cc->n]));
  *out = &cc->c[cc->n++];
  return HM_OK;
}

hm_status hm_plan_predict(const hm_plan_inputs *in, hm_plan *p, hm_sim_trace *trace) {
  HM_TRY(hm_plan_validate(in, p));
  const hm_model *md = in->model;
  const hm_train *tr = in->train;
  const int n = md->nlayers;
  cost_cache cc = {0};
  hm_sim_class cls[HM_PLAN_MAX_CLASSES];
  hm_sim_stage *stages = hm_calloc((size_t)p->nclasses * HM_PLAN_MAX_STAGES, sizeof *stages,
                                   "simulator stages");
  double *grad = hm_calloc((size_t)n, sizeof *grad, "gradient bytes");
  hm_status st = HM_OK;
  if (!stages || !grad) {
    st = HM_ERR_NOMEM;
    goto done;
  }
  int replicas = 0;
  unsigned mask = 0;
  memset(p->devices_by_type, 0, sizeof p->devices_by_type);
  p->devices_used = 0;
  if ((st = plan_samples(p, &p->global_batch)) != HM_OK) goto done; /* checked by validate */
  for (int ci = 0; ci < p->nclasses; ci++) replicas += p->classes[ci].nreplicas;
  for (int l = 0; l < n; l++)
    grad[l] = (md->layers[l].params + md->layers[l].shared_params) * tr->grad_bytes;
  double flops_dev[HM_PLAN_MAX_TYPES] = {0};
  for (int ci = 0; ci < p->nclasses; ci++) {
    hm_plan_class *pc = &p->classes[ci];
    const int np = pc->nstages, ndev = hm_plan_class_devstages(pc);
    cls[ci] = (hm_sim_class){.nreplicas = pc->nreplicas, .nstages = np, .nmicro = pc->nmicro,
                             .stages = stages + (size_t)ci * HM_PLAN_MAX_STAGES,
                             .nchunks = hm_plan_class_chunks(pc)};
    int per_type[HM_PLAN_MAX_TYPES] = {0};
    for (int s = 0; s < ndev; s++) per_type[pc->stages[s].type]++;
    for (int s = 0; s < np; s++) {
      hm_plan_stage *ps = &pc->stages[s];
      const hm_layer_costs *lc;
      if ((st = cached_costs(in, &cc, ps->type, ps->tp, p->micro_batch, &lc)) != HM_OK) goto done;
      hm_sim_stage *ss = &cls[ci].stages[s];
      double f = 0, b = 0, params = 0, act = 0, opt = 0;
      for (int l = ps->layer_begin; l < ps->layer_end; l++) {
        f += lc->fwd[l];
        b += lc->bwd[l];
        params += lc->params[l] - (ndev == 1 ? lc->shared[l] : 0.0);
        act += lc->act[l];
        opt += lc->opt[l];
        flops_dev[ps->type] += (double)pc->nreplicas * pc->nmicro * (double)p->micro_batch *
                               (md->layers[l].fwd_flops + md->layers[l].bwd_flops);
      }
      /* the next virtual stage runs on device stage (s+1) % ndev (stage 0 after the last) */
      const int nt = s + 1 < np ? pc->stages[(s + 1) % ndev].type : -1;
      int same_host = nt == ps->type && ndev > 1 &&
                      ps->tp * per_type[ps->type] <= hm_type_per_host_max(in->cluster, ps->type);
      *ss = (hm_sim_stage){.layer_begin = ps->layer_begin, .layer_end = ps->layer_end,
                           .tp = ps->tp, .fwd = f, .bwd = b, .layer_bwd = lc->bwd + ps->layer_begin,
                           .act_bytes = lc->out_bytes[ps->layer_end - 1],
                           .link_next = nt >= 0 ? hm_stage_link(in, ps->type, nt, same_host)
                                                : (hm_link){0, 0, 0, 0},
                           .staging = hm_profile_staging_of(in->profile, ps->type),
                           .in_pool = hm_type_pool(in->cluster, ps->type) + 1,
                           .optimizer = opt,
                           /* one recompute workspace per device, not per chunk */
                           .mem_static = hm_static_bytes(tr, params, replicas) +
                                         (s < ndev ? lc->reserve : 0.0),
                           .mem_act = act, .mem_capacity = lc->capacity};
      ps->fwd = f;
      ps->bwd = b;
      ps->mem_static = ss->mem_static;
      ps->mem_act = act;
      ps->mem_capacity = lc->capacity;
      mask |= 1u << ps->type;
      if (s >= ndev) continue; /* a later chunk: the same devices */
      p->devices_by_type[ps->type] += (int64_t)pc->nreplicas * ps->tp;
      p->devices_used += (int64_t)pc->nreplicas * ps->tp;
    }
  }
  hm_sim_input si = {.nclasses = p->nclasses, .classes = cls, .nlayers = n,
                     .layer_grad_bytes = grad, .layers_per_bucket = HM_PLAN_LAYERS_PER_BUCKET,
                     .overlap_sync = HM_PLAN_OVERLAP_SYNC,
                     .tied_embeddings = model_ties(md)};
  si.sync = hm_plan_sync_model(in, mask, replicas, p->devices_used);
  si.tied_link = hm_stage_link(in, p->classes[0].stages[0].type,
                               p->classes[0].stages[p->classes[0].nstages - 1].type, 0);
  /* (the last virtual stage runs on the last device stage: same type) */
  hm_sync_model all = si.sync;
  all.nranks = (int)(p->devices_used > 1 << 30 ? 1 << 30 : p->devices_used);
  si.grad_norm_time = hm_sync_allreduce_time(&all, 8.0);
  hm_sim_result r;
  if ((st = hm_simulate(&si, &r, trace)) != HM_OK) goto done;
  p->step_time = r.step_time;
  p->tokens_per_s = r.step_time > 0 ? (double)p->global_batch * md->T / r.step_time : 0;
  p->bubble_fraction = r.bubble_fraction;
  p->mem_peak_max = r.mem_peak_max;
  p->over_memory = r.over_memory;
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++) {
      p->classes[ci].stages[s].mem_peak = r.stages[ci][s].mem_peak;
      p->classes[ci].stages[s].max_inflight = r.stages[ci][s].max_inflight;
      p->classes[ci].stages[s].busy = r.stages[ci][s].busy;
      p->classes[ci].stages[s].idle = r.stages[ci][s].idle;
    }
  hm_sim_result_free(&r);
  double peak_all = 0;
  for (int k = 0; k < in->cluster->ntypes && k < HM_PLAN_MAX_TYPES; k++) {
    double peak = hm_device_type_peak(&in->cluster->types[k], tr->compute_dtype) *
                  (double)p->devices_by_type[k];
    peak_all += peak;
    p->mfu_by_type[k] = peak > 0 && p->step_time > 0 ? flops_dev[k] / p->step_time / peak : 0;
  }
  p->mfu = peak_all > 0 ? p->tokens_per_s * md->flops_per_token / peak_all : 0;
  if (p->upper_bound_tokens_per_s > 0) p->utilization = p->tokens_per_s / p->upper_bound_tokens_per_s;
done:
  for (int i = 0; i < cc.n; i++) hm_layer_costs_free(&cc.c[i]);
  free(stages);
  free(grad);
  return st;
}

hm_status hm_plan_schedule(const hm_plan_inputs *in, const hm_plan *p, int cls, hm_schedule *out) {
  HM_TRY(hm_plan_validate(in, p));
  if (cls < 0 || cls >= p->nclasses)
    return hm_error(HM_ERR_INVALID_ARG, "plan schedule: no class %d (the plan has %d)", cls,
                    p->nclasses);
  const hm_plan_class *pc = &p->classes[cls];
  int bounds[HM_PLAN_MAX_STAGES + 1], replicas = 0;
  for (int s = 0; s < pc->nstages; s++) bounds[s] = pc->stages[s].layer_begin;
  bounds[pc->nstages] = pc->stages[pc->nstages - 1].layer_end;
  for (int c = 0; c < p->nclasses; c++) replicas += p->classes[c].nreplicas;
  hm_schedule_config sc = {.nstages = hm_plan_class_devstages(pc), .nmicro = pc->nmicro,
                           .stage_layers = bounds, .data_parallel = replicas > 1,
                           .layers_per_bucket = HM_PLAN_LAYERS_PER_BUCKET,
                           .tied_embeddings = model_ties(in->model),
                           .nchunks = hm_plan_class_chunks(pc)};
  return hm_schedule_1f1b(&sc, out);
}
