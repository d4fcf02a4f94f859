/* The device registry and spec options, the mem= cap, allocation accounting and the slow-chip
 * emulation factor. Timing assertions are lower bounds that follow from how the sleep is
 * taken (nanosleep never returns early), so a loaded machine cannot make them fail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device/device_impl.h" /* a backend registered at run time fills the descriptor */
#include "hetmix/device.h"
#include "util/util.h"

#define OK(x) assert_int_equal((x), HM_OK)

static void expect_open_error(const char *spec, hm_status want, const char *needle) {
  hm_device *dev = (hm_device *)0x1;
  hm_status st = hm_device_open(spec, &dev);
  if (st != want)
    fail_msg("open('%s'): got %s, want %s (%s)", spec, hm_status_name(st), hm_status_name(want),
             hm_last_error());
  assert_null(dev);
  if (!strstr(hm_last_error(), needle))
    fail_msg("open('%s'): message '%s' does not name '%s'", spec, hm_last_error(), needle);
}

static void test_unknown_backend_and_bad_options(void **state) {
  (void)state;
  expect_open_error("tpu", HM_ERR_NOT_FOUND, "tpu");
  expect_open_error("tpu", HM_ERR_NOT_FOUND, "cpu, ref"); /* lists the known ones */
  expect_open_error("", HM_ERR_INVALID_ARG, "missing backend name");
  expect_open_error(":threads=2", HM_ERR_INVALID_ARG, "missing backend name");
  expect_open_error("cpu:threads=abc", HM_ERR_INVALID_ARG, "threads=abc");
  expect_open_error("cpu:threads=-1", HM_ERR_INVALID_ARG, "threads=-1");
  expect_open_error("cpu:threads", HM_ERR_INVALID_ARG, "not key=value");
  expect_open_error("cpu:bogus=1", HM_ERR_INVALID_ARG, "unknown option 'bogus'");
  expect_open_error("cpu:slow=0.5", HM_ERR_INVALID_ARG, "slow=0.5");
  expect_open_error("cpu:slow=nan", HM_ERR_INVALID_ARG, "slow=nan");
  expect_open_error("cpu:mem=12Q", HM_ERR_INVALID_ARG, "mem=12Q");
  expect_open_error("cpu:mem=0", HM_ERR_INVALID_ARG, "mem=0");
  expect_open_error("cpu:dtype=f16", HM_ERR_INVALID_ARG, "dtype=f16");
  expect_open_error("cpu:dtype=f64", HM_ERR_UNSUPPORTED, "f32 only");
  expect_open_error("ref:threads=4", HM_ERR_INVALID_ARG, "single-threaded");
  expect_open_error("cpu:device=1", HM_ERR_INVALID_ARG, "device=1");
  expect_open_error("cpu:platform=1", HM_ERR_INVALID_ARG, "platform=1");
  expect_open_error("ref:platform=2", HM_ERR_INVALID_ARG, "platform=2");
  expect_open_error("cpu:platform=x", HM_ERR_INVALID_ARG, "platform=x");
  assert_int_equal(hm_device_open("cpu", NULL), HM_ERR_INVALID_ARG);
}

