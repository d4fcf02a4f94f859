/* Event-driven simulator of one training step: times the 1F1B op lists of hm_schedule_1f1b over
 * unequal stages and links, one representative replica per class (identical replicas behave
 * alike, so the cost does not grow with the number of devices).
 *
 * Pipeline phase: compute ops are serial per stage; SEND_ occupies the sender's link in that
 * direction for hm_cost_p2p and does not block compute; RECV_ waits for the transfer's arrival.
 * Sync phase: a gradient bucket starts when every replica holding those layers has its final
 * gradients (all classes) and the stage's previous bucket is done. Without overlap_sync that is
 * the end of the holder's last backward; with it, the moment that backward has done the bucket's
 * layers (backprop goes from the stage's last layer down, each layer taking its share of bwd),
 * and the buckets run on the stage's own sync track while the backward continues (buckets whose
 * holders split them with different tensor-parallel degrees wait for the backward's end, as the
 * runtime sums those after it). The stage's
 * next ops wait for its last bucket. When the replicas span pools, the part of each bucket that
 * crosses between them shares the pool link with every bucket crossing at that moment
 * (linkshare.c), and a bucket whose holders sit in one pool stays in it. The tied-embedding sync
 * starts when both ends are ready;
 * the gradient norm waits for every stage; then the optimizer.
 * Not modelled: contention between replicas on a NIC, nor between a bucket and the compute it
 * overlaps.
 *
 * Interleaved 1F1B (a class with nchunks v > 1): state is kept per device stage (compute track,
 * outgoing links, op cursor, activations held) and per virtual stage (transfers arriving to it,
 * when its gradients are complete); such a class is simulated op by op to the end.
 *
 * Nothing grows with the micro-batch count: ops come one at a time from the generator
 * (hm_schedule_1f1b_op), transfers in flight sit in a small ring per stage, and a class with more
 * than HM_SIM_FULL_MICRO micro-batches is extrapolated once its steady state repeats (each later
 * full period is then the same shifted by a constant; docs/plan.md, section 4). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "hetmix/plan.h"
#include "plan/plan_internal.h"
#include "util/files.h"
#include "util/util.h"

double hm_sync_allreduce_time(const hm_sync_model *m, double bytes) {
  if (!m || m->nranks <= 1 || bytes <= 0) return 0.0;
  double t = 0;
  if (m->ngroups <= 1) {
    hm_cost_best_algo(HM_COLL_ALLREDUCE, m->nranks, bytes, &m->link, &t);
    return t;
  }
  const int inner = (m->nranks + m->ngroups - 1) / m->ngroups;
  double rs = 0, ar = 0, ag = 0;
  if (inner > 1) {
    hm_cost_best_algo(HM_COLL_REDUCE_SCATTER, inner, bytes, &m->link, &rs);
    hm_cost_best_algo(HM_COLL_ALLGATHER, inner, bytes, &m->link, &ag);
  }
  hm_cost_best_algo(HM_COLL_ALLREDUCE, m->ngroups, bytes / (inner > 1 ? inner : 1), &m->outer, &ar);
  /* hmcomm's tuner runs the flat ring instead where that is faster (uneven or few pools): a flat
   * ring's every step runs at the pace of its slowest link */
  const hm_link slow = {.bandwidth = fmin(m->link.bandwidth, m->outer.bandwidth),
                        .latency = fmax(m->link.latency, m->outer.latency)};
  double flat = 0;
  hm_cost_best_algo(HM_COLL_ALLREDUCE, m->nranks, bytes, &slow, &flat);
  return fmin(rs + ar + ag, flat);
}

/* Latency (and reduction) seconds and bytes per rank of one algorithm: its time over `link` is
 * lat + bytes / link bandwidth. */
static void coll_parts(hm_coll_algo algo, int n, double bytes, const hm_link *link, double *lat,
                       double *moved) {
  const hm_link no_bw = {.bandwidth = 0, .latency = link->latency, .reduce_bw = link->reduce_bw};
  const hm_link unit = {.bandwidth = 1.0};
  *lat = hm_cost_collective(HM_COLL_ALLREDUCE, algo, n, bytes, &no_bw);
  *moved = hm_cost_collective(HM_COLL_ALLREDUCE, algo, n, bytes, &unit);
}

void hm_sync_split(const hm_sync_model *m, double bytes, hm_sync_parts *out) {
  *out = (hm_sync_parts){0};
  if (!m || m->nranks <= 1 || bytes <= 0 || m->ngroups <= 1) return;
  const int inner = (m->nranks + m->ngroups - 1) / m->ngroups;
  const double part = bytes / (inner > 1 ? inner : 1);
  double rs = 0, ag = 0, ar = 0, flat = 0;
  if (inner > 1) {
    hm_cost_best_algo(HM_COLL_REDUCE_SCATTER, inner, bytes, &m->link, &rs);
    hm_cost_best_algo(HM_COLL_ALLGATHER, inner, bytes, &m->link, &ag);
  }
  const hm_coll_algo outer = hm_cost_best_algo(HM_COLL_ALLREDUCE, m->ngroups, part, &m->outer, &ar);
  const hm_link slow = {.bandwidth = fmin(m->link.bandwidth, m->outer.bandwidth),
                        .latency = fmax(m->link.latency, m->outer.latency)};
  const hm_coll_algo ring = hm_cost_best_algo(HM_COLL_ALLREDUCE, m->nranks, bytes, &slow, &flat);
  double lat;
  if (rs + ar + ag <= flat) { /* as hm_sync_allreduce_time's fmin picks */
    coll_parts(outer, m->ngroups, part, &m->outer, &lat, &out->bytes);
    out->pre = rs + lat;
    out->post = ag;
    out->crossing = (double)inner / m->nranks;
  } else {
    coll_parts(ring, m->nranks, bytes, &slow, &lat, &out->bytes);
    out->pre = lat;
    out->crossing = 1.0 / m->nranks;
  }
}

