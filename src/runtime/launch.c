/* Spawning and supervising the local workers of a job (the library half of `hetmix launch`).
 *
 * What it guarantees: every worker gets the HETMIX_* bootstrap environment; the launcher's
 * SIGINT/SIGTERM/SIGHUP reach all workers; the first failing worker stops the job within the
 * grace period and is named; nothing started here survives the call (each worker leads its own
 * session and process group, all killed before returning, plus PR_SET_PDEATHSIG in each child
 * for the case the launcher itself dies).
 * With a heartbeat folder it also fails a rank that stops beating or completing steps (watch.c)
 * and, with opts.external, supervises a launcher (srun) that starts the ranks itself. Workers
 * may each enter a network namespace before exec (opts.rank_netns: a testbed of hosts on this
 * machine, scripts/testbed.sh).
 * What it is not: a multi-host launcher (mpirun and srun do that; workers then read their rank
 * with hm_launch_env_read()), nor a restart policy (restart.c).
 *
 * Why no SIGCHLD: OpenBLAS and OpenMP start threads in this process that do not block signals,
 * so a blocked-signal + signalfd scheme can lose SIGCHLD to them. Exits are seen through a
 * pidfd per worker (poll wakes at once) plus a bounded poll period that sweeps waitid(), so a
 * missed wake-up costs at most one period. Forwarded signals use a handler writing to a
 * self-pipe, which works whichever thread the kernel picks. */
#include "hetmix/runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/watch.h"
#include "util/util.h"

extern char **environ;

#define HM_LAUNCH_POLL_MS 50       /* upper bound on noticing an exit if a pidfd wake is missed */
#define HM_LAUNCH_KILL_WAIT_MS 5000 /* after SIGKILL, how long reaping may take before we give up */
#define HM_LAUNCH_DRAIN_MS 1000    /* after the last exit, how long to drain tagged output */
#define HM_LAUNCH_LINE_MAX 8192

/* ---------------------------------------------------------------- small helpers */

hm_status hm_random_hex(char *buf, size_t cap, size_t nbytes) {
  if (!buf || cap < 2 * nbytes + 1 || nbytes > 256)
    return hm_error(HM_ERR_INVALID_ARG, "hm_random_hex: buffer of %zu for %zu bytes", cap, nbytes);
  unsigned char raw[256];
  size_t got = 0;
  while (got < nbytes) {
    ssize_t n = getrandom(raw + got, nbytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return hm_error(HM_ERR_IO, "getrandom: %s", strerror(errno));
    }
    got += (size_t)n;
  }
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < nbytes; i++) {
    buf[2 * i] = digits[raw[i] >> 4];
    buf[2 * i + 1] = digits[raw[i] & 15];
  }
  buf[2 * nbytes] = '\0';
  return HM_OK;
}

hm_status hm_launch_free_port(const char *host, int *port) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    return hm_error(HM_ERR_INVALID_ARG, "store host '%s' is not an IPv4 address", host);
  if ((ntohl(sa.sin_addr.s_addr) >> 24) != 127)
    return hm_error(HM_ERR_INVALID_ARG,
                    "store host '%s' is not loopback (127.0.0.0/8): hetmix launch starts workers on "
                    "this machine only", host);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return hm_error(HM_ERR_IO, "socket: %s", strerror(errno));
  socklen_t len = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
    int e = errno;
    close(fd);
    return hm_error(HM_ERR_IO, "cannot find a free port on %s: %s", host, strerror(e));
  }
  close(fd);
  *port = ntohs(sa.sin_port);
  return HM_OK;
}

/* Resolves argv0 against PATH in the parent so the child only calls execve (async-signal-safe
 * after fork in a threaded process, unlike execvp's allocation). */
static hm_status hm_resolve_exe(const char *argv0, char *out, size_t cap) {
  if (strchr(argv0, '/')) {
    if (access(argv0, X_OK) != 0)
      return hm_error(HM_ERR_NOT_FOUND, "cannot run '%s': %s", argv0, strerror(errno));
    if (hm_strcpy(out, cap, argv0) != 0)
      return hm_error(HM_ERR_INVALID_ARG, "command path too long: '%s'", argv0);
    return HM_OK;
  }
  const char *path = getenv("PATH");
  if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
  const char *p = path;
  while (*p) {
    const char *colon = strchr(p, ':');
    size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
    int n = snprintf(out, cap, "%.*s/%s", (int)dlen, dlen ? p : ".", argv0);
    if (n > 0 && (size_t)n < cap && access(out, X_OK) == 0) return HM_OK;
    p += dlen;
    if (*p == ':') p++;
  }
  return hm_error(HM_ERR_NOT_FOUND, "cannot run '%s': not found in PATH", argv0);
}

