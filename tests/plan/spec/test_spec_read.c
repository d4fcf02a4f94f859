/* Spec readers on good input: every example parses, model configs expand to hand-computed
 * parameter counts, FLOPs and activation bytes, writers round-trip, rank mapping and link
 * lookup agree with the file, training settings resolve, profiles interpolate. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "hetmix/spec.h"

#define EX(name) HM_SOURCE_DIR "/examples/" name

static void assert_ok(hm_status st) {
  if (st != HM_OK) fail_msg("status %s: %s", hm_status_name(st), hm_last_error());
}

/* Spec numbers are read with strtod (correctly rounded) and converted by at most a few f64
 * operations (units, derived figures): ~1e-15 relative; 1e-9 relative (+1e-12 for zeros) is far
 * below any wrong unit or field. */
static void assert_close(double got, double want) {
  if (fabs(got - want) > 1e-9 * fabs(want) + 1e-12) fail_msg("got %.17g, want %.17g", got, want);
}

static void test_examples_parse(void **state) {
  (void)state;
  static const struct {
    const char *file;
    int64_t devices, hosts;
    int ntypes;
  } clusters[] = {{EX("local-2backend.json"), 2, 1, 2},
                  {EX("reference-768.json"), 768, 112, 2},
                  {EX("mixed-1024-3types.json"), 1024, 160, 3},
                  {EX("mixed-10240-3types.json"), 10240, 1600, 3}};
  for (size_t i = 0; i < sizeof clusters / sizeof clusters[0]; i++) {
    hm_cluster c;
    assert_ok(hm_cluster_load(clusters[i].file, &c));
    assert_int_equal(c.ndevices, clusters[i].devices);
    assert_int_equal(c.nhosts, clusters[i].hosts);
    assert_int_equal(c.ntypes, clusters[i].ntypes);
    int64_t sum = 0;
    for (int t = 0; t < c.ntypes; t++) sum += c.types[t].count;
    assert_int_equal(sum, c.ndevices);
    hm_cluster_free(&c);
  }
  hm_cluster c;
  assert_ok(hm_cluster_load(EX("reference-768.json"), &c));
  int mi = hm_cluster_find_type(&c, "mi250"), nv = hm_cluster_find_type(&c, "a100");
  assert_true(mi >= 0 && nv >= 0);
  assert_int_equal(c.types[mi].count, 128);
  assert_int_equal(c.types[nv].count, 640);
  assert_close(c.types[nv].peak_flops[HM_DTYPE_BF16], 312e12);
  assert_close(hm_device_type_peak(&c.types[nv], HM_DTYPE_FP8), 19.5e12); /* fp32 fallback */
  assert_int_equal(c.npools, 2);
  assert_int_equal(c.groups[1].nic_count, 8);
  hm_cluster_free(&c);

  const char *models[] = {EX("gpt-mini.json"), EX("gpt2-124m.json"), EX("gpt3-175b.json"),
                          EX("llama2-70b.json")};
  for (size_t i = 0; i < 4; i++) {
    hm_model m;
    assert_ok(hm_model_load(models[i], &m));
    assert_int_equal(m.nlayers, m.cfg.L + 2);
    hm_model_free(&m);
  }
  hm_train t;
  assert_ok(hm_train_load(EX("train-default.json"), &t));
  assert_int_equal(t.global_batch, 1024);
  assert_ok(hm_train_load(EX("train-local.json"), &t));
  assert_int_equal(t.precision, HM_PREC_FP32);
  hm_profile p;
  assert_ok(hm_profile_load(EX("profile-local.json"), &p));
  assert_int_equal(p.nlayers, 8);
  assert_int_equal(p.nlinks, 1);
  hm_profile_free(&p);
}

/* GPT-2 124M: 124,439,808 parameters with V = 50257 and tied embeddings
 * (wte 38,597,376 + wpe 786,432 + 12 blocks x 7,087,872 + ln_f 1,536). */
