/* Several TCP streams per peer (HETMIX_TCP_STREAMS, docs/comm.md): a TCP pair opens the smaller
 * of its two ranks' stream counts as data connections and stripes every message's frames over
 * them; results are exact (send/recv bytes, allreduce of small integers, compressed or not); a
 * value out of 1..8 fails init naming the variable; a rank SIGKILLed in the middle of striped
 * 16 MiB allreduces is named on every survivor within 5 s. */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hm_ranks.h"
#include "util/util.h"

/* What each rank sets before init: its stream count (0: leave unset), and compression. */
typedef struct streams_case {
  int streams[HM_RANKS_MAX];
  const char *compress; /* NULL: off */
  const char *bad;      /* a bad HETMIX_TCP_STREAMS value for every rank */
} streams_case;

static int count_sockets(void);
static int g_sockets_before = -1; /* sockets of the process before init (the harness's own) */

static void env_setup(int rank, int nranks, void *arg) {
  (void)nranks;
  g_sockets_before = count_sockets();
  const streams_case *sc = arg;
  setenv("HETMIX_TRANSPORT", "tcp", 1);
  setenv("HETMIX_TCP_CHUNK", "65536", 1); /* an 8 MiB message is 128 frames, 32 per stream of 4 */
  char v[16];
  snprintf(v, sizeof v, "%d", sc->streams[rank]);
  if (sc->bad)
    setenv("HETMIX_TCP_STREAMS", sc->bad, 1);
  else if (sc->streams[rank] > 0)
    setenv("HETMIX_TCP_STREAMS", v, 1);
  else
    unsetenv("HETMIX_TCP_STREAMS");
  if (sc->compress) {
    setenv("HETMIX_COMPRESS", sc->compress, 1);
    setenv("HETMIX_COMPRESS_ALWAYS", "1", 1);
  } else
    setenv("HETMIX_COMPRESS", "off", 1);
}

/* Sockets this process holds (after init: the control and data connections, nothing else). */
static int count_sockets(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char path[300], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t l = readlink(path, target, sizeof target - 1);
    if (l <= 0) continue;
    target[l] = '\0';
    n += strncmp(target, "socket:", 7) == 0;
  }
  closedir(d);
  return n;
}

static int streams_of(const streams_case *sc, int r) { return sc->streams[r] > 0 ? sc->streams[r] : 1; }

#define MSG_BYTES ((size_t)8 << 20)
#define AR_COUNT ((size_t)1 << 20)

/* Rank 0 sends 8 MiB to every other rank, which sends it back; then an f32 allreduce. */
static int rank_stripe(hm_rank_ctx *ctx) {
  const streams_case *sc = ctx->arg;
  int want = 0; /* control + data connections to every peer */
  for (int r = 0; r < ctx->nranks; r++)
    if (r != ctx->rank) {
      int a = streams_of(sc, ctx->rank), b = streams_of(sc, r);
      want += 1 + (a < b ? a : b);
    }
  const int have = count_sockets() - g_sockets_before;
  if (have != want) return hm_rank_fail(ctx, "init opened %d sockets, expected %d (control + data streams)", have, want);
  unsigned char *buf = malloc(MSG_BYTES), *back = malloc(MSG_BYTES);
  float *x = malloc(AR_COUNT * sizeof(float)), *y = malloc(AR_COUNT * sizeof(float));
  if (!buf || !back || !x || !y) return hm_rank_fail(ctx, "out of memory");
  int fails = 0;
  for (size_t i = 0; i < MSG_BYTES; i++) buf[i] = (unsigned char)((i * 2654435761u) >> 13);
  for (int r = 1; r < ctx->nranks && !fails; r++) {
    hm_status st = HM_OK;
    if (ctx->rank == 0) {
      st = hm_comm_send(ctx->comm, buf, MSG_BYTES, HM_UINT8, r);
      memset(back, 0, MSG_BYTES);
      if (st == HM_OK) st = hm_comm_recv(ctx->comm, back, MSG_BYTES, HM_UINT8, r);
      if (st == HM_OK && memcmp(buf, back, MSG_BYTES) != 0) fails += hm_rank_fail(ctx, "rank %d echoed other bytes", r);
    } else if (ctx->rank == r) {
      st = hm_comm_recv(ctx->comm, back, MSG_BYTES, HM_UINT8, 0);
      if (st == HM_OK && memcmp(buf, back, MSG_BYTES) != 0) fails += hm_rank_fail(ctx, "received other bytes");
      if (st == HM_OK) st = hm_comm_send(ctx->comm, back, MSG_BYTES, HM_UINT8, 0);
    }
    if (st != HM_OK) fails += hm_rank_fail(ctx, "send/recv with %d: %s: %s", r, hm_status_name(st), hm_last_error());
  }
  /* small integers: every partial sum is exact in f32, so the result is exact in any order */
  for (size_t i = 0; i < AR_COUNT && !fails; i++) x[i] = (float)((i + (size_t)ctx->rank * 7) % 13);
  hm_status st = fails ? HM_OK : hm_comm_allreduce(ctx->comm, x, y, AR_COUNT, HM_FLOAT32, HM_SUM);
  if (st != HM_OK) fails += hm_rank_fail(ctx, "allreduce: %s: %s", hm_status_name(st), hm_last_error());
  for (size_t i = 0; i < AR_COUNT && !fails && st == HM_OK; i++) {
    double sum = 0;
    for (int r = 0; r < ctx->nranks; r++) sum += (double)((i + (size_t)r * 7) % 13);
    if ((double)y[i] != sum) fails += hm_rank_fail(ctx, "allreduce element %zu: %g, expected %g", i, (double)y[i], sum);
  }
  free(buf), free(back), free(x), free(y);
  return fails != 0;
}

