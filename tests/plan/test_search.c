/* Plan search, prediction and plan.json on the example specs: plans within memory (memory per
 * device equals the documented formula), the best single-type plans sum to the upper bound,
 * deterministic results, clear no-fit errors, and plan files that round-trip and are refused on
 * the wrong cluster or with tampered roles. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "hetmix/model.h"
#include "hetmix/plan.h"
#include "plan/plan_internal.h"
#include "runtime/pipeline_internal.h"

/* Tolerances: the planner's figures are f64 sums and products of at most ~1e4 terms (stages x
 * micro-batches x layers, all positive), so they err by at most ~1e4 u64 ~ 1e-12 relative. The
 * checks allow 1e-9 relative (plus 1 byte for byte counts, integers below 2^53) where the test
 * recomputes a figure in another order, 1e-12 absolute for times of ~1e-2 s computed by the same
 * formula, and 1e-6 where a figure goes through a rate and back (tokens/s = tokens / time); a
 * wrong term (a missing layer, micro-batch or byte class) changes a figure by 1e-3 or more. */

typedef struct specs {
  hm_cluster c;
  hm_model m;
  hm_train t;
  hm_plan_inputs in;
} specs;

static void load(specs *s, const char *cluster, const char *model, const char *train) {
  char path[512];
  memset(s, 0, sizeof *s);
  snprintf(path, sizeof path, "%s/examples/%s", HM_SOURCE_DIR, cluster);
  assert_int_equal(hm_cluster_load(path, &s->c), HM_OK);
  snprintf(path, sizeof path, "%s/examples/%s", HM_SOURCE_DIR, model);
  assert_int_equal(hm_model_load(path, &s->m), HM_OK);
  snprintf(path, sizeof path, "%s/examples/%s", HM_SOURCE_DIR, train);
  assert_int_equal(hm_train_load(path, &s->t), HM_OK);
  assert_int_equal(hm_spec_resolve(&s->c, &s->m, &s->t, NULL), HM_OK);
  s->in = (hm_plan_inputs){.cluster = &s->c, .model = &s->m, .train = &s->t};
}

static void unload(specs *s) {
  hm_cluster_free(&s->c);
  hm_model_free(&s->m);
}

/* docs/plan.md: static = params/tp * (weight + grad + master + optimizer bytes) (+ the tied
 * copy when p > 1, + one layer's activations under full recompute); peak = static +
 * min(m, p - s) * sum(held activations * mb / tp). */
/* Interleaved 1F1B: a device holds every chunk's weights (one recompute workspace) and, at its
 * peak, the activations of the micro-batches its op list holds at once, summed per chunk. */
static void check_memory_interleaved(const specs *s, const hm_plan *p, int ci, const double *stat,
                                     const double *act, const double *reserve) {
  const hm_plan_class *cl = &p->classes[ci];
  const int ndev = hm_plan_class_devstages(cl);
  hm_schedule sc;
  assert_int_equal(hm_plan_schedule(&s->in, p, ci, &sc), HM_OK);
  for (int d = 0; d < ndev; d++) {
    double held = 0, peak = 0, total = reserve[d];
    for (int j = d; j < cl->nstages; j += ndev) total += stat[j] - reserve[j];
    for (int i = 0; i < sc.stages[d].nops; i++) {
      const hm_op *op = &sc.stages[d].ops[i];
      if (op->kind == HM_OP_FWD) held += act[op->chunk * ndev + d], peak = fmax(peak, held);
      if (op->kind == HM_OP_BWD) held -= act[op->chunk * ndev + d];
    }
    const hm_plan_stage *sg = &cl->stages[d];
    assert_int_equal(sg->max_inflight, hm_schedule_max_inflight(&sc, d));
    assert_true(fabs(sg->mem_peak - (total + peak)) <= 1e-9 * sg->mem_peak + 1);
    assert_true(sg->mem_peak <= s->c.types[sg->type].memory_bytes * s->t.memory_fraction);
  }
  hm_schedule_free(&sc);
}

static void check_memory(const specs *s, const hm_plan *p) {
  int replicas = 0;
  for (int ci = 0; ci < p->nclasses; ci++) replicas += p->classes[ci].nreplicas;
  for (int ci = 0; ci < p->nclasses; ci++) {
    const hm_plan_class *cl = &p->classes[ci];
    const int ndev = hm_plan_class_devstages(cl);
    double stat_of[HM_PLAN_MAX_STAGES], act_of[HM_PLAN_MAX_STAGES], res_of[HM_PLAN_MAX_STAGES];
    for (int st = 0; st < cl->nstages; st++) {
      const hm_plan_stage *sg = &cl->stages[st];
      double params = 0, act = 0, reserve = 0;
      for (int l = sg->layer_begin; l < sg->layer_end; l++) {
        const hm_layer *ly = &s->m.layers[l];
        params += (ly->params + (ndev > 1 ? ly->shared_params : 0)) / sg->tp;
        act += hm_layer_held_act_bytes(ly, &s->t) * (double)p->micro_batch / sg->tp;
      }
      if (s->t.recompute == HM_RECOMPUTE_FULL)
        for (int l = 0; l < s->m.nlayers; l++)
          reserve = fmax(reserve, s->m.layers[l].act_bytes * (double)p->micro_batch / sg->tp);
      double opt = s->t.master_bytes + s->t.optimizer_bytes;
      if (s->t.zero_stage >= 1 && replicas > 1) opt /= replicas;
      double stat = params * (s->t.weight_bytes + s->t.grad_bytes + opt) + reserve;
      stat_of[st] = stat, act_of[st] = act, res_of[st] = reserve;
      if (ndev < cl->nstages) continue; /* interleaved: per device below */
      int infl = cl->nmicro < cl->nstages - st ? cl->nmicro : cl->nstages - st;
      assert_true(fabs(sg->mem_static - stat) <= 1e-9 * stat + 1);
      assert_int_equal(sg->max_inflight, infl);
      assert_true(fabs(sg->mem_peak - (stat + infl * act)) <= 1e-9 * sg->mem_peak + 1);
      assert_true(sg->mem_peak <= s->c.types[sg->type].memory_bytes * s->t.memory_fraction);
    }
    if (ndev < cl->nstages) check_memory_interleaved(s, p, ci, stat_of, act_of, res_of);
  }
}

