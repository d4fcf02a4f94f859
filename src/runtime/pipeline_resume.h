/* The run identity of a pipeline job and the check of a resume's stage checkpoints
 * (pipeline_resume.c). Internal to the runtime. */
#ifndef HETMIX_PIPELINE_RESUME_H
#define HETMIX_PIPELINE_RESUME_H

#include <stdint.h>

#include "hetmix/pipeline.h"

/* The file of a stage's shard in a --resume folder: with a manifest (a folder or its
 * manifest.json), the shard it names when its size and checksum match, else the run's peer
 * copy of that step when that one's do (ckpt_agent.h); without, "<resume>/stage<s>.hmc". */
hm_status hm_pipe_shard_path(const char *resume, int stage, int nstages, char *path, size_t cap);

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
