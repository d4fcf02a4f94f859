/* Checkpoint files (format: docs/model.md): a header with the run's state, a tensor table with
 * per-tensor XXH3-64 checksums, 64-byte aligned float32 payloads, and a trailer that marks the
 * file complete. Written atomically. Not the model: callers pass named host tensors. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "hetmix/model.h"
#include "util/files.h"
#include "util/util.h"

typedef struct {
  char magic[8];
  uint32_t version, header_bytes;
  int32_t L, C, NH, V, T;
  char name[32];
  int32_t layer_first, layer_last, pad0;
  uint64_t step, data_seed, data_position, rng_state;
  float lr, beta1, beta2, eps, weight_decay, grad_clip;
  int32_t batch, seq_len;
  uint32_t n_tensors, stage_count;
  uint64_t run_id;
  int32_t stage_index, micro_batches;
  uint32_t elem_size; /* version 3: bytes per stored element, 4 or 8 (versions 1 and 2: 4) */
  int32_t tp_rank, tp_size; /* version 3: tensor-parallel shard (0, 0 or 0, 1: unsplit) */
  int32_t arch, kv_heads, ffn, tied; /* version 3; before: gpt2, NH, 4C, tied */
  uint8_t reserved[52];
  uint64_t header_hash; /* XXH3 of the bytes before it */
} hm_ckpt_header;
_Static_assert(sizeof(hm_ckpt_header) == 256, "checkpoint header is 256 bytes");
_Static_assert(offsetof(hm_ckpt_header, step) == 80 && offsetof(hm_ckpt_header, n_tensors) == 144 &&
                   offsetof(hm_ckpt_header, run_id) == 152 && offsetof(hm_ckpt_header, stage_index) == 160 &&
                   offsetof(hm_ckpt_header, elem_size) == 168 && offsetof(hm_ckpt_header, arch) == 180 &&
                   offsetof(hm_ckpt_header, header_hash) == 248,
               "checkpoint header offsets are the documented ones");

typedef struct {
  char name[HM_CKPT_NAME_MAX];
  uint64_t numel, offset, hash; /* offset from the start of the file; hash of the payload */
} hm_ckpt_entry;
_Static_assert(sizeof(hm_ckpt_entry) == 72, "checkpoint table entry is 72 bytes");

typedef struct {
  char magic[8];
  uint64_t file_bytes, table_hash;
  uint64_t trailer_hash; /* XXH3 of the bytes before it */
} hm_ckpt_trailer;
_Static_assert(sizeof(hm_ckpt_trailer) == 32, "checkpoint trailer is 32 bytes");

#define HM_CKPT_ALIGN 64u
#define HM_CKPT_MAX_TENSORS 100000u

static uint64_t hm_align_up(uint64_t x) { return (x + HM_CKPT_ALIGN - 1) & ~(uint64_t)(HM_CKPT_ALIGN - 1); }

/* Bytes per stored element of meta: 4 unless it asks for 8 (an f64 stage's exact state). */
static uint32_t hm_meta_elem_size(const hm_ckpt_meta *m) { return m->elem_size == 8 ? 8u : 4u; }

/* Header, tensor table (offsets and checksums) and trailer of a file holding these tensors. */
typedef struct {
  hm_ckpt_header h;
  hm_ckpt_entry *table;
  hm_ckpt_trailer tr;
} hm_ckpt_layout;

