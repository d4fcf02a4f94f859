/* `hetmix plan` (search the fastest plans for a cluster and a model) and `hetmix simulate`
 * (re-predict a plan.json, optionally on another cluster, model or batch: what-if).
 * Printing only; the planning itself is in src/plan. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "hetmix/plan.h"
#include "options.h"
#include "util/util.h"

typedef struct plan_args {
  const char *cluster, *model, *profile, *train, *out, *trace, *plan, *add, *remove;
  int top, max_stages, max_chunks;
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
      HM_OPT_ROW(HM_OPT_INT, "max-chunks", 0, &a->max_chunks, 1, 8, "V",
                 "interleaved 1F1B with up to V model chunks per stage; 1: plain 1F1B\n"
                 "[8; 1 when every device type has a backend: `hetmix launch` runs\n"
                 "interleaved plans without tensor parallelism, checkpoints or restarts]"),
      HM_OPT_SECTION_ROW("what-if (prints the best plan of the changed cluster beside the current one):"),
      HM_OPT_STR_ROW("add", 0, &a->add, "TYPE:COUNT[@POOL],...",
                     "add COUNT devices of TYPE (whole hosts of a group holding only TYPE)"),
      HM_OPT_STR_ROW("remove", 0, &a->remove, "TYPE:COUNT[@POOL],...",
                     "remove COUNT devices of TYPE (whole hosts, last groups first)"),
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
  const int ndev = hm_plan_class_devstages(cl); /* interleaved: the device stages, then v */
  n += snprintf(buf + n, cap - n, "%d x [", cl->nreplicas);
  for (int s = 0; s < ndev && n < cap;) {
    int e = s;
    while (e < ndev && cl->stages[e].type == cl->stages[s].type) e++;
    n += snprintf(buf + n, cap - n, "%s%s/tp%d x%d", s ? " + " : "", c->types[cl->stages[s].type].name,
                  cl->stages[s].tp, e - s);
    s = e;
  }
  if (n < cap && hm_plan_class_chunks(cl) > 1)
    n += snprintf(buf + n, cap - n, "] interleaved v=%d m=%d layers per chunk", hm_plan_class_chunks(cl),
                  cl->nmicro);
  else if (n < cap)
    n += snprintf(buf + n, cap - n, "] m=%d layers", cl->nmicro);
  for (int s = 0; s < cl->nstages && n < cap; s++)
    n += snprintf(buf + n, cap - n, "%s%d", s ? "," : " ", cl->stages[s].layer_end - cl->stages[s].layer_begin);
}

/* --max-chunks by default: interleaved 1F1B (8) unless every device type has a backend, i.e. the
 * plan is one `hetmix launch` runs: plain 1F1B (1), which its runtime runs with tensor
 * parallelism, checkpoints and restarts too (interleaved plans: without them, for now). */
