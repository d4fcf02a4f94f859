/* Correctness matrix of hmcomm: every collective x dtype x op x in/out-of-place x count on
 * 1..8 forked ranks (oversubscribed), with exactly representable values so results compare
 * exactly. Also point-to-point (blocking, grouped, nonblocking), nonblocking collectives and
 * split. Transport and algorithm come from the environment (HETMIX_TRANSPORT, HETMIX_ALGO),
 * so CTest runs this one program several times, forced each way; --expect-algo makes every rank
 * check that each of its allreduces ran that algorithm (the communicator counts them).
 *   test_comm_matrix --ranks 1,2,3,4,8 --counts 0,1,7,1023,1000003 [--big-subset N]
 *                    [--expect-algo ring|rd|tree|hier] [--devices SPECS[/SPECS...]] [--device-big]
 *                    [--pools P]
 * --pools P puts the ranks in P pools (HETMIX_POOL, rank blocks in order), so the hierarchical
 * allreduce runs where the pools come out equal.
 * Device mode (--devices): each SPECS is a '+'-separated list of device specs given to the ranks
 * in turn (rank r opens item r % len, e.g. "opencl:threads=1+cpu:threads=1"), registers it with
 * hm_comm_register_device and holds every buffer on it: inputs reach the device through
 * hm_device_copy_h2d, results come back through hm_device_copy_d2h and are checked on the host.
 * Collectives and blocking send/recv run (nonblocking collectives other than allreduce and
 * blocking calls in groups on a non-host device are checked to be refused); --device-big runs
 * only allreduce on f32 and i32 (every op), for the large count. Exit 77 when a spec's backend is not available.
 * Values: reductions use small integers (sum/min/max/avg), {1,-1,2} with few 2s (prod), plus on
 * wide types a slowly varying part shared by all ranks so that misplaced blocks are caught;
 * avg follows NCCL (integers truncate; floats are exact when nranks is a power of two, else
 * within a few ulps since NCCL pre-multiplies by 1/nranks). Not a speed test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "comm/comm_internal.h"
#include "hm_ranks.h"
#include "hm_values.h"
#include "hetmix/cost.h"
#include "hetmix/device.h"

#define MAX_COUNTS 16
static int g_ranks[8], g_nranks_list;
static size_t g_counts[MAX_COUNTS];
static int g_ncounts;
/* Counts at or above this run the subset described in rank_matrix (0 = everything). */
static size_t g_big_subset;
static double g_timeout = 110;
static int g_expect_algo = -1; /* hm_coll_algo every allreduce must run, -1: any */
static int g_pools;            /* --pools: HETMIX_POOL of rank r is pool<r * P / n> */
static int g_verbose; /* HM_MATRIX_VERBOSE=1: rank 0 prints each case as it starts (stderr) */
/* Device mode: patterns of specs ('/'-separated), each a comma list given to the ranks in turn. */
#define MAX_PATTERNS 8
static char g_patterns[MAX_PATTERNS][256];
static int g_npatterns, g_cur_pattern;
static int g_device_big;



typedef struct mstate {
  int n, r;
  int fails, cases;
  hm_rank_ctx *ctx;
  /* device mode: the rank's device and its copies of the host buffers a and b */
  hm_device *dev;
  unsigned char *a, *b;
  char *da, *db;
  size_t cap;       /* bytes of each buffer */
  hm_status dev_st; /* a failed copy of the case in progress */
} mstate;

/* ---- device mode: buffers live on the rank's device ---- */
/* The device address that host pointer p (inside a or b, or NULL) stands for. */
static void *dv(mstate *m, const void *p) {
  const unsigned char *q = p;
  if (!m->dev || !p) return (void *)p;
  if (q >= m->a && q < m->a + m->cap) return m->da + (q - m->a);
  if (q >= m->b && q < m->b + m->cap) return m->db + (q - m->b);
  return (void *)p;
}
/* Before a call: the first span bytes of a and b go to the device. Returns 0 (for a comma). */
static int dev_pre(mstate *m, size_t span) {
  m->dev_st = HM_OK;
  if (!m->dev || !span) return 0;
  m->dev_st = hm_device_copy_h2d(m->dev, m->da, m->a, span);
  if (m->dev_st == HM_OK) m->dev_st = hm_device_copy_h2d(m->dev, m->db, m->b, span);
  return 0;
}
/* After a call: the results come back into a and b; a failed copy fails the case. */
static hm_status dev_post(mstate *m, size_t span, hm_status st) {
  if (st != HM_OK) return st;
  if (m->dev_st != HM_OK) return m->dev_st;
  if (!m->dev || !span) return HM_OK;
  st = hm_device_copy_d2h(m->dev, m->a, m->da, span);
  if (st == HM_OK) st = hm_device_copy_d2h(m->dev, m->b, m->db, span);
  return st;
}
#define DV(p) dv(m, (p))
#define PRE (dev_pre(m, span))

