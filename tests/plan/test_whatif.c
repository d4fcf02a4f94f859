/* What-if clusters (hm_cluster_whatif) and `hetmix plan --add/--remove`: devices are added and
 * removed as whole hosts of groups holding only that type, in the named pool; the counts, ranks
 * and links of the result are those of the equivalent cluster file; bad requests are refused
 * with a message naming what is wrong; and the command prints both best plans side by side. */
#include <setjmp.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "hetmix/model.h"
#include "hetmix/plan.h"

/* Two pools; pool "p1" holds a type-a group and a mixed group, pool "p2" a named type-a group. */
static const char cluster_text[] =
    "{\"version\": 1, \"name\": \"w\","
    " \"device_types\": ["
    "  {\"name\": \"a\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e10,"
    "   \"memory_bandwidth\": 1e11, \"intra_host_link\": {\"bandwidth\": 1e10, \"latency\": 1e-6}},"
    "  {\"name\": \"b\", \"peak_flops\": {\"fp32\": 2e12}, \"memory_bytes\": 1e10,"
    "   \"memory_bandwidth\": 1e11, \"intra_host_link\": {\"bandwidth\": 1e10, \"latency\": 1e-6}}],"
    " \"pools\": [{\"name\": \"p1\"}, {\"name\": \"p2\"}],"
    " \"pool_links\": [{\"pools\": [\"p1\", \"p2\"], \"bandwidth\": 1e9, \"latency\": 1e-5}],"
    " \"hosts\": ["
    "  {\"name\": \"ga\", \"count\": 2, \"pool\": \"p1\", \"devices\": {\"type\": \"a\", \"count\": 4},"
    "   \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}},"
    "  {\"name\": \"gm\", \"count\": 1, \"pool\": \"p1\", \"devices\": [{\"type\": \"a\", \"count\": 2},"
    "   {\"type\": \"b\", \"count\": 2}], \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5},"
    "   \"host_link\": {\"bandwidth\": 1e10, \"latency\": 1e-6}},"
    "  {\"name\": \"ga2\", \"count\": 3, \"pool\": \"p2\", \"devices\": {\"type\": \"a\", \"count\": 2},"
    "   \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}, \"hostnames\": [\"x0\", \"x1\", \"x2\"]},"
    "  {\"name\": \"gb\", \"count\": 2, \"pool\": \"p2\", \"devices\": {\"type\": \"b\", \"count\": 2},"
    "   \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}}]}";

static void load(hm_cluster *c) {
  assert_int_equal(hm_cluster_parse(cluster_text, sizeof cluster_text - 1, "w", c), HM_OK);
}

static int64_t group_hosts(const hm_cluster *c, const char *name) {
  for (int g = 0; g < c->ngroups; g++)
    if (strcmp(c->groups[g].name, name) == 0) return c->groups[g].count;
  return 0; /* absent */
}

static void test_add_remove(void **state) {
  (void)state;
  hm_cluster c, w;
  load(&c);
  assert_int_equal(c.types[0].count, 8 + 2 + 6);
  /* add to the first group holding only "a" whose host size divides the count */
  assert_int_equal(hm_cluster_whatif(&c, "a", 8, NULL, &w), HM_OK);
  assert_int_equal(group_hosts(&w, "ga"), 4);
  assert_int_equal(w.types[0].count, 24);
  assert_int_equal(w.ndevices, c.ndevices + 8);
  /* ranks are renumbered: the mixed group now starts 8 devices later */
  assert_int_equal(w.groups[1].first_rank, c.groups[1].first_rank + 8);
  hm_cluster_free(&w);
  /* 6 devices: ga's hosts of 4 do not divide it, ga2's of 2 do; its host names are dropped */
  assert_int_equal(hm_cluster_whatif(&c, "a", 6, NULL, &w), HM_OK);
  assert_int_equal(group_hosts(&w, "ga"), 2);
  assert_int_equal(group_hosts(&w, "ga2"), 6);
  assert_null(w.groups[2].hostnames);
  hm_cluster_free(&w);
  /* in a pool */
  assert_int_equal(hm_cluster_whatif(&c, "a", 4, "p2", &w), HM_OK);
  assert_int_equal(group_hosts(&w, "ga2"), 5);
  assert_int_equal(group_hosts(&w, "ga"), 2);
  hm_cluster_free(&w);
  /* removal: last eligible groups first, whole hosts; the mixed group is never touched */
  assert_int_equal(hm_cluster_whatif(&c, "a", -10, NULL, &w), HM_OK);
  assert_int_equal(group_hosts(&w, "ga2"), 0);
  assert_int_equal(group_hosts(&w, "ga"), 1);
  assert_int_equal(group_hosts(&w, "gm"), 1);
  assert_int_equal(w.types[0].count, 6);
  assert_int_equal(w.ngroups, 3);
  hm_cluster_free(&w);
  /* every "b" of its own group: b stays (the mixed group holds two) */
  assert_int_equal(hm_cluster_whatif(&c, "b", -4, NULL, &w), HM_OK);
  assert_int_equal(w.types[1].count, 2);
  hm_cluster_free(&w);
  hm_cluster_free(&c);
}

