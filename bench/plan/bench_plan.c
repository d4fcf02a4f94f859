/* Planner benchmark: median wall time of the whole search (hetmix plan without printing) on the
 * example clusters, against the targets (1,024 devices <= 1 s, 10,240 devices <= 10 s), and the
 * exact DP layer split side by side with exhaustive search of the same objective.
 *   bench_plan [-n repeats] [-e examples_dir]
 * Prints one table; times are medians over the repeats (machine load is printed first). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hetmix/plan.h"
#include "util/util.h"

/* CPU seconds of this process: the search is single-threaded, so this is its time on an idle core. */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int load(const char *dir, const char *cl, const char *md, const char *tr, hm_cluster *c,
                hm_model *m, hm_train *t) {
  char p[1024];
  memset(c, 0, sizeof *c);
  memset(m, 0, sizeof *m);
  snprintf(p, sizeof p, "%s/%s", dir, cl);
  if (hm_cluster_load(p, c) != HM_OK) goto fail;
  snprintf(p, sizeof p, "%s/%s", dir, md);
  if (hm_model_load(p, m) != HM_OK) goto fail;
  snprintf(p, sizeof p, "%s/%s", dir, tr);
  if (hm_train_load(p, t) != HM_OK) goto fail;
  if (hm_spec_resolve(c, m, t, NULL) != HM_OK) goto fail;
  return 0;
fail:
  fprintf(stderr, "bench_plan: %s\n", hm_last_error());
  return 1;
}

static void load_avg(void) {
  FILE *f = fopen("/proc/loadavg", "r");
  char buf[128] = "?";
  if (f) {
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
  }
  buf[strcspn(buf, "\n")] = 0;
  printf("# load average: %s (2 cores shared; wall times include waiting for a core)\n", buf);
}

int main(int argc, char **argv) {
  int reps = 5;
  const char *dir = HM_SOURCE_DIR "/examples";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-e") && i + 1 < argc) dir = argv[++i];
    else {
      fprintf(stderr, "usage: bench_plan [-n repeats] [-e examples_dir]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  load_avg();
  static const struct {
    const char *cluster, *model, *train;
    double target;
  } cases[] = {
      {"reference-768.json", "llama2-70b.json", "train-default.json", 1.0},
      {"mixed-1024-3types.json", "llama2-70b.json", "train-default.json", 1.0},
      {"mixed-1024-3types.json", "gpt3-175b.json", "train-default.json", 1.0},
      {"mixed-10240-3types.json", "llama2-70b.json", "train-default.json", 10.0},
      {"mixed-10240-3types.json", "gpt3-175b.json", "train-default.json", 10.0},
  };
  printf("%-20s %-12s %8s %3s %7s %10s %8s %10s %7s %4s %11s %6s\n", "cluster", "model", "devices",
         "thr", "splits", "median(s)", "min(s)", "cpu med(s)", "target", "ok", "tokens/s", "util");
  int fails = 0;
  double *t = calloc((size_t)reps, sizeof *t), *cpu = calloc((size_t)reps, sizeof *cpu);
  hm_search_result *r = calloc(1, sizeof *r);
  for (size_t row = 0; row < 2 * sizeof cases / sizeof cases[0]; row++) {
    const size_t ci = row / 2;
    const int threads = 1 + (int)(row % 2); /* the search alone, then with 2 threads (OpenMP) */
    setenv("HETMIX_PLAN_THREADS", threads == 1 ? "1" : "2", 1);
    hm_cluster c;
    hm_model m;
    hm_train tr;
    if (load(dir, cases[ci].cluster, cases[ci].model, cases[ci].train, &c, &m, &tr)) return 1;
    hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &tr};
    hm_search_options o;
    hm_search_options_default(&o);
    double tok = 0, util = 0, mn = INFINITY;
    long long splits = 0;
    for (int i = 0; i < reps; i++) {
      double t0 = hm_now_s(), c0 = cpu_now();
      hm_status st = hm_plan_search(&in, &o, r);
      t[i] = hm_now_s() - t0;
      cpu[i] = cpu_now() - c0;
      if (st != HM_OK) {
        fprintf(stderr, "bench_plan: %s\n", hm_last_error());
        return 1;
      }
      tok = r->plans[0].tokens_per_s;
      util = r->plans[0].utilization;
      splits = r->candidates;
      if (t[i] < mn) mn = t[i];
      hm_search_result_free(r);
    }
    double med = median(t, reps), cmed = median(cpu, reps);
    int ok = med <= cases[ci].target;
    static int ok_any;
    ok_any = threads == 1 ? ok : (ok_any || ok);
    if (threads == 2 && !ok_any) fails++;
    printf("%-20s %-12s %8lld %3d %7lld %10.3f %8.3f %10.3f %7.1f %4s %11.0f %5.1f%%\n", c.name,
           m.name, (long long)c.ndevices, threads, splits, med, mn, cmed, cases[ci].target,
           ok ? "yes" : "NO", tok, 100 * util);
    hm_cluster_free(&c);
    hm_model_free(&m);
  }
  free(r);

  /* the DP split against exhaustive search of the same objective, same instances */
  enum { N = 24, P = 5, INST = 20 };
  double *dp = calloc(INST, sizeof *dp), *ex = calloc(INST, sizeof *ex);
  unsigned seed = 99;
  int agree = 0;
  for (int it = 0; it < INST; it++) {
    double time[P * N], ms[P * N], ma[P * N], cap[P];
    for (int s = 0; s < P; s++) {
      double speed = 0.5 + (seed = seed * 1103515245u + 12345u) % 100 / 40.0;
      cap[s] = 60 + (seed = seed * 1103515245u + 12345u) % 60;
      for (int l = 0; l < N; l++) {
        time[s * N + l] = (1.0 + l % 3) / speed;
        ms[s * N + l] = 4;
        ma[s * N + l] = 1;
      }
    }
    hm_split_problem pb = {.nlayers = N, .nstages = P, .nmicro = 16, .time = time, .mem_static = ms,
                           .mem_act = ma, .mem_cap = cap};
    int b1[P + 1], b2[P + 1];
    double o1 = 0, o2 = 0;
    double t0 = hm_now_s();
    hm_status s1 = hm_split_dp(&pb, b1, &o1);
    dp[it] = hm_now_s() - t0;
    t0 = hm_now_s();
    hm_status s2 = hm_split_exhaustive(&pb, b2, &o2);
    ex[it] = hm_now_s() - t0;
    agree += s1 == s2 && (s1 != HM_OK || fabs(o1 - o2) <= 1e-9 * o2);
  }
  double mdp = median(dp, INST), mex = median(ex, INST);
  printf("\nlayer split, %d layers x %d stages, %d instances: DP median %.1f us, exhaustive "
         "median %.1f us, ratio %.0fx, same objective %d/%d\n", N, P, INST, mdp * 1e6, mex * 1e6,
         mex / mdp, agree, INST);
  free(dp);
  free(ex);
  free(t);
  free(cpu);
  return fails ? 1 : 0;
}
