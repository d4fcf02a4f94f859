/* Keeping only the newest checkpoints of a run's folder, ordered by step: the one-process
 * trainer's "ckpt-<step>.hmc" files, and a pipeline's "step-<step>/" folders of stage files.
 * Only regular files are removed (never what a symlink points to); a folder goes once empty,
 * with the temporary files killed writes left in it. And finding the newest complete
 * distributed checkpoint ("step-<step>/" with a manifest naming all its shards). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

typedef struct {
  unsigned long long step;
  char name[64];
} hm_numbered;

/* The step of a name "<prefix><digits><suffix>", or -1. */
static long long hm_name_step(const char *name, const char *prefix, const char *suffix) {
  const size_t np = strlen(prefix);
  if (strncmp(name, prefix, np) != 0) return -1;
  const char *d = name + np;
  size_t nd = strspn(d, "0123456789");
  if (nd == 0 || nd > 18 || strcmp(d + nd, suffix) != 0) return -1;
  return strtoll(d, NULL, 10);
}

static int hm_cmp_step_desc(const void *a, const void *b) {
  const hm_numbered *x = a, *y = b;
  return x->step < y->step ? 1 : x->step > y->step ? -1 : strcmp(x->name, y->name);
}

/* Entries of dfd named prefix<step>suffix of the given type (S_IFREG or S_IFDIR, not followed),
 * newest first. *out is allocated (free()). */
static hm_status hm_list_numbered(int dfd, const char *dir, const char *prefix, const char *suffix, mode_t type,
                                  hm_numbered **out, size_t *count) {
  *out = NULL, *count = 0;
  int fd = dup(dfd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0) close(fd);
    return hm_error(HM_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
  }
  hm_numbered *list = NULL;
  size_t n = 0, cap = 0;
  hm_status st = HM_OK;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    long long step = hm_name_step(e->d_name, prefix, suffix);
    struct stat sb;
    if (step < 0 || fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || (sb.st_mode & S_IFMT) != type) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      hm_numbered *grown = realloc(list, cap * sizeof *list);
      if (!grown) {
        st = hm_error(HM_ERR_NOMEM, "listing the checkpoints of %s", dir);
        break;
      }
      list = grown;
    }
    list[n].step = (unsigned long long)step;
    hm_strcpy(list[n].name, sizeof list[n].name, e->d_name);
    n++;
  }
  closedir(d);
  if (st != HM_OK) {
    free(list);
    return st;
  }
  if (n > 1) qsort(list, n, sizeof *list, hm_cmp_step_desc);
  *out = list, *count = n;
  return HM_OK;
}

/* Removes entry `name` of dfd: a file, or (inner != NULL) the regular file inner in that folder
 * and then the folder when it is empty (other workers remove their own files from it). */
static hm_status hm_remove_old(int dfd, const char *dir, const char *name, const char *inner) {
  if (!inner) {
    if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT)
      return hm_error(HM_ERR_IO, "cannot remove the old checkpoint %s/%s: %s", dir, name, strerror(errno));
    return HM_OK;
  }
  char path[200];
  snprintf(path, sizeof path, "%s/%s", name, inner);
  struct stat sb;
  if (fstatat(dfd, path, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode) && unlinkat(dfd, path, 0) != 0 &&
      errno != ENOENT)
    return hm_error(HM_ERR_IO, "cannot remove the old checkpoint %s/%s: %s", dir, path, strerror(errno));
  char folder[4300];
  snprintf(folder, sizeof folder, "%s/%s", dir, name);
  HM_TRY(hm_clean_tmp_files(folder, NULL)); /* what a killed write left; nobody writes there now */
  if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOTEMPTY && errno != EEXIST && errno != ENOENT)
    return hm_error(HM_ERR_IO, "cannot remove the old checkpoint folder %s/%s: %s", dir, name, strerror(errno));
  return HM_OK;
}

static hm_status hm_prune(const char *dir, int keep, const char *prefix, const char *suffix, mode_t type,
                          const char *inner, int *removed) {
  if (removed) *removed = 0;
  if (keep <= 0) return HM_OK;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return hm_error(HM_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
  hm_numbered *list = NULL;
  size_t n = 0;
  hm_status st = hm_list_numbered(dfd, dir, prefix, suffix, type, &list, &n);
  for (size_t i = (size_t)keep; st == HM_OK && i < n; i++) {
    st = hm_remove_old(dfd, dir, list[i].name, inner);
    if (st == HM_OK && removed) ++*removed;
  }
  free(list);
  close(dfd);
  return st;
}

hm_status hm_ckpt_prune(const char *dir, int keep, int *removed) {
  return hm_prune(dir, keep, "ckpt-", ".hmc", S_IFREG, NULL, removed);
}

hm_status hm_ckpt_prune_stage_dirs(const char *dir, int keep, int stage, int *removed) {
  char inner[32];
  snprintf(inner, sizeof inner, "stage%d.hmc", stage);
  return hm_prune(dir, keep, "step-", "", S_IFDIR, inner, removed);
}

/* 1 when dir/<name> holds a manifest whose shards are all there with their sizes. */
static int hm_is_complete(const char *dir, const char *name, hm_ckpt_manifest *m) {
  char sub[4300];
  snprintf(sub, sizeof sub, "%s/%s", dir, name);
  if (hm_ckpt_manifest_read(sub, m, NULL, 0) != HM_OK) return 0;
  for (int s = 0; s < hm_ckpt_manifest_nshards(m); s++) {
    char path[4400];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", sub, m->shards[s].file);
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != m->shards[s].bytes) return 0;
  }
  return 1;
}

