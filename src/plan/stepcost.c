/* Cost of the pieces of a training step on a device type: per-layer forward/backward time
 * (measured profile if given, else the GEMM shape model of gemmcost.c for a config model on a
 * type with known tiles and units, else roofline with the type's calibratable efficiency), the
 * tensor-parallel allreduces, memory per device, and the links a plan's transfers use.
 * Formulas are those of docs/plan.md; collectives and transfers use include/hetmix/cost.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"
#include "util/util.h"

double hm_static_bytes(const hm_train *t, double params, int dp) {
  double sharded = t->master_bytes + t->optimizer_bytes;
  if (t->zero_stage >= 1 && dp > 1) sharded /= dp;
  return params * (t->weight_bytes + t->grad_bytes + sharded);
}

int hm_type_per_host_max(const hm_cluster *c, int type) {
  int best = 0;
  for (int g = 0; g < c->ngroups; g++)
    for (int k = 0; k < c->groups[g].nkinds; k++)
      if (c->groups[g].dev[k].type == type && c->groups[g].dev[k].count > best)
        best = c->groups[g].dev[k].count;
  return best;
}

int hm_type_pool(const hm_cluster *c, int type) {
  int pool = -1;
  for (int g = 0; g < c->ngroups; g++)
    for (int k = 0; k < c->groups[g].nkinds; k++) {
      if (c->groups[g].dev[k].type != type) continue;
      if (c->groups[g].pool < 0 || (pool >= 0 && c->groups[g].pool != pool)) return -1;
      pool = c->groups[g].pool;
    }
  return pool;
}

int64_t hm_type_groups(const hm_cluster *c, int type, int tp) {
  int64_t n = 0;
  for (int g = 0; g < c->ngroups; g++)
    for (int k = 0; k < c->groups[g].nkinds; k++)
      if (c->groups[g].dev[k].type == type) n += c->groups[g].count * (c->groups[g].dev[k].count / tp);
  return n;
}

static int first_group_with(const hm_cluster *c, int type, int other) {
  for (int g = 0; g < c->ngroups; g++) {
    int has_a = 0, has_b = other < 0;
    for (int k = 0; k < c->groups[g].nkinds; k++) {
      has_a |= c->groups[g].dev[k].type == type;
      has_b |= c->groups[g].dev[k].type == other;
    }
    if (has_a && has_b) return g;
  }
  return -1;
}

hm_link hm_device_nic(const hm_cluster *c, int type) {
  /* the slowest per-device share among the host groups holding this type */
  hm_link best = {0, 0, 0, 0};
  int first = 1;
  for (int g = 0; g < c->ngroups; g++) {
    const hm_host_group *hg = &c->groups[g];
    int has = 0;
    for (int k = 0; k < hg->nkinds; k++) has |= hg->dev[k].type == type;
    if (!has || hg->devices_per_host < 1) continue;
    double share = hg->nic.bandwidth * (hg->nic_count > 0 ? hg->nic_count : 1) / hg->devices_per_host;
    if (share > hg->nic.bandwidth) share = hg->nic.bandwidth;
    if (first || share < best.bandwidth) best.bandwidth = share;
    if (first || hg->nic.latency > best.latency) best.latency = hg->nic.latency;
    first = 0;
  }
  return best;
}

/* A link between hosts as hmcomm drives it: compressed where the training spec counts
 * compression and the link is slower than its threshold (docs/plan.md). */
static hm_link zip_link(const hm_train *t, hm_link l) {
  if (t && t->zip.ratio > 0 && l.bandwidth > 0 && l.bandwidth < t->zip_below) hm_cost_link_with_zip(&l, &t->zip, &l);
  return l;
}

hm_link hm_stage_link(const hm_plan_inputs *in, int ta, int tb, int same_host) {
  const hm_cluster *c = in->cluster;
  hm_link l = {0, 0, 0, 0};
  if (c->nhosts <= 1) same_host = 1;
  if (same_host) {
    int g = first_group_with(c, ta, tb);
    if (g >= 0 && hm_cluster_link(c, g, ta, g, tb, 1, &l) == HM_OK) {
      if (in->profile) hm_profile_link_find(in->profile, ta, tb, 0, &l);
      return l;
    }
  }
  hm_link a = hm_device_nic(c, ta), b = hm_device_nic(c, tb);
  l.bandwidth = fmin(a.bandwidth, b.bandwidth);
  l.latency = fmax(a.latency, b.latency);
  int ga = first_group_with(c, ta, -1), gb = first_group_with(c, tb, -1);
  if (ga >= 0 && gb >= 0 && c->groups[ga].pool != c->groups[gb].pool && c->groups[ga].pool >= 0) {
    hm_link full;
    if (hm_cluster_link(c, ga, ta, gb, tb, 0, &full) == HM_OK) {
      l.bandwidth = fmin(l.bandwidth, full.bandwidth);
      l.latency = full.latency;
    }
  }
  if (in->profile) {
    hm_link m;
    if (hm_profile_link_find(in->profile, ta, tb, 1, &m)) l = m;
  }
  return zip_link(in->train, l);
}

