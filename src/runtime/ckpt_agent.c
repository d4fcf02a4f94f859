/* Periodic distributed checkpoints: snapshot handed over by the training thread, persisted by a
 * background thread, completed by a manifest once every shard is durable (ckpt_agent.h).
 *
 * Who does what, with p stages and R replicas (world rank = replica * p + stage): replica 0's
 * workers snapshot (their stage is the same in every replica), send the image to world rank + 1
 * (mod W), which writes it to the peer folder while the owner writes its own copy beside it
 * (both in memory, before training goes on: ckpt_memory.h), and then write their shard to disk
 * in the background (memory-only snapshots stop before the disk). With tensor-
 * parallel stages replica 0's workers are still world ranks 0..n0-1 (stage by stage, tensor-
 * parallel rank by rank), each writing its own shard: the same rules with n0 shards for p. Every step
 * while a checkpoint is outstanding the workers allgather their progress (last step written to
 * disk and to the peer folder, and any failure) and all decide alike: when every shard of the
 * step is durable, world rank 0's thread writes the manifest and prunes. A new snapshot waits
 * for the previous checkpoint to complete, so at most one is in flight (as CheckFreq). */
#include "runtime/ckpt_agent.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "hetmix/model.h"
#include "runtime/ckpt_memory.h"
#include "util/files.h"
#include "util/util.h"

enum { HM_JOB_SHARD, HM_JOB_MANIFEST };

typedef struct hm_ckpt_job {
  int kind;
  int64_t step;
  char dir[4300];     /* the step's folder */
  char file[64];      /* shard name */
  void *image;        /* owned */
  size_t bytes;
  hm_ckpt_manifest manifest;
  const char *prune_root; /* manifest jobs: prune this run folder after writing */
  int keep;
} hm_ckpt_job;

/* One worker's progress as exchanged (every field fixed-size). */
typedef struct hm_ckpt_rec {
  int64_t disk_done, mem_done; /* last step written (-1: none) */
  int32_t failed, pad;
  uint64_t own_bytes, own_hash, peer_bytes, peer_hash;
} hm_ckpt_rec;

#define HM_AGENT_QUEUE 4

struct hm_ckpt_agent {
  hm_ckpt_agent_config cfg;
  hm_ckpt_shard_info *tab; /* replica 0's workers' shards, in world rank order */
  int n0;                  /* their number */
  char dump[4200], peer_dir[4200];
  hm_comm_t world, ring;
  int rank, W, writer, sends, recvs; /* sends: replica 0 with a ring; recvs: holds rank-1's image */
  int64_t pending;                   /* step of the outstanding checkpoint, 0: none */
  int64_t last_snap, last_disk;      /* the previous snapshot's step, the newest complete checkpoint's */
  uint64_t pending_pos;              /* its data position */
  int pending_mem;                   /* it has peer copies */
  long wait_s;
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  hm_ckpt_job *queue[HM_AGENT_QUEUE];
  int nq, busy, stop;
  int64_t prune[3]; /* rank 0: the memory pruning asked for last (below, keep, keep) */
  int prune_due;
  hm_ckpt_rec rec; /* guarded by mu */
  char err[1024];  /* the thread's first failure */
};

const char *hm_ckpt_peer_root(void) {
  const char *e = getenv("HETMIX_PEER_DIR");
  if (e && *e) return strcmp(e, "none") == 0 ? NULL : e;
  struct stat sb;
  return stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : NULL;
}

void hm_ckpt_peer_dir(const char *root, uint64_t run_id, char *out, size_t cap) {
  snprintf(out, cap, "%s/hmpeer-%u-%016" PRIx64, root, (unsigned)geteuid(), run_id);
}

/* ---------------------------------------------------------------- the thread */

