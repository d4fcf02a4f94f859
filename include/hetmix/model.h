/* hetmix model: GPT-2 and Llama as a chain of layers, the data it reads and the checkpoints it
 * writes.
 *
 * The model is described by the spec's hm_spec_model_config (spec.h), the one type planner,
 * model and runtime share: GPT-2 (pre-LayerNorm, GELU-tanh, learned positions, input and output
 * embedding tied) or Llama (pre-RMSNorm, rotary positions, grouped-query attention, SwiGLU, no
 * biases, untied embeddings). It is cut into L+2 layers: 0 = embedding (wte, and wpe for GPT-2),
 * 1..L = transformer blocks, L+1 = head (final norm + lm head + cross-entropy).
 * A *stage* holds a contiguous range [first,last) of layers on one device, with its parameters,
 * gradients and AdamW moments each in one flat device allocation carved into named tensors
 * (llm.c). A pipeline runtime creates one stage per device; single-process training is one stage
 * holding all layers. This header does not launch processes or communicate: callers move
 * activations and gradients between stages, and allreduce the flat gradient buffer.
 *
 * Data: token files (docs/model.md) memory-mapped, a byte tokenizer (V=256), deterministic seeded
 * sampling of (B,T) batches from a training split and fixed batches from a held-out split.
 * Checkpoints: one file per stage, header + per-tensor XXH3 checksums + commit trailer, written
 * atomically (temporary file, fsync, rename). Formats are documented in docs/model.md. */
#ifndef HETMIX_MODEL_H
#define HETMIX_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/spec.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Configurations */

/* The model description is the spec's (include/hetmix/spec.h): hm_spec_model_config, the one
 * type planner, model and runtime share; its parameter count is hm_model_config_params(). */

/* Named configs: "gpt-mini" (gpt2 L6 C384 NH6 V256 T256), "gpt2-124m" (gpt2 L12 C768 NH12
 * V50304 T1024), "gpt2-350m", "tiny" (gpt2 L2 C32 NH4 V256 T16, for tests), "llama-mini" (llama
 * L6 C384 NH12 kv_heads 6 ffn 1152 V256 T256), "llama-tiny" (tests). Also parses
 * "L6,C384,NH6,V256,T256" (gpt2). Unknown name -> HM_ERR_NOT_FOUND listing the known ones. The
 * config comes back completed and checked (hm_model_config_check). */
hm_status hm_model_config_lookup(const char *name, hm_spec_model_config *out);
/* Reads a spec model file (the planner's model JSON, docs/spec.md) that has a "config"; the
 * model's name goes to name (may be NULL). */
hm_status hm_model_config_load(const char *path, hm_spec_model_config *out, char *name, size_t cap);
/* --model ARG: a name or shape as above, or a spec model file (ends in .json or holds a '/'). */
hm_status hm_model_config_resolve(const char *arg, hm_spec_model_config *out, char *name, size_t cap);
/* Checks a completed config against what the stages run (HM_ERR_INVALID_ARG naming the field):
 * the spec's checks, sizes inside 32-bit kernel indices; gpt2 with ffn = 4C and tied embeddings;
 * llama with untied embeddings and an even head size (rotary embedding). */
