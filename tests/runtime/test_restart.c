/* Automatic restarts (hetmix launch --max-restarts): a fault-injection matrix over a small
 * 2-stage model. Each trial injects one fault on the job's first attempt (HETMIX_FAULT, see
 * src/runtime/heartbeat.h): kill -9 of a random rank at a random step, SIGSTOP of a rank, a
 * kill during a checkpoint write, two ranks killed in one step, a full checkpoint folder
 * (`test_restart diskfull`, its own ctest entry: it mounts a small tmpfs and is skipped when it
 * cannot). Every trial must finish, name the failed rank, and end with parameters and AdamW
 * moments bitwise equal to an uninterrupted run's, on f32 and f64 devices. The random choices
 * come from a seed printed first (HETMIX_TEST_SEED=<n> repeats a run). Also: the newest
 * complete checkpoint is never a partial one, and the fail-slow rule, alone and end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sys/mount.h>

#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "runtime/failslow.h"
#include "runtime/heartbeat.h"
#include "runtime/watch.h"
#include "util/util.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"
#define STEPS 12
#define HM_TEST_SKIP 77

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];
static uint64_t rng_state;
/* the model and stages of run_job: the tiny one, or one with enough compute per step (tens of
 * ms) for the fail-slow rule's 10 ms floor */
static const char *job_model = MODEL, *job_stages = "0,3,8";
/* one more launch option of run_job and its value (--launcher, --watchdog) */
static const char *job_lopt = "--grace-ms", *job_lval = "2000";

static uint64_t rnd(uint64_t n) {
  rng_state = hm_splitmix64(rng_state);
  return rng_state % n;
}

/* A restartable job: `nranks` (2: stages 0,3,8; 4: the same x 2 replicas), --dump dir with a
 * checkpoint every 2 steps, HETMIX_FAULT = fault (NULL: none). Returns the exit status (-1 at the
 * deadline); stderr into err, the launcher's events (JSON lines) into ev. */