static void run_case(int nranks, streams_case *sc, hm_rank_fn fn, uint64_t expect_dead, hm_rank_result *res) {
  hm_ranks_opts o = {.nranks = nranks, .timeout_s = 120, .env_setup = env_setup, .expect_dead = expect_dead};
  char diag[8192] = "";
  int failed = hm_ranks_run(&o, fn, sc, res, diag, sizeof diag);
  if (failed < 0) fail_msg("harness: %s", hm_last_error());
  if (failed) printf("%s", diag);
  assert_int_equal(failed, 0);
}

static void test_four_streams(void **state) {
  (void)state;
  streams_case sc = {.streams = {4, 4, 4}};
  hm_rank_result res[HM_RANKS_MAX];
  run_case(3, &sc, rank_stripe, 0, res);
}

/* The pair takes the smaller count: ranks of 3, 2 and unset (1) streams. */
static void test_pair_takes_smaller(void **state) {
  (void)state;
  streams_case sc = {.streams = {3, 2, 0}};
  hm_rank_result res[HM_RANKS_MAX];
  run_case(3, &sc, rank_stripe, 0, res);
}

/* Compressed frames on several streams at once: each stream's frame has its own buffer. */
static void test_streams_compressed(void **state) {
  (void)state;
  static const char *const codecs[] = {
#ifdef HM_TEST_ZSTD
      "zstd",
#endif
#ifdef HM_TEST_LZ4
      "lz4",
#endif
      NULL};
  if (!codecs[0]) skip(); /* built without either codec */
  for (int i = 0; codecs[i]; i++) {
    streams_case sc = {.streams = {4, 4}, .compress = codecs[i]};
    hm_rank_result res[HM_RANKS_MAX];
    run_case(2, &sc, rank_stripe, 0, res);
  }
}

static int rank_noop(hm_rank_ctx *ctx) {
  (void)ctx;
  return 0;
}

static void test_bad_value_named(void **state) {
  (void)state;
  static const char *const bad[] = {"0", "9", "two", "-1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    streams_case sc = {.bad = bad[i]};
    hm_ranks_opts o = {.nranks = 2, .timeout_s = 60, .env_setup = env_setup};
    hm_rank_result res[HM_RANKS_MAX];
    int failed = hm_ranks_run(&o, rank_noop, &sc, res, NULL, 0);
    if (failed < 0) fail_msg("harness: %s", hm_last_error());
    for (int r = 0; r < 2; r++) {
      printf("# HETMIX_TCP_STREAMS=%s: rank %d: %s\n", bad[i], r, res[r].msg);
      assert_int_equal(res[r].verdict, -1);
      assert_non_null(strstr(res[r].msg, "HETMIX_TCP_STREAMS"));
    }
  }
}

/* ---- a rank SIGKILLed in the middle of striped allreduces ---- */
enum { KILL_NRANKS = 3, KILL_VICTIM = 1 };
#define KILL_COUNT ((size_t)4 << 20) /* 4 Mi f32 = 16 MiB */

