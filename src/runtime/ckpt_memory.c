/* The in-memory tier of the periodic checkpoints (ckpt_memory.h): writing and pruning a run's
 * copies, and finding the newest step a restart can take entirely from memory. */
#include "runtime/ckpt_memory.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

void hm_mem_own_dir(const char *run, char *out, size_t cap) { snprintf(out, cap, "%s/own", run); }

hm_status hm_mem_write(const char *root, int64_t step, const char *file, const void *image, size_t bytes) {
  char dir[4400], path[4500];
  snprintf(dir, sizeof dir, "%s/step-%08" PRId64, root, step);
  HM_TRY(hm_make_dirs(dir, 0700, HM_DIR_OUTPUT));
  snprintf(path, sizeof path, "%s/%s", dir, HM_CKPT_MANIFEST);
  if (unlink(path) != 0 && errno != ENOENT)
    return hm_error(HM_ERR_IO, "cannot remove the old manifest %s: %s", path, strerror(errno));
  snprintf(path, sizeof path, "%s/%s", dir, file);
  return hm_atomic_write_file(path, image, bytes);
}

/* Removes the step folders of dir older than below, except keep1 and keep2. */
static hm_status hm_mem_prune_dir(const char *dir, int64_t below, int64_t keep1, int64_t keep2) {
  int64_t *steps = NULL;
  size_t n = 0;
  hm_status st = hm_ckpt_list_steps(dir, &steps, &n);
  if (st == HM_ERR_NOT_FOUND) return HM_OK;
  HM_TRY(st);
  for (size_t i = 0; st == HM_OK && i < n; i++)
    if (steps[i] < below && steps[i] != keep1 && steps[i] != keep2) st = hm_ckpt_remove_step(dir, steps[i]);
  free(steps);
  return st;
}

hm_status hm_mem_prune(const char *run, int64_t below, int64_t keep1, int64_t keep2) {
  char own[4300];
  hm_mem_own_dir(run, own, sizeof own);
  HM_TRY(hm_mem_prune_dir(run, below, keep1, keep2));
  return hm_mem_prune_dir(own, below, keep1, keep2);
}

hm_status hm_mem_remove_run(const char *run) {
  char own[4300];
  hm_mem_own_dir(run, own, sizeof own);
  HM_TRY(hm_ckpt_remove_step_dirs(own));
  return hm_ckpt_remove_step_dirs(run);
}

/* ---------------------------------------------------------------- a step from memory */

