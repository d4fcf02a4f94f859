/* The link half of the profiler: hmcomm send/recv ping-pong between two processes of this
 * machine, and the latency + bytes/bandwidth fit (include/hetmix/profile.h).
 *
 * This process makes the unique id (the rendezvous store lives here, as in a launcher) and forks
 * two ranks; rank 0 times batches of round trips per message size and writes the one-way times
 * into shared memory. Both ranks derive the same iteration counts from the size alone, so they
 * never need to agree at run time. A rank that fails, or a probe past its deadline, stops both.
 * Not here: other hosts (a real NIC cannot be probed from one machine). */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hetmix/comm.h"
#include "hetmix/profile.h"
#include "hetmix/runtime.h"
#include "util/util.h"

#define HM_PROBE_BATCHES 5
#define HM_PROBE_MAX_RANKS 8

/* A probe between two network namespaces: their files (opened here, entered by each child),
 * addresses, and the job's store and secret. */
typedef struct hm_probe_ns {
  const char *name[2];
  int fd[2];
  char addr[2][64];
  char store[96];
  char secret[65];
} hm_probe_ns;

static hm_status hm_probe_ns_open(const hm_link_probe_options *o, hm_probe_ns *ns) {
  ns->fd[0] = ns->fd[1] = -1;
  for (int r = 0; r < 2; r++) {
    ns->name[r] = o->netns[r];
    HM_TRY(hm_netns_addr(o->netns[r], ns->addr[r], sizeof ns->addr[r]));
    HM_TRY(hm_netns_open(o->netns[r], &ns->fd[r]));
  }
  int port;
  HM_TRY(hm_launch_free_port(ns->addr[0], &port));
  snprintf(ns->store, sizeof ns->store, "%s:%d", ns->addr[0], port);
  return hm_random_hex(ns->secret, sizeof ns->secret, 32);
}

typedef struct hm_probe_shared {
  int status[HM_PROBE_MAX_RANKS];    /* hm_status of each rank; -1 while running */
  char msg[HM_PROBE_MAX_RANKS][512]; /* the failing rank's message */
  double seconds[HM_PROFILE_MAX_SIZES];
} hm_probe_shared;

hm_status hm_link_fit_points(const double *bytes, const double *seconds, int n, double *latency,
                             double *bandwidth) {
  if (!bytes || !seconds || !latency || !bandwidth || n < 2)
    return hm_error(HM_ERR_INVALID_ARG, "link fit: needs at least 2 points (got %d)", n);
  double s0 = 0, s1 = 0, s2 = 0, t0 = 0, t1 = 0;
  int imax = 0;
  for (int i = 0; i < n; i++) {
    if (!(seconds[i] > 0) || !(bytes[i] >= 0))
      return hm_error(HM_ERR_INVALID_ARG, "link fit: point %d has %g bytes in %g s", i, bytes[i], seconds[i]);
    const double w = 1.0 / (seconds[i] * seconds[i]);
    s0 += w;
    s1 += w * bytes[i];
    s2 += w * bytes[i] * bytes[i];
    t0 += w * seconds[i];
    t1 += w * bytes[i] * seconds[i];
    if (bytes[i] > bytes[imax]) imax = i;
  }
  const double det = s0 * s2 - s1 * s1;
  double a = 0, b = 0;
  if (det > 0) {
    a = (t0 * s2 - s1 * t1) / det;
    b = (s0 * t1 - s1 * t0) / det;
  }
  if (!(det > 0) || a < 0) { /* through the origin: t = b x */
    a = 0;
    b = s2 > 0 ? t1 / s2 : 0;
  }
  if (!(b > 0)) { /* flat or falling with size: the largest message says the bandwidth */
    b = bytes[imax] > 0 ? seconds[imax] / bytes[imax] : 0;
    if (a > seconds[imax]) a = seconds[imax];
  }
  *latency = a;
  *bandwidth = b > 0 ? 1.0 / b : INFINITY;
  return HM_OK;
}

