/* Re-sharding a checkpoint to another pipeline layout (hm_ckpt_reshard, hm_ckpt_cut_stage):
 * whole model -> stages A -> whole model -> stages B gives tensors bitwise equal to cutting B
 * straight out of the whole model; re-sharding to the same layout gives the same files; every
 * cut stage loads into a stage of its layer range (the head's copy of the tied embedding
 * included); a changed global batch is refused; tensor-parallel shards are merged on the way in
 * and split on the way out, each split shard the part a stage of that rank cuts out of the
 * unsplit file, byte for byte. */
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

static hm_status no_allreduce(void *ctx, void *buf, size_t n, hm_tp_op op) {
  (void)ctx, (void)buf, (void)n, (void)op;
  return HM_OK;
}

/* Params and both moments of a stage of layers [first,last) at tensor-parallel rank of size
 * loaded from path (hm_stage_load: a shard as it is, an unsplit file cut), into out (3 x np). */
static float *load_tp(const char *path, int first, int last, int rank, int size, size_t *np) {
  hm_spec_model_config cfg;
  assert_int_equal(hm_model_config_lookup("tiny", &cfg), HM_OK);
  hm_device *dev = NULL;
  assert_int_equal(hm_device_open("cpu:threads=1", &dev), HM_OK);
  hm_stage *s = NULL;
  hm_stage_options so = {first, last, 2, (int)cfg.T, 1, {rank, size, no_allreduce, NULL}};
  assert_int_equal(hm_stage_create(&cfg, dev, &so, &s), HM_OK);
  hm_ckpt_meta m;
  if (hm_stage_load(s, path, &m) != HM_OK) fail_msg("%s: %s", path, hm_last_error());
  *np = hm_stage_num_params(s);
  float *out = malloc(3 * *np * sizeof *out);
  assert_non_null(out);
  assert_int_equal(hm_device_copy_d2h(dev, out, hm_stage_params(s), *np * sizeof *out), HM_OK);
  assert_int_equal(hm_device_copy_d2h(dev, out + *np, hm_stage_adam_m(s), *np * sizeof *out), HM_OK);
  assert_int_equal(hm_device_copy_d2h(dev, out + 2 * *np, hm_stage_adam_v(s), *np * sizeof *out), HM_OK);
  hm_stage_destroy(s);
  hm_device_close(dev);
  return out;
}

/* Rank r of 2's shard dir/stage<s>.tp<r>.hmc loads as the same state as the unsplit file cut. */
static void assert_shard_is_cut(const char *dir, int s, int first, int last, const char *unsplit) {
  for (int r = 0; r < 2; r++) {
    char p[700];
    snprintf(p, sizeof p, "%s/stage%d.tp%d.hmc", dir, s, r);
    size_t na, nb;
    float *a = load_tp(p, first, last, r, 2, &na), *b = load_tp(unsplit, first, last, r, 2, &nb);
    assert_int_equal(na, nb);
    if (memcmp(a, b, 3 * na * sizeof *a) != 0) fail_msg("%s differs from rank %d's part of %s", p, r, unsplit);
    free(a);
    free(b);
  }
}

/* A direct cut of layers [first,last) of the whole model (stage s of n, m x b per step) at p. */
static void direct_cut(const char *p, int first, int last, int s, int n, int m, int b) {
  hm_ckpt whole;
  assert_int_equal(hm_ckpt_read(whole_path, &whole), HM_OK);
  hm_ckpt_meta lay = {0};
  lay.layer_first = first, lay.layer_last = last, lay.stage_index = s, lay.stage_count = n;
  lay.micro_batches = m, lay.batch = b;
  assert_int_equal(hm_ckpt_cut_stage(&whole, &lay, p), HM_OK);
  hm_ckpt_free(&whole);
}

/* Whole model -> A (stage 0 split 2 ways) -> B (stage 1 split 2 ways; A's shards merged on the
 * way in) -> one unsplit stage: the manifest names each shard by stage and rank, every split
 * shard is the part its rank's stage cuts out of the unsplit stage, merging the shards gives the
 * direct cut, and the last layout is the whole model byte for byte. */
static void test_tensor_parallel_shards(void **state) {
  (void)state;
  char src[512], da[512], db[512], dc[512], p[700], q[700], r0[700], r1[700];
  snprintf(src, sizeof src, "%s/src4", tmpdir);
  snprintf(da, sizeof da, "%s/tpa", tmpdir);
  snprintf(db, sizeof db, "%s/tpb", tmpdir);
  snprintf(dc, sizeof dc, "%s/tpc", tmpdir);
  make_source(src);
  static const int A[] = {0, 2, 4}, B[] = {0, 1, 3, 4}, C1[] = {0, 4};
  hm_reshard_layout la = layout(2, A, 6, 2), lb = layout(3, B, 3, 4), lc = layout(1, C1, 6, 2);
  la.tp[0] = 2, lb.tp[1] = 2;
  assert_int_equal(hm_ckpt_reshard(src, &la, da), HM_OK);
  hm_ckpt_manifest m;
  assert_int_equal(hm_ckpt_manifest_read(da, &m, NULL, 0), HM_OK);
  assert_int_equal(hm_ckpt_manifest_nshards(&m), 3);
  assert_string_equal(m.shards[1].file, "stage0.tp1.hmc");
  assert_int_equal(m.shards[1].tp_rank, 1);
  assert_int_equal(m.shards[1].tp_size, 2);
  assert_string_equal(m.shards[2].file, "stage1.hmc");
  assert_int_equal(hm_ckpt_manifest_verify(da, &m), HM_OK);
  snprintf(p, sizeof p, "%s/direct-a0.hmc", tmpdir);
  direct_cut(p, 0, 2, 0, 2, 6, 2);
  assert_shard_is_cut(da, 0, 0, 2, p);
  snprintf(r0, sizeof r0, "%s/stage0.tp0.hmc", da);
  snprintf(r1, sizeof r1, "%s/stage0.tp1.hmc", da);
  const char *pa[2] = {r0, r1};
  snprintf(q, sizeof q, "%s/merged-a0.hmc", tmpdir);
  assert_int_equal(hm_ckpt_merge_tp(pa, 2, q), HM_OK);
  assert_same_tensors(p, q);
  assert_int_equal(hm_ckpt_reshard(da, &lb, db), HM_OK);
  snprintf(p, sizeof p, "%s/direct-b1.hmc", tmpdir);
  direct_cut(p, 1, 3, 1, 3, 3, 4);
  assert_shard_is_cut(db, 1, 1, 3, p);
  assert_int_equal(hm_ckpt_reshard(db, &lc, dc), HM_OK);
  snprintf(p, sizeof p, "%s/direct-c.hmc", tmpdir);
  direct_cut(p, 0, 4, 0, 1, 6, 2);
  snprintf(q, sizeof q, "%s/stage0.hmc", dc);
  assert_same_tensors(p, q);
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
      cmocka_unit_test(test_tensor_parallel_shards),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
