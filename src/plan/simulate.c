/* Event-driven simulator of one training step: times the 1F1B op lists of hm_schedule_1f1b over
 * unequal stages and links, one representative replica per class (identical replicas behave
 * alike, so the cost does not grow with the number of devices).
 *
 * Pipeline phase: compute ops are serial per stage; SEND_ occupies the sender's link in that
 * direction for hm_cost_p2p and does not block compute; RECV_ waits for the transfer's arrival.
 * Sync phase: a gradient bucket starts when every replica holding those layers has finished its
 * last backward (all classes) and the stage's previous bucket is done; the tied-embedding sync
 * starts when both ends are ready; the gradient norm waits for every stage; then the optimizer.
 * Not modelled: overlap of gradient buckets with backward, contention between replicas on a NIC. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "hetmix/plan.h"
#include "util/files.h"
#include "util/util.h"

double hm_sync_allreduce_time(const hm_sync_model *m, double bytes) {
  if (!m || m->nranks <= 1 || bytes <= 0) return 0.0;
  double t = 0;
  if (m->ngroups <= 1) {
    hm_cost_best_algo(HM_COLL_ALLREDUCE, m->nranks, bytes, &m->link, &t);
    return t;
  }
  const int inner = (m->nranks + m->ngroups - 1) / m->ngroups;
  double rs = 0, ar = 0, ag = 0;
  if (inner > 1) {
    hm_cost_best_algo(HM_COLL_REDUCE_SCATTER, inner, bytes, &m->link, &rs);
    hm_cost_best_algo(HM_COLL_ALLGATHER, inner, bytes, &m->link, &ag);
  }
  hm_cost_best_algo(HM_COLL_ALLREDUCE, m->ngroups, bytes / (inner > 1 ? inner : 1), &m->outer, &ar);
  return rs + ar + ag;
}

static hm_status trace_add(hm_sim_trace *tr, int cls, int stage, int track, hm_op_kind kind,
                           int micro, double start, double dur) {
  if (!tr) return HM_OK;
  if (tr->nevents == tr->cap) {
    int cap = tr->cap ? tr->cap * 2 : 1024;
    hm_sim_event *e = realloc(tr->events, (size_t)cap * sizeof *e);
    if (!e) return hm_error(HM_ERR_NOMEM, "simulator trace: cannot grow to %d events", cap);
    tr->events = e;
    tr->cap = cap;
  }
  tr->events[tr->nevents++] =
      (hm_sim_event){.cls = cls, .stage = stage, .track = track, .kind = kind, .micro = micro,
                     .start = start, .dur = dur};
  return HM_OK;
}

/* Per-stage state of the representative replica of one class. */
typedef struct stage_state {
  int pc;              /* next op */
  double t;            /* compute track free at */
  double act_link_free, grad_link_free; /* this stage's outgoing links, per direction */
  double comm_busy;
  double busy_fb;      /* seconds of FWD + BWD */
  double busy;         /* FWD + BWD + OPTIMIZER */
  double grads_ready;  /* end of the last BWD */
} stage_state;

typedef struct class_state {
  hm_schedule sched;
  stage_state *st;
  double *act_arr, *grad_arr; /* (p, m) arrival time at stage s of micro k; < 0: not sent yet */
} class_state;

static int is_pipeline_op(hm_op_kind k) { return k <= HM_OP_RECV_GRAD; }

