/* Automatic restarts (hetmix launch --max-restarts): a fault-injection matrix over a small
 * 2-stage model. Each trial injects one fault on the job's first attempt (HETMIX_FAULT, see
 * src/runtime/heartbeat.h): kill -9 of a random rank at a random step, SIGSTOP of a rank, a
 * kill during a checkpoint write, two ranks killed in one step, a full checkpoint folder
 * (`test_restart diskfull`, its own ctest entry: it mounts a small tmpfs and is skipped when it
 * cannot). Every trial must finish, name the failed rank, and end with parameters and AdamW
 * moments bitwise equal to an uninterrupted run's, on f32 and f64 devices. The random choices
 * come from a seed printed first (HETMIX_TEST_SEED=<n> repeats a run). Also: the newest
 * complete checkpoint is never a partial one, and the fail-slow rule, alone and end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <sys/mount.h>

#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "runtime/ckpt_memory.h"
#include "runtime/failslow.h"
#include "runtime/heartbeat.h"
#include "runtime/watch.h"
#include "util/files.h"
#include "util/util.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"
#define STEPS 12
#define HM_TEST_SKIP 77

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];
static uint64_t rng_state;
/* the model and stages of run_job: the tiny one, or one with enough compute per step (tens of
 * ms) for the fail-slow rule's 10 ms floor */
static const char *job_model = MODEL, *job_stages = "0,3,8", *job_steps = "12";
/* one more launch option of run_job and its value (--launcher, --watchdog) */
static const char *job_lopt = "--grace-ms", *job_lval = "2000";

/* Teardown of the tests that change the job above: the defaults back even when the test failed
 * half-way (a failed assertion leaves the test at once), so the next test runs its own job. */
static int job_defaults(void **state) {
  (void)state;
  job_model = MODEL, job_stages = "0,3,8", job_steps = "12";
  job_lopt = "--grace-ms", job_lval = "2000";
  return 0;
}

static uint64_t rnd(uint64_t n) {
  rng_state = hm_splitmix64(rng_state);
  return rng_state % n;
}

/* --max-restarts of run_job, a --resume of its workers (NULL: none), their --mem-every (NULL:
 * none) */
static const char *job_restarts = "3", *job_resume = NULL, *job_mem_every = NULL;
/* --ckpt-every of run_job */
static const char *job_ckpt_every = "2";

/* A restartable job: `nranks` (2: stages 0,3,8; 4: the same x 2 replicas; 3: stage 1 tensor-
 * parallel over 2 ranks, --tp 1,2), --dump dir with a checkpoint every 2 steps, HETMIX_FAULT =
 * fault (NULL: none). Returns the exit status (-1 at the
 * deadline); stderr into err, the launcher's events (JSON lines) into ev. */
