/* Unit tests of hmcomm's pieces, without forked ranks: the wire codec (round trips and every
 * rejection), collective descriptors, reduction kernels (f16/bf16 rounding, integer wrap, avg),
 * unique id text form, launcher environment parsing, the rendezvous store with its
 * authentication (a wrong secret is refused and logged with the address) and the tuner. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "comm/comm_internal.h"
#include "util/util.h"

static void make_frame(unsigned char *b, int type, uint32_t len) {
  hm_wire_hdr h;
  hm_wire_make_header(&h, type, 7, len, 0x1234, 9);
  hm_wire_encode_header(&h, b);
}

static void test_header_roundtrip_and_rejections(void **state) {
  (void)state;
  unsigned char b[HM_WIRE_HDR_BYTES];
  hm_wire_hdr h;
  make_frame(b, HM_WIRE_DATA, 100);
  assert_int_equal(hm_wire_decode_header(b, sizeof b, &h), HM_OK);
  assert_int_equal(h.type, HM_WIRE_DATA);
  assert_int_equal(h.seq, 7);
  assert_int_equal(h.len, 100);
  assert_true(h.desc == 0x1234);
  assert_int_equal(h.aux, 9);
  assert_int_equal(hm_wire_decode_header(b, 31, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "truncated"));
  unsigned char c[HM_WIRE_HDR_BYTES];
  memcpy(c, b, sizeof c);
  c[0] ^= 1;
  assert_int_equal(hm_wire_decode_header(c, sizeof c, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "magic"));
  memcpy(c, b, sizeof c);
  c[12] ^= 1; /* payload length changed: the check catches it */
  assert_int_equal(hm_wire_decode_header(c, sizeof c, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "check"));
  memcpy(c, b, sizeof c);
  c[4] = 9;
  assert_int_equal(hm_wire_decode_header(c, sizeof c, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "version"));
  make_frame(c, 200, 0);
  assert_int_equal(hm_wire_decode_header(c, sizeof c, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "type"));
  make_frame(c, HM_WIRE_DATA, HM_WIRE_MAX_PAYLOAD + 1);
  assert_int_equal(hm_wire_decode_header(c, sizeof c, &h), HM_ERR_PROTOCOL);
  assert_non_null(strstr(hm_last_error(), "limit"));
}

static void test_payload_decoders(void **state) {
  (void)state;
  hm_wire_hello in = {.rank = 5, .purpose = HM_CONN_DATA}, out;
  memset(in.tag, 0xab, sizeof in.tag);
  memset(in.nonce, 0xcd, sizeof in.nonce);
  unsigned char hb[HM_WIRE_HELLO_BYTES];
  hm_wire_encode_hello(&in, hb);
  assert_int_equal(hm_wire_decode_hello(hb, sizeof hb, &out), HM_OK);
  assert_int_equal(out.rank, 5);
  assert_int_equal(out.purpose, HM_CONN_DATA);
  assert_memory_equal(out.nonce, in.nonce, sizeof in.nonce);
  assert_int_equal(hm_wire_decode_hello(hb, sizeof hb - 1, &out), HM_ERR_PROTOCOL);
  hb[HM_WIRE_HELLO_BYTES - 4] = 77; /* purpose */
  assert_int_equal(hm_wire_decode_hello(hb, sizeof hb, &out), HM_ERR_PROTOCOL);

  unsigned char buf[64];
  size_t n = hm_wire_encode_store_set(buf, sizeof buf, "info/3", "xyz", 3);
  assert_int_equal(n, 2 + 6 + 3);
  char key[HM_WIRE_MAX_KEY + 1];
  const unsigned char *val;
  size_t vl;
  assert_int_equal(hm_wire_decode_store_set(buf, n, key, &val, &vl), HM_OK);
  assert_string_equal(key, "info/3");
  assert_int_equal(vl, 3);
  assert_memory_equal(val, "xyz", 3);
  buf[0] = 200; /* key length beyond the payload */
  assert_int_equal(hm_wire_decode_store_set(buf, n, key, &val, &vl), HM_ERR_PROTOCOL);
  assert_int_equal(hm_wire_decode_store_set(buf, 1, key, &val, &vl), HM_ERR_PROTOCOL);
  assert_int_equal(hm_wire_decode_store_key((const unsigned char *)"a b", 3, key), HM_ERR_PROTOCOL);
  assert_int_equal(hm_wire_decode_store_key((const unsigned char *)"", 0, key), HM_ERR_PROTOCOL);
  assert_int_equal(hm_wire_decode_store_key((const unsigned char *)"ok/1", 4, key), HM_OK);
}

