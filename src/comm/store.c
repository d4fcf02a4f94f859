/* The rendezvous store: a small key-value server (one thread with poll) that ranks use to find
 * each other at bootstrap. Keys live in the namespace of the job tag a client authenticated
 * for; GET waits until the key exists (the client bounds the wait with its deadline).
 * One process-wide server backs hm_get_unique_id(); hm_comm_init_env() runs a dedicated one on
 * rank 0 for the bootstrap only. Not used after bootstrap: splits exchange over the parent. */
#include <errno.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define STORE_MAX_CLIENTS 1024
#define STORE_MAX_VALUE 65536

typedef struct store_kv {
  char key[2 * HM_WIRE_TAG_BYTES + 2 + HM_WIRE_MAX_KEY];
  unsigned char *val;
  size_t len;
  struct store_kv *next;
} store_kv;

typedef struct store_job {
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
  struct store_job *next;
} store_job;

/* A connection: authenticated step by step inside the poll loop (a silent or slow peer holds
 * up nobody), frames read incrementally without blocking. */
enum { CL_HELLO = 0, CL_RESPONSE, CL_AUTHED };
typedef struct store_client {
  int fd, state;
  uint64_t deadline_ns; /* for finishing authentication */
  char who[64];
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
  unsigned char hello[HM_WIRE_HELLO_BYTES];
  unsigned char nonce[HM_WIRE_NONCE_BYTES];
  unsigned char hdr[HM_WIRE_HDR_BYTES];
  hm_wire_hdr h;
  size_t off;            /* bytes of the current frame read (header + payload) */
  unsigned char *payload;
  char waiting[2 * HM_WIRE_TAG_BYTES + 2 + HM_WIRE_MAX_KEY]; /* parked GET ("" if none) */
} store_client;

struct hm_store_server {
  int lfd;
  pthread_t thread;
  _Atomic int stop;
  pthread_mutex_t mu; /* guards jobs (added from other threads) */
  sem_t started;      /* posted once the thread holds g_store_work_mu */
  store_job *jobs;
  store_kv *kv;
  store_client clients[STORE_MAX_CLIENTS];
  int nclients;
  unsigned char *buf;
};

