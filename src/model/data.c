/* Token files (docs/model.md), the byte tokenizer, the default corpus and the batch loader.
 * Not a BPE tokenizer: byte-level text only (V=256); token files of any vocab load the same way. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

// header: magic[8] version u32 dtype u32 count u64 vocab u32 pad u32 payload_xxh3 u64
//         reserved[16] header_xxh3 u64 (of bytes 0..55); payload at 64, little-endian
typedef struct {
  char magic[8];
  uint32_t version, dtype;
  uint64_t count;
  uint32_t vocab, pad;
  uint64_t payload_hash;
  uint8_t reserved[16];
  uint64_t header_hash;
} hm_tokfile_header;
_Static_assert(sizeof(hm_tokfile_header) == HM_TOKFILE_HEADER_BYTES, "token header is 64 bytes");

static uint32_t hm_tokfile_max(const void *tokens, uint64_t count, hm_token_dtype dtype, uint64_t *where) {
  uint32_t mx = 0;
  for (uint64_t i = 0; i < count; i++) {
    uint32_t t = dtype == HM_TOKEN_U8 ? ((const uint8_t *)tokens)[i]
                 : dtype == HM_TOKEN_U16 ? ((const uint16_t *)tokens)[i]
                                         : ((const uint32_t *)tokens)[i];
    if (t > mx || i == 0) {
      mx = t;
      *where = i;
    }
  }
  return mx;
}

hm_status hm_tokfile_write(const char *path, const void *tokens, uint64_t count, hm_token_dtype dtype,
                           uint32_t vocab) {
  if (dtype != HM_TOKEN_U8 && dtype != HM_TOKEN_U16 && dtype != HM_TOKEN_U32)
    return hm_error(HM_ERR_INVALID_ARG, "token file %s: dtype %d must be 1, 2 or 4 bytes", path, (int)dtype);
  if (vocab == 0 || (dtype < 4 && vocab > (1u << (8 * dtype))))
    return hm_error(HM_ERR_INVALID_ARG, "token file %s: vocab %u does not fit %d-byte tokens", path, vocab, (int)dtype);
  uint64_t where = 0;
  if (count > 0) {
    uint32_t mx = hm_tokfile_max(tokens, count, dtype, &where);
    if (mx >= vocab)
      return hm_error(HM_ERR_INVALID_ARG, "token file %s: token %u at %llu is >= vocab %u", path, mx,
                      (unsigned long long)where, vocab);
  }
  hm_tokfile_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, HM_TOKFILE_MAGIC, 8);
  h.version = HM_TOKFILE_VERSION;
  h.dtype = (uint32_t)dtype;
  h.count = count;
  h.vocab = vocab;
  h.payload_hash = XXH3_64bits(tokens, (size_t)(count * dtype));
  h.header_hash = XXH3_64bits(&h, offsetof(hm_tokfile_header, header_hash));
  hm_atomic_file f;
  HM_TRY(hm_atomic_open(&f, path));
  hm_status st = hm_atomic_write(&f, &h, sizeof h);
  if (st == HM_OK) st = hm_atomic_write(&f, tokens, (size_t)(count * dtype));
  if (st != HM_OK) {
    hm_atomic_abort(&f);
    return st;
  }
  return hm_atomic_commit(&f);
}

hm_status hm_tokfile_parse(const void *buf, size_t len, const char *what, hm_tokfile *tf) {
  memset(tf, 0, sizeof *tf);
  if (len < sizeof(hm_tokfile_header))
    return hm_error(HM_ERR_CORRUPT, "token file %s: truncated header (%zu of %u bytes)", what, len,
                    HM_TOKFILE_HEADER_BYTES);
  hm_tokfile_header h;
  memcpy(&h, buf, sizeof h);
  if (memcmp(h.magic, HM_TOKFILE_MAGIC, 8) != 0)
    return hm_error(HM_ERR_CORRUPT, "token file %s: bad magic (not a token file; make one with `hetmix prepare`)", what);
  if (h.version != HM_TOKFILE_VERSION)
    return hm_error(HM_ERR_CORRUPT, "token file %s: version %u, this build reads %u", what, h.version,
                    HM_TOKFILE_VERSION);
  if (XXH3_64bits(&h, offsetof(hm_tokfile_header, header_hash)) != h.header_hash)
    return hm_error(HM_ERR_CORRUPT, "token file %s: header checksum mismatch", what);
  if (h.dtype != 1 && h.dtype != 2 && h.dtype != 4)
    return hm_error(HM_ERR_CORRUPT, "token file %s: dtype %u is not 1, 2 or 4 bytes", what, h.dtype);
  if (h.vocab == 0) return hm_error(HM_ERR_CORRUPT, "token file %s: vocab is 0", what);
  if (h.count > (len - sizeof h) / h.dtype || len - sizeof h != h.count * h.dtype)
    return hm_error(HM_ERR_CORRUPT, "token file %s: payload is %zu bytes, header says %llu tokens of %u bytes%s", what,
                    len - sizeof h, (unsigned long long)h.count, h.dtype,
                    len - sizeof h < h.count * h.dtype ? " (truncated)" : "");
  const uint8_t *payload = (const uint8_t *)buf + sizeof h;
  if (XXH3_64bits(payload, (size_t)(h.count * h.dtype)) != h.payload_hash)
    return hm_error(HM_ERR_CORRUPT, "token file %s: payload checksum mismatch (file damaged)", what);
  uint64_t where = 0;
  uint32_t mx = h.count ? hm_tokfile_max(payload, h.count, (hm_token_dtype)h.dtype, &where) : 0;
  if (h.count && mx >= h.vocab)
    return hm_error(HM_ERR_CORRUPT, "token file %s: token %u at %llu is >= vocab %u", what, mx,
                    (unsigned long long)where, h.vocab);
  tf->count = h.count;
  tf->vocab = h.vocab;
  tf->dtype = (hm_token_dtype)h.dtype;
  tf->tokens = payload;
  return HM_OK;
}

hm_status hm_tokfile_open(const char *path, hm_tokfile *tf) {
  memset(tf, 0, sizeof *tf);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "token file %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return hm_error(HM_ERR_IO, "token file %s: not a regular file", path);
  }
  size_t len = (size_t)sb.st_size;
  void *map = NULL;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      close(fd);
      return hm_error(HM_ERR_IO, "token file %s: mmap: %s", path, strerror(errno));
    }
  }
  close(fd);
  static const char empty[1] = {0};
  hm_status st = hm_tokfile_parse(map ? map : empty, len, path, tf);
  if (st != HM_OK) {
    if (map) munmap(map, len);
    return st;
  }
  tf->map_ = map;
  tf->map_len_ = len;
  return HM_OK;
}

void hm_tokfile_close(hm_tokfile *tf) {
  if (tf && tf->map_) munmap(tf->map_, tf->map_len_);
  if (tf) memset(tf, 0, sizeof *tf);
}

static hm_status hm_read_whole(const char *path, uint8_t **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "%s: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  uint8_t *buf = hm_malloc(cap, "text file");
  if (!buf) {
    fclose(f);
    return HM_ERR_NOMEM;
  }
  for (;;) {
    if (n == cap) {
      uint8_t *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        fclose(f);
        return hm_error(HM_ERR_NOMEM, "%s: cannot hold %zu bytes", path, cap * 2);
      }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return hm_error(HM_ERR_IO, "%s: read error", path);
  }
  *out = buf;
  *len = n;
  return HM_OK;
}

hm_status hm_tokfile_from_text(const char *out_path, const char *const *inputs, int n_inputs, uint64_t *out_count) {
  if (n_inputs < 1) return hm_error(HM_ERR_INVALID_ARG, "no input text files");
  uint8_t *all = NULL;
  size_t total = 0;
  for (int i = 0; i < n_inputs; i++) {
    uint8_t *b = NULL;
    size_t n = 0;
    hm_status st = hm_read_whole(inputs[i], &b, &n);
    if (st != HM_OK) {
      free(all);
      return st;
    }
    uint8_t *na = realloc(all, total + n + 1);
    if (!na) {
      free(b);
      free(all);
      return hm_error(HM_ERR_NOMEM, "cannot hold %zu bytes of text", total + n);
    }
    all = na;
    memcpy(all + total, b, n);
    total += n;
    free(b);
  }
  if (total < 2) {
    free(all);
    return hm_error(HM_ERR_INVALID_ARG, "input text has %zu bytes; need at least 2", total);
  }
  hm_status st = hm_tokfile_write(out_path, all, total, HM_TOKEN_U8, HM_BYTE_VOCAB);
  free(all);
  if (st == HM_OK && out_count) *out_count = total;
  return st;
}

static int hm_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

hm_status hm_default_corpus(const char *dir, char *out_path, size_t cap) {
  if (snprintf(out_path, cap, "%s/fortunes.tok", dir) >= (int)cap)
    return hm_error(HM_ERR_INVALID_ARG, "corpus path under '%s' is too long", dir);
  if (access(out_path, R_OK) == 0) return HM_OK;
  const char *src = getenv("HETMIX_FORTUNES_DIR");
  if (!src || !*src) src = "/usr/share/games/fortunes";
  DIR *d = opendir(src);
  if (!d)
    return hm_error(HM_ERR_NOT_FOUND, "default corpus: cannot open %s (%s); install Debian's fortunes packages "
                    "or pass --data FILE.tok", src, strerror(errno));
  char *names[512];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && n < 512) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] == '.') continue;
    if ((len > 4 && strcmp(e->d_name + len - 4, ".dat") == 0) || (len > 3 && strcmp(e->d_name + len - 3, ".u8") == 0))
      continue;
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", src, e->d_name);
    struct stat sb;
    // the off/ folder (offensive fortunes) and any other folder are skipped
    if (stat(full, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
    names[n] = strdup(full);
    if (!names[n]) break;
    n++;
  }
  closedir(d);
  if (n == 0) return hm_error(HM_ERR_NOT_FOUND, "default corpus: no text files in %s", src);
  // sorted so that the corpus is the same byte stream on every machine
  qsort(names, (size_t)n, sizeof names[0], hm_cmp_str);
  hm_status st = hm_make_dirs(dir, 0755, 0);
  if (st == HM_OK) st = hm_tokfile_from_text(out_path, (const char *const *)names, n, NULL);
  for (int i = 0; i < n; i++) free(names[i]);
  if (st != HM_OK) return hm_error_context(st, "default corpus: ");
  return HM_OK;
}

uint64_t hm_splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

hm_status hm_dataloader_init(hm_dataloader *dl, const hm_tokfile *tf, int B, int T, uint64_t seed,
                             double val_fraction) {
  memset(dl, 0, sizeof *dl);
  if (B < 1 || T < 1) return hm_error(HM_ERR_INVALID_ARG, "data loader: B=%d and T=%d must be positive", B, T);
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    return hm_error(HM_ERR_INVALID_ARG, "data loader: validation fraction %g must be in [0,1)", val_fraction);
  uint64_t n_val = (uint64_t)((double)tf->count * val_fraction);
  uint64_t n_train = tf->count - n_val;
  if (n_train < (uint64_t)T + 2)
    return hm_error(HM_ERR_INVALID_ARG, "data loader: training split has %llu tokens; need more than T+1=%d",
                    (unsigned long long)n_train, T + 1);
  uint64_t per_batch = (uint64_t)B * (uint64_t)T;
  dl->tf = tf;
  dl->B = B;
  dl->T = T;
  dl->seed = seed;
  dl->n_train = n_train;
  // each validation batch is B windows of T+1 tokens laid end to end (shared boundary token)
  dl->n_val_batches = n_val > per_batch ? (n_val - 1) / per_batch : 0;
  return HM_OK;
}

void hm_dataloader_next(hm_dataloader *dl, int32_t *inputs, int32_t *targets) {
  const int B = dl->B, T = dl->T;
  uint64_t range = dl->n_train - (uint64_t)T;  // start in [0, n_train-T-1]: T+1 tokens fit
  for (int b = 0; b < B; b++) {
    uint64_t k = dl->position++;
    uint64_t start = hm_splitmix64(dl->seed ^ hm_splitmix64(k)) % range;
    for (int t = 0; t < T; t++) {
      inputs[b * T + t] = (int32_t)hm_tokfile_at(dl->tf, start + (uint64_t)t);
      targets[b * T + t] = (int32_t)hm_tokfile_at(dl->tf, start + (uint64_t)t + 1);
    }
  }
}

void hm_dataloader_val(const hm_dataloader *dl, uint64_t i, int32_t *inputs, int32_t *targets) {
  const int B = dl->B, T = dl->T;
  for (int b = 0; b < B; b++) {
    uint64_t start = dl->n_train + (i * (uint64_t)B + (uint64_t)b) * (uint64_t)T;
    for (int t = 0; t < T; t++) {
      inputs[b * T + t] = (int32_t)hm_tokfile_at(dl->tf, start + (uint64_t)t);
      targets[b * T + t] = (int32_t)hm_tokfile_at(dl->tf, start + (uint64_t)t + 1);
    }
  }
}