static void test_param_counts(void **state) {
  (void)state;
  hm_model m;
  assert_ok(hm_model_load(EX("gpt2-124m.json"), &m));
  assert_close(m.params, 124439808.0);
  assert_close(hm_model_config_params(&m.cfg), 124439808.0);
  assert_close(m.layers[0].params, 38597376.0 + 786432.0);
  assert_close(m.layers[1].params, 7087872.0);
  assert_close(m.layers[13].params, 1536.0);
  assert_close(m.layers[13].shared_params, 38597376.0);
  assert_int_equal(m.layers[13].shared_with, 0);
  hm_model_free(&m);

  hm_spec_model_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.arch = HM_ARCH_GPT2;
  cfg.L = 12, cfg.C = 768, cfg.NH = 12, cfg.V = 50257, cfg.T = 1024;
  cfg.tied_embeddings = 0; /* untied adds a second V x C matrix */
  assert_ok(hm_model_from_config(&cfg, HM_DTYPE_FP32, "untied", &m));
  assert_close(m.params, 124439808.0 + 38597376.0);
  assert_int_equal(m.cfg.kv_heads, 12);
  assert_int_equal(m.cfg.ffn, 3072);
  hm_model_free(&m);

  /* Llama-2-70B: 68,976,648,192 (blocks 80 x 855,654,400; embedding and head 262,144,000
   * each; final norm 8,192). */
  assert_ok(hm_model_load(EX("llama2-70b.json"), &m));
  assert_close(m.layers[1].params, 855654400.0);
  assert_close(m.params, 68976648192.0);
  assert_int_equal(m.layers[1].tp_divides, 8);
  hm_model_free(&m);

  /* GPT-3 175B shape: 96 x 1,812,099,072 + 617,558,016 + 25,165,824 + 24,576 = 174,604,259,328. */
  assert_ok(hm_model_load(EX("gpt3-175b.json"), &m));
  assert_close(m.params, 174604259328.0);
  hm_model_free(&m);

  /* Llama default FFN: 8C/3 rounded up to a multiple of 256 (C 4096 -> 11008, as Llama-7B). */
  memset(&cfg, 0, sizeof cfg);
  cfg.arch = HM_ARCH_LLAMA;
  cfg.L = 32, cfg.C = 4096, cfg.NH = 32, cfg.V = 32000, cfg.T = 4096;
  assert_ok(hm_model_from_config(&cfg, HM_DTYPE_BF16, "llama-7b", &m));
  assert_int_equal(m.cfg.ffn, 11008);
  assert_close(m.params, 6738415616.0); /* Llama-2-7B's published count */
  hm_model_free(&m);
}

/* gpt-mini (gpt2, L 6, C 384, NH 6, V 256, T 256, fp32), every figure by hand:
 *   block params 12 C^2 + 13 C = 1,774,464
 *   block forward FLOPs 2 T (12 C^2) + 4 T^2 C = 905,969,664 + 100,663,296 = 1,006,632,960
 *   block activations 4 bytes x (16 T C + NH T^2) = 4 x (1,572,864 + 393,216) = 7,864,320
 *   head forward 2 T C V = 50,331,648; head activations 4 x (2 T C + T V) = 1,048,576
 *   total 196,608 + 6 x 1,774,464 + 768 = 10,844,160
 *   MFU FLOPs per token 6 N + 12 L C T = 65,064,960 + 7,077,888 = 72,142,848 */
