/* _fatdispatch: fatdispatch's import path, compiled, and the only one: the registry of fat modules, the meta-path
 * finder and loader (this module itself), the checks every build file passes before it is loaded, the per-user
 * private-file reader and the pick cache (its key, its entry, its reader), plus the CPU primitives of _cpuid.c.
 *
 * A fat package's __init__.py holds one line, written by fatdispatch's build helper (the wiring contract):
 *
 *     __import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module
 *
 * install() registers mypkg._core and puts this module on sys.meta_path; `import mypkg._core` then runs
 * create_module, which binds the best build under that stable name with CPython's own extension loader.  The
 * module is the extension itself (no proxy), with __fatdispatch_variant__ set.
 *
 * Two ways to the same binding, sharing every check here:
 * - a cached pick (load_cached): the per-user pick cache remembers the build chosen for a variants folder with
 *   everything the choice rests on; it answers only while all of that is unchanged, and the build is checked
 *   again as the full path checks it (requirements against this CPU, identity, ELF header);
 * - the full path (fatdispatch._load, Python): read the manifest, probe, decide, load with fallback, remember a
 *   clean first choice.  It calls check_build, load_extension, pick_key and pick_entry here, so each rule has
 *   one implementation.  It is reached through full_path(), the only place this module imports anything of
 *   the fatdispatch package (tests/test_layers.py checks that).
 *
 * Why compiled: on a cached pick this module is all fatdispatch costs an import, and one compiled module (with
 * the CPUID it needs anyway) costs less than the smallest Python module on top of it; see the README's
 * "Import path" section for the figures and what it costs in lines.  Everything here is what an import needs;
 * the decision and its reasons stay in Python.
 *
 * Python's own rules are followed where they matter: paths are encoded with the file system encoding
 * (surrogateescape), errors are OSError with errno, nothing blocks (O_NONBLOCK), nothing follows a symlink
 * where a private file is read (O_NOFOLLOW), and no Python code runs while the registry or sys.meta_path is
 * changed (so no lock is needed beyond the GIL).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpuid.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#if defined(_WIN32)
#error "fatdispatch's compiled import path is written for POSIX systems (Linux, macOS); Windows is not supported yet"
#endif
#include <dirent.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NONBLOCK
#define O_NONBLOCK 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif
#define FD_O_READ (O_RDONLY | O_CLOEXEC | O_NONBLOCK)

#if defined(__APPLE__)
#define FD_NS(st, which) ((long long)(st)->st_##which##timespec.tv_sec * 1000000000LL + (st)->st_##which##timespec.tv_nsec)
#else
#define FD_NS(st, which) ((long long)(st)->st_##which##tim.tv_sec * 1000000000LL + (st)->st_##which##tim.tv_nsec)
#endif

/* Where a pick can be keyed: the CPU words are CPUID's (x86-64), the checks are Linux's. */
#if defined(__linux__) && defined(__x86_64__)
#define FD_PICKS_HERE 1
#else
#define FD_PICKS_HERE 0
#endif

/* The manifest contract's two names (fatdispatch._manifest owns them; tests/test_layers.py checks they agree). */
#define VARIANTS_SUFFIX ".variants"
#define MANIFEST_NAME "manifest.json"
/* under $XDG_CACHE_HOME (or ~/.cache), else $XDG_RUNTIME_DIR, else $TMPDIR/fatdispatch-<euid> (see bases()) */
#define CACHE_DIR "fatdispatch"
#define PICKS_DIR "picks-v3"
#define PICKS_FORMAT "fatdispatch-pick 3"
#define PICKS_KEEP 64                    /* entries kept (one per variants folder ever imported) */
#define PICKS_LIMIT 8192                 /* bytes; an entry is ~0.7 KB */
#define ENTRY_FIELDS 11
/* An NVIDIA driver on Linux shows one of these (WSL2 has no /proc/driver/nvidia). */
static const char *const LINUX_DRIVER_FILES[2] = {"/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libnvidia-ml.so.1"};

extern char **environ;

typedef struct {
    native_state cpu;            /* _cpuid.c's part: first, so its casts of the module state hold */
    PyObject *registry;          /* fat module -> its variants folder */
    PyObject *hits;              /* fat module -> (build, path) bound from the pick cache */
    char runtime_id[512];        /* what identifies fatdispatch's own files (made on first use) */
    char cache_tag[64];          /* sys.implementation.cache_tag */
    unsigned long hexversion;    /* sys.hexversion: this interpreter, not the one the module was built for */
    PyObject *ModuleSpec, *ExtensionFileLoader, *create_dynamic, *exec_dynamic;
} fd_module_state;

#define STATE(m) ((fd_module_state *)PyModule_GetState(m))

/* ================================================================ small helpers
 *
 * A pick cache hit is made of C strings and system calls: on a small VM the first call of each function of
 * the interpreter that nothing else used yet costs a page fault (~10-25 us), more than the work, so the hit
 * touches as little of the Python C API as it can.  The Python-facing functions below wrap the same code. */

static int absolute(PyObject *s)
{
    return s != NULL && PyUnicode_Check(s) && PyUnicode_GET_LENGTH(s) > 0 && PyUnicode_READ_CHAR(s, 0) == '/';
}

/* The str form of a path argument (str, bytes or os.PathLike), new reference. */
static PyObject *path_str(PyObject *arg)
{
    PyObject *p = PyOS_FSPath(arg), *s;
    if (p == NULL || PyUnicode_Check(p))
        return p;
    s = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p));
    Py_DECREF(p);
    return s;
}

/* The file-system bytes of a path (str, bytes or os.PathLike; embedded NULs refused), new reference. */
static PyObject *fs_bytes(PyObject *s)
{
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(s, &b))
        return NULL;
    return b;
}

/* stat() of a str path: 0, or -1 with errno (and no Python error) where it cannot be stat'ed. */
static int stat_str(PyObject *path, struct stat *st)
{
    PyObject *b = fs_bytes(path);
    int rc;
    if (b == NULL) {
        PyErr_Clear();
        errno = EINVAL;
        return -1;
    }
    rc = stat(PyBytes_AS_STRING(b), st);
    Py_DECREF(b);
    return rc;
}

/* Text built in a fixed buffer; full is set (and nothing more written) where it does not fit. */
typedef struct {
    char *p;
    size_t cap, len;
    int full;
} fd_text;

static void tx_bytes(fd_text *t, const char *s, size_t n)
{
    if (t->full || t->len + n + 1 > t->cap) {
        t->full = 1;
        return;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = 0;
}

static void tx_str(fd_text *t, const char *s)
{
    tx_bytes(t, s, strlen(s));
}

static void tx_num(fd_text *t, unsigned long long v, int negative)
{
    char digits[24];
    int n = 0;
    do
        digits[sizeof(digits) - 1 - n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    if (negative)
        digits[sizeof(digits) - 1 - n++] = '-';
    tx_bytes(t, digits + sizeof(digits) - n, (size_t)n);
}

static void tx_signed(fd_text *t, long long v)
{
    tx_num(t, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v, v < 0);
}

/* Arbitrary bytes as one word of the key: percent-encoded outside [A-Za-z0-9._/:,+-]. */
static void tx_word(fd_text *t, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("._/:,+-", c))) {
            tx_bytes(t, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            tx_bytes(t, e, 3);
        }
    }
}

/* identity: device, inode, size, mtime, ctime (which no utime() can restore) and link count, written as
 * Python writes the tuple of them. */
static void tx_identity(fd_text *t, const struct stat *st)
{
    tx_str(t, "(");
    tx_num(t, (unsigned long long)st->st_dev, 0);
    tx_str(t, ", ");
    tx_num(t, (unsigned long long)st->st_ino, 0);
    tx_str(t, ", ");
    tx_signed(t, (long long)st->st_size);
    tx_str(t, ", ");
    tx_signed(t, FD_NS(st, m));
    tx_str(t, ", ");
    tx_signed(t, FD_NS(st, c));
    tx_str(t, ", ");
    tx_num(t, (unsigned long long)st->st_nlink, 0);
    tx_str(t, ")");
}

static PyObject *identity(const struct stat *st)
{
    char buf[160];
    fd_text t = {buf, sizeof(buf), 0, 0};
    tx_identity(&t, st);
    return PyUnicode_FromStringAndSize(buf, (Py_ssize_t)t.len);
}

/* Call a function of posixpath (abspath, expanduser: the rare cases), new reference. */
static PyObject *call_os_path(const char *fn, PyObject *arg)
{
    PyObject *mod = PyImport_ImportModule("posixpath"), *r;
    if (mod == NULL)
        return NULL;
    r = PyObject_CallMethod(mod, fn, "O", arg);
    Py_DECREF(mod);
    return r;
}

/* The full path, fatdispatch._load: the one place this module reaches into the fatdispatch package. */
static PyObject *full_path(void)
{
    return PyImport_ImportModule("fatdispatch._load");
}

/* An environment value, as file-system bytes in buf (n bytes at most, NUL-terminated): 1 where it is set (even
 * to ""), 0 where it is not, -2 where it does not fit, -1 with an exception.  env is a mapping, or NULL for the process
 * environment (what os.environ reads, and writes through putenv: a pick cache hit asks no Python code). */
