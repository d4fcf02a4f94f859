/* hmcomm's link compression on real training data (docs/comm.md, "Compression").
 *
 *   bench_comm_zip ratio [--steps N] [--batch B] [--save DIR]
 *     Trains gpt-mini on the default corpus (cpu device) as two pipeline stages in one process
 *     for N AdamW steps, then takes the data a pipelined run sends: the parameter gradients, the
 *     first stage's output activations and the activation gradients the second stage sends back.
 *     Prints the compression ratio (wire / raw bytes, 512 KiB chunks as hmcomm's TCP transport
 *     sends them) of each in f32 and in bf16 (the f32 values rounded to nearest even), with zstd
 *     and lz4, with byte planes and without, and the codecs' throughput on this machine.
 *     --save writes the data as raw files (grads.f32, grads.bf16, ...) for `link`.
 *
 *   bench_comm_zip link --file F --dtype bf16|f32 [--link-bw B] [--rounds R]
 *     Two forked ranks over TCP send the file's bytes from rank 0 to rank 1 (the receiver checks
 *     them bit for bit and answers with 8 bytes), with compression off, zstd and lz4 in turn
 *     (HETMIX_LINK_BW = B tells hmcomm the link's bandwidth; the cost model decides per chunk).
 *     Prints, per codec beside uncompressed: the median time of R rounds, the effective bandwidth
 *     and uncompressed's, their ratio, the wire / raw bytes the run actually sent, and what the
 *     sender measured of the codec (running means of compress and decompress throughput and
 *     ratio, the figures hm_cost_zip_pays decides with) with the bandwidth the cost model expects
 *     from them, min(compress, link / ratio, decompress). bench/comm/zip_link.sh runs it over a
 *     loopback shaped to 1 Gbit/s. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "comm/compress.h"
#include "hetmix/comm.h"
#include "hetmix/device.h"
#include "hetmix/model.h"
#include "util/half.h"
#include "util/util.h"

#define CHUNK (512u << 10)

static int fail(const char *what) {
  fprintf(stderr, "bench_comm_zip: error: %s: %s\n", what, hm_last_error());
  return 1;
}

/* ---------------------------------------------------------------- ratio */

typedef struct dataset {
  const char *name;
  float *f32;
  size_t n;
} dataset;

/* Trains two stages [0,4) and [4,8) of gpt-mini for `steps` steps and keeps, from the last
 * step's first micro-batch, the gradients of both stages, the stage boundary's activations and
 * their gradients (host f32 copies). */
static int train(int steps, int batch, dataset out[3]) {
  hm_spec_model_config cfg;
  hm_device *dev;
  char corpus[4200];
  hm_tokfile tf;
  hm_dataloader dl;
  if (hm_model_config_lookup("gpt-mini", &cfg) != HM_OK || hm_device_open("cpu", &dev) != HM_OK) return fail("setup");
  if (hm_default_corpus("data", corpus, sizeof corpus) != HM_OK || hm_tokfile_open(corpus, &tf) != HM_OK ||
      hm_dataloader_init(&dl, &tf, batch, cfg.T, 1337, 0.1) != HM_OK)
    return fail("corpus");
  hm_stage *st[2];
  const int L = hm_model_num_layers(&cfg);
  for (int s = 0; s < 2; s++) {
    hm_stage_options o = {.first = s ? L / 2 : 0, .last = s ? L : L / 2, .B = batch, .T = cfg.T, .max_microbatches = 1};
    if (hm_stage_create(&cfg, dev, &o, &st[s]) != HM_OK || hm_stage_init_params(st[s], 1337) != HM_OK)
      return fail("stage");
  }
  const size_t act = (size_t)batch * cfg.T * cfg.C, np0 = hm_stage_num_params(st[0]), np1 = hm_stage_num_params(st[1]);
  int32_t *in = malloc(sizeof(int32_t) * batch * cfg.T), *tg = malloc(sizeof(int32_t) * batch * cfg.T);
  out[0] = (dataset){"gradients", malloc((np0 + np1) * 4), np0 + np1};
  out[1] = (dataset){"activations", malloc(act * 4), act};
  out[2] = (dataset){"act-gradients", malloc(act * 4), act};
  const hm_adamw opt = {3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int t = 1; t <= steps; t++) {
    hm_dataloader_next(&dl, in, tg);
    float loss;
    if (hm_stage_zero_grad(st[0]) || hm_stage_zero_grad(st[1]) ||
        hm_stage_forward(st[0], 0, in, NULL, NULL, NULL) ||
        hm_stage_forward(st[1], 0, NULL, hm_stage_output(st[0], 0), tg, &loss) ||
        hm_device_copy_to_f32(dev, out[1].f32, hm_stage_output(st[0], 0), act) ||
        hm_stage_backward(st[1], 0, NULL, 1.0f) ||
        hm_device_copy_to_f32(dev, out[2].f32, hm_stage_dinput(st[1]), act) ||
        hm_stage_backward(st[0], 0, hm_stage_dinput(st[1]), 1.0f))
      return fail("training step");
    if (hm_device_copy_to_f32(dev, out[0].f32, hm_stage_grads(st[0]), np0) ||
        hm_device_copy_to_f32(dev, out[0].f32 + np0, hm_stage_grads(st[1]), np1))
      return fail("reading gradients");
    fprintf(stderr, "# step %d loss %.4f\n", t, loss);
    if (t < steps && (hm_stage_adamw(st[0], &opt, t, 1.0f) || hm_stage_adamw(st[1], &opt, t, 1.0f)))
      return fail("adamw");
  }
  for (int s = 0; s < 2; s++) hm_stage_destroy(st[s]);
  free(in), free(tg);
  hm_tokfile_close(&tf);
  return 0;
}

