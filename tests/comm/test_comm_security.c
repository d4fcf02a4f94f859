/* Attacks by a local user on a job's bootstrap, and the store's limits:
 *  - 20 idle connections and a few lying ones to rank 0's mesh port while two ranks bootstrap:
 *    the bootstrap still completes in seconds, the liars are logged as unauthenticated
 *    connections, and nothing is blamed on the real rank 1;
 *  - a store whose client table is full does not spin (its thread's CPU time stays low);
 *  - the store's quota (keys, total bytes, value size) answers the client with a clear error;
 *  - a job secret file readable by others, or owned by another user, is refused.
 * Every attack is local (127.0.0.1 or a temporary file), bounded in count and time. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "comm/comm_internal.h"
#include "hm_ranks.h"
#include "util/util.h"

static int g_skipped; /* a test could not run here: the program exits 77 (ctest: skipped) */

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- mesh acceptor under attack ---- */
#define FLOOD_MAX_IDLE 160
typedef struct flood_shared {
  volatile int mesh_port;     /* rank 0's mesh port, from its debug log */
  volatile int attack_ready;  /* the attacker's connections are open */
  volatile int done;          /* the ranks bootstrapped (or gave up) */
  volatile int log_len;
  char log[16384];            /* warnings rank 0 logged */
} flood_shared;

static hm_unique_id g_flood_id;

static void flood_log(int level, const char *msg, void *arg) {
  flood_shared *sh = arg;
  const char *at = strstr(msg, "accepting peers on ");
  if (at && !sh->mesh_port) {
    const char *colon = strrchr(at, ':');
    if (colon) sh->mesh_port = atoi(colon + 1);
  }
  if (level > HM_LOG_WARN) return;
  size_t len = (size_t)sh->log_len, n = strlen(msg);
  if (len + n + 2 >= sizeof sh->log) return;
  memcpy(sh->log + len, msg, n);
  sh->log[len + n] = '\n';
  sh->log[len + n + 1] = '\0';
  sh->log_len = (int)(len + n + 1);
}

static int connect_port(int port) {
  int fd = -1;
  return hm_net_connect("127.0.0.1", port, hm_deadline_after_ms(2000), &fd) == HM_OK ? fd : -1;
}

/* A hello of the right job claiming rank 1, so the acceptor challenges it; it never answers
 * with a valid proof (the caller sends a wrong one or nothing). */
static void send_claiming_hello(int fd) {
  hm_wire_hello h;
  memcpy(h.tag, g_flood_id.internal + 8, HM_WIRE_TAG_BYTES); /* the id's tag (bootstrap.c id_layout) */
  memset(h.nonce, 7, sizeof h.nonce);
  h.rank = 1;
  h.purpose = HM_CONN_CTRL;
  unsigned char b[HM_WIRE_HELLO_BYTES];
  hm_wire_encode_hello(&h, b);
  (void)hm_net_send_frame(fd, HM_WIRE_HELLO, 0, 0, 0, b, sizeof b, hm_deadline_after_ms(1000));
}

