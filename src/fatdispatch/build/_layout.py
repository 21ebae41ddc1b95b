"""What every build backend shares: the builds of a fat module, their flags, and the manifest.

setuptools (:mod:`._setuptools`), CMake (``fatdispatch/cmake/``) and Meson
(``fatdispatch/meson/``) all lay a fat module out the same way::

    <pkg>/<mod>.variants/manifest.json
    <pkg>/<mod>.variants/<build>/<mod><EXT_SUFFIX>

and all of them write the manifest through :func:`write_manifest`.  The
compiler flags of a build come from the catalog (``fatdispatch.variants``)
through :func:`cpu_flags` and :func:`nvcc_flags`; CMake and Meson read them
with ``python -m fatdispatch.build`` (:mod:`.__main__`), never from a copy.

Pure functions over plain data, apart from :func:`write_manifest` (one file)
and :func:`check_files` (``stat``s).  No setuptools import.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sysconfig
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .. import __version__
from .._cpu import normalize_arch
from .._manifest import MANIFEST_NAME, SCHEMA_VERSION, VARIANTS_SUFFIX, parse_manifest
from ._catalog import BuildError, CpuVariant, CudaBuild, check_cuda_build, cpu_catalog, cpu_variant, cuda_flags, \
    parse_cuda_spec

__all__ = ["Build", "plan_builds", "host_variant", "build_manifest", "write_manifest", "manifest_path",
           "variants_folder", "catalog_compiler", "cpu_flags", "nvcc_flags", "parse_cuda_version", "check_files",
           "default_arch"]


@dataclass(frozen=True)
class Build:
    """One build of a fat module: its name, ``"cpu"`` or ``"cuda"``, the CPU variant its (host) code is compiled
    for, and for a CUDA build its SASS/PTX targets."""

    name: str
    kind: str
    cpu: CpuVariant
    cuda: CudaBuild | None = None


def default_arch() -> str:
    """The architecture being built for (``_PYTHON_HOST_PLATFORM`` for cross builds, else this machine)."""
    host = os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()
    for arch in ("x86_64", "aarch64", "arm64", "amd64"):
        if host.lower().endswith(arch):
            return normalize_arch(arch)
    return normalize_arch(platform.machine())


def host_variant(variants: Sequence[CpuVariant]) -> CpuVariant:
    """The CPU variant the host code of CUDA builds is compiled for: the lowest one built (as setuptools does)."""
    if not variants:
        raise BuildError("at least one CPU variant is required (the fallback where no GPU is usable)")
    return min(variants, key=lambda v: (v.x86_64_level or 0, len(v.features)))


def plan_builds(variants: Sequence[str] | None, cuda_targets: Sequence[str] = (), arch: str | None = None) -> list[Build]:
    """Catalog names and CUDA target specs (``sm_80``, ``sm_80+sm_86``, ``compute_75``, ``name=sm_90``) -> the
    builds, CPU builds first.  ``variants=None``: every CPU variant of the architecture."""
    arch = normalize_arch(arch) if arch else default_arch()
    names = list(variants) if variants is not None else list(cpu_catalog(arch))
    cpu = [cpu_variant(n, arch) for n in names]
    host = host_variant(cpu)
    builds = [Build(v.name, "cpu", v) for v in cpu]
    builds += [Build(cb.name, "cuda", host, cb) for cb in (parse_cuda_spec(t) for t in cuda_targets)]
    seen = [b.name for b in builds]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise BuildError(f"duplicate build names {dupes}: name the CUDA builds apart (\"name=sm_80+sm_86\")")
    return builds


def build_manifest(module: str, builds: Sequence[Build], cuda_runtime: tuple[int, int] = (0, 0),
                   priorities: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The manifest of ``module`` (``"pkg._core"``) as a JSON-ready dict, validated as the runtime reads it."""
    priorities = dict(priorities or {})
    unknown = set(priorities) - {b.name for b in builds}
    if unknown:
        raise BuildError(f"{module}: priorities name unknown builds {sorted(unknown)}; builds: "
                         f"{', '.join(b.name for b in builds)}")
    if any(b.cuda is not None for b in builds) and cuda_runtime == (0, 0):
        raise BuildError(f"{module}: CUDA builds need the CUDA runtime version they were built with (nvcc's)")
    modname = module.rpartition(".")[2]
    entries = []
    for b in builds:
        v = b.cpu
        entry: dict[str, Any] = {
            "name": b.name, "kind": b.kind, "file": f"{b.name}/{modname}", "arch": v.arch,
            "priority": priorities.get(b.name, v.priority),
            "requires": {"features": sorted(v.features)},
            "properties": list(v.properties),
        }
        if v.x86_64_level is not None:
            entry["requires"]["x86_64_level"] = v.x86_64_level
        if b.cuda is not None:
            entry["requires"]["cuda"] = {"sass": list(b.cuda.sass), "ptx": list(b.cuda.ptx),
                                         "runtime": list(cuda_runtime)}
            entry["properties"] = list(v.properties) + [f"nvidia :: sm_arch :: {t}_real" for t in b.cuda.sass] \
                + [f"nvidia :: sm_arch :: {t}_virtual" for t in b.cuda.ptx] \
                + [f"nvidia :: cuda_version_lower_bound :: {cuda_runtime[0]}.{cuda_runtime[1]}"]
        entries.append(entry)
    manifest = {"schema": SCHEMA_VERSION, "module": module, "generator": f"fatdispatch {__version__}",
                "variants": entries}
    return manifest


