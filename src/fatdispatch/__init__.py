"""fatdispatch: ship one wheel with several builds of an extension; import the best one this machine can run.

A fat package's ``__init__.py`` calls :func:`install` (the build helper writes
that line); from then on ``import mypkg._core`` binds the best build of
``_core`` under that stable name.  ``python -m fatdispatch report`` explains
every decision.

Public API: :func:`install`, :func:`explain`, :func:`loaded`, :func:`hardware`,
:func:`fat_modules` and the error classes.  Everything else is private.  The
import path loads this module and :mod:`fatdispatch._runtime`, nothing more.
"""

from __future__ import annotations

import os
import sys

from ._runtime import ConfigError, FatDispatchError, ManifestError, NoUsableBuildError
from ._runtime import VARIANTS_SUFFIX
from ._runtime import register as _register

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Mapping

    from ._runtime import Hardware, LoadRecord, Selection

__version__ = "0.1.0"
__all__ = ["install", "explain", "loaded", "hardware", "fat_modules", "FatDispatchError", "ManifestError",
           "ConfigError", "NoUsableBuildError", "__version__"]



def install(package: str, modules: Iterable[str] | None = None) -> None:
    """Register the fat modules of ``package`` (call it from the package's ``__init__.py``).

    ``modules`` are names relative to the package (``["_core"]``); by default
    every ``<name>.variants`` folder in the package is one.  Idempotent and cheap:
    nothing is probed or loaded until a fat module is imported.
    """
    pkg = sys.modules.get(package)
    paths = list(getattr(pkg, "__path__", None) or [])
    if not paths:
        raise FatDispatchError(f"fatdispatch.install({package!r}): {package} is not an imported package; "
                               "call install(__name__) from the package's __init__.py")
    if modules is None:
        found: list[str] = []
        for p in paths:
            try:
                found.extend(n[: -len(VARIANTS_SUFFIX)] for n in os.listdir(p) if n.endswith(VARIANTS_SUFFIX))
            except OSError:
                continue
        modules = found
    for mod in modules:
        for p in paths:
            folder = os.path.join(p, mod + VARIANTS_SUFFIX)
            if os.path.isdir(folder):
                _register(f"{package}.{mod}", folder)
                break
        else:
            raise FatDispatchError(f"fatdispatch.install({package!r}): no folder {mod}{VARIANTS_SUFFIX} in "
                                   f"{', '.join(paths)}; the package was built without its variants (rebuild it "
                                   "with fatdispatch's build_ext)", name=f"{package}.{mod}")


def explain(module: str, env: Mapping[str, str] | None = None) -> Selection:
    """The ranked decision for a registered fat module, with a reason for every build. Loads nothing."""
    from ._runtime import decide, registered

    folders = registered()
    if module not in folders:
        raise FatDispatchError(f"{module} is not a registered fat module (import its package first); "
                               f"registered: {', '.join(sorted(folders)) or 'none'}")
    return decide(module, folders[module], env)


def loaded(module: str) -> LoadRecord | None:
    """What happened when ``module`` was imported (the build bound and every failed attempt), or None."""
    from ._runtime import record

    return record(module)


def hardware(env: Mapping[str, str] | None = None, gpu: bool = True) -> Hardware:
    """The probed hardware (CPU always; NVIDIA GPUs when ``gpu``), with ``FATDISPATCH_DISABLE`` applied."""
    from ._runtime import NO_GPU_PROBE, Hardware, boolean, effective_hardware, probe_cpu, probe_gpus

    env = os.environ if env is None else env
    g = probe_gpus(env, boolean(env, "FATDISPATCH_GPU_CACHE", True)) if gpu else NO_GPU_PROBE
    return effective_hardware(Hardware(cpu=probe_cpu(), gpu=g), env)


def fat_modules(paths: Iterable[str] | None = None) -> dict[str, str]:
    """Installed fat modules found on ``paths`` (default ``sys.path``): module name -> variants folder."""
    from ._discover import discover

    return discover(sys.path if paths is None else paths)
