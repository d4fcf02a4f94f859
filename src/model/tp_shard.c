/* Tensor-parallel shards of GPT-2 and Llama tensors: rank-local sizes, the split of each named tensor, the
 * copy between a full tensor and a shard, and the merge of shard checkpoints into the unsplit
 * model. Not here: the parallel forward and backward (gpt.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tp_shard.h"
#include "util/util.h"

void hm_tp_part(size_t n, int size, int rank, size_t *lo, size_t *len) {
  const size_t k = (size_t)(size > 1 ? size : 1), r = (size_t)rank;
  *lo = r * n / k;
  *len = (r + 1) * n / k - *lo;
}

size_t hm_tp_shard_numel(size_t rows, size_t cols, hm_tp_split split, int blocks, int size, int rank) {
  if (split == HM_TP_REPLICATED || size <= 1) return rows * cols;
  size_t lo, n;
  if (split == HM_TP_COLS) {
    hm_tp_part(cols, size, rank, &lo, &n);
    return rows * n;
  }
  if (split == HM_TP_ROWS_QKV) {  // q | k | v of blocks : 1 : 1 units, each divisible (whole heads)
    const size_t unit = rows / ((size_t)blocks + 2);
    return ((size_t)blocks + 2) * unit / (size_t)size * cols;
  }
  hm_tp_part(rows / (size_t)blocks, size, rank, &lo, &n);
  return (size_t)blocks * n * cols;
}

hm_status hm_stage_tp_sizes(const hm_spec_model_config *cfg, int size, int rank, hm_tp_sizes *out) {
  size_t lo, n;
  if (size < 1) size = 1;
  if (size > 64 || rank < 0 || rank >= size)
    return hm_error(HM_ERR_INVALID_ARG, "tensor parallelism: rank %d of %d (need 1 <= size <= 64, 0 <= rank < size)",
                    rank, size);
  if (cfg->NH % size != 0)
    return hm_error(HM_ERR_INVALID_ARG, "tensor parallelism %d must divide the heads NH=%d", size, (int)cfg->NH);
  if (cfg->V < size)
    return hm_error(HM_ERR_INVALID_ARG, "tensor parallelism %d exceeds the vocabulary V=%d (each rank needs a row)",
                    size, (int)cfg->V);
  if (cfg->arch == HM_ARCH_LLAMA && (cfg->kv_heads % size != 0 || cfg->ffn % size != 0))
    return hm_error(HM_ERR_INVALID_ARG, "tensor parallelism %d must divide the key/value heads kv_heads=%d and the "
                    "SwiGLU width ffn=%d (each rank holds whole key/value heads)", size, (int)cfg->kv_heads,
                    (int)cfg->ffn);
  out->size = size, out->rank = rank;
  out->heads = cfg->NH / size;
  out->channels = cfg->C / size;  // C = NH * head size, so size divides C too
  out->hidden = cfg->ffn / size;  // GPT-2: ffn = 4C
  hm_tp_part((size_t)cfg->V, size, rank, &lo, &n);  // V need not divide: rows split as evenly as they go
  out->vocab_lo = (int)lo, out->vocab = (int)n;
  return HM_OK;
}

static int hm_ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

hm_tp_split hm_tp_tensor_split(const hm_spec_model_config *cfg, const char *name, int *blocks) {
  *blocks = 1;
  if (strcmp(name, "wte") == 0 || strcmp(name, "lm_head") == 0) return HM_TP_ROWS;  // vocabulary-parallel
  if (cfg->arch == HM_ARCH_LLAMA) {
    if (hm_ends_with(name, ".attn.qkv.w")) {
      *blocks = (int)(cfg->NH / cfg->kv_heads);  // q heads per kv head
      return HM_TP_ROWS_QKV;
    }
    if (hm_ends_with(name, ".mlp.gate_up.w")) {
      *blocks = 2;  // gate | up, each split by columns of ffn
      return HM_TP_ROWS;
    }
    if (hm_ends_with(name, ".attn.proj.w") || hm_ends_with(name, ".mlp.down.w")) return HM_TP_COLS;
    return HM_TP_REPLICATED;  // RMSNorm weights
  }
  if (hm_ends_with(name, ".attn.qkv.w") || hm_ends_with(name, ".attn.qkv.b")) {
    *blocks = 3;  // q | k | v, each split by heads
    return HM_TP_ROWS;
  }
  if (hm_ends_with(name, ".mlp.fc.w") || hm_ends_with(name, ".mlp.fc.b")) return HM_TP_ROWS;
  if (hm_ends_with(name, ".attn.proj.w") || hm_ends_with(name, ".mlp.proj.w")) return HM_TP_COLS;
  return HM_TP_REPLICATED;  // LayerNorms, wpe, row-parallel biases
}

void hm_tp_copy_bytes(void *full_, void *shard_, size_t rows, size_t cols, size_t elem, hm_tp_split split,
                      int blocks, int size, int rank, int to_shard) {
  char *full = full_, *shard = shard_;
  if (split == HM_TP_REPLICATED || size <= 1) {
    if (to_shard) memcpy(shard, full, rows * cols * elem);
    else memcpy(full, shard, rows * cols * elem);
    return;
  }
  if (split == HM_TP_COLS) {
    size_t c0, w;
    hm_tp_part(cols, size, rank, &c0, &w);
    for (size_t r = 0; r < rows; r++) {
      char *f = full + (r * cols + c0) * elem, *s = shard + r * w * elem;
      memcpy(to_shard ? s : f, to_shard ? f : s, w * elem);
    }
    return;
  }
  if (split == HM_TP_ROWS_QKV) {  // q | k | v of blocks : 1 : 1 units
    const size_t unit = rows / ((size_t)blocks + 2), brows[3] = {(size_t)blocks * unit, unit, unit};
    size_t f0 = 0, s0 = 0;
    for (int b = 0; b < 3; b++) {
      const size_t h = brows[b] / (size_t)size;
      char *f = full + (f0 + (size_t)rank * h) * cols * elem, *s = shard + s0 * cols * elem;
      memcpy(to_shard ? s : f, to_shard ? f : s, h * cols * elem);
      f0 += brows[b], s0 += h;
    }
    return;
  }
  const size_t rb = rows / (size_t)blocks;
  size_t r0, h;  // each block's rows [r0, r0 + h): uneven when size does not divide them (the vocabulary)
  hm_tp_part(rb, size, rank, &r0, &h);
  for (int b = 0; b < blocks; b++) {
    char *f = full + ((size_t)b * rb + r0) * cols * elem, *s = shard + (size_t)b * h * cols * elem;
    memcpy(to_shard ? s : f, to_shard ? f : s, h * cols * elem);
  }
}

void hm_tp_copy(float *full, float *shard, size_t rows, size_t cols, hm_tp_split split, int blocks, int size,
                int rank, int to_shard) {
  hm_tp_copy_bytes(full, shard, rows, cols, sizeof(float), split, blocks, size, rank, to_shard);
}

void hm_tensor_shard_copy(void *full, void *shard, const hm_tensor_split *sp, size_t elem, int tp_size, int tp_rank,
                          int to_shard) {
  hm_tp_copy_bytes(full, shard, sp->rows, sp->cols, elem, (hm_tp_split)sp->split, sp->blocks, tp_size, tp_rank,
                   to_shard);
}

// The shard files belong together: same model, layers, step and run; rank r of n in paths[r].
static hm_status hm_merge_check(const hm_ckpt *ck, int n, const char *const *paths) {
  for (int r = 0; r < n; r++) {
    const hm_ckpt_meta *m = &ck[r].meta, *m0 = &ck[0].meta;
    if (m->tp_size != n || m->tp_rank != r)
      return hm_error(HM_ERR_INVALID_ARG, "checkpoint %s holds tensor-parallel rank %d of %d, expected rank %d of %d",
                      paths[r], m->tp_rank, m->tp_size, r, n);
    if (!hm_model_config_same(&m->config, &m0->config) || m->layer_first != m0->layer_first ||
        m->layer_last != m0->layer_last || m->step != m0->step || m->run_id != m0->run_id ||
        ck[r].n_tensors != ck[0].n_tensors || m->elem_size != m0->elem_size)
      return hm_error(HM_ERR_INVALID_ARG, "checkpoints %s and %s are not shards of one stage at one step (model, "
                      "layers, step, run, tensors or element size differ)", paths[0], paths[r]);
  }
  return HM_OK;
}

// Full shape (rows, cols) of a split tensor from its name and shard size; replicated ones are
// copied whole, so (numel, 1) serves them.
static void hm_full_shape(const hm_spec_model_config *c, const char *name, size_t numel_shard, hm_tp_split split, int n,
                          size_t *rows, size_t *cols) {
  const size_t C = (size_t)c->C, len = strlen(name);
  const int is_w = len > 2 && strcmp(name + len - 2, ".w") == 0;
  *cols = split == HM_TP_REPLICATED                        ? 1
          : strstr(name, ".mlp.proj.w")                    ? 4 * C
          : strstr(name, ".mlp.down.w")                    ? (size_t)c->ffn
          : is_w || strstr(name, "wte") || strstr(name, "lm_head") ? C
                                                           : 1;
  *rows = (split == HM_TP_REPLICATED ? numel_shard : numel_shard * (size_t)n) / *cols;
  if (strstr(name, "wte") || strstr(name, "lm_head")) *rows = (size_t)c->V;  // vocabulary rows: split unevenly
}

hm_status hm_ckpt_merge_tp(const char *const *paths, int n, const char *out_path) {
  if (n < 1 || n > 64) return hm_error(HM_ERR_INVALID_ARG, "merge of %d tensor-parallel shards (need 1..64)", n);
  hm_ckpt *ck = hm_calloc((size_t)n, sizeof *ck, "shard checkpoints");
  if (!ck) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  int nread = 0;
  for (; nread < n && st == HM_OK; nread++) st = hm_ckpt_read(paths[nread], &ck[nread]);
  if (st != HM_OK) nread--;
  if (st == HM_OK) st = hm_merge_check(ck, n, paths);
  const int nt = st == HM_OK ? ck[0].n_tensors : 0;
  const size_t es = st == HM_OK && ck[0].meta.elem_size == 8 ? 8 : 4;  // float64 shards merge exactly
  hm_ckpt_tensor *out = nt ? hm_calloc((size_t)nt, sizeof *out, "merged tensors") : NULL;
  if (st == HM_OK && nt && !out) st = HM_ERR_NOMEM;
  for (int i = 0; i < nt && st == HM_OK; i++) {
    const hm_ckpt_tensor *t0 = &ck[0].tensors[i];
    const char *slash = strchr(t0->name, '/');
    int blocks;
    hm_tp_split split = hm_tp_tensor_split(&ck[0].meta.config, slash ? slash + 1 : t0->name, &blocks);
    size_t rows, cols;
    hm_full_shape(&ck[0].meta.config, t0->name, t0->numel, split, n, &rows, &cols);
    out[i] = *t0;
    out[i].numel = rows * cols;
    out[i].data = hm_malloc(rows * cols * es, "merged tensor");
    if (!out[i].data) st = HM_ERR_NOMEM;
    for (int r = 0; r < n && st == HM_OK; r++) {
      const hm_ckpt_tensor *t = hm_ckpt_find(&ck[r], t0->name);
      if (!t || t->numel != hm_tp_shard_numel(rows, cols, split, blocks, n, r))
        st = hm_error(HM_ERR_CORRUPT, "checkpoint %s: tensor '%s' is missing or has another size than in %s",
                      paths[r], t0->name, paths[0]);
      else
        hm_tp_copy_bytes(out[i].data, t->data, rows, cols, es, split, blocks, n, r, 0);
    }
  }
  if (st == HM_OK) {
    hm_ckpt_meta m = ck[0].meta;
    m.tp_rank = 0, m.tp_size = 1;
    st = hm_ckpt_write(out_path, &m, out, nt);
  }
  for (int i = 0; i < nt && out; i++) free(out[i].data);
  free(out);
  for (int r = 0; r < nread; r++) hm_ckpt_free(&ck[r]);
  free(ck);
  return st;
}

// Rank r's shard of every tensor of the unsplit checkpoint whole (tp 0 of 1), written to out_path.
static hm_status hm_split_one(const hm_ckpt *whole, int n, int r, const char *out_path) {
  const int nt = whole->n_tensors;
  const size_t es = hm_ckpt_elem_size(whole);
  hm_ckpt_tensor *out = nt ? hm_calloc((size_t)nt, sizeof *out, "split tensors") : NULL;
  hm_status st = nt && !out ? HM_ERR_NOMEM : HM_OK;
  for (int i = 0; i < nt && st == HM_OK; i++) {
    const hm_ckpt_tensor *t = &whole->tensors[i];
    const char *slash = strchr(t->name, '/');
    int blocks;
    hm_tp_split split = hm_tp_tensor_split(&whole->meta.config, slash ? slash + 1 : t->name, &blocks);
    size_t rows, cols;
    hm_full_shape(&whole->meta.config, t->name, t->numel, split, 1, &rows, &cols);
    if (rows * cols != t->numel) {
      st = hm_error(HM_ERR_CORRUPT, "splitting: tensor '%s' holds %llu elements, not a (%zu, %zu) tensor", t->name,
                    (unsigned long long)t->numel, rows, cols);
      break;
    }
    out[i] = *t;
    out[i].numel = hm_tp_shard_numel(rows, cols, split, blocks, n, r);
    out[i].data = hm_malloc(out[i].numel * es + 1, "split tensor");
    if (!out[i].data) st = HM_ERR_NOMEM;
    else hm_tp_copy_bytes(t->data, out[i].data, rows, cols, es, split, blocks, n, r, 1);
  }
  if (st == HM_OK) {
    hm_ckpt_meta m = whole->meta;
    m.tp_rank = r, m.tp_size = n;
    st = hm_ckpt_write(out_path, &m, out, nt);
  }
  for (int i = 0; i < nt && out; i++) free(out[i].data);
  free(out);
  return st;
}

hm_status hm_ckpt_split_tp(const char *path, int n, const char *const *out_paths) {
  if (n < 1 || n > 64) return hm_error(HM_ERR_INVALID_ARG, "split into %d tensor-parallel shards (need 1..64)", n);
  hm_ckpt whole;
  HM_TRY(hm_ckpt_read(path, &whole));
  hm_status st = HM_OK;
  if (whole.meta.tp_size > 1)
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s is already tensor-parallel rank %d of %d, not an unsplit stage", path,
                  whole.meta.tp_rank, whole.meta.tp_size);
  if (st == HM_OK && n > 1 && whole.meta.config.NH % n != 0)
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s: %lld heads do not split %d ways", path,
                  (long long)whole.meta.config.NH, n);
  for (int r = 0; r < n && st == HM_OK; r++) st = hm_split_one(&whole, n, r, out_paths[r]);
  hm_ckpt_free(&whole);
  return st;
}
