/* The launcher's heartbeat watch (src/runtime/watch.c) on heartbeat files written by hand and a
 * clock passed in, so every deadline is exact: the progress watchdog's deadline comes from the
 * pace measured in the job (HM_WATCH_FACTOR x the longest step, after the first step that
 * counts from the job's start), each phase (checkpoint snapshot, evaluation, final dump) is
 * timed on its own, and heartbeat silence is paced by the longest gap between beats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "hetmix/runtime.h"
#include "runtime/heartbeat.h"
#include "runtime/watch.h"
#include "util/util.h"
#include "runtime/proc_helpers.h"

#define MS 1000000ull

static char dir[128];
static unsigned long long beat_no;

/* rank r's heartbeat as a worker writes it */
static void beat_rank(int r, long long step, int phase, unsigned long long marks, int waiting) {
  char path[256];
  snprintf(path, sizeof path, "%s/rank%d", dir, r);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "pid 1\nhost h\ndevice cpu\nbeat %llu\nstep %lld\nstep_wall %.1f\nwaiting %d\nphase %d\nmarks %llu\n",
          ++beat_no, step, step > 0 ? 1.0 : 0.0, waiting, phase, marks);
  fclose(f);
}

static void beat(long long step, int phase, unsigned long long marks, int waiting) {
  beat_rank(0, step, phase, marks, waiting);
}

static int check(hm_watch *w, uint64_t at_ms, int *cause, double *idle) {
  return hm_watch_check(w, w->start_ns + at_ms * MS, NULL, cause, idle);
}

/* A rank first read already past its first steps (fast steps, a late first poll) is paced from
 * the time since the job's start, which bounds its start-up and those steps: a hang right after
 * is named at 5 x 300 ms, not at the 60 s of a first step (before, its peers' own 30 s receive
 * deadline ended the job first and the waiting peer was named). */
static void test_first_read_after_steps(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 1, HM_SILENCE_FLOOR_MS, HM_WATCHDOG_FLOOR_MS, 60000), HM_OK);
  beat(3, HM_HB_STEP, 3, 0);
  assert_int_equal(check(&w, 300, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1500 * MS);
  beat(3, HM_HB_STEP, 3, 0);
  assert_int_equal(check(&w, 1400, &cause, &idle), -1);
  beat(3, HM_HB_STEP, 3, 0);
  assert_int_equal(check(&w, 1600, &cause, &idle), 0);
  assert_int_equal(cause, HM_FAIL_HANG);
  hm_watch_free(&w);
}

/* A 2 s start-up and first step set the second step's deadline to 10 s; once a steady 200 ms
 * step was seen, the deadline is the 1 s floor (5 x 200 ms): the start-up no longer counts, and
 * a hang is named 1 s after the last step. */
