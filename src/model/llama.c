/* Llama stages: pre-RMSNorm blocks with rotary position embeddings, grouped-query attention
 * (kv_heads key/value heads shared by NH query heads) and a SwiGLU MLP of width ffn; no biases,
 * no position table, input and output embeddings untied. The stage-level side of gpt.c's
 * dispatch on cfg.arch: tensor list, activation layout, forward, backward, output. Every tensor
 * op is a device kernel, so the same code runs on every backend and dtype.
 *
 * Parameters of block i: "h<i>.norm1.w" (C), "h<i>.attn.qkv.w" (C + 2 kvd, C) = Wq | Wk | Wv
 * with kvd = kv_heads * C/NH, "h<i>.attn.proj.w" (C,C), "h<i>.norm2.w" (C), "h<i>.mlp.gate_up.w"
 * (2 ffn, C) = Wgate | Wup, "h<i>.mlp.down.w" (C, ffn); layer 0 "wte" (V,C); head "normf.w" (C),
 * "lm_head" (V,C).
 *
 * Tensor parallelism (Megatron-LM, tp ranks): QKV column-parallel (each rank holds NH/tp query
 * heads and the kv_heads/tp key/value heads they share), attention-out row-parallel; SwiGLU
 * gate | up column-parallel (ffn/tp columns each), down row-parallel; one allreduce after each
 * row-parallel layer in forward and one of each column-parallel layer's input gradient in
 * backward; wte and lm_head vocabulary-parallel (V/tp rows each, one more on some ranks when tp does
 * not divide V) with the vocabulary-parallel
 * cross-entropy of gpt.c; RMSNorm weights replicated. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "model/stage_internal.h"
#include "util/util.h"

enum { LK_NORM1, LK_QKV, LK_PROJ, LK_NORM2, LK_GATEUP, LK_DOWN, LK_COUNT };
static const char *const hm_llama_names[LK_COUNT] = {"norm1.w", "attn.qkv.w", "attn.proj.w",
                                                     "norm2.w", "mlp.gate_up.w", "mlp.down.w"};

/* One rank's share of a block: every per-rank size in one place (heads, kv_heads and ffn
 * columns split over tp ranks; tp divides them: hm_stage_tp_sizes). */
typedef struct {
  int heads, kv_heads, hd, q_cols, kv_cols, qkv_cols, ffn;
} hm_llama_dims;

static hm_llama_dims hm_llama_dims_tp(const hm_spec_model_config *c, int tp) {
  hm_llama_dims d;
  d.hd = (int)(c->C / c->NH);
  d.heads = (int)c->NH / tp;
  d.kv_heads = (int)c->kv_heads / tp;
  d.q_cols = d.heads * d.hd;
  d.kv_cols = d.kv_heads * d.hd;
  d.qkv_cols = d.q_cols + 2 * d.kv_cols;
  d.ffn = (int)c->ffn / tp;
  return d;
}

static hm_llama_dims hm_llama_dims_of(const hm_stage *s) { return hm_llama_dims_tp(&s->cfg, s->tp.size); }

/* The unsplit widths: an upper bound of every rank's. */
size_t hm_llama_widest(const hm_spec_model_config *cfg) {
  hm_llama_dims d = hm_llama_dims_tp(cfg, 1);
  size_t w = 3 * (size_t)cfg->C;
  if ((size_t)d.qkv_cols > w) w = (size_t)d.qkv_cols;
  if (2 * (size_t)d.ffn > w) w = 2 * (size_t)d.ffn;
  return w;
}

