/* Replays a fuzz target's seed corpus without libFuzzer: a main() that reads every file of the
 * folders (or files) given and calls the target's LLVMFuzzerTestOneInput on its bytes, as
 * libFuzzer would on a corpus. A crash, a sanitizer report or a target's own abort() fails the
 * run; so does finding no input at all (a moved corpus must not pass without checking).
 *   <target>_replay fuzz/<module>/seeds [more folders or files]
 * CTest runs one per target (fuzz/CMakeLists.txt), also in the ASan+UBSan build. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file into a fresh buffer of exactly its size (so an over-read is a sanitizer
 * report, as under libFuzzer). */
static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      uint8_t *b = realloc(buf, cap *= 2);
      if (!b) free(buf);
      buf = b;
    }
  }
  fclose(f);
  if (!buf) {
    fprintf(stderr, "replay: out of memory reading %s\n", path);
    return -1;
  }
  uint8_t *exact = malloc(n ? n : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, n);
  free(buf);
  printf("replay %s (%zu bytes)\n", path, n);
  fflush(stdout);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 1;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every regular file of a folder (not recursive), in name order; or the file itself. */
static int replay_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "replay: %s does not exist\n", path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return replay_file(path);
  struct dirent **list = NULL;
  int n = scandir(path, &list, NULL, NULL);
  if (n < 0) {
    fprintf(stderr, "replay: cannot read folder %s\n", path);
    return -1;
  }
  char **names = calloc((size_t)n + 1, sizeof *names);
  int count = 0, total = 0;
  for (int i = 0; i < n; i++) {
    if (names && list[i]->d_name[0] != '.') names[count++] = strdup(list[i]->d_name);
    free(list[i]);
  }
  free(list);
  if (!names) return -1;
  qsort(names, (size_t)count, sizeof *names, cmp_names);
  for (int i = 0; i < count; i++) {
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", path, names[i]);
    struct stat fs;
    if (total >= 0 && stat(full, &fs) == 0 && S_ISREG(fs.st_mode)) {
      int r = replay_file(full);
      total = r < 0 ? -1 : total + r;
    }
    free(names[i]);
  }
  free(names);
  return total;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_FOLDER_OR_FILE...\n", argv[0]);
    return 2;
  }
  int total = 0;
  for (int i = 1; i < argc; i++) {
    int r = replay_path(argv[i]);
    if (r < 0) return 1;
    total += r;
  }
  if (total == 0) {
    fprintf(stderr, "replay: no input found in the corpus given\n");
    return 1;
  }
  printf("replayed %d inputs without a crash\n", total);
  return 0;
}
