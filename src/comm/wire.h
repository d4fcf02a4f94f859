/* hmcomm wire format: the fixed 32-byte frame header every TCP message starts with (store,
 * authentication, control and data frames), the collective descriptor packed into it, and the
 * payload decoders. Decoders are pure functions over untrusted bytes (the fuzz target drives
 * them); nothing in a frame is used before hm_wire_decode_header() accepted it.
 * Not here: sockets (net.c), the shared-memory slot layout (shm.c). Layout: docs/comm.md. */
#ifndef HETMIX_COMM_WIRE_H
#define HETMIX_COMM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/status.h"

#define HM_WIRE_MAGIC 0x31584d48u /* "HMX1" little-endian */
#define HM_WIRE_VERSION 1
#define HM_WIRE_HDR_BYTES 32
#define HM_WIRE_MAX_PAYLOAD (64u << 20)
#define HM_WIRE_NONCE_BYTES 32
#define HM_WIRE_MAC_BYTES 32
#define HM_WIRE_TAG_BYTES 16
#define HM_WIRE_MAX_KEY 256

typedef enum hm_wire_type {
  HM_WIRE_HELLO = 1,     /* connector -> acceptor: tag, nonce, rank, purpose */
  HM_WIRE_CHALLENGE,     /* acceptor -> connector: nonce, mac proving the acceptor knows the secret */
  HM_WIRE_RESPONSE,      /* connector -> acceptor: mac proving the connector knows the secret */
  HM_WIRE_AUTH_OK,       /* acceptor -> connector: accepted */
  HM_WIRE_STORE_SET,     /* key length u16, key, value */
  HM_WIRE_STORE_GET,     /* key; the reply comes when the key exists */
  HM_WIRE_STORE_VALUE,   /* value */
  HM_WIRE_DATA,          /* one chunk of a transfer: seq + descriptor in the header */
  HM_WIRE_CTRL_ERROR,    /* a rank failed: aux = hm_status, payload = message */
  HM_WIRE_CTRL_READY,    /* bootstrap barrier token */
  HM_WIRE_CTRL_BYE,      /* the sender destroys its communicator (an orderly leave, not a death) */
  HM_WIRE_CTRL_HEARTBEAT, /* the sender's process is alive (sent every heartbeat_ms) */
  HM_WIRE_TYPE_END
} hm_wire_type;

/* Purposes of a connection (HELLO). */
enum { HM_CONN_STORE = 0, HM_CONN_CTRL = 1, HM_CONN_DATA = 2, HM_CONN_PURPOSE_END };

/* Header flags. HM_WIRE_FLAG_ZIP (DATA only): the payload is a compressed chunk (comm/compress.h);
 * any other bit, or the flag on another type, is refused. */
#define HM_WIRE_FLAG_ZIP 0x1u

typedef struct hm_wire_hdr {
  uint32_t magic;
  uint8_t version;
  uint8_t type;
  uint16_t flags;
  uint32_t seq;     /* operation sequence number (data), unused otherwise */
  uint32_t len;     /* payload bytes that follow */
  uint64_t desc;    /* packed collective descriptor (data) */
  uint32_t aux;     /* type-specific */
  uint32_t check;   /* FNV-1a of bytes 0..27 */
} hm_wire_hdr;

void hm_wire_encode_header(const hm_wire_hdr *h, unsigned char out[HM_WIRE_HDR_BYTES]);
/* Fills magic, version and check; validates everything else. */
hm_status hm_wire_decode_header(const unsigned char *buf, size_t n, hm_wire_hdr *out);
void hm_wire_make_header(hm_wire_hdr *h, int type, uint32_t seq, uint32_t len, uint64_t desc,
                         uint32_t aux);

typedef struct hm_wire_hello {
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char nonce[HM_WIRE_NONCE_BYTES];
  int32_t rank;
  uint32_t purpose;
} hm_wire_hello;
#define HM_WIRE_HELLO_BYTES (HM_WIRE_TAG_BYTES + HM_WIRE_NONCE_BYTES + 8)
void hm_wire_encode_hello(const hm_wire_hello *h, unsigned char out[HM_WIRE_HELLO_BYTES]);
hm_status hm_wire_decode_hello(const unsigned char *p, size_t n, hm_wire_hello *out);

/* STORE_SET payload: u16 key length, key bytes, value bytes. Key must be printable. */
size_t hm_wire_encode_store_set(unsigned char *out, size_t cap, const char *key, const void *val,
                                size_t val_len);
hm_status hm_wire_decode_store_set(const unsigned char *p, size_t n, char key[HM_WIRE_MAX_KEY + 1],
                                   const unsigned char **val, size_t *val_len);
hm_status hm_wire_decode_store_key(const unsigned char *p, size_t n, char key[HM_WIRE_MAX_KEY + 1]);

/* Collective descriptor: what a rank believes the current operation is. Every data chunk carries
 * its sender's, so a receiver detects mismatched calls before it uses any data. */
#define HM_DESC_P2P 15 /* kind of point-to-point transfers */
typedef struct hm_desc {
  int kind;      /* hm_coll_kind, or HM_DESC_P2P */
  int dtype;
  int op;
  int root;      /* -1 when not rooted */
  uint64_t count;
} hm_desc;
uint64_t hm_desc_pack(const hm_desc *d);
void hm_desc_unpack(uint64_t v, hm_desc *d);
/* "allreduce(count=10, f32, sum)" */
void hm_desc_format(uint64_t v, char *buf, size_t cap);

uint32_t hm_fnv1a(const void *p, size_t n);

#endif
