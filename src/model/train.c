/* Single-process training loop (one device, one stage with every layer) and text sampling.
 * The loop: seeded batches -> forward/backward per micro-batch -> global-norm clip -> AdamW with
 * warm-up + cosine LR; periodic validation, metrics JSON lines and atomic checkpoints. Resume
 * restores params, moments, step and data position, so it continues bitwise. Not here: the
 * multi-worker pipeline (src/runtime), printing (the CLI's on_progress callback does that). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hetmix/device.h"
#include "hetmix/model.h"
#include "model/runbook.h"
#include "util/files.h"
#include "util/util.h"

void hm_train_defaults(hm_train_options *o) {
  memset(o, 0, sizeof *o);
  o->device = "cpu";
  hm_model_config_lookup("gpt-mini", &o->config);
  hm_strcpy(o->model_name, sizeof o->model_name, "gpt-mini");
  o->data_dir = "data";
  o->val_fraction = 0.05;
  o->steps = 1000;
  o->batch = 8;
  o->grad_accum = 1;
  o->lr = 1e-3f;
  o->min_lr_frac = 0.1f;
  o->warmup = 100;
  o->beta1 = 0.9f, o->beta2 = 0.95f, o->eps = 1e-8f, o->weight_decay = 0.1f, o->grad_clip = 1.0f;
  o->seed = 1337;
  o->eval_batches = 8;
  o->keep = 3;
  o->precision = HM_PREC_FP32;
}

float hm_train_lr_at(const hm_train_options *o, int step /* 1-based */) {
  int warmup = o->warmup < o->steps / 10 ? o->warmup : o->steps / 10;
  if (step <= warmup) return o->lr * (float)step / (float)warmup;
  double progress = (double)(step - warmup) / (double)(o->steps - warmup > 0 ? o->steps - warmup : 1);
  if (progress > 1.0) progress = 1.0;
  double min_lr = o->lr * o->min_lr_frac;
  return (float)(min_lr + 0.5 * (o->lr - min_lr) * (1.0 + cos(M_PI * progress)));
}

hm_status hm_resolve_checkpoint(const char *arg, char *path, size_t cap) {
  struct stat sb;
  if (stat(arg, &sb) != 0) return hm_error(HM_ERR_NOT_FOUND, "checkpoint %s: %s", arg, strerror(errno));
  if (!S_ISDIR(sb.st_mode)) {
    if (hm_strcpy(path, cap, arg) != 0) return hm_error(HM_ERR_INVALID_ARG, "checkpoint path too long: %s", arg);
    return HM_OK;
  }
  char latest[4200], name[256];
  snprintf(latest, sizeof latest, "%s/latest", arg);
  FILE *f = fopen(latest, "r");
  if (!f) return hm_error(HM_ERR_NOT_FOUND, "%s holds no checkpoint (no %s)", arg, latest);
  int ok = fgets(name, sizeof name, f) != NULL;
  fclose(f);
  name[strcspn(name, "\r\n")] = '\0';
  if (!ok || !name[0] || strchr(name, '/')) return hm_error(HM_ERR_CORRUPT, "%s does not name a checkpoint file", latest);
  if (snprintf(path, cap, "%s/%s", arg, name) >= (int)cap) return hm_error(HM_ERR_INVALID_ARG, "checkpoint path too long");
  return HM_OK;
}

static hm_status hm_write_latest(const char *dir, const char *name) {
  char path[4200];
  snprintf(path, sizeof path, "%s/latest", dir);
  hm_atomic_file f;
  HM_TRY(hm_atomic_open(&f, path));
  char line[300];
  int n = snprintf(line, sizeof line, "%s\n", name);
  hm_status st = hm_atomic_write(&f, line, (size_t)n);
  if (st != HM_OK) {
    hm_atomic_abort(&f);
    return st;
  }
  return hm_atomic_commit(&f);
}

typedef struct {
  const hm_train_options *o;
  hm_device *dev;
  hm_stage *stage;
  hm_tokfile tf;
  hm_dataloader dl;
  int32_t *inputs, *targets;
  FILE *metrics;
  uint64_t run_id; /* random at a fresh start, the checkpoint's on a resume */
} hm_trainer;

