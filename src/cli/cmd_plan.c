/* `hetmix plan` (search the fastest plans for a cluster and a model) and `hetmix simulate`
 * (re-predict a plan.json, optionally on another cluster, model or batch: what-if).
 * Printing only; the planning itself is in src/plan. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/plan.h"
#include "options.h"

typedef struct plan_args {
  const char *cluster, *model, *profile, *train, *out, *trace, *plan;
  int top, max_stages;
  int64_t batch;
} plan_args;

/* Returns HM_OPTS_CONTINUE to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, plan_args *a, int simulate) {
  memset(a, 0, sizeof *a);
  a->top = 5;
  const hm_opt plan_opts[] = {
      HM_OPT_STR_ROW("cluster", 0, &a->cluster, "C", "cluster spec (JSON)"),
      HM_OPT_STR_ROW("model", 0, &a->model, "M", "model spec (JSON)"),
      HM_OPT_STR_ROW("profile", 0, &a->profile, "P", "measured profile from `hetmix profile` [analytic estimates]"),
      HM_OPT_STR_ROW("train", 0, &a->train, "T", "training spec [defaults]"),
      HM_OPT_STR_ROW("output", 'o', &a->out, "FILE", "write the best plan (plan.json)"),
      HM_OPT_STR_ROW("trace", 0, &a->trace, "FILE", "write its predicted timeline (Chrome/Perfetto trace)"),
      HM_OPT_ROW(HM_OPT_INT, "top", 0, &a->top, 1, 1000, "K", "plans to list [5]"),
      HM_OPT_ROW(HM_OPT_INT, "max-stages", 0, &a->max_stages, 1, HM_PLAN_MAX_STAGES, "N",
                 "pipeline depth limit [64]"),
      HM_OPT_END_ROW};
  const hm_opt sim_opts[] = {
      HM_OPT_STR_ROW("plan", 0, &a->plan, "FILE", "plan.json from `hetmix plan`"),
      HM_OPT_STR_ROW("cluster", 0, &a->cluster, "C", "what-if cluster spec [the plan's]"),
      HM_OPT_STR_ROW("model", 0, &a->model, "M", "what-if model spec [the plan's]"),
      HM_OPT_STR_ROW("train", 0, &a->train, "T", "what-if training spec [the plan's]"),
      HM_OPT_STR_ROW("profile", 0, &a->profile, "P", "measured profile [analytic estimates]"),
      HM_OPT_ROW(HM_OPT_INT64, "batch", 0, &a->batch, 1, 1e9, "B",
                 "what-if global batch (the classes keep their micro-batch ratios)"),
      HM_OPT_STR_ROW("trace", 0, &a->trace, "FILE", "write the predicted timeline (Chrome/Perfetto trace)"),
      HM_OPT_END_ROW};
  const hm_opt_spec plan_spec = {
      "plan", "hetmix plan --cluster C --model M [--profile P] [--train T] [-o plan.json] [options]",
      "Searches the fastest plans; prints the K best, writes the best as plan.json and\n"
      "its predicted timeline as a Chrome/Perfetto trace. Formats: docs/plan.md.",
      plan_opts, NULL, 0, 0};
  const hm_opt_spec sim_spec = {"simulate", "hetmix simulate --plan plan.json [options]",
                                "Re-predicts a plan; the options replace the specs stored in plan.json (what-if).",
                                sim_opts, NULL, 0, 0};
  hm_opt_result res = {NULL, 0, 0};
  return hm_opts_parse(simulate ? &sim_spec : &plan_spec, argc, argv, &res);
}

static void describe_class(const hm_cluster *c, const hm_plan_class *cl, char *buf, size_t cap) {
  size_t n = 0;
  n += snprintf(buf + n, cap - n, "%d x [", cl->nreplicas);
  for (int s = 0; s < cl->nstages && n < cap;) {
    int e = s;
    while (e < cl->nstages && cl->stages[e].type == cl->stages[s].type) e++;
    n += snprintf(buf + n, cap - n, "%s%s/tp%d x%d", s ? " + " : "", c->types[cl->stages[s].type].name,
                  cl->stages[s].tp, e - s);
    s = e;
  }
  if (n < cap) n += snprintf(buf + n, cap - n, "] m=%d layers", cl->nmicro);
  for (int s = 0; s < cl->nstages && n < cap; s++)
    n += snprintf(buf + n, cap - n, "%s%d", s ? "," : " ", cl->stages[s].layer_end - cl->stages[s].layer_begin);
}

static void print_plan_row(const hm_cluster *c, int idx, const hm_plan *p) {
  char buf[1024];
  double mem = 0;
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++)
      if (p->classes[ci].stages[s].mem_peak > mem) mem = p->classes[ci].stages[s].mem_peak;
  printf("%3d %9.3f %11.0f %6.1f%% %5.1f%% %4lld %7lld %8.1f  ", idx, p->step_time, p->tokens_per_s,
         100 * p->utilization, 100 * p->mfu, (long long)p->micro_batch, (long long)p->devices_used,
         mem / 1e9);
  for (int ci = 0; ci < p->nclasses; ci++) {
    describe_class(c, &p->classes[ci], buf, sizeof buf);
    printf("%s%s\n", ci ? "                                                                 " : "", buf);
  }
}

static void print_header(void) {
  printf("%3s %9s %11s %7s %6s %4s %7s %8s  %s\n", "#", "step(s)", "tokens/s", "util", "MFU", "mb",
         "devices", "mem(GB)", "replicas x [stage type/tp x count] m=micro-batches, layers per stage");
}

static void print_summary(const hm_plan_inputs *in, const hm_plan *p) {
  const hm_cluster *c = in->cluster;
  printf("predicted: step %.4f s, %.0f tokens/s, bubble %.1f%%, peak memory %.2f GB per device, "
         "MFU %.1f%%", p->step_time, p->tokens_per_s, 100 * p->bubble_fraction, p->mem_peak_max / 1e9,
         100 * p->mfu);
  for (int k = 0; k < c->ntypes && k < HM_PLAN_MAX_TYPES; k++)
    if (p->devices_by_type[k] > 0)
      printf(" (%s %lld devices, MFU %.1f%%)", c->types[k].name, (long long)p->devices_by_type[k],
             100 * p->mfu_by_type[k]);
  printf("\n");
}

static void print_stages(const hm_cluster *c, const hm_plan *p) {
  printf("\n%5s %5s %-14s %9s %9s %9s %9s %9s %6s %9s %9s\n", "class", "stage", "type/tp", "layers",
         "fwd(ms)", "bwd(ms)", "busy(s)", "idle(s)", "held", "mem(GB)", "cap(GB)");
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++) {
      const hm_plan_stage *st = &p->classes[ci].stages[s];
      char tt[HM_SPEC_NAME_MAX + 8], lr[32];
      snprintf(tt, sizeof tt, "%s/%d", c->types[st->type].name, st->tp);
      snprintf(lr, sizeof lr, "%d-%d", st->layer_begin, st->layer_end - 1);
      printf("%5d %5d %-14s %9s %9.2f %9.2f %9.3f %9.3f %6d %9.2f %9.2f\n", ci, s, tt, lr,
             1e3 * st->fwd, 1e3 * st->bwd, st->busy, st->idle, st->max_inflight, st->mem_peak / 1e9,
             st->mem_capacity / 1e9);
    }
}

static int load_inputs(const plan_args *a, hm_cluster *c, hm_model *m, hm_train *t, hm_profile *pr,
                       int *have_profile) {
  hm_status st;
  if (a->cluster && (st = hm_cluster_load(a->cluster, c)) != HM_OK)
    return hm_cli_fail_status(st, "cluster", "fix the field named above (format: docs/spec.md)");
  if (a->model && (st = hm_model_load(a->model, m)) != HM_OK)
    return hm_cli_fail_status(st, "model", "fix the field named above (format: docs/spec.md)");
  if (a->train && (st = hm_train_load(a->train, t)) != HM_OK)
    return hm_cli_fail_status(st, "training", "fix the field named above (format: docs/spec.md)");
  *have_profile = 0;
  if (a->profile) {
    if ((st = hm_profile_load(a->profile, pr)) != HM_OK)
      return hm_cli_fail_status(st, "profile", "fix the field named above (format: docs/spec.md)");
    *have_profile = 1;
  }
  return 0;
}

/* Completes the training spec against the model and checks the profile's names. */
static int resolve_inputs(const hm_cluster *c, const hm_model *m, hm_train *t, hm_profile *pr) {
  hm_status st = hm_spec_resolve(c, m, t, pr);
  if (st != HM_OK)
    return hm_cli_fail_status(st, "specs", "make the training precision agree with the model's "
                              "dtype; the profile must name the cluster's device types and the "
                              "model's layer kinds");
  return 0;
}