static hm_status hm_job_shard(hm_ckpt_agent *a, const hm_ckpt_job *j) {
  HM_TRY(hm_make_dirs(j->dir, 0755, HM_DIR_OUTPUT));
  char path[4400];
  /* a folder of this step left by an earlier attempt (a resumed run) loses its manifest before
   * any of its shards is replaced: it counts again only once the new manifest is written */
  snprintf(path, sizeof path, "%s/%s", j->dir, HM_CKPT_MANIFEST);
  if (unlink(path) != 0 && errno != ENOENT)
    return hm_error(HM_ERR_IO, "cannot remove the old manifest %s: %s", path, strerror(errno));
  snprintf(path, sizeof path, "%s/%s", j->dir, j->file);
  HM_TRY(hm_atomic_write_file(path, j->image, j->bytes));
  const uint64_t h = XXH3_64bits(j->image, j->bytes);
  pthread_mutex_lock(&a->mu);
  a->rec.disk_done = j->step, a->rec.own_bytes = j->bytes, a->rec.own_hash = h;
  pthread_mutex_unlock(&a->mu);
  return HM_OK;
}

static hm_status hm_job_run(hm_ckpt_agent *a, const hm_ckpt_job *j) {
  if (j->kind == HM_JOB_SHARD) return hm_job_shard(a, j);
  HM_TRY(hm_ckpt_manifest_write(j->dir, &j->manifest));
  return j->prune_root ? hm_ckpt_prune_complete(j->prune_root, j->keep, NULL) : HM_OK;
}

/* A failure of the thread's work or of this worker's own part of a snapshot: the first one is
 * kept; every worker learns it at the next progress exchange. Called with mu held. */
static void hm_agent_failed_locked(hm_ckpt_agent *a, hm_status st) {
  if (st != HM_OK && !a->rec.failed) {
    a->rec.failed = 1;
    snprintf(a->err, sizeof a->err, "%s", hm_last_error());
  }
}

/* Rank 0's pruning of the memory copies (hm_mem_prune), run when no write is queued: requests
 * coalesce, so a slow disk write never fills the queue with them, and the training thread of
 * rank 0 does no more work after a snapshot than the others (the progress watchdog compares
 * them). Called with mu held; returns with it held. */
static void hm_agent_prune_locked(hm_ckpt_agent *a) {
  const int64_t below = a->prune[0], k1 = a->prune[1], k2 = a->prune[2];
  a->prune_due = 0, a->busy = 1;
  pthread_mutex_unlock(&a->mu);
  hm_status st = hm_mem_prune(a->peer_dir, below, k1, k2);
  pthread_mutex_lock(&a->mu);
  hm_agent_failed_locked(a, st);
  a->busy = 0;
  pthread_cond_broadcast(&a->cv);
}

static void *hm_agent_main(void *arg) {
  hm_ckpt_agent *a = arg;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (a->nq == 0 && !a->prune_due && !a->stop) pthread_cond_wait(&a->cv, &a->mu);
    if (a->nq == 0 && a->prune_due) {
      hm_agent_prune_locked(a);
      continue;
    }
    if (a->nq == 0) break;
    hm_ckpt_job *j = a->queue[0];
    memmove(a->queue, a->queue + 1, (size_t)(a->nq - 1) * sizeof *a->queue);
    a->nq--, a->busy = 1;
    const int skip = a->rec.failed; /* after a failure nothing more is written */
    pthread_mutex_unlock(&a->mu);
    hm_status st = skip ? HM_OK : hm_job_run(a, j);
    pthread_mutex_lock(&a->mu);
    hm_agent_failed_locked(a, st);
    free(j->image);
    free(j);
    a->busy = 0;
    pthread_cond_broadcast(&a->cv);
  }
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

static hm_status hm_agent_push(hm_ckpt_agent *a, hm_ckpt_job *j) {
  pthread_mutex_lock(&a->mu);
  const int full = a->nq == HM_AGENT_QUEUE;
  if (!full) a->queue[a->nq++] = j;
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
  if (!full) return HM_OK;
  free(j->image);
  free(j);
  return hm_error(HM_ERR_INTERNAL, "checkpoint queue is full");
}

