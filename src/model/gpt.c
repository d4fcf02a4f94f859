/* GPT-2 stages: a contiguous range of layers (embedding, transformer blocks, head) on one device,
 * with forward and backward per micro-batch, gradient accumulation and AdamW. Every tensor op is
 * a device kernel (include/hetmix/device.h), so the same code runs on every backend and dtype.
 * Not here: scheduling, communication, checkpoint file format (checkpoint.c), the trainer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "model/stage_internal.h"
#include "model/tp_shard.h"
#include "util/util.h"

// parameter tensors of one transformer block, in flat-buffer order
enum {
  BK_LN1W, BK_LN1B, BK_QKVW, BK_QKVB, BK_ATTPROJW, BK_ATTPROJB,
  BK_LN2W, BK_LN2B, BK_FCW, BK_FCB, BK_FCPROJW, BK_FCPROJB, BK_COUNT
};
static const char *const hm_block_names[BK_COUNT] = {
    "ln1.w", "ln1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w", "attn.proj.b",
    "ln2.w", "ln2.b", "mlp.fc.w", "mlp.fc.b", "mlp.proj.w", "mlp.proj.b"};

static hm_status hm_check_options(const hm_spec_model_config *cfg, const hm_stage_options *o) {
  HM_TRY(hm_model_config_check(cfg));
  int nl = hm_model_num_layers(cfg);
  if (o->first < 0 || o->last > nl || o->first >= o->last)
    return hm_error(HM_ERR_INVALID_ARG, "stage layers [%d,%d) must lie within [0,%d)", o->first, o->last, nl);
  if (o->B < 1 || o->T < 1 || o->T > cfg->T)
    return hm_error(HM_ERR_INVALID_ARG, "stage micro-batch B=%d T=%d: need B >= 1 and 1 <= T <= %d", o->B, o->T, (int)cfg->T);
  if (o->max_microbatches < 1 || o->max_microbatches > 4096)
    return hm_error(HM_ERR_INVALID_ARG, "stage max_microbatches=%d must be in 1..4096", o->max_microbatches);
  const double widest = cfg->arch == HM_ARCH_LLAMA ? (double)hm_llama_widest(cfg) : (double)(4 * cfg->C);
  if ((double)o->B * o->T * (double)(cfg->V > widest ? cfg->V : widest) > 2147483647.0)
    return hm_error(HM_ERR_INVALID_ARG, "stage micro-batch B*T=%lld is too large for 32-bit kernel indices",
                    (long long)o->B * o->T);
  hm_tp_sizes tp;
  HM_TRY(hm_stage_tp_sizes(cfg, o->tp.size, o->tp.rank, &tp));
  if (tp.size > 1 && !o->tp.allreduce)
    return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): tensor parallelism %d needs an allreduce callback", o->first,
                    o->last, tp.size);
  return HM_OK;
}

// Adds a tensor of full shape (rows, cols); the stage holds this tensor-parallel rank's shard.
void hm_add_tensor(hm_stage *s, const char *name, size_t rows, size_t cols, int decay, double std, float c) {
  int blocks = 1;
  const hm_tp_split split = s->tp.size > 1 ? hm_tp_tensor_split(&s->cfg, name, &blocks) : HM_TP_REPLICATED;
  const size_t numel = hm_tp_shard_numel(rows, cols, split, blocks, s->tp.size, s->tp.rank);
  if (s->tensors) {
    hm_stage_tensor *t = &s->tensors[s->n_tensors];
    hm_strcpy(t->name, sizeof t->name, name);
    t->offset = s->n_params;
    t->numel = numel;
    t->rows = rows, t->cols = cols, t->split = split, t->blocks = blocks;
    t->decay = decay;
    t->init_std = std;
    t->init_const = c;
  }
  s->n_tensors++;
  s->n_params += numel;
}

// Lists the stage's tensors (count only when s->tensors is NULL).
static void hm_list_tensors(hm_stage *s) {
  if (s->cfg.arch == HM_ARCH_LLAMA) {
    hm_llama_list_tensors(s);
    return;
  }
  const size_t C = (size_t)s->cfg.C, V = (size_t)s->cfg.V, T = (size_t)s->cfg.T;
  const double std = 0.02, proj_std = 0.02 / sqrt(2.0 * s->cfg.L);
  s->n_tensors = 0;
  s->n_params = 0;
  s->wte = s->wpe = s->lnfw = s->lnfb = s->block0 = -1;
  if (s->has_embed) {
    s->wte = s->n_tensors;
    hm_add_tensor(s, "wte", V, C, 1, std, 0);
    s->wpe = s->n_tensors;
    hm_add_tensor(s, "wpe", T, C, 1, std, 0);
  }
  if (s->n_blocks > 0) s->block0 = s->n_tensors;
  for (int b = 0; b < s->n_blocks; b++) {
    char name[HM_CKPT_NAME_MAX];
    const size_t rows[BK_COUNT] = {C, C, 3 * C, 3 * C, C, C, C, C, 4 * C, 4 * C, C, C};
    const size_t cols[BK_COUNT] = {1, 1, C, 1, C, 1, 1, 1, C, 1, 4 * C, 1};
    for (int k = 0; k < BK_COUNT; k++) {
      snprintf(name, sizeof name, "h%d.%s", s->first_block + b, hm_block_names[k]);
      int is_w = k == BK_QKVW || k == BK_ATTPROJW || k == BK_FCW || k == BK_FCPROJW;
      int is_ln_w = k == BK_LN1W || k == BK_LN2W;
      double sd = !is_w ? 0.0 : (k == BK_ATTPROJW || k == BK_FCPROJW) ? proj_std : std;
      hm_add_tensor(s, name, rows[k], cols[k], is_w, sd, is_ln_w ? 1.0f : 0.0f);
    }
  }
  if (s->has_head) {
    s->lnfw = s->n_tensors;
    hm_add_tensor(s, "lnf.w", C, 1, 0, 0.0, 1.0f);
    s->lnfb = s->n_tensors;
    hm_add_tensor(s, "lnf.b", C, 1, 0, 0.0, 0.0f);
    if (!s->has_embed) {
      s->wte = s->n_tensors;  // this stage's own copy of the tied embedding
      hm_add_tensor(s, "wte", V, C, 1, std, 0);
    }
  }
}

// Lays out the activations of every slot and the backward scratch (measure when base is NULL).
static void hm_carve_acts(hm_stage *s, hm_carver *c, size_t att_saved) {
  if (s->cfg.arch == HM_ARCH_LLAMA) {
    hm_llama_carve_acts(s, c, att_saved);
    return;
  }
  const size_t es = hm_device_elem_size(s->dev), gs = hm_mx_gemm_in_size(s); // gs: saved GEMM inputs
  const size_t N = (size_t)s->B * s->T, C = (size_t)s->cfg.C, V = (size_t)s->tp.vocab;
  const size_t Cl = (size_t)s->tp.channels, H = (size_t)s->tp.hidden;
  for (int i = 0; i < s->n_mb; i++) {
    hm_mb_acts tmp;
    hm_block_acts btmp;
    hm_mb_acts *a = s->mb ? &s->mb[i] : &tmp;
    a->tokens = s->has_embed ? hm_take(c, N * sizeof(int32_t)) : NULL;
    a->targets = s->has_head ? hm_take(c, N * sizeof(int32_t)) : NULL;
    a->in = s->first > 0 ? hm_take(c, N * C * es) : NULL;
    a->enc = s->has_embed ? hm_take(c, N * C * es) : NULL;
    for (int b = 0; b < s->n_blocks; b++) {
      hm_block_acts *k = s->mb ? &a->blocks[b] : &btmp;
      k->ln1 = hm_take(c, N * C * gs);
      k->ln1_mean = hm_take(c, N * es);
      k->ln1_rstd = hm_take(c, N * es);
      k->qkv = hm_take(c, 3 * N * Cl * es);
      k->atty = hm_take(c, N * Cl * gs);
      k->att_saved = hm_take(c, att_saved * es);
      k->res2 = hm_take(c, N * C * es);
      k->ln2 = hm_take(c, N * C * gs);
      k->ln2_mean = hm_take(c, N * es);
      k->ln2_rstd = hm_take(c, N * es);
      k->fch = hm_take(c, N * H * es);
      k->fch_gelu = hm_take(c, N * H * gs);
      k->res3 = hm_take(c, N * C * es);
    }
    if (s->has_head) {
      a->lnf = hm_take(c, N * C * gs);
      a->lnf_mean = hm_take(c, N * es);
      a->lnf_rstd = hm_take(c, N * es);
      a->logits = hm_take(c, N * V * es);
      a->losses = hm_take(c, N * es);
      a->rowmax = s->tp.size > 1 ? hm_take(c, N * es) : NULL;
      a->ce_stats = s->tp.size > 1 ? hm_take(c, 2 * N * es) : NULL;
    }
  }
}

static void hm_carve_scratch(hm_stage *s, hm_carver *c) {
  if (s->cfg.arch == HM_ARCH_LLAMA) {
    hm_llama_carve_scratch(s, c);
    return;
  }
  const size_t es = hm_device_elem_size(s->dev);
  const size_t N = (size_t)s->B * s->T, C = (size_t)s->cfg.C, H = (size_t)s->tp.hidden;
  const size_t wide = H > 3 * (size_t)s->tp.channels ? H : 3 * (size_t)s->tp.channels;
  s->sA = hm_take(c, N * wide * es);  // d(gelu) (N,H), d(qkv) (N,3C/tp)
  s->sB = hm_take(c, N * (H > C ? H : C) * es);
  s->sD = hm_take(c, N * C * es);
  s->dresid = hm_take(c, N * C * es);
  const int tp_embed = s->tp.size > 1 && s->has_embed;
  s->wte_pad = tp_embed ? hm_take(c, ((size_t)s->tp.vocab + 1) * C * es) : NULL;
  s->wpe_zero = tp_embed ? hm_take(c, (size_t)s->T_max * C * es) : NULL;
}

static void hm_stage_shape(hm_stage *s, const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *o,
                           hm_precision prec) {
  s->bf16 = prec == HM_PREC_BF16_MIXED;
  s->cfg = *cfg;
  s->dev = dev;
  (void)hm_stage_tp_sizes(cfg, o->tp.size, o->tp.rank, &s->tp);  // checked by hm_check_options
  s->tpo = o->tp;
  s->first = o->first, s->last = o->last, s->B = o->B, s->T = o->T, s->n_mb = o->max_microbatches;
  s->T_max = o->T;
  s->has_embed = o->first == 0;
  s->has_head = o->last == cfg->L + 2;
  int lo = o->first < 1 ? 1 : o->first, hi = o->last > cfg->L + 1 ? cfg->L + 1 : o->last;
  s->n_blocks = hi > lo ? hi - lo : 0;
  s->first_block = lo - 1;
}

static void hm_measure(hm_stage *s, hm_stage_memory *m) {
  const size_t es = hm_device_elem_size(s->dev);
  size_t att = s->n_blocks ? hm_mx_attention_saved(s, s->tp.channels, s->tp.heads) : 0;
  hm_carver ca = {NULL, 0}, cs = {NULL, 0};
  hm_stage_memory r;
  memset(&r, 0, sizeof r);
  hm_list_tensors(s);
  r.n_params = s->n_params;
  r.params = r.grads = hm_round(s->n_params * es);
  r.optimizer = 2 * r.params;
  hm_mb_acts *saved = s->mb;
  s->mb = NULL;
  hm_carve_acts(s, &ca, att);
  s->mb = saved;
  hm_carve_scratch(s, &cs);
  r.activations = ca.off;
  r.scratch = cs.off;
  r.weights_bf16 = s->bf16 ? hm_round(s->n_params * 2) : 0;
  r.total = r.params + r.weights_bf16 + r.grads + r.optimizer + r.activations + r.scratch;
  *m = r;
}

// bf16 mixed precision: the device has the kernels; tensor parallelism stays f32 for now.
static hm_status hm_check_precision(hm_device *dev, const hm_stage_options *o, hm_precision prec) {
  if (prec != HM_PREC_FP32 && prec != HM_PREC_BF16_MIXED && prec != HM_PREC_AUTO)
    return hm_error(HM_ERR_UNSUPPORTED, "stage precision \"%s\": a stage trains in fp32 or bf16-mixed",
                    hm_precision_name(prec));
  if (prec != HM_PREC_BF16_MIXED) return HM_OK;
  if (o->tp.size > 1)
    return hm_error(HM_ERR_UNSUPPORTED, "bf16-mixed with tensor parallelism (tp %d) is not implemented; use fp32",
                    o->tp.size);
  if (dev && !hm_device_supports_bf16(dev))
    return hm_error(HM_ERR_UNSUPPORTED, "device %s has no bf16 mixed-precision kernels (cpu and ref have; dtype "
                    "f32 only): use --precision fp32", hm_device_spec(dev));
  return HM_OK;
}

hm_status hm_stage_estimate(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                            hm_stage_memory *out) {
  return hm_stage_estimate_prec(cfg, dev, opt, HM_PREC_FP32, out);
}

hm_status hm_stage_estimate_prec(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                                 hm_precision prec, hm_stage_memory *out) {
  HM_TRY(hm_check_options(cfg, opt));
  HM_TRY(hm_check_precision(dev, opt, prec));
  hm_stage s;
  memset(&s, 0, sizeof s);
  hm_stage_shape(&s, cfg, dev, opt, prec);
  hm_measure(&s, out);
  return HM_OK;
}

static double hm_gib(size_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

hm_status hm_stage_create(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt, hm_stage **out) {
  return hm_stage_create_prec(cfg, dev, opt, HM_PREC_FP32, out);
}

hm_status hm_stage_create_prec(const hm_spec_model_config *cfg, hm_device *dev, const hm_stage_options *opt,
                               hm_precision prec, hm_stage **out) {
  *out = NULL;
  if (!dev) return hm_error(HM_ERR_INVALID_ARG, "stage: device is NULL");
  HM_TRY(hm_check_options(cfg, opt));
  HM_TRY(hm_check_precision(dev, opt, prec));
  hm_stage *s = hm_calloc(1, sizeof *s, "stage");
  if (!s) return HM_ERR_NOMEM;
  hm_stage_shape(s, cfg, dev, opt, prec);
  hm_measure(s, &s->mem);
  size_t total = 0, free_bytes = 0;
  hm_status st = hm_device_mem_info(dev, &total, &free_bytes);
  char cfgs[128];
  if (st == HM_OK && s->mem.total > free_bytes) {
    st = hm_error(HM_ERR_NO_FIT,
                  "model %s layers [%d,%d) with B=%d T=%d needs %.2f GiB on %s (params %.2f, bf16 weights %.2f, "
                  "grads %.2f, AdamW %.2f, activations %.2f for %d micro-batches, scratch %.2f) but %.2f GiB are free",
                  hm_model_config_str(cfg, cfgs, sizeof cfgs), opt->first, opt->last, opt->B, opt->T,
                  hm_gib(s->mem.total), hm_device_spec(dev),
                  hm_gib(s->mem.params), hm_gib(s->mem.weights_bf16), hm_gib(s->mem.grads), hm_gib(s->mem.optimizer),
                  hm_gib(s->mem.activations), opt->max_microbatches, hm_gib(s->mem.scratch), hm_gib(free_bytes));
    free(s);
    return st;
  }
  if (st != HM_OK) {
    free(s);
    return st;
  }
  s->tensors = hm_calloc((size_t)s->n_tensors, sizeof *s->tensors, "stage tensor table");
  s->mb = hm_calloc((size_t)s->n_mb, sizeof *s->mb, "stage micro-batch slots");
  if (s->tp.size > 1 && s->has_embed) s->tok_map = hm_calloc((size_t)s->B * s->T_max, sizeof(int32_t), "token map");
  if (!s->tensors || !s->mb || (s->tp.size > 1 && s->has_embed && !s->tok_map)) {
    hm_stage_destroy(s);
    return HM_ERR_NOMEM;
  }
  hm_list_tensors(s);
  for (int i = 0; i < s->n_mb && s->n_blocks > 0 && s->cfg.arch == HM_ARCH_GPT2; i++) {
    s->mb[i].blocks = hm_calloc((size_t)s->n_blocks, sizeof(hm_block_acts), "stage block activations");
    if (!s->mb[i].blocks) {
      hm_stage_destroy(s);
      return HM_ERR_NOMEM;
    }
  }
  if (s->cfg.arch == HM_ARCH_LLAMA && (st = hm_llama_alloc_slots(s)) != HM_OK) {
    hm_stage_destroy(s);
    return st;
  }
  const size_t pb = s->mem.params;
  st = hm_device_alloc(dev, &s->params, pb, "parameters");
  if (st == HM_OK) st = hm_device_alloc(dev, &s->grads, pb, "gradients");
  if (st == HM_OK) st = hm_device_alloc(dev, &s->m, pb, "AdamW first moments");
  if (st == HM_OK) st = hm_device_alloc(dev, &s->v, pb, "AdamW second moments");
  if (st == HM_OK) st = hm_device_alloc(dev, &s->acts, s->mem.activations, "activations");
  if (st == HM_OK) st = hm_device_alloc(dev, &s->scratch, s->mem.scratch, "backward scratch");
  if (st == HM_OK && s->bf16) st = hm_device_alloc(dev, &s->w16, s->mem.weights_bf16, "bf16 weights");
  s->w16_stale = 1;
  if (st == HM_OK) st = hm_device_zero(dev, s->params, pb);
  if (st == HM_OK) st = hm_device_zero(dev, s->grads, pb);
  if (st == HM_OK) st = hm_device_zero(dev, s->m, pb);
  if (st == HM_OK) st = hm_device_zero(dev, s->v, pb);
  if (st != HM_OK) {
    hm_stage_destroy(s);
    return hm_error_context(st, "stage [%d,%d) on %s: ", opt->first, opt->last, hm_device_spec(dev));
  }
  size_t att = s->n_blocks ? hm_mx_attention_saved(s, s->tp.channels, s->tp.heads) : 0;
  hm_carver ca = {s->acts, 0}, cs = {s->scratch, 0};
  hm_carve_acts(s, &ca, att);
  hm_carve_scratch(s, &cs);
  if (s->wte_pad) st = hm_device_zero(dev, s->wte_pad, ((size_t)s->tp.vocab + 1) * s->cfg.C * hm_device_elem_size(dev));
  if (st == HM_OK && s->wpe_zero) st = hm_device_zero(dev, s->wpe_zero, (size_t)s->T_max * s->cfg.C * hm_device_elem_size(dev));
  if (st != HM_OK) {
    hm_stage_destroy(s);
    return st;
  }
  *out = s;
  return HM_OK;
}

void hm_stage_destroy(hm_stage *s) {
  if (!s) return;
  hm_device_free(s->dev, s->params);
  hm_device_free(s->dev, s->grads);
  hm_device_free(s->dev, s->m);
  hm_device_free(s->dev, s->v);
  hm_device_free(s->dev, s->acts);
  hm_device_free(s->dev, s->scratch);
  if (s->w16) hm_device_free(s->dev, s->w16);
  if (s->mb)
    for (int i = 0; i < s->n_mb; i++) free(s->mb[i].blocks), free(s->mb[i].lblocks);
  free(s->mb);
  free(s->tok_map);
  free(s->tensors);
  free(s);
}

// ---- parameters -------------------------------------------------------------------------------

static uint64_t hm_name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

// The full tensor's values, which depend only on (seed, name): every split into stages and
// tensor-parallel shards initializes identically.
static void hm_init_full(const hm_stage_tensor *t, uint64_t seed, float *buf) {
  const size_t n = t->rows * t->cols;
  uint64_t state = hm_splitmix64(seed ^ hm_name_hash(t->name));
  for (size_t j = 0; j < n; j++) {
    if (t->init_std == 0.0) {
      buf[j] = t->init_const;
      continue;
    }
    // Box-Muller on two uniforms in (0,1] from the splitmix64 stream
    double u1 = ((double)(hm_splitmix64(state++) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(hm_splitmix64(state++) >> 11) * 0x1.0p-53;
    buf[j] = (float)(t->init_std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
  }
}

hm_status hm_stage_init_params(hm_stage *s, uint64_t seed) {
  size_t maxn = 0;
  for (int i = 0; i < s->n_tensors; i++) {
    size_t n = s->tensors[i].rows * s->tensors[i].cols;
    maxn = n > maxn ? n : maxn;
  }
  float *buf = hm_malloc(2 * maxn * sizeof(float), "parameter init buffer");
  if (!buf) return HM_ERR_NOMEM;
  float *shard = buf + maxn;
  hm_status st = HM_OK;
  s->w16_stale = 1;
  for (int i = 0; i < s->n_tensors && st == HM_OK; i++) {
    const hm_stage_tensor *t = &s->tensors[i];
    hm_init_full(t, seed, buf);
    const float *src = buf;
    if (t->split != HM_TP_REPLICATED) {
      hm_tp_copy(buf, shard, t->rows, t->cols, t->split, t->blocks, s->tp.size, s->tp.rank, 1);
      src = shard;
    }
    st = hm_device_copy_from_f32(s->dev, hm_device_offset(s->dev, s->params, t->offset), src, t->numel);
  }
  free(buf);
  return st;
}

// ---- forward ----------------------------------------------------------------------------------

// Megatron's g (forward) and f (backward) operators: the sum over the tensor-parallel ranks.
hm_status hm_tp_allreduce(hm_stage *s, void *buf, size_t n, hm_tp_op op) {
  if (s->tp.size <= 1) return HM_OK;
  hm_status st = s->tpo.allreduce(s->tpo.ctx, buf, n, op);
  if (st != HM_OK)
    return hm_error_context(st, "stage [%d,%d) tensor-parallel rank %d of %d: ", s->first, s->last, s->tp.rank,
                            s->tp.size);
  return HM_OK;
}

// A row-parallel layer's bias is added once, by rank 0, before the allreduce of the output.
static const void *hm_row_bias(hm_stage *s, int i) { return s->tp.rank == 0 ? P(s, i) : NULL; }

static hm_status hm_block_forward(hm_stage *s, int b, hm_block_acts *k, const void *x) {
  hm_device *d = s->dev;
  const int B = s->B, T = s->T, C = s->cfg.C, N = B * T;
  const int Cl = s->tp.channels, NHl = s->tp.heads, H = s->tp.hidden;
  const size_t NC = (size_t)N * C;
  const int w = s->block0 + b * BK_COUNT;
  void *proj = s->sD;  // attention / MLP projection before the residual add
  (void)B, (void)T;
  void *r = hm_mx_result(s, k->ln1); // bf16: f32 results in scratch, rounded into the saved GEMM input
  HM_TRY(hm_dev_layernorm_forward(d, r, k->ln1_mean, k->ln1_rstd, x, P(s, w + BK_LN1W), P(s, w + BK_LN1B), N, C));
  HM_TRY(hm_mx_gemm_input(s, k->ln1, r, NC));
  HM_TRY(hm_mx_matmul_forward(s, k->qkv, k->ln1, w + BK_QKVW, P(s, w + BK_QKVB), N, C, 3 * Cl));
  HM_TRY(hm_mx_attention_forward(s, r = hm_mx_result(s, k->atty), k->att_saved, k->qkv, Cl, NHl));
  HM_TRY(hm_mx_gemm_input(s, k->atty, r, (size_t)N * Cl));
  HM_TRY(hm_mx_matmul_forward(s, proj, k->atty, w + BK_ATTPROJW, hm_row_bias(s, w + BK_ATTPROJB), N, Cl, C));
  HM_TRY(hm_tp_allreduce(s, proj, NC, HM_TP_SUM));
  HM_TRY(hm_dev_residual_forward(d, k->res2, x, proj, NC));
  r = hm_mx_result(s, k->ln2);
  HM_TRY(hm_dev_layernorm_forward(d, r, k->ln2_mean, k->ln2_rstd, k->res2, P(s, w + BK_LN2W), P(s, w + BK_LN2B), N, C));
  HM_TRY(hm_mx_gemm_input(s, k->ln2, r, NC));
  HM_TRY(hm_mx_matmul_forward(s, k->fch, k->ln2, w + BK_FCW, P(s, w + BK_FCB), N, C, H));
  HM_TRY(hm_dev_gelu_forward(d, r = hm_mx_result(s, k->fch_gelu), k->fch, (size_t)N * H));
  HM_TRY(hm_mx_gemm_input(s, k->fch_gelu, r, (size_t)N * H));
  HM_TRY(hm_mx_matmul_forward(s, proj, k->fch_gelu, w + BK_FCPROJW, hm_row_bias(s, w + BK_FCPROJB), N, H, C));
  HM_TRY(hm_tp_allreduce(s, proj, NC, HM_TP_SUM));
  HM_TRY(hm_dev_residual_forward(d, k->res3, k->res2, proj, NC));
  return HM_OK;
}

// The activation entering block b (or the head when b == n_blocks).
static const void *hm_block_input(hm_stage *s, hm_mb_acts *a, int b) {
  if (b > 0) return a->blocks[b - 1].res3;
  return s->has_embed ? a->enc : a->in;
}

static hm_status hm_check_mb(const hm_stage *s, int mb) {
  if (mb < 0 || mb >= s->n_mb)
    return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): micro-batch slot %d outside 0..%d", s->first, s->last, mb, s->n_mb - 1);
  return HM_OK;
}

// The vocabulary-parallel embedding: each rank holds rows [vocab_lo, vocab_lo + vocab) of wte
// (V/tp rows, one more on some ranks when tp does not divide V);
// tokens outside them read a zero row appended to a copy of the shard, the position table `pos`
// is added (GPT-2: wpe by rank 0 only, zeros elsewhere), and the allreduce sums the parts (each
// position gets one nonzero wte row: exact).
hm_status hm_tp_embed_forward(hm_stage *s, hm_mb_acts *a, const int32_t *tokens, const void *pos) {
  hm_device *d = s->dev;
  const int B = s->B, T = s->T, C = s->cfg.C, N = B * T;
  const int lo = s->tp.vocab_lo, Vl = s->tp.vocab;
  for (int i = 0; i < N; i++) s->tok_map[i] = tokens[i] >= lo && tokens[i] < lo + Vl ? tokens[i] - lo : Vl;
  HM_TRY(hm_device_copy_h2d(d, a->tokens, s->tok_map, (size_t)N * sizeof(int32_t)));
  const size_t es = hm_device_elem_size(d);
  HM_TRY(hm_device_copy_d2d(d, s->wte_pad, P(s, s->wte), (size_t)Vl * C * es));
  HM_TRY(hm_device_zero(d, hm_device_offset(d, s->wte_pad, (size_t)Vl * C), (size_t)C * es));  // backward used it
  HM_TRY(hm_dev_encoder_forward(d, a->enc, a->tokens, s->wte_pad, pos, B, T, C));
  return hm_tp_allreduce(s, a->enc, (size_t)N * C, HM_TP_SUM);
}

static hm_status hm_embed_forward(hm_stage *s, hm_mb_acts *a, const int32_t *tokens) {
  hm_device *d = s->dev;
  const int B = s->B, T = s->T, C = s->cfg.C, N = B * T;
  if (s->tp.size > 1) return hm_tp_embed_forward(s, a, tokens, s->tp.rank == 0 ? P(s, s->wpe) : s->wpe_zero);
  HM_TRY(hm_device_copy_h2d(d, a->tokens, tokens, (size_t)N * sizeof(int32_t)));
  return hm_dev_encoder_forward(d, a->enc, a->tokens, P(s, s->wte), P(s, s->wpe), B, T, C);
}

// Reads n device values (the device dtype) into host doubles.
static hm_status hm_read_values(hm_stage *s, double *out, const void *src, size_t n) {
  const size_t es = hm_device_elem_size(s->dev);
  void *tmp = hm_malloc(n * es, "loss statistics");
  if (!tmp) return HM_ERR_NOMEM;
  hm_status st = hm_device_copy_d2h(s->dev, tmp, src, n * es);
  for (size_t i = 0; st == HM_OK && i < n; i++)
    out[i] = es == sizeof(double) ? ((const double *)tmp)[i] : (double)((const float *)tmp)[i];
  free(tmp);
  return st;
}

// Vocabulary-parallel cross-entropy (forward): allreduce of the row maxima, then of the sums of
// exponentials and the target logits; loss_n = log(sum) + max - target logit.
hm_status hm_head_tp_forward(hm_stage *s, hm_mb_acts *a, const int32_t *targets, float *loss) {
  hm_device *d = s->dev;
  const int N = s->B * s->T, Vl = s->tp.vocab;
  HM_TRY(hm_dev_rowmax(d, a->rowmax, a->logits, N, Vl));
  HM_TRY(hm_tp_allreduce(s, a->rowmax, (size_t)N, HM_TP_MAX));
  HM_TRY(hm_dev_crossentropy_shard_forward(d, a->ce_stats, a->logits, a->rowmax, a->targets, s->tp.vocab_lo, N, Vl));
  HM_TRY(hm_tp_allreduce(s, a->ce_stats, 2 * (size_t)N, HM_TP_SUM));
  if (!loss) return HM_OK;
  double *h = hm_malloc(3 * (size_t)N * sizeof(double), "loss statistics");
  if (!h) return HM_ERR_NOMEM;
  hm_status st = hm_read_values(s, h, a->rowmax, (size_t)N);
  if (st == HM_OK) st = hm_read_values(s, h + N, a->ce_stats, 2 * (size_t)N);
  double sum = 0;
  for (int i = 0; i < N; i++)
    if (targets[i] >= 0) sum += log(h[N + i]) + h[i] - h[2 * N + i];
  free(h);
  *loss = (float)(sum / N);
  return st;
}

hm_status hm_stage_forward(hm_stage *s, int mb, const int32_t *tokens, const void *x_in, const int32_t *targets,
                           float *loss) {
  HM_TRY(hm_check_mb(s, mb));
  HM_TRY(hm_mx_refresh_weights(s));
  if (s->cfg.arch == HM_ARCH_LLAMA) return hm_llama_forward(s, mb, tokens, x_in, targets, loss);
  hm_device *d = s->dev;
  hm_mb_acts *a = &s->mb[mb];
  const int B = s->B, T = s->T, C = s->cfg.C, V = s->cfg.V, N = B * T;
  const size_t es = hm_device_elem_size(d);
  if (s->has_embed) {
    if (!tokens) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d) holds the embedding: tokens are required", s->first, s->last);
    for (int i = 0; i < N; i++)
      if (tokens[i] < 0 || tokens[i] >= V)
        return hm_error(HM_ERR_INVALID_ARG, "token %d at position %d is outside the vocabulary 0..%d", tokens[i], i, V - 1);
    HM_TRY(hm_embed_forward(s, a, tokens));
  } else {
    if (!x_in) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): input activations are required", s->first, s->last);
    HM_TRY(hm_device_copy_d2d(d, a->in, x_in, (size_t)N * C * es));
  }
  for (int b = 0; b < s->n_blocks; b++) HM_TRY(hm_block_forward(s, b, &a->blocks[b], hm_block_input(s, a, b)));
  a->has_targets = 0;
  if (!s->has_head) return HM_OK;
  const void *x = hm_block_input(s, a, s->n_blocks);
  void *r = hm_mx_result(s, a->lnf);
  HM_TRY(hm_dev_layernorm_forward(d, r, a->lnf_mean, a->lnf_rstd, x, P(s, s->lnfw), P(s, s->lnfb), N, C));
  HM_TRY(hm_mx_gemm_input(s, a->lnf, r, (size_t)N * C));
  HM_TRY(hm_mx_matmul_forward(s, a->logits, a->lnf, s->wte, NULL, N, C, s->tp.vocab));
  if (!targets) return HM_OK;
  for (int i = 0; i < N; i++)
    if (targets[i] >= V)
      return hm_error(HM_ERR_INVALID_ARG, "target %d at position %d is outside the vocabulary 0..%d", targets[i], i, V - 1);
  HM_TRY(hm_device_copy_h2d(d, a->targets, targets, (size_t)N * sizeof(int32_t)));
  a->has_targets = 1;
  if (s->tp.size > 1) return hm_head_tp_forward(s, a, targets, loss);
  HM_TRY(hm_dev_crossentropy_forward_backward(d, a->losses, NULL, a->logits, a->targets, 0.0, N, V, V));
  if (loss) {
    double sum = 0;
    HM_TRY(hm_dev_sum(d, &sum, a->losses, (size_t)N));
    *loss = (float)(sum / N);
  }
  return HM_OK;
}

void *hm_stage_output(hm_stage *s, int mb) {
  if (mb < 0 || mb >= s->n_mb) return NULL;
  if (s->cfg.arch == HM_ARCH_LLAMA) return hm_llama_output(s, mb);
  hm_mb_acts *a = &s->mb[mb];
  if (s->has_head) return a->logits;
  return (void *)hm_block_input(s, a, s->n_blocks);
}

// ---- backward ---------------------------------------------------------------------------------

// s->dresid holds d(block output) on entry and d(block input) on return (updated in place:
// the residual stream's gradient passes through both residual adds unchanged).
static hm_status hm_block_backward(hm_stage *s, int b, hm_block_acts *k, const void *x) {
  hm_device *d = s->dev;
  const int B = s->B, T = s->T, C = s->cfg.C, N = B * T;
  const int Cl = s->tp.channels, NHl = s->tp.heads, H = s->tp.hidden;
  const size_t NC = (size_t)N * C, NH = (size_t)N * H, es = hm_device_elem_size(d);
  const int w = s->block0 + b * BK_COUNT;
  void *dres = s->dresid, *dgelu = s->sA, *dfch = s->sB, *dln = s->sD;
  HM_TRY(hm_device_zero(d, dgelu, NH * es));
  HM_TRY(hm_mx_matmul_backward(s, dgelu, G(s, w + BK_FCPROJB), dres, k->fch_gelu, w + BK_FCPROJW, N, H, C));
  HM_TRY(hm_device_zero(d, dfch, NH * es));
  HM_TRY(hm_dev_gelu_backward(d, dfch, k->fch, dgelu, NH));
  HM_TRY(hm_device_zero(d, dln, NC * es));
  HM_TRY(hm_mx_matmul_backward(s, dln, G(s, w + BK_FCB), dfch, k->ln2, w + BK_FCW, N, C, H));
  HM_TRY(hm_tp_allreduce(s, dln, NC, HM_TP_SUM));
  HM_TRY(hm_dev_layernorm_backward(d, dres, G(s, w + BK_LN2W), G(s, w + BK_LN2B), dln, k->res2, P(s, w + BK_LN2W),
                                   k->ln2_mean, k->ln2_rstd, N, C));
  void *datty = s->sD, *dqkv = s->sA, *dln1 = s->sB;
  HM_TRY(hm_device_zero(d, datty, (size_t)N * Cl * es));
  HM_TRY(hm_mx_matmul_backward(s, datty, G(s, w + BK_ATTPROJB), dres, k->atty, w + BK_ATTPROJW, N, Cl, C));
  HM_TRY(hm_device_zero(d, dqkv, 3 * (size_t)N * Cl * es));
  HM_TRY(hm_mx_attention_backward(s, dqkv, datty, k->qkv, k->att_saved, Cl, NHl));
  HM_TRY(hm_device_zero(d, dln1, NC * es));
  HM_TRY(hm_mx_matmul_backward(s, dln1, G(s, w + BK_QKVB), dqkv, k->ln1, w + BK_QKVW, N, C, 3 * Cl));
  HM_TRY(hm_tp_allreduce(s, dln1, NC, HM_TP_SUM));
  HM_TRY(hm_dev_layernorm_backward(d, dres, G(s, w + BK_LN1W), G(s, w + BK_LN1B), dln1, x, P(s, w + BK_LN1W),
                                   k->ln1_mean, k->ln1_rstd, N, C));
  return HM_OK;
}

// The vocabulary-parallel embedding's backward: the scatter goes into the padded copy, whose
// first V/tp rows are this rank's wte gradient (the zero row takes the other ranks' tokens); the
// position gradient is added to dpos.
hm_status hm_tp_embed_backward(hm_stage *s, hm_mb_acts *a, void *dpos) {
  hm_device *d = s->dev;
  const int B = s->B, T = s->T, C = s->cfg.C;
  const size_t Vl = (size_t)s->tp.vocab;
  HM_TRY(hm_device_zero(d, s->wte_pad, (Vl + 1) * C * hm_device_elem_size(d)));
  HM_TRY(hm_dev_encoder_backward(d, s->wte_pad, dpos, s->dresid, a->tokens, B, T, C));
  return hm_dev_residual_backward(d, G(s, s->wte), NULL, s->wte_pad, Vl * C);
}

static hm_status hm_embed_backward(hm_stage *s, hm_mb_acts *a) {
  if (s->tp.size > 1) return hm_tp_embed_backward(s, a, G(s, s->wpe));
  return hm_dev_encoder_backward(s->dev, G(s, s->wte), G(s, s->wpe), s->dresid, a->tokens, s->B, s->T, s->cfg.C);
}

hm_status hm_stage_backward(hm_stage *s, int mb, const void *dout, float loss_weight) {
  HM_TRY(hm_check_mb(s, mb));
  if (s->cfg.arch == HM_ARCH_LLAMA) return hm_llama_backward(s, mb, dout, loss_weight);
  hm_device *d = s->dev;
  hm_mb_acts *a = &s->mb[mb];
  const int B = s->B, T = s->T, C = s->cfg.C, V = s->cfg.V, N = B * T;
  const size_t NC = (size_t)N * C, es = hm_device_elem_size(d);
  if (s->has_head) {
    if (!a->has_targets)
      return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): backward of slot %d needs a forward with targets first",
                      s->first, s->last, mb);
    a->has_targets = 0;  // dlogits overwrite the logits: one backward per forward
    // the mean over N tokens, weighted: d(loss_weight * mean loss)/d loss_i = loss_weight / N
    if (s->tp.size > 1)
      HM_TRY(hm_dev_crossentropy_shard_backward(d, a->logits, a->logits, a->rowmax, a->ce_stats, a->targets,
                                                s->tp.vocab_lo, (double)loss_weight / N, N, s->tp.vocab));
    else
      HM_TRY(hm_dev_crossentropy_forward_backward(d, a->losses, a->logits, a->logits, a->targets,
                                                  (double)loss_weight / N, N, V, V));
    void *dlnf = s->sD;
    HM_TRY(hm_device_zero(d, dlnf, NC * es));
    HM_TRY(hm_mx_matmul_backward(s, dlnf, NULL, a->logits, a->lnf, s->wte, N, C, s->tp.vocab));
    HM_TRY(hm_tp_allreduce(s, dlnf, NC, HM_TP_SUM));
    HM_TRY(hm_device_zero(d, s->dresid, NC * es));
    HM_TRY(hm_dev_layernorm_backward(d, s->dresid, G(s, s->lnfw), G(s, s->lnfb), dlnf, hm_block_input(s, a, s->n_blocks),
                                     P(s, s->lnfw), a->lnf_mean, a->lnf_rstd, N, C));
    HM_TRY(hm_stage_layer_done(s, (int)s->cfg.L + 1));
  } else {
    if (!dout) return hm_error(HM_ERR_INVALID_ARG, "stage [%d,%d): backward needs the output gradient", s->first, s->last);
    HM_TRY(hm_device_copy_d2d(d, s->dresid, dout, NC * es));
  }
  for (int b = s->n_blocks - 1; b >= 0; b--) {
    HM_TRY(hm_block_backward(s, b, &a->blocks[b], hm_block_input(s, a, b)));
    HM_TRY(hm_stage_layer_done(s, s->first_block + b + 1));
  }
  if (!s->has_embed) return HM_OK;
  HM_TRY(hm_embed_backward(s, a));
  return hm_stage_layer_done(s, 0);
}

void hm_stage_set_grad_hook(hm_stage *s, hm_stage_grad_hook fn, void *user) {
  if (!s) return;
  s->grad_hook = fn;
  s->grad_user = fn ? user : NULL;
}

void *hm_stage_dinput(hm_stage *s) { return s->first > 0 ? s->dresid : NULL; }

// ---- gradients and optimizer ------------------------------------------------------------------

hm_status hm_stage_set_seq_len(hm_stage *s, int T) {
  if (T < 1 || T > s->T_max) return hm_error(HM_ERR_INVALID_ARG, "sequence length %d outside 1..%d", T, s->T_max);
  s->T = T;
  return HM_OK;
}

hm_status hm_stage_zero_grad(hm_stage *s) { return hm_device_zero(s->dev, s->grads, s->n_params * hm_device_elem_size(s->dev)); }
size_t hm_stage_num_params(const hm_stage *s) { return s->n_params; }
void *hm_stage_params(hm_stage *s) {
  s->w16_stale = 1; /* the caller may write them */
  return s->params;
}
void *hm_stage_grads(hm_stage *s) { return s->grads; }
void *hm_stage_adam_m(hm_stage *s) { return s->m; }
void *hm_stage_adam_v(hm_stage *s) { return s->v; }