static hm_status hm_eval(hm_trainer *t, float *out) {
  int n = 0;
  HM_TRY(hm_run_eval_batches(t->o, &t->dl, &n));
  double sum = 0;
  for (int i = 0; i < n; i++) {
    hm_dataloader_val(&t->dl, (uint64_t)i, t->inputs, t->targets);
    float loss = 0;
    HM_TRY(hm_stage_forward(t->stage, 0, t->inputs, NULL, t->targets, &loss));
    sum += loss;
  }
  *out = (float)(sum / (double)n);
  return HM_OK;
}

static hm_status hm_save(hm_trainer *t, int step, char *path, size_t cap) {
  const hm_train_options *o = t->o;
  char name[64];
  snprintf(name, sizeof name, "ckpt-%08d.hmc", step);
  snprintf(path, cap, "%s/%s", o->out_dir, name);
  hm_ckpt_meta m;
  memset(&m, 0, sizeof m);
  hm_strcpy(m.model_name, sizeof m.model_name, o->model_name);
  m.step = (uint64_t)step;
  m.data_seed = t->dl.seed;
  m.data_position = t->dl.position;
  m.rng_state = o->seed;
  m.lr = o->lr, m.beta1 = o->beta1, m.beta2 = o->beta2, m.eps = o->eps;
  m.weight_decay = o->weight_decay, m.grad_clip = o->grad_clip;
  m.batch = t->dl.B, m.seq_len = t->dl.T;
  m.run_id = t->run_id;
  m.stage_index = 0, m.stage_count = 1, m.micro_batches = o->grad_accum;
  HM_TRY(hm_stage_save(t->stage, path, &m));
  HM_TRY(hm_write_latest(o->out_dir, name));
  return hm_ckpt_prune(o->out_dir, o->keep, NULL);
}

