/* Lossless compression of data chunks on slow TCP links (docs/comm.md, "Compression").
 *
 * The codec (compress.c): a chunk of floating-point elements is split into byte planes (byte k
 * of every element together, so the sign/exponent bytes group and the near-random low mantissa
 * bytes stay apart), each plane is compressed with zstd or lz4 or kept as is, and the result is
 * framed as the payload of a DATA frame flagged HM_WIRE_FLAG_ZIP:
 *
 *   off 0  codec u8     1 zstd, 2 lz4
 *   off 1  planes u8    1, 2, 4 or 8 (the element size; 1 = no split)
 *   off 2  raw_mask u8  bit k set: plane k is stored uncompressed
 *   off 3  zero u8
 *   off 4  raw_len u32  bytes the chunk decodes to (a multiple of planes, > 0)
 *   off 8  plane_len u32 x planes   bytes of each plane's block, in plane order
 *   then the blocks
 *
 * hm_zip_parse checks every field against the bytes present and the receiver's limit before
 * anything is decoded, and hm_zip_decode checks that each block decodes to exactly its plane:
 * a corrupt or hostile frame gives HM_ERR_PROTOCOL naming what is wrong. Pure functions of their
 * buffers (the fuzz target drives them).
 *
 * The policy (compress_link.c): which chunks to a peer go compressed, from the peer's link
 * bandwidth, measured codec throughput and a running compression ratio per peer and element
 * size, through the cost model (hm_cost_zip_*, include/hetmix/cost.h); the TCP transport's hooks. */
#ifndef HETMIX_COMM_COMPRESS_H
#define HETMIX_COMM_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/cost.h"
#include "hetmix/dtype.h"
#include "hetmix/status.h"

enum { HM_ZIP_NONE = 0, HM_ZIP_ZSTD = 1, HM_ZIP_LZ4 = 2, HM_ZIP_CODEC_END };
#define HM_ZIP_MAX_PLANES 8
#define HM_ZIP_HDR_BYTES(planes) (8u + 4u * (unsigned)(planes))

const char *hm_zip_codec_name(int codec); /* "zstd", "lz4", "none" */
/* Whether this build has the codec (zstd and lz4 are optional at build time). */
int hm_zip_codec_available(int codec);

/* Per-direction codec state: library contexts and a plane buffer of max_raw bytes. */
typedef struct hm_zip_ctx {
  void *cctx;           /* ZSTD_CCtx (made on first zstd encode) */
  void *dctx;           /* ZSTD_DCtx (made on first zstd decode) */
  unsigned char *planes; /* max_raw bytes */
  size_t max_raw;
} hm_zip_ctx;
hm_status hm_zip_ctx_init(hm_zip_ctx *z, size_t max_raw);
void hm_zip_ctx_free(hm_zip_ctx *z);

/* Byte planes: plane k of dst holds byte k of every es-byte element of src (n bytes, a multiple
 * of es); join is the inverse. */
void hm_zip_split(unsigned char *dst, const unsigned char *src, size_t n, size_t es);
void hm_zip_join(unsigned char *dst, const unsigned char *src, size_t n, size_t es);

/* Encodes n bytes of src (n a multiple of planes, 0 < n <= z->max_raw) into out (cap bytes, at
 * least HM_ZIP_HDR_BYTES(planes) + n). Planes in skip_mask are stored without trying; a plane
 * that does not shrink is stored too. *out_len: frame bytes; *raw_mask: the planes stored. */
hm_status hm_zip_encode(hm_zip_ctx *z, int codec, int planes, unsigned skip_mask, const void *src, size_t n,
                        unsigned char *out, size_t cap, size_t *out_len, unsigned *raw_mask);

typedef struct hm_zip_frame {
  int codec, planes;
  unsigned raw_mask;
  uint32_t raw_len;
  uint32_t plane_len[HM_ZIP_MAX_PLANES];
  const unsigned char *blocks; /* first block */
} hm_zip_frame;
/* Checks a frame of n bytes: known codec present in this build, planes 1/2/4/8, raw_len in
 * (0, max_raw] and a multiple of planes, block lengths that add up to exactly the bytes present
 * and that equal the plane size for stored planes. */
