/* Tensor-parallel sharding of GPT-2 and Llama tensors (Megatron-LM layout), shared by the stages
 * (gpt.c, llama.c: local sizes, init by slicing the full tensor) and the checkpoint merge
 * (tp_shard.c). Private to src/model. */
#ifndef HETMIX_MODEL_TP_SHARD_H
#define HETMIX_MODEL_TP_SHARD_H

#include <stddef.h>

#include "hetmix/model.h"

typedef enum hm_tp_split {
  HM_TP_REPLICATED = 0, /* every rank holds the whole tensor */
  HM_TP_ROWS,           /* rows split: each of `blocks` equal row blocks is cut into size parts
                           (hm_tp_part: uneven by one row when size does not divide them) */
  HM_TP_COLS,           /* columns split: every row is cut into size parts */
  HM_TP_ROWS_QKV,       /* grouped-query QKV rows q | k | v of blocks : 1 : 1 units (blocks =
                           NH/kv_heads), each of q, k and v cut into size parts by heads */
} hm_tp_split;

/* How the tensor named `name` (a stage tensor name: "wte", "h3.attn.qkv.w", ...) of a model of
 * config cfg is split, and into how many row blocks (GPT-2 QKV: 3 equal blocks q | k | v, each
 * split by heads; SwiGLU gate | up: 2; Llama QKV: HM_TP_ROWS_QKV with blocks = NH/kv_heads; else
 * 1). */
hm_tp_split hm_tp_tensor_split(const hm_spec_model_config *cfg, const char *name, int *blocks);

/* Rank's part [lo, lo + len) of n items split over size ranks as evenly as they go: lo = rank*n/size
 * (floor), so the parts differ by at most one item and are equal when size divides n. */
void hm_tp_part(size_t n, int size, int rank, size_t *lo, size_t *len);
/* Elements of rank's shard of a full (rows, cols) tensor split as given. */
size_t hm_tp_shard_numel(size_t rows, size_t cols, hm_tp_split split, int blocks, int size, int rank);

/* Copies between a full (rows, cols) tensor and rank's shard of it (to_shard 1: full -> shard,
 * 0: shard -> full). Replicated tensors copy whole. */
void hm_tp_copy(float *full, float *shard, size_t rows, size_t cols, hm_tp_split split, int blocks,
                int size, int rank, int to_shard);
/* The same for elements of `elem` bytes. */
void hm_tp_copy_bytes(void *full, void *shard, size_t rows, size_t cols, size_t elem, hm_tp_split split,
                      int blocks, int size, int rank, int to_shard);

#endif
