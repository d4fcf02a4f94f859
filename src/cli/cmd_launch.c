/* `hetmix launch` (start and supervise the workers of a job on this machine), `hetmix worker`
 * (one worker, started by launch, mpirun or srun); `hetmix profile` is in cmd_profile.c.
 * Parsing and printing only; spawning and supervision live in src/runtime/launch.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "launch_elastic.h"
#include "hetmix/comm.h"
#include "hetmix/model.h"
#include "hetmix/pipeline.h"
#include "hetmix/runtime.h"
#include "options.h"
#include "runtime/pipeline_internal.h"
#include "util/util.h"

/* How `hetmix launch` says what each attempt came to (stderr) and, with --events, writes it as
 * one JSON line (the soak benchmark reads those). */
typedef struct launch_report {
  FILE *events;
  hm_elastic *el; /* --drop-after, or NULL */
} launch_report;

static hm_status launch_reshape(const hm_restart_event *ev, void *user, char *const **argv, int *nworkers) {
  launch_report *lr = user;
  return lr->el ? hm_elastic_reshape(ev, lr->el, argv, nworkers) : HM_OK;
}

static const char *const cause_names[] = {"none", "exit", "signal", "silent", "hang"};

static void launch_on_attempt(const hm_restart_event *ev, void *user) {
  launch_report *lr = user;
  const hm_launch_result *r = ev->res;
  if (ev->restarting) {
    fprintf(stderr, "hetmix: launch: attempt %d failed: %s\n", ev->attempt, ev->message);
    if (ev->resume_path)
      fprintf(stderr, "hetmix: launch: restart %d: resuming from %s (step %lld, %s)\n", ev->attempt + 1,
              ev->resume_path, ev->resume_step, ev->resume_memory ? "in the peers' memory" : "on disk");
    else
      fprintf(stderr, "hetmix: launch: restart %d: no complete checkpoint yet, starting over\n", ev->attempt + 1);
  }
  if (!lr->events) return;
  cJSON *j = cJSON_CreateObject();
  cJSON_AddNumberToObject(j, "attempt", ev->attempt);
  cJSON_AddStringToObject(j, "status", ev->status == HM_OK ? "ok" : hm_status_name(ev->status));
  cJSON_AddNumberToObject(j, "rank", r->failed_rank);
  cJSON_AddStringToObject(j, "cause", cause_names[r->cause >= 0 && r->cause <= HM_FAIL_HANG ? r->cause : 0]);
  cJSON_AddStringToObject(j, "host", r->host);
  cJSON_AddStringToObject(j, "device", r->device);
  cJSON_AddNumberToObject(j, "failed_wall_s", r->failed_wall_s);
  cJSON_AddNumberToObject(j, "first_step_wall_s", r->first_step_wall_s);
  cJSON_AddNumberToObject(j, "steps_seen", (double)r->steps_seen);
  cJSON_AddNumberToObject(j, "stop_s", r->stop_s);
  cJSON_AddBoolToObject(j, "restarting", ev->restarting);
  cJSON_AddNumberToObject(j, "resume_step", (double)ev->resume_step);
  if (ev->resume_path) cJSON_AddStringToObject(j, "resume_from", ev->resume_memory ? "memory" : "disk");
  cJSON_AddStringToObject(j, "message", ev->message ? ev->message : "");
  char *txt = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (txt) fprintf(lr->events, "%s\n", txt), fflush(lr->events);
  free(txt);
}

/* The value after `--dump` among the worker arguments, or NULL. */
static const char *worker_dump_dir(char *const *wargv) {
  for (int i = 0; wargv[i]; i++)
    if (strcmp(wargv[i], "--dump") == 0 && wargv[i + 1]) return wargv[i + 1];
  return NULL;
}

