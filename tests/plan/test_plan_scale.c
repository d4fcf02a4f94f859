/* The planner's time and memory do not grow with the micro-batch count (docs/plan.md, section 4):
 * on the 10,240-device example with micro-batch size 1, a global batch of 10^9 (the largest
 * docs/spec.md allows; ~10^6 micro-batches per replica) is planned in about the time and memory
 * of a global batch of 1,024. Before the simulator extrapolated the steady state it built op
 * lists and arrival arrays per micro-batch: over 100 s and ~7 GB here.
 *
 * Bounds: peak RSS at most the 1,024 run's peak + 256 MB (512 MB under AddressSanitizer,
 * whose quarantine holds up to 256 MB of freed memory; the no-m footprint is the specs,
 * costs and shortlists, ~10 MB; per-micro-batch arrays for 10^6 micro-batches and 40+ stages
 * alone are GB), and at most 4x the 1,024 run's wall time + 5 s. Outside sanitizer builds the
 * address space is also capped at the process's size + 1 GB, so the unbounded version fails
 * fast with an out-of-memory error instead of taking the machine's memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "hetmix/plan.h"

#if defined(__SANITIZE_ADDRESS__)
#define HM_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HM_TEST_ASAN 1
#endif
#endif

static long maxrss_kb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

#ifndef HM_TEST_ASAN
/* Virtual size of this process in kB (/proc/self/status VmSize), 0 if unknown. */
static long vm_size_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}
#endif

static void load(const char *name, char *path, size_t n) {
  snprintf(path, n, "%s/examples/%s", HM_SOURCE_DIR, name);
}

static double plan_seconds(const hm_plan_inputs *in, double *tokens_per_s) {
  hm_search_options o;
  hm_search_options_default(&o);
  o.top_k = 1;
  hm_search_result r;
  hm_status st = hm_plan_search(in, &o, &r);
  if (st != HM_OK) fail_msg("plan search: %s", hm_last_error());
  assert_true(r.nplans == 1 && r.plans[0].step_time > 0);
  *tokens_per_s = r.plans[0].tokens_per_s;
  const double s = r.seconds;
  hm_search_result_free(&r);
  return s;
}

static void test_plan_time_and_memory_flat_in_batch(void **state) {
  (void)state;
  char path[512];
  hm_cluster c;
  hm_model m;
  hm_train t;
  load("mixed-10240-3types.json", path, sizeof path);
  assert_int_equal(hm_cluster_load(path, &c), HM_OK);
  load("llama2-70b.json", path, sizeof path);
  assert_int_equal(hm_model_load(path, &m), HM_OK);
  load("train-default.json", path, sizeof path);
  assert_int_equal(hm_train_load(path, &t), HM_OK);
  assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_OK);
  t.n_micro_batch_sizes = 1;
  t.micro_batch_sizes[0] = 1;
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};

  t.global_batch = 1024;
  double tok_small, tok_big;
  const double s_small = plan_seconds(&in, &tok_small);
  const long rss_small = maxrss_kb();
#ifndef HM_TEST_ASAN
  const long vm = vm_size_kb();
  if (vm > 0) {
    struct rlimit rl = {.rlim_cur = (rlim_t)(vm + 1024 * 1024) * 1024};
    rl.rlim_max = rl.rlim_cur;
    assert_int_equal(setrlimit(RLIMIT_AS, &rl), 0);
  }
#endif
  t.global_batch = 1000000000;
  const double s_big = plan_seconds(&in, &tok_big);
  const long rss_big = maxrss_kb();
  print_message("global batch 1024: %.2f s, peak RSS %ld kB; 1e9: %.2f s, peak RSS %ld kB\n",
                s_small, rss_small, s_big, rss_big);
#ifdef HM_TEST_ASAN
  const long slack_kb = 512 * 1024; /* AddressSanitizer's quarantine keeps up to 256 MB freed */
#else
  const long slack_kb = 256 * 1024;
#endif
  assert_true(rss_big <= rss_small + slack_kb);
  assert_true(s_big <= 4 * s_small + 5.0);
  assert_true(tok_big >= tok_small); /* more micro-batches per step: a smaller bubble */
  hm_cluster_free(&c);
  hm_model_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plan_time_and_memory_flat_in_batch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