static hm_status hm_ckpt_lay_out(const hm_ckpt_meta *m, const hm_ckpt_tensor *tensors, int n, hm_ckpt_layout *l) {
  if (n < 0 || (unsigned)n > HM_CKPT_MAX_TENSORS) return hm_error(HM_ERR_INVALID_ARG, "checkpoint: %d tensors", n);
  const uint32_t es = hm_meta_elem_size(m);
  hm_ckpt_header *h = &l->h;
  memset(h, 0, sizeof *h);
  memcpy(h->magic, HM_CKPT_MAGIC, 8);
  h->version = HM_CKPT_VERSION;
  h->header_bytes = sizeof *h;
  const hm_spec_model_config *c = &m->config;
  h->L = (int32_t)c->L, h->C = (int32_t)c->C, h->NH = (int32_t)c->NH, h->V = (int32_t)c->V, h->T = (int32_t)c->T;
  h->arch = (int32_t)c->arch, h->kv_heads = (int32_t)c->kv_heads, h->ffn = (int32_t)c->ffn;
  h->tied = c->tied_embeddings;
  hm_strcpy(h->name, sizeof h->name, m->model_name);
  h->layer_first = m->layer_first, h->layer_last = m->layer_last;
  h->step = m->step, h->data_seed = m->data_seed, h->data_position = m->data_position, h->rng_state = m->rng_state;
  h->lr = m->lr, h->beta1 = m->beta1, h->beta2 = m->beta2, h->eps = m->eps;
  h->weight_decay = m->weight_decay, h->grad_clip = m->grad_clip;
  h->batch = m->batch, h->seq_len = m->seq_len;
  h->n_tensors = (uint32_t)n;
  h->run_id = m->run_id;
  h->stage_index = m->stage_index, h->stage_count = (uint32_t)m->stage_count, h->micro_batches = m->micro_batches;
  h->elem_size = es;
  h->tp_rank = m->tp_rank, h->tp_size = m->tp_size;
  h->header_hash = XXH3_64bits(h, offsetof(hm_ckpt_header, header_hash));

  l->table = hm_calloc((size_t)n + 1, sizeof *l->table, "checkpoint table");
  if (!l->table) return HM_ERR_NOMEM;
  uint64_t off = hm_align_up(sizeof *h + (uint64_t)n * sizeof *l->table);
  for (int i = 0; i < n; i++) {
    if (hm_strcpy(l->table[i].name, sizeof l->table[i].name, tensors[i].name) != 0) {
      free(l->table);
      l->table = NULL;
      return hm_error(HM_ERR_INVALID_ARG, "checkpoint: tensor name '%s' is too long", tensors[i].name);
    }
    l->table[i].numel = tensors[i].numel;
    l->table[i].offset = off;
    l->table[i].hash = XXH3_64bits(tensors[i].data, tensors[i].numel * es);
    off = hm_align_up(off + tensors[i].numel * es);
  }
  hm_ckpt_trailer *tr = &l->tr;
  memset(tr, 0, sizeof *tr);
  memcpy(tr->magic, HM_CKPT_END_MAGIC, 8);
  tr->file_bytes = off + sizeof *tr;
  tr->table_hash = XXH3_64bits(l->table, (size_t)n * sizeof *l->table);
  tr->trailer_hash = XXH3_64bits(tr, offsetof(hm_ckpt_trailer, trailer_hash));
  return HM_OK;
}

hm_status hm_ckpt_write(const char *path, const hm_ckpt_meta *m, const hm_ckpt_tensor *tensors, int n) {
  hm_ckpt_layout l;
  HM_TRY(hm_ckpt_lay_out(m, tensors, n, &l));
  const uint32_t es = hm_meta_elem_size(m);
  static const uint8_t zeros[HM_CKPT_ALIGN];
  hm_atomic_file f;
  hm_status st = hm_atomic_open(&f, path);
  if (st != HM_OK) {
    free(l.table);
    return st;
  }
  uint64_t pos = 0;
#define HM_PUT(buf, len)                                   \
  do {                                                     \
    if (st == HM_OK) st = hm_atomic_write(&f, (buf), (len)); \
    pos += (len);                                          \
  } while (0)
  HM_PUT(&l.h, sizeof l.h);
  HM_PUT(l.table, (size_t)n * sizeof *l.table);
  for (int i = 0; i < n; i++) {
    HM_PUT(zeros, (size_t)(l.table[i].offset - pos));
    HM_PUT(tensors[i].data, (size_t)(tensors[i].numel * es));
  }
  HM_PUT(zeros, (size_t)(hm_align_up(pos) - pos));
  HM_PUT(&l.tr, sizeof l.tr);
#undef HM_PUT
  free(l.table);
  if (st != HM_OK) {
    hm_atomic_abort(&f);
    return hm_error_context(st, "checkpoint %s: ", path);
  }
  return hm_atomic_commit(&f);
}

