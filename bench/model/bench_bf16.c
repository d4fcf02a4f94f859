/* bf16-mixed against fp32 training on one device, side by side: tokens/s of the same step
 * (forward, cross-entropy, backward, global-norm clip, AdamW) on gpt-mini (B8, T256) by default,
 * in alternating rounds, with the ratio; and each precision's device memory (the stage's
 * accounting and the device's peak allocated bytes: params, bf16 weight copy, grads, AdamW,
 * activations, scratch).
 *
 * usage: bench_model_bf16 [--model NAME] [--batch B] [--steps N] [--warmup N] [--rounds R]
 *                         [--device SPEC]            (default cpu:threads=2)
 * The validation-loss comparison at gpt-mini's scale is bench/model/bf16_train.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "util/util.h"

static int die(const char *what) {
  fprintf(stderr, "bench_model_bf16: error: %s: %s\n", what, hm_last_error());
  return 1;
}

typedef struct side {
  hm_precision prec;
  hm_device *dev;
  hm_stage *s;
  hm_stage_memory mem;
  double sum, best;
  int rounds;
} side;

static hm_status open_side(side *x, const char *device, const hm_spec_model_config *cfg, int B) {
  hm_stage_options so = {0, cfg->L + 2, B, cfg->T, 1, HM_STAGE_TP_NONE};
  HM_TRY(hm_device_open(device, &x->dev));
  HM_TRY(hm_stage_create_prec(cfg, x->dev, &so, x->prec, &x->s));
  HM_TRY(hm_stage_init_params(x->s, 1));
  return hm_stage_estimate_prec(cfg, x->dev, &so, x->prec, &x->mem);
}

static hm_status one_step(hm_stage *s, const int32_t *inp, const int32_t *tgt, int t) {
  static const hm_adamw adam = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  float loss;
  double sumsq;
  HM_TRY(hm_stage_zero_grad(s));
  HM_TRY(hm_stage_forward(s, 0, inp, NULL, tgt, &loss));
  HM_TRY(hm_stage_backward(s, 0, NULL, 1.0f));
  HM_TRY(hm_stage_grad_sumsq(s, &sumsq));
  return hm_stage_adamw(s, &adam, t, hm_grad_clip_scale(sumsq, 1.0f));
}

static hm_status round_of(side *x, const int32_t *inp, const int32_t *tgt, int steps, int warmup, int N, int *t) {
  for (int i = 0; i < warmup; i++) HM_TRY(one_step(x->s, inp, tgt, ++*t));
  uint64_t t0 = hm_now_ns();
  for (int i = 0; i < steps; i++) HM_TRY(one_step(x->s, inp, tgt, ++*t));
  double tps = (double)N * steps / ((double)(hm_now_ns() - t0) * 1e-9);
  x->sum += tps;
  x->best = tps > x->best ? tps : x->best;
  x->rounds++;
  return HM_OK;
}

static double mib(size_t b) { return (double)b / 1048576.0; }

int main(int argc, char **argv) {
  const char *model = "gpt-mini", *device = "cpu:threads=2";
  int B = 8, steps = 4, warmup = 1, rounds = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) return fprintf(stderr, "usage: see the top of bench/model/bench_bf16.c\n"), 2;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--device")) device = v;
    else if (!strcmp(a, "--batch")) B = atoi(v);
    else if (!strcmp(a, "--steps")) steps = atoi(v);
    else if (!strcmp(a, "--warmup")) warmup = atoi(v);
    else if (!strcmp(a, "--rounds")) rounds = atoi(v);
    else return fprintf(stderr, "unknown option %s\n", a), 2;
    i++;
  }
  if (B < 1 || steps < 1 || warmup < 0 || rounds < 1) return fprintf(stderr, "bad numbers\n"), 2;
  hm_spec_model_config cfg;
  if (hm_model_config_lookup(model, &cfg) != HM_OK) return die("--model");
  const int N = B * (int)cfg.T;
  side sides[2] = {{.prec = HM_PREC_FP32}, {.prec = HM_PREC_BF16_MIXED}};
  for (int k = 0; k < 2; k++)
    if (open_side(&sides[k], device, &cfg, B) != HM_OK) return die(hm_precision_name(sides[k].prec));
  int32_t *inp = malloc((size_t)N * sizeof *inp), *tgt = malloc((size_t)N * sizeof *tgt);
  if (!inp || !tgt) return fprintf(stderr, "out of memory\n"), 1;
  for (int i = 0; i < N; i++)
    inp[i] = (int32_t)(hm_splitmix64(2 * (uint64_t)i) % (uint64_t)cfg.V),
    tgt[i] = (int32_t)(hm_splitmix64(2 * (uint64_t)i + 1) % (uint64_t)cfg.V);
  char cs[128];
  printf("# %s (%s), B=%d T=%d, AdamW, clip 1.0; %d timed steps after %d warm-up, %d alternating round(s), on %s\n",
         model, hm_model_config_str(&cfg, cs, sizeof cs), B, (int)cfg.T, steps, warmup, rounds, device);
  int t[2] = {0, 0};
  for (int r = 0; r < rounds; r++)
    for (int k = 0; k < 2; k++)
      if (round_of(&sides[k], inp, tgt, steps, warmup, N, &t[k]) != HM_OK) return die("step");
  printf("%-11s %12s %12s %10s %10s %10s %10s %10s %10s\n", "precision", "tok/s mean", "tok/s best", "total MiB",
         "params", "bf16 w", "grads", "AdamW", "acts");
  for (int k = 0; k < 2; k++) {
    const side *x = &sides[k];
    const hm_stage_memory *m = &x->mem;
    printf("%-11s %12.0f %12.0f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f\n", hm_precision_name(x->prec),
           x->sum / x->rounds, x->best, mib(m->total), mib(m->params), mib(m->weights_bf16), mib(m->grads),
           mib(m->optimizer), mib(m->activations));
  }
  for (int k = 0; k < 2; k++) {
    hm_device_stats st;
    hm_device_get_stats(sides[k].dev, &st);
    printf("%s device peak allocated: %.1f MiB\n", hm_precision_name(sides[k].prec), mib(st.bytes_peak));
  }
  printf("bf16-mixed / fp32: tokens/s x%.3f (means), x%.3f (bests); memory x%.3f (total), x%.3f (activations)\n",
         (sides[1].sum / sides[1].rounds) / (sides[0].sum / sides[0].rounds), sides[1].best / sides[0].best,
         (double)sides[1].mem.total / (double)sides[0].mem.total,
         (double)sides[1].mem.activations / (double)sides[0].mem.activations);
  for (int k = 0; k < 2; k++) {
    hm_stage_destroy(sides[k].s);
    hm_device_close(sides[k].dev);
  }
  free(inp);
  free(tgt);
  return 0;
}
