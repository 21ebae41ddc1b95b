"""fatdispatch's import path: the finder and loader of fat modules, their file checks, the pick cache reader."""

# A fat package's __init__.py holds one line, written by fatdispatch's build helper (the wiring contract):
#
#     __import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module
#
# install() registers mypkg._core and puts this module on sys.meta_path (it is the finder and the loader);
# `import mypkg._core` then runs create_module, which binds the best build under that stable name with CPython's own extension
# loader.  The module is the extension itself (no proxy), with __fatdispatch_variant__ set.
#
# Two ways to the same binding, sharing every check here:
# * a cached pick (load_cached): the per-user pick cache remembers the build chosen for a variants folder
#   with everything the choice rests on; it answers only while all of that is unchanged, and the build is
#   checked again as the full path checks it (requirements against this CPU, identity, ELF header);
# * the full path (fatdispatch._load): read the manifest, probe, decide, load with fallback, remember a
#   clean first choice.  It is reached through _full_path(), the only place this module reaches up into
#   the fatdispatch package (tests/test_layers.py checks that).
#
# Top-level and free of package imports, so that a cached pick costs this module and the compiled
# primitives (_fatdispatch_cpu) and nothing else: on a slow VM every module load costs ~100 us and each KB
# of bytecode ~6 us, so explanations live in comments, which the bytecode does not carry.

import _imp
import _thread
import os
import sys

# importlib's bootstrap modules are always loaded; importing importlib.machinery would cost a module load.
_bootstrap = sys.modules["_frozen_importlib"]
EXTENSION_SUFFIXES = sys.modules["_frozen_importlib_external"].EXTENSION_SUFFIXES
ExtensionFileLoader = sys.modules["_frozen_importlib_external"].ExtensionFileLoader
ModuleSpec = _bootstrap.ModuleSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Iterable, Mapping, Sequence

# The manifest contract's two names (fatdispatch._manifest owns them; tests/test_layers.py checks they agree).
VARIANTS_SUFFIX = ".variants"
MANIFEST_NAME = "manifest.json"

CACHE_DIR = "fatdispatch"          # under $XDG_CACHE_HOME (or ~/.cache), else $XDG_RUNTIME_DIR
PICKS_DIR = "picks-v3"
PICKS_FORMAT = "fatdispatch-pick 3"
PICKS_KEEP = 64                    # entries kept (one per variants folder ever imported)
PICKS_LIMIT = 8192                 # bytes; an entry is ~0.7 KB
# An NVIDIA driver on Linux shows one of these (WSL2 has no /proc/driver/nvidia).
LINUX_DRIVER_FILES = ("/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libnvidia-ml.so.1")
NATIVE = "_fatdispatch_cpu"        # the compiled primitives (CPUID/XGETBV and the feature decoder)

_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LINUX = sys.platform.startswith("linux")
_SEP = os.sep
_PICKS_HERE = _LINUX and os.uname().machine == "x86_64" and sys.maxsize > 2**32  # where the CPU key is known

registry: "dict[str, str]" = {}               # fat module -> its variants folder
hits: "dict[str, tuple[str, str]]" = {}       # fat module -> (build, path) bound from the pick cache
_lock = _thread.allocate_lock()


# ---------------------------------------------------------------- registering fat modules


def install(package: str, modules: "Iterable[str] | None" = None) -> None:
    """Register the fat modules of ``package``: names relative to it (``["_core"]``), by default every
    ``<name>.variants`` folder in it.  Cheap and idempotent; all found before any is registered."""
    paths = list(getattr(sys.modules.get(package), "__path__", None) or ())
    names = None if modules is None or isinstance(modules, str) else list(modules)
    found = []
    for mod in names if names is not None and paths else ():
        for entry in paths:
            folder = f"{entry}{_SEP}{mod}{VARIANTS_SUFFIX}"
            if os.path.isdir(folder):
                found.append((f"{package}.{mod}", folder))
                break
        else:
            break
    if names is None or not paths or len(found) < len(names):  # discovery, and every error, on the full path
        _full_path().install_slowly(package, modules)
        return
    for fullname, folder in found:
        register(fullname, folder)


