"""fatdispatch's full import path: what runs when the pick cache of :mod:`fatdispatch` cannot answer.

Loaded on demand (the first import of a fat module in a fresh cache, a
``FATDISPATCH_*`` variable, a machine with an NVIDIA driver, ``explain`` and
``report``), in sections kept apart as separate layers:

1. JSON reading (``_fatdispatch.loads``, a strict reader; :mod:`json` where the helper is missing);
2. the manifest (what builds exist and what each requires);
3. the feature table and the GPU facts: values, driver check, cache reading
   (the NVML query itself is in :mod:`fatdispatch._nvml`);
4. the decision: a pure function of (manifest, hardware, environment);
5. loading: the loader that falls back build by build, and writing the pick cache.

The finder, the pick cache and the ELF check live in :mod:`fatdispatch` itself, the CPU probe in
:mod:`fatdispatch._cpu`.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import (EXTENSION_SUFFIXES, LINUX_DRIVER_FILES, MANIFEST_NAME, PICKS_SCHEMA, VARIANTS_SUFFIX,
               PICKS_DIR, ModuleSpec, _hits, _registry, install, load_extension, native, register)
from ._cpu import CPU, Record, normalize_arch, probe_cpu, x86_64_level, x86_from_cpuid
from ._errors import ConfigError, FatDispatchError, JSONError, ManifestError, NoUsableBuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec as ModuleSpecT
    from types import ModuleType
    from typing import Any, Iterable, Mapping

__all__ = ["explain", "loaded", "hardware", "fat_modules", "CPU", "Record", "EXTENSION_SUFFIXES", "MANIFEST_NAME",
           "VARIANTS_SUFFIX", "ConfigError", "FatDispatchError", "ManifestError", "NoUsableBuildError", "JSONError", "check_elf", "driver_present",
           "normalize_arch", "probe_cpu", "register", "registered", "x86_64_level", "x86_from_cpuid"]


# ============================================================================
# 0. The public API besides install() (exported by :mod:`fatdispatch`)
# ============================================================================


def explain(module: str, env: Mapping[str, str] | None = None) -> Selection:
    """The ranked decision for a registered fat module, with a reason for every build. Loads nothing."""
    folder = _registry.get(module)
    if folder is None:
        raise FatDispatchError(f"{module} is not a registered fat module (import its package first); "
                               f"registered: {', '.join(sorted(_registry)) or 'none'}")
    return decide(module, folder, env)


def install_slowly(package: str, modules: Iterable[str] | None) -> None:
    """:func:`fatdispatch.install` for the rarer cases: finding the modules, and every error."""
    paths = list(getattr(sys.modules.get(package), "__path__", None) or [])
    if not paths:
        raise FatDispatchError(f"fatdispatch.install({package!r}): {package} is not an imported package; "
                               "call install(__name__) from the package's __init__.py")
    if modules is None:  # every <name>.variants folder
        found: list[str] = []
        for p in paths:
            try:
                found.extend(n[: -len(VARIANTS_SUFFIX)] for n in os.listdir(p) if n.endswith(VARIANTS_SUFFIX))
            except OSError:
                continue
        return install(package, found)
    for mod in modules:  # install() found no folder for one of them
        if not any(os.path.isdir(os.path.join(p, mod + VARIANTS_SUFFIX)) for p in paths):
            raise FatDispatchError(f"fatdispatch.install({package!r}): no folder {mod}{VARIANTS_SUFFIX} in "
                                   f"{', '.join(paths)}; the package was built without its variants (rebuild it "
                                   "with fatdispatch's build_ext)", name=f"{package}.{mod}")
    return install(package, modules)


def registered() -> "dict[str, str]":
    return dict(_registry)


def driver_present() -> "tuple[bool, str]":
    """One cheap check for an installed NVIDIA driver, before anything is imported."""
    if sys.platform == "win32":
        files: tuple[str, ...] = (os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvml.dll"),)
    elif sys.platform == "linux":
        files = LINUX_DRIVER_FILES
    else:
        return False, f"no NVIDIA CUDA driver exists for {sys.platform}"
    if any(os.path.exists(f) for f in files):
        return True, ""
    return False, "no NVIDIA driver is installed (/proc/driver/nvidia/version is missing)"


def loaded(module: str) -> LoadRecord | None:
    """What happened when ``module`` was imported (the build bound and every failed attempt), or None."""
    return record(module)


def hardware(env: Mapping[str, str] | None = None, gpu: bool = True) -> Hardware:
    """The probed hardware (CPU always; NVIDIA GPUs when ``gpu``), with ``FATDISPATCH_DISABLE`` applied."""
    env = os.environ if env is None else env
    g = probe_gpus(env, _gpu_cache_allowed(env)) if gpu else NO_GPU_PROBE
    return effective_hardware(Hardware(cpu=probe_cpu(), gpu=g), env)


def fat_modules(paths: Iterable[str] | None = None) -> dict[str, str]:
    """Installed fat modules found on ``paths`` (default ``sys.path``): module name -> variants folder."""
    from ._discover import discover

    return discover(sys.path if paths is None else paths)


# ============================================================================
# 1. JSON
#
# ``import json`` pulls in :mod:`re` and costs over a millisecond in a fresh
# interpreter, and ``_json`` alone is a shared library to open; the compiled
# helper's strict reader (``_fatdispatch.loads``) is already loaded.
# ============================================================================


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def json_loads(text: str | bytes) -> Any:
    """Parse ``text`` strictly: one JSON value, no NaN/Infinity, nothing after it."""
    mod = native()
    try:
        if mod is not None and hasattr(mod, "loads"):
            return mod.loads(text)
        import json  # pragma: no cover - only without the compiled helper

        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise JSONError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def read_json(path: str, limit: int = 1 << 20) -> Any:
    """Read and parse a UTF-8 JSON file no larger than ``limit`` bytes.

    Raises :class:`OSError` for I/O problems and :class:`JSONError` for bad content.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise JSONError(f"file is larger than {limit} bytes")
    return json_loads(data)


