/* The simulated NVIDIA driver's machine description: a small JSON reader and the lookup of machine.json.
 *
 * Included by nvml_sim.c and cuda_sim.c (each library gets its own static copy). The description is the file
 * machine.json in the folder the library was loaded from (found with dladdr), so a process finds it exactly as
 * it finds the library: through the library search path. Nothing in fatdispatch names it.
 *
 * Test-only code: it trusts its input to be the JSON the test helper wrote, but never reads out of bounds. */
#ifndef SIM_MACHINE_H
#define SIM_MACHINE_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jkind;

typedef struct jnode {
    jkind kind;
    double num;
    char *str;             /* J_STR value; key of an object member */
    char *key;
    struct jnode *child;   /* first element / member */
    struct jnode *next;    /* next sibling */
} jnode;

typedef struct { const char *p, *end; int err; } jparser;

static void j_ws(jparser *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

static jnode *j_new(jkind k) {
    jnode *n = calloc(1, sizeof *n);
    if (n) n->kind = k;
    return n;
}

static char *j_string(jparser *s) {
    /* s->p at the opening quote */
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    if (!out) { s->err = 1; return NULL; }
    s->p++;
    while (s->p < s->end && *s->p != '"') {
        char c = *s->p++;
        if (c == '\\' && s->p < s->end) {
            char e = *s->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': { /* ASCII only: the descriptions are ASCII */
                unsigned v = 0;
                for (int i = 0; i < 4 && s->p < s->end; i++, s->p++) {
                    char h = *s->p;
                    v = v * 16 + (unsigned)(h >= 'a' ? h - 'a' + 10 : h >= 'A' ? h - 'A' + 10 : h - '0');
                }
                c = v < 128 ? (char)v : '?';
                break;
            }
            default: c = e;
            }
        }
        if (len + 2 > cap) {
            char *bigger = realloc(out, cap *= 2);
            if (!bigger) { free(out); s->err = 1; return NULL; }
            out = bigger;
        }
        out[len++] = c;
    }
    if (s->p >= s->end) { s->err = 1; free(out); return NULL; }
    s->p++;
    out[len] = 0;
    return out;
}

static jnode *j_value(jparser *s, int depth) {
    j_ws(s);
    if (s->p >= s->end || depth > 64) { s->err = 1; return NULL; }
    char c = *s->p;
    jnode *n = NULL;
    if (c == '{' || c == '[') {
        n = j_new(c == '{' ? J_OBJ : J_ARR);
        if (!n) { s->err = 1; return NULL; }
        char close = c == '{' ? '}' : ']';
        s->p++;
        jnode **tail = &n->child;
        j_ws(s);
        if (s->p < s->end && *s->p == close) { s->p++; return n; }
        for (;;) {
            char *key = NULL;
            j_ws(s);
            if (n->kind == J_OBJ) {
                if (s->p >= s->end || *s->p != '"') { s->err = 1; return n; }
                key = j_string(s);
                j_ws(s);
                if (s->err || s->p >= s->end || *s->p != ':') { s->err = 1; free(key); return n; }
                s->p++;
            }
            jnode *v = j_value(s, depth + 1);
            if (!v) { free(key); return n; }
            v->key = key;
            *tail = v;
            tail = &v->next;
            j_ws(s);
            if (s->p < s->end && *s->p == ',') { s->p++; continue; }
            if (s->p < s->end && *s->p == close) { s->p++; return n; }
            s->err = 1;
            return n;
        }
    }
    if (c == '"') {
        n = j_new(J_STR);
        if (n) n->str = j_string(s);
        return n;
    }
    if (!strncmp(s->p, "true", 4) || !strncmp(s->p, "false", 5)) {
        n = j_new(J_BOOL);
        if (n) n->num = *s->p == 't';
        s->p += *s->p == 't' ? 4 : 5;
        return n;
    }
    if (!strncmp(s->p, "null", 4)) {
        s->p += 4;
        return j_new(J_NULL);
    }
    char *stop;
    double v = strtod(s->p, &stop);
    if (stop == s->p) { s->err = 1; return NULL; }
    s->p = stop;
    n = j_new(J_NUM);
    if (n) n->num = v;
    return n;
}

static const jnode *j_get(const jnode *obj, const char *key) {
    if (!obj || obj->kind != J_OBJ) return NULL;
    for (const jnode *m = obj->child; m; m = m->next)
        if (m->key && !strcmp(m->key, key)) return m;
    return NULL;
}

static const jnode *j_at(const jnode *arr, int i) {
    if (!arr || arr->kind != J_ARR) return NULL;
    const jnode *m = arr->child;
    while (m && i-- > 0) m = m->next;
    return m;
}

static int j_len(const jnode *arr) {
    int n = 0;
    if (arr && (arr->kind == J_ARR || arr->kind == J_OBJ))
        for (const jnode *m = arr->child; m; m = m->next) n++;
    return n;
}

static const char *j_str(const jnode *n, const char *dflt) { return n && n->kind == J_STR ? n->str : dflt; }
static long j_int(const jnode *n, long dflt) { return n && (n->kind == J_NUM || n->kind == J_BOOL) ? (long)n->num : dflt; }

/* The description, parsed once. Returns NULL (with a message on stderr) if the file is missing or malformed. */
static const jnode *sim_machine(const void *self) {
    static const jnode *root;
    static int tried;
    if (tried) return root;
    tried = 1;
    Dl_info info;
    if (!dladdr(self, &info) || !info.dli_fname) {
        fprintf(stderr, "simdriver: dladdr failed; cannot find machine.json\n");
        return NULL;
    }
    char path[4096];
    const char *slash = strrchr(info.dli_fname, '/');
    size_t dir = slash ? (size_t)(slash - info.dli_fname) : 1;
    snprintf(path, sizeof path, "%.*s/machine.json", (int)dir, slash ? info.dli_fname : ".");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "simdriver: %s is missing\n", path);
        return NULL;
    }
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    jparser s = {buf, buf + n, 0};
    jnode *r = j_value(&s, 0);
    if (s.err || !r || r->kind != J_OBJ) {
        fprintf(stderr, "simdriver: %s is not a JSON object\n", path);
        return NULL;
    }
    root = r;
    return root;
}

/* The "nvidia" part of the description (driver facts, devices, faults). */
static const jnode *sim_nvidia(const void *self) { return j_get(sim_machine(self), "nvidia"); }

/* A call that the description says hangs never returns (sleeps in a loop: the caller's timeout must act). */
static void sim_maybe_hang(const jnode *obj, const char *key, const char *call) {
    const jnode *h = j_get(obj, key);
    int hang = 0;
    if (h && h->kind == J_STR) hang = !strcmp(h->str, call);
    else if (h && h->kind == J_ARR)
        for (const jnode *m = h->child; m; m = m->next) hang |= m->kind == J_STR && !strcmp(m->str, call);
    while (hang) {
        struct timespec ts = {3600, 0};
        nanosleep(&ts, NULL);
    }
}

#endif
