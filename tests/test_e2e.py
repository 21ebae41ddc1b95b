"""End to end: the example's real wheel, installed in a fresh virtual environment, imported in fresh interpreters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import run, site_packages

pytestmark = pytest.mark.slow

# What each CPU build must have been compiled with (and nothing above it).
EXPECTED_MACROS = {
    "baseline": ({"__SSE2__"}, {"__SSE3__", "__POPCNT__", "__AVX__", "__AVX2__", "__AVX512F__"}, "swar"),
    "x86-64-v2": ({"__SSE4_2__", "__POPCNT__"}, {"__AVX__", "__AVX2__", "__AVX512F__"}, "popcnt"),
    "x86-64-v3": ({"__AVX2__", "__FMA__", "__BMI2__"}, {"__AVX512F__"}, "avx2-vpshufb"),
    "x86-64-v4": ({"__AVX512F__", "__AVX512BW__", "__AVX512VL__"}, {"__AVX512VPOPCNTDQ__"}, "avx512bw-vpshufb"),
}

PROBE = """
import json, os, sys, fatdemo, fatdispatch
a = os.urandom(100_003); b = os.urandom(100_003)
rec = fatdispatch.loaded("fatdemo._core")
print(json.dumps({"variant": fatdemo.variant(), "info": fatdemo.build_info(),
                  "ok": fatdemo.hamming(a, b) == fatdemo.hamming_reference(a, b),
                  "file": fatdemo._core.__file__, "attempts": list(rec.attempts),
                  "is_ext": type(fatdemo._core.__loader__).__name__}))
"""


def probe(py: Path, env: dict[str, str], code: str = PROBE) -> dict:
    return json.loads(run([str(py), "-c", code], env=env, cwd="/").stdout)


def test_default_pick_is_the_best_this_machine_runs(demo_venv: Path, clean_env: dict[str, str]) -> None:
    from fatdispatch._cpu import probe_cpu
    level = probe_cpu().x86_64_level or 1
    expected = "baseline" if level == 1 else f"x86-64-v{level}"
    out = probe(demo_venv, clean_env)
    assert out["variant"] == expected and out["info"]["variant"] == expected and out["ok"]
    assert f"{expected}/_core" in out["file"] and out["attempts"] == []


@pytest.mark.parametrize("variant", sorted(EXPECTED_MACROS))
def test_each_build_holds_its_own_code(demo_venv: Path, clean_env: dict[str, str], variant: str) -> None:
    from fatdispatch._cpu import probe_cpu
    need = {"baseline": 1, "x86-64-v2": 2, "x86-64-v3": 3, "x86-64-v4": 4}[variant]
    if (probe_cpu().x86_64_level or 0) < need:
        pytest.skip(f"this CPU cannot run {variant} (the qemu tests cover it)")
    out = probe(demo_venv, dict(clean_env, FATDISPATCH_FORCE=variant))
    must, must_not, kernel = EXPECTED_MACROS[variant]
    macros = set(out["info"]["isa_macros"])
    assert out["variant"] == variant and out["info"]["variant"] == variant, out
    assert must <= macros and not (must_not & macros), macros
    assert out["info"]["kernel"] == kernel and out["ok"]


def test_buffers_of_every_kind(demo_venv: Path, clean_env: dict[str, str]) -> None:
    code = """
import array, fatdemo
a = array.array('d', [1.5] * 1000); b = array.array('d', [2.5] * 1000)
ref = fatdemo.hamming_reference(a.tobytes(), b.tobytes())
assert fatdemo.hamming(a, b) == ref
assert fatdemo.hamming(memoryview(a), bytearray(b.tobytes())) == ref
assert fatdemo.popcount(b'\\xff' * 33) == 264
for bad in [(b'ab', b'abc')]:
    try:
        fatdemo.hamming(*bad)
    except ValueError as e:
        assert 'differ in size' in str(e)
    else:
        raise AssertionError('no error')
try:
    import numpy as np
except ImportError:
    pass
else:
    x = np.arange(1000, dtype=np.float32); y = x[::-1].copy()
    assert fatdemo.hamming(x, y) == fatdemo.hamming_reference(x.tobytes(), y.tobytes())
