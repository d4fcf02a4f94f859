/* hetmix pipeline runtime: one worker's part of pipeline + tensor- + data-parallel training.
 *
 * The job: R replicas of a p-stage pipeline of the model; stage s holds layers
 * [stage_layers[s], stage_layers[s+1]) in every replica; replica r runs micro[r] micro-batches
 * of `batch` sequences per step. Stage s of replica r runs on tp[r][s] workers (tensor
 * parallelism inside the stage, model.h's hm_stage_tp; 0 counts as 1). World ranks go replica by
 * replica, stage by stage, tensor-parallel rank by rank (the order of plan.json's ranks):
 * hm_pipeline_rank_of; with tp 1 everywhere, world rank = r * p + s. Each worker runs its stage's op list
 * from the planner's 1F1B generator (hm_schedule_1f1b, include/hetmix/plan.h; interleaved with
 * nchunks > 1, see hm_pipeline_options): activations and
 * their gradients go between neighbouring stages with hmcomm's nonblocking send and a receive,
 * gradients are summed across replicas per bucket of layers, the tied embedding's gradient is
 * summed between first and last stage, the global gradient norm is one scalar allreduce, then
 * AdamW. Every micro-batch's loss is weighted 1/M (M = sum of micro[r]), so replicas with unequal
 * counts give the update of one process running all M micro-batches: data micro-batch j of step
 * t is the one the single-process trainer (hm_train_run) draws as its (t*M + j)-th, replica r
 * taking j in [sum micro[<r], sum micro[<=r]).
 *
 * Not here: launching (include/hetmix/runtime.h), planning (plan.h), the layers (model.h). */
#ifndef HETMIX_PIPELINE_H
#define HETMIX_PIPELINE_H

#include "hetmix/comm.h"
#include "hetmix/model.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HM_PIPE_MAX_STAGES 64
#define HM_PIPE_MAX_REPLICAS 64

/* A rank whose compute stayed slower than predicted and than its peers (docs/runtime.md,
 * "Failure model": threshold 1.5x over 3 consecutive steps). */
typedef struct hm_slow_report {
  int rank, replica, stage;
  int step;              /* steps completed when it was found */
  int self;              /* 1 on the reported rank's own worker */
  double expected_s;     /* what it was judged against, seconds of compute this step */
  double measured_s;     /* its measured compute this step */
} hm_slow_report;

typedef struct hm_pipeline_options {
  const hm_train_options *train; /* model, data, steps, batch, optimizer, seed, out_dir;
                                    train->device is this worker's device, grad_accum ignored */
  int nstages;                   /* p >= 1 */
  int stage_layers[HM_PIPE_MAX_STAGES + 1]; /* bounds over the model's L+2 layers: p+1 of them, or
                                    p*v+1 of the virtual stages with nchunks = v > 1 */
  int nchunks;                   /* v: model chunks per stage [0 or 1: plain 1F1B]. v > 1 runs
                                    interleaved 1F1B: stage s holds chunks c = 0..v-1, chunk c being
                                    virtual stage c*p + s with layers [stage_layers[c*p+s],
                                    stage_layers[c*p+s+1]); needs p >= 2 and p*v <= 64, and (not
                                    supported yet) refuses tp > 1, resume, periodic checkpoints and
                                    rebalance. --dump writes stage<j>.hmc per virtual stage j, the
                                    files of a plain p*v-stage run */
  int nreplicas;                 /* R >= 1 */
  int micro[HM_PIPE_MAX_REPLICAS]; /* micro-batches per replica per step, each >= 1 */
  int layers_per_bucket;         /* data-parallel allreduce bucket [1] */
  int sync_after_backward;       /* 1: issue the gradient buckets after the step's last backward;
                                    0: issue each bucket during the last backward as soon as its
                                    layers are done (overlapped sync, the same sums bitwise) [0] */
  const char *trace_path;        /* measured Chrome/Perfetto trace (rank 0 writes), or NULL */
  int trace_steps;               /* how many final steps the trace covers [1] */
  const char *metrics_path;      /* JSON lines, one per step, or NULL (train->out_dir/metrics.jsonl) */
  const char *dump_dir;          /* replica 0's stages write stage<s>.hmc checkpoints here, or NULL */
  int tp[HM_PIPE_MAX_REPLICAS][HM_PIPE_MAX_STAGES]; /* tensor-parallel degree of each replica's
                                    stages (0: 1); it must divide the model's NH and V */
  int rebalance;                 /* 1: after each step, move micro-batches between data-parallel
                                    replicas toward equal finish times, from each replica's measured
                                    compute per micro-batch (the global batch and the update stay
                                    the same: micro-batch k of a step is the same data wherever it
                                    runs). 0: keep `micro` as given [0] */
  double expected_busy_s;        /* the plan's predicted compute seconds per micro-batch of this
                                    worker's stage on its device, 0 when unknown: fail-slow
                                    localization then judges against the rank's own first steps */
  void (*on_slow)(const struct hm_slow_report *r, void *user); /* a rank found persistently slow
                                    (every worker gets every report; r->self marks its own), or NULL */
  void *slow_user;
  int mem_every;                 /* with periodic checkpoints (train->ckpt_every, dump_dir) and peer
                                    copies: also snapshot into memory only (the own and the ring
                                    peer's copy, no disk) every N steps, so a restart loses fewer
                                    steps (docs/runtime.md, "In-memory snapshots"); 0: only at
                                    the disk checkpoints [0] */
  void (*on_warning)(const char *msg, void *user); /* something the run survived (a periodic
                                    checkpoint that could not be written is skipped), or NULL */
  void *warning_user;
} hm_pipeline_options;

typedef struct hm_pipeline_result {
  int steps_done;
  float last_loss;          /* mean loss of the last step over all M micro-batches */
  double step_time_s;       /* mean over the measured steps (after the first), slowest rank */
  double tokens_per_s;      /* M * batch * T / step_time_s */
  double stage_busy_s[HM_PIPE_MAX_STAGES]; /* mean compute time per step of each stage (replica 0) */
  int micro[HM_PIPE_MAX_REPLICAS]; /* micro-batches per replica in the last step */
  int rebalances;           /* steps after which the split changed (option rebalance) */
  int slow_reports;         /* fail-slow reports (option on_slow) */
  int ckpt_skipped;         /* periodic checkpoints not written (I/O error, e.g. a full disk) */
  double stage_tp_s[HM_PIPE_MAX_STAGES]; /* mean time per step of each stage's tensor-parallel
                                    allreduces (replica 0; 0 without tensor parallelism) */
} hm_pipeline_result;

/* Workers of the layout (sum of every replica's stage tp degrees), the world rank of (replica,
 * stage, tp rank), and the inverse (-1s when rank is outside the layout). */
int hm_pipeline_world_size(const hm_pipeline_options *opts);
int hm_pipeline_rank_of(const hm_pipeline_options *opts, int replica, int stage, int tp_rank);
void hm_pipeline_locate(const hm_pipeline_options *opts, int rank, int *replica, int *stage, int *tp_rank);

/* Runs the whole training on this worker. world: every worker of the job (size R*p). Collective:
 * every worker calls it with the same options except train->device. res may be NULL. */
hm_status hm_pipeline_run(const hm_pipeline_options *opts, hm_comm_t world, hm_pipeline_result *res);

/* Checks a pipeline layout against the model and world size; the message names what is wrong. */
hm_status hm_pipeline_check(const hm_pipeline_options *opts, int world_size);

#ifdef __cplusplus
}
#endif
#endif
