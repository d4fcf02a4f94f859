/* hetmix: train one model across unlike accelerators. This file only dispatches subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} hm_subcommand;

static const hm_subcommand subcommands[] = {
    {"train", hm_cmd_train, "train a model (embedded default: gpt-mini on the bundled corpus)"},
    {"sample", hm_cmd_sample, "generate text from a checkpoint"},
    {"prepare", hm_cmd_prepare, "turn text files into a token file"},
    {"plan", hm_cmd_plan, "search the fastest plan for a cluster and a model"},
    {"simulate", hm_cmd_simulate, "predict the step time of a given plan"},
    {"profile", hm_cmd_profile, "measure per-layer times and links of local devices"},
    {"calibrate", hm_cmd_calibrate, "fold a finished run's measurements into its profile"},
    {"launch", hm_cmd_launch, "start the workers of a plan on this machine"},
    {"worker", hm_cmd_worker, "run one worker (started by launch, mpirun or srun)"},
    {"bench", hm_cmd_bench, "benchmarks: `hetmix bench comm` (nccl-tests style)"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: hetmix <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
    fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
  fprintf(f, "\n`hetmix <command> --help` describes a command's options.\n");
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
    printf("hetmix %s\n", HETMIX_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
    if (strcmp(argv[1], subcommands[i].name) == 0) return subcommands[i].run(argc - 1, argv + 1);
  return hm_cli_fail("run `hetmix --help` for the list of commands", "unknown command '%s'", argv[1]);
}