static hm_status trace_add(hm_sim_trace *tr, int cls, int stage, int track, hm_op_kind kind,
                           int micro, double start, double dur) {
  if (!tr) return HM_OK;
  if (tr->nevents == tr->cap) {
    int cap = tr->cap ? tr->cap * 2 : 1024;
    hm_sim_event *e = realloc(tr->events, (size_t)cap * sizeof *e);
    if (!e) return hm_error(HM_ERR_NOMEM, "simulator trace: cannot grow to %d events", cap);
    tr->events = e;
    tr->cap = cap;
  }
  tr->events[tr->nevents++] =
      (hm_sim_event){.cls = cls, .stage = stage, .track = track, .kind = kind, .micro = micro,
                     .start = start, .dur = dur};
  return HM_OK;
}

/* A transfer on its way to a stage: micro-batch `micro`'s data arrives at `t`. */
typedef struct arrival {
  int64_t micro; /* < 0: slot free */
  double t;
} arrival;

/* Per-virtual-stage state: transfers on their way to it (ring, slot micro % ring) and when its
 * last backward ended. Without interleaving, one per stage. */
typedef struct vstage_state {
  arrival *act_in, *grad_in;
  double grads_ready;  /* end of the last BWD */
  double last_bwd;     /* start of the last BWD */
} vstage_state;

/* Per-device-stage state of the representative replica of one class. */
typedef struct stage_state {
  int64_t pc, npipe;   /* next op; the pipeline ops (FWD, BWD, SEND_, RECV_) are [0, npipe) */
  int64_t steady_begin, nperiods; /* the repeating part (hm_schedule_1f1b_steady) */
  int period_ops;
  int64_t last_period; /* last steady period completed; -1 none */
  double t;            /* compute track free at */
  double act_link_free, grad_link_free; /* this stage's outgoing links, per direction */
  double comm_busy;
  double busy_fb;      /* seconds of FWD + BWD */
  double busy;         /* FWD + BWD + OPTIMIZER */
  double period_fb, period_comm; /* seconds of FWD + BWD and of sends in one steady period */
  int live, max_inflight; /* micro-batches held (FWD done, BWD not) now and at most */
  double live_bytes, max_live_bytes; /* activation bytes held (interleaved: per chunk) */
} stage_state;

/* Values of one stage after a steady period that the next periods read: the compute track and
 * both outgoing links (the last send of each is the arrival the neighbour receives next). */
enum { NSNAP = 3 };

typedef struct class_state {
  hm_schedule_config cfg; /* nstages = device stages p, nchunks = v */
  int *bounds;
  stage_state *st;     /* (p) */
  vstage_state *vs;    /* (p*v) */
  int nv;              /* p*v */
  int ring;            /* arrival slots per virtual stage */
  /* steady-state detection (docs/plan.md, section 4) */
  int detect;          /* 1 while looking for a repeating state */
  int cmax, hist;      /* longest repetition looked for; periods of snapshots kept */
  double *snap;        /* (hist, p, NSNAP) state of each stage after period j, slot j % hist */
  int64_t *snap_period; /* (hist, p) period held by each slot; -1 none */
  int64_t checked;     /* steady periods examined so far */
  int64_t skipped;     /* periods extrapolated */
} class_state;

static int is_pipeline_op(hm_op_kind k) { return k <= HM_OP_RECV_GRAD; }

/* Send of virtual stage j (= the stage itself without interleaving). */
static double send_time(const hm_sim_class *cl, int j, hm_op_kind kind) {
  /* SEND_GRAD to j-1 goes over the same link as j-1's forward sends */
  const hm_sim_stage *sg = &cl->stages[kind == HM_OP_SEND_ACT ? j : j - 1];
  const hm_sim_stage *to = &cl->stages[kind == HM_OP_SEND_ACT ? j + 1 : j - 1];
  /* devices whose memory is not host memory stage: device->host before, host->device after */
  return hm_cost_p2p(&sg->link_next, sg->act_bytes) +
         hm_cost_staged_send(&cl->stages[j].staging, &to->staging, sg->act_bytes);
}

static int chunks_of(const hm_sim_class *cl) { return cl->nchunks > 1 ? cl->nchunks : 1; }
static int devstages_of(const hm_sim_class *cl) { return cl->nstages / chunks_of(cl); }

/* Staging copies of a gradient allreduce of `bytes`: the slowest staged device of the job
 * (every replica waits for the collective's last member). */
static double sync_staging(const hm_sim_input *in, double bytes) {
  double worst = 0;
  for (int c = 0; c < in->nclasses; c++)
    for (int s = 0; s < in->classes[c].nstages; s++) {
      double t = hm_cost_staging(&in->classes[c].stages[s].staging, bytes);
      worst = t > worst ? t : worst;
    }
  return worst;
}