hm_status hm_link_fit_rate(const double *bytes, const double *seconds, int n, double *latency, double *bandwidth,
                           double *burst) {
  if (!bytes || !seconds || !latency || !bandwidth || n < 2)
    return hm_error(HM_ERR_INVALID_ARG, "link fit: needs at least 2 points (got %d)", n);
  int big = -1, next = -1, small = 0; /* the largest, the second largest and the smallest size */
  for (int i = 0; i < n; i++) {
    if (!(seconds[i] > 0) || !(bytes[i] >= 0))
      return hm_error(HM_ERR_INVALID_ARG, "link fit: point %d has %g bytes in %g s", i, bytes[i], seconds[i]);
    if (big < 0 || bytes[i] > bytes[big]) next = big, big = i;
    else if (next < 0 || bytes[i] > bytes[next]) next = i;
    if (bytes[i] < bytes[small]) small = i;
  }
  const double db = bytes[big] - bytes[next], dt = seconds[big] - seconds[next];
  if (!(db > 0)) return hm_error(HM_ERR_INVALID_ARG, "link fit: the two largest points have the same size");
  /* a time that does not grow with size (noise): the largest message's rate */
  const double bw = dt > 0 ? db / dt : bytes[big] / seconds[big];
  const double lat = seconds[small] - bytes[small] / bw;
  *bandwidth = bw;
  *latency = lat > 0 ? lat : 0;
  if (burst) { /* the large messages' line, latency + (bytes - burst) / bw, through the largest point */
    const double ahead = (*latency + bytes[big] / bw - seconds[big]) * bw;
    *burst = ahead > 0 ? ahead : 0;
  }
  return HM_OK;
}

double hm_link_fit_time(const hm_link_fit *f, double bytes) {
  const double paid = bytes > f->burst ? bytes - f->burst : 0;
  return f->latency + (f->bandwidth > 0 ? paid / f->bandwidth : 0);
}

/* Round trips per batch for a message size, from a prior (5 us + 2 GB/s), so that a size takes
 * about its share of the time budget; both ranks compute the same count. */
static long hm_probe_iters(size_t bytes, double seconds_per_size) {
  double one = 2 * (5e-6 + (double)bytes / 2e9);
  double it = seconds_per_size / HM_PROBE_BATCHES / one;
  return it < 2 ? 2 : it > 20000 ? 20000 : (long)it;
}

/* In a namespace (netns probe): enter it and bootstrap from the environment the parent prepared
 * (rank 0 hosts the store at its namespace's address). */
static hm_status hm_probe_init(int rank, int nranks, const hm_unique_id *id, const hm_probe_ns *ns,
                               const hm_comm_config *cfg, hm_comm_t *comm) {
  if (!ns) return hm_comm_init_rank(comm, nranks, id, rank, cfg);
  if (setns(ns->fd[rank], CLONE_NEWNET) != 0)
    return hm_error(HM_ERR_IO, "link probe: cannot enter network namespace %s: %s", ns->name[rank], strerror(errno));
  char v[16];
  snprintf(v, sizeof v, "%d", rank);
  setenv("HETMIX_RANK", v, 1);
  setenv("HETMIX_LOCAL_RANK", v, 1);
  setenv("HETMIX_WORLD_SIZE", "2", 1);
  setenv("HETMIX_LOCAL_WORLD_SIZE", "2", 1);
  setenv("HETMIX_STORE_ADDR", ns->store, 1);
  setenv("HETMIX_SECRET", ns->secret, 1);
  setenv("HETMIX_LISTEN_ADDR", ns->addr[rank], 1);
  unsetenv("HETMIX_SECRET_FILE");
  return hm_comm_init_env(comm, cfg);
}

static int hm_probe_rank(int rank, const hm_unique_id *id, const hm_probe_ns *ns, const hm_link_probe_options *o,
                         hm_probe_shared *sh) {
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = o->transport;
  cfg.timeout_ms = o->timeout_ms;
  cfg.name = "profile";
  hm_comm_t comm = NULL;
  const int nranks = o->allreduce_ranks >= 2 ? o->allreduce_ranks : 2;
  hm_status st = hm_probe_init(rank, nranks, id, ns, &cfg, &comm);
  size_t maxb = 1;
  for (int i = 0; i < o->nsizes; i++) maxb = o->sizes[i] > maxb ? o->sizes[i] : maxb;
  unsigned char *buf = st == HM_OK ? hm_calloc(maxb / sizeof(float) + 1, sizeof(float), "probe buffer") : NULL;
  if (st == HM_OK && !buf) st = HM_ERR_NOMEM;
  if (buf && o->allreduce_ranks < 2) memset(buf, rank + 1, maxb); /* zeros stay finite when summed */
  const int peer = 1 - rank;
  for (int i = 0; st == HM_OK && i < o->nsizes; i++) {
    const size_t n = o->sizes[i];
    const long iters = hm_probe_iters(n, o->seconds_per_size);
    double batch[HM_PROBE_BATCHES];
    for (int k = -1; st == HM_OK && k < HM_PROBE_BATCHES; k++) { /* k = -1: warm-up */
      const long it = k < 0 ? 2 : iters;
      uint64_t t0 = hm_now_ns();
      for (long j = 0; st == HM_OK && j < it; j++) {
        if (o->allreduce_ranks >= 2) {
          st = hm_comm_allreduce(comm, buf, buf, n / sizeof(float), HM_FLOAT32, HM_SUM);
        } else if (rank == 0) {
          st = hm_comm_send(comm, buf, n, HM_UINT8, peer);
          if (st == HM_OK) st = hm_comm_recv(comm, buf, n, HM_UINT8, peer);
        } else {
          st = hm_comm_recv(comm, buf, n, HM_UINT8, peer);
          if (st == HM_OK) st = hm_comm_send(comm, buf, n, HM_UINT8, peer);
        }
      }
      const double per = o->allreduce_ranks >= 2 ? 1.0 : 2.0; /* one allreduce, or a round trip's half */
      if (k >= 0) batch[k] = (double)(hm_now_ns() - t0) * 1e-9 / (per * (double)it);
    }
    if (st != HM_OK) {
      hm_error_context(st, "%zu-byte messages: ", n);
      break;
    }
    /* median of the batches: one descheduled batch on a busy machine does not move it */
    for (int a = 1; a < HM_PROBE_BATCHES; a++)
      for (int b = a; b > 0 && batch[b] < batch[b - 1]; b--) {
        double t = batch[b];
        batch[b] = batch[b - 1];
        batch[b - 1] = t;
      }
    if (rank == 0) sh->seconds[i] = batch[HM_PROBE_BATCHES / 2];
  }
  if (st != HM_OK) snprintf(sh->msg[rank], sizeof sh->msg[rank], "%s", hm_last_error());
  free(buf);
  if (comm) {
    if (st != HM_OK) hm_comm_abort(comm);
    hm_comm_destroy(comm);
  }
  sh->status[rank] = (int)st;
  return st == HM_OK ? 0 : 1;
}