static int mfail(mstate *m, const char *fmt, ...) {
  m->fails++;
  if (m->fails <= 6) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    hm_rank_fail(m->ctx, "%s", buf);
  }
  return 1;
}

static const char *kind_name(hm_coll_kind k) {
  static const char *names[] = {"allreduce", "reduce", "broadcast", "reduce_scatter",
                                "allgather", "alltoall", "gather", "scatter", "barrier"};
  return names[k];
}

/* ---- values ---- */
static int is_wide(hm_dtype dt) {
  return dt == HM_INT32 || dt == HM_UINT32 || dt == HM_INT64 || dt == HM_UINT64 ||
         dt == HM_FLOAT32 || dt == HM_FLOAT64;
}
static double red_lo(hm_redop op, hm_dtype dt, int r, size_t j) {
  if (op == HM_PROD) {
    int k = (int)((j + (size_t)r) % 4);
    if (k == 0) return 2;
    if (k == 1 && hm_tv_is_signed(dt)) return -1;
    return 1;
  }
  int v = (int)((j * 5 + (size_t)r * 3) % 16);
  return hm_tv_is_signed(dt) ? v - 8 : v;
}
static double red_hi(hm_redop op, hm_dtype dt, size_t g) {
  return (op != HM_PROD && is_wide(dt)) ? 16.0 * (double)((g >> 4) % 1024) : 0.0;
}
static double red_in(hm_redop op, hm_dtype dt, int r, size_t g) {
  return red_lo(op, dt, r, g & 15) + red_hi(op, dt, g);
}

typedef struct red_table {
  double sum[16], mn[16], mx[16], prod[16];
} red_table;
static void red_table_make(red_table *t, hm_redop op, hm_dtype dt, int n) {
  for (int j = 0; j < 16; j++) {
    double s = 0, mn = 1e300, mx = -1e300, p = 1;
    for (int r = 0; r < n; r++) {
      double v = red_lo(op, dt, r, (size_t)j);
      s += v, p *= v;
      if (v < mn) mn = v;
      if (v > mx) mx = v;
    }
    t->sum[j] = s, t->mn[j] = mn, t->mx[j] = mx, t->prod[j] = p;
  }
}
static int pow2(int n) { return (n & (n - 1)) == 0; }

/* Expected value of element g and the tolerance (0 = exact). */
static double red_expect(const red_table *t, hm_redop op, hm_dtype dt, int n, size_t g, double *tol) {
  size_t j = g & 15;
  double h = red_hi(op, dt, g);
  *tol = 0;
  switch (op) {
    case HM_SUM: return t->sum[j] + n * h;
    case HM_PROD: return t->prod[j];
    case HM_MIN: return t->mn[j] + h;
    case HM_MAX: return t->mx[j] + h;
    case HM_AVG: {
      double s = t->sum[j] + n * h;
      if (!hm_tv_is_float(dt)) return (double)((long long)s / (long long)n);
      double e = s / n;
      if (!pow2(n)) {
        /* the sum is exact (small integers); one division in float and the rounding to the
         * dtype give at most 1/2 ulp + 1/2 ulp of e. 4 ulps of max(|e|, 8) also covers NCCL's
         * way, each rank's value times a rounded 1/n (n <= 8 terms of magnitude <= 8, one
         * rounding each, summed): the tolerance any of these implementations meets. */
        double a = fabs(e) > 8 ? fabs(e) : 8;
        int ex;
        frexp(a, &ex);
        *tol = 4 * ldexp(1.0, ex - hm_tv_mant_bits(dt));
        return e;
      }
      return hm_tv_round(dt, e);
    }
    default: return NAN;
  }
}

static double mov_val(hm_dtype dt, int r, int p, size_t g) {
  int v = (int)(((size_t)r * 131 + (size_t)p * 17 + g * 7) % 97);
  double base = hm_tv_is_signed(dt) ? v - 48 : v;
  return base + (is_wide(dt) ? 128.0 * (double)((g >> 7) % 4096) : 0.0);
}

static int check_elem(mstate *m, const char *what, const void *buf, hm_dtype dt, size_t i,
                      double want, double tol) {
  double got = hm_tv_get(buf, dt, i);
  if (tol == 0 ? got == want : fabs(got - want) <= tol) return 0;
  return mfail(m, "%s: element %zu is %.17g, expected %.17g", what, i, got, want);
}

