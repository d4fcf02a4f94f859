/* src/util/files.c and atomic.c: mkdir -p, the temporary-name pattern, writing without
 * following links or blocking on a FIFO, atomic replacement. Local files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/files.h"
#include "util/util.h"

static char tmpdir[256];

static void test_make_dirs(void **state) {
  (void)state;
  char d[600], f[700];
  snprintf(d, sizeof d, "%s/a//b/c/", tmpdir); /* doubled and trailing slashes */
  assert_int_equal(hm_make_dirs(d, 0700, 0), HM_OK);
  assert_int_equal(hm_make_dirs(d, 0700, HM_DIR_OUTPUT), HM_OK); /* existing: fine */
  struct stat sb;
  snprintf(d, sizeof d, "%s/a/b/c", tmpdir);
  assert_int_equal(stat(d, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  assert_int_equal(sb.st_mode & 077, 0); /* private mode asked for */
  snprintf(f, sizeof f, "%s/file", d);
  FILE *fp = fopen(f, "w");
  assert_non_null(fp);
  fclose(fp);
  snprintf(d, sizeof d, "%s/a/b/c/file/x", tmpdir);
  assert_int_equal(hm_make_dirs(d, 0755, 0), HM_ERR_IO);
  assert_non_null(strstr(hm_last_error(), "file exists and is not a folder"));
  /* a link of this user to a folder is a fine output folder */
  char link[600];
  snprintf(link, sizeof link, "%s/mylink", tmpdir);
  snprintf(d, sizeof d, "%s/a", tmpdir);
  assert_int_equal(symlink(d, link), 0);
  assert_int_equal(hm_make_dirs(link, 0755, HM_DIR_OUTPUT), HM_OK);
  assert_int_equal(hm_make_dirs("", 0755, 0), HM_ERR_INVALID_ARG);
}

static void test_tmp_names(void **state) {
  (void)state;
  assert_true(hm_is_tmp_name("x.tmp.123"));
  assert_true(hm_is_tmp_name("ckpt-00000001.hmc.tmp.Ab3dE9xYz0Qq"));
  assert_true(hm_is_tmp_name("a.tmp.b.tmp.7")); /* the last ".tmp." counts */
  assert_false(hm_is_tmp_name(".tmp.123"));     /* no name before it */
  assert_false(hm_is_tmp_name("x.tmp."));
  assert_false(hm_is_tmp_name("x.tmp.12-3"));
  assert_false(hm_is_tmp_name("notes.tmp.txt.bak"));
  assert_false(hm_is_tmp_name("x.tmp.123456789012345678901234567890123")); /* 33 characters */
  assert_false(hm_is_tmp_name("run.tmp"));
}

/* A FIFO at the path is refused at once (a blocking open would wait for a reader forever). */
static void test_open_write_refuses_a_fifo(void **state) {
  (void)state;
  char p[600];
  snprintf(p, sizeof p, "%s/fifo", tmpdir);
  assert_int_equal(mkfifo(p, 0600), 0);
  FILE *f = NULL;
  const double t0 = hm_now_s();
  assert_int_equal(hm_file_open_write(p, 0644, 0, &f), HM_ERR_IO);
  assert_true(hm_now_s() - t0 < 5.0);
  assert_null(f);
  assert_non_null(strstr(hm_last_error(), "not a regular file"));
  /* atomic replacement does not replace it either (nor a link to one, like /dev/stdout) */
  assert_int_equal(hm_atomic_write_file(p, "x", 1), HM_ERR_IO);
  assert_non_null(strstr(hm_last_error(), "not a regular file"));
  struct stat sb;
  assert_int_equal(lstat(p, &sb), 0);
  assert_true(S_ISFIFO(sb.st_mode));
}

/* Atomic replacement: the new content, mode 0644 less the umask, no temporary file left. */
static void test_atomic_write(void **state) {
  (void)state;
  char d[600], p[700];
  snprintf(d, sizeof d, "%s/atomic", tmpdir);
  assert_int_equal(hm_make_dirs(d, 0755, 0), HM_OK);
  snprintf(p, sizeof p, "%s/f.json", d);
  assert_int_equal(hm_atomic_write_file(p, "one\n", 4), HM_OK);
  assert_int_equal(hm_atomic_write_file(p, "two\n", 4), HM_OK);
  char buf[16] = "";
  FILE *f = fopen(p, "r");
  assert_non_null(f);
  assert_non_null(fgets(buf, sizeof buf, f));
  fclose(f);
  assert_string_equal(buf, "two\n");
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  mode_t um = umask(022);
  umask(um);
  assert_int_equal(sb.st_mode & 0777, 0644 & ~um);
  int removed = -1;
  assert_int_equal(hm_clean_tmp_files(d, &removed), HM_OK);
  assert_int_equal(removed, 0);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/test_files.XXXXXX", HM_BINARY_DIR);
  if (!mkdtemp(tmpdir)) return 1;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_make_dirs), cmocka_unit_test(test_tmp_names),
                                     cmocka_unit_test(test_open_write_refuses_a_fifo),
                                     cmocka_unit_test(test_atomic_write)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) rc = rc ? rc : 1;
  return rc;
}
