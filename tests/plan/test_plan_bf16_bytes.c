/* bf16-mixed bytes, planner against runtime, for GPT-2 and Llama:
 *  - per parameter the planner counts the runtime's (bf16 weight copy, f32 gradients, f32 master
 *    weights, f32 AdamW moments: hm_spec_resolve against hm_stage's memory accounting);
 *  - activations: the runtime's stage keeps the layout of docs/model.md, "bf16 mixed precision"
 *    (GEMM inputs bf16, the rest fp32, the fp32 log-sum-exp attention), checked here against
 *    that formula; the planner's bf16 figure (docs/spec.md) assumes every activation in bf16 and
 *    is printed beside it: the known gap docs/spec.md states.
 * The runtime also keeps per-token norm statistics, losses and targets (4 bytes each, at most 4
 * per token) and aligns each buffer to 64 bytes: the bound is those bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "hetmix/spec.h"

#define EX(name) HM_SOURCE_DIR "/examples/" name

enum { B = 2 };

static hm_stage_memory runtime(const hm_spec_model_config *cfg, hm_device *d, int first, int last) {
  hm_stage_options so = {first, last, B, (int)cfg->T, 1, HM_STAGE_TP_NONE};
  hm_stage_memory m;
  assert_int_equal(hm_stage_estimate_prec(cfg, d, &so, HM_PREC_BF16_MIXED, &m), HM_OK);
  return m;
}

static void check_model(const char *name) {
  hm_spec_model_config cfg;
  assert_int_equal(hm_model_config_lookup(name, &cfg), HM_OK);
  hm_model m;
  assert_int_equal(hm_model_from_config(&cfg, HM_DTYPE_BF16, name, &m), HM_OK);
  cfg = m.cfg; /* completed */
  hm_cluster c;
  hm_train t;
  assert_int_equal(hm_cluster_load(EX("local-2backend.json"), &c), HM_OK);
  hm_train_default(&t);
  t.precision = HM_PREC_BF16_MIXED;
  assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_OK);
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref", &d), HM_OK);
  const double N = (double)B * (double)cfg.T, C = (double)cfg.C;

  /* per parameter: a whole-model stage */
  hm_stage_memory all = runtime(&cfg, d, 0, (int)cfg.L + 2);
  const double per_param = (double)(all.params + all.weights_bf16 + all.grads + all.optimizer) / (double)all.n_params;
  const double planned = t.weight_bytes + t.grad_bytes + t.master_bytes + t.optimizer_bytes;
  print_message("%s: bytes per parameter: planner %.3f, runtime %.3f\n", name, planned, per_param);
  assert_true(per_param >= planned && per_param <= planned + 5 * 64.0 / (double)all.n_params);

  /* one block: the stage [1,2) holds its input (N C f32) and the block */
  const double T = (double)cfg.T, NH = (double)cfg.NH, F = (double)cfg.ffn, V = (double)cfg.V;
  const double kvd = C * (double)cfg.kv_heads / NH;
  const double gemm_in = cfg.arch == HM_ARCH_GPT2 ? 7 * T * C : 3 * T * C + T * F;
  const double kept = cfg.arch == HM_ARCH_GPT2 ? 16 * T * C : 6 * T * C + 2 * T * kvd + 3 * T * F;
  const double layout_block = B * (2 * gemm_in + 4 * (kept - gemm_in) + 4 * NH * T);
  hm_stage_memory blk = runtime(&cfg, d, 1, 2);
  const double rt_block = (double)blk.activations - N * C * 4, plan_block = m.layers[1].act_bytes * B;
  print_message("%s: block activations per micro-batch of %d: runtime %.0f, its layout %.0f, planner %.0f (x%.3f)\n",
                name, B, rt_block, layout_block, plan_block, rt_block / plan_block);
  assert_true(rt_block >= layout_block && rt_block <= layout_block + 4 * 4 * N + 16 * 64);

  /* the head: its input, the norm out (bf16), the logits (fp32) */
  hm_stage_memory head = runtime(&cfg, d, (int)cfg.L + 1, (int)cfg.L + 2);
  const double layout_head = B * (4 * (T * C + T * V) + 2 * T * C), plan_head = m.layers[m.nlayers - 1].act_bytes * B;
  print_message("%s: head activations: runtime %.0f, its layout %.0f, planner %.0f\n", name, (double)head.activations,
                layout_head, plan_head);
  assert_true((double)head.activations >= layout_head && (double)head.activations <= layout_head + 4 * 4 * N + 8 * 64);
  hm_device_close(d);
  hm_model_free(&m);
  hm_cluster_free(&c);
}

static void test_gpt2(void **state) {
  (void)state;
  check_model("gpt-mini");
}

static void test_llama(void **state) {
  (void)state;
  check_model("llama-mini");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_gpt2), cmocka_unit_test(test_llama)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
