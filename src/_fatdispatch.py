"""fatdispatch's import path: the one finder and loader of fat modules, their file checks, and the pick cache.

A fat package's ``__init__.py`` holds one line, written by fatdispatch's build helper (the wiring contract)::

    __import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module

:func:`install` registers ``mypkg._core`` and puts :class:`FatFinder` on ``sys.meta_path``.  ``import
mypkg._core`` then runs :meth:`FatLoader.create_module`, which binds the best build under that stable name
with CPython's own extension loader.  The module object is the extension itself, with
``__fatdispatch_variant__`` set: calls cost what they cost without fatdispatch.

Two ways to the same binding, sharing every check in this module:

* **A cached pick** (:func:`load_cached`): the per-user pick cache remembers the build chosen for a variants
  folder, with everything the choice rests on.  It answers only while all of that is unchanged, and the
  build is checked again exactly as the full path checks it (requirements against this CPU, its place and
  identity, its ELF header) before it is loaded.
* **The full path** (:mod:`fatdispatch._load`): read the manifest, probe, decide, load with fallback, and
  remember a clean first choice.  It is handed over through :func:`_full_path`, the only place this module
  reaches up into the ``fatdispatch`` package (``tests/test_layers.py`` checks it is the only one).

Top-level and free of package imports, so that a cached pick costs this module and the compiled primitives
(``_fatdispatch_cpu``) and nothing else.  Every per-user file it reads or writes is opened through
:func:`open_private_dir`: the folder chain is opened without following symlinks, owned by this user and
writable by nobody else; files are regular, ours, singly linked, opened non-blocking.
"""

import _imp
import _thread
import os
import sys

# importlib's bootstrap modules are always loaded; importing importlib.machinery would cost a module load.
_bootstrap = sys.modules["_frozen_importlib"]
_bootstrap_external = sys.modules["_frozen_importlib_external"]
EXTENSION_SUFFIXES = _bootstrap_external.EXTENSION_SUFFIXES
ExtensionFileLoader = _bootstrap_external.ExtensionFileLoader
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
PICKS_KEEP = 64                    # entries kept per folder (one per variants folder ever imported)
PICKS_LIMIT = 8192                 # bytes; an entry is ~0.5 KB
# An NVIDIA driver on Linux shows one of these (WSL2 has no /proc/driver/nvidia).
LINUX_DRIVER_FILES = ("/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libnvidia-ml.so.1")
NATIVE = "_fatdispatch_cpu"        # the compiled primitives (CPUID/XGETBV and the feature decoder)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_LINUX = sys.platform.startswith("linux")
_PICKS_HERE = _LINUX and os.uname().machine == "x86_64" and sys.maxsize > 2**32  # where the CPU key is known

registry: "dict[str, str]" = {}               # fat module -> its variants folder
hits: "dict[str, tuple[str, str]]" = {}       # fat module -> (build, path) bound from the pick cache
_lock = _thread.allocate_lock()


# ============================================================================
# Registering fat modules
# ============================================================================


def install(package: str, modules: "Iterable[str] | None" = None) -> None:
    """Register the fat modules of ``package`` (called from the package's ``__init__.py``).

    ``modules`` are names relative to the package (``["_core"]``); by default every ``<name>.variants``
    folder in the package is one.  Idempotent and cheap: nothing is probed or loaded until a fat module is
    imported.  Every folder is found before any module is registered (all or none).
    """
    paths = list(getattr(sys.modules.get(package), "__path__", None) or ())
    names = None if modules is None or isinstance(modules, str) else list(modules)
    found = []
    for mod in names if names is not None and paths else ():
        for entry in paths:
            folder = os.path.join(entry, mod + VARIANTS_SUFFIX)
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
    """Register one fat module by its variants folder (what :func:`install` does for each)."""
    if not os.path.isabs(variants_dir):
        variants_dir = os.path.abspath(variants_dir)  # a relative sys.path entry must survive a chdir
    with _lock:
        registry[fullname] = variants_dir
        if FatFinder not in sys.meta_path:
            sys.meta_path.insert(0, FatFinder)


def _full_path() -> "Any":
    """The full path, :mod:`fatdispatch._load` (read, probe, decide): the one hand-over up into the package."""
    from fatdispatch import _load

    return _load