/* ---- reductions: allreduce, reduce, reduce_scatter ---- */
static void run_reduction(mstate *m, hm_comm_t comm, hm_coll_kind kind, hm_dtype dt, hm_redop op,
                          int inplace, size_t count, int root, unsigned char *a, unsigned char *b) {
  int n = m->n, r = m->r;
  size_t es = hm_dtype_size(dt);
  char what[160];
  snprintf(what, sizeof what, "%s %s %s %s count %zu root %d n %d", kind_name(kind),
           hm_dtype_name(dt), hm_redop_name(op), inplace ? "in-place" : "out-of-place", count,
           root, n);
  size_t send_elems = kind == HM_COLL_REDUCE_SCATTER ? (size_t)n * count : count;
  for (size_t g = 0; g < send_elems; g++) hm_tv_set(a, dt, g, red_in(op, dt, r, g));
  void *send = a, *recv = b;
  if (inplace) {
    recv = kind == HM_COLL_REDUCE_SCATTER ? a + (size_t)r * count * es : a;
  } else {
    memset(b, 0xA5, count * es);
  }
  if (g_verbose && r == 0) fprintf(stderr, "%.3f %s\n", hm_tv_now(), what);
  hm_status st;
  size_t span = (size_t)n * count * es;
  if (kind == HM_COLL_ALLREDUCE)
    st = (PRE, hm_comm_allreduce(comm, DV(send), DV(recv), count, dt, op));
  else if (kind == HM_COLL_REDUCE)
    st = (PRE, hm_comm_reduce(comm, DV(send), DV(recv), count, dt, op, root));
  else
    st = (PRE, hm_comm_reduce_scatter(comm, DV(send), DV(recv), count, dt, op));
  st = dev_post(m, span, st);
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    return;
  }
  if (kind == HM_COLL_REDUCE && r != root) return;
  red_table t;
  red_table_make(&t, op, dt, n);
  size_t base = kind == HM_COLL_REDUCE_SCATTER ? (size_t)r * count : 0;
  for (size_t i = 0; i < count; i++) {
    double tol, want = red_expect(&t, op, dt, n, base + i, &tol);
    if (check_elem(m, what, recv, dt, i, want, tol)) return;
  }
  /* Out of place, the send buffer must be left as it was. */
  if (!inplace)
    for (size_t g = 0; g < send_elems; g++)
      if (check_elem(m, "send buffer modified", a, dt, g, red_in(op, dt, r, g), 0)) return;
}

/* ---- data movement: broadcast, allgather, alltoall, gather, scatter ---- */
static void run_movement(mstate *m, hm_comm_t comm, hm_coll_kind kind, hm_dtype dt, int inplace,
                         size_t count, int root, unsigned char *a, unsigned char *b) {
  int n = m->n, r = m->r;
  size_t es = hm_dtype_size(dt), all = (size_t)n * count;
  char what[160];
  snprintf(what, sizeof what, "%s %s %s count %zu root %d n %d", kind_name(kind),
           hm_dtype_name(dt), inplace ? "in-place" : "out-of-place", count, root, n);
  void *send = a, *recv = b;
  hm_status st = HM_OK;
  size_t span = all * es;
  if (g_verbose && r == 0) fprintf(stderr, "%.3f %s\n", hm_tv_now(), what);
  switch (kind) {
    case HM_COLL_BROADCAST:
      if (r == root)
        for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, i, mov_val(dt, root, 0, i));
      if (inplace) {
        recv = a;
        if (r != root) memset(a, 0xA5, count * es);
      } else {
        memset(b, 0xA5, count * es);
      }
      st = (PRE, hm_comm_broadcast(comm, DV(send), DV(recv), count, dt, root));
      break;
    case HM_COLL_ALLGATHER:
      if (inplace) {
        memset(b, 0xA5, all * es);
        send = b + (size_t)r * count * es;
      } else {
        memset(b, 0xA5, all * es);
      }
      for (size_t i = 0; i < count; i++) hm_tv_set(send, dt, i, mov_val(dt, r, 0, i));
      st = (PRE, hm_comm_allgather(comm, DV(send), DV(recv), count, dt));
      break;
    case HM_COLL_ALLTOALL:
      for (int p = 0; p < n; p++)
        for (size_t i = 0; i < count; i++)
          hm_tv_set(a, dt, (size_t)p * count + i, mov_val(dt, r, p, i));
      if (inplace)
        recv = a;
      else
        memset(b, 0xA5, all * es);
      st = (PRE, hm_comm_alltoall(comm, DV(send), DV(recv), count, dt));
      break;
    case HM_COLL_GATHER:
      if (r == root) memset(b, 0xA5, all * es);
      if (inplace && r == root) send = b + (size_t)root * count * es;
      for (size_t i = 0; i < count; i++) hm_tv_set(send, dt, i, mov_val(dt, r, 0, i));
      st = (PRE, hm_comm_gather(comm, DV(send), DV(recv), count, dt, root));
      break;
    case HM_COLL_SCATTER:
      if (r == root)
        for (int p = 0; p < n; p++)
          for (size_t i = 0; i < count; i++)
            hm_tv_set(a, dt, (size_t)p * count + i, mov_val(dt, root, p, i));
      if (inplace && r == root)
        recv = a + (size_t)root * count * es;
      else
        memset(b, 0xA5, count * es);
      st = (PRE, hm_comm_scatter(comm, DV(send), DV(recv), count, dt, root));
      break;
    default:
      break;
  }
  st = dev_post(m, span, st);
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    return;
  }
  switch (kind) {
    case HM_COLL_BROADCAST:
      for (size_t i = 0; i < count; i++)
        if (check_elem(m, what, recv, dt, i, mov_val(dt, root, 0, i), 0)) return;
      break;
    case HM_COLL_ALLGATHER:
      for (int q = 0; q < n; q++)
        for (size_t i = 0; i < count; i++)
          if (check_elem(m, what, recv, dt, (size_t)q * count + i, mov_val(dt, q, 0, i), 0)) return;
      break;
    case HM_COLL_ALLTOALL:
      for (int q = 0; q < n; q++)
        for (size_t i = 0; i < count; i++)
          if (check_elem(m, what, recv, dt, (size_t)q * count + i, mov_val(dt, q, r, i), 0)) return;
      break;
    case HM_COLL_GATHER:
      if (r == root)
        for (int q = 0; q < n; q++)
          for (size_t i = 0; i < count; i++)
            if (check_elem(m, what, recv, dt, (size_t)q * count + i, mov_val(dt, q, 0, i), 0))
              return;
      break;
    case HM_COLL_SCATTER:
      for (size_t i = 0; i < count; i++)
        if (check_elem(m, what, recv, dt, i, mov_val(dt, root, r, i), 0)) return;
      break;
    default:
      break;
  }
}

