/* The device half of the profiler: times forward and backward of one-layer model stages on one
 * device (include/hetmix/profile.h, hm_profile_time_layers).
 *
 * What is timed is exactly what a pipeline stage runs per micro-batch: hm_stage_forward (with the
 * input copy, and the loss on the head) and hm_stage_backward, each followed by
 * hm_device_synchronize. A device emulating a slower chip (slow=F) sleeps in batches (device.c
 * carries a debt of owed sleep across kernels); the sleep a round owes but has not yet taken is
 * counted in, so the figure is the emulated chip's time, not a lucky or unlucky batching.
 * Several devices can be timed at once, each in its own process (as the workers of a plan run),
 * so that each figure includes what the others take from the host (cores, caches, memory
 * bandwidth); a process that finishes early keeps its device busy until all have finished.
 * Not here: choosing what to time, the profile format (src/runtime/profile.c). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "hetmix/profile.h"
#include "profile_passes.h"
#include "util/util.h"

static int hm_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of n values (sorts them). */
static double hm_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, hm_cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Value at quantile q of n sorted values (linear between neighbours). */
static double hm_quantile(const double *v, int n, double q) {
  const double x = q * (n - 1);
  const int i = (int)x;
  return i + 1 < n ? v[i] + (x - i) * (v[i + 1] - v[i]) : v[n - 1];
}

/* Robust centre of n > 0 timed rounds (sorted in place): with 4 or more, rounds further than 3
 * scaled median absolute deviations (1.4826 MAD, the standard deviation for normal noise) from
 * the median are outliers (a round preempted on a shared machine) and dropped; the median of the rest is
 * returned, *kept = their count, *spread = half their interquartile range over that median. */
double hm_profile_robust(double *v, int n, int *kept, double *spread) {
  qsort(v, (size_t)n, sizeof *v, hm_cmp_double);
  const double med = hm_quantile(v, n, 0.5);
  /* fewer than 4 rounds say too little about their own scatter to call one an outlier */
  double *dev = n >= 4 ? malloc((size_t)n * sizeof *dev) : NULL;
  int lo = 0, hi = n;
  if (dev) {
    for (int i = 0; i < n; i++) dev[i] = fabs(v[i] - med);
    qsort(dev, (size_t)n, sizeof *dev, hm_cmp_double);
    const double bound = 3 * 1.4826 * hm_quantile(dev, n, 0.5);
    free(dev);
    if (bound > 0) {
      while (lo < n && v[lo] < med - bound) lo++;
      while (hi > lo && v[hi - 1] > med + bound) hi--;
    }
  }
  const int k = hi - lo;
  const double m = hm_quantile(v + lo, k, 0.5);
  if (kept) *kept = k;
  if (spread) *spread = m > 0 ? 0.5 * (hm_quantile(v + lo, k, 0.75) - hm_quantile(v + lo, k, 0.25)) / m : 0;
  return m;
}

/* Seconds since t0_ns including the change of the device's owed slow-down sleep since debt0. */
static double hm_elapsed_emulated(const hm_device *dev, uint64_t t0_ns, uint64_t debt0) {
  double s = (double)(hm_now_ns() - t0_ns) * 1e-9;
  return s + ((double)hm_device_slow_debt_ns(dev) - (double)debt0) * 1e-9;
}

/* Deterministic inputs: tokens and targets in [0,V), activations and gradients in [-a, a). */
static void hm_fill_tokens(int32_t *t, size_t n, int V, uint64_t seed) {
  for (size_t i = 0; i < n; i++) t[i] = (int32_t)(hm_splitmix64(seed + i) % (uint64_t)V);
}

static void hm_fill_uniform(float *x, size_t n, float a, uint64_t seed) {
  for (size_t i = 0; i < n; i++) {
    uint64_t r = hm_splitmix64(seed ^ (0x9e3779b97f4a7c15ull * (i + 1)));
    x[i] = a * (2.0f * (float)((double)(r >> 11) * 0x1.0p-53) - 1.0f);
  }
}

