/* Tensor-parallel sharding of GPT-2 tensors (Megatron-LM layout), shared by the stage (gpt.c:
 * local sizes, init by slicing the full tensor) and the checkpoint merge (tp_shard.c). Private to
 * src/model. */
#ifndef HETMIX_MODEL_TP_SHARD_H
#define HETMIX_MODEL_TP_SHARD_H

#include <stddef.h>

#include "hetmix/model.h"

typedef enum hm_tp_split {
  HM_TP_REPLICATED = 0, /* every rank holds the whole tensor */
  HM_TP_ROWS,           /* rows split: each of `blocks` equal row blocks is cut into size parts */
  HM_TP_COLS,           /* columns split: every row is cut into size parts */
} hm_tp_split;

/* How the tensor named `name` (a stage tensor name: "wte", "h3.attn.qkv.w", ...) is split, and
 * into how many row blocks (3 for QKV: q | k | v, each split by heads; else 1). */
hm_tp_split hm_tp_tensor_split(const char *name, int *blocks);

/* Copies between a full (rows, cols) tensor and rank's shard of it (to_shard 1: full -> shard,
 * 0: shard -> full). Replicated tensors copy whole. */
void hm_tp_copy(float *full, float *shard, size_t rows, size_t cols, hm_tp_split split, int blocks,
                int size, int rank, int to_shard);
/* The same for elements of `elem` bytes. */
void hm_tp_copy_bytes(void *full, void *shard, size_t rows, size_t cols, size_t elem, hm_tp_split split,
                      int blocks, int size, int rank, int to_shard);

#endif
