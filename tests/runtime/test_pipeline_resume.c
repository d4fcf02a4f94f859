/* A pipeline resume from stage checkpoints of different steps or different runs (stage 0 from a
 * `--stop-after 5` dump, stage 1 from a `--stop-after 10` one) is refused on every worker before
 * training, naming both files and what differs, in bounded time and without a worker dying on
 * a broken pipe. Two workers, a small model, local files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];

/* `hetmix launch -n 2 -- hetmix worker ...` with a 2-stage layout; extra: 4 more arguments.
 * Returns the exit status (-1: killed at the deadline); stderr into err; seconds into *took. */
static int run_job(const char *tag, char *extra[4], char *err, size_t cap, double *took) {
  char errp[300];
  snprintf(errp, sizeof errp, "%s/%s.err", work, tag);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "2", "--timeout", "120", "--", (char *)hetmix_bin, "worker",
                  "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch", "2", "--stages", "0,3,8",
                  "--micro", "2", "--quiet", extra[0], extra[1], extra[2], extra[3], NULL};
  const double t0 = hm_t_now();
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 150.0);
  *took = hm_t_now() - t0;
  err[0] = '\0';
  hm_t_read_file(errp, err, cap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static void dump_at(const char *dir, const char *stop) {
  char err[8192];
  double took;
  char *extra[4] = {"--dump", (char *)dir, "--stop-after", (char *)stop};
  if (run_job("dump", extra, err, sizeof err, &took) != 0) fail_msg("the run to step %s failed:\n%s", stop, err);
}

static void copy_file(const char *from, const char *to) {
  static char buf[1 << 20];
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  assert_non_null(a);
  assert_non_null(b);
  for (size_t n; (n = fread(buf, 1, sizeof buf, a)) > 0;) assert_int_equal(fwrite(buf, 1, n, b), n);
  fclose(a);
  assert_int_equal(fclose(b), 0);
}

/* mix/stage0.hmc from dir0, mix/stage1.hmc from dir1; resumes from mix and returns stderr. */
static void resume_mixed(const char *name, const char *dir0, const char *dir1, char *err, size_t cap) {
  char mix[300], from[400], to[400], out[300];
  snprintf(mix, sizeof mix, "%s/%s", work, name);
  snprintf(out, sizeof out, "%s/%s-out", work, name);
  assert_int_equal(mkdir(mix, 0755), 0);
  for (int s = 0; s < 2; s++) {
    snprintf(from, sizeof from, "%s/stage%d.hmc", s == 0 ? dir0 : dir1, s);
    snprintf(to, sizeof to, "%s/stage%d.hmc", mix, s);
    copy_file(from, to);
  }
  double took;
  char *extra[4] = {"--resume", mix, "--dump", out};
  int rc = run_job(name, extra, err, cap, &took);
  if (rc == -1) fail_msg("the mixed resume did not end within the deadline:\n%s", err);
  if (rc == 0) fail_msg("the mixed resume of %s was accepted:\n%s", mix, err);
  for (int s = 0; s < 2; s++) {
    snprintf(to, sizeof to, "%s/stage%d.hmc", mix, s);
    if (!strstr(err, to)) fail_msg("the error does not name %s:\n%s", to, err);
  }
  if (strstr(err, "Broken pipe") || strstr(err, "killed by signal")) fail_msg("a worker died instead:\n%s", err);
  assert_true(took < 60.0);
  print_message("  %s: refused after %.2f s\n", name, took);
}

static void test_shards_of_two_steps_are_refused(void **state) {
  (void)state;
  char d5[300], d10[300], other5[300], err[16384];
  snprintf(d5, sizeof d5, "%s/dump5", work);
  snprintf(d10, sizeof d10, "%s/dump10", work);
  snprintf(other5, sizeof other5, "%s/other5", work);
  dump_at(d5, "5");
  dump_at(d10, "10");
  resume_mixed("mix-steps", d5, d10, err, sizeof err);
  if (!strstr(err, "is step 5") || !strstr(err, "is step 10") || !strstr(err, "differ in step"))
    fail_msg("the error does not say the steps differ:\n%s", err);
  /* same step and options, another run: the run identity tells them apart */
  dump_at(other5, "5");
  resume_mixed("mix-runs", d5, other5, err, sizeof err);
  if (!strstr(err, "differ in run")) fail_msg("the error does not say the runs differ:\n%s", err);
}

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "pipe-resume") != 0) return -1;
  enum { NTOK = 20000 };
  static uint8_t tok[NTOK];
  uint64_t x = 7;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 7 == 0 ? ' ' : 'a' + (x % 26));
  }
  snprintf(tokpath, sizeof tokpath, "%s/data.tok", work);
  return hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) == HM_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  hm_t_rmtree(work);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_shards_of_two_steps_are_refused)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