static void test_descriptors(void **state) {
  (void)state;
  hm_desc d = {HM_COLL_BROADCAST, HM_BFLOAT16, 0, 3, 1000003}, e;
  hm_desc_unpack(hm_desc_pack(&d), &e);
  assert_int_equal(e.kind, d.kind);
  assert_int_equal(e.dtype, d.dtype);
  assert_int_equal(e.root, 3);
  assert_true(e.count == 1000003);
  char s[128];
  hm_desc_format(hm_desc_pack(&d), s, sizeof s);
  assert_string_equal(s, "broadcast(count=1000003, bf16, root=3)");
  hm_desc a = {HM_COLL_ALLREDUCE, HM_FLOAT32, HM_MAX, -1, 10};
  hm_desc_format(hm_desc_pack(&a), s, sizeof s);
  assert_string_equal(s, "allreduce(count=10, f32, max)");
  hm_desc b = a;
  b.op = HM_SUM;
  assert_true(hm_desc_pack(&a) != hm_desc_pack(&b));
}

static void test_reduce_kernels(void **state) {
  (void)state;
  /* f16: 1.5 + 2.25 = 3.75 exactly; 65504 (max) + 65504 overflows to inf */
  uint16_t h1[2] = {0x3e00, 0x7bff}, h2[2] = {0x4080, 0x7bff}, hr[2];
  hm_reduce(hr, h1, h2, 2, HM_FLOAT16, HM_SUM, 0);
  assert_int_equal(hr[0], 0x4380);
  assert_int_equal(hr[1], 0x7c00);
  /* bf16: 1.0 + 2^-8 rounds to even (stays 1.0); max picks the larger */
  uint16_t b1[2] = {0x3f80, 0x4000}, b2[2] = {0x3b80, 0x4040}, br[2];
  hm_reduce(br, b1, b2, 2, HM_BFLOAT16, HM_SUM, 0);
  assert_int_equal(br[0], 0x3f80);
  hm_reduce(br, b1, b2, 2, HM_BFLOAT16, HM_MAX, 0);
  assert_int_equal(br[1], 0x4040);
  /* integers wrap without undefined behaviour */
  int32_t i1[3] = {INT32_MAX, -7, 9}, i2[3] = {1, 2, -3}, ir[3];
  hm_reduce(ir, i1, i2, 3, HM_INT32, HM_SUM, 0);
  assert_int_equal(ir[0], INT32_MIN);
  hm_reduce(ir, i1, i2, 3, HM_INT32, HM_MIN, 0);
  assert_int_equal(ir[1], -7);
  uint8_t u1[1] = {250}, u2[1] = {10}, ur[1];
  hm_reduce(ur, u1, u2, 1, HM_UINT8, HM_SUM, 0);
  assert_int_equal(ur[0], 4);
  /* avg: the last step divides (integers truncate) */
  int64_t a1[1] = {7}, a2[1] = {4}, ar[1];
  hm_reduce(ar, a1, a2, 1, HM_INT64, HM_AVG, 3);
  assert_int_equal(ar[0], 3);
  double d1[2] = {1.0, -2.0}, d2[2] = {2.0, 8.0}, dr[2];
  hm_reduce(dr, d1, d2, 2, HM_FLOAT64, HM_AVG, 2);
  assert_true(dr[0] == 1.5 && dr[1] == 3.0);
  /* in place (dst == a) */
  float f1[5] = {1, 2, 3, 4, 5}, f2[5] = {1, 1, 1, 1, 1};
  hm_reduce(f1, f1, f2, 5, HM_FLOAT32, HM_PROD, 0);
  hm_reduce(f1, f1, f2, 5, HM_FLOAT32, HM_SUM, 0);
  assert_true(f1[4] == 6.0f);
  assert_string_equal(hm_dtype_name(HM_BFLOAT16), "bf16");
  assert_int_equal(hm_dtype_size(HM_FLOAT16), 2);
  assert_string_equal(hm_redop_name(HM_AVG), "avg");
}