void hm_llama_list_tensors(hm_stage *s) {
  const size_t C = (size_t)s->cfg.C, V = (size_t)s->cfg.V;
  const hm_llama_dims d = hm_llama_dims_tp(&s->cfg, 1);  // full shapes: the stage holds its shard
  const double std = 0.02, proj_std = 0.02 / sqrt(2.0 * (double)s->cfg.L);
  s->n_tensors = 0;
  s->n_params = 0;
  s->wte = s->wpe = s->lnfw = s->lnfb = s->block0 = s->lm_head = -1;
  if (s->has_embed) {
    s->wte = s->n_tensors;
    hm_add_tensor(s, "wte", V, C, 1, std, 0);
  }
  if (s->n_blocks > 0) s->block0 = s->n_tensors;
  const size_t rows[LK_COUNT] = {C, (size_t)d.qkv_cols, C, C, 2 * (size_t)d.ffn, C};
  const size_t cols[LK_COUNT] = {1, C, (size_t)d.q_cols, 1, C, (size_t)d.ffn};
  for (int b = 0; b < s->n_blocks; b++) {
    char name[HM_CKPT_NAME_MAX];
    for (int k = 0; k < LK_COUNT; k++) {
      snprintf(name, sizeof name, "h%d.%s", s->first_block + b, hm_llama_names[k]);
      int is_norm = k == LK_NORM1 || k == LK_NORM2;
      double sd = is_norm ? 0.0 : (k == LK_PROJ || k == LK_DOWN) ? proj_std : std;
      hm_add_tensor(s, name, rows[k], cols[k], !is_norm, sd, is_norm ? 1.0f : 0.0f);
    }
  }
  if (s->has_head) {
    s->lnfw = s->n_tensors;
    hm_add_tensor(s, "normf.w", C, 1, 0, 0.0, 1.0f);
    s->lm_head = s->n_tensors;
    hm_add_tensor(s, "lm_head", V, C, 1, std, 0);
  }
}

hm_status hm_llama_alloc_slots(hm_stage *s) {
  for (int i = 0; i < s->n_mb && s->n_blocks > 0; i++) {
    s->mb[i].lblocks = hm_calloc((size_t)s->n_blocks, sizeof(hm_llama_block_acts), "stage block activations");
    if (!s->mb[i].lblocks) return HM_ERR_NOMEM;
  }
  return HM_OK;
}

void hm_llama_carve_acts(hm_stage *s, hm_carver *c, size_t att_saved) {
  const size_t es = hm_device_elem_size(s->dev), gs = hm_mx_gemm_in_size(s); // gs: saved GEMM inputs
  const size_t N = (size_t)s->B * s->T, C = (size_t)s->cfg.C, V = (size_t)s->tp.vocab;
  const hm_llama_dims d = hm_llama_dims_of(s);
  for (int i = 0; i < s->n_mb; i++) {
    hm_mb_acts tmp;
    hm_llama_block_acts btmp;
    hm_mb_acts *a = s->mb ? &s->mb[i] : &tmp;
    a->tokens = s->has_embed ? hm_take(c, N * sizeof(int32_t)) : NULL;
    a->targets = s->has_head ? hm_take(c, N * sizeof(int32_t)) : NULL;
    a->in = s->first > 0 ? hm_take(c, N * C * es) : NULL;
    a->enc = s->has_embed ? hm_take(c, N * C * es) : NULL;
    for (int b = 0; b < s->n_blocks; b++) {
      hm_llama_block_acts *k = s->mb ? &a->lblocks[b] : &btmp;
      k->n1 = hm_take(c, N * C * gs);
      k->n1_rstd = hm_take(c, N * es);
      k->qkv = hm_take(c, N * (size_t)d.qkv_cols * es);
      k->atty = hm_take(c, N * (size_t)d.q_cols * gs);
      k->att_saved = hm_take(c, att_saved * es);
      k->res2 = hm_take(c, N * C * es);
      k->n2 = hm_take(c, N * C * gs);
      k->n2_rstd = hm_take(c, N * es);
      k->gu = hm_take(c, 2 * N * (size_t)d.ffn * es);
      k->hsw = hm_take(c, N * (size_t)d.ffn * gs);
      k->res3 = hm_take(c, N * C * es);
    }
    if (s->has_head) {
      a->lnf = hm_take(c, N * C * gs);
      a->lnf_rstd = hm_take(c, N * es);
      a->logits = hm_take(c, N * V * es);
      a->losses = hm_take(c, N * es);
      a->rowmax = s->tp.size > 1 ? hm_take(c, N * es) : NULL;
      a->ce_stats = s->tp.size > 1 ? hm_take(c, 2 * N * es) : NULL;
    }
  }
}