/* Runs the FWD/BWD/SEND/RECV prefix of every stage of class c until all stop at the sync ops. */
static hm_status run_pipeline(const hm_sim_class *cl, class_state *cs, int c, hm_sim_trace *tr) {
  const int p = cl->nstages, m = cl->nmicro;
  for (;;) {
    int progressed = 0, done = 1;
    for (int s = 0; s < p; s++) {
      stage_state *ss = &cs->st[s];
      const hm_stage_ops *ops = &cs->sched.stages[s];
      const hm_sim_stage *sg = &cl->stages[s];
      while (ss->pc < ops->nops && is_pipeline_op(ops->ops[ss->pc].kind)) {
        const hm_op *op = &ops->ops[ss->pc];
        const int k = op->micro;
        if (op->kind == HM_OP_RECV_ACT || op->kind == HM_OP_RECV_GRAD) {
          double arr = op->kind == HM_OP_RECV_ACT ? cs->act_arr[(size_t)s * m + k]
                                                  : cs->grad_arr[(size_t)s * m + k];
          if (arr < 0) break; /* the sender has not got there yet */
          if (arr > ss->t) ss->t = arr;
        } else if (op->kind == HM_OP_FWD || op->kind == HM_OP_BWD) {
          double d = op->kind == HM_OP_FWD ? sg->fwd : sg->bwd;
          HM_TRY(trace_add(tr, c, s, 0, op->kind, k, ss->t, d));
          ss->t += d;
          ss->busy_fb += d;
          if (op->kind == HM_OP_BWD) ss->grads_ready = ss->t;
        } else if (op->kind == HM_OP_SEND_ACT) {
          double start = ss->t > ss->act_link_free ? ss->t : ss->act_link_free;
          double d = hm_cost_p2p(&sg->link_next, sg->act_bytes);
          HM_TRY(trace_add(tr, c, s, 1, op->kind, k, start, d));
          ss->act_link_free = start + d;
          ss->comm_busy += d;
          cs->act_arr[(size_t)(s + 1) * m + k] = start + d;
        } else { /* SEND_GRAD to s-1 over the same link as s-1's forward sends */
          double start = ss->t > ss->grad_link_free ? ss->t : ss->grad_link_free;
          double d = hm_cost_p2p(&cl->stages[s - 1].link_next, cl->stages[s - 1].act_bytes);
          HM_TRY(trace_add(tr, c, s, 1, op->kind, k, start, d));
          ss->grad_link_free = start + d;
          ss->comm_busy += d;
          cs->grad_arr[(size_t)(s - 1) * m + k] = start + d;
        }
        ss->pc++;
        progressed = 1;
      }
      if (ss->pc < ops->nops && is_pipeline_op(ops->ops[ss->pc].kind)) done = 0;
    }
    if (done) return HM_OK;
    if (!progressed)
      return hm_error(HM_ERR_INTERNAL, "simulator: class %d pipeline deadlocked (op lists do not "
                      "match)", c);
  }
}

/* When every holder of layers [lo, hi) (all classes) has its gradients. */
static double bucket_ready(const hm_sim_input *in, class_state *cs, int lo, int hi) {
  double r = 0;
  for (int c = 0; c < in->nclasses; c++) {
    const hm_sim_class *cl = &in->classes[c];
    for (int s = 0; s < cl->nstages; s++) {
      const hm_sim_stage *sg = &cl->stages[s];
      if (sg->layer_end > lo && sg->layer_begin < hi && cs[c].st[s].grads_ready > r)
        r = cs[c].st[s].grads_ready;
    }
  }
  return r;
}

static hm_status check_input(const hm_sim_input *in) {
  if (!in || in->nclasses < 1 || !in->classes)
    return hm_error(HM_ERR_INVALID_ARG, "simulator: no replica classes");
  for (int c = 0; c < in->nclasses; c++) {
    const hm_sim_class *cl = &in->classes[c];
    if (cl->nstages < 1 || cl->nmicro < 1 || cl->nreplicas < 1 || !cl->stages)
      return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d needs stages, micro-batches and "
                      "replicas >= 1 (got %d, %d, %d)", c, cl->nstages, cl->nmicro, cl->nreplicas);
    for (int s = 0; s < cl->nstages; s++) {
      const hm_sim_stage *sg = &cl->stages[s];
      if (sg->layer_begin < 0 || sg->layer_end > in->nlayers || sg->layer_end <= sg->layer_begin)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d has layers [%d, %d) "
                        "outside [0, %d)", c, s, sg->layer_begin, sg->layer_end, in->nlayers);
      if (s > 0 && sg->layer_begin != cl->stages[s - 1].layer_end)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d does not start where "
                        "stage %d ends", c, s, s - 1);
      if (!(sg->fwd >= 0) || !(sg->bwd >= 0) || sg->tp < 1)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d has negative time or "
                        "tp < 1", c, s);
    }
    if (cl->stages[0].layer_begin != 0 || cl->stages[cl->nstages - 1].layer_end != in->nlayers)
      return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d does not cover layers [0, %d)", c,
                      in->nlayers);
  }
  return HM_OK;
}