/* hm_copy_stream: every head misalignment, every tail length, bytes outside untouched */
static void test_copy_stream(void **state) {
  (void)state;
  enum { CAP = 600 };
  unsigned char src[CAP], dst[CAP + 64];
  for (int i = 0; i < CAP; i++) src[i] = (unsigned char)(i * 7 + 3);
  for (int off = 0; off < 17; off++)
    for (int len = 0; len < 300; len += (len < 140 ? 1 : 13)) {
      memset(dst, 0xa5, sizeof dst);
      hm_copy_stream(dst + off, src + (off * 5) % 32, (size_t)len);
      assert_memory_equal(dst + off, src + (off * 5) % 32, (size_t)len);
      for (int i = 0; i < off; i++) assert_int_equal(dst[i], 0xa5);
      for (int i = off + len; i < (int)sizeof dst; i++) assert_int_equal(dst[i], 0xa5);
    }
}

/* Leftover segments of dead processes are swept; young ones and live processes' stay. */
static void test_sweep_stale_segments(void **state) {
  (void)state;
  pid_t dead = fork();
  assert_true(dead >= 0);
  if (dead == 0) _exit(0);
  waitpid(dead, NULL, 0);
  char old_dead[96], young_dead[96], old_live[96];
  snprintf(old_dead, sizeof old_dead, "/hetmix-0badf00d-0-%d-1", (int)dead);
  snprintf(young_dead, sizeof young_dead, "/hetmix-0badf00d-1-%d-2", (int)dead);
  snprintf(old_live, sizeof old_live, "/hetmix-0badf00d-2-%d-3", (int)getpid());
  const char *names[3] = {old_dead, young_dead, old_live};
  for (int i = 0; i < 3; i++) {
    int fd = shm_open(names[i], O_CREAT | O_RDWR, 0600);
    assert_true(fd >= 0);
    if (i != 1) { /* an hour old */
      struct timespec ts[2];
      clock_gettime(CLOCK_REALTIME, &ts[0]);
      ts[0].tv_sec -= 3600;
      ts[1] = ts[0];
      assert_int_equal(futimens(fd, ts), 0);
    }
    close(fd);
  }
  assert_true(hm_shm_sweep_stale(600) >= 1);
  int fd = shm_open(old_dead, O_RDWR, 0600);
  assert_true(fd < 0); /* swept */
  for (int i = 1; i < 3; i++) {
    fd = shm_open(names[i], O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    shm_unlink(names[i]);
  }
}

static void test_unique_id_text(void **state) {
  (void)state;
  hm_unique_id id, back;
  assert_int_equal(hm_get_unique_id(&id), HM_OK);
  char text[2 * HM_UNIQUE_ID_BYTES + 1];
  assert_int_equal(hm_unique_id_to_string(&id, text, sizeof text), HM_OK);
  assert_int_equal(hm_unique_id_from_string(&back, text), HM_OK);
  assert_memory_equal(&id, &back, sizeof id);
  assert_int_equal(hm_unique_id_to_string(&id, text, 10), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_unique_id_from_string(&back, "abc"), HM_ERR_INVALID_ARG);
  text[5] = 'z';
  assert_int_equal(hm_unique_id_from_string(&back, text), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "position 4"));
  /* an id that is not one is refused before anything connects */
  hm_unique_id junk;
  memset(&junk, 0x5a, sizeof junk);
  hm_comm_t c;
  assert_int_equal(hm_comm_init_rank(&c, 2, &junk, 0, NULL), HM_ERR_INVALID_ARG);
  assert_int_equal(hm_comm_init_rank(&c, 2, &id, 2, NULL), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "rank 2"));
}