static void test_local_plans(void **state) {
  (void)state;
  specs s;
  load(&s, "local-2backend.json", "gpt-mini.json", "train-local.json");
  hm_search_options o;
  hm_search_options_default(&o);
  hm_search_result *r = calloc(2, sizeof *r);
  assert_non_null(r);
  assert_int_equal(hm_plan_search(&s.in, &o, &r[0]), HM_OK);
  assert_true(r[0].nplans >= 1);
  for (int i = 0; i < r[0].nplans; i++) {
    const hm_plan *p = &r[0].plans[i];
    assert_false(p->over_memory);
    check_memory(&s, p);
    assert_int_equal(p->global_batch, s.t.global_batch);
    if (i) assert_true(p->step_time >= r[0].plans[i - 1].step_time);
  }
  /* upper bound = sum of each type alone; utilization against it */
  double ub = 0;
  for (int k = 0; k < s.c.ntypes; k++) {
    assert_true(r[0].type_best_tokens_per_s[k] > 0);
    ub += r[0].type_best_tokens_per_s[k];
  }
  assert_true(fabs(ub - r[0].upper_bound_tokens_per_s) < 1e-6 * ub); /* rates: see the top */
  assert_true(fabs(r[0].plans[0].utilization - r[0].plans[0].tokens_per_s / ub) < 1e-9);
  assert_true(r[0].plans[0].tokens_per_s >= r[0].best_single.tokens_per_s * (1 - 1e-9));
  /* the schedule the runtime gets is the one predicted: per stage m FWD and m BWD */
  for (int ci = 0; ci < r[0].plans[0].nclasses; ci++) {
    hm_schedule sc;
    const hm_plan_class *cl = &r[0].plans[0].classes[ci];
    assert_int_equal(hm_plan_schedule(&s.in, &r[0].plans[0], ci, &sc), HM_OK);
    assert_int_equal(sc.nstages, cl->nstages);
    assert_int_equal(sc.nmicro, cl->nmicro);
    for (int st = 0; st < sc.nstages; st++)
      assert_int_equal(hm_schedule_max_inflight(&sc, st), cl->stages[st].max_inflight);
    hm_schedule_free(&sc);
  }
  /* deterministic */
  assert_int_equal(hm_plan_search(&s.in, &o, &r[1]), HM_OK);
  assert_int_equal(r[0].nplans, r[1].nplans);
  for (int i = 0; i < r[0].nplans; i++) {
    assert_true(r[0].plans[i].step_time == r[1].plans[i].step_time);
    assert_memory_equal(r[0].plans[i].classes, r[1].plans[i].classes,
                        sizeof(hm_plan_class) * (size_t)r[0].plans[i].nclasses);
  }
  /* a single-type search gives the per-type best of the bound */
  hm_search_result one;
  o.only_type = 1;
  assert_int_equal(hm_plan_search(&s.in, &o, &one), HM_OK);
  assert_true(fabs(one.plans[0].tokens_per_s - r[0].type_best_tokens_per_s[1]) <
              1e-9 * one.plans[0].tokens_per_s);
  for (int ci = 0; ci < one.plans[0].nclasses; ci++)
    for (int st = 0; st < one.plans[0].classes[ci].nstages; st++)
      assert_int_equal(one.plans[0].classes[ci].stages[st].type, 1);
  hm_search_result_free(&one);
  hm_search_result_free(&r[0]);
  hm_search_result_free(&r[1]);
  free(r);
  unload(&s);
}

/* Heterogeneous data parallelism with a schedule per class (search_hdp.c): on reference-768 with
 * Llama-2-70B, the A100s as 16 x [a100/tp4 x10] interleaved v=4 (m=57) beside 4 x [mi250/tp4 x8]
 * interleaved v=5 (m=28), each class's chunks of 2 layers (3 at both ends), simulates at
 * 20.677 s (202,848 tokens/s); before, the search's best was a mixed pipeline at 20.964 s
 * (200,067): family 2 water-fills plain-1F1B estimates of each type's best template at the
 * whole batch (mi250/tp2 x9, whose memory leaves no room to interleave at its share), and
 * interleaving gave every class of a plan one v. The search must find a plan at least as fast. */
static void test_hetero_dp_interleaved(void **state) {
  (void)state;
  specs s;
  load(&s, "reference-768.json", "llama2-70b.json", "train-default.json");
  int a100 = -1, mi250 = -1;
  for (int k = 0; k < s.c.ntypes; k++) {
    if (!strcmp(s.c.types[k].name, "a100")) a100 = k;
    if (!strcmp(s.c.types[k].name, "mi250")) mi250 = k;
  }
  assert_true(a100 >= 0 && mi250 >= 0);
  hm_plan *hand = calloc(1, sizeof *hand);
  assert_non_null(hand);
  hand->micro_batch = 1;
  const struct { int type, tp, p, v, R, m; } cls[2] = {{a100, 4, 10, 4, 16, 57}, {mi250, 4, 8, 5, 4, 28}};
  for (int c = 0; c < 2; c++) {
    hm_plan_class *pc = &hand->classes[hand->nclasses++];
    pc->nreplicas = cls[c].R;
    pc->nmicro = cls[c].m;
    pc->nchunks = cls[c].v;
    pc->nstages = cls[c].p * cls[c].v; /* 40 virtual stages: 3, 2 x 38, 3 layers */
    for (int j = 0, b = 0; j < pc->nstages; j++) {
      const int n = j == 0 || j == pc->nstages - 1 ? 3 : 2;
      pc->stages[j] = (hm_plan_stage){.type = cls[c].type, .tp = cls[c].tp, .layer_begin = b,
                                      .layer_end = b + n};
      b += n;
    }
    assert_int_equal(pc->stages[pc->nstages - 1].layer_end, s.m.nlayers);
  }
  assert_int_equal(hm_plan_predict(&s.in, hand, NULL), HM_OK);
  assert_false(hand->over_memory);
  hm_search_options o;
  hm_search_options_default(&o);
  o.top_k = 1;
  hm_search_result *r = calloc(1, sizeof *r);
  assert_non_null(r);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  assert_true(r->nplans == 1);
  if (!(r->plans[0].step_time <= hand->step_time * (1 + 1e-12)))
    fail_msg("best plan %.4f s (%.0f tokens/s), the hand-built one %.4f s (%.0f)",
             r->plans[0].step_time, r->plans[0].tokens_per_s, hand->step_time, hand->tokens_per_s);
  check_memory(&s, &r->plans[0]);
  hm_search_result_free(r);
  free(r);
  free(hand);
  unload(&s);
}

static void test_memory_limits(void **state) {
  (void)state;
  specs s;
  load(&s, "reference-768.json", "llama2-70b.json", "train-default.json");
  hm_search_options o;
  hm_search_options_default(&o);
  o.top_k = 8;
  hm_search_result *r = calloc(1, sizeof *r);
  assert_non_null(r);
  /* tight memory: plans change but every returned one fits */
  for (int k = 0; k < s.c.ntypes; k++) s.c.types[k].memory_bytes = 24e9;
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  for (int i = 0; i < r->nplans; i++) {
    assert_false(r->plans[i].over_memory);
    check_memory(&s, &r->plans[i]);
  }
  hm_search_result_free(r);
  /* all devices together cannot hold the weights and optimizer state */
  for (int k = 0; k < s.c.ntypes; k++) s.c.types[k].memory_bytes = 1e9;
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "cannot fit"));
  assert_non_null(strstr(hm_last_error(), "GB"));
  /* enough memory in total, but a stage of one layer does not fit a device */
  for (int k = 0; k < s.c.ntypes; k++) s.c.types[k].memory_bytes = 2e9;
  s.t.global_batch = 1 << 20;
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "even one layer per device"));
  free(r);
  unload(&s);
}

