/* Collective algorithms of hmcomm, each expressed as one set of pipelined transfers for the
 * engine (engine.c): ring reduce-scatter + allgather (bandwidth-optimal), recursive doubling
 * (latency-optimal, with the usual fold for non-power-of-two sizes), binomial trees for rooted
 * operations, direct exchange for alltoall/gather/scatter. Forwarding and reducing start on the
 * first chunk that arrives (`avail` links a send to the receive it forwards).
 * The algorithm is picked by hm_cost_best_algo() from inputs every rank shares (kind, nranks,
 * bytes, the communicator's link constants), or forced by HETMIX_ALGO / config.
 * Rooted operations also pass a zero-byte descriptor token around the ring, so ranks that
 * disagree on the root are told (otherwise both would only send and return garbage). */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define XFER_STACK 32

typedef struct seg_map {
  size_t count, n;
} seg_map;
static size_t seg_off(const seg_map *m, int i) {
  size_t base = m->count / m->n, rem = m->count % m->n;
  return (size_t)i * base + ((size_t)i < rem ? (size_t)i : rem);
}
static size_t seg_len(const seg_map *m, int i) {
  return m->count / m->n + ((size_t)i < m->count % m->n ? 1 : 0);
}
static int mod(int a, int n) { return ((a % n) + n) % n; }

/* A growable list of transfers, on the stack for small communicators. */
typedef struct xlist {
  hm_xfer stack[XFER_STACK];
  hm_xfer *x;
  int n, cap;
} xlist;
static hm_status xl_init(xlist *l, int need) {
  l->n = 0;
  l->cap = need;
  l->x = need <= XFER_STACK ? l->stack : hm_malloc(sizeof(hm_xfer) * (size_t)need, "transfer list");
  return l->x ? HM_OK : HM_ERR_NOMEM;
}
static hm_xfer *xl_add(xlist *l) { return &l->x[l->n++]; }
static hm_status xl_run(xlist *l, const hm_xctx *cx) {
  hm_status st = hm_xfer_run(cx, l->x, l->n);
  if (l->x != l->stack) free(l->x);
  l->x = NULL;
  return st;
}

/* Descriptor agreement for rooted collectives: zero-byte tokens in a dissemination pattern
 * (step k: to rank+2^k, from rank-2^k, each send gated on the previous receive). A receiver
 * checks the sender's descriptor; a rank that finds a mismatch stops and tells everyone, so no
 * rank completes the operation unless all ranks agree (transitively, after ceil(log2 n) steps). */
static int desc_steps(int n) {
  int k = 0;
  while ((1 << k) < n) k++;
  return k;
}
static void add_desc_check(xlist *l, hm_comm_t c, const hm_coll_args *a) {
  const int n = c->nranks;
  hm_xfer *prev = NULL;
  for (int k = 0; (1 << k) < n; k++) {
    hm_xfer *s = xl_add(l);
    hm_xfer_send(s, mod(c->rank + (1 << k), n), NULL, 0, a->seq, a->desc);
    if (prev) s->gate = &prev->finished;
    prev = xl_add(l);
    hm_xfer_recv(prev, mod(c->rank - (1 << k), n), NULL, 0, a->seq, a->desc);
  }
}

/* The hierarchy is usable: 2+ pools of equal size. */
static int hier_usable(hm_comm_t c) { return c->topo.regular && c->topo.per_pool >= 1; }
static int hier_kind(hm_coll_kind k) {
  return k == HM_COLL_ALLREDUCE || k == HM_COLL_REDUCE_SCATTER || k == HM_COLL_ALLGATHER;
}

/* Allreduce, reduce-scatter, allgather across pools: the flat algorithms over the slowest link
 * of the job (the link between pools), against the hierarchy over its two link classes. */
static int choose_topo(hm_comm_t c, hm_coll_kind kind, size_t bytes) {
  const hm_topo *t = &c->topo;
  double flat_t;
  hm_coll_algo flat = hm_cost_best_algo(kind, c->nranks, (double)bytes, &t->cross_link, &flat_t);
  double hier_t = hm_cost_hier(kind, t->npools, t->per_pool, t->per_host, (double)bytes, &t->pool_link, &t->cross_link);
  return hier_t >= 0 && hier_t < flat_t ? HM_ALGO_HIER : (int)flat;
}

