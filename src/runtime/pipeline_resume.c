/* Run identity of a pipeline job, and the check that a resume's stage checkpoints are one run's
 * state at one step (pipeline_resume.h). Shards mixed from two dumps (say one of step 5 and one
 * of step 10) would otherwise each load, train a model no run ever had, and end in a worker
 * waiting on a peer that already finished. */
#include "runtime/pipeline_resume.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ckpt_agent.h"
#include "util/util.h"

/* What a worker learned about its stage's checkpoint, exchanged as bytes. */
typedef struct hm_shard_id {
  int32_t ok, stage;
  hm_ckpt_meta meta;
  char path[1024];
  char err[1024];
} hm_shard_id;

/* The file of this stage's shard in the manifest's folder, when its size and checksum are the
 * manifest's; else the peer copy of the same step (the peer folder of the run, in this host's
 * memory), when that one's are. */
static hm_status hm_manifest_shard(const hm_ckpt_manifest *m, const char *dir, int k, char *path, size_t cap) {
  const hm_ckpt_shard_info *i = &m->shards[k];
  snprintf(path, cap, "%s/%s", dir, i->file);
  uint64_t h = 0, n = 0;
  hm_status st = hm_ckpt_file_hash(path, &h, &n);
  if (st == HM_OK && h == i->xxh3 && n == i->bytes) return HM_OK;
  char why[600], peer[2200], copy[2400];
  snprintf(why, sizeof why, "%s", st == HM_OK ? "its size or checksum is not the manifest's" : hm_last_error());
  const char *root = hm_ckpt_peer_root();
  if (!root) return hm_error(HM_ERR_CORRUPT, "resume: shard %s: %s, and no peer copies are kept (HETMIX_PEER_DIR)", path, why);
  hm_ckpt_peer_dir(root, m->run_id, peer, sizeof peer);
  snprintf(copy, sizeof copy, "%s/step-%08llu/%s", peer, (unsigned long long)m->step, i->file);
  if (hm_ckpt_file_hash(copy, &h, &n) == HM_OK && h == i->xxh3 && n == i->bytes) {
    hm_strcpy(path, cap, copy);
    return HM_OK;
  }
  return hm_error(HM_ERR_CORRUPT, "resume: shard %s: %s, and no peer copy at %s matches the manifest", path, why, copy);
}

/* The index of tensor-parallel rank tp_rank's shard of stage (split tp ways) in m: its own, or
 * the unsplit stage's. */
static hm_status hm_manifest_pick(const hm_ckpt_manifest *m, const char *resume, int stage, int tp_rank, int tp, int *k) {
  const int whole = hm_ckpt_manifest_find(m, stage, 0);
  const int size = whole >= 0 && m->shards[whole].tp_size > 1 ? m->shards[whole].tp_size : 1;
  if (whole < 0) return hm_error(HM_ERR_CORRUPT, "resume from %s: its manifest lists no shard of stage %d", resume, stage);
  if (size == 1) return *k = whole, HM_OK;
  if (size != (tp > 1 ? tp : 1))
    return hm_error(HM_ERR_INVALID_ARG, "resume from %s: stage %d is split %d ways (tensor-parallel) in the checkpoint, "
                    "%d in this run (resume with the layout of the checkpoint)", resume, stage, size, tp > 1 ? tp : 1);
  *k = hm_ckpt_manifest_find(m, stage, tp_rank);
  return HM_OK;
}

hm_status hm_pipe_shard_path(const char *resume, int stage, int tp_rank, int tp, int nstages, char *path, size_t cap) {
  hm_ckpt_manifest *m = hm_malloc(sizeof *m, "manifest");
  if (!m) return HM_ERR_NOMEM;
  char dir[4200];
  hm_status st = hm_ckpt_manifest_read(resume, m, dir, sizeof dir);
  if (st == HM_ERR_NOT_FOUND) { /* a folder of stage files without a manifest (--dump) */
    st = snprintf(path, cap, "%s/stage%d.hmc", resume, stage) < (int)cap
             ? HM_OK : hm_error(HM_ERR_INVALID_ARG, "resume path too long: %s", resume);
  } else if (st == HM_OK && m->nstages != nstages) {
    st = hm_error(HM_ERR_INVALID_ARG, "resume from %s: its manifest names %d stages, this run has %d", resume, m->nstages,
                  nstages);
  } else if (st == HM_OK) {
    int k = -1;
    st = hm_manifest_pick(m, resume, stage, tp_rank, tp, &k);
    if (st == HM_OK) st = hm_manifest_shard(m, dir, k, path, cap);
  }
  free(m);
  return st;
}

