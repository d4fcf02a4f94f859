/* The compressed-chunk codec (see compress.h): byte planes, zstd or lz4 per plane, the frame
 * layout, and its strict parser. Built with whichever of zstd and lz4 CMake found
 * (HETMIX_HAVE_ZSTD, HETMIX_HAVE_LZ4); a frame of a codec this build lacks is refused. */
#include "comm/compress.h"

#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#ifdef HETMIX_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef HETMIX_HAVE_LZ4
#include <lz4.h>
#endif

#define ZSTD_LEVEL 1 /* the fastest level that still entropy-codes literals (the exponent bytes) */

const char *hm_zip_codec_name(int codec) {
  return codec == HM_ZIP_ZSTD ? "zstd" : codec == HM_ZIP_LZ4 ? "lz4" : "none";
}

int hm_zip_codec_available(int codec) {
  (void)codec;
#ifdef HETMIX_HAVE_ZSTD
  if (codec == HM_ZIP_ZSTD) return 1;
#endif
#ifdef HETMIX_HAVE_LZ4
  if (codec == HM_ZIP_LZ4) return 1;
#endif
  return 0;
}

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

hm_status hm_zip_ctx_init(hm_zip_ctx *z, size_t max_raw) {
  memset(z, 0, sizeof *z);
  z->planes = hm_malloc(max_raw ? max_raw : 1, "compression plane buffer");
  if (!z->planes) return HM_ERR_NOMEM;
  z->max_raw = max_raw;
  return HM_OK;
}

void hm_zip_ctx_free(hm_zip_ctx *z) {
#ifdef HETMIX_HAVE_ZSTD
  ZSTD_freeCCtx(z->cctx);
  ZSTD_freeDCtx(z->dctx);
#endif
  free(z->planes);
  memset(z, 0, sizeof *z);
}

void hm_zip_split(unsigned char *dst, const unsigned char *src, size_t n, size_t es) {
  const size_t m = n / es;
  for (size_t k = 0; k < es; k++) {
    unsigned char *d = dst + k * m;
    const unsigned char *s = src + k;
    for (size_t i = 0; i < m; i++) d[i] = s[i * es];
  }
}

void hm_zip_join(unsigned char *dst, const unsigned char *src, size_t n, size_t es) {
  const size_t m = n / es;
  for (size_t k = 0; k < es; k++) {
    const unsigned char *s = src + k * m;
    unsigned char *d = dst + k;
    for (size_t i = 0; i < m; i++) d[i * es] = s[i];
  }
}

/* Compresses one plane of m bytes into at most cap bytes; 0 when it does not fit (or the codec
 * fails): the caller stores the plane instead. */
static size_t pack_plane(hm_zip_ctx *z, int codec, const unsigned char *src, size_t m, unsigned char *dst, size_t cap) {
  (void)z, (void)codec, (void)src, (void)m, (void)dst, (void)cap;
#ifdef HETMIX_HAVE_ZSTD
  if (codec == HM_ZIP_ZSTD) {
    if (!z->cctx && !(z->cctx = ZSTD_createCCtx())) return 0;
    size_t r = ZSTD_compressCCtx(z->cctx, dst, cap, src, m, ZSTD_LEVEL);
    return ZSTD_isError(r) ? 0 : r;
  }
#endif
#ifdef HETMIX_HAVE_LZ4
  if (codec == HM_ZIP_LZ4 && m <= LZ4_MAX_INPUT_SIZE && cap <= (size_t)INT32_MAX) {
    int r = LZ4_compress_default((const char *)src, (char *)dst, (int)m, (int)cap);
    return r > 0 ? (size_t)r : 0;
  }
#endif
  return 0;
}

static int valid_planes(int planes) { return planes == 1 || planes == 2 || planes == 4 || planes == 8; }

hm_status hm_zip_encode(hm_zip_ctx *z, int codec, int planes, unsigned skip_mask, const void *src, size_t n,
                        unsigned char *out, size_t cap, size_t *out_len, unsigned *raw_mask) {
  const size_t hdr = HM_ZIP_HDR_BYTES(planes);
  if (!hm_zip_codec_available(codec) || !valid_planes(planes) || n == 0 || n % (size_t)planes || n > z->max_raw ||
      n > UINT32_MAX || cap < hdr + n)
    return hm_error(HM_ERR_INVALID_ARG, "compress: codec %s, %d planes, %zu bytes, %zu of room (max %zu)",
                    hm_zip_codec_name(codec), planes, n, cap, z->max_raw);
  const unsigned char *in = src;
  if (planes > 1) {
    hm_zip_split(z->planes, src, n, (size_t)planes);
    in = z->planes;
  }
  const size_t m = n / (size_t)planes;
  size_t off = hdr;
  unsigned mask = 0;
  for (int k = 0; k < planes; k++) {
    size_t got = (skip_mask >> k) & 1u ? 0 : pack_plane(z, codec, in + k * m, m, out + off, m - 1);
    if (got == 0 || got >= m) {
      memcpy(out + off, in + k * m, m);
      got = m;
      mask |= 1u << k;
    }
    put32(out + 8 + 4 * k, (uint32_t)got);
    off += got;
  }
  out[0] = (unsigned char)codec;
  out[1] = (unsigned char)planes;
  out[2] = (unsigned char)mask;
  out[3] = 0;
  put32(out + 4, (uint32_t)n);
  *out_len = off;
  *raw_mask = mask;
  return HM_OK;
}