int hm_cmd_launch(int argc, char **argv) {
  hm_launch_opts opts = HM_LAUNCH_OPTS_INIT;
  const char *plan_path = NULL, *cluster_path = NULL, *model_path = NULL, *events_path = NULL, *launcher = NULL;
  const char *profile_path = NULL;
  int timeout_s = 0, netns = 0, max_restarts = 0, watchdog_s = HM_WATCHDOG_FLOOR_MS / 1000, drop_after = 0, nexclude = 0;
  int exclude[64];
  double predicted_step_s = 0;
  const hm_opt table[] = {
      HM_OPT_ROW(HM_OPT_INT, "nworkers", 'n', &opts.nworkers, 1, 4096, "N", "number of workers"),
      HM_OPT_STR_ROW("plan", 0, &plan_path, "FILE", "start the workers of a plan"),
      HM_OPT_STR_ROW("cluster", 0, &cluster_path, "C", "with --plan: refuse the plan unless it fits this cluster spec"),
      HM_OPT_STR_ROW("model", 0, &model_path, "M", "with --plan: refuse the plan unless it fits this model spec"),
      HM_OPT_FLAG_ROW("netns", 0, &netns, "with --cluster: run each host's workers in the network namespace named like the host (scripts/testbed.sh)"),
      HM_OPT_FLAG_ROW("tag-output", 0, &opts.tag_output, "prefix each output line with \"[rank R] \""),
      HM_OPT_ROW(HM_OPT_INT, "grace-ms", 0, &opts.grace_ms, 1, 600000, "MS",
                 "SIGTERM to SIGKILL delay when stopping workers [2000]"),
      HM_OPT_ROW(HM_OPT_INT, "timeout", 0, &timeout_s, 1, 30 * 86400, "S", "stop the job after S seconds [no limit]"),
      HM_OPT_SECTION_ROW("failures (docs/runtime.md, \"Failure model\"):"),
      HM_OPT_ROW(HM_OPT_INT, "max-restarts", 0, &max_restarts, 0, 1000000, "N",
                 "after a failure, stop the rest and start the job again up to N times,\n"
                 "resuming from the newest complete checkpoint of the workers' --dump [0]"),
      HM_OPT_ROW(HM_OPT_INT, "silence-ms", 0, &opts.silence_ms, 100, 3600000, "MS",
                 "a worker whose heartbeat stops for max(MS, 5 x the longest gap between\n"
                 "two beats seen) has failed [1000]"),
      HM_OPT_ROW(HM_OPT_INT, "watchdog", 0, &watchdog_s, 0, 30 * 86400, "S",
                 "a worker that completes no step for max(S, 5 x the longest step seen,\n"
                 "5 x the plan's predicted step) is hung (its first step: 60 s; checkpoint\n"
                 "snapshots and evaluations timed alike on their own); 0: off [1]"),
      HM_OPT_STR_ROW("events", 0, &events_path, "FILE", "one JSON line per attempt (failure, cause, times)"),
      HM_OPT_ROW(HM_OPT_INT, "drop-after", 0, &drop_after, 0, 1000000, "K",
                 "a rank that failed K times is dropped: with --plan its device (re-plan\n"
                 "on the rest, checkpoint re-sharded); else its data-parallel replica, the\n"
                 "others taking its micro-batches (worker --stages/--micro) [0: never]"),
      HM_OPT_LIST_ROW("exclude", 0, exclude, 64, &nexclude, 0, 4095, "R0[,R1..]",
                      "drop these ranks before starting (as --drop-after)"),
      HM_OPT_STR_ROW("profile", 0, &profile_path, "P",
                     "with --plan: the profile a re-plan plans with; with --netns: its measured\n"
                     "links between hosts (hetmix profile --netns) are the tuner's figures"),
      HM_OPT_STR_ROW("launcher", 0, &launcher, "CMD",
                     "start the N ranks through this command line instead (words split\n"
                     "at spaces, the worker command appended), e.g. \"srun -n 4\n"
                     "--kill-on-bad-exit=1\": it gets HETMIX_STORE_ADDR and HETMIX_SECRET,\n"
                     "each task takes its rank from it; heartbeats still name ranks"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "launch",
      "hetmix launch -n N [options] [-- command [args...]]\n"
      "       hetmix launch --plan plan.json [--cluster C] [--model M] [options] [-- worker options]",
      "Starts N workers on this machine (ranks 0..N-1) with the environment hmcomm bootstraps\n"
      "from: HETMIX_RANK, HETMIX_WORLD_SIZE, HETMIX_LOCAL_RANK, HETMIX_LOCAL_WORLD_SIZE,\n"
      "HETMIX_STORE_ADDR (127.0.0.1 and a free port) and HETMIX_SECRET (fresh per job).\n"
      "Without a command each worker runs `hetmix worker`. SIGINT/SIGTERM/SIGHUP are forwarded\n"
      "to the workers; the first worker that fails stops the others (SIGTERM, then SIGKILL after\n"
      "the grace period) and is named. Exit status: 0 when all succeed, else the failed worker's\n"
      "status (128+signal when killed); 2 for a bad option.\n"
      "\n"
      "A worker whose heartbeat stops (--silence-ms) or that completes no step (--watchdog) has\n"
      "failed too; with --max-restarts the job then starts again from its newest complete\n"
      "checkpoint (each attempt gets HETMIX_ATTEMPT=k).\n"
      "\n"
      "With --plan, N is the plan's number of ranks and each runs `hetmix worker --plan plan.json`\n"
      "plus the worker options after `--` (e.g. --steps 100 --out run); a plan that does not fit\n"
      "the --cluster / --model spec files (or its own embedded ones) is refused before starting.\n"
      "\n"
      "With --cluster C --netns (a testbed from scripts/testbed.sh), the cluster's ranks run each in\n"
      "the network namespace named like its host, listening on that namespace's address, with\n"
      "their pool and the link figures in HETMIX_POOL, HETMIX_LINK_POOL, HETMIX_LINK_CROSS: those\n"
      "`hetmix profile --netns` measured when --profile P has them, else the file's.",
      table, NULL, 0, 1};
  hm_opt_result parsed = {NULL, 0, 0};
  const int prc = hm_opts_parse(&spec, argc, argv, &parsed);
  if (prc != HM_OPTS_CONTINUE) return prc;
  if (timeout_s > 0) opts.timeout_ms = timeout_s > INT_MAX / 1000 ? INT_MAX : timeout_s * 1000;
  int i = parsed.rest;
  char self[PATH_MAX];
  ssize_t self_n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (self_n <= 0) return hm_cli_fail(NULL, "cannot find the hetmix executable (/proc/self/exe)");
  self[self_n] = '\0';
  /* default command: this same executable's `worker` subcommand (+ --plan and worker options) */
  char *wargv[64];
  int wn = 0;
  wargv[wn++] = self;
  wargv[wn++] = "worker";
  if (plan_path) {
    hm_pipe_plan *pl = calloc(1, sizeof *pl);
    if (!pl) return hm_cli_fail(NULL, "out of memory");
    hm_status pst = hm_pipe_plan_load(plan_path, cluster_path, model_path, pl);
    int nranks = pl->nranks;
    predicted_step_s = pl->predicted_step_s;
    free(pl);
    if (pst != HM_OK)
      return hm_cli_fail_status(pst, "launch", "make the plan for this cluster and model with `hetmix plan`");
    if (opts.nworkers > 0 && opts.nworkers != nranks)
      return hm_cli_fail("leave -n out with --plan", "the plan has %d ranks but -n says %d", nranks, opts.nworkers);
    opts.nworkers = nranks;
    wargv[wn++] = "--plan";
    wargv[wn++] = (char *)plan_path;
    if (cluster_path) wargv[wn++] = "--cluster", wargv[wn++] = (char *)cluster_path;
    if (model_path) wargv[wn++] = "--model", wargv[wn++] = (char *)model_path;
  } else if (model_path || (profile_path && !netns) || (cluster_path && !netns)) {
    return hm_cli_fail(NULL, "--cluster, --model and --profile go with a --plan (--cluster and --profile also with "
                       "--netns); give --plan too");
  }
  hm_launch_hosts hosts = {0};
  if (netns) {
    if (!cluster_path) return hm_cli_fail("scripts/testbed.sh up --out C writes one", "--netns needs --cluster C");
    hm_status hst = hm_launch_hosts_from_cluster(cluster_path, plan_path, profile_path, &hosts);
    if (hst != HM_OK)
      return hm_cli_fail_status(hst, "launch --netns",
                                profile_path ? "bring the testbed up (scripts/testbed.sh up); --profile takes what "
                                               "`hetmix profile --netns -o P` writes"
                                             : "bring the testbed up: scripts/testbed.sh up");
    if (opts.nworkers > 0 && opts.nworkers != hosts.n) {
      hm_launch_hosts_free(&hosts);
      return hm_cli_fail("leave -n out with --netns", "the cluster has %d ranks, the job %d", hosts.n, opts.nworkers);
    }
    opts.nworkers = hosts.n;
    opts.rank_netns = hosts.netns;
    opts.rank_env = (char *const *const *)hosts.env;
    opts.store_host = hosts.store_host;
    if (launcher || drop_after > 0 || nexclude > 0) {
      hm_launch_hosts_free(&hosts);
      return hm_cli_fail(NULL, "--netns places each rank in its host's namespace: it cannot be combined with "
                         "--launcher, --drop-after or --exclude");
    }
  }
  if (opts.nworkers <= 0)
    return hm_cli_fail("for example: hetmix launch -n 4 -- ./my_worker", "how many workers? give -n N or --plan");
  if (i < argc && !(plan_path && argv[i][0] == '-')) {
    opts.argv = argv + i;
  } else {
    for (; i < argc; i++) {
      if (wn == 63) return hm_cli_fail(NULL, "too many worker options");
      wargv[wn++] = argv[i];
    }
    wargv[wn] = NULL;
    opts.argv = wargv;
  }

  char *largv[128], lbuf[2048];
  if (launcher) { /* the launcher's words, then the worker command */
    if (hm_strcpy(lbuf, sizeof lbuf, launcher) != 0) return hm_cli_fail(NULL, "--launcher is longer than %zu bytes", sizeof lbuf - 1);
    int ln = 0;
    for (char *save = NULL, *tok = strtok_r(lbuf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
      if (ln == 63) return hm_cli_fail(NULL, "--launcher has more than 63 words");
      largv[ln++] = tok;
    }
    if (ln == 0) return hm_cli_fail("e.g. --launcher \"srun -n 4 --kill-on-bad-exit=1\"", "--launcher is empty");
    for (int k = 0; opts.argv[k]; k++) {
      if (ln == 127) return hm_cli_fail(NULL, "too many words for --launcher and the worker command");
      largv[ln++] = opts.argv[k];
    }
    largv[ln] = NULL;
    opts.argv = largv;
    opts.external = 1;
  }
  hm_elastic *el = NULL;
  if (drop_after > 0 || nexclude > 0) {
    if (launcher) return hm_cli_fail(NULL, "--drop-after and --exclude cannot change the rank count of a --launcher");
    el = calloc(1, sizeof *el);
    if (!el) return hm_cli_fail(NULL, "out of memory");
    hm_status est = hm_elastic_init(el, opts.argv, opts.nworkers, drop_after);
    el->self = self, el->profile = profile_path, el->run_dir = worker_dump_dir(el->argv);
    if (est == HM_OK && el->plan_at >= 0 && nexclude > 0) /* plan again without those devices */
      est = hm_elastic_replan(el, exclude, nexclude, NULL, &opts.nworkers);
    /* highest replica first, so the lower ones keep their numbers */
    for (int pass = 0; est == HM_OK && el->plan_at < 0 && pass < nexclude; pass++) {
      int best = -1;
      for (int k = 0; k < nexclude; k++)
        if (exclude[k] >= 0 && (best < 0 || exclude[k] > exclude[best])) best = k;
      const int q = exclude[best] / el->p;
      for (int k = 0; k < nexclude; k++)
        if (exclude[k] >= 0 && exclude[k] / el->p == q) exclude[k] = -1;
      if (q < el->R) est = hm_elastic_drop(el, q, &opts.nworkers);
    }
    if (est != HM_OK) {
      free(el);
      return hm_cli_fail_status(est, "launch", "--drop-after and --exclude drop a --plan job's devices (re-plan) or "
                                "data-parallel replicas of a worker --stages/--micro layout");
    }
    if (nexclude > 0 && el->plan_at < 0) fprintf(stderr, "hetmix: launch: excluded: %d workers, --micro %s\n", opts.nworkers, el->micro_s);
    opts.argv = el->argv;
  }
  const char *run_dir = worker_dump_dir(opts.argv);
  if (max_restarts > 0 && !run_dir)
    fprintf(stderr, "hetmix: launch: note: the workers have no --dump DIR (with --ckpt-every N): a restart starts "
            "the training over\n");
  double floor_s = watchdog_s;
  if (watchdog_s > 0 && HM_WATCH_FACTOR * predicted_step_s > floor_s) floor_s = HM_WATCH_FACTOR * predicted_step_s;
  opts.step_deadline_ms = floor_s * 1000 > INT_MAX ? INT_MAX : (int)(floor_s * 1000);
  launch_report lr = {NULL, drop_after > 0 ? el : NULL};
  if (events_path && !(lr.events = fopen(events_path, "a")))
    return free(el), hm_launch_hosts_free(&hosts),
           hm_cli_fail(NULL, "cannot open --events %s: %s", events_path, strerror(errno));
  hm_restart_opts ro = {opts, max_restarts, run_dir, NULL, launch_on_attempt, &lr, NULL};
  ro.reshape = launch_reshape;
  hm_launch_result res;
  hm_status st = hm_launch_with_restarts(&ro, &res, NULL);
  free(el);
  if (lr.events) fclose(lr.events);
  hm_launch_hosts_free(&hosts);
  if (st == HM_OK) return 0;
  const char *hint = NULL;
  if (st == HM_ERR_PEER_DEAD)
    hint = "the failed rank's own output above says why; rerun with --tag-output to tell ranks apart";
  else if (st == HM_ERR_NOT_FOUND)
    hint = "give the worker command after `--` with a path or a name in PATH";
  else if (st == HM_ERR_TIMEOUT)
    hint = "raise --timeout, or look at the workers' output for the step that hangs";
  hm_cli_fail_status(st, "launch", hint);
  if (st == HM_ERR_PEER_DEAD) return res.term_signal ? 128 + res.term_signal : (res.exit_code > 0 ? res.exit_code : 1);
  if (st == HM_ERR_ABORTED && res.interrupt_signal) return 128 + res.interrupt_signal;
  return 1;
}

/* ---------------------------------------------------------------- hetmix worker */

static int worker_selftest(void) {
  hm_launch_env env;
  hm_status st = hm_launch_env_read(&env);
  if (st != HM_OK) return hm_cli_fail_status(st, "worker", "start workers with hetmix launch, mpirun or srun");
  hm_comm_t comm = NULL;
  st = hm_comm_init_env(&comm, NULL);
  if (st != HM_OK) return hm_cli_fail_status(st, "worker: hmcomm bootstrap", NULL);
  const int r = hm_comm_rank(comm), n = hm_comm_size(comm);
  int64_t mine = r + 1, sum = 0;
  st = hm_comm_allreduce(comm, &mine, &sum, 1, HM_INT64, HM_SUM);
  if (st == HM_OK && sum != (int64_t)n * (n + 1) / 2)
    st = hm_error(HM_ERR_INTERNAL, "allreduce of rank+1 gave %lld, expected %lld", (long long)sum,
                  (long long)n * (n + 1) / 2);
  int32_t from_left = -1;
  if (st == HM_OK && n > 1) { /* ring: send my rank right, receive my left neighbour's */
    int32_t me = r;
    hm_request_t rs = NULL, rr = NULL;
    st = hm_group_start();
    if (st == HM_OK) st = hm_comm_isend(comm, &me, 1, HM_INT32, (r + 1) % n, &rs);
    if (st == HM_OK) st = hm_comm_irecv(comm, &from_left, 1, HM_INT32, (r + n - 1) % n, &rr);
    hm_status s2 = hm_group_end();
    if (st == HM_OK) st = s2;
    if (rs && (s2 = hm_request_wait(rs)) != HM_OK && st == HM_OK) st = s2;
    if (rr && (s2 = hm_request_wait(rr)) != HM_OK && st == HM_OK) st = s2;
    if (st == HM_OK && from_left != (r + n - 1) % n)
      st = hm_error(HM_ERR_INTERNAL, "ring exchange gave %d, expected %d", from_left, (r + n - 1) % n);
  }
  if (st == HM_OK) st = hm_comm_barrier(comm);
  if (st != HM_OK) {
    hm_comm_abort(comm);
    hm_comm_destroy(comm);
    return hm_cli_fail_status(st, "worker selftest", NULL);
  }
  hm_comm_destroy(comm);
  printf("hetmix worker: rank %d of %d (local %d of %d, source %s): selftest ok\n", r, n, env.local_rank,
         env.local_size, env.source);
  fflush(stdout);
  return 0;
}

static void worker_progress(const hm_train_progress *p, void *user) {
  (void)user;
  printf("step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | ETA %.0f s\n", p->step, p->steps,
         (double)p->loss, (double)p->lr, (double)p->grad_norm, p->tokens_per_s, p->eta_s);
  fflush(stdout);
}

/* A rank found persistently slow: its own worker names it, with its host and device. */
static void worker_on_slow(const hm_slow_report *r, void *user) {
  const char *device = user;
  if (!r->self) return;
  char host[64] = "?";
  if (gethostname(host, sizeof host) != 0) hm_strcpy(host, sizeof host, "?");
  host[sizeof host - 1] = '\0';
  fprintf(stderr, "hetmix worker: fail-slow: rank %d (replica %d, stage %d, host %s, device %s) at step %d: "
          "compute %.3f s per step, expected %.3f s (%.1fx)\n", r->rank, r->replica, r->stage, host, device, r->step,
          r->measured_s, r->expected_s, r->expected_s > 0 ? r->measured_s / r->expected_s : 0.0);
  fflush(stderr);
}

static void worker_on_warning(const char *msg, void *user) {
  (void)user;
  fprintf(stderr, "hetmix worker: warning: %s (checkpoint skipped; training goes on)\n", msg);
  fflush(stderr);
}

/* Fills the layout, model and micro-batch size from a plan file (the plan's device per rank is
 * applied once the rank is known). *layout is allocated (free()). */
static hm_status worker_apply_plan(const char *path, const char *cluster, const char *model, hm_pipeline_options *po,
                                   hm_train_options *t, hm_pipe_plan **layout) {
  hm_pipe_plan *pl = hm_calloc(1, sizeof *pl, "plan layout");
  if (!pl) return HM_ERR_NOMEM;
  hm_status st = hm_pipe_plan_load(path, cluster, model, pl);
  if (st != HM_OK) {
    free(pl);
    return st;
  }
  t->config = pl->cfg; /* the plan's model itself: no second description */
  hm_strcpy(t->model_name, sizeof t->model_name, pl->model_name);
  t->batch = pl->micro_batch;
  po->nstages = pl->nstages;
  po->nchunks = pl->nchunks;
  memcpy(po->stage_layers, pl->stage_layers, sizeof(int) * (size_t)(pl->nstages * pl->nchunks + 1));
  po->nreplicas = pl->nreplicas;
  memcpy(po->micro, pl->micro, sizeof(int) * (size_t)pl->nreplicas);
  for (int r = 0; r < pl->nreplicas; r++)
    for (int s = 0; s < pl->nstages; s++) po->tp[r][s] = pl->tp[r][s];
  *layout = pl;
  return HM_OK;
}

int hm_cmd_worker(int argc, char **argv) {
  hm_train_options t;
  hm_train_defaults(&t);
  t.device = "cpu:threads=1";
  hm_pipeline_options po;
  memset(&po, 0, sizeof po);
  hm_pipe_plan *plan_layout = NULL;
  po.train = &t;
  po.nreplicas = 1;
  po.micro[0] = 1;
  const char *devices = NULL, *plan_path = NULL, *cluster_path = NULL, *model_path = NULL, *model = NULL;
  int quiet = 0, have_stages = 0, have_layout = 0, selftest = 0, nbounds = 0, nmicro = 0, ntp = 0;
  int tp_list[HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES];
  const hm_opt opts[] = {
      HM_OPT_SECTION_ROW("layout (either a plan or the options after it):"),
      HM_OPT_STR_ROW("plan", 0, &plan_path, "FILE",
                     "plan.json from `hetmix plan`: stages, layers, replicas, micro-batches,\n"
                     "micro-batch size, model and each rank's device backend"),
      HM_OPT_STR_ROW("cluster", 0, &cluster_path, "FILE", "with --plan: refuse the plan unless it fits this cluster spec"),
      HM_OPT_STR_ROW("model", 0, &model, "NAME|FILE.json",
                     "gpt-mini, llama-mini, tiny, or L6,C384,NH6,V256,T256 [gpt-mini]; a spec\n"
                     "file (a path or *.json): the model to train, or with --plan: refuse the plan\n"
                     "unless it fits it"),
      HM_OPT_LIST_ROW("stages", 0, po.stage_layers, HM_PIPE_MAX_STAGES + 1, &nbounds, 0, 1000000, "B0,B1,..,Bp",
                      "layer bounds of the p stages over the model's L+2 layers\n(default: one stage with every layer;"
                      " with --chunks V, of the p*V\nvirtual stages)"),
      HM_OPT_ROW(HM_OPT_INT, "chunks", 0, &po.nchunks, 1, HM_PIPE_MAX_STAGES, "V",
                 "model chunks per stage: interleaved 1F1B, stage s holding virtual\n"
                 "stages s, p+s, .. of --stages [1]"),
      HM_OPT_LIST_ROW("micro", 0, po.micro, HM_PIPE_MAX_REPLICAS, &nmicro, 0, 1000000, "M0[,M1,..]",
                      "micro-batches per step of each replica (count = replicas) [1]"),
      HM_OPT_LIST_ROW("tp", 0, tp_list, HM_PIPE_MAX_REPLICAS * HM_PIPE_MAX_STAGES, &ntp, 1, 64, "T[,..]",
                      "tensor-parallel degree: one for every stage, one per stage (p),\n"
                      "or one per stage of each replica (R*p, replica by replica) [1]"),
      HM_OPT_STR_ROW("device", 0, &t.device, "SPEC", "device of every worker [cpu:threads=1]"),
      HM_OPT_STR_ROW("devices", 0, &devices, "S0|S1|..",
                     "one device spec per stage (p of them), per stage of each replica\n"
                     "(R*p; a stage's tensor-parallel ranks share it) or per worker"),
      HM_OPT_ROW(HM_OPT_INT, "bucket", 0, &po.layers_per_bucket, 1, 1000000, "N",
                 "layers per data-parallel allreduce bucket [1]"),
      HM_OPT_FLAG_ROW("sync-after-backward", 0, &po.sync_after_backward,
                      "all-reduce the gradient buckets after the last backward instead of\n"
                      "overlapping each with the rest of it (the same result bitwise)"),
      HM_OPT_FLAG_ROW("rebalance", 0, &po.rebalance,
                      "after each step move micro-batches between replicas toward\n"
                      "equal finish times, from their measured compute (same update)"),
      HM_OPT_SECTION_ROW("training (defaults as `hetmix train`):"),
      HM_OPT_STR_ROW("data", 0, &t.data, "FILE", "token file [default corpus under --data-dir]"),
      HM_OPT_STR_ROW("data-dir", 0, &t.data_dir, "DIR", "[data]"),
      HM_OPT_ROW(HM_OPT_INT, "steps", 0, &t.steps, 0, 1e8, "N", "optimizer steps [1000]"),
      HM_OPT_ROW(HM_OPT_INT, "batch", 0, &t.batch, 0, 1e8, "B", "sequences per micro-batch [8]"),
      HM_OPT_ROW(HM_OPT_INT, "seq", 0, &t.seq_len, 0, 1e8, "T", "tokens per sequence [the model's T]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "lr", 0, &t.lr, 0, FLT_MAX, "X", "peak learning rate [1e-3]"),
      HM_OPT_ROW(HM_OPT_INT, "warmup", 0, &t.warmup, 0, 1e8, "N", "linear warm-up steps [100]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "min-lr-frac", 0, &t.min_lr_frac, 0, FLT_MAX, "X", "cosine decay to lr*X"),
      HM_OPT_ROW(HM_OPT_FLOAT, "grad-clip", 0, &t.grad_clip, 0, FLT_MAX, "X", "gradient norm clip [1.0]"),
      HM_OPT_ROW(HM_OPT_FLOAT, "weight-decay", 0, &t.weight_decay, 0, FLT_MAX, "X", "AdamW weight decay [0.1]"),
      HM_OPT_ROW(HM_OPT_U64, "seed", 0, &t.seed, 0, HM_OPT_U64_MAX, "N", "initialization and batch order [1337]"),
      HM_OPT_ROW(HM_OPT_INT, "eval-every", 0, &t.eval_every, 0, 1e8, "N",
                 "validation loss every N steps and at the last (replica 0) [0: never]"),
      HM_OPT_ROW(HM_OPT_INT, "eval-batches", 0, &t.eval_batches, 1, 1e8, "N", "validation batches per evaluation [8]"),
      HM_OPT_SECTION_ROW("output:"),
      HM_OPT_STR_ROW("out", 0, &t.out_dir, "DIR", "metrics.jsonl (written by replica 0's last stage)"),
      HM_OPT_STR_ROW("trace", 0, &po.trace_path, "FILE", "measured Chrome/Perfetto trace of the last --trace-steps steps"),
      HM_OPT_ROW(HM_OPT_INT, "trace-steps", 0, &po.trace_steps, 1, 1000000, "N", "[1]"),
      HM_OPT_STR_ROW("dump", 0, &po.dump_dir, "DIR", "replica 0's stages save stage<s>.hmc after the last step"),
      HM_OPT_ROW(HM_OPT_INT, "ckpt-every", 0, &t.ckpt_every, 0, 1e8, "N",
                 "also every N steps, in DIR/step-<N>/ (0: only the last step) [0]"),
      HM_OPT_ROW(HM_OPT_INT, "keep", 0, &t.keep, 0, 1e8, "K", "keep the newest K step-<N>/ folders of --dump (0: all) [3]"),
      HM_OPT_ROW(HM_OPT_INT, "mem-every", 0, &po.mem_every, 0, 1e8, "N",
                 "with --ckpt-every: also snapshot into memory only (own and ring peer's\n"
                 "copy, no disk) every N steps; a restart resumes from it (0: off) [0]"),
      HM_OPT_STR_ROW("resume", 0, &t.resume, "DIR",
                     "continue from a --dump of the same layout and options (params, AdamW\n"
                     "moments, step; the data position follows from the step)"),
      HM_OPT_ROW(HM_OPT_INT, "stop-after", 0, &t.stop_after, 0, 1e8, "N",
                 "stop once step N is done (the LR schedule still spans --steps)"),
      HM_OPT_FLAG_ROW("quiet", 0, &quiet, "no progress lines"),
      HM_OPT_SECTION_ROW("checks:"),
      HM_OPT_FLAG_ROW("selftest", 0, &selftest,
                      "bootstrap hmcomm from the environment, allreduce and a ring\n"
                      "exchange, print `selftest ok` (launcher tests use it)"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "worker", "hetmix worker [options]      (started by `hetmix launch`, mpirun or srun)",
      "Runs one worker of a pipeline + data-parallel job. Its rank comes from the launcher's\n"
      "environment (HETMIX_*, OMPI_COMM_WORLD_*, PMI_*, SLURM_*); world ranks go replica by replica,\n"
      "stage by stage, tensor-parallel rank by rank (replica*p + stage without --tp).",
      opts, NULL, 0, 0};
  hm_opt_result parsed = {NULL, 0, 0};
  const int prc = hm_opts_parse(&spec, argc, argv, &parsed);
  if (prc != HM_OPTS_CONTINUE) return prc;
  if (selftest) return worker_selftest();
  if (nbounds > 0) {
    if (nbounds < 2) return hm_cli_fail("e.g. --stages 0,3,8 for two stages", "--stages needs at least two bounds");
    const int v = po.nchunks > 1 ? po.nchunks : 1;
    if ((nbounds - 1) % v != 0)
      return hm_cli_fail("e.g. --chunks 2 --stages 0,2,4,6,8 for two stages of two chunks",
                         "--stages lists %d virtual stages, not a multiple of --chunks %d", nbounds - 1, v);
    po.nstages = (nbounds - 1) / v;
    have_stages = have_layout = 1;
  }
  if (nmicro > 0) po.nreplicas = nmicro, have_layout = 1;
  if (po.nchunks > 0) have_layout = 1;
  if (ntp > 0) {
    have_layout = 1;
    const int p = po.nstages > 0 ? po.nstages : 1;
    if (ntp != 1 && ntp != p && ntp != p * po.nreplicas)
      return hm_cli_fail("e.g. --tp 2, or one value per stage, or per stage of each replica",
                         "--tp lists %d values for %d stages x %d replicas", ntp, p, po.nreplicas);
    for (int r = 0; r < po.nreplicas; r++)
      for (int s = 0; s < p; s++) po.tp[r][s] = tp_list[ntp == 1 ? 0 : ntp == p ? s : r * p + s];
  }
  if (model && (strchr(model, '/') || strstr(model, ".json"))) { /* a model spec file: checks a --plan against it */
    model_path = model;
  }
  if (model && !(model_path && plan_path)) { /* the model to train (a name, a shape or a spec file) */
    have_layout = 1;
    hm_status st = hm_model_config_resolve(model, &t.config, t.model_name, sizeof t.model_name);
    if (st != HM_OK) return hm_cli_fail_status(st, "--model", NULL);
  }
  if (plan_path) {
    if (have_layout || devices)
      return hm_cli_fail("give either --plan or --model/--stages/--micro/--devices", "--plan sets the layout");
    hm_status st = worker_apply_plan(plan_path, cluster_path, model_path, &po, &t, &plan_layout);
    if (st != HM_OK)
      return hm_cli_fail_status(st, "worker", "make the plan for this cluster and model with `hetmix plan`");
    have_stages = 1;
  } else if (cluster_path) {
    return hm_cli_fail(NULL, "--cluster only checks a --plan");
  }
  if (!have_stages && po.nchunks > 1 && !plan_path)
    return hm_cli_fail("e.g. --chunks 2 --stages 0,2,4,6,8", "--chunks needs --stages");
  if (!have_stages) {
    po.nstages = 1;
    po.stage_layers[0] = 0;
    po.stage_layers[1] = hm_model_num_layers(&t.config);
  }

  hm_launch_env env;
  hm_status st = hm_launch_env_read(&env);
  if (st != HM_OK)
    return hm_cli_fail_status(st, "worker", "start workers with `hetmix launch -n N -- hetmix worker ...`, mpirun or srun");
  /* this worker's device: one spec for all, or the stage's / rank's entry of --devices */
  char dev_spec[256];
  if (devices) {
    char list[4096];
    hm_strcpy(list, sizeof list, devices);
    char *specs[HM_PIPE_MAX_STAGES * HM_PIPE_MAX_REPLICAS];
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(list, "|", &save); tok && n < (int)(sizeof specs / sizeof specs[0]);
         tok = strtok_r(NULL, "|", &save))
      specs[n++] = tok;
    int idx = -1, replica, stage, tp_rank;
    hm_pipeline_locate(&po, env.rank, &replica, &stage, &tp_rank);
    if (n == po.nstages) idx = stage;
    else if (n == po.nstages * po.nreplicas) idx = replica * po.nstages + stage;
    else if (n == hm_pipeline_world_size(&po)) idx = env.rank;
    if (idx < 0 || idx >= n)
      return hm_cli_fail("give one spec per stage or one per worker, separated by '|'",
                         "--devices lists %d specs for %d stages x %d replicas", n, po.nstages, po.nreplicas);
    hm_strcpy(dev_spec, sizeof dev_spec, specs[idx]);
    t.device = dev_spec;
  }
  if (plan_layout) {
    if (env.rank < 0 || env.rank >= plan_layout->nranks) {
      int n = plan_layout->nranks;
      free(plan_layout);
      return hm_cli_fail("start exactly as many workers as the plan has ranks (hetmix launch --plan does)",
                         "the plan has %d ranks, this worker is rank %d of %d", n, env.rank, env.size);
    }
    hm_strcpy(dev_spec, sizeof dev_spec, plan_layout->backend[env.rank]);
    t.device = dev_spec;
    /* the plan predicts class 0's stages (replica 0's devices): a rank on the same device as
     * replica 0's stage gets that prediction per micro-batch, others judge against themselves */
    const int s0 = env.rank % plan_layout->nstages;
    if (strcmp(plan_layout->backend[s0], dev_spec) == 0 && plan_layout->micro[0] > 0)
      po.expected_busy_s = plan_layout->predicted_stage_busy_s[s0] / plan_layout->micro[0];
    free(plan_layout);
    plan_layout = NULL;
  }
  st = hm_pipeline_check(&po, env.size);
  if (st != HM_OK) return hm_cli_fail_status(st, "worker", "the layout must match the model and the number of workers");

  hm_comm_t world = NULL;
  st = hm_comm_init_env(&world, NULL);
  if (st != HM_OK) return hm_cli_fail_status(st, "worker: hmcomm bootstrap", NULL);
  if (!quiet) {
    t.on_progress = worker_progress;
    t.user = NULL;
  }
  po.on_slow = worker_on_slow;
  po.slow_user = (void *)t.device;
  po.on_warning = worker_on_warning;
  hm_pipeline_result res;
  st = hm_pipeline_run(&po, world, &res);
  if (st != HM_OK) {
    int rc = hm_cli_fail_status(st, "worker", NULL);
    hm_comm_destroy(world);
    return rc;
  }
  hm_comm_destroy(world);
  if (!quiet && env.rank == hm_pipeline_rank_of(&po, 0, po.nstages - 1, 0)) {
    printf("done: %d steps, loss %.4f, step %.3f s, %.0f tok/s; stage compute per step:", res.steps_done,
           (double)res.last_loss, res.step_time_s, res.tokens_per_s);
    for (int s = 0; s < po.nstages; s++) printf(" %.3f", res.stage_busy_s[s]);
    printf(" s\n");
  }
  return 0;
}
