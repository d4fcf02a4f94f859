/* bf16 mixed precision of a stage (docs/model.md, "bf16 mixed precision"): the GEMM-facing calls
 * of gpt.c and llama.c go through here and pick the f32 kernels or the bf16 ones. In bf16 the
 * stage keeps f32 master weights, f32 gradients and f32 AdamW moments, and a bf16 copy of the
 * weights made once per optimizer step (on the first forward after it); the activations saved
 * as a GEMM's input are stored in bf16 (the norms', GELU's, SwiGLU's and attention's outputs),
 * rounded from an f32 result in the backward scratch. */
#include "model/stage_internal.h"
#include "util/util.h"

size_t hm_mx_gemm_in_size(const hm_stage *s) { return s->bf16 ? 2 : hm_device_elem_size(s->dev); }

hm_status hm_mx_refresh_weights(hm_stage *s) {
  if (!s->bf16 || !s->w16_stale) return HM_OK;
  HM_TRY(hm_dev_to_bf16(s->dev, s->w16, s->params, s->n_params));
  s->w16_stale = 0;
  return HM_OK;
}

void *hm_mx_result(hm_stage *s, void *dst) { return s->bf16 ? s->sB : dst; }

hm_status hm_mx_gemm_input(hm_stage *s, void *dst, const void *result, size_t n) {
  return s->bf16 ? hm_dev_to_bf16(s->dev, dst, result, n) : HM_OK;
}

static void *hm_w16(hm_stage *s, int i) { return hm_device_offset_bytes(s->dev, s->w16, s->tensors[i].offset * 2); }

hm_status hm_mx_matmul_forward(hm_stage *s, void *out, const void *inp, int wi, const void *bias, int N, int C,
                               int OC) {
  if (s->bf16) return hm_dev_matmul_forward_bf16(s->dev, out, inp, hm_w16(s, wi), bias, N, C, OC);
  return hm_dev_matmul_forward(s->dev, out, inp, P(s, wi), bias, N, C, OC);
}

hm_status hm_mx_matmul_backward(hm_stage *s, void *dinp, void *dbias, const void *dout, const void *inp, int wi,
                                int N, int C, int OC) {
  if (s->bf16) return hm_dev_matmul_backward_bf16(s->dev, dinp, G(s, wi), dbias, dout, inp, hm_w16(s, wi), N, C, OC);
  return hm_dev_matmul_backward(s->dev, dinp, G(s, wi), dbias, dout, inp, P(s, wi), N, C, OC);
}

size_t hm_mx_attention_saved(const hm_stage *s, int C, int NH) {
  if (s->bf16) return hm_dev_attention_bf16_saved_elems(s->B, s->T, C, NH);
  return hm_dev_attention_saved_elems(s->dev, s->B, s->T, C, NH);
}

hm_status hm_mx_attention_forward(hm_stage *s, void *out, void *saved, const void *qkv, int C, int NH) {
  if (s->bf16) return hm_dev_attention_forward_bf16(s->dev, out, saved, qkv, s->B, s->T, C, NH);
  return hm_dev_attention_forward(s->dev, out, saved, qkv, s->B, s->T, C, NH);
}

hm_status hm_mx_attention_backward(hm_stage *s, void *dqkv, const void *dout, const void *qkv, const void *saved,
                                   int C, int NH) {
  if (s->bf16) return hm_dev_attention_backward_bf16(s->dev, dqkv, dout, qkv, saved, s->B, s->T, C, NH);
  return hm_dev_attention_backward(s->dev, dqkv, dout, qkv, saved, s->B, s->T, C, NH);
}