static void test_parse_and_open(void **state) {
  (void)state;
  char name[16];
  hm_device_options o;
  OK(hm_device_parse_spec("cpu:threads=2,slow=2.5,mem=64M,dtype=f32", name, sizeof name, &o));
  assert_string_equal(name, "cpu");
  assert_int_equal(o.threads, 2);
  assert_true(o.slow == 2.5);
  assert_int_equal(o.mem_limit, 64u << 20);
  assert_int_equal(o.dtype, HM_FLOAT32);
  OK(hm_device_parse_spec("ref", name, sizeof name, &o));
  assert_true(o.slow == 1.0 && o.threads == 0 && o.mem_limit == 0 && o.dtype == HM_FLOAT32);
  OK(hm_device_parse_spec("opencl:platform=1,device=2,threads=3", name, sizeof name, &o));
  assert_string_equal(name, "opencl");
  assert_true(o.platform == 1 && o.index == 2 && o.threads == 3);
  OK(hm_device_parse_spec("ref:mem=1.5GiB", name, sizeof name, &o));
  assert_int_equal(o.mem_limit, (size_t)3 << 29);
  assert_int_equal(hm_device_parse_spec("averyveryverylongname", name, sizeof name, &o),
                   HM_ERR_INVALID_ARG);

  hm_device *dev;
  OK(hm_device_open("cpu:threads=2", &dev));
  assert_string_equal(hm_device_name(dev), "cpu");
  assert_int_equal(hm_device_threads(dev), 2);
  assert_int_equal(hm_device_get_kind(dev), HM_DEVICE_HOST);
  assert_int_equal(hm_device_elem_size(dev), 4);
  assert_true(hm_device_is_host(dev));
  /* pinned staging on a host backend: host memory, freed by close when left */
  void *stage = NULL;
  OK(hm_device_alloc_host(dev, &stage, 4096, "staging"));
  memset(stage, 1, 4096);
  size_t total, freeb;
  OK(hm_device_mem_info(dev, &total, &freeb));
  assert_true(total > 0 && freeb <= total);
  hm_device_close(dev);
  OK(hm_device_open("ref:dtype=f64", &dev));
  assert_int_equal(hm_device_dtype(dev), HM_FLOAT64);
  assert_int_equal(hm_device_elem_size(dev), 8);
  hm_device_close(dev);
  hm_device_close(NULL);
}

static hm_device_stats dev_stats(const hm_device *dev) {
  hm_device_stats st;
  hm_device_get_stats(dev, &st);
  return st;
}

/* a backend registered at run time, delegating to the built-in ref */
static hm_status open_like_ref(hm_device *dev, const hm_device_options *opt) {
  for (int i = 0; i < hm_device_backend_count(); i++)
    if (strcmp(hm_device_backend_name(hm_device_backend_at(i)), "ref") == 0) return hm_device_backend_at(i)->open(dev, opt);
  return HM_ERR_NOT_FOUND;
}

static void test_register(void **state) {
  (void)state;
  static const hm_device_backend alias = {"ref2", "ref under another name", open_like_ref};
  int before = hm_device_backend_count();
  OK(hm_device_register(&alias));
  assert_int_equal(hm_device_backend_count(), before + 1);
  assert_int_equal(hm_device_register(&alias), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_device_backend_names(), "ref2"));
  hm_device *dev;
  OK(hm_device_open("ref2:dtype=f64", &dev));
  assert_string_equal(hm_device_name(dev), "ref2");
  hm_device_close(dev);
  assert_null(hm_device_backend_at(-1));
  assert_null(hm_device_backend_at(before + 1));
}

static void test_memory_cap_and_accounting(void **state) {
  (void)state;
  hm_device *dev;
  OK(hm_device_open("ref:mem=1M", &dev));
  size_t total, freeb;
  OK(hm_device_mem_info(dev, &total, &freeb));
  assert_int_equal(total, 1u << 20);
  void *a = NULL, *b = NULL, *c = NULL;
  OK(hm_device_alloc(dev, &a, 512u << 10, "activations"));
  assert_int_equal((uintptr_t)a % 64, 0);
  OK(hm_device_mem_info(dev, &total, &freeb));
  assert_int_equal(freeb, 512u << 10);
  assert_int_equal(hm_device_alloc(dev, &b, 768u << 10, "optimizer state"), HM_ERR_NO_FIT);
  assert_null(b);
  assert_non_null(strstr(hm_last_error(), "optimizer state"));
  OK(hm_device_alloc(dev, &b, 256u << 10, "b"));
  OK(hm_device_alloc(dev, &c, 256u << 10, "c"));
  assert_int_equal(dev_stats(dev).bytes_allocated, 1u << 20);
  hm_device_free(dev, b);
  hm_device_free(dev, NULL);
  assert_int_equal(dev_stats(dev).bytes_allocated, 768u << 10);
  assert_int_equal(dev_stats(dev).bytes_peak, 1u << 20);
  OK(hm_device_alloc(dev, &b, 256u << 10, "b again"));
  hm_device_close(dev); /* frees a, b, c: the sanitizer pass would report a leak otherwise */

  /* a request larger than the machine's memory is NO_FIT, not a crash */
  OK(hm_device_open("cpu", &dev));
  assert_int_equal(hm_device_alloc(dev, &a, (size_t)1 << 60, "parameters"), HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "parameters"));
  hm_device_close(dev);
}

