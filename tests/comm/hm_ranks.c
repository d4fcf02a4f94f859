/* Fork-based multi-rank harness for hmcomm tests (see hm_ranks.h). Not used by the library. */
#include "hm_ranks.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned char *g_shared;

volatile unsigned char *hm_ranks_shared(void) { return g_shared; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int hm_rank_fail(hm_rank_ctx *ctx, const char *fmt, ...) {
  size_t len = strlen(ctx->msg);
  if (len + 2 < sizeof ctx->msg) {
    if (len > 0) ctx->msg[len++] = ';', ctx->msg[len++] = ' ', ctx->msg[len] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->msg + len, sizeof ctx->msg - len, fmt, ap);
    va_end(ap);
  }
  return 1;
}

/* What a child writes to its pipe once, at the end. */
typedef struct wire_verdict {
  int verdict;
  double value;
  char msg[HM_RANKS_MSG];
} wire_verdict;

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    c += w;
    n -= (size_t)w;
  }
}

static void child_main(const hm_ranks_opts *o, int rank, const hm_unique_id *id, hm_rank_fn fn,
                       void *arg, int fd, int gate, pid_t parent) {
  /* Die with the parent, so a crashed or killed test leaves no ranks behind. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(70);
  /* Wait until every rank is forked: while ranks bootstrap, the parent's store thread is busy
   * (allocating), and a fork at that moment could hand the next child a held allocator lock. */
  char c;
  while (read(gate, &c, 1) < 0 && errno == EINTR) {
  }
  close(gate);
  hm_rank_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.rank = rank;
  ctx.nranks = o->nranks;
  ctx.arg = arg;
  ctx.shared = g_shared;
  ctx.id = o->init == HM_RANKS_INIT_ID ? id : NULL;
  wire_verdict v;
  memset(&v, 0, sizeof v);
  if (o->env_setup) o->env_setup(rank, o->nranks, arg);
  hm_status st = HM_OK;
  if (o->init == HM_RANKS_INIT_ID)
    st = hm_comm_init_rank(&ctx.comm, o->nranks, id, rank, o->cfg);
  else if (o->init == HM_RANKS_INIT_ENV)
    st = hm_comm_init_env(&ctx.comm, o->cfg);
  if (st != HM_OK) {
    v.verdict = -1;
    snprintf(v.msg, sizeof v.msg, "init failed: %s: %s", hm_status_name(st), hm_last_error());
  } else {
    v.verdict = fn(&ctx);
    v.value = ctx.value;
    memcpy(v.msg, ctx.msg, sizeof v.msg);
    if (ctx.comm && !ctx.skip_destroy) {
      hm_status ds = hm_comm_destroy(ctx.comm);
      if (ds != HM_OK && v.verdict == 0) {
        v.verdict = 1;
        snprintf(v.msg, sizeof v.msg, "destroy failed: %s: %s", hm_status_name(ds),
                 hm_last_error());
      }
    }
  }
  write_all(fd, &v, sizeof v);
  close(fd);
  fflush(NULL);
  _exit(v.verdict == 0 ? 0 : 1);
}

