/* A stage's exact state as a checkpoint shard: params and AdamW moments copied from the device
 * in its own element type (float64 for f64 stages, so a resume continues bitwise), encoded as a
 * .hmc image in host memory; and the loader of such shards. The caller fills meta's config and
 * layer range (the stage's own). Not here: writing the image (the runtime's checkpoint agent),
 * manifests (ckpt_manifest.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "util/util.h"

static const char *const hm_shard_kinds[3] = {"param", "adam_m", "adam_v"};

static void *hm_shard_buffer(hm_stage *s, int kind) {
  return kind == 0 ? hm_stage_params(s) : kind == 1 ? hm_stage_adam_m(s) : hm_stage_adam_v(s);
}

hm_status hm_stage_snapshot(hm_stage *s, hm_device *dev, const hm_ckpt_meta *meta, void **image, size_t *bytes) {
  *image = NULL, *bytes = 0;
  const size_t es = hm_device_elem_size(dev), np = hm_stage_num_params(s);
  const int nt = hm_stage_num_tensors(s), n = 3 * nt;
  hm_ckpt_meta m = *meta;
  m.elem_size = (int)es;
  hm_ckpt_tensor *ts = hm_calloc((size_t)n, sizeof *ts, "snapshot tensor list");
  unsigned char *host = hm_malloc(3 * np * es, "snapshot host copy");
  hm_status st = ts && host ? HM_OK : HM_ERR_NOMEM;
  for (int k = 0; k < 3 && st == HM_OK; k++) {
    unsigned char *h = host + (size_t)k * np * es;
    st = hm_device_copy_d2h(dev, h, hm_shard_buffer(s, k), np * es);
    for (int i = 0; i < nt; i++) {
      hm_ckpt_tensor *t = &ts[k * nt + i];
      snprintf(t->name, sizeof t->name, "%s/%s", hm_shard_kinds[k], hm_stage_tensor_name(s, i));
      t->numel = hm_stage_tensor_numel(s, i);
      t->data = (float *)(void *)(h + hm_stage_tensor_offset(s, i) * es);
    }
  }
  if (st == HM_OK) st = hm_ckpt_encode(&m, ts, n, image, bytes);
  free(ts);
  free(host);
  return st;
}

hm_status hm_put_file_values(hm_device *dev, void *dst, const void *src, size_t n, int file_es) {
  if ((size_t)file_es == hm_device_elem_size(dev)) return hm_device_copy_h2d(dev, dst, src, n * (size_t)file_es);
  if (file_es == 4) return hm_device_copy_from_f32(dev, dst, src, n);
  float *f = hm_malloc(n * sizeof *f + 1, "shard conversion"); /* an f64 file into an f32 stage */
  if (!f) return HM_ERR_NOMEM;
  const double *d = src;
  for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
  hm_status st = hm_device_copy_from_f32(dev, dst, f, n);
  free(f);
  return st;
}

/* One tensor of a read file into the stage's buffer at element offset off. */
static hm_status hm_shard_put(hm_stage *s, hm_device *dev, int kind, size_t off, const hm_ckpt_tensor *t, int file_es) {
  void *dst = hm_device_offset(dev, hm_shard_buffer(s, kind), off);
  return hm_put_file_values(dev, dst, t->data, (size_t)t->numel, file_es);
}

hm_status hm_stage_load_shard(hm_stage *s, hm_device *dev, const char *path, hm_ckpt_meta *meta) {
  hm_ckpt ck;
  HM_TRY(hm_ckpt_read(path, &ck));
  const int nt = hm_stage_num_tensors(s);
  const int es = ck.meta.elem_size ? ck.meta.elem_size : 4;
  hm_status st = HM_OK;
  if (ck.n_tensors != 3 * nt)
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s holds %d tensors, this stage has %d (params and two moments)", path,
                  ck.n_tensors, 3 * nt);
  for (int k = 0; k < 3 && st == HM_OK; k++)
    for (int i = 0; i < nt && st == HM_OK; i++) {
      char name[HM_CKPT_NAME_MAX + 8];
      snprintf(name, sizeof name, "%s/%s", hm_shard_kinds[k], hm_stage_tensor_name(s, i));
      const hm_ckpt_tensor *t = hm_ckpt_find(&ck, name);
      if (!t)
        st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s: tensor '%s' is missing (another layer range?)", path, name);
      else if (t->numel != hm_stage_tensor_numel(s, i))
        st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s: tensor '%s' has %llu elements, this stage %zu", path, name,
                      (unsigned long long)t->numel, hm_stage_tensor_numel(s, i));
      else
        st = hm_shard_put(s, dev, k, hm_stage_tensor_offset(s, i), t, es);
    }
  if (st == HM_OK && meta) *meta = ck.meta;
  hm_ckpt_free(&ck);
  return st;
}