static void test_plan_file(void **state) {
  (void)state;
  specs s;
  load(&s, "reference-768.json", "gpt2-124m.json", "train-default.json");
  hm_search_options o;
  hm_search_options_default(&o);
  o.upper_bound = 0;
  hm_search_result *r = calloc(1, sizeof *r);
  hm_plan *back = calloc(1, sizeof *back);
  assert_non_null(r);
  assert_non_null(back);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  char path[512];
  snprintf(path, sizeof path, "%s/test_plan_file.json", HM_BINARY_DIR);
  assert_int_equal(hm_plan_write(&s.in, &r->plans[0], path), HM_OK);
  hm_cluster c2;
  hm_model m2;
  hm_train t2;
  assert_int_equal(hm_plan_load(path, NULL, back, &c2, &m2, &t2), HM_OK);
  /* the recorded prediction comes back (the runtime's watchdog and report read it) */
  assert_true(back->step_time > 0 && fabs(back->step_time - r->plans[0].step_time) <= 1e-6 * back->step_time);
  assert_int_equal(back->nclasses, r->plans[0].nclasses);
  for (int ci = 0; ci < back->nclasses; ci++) {
    assert_int_equal(back->classes[ci].nreplicas, r->plans[0].classes[ci].nreplicas);
    assert_int_equal(back->classes[ci].nmicro, r->plans[0].classes[ci].nmicro);
    for (int st = 0; st < back->classes[ci].nstages; st++) {
      assert_int_equal(back->classes[ci].stages[st].layer_begin, r->plans[0].classes[ci].stages[st].layer_begin);
      assert_int_equal(back->classes[ci].stages[st].tp, r->plans[0].classes[ci].stages[st].tp);
    }
  }
  /* re-predicting the loaded plan on its embedded specs gives the same step time */
  hm_plan_inputs in2 = {.cluster = &c2, .model = &m2, .train = &t2};
  assert_int_equal(hm_plan_predict(&in2, back, NULL), HM_OK);
  assert_true(fabs(back->step_time - r->plans[0].step_time) <= 1e-9 * back->step_time);
  hm_cluster_free(&c2);
  hm_model_free(&m2);
  /* refused for another cluster */
  specs local;
  load(&local, "local-2backend.json", "gpt-mini.json", "train-local.json");
  assert_int_equal(hm_plan_load(path, &local.in, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan."));
  unload(&local);
  /* tampered roles are refused with the field's path */
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)len + 1);
  assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
  text[len] = 0;
  fclose(f);
  cJSON *j = cJSON_Parse(text);
  free(text);
  cJSON *rank0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "ranks"), 0);
  cJSON_ReplaceItemInObject(rank0, "rank", cJSON_CreateNumber(767));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.ranks[0]"));
  cJSON *stage0 = cJSON_GetArrayItem(
      cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "classes"), 0), "stages"), 0);
  cJSON_ReplaceItemInObject(stage0, "tp", cJSON_CreateString("eight"));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].stages[0].tp"));
  cJSON_Delete(j);
  remove(path);
  hm_search_result_free(r);
  free(r);
  free(back);
  unload(&s);
}

static cJSON *read_json(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)len + 1);
  assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
  text[len] = 0;
  fclose(f);
  cJSON *j = cJSON_Parse(text);
  free(text);
  assert_non_null(j);
  return j;
}

/* An interleaved plan (2 device stages x 2 chunks): its devices are counted once, plan.json
 * records the schedule and chunks and reads back to the same prediction, and inconsistent
 * chunk settings are refused with the field's path. */
static void test_interleaved_plan_file(void **state) {
  (void)state;
  specs s;
  load(&s, "reference-768.json", "gpt2-124m.json", "train-default.json");
  hm_plan *p = calloc(1, sizeof *p), *back = calloc(1, sizeof *back);
  assert_non_null(p);
  assert_non_null(back);
  const int a100 = hm_cluster_find_type(&s.c, "a100"), n = s.m.nlayers;
  p->micro_batch = 1;
  p->nclasses = 1;
  p->classes[0] = (hm_plan_class){.nreplicas = 4, .nmicro = 256, .nstages = 4, .nchunks = 2};
  for (int j = 0; j < 4; j++)
    p->classes[0].stages[j] = (hm_plan_stage){.type = a100, .tp = 1, .layer_begin = j * n / 4,
                                              .layer_end = (j + 1) * n / 4};
  assert_int_equal(hm_plan_predict(&s.in, p, NULL), HM_OK);
  assert_int_equal(p->devices_used, 8);
  check_memory(&s, p);
  snprintf(s.c.types[a100].backend, sizeof s.c.types[a100].backend, "cpu"); /* for the runtime's reading */
  char path[512];
  snprintf(path, sizeof path, "%s/test_interleaved_plan_file.json", HM_BINARY_DIR);
  assert_int_equal(hm_plan_write(&s.in, p, path), HM_OK);
  assert_int_equal(hm_plan_load(path, &s.in, back, NULL, NULL, NULL), HM_OK);
  assert_int_equal(back->classes[0].nchunks, 2);
  assert_int_equal(back->classes[0].nstages, 4);
  /* the pipeline runtime reads it as 2 device stages of 2 chunks over the 4 virtual stages'
   * bounds, each replica's ranks once */
  hm_pipe_plan *pp = calloc(1, sizeof *pp);
  assert_non_null(pp);
  const hm_status lst = hm_pipe_plan_load(path, NULL, NULL, pp);
  if (lst != HM_OK) fail_msg("%s", hm_last_error());
  assert_int_equal(pp->nstages, 2);
  assert_int_equal(pp->nchunks, 2);
  assert_int_equal(pp->nreplicas, 4);
  assert_int_equal(pp->nranks, 8);
  for (int j = 0; j <= 4; j++) assert_int_equal(pp->stage_layers[j], j * n / 4);
  free(pp);
  assert_int_equal(hm_plan_predict(&s.in, back, NULL), HM_OK);
  assert_true(fabs(back->step_time - p->step_time) <= 1e-9 * p->step_time);
  cJSON *j = read_json(path);
  cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "classes"), 0);
  assert_string_equal(cJSON_GetObjectItem(c0, "schedule")->valuestring, "interleaved-1f1b");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "ranks")), 8);
  cJSON_ReplaceItemInObject(c0, "schedule", cJSON_CreateString("1f1b"));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].chunks"));
  cJSON_ReplaceItemInObject(c0, "schedule", cJSON_CreateString("gpipe"));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].schedule"));
  cJSON_DeleteItemFromObject(c0, "schedule"); /* chunks alone say it */
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_OK);
  assert_int_equal(back->classes[0].nchunks, 2);
  cJSON_ReplaceItemInObject(c0, "chunks", cJSON_CreateNumber(3));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].stages: 4 stages are not 3 chunks"));
  cJSON_ReplaceItemInObject(c0, "chunks", cJSON_CreateNumber(2));
  cJSON *st2 = cJSON_GetArrayItem(cJSON_GetObjectItem(c0, "stages"), 2);
  cJSON_ReplaceItemInObject(st2, "tp", cJSON_CreateNumber(2));
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].stages[2]: chunk 1 of stage 0"));
  cJSON_Delete(j);
  remove(path);
  /* a plan file without the keys (older) is plain 1F1B */
  p->classes[0].nchunks = 1;
  assert_int_equal(hm_plan_predict(&s.in, p, NULL), HM_OK);
  assert_int_equal(p->devices_used, 16);
  assert_int_equal(hm_plan_write(&s.in, p, path), HM_OK);
  j = read_json(path);
  c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "classes"), 0);
  cJSON_DeleteItemFromObject(c0, "schedule");
  cJSON_DeleteItemFromObject(c0, "chunks");
  assert_int_equal(hm_plan_from_cjson(j, NULL, back, NULL, NULL, NULL), HM_OK);
  assert_int_equal(hm_plan_class_chunks(&back->classes[0]), 1);
  cJSON_Delete(j);
  remove(path);
  free(p);
  free(back);
  unload(&s);
}

