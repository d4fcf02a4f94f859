/* Unit tests of the compressed-chunk codec and its settings (src/comm/compress*.c): round trips
 * of every codec and plane count on several kinds of data, the header flag, and every rejection
 * of a corrupt or hostile frame (each a clear HM_ERR_PROTOCOL, never a crash: this file also runs
 * under ASan+UBSan). Codecs the build lacks are skipped in the loops and checked to be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define N_MAX (1u << 16)

static uint64_t rng = 12345;
static uint32_t next32(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 32);
}

/* kind 0: random bytes; 1: zeros; 2: gradient-like floats (small, varied exponents) of es bytes */
static void fill(unsigned char *p, size_t n, int kind, size_t es) {
  if (kind == 1) {
    memset(p, 0, n);
    return;
  }
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)next32();
  if (kind == 2 && es >= 2) /* the top byte: sign and a narrow band of exponents */
    for (size_t i = es - 1; i < n; i += es) p[i] = (unsigned char)(0x38 + (next32() % 6) + (next32() & 0x80));
}

static void roundtrip(int codec, int planes, size_t n, int kind) {
  static unsigned char src[N_MAX], frame[N_MAX + 64], back[N_MAX];
  hm_zip_ctx enc, dec;
  assert_int_equal(hm_zip_ctx_init(&enc, N_MAX), HM_OK);
  assert_int_equal(hm_zip_ctx_init(&dec, N_MAX), HM_OK);
  fill(src, n, kind, (size_t)planes);
  size_t len;
  unsigned stored;
  assert_int_equal(hm_zip_encode(&enc, codec, planes, 0, src, n, frame, sizeof frame, &len, &stored), HM_OK);
  assert_true(len <= HM_ZIP_HDR_BYTES(planes) + n);
  if (kind == 1 && n >= 1024) assert_true(len < n / 8); /* zeros shrink */
  if (kind == 0) assert_int_equal(stored, (1u << planes) - 1); /* random bytes are stored */
  hm_zip_frame f;
  assert_int_equal(hm_zip_parse(frame, len, n, &f), HM_OK);
  assert_int_equal(f.raw_len, n);
  memset(back, 0xa5, n);
  assert_int_equal(hm_zip_decode(&dec, &f, back), HM_OK);
  assert_memory_equal(back, src, n);
  hm_zip_ctx_free(&enc);
  hm_zip_ctx_free(&dec);
}

static void test_roundtrips(void **state) {
  (void)state;
  int tried = 0;
  for (int codec = HM_ZIP_ZSTD; codec < HM_ZIP_CODEC_END; codec++) {
    if (!hm_zip_codec_available(codec)) continue;
    tried++;
    for (int planes = 1; planes <= 8; planes *= 2)
      for (int kind = 0; kind < 3; kind++) {
        roundtrip(codec, planes, (size_t)planes, kind);
        roundtrip(codec, planes, 1000 * (size_t)planes, kind);
        roundtrip(codec, planes, N_MAX, kind);
      }
  }
  if (!tried) skip();
}

/* Exponent bytes grouped into their own plane compress better than interleaved ones. */
static void test_planes_help_floats(void **state) {
  (void)state;
  if (!hm_zip_codec_available(HM_ZIP_ZSTD)) skip();
  static unsigned char src[N_MAX], frame[N_MAX + 64];
  fill(src, N_MAX, 2, 2);
  hm_zip_ctx z;
  assert_int_equal(hm_zip_ctx_init(&z, N_MAX), HM_OK);
  size_t split, whole;
  unsigned stored;
  assert_int_equal(hm_zip_encode(&z, HM_ZIP_ZSTD, 2, 0, src, N_MAX, frame, sizeof frame, &split, &stored), HM_OK);
  assert_int_equal(stored, 1u); /* the random low byte is stored, the exponent byte compressed */
  assert_int_equal(hm_zip_encode(&z, HM_ZIP_ZSTD, 1, 0, src, N_MAX, frame, sizeof frame, &whole, &stored), HM_OK);
  assert_true(split < whole);
  assert_true(split < N_MAX * 3 / 4);
  hm_zip_ctx_free(&z);
}

static void test_split_join_inverse(void **state) {
  (void)state;
  unsigned char a[96], b[96], c[96];
  for (int i = 0; i < 96; i++) a[i] = (unsigned char)i;
  for (size_t es = 1; es <= 8; es *= 2) {
    hm_zip_split(b, a, sizeof a, es);
    assert_int_equal(b[1], es == 1 ? 1 : es); /* plane 0 holds byte 0 of each element */
    hm_zip_join(c, b, sizeof a, es);
    assert_memory_equal(a, c, sizeof a);
  }
}

