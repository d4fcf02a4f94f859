/* Validating accessors over cJSON used by every spec reader (see spec_json.h). They turn
 * "wrong shape" into one message that names the field's path, what was expected and what was
 * found. They do not know any spec's schema: the readers list their fields. */
#include "plan/spec_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/files.h"
#include "util/util.h"

/* A path longer than the buffer (a hostile spec nests deeply) ends in "..." so a message
 * never names a shorter, different field as if it were the one at fault. */
static const char *path_mark_truncated(char *buf, int n) {
  if (n < 0 || n >= HM_JSON_PATH_MAX) memcpy(buf + HM_JSON_PATH_MAX - 4, "...", 4);
  return buf;
}

const char *hm_json_path_key(char *buf, const char *parent, const char *key) {
  return path_mark_truncated(buf, snprintf(buf, HM_JSON_PATH_MAX, "%s.%s", parent, key));
}

const char *hm_json_path_index(char *buf, const char *parent, long i) {
  return path_mark_truncated(buf, snprintf(buf, HM_JSON_PATH_MAX, "%s[%ld]", parent, i));
}

void hm_json_describe(const cJSON *v, char *buf, size_t cap) {
  if (!v) {
    snprintf(buf, cap, "nothing");
  } else if (cJSON_IsString(v)) {
    const char *s = v->valuestring ? v->valuestring : "";
    if (strlen(s) > 40)
      snprintf(buf, cap, "\"%.37s...\"", s);
    else
      snprintf(buf, cap, "\"%s\"", s);
  } else if (cJSON_IsNumber(v)) {
    snprintf(buf, cap, "%.17g", v->valuedouble);
  } else if (cJSON_IsBool(v)) {
    snprintf(buf, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
  } else if (cJSON_IsNull(v)) {
    snprintf(buf, cap, "null");
  } else if (cJSON_IsArray(v)) {
    snprintf(buf, cap, "an array");
  } else if (cJSON_IsObject(v)) {
    snprintf(buf, cap, "an object");
  } else {
    snprintf(buf, cap, "an invalid value");
  }
}

static hm_status type_error(const char *path, const char *expected, const cJSON *got) {
  char desc[64];
  hm_json_describe(got, desc, sizeof desc);
  return hm_error(HM_ERR_SPEC, "%s: expected %s, got %s", path, expected, desc);
}

static hm_status missing(const char *path, const char *expected) {
  return hm_error(HM_ERR_SPEC, "%s: missing (expected %s)", path, expected);
}

/* ---- U+0000 in strings ----------------------------------------------------------------
 * cJSON decodes "\u0000" into a NUL that ends its C string, so "c\u0000pu" would read as "c".
 * No spec string may hold U+0000: when the text has that escape inside a string, it is parsed
 * again with the escape replaced by a noncharacter the text does not use (same length, so
 * positions stay), and the first key or value holding it is named by its path. */

/* Finds the "\u0000" escapes inside strings of t: returns the first one's offset (len if none)
 * and, when w is not NULL (a copy of t), overwrites each escape's digits in w with hex. */
static size_t nul_escapes(const char *t, size_t len, char *w, const char *hex) {
  int in_string = 0;
  size_t first = len;
  for (size_t i = 0; i < len; i++) {
    if (t[i] == '"') {
      in_string = !in_string;
    } else if (in_string && t[i] == '\\' && i + 1 < len) {
      if (t[i + 1] == 'u' && i + 5 < len && memcmp(t + i + 2, "0000", 4) == 0) {
        if (first == len) first = i;
        if (w) memcpy(w + i + 2, hex, 4);
      }
      i++; /* the escaped character; the \u digits are plain characters */
    }
  }
  return first;
}

/* Whether text holds code point U+FDD0+k, raw (UTF-8) or as a \u escape of either case. */
static int uses_nonchar(const char *t, size_t len, int k) {
  const unsigned char utf8[3] = {0xEF, 0xB7, (unsigned char)(0x90 + k)};
  char lo[8], up[8];
  snprintf(lo, sizeof lo, "\\ufdd%x", k);
  snprintf(up, sizeof up, "\\uFDD%X", k);
  for (size_t i = 0; i + 3 <= len; i++) {
    if (memcmp(t + i, utf8, 3) == 0) return 1;
    if (i + 6 <= len && (strncasecmp(t + i, lo, 6) == 0 || strncasecmp(t + i, up, 6) == 0)) return 1;
  }
  return 0;
}

/* Renders s for a message with each marker shown as \u0000. */
static void show_marked(const char *s, const char *marker, char *buf, size_t cap) {
  size_t n = 0;
  const size_t ml = strlen(marker);
  for (; *s && n + 8 < cap; s++) {
    if (strncmp(s, marker, ml) == 0) {
      n += (size_t)snprintf(buf + n, cap - n, "\\u0000");
      s += ml - 1;
    } else {
      buf[n++] = *s;
    }
  }
  buf[n] = '\0';
}

static hm_status nul_error(const char *origin, const char *path, const char *what, const char *s,
                           const char *marker) {
  char shown[64];
  show_marked(s, marker, shown, sizeof shown);
  return hm_error(HM_ERR_SPEC, "%s%s%s: %s U+0000 (\"%s%s\"); a spec string cannot hold a NUL "
                  "character", origin ? origin : "", origin ? ": " : "", path, what, shown,
                  strlen(s) > 40 ? "..." : "");
}

/* First key or string value under v holding marker: HM_ERR_SPEC naming its path. */
static hm_status find_marked(const cJSON *v, const char *path, const char *marker,
                             const char *origin) {
  if (cJSON_IsString(v) && v->valuestring && strstr(v->valuestring, marker))
    return nul_error(origin, path, "contains", v->valuestring, marker);
  long i = 0;
  for (const cJSON *c = v->child; c; c = c->next, i++) {
    char p[HM_JSON_PATH_MAX];
    if (cJSON_IsObject(v)) {
      if (c->string && strstr(c->string, marker))
        return nul_error(origin, path, "a key contains", c->string, marker);
      hm_json_path_key(p, path, c->string ? c->string : "");
    } else {
      hm_json_path_index(p, path, i);
    }
    HM_TRY(find_marked(c, p, marker, origin));
  }
  return HM_OK;
}

/* text holds "\u0000" in a string: the error naming where. */
static hm_status nul_escape_error(const char *text, size_t len, const char *origin,
                                  const char *root) {
  int k = 0;
  while (k < 16 && uses_nonchar(text, len, k)) k++;
  if (k == 16)
    return hm_error(HM_ERR_SPEC, "%s%sa string contains U+0000; a spec string cannot hold a "
                    "NUL character", origin ? origin : "", origin ? ": " : "");
  char *copy = hm_malloc(len + 1, "spec text");
  if (!copy) return HM_ERR_NOMEM;
  memcpy(copy, text, len);
  copy[len] = '\0';
  char hex[8];
  snprintf(hex, sizeof hex, "FDD%X", k);
  nul_escapes(text, len, copy, hex);
  cJSON *j = cJSON_ParseWithLength(copy, len);
  free(copy);
  const unsigned char m[4] = {0xEF, 0xB7, (unsigned char)(0x90 + k), 0};
  hm_status st = j ? find_marked(j, root, (const char *)m, origin) : HM_OK;
  cJSON_Delete(j);
  return st;
}

/* 1-based line and column of offset off in text. */
static void line_col(const char *text, size_t off, int *line, int *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < off; i++) {
    if (text[i] == '\n') {
      ++*line;
      *col = 1;
    } else {
      ++*col;
    }
  }
}

