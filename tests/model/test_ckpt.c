/* Checkpoint files: round trip, atomic replacement, and every kind of damage detected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <xxhash.h>

#include "hetmix/model.h"

static char tmpdir[256];

static hm_ckpt_meta sample_meta(void) {
  hm_ckpt_meta m;
  memset(&m, 0, sizeof m);
  hm_model_config_lookup("tiny", &m.config);
  snprintf(m.model_name, sizeof m.model_name, "tiny");
  m.layer_first = 1, m.layer_last = 3;
  m.step = 123, m.data_seed = 99, m.data_position = 4567, m.rng_state = 0xdeadbeefcafef00dull;
  m.lr = 3e-4f, m.beta1 = 0.9f, m.beta2 = 0.95f, m.eps = 1e-8f, m.weight_decay = 0.1f, m.grad_clip = 1.0f;
  m.batch = 4, m.seq_len = 16;
  m.run_id = 0x1234abcd5678ef00ull, m.stage_index = 1, m.stage_count = 3, m.micro_batches = 6;
  return m;
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void write_sample(const char *path, float *a, float *b) {
  for (int i = 0; i < 1000; i++) a[i] = (float)i * 0.5f - 3.0f;
  for (int i = 0; i < 37; i++) b[i] = -(float)i;
  hm_ckpt_tensor ts[3] = {{"param/a", 1000, a}, {"param/b", 37, b}, {"empty", 0, a}};
  hm_ckpt_meta m = sample_meta();
  assert_int_equal(hm_ckpt_write(path, &m, ts, 3), HM_OK);
}

static void test_roundtrip(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/a.hmc", tmpdir);
  float a[1000], b[37];
  write_sample(p, a, b);
  DIR *d = opendir(tmpdir);  // the temporary file "a.hmc.tmp.<random>" was renamed away
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strncmp(e->d_name, "a.hmc.tmp.", 10) == 0) fail_msg("%s/%s was left behind", tmpdir, e->d_name);
  closedir(d);
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_read(p, &ck), HM_OK);
  hm_ckpt_meta m = sample_meta();
  assert_string_equal(ck.meta.model_name, "tiny");
  assert_true(hm_model_config_same(&ck.meta.config, &m.config));
  assert_int_equal(ck.meta.config.C, m.config.C);
  assert_int_equal(ck.meta.layer_first, 1);
  assert_int_equal(ck.meta.layer_last, 3);
  assert_int_equal(ck.meta.step, 123);
  assert_int_equal(ck.meta.data_position, 4567);
  assert_int_equal(ck.meta.rng_state, 0xdeadbeefcafef00dull);
  assert_true(ck.meta.lr == m.lr && ck.meta.batch == 4 && ck.meta.seq_len == 16);
  assert_int_equal(ck.meta.run_id, m.run_id);
  assert_true(ck.meta.stage_index == 1 && ck.meta.stage_count == 3 && ck.meta.micro_batches == 6);
  hm_ckpt_meta hdr;
  assert_int_equal(hm_ckpt_read_meta(p, &hdr), HM_OK);  // the header alone
  assert_true(hdr.step == 123 && hdr.run_id == m.run_id && hdr.stage_count == 3);
  assert_int_equal(ck.n_tensors, 3);
  const hm_ckpt_tensor *ta = hm_ckpt_find(&ck, "param/a");
  assert_non_null(ta);
  assert_int_equal(ta->numel, 1000);
  assert_memory_equal(ta->data, a, sizeof a);
  assert_memory_equal(hm_ckpt_find(&ck, "param/b")->data, b, sizeof b);
  assert_int_equal(hm_ckpt_find(&ck, "empty")->numel, 0);
  assert_null(hm_ckpt_find(&ck, "nope"));
  hm_ckpt_free(&ck);
  // overwriting replaces the whole file
  a[5] = 42.0f;
  hm_ckpt_tensor ts[1] = {{"param/a", 1000, a}};
  hm_ckpt_meta m2 = sample_meta();
  m2.step = 124;
  assert_int_equal(hm_ckpt_write(p, &m2, ts, 1), HM_OK);
  assert_int_equal(hm_ckpt_read(p, &ck), HM_OK);
  assert_int_equal(ck.meta.step, 124);
  assert_int_equal(ck.n_tensors, 1);
  assert_true(ck.tensors[0].data[5] == 42.0f);
  hm_ckpt_free(&ck);
}

static void test_damage_detected(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/b.hmc", tmpdir);
  float a[1000], b[37];
  write_sample(p, a, b);
  size_t len;
  uint8_t *img = read_all(p, &len);
  hm_ckpt ck;
  // every truncation length (step 7 to stay fast) is refused, none crashes
  for (size_t cut = 0; cut < len; cut += 7) {
    assert_int_equal(hm_ckpt_parse(img, cut, p, &ck), HM_ERR_CORRUPT);
  }
  assert_int_equal(hm_ckpt_parse(img, len - 1, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "trailer"));
  // a flipped bit anywhere is caught by one of the checksums
  uint8_t *c = malloc(len);
  for (size_t pos = 0; pos < len; pos += 13) {
    memcpy(c, img, len);
    c[pos] ^= 0x10;
    hm_status st = hm_ckpt_parse(c, len, p, &ck);
    if (st == HM_OK) {
      // only padding bytes between tensors are outside every checksum: the data must be intact
      assert_memory_equal(hm_ckpt_find(&ck, "param/a")->data, a, sizeof a);
      assert_memory_equal(hm_ckpt_find(&ck, "param/b")->data, b, sizeof b);
      hm_ckpt_free(&ck);
    } else {
      assert_int_equal(st, HM_ERR_CORRUPT);
    }
  }
  // named messages for the main cases
  memcpy(c, img, len);
  c[300] ^= 1;  // inside the tensor table
  assert_int_equal(hm_ckpt_parse(c, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "table checksum"));
  memcpy(c, img, len);
  c[len - 32 - 100] ^= 1;  // inside param/b's payload
  assert_int_equal(hm_ckpt_parse(c, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "'param/b' checksum mismatch"));
  memcpy(c, img, len);
  c[1] = 'X';
  assert_int_equal(hm_ckpt_parse(c, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "bad magic"));
  free(c);
  // truncated on disk, through the file reader
  FILE *f = fopen(p, "wb");
  fwrite(img, 1, len / 2, f);
  fclose(f);
  assert_int_equal(hm_ckpt_read(p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), p));
  free(img);
  assert_int_equal(hm_ckpt_read("/nonexistent/c.hmc", &ck), HM_ERR_NOT_FOUND);
}

// A table whose checksums are all right but whose second tensor overlaps the first (a crafted
// file could otherwise make the reader allocate far more than the file holds).
static void test_overlapping_tensors(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/c.hmc", tmpdir);
  float a[64], b[64];
  for (int i = 0; i < 64; i++) a[i] = (float)i, b[i] = (float)i;  // same bytes: same hash
  hm_ckpt_tensor ts[2] = {{"param/a", 64, a}, {"param/b", 64, b}};
  hm_ckpt_meta m = sample_meta();
  assert_int_equal(hm_ckpt_write(p, &m, ts, 2), HM_OK);
  size_t len;
  uint8_t *img = read_all(p, &len);
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_OK);
  hm_ckpt_free(&ck);
  // entry 1 (at 256 + 72) takes entry 0's offset; then re-hash the table and the trailer
  memcpy(img + 256 + 72 + 56, img + 256 + 56, 8);
  uint64_t th = XXH3_64bits(img + 256, 2 * 72);
  memcpy(img + len - 32 + 16, &th, 8);
  uint64_t trh = XXH3_64bits(img + len - 32, 24);
  memcpy(img + len - 32 + 24, &trh, 8);
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "'param/b' overlaps"));
  free(img);
}

/* Version 1 (no run identity: zero bytes at 148..247) is still read, its identity as 0; version 2
 * (no architecture fields) reads as GPT-2; an unknown version is refused naming the versions this
 * build reads. */
