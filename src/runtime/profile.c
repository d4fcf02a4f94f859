/* hetmix profiler, the spec side: decides what to measure from the cluster and model specs,
 * runs the device half (profile_layers.c) and the link half (profile_links.c), and fills the
 * profile the planner reads (include/hetmix/spec.h, docs/spec.md "Profile"; docs/profile.md).
 *
 * Measured: every layer kind of the model on every device type that has a backend string, at
 * each micro-batch size; the intra-host link between every two such types that share a host,
 * from ping-pong between two local processes. Not measured: inter-host links (one machine) and
 * device types without a backend here (their analytic estimates stay in force).
 * The device and comm halves live in their own files because device.h (through comm.h) and
 * spec.h each define an `hm_spec_dtype`; this file includes only spec.h. */
#include "hetmix/profile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/spec.h"
#include "profile_passes.h"
#include "util/util.h"

void hm_profile_options_default(hm_profile_options *o) {
  memset(o, 0, sizeof *o);
  o->warmup = 1;
  o->reps = 9;
  o->passes = 3;
  o->copies = 1;
  o->timeout_s = 3600;
  o->budget_s = 2.0;
  o->min_s = 0;
  o->links = 1;
  o->tp_split = 1;
  o->link_transport = "shm";
  o->link_probe.seconds_per_size = 0.05;
  o->link_probe.timeout_ms = 30000;
  o->seed = 1234;
}

static void hm_say(const hm_profile_options *o, const char *fmt, const char *a, const char *b) {
  if (!o->progress) return;
  char line[512];
  snprintf(line, sizeof line, fmt, a, b);
  o->progress(line, o->user);
}

/* Micro-batch sizes: given ones sorted and deduplicated, or 1, 2, 4. */
static hm_status hm_pick_mbs(const hm_profile_options *o, int64_t *mbs, int *n) {
  static const int64_t def[] = {1, 2, 4};
  int k = 0;
  if (o->n_micro_batches <= 0) {
    for (k = 0; k < 3; k++) mbs[k] = def[k];
    *n = k;
    return HM_OK;
  }
  if (o->n_micro_batches > HM_PROFILE_MAX_MBS)
    return hm_error(HM_ERR_INVALID_ARG, "profile: %d micro-batch sizes, at most %d", o->n_micro_batches,
                    HM_PROFILE_MAX_MBS);
  for (int i = 0; i < o->n_micro_batches; i++) {
    int64_t v = o->micro_batches[i];
    if (v < 1 || v > 65536)
      return hm_error(HM_ERR_INVALID_ARG, "profile: micro-batch size %lld outside 1..65536", (long long)v);
    int j = k;
    while (j > 0 && mbs[j - 1] > v) {
      mbs[j] = mbs[j - 1];
      j--;
    }
    if (j > 0 && mbs[j - 1] == v) { /* duplicate: undo the shift */
      for (; j < k; j++) mbs[j] = mbs[j + 1];
      continue;
    }
    mbs[j] = v;
    k++;
  }
  *n = k;
  return HM_OK;
}

/* 1 when type k is one to measure. Unknown names in the filter were rejected before. */
static int hm_type_selected(const hm_profile_options *o, const hm_cluster *c, int k) {
  if (!c->types[k].backend[0]) return 0;
  if (o->ntypes <= 0) return 1;
  for (int i = 0; i < o->ntypes; i++)
    if (strcmp(o->types[i], c->types[k].name) == 0) return 1;
  return 0;
}

