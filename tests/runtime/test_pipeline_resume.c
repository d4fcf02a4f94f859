/* A pipeline resume from stage checkpoints of different steps or different runs (stage 0 from a
 * `--stop-after 5` dump, stage 1 from a `--stop-after 10` one) is refused on every worker before
 * training, naming both files and what differs, in bounded time and without a worker dying on
 * a broken pipe. Periodic checkpoints (--ckpt-every) keep the newest --keep complete step
 * folders, each with a manifest, and resume bitwise from one (f32 and f64); a worker killed
 * during training has its shard recovered from its peer's in-memory copy, bitwise. Two
 * workers, a small model, local files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>

#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];

/* `hetmix launch -n 2 -- hetmix worker ...` with a 2-stage layout; extra: up to 17 more
 * arguments (a repeated option overrides), NULL-terminated. Returns the exit status (-1: killed at the deadline); stderr into
 * err; seconds into *took. */
static int run_job(const char *tag, char *const extra[], char *err, size_t cap, double *took) {
  char errp[300];
  snprintf(errp, sizeof errp, "%s/%s.err", work, tag);
  char *argv[40] = {(char *)hetmix_bin, "launch", "-n", "2", "--timeout", "120", "--", (char *)hetmix_bin, "worker",
                    "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch", "2", "--stages", "0,3,8",
                    "--micro", "2", "--quiet"};
  int n = 22;
  for (int i = 0; extra[i] && n < 39; i++) argv[n++] = extra[i]; /* a later option overrides */
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
    if (x.tensors[i].numel != y.tensors[i].numel || hm_ckpt_elem_size(&x) != hm_ckpt_elem_size(&y) ||
        memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
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
  /* both kept folders are complete: a manifest naming their shards, which match it */
  char newest[400];
  int64_t step = 0;
  if (hm_ckpt_newest_complete(dir, newest, sizeof newest, &step) != HM_OK) fail_msg("%s", hm_last_error());
  assert_int_equal(step, 10);
  hm_ckpt_manifest m;
  if (hm_ckpt_manifest_read(from, &m, NULL, 0) != HM_OK) fail_msg("%s", hm_last_error());
  assert_true(m.step == 8 && m.nstages == 2 && m.world == 2 && m.data_position == 8u * 2 * 2);
  if (hm_ckpt_manifest_verify(from, &m) != HM_OK) fail_msg("%s", hm_last_error());
  char *resume[] = {"--resume", from, "--dump", rest, NULL};
  if (run_job("periodic-rest", resume, err, sizeof err, &took) != 0) fail_msg("resuming from step 8 failed:\n%s", err);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", dir, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
  }
}

/* An f64 run (ref:dtype=f64) resumed from its periodic checkpoint's manifest ends in bitwise
 * the state of the uninterrupted run: the shards hold the f64 state itself (stored as f32 the
 * resumed run would start from rounded weights and moments and drift away). */
static void test_f64_resume_from_manifest_is_bitwise(void **state) {
  (void)state;
  char dir[200], rest[220], from[260], err[8192];
  double took;
  snprintf(dir, sizeof dir, "%s/f64", work);
  snprintf(rest, sizeof rest, "%s/f64-rest", work);
  snprintf(from, sizeof from, "%s/step-00000004/manifest.json", dir);
  char *extra[] = {"--device", "ref:dtype=f64", "--dump", dir, "--ckpt-every", "4", NULL};
  if (run_job("f64", extra, err, sizeof err, &took) != 0) fail_msg("the f64 run failed:\n%s", err);
  char *resume[] = {"--device", "ref:dtype=f64", "--resume", from, "--dump", rest, NULL};
  if (run_job("f64-rest", resume, err, sizeof err, &took) != 0) fail_msg("resuming from step 4 failed:\n%s", err);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", dir, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
  }
}

/* The folder of a run's peer copies under root (hmpeer-<uid>-<run>), or "" while none. */
static void peer_run_dir(const char root[200], char out[600], size_t cap) {
  out[0] = '\0';
  DIR *d = opendir(root);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strncmp(e->d_name, "hmpeer-", 7) == 0) snprintf(out, cap, "%s/%s", root, e->d_name);
  closedir(d);
}