class FatFinder:
    """Answers only for registered fat modules.

    CPython 3.11 calls ``find_spec`` with its global import lock held, so nothing is read or probed here
    (an NVML worker thread importing anything would wait on that lock): the decision is made in
    :meth:`FatLoader.create_module`, under the module's own lock only.
    """

    @staticmethod
    def find_spec(fullname: str, path: "Sequence[str] | None" = None,
                  target: "ModuleType | None" = None) -> "Any":
        folder = registry.get(fullname)
        if folder is None:
            return None
        return ModuleSpec(fullname, FatLoader, origin=folder)

    @staticmethod
    def invalidate_caches() -> None:
        pass


class FatLoader:
    """Binds the best build of a registered fat module: from the pick cache where it answers, else the full way."""

    @staticmethod
    def create_module(spec: "Any") -> "ModuleType":
        folder = registry.get(spec.name) or spec.origin
        module = load_cached(spec, folder)
        if module is None:
            module = _full_path().load(spec, folder)
        return module

    @staticmethod
    def exec_module(module: "ModuleType") -> None:
        pass  # the extension's init ran in create_module, so that a failure can fall back to the next build


# ============================================================================
# Files: the checks every build passes before it is loaded, on either path
# ============================================================================

_ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "i686": 3, "ppc64le": 21, "s390x": 22}


class Rejected(Exception):
    """A build file that must not be loaded; the message says why."""


def identity(st: "os.stat_result") -> str:
    """What identifies one unchanged file: device, inode, size, mtime, ctime (which no ``utime`` can restore)
    and link count."""
    return f"{st.st_dev:x} {st.st_ino:x} {st.st_size:x} {st.st_mtime_ns:x} {st.st_ctime_ns:x} {st.st_nlink:x}"


def _real_path(fd: int, path: str) -> str:
    if _LINUX:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")  # the file this descriptor really has open: one syscall
        except OSError:
            pass
    return os.path.realpath(path)


def confinement_roots(variants_dir: str) -> "tuple[str, ...]":
    """Where a build of ``variants_dir`` may really lie: inside the folder itself, or, for an install made of
    symlinks (uv's symlink link mode, stow, Bazel runfiles, Spack views), inside the folder that holds the
    real manifest file, the same installed tree."""
    roots = [os.path.realpath(variants_dir)]
    real_manifest = os.path.realpath(os.path.join(variants_dir, MANIFEST_NAME))
    manifest_root = os.path.dirname(real_manifest)
    if manifest_root not in roots:
        roots.append(manifest_root)
    return tuple(roots)


def elf_problem(fd: int, size: int, machine: str) -> "str | None":
    """Why the open file cannot be a loadable ELF object for ``machine``, or None.

    ``dlopen`` of a truncated file maps segments past its end and dies with SIGBUS when they are touched, so
    this is checked before loading: the header, the architecture, and that every program header and
    loadable segment lies inside the file.
    """
    head = os.pread(fd, 64, 0)
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
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(phnum):
        ph = table[i * phentsize:(i + 1) * phentsize]
        if le(ph[0:4], "little") == 1:  # PT_LOAD
            end = le(ph[8:16], "little") + le(ph[32:40], "little")  # p_offset + p_filesz
            if end > size:
                return f"truncated: a segment ends at byte {end}, the file has {size}"
    return None