static int attacker(hm_rank_ctx *ctx, flood_shared *sh, int idle) {
  double end = hm_now_s() + 10;
  while (!sh->mesh_port && hm_now_s() < end) sleep_ms(5);
  if (!sh->mesh_port) {
    sh->attack_ready = 1;
    return hm_rank_fail(ctx, "rank 0 never logged its mesh port");
  }
  int fds[FLOOD_MAX_IDLE + 4], nf = 0;
  for (int i = 0; i < idle; i++) fds[nf++] = connect_port(sh->mesh_port); /* idle */
  int junk = connect_port(sh->mesh_port); /* garbage bytes */
  char g[300];
  for (size_t i = 0; i < sizeof g; i++) g[i] = (char)(i * 37 + 11);
  if (junk >= 0) (void)!send(junk, g, sizeof g, MSG_NOSIGNAL);
  int other = connect_port(sh->mesh_port); /* a hello of another job */
  if (other >= 0) {
    hm_wire_hello h;
    memset(&h, 3, sizeof h);
    h.rank = 1;
    h.purpose = HM_CONN_CTRL;
    unsigned char b[HM_WIRE_HELLO_BYTES];
    hm_wire_encode_hello(&h, b);
    (void)hm_net_send_frame(other, HM_WIRE_HELLO, 0, 0, 0, b, sizeof b, hm_deadline_after_ms(1000));
  }
  int liar = connect_port(sh->mesh_port); /* claims rank 1, answers the challenge wrongly */
  if (liar >= 0) send_claiming_hello(liar);
  int mute = connect_port(sh->mesh_port); /* claims rank 1, never answers the challenge */
  if (mute >= 0) send_claiming_hello(mute);
  fds[nf++] = junk, fds[nf++] = other, fds[nf++] = liar, fds[nf++] = mute;
  sleep_ms(100); /* the liar's challenge arrives */
  if (liar >= 0) {
    unsigned char bad[HM_WIRE_MAC_BYTES];
    memset(bad, 0x5a, sizeof bad);
    (void)hm_net_send_frame(liar, HM_WIRE_RESPONSE, 0, 0, 0, bad, sizeof bad, hm_deadline_after_ms(1000));
  }
  sh->attack_ready = 1;
  while (!sh->done && hm_now_s() < end + 10) sleep_ms(10);
  int opened = 0;
  for (int i = 0; i < nf; i++)
    if (fds[i] >= 0) opened++, close(fds[i]);
  return opened == nf ? 0 : hm_rank_fail(ctx, "only %d of %d attack connections opened", opened, nf);
}

/* Rank 0's warnings: the liars are unauthenticated connections; nothing names rank 1. */
static int check_flood_log(hm_rank_ctx *ctx, const char *log) {
  snprintf(ctx->msg, sizeof ctx->msg, "%.2000s", log);
  int unauth = 0;
  for (const char *p = log; (p = strstr(p, "unauthenticated connection from 127.0.0.1:")) != NULL; p++) unauth++;
  if (unauth < 3 || strstr(log, "rank 1") || strstr(log, "job secret failed")) {
    ctx->msg[0] = '\0';
    return hm_rank_fail(ctx, "expected >= 3 'unauthenticated connection from 127.0.0.1:' warnings and none "
                             "naming rank 1, rank 0 logged:\n%.1800s", log);
  }
  return 0;
}

static int rank_flood(hm_rank_ctx *ctx) {
  flood_shared *sh = (flood_shared *)(void *)ctx->shared;
  if (ctx->rank == 2) return attacker(ctx, sh, *(const int *)ctx->arg);
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 10000; /* before the fix the bootstrap needed 2 s per idle connection */
  if (ctx->rank == 0) hm_comm_set_log_hook(flood_log, sh);
  if (ctx->rank == 1) {
    double end = hm_now_s() + 15;
    while (!sh->attack_ready && hm_now_s() < end) sleep_ms(5);
  }
  double t0 = hm_now_s();
  hm_comm_t c = NULL;
  hm_status st = hm_comm_init_rank(&c, 2, &g_flood_id, ctx->rank, &cfg);
  double took = hm_now_s() - t0;
  int32_t x = 1 + ctx->rank, y = 0;
  if (st == HM_OK) st = hm_comm_allreduce(c, &x, &y, 1, HM_INT32, HM_SUM);
  if (c) hm_comm_destroy(c);
  sh->done = 1;
  if (ctx->rank == 0) hm_comm_set_log_hook(NULL, NULL);
  if (st != HM_OK) return hm_rank_fail(ctx, "%s: %s", hm_status_name(st), hm_last_error());
  ctx->value = took;
  if (y != 3) return hm_rank_fail(ctx, "allreduce gave %d, expected 3", y);
  if (ctx->rank == 1 && took > 3.0)
    return hm_rank_fail(ctx, "bootstrap took %.2f s under the flood (at most 3 s expected)", took);
  if (ctx->rank == 0) return check_flood_log(ctx, sh->log);
  return 0;
}