hm_status hm_ckpt_encode(const hm_ckpt_meta *m, const hm_ckpt_tensor *tensors, int n, void **image, size_t *bytes) {
  *image = NULL, *bytes = 0;
  hm_ckpt_layout l;
  HM_TRY(hm_ckpt_lay_out(m, tensors, n, &l));
  const uint32_t es = hm_meta_elem_size(m);
  uint8_t *b = hm_calloc(1, (size_t)l.tr.file_bytes, "checkpoint image");
  if (!b) {
    free(l.table);
    return HM_ERR_NOMEM;
  }
  memcpy(b, &l.h, sizeof l.h);
  memcpy(b + sizeof l.h, l.table, (size_t)n * sizeof *l.table);
  for (int i = 0; i < n; i++)
    if (tensors[i].numel) memcpy(b + l.table[i].offset, tensors[i].data, (size_t)(tensors[i].numel * es));
  memcpy(b + l.tr.file_bytes - sizeof l.tr, &l.tr, sizeof l.tr);
  *bytes = (size_t)l.tr.file_bytes;
  *image = b;
  free(l.table);
  return HM_OK;
}

#define HM_CORRUPT(...) hm_error(HM_ERR_CORRUPT, __VA_ARGS__)

/* Checks a header (magic, version, checksum, config, layer range) and fills meta from it. */
static hm_status hm_ckpt_header_meta(const hm_ckpt_header *hp, const char *what, hm_ckpt_meta *m) {
  hm_ckpt_header h = *hp;
  if (memcmp(h.magic, HM_CKPT_MAGIC, 8) != 0) return HM_CORRUPT("checkpoint %s: bad magic (not a hetmix checkpoint)", what);
  if (h.version < 1 || h.version > HM_CKPT_VERSION)
    return HM_CORRUPT("checkpoint %s: version %u, this build reads 1 to %u", what, h.version, HM_CKPT_VERSION);
  if (XXH3_64bits(&h, offsetof(hm_ckpt_header, header_hash)) != h.header_hash)
    return HM_CORRUPT("checkpoint %s: header checksum mismatch", what);
  if (h.version == 1) { /* no run identity yet: those bytes were zero */
    h.stage_count = 0, h.run_id = 0;
    h.stage_index = 0, h.micro_batches = 0;
    h.tp_rank = 0, h.tp_size = 0;
  }
  if (h.version < 3) { /* GPT-2 only, 4-byte elements, unsplit: these bytes were zero */
    h.elem_size = 4, h.tp_rank = 0, h.tp_size = 0;
    h.arch = HM_ARCH_GPT2, h.kv_heads = h.NH, h.ffn = 4 * h.C, h.tied = 1;
  } else if (h.elem_size != 4 && h.elem_size != 8) {
    return HM_CORRUPT("checkpoint %s: %u bytes per element, need 4 or 8", what, h.elem_size);
  }
  hm_spec_model_config cfg = {(hm_arch)h.arch, h.L, h.C, h.NH, h.kv_heads, h.ffn, h.V, h.T, h.tied, 0};
  if (h.arch < 0 || h.arch >= HM_ARCH_COUNT || h.kv_heads < 1 || h.ffn < 1 || hm_model_config_check(&cfg) != HM_OK)
    return hm_error_context(HM_ERR_CORRUPT, "checkpoint %s: model config arch %d kv_heads %d ffn %d: ", what, h.arch,
                            h.kv_heads, h.ffn);
  if (h.layer_first < 0 || h.layer_last > cfg.L + 2 || h.layer_first >= h.layer_last)
    return HM_CORRUPT("checkpoint %s: layer range [%d,%d) is invalid for L=%d", what, h.layer_first, h.layer_last, h.L);
  if (h.stage_count > 4096 || h.stage_index < 0 || (h.stage_count > 0 && (uint32_t)h.stage_index >= h.stage_count) ||
      h.micro_batches < 0)
    return HM_CORRUPT("checkpoint %s: stage %d of %u, %d micro-batches is invalid", what, h.stage_index, h.stage_count,
                      h.micro_batches);
  if (h.tp_size < 0 || h.tp_size > 64 || h.tp_rank < 0 || h.tp_rank >= (h.tp_size > 1 ? h.tp_size : 1))
    return HM_CORRUPT("checkpoint %s: tensor-parallel rank %d of %d is invalid", what, h.tp_rank, h.tp_size);
  memset(m, 0, sizeof *m);
  m->config = cfg;
  m->tp_rank = h.tp_rank, m->tp_size = h.tp_size;
  memcpy(m->model_name, h.name, sizeof m->model_name);
  m->model_name[sizeof m->model_name - 1] = '\0';
  m->layer_first = h.layer_first, m->layer_last = h.layer_last;
  m->step = h.step, m->data_seed = h.data_seed;
  m->data_position = h.data_position, m->rng_state = h.rng_state;
  m->lr = h.lr, m->beta1 = h.beta1, m->beta2 = h.beta2, m->eps = h.eps;
  m->weight_decay = h.weight_decay, m->grad_clip = h.grad_clip;
  m->batch = h.batch, m->seq_len = h.seq_len;
  m->run_id = h.run_id;
  m->stage_index = h.stage_index, m->stage_count = (int)h.stage_count, m->micro_batches = h.micro_batches;
  m->elem_size = (int)h.elem_size;
  return HM_OK;
}

