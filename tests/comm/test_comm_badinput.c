/* Bad input to hmcomm: each invalid argument is rejected with HM_ERR_INVALID_ARG and a message
 * naming it; mismatched collectives (op, dtype, count, root, kind) give HM_ERR_MISMATCH on
 * every rank instead of garbage or a hang; connections without the job secret (raw bytes to the
 * store, an idle socket, a process with a wrong secret) are refused while the real ranks
 * still bootstrap and compute. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hm_ranks.h"
#include "util/util.h"

static int contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0) return 1;
  return 0;
}

/* ---- invalid arguments ---- */
static int expect_invalid(hm_rank_ctx *ctx, hm_status st, const char *what, const char *k1,
                          const char *k2) {
  const char *msg = hm_last_error();
  if (st != HM_ERR_INVALID_ARG)
    return hm_rank_fail(ctx, "%s: returned %s (%s), expected invalid_arg", what,
                        hm_status_name(st), msg);
  if (!contains_ci(msg, k1) && !(k2 && contains_ci(msg, k2)))
    return hm_rank_fail(ctx, "%s: message '%s' does not name '%s'", what, msg, k1);
  return 0;
}

static int rank_invalid_args(hm_rank_ctx *ctx) {
  hm_comm_t c = ctx->comm;
  int n = ctx->nranks, f = 0;
  float a[8] = {0}, b[8 * 4] = {0};
  f += expect_invalid(ctx, hm_comm_allreduce(c, NULL, b, 8, HM_FLOAT32, HM_SUM), "NULL sendbuf", "sendbuf", "send");
  f += expect_invalid(ctx, hm_comm_allreduce(c, a, NULL, 8, HM_FLOAT32, HM_SUM), "NULL recvbuf", "recvbuf", "recv");
  f += expect_invalid(ctx, hm_comm_allreduce(c, a, b, 8, HM_DTYPE_COUNT, HM_SUM), "dtype out of range", "dtype", "type");
  f += expect_invalid(ctx, hm_comm_allreduce(c, a, b, 8, (hm_dtype)-1, HM_SUM), "negative dtype", "dtype", "type");
  f += expect_invalid(ctx, hm_comm_allreduce(c, a, b, 8, HM_FLOAT32, HM_REDOP_COUNT), "op out of range", "op", NULL);
  f += expect_invalid(ctx, hm_comm_allreduce(NULL, a, b, 8, HM_FLOAT32, HM_SUM), "NULL comm", "comm", NULL);
  f += expect_invalid(ctx, hm_comm_reduce(c, a, b, 8, HM_FLOAT32, HM_SUM, n), "root == nranks", "root", NULL);
  f += expect_invalid(ctx, hm_comm_broadcast(c, a, b, 8, HM_FLOAT32, -1), "negative root", "root", NULL);
  f += expect_invalid(ctx, hm_comm_gather(c, a, b, 2, HM_FLOAT32, n + 5), "gather root", "root", NULL);
  f += expect_invalid(ctx, hm_comm_scatter(c, b, a, 2, HM_FLOAT32, -3), "scatter root", "root", NULL);
  f += expect_invalid(ctx, hm_comm_send(c, a, 8, HM_FLOAT32, n), "peer == nranks", "peer", NULL);
  f += expect_invalid(ctx, hm_comm_recv(c, a, 8, HM_FLOAT32, -1), "negative peer", "peer", NULL);
  f += expect_invalid(ctx, hm_comm_send(c, NULL, 8, HM_FLOAT32, 0), "NULL send buffer", "buf", NULL);
  f += expect_invalid(ctx, hm_comm_iallreduce(c, a, b, 8, HM_FLOAT32, HM_SUM, NULL), "NULL request", "req", NULL);
  f += expect_invalid(ctx, hm_comm_reduce_scatter(c, NULL, b, 2, HM_INT32, HM_MAX), "reduce_scatter sendbuf", "sendbuf", "send");
  f += expect_invalid(ctx, hm_comm_allgather(c, a, NULL, 2, HM_UINT8), "allgather recvbuf", "recvbuf", "recv");
  f += expect_invalid(ctx, hm_comm_alltoall(c, a, b, 2, (hm_dtype)99), "alltoall dtype", "dtype", "type");
  if (n >= 2)
    /* Overlapping but not the in-place layout NCCL defines. */
    f += expect_invalid(ctx, hm_comm_allreduce(c, b, b + 1, 8, HM_FLOAT32, HM_SUM),
                        "partly overlapping buffers", "overlap", "buf");
  /* Bad calls must not disturb the communicator: a real collective still works. */
  int32_t x = ctx->rank + 1, y = 0;
  hm_status st = hm_comm_allreduce(c, &x, &y, 1, HM_INT32, HM_SUM);
  if (st != HM_OK || y != n * (n + 1) / 2)
    f += hm_rank_fail(ctx, "allreduce after bad calls: %s, sum %d", hm_status_name(st), y);
  /* Zero counts are valid, even with NULL buffers (as NCCL). */
  st = hm_comm_allreduce(c, NULL, NULL, 0, HM_FLOAT32, HM_SUM);
  if (st != HM_OK) f += hm_rank_fail(ctx, "count 0 with NULL buffers: %s: %s", hm_status_name(st), hm_last_error());
  return f != 0;
}

