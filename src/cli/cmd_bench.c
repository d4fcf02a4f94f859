/* `hetmix bench comm <op>`: hmcomm's collective benchmark, nccl-tests style.
 *
 * Same flags (-b -e -f -i -o -d -r -n -w -c) and columns (size, count, type, redop, root,
 * time, algbw, busbw, #wrong; out-of-place then in-place) as nccl-tests, with busbw factors
 * from hm_busbw_factor() (docs/ARCHITECTURE.md, Definitions). -c 1 checks every size with exactly representable values.
 * Ranks: --ranks N forks N local ranks; otherwise, under a launcher (mpirun, torchrun, Slurm),
 * each process is one rank bootstrapped from its environment. -t/--transport and --algo force
 * hmcomm's choice. Times are averaged over ranks, as nccl-tests does.
 * Not a test: exit status is 0 unless a run failed or a check found wrong values. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/comm.h"
#include "hetmix/cost.h"
#include "util/bench_values.h"
#include "util/half.h"
#include "options.h"

/* ---- options ---- */
enum { BENCH_SENDRECV = HM_COLL_KIND_COUNT };

typedef struct bench_opts {
  int kind;  /* hm_coll_kind or BENCH_SENDRECV */
  size_t min_bytes, max_bytes, step_bytes;
  double step_factor;
  int op;    /* hm_redop or -1 = all */
  int dt;    /* hm_dtype or -1 = all */
  int root;
  int iters, warmup, check;
  int ranks; /* 0: from the launcher's environment */
  int bind;  /* forked ranks: pin rank r to CPU r mod (CPUs this process may use) */
  int huge;  /* buffers 2 MiB-aligned and advised for transparent huge pages */
  int sync;  /* a barrier before each timed call, which alone is timed (OSU's way) */
  const char *transport, *algo;
  double timeout_s;
} bench_opts;

static const char *kind_names[] = {"allreduce", "reduce", "broadcast", "reduce_scatter",
                                   "allgather", "alltoall", "gather", "scatter", "barrier",
                                   "sendrecv"};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_dtype(const char *s) {
  static const struct { const char *name; hm_dtype dt; } alias[] = {
      {"float", HM_FLOAT32}, {"half", HM_FLOAT16}, {"bfloat16", HM_BFLOAT16},
      {"double", HM_FLOAT64}, {"int8", HM_INT8}, {"uint8", HM_UINT8}, {"int32", HM_INT32},
      {"int", HM_INT32}, {"uint32", HM_UINT32}, {"int64", HM_INT64}, {"uint64", HM_UINT64}};
  if (strcmp(s, "all") == 0) return -1;
  for (int d = 0; d < HM_DTYPE_COUNT; d++)
    if (strcmp(s, hm_dtype_name((hm_dtype)d)) == 0) return d;
  for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
    if (strcmp(s, alias[i].name) == 0) return (int)alias[i].dt;
  return -2;
}

static int parse_op(const char *s) {
  if (strcmp(s, "all") == 0) return -1;
  for (int o = 0; o < HM_REDOP_COUNT; o++)
    if (strcmp(s, hm_redop_name((hm_redop)o)) == 0) return o;
  return -2;
}

/* ---- exactly representable values ---- */
static double get_val(const void *b, hm_dtype dt, size_t i) {
  switch (dt) {
    case HM_INT8: return ((const int8_t *)b)[i];
    case HM_UINT8: return ((const uint8_t *)b)[i];
    case HM_INT32: return ((const int32_t *)b)[i];
    case HM_UINT32: return ((const uint32_t *)b)[i];
    case HM_INT64: return (double)((const int64_t *)b)[i];
    case HM_UINT64: return (double)((const uint64_t *)b)[i];
    case HM_FLOAT16: return hm_f16_to_f32(((const uint16_t *)b)[i]);
    case HM_BFLOAT16: return hm_bf16_to_f32(((const uint16_t *)b)[i]);
    case HM_FLOAT32: return ((const float *)b)[i];
    default: return ((const double *)b)[i];
  }
}
static void set_val(void *b, hm_dtype dt, size_t i, double v) {
  switch (dt) {
    case HM_INT8: ((int8_t *)b)[i] = (int8_t)v; break;
    case HM_UINT8: ((uint8_t *)b)[i] = (uint8_t)v; break;
    case HM_INT32: ((int32_t *)b)[i] = (int32_t)v; break;
    case HM_UINT32: ((uint32_t *)b)[i] = (uint32_t)v; break;
    case HM_INT64: ((int64_t *)b)[i] = (int64_t)v; break;
    case HM_UINT64: ((uint64_t *)b)[i] = (uint64_t)v; break;
    case HM_FLOAT16: ((uint16_t *)b)[i] = hm_f32_to_f16((float)v); break;
    case HM_BFLOAT16: ((uint16_t *)b)[i] = hm_f32_to_bf16((float)v); break;
    case HM_FLOAT32: ((float *)b)[i] = (float)v; break;
    default: ((double *)b)[i] = v; break;
  }
}