static int env_bytes(PyObject *env, const char *key, char *buf, size_t n)
{
    PyObject *v, *b;
    int found = 0;
    if (env == NULL) {
        const char *c = getenv(key);
        if (c == NULL)
            return 0;
        if (strlen(c) >= n)
            return -2;
        strcpy(buf, c);
        return 1;
    }
    if (PyDict_CheckExact(env)) {
        v = PyDict_GetItemString(env, key);
        Py_XINCREF(v);
    } else {
        v = PyObject_CallMethod(env, "get", "s", key);
        if (v == NULL)
            return -1;
    }
    if (v != NULL && PyUnicode_Check(v) && (b = PyUnicode_EncodeFSDefault(v)) != NULL) {
        if (strlen(PyBytes_AS_STRING(b)) != (size_t)PyBytes_GET_SIZE(b) || (size_t)PyBytes_GET_SIZE(b) >= n) {
            found = -2;  /* a NUL inside, or too long: not a value the key can hold */
        } else {
            memcpy(buf, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b) + 1);
            found = 1;
        }
        Py_DECREF(b);
    }
    Py_XDECREF(v);
    return PyErr_Occurred() ? -1 : found;
}

/* ================================================================ the checks every build passes, on either path */

/* The machines fatdispatch builds for, all 64-bit little-endian (an x86 build of i686 or an s390x one would need
 * their own class and byte order here). */
static const struct { const char *name; int em; } ELF_MACHINES[] = {
    {"x86_64", 62}, {"aarch64", 183}, {"ppc64le", 21},
};
#define N_ELF_MACHINES (sizeof(ELF_MACHINES) / sizeof(ELF_MACHINES[0]))

static unsigned long long le(const unsigned char *p, int n)
{
    unsigned long long v = 0;
    while (n-- > 0)
        v = (v << 8) | p[n];
    return v;
}

/* Why the open file cannot be a loadable ELF object for machine, written into why: 1 (a reason), 0 (it can), -1
 * (errno: it cannot be read).  dlopen of a truncated file maps segments past its end and dies with SIGBUS when
 * they are touched, so the header, the architecture and every program header and loadable segment are checked
 * first. */
static int elf_problem(int fd, unsigned long long size, const char *machine, char *why, size_t n)
{
    unsigned char head[4096], *table = NULL;
    const unsigned char *tab;
    ssize_t got = pread(fd, head, sizeof(head), 0);
    unsigned long long phoff, phentsize, phnum, total, i;
    int em, want = -1;
    size_t k;
    if (got < 0)
        return -1;
    if (got < 64 || memcmp(head, "\x7f" "ELF", 4) != 0)
        return snprintf(why, n, "not an ELF shared object"), 1;
    if (head[4] != 2 || head[5] != 1)
        return snprintf(why, n, "not a 64-bit little-endian ELF object"), 1;
    em = (int)le(head + 18, 2);
    for (k = 0; k < N_ELF_MACHINES; k++)
        if (strcmp(ELF_MACHINES[k].name, machine) == 0)
            want = ELF_MACHINES[k].em;
    if (want < 0)
        return snprintf(why, n, "built for ELF machine %d; fatdispatch knows no machine %s", em, machine), 1;
    if (em != want) {
        for (k = 0; k < N_ELF_MACHINES; k++)
            if (ELF_MACHINES[k].em == em)
                return snprintf(why, n, "built for %s, not %s", ELF_MACHINES[k].name, machine), 1;
        return snprintf(why, n, "built for ELF machine %d, not %s", em, machine), 1;
    }
    phoff = le(head + 32, 8);
    phentsize = le(head + 54, 2);
    phnum = le(head + 56, 2);
    total = phentsize * phnum;
    if (phentsize != 56 || phnum == 0)  /* an Elf64_Phdr is 56 bytes, as the dynamic loader requires */
        return snprintf(why, n, "not a loadable ELF object: %llu program headers of %llu bytes", phnum, phentsize), 1;
    if (phoff > size || total > size - phoff)
        return snprintf(why, n, "truncated: %llu bytes cannot hold its program headers", size), 1;
    if (phoff + total <= (unsigned long long)got) {
        tab = head + phoff;
    } else {  /* program headers beyond the first page (rare): read on their own */
        if ((table = (unsigned char *)malloc((size_t)total)) == NULL)
            return snprintf(why, n, "too many program headers (%llu)", phnum), 1;
        errno = 0;
        if (pread(fd, table, (size_t)total, (off_t)phoff) != (ssize_t)total) {
            free(table);
            if (errno == 0)
                errno = EIO;
            return -1;
        }
        tab = table;
    }
    for (i = 0; i + phentsize <= total; i += phentsize) {
        if (le(tab + i, 4) == 1) {  /* PT_LOAD: p_offset + p_filesz must lie inside the file */
            unsigned long long off = le(tab + i + 8, 8), filesz = le(tab + i + 32, 8);
            if (off > size || filesz > size - off) {
                if (filesz > ULLONG_MAX - off)
                    snprintf(why, n, "truncated: a segment ends past byte %llu, the file has %llu", ULLONG_MAX, size);
                else
                    snprintf(why, n, "truncated: a segment ends at byte %llu, the file has %llu", off + filesz, size);
                free(table);
                return 1;
            }
        }
    }
    free(table);
    return 0;
}

/* The checks of an open build file: a regular file (regular_only stops there) and, on Linux, a loadable ELF
 * object for machine.  0 (it passes; *st is its identity), 1 (a reason in why), -1 (errno: it cannot be read). */
static int check_fd(int fd, const char *machine, struct stat *st, char *why, size_t n, int regular_only)
{
    if (fstat(fd, st) != 0)
        return -1;
    if (!S_ISREG(st->st_mode))
        return snprintf(why, n, "not a regular file"), 1;
#if defined(__linux__)
    if (!regular_only)
        return elf_problem(fd, st->st_size < 0 ? 0 : (unsigned long long)st->st_size, machine, why, n);
#endif
    return 0;
}

static PyObject *refusal(PyObject *why)
{
    return why == NULL ? NULL : Py_BuildValue("(ssN)", "", "", why);
}

/* check_build(path, roots, machine): the checks a build file passes before it is loaded, on the full path
 * (a hit checks the same with check_fd and compares the identity it recorded). */
static PyObject *check_build_impl(PyObject *path, PyObject *roots, const char *machine)
{
    PyObject *bpath, *real = NULL, *result = NULL, *rootseq = NULL;
    char why[200];
    struct stat st;
    int fd, rc;
    Py_ssize_t nroots = 0, i;
    if (roots != Py_None) {
        rootseq = PySequence_Fast(roots, "roots must be a sequence of folders");
        if (rootseq == NULL)
            return NULL;
        nroots = PySequence_Fast_GET_SIZE(rootseq);
    }
    bpath = fs_bytes(path);
    if (bpath == NULL) {
        Py_XDECREF(rootseq);
        return NULL;
    }
    fd = open(PyBytes_AS_STRING(bpath), FD_O_READ);
    if (fd < 0) {
        const char *err = strerror(errno);
        Py_DECREF(bpath);
        Py_XDECREF(rootseq);
        return refusal(PyUnicode_FromFormat("%U: cannot open it: %s", path, err));
    }
    rc = check_fd(fd, machine, &st, why, sizeof(why), 1);  /* a regular file, then where it is, then its ELF */
    if (rc != 0)
        goto checked;
    if (nroots > 0) {
        char buf[PATH_MAX + 1];
        ssize_t n = -1;
#if defined(__linux__)
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);  /* the file this descriptor really has open */
        n = readlink(link, buf, PATH_MAX);
#endif
        if (n < 0 || n >= PATH_MAX) {
            char *r = realpath(PyBytes_AS_STRING(bpath), NULL);
            if (r == NULL) {
                result = refusal(PyUnicode_FromFormat("%U: cannot find where it really is: %s", path,
                                                      strerror(errno)));
                goto done;
            }
            real = PyUnicode_DecodeFSDefault(r);
            free(r);
        } else {
            real = PyUnicode_DecodeFSDefaultAndSize(buf, n);
        }
        if (real == NULL)
            goto done;
        for (i = 0; i < nroots; i++) {
            PyObject *root = PySequence_Fast_GET_ITEM(rootseq, i), *prefix;
            int inside;
            if (!PyUnicode_Check(root)) {
                PyErr_SetString(PyExc_TypeError, "roots must be folders (str)");
                goto done;
            }
            prefix = PyUnicode_FromFormat("%U/", root);
            if (prefix == NULL)
                goto done;
            inside = (int)PyUnicode_Tailmatch(real, prefix, 0, PY_SSIZE_T_MAX, -1);
            Py_DECREF(prefix);
            if (inside < 0)
                goto done;
            if (inside)
                break;
        }
        if (i == nroots) {
            PyObject *sep = PyUnicode_FromString(" or "), *joined;
            joined = sep == NULL ? NULL : PyUnicode_Join(sep, rootseq);
            Py_XDECREF(sep);
            if (joined != NULL)
                result = refusal(PyUnicode_FromFormat("%U: the file is really %U, outside its installed package "
                                                      "(%U); refusing to load it", path, real, joined));
            Py_XDECREF(joined);
            goto done;
        }
    }
#if defined(__linux__)
    rc = elf_problem(fd, st.st_size < 0 ? 0 : (unsigned long long)st.st_size, machine, why, sizeof(why));
#endif
checked:
    if (rc < 0)
        result = refusal(PyUnicode_FromFormat("%U: cannot read it: %s", path, strerror(errno)));
    else if (rc > 0)
        result = refusal(PyUnicode_FromFormat("%U: %s", path, why));
    else if (real != NULL || (real = PyUnicode_FromStringAndSize("", 0)) != NULL)  /* no roots: not looked up */
        result = Py_BuildValue("(NOO)", identity(&st), real, Py_None);
