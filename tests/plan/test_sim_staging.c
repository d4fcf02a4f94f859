/* Staging copies in the planner: a profile's staging entries (read, written, resolved) and the
 * simulator adding them to transfers from and to devices whose memory is not host memory:
 * sends pay the sender's device->host and the receiver's host->device copy, a gradient
 * allreduce the slowest staged device's copies each way, the tied sync its two ends'. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "hetmix/cost.h"
#include "hetmix/plan.h"
#include "hetmix/spec.h"

/* Each time is a handful of f64 operations on values of 1e-5 .. 1e-2: rounding ~1e-18; a
 * missing or doubled copy changes a duration by 5e-4 or more. */
#define TOL 1e-12

static const char *cluster_json =
    "{\"version\": 1, \"name\": \"t\", \"device_types\": ["
    "{\"name\": \"cpu\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 4e9,"
    " \"memory_bandwidth\": 1e10},"
    "{\"name\": \"gpu\", \"backend\": \"opencl:threads=1\", \"peak_flops\": {\"fp32\": 1e11}, \"memory_bytes\": 4e9,"
    " \"memory_bandwidth\": 1e10}],"
    "\"hosts\": [{\"name\": \"h\", \"count\": 1, \"devices\": [{\"type\": \"cpu\", \"count\": 1}, {\"type\": \"gpu\", \"count\": 1}],"
    " \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}";

static void test_profile_staging_io(void **state) {
  (void)state;
  hm_cluster c;
  assert_int_equal(hm_cluster_parse(cluster_json, strlen(cluster_json), "cluster", &c), HM_OK);
  const char *pj = "{\"version\": 1, \"layers\": [], \"links\": [], \"staging\": [{\"device_type\": \"gpu\","
                   " \"d2h_bandwidth\": 1e9, \"h2d_bandwidth\": 2e9, \"latency\": 1e-5}]}";
  hm_profile p;
  assert_int_equal(hm_profile_parse(pj, strlen(pj), "profile", &p), HM_OK);
  assert_int_equal(hm_profile_resolve(&p, &c, NULL), HM_OK);
  hm_device_xfer g = hm_profile_staging_of(&p, 1), h = hm_profile_staging_of(&p, 0);
  assert_true(g.d2h_bw == 1e9 && g.h2d_bw == 2e9 && g.copy_latency == 1e-5);
  assert_true(h.d2h_bw == 0 && h.h2d_bw == 0 && hm_cost_staging(&h, 1e6) == 0); /* cpu: host memory */
  /* written and read back alike */
  cJSON *j = hm_profile_to_cjson(&p);
  assert_non_null(j);
  char *text = cJSON_PrintUnformatted(j);
  hm_profile q;
  assert_int_equal(hm_profile_parse(text, strlen(text), "again", &q), HM_OK);
  assert_int_equal(q.nstaging, 1);
  assert_string_equal(q.staging[0].device_type, "gpu");
  assert_true(q.staging[0].xfer.d2h_bw == 1e9 && q.staging[0].xfer.h2d_bw == 2e9);
  free(text);
  cJSON_Delete(j);
  hm_profile_free(&q);
  /* a second entry for one type, a bad figure, an unknown type */
  hm_profile_staging e = {.device_type = "gpu", .xfer = {.d2h_bw = 1, .h2d_bw = 1}};
  assert_int_equal(hm_profile_add_staging(&p, &e), HM_ERR_INVALID_ARG);
  hm_profile_free(&p);
  const char *bad = "{\"version\": 1, \"staging\": [{\"device_type\": \"gpu\", \"d2h_bandwidth\": 0,"
                    " \"h2d_bandwidth\": 1e9, \"latency\": 0}]}";
  assert_int_equal(hm_profile_parse(bad, strlen(bad), "bad", &p), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "d2h_bandwidth"));
  const char *unknown = "{\"version\": 1, \"staging\": [{\"device_type\": \"tpu\", \"d2h_bandwidth\": 1e9,"
                        " \"h2d_bandwidth\": 1e9, \"latency\": 0}]}";
  assert_int_equal(hm_profile_parse(unknown, strlen(unknown), "unknown", &p), HM_OK);
  assert_int_equal(hm_profile_resolve(&p, &c, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "profile.staging[0].device_type"));
  hm_profile_free(&p);
  hm_cluster_free(&c);
}