hm_status hm_ckpt_parse(const void *buf, size_t len, const char *what, hm_ckpt *out) {
  memset(out, 0, sizeof *out);
  const uint8_t *b = buf;
  hm_ckpt_header h;
  if (len < sizeof h + sizeof(hm_ckpt_trailer))
    return HM_CORRUPT("checkpoint %s: truncated (%zu bytes, smaller than header + trailer)", what, len);
  memcpy(&h, b, sizeof h);
  hm_ckpt_meta meta;
  HM_TRY(hm_ckpt_header_meta(&h, what, &meta));
  hm_ckpt_trailer tr;
  memcpy(&tr, b + len - sizeof tr, sizeof tr);
  if (memcmp(tr.magic, HM_CKPT_END_MAGIC, 8) != 0 ||
      XXH3_64bits(&tr, offsetof(hm_ckpt_trailer, trailer_hash)) != tr.trailer_hash)
    return HM_CORRUPT("checkpoint %s: no commit trailer (truncated or an interrupted write)", what);
  if (tr.file_bytes != len)
    return HM_CORRUPT("checkpoint %s: file is %zu bytes, trailer says %llu", what, len, (unsigned long long)tr.file_bytes);
  if (h.n_tensors > HM_CKPT_MAX_TENSORS || sizeof h + (uint64_t)h.n_tensors * sizeof(hm_ckpt_entry) > len - sizeof tr)
    return HM_CORRUPT("checkpoint %s: tensor count %u does not fit the file", what, h.n_tensors);

  const size_t n = h.n_tensors;
  const uint64_t es = (uint64_t)meta.elem_size;
  const uint8_t *table_bytes = b + sizeof h;
  if (XXH3_64bits(table_bytes, n * sizeof(hm_ckpt_entry)) != tr.table_hash)
    return HM_CORRUPT("checkpoint %s: tensor table checksum mismatch", what);
  uint64_t total_floats = 0;
  uint64_t data_end = len - sizeof tr;
  uint64_t prev_end = sizeof h + n * sizeof(hm_ckpt_entry);
  for (size_t i = 0; i < n; i++) {
    hm_ckpt_entry e;
    memcpy(&e, table_bytes + i * sizeof e, sizeof e);
    if (memchr(e.name, '\0', sizeof e.name) == NULL) return HM_CORRUPT("checkpoint %s: tensor %zu name is not terminated", what, i);
    if (e.offset % HM_CKPT_ALIGN != 0 || e.offset > data_end || e.numel > (data_end - e.offset) / es)
      return HM_CORRUPT("checkpoint %s: tensor '%s' (%llu floats at %llu) lies outside the file", what, e.name,
                        (unsigned long long)e.numel, (unsigned long long)e.offset);
    // the writer lays tensors out in order without overlap; requiring it bounds the total
    // size by the file size, so a crafted table cannot ask for a huge allocation
    if (e.offset < prev_end)
      return HM_CORRUPT("checkpoint %s: tensor '%s' overlaps the one before it", what, e.name);
    prev_end = e.offset + e.numel * es;
    if (XXH3_64bits(b + e.offset, e.numel * es) != e.hash)
      return HM_CORRUPT("checkpoint %s: tensor '%s' checksum mismatch (data damaged)", what, e.name);
    total_floats += e.numel;
  }
  // one allocation: tensor descriptors, then every tensor's elements (copied out of buf)
  size_t bytes = n * sizeof(hm_ckpt_tensor) + (size_t)(total_floats * es);
  uint8_t *blob = hm_malloc(bytes, "checkpoint tensors");
  if (!blob) return hm_error_context(HM_ERR_NOMEM, "checkpoint %s: ", what);
  hm_ckpt_tensor *ts = (hm_ckpt_tensor *)blob;
  uint8_t *data = blob + n * sizeof(hm_ckpt_tensor);
  for (size_t i = 0; i < n; i++) {
    hm_ckpt_entry e;
    memcpy(&e, table_bytes + i * sizeof e, sizeof e);
    memcpy(ts[i].name, e.name, sizeof ts[i].name);
    ts[i].numel = e.numel;
    ts[i].data = (float *)(void *)data; /* elem_size 8: doubles behind the float pointer */
    if (e.numel) memcpy(data, b + e.offset, (size_t)(e.numel * es));
    data += e.numel * es;
  }
  out->meta = meta;
  out->n_tensors = (int)n;
  out->tensors = ts;
  out->blob_ = blob;
  return HM_OK;
}