int hm_cmd_plan(int argc, char **argv) {
  plan_args a;
  int rc = parse_args(argc, argv, &a, 0);
  if (rc != HM_OPTS_CONTINUE) return rc;
  rc = 0;
  if (!a.cluster || !a.model)
    return hm_cli_fail("usage: hetmix plan --cluster C --model M [--train T] (see --help)",
                       "plan needs --cluster and --model");
  hm_cluster c;
  hm_model m;
  hm_train t;
  hm_profile pr;
  memset(&c, 0, sizeof c);
  memset(&m, 0, sizeof m);
  memset(&pr, 0, sizeof pr);
  hm_train_default(&t);
  int have_profile = 0;
  rc = load_inputs(&a, &c, &m, &t, &pr, &have_profile);
  if (!rc) rc = resolve_inputs(&c, &m, &t, have_profile ? &pr : NULL);
  hm_search_result *res = calloc(1, sizeof *res);
  if (rc || !res) goto done;
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t, .profile = have_profile ? &pr : NULL};
  hm_search_options opt;
  hm_search_options_default(&opt);
  opt.top_k = a.top;
  if (a.max_stages) opt.max_stages = a.max_stages;
  hm_status st = hm_plan_search(&in, &opt, res);
  if (st != HM_OK) {
    rc = hm_cli_fail_status(st, "plan", st == HM_ERR_NO_FIT
                                            ? "add devices with more memory, use recompute "
                                              "\"full\", a smaller micro-batch or zero_stage 1"
                                            : NULL);
    goto done;
  }
  printf("cluster \"%s\": %lld devices (", c.name, (long long)c.ndevices);
  for (int k = 0; k < c.ntypes; k++)
    printf("%s%lld %s", k ? ", " : "", (long long)c.types[k].count, c.types[k].name);
  printf("); model \"%s\": %d layers, %.3g parameters; global batch %lld x %lld tokens\n", m.name,
         m.nlayers, m.params, (long long)t.global_batch, (long long)m.T);
  printf("searched %lld layer splits in %.3f s\n\n", (long long)res->candidates, res->seconds);
  print_header();
  for (int i = 0; i < res->nplans; i++) print_plan_row(&c, i + 1, &res->plans[i]);
  printf("\nupper bound (each type planned alone, summed): %.0f tokens/s =", res->upper_bound_tokens_per_s);
  for (int k = 0; k < c.ntypes && k < HM_PLAN_MAX_TYPES; k++)
    printf("%s %s %.0f", k ? " +" : "", c.types[k].name, res->type_best_tokens_per_s[k]);
  printf("\n");
  const hm_plan *best = &res->plans[0];
  int used_types = 0;
  for (int k = 0; k < c.ntypes && k < HM_PLAN_MAX_TYPES; k++) used_types += best->devices_by_type[k] > 0;
  printf("best plan: %.0f tokens/s, utilization %.1f%% of the upper bound, %s\n", best->tokens_per_s,
         100 * best->utilization, used_types > 1 ? "heterogeneous" : "one device type");
  if (used_types <= 1)
    for (int i = 1; i < res->nplans; i++) {
      int n = 0;
      for (int k = 0; k < c.ntypes && k < HM_PLAN_MAX_TYPES; k++) n += res->plans[i].devices_by_type[k] > 0;
      if (n > 1) {
        printf("best heterogeneous plan listed: #%d, %.0f tokens/s, utilization %.1f%%\n", i + 1,
               res->plans[i].tokens_per_s, 100 * res->plans[i].utilization);
        break;
      }
    }
  if (res->best_single_type >= 0)
    printf("best single-type plan: %s only, %.0f tokens/s; gain of the best plan: %+.1f%%\n",
           c.types[res->best_single_type].name, res->best_single.tokens_per_s,
           100 * (best->tokens_per_s / res->best_single.tokens_per_s - 1));
  print_summary(&in, best);
  if (a.out) {
    if ((st = hm_plan_write(&in, best, a.out)) != HM_OK) {
      rc = hm_cli_fail_status(st, "writing the plan", NULL);
      goto done;
    }
    printf("wrote %s\n", a.out);
  }
  if (a.trace) {
    hm_plan copy = *best;
    hm_sim_trace tr = {0};
    st = hm_plan_predict(&in, &copy, &tr);
    if (st == HM_OK) st = hm_sim_trace_write(&tr, a.trace);
    hm_sim_trace_free(&tr);
    if (st != HM_OK) {
      rc = hm_cli_fail_status(st, "writing the trace", NULL);
      goto done;
    }
    printf("wrote %s (open in https://ui.perfetto.dev or chrome://tracing)\n", a.trace);
  }