/* Scratch (this rank's widths): A (max(ffn, 3 q_cols) per row: d hidden, d repeated qkv), B
 * (max(2 ffn, qkv) per row), D and dresid (C per row), the repeated q,k,v (3 q_cols per row), a
 * zero position table with its gradient sink for the embedding kernel (T,C), and with tp > 1 the
 * embedding's padded wte copy (this rank's vocabulary rows + 1). */
void hm_llama_carve_scratch(hm_stage *s, hm_carver *c) {
  const size_t es = hm_device_elem_size(s->dev);
  const size_t N = (size_t)s->B * s->T, C = (size_t)s->cfg.C, T = (size_t)s->T_max;
  const hm_llama_dims d = hm_llama_dims_of(s);
  const size_t q3 = 3 * (size_t)d.q_cols;
  size_t a = (size_t)d.ffn > q3 ? (size_t)d.ffn : q3;
  size_t b = 2 * (size_t)d.ffn > (size_t)d.qkv_cols ? 2 * (size_t)d.ffn : (size_t)d.qkv_cols;
  s->sA = hm_take(c, N * a * es);
  s->sB = hm_take(c, N * b * es);
  s->sD = hm_take(c, N * C * es);
  s->dresid = hm_take(c, N * C * es);
  s->sQKV = hm_take(c, N * q3 * es);
  s->zpe = hm_take(c, T * C * es);
  s->dzpe = hm_take(c, T * C * es);
  s->wte_pad = s->tp.size > 1 && s->has_embed ? hm_take(c, ((size_t)s->tp.vocab + 1) * C * es) : NULL;
}

// ---- forward ----------------------------------------------------------------------------------

static const void *hm_llama_block_input(hm_stage *s, hm_mb_acts *a, int b) {
  if (b > 0) return a->lblocks[b - 1].res3;
  return s->has_embed ? a->enc : a->in;
}

/* q and k rotated in place in the (N, qkv_cols) buffer qkv. */
static hm_status hm_llama_rope(hm_stage *s, void *qkv, const hm_llama_dims *d, int forward) {
  hm_device *dv = s->dev;
  void *k = hm_device_offset(dv, qkv, (size_t)d->q_cols);
  if (forward) {
    HM_TRY(hm_dev_rope_forward(dv, qkv, s->B, s->T, d->heads, d->hd, d->qkv_cols));
    return hm_dev_rope_forward(dv, k, s->B, s->T, d->kv_heads, d->hd, d->qkv_cols);
  }
  HM_TRY(hm_dev_rope_backward(dv, qkv, s->B, s->T, d->heads, d->hd, d->qkv_cols));
  return hm_dev_rope_backward(dv, k, s->B, s->T, d->kv_heads, d->hd, d->qkv_cols);
}

