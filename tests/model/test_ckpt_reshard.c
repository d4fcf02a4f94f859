/* Re-sharding a checkpoint to another pipeline layout (hm_ckpt_reshard, hm_ckpt_cut_stage):
 * whole model -> stages A -> whole model -> stages B gives tensors bitwise equal to cutting B
 * straight out of the whole model; re-sharding to the same layout gives the same files; every
 * cut stage loads into a stage of its layer range (the head's copy of the tied embedding
 * included); a changed global batch is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/device.h"
#include "hetmix/model.h"

static char tmpdir[256];
static char whole_path[512];

/* A whole-model checkpoint of "tiny" (L=2: layers 0..3) whose params and both moments are
 * distinct random bit patterns (finite floats), so any misplaced byte shows. */
static void make_whole(void) {
  hm_spec_model_config cfg;
  assert_int_equal(hm_model_config_lookup("tiny", &cfg), HM_OK);
  hm_device *dev = NULL;
  assert_int_equal(hm_device_open("cpu:threads=1", &dev), HM_OK);
  hm_stage *s = NULL;
  hm_stage_options so = {0, hm_model_num_layers(&cfg), 2, (int)cfg.T, 1, {0}};
  assert_int_equal(hm_stage_create(&cfg, dev, &so, &s), HM_OK);
  assert_int_equal(hm_stage_init_params(s, 7), HM_OK);
  hm_ckpt_meta m;
  memset(&m, 0, sizeof m);
  m.step = 12, m.data_seed = 5, m.run_id = 0xabcdef0123456789ull, m.batch = 2, m.micro_batches = 6;
  m.seq_len = (int)cfg.T, m.data_position = 12 * 6 * 2;
  snprintf(whole_path, sizeof whole_path, "%s/init.hmc", tmpdir);
  assert_int_equal(hm_stage_save(s, whole_path, &m), HM_OK);
  hm_stage_destroy(s);
  hm_device_close(dev);
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_read(whole_path, &ck), HM_OK);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < ck.n_tensors; i++)
    for (uint64_t k = 0; k < ck.tensors[i].numel; k++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      ck.tensors[i].data[k] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
    }
  snprintf(whole_path, sizeof whole_path, "%s/whole.hmc", tmpdir);
  assert_int_equal(hm_ckpt_write(whole_path, &ck.meta, ck.tensors, ck.n_tensors), HM_OK);
  hm_ckpt_free(&ck);
}

static hm_reshard_layout layout(int nstages, const int *bounds, int micro, int batch) {
  hm_reshard_layout l;
  memset(&l, 0, sizeof l);
  l.nstages = nstages, l.micro_batches = micro, l.batch = batch, l.world = nstages;
  memcpy(l.bounds, bounds, sizeof(int) * (size_t)(nstages + 1));
  return l;
}

/* A one-stage checkpoint folder (manifest + stage0.hmc) of the whole model: the source. */
static void make_source(const char *dir) {
  char p[600];
  snprintf(p, sizeof p, "mkdir -p %s", dir);
  assert_int_equal(system(p), 0);
  hm_ckpt whole;
  assert_int_equal(hm_ckpt_read(whole_path, &whole), HM_OK);
  hm_ckpt_meta lay = {0};
  lay.layer_first = 0, lay.layer_last = 4, lay.stage_count = 1, lay.micro_batches = 6, lay.batch = 2;
  snprintf(p, sizeof p, "%s/stage0.hmc", dir);
  assert_int_equal(hm_ckpt_cut_stage(&whole, &lay, p), HM_OK);
  hm_ckpt_manifest man;
  memset(&man, 0, sizeof man);
  man.run_id = whole.meta.run_id, man.step = whole.meta.step, man.data_position = whole.meta.data_position;
  man.nstages = 1, man.world = 1;
  snprintf(man.shards[0].file, sizeof man.shards[0].file, "stage0.hmc");
  assert_int_equal(hm_ckpt_file_hash(p, &man.shards[0].xxh3, &man.shards[0].bytes), HM_OK);
  assert_int_equal(hm_ckpt_manifest_write(dir, &man), HM_OK);
  hm_ckpt_free(&whole);
}

/* Every tensor of a and b: same names, sizes and bytes; the metas' identity fields equal. */
static void assert_same_tensors(const char *a, const char *b) {
  hm_ckpt x, y;
  assert_int_equal(hm_ckpt_read(a, &x), HM_OK);
  assert_int_equal(hm_ckpt_read(b, &y), HM_OK);
  assert_int_equal(x.n_tensors, y.n_tensors);
  for (int i = 0; i < x.n_tensors; i++) {
    const hm_ckpt_tensor *t = hm_ckpt_find(&y, x.tensors[i].name);
    if (!t) fail_msg("%s: tensor %s missing in %s", a, x.tensors[i].name, b);
    assert_int_equal(t->numel, x.tensors[i].numel);
    if (memcmp(t->data, x.tensors[i].data, sizeof(float) * t->numel) != 0)
      fail_msg("tensor %s differs between %s and %s", t->name, a, b);
  }
  assert_int_equal(x.meta.step, y.meta.step);
  assert_int_equal(x.meta.run_id, y.meta.run_id);
  assert_int_equal(x.meta.data_position, y.meta.data_position);
  assert_int_equal(x.meta.layer_first, y.meta.layer_first);
  assert_int_equal(x.meta.layer_last, y.meta.layer_last);
  hm_ckpt_free(&x);
  hm_ckpt_free(&y);
}

