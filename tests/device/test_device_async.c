/* Asynchronous copies (hm_device_copy_h2d_async/d2h_async, hm_device_event_wait): on a host
 * backend they complete at once and give no event; on the backend named by the argument (e.g.
 * opencl:threads=1) a round trip through pinned memory with events, copies queued without an
 * event covered by a later one, byte offsets inside a buffer, and bad arguments refused.
 * Exit 77 (skipped) when that backend is not available. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/device.h"

#define OK(x) assert_int_equal((x), HM_OK)
static const char *g_spec = "cpu:threads=1";

static void test_host_backend_copies_at_once(void **state) {
  (void)state;
  hm_device *dev;
  OK(hm_device_open("cpu:threads=1", &dev));
  unsigned char *d, *pin;
  OK(hm_device_alloc(dev, (void **)&d, 64, "d"));
  OK(hm_device_alloc_host(dev, (void **)&pin, 64, "pin"));
  for (int i = 0; i < 64; i++) pin[i] = (unsigned char)i;
  hm_device_event *ev = (hm_device_event *)&ev; /* must be overwritten */
  OK(hm_device_copy_h2d_async(dev, d, pin, 64, &ev));
  assert_null(ev); /* completed already */
  assert_memory_equal(d, pin, 64);
  OK(hm_device_event_wait(dev, NULL, 10));
  assert_int_equal(hm_device_copy_d2h_async(NULL, pin, d, 64, &ev), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_device_copy_d2h_async(dev, NULL, d, 64, &ev), HM_ERR_INVALID_ARG);
  hm_device_close(dev);
}

static void test_round_trip_with_events(void **state) {
  (void)state;
  hm_device *dev;
  OK(hm_device_open(g_spec, &dev));
  enum { N = 1 << 20 };
  unsigned char *d, *in, *out;
  OK(hm_device_alloc(dev, (void **)&d, N, "d"));
  OK(hm_device_alloc_host(dev, (void **)&in, N, "in"));
  OK(hm_device_alloc_host(dev, (void **)&out, N, "out"));
  for (size_t i = 0; i < N; i++) in[i] = (unsigned char)(i * 7 + 3);
  memset(out, 0, N);
  /* two halves up, the first without an event: the second's event covers it (in order) */
  hm_device_event *ev = NULL;
  OK(hm_device_copy_h2d_async(dev, d, in, N / 2, NULL));
  OK(hm_device_copy_h2d_async(dev, d + N / 2, in + N / 2, N / 2, &ev));
  OK(hm_device_event_wait(dev, ev, 10000));
  /* back down at an odd byte offset, then the rest */
  hm_device_event *e1 = NULL, *e2 = NULL;
  OK(hm_device_copy_d2h_async(dev, out, d, 7, &e1));
  OK(hm_device_copy_d2h_async(dev, out + 7, d + 7, N - 7, &e2));
  OK(hm_device_event_wait(dev, e1, 10000));
  OK(hm_device_event_wait(dev, e2, 10000));
  assert_memory_equal(in, out, N);
  /* a range outside the buffer is refused before it reaches the device */
  if (!hm_device_is_host(dev))
    assert_int_not_equal(hm_device_copy_d2h_async(dev, out, d + N - 8, 16, &e1), HM_OK);
  hm_device_close(dev);
}

int main(int argc, char **argv) {
  if (argc > 1) g_spec = argv[1];
  hm_device *probe = NULL;
  if (hm_device_open(g_spec, &probe) != HM_OK) {
    printf("# SKIP: device %s is not available: %s\n", g_spec, hm_last_error());
    return 77;
  }
  hm_device_close(probe);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_host_backend_copies_at_once),
      cmocka_unit_test(test_round_trip_with_events),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