hm_status hm_pipe_load_stage(hm_stage *st, hm_device *dev, const char *path, int tp, int tp_rank, hm_ckpt_meta *meta) {
  hm_ckpt_meta h;
  HM_TRY(hm_ckpt_read_meta(path, &h));
  if (h.tp_size > 1 && (h.tp_size != tp || h.tp_rank != tp_rank))
    return hm_error(HM_ERR_INVALID_ARG, "%s is tensor-parallel shard %d of %d; this worker is rank %d of %d", path,
                    h.tp_rank, h.tp_size, tp_rank, tp > 1 ? tp : 1);
  if (h.tp_size <= 1 && tp > 1) return hm_stage_load(st, path, meta); /* cuts this rank's part out */
  return hm_stage_load_shard(st, dev, path, meta);
}

hm_status hm_pipe_ckpt_shards(const hm_pipeline_options *o, hm_ckpt_shard_info **tab, int *n) {
  *n = 0;
  for (int s = 0; s < o->nstages; s++) *n += o->tp[0][s] > 1 ? o->tp[0][s] : 1;
  if (*n > HM_CKPT_MAX_SHARDS)
    return hm_error(HM_ERR_UNSUPPORTED, "periodic checkpoints: replica 0 has %d workers, a manifest lists at most %d", *n,
                    HM_CKPT_MAX_SHARDS);
  if (!(*tab = hm_calloc((size_t)*n, sizeof **tab, "checkpoint shard table"))) return HM_ERR_NOMEM;
  int k = 0;
  for (int s = 0; s < o->nstages; s++) {
    const int tp = o->tp[0][s] > 1 ? o->tp[0][s] : 1;
    for (int r = 0; r < tp; r++, k++) {
      hm_ckpt_shard_info *i = &(*tab)[k];
      i->stage = s, i->tp_rank = r, i->tp_size = tp;
      hm_ckpt_shard_name(s, r, tp, i->file, sizeof i->file);
    }
  }
  return HM_OK;
}

static void hm_shard_read(const hm_pipeline_options *o, int rank, hm_shard_id *id) {
  memset(id, 0, sizeof *id);
  int replica = 0, stage = 0, tp_rank = 0;
  hm_pipeline_locate(o, rank, &replica, &stage, &tp_rank);
  const int tp = o->tp[replica][stage];
  id->stage = stage;
  if (hm_pipe_shard_path(o->train->resume, stage, tp_rank, tp, o->nstages, id->path, sizeof id->path) == HM_OK &&
      hm_ckpt_read_meta(id->path, &id->meta) == HM_OK)
    id->ok = 1;
  else
    hm_strcpy(id->err, sizeof id->err, hm_last_error());
}

/* A shard that does not fit this run's layout or model: HM_ERR_INVALID_ARG, else HM_OK. */
static hm_status hm_shard_fits(const hm_pipeline_options *o, int M, const hm_shard_id *id) {
  const hm_ckpt_meta *m = &id->meta;
  const int s = id->stage, p = o->nstages;
  char a[128], b[128];
  if (!hm_model_config_same(&m->config, &o->train->config))
    return hm_error(HM_ERR_INVALID_ARG, "%s holds model %s, this run trains %s (%s)", id->path,
                    hm_model_config_str(&m->config, a, sizeof a), o->train->model_name,
                    hm_model_config_str(&o->train->config, b, sizeof b));
  if ((m->stage_count && (m->stage_count != p || m->stage_index != s)) || m->layer_first != o->stage_layers[s] ||
      m->layer_last != o->stage_layers[s + 1])
    return hm_error(HM_ERR_INVALID_ARG, "%s is stage %d of %d with layers [%d,%d); this run's stage %d of %d has "
                    "layers [%d,%d) (resume with the layout of the dump)", id->path, m->stage_index, m->stage_count,
                    m->layer_first, m->layer_last, s, p, o->stage_layers[s], o->stage_layers[s + 1]);
  if (m->micro_batches && m->micro_batches != M)
    return hm_error(HM_ERR_INVALID_ARG, "%s was trained with %d micro-batches per step, this run has %d", id->path,
                    m->micro_batches, M);
  return HM_OK;
}

/* Appends "name" to the list of differences when a and b differ. */
static void hm_note(char *diff, size_t cap, int differs, const char *name) {
  if (!differs) return;
  size_t n = strlen(diff);
  snprintf(diff + n, cap - n, "%s%s", n ? ", " : "", name);
}

