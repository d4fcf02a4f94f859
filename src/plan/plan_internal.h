/* Planner internals shared by stepcost.c, search.c and planio.c. Not a public header. */
#ifndef HETMIX_PLAN_INTERNAL_H
#define HETMIX_PLAN_INTERNAL_H

#include "hetmix/plan.h"

/* Gradient buckets of a plan's schedule: one layer each (a layer of a large model is already
 * hundreds of MB; the simulator and the runtime use the same value). */
#define HM_PLAN_LAYERS_PER_BUCKET 1

/* Per-layer figures of one (device type, tp, micro-batch size), before the split. */
typedef struct hm_layer_costs {
  int type, tp;
  int64_t mb;
  int ok;             /* 0: tp does not divide some layer's tp_divides or exceeds a host */
  double *fwd, *bwd;  /* (n) seconds per micro-batch (tp allreduces and recompute included) */
  double *out_bytes;  /* (n) bytes per device of the layer's output for one micro-batch */
  double *params;     /* (n) parameters per device, tied copy included (counted when p > 1) */
  double *shared;     /* (n) of which the tied copy */
  double *act;        /* (n) bytes per device per micro-batch held for backward */
  double *opt;        /* (n) optimizer seconds */
  double reserve;     /* bytes per device of one layer recomputed at a time (full recompute) */
  double capacity;    /* usable bytes per device */
} hm_layer_costs;

hm_status hm_layer_costs_init(const hm_plan_inputs *in, int type, int tp, int64_t mb,
                              hm_layer_costs *out);
void hm_layer_costs_free(hm_layer_costs *c);

/* Bytes per device of weights, gradients, master copy and optimizer state for `params`
 * parameters per device, with `dp` data-parallel replicas (ZeRO-1 shards the last two). */
double hm_static_bytes(const hm_train *t, double params, int dp);

/* Link between consecutive stages of types ta -> tb (docs/plan.md: same host when a replica's
 * stages of one type fit one host, else the NIC share of one device). */
hm_link hm_stage_link(const hm_plan_inputs *in, int ta, int tb, int same_host);
/* NIC bandwidth one device gets when every device of its host transfers at once. */
hm_link hm_device_nic(const hm_cluster *c, int type);
/* Gradient-sync model for a plan using `types_mask` device types and `nranks` replicas. */
hm_sync_model hm_plan_sync_model(const hm_plan_inputs *in, unsigned types_mask, int nranks,
                                 int64_t devices);
/* Number of tensor-parallel groups of size tp of type k (each inside one host). */
int64_t hm_type_groups(const hm_cluster *c, int type, int tp);
/* Largest number of devices of type k in one host. */
int hm_type_per_host_max(const hm_cluster *c, int type);

/* Refinement by simulation (search_refine.c): moves a layer between two stages of one class
 * (neighbours only unless `ranges`), a micro-batch per replica between two classes, or swaps
 * two classes, while the simulated step gets shorter within memory; at most max_sims
 * simulations. p must be predicted; it stays predicted. *nsim (may be NULL) counts them. */
hm_status hm_plan_refine(const hm_plan_inputs *in, hm_plan *p, int ranges, int max_sims,
                         int64_t *nsim);

#endif
