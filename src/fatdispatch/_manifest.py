"""The manifest: what builds a fat module ships and exactly what each requires.

It lives at ``<package>/<module>.variants/manifest.json``.  The runtime reads
only this file, never the build-side catalog, so an old runtime can read a
newer wheel; a schema it does not know is refused with a clear error.

Schema 1::

    {"schema": 1, "module": "mypkg._core", "generator": "fatdispatch 0.1.0",
     "variants": [
       {"name": "x86-64-v3", "kind": "cpu", "file": "x86-64-v3/_core",
        "arch": "x86_64", "priority": 0,
        "requires": {"x86_64_level": 3, "features": ["avx", "avx2", ...]},
        "properties": ["x86_64 :: level :: v3"]},
       {"name": "cuda-sm90", "kind": "cuda", "file": "cuda-sm90/_core", "arch": "x86_64", "priority": 0,
        "requires": {"x86_64_level": 1, "features": [...],
                     "cuda": {"sass": ["90"], "ptx": [], "runtime": [13, 0]}},
        "properties": ["nvidia :: sm_arch :: 90_real", "nvidia :: cuda_version_lower_bound :: 13.0"]}]}

``file`` is relative to the variants folder and has no extension suffix: the
loader tries every suffix in ``importlib.machinery.EXTENSION_SUFFIXES``.
``properties`` use the wheel-variant vocabulary (PEP 825/850 drafts) so a fat
wheel can be split into variant wheels.
"""

from __future__ import annotations

import os

from . import _jsonfile
from ._errors import ManifestError
from ._records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
VARIANTS_SUFFIX = ".variants"
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