done:
    close(fd);
    Py_DECREF(bpath);
    Py_XDECREF(real);
    Py_XDECREF(rootseq);
    return result;
}

static PyObject *py_check_build(PyObject *self, PyObject *args)
{
    PyObject *arg, *roots, *path, *r;
    const char *machine;
    if (!PyArg_ParseTuple(args, "OOs:check_build", &arg, &roots, &machine))
        return NULL;
    if ((path = path_str(arg)) == NULL)
        return NULL;
    r = check_build_impl(path, roots, machine);
    Py_DECREF(path);
    return r;
}

static PyObject *load_extension_impl(PyObject *self, PyObject *name, PyObject *path, int amx)
{
    fd_module_state *st = STATE(self);
    PyObject *loader, *spec, *module, *kw, *r;
    if (amx) {
#ifdef FD_X86
        int granted = fd_request_amx();
#else
        int granted = 0;
#endif
        if (!granted) {
            PyErr_SetString(PyExc_ImportError, "the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM)");
            return NULL;
        }
    }
    loader = PyObject_CallFunctionObjArgs(st->ExtensionFileLoader, name, path, NULL);
    if (loader == NULL)
        return NULL;
    kw = Py_BuildValue("{s:O}", "origin", path);
    spec = NULL;
    if (kw != NULL) {
        PyObject *args = PyTuple_Pack(2, name, loader);
        if (args != NULL)
            spec = PyObject_Call(st->ModuleSpec, args, kw);
        Py_XDECREF(args);
    }
    Py_XDECREF(kw);
    Py_DECREF(loader);
    if (spec == NULL)
        return NULL;
    module = PyObject_CallOneArg(st->create_dynamic, spec);
    if (module == NULL || PyObject_SetAttrString(module, "__spec__", spec) < 0 ||
        PyObject_SetAttrString(module, "__file__", path) < 0 ||
        (r = PyObject_CallOneArg(st->exec_dynamic, module)) == NULL) {
        Py_DECREF(spec);
        Py_XDECREF(module);
        return NULL;
    }
    Py_DECREF(r);
    Py_DECREF(spec);
    return module;
}

static PyObject *py_load_extension(PyObject *self, PyObject *args)
{
    PyObject *name, *path;
    int amx;
    if (!PyArg_ParseTuple(args, "UUp:load_extension", &name, &path, &amx))
        return NULL;
    return load_extension_impl(self, name, path, amx);
}

/* ================================================================ per-user files (written by fatdispatch._privfile) */

/* The folders a per-user cache may live in, best first, as file-system bytes, with their kind:
 * BASE_HOME, $XDG_CACHE_HOME (or ~/.cache: may be a symlink, as users move it, but must be this user's and
 * writable by nobody else); BASE_RUNTIME, $XDG_RUNTIME_DIR (a per-boot 0700 folder of this user's, which keeps
 * picks where the home is read-only or another user's; it must be private); BASE_OWN, fatdispatch's own
 * $TMPDIR/fatdispatch-<euid> (else /tmp/...; for hosts with neither: containers, batch jobs), which
 * fatdispatch creates 0700 itself and never reaches through a symlink, so another user can only deny it (by
 * making that name first), never use it.  Relative values are ignored; a folder already listed is not listed
 * again.  How many (0-3), or -1 with an exception. */
enum { BASE_HOME, BASE_RUNTIME, BASE_OWN, NBASES };

static int bases(PyObject *env, char out[NBASES][PATH_MAX], int kind[NBASES])
{
    char home[PATH_MAX];  /* HOME, then TMPDIR */
    int n = 0, i, rc = env_bytes(env, "XDG_CACHE_HOME", out[0], PATH_MAX - 32);
    size_t len;
    if (rc == -1)
        return -1;
    if (rc == -2)  /* no such path can be used: as unset (so for the writer too, which asks the same) */
        rc = 0;
    if (rc == 0 || out[0][0] != '/') {
        rc = env_bytes(env, "HOME", home, PATH_MAX - 40);
        if (rc == -1)
            return -1;
        if (rc == -2)
            rc = 0;
        if (rc == 0 || home[0] == 0) {  /* no HOME: as os.path.expanduser("~") says */
            PyObject *tilde = PyUnicode_FromString("~"), *h = NULL, *b = NULL;
            h = tilde == NULL ? NULL : call_os_path("expanduser", tilde);
            b = h == NULL ? NULL : PyUnicode_EncodeFSDefault(h);
            Py_XDECREF(tilde);
            Py_XDECREF(h);
            if (b == NULL)
                return -1;
            home[0] = 0;
            if ((size_t)PyBytes_GET_SIZE(b) < PATH_MAX - 40)
                strcpy(home, PyBytes_AS_STRING(b));
            Py_DECREF(b);
        }
        out[0][0] = 0;
        if (home[0] == '/')
            snprintf(out[0], PATH_MAX, "%.*s/.cache", PATH_MAX - 40, home);  /* home is shorter: says so to gcc */
    }
    if (out[0][0] == '/')
        kind[n++] = BASE_HOME;
    rc = env_bytes(env, "XDG_RUNTIME_DIR", out[n], PATH_MAX - 32);
    if (rc == -1)
        return -1;
    if (rc > 0 && out[n][0] == '/' && (n == 0 || strcmp(out[0], out[1]) != 0))
        kind[n++] = BASE_RUNTIME;
    rc = env_bytes(env, "TMPDIR", home, PATH_MAX - 64);
    if (rc == -1)
        return -1;
    if (rc == -2)  /* a TMPDIR no folder here can have: no folder of our own rather than another one */
        return n;
    if (rc == 0 || home[0] != '/')
        strcpy(home, "/tmp");
    for (len = strlen(home); len > 1 && home[len - 1] == '/'; len--)
        home[len - 1] = 0;  /* "/tmp/" and "/tmp" name one folder */
    snprintf(out[n], PATH_MAX, "%.*s/fatdispatch-%lu", PATH_MAX - 64, len == 1 ? "" : home,
             (unsigned long)geteuid());
    for (i = 0; i < n && strcmp(out[i], out[n]) != 0; i++)
        ;
    if (i == n)
        kind[n++] = BASE_OWN;
    return n;
}

/* cache_bases(env) -> [(folder, must_be_private, made_here)] */
static PyObject *py_cache_bases(PyObject *self, PyObject *env)
{
    char out[NBASES][PATH_MAX];
    int kind[NBASES], n = bases(env, out, kind), i;
    PyObject *list = n < 0 ? NULL : PyList_New(0);
    for (i = 0; list != NULL && i < n; i++) {
        PyObject *priv = kind[i] != BASE_HOME ? Py_True : Py_False, *own = kind[i] == BASE_OWN ? Py_True : Py_False;
        PyObject *t = Py_BuildValue("(NOO)", PyUnicode_DecodeFSDefault(out[i]), priv, own);
        if (t == NULL || PyList_Append(list, t) < 0)
            Py_CLEAR(list);
        Py_XDECREF(t);
    }
    return list;
}

/* The one rule for a folder of a per-user cache, for the writer (fatdispatch._privfile, through open_dir) and
 * the reader (read_entry): a folder (reached through a symlink only where follow: a home cache base, as users
 * move ~/.cache) that is this user's and writable by nobody else, or, where private, not even open to others.
 * 0 where st keeps it, else -1 with why (n bytes) saying which part it breaks. */
static int cache_dir_ok(const struct stat *st, int private_, char *why, size_t n)
{
    if (!S_ISDIR(st->st_mode))
        snprintf(why, n, "it is not a folder");
    else if (st->st_uid != geteuid())
        snprintf(why, n, "it belongs to uid %lu, not to this user (%lu)", (unsigned long)st->st_uid,
                 (unsigned long)geteuid());
    else if (st->st_mode & (private_ ? 077 : 022))
        snprintf(why, n, "its mode %o lets others %s", (unsigned)(st->st_mode & 0777), private_ ? "in" : "write");
    else
        return 0;
    return -1;
}

/* A cache folder opened (O_NOFOLLOW unless follow) and checked by cache_dir_ok: its fd; or -1 with errno from
 * the open, or with errno 0 and why. */
static int open_cache_dir(int dir_fd, const char *name, int follow, int private_, char *why, size_t n)
{
    struct stat st;
    int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW)), e;
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (cache_dir_ok(&st, private_, why, n) == 0)
        return fd;
    close(fd);
    errno = 0;
    return -1;
}