static hm_status hm_llama_block_forward(hm_stage *s, int b, hm_llama_block_acts *k, const void *x) {
  hm_device *dv = s->dev;
  const hm_llama_dims d = hm_llama_dims_of(s);
  const int B = s->B, T = s->T, C = (int)s->cfg.C, N = B * T;
  const size_t NC = (size_t)N * C;
  const int w = s->block0 + b * LK_COUNT;
  void *proj = s->sD;  // attention / MLP projection before the residual add
  (void)B, (void)T;
  void *r = hm_mx_result(s, k->n1); // bf16: f32 results in scratch, rounded into the saved GEMM input
  HM_TRY(hm_dev_rmsnorm_forward(dv, r, k->n1_rstd, x, P(s, w + LK_NORM1), N, C));
  HM_TRY(hm_mx_gemm_input(s, k->n1, r, NC));
  HM_TRY(hm_mx_matmul_forward(s, k->qkv, k->n1, w + LK_QKV, NULL, N, C, d.qkv_cols));
  HM_TRY(hm_llama_rope(s, k->qkv, &d, 1));
  HM_TRY(hm_dev_repeat_kv_forward(dv, s->sQKV, k->qkv, N, d.q_cols, d.heads, d.kv_heads));
  HM_TRY(hm_mx_attention_forward(s, r = hm_mx_result(s, k->atty), k->att_saved, s->sQKV, d.q_cols, d.heads));
  HM_TRY(hm_mx_gemm_input(s, k->atty, r, (size_t)N * d.q_cols));
  HM_TRY(hm_mx_matmul_forward(s, proj, k->atty, w + LK_PROJ, NULL, N, d.q_cols, C));
  HM_TRY(hm_tp_allreduce(s, proj, NC, HM_TP_SUM));
  HM_TRY(hm_dev_residual_forward(dv, k->res2, x, proj, NC));
  r = hm_mx_result(s, k->n2);
  HM_TRY(hm_dev_rmsnorm_forward(dv, r, k->n2_rstd, k->res2, P(s, w + LK_NORM2), N, C));
  HM_TRY(hm_mx_gemm_input(s, k->n2, r, NC));
  HM_TRY(hm_mx_matmul_forward(s, k->gu, k->n2, w + LK_GATEUP, NULL, N, C, 2 * d.ffn));
  HM_TRY(hm_dev_swiglu_forward(dv, r = hm_mx_result(s, k->hsw), k->gu, N, d.ffn));
  HM_TRY(hm_mx_gemm_input(s, k->hsw, r, (size_t)N * d.ffn));
  HM_TRY(hm_mx_matmul_forward(s, proj, k->hsw, w + LK_DOWN, NULL, N, d.ffn, C));
  HM_TRY(hm_tp_allreduce(s, proj, NC, HM_TP_SUM));
  HM_TRY(hm_dev_residual_forward(dv, k->res3, k->res2, proj, NC));
  return HM_OK;
}

static hm_status hm_llama_embed(hm_stage *s, hm_mb_acts *a, const int32_t *tokens, const void *x_in) {
  hm_device *dv = s->dev;
  const int B = s->B, T = s->T, C = (int)s->cfg.C, V = (int)s->cfg.V, N = B * T;
  if (!s->has_embed) {
    if (!x_in) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): input activations are required", s->first, s->last);
    return hm_device_copy_d2d(dv, a->in, x_in, (size_t)N * C * hm_device_elem_size(dv));
  }
  if (!tokens) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d) holds the embedding: tokens are required", s->first, s->last);
  for (int i = 0; i < N; i++)
    if (tokens[i] < 0 || tokens[i] >= V)
      return hm_error(HM_ERR_INVALID_ARG, "token %d at position %d is outside the vocabulary 0..%d", tokens[i], i, V - 1);
  HM_TRY(hm_device_zero(dv, s->zpe, (size_t)T * C * hm_device_elem_size(dv)));
  if (s->tp.size > 1) return hm_tp_embed_forward(s, a, tokens, s->zpe);
  HM_TRY(hm_device_copy_h2d(dv, a->tokens, tokens, (size_t)N * sizeof(int32_t)));
  return hm_dev_encoder_forward(dv, a->enc, a->tokens, P(s, s->wte), s->zpe, B, T, C);
}

static hm_status hm_llama_head_forward(hm_stage *s, hm_mb_acts *a, const int32_t *targets, float *loss) {
  hm_device *dv = s->dev;
  const int C = (int)s->cfg.C, V = (int)s->cfg.V, N = s->B * s->T;
  void *r = hm_mx_result(s, a->lnf);
  HM_TRY(hm_dev_rmsnorm_forward(dv, r, a->lnf_rstd, hm_llama_block_input(s, a, s->n_blocks), P(s, s->lnfw), N, C));
  HM_TRY(hm_mx_gemm_input(s, a->lnf, r, (size_t)N * C));
  HM_TRY(hm_mx_matmul_forward(s, a->logits, a->lnf, s->lm_head, NULL, N, C, s->tp.vocab));
  if (!targets) return HM_OK;
  for (int i = 0; i < N; i++)
    if (targets[i] < 0 || targets[i] >= V)
      return hm_error(HM_ERR_INVALID_ARG, "target %d at position %d is outside the vocabulary 0..%d", targets[i], i, V - 1);
  HM_TRY(hm_device_copy_h2d(dv, a->targets, targets, (size_t)N * sizeof(int32_t)));
  a->has_targets = 1;
  if (s->tp.size > 1) return hm_head_tp_forward(s, a, targets, loss);
  HM_TRY(hm_dev_crossentropy_forward_backward(dv, a->losses, NULL, a->logits, a->targets, 0.0, N, V, V));
  if (loss) {
    double sum = 0;
    HM_TRY(hm_dev_sum(dv, &sum, a->losses, (size_t)N));
    *loss = (float)(sum / N);
  }
  return HM_OK;
}