static int hm_is_launch_var(const char *entry) {
  static const char *const names[] = {"HETMIX_RANK=", "HETMIX_WORLD_SIZE=", "HETMIX_LOCAL_RANK=",
                                      "HETMIX_LOCAL_WORLD_SIZE=", "HETMIX_STORE_ADDR=",
                                      "HETMIX_SECRET=", "HETMIX_SECRET_FILE="};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strncmp(entry, names[i], strlen(names[i])) == 0) return 1;
  return 0;
}

static void hm_write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return; /* output target gone: the job's outcome still matters more than its log */
    }
    buf += w;
    n -= (size_t)w;
  }
}

/* ---------------------------------------------------------------- forwarded signals */

static const int hm_forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define HM_NFWD (int)(sizeof hm_forwarded_signals / sizeof hm_forwarded_signals[0])
static volatile sig_atomic_t hm_sig_pipe_wr = -1;
static volatile sig_atomic_t hm_launch_active = 0;

static void hm_on_forwarded_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  if (hm_sig_pipe_wr >= 0) {
    ssize_t rc = write(hm_sig_pipe_wr, &b, 1);
    (void)rc; /* pipe full means a signal is already pending, which is enough */
  }
  errno = saved;
}

/* ---------------------------------------------------------------- one worker */

typedef struct hm_worker {
  pid_t pid;
  int pidfd;        /* -1 when the kernel has no pidfd_open */
  int exited;       /* seen exiting (still a zombie until the final reap) */
  int reaped;
  int status_code;  /* exit status, or -1 */
  int signal;       /* terminating signal, or 0 */
  int out_rd, err_rd; /* tagged output pipes, -1 when closed or untagged */
  int netns_fd;     /* opts.rank_netns: the namespace to enter before exec, else -1 */
  char *line[2];    /* partial line per stream */
  size_t line_len[2];
} hm_worker;

typedef struct hm_job {
  const hm_launch_opts *opts;
  hm_worker *w;
  int n;
  int nspawned;     /* workers started so far (each leads its own session and group) */
  int out_fd, err_fd;
  int sig_rd, sig_wr;
  struct sigaction old_act[HM_NFWD];
  int handlers_installed;
  char **envs;     /* per rank: a NULL-terminated environment, built before fork */
  int envs_built;
  int own_env;     /* leading entries of each environment allocated here */
  int nranks;      /* ranks of the job: n, or the ranks an external launcher starts */
  /* a rank the heartbeat watch failed (or, under an external launcher, found gone) */
  int named_rank, named_cause, named_pid;
  double named_idle_s;
  double named_limit_s; /* the deadline it was judged against */
  long long named_steps;
} hm_job;

static void hm_emit_line(hm_job *job, int rank, int stream, const char *s, size_t n, int add_nl) {
  char prefix[32];
  int plen = snprintf(prefix, sizeof prefix, "[rank %d] ", rank);
  int fd = stream == 0 ? job->out_fd : job->err_fd;
  /* one write per line keeps lines from different ranks from interleaving mid-line */
  char buf[HM_LAUNCH_LINE_MAX + 40];
  memcpy(buf, prefix, (size_t)plen);
  memcpy(buf + plen, s, n);
  size_t total = (size_t)plen + n;
  if (add_nl) buf[total++] = '\n';
  hm_write_all(fd, buf, total);
}

