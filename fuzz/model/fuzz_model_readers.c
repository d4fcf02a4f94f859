/* libFuzzer target for the checkpoint and token-file readers (hm_ckpt_parse, hm_tokfile_parse):
 * any byte string must give HM_OK or a clean error, never a crash, leak or out-of-bounds read.
 * The first byte picks the reader (bit 0) and whether checksums are repaired (bit 1); the rest is
 * the file image.
 *   CC=clang cmake -S . -B build-fuzz -DHETMIX_FUZZ=ON && cmake --build build-fuzz --target fuzz_model_readers
 *   build-fuzz/fuzz/model/fuzz_model_readers -max_total_time=60 fuzz/model/seeds   (docs/model.md) */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "hetmix/model.h"

// Bit 1 of the selector: rewrite the checksums of the mutated image first, so that mutations
// reach the checks behind them (sizes, offsets, names, vocab) instead of stopping at a hash.
// Offsets follow docs/model.md.
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void repair_tokfile(uint8_t *b, size_t len) {
  if (len < HM_TOKFILE_HEADER_BYTES) return;
  uint32_t dtype;
  memcpy(&dtype, b + 12, 4);
  uint64_t count = get64(b + 16);
  size_t payload = len - HM_TOKFILE_HEADER_BYTES;
  if (dtype && count <= payload / dtype) put64(b + 32, XXH3_64bits(b + HM_TOKFILE_HEADER_BYTES, count * dtype));
  put64(b + 56, XXH3_64bits(b, 56));
}

static void repair_ckpt(uint8_t *b, size_t len) {
  if (len < 256 + 32) return;
  put64(b + 248, XXH3_64bits(b, 248));
  uint32_t n;
  memcpy(&n, b + 144, 4);
  if (n > (len - 256 - 32) / 72) return;
  for (uint32_t i = 0; i < n; i++) {
    uint8_t *e = b + 256 + (size_t)i * 72;
    uint64_t numel = get64(e + 48), off = get64(e + 56);
    if (off <= len - 32 && numel <= (len - 32 - off) / 4) put64(e + 64, XXH3_64bits(b + off, numel * 4));
  }
  uint8_t *tr = b + len - 32;
  put64(tr + 16, XXH3_64bits(b + 256, (size_t)n * 72));
  put64(tr + 24, XXH3_64bits(tr, 24));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
static volatile double fuzz_sink;  // keeps the reads of every value

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  // a private copy of exactly the image, so reads past its end are caught by ASan
  size_t len = size - 1;
  uint8_t *img = malloc(len ? len : 1);
  if (!img) return 0;
  memcpy(img, data + 1, len);
  if (data[0] & 2) (data[0] & 1) ? repair_ckpt(img, len) : repair_tokfile(img, len);
  if (data[0] & 1) {
    hm_ckpt ck;
    if (hm_ckpt_parse(img, len, "fuzz", &ck) == HM_OK) {
      // touch every tensor so a wrong size or pointer shows up
      float sum = 0;
      for (int i = 0; i < ck.n_tensors; i++)
        for (uint64_t j = 0; j < ck.tensors[i].numel; j++) sum += ck.tensors[i].data[j];
      fuzz_sink = sum;
      (void)hm_ckpt_find(&ck, "param/wte");
      hm_ckpt_free(&ck);
    }
  } else {
    hm_tokfile tf;
    if (hm_tokfile_parse(img, len, "fuzz", &tf) == HM_OK) {
      uint32_t sum = 0;
      for (uint64_t i = 0; i < tf.count; i++) sum += hm_tokfile_at(&tf, i);
      fuzz_sink = sum;
    }
  }
  free(img);
  return 0;
}