typedef struct zresult {
  double ratio, comp_bw, decomp_bw;
} zresult;

/* Compresses buf (n bytes of es-byte elements) chunk by chunk; checks every round trip. */
static int measure(const unsigned char *buf, size_t n, size_t es, int codec, int planes, zresult *r) {
  static hm_zip_ctx enc, dec;
  static unsigned char frame[CHUNK + 64], back[CHUNK];
  if (!enc.planes && (hm_zip_ctx_init(&enc, CHUNK) != HM_OK || hm_zip_ctx_init(&dec, CHUNK) != HM_OK))
    return fail("codec buffers");
  size_t wire = 0;
  double tc = 0, td = 0;
  for (size_t off = 0; off < n; off += CHUNK) {
    size_t m = n - off < CHUNK ? n - off : CHUNK, len;
    m -= m % es;
    unsigned stored;
    hm_zip_frame f;
    double t0 = hm_now_s();
    if (hm_zip_encode(&enc, codec, planes, 0, buf + off, m, frame, sizeof frame, &len, &stored) != HM_OK)
      return fail("encode");
    double t1 = hm_now_s();
    if (hm_zip_parse(frame, len, CHUNK, &f) != HM_OK || hm_zip_decode(&dec, &f, back) != HM_OK) return fail("decode");
    td += hm_now_s() - t1;
    tc += t1 - t0;
    if (memcmp(back, buf + off, m) != 0) {
      fprintf(stderr, "bench_comm_zip: round trip differs\n");
      return 1;
    }
    wire += len < m ? len : m; /* hmcomm sends a chunk as it is when it does not shrink */
  }
  *r = (zresult){(double)wire / n, n / tc, n / td};
  (void)es;
  return 0;
}

static int save(const char *dir, const char *name, const char *ext, const void *p, size_t bytes) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f) != 0) {
    fprintf(stderr, "bench_comm_zip: error: writing %s\n", path);
    return 1;
  }
  return 0;
}

static int cmd_ratio(int steps, int batch, const char *save_dir) {
  dataset d[3];
  if (train(steps, batch, d)) return 1;
  printf("# gpt-mini, %d steps, batch %d x 256 tokens; ratio = wire bytes / raw bytes in %u KiB chunks (lower is\n"
         "# better; a chunk that does not shrink goes as it is); +p = byte planes. MB/s: zstd+p compress/decompress\n",
         steps, batch, CHUNK >> 10);
  printf("%-14s %-5s %10s %8s %8s %8s %8s %15s\n", "data", "dtype", "MiB", "zstd+p", "zstd", "lz4+p", "lz4",
         "zstd+p MB/s");
  for (int i = 0; i < 3; i++)
    for (int bf = 0; bf < 2; bf++) {
      const size_t es = bf ? 2 : 4, n = d[i].n * es;
      unsigned char *buf = (unsigned char *)d[i].f32;
      uint16_t *h = NULL;
      if (bf) {
        h = malloc(d[i].n * 2);
        for (size_t k = 0; k < d[i].n; k++) h[k] = hm_f32_to_bf16(d[i].f32[k]);
        buf = (unsigned char *)h;
      }
      zresult r[4] = {{0}};
      const int codecs[2] = {HM_ZIP_ZSTD, HM_ZIP_LZ4};
      for (int k = 0; k < 4; k++)
        if (hm_zip_codec_available(codecs[k / 2]) &&
            measure(buf, n, es, codecs[k / 2], k % 2 ? 1 : (int)es, &r[k]))
          return 1;
      printf("%-14s %-5s %10.2f %8.3f %8.3f %8.3f %8.3f %7.0f/%-7.0f\n", d[i].name, bf ? "bf16" : "f32", n / 1048576.0,
             r[0].ratio, r[1].ratio, r[2].ratio, r[3].ratio, r[0].comp_bw / 1e6, r[0].decomp_bw / 1e6);
      if (save_dir && save(save_dir, d[i].name, bf ? "bf16" : "f32", buf, n)) return 1;
      free(h);
    }
  for (int i = 0; i < 3; i++) free(d[i].f32);
  return 0;
}