typedef struct hm_layer_inputs {
  int32_t *tokens, *targets; /* host (B,T) */
  void *x_in, *dout;         /* device (B,T,C) */
} hm_layer_inputs;

static void hm_layer_inputs_free(hm_device *dev, hm_layer_inputs *in) {
  free(in->tokens);
  free(in->targets);
  hm_device_free(dev, in->x_in);
  hm_device_free(dev, in->dout);
  memset(in, 0, sizeof *in);
}

static hm_status hm_layer_inputs_make(hm_device *dev, const hm_spec_model_config *cfg, int B, uint64_t seed,
                                      hm_layer_inputs *in) {
  memset(in, 0, sizeof *in);
  const size_t N = (size_t)B * cfg->T, NC = N * (size_t)cfg->C;
  in->tokens = hm_malloc(N * sizeof(int32_t), "profile tokens");
  in->targets = hm_malloc(N * sizeof(int32_t), "profile targets");
  float *host = hm_malloc(NC * sizeof(float), "profile activations");
  hm_status st = in->tokens && in->targets && host ? HM_OK : HM_ERR_NOMEM;
  if (st == HM_OK) {
    hm_fill_tokens(in->tokens, N, cfg->V, seed);
    hm_fill_tokens(in->targets, N, cfg->V, seed + N);
    st = hm_device_alloc(dev, &in->x_in, NC * hm_device_elem_size(dev), "profile input activations");
  }
  if (st == HM_OK) st = hm_device_alloc(dev, &in->dout, NC * hm_device_elem_size(dev), "profile output gradient");
  if (st == HM_OK) {
    /* a residual stream of unit scale; output gradients of the size a mean loss gives */
    hm_fill_uniform(host, NC, 1.0f, seed + 1);
    st = hm_device_copy_from_f32(dev, in->x_in, host, NC);
  }
  if (st == HM_OK) {
    hm_fill_uniform(host, NC, 1e-3f, seed + 2);
    st = hm_device_copy_from_f32(dev, in->dout, host, NC);
  }
  free(host);
  if (st != HM_OK) hm_layer_inputs_free(dev, in);
  return st;
}

/* One round: forward then backward of slot 0, each timed to the device's completion. */
static hm_status hm_time_round(hm_stage *s, hm_device *dev, int layer, int L, const hm_layer_inputs *in,
                               double *fwd, double *bwd) {
  const int is_head = layer == L + 1;
  HM_TRY(hm_stage_zero_grad(s));
  HM_TRY(hm_device_synchronize(dev));
  float loss = 0;
  uint64_t debt = hm_device_slow_debt_ns(dev), t0 = hm_now_ns();
  HM_TRY(hm_stage_forward(s, 0, layer == 0 ? in->tokens : NULL, layer > 0 ? in->x_in : NULL,
                          is_head ? in->targets : NULL, is_head ? &loss : NULL));
  HM_TRY(hm_device_synchronize(dev));
  *fwd = hm_elapsed_emulated(dev, t0, debt);
  debt = hm_device_slow_debt_ns(dev);
  t0 = hm_now_ns();
  HM_TRY(hm_stage_backward(s, 0, is_head ? NULL : in->dout, 1.0f));
  HM_TRY(hm_device_synchronize(dev));
  *bwd = hm_elapsed_emulated(dev, t0, debt);
  return HM_OK;
}

static size_t hm_peak_of(const hm_device *dev) {
  hm_device_stats ds;
  hm_device_get_stats(dev, &ds);
  return ds.bytes_peak;
}

/* Puts back the high-water mark from before a measurement when it was higher. */
static void hm_peak_restore(hm_device *dev, size_t peak_before) {
  size_t now = hm_peak_of(dev);
  hm_device_set_peak(dev, peak_before > now ? peak_before : now);
}

/* A split layer's allreduces are not timed with it: the profile's tp_allreduce measurement on the
 * real link costs them (the planner adds them per layer), so here they leave the buffer as is. */
