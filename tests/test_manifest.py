"""The manifest reader: valid input, every malformed input gives one clear ManifestError, hostile paths refused."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import demo_manifest
from fatdispatch import ManifestError
from fatdispatch._load import resolve_file
from fatdispatch._manifest import json_loads, parse_manifest, read_manifest

GOOD: dict[str, Any] = {"schema": 1, "module": "pkg._core", "generator": "test", "variants": [
    {"name": "baseline", "kind": "cpu", "file": "baseline/_core", "arch": "x86_64", "priority": 0,
     "requires": {"features": ["sse2"], "x86_64_level": 1}, "properties": ["x86_64 :: level :: v1"]},
    {"name": "cuda-sm90", "kind": "cuda", "file": "cuda-sm90/_core", "arch": "x86_64",
     "requires": {"features": ["sse2"], "cuda": {"sass": ["90"], "ptx": [], "runtime": [13, 0]}}},
]}


def test_good_manifest() -> None:
    m = parse_manifest(copy.deepcopy(GOOD), "m.json")
    assert [v.name for v in m.variants] == ["baseline", "cuda-sm90"] and m.has_cuda
    assert m.variants[1].cuda is not None and m.variants[1].cuda.runtime == (13, 0)
    assert demo_manifest().module == "fatdemo._core"


def mutate(path: list[Any], value: Any, delete: bool = False) -> dict[str, Any]:
    d = copy.deepcopy(GOOD)
    node: Any = d
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,delete,field", [
    (["schema"], 2, False, "schema"),
    (["schema"], "1", False, "schema"),
    (["schema"], None, True, "schema"),
    (["module"], 5, False, "module"),
    (["variants"], [], False, "variants"),
    (["variants"], {}, False, "variants"),
    (["extra"], 1, False, "extra"),
    (["variants", 0, "name"], "Bad Name", False, "variants[0].name"),
    (["variants", 0, "kind"], "fpga", False, "variants[0].kind"),
    (["variants", 0, "file"], "/etc/passwd", False, "variants[0].file"),
    (["variants", 0, "file"], "../../evil", False, "variants[0].file"),
    (["variants", 0, "file"], "a/./b", False, "variants[0].file"),
    (["variants", 0, "file"], "a\\b", False, "variants[0].file"),
    (["variants", 0, "priority"], 10**100, False, "variants[0].priority"),
    (["variants", 0, "priority"], True, False, "variants[0].priority"),
    (["variants", 0, "requires", "features"], "sse2", False, "variants[0].requires.features"),
    (["variants", 0, "requires", "features"], [1], False, "variants[0].requires.features[0]"),
    (["variants", 0, "requires", "x86_64_level"], 9, False, "variants[0].requires.x86_64_level"),
    (["variants", 0, "requires", "cuda"], {}, False, "variants[0].requires.cuda"),
    (["variants", 0, "properties"], ["no separators"], False, "variants[0].properties[0]"),
    (["variants", 1, "requires", "cuda"], None, True, "variants[1].requires.cuda"),
    (["variants", 1, "requires", "cuda", "sass"], ["9"], False, "variants[1].requires.cuda.sass[0]"),
    (["variants", 1, "requires", "cuda", "runtime"], [13], False, "variants[1].requires.cuda.runtime"),
    (["variants", 1, "name"], "baseline", False, "variants[1].name"),
    (["variants", 1, "surprise"], 1, False, "variants[1].surprise"),
])
def test_malformed_manifests_name_the_field(path: list[Any], value: Any, delete: bool, field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(mutate(path, value, delete), "/x/m.json")
    assert info.value.field == field, str(info.value)
    assert "/x/m.json" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_newer_schema_says_upgrade() -> None:
    with pytest.raises(ManifestError, match="newer fatdispatch.*upgrade"):
        parse_manifest(mutate(["schema"], 7), "m.json")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_value_gives_manifest_error_or_manifest(data: Any) -> None:
    try:
        parse_manifest(data, "fuzz.json")
    except ManifestError as exc:
        assert "fuzz.json" in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["variants", "requires", "cuda", "features", "file", "name"]), JSON)
def test_mutated_good_manifest(where: str, value: Any) -> None:
    d = copy.deepcopy(GOOD)
    targets = {"variants": (d, "variants"), "requires": (d["variants"][0], "requires"),
               "cuda": (d["variants"][1]["requires"], "cuda"), "features": (d["variants"][0]["requires"], "features"),
               "file": (d["variants"][0], "file"), "name": (d["variants"][1], "name")}
    node, key = targets[where]
    node[key] = value
    try:
        parse_manifest(d, "fuzz.json")
    except ManifestError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_on_disk(tmp_path_factory: Any, blob: bytes) -> None:
    folder = tmp_path_factory.mktemp("m")
    (folder / "manifest.json").write_bytes(blob)
    try:
        read_manifest(str(folder))
    except ManifestError as exc:
        assert "manifest.json" in str(exc)


@pytest.mark.parametrize("text", ["", "{", "[1,]", '{"a": NaN}', '{"a": 1} {"b": 2}', "[" * 100000,
                                  '{"a": 1e999999}', "1" * 5000, '"\\ud800"x'])
def test_bad_json(tmp_path: Path, text: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError):
        read_manifest(str(tmp_path))


def test_json_reader_matches_json_module() -> None:
    for text in ['{"a": [1, 2.5, "x\\u00e9", true, false, null]}', " [ ] ", '"\\ud83d\\ude00"']:
        assert json_loads(text) == json.loads(text)


def test_missing_and_huge_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="missing"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(" " * (2 << 20))
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest(str(tmp_path))


def _elf_so(path: Path) -> None:
    """A copy of a real shared object (fatdispatch's compiled module) at ``path``."""
    import _fatdispatch

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(_fatdispatch.__file__).read_bytes())


