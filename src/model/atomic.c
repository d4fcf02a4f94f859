/* Atomic file replacement: temporary file, fsync, rename, fsync of the folder. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "model/model_internal.h"
#include "util/util.h"

hm_status hm_atomic_open(hm_atomic_file *f, const char *path) {
  f->fd = -1;
  if (hm_strcpy(f->path, sizeof f->path, path) != 0) return hm_error(HM_ERR_INVALID_ARG, "path too long: %s", path);
  snprintf(f->tmp, sizeof f->tmp, "%s.tmp.%ld", path, (long)getpid());
  f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f->fd < 0) return hm_error(HM_ERR_IO, "cannot create %s: %s", f->tmp, strerror(errno));
  return HM_OK;
}

hm_status hm_atomic_write(hm_atomic_file *f, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = write(f->fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return hm_error(HM_ERR_IO, "writing %s: %s", f->tmp, strerror(errno));
    }
    p += w;
    len -= (size_t)w;
  }
  return HM_OK;
}

void hm_atomic_abort(hm_atomic_file *f) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  unlink(f->tmp);
}

hm_status hm_atomic_commit(hm_atomic_file *f) {
  if (fsync(f->fd) != 0) {
    hm_status st = hm_error(HM_ERR_IO, "fsync %s: %s", f->tmp, strerror(errno));
    hm_atomic_abort(f);
    return st;
  }
  if (close(f->fd) != 0) {
    f->fd = -1;
    hm_status st = hm_error(HM_ERR_IO, "close %s: %s", f->tmp, strerror(errno));
    unlink(f->tmp);
    return st;
  }
  f->fd = -1;
  if (rename(f->tmp, f->path) != 0) {
    hm_status st = hm_error(HM_ERR_IO, "rename %s -> %s: %s", f->tmp, f->path, strerror(errno));
    unlink(f->tmp);
    return st;
  }
  // the rename itself is durable only once the folder entry is on disk
  char dir[4096];
  hm_strcpy(dir, sizeof dir, f->path);
  int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return HM_OK;
}
