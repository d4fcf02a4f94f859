/* Kernel micro-benchmark at the shapes of one gpt-mini training step (L6 C384 NH6 V256 T256,
 * B8 by default), with PyTorch's CPU ops timed on the same shapes in the same command.
 *
 *   bench_device_ops [--device cpu:threads=2] [--B 8] [--reps 5] [--no-torch]
 *
 * Prints, per op: milliseconds per call (median of reps) forward and backward for hetmix and
 * for torch (bench/device/torch_ops.py, run with the same thread count), calls per step, and
 * the per-step totals with the ratio torch/hetmix (above 1: hetmix is faster). HETMIX_PYTHON
 * names the interpreter (default /usr/bin/python3, where Debian's python3-torch lives). Not a
 * training benchmark: bench/model times whole steps end to end. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/device.h"
#include "util/util.h"

enum { L = 6, C = 384, NH = 6, V = 256, T = 256 };

typedef struct op_row {
  const char *name;
  int calls; /* per training step */
  double fwd_ms, bwd_ms, torch_fwd_ms, torch_bwd_ms;
} op_row;

static hm_device *dev;
static int reps = 5;
static uint64_t rng = 88172645463325252ull;

static float *rand_buf(size_t n, float scale) {
  float *d, *h = malloc(n * sizeof *h);
  if (!h) exit(1);
  for (size_t i = 0; i < n; i++) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    h[i] = (float)((rng >> 40) / 16777216.0 * 2 - 1) * scale;
  }
  if (hm_device_alloc(dev, (void **)&d, n * 4, "bench") != HM_OK ||
      hm_device_copy_from_f32(dev, d, h, n) != HM_OK) {
    fprintf(stderr, "bench: %s\n", hm_last_error());
    exit(1);
  }
  free(h);
  return d;
}

