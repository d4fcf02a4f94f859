/* The planner's compute cost model against published training throughput (docs/plan.md
 * "Validation against published runs"): for each row of a table (bench/plan/published_mfu.csv,
 * sources in its header) it predicts the run's model FLOPs utilization from the planner's
 * per-layer costs (hm_layer_costs_init: one data-parallel GPU, its micro-batches back to back,
 * the optimizer sharded over the GPUs as FSDP does, gather/scatter traffic assumed overlapped),
 * after fitting the device type's `efficiency` on the table's one calibration row; twice: with
 * the GEMM shape model and with one constant efficiency (the model before it). Prints every row,
 * the mean absolute error of the rows not fitted, and whether each table's ranking is kept.
 *   bench_plan_published [table.csv]
 * Exit status 0 when it ran; the errors are reported, not judged. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "plan/plan_internal.h"

#define MAX_ROWS 64

typedef struct row {
  char table[32], model[32];
  long L, C, NH, V, T, gpus, mb, accum;
  double mfu, pred[2];
  int cal;
} row;

/* Datasheet figures of the tables' GPUs (as in examples/: A100-SXM4-80GB, H100 SXM5 80GB). */
static const char *type_json(const char *table) {
  static char buf[1024];
  const int h100 = strstr(table, "h100") != NULL;
  snprintf(buf, sizeof buf,
           "{\"version\": 1, \"name\": \"one-node\", \"device_types\": [{\"name\": \"%s\", "
           "\"peak_flops\": {\"fp32\": %s, \"bf16\": %s}, \"memory_bytes\": 85899345920, "
           "\"memory_bandwidth\": %s, \"intra_host_link\": {\"bandwidth\": %s, \"latency\": 2e-6}}],"
           " \"hosts\": [{\"name\": \"node\", \"count\": 1, \"devices\": {\"type\": \"%s\", "
           "\"count\": 8}, \"nic\": {\"bandwidth\": 200e9, \"latency\": 5e-6}}]}",
           h100 ? "h100" : "a100", h100 ? "67e12" : "19.5e12", h100 ? "989e12" : "312e12",
           h100 ? "3.35e12" : "2.039e12", h100 ? "450e9" : "300e9", h100 ? "h100" : "a100");
  return buf;
}

/* Predicted MFU (fraction) of row r with the type's efficiency e. */
static int predict(const row *r, int shape, double e, double *mfu) {
  hm_cluster c;
  hm_model m;
  hm_train t;
  const char *j = type_json(r->table);
  if (hm_cluster_parse(j, strlen(j), "bench", &c) != HM_OK) return -1;
  c.types[0].efficiency = e;
  if (!shape) { /* given as unknown: no name defaults, hm_gemm_model_known() false */
    c.types[0].gemm_given = 1;
    c.types[0].gemm_units = 0;
  }
  hm_spec_model_config cfg = {.arch = HM_ARCH_GPT2, .L = r->L, .C = r->C, .NH = r->NH,
                              .kv_heads = r->NH, .V = r->V, .T = r->T, .tied_embeddings = 1,
                              .flash_attention = 1};
  int rc = -1;
  if (hm_model_from_config(&cfg, HM_DTYPE_BF16, r->model, &m) != HM_OK) goto out_c;
  hm_train_default(&t);
  t.global_batch = r->gpus * r->mb * r->accum;
  t.n_micro_batch_sizes = 1;
  t.micro_batch_sizes[0] = r->mb;
  if (hm_spec_resolve(&c, &m, &t, NULL) != HM_OK) goto out_m;
  hm_plan_inputs in = {.cluster = &c, .model = &m, .train = &t};
  hm_layer_costs lc;
  if (hm_layer_costs_init(&in, 0, 1, r->mb, &lc) != HM_OK) goto out_m;
  double step = 0, opt = 0;
  for (int l = 0; l < m.nlayers; l++) {
    step += (lc.fwd[l] + lc.bwd[l]) * (double)r->accum;
    opt += lc.opt[l] / (double)r->gpus;
  }
  hm_layer_costs_free(&lc);
  const double tokens = (double)(r->mb * r->accum * r->T);
  *mfu = m.flops_per_token * tokens / (step + opt) / hm_device_type_peak(&c.types[0], t.compute_dtype);
  rc = 0;
out_m:
  hm_model_free(&m);
out_c:
  hm_cluster_free(&c);
  return rc;
}

