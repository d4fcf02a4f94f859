/* The device terms of the cost model (src/cost/cost_device.c): staging copies, the two sites of
 * a device buffer's allreduce sums, and the site decision following the terms. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hetmix/cost.h"

/* Tolerance: each time is a few dozen f64 operations on values of 1e-6 .. 1e-1, so its
 * rounding is ~1e-17 absolute; 1e-12 leaves orders to spare, and a wrong term (a missing
 * copy, latency or factor n) moves a result by 1e-6 or more. */
#define TOL 1e-12

static const hm_link shm = {.bandwidth = 1e10, .latency = 1e-6, .reduce_bw = 0};

static void test_staging(void **state) {
  (void)state;
  hm_device_xfer gpu = {.d2h_bw = 2e10, .h2d_bw = 1e10, .copy_latency = 1e-5};
  assert_true(fabs(hm_cost_staging(&gpu, 1e8) - (2e-5 + 1e8 / 2e10 + 1e8 / 1e10)) < TOL);
  hm_device_xfer host = {.host_reduce_bw = 1e9};
  assert_true(hm_cost_staging(&host, 1e8) == 0.0); /* host memory: no copies */
}

static void test_site_formulas(void **state) {
  (void)state;
  hm_device_xfer d = {.d2h_bw = 2e10, .h2d_bw = 2e10, .copy_latency = 1e-5, .host_reduce_bw = 1e9,
                      .dev_reduce_bw = 1e11, .kernel_latency = 2e-5};
  const double N = 64e6;
  /* host: max(copies N each way, ring 2(n-1)a + 2(n-1)/n N/bw + (n-1)/n N/host_reduce) */
  double wire = 2 * 2 * 1e-6 + 2.0 * 2 / 3 * N / 1e10, copies = 2e-5 + 2 * N / 2e10;
  double th = fmax(copies, wire + 2.0 / 3 * N / 1e9);
  assert_true(fabs(hm_cost_allreduce_at(HM_REDUCE_ON_HOST, &d, 3, N, &shm) - th) < TOL);
  /* device: wire + 2(n-1) staging copies of N/n + (n-1) kernels of N/n */
  double td = wire + 4 * (2e-5 + 2 * (N / 3) / 2e10) + 2 * (2e-5 + (N / 3) / 1e11);
  assert_true(fabs(hm_cost_allreduce_at(HM_REDUCE_ON_DEVICE, &d, 3, N, &shm) - td) < TOL);
  /* mapped: the host site has no copies */
  d.mapped = 1;
  assert_true(fabs(hm_cost_allreduce_at(HM_REDUCE_ON_HOST, &d, 3, N, &shm) - (wire + 2.0 / 3 * N / 1e9)) < TOL);
  /* no device kernel: the device site is never cheaper */
  d.dev_reduce_bw = 0;
  assert_true(isinf(hm_cost_allreduce_at(HM_REDUCE_ON_DEVICE, &d, 3, N, &shm)));
}

/* The decision follows the terms: a fast copy engine and a fast kernel against slow host
 * reductions choose the device; a host reduction as fast as the kernel (pocl, mapped) the host;
 * one rank that reduces better on its host keeps every rank on the host when its device site
 * is the slowest; latency-bound sizes stay on the host. */
static void test_site_choice(void **state) {
  (void)state;
  hm_device_xfer gpu = {.d2h_bw = 2.5e10, .h2d_bw = 2.5e10, .copy_latency = 1e-5, .host_reduce_bw = 2e9,
                        .dev_reduce_bw = 5e11, .kernel_latency = 5e-6};
  hm_device_xfer pocl = {.d2h_bw = 6e9, .h2d_bw = 6e9, .copy_latency = 2e-5, .host_reduce_bw = 6e9,
                         .dev_reduce_bw = 6e9, .kernel_latency = 3e-5, .mapped = 1};
  hm_device_xfer cpu = {.host_reduce_bw = 6e9, .dev_reduce_bw = 6e9, .kernel_latency = 1e-6};
  double th = 0, td = 0;
  hm_device_xfer two_gpus[2] = {gpu, gpu};
  assert_int_equal(hm_cost_reduce_site(two_gpus, 2, 2, 64e6, &shm, &th, &td), HM_REDUCE_ON_DEVICE);
  assert_true(td < th);
  hm_device_xfer two_pocl[2] = {pocl, pocl};
  assert_int_equal(hm_cost_reduce_site(two_pocl, 2, 2, 64e6, &shm, &th, &td), HM_REDUCE_ON_HOST);
  assert_true(th <= td);
  hm_device_xfer mixed[2] = {gpu, pocl};
  assert_int_equal(hm_cost_reduce_site(mixed, 2, 2, 64e6, &shm, NULL, NULL), HM_REDUCE_ON_HOST);
  hm_device_xfer two_cpus[2] = {cpu, cpu}; /* equal bandwidths: the kernel's latency decides */
  assert_int_equal(hm_cost_reduce_site(two_cpus, 2, 2, 64e6, &shm, NULL, NULL), HM_REDUCE_ON_HOST);
  two_cpus[0].dev_reduce_bw = two_cpus[1].dev_reduce_bw = 6e10; /* a 10x faster kernel */
  assert_int_equal(hm_cost_reduce_site(two_cpus, 2, 2, 64e6, &shm, NULL, NULL), HM_REDUCE_ON_DEVICE);
  assert_int_equal(hm_cost_reduce_site(two_cpus, 2, 2, 64, &shm, NULL, NULL), HM_REDUCE_ON_HOST);
  assert_int_equal(hm_cost_reduce_site(two_gpus, 0, 2, 64e6, &shm, NULL, NULL), HM_REDUCE_ON_HOST);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_staging),
      cmocka_unit_test(test_site_formulas),
      cmocka_unit_test(test_site_choice),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