hm_sync_model hm_plan_sync_model(const hm_plan_inputs *in, unsigned types_mask, int nranks,
                                 int64_t devices) {
  const hm_cluster *c = in->cluster;
  hm_sync_model m = {.nranks = nranks, .ngroups = 1};
  int first = 1;
  unsigned char pool_used[HM_SPEC_POOLS_MAX] = {0};
  int npools = 0;
  for (int k = 0; k < c->ntypes && k < 32; k++) {
    if (!(types_mask & (1u << k))) continue;
    hm_link l = c->nhosts <= 1 ? hm_stage_link(in, k, k, 1) : hm_device_nic(c, k);
    if (c->nhosts <= 1) /* one host: replicas of unlike types meet over the host link */
      for (int k2 = 0; k2 < c->ntypes && k2 < 32; k2++)
        if (k2 != k && (types_mask & (1u << k2))) {
          hm_link h = hm_stage_link(in, k, k2, 1);
          if (h.bandwidth < l.bandwidth) l = h;
        }
    if (c->nhosts > 1 && in->profile) hm_profile_link_find(in->profile, k, k, 1, &l);
    if (first || l.bandwidth < m.link.bandwidth) m.link.bandwidth = l.bandwidth;
    if (first || l.latency > m.link.latency) m.link.latency = l.latency;
    first = 0;
    for (int g = 0; g < c->ngroups; g++)
      for (int d = 0; d < c->groups[g].nkinds; d++) {
        const int pool = c->groups[g].pool;
        if (c->groups[g].dev[d].type == k && pool >= 0 && !pool_used[pool]) {
          pool_used[pool] = 1;
          npools++;
        }
      }
  }
  if (c->nhosts > 1) m.link = zip_link(in->train, m.link);
  if (npools > 1 && nranks >= npools) {
    m.ngroups = npools;
    /* the slowest pool link among the pools used, shared by the devices of one pool */
    int firstp = 1;
    for (int i = 0; i < c->npool_links; i++) {
      const hm_pool_link *pl = &c->pool_links[i];
      if (!pool_used[pl->a] || !pool_used[pl->b]) continue;
      if (firstp || pl->link.bandwidth < m.outer.bandwidth) m.outer.bandwidth = pl->link.bandwidth;
      if (firstp || pl->link.latency > m.outer.latency) m.outer.latency = pl->link.latency;
      firstp = 0;
    }
    m.outer = zip_link(in->train, m.outer);
    m.pool_bandwidth = m.outer.bandwidth;
    double per_pool = (double)devices / npools;
    if (per_pool > 1) m.outer.bandwidth /= per_pool;
    m.outer.latency += m.link.latency;
  }
  return m;
}

/* A config model's block or head on a type with a GEMM shape model: its GEMMs, plus the
 * memory-bound ops as the layer's kept activations written in forward and read and written
 * in backward; full recompute repeats the forward before the backward. */
static void shape_layer_times(const hm_gemm_device *g, const hm_model *md, const hm_layer *ly,
                              const hm_train *tr, double b, int tp, double *f, double *bw) {
  double gf = 0, gb = 0;
  hm_block_gemm_times(g, &md->cfg, strcmp(ly->kind, "head") == 0, b, tp, &gf, &gb);
  const double elementwise = ly->act_bytes * b / tp / g->membw;
  *f = gf + elementwise;
  *bw = gb + 2 * elementwise + (tr->recompute == HM_RECOMPUTE_FULL ? *f : 0.0);
}

/* One tensor-parallel allreduce of `bytes` among tp ranks: measured by the profiler when it timed
 * this rank count, else the cost model on the type's intra-host link; 0 for no bytes. */
static double tp_allreduce_time(const hm_plan_inputs *in, int tp, double bytes, const hm_link *link) {
  double ar = 0;
  if (bytes <= 0) return 0;
  if (!in->profile || !hm_profile_tp_allreduce_time(in->profile, tp, bytes, &ar))
    hm_cost_best_algo(HM_COLL_ALLREDUCE, tp, bytes, link, &ar);
  return ar;
}

void hm_layer_costs_free(hm_layer_costs *c) {
  if (!c) return;
  free(c->fwd);
  memset(c, 0, sizeof *c);
}