/* A dir_fd argument of fn: None (AT_FDCWD) or a file descriptor, into *out; 0, or -1 with an exception. */
static int dir_fd_arg(PyObject *dir, const char *fn, int *out)
{
    long v;
    if (dir == Py_None) {
        *out = AT_FDCWD;
        return 0;
    }
    v = PyLong_AsLong(dir);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: dir_fd is not a file descriptor", fn);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* open_dir(name, dir_fd, follow, private) -> (fd, None), or (-1, why) for a folder that breaks the rule;
 * OSError where it cannot be opened. */
static PyObject *py_open_dir(PyObject *self, PyObject *args)
{
    PyObject *name, *dir, *bname, *r;
    int follow, priv, dir_fd, fd;
    char why[160];
    if (!PyArg_ParseTuple(args, "OOpp:open_dir", &name, &dir, &follow, &priv) ||
        dir_fd_arg(dir, "open_dir", &dir_fd) < 0)
        return NULL;
    if (!PyUnicode_FSConverter(name, &bname))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    fd = open_cache_dir(dir_fd, PyBytes_AS_STRING(bname), follow, priv, why, sizeof(why));
    Py_END_ALLOW_THREADS
    if (fd < 0 && errno != 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_DECREF(bname);
        return NULL;
    }
    Py_DECREF(bname);
    if (fd < 0)
        return Py_BuildValue("(is)", -1, why);
    if ((r = Py_BuildValue("(iO)", fd, Py_None)) == NULL)
        close(fd);
    return r;
}

/* A private file of this user's (regular, mode 0600 or less, singly linked, at most limit bytes), opened without
 * following a symlink and non-blocking (a FIFO in its place cannot hang): its length, read into buf (limit + 1
 * bytes), or -1 where there is none such. */
static ssize_t read_private_c(int dir_fd, const char *name, char *buf, size_t limit)
{
    struct stat st;
    ssize_t n = -1;
    int fd = openat(dir_fd, name, FD_O_READ | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) == 0 && (st.st_mode & 0170077) == 0100000 && st.st_uid == geteuid() && st.st_nlink == 1 &&
        st.st_size >= 0 && (unsigned long long)st.st_size <= limit)
        n = read(fd, buf, limit + 1);
    close(fd);
    return n;
}

static PyObject *py_read_private(PyObject *self, PyObject *args)
{
    PyObject *dir, *name, *bname, *r = NULL;
    Py_ssize_t limit;
    int dir_fd;
    char *buf;
    ssize_t n;
    if (!PyArg_ParseTuple(args, "OOn:read_private", &dir, &name, &limit) ||
        dir_fd_arg(dir, "read_private", &dir_fd) < 0)
        return NULL;
    if (limit < 0)
        limit = 0;
    if (!PyUnicode_FSConverter(name, &bname))
        return NULL;
    buf = (char *)PyMem_Malloc((size_t)limit + 1);
    if (buf == NULL) {
        Py_DECREF(bname);
        return PyErr_NoMemory();
    }
    n = read_private_c(dir_fd, PyBytes_AS_STRING(bname), buf, (size_t)limit);
    Py_DECREF(bname);
    if (n >= 0)
        r = PyBytes_FromStringAndSize(buf, n);
    else
        r = Py_NewRef(Py_None);
    PyMem_Free(buf);
    return r;
}

/* ================================================================ the pick cache
 *
 * One file per variants folder, <cache>/fatdispatch/picks-v3/<device>-<inode> (named by the folder's identity, so
 * an import reads one small entry however many fat packages the user has), written by the full path after a
 * clean load of its first choice, never for a decision FATDISPATCH_FORCE, FATDISPATCH_DISABLE or
 * FATDISPATCH_UNSAFE_FORCE shaped.  Fixed lines, no parser:
 *
 *     fatdispatch-pick 3
 *     <variants folder>
 *     <key: what the decision rests on, see key_text>
 *     <build name>
 *     <path of the build file>
 *     <its real path>
 *     <its identity>
 *     <its ELF machine>
 *     <the CPU features it requires, space-separated>
 *     <1 if it needs AMX tiles, else 0>
 *     <1 if the manifest has CUDA builds (the key then holds the GPU facts), else 0>
 *
 * Read only when no FATDISPATCH_* variable is set, on Linux x86-64.  An entry is read in one open: it must be a
 * private file of this user's that says it is the entry of this very folder, so whatever folder chain leads to
 * it, it is a pick this user's fatdispatch wrote for this folder (the chain's own rules matter where entries are
 * written and pruned: fatdispatch._privfile). */

#define KEY_MAX 3072

static int fatdispatch_variables(void)
{
    char **e;
    for (e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, "FATDISPATCH_", 12) == 0)
            return 1;
    return 0;
}

/* The entry's name, from the folder's device and inode: 0, or -1 with errno where the folder is gone. */
static int pick_name_c(const char *folder, char *out, size_t n)
{
    struct stat st;
    if (stat(folder, &st) != 0)
        return -1;
    snprintf(out, n, "%llx-%llx", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    return 0;
}

static PyObject *py_pick_name(PyObject *self, PyObject *arg)
{
    PyObject *path = path_str(arg), *b;
    char name[48];
    int rc;
    if (path == NULL)
        return NULL;
    b = fs_bytes(path);
    rc = b == NULL ? 0 : pick_name_c(PyBytes_AS_STRING(b), name, sizeof(name));
    Py_XDECREF(b);
    if (b != NULL && rc != 0)
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    Py_DECREF(path);
    return b == NULL || rc != 0 ? NULL : PyUnicode_FromString(name);
}

/* The files fatdispatch decides with: this module and the decision module (an upgrade replaces both).  Where one
 * is not a file on disk (a frozen application keeps the package inside its executable), the executable stands
 * for it.  Made once per process: 0, or -1 with an exception. */
static int runtime_identity(PyObject *self)
{
    fd_module_state *st = STATE(self);
    PyObject *file, *b = NULL;
    char paths[2][PATH_MAX];
    fd_text t = {st->runtime_id, sizeof(st->runtime_id), 0, 0};
    struct stat sb;
    int i;
    if (st->runtime_id[0])
        return 0;
    paths[0][0] = paths[1][0] = 0;
    file = PyObject_GetAttrString(self, "__file__");
    if (file == NULL)
        PyErr_Clear();
    else if (PyUnicode_Check(file) && (b = PyUnicode_EncodeFSDefault(file)) == NULL)
        PyErr_Clear();
    Py_XDECREF(file);
    if (b != NULL && (size_t)PyBytes_GET_SIZE(b) < PATH_MAX - 32) {
        const char *f = PyBytes_AS_STRING(b), *slash = strrchr(f, '/');
        int dir = slash == NULL ? 0 : (int)(slash - f);
        snprintf(paths[0], PATH_MAX, "%s", f);
        snprintf(paths[1], PATH_MAX, "%.*s/fatdispatch/_select.py", dir, f);
    }
    Py_XDECREF(b);
    tx_str(&t, "(");
    for (i = 0; i < 2; i++) {
        tx_str(&t, i ? ", " : "");
        if (paths[i][0] && stat(paths[i], &sb) == 0) {
            tx_identity(&t, &sb);
        } else {
            PyObject *exe = PySys_GetObject("executable"), *eb;  /* borrowed */
            int ok = 0;
            if (exe != NULL && PyUnicode_Check(exe) && (eb = PyUnicode_EncodeFSDefault(exe)) != NULL) {
                ok = stat(PyBytes_AS_STRING(eb), &sb) == 0;
                Py_DECREF(eb);
            }
            if (!ok) {
                if (!PyErr_Occurred())
                    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, exe);
                st->runtime_id[0] = 0;
                return -1;
            }
            tx_str(&t, "('exe', ");
            tx_identity(&t, &sb);
            tx_str(&t, ")");
        }
    }
    tx_str(&t, ")");
    if (t.full) {
        st->runtime_id[0] = 0;
        PyErr_SetString(PyExc_ValueError, "fatdispatch's own paths are too long for the pick key");
        return -1;
    }
    return 0;
}

/* Up to 4 KiB of a small file, as one word of the key, or "-". */
static void tx_small_file(fd_text *t, const char *path)
{
    char buf[4096];
    ssize_t n = -1;
    int fd = open(path, FD_O_READ);
    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf));
        close(fd);
    }
    if (n < 0)
        tx_str(t, "-");
    else
        tx_word(t, buf, (size_t)n);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in a folder, sorted and joined by commas, as one word, or "-" where it cannot be read. */
static void tx_folder_names(fd_text *t, const char *path)
{
    char (*names)[256], *sorted[64];
    int n = 0, i;
    struct dirent *e;
    DIR *d = opendir(path);
    if (d == NULL) {
        tx_str(t, "-");
        return;
    }
    if ((names = malloc(64 * sizeof(*names))) == NULL) {
        closedir(d);
        t->full = 1;
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == 64 || strlen(e->d_name) >= sizeof(names[0])) {
            t->full = 1;  /* more GPUs than a key holds: no key, no pick */
            break;
        }
        strcpy(names[n], e->d_name);
        sorted[n] = names[n];
        n++;
    }
    closedir(d);
    qsort(sorted, (size_t)n, sizeof(sorted[0]), by_name);
    for (i = 0; i < n; i++) {
        tx_str(t, i ? "," : "");
        tx_word(t, sorted[i], strlen(sorted[i]));
    }
    free(names);
}

/* What the GPU facts of this process rest on, without asking the driver: no driver at all; or the boot, the
 * driver's version, the set of GPUs (names only: reading files there can wake a GPU), WSL's driver library, and
 * CUDA's visibility variables ("" is not unset: it hides every GPU).  0, or -1 with an exception. */
