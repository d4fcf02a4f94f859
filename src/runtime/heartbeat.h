/* Worker heartbeats and step progress, read by the supervising launcher (heartbeat.c), and the
 * fault-injection hooks of the restart tests (fault.c). Internal to the runtime and the CLI.
 *
 * A worker started with HETMIX_HEARTBEAT_DIR in its environment runs a thread that rewrites
 * "<dir>/rank<R>" every HM_HB_PERIOD_MS (atomically: a temp file renamed over it) with its pid,
 * host, device, a beat counter, the number of steps it completed and the wall time of the last
 * one. A stopped or dead process stops beating (the thread stops with it); a hung main thread
 * keeps beating but stops completing steps. Without the variable nothing runs. */
#ifndef HETMIX_HEARTBEAT_H
#define HETMIX_HEARTBEAT_H

#include <stdint.h>

#include "hetmix/status.h"

#define HM_HB_PERIOD_MS 100

typedef struct hm_hb_state {
  int pid;
  char host[64];
  char device[160];
  uint64_t beat;   /* increases every period while the process runs */
  int64_t step;    /* optimizer steps completed (the run's step count, so it continues on resume) */
  double step_wall_s; /* CLOCK_REALTIME seconds when that step completed, 0 before the first */
  int waiting;     /* 1 while its training thread waits on peers (a collective, a receive) */
  int phase;       /* what the training thread does now: HM_HB_STEP, _CKPT, _EVAL, _FINAL */
  uint64_t marks;  /* progress marks so far: completed steps and phase changes */
} hm_hb_state;

/* Phases of a worker's training thread (hm_hb_phase), each timed on its own by the launcher's
 * progress watchdog (watch.c): steps, the checkpoint snapshot between two steps, an evaluation,
 * and what follows the last step (final dump, trace). */
enum { HM_HB_STEP = 0, HM_HB_CKPT = 1, HM_HB_EVAL = 2, HM_HB_FINAL = 3, HM_HB_NPHASES = 4 };

/* Worker side. Starts the heartbeat thread of this process when HETMIX_HEARTBEAT_DIR is set
 * (HM_OK and nothing started otherwise). One per process; device is copied. */
hm_status hm_hb_start(int rank, const char *device);
/* Records that `step` steps are done (written at once, and carried by every later beat). */
void hm_hb_step(int64_t step);
/* hm_hb_step and hm_hb_phase in one write and one progress mark: the launcher never sees the
 * step done in its old phase, so no interval of next to nothing counts as a step (or as the
 * new phase) and shortens that one's deadline. */
void hm_hb_step_phase(int64_t step, int phase);
/* Marks whether the training thread now waits on peers (1) or works on its own (0): of ranks
 * that stopped progressing, one that is not waiting is the cause, the waiting ones its victims. */
void hm_hb_waiting(int waiting);
/* Enters a phase (HM_HB_*; written at once): the time spent in it is judged against that phase's
 * deadline, not a step's. A step completion (hm_hb_step) does not change the phase. */
void hm_hb_phase(int phase);
/* Stops the thread and leaves the last state in the file. From start to stop, SIGTERM and this
 * call write "<dir>/rank<R>.end" (an orderly end) before the process goes. */
void hm_hb_stop(void);

/* Launcher side: rank's latest heartbeat in dir. HM_ERR_NOT_FOUND before its first beat. */
/* 1 when rank's process marked an orderly end (SIGTERM or a return), 0 when it did not. */
int hm_hb_ended_orderly(const char *dir, int rank);
hm_status hm_hb_read(const char *dir, int rank, hm_hb_state *out);

/* Test hooks, driven by HETMIX_FAULT="kind:rank=R:step=K[:factor=F]" (several separated by
 * ';'), active only when HETMIX_ATTEMPT is absent or 0 (a restarted job runs clean):
 *   kill      raise SIGKILL before step K        (a crashed worker)
 *   stop      raise SIGSTOP before step K        (a hung, silent worker)
 *   hang      sleep forever before step K, still beating (caught by the progress watchdog)
 *   ckptkill  SIGKILL right before the checkpoint written after step K (a partial checkpoint)
 *   slow      from step K on, every step's compute takes F times as long (a fail-slow device)
 * Each firing is announced on stderr as "hetmix fault: <kind> rank R step K at <epoch s>" so a
 * benchmark can time detection from it. */
enum { HM_FAULT_STEP = 0, HM_FAULT_CKPT = 1 };
void hm_fault_point(int where, int rank, int step);
/* The slow factor in force for rank at step (1 when none). */
double hm_fault_slow_factor(int rank, int step);
/* Under a slow fault: sleeps (F-1) * *busy_s and adds that to *busy_s and *fb_s (the step's
 * measured compute, and the forward+backward part the rebalancer paces by, then read as a
 * device F times slower would make them). */
void hm_fault_slow_step(int rank, int step, double *busy_s, double *fb_s);

#endif