/* Runs op `op` of stage s. Returns 1 when done, 0 when it waits for a transfer, -1 on error. */
static int run_op(const hm_sim_class *cl, class_state *cs, int c, int s, const hm_op *op,
                  hm_sim_trace *tr, hm_status *st) {
  stage_state *ss = &cs->st[s];
  const int j = op->chunk * cs->cfg.nstages + s; /* virtual stage */
  const hm_sim_stage *sg = &cl->stages[j];
  vstage_state *vs = &cs->vs[j];
  const int64_t k = op->micro;
  if (op->kind == HM_OP_RECV_ACT || op->kind == HM_OP_RECV_GRAD) {
    arrival *a = &(op->kind == HM_OP_RECV_ACT ? vs->act_in : vs->grad_in)[k % cs->ring];
    if (a->micro != k) return 0; /* the sender has not got there yet */
    if (a->t > ss->t) ss->t = a->t;
    a->micro = -1;
  } else if (op->kind == HM_OP_FWD || op->kind == HM_OP_BWD) {
    const double d = op->kind == HM_OP_FWD ? sg->fwd : sg->bwd;
    if ((*st = trace_add(tr, c, s, 0, op->kind, op->micro, ss->t, d)) != HM_OK) return -1;
    if (op->kind == HM_OP_BWD) vs->last_bwd = ss->t;
    ss->t += d;
    ss->busy_fb += d;
    if (op->kind == HM_OP_BWD) {
      vs->grads_ready = ss->t;
      ss->live--;
      ss->live_bytes -= sg->mem_act;
    } else {
      if (++ss->live > ss->max_inflight) ss->max_inflight = ss->live;
      if ((ss->live_bytes += sg->mem_act) > ss->max_live_bytes) ss->max_live_bytes = ss->live_bytes;
    }
  } else {
    const int act = op->kind == HM_OP_SEND_ACT;
    double *link_free = act ? &ss->act_link_free : &ss->grad_link_free;
    const double start = ss->t > *link_free ? ss->t : *link_free;
    const double d = send_time(cl, j, op->kind);
    if ((*st = trace_add(tr, c, s, 1, op->kind, op->micro, start, d)) != HM_OK) return -1;
    *link_free = start + d;
    ss->comm_busy += d;
    arrival *a = &(act ? cs->vs[j + 1].act_in : cs->vs[j - 1].grad_in)[k % cs->ring];
    if (a->micro >= 0) {
      *st = hm_error(HM_ERR_INTERNAL, "simulator: class %d stage %d: more than %d transfers in "
                     "flight", c, s, cs->ring);
      return -1;
    }
    *a = (arrival){.micro = k, .t = start + d};
  }
  return 1;
}

static double *snap_at(class_state *cs, int64_t j, int s) {
  return &cs->snap[((size_t)(j % cs->hist) * cs->cfg.nstages + s) * NSNAP];
}

/* After op pc of stage s: keeps the stage's state when the op ends a steady period (returns 1). */
static int note_period(class_state *cs, int s) {
  stage_state *ss = &cs->st[s];
  const int64_t r = ss->pc - ss->steady_begin;
  if (!cs->detect || r < 0 || r >= ss->nperiods * ss->period_ops || (r + 1) % ss->period_ops)
    return 0;
  const int64_t j = r / ss->period_ops;
  double *v = snap_at(cs, j, s);
  v[0] = ss->t;
  v[1] = ss->act_link_free;
  v[2] = ss->grad_link_free;
  cs->snap_period[(size_t)(j % cs->hist) * cs->cfg.nstages + s] = j;
  ss->last_period = j;
  return 1;
}

static int have_period(const class_state *cs, int64_t j) {
  for (int s = 0; s < cs->cfg.nstages; s++)
    if (j < 0 || cs->snap_period[(size_t)(j % cs->hist) * cs->cfg.nstages + s] != j) return 0;
  return 1;
}

/* Whether the state after period j equals the state after period j-c shifted by one time delta
 * (within rounding: tol from the magnitude of the times and the 6c additions in between). */
static int repeats(class_state *cs, int64_t j, int c, double mag, double *delta) {
  const int p = cs->cfg.nstages;
  *delta = snap_at(cs, j, 0)[0] - snap_at(cs, j - c, 0)[0];
  const double tol = 32.0 * (c + 1) * DBL_EPSILON * mag;
  for (int s = 0; s < p; s++) {
    const double *a = snap_at(cs, j, s), *b = snap_at(cs, j - c, s);
    for (int x = 0; x < NSNAP; x++) {
      if ((x == 1 && s == p - 1) || (x == 2 && s == 0)) continue; /* no such link */
      if (fabs(a[x] - b[x] - *delta) > tol) return 0;
    }
  }
  return 1;
}

