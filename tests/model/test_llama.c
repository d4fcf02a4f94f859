/* Llama stages and the one model description: the planner's per-layer parameter counts
 * (hm_model_from_config) equal what a stage allocates for gpt2 and llama; stages cut at every
 * layer give the loss and gradients of one stage (f64, ref); config checks name the field; a Llama
 * checkpoint samples text. Gradients against PyTorch: test_model_oracle; kernels:
 * test_device_ops, test_device_grad. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h"

// L2 C16 NH4 kv 2 ffn 24 V11 T6: GQA with two query heads per KV head, every tensor small
static const hm_spec_model_config small = {HM_ARCH_LLAMA, 2, 16, 4, 2, 24, 11, 6, 0, 0};
enum { SB = 2, ST = 5 };

static hm_stage *make_stage(hm_device *d, const hm_spec_model_config *c, int first, int last, int B, int T) {
  hm_stage_options o = {first, last, B, T, 1, HM_STAGE_TP_NONE};
  hm_stage *s = NULL;
  hm_status st = hm_stage_create(c, d, &o, &s);
  if (st != HM_OK) fail_msg("stage [%d,%d): %s", first, last, hm_last_error());
  return s;
}

/* Each one-layer stage holds exactly the planner's layer parameters (plus, for a tied head on
 * its own, its copy of the shared embedding), and the whole model hm_model_config_params. */
static void check_layer_params(const hm_spec_model_config *c) {
  hm_model m;
  assert_int_equal(hm_model_from_config(c, HM_DTYPE_FP32, "t", &m), HM_OK);
  assert_int_equal(m.nlayers, hm_model_num_layers(c));
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref", &d), HM_OK);
  for (int l = 0; l < m.nlayers; l++) {
    hm_stage_memory mem;
    hm_stage_options o = {l, l + 1, 1, 4, 1, HM_STAGE_TP_NONE};
    assert_int_equal(hm_stage_estimate(c, d, &o, &mem), HM_OK);
    double want = m.layers[l].params + (l == m.nlayers - 1 ? m.layers[l].shared_params : 0);
    if ((double)mem.n_params != want)
      fail_msg("%s layer %d: the stage allocates %zu parameters, the planner counts %.17g", hm_arch_name(c->arch), l,
               mem.n_params, want);
  }
  hm_stage_memory all;
  hm_stage_options o = {0, m.nlayers, 1, 4, 1, HM_STAGE_TP_NONE};
  assert_int_equal(hm_stage_estimate(c, d, &o, &all), HM_OK);
  assert_true((double)all.n_params == hm_model_config_params(c) && m.params == hm_model_config_params(c));
  hm_model_free(&m);
  hm_device_close(d);
}

static void test_layer_params_match_planner(void **state) {
  (void)state;
  static const char *const names[] = {"tiny", "gpt-mini", "gpt2-124m", "llama-tiny", "llama-mini"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    hm_spec_model_config c;
    assert_int_equal(hm_model_config_lookup(names[i], &c), HM_OK);
    check_layer_params(&c);
  }
  check_layer_params(&small);
  hm_spec_model_config c;
  assert_int_equal(hm_model_config_lookup("llama-mini", &c), HM_OK);
  assert_true(hm_model_config_params(&c) == 10818432);  // 2VC + C + L (2C^2 + 2C kvd + 3C ffn + 2C)
  hm_tp_sizes tp;  // tensor parallelism 2 and 3 split llama-mini (the vocabulary 256 unevenly at 3)
  assert_int_equal(hm_stage_tp_sizes(&c, 2, 1, &tp), HM_OK);
  assert_int_equal(tp.heads, 6);
  assert_int_equal(tp.vocab, 128);
  for (int r = 0; r < 3; r++) {
    assert_int_equal(hm_stage_tp_sizes(&c, 3, r, &tp), HM_OK);
    assert_int_equal(tp.vocab_lo, r * 256 / 3);
    assert_int_equal(tp.vocab, (r + 1) * 256 / 3 - r * 256 / 3);
  }
  assert_int_equal(hm_stage_tp_sizes(&c, 4, 0, &tp), HM_ERR_INVALID_ARG);  // 12 heads, 6 kv heads
}

static double logits_loss(const hm_stage *s, const int32_t *tgt, int N, int V) {
  const double *logits = hm_stage_output((hm_stage *)s, 0);
  double sum = 0;
  for (int r = 0; r < N; r++) {
    const double *row = logits + (size_t)r * V;
    double mx = row[0], z = 0;
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    for (int v = 0; v < V; v++) z += exp(row[v] - mx);
    sum += -(row[tgt[r]] - mx - log(z));
  }
  return sum / N;
}