static void test_versions(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/v.hmc", tmpdir);
  float a[1000], b[37];
  write_sample(p, a, b);
  size_t len;
  uint8_t *img = read_all(p, &len);
  uint32_t v = 1;
  memcpy(img + 8, &v, 4);
  memset(img + 148, 0, 248 - 148);
  uint64_t h = XXH3_64bits(img, 248);
  memcpy(img + 248, &h, 8);
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_OK);
  assert_true(ck.meta.run_id == 0 && ck.meta.stage_count == 0 && ck.meta.micro_batches == 0);
  assert_int_equal(ck.meta.step, 123);
  assert_memory_equal(hm_ckpt_find(&ck, "param/a")->data, a, sizeof a);
  hm_ckpt_free(&ck);
  /* versions 1 and 2 hold GPT-2 only: zero arch bytes read as gpt2 with kv_heads NH, ffn 4C, tied */
  v = 2;
  memcpy(img + 8, &v, 4);
  h = XXH3_64bits(img, 248);
  memcpy(img + 248, &h, 8);
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_OK);
  assert_true(ck.meta.config.arch == HM_ARCH_GPT2 && ck.meta.config.kv_heads == ck.meta.config.NH &&
              ck.meta.config.ffn == 4 * ck.meta.config.C && ck.meta.config.tied_embeddings);
  hm_ckpt_free(&ck);
  v = 3; /* version 3 needs 4 or 8 bytes per element at offset 168 */
  memcpy(img + 8, &v, 4);
  h = XXH3_64bits(img, 248);
  memcpy(img + 248, &h, 8);
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "0 bytes per element, need 4 or 8"));
  v = 4;
  memcpy(img + 8, &v, 4);
  h = XXH3_64bits(img, 248);
  memcpy(img + 248, &h, 8);
  assert_int_equal(hm_ckpt_parse(img, len, p, &ck), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "version 4, this build reads 1 to 3"));
  free(img);
}

