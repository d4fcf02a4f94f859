/* Training throughput of gpt-mini (B8, T256, fp32, AdamW, 2 threads) with hetmix's cpu backend
 * and with PyTorch (torch_train.py, Debian's python3-torch) side by side, in alternating rounds,
 * and hetmix's peak memory against the expected parameter + gradient + AdamW + activation bytes.
 *
 * usage: bench_model_train [--model NAME] [--batch B] [--steps N] [--warmup N] [--threads N]
 *                          [--rounds R] [--device SPEC] [--torch-device cpu|cuda] [--no-torch]
 * --torch-device cuda runs the PyTorch peer on the GPU (with --device cuda for hetmix: the GPU
 * comparison of scripts/device-check.sh); its peak GPU memory is printed beside hetmix's.
 * Both sides run the same step: forward, cross-entropy, backward, global-norm clip, AdamW.
 * Means and bests are over each side's successful rounds; a failed PyTorch round is reported and
 * left out, and no ratio is printed when a side has no successful round. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "util/util.h"

static int die(const char *what) {
  fprintf(stderr, "bench_model_train: error: %s: %s\n", what, hm_last_error());
  return 1;
}

static double rss_mib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

static double current_rss_mib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, rss = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
  }
  return rss * 4096.0 / 1048576.0;
}

/* One system's rounds: figures over the successful ones, and how many failed. */
typedef struct bench_side {
  double sum, best, rss;
  int ok, failed;
} bench_side;

static void side_add(bench_side *b, double tps, double rss) {
  b->sum += tps;
  b->best = tps > b->best ? tps : b->best;
  b->rss = rss > b->rss ? rss : b->rss;
  b->ok++;
}

/* One PyTorch round through torch_train.py; 0 with its figures, -1 when it did not run. */
static const char *g_torch_device = "cpu"; /* --torch-device */
static double g_torch_gpu_mib;             /* the PyTorch peer's peak GPU memory (on a GPU) */

static int torch_round(const char *python, const hm_spec_model_config *cfg, int B, int steps, int warmup,
                       int threads, double *tps, double *ms, double *rss) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "timeout 1800 '%s' '%s/bench/model/torch_train.py' %d %d %d %d %d %d %d %d %d %s 2>&1",
           python, HM_SOURCE_DIR, (int)cfg->L, (int)cfg->C, (int)cfg->NH, (int)cfg->V, (int)cfg->T, B, steps, warmup,
           threads, g_torch_device);
  FILE *p = popen(cmd, "r");
  char line[512];
  *tps = *ms = *rss = 0;
  while (p && fgets(line, sizeof line, p)) {
    const char *q = strstr(line, "torch tokens_per_s=");
    const char *g = q ? strstr(q, "peak_gpu_mib=") : NULL;
    double gm = 0;
    if (g && sscanf(g, "peak_gpu_mib=%lf", &gm) == 1 && gm > g_torch_gpu_mib) g_torch_gpu_mib = gm;
    if (q && sscanf(q, "torch tokens_per_s=%lf step_ms=%lf peak_rss_mib=%lf", tps, ms, rss) == 3) continue;
    if (!q) fprintf(stderr, "torch: %s", line);
  }
  int rc = p ? pclose(p) : -1;
  return rc == 0 && *tps > 0 ? 0 : -1;
}

/* Means over successful rounds only; the ratio only when both sides have one. */
static void print_throughput(const bench_side *h, const bench_side *t, int torch_asked) {
  if (h->ok)
    printf("\nhetmix mean %.1f tokens/s (best %.1f) over %d round(s)", h->sum / h->ok, h->best, h->ok);
  else
    printf("\nhetmix had no successful round");
  if (t->ok)
    printf(" | torch mean %.1f tokens/s (best %.1f) over %d successful round(s), %d failed", t->sum / t->ok,
           t->best, t->ok, t->failed);
  if (t->ok && h->ok)
    printf(" | ratio hetmix/torch %.2fx (of means), %.2fx (of bests)", (h->sum / h->ok) / (t->sum / t->ok),
           h->best / t->best);
  else if (torch_asked)
    printf(" | no ratio: PyTorch had no successful round (%d failed)", t->failed);
  printf("\n");
}

