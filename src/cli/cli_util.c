/* Error printing shared by the subcommands, and running this executable as a child. */
#include <stdarg.h>
#include <stdio.h>

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
