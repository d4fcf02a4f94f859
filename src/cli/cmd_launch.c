/* `hetmix launch` (start and supervise the workers of a job on this machine), `hetmix worker`
 * (one worker, started by launch, mpirun or srun) and `hetmix profile`.
 * Parsing and printing only; spawning and supervision live in src/runtime/launch.c. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/runtime.h"

static void launch_usage(FILE *f) {
  fprintf(f,
          "usage: hetmix launch -n N [options] [-- command [args...]]\n"
          "\n"
          "Starts N workers on this machine (ranks 0..N-1) with the environment hmcomm bootstraps\n"
          "from: HETMIX_RANK, HETMIX_WORLD_SIZE, HETMIX_LOCAL_RANK, HETMIX_LOCAL_WORLD_SIZE,\n"
          "HETMIX_STORE_ADDR (127.0.0.1 and a free port) and HETMIX_SECRET (fresh per job).\n"
          "Without a command each worker runs `hetmix worker`. SIGINT/SIGTERM/SIGHUP are forwarded\n"
          "to the workers; the first worker that fails stops the others (SIGTERM, then SIGKILL after\n"
          "the grace period) and is named. Exit status: 0 when all succeed, else the failed worker's\n"
          "status (128+signal when killed).\n"
          "\n"
          "options:\n"
          "  -n, --nworkers N   number of workers\n"
          "  --tag-output       prefix each output line with \"[rank R] \"\n"
          "  --grace-ms MS      SIGTERM to SIGKILL delay when stopping workers [2000]\n"
          "  --timeout S        stop the job after S seconds [no limit]\n"
          "  -h, --help         this text\n");
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!s[0] || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

int hm_cmd_launch(int argc, char **argv) {
  hm_launch_opts opts = HM_LAUNCH_OPTS_INIT;
  long v;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      launch_usage(stdout);
      return 0;
    }
    int has_val = i + 1 < argc;
    if (strcmp(a, "-n") == 0 || strcmp(a, "--nworkers") == 0) {
      if (!has_val || parse_int(argv[++i], 1, 4096, &v) != 0)
        return hm_cli_fail("for example: hetmix launch -n 4 -- ./my_worker", "%s needs a worker count in 1..4096", a);
      opts.nworkers = (int)v;
    } else if (strcmp(a, "--tag-output") == 0) {
      opts.tag_output = 1;
    } else if (strcmp(a, "--grace-ms") == 0) {
      if (!has_val || parse_int(argv[++i], 1, 600000, &v) != 0)
        return hm_cli_fail(NULL, "--grace-ms needs milliseconds in 1..600000");
      opts.grace_ms = (int)v;
    } else if (strcmp(a, "--timeout") == 0) {
      if (!has_val || parse_int(argv[++i], 1, 30L * 86400, &v) != 0)
        return hm_cli_fail(NULL, "--timeout needs seconds in 1..2592000");
      opts.timeout_ms = (int)(v * 1000 > INT_MAX ? INT_MAX : v * 1000);
    } else {
      return hm_cli_fail("run `hetmix launch --help`; put the worker command after `--`",
                         "unknown option '%s'", a);
    }
  }
  if (opts.nworkers <= 0)
    return hm_cli_fail("for example: hetmix launch -n 4 -- ./my_worker", "how many workers? give -n N");

  /* default command: this same executable's `worker` subcommand */
  char self[PATH_MAX];
  char *default_argv[] = {self, "worker", NULL};
  if (i < argc) {
    opts.argv = argv + i;
  } else {
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return hm_cli_fail(NULL, "cannot find the hetmix executable (/proc/self/exe)");
    self[n] = '\0';
    opts.argv = default_argv;
  }

  hm_launch_result res;
  hm_status st = hm_launch_run(&opts, &res);
  if (st == HM_OK) return 0;
  const char *hint = NULL;
  if (st == HM_ERR_PEER_DEAD)
    hint = "the failed rank's own output above says why; rerun with --tag-output to tell ranks apart";
  else if (st == HM_ERR_NOT_FOUND)
    hint = "give the worker command after `--` with a path or a name in PATH";
  else if (st == HM_ERR_TIMEOUT)
    hint = "raise --timeout, or look at the workers' output for the step that hangs";
  hm_cli_fail_status(st, "launch", hint);
  if (st == HM_ERR_PEER_DEAD) return res.term_signal ? 128 + res.term_signal : (res.exit_code > 0 ? res.exit_code : 1);
  if (st == HM_ERR_ABORTED && res.interrupt_signal) return 128 + res.interrupt_signal;
  return 1;
}

int hm_cmd_worker(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'worker' command yet", "'worker' is not implemented");
}