static int default_chunks(const hm_cluster *c) {
  for (int k = 0; k < c->ntypes; k++)
    if (!c->types[k].backend[0]) return HM_SEARCH_MAX_CHUNKS_DEFAULT;
  return 1;
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

/* Which figures of the prediction are measured (the profile) and which come from the cluster
 * spec's datasheet numbers, and the prediction's uncertainty from the profile's spread. */
static void print_sources(const hm_plan_inputs *in, const hm_plan *p) {
  const hm_cluster *c = in->cluster;
  const hm_profile *pr = in->profile;
  printf("figures:");
  for (int k = 0; k < c->ntypes && k < HM_PLAN_MAX_TYPES; k++) {
    if (p->devices_by_type[k] <= 0) continue;
    int n = 0, run = 0;
    double spread = 0;
    for (int i = 0; pr && i < pr->nlayers; i++)
      if (pr->layers[i].type == k) {
        n++;
        run += pr->layers[i].from_run;
        if (pr->layers[i].spread > spread) spread = pr->layers[i].spread;
      }
    if (run) printf(" %s compute measured (profile, calibrated by a training run: hetmix calibrate);", c->types[k].name);
    else if (n && spread > 0) printf(" %s compute measured (profile, spread up to %.1f%%);", c->types[k].name, 100 * spread);
    else if (n) printf(" %s compute measured (profile, spread not recorded);", c->types[k].name);
    else printf(" %s compute from the datasheet (cluster spec);", c->types[k].name);
  }
  printf(" links %s\n", pr && pr->nlinks ? "measured where the profile has them, else the cluster spec"
                                          : "from the cluster spec");
  double rel = 0;
  if (hm_plan_spread(in, p, &rel) != HM_OK) {
    hm_clear_error();
    return;
  }
  if (rel > 0)
    printf("uncertainty: +-%.1f%% (step %.4f .. %.4f s): every measured layer figure moved by its measured spread\n",
           100 * rel, p->step_time * (1 - rel), p->step_time * (1 + rel));
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
  print_sources(in, p);
}

static void print_stages(const hm_cluster *c, const hm_plan *p) {
  printf("\n%5s %5s %-14s %9s %9s %9s %9s %9s %6s %9s %9s\n", "class", "stage", "type/tp", "layers",
         "fwd(ms)", "bwd(ms)", "busy(s)", "idle(s)", "held", "mem(GB)", "cap(GB)");
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++) {
      const hm_plan_stage *st = &p->classes[ci].stages[s];
      char tt[HM_SPEC_NAME_MAX + 8], lr[32], stg[32];
      snprintf(tt, sizeof tt, "%s/%d", c->types[st->type].name, st->tp);
      snprintf(lr, sizeof lr, "%d-%d", st->layer_begin, st->layer_end - 1);
      const int ndev = hm_plan_class_devstages(&p->classes[ci]);
      if (ndev < p->classes[ci].nstages) /* interleaved: device stage.chunk */
        snprintf(stg, sizeof stg, "%d.%d", s % ndev, s / ndev);
      else
        snprintf(stg, sizeof stg, "%d", s);
      printf("%5d %5s %-14s %9s %9.2f %9.2f %9.3f %9.3f %6d %9.2f %9.2f\n", ci, stg, tt, lr,
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

/* Applies one --add/--remove list "TYPE:COUNT[@POOL],..." (sign +1 or -1) to *w, which holds
 * the cluster so far (replaced by the changed copy). */
static int apply_changes(hm_cluster *w, const char *list, int sign, const char *opt) {
  char buf[1024];
  if (strlen(list) >= sizeof buf) return hm_cli_fail(NULL, "--%s: longer than %zu characters", opt, sizeof buf - 1);
  strcpy(buf, list);
  char *save = NULL;
  for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(item, ':'), *at = strchr(item, '@'), *end = NULL;
    if (at) *at = '\0';
    long long n = colon ? strtoll(colon + 1, &end, 10) : 0;
    if (!colon || colon == item || !end || end == colon + 1 || *end || n < 1 || n > 1000000000)
      return hm_cli_fail("write TYPE:COUNT or TYPE:COUNT@POOL, e.g. mi250:64@room-amd",
                         "--%s: \"%s\" is not TYPE:COUNT[@POOL] with 1 <= COUNT <= 1e9", opt, item);
    *colon = '\0';
    hm_cluster next;
    hm_status st = hm_cluster_whatif(w, item, sign * n, at ? at + 1 : NULL, &next);
    if (st != HM_OK)
      return hm_cli_fail_status(st, sign > 0 ? "--add" : "--remove",
                                "name a device type (and pool) of the cluster; counts go by whole "
                                "hosts of a host group holding only that type");
    hm_cluster_free(w);
    *w = next;
  }
  return 0;
}

static void print_compare_row(const char *what, double a, double b, const char *fmt, int pct) {
  char x[32], y[32];
  snprintf(x, sizeof x, fmt, a);
  snprintf(y, sizeof y, fmt, b);
  printf("%-28s %14s %14s", what, x, y);
  if (pct && a > 0) printf(" %+9.1f%%", 100 * (b / a - 1));
  printf("\n");
}

/* 1 when the current best plan, set up on the changed cluster (it is still valid there after
 * adding devices, and may be after removing some), beats the changed cluster's searched best:
 * *kept is then that plan, predicted there. Devices added must never look like a loss. */
static int keep_current(const hm_plan_inputs *in, const hm_plan *cur, const hm_plan_inputs *in2,
                        const hm_search_result *r2, hm_plan *kept) {
  if (hm_plan_carry_over(in, cur, in2, kept) != HM_OK) {
    hm_clear_error();
    return 0;
  }
  kept->upper_bound_tokens_per_s = r2->upper_bound_tokens_per_s;
  kept->utilization = r2->upper_bound_tokens_per_s > 0
                          ? kept->tokens_per_s / r2->upper_bound_tokens_per_s : 0;
  return !kept->over_memory && kept->tokens_per_s > r2->plans[0].tokens_per_s;
}

/* --add/--remove: plans the cluster as it is and as changed, and prints both best plans. */
static int plan_whatif(const plan_args *a, const hm_plan_inputs *in, hm_profile *pr,
                       const hm_search_options *opt) {
  if (a->out || a->trace)
    return hm_cli_fail("plan the changed cluster from its own file to write a plan",
                       "--add/--remove compare two clusters and write no plan (-o, --trace)");
  const double t0 = hm_now_s();
  hm_cluster w;
  memset(&w, 0, sizeof w);
  int rc = 0;
  hm_search_result *res = calloc(2, sizeof *res);
  if (!res) {
    rc = hm_cli_fail(NULL, "out of memory");
    goto done;
  }
  hm_status st;
  {
    const char *lists[2] = {a->add, a->remove};
    const int signs[2] = {1, -1};
    const char *names[2] = {"add", "remove"};
    int have = 0;
    for (int i = 0; i < 2 && !rc; i++) {
      if (!lists[i]) continue;
      if (!have) { /* a copy to change: a round trip through the JSON form */
        cJSON *j = hm_cluster_to_cjson(in->cluster);
        st = j ? hm_cluster_from_cjson(j, "cluster", &w) : HM_ERR_NOMEM;
        cJSON_Delete(j);
        if (st != HM_OK) {
          rc = hm_cli_fail_status(st, "what-if cluster", NULL);
          break;
        }
        have = 1;
      }
      rc = apply_changes(&w, lists[i], signs[i], names[i]);
    }
  }
  if (rc) goto done;
  if ((st = hm_plan_search(in, opt, &res[0])) != HM_OK) {
    rc = hm_cli_fail_status(st, "plan (current cluster)", NULL);
    goto done;
  }
  if (pr && (st = hm_profile_resolve(pr, &w, in->model)) != HM_OK) {
    rc = hm_cli_fail_status(st, "profile (what-if cluster)", "a profile naming a removed device "
                            "type cannot be used with that removal");
    goto done;
  }
  hm_plan_inputs in2 = {.cluster = &w, .model = in->model, .train = in->train, .profile = pr};
  if ((st = hm_plan_search(&in2, opt, &res[1])) != HM_OK) {
    rc = hm_cli_fail_status(st, "plan (what-if cluster)", NULL);
    goto done;
  }
  hm_plan kept;
  const int carried = keep_current(in, &res[0].plans[0], &in2, &res[1], &kept);
  const hm_plan *p0 = &res[0].plans[0], *p1 = carried ? &kept : &res[1].plans[0];
  printf("what-if on cluster \"%s\", model \"%s\":%s%s%s%s\n\n", in->cluster->name, in->model->name,
         a->add ? " add " : "", a->add ? a->add : "", a->remove ? " remove " : "",
         a->remove ? a->remove : "");
  printf("%-28s %14s %14s %10s\n", "", "current", "what-if", "change");
  print_compare_row("devices in the cluster", (double)in->cluster->ndevices, (double)w.ndevices, "%.0f", 1);
  print_compare_row("devices used by the best", (double)p0->devices_used, (double)p1->devices_used, "%.0f", 1);
  print_compare_row("tokens/s", p0->tokens_per_s, p1->tokens_per_s, "%.0f", 1);
  print_compare_row("step (s)", p0->step_time, p1->step_time, "%.4f", 1);
  print_compare_row("utilization (% of own bound)", 100 * p0->utilization, 100 * p1->utilization, "%.1f", 0);
  print_compare_row("upper bound tokens/s", res[0].upper_bound_tokens_per_s,
                    res[1].upper_bound_tokens_per_s, "%.0f", 1);
  print_compare_row("MFU (%)", 100 * p0->mfu, 100 * p1->mfu, "%.1f", 0);
  printf("\ncurrent best plan:\n");
  print_header();
  print_plan_row(in->cluster, 1, p0);
  printf("what-if best plan:\n");
  print_header();
  print_plan_row(&w, 1, p1);
  if (carried)
    printf("(the search on the changed cluster found %.0f tokens/s at best; the current plan, "
           "still valid there, is faster and is kept)\n", res[1].plans[0].tokens_per_s);
  printf("\nanswered in %.3f s (searches %.3f s + %.3f s)\n", hm_now_s() - t0, res[0].seconds,
         res[1].seconds);
done:
  if (res) {
    hm_search_result_free(&res[0]);
    hm_search_result_free(&res[1]);
  }
  free(res);
  hm_cluster_free(&w);
  return rc;
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
  opt.max_chunks = a.max_chunks ? a.max_chunks : default_chunks(&c);
  if (a.add || a.remove) {
    rc = plan_whatif(&a, &in, have_profile ? &pr : NULL, &opt);
    goto done;
  }
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