static double red_expect(hm_redop op, hm_dtype dt, int n, size_t i, int lim, double *tol) {
  double s = 0, p = 1, mn = 1e300, mx = -1e300;
  for (int r = 0; r < n; r++) {
    double v = hm_bench_red_input(op, r, i, lim);
    s += v, p *= v;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  *tol = 0;
  switch (op) {
    case HM_SUM: return s;
    case HM_PROD: return p;
    case HM_MIN: return mn;
    case HM_MAX: return mx;
    default:
      if (dt < HM_FLOAT16) return floor(s / n);
      if ((n & (n - 1)) != 0) *tol = fmax(1.0, s / n) / 64; /* 1/n is rounded (pre-multiplied) */
      return s / n;
  }
}

/* ---- one size ---- */
typedef struct bench_case {
  int kind;
  hm_dtype dt;
  hm_redop op;
  int root, n, r;
  size_t count;      /* per-rank count argument of the call */
  size_t send_elems, recv_elems;
} bench_case;

static hm_status run_once(hm_comm_t comm, const bench_case *c, char *sbuf, char *rbuf, int inplace) {
  size_t es = hm_dtype_size(c->dt);
  void *send = sbuf, *recv = inplace ? sbuf : rbuf;
  switch (c->kind) {
    case HM_COLL_ALLREDUCE: return hm_comm_allreduce(comm, send, recv, c->count, c->dt, c->op);
    case HM_COLL_REDUCE: return hm_comm_reduce(comm, send, recv, c->count, c->dt, c->op, c->root);
    case HM_COLL_BROADCAST: return hm_comm_broadcast(comm, send, recv, c->count, c->dt, c->root);
    case HM_COLL_REDUCE_SCATTER:
      if (inplace) recv = sbuf + (size_t)c->r * c->count * es;
      return hm_comm_reduce_scatter(comm, send, recv, c->count, c->dt, c->op);
    case HM_COLL_ALLGATHER:
      if (inplace) recv = sbuf, send = sbuf + (size_t)c->r * c->count * es;
      return hm_comm_allgather(comm, send, recv, c->count, c->dt);
    case HM_COLL_ALLTOALL: return hm_comm_alltoall(comm, send, recv, c->count, c->dt);
    case HM_COLL_GATHER:
      if (inplace && c->r == c->root) recv = sbuf, send = sbuf + (size_t)c->root * c->count * es;
      else recv = rbuf;
      return hm_comm_gather(comm, send, recv, c->count, c->dt, c->root);
    case HM_COLL_SCATTER:
      recv = inplace && c->r == c->root ? sbuf + (size_t)c->root * c->count * es : rbuf;
      return hm_comm_scatter(comm, send, recv, c->count, c->dt, c->root);
    default: { /* sendrecv: ring exchange, right neighbour gets our buffer */
      /* "in place" has no meaning for a send and a receive: both columns time the same. */
      int right = (c->r + 1) % c->n, left = (c->r + c->n - 1) % c->n;
      recv = rbuf;
      hm_status st = hm_group_start();
      if (st == HM_OK) st = hm_comm_send(comm, send, c->count, c->dt, right);
      if (st == HM_OK) st = hm_comm_recv(comm, recv, c->count, c->dt, left);
      hm_status st2 = hm_group_end();
      return st != HM_OK ? st : st2;
    }
  }
}

/* Fills this rank's inputs (the same whether or not -c checks them). */
static void fill_inputs(const bench_case *c, char *sbuf, int inplace) {
  size_t es = hm_dtype_size(c->dt);
  int n = c->n, r = c->r, lim = hm_bench_value_limit(c->dt, n);
  switch (c->kind) {
    case HM_COLL_ALLREDUCE:
    case HM_COLL_REDUCE:
    case HM_COLL_REDUCE_SCATTER:
      for (size_t g = 0; g < c->send_elems; g++) set_val(sbuf, c->dt, g, hm_bench_red_input(c->op, r, g, lim));
      break;
    case HM_COLL_BROADCAST:
      for (size_t i = 0; i < c->count; i++) set_val(sbuf, c->dt, i, r == c->root ? hm_bench_mov_input(c->root, 0, i) : 0);
      break;
    case HM_COLL_ALLGATHER:
    case HM_COLL_GATHER: {
      char *s = sbuf;
      if (inplace && (c->kind == HM_COLL_ALLGATHER || r == c->root))
        s = sbuf + (size_t)(c->kind == HM_COLL_ALLGATHER ? r : c->root) * c->count * es;
      for (size_t i = 0; i < c->count; i++) set_val(s, c->dt, i, hm_bench_mov_input(r, 0, i));
      break;
    }
    default: /* alltoall, scatter, sendrecv: a block per destination */
      for (int p = 0; p < n; p++)
        for (size_t i = 0; i < c->count; i++)
          set_val(sbuf, c->dt, (size_t)p * c->count + i, hm_bench_mov_input(r, p, i));
      if (c->kind == BENCH_SENDRECV)
        for (size_t i = 0; i < c->count; i++) set_val(sbuf, c->dt, i, hm_bench_mov_input(r, (r + 1) % n, i));
      break;
  }
}

/* Fills inputs, runs once, counts wrong elements on this rank. */
static hm_status check_once(hm_comm_t comm, const bench_case *c, char *sbuf, char *rbuf, int inplace,
                            int64_t *wrong) {
  size_t es = hm_dtype_size(c->dt);
  int n = c->n, r = c->r, lim = hm_bench_value_limit(c->dt, n);
  int red = c->kind == HM_COLL_ALLREDUCE || c->kind == HM_COLL_REDUCE || c->kind == HM_COLL_REDUCE_SCATTER;
  fill_inputs(c, sbuf, inplace);
  memset(rbuf, 0, c->recv_elems * es);
  hm_status st = run_once(comm, c, sbuf, rbuf, inplace);
  if (st != HM_OK) return st;
  const char *out = inplace ? sbuf : rbuf;
  if (c->kind == BENCH_SENDRECV || (inplace && c->kind == HM_COLL_GATHER && r != c->root) ||
      (inplace && c->kind == HM_COLL_SCATTER && r != c->root))
    out = rbuf;
  int64_t bad = 0;
  double tol = 0;
  if (red) {
    if (c->kind == HM_COLL_REDUCE && r != c->root) return HM_OK;
    size_t base = c->kind == HM_COLL_REDUCE_SCATTER ? (size_t)r * c->count : 0;
    if (c->kind == HM_COLL_REDUCE_SCATTER && inplace) out = sbuf + base * es;
    for (size_t i = 0; i < c->count; i++) {
      double want = red_expect(c->op, c->dt, n, base + i, lim, &tol);
      double got = get_val(out, c->dt, i);
      if (tol == 0 ? got != want : fabs(got - want) > tol) bad++;
    }
  } else {
    for (size_t i = 0; i < c->recv_elems; i++) {
      double want;
      size_t blk = c->count ? i / c->count : 0, j = c->count ? i % c->count : 0;
      switch (c->kind) {
        case HM_COLL_BROADCAST: want = hm_bench_mov_input(c->root, 0, i); break;
        case HM_COLL_ALLGATHER: want = hm_bench_mov_input((int)blk, 0, j); break;
        case HM_COLL_GATHER:
          if (r != c->root) return HM_OK;
          want = hm_bench_mov_input((int)blk, 0, j);
          break;
        case HM_COLL_ALLTOALL: want = hm_bench_mov_input((int)blk, r, j); break;
        case HM_COLL_SCATTER:
          if (inplace && r == c->root) out = sbuf + (size_t)r * c->count * es;
          want = hm_bench_mov_input(c->root, r, i);
          break;
        default: want = hm_bench_mov_input((r + n - 1) % n, r, i); break;
      }
      if (get_val(out, c->dt, i) != want) bad++;
    }
  }
  *wrong += bad;
  return HM_OK;
}

static double bus_factor(int kind, int n) {
  return kind == BENCH_SENDRECV ? 1.0 : hm_busbw_factor((hm_coll_kind)kind, n);
}

static void print_header(const bench_opts *o, int n) {
  printf("# hetmix bench comm %s: %d ranks, transport %s, algorithm %s\n", kind_names[o->kind], n,
         o->transport ? o->transport : "auto", o->algo ? o->algo : "auto");
  printf("# minBytes %zu maxBytes %zu step: %s%g warmup iters: %d iters: %d validation: %d\n",
         o->min_bytes, o->max_bytes, o->step_factor > 1 ? "x" : "+",
         o->step_factor > 1 ? o->step_factor : (double)o->step_bytes, o->warmup, o->iters, o->check);
  printf("#\n");
  printf("#%53s%s%36s\n", "", "out-of-place", "in-place");
  printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s\n", "size", "count", "type",
         "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong");
  printf("# %10s %12s %8s %6s %6s %8s %7s %7s %6s %8s %7s %7s %6s\n", "(B)", "(elements)", "", "",
         "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
  fflush(stdout);
}

/* The mean time of o->iters calls: back to back after one barrier (nccl-tests' way: a call may
 * start while its peers finish the last), or with --sync each call alone after a barrier, as one
 * isolated call from a common start, timed until its slowest rank has its result (the barriers
 * and the exchange of times are not timed). A rank's own time in an isolated call is not the
 * call's: in a ring whose links differ, the ranks just before a slow link receive their last
 * block steps before the ranks after it (8 ranks, 2 slow links: the mean over ranks is 11% under
 * the last rank's time), so every rank adds the call's slowest time. */
static hm_status timed_calls(hm_comm_t comm, const bench_opts *o, const bench_case *c, char *sbuf,
                             char *rbuf, int ip, double *mean) {
  hm_status st = hm_comm_barrier(comm);
  double total = 0, t0 = now_s();
  for (int it = 0; it < o->iters && st == HM_OK; it++) {
    if (o->sync) {
      if ((st = hm_comm_barrier(comm)) != HM_OK) break;
      t0 = now_s();
    }
    st = run_once(comm, c, sbuf, rbuf, ip);
    if (o->sync && st == HM_OK) {
      double mine = now_s() - t0, slowest = 0;
      st = hm_comm_allreduce(comm, &mine, &slowest, 1, HM_FLOAT64, HM_MAX);
      total += slowest;
    }
  }
  if (!o->sync) total = now_s() - t0;
  *mean = total / (o->iters > 0 ? o->iters : 1);
  return st;
}

/* Runs the whole sweep on one rank; rank 0 prints. Returns 0 when all ran and checked clean. */
static int bench_rank(hm_comm_t comm, const bench_opts *o) {
  int n = hm_comm_size(comm), r = hm_comm_rank(comm);
  int rooted = o->kind == HM_COLL_REDUCE || o->kind == HM_COLL_BROADCAST ||
               o->kind == HM_COLL_GATHER || o->kind == HM_COLL_SCATTER;
  int reducing = o->kind == HM_COLL_ALLREDUCE || o->kind == HM_COLL_REDUCE ||
                 o->kind == HM_COLL_REDUCE_SCATTER;
  int per_rank_split = o->kind == HM_COLL_REDUCE_SCATTER || o->kind == HM_COLL_ALLGATHER ||
                       o->kind == HM_COLL_ALLTOALL || o->kind == HM_COLL_GATHER ||
                       o->kind == HM_COLL_SCATTER;
  if (o->root < 0 || o->root >= n) {
    if (r == 0) hm_cli_fail("pass -r between 0 and nranks-1", "root %d out of range for %d ranks", o->root, n);
    return 1;
  }
  /* Buffers hold the whole array (the largest size) plus room for sendrecv's per-peer blocks. */
  size_t cap = o->max_bytes + 64;
  if (o->kind == BENCH_SENDRECV || o->kind == HM_COLL_SCATTER || o->kind == HM_COLL_ALLTOALL)
    cap = o->max_bytes * (o->kind == BENCH_SENDRECV ? (size_t)n : 1) + 64;
  const size_t al = o->huge ? (2u << 20) : 4096, alloc = (cap + al - 1) / al * al;
  char *sbuf = aligned_alloc(al, alloc);
  char *rbuf = aligned_alloc(al, alloc);
  if (o->huge && sbuf && rbuf) { /* best effort: without THP the pages stay 4 KiB */
    (void)madvise(sbuf, alloc, MADV_HUGEPAGE);
    (void)madvise(rbuf, alloc, MADV_HUGEPAGE);
  }
  if (!sbuf || !rbuf) {
    free(sbuf), free(rbuf);
    if (r == 0) hm_cli_fail("lower -e", "cannot allocate 2 x %zu bytes", cap);
    return 1;
  }
  memset(sbuf, 0, cap);
  memset(rbuf, 0, cap);
  if (r == 0) print_header(o, n);
  int64_t total_wrong = 0;
  double bw_sum = 0;
  int bw_n = 0, failed = 0;
  for (int d = 0; d < HM_DTYPE_COUNT && !failed; d++) {
    if (o->dt >= 0 ? d != o->dt : 0) continue;
    for (int op = 0; op < HM_REDOP_COUNT && !failed; op++) {
      if (!reducing && op > 0) break;
      if (reducing && o->op >= 0 && op != o->op) continue;
      for (size_t size = o->min_bytes; size <= o->max_bytes && !failed;) {
        bench_case c = {.kind = o->kind, .dt = (hm_dtype)d, .op = (hm_redop)op, .root = o->root,
                        .n = n, .r = r};
        size_t es = hm_dtype_size(c.dt);
        size_t elems = size / es;
        c.count = per_rank_split ? elems / (size_t)n : elems;
        size_t whole = per_rank_split ? c.count * (size_t)n : c.count;
        c.send_elems = o->kind == HM_COLL_REDUCE_SCATTER || o->kind == HM_COLL_ALLTOALL ||
                               o->kind == HM_COLL_SCATTER
                           ? whole
                           : c.count;
        if (o->kind == BENCH_SENDRECV) c.send_elems = c.count;
        c.recv_elems = o->kind == HM_COLL_REDUCE_SCATTER || o->kind == HM_COLL_SCATTER ? c.count : whole;
        if (o->kind == HM_COLL_GATHER || o->kind == HM_COLL_ALLGATHER) c.send_elems = whole; /* room for in place */
        double t[2] = {0, 0};
        int64_t wrong[2] = {0, 0};
        for (int ip = 0; ip < 2 && !failed; ip++) {
          hm_status st = HM_OK;
          fill_inputs(&c, sbuf, ip); /* real values also with -c 0 (as the Open MPI peer's) */
          for (int w = 0; w < o->warmup && st == HM_OK; w++) st = run_once(comm, &c, sbuf, rbuf, ip);
          double dt = 0;
          if (st == HM_OK) st = timed_calls(comm, o, &c, sbuf, rbuf, ip, &dt);
          if (st == HM_OK && o->check) st = check_once(comm, &c, sbuf, rbuf, ip, &wrong[ip]);
          /* nccl-tests reports the time averaged over ranks and the sum of wrong values. */
          double tsum = 0;
          int64_t wsum = 0;
          if (st == HM_OK) st = hm_comm_allreduce(comm, &dt, &tsum, 1, HM_FLOAT64, HM_SUM);
          if (st == HM_OK) st = hm_comm_allreduce(comm, &wrong[ip], &wsum, 1, HM_INT64, HM_SUM);
          if (st != HM_OK) {
            if (r == 0) hm_cli_fail_status(st, kind_names[o->kind], "rerun with HETMIX_LOG=info for details");
            failed = 1;
            break;
          }
          t[ip] = tsum / n;
          wrong[ip] = wsum;
        }
        if (failed) break;
        double bytes = (double)whole * (double)es;
        double algbw[2], busbw[2];
        for (int ip = 0; ip < 2; ip++) {
          algbw[ip] = t[ip] > 0 ? bytes / t[ip] * 1e-9 : 0;
          busbw[ip] = algbw[ip] * bus_factor(o->kind, n);
        }
        if (r == 0) {
          char w0[24] = "N/A", w1[24] = "N/A";
          if (o->check) {
            snprintf(w0, sizeof w0, "%lld", (long long)wrong[0]);
            snprintf(w1, sizeof w1, "%lld", (long long)wrong[1]);
          }
          printf("  %10.0f %12zu %8s %6s %6d %8.2f %7.2f %7.2f %6s %8.2f %7.2f %7.2f %6s\n", bytes,
                 whole, hm_dtype_name(c.dt), reducing ? hm_redop_name(c.op) : "none",
                 rooted ? c.root : -1, t[0] * 1e6, algbw[0], busbw[0], w0, t[1] * 1e6, algbw[1],
                 busbw[1], w1);
          fflush(stdout);
        }
        total_wrong += wrong[0] + wrong[1];
        bw_sum += busbw[0] + busbw[1];
        bw_n += 2;
        if (o->step_factor > 1) {
          size_t next = (size_t)((double)size * o->step_factor);
          size = next > size ? next : size + 1;
        } else {
          size += o->step_bytes ? o->step_bytes : 1;
        }
      }
    }
  }
  if (r == 0 && !failed) {
    printf("# Out of bounds values : %lld %s\n", (long long)total_wrong, total_wrong ? "FAILED" : "OK");
    printf("# Avg bus bandwidth    : %g\n#\n", bw_n ? bw_sum / bw_n : 0.0);
    fflush(stdout);
  }
  free(sbuf), free(rbuf);
  return failed || total_wrong != 0;
}

/* ---- ranks: forked locally or from the launcher ---- */
/* Pins the calling process to the (r mod n)-th of the n CPUs it may run on. */
static int bind_cpu(int r) {
  cpu_set_t allowed, one;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
    return hm_cli_fail(NULL, "bench: --bind: sched_getaffinity: %s", strerror(errno));
  int n = CPU_COUNT(&allowed), k = r % (n > 0 ? n : 1);
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &allowed) || k-- > 0) continue;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
      return hm_cli_fail(NULL, "bench: --bind: sched_setaffinity(cpu %d): %s", cpu, strerror(errno));
    return 0;
  }
  return hm_cli_fail(NULL, "bench: --bind: no CPU for rank %d", r);
}

