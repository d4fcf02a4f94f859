/* libFuzzer target for hmcomm's compressed chunks (src/comm/compress.c), as a receiving rank runs
 * them on the payload of a DATA frame flagged compressed: the frame parser with the receiver's
 * limit, then the decoder into a buffer of exactly the size the frame claims. Whatever decodes is
 * encoded again and must decode back to the same bytes. Any crash, sanitizer report or over-read
 * is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm/compress.h"

#define MAX_RAW (64u << 10)

static hm_zip_ctx g_dec, g_enc;
static unsigned char g_out[MAX_RAW], g_frame[MAX_RAW + 64], g_back[MAX_RAW];

static void setup(void) {
  static int done;
  if (done) return;
  if (hm_zip_ctx_init(&g_dec, MAX_RAW) != HM_OK || hm_zip_ctx_init(&g_enc, MAX_RAW) != HM_OK) abort();
  done = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  setup();
  hm_zip_frame f;
  if (hm_zip_parse(in, size, MAX_RAW, &f) != HM_OK) return 0;
  if (hm_zip_decode(&g_dec, &f, g_out) != HM_OK) return 0;
  size_t len;
  unsigned stored;
  if (hm_zip_encode(&g_enc, f.codec, f.planes, 0, g_out, f.raw_len, g_frame, sizeof g_frame, &len, &stored) != HM_OK)
    abort();
  hm_zip_frame g;
  if (hm_zip_parse(g_frame, len, MAX_RAW, &g) != HM_OK || hm_zip_decode(&g_dec, &g, g_back) != HM_OK ||
      memcmp(g_back, g_out, f.raw_len) != 0)
    abort();
  return 0;
}
