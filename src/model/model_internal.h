/* Internal helpers of the model module: atomic file writing. Not a public header. */
#ifndef HETMIX_MODEL_INTERNAL_H
#define HETMIX_MODEL_INTERNAL_H

#include <stddef.h>

#include "hetmix/status.h"

/* A file written to "<path>.tmp.<pid>", then fsync'd, renamed over <path> and the folder fsync'd,
 * so readers see either the old file or the whole new one. */
typedef struct hm_atomic_file {
  int fd;
  char path[4096];
  char tmp[4200];
} hm_atomic_file;

hm_status hm_atomic_open(hm_atomic_file *f, const char *path);
hm_status hm_atomic_write(hm_atomic_file *f, const void *buf, size_t len);
hm_status hm_atomic_commit(hm_atomic_file *f); /* fsync, rename, fsync folder; closes */
void hm_atomic_abort(hm_atomic_file *f);       /* closes and removes the temporary file */

#endif