/* The rank whose process is pid (-1: none of ours). */
static int rank_of(const pid_t *pids, int n, pid_t pid) {
  for (int r = 0; r < n; r++)
    if (pids[r] == pid) return r;
  return -1;
}

/* Says how a rank ended when it did not exit with 0; returns 1 then. */
static int report_rank_end(int rank, int status) {
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  if (WIFSIGNALED(status))
    hm_cli_fail("a rank killed by a signal prints nothing itself; look for an OOM kill (dmesg) or a crash",
                "bench: rank %d was killed by signal %d (%s)", rank, WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    hm_cli_fail("rerun with HETMIX_LOG=info for details",
                "bench: rank %d exited with status %d", rank, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 1;
}

/* After a rank failed: reaps the ranks that end on their own within grace_s (they see the dead
 * peer in milliseconds) and reports each failure, then kills the rest (they cannot finish). */
static void reap_after_failure(const pid_t *pids, int started, int *left, double grace_s) {
  double end = now_s() + grace_s;
  while (*left > 0 && now_s() < end) {
    int status;
    pid_t w = waitpid(-1, &status, WNOHANG);
    if (w > 0) {
      (*left)--;
      report_rank_end(rank_of(pids, started, w), status);
    } else if (w < 0 && errno != EINTR) {
      return;
    } else {
      struct timespec ts = {0, 5 * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  for (int k = 0; k < started; k++) kill(pids[k], SIGKILL);
}

static int run_forked(const bench_opts *o, const hm_comm_config *cfg) {
  hm_unique_id id;
  hm_status st = hm_get_unique_id(&id);
  if (st != HM_OK) return hm_cli_fail_status(st, "bench: unique id", NULL);
  fflush(NULL);
  pid_t parent = getpid(), pids[256];
  int started = 0, gate[2];
  if (pipe(gate) != 0) return hm_cli_fail(NULL, "bench: pipe: %s", strerror(errno));
  for (int r = 0; r < o->ranks; r++) {
    pid_t pid = fork();
    if (pid < 0) break;
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      char title[32]; /* ps and pgrep show which rank a process is (the kernel keeps 15 chars) */
      snprintf(title, sizeof title, "hetmix-rank%d", r);
      prctl(PR_SET_NAME, title);
      if (getppid() != parent) _exit(1);
      /* Start only once all ranks exist: while ranks bootstrap, this process's store thread
       * is busy, and forking then could hand a child a held allocator lock. */
      close(gate[1]);
      char c;
      while (read(gate[0], &c, 1) < 0 && errno == EINTR) {
      }
      close(gate[0]);
      if (o->bind && bind_cpu(r) != 0) _exit(1);
      hm_comm_t comm = NULL;
      hm_status s = hm_comm_init_rank(&comm, o->ranks, &id, r, cfg);
      int rc;
      if (s != HM_OK) {
        char what[64];
        snprintf(what, sizeof what, "bench: rank %d: init", r);
        rc = hm_cli_fail_status(s, what, "check -t/--algo and HETMIX_* variables");
      } else {
        rc = bench_rank(comm, o);
        hm_status ds = rc ? hm_comm_abort(comm) : HM_OK;
        (void)ds;
        hm_comm_destroy(comm);
      }
      fflush(NULL);
      _exit(rc);
    }
    pids[started++] = pid;
  }
  close(gate[0]);
  close(gate[1]);
  int rc = started == o->ranks ? 0 : hm_cli_fail("lower --ranks", "could only start %d of %d ranks", started, o->ranks);
  double deadline = now_s() + o->timeout_s;
  int left = started, failed = 0;
  while (left > 0) {
    int status;
    pid_t w = waitpid(-1, &status, WNOHANG);
    if (w > 0) {
      left--;
      if (!failed && report_rank_end(rank_of(pids, started, w), status)) {
        failed = rc = 1; /* the ranks still running are killed: their ends are not news */
        reap_after_failure(pids, started, &left, 2.0);
      }
      continue;
    }
    if (w < 0 && errno != EINTR) break;
    if (now_s() > deadline) {
      for (int k = 0; k < started; k++) kill(pids[k], SIGKILL);
      rc = hm_cli_fail("raise --timeout or lower -e", "bench: ranks still running after %.0f s; killed", o->timeout_s);
      while (waitpid(-1, &status, 0) > 0) {
      }
      break;
    }
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return rc;
}

static int bench_comm(int argc, char **argv) {
  bench_opts o = {.kind = -1, .min_bytes = 8, .max_bytes = 64u << 20, .step_factor = 2,
                  .op = HM_SUM, .dt = HM_FLOAT32, .iters = 20, .warmup = 5, .check = 1,
                  .timeout_s = 900};
  static const char *const transports[] = {"auto", "shm", "tcp", NULL};
  const char *op_name = NULL, *dt_name = NULL, *words[1] = {NULL};
  const hm_opt table[] = {
      HM_OPT_ROW(HM_OPT_SIZE, "minbytes", 'b', &o.min_bytes, 0, (double)SIZE_MAX, "SIZE", "smallest size (bytes, K/M/G suffixes) [8]"),
      HM_OPT_ROW(HM_OPT_SIZE, "maxbytes", 'e', &o.max_bytes, 0, (double)SIZE_MAX, "SIZE", "largest size [64M]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "stepfactor", 'f', &o.step_factor, 0, 1e6, "F", "multiply the size by F each step [2]"),
      HM_OPT_ROW(HM_OPT_SIZE, "stepbytes", 'i', &o.step_bytes, 0, (double)SIZE_MAX, "SIZE", "or add SIZE each step (when -f is 0 or 1)"),
      HM_OPT_STR_ROW("op", 'o', &op_name, "OP", "sum prod min max avg all [sum]"),
      HM_OPT_STR_ROW("datatype", 'd', &dt_name, "TYPE", "i8 u8 i32 u32 i64 u64 f16 bf16 f32 f64 (or float, half, ...) all [f32]"),
      HM_OPT_ROW(HM_OPT_INT, "root", 'r', &o.root, 0, 65535, "R", "root of rooted collectives [0]"),
      HM_OPT_ROW(HM_OPT_INT, "iters", 'n', &o.iters, 1, 1e9, "N", "timed iterations per size [20]"),
      HM_OPT_ROW(HM_OPT_INT, "warmup_iters", 'w', &o.warmup, 0, 1e9, "N", "untimed iterations first [5]"),
      HM_OPT_ROW(HM_OPT_INT, "check", 'c', &o.check, 0, 1, "0|1", "verify results with exactly representable values [1]"),
      HM_OPT_ROW(HM_OPT_INT, "ranks", 0, &o.ranks, 1, 256, "N", "fork N local ranks (default: the launcher's, else 2)"),
      HM_OPT_CHOICE_ROW("transport", 't', &o.transport, transports, "[auto]"),
      HM_OPT_STR_ROW("algo", 0, &o.algo, "A", "auto ring rd tree hier [auto]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "timeout", 0, &o.timeout_s, 1e-3, 1e9, "S", "kill forked ranks after S seconds [900]"),
      HM_OPT_FLAG_ROW("bind", 0, &o.bind, "pin forked rank r to the r-th CPU this process may use (mod\n"
                      "their count), as mpirun's default binding does"),
      HM_OPT_FLAG_ROW("sync", 0, &o.sync, "a barrier before each timed call, timing each call alone from a\n"
                      "common start until its slowest rank is done, instead of back to\n"
                      "back (nccl-tests')"),
      HM_OPT_FLAG_ROW("hugepages", 0, &o.huge, "2 MiB-aligned buffers advised for transparent huge pages\n"
                      "(madvise; as a training framework's allocator does)"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "bench comm", "hetmix bench comm <op> [options]",
      "op: allreduce reduce broadcast reduce_scatter allgather alltoall gather scatter sendrecv", table,
      "size is the whole array (as nccl-tests); busbw = algbw x factor (allreduce 2(n-1)/n,\n"
      "reduce_scatter/allgather/alltoall/gather/scatter (n-1)/n, broadcast/reduce/sendrecv 1).",
      1, 0};
  hm_opt_result parsed = {(char **)words, 0, 0};
  const int prc = hm_opts_parse(&spec, argc, argv, &parsed);
  if (prc != HM_OPTS_CONTINUE) return prc;
  if (parsed.npos == 0) {
    hm_opts_help(&spec, stderr);
    return 2;
  }
  for (int k = 0; k < (int)(sizeof kind_names / sizeof kind_names[0]); k++)
    if (k != HM_COLL_BARRIER && strcmp(words[0], kind_names[k]) == 0) o.kind = k;
  if (o.kind < 0)
    return hm_cli_fail("run `hetmix bench comm --help` for the list", "unknown collective '%s'", words[0]);
  if (op_name && (o.op = parse_op(op_name)) < -1) return hm_opts_bad_value(&spec, "op", op_name, "is not a reduction");
  if (dt_name && (o.dt = parse_dtype(dt_name)) < -1)
    return hm_opts_bad_value(&spec, "datatype", dt_name, "is not a data type");
  if (o.algo && strcmp(o.algo, "auto") && hm_coll_algo_parse(o.algo) < 0)
    return hm_opts_bad_value(&spec, "algo", o.algo, "is not an algorithm (auto ring rd tree hier)");
  if (o.min_bytes > o.max_bytes)
    return hm_cli_fail("pass -b <= -e", "minbytes %zu is above maxbytes %zu", o.min_bytes, o.max_bytes);
  if (o.step_factor <= 1 && o.step_bytes == 0) o.step_factor = 2;
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = o.transport;
  cfg.algorithm = o.algo;
  hm_launch_env env;
  if (o.ranks == 0 && hm_launch_env_read(&env) == HM_OK && env.size >= 1) {
    hm_comm_t comm = NULL;
    hm_status st = hm_comm_init_env(&comm, &cfg);
    if (st != HM_OK)
      return hm_cli_fail_status(st, "bench: init from the launcher's environment",
                                "set HETMIX_STORE_ADDR (rank 0's host:port) and HETMIX_SECRET");
    int rc = bench_rank(comm, &o);
    if (rc) hm_comm_abort(comm);
    hm_comm_destroy(comm);
    return rc;
  }
  if (o.ranks == 0) o.ranks = 2;
  return run_forked(&o, &cfg);
}

int hm_cmd_bench(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fprintf(argc < 2 ? stderr : stdout, "usage: hetmix bench comm <op> [options]   (see `hetmix bench comm --help`)\n");
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "comm") == 0) return bench_comm(argc - 1, argv + 1);
  return hm_cli_fail("the benchmarks are: comm", "unknown benchmark '%s'", argv[1]);
}