static void free_states(class_state *cs, int n) {
  if (!cs) return;
  for (int c = 0; c < n; c++) {
    hm_schedule_free(&cs[c].sched);
    free(cs[c].st);
    free(cs[c].act_arr);
    free(cs[c].grad_arr);
  }
  free(cs);
}

static hm_status setup_class(const hm_sim_input *in, const hm_sim_class *cl, class_state *cs,
                             int total_replicas) {
  const int p = cl->nstages, m = cl->nmicro;
  int *bounds = hm_malloc((size_t)(p + 1) * sizeof *bounds, "stage bounds");
  if (!bounds) return HM_ERR_NOMEM;
  for (int s = 0; s < p; s++) bounds[s] = cl->stages[s].layer_begin;
  bounds[p] = cl->stages[p - 1].layer_end;
  hm_schedule_config sc = {.nstages = p, .nmicro = m, .stage_layers = bounds,
                           .data_parallel = total_replicas > 1,
                           .layers_per_bucket = in->layers_per_bucket,
                           .tied_embeddings = in->tied_embeddings};
  hm_status st = hm_schedule_1f1b(&sc, &cs->sched);
  free(bounds);
  if (st != HM_OK) return st;
  cs->st = hm_calloc((size_t)p, sizeof *cs->st, "simulator stages");
  cs->act_arr = hm_malloc((size_t)p * m * sizeof(double), "simulator arrivals");
  cs->grad_arr = hm_malloc((size_t)p * m * sizeof(double), "simulator arrivals");
  if (!cs->st || !cs->act_arr || !cs->grad_arr) return HM_ERR_NOMEM;
  for (size_t i = 0; i < (size_t)p * m; i++) cs->act_arr[i] = cs->grad_arr[i] = -1.0;
  return HM_OK;
}

