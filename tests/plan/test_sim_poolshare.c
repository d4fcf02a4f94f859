/* Gradient sync across pools: the link between pools is shared by the devices crossing it at each
 * moment (docs/plan.md, section 2), not divided by every device of a pool at all times; a bucket
 * whose holders all sit in one pool does not cross it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hetmix/plan.h"
#include "plan/plan_internal.h"

/* Two classes of one replica each, two stages of tp 4 each (16 devices), class 0 in pool 1 and
 * class 1 in pool 2 (in_pool), fwd = bwd = 1 s, one micro-batch, one layer per stage and bucket,
 * sync after the backward (no overlap), no pipeline link costs. Stage 1's backward ends at 3 s,
 * stage 0's at 4 s. Each layer's gradient is G = 2e9 bytes, 5e8 per device; the link between the
 * pools carries B = 1e9 B/s; NICs are unlimited (1e30 B/s) and latencies 0, so with 2 replicas in
 * 2 pools an allreduce is the exchange of the 5e8 bytes across the link, 2 devices per class
 * crossing (inner 1 of R = 2 replicas, 4 tp ranks). */
static double two_pool_step(double pool_bandwidth, int same_pool, hm_sim_trace *tr) {
  hm_sim_stage st[2][2];
  memset(st, 0, sizeof st);
  for (int c = 0; c < 2; c++)
    for (int s = 0; s < 2; s++)
      st[c][s] = (hm_sim_stage){.layer_begin = s, .layer_end = s + 1, .tp = 4, .fwd = 1, .bwd = 1,
                                .in_pool = same_pool ? 1 : c + 1};
  hm_sim_class cls[2] = {{.nreplicas = 1, .nstages = 2, .nmicro = 1, .stages = st[0]},
                         {.nreplicas = 1, .nstages = 2, .nmicro = 1, .stages = st[1]}};
  const double grads[2] = {2e9, 2e9};
  hm_sim_input in = {.nclasses = 2, .classes = cls, .nlayers = 2, .layer_grad_bytes = grads,
                     .layers_per_bucket = 1, .overlap_sync = 0};
  /* the fixed share: 8 devices per pool */
  in.sync = (hm_sync_model){.link = {.bandwidth = 1e30}, .ngroups = 2, .outer = {.bandwidth = 1e9 / 8},
                            .pool_bandwidth = pool_bandwidth};
  hm_sim_result r;
  assert_int_equal(hm_simulate(&in, &r, tr), HM_OK);
  const double step = r.step_time;
  hm_sim_result_free(&r);
  return step;
}

/* Stage 1's buckets (one per class, the same allreduce) cross alone from 3 s: 4 devices, B/4
 * each, 2.5e8 of the 5e8 bytes by 4 s. Stage 0's join: 8 devices, B/8 each; stage 1's last
 * 2.5e8 bytes end at 6 s, when stage 0's have moved 2.5e8; those cross alone again at B/4 and
 * end at 7 s. The fixed share (B/8 for every crossing) gives buckets of 4 s: [3, 7] and
 * [4, 8]. The times are sums and quotients of a few exact binary fractions: 1e-12 s is far
 * above their rounding. */
static void test_tail_crosses_with_larger_share(void **state) {
  (void)state;
  hm_sim_trace tr = {0};
  assert_true(fabs(two_pool_step(1e9, 0, &tr) - 7.0) < 1e-12);
  int n = 0;
  for (int i = 0; i < tr.nevents; i++) {
    const hm_sim_event *e = &tr.events[i];
    if (e->kind != HM_OP_ALLREDUCE) continue;
    n++;
    assert_int_equal(e->track, 1);
    const double start = e->stage == 1 ? 3.0 : 4.0, end = e->stage == 1 ? 6.0 : 7.0;
    assert_true(fabs(e->start - start) < 1e-12);
    assert_true(fabs(e->start + e->dur - end) < 1e-12);
  }
  assert_int_equal(n, 4);
  hm_sim_trace_free(&tr);
  /* a sync model without the link as a whole keeps the fixed share */
  assert_true(fabs(two_pool_step(0, 0, NULL) - 8.0) < 1e-12);
}

/* Every holder of each layer in one pool: nothing crosses; the allreduce runs inside the pool
 * over the (unlimited) NICs, so the step is the pipeline's 4 s. */