/* Reads what is available on one tagged pipe; returns 0 at EOF (pipe closed here). */
static int hm_pump(hm_job *job, int rank, int stream) {
  hm_worker *w = &job->w[rank];
  int *fdp = stream == 0 ? &w->out_rd : &w->err_rd;
  char chunk[4096];
  ssize_t n = read(*fdp, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
  if (n <= 0) {
    if (w->line_len[stream] > 0) hm_emit_line(job, rank, stream, w->line[stream], w->line_len[stream], 1);
    w->line_len[stream] = 0;
    close(*fdp);
    *fdp = -1;
    return 0;
  }
  for (ssize_t i = 0; i < n; i++) {
    char c = chunk[i];
    if (c == '\n') {
      hm_emit_line(job, rank, stream, w->line[stream], w->line_len[stream], 1);
      w->line_len[stream] = 0;
      continue;
    }
    if (w->line_len[stream] == HM_LAUNCH_LINE_MAX) {
      hm_emit_line(job, rank, stream, w->line[stream], w->line_len[stream], 1);
      w->line_len[stream] = 0;
    }
    w->line[stream][w->line_len[stream]++] = c;
  }
  return 1;
}

/* Builds rank r's environment: our six launch variables first, then opts.extra_env (getenv
 * finds the first match, so these win), then the caller's minus inherited launch variables. */
#define HM_OWN_ENV 6
static hm_status hm_build_env(hm_job *job, int r, const char *store, const char *secret) {
  /* an external launcher (srun) gives each of its tasks the rank: only the store and secret here */
  job->own_env = job->opts->external ? 2 : HM_OWN_ENV;
  size_t nenv = 0, nextra = 0, nrank = 0;
  char *const *rank_env = job->opts->rank_env ? job->opts->rank_env[r] : NULL;
  while (environ && environ[nenv]) nenv++;
  while (job->opts->extra_env && job->opts->extra_env[nextra]) nextra++;
  while (rank_env && rank_env[nrank]) nrank++;
  char **env = hm_calloc(HM_OWN_ENV + nrank + nextra + nenv + 1, sizeof(char *), "worker environment");
  if (!env) return HM_ERR_NOMEM;
  job->envs[r] = (char *)env;
  char tmp[512];
  size_t k = 0;
  snprintf(tmp, sizeof tmp, "HETMIX_STORE_ADDR=%s", store);
  env[k++] = strdup(tmp);
  snprintf(tmp, sizeof tmp, "HETMIX_SECRET=%s", secret);
  env[k++] = strdup(tmp);
  if (!job->opts->external) {
    snprintf(tmp, sizeof tmp, "HETMIX_RANK=%d", r);
    env[k++] = strdup(tmp);
    snprintf(tmp, sizeof tmp, "HETMIX_WORLD_SIZE=%d", job->n);
    env[k++] = strdup(tmp);
    snprintf(tmp, sizeof tmp, "HETMIX_LOCAL_RANK=%d", r);
    env[k++] = strdup(tmp);
    snprintf(tmp, sizeof tmp, "HETMIX_LOCAL_WORLD_SIZE=%d", job->n);
    env[k++] = strdup(tmp);
  }
  for (size_t i = 0; i < k; i++)
    if (!env[i]) return hm_error(HM_ERR_NOMEM, "cannot allocate the worker environment");
  for (size_t i = 0; i < nrank; i++) env[k++] = rank_env[i]; /* borrowed */
  for (size_t i = 0; i < nextra; i++) env[k++] = job->opts->extra_env[i]; /* borrowed */
  for (size_t i = 0; i < nenv; i++)
    if (!hm_is_launch_var(environ[i])) env[k++] = environ[i]; /* borrowed */
  env[k] = NULL;
  return HM_OK;
}

static void hm_free_envs(hm_job *job) {
  if (!job->envs) return;
  for (int r = 0; r < job->n; r++) {
    char **env = (char **)job->envs[r];
    if (!env) continue;
    for (int i = 0; i < job->own_env; i++) free(env[i]);
    free(env);
  }
  free(job->envs);
  job->envs = NULL;
}

/* Child side of fork: only async-signal-safe calls until execve. */
static void hm_child_exec(hm_job *job, int r, const char *exe, int out_wr, int err_wr, int exec_err_wr,
                          pid_t parent) {
  for (int i = 0; i < HM_NFWD; i++) signal(hm_forwarded_signals[i], SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* Its own session (and process group, id = its pid): Linux's autogroup scheduling then
   * shares the CPU between workers as between separate jobs, the way separate devices would
   * not share one; in one session, two workers of a loaded machine get half a share each. */
  setsid();
  /* the kernel kills this worker if the launcher dies, even by SIGKILL */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127); /* the launcher died before prctl took effect */
  if (out_wr >= 0) dup2(out_wr, 1);
  if (err_wr >= 0) dup2(err_wr, 2);
  if (r != 0) { /* like mpirun: only rank 0 reads the terminal */
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
  }
  int e = 0;
  if (job->w[r].netns_fd >= 0 && setns(job->w[r].netns_fd, CLONE_NEWNET) != 0) e = errno;
  if (!e) execve(exe, job->opts->argv, (char **)job->envs[r]);
  if (!e) e = errno;
  ssize_t rc = write(exec_err_wr, &e, sizeof e);
  (void)rc;
  _exit(127);
}

static hm_status hm_spawn(hm_job *job, int r, const char *exe) {
  hm_worker *w = &job->w[r];
  int out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, exec_p[2] = {-1, -1};
  if (job->opts->tag_output) {
    if (pipe2(out_p, O_CLOEXEC) != 0 || pipe2(err_p, O_CLOEXEC) != 0)
      return hm_error(HM_ERR_IO, "pipe: %s", strerror(errno));
  }
  if (pipe2(exec_p, O_CLOEXEC) != 0) return hm_error(HM_ERR_IO, "pipe: %s", strerror(errno));
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(exec_p[0]), close(exec_p[1]);
    if (out_p[0] >= 0) close(out_p[0]), close(out_p[1]), close(err_p[0]), close(err_p[1]);
    return hm_error(HM_ERR_IO, "fork for rank %d: %s", r, strerror(e));
  }
  if (pid == 0) hm_child_exec(job, r, exe, out_p[1], err_p[1], exec_p[1], parent);
  /* parent: also set the group here, so it is right whichever of the two runs first */
  job->nspawned = r + 1;
  w->pid = pid;
  w->status_code = -1;
  w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  close(exec_p[1]);
  if (out_p[0] >= 0) {
    close(out_p[1]), close(err_p[1]);
    w->out_rd = out_p[0];
    w->err_rd = err_p[0];
    fcntl(w->out_rd, F_SETFL, O_NONBLOCK);
    fcntl(w->err_rd, F_SETFL, O_NONBLOCK);
  }
  /* exec either succeeds (CLOEXEC closes the pipe: EOF) or the child reports its errno */
  int e = 0;
  ssize_t n;
  struct pollfd pfd = {exec_p[0], POLLIN, 0};
  int pr = poll(&pfd, 1, 10000);
  n = pr > 0 ? read(exec_p[0], &e, sizeof e) : -1;
  close(exec_p[0]);
  if (pr == 0) return hm_error(HM_ERR_TIMEOUT, "rank %d (pid %d) did not start within 10 s", r, (int)pid);
  if (n == (ssize_t)sizeof e)
    return hm_error(HM_ERR_NOT_FOUND, "cannot run '%s' for rank %d%s%s: %s", job->opts->argv[0], r,
                    job->opts->rank_netns && job->opts->rank_netns[r] ? " in network namespace " : "",
                    job->opts->rank_netns && job->opts->rank_netns[r] ? job->opts->rank_netns[r] : "",
                    strerror(e));
  return HM_OK;
}