/* ---- point to point ---- */
/* Blocking send/recv of buf (inside a or b) through the device in device mode. */
static hm_status m_send(mstate *m, hm_comm_t comm, unsigned char *buf, size_t count, hm_dtype dt, int peer) {
  size_t span = (size_t)(buf - m->a) + count * hm_dtype_size(dt);
  hm_status st = (PRE, hm_comm_send(comm, DV(buf), count, dt, peer));
  return st == HM_OK ? m->dev_st : st;
}
static hm_status m_recv(mstate *m, hm_comm_t comm, unsigned char *buf, size_t count, hm_dtype dt, int peer) {
  size_t span = (size_t)(buf - m->b) + count * hm_dtype_size(dt);
  hm_status st = (PRE, hm_comm_recv(comm, DV(buf), count, dt, peer));
  return dev_post(m, span, st);
}

/* A non-host device refuses nonblocking collectives other than allreduce and blocking calls in
 * groups, naming why (isend, irecv and iallreduce: test_comm_device_async). */
static void run_device_refusals(mstate *m, hm_comm_t comm) {
  if (!m->dev || hm_device_is_host(m->dev) || m->n < 2) return;
  hm_request_t q = NULL;
  m->cases++;
  hm_status st = hm_comm_iallgather(comm, m->da, m->db, 1, HM_FLOAT32, &q);
  if (st != HM_ERR_UNSUPPORTED || q) mfail(m, "iallgather on device buffers: %s, expected unsupported", hm_status_name(st));
  int peer = (m->r + 1) % m->n;
  hm_group_start();
  st = hm_comm_send(comm, m->da, 1, HM_FLOAT32, peer);
  hm_status st2 = hm_group_end();
  m->cases++;
  if (st != HM_ERR_UNSUPPORTED || st2 != HM_OK)
    mfail(m, "grouped send on device buffers: %s/%s, expected unsupported", hm_status_name(st), hm_status_name(st2));
}

static void run_p2p(mstate *m, hm_comm_t comm, hm_dtype dt, size_t count, unsigned char *a,
                    unsigned char *b) {
  int n = m->n, r = m->r;
  size_t es = hm_dtype_size(dt);
  char what[160];
  hm_status st;
  /* 1. ring in a group: everyone sends right and receives from the left at once. */
  int right = (r + 1) % n, left = (r + n - 1) % n;
  if (m->dev) goto blocking; /* device buffers: blocking calls only */
  snprintf(what, sizeof what, "grouped ring send/recv %s count %zu n %d", hm_dtype_name(dt), count, n);
  for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, i, mov_val(dt, r, right, i));
  memset(b, 0xA5, count * es);
  st = hm_group_start();
  if (st == HM_OK) st = hm_comm_send(comm, a, count, dt, right);
  if (st == HM_OK) st = hm_comm_recv(comm, b, count, dt, left);
  hm_status st2 = hm_group_end();
  if (st == HM_OK) st = st2;
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    return;
  }
  for (size_t i = 0; i < count; i++)
    if (check_elem(m, what, b, dt, i, mov_val(dt, left, r, i), 0)) return;

  /* 2. all pairs (self included) in one group: receives posted before sends on purpose. */
  snprintf(what, sizeof what, "grouped all-pairs send/recv %s count %zu n %d", hm_dtype_name(dt), count, n);
  for (int p = 0; p < n; p++)
    for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, (size_t)p * count + i, mov_val(dt, r, p, i));
  memset(b, 0xA5, (size_t)n * count * es);
  st = hm_group_start();
  for (int p = 0; p < n && st == HM_OK; p++)
    st = hm_comm_recv(comm, b + (size_t)p * count * es, count, dt, p);
  for (int p = 0; p < n && st == HM_OK; p++)
    st = hm_comm_send(comm, a + (size_t)p * count * es, count, dt, p);
  st2 = hm_group_end();
  if (st == HM_OK) st = st2;
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    return;
  }
  for (int p = 0; p < n; p++)
    for (size_t i = 0; i < count; i++)
      if (check_elem(m, what, b, dt, (size_t)p * count + i, mov_val(dt, p, r, i), 0)) return;