/* held/<name>, else own/<name> linked into held (same file system); 0 when neither is there. */
static int hm_mem_take(const char *held, const char *own, const char *name, char *path, size_t cap) {
  struct stat sb;
  snprintf(path, cap, "%s/%s", held, name);
  if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)) return 1;
  char from[4500];
  snprintf(from, sizeof from, "%s/%s", own, name);
  if (lstat(from, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
  if (hm_make_dirs(held, 0700, HM_DIR_OUTPUT) != HM_OK) return 0;
  return link(from, path) == 0 || errno == EEXIST;
}

/* A shard of the manifest being built: its file found (or linked) in held, of run and step. */
static int hm_mem_shard(const char *held, const char *own, int s, int r, int T, uint64_t run, int64_t step,
                        hm_ckpt_shard_info *i, hm_ckpt_meta *meta) {
  char path[4500];
  hm_ckpt_shard_name(s, r, T, i->file, sizeof i->file);
  if (!hm_mem_take(held, own, i->file, path, sizeof path) || hm_ckpt_read_meta(path, meta) != HM_OK) return 0;
  if ((run && meta->run_id != run) || meta->step != (uint64_t)step || meta->stage_index != s) return 0;
  i->stage = s, i->tp_rank = r, i->tp_size = T;
  return hm_ckpt_file_hash(path, &i->xxh3, &i->bytes) == HM_OK;
}

/* The tensor-parallel degree stage s was saved with: 1 for "stage<s>.hmc", else the header's of
 * "stage<s>.tp0.hmc"; 0 when neither copy is there. */
static int hm_mem_stage_tp(const char *held, const char *own, int s) {
  char name[64], path[4500];
  hm_ckpt_shard_name(s, 0, 1, name, sizeof name);
  if (hm_mem_take(held, own, name, path, sizeof path)) return 1;
  hm_ckpt_shard_name(s, 0, 2, name, sizeof name);
  hm_ckpt_meta m;
  if (!hm_mem_take(held, own, name, path, sizeof path) || hm_ckpt_read_meta(path, &m) != HM_OK) return 0;
  return m.tp_size > 1 ? m.tp_size : 0;
}

/* Makes run's step folder a complete checkpoint from the copies in memory; 1 when it is. */
static int hm_mem_assemble(const char *run, int64_t step, int world, hm_ckpt_manifest *m, char *held, size_t cap) {
  char own_run[4300], own[4400];
  snprintf(held, cap, "%s/step-%08" PRId64, run, step);
  hm_mem_own_dir(run, own_run, sizeof own_run);
  snprintf(own, sizeof own, "%s/step-%08" PRId64, own_run, step);
  if (hm_ckpt_manifest_read(held, m, NULL, 0) == HM_OK && hm_ckpt_manifest_verify(held, m) == HM_OK) return 1;
  memset(m, 0, sizeof *m);
  hm_ckpt_meta meta;
  int n = 0, nstages = 1;
  for (int s = 0; s < nstages; s++) {
    const int T = hm_mem_stage_tp(held, own, s);
    if (T < 1 || n + T > HM_CKPT_MAX_SHARDS) return 0;
    for (int r = 0; r < T; r++, n++) {
      if (!hm_mem_shard(held, own, s, r, T, m->run_id, step, &m->shards[n], &meta)) return 0;
      if (n == 0) {
        nstages = meta.stage_count;
        if (nstages < 1 || nstages > HM_CKPT_MAX_SHARDS) return 0;
        m->run_id = meta.run_id, m->data_position = meta.data_position;
      }
    }
  }
  m->step = (uint64_t)step, m->nstages = nstages, m->nshards = n, m->world = world > nstages ? world : nstages;
  return hm_ckpt_manifest_write(held, m) == HM_OK;
}

/* The newest complete step of one run folder better than *best (path and *best updated). */
static void hm_mem_run_best(const char *run, int world, hm_ckpt_manifest *m, char *path, size_t cap, int64_t *best) {
  char own[4300];
  hm_mem_own_dir(run, own, sizeof own);
  int64_t *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  if (hm_ckpt_list_steps(run, &a, &na) != HM_OK) na = 0;
  if (hm_ckpt_list_steps(own, &b, &nb) != HM_OK) nb = 0;
  size_t i = 0, j = 0; /* both newest first: walk them merged */
  while (i < na || j < nb) {
    const int64_t s = j >= nb || (i < na && a[i] >= b[j]) ? a[i] : b[j];
    while (i < na && a[i] == s) i++;
    while (j < nb && b[j] == s) j++;
    if (s <= *best) break;
    char held[4400];
    if (hm_mem_assemble(run, s, world, m, held, sizeof held)) {
      hm_strcpy(path, cap, held);
      *best = s;
      break;
    }
  }
  free(a);
  free(b);
}

hm_status hm_mem_newest_complete(const char *root, int world, char *path, size_t cap, int64_t *step) {
  DIR *d = opendir(root);
  if (!d) return hm_error(HM_ERR_NOT_FOUND, "no copies in memory (%s: %s)", root, strerror(errno));
  hm_ckpt_manifest *m = hm_malloc(sizeof *m, "manifest");
  int64_t best = -1;
  for (struct dirent *e; m && (e = readdir(d)) != NULL;) {
    if (strncmp(e->d_name, "hmpeer-", 7) != 0) continue;
    char run[4200];
    snprintf(run, sizeof run, "%s/%s", root, e->d_name);
    hm_mem_run_best(run, world, m, path, cap, &best);
  }
  closedir(d);
  free(m);
  if (!m) return HM_ERR_NOMEM;
  if (best < 0) return hm_error(HM_ERR_NOT_FOUND, "no step whose every shard is in memory under %s", root);
  if (step) *step = best;
  return HM_OK;
}

hm_status hm_mem_remove_root(const char *root) {
  DIR *d = opendir(root);
  if (!d) return errno == ENOENT ? HM_OK : hm_error(HM_ERR_IO, "cannot list %s: %s", root, strerror(errno));
  hm_status st = HM_OK;
  for (struct dirent *e; st == HM_OK && (e = readdir(d)) != NULL;) {
    if (strncmp(e->d_name, "hmpeer-", 7) != 0) continue;
    char run[4200];
    snprintf(run, sizeof run, "%s/%s", root, e->d_name);
    st = hm_mem_remove_run(run);
  }
  closedir(d);
  if (st == HM_OK && rmdir(root) != 0 && errno != ENOENT)
    st = hm_error(HM_ERR_IO, "cannot remove %s: %s", root, strerror(errno));
  return st;
}