static void diag_append(char *diag, size_t cap, const char *fmt, ...) {
  if (!diag || cap == 0) return;
  size_t len = strnlen(diag, cap);
  if (len + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(diag + len, cap - len, fmt, ap);
  va_end(ap);
}

int hm_ranks_run(const hm_ranks_opts *o, hm_rank_fn fn, void *arg, hm_rank_result *results,
                 char *diag, size_t diag_cap) {
  if (diag && diag_cap) diag[0] = '\0';
  int n = o->nranks;
  if (n < 1 || n > HM_RANKS_MAX) {
    hm_error(HM_ERR_INVALID_ARG, "harness: nranks %d out of range", n);
    return -1;
  }
  hm_rank_result local[HM_RANKS_MAX];
  hm_rank_result *res = results ? results : local;
  memset(res, 0, sizeof(hm_rank_result) * (size_t)n);

  void *shm = mmap(NULL, HM_RANKS_SHARED_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  if (shm == MAP_FAILED) {
    hm_error(HM_ERR_NOMEM, "harness: mmap shared scratch: %s", strerror(errno));
    return -1;
  }
  g_shared = shm;

  hm_unique_id id;
  memset(&id, 0, sizeof id);
  if (o->init == HM_RANKS_INIT_ID) {
    hm_status st = hm_get_unique_id(&id);
    if (st != HM_OK) {
      munmap(shm, HM_RANKS_SHARED_BYTES);
      g_shared = NULL;
      hm_error_context(st, "harness: hm_get_unique_id: ");
      return -1;
    }
  }

  pid_t pids[HM_RANKS_MAX];
  int fds[HM_RANKS_MAX];
  size_t got[HM_RANKS_MAX];
  wire_verdict *vs = calloc((size_t)n, sizeof(wire_verdict));
  if (!vs) {
    munmap(shm, HM_RANKS_SHARED_BYTES);
    hm_error(HM_ERR_NOMEM, "harness: verdicts");
    return -1;
  }
  fflush(NULL);
  pid_t self = getpid();
  int started = 0;
  int gate[2];
  if (pipe(gate) != 0) {
    free(vs);
    munmap(shm, HM_RANKS_SHARED_BYTES);
    hm_error(HM_ERR_IO, "harness: pipe: %s", strerror(errno));
    return -1;
  }
  for (int r = 0; r < n; r++) {
    int p[2];
    if (pipe(p) != 0) break;
    pid_t pid = fork();
    if (pid < 0) {
      close(p[0]);
      close(p[1]);
      break;
    }
    if (pid == 0) {
      close(p[0]);
      close(gate[1]);
      for (int q = 0; q < r; q++) close(fds[q]);
      child_main(o, r, &id, fn, arg, p[1], gate[0], self);
    }
    close(p[1]);
    pids[r] = pid;
    fds[r] = p[0];
    got[r] = 0;
    started++;
  }

  close(gate[0]);
  close(gate[1]); /* releases the ranks (EOF) */
  double timeout = o->timeout_s > 0 ? o->timeout_s : 60.0;
  double deadline = now_s() + timeout;
  int open_fds = started;
  int timed_out = 0;
  while (open_fds > 0) {
    struct pollfd pf[HM_RANKS_MAX];
    int map[HM_RANKS_MAX], np = 0;
    for (int r = 0; r < started; r++)
      if (fds[r] >= 0) pf[np].fd = fds[r], pf[np].events = POLLIN, map[np++] = r;
    double left = deadline - now_s();
    if (left <= 0) {
      timed_out = 1;
      break;
    }
    int rc = poll(pf, (nfds_t)np, (int)(left * 1000) + 1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) break;
    for (int k = 0; k < np; k++) {
      if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int r = map[k];
      ssize_t m = read(fds[r], (char *)&vs[r] + got[r], sizeof(wire_verdict) - got[r]);
      if (m > 0) got[r] += (size_t)m;
      if (m == 0 || (m < 0 && errno != EINTR) || got[r] == sizeof(wire_verdict)) {
        close(fds[r]);
        fds[r] = -1;
        open_fds--;
      }
    }
  }
  for (int r = 0; r < started; r++) {
    if (fds[r] >= 0) {
      kill(pids[r], SIGKILL);
      res[r].killed_by_harness = 1;
      close(fds[r]);
      fds[r] = -1;
    }
  }
  /* Reap everyone; a child that wrote its verdict but hangs in exit gets a short grace. */
  double reap_deadline = now_s() + 10.0;
  for (int r = 0; r < started; r++) {
    int status = 0;
    for (;;) {
      pid_t w = waitpid(pids[r], &status, WNOHANG);
      if (w == pids[r]) break;
      if (w < 0 && errno != EINTR) break;
      if (now_s() > reap_deadline) {
        kill(pids[r], SIGKILL);
        res[r].killed_by_harness = 1;
        waitpid(pids[r], &status, 0);
        break;
      }
      usleep(2000);
    }
    if (WIFEXITED(status)) res[r].exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) res[r].signo = WTERMSIG(status);
    res[r].reported = got[r] == sizeof(wire_verdict);
    if (res[r].reported) {
      res[r].verdict = vs[r].verdict;
      res[r].value = vs[r].value;
      memcpy(res[r].msg, vs[r].msg, sizeof res[r].msg);
      res[r].msg[HM_RANKS_MSG - 1] = '\0';
    }
  }
  free(vs);

  int failed = 0;
  if (started < n) {
    diag_append(diag, diag_cap, "harness: only %d of %d ranks could be forked\n", started, n);
    failed += n - started;
  }
  for (int r = 0; r < started; r++) {
    int dead_ok = (o->expect_dead >> r) & 1;
    const hm_rank_result *x = &res[r];
    int ok = x->reported && x->verdict == 0 && x->exit_code == 0 && x->signo == 0;
    if (dead_ok && !x->reported) ok = !x->killed_by_harness;
    if (ok) continue;
    failed++;
    if (x->killed_by_harness)
      diag_append(diag, diag_cap, "rank %d: still running at the %.0f s deadline (killed)%s%s\n",
                  r, timeout, x->reported ? ": " : "", x->reported ? x->msg : "");
    else if (!x->reported)
      diag_append(diag, diag_cap, "rank %d: died without a verdict (exit %d, signal %d)\n", r,
                  x->exit_code, x->signo);
    else
      diag_append(diag, diag_cap, "rank %d: %s\n", r, x->msg[0] ? x->msg : "failed");
  }
  (void)timed_out;
  munmap(shm, HM_RANKS_SHARED_BYTES);
  g_shared = NULL;
  return failed;
}

int hm_free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(s, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(s);
  return port;
}

int hm_run_cmd(char *const argv[], char *const env[], double timeout_s, char *out, size_t cap) {
  if (out && cap) out[0] = '\0';
  int p[2];
  if (pipe(p) != 0) return -1;
  fflush(NULL);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(p[1], 1);
    dup2(p[1], 2);
    close(p[0]);
    close(p[1]);
    for (int i = 0; env && env[i]; i++) putenv(env[i]);
    execvp(argv[0], argv);
    fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);
  close(p[1]);
  size_t len = 0;
  double deadline = now_s() + timeout_s;
  int timed_out = 0;
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) {
      timed_out = 1;
      break;
    }
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    int rc = poll(&pf, 1, (int)(left * 1000) + 1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    char buf[4096];
    ssize_t m = read(p[0], buf, sizeof buf);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) break;
    if (out && len + 1 < cap) {
      size_t take = (size_t)m < cap - 1 - len ? (size_t)m : cap - 1 - len;
      memcpy(out + len, buf, take);
      len += take;
      out[len] = '\0';
    }
  }
  close(p[0]);
  if (timed_out) kill(-pid, SIGKILL);
  int status = 0;
  double reap_deadline = now_s() + (timed_out ? 10.0 : timeout_s + 10.0);
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return -1;
    if (now_s() > reap_deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      timed_out = 1;
      break;
    }
    usleep(5000);
  }
  /* Whatever the command left in its process group (e.g. orted children) goes too. */
  kill(-pid, SIGKILL);
  if (timed_out) return 124;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}