def register(fullname: str, variants_dir: str) -> None:
    """Register one fat module by its variants folder."""
    if variants_dir[:1] != "/" and not os.path.isabs(variants_dir):
        variants_dir = os.path.abspath(variants_dir)  # a relative sys.path entry must survive a chdir
    finder = sys.modules[__name__]  # this module is the finder and the loader: classes cost ~30 us each to make
    with _lock:
        registry[fullname] = variants_dir
        if finder not in sys.meta_path:
            sys.meta_path.insert(0, finder)


def _full_path() -> "Any":
    from fatdispatch import _load

    return _load


# The meta-path finder: answers only for registered fat modules, and decides nothing.  CPython 3.11 calls
# find_spec with its global import lock held, so nothing is read or probed here (an NVML worker thread
# importing anything would wait on that lock): the loader decides, under the module's own lock only.
def find_spec(fullname: str, path: "Sequence[str] | None" = None, target: "Any" = None) -> "Any":
    folder = registry.get(fullname)
    return None if folder is None else ModuleSpec(fullname, sys.modules[__name__], origin=folder)


def invalidate_caches() -> None:
    pass


# The loader: binds the best build, from the pick cache where it answers, else the full way.
def create_module(spec: "Any") -> "ModuleType":
    folder = registry.get(spec.name) or spec.origin
    module = load_cached(spec, folder)
    return _full_path().load(spec, folder) if module is None else module


def exec_module(module: "ModuleType") -> None:
    pass  # the extension's init ran in create_module, so that a failure can fall back to the next build


# ---------------------------------------------------------------- the checks every build passes, on either path

_ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "i686": 3, "ppc64le": 21, "s390x": 22}


def identity(st: "os.stat_result") -> "tuple[int, ...]":
    # device, inode, size, mtime, ctime (which no utime() can restore) and link count
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def elf_problem(fd: int, size: int, machine: str) -> "str | None":
    """Why the open file cannot be a loadable ELF object for ``machine``, or None."""
    # dlopen of a truncated file maps segments past its end and dies with SIGBUS when they are touched, so
    # the header, the architecture and every program header and loadable segment are checked first.
    head = os.pread(fd, 4096, 0)  # the header and, as linkers place them, the program headers
    if len(head) < 64 or head[:4] != b"\x7fELF":
        return "not an ELF shared object"
    if head[4] != 2 or head[5] != 1:
        return "not a 64-bit little-endian ELF object"
    le = int.from_bytes
    em = le(head[18:20], "little")
    want = _ELF_MACHINES.get(machine)
    if want is not None and em != want:
        names = {v: k for k, v in _ELF_MACHINES.items()}
        return f"built for {names.get(em, f'ELF machine {em}')}, not {machine}"
    phoff, phentsize, phnum = le(head[32:40], "little"), le(head[54:56], "little"), le(head[56:58], "little")
    if phentsize < 56 or phnum == 0 or phoff + phentsize * phnum > size:
        return f"truncated: {size} bytes cannot hold its program headers"
    table = head[phoff:phoff + phentsize * phnum]
    if len(table) < phentsize * phnum:
        table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(0, phentsize * phnum, phentsize):
        if le(table[i:i + 4], "little") == 1:  # PT_LOAD: p_offset + p_filesz must lie inside the file
            end = le(table[i + 8:i + 16], "little") + le(table[i + 32:i + 40], "little")
            if end > size:
                return f"truncated: a segment ends at byte {end}, the file has {size}"
    return None