static void test_deadline_from_measured_steps(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 1, HM_SILENCE_FLOOR_MS, HM_WATCHDOG_FLOOR_MS, 60000), HM_OK);
  beat(0, HM_HB_STEP, 0, 0);
  assert_int_equal(check(&w, 500, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 60000 * MS); /* the first step */
  beat(1, HM_HB_STEP, 1, 0);
  assert_int_equal(check(&w, 2000, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 5 * 2000 * MS); /* the first sets the second's */
  beat(2, HM_HB_STEP, 2, 0);
  assert_int_equal(check(&w, 2200, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1000 * MS); /* max(floor 1 s, 5 x 200 ms) */
  beat(3, HM_HB_STEP, 3, 0);
  assert_int_equal(check(&w, 2500, &cause, &idle), -1); /* a 300 ms step: 1.5 s */
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1500 * MS);
  for (uint64_t t = 2600; t <= 4000; t += 100) { /* it hangs, still beating */
    beat(3, HM_HB_STEP, 3, 0);
    assert_int_equal(check(&w, t, &cause, &idle), -1);
  }
  beat(3, HM_HB_STEP, 3, 0);
  assert_int_equal(check(&w, 4100, &cause, &idle), 0);
  assert_int_equal(cause, HM_FAIL_HANG);
  assert_true(idle > 1.5 && idle < 1.7);
  assert_true(w.limit_s > 1.49 && w.limit_s < 1.51);
  hm_watch_free(&w);
}

/* A checkpoint snapshot and an evaluation are phases of their own: the first of each gets the
 * start-up deadline and sets the deadline of the next ones; a step's deadline is unchanged by
 * them; the final phase (the final dump) gets the start-up deadline. */
static void test_phases_timed_apart(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 1, HM_SILENCE_FLOOR_MS, HM_WATCHDOG_FLOOR_MS, 60000), HM_OK);
  unsigned long long m = 0;
  beat(0, HM_HB_STEP, m, 0);
  check(&w, 100, &cause, &idle);
  beat(1, HM_HB_STEP, ++m, 0), check(&w, 1000, &cause, &idle);
  beat(2, HM_HB_STEP, ++m, 0), check(&w, 1100, &cause, &idle);
  beat(2, HM_HB_CKPT, ++m, 0);
  assert_int_equal(check(&w, 1150, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 60000 * MS); /* the first snapshot */
  beat(2, HM_HB_CKPT, m, 0);
  assert_int_equal(check(&w, 4000, &cause, &idle), -1); /* a 2.85 s first snapshot is no hang */
  beat(2, HM_HB_STEP, ++m, 0);
  assert_int_equal(check(&w, 4000, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1000 * MS); /* steps: still 5 x 100 ms, floor */
  beat(3, HM_HB_STEP, ++m, 0), check(&w, 4100, &cause, &idle);
  beat(3, HM_HB_CKPT, ++m, 0), check(&w, 4150, &cause, &idle);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 5 * 2850 * MS); /* the next snapshots */
  beat(3, HM_HB_STEP, ++m, 0), check(&w, 4300, &cause, &idle);
  beat(3, HM_HB_EVAL, ++m, 0), check(&w, 4350, &cause, &idle);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 60000 * MS); /* the first evaluation */
  beat(3, HM_HB_STEP, ++m, 0), check(&w, 4550, &cause, &idle);
  beat(4, HM_HB_STEP, ++m, 0), check(&w, 4650, &cause, &idle);
  beat(4, HM_HB_FINAL, ++m, 0), check(&w, 4700, &cause, &idle);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 60000 * MS); /* the final dump */
  beat(4, HM_HB_FINAL, m, 0);
  assert_int_equal(check(&w, 9000, &cause, &idle), -1);
  hm_watch_free(&w);
}

/* Silence: beats 100 ms apart give the 1 s floor; one 400 ms gap (a loaded machine) raises the
 * deadline to 2 s; a rank that stops beating is named once it passes that. */
static void test_silence_paced_by_beats(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 1, HM_SILENCE_FLOOR_MS, 0, 60000), HM_OK);
  uint64_t t = 0;
  for (; t <= 1000; t += 100) beat(0, HM_HB_STEP, 0, 0), assert_int_equal(check(&w, t, &cause, &idle), -1);
  assert_int_equal(hm_watch_silence_deadline(&w), 1000 * MS);
  t += 300; /* the last beat was at t - 100: a 400 ms gap */
  beat(0, HM_HB_STEP, 0, 0);
  assert_int_equal(check(&w, t, &cause, &idle), -1);
  assert_int_equal(hm_watch_silence_deadline(&w), 2000 * MS);
  assert_int_equal(check(&w, t + 2000, &cause, &idle), -1); /* stopped: not yet */
  assert_int_equal(check(&w, t + 2001, &cause, &idle), 0);
  assert_int_equal(cause, HM_FAIL_SILENT);
  assert_true(w.limit_s > 1.99 && w.limit_s < 2.01);
  hm_watch_free(&w);
}