/* Waits until the thread has written everything queued, at most wait_s seconds. */
static hm_status hm_agent_drain(hm_ckpt_agent *a) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += a->wait_s;
  int timed_out = 0;
  pthread_mutex_lock(&a->mu);
  while ((a->nq > 0 || a->busy) && !timed_out) timed_out = pthread_cond_timedwait(&a->cv, &a->mu, &until) == ETIMEDOUT;
  timed_out = timed_out && (a->nq > 0 || a->busy);
  pthread_mutex_unlock(&a->mu);
  if (timed_out)
    return hm_error(HM_ERR_TIMEOUT, "rank %d: writing checkpoint step %" PRId64 " took over %ld s (HETMIX_CKPT_WAIT_S)",
                    a->rank, a->pending, a->wait_s);
  return HM_OK;
}

/* ---------------------------------------------------------------- collective decisions */

static hm_status hm_agent_gather(hm_ckpt_agent *a, hm_ckpt_rec *all) {
  hm_ckpt_rec mine;
  pthread_mutex_lock(&a->mu);
  mine = a->rec;
  pthread_mutex_unlock(&a->mu);
  return hm_comm_allgather(a->world, &mine, all, sizeof mine, HM_UINT8);
}

static hm_ckpt_job *hm_manifest_job(hm_ckpt_agent *a, const char *root, int keep) {
  hm_ckpt_job *j = hm_calloc(1, sizeof *j, "manifest job");
  if (!j) return NULL;
  j->kind = HM_JOB_MANIFEST, j->step = a->pending, j->prune_root = root, j->keep = keep;
  snprintf(j->dir, sizeof j->dir, "%s/step-%08" PRId64, root, a->pending);
  hm_ckpt_manifest *m = &j->manifest;
  m->run_id = a->cfg.run_id, m->step = (uint64_t)a->pending, m->nstages = a->cfg.nstages, m->world = a->W;
  m->nshards = a->n0;
  return j;
}

/* Rank 0's manifests of the outstanding step from the gathered records: shard s's disk file is
 * world rank s's; its peer copy is held by world rank s + 1 (mod W). */
static hm_status hm_agent_complete(hm_ckpt_agent *a, const hm_ckpt_rec *all, uint64_t data_position) {
  const int p = a->n0;
  hm_ckpt_job *d = hm_manifest_job(a, a->dump, a->cfg.keep);
  hm_ckpt_job *m = a->pending_mem ? hm_manifest_job(a, a->peer_dir, 1) : NULL;
  if (!d || (a->pending_mem && !m)) {
    free(d);
    free(m);
    return HM_ERR_NOMEM;
  }
  for (int s = 0; s < p; s++) {
    const hm_ckpt_rec *own = &all[s], *held = &all[(s + 1) % a->W];
    hm_ckpt_shard_info *i = &d->manifest.shards[s];
    *i = a->tab[s];
    i->bytes = own->own_bytes, i->xxh3 = own->own_hash;
    if (m) {
      m->manifest.shards[s] = *i;
      m->manifest.shards[s].bytes = held->peer_bytes, m->manifest.shards[s].xxh3 = held->peer_hash;
    }
  }
  d->manifest.data_position = data_position;
  if (m) m->manifest.data_position = data_position;
  hm_status st = hm_agent_push(a, d);
  if (m && st != HM_OK) free(m);
  else if (m) st = hm_agent_push(a, m);
  return st;
}

/* Everyone's progress; when every shard of the outstanding step is durable, rank 0 queues its
 * manifests and the step is no longer outstanding (the same verdict on every worker). */