# ============================================================================
# 2. The manifest
#
# The manifest: what builds a fat module ships and exactly what each requires.
#
# It lives at ``<package>/<module>.variants/manifest.json``.  The runtime reads
# only this file, never the build-side catalog, so an old runtime can read a
# newer wheel; a schema it does not know is refused with a clear error.
#
# Schema 1::
#
#     {"schema": 1, "module": "mypkg._core", "generator": "fatdispatch 0.1.0",
#      "variants": [
#        {"name": "x86-64-v3", "kind": "cpu", "file": "x86-64-v3/_core",
#         "arch": "x86_64", "priority": 0,
#         "requires": {"x86_64_level": 3, "features": ["avx", "avx2", ...]},
#         "properties": ["x86_64 :: level :: v3"]},
#        {"name": "cuda-sm90", "kind": "cuda", "file": "cuda-sm90/_core", "arch": "x86_64", "priority": 0,
#         "requires": {"x86_64_level": 1, "features": [...],
#                      "cuda": {"sass": ["90"], "ptx": [], "runtime": [13, 0]}},
#         "properties": ["nvidia :: sm_arch :: 90_real", "nvidia :: cuda_version_lower_bound :: 13.0"]}]}
#
# ``file`` is relative to the variants folder and has no extension suffix: the
# loader tries every suffix in ``importlib.machinery.EXTENSION_SUFFIXES``.
# ``properties`` use the wheel-variant vocabulary (PEP 825/850 drafts) so a fat
# wheel can be split into variant wheels.
# ============================================================================

SCHEMA_VERSION = 1
KINDS = ("cpu", "cuda")
MAX_VARIANTS = 256
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_FILE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_TOP_FIELDS = frozenset(("schema", "module", "generator", "variants"))
_VARIANT_FIELDS = frozenset(("name", "kind", "file", "arch", "priority", "requires", "properties"))
_REQUIRES_FIELDS = frozenset(("features", "x86_64_level", "cuda"))
_CUDA_FIELDS = frozenset(("sass", "ptx", "runtime"))


class CudaTargets(Record):
    """The GPU code a CUDA build carries: SASS targets (``"90"``, ``"90a"``, ``"100f"``), PTX targets, and
    the CUDA runtime version it was built with."""

    __slots__ = ("sass", "ptx", "runtime")
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    runtime: tuple[int, int]


class Variant(Record):
    __slots__ = ("name", "kind", "file", "arch", "priority", "features", "x86_64_level", "cuda", "properties")
    name: str
    kind: str
    file: str
    arch: str
    priority: int
    features: frozenset[str]
    x86_64_level: int | None
    cuda: CudaTargets | None
    properties: tuple[str, ...]


class Manifest(Record):
    __slots__ = ("module", "schema", "generator", "variants", "path")
    module: str
    schema: int
    generator: str
    variants: tuple[Variant, ...]
    path: str

    @property
    def has_cuda(self) -> bool:
        return any(v.kind == "cuda" for v in self.variants)


def parse_sm(target: str) -> tuple[int, int, str]:
    """``"90"`` -> (9, 0, ""), ``"90a"`` -> (9, 0, "a"), ``"100f"`` -> (10, 0, "f"); ValueError otherwise."""
    suffix = ""
    if target and target[-1] in "af":
        target, suffix = target[:-1], target[-1]
    if not (2 <= len(target) <= 3) or not target.isdigit() or not target.isascii():
        raise ValueError("expected an SM number such as '90', '90a' or '100f'")
    return int(target[:-1]), int(target[-1]), suffix


