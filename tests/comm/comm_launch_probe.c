/* A tiny hmcomm program started by launchers in tests (mpirun, torchrun-style variables):
 * it reads its place from the environment, bootstraps with hm_comm_init_env, checks an
 * allreduce and an allgather, and prints one line. Exit 0 only when everything matched.
 *   comm_launch_probe [--expect-source openmpi|torchrun|hetmix|...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/comm.h"

static int die(const char *what, hm_status st) {
  fprintf(stderr, "probe: %s: %s: %s\n", what, hm_status_name(st), hm_last_error());
  return 1;
}

int main(int argc, char **argv) {
  const char *expect = argc >= 3 && strcmp(argv[1], "--expect-source") == 0 ? argv[2] : NULL;
  hm_launch_env env;
  hm_status st = hm_launch_env_read(&env);
  if (st != HM_OK) return die("hm_launch_env_read", st);
  if (expect && (!env.source || strcmp(env.source, expect) != 0)) {
    fprintf(stderr, "probe: source is '%s', expected '%s'\n", env.source ? env.source : "(null)",
            expect);
    return 1;
  }
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 20000;
  hm_comm_t comm = NULL;
  st = hm_comm_init_env(&comm, &cfg);
  if (st != HM_OK) return die("hm_comm_init_env", st);
  int r = hm_comm_rank(comm), n = hm_comm_size(comm), bad = 0;
  if (r != env.rank || n != env.size) {
    fprintf(stderr, "probe: communicator says %d/%d, environment %d/%d\n", r, n, env.rank, env.size);
    bad = 1;
  }
  enum { COUNT = 1023 };
  static int64_t in[COUNT], out[COUNT];
  for (int i = 0; i < COUNT; i++) in[i] = (int64_t)(r + 1) * (i + 1);
  st = hm_comm_allreduce(comm, in, out, COUNT, HM_INT64, HM_SUM);
  if (st != HM_OK) return die("allreduce", st);
  for (int i = 0; i < COUNT && !bad; i++)
    if (out[i] != (int64_t)n * (n + 1) / 2 * (i + 1)) {
      fprintf(stderr, "probe: allreduce element %d is %lld\n", i, (long long)out[i]);
      bad = 1;
    }
  int32_t me[2] = {r, env.local_rank}, all[2 * 64];
  if (n <= 64) {
    st = hm_comm_allgather(comm, me, all, 2, HM_INT32);
    if (st != HM_OK) return die("allgather", st);
    for (int q = 0; q < n && !bad; q++)
      if (all[2 * q] != q) {
        fprintf(stderr, "probe: allgather slot %d holds rank %d\n", q, all[2 * q]);
        bad = 1;
      }
  }
  st = hm_comm_destroy(comm);
  if (st != HM_OK) return die("destroy", st);
  printf("probe rank %d/%d local %d source %s %s\n", r, n, env.local_rank, env.source,
         bad ? "FAILED" : "ok");
  return bad;
}
