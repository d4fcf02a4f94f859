/* The option-table parser of the `hetmix` commands (src/cli/options.c): strict numbers (whole
 * string consumed, 64-bit overflow, range), sizes with suffixes, both `--opt value` and
 * `--opt=value` forms and the short forms, missing values, flags given a value, unknown options
 * with "did you mean", choices, lists, positional words, "--", and --help from the table.
 * Each case checks the exit status, the destination and the exact error text on stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/options.h"

typedef struct fixture {
  int steps, flag, nlist, list[4];
  int64_t big;
  uint64_t seed;
  double lr;
  size_t bytes;
  const char *out, *mode;
  int steps_seen;
} fixture;

static const char *const modes[] = {"shm", "tcp", NULL};

/* Parses words (NULL-terminated) with a table over f; stderr and stdout go to err and out. */
static int parse_words(fixture *f, char *err, size_t ecap, char *out, size_t ocap, hm_opt_result *res,
                       const char *first, ...) {
  const hm_opt opts[] = {
      HM_OPT_ROW_SEEN(HM_OPT_INT, "steps", 'n', &f->steps, 1, 1e9, "N", "optimizer steps [200]", &f->steps_seen),
      HM_OPT_ROW(HM_OPT_INT64, "big", 0, &f->big, -5, 1e12, "N", "a wide integer"),
      HM_OPT_ROW(HM_OPT_U64, "seed", 0, &f->seed, 0, HM_OPT_U64_MAX, "N", "a seed"),
      HM_OPT_ROW(HM_OPT_DOUBLE, "lr", 0, &f->lr, 0, 10, "X", "a rate"),
      HM_OPT_ROW(HM_OPT_SIZE, "minbytes", 'b', &f->bytes, 0, 1e12, "SIZE", "bytes"),
      HM_OPT_STR_ROW("out", 'o', &f->out, "DIR", "output folder\nsecond help line"),
      HM_OPT_CHOICE_ROW("transport", 't', &f->mode, modes, "which"),
      HM_OPT_LIST_ROW("micro", 0, f->list, 4, &f->nlist, 0, 100, "M0,M1", "counts"),
      HM_OPT_FLAG_ROW("rebalance", 0, &f->flag, "a flag"),
      HM_OPT_END_ROW};
  const hm_opt_spec spec = {"demo", "hetmix demo [options]", "About the demo.", opts, "Footer.", 2, 1};
  char *argv[32] = {"demo"};
  int argc = 1;
  va_list ap;
  va_start(ap, first);
  for (const char *w = first; w && argc < 31; w = va_arg(ap, const char *)) argv[argc++] = (char *)w;
  va_end(ap);
  argv[argc] = NULL;
  FILE *ef = tmpfile(), *of = tmpfile();
  assert_non_null(ef);
  assert_non_null(of);
  fflush(stdout);
  fflush(stderr);
  int save_err = dup(2), save_out = dup(1);
  dup2(fileno(ef), 2);
  dup2(fileno(of), 1);
  int rc = hm_opts_parse(&spec, argc, argv, res);
  fflush(stdout);
  fflush(stderr);
  dup2(save_err, 2);
  dup2(save_out, 1);
  close(save_err);
  close(save_out);
  rewind(ef);
  rewind(of);
  size_t n = fread(err, 1, ecap - 1, ef);
  err[n] = '\0';
  n = fread(out, 1, ocap - 1, of);
  out[n] = '\0';
  fclose(ef);
  fclose(of);
  return rc;
}

#define PARSE(f, ...) parse_words(f, err, sizeof err, out, sizeof out, &res, __VA_ARGS__, NULL)

static void fresh(fixture *f) {
  memset(f, 0, sizeof *f);
  f->steps = 200;
}

/* The error message and the hint, exactly. */
static void expect_error(int rc, const char *err, const char *msg) {
  char want[512];
  snprintf(want, sizeof want, "hetmix: error: %s\nhint: see `hetmix demo --help`\n", msg);
  assert_int_equal(rc, HM_OPTS_USAGE_ERROR);
  assert_string_equal(err, want);
}

