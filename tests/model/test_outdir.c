/* What a training run writes under --out cannot be redirected: a symbolic link planted (by
 * another user) at a checkpoint's path or at the temporary name of an atomic write never makes
 * the run write to the link's target, and one (or a hard link) at metrics.jsonl is refused; leftovers of killed writes are removed at
 * the next start (only regular files with the temporary-name pattern); `keep` prunes the old
 * checkpoints; an output folder reached through another user's symlink, or owned by another
 * user, is refused. Local files only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "hetmix/model.h"

static char tmpdir[256], tokpath[512], victim[512];
static const char victim_text[] = "the victim's own content\n";

static void base_options(hm_train_options *o, const char *out) {
  hm_train_defaults(o);
  assert_int_equal(hm_model_config_lookup("tiny", &o->config), HM_OK);
  o->device = "cpu:threads=1";
  o->data = tokpath;
  o->batch = 2;
  o->steps = 2;
  o->warmup = 1;
  o->seed = 7;
  o->out_dir = out;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
}

static void assert_victim_intact(void) {
  char buf[256] = "";
  FILE *f = fopen(victim, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if (strcmp(buf, victim_text) != 0) fail_msg("the symlink's target %s was written: '%.60s'", victim, buf);
}

static int is_regular(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static void fresh_out(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", tmpdir, name);
  assert_int_equal(mkdir(out, 0755), 0);
  write_file(victim, victim_text);
}

/* Links at the last checkpoint's path, at `latest` and at the temporary names the old writer
 * predicted ("<path>.tmp.<pid>"): the run's renames replace the links, the temporaries are new
 * files with other names. */
static void test_planted_symlinks_are_not_followed(void **state) {
  (void)state;
  char out[600], p[800];
  fresh_out(out, sizeof out, "planted");
  const char *names[] = {"ckpt-00000002.hmc", "latest", "metrics.jsonl"};
  for (size_t i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s.tmp.%ld", out, names[i], (long)getpid());
    assert_int_equal(symlink(victim, p), 0);
    if (i == 2) continue; /* metrics.jsonl itself: the next test */
    snprintf(p, sizeof p, "%s/%s", out, names[i]);
    assert_int_equal(symlink(victim, p), 0);
  }
  hm_train_options o;
  base_options(&o, out);
  hm_train_result r;
  assert_int_equal(hm_train_run(&o, &r), HM_OK);
  assert_victim_intact();
  for (size_t i = 0; i < 3; i++) { /* the run's own regular files */
    snprintf(p, sizeof p, "%s/%s", out, names[i]);
    if (!is_regular(p)) fail_msg("%s is not the run's regular file", p);
  }
  hm_ckpt ck;
  assert_int_equal(hm_ckpt_read(r.last_checkpoint, &ck), HM_OK);
  assert_int_equal(ck.meta.step, 2);
  hm_ckpt_free(&ck);
}

/* metrics.jsonl is written in place: a symlink or a hard link there is refused, naming it, on
 * a fresh run and on a resume (which appends); the target is untouched. */
static void test_linked_metrics_file_is_refused(void **state) {
  (void)state;
  char out[600], p[800];
  fresh_out(out, sizeof out, "metrics");
  snprintf(p, sizeof p, "%s/metrics.jsonl", out);
  assert_int_equal(symlink(victim, p), 0);
  hm_train_options o;
  base_options(&o, out);
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "metrics.jsonl is a symbolic link")) fail_msg("unexpected error: %s", hm_last_error());
  assert_victim_intact();
  assert_int_equal(unlink(p), 0);
  assert_int_equal(link(victim, p), 0);
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "one link")) fail_msg("unexpected error: %s", hm_last_error());
  assert_victim_intact();
  /* a resume appends: the same refusal */
  assert_int_equal(unlink(p), 0);
  assert_int_equal(hm_train_run(&o, NULL), HM_OK);
  assert_int_equal(unlink(p), 0);
  assert_int_equal(symlink(victim, p), 0);
  base_options(&o, out);
  o.steps = 4;
  o.resume = out;
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "metrics.jsonl is a symbolic link")) fail_msg("unexpected error: %s", hm_last_error());
  assert_victim_intact();
}

/* Leftovers of killed atomic writes go at the next start; only regular files named like the
 * writer's temporary files. */