void *hm_stage_tied_grad(hm_stage *s, size_t *n) {
  if (s->wte < 0 || !s->cfg.tied_embeddings) {
    if (n) *n = 0;
    return NULL;
  }
  if (n) *n = s->tensors[s->wte].numel;
  return G(s, s->wte);
}

hm_status hm_stage_grad_sumsq(hm_stage *s, double *out) {
  double total = 0;
  for (int i = 0; i < s->n_tensors; i++) {
    if (i == s->wte && !s->has_embed && s->cfg.tied_embeddings) continue;  // the head's copy: counted by the first stage
    if (s->tp.rank > 0 && s->tensors[i].split == HM_TP_REPLICATED) continue;  // counted by tp rank 0
    double part = 0;
    HM_TRY(hm_dev_sumsq(s->dev, &part, G(s, i), s->tensors[i].numel));
    total += part;
  }
  *out = total;
  return HM_OK;
}

float hm_grad_clip_scale(double total_sumsq, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  double norm = sqrt(total_sumsq);
  return norm > max_norm ? (float)(max_norm / norm) : 1.0f;
}

hm_status hm_stage_adamw(hm_stage *s, const hm_adamw *o, int t, float grad_scale) {
  if (t < 1) return hm_error(HM_ERR_INVALID_ARG, "AdamW step %d must be >= 1", t);
  hm_device *d = s->dev;
  s->w16_stale = 1; /* the bf16 copy is remade by the next forward */
  // consecutive tensors with the same decay setting go in one call
  int i = 0;
  while (i < s->n_tensors) {
    int j = i;
    while (j + 1 < s->n_tensors && s->tensors[j + 1].decay == s->tensors[i].decay) j++;
    size_t off = s->tensors[i].offset, n = s->tensors[j].offset + s->tensors[j].numel - off;
    HM_TRY(hm_dev_adamw_update(d, hm_device_offset(d, s->params, off), hm_device_offset(d, s->grads, off),
                               hm_device_offset(d, s->m, off), hm_device_offset(d, s->v, off), n, o->lr, o->beta1,
                               o->beta2, o->eps, s->tensors[i].decay ? o->weight_decay : 0.0, grad_scale, t));
    i = j + 1;
  }
  return HM_OK;
}

