/* Elastic re-plan of a --plan job (replan.c; docs/runtime.md, "Elastic re-plan"): the spec files
 * of the plan's cluster without some ranks' devices, and a plan's stage layout for re-sharding. */
#ifndef HETMIX_RUNTIME_REPLAN_H
#define HETMIX_RUNTIME_REPLAN_H

#include "hetmix/model.h"

typedef struct hm_replan_specs {
  char cluster[4200], model[4200], train[4200]; /* the files written */
  char profile[4200];                           /* written when a profile was given, else "" */
  char dropped[1024];                           /* "rank 2 (host 0, device 2, cpu cpu:threads=1)", ... */
} hm_replan_specs;

/* Writes out_dir/cluster.json (the plan's embedded cluster less the devices of the plan's world
 * ranks drop[0..n-1]: a host group of several hosts is split into single hosts first; a host
 * left without devices, and a device type left without any, leave the cluster), model.json and
 * train.json (the plan's own) and, when profile is not NULL, profile.json (its entries of the
 * device types left). HM_ERR_INVALID_ARG when a rank is not in the plan or no device would be
 * left. */
hm_status hm_replan_write_specs(const char *plan_path, const char *profile, const int *drop, int n,
                                const char *out_dir, hm_replan_specs *out);

/* A plan's layout as a re-shard target (stage bounds, micro-batches per step of all replicas,
 * micro-batch size, ranks) and, per stage, the tensor-parallel degree its re-sharded checkpoint is
 * written with (every replica's, or 1: unsplit, when replicas split the stage differently). */
hm_status hm_replan_layout(const char *plan_path, hm_reshard_layout *out, double *predicted_step_s);

/* Re-shards the complete checkpoint folder ckpt (run_dir/step-<N>, or a step-<N> folder of the
 * peers' memory) to layout `to` as run_dir/step-<N>: the new shards are written beside it, then
 * every step-* folder of run_dir (old layout) moves into run_dir/<aside>/ and the new one takes
 * ckpt's name, so the run's newest complete checkpoint is the re-sharded one and no old-layout
 * one is left to resume from. */
hm_status hm_replan_reshard(const char *run_dir, const char *ckpt, const hm_reshard_layout *to, const char *aside);

#endif