hm_status hm_simulate(const hm_sim_input *in, hm_sim_result *res, hm_sim_trace *tr) {
  if (!res) return hm_error(HM_ERR_INVALID_ARG, "simulator: result is NULL");
  memset(res, 0, sizeof *res);
  HM_TRY(check_input(in));
  const int nc = in->nclasses;
  int total_replicas = 0;
  for (int c = 0; c < nc; c++) total_replicas += in->classes[c].nreplicas;
  hm_sync_model sync = in->sync;
  sync.nranks = total_replicas;

  class_state *cs = hm_calloc((size_t)nc, sizeof *cs, "simulator classes");
  if (!cs) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int c = 0; c < nc && st == HM_OK; c++) st = setup_class(in, &in->classes[c], &cs[c], total_replicas);
  for (int c = 0; c < nc && st == HM_OK; c++) st = run_pipeline(&in->classes[c], &cs[c], c, tr);
  if (st != HM_OK) goto fail;

  /* gradient buckets (comm track; a stage's buckets run one after another) */
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    for (int s = 0; s < cl->nstages; s++) {
      stage_state *ss = &cs[c].st[s];
      const hm_stage_ops *ops = &cs[c].sched.stages[s];
      double comm_t = ss->t;
      for (; ss->pc < ops->nops && ops->ops[ss->pc].kind == HM_OP_ALLREDUCE; ss->pc++) {
        const hm_op *op = &ops->ops[ss->pc];
        double bytes = 0;
        for (int l = op->layer_begin; l < op->layer_end; l++)
          bytes += in->layer_grad_bytes ? in->layer_grad_bytes[l] : 0.0;
        bytes /= cl->stages[s].tp;
        double ready = bucket_ready(in, cs, op->layer_begin, op->layer_end);
        double start = comm_t > ready ? comm_t : ready;
        double d = hm_sync_allreduce_time(&sync, bytes);
        if ((st = trace_add(tr, c, s, 1, op->kind, -1, start, d)) != HM_OK) goto fail;
        comm_t = start + d;
        ss->comm_busy += d;
      }
      ss->t = comm_t;
    }
  }
  /* tied embedding: both ends of each replica exchange the embedding gradient */
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    const int p = cl->nstages;
    stage_state *a = &cs[c].st[0], *b = &cs[c].st[p - 1];
    const hm_stage_ops *oa = &cs[c].sched.stages[0], *ob = &cs[c].sched.stages[p - 1];
    if (p > 1 && a->pc < oa->nops && oa->ops[a->pc].kind == HM_OP_TIED_EMB_SYNC) {
      if (b->pc >= ob->nops || ob->ops[b->pc].kind != HM_OP_TIED_EMB_SYNC) {
        st = hm_error(HM_ERR_INTERNAL, "simulator: class %d tied sync only on stage 0", c);
        goto fail;
      }
      double bytes = in->layer_grad_bytes ? in->layer_grad_bytes[0] / cl->stages[0].tp : 0.0;
      double d = 0;
      hm_cost_best_algo(HM_COLL_ALLREDUCE, 2, bytes, &in->tied_link, &d);
      double start = a->t > b->t ? a->t : b->t;
      if ((st = trace_add(tr, c, 0, 1, HM_OP_TIED_EMB_SYNC, -1, start, d)) != HM_OK) goto fail;
      if ((st = trace_add(tr, c, p - 1, 1, HM_OP_TIED_EMB_SYNC, -1, start, d)) != HM_OK) goto fail;
      a->t = b->t = start + d;
      a->comm_busy += d;
      b->comm_busy += d;
      a->pc++;
      b->pc++;
    }
  }
  /* gradient norm: every rank of every class, then each stage's optimizer */
  double norm_start = 0;
  for (int c = 0; c < nc; c++)
    for (int s = 0; s < in->classes[c].nstages; s++)
      if (cs[c].st[s].t > norm_start) norm_start = cs[c].st[s].t;
  res->nclasses = nc;
  res->nstages = hm_calloc((size_t)nc, sizeof *res->nstages, "simulator result");
  res->stages = hm_calloc((size_t)nc, sizeof *res->stages, "simulator result");
  if (!res->nstages || !res->stages) {
    st = HM_ERR_NOMEM;
    goto fail;
  }
  double busy_w = 0, stages_w = 0;
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    res->nstages[c] = cl->nstages;
    res->stages[c] = hm_calloc((size_t)cl->nstages, sizeof **res->stages, "simulator result");
    if (!res->stages[c]) {
      st = HM_ERR_NOMEM;
      goto fail;
    }
    for (int s = 0; s < cl->nstages; s++) {
      stage_state *ss = &cs[c].st[s];
      const hm_stage_ops *ops = &cs[c].sched.stages[s];
      for (; ss->pc < ops->nops; ss->pc++) {
        const hm_op *op = &ops->ops[ss->pc];
        if (op->kind == HM_OP_GRAD_NORM) {
          if ((st = trace_add(tr, c, s, 1, op->kind, -1, norm_start, in->grad_norm_time)) != HM_OK)
            goto fail;
          ss->t = norm_start + in->grad_norm_time;
          ss->comm_busy += in->grad_norm_time;
        } else if (op->kind == HM_OP_OPTIMIZER) {
          if ((st = trace_add(tr, c, s, 0, op->kind, -1, ss->t, cl->stages[s].optimizer)) != HM_OK)
            goto fail;
          ss->t += cl->stages[s].optimizer;
          ss->busy += cl->stages[s].optimizer;
        } else {
          st = hm_error(HM_ERR_INTERNAL, "simulator: unexpected %s after the sync phase",
                        hm_op_kind_name(op->kind));
          goto fail;
        }
      }
      ss->busy += ss->busy_fb;
      if (ss->t > res->step_time) res->step_time = ss->t;
    }
  }
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    for (int s = 0; s < cl->nstages; s++) {
      const stage_state *ss = &cs[c].st[s];
      const hm_sim_stage *sg = &cl->stages[s];
      hm_sim_stage_result *r = &res->stages[c][s];
      r->busy = ss->busy;
      r->comm = ss->comm_busy;
      r->idle = res->step_time - ss->busy;
      r->end = ss->t;
      r->max_inflight = hm_schedule_max_inflight(&cs[c].sched, s);
      r->mem_peak = sg->mem_static + r->max_inflight * sg->mem_act;
      if (r->mem_peak > res->mem_peak_max) res->mem_peak_max = r->mem_peak;
      if (sg->mem_capacity > 0 && r->mem_peak > sg->mem_capacity) res->over_memory = 1;
      busy_w += (double)cl->nreplicas * ss->busy_fb;
      stages_w += (double)cl->nreplicas;
    }
  }
  res->bubble_fraction = res->step_time > 0 ? 1.0 - busy_w / (stages_w * res->step_time) : 0.0;
  free_states(cs, nc);
  return HM_OK;
