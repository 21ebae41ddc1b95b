"""The variant catalog (top-level ``variants/`` folder, installed as ``fatdispatch.variants``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .._errors import FatDispatchError


class BuildError(FatDispatchError):
    """A fat extension cannot be built as declared."""


@dataclass(frozen=True)
class CpuVariant:
    name: str
    arch: str
    features: tuple[str, ...]
    x86_64_level: int | None
    flags: dict[str, tuple[str, ...]]
    priority: int
    properties: tuple[str, ...]


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA build: the SASS targets (``"90"``, ``"90a"``) and PTX targets it carries."""

    name: str
    sass: tuple[str, ...]
    ptx: tuple[str, ...]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("fatdispatch.variants").joinpath(name).read_text("utf-8"))
    return data


def cpu_catalog(arch: str) -> dict[str, CpuVariant]:
    try:
        data = load(f"{arch}.json")
    except FileNotFoundError:
        raise BuildError(f"fatdispatch has no CPU variant catalog for {arch} (have x86_64, aarch64)") from None
    out = {}
    for name, v in data["variants"].items():
        out[name] = CpuVariant(name=name, arch=arch, features=tuple(v["features"]), x86_64_level=v.get("x86_64_level"),
                               flags={k: tuple(f) for k, f in v["flags"].items()}, priority=v.get("priority", 0),
                               properties=tuple(v["properties"]))
    return out


def cpu_variant(name: str, arch: str) -> CpuVariant:
    cat = cpu_catalog(arch)
    if name not in cat:
        raise BuildError(f"unknown {arch} variant {name!r}; the catalog has: {', '.join(cat)}")
    return cat[name]


CATALOG_ARCHES = ("x86_64", "aarch64")


def variants_for(names: list[str] | tuple[str, ...], arch: str) -> list[CpuVariant]:
    """The declared CPU variants that exist for ``arch``, in declaration order.

    One declaration serves every architecture: a name only another architecture's catalog has (``x86-64-v3``
    when building for aarch64) is left out; a name no catalog has is an error.
    """
    cat = cpu_catalog(arch)
    others = {n for a in CATALOG_ARCHES if a != arch for n in cpu_catalog(a)}
    unknown = [n for n in names if n not in cat and n not in others]
    if unknown:
        raise BuildError(f"unknown variant(s) {', '.join(map(repr, unknown))}; the {arch} catalog has: {', '.join(cat)}")
    return [cat[n] for n in names if n in cat]


_TARGET = re.compile(r"^(sm|compute)_(\d{2,3})([af]?)$")


def parse_cuda_spec(spec: str) -> CudaBuild:
    """``"sm_80"`` -> build ``cuda-sm80``; ``"sm_80+sm_86"`` -> one build carrying both;
    ``"compute_75"`` -> build ``cuda-ptx75``; ``"name=sm_90+compute_90"`` names it."""
    name = None
    if "=" in spec:
        name, spec = (s.strip() for s in spec.split("=", 1))
    sass: list[str] = []
    ptx: list[str] = []
    for part in spec.split("+"):
        m = _TARGET.match(part.strip())
        if not m:
            raise BuildError(f"CUDA target {part!r} is not of the form sm_XY, sm_XYa, sm_XYf or compute_XY")
        (sass if m.group(1) == "sm" else ptx).append(m.group(2) + m.group(3))
    if name is None:
        name = "cuda-" + "-".join([f"sm{t}" for t in sass] + [f"ptx{t}" for t in ptx])
    return CudaBuild(name=name, sass=tuple(sass), ptx=tuple(ptx))


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


def nvcc_version(nvcc: str) -> tuple[int, int]:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise BuildError(f"cannot read the CUDA version from `{nvcc} --version`: {out!r}")
    return int(m.group(1)), int(m.group(2))


def check_cuda_build(build: CudaBuild, version: tuple[int, int]) -> dict[str, Any]:
    """Validate a build's targets against what this nvcc accepts; return that toolkit's catalog entry."""
    toolkits = load("cuda.json")["toolkits"]
    key = f"{version[0]}.{version[1]}"
    if key not in toolkits:
        # the newest catalog entry not newer than this toolkit
        older = sorted((tuple(map(int, k.split("."))), k) for k in toolkits if tuple(map(int, k.split("."))) <= version)
        if not older:
            raise BuildError(f"CUDA {key} is older than every toolkit in variants/cuda.json")
        key = older[-1][1]
    tk = toolkits[key]
    valid = set(tk["sm"]) | {s + "a" for s in tk["suffixes"]["a"]} | {s + "f" for s in tk["suffixes"]["f"]}
    for t in build.sass + build.ptx:
        if t not in valid:
            raise BuildError(f"CUDA build {build.name!r}: target {t!r} is not valid for nvcc {key}; valid: "
                             f"{', '.join(sorted(valid, key=lambda s: (len(s), s)))}")
    tk = dict(tk)
    tk["catalog_version"] = key
    return tk


def cuda_flags() -> list[str]:
    return list(load("cuda.json")["flags"]["nvcc"])