static void test_large_cluster(void **state) {
  (void)state;
  specs s;
  load(&s, "mixed-1024-3types.json", "llama2-70b.json", "train-default.json");
  hm_search_options o;
  hm_search_options_default(&o);
  hm_search_result *r = calloc(1, sizeof *r);
  assert_non_null(r);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  const hm_plan *p = &r->plans[0];
  assert_true(p->devices_used <= s.c.ndevices);
  assert_true(p->utilization > 0 && p->utilization <= 1.0 + 1e-9);
  check_memory(&s, p);
  /* every rank's role: distinct devices of the right type */
  hm_plan_rank *ranks;
  int64_t n;
  assert_int_equal(hm_plan_assign_ranks(&s.in, p, &ranks, &n), HM_OK);
  assert_int_equal(n, p->devices_used);
  char *seen = calloc((size_t)s.c.ndevices, 1);
  for (int64_t i = 0; i < n; i++) {
    assert_false(seen[ranks[i].rank]);
    seen[ranks[i].rank] = 1;
    hm_rank_loc loc;
    assert_int_equal(hm_cluster_locate(&s.c, ranks[i].rank, &loc), HM_OK);
    assert_int_equal(loc.type, p->classes[ranks[i].cls].stages[ranks[i].stage].type);
  }
  free(seen);
  free(ranks);
  /* the same plans with the micro-batch sizes searched by two threads */
  hm_search_result *r2 = calloc(1, sizeof *r2);
  assert_non_null(r2);
  setenv("HETMIX_PLAN_THREADS", "2", 1);
  assert_int_equal(hm_plan_search(&s.in, &o, r2), HM_OK);
  unsetenv("HETMIX_PLAN_THREADS");
  assert_int_equal(r2->nplans, r->nplans);
  for (int i = 0; i < r->nplans; i++) {
    assert_true(r2->plans[i].step_time == r->plans[i].step_time);
    assert_memory_equal(r2->plans[i].classes, r->plans[i].classes,
                        sizeof(hm_plan_class) * (size_t)r->plans[i].nclasses);
  }
  assert_true(r2->upper_bound_tokens_per_s == r->upper_bound_tokens_per_s);
  hm_search_result_free(r2);
  free(r2);
  hm_search_result_free(r);
  free(r);
  unload(&s);
}

/* A plan predicted from hand-computable figures: compute-bound roofline, free links. */
static void test_predict_by_hand(void **state) {
  (void)state;
  static const char cluster[] =
      "{\"name\": \"hand\", \"device_types\": [{\"name\": \"x\", \"peak_flops\": {\"fp32\": 1e12},"
      " \"efficiency\": 0.5, \"memory_bytes\": 1e12, \"memory_bandwidth\": 1e15,"
      " \"intra_host_link\": {\"bandwidth\": 1e16, \"latency\": 0}}],"
      " \"hosts\": [{\"name\": \"h\", \"count\": 1, \"devices\": {\"type\": \"x\", \"count\": 2}}]}";
  static const char model[] =
      "{\"name\": \"four\", \"dtype\": \"fp32\", \"seq_len\": 1, \"layers\": [{\"kind\": \"l\","
      " \"count\": 4, \"fwd_flops\": 1e9, \"params\": 1000, \"act_bytes\": 100, \"out_bytes\": 0}]}";
  static const char train[] =
      "{\"global_batch\": 4, \"micro_batch_sizes\": [1], \"precision\": \"fp32\"}";
  specs s;
  memset(&s, 0, sizeof s);
  assert_int_equal(hm_cluster_parse(cluster, sizeof cluster - 1, "hand", &s.c), HM_OK);
  assert_int_equal(hm_model_parse(model, sizeof model - 1, "hand", &s.m), HM_OK);
  assert_int_equal(hm_train_parse(train, sizeof train - 1, "hand", &s.t), HM_OK);
  assert_int_equal(hm_spec_resolve(&s.c, &s.m, &s.t, NULL), HM_OK);
  s.in = (hm_plan_inputs){.cluster = &s.c, .model = &s.m, .train = &s.t};
  hm_plan *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->micro_batch = 1;
  p->nclasses = 1;
  p->classes[0] = (hm_plan_class){.nreplicas = 1, .nmicro = 4, .nstages = 2};
  p->classes[0].stages[0] = (hm_plan_stage){.type = 0, .tp = 1, .layer_begin = 0, .layer_end = 2};
  p->classes[0].stages[1] = (hm_plan_stage){.type = 0, .tp = 1, .layer_begin = 2, .layer_end = 4};
  assert_int_equal(hm_plan_predict(&s.in, p, NULL), HM_OK);
  /* per stage: forward 2 x 1e9 / (1e12 * 0.5) = 4 ms, backward twice that; (m+p-1)(f+b) */
  assert_true(fabs(p->classes[0].stages[0].fwd - 4e-3) < 1e-12);
  assert_true(fabs(p->classes[0].stages[0].bwd - 8e-3) < 1e-12);
  assert_true(fabs(p->step_time - 5 * 12e-3) < 1e-9);
  assert_true(fabs(p->tokens_per_s - 4 / p->step_time) < 1e-6);
  assert_true(fabs(p->bubble_fraction - 1.0 / 5) < 1e-6);
  /* fp32 AdamW: 4 + 4 + 8 bytes per parameter; stage 0 holds 2 micro-batches */
  assert_true(fabs(p->classes[0].stages[0].mem_peak - (2000 * 16 + 2 * 200)) < 1e-6);
  assert_true(fabs(p->classes[0].stages[1].mem_peak - (2000 * 16 + 1 * 200)) < 1e-6);
  /* MFU: 4 samples x 4 layers x 3e9 FLOPs / step / (2 x 1e12) */
  assert_true(fabs(p->mfu - 4 * 4 * 3e9 / p->step_time / 2e12) < 1e-9);
  /* the layer split the search finds for two stages is the even one */
  hm_search_options o;
  hm_search_options_default(&o);
  hm_search_result *r = calloc(1, sizeof *r);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  assert_true(r->plans[0].step_time <= p->step_time + 1e-12);
  hm_search_result_free(r);
  free(r);
  free(p);
  unload(&s);
}

