"""fatdispatch: ship one wheel with several builds of an extension; import the best one this machine can run.

A fat package's ``__init__.py`` calls :func:`install` (the build helper writes
that line); from then on ``import mypkg._core`` binds the best build of
``_core`` under that stable name.  ``python -m fatdispatch report`` explains
every decision.

Public API: :func:`install`, :func:`explain`, :func:`loaded`, :func:`hardware`,
:func:`fat_modules` and the error classes (all but ``install`` defined on first
use, in :mod:`fatdispatch._runtime` and :mod:`fatdispatch._errors`).  Everything
else is private.

In the common case (a pick cache hit) the import path is the compiled helper
``_fatdispatch`` alone, which a fat package calls directly (the line the build
helper writes), and this package is not imported.  It stays small and imports
nothing anyway, for packages that call :func:`install` by hand: on a slow VM
every module load costs ~100 us, a class ~10 us and each KB of bytecode ~6 us.
The full path (read the manifest, probe, decide) is :mod:`fatdispatch._runtime`,
loaded on demand.
"""

import _imp
import _thread
import os
import sys

# importlib's bootstrap modules are always loaded; importing importlib.machinery would cost a module load.
_bootstrap = sys.modules["_frozen_importlib"]
_bootstrap_external = sys.modules["_frozen_importlib_external"]
EXTENSION_SUFFIXES: "list[str]" = _bootstrap_external.EXTENSION_SUFFIXES
ExtensionFileLoader = _bootstrap_external.ExtensionFileLoader
ModuleSpec = _bootstrap.ModuleSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec as ModuleSpecT
    from types import ModuleType
    from typing import Any, Iterable, Mapping, Sequence

    from ._errors import ConfigError, FatDispatchError, ManifestError, NoUsableBuildError
    from ._runtime import explain, fat_modules, hardware, loaded

__version__ = "0.1.0"
__all__ = ["install", "explain", "loaded", "hardware", "fat_modules", "FatDispatchError", "ManifestError",
           "ConfigError", "NoUsableBuildError", "__version__"]

_HERE = os.path.dirname(__file__)
MANIFEST_NAME = "manifest.json"
VARIANTS_SUFFIX = ".variants"
_ERRORS = ("FatDispatchError", "ManifestError", "ConfigError", "NoUsableBuildError")
_API = ("explain", "loaded", "hardware", "fat_modules")


def __getattr__(name: str) -> "Any":
    # The error classes and the functions an import never needs are defined on first use: on the import path
    # every class costs ~10 us and every KB of bytecode ~6 us.
    if name in _ERRORS:
        from . import _errors

        return getattr(_errors, name)
    if name in _API:
        from . import _runtime

        return getattr(_runtime, name)
    raise AttributeError(f"module 'fatdispatch' has no attribute {name!r}")


# ============================================================================
# 1. The public API
# ============================================================================


def install(package: str, modules: "Iterable[str] | None" = None) -> None:
    """Register the fat modules of ``package`` (call it from the package's ``__init__.py``).

    ``modules`` are names relative to the package (``["_core"]``); by default
    every ``<name>.variants`` folder in the package is one.  Idempotent and cheap:
    nothing is probed or loaded until a fat module is imported.
    """
    paths: "list[str]" = list(getattr(sys.modules.get(package), "__path__", None) or ())
    names = None if modules is None else list(modules)
    found = []
    for mod in names if names is not None else ():
        folder = next((f for f in (os.path.join(p, mod + VARIANTS_SUFFIX) for p in paths) if os.path.isdir(f)), None)
        if folder is None:
            break
        found.append((f"{package}.{mod}", folder))
    if names is None or not paths or len(found) < len(names):  # discovery, and every error, on the slow path
        from ._runtime import install_slowly

        return install_slowly(package, names)
    for fullname, folder in found:
        register(fullname, folder)


# ============================================================================
# 2. The compiled helper and the raw CPU facts (decoded in :mod:`fatdispatch._cpu`)
# ============================================================================


_native_lock = _thread.allocate_lock()
_helper: "Any" = False  # not tried yet; then the module, or None where it cannot be loaded
NATIVE = "_fatdispatch"  # the compiled helper: top-level, so neither a cached pick nor a CPU probe needs this package


def native() -> "Any":
    """The compiled helper ``_fatdispatch``, or None.

    Loaded straight from its file beside this package (the same installation,
    never another copy further along ``sys.path``); where it is elsewhere (a
    frozen application), by a normal import.
    """
    global _helper
    if _helper is not False:
        return _helper
    with _native_lock:
        if _helper is False:
            module = sys.modules.get(NATIVE)
            for suffix in EXTENSION_SUFFIXES if module is None else ():
                path = os.path.join(os.path.dirname(_HERE), NATIVE + suffix)
                try:
                    module = load_extension(NATIVE, path, False)
                except ImportError:  # missing here, or not loadable: try the next suffix, then a normal import
                    continue
                module.__file__ = path
                sys.modules[NATIVE] = module
                break
            if module is None:
                try:
                    import _fatdispatch as module
                except ImportError:
                    module = None
            _helper = module
    return _helper