class _Checker:
    """Validates decoded JSON, raising one :class:`ManifestError` that names the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> ManifestError:
        return ManifestError(self.path, field, problem)

    def obj(self, value: Any, field: str, allowed: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{field}.{key}" if field else key,
                                f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail(f"{field}.{key}" if field else key, "missing")
        return value

    def string(self, value: Any, field: str, chars: frozenset[str] | None = None, maxlen: int = 128) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {type(value).__name__}")
        if not value or len(value) > maxlen:
            raise self.fail(field, f"expected 1 to {maxlen} characters")
        if chars is not None and not set(value) <= chars:
            raise self.fail(field, f"{value!r} has characters outside {''.join(sorted(chars))!r}")
        return value

    def integer(self, value: Any, field: str, lo: int, hi: int) -> int:
        if type(value) is not int:
            raise self.fail(field, f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.fail(field, f"{value} is outside {lo}..{hi}")
        return value

    def strings(self, value: Any, field: str, chars: frozenset[str] | None = None, maxlen: int = 128) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, got {type(value).__name__}")
        if len(value) > 512:
            raise self.fail(field, "more than 512 entries")
        return tuple(self.string(v, f"{field}[{i}]", chars, maxlen) for i, v in enumerate(value))


def _check_file(c: _Checker, value: Any, field: str) -> str:
    rel = c.string(value, field, _FILE_CHARS | {"/"}, 255)
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise c.fail(field, f"{rel!r} must be a relative path inside the variants folder, without '.' or '..'")
    return rel


def _check_cuda(c: _Checker, value: Any, field: str) -> CudaTargets:
    d = c.obj(value, field, _CUDA_FIELDS, ("sass", "ptx", "runtime"))
    sass = c.strings(d["sass"], f"{field}.sass", _NAME_CHARS, 8)
    ptx = c.strings(d["ptx"], f"{field}.ptx", _NAME_CHARS, 8)
    for i, t in enumerate(sass):
        try:
            parse_sm(t)
        except ValueError as exc:
            raise c.fail(f"{field}.sass[{i}]", f"{t!r}: {exc}") from None
    for i, t in enumerate(ptx):
        try:
            parse_sm(t)
        except ValueError as exc:
            raise c.fail(f"{field}.ptx[{i}]", f"{t!r}: {exc}") from None
    if not sass and not ptx:
        raise c.fail(field, "a CUDA build must carry at least one SASS or PTX target")
    rt = d["runtime"]
    if not (isinstance(rt, list) and len(rt) == 2):
        raise c.fail(f"{field}.runtime", "expected [major, minor]")
    major = c.integer(rt[0], f"{field}.runtime[0]", 1, 99)
    minor = c.integer(rt[1], f"{field}.runtime[1]", 0, 99)
    return CudaTargets(sass=sass, ptx=ptx, runtime=(major, minor))


def parse_manifest(data: Any, path: str) -> Manifest:
    """Validate decoded manifest JSON.  Pure: raises :class:`ManifestError` and nothing else."""
    c = _Checker(path)
    if isinstance(data, dict) and "schema" in data:
        schema = data["schema"]
        if type(schema) is int and schema > SCHEMA_VERSION:
            raise c.fail("schema", f"schema {schema} was written by a newer fatdispatch; this runtime reads schema "
                                   f"{SCHEMA_VERSION}: upgrade fatdispatch (pip install -U fatdispatch)")
    top = c.obj(data, "", _TOP_FIELDS, ("schema", "module", "variants"))
    c.integer(top["schema"], "schema", SCHEMA_VERSION, SCHEMA_VERSION)
    module = c.string(top["module"], "module", _FILE_CHARS, 200)
    generator = c.string(top.get("generator", "unknown"), "generator", None, 200)
    raw_variants = top["variants"]
    if not isinstance(raw_variants, list) or not raw_variants:
        raise c.fail("variants", "expected a non-empty list")
    if len(raw_variants) > MAX_VARIANTS:
        raise c.fail("variants", f"more than {MAX_VARIANTS} builds")
    variants = []
    names: set[str] = set()
    for i, raw in enumerate(raw_variants):
        f = f"variants[{i}]"
        v = c.obj(raw, f, _VARIANT_FIELDS, ("name", "kind", "file", "arch", "requires"))
        name = c.string(v["name"], f"{f}.name", _NAME_CHARS, 64)
        if name in names:
            raise c.fail(f"{f}.name", f"duplicate build name {name!r}")
        names.add(name)
        kind = c.string(v["kind"], f"{f}.kind")
        if kind not in KINDS:
            raise c.fail(f"{f}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        file = _check_file(c, v["file"], f"{f}.file")
        arch = c.string(v["arch"], f"{f}.arch", _NAME_CHARS, 32)
        priority = c.integer(v.get("priority", 0), f"{f}.priority", -1000, 1000)
        req = c.obj(v["requires"], f"{f}.requires", _REQUIRES_FIELDS, ("features",))
        features = frozenset(c.strings(req["features"], f"{f}.requires.features", _NAME_CHARS, 64))
        level = None
        if "x86_64_level" in req:
            level = c.integer(req["x86_64_level"], f"{f}.requires.x86_64_level", 1, 4)
        cuda = None
        if kind == "cuda":
            if "cuda" not in req:
                raise c.fail(f"{f}.requires.cuda", "missing (required for kind 'cuda')")
            cuda = _check_cuda(c, req["cuda"], f"{f}.requires.cuda")
        elif "cuda" in req:
            raise c.fail(f"{f}.requires.cuda", "only builds of kind 'cuda' may require CUDA")
        props = c.strings(v.get("properties", []), f"{f}.properties", None, 200)
        for j, p in enumerate(props):
            if p.count("::") != 2:
                raise c.fail(f"{f}.properties[{j}]", f"{p!r} is not 'namespace :: feature :: value'")
        variants.append(Variant(name=name, kind=kind, file=file, arch=arch, priority=priority, features=features,
                                x86_64_level=level, cuda=cuda, properties=props))
    return Manifest(module=module, schema=SCHEMA_VERSION, generator=generator, variants=tuple(variants), path=path)


def read_manifest(variants_dir: str) -> Manifest:
    """Read ``<variants_dir>/manifest.json``; every problem is a :class:`ManifestError`."""
    path = os.path.join(variants_dir, MANIFEST_NAME)
    try:
        data = _jsonfile.read(path)
    except FileNotFoundError:
        raise ManifestError(path, "", "the file is missing: the wheel was built without fatdispatch's build_ext, "
                                      "or the install is incomplete (reinstall the package)") from None
    except OSError as exc:
        raise ManifestError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ManifestError(path, "", f"not valid JSON: {exc}") from None
    return parse_manifest(data, path)
