/* hm_launch_run and `hetmix launch`: the environment each worker sees, failure detection and
 * naming, signal forwarding, and that no worker (nor a worker's child) outlives the launcher.
 * Workers are small sh scripts, so every case is a real multi-process run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "hetmix/runtime.h"
#include "runtime/proc_helpers.h"

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";

/* A worker script that records its pid (and its background child's) in dir, then waits.
 * term_action is what it does on SIGTERM: "" ignores it (forces the SIGKILL escalation). */
static void worker_script(char *buf, size_t cap, const char *term_action) {
  snprintf(buf, cap,
           "trap '%s' TERM; sleep 60 & echo $! > \"$0/child.$HETMIX_RANK\"; "
           "echo $$ > \"$0/pid.tmp.$HETMIX_RANK\"; mv \"$0/pid.tmp.$HETMIX_RANK\" \"$0/pid.$HETMIX_RANK\"; "
           "wait; wait",
           term_action);
}

static void read_pids(const char *dir, int n, long *pids, long *children) {
  char path[512];
  for (int r = 0; r < n; r++) {
    snprintf(path, sizeof path, "%s/pid.%d", dir, r);
    assert_int_equal(hm_t_wait_file(path, 20.0), 0);
    pids[r] = hm_t_read_long(path);
    snprintf(path, sizeof path, "%s/child.%d", dir, r);
    children[r] = hm_t_read_long(path);
    assert_true(pids[r] > 0);
    assert_true(children[r] > 0);
  }
}

static void test_env_each_worker_sees(void **state) {
  (void)state;
  char dir[128];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-env"), 0);
  setenv("HETMIX_RANK", "99", 1); /* an inherited value must not leak into the workers */
  char *argv[] = {"sh", "-c", "env > \"$0/env.$HETMIX_RANK\"", dir, NULL};
  char *extra[] = {"HETMIX_TEST_EXTRA=yes", NULL};
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 4;
  o.argv = argv;
  o.extra_env = extra;
  hm_launch_result res;
  assert_int_equal(hm_launch_run(&o, &res), HM_OK);
  unsetenv("HETMIX_RANK");
  assert_int_equal(res.failed_rank, -1);
  char secret0[128] = "", store0[128] = "";
  for (int r = 0; r < 4; r++) {
    char path[256], dump[65536], v[256];
    snprintf(path, sizeof path, "%s/env.%d", dir, r);
    assert_int_equal(hm_t_read_file(path, dump, sizeof dump), 0);
    assert_int_equal(hm_t_env_value(dump, "HETMIX_RANK", v, sizeof v), 0);
    assert_int_equal(atoi(v), r);
    assert_int_equal(hm_t_env_value(dump, "HETMIX_LOCAL_RANK", v, sizeof v), 0);
    assert_int_equal(atoi(v), r);
    assert_int_equal(hm_t_env_value(dump, "HETMIX_WORLD_SIZE", v, sizeof v), 0);
    assert_string_equal(v, "4");
    assert_int_equal(hm_t_env_value(dump, "HETMIX_LOCAL_WORLD_SIZE", v, sizeof v), 0);
    assert_string_equal(v, "4");
    assert_int_equal(hm_t_env_value(dump, "HETMIX_TEST_EXTRA", v, sizeof v), 0);
    assert_string_equal(v, "yes");
    assert_int_equal(hm_t_env_value(dump, "HETMIX_STORE_ADDR", v, sizeof v), 0);
    char expect[64];
    snprintf(expect, sizeof expect, "127.0.0.1:%d", res.store_port);
    assert_string_equal(v, expect);
    if (r == 0) strcpy(store0, v);
    assert_string_equal(v, store0);
    assert_int_equal(hm_t_env_value(dump, "HETMIX_SECRET", v, sizeof v), 0);
    assert_int_equal(strlen(v), 64);
    assert_int_equal(strspn(v, "0123456789abcdef"), 64);
    if (r == 0) strcpy(secret0, v);
    assert_string_equal(v, secret0); /* one job, one secret */
  }
  /* a second job gets a different secret */
  char secret1[65];
  assert_int_equal(hm_random_hex(secret1, sizeof secret1, 32), HM_OK);
  assert_string_not_equal(secret1, secret0);
  hm_t_rmtree(dir);
}