done:
  if (res) hm_search_result_free(res);
  free(res);
  hm_cluster_free(&c);
  hm_model_free(&m);
  if (have_profile) hm_profile_free(&pr);
  return rc;
}

/* Maps the plan's device types (indices into the plan's own cluster) onto another cluster. */
static int remap_types(hm_plan *p, const hm_cluster *from, const hm_cluster *to) {
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++) {
      const char *name = from->types[p->classes[ci].stages[s].type].name;
      int k = hm_cluster_find_type(to, name);
      if (k < 0)
        return hm_cli_fail("the plan's device types must exist in the what-if cluster",
                           "cluster \"%s\" has no device type \"%s\" (plan class %d stage %d)",
                           to->name, name, ci, s);
      p->classes[ci].stages[s].type = k;
    }
  return 0;
}

/* New global batch: keeps the classes' micro-batch ratios, totals exactly batch / micro_batch. */
static int rebatch(hm_plan *p, long long batch) {
  if (batch > 1000000000) /* train.global_batch's limit; keeps micro-batch counts in an int */
    return hm_cli_fail(NULL, "--batch %lld is larger than 1000000000", batch);
  if (batch % p->micro_batch)
    return hm_cli_fail(NULL, "--batch %lld is not a multiple of the plan's micro-batch %lld", batch,
                       (long long)p->micro_batch);
  long long M = batch / p->micro_batch, old = 0, got = 0;
  for (int ci = 0; ci < p->nclasses; ci++) old += (long long)p->classes[ci].nreplicas * p->classes[ci].nmicro;
  long long reps = 0;
  for (int ci = 0; ci < p->nclasses; ci++) reps += p->classes[ci].nreplicas;
  if (M < reps)
    return hm_cli_fail("use a larger batch or a plan with fewer replicas",
                       "--batch %lld gives %lld micro-batches for %lld replicas", batch, M, reps);
  for (int ci = 0; ci < p->nclasses; ci++) {
    hm_plan_class *cl = &p->classes[ci];
    long long m = (long long)floor((double)cl->nmicro * M / old);
    cl->nmicro = (int)(m < 1 ? 1 : m);
    got += (long long)cl->nreplicas * cl->nmicro;
  }
  /* the remainder goes one micro-batch per replica to classes in order; over-shoot is removed */
  for (int ci = 0; got != M && ci < p->nclasses; ci++) {
    hm_plan_class *cl = &p->classes[ci];
    while (got + cl->nreplicas <= M) cl->nmicro++, got += cl->nreplicas;
    while (got > M && cl->nmicro > 1) cl->nmicro--, got -= cl->nreplicas;
  }
  if (got != M)
    return hm_cli_fail("choose a batch that the plan's replica counts can split exactly",
                       "--batch %lld cannot be split over the plan's classes (%lld of %lld micro-batches)",
                       batch, got, M);
  p->global_batch = batch;
  return 0;
}