/* The stage file at path loads into a stage of its layer range. */
static void assert_loads(const char *path, int first, int last) {
  hm_spec_model_config cfg;
  assert_int_equal(hm_model_config_lookup("tiny", &cfg), HM_OK);
  hm_device *dev = NULL;
  assert_int_equal(hm_device_open("cpu:threads=1", &dev), HM_OK);
  hm_stage *s = NULL;
  hm_stage_options so = {first, last, 2, (int)cfg.T, 1, {0}};
  assert_int_equal(hm_stage_create(&cfg, dev, &so, &s), HM_OK);
  hm_ckpt_meta m;
  if (hm_stage_load_shard(s, dev, path, &m) != HM_OK) fail_msg("%s: %s", path, hm_last_error());
  assert_int_equal(m.step, 12);
  hm_stage_destroy(s);
  hm_device_close(dev);
}

static void test_a_then_b_equals_b(void **state) {
  (void)state;
  char src[512], da[512], db[512], p[700], q[700];
  snprintf(src, sizeof src, "%s/src", tmpdir);
  snprintf(da, sizeof da, "%s/a", tmpdir);
  snprintf(db, sizeof db, "%s/b", tmpdir);
  make_source(src);
  static const int A[] = {0, 1, 3, 4}, B[] = {0, 2, 4};
  hm_reshard_layout la = layout(3, A, 6, 2), lb = layout(2, B, 3, 4); /* B: other micro-batches, same global batch */
  assert_int_equal(hm_ckpt_reshard(src, &la, da), HM_OK);
  assert_int_equal(hm_ckpt_reshard(da, &lb, db), HM_OK);
  hm_ckpt whole;
  assert_int_equal(hm_ckpt_read(whole_path, &whole), HM_OK);
  for (int s = 0; s < 2; s++) { /* B cut straight out of the whole model */
    hm_ckpt_meta lay = {0};
    lay.layer_first = B[s], lay.layer_last = B[s + 1], lay.stage_index = s, lay.stage_count = 2;
    lay.micro_batches = 3, lay.batch = 4;
    snprintf(p, sizeof p, "%s/direct%d.hmc", tmpdir, s);
    assert_int_equal(hm_ckpt_cut_stage(&whole, &lay, p), HM_OK);
    snprintf(q, sizeof q, "%s/stage%d.hmc", db, s);
    assert_same_tensors(p, q);
    assert_loads(q, B[s], B[s + 1]);
  }
  hm_ckpt_free(&whole);
  for (int s = 0; s < 3; s++) {
    snprintf(q, sizeof q, "%s/stage%d.hmc", da, s);
    assert_loads(q, A[s], A[s + 1]);
  }
  hm_ckpt_manifest m;
  assert_int_equal(hm_ckpt_manifest_read(db, &m, NULL, 0), HM_OK);
  assert_int_equal(m.nstages, 2);
  assert_int_equal(m.step, 12);
  assert_int_equal(m.run_id, 0xabcdef0123456789ull);
  assert_int_equal(hm_ckpt_manifest_verify(db, &m), HM_OK);
}

/* The same layer ranges: the files come back byte for byte (same checksums in the manifest). */
static void test_same_layout_is_bitwise(void **state) {
  (void)state;
  char src[512], da[512], da2[512];
  snprintf(src, sizeof src, "%s/src2", tmpdir);
  snprintf(da, sizeof da, "%s/a2", tmpdir);
  snprintf(da2, sizeof da2, "%s/a3", tmpdir);
  make_source(src);
  static const int A[] = {0, 2, 3, 4};
  hm_reshard_layout la = layout(3, A, 6, 2);
  assert_int_equal(hm_ckpt_reshard(src, &la, da), HM_OK);
  assert_int_equal(hm_ckpt_reshard(da, &la, da2), HM_OK);
  hm_ckpt_manifest m1, m2;
  assert_int_equal(hm_ckpt_manifest_read(da, &m1, NULL, 0), HM_OK);
  assert_int_equal(hm_ckpt_manifest_read(da2, &m2, NULL, 0), HM_OK);
  for (int s = 0; s < 3; s++) {
    assert_int_equal(m1.shards[s].xxh3, m2.shards[s].xxh3);
    assert_int_equal(m1.shards[s].bytes, m2.shards[s].bytes);
  }
}

static void test_global_batch_must_stay(void **state) {
  (void)state;
  char src[512], dx[512];
  snprintf(src, sizeof src, "%s/src3", tmpdir);
  snprintf(dx, sizeof dx, "%s/x", tmpdir);
  make_source(src);
  static const int B[] = {0, 2, 4};
  hm_reshard_layout lb = layout(2, B, 4, 2); /* 8 sequences per step, the checkpoint took 12 */
  assert_int_equal(hm_ckpt_reshard(src, &lb, dx), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "global batch"));
  hm_ckpt_manifest m;
  assert_int_equal(hm_ckpt_manifest_read(dx, &m, NULL, 0), HM_ERR_NOT_FOUND); /* no manifest: not a checkpoint */
}

static int setup(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/hetmix-reshard-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  make_whole();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_then_b_equals_b),
      cmocka_unit_test(test_same_layout_is_bitwise),
      cmocka_unit_test(test_global_batch_must_stay),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