hm_status hm_ckpt_read(const char *path, hm_ckpt *out) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "checkpoint %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return hm_error(HM_ERR_IO, "checkpoint %s: not a regular file", path);
  }
  size_t len = (size_t)sb.st_size;
  uint8_t *buf = hm_malloc(len, "checkpoint file");
  if (!buf) {
    fclose(f);
    return hm_error_context(HM_ERR_NOMEM, "checkpoint %s: ", path);
  }
  size_t got = fread(buf, 1, len, f);
  fclose(f);
  hm_status st = got == len ? hm_ckpt_parse(buf, len, path, out)
                            : hm_error(HM_ERR_IO, "checkpoint %s: read %zu of %zu bytes", path, got, len);
  free(buf);
  return st;
}

hm_status hm_ckpt_read_meta(const char *path, hm_ckpt_meta *meta) {
  memset(meta, 0, sizeof *meta);
  FILE *f = fopen(path, "rb");
  if (!f) return hm_error(errno == ENOENT ? HM_ERR_NOT_FOUND : HM_ERR_IO, "checkpoint %s: %s", path, strerror(errno));
  hm_ckpt_header h;
  size_t got = fread(&h, 1, sizeof h, f);
  fclose(f);
  if (got != sizeof h) return HM_CORRUPT("checkpoint %s: truncated (%zu bytes, smaller than the header)", path, got);
  return hm_ckpt_header_meta(&h, path, meta);
}

uint64_t hm_ckpt_new_run_id(void) {
  uint64_t id = 0;
  if (getrandom(&id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id) id = hm_splitmix64(hm_now_ns() ^ (uint64_t)getpid());
  return id ? id : 1;
}

void hm_ckpt_free(hm_ckpt *ck) {
  if (!ck) return;
  free(ck->blob_);
  memset(ck, 0, sizeof *ck);
}

const hm_ckpt_tensor *hm_ckpt_find(const hm_ckpt *ck, const char *name) {
  for (int i = 0; i < ck->n_tensors; i++)
    if (strcmp(ck->tensors[i].name, name) == 0) return &ck->tensors[i];
  return NULL;
}

size_t hm_ckpt_elem_size(const hm_ckpt *ck) { return ck->meta.elem_size == 8 ? 8 : 4; }

double hm_ckpt_value(const hm_ckpt *ck, const hm_ckpt_tensor *t, uint64_t k) {
  if (hm_ckpt_elem_size(ck) == 8) return ((const double *)(const void *)t->data)[k];
  return t->data[k];
}