static hm_status hm_agent_poll(hm_ckpt_agent *a) {
  hm_ckpt_rec *all = hm_calloc((size_t)a->W, sizeof *all, "checkpoint progress");
  if (!all) return HM_ERR_NOMEM;
  hm_status st = hm_agent_gather(a, all);
  int done = st == HM_OK;
  for (int r = 0; st == HM_OK && r < a->W; r++) {
    if (all[r].failed) {
      st = r == a->rank ? hm_error(HM_ERR_IO, "checkpoint of step %" PRId64 ": %s", a->pending, a->err)
                        : hm_error(HM_ERR_IO, "the checkpoint of step %" PRId64 " failed on rank %d (see its error)",
                                   a->pending, r);
      break;
    }
    if (r < a->n0 && all[r].disk_done < a->pending) done = 0;
    if (a->pending_mem && (r >= 1 && r <= a->n0 ? 1 : r == 0 && a->W == a->n0) &&
        all[r].mem_done < a->pending)
      done = 0;
  }
  if (st == HM_OK && done) {
    if (a->rank == 0) st = hm_agent_complete(a, all, a->pending_pos);
    a->last_disk = a->pending;
    a->pending = 0;
  }
  if (st == HM_ERR_IO) { /* every worker saw the same records: all abandon this step alike, and */
    pthread_mutex_lock(&a->mu); /* the next checkpoint is tried afresh (a disk may have room again) */
    a->rec.failed = 0;
    pthread_mutex_unlock(&a->mu);
    a->pending = 0;
  }
  free(all);
  return st;
}

/* ---------------------------------------------------------------- snapshots */

/* Ring exchange: replica 0's workers send their image to rank + 1; the receivers take it. */
static hm_status hm_agent_exchange(hm_ckpt_agent *a, const void *image, uint64_t bytes, void **got, uint64_t *got_bytes) {
  const int next = (a->rank + 1) % a->W, prev = (a->rank + a->W - 1) % a->W;
  *got = NULL, *got_bytes = 0;
  hm_request_t rs = NULL, rr = NULL;
  HM_TRY(hm_group_start());
  hm_status st = a->sends ? hm_comm_isend(a->ring, &bytes, 1, HM_UINT64, next, &rs) : HM_OK;
  if (st == HM_OK && a->recvs) st = hm_comm_irecv(a->ring, got_bytes, 1, HM_UINT64, prev, &rr);
  hm_status s2 = hm_group_end();
  if (st == HM_OK) st = s2;
  if (rs && (s2 = hm_request_wait(rs)) != HM_OK && st == HM_OK) st = s2;
  if (rr && (s2 = hm_request_wait(rr)) != HM_OK && st == HM_OK) st = s2;
  HM_TRY(st);
  if (a->recvs && (*got_bytes == 0 || *got_bytes > ((uint64_t)1 << 40)))
    return hm_error(HM_ERR_PROTOCOL, "rank %d announced a snapshot of %" PRIu64 " bytes", prev, *got_bytes);
  if (a->recvs && !(*got = hm_malloc((size_t)*got_bytes, "peer snapshot"))) return HM_ERR_NOMEM;
  rs = rr = NULL;
  HM_TRY(hm_group_start());
  st = a->sends ? hm_comm_isend(a->ring, image, (size_t)bytes, HM_UINT8, next, &rs) : HM_OK;
  if (st == HM_OK && a->recvs) st = hm_comm_irecv(a->ring, *got, (size_t)*got_bytes, HM_UINT8, prev, &rr);
  s2 = hm_group_end();
  if (st == HM_OK) st = s2;
  if (rs && (s2 = hm_request_wait(rs)) != HM_OK && st == HM_OK) st = s2;
  if (rr && (s2 = hm_request_wait(rr)) != HM_OK && st == HM_OK) st = s2;
  if (st != HM_OK) {
    free(*got);
    *got = NULL;
  }
  return st;
}

static hm_ckpt_job *hm_shard_job(int64_t step, const char *root, const char *file, void *image, size_t bytes) {
  hm_ckpt_job *j = hm_calloc(1, sizeof *j, "checkpoint job");
  if (!j) return NULL;
  j->kind = HM_JOB_SHARD, j->step = step, j->image = image, j->bytes = bytes;
  snprintf(j->dir, sizeof j->dir, "%s/step-%08" PRId64, root, step);
  hm_strcpy(j->file, sizeof j->file, file);
  return j;
}