blocking:
  /* 3. blocking: rank 0 sends to each rank in turn, then each rank answers rank 0. */
  if (n >= 2) {
    snprintf(what, sizeof what, "blocking send/recv %s count %zu n %d", hm_dtype_name(dt), count, n);
    st = HM_OK;
    if (r == 0) {
      for (int p = 1; p < n && st == HM_OK; p++) {
        for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, i, mov_val(dt, 0, p, i));
        st = m_send(m, comm, a, count, dt, p);
      }
      for (int p = 1; p < n && st == HM_OK; p++) {
        memset(b, 0xA5, count * es);
        st = m_recv(m, comm, b, count, dt, p);
        for (size_t i = 0; st == HM_OK && i < count; i++)
          if (check_elem(m, what, b, dt, i, mov_val(dt, p, 0, i), 0)) return;
      }
    } else {
      memset(b, 0xA5, count * es);
      st = m_recv(m, comm, b, count, dt, 0);
      for (size_t i = 0; st == HM_OK && i < count; i++)
        if (check_elem(m, what, b, dt, i, mov_val(dt, 0, r, i), 0)) return;
      for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, i, mov_val(dt, r, 0, i));
      if (st == HM_OK) st = m_send(m, comm, a, count, dt, 0);
    }
    m->cases++;
    if (st != HM_OK) {
      mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
      return;
    }
  }
  if (m->dev) return;

  /* 4. nonblocking ring: isend/irecv, then wait (receive first). */
  snprintf(what, sizeof what, "isend/irecv ring %s count %zu n %d", hm_dtype_name(dt), count, n);
  for (size_t i = 0; i < count; i++) hm_tv_set(a, dt, i, mov_val(dt, r, right, i));
  memset(b, 0xA5, count * es);
  hm_request_t rs = NULL, rr = NULL;
  st = hm_comm_isend(comm, a, count, dt, right, &rs);
  if (st == HM_OK) st = hm_comm_irecv(comm, b, count, dt, left, &rr);
  if (rr) {
    st2 = hm_request_wait(rr);
    if (st == HM_OK) st = st2;
  }
  if (rs) {
    st2 = hm_request_wait(rs);
    if (st == HM_OK) st = st2;
  }
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    return;
  }
  for (size_t i = 0; i < count; i++)
    if (check_elem(m, what, b, dt, i, mov_val(dt, left, r, i), 0)) return;
}

/* ---- nonblocking collectives, issued together and completed out of order ---- */
static void run_nonblocking(mstate *m, hm_comm_t comm, size_t count) {
  int n = m->n, r = m->r;
  char what[128];
  snprintf(what, sizeof what, "nonblocking collectives count %zu n %d", count, n);
  size_t c1 = count ? count : 1;
  float *ar_in = calloc(c1, 4), *ar_out = calloc(c1, 4);
  int32_t *rs_in = calloc((size_t)n * c1, 4), *rs_out = calloc(c1, 4);
  uint16_t *ag_in = calloc(c1, 2), *ag_out = calloc((size_t)n * c1, 2);
  uint8_t *bc = calloc(c1, 1);
  if (!ar_in || !ar_out || !rs_in || !rs_out || !ag_in || !ag_out || !bc) {
    mfail(m, "%s: out of memory", what);
    goto out;
  }
  for (size_t i = 0; i < count; i++) {
    ar_in[i] = (float)red_in(HM_SUM, HM_FLOAT32, r, i);
    ag_in[i] = hm_tv_to_bf16((float)mov_val(HM_BFLOAT16, r, 0, i));
    bc[i] = r == 0 ? (uint8_t)mov_val(HM_UINT8, 0, 1, i) : 0;
  }
  for (size_t g = 0; g < (size_t)n * count; g++) rs_in[g] = (int32_t)red_in(HM_MAX, HM_INT32, r, g);
  hm_request_t q[4] = {0};
  hm_status st = hm_comm_iallreduce(comm, ar_in, ar_out, count, HM_FLOAT32, HM_SUM, &q[0]);
  if (st == HM_OK) st = hm_comm_ireduce_scatter(comm, rs_in, rs_out, count, HM_INT32, HM_MAX, &q[1]);
  if (st == HM_OK) st = hm_comm_iallgather(comm, ag_in, ag_out, count, HM_BFLOAT16, &q[2]);
  if (st == HM_OK) st = hm_comm_ibroadcast(comm, bc, bc, count, HM_UINT8, 0, &q[3]);
  /* Poll the last one with test, then wait the rest newest first. */
  if (q[3]) {
    int done = 0;
    for (int spins = 0; !done && spins < 2000000; spins++) {
      hm_status ts = hm_request_test(q[3], &done);
      if (ts != HM_OK) {
        if (st == HM_OK) st = ts;
        done = 1;
      }
    }
    if (!done) {
      hm_status ws = hm_request_wait(q[3]);
      if (st == HM_OK) st = ws;
    }
  }
  for (int k = 2; k >= 0; k--)
    if (q[k]) {
      hm_status ws = hm_request_wait(q[k]);
      if (st == HM_OK) st = ws;
    }
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "%s: %s: %s", what, hm_status_name(st), hm_last_error());
    goto out;
  }
  red_table ts, tm;
  red_table_make(&ts, HM_SUM, HM_FLOAT32, n);
  red_table_make(&tm, HM_MAX, HM_INT32, n);
  for (size_t i = 0; i < count; i++) {
    double tol;
    if (check_elem(m, "iallreduce f32 sum", ar_out, HM_FLOAT32, i,
                   red_expect(&ts, HM_SUM, HM_FLOAT32, n, i, &tol), 0)) break;
    if (check_elem(m, "ireduce_scatter i32 max", rs_out, HM_INT32, i,
                   red_expect(&tm, HM_MAX, HM_INT32, n, (size_t)r * count + i, &tol), 0)) break;
    if (check_elem(m, "ibroadcast u8 in-place", bc, HM_UINT8, i, mov_val(HM_UINT8, 0, 1, i), 0)) break;
    for (int p = 0; p < n; p++)
      if (check_elem(m, "iallgather bf16", ag_out, HM_BFLOAT16, (size_t)p * count + i,
                     mov_val(HM_BFLOAT16, p, 0, i), 0)) break;
  }
