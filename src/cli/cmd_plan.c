/* Entry point placeholder until this subcommand lands. */
#include "cli.h"

int hm_cmd_plan(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'plan' command yet", "'plan' is not implemented");
}

int hm_cmd_simulate(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'simulate' command yet", "'simulate' is not implemented");
}
