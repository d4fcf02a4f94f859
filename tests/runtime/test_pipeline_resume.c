/* A pipeline resume from stage checkpoints of different steps or different runs (stage 0 from a
 * `--stop-after 5` dump, stage 1 from a `--stop-after 10` one) is refused on every worker before
 * training, naming both files and what differs, in bounded time and without a worker dying on
 * a broken pipe. Periodic checkpoints (--ckpt-every) keep the newest --keep step folders and
 * resume. Two workers, a small model, local files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];

/* `hetmix launch -n 2 -- hetmix worker ...` with a 2-stage layout; extra: up to 6 more
 * arguments, NULL-terminated. Returns the exit status (-1: killed at the deadline); stderr into
 * err; seconds into *took. */
static int run_job(const char *tag, char *const extra[], char *err, size_t cap, double *took) {
  char errp[300];
  snprintf(errp, sizeof errp, "%s/%s.err", work, tag);
  char *argv[32] = {(char *)hetmix_bin, "launch", "-n", "2", "--timeout", "120", "--", (char *)hetmix_bin, "worker",
                    "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch", "2", "--stages", "0,3,8",
                    "--micro", "2", "--quiet"};
  int n = 22;
  for (int i = 0; extra[i] && n < 31; i++) argv[n++] = extra[i];
  argv[n] = NULL;
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
  char *extra[] = {"--dump", (char *)dir, "--stop-after", (char *)stop, NULL};
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
  char *extra[] = {"--resume", mix, "--dump", out, NULL};
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

static int exists(const char *dir, const char *name) {
  char p[400];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return access(p, F_OK) == 0;
}

/* The same state in two checkpoints: step, data position and every tensor bitwise. */
static void assert_same_state(const char *a, const char *b) {
  hm_ckpt x, y;
  if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) fail_msg("reading %s, %s: %s", a, b, hm_last_error());
  assert_int_equal(x.meta.step, y.meta.step);
  assert_int_equal(x.meta.data_position, y.meta.data_position);
  assert_int_equal(x.n_tensors, y.n_tensors);
  for (int i = 0; i < x.n_tensors; i++)
    if (x.tensors[i].numel != y.tensors[i].numel ||
        memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * sizeof(float)) != 0)
      fail_msg("tensor %s differs between %s and %s", x.tensors[i].name, a, b);
  hm_ckpt_free(&x);
  hm_ckpt_free(&y);
}

/* --ckpt-every 2 --keep 2 over 12 steps: step-00000008/ and step-00000010/ stay (step 12 is the
 * final dump), the older step folders are gone; resuming from step 8 gives the final state. */
static void test_periodic_checkpoints_keep_the_newest(void **state) {
  (void)state;
  char dir[200], rest[220], from[240], err[8192];
  double took;
  snprintf(dir, sizeof dir, "%s/periodic", work);
  snprintf(rest, sizeof rest, "%s/periodic-rest", work);
  snprintf(from, sizeof from, "%s/step-00000008", dir);
  char *extra[] = {"--dump", dir, "--ckpt-every", "2", "--keep", "2", NULL};
  if (run_job("periodic", extra, err, sizeof err, &took) != 0) fail_msg("the periodic run failed:\n%s", err);
  const char *kept[] = {"step-00000008/stage0.hmc", "step-00000008/stage1.hmc", "step-00000010/stage1.hmc",
                        "stage0.hmc", "stage1.hmc"};
  for (size_t i = 0; i < 5; i++)
    if (!exists(dir, kept[i])) fail_msg("%s/%s is missing", dir, kept[i]);
  const char *gone[] = {"step-00000002", "step-00000004", "step-00000006", "step-00000012"};
  for (size_t i = 0; i < 4; i++)
    if (exists(dir, gone[i])) fail_msg("%s/%s is still there", dir, gone[i]);
  char *resume[] = {"--resume", from, "--dump", rest, NULL};
  if (run_job("periodic-rest", resume, err, sizeof err, &took) != 0) fail_msg("resuming from step 8 failed:\n%s", err);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", dir, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
  }
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
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_shards_of_two_steps_are_refused),
                                     cmocka_unit_test(test_periodic_checkpoints_keep_the_newest)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
