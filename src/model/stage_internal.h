/* The stage's private layout, shared by the architecture files of src/model: gpt.c (GPT-2 blocks
 * and the architecture-independent stage calls: creation, tensor table, optimizer, checkpoints)
 * and llama.c (Llama blocks, embedding and head). A stage dispatches on cfg.arch once, at the
 * stage level: tensor list, activation layout, forward, backward, output. */
#ifndef HETMIX_MODEL_STAGE_INTERNAL_H
#define HETMIX_MODEL_STAGE_INTERNAL_H

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "model/tp_shard.h"

/* n values of a checkpoint file (file_es bytes each: 4 float32, 8 float64) into device memory of
 * the device's dtype, converted where the two differ (ckpt_shard.c). */
hm_status hm_put_file_values(hm_device *dev, void *dst, const void *src, size_t n, int file_es);

typedef struct {
  char name[HM_CKPT_NAME_MAX];
  size_t offset, numel; // numel: this tensor-parallel rank's shard
  size_t rows, cols;    // the full tensor's shape
  hm_tp_split split;
  int blocks;
  int decay;       // 2-D tensors get weight decay
  double init_std; // 0: constant init_const
  float init_const;
} hm_stage_tensor;

// saved activations of one block for one micro-batch
typedef struct {
  void *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att_saved, *res2;
  void *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *res3;
} hm_block_acts;

// saved activations of one Llama block for one micro-batch (llama.c)
typedef struct {
  void *n1, *n1_rstd, *qkv, *atty, *att_saved, *res2, *n2, *n2_rstd, *gu, *hsw, *res3;
} hm_llama_block_acts;

typedef struct {
  int32_t *tokens, *targets; // (B,T) on the device
  void *in;                  // (B,T,C) copy of x_in, when first > 0
  void *enc;                 // (B,T,C) embedding output, when the stage holds layer 0
  hm_block_acts *blocks;     // one per block in the stage (gpt2)
  hm_llama_block_acts *lblocks; // one per block in the stage (llama)
  void *lnf, *lnf_mean, *lnf_rstd, *logits, *losses; // head; logits (B,T,V/tp)
  void *rowmax, *ce_stats;   // head with tp > 1: row maxima (N), [sum of exp | target logit] (2N)
  int has_targets;
} hm_mb_acts;

struct hm_stage {
  hm_spec_model_config cfg;
  hm_device *dev;
  hm_tp_sizes tp;      // this rank's local sizes (size 1: no tensor parallelism)
  hm_stage_tp tpo;     // the runtime's allreduce
  int first, last, B, T, n_mb;
  int T_max;  // T the buffers are sized for
  int has_embed, has_head, n_blocks, first_block; // blocks are layers first_block+1 ...
  size_t n_params;
  void *params, *grads, *m, *v;
  int n_tensors;
  hm_stage_tensor *tensors;
  int wte, wpe, lnfw, lnfb, block0; // tensor indices (-1 when absent); block b at block0+b*BK_COUNT
  int lm_head;                       // llama: the untied output embedding (-1 when absent)
  void *acts;                        // one allocation for every micro-batch slot
  hm_mb_acts *mb;
  void *scratch;                     // backward scratch: A (4NC), B (4NC), D (NC), dresid (NC)
  void *sA, *sB, *sD, *dresid;
  void *sQKV, *zpe, *dzpe;           // llama: repeated q,k,v (N,3C); zero positions and their sink (T,C)
  void *wte_pad, *wpe_zero;          // tp > 1 embedding: local wte + a zero row; zeros for ranks > 0
  int32_t *tok_map;                  // tp > 1 embedding: host tokens mapped to local rows (B*T)
  hm_stage_memory mem;
  hm_stage_grad_hook grad_hook;      // hm_stage_set_grad_hook, or NULL
  void *grad_user;
  int bf16;                          // bf16 mixed precision (mixed.c)
  void *w16;                         // bf16: the weights' bf16 copy (n_params x 2 bytes)
  int w16_stale;                     // the params changed since w16 was made
};

#define HM_ALIGN_BYTES 64u
static inline size_t hm_round(size_t bytes) { return (bytes + HM_ALIGN_BYTES - 1) & ~(size_t)(HM_ALIGN_BYTES - 1); }