int hm_cmd_simulate(int argc, char **argv) {
  plan_args a;
  int rc = parse_args(argc, argv, &a, 1);
  if (rc != HM_OPTS_CONTINUE) return rc;
  rc = 0;
  if (!a.plan) return hm_cli_fail("usage: hetmix simulate --plan plan.json (see --help)", "simulate needs --plan");
  hm_plan *p = calloc(1, sizeof *p);
  hm_cluster pc, c;
  hm_model pm, m;
  hm_train pt, t;
  hm_profile pr;
  memset(&pc, 0, sizeof pc);
  memset(&c, 0, sizeof c);
  memset(&pm, 0, sizeof pm);
  memset(&m, 0, sizeof m);
  memset(&pr, 0, sizeof pr);
  int have_profile = 0;
  if (!p) return hm_cli_fail(NULL, "out of memory");
  hm_status st = hm_plan_load(a.plan, NULL, p, &pc, &pm, &pt);
  if (st != HM_OK) {
    free(p);
    return hm_cli_fail_status(st, "plan", "re-create it with `hetmix plan` (format: docs/plan.md)");
  }
  t = pt;
  rc = load_inputs(&a, &c, &m, &t, &pr, &have_profile);
  if (rc) goto done;
  const hm_cluster *cl = a.cluster ? &c : &pc;
  const hm_model *md = a.model ? &m : &pm;
  if ((rc = resolve_inputs(cl, md, &t, have_profile ? &pr : NULL)) != 0) goto done;
  if (a.cluster && (rc = remap_types(p, &pc, &c)) != 0) goto done;
  if (a.batch && (rc = rebatch(p, a.batch)) != 0) goto done;
  if (!a.batch) p->global_batch = 0; /* recomputed from the classes */
  if (a.cluster || a.model || a.train || a.batch || a.profile)
    p->upper_bound_tokens_per_s = 0; /* the stored bound was for the original inputs */
  hm_plan_inputs in = {.cluster = cl, .model = md, .train = &t, .profile = have_profile ? &pr : NULL};
  hm_sim_trace tr = {0};
  st = hm_plan_predict(&in, p, a.trace ? &tr : NULL);
  if (st == HM_OK && a.trace) st = hm_sim_trace_write(&tr, a.trace);
  hm_sim_trace_free(&tr);
  if (st != HM_OK) {
    rc = hm_cli_fail_status(st, "simulate", "the plan's stages must fit the what-if cluster and model");
    goto done;
  }
  printf("plan %s on cluster \"%s\", model \"%s\", global batch %lld\n\n", a.plan, cl->name, md->name,
         (long long)p->global_batch);
  print_header();
  print_plan_row(cl, 1, p);
  printf("\n");
  print_summary(&in, p);
  print_stages(cl, p);
  if (p->over_memory) printf("warning: this plan does not fit in memory on this cluster\n");
  if (a.trace) printf("wrote %s\n", a.trace);
done:
  free(p);
  hm_cluster_free(&pc);
  hm_cluster_free(&c);
  hm_model_free(&pm);
  hm_model_free(&m);
  if (have_profile) hm_profile_free(&pr);
  return rc;
}
