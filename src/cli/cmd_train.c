/* `hetmix train`: single-process training on one device (one stage with every layer).
 * Prints a progress line per --log-every steps and validation losses; writes checkpoints and
 * metrics.jsonl under --out. The multi-worker path (profile, plan, launch) builds on this. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"

static void train_usage(FILE *f) {
  fprintf(f,
          "usage: hetmix train                    the embedded default: profile, plan and train\n"
          "                                       gpt-mini on this machine as a two-device cluster\n"
          "       hetmix train --cluster FILE|local [options]   (see `hetmix train --cluster local --help`)\n"
          "       hetmix train [options]          one process on one device:\n"
          "  --device SPEC      device backend: cpu, ref, cpu:threads=2,slow=2 ... (default cpu)\n"
          "  --model NAME       gpt-mini (default), gpt2-124m, tiny, or L6,C384,NH6,V256,T256\n"
          "  --data FILE.tok    token file from `hetmix prepare` (default: fortunes corpus in data/)\n"
          "  --steps N          optimizer steps (default 1000); the LR schedule spans them\n"
          "  --stop-after N     stop at step N (the schedule still spans --steps)\n"
          "  --batch B          sequences per micro-batch (default 8)\n"
          "  --seq-len T        tokens per sequence (default: the model's T)\n"
          "  --grad-accum M     micro-batches per step (default 1)\n"
          "  --lr X             peak learning rate (default 1e-3), --warmup N (default 100)\n"
          "  --weight-decay X   (default 0.1), --grad-clip X (default 1.0)\n"
          "  --seed N           initialization and batch order (default 1337)\n"
          "  --eval-every N     validation loss every N steps (default 0: never)\n"
          "  --eval-batches N   validation batches per evaluation (default 8)\n"
          "  --ckpt-every N     checkpoint every N steps (default: only at the end)\n"
          "  --keep K           keep the newest K checkpoints in --out (default 3; 0 keeps all)\n"
          "  --out DIR          checkpoints and metrics.jsonl (default out/)\n"
          "  --resume PATH      checkpoint file, or a --out folder (its `latest`)\n"
          "  --log-every N      progress line every N steps (default 10)\n"
          "  --single           single process on one device (the only mode in this build)\n");
}

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

static int parse_int(const char *opt, const char *s, int lo, int *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > 1000000000) {
    hm_cli_fail("see `hetmix train --help`", "%s expects an integer >= %d, got '%s'", opt, lo, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int parse_float(const char *opt, const char *s, float *out) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (!*s || *end || !(v >= 0)) {
    hm_cli_fail("see `hetmix train --help`", "%s expects a non-negative number, got '%s'", opt, s);
    return -1;
  }
  *out = (float)v;
  return 0;
}

int hm_cmd_train(int argc, char **argv) {
  if (argc == 1) {
    /* bare `hetmix train`: the embedded default, this machine as a two-device cluster */
    char *local_argv[] = {argv[0], "--cluster", "local", NULL};
    return hm_cmd_train_cluster(3, local_argv);
  }
  for (int i = 1; i < argc; i++) /* the multi-worker path: cmd_train_cluster.c */
    if (strcmp(argv[i], "--cluster") == 0) return hm_cmd_train_cluster(argc, argv);
  hm_train_options o;
  hm_train_defaults(&o);
  o.out_dir = "out";
  train_cli cli = {10};
  const char *model = "gpt-mini";
  int seed_set = 0, batch_set = 0, seq_set = 0;
  enum { O_STOP = 256, O_SEQ, O_ACC, O_WARM, O_WD, O_CLIP, O_EVAL, O_EVALB, O_CKPT, O_LOG, O_SINGLE, O_KEEP };
  static const struct option opts[] = {
      {"device", required_argument, 0, 'd'}, {"model", required_argument, 0, 'm'},
      {"data", required_argument, 0, 'D'},   {"steps", required_argument, 0, 'n'},
      {"stop-after", required_argument, 0, O_STOP}, {"batch", required_argument, 0, 'b'},
      {"seq-len", required_argument, 0, O_SEQ}, {"grad-accum", required_argument, 0, O_ACC},
      {"lr", required_argument, 0, 'l'},     {"warmup", required_argument, 0, O_WARM},
      {"weight-decay", required_argument, 0, O_WD}, {"grad-clip", required_argument, 0, O_CLIP},
      {"seed", required_argument, 0, 's'},   {"eval-every", required_argument, 0, O_EVAL},
      {"eval-batches", required_argument, 0, O_EVALB}, {"ckpt-every", required_argument, 0, O_CKPT},
      {"out", required_argument, 0, 'o'},    {"resume", required_argument, 0, 'r'},
      {"log-every", required_argument, 0, O_LOG}, {"single", no_argument, 0, O_SINGLE},
      {"keep", required_argument, 0, O_KEEP},
      {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int c, seed = 0;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
      case 'd': o.device = optarg; break;
      case 'm': model = optarg; break;
      case 'D': o.data = optarg; break;
      case 'n': bad = parse_int("--steps", optarg, 1, &o.steps); break;
      case O_STOP: bad = parse_int("--stop-after", optarg, 1, &o.stop_after); break;
      case 'b': bad = parse_int("--batch", optarg, 1, &o.batch), batch_set = 1; break;
      case O_SEQ: bad = parse_int("--seq-len", optarg, 1, &o.seq_len), seq_set = 1; break;
      case O_ACC: bad = parse_int("--grad-accum", optarg, 1, &o.grad_accum); break;
      case 'l': bad = parse_float("--lr", optarg, &o.lr); break;
      case O_WARM: bad = parse_int("--warmup", optarg, 0, &o.warmup); break;
      case O_WD: bad = parse_float("--weight-decay", optarg, &o.weight_decay); break;
      case O_CLIP: bad = parse_float("--grad-clip", optarg, &o.grad_clip); break;
      case 's': bad = parse_int("--seed", optarg, 0, &seed), seed_set = 1; break;
      case O_EVAL: bad = parse_int("--eval-every", optarg, 0, &o.eval_every); break;
      case O_EVALB: bad = parse_int("--eval-batches", optarg, 1, &o.eval_batches); break;
      case O_CKPT: bad = parse_int("--ckpt-every", optarg, 0, &o.ckpt_every); break;
      case O_KEEP: bad = parse_int("--keep", optarg, 0, &o.keep); break;
      case 'o': o.out_dir = optarg; break;
      case 'r': o.resume = optarg; break;
      case O_LOG: bad = parse_int("--log-every", optarg, 1, &cli.log_every); break;
      case O_SINGLE: break;
      case 'h': train_usage(stdout); return 0;
      default:
        return hm_cli_fail("see `hetmix train --help`", "unknown or incomplete option '%s'", argv[optind - 1]);
    }
    if (bad) return 1;
  }
  if (optind < argc) return hm_cli_fail("see `hetmix train --help`", "unexpected argument '%s'", argv[optind]);
  if (seed_set) o.seed = (uint64_t)seed;
  hm_status st = hm_model_config_lookup(model, &o.config);
  if (st != HM_OK) return hm_cli_fail_status(st, "--model", "pick a named model or give L<n>,C<n>,NH<n>,V<n>,T<n>");
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
  printf(", %.0f tok/s, memory %.1f MiB (params %.1f, grads %.1f, AdamW %.1f, activations %.1f, scratch %.1f)\n",
         res.tokens_per_s, res.memory.total / 1048576.0, res.memory.params / 1048576.0, res.memory.grads / 1048576.0,
         res.memory.optimizer / 1048576.0, res.memory.activations / 1048576.0, res.memory.scratch / 1048576.0);
  return 0;
}