def _field_name(field: str | tuple[str | int, ...]) -> str:
    """``("variants", 0, "name")`` -> ``"variants[0].name"`` (built only when reporting an error)."""
    if isinstance(field, str):
        return field
    out = ""
    for part in field:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Checker:
    """Validates decoded JSON, raising one :class:`ManifestError` that names the file and the field.

    Field paths are tuples, formatted only when something is wrong: the happy path builds no strings.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field: str | tuple[str | int, ...], problem: str) -> ManifestError:
        return ManifestError(self.path, _field_name(field), problem)

    def obj(self, value: Any, field: str | tuple[str | int, ...], allowed: frozenset[str],
            required: tuple[str, ...]) -> dict[str, Any]:
        if type(value) is not dict:
            raise self.fail(field, f"expected an object, got {type(value).__name__}")
        if not allowed.issuperset(value):
            key = next(k for k in value if k not in allowed)
            raise self.fail((*field, key) if isinstance(field, tuple) else (f"{field}.{key}" if field else key),
                            f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail((*field, key) if isinstance(field, tuple) else (f"{field}.{key}" if field else key),
                                "missing")
        return value

    def string(self, value: Any, field: str | tuple[str | int, ...], chars: frozenset[str] | None = None,
               maxlen: int = 128) -> str:
        if type(value) is not str:
            raise self.fail(field, f"expected a string, got {type(value).__name__}")
        if not value or len(value) > maxlen:
            raise self.fail(field, f"expected 1 to {maxlen} characters")
        if chars is not None and not chars.issuperset(value):
            raise self.fail(field, f"{value!r} has characters outside {''.join(sorted(chars))!r}")
        return value

    def integer(self, value: Any, field: str | tuple[str | int, ...], lo: int, hi: int) -> int:
        if type(value) is not int:
            raise self.fail(field, f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.fail(field, f"{value} is outside {lo}..{hi}")
        return value

    def strings(self, value: Any, field: tuple[str | int, ...], chars: frozenset[str] | None = None,
                maxlen: int = 128) -> tuple[str, ...]:
        if type(value) is not list:
            raise self.fail(field, f"expected a list, got {type(value).__name__}")
        if len(value) > 512:
            raise self.fail(field, "more than 512 entries")
        if any(type(v) is not str or not 0 < len(v) <= maxlen for v in value) or (
                chars is not None and not chars.issuperset("".join(value))):
            for i, v in enumerate(value):
                self.string(v, (*field, i), chars, maxlen)  # raises with the precise problem
        return tuple(value)


def _check_file(c: _Checker, value: Any, field: tuple[str | int, ...]) -> str:
    rel = c.string(value, field, _FILE_CHARS | {"/"}, 255)
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise c.fail(field, f"{rel!r} must be a relative path inside the variants folder, without '.' or '..'")
    return rel


def _check_cuda(c: _Checker, value: Any, field: tuple[str | int, ...]) -> CudaTargets:
    d = c.obj(value, field, _CUDA_FIELDS, ("sass", "ptx", "runtime"))
    sass = c.strings(d["sass"], (*field, "sass"), _NAME_CHARS, 8)
    ptx = c.strings(d["ptx"], (*field, "ptx"), _NAME_CHARS, 8)
    for key, targets in (("sass", sass), ("ptx", ptx)):
        for i, t in enumerate(targets):
            try:
                parse_sm(t)
            except ValueError as exc:
                raise c.fail((*field, key, i), f"{t!r}: {exc}") from None
    if not sass and not ptx:
        raise c.fail(field, "a CUDA build must carry at least one SASS or PTX target")
    rt = d["runtime"]
    if not (type(rt) is list and len(rt) == 2):
        raise c.fail((*field, "runtime"), "expected [major, minor]")
    major = c.integer(rt[0], (*field, "runtime", 0), 1, 99)
    minor = c.integer(rt[1], (*field, "runtime", 1), 0, 99)
    return CudaTargets(sass=sass, ptx=ptx, runtime=(major, minor))


def parse_manifest(data: Any, path: str) -> Manifest:
    """Validate decoded manifest JSON.  Pure: raises :class:`ManifestError` and nothing else."""
    c = _Checker(path)
    if type(data) is dict and "schema" in data:
        schema = data["schema"]
        if type(schema) is int and schema > SCHEMA_VERSION:
            raise c.fail("schema", f"schema {schema} was written by a newer fatdispatch; this runtime reads schema "
                                   f"{SCHEMA_VERSION}: upgrade fatdispatch (pip install -U fatdispatch)")
    top = c.obj(data, "", _TOP_FIELDS, ("schema", "module", "variants"))
    c.integer(top["schema"], "schema", SCHEMA_VERSION, SCHEMA_VERSION)
    module = c.string(top["module"], "module", _FILE_CHARS, 200)
    generator = c.string(top.get("generator", "unknown"), "generator", None, 200)
    raw_variants = top["variants"]
    if type(raw_variants) is not list or not raw_variants:
        raise c.fail("variants", "expected a non-empty list")
    if len(raw_variants) > MAX_VARIANTS:
        raise c.fail("variants", f"more than {MAX_VARIANTS} builds")
    variants = []
    names: set[str] = set()
    for i, raw in enumerate(raw_variants):
        f = ("variants", i)
        v = c.obj(raw, f, _VARIANT_FIELDS, ("name", "kind", "file", "arch", "requires"))
        name = c.string(v["name"], (*f, "name"), _NAME_CHARS, 64)
        if name in names:
            raise c.fail((*f, "name"), f"duplicate build name {name!r}")
        names.add(name)
        kind = v["kind"]
        if kind not in KINDS or type(kind) is not str:
            c.string(kind, (*f, "kind"))
            raise c.fail((*f, "kind"), f"{kind!r} is not one of {', '.join(KINDS)}")
        file = _check_file(c, v["file"], (*f, "file"))
        arch = c.string(v["arch"], (*f, "arch"), _NAME_CHARS, 32)
        priority = c.integer(v.get("priority", 0), (*f, "priority"), -1000, 1000)
        req = c.obj(v["requires"], (*f, "requires"), _REQUIRES_FIELDS, ("features",))
        features = frozenset(c.strings(req["features"], (*f, "requires", "features"), _NAME_CHARS, 64))
        level = None
        if "x86_64_level" in req:
            level = c.integer(req["x86_64_level"], (*f, "requires", "x86_64_level"), 1, 4)
        cuda = None
        if kind == "cuda":
            if "cuda" not in req:
                raise c.fail((*f, "requires", "cuda"), "missing (required for kind 'cuda')")
            cuda = _check_cuda(c, req["cuda"], (*f, "requires", "cuda"))
        elif "cuda" in req:
            raise c.fail((*f, "requires", "cuda"), "only builds of kind 'cuda' may require CUDA")
        props = c.strings(v.get("properties", []), (*f, "properties"), None, 200)
        for j, p in enumerate(props):
            if p.count("::") != 2:
                raise c.fail((*f, "properties", j), f"{p!r} is not 'namespace :: feature :: value'")
        variants.append(Variant(name=name, kind=kind, file=file, arch=arch, priority=priority, features=features,
                                x86_64_level=level, cuda=cuda, properties=props))
    return Manifest(module=module, schema=SCHEMA_VERSION, generator=generator, variants=tuple(variants), path=path)


def read_manifest(variants_dir: str) -> Manifest:
    """Read ``<variants_dir>/manifest.json``; every problem is a :class:`ManifestError`."""
    path = os.path.join(variants_dir, MANIFEST_NAME)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ManifestError(path, "", "the file is missing: the wheel was built without fatdispatch's build_ext, "
                                      "or the install is incomplete (reinstall the package)") from None
    except OSError as exc:
        raise ManifestError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ManifestError(path, "", f"not valid JSON: {exc}") from None
    return parse_manifest(data, path)


# ============================================================================
# 3. The feature table and the GPUs
# ============================================================================

_TABLE_PATH = os.path.join(os.path.dirname(__file__), "_data", "cpu_features.json")
_table: dict[str, Any] | None = None


def feature_table() -> dict[str, Any]:
    """The CPU feature vocabulary (``_data/cpu_features.json``)."""
    global _table
    if _table is None:
        _table = read_json(_TABLE_PATH)
    return _table

# ----------------------------------------------------------------------------
# The NVIDIA GPU probe.
#
# * Where no NVIDIA driver is installed it costs one ``stat`` and imports nothing.
# * Otherwise it asks NVML (``libnvidia-ml.so.1`` through :mod:`ctypes`, never
#   ``pynvml``, whose import alone costs ~30 ms) for every device's compute
#   capability and the driver's CUDA version, and checks that the CUDA driver
#   library ``libcuda.so.1`` is really there (containers often mount NVML alone).
# * It never initialises CUDA in this process: ``cuInit`` breaks CUDA in forked
#   children.
# * The answer is cached per user, keyed by boot id, driver version and the set
#   of GPUs, so most process starts skip NVML entirely.  The cache only ever
#   narrows what is usable: a build that fails to load with it in use drops it.
#
# ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` are applied afterwards by the
# pure :func:`visible_gpus`, so the cache does not depend on them.
# ============================================================================

CACHE_SCHEMA = 1


class GPU(Record):
    """One physical NVIDIA GPU, in NVML (PCI bus) order."""

    __slots__ = ("index", "name", "uuid", "compute_capability", "mig_uuids")
    index: int
    name: str
    uuid: str
    compute_capability: tuple[int, int]
    mig_uuids: tuple[str, ...]


class GPUs(Record):
    """What the NVIDIA driver offers this process.

    ``reason`` is ``None`` when CUDA builds may be considered, else why not
    (no driver, NVML error, no libcuda...).  ``cuda_driver_version`` is the
    highest CUDA version the driver supports, as ``(major, minor)``.
    """

    __slots__ = ("devices", "driver_version", "cuda_driver_version", "libcuda", "source", "reason")
    devices: tuple[GPU, ...]
    driver_version: str
    cuda_driver_version: tuple[int, int] | None
    libcuda: bool
    source: str
    reason: str | None


NO_GPU_PROBE = GPUs(devices=(), driver_version="", cuda_driver_version=None, libcuda=False, source="skipped",
                    reason="not probed: this module has no CUDA build or FATDISPATCH_FORCE rules CUDA out")


def no_gpus(reason: str, source: str = "none") -> GPUs:
    return GPUs(devices=(), driver_version="", cuda_driver_version=None, libcuda=False, source=source, reason=reason)


# ---------------------------------------------------------------- visibility (pure)


# ---------------------------------------------------------------- driver presence and cache key (raw)


# ---------------------------------------------------------------- the cached accessor

_gpu_lock = _thread.allocate_lock()
_gpu_cached: GPUs | None = None
gpu_probe_count = 0


def probe_gpus(env: Mapping[str, str] | None = None, use_cache: bool = True) -> GPUs:
    """This machine's NVIDIA GPUs, probed once per process and cached per user on disk."""
    global _gpu_cached, gpu_probe_count
    if _gpu_cached is not None:
        return _gpu_cached
    with _gpu_lock:
        if _gpu_cached is None:
            gpu_probe_count += 1
            _gpu_cached = _probe_gpus_uncached(os.environ if env is None else env, use_cache)
        return _gpu_cached


