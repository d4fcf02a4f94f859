/* Dropping a device that keeps failing, or one given by --exclude, from a `hetmix launch` job
 * (docs/runtime.md, "Failure model" and "Elastic re-plan"). A --plan job is planned again
 * without the device (hm_elastic_replan: the planner moves layers between stages as it sees
 * fit, the checkpoint is re-sharded to the new stages). Otherwise, on a --stages/--micro layout,
 * the device's data-parallel replica is dropped:
 * A replica's stages hold the same parameters as replica 0's, whose checkpoints every restart
 * resumes from, so dropping one re-shards nothing: the remaining replicas take its micro-batches
 * (the global batch and the data order stay; micro-batch k of a step is the same data wherever
 * it runs) and the job goes on with p fewer workers. Moving layers between stages (a dropped
 * pipeline stage) needs the planner and a checkpoint re-shard; it is refused with a message. */
#include "launch_elastic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "runtime/replan.h"
#include "util/util.h"

static int hm_arg_index(char *const *argv, const char *name) {
  for (int i = 0; argv[i]; i++)
    if (strcmp(argv[i], name) == 0 && argv[i + 1]) return i + 1;
  return -1;
}

/* Parses "a,b,c" into out (cap entries); the count, or -1. */
static int hm_int_list(const char *s, int *out, int cap) {
  int n = 0;
  for (const char *p = s; *p;) {
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v > 1000000 || n == cap) return -1;
    out[n++] = (int)v;
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return -1;
  }
  return n;
}

