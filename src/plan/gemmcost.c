/* Shape-aware compute cost (docs/plan.md "Shape-aware compute"): a GEMM's time on a device
 * type from its shape through a roofline with tile and wave quantization, and the forward and
 * backward compute time of a transformer block or LM head from the GEMMs of its config, with
 * the memory-bound ops (norms, activations, softmax, residuals) as bytes over bandwidth. */
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "plan/plan_internal.h"

/* Known GPUs: compute units per device (SMs, or CUs of one GCD) and a typical large-GEMM output
 * tile of the vendor BLAS. Matched as a case-insensitive substring of the type's name. */
static const struct {
  const char *name;
  int units, tile_m, tile_n;
} known_gpus[] = {
    {"h200", 132, 256, 128}, {"h100", 132, 256, 128}, {"a100", 108, 256, 128},
    {"v100", 80, 128, 128},  {"mi300", 304, 256, 256}, {"mi250", 208, 256, 256}, /* MI250: both GCDs, 104 CUs each */
};

static int name_has(const char *name, const char *key) {
  size_t n = strlen(name), k = strlen(key);
  for (size_t i = 0; i + k <= n; i++) {
    size_t j = 0;
    while (j < k && tolower((unsigned char)name[i + j]) == key[j]) j++;
    if (j == k) return 1;
  }
  return 0;
}

void hm_device_type_gemm_defaults(hm_device_type *dt) {
  if (dt->gemm_given) return;
  dt->gemm_units = dt->gemm_tile_m = dt->gemm_tile_n = 0;
  for (size_t i = 0; i < sizeof known_gpus / sizeof known_gpus[0]; i++)
    if (name_has(dt->name, known_gpus[i].name)) {
      dt->gemm_units = known_gpus[i].units;
      dt->gemm_tile_m = known_gpus[i].tile_m;
      dt->gemm_tile_n = known_gpus[i].tile_n;
      return;
    }
}

int hm_gemm_model_known(const hm_device_type *dt) {
  return dt->gemm_units > 0 && dt->gemm_tile_m > 0 && dt->gemm_tile_n > 0;
}

double hm_gemm_time(const hm_gemm_device *g, double M, double N, double K, double batch) {
  if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return 0.0;
  const double tm = g->tile_m, tn = g->tile_n, units = g->units;
  const double tiles = ceil(M / tm) * ceil(N / tn) * batch;
  const double waves = ceil(tiles / units);
  /* each wave: every unit computes one tm x tn x K tile at its share of the reachable peak */
  const double compute = waves * 2.0 * tm * tn * K / (g->peak * g->efficiency / units);
  const double bytes = g->elem_bytes * batch * (M * K + K * N + M * N);
  return fmax(compute, bytes / g->membw);
}

double hm_gemm_efficiency(const hm_gemm_device *g, double M, double N, double K, double batch) {
  double t = hm_gemm_time(g, M, N, K, batch);
  return t > 0 ? 2.0 * M * N * K * batch / (t * g->peak) : 0.0;
}

/* Forward GEMM plus its two backward GEMMs (input gradient M x K x N, weight gradient K x N x M). */
static void add_gemm(const hm_gemm_device *g, double M, double N, double K, double batch,
                     double *fwd, double *bwd) {
  *fwd += hm_gemm_time(g, M, N, K, batch);
  *bwd += hm_gemm_time(g, M, K, N, batch) + hm_gemm_time(g, K, N, M, batch);
}

void hm_block_gemm_times(const hm_gemm_device *g, const hm_spec_model_config *cfg, int is_head,
                         double mb, int tp, double *fwd, double *bwd) {
  const double T = (double)cfg->T, C = (double)cfg->C, F = (double)cfg->ffn;
  const double NH = (double)cfg->NH, hd = C / NH, kvd = hd * (double)cfg->kv_heads;
  const double M = mb * T, t = tp;
  *fwd = *bwd = 0.0;
  if (is_head) {
    add_gemm(g, M, (double)cfg->V / t, C, 1, fwd, bwd);
    return;
  }
  const double qkv = cfg->arch == HM_ARCH_GPT2 ? 3 * C : C + 2 * kvd;
  const double up = cfg->arch == HM_ARCH_GPT2 ? F : 2 * F; /* llama: gate and up */
  add_gemm(g, M, qkv / t, C, 1, fwd, bwd);      /* QKV projection */
  add_gemm(g, T, T, hd, mb * NH / t, fwd, bwd);  /* attention scores, one per head */
  add_gemm(g, T, hd, T, mb * NH / t, fwd, bwd);  /* scores times values */
  add_gemm(g, M, C, C / t, 1, fwd, bwd);         /* output projection */
  add_gemm(g, M, up / t, C, 1, fwd, bwd);        /* MLP up (and gate) */
  add_gemm(g, M, C, F / t, 1, fwd, bwd);         /* MLP down */
}