// Carves buffers out of one allocation; with base NULL it only measures.
typedef struct {
  char *base;
  size_t off;
} hm_carver;
static inline void *hm_take(hm_carver *c, size_t bytes) {
  void *p = c->base ? c->base + c->off : NULL;
  c->off += hm_round(bytes);
  return p;
}

static inline void *P(hm_stage *s, int i) { return hm_device_offset(s->dev, s->params, s->tensors[i].offset); }
static inline void *G(hm_stage *s, int i) { return hm_device_offset(s->dev, s->grads, s->tensors[i].offset); }

/* Appends a tensor of full shape (rows, cols) to the table (counts only while s->tensors is NULL);
 * with tensor parallelism the stage holds this rank's shard of it. */
void hm_add_tensor(hm_stage *s, const char *name, size_t rows, size_t cols, int decay, double std, float c);

/* gpt.c: tensor-parallel pieces both architectures use. The allreduce over the stage's ranks
 * (no-op at tp 1); the vocabulary-parallel embedding (tokens from the host, position table pos
 * added; then summed over the ranks) and its backward (position gradient into dpos); the
 * vocabulary-parallel cross-entropy of a->logits (this rank's V/tp columns) with the loss. */
hm_status hm_tp_allreduce(hm_stage *s, void *buf, size_t n, hm_tp_op op);
hm_status hm_tp_embed_forward(hm_stage *s, hm_mb_acts *a, const int32_t *tokens, const void *pos);
hm_status hm_tp_embed_backward(hm_stage *s, hm_mb_acts *a, void *dpos);
hm_status hm_head_tp_forward(hm_stage *s, hm_mb_acts *a, const int32_t *targets, float *loss);

/* mixed.c: bf16 mixed precision. Bytes per element of a saved GEMM input (2 in bf16); the
 * weights' bf16 copy remade when stale; where an op writes an f32 result that becomes a GEMM
 * input (bf16: the scratch sB, else dst itself) and the rounding of it into dst (bf16 only);
 * matmul (weight and its gradient: tensor wi) and attention in the stage's precision. */
size_t hm_mx_gemm_in_size(const hm_stage *s);
hm_status hm_mx_refresh_weights(hm_stage *s);
void *hm_mx_result(hm_stage *s, void *dst);
hm_status hm_mx_gemm_input(hm_stage *s, void *dst, const void *result, size_t n);
hm_status hm_mx_matmul_forward(hm_stage *s, void *out, const void *inp, int wi, const void *bias, int N, int C,
                               int OC);
hm_status hm_mx_matmul_backward(hm_stage *s, void *dinp, void *dbias, const void *dout, const void *inp, int wi,
                                int N, int C, int OC);
size_t hm_mx_attention_saved(const hm_stage *s, int C, int NH);
hm_status hm_mx_attention_forward(hm_stage *s, void *out, void *saved, const void *qkv, int C, int NH);
hm_status hm_mx_attention_backward(hm_stage *s, void *dqkv, const void *dout, const void *qkv, const void *saved,
                                   int C, int NH);

/* llama.c: the Llama side of the stage-level dispatch. */
void hm_llama_list_tensors(hm_stage *s);
void hm_llama_carve_acts(hm_stage *s, hm_carver *c, size_t att_saved);
void hm_llama_carve_scratch(hm_stage *s, hm_carver *c);
hm_status hm_llama_alloc_slots(hm_stage *s);
hm_status hm_llama_forward(hm_stage *s, int mb, const int32_t *tokens, const void *x_in, const int32_t *targets,
                           float *loss);
hm_status hm_llama_backward(hm_stage *s, int mb, const void *dout, float loss_weight);
void *hm_llama_output(hm_stage *s, int mb);
/* The widest activation row (elements) a Llama stage's kernels index. */
size_t hm_llama_widest(const hm_spec_model_config *cfg);

#endif

/* The grad hook after layer `layer`'s backward (HM_OK when none is set). */
static inline hm_status hm_stage_layer_done(hm_stage *s, int layer) {
  return s->grad_hook ? s->grad_hook(s->grad_user, layer) : HM_OK;
}