static void test_layer_figures(void **state) {
  (void)state;
  hm_model m;
  assert_ok(hm_model_load(EX("gpt-mini.json"), &m));
  assert_int_equal(m.nlayers, 8);
  assert_string_equal(m.layers[0].kind, "embedding");
  assert_string_equal(m.layers[3].kind, "block");
  assert_string_equal(m.layers[7].kind, "head");
  const hm_layer *e = &m.layers[0], *b = &m.layers[1], *h = &m.layers[7];
  assert_close(e->params, 196608.0);
  assert_close(e->fwd_flops, 98304.0);
  assert_close(e->out_bytes, 256.0 * 384 * 4);
  assert_close(e->act_bytes, 1024.0);
  assert_close(b->params, 1774464.0);
  assert_close(b->fwd_flops, 1006632960.0);
  assert_close(b->bwd_flops, 2 * 1006632960.0);
  assert_close(b->act_bytes, 7864320.0);
  assert_close(b->in_bytes, 393216.0);
  assert_close(b->out_bytes, 393216.0);
  assert_close(b->tp_comm_bytes, 786432.0);
  assert_int_equal(b->tp_divides, 6);
  assert_close(h->params, 768.0);
  assert_close(h->fwd_flops, 50331648.0);
  assert_close(h->act_bytes, 1048576.0);
  assert_close(h->out_bytes, 4.0);
  assert_close(m.params, 10844160.0);
  assert_close(m.flops_per_token, 72142848.0);

  hm_train t;
  hm_train_default(&t);
  assert_close(hm_layer_train_flops(b, &t), 3 * 1006632960.0);
  assert_close(hm_layer_held_act_bytes(b, &t), 7864320.0);
  t.recompute = HM_RECOMPUTE_FULL;
  assert_close(hm_layer_train_flops(b, &t), 4 * 1006632960.0);
  assert_close(hm_layer_held_act_bytes(b, &t), 393216.0);
  hm_model_free(&m);

  /* Flash attention keeps a fp32 (NH,T) log-sum-exp instead of the (NH,T,T) softmax:
   * Llama block activations (bf16) 2 x (6 T C + 2 T kvd + 3 T F) + 4 NH T. */
  assert_ok(hm_model_load(EX("llama2-70b.json"), &m));
  double T = 4096, C = 8192, F = 28672, kvd = 1024, NH = 64;
  assert_close(m.layers[1].act_bytes, 2 * (6 * T * C + 2 * T * kvd + 3 * T * F) + 4 * NH * T);
  assert_close(m.layers[1].fwd_flops,
               2 * T * (2 * C * C + 2 * C * kvd + 3 * C * F) + 4 * T * T * C);
  assert_close(m.layers[81].params, 8192.0 + 32000.0 * 8192);
  hm_model_free(&m);
}

static const char explicit_model[] =
    "{\"name\": \"custom\", \"dtype\": \"bf16\", \"seq_len\": 128, \"layers\": ["
    " {\"kind\": \"embed\", \"fwd_flops\": 0, \"params\": 1000, \"act_bytes\": 512,"
    "  \"in_bytes\": 512, \"out_bytes\": 4096},"
    " {\"kind\": \"mix\", \"count\": 3, \"fwd_flops\": 1e9, \"param_bytes\": 2e6,"
    "  \"act_bytes\": 1e6, \"out_bytes\": 4096, \"tp_comm_bytes\": 8192, \"tp_divides\": 4},"
    " {\"kind\": \"out\", \"fwd_flops_per_token\": 3906250, \"bwd_flops\": 7e8, \"params\": 10,"
    "  \"shared_params\": 1000, \"shared_with\": 0, \"act_bytes\": 1e5, \"out_bytes\": 4}]}";

static void test_explicit_layers(void **state) {
  (void)state;
  hm_model m;
  assert_ok(hm_model_parse(explicit_model, sizeof explicit_model - 1, NULL, &m));
  assert_int_equal(m.has_config, 0);
  assert_int_equal(m.nlayers, 5);
  assert_int_equal(m.T, 128);
  assert_close(m.layers[1].params, 1e6); /* 2e6 bytes of bf16 */
  assert_close(m.layers[1].bwd_flops, 2e9);
  assert_close(m.layers[1].in_bytes, 4096);
  assert_close(m.layers[3].in_bytes, 4096);
  assert_int_equal(m.layers[2].tp_divides, 4);
  assert_int_equal(m.layers[0].tp_divides, 1); /* no tensor parallelism unless declared */
  assert_close(m.layers[4].bwd_flops, 7e8);
  assert_int_equal(m.layers[4].shared_with, 0);
  assert_close(m.params, 1000 + 3e6 + 10);
  assert_close(m.flops_per_token, (3 * 3e9 + 5e8 + 7e8) / 128);
  hm_model_free(&m);
}