hm_status hm_llama_forward(hm_stage *s, int mb, const int32_t *tokens, const void *x_in, const int32_t *targets,
                           float *loss) {
  hm_mb_acts *a = &s->mb[mb];
  HM_TRY(hm_llama_embed(s, a, tokens, x_in));
  for (int b = 0; b < s->n_blocks; b++)
    HM_TRY(hm_llama_block_forward(s, b, &a->lblocks[b], hm_llama_block_input(s, a, b)));
  a->has_targets = 0;
  if (!s->has_head) return HM_OK;
  return hm_llama_head_forward(s, a, targets, loss);
}

void *hm_llama_output(hm_stage *s, int mb) {
  hm_mb_acts *a = &s->mb[mb];
  if (s->has_head) return a->logits;
  return (void *)hm_llama_block_input(s, a, s->n_blocks);
}

// ---- backward ---------------------------------------------------------------------------------

// s->dresid holds d(block output) on entry and d(block input) on return.
static hm_status hm_llama_block_backward(hm_stage *s, int b, hm_llama_block_acts *k, const void *x) {
  hm_device *dv = s->dev;
  const hm_llama_dims d = hm_llama_dims_of(s);
  const int B = s->B, T = s->T, C = (int)s->cfg.C, N = B * T;
  const size_t NC = (size_t)N * C, es = hm_device_elem_size(dv), NF = (size_t)N * d.ffn;
  const int w = s->block0 + b * LK_COUNT;
  void *dres = s->dresid, *dh = s->sA, *dgu = s->sB, *dn = s->sD;
  HM_TRY(hm_device_zero(dv, dh, NF * es));
  HM_TRY(hm_mx_matmul_backward(s, dh, NULL, dres, k->hsw, w + LK_DOWN, N, d.ffn, C));
  HM_TRY(hm_dev_swiglu_backward(dv, dgu, k->gu, dh, N, d.ffn));
  HM_TRY(hm_device_zero(dv, dn, NC * es));
  HM_TRY(hm_mx_matmul_backward(s, dn, NULL, dgu, k->n2, w + LK_GATEUP, N, C, 2 * d.ffn));
  HM_TRY(hm_tp_allreduce(s, dn, NC, HM_TP_SUM));
  HM_TRY(hm_dev_rmsnorm_backward(dv, dres, G(s, w + LK_NORM2), dn, k->res2, P(s, w + LK_NORM2), k->n2_rstd, N, C));
  void *datty = s->sD, *dfull = s->sA, *dqkv = s->sB, *dn1 = s->sD;
  HM_TRY(hm_device_zero(dv, datty, (size_t)N * d.q_cols * es));
  HM_TRY(hm_mx_matmul_backward(s, datty, NULL, dres, k->atty, w + LK_PROJ, N, d.q_cols, C));
  HM_TRY(hm_dev_repeat_kv_forward(dv, s->sQKV, k->qkv, N, d.q_cols, d.heads, d.kv_heads));
  HM_TRY(hm_device_zero(dv, dfull, 3 * (size_t)N * d.q_cols * es));
  HM_TRY(hm_mx_attention_backward(s, dfull, datty, s->sQKV, k->att_saved, d.q_cols, d.heads));
  HM_TRY(hm_dev_repeat_kv_backward(dv, dqkv, dfull, N, d.q_cols, d.heads, d.kv_heads));
  HM_TRY(hm_llama_rope(s, dqkv, &d, 0));
  HM_TRY(hm_device_zero(dv, dn1, NC * es));
  HM_TRY(hm_mx_matmul_backward(s, dn1, NULL, dqkv, k->n1, w + LK_QKV, N, C, d.qkv_cols));
  HM_TRY(hm_tp_allreduce(s, dn1, NC, HM_TP_SUM));
  HM_TRY(hm_dev_rmsnorm_backward(dv, dres, G(s, w + LK_NORM1), dn1, x, P(s, w + LK_NORM1), k->n1_rstd, N, C));
  return HM_OK;
}