static void test_strict_integers(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  fresh(&f);
  assert_int_equal(PARSE(&f, "--steps", "42"), HM_OPTS_CONTINUE);
  assert_int_equal(f.steps, 42);
  assert_true(f.steps_seen);
  assert_string_equal(err, "");
  /* atoi would read 2 (4294967298 mod 2^32) and 16: both refused, the value unchanged */
  fresh(&f);
  expect_error(PARSE(&f, "--steps", "4294967298"), err, "--steps: \"4294967298\" is out of range 1..1000000000");
  assert_int_equal(f.steps, 200);
  expect_error(PARSE(&f, "--steps", "16abc"), err, "--steps: \"16abc\" is not an integer");
  expect_error(PARSE(&f, "--steps", "99999999999999999999"), err,
               "--steps: \"99999999999999999999\" is out of range 1..1000000000");
  expect_error(PARSE(&f, "--steps", "0"), err, "--steps: \"0\" is out of range 1..1000000000");
  expect_error(PARSE(&f, "--steps", ""), err, "--steps: \"\" is not an integer");
  expect_error(PARSE(&f, "--steps", " 5"), err, "--steps: \" 5\" is not an integer");
  expect_error(PARSE(&f, "--steps", "0x10"), err, "--steps: \"0x10\" is not an integer");
  expect_error(PARSE(&f, "--steps", "1e3"), err, "--steps: \"1e3\" is not an integer");
  assert_int_equal(f.steps, 200);
  assert_int_equal(PARSE(&f, "--big", "-5"), HM_OPTS_CONTINUE);
  assert_int_equal(f.big, -5);
  assert_int_equal(PARSE(&f, "--big", "1000000000000"), HM_OPTS_CONTINUE);
  assert_int_equal(f.big, 1000000000000LL);
  expect_error(PARSE(&f, "--big", "-6"), err, "--big: \"-6\" is out of range -5..1000000000000");
  /* unsigned 64-bit: the whole range, no wrap-around of a minus sign */
  assert_int_equal(PARSE(&f, "--seed", "18446744073709551615"), HM_OPTS_CONTINUE);
  assert_true(f.seed == UINT64_MAX);
  expect_error(PARSE(&f, "--seed", "18446744073709551616"), err,
               "--seed: \"18446744073709551616\" is out of range 0..18446744073709551615");
  expect_error(PARSE(&f, "--seed", "-1"), err, "--seed: \"-1\" is out of range 0..18446744073709551615");
  assert_true(f.seed == UINT64_MAX);
}

static void test_numbers_and_sizes(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  fresh(&f);
  assert_int_equal(PARSE(&f, "--lr", "2.5e-3"), HM_OPTS_CONTINUE);
  assert_true(f.lr == 2.5e-3);
  expect_error(PARSE(&f, "--lr", "nan"), err, "--lr: \"nan\" is not a number");
  expect_error(PARSE(&f, "--lr", "inf"), err, "--lr: \"inf\" is out of range 0..10");
  expect_error(PARSE(&f, "--lr", "1e999"), err, "--lr: \"1e999\" is out of range 0..10");
  expect_error(PARSE(&f, "--lr", "1.5x"), err, "--lr: \"1.5x\" is not a number");
  expect_error(PARSE(&f, "--lr", "-0.1"), err, "--lr: \"-0.1\" is out of range 0..10");
  assert_true(f.lr == 2.5e-3);
  assert_int_equal(PARSE(&f, "-b", "64M"), HM_OPTS_CONTINUE);
  assert_int_equal(f.bytes, 64u << 20);
  assert_int_equal(PARSE(&f, "-b", "1.5K"), HM_OPTS_CONTINUE);
  assert_int_equal(f.bytes, 1536);
  assert_int_equal(PARSE(&f, "-b", "8B"), HM_OPTS_CONTINUE);
  assert_int_equal(f.bytes, 8);
  const char *not_size = "is not a size (bytes, with an optional K, M or G suffix)";
  char msg[256];
  snprintf(msg, sizeof msg, "-b (--minbytes): \"1X\" %s", not_size);
  expect_error(PARSE(&f, "-b", "1X"), err, msg);
  snprintf(msg, sizeof msg, "-b (--minbytes): \"0.3\" %s", not_size);
  expect_error(PARSE(&f, "-b", "0.3"), err, msg);
  expect_error(PARSE(&f, "-b", "2000G"), err, "-b (--minbytes): \"2000G\" is out of range 0..1000000000000");
  assert_int_equal(f.bytes, 8);
}