/* bytes: the whole array (reduce_scatter's input, allgather's output), as hm_cost_* take it. */
hm_coll_algo hm_coll_choose(hm_comm_t c, hm_coll_kind kind, size_t bytes) {
  int a = c->forced_algo;
  if (a == HM_ALGO_HIER && (!hier_kind(kind) || !hier_usable(c))) a = HM_ALGO_RING;
  if (a < 0 && hier_kind(kind) && hier_usable(c)) a = choose_topo(c, kind, bytes);
  if (a < 0) a = (int)hm_cost_best_algo(kind, c->nranks, (double)bytes, &c->link, NULL);
  switch (kind) {
    case HM_COLL_ALLREDUCE: return (hm_coll_algo)a;
    case HM_COLL_BROADCAST: return a == HM_ALGO_RING ? HM_ALGO_RING : HM_ALGO_TREE;
    case HM_COLL_REDUCE: return HM_ALGO_TREE;
    case HM_COLL_BARRIER: return HM_ALGO_RECURSIVE_DOUBLING;
    case HM_COLL_REDUCE_SCATTER:
    case HM_COLL_ALLGATHER: return a == HM_ALGO_HIER ? HM_ALGO_HIER : HM_ALGO_RING;
    default: return HM_ALGO_RING;
  }
}

/* s sends on what rv receives: s may move only what rv has written, and if s sends exactly
 * rv's bytes the engine may produce each chunk straight into s's channel. */
static void forward(hm_xfer *rv, hm_xfer *s) {
  s->avail = &rv->done;
  if (s->src == rv->dst && s->bytes == rv->bytes) rv->fwd = s;
}

/* ---- allreduce ---- */
/* A ring over a group of ranks (g[0..n-1], this rank at g[me]) on count elements from sb to rb.
 * RING_RS: reduce-scatter (afterwards this rank holds the reduced segment me in rb); RING_AG:
 * allgather of the segments (rb's segment me is this rank's). div divides the reduced result
 * (HM_AVG). Reduction order of segment s: starting at the rank after s's owner (g[s+1]), each
 * rank adds its own operand to what arrived: ((x[s+1] + x[s+2]) + ...) + x[s]. */
enum { RING_RS = 1, RING_AG = 2 };
typedef struct ring_grp {
  const int *g;
  int n, me;
} ring_grp;
static hm_status ring_run(const ring_grp *rg, const hm_coll_args *a, const hm_xctx *cx, const char *sb, char *rb,
                          size_t count, int phases, int div) {
  const int n = rg->n, r = rg->me, right = rg->g[mod(r + 1, n)], left = rg->g[mod(r - 1, n)];
  const size_t es = hm_dtype_size(a->dt);
  seg_map m = {count, (size_t)n};
  xlist l;
  HM_TRY(xl_init(&l, 4 * (n - 1)));
  hm_xfer *prev_recv = NULL;
  for (int k = 0; (phases & RING_RS) && k < n - 1; k++) {
    int ss = mod(r - k - 1, n), rs = mod(r - k - 2, n);
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, right, (k == 0 ? sb : rb) + seg_off(&m, ss) * es, seg_len(&m, ss) * es, a->seq, a->desc);
    s->cma_ok = 0; /* the receiver reduces: slots split the work between both sides */
    if (prev_recv) forward(prev_recv, s);
    hm_xfer *rv = xl_add(&l);
    hm_xfer_recv_reduce(rv, left, rb + seg_off(&m, rs) * es, sb + seg_off(&m, rs) * es,
                        seg_len(&m, rs) * es, a->seq, a->desc, k == n - 2 ? div : 0);
    s->stream = rv->stream = k + 1; /* the left neighbour's send of this step is our receive */
    prev_recv = rv;
  }
  for (int k = 0; (phases & RING_AG) && k < n - 1; k++) {
    int ss = mod(r - k, n), rs = mod(r - k - 1, n);
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, right, rb + seg_off(&m, ss) * es, seg_len(&m, ss) * es, a->seq, a->desc);
    s->cma_ok = 0; /* forwarded chunk by chunk from the slots (single copy measured slower) */
    if (prev_recv) forward(prev_recv, s);
    hm_xfer *rv = xl_add(&l);
    hm_xfer_recv(rv, left, rb + seg_off(&m, rs) * es, seg_len(&m, rs) * es, a->seq, a->desc);
    s->stream = rv->stream = n + k;
    prev_recv = rv;
  }
  return xl_run(&l, cx);
}