/* The model cut into one stage per layer gives one stage's loss and gradients (f64), no stage
 * has a tied gradient to exchange, and a block stage's input gradient matches finite
 * differences through the rest of the chain. */
static void test_stage_chain_matches_whole(void **state) {
  (void)state;
  const hm_spec_model_config *c = &small;
  const int NL = (int)c->L + 2, N = SB * ST, V = (int)c->V, C = (int)c->C;
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref:dtype=f64", &d), HM_OK);
  hm_stage *whole = make_stage(d, c, 0, NL, SB, ST), *parts[4];
  assert_int_equal(hm_stage_init_params(whole, 5), HM_OK);
  for (int l = 0; l < NL; l++) {
    parts[l] = make_stage(d, c, l, l + 1, SB, ST);
    assert_int_equal(hm_stage_init_params(parts[l], 5), HM_OK);
    assert_null(hm_stage_tied_grad(parts[l], NULL));
  }
  int32_t inp[N], tgt[N];
  for (int i = 0; i < N; i++) {
    inp[i] = (int32_t)(hm_splitmix64(3 + 2 * (uint64_t)i) % (uint64_t)V);
    tgt[i] = (int32_t)(hm_splitmix64(4 + 2 * (uint64_t)i) % (uint64_t)V);
  }
  float lw = 0, lc = 0;
  assert_int_equal(hm_stage_zero_grad(whole), HM_OK);
  assert_int_equal(hm_stage_forward(whole, 0, inp, NULL, tgt, &lw), HM_OK);
  assert_int_equal(hm_stage_backward(whole, 0, NULL, 1.0f), HM_OK);
  for (int l = 0; l < NL; l++) {
    assert_int_equal(hm_stage_zero_grad(parts[l]), HM_OK);
    assert_int_equal(hm_stage_forward(parts[l], 0, l == 0 ? inp : NULL, l ? hm_stage_output(parts[l - 1], 0) : NULL,
                                      l == NL - 1 ? tgt : NULL, l == NL - 1 ? &lc : NULL),
                     HM_OK);
  }
  assert_true(lw == lc);
  for (int l = NL - 1; l >= 0; l--)
    assert_int_equal(hm_stage_backward(parts[l], 0, l == NL - 1 ? NULL : hm_stage_dinput(parts[l + 1]), 1.0f), HM_OK);
  int n_whole = hm_stage_num_tensors(whole), n_parts = 0;
  for (int l = 0; l < NL; l++) {
    n_parts += hm_stage_num_tensors(parts[l]);
    for (int ti = 0; ti < hm_stage_num_tensors(parts[l]); ti++) {
      const char *name = hm_stage_tensor_name(parts[l], ti);
      int wi = hm_stage_find_tensor(whole, name);
      assert_true(wi >= 0);
      const double *a = (const double *)hm_stage_grads(parts[l]) + hm_stage_tensor_offset(parts[l], ti);
      const double *b = (const double *)hm_stage_grads(whole) + hm_stage_tensor_offset(whole, wi);
      for (size_t j = 0; j < hm_stage_tensor_numel(parts[l], ti); j++)
        if (a[j] != b[j]) fail_msg("%s[%zu]: split %.17g whole %.17g", name, j, a[j], b[j]);  // same sums, same order
    }
  }
  assert_int_equal(n_parts, n_whole);  // untied: no tensor is held twice
  // the second block's input gradient against central differences of the f64 loss
  const int probe = 2;
  double *x = malloc((size_t)N * C * sizeof *x), *dx = malloc((size_t)N * C * sizeof *dx);
  memcpy(x, hm_stage_output(parts[probe - 1], 0), (size_t)N * C * sizeof *x);
  memcpy(dx, hm_stage_dinput(parts[probe]), (size_t)N * C * sizeof *dx);
  const double h = 1e-5;
  for (size_t i = 0; i < (size_t)N * C; i += 3) {
    double lpm[2];
    for (int sgn = 0; sgn < 2; sgn++) {
      double keep = x[i];
      x[i] = keep + (sgn ? -h : h);
      for (int l = probe; l < NL; l++)
        assert_int_equal(hm_stage_forward(parts[l], 0, NULL, l == probe ? x : hm_stage_output(parts[l - 1], 0),
                                          l == NL - 1 ? tgt : NULL, NULL), HM_OK);
      x[i] = keep;
      lpm[sgn] = logits_loss(parts[NL - 1], tgt, N, V);
    }
    double fd = (lpm[0] - lpm[1]) / (2 * h);
    /* O(h^2) truncation (~1e-10) plus u64 |L| / h rounding (~1e-10): far below 1e-7 */
    if (fabs(fd - dx[i]) > 1e-7 + 1e-5 * fabs(fd)) fail_msg("dinput[%zu]: backward %.10g, finite difference %.10g", i, dx[i], fd);
  }
  free(x);
  free(dx);
  for (int l = 0; l < NL; l++) hm_stage_destroy(parts[l]);
  hm_stage_destroy(whole);
  hm_device_close(d);
}

