/* Automatic restarts of a job (hm_launch_with_restarts, include/hetmix/runtime.h): run the
 * job; when a worker fails and restarts are left, run it again from the newest complete
 * checkpoint of the run's folder. The workers restore the data position and the learning-rate
 * schedule from the checkpoint's step, so a resumed run takes the same steps as one that never
 * failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "util/util.h"

#define HM_RESTART_MAX_ARGS 256
#define HM_RESTART_MAX_ENV 64

/* argv with "--resume PATH" (replacing an existing value), or argv as it is when path is NULL;
 * out holds cap pointers. */
static hm_status hm_argv_with_resume(char *const *argv, const char *path, char **out, int cap) {
  int n = 0, replaced = 0;
  for (int i = 0; argv[i]; i++) {
    if (n + 3 >= cap) return hm_error(HM_ERR_INVALID_ARG, "restart: more than %d worker arguments", cap - 3);
    out[n++] = argv[i];
    if (path && strcmp(argv[i], "--resume") == 0 && argv[i + 1]) {
      out[n++] = (char *)path;
      i++;
      replaced = 1;
    }
  }
  if (path && !replaced) out[n++] = "--resume", out[n++] = (char *)path;
  out[n] = NULL;
  return HM_OK;
}

/* Removes a heartbeat folder and the rank files in it (nothing else is ever in it). */
static void hm_remove_hb_dir(const char *dir, int n) {
  char p[1200];
  for (int r = 0; r < n; r++) {
    snprintf(p, sizeof p, "%s/rank%d", dir, r);
    unlink(p);
    snprintf(p, sizeof p, "%s/rank%d.tmp", dir, r);
    unlink(p);
    snprintf(p, sizeof p, "%s/rank%d.end", dir, r);
    unlink(p);
  }
  rmdir(dir);
}

/* One attempt: a fresh heartbeat folder, HETMIX_HEARTBEAT_DIR and HETMIX_ATTEMPT added to the
 * caller's extra environment. */
static hm_status hm_attempt(const hm_restart_opts *o, int attempt, char *const *argv, int nworkers,
                            hm_launch_result *res) {
  const char *tmp = o->tmp_dir ? o->tmp_dir : getenv("TMPDIR");
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/hetmix-hb-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) return hm_error(HM_ERR_IO, "cannot make a heartbeat folder %s: %s", dir, strerror(errno));
  char hb_env[1100], at_env[64];
  snprintf(hb_env, sizeof hb_env, "HETMIX_HEARTBEAT_DIR=%s", dir);
  snprintf(at_env, sizeof at_env, "HETMIX_ATTEMPT=%d", attempt);
  char *env[HM_RESTART_MAX_ENV + 3];
  int ne = 0;
  env[ne++] = hb_env;
  env[ne++] = at_env;
  for (int i = 0; o->launch.extra_env && o->launch.extra_env[i]; i++) {
    if (ne == HM_RESTART_MAX_ENV + 2) {
      hm_remove_hb_dir(dir, 0);
      return hm_error(HM_ERR_INVALID_ARG, "restart: more than %d extra environment entries", HM_RESTART_MAX_ENV);
    }
    env[ne++] = o->launch.extra_env[i];
  }
  env[ne] = NULL;
  hm_launch_opts lo = o->launch;
  lo.argv = argv;
  lo.nworkers = nworkers;
  lo.extra_env = env;
  lo.heartbeat_dir = dir;
  hm_status st = hm_launch_run(&lo, res);
  hm_remove_hb_dir(dir, lo.nworkers);
  return st;
}

hm_status hm_launch_with_restarts(const hm_restart_opts *o, hm_launch_result *res_out, int *restarts) {
  hm_launch_result local;
  hm_launch_result *res = res_out ? res_out : &local;
  if (restarts) *restarts = 0;
  if (!o || o->max_restarts < 0 || !o->launch.argv)
    return hm_error(HM_ERR_INVALID_ARG, "restart: need a command and max_restarts >= 0");
  char *argv[HM_RESTART_MAX_ARGS];
  char *const *base = o->launch.argv; /* the command without --resume; a reshape replaces it */
  int nworkers = o->launch.nworkers;
  HM_TRY(hm_argv_with_resume(base, NULL, argv, HM_RESTART_MAX_ARGS));
  char resume[4200];
  long long start = 0; /* the step the attempt starts from */
  int stuck_before = 0;
  for (int attempt = 0;; attempt++) {
    hm_status st = hm_attempt(o, attempt, argv, nworkers, res);
    char msg[1200];
    hm_strcpy(msg, sizeof msg, st == HM_OK ? "" : hm_last_error());
    /* a failure that comes back before any step twice in a row (a bad option, a missing file)
     * is not one a restart cures */
    const int stuck = res->steps_seen <= start;
    if (st == HM_ERR_PEER_DEAD && stuck && stuck_before && attempt < o->max_restarts) {
      size_t n = strlen(msg);
      snprintf(msg + n, sizeof msg - n, "; not restarting: attempts %d and %d both failed before completing a step",
               attempt - 1, attempt);
      msg[sizeof msg - 1] = '\0';
    }
    hm_restart_event ev = {attempt, st, msg, res, 0, -1, NULL};
    ev.restarting = st == HM_ERR_PEER_DEAD && attempt < o->max_restarts && !(stuck && stuck_before);
    stuck_before = stuck;
    if (ev.restarting && o->run_dir) {
      int64_t step = 0;
      hm_status cs = hm_ckpt_newest_complete(o->run_dir, resume, sizeof resume, &step);
      if (cs == HM_OK) ev.resume_step = step, ev.resume_path = resume;
      else if (cs != HM_ERR_NOT_FOUND) ev.restarting = 0, st = cs, ev.status = cs;
    }
    if (ev.restarting && o->reshape) { /* e.g. drop a device that keeps failing */
      hm_status rs = o->reshape(&ev, o->user, &base, &nworkers);
      if (rs != HM_OK) {
        hm_strcpy(msg, sizeof msg, hm_last_error());
        ev.restarting = 0, st = rs, ev.status = rs;
      }
    }
    if (ev.restarting) {
      HM_TRY(hm_argv_with_resume(base, ev.resume_path, argv, HM_RESTART_MAX_ARGS));
      start = ev.resume_path ? ev.resume_step : 0;
    }
    if (o->on_attempt) o->on_attempt(&ev, o->user);
    if (!ev.restarting) {
      if (st != HM_OK) return hm_error(st, "%s", st == ev.status && msg[0] ? msg : hm_last_error());
      return HM_OK;
    }
    if (restarts) *restarts = attempt + 1;
  }
}