/* A valid zstd (else lz4) frame of 4 planes over 4096 bytes, with plane 0 stored. */
static size_t good_frame(unsigned char *frame, size_t cap) {
  unsigned char src[4096];
  fill(src, sizeof src, 2, 4);
  for (size_t i = 2; i < sizeof src; i += 4) src[i] = 0; /* plane 2 compressible */
  hm_zip_ctx z;
  assert_int_equal(hm_zip_ctx_init(&z, sizeof src), HM_OK);
  const int codec = hm_zip_codec_available(HM_ZIP_ZSTD) ? HM_ZIP_ZSTD : HM_ZIP_LZ4;
  size_t len;
  unsigned stored;
  assert_int_equal(hm_zip_encode(&z, codec, 4, 0, src, sizeof src, frame, cap, &len, &stored), HM_OK);
  assert_true(stored & 1u);
  assert_false(stored & 4u);
  hm_zip_ctx_free(&z);
  return len;
}

static void expect_refused(const unsigned char *p, size_t n, size_t max_raw, const char *what) {
  hm_zip_frame f;
  assert_int_equal(hm_zip_parse(p, n, max_raw, &f), HM_ERR_PROTOCOL);
  if (!strstr(hm_last_error(), what)) fail_msg("error '%s' does not name '%s'", hm_last_error(), what);
}

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_parse_rejections(void **state) {
  (void)state;
  if (!hm_zip_codec_available(HM_ZIP_ZSTD) && !hm_zip_codec_available(HM_ZIP_LZ4)) skip();
  unsigned char g[8192], b[8192];
  const size_t n = good_frame(g, sizeof g);
  hm_zip_frame f;
  assert_int_equal(hm_zip_parse(g, n, 4096, &f), HM_OK);
  expect_refused(g, 7, 4096, "shorter than");
  expect_refused(g, n, 4095, "decodes to 4096");   /* larger than the receiver's limit */
  expect_refused(g, n - 1, 4096, "blocks of");     /* truncated */
  memcpy(b, g, n), b[0] = 9;
  expect_refused(b, n, 4096, "unknown codec 9");
  memcpy(b, g, n), b[0] = 0;
  expect_refused(b, n, 4096, "unknown codec 0");
  memcpy(b, g, n), b[1] = 3;
  expect_refused(b, n, 4096, "3 byte planes");
  memcpy(b, g, n), b[3] = 1;
  expect_refused(b, n, 4096, "reserved byte 1");
  memcpy(b, g, n), b[2] = 0x10;
  expect_refused(b, n, 4096, "stored-plane mask 0x10");
  memcpy(b, g, n), put32(b + 4, 0);
  expect_refused(b, n, 4096, "decodes to 0 bytes");
  memcpy(b, g, n), put32(b + 4, 4094);
  expect_refused(b, n, 4096, "multiple of 4");
  memcpy(b, g, n), put32(b + 8, 0xffffffffu); /* a hostile length: no overflow, a clear error */
  expect_refused(b, n, 4096, "plane 0 block");
  memcpy(b, g, n), put32(b + 16, 0);
  expect_refused(b, n, 4096, "plane 2 block of 0 bytes");
  memcpy(b, g, n), put32(b + 16, 1024);
  expect_refused(b, n, 4096, "plane 2 block of 1024 bytes");
  memcpy(b, g, n), b[2] ^= 4; /* plane 2 claimed stored, but its block is compressed */
  expect_refused(b, n, 4096, "plane 2 block");
  memcpy(b, g, n);
  b[n] = 0;
  expect_refused(b, n + 1, 4096, "blocks of");     /* a trailing byte */
  for (size_t k = 0; k < n; k++) { /* every truncation is refused */
    assert_int_equal(hm_zip_parse(g, k, 4096, &f), HM_ERR_PROTOCOL);
  }
}

/* Corrupt block bytes: an error naming the plane, or (no checksum, as for plain chunks) bytes of
 * the right size; never more, never a crash. */