/* The step folders of dir, newest first (*list: free()). */
static hm_status hm_step_dirs(const char *dir, hm_numbered **list, size_t *n) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
  hm_status st = hm_list_numbered(dfd, dir, "step-", "", S_IFDIR, list, n);
  close(dfd);
  return st;
}

hm_status hm_ckpt_newest_complete(const char *run_dir, char *path, size_t cap, int64_t *step) {
  hm_numbered *list = NULL;
  size_t n = 0;
  hm_status st = hm_step_dirs(run_dir, &list, &n);
  if (st == HM_ERR_NOT_FOUND) return hm_error(HM_ERR_NOT_FOUND, "%s holds no complete checkpoint (no such folder)", run_dir);
  HM_TRY(st);
  hm_ckpt_manifest *m = hm_malloc(sizeof *m, "manifest");
  st = m ? hm_error(HM_ERR_NOT_FOUND, "%s holds no complete checkpoint (no step-<N>/ with a manifest and all its shards)",
                    run_dir)
         : HM_ERR_NOMEM;
  for (size_t i = 0; m && i < n; i++) {
    if (!hm_is_complete(run_dir, list[i].name, m)) continue;
    if (snprintf(path, cap, "%s/%s", run_dir, list[i].name) >= (int)cap) {
      st = hm_error(HM_ERR_INVALID_ARG, "checkpoint path too long: %s/%s", run_dir, list[i].name);
      break;
    }
    if (step) *step = (int64_t)list[i].step;
    st = HM_OK;
    break;
  }
  free(m);
  free(list);
  return st;
}

/* Removes the regular files of dir/<name> (a checkpoint folder nobody writes to any more) and
 * the folder; symlinks and other entries stay, and so does the folder then. */
static hm_status hm_remove_folder(const char *dir, const char *name) {
  char sub[4300];
  snprintf(sub, sizeof sub, "%s/%s", dir, name);
  int fd = open(sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? HM_OK : hm_error(HM_ERR_IO, "cannot open %s: %s", sub, strerror(errno));
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return hm_error(HM_ERR_IO, "cannot list %s: %s", sub, strerror(errno));
  }
  hm_status st = HM_OK;
  for (struct dirent *e; st == HM_OK && (e = readdir(d)) != NULL;) {
    struct stat sb;
    if (fstatat(fd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode)) continue;
    if (unlinkat(fd, e->d_name, 0) != 0 && errno != ENOENT)
      st = hm_error(HM_ERR_IO, "cannot remove %s/%s: %s", sub, e->d_name, strerror(errno));
  }
  closedir(d);
  if (st == HM_OK && rmdir(sub) != 0 && errno != ENOTEMPTY && errno != EEXIST && errno != ENOENT)
    st = hm_error(HM_ERR_IO, "cannot remove the old checkpoint folder %s: %s", sub, strerror(errno));
  return st;
}

hm_status hm_ckpt_prune_complete(const char *run_dir, int keep, int *removed) {
  if (removed) *removed = 0;
  if (keep <= 0) return HM_OK;
  hm_numbered *list = NULL;
  size_t n = 0;
  HM_TRY(hm_step_dirs(run_dir, &list, &n));
  hm_ckpt_manifest *m = hm_malloc(sizeof *m, "manifest");
  hm_status st = m ? HM_OK : HM_ERR_NOMEM;
  int complete = 0;
  for (size_t i = 0; st == HM_OK && i < n; i++) {
    if (complete < keep) {
      complete += hm_is_complete(run_dir, list[i].name, m);
      continue;
    }
    st = hm_remove_folder(run_dir, list[i].name);
    if (st == HM_OK && removed) ++*removed;
  }
  free(m);
  free(list);
  return st;
}

hm_status hm_ckpt_remove_step_dirs(const char *run_dir) {
  hm_numbered *list = NULL;
  size_t n = 0;
  hm_status st = hm_step_dirs(run_dir, &list, &n);
  if (st == HM_ERR_NOT_FOUND) return HM_OK;
  HM_TRY(st);
  for (size_t i = 0; st == HM_OK && i < n; i++) st = hm_remove_folder(run_dir, list[i].name);
  free(list);
  if (st == HM_OK && rmdir(run_dir) != 0 && errno != ENOTEMPTY && errno != EEXIST && errno != ENOENT)
    st = hm_error(HM_ERR_IO, "cannot remove %s: %s", run_dir, strerror(errno));
  return st;
}

hm_status hm_ckpt_list_steps(const char *run_dir, int64_t **steps, size_t *n) {
  *steps = NULL, *n = 0;
  hm_numbered *list = NULL;
  size_t k = 0;
  HM_TRY(hm_step_dirs(run_dir, &list, &k));
  int64_t *out = k ? hm_malloc(k * sizeof *out, "checkpoint steps") : NULL;
  if (k && !out) {
    free(list);
    return HM_ERR_NOMEM;
  }
  for (size_t i = 0; i < k; i++) out[i] = (int64_t)list[i].step;
  free(list);
  *steps = out, *n = k;
  return HM_OK;
}

hm_status hm_ckpt_remove_step(const char *run_dir, int64_t step) {
  char name[64];
  snprintf(name, sizeof name, "step-%08lld", (long long)step);
  return hm_remove_folder(run_dir, name);
}