out:
  free(ar_in), free(ar_out), free(rs_in), free(rs_out), free(ag_in), free(ag_out), free(bc);
}

/* ---- split ---- */
static void run_split(mstate *m, hm_comm_t comm) {
  int n = m->n, r = m->r;
  /* Colors by parity, keys reversed; with 3+ ranks the last rank opts out. */
  int out_rank = n >= 3 ? n - 1 : -1;
  int color = r == out_rank ? HM_SPLIT_NOCOLOR : r % 2;
  hm_comm_t sub = NULL;
  hm_status st = hm_comm_split(comm, color, n - r, &sub, NULL);
  m->cases++;
  if (st != HM_OK) {
    mfail(m, "split n %d: %s: %s", n, hm_status_name(st), hm_last_error());
    return;
  }
  if (color == HM_SPLIT_NOCOLOR) {
    if (sub) mfail(m, "split: NOCOLOR rank got a communicator");
    return;
  }
  if (!sub) {
    mfail(m, "split n %d color %d: no communicator", n, color);
    return;
  }
  int members = 0, my_new = 0;
  for (int q = n - 1; q >= 0; q--) /* key n-q ascending = old rank descending */
    if (q != out_rank && q % 2 == color) {
      if (q == r) my_new = members;
      members++;
    }
  if (hm_comm_size(sub) != members || hm_comm_rank(sub) != my_new)
    mfail(m, "split n %d color %d: rank %d of %d, expected %d of %d", n, color, hm_comm_rank(sub),
         hm_comm_size(sub), my_new, members);
  int64_t v = r, sum = -1, want = 0;
  for (int q = 0; q < n; q++)
    if (q != out_rank && q % 2 == color) want += q;
  st = hm_comm_allreduce(sub, &v, &sum, 1, HM_INT64, HM_SUM);
  if (st != HM_OK)
    mfail(m, "split allreduce: %s: %s", hm_status_name(st), hm_last_error());
  else if (sum != want)
    mfail(m, "split allreduce: sum %lld, expected %lld", (long long)sum, (long long)want);
  st = hm_comm_destroy(sub);
  if (st != HM_OK) mfail(m, "split destroy: %s: %s", hm_status_name(st), hm_last_error());
}

/* Every allreduce of more than one rank ran the algorithm HETMIX_ALGO forced, and some did. */
static void check_algorithm(mstate *m, hm_comm_t comm) {
  if (g_expect_algo < 0 || m->n < 2) return;
  m->cases++;
  for (int a = 0; a < HM_ALGO_COUNT; a++) {
    uint64_t runs = hm_coll_allreduce_runs(comm, (hm_coll_algo)a);
    if (a == g_expect_algo && runs == 0)
      mfail(m, "no allreduce ran %s, the forced algorithm", hm_coll_algo_name((hm_coll_algo)a));
    if (a != g_expect_algo && runs)
      mfail(m, "%llu allreduces ran %s, not the forced %s", (unsigned long long)runs,
            hm_coll_algo_name((hm_coll_algo)a), hm_coll_algo_name((hm_coll_algo)g_expect_algo));
  }
}

/* The spec rank r of the current pattern opens: item r % len of its '+'-separated list. */
static void pattern_spec(int pattern, int r, char *out, size_t cap) {
  const char *items[8];
  size_t lens[8];
  int n = 0;
  for (const char *p = g_patterns[pattern]; n < 8;) {
    const char *e = strchr(p, '+');
    items[n] = p;
    lens[n++] = e ? (size_t)(e - p) : strlen(p);
    if (!e) break;
    p = e + 1;
  }
  int k = r % n;
  snprintf(out, cap, "%.*s", (int)lens[k], items[k]);
}

