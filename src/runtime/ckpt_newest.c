/* The newest complete checkpoint of a pipeline run's --dump folder, for a restart's --resume.
 *
 * Layout read (written by the pipeline runtime): "<run_dir>/step-<N>/stage<s>.hmc" per periodic
 * checkpoint, and "<run_dir>/stage<s>.hmc" after the last step. Each stage file appears only
 * through an atomic rename once written and synced (hm_ckpt_write), so a folder is complete
 * when every stage 0..p-1 of the same run is there at step N, with p the stage count the files
 * record. A folder a killed or failed writer left partial (some stages missing, a leftover
 * .tmp) is skipped, never resumed from.
 *
 * This is the one function a restart needs from the checkpoint layout; a manifest-based
 * layout replaces this file without changing its interface (include/hetmix/runtime.h). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hetmix/model.h"
#include "hetmix/runtime.h"
#include "util/util.h"

/* N of a name "step-<digits>", or -1. */
static long long hm_step_dir_number(const char *name) {
  if (strncmp(name, "step-", 5) != 0) return -1;
  const char *d = name + 5;
  size_t nd = strspn(d, "0123456789");
  if (nd == 0 || nd > 18 || d[nd] != '\0') return -1;
  return strtoll(d, NULL, 10);
}

/* 1 when dir holds stage0..stage(p-1).hmc of one run at one step (want_step, or any when < 0);
 * the step in *step. */
static int hm_dir_complete(const char *dir, long long want_step, int64_t *step) {
  char path[4200];
  hm_ckpt_meta first;
  snprintf(path, sizeof path, "%s/stage0.hmc", dir);
  if (hm_ckpt_read_meta(path, &first) != HM_OK) return 0;
  const int p = first.stage_count > 0 ? first.stage_count : 1;
  if (first.stage_index != 0 || (want_step >= 0 && first.step != (uint64_t)want_step)) return 0;
  for (int s = 1; s < p; s++) {
    hm_ckpt_meta m;
    snprintf(path, sizeof path, "%s/stage%d.hmc", dir, s);
    if (hm_ckpt_read_meta(path, &m) != HM_OK) return 0;
    if (m.step != first.step || m.run_id != first.run_id || m.stage_count != first.stage_count ||
        m.stage_index != s)
      return 0;
  }
  *step = (int64_t)first.step;
  return 1;
}

hm_status hm_ckpt_newest_complete(const char *run_dir, char *path, size_t cap, int64_t *step) {
  if (!run_dir || !path || cap == 0 || !step)
    return hm_error(HM_ERR_INVALID_ARG, "hm_ckpt_newest_complete: need a folder and an output buffer");
  DIR *d = opendir(run_dir);
  if (!d) {
    if (errno == ENOENT) return hm_error(HM_ERR_NOT_FOUND, "no checkpoint: %s does not exist", run_dir);
    return hm_error(HM_ERR_IO, "cannot list %s: %s", run_dir, strerror(errno));
  }
  long long best = -1;
  char best_path[4200] = "";
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    long long n = hm_step_dir_number(e->d_name);
    if (n < 0 || n <= best) continue;
    char dir[4200];
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/%s", run_dir, e->d_name);
    int64_t got = 0;
    if (lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || !hm_dir_complete(dir, n, &got)) continue;
    best = n;
    hm_strcpy(best_path, sizeof best_path, dir);
  }
  closedir(d);
  int64_t final_step = 0; /* the dump after the last step, in the folder itself */
  if (hm_dir_complete(run_dir, -1, &final_step) && final_step > best) {
    best = final_step;
    hm_strcpy(best_path, sizeof best_path, run_dir);
  }
  if (best < 0) return hm_error(HM_ERR_NOT_FOUND, "no complete checkpoint in %s", run_dir);
  if (hm_strcpy(path, cap, best_path) != 0)
    return hm_error(HM_ERR_INVALID_ARG, "checkpoint path %s is longer than %zu bytes", best_path, cap - 1);
  *step = best;
  return HM_OK;
}