static void assert_layers_equal(const hm_model *a, const hm_model *b) {
  assert_int_equal(a->nlayers, b->nlayers);
  for (int i = 0; i < a->nlayers; i++) {
    const hm_layer *x = &a->layers[i], *y = &b->layers[i];
    assert_string_equal(x->kind, y->kind);
    assert_true(x->fwd_flops == y->fwd_flops && x->bwd_flops == y->bwd_flops);
    assert_true(x->params == y->params && x->shared_params == y->shared_params);
    assert_int_equal(x->shared_with, y->shared_with);
    assert_true(x->act_bytes == y->act_bytes && x->in_bytes == y->in_bytes);
    assert_true(x->out_bytes == y->out_bytes && x->tp_comm_bytes == y->tp_comm_bytes);
    assert_true(x->tp_comm_bwd_bytes == y->tp_comm_bwd_bytes);
    assert_int_equal(x->tp_divides, y->tp_divides);
  }
}

/* Prints a spec with its writer and reads it back. */
static char *print_and_free(cJSON *j) {
  assert_non_null(j);
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  assert_non_null(s);
  return s;
}

static void test_round_trip(void **state) {
  (void)state;
  const char *clusters[] = {EX("local-2backend.json"), EX("reference-768.json"),
                            EX("mixed-10240-3types.json")};
  for (int i = 0; i < 3; i++) {
    hm_cluster a, b;
    assert_ok(hm_cluster_load(clusters[i], &a));
    char *s = print_and_free(hm_cluster_to_cjson(&a));
    assert_ok(hm_cluster_parse(s, strlen(s), "round-trip", &b));
    free(s);
    assert_string_equal(a.name, b.name);
    assert_int_equal(a.ntypes, b.ntypes);
    assert_int_equal(a.ngroups, b.ngroups);
    assert_int_equal(a.ndevices, b.ndevices);
    assert_int_equal(a.npool_links, b.npool_links);
    for (int t = 0; t < a.ntypes; t++) {
      assert_memory_equal(a.types[t].peak_flops, b.types[t].peak_flops, sizeof a.types[t].peak_flops);
      assert_true(a.types[t].memory_bytes == b.types[t].memory_bytes);
      assert_true(a.types[t].efficiency == b.types[t].efficiency);
      assert_string_equal(a.types[t].backend, b.types[t].backend);
      assert_true(a.types[t].intra_link.bandwidth == b.types[t].intra_link.bandwidth);
    }
    for (int g = 0; g < a.ngroups; g++) {
      assert_int_equal(a.groups[g].count, b.groups[g].count);
      assert_int_equal(a.groups[g].pool, b.groups[g].pool);
      assert_int_equal(a.groups[g].first_rank, b.groups[g].first_rank);
      assert_true(a.groups[g].host_link.bandwidth == b.groups[g].host_link.bandwidth);
      assert_int_equal(a.groups[g].hostnames != NULL, b.groups[g].hostnames != NULL);
    }
    hm_cluster_free(&a);
    hm_cluster_free(&b);
  }

  hm_model a, b;
  assert_ok(hm_model_load(EX("llama2-70b.json"), &a));
  char *s = print_and_free(hm_model_to_cjson(&a));
  assert_ok(hm_model_parse(s, strlen(s), "round-trip", &b));
  free(s);
  assert_layers_equal(&a, &b);
  hm_model_free(&a);
  hm_model_free(&b);

  assert_ok(hm_model_parse(explicit_model, sizeof explicit_model - 1, NULL, &a));
  s = print_and_free(hm_model_to_cjson(&a));
  assert_ok(hm_model_parse(s, strlen(s), "round-trip", &b));
  free(s);
  assert_layers_equal(&a, &b);
  hm_model_free(&a);
  hm_model_free(&b);

  /* parameter counts given as bytes that are not whole parameters, or beyond "params"' range */
  static const char by_bytes[] =
      "{\"seq_len\": 4, \"dtype\": \"bf16\", \"layers\": [{\"kind\": \"l\", \"fwd_flops\": 1, "
      "\"param_bytes\": 3, \"act_bytes\": 1, \"out_bytes\": 1}, {\"kind\": \"l\", \"fwd_flops\": 1, "
      "\"param_bytes\": 1e20, \"act_bytes\": 1, \"out_bytes\": 1}]}";
  assert_ok(hm_model_parse(by_bytes, sizeof by_bytes - 1, NULL, &a));
  assert_true(a.layers[0].params == 1.5 && a.layers[1].params == 5e19);
  s = print_and_free(hm_model_to_cjson(&a));
  assert_ok(hm_model_parse(s, strlen(s), "round-trip", &b));
  free(s);
  assert_layers_equal(&a, &b);
  hm_model_free(&a);
  hm_model_free(&b);

  hm_train ta, tb;
  assert_ok(hm_train_load(EX("train-default.json"), &ta));
  ta.recompute = HM_RECOMPUTE_FULL;
  ta.grad_bytes = 4;
  s = print_and_free(hm_train_to_cjson(&ta));
  assert_ok(hm_train_parse(s, strlen(s), "round-trip", &tb));
  free(s);
  assert_int_equal(ta.global_batch, tb.global_batch);
  assert_int_equal(ta.n_micro_batch_sizes, tb.n_micro_batch_sizes);
  assert_memory_equal(ta.micro_batch_sizes, tb.micro_batch_sizes, sizeof ta.micro_batch_sizes);
  assert_int_equal(ta.precision, tb.precision);
  assert_int_equal(ta.recompute, tb.recompute);
  assert_int_equal(ta.zero_stage, tb.zero_stage);
  assert_string_equal(ta.optimizer, tb.optimizer);
  assert_true(ta.memory_fraction == tb.memory_fraction);
  assert_true(ta.grad_bytes == 4 && tb.grad_bytes == 4 && tb.weight_bytes < 0);
}