static void test_invalid_arguments(void **state) {
  (void)state;
  for (int n = 1; n <= 2; n++) {
    hm_ranks_opts o = {.nranks = n, .timeout_s = 60};
    char diag[16384];
    int failed = hm_ranks_run(&o, rank_invalid_args, NULL, NULL, diag, sizeof diag);
    if (failed < 0) fail_msg("harness: %s", hm_last_error());
    if (failed) printf("# %d ranks:\n%s", n, diag);
    assert_int_equal(failed, 0);
  }
}

/* ---- device registration ---- */
/* A bad staging knob is refused naming it; a rank that registered a device (cutting calls into
 * 4 KiB chunks) and one that did not are told HM_ERR_MISMATCH, on both ranks, not a hang. */
static int rank_device_registration(hm_rank_ctx *ctx) {
  hm_comm_t c = ctx->comm;
  int f = 0;
  hm_device *dev = NULL;
  if (hm_device_open("cpu:threads=1", &dev) != HM_OK) return hm_rank_fail(ctx, "cpu device: %s", hm_last_error());
  f += expect_invalid(ctx, hm_comm_register_device(NULL, dev), "register on NULL comm", "comm", NULL);
  setenv("HETMIX_STAGE_CHUNK", "12", 1);
  f += expect_invalid(ctx, hm_comm_register_device(c, dev), "staging chunk of 12 bytes", "HETMIX_STAGE_CHUNK", NULL);
  setenv("HETMIX_STAGE_CHUNK", "4096", 1);
  hm_status st = ctx->rank == 0 ? hm_comm_register_device(c, dev) : HM_OK;
  if (st != HM_OK) f += hm_rank_fail(ctx, "register: %s: %s", hm_status_name(st), hm_last_error());
  enum { N = 4096 }; /* 16 KiB: 4 chunks on the registered rank, one call on the other */
  float *x = calloc(N, sizeof *x), *y = calloc(N, sizeof *y);
  st = x && y ? hm_comm_allreduce(c, x, y, N, HM_FLOAT32, HM_SUM) : HM_ERR_NOMEM;
  if (st != HM_ERR_MISMATCH)
    f += hm_rank_fail(ctx, "registered on rank 0 only: allreduce gave %s (%s), expected mismatch",
                      hm_status_name(st), hm_last_error());
  free(x), free(y);
  hm_comm_register_device(c, NULL);
  hm_device_close(dev);
  return f != 0;
}