/* Rank 1 is killed (SIGKILL) during training once a checkpoint is complete in memory; its
 * shard is taken from the copy its peer (rank 0) holds: a resume from the peer folder, and one
 * from the disk manifest with rank 1's disk shard gone, end in bitwise the state of a run that
 * never failed. */
static void test_killed_worker_recovers_from_peer_copy(void **state) {
  (void)state;
  char root[200], dir[200], peer[600], mem[800], ref[200], rest[200], errp[240], err[8192], stop[32];
  snprintf(root, sizeof root, "%s/shm", work);
  snprintf(dir, sizeof dir, "%s/killed", work);
  snprintf(errp, sizeof errp, "%s/killed.err", work);
  assert_int_equal(mkdir(root, 0700), 0);
  setenv("HETMIX_PEER_DIR", root, 1);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "2", "--timeout", "120", "--", (char *)hetmix_bin, "worker",
                  "--model", MODEL, "--data", tokpath, "--steps", "100000", "--batch", "2", "--stages", "0,3,8",
                  "--micro", "2", "--quiet", "--dump", dir, "--ckpt-every", "2", NULL};
  pid_t launcher = hm_t_spawn(argv, NULL, errp);
  int64_t n = 0;
  for (double t0 = hm_t_now(); hm_t_now() - t0 < 60.0 && n < 4; usleep(20000)) {
    peer_run_dir(root, peer, sizeof peer);
    if (peer[0] && hm_ckpt_newest_complete(peer, mem, sizeof mem, &n) != HM_OK) n = 0;
  }
  if (n < 4) fail_msg("no checkpoint in the peers' memory within 60 s (%s)", peer);
  char path[64], kids[256] = "";
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)launcher, (int)launcher);
  assert_int_equal(hm_t_read_file(path, kids, sizeof kids), 0);
  long pids[2];
  assert_int_equal(sscanf(kids, "%ld %ld", &pids[0], &pids[1]), 2);
  kill((pid_t)pids[1], SIGKILL);
  int st = hm_t_wait(launcher, 20.0);
  assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 128 + 9);
  if (hm_ckpt_newest_complete(peer, mem, sizeof mem, &n) != HM_OK) fail_msg("after the kill: %s", hm_last_error());
  snprintf(stop, sizeof stop, "%lld", (long long)n + 2);
  snprintf(ref, sizeof ref, "%s/killed-ref", work);
  double took;
  char *steps[] = {"--steps", "100000", NULL};
  (void)steps;
  char *ref_args[] = {"--steps", "100000", "--stop-after", stop, "--dump", ref, NULL};
  if (run_job("killed-ref", ref_args, err, sizeof err, &took) != 0) fail_msg("the reference run failed:\n%s", err);
  /* from the peer folder itself (every shard a copy a peer held) */
  snprintf(rest, sizeof rest, "%s/killed-mem", work);
  char *from_mem[] = {"--steps", "100000", "--resume", mem, "--stop-after", stop, "--dump", rest, NULL};
  if (run_job("killed-mem", from_mem, err, sizeof err, &took) != 0) fail_msg("resuming from %s failed:\n%s", mem, err);
  for (int s = 0; s < 2; s++) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
    assert_same_state(a, b);
  }
  /* from the disk checkpoint of that step, rank 1's shard lost there: the peer copy stands in */
  char disk[300], lost[340];
  snprintf(disk, sizeof disk, "%s/step-%08lld", dir, (long long)n);
  if (exists(disk, "manifest.json")) {
    snprintf(lost, sizeof lost, "%s/stage1.hmc", disk);
    assert_int_equal(unlink(lost), 0);
    snprintf(rest, sizeof rest, "%s/killed-disk", work);
    char *from_disk[] = {"--steps", "100000", "--resume", disk, "--stop-after", stop, "--dump", rest, NULL};
    if (run_job("killed-disk", from_disk, err, sizeof err, &took) != 0) fail_msg("resuming from %s failed:\n%s", disk, err);
    for (int s = 0; s < 2; s++) {
      char a[400], b[400];
      snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
      snprintf(b, sizeof b, "%s/stage%d.hmc", rest, s);
      assert_same_state(a, b);
    }
    print_message("  killed rank 1 after step %lld: resumed from the peer folder and from the disk manifest\n", (long long)n);
  } else {
    print_message("  killed rank 1 after step %lld: resumed from the peer folder (the disk manifest of that step was "
                  "not written yet)\n", (long long)n);
  }
  unsetenv("HETMIX_PEER_DIR");
}

