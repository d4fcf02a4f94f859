/* The bookkeeping every trainer of a run does the same way (runbook.c): the corpus and its data
 * loader, the metrics.jsonl file of the run folder and its lines. Used by the single-process
 * trainer (train.c) and the pipeline workers (src/runtime/pipeline.c); their checkpoints go
 * through the checkpoint module (checkpoint.c, ckpt_shard.c, ckpt_manifest.c, ckpt_keep.c).
 * Not a public header. */
#ifndef HETMIX_MODEL_RUNBOOK_H
#define HETMIX_MODEL_RUNBOOK_H

#include <stdio.h>

#include "hetmix/model.h"

struct cJSON;

/* Opens the run's token file (t->data, else the default corpus under t->data_dir), checks its
 * vocabulary against the model and starts the loader of B x T batches with the run's seed and
 * validation share. tf must stay open while dl is used (hm_tokfile_close). */
hm_status hm_run_open_data(const hm_train_options *t, int B, int T, hm_tokfile *tf, hm_dataloader *dl);

/* The run's metrics file: `path` when given, else <t->out_dir>/metrics.jsonl (the folder made
 * and cleared of killed writes' leftovers), else none (*out = NULL). A resume appends. */
hm_status hm_run_open_metrics(const hm_train_options *t, const char *path, FILE **out);

/* Whether step (1-based, just taken) is evaluated: every t->eval_every steps and at the last
 * step of this run (`last`), never when eval_every is 0. */
int hm_run_eval_due(const hm_train_options *t, int step, int last);
/* Validation batches per evaluation: min(t->eval_batches, the split's batches); an error when
 * the validation split holds no batch. */
hm_status hm_run_eval_batches(const hm_train_options *t, const hm_dataloader *dl, int *n);

/* Writes obj as one JSON line and flushes; frees obj. */
hm_status hm_run_metrics_line(FILE *f, struct cJSON *obj);

#endif