def test_symlink_leaving_the_package_is_refused(tmp_path: Path) -> None:
    """A build file, or a build folder, swapped for a symlink out of the installed package is refused by the
    check every load applies (check_build), with what it really is."""
    import sysconfig

    import _fatdispatch
    from fatdispatch._load import confinement_roots

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    variants = tmp_path / "_core.variants"
    (variants / "baseline").mkdir(parents=True)
    (variants / "manifest.json").write_text(json.dumps(GOOD))
    _elf_so(tmp_path / "evil" / f"_core{suffix}")
    os.symlink(tmp_path / "evil" / f"_core{suffix}", variants / "baseline" / f"_core{suffix}")
    os.symlink(tmp_path / "evil", variants / "cuda-sm90")  # a symlinked folder leaving the tree
    m = parse_manifest(copy.deepcopy(GOOD), "m.json")
    roots = confinement_roots(str(variants))
    for v in m.variants[:2]:
        path, why = resolve_file(str(variants), v)
        assert path is not None, why
        ident, real, refused = _fatdispatch.check_build(path, roots, "x86_64")
        assert refused is not None and "outside its installed package" in refused and str(tmp_path / "evil") in refused


def test_an_install_made_of_symlinks_loads(tmp_path: Path) -> None:
    """uv's symlink link mode, stow --no-folding, Bazel runfiles and Spack views link every file of the package
    to a store: the builds lie beside the real manifest, the same installed tree, and are accepted."""
    import sysconfig

    import _fatdispatch
    from fatdispatch._load import confinement_roots

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    store = tmp_path / "store" / "_core.variants"
    _elf_so(store / "baseline" / f"_core{suffix}")
    (store / "manifest.json").write_text(json.dumps(GOOD))
    farm = tmp_path / "site" / "_core.variants"
    (farm / "baseline").mkdir(parents=True)
    os.symlink(store / "manifest.json", farm / "manifest.json")
    os.symlink(store / "baseline" / f"_core{suffix}", farm / "baseline" / f"_core{suffix}")
    m = parse_manifest(copy.deepcopy(GOOD), "m.json")
    path, why = resolve_file(str(farm), m.variants[0])
    assert path is not None, why
    ident, real, refused = _fatdispatch.check_build(path, confinement_roots(str(farm)), "x86_64")
    assert refused is None and real == str((store / "baseline" / f"_core{suffix}").resolve())
    # but not a store file the manifest's tree does not hold
    _elf_so(tmp_path / "other" / f"_core{suffix}")
    os.unlink(farm / "baseline" / f"_core{suffix}")
    os.symlink(tmp_path / "other" / f"_core{suffix}", farm / "baseline" / f"_core{suffix}")
    assert _fatdispatch.check_build(path, confinement_roots(str(farm)), "x86_64")[2] is not None


def test_fifo_manifest_cannot_hang(tmp_path: Path) -> None:
    """A FIFO planted as manifest.json is refused at once (opened non-blocking, checked with fstat)."""
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(ManifestError, match="not a regular file"):
        read_manifest(str(tmp_path))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(st.characters(exclude_categories=["Cs"])),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20))
def test_native_json_reader_agrees_with_json(value: Any) -> None:
    """json_loads (the manifest reader: CPython's C scanner without the json package) against the json module,
    on text json itself wrote."""
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert json_loads(text) == json.loads(text)
        assert json_loads(text.encode()) == json.loads(text)


def test_check_build_refuses_unknown_machines_and_odd_program_headers(tmp_path: Path) -> None:
    """A machine name fatdispatch does not know is refused (never "any ELF will do"), and so is a program header
    size other than an Elf64_Phdr's 56 bytes (a 4 GiB header table is not read)."""
    import _fatdispatch

    so = tmp_path / "x" / "_core.so"
    _elf_so(so)
    assert _fatdispatch.check_build(str(so), (), "x86_64")[2] is None
    assert "knows no machine arm64" in (_fatdispatch.check_build(str(so), (), "arm64")[2] or "")
    data = bytearray(so.read_bytes())
    data[54:56] = (65535).to_bytes(2, "little")  # e_phentsize
    data[56:58] = (65535).to_bytes(2, "little")  # e_phnum
    odd = tmp_path / "x" / "_odd.so"
    odd.write_bytes(bytes(data))
    assert "not a loadable ELF object" in (_fatdispatch.check_build(str(odd), (), "x86_64")[2] or "")


def test_hostile_raw_words_cannot_crash_the_decoder() -> None:
    """A raw dict whose leaf's __index__ empties the leaf list (the decoder reads its own copy) raises or
    decodes; it never reads freed memory."""
    import subprocess
    import sys

    code = ("import _fatdispatch\n"
            "L = []\n"
            "class Evil:\n"
            "    def __index__(self):\n"
            "        L.clear(); return 1\n"
            "L.extend([Evil(), 2, 3, 4])\n"
            "raw = dict(_fatdispatch.x86(), **{'1': L})\n"
            "for f in (_fatdispatch.x86_decode, _fatdispatch.cpu_words):\n"
            "    L[:] = [Evil(), 2, 3, 4]\n"
            "    try:\n"
            "        f(raw)\n"
            "    except Exception as e:\n"
            "        print(type(e).__name__)\n"
            "print('alive')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), (out.returncode, out.stderr[-500:])