hm_status hm_json_parse(const char *text, size_t len, const char *origin, const char *root_path,
                        cJSON **out) {
  *out = NULL;
  if (!text) return hm_error(HM_ERR_INVALID_ARG, "spec text is NULL");
  /* a raw NUL byte is not JSON, and would end a string (or the text) early for cJSON */
  const char *nul = len ? memchr(text, 0, len) : NULL;
  if (nul) {
    int line, col;
    line_col(text, (size_t)(nul - text), &line, &col);
    return hm_error(HM_ERR_SPEC, "%s:%d:%d: invalid JSON: a NUL byte (no spec text or string may "
                    "hold one)", origin ? origin : "<string>", line, col);
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!root) {
    size_t off = (end && end >= text && end <= text + len) ? (size_t)(end - text) : 0;
    int line, col;
    line_col(text, off, &line, &col);
    if (len == 0 || off >= len)
      return hm_error(HM_ERR_SPEC, "%s:%d:%d: invalid JSON (unexpected end of input)",
                      origin ? origin : "<string>", line, col);
    char near[24];
    size_t n = 0;
    for (size_t i = off; i < len && n < 16; i++)
      near[n++] = (text[i] >= 32 && text[i] < 127) ? text[i] : '?';
    near[n] = '\0';
    return hm_error(HM_ERR_SPEC, "%s:%d:%d: invalid JSON near '%s'", origin ? origin : "<string>",
                    line, col, near);
  }
  /* Trailing garbage after the value is an error too (cJSON stops at the value's end). */
  if (end) {
    const char *p = end;
    while (p < text + len && *p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    if (p < text + len && *p) {
      cJSON_Delete(root);
      return hm_error(HM_ERR_SPEC, "%s: invalid JSON: unexpected text after the top-level value",
                      origin ? origin : "<string>");
    }
  }
  if (nul_escapes(text, len, NULL, NULL) < len) {
    cJSON_Delete(root);
    hm_status st = nul_escape_error(text, len, origin, root_path ? root_path : "$");
    /* parsed once, so the copy parses too and names a field; kept for safety */
    return st != HM_OK ? st : hm_error(HM_ERR_SPEC, "%s%sa string contains U+0000", origin ? origin : "",
                                       origin ? ": " : "");
  }
  *out = root;
  return HM_OK;
}

hm_status hm_json_load_file(const char *path, const char *root_path, cJSON **out) {
  char *text = NULL;
  size_t len = 0;
  *out = NULL;
  hm_status st = hm_json_read_file(path, &text, &len);
  if (st == HM_OK) st = hm_json_parse(text, len, path, root_path, out);
  free(text);
  return st;
}

hm_status hm_json_read_file(const char *path, char **text, size_t *len) {
  *text = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return hm_error(HM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  const size_t limit = (size_t)256 << 20;
  size_t cap = 1 << 16, n = 0;
  char *buf = hm_malloc(cap + 1, "spec file");
  if (!buf) {
    fclose(f);
    return HM_ERR_NOMEM;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= limit) {
        free(buf);
        fclose(f);
        return hm_error(HM_ERR_SPEC, "%s: larger than 256 MiB, not a spec file", path);
      }
      cap *= 2;
      char *nb = realloc(buf, cap + 1);
      if (!nb) {
        free(buf);
        fclose(f);
        return hm_error(HM_ERR_NOMEM, "cannot allocate %zu bytes to read %s", cap, path);
      }
      buf = nb;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return hm_error(HM_ERR_IO, "cannot read %s", path);
  }
  buf[n] = '\0';
  *text = buf;
  *len = n;
  return HM_OK;
}

hm_status hm_json_write_file(const cJSON *v, const char *path, const char *what) {
  char *text = cJSON_Print(v);
  if (!text) return hm_error(HM_ERR_NOMEM, "%s: cannot print the JSON for %s", what, path);
  const size_t n = strlen(text);
  char *line = realloc(text, n + 2);
  if (!line) {
    free(text);
    return hm_error(HM_ERR_NOMEM, "%s: JSON text for %s", what, path);
  }
  line[n] = '\n', line[n + 1] = '\0';
  hm_status st = hm_atomic_write_file(path, line, n + 1);
  free(line);
  return st == HM_OK ? HM_OK : hm_error_context(st, "%s: ", what);
}

int hm_json_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 99;
  int row[64];
  for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      if (up + 1 < best) best = up + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

int hm_json_is_close(const char *word, const char *candidate, int distance) {
  /* Close enough to be a typo, and not a replacement of most of a short word. */
  size_t wl = strlen(word), cl = strlen(candidate);
  return (distance <= 2 || (size_t)distance * 3 <= wl) && (size_t)distance < cl &&
         (size_t)distance < wl + 1;
}

hm_status hm_json_check_object(const cJSON *v, const char *path, const char *const *allowed) {
  if (!cJSON_IsObject(v)) return type_error(path, "an object", v);
  enum { MAX_KEYS = 64 };
  int nallowed = 0;
  while (allowed[nallowed]) nallowed++;
  unsigned char seen[MAX_KEYS + 1] = {0};
  if (nallowed > MAX_KEYS) return hm_error(HM_ERR_INTERNAL, "%s: too many allowed keys", path);
  char p[HM_JSON_PATH_MAX];
  for (const cJSON *c = v->child; c; c = c->next) {
    const char *k = c->string ? c->string : "";
    int idx = -1;
    for (int i = 0; i < nallowed; i++)
      if (strcmp(k, allowed[i]) == 0) {
        idx = i;
        break;
      }
    if (idx < 0 && strcmp(k, "note") == 0) {
      idx = nallowed;
      if (!cJSON_IsString(c)) return type_error(hm_json_path_key(p, path, k), "a string", c);
    }
    if (idx < 0) {
      const char *best = NULL;
      int bestd = 99;
      for (int i = 0; i < nallowed; i++) {
        int d = hm_json_edit_distance(k, allowed[i]);
        if (d < bestd) {
          bestd = d;
          best = allowed[i];
        }
      }
      int close = best && hm_json_is_close(k, best, bestd);
      char shown[48];
      snprintf(shown, sizeof shown, "%s", k);
      if (close)
        return hm_error(HM_ERR_SPEC, "%s: unknown field \"%s\" (did you mean \"%s\"?)", path, shown,
                        best);
      return hm_error(HM_ERR_SPEC, "%s: unknown field \"%s\"", path, shown);
    }
    if (seen[idx]) return hm_error(HM_ERR_SPEC, "%s: duplicate field \"%s\"", path, k);
    seen[idx] = 1;
  }
  return HM_OK;
}

/* "a positive number", "an integer in [1, 4096]", "a number in (0, 1]". Very large maxima are
 * sanity limits, shown only to a value beyond them. */
static void describe_range(hm_json_range r, int show_max, char *buf, size_t cap) {
  const char *fmt = r.integer ? "%.17g" : "%g";
  char lo[32], hi[32];
  snprintf(lo, sizeof lo, fmt, r.min);
  snprintf(hi, sizeof hi, fmt, r.max);
  if (!(r.max < 1e12) && !show_max) {
    if (r.min == 0.0)
      snprintf(buf, cap, "a %s %s", r.min_open ? "positive" : "non-negative",
               r.integer ? "integer" : "number");
    else
      snprintf(buf, cap, "%s %s %s", r.integer ? "an integer" : "a number", r.min_open ? ">" : ">=",
               lo);
    return;
  }
  snprintf(buf, cap, "%s in %s%s, %s]", r.integer ? "an integer" : "a number",
           r.min_open ? "(" : "[", lo, hi);
}

hm_status hm_json_number_value(const cJSON *v, const char *path, hm_json_range r, double *out) {
  char expect[128];
  int above = cJSON_IsNumber(v) && v->valuedouble > r.max;
  describe_range(r, above, expect, sizeof expect);
  if (!cJSON_IsNumber(v)) return type_error(path, expect, v);
  double x = v->valuedouble;
  if (!isfinite(x)) return type_error(path, expect, v);
  if (r.integer && (x != floor(x) || fabs(x) > 9007199254740992.0))
    return type_error(path, expect, v);
  if (x < r.min || (r.min_open && x == r.min) || x > r.max) return type_error(path, expect, v);
  *out = x;
  return HM_OK;
}

hm_status hm_json_number(const cJSON *obj, const char *path, const char *key, int required,
                         hm_json_range range, double def, double *out) {
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) {
    if (required) {
      char expect[128];
      describe_range(range, 0, expect, sizeof expect);
      return missing(p, expect);
    }
    *out = def;
    return HM_OK;
  }
  return hm_json_number_value(v, p, range, out);
}