static hm_status hm_train_loop(hm_trainer *t, hm_train_result *res) {
  const hm_train_options *o = t->o;
  const hm_spec_model_config *cfg = &o->config;
  const int T = o->seq_len > 0 ? o->seq_len : cfg->T;
  if (o->steps < 1) return hm_error(HM_ERR_INVALID_ARG, "steps=%d must be >= 1", o->steps);
  if (o->grad_accum < 1) return hm_error(HM_ERR_INVALID_ARG, "grad_accum=%d must be >= 1", o->grad_accum);
  if (!(o->lr > 0)) return hm_error(HM_ERR_INVALID_ARG, "learning rate %g must be > 0", (double)o->lr);

  HM_TRY(hm_run_open_data(o, o->batch, T, &t->tf, &t->dl));
  HM_TRY(hm_device_open(o->device, &t->dev));
  hm_stage_options so = {0, hm_model_num_layers(cfg), o->batch, T, 1, HM_STAGE_TP_NONE};
  HM_TRY(hm_stage_create_prec(cfg, t->dev, &so, o->precision, &t->stage));
  hm_stage_estimate_prec(cfg, t->dev, &so, o->precision, &res->memory);

  int step = 0;
  if (o->resume) {
    char path[4200];
    hm_ckpt_meta m;
    HM_TRY(hm_resolve_checkpoint(o->resume, path, sizeof path));
    HM_TRY(hm_stage_load(t->stage, path, &m));
    if (m.batch != o->batch || m.seq_len != T || m.data_seed != o->seed)
      return hm_error(HM_ERR_INVALID_ARG, "checkpoint %s was trained with batch %d, seq_len %d, seed %llu; this run has "
                      "%d, %d, %llu (resume with the same options)", path, m.batch, m.seq_len,
                      (unsigned long long)m.data_seed, o->batch, T, (unsigned long long)o->seed);
    step = (int)m.step;
    t->dl.position = m.data_position;
    t->run_id = m.run_id ? m.run_id : hm_ckpt_new_run_id();
  } else {
    HM_TRY(hm_stage_init_params(t->stage, o->seed));
    t->run_id = hm_ckpt_new_run_id();
  }
  size_t n_tok = (size_t)o->batch * T;
  t->inputs = hm_malloc(n_tok * sizeof(int32_t), "batch inputs");
  t->targets = hm_malloc(n_tok * sizeof(int32_t), "batch targets");
  if (!t->inputs || !t->targets) return HM_ERR_NOMEM;
  HM_TRY(hm_run_open_metrics(o, NULL, &t->metrics)); /* also makes out_dir for the checkpoints */
  const int last = o->stop_after > 0 && o->stop_after < o->steps ? o->stop_after : o->steps;
  const hm_adamw adam = {0, o->beta1, o->beta2, o->eps, o->weight_decay};
  double train_s = 0;
  uint64_t tokens = 0;
  const double t0 = hm_now_s();
  res->last_val_loss = -1;
  res->steps_done = step;  // a resume at or past `last` trains nothing
  while (step < last) {
    const double ts = hm_now_s();
    HM_TRY(hm_stage_zero_grad(t->stage));
    double loss_sum = 0;
    for (int k = 0; k < o->grad_accum; k++) {
      float loss = 0;
      hm_dataloader_next(&t->dl, t->inputs, t->targets);
      HM_TRY(hm_stage_forward(t->stage, 0, t->inputs, NULL, t->targets, &loss));
      HM_TRY(hm_stage_backward(t->stage, 0, NULL, 1.0f / (float)o->grad_accum));
      loss_sum += loss;
    }
    double sumsq = 0;
    HM_TRY(hm_stage_grad_sumsq(t->stage, &sumsq));
    if (!isfinite(sumsq))
      return hm_error(HM_ERR_INTERNAL, "step %d: gradient norm is not finite (loss %g); lower the learning rate",
                      step + 1, loss_sum / o->grad_accum);
    step++;
    hm_adamw a = adam;
    a.lr = hm_train_lr_at(o, step);
    HM_TRY(hm_stage_adamw(t->stage, &a, step, hm_grad_clip_scale(sumsq, o->grad_clip)));
    HM_TRY(hm_device_synchronize(t->dev));
    train_s += hm_now_s() - ts;
    tokens += n_tok * (uint64_t)o->grad_accum;

    hm_train_progress p;
    memset(&p, 0, sizeof p);
    p.step = step, p.steps = o->steps;
    p.loss = (float)(loss_sum / o->grad_accum);
    p.lr = a.lr;
    p.grad_norm = (float)sqrt(sumsq);
    p.tokens_per_s = (double)tokens / train_s;
    p.elapsed_s = hm_now_s() - t0;
    p.eta_s = (double)(last - step) * train_s / (double)(tokens / (n_tok * (uint64_t)o->grad_accum));
    if (hm_run_eval_due(o, step, last)) {
      HM_TRY(hm_eval(t, &p.val_loss));
      p.has_val = 1;
      res->last_val_loss = p.val_loss;
    }
    char ckpt[4200];
    if (o->out_dir && ((o->ckpt_every > 0 && step % o->ckpt_every == 0) || step == last)) {
      HM_TRY(hm_save(t, step, ckpt, sizeof ckpt));
      p.checkpoint = ckpt;
      hm_strcpy(res->last_checkpoint, sizeof res->last_checkpoint, ckpt);
    }
    if (t->metrics) {
      cJSON *j = cJSON_CreateObject();
      cJSON_AddNumberToObject(j, "step", step);
      cJSON_AddNumberToObject(j, "loss", p.loss);
      cJSON_AddNumberToObject(j, "lr", p.lr);
      cJSON_AddNumberToObject(j, "grad_norm", p.grad_norm);
      cJSON_AddNumberToObject(j, "tokens_per_s", p.tokens_per_s);
      cJSON_AddNumberToObject(j, "elapsed_s", p.elapsed_s);
      if (p.has_val) cJSON_AddNumberToObject(j, "val_loss", p.val_loss);
      if (p.checkpoint) cJSON_AddStringToObject(j, "checkpoint", p.checkpoint);
      HM_TRY(hm_run_metrics_line(t->metrics, j));
    }
    res->steps_done = step;
    res->last_loss = p.loss;
    res->tokens_per_s = p.tokens_per_s;
    if (o->on_progress) o->on_progress(&p, o->user);
  }
  return HM_OK;
}

hm_status hm_train_run(const hm_train_options *o, hm_train_result *res) {
  hm_train_result local;
  if (!res) res = &local;
  memset(res, 0, sizeof *res);
  hm_trainer t;
  memset(&t, 0, sizeof t);
  t.o = o;
  hm_status st = hm_train_loop(&t, res);
  if (t.metrics) fclose(t.metrics);
  free(t.inputs);
  free(t.targets);
  hm_stage_destroy(t.stage);
  hm_device_close(t.dev);
  hm_tokfile_close(&t.tf);
  return st;
}

// ---- sampling ---------------------------------------------------------------------------------

