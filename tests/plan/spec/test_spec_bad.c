/* Spec readers on bad input. Two parts:
 *  - a walk over every field of every example file: a mistyped field (or array entry) must
 *    be rejected with a message that starts with its exact path; a deleted field must either
 *    be optional or be reported with its path;
 *  - a table of out-of-range, unknown, dangling and contradictory fields, each with the
 *    message (or its characteristic part) the user will read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "hetmix/plan.h"
#include "hetmix/spec.h"
#include "plan/spec_json.h"

#define EX(name) HM_SOURCE_DIR "/examples/" name

typedef enum { SPEC_CLUSTER, SPEC_MODEL, SPEC_TRAIN, SPEC_PROFILE } spec_kind;
static const char *const roots[] = {"cluster", "model", "train", "profile"};

/* Runs the reader of `kind` over text; returns its status (the message is in hm_last_error). */
static hm_status read_spec(spec_kind kind, const char *text) {
  size_t len = strlen(text);
  hm_status st = HM_ERR_INTERNAL;
  switch (kind) {
    case SPEC_CLUSTER: {
      hm_cluster c;
      st = hm_cluster_parse(text, len, NULL, &c);
      hm_cluster_free(&c);
      break;
    }
    case SPEC_MODEL: {
      hm_model m;
      st = hm_model_parse(text, len, NULL, &m);
      hm_model_free(&m);
      break;
    }
    case SPEC_TRAIN: {
      hm_train t;
      st = hm_train_parse(text, len, NULL, &t);
      break;
    }
    case SPEC_PROFILE: {
      hm_profile p;
      st = hm_profile_parse(text, len, NULL, &p);
      hm_profile_free(&p);
      break;
    }
  }
  return st;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = '\0';
  fclose(f);
  return s;
}

/* A value of a type the field cannot have. */
static cJSON *wrong_type(const cJSON *v) {
  return cJSON_IsString(v) ? cJSON_CreateNumber(7) : cJSON_CreateString("x");
}

/* The walk mutates a copy of the document for each check; a node is found in the copy by
 * its chain of child indices from the root. */
typedef struct walk {
  spec_kind kind;
  const cJSON *root;
  int idx[32];
  int depth;
  int checked;
} walk;

static cJSON *node_at(cJSON *root, const int *idx, int depth, cJSON **parent) {
  cJSON *n = root;
  *parent = NULL;
  for (int d = 0; d < depth; d++) {
    *parent = n;
    n = n->child;
    for (int k = 0; k < idx[d]; k++) n = n->next;
  }
  return n;
}

/* Applies a mutation to a copy: mode 0 deletes the node, 1 replaces it with a mistyped value.
 * Returns the reader's status. */
static hm_status mutate_and_read(walk *w, int mode) {
  cJSON *copy = cJSON_Duplicate(w->root, 1);
  assert_non_null(copy);
  cJSON *parent = NULL;
  cJSON *n = node_at(copy, w->idx, w->depth, &parent);
  assert_non_null(parent);
  if (mode == 0) {
    cJSON_Delete(cJSON_DetachItemViaPointer(parent, n));
  } else {
    cJSON *bad = wrong_type(n);
    assert_non_null(bad);
    if (cJSON_IsObject(parent))
      assert_true(cJSON_ReplaceItemInObjectCaseSensitive(parent, n->string, bad));
    else
      assert_true(cJSON_ReplaceItemViaPointer(parent, n, bad));
  }
  char *text = cJSON_PrintUnformatted(copy);
  cJSON_Delete(copy);
  assert_non_null(text);
  hm_status st = read_spec(w->kind, text);
  free(text);
  w->checked++;
  return st;
}

static void walk_value(walk *w, const cJSON *v, const char *path) {
  char p[512];
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return;
  if (w->depth == 32) fail_msg("%s: nested too deep for this test", path);
  int i = 0;
  for (const cJSON *c = v->child; c; c = c->next, i++) {
    if (cJSON_IsObject(v))
      snprintf(p, sizeof p, "%s.%s", path, c->string);
    else
      snprintf(p, sizeof p, "%s[%d]", path, i);
    w->idx[w->depth++] = i;
    /* Mistyped: rejected, and the message starts with the exact path. */
    hm_status st = mutate_and_read(w, 1);
    const char *msg = hm_last_error();
    size_t pl = strlen(p);
    if (st != HM_ERR_SPEC || strncmp(msg, p, pl) != 0 || msg[pl] != ':')
      fail_msg("mistyped %s: got %s: %s", p, hm_status_name(st), msg);
    /* Deleted object field: optional, or reported with its path. */
    if (cJSON_IsObject(v)) {
      st = mutate_and_read(w, 0);
      if (st != HM_OK && (st != HM_ERR_SPEC || !strstr(hm_last_error(), p)))
        fail_msg("deleted %s: got %s: %s", p, hm_status_name(st), hm_last_error());
    }
    walk_value(w, c, p);
    w->depth--;
  }
}

