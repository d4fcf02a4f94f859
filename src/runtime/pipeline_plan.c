/* The pipeline runtime's side of the planner: op lists from the planner's 1F1B generator, the
 * measured trace in the simulator's format, and reading plan.json into a runtime layout.
 * The only runtime file that includes plan.h (see pipeline_internal.h for why). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/model.h"
#include "hetmix/plan.h"
#include "runtime/pipeline_internal.h"
#include "util/util.h"

_Static_assert(HM_PIPE_OP_FWD == (int)HM_OP_FWD && HM_PIPE_OP_BWD == (int)HM_OP_BWD &&
                   HM_PIPE_OP_SEND_ACT == (int)HM_OP_SEND_ACT && HM_PIPE_OP_RECV_ACT == (int)HM_OP_RECV_ACT &&
                   HM_PIPE_OP_SEND_GRAD == (int)HM_OP_SEND_GRAD && HM_PIPE_OP_RECV_GRAD == (int)HM_OP_RECV_GRAD &&
                   HM_PIPE_OP_ALLREDUCE == (int)HM_OP_ALLREDUCE &&
                   HM_PIPE_OP_TIED_EMB_SYNC == (int)HM_OP_TIED_EMB_SYNC &&
                   HM_PIPE_OP_GRAD_NORM == (int)HM_OP_GRAD_NORM && HM_PIPE_OP_OPTIMIZER == (int)HM_OP_OPTIMIZER,
               "pipeline_internal.h's op kinds must mirror hm_op_kind");

const char *hm_pipe_op_name(int kind) { return hm_op_kind_name((hm_op_kind)kind); }

/* The most micro-batches chunk c holds at once (forwards done less backwards done). */
static int hm_chunk_inflight(const hm_stage_ops *so, int c) {
  int live = 0, peak = 0;
  for (int i = 0; i < so->nops; i++) {
    if (so->ops[i].chunk != c) continue;
    if (so->ops[i].kind == HM_OP_FWD && ++live > peak) peak = live;
    if (so->ops[i].kind == HM_OP_BWD) live--;
  }
  return peak;
}

hm_status hm_pipe_stage_ops(int nstages, int nchunks, int nmicro, const int *stage_layers, int data_parallel,
                            int layers_per_bucket, int tied_embeddings, int stage, hm_pipe_op **ops,
                            int *nops, int *max_inflight) {
  hm_schedule_config sc = {nstages, nmicro, stage_layers, data_parallel, layers_per_bucket, tied_embeddings,
                           nchunks > 1 ? nchunks : 1};
  hm_schedule s;
  memset(&s, 0, sizeof s);
  HM_TRY(hm_schedule_1f1b(&sc, &s));
  const hm_stage_ops *so = &s.stages[stage];
  hm_pipe_op *out = hm_calloc((size_t)(so->nops > 0 ? so->nops : 1), sizeof *out, "op list");
  if (!out) {
    hm_schedule_free(&s);
    return HM_ERR_NOMEM;
  }
  for (int i = 0; i < so->nops; i++)
    out[i] = (hm_pipe_op){(int)so->ops[i].kind, so->ops[i].micro, so->ops[i].peer, so->ops[i].layer_begin,
                          so->ops[i].layer_end, so->ops[i].chunk};
  *ops = out;
  *nops = so->nops;
  for (int c = 0; c < sc.nchunks; c++) max_inflight[c] = hm_chunk_inflight(so, c);
  hm_schedule_free(&s);
  return HM_OK;
}

hm_status hm_pipe_trace_write(const hm_pipe_event *ev, int n, const char *path) {
  hm_sim_trace tr = {0, 0, NULL};
  tr.events = hm_calloc((size_t)(n > 0 ? n : 1), sizeof(hm_sim_event), "trace events");
  if (!tr.events) return HM_ERR_NOMEM;
  for (int i = 0; i < n; i++)
    tr.events[i] = (hm_sim_event){ev[i].replica, ev[i].stage, ev[i].track, (hm_op_kind)ev[i].kind, ev[i].micro,
                                  ev[i].start, ev[i].dur};
  tr.nevents = tr.cap = n;
  hm_status st = hm_sim_trace_write(&tr, path);
  free(tr.events);
  return st;
}