static void test_type_leaves(void **state) {
  (void)state;
  static const char text[] =
      "{\"version\": 1, \"name\": \"two\", \"device_types\": ["
      " {\"name\": \"a\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e10, \"memory_bandwidth\": 1e11},"
      " {\"name\": \"b\", \"peak_flops\": {\"fp32\": 1e12}, \"memory_bytes\": 1e10, \"memory_bandwidth\": 1e11}],"
      " \"hosts\": [{\"name\": \"ha\", \"count\": 2, \"devices\": {\"type\": \"a\", \"count\": 1},"
      "  \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}},"
      " {\"name\": \"hb\", \"count\": 2, \"devices\": {\"type\": \"b\", \"count\": 1},"
      "  \"nic\": {\"bandwidth\": 1e9, \"latency\": 1e-5}}]}";
  hm_cluster c, w;
  assert_int_equal(hm_cluster_parse(text, sizeof text - 1, "two", &c), HM_OK);
  assert_int_equal(hm_cluster_whatif(&c, "a", -2, NULL, &w), HM_OK);
  assert_int_equal(w.ntypes, 1);
  assert_string_equal(w.types[0].name, "b");
  assert_int_equal(w.ndevices, 2);
  assert_int_equal(w.groups[0].dev[0].type, 0);
  hm_cluster_free(&w);
  hm_cluster_free(&c);
}

static void expect_error(const hm_cluster *c, const char *type, int64_t delta, const char *pool,
                         const char *needle) {
  hm_cluster w;
  hm_status st = hm_cluster_whatif(c, type, delta, pool, &w);
  if (st == HM_OK || !strstr(hm_last_error(), needle))
    fail_msg("%s %lld @%s: status %d, message \"%s\" (want \"%s\")", type, (long long)delta,
             pool ? pool : "-", st, hm_last_error(), needle);
}

static void test_refused(void **state) {
  (void)state;
  hm_cluster c;
  load(&c);
  expect_error(&c, "h100", 8, NULL, "has no device type \"h100\"");
  expect_error(&c, "a", 8, "p9", "has no pool \"p9\"");
  expect_error(&c, "a", 3, NULL, "no eligible host group has a host size dividing 3");
  expect_error(&c, "a", -15, NULL, "cannot remove 15 \"a\" devices");
  expect_error(&c, "a", -3, "p2", "(1 would remain to remove)");
  expect_error(&c, "b", 2, "p1", "no host group holds only \"b\" devices in pool p1");
  expect_error(&c, "a", 0, NULL, "a count of 0");
  hm_cluster_free(&c);
}