static void test_rank_mapping_and_links(void **state) {
  (void)state;
  hm_cluster c;
  assert_ok(hm_cluster_load(EX("mixed-10240-3types.json"), &c));
  int64_t per_type[8] = {0};
  for (int64_t r = 0; r < c.ndevices; r++) {
    hm_rank_loc loc;
    assert_ok(hm_cluster_locate(&c, r, &loc));
    int64_t back = -1;
    assert_ok(hm_cluster_rank(&c, loc.group, loc.host_in_group, loc.type, loc.index_in_type, &back));
    assert_int_equal(back, r);
    per_type[loc.type]++;
  }
  for (int t = 0; t < c.ntypes; t++) assert_int_equal(per_type[t], c.types[t].count);
  hm_rank_loc loc;
  assert_int_equal(hm_cluster_locate(&c, c.ndevices, &loc), HM_ERR_INVALID_ARG);
  assert_ok(hm_cluster_locate(&c, 2560 + 8 * 3 + 5, &loc)); /* group 1 (a100), host 3, dev 5 */
  assert_int_equal(loc.group, 1);
  assert_int_equal(loc.host, 323);
  assert_int_equal(loc.host_in_group, 3);
  assert_int_equal(loc.local_device, 5);
  hm_cluster_free(&c);

  assert_ok(hm_cluster_load(EX("reference-768.json"), &c));
  hm_link l;
  assert_ok(hm_cluster_link_ranks(&c, 128, 129, &l)); /* two A100s in one host: NVLink */
  assert_close(l.bandwidth, 300e9);
  assert_ok(hm_cluster_link_ranks(&c, 0, 4, &l)); /* MI250s on two hosts of one room: NIC */
  assert_close(l.bandwidth, 25e9);
  assert_close(l.latency, 5e-6);
  assert_ok(hm_cluster_link_ranks(&c, 0, 767, &l)); /* across the rooms: NIC + pool link */
  assert_close(l.bandwidth, 25e9);
  assert_close(l.latency, 15e-6);
  assert_int_equal(hm_cluster_link(&c, 0, 0, 1, 1, 1, &l), HM_ERR_INVALID_ARG);
  hm_cluster_free(&c);

  assert_ok(hm_cluster_load(EX("local-2backend.json"), &c));
  assert_ok(hm_cluster_link_ranks(&c, 0, 1, &l)); /* cpu <-> ref in one host: host_link */
  assert_close(l.bandwidth, 6e9);
  assert_int_equal(c.types[0].count, 1);
  assert_string_equal(c.types[0].backend, "cpu:threads=1");
  assert_string_equal(c.groups[0].hostnames[0], "localhost");
  hm_cluster_free(&c);
}

