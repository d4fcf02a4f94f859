/* Which chunks to a peer go compressed, and the TCP transport's hooks (see compress.h).
 *
 * A floating-point chunk to rank r is a candidate when r's link is slower than zip.below (the
 * peer's link_bw from the topology, or HETMIX_LINK_BW). Per peer and element size the sender
 * keeps running means of the compression ratio and of the codec's compress and decompress
 * throughput, measured on the chunks it compresses; the cost model (hm_cost_zip_pays) then says
 * whether compress + send + decompress of the transfer beats sending it. Every
 * HM_ZIP_PROBE_EVERY-th chunk of a stream (and its first) is a probe: compressed whatever the
 * decision, decoded again to time decompression and to check the round trip bit for bit, and
 * sent compressed when it shrank. Planes that did not shrink in the last chunk are stored
 * without trying for the next few (the low mantissa bytes are close to random). Decisions need
 * not agree between ranks: each frame says whether it is compressed. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define MEAN_WEIGHT 0.125
#define PLANE_RETRY 8 /* chunks between two tries of a plane that did not shrink */

hm_status hm_zip_configure(hm_zip_conf *z, const char *setting, long always, long below, long link_bw) {
  memset(z, 0, sizeof *z);
  if (strcmp(setting, "off") == 0) return HM_OK;
  if (strcmp(setting, "auto") == 0)
    z->codec = hm_zip_codec_available(HM_ZIP_ZSTD) ? HM_ZIP_ZSTD
               : hm_zip_codec_available(HM_ZIP_LZ4) ? HM_ZIP_LZ4
                                                     : HM_ZIP_NONE;
  else if (strcmp(setting, "zstd") == 0 || strcmp(setting, "lz4") == 0) {
    z->codec = setting[0] == 'z' ? HM_ZIP_ZSTD : HM_ZIP_LZ4;
    if (!hm_zip_codec_available(z->codec))
      return hm_error(HM_ERR_INVALID_ARG,
                      "config.compress (or HETMIX_COMPRESS): '%s', but this build has no lib%s (install it and "
                      "rebuild, or use 'auto')", setting, setting);
  } else
    return hm_error(HM_ERR_INVALID_ARG, "config.compress (or HETMIX_COMPRESS): '%s' is not one of auto|off|zstd|lz4",
                    setting);
  z->always = always != 0;
  z->below = (double)below;
  z->link_bw = (double)link_bw;
  return HM_OK;
}

static int is_float(hm_dtype dt) {
  return dt == HM_FLOAT16 || dt == HM_BFLOAT16 || dt == HM_FLOAT32 || dt == HM_FLOAT64;
}

static int size_index(size_t es) { return es == 1 ? 0 : es == 2 ? 1 : es == 4 ? 2 : 3; }

static void mean_in(double *m, double v, int known) { *m = known ? *m + MEAN_WEIGHT * (v - *m) : v; }

static hm_zip_peer *zip_peer(hm_comm_t c, int r) {
  hm_peer *p = &c->peers[r];
  if (!p->zip) p->zip = hm_calloc(1, sizeof *p->zip, "compression state");
  return p->zip;
}

/* The send-side buffers of r's state, and slot's frame (made on first use). */
static hm_status tx_ready(hm_comm_t c, hm_zip_peer *z, int slot) {
  const size_t chunk = c->tcp_chunk;
  if (!z->check_out) {
    HM_TRY(hm_zip_ctx_init(&z->tx, chunk));
    HM_TRY(hm_zip_ctx_init(&z->check, chunk));
    z->check_out = hm_malloc(chunk, "compression check buffer");
    if (!z->check_out) return HM_ERR_NOMEM;
  }
  if (!z->tx_frame[slot]) z->tx_frame[slot] = hm_malloc(HM_ZIP_HDR_BYTES(HM_ZIP_MAX_PLANES) + chunk, "compressed frame");
  return z->tx_frame[slot] ? HM_OK : HM_ERR_NOMEM;
}

/* A probe's second half: decode the frame again (timed) and compare with the chunk. */
static hm_status probe_check(hm_comm_t c, int r, hm_zip_peer *z, hm_zip_stream *s, const unsigned char *frame,
                             const char *src, uint32_t n, size_t len) {
  hm_zip_frame f;
  const uint64_t t0 = hm_now_ns();
  hm_status st = hm_zip_parse(frame, len, n, &f);
  if (st == HM_OK) st = hm_zip_decode(&z->check, &f, z->check_out);
  const double dt = (double)(hm_now_ns() - t0) * 1e-9;
  if (st == HM_OK && memcmp(z->check_out, src, n) != 0)
    st = hm_error(HM_ERR_INTERNAL, "compressed chunk does not decode to itself");
  if (st != HM_OK) {
    hm_error_context(st, "rank %d: compressing for rank %d: ", c->rank, r);
    return st;
  }
  mean_in(&s->fig.decompress_bw, n / (dt > 1e-9 ? dt : 1e-9), s->known);
  return HM_OK;
}

