/* Atomic file replacement: an exclusively created temporary file, fsync, rename, fsync of the
 * folder (util/files.h). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util/files.h"
#include "util/util.h"

#define HM_TMP_SUFFIX_LEN 12

/* Random letters and digits for a temporary name (getrandom; a clock-and-pid mix if it fails:
 * the name only has to be unpredictable, O_EXCL makes the creation safe either way). */
static void hm_random_suffix(char *out, size_t n) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char r[32];
  if (n > sizeof r) n = sizeof r;
  if (getrandom(r, n, GRND_NONBLOCK) != (ssize_t)n) {
    uint64_t x = hm_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    for (size_t i = 0; i < n; i++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      r[i] = (unsigned char)(x >> 56);
    }
  }
  for (size_t i = 0; i < n; i++) out[i] = alphabet[r[i] % (sizeof alphabet - 1)];
  out[n] = '\0';
}

/* The process umask without changing it (umask() would, racing other threads): Linux reports
 * it in /proc/self/status; 022 where it does not. */
static mode_t hm_current_umask(void) {
  FILE *f = fopen("/proc/self/status", "r");
  unsigned m = 022;
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "Umask: %o", &m) == 1) break;
    fclose(f);
  }
  return (mode_t)(m & 0777);
}

hm_status hm_atomic_open(hm_atomic_file *f, const char *path) {
  f->fd = -1;
  f->tmp[0] = '\0';
  if (hm_strcpy(f->path, sizeof f->path, path) != 0) return hm_error(HM_ERR_INVALID_ARG, "path too long: %s", path);
  // the rename would replace a device, FIFO or folder (or a link to one, e.g. /dev/stdout)
  struct stat sb;
  if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
    return hm_error(HM_ERR_IO, "%s exists and is not a regular file; give the path of a file to write", path);
  for (int attempt = 0; attempt < 100; attempt++) {
    char suffix[HM_TMP_SUFFIX_LEN + 1];
    hm_random_suffix(suffix, HM_TMP_SUFFIX_LEN);
    snprintf(f->tmp, sizeof f->tmp, "%s.tmp.%s", path, suffix);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f->fd >= 0) return HM_OK;
    if (errno != EEXIST) break;
  }
  hm_status st = hm_error(HM_ERR_IO, "cannot create %s: %s", f->tmp, strerror(errno));
  f->tmp[0] = '\0';
  return st;
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
  if (f->tmp[0]) unlink(f->tmp);
}

hm_status hm_atomic_commit(hm_atomic_file *f) {
  const char *what = fsync(f->fd) != 0 ? "fsync" : fchmod(f->fd, 0644 & ~hm_current_umask()) != 0 ? "chmod" : NULL;
  if (what) {
    hm_status st = hm_error(HM_ERR_IO, "%s %s: %s", what, f->tmp, strerror(errno));
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
  // rename replaces a symbolic link at f->path itself; it never writes through one
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

hm_status hm_atomic_write_file(const char *path, const void *buf, size_t len) {
  hm_atomic_file f;
  HM_TRY(hm_atomic_open(&f, path));
  hm_status st = hm_atomic_write(&f, buf, len);
  if (st != HM_OK) {
    hm_atomic_abort(&f);
    return st;
  }
  return hm_atomic_commit(&f);
}