static int device_setup(mstate *m, size_t bytes) {
  char spec[128];
  pattern_spec(g_cur_pattern, m->r, spec, sizeof spec);
  hm_status st = hm_device_open(spec, &m->dev);
  if (st == HM_OK) st = hm_device_alloc(m->dev, (void **)&m->da, bytes, "matrix buffer a");
  if (st == HM_OK) st = hm_device_alloc(m->dev, (void **)&m->db, bytes, "matrix buffer b");
  if (st == HM_OK) st = hm_comm_register_device(m->ctx->comm, m->dev);
  if (st != HM_OK) return hm_rank_fail(m->ctx, "device %s: %s: %s", spec, hm_status_name(st), hm_last_error());
  return 0;
}

static void device_teardown(mstate *m) {
  if (!m->dev) return;
  hm_status st = hm_comm_register_device(m->ctx->comm, NULL);
  if (st != HM_OK) mfail(m, "unregistering the device: %s", hm_last_error());
  hm_device_free(m->dev, m->da);
  hm_device_free(m->dev, m->db);
  hm_device_close(m->dev);
  m->dev = NULL;
}

static int rank_matrix(hm_rank_ctx *ctx) {
  mstate m = {.n = ctx->nranks, .r = ctx->rank, .ctx = ctx};
  hm_comm_t comm = ctx->comm;
  if (hm_comm_size(comm) != m.n || hm_comm_rank(comm) != m.r)
    return hm_rank_fail(ctx, "rank/size %d/%d, expected %d/%d", hm_comm_rank(comm),
                        hm_comm_size(comm), m.r, m.n);
  size_t maxc = 0;
  for (int k = 0; k < g_ncounts; k++)
    if (g_counts[k] > maxc) maxc = g_counts[k];
  size_t bytes = (size_t)m.n * (maxc ? maxc : 1) * 8;
  unsigned char *a = malloc(bytes), *b = malloc(bytes);
  if (!a || !b) {
    free(a), free(b);
    return hm_rank_fail(ctx, "cannot allocate 2 x %zu bytes", bytes);
  }
  if (g_npatterns && device_setup(&m, bytes) != 0) {
    free(a), free(b);
    device_teardown(&m);
    return 1;
  }
  m.a = a, m.b = b, m.cap = bytes;
  run_device_refusals(&m, comm);
  static const hm_coll_kind reds[] = {HM_COLL_ALLREDUCE, HM_COLL_REDUCE, HM_COLL_REDUCE_SCATTER};
  static const hm_coll_kind movs[] = {HM_COLL_BROADCAST, HM_COLL_ALLGATHER, HM_COLL_ALLTOALL,
                                      HM_COLL_GATHER, HM_COLL_SCATTER};
  for (int k = 0; k < g_ncounts; k++) {
    size_t count = g_counts[k];
    int big = g_big_subset && count >= g_big_subset;
    for (int d = 0; d < HM_DTYPE_COUNT; d++) {
      hm_dtype dt = (hm_dtype)d;
      if (g_device_big) { /* device mode, large count: allreduce on f32 and i32, every op */
        if (dt != HM_FLOAT32 && dt != HM_INT32) continue;
        for (int o = 0; o < HM_REDOP_COUNT; o++)
          for (int ip = 0; ip < 2; ip++)
            run_reduction(&m, comm, HM_COLL_ALLREDUCE, dt, (hm_redop)o, ip, count, 0, a, b);
        continue;
      }
      /* Big counts: every dtype sums; every op on f32 (and on bf16/i8 for allreduce); data
       * movement once per element width, since it never looks at the values' type. */
      int width_rep = dt == HM_INT8 || dt == HM_BFLOAT16 || dt == HM_FLOAT32 || dt == HM_FLOAT64;
      for (size_t c = 0; c < sizeof reds / sizeof reds[0]; c++)
        for (int o = 0; o < HM_REDOP_COUNT; o++) {
          if (big && o != HM_SUM && dt != HM_FLOAT32 &&
              !(reds[c] == HM_COLL_ALLREDUCE && (dt == HM_INT8 || dt == HM_BFLOAT16)))
            continue;
          for (int ip = 0; ip < 2; ip++)
            run_reduction(&m, comm, reds[c], dt, (hm_redop)o, ip, count,
                          (d * 5 + o + k) % m.n, a, b);
        }
      for (size_t c = 0; c < sizeof movs / sizeof movs[0] && (!big || width_rep); c++)
        for (int ip = 0; ip < 2; ip++)
          run_movement(&m, comm, movs[c], dt, ip, count, (d * 3 + (int)c + k) % m.n, a, b);
      if (!big || dt == HM_INT8 || dt == HM_FLOAT64) run_p2p(&m, comm, dt, count, a, b);
    }
    if (!m.dev) run_nonblocking(&m, comm, count);
    hm_status st = hm_comm_barrier(comm);
    m.cases++;
    if (st != HM_OK) mfail(&m, "barrier: %s: %s", hm_status_name(st), hm_last_error());
    if (m.fails > 50) break; /* enough to diagnose; the rest would only repeat it */
  }
  check_algorithm(&m, comm);
  device_teardown(&m);
  run_split(&m, comm);
  free(a), free(b);
  ctx->value = m.cases;
  if (m.fails) hm_rank_fail(ctx, "%d of %d cases failed", m.fails, m.cases);
  return m.fails != 0;
}