static void reverse(arrival *a, int n) {
  for (int i = 0, j = n - 1; i < j; i++, j--) {
    const arrival t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* Moves one ring of arrivals kc periods on: micro-batch indices + kc, times + shift. The slot of
 * micro-batch k is k % n, so the ring rotates by kc % n. */
static void shift_ring(arrival *ring, int n, int64_t kc, double shift) {
  for (int i = 0; i < n; i++)
    if (ring[i].micro >= 0) {
      ring[i].micro += kc;
      ring[i].t += shift;
    }
  const int r = (int)(kc % n);
  reverse(ring, n);
  reverse(ring, r);
  reverse(ring + r, n - r);
}

/* The state after steady period j repeats the one after j-c, shifted by delta: every later full
 * period repeats too (each period's times are maxima of sums of the previous period's times and
 * constants), so K*c periods are skipped by shifting every stage K*c periods on and K*delta later.
 * Stages may already be in periods after j; they stay within the full periods (<= m-p). */
static void extrapolate(const hm_sim_class *cl, class_state *cs, int c, double delta) {
  const int p = cl->nstages;
  const int64_t last_full = (int64_t)cl->nmicro - p;
  int64_t jmax = 0;
  for (int s = 0; s < p; s++) {
    const stage_state *ss = &cs->st[s];
    const int64_t j = (ss->pc - ss->steady_begin) / ss->period_ops;
    if (j > jmax) jmax = j;
  }
  const int64_t K = (last_full - jmax) / c;
  cs->detect = 0;
  if (K < 1) return;
  const int64_t kc = K * c;
  const double shift = (double)K * delta;
  for (int s = 0; s < p; s++) {
    stage_state *ss = &cs->st[s];
    ss->pc += kc * ss->period_ops;
    ss->t += shift;
    ss->act_link_free += shift;
    ss->grad_link_free += shift;
    cs->vs[s].grads_ready += shift; /* no interleaving here: virtual stage s is stage s */
    cs->vs[s].last_bwd += shift;
    ss->busy_fb += (double)kc * ss->period_fb;
    ss->comm_busy += (double)kc * ss->period_comm;
    shift_ring(cs->vs[s].act_in, cs->ring, kc, shift);
    shift_ring(cs->vs[s].grad_in, cs->ring, kc, shift);
  }
  cs->skipped = kc;
}

/* Examines each steady period that every stage has completed; extrapolates at the first repeat. */
static void detect_repeat(const hm_sim_class *cl, class_state *cs) {
  const int p = cl->nstages;
  int64_t done = INT64_MAX;
  for (int s = 0; s < p; s++)
    if (cs->st[s].last_period < done) done = cs->st[s].last_period;
  for (; cs->detect && cs->checked <= done; cs->checked++) {
    const int64_t j = cs->checked;
    if (!have_period(cs, j)) continue;
    double mag = 0; /* largest time in the state */
    for (int s = 0; s < p; s++)
      for (int x = 0; x < NSNAP; x++) mag = fmax(mag, fabs(snap_at(cs, j, s)[x]));
    for (int c = 1; c <= cs->cmax && j - c >= 0; c++) {
      double delta;
      if (have_period(cs, j - c) && repeats(cs, j, c, mag, &delta)) {
        extrapolate(cl, cs, c, delta);
        return;
      }
    }
  }
}

/* Runs the FWD/BWD/SEND/RECV prefix of every stage of class c until all stop at the sync ops. */
static hm_status run_pipeline(const hm_sim_class *cl, class_state *cs, int c, hm_sim_trace *tr) {
  const int p = cs->cfg.nstages;
  for (;;) {
    int progressed = 0, done = 1;
    for (int s = 0; s < p; s++) {
      stage_state *ss = &cs->st[s];
      while (ss->pc < ss->npipe) {
        const hm_op op = hm_schedule_1f1b_op(&cs->cfg, s, ss->pc);
        hm_status st = HM_OK;
        const int r = run_op(cl, cs, c, s, &op, tr, &st);
        if (r < 0) return st;
        if (r == 0) break;
        const int period_end = note_period(cs, s);
        ss->pc++;
        progressed = 1;
        /* a stage that never waits (p = 1) would otherwise run to its end first */
        if (period_end && cs->detect) detect_repeat(cl, cs);
      }
      if (ss->pc < ss->npipe) done = 0;
    }
    if (done) return HM_OK;
    if (!progressed)
      return hm_error(HM_ERR_INTERNAL, "simulator: class %d pipeline deadlocked (op lists do not "
                      "match)", c);
  }
}

/* Seconds stage sg's backward takes from its last layer down to layer lo (included). */
static double bwd_through(const hm_sim_stage *sg, int lo) {
  if (lo <= sg->layer_begin) return sg->bwd;
  const int n = sg->layer_end - sg->layer_begin;
  if (!sg->layer_bwd) return sg->bwd * (double)(sg->layer_end - lo) / n;
  double tail = 0, all = 0;
  for (int i = 0; i < n; i++) {
    all += sg->layer_bwd[i];
    if (sg->layer_begin + i >= lo) tail += sg->layer_bwd[i];
  }
  return all > 0 ? sg->bwd * tail / all : sg->bwd * (double)(sg->layer_end - lo) / n;
}

/* Whether every holder of layers [lo, hi) (all classes) splits them with the same tensor-parallel
 * degree: the runtime overlaps only those buckets (replicas that split a stage differently sum
 * its gradients once, after the backward). */
static int same_tp(const hm_sim_input *in, int lo, int hi) {
  int tp = 0;
  for (int c = 0; c < in->nclasses; c++)
    for (int s = 0; s < in->classes[c].nstages; s++) {
      const hm_sim_stage *sg = &in->classes[c].stages[s];
      if (sg->layer_end <= lo || sg->layer_begin >= hi) continue;
      if (tp && sg->tp != tp) return 0;
      tp = sg->tp;
    }
  return 1;
}

/* When every holder of layers [lo, hi) (all classes) has their final gradients. */
static double bucket_ready(const hm_sim_input *in, class_state *cs, int lo, int hi) {
  const int overlap = in->overlap_sync && same_tp(in, lo, hi);
  double r = 0;
  for (int c = 0; c < in->nclasses; c++) {
    const hm_sim_class *cl = &in->classes[c];
    for (int j = 0; j < cl->nstages; j++) { /* virtual stages */
      const hm_sim_stage *sg = &cl->stages[j];
      if (sg->layer_end <= lo || sg->layer_begin >= hi) continue;
      const vstage_state *vs = &cs[c].vs[j];
      double t = overlap ? vs->last_bwd + bwd_through(sg, lo) : vs->grads_ready;
      if (t > vs->grads_ready) t = vs->grads_ready; /* rounding */
      if (t > r) r = t;
    }
  }
  return r;
}

/* Bytes per device of bucket op of class cl's stage s (a device's chunks share its tp). */
static double bucket_bytes(const hm_sim_input *in, const hm_sim_class *cl, int s, const hm_op *op) {
  double bytes = 0;
  for (int l = op->layer_begin; l < op->layer_end; l++)
    bytes += in->layer_grad_bytes ? in->layer_grad_bytes[l] : 0.0;
  return bytes / cl->stages[s].tp;
}

/* Gradient buckets, each taking hm_sync_allreduce_time (+ staging) on its stage's sync track. */
static hm_status sync_buckets(const hm_sim_input *in, class_state *cs, const hm_sync_model *sync,
                              hm_sim_trace *tr) {
  for (int c = 0; c < in->nclasses; c++) {
    const hm_sim_class *cl = &in->classes[c];
    for (int s = 0; s < cs[c].cfg.nstages; s++) {
      stage_state *ss = &cs[c].st[s];
      const int64_t nops = hm_schedule_1f1b_nops(&cs[c].cfg, s);
      double comm_t = in->overlap_sync ? 0.0 : ss->t;
      for (; ss->pc < nops; ss->pc++) {
        const hm_op o = hm_schedule_1f1b_op(&cs[c].cfg, s, ss->pc), *op = &o;
        if (op->kind != HM_OP_ALLREDUCE) break;
        const double bytes = bucket_bytes(in, cl, s, op);
        double ready = bucket_ready(in, cs, op->layer_begin, op->layer_end);
        double start = comm_t > ready ? comm_t : ready;
        double d = hm_sync_allreduce_time(sync, bytes) + sync_staging(in, bytes);
        HM_TRY(trace_add(tr, c, s, 1, op->kind, -1, start, d));
        comm_t = start + d;
        ss->comm_busy += d;
      }
      if (comm_t > ss->t) ss->t = comm_t;
    }
  }
  return HM_OK;
}

/* Pools spanned by the holders of layers [lo, hi) (all classes); `all` when some holder's pool is
 * not known (or its devices sit in several). */
static int bucket_pools(const hm_sim_input *in, int lo, int hi, int all) {
  enum { MAXP = 16 };
  int seen[MAXP], n = 0;
  for (int c = 0; c < in->nclasses; c++)
    for (int j = 0; j < in->classes[c].nstages; j++) {
      const hm_sim_stage *sg = &in->classes[c].stages[j];
      if (sg->layer_end <= lo || sg->layer_begin >= hi) continue;
      if (sg->in_pool <= 0) return all;
      int i = 0;
      while (i < n && seen[i] != sg->in_pool) i++;
      if (i < n) continue;
      if (n == MAXP) return all;
      seen[n++] = sg->in_pool;
    }
  return n < all ? n : all;
}

/* The job of bucket op of class c's stage s on the shared pool link: its holders' readiness, and
 * its allreduce in the parts the link divides (all before it when it does not cross). */
static hm_share_job bucket_job(const hm_sim_input *in, class_state *cs, const hm_sync_model *sync,
                               int c, int s, const hm_op *op) {
  const hm_sim_class *cl = &in->classes[c];
  const double bytes = bucket_bytes(in, cl, s, op), staging = sync_staging(in, bytes);
  hm_sync_model m = *sync;
  m.ngroups = bucket_pools(in, op->layer_begin, op->layer_end, sync->ngroups);
  hm_share_job j = {.ready = bucket_ready(in, cs, op->layer_begin, op->layer_end)};
  if (m.ngroups <= 1) {
    j.pre = hm_sync_allreduce_time(&m, bytes) + staging;
    return j;
  }
  hm_sync_parts parts;
  hm_sync_split(&m, bytes, &parts);
  j.pre = parts.pre;
  j.bytes = parts.bytes;
  j.devices = parts.crossing * cl->nreplicas * cl->stages[s].tp;
  j.post = parts.post + staging;
  return j;
}

/* Gradient buckets of stage s of class c from its cursor on (NULL jobs: only counted). */
static int stage_jobs(const hm_sim_input *in, class_state *cs, const hm_sync_model *sync, int c,
                      int s, hm_share_job *jobs) {
  const int64_t nops = hm_schedule_1f1b_nops(&cs[c].cfg, s);
  int k = 0;
  for (int64_t pc = cs[c].st[s].pc; pc < nops; pc++, k++) {
    const hm_op op = hm_schedule_1f1b_op(&cs[c].cfg, s, pc);
    if (op.kind != HM_OP_ALLREDUCE) break;
    if (jobs) jobs[k] = bucket_job(in, cs, sync, c, s, &op);
  }
  return k;
}

/* Gradient buckets when the replicas span pools whose link the simulator shares
 * (sync->pool_bandwidth > 0): each stage's buckets run on its sync track as in sync_buckets, but
 * the part of a bucket that crosses between pools moves its bytes at the share of the link that
 * its devices get among every device crossing at that moment (hm_share_run), and a bucket whose
 * holders all sit in one pool does not cross (an allreduce inside the pool). */
static hm_status sync_across_pools(const hm_sim_input *in, class_state *cs,
                                   const hm_sync_model *sync, hm_sim_trace *tr) {
  int ntracks = 0, njobs = 0;
  for (int c = 0; c < in->nclasses; c++)
    for (int s = 0; s < cs[c].cfg.nstages; s++, ntracks++) njobs += stage_jobs(in, cs, sync, c, s, NULL);
  hm_share_job *jobs = hm_calloc((size_t)njobs + 1, sizeof *jobs, "simulator sync");
  int *first = hm_calloc((size_t)ntracks + 1, sizeof *first, "simulator sync");
  double *track_free = hm_calloc((size_t)ntracks + 1, sizeof *track_free, "simulator sync");
  hm_status st = HM_ERR_NOMEM;
  if (!jobs || !first || !track_free) goto done;
  for (int c = 0, t = 0; c < in->nclasses; c++)
    for (int s = 0; s < cs[c].cfg.nstages; s++, t++) {
      track_free[t] = in->overlap_sync ? 0.0 : cs[c].st[s].t;
      first[t + 1] = first[t] + stage_jobs(in, cs, sync, c, s, jobs + first[t]);
    }
  if ((st = hm_share_run(jobs, first, track_free, ntracks, sync->pool_bandwidth,
                         sync->link.bandwidth)) != HM_OK)
    goto done;
  for (int c = 0, t = 0; c < in->nclasses; c++)
    for (int s = 0; s < cs[c].cfg.nstages; s++, t++) {
      stage_state *ss = &cs[c].st[s];
      for (int i = first[t]; i < first[t + 1]; i++, ss->pc++) {
        const double d = jobs[i].end - jobs[i].start;
        if ((st = trace_add(tr, c, s, 1, HM_OP_ALLREDUCE, -1, jobs[i].start, d)) != HM_OK) goto done;
        ss->comm_busy += d;
        if (jobs[i].end > ss->t) ss->t = jobs[i].end;
      }
      if (track_free[t] > ss->t) ss->t = track_free[t];
    }
done:
  free(jobs);
  free(first);
  free(track_free);
  return st;
}

static hm_status check_input(const hm_sim_input *in) {
  if (!in || in->nclasses < 1 || !in->classes)
    return hm_error(HM_ERR_INVALID_ARG, "simulator: no replica classes");
  for (int c = 0; c < in->nclasses; c++) {
    const hm_sim_class *cl = &in->classes[c];
    if (cl->nstages < 1 || cl->nmicro < 1 || cl->nreplicas < 1 || !cl->stages)
      return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d needs stages, micro-batches and "
                      "replicas >= 1 (got %d, %d, %d)", c, cl->nstages, cl->nmicro, cl->nreplicas);
    for (int s = 0; s < cl->nstages; s++) {
      const hm_sim_stage *sg = &cl->stages[s];
      if (sg->layer_begin < 0 || sg->layer_end > in->nlayers || sg->layer_end <= sg->layer_begin)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d has layers [%d, %d) "
                        "outside [0, %d)", c, s, sg->layer_begin, sg->layer_end, in->nlayers);
      if (s > 0 && sg->layer_begin != cl->stages[s - 1].layer_end)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d does not start where "
                        "stage %d ends", c, s, s - 1);
      if (!(sg->fwd >= 0) || !(sg->bwd >= 0) || sg->tp < 1)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d stage %d has negative time or "
                        "tp < 1", c, s);
    }
    if (cl->stages[0].layer_begin != 0 || cl->stages[cl->nstages - 1].layer_end != in->nlayers)
      return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d does not cover layers [0, %d)", c,
                      in->nlayers);
    const int v = chunks_of(cl), p = cl->nstages / v;
    if (v > 1 && (cl->nstages % v || p < 2))
      return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d: %d virtual stages are not %d chunks "
                      "of at least 2 stages", c, cl->nstages, v);
    for (int j = p; j < cl->nstages; j++)
      if (cl->stages[j].tp != cl->stages[j % p].tp)
        return hm_error(HM_ERR_INVALID_ARG, "simulator: class %d virtual stage %d runs on stage %d "
                        "but has another tp", c, j, j % p);
  }
  return HM_OK;
}