static void test_killed_worker_is_named_and_all_stop(void **state) {
  (void)state;
  char dir[128], script[1024], errp[256];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-kill"), 0);
  worker_script(script, sizeof script, ""); /* survivors ignore SIGTERM: SIGKILL must follow */
  snprintf(errp, sizeof errp, "%s/launcher.err", dir);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "4", "--", "sh", "-c", script, dir, NULL};
  pid_t launcher = hm_t_spawn(argv, NULL, errp);
  long pids[4], children[4];
  read_pids(dir, 4, pids, children);
  double t0 = hm_t_now();
  assert_int_equal(kill((pid_t)pids[2], SIGKILL), 0);
  int st = hm_t_wait(launcher, 10.0);
  double took = hm_t_now() - t0;
  assert_true(st != -1);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 128 + 9);
  assert_true(took < 5.0);
  char err[4096], expect[128];
  assert_int_equal(hm_t_read_file(errp, err, sizeof err), 0);
  snprintf(expect, sizeof expect, "rank 2 (pid %ld) was killed by signal 9", pids[2]);
  if (!strstr(err, expect)) fail_msg("launcher said: %s", err);
  for (int r = 0; r < 4; r++) {
    assert_false(hm_t_pid_running((pid_t)pids[r]));            /* reaped by the launcher */
    assert_int_equal(hm_t_wait_gone((pid_t)children[r], 1.0), 0); /* SIGKILLed with the group */
  }
  print_message("  killed rank 2: launcher exited after %.2f s\n", took);
  hm_t_rmtree(dir);
}

static void test_sigterm_is_forwarded(void **state) {
  (void)state;
  char dir[128], script[1024], errp[256];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-term"), 0);
  worker_script(script, sizeof script, "echo term > \"$0/term.$HETMIX_RANK\"; exit 0");
  snprintf(errp, sizeof errp, "%s/launcher.err", dir);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "3", "--", "sh", "-c", script, dir, NULL};
  pid_t launcher = hm_t_spawn(argv, NULL, errp);
  long pids[3], children[3];
  read_pids(dir, 3, pids, children);
  double t0 = hm_t_now();
  kill(launcher, SIGTERM);
  int st = hm_t_wait(launcher, 10.0);
  assert_true(st != -1 && WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 128 + SIGTERM);
  assert_true(hm_t_now() - t0 < 2.0); /* workers exit on SIGTERM: no grace period needed */
  char err[4096], path[256], buf[64];
  assert_int_equal(hm_t_read_file(errp, err, sizeof err), 0);
  if (!strstr(err, "stopped by signal 15")) fail_msg("launcher said: %s", err);
  for (int r = 0; r < 3; r++) {
    snprintf(path, sizeof path, "%s/term.%d", dir, r);
    assert_int_equal(hm_t_read_file(path, buf, sizeof buf), 0); /* each worker saw SIGTERM */
    assert_false(hm_t_pid_running((pid_t)pids[r]));
    assert_int_equal(hm_t_wait_gone((pid_t)children[r], 1.0), 0);
  }
  hm_t_rmtree(dir);
}

static void test_launcher_killed_takes_workers_along(void **state) {
  (void)state;
  char dir[128], errp[256];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-pdeath"), 0);
  snprintf(errp, sizeof errp, "%s/launcher.err", dir);
  /* the worker execs into sleep, so the worker itself is the process PR_SET_PDEATHSIG guards */
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "2", "--", "sh", "-c",
                  "echo $$ > \"$0/pid.tmp.$HETMIX_RANK\"; mv \"$0/pid.tmp.$HETMIX_RANK\" "
                  "\"$0/pid.$HETMIX_RANK\"; exec sleep 60",
                  dir, NULL};
  pid_t launcher = hm_t_spawn(argv, NULL, errp);
  long pids[2];
  for (int r = 0; r < 2; r++) {
    char path[256];
    snprintf(path, sizeof path, "%s/pid.%d", dir, r);
    assert_int_equal(hm_t_wait_file(path, 20.0), 0);
    pids[r] = hm_t_read_long(path);
  }
  usleep(100000); /* let the workers reach exec */
  kill(launcher, SIGKILL);
  hm_t_wait(launcher, 5.0);
  for (int r = 0; r < 2; r++) assert_int_equal(hm_t_wait_gone((pid_t)pids[r], 2.0), 0);
  hm_t_rmtree(dir);
}