static hm_status hm_tp_untimed(void *ctx, void *buf, size_t n, hm_tp_op op) {
  (void)ctx, (void)buf, (void)n, (void)op;
  return HM_OK;
}

static hm_status hm_time_one(hm_device *dev, const hm_spec_model_config *cfg, int tp, int layer, int B, int warmup,
                             int reps, double budget_s, uint64_t seed, hm_layer_timing *out) {
  memset(out, 0, sizeof *out);
  hm_layer_inputs in;
  HM_TRY(hm_layer_inputs_make(dev, cfg, B, seed, &in));
  /* the stage's own footprint: the high-water mark counted from here */
  hm_device_stats ds;
  hm_device_get_stats(dev, &ds);
  const size_t base = ds.bytes_allocated, peak_before = ds.bytes_peak;
  hm_device_set_peak(dev, base);
  hm_stage_options so = {.first = layer, .last = layer + 1, .B = B, .T = cfg->T, .max_microbatches = 1};
  if (tp > 1) so.tp = (hm_stage_tp){.rank = 0, .size = tp, .allreduce = hm_tp_untimed, .ctx = NULL};
  hm_stage *s = NULL;
  hm_status st = hm_stage_create(cfg, dev, &so, &s);
  if (st == HM_ERR_NO_FIT) { /* a size this device cannot hold: report, do not fail */
    hm_clear_error();
    hm_peak_restore(dev, peak_before);
    hm_layer_inputs_free(dev, &in);
    return HM_OK;
  }
  double *f = NULL, *b = NULL;
  if (st == HM_OK) st = hm_stage_init_params(s, seed);
  if (st == HM_OK) {
    f = hm_calloc((size_t)reps * 3, sizeof *f, "profile times");
    b = hm_calloc((size_t)reps, sizeof *b, "profile times");
    if (!f || !b) st = HM_ERR_NOMEM;
  }
  /* Timed rounds stop early once they have used the budget (a slow device at a large micro-batch
   * takes seconds per round); at least one is always timed. */
  int timed = 0;
  double spent = 0;
  for (int r = 0; st == HM_OK && r < warmup + reps; r++) {
    double tf = 0, tb = 0;
    st = hm_time_round(s, dev, layer, cfg->L, &in, &tf, &tb);
    if (st == HM_OK && r >= warmup) {
      f[timed] = tf;
      b[timed] = tb;
      f[2 * reps + timed] = tf + tb; /* the totals, for the spread */
      timed++;
      spent += tf + tb;
      if (budget_s > 0 && spent >= budget_s) break;
    }
  }
  if (st == HM_OK) {
    out->fits = 1;
    out->mem_bytes = (double)(hm_peak_of(dev) - base);
    int kf = timed, kb = timed, kt = timed;
    out->fwd_s = hm_profile_robust(f, timed, &kf, NULL);
    out->bwd_s = hm_profile_robust(b, timed, &kb, NULL);
    hm_profile_robust(f + 2 * reps, timed, &kt, &out->spread);
    out->reps = kt;
    out->rejected = timed - kt;
    out->fwd_min_s = f[0]; /* sorted by hm_profile_robust */
    out->bwd_min_s = b[0];
  }
  free(f);
  free(b);
  hm_stage_destroy(s);
  hm_peak_restore(dev, peak_before);
  hm_layer_inputs_free(dev, &in);
  return st;
}

static const char *hm_layer_label(int layer, int L) {
  return layer == 0 ? "embedding" : layer == L + 1 ? "head" : "block";
}