static void walk_file(spec_kind kind, const char *file, int *checked) {
  char *text = slurp(file);
  hm_status st = read_spec(kind, text);
  if (st != HM_OK) fail_msg("%s: %s", file, hm_last_error());
  cJSON *root = cJSON_Parse(text);
  free(text);
  assert_non_null(root);
  walk w = {.kind = kind, .root = root, .depth = 0, .checked = 0};
  walk_value(&w, root, roots[kind]);
  cJSON_Delete(root);
  *checked += w.checked;
}

static void test_every_field_mistyped_or_missing(void **state) {
  (void)state;
  static const struct {
    spec_kind kind;
    const char *file;
  } files[] = {{SPEC_CLUSTER, EX("local-2backend.json")},    {SPEC_CLUSTER, EX("reference-768.json")},
               {SPEC_CLUSTER, EX("mixed-1024-3types.json")}, {SPEC_CLUSTER, EX("mixed-10240-3types.json")},
               {SPEC_MODEL, EX("gpt-mini.json")},            {SPEC_MODEL, EX("gpt2-124m.json")},
               {SPEC_MODEL, EX("gpt3-175b.json")},           {SPEC_MODEL, EX("llama2-70b.json")},
               {SPEC_TRAIN, EX("train-default.json")},       {SPEC_TRAIN, EX("train-local.json")},
               {SPEC_PROFILE, EX("profile-local.json")}};
  int checked = 0;
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) walk_file(files[i].kind, files[i].file, &checked);
  print_message("checked %d mistyped or deleted fields\n", checked);
  assert_true(checked > 300);
}


/* ---- table of specific bad fields ------------------------------------------------------- */

static const char explicit_model[] =
    "{\"name\": \"custom\", \"dtype\": \"bf16\", \"seq_len\": 128, \"layers\": ["
    " {\"kind\": \"embed\", \"fwd_flops\": 0, \"params\": 1000, \"act_bytes\": 512,"
    "  \"out_bytes\": 4096},"
    " {\"kind\": \"mix\", \"count\": 3, \"fwd_flops\": 1e9, \"params\": 2e6, \"act_bytes\": 1e6,"
    "  \"out_bytes\": 4096},"
    " {\"kind\": \"out\", \"fwd_flops\": 5e8, \"params\": 10, \"shared_params\": 1000,"
    "  \"shared_with\": 0, \"act_bytes\": 1e5, \"out_bytes\": 4}]}";

/* Sets (value != NULL, JSON text) or deletes (value == NULL) the field at path, e.g.
 * "hosts[1].devices.type", in root; a missing last key is added. */
static void set_at(cJSON *root, const char *path, const char *value) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  cJSON *cur = root, *parent = NULL;
  char *last_key = NULL;
  int last_index = -1;
  for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) {
    char *br = strchr(tok, '[');
    if (br) *br = '\0';
    if (*tok) {
      parent = cur;
      last_key = tok;
      last_index = -1;
      cur = cJSON_GetObjectItemCaseSensitive(parent, tok);
    }
    while (br) {
      int i = atoi(br + 1);
      parent = cur;
      last_key = NULL;
      last_index = i;
      cur = cJSON_GetArrayItem(parent, i);
      br = strchr(br + 1, '[');
    }
    if (!cur && strtok(NULL, "") != NULL) fail_msg("test path %s does not exist", path);
  }
  assert_non_null(parent);
  if (!value) {
    assert_non_null(cur);
    if (last_key)
      cJSON_DeleteItemFromObjectCaseSensitive(parent, last_key);
    else
      cJSON_DeleteItemFromArray(parent, last_index);
    return;
  }
  cJSON *v = cJSON_Parse(value);
  if (!v) fail_msg("bad test value %s", value);
  if (last_key && cur)
    cJSON_ReplaceItemInObjectCaseSensitive(parent, last_key, v);
  else if (last_key)
    cJSON_AddItemToObject(parent, last_key, v);
  else
    cJSON_ReplaceItemInArray(parent, last_index, v);
}

#define DELETE NULL