static void free_states(class_state *cs, int n) {
  if (!cs) return;
  for (int c = 0; c < n; c++) {
    if (cs[c].vs)
      for (int j = 0; j < cs[c].nv; j++) {
        free(cs[c].vs[j].act_in);
        free(cs[c].vs[j].grad_in);
      }
    free(cs[c].vs);
    free(cs[c].st);
    free(cs[c].bounds);
    free(cs[c].snap);
    free(cs[c].snap_period);
  }
  free(cs);
}

/* Stage s's op cursor, its repeating part and the seconds one repeat takes. */
static hm_status setup_vstage(class_state *cs, int j) {
  vstage_state *vs = &cs->vs[j];
  vs->act_in = hm_malloc((size_t)cs->ring * sizeof *vs->act_in, "simulator arrivals");
  vs->grad_in = hm_malloc((size_t)cs->ring * sizeof *vs->grad_in, "simulator arrivals");
  if (!vs->act_in || !vs->grad_in) return HM_ERR_NOMEM;
  for (int i = 0; i < cs->ring; i++) vs->act_in[i].micro = vs->grad_in[i].micro = -1;
  return HM_OK;
}

static hm_status setup_stage(const hm_sim_class *cl, class_state *cs, int s) {
  stage_state *ss = &cs->st[s];
  ss->npipe = hm_schedule_1f1b_nops(&cs->cfg, s);
  while (ss->npipe > 0 && !is_pipeline_op(hm_schedule_1f1b_op(&cs->cfg, s, ss->npipe - 1).kind))
    ss->npipe--;
  hm_schedule_1f1b_steady(&cs->cfg, s, &ss->steady_begin, &ss->period_ops, &ss->nperiods);
  ss->last_period = -1;
  for (int i = 0; ss->nperiods > 0 && i < ss->period_ops; i++) {
    const hm_op op = hm_schedule_1f1b_op(&cs->cfg, s, ss->steady_begin + i);
    if (op.kind == HM_OP_FWD) ss->period_fb += cl->stages[s].fwd;
    if (op.kind == HM_OP_BWD) ss->period_fb += cl->stages[s].bwd;
    if (op.kind == HM_OP_SEND_ACT || op.kind == HM_OP_SEND_GRAD)
      ss->period_comm += send_time(cl, s, op.kind);
  }
  return HM_OK;
}