def check_build(path: str, roots: "Sequence[str]", machine: str) -> "tuple[str, str]":
    """Check the build file at ``path`` before it is loaded: a regular file, really inside one of ``roots``
    (:func:`confinement_roots`), an ELF object for ``machine`` whose segments lie inside it.

    Returns its (identity, real path); raises :class:`Rejected` saying why not.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK)
    except OSError as exc:
        raise Rejected(f"{path}: cannot open it: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise Rejected(f"{path}: not a regular file")
        real = _real_path(fd, path)
        if not any(real.startswith(root + os.sep) for root in roots):
            raise Rejected(f"{path}: the file is really {real}, outside its installed package "
                           f"({' or '.join(roots)}); refusing to load it")
        if _LINUX:
            why = elf_problem(fd, st.st_size, machine)
            if why is not None:
                raise Rejected(f"{path}: {why}")
        return identity(st), real
    except OSError as exc:
        raise Rejected(f"{path}: cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


_native_module: "Any" = False  # not tried yet; then the module, or None


def native() -> "Any":
    """The compiled primitives ``_fatdispatch_cpu``, or None where they cannot be loaded.

    Loaded straight from the file beside this module (the same installation, never another copy further
    along ``sys.path``); where it is elsewhere (a frozen application), by a normal import.
    """
    global _native_module
    if _native_module is not False:
        return _native_module
    module = sys.modules.get(NATIVE)
    here = os.path.dirname(__file__) if "__file__" in globals() else ""
    for suffix in EXTENSION_SUFFIXES if module is None and here else ():
        path = os.path.join(here, NATIVE + suffix)
        if not os.path.isfile(path):
            continue
        try:
            module = load_extension(NATIVE, path, False)
        except ImportError:
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
    """Load the extension at ``path`` as module ``name``; its init runs here, so a failure can fall back."""
    if amx:
        mod = native()
        if mod is None or not mod.request_amx():
            raise ImportError("the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM)")
    subspec = ModuleSpec(name, ExtensionFileLoader(name, path), origin=path)
    module: "ModuleType" = _imp.create_dynamic(subspec)
    _imp.exec_dynamic(module)
    return module


# ============================================================================
# Per-user private folders
# ============================================================================


class Unusable(OSError):
    """A per-user cache folder that must not be used; the message says why."""


def _open_dir(name: str, dir_fd: "int | None", create: bool, follow: bool, private: bool) -> int:
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | (0 if follow else _O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, flags, dir_fd=dir_fd)
    st = os.fstat(fd)
    bad = None
    if st.st_uid != os.geteuid():
        bad = f"it belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
    elif st.st_mode & (0o077 if private else 0o022):
        bad = f"its mode {st.st_mode & 0o777:o} lets others {'in' if private else 'write'}"
    if bad is not None:
        os.close(fd)
        raise Unusable(f"{name}: {bad}")
    return fd


def cache_bases(env: "Mapping[str, str]") -> "list[tuple[str, bool]]":
    """The folders a per-user cache may live in, best first, each with whether it is private by design:
    ``$XDG_CACHE_HOME`` (or ``~/.cache``), then ``$XDG_RUNTIME_DIR`` (a per-boot 0700 folder) for a
    read-only or foreign home.  Relative values are ignored, as the XDG spec says."""
    out = []
    base = env.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".cache") if os.path.isabs(home) else ""
    if base:
        out.append((base, False))
    run = env.get("XDG_RUNTIME_DIR") or ""
    if os.path.isabs(run) and run != base:
        out.append((run, True))
    return out


def open_private_dir(env: "Mapping[str, str]", sub: str, create: bool) -> "tuple[int, str]":
    """Open ``<base>/fatdispatch/<sub>`` in the first usable base of :func:`cache_bases`; a directory fd and
    its path.  Created 0700 if ``create``.  The base may be a symlink (users move ``~/.cache``), but must be
    this user's and writable by nobody else; ``fatdispatch`` and ``sub`` are opened without following
    symlinks and must be private.  A missing base is only created where its parent is this user's (root
    running with another user's ``HOME`` writes nothing there).  Raises :class:`OSError` saying why not."""
    problems = []
    for base, private in cache_bases(env):
        fds: "list[int]" = []
        try:
            try:
                fds.append(_open_dir(base, None, False, True, private))
            except FileNotFoundError:
                parent = os.path.dirname(base)
                if not create or private or os.stat(parent).st_uid != os.geteuid():
                    raise
                os.mkdir(base, 0o700)
                fds.append(_open_dir(base, None, False, True, private))
            fds.append(_open_dir(CACHE_DIR, fds[-1], create, False, True))
            fds.append(_open_dir(sub, fds[-1], create, False, True))
            fd = fds.pop()
            return fd, os.path.join(base, CACHE_DIR, sub)
        except OSError as exc:
            problems.append(f"{base}: {exc.strerror or exc}" if not isinstance(exc, Unusable) else f"{base}/{exc}")
        finally:
            for d in fds:
                os.close(d)
    raise Unusable("; ".join(problems) or "no cache folder: neither XDG_CACHE_HOME nor HOME is an absolute path")


