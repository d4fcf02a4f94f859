/* Keeping only the newest checkpoints of a run's folder, ordered by step: the one-process
 * trainer's "ckpt-<step>.hmc" files, and a pipeline's "step-<step>/" folders of stage files.
 * Only regular files are removed (never what a symlink points to); a folder goes once empty,
 * with the temporary files killed writes left in it. */
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