static hm_status setup_class(const hm_sim_input *in, const hm_sim_class *cl, class_state *cs,
                             int total_replicas) {
  const int v = chunks_of(cl), p = devstages_of(cl), m = cl->nmicro;
  cs->nv = cl->nstages;
  cs->bounds = hm_malloc((size_t)(cs->nv + 1) * sizeof *cs->bounds, "stage bounds");
  if (!cs->bounds) return HM_ERR_NOMEM;
  for (int j = 0; j < cs->nv; j++) cs->bounds[j] = cl->stages[j].layer_begin;
  cs->bounds[cs->nv] = cl->stages[cs->nv - 1].layer_end;
  cs->cfg = (hm_schedule_config){.nstages = p, .nmicro = m, .stage_layers = cs->bounds,
                                 .data_parallel = total_replicas > 1,
                                 .layers_per_bucket = in->layers_per_bucket,
                                 .tied_embeddings = in->tied_embeddings, .nchunks = v};
  HM_TRY(hm_schedule_1f1b_check(&cs->cfg));
  /* a stage has at most p-s+1 transfers to it in flight (1F1B holds p-s micro-batches);
   * interleaved: one slot per micro-batch (m is bounded by the generator) */
  cs->ring = v > 1 ? m : 2 * p + 4;
  const int full = in->full_micro > 0 ? in->full_micro : HM_SIM_FULL_MICRO;
  /* snapshots take O(p^2) memory: classes of more stages go op by op (still O(p) memory) */
  cs->detect = v == 1 && m > full && m > p && p <= HM_SIM_EXTRAPOLATE_MAX_STAGES;
  cs->cmax = 2 * p + 2;
  cs->hist = cs->cmax + 2 * p + 8; /* stages run at most p+2 periods apart */
  cs->st = hm_calloc((size_t)p, sizeof *cs->st, "simulator stages");
  cs->vs = hm_calloc((size_t)cs->nv, sizeof *cs->vs, "simulator stages");
  if (!cs->st || !cs->vs) return HM_ERR_NOMEM;
  for (int j = 0; j < cs->nv; j++) HM_TRY(setup_vstage(cs, j));
  if (cs->detect) {
    cs->snap = hm_malloc((size_t)cs->hist * p * NSNAP * sizeof *cs->snap, "simulator snapshots");
    cs->snap_period = hm_malloc((size_t)cs->hist * p * sizeof *cs->snap_period, "simulator snapshots");
    if (!cs->snap || !cs->snap_period) return HM_ERR_NOMEM;
    for (size_t i = 0; i < (size_t)cs->hist * p; i++) cs->snap_period[i] = -1;
  }
  for (int s = 0; s < p; s++) HM_TRY(setup_stage(cl, cs, s));
  return HM_OK;
}

