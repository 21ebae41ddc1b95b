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
#define CACHE_DIR "fatdispatch"          /* under $XDG_CACHE_HOME (or ~/.cache), else $XDG_RUNTIME_DIR */
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
    PyObject *runtime_id;        /* what identifies fatdispatch's own files (made on first use) */
    PyObject *ModuleSpec, *ExtensionFileLoader, *create_dynamic, *exec_dynamic;
} fd_module_state;

#define STATE(m) ((fd_module_state *)PyModule_GetState(m))

/* ================================================================ small helpers */

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

/* The file-system bytes of a str (embedded NULs refused), new reference. */
static PyObject *fs_bytes(PyObject *s)
{
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(s, &b))
        return NULL;
    return b;
}

/* identity: device, inode, size, mtime, ctime (which no utime() can restore) and link count. */
static PyObject *identity(const struct stat *st)
{
    return PyUnicode_FromFormat("(%llu, %llu, %lld, %lld, %lld, %llu)", (unsigned long long)st->st_dev,
                                (unsigned long long)st->st_ino, (long long)st->st_size, FD_NS(st, m), FD_NS(st, c),
                                (unsigned long long)st->st_nlink);
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

/* An environment value (a str; with nonempty, a non-empty one), new reference; NULL without an error where there
 * is none.  env is a mapping, or NULL for the process environment (what os.environ reads and writes through
 * putenv, without a call into Python: the pick cache's lookup). */
static PyObject *env_value(PyObject *env, const char *key, int nonempty)
{
    PyObject *v;
    if (env == NULL) {
        const char *c = getenv(key);
        v = c == NULL || (nonempty && !*c) ? NULL : PyUnicode_DecodeFSDefault(c);
        if (v == NULL)
            PyErr_Clear();
    } else if (PyDict_CheckExact(env)) {
        v = PyDict_GetItemString(env, key);
        Py_XINCREF(v);
    } else {
        v = PyObject_CallMethod(env, "get", "s", key);
        if (v == NULL)
            PyErr_Clear();
    }
    if (v != NULL && !(PyUnicode_Check(v) && (!nonempty || PyUnicode_GET_LENGTH(v) > 0)))
        Py_CLEAR(v);
    return v;
}

static PyObject *env_get(PyObject *env, const char *key)
{
    return env_value(env, key, 1);
}

/* Call fn of a module already imported (os.path.abspath, ...), new reference. */
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

/* ================================================================ the checks every build passes, on either path */

static const struct { const char *name; int em; } ELF_MACHINES[] = {
    {"x86_64", 62}, {"aarch64", 183}, {"i686", 3}, {"ppc64le", 21}, {"s390x", 22},
};
#define N_ELF_MACHINES (sizeof(ELF_MACHINES) / sizeof(ELF_MACHINES[0]))

static unsigned long long le(const unsigned char *p, int n)
{
    unsigned long long v = 0;
    while (n-- > 0)
        v = (v << 8) | p[n];
    return v;
}

/* Why the open file cannot be a loadable ELF object for machine: a new str, Py_None (new reference) where it
 * can, or NULL with errno set and no Python error where it cannot be read.  dlopen of a truncated file maps
 * segments past its end and dies with SIGBUS when they are touched, so the header, the architecture and
 * every program header and loadable segment are checked first. */
static PyObject *elf_problem(int fd, long long size, const char *machine)
{
    unsigned char head[4096], *table;
    int allocated = 0;
    ssize_t n = pread(fd, head, sizeof(head), 0);
    unsigned long long phoff, phentsize, phnum, total, i, usize = size < 0 ? 0 : (unsigned long long)size;
    int em, want = -1;
    size_t k;
    PyObject *why = NULL;
    if (n < 0)
        return NULL;
    if (n < 64 || memcmp(head, "\x7f" "ELF", 4) != 0)
        return PyUnicode_FromString("not an ELF shared object");
    if (head[4] != 2 || head[5] != 1)
        return PyUnicode_FromString("not a 64-bit little-endian ELF object");
    em = (int)le(head + 18, 2);
    for (k = 0; k < N_ELF_MACHINES; k++)
        if (strcmp(ELF_MACHINES[k].name, machine) == 0)
            want = ELF_MACHINES[k].em;
    if (want >= 0 && em != want) {
        for (k = 0; k < N_ELF_MACHINES; k++)
            if (ELF_MACHINES[k].em == em)
                return PyUnicode_FromFormat("built for %s, not %s", ELF_MACHINES[k].name, machine);
        return PyUnicode_FromFormat("built for ELF machine %d, not %s", em, machine);
    }
    phoff = le(head + 32, 8);
    phentsize = le(head + 54, 2);
    phnum = le(head + 56, 2);
    total = phentsize * phnum;  /* at most 65535 * 65535: no overflow */
    if (phentsize < 56 || phnum == 0 || phoff > usize || total > usize - phoff)
        return PyUnicode_FromFormat("truncated: %lld bytes cannot hold its program headers", size);
    if (phoff + total <= (unsigned long long)n) {
        table = head + phoff;
    } else {
        table = (unsigned char *)PyMem_Malloc((size_t)total);
        allocated = 1;
        if (table == NULL)
            return PyErr_NoMemory();
        if (pread(fd, table, (size_t)total, (off_t)phoff) != (ssize_t)total) {
            int saved = errno ? errno : EIO;
            PyMem_Free(table);
            errno = saved;
            return NULL;
        }
    }
    for (i = 0; i + phentsize <= total && why == NULL; i += phentsize) {
        if (le(table + i, 4) == 1) {  /* PT_LOAD: p_offset + p_filesz must lie inside the file */
            unsigned long long off = le(table + i + 8, 8), filesz = le(table + i + 32, 8);
            if (off > usize || filesz > usize - off) {
                if (filesz > ULLONG_MAX - off)
                    why = PyUnicode_FromFormat("truncated: a segment ends past byte %llu, the file has %lld",
                                               ULLONG_MAX, size);
                else
                    why = PyUnicode_FromFormat("truncated: a segment ends at byte %llu, the file has %lld",
                                               off + filesz, size);
                if (why == NULL)
                    break;
            }
        }
    }
    if (allocated)
        PyMem_Free(table);
    if (why == NULL && PyErr_Occurred())
        return NULL;
    if (why == NULL) {
        Py_INCREF(Py_None);
        why = Py_None;
    }
    return why;
}

static PyObject *refusal(PyObject *why)
{
    return why == NULL ? NULL : Py_BuildValue("(ssN)", "", "", why);
}

/* check_build(path, roots, machine): the checks a build file passes before it is loaded, on either path. */
static PyObject *check_build_impl(PyObject *path, PyObject *roots, const char *machine)
{
    PyObject *bpath, *real = NULL, *result = NULL, *rootseq = NULL, *why;
    struct stat st;
    int fd;
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
    Py_DECREF(bpath);
    if (fd < 0) {
        Py_XDECREF(rootseq);
        return refusal(PyUnicode_FromFormat("%U: cannot open it: %s", path, strerror(errno)));
    }
    if (fstat(fd, &st) != 0) {
        result = refusal(PyUnicode_FromFormat("%U: cannot read it: %s", path, strerror(errno)));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        result = refusal(PyUnicode_FromFormat("%U: not a regular file", path));
        goto done;
    }
    if (nroots > 0) {
        char buf[PATH_MAX + 1];
        ssize_t n = -1;
#if defined(__linux__)
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);  /* the file this descriptor really has open */
        n = readlink(link, buf, PATH_MAX);
#endif
        if (n < 0 || n >= PATH_MAX) {
            PyObject *b = fs_bytes(path);
            char *r = b == NULL ? NULL : realpath(PyBytes_AS_STRING(b), NULL);
            Py_XDECREF(b);
            if (r == NULL) {
                if (!PyErr_Occurred())
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
    why = elf_problem(fd, (long long)st.st_size, machine);
    if (why == NULL) {
        if (!PyErr_Occurred())
            result = refusal(PyUnicode_FromFormat("%U: cannot read it: %s", path, strerror(errno)));
        goto done;
    }
    if (why != Py_None) {
        result = refusal(PyUnicode_FromFormat("%U: %U", path, why));
        Py_DECREF(why);
        goto done;
    }
    Py_DECREF(why);
#endif
    result = Py_BuildValue("(Ns#O)", identity(&st), "", (Py_ssize_t)0, Py_None);
    if (result != NULL && real != NULL) {
        PyObject *old = PyTuple_GET_ITEM(result, 1);
        Py_INCREF(real);
        PyTuple_SET_ITEM(result, 1, real);
        Py_DECREF(old);
    }
done:
    close(fd);
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

/* load_extension(name, path, amx): load the extension at path as module name (its init runs here, so a failure
 * can fall back), as importlib's ExtensionFileLoader would, with __spec__ and __file__ set before its exec
 * (pybind11 3 reads them). */
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

/* cache_bases(env): the folders a per-user cache may live in, best first, each with whether it must be private:
 * $XDG_CACHE_HOME (or ~/.cache), then $XDG_RUNTIME_DIR (a per-boot 0700 folder of this user's, which keeps
 * picks where the home is read-only or another user's).  Relative values are ignored. */
static PyObject *cache_bases_impl(PyObject *env)
{
    PyObject *out = PyList_New(0), *base = env_get(env, "XDG_CACHE_HOME"), *run;
    if (out == NULL)
        goto fail;
    if (!absolute(base)) {
        PyObject *home = env_get(env, "HOME");
        Py_CLEAR(base);
        if (home == NULL) {
            PyObject *tilde = PyUnicode_FromString("~");
            home = tilde == NULL ? NULL : call_os_path("expanduser", tilde);
            Py_XDECREF(tilde);
            if (home == NULL)
                goto fail;
        }
        if (absolute(home))
            base = PyUnicode_FromFormat("%U/.cache", home);
        Py_DECREF(home);
        if (base == NULL && PyErr_Occurred())
            goto fail;
    }
    if (base != NULL) {
        PyObject *t = Py_BuildValue("(OO)", base, Py_False);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
    }
    run = env_get(env, "XDG_RUNTIME_DIR");
    if (absolute(run) && (base == NULL || PyUnicode_Compare(run, base) != 0)) {
        PyObject *t = Py_BuildValue("(OO)", run, Py_True);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(run);
            goto fail;
        }
        Py_DECREF(t);
    }
    Py_XDECREF(run);
    Py_XDECREF(base);
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(base);
    return NULL;
}

static PyObject *py_cache_bases(PyObject *self, PyObject *env)
{
    return cache_bases_impl(env);
}

/* A private file of this user's (regular, mode 0600 or less, singly linked, at most limit bytes), opened without
 * following a symlink and non-blocking (a FIFO in its place cannot hang): new bytes, or Py_None. */
static PyObject *read_private_impl(int dir_fd, const char *name, Py_ssize_t limit)
{
    struct stat st;
    PyObject *data = NULL;
    int fd = openat(dir_fd, name, FD_O_READ | O_NOFOLLOW);
    if (fd < 0)
        Py_RETURN_NONE;
    if (fstat(fd, &st) == 0 && (st.st_mode & 0170077) == 0100000 && st.st_uid == geteuid() && st.st_nlink == 1 &&
        st.st_size <= limit) {
        char *buf = (char *)PyMem_Malloc((size_t)limit + 1);
        ssize_t n;
        if (buf == NULL) {
            close(fd);
            return PyErr_NoMemory();
        }
        n = read(fd, buf, (size_t)limit + 1);
        if (n >= 0)
            data = PyBytes_FromStringAndSize(buf, n);
        PyMem_Free(buf);
    }
    close(fd);
    if (data == NULL && !PyErr_Occurred()) {
        Py_INCREF(Py_None);
        data = Py_None;
    }
    return data;
}

static PyObject *py_read_private(PyObject *self, PyObject *args)
{
    PyObject *dir, *name, *bname, *r;
    Py_ssize_t limit;
    int dir_fd = AT_FDCWD;
    if (!PyArg_ParseTuple(args, "OOn:read_private", &dir, &name, &limit))
        return NULL;
    if (dir != Py_None) {
        dir_fd = (int)PyLong_AsLong(dir);
        if (dir_fd == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!PyUnicode_FSConverter(name, &bname))
        return NULL;
    r = read_private_impl(dir_fd, PyBytes_AS_STRING(bname), limit < 0 ? 0 : limit);
    Py_DECREF(bname);
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
 *     <key: what the decision rests on, see pick_key>
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

static int fatdispatch_variables(void)
{
    char **e;
    for (e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, "FATDISPATCH_", 12) == 0)
            return 1;
    return 0;
}

/* pick_name(variants_dir): the entry's name, from the folder's device and inode (OSError where it is gone). */
static PyObject *pick_name_impl(PyObject *variants_dir)
{
    struct stat st;
    if (stat_str(variants_dir, &st) != 0)
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, variants_dir);
    char name[48];
    snprintf(name, sizeof(name), "%llx-%llx", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    return PyUnicode_FromString(name);
}

static PyObject *py_pick_name(PyObject *self, PyObject *arg)
{
    PyObject *path = path_str(arg), *r;
    if (path == NULL)
        return NULL;
    r = pick_name_impl(path);
    Py_DECREF(path);
    return r;
}

/* The files fatdispatch decides with: this module and the decision module (an upgrade replaces both).  Where one
 * is not a file on disk (a frozen application keeps the package inside its executable), the executable stands
 * for it.  Borrowed reference, or NULL with OSError. */
static PyObject *runtime_identity(PyObject *self)
{
    fd_module_state *st = STATE(self);
    PyObject *file, *here, *files[2] = {NULL, NULL}, *parts[2] = {NULL, NULL};
    struct stat sb;
    int i;
    if (st->runtime_id != NULL)
        return st->runtime_id;
    file = PyObject_GetAttrString(self, "__file__");
    if (file == NULL || !PyUnicode_Check(file)) {
        PyErr_Clear();
        Py_XDECREF(file);
        file = PyUnicode_FromString("");
        if (file == NULL)
            return NULL;
    }
    {
        Py_ssize_t slash = PyUnicode_FindChar(file, '/', 0, PyUnicode_GET_LENGTH(file), -1);
        here = PyUnicode_Substring(file, 0, slash < 0 ? 0 : slash);  /* __file__.rpartition("/")[0] */
    }
    if (here == NULL) {
        Py_DECREF(file);
        return NULL;
    }
    files[0] = file;
    files[1] = PyUnicode_FromFormat("%U/fatdispatch/_select.py", here);
    Py_DECREF(here);
    for (i = 0; i < 2 && files[1] != NULL; i++) {
        if (PyUnicode_GET_LENGTH(files[i]) > 0 && stat_str(files[i], &sb) == 0) {
            parts[i] = identity(&sb);
        } else {
            PyObject *exe = PySys_GetObject("executable");  /* borrowed */
            if (exe == NULL || !PyUnicode_Check(exe) || stat_str(exe, &sb) != 0) {
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, exe);
                break;
            }
            PyObject *exe_id = identity(&sb);
            parts[i] = exe_id == NULL ? NULL : PyUnicode_FromFormat("('exe', %U)", exe_id);
            Py_XDECREF(exe_id);
        }
        if (parts[i] == NULL)
            break;
    }
    if (parts[0] != NULL && parts[1] != NULL)
        st->runtime_id = PyUnicode_FromFormat("(%U, %U)", parts[0], parts[1]);
    Py_XDECREF(files[0]);
    Py_XDECREF(files[1]);
    Py_XDECREF(parts[0]);
    Py_XDECREF(parts[1]);
    return st->runtime_id;
}

/* An item of a mapping, or (optional) None where it is missing: new reference. */
static PyObject *item(PyObject *map, const char *key, int optional)
{
    PyObject *k = PyUnicode_FromString(key), *v;
    if (k == NULL)
        return NULL;
    v = PyObject_GetItem(map, k);
    Py_DECREF(k);
    if (v == NULL && optional && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
        Py_INCREF(Py_None);
        v = Py_None;
    }
    return v;
}

/* cpu_words(raw): the raw CPUID/XCR0 facts of this process (cpu()["raw"]), the APIC id masked (CPUID.1:EBX bits
 * 31-24 say which core ran CPUID, not a feature). */
static PyObject *cpu_words_impl(PyObject *raw)
{
    static const char *const keys[9] = {"max_leaf", "vendor", "max_ext", "xcr0", "amx_permission", "1", "7", "7.1",
                                        "0x80000001"};
    PyObject *out = PyTuple_New(9);
    int i;
    if (out == NULL)
        return NULL;
    for (i = 0; i < 9; i++) {
        PyObject *v = item(raw, keys[i], i == 3 || i == 4);
        if (v != NULL && i == 5) {
            PyObject *seq = PySequence_Tuple(v), *masked = NULL;
            Py_DECREF(v);
            v = NULL;
            if (seq != NULL && PyTuple_GET_SIZE(seq) == 4) {
                PyObject *mask = PyLong_FromUnsignedLong(0x00FFFFFFul);
                PyObject *ebx = mask == NULL ? NULL : PyNumber_And(PyTuple_GET_ITEM(seq, 1), mask);
                Py_XDECREF(mask);
                if (ebx != NULL)
                    masked = PyTuple_Pack(4, PyTuple_GET_ITEM(seq, 0), ebx, PyTuple_GET_ITEM(seq, 2),
                                          PyTuple_GET_ITEM(seq, 3));
                Py_XDECREF(ebx);
            } else if (seq != NULL) {
                PyErr_SetString(PyExc_ValueError, "CPUID leaf 1 must be 4 words");
            }
            Py_XDECREF(seq);
            v = masked;
        }
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *py_cpu_words(PyObject *self, PyObject *raw)
{
    return cpu_words_impl(raw);
}

/* Up to 4 KiB of a small file as text, or "-". */
static PyObject *small_file(const char *path)
{
    char buf[4096];
    ssize_t n = -1;
    int fd = open(path, FD_O_READ);
    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf));
        close(fd);
    }
    return n < 0 ? PyUnicode_FromString("-") : PyUnicode_DecodeUTF8(buf, n, "replace");
}

/* The names in a folder, sorted and joined by commas, or "-" where it cannot be read. */
static PyObject *folder_names(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    PyObject *names, *sep, *out;
    if (d == NULL)
        return PyUnicode_FromString("-");
    names = PyList_New(0);
    while (names != NULL && (e = readdir(d)) != NULL) {
        PyObject *n;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        n = PyUnicode_DecodeFSDefault(e->d_name);
        if (n == NULL || PyList_Append(names, n) < 0)
            Py_CLEAR(names);
        Py_XDECREF(n);
    }
    closedir(d);
    if (names == NULL || PyList_Sort(names) < 0 || (sep = PyUnicode_FromString(",")) == NULL) {
        Py_XDECREF(names);
        return NULL;
    }
    out = PyUnicode_Join(sep, names);
    Py_DECREF(sep);
    Py_DECREF(names);
    return out;
}

/* gpu_facts_key(env): what the GPU facts of this process rest on, without asking the driver: no driver at all;
 * or the boot, the driver's version, the set of GPUs (names only: reading files there can wake a GPU), WSL's
 * driver library, and CUDA's visibility variables. */
static PyObject *gpu_facts_key_impl(PyObject *env)
{
    struct stat wsl;
    int have_proc = access(LINUX_DRIVER_FILES[0], F_OK) == 0, have_wsl = stat(LINUX_DRIVER_FILES[1], &wsl) == 0;
    PyObject *boot, *version, *gpus, *wsl_id, *vis, *order, *t, *r;
    if (!have_proc && !have_wsl)
        return PyUnicode_FromString("no-driver");
    boot = small_file("/proc/sys/kernel/random/boot_id");
    version = small_file(LINUX_DRIVER_FILES[0]);
    gpus = folder_names("/proc/driver/nvidia/gpus");
    wsl_id = have_wsl ? identity(&wsl) : (Py_INCREF(Py_None), Py_None);
    vis = env_value(env, "CUDA_VISIBLE_DEVICES", 0);  /* "" (no GPU visible) is not unset */
    order = env_value(env, "CUDA_DEVICE_ORDER", 0);
    if (boot == NULL || version == NULL || gpus == NULL || wsl_id == NULL) {
        Py_XDECREF(boot); Py_XDECREF(version); Py_XDECREF(gpus); Py_XDECREF(wsl_id);
        Py_XDECREF(vis); Py_XDECREF(order);
        return NULL;
    }
    t = Py_BuildValue("(sNNNNOO)", "driver", boot, version, gpus, wsl_id, vis ? vis : Py_None,
                      order ? order : Py_None);
    Py_XDECREF(vis);
    Py_XDECREF(order);
    if (t == NULL)
        return NULL;
    r = PyObject_Repr(t);
    Py_DECREF(t);
    return r;
}

static PyObject *py_gpu_facts_key(PyObject *self, PyObject *env)
{
    return gpu_facts_key_impl(env);
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

/* pick_key(variants_dir, raw, cuda, env): everything a pick rests on besides the build file: the interpreter,
 * fatdispatch's own files, the manifest's identity, this process's raw CPU words and, for a module with CUDA
 * builds, the GPU facts. */
static PyObject *pick_key_impl(PyObject *self, PyObject *variants_dir, PyObject *raw, int cuda, PyObject *env)
{
    PyObject *impl = PySys_GetObject("implementation"), *tag, *rid, *manifest, *ident, *words, *gpu, *t, *r;
    struct stat sb;
    if (impl == NULL || (tag = PyObject_GetAttrString(impl, "cache_tag")) == NULL)
        return NULL;
    rid = runtime_identity(self);
    manifest = rid == NULL ? NULL : PyUnicode_FromFormat("%U/" MANIFEST_NAME, variants_dir);
    if (manifest == NULL) {
        Py_DECREF(tag);
        return NULL;
    }
    if (stat_str(manifest, &sb) != 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, manifest);
        Py_DECREF(manifest);
        Py_DECREF(tag);
        return NULL;
    }
    Py_DECREF(manifest);
    ident = identity(&sb);
    words = ident == NULL ? NULL : cpu_words_impl(raw);
    gpu = words == NULL ? NULL : (cuda ? gpu_facts_key_impl(env) : (Py_INCREF(Py_None), Py_None));
    if (gpu == NULL) {
        Py_DECREF(tag);
        Py_XDECREF(ident);
        Py_XDECREF(words);
        return NULL;
    }
    t = Py_BuildValue("(NOONNN)", tag, PySys_GetObject("hexversion"), rid, ident, words, gpu);
    if (t == NULL)
        return NULL;
    r = PyObject_Repr(t);
    Py_DECREF(t);
    return r;
}

static PyObject *py_pick_key(PyObject *self, PyObject *args)
{
    PyObject *arg, *raw, *env, *dir, *r;
    int cuda;
    if (!PyArg_ParseTuple(args, "OOpO:pick_key", &arg, &raw, &cuda, &env))
        return NULL;
    if ((dir = path_str(arg)) == NULL)
        return NULL;
    r = pick_key_impl(self, dir, raw, cuda, env);
    Py_DECREF(dir);
    return r;
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
    r = PyUnicode_AsEncodedString(text, "utf-8", "surrogateescape");
    Py_DECREF(text);
    return r;
}

/* read_pick(variants_dir, env): the entry of variants_dir as its lines (eleven, and "" after the last newline),
 * or None. */
static PyObject *read_pick_impl(PyObject *variants_dir, PyObject *env)
{
    PyObject *name = pick_name_impl(variants_dir), *bases, *result = NULL;
    Py_ssize_t i;
    if (name == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    bases = cache_bases_impl(env);
    for (i = 0; bases != NULL && i < PyList_GET_SIZE(bases) && result == NULL; i++) {
        PyObject *base = PyTuple_GET_ITEM(PyList_GET_ITEM(bases, i), 0);
        PyObject *path = PyUnicode_FromFormat("%U/" CACHE_DIR "/" PICKS_DIR "/%U", base, name), *b, *data, *text;
        if (path == NULL || (b = fs_bytes(path)) == NULL) {
            Py_XDECREF(path);
            break;
        }
        Py_DECREF(path);
        data = read_private_impl(AT_FDCWD, PyBytes_AS_STRING(b), PICKS_LIMIT);
        Py_DECREF(b);
        if (data == NULL)
            break;
        if (data == Py_None) {
            Py_DECREF(data);
            continue;
        }
        text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), "surrogateescape");
        Py_DECREF(data);
        if (text == NULL)
            break;
        {
            PyObject *nl = PyUnicode_FromString("\n");
            PyObject *lines = nl == NULL ? NULL : PyUnicode_Split(text, nl, -1);
            Py_XDECREF(nl);
            Py_DECREF(text);
            if (lines == NULL)
                break;
            if (PyList_GET_SIZE(lines) == ENTRY_FIELDS + 1 &&
                PyUnicode_CompareWithASCIIString(PyList_GET_ITEM(lines, 0), PICKS_FORMAT) == 0 &&
                PyUnicode_Compare(PyList_GET_ITEM(lines, 1), variants_dir) == 0 &&
                PyUnicode_GET_LENGTH(PyList_GET_ITEM(lines, ENTRY_FIELDS)) == 0)
                result = lines;
            else
                Py_DECREF(lines);
        }
    }
    Py_DECREF(name);
    if (bases == NULL || PyErr_Occurred()) {
        Py_XDECREF(bases);
        Py_XDECREF(result);
        return NULL;
    }
    Py_DECREF(bases);
    if (result == NULL) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    return result;
}

static PyObject *py_read_pick(PyObject *self, PyObject *args)
{
    PyObject *arg, *env, *dir, *r;
    if (!PyArg_ParseTuple(args, "OO:read_pick", &arg, &env))
        return NULL;
    if ((dir = path_str(arg)) == NULL)
        return NULL;
    r = read_pick_impl(dir, env);
    Py_DECREF(dir);
    return r;
}

/* A failure that means "no hit": the full path decides afresh, records any failure, and forgets the entry. */
static int miss(void)
{
    if (PyErr_ExceptionMatches(PyExc_OSError) || PyErr_ExceptionMatches(PyExc_ImportError) ||
        PyErr_ExceptionMatches(PyExc_LookupError) || PyErr_ExceptionMatches(PyExc_TypeError) ||
        PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* Whether the entry's fields describe a build this process may load now (1), may not (0), or an error (-1).
 * A hit is never weaker than a miss: an entry of this user's for this folder under an unchanged key; the named
 * build's requirements checked against this process's CPU; its file, under the folder by its path, the very
 * inode that passed check_build (confinement included) when the entry was written: same device, inode, size,
 * mtime, ctime and link count, so not rewritten, re-linked, moved or swapped for another file behind a
 * symlinked folder; and passing check_build's file checks again (regular file, ELF header, segments). */
static int entry_holds(PyObject *self, PyObject *variants_dir, PyObject *lines, PyObject *env)
{
#ifdef FD_X86
    PyObject *key = PyList_GET_ITEM(lines, 2), *path = PyList_GET_ITEM(lines, 4);
    PyObject *ident = PyList_GET_ITEM(lines, 6), *machine = PyList_GET_ITEM(lines, 7);
    PyObject *needs = PyList_GET_ITEM(lines, 8), *cuda = PyList_GET_ITEM(lines, 10);
    PyObject *raw, *fresh, *prefix, *checked;
    unsigned long long usable = 0;
    const char *machine_s;
    int ok, cuda_flag;
    cuda_flag = PyUnicode_CompareWithASCIIString(cuda, "1") == 0;
    if (!cuda_flag && PyUnicode_CompareWithASCIIString(cuda, "0") != 0)
        return 0;
    prefix = PyUnicode_FromFormat("%U/", variants_dir);
    if (prefix == NULL)
        return -1;
    ok = (int)PyUnicode_Tailmatch(path, prefix, 0, PY_SSIZE_T_MAX, -1);
    Py_DECREF(prefix);
    if (ok <= 0)
        return ok;
    raw = fd_raw_usable(self, &usable);  /* this process's CPU, read now: the words cpu()["raw"] holds */
    fresh = raw == NULL ? NULL : pick_key_impl(self, variants_dir, raw, cuda_flag, env);
    Py_XDECREF(raw);
    if (fresh == NULL)
        return -1;
    ok = PyUnicode_Compare(fresh, key) == 0;
    Py_DECREF(fresh);
    if (ok && PyUnicode_GET_LENGTH(needs) > 0) {  /* the build's requirements, against the usable features */
        PyObject *sp = PyUnicode_FromString(" "), *want = sp == NULL ? NULL : PyUnicode_Split(needs, sp, -1);
        Py_XDECREF(sp);
        ok = want == NULL ? -1 : fd_all_usable(usable, want);
        Py_XDECREF(want);
        if (ok < 0)
            return -1;
    }
    if (!ok)
        return 0;
    machine_s = PyUnicode_AsUTF8(machine);
    if (machine_s == NULL)
        return -1;
    checked = check_build_impl(path, Py_None, machine_s);
    if (checked == NULL)
        return -1;
    ok = PyTuple_GET_ITEM(checked, 2) == Py_None && PyUnicode_Compare(PyTuple_GET_ITEM(checked, 0), ident) == 0 &&
         PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(checked, 1)) == 0;
    Py_DECREF(checked);
    return ok;
#else
    return 0;
#endif
}

/* Bind spec.name from the pick cache: the module (new reference), Py_None where the cache does not answer (no
 * entry, or anything it rests on changed), or NULL with an error the import should see. */
static PyObject *load_cached(PyObject *self, PyObject *spec, PyObject *name, PyObject *variants_dir)
{
    PyObject *sysmod, *env = NULL, *lines, *module = NULL, *build, *path, *amx, *hit, *logging;
    int holds;
    if (!FD_PICKS_HERE || fatdispatch_variables() || !PyUnicode_Check(variants_dir))
        Py_RETURN_NONE;
    sysmod = PyImport_GetModuleDict();
    lines = read_pick_impl(variants_dir, env);  /* env NULL: the process environment */
    if (lines == NULL || lines == Py_None) {
        if (lines == NULL && !miss())
            return NULL;
        Py_XDECREF(lines);
        Py_RETURN_NONE;
    }
    build = PyList_GET_ITEM(lines, 3);
    path = PyList_GET_ITEM(lines, 4);
    amx = PyList_GET_ITEM(lines, 9);
    holds = PyUnicode_CompareWithASCIIString(amx, "0") == 0 || PyUnicode_CompareWithASCIIString(amx, "1") == 0;
    if (holds)
        holds = entry_holds(self, variants_dir, lines, env);
    if (holds > 0)
        module = load_extension_impl(self, name, path, PyUnicode_CompareWithASCIIString(amx, "1") == 0);
    if (holds < 0 || module == NULL) {
        if (holds == 0 || miss()) {
            Py_DECREF(lines);
            Py_RETURN_NONE;
        }
        Py_DECREF(lines);
        return NULL;
    }
    hit = PyTuple_Pack(2, build, path);
    if (hit == NULL || PyObject_SetAttrString(spec, "origin", path) < 0 ||
        PyObject_SetAttrString(spec, "has_location", Py_True) < 0 ||
        PyObject_SetAttrString(module, "__fatdispatch_variant__", build) < 0 ||
        PyDict_SetItem(STATE(self)->hits, name, hit) < 0) {
        Py_XDECREF(hit);
        Py_DECREF(lines);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(hit);
    Py_DECREF(lines);
    /* An application that logs fatdispatch's DEBUG still gets every reason. */
    logging = PyDict_GetItemString(sysmod, "logging");
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
            enabled = r == NULL ? -1 : 0;
        }
        if (enabled < 0) {
            Py_DECREF(module);
            return NULL;
        }
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

static PyMethodDef fd_methods[] = {
    {"install", (PyCFunction)(void (*)(void))py_install, METH_VARARGS | METH_KEYWORDS,
     "install(package, modules=None): register the fat modules of package (names relative to it)."},
    {"find_spec", (PyCFunction)(void (*)(void))py_find_spec, METH_VARARGS | METH_KEYWORDS,
     "The meta-path finder: a spec for a registered fat module, else None."},
    {"invalidate_caches", py_invalidate_caches, METH_NOARGS, "Nothing to invalidate."},
    {"create_module", py_create_module, METH_O, "The loader: bind the best build of spec.name."},
    {"exec_module", py_exec_module, METH_O, "Nothing: the build's init ran in create_module."},
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
     "cache_bases(env) -> [(folder, must_be_private)]: $XDG_CACHE_HOME or ~/.cache, then $XDG_RUNTIME_DIR."},
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
    return 0;
}

static int fd_traverse(PyObject *m, visitproc visit, void *arg)
{
    fd_module_state *st = STATE(m);
    if (st == NULL)
        return 0;
    Py_VISIT(st->registry);
    Py_VISIT(st->hits);
    Py_VISIT(st->runtime_id);
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
    Py_CLEAR(st->runtime_id);
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
