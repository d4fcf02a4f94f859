/* Entry point placeholder until this subcommand lands. */
#include "cli.h"

int hm_cmd_profile(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'profile' command yet", "'profile' is not implemented");
}

int hm_cmd_launch(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'launch' command yet", "'launch' is not implemented");
}

int hm_cmd_worker(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'worker' command yet", "'worker' is not implemented");
}