hm_status hm_model_config_check(const hm_spec_model_config *cfg);
/* 1 when two configs describe the same trainable model (flash_attention, a planner figure, aside). */
int hm_model_config_same(const hm_spec_model_config *a, const hm_spec_model_config *b);
/* Number of layers (L+2). */
int hm_model_num_layers(const hm_spec_model_config *cfg);
/* "L6 C384 NH6 V256 T256" (gpt2) or "llama L6 C384 NH6 KV2 F1024 V256 T256", for messages. */
const char *hm_model_config_str(const hm_spec_model_config *cfg, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------------
 * Token files and the byte tokenizer (format: docs/model.md) */

#define HM_TOKFILE_MAGIC "HMTOKENS"
#define HM_TOKFILE_VERSION 1u
#define HM_TOKFILE_HEADER_BYTES 64u

typedef enum hm_token_dtype { HM_TOKEN_U8 = 1, HM_TOKEN_U16 = 2, HM_TOKEN_U32 = 4 } hm_token_dtype;

typedef struct hm_tokfile {
  uint64_t count;   /* number of tokens */
  uint32_t vocab;   /* every token is < vocab */
  hm_token_dtype dtype;
  const void *tokens; /* memory-mapped payload, count * dtype bytes */
  void *map_;         /* private: the mapping and its length */
  size_t map_len_;
} hm_tokfile;

/* Byte tokenizer: token = byte value, V = 256. Decoding is the identity. */
enum { HM_BYTE_VOCAB = 256 };

/* Writes `count` tokens (each < vocab) as a token file: temp file, fsync, rename. */
hm_status hm_tokfile_write(const char *path, const void *tokens, uint64_t count, hm_token_dtype dtype,
                           uint32_t vocab);
/* Concatenates text files as bytes (byte tokenizer) into one token file. */
hm_status hm_tokfile_from_text(const char *out_path, const char *const *inputs, int n_inputs,
                               uint64_t *out_count);
/* Maps and checks a token file: magic, version, dtype, size, payload checksum, tokens < vocab.
 * Bad file -> HM_ERR_CORRUPT naming the path and the check that failed. */
hm_status hm_tokfile_open(const char *path, hm_tokfile *tf);
/* Same checks on a file image in memory (the fuzz target and tests use it); tf->tokens points
 * into buf. */
hm_status hm_tokfile_parse(const void *buf, size_t len, const char *what, hm_tokfile *tf);
void hm_tokfile_close(hm_tokfile *tf);
static inline uint32_t hm_tokfile_at(const hm_tokfile *tf, uint64_t i) {
  switch (tf->dtype) {
    case HM_TOKEN_U8: return ((const uint8_t *)tf->tokens)[i];
    case HM_TOKEN_U16: return ((const uint16_t *)tf->tokens)[i];
    default: return ((const uint32_t *)tf->tokens)[i];
  }
}

/* The default corpus: the English text files of Debian's fortunes packages
 * (/usr/share/games/fortunes, skipping *.dat, *.u8 and off/), built on first use into
 * <dir>/fortunes.tok. Writes the path to out_path. HETMIX_FORTUNES_DIR overrides the source. */
hm_status hm_default_corpus(const char *dir, char *out_path, size_t cap);

/* ---------------------------------------------------------------------------------------------
 * Batches: a training split and a held-out validation split of one token file.
 * The last `val_fraction` of the tokens is the validation split. Training sequence number k
 * (k = 0,1,2,... across the whole run) starts at offset splitmix64(seed, k) mod (n_train - T),
 * so the stream depends only on (file, seed, k): the position k is the loader's whole state.
 * Validation batches are fixed, evenly spaced windows of the validation split. */

typedef struct hm_dataloader {
  const hm_tokfile *tf;
  int B, T;
  uint64_t seed;
  uint64_t position;  /* training sequences drawn so far; saved in checkpoints */
  uint64_t n_train;   /* tokens [0, n_train) train, [n_train, count) validation */
  uint64_t n_val_batches;
} hm_dataloader;

hm_status hm_dataloader_init(hm_dataloader *dl, const hm_tokfile *tf, int B, int T, uint64_t seed,
                             double val_fraction);
/* Next training batch: inputs (B,T) and targets (B,T) = inputs shifted by one. */
void hm_dataloader_next(hm_dataloader *dl, int32_t *inputs, int32_t *targets);
/* Validation batch i (0 <= i < n_val_batches). */
void hm_dataloader_val(const hm_dataloader *dl, uint64_t i, int32_t *inputs, int32_t *targets);

uint64_t hm_splitmix64(uint64_t x);

/* ---------------------------------------------------------------------------------------------
 * Stages: layers [first,last) of the model on one device.
 *
 * Parameter tensors (names used in checkpoints): layer 0 "wte" (V,C), "wpe" (T,C); block i
 * (layer i+1) "h<i>.ln1.w" (C), "h<i>.ln1.b", "h<i>.attn.qkv.w" (3C,C), "h<i>.attn.qkv.b" (3C),
 * "h<i>.attn.proj.w" (C,C), "h<i>.attn.proj.b" (C), "h<i>.ln2.w", "h<i>.ln2.b", "h<i>.mlp.fc.w"
 * (4C,C), "h<i>.mlp.fc.b" (4C), "h<i>.mlp.proj.w" (C,4C), "h<i>.mlp.proj.b" (C); head "lnf.w",
 * "lnf.b" and, when the stage does not also hold layer 0, its own copy "wte" of the tied
 * embedding. Two copies stay equal when the runtime sums their gradients (hm_stage_tied_grad)
 * before both take the same AdamW step. Llama (src/model/llama.c): layer 0 "wte" (V,C); block i
 * "h<i>.norm1.w" (C), "h<i>.attn.qkv.w" (C + 2 kvd, C), "h<i>.attn.proj.w" (C,C), "h<i>.norm2.w",
 * "h<i>.mlp.gate_up.w" (2 ffn, C), "h<i>.mlp.down.w" (C, ffn); head "normf.w", "lm_head" (V,C);
 * nothing tied (hm_stage_tied_grad is NULL).
 *
 * Micro-batches: forward(mb) keeps the activations backward(mb) needs in slot mb
 * (0 <= mb < max_microbatches), so a pipeline can hold several in flight. Backward of a slot
 * must follow its forward; a slot is reused by the next forward into it. */

typedef struct hm_device hm_device;
typedef struct hm_stage hm_stage;

/* Tensor parallelism inside a stage (Megatron-LM): `size` ranks each hold one shard of every
 * block's QKV and MLP-fc (column-parallel: heads and fc outputs split), attention-out and
 * MLP-proj (row-parallel: their input columns split; the bias is added by rank 0 and its
 * gradient taken by every rank), of the tied embedding (vocabulary-parallel: V/size rows each)
 * and of the logits (vocabulary-parallel cross-entropy, no full-logit gather). LayerNorms, wpe
 * and the row-parallel biases are replicated: every rank computes the same gradient for them.
 * Llama stages the same way: QKV (query and key/value heads split; kv_heads must be divisible by
 * size) and SwiGLU gate | up column-parallel, attention-out and down row-parallel, wte and the
 * untied lm_head vocabulary-parallel, RMSNorm weights replicated.
 * The model calls `allreduce` (supplied by the runtime, so the model stays free of hmcomm) in
 * place on a device buffer of n elements of the device dtype, summing (HM_TP_SUM) or taking the
 * maximum (HM_TP_MAX) over the ranks; every rank must receive bitwise the same result.
 * Per block: one allreduce after each row-parallel layer in forward, one of the input gradient
 * of each column-parallel layer in backward; the embedding one in forward; the head three in
 * forward (row max; sum of exponentials with the target logit) and one in backward. size 0 or 1:
 * no tensor parallelism (the zero-initialized default). Rank-local sizes: hm_stage_tp_sizes. */
typedef enum hm_tp_op { HM_TP_SUM = 0, HM_TP_MAX = 1 } hm_tp_op;
typedef hm_status (*hm_tp_allreduce_fn)(void *ctx, void *buf, size_t n, hm_tp_op op);
typedef struct hm_stage_tp {
  int rank, size;               /* 0 <= rank < size; size 0 means 1 */
  hm_tp_allreduce_fn allreduce; /* required when size > 1 */
  void *ctx;
} hm_stage_tp;

#define HM_STAGE_TP_NONE {0, 1, NULL, NULL} /* one rank: no tensor parallelism */

typedef struct hm_stage_options {
  int first, last;      /* layers [first,last), 0 <= first < last <= L+2 */
  int B, T;             /* micro-batch shape, T <= config T */
  int max_microbatches; /* activation slots (>= 1) */
  hm_stage_tp tp;       /* tensor parallelism (zero: none) */
} hm_stage_options;

/* The sizes one tensor-parallel rank holds, computed in one place: heads NH/size, channels of
 * q C/size (head size unchanged), MLP hidden ffn/size (GPT-2: 4C/size), vocabulary rows
 * [vocab_lo, vocab_lo + vocab) with vocab_lo = floor(rank * V/size): V/size rows each when size
 * divides V, else rows differ by one between ranks (Llama's kv_heads/size key/value heads:
 * llama.c). HM_ERR_INVALID_ARG when size does not divide NH (Llama: also kv_heads and ffn),
 * exceeds V, or rank is out of range. */
typedef struct hm_tp_sizes {
  int size, rank;
  int heads, channels, hidden, vocab, vocab_lo;
} hm_tp_sizes;
hm_status hm_stage_tp_sizes(const hm_spec_model_config *cfg, int size, int rank, hm_tp_sizes *out);

/* Bytes a stage needs on its device (also what hm_stage_create allocates). */
typedef struct hm_stage_memory {
  size_t params, grads, optimizer, activations, scratch, total;
  size_t n_params;
  size_t weights_bf16; /* bf16-mixed: the weights' bf16 copy (2 bytes per parameter), else 0 */
} hm_stage_memory;

hm_status hm_stage_estimate(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                            hm_stage_memory *out);
/* Creates a stage: checks the config, estimates memory against the device's free memory
 * (HM_ERR_NO_FIT with both figures when it does not fit), allocates, zeroes grads and moments.
 * Parameters are uninitialized until hm_stage_init_params or hm_stage_load. */
hm_status hm_stage_create(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                          hm_stage **out);
/* The same in a training precision: HM_PREC_FP32 (what hm_stage_create does) or
 * HM_PREC_BF16_MIXED (docs/model.md, "bf16 mixed precision": f32 master weights, gradients and
 * AdamW moments; bf16 GEMMs and a bf16 weight copy; GEMM inputs saved in bf16). bf16-mixed needs
 * a device with the bf16 kernels (hm_device_supports_bf16) and no tensor parallelism
 * (HM_ERR_UNSUPPORTED otherwise). */
hm_status hm_stage_create_prec(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                               hm_precision prec, hm_stage **out);
hm_status hm_stage_estimate_prec(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                                 hm_precision prec, hm_stage_memory *out);
void hm_stage_destroy(hm_stage *s);

/* GPT-2 initialization: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0,
 * LayerNorm weights 1. Each tensor's values depend only on (seed, tensor name), so any split of
 * the model into stages initializes identically. */
hm_status hm_stage_init_params(hm_stage *s, uint64_t seed);

/* Forward of micro-batch slot mb.
 *   tokens (B,T) host int32: required when the stage holds layer 0 (embedding), else NULL.
 *   x_in (B,T,C) device: the previous stage's output, required when first > 0 (copied).
 *   targets (B,T) host int32: used by the head; NULL skips the loss (e.g. for sampling).
 *   loss: when the stage holds the head and targets are given, the mean loss over B*T (waits
 *   for the device). */
hm_status hm_stage_forward(hm_stage *s, int mb, const int32_t *tokens, const void *x_in,
                           const int32_t *targets, float *loss);
/* Output of the last forward of slot mb: (B,T,C) device activations for the next stage (stages
 * without the head; every tensor-parallel rank holds all of them), or the logits (B,T,V)
 * (stages with the head; this rank's V/tp columns with tensor parallelism; gone after backward). */
void *hm_stage_output(hm_stage *s, int mb);
/* Backward of slot mb; gradients ACCUMULATE into the flat gradient buffer.
 *   dout (B,T,C) device: gradient of this stage's output (stages without the head), else NULL.
 *   loss_weight: the head differentiates loss_weight x (mean loss of this micro-batch); use
 *   1/m for m micro-batches, or this replica's share when replicas run unequal counts.
 * Afterwards hm_stage_dinput() is the gradient of x_in (B,T,C) (first > 0), valid until the
 * next backward. */
hm_status hm_stage_backward(hm_stage *s, int mb, const void *dout, float loss_weight);
/* Optional: called inside every following hm_stage_backward as soon as layer `layer`'s part of it
 * is done (layers in backprop order: the head L+1, the blocks downwards, the embedding 0), after
 * its gradient kernels were queued on the stage's device. After the last micro-batch's backward
 * reaches layer l, the gradients of every layer >= l of the stage are final: the runtime issues
 * gradient buckets from here while the rest of the backward runs. A hook's error ends the
 * backward with it. fn NULL removes the hook. */
typedef hm_status (*hm_stage_grad_hook)(void *user, int layer);
void hm_stage_set_grad_hook(hm_stage *s, hm_stage_grad_hook fn, void *user);
void *hm_stage_dinput(hm_stage *s);

/* Runs the following forwards with sequence length T (1 <= T <= the created T), for inference on
 * a growing sequence; buffers stay sized for the created T. */
hm_status hm_stage_set_seq_len(hm_stage *s, int T);

hm_status hm_stage_zero_grad(hm_stage *s);
/* The flat buffers (device, n_params elements of the device dtype), e.g. for a data-parallel
 * allreduce of grads or for broadcasting params. */
size_t hm_stage_num_params(const hm_stage *s);
void *hm_stage_params(hm_stage *s);
void *hm_stage_grads(hm_stage *s);
void *hm_stage_adam_m(hm_stage *s); /* AdamW first moments (same layout as params) */
void *hm_stage_adam_v(hm_stage *s); /* AdamW second moments */
/* The tied embedding's gradient (V,C) inside the flat grads (this rank's (V/tp,C) rows with
 * tensor parallelism), or NULL when the stage holds neither layer 0 nor the head. The first and
 * last stage sum theirs before the optimizer. */
void *hm_stage_tied_grad(hm_stage *s, size_t *n);
/* Sum of squares of the stage's grads (host double). The head's own copy of wte is left out,
 * so summing over stages counts the tied embedding once; with tensor parallelism replicated
 * tensors are counted by tp rank 0 only, so summing over the ranks counts every one once. */
hm_status hm_stage_grad_sumsq(hm_stage *s, double *out);
/* min(1, max_norm / sqrt(total_sumsq)); 1 when max_norm <= 0. */
float hm_grad_clip_scale(double total_sumsq, float max_norm);

typedef struct hm_adamw {
  float lr, beta1, beta2, eps, weight_decay; /* weight decay applies to 2-D tensors only */
} hm_adamw;
/* One AdamW step (t >= 1) on every tensor with gradients multiplied by grad_scale (clip). */
hm_status hm_stage_adamw(hm_stage *s, const hm_adamw *opt, int t, float grad_scale);

/* Named tensors of the stage (params; grads, adam_m, adam_v have the same layout). */
int hm_stage_num_tensors(const hm_stage *s);
const char *hm_stage_tensor_name(const hm_stage *s, int i);
size_t hm_stage_tensor_offset(const hm_stage *s, int i); /* elements into the flat buffers */
size_t hm_stage_tensor_numel(const hm_stage *s, int i);
int hm_stage_find_tensor(const hm_stage *s, const char *name); /* index or -1 */
/* How tensor i is split over the stage's tensor-parallel ranks: its full shape (rows, cols)
 * (1-D tensors: (n, 1)), split 0 = replicated (every rank holds it whole), 1 = rows (each of
 * `blocks` equal row blocks cut into tp parts, rank r's rows [r*n/tp, (r+1)*n/tp) of n, floor: 3 blocks q | k | v for GPT-2's QKV, 2 blocks
 * gate | up for Llama's SwiGLU), 2 = columns, 3 = Llama's grouped-query QKV (rows q | k | v in
 * the ratio blocks : 1 : 1, blocks = NH/kv_heads, each cut into tp parts by heads). */
typedef struct hm_tensor_split {
  size_t rows, cols;
  int split, blocks;
} hm_tensor_split;
void hm_stage_tensor_split(const hm_stage *s, int i, hm_tensor_split *out);
/* Copies between a full tensor and rank's shard of it (elem bytes per element; to_shard 1: full
 * -> shard, 0: shard -> full). */
void hm_tensor_shard_copy(void *full, void *shard, const hm_tensor_split *sp, size_t elem, int tp_size,
                          int tp_rank, int to_shard);
/* The model layer (0..L+1) tensor i belongs to (the head's copy of a tied embedding: L+1). */
int hm_stage_tensor_layer(const hm_stage *s, int i);

/* ---------------------------------------------------------------------------------------------
 * Checkpoints (format: docs/model.md). One file holds the tensors of one stage. */

#define HM_CKPT_MAGIC "HMCKPT01"
#define HM_CKPT_END_MAGIC "HMCKEND1"
#define HM_CKPT_VERSION 3u /* 1 and 2 are still read (GPT-2; version 1: run identity unknown, 0) */
#define HM_CKPT_NAME_MAX 48

typedef struct hm_ckpt_meta {
  hm_spec_model_config config;
  char model_name[32];         /* the config's name, e.g. "gpt-mini" (informational) */
  int layer_first, layer_last; /* the stage's layers [first,last) */
  uint64_t step;               /* optimizer steps taken */
  uint64_t data_seed;
  uint64_t data_position;      /* hm_dataloader.position after `step` steps */
  uint64_t rng_state;          /* trainer RNG (sampling, init) */
  /* AdamW settings the run used, so a resume continues with the same ones. */
  float lr, beta1, beta2, eps, weight_decay, grad_clip;
  int batch, seq_len;
  /* The run's identity, so a resume can tell whether files belong together (0: unknown, e.g.
   * a version-1 file). run_id: random at a fresh start, kept by a resume; stage_index of
   * stage_count pipeline stages (0 of 1 for one process); micro_batches per optimizer step. */
  uint64_t run_id;
  int stage_index, stage_count, micro_batches;
  /* Bytes per stored element: 4 (float32; 0 reads as 4) or 8 (float64: an f64 stage's exact
   * state, file version 3, written for f64 stages by hm_stage_save and the periodic checkpoints). */
  int elem_size;
  /* Tensor-parallel shard: rank tp_rank of tp_size (0 of 1 unsplit; a file from before tensor
   * parallelism reads as 0 of 0, meaning unsplit). */
  int tp_rank, tp_size;
} hm_ckpt_meta;

typedef struct hm_ckpt_tensor {
  char name[HM_CKPT_NAME_MAX]; /* e.g. "param/h3.attn.qkv.w", "adam_m/wte" */
  uint64_t numel;              /* elements (float32, or float64 when meta.elem_size is 8) */
  float *data;                 /* host memory (doubles behind the pointer when elem_size is 8) */
} hm_ckpt_tensor;

/* Saves params and AdamW moments of a stage ("param/<name>", "adam_m/<name>", "adam_v/<name>",
 * float64 for an f64 stage (meta.elem_size 8: its exact state), else float32) with meta (layer
 * range, config, element size and tensor-parallel rank filled in from the stage): a
 * tensor-parallel rank saves its own shards. */
hm_status hm_stage_save(hm_stage *s, const char *path, const hm_ckpt_meta *meta);
/* Loads a checkpoint written by hm_stage_save for the same config and layer range (else
 * HM_ERR_INVALID_ARG naming the difference), converting float32/float64 to the stage's dtype;
 * fills meta. An unsplit checkpoint loads into any
 * tensor-parallel rank (its shard is cut out); a shard loads only into the same rank and size. */
hm_status hm_stage_load(hm_stage *s, const char *path, hm_ckpt_meta *meta);

/* Writes meta and tensors to path atomically: path.tmp, fsync, rename, fsync of the folder. */
hm_status hm_ckpt_write(const char *path, const hm_ckpt_meta *meta, const hm_ckpt_tensor *tensors,
                        int n_tensors);

/* The bytes hm_ckpt_write would write, in one allocation (*image: free()). */
hm_status hm_ckpt_encode(const hm_ckpt_meta *meta, const hm_ckpt_tensor *tensors, int n_tensors, void **image,
                         size_t *bytes);

/* A read checkpoint: meta and tensors (names, sizes, data in one host allocation). */
typedef struct hm_ckpt {
  hm_ckpt_meta meta;
  int n_tensors;
  hm_ckpt_tensor *tensors;
  void *blob_;
} hm_ckpt;

/* Merges the tp_size shard checkpoints of one stage (paths[r] holds rank r) into the unsplit
 * checkpoint out_path (tp 0 of 1), e.g. for hetmix sample. HM_ERR_INVALID_ARG when the files do
 * not belong together (config, layers, step, tp rank and size). */
hm_status hm_ckpt_merge_tp(const char *const *paths, int n, const char *out_path);
/* The inverse: splits the unsplit stage checkpoint at path into n tensor-parallel shards,
 * out_paths[r] holding rank r of n (the layout a stage split n ways keeps: each tensor as the
 * stage's own shard of it), byte for byte; hm_ckpt_merge_tp of them gives path's tensors back. */
hm_status hm_ckpt_split_tp(const char *path, int n, const char *const *out_paths);

/* Reads and verifies everything (header, table, every checksum, trailer). Truncated or corrupt
 * -> HM_ERR_CORRUPT naming the path and what is wrong. */
hm_status hm_ckpt_read(const char *path, hm_ckpt *out);
/* Reads and verifies only the header (256 bytes): the meta, without the tensors. */
hm_status hm_ckpt_read_meta(const char *path, hm_ckpt_meta *meta);
/* A fresh run identity (random, never 0). */
uint64_t hm_ckpt_new_run_id(void);
hm_status hm_ckpt_parse(const void *buf, size_t len, const char *what, hm_ckpt *out);
void hm_ckpt_free(hm_ckpt *ck);
/* The tensor named `name`, or NULL. */
const hm_ckpt_tensor *hm_ckpt_find(const hm_ckpt *ck, const char *name);
/* Element k (< t->numel) of tensor t of ck as a double, whatever the file's element size. */
double hm_ckpt_value(const hm_ckpt *ck, const hm_ckpt_tensor *t, uint64_t k);
/* Bytes per stored element of ck: 4 or 8. */
size_t hm_ckpt_elem_size(const hm_ckpt *ck);

/* ---------------------------------------------------------------------------------------------
 * Single-process training: one device, one stage holding every layer. The pipeline runtime
 * drives stages itself; this loop is the reference it is checked against. */

typedef struct hm_train_progress {
  int step, steps;       /* step just finished (1-based) of the run's total */
  float loss;            /* mean training loss of this step */
  float lr, grad_norm;
  double tokens_per_s;   /* training throughput since start (or resume), evaluation excluded */
  double elapsed_s, eta_s;
  int has_val;
  float val_loss;        /* when has_val */
  const char *checkpoint; /* path written after this step, or NULL */
} hm_train_progress;

typedef struct hm_train_options {
  const char *device;        /* device spec, e.g. "cpu:threads=2" */
  hm_spec_model_config config; /* completed (hm_model_config_lookup) */
  char model_name[32];         /* its name, written into checkpoints */
  const char *data;          /* token file; NULL: the default corpus built under data_dir */
  const char *data_dir;      /* default "data" */
  double val_fraction;       /* held-out share of the token file (default 0.05) */
  int steps;                 /* total optimizer steps of the run (the LR schedule spans them) */
  int stop_after;            /* stop once this step is reached (0: run to `steps`) */
  int batch, seq_len;        /* B and T (0: config T) */
  int grad_accum;            /* micro-batches per step (default 1) */
  float lr, min_lr_frac;     /* peak LR; cosine decay to lr*min_lr_frac at `steps` */
  int warmup;                /* linear warm-up steps */
  float beta1, beta2, eps, weight_decay, grad_clip;
  uint64_t seed;             /* initialization and batch order */
  int eval_every, eval_batches; /* validation loss every N steps over M batches (0: never) */
  int ckpt_every;            /* checkpoint every N steps (0: only at the end) */
  int keep;                  /* keep the newest K ckpt-*.hmc of out_dir (default 3; 0: all) */
  const char *out_dir;       /* checkpoints and metrics.jsonl; NULL: nothing written */
  const char *resume;        /* checkpoint file or an out_dir with a `latest` file; NULL: fresh */
  void (*on_progress)(const hm_train_progress *p, void *user);
  void *user;
  hm_precision precision;    /* HM_PREC_FP32 (default) or HM_PREC_BF16_MIXED (hm_stage_create_prec) */
} hm_train_options;

/* Defaults: precision fp32, batch 8, lr 1e-3, min_lr_frac 0.1, warmup 100 (at most steps/10), betas
 * (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0, val_fraction 0.05, grad_accum 1,
 * eval_every 0, eval_batches 8, data_dir "data", keep 3. */
void hm_train_defaults(hm_train_options *o);
/* The learning rate of 1-based step `step`: linear warm-up over min(warmup, steps/10) steps, then
 * cosine decay to lr * min_lr_frac at the last step. The one schedule of every trainer (one
 * process and pipeline workers), so their updates agree. */
float hm_train_lr_at(const hm_train_options *o, int step);

typedef struct hm_train_result {
  int steps_done;
  float last_loss, last_val_loss; /* last_val_loss < 0 when never evaluated */
  double tokens_per_s;
  char last_checkpoint[4096];
  hm_stage_memory memory;
} hm_train_result;

/* Trains; resuming from a checkpoint continues bitwise as if never stopped (same options).
 * Writes <out_dir>/ckpt-<step>.hmc, <out_dir>/latest (the newest checkpoint's file name, replaced
 * atomically) and <out_dir>/metrics.jsonl (docs/model.md); removes all but the newest `keep`
 * checkpoints and, at the start, the temporary files of writes a killed run left there. */
hm_status hm_train_run(const hm_train_options *o, hm_train_result *result);

/* Resolves a --resume argument: a checkpoint file, or a folder whose `latest` names one. */
hm_status hm_resolve_checkpoint(const char *arg, char *path, size_t cap);
/* Removes all but the newest `keep` checkpoints "ckpt-<step>.hmc" (regular files only) of dir;
 * keep <= 0 removes none. *removed (may be NULL) counts them. */
hm_status hm_ckpt_prune(const char *dir, int keep, int *removed);
/* The same for a pipeline's periodic checkpoints "step-<step>/stage<s>.hmc" under dir: removes
 * this stage's file from all but the newest `keep` step folders, and each such folder once empty
 * (every stage removes its own file). *removed counts the folders handled. */
hm_status hm_ckpt_prune_stage_dirs(const char *dir, int keep, int stage, int *removed);

/* ---------------------------------------------------------------------------------------------
 * Distributed checkpoints (docs/runtime.md, "Checkpoints and failures"): a run folder holds
 * "step-<8 digits>/" folders, each with one shard per pipeline stage ("stage<s>.hmc", the
 * stage's exact state in its device's element type) and "manifest.json", which names every
 * shard with its size and XXH3-64 checksum. The manifest is renamed into place only after every
 * shard is durable, so a folder with a manifest is a complete checkpoint and one without is not. */

/* A stage's exact state as the bytes of a shard file: params and AdamW moments in the element
 * type of dev (the stage's device) with meta, whose config and layer range the caller fills
 * (the stage's). *image: free(). */
hm_status hm_stage_snapshot(hm_stage *s, hm_device *dev, const hm_ckpt_meta *meta, void **image, size_t *bytes);
/* Loads a shard or any checkpoint holding exactly this stage's tensors (float32 files into any
 * device; float64 files into f64 devices exactly, into f32 devices rounded); fills meta. */
hm_status hm_stage_load_shard(hm_stage *s, hm_device *dev, const char *path, hm_ckpt_meta *meta);

#define HM_CKPT_MANIFEST "manifest.json"
#define HM_CKPT_MAX_SHARDS 256

typedef struct hm_ckpt_shard_info {
  int stage;
  int tp_rank, tp_size; /* a tensor-parallel stage's shard: rank tp_rank of tp_size (0 of 1, or
                           0 of 0 as written by older code: the unsplit stage) */
  char file[64];      /* name inside the checkpoint's folder: "stage<s>.hmc", or
                         "stage<s>.tp<r>.hmc" for rank r of a tensor-parallel stage */
  uint64_t bytes;     /* file size */
  uint64_t xxh3;      /* XXH3-64 of the whole file */
} hm_ckpt_shard_info;

typedef struct hm_ckpt_manifest {
  uint64_t run_id, step, data_position;
  int nstages, world; /* pipeline stages, workers of the run */
  int nshards;        /* shards listed, in stage then tensor-parallel rank order: one per stage
                         and tensor-parallel rank (0 reads and writes as nstages, unsplit) */
  hm_ckpt_shard_info shards[HM_CKPT_MAX_SHARDS];
} hm_ckpt_manifest;

/* The shards m lists (nshards, or nstages when 0). */
int hm_ckpt_manifest_nshards(const hm_ckpt_manifest *m);
/* The index in m->shards of stage's tensor-parallel rank tp_rank, -1 when it lists none. */
int hm_ckpt_manifest_find(const hm_ckpt_manifest *m, int stage, int tp_rank);
/* A shard's file name: "stage<s>.hmc" unsplit (tp_size <= 1), else "stage<s>.tp<r>.hmc". */
void hm_ckpt_shard_name(int stage, int tp_rank, int tp_size, char *out, size_t cap);

/* Writes dir/manifest.json atomically (temporary file, fsync, rename, folder fsync). */
hm_status hm_ckpt_manifest_write(const char *dir, const hm_ckpt_manifest *m);
/* Reads a manifest: `path` is a checkpoint folder or its manifest.json; `dir` (may be NULL)
 * receives the folder. HM_ERR_NOT_FOUND when there is none, HM_ERR_CORRUPT naming what is wrong. */
hm_status hm_ckpt_manifest_read(const char *path, hm_ckpt_manifest *m, char *dir, size_t cap);
/* The XXH3-64 and size of a file (read in pieces). */
hm_status hm_ckpt_file_hash(const char *path, uint64_t *xxh3, uint64_t *bytes);
/* Checks that dir holds every shard m names with its size and checksum; the error names the
 * first shard that is missing or differs. */
hm_status hm_ckpt_manifest_verify(const char *dir, const hm_ckpt_manifest *m);
/* The newest complete checkpoint of a run folder: its "step-<N>/" folders with a manifest whose
 * shards are all present with their sizes (checksums are verified by the resume that loads
 * them), newest step first. path receives the folder to pass to --resume, *step (may be NULL)
 * its step. HM_ERR_NOT_FOUND when there is none. */
hm_status hm_ckpt_newest_complete(const char *run_dir, char *path, size_t cap, int64_t *step);
/* Removes the "step-<N>/" folders of run_dir older than the keep-th newest complete one
 * (complete or not: an older incomplete one can never become the newest); keep <= 0 removes
 * none. Only regular files in them and the emptied folders are removed. *removed may be NULL. */
hm_status hm_ckpt_prune_complete(const char *run_dir, int keep, int *removed);
/* Removes every "step-<N>/" folder of run_dir (their regular files), then run_dir when empty. */
hm_status hm_ckpt_remove_step_dirs(const char *run_dir);
/* The steps of run_dir's "step-<N>/" folders, complete or not, newest first (*steps: free();
 * HM_ERR_NOT_FOUND when run_dir does not exist). */
hm_status hm_ckpt_list_steps(const char *run_dir, int64_t **steps, size_t *n);
/* Removes run_dir's folder "step-<8 digits>/" (its regular files, then the folder); a missing one is
 * fine. */
hm_status hm_ckpt_remove_step(const char *run_dir, int64_t step);

/* Joins the stage checkpoints "<dir>/stage<s>.hmc" (s < nstages, one replica's, float32) into
 * one checkpoint of the whole model at out: every stage's params, then moments, in layer order;
 * the head's copy of the tied embedding is dropped (it equals the first stage's). */
hm_status hm_ckpt_merge_stages(const char *dir, int nstages, const char *out);
/* The same from the unsplit stage files paths[0..nstages-1] (dir names them in messages). */
hm_status hm_ckpt_merge_stage_files(const char *const *paths, int nstages, const char *dir, const char *out);

/* Re-sharding a checkpoint to another pipeline layout (docs/runtime.md, "Elastic re-plan"). */
typedef struct hm_reshard_layout {
  int nstages;
  int bounds[HM_CKPT_MAX_SHARDS + 1]; /* stage s holds layers [bounds[s], bounds[s+1]) */
  int tp[HM_CKPT_MAX_SHARDS];         /* stage s written as tp[s] tensor-parallel shards (0, 1:
                                         one unsplit file, which loads into any degree) */
  int micro_batches, batch;           /* per optimizer step, sequences per micro-batch */
  int world;                          /* workers of the new layout (the manifest's) */
} hm_reshard_layout;
/* Writes the stage checkpoint of layers [layout->layer_first, layout->layer_last) cut out of a
 * whole-model checkpoint (hm_ckpt_merge_stages) to out: its params and AdamW moments by layer,
 * the head's copy of a tied embedding included, byte for byte; the meta is the whole model's
 * (step, data position, seed, run identity) with layout's layer range, stage_index,
 * stage_count, micro_batches and batch. */
hm_status hm_ckpt_cut_stage(const hm_ckpt *whole, const hm_ckpt_meta *layout, const char *out);
/* Re-shards the complete checkpoint folder src (manifest and stage shards, float32 or float64,
 * tensor-parallel shards of a stage merged first with hm_ckpt_merge_tp) to the layout `to` in
 * out_dir: merges the stages into the whole model, cuts the new stages out of it (each split
 * into to->tp[s] shards with hm_ckpt_split_tp), writes their manifest last. Every tensor is
 * copied byte for byte. The global batch must stay (micro_batches x batch as the
 * checkpoint's), else HM_ERR_INVALID_ARG. */
hm_status hm_ckpt_reshard(const char *src, const hm_reshard_layout *to, const char *out_dir);

/* Generates n_new tokens after prompt (bytes) with the model of a checkpoint (all layers).
 * temperature 0 means greedy; top_k 0 means no cut. out receives prompt + new bytes and a NUL
 * (cap >= prompt_len + n_new + 1). */
hm_status hm_sample_text(const char *device, const char *checkpoint, const char *prompt, int n_new,
                         float temperature, int top_k, uint64_t seed, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
