/* Training with hmcomm's link compression on is bitwise the training without it: a small GPT,
 * 2 replicas x 2 stages (activations and their gradients between stages, the gradient allreduce
 * between replicas, the tied embedding's gradient), every pair over TCP, run with compression
 * off and then with every floating-point chunk compressed (HETMIX_COMPRESS_ALWAYS=1, 4 KiB
 * chunks, zstd and lz4). Losses and the final stage states (parameters and AdamW moments) must
 * be equal bit for bit, and the workers' logs must show that chunks were compressed. Skipped (77)
 * in a build without zstd and lz4. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "comm/compress.h"
#include "hetmix/model.h"
#include "runtime/proc_helpers.h"

#define MODEL "L6,C32,NH4,V256,T16"

static const char *hetmix_bin = HM_BINARY_DIR "/hetmix";
static char work[128], tokpath[256];

static int setup(void **state) {
  (void)state;
  if (hm_t_mkdtemp(work, sizeof work, "pipe-zip") != 0) return -1;
  enum { NTOK = 30000 };
  static uint8_t tok[NTOK];
  uint64_t x = 7;
  for (int i = 0; i < NTOK; i++) {
    x = hm_splitmix64(x);
    tok[i] = (uint8_t)(i % 7 == 0 ? ' ' : 'a' + (x % 26));
  }
  snprintf(tokpath, sizeof tokpath, "%s/data.tok", work);
  return hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) == HM_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  hm_t_rmtree(work);
  return 0;
}

/* Runs 2 replicas x 2 stages for 6 steps with the given compression setting; stderr in err. */
static void run(const char *name, const char *compress, char *err, size_t cap) {
  char dir[256], dump[300], errp[300];
  snprintf(dir, sizeof dir, "%s/%s", work, name);
  snprintf(dump, sizeof dump, "%s/dump", dir);
  snprintf(errp, sizeof errp, "%s/launch.err", dir);
  mkdir(dir, 0755);
  setenv("HETMIX_TRANSPORT", "tcp", 1);
  setenv("HETMIX_COMPRESS", compress, 1);
  setenv("HETMIX_COMPRESS_ALWAYS", strcmp(compress, "off") ? "1" : "0", 1);
  setenv("HETMIX_TCP_CHUNK", "4096", 1);
  setenv("HETMIX_LOG", "info", 1);
  char *argv[] = {(char *)hetmix_bin, "launch", "-n", "4", "--", (char *)hetmix_bin, "worker", "--model", MODEL,
                  "--data", tokpath, "--steps", "6", "--batch", "2", "--lr", "3e-3", "--stages", "0,3,8",
                  "--micro", "2,1", "--device", "cpu:threads=1", "--out", dir, "--dump", dump, "--quiet", NULL};
  pid_t pid = hm_t_spawn(argv, NULL, errp);
  int st = hm_t_wait(pid, 200.0);
  err[0] = '\0';
  hm_t_read_file(errp, err, cap);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("%s: launch failed:\n%s", name, err);
}

/* Bytes compressed according to the workers' logs ("compressed <n> of <m> candidate bytes"). */
static unsigned long long compressed_bytes(const char *log) {
  unsigned long long total = 0;
  for (const char *p = strstr(log, "compressed "); p; p = strstr(p + 1, "compressed ")) {
    unsigned long long n = 0;
    if (sscanf(p, "compressed %llu of", &n) == 1) total += n;
  }
  return total;
}

static void assert_same_tensors(const char *a, const char *b) {
  hm_ckpt x, y;
  if (hm_ckpt_read(a, &x) != HM_OK || hm_ckpt_read(b, &y) != HM_OK) fail_msg("reading %s, %s: %s", a, b, hm_last_error());
  assert_int_equal(x.meta.step, y.meta.step);
  assert_int_equal(x.n_tensors, y.n_tensors);
  for (int i = 0; i < x.n_tensors; i++) {
    assert_string_equal(x.tensors[i].name, y.tensors[i].name);
    assert_int_equal(x.tensors[i].numel, y.tensors[i].numel);
    assert_int_equal(hm_ckpt_elem_size(&x), hm_ckpt_elem_size(&y));
    if (memcmp(x.tensors[i].data, y.tensors[i].data, x.tensors[i].numel * hm_ckpt_elem_size(&x)) != 0)
      fail_msg("tensor %s differs between %s and %s", x.tensors[i].name, a, b);
  }
  hm_ckpt_free(&x);
  hm_ckpt_free(&y);
}

/* The losses of a run's metrics, one per line, as printed (%.9g round-trips an f32). */
static void losses(const char *dir, char *out, size_t cap) {
  static char buf[1 << 20];
  char path[400];
  snprintf(path, sizeof path, "%s/%s/metrics.jsonl", work, dir);
  assert_int_equal(hm_t_read_file(path, buf, sizeof buf), 0);
  out[0] = '\0';
  for (const char *p = strstr(buf, "\"loss\":"); p; p = strstr(p + 1, "\"loss\":")) {
    double v = strtod(p + 7, NULL);
    snprintf(out + strlen(out), cap - strlen(out), "%.9g\n", v);
  }
  assert_true(strlen(out) > 0);
}

static void test_compression_is_bitwise(void **state) {
  (void)state;
  static char err[1 << 16];
  run("off", "off", err, sizeof err);
  assert_int_equal(compressed_bytes(err), 0);
  char ref[4096], got[4096];
  losses("off", ref, sizeof ref);
  const char *codecs[] = {"zstd", "lz4"};
  int ran = 0;
  for (int k = 0; k < 2; k++) {
    if (!hm_zip_codec_available(k == 0 ? HM_ZIP_ZSTD : HM_ZIP_LZ4)) continue; /* built without it */
    ran++;
    run(codecs[k], codecs[k], err, sizeof err);
    const unsigned long long n = compressed_bytes(err);
    print_message("  %s: %llu bytes went compressed\n", codecs[k], n);
    if (n == 0) fail_msg("%s: no chunk was compressed:\n%s", codecs[k], err);
    losses(codecs[k], got, sizeof got);
    if (strcmp(ref, got) != 0) fail_msg("%s: losses differ:\n%s---\n%s", codecs[k], ref, got);
    for (int s = 0; s < 2; s++) {
      char a[400], b[400];
      snprintf(a, sizeof a, "%s/off/dump/stage%d.hmc", work, s);
      snprintf(b, sizeof b, "%s/%s/dump/stage%d.hmc", work, codecs[k], s);
      assert_same_tensors(a, b);
    }
  }
  if (!ran) exit(77); /* no codec in this build: nothing to compare (reported as skipped) */
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_compression_is_bitwise)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