def read_private(dir_fd: int, name: str, limit: int) -> "bytes | None":
    """A regular file of ours in an open private folder, or None (missing, not ours, linked, too big)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if ((st.st_mode & 0o170000) != 0o100000 or st.st_uid != os.geteuid() or st.st_nlink != 1
                or st.st_mode & 0o077 or st.st_size > limit):
            return None
        return os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def write_private(dir_fd: int, name: str, data: bytes) -> None:
    """Replace ``name`` atomically with ``data`` (0600), leaving no temporary file behind on failure."""
    tmp = f".{name}.{os.getpid()}.{_thread.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def remove_private(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def prune_private(dir_fd: int, is_entry: "Any", keep: int) -> None:
    """Keep the ``keep`` newest of our entries (``is_entry(name)``) in an open private folder; delete only
    regular files of ours with such names, never anything else."""
    entries = []
    for e in os.scandir(dir_fd):
        if not is_entry(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o100000 and st.st_uid == os.geteuid():
            entries.append((st.st_mtime_ns, e.name))
    if len(entries) > keep:
        entries.sort(reverse=True)
        for _, name in entries[keep:]:
            remove_private(dir_fd, name)


# ============================================================================
# The pick cache
#
# One small file per variants folder, ``<cache>/fatdispatch/picks-v3/<device>-<inode>`` (named by the
# folder's identity, so an import reads one entry however many fat packages the user has), written only by
# the full path after a clean load of its first choice, never for a decision under FATDISPATCH_FORCE,
# FATDISPATCH_DISABLE or FATDISPATCH_UNSAFE_FORCE.  Fixed lines, no parser::
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
# Read only when no FATDISPATCH_* variable is set, on Linux x86-64.
# ============================================================================

_ENTRY_LINES = 12  # the eleven lines above and the empty string after the last newline


def _fatdispatch_variables() -> bool:
    keys = getattr(os.environ, "_data", None)
    if keys is not None and sys.platform != "win32":
        return any(k.startswith(b"FATDISPATCH_") for k in keys)
    return any(k.upper().startswith("FATDISPATCH_") for k in os.environ)


def pick_name(variants_dir: str) -> str:
    st = os.stat(variants_dir)
    return f"{st.st_dev:x}-{st.st_ino:x}"


def _is_pick_name(name: str) -> bool:
    head, sep, tail = name.partition("-")
    hexdigits = "0123456789abcdef"
    return bool(sep and head and tail) and all(c in hexdigits for c in head + tail)


def _runtime_identity() -> str:
    """The files fatdispatch decides with: this module, the compiled primitives, the package folder and its
    decision modules.  Where one is not a file on disk (a frozen application keeps them inside its
    executable), the executable stands for them."""
    here = os.path.dirname(__file__) if "__file__" in globals() else ""
    mod = native()
    files = [globals().get("__file__", ""), getattr(mod, "__file__", ""),
             os.path.join(here, "fatdispatch"), os.path.join(here, "fatdispatch", "_select.py"),
             os.path.join(here, "fatdispatch", "_cuda.py")]
    out = []
    for f in files:
        try:
            out.append(identity(os.stat(f)))
        except (OSError, TypeError, ValueError):
            out.append("exe " + identity(os.stat(sys.executable)))
    return "|".join(out)


def cpu_words(raw: "Mapping[str, Any]") -> str:
    """The raw CPUID/XCR0 facts of this process (``_fatdispatch_cpu.cpu()["raw"]``) as one key string, with
    the APIC id (leaf 1 EBX bits 31-24: which core ran CPUID, not a feature) masked."""
    words = [raw.get("max_leaf"), raw.get("vendor"), raw.get("max_ext"), raw.get("xcr0"), raw.get("amx_permission")]
    for leaf in ("1", "7", "7.1", "0x80000001"):
        regs = list(raw.get(leaf) or (0, 0, 0, 0))
        if leaf == "1":
            regs[1] &= 0x00FFFFFF
        words.append(leaf)
        words.extend(regs)
    return " ".join(map(str, words))


def _small_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError:
        return "-"
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return "-"
    finally:
        os.close(fd)


def gpu_facts_key(env: "Mapping[str, str]") -> str:
    """What the GPU facts of this process rest on, without asking the driver: no driver at all, or the boot,
    the driver's version, the set of GPUs (names only: reading files there can wake a GPU) and CUDA's
    visibility variables."""
    present = [f for f in LINUX_DRIVER_FILES if os.path.exists(f)]
    if not present:
        return "no-driver"
    try:
        gpus = ",".join(sorted(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        gpus = "-"
    wsl = LINUX_DRIVER_FILES[1]
    return repr(("driver", _small_file("/proc/sys/kernel/random/boot_id"), _small_file(LINUX_DRIVER_FILES[0]), gpus,
                 identity(os.stat(wsl)) if wsl in present else "-",
                 env.get("CUDA_VISIBLE_DEVICES"), env.get("CUDA_DEVICE_ORDER")))


def pick_key(variants_dir: str, raw_cpu: "Mapping[str, Any]", cuda: bool, env: "Mapping[str, str]") -> str:
    """Everything a pick rests on besides the build file itself: the interpreter, fatdispatch's own files, the
    manifest's identity, this process's raw CPU words and, for a module with CUDA builds, the GPU facts."""
    manifest = identity(os.stat(os.path.join(variants_dir, MANIFEST_NAME)))
    parts = (sys.implementation.cache_tag, f"{sys.hexversion:x}", _runtime_identity(), manifest,
             cpu_words(raw_cpu), gpu_facts_key(env) if cuda else "cpu-only")
    return repr(parts)


def pick_entry(variants_dir: str, key: str, build: str, path: str, real: str, ident: str, machine: str,
               features: "Iterable[str]", amx: bool, cuda: bool) -> "bytes | None":
    """The pick cache's entry for a clean load, or None where it cannot be written as fixed lines."""
    fields = [PICKS_FORMAT, variants_dir, key, build, path, real, ident, machine, " ".join(sorted(features)),
              "1" if amx else "0", "1" if cuda else "0"]
    if any("\n" in f or "\r" in f for f in fields):
        return None
    return ("\n".join(fields) + "\n").encode("utf-8", "surrogateescape")


