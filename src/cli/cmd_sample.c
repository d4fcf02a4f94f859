/* `hetmix sample`: generate text from a checkpoint of a byte-level model. */
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"
#include "options.h"

int hm_cmd_sample(int argc, char **argv) {
  const char *device = "cpu", *ckpt = NULL, *prompt = "\n";
  int n = 200, top_k = 0;
  double temperature = 0.8;
  uint64_t seed = 42;
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("ckpt", 0, &ckpt, "FILE|DIR", "checkpoint file, or a training --out folder (its `latest`)"),
      HM_OPT_STR_ROW("prompt", 0, &prompt, "TEXT", "text to continue [a newline]"),
      HM_OPT_ROW(HM_OPT_INT, "tokens", 0, &n, 0, 1000000, "N", "bytes to generate [200]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "temperature", 0, &temperature, 0, FLT_MAX, "X", "[0.8]; 0 = greedy"),
      HM_OPT_ROW(HM_OPT_INT, "top-k", 0, &top_k, 0, 1e9, "K", "sample among the K likeliest [0 = all]"),
      HM_OPT_ROW(HM_OPT_U64, "seed", 0, &seed, 0, HM_OPT_U64_MAX, "N", "[42]"),
      HM_OPT_STR_ROW("device", 0, &device, "SPEC", "device backend [cpu]"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {"sample", "hetmix sample --ckpt FILE|DIR [options]",
                            "Generates text from a checkpoint of a byte-level model.", opts, NULL, 0, 0};
  hm_opt_result res = {NULL, 0, 0};
  int rc = hm_opts_parse(&spec, argc, argv, &res);
  if (rc != HM_OPTS_CONTINUE) return rc;
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