def _probe_gpus_uncached(env: Mapping[str, str], use_cache: bool) -> GPUs:
    present, why = driver_present()
    if not present:
        return no_gpus(why)
    from ._slowpath import cache_key, cache_path, read_cache

    key = cache_key()
    path = cache_path(env) if use_cache else None
    if path:
        hit = read_cache(path, key)
        if hit is not None:
            return hit
    from . import _nvml

    result = _nvml.query_with_timeout(_nvml.query_nvml)
    if path and "did not answer" not in (result.reason or ""):
        _nvml.write_cache(path, key, result)
    return result


def forget_gpus() -> None:
    """Drop the in-process GPU answer (the next probe asks again)."""
    global _gpu_cached
    with _gpu_lock:
        _gpu_cached = None


# ============================================================================
# 4. The decision
#
# Choosing a build: a pure function of (manifest, hardware, environment).
#
# :func:`select` ranks every build of a manifest and gives every build that was
# not chosen a reason.  It reads nothing and probes nothing: tests hand it
# recorded machines and plain dicts for the environment.
#
# Ranking, best first:
#
# 1. usable CUDA builds (only when a usable NVIDIA GPU is visible): exact SASS for
#    every visible GPU, then compatible SASS, then PTX (JIT); then the packager's
#    priority; then the highest SM;
# 2. usable CPU builds: the packager's ``priority`` (default 0), then the
#    x86-64 level, then the number of required features.
#
# Environment (all case-insensitive values):
#
# ``FATDISPATCH_FORCE``
#     ``[module:]value[,...]`` where value is a build name, ``cpu`` (best CPU
#     build), ``cuda`` (best CUDA build) or ``baseline`` (the lowest CPU build).
#     Aliases: ``avx512`` = ``x86-64-v4``, ``avx2`` = ``x86-64-v3``,
#     ``sse4`` = ``x86-64-v2``, ``v1`` .. ``v4``, ``gpu`` = ``cuda``.
# ``FATDISPATCH_UNSAFE_FORCE=1``
#     load a forced build even where this machine cannot run it.
# ``FATDISPATCH_DISABLE``
#     comma-separated CPU feature names to treat as absent.
# ``FATDISPATCH_VERBOSE=1``
#     print the decision to stderr.
# ``FATDISPATCH_GPU_CACHE=0``
#     do not read or write the per-user GPU cache.
# ``FATDISPATCH_CACHE=0``
#     do not read or write any per-user cache (GPU facts, picks).  Setting any
#     ``FATDISPATCH_*`` variable already bypasses the pick cache.
# ============================================================================