/* idle silent connections, then 4 lying ones, then the real rank 1 */
static void run_flood(int idle) {
  assert_int_equal(hm_get_unique_id(&g_flood_id), HM_OK);
  hm_ranks_opts o = {.nranks = 3, .timeout_s = 40, .init = HM_RANKS_INIT_NONE};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192];
  int failed = hm_ranks_run(&o, rank_flood, &idle, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  printf("# %d idle connections: rank 1 bootstrapped in %.3f s; rank 0 logged (first lines):\n%.600s\n", idle,
         res[1].value, res[0].msg);
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

static void test_mesh_flood_does_not_starve_peers(void **state) {
  (void)state;
  run_flood(20);
}

/* More connections than the acceptor keeps pending (64): the silent ones are evicted first, the
 * liars are still refused, and the real peer gets through. */
static void test_mesh_flood_beyond_pending_cap(void **state) {
  (void)state;
  run_flood(FLOOD_MAX_IDLE);
}

/* ---- the store's limits ---- */
static void random_job(unsigned char tag[HM_WIRE_TAG_BYTES], unsigned char secret[HM_SECRET_BYTES]) {
  hm_random_bytes(tag, HM_WIRE_TAG_BYTES);
  hm_random_bytes(secret, HM_SECRET_BYTES);
}

static double process_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* 1,024 silent connections fill the store's client table (they are dropped only after its 5 s
 * authentication limit); more wait in the backlog. The test's own thread sleeps, so the
 * process's CPU time over 1 s is the store thread's: a poll loop that keeps watching the
 * listener spins (~100% of a core, or all it gets); one that stops sleeps in poll. */
static void test_store_full_does_not_spin(void **state) {
  (void)state;
  enum { FILL = 1024 + 16 };
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < 2 * FILL + 64) {
    rl.rlim_cur = rl.rlim_max < 2 * FILL + 64 ? rl.rlim_max : 2 * FILL + 64;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < 2 * FILL + 64) { /* not enough descriptors to fill the table */
    g_skipped = 1;
    skip();
  }
  unsigned char tag[HM_WIRE_TAG_BYTES], secret[HM_SECRET_BYTES];
  random_job(tag, secret);
  hm_store_server *s;
  int port;
  assert_int_equal(hm_store_server_start("127.0.0.1", 0, tag, secret, &s, &port), HM_OK);
  int *fds = calloc(FILL, sizeof *fds);
  assert_non_null(fds);
  int opened = 0;
  for (int i = 0; i < FILL; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(0x7f000001);
    if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&sa, sizeof sa) == 0) opened++;
  }
  sleep_ms(300); /* the store accepts 64 per poll round */
  double c0 = process_cpu_s(), w0 = hm_now_s();
  sleep_ms(1000);
  double cpu = process_cpu_s() - c0, wall = hm_now_s() - w0;
  for (int i = 0; i < FILL; i++)
    if (fds[i] >= 0) close(fds[i]);
  free(fds);
  hm_store_server_stop(s);
  printf("# %d connections; store thread CPU %.3f s over %.3f s\n", opened, cpu, wall);
  assert_int_equal(opened, FILL);
  assert_true(cpu < 0.2 * wall);
}

static hm_status set_n(hm_store_client *c, const char *key, size_t n) {
  static unsigned char val[70000];
  return hm_store_set(c, key, val, n);
}

/* Quotas from the environment: 3 keys, 1,000 bytes. Over them a set fails with the reason;
 * the connection stays usable and the store keeps serving. */
static void test_store_quota(void **state) {
  (void)state;
  unsigned char tag[HM_WIRE_TAG_BYTES], secret[HM_SECRET_BYTES];
  random_job(tag, secret);
  setenv("HETMIX_STORE_MAX_KEYS", "3", 1);
  setenv("HETMIX_STORE_MAX_BYTES", "1000", 1);
  hm_store_server *s;
  int port;
  hm_status st = hm_store_server_start("127.0.0.1", 0, tag, secret, &s, &port);
  unsetenv("HETMIX_STORE_MAX_KEYS");
  unsetenv("HETMIX_STORE_MAX_BYTES");
  assert_int_equal(st, HM_OK);
  hm_store_client c;
  assert_int_equal(hm_store_connect(&c, "127.0.0.1", port, tag, secret, 0, hm_deadline_after_ms(5000)), HM_OK);
  assert_int_equal(set_n(&c, "a", 10), HM_OK);
  assert_int_equal(set_n(&c, "b", 10), HM_OK);
  assert_int_equal(set_n(&c, "c", 10), HM_OK);
  st = set_n(&c, "d", 10);
  printf("# 4th key: %s\n", hm_last_error());
  assert_int_equal(st, HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "HETMIX_STORE_MAX_KEYS"));
  assert_non_null(strstr(hm_last_error(), "'d'"));
  assert_int_equal(set_n(&c, "a", 500), HM_OK); /* replacing a key needs no new one */
  st = set_n(&c, "b", 600);
  printf("# 1,100 bytes: %s\n", hm_last_error());
  assert_int_equal(st, HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "HETMIX_STORE_MAX_BYTES"));
  char v[16];
  size_t vl = sizeof v;
  assert_int_equal(hm_store_get(&c, "c", v, &vl), HM_OK); /* still served */
  assert_int_equal(vl, 10);
  hm_store_close(&c);
  hm_store_server_stop(s);
  /* a quota that is not a number is an error naming it */
  setenv("HETMIX_STORE_MAX_KEYS", "12abc", 1);
  st = hm_store_server_start("127.0.0.1", 0, tag, secret, &s, &port);
  unsetenv("HETMIX_STORE_MAX_KEYS");
  assert_int_equal(st, HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "HETMIX_STORE_MAX_KEYS '12abc'"));
}