/* Notices exits without reaping (WNOWAIT): a zombie keeps its pid, so a worker's group id (its
 * pid) cannot be reused by an unrelated process before our final killpg.
 * When several failures show up in the same sweep, a worker killed by a signal is named before
 * workers that exited with an error: survivors exit with an error because a peer died, so the
 * signalled one is the cause and the others are its consequences. */
static int hm_sweep_exits(hm_job *job, int *first_failed) {
  int alive = 0, first_exit = -1, first_signal = -1;
  for (int r = 0; r < job->n; r++) {
    hm_worker *w = &job->w[r];
    if (w->pid <= 0 || w->exited) continue;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == w->pid) {
      w->exited = 1;
      if (si.si_code == CLD_EXITED) {
        w->status_code = si.si_status;
      } else {
        w->signal = si.si_status;
      }
      if (w->signal != 0 && first_signal < 0) first_signal = r;
      if (w->status_code != 0 && first_exit < 0) first_exit = r;
    } else {
      alive++;
    }
  }
  if (*first_failed < 0) *first_failed = first_signal >= 0 ? first_signal : first_exit;
  return alive;
}

/* Signals every worker's process group (the worker and whatever it started), or the worker
 * alone when it has left its group. The exec pipe in hm_spawn guarantees setsid() ran. */
static void hm_signal_all(hm_job *job, int sig) {
  for (int r = 0; job->w && r < job->nspawned; r++) {
    hm_worker *w = &job->w[r];
    if (w->pid <= 0 || w->reaped) continue;
    if (killpg(w->pid, sig) != 0) kill(w->pid, sig);
  }
}

static void hm_reap_all(hm_job *job) {
  for (int r = 0; job->w && r < job->n; r++) {
    hm_worker *w = &job->w[r];
    if (w->pid > 0 && !w->reaped) {
      int st;
      if (waitpid(w->pid, &st, 0) == w->pid || errno == ECHILD) w->reaped = 1;
    }
  }
}