static int run_job(const char *dir, int nranks, int f64, const char *fault, char *err, size_t cap, char *ev,
                   size_t evcap) {
  char errp[300], evp[300], n_s[8];
  snprintf(errp, sizeof errp, "%s.err", dir);
  snprintf(evp, sizeof evp, "%s.events", dir);
  snprintf(n_s, sizeof n_s, "%d", nranks);
  unlink(evp);
  char *argv[48] = {(char *)hetmix_bin, "launch", "-n", n_s, "--max-restarts", (char *)job_restarts, "--timeout", "150", "--events",
                    evp, (char *)job_lopt, (char *)job_lval, "--",
                    (char *)hetmix_bin, "worker", "--model", (char *)job_model, "--data", tokpath, "--steps", (char *)job_steps,
                    "--batch", "2", "--stages", (char *)job_stages, "--quiet", "--dump", (char *)dir,
                    "--ckpt-every", (char *)job_ckpt_every, "--keep", "2"};
  int n = 32;
  if (nranks == 4) argv[n++] = "--micro", argv[n++] = "1,1";
  if (nranks == 3) argv[n++] = "--tp", argv[n++] = "1,2";
  if (job_resume) argv[n++] = "--resume", argv[n++] = (char *)job_resume;
  if (job_mem_every) argv[n++] = "--mem-every", argv[n++] = (char *)job_mem_every;
  if (f64) argv[n++] = "--device", argv[n++] = "ref:dtype=f64";
  argv[n] = NULL;
  if (fault) setenv("HETMIX_FAULT", fault, 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  int st = hm_t_wait(pid, 180.0);
  err[0] = ev[0] = '\0';
  hm_t_read_file(errp, err, cap);
  hm_t_read_file(evp, ev, evcap);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* The same state in two checkpoints: step, data position and every tensor bitwise. */
static void assert_same_state(const char *a, const char *b) {
  hm_ckpt x, y;
  if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) fail_msg("reading %s, %s: %s", a, b, hm_last_error());
  assert_int_equal(x.meta.step, y.meta.step);
  assert_int_equal(x.meta.data_position, y.meta.data_position);
  assert_int_equal(x.n_tensors, y.n_tensors);
  for (int i = 0; i < x.n_tensors; i++)
    if (x.tensors[i].numel != y.tensors[i].numel || hm_ckpt_elem_size(&x) != hm_ckpt_elem_size(&y) ||
        memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
      fail_msg("tensor %s differs between %s and %s", x.tensors[i].name, a, b);
  hm_ckpt_free(&x);
  hm_ckpt_free(&y);
}

static void reference(const char *name, int nranks, int f64) {
  char dir[300], err[16384], ev[4096];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  if (access(dir, F_OK) == 0) return;
  if (run_job(dir, nranks, f64, NULL, err, sizeof err, ev, sizeof ev) != 0)
    fail_msg("the uninterrupted run %s failed:\n%s", name, err);
}

/* One trial: the job finishes, its first attempt failed naming `rank` (-1: any) with `cause`
 * ("" any), and the final state equals the reference's bitwise. */
static void trial(const char *name, int nranks, int f64, const char *fault, int rank, const char *cause) {
  char ref[300], dir[300], err[32768], ev[8192], a[400], b[400];
  snprintf(ref, sizeof ref, "%s/ref%d%s", work, nranks, f64 ? "-f64" : "");
  reference(strrchr(ref, '/') + 1, nranks, f64);
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  const double t0 = hm_t_now();
  int rc = run_job(dir, nranks, f64, fault, err, sizeof err, ev, sizeof ev);
  if (rc != 0) fail_msg("%s (HETMIX_FAULT=%s) did not finish (status %d):\n%s", name, fault, rc, err);
  if (!strstr(ev, "\"attempt\":0,\"status\":\"peer dead\"") || !strstr(ev, "\"restarting\":true"))
    fail_msg("%s: the first attempt did not fail and restart:\n%s\n%s", name, ev, err);
  if (rank >= 0) {
    char want[64];
    snprintf(want, sizeof want, "\"rank\":%d,\"cause\":\"%s\"", rank, cause);
    if (!strstr(ev, want)) fail_msg("%s: the failure was not named as %s:\n%s\n%s", name, want, ev, err);
  }
  if (!strstr(err, "on host ") || !strstr(err, f64 ? ", device ref" : ", device cpu")) fail_msg("%s: no host and device named:\n%s", name, err);
  for (int s = 0; s < 2; s++) {
    snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", dir, s);
    assert_same_state(a, b);
  }
  print_message("  %-14s HETMIX_FAULT=%-34s finished in %.1f s, bitwise equal to the uninterrupted run\n", name, fault,
                hm_t_now() - t0);
}

/* The events of trial `name` resumed from step `step` taken from the peers' memory. */
static void assert_resumed_from_memory(const char *name, int step) {
  char evp[300], ev[8192], want[96];
  snprintf(evp, sizeof evp, "%s/%s.events", work, name);
  hm_t_read_file(evp, ev, sizeof ev);
  snprintf(want, sizeof want, "\"resume_step\":%d,\"resume_from\":\"memory\"", step);
  if (!strstr(ev, want)) fail_msg("%s: the restart did not resume from step %d in memory (%s):\n%s", name, step, want, ev);
}

/* A kill right after a checkpoint's snapshot, before its background write can complete: the
 * restart resumes from that snapshot's step (every shard is in memory, the owners' and the ring
 * peers' copies), not from the previous checkpoint complete on disk; nothing is redone. */
static void test_kill_after_snapshot_resumes_from_it(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 2 * (1 + (int)rnd(STEPS / 2 - 1)); /* right after snapshot `step` */
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill-snap", 2, 0, fault, rank, "signal");
  assert_resumed_from_memory("kill-snap", step);
}

/* Snapshots to memory every step (--mem-every 1) between the disk checkpoints every 2: a kill at
 * an odd step resumes from that very step, bitwise; also on the tensor-parallel layout. */
static void test_mem_every_step_loses_nothing(void **state) {
  (void)state;
  char fault[96];
  int rank = (int)rnd(2), step = 1 + 2 * (int)rnd(STEPS / 2 - 1); /* between two disk checkpoints */
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  job_mem_every = "1";
  trial("mem1", 2, 0, fault, rank, "signal");
  assert_resumed_from_memory("mem1", step);
  rank = (int)rnd(3), step = 1 + 2 * (int)rnd(STEPS / 2 - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("mem1-tp", 3, 0, fault, rank, "signal");
  job_mem_every = NULL;
  assert_resumed_from_memory("mem1-tp", step);
}

/* A shard copy in a memory folder: "<run>/<sub>step-<N>/stage<s>.hmc" of step `header_step`. */
static void mem_shard(const char *run, const char *sub, int step, int header_step, int stage) {
  char dir[400], path[500];
  snprintf(dir, sizeof dir, "%s/%sstep-%08d", run, sub, step);
  assert_int_equal(hm_make_dirs(dir, 0700, 0), HM_OK);
  snprintf(path, sizeof path, "%s/stage%d.hmc", dir, stage);
  hm_ckpt_meta m;
  memset(&m, 0, sizeof m);
  assert_int_equal(hm_model_config_lookup("tiny", &m.config), HM_OK);
  m.layer_first = stage, m.layer_last = stage + 1, m.step = (uint64_t)header_step, m.data_position = 8u * (uint64_t)header_step;
  m.run_id = 0x77, m.stage_index = stage, m.stage_count = 2, m.micro_batches = 2, m.batch = 4;
  float x[5] = {1, 2, 3, 4, (float)step};
  hm_ckpt_tensor t = {"param/x", 5, x};
  assert_int_equal(hm_ckpt_write(path, &m, &t, 1), HM_OK);
}

/* The newest step complete in memory, without processes: step 6 lacks stage 1 anywhere, so step
 * 4 is taken, stage 0 from its owner's copy (linked in) and stage 1 from its ring peer's held
 * copy (the owner's copy is lost with its host); a copy whose header is another step does not
 * count. Its manifest verifies. Once stage 1 of step 6 is held too, step 6 is the newest. */
static void test_memory_step_from_own_and_held_copies(void **state) {
  (void)state;
  char root[300], run[400], path[600];
  snprintf(root, sizeof root, "%s/memtier", work);
  snprintf(run, sizeof run, "%s/hmpeer-0-0000000000000077", root);
  mem_shard(run, "own/", 4, 4, 0);
  mem_shard(run, "", 4, 4, 1);
  mem_shard(run, "own/", 6, 6, 0);
  mem_shard(run, "own/", 8, 8, 0);
  mem_shard(run, "", 8, 7, 1); /* a file of another step under step 8's name */
  int64_t step = -1;
  assert_int_equal(hm_mem_newest_complete(root, 2, path, sizeof path, &step), HM_OK);
  assert_int_equal(step, 4);
  hm_ckpt_manifest m;
  assert_int_equal(hm_ckpt_manifest_read(path, &m, NULL, 0), HM_OK);
  assert_int_equal(m.step, 4);
  assert_int_equal(m.data_position, 32);
  assert_int_equal(hm_ckpt_manifest_nshards(&m), 2);
  assert_int_equal(hm_ckpt_manifest_verify(path, &m), HM_OK);
  mem_shard(run, "", 6, 6, 1);
  assert_int_equal(hm_mem_newest_complete(root, 2, path, sizeof path, &step), HM_OK);
  assert_int_equal(step, 6);
  assert_int_equal(hm_mem_remove_root(root), HM_OK);
  assert_int_equal(access(root, F_OK), -1);
  assert_int_equal(hm_mem_newest_complete(root, 2, path, sizeof path, &step), HM_ERR_NOT_FOUND);
}

/* A snapshot after every step, steps of about 2 s (rank 0 slowed 60x from the first step on):
 * the watchdog's step deadline is 5x the first step (start-up included), then 5x the longest
 * step. The step's completion and the snapshot phase reach the launcher as one progress mark
 * (hm_hb_step_phase); as two writes, a launcher reading between them counted the instant up to
 * the second as a step, the step deadline fell to the 1 s floor and the second step was taken
 * for a hang (seen once under load; a race, so this run guards the path rather than forcing it).
 * No restart: the run must simply finish. */
static void test_snapshot_every_step_is_no_hang(void **state) {
  (void)state;
  char dir[300], err[32768], ev[4096];
  snprintf(dir, sizeof dir, "%s/snap-every-step", work);
  job_steps = "3", job_ckpt_every = "1", job_restarts = "0";
  const int rc = run_job(dir, 2, 0, "slow:rank=0:step=0:factor=60", err, sizeof err, ev, sizeof ev);
  job_steps = "12", job_ckpt_every = "2", job_restarts = "3";
  if (rc != 0 || strstr(err, "made no progress")) fail_msg("the run with a snapshot after every step failed (%d):\n%s", rc, err);
}

static void test_kill_random_rank_at_random_step(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill", 2, 0, fault, rank, "signal");
}

/* A tensor-parallel layout (stage 1 split over ranks 1 and 2) checkpoints each rank's shard; a
 * killed rank of either stage resumes from them bitwise. */
static void test_tp_kill_random_rank(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(3), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill-tp", 3, 0, fault, rank, "signal");
}

/* The folder of a run's peer copies under root (hmpeer-<uid>-<run>), or "" while none. */
static void peer_run_dir(const char *root, char *out, size_t cap) {
  out[0] = '\0';
  DIR *d = opendir(root);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strncmp(e->d_name, "hmpeer-", 7) == 0) snprintf(out, cap, "%s/%s", root, e->d_name);
  closedir(d);
}

/* A resume of the tensor-parallel layout from a checkpoint, ending bitwise equal to the
 * uninterrupted run; `what` names it. */
static void tp_resume_equal(const char *name, const char *from, const char *what) {
  char dir[300], ref[300], err[32768], ev[4096], a[400], b[400];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  snprintf(ref, sizeof ref, "%s/ref3", work);
  job_resume = from, job_restarts = "0";
  const int rc = run_job(dir, 3, 0, NULL, err, sizeof err, ev, sizeof ev);
  job_resume = NULL, job_restarts = "3";
  if (rc != 0) fail_msg("resuming from %s (%s) failed:\n%s", from, what, err);
  for (int s = 0; s < 2; s++) {
    snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
    snprintf(b, sizeof b, "%s/stage%d.hmc", dir, s);
    assert_same_state(a, b);
  }
}

/* Tensor-parallel shards in the peers' memory: rank 2 (stage 1's second tensor-parallel rank)
 * is killed at step 9 with no restart; the newest checkpoint complete in memory resumes
 * bitwise, from the peer folder itself and from the disk manifest of that step with rank 2's
 * disk shard lost (its peer copy stands in). */
static void test_tp_shard_from_peer_copy(void **state) {
  (void)state;
  char root[300], peer[600], mem[800], dir[300], err[32768], ev[4096], disk[400], lost[440];
  reference("ref3", 3, 0);
  snprintf(root, sizeof root, "%s/shm-tp", work);
  snprintf(dir, sizeof dir, "%s/tp-killed", work);
  assert_int_equal(mkdir(root, 0700), 0);
  setenv("HETMIX_PEER_DIR", root, 1);
  job_restarts = "0";
  const int rc = run_job(dir, 3, 0, "kill:rank=2:step=9", err, sizeof err, ev, sizeof ev);
  job_restarts = "3";
  if (rc != 128 + 9) fail_msg("the job with rank 2 killed ended with status %d:\n%s", rc, err);
  int64_t n = 0;
  peer_run_dir(root, peer, sizeof peer);
  if (!peer[0] || hm_ckpt_newest_complete(peer, mem, sizeof mem, &n) != HM_OK)
    fail_msg("no complete checkpoint in the peers' memory (%s): %s", root, hm_last_error());
  setenv("HETMIX_PEER_DIR", "none", 1); /* a run that ends well removes its peer copies: not these yet */
  tp_resume_equal("tp-from-mem", mem, "the peer folder");
  setenv("HETMIX_PEER_DIR", root, 1);
  snprintf(disk, sizeof disk, "%s/step-%08lld", dir, (long long)n);
  snprintf(lost, sizeof lost, "%s/manifest.json", disk);
  const int on_disk = access(lost, F_OK) == 0;
  if (on_disk) {
    snprintf(lost, sizeof lost, "%s/stage1.tp1.hmc", disk);
    assert_int_equal(unlink(lost), 0);
    tp_resume_equal("tp-from-disk", disk, "the disk manifest, rank 2's shard lost");
  }
  unsetenv("HETMIX_PEER_DIR");
  print_message("  tp-peer        rank 2 killed at step 9: step %lld resumed bitwise from the peer folder%s\n", (long long)n,
                on_disk ? " and from the disk manifest with stage1.tp1.hmc lost" : "");
}

static void test_sigstop_is_a_silent_rank(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "stop:rank=%d:step=%d", rank, step);
  trial("stop", 2, 0, fault, rank, "silent");
}

static void test_kill_during_checkpoint_write(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 2 * (1 + (int)rnd(STEPS / 2 - 1)); /* a checkpointed step */
  snprintf(fault, sizeof fault, "ckptkill:rank=%d:step=%d", rank, step);
  trial("ckptkill", 2, 0, fault, rank, "signal");
}

static void test_two_ranks_killed_in_one_step(void **state) {
  (void)state;
  char fault[128];
  const int a = (int)rnd(4), b = (a + 1 + (int)rnd(3)) % 4, step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d;kill:rank=%d:step=%d", a, step, b, step);
  trial("kill2", 4, 0, fault, -1, "");
}

/* Under an external launcher (a stand-in for srun that starts the ranks and stops the rest when
 * one fails): the killed rank is named from the heartbeats (it died without an orderly end, the
 * others were stopped by SIGTERM), and the restarted job ends bitwise equal. */
static void test_external_launcher_restart(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  job_lopt = "--launcher", job_lval = HM_SOURCE_DIR "/tests/runtime/fake_srun.sh -n 2";
  trial("srun-kill", 2, 0, fault, rank, "exit");
  job_lopt = "--grace-ms", job_lval = "2000";
}

/* How late the watchdog named a hang: the launcher's "made no progress for X s ... deadline Y s"
 * and the time from the fault's announcement to the failure in the events. Named within the
 * deadline: X and the detection time exceed Y by at most one poll period (50 ms) plus the
 * launcher's own wake-up delay on a loaded machine, bounded here by 0.5 s. */
static void assert_named_within_deadline(const char *name, const char *err, const char *ev) {
  const char *p = strstr(err, "made no progress for ");
  const char *q = p ? strstr(p, "watchdog's deadline ") : NULL;
  const char *f = strstr(err, "hetmix fault: hang rank ");
  const char *e = strstr(ev, "\"failed_wall_s\":");
  double idle = 0, limit = 0, fault_at = 0, failed_at = 0;
  if (!p || !q || !f || !e || sscanf(p, "made no progress for %lf", &idle) != 1 ||
      sscanf(q, "watchdog's deadline %lf", &limit) != 1 || !strstr(f, " at ") ||
      sscanf(strstr(f, " at "), " at %lf", &fault_at) != 1 || sscanf(e, "\"failed_wall_s\":%lf", &failed_at) != 1)
    fail_msg("%s: no hang report with its deadline:\n%s\n%s", name, err, ev);
  const double detect = failed_at - fault_at;
  print_message("  %-14s deadline %.2f s, no progress for %.2f s, fault to named %.2f s\n", name, limit, idle, detect);
  if (idle > limit + 0.5 || detect > limit + 0.5) fail_msg("%s: named %.2f s after the fault, deadline %.2f s", name, detect, limit);
}

/* A rank whose training thread stops while its heartbeat goes on is caught by the progress
 * watchdog (default floor, paced by the measured steps) and named within its deadline: it is
 * the one not waiting on a peer. */
static void test_hang_caught_by_watchdog(void **state) {
  (void)state;
  char fault[96], err[32768], ev[8192], errp[320], evp[320];
  const int rank = (int)rnd(2), step = 3 + (int)rnd(STEPS - 3);
  snprintf(fault, sizeof fault, "hang:rank=%d:step=%d", rank, step);
  trial("hang", 2, 0, fault, rank, "hang");
  snprintf(errp, sizeof errp, "%s/hang.err", work);
  snprintf(evp, sizeof evp, "%s/hang.events", work);
  hm_t_read_file(errp, err, sizeof err);
  hm_t_read_file(evp, ev, sizeof ev);
  assert_named_within_deadline("hang", err, ev);
}

/* ---- the watchdog on a loaded machine (`test_restart watchdog`, its own ctest entry) */

enum { MAX_HOGS = 16 };
static pid_t hogs[MAX_HOGS];
static int nhogs;

/* One process spinning on the CPU per online core (2 at least), each ending itself after 240 s
 * at the latest. */
static void hogs_start(void) {
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  nhogs = cpus < 2 ? 2 : cpus > MAX_HOGS ? MAX_HOGS : (int)cpus;
  for (int i = 0; i < nhogs; i++) {
    hogs[i] = fork();
    assert_true(hogs[i] >= 0);
    if (hogs[i] == 0) {
      alarm(240);
      volatile uint64_t x = 0;
      for (;;) x = hm_splitmix64(x);
    }
  }
}

static void hogs_stop(void) {
  for (int i = 0; i < nhogs; i++)
    if (hogs[i] > 0) kill(hogs[i], SIGKILL), waitpid(hogs[i], NULL, 0), hogs[i] = 0;
}

/* A clean run beside CPU hogs finishes on its first attempt: the paced deadlines (default
 * floors) never take a slow step, a checkpoint snapshot or a late beat for a failure. 80 steps
 * of tens of ms each (the fail-slow test's model), a checkpoint every 2. */
static void test_loaded_clean_run_no_restart(void **state) {
  (void)state;
  char dir[300], err[32768], ev[8192];
  snprintf(dir, sizeof dir, "%s/hog-clean", work);
  hogs_start();
  const double t0 = hm_t_now();
  job_model = "L4,C192,NH4,V256,T64", job_stages = "0,3,6", job_steps = "80";
  int rc = run_job(dir, 2, 0, NULL, err, sizeof err, ev, sizeof ev);
  job_model = MODEL, job_stages = "0,3,8", job_steps = "12";
  hogs_stop();
  if (rc != 0) fail_msg("the clean run under load failed (status %d):\n%s", rc, err);
  if (strstr(ev, "peer dead") || strstr(ev, "\"attempt\":1") || !strstr(ev, "\"attempt\":0,\"status\":\"ok\""))
    fail_msg("the clean run under load was taken for a failure:\n%s\n%s", ev, err);
  print_message("  hog-clean      %d CPU hogs: 80 steps finished on the first attempt in %.1f s, no restart\n", nhogs,
                hm_t_now() - t0);
}

/* The same load: a hang is named within its deadline and the run recovers bitwise. */
static void test_loaded_hang_named_within_deadline(void **state) {
  (void)state;
  char fault[96], err[32768], ev[8192], errp[320], evp[320];
  const int rank = (int)rnd(2), step = 3 + (int)rnd(STEPS - 3);
  snprintf(fault, sizeof fault, "hang:rank=%d:step=%d", rank, step);
  reference("ref2", 2, 0);
  hogs_start();
  trial("hog-hang", 2, 0, fault, rank, "hang");
  hogs_stop();
  snprintf(errp, sizeof errp, "%s/hog-hang.err", work);
  snprintf(evp, sizeof evp, "%s/hog-hang.events", work);
  hm_t_read_file(errp, err, sizeof err);
  hm_t_read_file(evp, ev, sizeof ev);
  assert_named_within_deadline("hog-hang", err, ev);
}

/* --drop-after 1 on 2 replicas x 2 stages: the replica of a killed rank is dropped, the other
 * takes its micro-batches, and the job resumes on 2 workers and finishes all 12 steps with
 * replica 0's checkpoint. --exclude drops one before starting; a pipeline stage cannot go. */
static void test_drop_failing_replica(void **state) {
  (void)state;
  char dir[300], errp[320], err[32768], ck[400];
  snprintf(dir, sizeof dir, "%s/drop", work);
  snprintf(errp, sizeof errp, "%s/drop.err", work);
  const int rank = 2 + (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  char fault[96];
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "4", "--max-restarts", "2", "--drop-after", "1", "--timeout", "150",
                  "--", (char *)hetmix_bin, "worker", "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch",
                  "2", "--stages", "0,3,8", "--micro", "2,2", "--quiet", "--dump", dir, "--ckpt-every", "2", NULL};
  setenv("HETMIX_FAULT", fault, 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  int st = hm_t_wait(pid, 180.0);
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s did not finish:\n%s", fault, err);
  if (!strstr(err, "dropping replica 1; 2 workers now, --micro 4")) fail_msg("replica 1 not dropped:\n%s", err);
  hm_ckpt_meta m;
  snprintf(ck, sizeof ck, "%s/stage1.hmc", dir);
  assert_int_equal(hm_ckpt_read_meta(ck, &m), HM_OK);
  assert_int_equal(m.step, STEPS);
  assert_int_equal(m.micro_batches, 4);
  /* a stage is not a replica: refused before anything starts */
  char *one[] = {(char *)hetmix_bin, "launch", "-n", "2", "--exclude", "1", "--", (char *)hetmix_bin, "worker",
                 "--model", MODEL, "--data", tokpath, "--steps", "2", "--batch", "2", "--stages", "0,3,8", NULL};
  pid = hm_t_spawn(one, NULL, errp);
  st = hm_t_wait(pid, 60.0);
  hm_t_read_file(errp, err, sizeof err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) == 0 || !strstr(err, "only one"))
    fail_msg("excluding the only replica was not refused:\n%s", err);
  print_message("  drop           HETMIX_FAULT=%-34s replica 1 dropped, finished on 2 workers\n", fault);
}

static void test_f64_kill_random_rank(void **state) {
  (void)state;
  char fault[96];
  const int rank = (int)rnd(2), step = 1 + (int)rnd(STEPS - 1);
  snprintf(fault, sizeof fault, "kill:rank=%d:step=%d", rank, step);
  trial("kill-f64", 2, 1, fault, rank, "signal");
}

/* A worker slowed 3x from step 5 is reported by name within 5 steps; nobody is reported in a
 * clean run of the same job. */
static void test_fail_slow_worker_is_named(void **state) {
  (void)state;
  char dir[300], err[32768], ev[4096], clean[300];
  job_model = "L4,C192,NH4,V256,T64", job_stages = "0,3,6";
  snprintf(clean, sizeof clean, "%s/slow-clean", work);
  snprintf(dir, sizeof dir, "%s/slow", work);
  if (run_job(clean, 2, 0, NULL, err, sizeof err, ev, sizeof ev) != 0) fail_msg("the clean run failed:\n%s", err);
  if (strstr(err, "fail-slow")) fail_msg("the clean run reported a slow rank:\n%s", err);
  const int rank = (int)rnd(2);
  char fault[96];
  snprintf(fault, sizeof fault, "slow:rank=%d:step=5:factor=3", rank);
  int rc = run_job(dir, 2, 0, fault, err, sizeof err, ev, sizeof ev);
  job_model = MODEL, job_stages = "0,3,8";
  if (rc != 0) fail_msg("the slowed run failed:\n%s", err);
  char want[64];
  snprintf(want, sizeof want, "fail-slow: rank %d ", rank);
  const char *hit = strstr(err, want);
  if (!hit) fail_msg("the slowed rank %d was not reported:\n%s", rank, err);
  int at = 0;
  const char *p = strstr(hit, " at step ");
  if (!p || sscanf(p, " at step %d", &at) != 1) fail_msg("no step in the report:\n%s", hit);
  if (at > 5 + 5) fail_msg("reported at step %d, more than 5 steps after step 5", at);
  if (strstr(hit + 1, "fail-slow:") || strstr(err, "fail-slow: rank ") != hit)
    fail_msg("another report besides rank %d's:\n%s", rank, err);
  print_message("  rank %d slowed 3x from step 5: reported at step %d\n", rank, at);
}

/* ---- the fail-slow rule, without processes (the newest complete checkpoint: test_model_ckpt) */

/* The progress watchdog after a rank's first step: that step's time (since the job started)
 * already sets the deadline, so a second step slower than the floor is not a hang. */
static void test_watch_counts_first_step(void **state) {
  (void)state;
  char dir[300];
  snprintf(dir, sizeof dir, "%s/hb-first", work);
  assert_int_equal(mkdir(dir, 0700), 0);
  setenv("HETMIX_HEARTBEAT_DIR", dir, 1);
  hm_watch w;
  assert_int_equal(hm_watch_init(&w, dir, 1, 5000, 100, 60000), HM_OK); /* floor 100 ms */
  assert_int_equal(hm_hb_start(0, "cpu"), HM_OK);
  int cause = 0;
  double idle = 0;
  usleep(300 * 1000); /* the first step takes 300 ms; the launcher reads its start */
  assert_int_equal(hm_watch_check(&w, hm_now_ns(), NULL, &cause, &idle), -1);
  hm_hb_step(1);
  assert_int_equal(hm_watch_check(&w, hm_now_ns(), NULL, &cause, &idle), -1);
  const uint64_t d = hm_watch_step_deadline(&w, 0);
  hm_hb_stop();
  unsetenv("HETMIX_HEARTBEAT_DIR");
  hm_watch_free(&w);
  print_message("  deadline after the first 300 ms step: %.2f s (floor 0.1 s)\n", (double)d * 1e-9);
  assert_true(d >= (uint64_t)HM_WATCH_FACTOR * 300000000u && d < 60000000000u);
}

static void test_fail_slow_rule(void **state) {
  (void)state;
  enum { N = 4 };
  hm_failslow fs;
  assert_int_equal(hm_failslow_init(&fs, N), HM_OK);
  double expect[N] = {0.1, 0.2, 0, 0}, meas[N], ref[N];
  int newly[N], first = -1;
  for (int k = 0; k < 20; k++) {
    const double load = k >= 8 && k < 12 ? 2.5 : 1.0; /* a machine-wide slowdown flags nobody */
    for (int i = 0; i < N; i++) meas[i] = load * (expect[i] > 0 ? expect[i] : 0.05 * (i + 1));
    if (k == 4 || k == 6) meas[1] *= 3; /* two noisy steps in five flag nobody */
    if (k >= 14) meas[2] *= 3;         /* rank 2 (no prediction: its own first steps) slowed 3x */
    int c = hm_failslow_step(&fs, meas, expect, newly, ref);
    for (int i = 0; i < N; i++)
      if (newly[i]) {
        assert_int_equal(i, 2);
        assert_int_equal(c, 1);
        first = k;
      }
  }
  assert_int_equal(first, 14 + HM_FS_HITS - 1);
  hm_failslow_free(&fs);
}

/* ---- a full checkpoint folder (its own ctest entry) */

/* The checkpoint folder is an 8 MiB tmpfs filled up by a file before the job starts: periodic
 * checkpoints (1.1 MB each) fail and are skipped while training goes on; once the file is removed (after the
 * first skip is reported) checkpoints succeed again; a rank killed later resumes from a
 * complete one, and the run ends bitwise equal to the uninterrupted one. */
static int diskfull(void) {
  char mnt[300], filler[400], errp[400], ref[300], a[600], b[600];
  snprintf(mnt, sizeof mnt, "%s/full", work);
  mkdir(mnt, 0755);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=8m") != 0) {
    printf("skipped: cannot mount a tmpfs on %s (%s): needs root or CAP_SYS_ADMIN\n", mnt, strerror(errno));
    return HM_TEST_SKIP;
  }
  int rc = 1;
  snprintf(filler, sizeof filler, "%s/filler", mnt);
  FILE *f = fopen(filler, "w");
  static char block[4096];
  while (f && fwrite(block, 1, sizeof block, f) == sizeof block) {
  }
  if (f) fclose(f);
  char dump[400];
  snprintf(dump, sizeof dump, "%s/run", mnt);
  snprintf(errp, sizeof errp, "%s/run.err", work);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "2", "--max-restarts", "3", "--timeout", "150", "--",
                  (char *)hetmix_bin, "worker", "--model", MODEL, "--data", tokpath, "--steps", "12", "--batch", "2",
                  "--stages", "0,3,8", "--quiet", "--dump", dump, "--ckpt-every", "2", "--keep", "1", NULL};
  setenv("HETMIX_FAULT", "kill:rank=1:step=9", 1);
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  unsetenv("HETMIX_FAULT");
  static char err[65536];
  const double end = hm_t_now() + 150;
  int removed = 0, st = 0;
  for (;;) { /* the operator frees space once the first skipped checkpoint is reported */
    if (!removed && hm_t_read_file(errp, err, sizeof err) == 0 && strstr(err, "checkpoint skipped"))
      removed = unlink(filler) == 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) break;
    if (hm_t_now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      break;
    }
    usleep(2000);
  }
  hm_t_read_file(errp, err, sizeof err);
  snprintf(ref, sizeof ref, "%s/ref2", work);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    printf("FAIL: the job did not finish:\n%s\n", err);
  } else if (!strstr(err, "checkpoint skipped") || !removed) {
    printf("FAIL: no checkpoint was skipped on the full disk:\n%s\n", err);
  } else {
    rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
      hm_ckpt x, y;
      snprintf(a, sizeof a, "%s/stage%d.hmc", ref, s);
      snprintf(b, sizeof b, "%s/stage%d.hmc", dump, s);
      if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) {
        printf("FAIL: %s\n", hm_last_error());
        rc = 1;
        break;
      }
      for (int i = 0; i < x.n_tensors && rc == 0; i++)
        if (i >= y.n_tensors || x.tensors[i].numel != y.tensors[i].numel ||
            hm_ckpt_elem_size(&x) != hm_ckpt_elem_size(&y) ||
            memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
          printf("FAIL: tensor %s differs\n", x.tensors[i].name), rc = 1;
      hm_ckpt_free(&x);
      hm_ckpt_free(&y);
    }
    if (rc == 0) printf("diskfull: checkpoints skipped while the folder was full, run finished bitwise equal\n");
  }
  umount2(mnt, MNT_DETACH);
  return rc;
}

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "restart") != 0) return -1;
  const char *s = getenv("HETMIX_TEST_SEED");
  rng_state = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
  printf("test_restart: seed %llu (HETMIX_TEST_SEED=%llu repeats it)\n", (unsigned long long)rng_state,
         (unsigned long long)rng_state);
  enum { NTOK = 20000 };
  static uint8_t tok[NTOK];
  uint64_t x = 7;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 7 == 0 ? ' ' : 'a' + (x % 26));
  }
  snprintf(tokpath, sizeof tokpath, "%s/data.tok", work);
  return hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) == HM_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  hm_t_rmtree(work);
  return 0;
}

