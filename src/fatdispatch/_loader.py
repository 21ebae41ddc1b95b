"""Binding: a meta-path finder that answers only for registered fat modules.

``install("mypkg", ["_core"])`` registers ``mypkg._core``.  On its import the
finder reads the manifest, probes the hardware (once per process), asks the
pure :func:`~fatdispatch._select.select` for a ranked order, and returns a spec
whose loader tries each build with CPython's own extension machinery
(``_imp.create_dynamic``) under the stable name.  Nothing is loaded before the
decision; a build that fails to load is recorded and the next one tried.

The module object is the extension itself: no proxy, so calls cost exactly what
they cost without fatdispatch.  It carries ``__fatdispatch_variant__``.
"""

from __future__ import annotations

import _imp
import _thread
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec

from ._errors import FatDispatchError, NoUsableBuildError
from ._records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Mapping, Sequence

    from ._manifest import Manifest, Variant
    from ._select import Hardware, Selection

_registry: dict[str, str] = {}  # full module name -> its variants folder
_records: dict[str, LoadRecord] = {}
_lock = _thread.RLock()


class LoadRecord(Record):
    """What happened when a fat module was imported."""

    __slots__ = ("module", "variant", "path", "selection", "attempts")
    module: str
    variant: str | None
    path: str | None
    selection: Selection
    attempts: tuple[tuple[str, str], ...]  # (build, why it failed)


class FatFinder:
    """Answers ``find_spec`` for registered fat modules only; ``None`` for everything else."""

    _fatdispatch_finder = True

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> ModuleSpec | None:
        variants_dir = _registry.get(fullname)
        if variants_dir is None:
            return None
        return _find_spec(fullname, variants_dir)

    @staticmethod
    def invalidate_caches() -> None:
        pass


def register(fullname: str, variants_dir: str) -> None:
    with _lock:
        _registry[fullname] = variants_dir
        if not any(getattr(f, "_fatdispatch_finder", False) for f in sys.meta_path):
            sys.meta_path.insert(0, FatFinder)  # type: ignore[arg-type]


def registered() -> dict[str, str]:
    return dict(_registry)


def record(fullname: str) -> LoadRecord | None:
    return _records.get(fullname)


# ---------------------------------------------------------------- deciding


def hardware_for(manifest: Manifest, env: Mapping[str, str]) -> Hardware:
    """Probe what this manifest needs: the CPU always; NVIDIA GPUs only if a CUDA build could be chosen."""
    from . import _cpu, _gpu
    from ._select import Hardware, boolean, force_for

    cpu = _cpu.probe_cpu()
    gpu = _gpu.NO_GPU_PROBE
    if manifest.has_cuda:
        forced = force_for(manifest.module, env)
        cpu_only = forced is not None and any(v.name.lower() == forced and v.kind == "cpu" for v in manifest.variants)
        if forced not in ("cpu", "baseline") and not cpu_only:
            gpu = _gpu.probe_gpus(env, use_cache=boolean(env, "FATDISPATCH_GPU_CACHE", True))
    return Hardware(cpu=cpu, gpu=gpu)


def decide(fullname: str, variants_dir: str, env: Mapping[str, str] | None = None) -> Selection:
    """Read the manifest, probe, and select: everything short of loading."""
    from ._manifest import read_manifest
    from ._select import select

    env = os.environ if env is None else env
    manifest = read_manifest(variants_dir)
    if manifest.module != fullname:
        from ._errors import ManifestError

        raise ManifestError(manifest.path, "module",
                            f"describes {manifest.module!r} but was found for {fullname!r}: the build is misplaced")
    return select(manifest, hardware_for(manifest, env), env)


def _find_spec(fullname: str, variants_dir: str) -> ModuleSpec:
    env = os.environ
    selection = decide(fullname, variants_dir, env)
    _report_decision(selection, env)
    spec = ModuleSpec(fullname, FatLoader(selection, variants_dir), origin=variants_dir)
    return spec


def _report_decision(selection: Selection, env: Mapping[str, str]) -> None:
    from ._select import boolean, format_selection, unknown_variables

    for msg in unknown_variables(env):
        sys.stderr.write(msg + "\n")
    verbose = boolean(env, "FATDISPATCH_VERBOSE")
    logging = sys.modules.get("logging")  # log only where the application already uses logging
    if not verbose and logging is None:
        return
    text = format_selection(selection)
    if verbose:
        sys.stderr.write("".join(f"fatdispatch: {line}\n" for line in text.splitlines()))
    if logging is not None:
        logging.getLogger("fatdispatch").debug("%s", text)


# ---------------------------------------------------------------- loading


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


class FatLoader:
    """Loads the first build of ``selection.order`` that loads, under the stable name."""

    def __init__(self, selection: Selection, variants_dir: str) -> None:
        self.selection = selection
        self.variants_dir = variants_dir

    def create_module(self, spec: ModuleSpec) -> ModuleType:
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
            try:
                module = self._load(name, path, variant)
            except BaseException as exc:  # noqa: BLE001 - any failure of one build means: try the next
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                attempts.append((build, f"{type(exc).__name__}: {exc}"))
                if variant.kind == "cuda" and sel.hardware.gpu.source == "cache":
                    from . import _gpu

                    _gpu.drop_cache(os.environ)  # the cached GPU facts may be stale
                continue
            spec.origin = path
            spec.has_location = True
            module.__fatdispatch_variant__ = build  # type: ignore[attr-defined]
            _records[name] = LoadRecord(module=name, variant=build, path=path, selection=sel,
                                        attempts=tuple(attempts))
            if attempts:
                _warn_fallback(name, build, attempts)
            return module
        _records[name] = LoadRecord(module=name, variant=None, path=None, selection=sel, attempts=tuple(attempts))
        lines = "\n".join(f"  {b}: {why}" for b, why in attempts)
        raise NoUsableBuildError(f"fatdispatch: no build of {name} could be loaded; tried:\n{lines}",
                                 name=name, attempts=tuple(attempts))

    @staticmethod
    def _load(name: str, path: str, variant: Variant) -> ModuleType:
        if any(f.startswith("amx") for f in variant.features):
            from . import _native

            if not _native.request_amx():
                raise FatDispatchError("the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM)")
        subspec = ModuleSpec(name, ExtensionFileLoader(name, path), origin=path)
        module = _imp.create_dynamic(subspec)
        _imp.exec_dynamic(module)  # multi-phase init runs here, so a failing init can still fall back
        return module  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        pass  # executed in create_module


def _warn_fallback(name: str, build: str, attempts: list[tuple[str, str]]) -> None:
    text = "; ".join(f"{b}: {why}" for b, why in attempts)
    msg = f"fatdispatch: {name} fell back to {build} after: {text}"
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("fatdispatch").warning("%s", msg)
    else:
        import _warnings

        _warnings.warn(msg, RuntimeWarning, 3)

