/* The GEMM shape model (src/plan/gemmcost.c, docs/plan.md "Shape-aware compute"): efficiency
 * rises with GEMM size toward the type's `efficiency`, wave quantization steps, tensor
 * parallelism divides the work, known GPU names get defaults, and the cluster spec's "gemm"
 * object is validated strictly and written back. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "hetmix/spec.h"
#include "plan/plan_internal.h"

/* A100-like: 108 units, 256 x 128 tiles, 312 TFLOP/s, 2.039 TB/s, bf16 */
static const hm_gemm_device a100 = {312e12, 0.8, 2.039e12, 2, 108, 256, 128};

static void test_efficiency_rises_with_size(void **state) {
  (void)state;
  double prev = 0;
  for (double n = 256; n <= 8192; n *= 2) {
    double e = hm_gemm_efficiency(&a100, n, n, n, 1);
    assert_true(e > prev);
    assert_true(e <= a100.efficiency + 1e-12);
    prev = e;
  }
  /* 8192^2 outputs: 32 x 64 = 2048 tiles in 19 waves of 108, 2048/2052 of the units busy;
   * 16384^2 fills 8192 of 8208 (the same fraction): never below, never above the plateau */
  assert_true(fabs(prev / a100.efficiency - 2048.0 / 2052) < 1e-12);
  double e16 = hm_gemm_efficiency(&a100, 16384, 16384, 16384, 1);
  assert_true(e16 >= prev * (1 - 1e-12) && e16 <= a100.efficiency);
  /* a skinny GEMM is memory-bound: bytes over bandwidth */
  double t = hm_gemm_time(&a100, 8192, 8192, 8, 1);
  assert_true(fabs(t - 2.0 * (8192.0 * 8 * 2 + 8192.0 * 8192) / a100.membw) <= 1e-12 * t);
}

static void test_wave_quantization_steps(void **state) {
  (void)state;
  /* exactly one full wave (108 tiles of 256 x 128), then one row more: a second wave */
  double M = 256.0 * 108, K = 8192;
  double t1 = hm_gemm_time(&a100, M, 128, K, 1);
  double t2 = hm_gemm_time(&a100, M + 1, 128, K, 1);
  assert_true(fabs(t2 / t1 - 2.0) < 1e-12);
  /* inside one tile the time does not change: padding costs a whole tile */
  assert_true(hm_gemm_time(&a100, 200, 100, K, 1) == hm_gemm_time(&a100, 256, 128, K, 1));
  /* batched GEMMs fill waves together: 108 batches of one tile take one wave (compute only:
   * with A100 bandwidth, 108 separate 256 x 8192 x 128 GEMMs are memory-bound) */
  hm_gemm_device c = a100;
  c.membw = 1e30;
  assert_true(fabs(hm_gemm_time(&c, 256, 128, K, 108) - hm_gemm_time(&c, M, 128, K, 1)) <= 1e-12 * t1);
  assert_true(hm_gemm_time(&a100, 256, 128, K, 108) > t1);
}

static void test_tp_divides_work(void **state) {
  (void)state;
  /* one unit and shapes that are whole tiles at every tp: time divides exactly */
  const hm_gemm_device one = {312e12, 0.8, 1e30, 2, 1, 128, 128};
  hm_spec_model_config cfg = {.arch = HM_ARCH_LLAMA, .L = 1, .C = 8192, .NH = 64, .kv_heads = 8,
                              .ffn = 28672, .V = 32768, .T = 4096};
  for (int head = 0; head <= 1; head++) {
    double f1, b1;
    hm_block_gemm_times(&one, &cfg, head, 1, 1, &f1, &b1);
    for (int tp = 2; tp <= 8; tp *= 2) {
      double f, b;
      hm_block_gemm_times(&one, &cfg, head, 1, tp, &f, &b);
      assert_true(fabs(f * tp / f1 - 1) < 1e-12);
      assert_true(fabs(b * tp / b1 - 1) < 1e-12);
    }
    assert_true(b1 > 1.99 * f1 && b1 < 2.01 * f1); /* two backward GEMMs per forward one */
  }
  /* with 108 units the split still helps, by at most the ideal factor */
  double f1, b1, f8, b8;
  hm_block_gemm_times(&a100, &cfg, 0, 1, 1, &f1, &b1);
  hm_block_gemm_times(&a100, &cfg, 0, 1, 8, &f8, &b8);
  assert_true(f8 < f1 && f8 * 8 >= f1 * (1 - 1e-12));
}