/* ---------------------------------------------------------------- link */

/* off; zstd and lz4 where the cost model says so; zstd on every chunk (HETMIX_COMPRESS_ALWAYS) */
static const char *const modes[] = {"off", "zstd", "lz4", "zstd!"};
enum { NMODES = 4 };

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* What rank 0's communicator of one mode knows after the rounds (its compression state for rank 1). */
typedef struct link_stats {
  double offered, wire;    /* candidate bytes and what they took on the wire */
  hm_zip_figures fig;      /* running means for the element size */
} link_stats;

static void link_stats_of(hm_comm_t c, size_t es, link_stats *s) {
  memset(s, 0, sizeof *s);
  const hm_zip_peer *z = c->peers[1].zip;
  if (!z) return;
  s->offered = (double)z->offered;
  s->wire = (double)(z->offered - z->zipped_raw + z->zipped_wire);
  const hm_zip_stream *st = &z->stream[es == 1 ? 0 : es == 2 ? 1 : es == 4 ? 2 : 3];
  if (st->known) s->fig = st->fig;
}

/* One rank: for every round and mode, rank 0 sends the buffer and waits for the 8-byte answer. */
static int link_rank(int rank, hm_unique_id ids[NMODES], const void *buf, size_t count, hm_dtype dt, int rounds,
                     int pipefd) {
  hm_comm_t c[NMODES];
  const size_t bytes = count * hm_dtype_size(dt);
  for (int m = 0; m < NMODES; m++) {
    hm_comm_config cfg = HM_COMM_CONFIG_INIT;
    cfg.transport = "tcp";
    cfg.compress = m == 3 ? "zstd" : modes[m];
    cfg.timeout_ms = 600000;
    if (m > 0 && !hm_zip_codec_available(m == 2 ? HM_ZIP_LZ4 : HM_ZIP_ZSTD)) cfg.compress = "off";
    setenv("HETMIX_COMPRESS_ALWAYS", m == 3 ? "1" : "0", 1);
    if (hm_comm_init_rank(&c[m], 2, &ids[m], rank, &cfg) != HM_OK) return fail("init");
  }
  void *rx = rank ? malloc(bytes) : NULL;
  double *t = calloc((size_t)rounds * NMODES, sizeof *t);
  int64_t one = 1, sum, ack = 0;
  for (int i = 0; i < rounds; i++)
    for (int m = 0; m < NMODES; m++) {
      if (hm_comm_allreduce(c[m], &one, &sum, 1, HM_INT64, HM_SUM) != HM_OK) return fail("barrier");
      const double t0 = hm_now_s();
      if (rank == 0) {
        if (hm_comm_send(c[m], buf, count, dt, 1) != HM_OK || hm_comm_recv(c[m], &ack, 1, HM_INT64, 1) != HM_OK)
          return fail("send");
      } else {
        if (hm_comm_recv(c[m], rx, count, dt, 0) != HM_OK) return fail("recv");
        ack = memcmp(rx, buf, bytes) == 0;
        if (hm_comm_send(c[m], &ack, 1, HM_INT64, 0) != HM_OK) return fail("answer");
      }
      t[i * NMODES + m] = hm_now_s() - t0;
      if (rank == 0 && ack != 1) {
        fprintf(stderr, "bench_comm_zip: %s: the receiver got other bytes\n", modes[m]);
        return 1;
      }
    }
  link_stats ls[NMODES];
  for (int m = 0; m < NMODES; m++) link_stats_of(c[m], hm_dtype_size(dt), &ls[m]);
  if (rank == 0 && (write(pipefd, t, sizeof *t * rounds * NMODES) < 0 || write(pipefd, ls, sizeof ls) < 0)) return 1;
  for (int m = 0; m < NMODES; m++) hm_comm_destroy(c[m]);
  free(rx), free(t);
  return 0;
}