static const struct bad_case {
  spec_kind kind;
  const char *file; /* example file name, or NULL for explicit_model */
  const char *path;
  const char *value;
  const char *message; /* the message must contain this ('$' at the end: and end with it) */
} bad_cases[] = {
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].memory_bytes", "\"16GB\"",
     "cluster.device_types[1].memory_bytes: expected a positive number, got \"16GB\"$"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].memory_bytes", "-1",
     "cluster.device_types[1].memory_bytes: expected a positive number, got -1"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].memory_bytes", "1e17",
     "cluster.device_types[1].memory_bytes: expected a number in (0, 1e+16], got 1e+17"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].memory_bytes", DELETE,
     "cluster.device_types[1].memory_bytes: missing (expected a positive number"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].efficiency", "1.5",
     "cluster.device_types[0].efficiency: expected a number in (0, 1], got 1.5"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].efficiency", "0",
     "cluster.device_types[0].efficiency: expected a number in (0, 1], got 0"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].memroy_bytes", "1",
     "cluster.device_types[0]: unknown field \"memroy_bytes\" (did you mean \"memory_bytes\"?)"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].peak_flops.fp64", "1e12",
     "cluster.device_types[0].peak_flops: unknown field \"fp64\" (did you mean \"fp32\"?)"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].peak_flops.fp32", DELETE,
     "cluster.device_types[0].peak_flops.fp32: missing"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[0].peak_flops.bf16", "0",
     "cluster.device_types[0].peak_flops.bf16: expected a positive number"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].name", "\"mi250\"",
     "cluster.device_types[1].name: device type \"mi250\" is defined twice (also [0])"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].intra_host_link.latency", "-1e-6",
     "cluster.device_types[1].intra_host_link.latency: expected a number in [0, 10], got -9.9999999999999995e-07"},
    {SPEC_CLUSTER, "reference-768.json", "device_types[1].intra_host_link", DELETE,
     "cluster.device_types[1].intra_host_link: missing (expected a link object: host group \"a100-node\" holds 8 devices"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[1].devices.type", "\"h100\"",
     "cluster.hosts[1].devices.type: unknown device type \"h100\" (not in cluster.device_types)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[1].devices.type", "\"a10O\"",
     "cluster.hosts[1].devices.type: unknown device type \"a10O\" (not in cluster.device_types) "
     "(did you mean \"a100\"?)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].pool", "\"room_amd\"",
     "cluster.hosts[0].pool: unknown pool \"room_amd\" (not in cluster.pools) (did you mean \"room-amd\"?)"},
    {SPEC_MODEL, "gpt2-124m.json", "config.x", "1", "model.config: unknown field \"x\"$"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].count", "0",
     "cluster.hosts[0].count: expected an integer in [1, 10000000], got 0"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].count", "2.5",
     "cluster.hosts[0].count: expected an integer in [1, 10000000], got 2.5"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].devices.count", "5000",
     "cluster.hosts[0].devices.count: expected an integer in [1, 4096], got 5000"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].nic.latency", "-1",
     "cluster.hosts[0].nic.latency: expected a number in [0, 10], got -1"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].nic", DELETE,
     "cluster.hosts[0].nic: missing (expected a link object: the cluster has 112 hosts)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].nic.bandwith", "1e9",
     "cluster.hosts[0].nic: unknown field \"bandwith\" (did you mean \"bandwidth\"?)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].pool", "\"room-x\"",
     "cluster.hosts[0].pool: unknown pool \"room-x\" (not in cluster.pools)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[0].pool", DELETE,
     "cluster.hosts[0].pool: missing (expected a string)"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[1].name", "\"mi250-node\"",
     "cluster.hosts[1].name: host group \"mi250-node\" is defined twice (also [0])"},
    {SPEC_CLUSTER, "reference-768.json", "hosts", "[]",
     "cluster.hosts: expected at least one host group, got []"},
    {SPEC_CLUSTER, "reference-768.json", "pool_links", "[]",
     "cluster.pool_links: no link between pools \"room-amd\" and \"room-nv\""},
    {SPEC_CLUSTER, "reference-768.json", "pool_links",
     "[{\"pools\": [\"room-amd\", \"room-nv\"], \"bandwidth\": 1e9, \"latency\": 0},"
     " {\"pools\": [\"room-nv\", \"room-amd\"], \"bandwidth\": 1e9, \"latency\": 0}]",
     "cluster.pool_links[1]: pools \"room-amd\" and \"room-nv\" are linked twice (also [0])"},
    {SPEC_CLUSTER, "reference-768.json", "pool_links[0].pools[1]", "\"room-amd\"",
     "cluster.pool_links[0].pools: links pool \"room-amd\" to itself"},
    {SPEC_CLUSTER, "reference-768.json", "pool_links[0].pools", "[\"room-amd\"]",
     "cluster.pool_links[0].pools: expected two pool names, got 1 entries"},
    {SPEC_CLUSTER, "reference-768.json", "version", "2",
     "cluster.version: expected an integer in [1, 1], got 2"},
    {SPEC_CLUSTER, "reference-768.json", "hosts[1].devices", "{\"type\": \"a100\", \"count\": 8, \"kind\": 1}",
     "cluster.hosts[1].devices: unknown field \"kind\""},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].host_link", DELETE,
     "cluster.hosts[0].host_link: missing (expected a link object: this host holds 2 device types"},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].devices[1].type", "\"cpu\"",
     "cluster.hosts[0].devices[1].type: device type \"cpu\" is listed twice in this host"},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].hostnames", "[\"a\", \"b\"]",
     "cluster.hosts[0].hostnames: has 2 names but the group has 1 hosts"},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].hostnames[0]", "\"\"",
     "cluster.hosts[0].hostnames[0]: expected a host name (1..255 characters), got \"\""},
    {SPEC_CLUSTER, "local-2backend.json", "device_types[0].name", "\"cpu 1\"",
     "cluster.device_types[0].name: \"cpu 1\" is not a valid name"},
    {SPEC_CLUSTER, "local-2backend.json", "device_types[1].name", "\"\"",
     "cluster.device_types[1].name: expected a non-empty string, got \"\""},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].devices", "[{\"type\": \"cpu\"}]",
     "cluster.device_types[1]: device type \"ref\" is in no host"},
    {SPEC_CLUSTER, "local-2backend.json", "hosts[0].pool", "\"a\"",
     "cluster.hosts[0].pool: names a pool but cluster.pools is absent"},
    {SPEC_CLUSTER, "mixed-1024-3types.json", "hosts[0]",
     "{\"count\": 10000000, \"devices\": {\"type\": \"h100\", \"count\": 4096}, "
     "\"nic\": {\"bandwidth\": 1e9, \"latency\": 0}}",
     "cluster.hosts[0]: the cluster exceeds 1073741824 devices"},
    {SPEC_MODEL, "gpt2-124m.json", "config.C", "770",
     "model.config.C: 770 is not divisible by NH = 12"},
    {SPEC_MODEL, "gpt2-124m.json", "config.kv_heads", "4",
     "model.config.kv_heads: arch \"gpt2\" needs kv_heads == NH (12), got 4"},
    {SPEC_MODEL, "gpt2-124m.json", "config.arch", "\"bert\"",
     "model.config.arch: expected one of \"gpt2\", \"llama\", got \"bert\""},
    {SPEC_MODEL, "gpt2-124m.json", "config.L", "0",
     "model.config.L: expected an integer in [1, 10000], got 0"},
    {SPEC_MODEL, "gpt2-124m.json", "config.V", DELETE, "model.config.V: missing"},
    {SPEC_MODEL, "gpt2-124m.json", "config.n_layer", "12",
     "model.config: unknown field \"n_layer\""},
    {SPEC_MODEL, "gpt2-124m.json", "dtype", "\"int8\"",
     "model.dtype: expected one of \"fp32\", \"bf16\", \"fp16\", \"fp8\", got \"int8\""},
    {SPEC_MODEL, "gpt2-124m.json", "layers", "[]", "model: give \"config\" or \"layers\", not both"},
    {SPEC_MODEL, "gpt2-124m.json", "seq_len", "1024", "model.seq_len: \"seq_len\" belongs to a layer list"},
    {SPEC_MODEL, "llama2-70b.json", "config.kv_heads", "5",
     "model.config.kv_heads: 5 does not divide NH = 64"},
    {SPEC_MODEL, "llama2-70b.json", "config.tied_embeddings", "\"yes\"",
     "model.config.tied_embeddings: expected true or false, got \"yes\""},
    {SPEC_MODEL, "llama2-70b.json", "config.flash_atention", "true",
     "model.config: unknown field \"flash_atention\" (did you mean \"flash_attention\"?)"},
    {SPEC_MODEL, NULL, "layers[1].act_bytes", DELETE, "model.layers[1].act_bytes: missing"},
    {SPEC_MODEL, NULL, "layers[1].count", "0", "model.layers[1].count: expected an integer in [1, 100000], got 0"},
    {SPEC_MODEL, NULL, "layers[1].fwd_flops", "-5", "model.layers[1].fwd_flops: expected a non-negative number"},
    {SPEC_MODEL, NULL, "layers[2].shared_with", "4",
     "model.layers[2].shared_with: layer 4 cannot share with itself"},
    {SPEC_MODEL, NULL, "layers[2].shared_with", "9",
     "model.layers[2].shared_with: expected an integer in [0, 4], got 9"},
    {SPEC_MODEL, NULL, "layers[2].shared_with", DELETE,
     "model.layers[2].shared_with: missing (\"shared_params\" and \"shared_with\" go together)"},
    {SPEC_MODEL, NULL, "layers[0].param_bytes", "2000",
     "model.layers[0]: give \"params\" or \"param_bytes\", not both"},
    {SPEC_MODEL, NULL, "layers[0].params", DELETE, "model.layers[0].params: missing"},
    {SPEC_MODEL, NULL, "layers[1].fwd_flops_per_token", "1e6",
     "model.layers[1]: give \"fwd_flops\" or \"fwd_flops_per_token\", not both"},
    {SPEC_MODEL, NULL, "layers[1].fwd_flops", DELETE, "model.layers[1].fwd_flops: missing"},
    {SPEC_MODEL, NULL, "layers[2].shared_params", "5000",
     "model.layers: layer 4 shares 5000 parameters of layer 0, which owns only 1000"},
    {SPEC_MODEL, NULL, "layers[0].kind", "\"a/b\"", "model.layers[0].kind: \"a/b\" is not a valid name"},
    {SPEC_MODEL, NULL, "seq_len", DELETE, "model.seq_len: missing"},
    {SPEC_MODEL, NULL, "layers", "[]", "model.layers: expected at least one layer, got []"},
    {SPEC_TRAIN, "train-default.json", "global_batch", "-8",
     "train.global_batch: expected an integer in [1, 1000000000], got -8"},
    {SPEC_TRAIN, "train-default.json", "micro_batch_sizes", "[1, 2048]",
     "train.micro_batch_sizes[1]: micro-batch size 2048 is larger than global_batch 1024"},
    {SPEC_TRAIN, "train-default.json", "micro_batch_sizes", "[2, 2]",
     "train.micro_batch_sizes[1]: micro-batch size 2 is listed twice"},
    {SPEC_TRAIN, "train-default.json", "micro_batch_sizes", "[]",
     "train.micro_batch_sizes: expected at least one size, got []"},
    {SPEC_TRAIN, "train-default.json", "micro_batch_sizes[0]", "0",
     "train.micro_batch_sizes[0]: expected an integer in [1, 1000000000], got 0"},
    {SPEC_TRAIN, "train-default.json", "precision", "\"bf16\"",
     "train.precision: expected one of \"auto\", \"fp32\", \"bf16-mixed\", \"fp16-mixed\", got \"bf16\""},
    {SPEC_TRAIN, "train-default.json", "memory_fraction", "0",
     "train.memory_fraction: expected a number in (0, 1], got 0"},
    {SPEC_TRAIN, "train-default.json", "zero_stage", "3",
     "train.zero_stage: expected an integer in [0, 1], got 3"},
    {SPEC_TRAIN, "train-default.json", "optimizer", "\"sgd\"",
     "train.optimizer: expected one of \"adamw\", got \"sgd\""},
    {SPEC_TRAIN, "train-default.json", "recompute", "\"selective\"",
     "train.recompute: expected one of \"none\", \"full\", got \"selective\""},
    {SPEC_TRAIN, "train-default.json", "bytes_per_param", "{\"weights\": 0}",
     "train.bytes_per_param.weights: expected a number in (0, 64], got 0"},
    {SPEC_TRAIN, "train-default.json", "global_batch_size", "8",
     "train: unknown field \"global_batch_size\" (did you mean \"global_batch\"?)"},
    {SPEC_PROFILE, "profile-local.json", "layers[1].micro_batch", "0",
     "profile.layers[1].micro_batch: expected an integer in [1, 1000000000], got 0"},
    {SPEC_PROFILE, "profile-local.json", "layers[2].micro_batch", "1",
     "profile.layers[2]: a second entry for device type \"cpu\", kind \"block\", micro_batch 1 (first is [1])"},
    {SPEC_PROFILE, "profile-local.json", "layers[0].fwd_s", "\"fast\"",
     "profile.layers[0].fwd_s: expected a number in [0, 1e+06], got \"fast\""},
    {SPEC_PROFILE, "profile-local.json", "links[0].scope", "\"pcie\"",
     "profile.links[0].scope: expected one of \"intra_host\", \"inter_host\", got \"pcie\""},
    {SPEC_PROFILE, "profile-local.json", "links[0].types", "[\"cpu\"]",
     "profile.links[0].types: expected two device type names, got 1 entries"},
    {SPEC_PROFILE, "profile-local.json", "links[0].bandwidth", "0",
     "profile.links[0].bandwidth: expected a positive number, got 0"},
};