/* float64 tensors (elem_size 8, version 3) round-trip bit for bit; hm_ckpt_encode gives the
 * bytes hm_ckpt_write writes. */
static void test_f64_and_encode(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/d.hmc", tmpdir);
  double a[300];
  for (int i = 0; i < 300; i++) a[i] = 1.0 / (i + 3.0); /* not representable in float32 */
  hm_ckpt_tensor ts[1] = {{"param/a", 300, (float *)(void *)a}};
  hm_ckpt_meta m = sample_meta();
  m.elem_size = 8;
  assert_int_equal(hm_ckpt_write(p, &m, ts, 1), HM_OK);
  size_t len = 0, elen = 0;
  uint8_t *img = read_all(p, &len);
  void *enc = NULL;
  assert_int_equal(hm_ckpt_encode(&m, ts, 1, &enc, &elen), HM_OK);
  assert_int_equal(len, elen);
  assert_memory_equal(img, enc, len);
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_read(p, &ck), HM_OK);
  assert_int_equal(ck.meta.elem_size, 8);
  assert_memory_equal(hm_ckpt_find(&ck, "param/a")->data, a, sizeof a);
  hm_ckpt_free(&ck);
  free(img);
  free(enc);
}

/* A manifest of tensor-parallel shards (version 2): stage 0 unsplit, stage 1 over 3 ranks, each
 * with its tp rank and size; it reads back, every shard is found by (stage, tp rank) and counts
 * for completeness; shards out of order or misnamed are refused naming the shard. */
