/* Error printing shared by the subcommands. */
#include <stdarg.h>
#include <stdio.h>

#include "cli.h"

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
