/* `hetmix profile`: measure per-layer forward/backward time and memory of the local device types
 * of a cluster spec, and the link between local workers, and write the profile the planner reads
 * (`hetmix plan --profile`). Parsing and printing only; measuring is src/runtime/profile*.c. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/profile.h"
#include "hetmix/spec.h"
#include "options.h"
#include "util/util.h"

static void print_line(const char *line, void *user) {
  (void)user;
  printf("%s\n", line);
  fflush(stdout);
}

/* Runs the rest of the command in a child that leads a session of its own, as `hetmix launch`
 * starts each worker (src/runtime/launch.c): with Linux's autogroup scheduling the caller's
 * session (its shell, build jobs, a benchmark driver) shares the CPU as one group, so on a loaded
 * host a profile measured in it got a smaller share than the workers it predicts (one-layer
 * figures 2-2.5x a run's at load average 10-20). Returns 0 in the child (go on; also when the
 * process leads its session already or fork failed), 1 in the parent with *rc the child's exit
 * status, after at most timeout_s (then the child is killed). */
static int own_session(int timeout_s, int *rc) {
  if (getsid(0) == getpid()) return 0;
  fflush(stdout);
  fflush(stderr);
  const pid_t parent = getpid(), pid = fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    setsid();
    return 0;
  }
  const uint64_t deadline = hm_deadline_after_ms((uint64_t)timeout_s * 1000u);
  int ws = 0;
  for (;;) {
    const pid_t w = waitpid(pid, &ws, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      *rc = hm_cli_fail(NULL, "profile: lost the measuring process: %s", strerror(errno));
      return 1;
    }
    if (hm_deadline_passed(deadline)) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
      }
      *rc = hm_cli_fail("measure fewer types or micro-batch sizes at a time", "profile: the measurement took over %d s; stopped it", timeout_s);
      return 1;
    }
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
  }
  *rc = WIFEXITED(ws) ? WEXITSTATUS(ws) : hm_cli_fail(NULL, "profile: the measuring process was killed by signal %d",
                                                      WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
  return 1;
}

/* The measured spread of the layer entries: what `hetmix plan` turns into the prediction's
 * uncertainty. */
static void print_spread(const hm_profile *p) {
  double worst = 0, sum = 0;
  int n = 0, reps = 0, at = -1;
  for (int i = 0; i < p->nlayers; i++) {
    const hm_profile_layer *e = &p->layers[i];
    if (e->spread <= 0) continue;
    sum += e->spread, n++, reps += e->reps;
    if (e->spread > worst) worst = e->spread, at = i;
  }
  if (!n) return;
  printf("\nspread of the layer figures (half the interquartile range over the median; the larger of within and\n"
         "between passes): mean %.1f%%, largest %.1f%% (%s %s, micro-batch %lld); %d timed rounds kept in all\n",
         100 * sum / n, 100 * worst, p->layers[at].device_type, p->layers[at].kind, (long long)p->layers[at].micro_batch,
         reps);
}