hm_status hm_json_int(const cJSON *obj, const char *path, const char *key, int required,
                      int64_t lo, int64_t hi, int64_t def, int64_t *out) {
  double x = 0;
  HM_TRY(hm_json_number(obj, path, key, required, HM_RANGE_INT(lo, hi), (double)def, &x));
  *out = (int64_t)x;
  return HM_OK;
}

hm_status hm_json_string(const cJSON *obj, const char *path, const char *key, int required,
                         const char *def, char *out, size_t cap) {
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) {
    if (required) return missing(p, "a string");
    hm_strcpy(out, cap, def ? def : "");
    return HM_OK;
  }
  if (!cJSON_IsString(v) || !v->valuestring) return type_error(p, "a string", v);
  size_t n = strlen(v->valuestring);
  if (n == 0) return hm_error(HM_ERR_SPEC, "%s: expected a non-empty string, got \"\"", p);
  if (n >= cap)
    return hm_error(HM_ERR_SPEC, "%s: string of %zu characters is longer than the limit of %zu", p,
                    n, cap - 1);
  memcpy(out, v->valuestring, n + 1);
  return HM_OK;
}

hm_status hm_json_name(const cJSON *obj, const char *path, const char *key, int required,
                       const char *def, char *out, size_t cap) {
  HM_TRY(hm_json_string(obj, path, key, required, def, out, cap));
  for (const char *s = out; *s; s++) {
    char c = *s;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-' || c == '.' || c == '+';
    if (!ok) {
      char p[HM_JSON_PATH_MAX];
      return hm_error(HM_ERR_SPEC,
                      "%s: \"%s\" is not a valid name (letters, digits and _ - . + only)",
                      hm_json_path_key(p, path, key), out);
    }
  }
  return HM_OK;
}