static hm_status hm_llama_head_backward(hm_stage *s, hm_mb_acts *a, int mb, float loss_weight) {
  hm_device *dv = s->dev;
  const int C = (int)s->cfg.C, V = (int)s->cfg.V, N = s->B * s->T;
  const size_t NC = (size_t)N * C, es = hm_device_elem_size(dv);
  if (!a->has_targets)
    return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): backward of slot %d needs a forward with targets first",
                    s->first, s->last, mb);
  a->has_targets = 0;  // dlogits overwrite the logits: one backward per forward
  if (s->tp.size > 1)
    HM_TRY(hm_dev_crossentropy_shard_backward(dv, a->logits, a->logits, a->rowmax, a->ce_stats, a->targets,
                                              s->tp.vocab_lo, (double)loss_weight / N, N, s->tp.vocab));
  else
    HM_TRY(hm_dev_crossentropy_forward_backward(dv, a->losses, a->logits, a->logits, a->targets,
                                                (double)loss_weight / N, N, V, V));
  void *dlnf = s->sD;
  HM_TRY(hm_device_zero(dv, dlnf, NC * es));
  HM_TRY(hm_mx_matmul_backward(s, dlnf, NULL, a->logits, a->lnf, s->lm_head, N, C, s->tp.vocab));
  HM_TRY(hm_tp_allreduce(s, dlnf, NC, HM_TP_SUM));
  HM_TRY(hm_device_zero(dv, s->dresid, NC * es));
  return hm_dev_rmsnorm_backward(dv, s->dresid, G(s, s->lnfw), dlnf, hm_llama_block_input(s, a, s->n_blocks),
                                 P(s, s->lnfw), a->lnf_rstd, N, C);
}

hm_status hm_llama_backward(hm_stage *s, int mb, const void *dout, float loss_weight) {
  hm_device *dv = s->dev;
  hm_mb_acts *a = &s->mb[mb];
  const int B = s->B, T = s->T, C = (int)s->cfg.C;
  const size_t NC = (size_t)B * T * C, es = hm_device_elem_size(dv);
  if (s->has_head) {
    HM_TRY(hm_llama_head_backward(s, a, mb, loss_weight));
    HM_TRY(hm_stage_layer_done(s, (int)s->cfg.L + 1));
  } else {
    if (!dout) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): backward needs the output gradient", s->first, s->last);
    HM_TRY(hm_device_copy_d2d(dv, s->dresid, dout, NC * es));
  }
  for (int b = s->n_blocks - 1; b >= 0; b--) {
    HM_TRY(hm_llama_block_backward(s, b, &a->lblocks[b], hm_llama_block_input(s, a, b)));
    HM_TRY(hm_stage_layer_done(s, s->first_block + b + 1));
  }
  if (!s->has_embed) return HM_OK;
  HM_TRY(hm_device_zero(dv, s->dzpe, (size_t)T * C * es)); /* the position gradient is not wanted */
  if (s->tp.size > 1) HM_TRY(hm_tp_embed_backward(s, a, s->dzpe));
  else HM_TRY(hm_dev_encoder_backward(dv, G(s, s->wte), s->dzpe, s->dresid, a->tokens, B, T, C));
  return hm_stage_layer_done(s, 0);
}