/* token ids and targets live in device memory */
static int32_t *dev_ints(const int32_t *h, size_t n) {
  int32_t *d = NULL;
  if (hm_device_alloc(dev, (void **)&d, n * sizeof *d, "bench ints") != HM_OK ||
      hm_device_copy_h2d(dev, d, h, n * sizeof *d) != HM_OK) {
    fprintf(stderr, "bench: %s\n", hm_last_error());
    exit(1);
  }
  return d;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* median wall milliseconds of reps calls of `call` (after one warm-up) */
#define TIME_MS(out, call)                                                       \
  do {                                                                           \
    double ts_[64];                                                              \
    if ((call) != HM_OK) { fprintf(stderr, "bench: %s\n", hm_last_error()); exit(1); } \
    for (int r_ = 0; r_ < reps; r_++) {                                          \
      hm_device_synchronize(dev); /* asynchronous devices: time to completion */ \
      uint64_t t0_ = hm_now_ns();                                                \
      (void)(call);                                                              \
      hm_device_synchronize(dev);                                                \
      ts_[r_] = (hm_now_ns() - t0_) / 1e6;                                       \
    }                                                                            \
    qsort(ts_, (size_t)reps, sizeof ts_[0], cmp_double);                         \
    (out) = ts_[reps / 2];                                                       \
  } while (0)

int main(int argc, char **argv) {
  const char *spec = "cpu:threads=2";
  int B = 8, torch = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--device") && i + 1 < argc) spec = argv[++i];
    else if (!strcmp(argv[i], "--B") && i + 1 < argc) B = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-torch")) torch = 0;
    else {
      fprintf(stderr, "usage: %s [--device SPEC] [--B n] [--reps n] [--no-torch]\n", argv[0]);
      return 2;
    }
  }
  if (B < 1 || reps < 1 || reps > 64) { fprintf(stderr, "bench: bad --B or --reps\n"); return 2; }
  if (hm_device_open(spec, &dev) != HM_OK) {
    fprintf(stderr, "bench: %s\n", hm_last_error());
    return 1;
  }
  int N = B * T;
  size_t NC = (size_t)N * C;
  op_row rows[] = {
      {"encoder", 1, 0, 0, NAN, NAN},        {"layernorm", 2 * L + 1, 0, 0, NAN, NAN},
      {"matmul_qkv", L, 0, 0, NAN, NAN},     {"attention", L, 0, 0, NAN, NAN},
      {"matmul_proj", L, 0, 0, NAN, NAN},    {"matmul_fc", L, 0, 0, NAN, NAN},
      {"gelu", L, 0, 0, NAN, NAN},           {"matmul_fcproj", L, 0, 0, NAN, NAN},
      {"residual", 2 * L, 0, 0, NAN, NAN},   {"matmul_head", 1, 0, 0, NAN, NAN},
      {"crossentropy", 1, 0, 0, NAN, NAN},   {"adamw", 1, 0, 0, NAN, NAN},
  };
  int nrows = (int)(sizeof rows / sizeof rows[0]);

  int32_t *htok = malloc((size_t)N * sizeof *htok);
  for (int i = 0; i < N; i++) htok[i] = (int32_t)((i * 2654435761u) % V);
  int32_t *tok = dev_ints(htok, (size_t)N);
  free(htok);
  float *wte = rand_buf((size_t)V * C, 0.02f), *wpe = rand_buf((size_t)T * C, 0.02f);
  float *x = rand_buf(NC, 1), *y = rand_buf(NC, 1), *dy = rand_buf(NC, 1), *dx = rand_buf(NC, 1);
  float *w = rand_buf(C, 1), *b = rand_buf(C, 1), *dw = rand_buf(C, 1), *db = rand_buf(C, 1);
  float *mean = rand_buf(N, 1), *rstd = rand_buf(N, 1);
  float *dwte = rand_buf((size_t)V * C, 1), *dwpe = rand_buf((size_t)T * C, 1);
  TIME_MS(rows[0].fwd_ms, hm_dev_encoder_forward(dev, y, tok, wte, wpe, B, T, C));
  TIME_MS(rows[0].bwd_ms, hm_dev_encoder_backward(dev, dwte, dwpe, dy, tok, B, T, C));
  TIME_MS(rows[1].fwd_ms, hm_dev_layernorm_forward(dev, y, mean, rstd, x, w, b, N, C));
  TIME_MS(rows[1].bwd_ms, hm_dev_layernorm_backward(dev, dx, dw, db, dy, x, w, mean, rstd, N, C));

  struct { int row, c, oc, bias; } mm[] = {{2, C, 3 * C, 1}, {4, C, C, 1}, {5, C, 4 * C, 1},
                                           {7, 4 * C, C, 1}, {9, C, V, 0}};
  for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
    float *in = rand_buf((size_t)N * mm[i].c, 1), *wt = rand_buf((size_t)mm[i].oc * mm[i].c, 0.05f);
    float *bs = rand_buf(mm[i].oc, 1), *out = rand_buf((size_t)N * mm[i].oc, 1);
    float *dout = rand_buf((size_t)N * mm[i].oc, 1), *din = rand_buf((size_t)N * mm[i].c, 1);
    float *dwt = rand_buf((size_t)mm[i].oc * mm[i].c, 1), *dbs = rand_buf(mm[i].oc, 1);
    TIME_MS(rows[mm[i].row].fwd_ms,
            hm_dev_matmul_forward(dev, out, in, wt, mm[i].bias ? bs : NULL, N, mm[i].c, mm[i].oc));
    TIME_MS(rows[mm[i].row].bwd_ms, hm_dev_matmul_backward(dev, din, dwt, mm[i].bias ? dbs : NULL, dout,
                                                           in, wt, N, mm[i].c, mm[i].oc));
    hm_device_free(dev, in); hm_device_free(dev, wt); hm_device_free(dev, bs); hm_device_free(dev, out);
    hm_device_free(dev, dout); hm_device_free(dev, din); hm_device_free(dev, dwt); hm_device_free(dev, dbs);
  }
  {
    float *qkv = rand_buf(3 * NC, 1), *dqkv = rand_buf(3 * NC, 1);
    float *att = rand_buf(hm_dev_attention_saved_elems(dev, B, T, C, NH), 1);
    TIME_MS(rows[3].fwd_ms, hm_dev_attention_forward(dev, y, att, qkv, B, T, C, NH));
    TIME_MS(rows[3].bwd_ms, hm_dev_attention_backward(dev, dqkv, dy, qkv, att, B, T, C, NH));
    hm_device_free(dev, qkv); hm_device_free(dev, dqkv); hm_device_free(dev, att);
  }
  {
    float *h = rand_buf(4 * NC, 2), *g = rand_buf(4 * NC, 1), *dh = rand_buf(4 * NC, 1);
    TIME_MS(rows[6].fwd_ms, hm_dev_gelu_forward(dev, g, h, 4 * NC));
    TIME_MS(rows[6].bwd_ms, hm_dev_gelu_backward(dev, dh, h, g, 4 * NC));
    hm_device_free(dev, h); hm_device_free(dev, g); hm_device_free(dev, dh);
  }
  TIME_MS(rows[8].fwd_ms, hm_dev_residual_forward(dev, y, x, dx, NC));
  TIME_MS(rows[8].bwd_ms, hm_dev_residual_backward(dev, dx, y, dy, NC));
  {
    float *logits = rand_buf((size_t)N * V, 4), *losses = rand_buf(N, 1), *dl = rand_buf((size_t)N * V, 1);
    int32_t *htgt = malloc((size_t)N * sizeof *htgt);
    for (int i = 0; i < N; i++) htgt[i] = (int32_t)((i * 40503u) % V);
    int32_t *tgt = dev_ints(htgt, (size_t)N);
    free(htgt);
    TIME_MS(rows[10].fwd_ms, hm_dev_crossentropy_forward_backward(dev, losses, NULL, logits, tgt, 1.0 / N, N, V, V));
    TIME_MS(rows[10].bwd_ms, hm_dev_crossentropy_forward_backward(dev, losses, dl, logits, tgt, 1.0 / N, N, V, V));
    rows[10].bwd_ms -= rows[10].fwd_ms; /* the fused call does both; report the extra part */
    if (rows[10].bwd_ms < 0) rows[10].bwd_ms = 0;
  }
  {
    size_t np = (size_t)V * C + (size_t)T * C + (size_t)L * (12 * C * C + 13 * C) + 2 * C;
    float *p = rand_buf(np, 0.02f), *g = rand_buf(np, 0.01f), *m = rand_buf(np, 0), *v = rand_buf(np, 0);
    TIME_MS(rows[11].fwd_ms, hm_dev_adamw_update(dev, p, g, m, v, np, 1e-4, 0.9, 0.95, 1e-8, 0.1, 1.0, 1));
    rows[11].bwd_ms = 0;
  }

  int threads = hm_device_threads(dev);
  if (torch) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/bench/device/torch_ops.py --threads %d --B %d --reps %d",
             getenv("HETMIX_PYTHON") ? getenv("HETMIX_PYTHON") : "/usr/bin/python3", HM_SOURCE_DIR,
             threads, B, reps);
    FILE *f = popen(cmd, "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
      char name[64];
      double fw, bw;
      if (sscanf(line, "%63s %lf %lf", name, &fw, &bw) != 3) continue;
      for (int i = 0; i < nrows; i++)
        if (!strcmp(rows[i].name, name)) {
          rows[i].torch_fwd_ms = fw;
          rows[i].torch_bwd_ms = bw;
        }
    }
    if (!f || pclose(f) != 0)
      printf("# torch run failed or PyTorch is missing (%s): torch columns are empty\n", cmd);
  }

  printf("# gpt-mini kernel shapes: B%d T%d C%d NH%d V%d L%d, device %s (%d threads), median of %d\n",
         B, T, C, NH, V, L, spec, threads, reps);
  printf("%-14s %6s %10s %10s %10s %10s %12s %12s %7s\n", "op", "calls", "fwd_ms", "bwd_ms",
         "torch_fwd", "torch_bwd", "step_ms", "torch_step", "ratio");
  double tot = 0, ttot = 0;
  for (int i = 0; i < nrows; i++) {
    double s = rows[i].calls * (rows[i].fwd_ms + rows[i].bwd_ms);
    double ts = rows[i].calls * (rows[i].torch_fwd_ms + rows[i].torch_bwd_ms);
    tot += s;
    ttot += ts;
    printf("%-14s %6d %10.3f %10.3f %10.3f %10.3f %12.2f %12.2f %7.2f\n", rows[i].name,
           rows[i].calls, rows[i].fwd_ms, rows[i].bwd_ms, rows[i].torch_fwd_ms,
           rows[i].torch_bwd_ms, s, ts, ts / s);
  }
  printf("%-14s %6s %10s %10s %10s %10s %12.2f %12.2f %7.2f\n", "total", "", "", "", "", "", tot,
         ttot, ttot / tot);
  printf("# kernel-only tokens/s: hetmix %.0f, torch %.0f\n", N / (tot / 1e3), N / (ttot / 1e3));
  hm_device_close(dev); /* frees tok and every other bench buffer */
  return 0;
}