/* ---- the job secret file ---- */
static hm_status init_with_secret_file(const char *path) {
  setenv("HETMIX_RANK", "0", 1);
  setenv("HETMIX_WORLD_SIZE", "1", 1);
  char addr[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", hm_free_port());
  setenv("HETMIX_STORE_ADDR", addr, 1);
  unsetenv("HETMIX_SECRET");
  setenv("HETMIX_SECRET_FILE", path, 1);
  hm_comm_t c = NULL;
  hm_status st = hm_comm_init_env(&c, NULL);
  if (st == HM_OK) hm_comm_destroy(c);
  unsetenv("HETMIX_RANK");
  unsetenv("HETMIX_WORLD_SIZE");
  unsetenv("HETMIX_STORE_ADDR");
  unsetenv("HETMIX_SECRET_FILE");
  return st;
}

/* One init with the file at mode m (owner: this user, or uid 65534): status and message. */
typedef struct secret_try {
  hm_status st;
  char msg[512];
} secret_try;
static void try_secret(const char *path, mode_t m, int give_away, secret_try *t) {
  chmod(path, m);
  if (give_away && chown(path, 65534, 65534) != 0) {
    t->st = HM_ERR_IO;
    snprintf(t->msg, sizeof t->msg, "chown: %s", strerror(errno));
    return;
  }
  t->st = init_with_secret_file(path);
  snprintf(t->msg, sizeof t->msg, "%s", hm_last_error());
  printf("# mode %03o%s: %s\n", (unsigned)m, give_away ? ", owned by uid 65534" : "", t->st ? t->msg : "ok");
}

static void test_secret_file_permissions(void **state) {
  (void)state;
  char path[] = "/tmp/hetmix-secret-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  int wrote = (int)write(fd, "s3cret\n", 7);
  close(fd);
  static const mode_t bad[] = {0644, 0640, 0604, 0660};
  secret_try t[6];
  for (size_t i = 0; i < 4; i++) try_secret(path, bad[i], 0, &t[i]);
  try_secret(path, 0600, 0, &t[4]);
  const int root = geteuid() == 0; /* only root can give a file away */
  if (root) try_secret(path, 0600, 1, &t[5]);
  unlink(path); /* before any assertion can leave the test */
  assert_int_equal(wrote, 7);
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(t[i].st, HM_ERR_AUTH);
    assert_non_null(strstr(t[i].msg, path));
    assert_non_null(strstr(t[i].msg, "chmod 600"));
  }
  assert_int_equal(t[4].st, HM_OK);
  if (root) {
    assert_int_equal(t[5].st, HM_ERR_AUTH);
    assert_non_null(strstr(t[5].msg, "owned by uid 65534"));
  }
}

int main(int argc, char **argv) {
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mesh_flood_does_not_starve_peers),
      cmocka_unit_test(test_mesh_flood_beyond_pending_cap),
      cmocka_unit_test(test_store_full_does_not_spin),
      cmocka_unit_test(test_store_quota),
      cmocka_unit_test(test_secret_file_permissions),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  return failed ? failed : g_skipped ? 77 : 0;
}