static hm_status hm_pipe_plan_fill(const char *path, const hm_plan *plan, const hm_cluster *cl, const hm_model *m,
                                   hm_pipe_plan *out) {
  if (!m->has_config)
    return hm_error(HM_ERR_SPEC, "%s: model %s is an explicit layer list; the runtime trains a model \"config\"",
                    path, m->name);
  if (hm_model_config_check(&m->cfg) != HM_OK)
    return hm_error_context(HM_ERR_SPEC, "%s: model %s: ", path, m->name);
  out->cfg = m->cfg;
  hm_strcpy(out->model_name, sizeof out->model_name, m->name);
  out->micro_batch = (int)plan->micro_batch;
  if (plan->nclasses < 1) return hm_error(HM_ERR_SPEC, "%s: plan.classes is empty", path);
  const hm_plan_class *c0 = &plan->classes[0];
  const int v = hm_plan_class_chunks(c0), p = hm_plan_class_devstages(c0);
  out->nstages = p;
  out->nchunks = v;
  if (c0->nstages > 64)
    return hm_error(HM_ERR_SPEC, "%s: %d (virtual) stages, the runtime runs at most 64", path, c0->nstages);
  for (int j = 0; j < c0->nstages; j++) {
    out->stage_layers[j] = c0->stages[j].layer_begin;
    out->predicted_stage_busy_s[j % p] += c0->nmicro * (c0->stages[j].fwd + c0->stages[j].bwd);
  }
  out->stage_layers[c0->nstages] = c0->stages[c0->nstages - 1].layer_end;
  out->nreplicas = 0;
  out->nranks = 0;
  for (int k = 0; k < plan->nclasses; k++) {
    const hm_plan_class *c = &plan->classes[k];
    if (hm_plan_class_chunks(c) != v)
      return hm_error(HM_ERR_SPEC, "%s: plan.classes[%d] has %d chunks per stage and class 0 has %d; this runtime "
                      "needs every replica to split the model the same way", path, k, hm_plan_class_chunks(c), v);
    if (c->nstages != c0->nstages)
      return hm_error(HM_ERR_SPEC, "%s: plan.classes[%d] has %d stages and class 0 has %d; this runtime needs every "
                      "replica to split the model the same way", path, k, c->nstages, c0->nstages);
    for (int s = 0; s < c->nstages; s++) {
      if (c->stages[s].layer_begin != c0->stages[s].layer_begin || c->stages[s].layer_end != c0->stages[s].layer_end)
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].layers: [%d, %d) differs from class 0's [%d, %d); "
                        "this runtime needs every replica to split the model the same way", k, s,
                        c->stages[s].layer_begin, c->stages[s].layer_end, c0->stages[s].layer_begin,
                        c0->stages[s].layer_end);
      if (c->stages[s].tp < 1 || c->stages[s].tp > 64)
        return hm_error(HM_ERR_SPEC, "plan.classes[%d].stages[%d].tp: %d; the runtime runs 1..64", k, s,
                        c->stages[s].tp);
    }
    for (int r = 0; r < c->nreplicas; r++) {
      if (out->nreplicas == 64) return hm_error(HM_ERR_SPEC, "%s: more than 64 replicas", path);
      for (int s = 0; s < p; s++) out->tp[out->nreplicas][s] = c->stages[s].tp;
      out->micro[out->nreplicas++] = c->nmicro;
      for (int s = 0; s < p; s++) { /* later chunks run on the same devices (plan.json's ranks) */
        const hm_device_type *dt = &cl->types[c->stages[s].type];
        if (!dt->backend[0])
          return hm_error(HM_ERR_SPEC, "%s: device type %s has no \"backend\" string, so it cannot run here", path,
                          dt->name);
        for (int q = 0; q < c->stages[s].tp; q++) { /* plan.json's rank order: class, replica, stage, tp rank */
          if (out->nranks == HM_PIPE_PLAN_MAX_RANKS)
            return hm_error(HM_ERR_SPEC, "%s: more than %d ranks", path, HM_PIPE_PLAN_MAX_RANKS);
          hm_strcpy(out->backend[out->nranks++], sizeof out->backend[0], dt->backend);
        }
      }
    }
  }
  out->predicted_step_s = plan->step_time;
  out->predicted_tokens_per_s = plan->tokens_per_s;
  out->upper_bound_tokens_per_s = plan->upper_bound_tokens_per_s;
  return HM_OK;
}

hm_status hm_pipe_plan_load(const char *path, const char *cluster_path, const char *model_path, hm_pipe_plan *out) {
  hm_plan *plan = hm_calloc(1, sizeof *plan, "plan");
  if (!plan) return HM_ERR_NOMEM;
  hm_cluster cl, acl;
  hm_model m, am;
  hm_train at;
  memset(&cl, 0, sizeof cl), memset(&acl, 0, sizeof acl);
  memset(&m, 0, sizeof m), memset(&am, 0, sizeof am);
  memset(out, 0, sizeof *out);
  hm_status st = HM_OK;
  hm_plan_inputs against = {NULL, NULL, NULL, NULL};
  /* checking against the cluster and model this run has (not only those the plan embeds) */
  if (cluster_path || model_path) {
    hm_train et;
    memset(&et, 0, sizeof et);
    st = hm_plan_load(path, NULL, plan, &cl, &m, &et);
    if (st == HM_OK && cluster_path) st = hm_cluster_load(cluster_path, &acl);
    if (st == HM_OK && model_path) st = hm_model_load(model_path, &am);
    /* the planner accepts any model whose layers the ranges cover (what-if); a runtime must
     * train the model the plan's times and memory were computed for */
    char ms[128], as[128];
    if (st == HM_OK && model_path && (!hm_model_config_same(&am.cfg, &m.cfg) || am.has_config != m.has_config))
      st = hm_error(HM_ERR_SPEC, "model: the plan was made for %s (%s), %s is %s (%s)", m.name,
                    hm_model_config_str(&m.cfg, ms, sizeof ms), model_path, am.name,
                    hm_model_config_str(&am.cfg, as, sizeof as));
    if (st == HM_OK) {
      at = et;
      against.cluster = cluster_path ? &acl : &cl;
      against.model = model_path ? &am : &m;
      against.train = &at;
      st = hm_spec_resolve(against.cluster, against.model, &at, NULL);
      if (st == HM_OK) st = hm_plan_load(path, &against, plan, NULL, NULL, NULL);
    }
    if (st != HM_OK)
      st = hm_error_context(st, "plan %s does not match %s%s%s: ", path, cluster_path ? cluster_path : "",
                            cluster_path && model_path ? " and " : "", model_path ? model_path : "");
  } else {
    st = hm_plan_load(path, NULL, plan, &cl, &m, NULL);
  }
  if (st == HM_OK) st = hm_pipe_plan_fill(path, plan, against.cluster ? against.cluster : &cl,
                                          against.model ? against.model : &m, out);
  hm_cluster_free(&cl);
  hm_cluster_free(&acl);
  hm_model_free(&m);
  hm_model_free(&am);
  free(plan);
  return st;
}
