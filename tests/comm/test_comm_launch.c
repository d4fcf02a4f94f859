/* Launch: 4 ranks under Debian's Open MPI `mpirun -np 4` bootstrap hmcomm from the OMPI_*
 * environment (store address exported with -x HETMIX_STORE_ADDR), and 4 ranks started with
 * torchrun-style RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. Both run the
 * comm_launch_probe program (argv[1] is its path; argv[2] is mpirun's). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hm_ranks.h"

static const char *g_probe, *g_mpirun = "mpirun";
static const char *g_secret = "launch-test-secret-4f2a9c";

static void test_mpirun_4_ranks(void **state) {
  (void)state;
  int port = hm_free_port();
  assert_true(port > 0);
  char store[64], secret[128];
  snprintf(store, sizeof store, "HETMIX_STORE_ADDR=127.0.0.1:%d", port);
  snprintf(secret, sizeof secret, "HETMIX_SECRET=%s", g_secret);
  char *env[] = {store, secret, "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                 "OMPI_MCA_rmaps_base_oversubscribe=1", NULL};
  char *argv[] = {(char *)g_mpirun, "-np", "4", "--oversubscribe", "--bind-to", "none",
                  "-x", "HETMIX_STORE_ADDR", "-x", "HETMIX_SECRET",
                  (char *)g_probe, "--expect-source", "openmpi", NULL};
  static char out[65536];
  int rc = hm_run_cmd(argv, env, 90, out, sizeof out);
  printf("%s", out);
  assert_int_equal(rc, 0);
  for (int r = 0; r < 4; r++) {
    char line[64];
    snprintf(line, sizeof line, "probe rank %d/4 local %d source openmpi ok", r, r);
    if (!strstr(out, line)) fail_msg("missing '%s' in mpirun output", line);
  }
}

typedef struct torchrun_arg {
  int port;
} torchrun_arg;

static int rank_torchrun(hm_rank_ctx *ctx) {
  torchrun_arg *a = ctx->arg;
  char rank[32], size[32], port[32];
  snprintf(rank, sizeof rank, "RANK=%d", ctx->rank);
  snprintf(size, sizeof size, "WORLD_SIZE=%d", ctx->nranks);
  char local[32];
  snprintf(local, sizeof local, "LOCAL_RANK=%d", ctx->rank);
  snprintf(port, sizeof port, "MASTER_PORT=%d", a->port);
  char secret[128];
  snprintf(secret, sizeof secret, "HETMIX_SECRET=%s", g_secret);
  /* Only torchrun's names: make sure nothing of ours or of other launchers leaks in. */
  const char *drop[] = {"HETMIX_RANK", "HETMIX_WORLD_SIZE", "HETMIX_LOCAL_RANK",
                        "HETMIX_STORE_ADDR", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                        "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"};
  for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) unsetenv(drop[i]);
  char *env[] = {rank, size, local, "MASTER_ADDR=127.0.0.1", port, secret, NULL};
  char *argv[] = {(char *)g_probe, "--expect-source", "torchrun", NULL};
  int rc = hm_run_cmd(argv, env, 60, ctx->msg, sizeof ctx->msg);
  size_t len = strlen(ctx->msg);
  while (len && ctx->msg[len - 1] == '\n') ctx->msg[--len] = '\0';
  if (rc != 0) {
    char tmp[HM_RANKS_MSG];
    snprintf(tmp, sizeof tmp, "%s", ctx->msg);
    ctx->msg[0] = '\0';
    return hm_rank_fail(ctx, "probe exited %d: %s", rc, tmp);
  }
  return 0;
}

static void test_torchrun_env_4_ranks(void **state) {
  (void)state;
  torchrun_arg a = {.port = hm_free_port()};
  assert_true(a.port > 0);
  hm_ranks_opts o = {.nranks = 4, .timeout_s = 90, .init = HM_RANKS_INIT_NONE};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[16384];
  int failed = hm_ranks_run(&o, rank_torchrun, &a, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  for (int r = 0; r < 4; r++) printf("%s\n", res[r].msg);
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_comm_launch <comm_launch_probe> [mpirun]\n");
    return 2;
  }
  g_probe = argv[1];
  if (argc >= 3) g_mpirun = argv[2];
  const struct CMUnitTest torchrun[] = {cmocka_unit_test(test_torchrun_env_4_ranks)};
  const struct CMUnitTest mpi[] = {cmocka_unit_test(test_mpirun_4_ranks)};
  const char *only = getenv("HM_LAUNCH_ONLY");
  if (only && strcmp(only, "mpirun") == 0) return cmocka_run_group_tests(mpi, NULL, NULL);
  if (only && strcmp(only, "torchrun") == 0) return cmocka_run_group_tests(torchrun, NULL, NULL);
  return cmocka_run_group_tests(torchrun, NULL, NULL) | cmocka_run_group_tests(mpi, NULL, NULL);
}
