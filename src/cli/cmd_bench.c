/* Entry point placeholder until this subcommand lands. */
#include "cli.h"

int hm_cmd_bench(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'bench' command yet", "'bench' is not implemented");
}