static void test_train_resolve(void **state) {
  (void)state;
  hm_cluster c;
  hm_model m;
  hm_train t;
  assert_ok(hm_cluster_load(EX("local-2backend.json"), &c));
  assert_ok(hm_model_load(EX("gpt-mini.json"), &m));
  hm_train_default(&t);
  assert_int_equal(t.precision, HM_PREC_AUTO);
  assert_ok(hm_spec_resolve(&c, &m, &t, NULL));
  assert_int_equal(t.precision, HM_PREC_FP32);
  assert_int_equal(t.compute_dtype, HM_DTYPE_FP32);
  assert_close(t.weight_bytes + t.grad_bytes + t.master_bytes + t.optimizer_bytes, 16.0);
  assert_close(t.master_bytes, 0.0);

  /* bf16-mixed on an fp32 model is a contradiction the user must resolve. */
  static const char bf16[] = "{\"global_batch\": 8, \"precision\": \"bf16-mixed\"}";
  assert_ok(hm_train_parse(bf16, sizeof bf16 - 1, NULL, &t));
  assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "train.precision"));
  hm_model_free(&m);

  assert_ok(hm_model_load(EX("llama2-70b.json"), &m));
  assert_ok(hm_train_parse(bf16, sizeof bf16 - 1, NULL, &t));
  assert_ok(hm_spec_resolve(&c, &m, &t, NULL));
  assert_int_equal(t.compute_dtype, HM_DTYPE_BF16);
  assert_close(t.weight_bytes, 2);
  assert_close(t.grad_bytes, 4); /* f32 gradients, as the bf16-mixed runtime keeps them */
  assert_close(t.master_bytes, 4);
  assert_close(t.optimizer_bytes, 8);
  /* Default micro-batch sizes stop at the global batch. */
  static const char small[] = "{\"global_batch\": 3}";
  assert_ok(hm_train_parse(small, sizeof small - 1, NULL, &t));
  assert_int_equal(t.n_micro_batch_sizes, 2);
  assert_int_equal(t.micro_batch_sizes[1], 2);
  hm_model_free(&m);
  hm_cluster_free(&c);
}