static void full_key(const unsigned char *tag, const char *key, char *out, size_t cap) {
  char hex[2 * HM_WIRE_TAG_BYTES + 1];
  for (int i = 0; i < HM_WIRE_TAG_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", tag[i]);
  snprintf(out, cap, "%s/%s", hex, key);
}

static const unsigned char *lookup_secret(const unsigned char *tag, void *arg) {
  hm_store_server *s = arg;
  const unsigned char *found = NULL;
  pthread_mutex_lock(&s->mu);
  for (store_job *j = s->jobs; j; j = j->next)
    if (memcmp(j->tag, tag, HM_WIRE_TAG_BYTES) == 0) found = j->secret;
  pthread_mutex_unlock(&s->mu);
  return found;
}

static store_kv *kv_find(hm_store_server *s, const char *key) {
  for (store_kv *e = s->kv; e; e = e->next)
    if (strcmp(e->key, key) == 0) return e;
  return NULL;
}

static void drop_client(hm_store_server *s, int i) {
  close(s->clients[i].fd);
  free(s->clients[i].payload);
  s->clients[i] = s->clients[--s->nclients];
}

static int reply_value(store_client *c, const store_kv *e) {
  return hm_net_send_frame(c->fd, HM_WIRE_STORE_VALUE, 0, 0, 0, e->val, (uint32_t)e->len,
                           hm_deadline_after_ms(2000)) == HM_OK;
}

static int refuse(store_client *c, const char *why) {
  hm_log(HM_LOG_WARN, "refused connection from %s: %s", c->who, why);
  return 0;
}

/* One complete frame from client c; returns 0 to drop it. */
static int serve_frame(hm_store_server *s, store_client *c) {
  const hm_wire_hdr *h = &c->h;
  const unsigned char *pl = c->payload;
  if (c->state == CL_HELLO) {
    hm_wire_hello hello;
    if (h->type != HM_WIRE_HELLO) return refuse(c, "expected a hello");
    if (hm_wire_decode_hello(pl, h->len, &hello) != HM_OK) return refuse(c, hm_last_error());
    if (hello.purpose != HM_CONN_STORE) return refuse(c, "not a store connection");
    const unsigned char *secret = lookup_secret(hello.tag, s);
    if (!secret) return refuse(c, "unknown job");
    memcpy(c->tag, hello.tag, sizeof c->tag);
    memcpy(c->secret, secret, sizeof c->secret);
    memcpy(c->hello, pl, HM_WIRE_HELLO_BYTES);
    unsigned char ch[HM_WIRE_NONCE_BYTES + HM_WIRE_MAC_BYTES];
    hm_random_bytes(ch, HM_WIRE_NONCE_BYTES);
    memcpy(c->nonce, ch, HM_WIRE_NONCE_BYTES);
    hm_auth_mac(c->secret, "hmx-a", c->hello, c->nonce, ch + HM_WIRE_NONCE_BYTES);
    c->state = CL_RESPONSE;
    /* a fresh connection's send buffer is empty: this does not block */
    return hm_net_send_frame(c->fd, HM_WIRE_CHALLENGE, 0, 0, 0, ch, sizeof ch, hm_deadline_after_ms(500)) == HM_OK;
  }
  if (c->state == CL_RESPONSE) {
    unsigned char want[HM_WIRE_MAC_BYTES];
    hm_auth_mac(c->secret, "hmx-c", c->hello, c->nonce, want);
    if (h->type != HM_WIRE_RESPONSE || h->len != HM_WIRE_MAC_BYTES || CRYPTO_memcmp(want, pl, sizeof want) != 0)
      return refuse(c, "authentication with the job secret failed");
    c->state = CL_AUTHED;
    return hm_net_send_frame(c->fd, HM_WIRE_AUTH_OK, 0, 0, 0, NULL, 0, hm_deadline_after_ms(500)) == HM_OK;
  }
  char key[HM_WIRE_MAX_KEY + 1];
  char fk[sizeof c->waiting];
  if (h->type == HM_WIRE_STORE_SET) {
    const unsigned char *val;
    size_t vl;
    if (hm_wire_decode_store_set(pl, h->len, key, &val, &vl) != HM_OK || vl > STORE_MAX_VALUE) {
      hm_log(HM_LOG_WARN, "store: bad set from %s: %s", c->who, hm_last_error());
      return 0;
    }
    full_key(c->tag, key, fk, sizeof fk);
    store_kv *e = kv_find(s, fk);
    if (!e) {
      e = calloc(1, sizeof *e);
      if (!e) return 0;
      snprintf(e->key, sizeof e->key, "%s", fk);
      e->next = s->kv;
      s->kv = e;
    }
    unsigned char *nv = malloc(vl ? vl : 1);
    if (!nv) return 0;
    memcpy(nv, val, vl);
    free(e->val);
    e->val = nv;
    e->len = vl;
    for (int i = 0; i < s->nclients; i++) {
      store_client *w = &s->clients[i];
      if (w->waiting[0] && strcmp(w->waiting, fk) == 0) {
        w->waiting[0] = '\0';
        reply_value(w, e); /* a failed reply surfaces as EOF on the next poll */
      }
    }
    return 1;
  }
  if (h->type == HM_WIRE_STORE_GET) {
    if (hm_wire_decode_store_key(pl, h->len, key) != HM_OK) {
      hm_log(HM_LOG_WARN, "store: bad get from %s: %s", c->who, hm_last_error());
      return 0;
    }
    full_key(c->tag, key, fk, sizeof fk);
    store_kv *e = kv_find(s, fk);
    if (e) return reply_value(c, e);
    snprintf(c->waiting, sizeof c->waiting, "%s", fk);
    return 1;
  }
  hm_log(HM_LOG_WARN, "store: unexpected frame type %u from %s", (unsigned)h->type, c->who);
  return 0;
}

/* Reads what is there; serves every complete frame. Returns 0 to drop the client. */
static int client_readable(hm_store_server *s, store_client *c) {
  for (;;) {
    unsigned char *dst;
    size_t want;
    if (c->off < HM_WIRE_HDR_BYTES) {
      dst = c->hdr + c->off;
      want = HM_WIRE_HDR_BYTES - c->off;
    } else {
      dst = c->payload + (c->off - HM_WIRE_HDR_BYTES);
      want = HM_WIRE_HDR_BYTES + c->h.len - c->off;
    }
    ssize_t got = want ? recv(c->fd, dst, want, MSG_DONTWAIT) : 0;
    if (want && got == 0) return c->state == CL_AUTHED ? 0 : refuse(c, "closed during authentication");
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 1;
      return c->state == CL_AUTHED ? 0 : refuse(c, strerror(errno));
    }
    c->off += (size_t)got;
    if (c->off == HM_WIRE_HDR_BYTES && want) {
      if (hm_wire_decode_header(c->hdr, HM_WIRE_HDR_BYTES, &c->h) != HM_OK)
        return c->state == CL_AUTHED ? (hm_log(HM_LOG_WARN, "store: %s: %s", c->who, hm_last_error()), 0)
                                     : refuse(c, hm_last_error());
      size_t limit = c->state == CL_AUTHED ? STORE_MAX_VALUE + HM_WIRE_MAX_KEY + 2 : HM_WIRE_HELLO_BYTES;
      if (c->h.len > limit) return refuse(c, "frame too large");
      free(c->payload);
      c->payload = malloc(c->h.len ? c->h.len : 1);
      if (!c->payload) return 0;
    }
    if (c->off >= HM_WIRE_HDR_BYTES && c->off == HM_WIRE_HDR_BYTES + c->h.len) {
      if (!serve_frame(s, c)) return 0;
      c->off = 0;
    }
  }
}