hm_status hm_simulate(const hm_sim_input *in, hm_sim_result *res, hm_sim_trace *tr) {
  if (!res) return hm_error(HM_ERR_INVALID_ARG, "simulator: result is NULL");
  memset(res, 0, sizeof *res);
  HM_TRY(check_input(in));
  const int nc = in->nclasses;
  int total_replicas = 0;
  for (int c = 0; c < nc; c++) total_replicas += in->classes[c].nreplicas;
  hm_sync_model sync = in->sync;
  sync.nranks = total_replicas;

  class_state *cs = hm_calloc((size_t)nc, sizeof *cs, "simulator classes");
  if (!cs) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int c = 0; c < nc && st == HM_OK; c++) st = setup_class(in, &in->classes[c], &cs[c], total_replicas);
  for (int c = 0; c < nc && st == HM_OK; c++) st = run_pipeline(&in->classes[c], &cs[c], c, tr);
  if (st != HM_OK) goto fail;

  /* gradient buckets (comm track; a stage's buckets run one after another; overlapped, on a
   * track of their own that nothing else of the step uses) */
  st = sync.ngroups > 1 && sync.pool_bandwidth > 0 ? sync_across_pools(in, cs, &sync, tr)
                                                    : sync_buckets(in, cs, &sync, tr);
  if (st != HM_OK) goto fail;
  /* tied embedding: both ends of each replica exchange the embedding gradient */
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    const int p = cs[c].cfg.nstages;
    stage_state *a = &cs[c].st[0], *b = &cs[c].st[p - 1];
    const hm_schedule_config *cfg = &cs[c].cfg;
    if (p > 1 && a->pc < hm_schedule_1f1b_nops(cfg, 0) &&
        hm_schedule_1f1b_op(cfg, 0, a->pc).kind == HM_OP_TIED_EMB_SYNC) {
      if (b->pc >= hm_schedule_1f1b_nops(cfg, p - 1) ||
          hm_schedule_1f1b_op(cfg, p - 1, b->pc).kind != HM_OP_TIED_EMB_SYNC) {
        st = hm_error(HM_ERR_INTERNAL, "simulator: class %d tied sync only on stage 0", c);
        goto fail;
      }
      double bytes = in->layer_grad_bytes ? in->layer_grad_bytes[0] / cl->stages[0].tp : 0.0;
      double d = 0;
      hm_cost_best_algo(HM_COLL_ALLREDUCE, 2, bytes, &in->tied_link, &d);
      double sa = hm_cost_staging(&cl->stages[0].staging, bytes), sb = hm_cost_staging(&cl->stages[p - 1].staging, bytes);
      d += sa > sb ? sa : sb;
      double start = a->t > b->t ? a->t : b->t;
      if ((st = trace_add(tr, c, 0, 1, HM_OP_TIED_EMB_SYNC, -1, start, d)) != HM_OK) goto fail;
      if ((st = trace_add(tr, c, p - 1, 1, HM_OP_TIED_EMB_SYNC, -1, start, d)) != HM_OK) goto fail;
      a->t = b->t = start + d;
      a->comm_busy += d;
      b->comm_busy += d;
      a->pc++;
      b->pc++;
    }
  }
  /* gradient norm: every rank of every class, then each stage's optimizer */
  double norm_start = 0;
  for (int c = 0; c < nc; c++)
    for (int s = 0; s < cs[c].cfg.nstages; s++)
      if (cs[c].st[s].t > norm_start) norm_start = cs[c].st[s].t;
  res->nclasses = nc;
  res->nstages = hm_calloc((size_t)nc, sizeof *res->nstages, "simulator result");
  res->stages = hm_calloc((size_t)nc, sizeof *res->stages, "simulator result");
  if (!res->nstages || !res->stages) {
    st = HM_ERR_NOMEM;
    goto fail;
  }
  double busy_w = 0, stages_w = 0;
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    res->nstages[c] = cl->nstages;
    res->stages[c] = hm_calloc((size_t)cl->nstages, sizeof **res->stages, "simulator result");
    if (!res->stages[c]) {
      st = HM_ERR_NOMEM;
      goto fail;
    }
    for (int s = 0; s < cs[c].cfg.nstages; s++) {
      stage_state *ss = &cs[c].st[s];
      const int64_t nops = hm_schedule_1f1b_nops(&cs[c].cfg, s);
      for (; ss->pc < nops; ss->pc++) {
        const hm_op o = hm_schedule_1f1b_op(&cs[c].cfg, s, ss->pc), *op = &o;
        if (op->kind == HM_OP_GRAD_NORM) {
          if ((st = trace_add(tr, c, s, 1, op->kind, -1, norm_start, in->grad_norm_time)) != HM_OK)
            goto fail;
          ss->t = norm_start + in->grad_norm_time;
          ss->comm_busy += in->grad_norm_time;
        } else if (op->kind == HM_OP_OPTIMIZER) {
          const double d = cl->stages[op->chunk * cs[c].cfg.nstages + s].optimizer;
          if ((st = trace_add(tr, c, s, 0, op->kind, -1, ss->t, d)) != HM_OK) goto fail;
          ss->t += d;
          ss->busy += d;
        } else {
          st = hm_error(HM_ERR_INTERNAL, "simulator: unexpected %s after the sync phase",
                        hm_op_kind_name(op->kind));
          goto fail;
        }
      }
      ss->busy += ss->busy_fb;
      if (ss->t > res->step_time) res->step_time = ss->t;
    }
  }
  for (int c = 0; c < nc; c++) {
    const hm_sim_class *cl = &in->classes[c];
    const int p = cs[c].cfg.nstages;
    for (int s = 0; s < p; s++) {
      const stage_state *ss = &cs[c].st[s];
      const hm_sim_stage *sg = &cl->stages[s];
      hm_sim_stage_result *r = &res->stages[c][s];
      r->busy = ss->busy;
      r->comm = ss->comm_busy;
      r->idle = res->step_time - ss->busy;
      r->end = ss->t;
      r->max_inflight = ss->max_inflight;
      if (cs[c].cfg.nchunks > 1) { /* the device holds every chunk's weights */
        double stat = 0;
        for (int j = s; j < cl->nstages; j += p) stat += cl->stages[j].mem_static;
        r->mem_peak = stat + ss->max_live_bytes;
      } else {
        r->mem_peak = sg->mem_static + r->max_inflight * sg->mem_act;
      }
      if (r->mem_peak > res->mem_peak_max) res->mem_peak_max = r->mem_peak;
      if (sg->mem_capacity > 0 && r->mem_peak > sg->mem_capacity) res->over_memory = 1;
      busy_w += (double)cl->nreplicas * ss->busy_fb;
      stages_w += (double)cl->nreplicas;
    }
    for (int j = p; j < cl->nstages; j++) res->stages[c][j] = res->stages[c][j % p];
  }
  for (int c = 0; c < nc; c++) res->periods_skipped += cs[c].skipped;
  res->bubble_fraction = res->step_time > 0 ? 1.0 - busy_w / (stages_w * res->step_time) : 0.0;
  free_states(cs, nc);
  return HM_OK;
