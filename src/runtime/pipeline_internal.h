/* Internal bridge between the pipeline runtime and the planner: pipeline_plan.c includes plan.h
 * and hands the rest of the runtime plain data: the op lists, the trace writer, and a plan's
 * layout with the plan's model config (the spec's hm_spec_model_config, the one model type). */
#ifndef HETMIX_PIPELINE_INTERNAL_H
#define HETMIX_PIPELINE_INTERNAL_H

#include <stdint.h>

#include "hetmix/spec.h"
#include "hetmix/status.h"

/* Mirrors hm_op_kind (checked in pipeline_plan.c). */
enum {
  HM_PIPE_OP_FWD = 0,
  HM_PIPE_OP_BWD,
  HM_PIPE_OP_SEND_ACT,
  HM_PIPE_OP_RECV_ACT,
  HM_PIPE_OP_SEND_GRAD,
  HM_PIPE_OP_RECV_GRAD,
  HM_PIPE_OP_ALLREDUCE,
  HM_PIPE_OP_TIED_EMB_SYNC,
  HM_PIPE_OP_GRAD_NORM,
  HM_PIPE_OP_OPTIMIZER,
};

typedef struct hm_pipe_op {
  int kind, micro, peer, layer_begin, layer_end;
  int chunk; /* the model chunk it serves (interleaved 1F1B: virtual stage chunk*p + stage); 0 else */
} hm_pipe_op;

/* One stage's op list from the planner's 1F1B generator (hm_schedule_1f1b: plain with nchunks
 * <= 1, interleaved with nchunks = v > 1 over the p*v+1 bounds of stage_layers) and, per chunk,
 * the most micro-batches it holds at once (max_inflight: nchunks entries, or 1 when nchunks <= 1).
 * ops is allocated (free()). */
hm_status hm_pipe_stage_ops(int nstages, int nchunks, int nmicro, const int *stage_layers, int data_parallel,
                            int layers_per_bucket, int tied_embeddings, int stage, hm_pipe_op **ops,
                            int *nops, int *max_inflight);

const char *hm_pipe_op_name(int kind);

/* A measured event; written in the simulator's trace format (hm_sim_trace_write). */
typedef struct hm_pipe_event {
  int replica, stage, track, kind, micro;
  double start, dur; /* seconds */
} hm_pipe_event;

hm_status hm_pipe_trace_write(const hm_pipe_event *ev, int n, const char *path);

/* A plan file's layout, as the runtime needs it (hm_pipe_plan_load). */
#define HM_PIPE_PLAN_MAX_RANKS 4096
typedef struct hm_pipe_plan {
  hm_spec_model_config cfg;                 /* the plan's model (gpt2 or llama), completed */
  char model_name[64];
  int micro_batch;                          /* sequences per micro-batch */
  int nstages;                              /* device stages p */
  int nchunks;                              /* v: model chunks per stage (interleaved 1F1B when > 1) */
  int stage_layers[65];                     /* p*v+1 bounds of the virtual stages, identical in every class */
  int nreplicas;                            /* over all classes */
  int micro[64];                            /* per replica */
  int tp[64][64];                           /* tensor-parallel degree per replica and stage */
  int nranks;                               /* = sum over replicas and stages of tp */
  char backend[HM_PIPE_PLAN_MAX_RANKS][128]; /* per world rank (replica*p + stage) */
  double predicted_step_s;
  double predicted_tokens_per_s;
  double predicted_stage_busy_s[64];        /* class 0's device stages: fwd+bwd of its micro-batches
                                               (every chunk of the stage) */
  double upper_bound_tokens_per_s;          /* 0 when the plan file has none */
} hm_pipe_plan;

/* Loads and validates plan.json (hm_plan_load: against its embedded specs, or against the
 * cluster / model spec files given, when not NULL) and checks it is a layout this runtime runs:
 * a model config the stages run (gpt2 or llama), every replica class with the same stages and
 * layer ranges and chunk count (each class and stage with its own tensor-parallel degree;
 * Llama stages: 1; interleaved plans: 1).
 * HM_ERR_SPEC naming what does not fit. */
hm_status hm_pipe_plan_load(const char *path, const char *cluster_path, const char *model_path, hm_pipe_plan *out);

#endif