hm_status hm_zip_parse(const unsigned char *p, size_t n, size_t max_raw, hm_zip_frame *f) {
  memset(f, 0, sizeof *f);
  if (n < 8) return hm_error(HM_ERR_PROTOCOL, "compressed chunk: %zu bytes, shorter than its 8-byte header", n);
  f->codec = p[0];
  f->planes = p[1];
  f->raw_mask = p[2];
  f->raw_len = get32(p + 4);
  if (f->codec <= HM_ZIP_NONE || f->codec >= HM_ZIP_CODEC_END)
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: unknown codec %d", f->codec);
  if (!hm_zip_codec_available(f->codec))
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: codec %s, which this build lacks (built without lib%s)",
                    hm_zip_codec_name(f->codec), hm_zip_codec_name(f->codec));
  if (!valid_planes(f->planes))
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: %d byte planes (1, 2, 4 or 8)", f->planes);
  if (p[3] != 0 || f->raw_mask >> f->planes)
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: reserved byte %u, stored-plane mask 0x%x for %d planes",
                    (unsigned)p[3], f->raw_mask, f->planes);
  if (f->raw_len == 0 || f->raw_len > max_raw || f->raw_len % (uint32_t)f->planes)
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: decodes to %u bytes (at most %zu, a positive multiple of %d)",
                    (unsigned)f->raw_len, max_raw, f->planes);
  const size_t hdr = HM_ZIP_HDR_BYTES(f->planes), m = f->raw_len / (uint32_t)f->planes;
  if (n < hdr) return hm_error(HM_ERR_PROTOCOL, "compressed chunk: %zu bytes, its header needs %zu", n, hdr);
  uint64_t sum = 0;
  for (int k = 0; k < f->planes; k++) {
    f->plane_len[k] = get32(p + 8 + 4 * k);
    const int stored = (f->raw_mask >> k) & 1u;
    if ((stored && f->plane_len[k] != m) || (!stored && (f->plane_len[k] == 0 || f->plane_len[k] >= m)))
      return hm_error(HM_ERR_PROTOCOL, "compressed chunk: plane %d block of %u bytes for a %zu-byte %s plane", k,
                      (unsigned)f->plane_len[k], m, stored ? "stored" : "compressed");
    sum += f->plane_len[k];
  }
  if (sum != n - hdr)
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: blocks of %llu bytes in %zu bytes after the header",
                    (unsigned long long)sum, n - hdr);
  f->blocks = p + hdr;
  return HM_OK;
}

/* Decodes one block into exactly m bytes of dst. */
static hm_status unpack_plane(hm_zip_ctx *z, int codec, const unsigned char *src, size_t len, unsigned char *dst,
                              size_t m, int k) {
  (void)z, (void)src, (void)len, (void)dst, (void)m, (void)k;
#ifdef HETMIX_HAVE_ZSTD
  if (codec == HM_ZIP_ZSTD) {
    if (!z->dctx && !(z->dctx = ZSTD_createDCtx())) return hm_error(HM_ERR_NOMEM, "zstd decompression context");
    size_t r = ZSTD_decompressDCtx(z->dctx, dst, m, src, len);
    if (ZSTD_isError(r))
      return hm_error(HM_ERR_PROTOCOL, "compressed chunk: plane %d: zstd: %s", k, ZSTD_getErrorName(r));
    if (r != m) return hm_error(HM_ERR_PROTOCOL, "compressed chunk: plane %d decodes to %zu bytes, not %zu", k, r, m);
    return HM_OK;
  }
#endif
#ifdef HETMIX_HAVE_LZ4
  if (codec == HM_ZIP_LZ4) {
    int r = m <= (size_t)INT32_MAX && len <= (size_t)INT32_MAX
                ? LZ4_decompress_safe((const char *)src, (char *)dst, (int)len, (int)m)
                : -1;
    if (r < 0) return hm_error(HM_ERR_PROTOCOL, "compressed chunk: plane %d: lz4: corrupt block", k);
    if ((size_t)r != m) return hm_error(HM_ERR_PROTOCOL, "compressed chunk: plane %d decodes to %d bytes, not %zu", k, r, m);
    return HM_OK;
  }
#endif
  return hm_error(HM_ERR_PROTOCOL, "compressed chunk: codec %s is not in this build", hm_zip_codec_name(codec));
}

hm_status hm_zip_decode(hm_zip_ctx *z, const hm_zip_frame *f, void *dst) {
  if (f->raw_len > z->max_raw)
    return hm_error(HM_ERR_PROTOCOL, "compressed chunk: %u bytes exceed the %zu-byte buffer", (unsigned)f->raw_len,
                    z->max_raw);
  const size_t m = f->raw_len / (uint32_t)f->planes;
  unsigned char *planes = f->planes > 1 ? z->planes : dst;
  const unsigned char *b = f->blocks;
  for (int k = 0; k < f->planes; k++) {
    if ((f->raw_mask >> k) & 1u)
      memcpy(planes + k * m, b, m);
    else
      HM_TRY(unpack_plane(z, f->codec, b, f->plane_len[k], planes + k * m, m, k));
    b += f->plane_len[k];
  }
  if (f->planes > 1) hm_zip_join(dst, planes, f->raw_len, (size_t)f->planes);
  return HM_OK;
}