hm_status hm_json_bool(const cJSON *obj, const char *path, const char *key, int def, int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) {
    *out = def;
    return HM_OK;
  }
  char p[HM_JSON_PATH_MAX];
  if (!cJSON_IsBool(v)) return type_error(hm_json_path_key(p, path, key), "true or false", v);
  *out = cJSON_IsTrue(v) ? 1 : 0;
  return HM_OK;
}

hm_status hm_json_enum(const cJSON *obj, const char *path, const char *key, int required,
                       const char *const *names, int def, int *out) {
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, key);
  char expect[160];
  size_t n = 0;
  expect[0] = '\0';
  for (int i = 0; names[i]; i++) {
    int w = snprintf(expect + n, sizeof expect - n, "%s\"%s\"", i == 0 ? "one of " : ", ",
                     names[i]);
    if (w < 0 || (size_t)w >= sizeof expect - n) break;
    n += (size_t)w;
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) {
    if (required) return missing(p, expect);
    *out = def;
    return HM_OK;
  }
  if (cJSON_IsString(v) && v->valuestring)
    for (int i = 0; names[i]; i++)
      if (strcmp(v->valuestring, names[i]) == 0) {
        *out = i;
        return HM_OK;
      }
  return type_error(p, expect, v);
}

hm_status hm_json_object(const cJSON *obj, const char *path, const char *key, int required,
                         const cJSON **out) {
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  if (!v) return required ? missing(p, "an object") : HM_OK;
  if (!cJSON_IsObject(v)) return type_error(p, "an object", v);
  *out = v;
  return HM_OK;
}