/* The memory copies of snapshot `step`, written by the training thread before it goes on: the
 * ring predecessor's image (got) into the run's memory folder, this worker's own (image) into
 * its own/ part. A disk checkpoint's held copy is what its peer manifest names. */
static void hm_agent_memory(hm_ckpt_agent *a, int64_t step, int disk, const void *got, uint64_t got_bytes,
                            const void *image, size_t bytes) {
  const int prev = (a->rank + a->W - 1) % a->W; /* a sender is replica 0: its rank is its shard */
  hm_status st = HM_OK;
  if (got) {
    st = hm_mem_write(a->peer_dir, step, a->tab[prev].file, got, (size_t)got_bytes);
    if (st == HM_OK && disk) {
      const uint64_t h = XXH3_64bits(got, (size_t)got_bytes);
      pthread_mutex_lock(&a->mu);
      a->rec.mem_done = step, a->rec.peer_bytes = got_bytes, a->rec.peer_hash = h;
      pthread_mutex_unlock(&a->mu);
    }
  }
  if (st == HM_OK && image) {
    char own[4300];
    hm_mem_own_dir(a->peer_dir, own, sizeof own);
    st = hm_mem_write(own, step, a->tab[a->rank].file, image, bytes);
  }
  pthread_mutex_lock(&a->mu);
  hm_agent_failed_locked(a, st); /* a memory copy not written, recorded like a failed write */
  /* world rank 0 keeps this snapshot and the one before it (every worker finished writing that
   * one before this step began), the outstanding checkpoint's and the newest complete one's */
  if (st == HM_OK && a->rank == 0) {
    a->prune[0] = a->last_snap, a->prune[1] = a->pending, a->prune[2] = a->last_disk;
    a->prune_due = 1;
    pthread_cond_broadcast(&a->cv);
  }
  pthread_mutex_unlock(&a->mu);
}

/* Starts snapshot `step`: the ring exchange, the memory copies, then (disk) the shard written in
 * the background. */
static hm_status hm_agent_begin(hm_ckpt_agent *a, int64_t step, int disk, void *image, size_t bytes) {
  void *got = NULL;
  uint64_t got_bytes = 0;
  hm_status st = a->ring ? hm_agent_exchange(a, image, bytes, &got, &got_bytes) : HM_OK;
  if (disk) a->pending = step, a->pending_mem = a->ring != NULL;
  if (st == HM_OK && a->ring) hm_agent_memory(a, step, disk, got, got_bytes, a->writer ? image : NULL, bytes);
  free(got);
  if (st == HM_OK && disk && a->writer) {
    hm_ckpt_job *j = hm_shard_job(step, a->dump, a->tab[a->rank].file, image, bytes);
    image = NULL;
    st = j ? hm_agent_push(a, j) : HM_ERR_NOMEM;
  }
  free(image);
  a->last_snap = step;
  return st;
}

hm_status hm_ckpt_agent_step(hm_ckpt_agent *a, int64_t done, int kind, uint64_t data_position, void *image,
                             size_t bytes) {
  const int checkpoint = kind == HM_SNAP_DISK, memory = kind == HM_SNAP_MEMORY && a->ring;
  if ((checkpoint || memory) && a->writer && !image)
    return hm_error(HM_ERR_INTERNAL, "snapshot of step %" PRId64 ": no image", done);
  if (!(checkpoint || memory) || !a->writer) {
    free(image);
    image = NULL;
  }
  if (a->pending) {
    if (checkpoint) HM_TRY(hm_agent_drain(a)); /* the previous one completes first */
    HM_TRY(hm_agent_poll(a));
    if (checkpoint && a->pending) {
      free(image);
      return hm_error(HM_ERR_INTERNAL, "checkpoint step %" PRId64 " is incomplete after every worker waited", a->pending);
    }
  }
  if (memory) return hm_agent_begin(a, done, 0, image, bytes);
  if (!checkpoint) return HM_OK;
  a->pending_pos = data_position;
  return hm_agent_begin(a, done, 1, image, bytes);
}

