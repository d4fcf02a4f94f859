/* Automatic restarts of a job (hm_launch_with_restarts, include/hetmix/runtime.h): run the
 * job; when a worker fails and restarts are left, run it again from the newest step whose every
 * shard is in the peers' memory (ckpt_memory.h), or the newest complete checkpoint of the run's
 * folder when that is newer. The workers restore the data position and the learning-rate
 * schedule from the checkpoint's step, so a resumed run takes the same steps as one that never
 * failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "runtime/ckpt_agent.h"
#include "runtime/ckpt_memory.h"
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

/* One attempt: a fresh heartbeat folder, HETMIX_HEARTBEAT_DIR, HETMIX_ATTEMPT and mem_env (the
 * job's memory folder, may be NULL) added to the caller's extra environment. */
static hm_status hm_attempt(const hm_restart_opts *o, int attempt, char *const *argv, int nworkers,
                            const char *mem_env, hm_launch_result *res) {
  const char *tmp = o->tmp_dir ? o->tmp_dir : getenv("TMPDIR");
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/hetmix-hb-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) return hm_error(HM_ERR_IO, "cannot make a heartbeat folder %s: %s", dir, strerror(errno));
  char hb_env[1100], at_env[64];
  snprintf(hb_env, sizeof hb_env, "HETMIX_HEARTBEAT_DIR=%s", dir);
  snprintf(at_env, sizeof at_env, "HETMIX_ATTEMPT=%d", attempt);
  char *env[HM_RESTART_MAX_ENV + 4];
  int ne = 0;
  env[ne++] = hb_env;
  env[ne++] = at_env;
  if (mem_env) env[ne++] = (char *)mem_env;
  for (int i = 0; o->launch.extra_env && o->launch.extra_env[i]; i++) {
    if (ne == HM_RESTART_MAX_ENV + 3) {
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

/* The job's own memory folder for the peer copies, "<peer root>/hetmix-mem-XXXXXX", into root
 * and "HETMIX_PEER_DIR=<it>" into env; both "" when there are no peer copies or it cannot be made
 * (the restarts then resume from disk only). */
static void hm_mem_root_make(char *root, size_t cap, char *env, size_t env_cap) {
  root[0] = env[0] = '\0';
  const char *peer = hm_ckpt_peer_root();
  if (!peer || snprintf(root, cap, "%s/hetmix-mem-XXXXXX", peer) >= (int)cap || !mkdtemp(root)) {
    root[0] = '\0';
    return;
  }
  snprintf(env, env_cap, "HETMIX_PEER_DIR=%s", root);
}

/* Where the next attempt resumes: the newest step whose every shard is in the job's memory
 * folder (mem_root, "" for none), or run_dir's newest complete checkpoint when that is newer.
 * ev's resume fields are set; HM_ERR_NOT_FOUND when there is neither. */
static hm_status hm_resume_point(const char *run_dir, const char *mem_root, int nworkers, hm_restart_event *ev,
                                 char *disk, char *mem, size_t cap) {
  int64_t ds = -1, ms = -1;
  hm_status st = hm_ckpt_newest_complete(run_dir, disk, cap, &ds);
  if (st != HM_OK && st != HM_ERR_NOT_FOUND) return st;
  if (st != HM_OK) ds = -1;
  if (!mem_root[0] || hm_mem_newest_complete(mem_root, nworkers, mem, cap, &ms) != HM_OK) ms = -1;
  if (ds < 0 && ms < 0) return HM_ERR_NOT_FOUND;
  ev->resume_memory = ms >= ds;
  ev->resume_step = ev->resume_memory ? ms : ds;
  ev->resume_path = ev->resume_memory ? mem : disk;
  return HM_OK;
}

/* Before a restart: o->reshape may replace the command and the worker count (a device
 * dropped); a new layout resumes from the checkpoint re-sharded into the run folder, and the
 * copies in memory (of the old layout) are dropped. An error ends the job (ev->status). */
static void hm_restart_reshape(const hm_restart_opts *o, hm_restart_event *ev, char *const **base, int *nworkers,
                               const char *mem_root, char *resume, size_t cap, char *msg, size_t msg_cap) {
  char *const *was = *base;
  const int was_n = *nworkers;
  hm_status rs = o->reshape(ev, o->user, base, nworkers);
  if (rs != HM_OK) {
    hm_strcpy(msg, msg_cap, hm_last_error());
    ev->restarting = 0, ev->status = rs;
    return;
  }
  if ((*base == was && *nworkers == was_n) || !o->run_dir) return;
  if (mem_root[0]) hm_mem_remove_root(mem_root), mkdir(mem_root, 0700);
  int64_t step = 0;
  ev->resume_memory = 0, ev->resume_path = NULL, ev->resume_step = -1;
  if (hm_ckpt_newest_complete(o->run_dir, resume, cap, &step) == HM_OK) ev->resume_step = step, ev->resume_path = resume;
}

/* The attempts; mem_root/mem_env: the job's memory folder and its variable ("" for none). */
static hm_status hm_restart_loop(const hm_restart_opts *o, hm_launch_result *res, int *restarts, const char *mem_root,
                                 const char *mem_env) {
  char *argv[HM_RESTART_MAX_ARGS];
  char *const *base = o->launch.argv; /* the command without --resume; a reshape replaces it */
  int nworkers = o->launch.nworkers;
  HM_TRY(hm_argv_with_resume(base, NULL, argv, HM_RESTART_MAX_ARGS));
  char resume[4200], mem[4200];
  long long start = 0; /* the step the attempt starts from */
  int stuck_before = 0;
  for (int attempt = 0;; attempt++) {
    hm_status st = hm_attempt(o, attempt, argv, nworkers, mem_env[0] ? mem_env : NULL, res);
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
    hm_restart_event ev = {attempt, st, msg, res, 0, -1, NULL, 0};
    ev.restarting = st == HM_ERR_PEER_DEAD && attempt < o->max_restarts && !(stuck && stuck_before);
    stuck_before = stuck;
    if (ev.restarting && o->run_dir) {
      hm_status cs = hm_resume_point(o->run_dir, mem_root, nworkers, &ev, resume, mem, sizeof resume);
      if (cs != HM_OK && cs != HM_ERR_NOT_FOUND) ev.restarting = 0, ev.status = cs;
    }
    if (ev.restarting && o->reshape) /* e.g. drop a device that keeps failing */
      hm_restart_reshape(o, &ev, &base, &nworkers, mem_root, resume, sizeof resume, msg, sizeof msg);
    st = ev.status;
    if (ev.restarting) {
      HM_TRY(hm_argv_with_resume(base, ev.resume_path, argv, HM_RESTART_MAX_ARGS));
      start = ev.resume_path ? ev.resume_step : 0;
    }
    if (o->on_attempt) o->on_attempt(&ev, o->user);
    if (!ev.restarting) {
      if (st != HM_OK) return hm_error(st, "%s", msg[0] ? msg : hm_last_error());
      return HM_OK;
    }
    if (restarts) *restarts = attempt + 1;
  }
}

hm_status hm_launch_with_restarts(const hm_restart_opts *o, hm_launch_result *res_out, int *restarts) {
  hm_launch_result local;
  hm_launch_result *res = res_out ? res_out : &local;
  if (restarts) *restarts = 0;
  if (!o || o->max_restarts < 0 || !o->launch.argv)
    return hm_error(HM_ERR_INVALID_ARG, "restart: need a command and max_restarts >= 0");
  char mem_root[4200] = "", mem_env[4300] = "";
  if (o->max_restarts > 0 && o->run_dir) hm_mem_root_make(mem_root, sizeof mem_root, mem_env, sizeof mem_env);
  hm_status st = hm_restart_loop(o, res, restarts, mem_root, mem_env);
  if (mem_root[0]) {
    char keep[1200];
    hm_strcpy(keep, sizeof keep, hm_last_error()); /* the job's message, not the clean-up's */
    hm_mem_remove_root(mem_root);
    if (st != HM_OK) hm_error(st, "%s", keep);
  }
  return st;
}
