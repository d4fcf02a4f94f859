/* `hetmix train`: single-process training on one device (one stage with every layer).
 * Prints a progress line per --log-every steps and validation losses; writes checkpoints and
 * metrics.jsonl under --out. The multi-worker path (profile, plan, launch) builds on this. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"
#include "options.h"

typedef struct {
  int log_every;
} train_cli;

static void fmt_time(char *buf, size_t cap, double s) {
  if (s < 0) s = 0;
  int h = (int)(s / 3600), m = (int)(s / 60) % 60, sec = (int)s % 60;
  if (h > 0) snprintf(buf, cap, "%dh%02dm", h, m);
  else snprintf(buf, cap, "%dm%02ds", m, sec);
}

static void on_progress(const hm_train_progress *p, void *user) {
  const train_cli *c = user;
  if (p->step % c->log_every == 0 || p->step == p->steps || p->has_val || p->step == 1) {
    char eta[32];
    fmt_time(eta, sizeof eta, p->eta_s);
    printf("step %6d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n", p->step, p->steps, p->loss,
           p->lr, p->grad_norm, p->tokens_per_s, eta);
  }
  if (p->has_val) printf("step %6d/%d | val loss %.4f\n", p->step, p->steps, p->val_loss);
  if (p->checkpoint) printf("step %6d/%d | checkpoint %s\n", p->step, p->steps, p->checkpoint);
  fflush(stdout);
}

int hm_cmd_train(int argc, char **argv) {
  if (argc == 1) {
    /* bare `hetmix train`: the embedded default, this machine as a two-device cluster */
    char *local_argv[] = {argv[0], "--cluster", "local", NULL};
    return hm_cmd_train_cluster(3, local_argv);
  }
  for (int i = 1; i < argc; i++) /* the multi-worker path: cmd_train_cluster.c */
    if (strcmp(argv[i], "--cluster") == 0 || strncmp(argv[i], "--cluster=", 10) == 0)
      return hm_cmd_train_cluster(argc, argv);
  hm_train_options o;
  hm_train_defaults(&o);
  o.out_dir = "out";
  train_cli cli = {10};
  const char *model = "gpt-mini", *precision = "fp32";
  int seed_set = 0, batch_set = 0, seq_set = 0, single = 0;
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("device", 0, &o.device, "SPEC", "device backend: cpu, ref, cpu:threads=2,slow=2 ... [cpu]"),
      HM_OPT_STR_ROW("model", 0, &model, "NAME|FILE.json",
                     "gpt-mini (default), llama-mini, gpt2-124m, tiny, L6,C384,NH6,V256,T256, or a model spec file"),
      HM_OPT_STR_ROW("data", 0, &o.data, "FILE.tok", "token file from `hetmix prepare` [fortunes corpus in data/]"),
      HM_OPT_ROW(HM_OPT_INT, "steps", 0, &o.steps, 1, 1e9, "N", "optimizer steps [1000]; the LR schedule spans them"),
      HM_OPT_ROW(HM_OPT_INT, "stop-after", 0, &o.stop_after, 1, 1e9, "N",
                 "stop at step N (the schedule still spans --steps)"),
      HM_OPT_ROW_SEEN(HM_OPT_INT, "batch", 0, &o.batch, 1, 1e9, "B", "sequences per micro-batch [8]", &batch_set),
      HM_OPT_ROW_SEEN(HM_OPT_INT, "seq-len", 0, &o.seq_len, 1, 1e9, "T", "tokens per sequence [the model's T]",
                      &seq_set),
      HM_OPT_STR_ROW("precision", 0, &precision, "fp32|bf16-mixed",
                     "fp32, or bf16-mixed: bf16 GEMMs with f32 master weights, gradients and AdamW\n"
                     "(PyTorch autocast's semantics; cpu and ref backends) [fp32]"),
      HM_OPT_ROW(HM_OPT_INT, "grad-accum", 0, &o.grad_accum, 1, 1e9, "M", "micro-batches per step [1]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "lr", 0, &o.lr, 0, FLT_MAX, "X", "peak learning rate [1e-3]"),
      HM_OPT_ROW(HM_OPT_INT, "warmup", 0, &o.warmup, 0, 1e9, "N", "linear warm-up steps [100]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "weight-decay", 0, &o.weight_decay, 0, FLT_MAX, "X", "AdamW weight decay [0.1]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "grad-clip", 0, &o.grad_clip, 0, FLT_MAX, "X", "gradient norm clip [1.0]"),
      HM_OPT_ROW_SEEN(HM_OPT_U64, "seed", 0, &o.seed, 0, HM_OPT_U64_MAX, "N", "initialization and batch order [1337]",
                      &seed_set),
      HM_OPT_ROW(HM_OPT_INT, "eval-every", 0, &o.eval_every, 0, 1e9, "N", "validation loss every N steps [0: never]"),
      HM_OPT_ROW(HM_OPT_INT, "eval-batches", 0, &o.eval_batches, 1, 1e9, "N", "validation batches per evaluation [8]"),
      HM_OPT_ROW(HM_OPT_INT, "ckpt-every", 0, &o.ckpt_every, 0, 1e9, "N", "checkpoint every N steps [0: only at the end]"),
      HM_OPT_ROW(HM_OPT_INT, "keep", 0, &o.keep, 0, 1e9, "K", "keep the newest K checkpoints in --out [3; 0 keeps all]"),
      HM_OPT_STR_ROW("out", 0, &o.out_dir, "DIR", "checkpoints and metrics.jsonl [out]"),
      HM_OPT_STR_ROW("resume", 0, &o.resume, "PATH", "checkpoint file, or a --out folder (its `latest`)"),
      HM_OPT_ROW(HM_OPT_INT, "log-every", 0, &cli.log_every, 1, 1e9, "N", "progress line every N steps [10]"),
      HM_OPT_FLAG_ROW("single", 0, &single,
                      "one process on one device: what any option but --cluster selects;\n"
                      "`hetmix train --single` alone trains gpt-mini so, not the embedded default"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "train",
      "hetmix train                    the embedded default: profile, plan and train gpt-mini\n"
      "                                       on this machine as a two-device cluster\n"
      "       hetmix train --cluster FILE|local [options]   (see `hetmix train --cluster local --help`)\n"
      "       hetmix train [options]          one process on one device",
      NULL, opts, NULL, 0, 0};
  hm_opt_result res_args = {NULL, 0, 0};
  int rc = hm_opts_parse(&spec, argc, argv, &res_args);
  if (rc != HM_OPTS_CONTINUE) return rc;
  (void)single; /* --single only selects this path, as any option but --cluster does */
  if (hm_cli_parse_precision(precision, &o.precision) != 0) return 2;
  hm_status st = hm_model_config_resolve(model, &o.config, o.model_name, sizeof o.model_name);
  if (st != HM_OK)
    return hm_cli_fail_status(st, "--model", "pick a named model, give L<n>,C<n>,NH<n>,V<n>,T<n>, or a model .json with a \"config\"");
  if (o.resume) {
    // a resumed run continues with the batch shape and seed it was started with
    char path[4200];
    hm_ckpt ck;
    st = hm_resolve_checkpoint(o.resume, path, sizeof path);
    if (st == HM_OK) st = hm_ckpt_read(path, &ck);
    if (st != HM_OK) return hm_cli_fail_status(st, "--resume", "point --resume at a checkpoint file or a --out folder");
    if (!seed_set) o.seed = ck.meta.data_seed;
    if (!batch_set) o.batch = ck.meta.batch;
    if (!seq_set) o.seq_len = ck.meta.seq_len;
    hm_ckpt_free(&ck);
  }
  o.on_progress = on_progress;
  o.user = &cli;
  hm_train_result res;
  st = hm_train_run(&o, &res);
  if (st == HM_ERR_NO_FIT) return hm_cli_fail_status(st, "train", "use a smaller --model or --batch, or a device with more memory");
  if (st == HM_ERR_NOT_FOUND) return hm_cli_fail_status(st, "train", "check the --device, --data and --resume names");
  if (st != HM_OK) return hm_cli_fail_status(st, "train", NULL);
  printf("done: %d steps, loss %.4f", res.steps_done, res.last_loss);
  if (res.last_val_loss >= 0) printf(", val loss %.4f", res.last_val_loss);
  printf(", %.0f tok/s, %s, memory %.1f MiB (params %.1f, bf16 weights %.1f, grads %.1f, AdamW %.1f, activations %.1f, "
         "scratch %.1f)\n",
         res.tokens_per_s, hm_precision_name(o.precision), res.memory.total / 1048576.0, res.memory.params / 1048576.0,
         res.memory.weights_bf16 / 1048576.0, res.memory.grads / 1048576.0, res.memory.optimizer / 1048576.0,
         res.memory.activations / 1048576.0, res.memory.scratch / 1048576.0);
  return 0;
}
