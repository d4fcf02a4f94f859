/* Run bookkeeping shared by the trainers (runbook.h): corpus, data loader, evaluation
 * schedule, metrics.jsonl. */
#include "model/runbook.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/files.h"
#include "util/util.h"

/* On failure nothing stays open. */
hm_status hm_run_open_data(const hm_train_options *t, int B, int T, hm_tokfile *tf, hm_dataloader *dl) {
  char corpus[4200];
  const char *data = t->data;
  if (!data) {
    HM_TRY(hm_default_corpus(t->data_dir ? t->data_dir : "data", corpus, sizeof corpus));
    data = corpus;
  }
  HM_TRY(hm_tokfile_open(data, tf));
  hm_status st = tf->vocab > (uint32_t)t->config.V
                     ? hm_error(HM_ERR_INVALID_ARG, "token file %s has vocabulary %u, larger than the model's V=%d", data,
                                tf->vocab, (int)t->config.V)
                     : hm_dataloader_init(dl, tf, B, T, t->seed, t->val_fraction);
  if (st != HM_OK) hm_tokfile_close(tf);
  return st;
}

hm_status hm_run_open_metrics(const hm_train_options *t, const char *path, FILE **out) {
  *out = NULL;
  char own[4200];
  if (!path && t->out_dir) {
    HM_TRY(hm_make_dirs(t->out_dir, 0755, HM_DIR_OUTPUT));
    HM_TRY(hm_clean_tmp_files(t->out_dir, NULL));
    snprintf(own, sizeof own, "%s/metrics.jsonl", t->out_dir);
    path = own;
  }
  if (!path) return HM_OK;
  return hm_file_open_write(path, 0644, t->resume != NULL, out);
}

int hm_run_eval_due(const hm_train_options *t, int step, int last) {
  return t->eval_every > 0 && (step % t->eval_every == 0 || step == last);
}

hm_status hm_run_eval_batches(const hm_train_options *t, const hm_dataloader *dl, int *n) {
  const uint64_t want = t->eval_batches > 0 ? (uint64_t)t->eval_batches : 1;
  const uint64_t have = dl->n_val_batches < want ? dl->n_val_batches : want;
  *n = (int)have;
  if (have == 0)
    return hm_error(HM_ERR_INVALID_ARG,
                    "validation split is smaller than one batch; lower --batch or raise the validation fraction");
  return HM_OK;
}

hm_status hm_run_metrics_line(FILE *f, cJSON *obj) {
  char *s = cJSON_PrintUnformatted(obj);
  cJSON_Delete(obj);
  if (!s) return hm_error(HM_ERR_NOMEM, "metrics line");
  int bad = fprintf(f, "%s\n", s) < 0 || fflush(f) != 0;
  free(s);
  return bad ? hm_error(HM_ERR_IO, "writing metrics: %s", strerror(errno)) : HM_OK;
}
