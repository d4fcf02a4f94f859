/* hmcomm wire codec (see wire.h). Explicit little-endian encoding; every decoder bounds-checks
 * its input and returns HM_ERR_PROTOCOL with what is wrong instead of trusting it. */
#include "comm/wire.h"

#include <stdio.h>
#include <string.h>

#include "hetmix/comm.h"
#include "hetmix/cost.h"

static void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

uint32_t hm_fnv1a(const void *p, size_t n) {
  const unsigned char *c = p;
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 16777619u;
  return h;
}

void hm_wire_make_header(hm_wire_hdr *h, int type, uint32_t seq, uint32_t len, uint64_t desc,
                         uint32_t aux) {
  memset(h, 0, sizeof *h);
  h->magic = HM_WIRE_MAGIC;
  h->version = HM_WIRE_VERSION;
  h->type = (uint8_t)type;
  h->seq = seq;
  h->len = len;
  h->desc = desc;
  h->aux = aux;
}

void hm_wire_encode_header(const hm_wire_hdr *h, unsigned char out[HM_WIRE_HDR_BYTES]) {
  put32(out, HM_WIRE_MAGIC);
  out[4] = HM_WIRE_VERSION;
  out[5] = h->type;
  put16(out + 6, h->flags);
  put32(out + 8, h->seq);
  put32(out + 12, h->len);
  put64(out + 16, h->desc);
  put32(out + 24, h->aux);
  put32(out + 28, hm_fnv1a(out, 28));
}

hm_status hm_wire_decode_header(const unsigned char *b, size_t n, hm_wire_hdr *h) {
  if (n < HM_WIRE_HDR_BYTES)
    return hm_error(HM_ERR_PROTOCOL, "wire header truncated: %zu of %d bytes", n, HM_WIRE_HDR_BYTES);
  h->magic = get32(b);
  if (h->magic != HM_WIRE_MAGIC)
    return hm_error(HM_ERR_PROTOCOL, "wire header: bad magic 0x%08x (not an hmcomm peer?)",
                    (unsigned)h->magic);
  h->version = b[4];
  if (h->version != HM_WIRE_VERSION)
    return hm_error(HM_ERR_PROTOCOL, "wire header: version %u, this build speaks %d",
                    (unsigned)h->version, HM_WIRE_VERSION);
  h->check = get32(b + 28);
  uint32_t want = hm_fnv1a(b, 28);
  if (h->check != want)
    return hm_error(HM_ERR_PROTOCOL, "wire header: check 0x%08x != 0x%08x (corrupt frame)",
                    (unsigned)h->check, (unsigned)want);
  h->type = b[5];
  if (h->type < HM_WIRE_HELLO || h->type >= HM_WIRE_TYPE_END)
    return hm_error(HM_ERR_PROTOCOL, "wire header: unknown type %u", (unsigned)h->type);
  h->flags = get16(b + 6);
  if (h->flags & ~(h->type == HM_WIRE_DATA ? HM_WIRE_FLAG_ZIP : 0u))
    return hm_error(HM_ERR_PROTOCOL, "wire header: flags 0x%x on a frame of type %u", (unsigned)h->flags,
                    (unsigned)h->type);
  h->seq = get32(b + 8);
  h->len = get32(b + 12);
  if (h->len > HM_WIRE_MAX_PAYLOAD)
    return hm_error(HM_ERR_PROTOCOL, "wire header: payload %u bytes exceeds the %u limit",
                    (unsigned)h->len, HM_WIRE_MAX_PAYLOAD);
  h->desc = get64(b + 16);
  h->aux = get32(b + 24);
  return HM_OK;
}

void hm_wire_encode_hello(const hm_wire_hello *h, unsigned char out[HM_WIRE_HELLO_BYTES]) {
  memcpy(out, h->tag, HM_WIRE_TAG_BYTES);
  memcpy(out + HM_WIRE_TAG_BYTES, h->nonce, HM_WIRE_NONCE_BYTES);
  put32(out + HM_WIRE_TAG_BYTES + HM_WIRE_NONCE_BYTES, (uint32_t)h->rank);
  put32(out + HM_WIRE_TAG_BYTES + HM_WIRE_NONCE_BYTES + 4, h->purpose);
}

