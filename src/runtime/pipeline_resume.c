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
static hm_status hm_manifest_shard(const hm_ckpt_manifest *m, const char *dir, int stage, char *path, size_t cap) {
  const hm_ckpt_shard_info *i = &m->shards[stage];
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

hm_status hm_pipe_shard_path(const char *resume, int stage, int nstages, char *path, size_t cap) {
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
    st = hm_manifest_shard(m, dir, stage, path, cap);
  }
  free(m);
  return st;
}

static void hm_shard_read(const hm_pipeline_options *o, int stage, hm_shard_id *id) {
  memset(id, 0, sizeof *id);
  id->stage = stage;
  if (hm_pipe_shard_path(o->train->resume, stage, o->nstages, id->path, sizeof id->path) == HM_OK &&
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
static hm_status hm_shards_check(const hm_pipeline_options *o, int M, const hm_shard_id *all, hm_shard_id *ids) {
  for (int s = 0; s < o->nstages; s++) ids[s] = all[hm_pipeline_rank_of(o, 0, s, 0)];
  for (int s = 0; s < o->nstages; s++)
    if (!ids[s].ok) return hm_error(HM_ERR_INVALID_ARG, "resume: stage %d: %s", s, ids[s].err);
  for (int s = 0; s < o->nstages; s++) HM_TRY(hm_shard_fits(o, M, &ids[s]));
  return hm_shards_agree(o, ids);
}

hm_status hm_pipe_run_identity(hm_comm_t world, const hm_pipeline_options *o, int stage, int M, uint64_t *run_id,
                               char *shard, size_t cap) {
  uint64_t id = 0;
  if (shard && cap) shard[0] = '\0';
  if (o->train->resume) {
    hm_shard_id mine;
    hm_shard_read(o, stage, &mine);
    if (shard) hm_strcpy(shard, cap, mine.path);
    hm_shard_id *all = hm_calloc((size_t)hm_comm_size(world), sizeof *all, "resume: stage checkpoint headers");
    if (!all) return HM_ERR_NOMEM;
    hm_shard_id *ids = hm_calloc((size_t)o->nstages, sizeof *ids, "resume: stage checkpoint headers");
    hm_status st = ids ? hm_comm_allgather(world, &mine, all, sizeof mine, HM_UINT8) : HM_ERR_NOMEM;
    if (st == HM_OK) st = hm_shards_check(o, M, all, ids);
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
