/* The `hetmix` command: one function per subcommand, each in its own file (cmd_*.c).
 * Subcommands return the process exit status; only the CLI prints errors and exits. */
#ifndef HETMIX_CLI_H
#define HETMIX_CLI_H

#include "hetmix/spec.h"
#include "hetmix/status.h"

/* Prints "hetmix: error: <message>" and, when hint is non-NULL, "hint: <hint>" to stderr;
 * returns 1 (the exit status for errors). */
int hm_cli_fail(const char *hint, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Same, with the message of a failed library call: "<what>: <hm_last_error()>". */
int hm_cli_fail_status(hm_status st, const char *what, const char *hint);

/* --precision NAME of a trainer: "fp32" or "bf16-mixed" into *out (0); else prints the error
 * with a hint and returns 2 (a usage error). */
int hm_cli_parse_precision(const char *name, hm_precision *out);

/* Runs this executable (self) with args (NULL-terminated, without argv[0]) as one child
 * process under the local launcher; its output goes to ours. `what` names it in errors. */
hm_status hm_cli_run_self(const char *self, char *const *args, const char *what);

/* The embedded default cluster (local_cluster.c): JSON text of this machine as a `cpu` and an
 * `opencl` device, one core each; when opencl cannot be opened here, `cpu` and an emulated
 * half-speed `cpu-half`, with the reason in why (else why is ""). */
const char *hm_cli_local_cluster(char *why, size_t cap);

/* The ranks of a cluster file placed in the network namespaces named like their hosts
 * (launch_hosts.c, for `hetmix launch --netns`; with a plan, its ranks on the devices the plan
 * assigns them): per rank the namespace and the environment
 * (listen address, pool, link figures); store_host is rank 0's address. */
typedef struct hm_launch_hosts {
  int n;
  char **netns;
  char ***env;
  char store_host[64];
} hm_launch_hosts;
/* profile_path (may be NULL): a profile whose measured link classes ("host_links") replace the
 * cluster file's figures in HETMIX_LINK_POOL / HETMIX_LINK_CROSS. */
hm_status hm_launch_hosts_from_cluster(const char *path, const char *plan_path, const char *profile_path,
                                       hm_launch_hosts *h);
void hm_launch_hosts_free(hm_launch_hosts *h);

int hm_cmd_train(int argc, char **argv);     /* cmd_train.c */
int hm_cmd_train_cluster(int argc, char **argv); /* cmd_train_cluster.c: train --cluster */
int hm_cmd_sample(int argc, char **argv);    /* cmd_sample.c */
int hm_cmd_prepare(int argc, char **argv);   /* cmd_prepare.c */
int hm_cmd_plan(int argc, char **argv);      /* cmd_plan.c */
int hm_cmd_simulate(int argc, char **argv);  /* cmd_plan.c */
int hm_cmd_profile(int argc, char **argv);   /* cmd_profile.c */
int hm_cmd_calibrate(int argc, char **argv); /* cmd_calibrate.c */
int hm_cmd_launch(int argc, char **argv);    /* cmd_launch.c */
int hm_cmd_worker(int argc, char **argv);    /* cmd_launch.c */
int hm_cmd_bench(int argc, char **argv);     /* cmd_bench.c: `hetmix bench comm ...` */

#endif
