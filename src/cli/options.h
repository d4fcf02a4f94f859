/* The one option parser of the `hetmix` commands: each command declares a table of options
 * (long name, short name, kind, destination, range, help) and gets strict parsing, clear errors
 * and a --help generated from the same table.
 *
 * Accepted forms: `--name value`, `--name=value`, `-x value`, `-xvalue`; flags take no value.
 * Numbers are read whole (strtoll/strtoull/strtod: every character consumed, no overflow, no
 * NaN or infinity) and checked against [min, max]. Errors print `hetmix: error: ...` and the
 * hint "see `hetmix <command> --help`", and the parse returns exit status 2 (usage error). */
#ifndef HETMIX_CLI_OPTIONS_H
#define HETMIX_CLI_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

typedef enum hm_opt_kind {
  HM_OPT_END = 0,  /* terminates a table */
  HM_OPT_SECTION,  /* a heading in --help ("training:"), no option */
  HM_OPT_FLAG,     /* no value: *(int *)dest = 1 */
  HM_OPT_INT,      /* int in [min, max] */
  HM_OPT_INT64,    /* int64_t in [min, max] */
  HM_OPT_U64,      /* uint64_t in [min, max] (a leading '-' is refused) */
  HM_OPT_FLOAT,    /* float in [min, max] */
  HM_OPT_DOUBLE,   /* double in [min, max] */
  HM_OPT_SIZE,     /* size_t bytes in [min, max]; suffix K, M or G (powers of 1024), optional B */
  HM_OPT_STRING,   /* const char *: the argument itself */
  HM_OPT_CHOICE,   /* const char *: one of `choices` */
  HM_OPT_INT_LIST, /* comma-separated ints, each in [min, max]: int dest[cap], *count */
} hm_opt_kind;

typedef struct hm_opt {
  hm_opt_kind kind;
  const char *name;           /* long name without "--" (SECTION: the heading) */
  char short_name;            /* 'o' for -o; 0: none */
  void *dest;
  double min, max;            /* numbers and list elements: inclusive range */
  const char *metavar;        /* "N", "FILE" in --help; NULL: from the kind */
  const char *help;           /* may hold '\n' for more lines */
  const char *const *choices; /* CHOICE: NULL-terminated */
  int *count;                 /* INT_LIST: number of values read */
  int cap;                    /* INT_LIST: capacity of dest */
  int *seen;                  /* optional: set to 1 when the option is given */
} hm_opt;

typedef struct hm_opt_spec {
  const char *command;  /* "train", "bench comm": in the hint "see `hetmix <command> --help`" */
  const char *usage;    /* printed after "usage: "; may hold several lines */
  const char *about;    /* paragraph between usage and options; may be NULL */
  const hm_opt *opts;   /* ends with an HM_OPT_END entry */
  const char *footer;   /* after the options; may be NULL */
  int max_positional;   /* words that are not options, collected in order; more is an error */
  int stop_at_dashdash; /* "--" ends the options; the words after it are left to the caller */
} hm_opt_spec;

typedef struct hm_opt_result {
  char **pos;  /* caller's array of max_positional entries (may be NULL when none allowed) */
  int npos;    /* positional words found */
  int rest;    /* index of the first word after "--" (argc when none) */
} hm_opt_result;

/* Table entries (every field set, so -Wmissing-field-initializers stays quiet). */
#define HM_OPT_ROW(kind, name, sh, dest, lo, hi, mv, help) {kind, name, sh, dest, lo, hi, mv, help, NULL, NULL, 0, NULL}
#define HM_OPT_ROW_SEEN(kind, name, sh, dest, lo, hi, mv, help, seen) \
  {kind, name, sh, dest, lo, hi, mv, help, NULL, NULL, 0, seen}
#define HM_OPT_FLAG_ROW(name, sh, dest, help) HM_OPT_ROW(HM_OPT_FLAG, name, sh, dest, 0, 0, NULL, help)
#define HM_OPT_STR_ROW(name, sh, dest, mv, help) HM_OPT_ROW(HM_OPT_STRING, name, sh, dest, 0, 0, mv, help)
#define HM_OPT_CHOICE_ROW(name, sh, dest, choices, help) \
  {HM_OPT_CHOICE, name, sh, dest, 0, 0, NULL, help, choices, NULL, 0, NULL}
#define HM_OPT_LIST_ROW(name, sh, dest, cap, count, lo, hi, mv, help) \
  {HM_OPT_INT_LIST, name, sh, dest, lo, hi, mv, help, NULL, count, cap, NULL}
#define HM_OPT_SECTION_ROW(title) HM_OPT_ROW(HM_OPT_SECTION, title, 0, NULL, 0, 0, NULL, NULL)
#define HM_OPT_END_ROW HM_OPT_ROW(HM_OPT_END, NULL, 0, NULL, 0, 0, NULL, NULL)
/* Largest uint64_t as a range end (rounds up to 2^64 as a double: every value passes). */
#define HM_OPT_U64_MAX 18446744073709551615.0

enum { HM_OPTS_CONTINUE = -1, HM_OPTS_USAGE_ERROR = 2 };

/* Parses argv[1..argc-1] into the table's destinations. Returns HM_OPTS_CONTINUE when the
 * command should run, 0 after printing --help (-h), or HM_OPTS_USAGE_ERROR after printing the
 * error. Destinations of options not given are left as they are (the defaults). */
int hm_opts_parse(const hm_opt_spec *spec, int argc, char **argv, hm_opt_result *res);

/* Writes the --help text generated from the table. */
void hm_opts_help(const hm_opt_spec *spec, FILE *f);

/* Reports a bad value for an option the table takes as a string and the command reads itself
 * (`--datatype f33`): `hetmix: error: --<name>: "<value>" <why>` and the hint. Returns
 * HM_OPTS_USAGE_ERROR. */
int hm_opts_bad_value(const hm_opt_spec *spec, const char *name, const char *value, const char *why);

#endif