print('ok')
"""
    assert run([str(demo_venv), "-c", code], env=clean_env).stdout.strip() == "ok"


def test_force_unrunnable_and_unknown(demo_venv: Path, clean_env: dict[str, str]) -> None:
    p = subprocess.run([str(demo_venv), "-c", "import fatdemo"], env=dict(clean_env, FATDISPATCH_FORCE="cuda"),
                       capture_output=True, text=True)
    assert p.returncode == 1 and "ImportError" not in p.stderr.splitlines()[-1] or "NoUsableBuildError" in p.stderr
    assert "CUDA build" in p.stderr
    p = subprocess.run([str(demo_venv), "-c", "import fatdemo"], env=dict(clean_env, FATDISPATCH_FORCE="avx9"),
                       capture_output=True, text=True)
    assert p.returncode == 1 and "valid values" in p.stderr and "x86-64-v3" in p.stderr


def test_verbose_and_logger(demo_venv: Path, clean_env: dict[str, str]) -> None:
    p = run([str(demo_venv), "-c", "import fatdemo"], env=dict(clean_env, FATDISPATCH_VERBOSE="1"))
    assert "fatdispatch: fatdemo._core ->" in p.stderr and "cuda-sm90" in p.stderr
    code = ("import logging, io; s=io.StringIO(); logging.basicConfig(stream=s, level=logging.DEBUG); "
            "import fatdemo; print(s.getvalue())")
    assert "fatdemo._core ->" in run([str(demo_venv), "-c", code], env=clean_env).stdout


def test_report_json(demo_venv: Path, clean_env: dict[str, str]) -> None:
    out = json.loads(run([str(demo_venv), "-m", "fatdispatch", "report", "--json"], env=clean_env, cwd="/").stdout)
    cpu = out["hardware"]["cpu"]
    assert cpu["arch"] == "x86_64" and "sse2" in cpu["features"] and isinstance(cpu["x86_64_level"], int)
    assert isinstance(out["hardware"]["gpus"], list)
    (mod,) = [m for m in out["modules"] if m["module"] == "fatdemo._core"]
    assert mod["selected"]
    names = {c["variant"] for c in mod["candidates"]}
    assert {"baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "cuda-sm90", "cuda-ptx75"} <= names
    assert all(isinstance(c["usable"], bool) and c["reason"] for c in mod["candidates"])
    text = run([str(demo_venv), "-m", "fatdispatch", "report"], env=clean_env, cwd="/").stdout
    assert "fatdemo._core: picks" in text


def test_threads_get_one_probe_and_one_module(demo_venv: Path, clean_env: dict[str, str]) -> None:
    code = """
import threading, sys
import fatdispatch._cpu as rt
barrier = threading.Barrier(32); mods = []
def work():
    barrier.wait()
    import fatdemo._core as m
    mods.append(m)
ts = [threading.Thread(target=work) for _ in range(32)]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(mods), len({id(m) for m in mods}), rt.cpu_probe_count)
"""
    # the full path probes once; a pick cache answer needs no probe at all (the raw CPUID words are its key)
    assert run([str(demo_venv), "-c", code], env=dict(clean_env, FATDISPATCH_CACHE="0")).stdout.split() == [
        "32", "1", "1"]
    run([str(demo_venv), "-c", "import fatdemo"], env=clean_env)
    assert run([str(demo_venv), "-c", code], env=clean_env).stdout.split() == ["32", "1", "0"]


def test_fork_after_import(demo_venv: Path, clean_env: dict[str, str]) -> None:
    code = """