int hm_cmd_profile(int argc, char **argv) {
  const char *cluster_path = NULL, *model_path = NULL, *train_path = NULL, *out_path = "profile.json";
  char types_buf[1024] = "";
  hm_profile_options o;
  hm_profile_options_default(&o);
  o.progress = print_line;
  static const char *const transports[] = {"shm", "tcp", NULL};
  const char *types = NULL;
  int mbs[HM_PROFILE_MAX_MBS], nmbs = 0, no_links = 0;
  const hm_opt opts[] = {
      HM_OPT_STR_ROW("cluster", 0, &cluster_path, "C", "cluster spec (JSON)"),
      HM_OPT_STR_ROW("model", 0, &model_path, "M", "model spec (JSON) with a gpt2 \"config\""),
      HM_OPT_STR_ROW("train", 0, &train_path, "T", "training spec: its micro_batch_sizes are measured"),
      HM_OPT_STR_ROW("output", 'o', &out_path, "FILE", "where to write the profile [profile.json]"),
      HM_OPT_LIST_ROW("micro-batches", 0, mbs, HM_PROFILE_MAX_MBS, &nmbs, 1, 65536, "LIST",
                      "micro-batch sizes, e.g. 1,2,4 [the training spec's, else 1,2,4]"),
      HM_OPT_ROW(HM_OPT_INT, "reps", 0, &o.reps, 1, 1000, "N",
                 "timed rounds per measurement, over all passes; outliers dropped,\n"
                 "the median of the rest kept [9]"),
      HM_OPT_ROW(HM_OPT_INT, "warmup", 0, &o.warmup, 0, 1000, "N", "untimed rounds first, in every pass [1]"),
      HM_OPT_ROW(HM_OPT_INT, "passes", 0, &o.passes, 1, 16, "N",
                 "measure the types in N passes of reps/N rounds, in alternating\n"
                 "order (a, b, then b, a, ...), and keep each figure's median over\n"
                 "the passes: every type sees the same load [3]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "min-time", 0, &o.min_s, 0, 86400, "S",
                 "measure the layers for at least S seconds: passes are repeated\n"
                 "until then (at most 256) and each figure is their median, so a\n"
                 "slow stretch of a shared machine moves few of them [0: --passes only]"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "budget", 0, &o.budget_s, 0, 86400, "S",
                 "stop timing a layer kind and size after S seconds of timed rounds\n"
                 "(at least one round) [2]; 0: always all --reps"),
      HM_OPT_STR_ROW("types", 0, &types, "a,b", "only these device types [every type with a backend]"),
      HM_OPT_FLAG_ROW("concurrent", 0, &o.concurrent,
                      "time every selected type at the same time, one process each\n"
                      "(the figures then include what the others take from the host,\n"
                      "as when the workers of a heterogeneous plan run together)"),
      HM_OPT_ROW(HM_OPT_INT, "copies", 0, &o.copies, 1, 16, "K",
                 "K processes per type timed at once (as K workers of that type)\n"
                 "[1]; the slowest copy's figures are written (a step waits for it)"),
      HM_OPT_FLAG_ROW("no-links", 0, &no_links, "do not probe links (the cluster spec's figures stay)"),
      HM_OPT_CHOICE_ROW("link-transport", 0, &o.link_transport, transports,
                        "which probe the intra-host link entries record [shm]"),
      HM_OPT_FLAG_ROW("netns", 0, &o.netns,
                      "also probe the links between the cluster's hosts, each the network\n"
                      "namespace named like it (a testbed, scripts/testbed.sh): two hosts\n"
                      "of one pool (\"pool\") and of two pools (\"cross\"), written as the\n"
                      "inter_host entries of the type pairs whose hosts are all of that kind"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {
      "profile", "hetmix profile --cluster C --model M [--train T] [-o profile.json] [options]",
      "Measures, on this machine, each layer kind of the model (embedding, block, head) on each\n"
      "device type of the cluster that has a \"backend\" string: forward and backward seconds per\n"
      "micro-batch (median of N timed rounds after the warm-up) and the device memory of a\n"
      "one-layer stage; and the link between two local worker processes (hmcomm send/recv\n"
      "ping-pong over shared memory and TCP, fitted to latency + bytes / bandwidth). Writes the\n"
      "profile for `hetmix plan --profile` (format: docs/spec.md; method: docs/profile.md).",
      opts, NULL, 0, 0};
  hm_opt_result res = {NULL, 0, 0};
  int rc = hm_opts_parse(&spec, argc, argv, &res);
  if (rc != HM_OPTS_CONTINUE) return rc;
  rc = 0;
  if (own_session(4 * (o.timeout_s > 0 ? o.timeout_s : 3600), &rc)) return rc;
  if (no_links) o.links = 0;
  o.n_micro_batches = nmbs;
  for (int i = 0; i < nmbs; i++) o.micro_batches[i] = mbs[i];
  if (types) {
    if (hm_strcpy(types_buf, sizeof types_buf, types) != 0) return hm_cli_fail(NULL, "--types: list too long");
    o.ntypes = 0;
    for (char *save = NULL, *tok = strtok_r(types_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      if (o.ntypes == 16) return hm_cli_fail(NULL, "--types: at most 16 names");
      o.types[o.ntypes++] = tok;
    }
    if (o.ntypes == 0) return hm_cli_fail("for example: --types cpu,ref", "--types: no type names in '%s'", types);
  }
  if (!cluster_path || !model_path)
    return hm_cli_fail("for example: hetmix profile --cluster examples/local-2backend.json --model examples/gpt-mini.json",
                       "profile needs --cluster and --model");

  hm_cluster c;
  hm_model m;
  hm_train t;
  hm_profile p;
  memset(&c, 0, sizeof c);
  memset(&m, 0, sizeof m);
  memset(&p, 0, sizeof p);
  hm_train_default(&t);
  hm_status st;
  if ((st = hm_cluster_load(cluster_path, &c)) != HM_OK) {
    rc = hm_cli_fail_status(st, "cluster", "fix the field named above (format: docs/spec.md)");
    goto done;
  }
  if ((st = hm_model_load(model_path, &m)) != HM_OK) {
    rc = hm_cli_fail_status(st, "model", "fix the field named above (format: docs/spec.md)");
    goto done;
  }
  if (train_path) {
    if ((st = hm_train_load(train_path, &t)) != HM_OK) {
      rc = hm_cli_fail_status(st, "training", "fix the field named above (format: docs/spec.md)");
      goto done;
    }
    if (o.n_micro_batches == 0) {
      o.n_micro_batches = t.n_micro_batch_sizes;
      memcpy(o.micro_batches, t.micro_batch_sizes, sizeof(int64_t) * (size_t)t.n_micro_batch_sizes);
    }
  }
  o.cluster = &c;
  o.model = &m;
  printf("profiling model \"%s\" on cluster \"%s\" (%d timed rounds", m.name, c.name, o.reps);
  if (o.concurrent || o.copies > 1) printf(" after %d warm-up%s", o.warmup, o.concurrent ? "; every type at once" : "");
  else printf(" in %d passes, %d warm-up each", o.passes, o.warmup);
  if (o.copies > 1) printf("; %d processes per type", o.copies);
  if (o.min_s > 0) printf("; passes repeated for at least %g s, each figure their median", o.min_s);
  printf(")\n");
  fflush(stdout);
  hm_profile_report rep;
  st = hm_profile_measure(&o, &p, &rep);
  if (st != HM_OK) {
    /* the library's message already starts with "profile: " or names the part that failed */
    const char *msg = hm_last_error();
    rc = hm_cli_fail(st == HM_ERR_NO_FIT ? "give smaller --micro-batches, or a device type with more memory"
                            : st == HM_ERR_TIMEOUT || st == HM_ERR_PEER_DEAD
                                ? "the link probe failed; rerun with --no-links to keep the cluster spec's links"
                                : NULL,
                     "%s%s", strncmp(msg, "profile", 7) ? "profile: " : "", msg[0] ? msg : hm_status_name(st));
    goto done;
  }
  if (rep.nfits) {
    printf("\n%-5s %12s %16s %9s %12s   (one-way time = latency + max(0, bytes - burst) / bandwidth)\n", "link",
           "latency(us)", "bandwidth(GB/s)", "burst(B)", "max fit err");
    for (int i = 0; i < rep.nfits; i++)
      printf("%-5s %12.2f %16.3f %9.0f %11.1f%%%s\n", rep.fits[i].transport, 1e6 * rep.fits[i].latency,
             rep.fits[i].bandwidth / 1e9, rep.fits[i].burst, 100 * rep.fits[i].max_rel_err,
             !strcmp(rep.fits[i].transport, o.link_transport) ? "   <- written as intra_host"
             : strcmp(rep.fits[i].transport, "pool") && strcmp(rep.fits[i].transport, "cross") ? ""
                                                                                               : "   <- inter_host, for type pairs whose hosts are all this kind");
    printf("%12s", "bytes");
    for (int i = 0; i < rep.nfits; i++) printf("  %9s(us)  %7s", rep.fits[i].transport, "fit");
    printf("\n");
    for (int k = 0; k < rep.fits[0].npoints; k++) {
      printf("%12.0f", rep.fits[0].bytes[k]);
      for (int i = 0; i < rep.nfits; i++) {
        const hm_link_fit *f = &rep.fits[i];
        if (k >= f->npoints || f->bytes[k] != rep.fits[0].bytes[k]) { /* probed at fewer sizes */
          printf("  %13s  %7s", "-", "-");
          continue;
        }
        printf("  %13.2f  %6.1f%%", 1e6 * f->seconds[k],
               100 * (hm_link_fit_time(f, f->bytes[k]) / f->seconds[k] - 1));
      }
      printf("\n");
    }
  }
  if ((st = hm_profile_write(&p, out_path)) != HM_OK) {
    rc = hm_cli_fail_status(st, "writing the profile", NULL);
    goto done;
  }
  print_spread(&p);
  printf("\nwrote %s: %d layer entries for %d device type%s, %d link entr%s, in %.1f s%s\n", out_path, p.nlayers,
         rep.ntypes_measured, rep.ntypes_measured == 1 ? "" : "s", p.nlinks, p.nlinks == 1 ? "y" : "ies", rep.seconds,
         rep.nskipped ? " (some sizes did not fit: see above)" : "");
  printf("next: hetmix plan --cluster %s --model %s --profile %s\n", cluster_path, model_path, out_path);
done:
  hm_profile_free(&p);
  hm_model_free(&m);
  hm_cluster_free(&c);
  return rc;
}