/* Every "val_loss" of a metrics.jsonl, in order; returns how many (at most cap). */
static int read_val_losses(const char *path, double *out, int cap) {
  static char text[1 << 16];
  if (hm_t_read_file(path, text, sizeof text) != 0) fail_msg("cannot read %s", path);
  int n = 0;
  for (const char *p = text; n < cap && (p = strstr(p, "\"val_loss\":")) != NULL; p += 11) out[n++] = strtod(p + 11, NULL);
  return n;
}

/* `hetmix train` (one process) and the pipeline workers, same data and options with
 * --eval-every 6 over 12 steps, report a validation loss at steps 6 and 12: two stages, and two
 * one-stage replicas, in f64 within 1e-9 relative of the one process's (their weights agree to
 * ~1e-13 there: docs/runtime.md; the loss is a smooth function of them, so anything but the
 * same batches through the same model is far outside it). */
static void test_pipeline_evaluates_like_one_process(void **state) {
  (void)state;
  static const struct { const char *stages, *micro, *tag; } cases[] = {{"0,3,8", "2", "eval-2stages"},
                                                                        {"0,8", "1,1", "eval-2replicas"}};
  /* run_job's options: 12 steps, batch 2, 2 micro-batches; validation: the default 8 batches */
  for (int c = 0; c < 2; c++) {
    char one[300], pipe[300], path[400], err[8192];
    double took;
    snprintf(one, sizeof one, "%s/%s-one", work, cases[c].tag);
    snprintf(pipe, sizeof pipe, "%s/%s-pipe", work, cases[c].tag);
    char *single[] = {(char *)hetmix_bin, "train", "--single", "--model", MODEL, "--data", tokpath, "--steps", "12",
                      "--batch", "2", "--grad-accum", "2", "--device", "ref:dtype=f64", "--eval-every", "6",
                      "--out", one, NULL};
    snprintf(path, sizeof path, "%s/%s-one.err", work, cases[c].tag);
    pid_t pid = hm_t_spawn(single, "/dev/null", path);
    int st = hm_t_wait(pid, 120.0);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("the one-process run %s failed", cases[c].tag);
    char *extra[] = {"--device", "ref:dtype=f64", "--stages", (char *)cases[c].stages, "--micro", (char *)cases[c].micro,
                     "--eval-every", "6", "--out", pipe, NULL};
    if (run_job(cases[c].tag, extra, err, sizeof err, &took) != 0) fail_msg("the pipeline run failed:\n%s", err);
    double a[4], b[4];
    snprintf(path, sizeof path, "%s/metrics.jsonl", one);
    const int na = read_val_losses(path, a, 4);
    snprintf(path, sizeof path, "%s/metrics.jsonl", pipe);
    const int nb = read_val_losses(path, b, 4);
    assert_int_equal(na, 2);
    assert_int_equal(nb, 2);
    for (int i = 0; i < 2; i++) {
      const double rel = fabs(a[i] - b[i]) / fabs(a[i]);
      if (!(rel <= 1e-9))
        fail_msg("%s: validation loss %d: one process %.17g, pipeline %.17g", cases[c].tag, i, a[i], b[i]);
    }
    print_message("  %s: validation losses %.9g, %.9g (pipeline %.9g, %.9g)\n", cases[c].tag, a[0], a[1], b[0], b[1]);
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
                                     cmocka_unit_test(test_periodic_checkpoints_keep_the_newest),
                                     cmocka_unit_test(test_f64_resume_from_manifest_is_bitwise),
                                     cmocka_unit_test(test_killed_worker_recovers_from_peer_copy),
                                     cmocka_unit_test(test_pipeline_evaluates_like_one_process)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