def _read_pick(variants_dir: str) -> "list[str] | None":
    try:
        name = pick_name(variants_dir)
        dir_fd, _ = open_private_dir(os.environ, PICKS_DIR, False)
    except OSError:
        return None
    try:
        data = read_private(dir_fd, name, PICKS_LIMIT)
    finally:
        os.close(dir_fd)
    if data is None:
        return None
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if len(lines) != _ENTRY_LINES or lines[0] != PICKS_FORMAT or lines[1] != variants_dir or lines[-1]:
        return None
    return lines


def load_cached(spec: "Any", variants_dir: str) -> "ModuleType | None":
    """Bind ``spec.name`` from the pick cache, or None (no entry, or anything it rests on changed).

    A hit is never weaker than a miss: the entry must be this user's, in this user's private folder, for this
    folder, under an unchanged key; the named build's requirements are checked against this process's CPU;
    its file must be the one that passed the checks when the entry was written (same path, real path and
    identity, ctime and link count included) and passes :func:`check_build` again.
    """
    if not _PICKS_HERE or _fatdispatch_variables():
        return None
    lines = _read_pick(variants_dir)
    if lines is None:
        return None
    _, _, key, build, path, real, ident, machine, needs, amx, cuda = lines[:11]
    mod = native()
    if mod is None or not path.startswith(variants_dir + os.sep):
        return None
    try:
        cpu = mod.cpu()
        if pick_key(variants_dir, cpu["raw"], cuda == "1", os.environ) != key:
            return None
        if needs and not cpu["features"].issuperset(needs.split(" ")):
            return None
        if check_build(path, (os.path.dirname(real),), machine) != (ident, real):
            return None
    except (OSError, Rejected, KeyError, TypeError, ValueError):
        return None
    try:
        module = load_extension(spec.name, path, amx == "1")
    except ImportError:
        return None  # the full path tries again, records why, and forgets this entry
    spec.origin = path
    spec.has_location = True
    module.__fatdispatch_variant__ = build  # type: ignore[attr-defined]
    hits[spec.name] = (build, path)
    return module


def remember_pick(variants_dir: str, entry: bytes, env: "Mapping[str, str]") -> None:
    """Write a pick cache entry (``pick_entry``) and keep the folder to the newest :data:`PICKS_KEEP`.

    Raises :class:`OSError` where no private folder can be used or written (the caller says so once)."""
    name = pick_name(variants_dir)
    dir_fd, _ = open_private_dir(env, PICKS_DIR, True)
    try:
        write_private(dir_fd, name, entry)
        prune_private(dir_fd, _is_pick_name, PICKS_KEEP)
    finally:
        os.close(dir_fd)


def forget_pick(variants_dir: str, env: "Mapping[str, str]") -> None:
    """Drop the entry of ``variants_dir`` (its pick did not load cleanly), wherever it is readable."""
    try:
        name = pick_name(variants_dir)
        dir_fd, _ = open_private_dir(env, PICKS_DIR, False)
    except OSError:
        return
    try:
        remove_private(dir_fd, name)
    finally:
        os.close(dir_fd)