static void test_one_pool_holders_do_not_cross(void **state) {
  (void)state;
  assert_true(fabs(two_pool_step(1e9, 1, NULL) - 4.0) < 1e-12);
}

/* hm_sync_split gives hm_sync_allreduce_time back at the fixed share: the hierarchical
 * allreduce (16 replicas in 2 pools: reduce-scatter over 8, exchange of 1/8 of the bytes, then
 * allgather) and the flat ring (3 replicas in 2 pools on equal links). Each side is a handful of
 * roundings of values ~0.1-1 s: 1e-12 relative. */
static void test_split_parts_sum_to_the_time(void **state) {
  (void)state;
  const hm_link nic = {.bandwidth = 25e9, .latency = 5e-6}, pool = {.bandwidth = 1e9, .latency = 2e-5};
  const hm_sync_model models[2] = {{.nranks = 16, .link = nic, .ngroups = 2, .outer = pool},
                                   {.nranks = 3, .link = nic, .ngroups = 2, .outer = nic}};
  const double crossing[2] = {8.0 / 16, 1.0 / 3};
  for (int i = 0; i < 2; i++) {
    hm_sync_parts parts;
    hm_sync_split(&models[i], 1e9, &parts);
    const double rate = i == 0 ? pool.bandwidth : nic.bandwidth; /* flat: min(link, outer) */
    const double want = hm_sync_allreduce_time(&models[i], 1e9);
    assert_true(fabs(parts.pre + parts.bytes / rate + parts.post - want) < 1e-12 * want);
    assert_true(parts.crossing == crossing[i]);
    assert_true(parts.bytes > 0);
  }
}

/* The shared link by hand: capacity 10 B/s; track 0 moves 20 bytes on 1 device from 0 s, track 1
 * has 1 s fixed, 10 bytes on 1 device, 1 s fixed, also from 0 s. Whole seconds and bytes: the
 * times are exact up to a rounding or two (1e-12). */
static void test_share_run_by_hand(void **state) {
  (void)state;
  hm_share_job jobs[2] = {{.ready = 0, .bytes = 20, .devices = 1},
                          {.ready = 0, .pre = 1, .bytes = 10, .devices = 1, .post = 1}};
  const int first[3] = {0, 1, 2};
  const double free_at[2] = {0, 0};
  /* 0-1 s: job 0 alone at 10 B/s (10 left); 1-3 s: both at 5 B/s (job 0 done at 3 s, job 1 has
   * 0 left too); job 1's post part ends at 4 s */
  assert_int_equal(hm_share_run(jobs, first, free_at, 2, 10.0, 0), HM_OK);
  assert_true(fabs(jobs[0].start - 0) < 1e-12 && fabs(jobs[0].end - 3) < 1e-12);
  assert_true(fabs(jobs[1].start - 0) < 1e-12 && fabs(jobs[1].end - 4) < 1e-12);
  /* a cap of 4 B/s per device: job 0 moves 4 bytes by 1 s, then 16 at 4 B/s (both at 4: 8 of
   * the 10 B/s) and ends at 5 s; job 1 moves from 1 s to 3.5 s, ends at 4.5 s */
  assert_int_equal(hm_share_run(jobs, first, free_at, 2, 10.0, 4.0), HM_OK);
  assert_true(fabs(jobs[0].end - 5) < 1e-12);
  assert_true(fabs(jobs[1].end - 4.5) < 1e-12);
  /* half a device each (a class's part of one allreduce): together they are one device, which
   * gets the whole link; job 0 moves 10 bytes by 1 s, then both at 10 B/s: ends at 2 s, job 1's
   * bytes end at 2 s, its post part at 3 s */
  jobs[0].devices = jobs[1].devices = 0.5;
  assert_int_equal(hm_share_run(jobs, first, free_at, 2, 10.0, 0), HM_OK);
  assert_true(fabs(jobs[0].end - 2) < 1e-12 && fabs(jobs[1].end - 3) < 1e-12);
}

/* A cluster of 4 hosts of one device of type a and 4 of type b, each with a 1e10 B/s NIC; in two
 * pools joined by a 1e10 B/s link without latency of its own, or in none. */