/* Store threads hold this while they work (allocate, hash, reply) and release it while they wait
 * in poll(). fork() takes it first (pthread_atfork), so a child is never born while a store
 * thread is inside an allocator lock it would inherit locked (ASan's allocator, for one, is not
 * fork-safe): a parent can make an id, keep serving the store and fork its ranks. */
static pthread_mutex_t g_store_work_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_store_fork_once = PTHREAD_ONCE_INIT;
static void store_fork_prepare(void) { pthread_mutex_lock(&g_store_work_mu); }
static void store_fork_parent(void) { pthread_mutex_unlock(&g_store_work_mu); }
static void store_atfork_child(void);
static void store_fork_child(void) {
  pthread_mutex_init(&g_store_work_mu, NULL);
  store_atfork_child();
}
static void store_fork_setup(void) {
  pthread_atfork(store_fork_prepare, store_fork_parent, store_fork_child);
}

static void *store_main(void *arg) {
  hm_store_server *s = arg;
  pthread_mutex_lock(&g_store_work_mu);
  sem_post(&s->started); /* the thread's start-up (allocating) is over: see hm_store_server_start */
  struct pollfd *pf = malloc(sizeof(struct pollfd) * (STORE_MAX_CLIENTS + 1));
  if (!pf) {
    pthread_mutex_unlock(&g_store_work_mu);
    return NULL;
  }
  while (!atomic_load(&s->stop)) {
    int n = 0;
    /* Accept only once a job is registered: the server starts listening before its first
     * add_job, and a client connecting in between would be refused as unknown. Until then the
     * kernel's backlog holds it and its own authentication deadline keeps running. */
    pthread_mutex_lock(&s->mu);
    const int have_jobs = s->jobs != NULL;
    pthread_mutex_unlock(&s->mu);
    pf[n++] = (struct pollfd){s->lfd, have_jobs ? POLLIN : 0, 0};
    for (int i = 0; i < s->nclients; i++) pf[n++] = (struct pollfd){s->clients[i].fd, POLLIN, 0};
    pthread_mutex_unlock(&g_store_work_mu);
    int rc = poll(pf, (nfds_t)n, 50);
    pthread_mutex_lock(&g_store_work_mu);
    uint64_t now = hm_now_ns();
    /* clients first (indices shift when one is dropped, so walk backwards) */
    for (int i = s->nclients - 1; i >= 0; i--) {
      store_client *c = &s->clients[i];
      int ok = 1;
      if (rc > 0 && (pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) ok = client_readable(s, c);
      if (ok && c->state != CL_AUTHED && now > c->deadline_ns) ok = refuse(c, "authentication timed out");
      if (!ok) drop_client(s, i);
    }
    if (rc > 0 && (pf[0].revents & POLLIN)) {
      for (int k = 0; k < 64 && s->nclients < STORE_MAX_CLIENTS; k++) {
        int fd;
        char who[64];
        if (hm_net_accept(s->lfd, 1 /* already passed: no wait */, &fd, who, sizeof who) != HM_OK) break;
        store_client *c = &s->clients[s->nclients++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->state = CL_HELLO;
        c->deadline_ns = hm_deadline_after_ms(5000);
        snprintf(c->who, sizeof c->who, "%s", who);
      }
    }
  }
  free(pf);
  OPENSSL_thread_stop(); /* per-thread crypto state of the HMACs this thread computed */
  pthread_mutex_unlock(&g_store_work_mu);
  return NULL;
}

hm_status hm_store_server_start(const char *addr, int port, const unsigned char *tag,
                                const unsigned char *secret, hm_store_server **out, int *bound_port) {
  /* load OpenSSL's configuration here, not lazily in the server thread (whose per-thread state
   * would then outlive it) */
  OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
  pthread_once(&g_store_fork_once, store_fork_setup);
  hm_store_server *s = hm_calloc(1, sizeof *s, "rendezvous store");
  if (!s) return HM_ERR_NOMEM;
  s->buf = hm_malloc(STORE_MAX_VALUE + HM_WIRE_MAX_KEY + 16, "store buffer");
  if (!s->buf) {
    free(s);
    return HM_ERR_NOMEM;
  }
  hm_status st = hm_net_listen(addr, port, &s->lfd, bound_port);
  if (st != HM_OK) {
    free(s->buf);
    free(s);
    return hm_error_context(st, "rendezvous store: ");
  }
  pthread_mutex_init(&s->mu, NULL);
  /* the first job is known before the thread accepts anyone (no refusal race at startup) */
  if (tag && (st = hm_store_server_add_job(s, tag, secret)) != HM_OK) {
    close(s->lfd);
    free(s->buf);
    free(s);
    return st;
  }
  /* A new thread allocates before it reaches store_main (libc's and the sanitizers' thread
   * set-up), outside g_store_work_mu: return only once it holds the mutex, so a fork right after
   * (a parent forking its ranks after hm_get_unique_id) cannot copy an allocator lock it holds. */
  int sem_ok = sem_init(&s->started, 0, 0) == 0;
  if (!sem_ok || pthread_create(&s->thread, NULL, store_main, s) != 0) {
    if (sem_ok) sem_destroy(&s->started);
    close(s->lfd);
    free(s->buf);
    free(s);
    return hm_error(HM_ERR_INTERNAL, "rendezvous store: cannot start its thread");
  }
  while (sem_wait(&s->started) != 0 && errno == EINTR) {
  }
  sem_destroy(&s->started);
  *out = s;
  return HM_OK;
}

hm_status hm_store_server_add_job(hm_store_server *s, const unsigned char tag[HM_WIRE_TAG_BYTES],
                                  const unsigned char secret[HM_SECRET_BYTES]) {
  store_job *j = hm_calloc(1, sizeof *j, "store job");
  if (!j) return HM_ERR_NOMEM;
  memcpy(j->tag, tag, HM_WIRE_TAG_BYTES);
  memcpy(j->secret, secret, HM_SECRET_BYTES);
  pthread_mutex_lock(&s->mu);
  j->next = s->jobs;
  s->jobs = j;
  pthread_mutex_unlock(&s->mu);
  return HM_OK;
}

void hm_store_server_stop(hm_store_server *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
  for (int i = 0; i < s->nclients; i++) close(s->clients[i].fd), free(s->clients[i].payload);
  close(s->lfd);
  while (s->kv) {
    store_kv *e = s->kv;
    s->kv = e->next;
    free(e->val);
    free(e);
  }
  while (s->jobs) {
    store_job *j = s->jobs;
    s->jobs = j->next;
    free(j);
  }
  pthread_mutex_destroy(&s->mu);
  free(s->buf);
  free(s);
}

/* ---- the process-wide server ---- */
static pthread_mutex_t g_store_mu = PTHREAD_MUTEX_INITIALIZER;
static hm_store_server *g_store;
static int g_store_port;
static char g_store_host[64];
static int g_atfork_set;

/* A forked child has the parent's memory but not its store thread: forget the server there
 * (the child still reaches the parent's store over its socket). */
static void store_atfork_child(void) {
  g_store = NULL;
  pthread_mutex_init(&g_store_mu, NULL);
}

static void store_atexit(void) {
  pthread_mutex_lock(&g_store_mu);
  hm_store_server *s = g_store;
  g_store = NULL;
  pthread_mutex_unlock(&g_store_mu);
  hm_store_server_stop(s);
}

hm_status hm_store_global(hm_store_server **out, char *host, size_t host_cap, int *port) {
  pthread_mutex_lock(&g_store_mu);
  if (!g_atfork_set) {
    /* OpenSSL registers its own exit cleanup on first use: do that first, so it runs after ours
     * (our handler joins the store thread, whose HMACs need the library) */
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
    atexit(store_atexit);
    g_atfork_set = 1;
  }
  hm_status st = HM_OK;
  if (!g_store) {
    const char *addr = getenv("HETMIX_STORE_ADDR");
    char h[64] = "127.0.0.1";
    int p = 0;
    if (addr && *addr) {
      const char *colon = strrchr(addr, ':');
      size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
      if (hl >= sizeof h) hl = sizeof h - 1;
      memcpy(h, addr, hl);
      h[hl] = '\0';
      if (colon) p = atoi(colon + 1);
    }
    st = hm_store_server_start(h, p, NULL, NULL, &g_store, &g_store_port);
    if (st == HM_OK) snprintf(g_store_host, sizeof g_store_host, "%s", h);
  }
  if (st == HM_OK) {
    *out = g_store;
    hm_strcpy(host, host_cap, g_store_host);
    *port = g_store_port;
  }
  pthread_mutex_unlock(&g_store_mu);
  return st;
}

/* ---- client ---- */
hm_status hm_store_connect(hm_store_client *c, const char *host, int port,
                           const unsigned char tag[HM_WIRE_TAG_BYTES],
                           const unsigned char secret[HM_SECRET_BYTES], int rank,
                           uint64_t deadline_ns) {
  c->fd = -1;
  c->deadline_ns = deadline_ns;
  hm_status st = hm_net_connect(host, port, deadline_ns, &c->fd);
  if (st != HM_OK) return hm_error_context(st, "rendezvous store %s:%d: ", host, port);
  st = hm_auth_connect(c->fd, tag, secret, rank, HM_CONN_STORE, deadline_ns);
  if (st != HM_OK) {
    hm_store_close(c);
    return hm_error_context(st, "rendezvous store %s:%d: ", host, port);
  }
  return HM_OK;
}

hm_status hm_store_set(hm_store_client *c, const char *key, const void *val, size_t len) {
  if (len > STORE_MAX_VALUE) return hm_error(HM_ERR_INVALID_ARG, "store value of %zu bytes too large", len);
  size_t cap = 2 + strlen(key) + len;
  unsigned char *buf = hm_malloc(cap, "store set");
  if (!buf) return HM_ERR_NOMEM;
  size_t n = hm_wire_encode_store_set(buf, cap, key, val, len);
  hm_status st = n ? hm_net_send_frame(c->fd, HM_WIRE_STORE_SET, 0, 0, 0, buf, (uint32_t)n, c->deadline_ns)
                   : hm_error(HM_ERR_INVALID_ARG, "store key '%s' too long", key);
  free(buf);
  return st;
}

hm_status hm_store_get(hm_store_client *c, const char *key, void *val, size_t *len) {
  HM_TRY(hm_net_send_frame(c->fd, HM_WIRE_STORE_GET, 0, 0, 0, key, (uint32_t)strlen(key), c->deadline_ns));
  hm_wire_hdr h;
  hm_status st = hm_net_recv_frame(c->fd, &h, val, *len, c->deadline_ns);
  if (st == HM_ERR_TIMEOUT)
    return hm_error(HM_ERR_TIMEOUT, "rendezvous: timed out waiting for '%s' (a rank did not start?)", key);
  if (st != HM_OK) return hm_error_context(st, "rendezvous: get '%s': ", key);
  if (h.type != HM_WIRE_STORE_VALUE)
    return hm_error(HM_ERR_PROTOCOL, "rendezvous: unexpected reply type %u", (unsigned)h.type);
  *len = h.len;
  return HM_OK;
}

void hm_store_close(hm_store_client *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}