static const char *const launch_vars[] = {
    "HETMIX_RANK", "HETMIX_WORLD_SIZE", "HETMIX_LOCAL_RANK", "HETMIX_LOCAL_WORLD_SIZE", "HETMIX_STORE_ADDR",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "PMI_RANK", "PMI_SIZE",
    "PMI_ID_BASE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "SLURM_STEP_ID", NULL};
static void clear_launch_env(void) {
  for (int i = 0; launch_vars[i]; i++) unsetenv(launch_vars[i]);
}

static void test_launch_env(void **state) {
  (void)state;
  hm_launch_env e;
  clear_launch_env();
  assert_int_equal(hm_launch_env_read(&e), HM_ERR_NOT_FOUND);
  setenv("HETMIX_RANK", "2", 1);
  setenv("HETMIX_WORLD_SIZE", "4", 1);
  setenv("HETMIX_STORE_ADDR", "127.0.0.1:29555", 1);
  setenv("RANK", "1", 1); /* ours win over torchrun's */
  setenv("WORLD_SIZE", "4", 1);
  setenv("HETMIX_LOCAL_RANK", "0", 1);
  setenv("HETMIX_LOCAL_WORLD_SIZE", "3", 1); /* what `hetmix launch` sets */
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_string_equal(e.source, "hetmix");
  assert_int_equal(e.rank, 2);
  assert_int_equal(e.local_size, 3);
  assert_int_equal(e.store_port, 29555);
  assert_string_equal(e.store_host, "127.0.0.1");
  setenv("HETMIX_STORE_ADDR", "nohostport", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_ERR_INVALID_ARG);
  clear_launch_env();
  setenv("RANK", "3", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("LOCAL_RANK", "1", 1);
  setenv("MASTER_ADDR", "localhost", 1);
  setenv("MASTER_PORT", "29600", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_string_equal(e.source, "torchrun");
  assert_int_equal(e.local_rank, 1);
  assert_string_equal(e.store_host, "localhost");
  setenv("RANK", "4", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_ERR_INVALID_ARG);
  assert_non_null(strstr(hm_last_error(), "rank 4"));
  setenv("RANK", "x", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_ERR_INVALID_ARG);
  clear_launch_env();
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_ERR_NOT_FOUND); /* no address, no job id */
  setenv("OMPI_MCA_ess_base_jobid", "12345", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_string_equal(e.source, "openmpi");
  int port = e.store_port;
  assert_true(port >= 20000 && port < 40000);
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_int_equal(e.store_port, port); /* every rank derives the same */
  clear_launch_env();
  setenv("PMI_RANK", "1", 1);
  setenv("PMI_SIZE", "3", 1);
  setenv("HETMIX_STORE_ADDR", "127.0.0.1:4000", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_string_equal(e.source, "mpich");
  clear_launch_env();
  setenv("SLURM_PROCID", "5", 1);
  setenv("SLURM_NTASKS", "8", 1);
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_JOB_NODELIST", "gpu[07-09,12],cpu3", 1);
  setenv("SLURM_JOB_ID", "991", 1);
  assert_int_equal(hm_launch_env_read(&e), HM_OK);
  assert_string_equal(e.source, "slurm");
  assert_string_equal(e.store_host, "gpu07");
  assert_int_equal(e.rank, 5);
  clear_launch_env();
}

static char g_log[4096];
static void log_hook(int level, const char *msg, void *arg) {
  (void)level;
  (void)arg;
  size_t l = strlen(g_log);
  snprintf(g_log + l, sizeof g_log - l, "%s\n", msg);
}

static void test_store_and_auth(void **state) {
  (void)state;
  hm_store_server *s;
  int port;
  assert_int_equal(hm_store_server_start("127.0.0.1", 0, NULL, NULL, &s, &port), HM_OK);
  unsigned char tag[HM_WIRE_TAG_BYTES], secret[HM_SECRET_BYTES], wrong[HM_SECRET_BYTES];
  hm_random_bytes(tag, sizeof tag);
  hm_random_bytes(secret, sizeof secret);
  memcpy(wrong, secret, sizeof wrong);
  wrong[0] ^= 1;
  assert_int_equal(hm_store_server_add_job(s, tag, secret), HM_OK);
  hm_comm_set_log_hook(log_hook, NULL);
  g_log[0] = '\0';

  hm_store_client a, b, bad;
  assert_int_equal(hm_store_connect(&a, "127.0.0.1", port, tag, secret, 0, hm_deadline_after_ms(5000)), HM_OK);
  assert_int_equal(hm_store_connect(&b, "127.0.0.1", port, tag, secret, 1, hm_deadline_after_ms(5000)), HM_OK);
  assert_int_equal(hm_store_set(&a, "k/1", "hello", 5), HM_OK);
  char v[16];
  size_t vl = sizeof v;
  assert_int_equal(hm_store_get(&b, "k/1", v, &vl), HM_OK);
  assert_int_equal(vl, 5);
  assert_memory_equal(v, "hello", 5);
  /* a missing key waits until the client's deadline */
  b.deadline_ns = hm_deadline_after_ms(300);
  vl = sizeof v;
  assert_int_equal(hm_store_get(&b, "k/never", v, &vl), HM_ERR_TIMEOUT);
  assert_non_null(strstr(hm_last_error(), "k/never"));

  /* the wrong secret is refused on both sides and the store logs the address */
  assert_int_equal(hm_store_connect(&bad, "127.0.0.1", port, tag, wrong, 2, hm_deadline_after_ms(5000)), HM_ERR_AUTH);
  /* an unknown job too */
  unsigned char other[HM_WIRE_TAG_BYTES];
  memset(other, 1, sizeof other);
  assert_int_equal(hm_store_connect(&bad, "127.0.0.1", port, other, secret, 2, hm_deadline_after_ms(5000)), HM_ERR_AUTH);
  /* a peer that sends garbage instead of a hello */
  int fd;
  assert_int_equal(hm_net_connect("127.0.0.1", port, hm_deadline_after_ms(2000), &fd), HM_OK);
  assert_int_equal(hm_net_write_all(fd, "GET / HTTP/1.0\r\n\r\n0123456789abcdef", 34, hm_deadline_after_ms(2000)), HM_OK);
  char tmp[8];
  assert_int_not_equal(hm_net_read_all(fd, tmp, 1, hm_deadline_after_ms(3000)), HM_OK);
  close(fd);
  hm_store_close(&a);
  hm_store_close(&b);
  hm_store_server_stop(s);
  hm_comm_set_log_hook(NULL, NULL);
  assert_non_null(strstr(g_log, "refused connection from 127.0.0.1:"));
  assert_non_null(strstr(g_log, "unknown job"));
  assert_non_null(strstr(g_log, "bad magic"));
}

static void test_tuner_choices(void **state) {
  (void)state;
  hm_link shm = {8e9, 1.5e-6, 6e9, 0};
  /* latency-bound sizes take recursive doubling, bandwidth-bound ones the ring */
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 2, 8, &shm, NULL), HM_ALGO_RECURSIVE_DOUBLING);
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 2, 64 << 20, &shm, NULL), HM_ALGO_RING);
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 8, 64 << 20, &shm, NULL), HM_ALGO_RING);
  assert_int_equal(hm_cost_best_algo(HM_COLL_ALLREDUCE, 8, 64, &shm, NULL), HM_ALGO_RECURSIVE_DOUBLING);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_header_roundtrip_and_rejections),
      cmocka_unit_test(test_payload_decoders),
      cmocka_unit_test(test_descriptors),
      cmocka_unit_test(test_reduce_kernels),
      cmocka_unit_test(test_copy_stream),
      cmocka_unit_test(test_sweep_stale_segments),
      cmocka_unit_test(test_unique_id_text),
      cmocka_unit_test(test_launch_env),
      cmocka_unit_test(test_store_and_auth),
      cmocka_unit_test(test_tuner_choices),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