hm_status hm_elastic_init(hm_elastic *e, char *const *argv, int nworkers, int drop_after) {
  memset(e, 0, sizeof *e);
  e->drop_after = drop_after;
  int n = 0;
  for (; argv[n]; n++) {
    if (n == HM_ELASTIC_MAX_ARGS - 1) return hm_error(HM_ERR_INVALID_ARG, "more than %d worker arguments", n);
    e->argv[n] = argv[n];
  }
  e->argv[n] = NULL;
  e->plan_at = hm_arg_index(argv, "--plan");
  e->cluster_at = hm_arg_index(argv, "--cluster");
  if (e->plan_at >= 0) { /* the plan's layout; dropping a device re-plans */
    hm_strcpy(e->plan_dir, sizeof e->plan_dir, argv[e->plan_at]);
    char *slash = strrchr(e->plan_dir, '/');
    if (slash) *slash = '\0';
    else hm_strcpy(e->plan_dir, sizeof e->plan_dir, ".");
    return HM_OK;
  }
  e->micro_at = hm_arg_index(argv, "--micro");
  const int st = hm_arg_index(argv, "--stages");
  int bounds[66];
  int nb = st >= 0 ? hm_int_list(argv[st], bounds, 66) : 2;
  e->p = nb - 1;
  e->R = e->micro_at >= 0 ? hm_int_list(argv[e->micro_at], e->micro, 64) : 1;
  if (e->p < 1 || e->R < 1 || e->p * e->R != nworkers)
    return hm_error(HM_ERR_INVALID_ARG, "the worker options give %d stage(s) x %d replica(s), not %d workers", e->p, e->R,
                    nworkers);
  if (e->micro_at < 0) e->micro[0] = 1;
  e->devices_at = hm_arg_index(argv, "--devices");
  if (e->devices_at >= 0) {
    char list[4096];
    hm_strcpy(list, sizeof list, argv[e->devices_at]);
    int k = 0;
    for (char *save = NULL, *tok = strtok_r(list, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
      if (k == 256) return hm_error(HM_ERR_INVALID_ARG, "--devices lists more than 256 specs");
      hm_strcpy(e->dev[k++], sizeof e->dev[0], tok);
    }
    e->per_rank_devices = k == nworkers && k != e->p;
  }
  return HM_OK;
}

hm_status hm_elastic_drop(hm_elastic *e, int q, int *nworkers) {
  if (q < 0 || q >= e->R) return hm_error(HM_ERR_INVALID_ARG, "there is no replica %d (the job has %d)", q, e->R);
  if (e->R == 1)
    return hm_error(HM_ERR_INVALID_ARG, "cannot drop replica %d: it is the only one (dropping a pipeline stage needs "
                    "the planner and a checkpoint re-shard)", q);
  const int extra = e->micro[q];
  for (int r = q; r + 1 < e->R; r++) e->micro[r] = e->micro[r + 1];
  e->R--;
  for (int k = 0; k < extra; k++) e->micro[k % e->R]++; /* the same M micro-batches per step */
  if (e->per_rank_devices) {
    for (int r = q * e->p; r + e->p < (e->R + 1) * e->p; r++) memcpy(e->dev[r], e->dev[r + e->p], sizeof e->dev[0]);
    size_t n = 0;
    e->devices_s[0] = '\0';
    for (int r = 0; r < e->R * e->p; r++)
      n += (size_t)snprintf(e->devices_s + n, sizeof e->devices_s - n, "%s%s", r ? "|" : "", e->dev[r]);
    e->argv[e->devices_at] = e->devices_s;
  }
  size_t n = 0;
  for (int r = 0; r < e->R; r++) n += (size_t)snprintf(e->micro_s + n, sizeof e->micro_s - n, "%s%d", r ? "," : "", e->micro[r]);
  if (e->micro_at >= 0) e->argv[e->micro_at] = e->micro_s;
  *nworkers = e->R * e->p;
  memset(e->fails, 0, sizeof e->fails); /* ranks are renumbered */
  return HM_OK;
}

/* "[0,2) [2,4)" of a layout, into buf. */
static const char *hm_bounds_str(const hm_reshard_layout *l, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (int s = 0; s < l->nstages && n < cap; s++)
    n += (size_t)snprintf(buf + n, cap - n, "%s[%d,%d)", s ? " " : "", l->bounds[s], l->bounds[s + 1]);
  return buf;
}

hm_status hm_elastic_replan(hm_elastic *e, const int *drop, int n, const char *resume, int *nworkers) {
  const int k = ++e->replans;
  char dir[4200], plan[4300], ob[512], nb[512];
  snprintf(dir, sizeof dir, "%s/replan%d", e->plan_dir, k);
  snprintf(plan, sizeof plan, "%s/plan.json", dir);
  hm_replan_specs *sp = hm_calloc(1, sizeof *sp, "re-plan specs");
  if (!sp) return HM_ERR_NOMEM;
  hm_reshard_layout old, now;
  double predicted = 0;
  hm_status st = hm_replan_layout(e->argv[e->plan_at], &old, NULL);
  if (st == HM_OK) st = hm_replan_write_specs(e->argv[e->plan_at], e->profile, drop, n, dir, sp);
  if (st == HM_OK) {
    fprintf(stderr, "hetmix: launch: re-plan %d: dropping %s; planning on the rest (%s)\n", k, sp->dropped, sp->cluster);
    fflush(stderr);
    char *args[16] = {"plan", "--cluster", sp->cluster, "--model", sp->model, "--train", sp->train, "-o", plan,
                      "--top", "3", "--max-chunks", "1" /* the runtime runs plain 1F1B */};
    int na = 13;
    if (sp->profile[0]) args[na++] = "--profile", args[na++] = sp->profile;
    args[na] = NULL;
    st = hm_cli_run_self(e->self, args, "hetmix plan (re-plan)");
  }
  if (st == HM_OK) st = hm_replan_layout(plan, &now, &predicted);
  if (st == HM_OK && resume && e->run_dir) {
    char aside[64];
    snprintf(aside, sizeof aside, "replan%d-old-layout", k);
    st = hm_replan_reshard(e->run_dir, resume, &now, aside);
  }
  if (st == HM_OK) {
    fprintf(stderr, "hetmix: launch: re-plan %d: dropped %s; new plan %s: %d workers, stages %s, %d x %d sequences per "
            "step (the same global batch), predicted step %.4g s%s%s%s (stages before: %s)\n", k, sp->dropped, plan,
            now.world, hm_bounds_str(&now, nb, sizeof nb), now.micro_batches, now.batch, predicted,
            resume ? "; re-sharded " : "; no checkpoint to re-shard", resume ? resume : "",
            resume ? " into the run folder" : "",
            hm_bounds_str(&old, ob, sizeof ob));
    hm_strcpy(e->plan_s, sizeof e->plan_s, plan);
    e->argv[e->plan_at] = e->plan_s;
    if (e->cluster_at >= 0) { /* the workers check the new plan against the cluster without the device */
      hm_strcpy(e->cluster_s, sizeof e->cluster_s, sp->cluster);
      e->argv[e->cluster_at] = e->cluster_s;
    }
    *nworkers = now.world;
    memset(e->fails, 0, sizeof e->fails); /* ranks are renumbered */
  }
  free(sp);
  return st;
}

hm_status hm_elastic_reshape(const hm_restart_event *ev, void *user, char *const **argv, int *nworkers) {
  hm_elastic *e = user;
  const int r = ev->res->failed_rank;
  if (e->drop_after <= 0 || r < 0 || r >= HM_ELASTIC_MAX_RANKS) return HM_OK;
  if (++e->fails[r] < e->drop_after) return HM_OK;
  if (e->plan_at >= 0) {
    fprintf(stderr, "hetmix: launch: rank %d (%s%s, device %s) failed %d times: dropping its device\n", r,
            ev->res->host[0] ? "host " : "no heartbeat", ev->res->host, ev->res->device[0] ? ev->res->device : "?",
            e->drop_after);
    HM_TRY(hm_elastic_replan(e, &r, 1, ev->resume_path, nworkers));
    *argv = e->argv;
    return HM_OK;
  }
  if (e->R == 1) return HM_OK; /* nothing to drop: keep restarting as before */
  const int q = r / e->p;
  HM_TRY(hm_elastic_drop(e, q, nworkers));
  fprintf(stderr, "hetmix: launch: rank %d (%s%s) failed %d times: dropping replica %d; %d workers now, --micro %s "
          "(the same global batch)\n", r, ev->res->host[0] ? "host " : "no heartbeat", ev->res->host, e->drop_after, q,
          *nworkers, e->micro_s);
  *argv = e->argv;
  return HM_OK;
}