static hm_status allreduce_ring(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  int stack[XFER_STACK], *g = c->nranks <= XFER_STACK ? stack : hm_malloc(sizeof(int) * (size_t)c->nranks, "ring");
  if (!g) return HM_ERR_NOMEM;
  for (int i = 0; i < c->nranks; i++) g[i] = i;
  ring_grp rg = {g, c->nranks, c->rank};
  hm_status st = ring_run(&rg, a, cx, a->sendbuf, a->recvbuf, a->count, RING_RS | RING_AG, c->nranks);
  if (g != stack) free(g);
  return st;
}

/* Hierarchical allreduce (FlagCX's cluster-to-cluster scheme): ring reduce-scatter inside the
 * pool (its ranks in rank order, so the ranks of one host are neighbours and talk through shared
 * memory), then each rank allreduces its segment with the ranks of the same place in the other
 * pools (a ring across pools: only 1/per_pool of the data per rank crosses the slow links), then
 * ring allgather inside the pool. Reduction order of an element of pool segment s and cross
 * segment t: the pool ring's order for s in each pool (ring_run), then the cross ring's order
 * for t over the pools' partial sums; fixed by the layout, so every run and every rank gives the
 * same bits, but not the flat ring's bits for floats (integers agree). */
static hm_status allreduce_hier(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const hm_topo *t = &c->topo;
  const int k = t->per_pool, np = t->npools, i = t->me_index;
  const size_t es = hm_dtype_size(a->dt);
  int cross[XFER_STACK], *x = np <= XFER_STACK ? cross : hm_malloc(sizeof(int) * (size_t)np, "cross ring");
  if (!x) return HM_ERR_NOMEM;
  for (int p = 0; p < np; p++) x[p] = t->members[p * k + i];
  ring_grp pool = {t->members + t->me_pool * k, k, i}, across = {x, np, t->me_pool};
  seg_map m = {a->count, (size_t)k};
  char *mine = (char *)a->recvbuf + seg_off(&m, i) * es;
  hm_status st = HM_OK;
  if (k > 1) st = ring_run(&pool, a, cx, a->sendbuf, a->recvbuf, a->count, RING_RS, 0);
  const char *in = k > 1 ? mine : (const char *)a->sendbuf;
  if (st == HM_OK) st = ring_run(&across, a, cx, in, mine, seg_len(&m, i), RING_RS | RING_AG, c->nranks);
  if (st == HM_OK && k > 1) st = ring_run(&pool, a, cx, a->recvbuf, a->recvbuf, a->count, RING_AG, 0);
  if (x != cross) free(x);
  return st;
}

/* The cross ring of this rank (the ranks of its place in every pool), in x[npools]. */
static int *cross_ring(const hm_topo *t, int *stack) {
  int *x = t->npools <= XFER_STACK ? stack : hm_malloc(sizeof(int) * (size_t)t->npools, "cross ring");
  for (int p = 0; x && p < t->npools; p++) x[p] = t->members[p * t->per_pool + t->me_index];
  return x;
}

/* Bundle order: bundle i holds the blocks of the ranks at place i of every pool, pool by pool.
 * Copies block by block between the rank order (ranks[r]) and the bundle order. */
static void bundle_copy(const hm_topo *t, char *bundled, char *ranked, size_t block, int to_bundles) {
  for (int i = 0; i < t->per_pool; i++)
    for (int p = 0; p < t->npools; p++) {
      char *b = bundled + ((size_t)i * (size_t)t->npools + (size_t)p) * block;
      char *r = ranked + (size_t)t->members[p * t->per_pool + i] * block;
      if (block) memcpy(to_bundles ? b : r, to_bundles ? r : b, block);
    }
}