static void test_known_defaults(void **state) {
  (void)state;
  hm_device_type dt;
  memset(&dt, 0, sizeof dt);
  snprintf(dt.name, sizeof dt.name, "NVIDIA-A100-SXM4");
  hm_device_type_gemm_defaults(&dt);
  assert_int_equal(dt.gemm_units, 108);
  assert_true(hm_gemm_model_known(&dt));
  snprintf(dt.name, sizeof dt.name, "cpu");
  hm_device_type_gemm_defaults(&dt);
  assert_false(hm_gemm_model_known(&dt));
  dt.gemm_given = 1;
  dt.gemm_units = 7;
  hm_device_type_gemm_defaults(&dt); /* given values are kept */
  assert_int_equal(dt.gemm_units, 7);
}

static char *cluster_json(const char *gemm) {
  static char buf[2048];
  snprintf(buf, sizeof buf,
           "{\"version\": 1, \"name\": \"c\", \"device_types\": [{\"name\": \"x\", "
           "\"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e9, \"memory_bandwidth\": 1e11%s%s}],"
           " \"hosts\": [{\"name\": \"h\", \"count\": 1, \"devices\": {\"type\": \"x\", \"count\": 1},"
           " \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-6}}]}",
           gemm ? ", \"gemm\": " : "", gemm ? gemm : "");
  return buf;
}

static void expect_error(const char *gemm, const char *needle) {
  hm_cluster c;
  const char *j = cluster_json(gemm);
  assert_int_equal(hm_cluster_parse(j, strlen(j), NULL, &c), HM_ERR_SPEC);
  if (!strstr(hm_last_error(), needle)) fail_msg("error \"%s\" lacks \"%s\"", hm_last_error(), needle);
}

static void test_spec_validation(void **state) {
  (void)state;
  expect_error("{\"units\": 0, \"tile_m\": 128, \"tile_n\": 128}", "gemm.units");
  expect_error("{\"units\": 108, \"tile_m\": 128.5, \"tile_n\": 128}", "gemm.tile_m");
  expect_error("{\"units\": 108, \"tile_m\": 128}", "gemm.tile_n");
  expect_error("{\"units\": 108, \"tile_m\": 128, \"tile_n\": 99999}", "gemm.tile_n");
  expect_error("{\"units\": 108, \"tile_m\": 128, \"tile_n\": 128, \"tile_k\": 32}", "tile_k");
  expect_error("[108, 128, 128]", "gemm");
  hm_cluster c;
  const char *j = cluster_json("{\"units\": 108, \"tile_m\": 256, \"tile_n\": 128}");
  assert_int_equal(hm_cluster_parse(j, strlen(j), NULL, &c), HM_OK);
  assert_int_equal(c.types[0].gemm_given, 1);
  assert_int_equal(c.types[0].gemm_tile_m, 256);
  cJSON *o = hm_cluster_to_cjson(&c);
  assert_non_null(o);
  char *text = cJSON_PrintUnformatted(o);
  hm_cluster back;
  assert_int_equal(hm_cluster_parse(text, strlen(text), NULL, &back), HM_OK);
  assert_int_equal(back.types[0].gemm_units, 108);
  assert_int_equal(back.types[0].gemm_tile_n, 128);
  cJSON_free(text);
  cJSON_Delete(o);
  hm_cluster_free(&back);
  hm_cluster_free(&c);
  j = cluster_json(NULL); /* absent: not given, nothing written */
  assert_int_equal(hm_cluster_parse(j, strlen(j), NULL, &c), HM_OK);
  assert_int_equal(c.types[0].gemm_given, 0);
  hm_cluster_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_efficiency_rises_with_size), cmocka_unit_test(test_wave_quantization_steps),
      cmocka_unit_test(test_tp_divides_work),            cmocka_unit_test(test_known_defaults),
      cmocka_unit_test(test_spec_validation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