hm_status hm_wire_decode_hello(const unsigned char *p, size_t n, hm_wire_hello *h) {
  if (n != HM_WIRE_HELLO_BYTES)
    return hm_error(HM_ERR_PROTOCOL, "hello: payload %zu bytes, expected %d", n, HM_WIRE_HELLO_BYTES);
  memcpy(h->tag, p, HM_WIRE_TAG_BYTES);
  memcpy(h->nonce, p + HM_WIRE_TAG_BYTES, HM_WIRE_NONCE_BYTES);
  h->rank = (int32_t)get32(p + HM_WIRE_TAG_BYTES + HM_WIRE_NONCE_BYTES);
  h->purpose = get32(p + HM_WIRE_TAG_BYTES + HM_WIRE_NONCE_BYTES + 4);
  if (h->purpose >= HM_CONN_PURPOSE_END)
    return hm_error(HM_ERR_PROTOCOL, "hello: unknown purpose %u", (unsigned)h->purpose);
  if (h->rank < -1 || h->rank > (1 << 20))
    return hm_error(HM_ERR_PROTOCOL, "hello: rank %d out of range", (int)h->rank);
  return HM_OK;
}

static int key_ok(const unsigned char *k, size_t n) {
  if (n == 0 || n > HM_WIRE_MAX_KEY) return 0;
  for (size_t i = 0; i < n; i++)
    if (k[i] < 0x21 || k[i] > 0x7e) return 0;
  return 1;
}

size_t hm_wire_encode_store_set(unsigned char *out, size_t cap, const char *key, const void *val,
                                size_t val_len) {
  size_t kl = strlen(key);
  if (kl > HM_WIRE_MAX_KEY || 2 + kl + val_len > cap) return 0;
  put16(out, (uint16_t)kl);
  memcpy(out + 2, key, kl);
  if (val_len) memcpy(out + 2 + kl, val, val_len);
  return 2 + kl + val_len;
}

hm_status hm_wire_decode_store_set(const unsigned char *p, size_t n, char key[HM_WIRE_MAX_KEY + 1],
                                   const unsigned char **val, size_t *val_len) {
  if (n < 2) return hm_error(HM_ERR_PROTOCOL, "store set: payload of %zu bytes has no key length", n);
  size_t kl = get16(p);
  if (kl + 2 > n) return hm_error(HM_ERR_PROTOCOL, "store set: key length %zu exceeds payload %zu", kl, n);
  if (!key_ok(p + 2, kl))
    return hm_error(HM_ERR_PROTOCOL, "store set: key of %zu bytes is empty, too long or not printable", kl);
  memcpy(key, p + 2, kl);
  key[kl] = '\0';
  *val = p + 2 + kl;
  *val_len = n - 2 - kl;
  return HM_OK;
}

hm_status hm_wire_decode_store_key(const unsigned char *p, size_t n, char key[HM_WIRE_MAX_KEY + 1]) {
  if (!key_ok(p, n))
    return hm_error(HM_ERR_PROTOCOL, "store get: key of %zu bytes is empty, too long or not printable", n);
  memcpy(key, p, n);
  key[n] = '\0';
  return HM_OK;
}

/* bits 0-3 kind, 4-7 dtype, 8-11 op, 12-31 root+1, 32-63 count (low 32 bits; counts that differ
 * only above 2^32 elements are not told apart, which would need 16 GiB of i8 per rank). */
uint64_t hm_desc_pack(const hm_desc *d) {
  uint64_t v = (uint64_t)(d->kind & 15) | ((uint64_t)(d->dtype & 15) << 4) |
               ((uint64_t)(d->op & 15) << 8) | ((uint64_t)((uint32_t)(d->root + 1) & 0xfffff) << 12);
  return v | (d->count << 32);
}

void hm_desc_unpack(uint64_t v, hm_desc *d) {
  d->kind = (int)(v & 15);
  d->dtype = (int)((v >> 4) & 15);
  d->op = (int)((v >> 8) & 15);
  d->root = (int)((v >> 12) & 0xfffff) - 1;
  d->count = v >> 32;
}

void hm_desc_format(uint64_t v, char *buf, size_t cap) {
  hm_desc d;
  hm_desc_unpack(v, &d);
  const char *kind = d.kind == HM_DESC_P2P ? "send/recv" : hm_coll_kind_name((hm_coll_kind)d.kind);
  const char *dt = d.dtype < HM_DTYPE_COUNT ? hm_dtype_name((hm_dtype)d.dtype) : "?";
  int reducing = d.kind == HM_COLL_ALLREDUCE || d.kind == HM_COLL_REDUCE ||
                 d.kind == HM_COLL_REDUCE_SCATTER;
  char opbuf[32] = "", rootbuf[32] = "";
  if (reducing) snprintf(opbuf, sizeof opbuf, ", %s", d.op < HM_REDOP_COUNT ? hm_redop_name((hm_redop)d.op) : "?");
  if (d.root >= 0) snprintf(rootbuf, sizeof rootbuf, ", root=%d", d.root);
  snprintf(buf, cap, "%s(count=%llu, %s%s%s)", kind, (unsigned long long)d.count, dt, opbuf, rootbuf);
}