/* 1 when a checkpoint keeps an f64 stage's state exactly (its file is about twice an f32
 * stage's); a format that rounds it to f32 cannot resume an f64 run bitwise. */
int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "f64") == 0) { /* `test_restart f64`: its own ctest entry */
    const struct CMUnitTest f64_tests[] = {cmocka_unit_test(test_f64_kill_random_rank)};
    return cmocka_run_group_tests(f64_tests, setup, teardown);
  }
  if (argc > 1 && strcmp(argv[1], "watchdog") == 0) { /* `test_restart watchdog`: its own ctest entry */
    const struct CMUnitTest load_tests[] = {cmocka_unit_test_teardown(test_loaded_clean_run_no_restart, job_defaults),
                                            cmocka_unit_test(test_loaded_hang_named_within_deadline)};
    return cmocka_run_group_tests(load_tests, setup, teardown);
  }
  if (argc > 1 && strcmp(argv[1], "diskfull") == 0) {
    if (setup(NULL) != 0) return 1;
    char ref[300], err[16384], ev[4096];
    snprintf(ref, sizeof ref, "%s/ref2", work);
    int rc = run_job(ref, 2, 0, NULL, err, sizeof err, ev, sizeof ev) == 0 ? diskfull() : 1;
    teardown(NULL);
    return rc;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_watch_counts_first_step),
      cmocka_unit_test(test_fail_slow_rule),
      cmocka_unit_test(test_kill_random_rank_at_random_step),
      cmocka_unit_test(test_kill_after_snapshot_resumes_from_it),
      cmocka_unit_test(test_mem_every_step_loses_nothing),
      cmocka_unit_test(test_memory_step_from_own_and_held_copies),
      cmocka_unit_test(test_snapshot_every_step_is_no_hang),
      cmocka_unit_test(test_tp_kill_random_rank),
      cmocka_unit_test(test_tp_shard_from_peer_copy),
      cmocka_unit_test(test_sigstop_is_a_silent_rank),
      cmocka_unit_test(test_kill_during_checkpoint_write),
      cmocka_unit_test(test_two_ranks_killed_in_one_step),
      cmocka_unit_test(test_hang_caught_by_watchdog),
      cmocka_unit_test_teardown(test_fail_slow_worker_is_named, job_defaults),
      cmocka_unit_test_teardown(test_external_launcher_restart, job_defaults),
      cmocka_unit_test(test_drop_failing_replica),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