fail:
  free_states(cs, nc);
  hm_sim_result_free(res);
  return st;
}

void hm_sim_result_free(hm_sim_result *r) {
  if (!r) return;
  if (r->stages)
    for (int c = 0; c < r->nclasses; c++) free(r->stages[c]);
  free(r->stages);
  free(r->nstages);
  r->stages = NULL;
  r->nstages = NULL;
}

void hm_sim_trace_free(hm_sim_trace *t) {
  if (!t) return;
  free(t->events);
  memset(t, 0, sizeof *t);
}

hm_status hm_sim_trace_write(const hm_sim_trace *t, const char *path) {
  if (!t || !path) return hm_error(HM_ERR_INVALID_ARG, "trace: NULL argument");
  cJSON *root = cJSON_CreateObject();
  cJSON *evs = cJSON_AddArrayToObject(root, "traceEvents");
  if (!root || !evs) {
    cJSON_Delete(root);
    return hm_error(HM_ERR_NOMEM, "trace: cannot build JSON");
  }
  /* name each process (class/stage) and thread (compute/comm) once */
  int *named = hm_calloc((size_t)t->nevents + 1, sizeof *named, "trace names");
  int nnamed = 0;
  if (!named) {
    cJSON_Delete(root);
    return HM_ERR_NOMEM;
  }
  for (int i = 0; i < t->nevents; i++) {
    const hm_sim_event *e = &t->events[i];
    const int pid = e->cls * 1000 + e->stage;
    int first = 1;
    for (int j = 0; j < nnamed && first; j++)
      if (named[j] == pid) first = 0;
    if (!first) continue;
    named[nnamed++] = pid;
    char name[64];
    snprintf(name, sizeof name, "class %d stage %d", e->cls, e->stage);
    for (int tid = -1; tid < 2; tid++) {
      cJSON *m = cJSON_CreateObject();
      cJSON_AddStringToObject(m, "name", tid < 0 ? "process_name" : "thread_name");
      cJSON_AddStringToObject(m, "ph", "M");
      cJSON_AddNumberToObject(m, "pid", e->cls * 1000 + e->stage);
      cJSON_AddNumberToObject(m, "tid", tid < 0 ? 0 : tid);
      cJSON *args = cJSON_AddObjectToObject(m, "args");
      cJSON_AddStringToObject(args, "name", tid < 0 ? name : (tid == 0 ? "compute" : "comm"));
      cJSON_AddItemToArray(evs, m);
    }
  }
  free(named);
  for (int i = 0; i < t->nevents; i++) {
    const hm_sim_event *e = &t->events[i];
    cJSON *o = cJSON_CreateObject();
    char name[48];
    if (e->micro >= 0)
      snprintf(name, sizeof name, "%s %d", hm_op_kind_name(e->kind), e->micro);
    else
      snprintf(name, sizeof name, "%s", hm_op_kind_name(e->kind));
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "cat", e->track == 0 ? "compute" : "comm");
    cJSON_AddStringToObject(o, "ph", "X");
    cJSON_AddNumberToObject(o, "pid", e->cls * 1000 + e->stage);
    cJSON_AddNumberToObject(o, "tid", e->track);
    cJSON_AddNumberToObject(o, "ts", e->start * 1e6);
    cJSON_AddNumberToObject(o, "dur", e->dur * 1e6);
    cJSON_AddItemToArray(evs, o);
  }
  char *text = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!text) return hm_error(HM_ERR_NOMEM, "trace: cannot print JSON");
  hm_status st = hm_atomic_write_file(path, text, strlen(text));
  free(text);
  return st == HM_OK ? HM_OK : hm_error_context(st, "trace: ");
}