/* Compresses src into frame, updating the stream's figures; *len = frame bytes. */
static hm_status encode(hm_comm_t c, int r, hm_zip_peer *z, hm_zip_stream *s, unsigned char *frame, size_t es,
                        const char *src, uint32_t n, int probe, size_t *len) {
  const unsigned skip = s->chunks % PLANE_RETRY == 0 ? 0u : s->stored_mask;
  const int planes = n % es == 0 ? (int)es : 1;
  unsigned stored;
  const uint64_t t0 = hm_now_ns();
  hm_status st = hm_zip_encode(&z->tx, c->zip.codec, planes, skip, src, n, frame, HM_ZIP_HDR_BYTES(planes) + n, len,
                               &stored);
  if (st != HM_OK) return hm_error_context(st, "rank %d: compressing for rank %d: ", c->rank, r);
  const double dt = (double)(hm_now_ns() - t0) * 1e-9;
  s->stored_mask = stored;
  s->chunks++;
  if (probe) HM_TRY(probe_check(c, r, z, s, frame, src, n, *len));
  mean_in(&s->fig.compress_bw, n / (dt > 1e-9 ? dt : 1e-9), s->known);
  mean_in(&s->fig.ratio, *len < n ? (double)*len / n : 1.0, s->known);
  s->known = s->fig.decompress_bw > 0;
  return HM_OK;
}

hm_status hm_zip_tx(hm_comm_t c, int r, int slot, uint64_t desc, size_t total, const char *src, uint32_t n, const char **payload,
                    uint32_t *len, uint16_t *flags) {
  *payload = src, *len = n, *flags = 0;
  const hm_zip_conf *zc = &c->zip;
  hm_desc d; /* the call's element type (point-to-point transfers move bytes: the engine's is u8) */
  hm_desc_unpack(desc, &d);
  const hm_dtype dt = (hm_dtype)d.dtype;
  if (zc->codec == HM_ZIP_NONE || !is_float(dt) || n < HM_ZIP_MIN_CHUNK) return HM_OK;
  const hm_link link = {zc->link_bw > 0 ? zc->link_bw : c->peers[r].link_bw, 0, 0, 0};
  if (!zc->always && !(link.bandwidth > 0 && link.bandwidth < zc->below)) return HM_OK;
  hm_zip_peer *z = zip_peer(c, r);
  if (!z) return hm_comm_fail(c, HM_ERR_NOMEM, 1);
  hm_status st = tx_ready(c, z, slot);
  if (st != HM_OK) return hm_comm_fail(c, st, 1);
  z->offered += n;
  const size_t es = hm_dtype_size(dt);
  hm_zip_stream *s = &z->stream[size_index(es)];
  const int probe = !s->known || ++s->since_probe >= HM_ZIP_PROBE_EVERY;
  if (!probe && !zc->always && !hm_cost_zip_pays(&link, (double)total, c->tcp_chunk, &s->fig)) return HM_OK;
  if (probe) s->since_probe = 0;
  size_t out;
  st = encode(c, r, z, s, z->tx_frame[slot], es, src, n, probe, &out);
  if (st != HM_OK) return hm_comm_fail(c, st, 1);
  if (out >= n) return HM_OK;
  z->zipped_raw += n;
  z->zipped_wire += out;
  *payload = (const char *)z->tx_frame[slot], *len = (uint32_t)out, *flags = HM_WIRE_FLAG_ZIP;
  return HM_OK;
}

hm_status hm_zip_rx_buffer(hm_comm_t c, int r, char **buf) {
  hm_zip_peer *z = zip_peer(c, r);
  if (z && !z->rx_frame) {
    if (hm_zip_ctx_init(&z->rx, c->tcp_chunk) == HM_OK)
      z->rx_frame = hm_malloc(c->tcp_chunk, "compressed frame");
  }
  *buf = z ? (char *)z->rx_frame : NULL;
  if (*buf) return HM_OK;
  hm_error_context(HM_ERR_NOMEM, "rank %d: data from rank %d: ", c->rank, r);
  return hm_comm_fail(c, HM_ERR_NOMEM, 1);
}

hm_status hm_zip_rx_parse(hm_comm_t c, int r, const char *p, uint32_t len, hm_zip_frame *f) {
  if (hm_zip_parse((const unsigned char *)p, len, c->tcp_chunk, f) == HM_OK) return HM_OK;
  hm_error_context(HM_ERR_PROTOCOL, "rank %d: data from rank %d: ", c->rank, r);
  return hm_comm_fail(c, HM_ERR_PROTOCOL, 1);
}

hm_status hm_zip_rx_decode(hm_comm_t c, int r, const hm_zip_frame *f, void *dst) {
  hm_zip_peer *z = c->peers[r].zip;
  hm_status st = hm_zip_decode(&z->rx, f, dst);
  if (st == HM_OK) {
    z->received_raw += f->raw_len;
    z->received_wire += HM_ZIP_HDR_BYTES(f->planes);
    for (int k = 0; k < f->planes; k++) z->received_wire += f->plane_len[k];
    return HM_OK;
  }
  hm_error_context(st, "rank %d: data from rank %d: ", c->rank, r);
  return hm_comm_fail(c, st, 1);
}

void hm_zip_peer_free(hm_comm_t c, int r) {
  hm_zip_peer *z = c->peers[r].zip;
  if (!z) return;
  if (z->offered)
    hm_log(HM_LOG_INFO, "rank %d: to rank %d: compressed %llu of %llu candidate bytes to %llu (%s)", c->rank, r,
           (unsigned long long)z->zipped_raw, (unsigned long long)z->offered, (unsigned long long)z->zipped_wire,
           hm_zip_codec_name(c->zip.codec));
  if (z->received_raw)
    hm_log(HM_LOG_INFO, "rank %d: from rank %d: decompressed %llu bytes to %llu", c->rank, r,
           (unsigned long long)z->received_wire, (unsigned long long)z->received_raw);
  hm_zip_ctx_free(&z->tx);
  hm_zip_ctx_free(&z->rx);
  hm_zip_ctx_free(&z->check);
  for (int k = 0; k < HM_ZIP_TX_SLOTS; k++) free(z->tx_frame[k]);
  free(z->rx_frame);
  free(z->check_out);
  free(z);
  c->peers[r].zip = NULL;
}