static void test_device_registration(void **state) {
  (void)state;
  hm_ranks_opts o = {.nranks = 2, .timeout_s = 60};
  char diag[16384];
  int failed = hm_ranks_run(&o, rank_device_registration, NULL, NULL, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

static void test_invalid_init(void **state) {
  (void)state;
  hm_unique_id id;
  memset(&id, 0, sizeof id);
  hm_comm_t c = NULL;
  hm_status st = hm_comm_init_rank(NULL, 2, &id, 0, NULL);
  assert_int_equal(st, HM_ERR_INVALID_ARG);
  assert_true(contains_ci(hm_last_error(), "comm"));
  st = hm_comm_init_rank(&c, 0, &id, 0, NULL);
  assert_int_equal(st, HM_ERR_INVALID_ARG);
  assert_true(contains_ci(hm_last_error(), "nranks") || contains_ci(hm_last_error(), "size"));
  st = hm_comm_init_rank(&c, 2, &id, 2, NULL);
  assert_int_equal(st, HM_ERR_INVALID_ARG);
  assert_true(contains_ci(hm_last_error(), "rank"));
  st = hm_comm_init_rank(&c, 2, NULL, 0, NULL);
  assert_int_equal(st, HM_ERR_INVALID_ARG);
  assert_true(contains_ci(hm_last_error(), "id"));
  /* An id that was never made (all zero) or garbage text is refused, not trusted. */
  st = hm_comm_init_rank(&c, 2, &id, 1, NULL);
  assert_int_not_equal(st, HM_OK);
  st = hm_unique_id_from_string(&id, "not-an-id");
  assert_int_not_equal(st, HM_OK);
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = "carrier-pigeon";
  hm_unique_id good;
  if (hm_get_unique_id(&good) == HM_OK) {
    st = hm_comm_init_rank(&c, 1, &good, 0, &cfg);
    assert_int_equal(st, HM_ERR_INVALID_ARG);
    assert_true(contains_ci(hm_last_error(), "transport"));
    /* A tuning knob with a typo or out of range is refused by name (it used to fall back to
     * the default silently: HETMIX_TIMEOUT_MS=30s meant 30000 ms, =-1 meant 30000 too). */
    static const char *const bad_knobs[][2] = {{"HETMIX_TIMEOUT_MS", "30s"}, {"HETMIX_TIMEOUT_MS", "-1"},
                                               {"HETMIX_SHM_SLOTS", "1"},   {"HETMIX_TCP_CHUNK", "99999999999"},
                                               {"HETMIX_CMA", "yes"},       {"HETMIX_SPIN_US", ""},
                                               {"HETMIX_COMPRESS", "gzip"}, {"HETMIX_COMPRESS_ALWAYS", "2"},
                                               {"HETMIX_COMPRESS_BELOW", "0"}, {"HETMIX_LINK_BW", "-1"},
                                               /* topology (topology.c): a pool name, link figures */
                                               {"HETMIX_POOL", "room a"},   {"HETMIX_LINK_CROSS", "1e9"},
                                               {"HETMIX_LINK_POOL", "-5,0"}, {"HETMIX_LINK_CROSS", "1e9,20"},
                                               {"HETMIX_LINK_POOL", "fast,1e-6"},
                                               {"HETMIX_LINK_POOL", "1e8,1e-5,"},
                                               {"HETMIX_LINK_CROSS", "1e7,1e-5,-1500"},
                                               {"HETMIX_LINK_CROSS", "1e7,1e-5,2000,3"}};
    for (size_t i = 0; i < sizeof bad_knobs / sizeof bad_knobs[0]; i++) {
      setenv(bad_knobs[i][0], bad_knobs[i][1], 1);
      st = hm_comm_init_rank(&c, 1, &good, 0, NULL);
      unsetenv(bad_knobs[i][0]);
      if (!*bad_knobs[i][1]) { /* empty means unset: the default */
        assert_int_equal(st, HM_OK);
        assert_int_equal(hm_comm_destroy(c), HM_OK);
        continue;
      }
      assert_int_equal(st, HM_ERR_INVALID_ARG);
      if (!strstr(hm_last_error(), bad_knobs[i][0])) fail_msg("message: %s", hm_last_error());
    }
  }
}

/* ---- a bootstrap refused for a mismatch leaves the process's descriptors alone ---- */
typedef struct mm_init_arg {
  const hm_unique_id *id;
  int rank;
  const char *transport;
  hm_status st;
  char msg[512];
} mm_init_arg;

static void *mm_init_thread(void *p) {
  mm_init_arg *a = p;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = a->transport;
  cfg.timeout_ms = 20000;
  hm_comm_t c = NULL;
  a->st = hm_comm_init_rank(&c, 2, a->id, a->rank, &cfg);
  snprintf(a->msg, sizeof a->msg, "%s", hm_last_error());
  if (c) hm_comm_destroy(c);
  return NULL;
}

/* Two ranks (threads of this process) that disagree on the transport both fail init with
 * HM_ERR_MISMATCH. The failed init used to close descriptor 0 (the peer slots past the
 * mismatching rank still held 0 from calloc), taking the process's stdin or whatever reused it. */
static void test_mismatch_keeps_descriptors(void **state) {
  (void)state;
  hm_unique_id id;
  assert_int_equal(hm_get_unique_id(&id), HM_OK);
  int saved = dup(0);
  int null_fd = open("/dev/null", O_RDONLY);
  assert_true(saved >= 0 && null_fd >= 0);
  assert_int_equal(dup2(null_fd, 0), 0);
  close(null_fd);
  struct stat before, after;
  assert_int_equal(fstat(0, &before), 0);
  mm_init_arg a[2] = {{&id, 0, "shm", HM_OK, ""}, {&id, 1, "tcp", HM_OK, ""}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, mm_init_thread, &a[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  int fd0_ok = fstat(0, &after) == 0 && after.st_dev == before.st_dev && after.st_ino == before.st_ino;
  dup2(saved, 0);
  close(saved);
  for (int i = 0; i < 2; i++) {
    if (a[i].st != HM_ERR_MISMATCH || !contains_ci(a[i].msg, "transport"))
      fail_msg("rank %d: init returned %s: %s (expected a transport mismatch)", i, hm_status_name(a[i].st), a[i].msg);
  }
  if (!fd0_ok) fail_msg("descriptor 0 was closed or replaced by the failed init");
}

/* ---- mismatched collectives ---- */
typedef enum mm_kind { MM_OP, MM_DTYPE, MM_COUNT, MM_ROOT, MM_KIND, MM_COUNT_OF } mm_kind;
static const char *mm_names[] = {"op", "dtype", "count", "root", "kind"};

/* The odd one out is the last rank, so neighbours of rank 0 agree with it. */
static int rank_mismatch(hm_rank_ctx *ctx) {
  mm_kind k = *(const mm_kind *)ctx->arg;
  int odd = ctx->rank == ctx->nranks - 1;
  float a[64], b[64 * 4];
  for (int i = 0; i < 64; i++) a[i] = 1;
  hm_status st = HM_OK;
  switch (k) {
    case MM_OP: st = hm_comm_allreduce(ctx->comm, a, b, 64, HM_FLOAT32, odd ? HM_MAX : HM_SUM); break;
    case MM_DTYPE: st = hm_comm_allreduce(ctx->comm, a, b, 64, odd ? HM_INT32 : HM_FLOAT32, HM_SUM); break;
    case MM_COUNT: st = hm_comm_allreduce(ctx->comm, a, b, odd ? 63 : 64, HM_FLOAT32, HM_SUM); break;
    case MM_ROOT: st = hm_comm_broadcast(ctx->comm, a, b, 64, HM_FLOAT32, odd ? 1 : 0); break;
    case MM_KIND:
      st = odd ? hm_comm_allgather(ctx->comm, a, b, 16, HM_FLOAT32)
               : hm_comm_allreduce(ctx->comm, a, b, 64, HM_FLOAT32, HM_SUM);
      break;
    default: break;
  }
  snprintf(ctx->msg, sizeof ctx->msg, "%s", hm_last_error());
  if (st != HM_ERR_MISMATCH) {
    ctx->msg[0] = '\0';
    return hm_rank_fail(ctx, "%s mismatch returned %s (%s), expected mismatch", mm_names[k],
                        hm_status_name(st), hm_last_error());
  }
  hm_comm_abort(ctx->comm);
  hm_comm_destroy(ctx->comm);
  ctx->skip_destroy = 1;
  return 0;
}

static void test_mismatched_collectives(void **state) {
  (void)state;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 10000;
  int total = 0;
  for (int k = 0; k < MM_COUNT_OF; k++) {
    hm_ranks_opts o = {.nranks = 3, .timeout_s = 40, .cfg = &cfg};
    hm_rank_result res[HM_RANKS_MAX];
    char diag[8192];
    mm_kind kind = (mm_kind)k;
    int failed = hm_ranks_run(&o, rank_mismatch, &kind, res, diag, sizeof diag);
    if (failed < 0) fail_msg("harness: %s", hm_last_error());
    printf("# %s mismatch: rank 0 says '%s'\n", mm_names[k], res[0].msg);
    if (failed) printf("%s", diag);
    total += failed;
  }
  assert_int_equal(total, 0);
}

/* ---- connections without the secret ---- */
typedef struct auth_shared {
  volatile int intruder_done;
  volatile int intruder_status;
  volatile int garbage_closed;
  volatile int idle_ok;
  volatile int log_len;
  char log[8192]; /* warnings the store host logged (rank 0) */
} auth_shared;

/* Log hook of the store host: keeps warnings and errors (refusals name the peer's address). */
static void keep_log(int level, const char *msg, void *arg) {
  auth_shared *sh = arg;
  if (level > 1) return;
  size_t len = (size_t)sh->log_len, n = strlen(msg);
  if (len + n + 2 >= sizeof sh->log) return;
  memcpy(sh->log + len, msg, n);
  sh->log[len + n] = '\n';
  sh->log[len + n + 1] = '\0';
  sh->log_len = (int)(len + n + 1);
}

static int g_store_port;
#define AUTH_NRANKS 3

static void set_env_for(int rank, const char *secret) {
  char v[64];
  snprintf(v, sizeof v, "%d", rank);
  setenv("HETMIX_RANK", v, 1);
  setenv("HETMIX_LOCAL_RANK", v, 1);
  snprintf(v, sizeof v, "%d", AUTH_NRANKS);
  setenv("HETMIX_WORLD_SIZE", v, 1);
  snprintf(v, sizeof v, "127.0.0.1:%d", g_store_port);
  setenv("HETMIX_STORE_ADDR", v, 1);
  setenv("HETMIX_SECRET", secret, 1);
}

static int connect_store(double seconds) {
  double end = hm_now_s() + seconds;
  while (hm_now_s() < end) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_store_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) return s;
    close(s);
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return -1;
}

/* Reads until EOF/reset; 1 when the peer closed within `seconds`. */
static int closed_within(int s, double seconds) {
  double end = hm_now_s() + seconds;
  char buf[4096];
  while (hm_now_s() < end) {
    struct pollfd pf = {.fd = s, .events = POLLIN};
    if (poll(&pf, 1, 50) <= 0) continue;
    ssize_t m = recv(s, buf, sizeof buf, 0);
    if (m == 0 || (m < 0 && errno != EINTR && errno != EAGAIN)) return 1;
  }
  return 0;
}

static int rank_auth(hm_rank_ctx *ctx) {
  auth_shared *sh = (auth_shared *)(void *)ctx->shared;
  if (ctx->rank == AUTH_NRANKS) { /* the intruder */
    int s = connect_store(20);
    if (s < 0) {
      sh->intruder_done = 1;
      return hm_rank_fail(ctx, "store at port %d never accepted a connection", g_store_port);
    }
    int idle = connect_store(5); /* says nothing at all; must not block anyone */
    char junk[512];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 37 + 11);
    ssize_t w = send(s, junk, sizeof junk, MSG_NOSIGNAL);
    (void)w;
    sh->garbage_closed = closed_within(s, 10);
    close(s);
    /* A process with the wrong secret claims to be rank 1. */
    set_env_for(1, "not-the-secret");
    hm_comm_config cfg = HM_COMM_CONFIG_INIT;
    cfg.timeout_ms = 5000;
    hm_comm_t c = NULL;
    hm_status st = hm_comm_init_env(&c, &cfg);
    sh->intruder_status = st;
    snprintf(ctx->msg, sizeof ctx->msg, "%s", hm_last_error());
    if (st == HM_OK) hm_comm_destroy(c);
    sh->idle_ok = idle >= 0;
    sh->intruder_done = 1;
    if (idle >= 0) close(idle);
    int f = 0;
    if (!sh->garbage_closed) f += hm_rank_fail(ctx, "store kept a connection that sent garbage");
    if (st != HM_ERR_AUTH)
      f += hm_rank_fail(ctx, "wrong secret: init returned %s, expected auth", hm_status_name(st));
    return f != 0;
  }
  if (ctx->rank == 0) hm_comm_set_log_hook(keep_log, sh);
  set_env_for(ctx->rank, "the-real-secret-0123456789");
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.timeout_ms = 20000;
  hm_comm_t c = NULL;
  hm_status st = hm_comm_init_env(&c, &cfg);
  if (st != HM_OK) return hm_rank_fail(ctx, "init: %s: %s", hm_status_name(st), hm_last_error());
  double end = hm_now_s() + 30;
  while (!sh->intruder_done && hm_now_s() < end) {
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  int32_t x = 1 << ctx->rank, y = 0;
  st = hm_comm_allreduce(c, &x, &y, 1, HM_INT32, HM_SUM);
  hm_comm_destroy(c);
  if (st != HM_OK) return hm_rank_fail(ctx, "allreduce: %s: %s", hm_status_name(st), hm_last_error());
  if (y != (1 << AUTH_NRANKS) - 1) return hm_rank_fail(ctx, "allreduce sum %d", y);
  if (ctx->rank == 0) {
    hm_comm_set_log_hook(NULL, NULL);
    snprintf(ctx->msg, sizeof ctx->msg, "%.2000s", sh->log);
    if (!strstr(sh->log, "127.0.0.1")) {
      ctx->msg[0] = '\0';
      return hm_rank_fail(ctx, "no refusal naming the intruder's address 127.0.0.1 was logged "
                               "(warnings seen: '%s')", sh->log);
    }
  }
  return 0;
}

static void test_unauthenticated_refused(void **state) {
  (void)state;
  g_store_port = hm_free_port();
  assert_true(g_store_port > 0);
  hm_ranks_opts o = {.nranks = AUTH_NRANKS + 1, .timeout_s = 60, .init = HM_RANKS_INIT_NONE};
  hm_rank_result res[HM_RANKS_MAX];
  char diag[8192];
  int failed = hm_ranks_run(&o, rank_auth, NULL, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  printf("# wrong-secret process was told: %s\n", res[AUTH_NRANKS].msg);
  printf("# the store host logged:\n%s", res[0].msg);
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

int main(int argc, char **argv) {
  if (argc > 1) cmocka_set_test_filter(argv[1]); /* e.g. test_unauth* */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_invalid_arguments),
      cmocka_unit_test(test_invalid_init),
      cmocka_unit_test(test_device_registration),
      cmocka_unit_test(test_mismatch_keeps_descriptors),
      cmocka_unit_test(test_mismatched_collectives),
      cmocka_unit_test(test_unauthenticated_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