static void test_bad_fields(void **state) {
  (void)state;
  int failures = 0;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    const struct bad_case *bc = &bad_cases[i];
    char *text = NULL;
    if (bc->file) {
      char path[512];
      snprintf(path, sizeof path, "%s/examples/%s", HM_SOURCE_DIR, bc->file);
      text = slurp(path);
    } else {
      text = strdup(explicit_model);
    }
    assert_int_equal(read_spec(bc->kind, text), HM_OK);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    set_at(root, bc->path, bc->value);
    text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    hm_status st = read_spec(bc->kind, text);
    free(text);
    /* A trailing '$' asks for the message to end right there. */
    char want[256];
    snprintf(want, sizeof want, "%s", bc->message);
    size_t wl = strlen(want);
    int at_end = wl > 0 && want[wl - 1] == '$';
    if (at_end) want[--wl] = '\0';
    const char *msg = hm_last_error(), *hit = strstr(msg, want);
    if (st != HM_ERR_SPEC || !hit || (at_end && hit[wl] != '\0')) {
      print_error("case %zu (%s %s): got %s: %s\n  want: %s\n", i, bc->file ? bc->file : "explicit",
                  bc->path, hm_status_name(st), hm_last_error(), bc->message);
      failures++;
    }
  }
  assert_int_equal(failures, 0);
}

