/* Folders and files a run writes: mkdir -p, opening without following a planted symlink, and
 * removing the temporary files of killed atomic writes (util/files.h). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/files.h"
#include "util/util.h"

/* An output folder must be this user's (or root's), reached through no other user's symlink. */
static hm_status hm_check_output_dir(const char *dir) {
  struct stat ls, sb;
  if (lstat(dir, &ls) != 0) return hm_error(HM_ERR_IO, "cannot inspect %s: %s", dir, strerror(errno));
  const uid_t me = geteuid();
  if (S_ISLNK(ls.st_mode) && ls.st_uid != me && ls.st_uid != 0)
    return hm_error(HM_ERR_IO, "%s is a symbolic link of another user (uid %u); refusing to write through it",
                    dir, (unsigned)ls.st_uid);
  if (stat(dir, &sb) != 0) return hm_error(HM_ERR_IO, "cannot inspect %s: %s", dir, strerror(errno));
  if (!S_ISDIR(sb.st_mode)) return hm_error(HM_ERR_IO, "%s exists and is not a folder", dir);
  if (sb.st_uid != me && sb.st_uid != 0)
    return hm_error(HM_ERR_IO, "%s belongs to another user (uid %u, this is uid %u); write to a folder of your own",
                    dir, (unsigned)sb.st_uid, (unsigned)me);
  return HM_OK;
}

/* One component: created, or an existing folder (through a symlink: parents may be links). */
static hm_status hm_make_one_dir(const char *p, unsigned mode) {
  if (mkdir(p, (mode_t)mode) == 0) return HM_OK;
  if (errno != EEXIST) return hm_error(HM_ERR_IO, "cannot create %s: %s", p, strerror(errno));
  struct stat sb;
  if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) return hm_error(HM_ERR_IO, "%s exists and is not a folder", p);
  return HM_OK;
}

hm_status hm_make_dirs(const char *dir, unsigned mode, int flags) {
  char p[4096];
  if (!dir || !dir[0]) return hm_error(HM_ERR_INVALID_ARG, "no folder name");
  if (hm_strcpy(p, sizeof p, dir) != 0) return hm_error(HM_ERR_INVALID_ARG, "path too long: %s", dir);
  for (char *c = p + 1;; c++) {
    if (*c != '/' && *c != '\0') continue;
    const char save = *c;
    *c = '\0';
    if (c[-1] != '/') HM_TRY(hm_make_one_dir(p, mode)); /* skips "a//b" and a trailing '/' */
    *c = save;
    if (save == '\0') break;
  }
  return (flags & HM_DIR_OUTPUT) ? hm_check_output_dir(dir) : HM_OK;
}

hm_status hm_file_open_write(const char *path, unsigned mode, int append, FILE **out) {
  *out = NULL;
  /* O_NONBLOCK: a FIFO planted at the path must not block the open; cleared below */
  const int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (append ? O_APPEND : 0);
  int fd = open(path, flags, (mode_t)mode);
  if (fd < 0 && errno == ELOOP)
    return hm_error(HM_ERR_IO, "%s is a symbolic link; refusing to write through it (remove it)", path);
  struct stat sb;
  const int bad = fd < 0 ? errno == ENXIO /* a FIFO without a reader */
                         : fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_nlink != 1 || sb.st_uid != geteuid();
  if (fd < 0 && !bad) return hm_error(HM_ERR_IO, "cannot open %s for writing: %s", path, strerror(errno));
  if (bad) {
    if (fd >= 0) close(fd);
    return hm_error(HM_ERR_IO, "%s is not a regular file of this user with one link; refusing to write to it", path);
  }
  if (fcntl(fd, F_SETFL, append ? O_APPEND : 0) != 0 || (!append && ftruncate(fd, 0) != 0)) {
    hm_status st = hm_error(HM_ERR_IO, "cannot open %s for writing: %s", path, strerror(errno));
    close(fd);
    return st;
  }
  *out = fdopen(fd, append ? "a" : "w");
  if (!*out) {
    close(fd);
    return hm_error(HM_ERR_IO, "cannot open %s for writing: %s", path, strerror(errno));
  }
  return HM_OK;
}

int hm_is_tmp_name(const char *name) {
  const char *t = strstr(name, ".tmp.");
  if (!t || t == name) return 0;
  for (const char *n; (n = strstr(t + 1, ".tmp.")) != NULL;) t = n; /* the last one */
  const char *s = t + 5;
  size_t len = strlen(s);
  if (len < 1 || len > 32) return 0;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s)) return 0;
  return 1;
}

hm_status hm_clean_tmp_files(const char *dir, int *removed) {
  if (removed) *removed = 0;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 && errno == ENOENT) return HM_OK; /* no folder, nothing left over */
  if (dfd < 0) return hm_error(HM_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    return hm_error(HM_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
  }
  const uid_t me = geteuid();
  hm_status st = HM_OK;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (!hm_is_tmp_name(e->d_name)) continue;
    struct stat sb;
    if (fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode) || sb.st_uid != me) continue;
    if (unlinkat(dfd, e->d_name, 0) != 0) {
      if (errno == ENOENT) continue;
      st = hm_error(HM_ERR_IO, "cannot remove the leftover %s/%s: %s", dir, e->d_name, strerror(errno));
      break;
    }
    if (removed) ++*removed;
  }
  closedir(d);
  return st;
}
