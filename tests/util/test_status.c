/* Status names, per-thread messages and context prefixes. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/status.h"
#include "util/util.h"

static void test_names_are_distinct(void **state) {
  (void)state;
  for (int a = 0; a < HM_STATUS_COUNT; a++) {
    assert_non_null(hm_status_name((hm_status)a));
    for (int b = a + 1; b < HM_STATUS_COUNT; b++)
      assert_string_not_equal(hm_status_name((hm_status)a), hm_status_name((hm_status)b));
  }
  assert_string_equal(hm_status_name((hm_status)999), "unknown status");
}

static void test_message_and_context(void **state) {
  (void)state;
  hm_clear_error();
  assert_string_equal(hm_last_error(), "");
  assert_int_equal(hm_error(HM_ERR_TIMEOUT, "waited %d ms", 30), HM_ERR_TIMEOUT);
  assert_string_equal(hm_last_error(), "waited 30 ms");
  assert_int_equal(hm_error_context(HM_ERR_TIMEOUT, "rank %d: ", 3), HM_ERR_TIMEOUT);
  assert_string_equal(hm_last_error(), "rank 3: waited 30 ms");
}

static void *other_thread(void *arg) {
  (void)arg;
  hm_error(HM_ERR_IO, "other thread");
  return NULL;
}

static void test_message_is_per_thread(void **state) {
  (void)state;
  hm_error(HM_ERR_SPEC, "main thread");
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
  pthread_join(t, NULL);
  assert_string_equal(hm_last_error(), "main thread");
}

static void test_deadline(void **state) {
  (void)state;
  assert_false(hm_deadline_passed(0));
  uint64_t d = hm_deadline_after_ms(10000);
  assert_false(hm_deadline_passed(d));
  assert_true(hm_deadline_passed(hm_now_ns() - 1));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names_are_distinct),
      cmocka_unit_test(test_message_and_context),
      cmocka_unit_test(test_message_is_per_thread),
      cmocka_unit_test(test_deadline),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