static void test_forms_and_missing_values(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  const char *forms[][2] = {{"--steps=7", NULL}, {"--steps", "7"}, {"-n7", NULL}, {"-n", "7"}, {"-n=7", NULL}};
  for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    fresh(&f);
    assert_int_equal(PARSE(&f, forms[i][0], forms[i][1]), HM_OPTS_CONTINUE);
    assert_int_equal(f.steps, 7);
  }
  fresh(&f);
  assert_int_equal(PARSE(&f, "--out=a=b", "-o", "c"), HM_OPTS_CONTINUE); /* the last one counts */
  assert_string_equal(f.out, "c");
  assert_int_equal(PARSE(&f, "--out=a=b"), HM_OPTS_CONTINUE); /* the value may hold '=' */
  assert_string_equal(f.out, "a=b");
  expect_error(PARSE(&f, "--steps"), err, "--steps needs a value");
  expect_error(PARSE(&f, "-n"), err, "-n (--steps) needs a value");
  expect_error(PARSE(&f, "--rebalance=1"), err, "--rebalance takes no value, got '--rebalance=1'");
  assert_int_equal(f.flag, 0);
  assert_int_equal(PARSE(&f, "--rebalance"), HM_OPTS_CONTINUE);
  assert_int_equal(f.flag, 1);
}

static void test_unknown_options(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  fresh(&f);
  expect_error(PARSE(&f, "--stpes", "3"), err, "unknown option '--stpes' (did you mean '--steps'?)");
  expect_error(PARSE(&f, "--rebalanse"), err, "unknown option '--rebalanse' (did you mean '--rebalance'?)");
  expect_error(PARSE(&f, "--minbyte=8"), err, "unknown option '--minbyte=8' (did you mean '--minbytes'?)");
  expect_error(PARSE(&f, "--zzzzzzzz"), err, "unknown option '--zzzzzzzz'");
  expect_error(PARSE(&f, "-x"), err, "unknown option '-x'");
  assert_int_equal(f.steps, 200);
}

static void test_choices_lists_words(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  fresh(&f);
  assert_int_equal(PARSE(&f, "-t", "tcp"), HM_OPTS_CONTINUE);
  assert_string_equal(f.mode, "tcp");
  expect_error(PARSE(&f, "--transport", "udp"), err, "--transport: \"udp\" is not one of shm, tcp");
  assert_int_equal(PARSE(&f, "--micro", "3,0,100"), HM_OPTS_CONTINUE);
  assert_int_equal(f.nlist, 3);
  assert_int_equal(f.list[0], 3);
  assert_int_equal(f.list[2], 100);
  expect_error(PARSE(&f, "--micro", "3,x"), err, "--micro: \"3,x\" is not a list of integers separated by commas");
  expect_error(PARSE(&f, "--micro", "3,"), err, "--micro: \"3,\" is not a list of integers separated by commas");
  expect_error(PARSE(&f, "--micro", "1,101"), err, "--micro: 101 in \"1,101\" is out of range 0..100");
  expect_error(PARSE(&f, "--micro", "1,2,3,4,5"), err, "--micro: \"1,2,3,4,5\" has more than 4 values");
  /* positional words (at most 2 here), and "--" ending the options */
  assert_int_equal(PARSE(&f, "a", "--steps", "3", "b", "--", "--steps", "9"), HM_OPTS_CONTINUE);
  assert_int_equal(res.npos, 2);
  assert_string_equal(pos[0], "a");
  assert_string_equal(pos[1], "b");
  assert_int_equal(res.rest, 6); /* argv[6] is the "--steps" after "--" */
  assert_int_equal(f.steps, 3);
  expect_error(PARSE(&f, "a", "b", "c"), err, "too many arguments: 'c'");
}

static void test_help_from_table(void **state) {
  (void)state;
  fixture f;
  char err[1024], out[4096], *pos[2];
  hm_opt_result res = {pos, 0, 0};
  fresh(&f);
  assert_int_equal(PARSE(&f, "--steps", "3", "--help", "--steps", "x"), 0);
  assert_string_equal(err, "");
  assert_non_null(strstr(out, "usage: hetmix demo [options]\n\nAbout the demo.\n\noptions:\n"));
  assert_non_null(strstr(out, "  -n, --steps N           optimizer steps [200]\n"));
  assert_non_null(strstr(out, "  -o, --out DIR           output folder\n                          second help line\n"));
  assert_non_null(strstr(out, "  -t, --transport shm|tcp\n                          which\n")); /* too wide */
  assert_non_null(strstr(out, "      --rebalance         a flag\n"));
  assert_non_null(strstr(out, "  -h, --help              this text\n\nFooter.\n"));
  assert_int_equal(PARSE(&f, "-h"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strict_integers),         cmocka_unit_test(test_numbers_and_sizes),
      cmocka_unit_test(test_forms_and_missing_values), cmocka_unit_test(test_unknown_options),
      cmocka_unit_test(test_choices_lists_words),      cmocka_unit_test(test_help_from_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