static int cmd_link(const char *file, const char *dtype, double link_bw, int rounds) {
  const hm_dtype dt = strcmp(dtype, "bf16") == 0 ? HM_BFLOAT16 : HM_FLOAT32;
  FILE *f = fopen(file, "rb");
  struct stat sb;
  if (!f || stat(file, &sb) != 0) {
    fprintf(stderr, "bench_comm_zip: error: cannot open %s\n", file);
    return 1;
  }
  const size_t bytes = (size_t)sb.st_size - (size_t)sb.st_size % hm_dtype_size(dt);
  void *buf = malloc(bytes ? bytes : 1);
  if (fread(buf, 1, bytes, f) != bytes) return fclose(f), 1;
  fclose(f);
  char bw[32];
  snprintf(bw, sizeof bw, "%.0f", link_bw);
  setenv("HETMIX_LINK_BW", bw, 1);
  hm_unique_id ids[NMODES];
  for (int m = 0; m < NMODES; m++)
    if (hm_get_unique_id(&ids[m]) != HM_OK) return fail("unique id");
  int pfd[2];
  if (pipe(pfd) != 0) return 1;
  pid_t pid[2];
  for (int r = 0; r < 2; r++) {
    pid[r] = fork();
    if (pid[r] == 0) _exit(link_rank(r, ids, buf, bytes / hm_dtype_size(dt), dt, rounds, pfd[1]));
  }
  int bad = 0;
  for (int r = 0; r < 2; r++) {
    int st;
    waitpid(pid[r], &st, 0);
    bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
  }
  double *t = calloc((size_t)rounds * NMODES, sizeof *t);
  link_stats ls[NMODES];
  if (bad || read(pfd[0], t, sizeof *t * rounds * NMODES) != (ssize_t)(sizeof *t * rounds * NMODES) ||
      read(pfd[0], ls, sizeof ls) != (ssize_t)sizeof ls)
    return 1;
  printf("# %s %s, %.2f MiB rank 0 -> rank 1 over TCP, link %.0f MB/s (HETMIX_LINK_BW); median of %d rounds\n",
         file, dtype, bytes / 1048576.0, link_bw / 1e6, rounds);
  printf("# effective bandwidth = bytes / (send + 8-byte answer); x raw = effective / uncompressed's;\n"
         "# wire/raw = bytes sent / bytes offered (all rounds; probes included); sender's codec means:\n"
         "# compress / decompress MB/s and ratio; model MB/s = min(compress, link / ratio, decompress)\n");
  printf("%-6s %9s %9s %9s %9s %7s %8s %9s %9s %7s %9s\n", "codec", "raw(ms)", "time(ms)", "raw MB/s", "eff MB/s",
         "x raw", "wire/raw", "comp MB/s", "dec MB/s", "ratio", "model MB/s");
  double base = 0, base_ms = 0;
  for (int m = 0; m < NMODES; m++) {
    double v[64];
    for (int i = 0; i < rounds; i++) v[i] = t[i * NMODES + m];
    qsort(v, (size_t)rounds, sizeof v[0], cmp_double);
    const double med = v[rounds / 2], eff = bytes / med;
    if (m == 0) base = eff, base_ms = med * 1e3;
    const link_stats *s = &ls[m];
    const double model = hm_cost_zip_bandwidth(link_bw, &s->fig);
    printf("%-6s %9.1f %9.1f %9.1f %9.1f %6.2fx %8.3f %9.0f %9.0f %7.3f %9.1f\n", modes[m], base_ms, med * 1e3,
           base / 1e6, eff / 1e6, eff / base, s->offered > 0 ? s->wire / s->offered : 1.0, s->fig.compress_bw / 1e6,
           s->fig.decompress_bw / 1e6, s->fig.ratio, model / 1e6);
  }
  free(t), free(buf);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) goto usage;
  int steps = 4, batch = 4, rounds = 5;
  const char *save_dir = NULL, *file = NULL, *dtype = "bf16";
  double link_bw = 125e6;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--save")) save_dir = argv[i + 1];
    else if (!strcmp(argv[i], "--file")) file = argv[i + 1];
    else if (!strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
    else if (!strcmp(argv[i], "--link-bw")) link_bw = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
    else goto usage;
  }
  if (steps < 1 || batch < 1 || rounds < 1 || rounds > 64 || !(link_bw > 0)) goto usage;
  if (!strcmp(argv[1], "ratio")) return cmd_ratio(steps, batch, save_dir);
  if (!strcmp(argv[1], "link") && file) return cmd_link(file, dtype, link_bw, rounds);
usage:
  fprintf(stderr, "usage: bench_comm_zip ratio [--steps N] [--batch B] [--save DIR]\n"
                  "       bench_comm_zip link --file F [--dtype bf16|f32] [--link-bw BYTES/S] [--rounds R]\n");
  return 2;
}
