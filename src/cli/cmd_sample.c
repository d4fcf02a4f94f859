/* `hetmix sample`: generate text from a checkpoint of a byte-level model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"

int hm_cmd_sample(int argc, char **argv) {
  const char *device = "cpu", *ckpt = NULL, *prompt = "\n";
  int n = 200, top_k = 0;
  double temperature = 0.8;
  unsigned long long seed = 42;
  static const struct option opts[] = {
      {"ckpt", required_argument, 0, 'c'},  {"prompt", required_argument, 0, 'p'},
      {"tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
      {"top-k", required_argument, 0, 'k'}, {"seed", required_argument, 0, 's'},
      {"device", required_argument, 0, 'd'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int c;
  char *end = NULL;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case 'c': ckpt = optarg; break;
      case 'p': prompt = optarg; break;
      case 'd': device = optarg; break;
      case 'n': n = (int)strtol(optarg, &end, 10); if (*end || n < 0 || n > 1000000) return hm_cli_fail(NULL, "--tokens expects 0..1000000, got '%s'", optarg); break;
      case 'k': top_k = (int)strtol(optarg, &end, 10); if (*end || top_k < 0) return hm_cli_fail(NULL, "--top-k expects an integer >= 0, got '%s'", optarg); break;
      case 't': temperature = strtod(optarg, &end); if (*end || !(temperature >= 0)) return hm_cli_fail(NULL, "--temperature expects a number >= 0, got '%s'", optarg); break;
      case 's': seed = strtoull(optarg, &end, 10); if (*end) return hm_cli_fail(NULL, "--seed expects an integer, got '%s'", optarg); break;
      case 'h':
        printf("usage: hetmix sample --ckpt FILE|DIR [--prompt TEXT] [--tokens N (200)] [--temperature X (0.8; 0 = greedy)]\n"
               "                     [--top-k K (0 = all)] [--seed N] [--device SPEC (cpu)]\n");
        return 0;
      default: return hm_cli_fail("see `hetmix sample --help`", "unknown or incomplete option '%s'", argv[optind - 1]);
    }
  }
  if (!ckpt) return hm_cli_fail("give --ckpt out/ (a training folder) or a .hmc file", "no checkpoint given");
  char path[4200];
  hm_status st = hm_resolve_checkpoint(ckpt, path, sizeof path);
  if (st != HM_OK) return hm_cli_fail_status(st, "--ckpt", "point --ckpt at a checkpoint file or a training --out folder");
  size_t cap = strlen(prompt) + (size_t)n + 1;
  char *out = malloc(cap);
  if (!out) return hm_cli_fail(NULL, "out of memory for %zu bytes", cap);
  st = hm_sample_text(device, path, prompt, n, (float)temperature, top_k, seed, out, cap);
  if (st != HM_OK) {
    free(out);
    return hm_cli_fail_status(st, "sample", NULL);
  }
  fwrite(out, 1, strlen(prompt) + (size_t)n, stdout);
  fputc('\n', stdout);
  free(out);
  return 0;
}