static hm_status hm_check_type_filter(const hm_profile_options *o, const hm_cluster *c) {
  if (o->ntypes < 0 || o->ntypes > (int)(sizeof o->types / sizeof o->types[0]))
    return hm_error(HM_ERR_INVALID_ARG, "profile: %d type names, at most 16", o->ntypes);
  for (int i = 0; i < o->ntypes; i++) {
    int k = o->types[i] ? hm_cluster_find_type(c, o->types[i]) : -1;
    if (k < 0) {
      char known[512] = "";
      for (int t = 0; t < c->ntypes; t++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", t ? ", " : "", c->types[t].name);
      return hm_error(HM_ERR_NOT_FOUND, "profile: cluster '%s' has no device type '%s' (its types: %s)", c->name,
                      o->types[i] ? o->types[i] : "(null)", known);
    }
    if (!c->types[k].backend[0])
      return hm_error(HM_ERR_INVALID_ARG,
                      "profile: device type '%s' has no \"backend\" in cluster '%s', so it cannot be run here",
                      c->types[k].name, c->name);
  }
  return HM_OK;
}

static int hm_has_link(const hm_profile *p, const char *a, const char *b, int inter_host) {
  for (int i = 0; i < p->nlinks; i++) {
    const hm_profile_link *l = &p->links[i];
    if (l->inter_host != inter_host) continue;
    if ((!strcmp(l->type_a, a) && !strcmp(l->type_b, b)) || (!strcmp(l->type_a, b) && !strcmp(l->type_b, a)))
      return 1;
  }
  return 0;
}

/* Intra-host entries for every two measured types that share a host (a type with itself when a
 * host holds two or more of it): processes on one host talk over the same transport whatever
 * their device backends are, so one probe serves every pair. */
static hm_status hm_add_links(const hm_profile_options *o, const hm_cluster *c, const hm_link_fit *fit,
                              hm_profile *p) {
  for (int g = 0; g < c->ngroups; g++) {
    const hm_host_group *hg = &c->groups[g];
    for (int i = 0; i < hg->nkinds; i++)
      for (int j = i; j < hg->nkinds; j++) {
        const int ta = hg->dev[i].type, tb = hg->dev[j].type;
        if (i == j && hg->dev[i].count < 2) continue;
        if (!hm_type_selected(o, c, ta) || !hm_type_selected(o, c, tb)) continue;
        if (hm_has_link(p, c->types[ta].name, c->types[tb].name, 0)) continue;
        hm_profile_link e;
        memset(&e, 0, sizeof e);
        hm_strcpy(e.type_a, sizeof e.type_a, c->types[ta].name);
        hm_strcpy(e.type_b, sizeof e.type_b, c->types[tb].name);
        e.inter_host = 0;
        e.link.bandwidth = fit->bandwidth;
        e.link.latency = fit->latency;
        e.a = e.b = -1;
        HM_TRY(hm_profile_add_link(p, &e));
      }
  }
  return HM_OK;
}

/* The tensor-parallel allreduce on this host's transport, timed among 2, 4 and 8 processes up to
 * the most devices of one measured type a host holds (the planner's tp degrees), recorded per
 * rank count in profile.tp_allreduce. */
static hm_status hm_measure_tp_allreduce(const hm_profile_options *o, const hm_cluster *c, const char *transport,
                                         hm_profile *p) {
  int most = 1;
  for (int g = 0; g < c->ngroups; g++)
    for (int i = 0; i < c->groups[g].nkinds; i++)
      if (hm_type_selected(o, c, c->groups[g].dev[i].type) && c->groups[g].dev[i].count > most)
        most = (int)c->groups[g].dev[i].count;
  for (int r = 2; r <= most && r <= 8; r *= 2) {
    hm_link_probe_options lo = o->link_probe;
    lo.transport = transport;
    lo.allreduce_ranks = r;
    char ranks[16];
    snprintf(ranks, sizeof ranks, "%d", r);
    hm_say(o, "timing the tensor-parallel allreduce among %s processes over %s", ranks, transport);
    hm_link_fit fit;
    HM_TRY(hm_profile_link_probe(&lo, &fit));
    hm_profile_allreduce e = {r, fit.latency, fit.bandwidth};
    int k = 0;
    while (k < p->ntp_allreduce && p->tp_allreduce[k].ranks != r) k++;
    if (k == HM_PROFILE_MAX_TP_ALLREDUCE) break;
    if (k == p->ntp_allreduce) p->ntp_allreduce++;
    p->tp_allreduce[k] = e;
  }
  return HM_OK;
}

static hm_status hm_measure_links(const hm_profile_options *o, const hm_cluster *c, hm_profile *p,
                                  hm_profile_report *rep) {
  static const char *const transports[2] = {"shm", "tcp"};
  const char *record = o->link_transport ? o->link_transport : "shm";
  if (strcmp(record, "shm") && strcmp(record, "tcp"))
    return hm_error(HM_ERR_INVALID_ARG, "profile: link transport '%s' is not shm or tcp", record);
  const hm_link_fit *chosen = NULL;
  for (int t = 0; t < 2; t++) {
    hm_link_probe_options lo = o->link_probe;
    lo.transport = transports[t];
    hm_say(o, "probing %s ping-pong between two processes%s", transports[t], "");
    hm_link_fit *fit = &rep->fits[rep->nfits];
    hm_status st = hm_profile_link_probe(&lo, fit);
    if (st != HM_OK) return st;
    rep->nfits++;
    if (!strcmp(transports[t], record)) chosen = fit;
  }
  HM_TRY(hm_add_links(o, c, chosen, p));
  return hm_measure_tp_allreduce(o, c, record, p);
}

/* ---- links between the cluster's hosts (a testbed: each host the namespace named like it) ---- */

/* Two hosts of the class: same pool (cross = 0) or two pools (cross = 1); 0 when none. */
static int hm_class_hosts(const hm_cluster *c, int cross, const char **a, const char **b) {
  for (int ga = 0; ga < c->ngroups; ga++)
    for (int gb = ga; gb < c->ngroups; gb++) {
      const hm_host_group *x = &c->groups[ga], *y = &c->groups[gb];
      if ((x->pool != y->pool) != cross || !x->hostnames || !y->hostnames) continue;
      if (ga == gb && x->count < 2) continue;
      *a = x->hostnames[0];
      *b = y->hostnames[ga == gb ? 1 : 0];
      return 1;
    }
  return 0;
}

/* The class of every host pair of two types: 0 same pool, 1 two pools, -1 both occur, -2 none. */
static int hm_pair_class(const hm_cluster *c, int ta, int tb) {
  int seen = -2;
  for (int ga = 0; ga < c->ngroups; ga++)
    for (int gb = 0; gb < c->ngroups; gb++) {
      const hm_host_group *x = &c->groups[ga], *y = &c->groups[gb];
      int has = 0;
      for (int i = 0; i < x->nkinds; i++)
        for (int j = 0; j < y->nkinds; j++) has |= x->dev[i].type == ta && y->dev[j].type == tb;
      if (!has || (ga == gb && x->count < 2)) continue;
      const int k = x->pool != y->pool;
      seen = seen == -2 ? k : seen == k ? k : -1;
    }
  return seen;
}

/* Inter-host entries for every two measured types whose host pairs are all of one class. */
static hm_status hm_add_host_links(const hm_profile_options *o, const hm_cluster *c, const hm_link_fit *fit[2],
                                   hm_profile *p) {
  for (int ta = 0; ta < c->ntypes; ta++)
    for (int tb = ta; tb < c->ntypes; tb++) {
      const int k = hm_pair_class(c, ta, tb);
      if (k < 0 || !fit[k] || !hm_type_selected(o, c, ta) || !hm_type_selected(o, c, tb)) continue;
      if (hm_has_link(p, c->types[ta].name, c->types[tb].name, 1)) continue;
      hm_profile_link e;
      memset(&e, 0, sizeof e);
      hm_strcpy(e.type_a, sizeof e.type_a, c->types[ta].name);
      hm_strcpy(e.type_b, sizeof e.type_b, c->types[tb].name);
      e.inter_host = 1;
      e.link.bandwidth = fit[k]->bandwidth;
      e.link.latency = fit[k]->latency;
      e.a = e.b = -1;
      HM_TRY(hm_profile_add_link(p, &e));
    }
  return HM_OK;
}

/* The testbed's links are rate-shaped (htb): their figures come from the large messages. */
static hm_status hm_refit_rate(hm_link_fit *f) {
  HM_TRY(hm_link_fit_rate(f->bytes, f->seconds, f->npoints, &f->latency, &f->bandwidth, &f->burst));
  f->max_rel_err = 0;
  for (int i = 0; i < f->npoints; i++) {
    const double e = fabs(hm_link_fit_time(f, f->bytes[i]) - f->seconds[i]) / f->seconds[i];
    if (e > f->max_rel_err) f->max_rel_err = e;
  }
  return HM_OK;
}

static hm_status hm_measure_host_links(const hm_profile_options *o, const hm_cluster *c, hm_profile *p,
                                       hm_profile_report *rep) {
  static const char *const names[2] = {"pool", "cross"};
  const hm_link_fit *fit[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++) {
    const char *a, *b;
    if (!hm_class_hosts(c, k, &a, &b)) continue;
    hm_link_probe_options lo = o->link_probe;
    if (lo.nsizes <= 0) { /* shaped links are slow: up to 1 MiB (16 MiB would take seconds a round trip) */
      static const size_t sizes[] = {8, 4096, 65536, 262144, 1 << 20};
      lo.nsizes = (int)(sizeof sizes / sizeof sizes[0]);
      memcpy(lo.sizes, sizes, sizeof sizes);
    }
    lo.transport = "tcp";
    lo.netns[0] = a;
    lo.netns[1] = b;
    char what[300];
    snprintf(what, sizeof what, "%s and %s", a, b);
    hm_say(o, "probing the %s link: tcp ping-pong between network namespaces %s", names[k], what);
    hm_link_fit *f = &rep->fits[rep->nfits];
    hm_status st = hm_profile_link_probe(&lo, f);
    if (st == HM_OK) st = hm_refit_rate(f);
    if (st != HM_OK) return hm_error_context(st, "%s link (%s - %s): ", names[k], a, b);
    hm_strcpy(f->transport, sizeof f->transport, names[k]);
    rep->nfits++;
    fit[k] = f;
    p->host_link[k] = (hm_link){f->bandwidth, f->latency, 0, f->burst};
  }
  return hm_add_host_links(o, c, fit, p);
}

/* Each type alone: at least `passes` passes over the types, and more until o->min_s seconds have
 * gone (at most HM_PROFILE_MAX_PASSES), in alternating order (a, b, then b, a, ...), each timing
 * every layer kind and size with reps/passes rounds after the warm-up; per entry the median of
 * the passes is kept, so a slow stretch of a shared machine lands on every type alike and moves
 * the median of none. The spread is the larger of the passes' own (their median) and the one
 * between the passes. out is (nsel, per). */
static hm_status hm_measure_passes(const hm_profile_options *o, const hm_cluster *c, const int *sel, int nsel,
                                   const hm_spec_model_config *shape, const int *layers, int nkinds,
                                   const int64_t *mbs, int nmbs, int warmup, int reps, hm_layer_timing *out,
                                   char (*descs)[256]) {
  enum { MAXP = HM_PROFILE_MAX_PASSES };
  const int passes = o->passes < 1 ? 1 : o->passes > reps ? reps : o->passes > MAXP ? MAXP : o->passes;
  const int per_pass = (reps + passes - 1) / passes;
  const size_t per = (size_t)nkinds * (size_t)nmbs;
  const double until = hm_now_s() + (o->min_s > 0 ? o->min_s : 0);
  const int cap = o->min_s > 0 ? MAXP : passes; /* passes there can be */
  hm_layer_timing *pass = hm_calloc(per * (size_t)nsel * (size_t)cap, sizeof *pass, "profile passes");
  if (!pass) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  int done = 0, rounds = per_pass;
  for (; st == HM_OK && done < cap && (done < passes || hm_now_s() < until); done++) {
    const int ps = done;
    const double pass_start = hm_now_s();
    char n[48];
    snprintf(n, sizeof n, "%d of %d", ps + 1, passes);
    if (passes > 1 && ps < passes) hm_say(o, "pass %s%s", n, ps % 2 ? " (types in reverse order)" : "");
    if (ps == passes) {
      snprintf(n, sizeof n, "%g", o->min_s);
      hm_say(o, "more passes until %s s of measuring (each figure the median over the passes)%s", n, "");
    }
    for (int i = 0; st == HM_OK && i < nsel; i++) {
      const int si = ps % 2 ? nsel - 1 - i : i, k = sel[si];
      const hm_device_type *dt = &c->types[k];
      st = hm_profile_time_layers(dt->backend, shape, 1, layers, nkinds, mbs, nmbs, warmup, rounds, o->budget_s,
                                  o->seed + 7919u * (uint64_t)k, pass + ((size_t)ps * nsel + si) * per,
                                  ps == 0 ? descs[si] : NULL, sizeof descs[0], ps < passes ? o->progress : NULL,
                                  o->user);
      if (st != HM_OK) st = hm_error_context(st, "device type '%s': ", dt->name);
    }
    const double now = hm_now_s();
    if (ps + 1 >= passes) rounds = hm_profile_rounds_to_fill(rounds, now - pass_start, until - now, cap - ps - 1);
  }
  for (int si = 0; st == HM_OK && si < nsel; si++)
    for (size_t e = 0; e < per; e++) {
      double f[MAXP], b[MAXP], t[MAXP], w[MAXP];
      hm_layer_timing *x = &out[(size_t)si * per + e];
      *x = pass[(size_t)si * per + e];
      for (int ps = 0; ps < done; ps++) {
        const hm_layer_timing *y = &pass[((size_t)ps * nsel + si) * per + e];
        if (!y->fits) x->fits = 0;
        f[ps] = y->fwd_s, b[ps] = y->bwd_s, t[ps] = y->fwd_s + y->bwd_s, w[ps] = y->spread;
        if (ps == 0) continue;
        x->reps += y->reps;
        x->rejected += y->rejected;
        if (y->mem_bytes > x->mem_bytes) x->mem_bytes = y->mem_bytes;
        if (y->fwd_min_s < x->fwd_min_s) x->fwd_min_s = y->fwd_min_s;
        if (y->bwd_min_s < x->bwd_min_s) x->bwd_min_s = y->bwd_min_s;
      }
      if (!x->fits || done == 1) continue;
      double between = 0, within;
      x->fwd_s = hm_profile_robust(f, done, NULL, NULL);
      x->bwd_s = hm_profile_robust(b, done, NULL, NULL);
      hm_profile_robust(t, done, NULL, &between);
      within = hm_profile_robust(w, done, NULL, NULL);
      x->spread = between > within ? between : within;
    }
  free(pass);
  return st;
}

/* The profile entries of one measured type: every layer kind at every micro-batch size that fit,
 * at tensor-parallel degree tp (1: unsplit). A kind that fits at no size is HM_ERR_NO_FIT. */
static hm_status hm_add_type_entries(const hm_cluster *c, const hm_model *m, int k, int tp, const int *layers,
                                     int nkinds, const int64_t *mbs, int nmbs, const hm_layer_timing *t,
                                     hm_profile *out, hm_profile_report *rep) {
  const hm_device_type *dt = &c->types[k];
  for (int i = 0; i < nkinds; i++) {
    int any = 0;
    for (int j = 0; j < nmbs; j++) {
      const hm_layer_timing *x = &t[i * nmbs + j];
      if (!x->fits) {
        rep->nskipped++;
        continue;
      }
      any = 1;
      hm_profile_layer e;
      memset(&e, 0, sizeof e);
      hm_strcpy(e.device_type, sizeof e.device_type, dt->name);
      hm_strcpy(e.kind, sizeof e.kind, m->layers[layers[i]].kind);
      e.micro_batch = mbs[j];
      e.fwd_s = x->fwd_s;
      e.bwd_s = x->bwd_s;
      e.mem_bytes = x->mem_bytes;
      e.spread = x->spread;
      e.reps = x->reps;
      e.tp = tp;
      e.type = -1;
      HM_TRY(hm_profile_add_layer(out, &e));
    }
    if (!any)
      return hm_error(HM_ERR_NO_FIT, "profile: a %s layer of '%s'%s does not fit device type '%s' (%s) even at "
                      "micro-batch %lld", m->layers[layers[i]].kind, m->name, tp > 1 ? " split" : "", dt->name,
                      dt->backend, (long long)mbs[0]);
  }
  return HM_OK;
}

/* 1 when the planner may run type k at tensor-parallel degree d: a host holds d of it and d
 * splits every layer of the model (the layers' tp_divides). */
static int hm_split_possible(const hm_cluster *c, const hm_model *m, int k, int d) {
  int64_t most = 0;
  for (int g = 0; g < c->ngroups; g++)
    for (int i = 0; i < c->groups[g].nkinds; i++)
      if (c->groups[g].dev[i].type == k && c->groups[g].dev[i].count > most) most = c->groups[g].dev[i].count;
  if (d > most) return 0;
  for (int l = 0; l < m->nlayers; l++)
    if (m->layers[l].tp_divides > 0 && m->layers[l].tp_divides % d != 0) return 0;
  return 1;
}

/* Every measured type split at each tensor-parallel degree the planner tries (2, 4, 8) that it can
 * run: one rank's shard of each layer kind, so the plan costs a split layer as run (the smaller
 * GEMMs, the replicated norms and residual adds, the vocabulary shard's softmax) rather than as
 * the unsplit layer's time over the degree. The d ranks of a stage on host memory share the
 * host's cores, memory and caches, so d processes time the shard at once and the slowest one's
 * figures are kept (the ranks meet at every allreduce, so the stage goes at its slowest rank's
 * pace); a type with device memory of its own (staged) has one device per rank: one process.
 * Forks only (call before this process starts device threads). The allreduces are costed from
 * tp_allreduce. */
static hm_status hm_measure_split(const hm_profile_options *o, const hm_cluster *c, const hm_model *m,
                                  const hm_spec_model_config *shape, const int *sel, const int *staged, int nsel,
                                  const int *layers, int nkinds, const int64_t *mbs, int nmbs, int warmup, int reps,
                                  hm_profile *out, hm_profile_report *rep) {
  const size_t per = (size_t)nkinds * (size_t)nmbs;
  hm_layer_timing *t = hm_calloc(per, sizeof *t, "profile split timings");
  if (!t) return HM_ERR_NOMEM;
  hm_status st = HM_OK;
  for (int d = 2; st == HM_OK && d <= 8; d *= 2)
    for (int si = 0; st == HM_OK && si < nsel; si++) {
      const int k = sel[si];
      if (!hm_split_possible(c, m, k, d)) continue;
      const hm_device_type *dt = &c->types[k];
      char what[64];
      snprintf(what, sizeof what, "%d (%d process%s at once)", d, staged[si] ? 1 : d, staged[si] ? "" : "es");
      hm_say(o, "timing device type '%s' split at tensor-parallel degree %s", dt->name, what);
      const char *backend = dt->backend;
      st = hm_profile_time_layers_together(1, &backend, staged[si] ? 1 : d, shape, d, layers, nkinds, mbs, nmbs,
                                           warmup, reps, o->budget_s, o->min_s, o->seed + 7919u * (uint64_t)k, o->timeout_s, t,
                                           NULL, 0, o->progress, o->user);
      if (st == HM_OK) st = hm_add_type_entries(c, m, k, d, layers, nkinds, mbs, nmbs, t, out, rep);
      if (st != HM_OK) st = hm_error_context(st, "device type '%s' split at tp %d: ", dt->name, d);
    }
  free(t);
  return st;
}

/* Staging copies of the types whose memory is not host memory, at one micro-batch's activations
 * of the largest size (what a pipeline stage sends), each in a child process; staged[si] = 1 for
 * such a type. */
static hm_status hm_measure_staging(const hm_profile_options *o, const hm_cluster *c, const int *sel, int nsel,
                                    size_t act_bytes, int reps, int *staged, hm_profile *out) {
  for (int si = 0; si < nsel; si++) {
    const hm_device_type *dt = &c->types[sel[si]];
    hm_profile_staging e;
    memset(&e, 0, sizeof e);
    staged[si] = 0;
    hm_status st = hm_profile_time_staging(dt->backend, act_bytes, reps, 1, o->timeout_s, &e.xfer, &staged[si]);
    if (st != HM_OK) return hm_error_context(st, "device type '%s': ", dt->name);
    if (!staged[si]) continue;
    hm_strcpy(e.device_type, sizeof e.device_type, dt->name);
    char line[160];
    snprintf(line, sizeof line, "device->host %.2f GB/s, host->device %.2f GB/s, %.1f us latency",
             e.xfer.d2h_bw / 1e9, e.xfer.h2d_bw / 1e9, e.xfer.copy_latency * 1e6);
    hm_say(o, "staging copies of device type '%s': %s", dt->name, line);
    HM_TRY(hm_profile_add_staging(out, &e));
  }
  return HM_OK;
}

hm_status hm_profile_measure(const hm_profile_options *o, hm_profile *out, hm_profile_report *rep) {
  if (!o || !o->cluster || !o->model || !out)
    return hm_error(HM_ERR_INVALID_ARG, "hm_profile_measure: cluster, model and output are required");
  const hm_cluster *c = o->cluster;
  const hm_model *m = o->model;
  hm_profile_report local;
  if (!rep) rep = &local;
  memset(rep, 0, sizeof *rep);
  const double t_start = hm_now_s();

  if (!m->has_config)
    return hm_error(HM_ERR_UNSUPPORTED,
                    "profile: model '%s' is an explicit layer list; the profiler times the model's stages, so "
                    "give a model with a \"config\"", m->name);
  if (m->dtype != HM_DTYPE_FP32)
    return hm_error(HM_ERR_UNSUPPORTED, "profile: model '%s' has dtype %s; the local backends compute in fp32",
                    m->name, hm_spec_dtype_name(m->dtype));
  const hm_spec_model_config *cfg = &m->cfg;
  if (cfg->L > 1024 || cfg->C > 65536 || cfg->NH > 65536 || cfg->V > (1 << 24) || cfg->T > 65536)
    return hm_error(HM_ERR_INVALID_ARG, "profile: model '%s' is too large to build here (L%lld C%lld V%lld T%lld)",
                    m->name, (long long)cfg->L, (long long)cfg->C, (long long)cfg->V, (long long)cfg->T);
  if (m->nlayers != cfg->L + 2)
    return hm_error(HM_ERR_INTERNAL, "profile: model '%s' has %d layers, expected L+2 = %lld", m->name, m->nlayers,
                    (long long)(cfg->L + 2));
  const hm_spec_model_config shape = *cfg;

  /* one representative layer per kind: the model's layer index is the stage's layer index */
  int layers[8], nkinds = 0;
  for (int l = 0; l < m->nlayers; l++) {
    int seen = 0;
    for (int k = 0; k < nkinds; k++) seen |= !strcmp(m->layers[layers[k]].kind, m->layers[l].kind);
    if (seen) continue;
    if (nkinds == 8) return hm_error(HM_ERR_INTERNAL, "profile: more than 8 layer kinds in '%s'", m->name);
    layers[nkinds++] = l;
  }
  int64_t mbs[HM_PROFILE_MAX_MBS];
  int nmbs = 0;
  HM_TRY(hm_pick_mbs(o, mbs, &nmbs));
  HM_TRY(hm_check_type_filter(o, c));
  int ntypes = 0;
  for (int k = 0; k < c->ntypes; k++) ntypes += hm_type_selected(o, c, k);
  if (ntypes == 0)
    return hm_error(HM_ERR_NOT_FOUND,
                    "profile: no device type of cluster '%s' has a \"backend\" string, so none can run here",
                    c->name);
  const int reps = o->reps > 0 ? o->reps : 9, warmup = o->warmup >= 0 ? o->warmup : 1;
  hm_strcpy(out->model, sizeof out->model, m->name);

  /* links first: the probe forks, best done before this process starts device threads */
  if (o->links) HM_TRY(hm_measure_links(o, c, out, rep));
  if (o->links && o->netns) HM_TRY(hm_measure_host_links(o, c, out, rep));

  /* the types to time, in cluster order */
  int sel[HM_PROFILE_MAX_TYPES], nsel = 0;
  for (int k = 0; k < c->ntypes && nsel < HM_PROFILE_MAX_TYPES; k++)
    if (hm_type_selected(o, c, k)) sel[nsel++] = k;
  const int copies = o->copies > 0 ? o->copies : 1, together = o->concurrent || copies > 1;
  if (o->copies < 0 || copies > 16)
    return hm_error(HM_ERR_INVALID_ARG, "profile: copies %d outside 1..16", o->copies);
  const size_t per = (size_t)nkinds * (size_t)nmbs;
  hm_layer_timing *all = hm_calloc(per * (size_t)nsel, sizeof *all, "profile timings");
  char(*descs)[256] = hm_calloc((size_t)nsel, sizeof *descs, "profile device descriptions");
  if (!all || !descs) {
    free(all);
    free(descs);
    return HM_ERR_NOMEM;
  }
  /* staging and the split layers fork their measuring processes: before this process opens a
   * device itself (the passes below do) */
  int staged[HM_PROFILE_MAX_TYPES] = {0};
  const size_t act_bytes = (size_t)mbs[nmbs - 1] * (size_t)cfg->T * (size_t)cfg->C * sizeof(float);
  hm_profile split;
  memset(&split, 0, sizeof split);
  hm_status st = hm_measure_staging(o, c, sel, nsel, act_bytes, reps, staged, out);
  if (st == HM_OK && o->tp_split)
    st = hm_measure_split(o, c, m, &shape, sel, staged, nsel, layers, nkinds, mbs, nmbs, warmup, reps, &split, rep);
  if (st == HM_OK && together) {
    /* every type at once (concurrent), or each type alone with its copies */
    const int groups = o->concurrent ? 1 : nsel;
    for (int g = 0; st == HM_OK && g < groups; g++) {
      const int first = o->concurrent ? 0 : g, njobs = o->concurrent ? nsel : 1;
      const char *backends[HM_PROFILE_MAX_TYPES];
      for (int j = 0; j < njobs; j++) backends[j] = c->types[sel[first + j]].backend;
      st = hm_profile_time_layers_together(njobs, backends, copies, &shape, 1, layers, nkinds, mbs, nmbs, warmup, reps,
                                           o->budget_s, o->min_s, o->seed, o->timeout_s, all + per * (size_t)first,
                                           descs[first], sizeof descs[0], o->progress, o->user);
    }
  }
  if (st == HM_OK && !together)
    st = hm_measure_passes(o, c, sel, nsel, &shape, layers, nkinds, mbs, nmbs, warmup, reps, all, descs);
  for (int si = 0; st == HM_OK && si < nsel; si++) {
    const int k = sel[si];
    hm_say(o, "measured device type '%s': %s", c->types[k].name, descs[si]);
    rep->ntypes_measured++;
    st = hm_add_type_entries(c, m, k, 1, layers, nkinds, mbs, nmbs, all + per * (size_t)si, out, rep);
  }
  /* the split entries after the unsplit ones */
  for (int i = 0; st == HM_OK && i < split.nlayers; i++) st = hm_profile_add_layer(out, &split.layers[i]);
  hm_profile_free(&split);
  free(all);
  free(descs);
  /* the planner's own check: every name must resolve against the cluster and model */
  if (st == HM_OK) st = hm_profile_resolve(out, c, m);
  rep->seconds = hm_now_s() - t_start;
  return st;
}