/* hm_plan_carry_over: a plan set up on a changed cluster by type name, or refused by name. */
static void test_carry_over(void **state) {
  (void)state;
  char path[512];
  hm_cluster c, w;
  hm_model m;
  hm_train t;
  snprintf(path, sizeof path, "%s/examples/reference-768.json", HM_SOURCE_DIR);
  assert_int_equal(hm_cluster_load(path, &c), HM_OK);
  snprintf(path, sizeof path, "%s/examples/llama2-70b.json", HM_SOURCE_DIR);
  assert_int_equal(hm_model_load(path, &m), HM_OK);
  snprintf(path, sizeof path, "%s/examples/train-default.json", HM_SOURCE_DIR);
  assert_int_equal(hm_train_load(path, &t), HM_OK);
  assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_OK);
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};
  hm_search_options o;
  hm_search_options_default(&o);
  o.upper_bound = 0;
  hm_search_result r;
  assert_int_equal(hm_plan_search(&in, &o, &r), HM_OK);
  const hm_plan *p = &r.plans[0];
  hm_plan q;
  /* the a100 type moves from index 1 to 0 when every mi250 leaves */
  assert_int_equal(hm_cluster_whatif(&c, "mi250", -128, NULL, &w), HM_OK);
  hm_plan_inputs in2 = {.cluster = &w, .model = &m, .train = &t};
  int uses_mi250 = 0;
  for (int ci = 0; ci < p->nclasses; ci++)
    for (int s = 0; s < p->classes[ci].nstages; s++) uses_mi250 |= p->classes[ci].stages[s].type == 0;
  assert_true(uses_mi250); /* the best plan is heterogeneous (docs/plan.md) */
  assert_int_equal(hm_plan_carry_over(&in, p, &in2, &q), HM_ERR_NO_FIT);
  assert_non_null(strstr(hm_last_error(), "has no \"mi250\" devices"));
  hm_cluster_free(&w);
  /* added devices: the same plan, valid and predicted the same (same links, same types) */
  assert_int_equal(hm_cluster_whatif(&c, "a100", 64, NULL, &w), HM_OK);
  assert_int_equal(hm_plan_carry_over(&in, p, &in2, &q), HM_OK);
  assert_true(fabs(q.tokens_per_s / p->tokens_per_s - 1) < 1e-9);
  hm_cluster_free(&w);
  hm_search_result_free(&r);
  hm_model_free(&m);
  hm_cluster_free(&c);
}

/* `hetmix plan --add`: both plans, side by side; bad requests exit 1 with the reason. */
static int run(const char *args, char *out, size_t cap) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cd '%s' && timeout 120 '%s/hetmix' plan %s 2>&1", HM_SOURCE_DIR,
           HM_BINARY_DIR, args);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_cli(void **state) {
  (void)state;
  static char out[65536];
  const char *base = "--cluster examples/reference-768.json --model examples/llama2-70b.json "
                     "--train examples/train-default.json";
  char args[1024];
  snprintf(args, sizeof args, "%s --add mi250:64@room-amd --remove a100:8", base);
  int rc = run(args, out, sizeof out);
  if (rc != 0 || !strstr(out, "current best plan:") || !strstr(out, "what-if best plan:"))
    fail_msg("exit %d:\n%s", rc, out);
  long long d0 = 0, d1 = 0;
  const char *row = strstr(out, "devices in the cluster");
  assert_non_null(row);
  assert_int_equal(sscanf(row, "devices in the cluster %lld %lld", &d0, &d1), 2);
  assert_int_equal(d0, 768);
  assert_int_equal(d1, 768 + 64 - 8);
  assert_non_null(strstr(out, "tokens/s"));
  /* adding devices never reports a loss: the current plan stays valid on the bigger cluster
   * (mi250:8 here: the changed cluster's own search finds 208,317 tokens/s against the
   * current 208,527; before the current plan was carried over, that was the answer) */
  snprintf(args, sizeof args, "%s --add mi250:8", base);
  rc = run(args, out, sizeof out);
  double t0 = 0, t1 = 0;
  row = strstr(out, "\ntokens/s");
  if (rc != 0 || !row || sscanf(row, "\ntokens/s %lf %lf", &t0, &t1) != 2) fail_msg("exit %d:\n%s", rc, out);
  if (!(t0 > 0 && t1 >= t0)) fail_msg("adding devices lost tokens/s:\n%s", out);
  snprintf(args, sizeof args, "%s --add mi250:6", base);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "hetmix: error: --add: what-if: cannot add 6 \"mi250\" devices"));
  snprintf(args, sizeof args, "%s --remove a100:x8", base);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "--remove: \"a100:x8\" is not TYPE:COUNT[@POOL]"));
  snprintf(args, sizeof args, "%s --add mi250:64 -o /nonexistent/plan.json", base);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "write no plan"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_add_remove),
      cmocka_unit_test(test_type_leaves),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_carry_over),
      cmocka_unit_test(test_cli),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