static void test_corrupt_blocks(void **state) {
  (void)state;
  if (!hm_zip_codec_available(HM_ZIP_ZSTD) && !hm_zip_codec_available(HM_ZIP_LZ4)) skip();
  unsigned char g[8192], b[8192], out[4096 + 64];
  const size_t n = good_frame(g, sizeof g);
  hm_zip_ctx z;
  assert_int_equal(hm_zip_ctx_init(&z, 4096), HM_OK);
  int errors = 0;
  const size_t first = HM_ZIP_HDR_BYTES(4) + 1024; /* plane 0 is stored: plane 1's block starts here */
  for (size_t k = first; k < n; k++)
    for (int bit = 0; bit < 8; bit += 3) {
      memcpy(b, g, n);
      b[k] ^= (unsigned char)(1u << bit);
      hm_zip_frame f;
      assert_int_equal(hm_zip_parse(b, n, 4096, &f), HM_OK);
      memset(out + 4096, 0x5a, 64);
      hm_status st = hm_zip_decode(&z, &f, out);
      if (st != HM_OK) {
        assert_int_equal(st, HM_ERR_PROTOCOL);
        assert_non_null(strstr(hm_last_error(), "plane"));
        errors++;
      }
      for (int i = 0; i < 64; i++) assert_int_equal(out[4096 + i], 0x5a); /* nothing past raw_len */
    }
  assert_true(errors > 0);
  hm_zip_ctx_free(&z);
}

static void test_header_flag(void **state) {
  (void)state;
  unsigned char b[HM_WIRE_HDR_BYTES];
  hm_wire_hdr h;
  hm_wire_make_header(&h, HM_WIRE_DATA, 1, 10, 0, 0);
  h.flags = HM_WIRE_FLAG_ZIP;
  hm_wire_encode_header(&h, b);
  assert_int_equal(hm_wire_decode_header(b, sizeof b, &h), HM_OK);
  assert_int_equal(h.flags, HM_WIRE_FLAG_ZIP);
  h.flags = 2; /* an unknown flag */
  hm_wire_encode_header(&h, b);
  assert_int_equal(hm_wire_decode_header(b, sizeof b, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "flags 0x2"));
  hm_wire_make_header(&h, HM_WIRE_CTRL_ERROR, 1, 10, 0, 0);
  h.flags = HM_WIRE_FLAG_ZIP; /* only data frames may be compressed */
  hm_wire_encode_header(&h, b);
  assert_int_equal(hm_wire_decode_header(b, sizeof b, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "flags 0x1"));
}

static void test_configure(void **state) {
  (void)state;
  hm_zip_conf z;
  assert_int_equal(hm_zip_configure(&z, "off", 1, 100, 0), HM_OK);
  assert_int_equal(z.codec, HM_ZIP_NONE);
  assert_int_equal(hm_zip_configure(&z, "auto", 0, 100, 50), HM_OK);
  assert_int_equal(z.codec, hm_zip_codec_available(HM_ZIP_ZSTD) ? HM_ZIP_ZSTD
                            : hm_zip_codec_available(HM_ZIP_LZ4) ? HM_ZIP_LZ4 : HM_ZIP_NONE);
  assert_true(z.below == 100 && z.link_bw == 50 && !z.always);
  for (int codec = HM_ZIP_ZSTD; codec < HM_ZIP_CODEC_END; codec++) {
    hm_status st = hm_zip_configure(&z, hm_zip_codec_name(codec), 1, 100, 0);
    if (hm_zip_codec_available(codec)) {
      assert_int_equal(st, HM_OK);
      assert_int_equal(z.codec, codec);
      assert_true(z.always);
    } else {
      assert_int_equal(st, HM_ERR_INVALID_ARG);
      assert_non_null(strstr(hm_last_error(), "this build has no"));
    }
  }
  assert_int_equal(hm_zip_configure(&z, "gzip", 0, 100, 0), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "HETMIX_COMPRESS"));
}

/* One rank of test_p2p_chunks_compressed: rank 0 sends N compressible f32 to rank 1 over TCP
 * (every chunk compressed), rank 1 checks them; each checks that its side of the pair counted
 * the transfer's bytes as compressed. Returns 0 when all holds. */
enum { P2P_N = 100000 };
static int p2p_rank(int rank, const hm_unique_id *id, const char *codec) {
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = "tcp";
  cfg.compress = codec;
  hm_comm_t c;
  if (hm_comm_init_rank(&c, 2, id, rank, &cfg) != HM_OK) return 2;
  static float buf[P2P_N], got[P2P_N];
  for (int i = 0; i < P2P_N; i++) buf[i] = (float)(i % 7) * 0.25f - 0.5f;
  hm_status st = rank == 0 ? hm_comm_send(c, buf, P2P_N, HM_FLOAT32, 1) : hm_comm_recv(c, got, P2P_N, HM_FLOAT32, 0);
  int bad = st != HM_OK;
  if (rank == 1 && !bad) bad = memcmp(got, buf, sizeof buf) != 0 ? 3 : 0;
  const hm_zip_peer *z = c->peers[1 - rank].zip;
  const uint64_t counted = !z ? 0 : rank == 0 ? z->zipped_raw : z->received_raw;
  if (!bad && counted != sizeof buf) bad = 4;
  /* a split communicator keeps the link figures (the topology sets them on the parent) */
  c->peers[1 - rank].link_bw = 1e8;
  hm_comm_t child = NULL;
  if (!bad && (hm_comm_split(c, 0, rank, &child, NULL) != HM_OK || child->peers[1 - rank].link_bw != 1e8)) bad = 5;
  if (child) hm_comm_destroy(child);
  hm_comm_destroy(c);
  return bad;
}