static void hm_job_cleanup(hm_job *job) {
  if (job->nspawned > 0) {
    /* kill whatever is left in the groups (workers' own children) before the leaders are reaped */
    hm_signal_all(job, SIGKILL);
    uint64_t deadline = hm_deadline_after_ms(HM_LAUNCH_KILL_WAIT_MS);
    int first = -1;
    while (hm_sweep_exits(job, &first) > 0 && !hm_deadline_passed(deadline)) usleep(2000);
    hm_reap_all(job);
  }
  for (int r = 0; job->w && r < job->n; r++) {
    hm_worker *w = &job->w[r];
    if (w->pidfd >= 0) close(w->pidfd);
    if (w->netns_fd >= 0) close(w->netns_fd);
    if (w->out_rd >= 0) close(w->out_rd);
    if (w->err_rd >= 0) close(w->err_rd);
    free(w->line[0]);
    free(w->line[1]);
  }
  if (job->handlers_installed)
    for (int i = 0; i < HM_NFWD; i++) sigaction(hm_forwarded_signals[i], &job->old_act[i], NULL);
  hm_sig_pipe_wr = -1;
  if (job->sig_rd >= 0) close(job->sig_rd);
  if (job->sig_wr >= 0) close(job->sig_wr);
  hm_free_envs(job);
  free(job->w);
  hm_launch_active = 0;
}

static hm_status hm_job_setup(hm_job *job, hm_launch_result *res) {
  const hm_launch_opts *o = job->opts;
  const char *host = o->store_host ? o->store_host : "127.0.0.1";
  HM_TRY(hm_launch_free_port(host, &res->store_port));
  char store[300], secret[65];
  snprintf(store, sizeof store, "%s:%d", host, res->store_port);
  HM_TRY(hm_random_hex(secret, sizeof secret, 32));
  job->w = hm_calloc((size_t)job->n, sizeof(hm_worker), "worker table");
  job->envs = hm_calloc((size_t)job->n, sizeof(char *), "worker environments");
  if (!job->w || !job->envs) return HM_ERR_NOMEM;
  for (int r = 0; r < job->n; r++) job->w[r].pidfd = job->w[r].out_rd = job->w[r].err_rd = job->w[r].netns_fd = -1;
  for (int r = 0; o->rank_netns && r < job->n; r++)
    if (o->rank_netns[r]) HM_TRY(hm_netns_open(o->rank_netns[r], &job->w[r].netns_fd));
  for (int r = 0; r < job->n; r++) {
    hm_worker *w = &job->w[r];
    if (o->tag_output) {
      w->line[0] = hm_malloc(HM_LAUNCH_LINE_MAX, "output line");
      w->line[1] = hm_malloc(HM_LAUNCH_LINE_MAX, "output line");
      if (!w->line[0] || !w->line[1]) return HM_ERR_NOMEM;
    }
    HM_TRY(hm_build_env(job, r, store, secret));
  }
  int sp[2];
  if (pipe2(sp, O_CLOEXEC | O_NONBLOCK) != 0) return hm_error(HM_ERR_IO, "pipe: %s", strerror(errno));
  job->sig_rd = sp[0];
  job->sig_wr = sp[1];
  hm_sig_pipe_wr = sp[1];
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hm_on_forwarded_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int i = 0; i < HM_NFWD; i++) sigaction(hm_forwarded_signals[i], &sa, &job->old_act[i]);
  job->handlers_installed = 1;
  return HM_OK;
}

static void hm_describe_failure(const hm_job *job, const hm_worker *w, int r, const hm_launch_result *res, char *buf,
                                size_t cap) {
  char where[260] = "";
  if (res->host[0]) snprintf(where, sizeof where, " on host %s, device %s", res->host, res->device);
  const int pid = job->named_pid > 0 ? job->named_pid : (int)w->pid;
  const int nr = job->named_rank >= 0 ? job->named_rank : r;
  if (job->named_cause == HM_FAIL_SILENT)
    snprintf(buf, cap, "rank %d (pid %d)%s stopped beating for %.1f s (stopped, frozen or dead; deadline %.2f s)", nr,
             pid, where, job->named_idle_s, job->named_limit_s);
  else if (job->named_cause == HM_FAIL_HANG)
    snprintf(buf, cap, "rank %d (pid %d)%s made no progress for %.1f s after step %lld (hung: the progress "
             "watchdog's deadline %.2f s)", nr, pid, where, job->named_idle_s, job->named_steps, job->named_limit_s);
  else if (job->opts->external && job->named_rank >= 0)
    snprintf(buf, cap, "rank %d (pid %d)%s is gone; the launcher command (pid %d) %s %d", nr, pid, where,
             (int)w->pid, w->signal ? "was killed by signal" : "exited with status", w->signal ? w->signal : w->status_code);
  else if (job->opts->external)
    snprintf(buf, cap, "the launcher command (pid %d) %s %d", (int)w->pid,
             w->signal ? "was killed by signal" : "exited with status", w->signal ? w->signal : w->status_code);
  else if (w->signal)
    snprintf(buf, cap, "rank %d (pid %d) was killed by signal %d (%s)%s", r, (int)w->pid, w->signal,
             strsignal(w->signal), where);
  else
    snprintf(buf, cap, "rank %d (pid %d) exited with status %d%s", r, (int)w->pid, w->status_code, where);
}

