/* `hetmix prepare`: text files -> one token file (byte tokenizer, V=256; format in docs/model.md). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"
#include "options.h"

int hm_cmd_prepare(int argc, char **argv) {
  const char *out = NULL;
  char *words[1024];
  int use_default = 0;
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("out", 'o', &out, "OUT", "the token file (with --default: its folder [data])"),
      HM_OPT_FLAG_ROW("default", 0, &use_default, "build the default corpus (Debian's fortunes)"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "prepare", "hetmix prepare IN.txt... -o OUT.tok\n       hetmix prepare --default [-o DIR]",
      "Concatenates the text files as bytes (byte tokenizer, V=256) into a token file; --default\n"
      "builds the default corpus (fortunes) in DIR (data/).",
      opts, NULL, 1024, 0};
  hm_opt_result res = {words, 0, 0};
  int rc = hm_opts_parse(&spec, argc, argv, &res);
  if (rc != HM_OPTS_CONTINUE) return rc;
  const int n = res.npos;
  const char *const *inputs = (const char *const *)words;
  if (use_default) {
    if (n > 0) return hm_cli_fail("see `hetmix prepare --help`", "--default takes no input files");
    char path[4200];
    hm_status st = hm_default_corpus(out ? out : "data", path, sizeof path);
    if (st != HM_OK) return hm_cli_fail_status(st, "prepare", "install Debian's fortunes packages");
    printf("%s\n", path);
    return 0;
  }
  if (n == 0) return hm_cli_fail("usage: hetmix prepare IN.txt... -o OUT.tok", "no input files");
  if (!out) return hm_cli_fail("usage: hetmix prepare IN.txt... -o OUT.tok", "no output file (-o)");
  uint64_t count = 0;
  hm_status st = hm_tokfile_from_text(out, inputs, n, &count);
  if (st != HM_OK) return hm_cli_fail_status(st, "prepare", NULL);
  printf("wrote %s: %llu tokens (bytes) from %d file(s)\n", out, (unsigned long long)count, n);
  return 0;
}
