/* `hetmix prepare`: text files -> one token file (byte tokenizer, V=256; format in docs/model.md). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "hetmix/model.h"

int hm_cmd_prepare(int argc, char **argv) {
  const char *out = NULL;
  const char *inputs[1024];
  int n = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf("usage: hetmix prepare IN.txt... -o OUT.tok\n"
             "  Concatenates the text files as bytes (byte tokenizer, V=256) into a token file.\n"
             "  `hetmix prepare --default [-o DIR]` builds the default corpus (fortunes) in DIR (data/).\n");
      return 0;
    }
    if (strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--out") == 0) {
      if (i + 1 >= argc) return hm_cli_fail("give the output path after -o", "-o needs a file name");
      out = argv[++i];
    } else if (strcmp(argv[i], "--default") == 0) {
      inputs[n++] = NULL;  // marker
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return hm_cli_fail("see `hetmix prepare --help`", "unknown option '%s'", argv[i]);
    } else {
      if (n >= 1024) return hm_cli_fail(NULL, "at most 1024 input files");
      inputs[n++] = argv[i];
    }
  }
  if (n == 1 && inputs[0] == NULL) {
    char path[4200];
    hm_status st = hm_default_corpus(out ? out : "data", path, sizeof path);
    if (st != HM_OK) return hm_cli_fail_status(st, "prepare", "install Debian's fortunes packages");
    printf("%s\n", path);
    return 0;
  }
  for (int i = 0; i < n; i++)
    if (!inputs[i]) return hm_cli_fail("see `hetmix prepare --help`", "--default takes no input files");
  if (n == 0) return hm_cli_fail("usage: hetmix prepare IN.txt... -o OUT.tok", "no input files");
  if (!out) return hm_cli_fail("usage: hetmix prepare IN.txt... -o OUT.tok", "no output file (-o)");
  uint64_t count = 0;
  hm_status st = hm_tokfile_from_text(out, inputs, n, &count);
  if (st != HM_OK) return hm_cli_fail_status(st, "prepare", NULL);
  printf("wrote %s: %llu tokens (bytes) from %d file(s)\n", out, (unsigned long long)count, n);
  return 0;
}