hm_status hm_ckpt_agent_finish(hm_ckpt_agent *a) {
  if (a->pending) {
    HM_TRY(hm_agent_drain(a));
    HM_TRY(hm_agent_poll(a));
    if (a->pending) return hm_error(HM_ERR_INTERNAL, "checkpoint step %" PRId64 " is incomplete at the end", a->pending);
  }
  HM_TRY(hm_agent_drain(a)); /* rank 0: the manifests */
  pthread_mutex_lock(&a->mu);
  const int failed = a->rec.failed;
  pthread_mutex_unlock(&a->mu);
  return failed ? hm_error(HM_ERR_IO, "rank %d: checkpoint: %s", a->rank, a->err) : HM_OK;
}

hm_status hm_ckpt_agent_open(hm_comm_t world, const hm_ckpt_agent_config *cfg, hm_ckpt_agent **out) {
  *out = NULL;
  hm_ckpt_agent *a = hm_calloc(1, sizeof *a, "checkpoint agent");
  if (!a) return HM_ERR_NOMEM;
  a->cfg = *cfg;
  a->world = world;
  a->rank = hm_comm_rank(world), a->W = hm_comm_size(world);
  a->writer = cfg->replica == 0;
  a->rec.disk_done = a->rec.mem_done = -1;
  a->n0 = cfg->nshards > 0 ? cfg->nshards : cfg->nstages;
  a->tab = hm_calloc((size_t)a->n0, sizeof *a->tab, "checkpoint shard table");
  if (!a->tab) {
    free(a);
    return HM_ERR_NOMEM;
  }
  for (int s = 0; s < a->n0; s++) {
    if (cfg->nshards > 0) a->tab[s] = cfg->shards[s];
    else a->tab[s].stage = s, a->tab[s].tp_size = 1;
    if (!a->tab[s].file[0]) hm_ckpt_shard_name(a->tab[s].stage, a->tab[s].tp_rank, a->tab[s].tp_size, a->tab[s].file, sizeof a->tab[s].file);
  }
  hm_strcpy(a->dump, sizeof a->dump, cfg->dump_dir);
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  hm_status st = hm_env_long("HETMIX_CKPT_WAIT_S", 600, 1, 86400, &a->wait_s);
  if (st == HM_OK && cfg->peer_root && a->W > 1) {
    hm_ckpt_peer_dir(cfg->peer_root, cfg->run_id, a->peer_dir, sizeof a->peer_dir);
    a->sends = a->writer;
    a->recvs = (a->rank >= 1 && a->rank <= a->n0) || (a->rank == 0 && a->W == a->n0);
    st = hm_comm_split(world, 0, a->rank, &a->ring, NULL);
  }
  if (st == HM_OK && pthread_create(&a->thread, NULL, hm_agent_main, a) != 0)
    st = hm_error(HM_ERR_INTERNAL, "cannot start the checkpoint writer thread");
  a->started = st == HM_OK;
  if (st != HM_OK) {
    hm_ckpt_agent_close(a, 0);
    return st;
  }
  *out = a;
  return HM_OK;
}

void hm_ckpt_agent_close(hm_ckpt_agent *a, int remove_peer_copies) {
  if (!a) return;
  if (a->started) {
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
  }
  for (int i = 0; i < a->nq; i++) {
    free(a->queue[i]->image);
    free(a->queue[i]);
  }
  if (remove_peer_copies && a->rank == 0 && a->peer_dir[0]) hm_mem_remove_run(a->peer_dir);
  if (a->ring) hm_comm_destroy(a->ring);
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->cv);
  free(a->tab);
  free(a);
}