/* The planner plans only tensor-parallel degrees the model splits: on a cluster whose cpu devices
 * hold the model only split in two (local-tp.json), a Llama whose kv_heads (3) no degree > 1 of
 * {2,4,8} divides gets no tp > 1 anywhere, a hand-made tp 2 plan is refused naming the layer, and
 * llama-mini's shape (12 heads, 6 KV heads, ffn 1152) gets tp 2; every planned degree is one the
 * model's own check (hm_stage_tp_sizes) accepts. */
static void plan_llama(const hm_spec_model_config *cfg, int *max_tp) {
  specs s;
  char path[512];
  memset(&s, 0, sizeof s);
  snprintf(path, sizeof path, "%s/examples/local-tp.json", HM_SOURCE_DIR);
  assert_int_equal(hm_cluster_load(path, &s.c), HM_OK);
  assert_int_equal(hm_model_from_config(cfg, HM_DTYPE_FP32, "llama-tp-check", &s.m), HM_OK);
  snprintf(path, sizeof path, "%s/examples/train-tp.json", HM_SOURCE_DIR);
  assert_int_equal(hm_train_load(path, &s.t), HM_OK);
  assert_int_equal(hm_spec_resolve(&s.c, &s.m, &s.t, NULL), HM_OK);
  s.in = (hm_plan_inputs){.cluster = &s.c, .model = &s.m, .train = &s.t};
  hm_search_options o;
  hm_search_options_default(&o);
  hm_search_result *r = calloc(1, sizeof *r);
  assert_non_null(r);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  *max_tp = 1;
  for (int i = 0; i < r->nplans; i++)
    for (int ci = 0; ci < r->plans[i].nclasses; ci++)
      for (int st = 0; st < r->plans[i].classes[ci].nstages; st++) {
        const int tp = r->plans[i].classes[ci].stages[st].tp;
        hm_tp_sizes sz;
        if (hm_stage_tp_sizes(cfg, tp, 0, &sz) != HM_OK) fail_msg("plan %d stage %d: tp %d: %s", i, st, tp, hm_last_error());
        *max_tp = tp > *max_tp ? tp : *max_tp;
      }
  if (r->nplans > 0) { /* the best plan at tp 2 on the cpu type */
    hm_plan *p = calloc(1, sizeof *p);
    assert_non_null(p);
    *p = r->plans[0];
    p->nclasses = 1;
    p->classes[0] = (hm_plan_class){.nreplicas = 1, .nmicro = 4, .nstages = 1};
    p->classes[0].stages[0] = (hm_plan_stage){.type = 0, .tp = 2, .layer_begin = 0, .layer_end = s.m.nlayers};
    const hm_status st = hm_plan_predict(&s.in, p, NULL);
    if (cfg->kv_heads % 2) {
      assert_int_equal(st, HM_ERR_SPEC);
      assert_non_null(strstr(hm_last_error(), "does not divide layer"));
    }
    free(p);
  }
  hm_search_result_free(r);
  free(r);
  unload(&s);
}

static void test_tp_the_model_splits(void **state) {
  (void)state;
  hm_spec_model_config mini;
  assert_int_equal(hm_model_config_lookup("llama-mini", &mini), HM_OK);
  hm_spec_model_config old = mini; /* the earlier llama-mini shape: 6 heads, 3 KV heads */
  old.NH = 6, old.kv_heads = 3;
  int max_tp;
  plan_llama(&old, &max_tp);
  assert_int_equal(max_tp, 1);
  plan_llama(&mini, &max_tp);
  assert_true(max_tp >= 2);
}

/* A profile with layers measured split at tp 2 (hetmix profile's "tp" entries) is costed from
 * those entries at tp 2, not from the unsplit ones over the degree: a split layer keeps its
 * replicated parts (norms, residual adds, the vocabulary shard's softmax) and runs smaller GEMMs,
 * so its time is not the unsplit time / tp. The TP allreduces come on top from the profile's
 * measured tp_allreduce. tp 1 still reads the unsplit entries, and the entries survive the
 * profile's writer and reader. The figures are chosen so that the two readings differ by 40%. */
static void test_split_profile_used(void **state) {
  (void)state;
  specs s;
  load(&s, "local-tp.json", "tp-demo-llama.json", "train-tp.json");
  const int cpu = hm_cluster_find_type(&s.c, "cpu");
  assert_true(cpu >= 0);
  const int64_t mb = s.t.micro_batch_sizes[0];
  hm_profile pr;
  memset(&pr, 0, sizeof pr);
  static const char *const kinds[] = {"embedding", "block", "head"};
  for (int tp = 1; tp <= 2; tp++)
    for (int k = 0; k < 3; k++) {
      hm_profile_layer e;
      memset(&e, 0, sizeof e);
      snprintf(e.device_type, sizeof e.device_type, "cpu");
      snprintf(e.kind, sizeof e.kind, "%s", kinds[k]);
      e.micro_batch = mb;
      e.fwd_s = tp == 1 ? 10e-3 * (k + 1) : 7e-3 * (k + 1);
      e.bwd_s = 2 * e.fwd_s;
      e.tp = tp;
      assert_int_equal(hm_profile_add_layer(&pr, &e), HM_OK);
    }
  pr.ntp_allreduce = 1;
  pr.tp_allreduce[0] = (hm_profile_allreduce){.ranks = 2, .latency = 20e-6, .bandwidth = 1e9};
  /* round trip through the file format: the tp entries stay apart from the unsplit ones */
  cJSON *j = hm_profile_to_cjson(&pr);
  assert_non_null(j);
  hm_profile_free(&pr);
  assert_int_equal(hm_profile_from_cjson(j, "profile", &pr), HM_OK);
  cJSON_Delete(j);
  assert_int_equal(pr.nlayers, 6);
  assert_int_equal(hm_profile_resolve(&pr, &s.c, &s.m), HM_OK);
  s.in.profile = &pr;
  hm_layer_costs one, two;
  assert_int_equal(hm_layer_costs_init(&s.in, cpu, 1, mb, &one), HM_OK);
  assert_int_equal(hm_layer_costs_init(&s.in, cpu, 2, mb, &two), HM_OK);
  for (int l = 0; l < s.m.nlayers; l++) {
    const hm_layer *ly = &s.m.layers[l];
    const int k = strcmp(ly->kind, "embedding") == 0 ? 0 : strcmp(ly->kind, "block") == 0 ? 1 : 2;
    const double bwd_bytes = ly->tp_comm_bwd_bytes < 0 ? ly->tp_comm_bytes : ly->tp_comm_bwd_bytes;
    double ar_f = 0, ar_b = 0;
    if (ly->tp_comm_bytes > 0) assert_int_equal(hm_profile_tp_allreduce_time(&pr, 2, ly->tp_comm_bytes * mb, &ar_f), 1);
    if (bwd_bytes > 0) assert_int_equal(hm_profile_tp_allreduce_time(&pr, 2, bwd_bytes * mb, &ar_b), 1);
    assert_true(fabs(one.fwd[l] - 10e-3 * (k + 1)) < 1e-15);
    assert_true(fabs(one.bwd[l] - 20e-3 * (k + 1)) < 1e-15);
    if (fabs(two.fwd[l] - (7e-3 * (k + 1) + ar_f)) >= 1e-15 || fabs(two.bwd[l] - (14e-3 * (k + 1) + ar_b)) >= 1e-15)
      fail_msg("layer %d (%s) at tp 2: fwd %.6g bwd %.6g s, expected the split entry %.6g + allreduce %.6g, %.6g + %.6g",
               l, ly->kind, two.fwd[l], two.bwd[l], 7e-3 * (k + 1), ar_f, 14e-3 * (k + 1), ar_b);
  }
  hm_layer_costs_free(&one);
  hm_layer_costs_free(&two);
  /* a second entry of one (type, kind, micro-batch, tp) is still refused */
  hm_profile_layer dup = pr.layers[3];
  assert_int_equal(hm_profile_add_layer(&pr, &dup), HM_ERR_SPEC);
  hm_profile_free(&pr);
  unload(&s);
}