// ---- tensor table -----------------------------------------------------------------------------

int hm_stage_num_tensors(const hm_stage *s) { return s->n_tensors; }
const char *hm_stage_tensor_name(const hm_stage *s, int i) { return s->tensors[i].name; }
size_t hm_stage_tensor_offset(const hm_stage *s, int i) { return s->tensors[i].offset; }
size_t hm_stage_tensor_numel(const hm_stage *s, int i) { return s->tensors[i].numel; }
void hm_stage_tensor_split(const hm_stage *s, int i, hm_tensor_split *out) {
  const hm_stage_tensor *t = &s->tensors[i];
  *out = (hm_tensor_split){t->rows, t->cols, (int)t->split, t->blocks};
}

int hm_stage_tensor_layer(const hm_stage *s, int i) {
  const char *name = s->tensors[i].name;
  if (name[0] == 'h') return atoi(name + 1) + 1;               // "h<block>."
  if (i == s->wte || i == s->wpe) return s->has_embed ? 0 : (int)s->cfg.L + 1;  // the head's tied copy
  return (int)s->cfg.L + 1;                                   // final norm, untied output embedding
}
int hm_stage_find_tensor(const hm_stage *s, const char *name) {
  for (int i = 0; i < s->n_tensors; i++)
    if (strcmp(s->tensors[i].name, name) == 0) return i;
  return -1;
}