hm_status hm_profile_time_layers(const char *backend, const hm_spec_model_config *shape, int tp, const int *layers,
                                 int nlayers, const int64_t *mbs, int nmbs, int warmup, int reps,
                                 double budget_s, uint64_t seed, hm_layer_timing *out, char *device_desc, size_t cap,
                                 hm_profile_progress_fn progress, void *user) {
  if (!backend || !shape || !layers || !mbs || !out || nlayers < 1 || nmbs < 1)
    return hm_error(HM_ERR_INVALID_ARG, "hm_profile_time_layers: missing argument");
  if (reps < 1 || warmup < 0)
    return hm_error(HM_ERR_INVALID_ARG, "profile: reps must be >= 1 and warmup >= 0 (got %d, %d)", reps, warmup);
  hm_spec_model_config cfg = *shape;
  if (hm_spec_model_config_complete(&cfg, "profile model") != HM_OK || hm_model_config_check(&cfg) != HM_OK)
    return hm_error_context(HM_ERR_INVALID_ARG, "profile: ");
  hm_tp_sizes tps;
  if (tp < 1 || hm_stage_tp_sizes(&cfg, tp, 0, &tps) != HM_OK)
    return hm_error_context(HM_ERR_INVALID_ARG, "profile: tensor-parallel degree %d: ", tp);
  for (int k = 0; k < nlayers; k++)
    if (layers[k] < 0 || layers[k] > cfg.L + 1)
      return hm_error(HM_ERR_INVALID_ARG, "profile: layer %d outside 0..%d", layers[k], (int)cfg.L + 1);
  for (int j = 0; j < nmbs; j++)
    if (mbs[j] < 1 || mbs[j] > 65536 || mbs[j] * (int64_t)cfg.T > (1 << 30))
      return hm_error(HM_ERR_INVALID_ARG, "profile: micro-batch %lld outside 1..65536 (or B*T too large)",
                      (long long)mbs[j]);
  hm_device *dev = NULL;
  HM_TRY(hm_device_open(backend, &dev));
  if (device_desc && cap)
    snprintf(device_desc, cap, "%s (%s, %d thread%s, slow %g)", hm_device_spec(dev), hm_device_name(dev), hm_device_threads(dev),
             hm_device_threads(dev) == 1 ? "" : "s", hm_device_slow(dev));
  hm_status st = HM_OK;
  for (int k = 0; st == HM_OK && k < nlayers; k++)
    for (int j = 0; st == HM_OK && j < nmbs; j++) {
      hm_layer_timing *t = &out[k * nmbs + j];
      st = hm_time_one(dev, &cfg, tp, layers[k], (int)mbs[j], warmup, reps, budget_s, seed + (uint64_t)(k * 1000 + j), t);
      if (st != HM_OK) {
        st = hm_error_context(st, "profiling %s layer %d at micro-batch %lld, tp %d on %s: ",
                              hm_layer_label(layers[k], cfg.L), layers[k], (long long)mbs[j], tp, backend);
        break;
      }
      if (progress) {
        char line[256];
        if (t->fits)
          snprintf(line, sizeof line, "%-24s %-9s mb %-4lld tp %d fwd %9.3f ms  bwd %9.3f ms  (%d reps, %d outliers, spread %4.1f%%)  mem %7.1f MiB",
                   backend, hm_layer_label(layers[k], cfg.L), (long long)mbs[j], tp, 1e3 * t->fwd_s, 1e3 * t->bwd_s, t->reps,
                   t->rejected, 100 * t->spread, t->mem_bytes / 1048576.0);
        else
          snprintf(line, sizeof line, "%-24s %-9s mb %-4lld tp %d does not fit the device: skipped", backend,
                   hm_layer_label(layers[k], cfg.L), (long long)mbs[j], tp);
        progress(line, user);
      }
    }
  hm_device_close(dev);
  return st;
}

/* ---- several devices at once ------------------------------------------------------------- */

#define HM_TOGETHER_MAX 64

typedef struct hm_together_slot {
  int status;            /* hm_status of the process; -1 while measuring */
  char msg[512];
  char desc[256];
} hm_together_slot;

/* Keeps the device busy with its heaviest measured layer until every process has measured, so
 * each measurement saw the others running the whole time. */
