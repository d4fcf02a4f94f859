/* Mutual challenge-response authentication of every hmcomm connection with the job secret.
 *
 *   connector -> HELLO     tag, nonce_c, rank, purpose
 *   acceptor  -> CHALLENGE nonce_a, HMAC(secret, "hmx-a" | hello | nonce_a)
 *   connector -> RESPONSE  HMAC(secret, "hmx-c" | hello | nonce_a)
 *   acceptor  -> AUTH_OK
 * Both sides prove they know the secret; it never crosses the wire; fresh nonces from
 * getrandom() on both sides make recorded exchanges useless. HMAC-SHA256 from libcrypto. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

/* HMAC-SHA256(secret, role | hello | nonce_a); role "hmx-a": the acceptor's proof, "hmx-c": the
 * connector's. */
static void hm_auth_mac(const unsigned char *secret, const char *role, const unsigned char *hello,
                        const unsigned char *nonce_a, unsigned char out[HM_WIRE_MAC_BYTES]) {
  unsigned char msg[8 + HM_WIRE_HELLO_BYTES + HM_WIRE_NONCE_BYTES];
  memset(msg, 0, sizeof msg);
  memcpy(msg, role, strlen(role));
  memcpy(msg + 8, hello, HM_WIRE_HELLO_BYTES);
  memcpy(msg + 8 + HM_WIRE_HELLO_BYTES, nonce_a, HM_WIRE_NONCE_BYTES);
  unsigned int len = HM_WIRE_MAC_BYTES;
  HMAC(EVP_sha256(), secret, HM_SECRET_BYTES, msg, sizeof msg, out, &len);
}

hm_status hm_auth_connect(int fd, const unsigned char tag[HM_WIRE_TAG_BYTES],
                          const unsigned char secret[HM_SECRET_BYTES], int rank, int purpose,
                          uint64_t deadline_ns) {
  hm_wire_hello h;
  memcpy(h.tag, tag, HM_WIRE_TAG_BYTES);
  hm_random_bytes(h.nonce, sizeof h.nonce);
  h.rank = rank;
  h.purpose = (uint32_t)purpose;
  unsigned char hello[HM_WIRE_HELLO_BYTES];
  hm_wire_encode_hello(&h, hello);
  HM_TRY(hm_net_send_frame(fd, HM_WIRE_HELLO, 0, 0, 0, hello, sizeof hello, deadline_ns));

  hm_wire_hdr fh;
  unsigned char buf[HM_WIRE_NONCE_BYTES + HM_WIRE_MAC_BYTES];
  hm_status st = hm_net_recv_frame(fd, &fh, buf, sizeof buf, deadline_ns);
  if (st != HM_OK) return hm_error_context(HM_ERR_AUTH, "authentication (waiting for challenge): ");
  if (fh.type != HM_WIRE_CHALLENGE || fh.len != sizeof buf)
    return hm_error(HM_ERR_AUTH, "authentication: expected a challenge, got frame type %u", (unsigned)fh.type);
  unsigned char want[HM_WIRE_MAC_BYTES];
  hm_auth_mac(secret, "hmx-a", hello, buf, want);
  if (CRYPTO_memcmp(want, buf + HM_WIRE_NONCE_BYTES, HM_WIRE_MAC_BYTES) != 0)
    return hm_error(HM_ERR_AUTH, "authentication: the peer does not know the job secret");
  unsigned char resp[HM_WIRE_MAC_BYTES];
  hm_auth_mac(secret, "hmx-c", hello, buf, resp);
  HM_TRY(hm_net_send_frame(fd, HM_WIRE_RESPONSE, 0, 0, 0, resp, sizeof resp, deadline_ns));
  st = hm_net_recv_frame(fd, &fh, NULL, 0, deadline_ns);
  if (st != HM_OK || fh.type != HM_WIRE_AUTH_OK)
    return hm_error(HM_ERR_AUTH, "authentication: the peer refused this process's job secret");
  return HM_OK;
}

/* Acceptor side, one frame at a time (the caller's poll loop reads the frames). */
hm_status hm_auth_accept_step(int fd, hm_auth_pending *a, const hm_wire_hdr *h, const unsigned char *payload,
                              hm_secret_lookup_fn lookup, void *arg) {
  if (a->state == HM_AUTH_HELLO) {
    if (h->type != HM_WIRE_HELLO)
      return hm_error(HM_ERR_AUTH, "expected a hello, got frame type %u", (unsigned)h->type);
    HM_TRY(hm_wire_decode_hello(payload, h->len, &a->hello));
    const char *why = "unknown job";
    const unsigned char *secret = lookup(&a->hello, arg, &why);
    if (!secret) return hm_error(HM_ERR_AUTH, "%s", why);
    memcpy(a->secret, secret, HM_SECRET_BYTES);
    memcpy(a->hello_bytes, payload, HM_WIRE_HELLO_BYTES);
    unsigned char ch[HM_WIRE_NONCE_BYTES + HM_WIRE_MAC_BYTES];
    hm_random_bytes(a->nonce, HM_WIRE_NONCE_BYTES);
    memcpy(ch, a->nonce, HM_WIRE_NONCE_BYTES);
    hm_auth_mac(a->secret, "hmx-a", a->hello_bytes, a->nonce, ch + HM_WIRE_NONCE_BYTES);
    a->state = HM_AUTH_RESPONSE;
    /* a fresh connection's send buffer is empty: this does not block */
    return hm_net_send_frame(fd, HM_WIRE_CHALLENGE, 0, 0, 0, ch, sizeof ch, hm_deadline_after_ms(500));
  }
  if (a->state != HM_AUTH_RESPONSE) return hm_error(HM_ERR_PROTOCOL, "frame after authentication");
  unsigned char want[HM_WIRE_MAC_BYTES];
  hm_auth_mac(a->secret, "hmx-c", a->hello_bytes, a->nonce, want);
  if (h->type != HM_WIRE_RESPONSE || h->len != HM_WIRE_MAC_BYTES || CRYPTO_memcmp(want, payload, sizeof want) != 0)
    return hm_error(HM_ERR_AUTH, "no valid proof of the job secret");
  a->state = HM_AUTH_DONE;
  return hm_net_send_frame(fd, HM_WIRE_AUTH_OK, 0, 0, 0, NULL, 0, hm_deadline_after_ms(500));
}
