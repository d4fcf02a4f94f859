/* The option-table parser of every `hetmix` command (options.h): strict values, errors with a
 * hint, "did you mean" for unknown options, and --help generated from the table. */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plan/spec_json.h" /* hm_json_edit_distance, hm_json_is_close: the specs' "did you mean" */

static int usage_error(const hm_opt_spec *spec, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static int usage_error(const hm_opt_spec *spec, const char *fmt, ...) {
  char msg[1024], hint[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(hint, sizeof hint, "see `hetmix %s --help`", spec->command);
  hm_cli_fail(hint, "%s", msg);
  return HM_OPTS_USAGE_ERROR;
}

int hm_opts_bad_value(const hm_opt_spec *spec, const char *name, const char *value, const char *why) {
  return usage_error(spec, "--%s: \"%s\" %s", name, value, why);
}

/* ---------------------------------------------------------------- numbers */

static int is_integer_kind(hm_opt_kind k) { return k == HM_OPT_INT || k == HM_OPT_INT64 || k == HM_OPT_U64 || k == HM_OPT_INT_LIST || k == HM_OPT_SIZE; }

/* A range end as the user should read it: integers in full, huge ones as the type's limit. */
static void fmt_bound(char *buf, size_t cap, double v, hm_opt_kind k) {
  if (!is_integer_kind(k)) snprintf(buf, cap, "%g", v);
  else if (v >= 18446744073709551615.0) snprintf(buf, cap, "%llu", (unsigned long long)UINT64_MAX);
  else if (v >= 9223372036854775807.0) snprintf(buf, cap, "%lld", (long long)INT64_MAX);
  else snprintf(buf, cap, "%.0f", v);
}

/* `"v" is out of range LO..HI`; for a float whose only real limit is the low end (an upper end
 * near FLT_MAX guards the conversion), the end that was crossed. */
static int out_of_range(const hm_opt_spec *spec, const char *label, const char *value, const hm_opt *o, double v) {
  char lo[32], hi[32];
  fmt_bound(lo, sizeof lo, o->min, o->kind);
  fmt_bound(hi, sizeof hi, o->max, o->kind);
  if (!is_integer_kind(o->kind) && o->max >= 1e15)
    return usage_error(spec, "%s: \"%s\" is out of range (%s %s)", label, value, v < o->min ? "at least" : "at most",
                       v < o->min ? lo : hi);
  return usage_error(spec, "%s: \"%s\" is out of range %s..%s", label, value, lo, hi);
}

/* strtoll/strtoull/strtod accept leading blanks; an option value must not start with one. */
static int starts_like_number(const char *s) { return s[0] && !isspace((unsigned char)s[0]); }

/* 0: *out read; 1: not an integer; 2: does not fit 64 bits. */
static int read_i64(const char *s, long long *out) {
  if (!starts_like_number(s)) return 1;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end) return 1;
  if (errno == ERANGE) return 2;
  *out = v;
  return 0;
}

static int read_u64(const char *s, unsigned long long *out) {
  if (!starts_like_number(s)) return 1;
  const char *p = s[0] == '+' ? s + 1 : s;
  if (s[0] == '-' && isdigit((unsigned char)s[1])) { /* strtoull would wrap "-1" around */
    for (p = s + 1; isdigit((unsigned char)*p); p++) {
    }
    return *p ? 1 : 2;
  }
  if (!isdigit((unsigned char)p[0])) return 1;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(p, &end, 10);
  if (*end) return 1;
  if (errno == ERANGE) return 2;
  *out = v;
  return 0;
}

/* 0: read; 1: not a number; 2: overflows or is not finite. */
static int read_double(const char *s, double *out) {
  if (!starts_like_number(s)) return 1;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end) return 1;
  if (!isfinite(v)) return isnan(v) ? 1 : 2;
  if (errno == ERANGE && fabs(v) > 1) return 2; /* underflow to a tiny value is fine */
  *out = v;
  return 0;
}

/* "64M", "8K", "1G", "4096", "1.5K", "8B": whole bytes. 0: read; 1: not a size; 2: too large. */
static int read_size(const char *s, double *out) {
  if (!starts_like_number(s) || s[0] == '-') return 1;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || !isfinite(v) || v < 0) return 1;
  double mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1024.0, end++;
  else if (*end == 'M' || *end == 'm') mult = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g') mult = 1024.0 * 1024 * 1024, end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end) return 1;
  v *= mult;
  if (v != floor(v)) return 1;
  if (v > 9007199254740992.0) return 2; /* 2^53: beyond it a double no longer counts bytes */
  *out = v;
  return 0;
}