/* Syntax errors, wrong top-level types and file errors. */
static void test_bad_documents(void **state) {
  (void)state;
  hm_cluster c;
  const char *text = "{\n  \"name\": \"x\",\n  \"device_types\": [1,]\n}";
  assert_int_equal(hm_cluster_parse(text, strlen(text), "c.json", &c), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "c.json:3:"));
  assert_non_null(strstr(hm_last_error(), "invalid JSON"));
  text = "{\"name\": ";
  assert_int_equal(hm_cluster_parse(text, strlen(text), NULL, &c), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "invalid JSON"));
  text = "{} {}";
  assert_int_equal(hm_cluster_parse(text, strlen(text), NULL, &c), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "after the top-level value"));
  text = "[]";
  assert_int_equal(hm_cluster_parse(text, strlen(text), NULL, &c), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "cluster: expected an object, got an array");
  text = "{\"device_types\": [], \"hosts\": []}";
  assert_int_equal(hm_cluster_parse(text, strlen(text), "c.json", &c), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(),
                      "c.json: cluster.device_types: expected at least one device type, got []");
  text = "{\"global_batch\": 8, \"global_batch\": 9}";
  hm_train t;
  assert_int_equal(hm_train_parse(text, strlen(text), NULL, &t), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "train: duplicate field \"global_batch\"");
  text = "{\"global_batch\": 1e999}";
  assert_int_equal(hm_train_parse(text, strlen(text), NULL, &t), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "train.global_batch: expected an integer"));
  /* host_links: known classes only, each with a positive bandwidth; read back as written */
  hm_profile pr;
  text = "{\"host_links\": {\"pool\": {\"bandwidth\": 1e8, \"latency\": 1e-5}, \"rack\": {}}}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "profile.host_links"));
  assert_non_null(strstr(hm_last_error(), "rack"));
  text = "{\"host_links\": {\"cross\": {\"bandwidth\": 0, \"latency\": 1e-5}}}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "profile.host_links.cross.bandwidth: expected a positive number, got 0");
  text = "{\"host_links\": {\"cross\": {\"bandwidth\": 1.25e7, \"latency\": 2e-3}}}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_OK);
  hm_link hl;
  assert_int_equal(hm_profile_host_link(&pr, 0, &hl), 0);
  assert_int_equal(hm_profile_host_link(&pr, 1, &hl), 1);
  assert_true(hl.bandwidth == 1.25e7 && hl.latency == 2e-3 && hl.burst == 0); /* no "burst": a plain link */
  hm_profile_free(&pr);
  text = "{\"host_links\": {\"cross\": {\"bandwidth\": 1.25e7, \"latency\": 2e-3, \"burst\": 2200}}}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_OK);
  assert_int_equal(hm_profile_host_link(&pr, 1, &hl), 1);
  assert_true(hl.burst == 2200);
  hm_profile_free(&pr);
  text = "{\"host_links\": {\"cross\": {\"bandwidth\": 1.25e7, \"latency\": 2e-3, \"burst\": -1}}}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "profile.host_links.cross.burst"));
  /* repeated profile entries: the earliest repeat is named, with its first occurrence */
  text = "{\"layers\": ["
         "{\"device_type\": \"x\", \"kind\": \"k\", \"micro_batch\": 2, \"fwd_s\": 1, \"bwd_s\": 1},"
         "{\"device_type\": \"x\", \"kind\": \"k\", \"micro_batch\": 1, \"fwd_s\": 1, \"bwd_s\": 1},"
         "{\"device_type\": \"y\", \"kind\": \"k\", \"micro_batch\": 1, \"fwd_s\": 1, \"bwd_s\": 1},"
         "{\"device_type\": \"x\", \"kind\": \"k\", \"micro_batch\": 1, \"fwd_s\": 1, \"bwd_s\": 1},"
         "{\"device_type\": \"x\", \"kind\": \"k\", \"micro_batch\": 2, \"fwd_s\": 1, \"bwd_s\": 1},"
         "{\"device_type\": \"x\", \"kind\": \"k\", \"micro_batch\": 1, \"fwd_s\": 1, \"bwd_s\": 1}]}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "profile.layers[3]: a second entry for device type \"x\", "
                                       "kind \"k\", micro_batch 1 (first is [1])");
  text = "{\"links\": ["
         "{\"types\": [\"a\", \"b\"], \"scope\": \"intra_host\", \"bandwidth\": 1, \"latency\": 0},"
         "{\"types\": [\"b\", \"a\"], \"scope\": \"inter_host\", \"bandwidth\": 1, \"latency\": 0},"
         "{\"types\": [\"b\", \"a\"], \"scope\": \"intra_host\", \"bandwidth\": 1, \"latency\": 0}]}";
  assert_int_equal(hm_profile_parse(text, strlen(text), NULL, &pr), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "profile.links[2]: a second intra_host link between \"b\" "
                                       "and \"a\" (first is [0])");
  hm_profile_free(&pr);
  hm_model m;
  assert_int_equal(hm_model_load("/nonexistent/model.json", &m), HM_ERR_IO);
  assert_non_null(strstr(hm_last_error(), "/nonexistent/model.json"));
  hm_model_free(&m); /* safe after a failed read */
  hm_cluster_free(&c);
}