static void load_cluster(int pools, hm_cluster *c) {
  char text[1600];
  snprintf(text, sizeof text,
           "{\"name\": \"two-pools\", \"device_types\": ["
           "{\"name\": \"a\", \"peak_flops\": {\"fp32\": 1e14}, \"memory_bytes\": 1e12,"
           " \"memory_bandwidth\": 1e12},"
           "{\"name\": \"b\", \"peak_flops\": {\"fp32\": 1e14}, \"memory_bytes\": 1e12,"
           " \"memory_bandwidth\": 1e12}],"
           "%s"
           "\"hosts\": ["
           "{\"name\": \"ha\", \"count\": 4, \"devices\": {\"type\": \"a\", \"count\": 1},"
           " \"nic\": {\"bandwidth\": 1e10, \"latency\": 1e-5}%s},"
           "{\"name\": \"hb\", \"count\": 4, \"devices\": {\"type\": \"b\", \"count\": 1},"
           " \"nic\": {\"bandwidth\": 1e10, \"latency\": 1e-5}%s}]}",
           pools ? "\"pools\": [{\"name\": \"p0\"}, {\"name\": \"p1\"}], \"pool_links\": "
                   "[{\"pools\": [\"p0\", \"p1\"], \"bandwidth\": 1e10, \"latency\": 0}],"
                 : "",
           pools ? ", \"pool\": \"p0\"" : "", pools ? ", \"pool\": \"p1\"" : "");
  assert_int_equal(hm_cluster_parse(text, strlen(text), "two-pools", c), HM_OK);
}

/* A mixed pipeline [a, b] x 4 replicas on the cluster above: every layer's holders are of one type,
 * so in one pool, and its gradients never cross between the pools; the plan predicts as on the
 * same cluster without pools, but for the gradient norm's 8-byte allreduce, which does span both
 * pools (a few latencies of 1e-5 s). Each layer's 4e9 gradient bytes take 0.6 s in a ring of the
 * 4 replicas over their NICs; across the pools they were charged 1.2 s. */
static void test_mixed_pipeline_sync_stays_in_its_pool(void **state) {
  (void)state;
  static const char model[] =
      "{\"seq_len\": 1, \"layers\": ["
      "{\"kind\": \"l\", \"fwd_flops\": 1e9, \"params\": 1e9, \"act_bytes\": 1e3, \"out_bytes\": 1e3},"
      "{\"kind\": \"l\", \"fwd_flops\": 1e9, \"params\": 1e9, \"act_bytes\": 1e3, \"out_bytes\": 1e3},"
      "{\"kind\": \"l\", \"fwd_flops\": 1e9, \"params\": 1e9, \"act_bytes\": 1e3, \"out_bytes\": 1e3},"
      "{\"kind\": \"l\", \"fwd_flops\": 1e9, \"params\": 1e9, \"act_bytes\": 1e3, \"out_bytes\": 1e3}]}";
  double step[2];
  for (int pools = 0; pools < 2; pools++) {
    hm_cluster c;
    hm_model m;
    hm_train t;
    load_cluster(pools, &c);
    assert_int_equal(hm_model_parse(model, sizeof model - 1, "four", &m), HM_OK);
    hm_train_default(&t);
    assert_int_equal(hm_spec_resolve(&c, &m, &t, NULL), HM_OK);
    assert_int_equal(hm_type_pool(&c, 0), pools ? 0 : -1);
    assert_int_equal(hm_type_pool(&c, 1), pools ? 1 : -1);
    hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};
    hm_plan p;
    memset(&p, 0, sizeof p);
    p.micro_batch = 1;
    p.nclasses = 1;
    p.classes[0] = (hm_plan_class){.nreplicas = 4, .nmicro = 2, .nstages = 2};
    p.classes[0].stages[0] = (hm_plan_stage){.type = 0, .tp = 1, .layer_begin = 0, .layer_end = 2};
    p.classes[0].stages[1] = (hm_plan_stage){.type = 1, .tp = 1, .layer_begin = 2, .layer_end = 4};
    assert_int_equal(hm_plan_predict(&in, &p, NULL), HM_OK);
    step[pools] = p.step_time;
    hm_cluster_free(&c);
    hm_model_free(&m);
  }
  assert_true(step[0] > 1.2); /* the last bucket alone takes 0.6 s */
  assert_true(fabs(step[1] - step[0]) < 1e-4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tail_crosses_with_larger_share),
      cmocka_unit_test(test_one_pool_holders_do_not_cross),
      cmocka_unit_test(test_split_parts_sum_to_the_time),
      cmocka_unit_test(test_share_run_by_hand),
      cmocka_unit_test(test_mixed_pipeline_sync_stays_in_its_pool),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