/* Fewer micro-batches (48) than tensor-parallel groups of each type (64): the mixed pipeline
 * with one replica per micro-batch is tried. The model needs two devices; one of each type per
 * replica, 48 replicas, beats every plan with more stages. */
static void test_mixed_replicas_capped_by_batch(void **state) {
  (void)state;
  static const char cluster[] =
      "{\"name\": \"two\", \"device_types\": ["
      " {\"name\": \"a\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e9,"
      "  \"memory_bandwidth\": 1e15},"
      " {\"name\": \"b\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e9,"
      "  \"memory_bandwidth\": 1e15}],"
      " \"hosts\": [{\"name\": \"ha\", \"count\": 64, \"devices\": {\"type\": \"a\", \"count\": 1},"
      "  \"nic\": {\"bandwidth\": 1e12, \"latency\": 0}},"
      " {\"name\": \"hb\", \"count\": 64, \"devices\": {\"type\": \"b\", \"count\": 1},"
      "  \"nic\": {\"bandwidth\": 1e12, \"latency\": 0}}]}";
  static const char model[] =
      "{\"name\": \"m4\", \"dtype\": \"fp32\", \"seq_len\": 1, \"layers\": [{\"kind\": \"l\","
      " \"count\": 4, \"fwd_flops\": 1e9, \"params\": 19000000, \"act_bytes\": 1000,"
      " \"out_bytes\": 0}]}";
  static const char train[] =
      "{\"global_batch\": 48, \"micro_batch_sizes\": [1], \"precision\": \"fp32\"}";
  specs s;
  memset(&s, 0, sizeof s);
  assert_int_equal(hm_cluster_parse(cluster, sizeof cluster - 1, "two", &s.c), HM_OK);
  assert_int_equal(hm_model_parse(model, sizeof model - 1, "m4", &s.m), HM_OK);
  assert_int_equal(hm_train_parse(train, sizeof train - 1, "b48", &s.t), HM_OK);
  assert_int_equal(hm_spec_resolve(&s.c, &s.m, &s.t, NULL), HM_OK);
  s.in = (hm_plan_inputs){.cluster = &s.c, .model = &s.m, .train = &s.t};
  hm_search_options o;
  hm_search_options_default(&o);
  hm_search_result *r = calloc(1, sizeof *r);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  const hm_plan *p = &r->plans[0];
  assert_int_equal(p->nclasses, 1);
  assert_int_equal(p->classes[0].nreplicas, 48);
  assert_int_equal(p->classes[0].nmicro, 1);
  assert_int_equal(p->classes[0].nstages, 2);
  assert_true(p->classes[0].stages[0].type != p->classes[0].stages[1].type);
  check_memory(&s, p);
  hm_search_result_free(r);
  free(r);
  unload(&s);
}

/* Gradient sync across pools: with 40 pools, the types in pools 0 and 32 make a hierarchical
 * allreduce over 2 pools and their link (pools are told apart by index, whatever their count). */
