/* Validating accessors over cJSON for the spec readers (internal to src/plan).
 *
 * Each accessor takes the JSON path of the object it reads from (e.g. "cluster.hosts[2]") and
 * reports HM_ERR_SPEC with the full path of the offending field on failure, so readers stay a
 * flat list of declarations. Not a JSON parser: parsing is cJSON's. */
#ifndef HETMIX_PLAN_SPEC_JSON_H
#define HETMIX_PLAN_SPEC_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "hetmix/cost.h"
#include "hetmix/status.h"

#define HM_JSON_PATH_MAX 256

/* Builds "<parent>.<key>" or "<parent>[i]" into buf (truncated paths stay readable). */
const char *hm_json_path_key(char *buf, const char *parent, const char *key);
const char *hm_json_path_index(char *buf, const char *parent, long i);

/* Short rendering of a value for messages: "16GB" (quoted), 3, true, null, an object, ... */
void hm_json_describe(const cJSON *v, char *buf, size_t cap);

/* Parses text with cJSON; syntax errors become HM_ERR_SPEC with line and column. A string or key
 * holding U+0000 (the escape \u0000, which cJSON's NUL-terminated strings would cut short) is
 * HM_ERR_SPEC naming its path under root_path (e.g. "cluster"). */
hm_status hm_json_parse(const char *text, size_t len, const char *origin, const char *root_path,
                        cJSON **out);
/* Reads a whole file (at most 256 MiB) into a NUL-terminated buffer. */
hm_status hm_json_read_file(const char *path, char **text, size_t *len);
/* hm_json_read_file then hm_json_parse (path is the origin of messages). */
hm_status hm_json_load_file(const char *path, const char *root_path, cJSON **out);

/* Requires v to be an object whose keys are all in `allowed` (NULL-terminated) or "note"
 * (a free-text string everywhere). Unknown keys get a "did you mean" when one is close;
 * duplicate keys are errors too. */
hm_status hm_json_check_object(const cJSON *v, const char *path, const char *const *allowed);

/* Numbers. A range is [min, max]; min_open makes it (min, max]. */
typedef struct hm_json_range {
  double min, max;
  int min_open;
  int integer; /* value must be integral (and within +-2^53) */
} hm_json_range;

#define HM_RANGE_POSITIVE(max) ((hm_json_range){0.0, (max), 1, 0})
#define HM_RANGE_NONNEG(max) ((hm_json_range){0.0, (max), 0, 0})
#define HM_RANGE_INT(lo, hi) ((hm_json_range){(double)(lo), (double)(hi), 0, 1})

/* Gets obj[key] as a number in range. When absent: required -> error, else *out = def. */
hm_status hm_json_number(const cJSON *obj, const char *path, const char *key, int required,
                         hm_json_range range, double def, double *out);
hm_status hm_json_int(const cJSON *obj, const char *path, const char *key, int required,
                      int64_t lo, int64_t hi, int64_t def, int64_t *out);
/* Validates a number that is itself the value v at path. */
hm_status hm_json_number_value(const cJSON *v, const char *path, hm_json_range range, double *out);
/* Strings of 1..cap-1 characters. When absent and not required, copies def (may be NULL: ""). */
hm_status hm_json_string(const cJSON *obj, const char *path, const char *key, int required,
                         const char *def, char *out, size_t cap);
hm_status hm_json_bool(const cJSON *obj, const char *path, const char *key, int def, int *out);
/* One of a fixed list of strings; *out is its index. */
hm_status hm_json_enum(const cJSON *obj, const char *path, const char *key, int required,
                       const char *const *names, int def, int *out);
/* obj[key] if present and an object (array) else an error; *out = NULL when absent and optional. */
hm_status hm_json_object(const cJSON *obj, const char *path, const char *key, int required,
                         const cJSON **out);
hm_status hm_json_array(const cJSON *obj, const char *path, const char *key, int required,
                        const cJSON **out, int *count);
/* A link object {"bandwidth": B/s > 0, "latency": s >= 0}. */
hm_status hm_json_link(const cJSON *obj, const char *path, const char *key, int required,
                       hm_link *out, int *present);
/* Optional "version" field: absent or 1. */
hm_status hm_json_version(const cJSON *obj, const char *path);

/* A name usable as an identifier in specs and messages: [A-Za-z0-9_.+-], 1..cap-1 chars. */
hm_status hm_json_name(const cJSON *obj, const char *path, const char *key, int required,
                       const char *def, char *out, size_t cap);

/* Levenshtein distance (99 for strings over 63 characters), and whether a word at that
 * distance from a known name is worth a "did you mean". */
int hm_json_edit_distance(const char *a, const char *b);
int hm_json_is_close(const char *word, const char *candidate, int distance);

/* Writes v as indented JSON to path atomically: a temporary file next to it, then a rename, so
 * a reader never sees half a file. `what` names the document in messages ("plan", "profile"). */
hm_status hm_json_write_file(const cJSON *v, const char *path, const char *what);

/* Writers: add a link object; NULL-safe chaining is not provided, callers check the result. */
cJSON *hm_json_link_to_cjson(const hm_link *l);

#endif