/* Hierarchical reduce-scatter: the input in bundle order, a ring reduce-scatter of the bundles
 * inside the pool (this rank keeps its place's bundle, summed over the pool), then a ring
 * reduce-scatter of that bundle across the pools. Reduction order of a block: the pool ring's
 * order for its bundle (ring_run), then the cross ring's order over the pools' partial sums. */
static hm_status reduce_scatter_hier(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const hm_topo *t = &c->topo;
  const int k = t->per_pool, np = t->npools;
  const size_t block = a->count * hm_dtype_size(a->dt), bundle = block * (size_t)np;
  char *tmp = hm_comm_scratch(c, block * (size_t)c->nranks);
  if (!tmp && block) return HM_ERR_NOMEM;
  int stack[XFER_STACK], *x = cross_ring(t, stack);
  if (!x) return HM_ERR_NOMEM;
  bundle_copy(t, tmp, (char *)a->sendbuf, block, 1);
  ring_grp pool = {t->members + t->me_pool * k, k, t->me_index}, across = {x, np, t->me_pool};
  char *mine = tmp + (size_t)t->me_index * bundle;
  hm_status st = HM_OK;
  if (k > 1) st = ring_run(&pool, a, cx, tmp, tmp, a->count * (size_t)c->nranks, RING_RS, 0);
  if (st == HM_OK) st = ring_run(&across, a, cx, mine, mine, a->count * (size_t)np, RING_RS, c->nranks);
  if (st == HM_OK && block) memcpy(a->recvbuf, mine + (size_t)t->me_pool * block, block);
  if (x != stack) free(x);
  return st;
}

/* Hierarchical allgather: a ring allgather across the pools (this rank's bundle: the blocks of
 * its place in every pool), then a ring allgather of the bundles inside the pool, then the
 * bundles back into rank order. Copies only, so the result equals the flat ring's. */
static hm_status allgather_hier(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const hm_topo *t = &c->topo;
  const int k = t->per_pool, np = t->npools;
  const size_t block = a->count * hm_dtype_size(a->dt), bundle = block * (size_t)np;
  char *tmp = hm_comm_scratch(c, block * (size_t)c->nranks);
  if (!tmp && block) return HM_ERR_NOMEM;
  int stack[XFER_STACK], *x = cross_ring(t, stack);
  if (!x) return HM_ERR_NOMEM;
  ring_grp pool = {t->members + t->me_pool * k, k, t->me_index}, across = {x, np, t->me_pool};
  char *mine = tmp + (size_t)t->me_index * bundle;
  if (block) memcpy(mine + (size_t)t->me_pool * block, a->sendbuf, block);
  hm_status st = ring_run(&across, a, cx, mine, mine, a->count * (size_t)np, RING_AG, 0);
  if (st == HM_OK && k > 1) st = ring_run(&pool, a, cx, tmp, tmp, a->count * (size_t)c->nranks, RING_AG, 0);
  if (st == HM_OK) bundle_copy(t, tmp, a->recvbuf, block, 0);
  if (x != stack) free(x);
  return st;
}

static hm_status allreduce_rd(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const int n = c->nranks, r = c->rank;
  const size_t bytes = a->count * hm_dtype_size(a->dt);
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int rem = n - p;
  const char *cur = a->sendbuf;
  char *rb = a->recvbuf;
  char small[256];
  char *tmp = bytes <= sizeof small ? small : hm_comm_scratch(c, bytes);
  if (!tmp) return HM_ERR_NOMEM;
  hm_xfer x[2];
  int newrank;
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      hm_xfer_send(&x[0], r + 1, cur, bytes, a->seq, a->desc);
      x[0].cma_ok = 0;
      HM_TRY(hm_xfer_run(cx, x, 1));
      newrank = -1;
    } else {
      hm_xfer_recv_reduce(&x[0], r - 1, rb, cur, bytes, a->seq, a->desc, 0);
      HM_TRY(hm_xfer_run(cx, x, 1));
      cur = rb;
      newrank = r / 2;
    }
  } else {
    newrank = r - rem;
  }
  if (newrank >= 0) {
    for (int mask = 1; mask < p; mask <<= 1) {
      int pn = newrank ^ mask;
      int partner = pn < rem ? pn * 2 + 1 : pn + rem;
      char *other = cur == rb ? tmp : rb;
      hm_xfer_send(&x[0], partner, cur, bytes, a->seq, a->desc);
      x[0].cma_ok = 0;
      hm_xfer_recv_reduce(&x[1], partner, other, cur, bytes, a->seq, a->desc, mask * 2 == p ? n : 0);
      HM_TRY(hm_xfer_run(cx, x, 2));
      cur = other;
    }
    if (cur != rb && bytes) memcpy(rb, cur, bytes);
  }
  if (r < 2 * rem) {
    if (r % 2 == 1)
      hm_xfer_send(&x[0], r - 1, rb, bytes, a->seq, a->desc);
    else
      hm_xfer_recv(&x[0], r + 1, rb, bytes, a->seq, a->desc);
    HM_TRY(hm_xfer_run(cx, x, 1));
  }
  return HM_OK;
}

