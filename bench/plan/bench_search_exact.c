/* Search quality: the default search's best plan against the exhaustive search's on random small
 * heterogeneous clusters (exact_cases.h), and the time of both side by side.
 *   bench_search_exact [-n cases] [-s first_seed] [-v]
 * Prints the distribution of the gap (default step / exhaustive step - 1): the share of cases
 * within 0.1%, 0.5%, 1% and 2%, percentiles, the worst cases, and the median times. Acceptance
 * (docs/plan.md, section 6): within 0.5% in 99% of cases, never over 2%. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exact_cases.h"
#include "hetmix/plan.h"
#include "util/util.h"

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, int n, double q) {
  int i = (int)ceil(q * n) - 1;
  return sorted[i < 0 ? 0 : i];
}

static void describe(const hm_plan *p) {
  printf("    step %.5f s mb %lld:", p->step_time, (long long)p->micro_batch);
  for (int c = 0; c < p->nclasses; c++) {
    const hm_plan_class *cl = &p->classes[c];
    printf(" %dx[", cl->nreplicas);
    for (int s = 0; s < cl->nstages; s++)
      printf("%st%d/tp%d:%d", s ? " " : "", cl->stages[s].type, cl->stages[s].tp,
             cl->stages[s].layer_end - cl->stages[s].layer_begin);
    printf("] m=%d", cl->nmicro);
  }
  printf("\n");
}

typedef struct worst {
  double gap;
  char desc[256];
} worst;

int main(int argc, char **argv) {
  int n = 200, verbose = 0;
  unsigned long long first = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc) n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-s") && i + 1 < argc) first = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "-v")) verbose = 1;
    else {
      fprintf(stderr, "usage: bench_search_exact [-n cases] [-s first_seed] [-v]\n");
      return 2;
    }
  }
  if (n < 1) n = 1;
  double *gap = calloc((size_t)n, sizeof *gap), *td = calloc((size_t)n, sizeof *td),
         *te = calloc((size_t)n, sizeof *te);
  worst w[5];
  memset(w, 0, sizeof w);
  hm_plan *best = calloc(1, sizeof *best);
  if (!gap || !td || !te || !best) return 1;
  int done = 0, nofit = 0;
  int64_t sims = 0;
  for (unsigned long long seed = first; done < n; seed++) {
    exact_case e;
    if (exact_case_make(seed, 8, &e) != HM_OK) {
      fprintf(stderr, "case %llu: %s\n", seed, hm_last_error());
      return 1;
    }
    hm_search_options o;
    hm_search_options_default(&o);
    o.top_k = 1;
    o.upper_bound = 0;
    hm_search_result r;
    double t0 = hm_now_s();
    hm_status st = hm_plan_search(&e.in, &o, &r);
    double t1 = hm_now_s();
    if (st == HM_ERR_NO_FIT) {
      nofit++;
      exact_case_free(&e);
      continue;
    }
    int64_t ns = 0;
    if (st != HM_OK || (st = hm_plan_search_exhaustive(&e.in, &o, best, &ns)) != HM_OK) {
      fprintf(stderr, "%s: %s\n", e.desc, hm_last_error());
      return 1;
    }
    double t2 = hm_now_s();
    sims += ns;
    gap[done] = r.plans[0].step_time / best->step_time - 1;
    td[done] = t1 - t0;
    te[done] = t2 - t1;
    if (verbose) printf("%-70s gap %+.4f%%  default %.4f s  exhaustive %.4f s (%lld sims)\n", e.desc,
                        100 * gap[done], td[done], te[done], (long long)ns);
    if (verbose && gap[done] > 0.001) {
      describe(&r.plans[0]);
      describe(best);
    }
    for (int i = 0; i < 5; i++)
      if (gap[done] > w[i].gap) {
        memmove(&w[i + 1], &w[i], (size_t)(4 - i) * sizeof *w);
        w[i].gap = gap[done];
        snprintf(w[i].desc, sizeof w[i].desc, "%s", e.desc);
        break;
      }
    done++;
    hm_search_result_free(&r);
    exact_case_free(&e);
  }
  int c01 = 0, c05 = 0, c1 = 0, c2 = 0;
  for (int i = 0; i < n; i++) {
    c01 += gap[i] <= 0.001;
    c05 += gap[i] <= 0.005;
    c1 += gap[i] <= 0.01;
    c2 += gap[i] <= 0.02;
  }
  qsort(gap, (size_t)n, sizeof *gap, cmp_d);
  qsort(td, (size_t)n, sizeof *td, cmp_d);
  qsort(te, (size_t)n, sizeof *te, cmp_d);
  printf("# %d cases (seeds from %llu; %d more had no plan that fits), default search against exhaustive\n",
         n, first, nofit);
  printf("gap = default best step / exhaustive best step - 1\n");
  printf("  exact (<= 0.1%%)  %5.1f%%\n  <= 0.5%%          %5.1f%%   (acceptance: >= 99%%)\n"
         "  <= 1%%            %5.1f%%\n  <= 2%%            %5.1f%%   (acceptance: 100%%)\n",
         100.0 * c01 / n, 100.0 * c05 / n, 100.0 * c1 / n, 100.0 * c2 / n);
  printf("  percentiles: 50%% %+.3f%%  90%% %+.3f%%  99%% %+.3f%%  max %+.3f%%\n", 100 * pct(gap, n, 0.5),
         100 * pct(gap, n, 0.9), 100 * pct(gap, n, 0.99), 100 * gap[n - 1]);
  for (int i = 0; i < 5 && w[i].gap > 0; i++) printf("  worst %d: %+.3f%%  %s\n", i + 1, 100 * w[i].gap, w[i].desc);
  printf("time per case (median / max): default %.4f / %.4f s, exhaustive %.4f / %.4f s (ratio of "
         "medians %.0fx); %lld simulations in all\n", pct(td, n, 0.5), td[n - 1], pct(te, n, 0.5),
         te[n - 1], pct(te, n, 0.5) / pct(td, n, 0.5), (long long)sims);
  free(gap);
  free(td);
  free(te);
  free(best);
  return 0;
}