import os, fatdemo
pid = os.fork()
if pid == 0:
    os._exit(0 if fatdemo.hamming(b'\\x0f', b'\\xf0') == 8 else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    assert run([str(demo_venv), "-c", code], env=clean_env).stdout.strip() == "0"


def test_unrelated_imports_pay_nothing(demo_venv: Path, clean_env: dict[str, str]) -> None:
    code = """
import sys, fatdemo
finder = sys.meta_path[0]
assert getattr(finder, '__name__', '') == '_fatdispatch'
assert finder.find_spec('json', None) is None and finder.find_spec('fatdemo.other', None) is None
print('ok')
"""
    assert run([str(demo_venv), "-c", code], env=clean_env).stdout.strip() == "ok"


# ---------------------------------------------------------------- broken builds on disk


@pytest.fixture
def broken_site(demo_venv: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the installed fatdemo whose builds the test may break, first on sys.path."""
    src = site_packages(demo_venv) / "fatdemo"
    dst = tmp_path / "site" / "fatdemo"
    shutil.copytree(src, dst)
    return tmp_path / "site", dst / "_core.variants"


def _suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX")


def test_fallback_on_broken_builds(demo_venv: Path, clean_env: dict[str, str], broken_site: tuple[Path, Path]) -> None:
    site, variants = broken_site
    from fatdispatch._cpu import probe_cpu
    level = probe_cpu().x86_64_level or 1
    names = ["x86-64-v4", "x86-64-v3", "x86-64-v2"][4 - level:]
    if len(names) < 2:
        pytest.skip("needs a v3 or v4 CPU")
    first, second = names[0], names[1]
    (variants / first / f"_core{_suffix()}").unlink()  # missing
    data = (variants / second / f"_core{_suffix()}").read_bytes()
    (variants / second / f"_core{_suffix()}").write_bytes(data[:4096])  # truncated
    env = dict(clean_env, PYTHONPATH=str(site))
    out = probe(demo_venv, env)
    tried = dict(out["attempts"])
    assert "file missing" in tried[first] and "truncated" in tried[second]
    assert out["variant"] not in (first, second) and out["ok"]
    # -W error: the fallback still works (it is said on stderr, not raised as a warning)
    strict = run([str(demo_venv), "-W", "error", "-c", PROBE], env=dict(env, FATDISPATCH_CACHE="0"), cwd="/")
    assert json.loads(strict.stdout)["variant"] == out["variant"] and "fell back" in strict.stderr


def test_wrong_architecture_file_falls_back(demo_venv: Path, clean_env: dict[str, str],
                                            broken_site: tuple[Path, Path]) -> None:
    site, variants = broken_site
    best = probe(demo_venv, clean_env)["variant"]
    elf = bytearray((variants / best / f"_core{_suffix()}").read_bytes())
    elf[18:20] = (183).to_bytes(2, "little")  # e_machine = EM_AARCH64
    (variants / best / f"_core{_suffix()}").write_bytes(bytes(elf))
    out = probe(demo_venv, dict(clean_env, PYTHONPATH=str(site)))
    assert out["variant"] != best and "built for aarch64" in dict(out["attempts"])[best]


def test_every_build_broken_lists_every_attempt(demo_venv: Path, clean_env: dict[str, str],
                                                broken_site: tuple[Path, Path]) -> None:
    site, variants = broken_site
    for f in variants.glob(f"*/_core{_suffix()}"):
        f.write_bytes(b"not an ELF file")
    p = subprocess.run([str(demo_venv), "-c", "import fatdemo"], env=dict(clean_env, PYTHONPATH=str(site)),
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "no build of fatdemo._core could be loaded" in p.stderr
    for name in ("baseline", "x86-64-v2"):
        assert f"  {name}: " in p.stderr and "not an ELF" in p.stderr


def test_renamed_extension_file_is_found(demo_venv: Path, clean_env: dict[str, str],
                                         broken_site: tuple[Path, Path]) -> None:
    site, variants = broken_site
    best = probe(demo_venv, clean_env)["variant"]
    f = variants / best / f"_core{_suffix()}"
    f.rename(f.with_name("_core.so"))  # what Nuitka does: no SOABI tag
    out = probe(demo_venv, dict(clean_env, PYTHONPATH=str(site)))
    assert out["variant"] == best and out["file"].endswith("/_core.so")


def test_init_that_raises_falls_back(demo_venv: Path, clean_env: dict[str, str], broken_site: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    site, variants = broken_site
    best = probe(demo_venv, clean_env)["variant"]
    c = tmp_path / "bad.c"
    c.write_text('#include <Python.h>\nPyMODINIT_FUNC PyInit__core(void) '
                 '{ PyErr_SetString(PyExc_RuntimeError, "init exploded"); return NULL; }\n')
    inc = sysconfig.get_paths()["include"]
    run(["cc", "-shared", "-fPIC", f"-I{inc}", str(c), "-o", str(variants / best / f"_core{_suffix()}")])
    out = probe(demo_venv, dict(clean_env, PYTHONPATH=str(site)))
    assert out["variant"] != best and "init exploded" in dict(out["attempts"])[best]


def test_subinterpreter_works_or_fails_clearly(demo_venv: Path, clean_env: dict[str, str]) -> None:
    code = """
import fatdemo
try:
    import _xxsubinterpreters as interpreters
except ImportError:
    print('no-subinterpreters'); raise SystemExit
i = interpreters.create()
try:
    interpreters.run_string(i, "import fatdemo; assert fatdemo.hamming(b'\\\\x01', b'\\\\x03') == 1")
    print('works')
except interpreters.RunFailedError as e:
    print('failed:', e)
"""
    out = run([str(demo_venv), "-c", code], env=clean_env).stdout.strip()
    assert out in ("works", "no-subinterpreters") or ("ImportError" in out or "fatdispatch" in out), out


def test_errors_name_the_cause_zip_and_frozen(demo_venv: Path, clean_env: dict[str, str], tmp_path: Path) -> None:
    """A package imported from a zip archive, or a frozen app that did not carry the builds, is told so: not
    'built without its variants'."""
    import zipfile

    src = site_packages(demo_venv) / "fatdemo"
    archive = tmp_path / "app.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, str(path.relative_to(src.parent)))
    out = subprocess.run([str(demo_venv), "-c", "import fatdemo"], env=dict(clean_env, PYTHONPATH=str(archive)),
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 1 and "inside the archive" in out.stderr and str(archive) in out.stderr, out.stderr
    frozen = tmp_path / "frozen" / "fatdemo"
    frozen.mkdir(parents=True)
    shutil.copy(src / "__init__.py", frozen / "__init__.py")  # an app that carried the package but not its builds
    code = "import sys; sys.frozen = True; import fatdemo"
    out = subprocess.run([str(demo_venv), "-c", code], env=dict(clean_env, PYTHONPATH=str(frozen.parent)),
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 1 and "frozen application did not carry" in out.stderr and "--include-raw-dir" in out.stderr