/* A rank stopped (SIGSTOP) right after a step: its last beat came 50 ms after its last mark, so
 * its 1 s step deadline ends 50 ms before its 1 s silence deadline. It is named silent, not
 * hung: while its beats are late, no hang is judged (before, it was named hung at 2001 ms). */
static void test_stopped_after_a_step_is_silent(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 1, HM_SILENCE_FLOOR_MS, HM_WATCHDOG_FLOOR_MS, 60000), HM_OK);
  for (uint64_t t = 0; t <= 1000; t += 100) { /* steps of 100 ms, a beat at each */
    beat((long long)t / 100, HM_HB_STEP, t / 100, 0);
    assert_int_equal(check(&w, t, &cause, &idle), -1);
  }
  beat(10, HM_HB_STEP, 10, 0); /* one more beat, then stopped */
  assert_int_equal(check(&w, 1050, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1000 * MS);
  for (uint64_t t = 1100; t <= 2050; t += 50) assert_int_equal(check(&w, t, &cause, &idle), -1);
  assert_int_equal(check(&w, 2051, &cause, &idle), 0);
  assert_int_equal(cause, HM_FAIL_SILENT);
  hm_watch_free(&w);
}

/* Rank 0 ends step 3 and then waits on rank 1, which ends step 3 150 ms later and hangs at the
 * start of step 4 (still beating, not waiting). The longest step is then rank 1's 350 ms, so the
 * deadline is 1.75 s. Rank 0 passes it first, 150 ms before rank 1, but it is the victim: rank 1,
 * not waiting and stopped for over half the deadline, is named. */
static void test_hang_names_the_rank_waited_for(void **state) {
  (void)state;
  hm_watch w;
  int cause = 0;
  double idle = 0;
  assert_int_equal(hm_watch_init(&w, dir, 2, HM_SILENCE_FLOOR_MS, HM_WATCHDOG_FLOOR_MS, 60000), HM_OK);
  for (int s = 0; s <= 2; s++) { /* steps of 200 ms */
    beat_rank(0, s, HM_HB_STEP, (unsigned long long)s, 0);
    beat_rank(1, s, HM_HB_STEP, (unsigned long long)s, 0);
    assert_int_equal(check(&w, 1000 + 200 * (uint64_t)s, &cause, &idle), -1);
  }
  beat_rank(0, 3, HM_HB_STEP, 3, 1); /* rank 0 ends step 3 at 1600 ms and waits */
  assert_int_equal(check(&w, 1600, &cause, &idle), -1);
  beat_rank(1, 3, HM_HB_STEP, 3, 0); /* rank 1 ends it at 1750 ms, then hangs */
  assert_int_equal(check(&w, 1750, &cause, &idle), -1);
  assert_int_equal(hm_watch_step_deadline(&w, 0), 1750 * MS);
  for (uint64_t t = 1800; t <= 3300; t += 100) { /* both beat */
    beat_rank(0, 3, HM_HB_STEP, 3, 1);
    beat_rank(1, 3, HM_HB_STEP, 3, 0);
    assert_int_equal(check(&w, t, &cause, &idle), -1);
  }
  assert_int_equal(check(&w, 3351, &cause, &idle), 1); /* rank 0 is past 1.75 s, rank 1 not yet */
  assert_int_equal(cause, HM_FAIL_HANG);
  assert_true(idle > 1.59 && idle < 1.61);
  hm_watch_free(&w);
}

static int setup(void **state) {
  (void)state;
  return hm_t_mkdtemp(dir, sizeof dir, "watch");
}

static int teardown(void **state) {
  (void)state;
  hm_t_rmtree(dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_deadline_from_measured_steps, setup, teardown),
      cmocka_unit_test_setup_teardown(test_first_read_after_steps, setup, teardown),
      cmocka_unit_test_setup_teardown(test_phases_timed_apart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_silence_paced_by_beats, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hang_names_the_rank_waited_for, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stopped_after_a_step_is_silent, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