/* Every shard against the first: one run, one step, one data position. */
static hm_status hm_shards_agree(const hm_pipeline_options *o, const hm_shard_id *ids) {
  const hm_ckpt_meta *a = &ids[0].meta;
  for (int s = 1; s < o->nstages; s++) {
    const hm_ckpt_meta *b = &ids[s].meta;
    char diff[128] = "";
    hm_note(diff, sizeof diff, a->step != b->step, "step");
    hm_note(diff, sizeof diff, a->run_id != b->run_id, "run");
    hm_note(diff, sizeof diff, a->data_position != b->data_position, "data position");
    hm_note(diff, sizeof diff, a->data_seed != b->data_seed, "seed");
    hm_note(diff, sizeof diff, a->batch != b->batch || a->seq_len != b->seq_len, "batch shape");
    if (!diff[0]) continue;
    return hm_error(HM_ERR_INVALID_ARG, "resume from %s: its stage checkpoints are not one run at one step: %s is step "
                    "%llu of run %016llx (data position %llu), %s is step %llu of run %016llx (data position %llu); "
                    "they differ in %s. Resume from one --dump of the whole job",
                    o->train->resume, ids[0].path, (unsigned long long)a->step, (unsigned long long)a->run_id,
                    (unsigned long long)a->data_position, ids[s].path, (unsigned long long)b->step,
                    (unsigned long long)b->run_id, (unsigned long long)b->data_position, diff);
  }
  return HM_OK;
}

/* The same verdict on every worker: from the same gathered records of replica 0's stages (tensor-
 * parallel rank 0 of each), in stage order. */
static hm_status hm_shards_check(const hm_pipeline_options *o, int M, int W, const hm_shard_id *all, hm_shard_id *ids) {
  for (int s = 0; s < o->nstages; s++) ids[s] = all[hm_pipeline_rank_of(o, 0, s, 0)];
  for (int s = 0; s < o->nstages; s++)
    if (!ids[s].ok) return hm_error(HM_ERR_INVALID_ARG, "resume: stage %d: %s", s, ids[s].err);
  for (int s = 0; s < o->nstages; s++) HM_TRY(hm_shard_fits(o, M, &ids[s]));
  HM_TRY(hm_shards_agree(o, ids));
  /* every other worker's shard (tensor-parallel ranks, other replicas) is of the same run and step */
  for (int r = 0; r < W; r++) {
    const hm_shard_id *x = &all[r];
    if (!x->ok) return hm_error(HM_ERR_INVALID_ARG, "resume: stage %d (world rank %d): %s", x->stage, r, x->err);
    if (x->meta.step != ids[0].meta.step || x->meta.run_id != ids[0].meta.run_id ||
        x->meta.data_position != ids[0].meta.data_position)
      return hm_error(HM_ERR_INVALID_ARG, "resume from %s: %s is step %llu of run %016llx, %s step %llu of run %016llx: "
                      "not one run at one step", o->train->resume, x->path, (unsigned long long)x->meta.step,
                      (unsigned long long)x->meta.run_id, ids[0].path, (unsigned long long)ids[0].meta.step,
                      (unsigned long long)ids[0].meta.run_id);
  }
  return HM_OK;
}

hm_status hm_pipe_run_identity(hm_comm_t world, const hm_pipeline_options *o, int stage, int M, uint64_t *run_id,
                               char *shard, size_t cap) {
  uint64_t id = 0;
  if (shard && cap) shard[0] = '\0';
  if (o->train->resume) {
    hm_shard_id mine;
    (void)stage; /* the world rank says which stage and tensor-parallel rank */
    hm_shard_read(o, hm_comm_rank(world), &mine);
    if (shard) hm_strcpy(shard, cap, mine.path);
    hm_shard_id *all = hm_calloc((size_t)hm_comm_size(world), sizeof *all, "resume: stage checkpoint headers");
    if (!all) return HM_ERR_NOMEM;
    hm_shard_id *ids = hm_calloc((size_t)o->nstages, sizeof *ids, "resume: stage checkpoint headers");
    hm_status st = ids ? hm_comm_allgather(world, &mine, all, sizeof mine, HM_UINT8) : HM_ERR_NOMEM;
    if (st == HM_OK) st = hm_shards_check(o, M, hm_comm_size(world), all, ids);
    free(ids);
    id = all[0].meta.run_id; /* a resume continues the run it resumes */
    free(all);
    HM_TRY(st);
  }
  /* a fresh run, or one resumed from files without an identity: world rank 0's new one */
  if (id == 0 && hm_comm_rank(world) == 0) id = hm_ckpt_new_run_id();
  uint64_t shared = 0;
  HM_TRY(hm_comm_broadcast(world, &id, &shared, 1, HM_UINT64, 0));
  *run_id = shared;
  return HM_OK;
}