int main(int argc, char **argv) {
  const char *model = "gpt-mini", *device = NULL, *python = getenv("HETMIX_PYTHON");
  int B = 8, steps = 8, warmup = 2, threads = 2, rounds = 2, torch = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-torch")) torch = 0;
    else if (!v) return fprintf(stderr, "usage: see the top of bench/model/bench_train.c\n"), 2;
    else if (!strcmp(a, "--model")) model = v, i++;
    else if (!strcmp(a, "--device")) device = v, i++;
    else if (!strcmp(a, "--torch-device")) g_torch_device = v, i++;
    else if (!strcmp(a, "--batch")) B = atoi(v), i++;
    else if (!strcmp(a, "--steps")) steps = atoi(v), i++;
    else if (!strcmp(a, "--warmup")) warmup = atoi(v), i++;
    else if (!strcmp(a, "--threads")) threads = atoi(v), i++;
    else if (!strcmp(a, "--rounds")) rounds = atoi(v), i++;
    else return fprintf(stderr, "unknown option %s\n", a), 2;
  }
  if (B < 1 || steps < 1 || warmup < 0 || threads < 1 || rounds < 1) return fprintf(stderr, "bad numbers\n"), 2;
  if (strcmp(g_torch_device, "cpu") != 0 && strcmp(g_torch_device, "cuda") != 0)
    return fprintf(stderr, "--torch-device %s: expected cpu or cuda\n", g_torch_device), 2;
  hm_spec_model_config cfg;
  if (hm_model_config_lookup(model, &cfg) != HM_OK) return die("--model");
  if (cfg.arch != HM_ARCH_GPT2) return fprintf(stderr, "--model: the PyTorch side of this benchmark is GPT-2\n"), 2;
  char spec[128];
  if (!device) snprintf(spec, sizeof spec, "cpu:threads=%d", threads), device = spec;
  if (!python) python = "/usr/bin/python3";
  const int T = cfg.T, N = B * T;

  double rss0 = current_rss_mib();
  hm_device *dev = NULL;
  hm_stage *s = NULL;
  hm_stage_options so = {0, cfg.L + 2, B, T, 1, HM_STAGE_TP_NONE};
  if (hm_device_open(device, &dev) != HM_OK) return die("device");
  if (hm_stage_create(&cfg, dev, &so, &s) != HM_OK) return die("stage");
  if (hm_stage_init_params(s, 1) != HM_OK) return die("init");
  hm_stage_memory mem;
  hm_stage_estimate(&cfg, dev, &so, &mem);
  int32_t *inp = malloc((size_t)N * sizeof *inp), *tgt = malloc((size_t)N * sizeof *tgt);
  for (int i = 0; i < N; i++) inp[i] = (int32_t)(hm_splitmix64(2 * (uint64_t)i) % (uint64_t)cfg.V),
                              tgt[i] = (int32_t)(hm_splitmix64(2 * (uint64_t)i + 1) % (uint64_t)cfg.V);
  const hm_adamw adam = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  char cs[128];
  printf("# gpt %s (%s), B=%d, fp32, AdamW, clip 1.0; %d timed steps after %d warm-up, "
         "%d round(s), hetmix on %s\n", model, hm_model_config_str(&cfg, cs, sizeof cs), B, steps, warmup, rounds, device);
  printf("%-6s %-8s %12s %10s %14s\n", "round", "system", "tokens/s", "step ms", "peak RSS MiB");
  bench_side hs = {0, 0, 0, 0, 0}, ts = {0, 0, 0, 0, 0};
  int step_no = 0;
  float loss = 0;
  for (int r = 1; r <= rounds; r++) {
    double t0 = 0;
    for (int k = 0; k < warmup + steps; k++) {
      if (k == warmup) t0 = hm_now_s();
      if (hm_stage_zero_grad(s) != HM_OK || hm_stage_forward(s, 0, inp, NULL, tgt, &loss) != HM_OK ||
          hm_stage_backward(s, 0, NULL, 1.0f) != HM_OK)
        return die("step");
      double sumsq = 0;
      if (hm_stage_grad_sumsq(s, &sumsq) != HM_OK) return die("norm");
      if (hm_stage_adamw(s, &adam, ++step_no, hm_grad_clip_scale(sumsq, 1.0f)) != HM_OK) return die("adamw");
      if (hm_device_synchronize(dev) != HM_OK) return die("sync");
    }
    double dt = hm_now_s() - t0, tps = (double)N * steps / dt;
    side_add(&hs, tps, rss_mib());
    printf("%-6d %-8s %12.1f %10.1f %14.1f\n", r, "hetmix", tps, 1000 * dt / steps, rss_mib());
    fflush(stdout);
    if (!torch) continue;
    double tt, ms, trss;
    if (torch_round(python, &cfg, B, steps, warmup, threads, &tt, &ms, &trss) != 0) {
      ts.failed++;
      printf("%-6d %-8s %12s   (PyTorch failed this round: install python3-torch or set HETMIX_PYTHON)\n", r,
             "torch", "-");
      continue;
    }
    side_add(&ts, tt, trss);
    printf("%-6d %-8s %12.1f %10.1f %14.1f\n", r, "torch", tt, ms, trss);
    fflush(stdout);
  }
  print_throughput(&hs, &ts, torch);
  hm_device_stats ds;
  hm_device_get_stats(dev, &ds);
  printf("\nmemory (hetmix): expected %.1f MiB = params %.1f + grads %.1f + AdamW m,v %.1f + activations %.1f "
         "+ backward scratch %.1f (n_params %zu)\n",
         mem.total / 1048576.0, mem.params / 1048576.0, mem.grads / 1048576.0, mem.optimizer / 1048576.0,
         mem.activations / 1048576.0, mem.scratch / 1048576.0, mem.n_params);
  printf("                 peak RSS %.1f MiB, of which %.1f MiB before the model (binary, libraries); "
         "device peak allocated %.1f MiB\n", rss_mib(), rss0, (double)ds.bytes_peak / 1048576.0);
  if (ts.ok) printf("                 torch peak RSS %.1f MiB (whole python process)\n", ts.rss);
  if (ts.ok && g_torch_gpu_mib > 0)
    printf("                 torch peak GPU memory %.1f MiB (max_memory_allocated) | hetmix %.1f MiB\n",
           g_torch_gpu_mib, (double)ds.bytes_peak / 1048576.0);
  printf("final loss %.4f (random tokens; a sanity value, not a quality figure)\n", loss);
  free(inp);
  free(tgt);
  hm_stage_destroy(s);
  hm_device_close(dev);
  return 0;
}