static int run_job(const char *dir, int nranks, int f64, const char *fault, char *err, size_t cap, char *ev,
                   size_t evcap) {
  char errp[300], evp[300], n_s[8];
  snprintf(errp, sizeof errp, "%s.err", dir);
  snprintf(evp, sizeof evp, "%s.events", dir);
  snprintf(n_s, sizeof n_s, "%d", nranks);
  unlink(evp);
  char *argv[48] = {(char *)hetmix_bin, "launch", "-n", n_s, "--max-restarts", "3", "--timeout", "150", "--events",
                    evp, (char *)job_lopt, (char *)job_lval, "--",
                    (char *)hetmix_bin, "worker", "--model", (char *)job_model, "--data", tokpath, "--steps", "12",
                    "--batch", "2", "--stages", (char *)job_stages, "--quiet", "--dump", (char *)dir,
                    "--ckpt-every", "2", "--keep", "2"};
  int n = 32;
  if (nranks == 4) argv[n++] = "--micro", argv[n++] = "1,1";
  if (f64) argv[n++] = "--device", argv[n++] = "ref:dtype=f64";
  argv[n] = NULL;
  if (fault) setenv("HETMIX_FAULT", fault, 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  int st = hm_t_wait(pid, 180.0);
  err[0] = ev[0] = '\0';
  hm_t_read_file(errp, err, cap);
  hm_t_read_file(evp, ev, evcap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
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

static void reference(const char *name, int nranks, int f64) {
  char dir[300], err[16384], ev[4096];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  if (access(dir, F_OK) == 0) return;
  if (run_job(dir, nranks, f64, NULL, err, sizeof err, ev, sizeof ev) != 0)
    fail_msg("the uninterrupted run %s failed:\n%s", name, err);
}

/* One trial: the job finishes, its first attempt failed naming `rank` (-1: any) with `cause`
 * ("" any), and the final state equals the reference's bitwise. */
static void trial(const char *name, int nranks, int f64, const char *fault, int rank, const char *cause) {
  char ref[300], dir[300], err[32768], ev[8192], a[400], b[400];
  snprintf(ref, sizeof ref, "%s/ref%d%s", work, nranks, f64 ? "-f64" : "");
  reference(strrchr(ref, '/') + 1, nranks, f64);
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  const double t0 = hm_t_now();
  int rc = run_job(dir, nranks, f64, fault, err, sizeof err, ev, sizeof ev);
  if (rc != 0) fail_msg("%s (HETMIX_FAULT=%s) did not finish (status %d):\n%s", name, fault, rc, err);
  if (!strstr(ev, "\"attempt\":0,\"status\":\"peer dead\"") || !strstr(ev, "\"restarting\":true"))
    fail_msg("%s: the first attempt did not fail and restart:\n%s\n%s", name, ev, err);
  if (rank >= 0) {
    char want[64];
    snprintf(want, sizeof want, "\"rank\":%d,\"cause\":\"%s\"", rank, cause);
    if (!strstr(ev, want)) fail_msg("%s: the failure was not named as %s:\n%s", name, want, ev);
  }
  if (!strstr(err, "on host ") || !strstr(err, f64 ? ", device ref" : ", device cpu")) fail_msg("%s: no host and device named:\n%s", name, err);
  for (int s = 0; s < 2; s++) {
    snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", dir, s);
    assert_same_state(a, b);
  }
  print_message("  %-14s HETMIX_FAULT=%-34s finished in %.1f s, bitwise equal to the uninterrupted run\n", name, fault,
                hm_t_now() - t0);
}

static void test_kill_random_rank_at_random_step(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill", 2, 0, fault, rank, "signal");
}

static void test_sigstop_is_a_silent_rank(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "stop:rank=%d:step=%d", rank, step);
  trial("stop", 2, 0, fault, rank, "silent");
}

static void test_kill_during_checkpoint_write(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 2 * (1 + (int)rnd(STEPS / 2 - 1)); /* a checkpointed step */
  snprintf(fault, sizeof fault, "ckptkill:rank=%d:step=%d", rank, step);
  trial("ckptkill", 2, 0, fault, rank, "signal");
}

static void test_two_ranks_killed_in_one_step(void **state) {
  (void)state;
  char fault[128];
  const int a = (int)rnd(4), b = (a + 1 + (int)rnd(3)) % 4, step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d;kill:rank=%d:step=%d", a, step, b, step);
  trial("kill2", 4, 0, fault, -1, "");
}

/* Under an external launcher (a stand-in for srun that starts the ranks and stops the rest when
 * one fails): the killed rank is named from the heartbeats (it died without an orderly end, the
 * others were stopped by SIGTERM), and the restarted job ends bitwise equal. */
static void test_external_launcher_restart(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  job_lopt = "--launcher", job_lval = HM_SOURCE_DIR "/tests/runtime/fake_srun.sh -n 2";
  trial("srun-kill", 2, 0, fault, rank, "exit");
  job_lopt = "--grace-ms", job_lval = "2000";
}

/* A rank whose training thread stops while its heartbeat goes on is caught by the progress
 * watchdog (its floor lowered to 2 s for the test) and named: it is the one not waiting on a
 * peer. */
static void test_hang_caught_by_watchdog(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 2 + (int)rnd(STEPS - 2);
  snprintf(fault, sizeof fault, "hang:rank=%d:step=%d", rank, step);
  job_lopt = "--watchdog", job_lval = "2";
  trial("hang", 2, 0, fault, rank, "hang");
  job_lopt = "--grace-ms", job_lval = "2000";
}

/* --drop-after 1 on 2 replicas x 2 stages: the replica of a killed rank is dropped, the other
 * takes its micro-batches, and the job resumes on 2 workers and finishes all 12 steps with
 * replica 0's checkpoint. --exclude drops one before starting; a pipeline stage cannot go. */
static void test_drop_failing_replica(void **state) {
  (void)state;
  char dir[300], errp[320], err[32768], ck[400];
  snprintf(dir, sizeof dir, "%s/drop", work);
  snprintf(errp, sizeof errp, "%s/drop.err", work);
  const int rank = 2 + (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  char fault[96];
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "4", "--max-restarts", "2", "--drop-after", "1", "--timeout", "150",
                  "--", (char *)hetmix_bin, "worker", "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch",
                  "2", "--stages", "0,3,8", "--micro", "2,2", "--quiet", "--dump", dir, "--ckpt-every", "2", NULL};
  setenv("HETMIX_FAULT", fault, 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  int st = hm_t_wait(pid, 180.0);
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s did not finish:\n%s", fault, err);
  if (!strstr(err, "dropping replica 1; 2 workers now, --micro 4")) fail_msg("replica 1 not dropped:\n%s", err);
  hm_ckpt_meta m;
  snprintf(ck, sizeof ck, "%s/stage1.hmc", dir);
  assert_int_equal(hm_ckpt_read_meta(ck, &m), HM_OK);
  assert_int_equal(m.step, STEPS);
  assert_int_equal(m.micro_batches, 4);
  /* a stage is not a replica: refused before anything starts */
  char *one[] = {(char *)hetmix_bin, "launch", "-n", "2", "--exclude", "1", "--", (char *)hetmix_bin, "worker",
                 "--model", MODEL, "--data", tokpath, "--steps", "2", "--batch", "2", "--stages", "0,3,8", NULL};
  pid = hm_t_spawn(one, NULL, errp);
  st = hm_t_wait(pid, 60.0);
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) == 0 || !strstr(err, "only one"))
    fail_msg("excluding the only replica was not refused:\n%s", err);
  print_message("  drop           HETMIX_FAULT=%-34s replica 1 dropped, finished on 2 workers\n", fault);
}

static void test_f64_kill_random_rank(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill-f64", 2, 1, fault, rank, "signal");
}

/* A worker slowed 3x from step 5 is reported by name within 5 steps; nobody is reported in a
 * clean run of the same job. */
static void test_fail_slow_worker_is_named(void **state) {
  (void)state;
  char dir[300], err[32768], ev[4096], clean[300];
  job_model = "L4,C192,NH4,V256,T64", job_stages = "0,3,6";
  snprintf(clean, sizeof clean, "%s/slow-clean", work);
  snprintf(dir, sizeof dir, "%s/slow", work);
  if (run_job(clean, 2, 0, NULL, err, sizeof err, ev, sizeof ev) != 0) fail_msg("the clean run failed:\n%s", err);
  if (strstr(err, "fail-slow")) fail_msg("the clean run reported a slow rank:\n%s", err);
  const int rank = (int)rnd(2);
  char fault[96];
  snprintf(fault, sizeof fault, "slow:rank=%d:step=5:factor=3", rank);
  int rc = run_job(dir, 2, 0, fault, err, sizeof err, ev, sizeof ev);
  job_model = MODEL, job_stages = "0,3,8";
  if (rc != 0) fail_msg("the slowed run failed:\n%s", err);
  char want[64];
  snprintf(want, sizeof want, "fail-slow: rank %d ", rank);
  const char *hit = strstr(err, want);
  if (!hit) fail_msg("the slowed rank %d was not reported:\n%s", rank, err);
  int at = 0;
  const char *p = strstr(hit, " at step ");
  if (!p || sscanf(p, " at step %d", &at) != 1) fail_msg("no step in the report:\n%s", hit);
  if (at > 5 + 5) fail_msg("reported at step %d, more than 5 steps after step 5", at);
  if (strstr(hit + 1, "fail-slow:") || strstr(err, "fail-slow: rank ") != hit)
    fail_msg("another report besides rank %d's:\n%s", rank, err);
  print_message("  rank %d slowed 3x from step 5: reported at step %d\n", rank, at);
}

/* ---- the fail-slow rule, without processes (the newest complete checkpoint: test_model_ckpt) */

/* The progress watchdog after a rank's first step: that step's time (since the job started)
 * already sets the deadline, so a second step slower than the floor is not a hang. */
static void test_watch_counts_first_step(void **state) {
  (void)state;
  char dir[300];
  snprintf(dir, sizeof dir, "%s/hb-first", work);
  assert_int_equal(mkdir(dir, 0700), 0);
  setenv("HETMIX_HEARTBEAT_DIR", dir, 1);
  hm_watch w;
  assert_int_equal(hm_watch_init(&w, dir, 1, 5000, 100, 60000), HM_OK); /* floor 100 ms */
  assert_int_equal(hm_hb_start(0, "cpu"), HM_OK);
  int cause = 0;
  double idle = 0;
  usleep(300 * 1000); /* the first step takes 300 ms */
  hm_hb_step(1);
  assert_int_equal(hm_watch_check(&w, hm_now_ns(), NULL, &cause, &idle), -1);
  const uint64_t d = hm_watch_step_deadline(&w, 0);
  hm_hb_stop();
  unsetenv("HETMIX_HEARTBEAT_DIR");
  hm_watch_free(&w);
  print_message("  deadline after the first 300 ms step: %.2f s (floor 0.1 s)\n", (double)d * 1e-9);
  assert_true(d >= (uint64_t)HM_WATCH_FACTOR * 300000000u);
}

static void test_fail_slow_rule(void **state) {
  (void)state;
  enum { N = 4 };
  hm_failslow fs;
  assert_int_equal(hm_failslow_init(&fs, N), HM_OK);
  double expect[N] = {0.1, 0.2, 0, 0}, meas[N], ref[N];
  int newly[N], first = -1;
  for (int k = 0; k < 20; k++) {
    const double load = k >= 8 && k < 12 ? 2.5 : 1.0; /* a machine-wide slowdown flags nobody */
    for (int i = 0; i < N; i++) meas[i] = load * (expect[i] > 0 ? expect[i] : 0.05 * (i + 1));
    if (k == 4 || k == 6) meas[1] *= 3; /* two noisy steps in five flag nobody */
    if (k >= 14) meas[2] *= 3;         /* rank 2 (no prediction: its own first steps) slowed 3x */
    int c = hm_failslow_step(&fs, meas, expect, newly, ref);
    for (int i = 0; i < N; i++)
      if (newly[i]) {
        assert_int_equal(i, 2);
        assert_int_equal(c, 1);
        first = k;
      }
  }
  assert_int_equal(first, 14 + HM_FS_HITS - 1);
  hm_failslow_free(&fs);
}

/* ---- a full checkpoint folder (its own ctest entry) */

/* The checkpoint folder is an 8 MiB tmpfs filled up by a file before the job starts: periodic
 * checkpoints (1.1 MB each) fail and are skipped while training goes on; once the file is removed (after the
 * first skip is reported) checkpoints succeed again; a rank killed later resumes from a
 * complete one, and the run ends bitwise equal to the uninterrupted one. */
static int diskfull(void) {
  char mnt[300], filler[400], errp[400], ref[300], a[600], b[600];
  snprintf(mnt, sizeof mnt, "%s/full", work);
  mkdir(mnt, 0755);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=8m") != 0) {
    printf("skipped: cannot mount a tmpfs on %s (%s): needs root or CAP_SYS_ADMIN\n", mnt, strerror(errno));
    return HM_TEST_SKIP;
  }
  int rc = 1;
  snprintf(filler, sizeof filler, "%s/filler", mnt);
  FILE *f = fopen(filler, "w");
  static char block[4096];
  while (f && fwrite(block, 1, sizeof block, f) == sizeof block) {
  }
  if (f) fclose(f);
  char dump[400];
  snprintf(dump, sizeof dump, "%s/run", mnt);
  snprintf(errp, sizeof errp, "%s/run.err", work);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "2", "--max-restarts", "3", "--timeout", "150", "--",
                  (char *)hetmix_bin, "worker", "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch", "2",
                  "--stages", "0,3,8", "--quiet", "--dump", dump, "--ckpt-every", "2", "--keep", "1", NULL};
  setenv("HETMIX_FAULT", "kill:rank=1:step=9", 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  static char err[65536];
  const double end = hm_t_now() + 150;
  int removed = 0, st = 0;
  for (;;) { /* the operator frees space once the first skipped checkpoint is reported */
    if (!removed && hm_t_read_file(errp, err, sizeof err) == 0 && strstr(err, "checkpoint skipped"))
      removed = unlink(filler) == 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) break;
    if (hm_t_now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      break;
    }
    usleep(2000);
  }
  hm_t_read_file(errp, err, sizeof err);
  snprintf(ref, sizeof ref, "%s/ref2", work);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("FAIL: the job did not finish:\n%s\n", err);
  } else if (!strstr(err, "checkpoint skipped") || !removed) {
    printf("FAIL: no checkpoint was skipped on the full disk:\n%s\n", err);
  } else {
    rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
      hm_ckpt x, y;
      snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
      snprintf(b, sizeof b, "%s/stage%d.hmc", dump, s);
      if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) {
        printf("FAIL: %s\n", hm_last_error());
        rc = 1;
        break;
      }
      for (int i = 0; i < x.n_tensors && rc == 0; i++)
        if (i >= y.n_tensors || x.tensors[i].numel != y.tensors[i].numel ||
            hm_ckpt_elem_size(&x) != hm_ckpt_elem_size(&y) ||
            memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
          printf("FAIL: tensor %s differs\n", x.tensors[i].name), rc = 1;
      hm_ckpt_free(&x);
      hm_ckpt_free(&y);
    }
    if (rc == 0) printf("diskfull: checkpoints skipped while the folder was full, run finished bitwise equal\n");
  }
  umount2(mnt, MNT_DETACH);
  return rc;
}

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "restart") != 0) return -1;
  const char *s = getenv("HETMIX_TEST_SEED");
  rng_state = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
  printf("test_restart: seed %llu (HETMIX_TEST_SEED=%llu repeats it)\n", (unsigned long long)rng_state,
         (unsigned long long)rng_state);
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