/* Point-to-point transfers go compressed too: their engine context moves bytes (u8), so the
 * element type comes from the call's descriptor. And hm_comm_split keeps each peer's link figure. */
static void test_p2p_chunks_compressed(void **state) {
  (void)state;
  const char *codec = hm_zip_codec_available(HM_ZIP_ZSTD) ? "zstd" : hm_zip_codec_available(HM_ZIP_LZ4) ? "lz4" : NULL;
  if (!codec) skip();
  setenv("HETMIX_SECRET", "zip-unit-test", 1);
  setenv("HETMIX_COMPRESS_ALWAYS", "1", 1);
  hm_unique_id id;
  assert_int_equal(hm_get_unique_id(&id), HM_OK);
  pid_t pid[2];
  for (int r = 0; r < 2; r++) {
    pid[r] = fork();
    assert_true(pid[r] >= 0);
    if (pid[r] == 0) _exit(p2p_rank(r, &id, codec));
  }
  for (int r = 0; r < 2; r++) {
    int st;
    assert_int_equal(waitpid(pid[r], &st, 0), pid[r]);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st))
      fail_msg("rank %d: code %d (4: its bytes were not counted as compressed; 5: a split lost the link figure)", r,
               WEXITSTATUS(st));
  }
  unsetenv("HETMIX_COMPRESS_ALWAYS");
}

/* One rank of test_topology_sets_link_bw: ranks 0 and 1 in pools a and b, rank 2 in pool a. */
static int links_rank(int rank, const hm_unique_id *id) {
  setenv("HETMIX_POOL", rank == 1 ? "b" : "a", 1);
  setenv("HETMIX_LINK_CROSS", rank == 0 ? "1.25e8,0.001,3000" : "1.25e8,0.001", 1); /* a burst: rank 0's counts */
  setenv("HETMIX_LINK_POOL", "1e9,0.0001", 1);
  hm_comm_config cfg = HM_COMM_CONFIG_INIT;
  cfg.transport = "tcp";
  hm_comm_t c;
  if (hm_comm_init_rank(&c, 3, id, rank, &cfg) != HM_OK) return 2;
  int bad = 0;
  for (int r = 0; r < 3 && !bad; r++) {
    /* another pool: the cross link; the same pool on this host (all three share it): unknown */
    const double want = r == rank ? 0 : (r == 1) != (rank == 1) ? 1.25e8 : 0;
    if (c->peers[r].link_bw != want) bad = 10 + r;
  }
  if (!bad && (c->topo.cross_link.burst != 3000 || c->topo.pool_link.burst != 0)) bad = 20;
  hm_comm_destroy(c);
  return bad;
}

/* The topology gives each peer its link figure from HETMIX_LINK_CROSS / HETMIX_LINK_POOL (rank 0's),
 * which decides whether chunks to it may be compressed; it used to be left at 0 (unknown), so
 * nothing was ever compressed on a testbed without HETMIX_LINK_BW. */
static void test_topology_sets_link_bw(void **state) {
  (void)state;
  setenv("HETMIX_SECRET", "zip-unit-test", 1);
  hm_unique_id id;
  assert_int_equal(hm_get_unique_id(&id), HM_OK);
  pid_t pid[3];
  for (int r = 0; r < 3; r++) {
    pid[r] = fork();
    assert_true(pid[r] >= 0);
    if (pid[r] == 0) _exit(links_rank(r, &id));
  }
  for (int r = 0; r < 3; r++) {
    int st;
    assert_int_equal(waitpid(pid[r], &st, 0), pid[r]);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st))
      fail_msg("rank %d: code %d (10 + r: the link figure of peer r is wrong; 20: the tuner's bursts are not rank 0's)", r,
               WEXITSTATUS(st));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrips),      cmocka_unit_test(test_planes_help_floats),
      cmocka_unit_test(test_split_join_inverse), cmocka_unit_test(test_parse_rejections),
      cmocka_unit_test(test_corrupt_blocks),  cmocka_unit_test(test_header_flag),
      cmocka_unit_test(test_configure),       cmocka_unit_test(test_p2p_chunks_compressed),
      cmocka_unit_test(test_topology_sets_link_bw),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