/* ---- U+0000 in strings ------------------------------------------------------------------ */

/* Copies s with every "@NUL@" replaced by the JSON escape \u0000 (caller frees). */
static char *with_nul_escapes(const char *s) {
  char *out = malloc(strlen(s) * 2 + 1), *o = out;
  assert_non_null(out);
  while (*s) {
    if (strncmp(s, "@NUL@", 5) == 0) {
      memcpy(o, "\\u0000", 6);
      o += 6;
      s += 5;
    } else {
      *o++ = *s++;
    }
  }
  *o = '\0';
  return out;
}

/* "ab" -> "a@NUL@b" (the marker becomes \u0000 in the text). */
static char *marked(const char *s) {
  char *m = malloc(strlen(s) + 6);
  assert_non_null(m);
  snprintf(m, strlen(s) + 6, "%.1s@NUL@%s", s, *s ? s + 1 : "");
  return m;
}

/* Reads the document with the string value (key = 0) or the key (key = 1) of the node at w's
 * index chain holding U+0000; the reader must reject it naming `want_path`. */
static void nul_read(walk *w, int key, const char *want_path) {
  cJSON *copy = cJSON_Duplicate(w->root, 1);
  assert_non_null(copy);
  cJSON *parent = NULL;
  cJSON *n = node_at(copy, w->idx, w->depth, &parent);
  char *m = marked(key ? n->string : n->valuestring);
  if (key) {
    free(n->string);
    n->string = m;
  } else {
    assert_non_null(cJSON_SetValuestring(n, m));
    free(m);
  }
  char *printed = cJSON_PrintUnformatted(copy);
  cJSON_Delete(copy);
  assert_non_null(printed);
  char *text = with_nul_escapes(printed);
  free(printed);
  hm_status st = read_spec(w->kind, text);
  free(text);
  const char *msg = hm_last_error();
  const size_t pl = strlen(want_path);
  if (st != HM_ERR_SPEC || strncmp(msg, want_path, pl) != 0 || msg[pl] != ':' ||
      !strstr(msg, key ? "a key contains U+0000" : "contains U+0000"))
    fail_msg("U+0000 in %s %s: got %s: %s", key ? "a key of" : "", want_path,
             hm_status_name(st), msg);
  w->checked++;
}