def check_build(path: str, roots: "Sequence[str]", machine: str) -> "tuple[str, str, str | None]":
    """Check a build file before it is loaded: a regular file, really inside one of ``roots``, an ELF object
    for ``machine`` whose segments lie inside it.  (identity, real path, None), or ("", "", why not).  With no
    ``roots`` the real path is not looked up ("" is returned): a pick cache hit compares identities instead."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as exc:
        return "", "", f"{path}: cannot open it: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            return "", "", f"{path}: not a regular file"
        real = ""
        if roots:
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")  # the file this descriptor really has open: one syscall
            except OSError:
                real = os.path.realpath(path)
        if roots and not any(real.startswith(root + os.sep) for root in roots):
            return "", "", (f"{path}: the file is really {real}, outside its installed package "
                            f"({' or '.join(roots)}); refusing to load it")
        why = elf_problem(fd, st.st_size, machine) if _LINUX else None
        return ("", "", f"{path}: {why}") if why else (repr(identity(st)), real, None)
    except OSError as exc:
        return "", "", f"{path}: cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)


_native_module: "Any" = False  # not tried yet; then the module, or None


def native() -> "Any":
    """The compiled primitives ``_fatdispatch_cpu``, or None where they cannot be loaded."""
    # Loaded from the file beside this module (the same installation, never another copy further along
    # sys.path); where it is elsewhere (a frozen application), by a normal import.
    global _native_module
    if _native_module is not False:
        return _native_module
    module = sys.modules.get(NATIVE)
    here = __file__.rpartition(_SEP)[0] if "__file__" in globals() else ""
    for suffix in EXTENSION_SUFFIXES if module is None and here else ():
        path = f"{here}{_SEP}{NATIVE}{suffix}"
        try:
            module = load_extension(NATIVE, path, False)
        except ImportError:  # not built for this suffix, or not loadable: the next one, then a normal import
            continue
        module.__file__ = path
        sys.modules[NATIVE] = module
        break
    if module is None:
        try:
            import _fatdispatch_cpu as module
        except ImportError:
            module = None
    _native_module = module
    return module


def load_extension(name: str, path: str, amx: bool) -> "ModuleType":
    """Load the extension at ``path`` as module ``name`` (its init runs here, so a failure can fall back)."""
    if amx:
        mod = native()
        if mod is None or not mod.request_amx():
            raise ImportError("the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM)")
    spec = ModuleSpec(name, ExtensionFileLoader(name, path), origin=path)
    module: "ModuleType" = _imp.create_dynamic(spec)
    module.__spec__, module.__file__ = spec, path  # as importlib sets them before exec (pybind11 3 reads them)
    _imp.exec_dynamic(module)
    return module


# ---------------------------------------------------------------- per-user files (written by fatdispatch._privfile)


def cache_bases(env: "Mapping[str, str]") -> "list[tuple[str, bool]]":
    """The folders a per-user cache may live in, best first, each with whether it must be private:
    ``$XDG_CACHE_HOME`` (or ``~/.cache``), then ``$XDG_RUNTIME_DIR``.  Relative values are ignored."""
    # XDG_RUNTIME_DIR (a per-boot 0700 folder of this user's) keeps picks where the home is read-only or
    # another user's.
    out = []
    base = env.get("XDG_CACHE_HOME") or ""
    if not _absolute(base):
        home = env.get("HOME") or os.path.expanduser("~")
        base = f"{home}{_SEP}.cache" if _absolute(home) else ""
    if base:
        out.append((base, False))
    run = env.get("XDG_RUNTIME_DIR") or ""
    if _absolute(run) and run != base:
        out.append((run, True))
    return out


def _absolute(path: str) -> bool:
    return path[:1] == "/" if _SEP == "/" else os.path.isabs(path)


def read_private(dir_fd: "int | None", name: str, limit: int) -> "bytes | None":
    """A private file of this user's (regular, mode 0600 or less, singly linked, at most ``limit`` bytes),
    opened without following a symlink and non-blocking (a FIFO in its place cannot hang), or None."""
    try:
        fd = os.open(name, _O_READ | _O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if ((st.st_mode & 0o170077) != 0o100000 or st.st_uid != os.geteuid() or st.st_nlink != 1
                or st.st_size > limit):
            return None
        return os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the pick cache
#
# One file per variants folder, <cache>/fatdispatch/picks-v3/<device>-<inode> (named by the folder's
# identity, so an import reads one small entry however many fat packages the user has), written by the
# full path after a clean load of its first choice, never for a decision FATDISPATCH_FORCE,
# FATDISPATCH_DISABLE or FATDISPATCH_UNSAFE_FORCE shaped.  Fixed lines, no parser:
#
#     fatdispatch-pick 3
#     <variants folder>
#     <key: what the decision rests on, see pick_key>
#     <build name>
#     <path of the build file>
#     <its real path>
#     <its identity>
#     <its ELF machine>
#     <the CPU features it requires, space-separated>
#     <1 if it needs AMX tiles, else 0>
#     <1 if the manifest has CUDA builds (the key then holds the GPU facts), else 0>
#
# Read only when no FATDISPATCH_* variable is set, on Linux x86-64.  An entry is read in one open: it must
# be a private file of this user's that says it is the entry of this very folder, so whatever folder chain
# leads to it, it is a pick this user's fatdispatch wrote for this folder (the chain's own rules matter where
# entries are written and pruned: fatdispatch._privfile).

_ENTRY_LINES = 12  # the eleven lines above and the empty string after the last newline
_runtime_id: "tuple[Any, ...] | None" = None


def _fatdispatch_variables() -> bool:
    keys = getattr(os.environ, "_data", None)
    if keys is not None and sys.platform != "win32":  # one search over every name (bytes), in C
        return b"\0".join((b"", *keys)).find(b"\0FATDISPATCH_") >= 0
    return any(k.upper().startswith("FATDISPATCH_") for k in os.environ)


def pick_name(variants_dir: str) -> str:
    st = os.stat(variants_dir)
    return f"{st.st_dev:x}-{st.st_ino:x}"


def _runtime_identity() -> "tuple[Any, ...]":
    # The files fatdispatch decides with: this module and the decision module (an upgrade replaces both).
    # Where one is not a file on disk (a frozen application keeps them inside its executable), the
    # executable stands for it.
    global _runtime_id
    if _runtime_id is None:
        here = __file__.rpartition(_SEP)[0] if "__file__" in globals() else ""
        out: "list[Any]" = []
        for f in (globals().get("__file__", ""), f"{here}{_SEP}fatdispatch{_SEP}_select.py"):
            try:
                out.append(identity(os.stat(f)))
            except (OSError, TypeError, ValueError):
                out.append(("exe", identity(os.stat(sys.executable))))
        _runtime_id = tuple(out)
    return _runtime_id


def cpu_words(raw: "Mapping[str, Any]") -> "tuple[Any, ...]":
    """The raw CPUID/XCR0 facts of this process (``_fatdispatch_cpu.cpu()["raw"]``), APIC id masked."""
    leaf1 = raw["1"]  # EBX bits 31-24: which core ran CPUID, not a feature
    return (raw["max_leaf"], raw["vendor"], raw["max_ext"], raw.get("xcr0"), raw.get("amx_permission"),
            (leaf1[0], leaf1[1] & 0x00FFFFFF, leaf1[2], leaf1[3]), raw["7"], raw["7.1"], raw["0x80000001"])


def _small_file(path: str) -> str:
    try:
        fd = os.open(path, _O_READ)
    except OSError:
        return "-"
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return "-"
    finally:
        os.close(fd)


def gpu_facts_key(env: "Mapping[str, str]") -> str:
    """What the GPU facts of this process rest on, without asking the driver."""
    # No driver at all; or the boot, the driver's version, the set of GPUs (names only: reading files there
    # can wake a GPU), WSL's driver library, and CUDA's visibility variables.
    present = [f for f in LINUX_DRIVER_FILES if os.path.exists(f)]
    if not present:
        return "no-driver"
    try:
        gpus = ",".join(sorted(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        gpus = "-"
    wsl = LINUX_DRIVER_FILES[1]
    return repr(("driver", _small_file("/proc/sys/kernel/random/boot_id"), _small_file(LINUX_DRIVER_FILES[0]), gpus,
                 identity(os.stat(wsl)) if wsl in present else None,
                 env.get("CUDA_VISIBLE_DEVICES"), env.get("CUDA_DEVICE_ORDER")))


def pick_key(variants_dir: str, raw_cpu: "Mapping[str, Any]", cuda: bool, env: "Mapping[str, str]") -> str:
    """Everything a pick rests on besides the build file: the interpreter, fatdispatch's own files, the
    manifest's identity, this process's raw CPU words and, for a module with CUDA builds, the GPU facts."""
    return repr((sys.implementation.cache_tag, sys.hexversion, _runtime_identity(),
                 identity(os.stat(variants_dir + "/" + MANIFEST_NAME)), cpu_words(raw_cpu),
                 gpu_facts_key(env) if cuda else None))


def pick_entry(variants_dir: str, key: str, build: str, path: str, real: str, ident: str, machine: str,
               features: "Iterable[str]", amx: bool, cuda: bool) -> "bytes | None":
    """The entry for a clean load, or None where it cannot be written as fixed lines."""
    fields = [PICKS_FORMAT, variants_dir, key, build, path, real, ident, machine, " ".join(sorted(features)),
              "1" if amx else "0", "1" if cuda else "0"]
    if any("\n" in f or "\r" in f for f in fields):
        return None
    return ("\n".join(fields) + "\n").encode("utf-8", "surrogateescape")


def read_pick(variants_dir: str, env: "Mapping[str, str]") -> "list[str] | None":
    """The entry of ``variants_dir`` as its lines, or None."""
    try:
        name = pick_name(variants_dir)
    except OSError:
        return None
    for base, _ in cache_bases(env):
        data = read_private(None, f"{base}/{CACHE_DIR}/{PICKS_DIR}/{name}", PICKS_LIMIT)
        if data is not None:
            lines = data.decode("utf-8", "surrogateescape").split("\n")
            if len(lines) == _ENTRY_LINES and lines[0] == PICKS_FORMAT and lines[1] == variants_dir and not lines[-1]:
                return lines
    return None


def load_cached(spec: "Any", variants_dir: str) -> "ModuleType | None":
    """Bind ``spec.name`` from the pick cache, or None (no entry, or anything it rests on changed)."""
    # A hit is never weaker than a miss: an entry of this user's for this folder under an unchanged key;
    # the named build's requirements checked against this process's CPU; its file, under the folder by its
    # path, the very inode that passed check_build (confinement included) when the entry was written: same
    # device, inode, size, mtime, ctime and link count, so not rewritten, re-linked, moved or swapped for
    # another file behind a symlinked folder; and passing check_build's file checks again (regular file,
    # ELF header, segments inside it).
    if not _PICKS_HERE or _fatdispatch_variables():
        return None
    lines = read_pick(variants_dir, os.environ)
    mod = native()
    if lines is None or mod is None:
        return None
    _, _, key, build, path, real, ident, machine, needs, amx, cuda = lines[:11]
    if amx not in ("0", "1") or cuda not in ("0", "1"):
        return None
    try:
        cpu = mod.cpu()
        if (not path.startswith(variants_dir + "/") or pick_key(variants_dir, cpu["raw"], cuda == "1", os.environ) != key
                or (needs and not cpu["features"].issuperset(needs.split(" ")))
                or check_build(path, (), machine) != (ident, "", None)):
            return None
        module = load_extension(spec.name, path, amx == "1")
    except (OSError, ImportError, LookupError, TypeError, ValueError):
        return None  # the full path decides afresh, records any failure, and forgets the entry
    spec.origin = path
    spec.has_location = True
    module.__fatdispatch_variant__ = build  # type: ignore[attr-defined]
    hits[spec.name] = (build, path)
    logging = sys.modules.get("logging")  # an application that logs fatdispatch's DEBUG still gets every reason
    if logging is not None and logging.getLogger("fatdispatch").isEnabledFor(logging.DEBUG):
        _full_path().log_decision(spec.name)
    return module