static double hm_wall_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The watch's verdict this round: a silent or hung rank becomes the job's failure; it is killed
 * at once (SIGTERM cannot end a stopped process), the others get the usual SIGTERM. */
static int hm_watch_round(hm_job *job, hm_watch *wt, int *exited) {
  for (int r = 0; r < job->nranks; r++) exited[r] = job->opts->external ? 0 : job->w[r].exited;
  int cause = 0;
  double idle = 0;
  int r = hm_watch_check(wt, hm_now_ns(), exited, &cause, &idle);
  if (r < 0) return -1;
  job->named_rank = r;
  job->named_cause = cause;
  job->named_idle_s = idle;
  job->named_limit_s = wt->limit_s;
  job->named_steps = wt->r[r].step;
  job->named_pid = wt->r[r].last.pid;
  if (!job->opts->external) {
    if (killpg(job->w[r].pid, SIGKILL) != 0) kill(job->w[r].pid, SIGKILL);
    return r;
  }
  /* a task of an external launcher: killed here when it runs on this host; its launcher then
   * stops the rest (srun --kill-on-bad-exit) and gets SIGTERM from us anyway */
  char host[64] = "";
  gethostname(host, sizeof host);
  host[sizeof host - 1] = '\0';
  if (job->named_pid > 0 && strcmp(host, wt->r[r].last.host) == 0) kill(job->named_pid, SIGKILL);
  return 0;
}

/* Under an external launcher that exited: a rank that died abruptly (no orderly-end mark: not
 * stopped by SIGTERM, not returned), else the first whose process is gone from this host. */
static void hm_find_gone_rank(hm_job *job, const char *dir) {
  char host[64] = "";
  gethostname(host, sizeof host);
  host[sizeof host - 1] = '\0';
  for (int pass = 0; pass < 2 && job->named_rank < 0; pass++)
    for (int r = 0; r < job->nranks && job->named_rank < 0; r++) {
      hm_hb_state hb;
      if (hm_hb_read(dir, r, &hb) != HM_OK || strcmp(hb.host, host) != 0) continue;
      if (pass == 0 && hm_hb_ended_orderly(dir, r)) continue;
      if (kill(hb.pid, 0) != 0 && errno == ESRCH) job->named_rank = r, job->named_pid = hb.pid;
    }
}