static void nul_walk(walk *w, const cJSON *v, const char *path) {
  char p[512];
  int i = 0;
  for (const cJSON *c = v->child; c; c = c->next, i++) {
    if (cJSON_IsObject(v))
      snprintf(p, sizeof p, "%s.%s", path, c->string);
    else
      snprintf(p, sizeof p, "%s[%d]", path, i);
    if (w->depth == 32) fail_msg("%s: nested too deep for this test", p);
    w->idx[w->depth++] = i;
    if (cJSON_IsObject(v)) nul_read(w, 1, path);
    if (cJSON_IsString(c)) nul_read(w, 0, p);
    nul_walk(w, c, p);
    w->depth--;
  }
}

/* Every string value and every key of every example spec, with U+0000 inserted after its first
 * character, is rejected with its path (cJSON's strings end at the NUL: "c\u0000pu" read as
 * "c" before). */
static void test_nul_in_every_string(void **state) {
  (void)state;
  static const struct {
    spec_kind kind;
    const char *file;
  } files[] = {{SPEC_CLUSTER, EX("local-2backend.json")}, {SPEC_CLUSTER, EX("mixed-1024-3types.json")},
               {SPEC_MODEL, EX("gpt-mini.json")},         {SPEC_MODEL, EX("llama2-70b.json")},
               {SPEC_TRAIN, EX("train-default.json")},    {SPEC_TRAIN, EX("train-local.json")},
               {SPEC_PROFILE, EX("profile-local.json")}};
  int checked = 0;
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    char *text = slurp(files[f].file);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    walk w = {.kind = files[f].kind, .root = root};
    nul_walk(&w, root, roots[files[f].kind]);
    checked += w.checked;
    cJSON_Delete(root);
  }
  print_message("checked %d strings and keys with U+0000\n", checked);
  assert_true(checked > 200);
}

