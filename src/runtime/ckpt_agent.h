/* Periodic distributed checkpoints of a pipeline job (ckpt_agent.c; docs/runtime.md,
 * "Checkpoints and failures"). Two phases, as CheckFreq: at a checkpoint step every worker
 * snapshots its stage into host memory (the caller's hm_stage_snapshot) and hands the image
 * over; a background thread then persists it while training goes on. Replica 0's workers write
 * their stage's shard to "<dump>/step-<N>/stage<s>.hmc" (each tensor-parallel rank r of a
 * stage its own, "stage<s>.tp<r>.hmc"); once every shard is durable, world
 * rank 0 renames "<dump>/step-<N>/manifest.json" into place and prunes old folders.
 * In-memory redundancy: every worker also sends its image to the next world rank (a ring), which
 * keeps it in a memory-backed folder ("<peer root>/hmpeer-<uid>-<run>/step-<N>/", tmpfs), next to
 * the owners' own copies (ckpt_memory.h), so a lost worker's shard survives in its peer's memory;
 * that folder gets a manifest too. Snapshots to memory only can be taken more often than disk
 * checkpoints (HM_SNAP_MEMORY).
 * Internal to the runtime. */
#ifndef HETMIX_CKPT_AGENT_H
#define HETMIX_CKPT_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/comm.h"
#include "hetmix/model.h"
#include "hetmix/status.h"

typedef struct hm_ckpt_agent hm_ckpt_agent;

typedef struct hm_ckpt_agent_config {
  const char *dump_dir; /* run folder of the disk checkpoints */
  const char *peer_root; /* root of the peer copies (tmpfs); NULL: no ring */
  int keep;              /* newest complete checkpoints kept (0: all) */
  int stage, nstages, replica; /* this worker's place; world rank = replica * nstages + stage */
  uint64_t run_id;
  /* With tensor-parallel stages: replica 0's workers (world ranks 0..nshards-1) in rank order,
   * each one shard: its stage, tp_rank, tp_size and file (hm_ckpt_shard_name). nshards 0: one
   * unsplit shard per stage (world rank = replica * nstages + stage). */
  const hm_ckpt_shard_info *shards;
  int nshards;
} hm_ckpt_agent_config;

/* The peer copies' root from $HETMIX_PEER_DIR (a folder, or "none"), else /dev/shm when it is a
 * folder; NULL (*root untouched) when off. */
const char *hm_ckpt_peer_root(void);
/* The folder of a run's peer copies: "<root>/hmpeer-<uid>-<run id, 16 hex>". */
void hm_ckpt_peer_dir(const char *root, uint64_t run_id, char *out, size_t cap);

/* Collective over world: splits a communicator for the ring, starts the thread. */
hm_status hm_ckpt_agent_open(hm_comm_t world, const hm_ckpt_agent_config *cfg, hm_ckpt_agent **out);
/* What a step's snapshot is for (the same on every worker). */
enum { HM_SNAP_NONE = 0, HM_SNAP_DISK = 1 /* a checkpoint: memory copies, then disk */,
       HM_SNAP_MEMORY = 2 /* memory copies only (ckpt_memory.h; nothing without a ring) */ };

/* Collective, every worker after each step (done = steps taken; kind: HM_SNAP_*). A snapshot
 * is sent around the ring and both memory copies are written before this returns; a disk one is
 * then persisted in the background. While a checkpoint is being persisted it exchanges the
 * workers' progress (one small allgather) and, when every shard is durable, has rank 0 write
 * the manifest. image (bytes; ownership passes to the agent, may be NULL elsewhere) is the
 * snapshot of replica 0's workers at a snapshot step; data_position goes into the manifest.
 * A new disk snapshot first waits until the previous checkpoint is complete. */
hm_status hm_ckpt_agent_step(hm_ckpt_agent *a, int64_t done, int kind, uint64_t data_position, void *image,
                             size_t bytes);
/* Collective, at the end of training: waits (with a deadline) until the last checkpoint is
 * complete. */
hm_status hm_ckpt_agent_finish(hm_ckpt_agent *a);
/* Stops the thread (after the write in progress) and frees; remove_peer_copies: world rank 0
 * removes the run's peer copies (a run that ended well needs them no more). */
void hm_ckpt_agent_close(hm_ckpt_agent *a, int remove_peer_copies);

#endif