KNOWN_VARIABLES = ("FATDISPATCH_FORCE", "FATDISPATCH_UNSAFE_FORCE", "FATDISPATCH_DISABLE", "FATDISPATCH_VERBOSE",
                   "FATDISPATCH_GPU_CACHE", "FATDISPATCH_CACHE")
CATEGORIES = ("cpu", "cuda", "baseline")
ALIASES = {"avx512": "x86-64-v4", "avx2": "x86-64-v3", "sse4": "x86-64-v2", "v4": "x86-64-v4",
           "v3": "x86-64-v3", "v2": "x86-64-v2", "v1": "baseline", "x86-64-v1": "baseline", "gpu": "cuda"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
MATCH_NAMES = {3: "exact SASS", 2: "compatible SASS", 1: "PTX (JIT-compiled at first load)"}


class Hardware(Record):
    __slots__ = ("cpu", "gpu")
    cpu: CPU
    gpu: GPUs


class Candidate(Record):
    """One build, whether it can run here (``usable``), and why it was or was not chosen."""

    __slots__ = ("variant", "usable", "reason", "score")
    variant: Variant
    usable: bool
    reason: str
    score: tuple[int, ...]


class Selection(Record):
    """The ranked decision for one fat module.

    ``order`` names the builds the loader tries, in order (normally every usable
    build, best first).  ``error`` is set when nothing may be loaded, with the
    reason; ``candidates`` lists every build, ``order`` first.
    """

    __slots__ = ("module", "candidates", "order", "forced", "hardware", "notes", "error")
    module: str
    candidates: tuple[Candidate, ...]
    order: tuple[str, ...]
    forced: str | None
    hardware: Hardware
    notes: tuple[str, ...]
    error: str | None

    @property
    def chosen(self) -> str | None:
        return self.order[0] if self.order else None

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.variant.name == name:
                return c
        raise KeyError(name)


# ---------------------------------------------------------------- environment


def boolean(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "expected 1/true/yes/on or 0/false/no/off")


def force_for(module: str, env: Mapping[str, str]) -> str | None:
    """The ``FATDISPATCH_FORCE`` value that applies to ``module``, lower-cased, or None.

    A ``module:value`` item wins over a bare value; two different items for the
    same module are an error.
    """
    raw = env.get("FATDISPATCH_FORCE")
    if raw is None or not raw.strip():
        return None
    generic: list[str] = []
    specific: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        mod, sep, value = item.rpartition(":")
        value = value.strip().lower()
        if not value or "/" in value or "\\" in value:
            raise ConfigError("FATDISPATCH_FORCE", raw, f"{item!r} is not a build name (a value never names a file)")
        if not sep:
            generic.append(value)
        elif mod.strip().lower() == module.lower():
            specific.append(value)
    chosen = specific or generic
    if len(set(chosen)) > 1:
        raise ConfigError("FATDISPATCH_FORCE", raw, f"asks for several builds of {module}: {', '.join(chosen)}")
    return chosen[0] if chosen else None


def _gpu_cache_allowed(env: Mapping[str, str]) -> bool:
    return boolean(env, "FATDISPATCH_GPU_CACHE", True) and boolean(env, "FATDISPATCH_CACHE", True)


def effective_hardware(hw: Hardware, env: Mapping[str, str]) -> Hardware:
    """``hw`` with ``FATDISPATCH_DISABLE`` applied."""
    if "FATDISPATCH_DISABLE" not in env:
        return hw
    from ._slowpath import disabled_features, without

    table = feature_table()
    if hw.cpu.arch == "aarch64":
        known = set(table["aarch64"]["hwcap"]) | set(table["aarch64"]["hwcap2"])
    else:
        known = set(table["x86"]["bits"])
    off = disabled_features(env, known)
    if not off:
        return hw
    return hw.replace(cpu=without(hw.cpu, off, "FATDISPATCH_DISABLE", table))


# ---------------------------------------------------------------- judging one build


def _missing_features(v: Variant, cpu: CPU) -> str | None:
    if v.arch != cpu.arch:
        return f"built for {v.arch}; this machine is {cpu.arch}"
    missing = sorted(v.features - cpu.features)
    if v.x86_64_level is not None and (cpu.x86_64_level or 0) < v.x86_64_level and not missing:
        return f"needs x86-64-v{v.x86_64_level}; this CPU is x86-64-v{cpu.x86_64_level or 0}"
    if not missing:
        return None
    text = f"needs {', '.join(missing)}, which this CPU lacks"
    if v.x86_64_level is not None and (cpu.x86_64_level or 0) < v.x86_64_level:
        text = f"needs x86-64-v{v.x86_64_level}; this CPU is x86-64-v{cpu.x86_64_level or 0} (lacks {', '.join(missing)})"
    related = [n for n in cpu.notes if any(m in n for m in missing)]
    if related:
        text += " [" + "; ".join(related) + "]"
    return text


def _judge_cuda(v: Variant, gpu: GPUs, visible: tuple[GPU, ...], vis_note: str | None) -> tuple[str | None, int]:
    assert v.cuda is not None
    if gpu.reason is not None:
        return f"no usable NVIDIA GPU: {gpu.reason}", 0
    if not visible:
        return f"no usable NVIDIA GPU: {vis_note or 'none visible'}", 0
    from ._slowpath import _targets_text, sm_fit

    fits = []
    for g in visible:
        fit = sm_fit(v.cuda.sass, v.cuda.ptx, g.compute_capability)
        if fit == 0:
            cc = g.compute_capability
            return (f"no code for GPU {g.index} ({g.name}, compute capability {cc[0]}.{cc[1]}): "
                    f"the build carries {_targets_text(v)}"), 0
        fits.append(fit)
    from ._cuda import runtime_ok  # fatdispatch: the driver rule (minor-version compatibility) lives in _cuda

    ok, why = runtime_ok(v.cuda.runtime, gpu.cuda_driver_version, min(fits) >= 2, bool(v.cuda.ptx), gpu.driver_version)
    return (None, min(fits)) if ok else (why, 0)


# ---------------------------------------------------------------- the decision


def select(manifest: Manifest, hardware: Hardware, env: Mapping[str, str]) -> Selection:
    """Rank every build of ``manifest`` for ``hardware`` under ``env``.

    Pure.  Raises :class:`ConfigError` only for malformed ``FATDISPATCH_*``
    values; every other problem is recorded in the returned selection.
    """
    module = manifest.module
    hw = effective_hardware(hardware, env)
    forced = force_for(module, env)
    unsafe = boolean(env, "FATDISPATCH_UNSAFE_FORCE")
    notes: list[str] = []
    if hw.gpu.devices:
        from ._slowpath import visible_gpus

        visible, vis_note = visible_gpus(hw.gpu.devices, env)
    else:
        visible, vis_note = (), None
    if vis_note:
        notes.append(vis_note)

    judged: list[tuple[Variant, str | None, tuple[int, ...]]] = []
    for idx, v in enumerate(manifest.variants):
        why = _missing_features(v, hw.cpu)
        fit = 0
        if why is None and v.kind == "cuda":
            why, fit = _judge_cuda(v, hw.gpu, visible, vis_note)
        exact = 0
        if fit == 3 and v.cuda is not None:  # fatdispatch: on the exact capability a > f > plain SASS (issue 12)
            from ._cuda import exact_rank

            exact = min(exact_rank(v.cuda.sass, g.compute_capability) for g in visible)
        score: tuple[int, ...] = (1 if v.kind == "cuda" else 0, fit, v.priority, exact,
                                  v.x86_64_level or 0, len(v.features), _max_sm(v), -idx)
        judged.append((v, why, score))

    usable = sorted(((v, s) for v, why, s in judged if why is None), key=lambda p: p[1], reverse=True)
    order = [v.name for v, _ in usable]
    error = None
    if forced is not None:
        from ._slowpath import _apply_force

        order, error = _apply_force(forced, manifest, judged, usable, unsafe, env)
    elif not order:
        error = f"no build of {module} can run on this machine"

    best = order[0] if order else None
    cands: list[Candidate] = []
    for v, why, score in judged:
        if why is not None:
            reason = why
        elif v.name == best:
            reason = "chosen" + (f" (FATDISPATCH_FORCE={forced})" if forced else "") + ": " + _describe(v, score)
        elif v.name in order:
            reason = f"usable; ranked below {best} ({_describe(v, score)})"
        else:
            reason = f"usable, but FATDISPATCH_FORCE={forced} rules it out"
        if why is not None and v.name in order:
            reason = f"forced with FATDISPATCH_UNSAFE_FORCE although: {why}"
        cands.append(Candidate(variant=v, usable=why is None, reason=reason, score=score))
    rank = {name: i for i, name in enumerate(order)}
    cands.sort(key=lambda c: (rank.get(c.variant.name, len(rank)), not c.usable, [-x for x in c.score]))
    return Selection(module=module, candidates=tuple(cands), order=tuple(order), forced=forced, hardware=hw,
                     notes=tuple(notes), error=error)


def _max_sm(v: Variant) -> int:
    if v.cuda is None:
        return 0
    return max((major * 10 + minor for major, minor, _ in map(parse_sm, v.cuda.sass + v.cuda.ptx)), default=0)


def _describe(v: Variant, score: tuple[int, ...]) -> str:
    if v.kind == "cuda":
        from ._slowpath import _targets_text

        return f"CUDA, {MATCH_NAMES.get(score[1], 'no fit')}, carries {_targets_text(v)}"
    level = f"x86-64-v{v.x86_64_level}" if v.x86_64_level else v.arch
    return f"CPU, {level}, priority {v.priority}"


# ============================================================================
# 5. Loading
#
# The full path: read the manifest, probe the hardware (once per process), ask
# the pure :func:`select` for a ranked order, and try each build under the
# stable name.  Nothing is loaded before the decision; a build that fails to
# load is recorded and the next one tried.  A clean load of the first choice,
# with nothing set in ``FATDISPATCH_*``, is remembered in the pick cache.
# ============================================================================

_records: dict[str, LoadRecord] = {}


class LoadRecord(Record):
    """What happened when a fat module was imported."""

    __slots__ = ("module", "variant", "path", "selection", "attempts")
    module: str
    variant: str | None
    path: str | None
    selection: Selection
    attempts: tuple[tuple[str, str], ...]  # (build, why it failed)


def record(fullname: str) -> LoadRecord | None:
    """The load record of ``fullname``; for a module bound from the pick cache, built now (the same decision)."""
    rec = _records.get(fullname)
    hit = _hits.get(fullname)
    if rec is None and hit is not None:
        sel = decide(fullname, _registry[fullname], os.environ)
        rec = _records[fullname] = LoadRecord(module=fullname, variant=hit[0], path=hit[1], selection=sel,
                                              attempts=())
    return rec


# ---------------------------------------------------------------- deciding


def hardware_for(manifest: Manifest, env: Mapping[str, str]) -> Hardware:
    """Probe what this manifest needs: the CPU always; NVIDIA GPUs only if a CUDA build could be chosen."""
    cpu = probe_cpu()
    gpu = NO_GPU_PROBE
    if manifest.has_cuda:
        forced = force_for(manifest.module, env)
        token = ALIASES.get(forced, forced) if forced is not None else None  # the same aliases select() resolves
        cpu_only = token in ("cpu", "baseline") or any(
            v.name.lower() == token and v.kind == "cpu" for v in manifest.variants)
        if not cpu_only:
            gpu = probe_gpus(env, use_cache=_gpu_cache_allowed(env))
    return Hardware(cpu=cpu, gpu=gpu)


def decide(fullname: str, variants_dir: str, env: Mapping[str, str] | None = None) -> Selection:
    """Read the manifest, probe, and select: everything short of loading."""
    env = os.environ if env is None else env
    manifest = read_manifest(variants_dir)
    if manifest.module != fullname:
        raise ManifestError(manifest.path, "module",
                            f"describes {manifest.module!r} but was found for {fullname!r}: the build is misplaced")
    return select(manifest, hardware_for(manifest, env), env)


def find_spec_fully(fullname: str, variants_dir: str, env: Mapping[str, str]) -> ModuleSpecT:
    """The finder's answer when the pick cache has none: decide from scratch."""
    selection = decide(fullname, variants_dir, env)
    _report_decision(selection, env)
    spec: ModuleSpecT = ModuleSpec(fullname, FatLoader(selection, variants_dir), origin=variants_dir)
    return spec


def create_fully(spec: ModuleSpecT, variants_dir: str) -> ModuleType:
    """Load ``spec.name`` the full way (the cached pick did not load: the failure is retried and recorded)."""
    loader: FatLoader = find_spec_fully(spec.name, variants_dir, os.environ).loader  # type: ignore[assignment]
    return loader.create_module(spec)


def log_decision(fullname: str) -> None:
    """Log the decision for a module bound from the pick cache (only where debug logging is on)."""
    rec = record(fullname)
    if rec is not None:
        _report_decision(rec.selection, {})


def _report_decision(selection: Selection, env: Mapping[str, str]) -> None:
    if any(k.startswith("FATDISPATCH_") and k not in KNOWN_VARIABLES for k in env):
        from ._slowpath import unknown_variables

        for msg in unknown_variables(env):
            sys.stderr.write(msg + "\n")
    verbose = boolean(env, "FATDISPATCH_VERBOSE")
    logging = sys.modules.get("logging")  # log only where the application already uses logging
    if not verbose and logging is None:
        return
    from ._slowpath import format_selection

    text = format_selection(selection)
    if verbose:
        sys.stderr.write("".join(f"fatdispatch: {line}\n" for line in text.splitlines()))
    if logging is not None:
        logging.getLogger("fatdispatch").debug("%s", text)


# ---------------------------------------------------------------- the pick cache (writing; read by fatdispatch.cached_pick)


def cache_root(env: Mapping[str, str]) -> str | None:
    """fatdispatch's per-user cache folder (``$XDG_CACHE_HOME/fatdispatch``), or None if that is not absolute.

    The compiled helper's ``pick_file`` puts the pick cache in the same folder (``test_picks`` checks it)."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fatdispatch") if os.path.isabs(base) else None


def pick_file(variants_dir: str) -> str | None:
    """Where the pick of ``variants_dir`` is cached (``_fatdispatch.pick_file``: the very file its finder
    reads), or None where the pick cache cannot work."""
    mod = native()
    path: str | None = mod.pick_file(variants_dir) if mod is not None and hasattr(mod, "pick_file") else None
    return path


def pick_key(variants_dir: str) -> list[Any] | None:
    """What must be unchanged for a cached pick to hold (``_fatdispatch.pick_key``), or None where the pick
    cache cannot work (no compiled helper, not Linux x86-64, a file of the key missing)."""
    mod = native()
    if mod is None or not hasattr(mod, "pick_key"):
        return None
    key: list[Any] | None = mod.pick_key(variants_dir)
    return key


def pick_cache_usable(env: Mapping[str, str]) -> bool:
    """Linux, and no ``FATDISPATCH_*`` variable set (those always take the full path)."""
    return sys.platform == "linux" and not any(k.startswith("FATDISPATCH_") for k in env)


def file_identity(path: str) -> list[int] | None:
    """A regular file's (mtime, size, inode, device) as the compiled finder compares it
    (``_fatdispatch.file_identity``), or None (missing, a symlink, not a file, no compiled helper)."""
    mod = native()
    ident: list[int] | None = mod.file_identity(path) if mod is not None and hasattr(mod, "file_identity") else None
    return ident



def remember_pick(variants_dir: str, selection: Selection, variant: Variant, path: str,
                  env: Mapping[str, str]) -> None:
    """Write the pick of a clean load to the per-user pick cache (see :mod:`fatdispatch`, section 4).

    Only where it can be read back: Linux x86-64, nothing set in ``FATDISPATCH_*``,
    the CPU facts from CPUID, and no CUDA build on a machine with an NVIDIA driver.
    Any I/O problem just means no cache.
    """
    hw = selection.hardware
    manifest_has_cuda = any(c.variant.kind == "cuda" for c in selection.candidates)
    if not pick_cache_usable(env) or hw.cpu.source != "cpuid" or (manifest_has_cuda and driver_present()[0]):
        return
    cache = pick_file(variants_dir)
    key = pick_key(variants_dir)
    identity = file_identity(path)
    if cache is None or key is None or identity is None:
        return
    from ._slowpath import prune_picks, write_private_json

    write_private_json(cache, {"schema": PICKS_SCHEMA, "variants": variants_dir, "key": key, "build": variant.name,
                               "path": path, "identity": identity, "amx": _uses_amx(variant),
                               "cuda": manifest_has_cuda})
    prune_picks(os.path.dirname(cache))


# ---------------------------------------------------------------- loading


def _uses_amx(variant: Variant) -> bool:
    """A build that needs AMX tiles, which Linux grants only on request (``_fatdispatch.request_amx``)."""
    return any(f.startswith("amx") for f in variant.features)


def _inside(path: str, folder: str) -> bool:
    real = os.path.realpath(path)
    root = os.path.realpath(folder)
    return real.startswith(root + os.sep)


def resolve_file(variants_dir: str, variant: Variant) -> tuple[str | None, str]:
    """The build's file on disk (trying every extension suffix), or None and why not."""
    base = os.path.join(variants_dir, *variant.file.split("/"))
    tried = []
    for suffix in EXTENSION_SUFFIXES:
        candidate = base + suffix
        if os.path.isfile(candidate):
            if not _inside(candidate, variants_dir):
                return None, f"{candidate} resolves outside {variants_dir} (a symlink?); refusing to load it"
            return candidate, ""
        tried.append(os.path.basename(candidate))
    return None, f"file missing: {os.path.dirname(base)}/{{{','.join(tried)}}}"


_ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "i686": 3, "ppc64le": 21, "s390x": 22}