/* What the stages cannot run is refused naming the field, before anything is allocated. */
static void test_config_checks(void **state) {
  (void)state;
  hm_spec_model_config c = small;
  c.kv_heads = 3;  // does not divide NH = 4
  assert_int_equal(hm_model_config_check(&c), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "kv_heads"));
  c = small;
  c.C = 12, c.NH = 4, c.kv_heads = 2;  // head size 3: rotary pairs need an even size
  assert_int_equal(hm_model_config_check(&c), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "even"));
  c = small;
  c.tied_embeddings = 1;
  assert_int_equal(hm_model_config_check(&c), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "untied"));
  assert_int_equal(hm_model_config_lookup("tiny", &c), HM_OK);
  c.ffn = 100;
  assert_int_equal(hm_model_config_check(&c), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "ffn"));
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("ref", &d), HM_OK);
  hm_stage *s = NULL;
  hm_stage_options o = {0, 4, 1, 4, 1, HM_STAGE_TP_NONE};
  assert_int_equal(hm_stage_create(&c, d, &o, &s), HM_ERR_INVALID_ARG);
  assert_null(s);
  hm_device_close(d);
}

/* A spec model file (the planner's model JSON) is a trainable config; a layer list is not. */
static void test_model_file(void **state) {
  (void)state;
  char dir[] = "/tmp/hm-llama-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[64];
  snprintf(path, sizeof path, "%s/m.json", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"name\": \"mine\", \"config\": {\"arch\": \"llama\", \"L\": 2, \"C\": 16, \"NH\": 4, "
        "\"kv_heads\": 2, \"ffn\": 24, \"V\": 11, \"T\": 6}}\n", f);
  fclose(f);
  hm_spec_model_config c;
  char name[64];
  assert_int_equal(hm_model_config_resolve(path, &c, name, sizeof name), HM_OK);
  assert_string_equal(name, "mine");
  assert_true(hm_model_config_same(&c, &small));
  f = fopen(path, "w");
  fputs("{\"version\": 1, \"seq_len\": 4, \"layers\": [{\"kind\": \"block\", \"fwd_flops\": 1, \"params\": 1, "
        "\"act_bytes\": 1, \"out_bytes\": 1}]}\n", f);
  fclose(f);
  assert_int_equal(hm_model_config_resolve(path, &c, name, sizeof name), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "config"));
  unlink(path);
  rmdir(dir);
}

/* hetmix sample's path: a Llama checkpoint (untied head, rotary positions) generates text; greedy
 * decoding is deterministic and each step runs a shorter sequence than the created T. */
static void test_sample_from_checkpoint(void **state) {
  (void)state;
  char dir[] = "/tmp/hm-llama-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[64];
  snprintf(path, sizeof path, "%s/ckpt.hmc", dir);
  hm_spec_model_config c;
  assert_int_equal(hm_model_config_lookup("llama-tiny", &c), HM_OK);
  hm_device *d = NULL;
  assert_int_equal(hm_device_open("cpu:threads=1", &d), HM_OK);
  hm_stage *s = make_stage(d, &c, 0, (int)c.L + 2, 1, (int)c.T);
  assert_int_equal(hm_stage_init_params(s, 77), HM_OK);
  hm_ckpt_meta meta;
  memset(&meta, 0, sizeof meta);
  snprintf(meta.model_name, sizeof meta.model_name, "llama-tiny");
  assert_int_equal(hm_stage_save(s, path, &meta), HM_OK);
  hm_stage_destroy(s);
  hm_device_close(d);
  char a[64], b[64];
  assert_int_equal(hm_sample_text("cpu", path, "The ", 30, 0.0f, 0, 1, a, sizeof a), HM_OK);
  assert_int_equal(hm_sample_text("ref", path, "The ", 30, 0.0f, 0, 1, b, sizeof b), HM_OK);
  assert_int_equal(strlen(a), 34);
  assert_memory_equal(a, "The ", 4);
  assert_int_equal(hm_sample_text("cpu", path, "The ", 30, 0.8f, 40, 7, b, sizeof b), HM_OK);
  assert_int_equal(strlen(b), 34);
  unlink(path);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layer_params_match_planner), cmocka_unit_test(test_stage_chain_matches_whole),
      cmocka_unit_test(test_config_checks), cmocka_unit_test(test_model_file),
      cmocka_unit_test(test_sample_from_checkpoint),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
