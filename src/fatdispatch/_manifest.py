"""The manifest: the contract between fatdispatch's build side and its runtime.

A fat module ``mypkg._core`` ships its builds in ``mypkg/_core.variants/``, described by
``mypkg/_core.variants/manifest.json``: what builds exist and exactly what each requires.  This module owns
those names, the schema and the reader; the build side writes manifests through it and never imports the
loader.  The runtime reads only this file, never the build-side catalog, so an old runtime can read a newer
wheel, and a schema it does not know is refused with a clear error.

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

``file`` is relative to the variants folder and has no extension suffix: the loader tries every suffix in
``importlib.machinery.EXTENSION_SUFFIXES``.  ``properties`` use the wheel-variant vocabulary (PEP 825/850
drafts) so a fat wheel can be split into variant wheels.

JSON is read with CPython's own C scanner (``_json``) without importing the :mod:`json` package (which pulls
in :mod:`re`, a millisecond on the import path), strictly: one value, no NaN or Infinity, nothing after it.
"""

import os

from ._cuda import parse_target as parse_sm
from ._records import CudaTargets, Manifest, Variant

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._errors import ManifestError

VARIANTS_SUFFIX = ".variants"   # <module>.variants: the folder of a fat module's builds
MANIFEST_NAME = "manifest.json"  # inside it
MANIFEST_LIMIT = 1 << 20


def _json_error(problem: "str") -> "ValueError":
    """A :class:`~fatdispatch._errors.JSONError` (the error classes are loaded when an error is raised)."""
    from ._errors import JSONError

    return JSONError(problem)


def _manifest_error(path: "str", field: "str", problem: "str") -> "ManifestError":
    from ._errors import ManifestError

    return ManifestError(path, field, problem)


# ---------------------------------------------------------------- JSON


def _no_constant(name: "str") -> "Any":
    raise ValueError(f"{name} is not allowed")


class _Context:
    """What ``_json.make_scanner`` reads off a decoder: strict, and only plain dicts, ints and floats."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    memo: "dict[str, str]" = {}
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)


_scanner: "Any" = None


def json_loads(text: "str | bytes") -> "Any":
    """Parse ``text`` strictly as one JSON value; :class:`JSONError` says where it is wrong."""
    global _scanner
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _json_error(f"not UTF-8: {exc}") from None
    body = text.strip(" \t\n\r")
    try:
        if _scanner is None:
            try:
                import _json

                _scanner = _json.make_scanner(_Context())  # type: ignore[arg-type]
            except ImportError:  # an interpreter without the C accelerator
                import json

                _scanner = json.JSONDecoder(parse_constant=_no_constant).scan_once  # type: ignore[attr-defined]
        try:
            value, end = _scanner(body, 0)
        except SystemError:  # the C scanner reports errors through json.decoder, which must be loaded first
            import json.decoder  # noqa: F401

            value, end = _scanner(body, 0)
    except StopIteration as exc:
        raise _json_error(f"expected a value at offset {exc.value}") from None
    except (ValueError, RecursionError) as exc:
        raise _json_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if end != len(body):
        raise _json_error(f"unexpected text after the value at offset {end}")
    return value


def read_regular(path: "str", limit: "int") -> "bytes":
    """The bytes of a regular file of at most ``limit`` bytes, opened non-blocking (a FIFO planted in its place
    cannot hang the import).  Raises :class:`OSError`, or :class:`JSONError` for the size."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise OSError(0, "not a regular file")
        if st.st_size > limit:
            raise _json_error(f"file is larger than {limit} bytes")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def read_json(path: "str", limit: "int" = MANIFEST_LIMIT) -> "Any":
    """Read and parse a UTF-8 JSON file: :class:`OSError` for I/O problems, :class:`JSONError` for content."""
    return json_loads(read_regular(path, limit))


# ---------------------------------------------------------------- the schema

SCHEMA_VERSION = 1
KINDS = ("cpu", "cuda")
MAX_VARIANTS = 256
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_FILE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_TOP_FIELDS = frozenset(("schema", "module", "generator", "variants"))
_VARIANT_FIELDS = frozenset(("name", "kind", "file", "arch", "priority", "requires", "properties"))
_REQUIRES_FIELDS = frozenset(("features", "x86_64_level", "cuda"))
_CUDA_FIELDS = frozenset(("sass", "ptx", "runtime"))


def _field_name(field: "str | tuple[str | int, ...]") -> "str":
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

    def __init__(self, path: "str") -> "None":
        self.path = path

    def fail(self, field: "str | tuple[str | int, ...]", problem: "str") -> "ManifestError":
        return _manifest_error(self.path, _field_name(field), problem)

    def obj(self, value: "Any", field: "str | tuple[str | int, ...]", allowed: "frozenset[str]",
            required: "tuple[str, ...]") -> "dict[str, Any]":
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

    def string(self, value: "Any", field: "str | tuple[str | int, ...]", chars: "frozenset[str] | None" = None,
               maxlen: "int" = 128) -> "str":
        if type(value) is not str:
            raise self.fail(field, f"expected a string, got {type(value).__name__}")
        if not value or len(value) > maxlen:
            raise self.fail(field, f"expected 1 to {maxlen} characters")
        if chars is not None and not chars.issuperset(value):
            raise self.fail(field, f"{value!r} has characters outside {''.join(sorted(chars))!r}")
        return value

    def integer(self, value: "Any", field: "str | tuple[str | int, ...]", lo: "int", hi: "int") -> "int":
        if type(value) is not int:
            raise self.fail(field, f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.fail(field, f"{value} is outside {lo}..{hi}")
        return value

    def strings(self, value: "Any", field: "tuple[str | int, ...]", chars: "frozenset[str] | None" = None,
                maxlen: "int" = 128) -> "tuple[str, ...]":
        if type(value) is not list:
            raise self.fail(field, f"expected a list, got {type(value).__name__}")
        if len(value) > 512:
            raise self.fail(field, "more than 512 entries")
        if any(type(v) is not str or not 0 < len(v) <= maxlen for v in value) or (
                chars is not None and not chars.issuperset("".join(value))):
            for i, v in enumerate(value):
                self.string(v, (*field, i), chars, maxlen)  # raises with the precise problem
        return tuple(value)


def _check_file(c: "_Checker", value: "Any", field: "tuple[str | int, ...]") -> "str":
    rel = c.string(value, field, _FILE_CHARS | {"/"}, 255)
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise c.fail(field, f"{rel!r} must be a relative path inside the variants folder, without '.' or '..'")
    return rel


def _check_cuda(c: "_Checker", value: "Any", field: "tuple[str | int, ...]") -> "CudaTargets":
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


def parse_manifest(data: "Any", path: "str") -> "Manifest":
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
    names: "set[str]" = set()
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


def read_manifest(variants_dir: "str") -> "Manifest":
    """Read ``<variants_dir>/manifest.json``; every problem is a :class:`ManifestError`."""
    path = os.path.join(variants_dir, MANIFEST_NAME)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise _manifest_error(path, "", "the file is missing: the wheel was built without fatdispatch's build_ext, "
                                      "or the install is incomplete (reinstall the package)") from None
    except OSError as exc:
        raise _manifest_error(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _manifest_error(path, "", f"not valid JSON: {exc}") from None
    return parse_manifest(data, path)