/* Efficiency that makes row r's predicted MFU its published one (bisection; MFU rises with e). */
static int calibrate(const row *r, int shape, double *e) {
  double lo = 1e-3, hi = 1.0, mfu = 0;
  for (int i = 0; i < 60; i++) {
    double mid = 0.5 * (lo + hi);
    if (predict(r, shape, mid, &mfu)) return -1;
    if (mfu * 100 < r->mfu) lo = mid;
    else hi = mid;
  }
  *e = 0.5 * (lo + hi);
  return 0;
}

static int read_rows(const char *path, row *rows, int *n) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "bench_plan_published: cannot open %s\n", path);
    return -1;
  }
  char line[512];
  *n = 0;
  int header = 1;
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#' || line[0] == '\n') continue;
    if (header) {
      header = 0;
      continue;
    }
    row *r = &rows[*n];
    memset(r, 0, sizeof *r);
    if (*n >= MAX_ROWS ||
        sscanf(line, "%31[^,],%31[^,],%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%lf,%d", r->table, r->model,
               &r->L, &r->C, &r->NH, &r->V, &r->T, &r->gpus, &r->mb, &r->accum, &r->mfu,
               &r->cal) != 12) {
      fprintf(stderr, "bench_plan_published: %s: bad row: %s", path, line);
      fclose(f);
      return -1;
    }
    (*n)++;
  }
  fclose(f);
  return 0;
}

/* Pairs of one table's rows ordered alike by published and predicted MFU, and all pairs. */
static void ranking(const row *rows, int n, const char *table, int k, int *same, int *pairs) {
  *same = *pairs = 0;
  for (int a = 0; a < n; a++)
    for (int b = a + 1; b < n; b++) {
      if (strcmp(rows[a].table, table) || strcmp(rows[b].table, table)) continue;
      (*pairs)++;
      *same += (rows[a].mfu - rows[b].mfu) * (rows[a].pred[k] - rows[b].pred[k]) > 0;
    }
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : HM_SOURCE_DIR "/bench/plan/published_mfu.csv";
  static row rows[MAX_ROWS];
  int n = 0;
  if (read_rows(path, rows, &n)) return 1;
  static const char *const names[2] = {"constant", "shape"};
  double sum[2] = {0, 0};
  int counted = 0;
  for (int k = 0; k < 2; k++) /* k 0: constant efficiency, 1: GEMM shape model */
    for (int i = 0; i < n; i++) {
      if (!rows[i].cal) continue;
      double e = 0;
      if (calibrate(&rows[i], k, &e)) goto fail;
      printf("# %-8s %-9s efficiency fitted on %s: %.4f\n", rows[i].table, names[k], rows[i].model, e);
      for (int r = 0; r < n; r++)
        if (!strcmp(rows[r].table, rows[i].table) && predict(&rows[r], k, e, &rows[r].pred[k]))
          goto fail;
    }
  printf("%-9s %-6s %5s %4s %5s %9s %9s %7s %9s %7s\n", "table", "model", "C", "mb", "pub%",
         "const%", "err", "shape%", "err", "");
  for (int i = 0; i < n; i++) {
    const row *r = &rows[i];
    double err[2];
    for (int k = 0; k < 2; k++) err[k] = (100 * r->pred[k] - r->mfu) / r->mfu;
    printf("%-9s %-6s %5ld %4ld %5.2f %9.2f %+8.1f%% %7.2f %+8.1f%% %s\n", r->table, r->model, r->C,
           r->mb, r->mfu, 100 * r->pred[0], 100 * err[0], 100 * r->pred[1], 100 * err[1],
           r->cal ? "(fitted)" : "");
    if (!r->cal) {
      for (int k = 0; k < 2; k++) sum[k] += fabs(err[k]);
      counted++;
    }
  }
  printf("mean absolute error over %d predicted rows: constant %.1f%%, shape %.1f%%\n", counted,
         counted ? 100 * sum[0] / counted : 0, counted ? 100 * sum[1] / counted : 0);
  for (int i = 0; i < n; i++) {
    if (!rows[i].cal) continue;
    for (int k = 0; k < 2; k++) {
      int same, pairs;
      ranking(rows, n, rows[i].table, k, &same, &pairs);
      printf("ranking %-8s %-8s: %d of %d pairs ordered as published%s\n", rows[i].table, names[k],
             same, pairs, same == pairs ? " (kept)" : "");
    }
  }
  return 0;
fail:
  fprintf(stderr, "bench_plan_published: %s\n", hm_last_error());
  return 1;
}