def check_elf(path: str, machine: str) -> "str | None":
    """Why ``path`` cannot be a loadable ELF object for ``machine``, or None.

    ``dlopen`` of a truncated file maps segments past its end and dies with
    SIGBUS when they are touched, so this is checked before loading: the ELF
    header, the architecture, and that every program header and loadable
    segment lies inside the file.  Non-Linux platforms are not checked.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    try:
        size = os.fstat(fd).st_size
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
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)
    for i in range(phnum):
        ph = table[i * phentsize:(i + 1) * phentsize]
        if le(ph[0:4], "little") == 1:  # PT_LOAD
            end = le(ph[8:16], "little") + le(ph[32:40], "little")  # p_offset + p_filesz
            if end > size:
                return f"truncated: a segment ends at byte {end}, the file has {size}"
    return None


class FatLoader:
    """Loads the first build of ``selection.order`` that loads, under the stable name."""

    def __init__(self, selection: Selection, variants_dir: str) -> None:
        self.selection = selection
        self.variants_dir = variants_dir

    def create_module(self, spec: ModuleSpecT) -> ModuleType:
        sel = self.selection
        name = spec.name
        attempts: list[tuple[str, str]] = []
        if sel.error:
            _records[name] = LoadRecord(module=name, variant=None, path=None, selection=sel, attempts=())
            raise NoUsableBuildError(f"fatdispatch: cannot import {name}: {sel.error}", name=name)
        by_name = {c.variant.name: c.variant for c in sel.candidates}
        for build in sel.order:
            variant = by_name[build]
            path, why = resolve_file(self.variants_dir, variant)
            if path is None:
                attempts.append((build, why))
                continue
            failure = check_elf(path, variant.arch)
            if failure is not None:
                failure = f"{path}: {failure}"
            else:
                try:
                    module = load_extension(name, path, _uses_amx(variant))
                except BaseException as exc:  # noqa: BLE001 - any failure of one build means: try the next
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    failure = f"{type(exc).__name__}: {exc}"
            if failure is not None:
                attempts.append((build, failure))
                if variant.kind == "cuda" and sel.hardware.gpu.source == "cache":
                    from ._slowpath import drop_cache

                    drop_cache(os.environ)  # the cached GPU facts may be stale: ask NVML next time
                continue
            spec.origin = path
            spec.has_location = True
            module.__fatdispatch_variant__ = build  # type: ignore[attr-defined]
            _records[name] = LoadRecord(module=name, variant=build, path=path, selection=sel,
                                        attempts=tuple(attempts))
            if attempts:
                from ._slowpath import _warn_fallback, forget_pick

                _warn_fallback(name, build, attempts)
                forget_pick(self.variants_dir)
            else:
                remember_pick(self.variants_dir, sel, variant, path, os.environ)
            return module
        _records[name] = LoadRecord(module=name, variant=None, path=None, selection=sel, attempts=tuple(attempts))
        lines = "\n".join(f"  {b}: {why}" for b, why in attempts)
        raise NoUsableBuildError(f"fatdispatch: no build of {name} could be loaded; tried:\n{lines}",
                                 name=name, attempts=tuple(attempts))

    def exec_module(self, module: ModuleType) -> None:
        pass  # executed in create_module