/* The reported case, the message in full, a file name, a plan, and what is not U+0000. */
static void test_nul_messages(void **state) {
  (void)state;
  char *text = slurp(EX("local-2backend.json"));
  char *at = strstr(text, "\"cpu\"");
  assert_non_null(at);
  char *doc = malloc(strlen(text) + 8);
  assert_non_null(doc);
  snprintf(doc, strlen(text) + 8, "%.*s\"c\\u0000pu\"%s", (int)(at - text), text, at + 5);
  hm_cluster c;
  assert_int_equal(hm_cluster_parse(doc, strlen(doc), "c.json", &c), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "c.json: cluster.device_types[0].name: contains U+0000 "
                                       "(\"c\\u0000pu\"); a spec string cannot hold a NUL character");
  free(doc);
  free(text);
  hm_train t;
  /* an escaped backslash followed by u0000 is six plain characters, not U+0000 */
  const char *ok = "{\"global_batch\": 8, \"note\": \"C:\\\\u0000\"}";
  assert_int_equal(hm_train_parse(ok, strlen(ok), NULL, &t), HM_OK);
  /* a raw NUL byte is not JSON; it ended the text or a string for cJSON */
  const char raw[] = "{\"global_batch\": 8, \"precision\": \"bf16-mixed\0x\"}";
  assert_int_equal(hm_train_parse(raw, sizeof raw - 1, "t.json", &t), HM_ERR_SPEC);
  assert_string_equal(hm_last_error(), "t.json:1:45: invalid JSON: a NUL byte (no spec text or "
                                       "string may hold one)");
  /* a document that also uses the first stand-in character still names the right field */
  const char *both = "{\"global_batch\": 8, \"note\": \"\\uFDD0\", \"precision\": \"fp\\u000032\"}";
  assert_int_equal(hm_train_parse(both, strlen(both), NULL, &t), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "train.precision: contains U+0000 (\"fp\\u000032\")"));
  /* plan.json too */
  hm_plan plan;
  const char *pj = "{\"version\": 1, \"format\": \"hetmix\\u0000-plan\"}";
  assert_int_equal(hm_plan_parse(pj, strlen(pj), NULL, NULL, &plan, NULL, NULL, NULL), HM_ERR_SPEC);
  assert_non_null(strstr(hm_last_error(), "plan.format: contains U+0000"));
}

/* A field path longer than the message buffer ends in "..." instead of silently naming a
 * shorter path (and compiles warning-free at -O3, where GCC checks the truncation). */
static void test_long_path_marked(void **state) {
  (void)state;
  char parent[400], buf[HM_JSON_PATH_MAX];
  memset(parent, 'a', sizeof parent - 1);
  parent[sizeof parent - 1] = '\0';
  hm_json_path_key(buf, parent, "key");
  assert_int_equal(strlen(buf), HM_JSON_PATH_MAX - 1);
  assert_string_equal(buf + HM_JSON_PATH_MAX - 4, "...");
  hm_json_path_index(buf, parent, 7);
  assert_string_equal(buf + HM_JSON_PATH_MAX - 4, "...");
  hm_json_path_key(buf, "cluster", "hosts");
  assert_string_equal(buf, "cluster.hosts");
  hm_json_path_index(buf, "cluster.hosts", 3);
  assert_string_equal(buf, "cluster.hosts[3]");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_field_mistyped_or_missing),
                                     cmocka_unit_test(test_bad_fields),
                                     cmocka_unit_test(test_bad_documents),
                                     cmocka_unit_test(test_long_path_marked),
                                     cmocka_unit_test(test_nul_in_every_string),
                                     cmocka_unit_test(test_nul_messages)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
