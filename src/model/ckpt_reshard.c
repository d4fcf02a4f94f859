/* Re-sharding a pipeline checkpoint to another stage layout (docs/runtime.md, "Elastic re-plan"):
 * a stage's tensor-parallel shards are merged (hm_ckpt_merge_tp), the stages joined into the
 * whole model (hm_ckpt_merge_stage_files), then each new stage's shard is cut out of it by layer
 * (params and both AdamW moments, with the step, data position, seed and run identity of the
 * checkpoint) and split into the new layout's tensor-parallel shards (hm_ckpt_split_tp). Tensors are copied byte for byte, so a re-shard to the
 * same layer ranges gives back the same shards' tensors bitwise. Not here: the format
 * (checkpoint.c), the manifest (ckpt_manifest.c). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

/* The model layer (0..L+1) of a tensor name without its "param/" (etc.) prefix. */
static int hm_name_layer(const char *name, const hm_spec_model_config *c) {
  if (name[0] == 'h' && isdigit((unsigned char)name[1])) return atoi(name + 1) + 1; /* "h<block>." */
  if (strcmp(name, "wte") == 0 || strcmp(name, "wpe") == 0) return 0;
  return (int)c->L + 1; /* final norm, untied output embedding */
}

/* Whether the stage of layers [first,last) holds the tensor: by its layer, and the head's own
 * copy of a tied embedding in a last stage without the embedding layer. */
static int hm_stage_holds(const char *name, int first, int last, const hm_spec_model_config *c) {
  const int l = hm_name_layer(name, c);
  if (l >= first && l < last) return 1;
  return c->tied_embeddings && first > 0 && last == hm_model_num_layers(c) && strcmp(name, "wte") == 0;
}

hm_status hm_ckpt_cut_stage(const hm_ckpt *whole, const hm_ckpt_meta *layout, const char *out) {
  const hm_ckpt_meta *w = &whole->meta;
  const int L2 = hm_model_num_layers(&w->config);
  if (w->layer_first != 0 || w->layer_last != L2)
    return hm_error(HM_ERR_INVALID_ARG, "re-shard: the source holds layers [%d,%d), not the whole model [0,%d)",
                    w->layer_first, w->layer_last, L2);
  if (layout->layer_first < 0 || layout->layer_first >= layout->layer_last || layout->layer_last > L2)
    return hm_error(HM_ERR_INVALID_ARG, "re-shard: layers [%d,%d) are not a stage of a model with %d layers",
                    layout->layer_first, layout->layer_last, L2);
  hm_ckpt_tensor *t = hm_calloc((size_t)whole->n_tensors, sizeof *t, "re-shard tensors");
  if (!t) return HM_ERR_NOMEM;
  int n = 0;
  for (int i = 0; i < whole->n_tensors; i++) {
    const char *slash = strchr(whole->tensors[i].name, '/');
    const char *base = slash ? slash + 1 : whole->tensors[i].name;
    if (hm_stage_holds(base, layout->layer_first, layout->layer_last, &w->config)) t[n++] = whole->tensors[i];
  }
  hm_ckpt_meta m = *w;
  m.layer_first = layout->layer_first, m.layer_last = layout->layer_last;
  m.stage_index = layout->stage_index, m.stage_count = layout->stage_count;
  m.micro_batches = layout->micro_batches, m.batch = layout->batch;
  m.tp_rank = 0, m.tp_size = 1;
  hm_status st = hm_ckpt_write(out, &m, t, n);
  free(t);
  return st;
}

/* New stage s (layers lay) into out_dir: one file, or cut whole then split into T shards;
 * their manifest entries from man->shards[*n] on. */
static hm_status hm_write_stage(const hm_ckpt *whole, const hm_ckpt_meta *lay, int T, const char *out_dir,
                                hm_ckpt_manifest *man, int *n) {
  const int s = lay->stage_index;
  if (*n + T > HM_CKPT_MAX_SHARDS)
    return hm_error(HM_ERR_INVALID_ARG, "re-shard: more than %d shards in the new layout", HM_CKPT_MAX_SHARDS);
  char cut[4200], paths[64][4300];
  const char *pp[64];
  snprintf(cut, sizeof cut, "%s/stage%d%s", out_dir, s, T > 1 ? ".unsplit.hmc" : ".hmc");
  HM_TRY(hm_ckpt_cut_stage(whole, lay, cut));
  for (int r = 0; r < T; r++) {
    hm_ckpt_shard_info *si = &man->shards[*n + r];
    si->stage = s, si->tp_rank = r, si->tp_size = T;
    hm_ckpt_shard_name(s, r, T, si->file, sizeof si->file);
    snprintf(paths[r], sizeof paths[r], "%s/%s", out_dir, si->file);
    pp[r] = paths[r];
  }
  hm_status st = T > 1 ? hm_ckpt_split_tp(cut, T, pp) : HM_OK;
  if (T > 1) unlink(cut);
  for (int r = 0; r < T && st == HM_OK; r++) st = hm_ckpt_file_hash(paths[r], &man->shards[*n + r].xxh3, &man->shards[*n + r].bytes);
  *n += T;
  return st;
}

/* Cuts every stage of the new layout out of the whole model at whole_path into out_dir and
 * fills the manifest's shard list. */
