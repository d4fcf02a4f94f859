/* Error printing shared by the subcommands, and running this executable as a child. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "hetmix/runtime.h"
#include "runtime/cluster_run.h"

int hm_cli_fail(const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("hetmix: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (hint) fprintf(stderr, "hint: %s\n", hint);
  return 1;
}

int hm_cli_fail_status(hm_status st, const char *what, const char *hint) {
  const char *msg = hm_last_error();
  return hm_cli_fail(hint, "%s: %s", what, msg[0] ? msg : hm_status_name(st));
}

hm_status hm_cli_run_self(const char *self, char *const *args, const char *what) {
  return hm_run_self(self, args, what);
}

int hm_cli_parse_precision(const char *name, hm_precision *out) {
  if (strcmp(name, hm_precision_name(HM_PREC_FP32)) == 0) *out = HM_PREC_FP32;
  else if (strcmp(name, hm_precision_name(HM_PREC_BF16_MIXED)) == 0) *out = HM_PREC_BF16_MIXED;
  else {
    hm_cli_fail("give --precision fp32 or --precision bf16-mixed (fp16-mixed is planned only, not trained)",
                "--precision %s: not a training precision of this trainer", name);
    return 2;
  }
  return 0;
}
