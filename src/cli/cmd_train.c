/* Entry point placeholder until this subcommand lands. */
#include "cli.h"

int hm_cmd_train(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'train' command yet", "'train' is not implemented");
}

int hm_cmd_sample(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'sample' command yet", "'sample' is not implemented");
}

int hm_cmd_prepare(int argc, char **argv) {
  (void)argc;
  (void)argv;
  return hm_cli_fail("this build has no 'prepare' command yet", "'prepare' is not implemented");
}