static int read_number(const hm_opt_spec *spec, const hm_opt *o, const char *label, const char *v) {
  long long i = 0;
  unsigned long long u = 0;
  double d = 0;
  int r;
  const char *what = "is not an integer";
  switch (o->kind) {
    case HM_OPT_INT:
    case HM_OPT_INT64:
      r = read_i64(v, &i);
      d = (double)i;
      break;
    case HM_OPT_U64:
      r = read_u64(v, &u);
      d = (double)u;
      break;
    case HM_OPT_SIZE:
      r = read_size(v, &d);
      what = "is not a size (bytes, with an optional K, M or G suffix)";
      break;
    default:
      r = read_double(v, &d);
      what = "is not a number";
      break;
  }
  if (r == 1) return usage_error(spec, "%s: \"%s\" %s", label, v, what);
  if (r == 2) d = v[0] == '-' ? -HUGE_VAL : HUGE_VAL; /* beyond what the type holds */
  if (d < o->min || d > o->max) return out_of_range(spec, label, v, o, d);
  switch (o->kind) {
    case HM_OPT_INT: *(int *)o->dest = (int)i; break;
    case HM_OPT_INT64: *(int64_t *)o->dest = (int64_t)i; break;
    case HM_OPT_U64: *(uint64_t *)o->dest = (uint64_t)u; break;
    case HM_OPT_SIZE: *(size_t *)o->dest = (size_t)d; break;
    case HM_OPT_FLOAT: *(float *)o->dest = (float)d; break;
    default: *(double *)o->dest = d; break;
  }
  return HM_OPTS_CONTINUE;
}

static int read_list(const hm_opt_spec *spec, const hm_opt *o, const char *label, const char *v) {
  int n = 0;
  const char *p = v;
  int *out = o->dest;
  do {
    char item[32];
    size_t len = strcspn(p, ",");
    long long x = 0;
    if (len >= sizeof item) len = sizeof item - 1;
    memcpy(item, p, len);
    item[len] = '\0';
    int r = read_i64(item, &x);
    if (r == 1) return usage_error(spec, "%s: \"%s\" is not a list of integers separated by commas", label, v);
    if (r == 2 || (double)x < o->min || (double)x > o->max) {
      char lo[32], hi[32];
      fmt_bound(lo, sizeof lo, o->min, o->kind);
      fmt_bound(hi, sizeof hi, o->max, o->kind);
      return usage_error(spec, "%s: %s in \"%s\" is out of range %s..%s", label, item, v, lo, hi);
    }
    if (n == o->cap) return usage_error(spec, "%s: \"%s\" has more than %d values", label, v, o->cap);
    out[n++] = (int)x;
    p += strcspn(p, ",");
  } while (*p++ == ',');
  *o->count = n;
  return HM_OPTS_CONTINUE;
}

static int read_choice(const hm_opt_spec *spec, const hm_opt *o, const char *label, const char *v) {
  char list[256] = "";
  size_t n = 0;
  for (int i = 0; o->choices[i]; i++) {
    if (strcmp(v, o->choices[i]) == 0) {
      *(const char **)o->dest = o->choices[i];
      return HM_OPTS_CONTINUE;
    }
    n += (size_t)snprintf(list + n, n < sizeof list ? sizeof list - n : 0, "%s%s", i ? ", " : "", o->choices[i]);
    if (n >= sizeof list) n = sizeof list - 1;
  }
  return usage_error(spec, "%s: \"%s\" is not one of %s", label, v, list);
}

static int read_value(const hm_opt_spec *spec, const hm_opt *o, const char *label, const char *v) {
  switch (o->kind) {
    case HM_OPT_STRING: *(const char **)o->dest = v; return HM_OPTS_CONTINUE;
    case HM_OPT_CHOICE: return read_choice(spec, o, label, v);
    case HM_OPT_INT_LIST: return read_list(spec, o, label, v);
    default: return read_number(spec, o, label, v);
  }
}

/* ---------------------------------------------------------------- words */

static int is_option(const hm_opt *o) { return o->kind != HM_OPT_END && o->kind != HM_OPT_SECTION; }

static const hm_opt *find_long(const hm_opt_spec *spec, const char *name, size_t len) {
  for (const hm_opt *o = spec->opts; o->kind != HM_OPT_END; o++)
    if (is_option(o) && strlen(o->name) == len && strncmp(o->name, name, len) == 0) return o;
  return NULL;
}

static const hm_opt *find_short(const hm_opt_spec *spec, char c) {
  for (const hm_opt *o = spec->opts; o->kind != HM_OPT_END; o++)
    if (is_option(o) && o->short_name == c) return o;
  return NULL;
}

static int unknown_option(const hm_opt_spec *spec, const char *word, const char *name, size_t len) {
  char typed[64];
  snprintf(typed, sizeof typed, "%.*s", (int)(len < 63 ? len : 63), name);
  const char *best = NULL;
  int bestd = 1 << 30;
  for (const hm_opt *o = spec->opts; o->kind != HM_OPT_END; o++) {
    if (!is_option(o)) continue;
    int d = hm_json_edit_distance(typed, o->name);
    if (d < bestd) bestd = d, best = o->name;
  }
  if (len > 1 && best && hm_json_is_close(typed, best, bestd))
    return usage_error(spec, "unknown option '%s' (did you mean '--%s'?)", word, best);
  return usage_error(spec, "unknown option '%s'", word);
}