static void test_kernel_argument_checks(void **state) {
  (void)state;
  hm_device *dev;
  OK(hm_device_open("ref", &dev));
  float buf[64];
  assert_int_equal(hm_dev_attention_forward(dev, buf, buf, buf, 1, 2, 10, 3), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "NH = 3"));
  assert_int_equal(hm_dev_matmul_forward(dev, buf, NULL, buf, NULL, 1, 1, 1), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "inp"));
  assert_int_equal(hm_dev_layernorm_forward(dev, buf, buf, buf, buf, buf, buf, 0, 4), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_dev_softmax_forward(dev, buf, buf, 1, 8, 4), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_dev_adamw_update(dev, buf, buf, buf, buf, 4, 1e-3, 0.9, 0.99, 1e-8, 0, 1, 0),
                   HM_ERR_INVALID_ARG);
  assert_int_equal(hm_dev_matmul_forward(NULL, buf, buf, buf, NULL, 1, 1, 1), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_dev_attention_saved_elems(dev, 0, 1, 1, 1), 0);
  hm_device_close(dev);
}

/* Runs a small matmul `iters` times and returns the wall time in ns. */
static uint64_t run_matmuls(hm_device *dev, int iters) {
  enum { n = 64, c = 256, oc = 128 };
  float *x, *w, *y;
  OK(hm_device_alloc(dev, (void **)&x, n * c * 4, "x"));
  OK(hm_device_alloc(dev, (void **)&w, oc * c * 4, "w"));
  OK(hm_device_alloc(dev, (void **)&y, n * oc * 4, "y"));
  OK(hm_device_zero(dev, x, n * c * 4));
  OK(hm_device_zero(dev, w, oc * c * 4));
  uint64_t t0 = hm_now_ns();
  for (int i = 0; i < iters; i++) OK(hm_dev_matmul_forward(dev, y, x, w, NULL, n, c, oc));
  uint64_t dt = hm_now_ns() - t0;
  hm_device_free(dev, x);
  hm_device_free(dev, w);
  hm_device_free(dev, y);
  return dt;
}

static void test_slow_factor(void **state) {
  (void)state;
  hm_device *dev;
  const double slow = 3.0;
  OK(hm_device_open("ref:slow=3", &dev));
  assert_true(hm_device_slow(dev) == slow);
  uint64_t wall = run_matmuls(dev, 20);
  uint64_t k = dev_stats(dev).kernel_ns, slept = dev_stats(dev).slow_sleep_ns;
  assert_int_equal(dev_stats(dev).kernel_calls, 20);
  /* every nanosecond of debt is slept except at most the batching threshold still owed */
  if ((double)slept < (slow - 1) * (double)k - 250000.0)
    fail_msg("slept %.3f ms for %.3f ms of kernels at slow=%g", slept / 1e6, k / 1e6, slow);
  /* so the device's wall time is at least slow x its kernel time (less that threshold) */
  assert_true((double)wall >= slow * (double)k - 250000.0);
  hm_device_close(dev);

  OK(hm_device_open("ref", &dev));
  run_matmuls(dev, 3);
  assert_int_equal(dev_stats(dev).slow_sleep_ns, 0);
  hm_device_close(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unknown_backend_and_bad_options),
      cmocka_unit_test(test_parse_and_open),
      cmocka_unit_test(test_register),
      cmocka_unit_test(test_memory_cap_and_accounting),
      cmocka_unit_test(test_kernel_argument_checks),
      cmocka_unit_test(test_slow_factor),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
