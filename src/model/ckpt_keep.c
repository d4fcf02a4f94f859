/* Keeping only the newest checkpoints of a run's folder: "ckpt-<step>.hmc" files (regular files,
 * never symlinks or folders), ordered by step; the newest `keep` stay. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hetmix/model.h"
#include "util/util.h"

typedef struct {
  unsigned long long step;
  char name[64];
} hm_ckpt_entry_name;

/* The step of a name "ckpt-<digits>.hmc", or -1. */
static long long hm_ckpt_name_step(const char *name) {
  if (strncmp(name, "ckpt-", 5) != 0) return -1;
  const char *d = name + 5;
  size_t nd = strspn(d, "0123456789");
  if (nd == 0 || nd > 18 || strcmp(d + nd, ".hmc") != 0) return -1;
  return strtoll(d, NULL, 10);
}

static int hm_cmp_step_desc(const void *a, const void *b) {
  const hm_ckpt_entry_name *x = a, *y = b;
  return x->step < y->step ? 1 : x->step > y->step ? -1 : strcmp(x->name, y->name);
}

hm_status hm_ckpt_prune(const char *dir, int keep, int *removed) {
  if (removed) *removed = 0;
  if (keep <= 0) return HM_OK;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return hm_error(HM_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    return hm_error(HM_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
  }
  hm_ckpt_entry_name *list = NULL;
  size_t n = 0, cap = 0;
  hm_status st = HM_OK;
  for (struct dirent *e; st == HM_OK && (e = readdir(d)) != NULL;) {
    long long step = hm_ckpt_name_step(e->d_name);
    struct stat sb;
    if (step < 0 || fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode)) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      hm_ckpt_entry_name *grown = realloc(list, cap * sizeof *list);
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
  if (st == HM_OK && n > (size_t)keep) {
    qsort(list, n, sizeof *list, hm_cmp_step_desc);
    for (size_t i = (size_t)keep; i < n; i++) {
      if (unlinkat(dfd, list[i].name, 0) != 0 && errno != ENOENT) {
        st = hm_error(HM_ERR_IO, "cannot remove the old checkpoint %s/%s: %s", dir, list[i].name, strerror(errno));
        break;
      }
      if (removed) ++*removed;
    }
  }
  free(list);
  closedir(d);
  return st;
}