// ---- checkpoints ------------------------------------------------------------------------------

static const char *const hm_ckpt_kinds[3] = {"param", "adam_m", "adam_v"};

static void *hm_stage_buffer(hm_stage *s, int kind) {
  if (kind == 0) s->w16_stale = 1; /* loading writes them */
  return kind == 0 ? s->params : kind == 1 ? s->m : s->v;
}

hm_status hm_stage_save(hm_stage *s, const char *path, const hm_ckpt_meta *meta) {
  hm_ckpt_meta m = *meta;
  m.config = s->cfg;
  m.layer_first = s->first;
  m.layer_last = s->last;
  m.tp_rank = s->tp.rank;
  m.tp_size = s->tp.size;
  const size_t es = hm_device_elem_size(s->dev) == 8 ? 8 : 4;  // an f64 stage keeps its exact state
  m.elem_size = (int)es;
  const int n = 3 * s->n_tensors;
  hm_ckpt_tensor *ts = hm_calloc((size_t)n, sizeof *ts, "checkpoint tensor list");
  char *host = hm_malloc(3 * s->n_params * es, "checkpoint host copy");
  if (!ts || !host) {
    free(ts);
    free(host);
    return HM_ERR_NOMEM;
  }
  hm_status st = HM_OK;
  for (int k = 0; k < 3 && st == HM_OK; k++) {
    char *h = host + (size_t)k * s->n_params * es;
    st = es == 8 ? hm_device_copy_d2h(s->dev, h, hm_stage_buffer(s, k), s->n_params * es)
                 : hm_device_copy_to_f32(s->dev, (float *)(void *)h, hm_stage_buffer(s, k), s->n_params);
    for (int i = 0; i < s->n_tensors; i++) {
      hm_ckpt_tensor *t = &ts[k * s->n_tensors + i];
      char full[HM_CKPT_NAME_MAX + 16];  // kind/name; stage tensor names are far shorter than the limit
      snprintf(full, sizeof full, "%s/%s", hm_ckpt_kinds[k], s->tensors[i].name);
      hm_strcpy(t->name, sizeof t->name, full);
      t->numel = s->tensors[i].numel;
      t->data = (float *)(void *)(h + s->tensors[i].offset * es);  // doubles behind the pointer for es 8
    }
  }
  if (st == HM_OK) st = hm_ckpt_write(path, &m, ts, n);
  free(ts);
  free(host);
  return st;
}