static int tx_gpu_facts(fd_text *t, PyObject *env)
{
    static const char *const vars[2] = {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"};
    char value[1024], version[4096];
    struct stat wsl;
    ssize_t vn = -1;
    int i, have_wsl = 0, fd = open(LINUX_DRIVER_FILES[0], FD_O_READ);
    if (fd >= 0) {  /* the driver's version, read first: its absence is the common answer, no driver */
        vn = read(fd, version, sizeof(version));
        close(fd);
    } else {  /* WSL2 has no /proc/driver/nvidia, only its driver library (and Linux has no such library) */
        have_wsl = stat(LINUX_DRIVER_FILES[1], &wsl) == 0;
        if (!have_wsl) {
            tx_str(t, "no-driver");
            return 0;
        }
    }
    tx_str(t, "driver ");
    tx_small_file(t, "/proc/sys/kernel/random/boot_id");
    tx_str(t, " ");
    if (vn < 0)
        tx_str(t, "-");
    else
        tx_word(t, version, (size_t)vn);
    tx_str(t, " ");
    tx_folder_names(t, "/proc/driver/nvidia/gpus");
    tx_str(t, " ");
    if (have_wsl)
        tx_identity(t, &wsl);
    else
        tx_str(t, "-");
    for (i = 0; i < 2; i++) {
        int rc = env_bytes(env, vars[i], value, sizeof(value));
        if (rc == -1)
            return -1;
        if (rc == -2)  /* a value the key cannot hold: no key, so no pick (never "unset") */
            t->full = 1;
        tx_str(t, rc ? " =" : " -");
        if (rc == 1)
            tx_word(t, value, strlen(value));
    }
    return 0;
}

/* gpu_facts_key(env) */
static PyObject *py_gpu_facts_key(PyObject *self, PyObject *env)
{
    char buf[KEY_MAX];
    fd_text t = {buf, sizeof(buf), 0, 0};
    if (tx_gpu_facts(&t, env) < 0)
        return NULL;
    if (t.full) {
        PyErr_SetString(PyExc_ValueError, "the GPU facts do not fit a pick key");
        return NULL;
    }
    return PyUnicode_DecodeASCII(buf, (Py_ssize_t)t.len, "strict");
}

/* driver_present() -> (present, why not): one cheap check for an installed NVIDIA driver, before anything of the
 * GPU probe is imported. */
static PyObject *py_driver_present(PyObject *self, PyObject *unused)
{
#if defined(__linux__)
    if (access(LINUX_DRIVER_FILES[0], F_OK) == 0 || access(LINUX_DRIVER_FILES[1], F_OK) == 0)
        return Py_BuildValue("(Os)", Py_True, "");
    return Py_BuildValue("(Os)", Py_False, "no NVIDIA driver is installed (/proc/driver/nvidia/version is missing)");
#else
    return Py_BuildValue("(ON)", Py_False, PyUnicode_FromFormat("no NVIDIA CUDA driver exists for %S",
                                                                PySys_GetObject("platform")));
#endif
}

/* The key: everything a pick rests on besides the build file: the interpreter, fatdispatch's own files, the
 * manifest's identity, the raw CPU words (this process's, raw NULL, or a raw dict's) and, for a module with CUDA
 * builds, the GPU facts; and *usable, the mask of the features those words make usable.  0, or -1 with an
 * exception (OSError where the manifest is gone). */
static int key_text(PyObject *self, const char *folder, PyObject *raw, int cuda, PyObject *env, fd_text *t,
                    unsigned long long *usable)
{
    fd_module_state *st = STATE(self);
    char manifest[PATH_MAX], words[512];
    struct stat sb;
    int n;
    if (runtime_identity(self) < 0)
        return -1;
    errno = ENAMETOOLONG;
    if (snprintf(manifest, sizeof(manifest), "%s/" MANIFEST_NAME, folder) >= (int)sizeof(manifest) ||
        stat(manifest, &sb) != 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, manifest);
        return -1;
    }
#ifdef FD_X86
    if ((n = fd_words(raw, words, sizeof(words), usable)) < 0)
        return -1;
#else
    PyErr_SetString(PyExc_OSError, "pick keys hold x86 CPUID words: there are none on this machine");
    return -1;
#endif
    tx_str(t, st->cache_tag);
    tx_str(t, " ");
    tx_num(t, st->hexversion, 0);
    tx_str(t, " ");
    tx_str(t, st->runtime_id);
    tx_str(t, " ");
    tx_identity(t, &sb);
    tx_str(t, " ");
    tx_bytes(t, words, (size_t)n);
    tx_str(t, " ");
    if (!cuda)
        tx_str(t, "-");
    else if (tx_gpu_facts(t, env) < 0)
        return -1;
    if (t->full) {
        PyErr_SetString(PyExc_ValueError, "what the pick rests on does not fit its key");
        return -1;
    }
    return 0;
}

/* pick_key(variants_dir, raw, cuda, env) */
static PyObject *py_pick_key(PyObject *self, PyObject *args)
{
    PyObject *arg, *raw, *env, *b;
    char buf[KEY_MAX];
    fd_text t = {buf, sizeof(buf), 0, 0};
    unsigned long long usable;
    int cuda, rc;
    if (!PyArg_ParseTuple(args, "OO!pO:pick_key", &arg, &PyDict_Type, &raw, &cuda, &env))
        return NULL;
    if ((b = fs_bytes(arg)) == NULL)
        return NULL;
    rc = key_text(self, PyBytes_AS_STRING(b), raw, cuda, env, &t, &usable);
    Py_DECREF(b);
    return rc < 0 ? NULL : PyUnicode_DecodeASCII(buf, (Py_ssize_t)t.len, "strict");
}

/* cpu_words(raw): the key's CPU words of a raw dict (what x86() returns), the APIC id masked. */
static PyObject *py_cpu_words(PyObject *self, PyObject *raw)
{
    char words[512];
    unsigned long long usable;
    int n;
    if (!PyDict_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "cpu_words() takes the dict x86() returns");
        return NULL;
    }
#ifdef FD_X86
    n = fd_words(raw, words, sizeof(words), &usable);
    return n < 0 ? NULL : PyUnicode_DecodeASCII(words, n, "strict");
#else
    (void)usable, (void)n, (void)words;
    PyErr_SetString(PyExc_OSError, "there are no CPUID words on this machine");
    return NULL;
#endif
}

/* pick_entry(variants_dir, key, build, path, real, ident, machine, features, amx, cuda): the entry for a clean
 * load, as bytes, or None where it cannot be written as fixed lines. */
