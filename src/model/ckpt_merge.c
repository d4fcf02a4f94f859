/* Joining a pipeline's stage checkpoints into one checkpoint of the whole model, e.g. for
 * `hetmix sample` after `hetmix train --cluster`. Not here: the format (checkpoint.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/model.h"
#include "util/util.h"

/* Joins replica 0's stage checkpoints into one checkpoint of the whole model (the head's copy of
 * the tied embedding is dropped: it equals the first stage's), for `hetmix sample`. */
hm_status hm_ckpt_merge_stages(const char *dir, int nstages, const char *out) {
  if (nstages < 1 || nstages > HM_CKPT_MAX_SHARDS) return hm_error(HM_ERR_INVALID_ARG, "merging %s: %d stages", dir, nstages);
  char(*paths)[4200] = hm_calloc((size_t)nstages, sizeof *paths, "stage paths");
  const char **pp = hm_calloc((size_t)nstages, sizeof *pp, "stage paths");
  hm_status st = paths && pp ? HM_OK : HM_ERR_NOMEM;
  for (int s = 0; s < nstages && st == HM_OK; s++) {
    snprintf(paths[s], sizeof paths[s], "%s/stage%d.hmc", dir, s);
    pp[s] = paths[s];
  }
  if (st == HM_OK) st = hm_ckpt_merge_stage_files(pp, nstages, dir, out);
  free(paths);
  free(pp);
  return st;
}

hm_status hm_ckpt_merge_stage_files(const char *const *paths, int nstages, const char *dir, const char *out) {
  if (nstages < 1) return hm_error(HM_ERR_INVALID_ARG, "merging %s: %d stages", dir, nstages);
  hm_ckpt *ck = hm_calloc((size_t)nstages, sizeof *ck, "stage checkpoints");
  if (!ck) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  int total = 0;
  for (int s = 0; s < nstages && st == HM_OK; s++) {
    st = hm_ckpt_read(paths[s], &ck[s]);
    total += st == HM_OK ? ck[s].n_tensors : 0;
    if (st == HM_OK && (ck[s].meta.elem_size == 8) != (ck[0].meta.elem_size == 8))
      st = hm_error(HM_ERR_UNSUPPORTED, "merging %s: stage 0 holds %d-byte and stage %d %d-byte elements (a run that "
                    "mixes f64 and f32 stages has no one-precision whole model)", dir,
                    ck[0].meta.elem_size == 8 ? 8 : 4, s, ck[s].meta.elem_size == 8 ? 8 : 4);
  }
  hm_ckpt_tensor *all = st == HM_OK ? hm_calloc((size_t)total, sizeof *all, "merged tensors") : NULL;
  if (st == HM_OK && !all) st = HM_ERR_NOMEM;
  int n = 0;
  /* checkpoint order: params of every stage, then adam_m, then adam_v, as one stage writes them */
  static const char *const groups[] = {"param/", "adam_m/", "adam_v/"};
  for (int g = 0; g < 3 && st == HM_OK; g++)
    for (int s = 0; s < nstages; s++)
      for (int i = 0; i < ck[s].n_tensors; i++) {
        const hm_ckpt_tensor *t = &ck[s].tensors[i];
        if (strncmp(t->name, groups[g], strlen(groups[g])) != 0) continue;
        if (s > 0 && strcmp(t->name + strlen(groups[g]), "wte") == 0) continue; /* the head's copy */
        all[n++] = *t;
      }
  if (st == HM_OK) {
    hm_ckpt_meta m = ck[nstages - 1].meta;
    m.layer_first = 0;
    m.layer_last = hm_model_num_layers(&m.config);
    st = hm_ckpt_write(out, &m, all, n);
  }
  free(all);
  for (int s = 0; s < nstages; s++) hm_ckpt_free(&ck[s]);
  free(ck);
  return st;
}