static void hm_keep_busy(const char *backend, const hm_spec_model_config *shape, int tp, const int *layers, int nlayers,
                         const int64_t *mbs, int nmbs, const hm_layer_timing *mine, uint64_t seed,
                         volatile int *ndone, int nprocs) {
  int best = -1;
  for (int i = 0; i < nlayers * nmbs; i++)
    if (mine[i].fits && (best < 0 || mine[i].fwd_s + mine[i].bwd_s > mine[best].fwd_s + mine[best].bwd_s)) best = i;
  if (best < 0) return;
  const int layer = layers[best / nmbs];
  const int64_t mb = mbs[best % nmbs];
  while (__atomic_load_n(ndone, __ATOMIC_ACQUIRE) < nprocs) {
    hm_layer_timing t;
    if (hm_profile_time_layers(backend, shape, tp, &layer, 1, &mb, 1, 0, 1, 0, seed, &t, NULL, 0, NULL, NULL) != HM_OK)
      return;
  }
}

#define HM_TOGETHER_PASSES HM_PROFILE_MAX_PASSES /* measurement passes one process keeps */

/* After its first pass a process measures everything again, pass after pass, until `until` (the
 * measurement's least length; hm_now_s's clock, shared by the processes) and then while other
 * processes are still measuring; per entry it keeps the median over its passes that ended
 * before the last process was done. The passes spread each figure over the whole measurement: a
 * slow stretch of a shared machine (a neighbour's burst of a second or two) then moves a minority
 * of the passes and not the median, where one pass of a few rounds can fall wholly inside it.
 * The same holds for a fast device's passes while a slow one trains. When the passes are used up
 * it keeps its device busy. It counts itself done (ndone) once past `until`. */
static void hm_measure_more(const char *backend, const hm_spec_model_config *shape, int tp, const int *layers,
                            int nlayers, const int64_t *mbs, int nmbs, int warmup, int reps, double budget_s,
                            uint64_t seed, double until, hm_layer_timing *mine, volatile int *ndone, int nprocs) {
  const int per = nlayers * nmbs;
  double *f = hm_calloc((size_t)HM_TOGETHER_PASSES * (size_t)per, sizeof *f, "profile passes");
  double *b = hm_calloc((size_t)HM_TOGETHER_PASSES * (size_t)per, sizeof *b, "profile passes");
  hm_layer_timing *pass = hm_calloc((size_t)per, sizeof *pass, "profile pass");
  int npass = 0, counted = 0, rounds = reps;
  if (f && b && pass) {
    for (int i = 0; i < per; i++) f[i] = mine[i].fwd_s, b[i] = mine[i].bwd_s;
    npass = 1;
  }
  for (;;) {
    if (!counted && (npass == 0 || npass == HM_TOGETHER_PASSES || hm_now_s() >= until)) {
      __atomic_add_fetch(ndone, 1, __ATOMIC_ACQ_REL);
      counted = 1;
    }
    if (npass == 0 || npass == HM_TOGETHER_PASSES || (counted && __atomic_load_n(ndone, __ATOMIC_ACQUIRE) >= nprocs))
      break;
    const double pass_start = hm_now_s();
    if (hm_profile_time_layers(backend, shape, tp, layers, nlayers, mbs, nmbs, warmup, rounds, budget_s, seed, pass,
                               NULL, 0, NULL, NULL) != HM_OK)
      break;
    if (counted && __atomic_load_n(ndone, __ATOMIC_ACQUIRE) >= nprocs) break; /* ended partly without the others */
    const double now = hm_now_s();
    rounds = hm_profile_rounds_to_fill(rounds, now - pass_start, until - now, HM_TOGETHER_PASSES - npass - 1);
    for (int i = 0; i < per; i++) {
      f[(size_t)npass * per + i] = pass[i].fwd_s, b[(size_t)npass * per + i] = pass[i].bwd_s;
      mine[i].reps += pass[i].reps, mine[i].rejected += pass[i].rejected;
    }
    npass++;
  }
  if (!counted) __atomic_add_fetch(ndone, 1, __ATOMIC_ACQ_REL); /* a pass failed: the others go on */
  for (int i = 0; npass > 1 && i < per; i++) {
    if (!mine[i].fits) continue;
    double fi[HM_TOGETHER_PASSES], bi[HM_TOGETHER_PASSES], tot[HM_TOGETHER_PASSES];
    for (int k = 0; k < npass; k++) {
      fi[k] = f[(size_t)k * per + i], bi[k] = b[(size_t)k * per + i];
      tot[k] = fi[k] + bi[k];
    }
    mine[i].fwd_s = hm_median(fi, npass);
    mine[i].bwd_s = hm_median(bi, npass);
    double between = 0;
    hm_profile_robust(tot, npass, NULL, &between);
    if (between > mine[i].spread) mine[i].spread = between;
    if (fi[0] < mine[i].fwd_min_s) mine[i].fwd_min_s = fi[0]; /* sorted by hm_median */
    if (bi[0] < mine[i].bwd_min_s) mine[i].bwd_min_s = bi[0];
  }
  free(f);
  free(b);
  free(pass);
  hm_keep_busy(backend, shape, tp, layers, nlayers, mbs, nmbs, mine, seed, ndone, nprocs);
}

