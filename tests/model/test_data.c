/* Token files, the byte tokenizer, the default corpus and seeded batch sampling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "hetmix/model.h"

static char tmpdir[256];

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len + 1);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void test_roundtrip_u8_u16(void **state) {
  (void)state;
  char p[512];
  path_in(p, sizeof p, "a.tok");
  uint8_t t8[1000];
  for (int i = 0; i < 1000; i++) t8[i] = (uint8_t)(i * 7);
  assert_int_equal(hm_tokfile_write(p, t8, 1000, HM_TOKEN_U8, 256), HM_OK);
  hm_tokfile tf;
  assert_int_equal(hm_tokfile_open(p, &tf), HM_OK);
  assert_int_equal(tf.count, 1000);
  assert_int_equal(tf.vocab, 256);
  for (int i = 0; i < 1000; i++) assert_int_equal(hm_tokfile_at(&tf, (uint64_t)i), t8[i]);
  hm_tokfile_close(&tf);

  uint16_t t16[300];
  for (int i = 0; i < 300; i++) t16[i] = (uint16_t)(i * 160);
  assert_int_equal(hm_tokfile_write(p, t16, 300, HM_TOKEN_U16, 50257), HM_OK);
  assert_int_equal(hm_tokfile_open(p, &tf), HM_OK);
  assert_int_equal(tf.dtype, HM_TOKEN_U16);
  for (int i = 0; i < 300; i++) assert_int_equal(hm_tokfile_at(&tf, (uint64_t)i), t16[i]);
  hm_tokfile_close(&tf);
  // a token outside the vocabulary is refused at write time
  t16[17] = 60000;
  assert_int_equal(hm_tokfile_write(p, t16, 300, HM_TOKEN_U16, 50257), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "at 17"));
}

static void test_from_text(void **state) {
  (void)state;
  char a[512], b[512], out[512];
  path_in(a, sizeof a, "a.txt");
  path_in(b, sizeof b, "b.txt");
  path_in(out, sizeof out, "ab.tok");
  write_text(a, "Hello, ");
  write_text(b, "w\xc3\xb6rld\n");
  const char *in[2] = {a, b};
  uint64_t n = 0;
  assert_int_equal(hm_tokfile_from_text(out, in, 2, &n), HM_OK);
  assert_int_equal(n, 14);
  hm_tokfile tf;
  assert_int_equal(hm_tokfile_open(out, &tf), HM_OK);
  assert_memory_equal(tf.tokens, "Hello, w\xc3\xb6rld\n", 14);
  hm_tokfile_close(&tf);
  const char *missing[1] = {"/nonexistent/x.txt"};
  assert_int_equal(hm_tokfile_from_text(out, missing, 1, &n), HM_ERR_NOT_FOUND);
  assert_non_null(strstr(hm_last_error(), "/nonexistent/x.txt"));
}

static void expect_corrupt(const uint8_t *buf, size_t len, const char *needle) {
  hm_tokfile tf;
  hm_status st = hm_tokfile_parse(buf, len, "t.tok", &tf);
  assert_int_equal(st, HM_ERR_CORRUPT);
  if (!strstr(hm_last_error(), needle)) fail_msg("message '%s' lacks '%s'", hm_last_error(), needle);
}

static void test_bad_token_files(void **state) {
  (void)state;
  char p[512];
  path_in(p, sizeof p, "bad.tok");
  uint8_t t8[200];
  for (int i = 0; i < 200; i++) t8[i] = (uint8_t)(i % 50);
  assert_int_equal(hm_tokfile_write(p, t8, 200, HM_TOKEN_U8, 50), HM_OK);
  size_t len;
  uint8_t *img = read_all(p, &len);
  assert_int_equal(len, HM_TOKFILE_HEADER_BYTES + 200);
  expect_corrupt(img, 10, "truncated header");
  expect_corrupt(img, len - 1, "truncated");
  uint8_t *c = malloc(len);
  memcpy(c, img, len);
  c[0] = 'X';
  expect_corrupt(c, len, "bad magic");
  memcpy(c, img, len);
  c[8] = 9;  // version
  expect_corrupt(c, len, "version");
  memcpy(c, img, len);
  c[20] ^= 1;  // count, header checksum catches it
  expect_corrupt(c, len, "header checksum");
  memcpy(c, img, len);
  c[HM_TOKFILE_HEADER_BYTES + 99] ^= 0x40;
  expect_corrupt(c, len, "payload checksum");
  free(c);
  free(img);
  // checksums right but a token >= vocab (a crafted header): the reader scans the tokens
  img = read_all(p, &len);
  uint32_t vocab = 40;
  memcpy(img + 24, &vocab, 4);
  uint64_t hh = XXH3_64bits(img, 56);
  memcpy(img + 56, &hh, 8);
  expect_corrupt(img, len, "is >= vocab 40");
  free(img);
  hm_tokfile tf;
  assert_int_equal(hm_tokfile_open("/nonexistent/x.tok", &tf), HM_ERR_NOT_FOUND);
  char txt[512];
  path_in(txt, sizeof txt, "plain.txt");
  write_text(txt, "this is text, not tokens, and long enough to have a header's worth of bytes in it ...");
  assert_int_equal(hm_tokfile_open(txt, &tf), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "hetmix prepare"));
  // truncated on disk
  img = read_all(p, &len);
  FILE *f = fopen(p, "wb");
  fwrite(img, 1, len - 50, f);
  fclose(f);
  free(img);
  assert_int_equal(hm_tokfile_open(p, &tf), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "truncated"));
}

static void test_default_corpus(void **state) {
  (void)state;
  char src[512], out[512], p[1024];
  path_in(src, sizeof src, "fortunes");
  path_in(out, sizeof out, "corpus");
  mkdir(src, 0755);
  snprintf(p, sizeof p, "%s/zeta", src);
  write_text(p, "Z fortune\n%\n");
  snprintf(p, sizeof p, "%s/alpha", src);
  write_text(p, "A fortune\n%\n");
  snprintf(p, sizeof p, "%s/alpha.dat", src);
  write_text(p, "\x01\x02\x03");
  snprintf(p, sizeof p, "%s/alpha.u8", src);
  write_text(p, "dup");
  snprintf(p, sizeof p, "%s/off", src);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/off/rude", src);
  write_text(p, "skipped\n");
  setenv("HETMIX_FORTUNES_DIR", src, 1);
  char tok[4200];
  assert_int_equal(hm_default_corpus(out, tok, sizeof tok), HM_OK);
  hm_tokfile tf;
  assert_int_equal(hm_tokfile_open(tok, &tf), HM_OK);
  const char *want = "A fortune\n%\nZ fortune\n%\n";  // sorted by name, .dat/.u8/off skipped
  assert_int_equal(tf.count, strlen(want));
  assert_memory_equal(tf.tokens, want, strlen(want));
  hm_tokfile_close(&tf);
  unsetenv("HETMIX_FORTUNES_DIR");
}

static void test_loader_deterministic(void **state) {
  (void)state;
  enum { N = 5000, B = 4, T = 16 };
  uint8_t t8[N];
  for (int i = 0; i < N; i++) t8[i] = (uint8_t)(hm_splitmix64((uint64_t)i) & 0xff);
  char p[512];
  path_in(p, sizeof p, "dl.tok");
  assert_int_equal(hm_tokfile_write(p, t8, N, HM_TOKEN_U8, 256), HM_OK);
  hm_tokfile tf;
  assert_int_equal(hm_tokfile_open(p, &tf), HM_OK);
  hm_dataloader a, b, c;
  assert_int_equal(hm_dataloader_init(&a, &tf, B, T, 7, 0.1), HM_OK);
  assert_int_equal(hm_dataloader_init(&b, &tf, B, T, 7, 0.1), HM_OK);
  assert_int_equal(hm_dataloader_init(&c, &tf, B, T, 8, 0.1), HM_OK);
  assert_int_equal(a.n_train, N - N / 10);
  int32_t ia[B * T], ta[B * T], ib[B * T], tb[B * T], ic[B * T], tc[B * T];
  int differ = 0;
  for (int step = 0; step < 20; step++) {
    hm_dataloader_next(&a, ia, ta);
    hm_dataloader_next(&b, ib, tb);
    hm_dataloader_next(&c, ic, tc);
    assert_memory_equal(ia, ib, sizeof ia);
    assert_memory_equal(ta, tb, sizeof ta);
    differ |= memcmp(ia, ic, sizeof ia) != 0;
    for (int i = 0; i < B * T; i++) {
      assert_true(ia[i] >= 0 && ia[i] < 256);
      if (i % T != T - 1) assert_int_equal(ta[i], ia[i + 1]);  // targets are inputs shifted by one
    }
    // every training window lies in the training split: find it and check
    for (int r = 0; r < B; r++) {
      int found = 0;
      for (uint64_t s = 0; s + T < a.n_train && !found; s++)
      {
        found = (int32_t)t8[s + T] == ta[r * T + T - 1];
        for (int t = 0; t < T && found; t++) found = (int32_t)t8[s + t] == ia[r * T + t];
      }
      assert_true(found);
    }
  }
  assert_true(differ);  // another seed gives other batches
  // the position alone restores the stream
  hm_dataloader r;
  assert_int_equal(hm_dataloader_init(&r, &tf, B, T, 7, 0.1), HM_OK);
  r.position = a.position;
  hm_dataloader_next(&a, ia, ta);
  hm_dataloader_next(&r, ib, tb);
  assert_memory_equal(ia, ib, sizeof ia);
  // validation batches are fixed windows of the held-out split
  assert_true(a.n_val_batches >= 1);
  hm_dataloader_val(&a, a.n_val_batches - 1, ia, ta);
  hm_dataloader_val(&b, a.n_val_batches - 1, ib, tb);
  assert_memory_equal(ia, ib, sizeof ia);
  hm_dataloader_val(&a, 0, ia, ta);
  assert_int_equal(ia[0], t8[a.n_train]);
  assert_int_equal(ta[T - 1], t8[a.n_train + T]);
  // too little data is an error, not a crash
  assert_int_equal(hm_dataloader_init(&r, &tf, B, 5000, 7, 0.1), HM_ERR_INVALID_ARG);
  hm_tokfile_close(&tf);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/test_data.XXXXXX", HM_BINARY_DIR);
  if (!mkdtemp(tmpdir)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_u8_u16), cmocka_unit_test(test_from_text),
      cmocka_unit_test(test_bad_token_files),  cmocka_unit_test(test_default_corpus),
      cmocka_unit_test(test_loader_deterministic),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) rc = rc ? rc : 1;
  return rc;
}