static void test_sync_model_pools(void **state) {
  (void)state;
  enum { NPOOLS = 40 };
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "name", "pools");
  cJSON *types = cJSON_AddArrayToObject(j, "device_types");
  for (int k = 0; k < 2; k++) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "name", k ? "b" : "a");
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(t, "peak_flops"), "fp32", 1e12);
    cJSON_AddNumberToObject(t, "memory_bytes", 1e9);
    cJSON_AddNumberToObject(t, "memory_bandwidth", 1e12);
    cJSON_AddItemToArray(types, t);
  }
  cJSON *pools = cJSON_AddArrayToObject(j, "pools"), *links = cJSON_AddArrayToObject(j, "pool_links");
  for (int a = 0; a < NPOOLS; a++) {
    char name[16];
    snprintf(name, sizeof name, "p%d", a);
    cJSON *po = cJSON_CreateObject();
    cJSON_AddStringToObject(po, "name", name);
    cJSON_AddItemToArray(pools, po);
    for (int b = a + 1; b < NPOOLS; b++) {
      char other[16];
      snprintf(other, sizeof other, "p%d", b);
      const char *pair[2] = {name, other};
      cJSON *l = cJSON_CreateObject();
      cJSON_AddItemToObject(l, "pools", cJSON_CreateStringArray(pair, 2));
      cJSON_AddNumberToObject(l, "bandwidth", a == 0 && b == 32 ? 5e8 : 1e9);
      cJSON_AddNumberToObject(l, "latency", 1e-3);
      cJSON_AddItemToArray(links, l);
    }
  }
  cJSON *hosts = cJSON_AddArrayToObject(j, "hosts");
  for (int k = 0; k < 2; k++) {
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(h, "name", k ? "hb" : "ha");
    cJSON_AddNumberToObject(h, "count", 4);
    cJSON *d = cJSON_AddObjectToObject(h, "devices");
    cJSON_AddStringToObject(d, "type", k ? "b" : "a");
    cJSON *nic = cJSON_AddObjectToObject(h, "nic");
    cJSON_AddNumberToObject(nic, "bandwidth", 1e10);
    cJSON_AddNumberToObject(nic, "latency", 1e-5);
    cJSON_AddStringToObject(h, "pool", k ? "p32" : "p0");
    cJSON_AddItemToArray(hosts, h);
  }
  char *text = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  static const char model[] =
      "{\"seq_len\": 1, \"layers\": [{\"kind\": \"l\", \"fwd_flops\": 1, \"params\": 1,"
      " \"act_bytes\": 1, \"out_bytes\": 1}]}";
  specs s;
  memset(&s, 0, sizeof s);
  assert_int_equal(hm_cluster_parse(text, strlen(text), "pools", &s.c), HM_OK);
  free(text);
  assert_int_equal(hm_model_parse(model, sizeof model - 1, "one", &s.m), HM_OK);
  hm_train_default(&s.t);
  assert_int_equal(hm_spec_resolve(&s.c, &s.m, &s.t, NULL), HM_OK);
  s.in = (hm_plan_inputs){.cluster = &s.c, .model = &s.m, .train = &s.t};
  hm_sync_model m = hm_plan_sync_model(&s.in, 3u, 8, 8);
  assert_int_equal(m.ngroups, 2);
  assert_true(m.outer.bandwidth == 5e8 / 4); /* the p0-p32 link, shared by a pool's 4 devices */
  assert_true(fabs(m.outer.latency - (1e-3 + 1e-5)) < 1e-15); /* one addition: ~1e-19 */
  m = hm_plan_sync_model(&s.in, 1u, 4, 4); /* type a alone: one pool, a flat allreduce */
  assert_int_equal(m.ngroups, 1);
  /* Compression counted (training spec "compression"): the 5e8 B/s pool link, under the
   * threshold, carries 5e8 / 0.5 = 1e9 B/s (the codec is faster); the 1e10 NICs are above it. */
  static const char train[] = "{\"version\": 1, \"global_batch\": 8, \"compression\": {\"ratio\": 0.5, "
                              "\"compress_bw\": 4e9, \"decompress_bw\": 8e9, \"below\": 1.25e9}}";
  assert_int_equal(hm_train_parse(train, sizeof train - 1, "zip", &s.t), HM_OK);
  assert_true(s.t.zip.ratio == 0.5 && s.t.zip.compress_bw == 4e9 && s.t.zip_below == 1.25e9);
  m = hm_plan_sync_model(&s.in, 3u, 8, 8);
  assert_true(m.outer.bandwidth == 1e9 / 4);
  assert_true(m.link.bandwidth == 1e10);
  cJSON *back = hm_train_to_cjson(&s.t);
  char *text2 = cJSON_PrintUnformatted(back);
  hm_train t2;
  assert_int_equal(hm_train_parse(text2, strlen(text2), "back", &t2), HM_OK);
  assert_memory_equal(&t2.zip, &s.t.zip, sizeof t2.zip);
  free(text2);
  cJSON_Delete(back);
  static const char bad[] = "{\"version\": 1, \"global_batch\": 8, \"compression\": {\"ratio\": 1.5, "
                            "\"compress_bw\": 4e9, \"decompress_bw\": 8e9}}";
  assert_int_equal(hm_train_parse(bad, sizeof bad - 1, "bad", &t2), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "compression.ratio"));
  unload(&s);
}

/* Every field of a plan file deleted or replaced by a wrong value: refused with a message that
 * starts with a field path (or accepted when the change keeps it valid); never a crash. */
typedef struct node_ref {
  cJSON *parent, *node;
} node_ref;

static int collect(cJSON *parent, cJSON *n, node_ref *out, int cap, int k) {
  if (k < cap) out[k++] = (node_ref){parent, n};
  for (cJSON *c = n->child; c; c = c->next) k = collect(n, c, out, cap, k);
  return k;
}

static void test_plan_file_mutations(void **state) {
  (void)state;
  specs s;
  load(&s, "local-2backend.json", "gpt-mini.json", "train-local.json");
  hm_search_options o;
  hm_search_options_default(&o);
  o.upper_bound = 0;
  hm_search_result *r = calloc(1, sizeof *r);
  hm_plan *back = calloc(1, sizeof *back);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  cJSON *orig = hm_plan_to_cjson(&s.in, &r->plans[0]);
  assert_non_null(orig);
  /* only the plan's own part: the embedded specs have their own tests */
  cJSON_DeleteItemFromObject(orig, "cluster");
  cJSON_DeleteItemFromObject(orig, "model");
  cJSON_DeleteItemFromObject(orig, "train");
  enum { CAP = 4096 };
  node_ref *refs = calloc(CAP, sizeof *refs);
  int total = collect(NULL, orig, refs, CAP, 0);
  cJSON_Delete(orig);
  int refused = 0;
  for (int i = 1; i < total; i++)
    for (int mut = 0; mut < 4; mut++) {
      cJSON *j = hm_plan_to_cjson(&s.in, &r->plans[0]);
      cJSON_DeleteItemFromObject(j, "cluster");
      cJSON_DeleteItemFromObject(j, "model");
      cJSON_DeleteItemFromObject(j, "train");
      node_ref *mine = calloc(CAP, sizeof *mine);
      int n = collect(NULL, j, mine, CAP, 0);
      assert_int_equal(n, total);
      node_ref t = mine[i];
      free(mine);
      cJSON *repl = mut == 0 ? cJSON_CreateString("x")
                  : mut == 1 ? cJSON_CreateNumber(-1)
                  : mut == 2 ? cJSON_CreateNumber(1e300)
                             : NULL;
      if (repl) cJSON_ReplaceItemViaPointer(t.parent, t.node, repl);
      else cJSON_Delete(cJSON_DetachItemViaPointer(t.parent, t.node));
      /* the specs come from `against`; the plan part is what is being checked */
      cJSON *full = cJSON_Duplicate(j, 1);
      cJSON_AddItemToObject(full, "cluster", hm_cluster_to_cjson(&s.c));
      cJSON_AddItemToObject(full, "model", hm_model_to_cjson(&s.m));
      cJSON_AddItemToObject(full, "train", hm_train_to_cjson(&s.t));
      hm_status st = hm_plan_from_cjson(full, &s.in, back, NULL, NULL, NULL);
      if (st != HM_OK) {
        refused++;
        assert_int_equal(st, HM_ERR_SPEC);
        assert_true(strncmp(hm_last_error(), "plan", 4) == 0);
      }
      cJSON_Delete(full);
      cJSON_Delete(j);
    }
  assert_true(refused > total); /* most changes break the plan */
  print_message("%d fields x 4 changes, %d refused\n", total - 1, refused);
  free(refs);
  hm_search_result_free(r);
  free(r);
  free(back);
  unload(&s);
}

/* Values that a plan file can hold but no plan can use: refused with the field's path before
 * they are converted, multiplied or allocated for. */