typedef struct kill_shared {
  volatile uint64_t kill_ns;
  volatile int reported; /* survivors that saw their error */
  volatile int iterations[HM_RANKS_MAX];
} kill_shared;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void *victim_thread(void *arg) {
  hm_rank_ctx *ctx = arg;
  kill_shared *sh = (kill_shared *)(void *)ctx->shared;
  double end = hm_now_s() + 30;
  while (sh->iterations[ctx->rank] < 1 && hm_now_s() < end) sleep_ms(1);
  sleep_ms(23); /* inside the next allreduce: frames of it are on every stream */
  sh->kill_ns = hm_now_ns();
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  raise(SIGKILL);
  return NULL;
}

static int rank_kill(hm_rank_ctx *ctx) {
  kill_shared *sh = (kill_shared *)(void *)ctx->shared;
  float *a = malloc(KILL_COUNT * sizeof(float)), *b = malloc(KILL_COUNT * sizeof(float));
  if (!a || !b) return hm_rank_fail(ctx, "out of memory");
  for (size_t i = 0; i < KILL_COUNT; i++) a[i] = (float)(i % 7);
  pthread_t th;
  if (ctx->rank == KILL_VICTIM) pthread_create(&th, NULL, victim_thread, ctx);
  hm_status st = HM_OK;
  double end = hm_now_s() + 60;
  int it = 0;
  while (hm_now_s() < end) {
    st = hm_comm_allreduce(ctx->comm, a, b, KILL_COUNT, HM_FLOAT32, HM_SUM);
    if (st != HM_OK) break;
    sh->iterations[ctx->rank] = ++it;
  }
  const uint64_t err_ns = hm_now_ns();
  char err[1024];
  snprintf(err, sizeof err, "%s", hm_last_error());
  free(a), free(b);
  if (st == HM_OK) return hm_rank_fail(ctx, "no error 60 s after the start (%d allreduces)", it);
  if (sh->kill_ns == 0) return hm_rank_fail(ctx, "error before the kill: %s: %s", hm_status_name(st), err);
  const double secs = (double)(err_ns - sh->kill_ns) * 1e-9;
  ctx->value = secs;
  int fails = 0;
  if (st != HM_ERR_PEER_DEAD) fails += hm_rank_fail(ctx, "status %s, expected peer_dead (%s)", hm_status_name(st), err);
  char want[32];
  snprintf(want, sizeof want, "rank %d", KILL_VICTIM);
  if (!strstr(err, want)) fails += hm_rank_fail(ctx, "message does not name %s: '%s'", want, err);
  /* no survivor closes its connections before every survivor has its error: a closed
   * connection would be another rank's first sign of trouble, naming the survivor instead */
  __atomic_add_fetch(&sh->reported, 1, __ATOMIC_SEQ_CST);
  const double wait_end = hm_now_s() + 10;
  while (__atomic_load_n(&sh->reported, __ATOMIC_SEQ_CST) < ctx->nranks - 1 && hm_now_s() < wait_end) sleep_ms(2);
  /* the bound of test_comm_faults: the heartbeat's default 3 s dead time plus margin */
  if (secs >= 5.0) fails += hm_rank_fail(ctx, "error came %.2f s after the kill (limit 5 s)", secs);
  hm_comm_abort(ctx->comm);
  hm_comm_destroy(ctx->comm);
  ctx->skip_destroy = 1;
  if (!fails) snprintf(ctx->msg, sizeof ctx->msg, "%s", err);
  return fails != 0;
}

static void test_peer_killed_mid_transfer(void **state) {
  (void)state;
  streams_case sc = {.streams = {4, 4, 4}};
  hm_rank_result res[HM_RANKS_MAX];
  run_case(KILL_NRANKS, &sc, rank_kill, 1u << KILL_VICTIM, res);
  for (int r = 0; r < KILL_NRANKS; r++)
    if (r != KILL_VICTIM) printf("# survivor %d: error %.3f s after the kill: %s\n", r, res[r].value, res[r].msg);
  assert_int_equal(res[KILL_VICTIM].signo, SIGKILL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_four_streams),
      cmocka_unit_test(test_pair_takes_smaller),
      cmocka_unit_test(test_streams_compressed),
      cmocka_unit_test(test_bad_value_named),
      cmocka_unit_test(test_peer_killed_mid_transfer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