# ============================================================================
# 3. The finder
#
# ``install("mypkg", ["_core"])`` registers ``mypkg._core``.  Where the
# compiled helper is loaded, the registry and the meta-path finder are its own
# (``_fatdispatch.install``/``register``/``find_spec``): a cached pick is found
# and loaded there, in C, and a fat package can call ``_fatdispatch.install``
# without importing this package at all (the line ``fatdispatch.build`` writes
# does).  Everything else goes to :mod:`fatdispatch._runtime`, whose loader binds
# a build under the stable name with CPython's own extension machinery
# (``_imp.create_dynamic``).  Either way the module object is the extension
# itself: no proxy, so calls cost exactly what they cost without fatdispatch.
# It carries ``__fatdispatch_variant__``.
# ============================================================================

_registry_lock = _thread.allocate_lock()


def register(fullname: str, variants_dir: str) -> None:
    """Register one fat module by its variants folder (what :func:`install` does for each)."""
    mod = native()
    if mod is not None and hasattr(mod, "register"):
        mod.register(fullname, variants_dir)  # the compiled finder: it loads cached picks itself
        return
    with _registry_lock:
        _registry[fullname] = variants_dir
        if FatFinder not in sys.meta_path:
            sys.meta_path.insert(0, FatFinder)


class FatFinder:
    """The finder where the compiled helper's (``_fatdispatch.find_spec``) is missing: every import of a
    registered fat module takes the full path."""

    _fatdispatch_finder = True

    @staticmethod
    def find_spec(fullname: str, path: "Sequence[str] | None" = None,
                  target: "ModuleType | None" = None) -> "ModuleSpecT | None":
        variants_dir = _registry.get(fullname)
        if variants_dir is None:
            return None
        from ._runtime import find_spec_fully

        return find_spec_fully(fullname, variants_dir, os.environ)

    @staticmethod
    def invalidate_caches() -> None:
        pass


# ============================================================================
# 4. The pick cache
#
# One small per-user JSON file per variants folder,
# ``$XDG_CACHE_HOME/fatdispatch/picks-v2/<device>-<inode>.json`` (named by the
# folder's identity, so an import reads one entry however many fat packages the
# user has): ``{"schema": 2, "variants": folder, "key": [...], "build": name,
# "path": the file that loaded, "identity": its (mtime, size, inode, device),
# "amx": bool, "cuda": bool}``.  The key holds everything the decision depends
# on besides the environment: this runtime's files, the manifest's identity and
# the raw CPUID/XCR0 words of this process.  The file is only loaded again while
# its identity is unchanged, so the ELF check of the full path still holds.  A
# pick is only written after its build loaded with nothing set in
# ``FATDISPATCH_*``, and only read when nothing is set there; a module with CUDA
# builds is only picked from the cache where no NVIDIA driver is installed.
# Linux x86-64 only.  Read by the compiled finder (``_fatdispatch.cached_pick``
# says what it checks), written by ``_runtime.remember_pick``.
# ============================================================================

PICKS_SCHEMA = 2  # the compiled helper has the same three (test_picks checks it)
PICKS_DIR = f"picks-v{PICKS_SCHEMA}"
# An NVIDIA driver on Linux shows one of these (WSL2 has no /proc/driver/nvidia); see _runtime.driver_present.
LINUX_DRIVER_FILES = ("/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libnvidia-ml.so.1")


# ============================================================================
# 5. Loading one file (checked first by the full path, see ``_runtime.check_elf``)
# ============================================================================


def load_extension(name: str, path: str, amx: bool) -> "ModuleType":
    """Load the extension at ``path`` as module ``name`` (its init runs here, so a failure can fall back)."""
    if amx:
        mod = native()
        if mod is None or not mod.request_amx():
            from ._errors import FatDispatchError

            raise FatDispatchError("the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM)")
    subspec = ModuleSpec(name, ExtensionFileLoader(name, path), origin=path)
    module: "ModuleType" = _imp.create_dynamic(subspec)
    module.__spec__, module.__file__ = subspec, path  # as importlib sets them before exec (pybind11 3 reads them)
    _imp.exec_dynamic(module)
    return module


# The registry of fat modules and the record of cache hits live in the compiled helper where it is loaded, so
# that ``_fatdispatch.install`` (which a fat package may call without importing this package) and this package
# see the same ones.
_shared = native()
_registry: "dict[str, str]" = _shared.registry() if hasattr(_shared, "registry") else {}  # module -> variants folder
_hits: "dict[str, tuple[str, str]]" = _shared.hits() if hasattr(_shared, "hits") else {}  # module -> (build, path)
del _shared