/* ---- binomial trees (relative rank vr = rank - root) ---- */
static int tree_links(int n, int vr, int *parent, int *children) {
  int mask = 1, nc = 0;
  *parent = -1;
  while (mask < n) {
    if (vr & mask) {
      *parent = vr - mask;
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (vr + mask < n) children[nc++] = vr + mask;
  return nc;
}

static hm_status broadcast_tree(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx, int ring) {
  const int n = c->nranks, root = a->root, vr = mod(c->rank - root, n);
  const size_t bytes = a->count * hm_dtype_size(a->dt);
  int parent, children[64], nc;
  if (ring) {
    parent = vr > 0 ? vr - 1 : -1;
    nc = vr + 1 < n ? 1 : 0;
    children[0] = vr + 1;
  } else {
    nc = tree_links(n, vr, &parent, children);
  }
  xlist l;
  HM_TRY(xl_init(&l, nc + 1 + 2 * desc_steps(n)));
  add_desc_check(&l, c, a);
  const char *src = a->recvbuf;
  hm_xfer *rv = NULL;
  if (parent < 0) {
    src = a->sendbuf;
    if (a->sendbuf != a->recvbuf && bytes) memcpy(a->recvbuf, a->sendbuf, bytes);
  } else {
    rv = xl_add(&l);
    hm_xfer_recv(rv, mod(parent + root, n), a->recvbuf, bytes, a->seq, a->desc);
  }
  for (int i = 0; i < nc; i++) {
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, mod(children[i] + root, n), src, bytes, a->seq, a->desc);
    if (rv) s->avail = &rv->done;
  }
  return xl_run(&l, cx);
}

static hm_status reduce_tree(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx, int with_token) {
  const int n = c->nranks, root = a->root, vr = mod(c->rank - root, n);
  const size_t bytes = a->count * hm_dtype_size(a->dt);
  int parent, children[64];
  int nc = tree_links(n, vr, &parent, children);
  char *acc = parent < 0 ? a->recvbuf : (nc ? hm_comm_scratch(c, bytes) : NULL);
  if (nc && !acc && bytes) return HM_ERR_NOMEM;
  xlist l;
  HM_TRY(xl_init(&l, nc + 1 + 2 * desc_steps(n)));
  if (with_token) add_desc_check(&l, c, a);
  hm_xfer *prev = NULL;
  /* children in a fixed order, so every run reduces in the same order (bitwise repeatable) */
  for (int i = nc - 1; i >= 0; i--) {
    hm_xfer *rv = xl_add(&l);
    int last = i == 0 && parent < 0;
    hm_xfer_recv_reduce(rv, mod(children[i] + root, n), acc, prev ? acc : a->sendbuf, bytes, a->seq,
                        a->desc, last ? n : 0);
    if (prev) rv->avail = &prev->done;
    prev = rv;
  }
  if (parent >= 0) {
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, mod(parent + root, n), prev ? acc : a->sendbuf, bytes, a->seq, a->desc);
    s->cma_ok = 0;
    if (prev) s->avail = &prev->done;
  }
  return xl_run(&l, cx);
}