static void test_profile(void **state) {
  (void)state;
  hm_cluster c;
  hm_model m;
  hm_profile p;
  hm_train t;
  assert_ok(hm_cluster_load(EX("local-2backend.json"), &c));
  assert_ok(hm_model_load(EX("gpt-mini.json"), &m));
  assert_ok(hm_profile_load(EX("profile-local.json"), &p));
  hm_train_default(&t);
  assert_ok(hm_spec_resolve(&c, &m, &t, &p));
  int cpu = hm_cluster_find_type(&c, "cpu"), ref = hm_cluster_find_type(&c, "ref");
  double f = 0, b = 0;
  assert_int_equal(hm_profile_layer_time(&p, cpu, "block", 4, &f, &b), 1);
  assert_close(f, 0.0118);
  assert_close(b, 0.0251);
  assert_int_equal(hm_profile_layer_time(&p, cpu, "block", 2, &f, &b), 1); /* interpolated */
  assert_close(f, 0.0031 + (0.0118 - 0.0031) / 3);
  assert_close(b, 0.0065 + (0.0251 - 0.0065) / 3);
  assert_int_equal(hm_profile_layer_time(&p, cpu, "block", 8, &f, &b), 1); /* scaled from 4 */
  assert_close(f, 0.0236);
  assert_int_equal(hm_profile_layer_time(&p, ref, "head", 1, &f, &b), 1); /* scaled from 4 */
  assert_close(f, 0.009 / 4);
  assert_int_equal(hm_profile_layer_time(&p, cpu, "moe", 4, &f, &b), 0);
  hm_link l;
  assert_int_equal(hm_profile_link_find(&p, ref, cpu, 0, &l), 1);
  assert_close(l.bandwidth, 5.1e9);
  assert_int_equal(hm_profile_link_find(&p, ref, cpu, 1, &l), 0);

  /* The writer (used by `hetmix profile`) produces a file the reader accepts unchanged. */
  char path[] = "/tmp/hm_profile_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_ok(hm_profile_write(&p, path));
  hm_profile q;
  assert_ok(hm_profile_load(path, &q));
  unlink(path);
  assert_int_equal(q.nlayers, p.nlayers);
  assert_int_equal(q.nlinks, p.nlinks);
  assert_string_equal(q.model, "gpt-mini");
  for (int i = 0; i < p.nlayers; i++) {
    assert_string_equal(q.layers[i].kind, p.layers[i].kind);
    assert_true(q.layers[i].fwd_s == p.layers[i].fwd_s);
    assert_true(q.layers[i].mem_bytes == p.layers[i].mem_bytes);
  }
  /* Against another cluster the device type names do not resolve: the error names the entry. */
  hm_cluster other;
  assert_ok(hm_cluster_load(EX("reference-768.json"), &other));
  assert_int_equal(hm_profile_resolve(&q, &other, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "profile.layers[0].device_type: unknown device type \"cpu\""));
  hm_model gpt2;
  assert_ok(hm_model_load(EX("gpt2-124m.json"), &gpt2));
  assert_int_equal(hm_profile_resolve(&q, &c, &gpt2), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "profile.model"));
  hm_model_free(&gpt2);
  hm_cluster_free(&other);
  hm_profile_free(&q);

  /* Built in memory by a profiler: duplicates are refused. */
  hm_profile built;
  memset(&built, 0, sizeof built);
  hm_profile_layer e = {.device_type = "cpu", .kind = "block", .micro_batch = 2, .fwd_s = 1,
                        .bwd_s = 2};
  assert_ok(hm_profile_add_layer(&built, &e));
  assert_int_equal(hm_profile_add_layer(&built, &e), HM_ERR_SPEC);
  e.fwd_s = -1;
  e.micro_batch = 3;
  assert_int_equal(hm_profile_add_layer(&built, &e), HM_ERR_INVALID_ARG);
  assert_int_equal(built.nlayers, 1);
  hm_profile_free(&built);

  hm_profile_free(&p);
  hm_model_free(&m);
  hm_cluster_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_examples_parse),     cmocka_unit_test(test_param_counts),
      cmocka_unit_test(test_layer_figures),      cmocka_unit_test(test_explicit_layers),
      cmocka_unit_test(test_round_trip),         cmocka_unit_test(test_rank_mapping_and_links),
      cmocka_unit_test(test_train_resolve),      cmocka_unit_test(test_profile),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