static hm_status load_changed(const specs *s, const hm_plan *plan, void (*change)(cJSON *),
                              hm_plan *back) {
  cJSON *j = hm_plan_to_cjson(&s->in, plan);
  assert_non_null(j);
  change(j);
  char *text = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  hm_status st = hm_plan_parse(text, strlen(text), NULL, NULL, back, NULL, NULL, NULL);
  free(text);
  return st;
}

static cJSON *class0(cJSON *j) { return cJSON_GetArrayItem(cJSON_GetObjectItem(j, "classes"), 0); }

static void set_layer_begin_huge(cJSON *j) {
  cJSON *stage0 = cJSON_GetArrayItem(cJSON_GetObjectItem(class0(j), "stages"), 0);
  cJSON_ReplaceItemInArray(cJSON_GetObjectItem(stage0, "layers"), 0, cJSON_CreateNumber(1e300));
}

static void set_train_precision_bf16(cJSON *j) { /* the model's figures are fp32 */
  cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "train"), "precision",
                            cJSON_CreateString("bf16-mixed"));
}

static void set_layer_end_negative(cJSON *j) {
  cJSON *stages = cJSON_GetObjectItem(class0(j), "stages");
  cJSON *last = cJSON_GetArrayItem(stages, cJSON_GetArraySize(stages) - 1);
  cJSON_ReplaceItemInArray(cJSON_GetObjectItem(last, "layers"), 1, cJSON_CreateNumber(-1e300));
}

/* a billion devices claimed by a short file whose ranks list is empty */
static void set_billion_devices(cJSON *j) {
  cJSON *cl = cJSON_GetObjectItem(j, "cluster");
  cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cl, "device_types"), 0);
  const char *type = cJSON_GetObjectItem(t0, "name")->valuestring;
  cJSON *link = cJSON_CreateObject();
  cJSON_AddNumberToObject(link, "bandwidth", 1e11);
  cJSON_AddNumberToObject(link, "latency", 1e-6);
  cJSON_DeleteItemFromObject(t0, "intra_host_link");
  cJSON_AddItemToObject(t0, "intra_host_link", link);
  cJSON *g = cJSON_GetArrayItem(cJSON_GetObjectItem(cl, "hosts"), 0);
  cJSON_DeleteItemFromObject(g, "hostnames");
  cJSON_ReplaceItemInObject(g, "count", cJSON_CreateNumber(10000000));
  cJSON *nic = cJSON_CreateObject();
  cJSON_AddNumberToObject(nic, "bandwidth", 1e10);
  cJSON_AddNumberToObject(nic, "latency", 1e-5);
  cJSON_DeleteItemFromObject(g, "nic");
  cJSON_AddItemToObject(g, "nic", nic);
  cJSON *devs = cJSON_GetObjectItem(g, "devices");
  for (int i = 0; i < cJSON_GetArraySize(devs); i++) {
    cJSON *d = cJSON_GetArrayItem(devs, i);
    if (!strcmp(cJSON_GetObjectItem(d, "type")->valuestring, type))
      cJSON_ReplaceItemInObject(d, "count", cJSON_CreateNumber(100));
  }
  int nlayers = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
      cJSON_GetObjectItem(class0(j), "stages"), cJSON_GetArraySize(cJSON_GetObjectItem(
      class0(j), "stages")) - 1), "layers"), 1)->valueint;
  cJSON *stage = cJSON_CreateObject();
  cJSON_AddStringToObject(stage, "device_type", type);
  cJSON_AddNumberToObject(stage, "tp", 1);
  int lr[2] = {0, nlayers};
  cJSON_AddItemToObject(stage, "layers", cJSON_CreateIntArray(lr, 2));
  cJSON *stages = cJSON_CreateArray();
  cJSON_AddItemToArray(stages, stage);
  cJSON *c = cJSON_CreateObject();
  cJSON_AddNumberToObject(c, "replicas", 1e9);
  cJSON_AddNumberToObject(c, "micro_batches", 1);
  cJSON_AddItemToObject(c, "stages", stages);
  cJSON *classes = cJSON_CreateArray();
  cJSON_AddItemToArray(classes, c);
  cJSON_ReplaceItemInObject(j, "classes", classes);
  cJSON_ReplaceItemInObject(j, "micro_batch", cJSON_CreateNumber(1));
  cJSON_ReplaceItemInObject(j, "global_batch", cJSON_CreateNumber(1e9));
  cJSON_ReplaceItemInObject(j, "ranks", cJSON_CreateArray());
}

static void set_samples_overflow(cJSON *j) {
  set_billion_devices(j); /* enough devices for the replicas: the sample count is checked next */
  cJSON_ReplaceItemInObject(j, "micro_batch", cJSON_CreateNumber(2147483647));
  cJSON_ReplaceItemInObject(class0(j), "micro_batches", cJSON_CreateNumber(2147483647));
}

static void test_plan_file_extremes(void **state) {
  (void)state;
  specs s;
  load(&s, "local-2backend.json", "gpt-mini.json", "train-local.json");
  hm_search_options o;
  hm_search_options_default(&o);
  o.upper_bound = 0;
  hm_search_result *r = calloc(1, sizeof *r);
  hm_plan *back = calloc(1, sizeof *back);
  assert_int_equal(hm_plan_search(&s.in, &o, r), HM_OK);
  assert_int_equal(load_changed(&s, &r->plans[0], set_layer_begin_huge, back), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0].stages[0].layers: expected [begin, end]"));
  assert_int_equal(load_changed(&s, &r->plans[0], set_layer_end_negative, back), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "].layers: expected [begin, end]"));
  /* specs that disagree with each other: the path is the embedded spec's */
  assert_int_equal(load_changed(&s, &r->plans[0], set_train_precision_bf16, back), HM_ERR_SPEC);
  assert_true(strncmp(hm_last_error(), "plan.train.precision: ", 22) == 0);
  assert_int_equal(load_changed(&s, &r->plans[0], set_samples_overflow, back), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.classes[0]: 1000000000 replicas x 2147483647 "
                                          "micro-batches x micro_batch 2147483647"));
  /* refused from the counts, before listing a billion roles (24 GB) */
  assert_int_equal(load_changed(&s, &r->plans[0], set_billion_devices, back), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.ranks: lists 0 ranks, the plan uses 1000000000 "
                                          "devices"));
  hm_search_result_free(r);
  free(r);
  free(back);
  unload(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_predict_by_hand),
      cmocka_unit_test(test_local_plans),
      cmocka_unit_test(test_memory_limits),
      cmocka_unit_test(test_hetero_dp_interleaved),
      cmocka_unit_test(test_plan_file),
      cmocka_unit_test(test_interleaved_plan_file),
      cmocka_unit_test(test_plan_file_mutations),
      cmocka_unit_test(test_plan_file_extremes),
      cmocka_unit_test(test_large_cluster),
      cmocka_unit_test(test_mixed_replicas_capped_by_batch),
      cmocka_unit_test(test_sync_model_pools),
      cmocka_unit_test(test_tp_the_model_splits),
      cmocka_unit_test(test_split_profile_used),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