/* One option word at argv[*i] (its value may be the next word). */
static int parse_option(const hm_opt_spec *spec, int argc, char **argv, int *i) {
  const char *w = argv[*i], *inline_val = NULL;
  const hm_opt *o;
  char label[80];
  if (w[1] == '-') {
    const char *name = w + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    if (len == 4 && strncmp(name, "help", 4) == 0 && !eq) return 0;
    if (!(o = find_long(spec, name, len))) return unknown_option(spec, w, name, len);
    if (eq) inline_val = eq + 1;
    snprintf(label, sizeof label, "--%s", o->name);
  } else {
    if (w[1] == 'h' && !w[2] && !find_short(spec, 'h')) return 0;
    if (!(o = find_short(spec, w[1]))) return unknown_option(spec, w, w + 1, strlen(w + 1));
    if (w[2]) inline_val = w[2] == '=' ? w + 3 : w + 2;
    snprintf(label, sizeof label, "-%c (--%s)", o->short_name, o->name);
  }
  if (o->seen) *o->seen = 1;
  if (o->kind == HM_OPT_FLAG) {
    if (inline_val) return usage_error(spec, "%s takes no value, got '%s'", label, w);
    *(int *)o->dest = 1;
    return HM_OPTS_CONTINUE;
  }
  if (!inline_val) {
    if (*i + 1 >= argc) return usage_error(spec, "%s needs a value", label);
    inline_val = argv[++*i];
  }
  return read_value(spec, o, label, inline_val);
}

int hm_opts_parse(const hm_opt_spec *spec, int argc, char **argv, hm_opt_result *res) {
  res->npos = 0;
  res->rest = argc;
  int only_words = 0;
  for (int i = 1; i < argc; i++) {
    const char *w = argv[i];
    if (!only_words && strcmp(w, "--") == 0) {
      if (spec->stop_at_dashdash) {
        res->rest = i + 1;
        return HM_OPTS_CONTINUE;
      }
      only_words = 1;
      continue;
    }
    if (only_words || w[0] != '-' || !w[1]) {
      if (res->npos >= spec->max_positional)
        return spec->max_positional ? usage_error(spec, "too many arguments: '%s'", w)
                                    : usage_error(spec, "unexpected argument '%s'", w);
      res->pos[res->npos++] = argv[i];
      continue;
    }
    int rc = parse_option(spec, argc, argv, &i);
    if (rc == 0) {
      hm_opts_help(spec, stdout);
      return 0;
    }
    if (rc != HM_OPTS_CONTINUE) return rc;
  }
  return HM_OPTS_CONTINUE;
}

/* ---------------------------------------------------------------- --help */

static void metavar(const hm_opt *o, char *buf, size_t cap) {
  if (o->metavar) {
    snprintf(buf, cap, "%s", o->metavar);
    return;
  }
  switch (o->kind) {
    case HM_OPT_FLAG: buf[0] = '\0'; break;
    case HM_OPT_INT:
    case HM_OPT_INT64:
    case HM_OPT_U64: snprintf(buf, cap, "N"); break;
    case HM_OPT_SIZE: snprintf(buf, cap, "SIZE"); break;
    case HM_OPT_INT_LIST: snprintf(buf, cap, "N,N,..."); break;
    case HM_OPT_CHOICE: {
      size_t n = 0;
      buf[0] = '\0';
      for (int i = 0; o->choices[i] && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? "|" : "", o->choices[i]);
      break;
    }
    case HM_OPT_STRING: snprintf(buf, cap, "VALUE"); break;
    default: snprintf(buf, cap, "X"); break;
  }
}

enum { HELP_COL = 26 };

static void help_line(FILE *f, char short_name, const char *name, const char *mv, const char *help) {
  char left[128];
  if (short_name) snprintf(left, sizeof left, "  -%c, --%s%s%s", short_name, name, mv[0] ? " " : "", mv);
  else snprintf(left, sizeof left, "      --%s%s%s", name, mv[0] ? " " : "", mv);
  fputs(left, f);
  int col = (int)strlen(left);
  if (col >= HELP_COL - 1) {
    fputc('\n', f);
    col = 0;
  }
  const char *p = help ? help : "";
  do {
    size_t len = strcspn(p, "\n");
    fprintf(f, "%*s%.*s\n", HELP_COL - col, "", (int)len, p);
    col = 0;
    p += len;
  } while (*p++ == '\n');
}

void hm_opts_help(const hm_opt_spec *spec, FILE *f) {
  fprintf(f, "usage: %s\n", spec->usage);
  if (spec->about) fprintf(f, "\n%s\n", spec->about);
  if (spec->opts[0].kind != HM_OPT_SECTION) fprintf(f, "\noptions:\n");
  for (const hm_opt *o = spec->opts; o->kind != HM_OPT_END; o++) {
    if (o->kind == HM_OPT_SECTION) {
      fprintf(f, "\n%s\n", o->name);
      continue;
    }
    char mv[128];
    metavar(o, mv, sizeof mv);
    help_line(f, o->short_name, o->name, mv, o->help);
  }
  help_line(f, find_short(spec, 'h') ? 0 : 'h', "help", "", "this text");
  if (spec->footer) fprintf(f, "\n%s\n", spec->footer);
}
