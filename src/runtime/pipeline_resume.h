/* The run identity of a pipeline job and the check of a resume's stage checkpoints
 * (pipeline_resume.c). Internal to the runtime. */
#ifndef HETMIX_PIPELINE_RESUME_H
#define HETMIX_PIPELINE_RESUME_H

#include <stdint.h>

#include "hetmix/pipeline.h"

/* The file of a stage's shard in a --resume folder: with a manifest (a folder or its
 * manifest.json), the shard it names when its size and checksum match, else the run's peer
 * copy of that step when that one's do (ckpt_agent.h); without, "<resume>/stage<s>.hmc".
 * Tensor-parallel rank tp_rank of a stage split tp ways gets its own shard where the manifest
 * splits the stage alike, the unsplit stage where it does not split it (a rank cuts its part
 * out); another split is refused. */
hm_status hm_pipe_shard_path(const char *resume, int stage, int tp_rank, int tp, int nstages, char *path, size_t cap);
/* Loads a resume's shard into a stage of tensor-parallel rank tp_rank of tp (1: unsplit): a
 * shard of the same rank and size exactly (hm_stage_load_shard, the device's element type), an
 * unsplit file into a tensor-parallel rank by cutting its part out (hm_stage_load). */
hm_status hm_pipe_load_stage(hm_stage *st, hm_device *dev, const char *path, int tp, int tp_rank, hm_ckpt_meta *meta);
/* Replica 0's workers' shards in world rank order (stage by stage, each tensor-parallel rank):
 * stage, tp_rank, tp_size and file name, for the checkpoint agent. *tab: free(). */
hm_status hm_pipe_ckpt_shards(const hm_pipeline_options *o, hm_ckpt_shard_info **tab, int *n);

/* Collective over world, before training. Fresh run (o->train->resume NULL): *run_id is world
 * rank 0's new random identity. Resume: every worker reads the header of its stage's shard
 * (hm_pipe_shard_path; the path goes to shard, cap bytes), the workers exchange them, and every worker checks the same set:
 * one run (run_id), one step, one data position, this layout (stage count, layer ranges, M
 * micro-batches per step) and model; on a mismatch every worker returns the same
 * HM_ERR_INVALID_ARG naming the files and what differs, so none is left waiting on a peer.
 * stage: this worker's stage; M: micro-batches per step over all replicas. */
hm_status hm_pipe_run_identity(hm_comm_t world, const hm_pipeline_options *o, int stage, int M, uint64_t *run_id,
                               char *shard, size_t cap);

#endif