static void hm_probe_default_sizes(hm_link_probe_options *o) {
  static const size_t def[] = {8, 4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20};
  o->nsizes = (int)(sizeof def / sizeof def[0]);
  memcpy(o->sizes, def, sizeof def);
}

hm_status hm_profile_link_probe(const hm_link_probe_options *opt, hm_link_fit *out) {
  if (!opt || !out) return hm_error(HM_ERR_INVALID_ARG, "hm_profile_link_probe: missing argument");
  hm_link_probe_options o = *opt;
  if (!o.transport) o.transport = "auto";
  if (strcmp(o.transport, "shm") && strcmp(o.transport, "tcp") && strcmp(o.transport, "auto"))
    return hm_error(HM_ERR_INVALID_ARG, "link probe: transport '%s' is not shm, tcp or auto", o.transport);
  if (o.nsizes <= 0) hm_probe_default_sizes(&o);
  if (o.nsizes < 2 || o.nsizes > HM_PROFILE_MAX_SIZES)
    return hm_error(HM_ERR_INVALID_ARG, "link probe: %d sizes, expected 2..%d", o.nsizes, HM_PROFILE_MAX_SIZES);
  for (int i = 0; i < o.nsizes; i++)
    if (o.sizes[i] < 1 || o.sizes[i] > ((size_t)1 << 30))
      return hm_error(HM_ERR_INVALID_ARG, "link probe: size %zu outside 1 B..1 GiB", o.sizes[i]);
  if (!(o.seconds_per_size > 0)) o.seconds_per_size = 0.05;
  if (o.timeout_ms <= 0) o.timeout_ms = 30000;
  if (o.allreduce_ranks == 1 || o.allreduce_ranks < 0 || o.allreduce_ranks > HM_PROBE_MAX_RANKS)
    return hm_error(HM_ERR_INVALID_ARG, "link probe: allreduce among %d ranks, expected 2..%d (or 0 for ping-pong)",
                    o.allreduce_ranks, HM_PROBE_MAX_RANKS);
  for (int i = 0; o.allreduce_ranks && i < o.nsizes; i++)
    if (o.sizes[i] < sizeof(float))
      return hm_error(HM_ERR_INVALID_ARG, "link probe: allreduce size %zu is below one float", o.sizes[i]);
  const int nr = o.allreduce_ranks >= 2 ? o.allreduce_ranks : 2;
  memset(out, 0, sizeof *out);
  hm_strcpy(out->transport, sizeof out->transport, o.transport);

  hm_unique_id id;
  hm_probe_ns ns_store, *ns = NULL;
  memset(&id, 0, sizeof id);
  if (o.netns[0] || o.netns[1]) {
    if (!o.netns[0] || !o.netns[1]) return hm_error(HM_ERR_INVALID_ARG, "link probe: give both network namespaces");
    if (o.allreduce_ranks >= 2)
      return hm_error(HM_ERR_UNSUPPORTED, "link probe: the allreduce probe runs on this host only, not across namespaces");
    ns = &ns_store;
    hm_status nst = hm_probe_ns_open(&o, ns);
    if (nst != HM_OK) {
      for (int r = 0; r < 2; r++)
        if (ns->fd[r] >= 0) close(ns->fd[r]);
      return nst;
    }
  } else {
    HM_TRY(hm_get_unique_id(&id));
  }
  hm_probe_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) {
    hm_status mst = hm_error(HM_ERR_NOMEM, "link probe: shared page: %s", strerror(errno));
    for (int r = 0; ns && r < 2; r++) close(ns->fd[r]);
    return mst;
  }
  memset(sh, 0, sizeof *sh);
  for (int r = 0; r < nr; r++) sh->status[r] = -1;

  const pid_t parent = getpid();
  pid_t pid[HM_PROBE_MAX_RANKS] = {0};
  hm_status st = HM_OK;
  for (int r = 0; r < nr; r++) {
    pid[r] = fork();
    if (pid[r] < 0) {
      st = hm_error(HM_ERR_IO, "link probe: fork of rank %d: %s", r, strerror(errno));
      pid[r] = 0;
      break;
    }
    if (pid[r] == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the profiler */
      if (getppid() != parent) _exit(1);
      _exit(hm_probe_rank(r, &id, ns, &o, sh));
    }
  }
  /* Wait for both with the deadline; the first failure stops the other. */
  const uint64_t deadline = hm_deadline_after_ms((uint64_t)o.timeout_ms + 2000);
  int alive = 0, wstatus[HM_PROBE_MAX_RANKS] = {0}, failed = -1;
  for (int r = 0; r < nr; r++) alive += pid[r] > 0;
  while (alive > 0) {
    for (int r = 0; r < nr; r++) {
      if (pid[r] <= 0) continue;
      pid_t w = waitpid(pid[r], &wstatus[r], WNOHANG);
      if (w == pid[r]) {
        pid[r] = -pid[r];
        alive--;
        if (!(WIFEXITED(wstatus[r]) && WEXITSTATUS(wstatus[r]) == 0) && failed < 0) failed = r;
      } else if (w < 0 && errno != EINTR) { /* not ours to reap any more: count it as failed */
        pid[r] = -pid[r];
        alive--;
        wstatus[r] = 0xff00;
        if (failed < 0) failed = r;
      }
    }
    if (alive == 0) break;
    if (failed >= 0 || st != HM_OK || hm_deadline_passed(deadline)) {
      for (int r = 0; r < nr; r++)
        if (pid[r] > 0) kill(pid[r], SIGKILL);
      if (st == HM_OK && failed < 0) {
        int which = 0;
        while (which < nr - 1 && pid[which] <= 0) which++;
        st = hm_error(HM_ERR_TIMEOUT, "link probe over %s: rank %d still running after %d ms; both stopped",
                      o.transport, which, o.timeout_ms + 2000);
      }
      for (int r = 0; r < nr; r++)
        if (pid[r] > 0) {
          while (waitpid(pid[r], &wstatus[r], 0) < 0 && errno == EINTR) {
          }
          pid[r] = -pid[r];
          alive--;
        }
      break;
    }
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  if (st == HM_OK && failed >= 0) {
    const int r = failed;
    if (sh->status[r] > 0)
      st = hm_error((hm_status)sh->status[r], "link probe over %s: rank %d: %s", o.transport, r, sh->msg[r]);
    else if (WIFSIGNALED(wstatus[r]))
      st = hm_error(HM_ERR_PEER_DEAD, "link probe over %s: rank %d was killed by signal %d", o.transport, r,
                    WTERMSIG(wstatus[r]));
    else
      st = hm_error(HM_ERR_PEER_DEAD, "link probe over %s: rank %d exited with status %d", o.transport, r,
                    WIFEXITED(wstatus[r]) ? WEXITSTATUS(wstatus[r]) : -1);
  }
  if (st == HM_OK) {
    out->npoints = o.nsizes;
    for (int i = 0; i < o.nsizes; i++) {
      out->bytes[i] = (double)o.sizes[i];
      out->seconds[i] = sh->seconds[i];
    }
    st = hm_link_fit_points(out->bytes, out->seconds, out->npoints, &out->latency, &out->bandwidth);
    for (int i = 0; st == HM_OK && i < out->npoints; i++) {
      double fit = out->latency + out->bytes[i] / out->bandwidth;
      double e = fabs(fit - out->seconds[i]) / out->seconds[i];
      if (e > out->max_rel_err) out->max_rel_err = e;
    }
  }
  munmap(sh, sizeof *sh);
  for (int r = 0; ns && r < 2; r++) close(ns->fd[r]);
  return st;
}