static void test_exit_status_is_reported(void **state) {
  (void)state;
  char *argv[] = {"sh", "-c", "if [ $HETMIX_RANK = 1 ]; then exit 3; fi; exec sleep 60", NULL};
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 3;
  o.argv = argv;
  hm_launch_result res;
  assert_int_equal(hm_launch_run(&o, &res), HM_ERR_PEER_DEAD);
  assert_int_equal(res.failed_rank, 1);
  assert_int_equal(res.exit_code, 3);
  assert_int_equal(res.term_signal, 0);
  assert_true(res.stop_s < 1.0); /* sleep dies on SIGTERM */
  char expect[96];
  snprintf(expect, sizeof expect, "rank 1 (pid %d) exited with status 3", res.failed_pid);
  if (!strstr(hm_last_error(), expect)) fail_msg("message: %s", hm_last_error());
}

static void test_bad_command_is_refused(void **state) {
  (void)state;
  char *argv[] = {"hetmix-no-such-command", NULL};
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 2;
  o.argv = argv;
  assert_int_equal(hm_launch_run(&o, NULL), HM_ERR_NOT_FOUND);
  assert_non_null(strstr(hm_last_error(), "hetmix-no-such-command"));

  /* executable bit but not a program: execve itself fails in the child and says why */
  char dir[128], path[256];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-badexe"), 0);
  snprintf(path, sizeof path, "%s/notaprogram", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("\x7f" "ELF this is not a program", f);
  fclose(f);
  chmod(path, 0755);
  char *argv2[] = {path, NULL};
  o.argv = argv2;
  assert_int_equal(hm_launch_run(&o, NULL), HM_ERR_NOT_FOUND);
  assert_non_null(strstr(hm_last_error(), "rank 0"));
  assert_non_null(strstr(hm_last_error(), "format"));
  hm_t_rmtree(dir);

  o.nworkers = 0;
  assert_int_equal(hm_launch_run(&o, NULL), HM_ERR_INVALID_ARG);
  char *argv_true[] = {"true", NULL};
  o.nworkers = 1;
  o.argv = argv_true;
  o.store_host = "10.0.0.1";
  assert_int_equal(hm_launch_run(&o, NULL), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "loopback"));
}

static void test_timeout_stops_the_job(void **state) {
  (void)state;
  char *argv[] = {"sleep", "60", NULL};
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 2;
  o.argv = argv;
  o.timeout_ms = 200;
  hm_launch_result res;
  double t0 = hm_t_now();
  assert_int_equal(hm_launch_run(&o, &res), HM_ERR_TIMEOUT);
  assert_true(hm_t_now() - t0 < 2.0);
  assert_int_equal(res.timed_out, 1);
  assert_int_equal(res.failed_rank, -1);
}

static void test_tagged_output(void **state) {
  (void)state;
  char dir[128], path[256];
  assert_int_equal(hm_t_mkdtemp(dir, sizeof dir, "launch-tag"), 0);
  snprintf(path, sizeof path, "%s/out", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(fd >= 0);
  char *argv[] = {"sh", "-c", "printf 'one\\ntwo-%s' $HETMIX_RANK; echo oops >&2", NULL};
  hm_launch_opts o = HM_LAUNCH_OPTS_INIT;
  o.nworkers = 2;
  o.argv = argv;
  o.tag_output = 1;
  o.out_fd = fd;
  o.err_fd = fd;
  assert_int_equal(hm_launch_run(&o, NULL), HM_OK);
  close(fd);
  char out[4096];
  assert_int_equal(hm_t_read_file(path, out, sizeof out), 0);
  assert_non_null(strstr(out, "[rank 0] one\n"));
  assert_non_null(strstr(out, "[rank 1] one\n"));
  assert_non_null(strstr(out, "[rank 0] two-0\n")); /* unterminated last line is flushed */
  assert_non_null(strstr(out, "[rank 1] two-1\n"));
  assert_non_null(strstr(out, "[rank 1] oops\n"));
  int lines = 0;
  for (char *p = out; *p;) {
    assert_int_equal(strncmp(p, "[rank ", 6), 0); /* every line carries its rank */
    lines++;
    char *nl = strchr(p, '\n');
    assert_non_null(nl);
    p = nl + 1;
  }
  assert_int_equal(lines, 6);
  hm_t_rmtree(dir);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_env_each_worker_sees),
      cmocka_unit_test(test_killed_worker_is_named_and_all_stop),
      cmocka_unit_test(test_sigterm_is_forwarded),
      cmocka_unit_test(test_launcher_killed_takes_workers_along),
      cmocka_unit_test(test_exit_status_is_reported),
      cmocka_unit_test(test_bad_command_is_refused),
      cmocka_unit_test(test_timeout_stops_the_job),
      cmocka_unit_test(test_tagged_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