hm_status hm_zip_parse(const unsigned char *p, size_t n, size_t max_raw, hm_zip_frame *f);
/* Decodes a parsed frame into dst (f->raw_len bytes); z->max_raw >= f->raw_len. Every block must
 * decode to exactly raw_len / planes bytes. */
hm_status hm_zip_decode(hm_zip_ctx *z, const hm_zip_frame *f, void *dst);


/* ---- policy and the TCP transport's hooks (compress_link.c) ---- */
struct hm_comm;
#define HM_ZIP_MIN_CHUNK 256u    /* smaller chunks go as they are */
#define HM_ZIP_PROBE_EVERY 64u   /* chunks between two probes of a stream (below) */
#define HM_ZIP_DEFAULT_BELOW 1.25e9 /* links under 10 Gbit/s are candidates */

/* The communicator's settings (bootstrap.c: config.compress / HETMIX_COMPRESS and the knobs). */
typedef struct hm_zip_conf {
  int codec;      /* HM_ZIP_NONE: off */
  int always;     /* HETMIX_COMPRESS_ALWAYS=1: every floating-point chunk over TCP, whatever the
                     link and the cost (tests, benchmarks) */
  double below;   /* HETMIX_COMPRESS_BELOW: links slower than this many bytes/s are candidates */
  double link_bw; /* HETMIX_LINK_BW: the bandwidth of every TCP peer's link (bytes/s), overriding
                     hm_peer.link_bw; 0: use hm_peer.link_bw */
} hm_zip_conf;

/* What the sender knows of one stream (a peer and an element size). */
typedef struct hm_zip_stream {
  hm_zip_figures fig; /* running means (1/8 weight to each new chunk) */
  int known;          /* fig holds measurements */
  uint32_t since_probe;
  uint32_t chunks;
  unsigned stored_mask; /* planes the last chunk stored (not worth compressing) */
} hm_zip_stream;

/* Per-peer state, made on first use. */
#define HM_ZIP_TX_SLOTS 8 /* compressed frames in flight to one peer: one per TCP stream */
typedef struct hm_zip_peer {
  hm_zip_ctx tx, rx, check; /* check: a probe's trial decode */
  unsigned char *tx_frame[HM_ZIP_TX_SLOTS]; /* the compressed frame each stream is sending (made
                                               on first use) */
  unsigned char *rx_frame;  /* a compressed frame being received */
  unsigned char *check_out;
  hm_zip_stream stream[4];  /* element sizes 1, 2, 4, 8 */
  uint64_t offered, zipped_raw, zipped_wire, received_raw, received_wire;
} hm_zip_peer;

/* Parses config.compress / HETMIX_COMPRESS ("auto", "off", "zstd", "lz4") and the knobs into *z;
 * a codec this build lacks is an error naming it. */
hm_status hm_zip_configure(hm_zip_conf *z, const char *setting, long always, long below, long link_bw);

/* Send side: chunk src[0, n) of a transfer of `total` bytes to rank r for the call described by
 * desc (its dtype is the element type), going out on stream `slot` (0..HM_ZIP_TX_SLOTS-1). Sets
 * *payload, *len and *flags to what goes on the wire: the chunk itself, or (HM_WIRE_FLAG_ZIP) a
 * compressed frame in the peer's buffer for that slot, valid until the next call for (r, slot). */
hm_status hm_zip_tx(struct hm_comm *c, int r, int slot, uint64_t desc, size_t total, const char *src, uint32_t n,
                    const char **payload, uint32_t *len, uint16_t *flags);
/* Receive side: the buffer a compressed frame from r is read into (made on first use). */
hm_status hm_zip_rx_buffer(struct hm_comm *c, int r, char **buf);
/* Checks the compressed frame p[0, len) from r (at most the chunk size decoded). */
hm_status hm_zip_rx_parse(struct hm_comm *c, int r, const char *p, uint32_t len, hm_zip_frame *f);
hm_status hm_zip_rx_decode(struct hm_comm *c, int r, const hm_zip_frame *f, void *dst);
/* Logs what was compressed for r (level info) and frees the state. */
void hm_zip_peer_free(struct hm_comm *c, int r);

#endif