hm_status hm_profile_time_layers_together(int njobs, const char *const *backends, int copies,
                                          const hm_spec_model_config *shape, int tp, const int *layers, int nlayers,
                                          const int64_t *mbs, int nmbs, int warmup, int reps, double budget_s,
                                          double min_s, uint64_t seed, int timeout_s, hm_layer_timing *out, char *descs,
                                          size_t desc_cap, hm_profile_progress_fn progress, void *user) {
  if (njobs < 1 || copies < 1 || njobs * copies > HM_TOGETHER_MAX || !backends || !out)
    return hm_error(HM_ERR_INVALID_ARG, "profile: %d device types x %d copies at once (at most %d processes)", njobs,
                    copies, HM_TOGETHER_MAX);
  const int nprocs = njobs * copies, per = nlayers * nmbs;
  /* shared: the done counter, one slot per process, then every process's timings */
  const size_t bytes = 64 + (size_t)nprocs * sizeof(hm_together_slot) + (size_t)nprocs * (size_t)per * sizeof(hm_layer_timing);
  unsigned char *shared = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) return hm_error(HM_ERR_NOMEM, "profile: shared memory for %d processes: %s", nprocs, strerror(errno));
  memset(shared, 0, bytes);
  volatile int *ndone = (volatile int *)shared;
  hm_together_slot *slot = (hm_together_slot *)(shared + 64);
  hm_layer_timing *times = (hm_layer_timing *)(slot + nprocs);
  for (int p = 0; p < nprocs; p++) slot[p].status = -1;

  fflush(stdout); /* children print progress lines through the same stdout */
  const pid_t parent = getpid();
  const double until = hm_now_s() + (min_s > 0 ? min_s : 0);
  pid_t pid[HM_TOGETHER_MAX] = {0};
  hm_status st = HM_OK;
  int started = 0;
  for (int p = 0; p < nprocs; p++) {
    pid[p] = fork();
    if (pid[p] < 0) {
      st = hm_error(HM_ERR_IO, "profile: fork: %s", strerror(errno));
      pid[p] = 0;
      break;
    }
    started++;
    if (pid[p] == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      /* its own session, as `hetmix launch` starts each worker (launch.c): with Linux's autogroup
       * scheduling a loaded host then shares the CPU with it as with a worker, not as with one of
       * several processes in the caller's session */
      setsid();
      const char *backend = backends[p / copies];
      hm_layer_timing *mine = times + (size_t)p * per;
      hm_status cs = hm_profile_time_layers(backend, shape, tp, layers, nlayers, mbs, nmbs, warmup, reps, budget_s,
                                            seed + 104729u * (uint64_t)(p % copies), mine, slot[p].desc,
                                            sizeof slot[p].desc, p % copies == 0 ? progress : NULL, user);
      if (cs != HM_OK) snprintf(slot[p].msg, sizeof slot[p].msg, "%s", hm_last_error());
      __atomic_store_n(&slot[p].status, (int)cs, __ATOMIC_RELEASE);
      if (cs != HM_OK) __atomic_add_fetch(ndone, 1, __ATOMIC_ACQ_REL);
      else
        hm_measure_more(backend, shape, tp, layers, nlayers, mbs, nmbs, warmup, reps, budget_s,
                        seed + 104729u * (uint64_t)(p % copies), until, mine, ndone, nprocs);
      _exit(cs == HM_OK ? 0 : 1);
    }
  }
  const uint64_t deadline = hm_deadline_after_ms((uint64_t)(timeout_s > 0 ? timeout_s : 3600) * 1000u);
  int alive = started, failed = -1, wst = 0;
  while (alive > 0) {
    for (int p = 0; p < started; p++) {
      if (pid[p] <= 0) continue;
      pid_t w = waitpid(pid[p], &wst, WNOHANG);
      if (w == pid[p] || (w < 0 && errno != EINTR)) {
        if (w < 0 || !WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
          if (failed < 0) failed = p;
          if (w == pid[p] && WIFSIGNALED(wst) && slot[p].status < 0)
            snprintf(slot[p].msg, sizeof slot[p].msg, "killed by signal %d", WTERMSIG(wst));
        }
        pid[p] = -pid[p];
        alive--;
      }
    }
    if (alive == 0) break;
    if (failed >= 0 || st != HM_OK || hm_deadline_passed(deadline)) {
      if (st == HM_OK && failed < 0)
        st = hm_error(HM_ERR_TIMEOUT, "profile: measuring %d processes at once took over %d s; stopped them", nprocs,
                      timeout_s > 0 ? timeout_s : 3600);
      for (int p = 0; p < started; p++)
        if (pid[p] > 0) kill(pid[p], SIGKILL);
      for (int p = 0; p < started; p++)
        if (pid[p] > 0) {
          while (waitpid(pid[p], &wst, 0) < 0 && errno == EINTR) {
          }
          pid[p] = -pid[p];
        }
      break;
    }
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  if (st == HM_OK && failed >= 0) {
    const int p = failed;
    st = hm_error(slot[p].status > 0 ? (hm_status)slot[p].status : HM_ERR_PEER_DEAD, "profile: %s (copy %d): %s",
                  backends[p / copies], p % copies, slot[p].msg[0] ? slot[p].msg : "the measuring process failed");
  }
  if (st == HM_OK) {
    /* per device type: the figures of its slowest copy (largest total over the layers). Copies
     * of one type run the stages or replicas of one synchronous step, which waits for the
     * slowest of them: on a shared host the cores are not equally fast (here one vCPU ran 6-7%
     * slower than the other, and 20% under load). Minimum times are over all copies. */
    for (int j = 0; j < njobs; j++) {
      if (descs && desc_cap) snprintf(descs + (size_t)j * desc_cap, desc_cap, "%s", slot[j * copies].desc);
      int slowest = 0;
      double worst = -1;
      for (int k = 0; k < copies; k++) {
        double total = 0;
        for (int i = 0; i < per; i++) {
          const hm_layer_timing *x = &times[(size_t)(j * copies + k) * per + i];
          if (x->fits) total += x->fwd_s + x->bwd_s;
        }
        if (total > worst) worst = total, slowest = k;
      }
      for (int i = 0; i < per; i++) {
        hm_layer_timing *o = &out[(size_t)j * per + i];
        *o = times[(size_t)(j * copies + slowest) * per + i];
        for (int k = 0; k < copies; k++) {
          const hm_layer_timing *x = &times[(size_t)(j * copies + k) * per + i];
          if (!x->fits) {
            o->fits = 0;
            continue;
          }
          if (x->fwd_min_s < o->fwd_min_s) o->fwd_min_s = x->fwd_min_s;
          if (x->bwd_min_s < o->bwd_min_s) o->bwd_min_s = x->bwd_min_s;
        }
      }
    }
  }
  munmap(shared, bytes);
  return st;
}
