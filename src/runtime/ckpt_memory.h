/* The in-memory tier of the periodic checkpoints (ckpt_memory.c; docs/runtime.md, "In-memory
 * snapshots"). A run's copies live in a memory-backed folder (tmpfs), which outlives every worker
 * process, under "<peer root>/hmpeer-<uid>-<run id>/" (hm_ckpt_peer_dir):
 *   step-<N>/<shard file>      the copy a worker holds of its ring predecessor's shard
 *   own/step-<N>/<shard file>  each replica-0 worker's own snapshot
 * Both are written by the training thread right after the snapshot (synchronously), so once a
 * worker has gone on to the next step every shard of step N is in memory twice. A restart
 * (restart.c) resumes from the newest step whose every shard is in memory, own copy or held
 * copy: it links the missing ones into step-<N>/ and writes that folder's manifest.
 * Internal to the runtime. */
#ifndef HETMIX_CKPT_MEMORY_H
#define HETMIX_CKPT_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/status.h"

/* "<run>/own": the owners' copies of a run's memory folder. */
void hm_mem_own_dir(const char *run, char *out, size_t cap);
/* Writes image as "<root>/step-<N>/<file>" (a tmpfs write, atomic by rename), after removing that
 * folder's manifest (it counts again only with a new one). */
hm_status hm_mem_write(const char *root, int64_t step, const char *file, const void *image, size_t bytes);
/* Removes the step folders of run and run/own older than `below`, except steps keep1 and keep2. */
hm_status hm_mem_prune(const char *run, int64_t below, int64_t keep1, int64_t keep2);
/* Removes every copy of run (held and own) and the folder. */
hm_status hm_mem_remove_run(const char *run);

/* The newest step under root (its "hmpeer-*" run folders) whose every shard is in memory; its
 * folder, made complete (own copies linked in, manifest written, `world` workers), into path.
 * HM_ERR_NOT_FOUND when none is. */
hm_status hm_mem_newest_complete(const char *root, int world, char *path, size_t cap, int64_t *step);
/* Removes every run folder under root, then root itself. */
hm_status hm_mem_remove_root(const char *root);

#endif