static void test_leftover_temporaries_are_removed(void **state) {
  (void)state;
  char out[600], p[800];
  fresh_out(out, sizeof out, "leftovers");
  const char *gone[] = {"x.tmp.123", "ckpt-00000001.hmc.tmp.Ab3dE9xYz0Qq"};
  const char *kept[] = {"notes.tmp.txt.bak", "x.tmp.", "run.tmp"};
  for (size_t i = 0; i < 2; i++) snprintf(p, sizeof p, "%s/%s", out, gone[i]), write_file(p, "partial");
  for (size_t i = 0; i < 3; i++) snprintf(p, sizeof p, "%s/%s", out, kept[i]), write_file(p, "mine");
  snprintf(p, sizeof p, "%s/link.tmp.456", out);
  assert_int_equal(symlink(victim, p), 0);
  snprintf(p, sizeof p, "%s/dir.tmp.789", out);
  assert_int_equal(mkdir(p, 0755), 0);
  hm_train_options o;
  base_options(&o, out);
  assert_int_equal(hm_train_run(&o, NULL), HM_OK);
  for (size_t i = 0; i < 2; i++) {
    snprintf(p, sizeof p, "%s/%s", out, gone[i]);
    if (access(p, F_OK) == 0) fail_msg("the leftover %s is still there", p);
  }
  for (size_t i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", out, kept[i]);
    if (!is_regular(p)) fail_msg("%s was removed", p);
  }
  struct stat sb;
  snprintf(p, sizeof p, "%s/link.tmp.456", out);
  assert_int_equal(lstat(p, &sb), 0);
  assert_true(S_ISLNK(sb.st_mode));
  snprintf(p, sizeof p, "%s/dir.tmp.789", out);
  assert_int_equal(lstat(p, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  assert_victim_intact();
}

static int count_checkpoints(const char *out, int *newest) {
  int n = 0;
  *newest = 0;
  for (int s = 1; s <= 20; s++) {
    char p[800];
    snprintf(p, sizeof p, "%s/ckpt-%08d.hmc", out, s);
    if (access(p, F_OK) == 0) n++, *newest = s;
  }
  return n;
}

/* keep K: after every checkpoint only the newest K stay; keep 0 keeps all. */
static void test_keep_prunes_old_checkpoints(void **state) {
  (void)state;
  char out[600], all[600];
  fresh_out(out, sizeof out, "keep2");
  hm_train_options o;
  base_options(&o, out);
  o.steps = 5;
  o.ckpt_every = 1;
  o.keep = 2;
  hm_train_result r;
  assert_int_equal(hm_train_run(&o, &r), HM_OK);
  int newest = 0;
  assert_int_equal(count_checkpoints(out, &newest), 2);
  assert_int_equal(newest, 5);
  char p[800];
  snprintf(p, sizeof p, "%s/ckpt-00000004.hmc", out);
  assert_int_equal(access(p, F_OK), 0);
  hm_train_defaults(&o);
  assert_int_equal(o.keep, 3); /* the documented default */
  fresh_out(all, sizeof all, "keep0");
  base_options(&o, all);
  o.steps = 5;
  o.ckpt_every = 1;
  o.keep = 0;
  assert_int_equal(hm_train_run(&o, NULL), HM_OK);
  assert_int_equal(count_checkpoints(all, &newest), 5);
}

/* --out a/b/c creates the missing parents (one mkdir -p for every command); a file where a
 * folder should be is an error naming it. */
static void test_out_folder_parents_are_created(void **state) {
  (void)state;
  char out[600], p[800];
  snprintf(out, sizeof out, "%s/nested/deeper/run", tmpdir);
  hm_train_options o;
  base_options(&o, out);
  hm_train_result r;
  if (hm_train_run(&o, &r) != HM_OK) fail_msg("%s", hm_last_error());
  snprintf(p, sizeof p, "%s/latest", out);
  assert_true(is_regular(p));
  snprintf(p, sizeof p, "%s/blocker", tmpdir);
  write_file(p, "a file, not a folder");
  snprintf(out, sizeof out, "%s/blocker/run", tmpdir);
  base_options(&o, out);
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "blocker exists and is not a folder")) fail_msg("unexpected error: %s", hm_last_error());
}

/* An output folder behind another user's symlink, or owned by another user, is refused. Needs
 * root to make files of another user: its own CTest entry, skipped (77) otherwise. */
static void test_foreign_output_folder_is_refused(void **state) {
  (void)state;
  char real[600], link[600];
  snprintf(real, sizeof real, "%s/foreign-target", tmpdir);
  snprintf(link, sizeof link, "%s/foreign-link", tmpdir);
  assert_int_equal(mkdir(real, 0755), 0);
  assert_int_equal(symlink(real, link), 0);
  assert_int_equal(lchown(link, 4242, 4242), 0);
  hm_train_options o;
  base_options(&o, link);
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "symbolic link of another user")) fail_msg("unexpected error: %s", hm_last_error());
  assert_int_equal(chown(real, 4242, 4242), 0);
  base_options(&o, real);
  assert_int_equal(hm_train_run(&o, NULL), HM_ERR_IO);
  if (!strstr(hm_last_error(), "belongs to another user")) fail_msg("unexpected error: %s", hm_last_error());
}

int main(int argc, char **argv) {
  const int foreign = argc > 1 && strcmp(argv[1], "foreign") == 0;
  if (foreign && geteuid() != 0) {
    printf("skipped: making files of another user needs root\n");
    return 77;
  }
  snprintf(tmpdir, sizeof tmpdir, "%s/test_outdir.XXXXXX", HM_BINARY_DIR);
  if (!mkdtemp(tmpdir)) return 1;
  snprintf(victim, sizeof victim, "%s/victim.txt", tmpdir);
  enum { NTOK = 8000 };
  static uint8_t tok[NTOK];
  for (int i = 0; i < NTOK; i++) tok[i] = (uint8_t)(i % 9 == 0 ? ' ' : 'a' + hm_splitmix64((uint64_t)i) % 26);
  snprintf(tokpath, sizeof tokpath, "%s/corpus.tok", tmpdir);
  if (hm_tokfile_write(tokpath, tok, NTOK, HM_TOKEN_U8, 256) != HM_OK) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_planted_symlinks_are_not_followed),
      cmocka_unit_test(test_linked_metrics_file_is_refused),
      cmocka_unit_test(test_leftover_temporaries_are_removed),
      cmocka_unit_test(test_keep_prunes_old_checkpoints),
      cmocka_unit_test(test_out_folder_parents_are_created),
  };
  const struct CMUnitTest root_tests[] = {cmocka_unit_test(test_foreign_output_folder_is_refused)};
  int rc = foreign ? cmocka_run_group_tests(root_tests, NULL, NULL) : cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) rc = rc ? rc : 1;
  return rc;
}