static PyObject *py_pick_entry(PyObject *self, PyObject *args)
{
    PyObject *fields[ENTRY_FIELDS], *features, *sorted, *space, *list, *nl, *text, *r;
    int amx, cuda, i;
    if (!PyArg_ParseTuple(args, "UUUUUUUOpp:pick_entry", &fields[1], &fields[2], &fields[3], &fields[4], &fields[5],
                          &fields[6], &fields[7], &features, &amx, &cuda))
        return NULL;
    if ((sorted = PySequence_List(features)) == NULL)
        return NULL;
    if (PyList_Sort(sorted) < 0 || (space = PyUnicode_FromString(" ")) == NULL) {
        Py_DECREF(sorted);
        return NULL;
    }
    fields[8] = PyUnicode_Join(space, sorted);
    Py_DECREF(space);
    Py_DECREF(sorted);
    if (fields[8] == NULL)
        return NULL;
    list = PyList_New(ENTRY_FIELDS + 1);
    fields[0] = PyUnicode_FromString(PICKS_FORMAT);
    fields[9] = PyUnicode_FromString(amx ? "1" : "0");
    fields[10] = PyUnicode_FromString(cuda ? "1" : "0");
    for (i = 0; i < ENTRY_FIELDS; i++) {
        if (i >= 1 && i <= 7)
            Py_INCREF(fields[i]);
        if (list != NULL && fields[i] != NULL)
            PyList_SET_ITEM(list, i, fields[i]);
        else
            Py_XDECREF(fields[i]);
    }
    if (list == NULL || fields[0] == NULL || fields[9] == NULL || fields[10] == NULL) {
        Py_XDECREF(list);
        return NULL;
    }
    for (i = 0; i < ENTRY_FIELDS; i++) {
        PyObject *f = PyList_GET_ITEM(list, i);
        if (PyUnicode_FindChar(f, '\n', 0, PY_SSIZE_T_MAX, 1) != -1 ||
            PyUnicode_FindChar(f, '\r', 0, PY_SSIZE_T_MAX, 1) != -1) {
            Py_DECREF(list);
            Py_RETURN_NONE;  /* (a -2 error from FindChar is impossible for a str) */
        }
    }
    PyList_SET_ITEM(list, ENTRY_FIELDS, PyUnicode_FromString(""));
    if (PyList_GET_ITEM(list, ENTRY_FIELDS) == NULL || (nl = PyUnicode_FromString("\n")) == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    text = PyUnicode_Join(nl, list);
    Py_DECREF(nl);
    Py_DECREF(list);
    if (text == NULL)
        return NULL;
    r = PyUnicode_EncodeFSDefault(text);  /* as the hit compares it: file-system bytes */
    Py_DECREF(text);
    return r;
}

typedef struct {
    const char *p;
    size_t n;
} fd_span;

/* The buffers of one entry read (on the heap: an import may run in a thread with a small stack). */
typedef struct {
    char entry[PICKS_LIMIT + 1];
    char base[NBASES][PATH_MAX];
    char path[PATH_MAX + 64];
} fd_scratch;

/* The entry of a variants folder (file-system bytes), read into buf (PICKS_LIMIT + 1 bytes) and cut into its
 * lines: 1, or 0 where there is no entry of this user's for this very folder (none, not private, not for this
 * folder, not eleven lines), or -1 with an exception. */
static int read_entry(PyObject *env, const char *folder, fd_scratch *s, fd_span lines[ENTRY_FIELDS])
{
    char name[48], *buf = s->entry;
    int kind[NBASES], nbases, i;
    if (pick_name_c(folder, name, sizeof(name)) != 0)
        return 0;
    if ((nbases = bases(env, s->base, kind)) < 0)
        return -1;
    for (i = 0; i < nbases; i++) {
        ssize_t n;
        size_t at = 0;
        int k;
        int d0;
        struct stat st;
        char why[160];
        /* The folders the writer opens, by the same rule: the base opened and checked (no symlink but a home
         * base's own), then fatdispatch/ and picks-v3/ looked at without following a link, each this user's
         * and private (what a folder allows today says nothing of who made what inside it while it was open
         * to others).  Once a folder is this user's and writable by no one else, no one else can swap what
         * it holds, so the entry is then opened from the base in one call. */
        n = -1;
        if ((d0 = open_cache_dir(AT_FDCWD, s->base[i], kind[i] != BASE_OWN, kind[i] != BASE_HOME, why,
                                 sizeof(why))) >= 0) {
            if (fstatat(d0, CACHE_DIR, &st, AT_SYMLINK_NOFOLLOW) == 0 && cache_dir_ok(&st, 1, why, sizeof(why)) == 0 &&
                fstatat(d0, CACHE_DIR "/" PICKS_DIR, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                cache_dir_ok(&st, 1, why, sizeof(why)) == 0) {
                snprintf(s->path, sizeof(s->path), CACHE_DIR "/" PICKS_DIR "/%s", name);
                n = read_private_c(d0, s->path, buf, PICKS_LIMIT);
            }
            close(d0);
        }
        if (n <= 0 || buf[n - 1] != '\n')
            continue;
        for (k = 0; k < ENTRY_FIELDS && at < (size_t)n; k++) {
            const char *nl = memchr(buf + at, '\n', (size_t)n - at);
            lines[k].p = buf + at;
            lines[k].n = (size_t)(nl - (buf + at));
            at += lines[k].n + 1;
        }
        if (k == ENTRY_FIELDS && at == (size_t)n && lines[0].n == strlen(PICKS_FORMAT) &&
            memcmp(lines[0].p, PICKS_FORMAT, lines[0].n) == 0 && lines[1].n == strlen(folder) &&
            memcmp(lines[1].p, folder, lines[1].n) == 0)
            return 1;
    }
    return 0;
}

/* read_pick(variants_dir, env): the entry's lines (eleven, and "" after the last newline), or None. */
static PyObject *py_read_pick(PyObject *self, PyObject *args)
{
    PyObject *arg, *env, *b, *list;
    fd_scratch *s;
    fd_span lines[ENTRY_FIELDS];
    int rc, k;
    if (!PyArg_ParseTuple(args, "OO:read_pick", &arg, &env))
        return NULL;
    if ((b = fs_bytes(arg)) == NULL)
        return NULL;
    if ((s = (fd_scratch *)PyMem_Malloc(sizeof(*s))) == NULL) {
        Py_DECREF(b);
        return PyErr_NoMemory();
    }
    rc = read_entry(env, PyBytes_AS_STRING(b), s, lines);
    Py_DECREF(b);
    if (rc <= 0) {
        PyMem_Free(s);
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    }
    list = PyList_New(ENTRY_FIELDS + 1);
    for (k = 0; list != NULL && k <= ENTRY_FIELDS; k++) {
        PyObject *line = k < ENTRY_FIELDS ? PyUnicode_DecodeFSDefaultAndSize(lines[k].p, (Py_ssize_t)lines[k].n)
                                          : PyUnicode_FromStringAndSize("", 0);
        if (line == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, line);
    }
    PyMem_Free(s);
    return list;
}

/* A failure that means "no hit": any Exception, as the full path treats a build that fails to load (not
 * KeyboardInterrupt or SystemExit); the full path then decides afresh, records any failure, and forgets the
 * entry. */
static int miss(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

static int span_is(const fd_span *s, const char *text)
{
    return s->n == strlen(text) && memcmp(s->p, text, s->n) == 0;
}

/* Whether an entry names a build this process may load now: 1 (then path and machine hold its file and ELF
 * machine), 0, or -1 with an exception.  A hit is never weaker than a miss: an entry of this user's for this
 * folder under an unchanged key; the named build's requirements checked against this process's CPU; its file,
 * under the folder by its path, the very inode that passed check_build (confinement included) when the entry
 * was written: same device, inode, size, mtime, ctime and link count, so not rewritten, re-linked, moved or
 * swapped for another file behind a symlinked folder; and passing check_build's file checks again (regular
 * file, ELF header, segments inside it). */
static int entry_holds(PyObject *self, const char *folder, const fd_span *lines, char *path, char *machine)
{
    char buf[KEY_MAX], why[200], ident[160];
    fd_text t = {buf, sizeof(buf), 0, 0}, id = {ident, sizeof(ident), 0, 0};
    const fd_span *file = &lines[4], *mach = &lines[7];
    size_t flen = strlen(folder);
    unsigned long long usable = 0;
    struct stat st;
    int cuda = span_is(&lines[10], "1"), fd, rc;
    if ((!cuda && !span_is(&lines[10], "0")) || !(span_is(&lines[9], "0") || span_is(&lines[9], "1")) ||
        file->n <= flen + 1 || file->n >= PATH_MAX || memcmp(file->p, folder, flen) != 0 || file->p[flen] != '/' ||
        memchr(file->p, 0, file->n) != NULL || mach->n == 0 || mach->n >= 32)
        return 0;
    memcpy(path, file->p, file->n);
    path[file->n] = 0;
    if (strstr(path + flen, "/../") != NULL || strstr(path + flen, "/./") != NULL)
        return 0;  /* under the folder by its path, with no way out of it */
    if (key_text(self, folder, NULL, cuda, NULL, &t, &usable) < 0)
        return -1;
#ifdef FD_X86
    if (t.len != lines[2].n || memcmp(buf, lines[2].p, t.len) != 0 ||
        !fd_names_usable(usable, lines[8].p, lines[8].n))
        return 0;
#else
    return 0;  /* (key_text said no already: picks are x86-64 only) */
#endif
    memcpy(machine, mach->p, mach->n);
    machine[mach->n] = 0;
    if ((fd = open(path, FD_O_READ)) < 0)
        return 0;
    rc = check_fd(fd, machine, &st, why, sizeof(why), 0);
    close(fd);
    if (rc != 0)
        return 0;
    tx_identity(&id, &st);
    return id.len == lines[6].n && memcmp(ident, lines[6].p, id.len) == 0;
}

/* Bind spec.name from the pick cache: the module (new reference), Py_None where the cache does not answer (no
 * entry, or anything it rests on changed), or NULL with an error the import should see. */
static PyObject *load_cached(PyObject *self, PyObject *spec, PyObject *name, PyObject *variants_dir)
{
    char machine[32];
    fd_scratch *s;
    fd_span lines[ENTRY_FIELDS];
    PyObject *folder, *module = NULL, *build = NULL, *pypath = NULL, *hit, *logging;
    int rc;
    if (!FD_PICKS_HERE || fatdispatch_variables() || !PyUnicode_Check(variants_dir))
        Py_RETURN_NONE;
    if ((s = (fd_scratch *)PyMem_Malloc(sizeof(*s))) == NULL)
        return PyErr_NoMemory();
    folder = fs_bytes(variants_dir);  /* a NUL in it is refused (ValueError: the full path says so) */
    rc = folder == NULL ? -1 : read_entry(NULL, PyBytes_AS_STRING(folder), s, lines);  /* NULL: this process's env */
    if (rc > 0)
        rc = entry_holds(self, PyBytes_AS_STRING(folder), lines, s->path, machine);
    Py_XDECREF(folder);
    if (rc > 0 && (pypath = PyUnicode_DecodeFSDefault(s->path)) != NULL &&
        (build = PyUnicode_DecodeFSDefaultAndSize(lines[3].p, (Py_ssize_t)lines[3].n)) != NULL)
        module = load_extension_impl(self, name, pypath, span_is(&lines[9], "1"));
    PyMem_Free(s);
    if (module == NULL) {
        Py_XDECREF(pypath);
        Py_XDECREF(build);
        if (rc == 0 || miss())
            Py_RETURN_NONE;  /* the full path decides afresh, records any failure, and forgets the entry */
        return NULL;
    }
    hit = PyTuple_Pack(2, build, pypath);
    if (hit == NULL || PyObject_SetAttrString(spec, "origin", pypath) < 0 ||
        PyObject_SetAttrString(spec, "has_location", Py_True) < 0 ||
        PyObject_SetAttrString(module, "__fatdispatch_variant__", build) < 0 ||
        PyDict_SetItem(STATE(self)->hits, name, hit) < 0) {
        Py_XDECREF(hit);
        Py_DECREF(pypath);
        Py_DECREF(build);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(hit);
    Py_DECREF(pypath);
    Py_DECREF(build);
    /* An application that logs fatdispatch's DEBUG still gets every reason. */
    logging = PyDict_GetItemString(PyImport_GetModuleDict(), "logging");
    if (logging != NULL) {
        PyObject *logger = PyObject_CallMethod(logging, "getLogger", "s", "fatdispatch");
        PyObject *level = logger == NULL ? NULL : PyObject_GetAttrString(logging, "DEBUG");
        PyObject *on = level == NULL ? NULL : PyObject_CallMethod(logger, "isEnabledFor", "O", level);
        int enabled = on == NULL ? -1 : PyObject_IsTrue(on);
        Py_XDECREF(logger);
        Py_XDECREF(level);
        Py_XDECREF(on);
        if (enabled > 0) {
            PyObject *load = full_path(), *r;
            r = load == NULL ? NULL : PyObject_CallMethod(load, "log_decision", "O", name);
            Py_XDECREF(load);
            Py_XDECREF(r);
        }
        if (PyErr_Occurred())  /* the module is bound: logging's failure is said, not made the import's */
            PyErr_WriteUnraisable(name);
    }
    return module;
}

/* ================================================================ registering fat modules; the finder and loader */

/* register(fullname, variants_dir): register one fat module by its variants folder. */
static int register_impl(PyObject *self, PyObject *fullname, PyObject *folder)
{
    PyObject *meta, *abs = NULL;
    Py_ssize_t i;
    if (!absolute(folder)) {  /* a relative sys.path entry must survive a chdir */
        abs = call_os_path("abspath", folder);
        if (abs == NULL)
            return -1;
        folder = abs;
    }
    if (PyDict_SetItem(STATE(self)->registry, fullname, folder) < 0) {
        Py_XDECREF(abs);
        return -1;
    }
    Py_XDECREF(abs);
    meta = PySys_GetObject("meta_path");  /* borrowed */
    if (meta == NULL || !PyList_Check(meta)) {
        PyErr_SetString(PyExc_ImportError, "fatdispatch: sys.meta_path is not a list");
        return -1;
    }
    for (i = 0; i < PyList_GET_SIZE(meta); i++)  /* by identity: no Python code runs here */
        if (PyList_GET_ITEM(meta, i) == self)
            return 0;
    return PyList_Insert(meta, 0, self);
}

static PyObject *py_register(PyObject *self, PyObject *args)
{
    PyObject *fullname, *arg, *folder;
    int rc;
    if (!PyArg_ParseTuple(args, "UO:register", &fullname, &arg))
        return NULL;
    if ((folder = path_str(arg)) == NULL)
        return NULL;
    rc = register_impl(self, fullname, folder);
    Py_DECREF(folder);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* install(package, modules=None): register the fat modules of package: names relative to it (["_core"]), by
 * default every <name>.variants folder in it.  Cheap and idempotent; all found before any is registered.
 * Discovery, and every error, are the full path's (install_slowly). */
static PyObject *py_install(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"package", "modules", NULL};
    PyObject *package, *modules = Py_None, *pkg, *paths = NULL, *names = NULL, *found = NULL;
    Py_ssize_t i, j;
    int fast = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:install", kwlist, &package, &modules))
        return NULL;
    pkg = PyUnicode_Check(package) ? PyDict_GetItem(PyImport_GetModuleDict(), package) : NULL;  /* borrowed */
    if (pkg != NULL && modules != Py_None && !PyUnicode_Check(modules)) {
        PyObject *p = PyObject_GetAttrString(pkg, "__path__");
        if (p == NULL)
            PyErr_Clear();
        paths = p == NULL ? NULL : PySequence_List(p);
        Py_XDECREF(p);
        if (paths == NULL)
            PyErr_Clear();
        names = paths == NULL ? NULL : PySequence_List(modules);
        if (names == NULL)
            PyErr_Clear();
    }
    if (names != NULL && PyList_GET_SIZE(paths) > 0 && (found = PyList_New(0)) != NULL) {
        fast = 1;
        for (i = 0; fast && i < PyList_GET_SIZE(names); i++) {
            PyObject *mod = PyList_GET_ITEM(names, i);
            fast = 0;
            if (!PyUnicode_Check(mod))
                break;
            for (j = 0; j < PyList_GET_SIZE(paths); j++) {
                PyObject *entry = PyList_GET_ITEM(paths, j), *folder, *pair;
                struct stat st;
                if (!PyUnicode_Check(entry))
                    continue;
                folder = PyUnicode_FromFormat("%U/%U" VARIANTS_SUFFIX, entry, mod);
                if (folder == NULL)
                    goto fail;
                if (stat_str(folder, &st) == 0 && S_ISDIR(st.st_mode)) {
                    PyObject *fullname = PyUnicode_FromFormat("%U.%U", package, mod);
                    pair = fullname == NULL ? NULL : PyTuple_Pack(2, fullname, folder);
                    Py_XDECREF(fullname);
                    Py_DECREF(folder);
                    if (pair == NULL || PyList_Append(found, pair) < 0) {
                        Py_XDECREF(pair);
                        goto fail;
                    }
                    Py_DECREF(pair);
                    fast = 1;
                    break;
                }
                Py_DECREF(folder);
            }
        }
    }
    if (!fast) {
        PyObject *load = full_path(), *r;
        r = load == NULL ? NULL : PyObject_CallMethod(load, "install_slowly", "OO", package, modules);
        Py_XDECREF(load);
        Py_XDECREF(paths);
        Py_XDECREF(names);
        Py_XDECREF(found);
        return r == NULL ? NULL : (Py_DECREF(r), Py_NewRef(Py_None));
    }
    for (i = 0; i < PyList_GET_SIZE(found); i++) {
        PyObject *pair = PyList_GET_ITEM(found, i);
        if (register_impl(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0)
            goto fail;
    }
    Py_XDECREF(paths);
    Py_XDECREF(names);
    Py_DECREF(found);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(paths);
    Py_XDECREF(names);
    Py_XDECREF(found);
    return NULL;
}

/* The meta-path finder: answers only for registered fat modules, and decides nothing.  CPython 3.11 calls
 * find_spec with its global import lock held, so nothing is read or probed here (an NVML worker thread importing
 * anything would wait on that lock): the loader decides, under the module's own lock only. */
static PyObject *py_find_spec(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"fullname", "path", "target", NULL};
    PyObject *fullname, *path = Py_None, *target = Py_None, *folder, *pargs, *kw, *spec;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO:find_spec", kwlist, &fullname, &path, &target))
        return NULL;
    folder = PyDict_GetItemWithError(STATE(self)->registry, fullname);  /* borrowed */
    if (folder == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    pargs = PyTuple_Pack(2, fullname, self);
    kw = pargs == NULL ? NULL : Py_BuildValue("{s:O}", "origin", folder);
    spec = kw == NULL ? NULL : PyObject_Call(STATE(self)->ModuleSpec, pargs, kw);
    Py_XDECREF(pargs);
    Py_XDECREF(kw);
    return spec;
}

static PyObject *py_invalidate_caches(PyObject *self, PyObject *unused)
{
    Py_RETURN_NONE;
}

/* The loader: binds the best build, from the pick cache where it answers, else the full way. */
static PyObject *py_create_module(PyObject *self, PyObject *spec)
{
    PyObject *name = PyObject_GetAttrString(spec, "name"), *folder, *module;
    if (name == NULL)
        return NULL;
    folder = PyDict_GetItemWithError(STATE(self)->registry, name);
    if (folder != NULL) {
        Py_INCREF(folder);
    } else if (PyErr_Occurred() || (folder = PyObject_GetAttrString(spec, "origin")) == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    module = load_cached(self, spec, name, folder);
    if (module == Py_None) {
        PyObject *load = full_path();
        Py_DECREF(module);
        module = load == NULL ? NULL : PyObject_CallMethod(load, "load", "OO", spec, folder);
        Py_XDECREF(load);
    }
    Py_DECREF(name);
    Py_DECREF(folder);
    return module;
}

static PyObject *py_exec_module(PyObject *self, PyObject *module)
{
    Py_RETURN_NONE;  /* the extension's init ran in create_module, so that a failure can fall back */
}

/* ================================================================ the module */

/* What an import needs is made when the module is: the finder and loader.  Everything else (the full path's
 * calls, the CPU primitives, the constants) is made on first use by the module's __getattr__ (PEP 562), so a
 * cached pick does not pay for making three dozen objects it never uses. */
static PyObject *py_getattr(PyObject *self, PyObject *name);
static PyObject *py_dir(PyObject *self, PyObject *unused);

static PyMethodDef fd_methods[] = {  /* and cpu(), the probe of a tool that wants only the CPU */
    {"install", (PyCFunction)(void (*)(void))py_install, METH_VARARGS | METH_KEYWORDS,
     "install(package, modules=None): register the fat modules of package (names relative to it)."},
    {"find_spec", (PyCFunction)(void (*)(void))py_find_spec, METH_VARARGS | METH_KEYWORDS,
     "The meta-path finder: a spec for a registered fat module, else None."},
    {"invalidate_caches", py_invalidate_caches, METH_NOARGS, "Nothing to invalidate."},
    {"create_module", py_create_module, METH_O, "The loader: bind the best build of spec.name."},
    {"exec_module", py_exec_module, METH_O, "Nothing: the build's init ran in create_module."},
#ifdef FD_X86
    {"cpu", fd_cpu, METH_NOARGS, "This process's CPU, decoded (x86 and x86_decode together, with the level)."},
#endif
    {"__getattr__", py_getattr, METH_O, "The module's other attributes, made on first use."},
    {"__dir__", py_dir, METH_NOARGS, "Every attribute of the module."},
    {NULL, NULL, 0, NULL}
};

static PyMethodDef fd_lazy_methods[] = {
    {"register", py_register, METH_VARARGS, "register(fullname, variants_dir): register one fat module."},
    {"check_build", py_check_build, METH_VARARGS,
     "check_build(path, roots, machine) -> (identity, real path, None) or ('', '', why not): a regular file, "
     "really inside one of roots, an ELF object for machine whose segments lie inside it.  With no roots the "
     "real path is not looked up ('' is returned): a pick cache hit compares identities instead."},
    {"load_extension", py_load_extension, METH_VARARGS,
     "load_extension(name, path, amx): load the extension at path as module name."},
    {"cache_bases", py_cache_bases, METH_O,
     "cache_bases(env) -> [(folder, must_be_private, made_here)]: $XDG_CACHE_HOME or ~/.cache, then "
     "$XDG_RUNTIME_DIR, then fatdispatch's own $TMPDIR/fatdispatch-<euid> (else /tmp/...)."},
    {"open_dir", py_open_dir, METH_VARARGS,
     "open_dir(name, dir_fd, follow, private) -> (fd, None), or (-1, why): a per-user cache folder, opened "
     "(through a symlink only where follow) and checked: this user's, writable by nobody else (private: closed to "
     "others)."},
    {"read_private", py_read_private, METH_VARARGS,
     "read_private(dir_fd, name, limit) -> bytes or None: a private regular file of this user's."},
    {"pick_name", py_pick_name, METH_O, "pick_name(variants_dir): the pick cache entry's name."},
    {"cpu_words", py_cpu_words, METH_O, "cpu_words(raw): the raw CPU words a pick is keyed on, APIC id masked."},
    {"gpu_facts_key", py_gpu_facts_key, METH_O, "gpu_facts_key(env): what the GPU facts rest on."},
    {"driver_present", py_driver_present, METH_NOARGS, "driver_present() -> (present, why not): an NVIDIA driver?"},
    {"pick_key", py_pick_key, METH_VARARGS, "pick_key(variants_dir, raw, cuda, env): what a pick rests on."},
    {"pick_entry", py_pick_entry, METH_VARARGS,
     "pick_entry(variants_dir, key, build, path, real, ident, machine, features, amx, cuda) -> bytes or None."},
    {"read_pick", py_read_pick, METH_VARARGS, "read_pick(variants_dir, env): the entry's lines, or None."},
    {NULL, NULL, 0, NULL}
};

static const char *const fd_constants[] = {
    "registry", "hits", "ModuleSpec", "EXTENSION_SUFFIXES", "LINUX_DRIVER_FILES", "VARIANTS_SUFFIX", "MANIFEST_NAME",
    "CACHE_DIR", "PICKS_DIR", "PICKS_FORMAT", "PICKS_KEEP", "PICKS_LIMIT", "_PICKS_HERE", NULL
};

/* A constant of fd_constants by its index, new reference. */
static PyObject *make_constant(PyObject *self, int i)
{
    fd_module_state *st = STATE(self);
    switch (i) {
    case 0: return Py_NewRef(st->registry);
    case 1: return Py_NewRef(st->hits);
    case 2: return Py_NewRef(st->ModuleSpec);
    case 3: {
        PyObject *ext = PyDict_GetItemString(PyImport_GetModuleDict(), "_frozen_importlib_external");
        return ext == NULL ? PyList_New(0) : PyObject_GetAttrString(ext, "EXTENSION_SUFFIXES");
    }
    case 4: return Py_BuildValue("(ss)", LINUX_DRIVER_FILES[0], LINUX_DRIVER_FILES[1]);
    case 5: return PyUnicode_FromString(VARIANTS_SUFFIX);
    case 6: return PyUnicode_FromString(MANIFEST_NAME);
    case 7: return PyUnicode_FromString(CACHE_DIR);
    case 8: return PyUnicode_FromString(PICKS_DIR);
    case 9: return PyUnicode_FromString(PICKS_FORMAT);
    case 10: return PyLong_FromLong(PICKS_KEEP);
    case 11: return PyLong_FromLong(PICKS_LIMIT);
    default: return Py_NewRef(FD_PICKS_HERE ? Py_True : Py_False);
    }
}

static PyObject *py_getattr(PyObject *self, PyObject *name)
{
    PyMethodDef *tables[2] = {fd_lazy_methods, fd_cpu_methods}, *def;
    PyObject *value = NULL, *modname;
    const char *n = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    int t, i;
    if (n == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "attribute name must be a str");
        return NULL;
    }
    if (n[0] == '_' && n[1] == '_') {  /* importlib's probes (__path__, __file__ ...): none is made here */
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    for (t = 0; t < 2 && value == NULL; t++)
        for (def = tables[t]; def->ml_name != NULL && value == NULL; def++)
            if (strcmp(def->ml_name, n) == 0) {
                if ((modname = PyUnicode_FromString("_fatdispatch")) == NULL)
                    return NULL;
                value = PyCFunction_NewEx(def, self, modname);
                Py_DECREF(modname);
                if (value == NULL)
                    return NULL;
            }
    for (i = 0; fd_constants[i] != NULL && value == NULL; i++)
        if (strcmp(fd_constants[i], n) == 0 && (value = make_constant(self, i)) == NULL)
            return NULL;
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "module '_fatdispatch' has no attribute '%U'", name);
        return NULL;
    }
    if (PyObject_SetAttr(self, name, value) < 0) {  /* made once: later lookups find it in the module */
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

static PyObject *py_dir(PyObject *self, PyObject *unused)
{
    PyMethodDef *tables[3] = {fd_methods, fd_lazy_methods, fd_cpu_methods}, *def;
    PyObject *dict = PyModule_GetDict(self), *names = PyDict_Keys(dict);  /* borrowed dict */
    int t, i;
    for (t = 0; t < 3 && names != NULL; t++)
        for (def = tables[t]; def->ml_name != NULL && names != NULL; def++) {
            PyObject *s = PyUnicode_FromString(def->ml_name);
            if (s == NULL || (PySequence_Contains(names, s) == 0 && PyList_Append(names, s) < 0))
                Py_CLEAR(names);
            Py_XDECREF(s);
        }
    for (i = 0; fd_constants[i] != NULL && names != NULL; i++) {
        PyObject *s = PyUnicode_FromString(fd_constants[i]);
        if (s == NULL || (PySequence_Contains(names, s) == 0 && PyList_Append(names, s) < 0))
            Py_CLEAR(names);
        Py_XDECREF(s);
    }
    if (names != NULL && PyList_Sort(names) < 0)
        Py_CLEAR(names);
    return names;
}

static int fd_exec(PyObject *m)
{
    fd_module_state *st = STATE(m);
    PyObject *modules = PyImport_GetModuleDict(), *boot, *ext, *imp;
    boot = PyDict_GetItemString(modules, "_frozen_importlib");            /* borrowed: always loaded */
    ext = PyDict_GetItemString(modules, "_frozen_importlib_external");
    imp = PyDict_GetItemString(modules, "_imp");
    if (boot == NULL || ext == NULL || imp == NULL) {
        PyErr_SetString(PyExc_ImportError, "_fatdispatch needs importlib's bootstrap modules in sys.modules");
        return -1;
    }
    st->ModuleSpec = PyObject_GetAttrString(boot, "ModuleSpec");
    st->ExtensionFileLoader = PyObject_GetAttrString(ext, "ExtensionFileLoader");
    st->create_dynamic = PyObject_GetAttrString(imp, "create_dynamic");
    st->exec_dynamic = PyObject_GetAttrString(imp, "exec_dynamic");
    st->registry = PyDict_New();
    st->hits = PyDict_New();
    if (st->ModuleSpec == NULL || st->ExtensionFileLoader == NULL || st->create_dynamic == NULL ||
        st->exec_dynamic == NULL || st->registry == NULL || st->hits == NULL)
        return -1;
    {
        PyObject *impl = PySys_GetObject("implementation"), *tag, *hex = PySys_GetObject("hexversion");  /* borrowed */
        const char *t;
        tag = impl == NULL ? NULL : PyObject_GetAttrString(impl, "cache_tag");
        t = tag == NULL || !PyUnicode_Check(tag) ? NULL : PyUnicode_AsUTF8(tag);
        snprintf(st->cache_tag, sizeof(st->cache_tag), "%s", t != NULL ? t : "-");  /* no tag: no pick can hold */
        Py_XDECREF(tag);
        PyErr_Clear();
        st->hexversion = hex == NULL ? 0 : PyLong_AsUnsignedLong(hex);
        PyErr_Clear();
    }
    return 0;
}

static int fd_traverse(PyObject *m, visitproc visit, void *arg)
{
    fd_module_state *st = STATE(m);
    if (st == NULL)
        return 0;
    Py_VISIT(st->registry);
    Py_VISIT(st->hits);
    Py_VISIT(st->ModuleSpec);
    Py_VISIT(st->ExtensionFileLoader);
    Py_VISIT(st->create_dynamic);
    Py_VISIT(st->exec_dynamic);
    return fd_cpu_traverse(&st->cpu, visit, arg);
}

static int fd_clear(PyObject *m)
{
    fd_module_state *st = STATE(m);
    if (st == NULL)
        return 0;
    Py_CLEAR(st->registry);
    Py_CLEAR(st->hits);
    Py_CLEAR(st->ModuleSpec);
    Py_CLEAR(st->ExtensionFileLoader);
    Py_CLEAR(st->create_dynamic);
    Py_CLEAR(st->exec_dynamic);
    fd_cpu_clear(&st->cpu);
    return 0;
}

static void fd_free(void *m)
{
    fd_clear((PyObject *)m);
}

static PyModuleDef_Slot fd_slots[] = {
    {Py_mod_exec, fd_exec},
    {0, NULL}
};

static struct PyModuleDef fd_module = {
    PyModuleDef_HEAD_INIT, "_fatdispatch",
    "fatdispatch's import path (registry, finder and loader, file checks, private files, the pick cache) and its "
    "CPU primitives (CPUID/XGETBV, the x86 feature decoder, auxv, sysctl, AMX).",
    sizeof(fd_module_state), fd_methods, fd_slots, fd_traverse, fd_clear, fd_free,
};

PyMODINIT_FUNC PyInit__fatdispatch(void)
{
    return PyModuleDef_Init(&fd_module);
}