hm_status hm_layer_costs_init(const hm_plan_inputs *in, int type, int tp, int64_t mb,
                              hm_layer_costs *out) {
  const hm_model *md = in->model;
  const hm_train *tr = in->train;
  const hm_device_type *dt = &in->cluster->types[type];
  const int n = md->nlayers;
  memset(out, 0, sizeof *out);
  out->type = type;
  out->tp = tp;
  out->mb = mb;
  out->fwd = hm_calloc((size_t)n * 8, sizeof(double), "layer costs");
  if (!out->fwd) return HM_ERR_NOMEM;
  out->bwd = out->fwd + n;
  out->out_bytes = out->bwd + n;
  out->params = out->out_bytes + n;
  out->shared = out->params + n;
  out->act = out->shared + n;
  out->opt = out->act + n;
  out->ok = tp <= hm_type_per_host_max(in->cluster, type);
  out->capacity = dt->memory_bytes * tr->memory_fraction;
  const double peak = hm_device_type_peak(dt, tr->compute_dtype) *
                      (dt->efficiency > 0 ? dt->efficiency : 0.5);
  const double membw = dt->memory_bandwidth > 0 ? dt->memory_bandwidth : INFINITY;
  const double b = (double)mb;
  hm_device_type dshape = *dt;
  hm_device_type_gemm_defaults(&dshape);
  const int shape = md->has_config && hm_gemm_model_known(&dshape);
  const hm_gemm_device gd = {.peak = hm_device_type_peak(dt, tr->compute_dtype),
                             .efficiency = dt->efficiency > 0 ? dt->efficiency : 0.5,
                             .membw = membw,
                             .elem_bytes = (double)hm_spec_dtype_size(tr->compute_dtype),
                             .units = dshape.gemm_units,
                             .tile_m = dshape.gemm_tile_m,
                             .tile_n = dshape.gemm_tile_n};
  hm_link tp_link = dt->intra_link;
  if (in->profile) hm_profile_link_find(in->profile, type, type, 0, &tp_link);
  const int full = tr->recompute == HM_RECOMPUTE_FULL;
  for (int l = 0; l < n; l++) {
    const hm_layer *ly = &md->layers[l];
    if (ly->tp_divides > 0 && ly->tp_divides % tp != 0) out->ok = 0;
    out->params[l] = (ly->params + ly->shared_params) / tp;
    out->shared[l] = ly->shared_params / tp;
    out->out_bytes[l] = ly->out_bytes * b / tp;
    out->act[l] = hm_layer_held_act_bytes(ly, tr) * b / tp;
    double reserve = full ? ly->act_bytes * b / tp : 0.0;
    if (reserve > out->reserve) out->reserve = reserve;
    double f = 0, bw = 0;
    if (tp > 1 && in->profile && hm_profile_layer_time_tp(in->profile, type, ly->kind, mb, tp, &f, &bw)) {
      /* measured split at this degree (one rank's shard, the ranks timed at once): the replicated
       * parts and the smaller GEMMs as run; the allreduces add below */
      bw += full ? f : 0.0;
    } else if (in->profile && hm_profile_layer_time(in->profile, type, ly->kind, mb, &f, &bw)) {
      /* measured without tensor parallelism: the compute divides, the allreduces add below */
      f /= tp;
      bw = bw / tp + (full ? f : 0.0);
    } else if (shape && (strcmp(ly->kind, "block") == 0 || strcmp(ly->kind, "head") == 0)) {
      shape_layer_times(&gd, md, ly, tr, b, tp, &f, &bw);
    } else {
      const double ff = ly->fwd_flops * b / tp;
      const double bf = hm_layer_train_flops(ly, tr) * b / tp - ff; /* recompute included */
      const double wbytes = out->params[l] * tr->weight_bytes;
      f = fmax(ff / peak, (wbytes + ly->act_bytes * b / tp) / membw);
      bw = fmax(bf / peak, (2 * wbytes + out->params[l] * tr->grad_bytes +
                            2 * ly->act_bytes * b / tp) / membw);
    }
    if (tp > 1) { /* forward and backward allreduces differ (the embedding has none in backward) */
      const double bwd_bytes = ly->tp_comm_bwd_bytes < 0 ? ly->tp_comm_bytes : ly->tp_comm_bwd_bytes;
      const double ar_f = tp_allreduce_time(in, tp, ly->tp_comm_bytes * b, &tp_link);
      f += ar_f;
      bw += tp_allreduce_time(in, tp, bwd_bytes * b, &tp_link) + (full ? ar_f : 0.0);
    }
    out->fwd[l] = f;
    out->bwd[l] = bw;
    /* AdamW streams weights, gradients, master copy and both moments once (read + write) */
    out->opt[l] = out->params[l] *
                  (tr->weight_bytes + tr->grad_bytes + 2 * (tr->master_bytes + tr->optimizer_bytes)) /
                  membw;
  }
  return HM_OK;
}
