/* libFuzzer target for hmcomm's wire decoders: the frame header, then the payload decoder its
 * type selects (hello, store set, store key), and the descriptor formatter, as a receiving
 * rank or the rendezvous store would run them on bytes from an untrusted socket.
 * Any crash, sanitizer report or over-read is a bug. Not a test of sockets. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "comm/comm_internal.h"

static uint8_t g_buf[1 << 20];

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  /* Half of the inputs get a valid header check, so the fuzzer also reaches the payload
   * decoders instead of stopping at the checksum. */
  if (size > sizeof g_buf) size = sizeof g_buf;
  memcpy(g_buf, in, size);
  const uint8_t *data = g_buf;
  if (size >= HM_WIRE_HDR_BYTES && (size & 1)) {
    uint32_t ck = hm_fnv1a(g_buf, 28);
    for (int i = 0; i < 4; i++) g_buf[28 + i] = (uint8_t)(ck >> (8 * i));
  }
  hm_wire_hdr h;
  if (hm_wire_decode_header(data, size, &h) != HM_OK) {
    /* also drive the payload decoders directly on raw bytes */
    hm_wire_hello hello;
    hm_wire_decode_hello(data, size, &hello);
    char key[HM_WIRE_MAX_KEY + 1];
    const unsigned char *val;
    size_t vl;
    hm_wire_decode_store_set(data, size, key, &val, &vl);
    hm_wire_decode_store_key(data, size > HM_WIRE_MAX_KEY + 8 ? HM_WIRE_MAX_KEY + 8 : size, key);
    return 0;
  }
  const uint8_t *p = data + HM_WIRE_HDR_BYTES;
  size_t avail = size - HM_WIRE_HDR_BYTES;
  size_t n = h.len < avail ? h.len : avail; /* a truncated payload is what a short read gives */
  char key[HM_WIRE_MAX_KEY + 1], desc[160];
  switch (h.type) {
    case HM_WIRE_HELLO: {
      hm_wire_hello hello;
      if (hm_wire_decode_hello(p, n, &hello) == HM_OK) {
        unsigned char back[HM_WIRE_HELLO_BYTES];
        hm_wire_encode_hello(&hello, back);
        if (memcmp(back, p, HM_WIRE_HELLO_BYTES) != 0) __builtin_trap();
      }
      break;
    }
    case HM_WIRE_STORE_SET: {
      const unsigned char *val;
      size_t vl;
      if (hm_wire_decode_store_set(p, n, key, &val, &vl) == HM_OK && val + vl != p + n) __builtin_trap();
      break;
    }
    case HM_WIRE_STORE_GET:
      hm_wire_decode_store_key(p, n, key);
      break;
    case HM_WIRE_DATA:
      hm_desc_format(h.desc, desc, sizeof desc);
      break;
    default:
      break;
  }
  /* re-encoding an accepted header gives back the same bytes */
  unsigned char back[HM_WIRE_HDR_BYTES];
  hm_wire_encode_header(&h, back);
  if (memcmp(back, data, HM_WIRE_HDR_BYTES) != 0) __builtin_trap();
  return 0;
}