/* ---- reduce_scatter, allgather (rings) ---- */
static hm_status reduce_scatter_ring(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const int n = c->nranks, r = c->rank, right = mod(r + 1, n), left = mod(r - 1, n);
  const size_t sb_bytes = a->count * hm_dtype_size(a->dt);
  const char *sb = a->sendbuf;
  char *tmp = hm_comm_scratch(c, sb_bytes * (size_t)n);
  if (!tmp && sb_bytes) return HM_ERR_NOMEM;
  xlist l;
  HM_TRY(xl_init(&l, 2 * (n - 1)));
  hm_xfer *prev = NULL;
  for (int k = 0; k < n - 1; k++) {
    int ss = mod(r - k - 1, n), rs = mod(r - k - 2, n);
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, right, (k == 0 ? sb : tmp) + (size_t)ss * sb_bytes, sb_bytes, a->seq, a->desc);
    s->cma_ok = 0;
    if (prev) s->avail = &prev->done;
    hm_xfer *rv = xl_add(&l);
    char *dst = k == n - 2 ? (char *)a->recvbuf : tmp + (size_t)rs * sb_bytes;
    hm_xfer_recv_reduce(rv, left, dst, sb + (size_t)rs * sb_bytes, sb_bytes, a->seq, a->desc,
                        k == n - 2 ? n : 0);
    prev = rv;
  }
  return xl_run(&l, cx);
}

static hm_status allgather_ring(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const int n = c->nranks, r = c->rank, right = mod(r + 1, n), left = mod(r - 1, n);
  const size_t sz = a->count * hm_dtype_size(a->dt);
  char *rb = a->recvbuf;
  if (a->sendbuf != rb + (size_t)r * sz && sz) memcpy(rb + (size_t)r * sz, a->sendbuf, sz);
  xlist l;
  HM_TRY(xl_init(&l, 2 * (n - 1)));
  hm_xfer *prev = NULL;
  for (int k = 0; k < n - 1; k++) {
    int ss = mod(r - k, n), rs = mod(r - k - 1, n);
    hm_xfer *s = xl_add(&l);
    hm_xfer_send(s, right, k == 0 ? (const char *)a->sendbuf : rb + (size_t)ss * sz, sz, a->seq, a->desc);
    if (prev) s->avail = &prev->done;
    prev = xl_add(&l);
    hm_xfer_recv(prev, left, rb + (size_t)rs * sz, sz, a->seq, a->desc);
  }
  return xl_run(&l, cx);
}

/* ---- direct exchanges ---- */
static hm_status alltoall_direct(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx) {
  const int n = c->nranks, r = c->rank;
  const size_t sz = a->count * hm_dtype_size(a->dt);
  const char *sb = a->sendbuf;
  char *rb = a->recvbuf;
  if (sb == rb && sz) { /* in place: send from a copy, or a receive would overwrite a pending send */
    char *tmp = hm_comm_scratch(c, sz * (size_t)n);
    if (!tmp) return HM_ERR_NOMEM;
    memcpy(tmp, sb, sz * (size_t)n);
    sb = tmp;
  } else if (sz) {
    memcpy(rb + (size_t)r * sz, sb + (size_t)r * sz, sz);
  }
  xlist l;
  HM_TRY(xl_init(&l, 2 * (n - 1)));
  for (int s = 1; s < n; s++) {
    int to = mod(r + s, n), from = mod(r - s, n);
    hm_xfer_send(xl_add(&l), to, sb + (size_t)to * sz, sz, a->seq, a->desc);
    hm_xfer_recv(xl_add(&l), from, rb + (size_t)from * sz, sz, a->seq, a->desc);
  }
  return xl_run(&l, cx);
}

