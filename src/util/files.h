/* Files and folders a run writes (checkpoints, metrics, traces, specs): created without following
 * a symbolic link planted where the file should be, replaced atomically, folders created with
 * their parents. Not a public header. */
#ifndef HETMIX_UTIL_FILES_H
#define HETMIX_UTIL_FILES_H

#include <stddef.h>
#include <stdio.h>

#include "hetmix/status.h"

/* hm_make_dirs flags. HM_DIR_OUTPUT: the folder receives the run's files, so its last component
 * must not be a symbolic link owned by another user, and the folder must be owned by this user
 * (or root): a folder someone else controls could redirect what is written there. */
#define HM_DIR_OUTPUT 1

/* mkdir -p: creates dir and its missing parents with mode (0755 for outputs others may read,
 * 0700 for private ones); an existing folder is fine, anything else where one should be is an
 * error naming the path. */
hm_status hm_make_dirs(const char *dir, unsigned mode, int flags);

/* Opens path for writing without following a symbolic link: the file must be missing (it is
 * created with mode, less the umask) or a regular file of this user with one link; a symlink,
 * hard link, FIFO or another user's file there is refused (HM_ERR_IO naming it), never written
 * through or removed. append = 0 truncates it, 1 appends. */
hm_status hm_file_open_write(const char *path, unsigned mode, int append, FILE **out);

/* A file written to "<path>.tmp.<random>" (created exclusively, mode 0600, no symlink
 * followed), then fsync'd, given its mode (0644 less the umask), renamed over <path> (a symlink
 * there is replaced, not followed) and the folder fsync'd, so readers see the old file or the
 * whole new one. A path that exists as something other than a regular file (a device, FIFO or
 * folder, or a link to one) is refused. */
typedef struct hm_atomic_file {
  int fd;
  char path[4096];
  char tmp[4200];
} hm_atomic_file;

hm_status hm_atomic_open(hm_atomic_file *f, const char *path);
hm_status hm_atomic_write(hm_atomic_file *f, const void *buf, size_t len);
hm_status hm_atomic_commit(hm_atomic_file *f); /* fsync, chmod, rename, fsync folder; closes */
void hm_atomic_abort(hm_atomic_file *f);       /* closes and removes the temporary file */
/* The whole of buf as path, atomically (the above in one call). */
hm_status hm_atomic_write_file(const char *path, const void *buf, size_t len);

/* 1 if name is one of hm_atomic_open's temporary names: "<something>.tmp.<1-32 letters or digits>". */
int hm_is_tmp_name(const char *name);
/* Removes the temporary files a killed write left in dir: entries with hm_is_tmp_name that are
 * regular files of this user (symlinks, folders and other users' files are left alone). Run it
 * when a run starts, before anything is written there; a missing dir has none. *removed (may be
 * NULL) counts them. */
hm_status hm_clean_tmp_files(const char *dir, int *removed);

#endif
