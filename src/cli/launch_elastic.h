/* Dropping a device from a `hetmix launch` job (launch_elastic.c), for --exclude and
 * --drop-after: a data-parallel replica of a layout given to the workers as --stages/--micro,
 * or, for a --plan job, the device itself: re-plan without it and re-shard the checkpoint. */
#ifndef HETMIX_LAUNCH_ELASTIC_H
#define HETMIX_LAUNCH_ELASTIC_H

#include "hetmix/runtime.h"

#define HM_ELASTIC_MAX_ARGS 160
#define HM_ELASTIC_MAX_RANKS 4096

typedef struct hm_elastic {
  int drop_after;              /* failures of one rank before its replica is dropped; 0: never */
  int p, R;                    /* stages, replicas now */
  int micro[64];               /* micro-batches per replica now */
  int fails[HM_ELASTIC_MAX_RANKS];
  char *argv[HM_ELASTIC_MAX_ARGS];
  char micro_s[512], devices_s[4096];
  int micro_at, devices_at;    /* indices of the values in argv, -1 when absent */
  int per_rank_devices;        /* --devices lists one spec per rank (else per stage) */
  char dev[256][128];          /* device specs of --devices, as listed */
  /* --plan jobs: the launcher fills self, profile (may be NULL) and run_dir (may be NULL) */
  int plan_at, cluster_at;     /* indices of the values of --plan and --cluster in argv, -1 */
  const char *self, *profile, *run_dir;
  int replans;                 /* re-plans so far */
  char plan_dir[4096];         /* the first plan's folder: re-plans go to <plan_dir>/replan<k>/ */
  char plan_s[4200], cluster_s[4200];
} hm_elastic;

/* Reads the layout from the worker command; HM_ERR_INVALID_ARG naming why it cannot shrink. */
hm_status hm_elastic_init(hm_elastic *e, char *const *argv, int nworkers, int drop_after);
/* Drops replica q: the others take its micro-batches (same global batch); *nworkers shrinks by
 * p. The command to run is e->argv. */
hm_status hm_elastic_drop(hm_elastic *e, int q, int *nworkers);
/* A --plan job without the devices of its world ranks drop[0..n-1]: writes the spec files of
 * the plan's cluster less those devices, plans again (`hetmix plan`, with the profile when there
 * is one), re-shards the complete checkpoint resume (may be NULL) to the new plan's stages in
 * place, and points e->argv at the new plan; *nworkers becomes its rank count. */
hm_status hm_elastic_replan(hm_elastic *e, const int *drop, int n, const char *resume, int *nworkers);
/* hm_restart_opts.reshape: counts the failed rank's failures and drops its replica at
 * drop_after (user: the hm_elastic). */
hm_status hm_elastic_reshape(const hm_restart_event *ev, void *user, char *const **argv, int *nworkers);

#endif