/* Whether spec opens, tried in a child so that this process never initialises OpenCL before it
 * forks the ranks. */
static int device_available(const char *spec) {
  pid_t pid = fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    hm_device *dev = NULL;
    int ok = hm_device_open(spec, &dev) == HM_OK;
    hm_device_close(dev);
    _exit(ok ? 0 : 1);
  }
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

static void pool_env(int rank, int nranks, void *arg) {
  (void)arg;
  char name[32];
  snprintf(name, sizeof name, "pool%d", rank * g_pools / nranks);
  setenv("HETMIX_POOL", name, 1);
}

static void test_matrix(void **state) {
  (void)state;
  int total_failed = 0;
  for (int pat = 0; pat < (g_npatterns ? g_npatterns : 1); pat++)
  for (int k = 0; k < g_nranks_list; k++) {
    g_cur_pattern = pat;
    if (g_npatterns) printf("# devices %s\n", g_patterns[pat]);
    hm_ranks_opts o = {.nranks = g_ranks[k], .timeout_s = g_timeout};
    if (g_pools) o.env_setup = pool_env;
    hm_rank_result res[HM_RANKS_MAX];
    static char diag[16384];
    int failed = hm_ranks_run(&o, rank_matrix, NULL, res, diag, sizeof diag);
    if (failed < 0) fail_msg("harness: %s", hm_last_error());
    printf("# %d ranks: %.0f cases per rank, %d rank(s) failed\n", g_ranks[k], res[0].value, failed);
    if (failed) {
      printf("%s", diag);
      total_failed += failed;
    }
    fflush(stdout);
  }
  assert_int_equal(total_failed, 0);
}

static int parse_list(const char *s, size_t *out, int cap) {
  int n = 0;
  while (*s && n < cap) {
    char *end;
    out[n++] = strtoull(s, &end, 10);
    if (end == s) return -1;
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

int main(int argc, char **argv) {
  size_t ranks[8];
  g_nranks_list = parse_list("1,2,3,4,8", ranks, 8);
  g_ncounts = parse_list("0,1,7,1023", g_counts, MAX_COUNTS);
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 == argc && strcmp(argv[i], "--device-big") != 0) {
      fprintf(stderr, "option %s needs a value\n", argv[i]);
      return 2;
    }
    if (strcmp(argv[i], "--ranks") == 0)
      g_nranks_list = parse_list(argv[i + 1], ranks, 8);
    else if (strcmp(argv[i], "--counts") == 0)
      g_ncounts = parse_list(argv[i + 1], g_counts, MAX_COUNTS);
    else if (strcmp(argv[i], "--big-subset") == 0)
      g_big_subset = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--devices") == 0) {
      char list[sizeof g_patterns];
      snprintf(list, sizeof list, "%s", argv[i + 1]);
      for (char *save = NULL, *t = strtok_r(list, "/", &save); t && g_npatterns < MAX_PATTERNS;
           t = strtok_r(NULL, "/", &save))
        snprintf(g_patterns[g_npatterns++], sizeof g_patterns[0], "%s", t);
    } else if (strcmp(argv[i], "--device-big") == 0) {
      g_device_big = 1;
      i--; /* a flag: no value */
    } else if (strcmp(argv[i], "--timeout") == 0)
      g_timeout = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--pools") == 0)
      g_pools = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--expect-algo") == 0) {
      g_expect_algo = hm_coll_algo_parse(argv[i + 1]);
      if (g_expect_algo < 0) {
        fprintf(stderr, "--expect-algo %s: not ring, rd, tree or hier\n", argv[i + 1]);
        return 2;
      }
    }
    else {
      fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (g_nranks_list <= 0 || g_ncounts <= 0) {
    fprintf(stderr, "bad --ranks or --counts\n");
    return 2;
  }
  for (int k = 0; k < g_nranks_list; k++) g_ranks[k] = (int)ranks[k];
  g_verbose = getenv("HM_MATRIX_VERBOSE") != NULL;
  for (int p = 0; p < g_npatterns; p++)
    for (int r = 0; r < 8; r++) {
      char spec[128];
      pattern_spec(p, r, spec, sizeof spec);
      if (!device_available(spec)) {
        printf("# SKIP: device %s is not available here (backend not built, or no OpenCL device)\n", spec);
        return 77;
      }
    }
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_matrix)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