hm_status hm_json_array(const cJSON *obj, const char *path, const char *key, int required,
                        const cJSON **out, int *count) {
  char p[HM_JSON_PATH_MAX];
  hm_json_path_key(p, path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = NULL;
  *count = 0;
  if (!v) return required ? missing(p, "an array") : HM_OK;
  if (!cJSON_IsArray(v)) return type_error(p, "an array", v);
  int n = 0;
  for (const cJSON *c = v->child; c; c = c->next) {
    if (n == 1000000) return hm_error(HM_ERR_SPEC, "%s: more than 1000000 entries", p);
    n++;
  }
  *out = v;
  *count = n;
  return HM_OK;
}

hm_status hm_json_link(const cJSON *obj, const char *path, const char *key, int required,
                       hm_link *out, int *present) {
  static const char *const keys[] = {"bandwidth", "latency", NULL};
  char p[HM_JSON_PATH_MAX];
  const cJSON *lo = NULL;
  if (present) *present = 0;
  HM_TRY(hm_json_object(obj, path, key, required, &lo));
  if (!lo) return HM_OK;
  hm_json_path_key(p, path, key);
  HM_TRY(hm_json_check_object(lo, p, keys));
  memset(out, 0, sizeof *out);
  HM_TRY(hm_json_number(lo, p, "bandwidth", 1, HM_RANGE_POSITIVE(1e16), 0, &out->bandwidth));
  HM_TRY(hm_json_number(lo, p, "latency", 1, HM_RANGE_NONNEG(10.0), 0, &out->latency));
  if (present) *present = 1;
  return HM_OK;
}

hm_status hm_json_version(const cJSON *obj, const char *path) {
  int64_t v = 1;
  HM_TRY(hm_json_int(obj, path, "version", 0, 1, 1, 1, &v));
  return HM_OK;
}

cJSON *hm_json_link_to_cjson(const hm_link *l) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  if (!cJSON_AddNumberToObject(o, "bandwidth", l->bandwidth) ||
      !cJSON_AddNumberToObject(o, "latency", l->latency)) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}
