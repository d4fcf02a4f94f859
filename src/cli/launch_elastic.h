/* Dropping a data-parallel replica from a `hetmix launch` job (launch_elastic.c): for
 * --exclude and --drop-after, on layouts given to the workers as --stages/--micro. */
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
} hm_elastic;

/* Reads the layout from the worker command; HM_ERR_INVALID_ARG naming why it cannot shrink. */
hm_status hm_elastic_init(hm_elastic *e, char *const *argv, int nworkers, int drop_after);
/* Drops replica q: the others take its micro-batches (same global batch); *nworkers shrinks by
 * p. The command to run is e->argv. */
hm_status hm_elastic_drop(hm_elastic *e, int q, int *nworkers);
/* hm_restart_opts.reshape: counts the failed rank's failures and drops its replica at
 * drop_after (user: the hm_elastic). */
hm_status hm_elastic_reshape(const hm_restart_event *ev, void *user, char *const **argv, int *nworkers);

#endif