/* Two stages (host memory, then a staged device), one replica, tied embeddings. */
static void run(const hm_device_xfer *staged, hm_sim_result *r, hm_sim_trace *tr) {
  static hm_sim_stage st[2];
  static double grads[4] = {4e6, 1e6, 1e6, 4e6};
  const hm_link nic = {.bandwidth = 1e9, .latency = 1e-5};
  for (int s = 0; s < 2; s++)
    st[s] = (hm_sim_stage){.layer_begin = 2 * s, .layer_end = 2 * s + 2, .tp = 1, .fwd = 1e-3, .bwd = 2e-3,
                           .act_bytes = 1e6, .link_next = nic, .optimizer = 1e-4, .mem_static = 1e8,
                           .mem_act = 1e7, .mem_capacity = 1e10};
  st[1].staging = *staged;
  static hm_sim_class cl;
  cl = (hm_sim_class){.nreplicas = 2, .nstages = 2, .nmicro = 3, .stages = st};
  hm_sim_input in = {.nclasses = 1, .classes = &cl, .nlayers = 4, .layer_grad_bytes = grads,
                     .sync = {.link = nic}, .layers_per_bucket = 8, .tied_embeddings = 1, .tied_link = nic,
                     .grad_norm_time = 1e-5};
  assert_int_equal(hm_simulate(&in, r, tr), HM_OK);
}

static double event_dur(const hm_sim_trace *tr, hm_op_kind kind, int stage) {
  for (int i = 0; i < tr->nevents; i++)
    if (tr->events[i].kind == kind && tr->events[i].stage == stage) return tr->events[i].dur;
  fail_msg("no %d event on stage %d", (int)kind, stage);
  return -1;
}

static void test_sim_counts_staging(void **state) {
  (void)state;
  const hm_link nic = {.bandwidth = 1e9, .latency = 1e-5};
  const hm_device_xfer none = {0}, gpu = {.d2h_bw = 1e9, .h2d_bw = 2e9, .copy_latency = 1e-5};
  hm_sim_result a, b;
  hm_sim_trace ta = {0}, tb = {0};
  run(&none, &a, &ta);
  run(&gpu, &b, &tb);
  const double p2p = hm_cost_p2p(&nic, 1e6);
  /* stage 0 (host) -> stage 1 (staged): the receiver's host->device copy */
  assert_true(fabs(event_dur(&ta, HM_OP_SEND_ACT, 0) - p2p) < TOL);
  assert_true(fabs(event_dur(&tb, HM_OP_SEND_ACT, 0) - (p2p + 1e-5 + 1e6 / 2e9)) < TOL);
  /* stage 1 -> stage 0: the sender's device->host copy */
  assert_true(fabs(event_dur(&tb, HM_OP_SEND_GRAD, 1) - (p2p + 1e-5 + 1e6 / 1e9)) < TOL);
  /* stage 1's gradient allreduce (4e6 + 1e6 bytes... its layers 2, 3: 1e6 + 4e6) pays both copies */
  const double copies = 2e-5 + 5e6 / 1e9 + 5e6 / 2e9;
  assert_true(fabs(event_dur(&tb, HM_OP_ALLREDUCE, 1) - event_dur(&ta, HM_OP_ALLREDUCE, 1) - copies) < TOL);
  /* so does stage 0's: the collective waits for its staged member */
  assert_true(fabs(event_dur(&tb, HM_OP_ALLREDUCE, 0) - event_dur(&ta, HM_OP_ALLREDUCE, 0) - copies) < TOL);
  /* the tied sync's staged end */
  const double tied = 2e-5 + 4e6 / 1e9 + 4e6 / 2e9;
  assert_true(fabs(event_dur(&tb, HM_OP_TIED_EMB_SYNC, 0) - event_dur(&ta, HM_OP_TIED_EMB_SYNC, 0) - tied) < TOL);
  assert_true(b.step_time > a.step_time + copies);
  hm_sim_result_free(&a);
  hm_sim_result_free(&b);
  hm_sim_trace_free(&ta);
  hm_sim_trace_free(&tb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_profile_staging_io),
      cmocka_unit_test(test_sim_counts_staging),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