def variants_folder(root: str, module: str) -> str:
    """``<root>/<pkg path>/<mod>.variants``: where a module's builds and manifest go under a site-packages-like
    ``root``."""
    package, _, modname = module.rpartition(".")
    return os.path.join(root, *[p for p in package.split(".") if p], modname + VARIANTS_SUFFIX)


def manifest_path(folder: str) -> str:
    return os.path.join(folder, MANIFEST_NAME)


def write_manifest(folder: str, manifest: Mapping[str, Any]) -> str:
    """Write ``manifest`` as ``<folder>/manifest.json`` (creating ``folder``); its path.  Checked first as the
    runtime reads it: a manifest the runtime would refuse is never written."""
    parse_manifest(dict(manifest), os.path.join(folder, MANIFEST_NAME))
    os.makedirs(folder, exist_ok=True)
    path = manifest_path(folder)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def check_files(module: str, builds: Sequence[Build], files: Mapping[str, str]) -> None:
    """Each build has exactly one built file, it exists, and it is named ``<mod>.<suffix>`` (the name the loader
    looks for).  ``files``: build name -> path."""
    modname = module.rpartition(".")[2]
    names = [b.name for b in builds]
    missing = [n for n in names if n not in files]
    extra = sorted(set(files) - set(names))
    if missing or extra:
        raise BuildError(f"{module}: built files do not match the builds: missing {missing}, unknown {extra}; "
                         f"builds: {', '.join(names)}")
    for name in names:
        path = files[name]
        if not os.path.isfile(path):
            raise BuildError(f"{module}: build {name!r}: {path} does not exist (was its target built?)")
        base = os.path.basename(path)
        if not base.startswith(modname + ".") or base == modname + ".":
            raise BuildError(f"{module}: build {name!r}: file {base!r} must be named {modname}<EXT_SUFFIX> "
                             f"(e.g. {modname}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}): the loader looks "
                             f"for that name and its init function is PyInit_{modname}")


# ---------------------------------------------------------------- flags from the catalog

_GCC_LIKE = {"gcc", "gnu", "clang", "appleclang", "intelllvm", "intel-llvm", "icx", "armclang", "cc", "unix"}
_MSVC_LIKE = {"msvc", "clang-cl", "intel-llvm-cl"}


def catalog_compiler(name: str) -> str:
    """A compiler as CMake (``CMAKE_C_COMPILER_ID``: GNU, Clang, AppleClang, IntelLLVM, MSVC), Meson
    (``cc.get_id()``: gcc, clang, msvc, clang-cl, intel-llvm) or setuptools (unix, msvc) names it -> the catalog's
    flag set (``gcc`` or ``msvc``)."""
    key = name.strip().lower()
    if key in _GCC_LIKE:
        return "gcc"
    if key in _MSVC_LIKE:
        return "msvc"
    raise BuildError(f"compiler {name!r} is unknown to fatdispatch's catalog; known: "
                     f"{', '.join(sorted(_GCC_LIKE | _MSVC_LIKE))} (gcc-style flags: pass --compiler gcc)")


def cpu_flags(variant: CpuVariant, compiler: str) -> list[str]:
    """The catalog's compiler flags of a CPU variant for ``compiler`` (any name :func:`catalog_compiler` takes)."""
    return list(variant.flags.get(catalog_compiler(compiler), ()))


def parse_cuda_version(text: str) -> tuple[int, int]:
    """``"13.0"``, ``"13.0.88"`` (CMake's ``CMAKE_CUDA_COMPILER_VERSION``) -> ``(13, 0)``."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)*\s*", text)
    if not m:
        raise BuildError(f"CUDA version {text!r} is not of the form MAJOR.MINOR[.PATCH]")
    return int(m.group(1)), int(m.group(2))


def nvcc_flags(build: CudaBuild, cuda_runtime: tuple[int, int]) -> list[str]:
    """nvcc's flags for one CUDA build: a ``-gencode`` per SASS and PTX target (checked against this toolkit),
    the catalog's nvcc flags (static cudart) and this toolkit's fatbin compression."""
    tk = check_cuda_build(build, cuda_runtime)
    gencode = [f"-gencode=arch=compute_{t},code=sm_{t}" for t in build.sass]
    gencode += [f"-gencode=arch=compute_{t},code=compute_{t}" for t in build.ptx]
    return gencode + cuda_flags() + list(tk["compress"])


def cmake_quote(items: Iterable[str]) -> str:
    """A CMake list literal, quoted (flags hold no ``;``, ``"`` or ``$``: refused rather than escaped)."""
    out = []
    for item in items:
        if any(c in item for c in ';"$\\\n'):
            raise BuildError(f"flag {item!r} holds a character fatdispatch does not pass to CMake")
        out.append(item)
    return '"' + ";".join(out) + '"'