/* 1 when a checkpoint keeps an f64 stage's state exactly (its file is about twice an f32
 * stage's); a format that rounds it to f32 cannot resume an f64 run bitwise. */
int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "f64") == 0) { /* `test_restart f64`: its own ctest entry */
    const struct CMUnitTest f64_tests[] = {cmocka_unit_test(test_f64_kill_random_rank)};
    return cmocka_run_group_tests(f64_tests, setup, teardown);
  }
  if (argc > 1 && strcmp(argv[1], "diskfull") == 0) {
    if (setup(NULL) != 0) return 1;
    char ref[300], err[16384], ev[4096];
    snprintf(ref, sizeof ref, "%s/ref2", work);
    int rc = run_job(ref, 2, 0, NULL, err, sizeof err, ev, sizeof ev) == 0 ? diskfull() : 1;
    teardown(NULL);
    return rc;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_watch_counts_first_step),
      cmocka_unit_test(test_fail_slow_rule),
      cmocka_unit_test(test_kill_random_rank_at_random_step),
      cmocka_unit_test(test_sigstop_is_a_silent_rank),
      cmocka_unit_test(test_kill_during_checkpoint_write),
      cmocka_unit_test(test_two_ranks_killed_in_one_step),
      cmocka_unit_test(test_hang_caught_by_watchdog),
      cmocka_unit_test(test_fail_slow_worker_is_named),
      cmocka_unit_test(test_external_launcher_restart),
      cmocka_unit_test(test_drop_failing_replica),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