static void test_manifest_of_tensor_parallel_shards(void **state) {
  (void)state;
  char dir[600], path[700], got[700];
  snprintf(dir, sizeof dir, "%s/tp-run/step-00000004", tmpdir);
  snprintf(path, sizeof path, "%s/tp-run", tmpdir);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(mkdir(dir, 0755), 0);
  float a[1000], b[37];
  hm_ckpt_manifest m;
  memset(&m, 0, sizeof m);
  m.run_id = 7, m.step = 4, m.data_position = 16, m.nstages = 2, m.world = 4, m.nshards = 4;
  for (int k = 0; k < 4; k++) {
    hm_ckpt_shard_info *i = &m.shards[k];
    i->stage = k > 0, i->tp_rank = k > 0 ? k - 1 : 0, i->tp_size = k > 0 ? 3 : 1;
    hm_ckpt_shard_name(i->stage, i->tp_rank, i->tp_size, i->file, sizeof i->file);
    snprintf(path, sizeof path, "%s/%s", dir, i->file);
    write_sample(path, a, b);
    assert_int_equal(hm_ckpt_file_hash(path, &i->xxh3, &i->bytes), HM_OK);
  }
  assert_string_equal(m.shards[2].file, "stage1.tp1.hmc");
  assert_int_equal(hm_ckpt_manifest_write(dir, &m), HM_OK);
  hm_ckpt_manifest r;
  assert_int_equal(hm_ckpt_manifest_read(dir, &r, NULL, 0), HM_OK);
  assert_int_equal(hm_ckpt_manifest_nshards(&r), 4);
  assert_int_equal(hm_ckpt_manifest_find(&r, 1, 2), 3);
  assert_int_equal(hm_ckpt_manifest_find(&r, 1, 3), -1);
  assert_int_equal(r.shards[3].tp_size, 3);
  assert_int_equal(hm_ckpt_manifest_verify(dir, &r), HM_OK);
  snprintf(path, sizeof path, "%s/tp-run", tmpdir);
  int64_t step = 0;
  assert_int_equal(hm_ckpt_newest_complete(path, got, sizeof got, &step), HM_OK);
  assert_int_equal(step, 4);
  snprintf(path, sizeof path, "%s/stage1.tp2.hmc", dir); /* one tensor-parallel shard lost */
  assert_int_equal(unlink(path), 0);
  snprintf(path, sizeof path, "%s/tp-run", tmpdir);
  assert_int_equal(hm_ckpt_newest_complete(path, got, sizeof got, &step), HM_ERR_NOT_FOUND);
  /* ranks out of order, and a file named for another rank */
  hm_ckpt_manifest bad = m;
  bad.shards[2].tp_rank = 2, bad.shards[3].tp_rank = 1;
  assert_int_equal(hm_ckpt_manifest_write(dir, &bad), HM_OK);
  assert_int_equal(hm_ckpt_manifest_read(dir, &r, NULL, 0), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "shard 2"));
  bad = m;
  snprintf(bad.shards[1].file, sizeof bad.shards[1].file, "stage1.tp1.hmc");
  assert_int_equal(hm_ckpt_manifest_write(dir, &bad), HM_OK);
  assert_int_equal(hm_ckpt_manifest_read(dir, &r, NULL, 0), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "stage1.tp0.hmc"));
}

/* A step folder counts only with a manifest whose shards are all there with their sizes; the
 * newest complete one is found, damage is named, pruning keeps the newest complete ones. */