static hm_status gather_scatter_direct(hm_comm_t c, const hm_coll_args *a, const hm_xctx *cx, int gather) {
  const int n = c->nranks, r = c->rank, root = a->root;
  const size_t sz = a->count * hm_dtype_size(a->dt);
  xlist l;
  HM_TRY(xl_init(&l, n + 2 * desc_steps(n)));
  add_desc_check(&l, c, a);
  if (r == root) {
    char *big = gather ? (char *)a->recvbuf : (char *)a->sendbuf;
    char *own = big + (size_t)root * sz;
    if (gather && a->sendbuf != own && sz) memcpy(own, a->sendbuf, sz);
    if (!gather && a->recvbuf != own && sz) memcpy(a->recvbuf, own, sz);
    for (int s = 1; s < n; s++) {
      int p = mod(root + s, n);
      if (gather)
        hm_xfer_recv(xl_add(&l), p, big + (size_t)p * sz, sz, a->seq, a->desc);
      else
        hm_xfer_send(xl_add(&l), p, big + (size_t)p * sz, sz, a->seq, a->desc);
    }
  } else if (gather) {
    hm_xfer_send(xl_add(&l), root, a->sendbuf, sz, a->seq, a->desc);
  } else {
    hm_xfer_recv(xl_add(&l), root, a->recvbuf, sz, a->seq, a->desc);
  }
  return xl_run(&l, cx);
}

uint64_t hm_coll_allreduce_runs(hm_comm_t c, hm_coll_algo a) {
  return (unsigned)a < HM_ALGO_COUNT ? atomic_load_explicit(&c->allreduce_runs[a], memory_order_relaxed) : 0;
}

hm_status hm_coll_execute(hm_comm_t c, const hm_coll_args *a) {
  const int n = c->nranks;
  const size_t es = hm_dtype_size(a->dt);
  hm_xctx cx = {.comm = c, .dt = a->dt, .op = a->op};
  if (n == 1) { /* no peers: only the copies the semantics require */
    size_t bytes = a->count * es;
    if (a->kind != HM_COLL_BARRIER && bytes && a->recvbuf && a->sendbuf != a->recvbuf)
      memmove(a->recvbuf, a->sendbuf, bytes);
    return HM_OK;
  }
  switch (a->kind) {
    case HM_COLL_ALLREDUCE: {
      hm_coll_algo algo = hm_coll_choose(c, a->kind, a->count * es);
      atomic_fetch_add_explicit(&c->allreduce_runs[algo], 1, memory_order_relaxed);
      if (algo == HM_ALGO_RING) return allreduce_ring(c, a, &cx);
      if (algo == HM_ALGO_RECURSIVE_DOUBLING) return allreduce_rd(c, a, &cx);
      if (algo == HM_ALGO_HIER) return allreduce_hier(c, a, &cx);
      hm_coll_args t = *a;
      t.root = 0;
      HM_TRY(reduce_tree(c, &t, &cx, 0));
      /* the broadcast half sends from recvbuf on every rank */
      t.sendbuf = t.recvbuf;
      return broadcast_tree(c, &t, &cx, 0);
    }
    case HM_COLL_BARRIER: {
      unsigned char in = 1, out = 0;
      hm_coll_args t = *a;
      t.sendbuf = &in;
      t.recvbuf = &out;
      t.count = 1;
      hm_xctx bx = {.comm = c, .dt = HM_UINT8, .op = HM_MAX};
      return allreduce_rd(c, &t, &bx);
    }
    case HM_COLL_REDUCE: return reduce_tree(c, a, &cx, 1);
    case HM_COLL_BROADCAST:
      return broadcast_tree(c, a, &cx, hm_coll_choose(c, a->kind, a->count * es) == HM_ALGO_RING);
    case HM_COLL_REDUCE_SCATTER:
      if (hm_coll_choose(c, a->kind, a->count * es * (size_t)n) == HM_ALGO_HIER) return reduce_scatter_hier(c, a, &cx);
      return reduce_scatter_ring(c, a, &cx);
    case HM_COLL_ALLGATHER:
      if (hm_coll_choose(c, a->kind, a->count * es * (size_t)n) == HM_ALGO_HIER) return allgather_hier(c, a, &cx);
      return allgather_ring(c, a, &cx);
    case HM_COLL_ALLTOALL: return alltoall_direct(c, a, &cx);
    case HM_COLL_GATHER: return gather_scatter_direct(c, a, &cx, 1);
    case HM_COLL_SCATTER: return gather_scatter_direct(c, a, &cx, 0);
    default: return hm_error(HM_ERR_INTERNAL, "unknown collective kind %d", (int)a->kind);
  }
}