// Tensor i of buffer kind k from a checkpoint's data (file_es bytes per element, converted to the
// device's dtype): whole (split_file) or this rank's shard of it.
static hm_status hm_load_tensor(hm_stage *s, int k, int i, void *data, int file_es, int split_file, void *shard) {
  const hm_stage_tensor *t = &s->tensors[i];
  if (!split_file && t->split != HM_TP_REPLICATED) {
    hm_tp_copy_bytes(data, shard, t->rows, t->cols, (size_t)file_es, t->split, t->blocks, s->tp.size, s->tp.rank, 1);
    data = shard;
  }
  return hm_put_file_values(s->dev, hm_device_offset(s->dev, hm_stage_buffer(s, k), t->offset), data, t->numel, file_es);
}

hm_status hm_stage_load(hm_stage *s, const char *path, hm_ckpt_meta *meta) {
  hm_ckpt ck;
  HM_TRY(hm_ckpt_read(path, &ck));
  const hm_spec_model_config *c = &ck.meta.config;
  hm_status st = HM_OK;
  char a[128], b[128];
  if (!hm_model_config_same(c, &s->cfg))
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s holds model %s, this run is %s", path,
                  hm_model_config_str(c, a, sizeof a), hm_model_config_str(&s->cfg, b, sizeof b));
  else if (ck.meta.layer_first != s->first || ck.meta.layer_last != s->last)
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s holds layers [%d,%d), this stage is [%d,%d)", path,
                  ck.meta.layer_first, ck.meta.layer_last, s->first, s->last);
  else if (ck.meta.tp_size > 1 && (ck.meta.tp_size != s->tp.size || ck.meta.tp_rank != s->tp.rank))
    st = hm_error(HM_ERR_INVALID_ARG, "checkpoint %s holds tensor-parallel rank %d of %d, this stage is rank %d of %d%s",
                  path, ck.meta.tp_rank, ck.meta.tp_size > 1 ? ck.meta.tp_size : 1, s->tp.rank, s->tp.size,
                  ck.meta.tp_size > 1 ? " (hm_ckpt_merge_tp makes the unsplit model)" : "");
  // an unsplit file into a tensor-parallel rank: cut each tensor's shard out
  const int split_file = ck.meta.tp_size > 1 || s->tp.size <= 1;
  const int file_es = ck.meta.elem_size == 8 ? 8 : 4;
  void *shard = NULL;
  if (st == HM_OK && !split_file) {
    size_t most = 0;
    for (int i = 0; i < s->n_tensors; i++) most = s->tensors[i].numel > most ? s->tensors[i].numel : most;
    shard = hm_malloc(most * (size_t)file_es, "checkpoint shard");
    if (!shard) st = HM_ERR_NOMEM;
  }
  for (int k = 0; k < 3 && st == HM_OK; k++)
    for (int i = 0; i < s->n_tensors && st == HM_OK; i++) {
      char name[HM_CKPT_NAME_MAX + 8];
      snprintf(name, sizeof name, "%s/%s", hm_ckpt_kinds[k], s->tensors[i].name);
      const hm_ckpt_tensor *t = hm_ckpt_find(&ck, name);
      if (!t)
        st = hm_error(HM_ERR_CORRUPT, "checkpoint %s: tensor '%s' is missing", path, name);
      else if (t->numel != (split_file ? s->tensors[i].numel : s->tensors[i].rows * s->tensors[i].cols))
        st = hm_error(HM_ERR_CORRUPT, "checkpoint %s: tensor '%s' has %llu elements, expected %zu", path, name,
                      (unsigned long long)t->numel, split_file ? s->tensors[i].numel : s->tensors[i].rows * s->tensors[i].cols);
      else
        st = hm_load_tensor(s, k, i, t->data, file_es, split_file, shard);
    }
  if (st == HM_OK && meta) *meta = ck.meta;
  free(shard);
  hm_ckpt_free(&ck);
  return st;
}