hm_status hm_launch_run(const hm_launch_opts *opts, hm_launch_result *res_out) {
  hm_launch_result res_local;
  hm_launch_result *res = res_out ? res_out : &res_local;
  memset(res, 0, sizeof *res);
  res->failed_rank = -1;
  res->exit_code = -1;
  if (!opts || opts->nworkers <= 0 || !opts->argv || !opts->argv[0])
    return hm_error(HM_ERR_INVALID_ARG, "launch: need nworkers > 0 and a command (got %d, %s)",
                    opts ? opts->nworkers : 0, opts && opts->argv && opts->argv[0] ? "a command" : "none");
  if (opts->nworkers > 4096)
    return hm_error(HM_ERR_INVALID_ARG, "launch: %d workers on one machine is more than 4096", opts->nworkers);
  if (hm_launch_active) return hm_error(HM_ERR_INVALID_ARG, "launch: another launch is running in this process");
  char exe[4096];
  HM_TRY(hm_resolve_exe(opts->argv[0], exe, sizeof exe));

  hm_job job;
  memset(&job, 0, sizeof job);
  job.opts = opts;
  job.n = opts->external ? 1 : opts->nworkers;
  job.nranks = opts->nworkers;
  job.named_rank = -1;
  job.out_fd = opts->out_fd > 0 ? opts->out_fd : 1;
  job.err_fd = opts->err_fd > 0 ? opts->err_fd : 2;
  job.sig_rd = job.sig_wr = -1;
  hm_launch_active = 1;
  hm_status st = hm_job_setup(&job, res);
  if (st != HM_OK) {
    hm_job_cleanup(&job);
    return st;
  }

  uint64_t t0 = hm_now_ns();
  for (int r = 0; r < job.n; r++) {
    st = hm_spawn(&job, r, exe);
    if (st != HM_OK) {
      hm_job_cleanup(&job);
      return st;
    }
  }

  /* why the job is stopping: the first of a worker failure, a signal, the job timeout */
  enum { HM_RUNNING, HM_STOP_FAILURE, HM_STOP_SIGNAL, HM_STOP_TIMEOUT } cause = HM_RUNNING;
  uint64_t job_deadline = opts->timeout_ms > 0 ? hm_deadline_after_ms((uint64_t)opts->timeout_ms) : 0;
  uint64_t grace_ns = (uint64_t)(opts->grace_ms > 0 ? opts->grace_ms : 2000) * 1000000ull;
  int killed = 0, first_failed = -1;
  uint64_t stop_t = 0, kill_at = 0, reap_deadline = 0, drain_deadline = 0;
  struct pollfd *pfds = hm_calloc((size_t)(3 * job.n + 1), sizeof(struct pollfd), "poll set");
  int *tags = hm_calloc((size_t)(3 * job.n + 1), sizeof(int), "poll set");
  if (!pfds || !tags) {
    free(pfds), free(tags);
    hm_job_cleanup(&job);
    return HM_ERR_NOMEM;
  }
  st = HM_OK;
  hm_watch wt;
  int watching = 0, *exited = NULL;
  if (opts->heartbeat_dir) {
    exited = hm_calloc((size_t)job.nranks, sizeof(int), "exit flags");
    if (!exited || hm_watch_init(&wt, opts->heartbeat_dir, job.nranks, opts->silence_ms, opts->step_deadline_ms,
                                 opts->first_step_deadline_ms) != HM_OK)
      st = HM_ERR_NOMEM;
    else
      watching = 1;
  }
  for (; st == HM_OK;) {
    int alive = hm_sweep_exits(&job, &first_failed);
    if (watching && cause == HM_RUNNING && first_failed < 0) first_failed = hm_watch_round(&job, &wt, exited);
    uint64_t now = hm_now_ns();
    if (cause == HM_RUNNING && first_failed >= 0) res->failed_wall_s = hm_wall_now_s();
    if (cause == HM_RUNNING && (first_failed >= 0 || hm_deadline_passed(job_deadline))) {
      cause = first_failed >= 0 ? HM_STOP_FAILURE : HM_STOP_TIMEOUT;
      stop_t = now;
      kill_at = now + grace_ns;
      hm_signal_all(&job, SIGTERM);
    }
    if (cause != HM_RUNNING && !killed && alive > 0 && now >= kill_at) {
      killed = 1;
      hm_signal_all(&job, SIGKILL);
      reap_deadline = hm_deadline_after_ms(HM_LAUNCH_KILL_WAIT_MS);
    }
    if (killed && alive > 0 && hm_deadline_passed(reap_deadline)) {
      st = hm_error(HM_ERR_TIMEOUT, "%d worker(s) still running %d ms after SIGKILL", alive,
                    HM_LAUNCH_KILL_WAIT_MS);
      break;
    }
    int npipes = 0;
    for (int r = 0; r < job.n; r++) npipes += (job.w[r].out_rd >= 0) + (job.w[r].err_rd >= 0);
    if (alive == 0) {
      if (drain_deadline == 0) drain_deadline = hm_deadline_after_ms(HM_LAUNCH_DRAIN_MS);
      /* a worker's leftover child may hold the pipes open: it is killed in cleanup */
      if (npipes == 0 || hm_deadline_passed(drain_deadline)) break;
    }

    int np = 0;
    pfds[np] = (struct pollfd){job.sig_rd, POLLIN, 0};
    tags[np++] = -1;
    for (int r = 0; r < job.n; r++) {
      hm_worker *w = &job.w[r];
      if (w->pidfd >= 0 && !w->exited) pfds[np] = (struct pollfd){w->pidfd, POLLIN, 0}, tags[np++] = 3 * r;
      if (w->out_rd >= 0) pfds[np] = (struct pollfd){w->out_rd, POLLIN, 0}, tags[np++] = 3 * r + 1;
      if (w->err_rd >= 0) pfds[np] = (struct pollfd){w->err_rd, POLLIN, 0}, tags[np++] = 3 * r + 2;
    }
    int timeout = HM_LAUNCH_POLL_MS;
    if (cause != HM_RUNNING && !killed && kill_at > now) {
      int64_t left_ms = (int64_t)((kill_at - now) / 1000000ull) + 1;
      if (left_ms < timeout) timeout = (int)left_ms;
    }
    int pr = poll(pfds, (nfds_t)np, timeout);
    if (pr < 0 && errno != EINTR) {
      st = hm_error(HM_ERR_IO, "poll: %s", strerror(errno));
      break;
    }
    for (int i = 0; pr > 0 && i < np; i++) {
      if (!pfds[i].revents) continue;
      if (tags[i] == -1) {
        unsigned char sig;
        while (read(job.sig_rd, &sig, 1) == 1) {
          if (!res->interrupt_signal) res->interrupt_signal = sig;
          hm_signal_all(&job, sig);
          if (cause == HM_RUNNING) {
            cause = HM_STOP_SIGNAL;
            stop_t = hm_now_ns();
            kill_at = stop_t + grace_ns;
          } else if (!killed) {
            kill_at = hm_now_ns(); /* a second signal while stopping: SIGKILL at once */
          }
        }
      } else if (tags[i] % 3 != 0) {
        hm_pump(&job, tags[i] / 3, tags[i] % 3 - 1);
      } /* a pidfd became readable: the sweep at the top of the loop records the exit */
    }
  }
  free(pfds);
  free(tags);
  res->steps_seen = -1;
  if (watching) {
    int cause_unused = 0;
    double idle_unused = 0;
    for (int r = 0; r < job.nranks; r++) exited[r] = 0; /* a last look: steps done just before the end */
    hm_watch_check(&wt, hm_now_ns(), exited, &cause_unused, &idle_unused);
    res->steps_seen = wt.steps_seen;
    res->first_step_wall_s = wt.first_step_wall_s;
    if (opts->external && first_failed >= 0 && job.named_rank < 0) hm_find_gone_rank(&job, opts->heartbeat_dir);
    const int rank = job.named_rank >= 0 ? job.named_rank : opts->external ? -1 : first_failed;
    hm_hb_state hb; /* its last heartbeat stays in the file after it died */
    if (rank >= 0 && hm_hb_read(opts->heartbeat_dir, rank, &hb) == HM_OK) {
      hm_strcpy(res->host, sizeof res->host, hb.host);
      hm_strcpy(res->device, sizeof res->device, hb.device);
    }
    hm_watch_free(&wt);
  }
  free(exited);
  if (first_failed >= 0 && cause == HM_STOP_FAILURE) {
    hm_worker *w = &job.w[first_failed];
    res->cause = job.named_cause ? job.named_cause : w->signal ? HM_FAIL_SIGNAL : HM_FAIL_EXIT;
    res->failed_rank = job.named_rank >= 0 ? job.named_rank : opts->external ? -1 : first_failed;
    res->failed_pid = job.named_pid > 0 ? job.named_pid : (int)w->pid;
    res->exit_code = w->signal ? -1 : w->status_code;
    res->term_signal = w->signal;
  }
  char what[600] = "";
  if (first_failed >= 0) hm_describe_failure(&job, &job.w[first_failed], first_failed, res, what, sizeof what);
  int n = job.nranks;
  hm_job_cleanup(&job);
  uint64_t t_end = hm_now_ns();
  res->elapsed_s = (double)(t_end - t0) * 1e-9;
  res->stop_s = stop_t ? (double)(t_end - stop_t) * 1e-9 : 0.0;
  res->timed_out = cause == HM_STOP_TIMEOUT;
  if (st != HM_OK) return st;
  switch (cause) {
    case HM_STOP_FAILURE:
      return hm_error(HM_ERR_PEER_DEAD, "%s; stopped the other %d worker(s) in %.2f s", what, n - 1,
                      res->stop_s);
    case HM_STOP_SIGNAL:
      return hm_error(HM_ERR_ABORTED, "stopped by signal %d (%s), forwarded to %d worker(s)",
                      res->interrupt_signal, strsignal(res->interrupt_signal), n);
    case HM_STOP_TIMEOUT:
      return hm_error(HM_ERR_TIMEOUT, "job did not finish within %d ms; stopped %d worker(s)",
                      opts->timeout_ms, n);
    case HM_RUNNING:
      break;
  }
  return HM_OK;
}