static void test_manifest_and_newest_complete(void **state) {
  (void)state;
  char run[512], dir[600], path[700], got[700];
  snprintf(run, sizeof run, "%s/run", tmpdir);
  assert_int_equal(mkdir(run, 0755), 0);
  int64_t step = -1;
  assert_int_equal(hm_ckpt_newest_complete(run, got, sizeof got, &step), HM_ERR_NOT_FOUND);
  float a[1000], b[37];
  for (int n = 2; n <= 8; n += 2) {
    snprintf(dir, sizeof dir, "%s/step-%08d", run, n);
    assert_int_equal(mkdir(dir, 0755), 0);
    hm_ckpt_manifest m;
    memset(&m, 0, sizeof m);
    m.run_id = 0xabcdef0123456789ull, m.step = (uint64_t)n, m.data_position = 40u * n, m.nstages = 2, m.world = 4;
    for (int s = 0; s < 2; s++) {
      snprintf(path, sizeof path, "%s/stage%d.hmc", dir, s);
      write_sample(path, a, b);
      m.shards[s].stage = s;
      snprintf(m.shards[s].file, sizeof m.shards[s].file, "stage%d.hmc", s);
      assert_int_equal(hm_ckpt_file_hash(path, &m.shards[s].xxh3, &m.shards[s].bytes), HM_OK);
    }
    if (n != 8) assert_int_equal(hm_ckpt_manifest_write(dir, &m), HM_OK); /* step 8: still being written */
    if (n == 6) { /* step 6: one shard lost */
      snprintf(path, sizeof path, "%s/stage1.hmc", dir);
      assert_int_equal(unlink(path), 0);
    }
  }
  assert_int_equal(hm_ckpt_newest_complete(run, got, sizeof got, &step), HM_OK);
  snprintf(dir, sizeof dir, "%s/step-00000004", run);
  assert_string_equal(got, dir);
  assert_int_equal(step, 4);
  hm_ckpt_manifest m;
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  assert_int_equal(hm_ckpt_manifest_read(path, &m, got, sizeof got), HM_OK);
  assert_string_equal(got, dir);
  assert_true(m.run_id == 0xabcdef0123456789ull && m.step == 4 && m.data_position == 160 && m.nstages == 2);
  assert_int_equal(hm_ckpt_manifest_verify(dir, &m), HM_OK);
  m.shards[1].xxh3 ^= 1;
  assert_int_equal(hm_ckpt_manifest_verify(dir, &m), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "stage1.hmc"));
  /* a damaged manifest is refused naming the field */
  snprintf(dir, sizeof dir, "%s/bad", tmpdir);
  assert_int_equal(mkdir(dir, 0755), 0);
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  FILE *f = fopen(path, "w");
  fputs("{\"format\":\"hetmix-checkpoint\",\"version\":1,\"run_id\":\"zz\"}", f);
  fclose(f);
  assert_int_equal(hm_ckpt_manifest_read(dir, &m, NULL, 0), HM_ERR_CORRUPT);
  assert_non_null(strstr(hm_last_error(), "run_id"));
  /* keep 1: steps 2 (older than the newest complete) go; 6 and 8 are newer, they stay */
  int removed = 0;
  assert_int_equal(hm_ckpt_prune_complete(run, 1, &removed), HM_OK);
  assert_int_equal(removed, 1);
  snprintf(dir, sizeof dir, "%s/step-00000002", run);
  assert_int_equal(access(dir, F_OK), -1);
  snprintf(dir, sizeof dir, "%s/step-00000006", run);
  assert_int_equal(access(dir, F_OK), 0);
  assert_int_equal(hm_ckpt_remove_step_dirs(run), HM_OK);
  assert_int_equal(access(run, F_OK), -1);
}

/* Version 3 keeps the architecture: a Llama config (GQA, its ffn, untied) comes back whole. */
static void test_llama_config_roundtrip(void **state) {
  (void)state;
  char p[512];
  snprintf(p, sizeof p, "%s/llama.hmc", tmpdir);
  hm_ckpt_meta m = sample_meta();
  assert_int_equal(hm_model_config_lookup("llama-tiny", &m.config), HM_OK);
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  hm_ckpt_tensor t = {"param/a", 8, a};
  assert_int_equal(hm_ckpt_write(p, &m, &t, 1), HM_OK);
  hm_ckpt_meta r;
  assert_int_equal(hm_ckpt_read_meta(p, &r), HM_OK);
  assert_true(hm_model_config_same(&r.config, &m.config));
  assert_true(r.config.arch == HM_ARCH_LLAMA && r.config.kv_heads == 2 && r.config.ffn == 48 &&
              !r.config.tied_embeddings);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/test_ckpt.XXXXXX", HM_BINARY_DIR);
  if (!mkdtemp(tmpdir)) return 1;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_roundtrip), cmocka_unit_test(test_damage_detected),
                                     cmocka_unit_test(test_overlapping_tensors), cmocka_unit_test(test_versions),
                                     cmocka_unit_test(test_f64_and_encode),
                                     cmocka_unit_test(test_manifest_and_newest_complete),
      cmocka_unit_test(test_manifest_of_tensor_parallel_shards),
                                     cmocka_unit_test(test_llama_config_roundtrip)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) rc = rc ? rc : 1;
  return rc;
}
