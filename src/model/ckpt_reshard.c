/* Re-sharding a pipeline checkpoint to another stage layout (docs/runtime.md, "Elastic re-plan"):
 * the stage shards are joined into the whole model (hm_ckpt_merge_stages), then each new stage's
 * shard is cut out of it by layer: params and both AdamW moments, with the step, data position,
 * seed and run identity of the checkpoint. Tensors are copied byte for byte, so a re-shard to the
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
  for (int s = 0; s < to->nstages && st == HM_OK; s++) {
    hm_ckpt_meta lay = {0};
    lay.layer_first = to->bounds[s], lay.layer_last = to->bounds[s + 1];
    lay.stage_index = s, lay.stage_count = to->nstages;
    lay.micro_batches = to->micro_batches, lay.batch = to->batch;
    hm_ckpt_shard_info *si = &man->shards[s];
    si->stage = s;
    snprintf(si->file, sizeof si->file, "stage%d.hmc", s);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", out_dir, si->file);
    st = hm_ckpt_cut_stage(&whole, &lay, path);
    if (st == HM_OK) st = hm_ckpt_file_hash(path, &si->xxh3, &si->bytes);
  }
  hm_ckpt_free(&whole);
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
  if (st == HM_OK && hm_ckpt_manifest_nshards(man) != man->nstages)
    st = hm_error(HM_ERR_UNSUPPORTED, "re-shard of %s: its stages are tensor-parallel shards (%d files for %d stages); "
                  "only unsplit stages are re-sharded", src, hm_ckpt_manifest_nshards(man), man->nstages);
  snprintf(whole, sizeof whole, "%s/whole.hmc", out_dir);
  if (st == HM_OK) st = hm_make_dirs(out_dir, 0755, HM_DIR_OUTPUT);
  if (st == HM_OK) st = hm_ckpt_merge_stages(dir, man->nstages, whole);
  if (st == HM_OK) {
    memset(man, 0, sizeof *man);
    st = hm_cut_all(whole, to, out_dir, man);
  }
  unlink(whole);
  if (st == HM_OK) st = hm_ckpt_manifest_write(out_dir, man); /* last: the folder counts from now on */
  free(man);
  return st;
}