static hm_status hm_cut_all(const char *whole_path, const hm_reshard_layout *to, const char *out_dir,
                            hm_ckpt_manifest *man) {
  hm_ckpt whole;
  HM_TRY(hm_ckpt_read(whole_path, &whole));
  const hm_ckpt_meta *w = &whole.meta;
  hm_status st = HM_OK;
  const uint64_t per_step = (uint64_t)(w->micro_batches ? w->micro_batches : 1) * (uint64_t)w->batch;
  if (per_step != (uint64_t)to->micro_batches * (uint64_t)to->batch)
    st = hm_error(HM_ERR_INVALID_ARG, "re-shard: the checkpoint took %llu sequences per step (%d x %d), the new "
                  "layout %d x %d: the global batch must stay", (unsigned long long)per_step, w->micro_batches,
                  w->batch, to->micro_batches, to->batch);
  man->run_id = w->run_id, man->step = w->step, man->data_position = w->data_position;
  man->nstages = to->nstages, man->world = to->world;
  int n = 0;
  for (int s = 0; s < to->nstages && st == HM_OK; s++) {
    hm_ckpt_meta lay = {0};
    lay.layer_first = to->bounds[s], lay.layer_last = to->bounds[s + 1];
    lay.stage_index = s, lay.stage_count = to->nstages;
    lay.micro_batches = to->micro_batches, lay.batch = to->batch;
    const int T = to->tp[s] > 1 ? to->tp[s] : 1;
    if (T > 64) st = hm_error(HM_ERR_INVALID_ARG, "re-shard: stage %d split %d ways (at most 64)", s, T);
    if (st == HM_OK) st = hm_write_stage(&whole, &lay, T, out_dir, man, &n);
  }
  man->nshards = n;
  hm_ckpt_free(&whole);
  return st;
}

/* The unsplit file of source stage s into path: its own shard, or its tensor-parallel shards
 * merged into "<out_dir>/stage<s>.merged.hmc" (*merged set: the caller removes it). */
static hm_status hm_source_stage(const hm_ckpt_manifest *man, const char *dir, const char *out_dir, int s, char *path,
                                 size_t cap, int *merged) {
  *merged = 0;
  const int k0 = hm_ckpt_manifest_find(man, s, 0);
  if (k0 < 0) return hm_error(HM_ERR_CORRUPT, "re-shard of %s: its manifest lists no shard of stage %d", dir, s);
  const int T = man->shards[k0].tp_size > 1 ? man->shards[k0].tp_size : 1;
  if (T == 1) return snprintf(path, cap, "%s/%s", dir, man->shards[k0].file) < (int)cap ? HM_OK : HM_ERR_INVALID_ARG;
  if (T > 64) return hm_error(HM_ERR_CORRUPT, "re-shard of %s: stage %d split %d ways (at most 64)", dir, s, T);
  char paths[64][4300];
  const char *pp[64];
  for (int r = 0; r < T; r++) {
    const int k = hm_ckpt_manifest_find(man, s, r);
    if (k < 0) return hm_error(HM_ERR_CORRUPT, "re-shard of %s: no shard of stage %d's rank %d", dir, s, r);
    snprintf(paths[r], sizeof paths[r], "%s/%s", dir, man->shards[k].file);
    pp[r] = paths[r];
  }
  snprintf(path, cap, "%s/stage%d.merged.hmc", out_dir, s);
  *merged = 1;
  return hm_ckpt_merge_tp(pp, T, path);
}

/* Joins the source's stages (tensor-parallel ones merged first) into the whole model at whole. */
static hm_status hm_join_source(const hm_ckpt_manifest *man, const char *dir, const char *out_dir, const char *whole) {
  const int p = man->nstages;
  char(*paths)[4300] = hm_calloc((size_t)p, sizeof *paths, "stage paths");
  const char **pp = hm_calloc((size_t)p, sizeof *pp, "stage paths");
  int *merged = hm_calloc((size_t)p, sizeof *merged, "merged stages");
  hm_status st = paths && pp && merged ? HM_OK : HM_ERR_NOMEM;
  for (int s = 0; s < p && st == HM_OK; s++) {
    st = hm_source_stage(man, dir, out_dir, s, paths[s], sizeof paths[s], &merged[s]);
    pp[s] = paths[s];
  }
  if (st == HM_OK) st = hm_ckpt_merge_stage_files(pp, p, dir, whole);
  for (int s = 0; merged && s < p; s++)
    if (merged[s]) unlink(paths[s]);
  free(paths);
  free(pp);
  free(merged);
  return st;
}

hm_status hm_ckpt_reshard(const char *src, const hm_reshard_layout *to, const char *out_dir) {
  if (!to || to->nstages < 1 || to->nstages > HM_CKPT_MAX_SHARDS || to->micro_batches < 1 || to->batch < 1)
    return hm_error(HM_ERR_INVALID_ARG, "re-shard of %s: a layout needs 1..%d stages, micro-batches and a batch", src,
                    HM_CKPT_MAX_SHARDS);
  hm_ckpt_manifest *man = hm_calloc(1, sizeof *man, "manifest");
  if (!man) return HM_ERR_NOMEM;
  char dir[4200], whole[4300];
  hm_status st = hm_ckpt_manifest_read(src, man, dir, sizeof dir);
  if (st == HM_OK) st = hm_ckpt_manifest_verify(dir, man);
  snprintf(whole, sizeof whole, "%s/whole.hmc", out_dir);
  if (st == HM_OK) st = hm_make_dirs(out_dir, 0755, HM_DIR_OUTPUT);
  if (st == HM_OK) st = hm_join_source(man, dir, out_dir, whole);
  if (st == HM_OK) {
    memset(man, 0, sizeof *man);
    st = hm_cut_all(whole, to, out_dir, man);
  }
  unlink(whole);
  if (st == HM_OK) st = hm_ckpt_manifest_write(out_dir, man); /* last: the folder counts from now on */
  free(man);
  return st;
}
