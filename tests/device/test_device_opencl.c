/* What is particular to the opencl backend: opaque device addresses (a range outside every
 * buffer is refused, never read), pinned staging buffers, the threads= cap on pocl, and the
 * kernel binary cache (hit, and rebuilt from source when an entry is damaged, truncated or a
 * symbolic link). Exit 77 (skipped) when the backend is not built or finds no device. */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"

#define SKIP 77
#define OK(x) assert_int_equal((x), HM_OK)
#define SPEC "opencl:threads=2"

#ifdef HETMIX_HAVE_OPENCL
int hm_opencl_program_was_cached(const hm_device *dev); /* src/device/opencl_internal.h */
#endif

static char cache_root[512], entry[1024];

/* the one cache entry (*.bin) in the cache folder */
static void find_entry(void) {
  char dir[700];
  snprintf(dir, sizeof dir, "%s/hetmix/opencl", cache_root);
  DIR *d = opendir(dir);
  assert_non_null(d);
  int found = 0;
  for (struct dirent *e; (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    if (n > 4 && strcmp(e->d_name + n - 4, ".bin") == 0) {
      snprintf(entry, sizeof entry, "%s/%s", dir, e->d_name);
      found++;
    }
  }
  closedir(d);
  assert_int_equal(found, 1);
}

/* opens the device, checks where its program came from, and that a kernel computes */
static void open_check(int want_cached) {
  hm_device *d = NULL;
  OK(hm_device_open(SPEC, &d));
#ifdef HETMIX_HAVE_OPENCL
  assert_int_equal(hm_opencl_program_was_cached(d), want_cached);
#else
  (void)want_cached;
#endif
  float h[5] = {1, 2, 3, 4, 5}, r[5];
  void *x = NULL;
  OK(hm_device_alloc(d, &x, sizeof h, "x"));
  OK(hm_device_copy_h2d(d, x, h, sizeof h));
  OK(hm_dev_scale(d, x, 2.0, 5));
  OK(hm_device_copy_d2h(d, r, x, sizeof r));
  for (int i = 0; i < 5; i++) assert_true(r[i] == 2 * h[i]);
  hm_device_close(d);
}

static void test_cache(void **state) {
  (void)state;
  open_check(0); /* empty cache: built from source, entry written */
  find_entry();
  open_check(1); /* hit */
  /* one flipped byte near the end (inside the binary): the hash differs -> rebuilt */
  int fd = open(entry, O_RDWR);
  assert_true(fd >= 0);
  off_t end = lseek(fd, 0, SEEK_END);
  unsigned char c = 0;
  assert_int_equal(pread(fd, &c, 1, end - 7), 1);
  c ^= 0x5a;
  assert_int_equal(pwrite(fd, &c, 1, end - 7), 1);
  close(fd);
  open_check(0);
  open_check(1); /* the rebuild rewrote a valid entry */
  assert_int_equal(truncate(entry, 100), 0); /* truncated: the size check refuses it */
  open_check(0);
  open_check(1);
  /* a symbolic link in place of the entry is not followed; the rewrite replaces the link */
  char other[1100];
  snprintf(other, sizeof other, "%s.other", entry);
  assert_int_equal(rename(entry, other), 0);
  assert_int_equal(symlink(other, entry), 0);
  open_check(0);
  struct stat sb;
  assert_int_equal(lstat(entry, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  open_check(1);
  unlink(other);
}

/* Device addresses are opaque: a range that is not inside one buffer is an error, so a host
 * pointer or an overrun never reaches the driver. */
static void test_opaque_addresses(void **state) {
  (void)state;
  hm_device *d = NULL;
  OK(hm_device_open(SPEC, &d));
  assert_false(hm_device_is_host(d));
  assert_int_equal(hm_device_get_kind(d), HM_DEVICE_OPENCL);
  assert_int_equal(hm_device_threads(d), 2);
  float h[16] = {0};
  void *x = NULL;
  OK(hm_device_alloc(d, &x, sizeof h, "x"));
  assert_int_equal(hm_device_copy_h2d(d, hm_device_offset(d, x, 15), h, 8), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_device_copy_h2d(d, hm_device_offset(d, x, 16), h, 4), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_device_copy_d2h(d, h, h + 1, 4), HM_ERR_INVALID_ARG); /* a host pointer */
  assert_non_null(strstr(hm_last_error(), "not inside one buffer"));
  OK(hm_device_copy_h2d(d, hm_device_offset(d, x, 15), h, 4)); /* the last element is fine */
  assert_int_equal(hm_dev_scale(d, h, 2.0, 4), HM_ERR_INVALID_ARG);
  hm_device_close(d);
}

/* Pinned staging memory is host memory: written and read by the host, copied both ways. */
static void test_pinned_staging(void **state) {
  (void)state;
  const char *specs[] = {SPEC, "cpu:threads=1"};
  for (int k = 0; k < 2; k++) {
    hm_device *d = NULL;
    OK(hm_device_open(specs[k], &d));
    float *pin = NULL, *back = NULL;
    void *x = NULL;
    const size_t n = 1000;
    OK(hm_device_alloc_host(d, (void **)&pin, n * 4, "staging"));
    OK(hm_device_alloc_host(d, (void **)&back, n * 4, "staging"));
    OK(hm_device_alloc(d, &x, n * 4, "x"));
    for (size_t i = 0; i < n; i++) pin[i] = (float)i;
    OK(hm_device_copy_h2d(d, x, pin, n * 4));
    OK(hm_device_copy_d2h(d, back, x, n * 4));
    assert_memory_equal(pin, back, n * 4);
    hm_device_free_host(d, pin);
    hm_device_free_host(d, NULL);
    hm_device_free_host(d, x); /* a device address is not a staging buffer: ignored */
    hm_device_close(d); /* frees back and x with the device */
  }
}

/* hm_device_map: the map waits for the kernel queued before it (ordering), host writes are
 * seen by work queued after the unmap, a range outside one buffer is refused; host backends
 * hand out the address itself. */
static void test_map(void **state) {
  (void)state;
  const char *specs[] = {SPEC, "cpu:threads=1"};
  for (int k = 0; k < 2; k++) {
    hm_device *d = NULL;
    OK(hm_device_open(specs[k], &d));
    const size_t n = 4097;
    float *h = malloc(n * 4), *m = NULL;
    assert_non_null(h);
    void *x = NULL;
    OK(hm_device_alloc(d, &x, n * 4, "x"));
    for (size_t i = 0; i < n; i++) h[i] = (float)i;
    OK(hm_device_copy_h2d(d, x, h, n * 4));
    OK(hm_dev_scale(d, x, 3.0, n)); /* queued: the map must wait for it */
    OK(hm_device_map(d, hm_device_offset(d, x, 1), (n - 1) * 4, HM_MAP_READ, (void **)&m));
    for (size_t i = 1; i < n; i++) assert_true(m[i - 1] == 3.0f * (float)i);
    OK(hm_device_unmap(d, hm_device_offset(d, x, 1), m));
    OK(hm_device_map(d, x, n * 4, HM_MAP_WRITE, (void **)&m));
    if (k == 1) assert_ptr_equal(m, x); /* cpu: the address is the host pointer */
    for (size_t i = 0; i < n; i++) m[i] = (float)(n - i);
    OK(hm_device_unmap(d, x, m));
    OK(hm_dev_scale(d, x, 2.0, n)); /* queued after the unmap: sees the host's writes */
    OK(hm_device_copy_d2h(d, h, x, n * 4));
    for (size_t i = 0; i < n; i++) assert_true(h[i] == 2.0f * (float)(n - i));
    if (k == 0) {
      assert_int_equal(hm_device_map(d, hm_device_offset(d, x, 1), n * 4, HM_MAP_READ, (void **)&m), HM_ERR_INVALID_ARG);
      assert_null(m);
      assert_int_equal(hm_device_map(d, x, 4, 0, (void **)&m), HM_ERR_INVALID_ARG);
      printf("%s: host-unified %d\n", specs[k], hm_device_host_unified(d));
    } else {
      assert_true(hm_device_host_unified(d));
    }
    free(h);
    hm_device_close(d);
  }
}

/* threads= is fixed for the process by the first opencl device (pocl reads it once) */
static void test_threads_fixed(void **state) {
  (void)state;
  hm_device *d = NULL;
  OK(hm_device_open(SPEC, &d));
  const char *env = getenv("POCL_MAX_PTHREAD_COUNT");
  assert_non_null(env);
  assert_string_equal(env, "2");
  hm_device *e = NULL;
  assert_int_equal(hm_device_open("opencl:threads=1", &e), HM_ERR_UNSUPPORTED);
  assert_non_null(strstr(hm_last_error(), "threads=2"));
  assert_int_equal(hm_device_open("opencl:dtype=f64", &e), HM_ERR_UNSUPPORTED);
  assert_int_equal(hm_device_open("opencl:threads=2,platform=63", &e), HM_ERR_NOT_FOUND);
  assert_int_equal(hm_device_open("opencl:threads=2,device=99", &e), HM_ERR_NOT_FOUND);
  hm_device_close(d);
}

int main(void) {
  snprintf(cache_root, sizeof cache_root, "%s/test_opencl_cache.XXXXXX", HM_BINARY_DIR);
  if (!mkdtemp(cache_root)) return 1;
  setenv("XDG_CACHE_HOME", cache_root, 1); /* our cache starts empty */
  char pocl[700];
  snprintf(pocl, sizeof pocl, "%s/test-cache/pocl", HM_BINARY_DIR); /* pocl's own, shared */
  setenv("POCL_CACHE_DIR", pocl, 0);
  hm_device *probe = NULL;
  hm_status st = hm_device_open(SPEC, &probe);
  int rc;
  if (st == HM_ERR_NOT_FOUND) {
    printf("SKIP: %s: %s\n", SPEC, hm_last_error());
    rc = SKIP;
  } else {
    if (st == HM_OK) hm_device_close(probe);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/hetmix'", cache_root); /* what the probe cached */
    if (system(cmd) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache), cmocka_unit_test(test_opaque_addresses),
        cmocka_unit_test(test_pinned_staging), cmocka_unit_test(test_map),
        cmocka_unit_test(test_threads_fixed)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
  }
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache_root);
  if (system(cmd) != 0 && rc == 0) rc = 1;
  return rc;
}