fail:
  free_states(cs, nc);
  hm_sim_result_free(res);
  return st;
}

void hm_sim_result_free(hm_sim_result *r) {
  if (!r) return;
  if (r->stages)
    for (int c = 0; c < r->nclasses; c++) free(r->stages[c]);
  free(r->stages);
  free(r->nstages);
  r->stages = NULL;
  r->nstages = NULL;
}

void hm_sim_trace_free(hm_sim_trace *t) {
  if (!t) return;
  free(t->events);
  memset(t, 0, sizeof *t);
}

hm_status hm_sim_trace_write(const hm_sim_trace *t, const char *path) {
  if (!t || !path) return hm_error(HM_ERR_INVALID_ARG, "trace: NULL argument");
  cJSON *root = cJSON_CreateObject();
  cJSON *evs = cJSON_AddArrayToObject(root, "traceEvents");
  if (!root || !evs) {
    cJSON_Delete(root);
    return hm_error(HM_ERR_NOMEM, "trace: cannot build JSON");
  }
  /* name each process (class/stage) and thread (compute/comm) once */
  int *named = hm_calloc((size_t)t->nevents + 1, sizeof *named, "trace names");
  int nnamed = 0;
  if (!named) {
    cJSON_Delete(root);
    return HM_ERR_NOMEM;
  }
  for (int i = 0; i < t->nevents; i++) {
    const hm_sim_event *e = &t->events[i];
    const int pid = e->cls * 1000 + e->stage;
    int first = 1;
    for (int j = 0; j < nnamed && first; j++)
      if (named[j] == pid) first = 0;
    if (!first) continue;
    named[nnamed++] = pid;
    char name[64];
    snprintf(name, sizeof name, "class %d stage %d", e->cls, e->stage);
    for (int tid = -1; tid < 2; tid++) {
      cJSON *m = cJSON_CreateObject();
      cJSON_AddStringToObject(m, "name", tid < 0 ? "process_name" : "thread_name");
      cJSON_AddStringToObject(m, "ph", "M");
      cJSON_AddNumberToObject(m, "pid", e->cls * 1000 + e->stage);
      cJSON_AddNumberToObject(m, "tid", tid < 0 ? 0 : tid);
      cJSON *args = cJSON_AddObjectToObject(m, "args");
      cJSON_AddStringToObject(args, "name", tid < 0 ? name : (tid == 0 ? "compute" : "comm"));
      cJSON_AddItemToArray(evs, m);
    }
  }
  free(named);
  for (int i = 0; i < t->nevents; i++) {
    const hm_sim_event *e = &t->events[i];
    cJSON *o = cJSON_CreateObject();
    char name[48];
    if (e->micro >= 0)
      snprintf(name, sizeof name, "%s %d", hm_op_kind_name(e->kind), e->micro);
    else
      snprintf(name, sizeof name, "%s", hm_op_kind_name(e->kind));
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "cat", e->track == 0 ? "compute" : "comm");
    cJSON_AddStringToObject(o, "ph", "X");
    cJSON_AddNumberToObject(o, "pid", e->cls * 1000 + e->stage);
    cJSON_AddNumberToObject(o, "tid", e->track);
    cJSON_AddNumberToObject(o, "ts", e->start * 1e6);
    cJSON_AddNumberToObject(o, "dur", e->dur * 1e6);
    cJSON_AddItemToArray(evs, o);
  }
  char *text = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!text) return hm_error(HM_ERR_NOMEM, "trace: cannot print JSON");
  hm_status st = hm_atomic_write_file(path, text, strlen(text));
  free(text);
  return st == HM_OK ? HM_OK : hm_error_context(st, "trace: ");
}