static int hm_sample_row(const float *logits, int V, float temperature, int top_k, uint64_t *rng) {
  if (temperature <= 0.0f) {
    int best = 0;
    for (int i = 1; i < V; i++) best = logits[i] > logits[best] ? i : best;
    return best;
  }
  float cut = -INFINITY;
  if (top_k > 0 && top_k < V) {
    // the k-th largest logit by repeated selection (V is small for byte models)
    float prev = INFINITY;
    for (int k = 0; k < top_k; k++) {
      float m = -INFINITY;
      for (int i = 0; i < V; i++)
        if (logits[i] < prev && logits[i] > m) m = logits[i];
      prev = m;
    }
    cut = prev;
  }
  float mx = -INFINITY;
  for (int i = 0; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
  double sum = 0;
  for (int i = 0; i < V; i++) sum += logits[i] >= cut ? exp((logits[i] - mx) / temperature) : 0.0;
  double u = (double)(hm_splitmix64((*rng)++) >> 11) * 0x1.0p-53 * sum, acc = 0;
  for (int i = 0; i < V; i++) {
    acc += logits[i] >= cut ? exp((logits[i] - mx) / temperature) : 0.0;
    if (acc > u) return i;
  }
  return V - 1;
}

hm_status hm_sample_text(const char *device, const char *checkpoint, const char *prompt, int n_new, float temperature,
                         int top_k, uint64_t seed, char *out, size_t cap) {
  size_t plen = strlen(prompt);
  if (n_new < 0 || cap < plen + (size_t)n_new + 1)
    return hm_error(HM_ERR_INVALID_ARG, "sample: output buffer too small for %zu + %d bytes", plen, n_new);
  if (plen == 0) return hm_error(HM_ERR_INVALID_ARG, "sample: the prompt is empty");
  hm_ckpt ck;
  HM_TRY(hm_ckpt_read(checkpoint, &ck));
  hm_spec_model_config cfg = ck.meta.config;
  int full = ck.meta.layer_first == 0 && ck.meta.layer_last == cfg.L + 2;
  hm_ckpt_free(&ck);
  if (!full)
    return hm_error(HM_ERR_INVALID_ARG, "sample: checkpoint %s holds only some layers; sampling needs the whole model", checkpoint);
  if (cfg.V != HM_BYTE_VOCAB)
    return hm_error(HM_ERR_UNSUPPORTED, "sample: model vocabulary %d; only byte-level models (V=256) can print text", (int)cfg.V);
  hm_device *dev = NULL;
  hm_stage *s = NULL;
  float *row = NULL;
  int32_t *tok = NULL;
  hm_status st = hm_device_open(device, &dev);
  hm_stage_options so = {0, cfg.L + 2, 1, cfg.T, 1, HM_STAGE_TP_NONE};
  if (st == HM_OK) st = hm_stage_create(&cfg, dev, &so, &s);
  if (st == HM_OK) st = hm_stage_load(s, checkpoint, NULL);
  row = hm_malloc((size_t)cfg.V * sizeof(float), "logits row");
  tok = hm_malloc((size_t)cfg.T * sizeof(int32_t), "context");
  if (!row || !tok) st = HM_ERR_NOMEM;
  memcpy(out, prompt, plen);
  size_t len = plen;
  uint64_t rng = hm_splitmix64(seed);
  for (int i = 0; i < n_new && st == HM_OK; i++) {
    // the last T bytes are the context; position p's logits predict byte p+1
    size_t ctx = len < (size_t)cfg.T ? len : (size_t)cfg.T;
    for (size_t j = 0; j < ctx; j++) tok[j] = (uint8_t)out[len - ctx + j];
    st = hm_stage_set_seq_len(s, (int)ctx);
    if (st == HM_OK) st = hm_stage_forward(s, 0, tok, NULL, NULL, NULL);
    if (st == HM_OK)
      st = hm_device_copy_to_f32(dev, row, hm_device_offset(dev, hm_stage_output(s, 0), (ctx - 1) * (size_t)cfg.V),
                                 (size_t)cfg.V);
    if (st == HM_OK) out[len++] = (char)hm_sample_row(row, cfg.V, temperature, top_k, &rng);
  }
  out[len] = '\0';
  free(row);
  free(tok);
  hm_stage_destroy(s);
  hm_device_close(dev);
  return st;
}
