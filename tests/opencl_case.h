/* Tests with an opencl case run it as a ctest entry of its own (`<test> opencl`), so that a
 * machine without the backend shows it as skipped (exit 77) rather than as passed. */
#ifndef HETMIX_TESTS_OPENCL_CASE_H
#define HETMIX_TESTS_OPENCL_CASE_H

#include <stdio.h>
#include <string.h>

#include "hetmix/device.h"

#define HM_TEST_SKIP 77 /* ctest's SKIP_RETURN_CODE */

/* 1 when the command line asks for the opencl case only */
static inline int hm_test_opencl_only(int argc, char **argv) {
  return argc > 1 && strcmp(argv[1], "opencl") == 0;
}

/* 1 (after printing why) when opencl is not built or finds no device. spec: the one the test
 * opens later (opencl's threads= is fixed for the process by its first device). */
static inline int hm_test_opencl_missing(const char *spec) {
  hm_device *d = NULL;
  if (hm_device_open(spec, &d) != HM_OK) {
    printf("SKIP: opencl: %s\n", hm_last_error());
    return 1;
  }
  hm_device_close(d);
  return 0;
}

/* 1 (after printing why) when the backend of spec is not built or finds no device (a GPU test on
 * a machine without one). */
static inline int hm_test_device_missing(const char *spec) {
  hm_device *d = NULL;
  if (hm_device_open(spec, &d) != HM_OK) {
    printf("SKIP: %s: %s\n", spec, hm_last_error());
    return 1;
  }
  hm_device_close(d);
  return 0;
}

#endif
